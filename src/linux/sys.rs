//! Host-side system calls of the Linux backend (never called in a forked child): mounts,
//! namespace pinning, mountinfo, pidfds, finding leftover sandbox processes.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use super::LinuxError;

pub(super) fn io(e: nix::errno::Errno) -> io::Error {
    io::Error::from(e)
}

/// Mounts a fresh tmpfs of `size` bytes on `path`: the per-container upper layer.
pub(super) fn mount_tmpfs(path: &Path, size: u64) -> io::Result<()> {
    let data = format!("size={size},mode=0755");
    mount(
        Some("jailbuilder"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(io)
}

/// Marks the directory `path` of a lower layer opaque (`trusted.overlay.opaque` = "y"):
/// overlayfs then shows only its entries, not those of the same directory in the layers
/// beneath (Documentation/filesystems/overlayfs.rst, "whiteouts and opaque directories").
/// Does nothing when the mark is there already; a filesystem without xattrs (EOPNOTSUPP)
/// is logged and tolerated: the lower layers' /dev then shows through, as before.
pub(super) fn set_overlay_opaque(path: &Path) -> io::Result<()> {
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut value = [0u8; 2];
    // SAFETY: lgetxattr(2) with NUL-terminated strings and a live buffer of that length.
    let n = unsafe {
        libc::lgetxattr(
            cpath.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    if n == 1 && value[0] == b'y' {
        return Ok(());
    }
    // SAFETY: lsetxattr(2) with NUL-terminated name and path and a 1-byte value, all live.
    let r = unsafe {
        libc::lsetxattr(
            cpath.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            b"y".as_ptr().cast(),
            1,
            0,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
            log::warn!(
                "{}: no extended attributes here, so the skeleton's /dev cannot be made \
                 opaque: lower layers' /dev entries stay visible in sandboxes",
                path.display()
            );
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// True when `path` can appear in overlayfs' comma/colon separated options unescaped.
pub(super) fn overlay_safe(path: &Path) -> bool {
    !path
        .as_os_str()
        .as_bytes()
        .iter()
        .any(|b| matches!(b, b',' | b':' | b'\\'))
}

/// Mounts overlayfs on `root`: `lowers` top-most first, nosuid (device nodes of the shared
/// skeleton layer must work, so not nodev).
pub(super) fn mount_overlay(
    root: &Path,
    lowers: &[&Path],
    upper: &Path,
    work: &Path,
) -> io::Result<()> {
    let mut data = OsString::from("lowerdir=");
    for (i, l) in lowers.iter().enumerate() {
        if i > 0 {
            data.push(":");
        }
        data.push(l.as_os_str());
    }
    data.push(",upperdir=");
    data.push(upper.as_os_str());
    data.push(",workdir=");
    data.push(work.as_os_str());
    mount(
        Some("jailbuilder"),
        root,
        Some("overlay"),
        MsFlags::MS_NOSUID,
        Some(data.as_os_str()),
    )
    .map_err(io)
}

/// Lazily unmounts `path` (the kernel frees it when the last user goes away).
pub(super) fn umount_detach(path: &Path) -> io::Result<()> {
    umount2(path, MntFlags::MNT_DETACH).map_err(io)
}

/// Unmounts `path` if something is mounted there; `Ok(false)` when nothing was.
pub(super) fn umount_if_mounted(path: &Path) -> Result<bool, LinuxError> {
    match umount_detach(path) {
        Ok(()) => Ok(true),
        // EINVAL: not a mount point; ENOENT: gone already.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => Ok(false),
        Err(source) => Err(LinuxError::Unmount {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Which namespaces to create, and the files to pin them on.
pub(super) struct NsPins<'a> {
    pub net: Option<&'a Path>,
    pub ipc: Option<&'a Path>,
    pub uts: Option<&'a Path>,
    /// (pin file, container root): a mount namespace whose root is the container root,
    /// pivoted into already, holding nothing but the overlay.
    pub mnt: Option<(&'a Path, &'a Path)>,
}

/// Creates new namespaces and pins each with a bind mount of its nsfs file onto an existing
/// empty file, without creating a process: a short-lived thread unshares (a thread of a
/// multi-threaded process may unshare net, ipc, uts, and with CLONE_FS a mount namespace),
/// opens `/proc/thread-self/ns/<kind>`, and for the mount namespace makes it private and
/// pivots it into the container root. This thread then bind-mounts the descriptors; the
/// namespaces outlive the helper thread through the mounts.
pub(super) fn pin_new_namespaces(pins: &NsPins<'_>, hostname: &str) -> Result<(), LinuxError> {
    let kinds: [(CloneFlags, &str, Option<&Path>); 4] = [
        (CloneFlags::CLONE_NEWNET, "net", pins.net),
        (CloneFlags::CLONE_NEWIPC, "ipc", pins.ipc),
        (CloneFlags::CLONE_NEWUTS, "uts", pins.uts),
        (
            CloneFlags::CLONE_FS | CloneFlags::CLONE_NEWNS,
            "mnt",
            pins.mnt.map(|(pin, _)| pin),
        ),
    ];
    let first = kinds
        .iter()
        .find_map(|(_, _, p)| *p)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let fds = std::thread::scope(|s| {
        s.spawn(|| -> Result<Vec<(OwnedFd, &Path)>, LinuxError> {
            let unshare_err = |e| LinuxError::Unshare {
                path: first.clone(),
                source: io(e),
            };
            let mut flags = CloneFlags::empty();
            for (f, _, p) in &kinds {
                if p.is_some() {
                    flags |= *f;
                }
            }
            unshare(flags).map_err(unshare_err)?;
            if pins.uts.is_some() {
                nix::unistd::sethostname(hostname).map_err(unshare_err)?;
            }
            let mut fds = Vec::new();
            for (_, kind, target) in &kinds {
                if let Some(target) = target {
                    let fd = open_ns(Path::new(&format!("/proc/thread-self/ns/{kind}")))?;
                    fds.push((fd, *target));
                }
            }
            if let Some((_, root)) = pins.mnt {
                pivot_into(root)?;
            }
            Ok(fds)
        })
        .join()
        .unwrap_or(Err(LinuxError::NamespaceThread {
            path: first.clone(),
        }))
    })?;
    for (fd, target) in fds {
        let src = format!("/proc/self/fd/{}", fd.as_raw_fd());
        mount(
            Some(src.as_str()),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| LinuxError::BindNamespace {
            path: target.to_path_buf(),
            source: io(e),
        })?;
    }
    Ok(())
}

/// In a thread that has its own mount namespace and fs attributes: makes every mount
/// private, pivots into `root` (a mount point) and detaches the old root, leaving a
/// namespace that holds only the container's overlay.
fn pivot_into(root: &Path) -> Result<(), LinuxError> {
    let err = |e| LinuxError::PivotRoot {
        root: root.to_path_buf(),
        source: io(e),
    };
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(err)?;
    nix::unistd::chdir(root).map_err(err)?;
    nix::unistd::pivot_root(".", ".").map_err(err)?;
    umount2(".", MntFlags::MNT_DETACH).map_err(err)?;
    nix::unistd::chdir("/").map_err(err)
}

/// Opens a pinned namespace file for setns(2).
pub(super) fn open_ns(path: &Path) -> Result<OwnedFd, LinuxError> {
    nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| LinuxError::Setns {
        path: path.to_path_buf(),
        source: io(e),
    })
}

/// pidfd_open(2): a descriptor that polls readable once `pid` has exited.
pub(super) fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Decodes the octal escapes (`\040` etc.) of a /proc/self/mountinfo field.
fn unescape(field: &[u8]) -> PathBuf {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() {
            let oct = &field[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = (oct[0] - b'0') as u32 * 64
                    + (oct[1] - b'0') as u32 * 8
                    + (oct[2] - b'0') as u32;
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    PathBuf::from(OsString::from_vec(out))
}

/// Mount points at or beneath `prefix`, in the order to unmount them: deepest first, and of
/// mounts stacked on one point, the top-most first.
pub(super) fn mounts_beneath(prefix: &Path) -> Result<Vec<PathBuf>, LinuxError> {
    let info =
        fs::read("/proc/self/mountinfo").map_err(|source| LinuxError::Mountinfo { source })?;
    let mut found: Vec<(usize, usize, PathBuf)> = Vec::new();
    for (line_no, line) in info.split(|b| *b == b'\n').enumerate() {
        let Some(field) = line.split(|b| *b == b' ').nth(4) else {
            continue;
        };
        let point = unescape(field);
        if point.starts_with(prefix) {
            found.push((point.components().count(), line_no, point));
        }
    }
    found.sort_by_key(|f| std::cmp::Reverse((f.0, f.1)));
    Ok(found.into_iter().map(|(_, _, p)| p).collect())
}

/// Unmounts (lazily) everything mounted at or beneath `prefix`, repeating until mountinfo
/// shows nothing there. Returns what it unmounted.
pub(super) fn unmount_all_beneath(prefix: &Path) -> Result<Vec<PathBuf>, LinuxError> {
    let mut done = Vec::new();
    for _round in 0..16 {
        let mounts = mounts_beneath(prefix)?;
        if mounts.is_empty() {
            return Ok(done);
        }
        for m in mounts {
            if umount_if_mounted(&m)? {
                done.push(m);
            }
        }
    }
    match mounts_beneath(prefix)?.into_iter().next() {
        Some(path) => Err(LinuxError::StillMounted { path }),
        None => Ok(done),
    }
}

/// The (device, inode) identity of a namespace file.
pub(super) fn ns_identity(fd: &OwnedFd) -> io::Result<(u64, u64)> {
    let st = nix::sys::stat::fstat(fd).map_err(io)?;
    Ok((st.st_dev, st.st_ino))
}

/// Processes whose network namespace is `ns` (every process of a sandbox: the first child
/// setns's into it before forking the sandbox's init).
fn processes_in_netns(ns: (u64, u64)) -> Vec<libc::pid_t> {
    let mut pids = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return pids;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = std::str::from_utf8(name.as_bytes())
            .ok()
            .and_then(|s| s.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let mut p = PathBuf::from("/proc");
        p.push(&name);
        p.push("ns/net");
        if let Ok(md) = fs::metadata(&p) {
            if (md.dev(), md.ino()) == ns {
                pids.push(pid);
            }
        }
    }
    pids
}

/// SIGKILLs every process in the network namespace `ns` until none is left or `patience`
/// has passed; returns how many are still alive (0 = clean).
pub(super) fn kill_netns_processes(ns: (u64, u64), patience: Duration) -> usize {
    let deadline = Instant::now() + patience;
    loop {
        let pids = processes_in_netns(ns);
        if pids.is_empty() {
            return 0;
        }
        for pid in &pids {
            // SAFETY: kill(2) with a pid read from /proc; at worst ESRCH if it just exited.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        if Instant::now() >= deadline {
            return pids.len();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_fields() {
        assert_eq!(unescape(b"/a\\040b\\134c"), PathBuf::from("/a b\\c"));
        assert_eq!(unescape(b"/x\\04"), PathBuf::from("/x\\04"));
        assert_eq!(unescape(b"/plain"), PathBuf::from("/plain"));
    }

    #[test]
    fn overlay_safe_paths() {
        assert!(overlay_safe(Path::new("/var/lib/jailbuilder/images/abc")));
        assert!(!overlay_safe(Path::new("/a,b")));
        assert!(!overlay_safe(Path::new("/a:b")));
    }
}
