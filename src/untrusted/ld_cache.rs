//! An `/etc/ld.so.cache` for a toolchain image that has none, so that the dynamic loader of
//! each compiler process finds its libraries with one lookup instead of searching every
//! system directory and its hwcaps subdirectories (a compile of a one-line file with
//! `cc -c`: 172 failed lookups through the overlay without a cache, 59 with one; 0.05-0.17
//! ms per compile). Toolchain packages (sccache's client, `jailbuilder toolchain`) carry
//! the compiler and the libraries `ldd` names, never a cache.
//!
//! The cache must change nothing but the number of lookups: glibc's loader consults it
//! after `DT_RPATH`, `LD_LIBRARY_PATH` and `DT_RUNPATH` and before its own default search
//! (`_dl_map_object` in elf/dl-load.c), and when the file an entry names fails to load it
//! falls back to that search. So an entry is written only for a name the default search of
//! *any* glibc build would resolve to the same file:
//!
//! - the name is in exactly one of the directories a glibc build searches by default
//!   (Debian's multiarch `/lib/x86_64-linux-gnu`, `/usr/lib/x86_64-linux-gnu`, Fedora's
//!   and SUSE's `/lib64`, `/usr/lib64`, and `/lib`, `/usr/lib`), directories that are one
//!   (a symlink) counted once. A name in two of them is left to the default search, whose
//!   order differs between builds;
//! - no such directory holds a hwcaps subdirectory (`glibc-hwcaps`, or the legacy `tls`,
//!   `haswell`, `xeon_phi`, `avx512_1`, `x86_64`), which the default search tries first:
//!   with one, no cache is written at all.
//!
//! A client's own `etc/ld.so.cache` is kept as it is. Only x86-64: the entry flags are the
//! architecture's (`_DL_CACHE_DEFAULT_ID` in sysdeps/unix/sysv/linux/x86_64/dl-cache.h).
//! musl's loader never reads the file. The format is glibc's "new" one, read by every
//! glibc since 2.2 (sysdeps/generic/dl-cache.h, `struct cache_file_new`); a file a loader
//! cannot use is ignored by it (`_dl_load_cache_lookup` checks the magic, the size and
//! each offset), so a mistake here costs speed, never a compile.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{fstat, SFlag};

use super::beneath::{cstr, fstatat_nofollow, io_err, openat_raw, resolve_dir, split, Create};
use super::{BeneathError, RootDir};

/// The directories a glibc build on x86-64 searches by default, in the union of the
/// distributions' orders; which of them a build searches does not matter (see the module's
/// docs).
const SYSTEM_DIRS: [&str; 6] = [
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib64",
    "usr/lib64",
    "lib",
    "usr/lib",
];

/// Subdirectories the default search tries before a system directory itself: the
/// glibc-hwcaps levels (glibc 2.33+) and the legacy hwcaps names x86-64 builds use
/// (elf/dl-hwcaps.c, sysdeps/x86/dl-hwcap.h, sysdeps/x86/dl-procinfo.h: the platforms
/// `haswell` and `xeon_phi`, the hwcap `avx512_1`, `tls`, and `x86_64`, the legacy
/// platform-independent subdirectory).
const HWCAPS_SUBDIRS: [&[u8]; 6] = [
    b"glibc-hwcaps",
    b"tls",
    b"haswell",
    b"xeon_phi",
    b"avx512_1",
    b"x86_64",
];

/// `FLAG_ELF_LIBC6 | FLAG_X8664_LIB64` (elf/ldconfig.h; sysdeps/unix/sysv/linux/x86_64/
/// dl-cache.h): the only flags an x86-64 loader accepts.
const FLAGS_X86_64_LIBC6: i32 = 0x0303;
const MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
const HEADER_LEN: usize = 48;
const ENTRY_LEN: usize = 24;
/// Bounds on what an image can make this write: names longer than this are left to the
/// default search, and an image with more libraries gets no cache.
const MAX_NAME: usize = 255;
const MAX_ENTRIES: usize = 16_384;
const PATH: &str = "etc/ld.so.cache";

