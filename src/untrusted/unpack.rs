//! Unpacking an untrusted tar archive beneath a root.
//!
//! The `tar` crate only parses here; every filesystem effect goes through the beneath-root
//! resolution of [`super::beneath`], so no entry can create, change or read anything
//! outside the root: `..` is refused, absolute names are taken from the root, a symlink in
//! a parent is resolved inside the root, a final-component symlink is replaced rather than
//! written through, hard links are made between paths resolved inside the root. Device
//! nodes and FIFOs are refused (a character device naming one of the sandbox's own
//! [`SANDBOX_DEVICES`] is skipped: the sandbox's node is used), setuid/setgid/sticky bits
//! dropped, and sizes, counts and
//! name lengths are bounded (a gzip bomb stops at `max_bytes`; a GNU long name or pax
//! header stops at [`super::MAX_EXTENSION_BYTES`] before the tar crate buffers it).
//!
//! The archive's owners are never used. A toolchain stays root's (a read-only image); inputs
//! are given to the build user of the container they land in, with the archive's permission
//! bits: a client's 0600 source, 0640 `.rmeta` or 0700 directory is then readable by the
//! compile, as it was by the client who owned it.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::UnlinkatFlags;
use tar::EntryType;

use super::beneath::{
    chown_fd, cstr, fstatat_nofollow, lossy, openat_raw, resolve_dir, split, BeneathError, Create,
    RootDir,
};
use super::file_flags;
use super::tar_guard::{self, ExtensionGuard, ExtensionTooLarge};
use crate::backend::BuildUser;

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("archive entry {path:?}: {source}")]
    Path {
        path: String,
        #[source]
        source: BeneathError,
    },
    #[error("archive entry {path:?} is a {kind}, which is not allowed")]
    Unsupported { path: String, kind: &'static str },
    #[error("archive holds more than {limit} bytes")]
    TooManyBytes { limit: u64 },
    #[error("archive holds more than {limit} entries")]
    TooManyEntries { limit: u64 },
    #[error("archive entry {path:?}: {op}: {source}")]
    Io {
        path: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("corrupt or truncated archive: {0}")]
    Corrupt(#[source] io::Error),
    /// An extension entry the tar crate would have read whole into memory.
    #[error("archive refused: {0}")]
    ExtensionTooLarge(ExtensionTooLarge),
}

/// The tar crate's error as ours: a refusal of [`ExtensionGuard`] keeps its own variant.
fn corrupt(e: io::Error) -> UnpackError {
    match tar_guard::as_too_large(&e) {
        Some(t) => UnpackError::ExtensionTooLarge(ExtensionTooLarge {
            kind: t.kind,
            size: t.size,
        }),
        None => UnpackError::Corrupt(e),
    }
}

impl UnpackError {
    /// True when the archive is at fault (corrupt, hostile, too big, naming things that
    /// cannot be laid out); false when the host failed (out of space, I/O error), which
    /// says nothing about the archive.
    pub fn is_archive_fault(&self) -> bool {
        let host = |e: &io::Error| {
            matches!(
                e.raw_os_error(),
                Some(libc::ENOSPC | libc::EDQUOT | libc::EIO | libc::ENOMEM | libc::EROFS)
            )
        };
        match self {
            UnpackError::Io { source, .. } | UnpackError::Corrupt(source) => !host(source),
            UnpackError::Path { .. }
            | UnpackError::Unsupported { .. }
            | UnpackError::TooManyBytes { .. }
            | UnpackError::TooManyEntries { .. }
            | UnpackError::ExtensionTooLarge(_) => true,
        }
    }
}

/// Bounds on one archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Total bytes of file content (after decompression).
    pub max_bytes: u64,
    /// Entries of any kind.
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_bytes: 4 << 30,
            max_entries: 1_000_000,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    pub bytes: u64,
}

