//! Path resolution beneath a root directory, by hand, component by component.
//!
//! Every component is opened with `O_NOFOLLOW | O_DIRECTORY` relative to its parent's
//! descriptor, so the host never traverses a symlink it did not inspect. A symlinked
//! *directory* inside the tree (merged-/usr toolchains have `lib -> usr/lib`) is resolved
//! the way the sandbox itself would see it: an absolute target restarts at the root and
//! `..` stops at the root, as Linux's openat2(RESOLVE_IN_ROOT) does. So no resolution here
//! can name anything outside the root, whatever the tree contains. The final component is
//! never followed: outputs must be regular files, and unpacking replaces what is there.
//!
//! This is portable POSIX (openat/mkdirat/readlinkat/fstatat), so FreeBSD and Linux share
//! it; FreeBSD's O_RESOLVE_BENEATH and Linux's openat2 would refuse, not resolve, symlinks.

use std::ffi::{CStr, CString};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};

use crate::backend::BuildUser;

/// Longest path accepted from a client (PATH_MAX on both platforms).
pub(crate) const MAX_PATH_BYTES: usize = 4096;
/// Longest component (NAME_MAX on both platforms).
const MAX_NAME_BYTES: usize = 255;
/// Symlinks followed while resolving one path (Linux's MAXSYMLINKS is 40).
const MAX_SYMLINK_HOPS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum BeneathError {
    #[error("bad path {path:?}: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("{path:?} does not exist")]
    Missing { path: String },
    #[error("{path:?} is a {kind}, not a regular file")]
    NotRegular { path: String, kind: &'static str },
    #[error("{path:?} is {size} bytes, more than the limit of {limit}")]
    TooLarge { path: String, size: u64, limit: u64 },
    /// The build user could not have opened it: the compile may not read it, so neither
    /// may the client (see [`may_access`]).
    #[error("{path:?}: the build user may not {denied}")]
    PermissionDenied { path: String, denied: &'static str },
    #[error("{op} {path:?}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

pub(crate) fn io_err(op: &'static str, path: &[u8], e: impl Into<io::Error>) -> BeneathError {
    BeneathError::Io {
        op,
        path: lossy(path),
        source: e.into(),
    }
}

pub(crate) fn lossy(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// An open directory that paths are resolved beneath.
#[derive(Debug)]
pub struct RootDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl RootDir {
    /// Opens the root itself. The root's own path is the host's (trusted) and may be
    /// followed.
    pub fn open(path: &Path) -> Result<RootDir, BeneathError> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err("open root", path.as_os_str().as_bytes(), e))?;
        Ok(RootDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Refuses a path over [`MAX_PATH_BYTES`] or with a NUL; returns the maker of `path`'s
/// other refusals.
fn check_length_and_nul(
    path: &[u8],
) -> Result<impl Fn(&'static str) -> BeneathError + '_, BeneathError> {
    let bad = move |reason| BeneathError::BadPath {
        path: lossy(path),
        reason,
    };
    if path.len() > MAX_PATH_BYTES {
        return Err(bad("longer than 4096 bytes"));
    }
    if path.contains(&0) {
        return Err(bad("contains a NUL byte"));
    }
    Ok(bad)
}

/// Splits a client path into components: `/` and `.` are dropped (absolute paths are taken
/// relative to the root), `..` is refused, as are NUL, over-long names and empty paths.
pub(crate) fn split(path: &[u8]) -> Result<Vec<&[u8]>, BeneathError> {
    let bad = check_length_and_nul(path)?;
    let mut out = Vec::new();
    for c in path.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(bad("contains a '..' component")),
            c if c.len() > MAX_NAME_BYTES => return Err(bad("has a component over 255 bytes")),
            c => out.push(c),
        }
    }
    if out.is_empty() {
        return Err(bad("names the root itself"));
    }
    Ok(out)
}

/// Where a `..` may stand in a path [`split_resolving`] accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum DotDot {
    /// Before the final component only: the path names a file.
    InParents,
    /// Anywhere, the final component included: the path names a directory.
    Anywhere,
}

/// Splits a path the sandbox itself resolves (an output, an output's directory) as
/// [`split`] does, but keeps `..` components for [`resolve_dir`] to apply the way the
/// kernel does for the sandbox's process: after the symlinks before it are resolved, and
/// never above the root (as `..` at `/` stays at `/`). A compile run in `src/` writing
/// `../obj/a.o` is then read back from where it wrote it. No `..` is ever handed to
/// openat(2): the resolver pops its own stack of directories opened beneath the root.
pub(crate) fn split_resolving(path: &[u8], dotdot: DotDot) -> Result<Vec<&[u8]>, BeneathError> {
    let bad = check_length_and_nul(path)?;
    let mut out = Vec::new();
    for c in path.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            c if c.len() > MAX_NAME_BYTES => return Err(bad("has a component over 255 bytes")),
            c => out.push(c),
        }
    }
    match out.last() {
        None => Err(bad("names the root itself")),
        Some(&b"..") if dotdot == DotDot::InParents => Err(bad("ends in '..'")),
        Some(_) => Ok(out),
    }
}

pub(crate) fn cstr(name: &[u8]) -> CString {
    // split() refused NUL bytes, so this cannot fail; map defensively anyway.
    CString::new(name).unwrap_or_default()
}

/// openat(2) retried on EINTR, returning an owned descriptor.
pub(crate) fn openat_raw(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: OFlag,
    mode: u32,
) -> Result<OwnedFd, Errno> {
    loop {
        // SAFETY: `name` is a valid C string, `dir` a live descriptor; on success the
        // returned descriptor is new and owned by us.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                flags.bits(),
                mode as libc::c_uint,
            )
        };
        if fd >= 0 {
            // SAFETY: openat just returned this descriptor to us.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        match Errno::last() {
            Errno::EINTR => continue,
            e => return Err(e),
        }
    }
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

