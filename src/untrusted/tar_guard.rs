//! A bound on the tar entries the `tar` crate reads whole into memory.
//!
//! tar 0.4 reads a GNU long-name (`L`) or long-link (`K`) entry, and a pax extended header
//! (`x`), completely into a `Vec` before it yields the entry they describe
//! (tar-0.4.46 src/archive.rs `EntriesFields::next_entry`, `EntryFields::read_all`), with
//! no limit but the entry's own size field. A client could declare a 2 GiB long name and
//! make the server allocate that much per job, long before the unpack's byte budget or
//! name-length checks see the entry.
//!
//! [`ExtensionGuard`] sits between the archive bytes and `tar::Archive`. It walks the same
//! 512-byte block layout the crate walks (header, then the entry's data rounded up to a
//! block; a pax `size` record overriding the size of the next entry that is not itself an
//! extension header, as `next_entry_raw` does) and fails the read that would deliver an
//! extension entry larger than [`MAX_EXTENSION_BYTES`], before the crate buffers it. It only
//! observes: the bytes it passes on are the archive's. Where it cannot follow the layout
//! (a header whose size does not parse, the first all-zero block, which ends the archive
//! for the crate) it stops watching and lets the crate report what it finds.

use std::io::{self, Read};

/// Largest GNU long name, long link or pax extended header accepted. Names are refused
/// past 4096 bytes by the unpack anyway (PATH_MAX); pax headers also carry times, owners
/// and xattrs, so they get more room. No client needs more: sccache's inputs packager
/// writes GNU long names, no pax.
pub const MAX_EXTENSION_BYTES: u64 = 64 << 10;

const BLOCK: u64 = 512;

/// The error a refused extension entry surfaces as (inside an `io::Error`).
#[derive(Debug, thiserror::Error)]
#[error("a {kind} entry of {size} bytes (more than {MAX_EXTENSION_BYTES} allowed)")]
pub struct ExtensionTooLarge {
    pub kind: &'static str,
    pub size: u64,
}

enum State {
    /// Collecting the next header block (`filled` bytes of it so far).
    Header { filled: usize },
    /// Inside an entry's data and padding: `left` bytes to go. A pax header's data is
    /// kept to find its `size` record.
    Data { left: u64, pax: Option<Vec<u8>> },
    /// Past the end of the archive, or somewhere the crate will refuse: pass through.
    Done,
}

pub struct ExtensionGuard<R> {
    inner: R,
    state: State,
    header: [u8; BLOCK as usize],
    /// A pax `size` record waiting for the entry it describes.
    pax_size: Option<u64>,
}

impl<R: Read> ExtensionGuard<R> {
    pub fn new(inner: R) -> Self {
        ExtensionGuard {
            inner,
            state: State::Header { filled: 0 },
            header: [0; BLOCK as usize],
            pax_size: None,
        }
    }

    /// Follows `bytes`, the next bytes of the archive.
    fn observe(&mut self, mut bytes: &[u8]) -> Result<(), ExtensionTooLarge> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Done => return Ok(()),
                State::Header { filled } => {
                    let take = (BLOCK as usize - *filled).min(bytes.len());
                    self.header[*filled..*filled + take].copy_from_slice(&bytes[..take]);
                    *filled += take;
                    bytes = &bytes[take..];
                    if *filled == BLOCK as usize {
                        self.state = self.after_header()?;
                    }
                }
                State::Data { left, pax } => {
                    let take = (*left).min(bytes.len() as u64) as usize;
                    if let Some(p) = pax {
                        p.extend_from_slice(&bytes[..take]);
                    }
                    *left -= take as u64;
                    bytes = &bytes[take..];
                    if *left == 0 {
                        if let Some(p) = pax.take() {
                            self.pax_size = pax_size(&p);
                        }
                        self.state = State::Header { filled: 0 };
                    }
                }
            }
        }
        Ok(())
    }

    /// The state after a complete header block.
    fn after_header(&mut self) -> Result<State, ExtensionTooLarge> {
        if self.header.iter().all(|&b| b == 0) {
            return Ok(State::Done); // the end of the archive (tar's ignore_zeros is off)
        }
        let header = tar::Header::from_byte_slice(&self.header);
        let Ok(size) = header.entry_size() else {
            return Ok(State::Done); // the crate refuses this header itself
        };
        let ty = header.entry_type();
        let extension = match ty.as_byte() {
            b'L' => Some("GNU long name"),
            b'K' => Some("GNU long link"),
            b'x' => Some("pax extended header"),
            _ => None,
        };
        // A pax size applies to the next entry that is not an extension header (L, K, x, g);
        // a global header (g) ends the pax header's reach without using it.
        let size = match (extension, ty.as_byte()) {
            (Some(_), _) => size,
            (None, b'g') => {
                self.pax_size = None;
                size
            }
            (None, _) => self.pax_size.take().unwrap_or(size),
        };
        if let Some(kind) = extension {
            if size > MAX_EXTENSION_BYTES {
                return Err(ExtensionTooLarge { kind, size });
            }
        }
        // Extension blocks of a GNU sparse file follow its header; sparse files are refused
        // by the unpack, so only their first header needs following.
        if header
            .as_gnu()
            .is_some_and(|g| ty.is_gnu_sparse() && g.is_extended())
        {
            return Ok(State::Done);
        }
        let padded = size.div_ceil(BLOCK).saturating_mul(BLOCK);
        if padded == 0 {
            return Ok(State::Header { filled: 0 });
        }
        let pax = (ty.as_byte() == b'x').then(|| Vec::with_capacity(size as usize));
        Ok(State::Data { left: padded, pax })
    }
}

