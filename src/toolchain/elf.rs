//! The ELF interpreter (PT_INTERP) of a program, read from its headers.
//!
//! A dynamically linked program names its loader in a PT_INTERP program header
//! (`/lib64/ld-linux-x86-64.so.2`, FreeBSD's `/libexec/ld-elf.so.1`); execve(2) opens that
//! path, so a toolchain without it cannot start in a sandbox without a base layer. glibc's
//! ldd happens to list the loader, FreeBSD's never does (usr.bin/ldd/ldd.c), so it is read
//! here, the same way on every platform. Layouts: the System V gABI, "ELF Header" and
//! "Program Header" (`Elf32_Ehdr`/`Elf64_Ehdr`, `Elf32_Phdr`/`Elf64_Phdr`; FreeBSD
//! sys/sys/elf32.h and elf64.h, glibc elf/elf.h).

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

const PT_INTERP: u32 = 3;
/// More program headers than any real program has; bounds the loop on a corrupt file.
const MAX_PHNUM: u16 = 512;
/// PATH_MAX: the longest interpreter path execve would accept.
const MAX_INTERP_BYTES: u64 = 4096;

/// Reads fixed-width integers in the file's byte order.
struct Endian {
    little: bool,
}

impl Endian {
    fn u16(&self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        if self.little {
            u16::from_le_bytes(a)
        } else {
            u16::from_be_bytes(a)
        }
    }
    fn u32(&self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        if self.little {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    }
    fn u64(&self, b: &[u8]) -> u64 {
        let a: [u8; 8] = b[..8].try_into().expect("8 bytes");
        if self.little {
            u64::from_le_bytes(a)
        } else {
            u64::from_be_bytes(a)
        }
    }
}

/// The interpreter `path` asks for, or None for a static program, a file that is not ELF,
/// or one whose headers are malformed.
pub(super) fn interpreter(path: &Path) -> io::Result<Option<PathBuf>> {
    let mut f = fs::File::open(path)?;
    let mut ehdr = [0u8; 64];
    let n = read_up_to(&mut f, &mut ehdr)?;
    if n < 52 || ehdr[..4] != *b"\x7fELF" {
        return Ok(None);
    }
    let wide = match ehdr[4] {
        1 => false, // ELFCLASS32
        2 => true,  // ELFCLASS64
        _ => return Ok(None),
    };
    let e = Endian {
        little: match ehdr[5] {
            1 => true,  // ELFDATA2LSB
            2 => false, // ELFDATA2MSB
            _ => return Ok(None),
        },
    };
    if wide && n < 64 {
        return Ok(None);
    }
    // e_phoff, e_phentsize, e_phnum
    let (phoff, phentsize, phnum) = if wide {
        (e.u64(&ehdr[32..]), e.u16(&ehdr[54..]), e.u16(&ehdr[56..]))
    } else {
        (
            u64::from(e.u32(&ehdr[28..])),
            e.u16(&ehdr[42..]),
            e.u16(&ehdr[44..]),
        )
    };
    let min_entsize = if wide { 56 } else { 32 };
    if phnum > MAX_PHNUM || usize::from(phentsize) < min_entsize {
        return Ok(None);
    }
    let mut phdr = vec![0u8; usize::from(phentsize)];
    for i in 0..u64::from(phnum) {
        let Some(at) = phoff.checked_add(i * u64::from(phentsize)) else {
            return Ok(None);
        };
        f.seek(SeekFrom::Start(at))?;
        if read_up_to(&mut f, &mut phdr)? < phdr.len() {
            return Ok(None);
        }
        if e.u32(&phdr) != PT_INTERP {
            continue;
        }
        // p_offset, p_filesz
        let (offset, size) = if wide {
            (e.u64(&phdr[8..]), e.u64(&phdr[32..]))
        } else {
            (u64::from(e.u32(&phdr[4..])), u64::from(e.u32(&phdr[16..])))
        };
        if size == 0 || size > MAX_INTERP_BYTES {
            return Ok(None);
        }
        f.seek(SeekFrom::Start(offset))?;
        let mut name = Vec::new();
        f.by_ref().take(size).read_to_end(&mut name)?;
        // The string is NUL-terminated within p_filesz.
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        name.truncate(end);
        if name.first() != Some(&b'/') {
            return Ok(None);
        }
        use std::os::unix::ffi::OsStringExt;
        return Ok(Some(PathBuf::from(std::ffi::OsString::from_vec(name))));
    }
    Ok(None)
}

fn read_up_to(f: &mut fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF file: header, one or two program headers, the interpreter string.
    fn synth(wide: bool, little: bool, interp: Option<&[u8]>) -> Vec<u8> {
        let (ehsize, phentsize) = if wide { (64usize, 56usize) } else { (52, 32) };
        let phnum = 2u16;
        let str_at = ehsize + phentsize * usize::from(phnum);
        let mut f = vec![0u8; str_at];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = if wide { 2 } else { 1 };
        f[5] = if little { 1 } else { 2 };
        let put16 = |f: &mut Vec<u8>, at: usize, v: u16| {
            let b = if little {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            };
            f[at..at + 2].copy_from_slice(&b);
        };
        let put32 = |f: &mut Vec<u8>, at: usize, v: u32| {
            let b = if little {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            };
            f[at..at + 4].copy_from_slice(&b);
        };
        let put64 = |f: &mut Vec<u8>, at: usize, v: u64| {
            let b = if little {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            };
            f[at..at + 8].copy_from_slice(&b);
        };
        if wide {
            put64(&mut f, 32, ehsize as u64);
            put16(&mut f, 54, phentsize as u16);
            put16(&mut f, 56, phnum);
        } else {
            put32(&mut f, 28, ehsize as u32);
            put16(&mut f, 42, phentsize as u16);
            put16(&mut f, 44, phnum);
        }
        // The first program header is PT_LOAD (1), the second PT_INTERP when asked.
        put32(&mut f, ehsize, 1);
        if let Some(s) = interp {
            let ph = ehsize + phentsize;
            put32(&mut f, ph, PT_INTERP);
            let len = s.len() as u64 + 1;
            if wide {
                put64(&mut f, ph + 8, str_at as u64);
                put64(&mut f, ph + 32, len);
            } else {
                put32(&mut f, ph + 4, str_at as u32);
                put32(&mut f, ph + 16, len as u32);
            }
            f.extend_from_slice(s);
            f.push(0);
        }
        f
    }

    fn interp_of(bytes: &[u8]) -> Option<PathBuf> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("prog");
        fs::write(&p, bytes).unwrap();
        interpreter(&p).unwrap()
    }