/// One of [`SYSTEM_DIRS`] as found in the image: its device and inode (two names of one
/// directory count once) and the names in it that may be libraries.
struct SystemDir {
    path: &'static str,
    id: (u64, u64),
    names: Vec<Vec<u8>>,
}

/// What [`write_for_image`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum LdCache {
    /// A cache with this many entries is in the image.
    Written(usize),
    /// None was written, for this reason.
    Skipped(&'static str),
}

/// Writes `etc/ld.so.cache` beneath `root` (a freshly unpacked toolchain image) as the
/// module's docs describe, unless the image has one, no library qualifies, or the
/// directories rule it out. Paths resolve as the sandbox would see them.
pub fn write_for_image(root: &RootDir) -> Result<LdCache, BeneathError> {
    if !cfg!(target_arch = "x86_64") {
        return Ok(LdCache::Skipped("only x86-64 images get a cache"));
    }
    let mut dirs: Vec<SystemDir> = Vec::new();
    for dir in SYSTEM_DIRS {
        let comps = split(dir.as_bytes())?;
        let fd = match resolve_dir(root, &comps, Create::No, dir.as_bytes()) {
            Ok(fd) => fd,
            Err(BeneathError::Missing { .. }) => continue,
            Err(e) => return Err(e),
        };
        let st = fstat(fd.as_fd()).map_err(|e| io_err("stat", dir.as_bytes(), e))?;
        let id = (st.st_dev, st.st_ino);
        if dirs.iter().any(|d| d.id == id) {
            continue;
        }
        let Some(names) = library_names(fd, dir)? else {
            return Ok(LdCache::Skipped(
                "a system directory has a hwcaps subdirectory",
            ));
        };
        dirs.push(SystemDir {
            path: dir,
            id,
            names,
        });
    }
    let mut by_name: std::collections::HashMap<&[u8], (usize, &str)> = Default::default();
    for d in &dirs {
        for n in &d.names {
            by_name.entry(n).or_insert((0, d.path)).0 += 1;
        }
    }
    let mut entries: Vec<(Vec<u8>, Vec<u8>)> = by_name
        .into_iter()
        .filter(|(_, (count, _))| *count == 1)
        .map(|(name, (_, dir))| {
            let path = [b"/", dir.as_bytes(), b"/", name].concat();
            (name.to_vec(), path)
        })
        .collect();
    if entries.is_empty() {
        return Ok(LdCache::Skipped("no library in the system directories"));
    }
    if entries.len() > MAX_ENTRIES {
        return Ok(LdCache::Skipped(
            "more libraries than a cache is written for",
        ));
    }
    entries.sort_by(|a, b| libcmp(&b.0, &a.0));
    // Names the comparison cannot tell apart (`lib01.so`, `lib1.so`) would let a lookup
    // of one land on the other: both are left to the default search.
    let ties: Vec<bool> = (0..entries.len())
        .map(|i| {
            let same = |j: usize| libcmp(&entries[i].0, &entries[j].0).is_eq();
            (i > 0 && same(i - 1)) || (i + 1 < entries.len() && same(i + 1))
        })
        .collect();
    let mut tie = ties.into_iter();
    entries.retain(|_| !tie.next().unwrap_or(false));
    if entries.is_empty() {
        return Ok(LdCache::Skipped("no library in the system directories"));
    }
    let bytes = encode(&entries);

    let comps = split(b"etc")?;
    let etc = resolve_dir(root, &comps, Create::Yes(None), b"etc")?;
    let name = cstr(b"ld.so.cache");
    match fstatat_nofollow(etc.as_fd(), &name) {
        Err(Errno::ENOENT) => {}
        Ok(_) => return Ok(LdCache::Skipped("the image has its own")),
        Err(e) => return Err(io_err("stat", PATH.as_bytes(), e)),
    }
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW;
    let fd = openat_raw(etc.as_fd(), &name, flags | OFlag::O_CLOEXEC, 0o644)
        .map_err(|e| io_err("create", PATH.as_bytes(), e))?;
    let mut file = std::fs::File::from(fd);
    if let Err(e) = file.write_all(&bytes) {
        // A partial file is ignored by the loader; remove it all the same.
        let _ = nix::unistd::unlinkat(
            etc.as_fd(),
            name.as_c_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        return Err(io_err("write", PATH.as_bytes(), e));
    }
    Ok(LdCache::Written(entries.len()))
}

/// The names in a system directory that may be libraries (regular files and symlinks
/// whose name has `.so`, in plain characters), or None if it holds a hwcaps subdirectory.
fn library_names(fd: OwnedFd, shown: &str) -> Result<Option<Vec<Vec<u8>>>, BeneathError> {
    // A second descriptor of the directory for fstatat while the first is iterated.
    let at = fd
        .try_clone()
        .map_err(|e| io_err("open", shown.as_bytes(), e))?;
    let mut dir = Dir::from_fd(fd).map_err(|e| io_err("open", shown.as_bytes(), e))?;
    let mut names = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(|e| io_err("read", shown.as_bytes(), e))?;
        let name = entry.file_name().to_bytes();
        let kind = match entry.file_type() {
            Some(t) => t,
            None => {
                let st = fstatat_nofollow(at.as_fd(), entry.file_name())
                    .map_err(|e| io_err("stat", shown.as_bytes(), e))?;
                match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
                    SFlag::S_IFDIR => Type::Directory,
                    SFlag::S_IFREG => Type::File,
                    SFlag::S_IFLNK => Type::Symlink,
                    _ => Type::Fifo,
                }
            }
        };
        if HWCAPS_SUBDIRS.contains(&name) && matches!(kind, Type::Directory | Type::Symlink) {
            return Ok(None);
        }
        if matches!(kind, Type::File | Type::Symlink) && is_library_name(name) {
            names.push(name.to_vec());
        }
    }
    Ok(Some(names))
}

