//! How much of a file's page cache is in large folios, and asking the kernel for more.
//!
//! Reading a file back sequentially (the `page_cache` module) gives large folios only when
//! the kernel finds physically contiguous free memory; on a fragmented machine it falls
//! back to smaller ones, down to single pages (mm/readahead.c `page_cache_ra_order`, then
//! `ra_alloc_folio` at a lower order). Measured on this project's machine after a refill,
//! counting any compound page as large: the host's cc1 had 91 % of its pages in large
//! folios, an image's copy 46-49 %. So the share is measured, and a refill that ends below
//! [`TARGET`] may compact memory and read again.
//!
//! A folio counts as large from [`LARGE_BYTES`] (64 KiB) on, not from two pages: a copy of
//! cc1 read back on fragmented memory had 75 % of its pages in compound folios, but none
//! over 64 KiB and most of 16 KiB, and a process mapping all of it took 1.04-1.15 ms against
//! 0.62 ms for the host's copy (256 KiB-1 MiB folios for half its pages): a fault maps the
//! folios inside its fault-around window (`fault_around_bytes`, 64 KiB by default;
//! mm/memory.c `do_fault_around`, mm/filemap.c `filemap_map_pages`) and pays per folio.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// The share of pages in large folios below which a refill compacts memory and reads again.
/// Not higher: a file's first pages and small files stay in small folios (readahead starts
/// small and grows), so gcc's 17 executables and libraries of 64 KiB or more reach 68 % at
/// best here, compacted or not; cc1 read back on fragmented memory had 24 %.
pub const TARGET: f64 = 0.6;

/// The smallest folio counted as large: one fault-around window (see the module's docs).
pub const LARGE_BYTES: u64 = 64 << 10;

/// Pages of some files in the page cache, and how many of them are in large folios (of at
/// least [`LARGE_BYTES`]).
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
/// /proc/self/pagemap and /proc/kpageflags (Documentation/admin-guide/mm/pagemap.rst).
/// Needs CAP_SYS_ADMIN: without it the kernel reports every frame as 0, and nothing is
/// counted.
pub fn count(file: &File) -> io::Result<FolioCount> {
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
    let mut runs = FolioRuns::new((LARGE_BYTES / page as u64).max(2));
    for e in entries.chunks_exact(8) {
        let e = u64::from_le_bytes(e.try_into().expect("chunks of 8"));
        if e & PRESENT == 0 || e & PFN == 0 {
            runs.page(None);
            continue;
        }
        let mut f = [0u8; 8];
        flags.read_exact_at(&mut f, (e & PFN) * 8)?;
        runs.page(Some(Frame {
            pfn: e & PFN,
            flags: u64::from_le_bytes(f),
        }));
    }
    Ok(runs.finish())
}

/// One mapped page: its frame number and its /proc/kpageflags word.
#[derive(Clone, Copy, Debug)]
struct Frame {
    pfn: u64,
    flags: u64,
}

/// Counts a mapping's pages, fed in order (`None`: not present), and those in folios of at
/// least `large_pages` pages, without keeping them. A folio is a KPF_COMPOUND_HEAD frame and
/// the KPF_COMPOUND_TAIL frames that follow it at consecutive frame numbers; a page outside
/// any compound folio is a folio of one page (never large: `large_pages` is at least 2),
/// and a folio the mapping cuts short (a hole, a tail without its head) counts only as
/// large as what is seen of it.
struct FolioRuns {
    large_pages: u64,
    counted: FolioCount,
    /// Pages of the compound folio being walked.
    run: u64,
    /// The previous page's frame, if it was present.
    last: Option<u64>,
}

impl FolioRuns {
    const HEAD: u64 = 1 << 15;
    const TAIL: u64 = 1 << 16;

    fn new(large_pages: u64) -> FolioRuns {
        FolioRuns {
            large_pages,
            counted: FolioCount::default(),
            run: 0,
            last: None,
        }
    }

    fn page(&mut self, frame: Option<Frame>) {
        let Some(f) = frame else {
            self.end_run();
            self.last = None;
            return;
        };
        self.counted.present += 1;
        let continues = f.flags & Self::TAIL != 0 && self.last.is_some_and(|p| p + 1 == f.pfn);
        if !continues {
            self.end_run();
        }
        if f.flags & (Self::HEAD | Self::TAIL) != 0 {
            self.run += 1;
        }
        self.last = Some(f.pfn);
    }

    fn end_run(&mut self) {
        if self.run >= self.large_pages {
            self.counted.large += self.run;
        }
        self.run = 0;
    }

    fn finish(mut self) -> FolioCount {
        self.end_run();
        self.counted
    }
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
    use crate::test_support::skip_unless_root;
    use std::io::Read;

    fn classify(frames: &[Option<Frame>], large_pages: u64) -> FolioCount {
        let mut runs = FolioRuns::new(large_pages);
        for f in frames {
            runs.page(*f);
        }
        runs.finish()
    }

    fn frames(folios: &[(u64, u64)]) -> Vec<Option<Frame>> {
        // (first pfn, pages): a compound folio when pages > 1, a single page otherwise.
        let mut v = Vec::new();
        for &(pfn, pages) in folios {
            for i in 0..pages {
                let flags = match (pages, i) {
                    (1, _) => 0,
                    (_, 0) => 1 << 15,
                    _ => 1 << 16,
                };
                v.push(Some(Frame {
                    pfn: pfn + i,
                    flags,
                }));
            }
        }
        v
    }

    #[test]
    fn only_folios_of_the_large_size_or_more_count_as_large() {
        // 16 KiB folios and single pages are small; 64 KiB and 1 MiB folios are large.
        let f = frames(&[(100, 4), (200, 1), (300, 16), (1000, 256), (5000, 4)]);
        assert_eq!(
            classify(&f, 16),
            FolioCount {
                present: 281,
                large: 272
            }
        );
        // Two small folios back to back at consecutive frames are still two folios.
        assert_eq!(classify(&frames(&[(0, 8), (8, 8)]), 16).large, 0);
        // A hole, or a tail whose frame does not follow, cuts a folio to what is seen.
        let mut holed = frames(&[(0, 32)]);
        holed[10] = None;
        assert_eq!(classify(&holed, 16).large, 21);
        let mut moved = frames(&[(0, 32)]);
        moved[20].as_mut().unwrap().pfn = 900;
        assert_eq!(classify(&moved, 16).large, 20);
        assert_eq!(classify(&[], 16), FolioCount::default());
    }

    #[test]
    fn every_cached_page_of_a_file_is_counted_once() {
        if skip_unless_root("folio count", "frame numbers need CAP_SYS_ADMIN") {
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
