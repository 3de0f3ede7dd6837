//! How much of a file's page cache is in large folios, and asking the kernel for more.
//!
//! Reading a file back sequentially (the `page_cache` module) gives large folios only when
//! the kernel finds physically contiguous free memory; on a fragmented machine it falls
//! back to single pages (mm/readahead.c `page_cache_ra_order`, then `ra_alloc_folio` at a
//! lower order). Measured on this project's machine after a refill: the host's cc1 had 91 %
//! of its pages in large folios, an image's copy 46-49 %. So the share is measured, and a
//! refill that ends below [`TARGET`] may compact memory and read again.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// The share of pages in large folios below which a refill compacts memory and reads again.
/// Not higher: a file's first pages and small files stay in small folios (readahead starts
/// small and grows), so gcc's 17 executables and libraries of 64 KiB or more reach 79 % at
/// best here, compacted or not; the bad case measured was about half.
pub const TARGET: f64 = 0.6;

/// Pages of some files in the page cache, and how many of them are in large folios.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FolioCount {
    pub present: u64,
    pub large: u64,
}

impl FolioCount {
    pub fn add(&mut self, other: FolioCount) {
        self.present += other.present;
        self.large += other.large;
    }

    /// `large / present`, 0 when nothing is counted.
    pub fn share(&self) -> f64 {
        if self.present == 0 {
            return 0.0;
        }
        self.large as f64 / self.present as f64
    }
}

/// Counts `file`'s pages in the page cache and those in large folios: maps it, touches
/// every page (read faults map the cached pages), and looks the frames up in
/// /proc/self/pagemap and /proc/kpageflags (KPF_COMPOUND_HEAD and KPF_COMPOUND_TAIL;
/// Documentation/admin-guide/mm/pagemap.rst). Needs CAP_SYS_ADMIN: without it the kernel
/// reports every frame as 0, and nothing is counted.
pub fn count(file: &File) -> io::Result<FolioCount> {
    const COMPOUND: u64 = (1 << 15) | (1 << 16);
    const PRESENT: u64 = 1 << 63;
    const PFN: u64 = (1 << 55) - 1;
    let len = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
    if len == 0 || len > 1 << 34 {
        return Ok(FolioCount::default());
    }
    // SAFETY: sysconf with a valid name.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .unwrap_or(4096)
        .max(4096);
    let mapping = Mapping::new(file, len)?;
    let pages = len.div_ceil(page);
    let mut sum = 0u8;
    for i in 0..pages {
        sum ^= mapping.byte(i * page);
    }
    std::hint::black_box(sum);
    let pagemap = File::open("/proc/self/pagemap")?;
    let flags = File::open("/proc/kpageflags")?;
    let mut entries = vec![0u8; pages * 8];
    pagemap.read_exact_at(&mut entries, (mapping.addr() / page as u64) * 8)?;
    let mut n = FolioCount::default();
    for e in entries.chunks_exact(8) {
        let e = u64::from_le_bytes(e.try_into().expect("chunks of 8"));
        if e & PRESENT == 0 || e & PFN == 0 {
            continue;
        }
        let mut f = [0u8; 8];
        flags.read_exact_at(&mut f, (e & PFN) * 8)?;
        n.present += 1;
        if u64::from_le_bytes(f) & COMPOUND != 0 {
            n.large += 1;
        }
    }
    Ok(n)
}

/// Asks the kernel to compact all memory (`vm.compact_memory`, root only), so that reading
/// a file again can get large folios. It costs CPU once, machine-wide (often 0.1-1 s).
pub fn compact_memory() -> io::Result<()> {
    std::fs::write("/proc/sys/vm/compact_memory", "1")
}

/// A private read-only mapping of a file, unmapped on drop.
struct Mapping {
    base: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(file: &File, len: usize) -> io::Result<Mapping> {
        // SAFETY: a new private read-only mapping of a descriptor we hold; it affects no
        // existing memory and is unmapped by Drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { base, len })
    }

    fn addr(&self) -> u64 {
        self.base as u64
    }

    /// The byte at `offset` (< len). A file truncated meanwhile would fault (SIGBUS): the
    /// files measured are images' and the host toolchain's, which nobody truncates.
    fn byte(&self, offset: usize) -> u8 {
        assert!(offset < self.len);
        // SAFETY: inside the mapping (checked above), readable.
        unsafe { std::ptr::read_volatile(self.base.cast::<u8>().add(offset)) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping this value made.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn every_cached_page_of_a_file_is_counted_once() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: frame numbers need CAP_SYS_ADMIN (run as root)");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        std::fs::write(&p, vec![7u8; (4 << 20) + 100]).unwrap();
        let mut f = File::open(&p).unwrap();
        let mut all = Vec::new();
        f.read_to_end(&mut all).unwrap();
        let n = count(&f).unwrap();
        let pages = ((4u64 << 20) + 100).div_ceil(4096);
        assert_eq!(n.present, pages, "{n:?}");
        assert!(n.large <= n.present);
        let mut twice = n;
        twice.add(n);
        assert_eq!(twice.share(), n.share());
        assert_eq!(FolioCount::default().share(), 0.0);
        assert_eq!(count(&File::open(t.path().join("f")).unwrap()).unwrap(), n);
    }
}