/// A name worth an entry: `.so` in it, at most [`MAX_NAME`] bytes of letters, digits and
/// `._+-` (so [`libcmp`] never meets a byte whose signedness would matter, nor a digit run
/// long enough to overflow the loader's int).
fn is_library_name(name: &[u8]) -> bool {
    name.len() <= MAX_NAME
        && name.windows(3).any(|w| w == b".so")
        && name
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || b"._+-".contains(&c))
        && name
            .split(|c| !c.is_ascii_digit())
            .all(|run| run.len() <= 9)
}

/// glibc's `_dl_cache_libcmp` (elf/dl-cache.c): byte order, except that runs of digits
/// compare by value and a digit sorts after any other byte. The loader's binary search
/// (`search_cache`) expects entries in descending order of it.
fn libcmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (mut i, mut j) = (0, 0);
    while i < a.len() {
        let (x, y) = (a[i], b.get(j).copied().unwrap_or(0));
        if x.is_ascii_digit() {
            if !y.is_ascii_digit() {
                return Ordering::Greater;
            }
            let run = |s: &[u8], mut k: usize| {
                let mut v: u64 = 0;
                while k < s.len() && s[k].is_ascii_digit() {
                    v = v * 10 + u64::from(s[k] - b'0');
                    k += 1;
                }
                (v, k)
            };
            let ((v1, ni), (v2, nj)) = (run(a, i), run(b, j));
            if v1 != v2 {
                return v1.cmp(&v2);
            }
            (i, j) = (ni, nj);
        } else if y.is_ascii_digit() {
            return Ordering::Less;
        } else if x != y {
            return x.cmp(&y);
        } else {
            i += 1;
            j += 1;
        }
    }
    0u8.cmp(&b.get(j).copied().unwrap_or(0))
}

