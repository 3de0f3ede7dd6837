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

use super::binds::Binds;
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
    pub uts: Option<&'a Path>,
    /// The container's mount namespace: made, or given a fresh root.
    pub mnt: Option<MntPin<'a>>,
}

/// A container's mount namespace: a copy of the seed ([`seed_mount_namespace`]) with a
/// clone of the container root's mount attached at [`SANDBOX_ROOT`].
pub(super) enum MntPin<'a> {
    /// Make one for `root` and pin it on `pin`.
    New {
        pin: &'a Path,
        root: &'a Path,
        binds: &'a Binds,
    },
    /// Swap the clone in the existing namespace `ns` for one of `root`'s (new) mount: no
    /// new namespace, no new pin (a reset).
    Replace {
        ns: &'a OwnedFd,
        root: &'a Path,
        binds: &'a Binds,
    },
}

/// Where the container root is attached in its mount namespace, and what exec's child
/// chroots into after joining it. Outside it there is only the seed's empty tmpfs.
pub(super) const SANDBOX_ROOT: &std::ffi::CStr = c"/r";
const SEED_ATTACH: &str = "/r";

/// Runs `f` in a short-lived thread (a namespace change must not outlive it) and returns
/// its result; `what` names it in the error if it panics.
fn in_helper_thread<T: Send>(
    what: &Path,
    f: impl FnOnce() -> Result<T, LinuxError> + Send,
) -> Result<T, LinuxError> {
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or(Err(LinuxError::NamespaceThread {
                path: what.to_path_buf(),
            }))
    })
}

/// The seed of every container's mount namespace: a namespace holding one empty tmpfs
/// (with the directory [`SEED_ATTACH`]), mounted on `dir` inside that namespace only (the
/// host sees nothing), made once per backend and kept by the returned descriptor.
///
/// A container's namespace is then a copy of the seed (one mount) with the container root
/// attached, not a copy of the host's whole mount table, which unshare(CLONE_NEWNS)
/// duplicates (copy_mnt_ns in fs/namespace.c) and the pivot then detaches again: with every
/// container's tmpfs, overlay and pins in that table, each reset would cost in proportion to
/// the number of containers.
pub(super) fn seed_mount_namespace(dir: &Path) -> Result<OwnedFd, LinuxError> {
    let err = |source| LinuxError::SeedNamespace {
        path: dir.to_path_buf(),
        source,
    };
    in_helper_thread(dir, || {
        let proc = open_proc_dir().map_err(err)?;
        unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_FS).map_err(|e| err(io(e)))?;
        // Private first: the tmpfs below must not propagate to the host's peer group.
        make_private("/").map_err(err)?;
        mount(
            Some("jailbuilder-seed"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=4k,nr_inodes=4,mode=0700"),
        )
        .map_err(|e| err(io(e)))?;
        fs::DirBuilder::new()
            .create(dir.join(SEED_ATTACH.trim_start_matches('/')))
            .map_err(err)?;
        pivot_into(dir)?;
        open_ns_at(&proc, "thread-self/ns/mnt")
    })
}