    #[test]
    fn reads_pt_interp_in_every_class_and_byte_order() {
        for wide in [false, true] {
            for little in [false, true] {
                let f = synth(wide, little, Some(b"/libexec/ld-elf.so.1"));
                assert_eq!(
                    interp_of(&f),
                    Some(PathBuf::from("/libexec/ld-elf.so.1")),
                    "wide {wide} little {little}"
                );
                assert_eq!(interp_of(&synth(wide, little, None)), None);
            }
        }
    }

    #[test]
    fn malformed_or_foreign_files_have_none() {
        assert_eq!(interp_of(b"#!/bin/sh\necho hi\n"), None);
        assert_eq!(interp_of(b"\x7fELF"), None);
        let mut f = synth(true, true, Some(b"/lib/ld.so"));
        f.truncate(70); // program headers cut off
        assert_eq!(interp_of(&f), None);
        let relative = synth(true, true, Some(b"ld.so"));
        assert_eq!(interp_of(&relative), None);
    }

    #[test]
    fn reads_the_host_compilers_interpreter() {
        let Some(cc) = super::super::which("cc") else {
            println!("SKIP: no host C compiler");
            return;
        };
        let cc = fs::canonicalize(cc).unwrap();
        let interp = interpreter(&cc).unwrap().expect("a dynamically linked cc");
        assert!(interp.is_absolute() && interp.exists(), "{interp:?}");
    }
}