pub(crate) fn fstatat_nofollow(dir: BorrowedFd<'_>, name: &CStr) -> Result<FileStat, Errno> {
    nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
}

fn readlinkat(dir: BorrowedFd<'_>, name: &CStr) -> Result<Vec<u8>, Errno> {
    nix::fcntl::readlinkat(dir, name).map(|s| s.as_os_str().as_bytes().to_vec())
}

/// The read and search (execute) bits of one class of a mode, as in access(2)'s R_OK and
/// X_OK.
pub(crate) const MAY_READ: libc::mode_t = 0o4;
pub(crate) const MAY_SEARCH: libc::mode_t = 0o1;

/// Whether `user` has every permission in `want` (MAY_READ, MAY_SEARCH) on a file of `mode`
/// owned by `owner:group`, by the classic rule of POSIX.1 (Base Definitions 4.5 "File
/// Access Permissions"; Linux `acl_permission_check` in fs/namei.c, FreeBSD
/// `vaccess` in sys/kern/vfs_subr.c): the owner class applies if the uid owns the file,
/// else the group class if the gid is the file's group, else the other class; exactly one
/// class applies, so an owner without a bit is denied even if "other" has it. `user` has no
/// supplementary groups: the sandbox runs compiles with setgroups([gid]) on both
/// platforms. Root's override is not modelled: callers skip the check for a root build
/// user.
///
/// ACLs are not consulted, which errs only towards "allowed" for a file whose ACL denies a
/// mode bit. Nothing in the sandbox tree gets an ACL from jailbuilder (unpacking applies
/// tar modes only, never xattrs), so an ACL there would have to come from the operator's
/// own base tree or be set by the compile itself on a file it could already read.
pub(crate) fn may_access(
    user: BuildUser,
    mode: libc::mode_t,
    owner: libc::uid_t,
    group: libc::gid_t,
    want: libc::mode_t,
) -> bool {
    let class = if user.uid == owner {
        mode >> 6
    } else if user.gid == group {
        mode >> 3
    } else {
        mode
    };
    class & want & 0o7 == want
}

/// Refuses unless `user` (when given) has `want` on the open file `fd`.
fn check_access(
    fd: BorrowedFd<'_>,
    user: Option<BuildUser>,
    want: libc::mode_t,
    denied: &'static str,
    shown: &[u8],
) -> Result<(), BeneathError> {
    let Some(user) = user else {
        return Ok(());
    };
    let st = nix::sys::stat::fstat(fd).map_err(|e| io_err("stat", shown, e))?;
    if may_access(user, st.st_mode, st.st_uid, st.st_gid, want) {
        Ok(())
    } else {
        Err(BeneathError::PermissionDenied {
            path: lossy(shown),
            denied,
        })
    }
}

const DENIED_SEARCH: &str = "search a directory on its path";

/// Where a directory may come from while resolving.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Create {
    /// Only existing directories.
    No,
    /// Create missing directories with mode 0755, owned by this user if given.
    Yes(Option<BuildUser>),
}

