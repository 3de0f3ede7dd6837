//! Refilling the page cache of a toolchain's executables and libraries by reading them, so
//! that every compiler process maps them from large folios.
//!
//! How a file's pages came into the page cache changes how fast the compiler runs from it:
//! pages a `read(2)` brought in come in large folios (the readahead of sequential reads,
//! `page_cache_ra_order` in mm/readahead.c), while pages faulted in through the mappings of
//! an `execve` or `mmap` come in single pages (`do_sync_mmap_readahead`). Measured on this
//! project's machine (AMD EPYC, Linux 6.18, ext4): a near-empty compile with cc1, as and
//! their libraries refilled this way took 1.35-1.41 ms less (about 7 %) than from freshly
//! written copies of the same files, and 0.7-1.7 ms less than from pages faulted in; the
//! number of page faults barely moved, so the gain is in address translation (physically
//! contiguous folios). Whatever the cause on another machine, refilling costs one sequential
//! read of those files once per image, off the compile path: when the image is made, and
//! in a background thread ([`Background`]) for the images adopted at start.
//!
//! Only regular files of at least [`MIN_BYTES`] that start with the ELF magic are refilled:
//! the compiler's text and data. The walk follows no symlink (each directory is opened
//! beneath its parent with `O_NOFOLLOW`), is bounded in depth and entries, and stops at the
//! first error: it is an optimisation, never a reason to fail an image.
//!
//! A read gets large folios only from contiguous free memory (the `folios` module): after
//! reading, each file's pages are counted, and [`refill_compacting`] compacts memory and
//! reads an image again once when fewer than [`folios::TARGET`] of them are large.

use std::ffi::CStr;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::dir::{Dir, Type};
use nix::fcntl::{posix_fadvise, OFlag, PosixFadviseAdvice};
use nix::sys::stat::{fstat, Mode, SFlag};

use super::folios::{self, FolioCount};

/// Files smaller than this are left alone (headers, scripts, small libraries).
pub const MIN_BYTES: u64 = 64 << 10;
/// Images whose refilled files are smaller than this together are never worth compacting
/// memory for: a compiler's large files are (cc1 alone is about 30 MB), and a small
/// file's pages mostly stay in small folios whatever is free.
const COMPACT_MIN_BYTES: u64 = 16 << 20;
const MAX_DEPTH: usize = 64;
const MAX_ENTRIES: usize = 1 << 20;

/// What [`refill`] read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refilled {
    pub files: u64,
    pub bytes: u64,
    /// Their pages in the page cache afterwards, and how many are in large folios (none
    /// counted without CAP_SYS_ADMIN).
    pub folios: FolioCount,
    /// Memory was compacted and the files read again ([`refill_compacting`]).
    pub compacted: bool,
}

impl Refilled {
    /// Counts one more refilled file of `bytes`.
    pub fn file(&mut self, bytes: u64) {
        self.files += 1;
        self.bytes += bytes;
    }

    /// Adds what another refill read.
    pub fn add(&mut self, other: Refilled) {
        self.files += other.files;
        self.bytes += other.bytes;
        self.folios.add(other.folios);
        self.compacted |= other.compacted;
    }
}

/// Drops the cached pages of every ELF file of at least [`MIN_BYTES`] beneath `dir` and
/// reads it back sequentially (see the module's docs). Dirty pages are not dropped
/// (POSIX_FADV_DONTNEED only starts their writeback): call it on files already written
/// back, as after syncfs(2).
pub fn refill(dir: &Path) -> std::io::Result<Refilled> {
    refill_until(dir, &AtomicBool::new(false))
}

/// [`refill`], then, if fewer than [`folios::TARGET`] of the pages read came in large
/// folios, compacts memory (machine-wide, once) and refills again.
pub fn refill_compacting(dir: &Path) -> std::io::Result<Refilled> {
    refill_large(dir, &AtomicBool::new(false), true)
}