/// /proc as a directory descriptor: it stays usable after the thread leaves the host's
/// mount namespace (the seed's copies have no /proc).
fn open_proc_dir() -> io::Result<OwnedFd> {
    nix::fcntl::open(
        "/proc",
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(io)
}

/// open_tree(2) with OPEN_TREE_CLONE: a detached copy of the one mount at `path` (not its
/// submounts), which move_mount(2) can attach in another mount namespace (Linux 5.2).
fn clone_mount(path: &Path) -> io::Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_tree with a NUL-terminated path and integer flags; returns a new
    // descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Makes the mount at `target` private. A clone made by open_tree(OPEN_TREE_CLONE) joins
/// the peer group of its source when that is shared (clone_mnt in fs/namespace.c), and the
/// host's mounts under a shared / usually are: without this, the /proc each sandboxed
/// command mounts would propagate to the container root's mount on the host.
fn make_private(target: &str) -> io::Result<()> {
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(io)
}

/// move_mount(2) of the detached tree `tree` onto `target` in this thread's namespace.
fn attach_mount(tree: &OwnedFd, target: &str) -> io::Result<()> {
    let to =
        std::ffi::CString::new(target).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: move_mount with our descriptor, an empty and a NUL-terminated path, and
    // integer flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Namespace descriptors and the files to pin them on.
type NsFiles<'a> = Vec<(OwnedFd, &'a Path)>;

/// Creates new namespaces and pins each with a bind mount of its nsfs file onto an existing
/// empty file, without creating a process: a short-lived thread unshares (a thread of a
/// multi-threaded process may unshare net, uts, and with CLONE_FS a mount namespace)
/// and opens `/proc/thread-self/ns/<kind>`. The mount namespace is a copy of `seed` (see
/// [`seed_mount_namespace`]) with a clone of the container root's mount attached at
/// [`SANDBOX_ROOT`] ([`MntPin`]); no pivot_root, which walks every task on the machine
/// (chroot_fs_refs in fs/namespace.c). This thread then bind-mounts the descriptors; the
/// namespaces outlive the helper thread through the mounts. With a root, its binds (the
/// `binds` module) are attached over it; returns whether they were.
pub(super) fn pin_new_namespaces(
    pins: &NsPins<'_>,
    hostname: &str,
    seed: &OwnedFd,
) -> Result<bool, LinuxError> {
    let kinds: [(CloneFlags, &str, Option<&Path>); 2] = [
        (CloneFlags::CLONE_NEWNET, "net", pins.net),
        (CloneFlags::CLONE_NEWUTS, "uts", pins.uts),
    ];
    let first = kinds
        .iter()
        .find_map(|(_, _, p)| *p)
        .or(match &pins.mnt {
            Some(MntPin::New { pin, .. }) => Some(*pin),
            Some(MntPin::Replace { root, .. }) => Some(*root),
            None => None,
        })
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let (fds, bound) = in_helper_thread(&first, || -> Result<(NsFiles<'_>, bool), LinuxError> {
        let unshare_err = |source| LinuxError::Unshare {
            path: first.clone(),
            source,
        };
        let proc = open_proc_dir().map_err(unshare_err)?;
        let (root, binds) = match &pins.mnt {
            Some(MntPin::New { root, binds, .. } | MntPin::Replace { root, binds, .. }) => {
                (Some(*root), Some(*binds))
            }
            None => (None, None),
        };
        let attach_err = |source| LinuxError::CloneRoot {
            root: root.unwrap_or(Path::new("")).to_path_buf(),
            source,
        };
        let tree = match root {
            Some(root) => Some(clone_mount(root).map_err(attach_err)?),
            None => None,
        };
        // Cloned here, while the host's paths still resolve. Binds are an optimisation: a
        // kernel without mount_setattr(2) (before 5.12) runs every path through the overlay.
        let bind_trees = match binds.map(read_only_clones) {
            Some(Ok(trees)) => trees,
            Some(Err(e)) => {
                log::warn!("{e}; this container's root is the overlay alone");
                Vec::new()
            }
            None => Vec::new(),
        };
        let bound = !bind_trees.is_empty();
        let mut flags = CloneFlags::empty();
        for (f, _, p) in &kinds {
            if p.is_some() {
                flags |= *f;
            }
        }
        if tree.is_some() {
            flags |= CloneFlags::CLONE_FS;
        }
        unshare(flags).map_err(|e| unshare_err(io(e)))?;
        if pins.uts.is_some() {
            nix::unistd::sethostname(hostname).map_err(|e| unshare_err(io(e)))?;
        }
        let mut fds = Vec::new();
        for (_, kind, target) in &kinds {
            if let Some(target) = target {
                fds.push((
                    open_ns_at(&proc, &format!("thread-self/ns/{kind}"))?,
                    *target,
                ));
            }
        }
        match (tree, &pins.mnt) {
            (Some(tree), Some(MntPin::New { pin, .. })) => {
                nix::sched::setns(seed, CloneFlags::CLONE_NEWNS).map_err(|e| attach_err(io(e)))?;
                unshare(CloneFlags::CLONE_NEWNS).map_err(|e| unshare_err(io(e)))?;
                attach_mount(&tree, SEED_ATTACH).map_err(attach_err)?;
                attach_binds(&bind_trees)?;
                make_private(SEED_ATTACH).map_err(attach_err)?;
                fds.push((open_ns_at(&proc, "thread-self/ns/mnt")?, *pin));
            }
            (Some(tree), Some(MntPin::Replace { ns, .. })) => {
                nix::sched::setns(*ns, CloneFlags::CLONE_NEWNS).map_err(|e| attach_err(io(e)))?;
                // Detaches the old clone with the binds on it.
                umount2(SEED_ATTACH, MntFlags::MNT_DETACH).map_err(|e| attach_err(io(e)))?;
                attach_mount(&tree, SEED_ATTACH).map_err(attach_err)?;
                attach_binds(&bind_trees)?;
                make_private(SEED_ATTACH).map_err(attach_err)?;
            }
            _ => {}
        }
        Ok((fds, bound))
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
    Ok(bound)
}

/// Detached read-only, nosuid, nodev clones of each bound image directory (see the
/// `binds` module), each with the path it is attached at in the container's namespace.
fn read_only_clones(binds: &Binds) -> Result<Vec<(OwnedFd, String)>, LinuxError> {
    let mut trees = Vec::with_capacity(binds.dirs.len());
    for (source, name) in &binds.dirs {
        let err = |source_err| LinuxError::BindImageDir {
            path: source.clone(),
            source: source_err,
        };
        let tree = clone_mount(source).map_err(err)?;
        set_read_only(&tree).map_err(err)?;
        let at = Path::new(SEED_ATTACH).join(name);
        let at = at
            .to_str()
            .ok_or_else(|| err(io::Error::from_raw_os_error(libc::EINVAL)))?;
        trees.push((tree, at.to_string()));
    }
    Ok(trees)
}

/// mount_setattr(2) on a detached tree: read-only, nosuid, nodev (Linux 5.12). Read-only
/// matters most: the image is every container's, and a file a build could write through
/// the bind would be changed for all of them (through the overlay it is copied up).
fn set_read_only(tree: &OwnedFd) -> io::Result<()> {
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr with our descriptor, an empty path, and a pointer to a local
    // struct of the size given.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Attaches the clones of [`read_only_clones`] in this thread's mount namespace, over the
/// directories of the root attached at [`SEED_ATTACH`].
fn attach_binds(trees: &[(OwnedFd, String)]) -> Result<(), LinuxError> {
    for (tree, at) in trees {
        attach_mount(tree, at).map_err(|source| LinuxError::BindImageDir {
            path: PathBuf::from(at),
            source,
        })?;
    }
    Ok(())
}

/// Where a command's `/proc` is, in its container's mount namespace: below the root
/// attached at [`SEED_ATTACH`] (the command chroots there and mounts `/proc`); the
/// `proc_detach` module detaches it.
pub(super) const COMMAND_PROC: &str = "/r/proc";

/// Detaches a container's binds in its mount namespace `ns` (see the `binds` module):
/// afterwards the whole root is the overlay again.
pub(super) fn detach_binds(ns: &OwnedFd, binds: &Binds) -> Result<(), LinuxError> {
    let first = binds
        .dirs
        .first()
        .map(|(p, _)| p.clone())
        .unwrap_or_default();
    in_helper_thread(&first, || {
        let err = |source| LinuxError::BindImageDir {
            path: first.clone(),
            source,
        };
        unshare(CloneFlags::CLONE_FS).map_err(|e| err(io(e)))?;
        nix::sched::setns(ns, CloneFlags::CLONE_NEWNS).map_err(|e| err(io(e)))?;
        for (_, name) in &binds.dirs {
            umount2(&Path::new(SEED_ATTACH).join(name), MntFlags::MNT_DETACH)
                .map_err(|e| err(io(e)))?;
        }
        Ok(())
    })
}

/// In a thread that has its own mount namespace and fs attributes: makes every mount
/// private, pivots into `root` (a mount point) and detaches the old root, leaving a
/// namespace that holds only the container's overlay.
fn pivot_into(root: &Path) -> Result<(), LinuxError> {
    let err = |e| LinuxError::PivotRoot {
        root: root.to_path_buf(),
        source: io(e),
    };
    make_private("/").map_err(|source| LinuxError::PivotRoot {
        root: root.to_path_buf(),
        source,
    })?;
    nix::unistd::chdir(root).map_err(err)?;
    nix::unistd::pivot_root(".", ".").map_err(err)?;
    umount2(".", MntFlags::MNT_DETACH).map_err(err)?;
    nix::unistd::chdir("/").map_err(err)
}

/// Opens the namespace file `rel` beneath the /proc descriptor `proc`.
fn open_ns_at(proc: &OwnedFd, rel: &str) -> Result<OwnedFd, LinuxError> {
    nix::fcntl::openat(
        proc,
        rel,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| LinuxError::Setns {
        path: Path::new("/proc").join(rel),
        source: io(e),
    })
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