/// Resolves the directory `components` beneath `root`, as the sandbox would see it, and
/// returns its descriptor. `shown` is the client's path for error messages.
pub(crate) fn resolve_dir(
    root: &RootDir,
    components: &[&[u8]],
    create: Create,
    shown: &[u8],
) -> Result<OwnedFd, BeneathError> {
    resolve_dir_as(root, components, create, shown, None)
}

/// [`resolve_dir`] that, with `searcher`, also refuses unless that user may search every
/// directory traversed, the root included, as the kernel would require of the sandbox's
/// process resolving the same path. (A symlink's own mode is never checked, by either
/// kernel; its target's directories are, as they are traversed.)
fn resolve_dir_as(
    root: &RootDir,
    components: &[&[u8]],
    create: Create,
    shown: &[u8],
    searcher: Option<BuildUser>,
) -> Result<OwnedFd, BeneathError> {
    check_access(root.fd(), searcher, MAY_SEARCH, DENIED_SEARCH, shown)?;
    // A stack of open directories from the root down; `..` in a symlink target pops it
    // (never past the root). Pending components are processed from the back.
    let mut stack: Vec<OwnedFd> = Vec::new();
    let mut pending: Vec<Vec<u8>> = components.iter().rev().map(|c| c.to_vec()).collect();
    let mut hops = 0;
    while let Some(comp) = pending.pop() {
        let cur = stack.last().map(|f| f.as_fd()).unwrap_or(root.fd());
        match comp.as_slice() {
            b"" | b"." => continue,
            b".." => {
                stack.pop();
                continue;
            }
            _ => {}
        }
        let name = cstr(&comp);
        match openat_raw(cur, &name, dir_flags(), 0) {
            Ok(fd) => {
                check_access(fd.as_fd(), searcher, MAY_SEARCH, DENIED_SEARCH, shown)?;
                stack.push(fd);
                continue;
            }
            Err(Errno::ENOENT) => {
                let Create::Yes(owner) = create else {
                    return Err(BeneathError::Missing { path: lossy(shown) });
                };
                match nix::sys::stat::mkdirat(cur, name.as_c_str(), Mode::from_bits_truncate(0o755))
                {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(io_err("mkdir", shown, e)),
                }
                let fd = openat_raw(cur, &name, dir_flags(), 0)
                    .map_err(|e| io_err("open directory", shown, e))?;
                if let Some(u) = owner {
                    chown_fd(fd.as_fd(), u).map_err(|e| io_err("chown", shown, e))?;
                }
                stack.push(fd);
            }
            // ELOOP: a symlink (O_NOFOLLOW); ENOTDIR: a symlink on FreeBSD, or a file.
            Err(Errno::ELOOP | Errno::ENOTDIR | Errno::EMLINK) => {
                let st = fstatat_nofollow(cur, &name).map_err(|e| io_err("stat", shown, e))?;
                if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFLNK {
                    return Err(BeneathError::BadPath {
                        path: lossy(shown),
                        reason: "a parent component is not a directory",
                    });
                }
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(BeneathError::BadPath {
                        path: lossy(shown),
                        reason: "too many levels of symbolic links",
                    });
                }
                let target = readlinkat(cur, &name).map_err(|e| io_err("readlink", shown, e))?;
                if target.starts_with(b"/") {
                    stack.clear();
                }
                for c in target.split(|b| *b == b'/').rev() {
                    pending.push(c.to_vec());
                }
            }
            Err(e) => return Err(io_err("open directory", shown, e)),
        }
    }
    match stack.pop() {
        Some(fd) => Ok(fd),
        None => root
            .fd
            .try_clone()
            .map_err(|e| io_err("dup root", shown, e)),
    }
}

pub(crate) fn chown_fd(fd: BorrowedFd<'_>, user: BuildUser) -> Result<(), Errno> {
    nix::unistd::fchown(
        fd,
        Some(nix::unistd::Uid::from_raw(user.uid)),
        Some(nix::unistd::Gid::from_raw(user.gid)),
    )
}