/// The cache file: `struct cache_file_new` (flags 0: endianness unrecorded, accepted by
/// every reader; no extension directory), the entries, then their strings. Offsets count
/// from the start of the file.
fn encode(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let strings_at = HEADER_LEN + ENTRY_LEN * entries.len();
    let mut strings: Vec<u8> = Vec::new();
    let mut table: Vec<u8> = Vec::with_capacity(ENTRY_LEN * entries.len());
    for (name, path) in entries {
        let key = (strings_at + strings.len()) as u32;
        strings.extend_from_slice(name);
        strings.push(0);
        let value = (strings_at + strings.len()) as u32;
        strings.extend_from_slice(path);
        strings.push(0);
        table.extend_from_slice(&FLAGS_X86_64_LIBC6.to_le_bytes());
        table.extend_from_slice(&key.to_le_bytes());
        table.extend_from_slice(&value.to_le_bytes());
        table.extend_from_slice(&0u32.to_le_bytes()); // osversion
        table.extend_from_slice(&0u64.to_le_bytes()); // hwcap: none
    }
    let mut out = Vec::with_capacity(strings_at + strings.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    out.extend_from_slice(&(strings.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 4]); // flags, padding
    out.extend_from_slice(&0u32.to_le_bytes()); // extension_offset: none
    out.extend_from_slice(&[0u8; 12]); // unused
    debug_assert_eq!(out.len(), HEADER_LEN);
    out.extend_from_slice(&table);
    out.extend_from_slice(&strings);
    out
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering;
    use std::collections::BTreeMap;
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::Path;

    use super::*;

    /// Reads a cache back: name -> path, checking every offset lands in the file.
    fn decode(bytes: &[u8]) -> BTreeMap<String, String> {
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        assert_eq!(&bytes[..20], MAGIC);
        let n = u32_at(20) as usize;
        let strings = u32_at(24) as usize;
        assert_eq!(bytes.len(), HEADER_LEN + n * ENTRY_LEN + strings);
        let string = |at: u32| {
            let s = &bytes[at as usize..];
            String::from_utf8(s[..s.iter().position(|&c| c == 0).unwrap()].to_vec()).unwrap()
        };
        let mut map = BTreeMap::new();
        let mut previous: Option<String> = None;
        for i in 0..n {
            let e = HEADER_LEN + i * ENTRY_LEN;
            assert_eq!(
                i32::from_le_bytes(bytes[e..e + 4].try_into().unwrap()),
                0x0303
            );
            let (name, path) = (string(u32_at(e + 4)), string(u32_at(e + 8)));
            if let Some(p) = &previous {
                // Descending, as search_cache's binary search expects.
                assert_eq!(libcmp(p.as_bytes(), name.as_bytes()), Ordering::Greater);
            }
            previous = Some(name.clone());
            map.insert(name, path);
        }
        map
    }

    fn put(root: &Path, rel: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, b"\x7fELF").unwrap();
    }

    fn write(root: &Path) -> LdCache {
        write_for_image(&RootDir::open(root).unwrap()).unwrap()
    }

    #[test]
    fn libcmp_orders_digit_runs_by_value_and_digits_after_other_bytes() {
        let cmp = |a: &str, b: &str| libcmp(a.as_bytes(), b.as_bytes());
        assert_eq!(cmp("libc.so.6", "libc.so.6"), Ordering::Equal);
        assert_eq!(cmp("libc.so.6", "libc.so.10"), Ordering::Less);
        assert_eq!(cmp("libz.so.1.2.13", "libz.so.1.2.3"), Ordering::Greater);
        assert_eq!(cmp("lib1.so", "liba.so"), Ordering::Greater);
        assert_eq!(cmp("liba.so", "lib1.so"), Ordering::Less);
        assert_eq!(cmp("libc.so", "libc.so.6"), Ordering::Less);
        assert_eq!(cmp("libc.so.6", "libc.so"), Ordering::Greater);
        assert_eq!(cmp("lib01.so", "lib1.so"), Ordering::Equal);
        assert_eq!(cmp("libm.so.6", "libc.so.6"), Ordering::Greater);
    }

    #[test]
    fn names_in_one_system_directory_are_listed_and_the_rest_left_to_the_loader() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        put(r, "lib/x86_64-linux-gnu/libc.so.6");
        put(r, "usr/lib/x86_64-linux-gnu/libz.so.1.2.13");
        symlink(
            "libz.so.1.2.13",
            r.join("usr/lib/x86_64-linux-gnu/libz.so.1"),
        )
        .unwrap();
        // In two system directories: the builds' orders differ, so no entry.
        put(r, "lib/libtwice.so.1");
        put(r, "usr/lib/libtwice.so.1");
        // lib64 is lib: one directory, listed once, under its first name.
        symlink("lib", r.join("lib64")).unwrap();
        // Indistinguishable to the loader's comparison: neither.
        put(r, "usr/lib/libx01.so");
        put(r, "usr/lib/libx1.so");
        // Not libraries, or not in a system directory.
        put(r, "usr/lib/notes.txt");
        put(r, "usr/lib/gcc/x86_64-linux-gnu/12/liblto_plugin.so");
        put(r, "opt/lib/libelse.so.1");
        put(r, &format!("usr/lib/lib{}.so", "9".repeat(10)));

        assert_eq!(write(r), LdCache::Written(3));
        let map = decode(&fs::read(r.join("etc/ld.so.cache")).unwrap());
        let want: BTreeMap<String, String> = [
            ("libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6"),
            ("libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1"),
            ("libz.so.1.2.13", "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(map, want);

        // glibc's own reader (ldconfig -p prints a cache file) reads the same entries.
        let Ok(out) = std::process::Command::new("/sbin/ldconfig")
            .arg("-C")
            .arg(r.join("etc/ld.so.cache"))
            .arg("-p")
            .output()
        else {
            eprintln!("SKIP (glibc's reader): no /sbin/ldconfig");
            return;
        };
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(printed.starts_with("3 libs found in cache"), "{printed}");
        for (name, path) in &want {
            let line = format!("\t{name} (libc6,x86-64) => {path}");
            assert!(
                printed.lines().any(|l| l == line),
                "{line:?} not in {printed}"
            );
        }
    }

    #[test]
    fn a_hwcaps_subdirectory_means_no_cache() {
        let t = tempfile::tempdir().unwrap();
        put(t.path(), "usr/lib/x86_64-linux-gnu/libc.so.6");
        put(
            t.path(),
            "usr/lib/x86_64-linux-gnu/glibc-hwcaps/x86-64-v3/libc.so.6",
        );
        assert!(matches!(write(t.path()), LdCache::Skipped(_)));
        assert!(!t.path().join("etc/ld.so.cache").exists());
    }

    #[test]
    fn the_images_own_cache_even_a_symlink_is_left_alone() {
        let t = tempfile::tempdir().unwrap();
        put(t.path(), "lib/libc.so.6");
        fs::create_dir(t.path().join("etc")).unwrap();
        symlink("/nowhere", t.path().join("etc/ld.so.cache")).unwrap();
        assert_eq!(write(t.path()), LdCache::Skipped("the image has its own"));
        assert_eq!(
            fs::read_link(t.path().join("etc/ld.so.cache")).unwrap(),
            Path::new("/nowhere")
        );
    }

    #[test]
    fn an_etc_symlink_out_of_the_image_is_resolved_inside_it() {
        let t = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        put(&root, "lib/libc.so.6");
        // As the sandbox sees it, "/host-etc" is beneath the image root.
        symlink(host.path(), root.join("etc")).unwrap();
        assert_eq!(write(&root), LdCache::Written(1));
        assert_eq!(
            fs::read_dir(host.path()).unwrap().count(),
            0,
            "written outside"
        );
        let inside = root.join(host.path().strip_prefix("/").unwrap());
        assert!(inside.join("ld.so.cache").is_file());
    }
}
