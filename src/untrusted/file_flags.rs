//! Clearing the file flags that make a file impossible to replace, so that an archive can
//! lay a file over one a base layer installed with them.
//!
//! FreeBSD installs its PRECIOUSLIB libraries (libc.so.7, libthr.so.3, libcrypt.so.5)
//! with `schg` (share/mk/bsd.lib.mk: `PRECIOUSLIB` sets `SHLINSTALLFLAGS+= -fschg`), and
//! unlink(2) of a file with a system or user immutable/append flag fails with EPERM
//! (sys/kern/vfs_syscalls.c kern_funlinkat -> ufs/zfs VOP_REMOVE: `(ip->i_flags &
//! (NOUNLINK | IMMUTABLE | APPEND))` -> EPERM). A toolchain unpacked over a base snapshot
//! that ships `lib/libc.so.7` hits exactly that. The flags are cleared with
//! chflagsat(2) (AT_SYMLINK_NOFOLLOW: never through a symlink), which root may do at
//! securelevel <= 0 for system flags (the host's securelevel, where the server runs).
//!
//! Linux has the same two attributes (FS_IMMUTABLE_FL, FS_APPEND_FL, `chattr +i/+a`;
//! may_delete() in fs/namei.c refuses with EPERM); they are cleared with the
//! FS_IOC_GETFLAGS/FS_IOC_SETFLAGS ioctls on the file itself, opened without following.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

/// Clears the immutable and append-only flags of `name` in `dir` (not following a symlink).
pub(super) fn clear_unlink_blocking_flags(dir: BorrowedFd<'_>, name: &CStr) -> Result<(), Errno> {
    imp::clear(dir.as_raw_fd(), name)
}

#[cfg(target_os = "freebsd")]
mod imp {
    use super::*;

    pub(super) fn clear(dir: i32, name: &CStr) -> Result<(), Errno> {
        // SAFETY: chflagsat(2) with a directory descriptor we hold and a NUL-terminated name.
        let r = unsafe { libc::chflagsat(dir, name.as_ptr(), 0, libc::AT_SYMLINK_NOFOLLOW) };
        Errno::result(r).map(drop)
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};

    /// linux/fs.h.
    const FS_IMMUTABLE_FL: libc::c_int = 0x0000_0010;
    const FS_APPEND_FL: libc::c_int = 0x0000_0020;

    pub(super) fn clear(dir: i32, name: &CStr) -> Result<(), Errno> {
        // SAFETY: openat(2) with a directory descriptor we hold and a NUL-terminated name;
        // O_NOFOLLOW refuses a symlink, O_NONBLOCK keeps a FIFO from blocking.
        let fd = unsafe {
            libc::openat(
                dir,
                name.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        let fd = Errno::result(fd)?;
        // SAFETY: openat just returned this descriptor; it is owned here only.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut flags: libc::c_int = 0;
        // SAFETY: FS_IOC_GETFLAGS writes one int to the pointer, which is valid.
        Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) })?;
        let cleared = flags & !(FS_IMMUTABLE_FL | FS_APPEND_FL);
        if cleared == flags {
            return Ok(());
        }
        // SAFETY: FS_IOC_SETFLAGS reads one int from the pointer, which is valid.
        Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::FS_IOC_SETFLAGS, &cleared) })
            .map(drop)
    }
}