/// Creates directory `rel` and its missing parents beneath `root` (mode 0755). With `owner`
/// the directories created, and `rel` itself, are given to that user so a build running as
/// it can write there; but an existing `rel` only if that user may already read and search
/// it (see [`may_access`]). Otherwise a client naming an output in, say, a root-only 0700
/// directory of the toolchain or base tree would have it handed to the build user, whose
/// compile could then read everything in it.
pub fn make_dirs_beneath(
    root: &RootDir,
    rel: &str,
    owner: Option<BuildUser>,
) -> Result<(), BeneathError> {
    let comps = split_resolving(rel.as_bytes(), DotDot::Anywhere)?;
    let fd = resolve_dir(root, &comps, Create::Yes(owner), rel.as_bytes())?;
    if let Some(u) = owner {
        let st =
            nix::sys::stat::fstat(fd.as_fd()).map_err(|e| io_err("stat", rel.as_bytes(), e))?;
        let top = nix::sys::stat::fstat(root.fd()).map_err(|e| io_err("stat", b"/", e))?;
        // `..` can bring the path back to the root: the root is never handed over.
        let is_root = (st.st_dev, st.st_ino) == (top.st_dev, top.st_ino);
        if !is_root && may_access(u, st.st_mode, st.st_uid, st.st_gid, MAY_READ | MAY_SEARCH) {
            chown_fd(fd.as_fd(), u).map_err(|e| io_err("chown", rel.as_bytes(), e))?;
        }
    }
    Ok(())
}

fn kind_of(mode: libc::mode_t) -> &'static str {
    match SFlag::from_bits_truncate(mode) & SFlag::S_IFMT {
        SFlag::S_IFDIR => "directory",
        SFlag::S_IFLNK => "symbolic link",
        SFlag::S_IFIFO => "FIFO",
        SFlag::S_IFCHR => "character device",
        SFlag::S_IFBLK => "block device",
        SFlag::S_IFSOCK => "socket",
        SFlag::S_IFREG => "regular file",
        _ => "special file",
    }
}

/// Opens the regular file `rel` beneath `root` for reading and returns it with its size,
/// refusing a file over `limit` bytes without reading it. A symlink as the final component,
/// a FIFO (opened non-blocking, so it cannot hang), a device or a directory is refused.
///
/// With `reader`, the file must also be one that user could have opened: search permission
/// on every directory traversed and read permission on the file, by [`may_access`];
/// otherwise [`BeneathError::PermissionDenied`]. The checks are made on the descriptors
/// actually opened, so what is checked is what is read.
pub fn open_file_beneath(
    root: &RootDir,
    rel: &str,
    limit: u64,
    reader: Option<BuildUser>,
) -> Result<(std::fs::File, u64), BeneathError> {
    let shown = rel.as_bytes();
    // `..` only in the parents, which resolve_dir_as applies: never openat(dir, "..").
    let comps = split_resolving(shown, DotDot::InParents)?;
    let (last, parents) = comps
        .split_last()
        .expect("split() returns at least one component");
    let dir = resolve_dir_as(root, parents, Create::No, shown, reader)?;
    let name = cstr(last);
    let flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_CLOEXEC
        | OFlag::O_NOCTTY;
    let fd = match openat_raw(dir.as_fd(), &name, flags, 0) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Err(BeneathError::Missing { path: lossy(shown) }),
        Err(Errno::ELOOP | Errno::EMLINK) => {
            return Err(BeneathError::NotRegular {
                path: lossy(shown),
                kind: "symbolic link",
            })
        }
        Err(e) => return Err(io_err("open", shown, e)),
    };
    let st = nix::sys::stat::fstat(fd.as_fd()).map_err(|e| io_err("stat", shown, e))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(BeneathError::NotRegular {
            path: lossy(shown),
            kind: kind_of(st.st_mode),
        });
    }
    if let Some(user) = reader {
        if !may_access(user, st.st_mode, st.st_uid, st.st_gid, MAY_READ) {
            return Err(BeneathError::PermissionDenied {
                path: lossy(shown),
                denied: "read it",
            });
        }
    }
    let size = st.st_size as u64;
    if size > limit {
        return Err(BeneathError::TooLarge {
            path: lossy(shown),
            size,
            limit,
        });
    }
    Ok((std::fs::File::from(fd), size))
}

/// Reads the regular file `rel` beneath `root`, at most `limit` bytes, as
/// [`open_file_beneath`] without a reader check; a file that grows past `limit` while it is
/// read is refused too.
pub fn read_file_beneath(root: &RootDir, rel: &str, limit: u64) -> Result<Vec<u8>, BeneathError> {
    let shown = rel.as_bytes();
    let (file, size) = open_file_beneath(root, rel, limit, None)?;
    let mut buf = Vec::with_capacity(size as usize);
    // take(limit + 1): a file that grows while we read is caught, never read without bound.
    file.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| io_err("read", shown, e))?;
    if buf.len() as u64 > limit {
        return Err(BeneathError::TooLarge {
            path: lossy(shown),
            size: buf.len() as u64,
            limit,
        });
    }
    Ok(buf)
}
