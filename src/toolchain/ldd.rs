//! Reading `ldd`'s output, in both the formats the packager meets.
//!
//! glibc's ldd (elf/ldd.bash.in, the loader's `--list`) prints one line per object:
//! `\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, the loader itself as
//! `\t/lib64/ld-linux-x86-64.so.2 (0x...)`, the vDSO as `\tlinux-vdso.so.1 (0x...)`, and a
//! missing one as `\tlibfoo.so.1 => not found`.
//!
//! FreeBSD's ldd (usr.bin/ldd/ldd.c) first prints a header line `path:` for every file it
//! is given (`printf("%s:\n", *argv)`), then `\tlibc.so.7 => /lib/libc.so.7 (0x...)` lines
//! (the format of rtld's `LD_TRACE_LOADED_OBJECTS_FMT1`). It never lists the ELF
//! interpreter `/libexec/ld-elf.so.1`: the packager reads that from PT_INTERP instead
//! ([`super::elf::interpreter`]).

use std::path::PathBuf;

/// The absolute paths of the shared objects `ldd` listed in `text`. Header lines, the vDSO
/// and objects ldd could not find are skipped (the compile would fail in the sandbox the
/// way it fails on the host).
pub(super) fn parse(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            // FreeBSD's per-file header `path:` (an object line always has `=>` or `(`).
            if line.ends_with(':') && !line.contains("=>") {
                return None;
            }
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(v: &[&str]) -> Vec<PathBuf> {
        v.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn reads_glibc_ldd() {
        // Recorded on Debian 12: `ldd /usr/bin/gcc-12`, plus a missing library.
        let text = "\tlinux-vdso.so.1 (0x00007ffd0a5f8000)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2b1c000000)\n\
                    \tlibfoo.so.1 => not found\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f2b1c3f1000)\n";
        assert_eq!(
            parse(text),
            paths(&[
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ])
        );
    }

    #[test]
    fn reads_freebsd_ldd_with_its_header_line() {
        // FreeBSD 14.2 `ldd /usr/bin/cc` (usr.bin/ldd/ldd.c prints "%s:\n" first).
        let text = "/usr/bin/cc:\n\
                    \tlibz.so.6 => /lib/libz.so.6 (0x3c1e2a4e9000)\n\
                    \tlibexecinfo.so.1 => /usr/lib/libexecinfo.so.1 (0x3c1e2b5d2000)\n\
                    \tlibncursesw.so.9 => /lib/libncursesw.so.9 (0x3c1e2c0a3000)\n\
                    \tlibc++.so.1 => /lib/libc++.so.1 (0x3c1e2d36c000)\n\
                    \tlibcxxrt.so.1 => /lib/libcxxrt.so.1 (0x3c1e2e2ab000)\n\
                    \tlibm.so.5 => /lib/libm.so.5 (0x3c1e2f19d000)\n\
                    \tlibc.so.7 => /lib/libc.so.7 (0x3c1e3020b000)\n\
                    \tlibgcc_s.so.1 => /lib/libgcc_s.so.1 (0x3c1e31a47000)\n\
                    \t[vdso] (0x3c1e27d6c000)\n";
        let got = parse(text);
        assert_eq!(got.len(), 8, "{got:?}");
        assert!(got.iter().all(|p| !p.to_string_lossy().ends_with(':')));
        assert_eq!(got[0], PathBuf::from("/lib/libz.so.6"));
        assert_eq!(got[6], PathBuf::from("/lib/libc.so.7"));
    }

    #[test]
    fn static_and_non_dynamic_files_list_nothing() {
        assert!(parse("\tstatically linked\n").is_empty());
        assert!(parse("\tnot a dynamic executable\n").is_empty());
        // FreeBSD: `ldd /bin/sh.static` prints the header, then "not a dynamic ELF executable".
        assert!(parse("/rescue/sh:\n\tnot a dynamic ELF executable\n").is_empty());
    }
}