/// [`refill_until`], compacting and reading again once if `compact` and the share of large
/// folios is under target.
fn refill_large(dir: &Path, stop: &AtomicBool, compact: bool) -> std::io::Result<Refilled> {
    let first = refill_until(dir, stop)?;
    let share = first.folios.share();
    if !compact || !worth_compacting(&first) || stop.load(Ordering::Relaxed) {
        return Ok(first);
    }
    if let Err(e) = folios::compact_memory() {
        log::warn!(
            "{}: large folios {:.0} %; compacting memory: {e}",
            dir.display(),
            share * 100.0
        );
        return Ok(first);
    }
    let mut again = refill_until(dir, stop)?;
    again.compacted = true;
    log::debug!(
        "{}: large folios {:.0} %, after compacting memory {:.0} %",
        dir.display(),
        share * 100.0,
        again.folios.share() * 100.0
    );
    Ok(again)
}

/// Whether a refill that read `r` should compact memory and read again: enough bytes to
/// matter, pages counted (root), and too few of them in large folios.
fn worth_compacting(r: &Refilled) -> bool {
    r.bytes >= COMPACT_MIN_BYTES && r.folios.present > 0 && r.folios.share() < folios::TARGET
}

/// [`refill`] that gives up, between two reads of at most 1 MiB, once `stop` is set.
fn refill_until(dir: &Path, stop: &AtomicBool) -> std::io::Result<Refilled> {
    let top = Dir::open(dir, dir_flags(), Mode::empty())?;
    let mut done = Refilled::default();
    let mut seen = 0usize;
    walk(top, 0, &mut seen, &mut done, stop)?;
    Ok(done)
}

/// Refills adopted images in a thread of its own (`jb-page-cache`): after a reboot their
/// pages would otherwise come in through the compilers' faults. Dropping it stops the
/// thread at its next read and joins it.
pub(crate) struct Background {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Refilled>>,
}