/// The `size` record of a pax header, read as tar 0.4 reads it (`pax_extensions_value`:
/// the first `size` record; nothing if a record before it is malformed).
fn pax_size(data: &[u8]) -> Option<u64> {
    for ext in tar::PaxExtensions::new(data) {
        let ext = ext.ok()?;
        if ext.key() != Ok("size") {
            continue;
        }
        return ext.value().ok()?.parse().ok();
    }
    None
}

impl<R: Read> Read for ExtensionGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.observe(&buf[..n])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(n)
    }
}

/// The refusal inside an error the tar crate returned, if that is what it is.
pub fn as_too_large(e: &io::Error) -> Option<&ExtensionTooLarge> {
    e.get_ref()?.downcast_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(path: &str, ty: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_entry_type(ty);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        h
    }

    /// An archive of raw blocks: each header followed by `size` bytes of data, padded.
    fn raw(entries: &[(tar::Header, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (h, data) in entries {
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0; 1024]);
        out
    }

    fn read_through(archive: &[u8], chunk: usize) -> io::Result<Vec<u8>> {
        let mut g = ExtensionGuard::new(archive);
        let mut out = Vec::new();
        let mut buf = vec![0; chunk];
        loop {
            match g.read(&mut buf)? {
                0 => return Ok(out),
                n => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    fn pax_record(key: &str, value: &str) -> Vec<u8> {
        // "LEN key=value\n", LEN counting itself.
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        format!("{len}{body}").into_bytes()
    }

    #[test]
    fn passes_ordinary_archives_through_unchanged_in_any_chunking() {
        let mut b = tar::Builder::new(Vec::new());
        let long = format!("{}/file.c", "d".repeat(300)); // a GNU long name (L entry)
        for (name, data) in [("a.c", &b"int a;"[..]), (long.as_str(), &[7u8; 1500][..])] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, data).unwrap();
        }
        let archive = b.into_inner().unwrap();
        for chunk in [1, 7, 512, 513, 4096, 1 << 20] {
            assert_eq!(
                read_through(&archive, chunk).unwrap(),
                archive,
                "chunk {chunk}"
            );
        }
        // And the crate reads it as ever.
        let mut ar = tar::Archive::new(ExtensionGuard::new(archive.as_slice()));
        let names: Vec<_> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.c", long.as_str()]);
    }

    #[test]
    fn refuses_an_oversized_long_name_link_or_pax_header_before_it_is_buffered() {
        for (ty, kind) in [
            (tar::EntryType::GNULongName, "GNU long name"),
            (tar::EntryType::GNULongLink, "GNU long link"),
            (tar::EntryType::XHeader, "pax extended header"),
        ] {
            // The size claims 2 GiB; only a few blocks follow. The refusal comes with the
            // header, before any of that data is read.
            let mut archive = header("././@LongLink", ty, 2 << 30).as_bytes().to_vec();
            archive.extend_from_slice(&[b'a'; 4096]);
            let e = read_through(&archive, 512).unwrap_err();
            let too = as_too_large(&e).expect("an ExtensionTooLarge");
            assert_eq!((too.kind, too.size), (kind, 2 << 30));
            // Through the tar crate, the same error surfaces from the entries iterator.
            let mut ar = tar::Archive::new(ExtensionGuard::new(archive.as_slice()));
            let err = match ar.entries().unwrap().next().unwrap() {
                Err(e) => e,
                Ok(_) => panic!("{kind}: the entry was yielded"),
            };
            assert!(as_too_large(&err).is_some(), "{err}");
        }
        // At the bound, fine.
        let name = vec![b'n'; MAX_EXTENSION_BYTES as usize];
        let archive = raw(&[(
            header(
                "././@LongLink",
                tar::EntryType::GNULongName,
                name.len() as u64,
            ),
            name,
        )]);
        assert!(read_through(&archive, 1000).is_ok());
    }

    #[test]
    fn follows_a_pax_size_override_to_the_next_header() {
        // A pax header says the next file holds 2048 bytes though its header says 0; the
        // crate skips 2048 bytes, so the guard must too: the oversized long name hidden in
        // that data is not a header, and the one after it is.
        let pax = pax_record("size", "2048");
        let mut hidden = header("x", tar::EntryType::GNULongName, 1 << 41)
            .as_bytes()
            .to_vec();
        hidden.resize(2048, 0);
        let archive = raw(&[
            (
                header("pax", tar::EntryType::XHeader, pax.len() as u64),
                pax.clone(),
            ),
            (header("file", tar::EntryType::Regular, 0), hidden),
            (header("big", tar::EntryType::GNULongName, 1 << 40), vec![]),
        ]);
        let e = read_through(&archive, 333).unwrap_err();
        assert_eq!(as_too_large(&e).unwrap().size, 1 << 40);
        // Without the override the guard would take the hidden block for a header and
        // report its 2^41 bytes instead.
        assert_eq!(pax_size(&pax), Some(2048));
        assert_eq!(pax_size(b"bad record"), None);
    }

    #[test]
    fn stops_watching_at_the_end_of_the_archive() {
        let mut archive = raw(&[(header("a", tar::EntryType::Regular, 3), b"abc".to_vec())]);
        // Garbage after the end-of-archive blocks is not parsed as headers.
        archive.extend_from_slice(header("z", tar::EntryType::GNULongName, 1 << 40).as_bytes());
        assert_eq!(read_through(&archive, 100).unwrap(), archive);
    }
}