/// Unpacks a gzip-compressed tar (a toolchain archive as sccache sends it), owned by root.
pub fn unpack_tar_gz(
    reader: &mut dyn Read,
    root: &RootDir,
    limits: &UnpackLimits,
) -> Result<UnpackStats, UnpackError> {
    let mut gz = flate2::read::MultiGzDecoder::new(reader);
    unpack_tar(&mut gz, root, limits, None)
}

/// Unpacks a plain tar (sccache's inputs, after its zlib layer). With `owner`, every file,
/// directory and symlink the archive names, and every directory made for them, belongs to
/// that user and its group (hard links share their target's inode and owner); without, to
/// the caller (root).
pub fn unpack_tar(
    reader: &mut dyn Read,
    root: &RootDir,
    limits: &UnpackLimits,
    owner: Option<BuildUser>,
) -> Result<UnpackStats, UnpackError> {
    // Extension entries are bounded before the tar crate buffers them (tar_guard).
    let mut archive = tar::Archive::new(ExtensionGuard::new(reader));
    let mut stats = UnpackStats::default();
    // The parent directory of the previous entry, reused while entries share it (tars are
    // written directory by directory), dropped whenever a symlink could change resolution.
    let mut parent_cache: Option<(Vec<u8>, OwnedFd)> = None;
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        stats.entries += 1;
        if stats.entries > limits.max_entries {
            return Err(UnpackError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        let path = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        let shown = || lossy(&path);
        let path_err = |source| UnpackError::Path {
            path: lossy(&path),
            source,
        };
        let comps = split(&path).map_err(path_err)?;
        if kind == EntryType::Char && is_sandbox_device(&comps) {
            // The sandbox's own node stands there (the client sent the /dev/null a probe
            // such as `cc -c -x c /dev/null` reads): left as it is.
            continue;
        }
        let (last, parents) = comps.split_last().expect("split() returns a component");
        let parent_key = parents.join(&b'/');
        let parent = match parent_cache.take() {
            Some((key, fd)) if key == parent_key => fd,
            _ => resolve_dir(root, parents, Create::Yes(owner), &path).map_err(path_err)?,
        };
        let name = cstr(last);
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let io = |op, e: Errno| UnpackError::Io {
            path: shown(),
            op,
            source: e.into(),
        };
        match kind {
            EntryType::Directory => {
                match nix::sys::stat::mkdirat(
                    parent.as_fd(),
                    name.as_c_str(),
                    Mode::from_bits_truncate(0o700),
                ) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(io("mkdir", e)),
                }
                let dir = resolve_dir(root, &comps, Create::No, &path).map_err(path_err)?;
                if let Some(u) = owner {
                    chown_fd(dir.as_fd(), u).map_err(|e| io("chown", e))?;
                }
                // Owner must be able to traverse: an archive's 0000 directory would
                // otherwise make the rest of it fail to unpack.
                nix::sys::stat::fchmod(
                    dir.as_fd(),
                    Mode::from_bits_truncate((mode | 0o700) as libc::mode_t),
                )
                .map_err(|e| io("chmod", e))?;
            }
            EntryType::Regular | EntryType::Continuous => {
                let size = entry.header().size().map_err(UnpackError::Corrupt)?;
                if stats.bytes.saturating_add(size) > limits.max_bytes {
                    return Err(UnpackError::TooManyBytes {
                        limit: limits.max_bytes,
                    });
                }
                remove_non_dir(parent.as_fd(), &name).map_err(|e| io("replace", e))?;
                let flags = OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC;
                let fd =
                    openat_raw(parent.as_fd(), &name, flags, 0o600).map_err(|e| io("create", e))?;
                let mut file = std::fs::File::from(fd);
                let copied = io::copy(&mut (&mut entry).take(size), &mut file)
                    .map_err(UnpackError::Corrupt)?;
                if copied != size {
                    return Err(UnpackError::Corrupt(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("entry {:?} ends after {copied} of {size} bytes", shown()),
                    )));
                }
                stats.bytes += size;
                // Through the descriptor just created (O_EXCL | O_NOFOLLOW): nothing else.
                if let Some(u) = owner {
                    chown_fd(file.as_fd(), u).map_err(|e| io("chown", e))?;
                }
                // setuid/setgid/sticky never survive: a client must not plant a setuid binary.
                nix::sys::stat::fchmod(
                    file.as_fd(),
                    Mode::from_bits_truncate(mode as libc::mode_t),
                )
                .map_err(|e| io("chmod", e))?;
            }
            EntryType::Symlink => {
                let target = entry.link_name_bytes().ok_or_else(|| {
                    UnpackError::Corrupt(io::Error::other("symlink without target"))
                })?;
                if target.is_empty() || target.contains(&0) {
                    return Err(UnpackError::Corrupt(io::Error::other(format!(
                        "symlink {:?} has an empty or NUL target",
                        shown()
                    ))));
                }
                remove_non_dir(parent.as_fd(), &name).map_err(|e| io("replace", e))?;
                nix::unistd::symlinkat(cstr(&target).as_c_str(), parent.as_fd(), name.as_c_str())
                    .map_err(|e| io("symlink", e))?;
                if let Some(u) = owner {
                    // The link itself (AT_SYMLINK_NOFOLLOW), never what it points to.
                    nix::unistd::fchownat(
                        parent.as_fd(),
                        name.as_c_str(),
                        Some(nix::unistd::Uid::from_raw(u.uid)),
                        Some(nix::unistd::Gid::from_raw(u.gid)),
                        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| io("chown", e))?;
                }
                // A new symlink can change how later parents resolve.
                parent_cache = None;
                continue;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| {
                        UnpackError::Corrupt(io::Error::other("hard link without target"))
                    })?
                    .into_owned();
                let tcomps = split(&target).map_err(path_err)?;
                let (tlast, tparents) = tcomps.split_last().expect("split() returns a component");
                let tdir = resolve_dir(root, tparents, Create::No, &target).map_err(path_err)?;
                remove_non_dir(parent.as_fd(), &name).map_err(|e| io("replace", e))?;
                // flags 0: never follow a symlink at the source (linkat(2)).
                nix::unistd::linkat(
                    tdir.as_fd(),
                    cstr(tlast).as_c_str(),
                    parent.as_fd(),
                    name.as_c_str(),
                    nix::fcntl::AtFlags::empty(),
                )
                .map_err(|e| io("hard link", e))?;
            }
            EntryType::XGlobalHeader | EntryType::XHeader => {}
            other => {
                return Err(UnpackError::Unsupported {
                    path: shown(),
                    kind: entry_kind(other),
                });
            }
        }
        parent_cache = Some((parent_key, parent));
    }
    Ok(stats)
}