impl Background {
    pub(crate) fn start(dirs: Vec<PathBuf>, compact: bool) -> std::io::Result<Background> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("jb-page-cache".into())
            .spawn(move || {
                let mut all = Refilled::default();
                for dir in dirs {
                    match refill_large(&dir, &flag, compact) {
                        Ok(r) => all.add(r),
                        // An image removed meanwhile (over max_images), or the backend gone.
                        Err(e) => log::debug!("page cache of {} not refilled: {e}", dir.display()),
                    }
                }
                log::debug!(
                    "page cache of adopted images refilled: {} files, {} bytes",
                    all.files,
                    all.bytes
                );
                all
            })?;
        Ok(Background {
            stop,
            thread: Some(thread),
        })
    }

    /// Waits for the thread to finish its work (not stopping it) and returns what it read.
    pub(crate) fn wait(mut self) -> Refilled {
        self.thread
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Refills the single regular file `path` as [`refill`] would, following symlinks (a
/// host's own toolchain, for the bench); its size, or None if it is not such a file.
pub fn refill_file(path: &Path) -> std::io::Result<Option<u64>> {
    let file = std::fs::File::open(path)?;
    Ok(refill_open(file, &AtomicBool::new(false))?.map(|(size, _)| size))
}

/// The pages of the file at `path` in the page cache, and how many are in large folios
/// (see the `folios` module).
pub fn large_folios_of(path: &Path) -> std::io::Result<FolioCount> {
    folios::count(&std::fs::File::open(path)?)
}

fn walk(
    dir: Dir,
    depth: usize,
    seen: &mut usize,
    done: &mut Refilled,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    if depth > MAX_DEPTH || stop.load(Ordering::Relaxed) {
        return Ok(());
    }
    let mut dir = dir;
    let mut names = Vec::new();
    for e in dir.iter() {
        let e = e?;
        let n = e.file_name();
        if n == c"." || n == c".." {
            continue;
        }
        *seen += 1;
        if *seen > MAX_ENTRIES {
            return Ok(());
        }
        names.push((n.to_owned(), e.file_type()));
    }
    for (name, kind) in names {
        match kind {
            Some(Type::Directory) => {
                let sub = Dir::openat(dir.as_fd(), name.as_c_str(), dir_flags(), Mode::empty())?;
                walk(sub, depth + 1, seen, done, stop)?;
            }
            Some(Type::File) | None => {
                if let Some((bytes, f)) = refill_at(&dir, &name, stop)? {
                    done.file(bytes);
                    done.folios.add(f);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Opens `name` beneath `dir` without following a symlink or blocking on a FIFO, and
/// refills it if it is a large enough ELF file; its size and its pages in the page cache
/// (see the `folios` module) if so.
fn refill_at(
    dir: &Dir,
    name: &CStr,
    stop: &AtomicBool,
) -> std::io::Result<Option<(u64, FolioCount)>> {
    // Most of a toolchain is small files (headers): judged by fstatat, never opened.
    let st = nix::sys::stat::fstatat(dir.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG
        || (st.st_size as u64) < MIN_BYTES
    {
        return Ok(None);
    }
    let flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    let fd = match nix::fcntl::openat(dir.as_fd(), name, flags, Mode::empty()) {
        Ok(fd) => fd,
        // A symlink, or a directory whose type the listing did not give.
        Err(nix::errno::Errno::ELOOP | nix::errno::Errno::EISDIR) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    // Counting is an optimisation's measurement: its failure counts nothing.
    Ok(refill_open(std::fs::File::from(fd), stop)?
        .map(|(size, file)| (size, folios::count(&file).unwrap_or_default())))
}

/// Refills an open file if it is a regular ELF file of at least [`MIN_BYTES`] (checked on
/// the descriptor: what is checked is what is read); its size, and the file back, if so.
fn refill_open(
    mut file: std::fs::File,
    stop: &AtomicBool,
) -> std::io::Result<Option<(u64, std::fs::File)>> {
    let st = fstat(file.as_fd())?;
    let size = st.st_size as u64;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG || size < MIN_BYTES {
        return Ok(None);
    }
    let mut magic = [0u8; 4];
    if file.read_exact(&mut magic).is_err() || magic != *b"\x7fELF" {
        return Ok(None);
    }
    posix_fadvise(file.as_fd(), 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED)?;
    // Sequential reads from the start: readahead sees a stream and grows its folios.
    std::io::Seek::rewind(&mut file)?;
    let mut buf = vec![0u8; 1 << 20];
    while !stop.load(Ordering::Relaxed) {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some((size, file)))
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn memory_is_compacted_only_for_a_large_image_mostly_in_small_folios() {
        let r = |bytes: u64, present: u64, large: u64| Refilled {
            files: 1,
            bytes,
            folios: FolioCount { present, large },
            compacted: false,
        };
        let big = 80 << 20;
        assert!(worth_compacting(&r(big, 20_000, 9_000)));
        assert!(
            !worth_compacting(&r(big, 20_000, 15_000)),
            "above the target"
        );
        assert!(
            !worth_compacting(&r(big, 0, 0)),
            "nothing counted: not root"
        );
        assert!(
            !worth_compacting(&r(2 << 20, 500, 0)),
            "a busybox-sized image"
        );
    }

    #[test]
    fn only_large_elf_files_are_read_and_no_symlink_is_followed() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let big_elf = [b"\x7fELF".as_slice(), &vec![0u8; MIN_BYTES as usize]].concat();
        std::fs::create_dir_all(t.path().join("usr/lib")).unwrap();
        std::fs::write(t.path().join("usr/lib/libbig.so"), &big_elf).unwrap();
        std::fs::write(t.path().join("usr/lib/small.so"), b"\x7fELF").unwrap();
        std::fs::write(
            t.path().join("usr/lib/big.txt"),
            vec![b'x'; 2 * MIN_BYTES as usize],
        )
        .unwrap();
        std::fs::write(outside.path().join("libout.so"), &big_elf).unwrap();
        symlink(outside.path(), t.path().join("usr/escape")).unwrap();
        symlink(
            outside.path().join("libout.so"),
            t.path().join("usr/lib/link.so"),
        )
        .unwrap();
        nix::unistd::mkfifo(&t.path().join("usr/lib/fifo"), Mode::S_IRWXU).unwrap();

        let got = refill(t.path()).unwrap();
        assert_eq!((got.files, got.bytes), (1, big_elf.len() as u64), "{got:?}");
        // Every page of the one file read, counted (root only: frame numbers).
        if nix::unistd::geteuid().is_root() {
            assert_eq!(got.folios.present, (big_elf.len() as u64).div_ceil(4096));
        }
        assert_eq!(
            refill_file(&outside.path().join("libout.so")).unwrap(),
            Some(big_elf.len() as u64)
        );
        assert_eq!(
            refill_file(&t.path().join("usr/lib/big.txt")).unwrap(),
            None
        );
    }
}