/// The character devices every sandbox provides at `/dev` (the Linux backend's skeleton
/// layer, FreeBSD's devfs): a client's archive naming one of them (sccache packs an input
/// `/dev/null` as the device it is) gets the sandbox's node, as under stock sccache-dist's
/// bubblewrap, whose fresh `/dev` hides whatever the inputs put there. Any other device
/// entry is refused.
pub const SANDBOX_DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

fn is_sandbox_device(comps: &[&[u8]]) -> bool {
    matches!(comps, [b"dev", name] if SANDBOX_DEVICES.iter().any(|d| d.as_bytes() == *name))
}

fn entry_kind(t: EntryType) -> &'static str {
    match t {
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Fifo => "FIFO",
        EntryType::GNUSparse => "sparse file",
        _ => "special entry",
    }
}

/// Removes what stands at `name` unless it is a directory (an archive may overwrite a file
/// or symlink, never silently replace a directory tree).
fn remove_non_dir(dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> Result<(), Errno> {
    match fstatat_nofollow(dir, name) {
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
        Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR => {
            Err(Errno::EISDIR)
        }
        Ok(_) => match nix::unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
            // An immutable or append-only file (FreeBSD's schg libc.so.7 in a base
            // snapshot): clear its flags, then replace it (file_flags).
            Err(Errno::EPERM) => {
                file_flags::clear_unlink_blocking_flags(dir, name)?;
                nix::unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)
            }
            r => r,
        },
    }
}
