//! [`Zfs`]: a handle on libzfs_core, and the dataset operations jailbuilder needs.
//!
//! Every name is validated ([`super::name`]) before it reaches C, so a hostile name fails with
//! `EINVAL` and a reason instead of reaching the kernel. None of these calls mounts or
//! unmounts anything; each snapshot, clone, rollback and destroy waits for a txg sync, so keep
//! them off a build's critical path.

use std::ffi::{c_int, CString};
use std::ptr;

use nix::errno::Errno;

use jailbuilder_zfs_sys as sys;

use super::error::{check, Cause, ZfsError, ZfsOp};
use super::name::{self, NameError};
use super::nvlist::{NvList, NvValue};

/// Name of the errlist entry that counts failures left out of the list
/// (`ZPROP_N_MORE_ERRORS` in sys/fs/zfs.h).
const N_MORE_ERRORS: &str = "N_MORE_ERRORS";

/// Where `/dev/zfs` is; named in the error when it cannot be opened.
const ZFS_DEV: &str = "/dev/zfs";

/// An open libzfs_core (`libzfs_core_init` in [`Zfs::new`], `libzfs_core_fini` on drop).
///
/// libzfs_core counts its users and guards the count with a mutex, and every operation is
/// one ioctl on the shared `/dev/zfs` descriptor, so a `Zfs` may be shared between threads
/// and several may exist at once.
#[derive(Debug)]
pub struct Zfs {
    _private: (),
}

impl Zfs {
    /// Opens libzfs_core. Fails (no panic) when `/dev/zfs` is missing or not accessible:
    /// `zfs init /dev/zfs: No such file or directory (ENOENT)`.
    pub fn new() -> Result<Self, ZfsError> {
        // SAFETY: takes no arguments; refcounted and serialised by a mutex inside libzfs_core.
        let rc = unsafe { sys::libzfs_core_init() };
        check(ZfsOp::Init, ZFS_DEV, None, rc)?;
        Ok(Self { _private: () })
    }

    /// Creates the filesystem `name` with `props` (its parent must exist; nothing is mounted).
    pub fn create_filesystem(&self, name: &str, props: &NvList) -> Result<(), ZfsError> {
        let op = ZfsOp::Create;
        let c_name = c_name(op, name, None, name, name::check_filesystem)?;
        // SAFETY: c_name is NUL-terminated and lives across the call; props is a valid list
        // that lzc_create only copies into its ioctl arguments; no wrapping key (NULL, 0).
        let rc = unsafe {
            sys::lzc_create(
                c_name.as_ptr(),
                sys::LZC_DATSET_TYPE_ZFS,
                props.as_ptr(),
                ptr::null_mut(),
                0,
            )
        };
        check(op, name, None, rc)
    }

    /// Clones the snapshot `origin` as the filesystem `fs` with `props` (not mounted).
    pub fn clone(&self, fs: &str, origin: &str, props: &NvList) -> Result<(), ZfsError> {
        let op = ZfsOp::Clone;
        let c_fs = c_name(op, fs, Some(origin), fs, name::check_filesystem)?;
        let c_origin = c_name(op, fs, Some(origin), origin, name::check_snapshot)?;
        // SAFETY: both names are NUL-terminated and live across the call; props is a valid
        // list that lzc_clone only copies into its ioctl arguments.
        let rc = unsafe { sys::lzc_clone(c_fs.as_ptr(), c_origin.as_ptr(), props.as_ptr()) };
        check(op, fs, Some(origin), rc)
    }

    /// Takes all `snaps` (`fs@name`, one pool) atomically, in one call and one txg.
    /// On failure the error lists each snapshot the kernel refused and why.
    pub fn snapshot(&self, snaps: &[&str]) -> Result<(), ZfsError> {
        let op = ZfsOp::Snapshot;
        let Some((list, names)) = snapshot_list(op, snaps)? else {
            return Ok(());
        };
        let mut errlist: *mut sys::nvlist_t = ptr::null_mut();
        // SAFETY: list is a valid list of snapshot names (read only); props may be NULL;
        // errlist is a valid out-pointer that lzc_snapshot sets to NULL or a new list we own.
        let rc = unsafe { sys::lzc_snapshot(list.as_ptr(), ptr::null_mut(), &mut errlist) };
        // SAFETY: errlist is NULL or a list allocated for us by libnvpair, owned by nobody else.
        let errlist = unsafe { NvList::from_raw(errlist) };
        check_with_errlist(op, &names, rc, errlist.as_ref())
    }

    /// Rolls the filesystem `fs` back to `snap`, which must be its newest snapshot (else
    /// `EXDEV`). Works on a mounted filesystem.
    pub fn rollback_to(&self, fs: &str, snap: &str) -> Result<(), ZfsError> {
        let op = ZfsOp::Rollback;
        if let Err(e) = name::check_snapshot_of(fs, snap) {
            return Err(ZfsError::invalid_name(op, fs, Some(snap), e));
        }
        let c_fs = c_name(op, fs, Some(snap), fs, name::check_filesystem)?;
        let c_snap = c_name(op, fs, Some(snap), snap, name::check_snapshot)?;
        // SAFETY: both names are NUL-terminated and live across the call.
        let rc = unsafe { sys::lzc_rollback_to(c_fs.as_ptr(), c_snap.as_ptr()) };
        check(op, fs, Some(snap), rc)
    }

    /// Destroys the filesystem or snapshot `name`. A filesystem must be unmounted and have no
    /// children or snapshots with clones (else `EBUSY`/`EEXIST`).
    pub fn destroy(&self, name: &str) -> Result<(), ZfsError> {
        let op = ZfsOp::Destroy;
        let c_name = c_name(op, name, None, name, name::check_dataset)?;
        // SAFETY: c_name is NUL-terminated and lives across the call.
        let rc = unsafe { sys::lzc_destroy(c_name.as_ptr()) };
        check(op, name, None, rc)
    }

    /// Destroys all `snaps` (one pool) in one call. With `defer`, a snapshot that still has
    /// clones or holds is marked for destruction when the last goes, instead of `EBUSY`.
    pub fn destroy_snapshots(&self, snaps: &[&str], defer: bool) -> Result<(), ZfsError> {
        let op = ZfsOp::DestroySnapshots;
        let Some((list, names)) = snapshot_list(op, snaps)? else {
            return Ok(());
        };
        let defer = if defer { sys::B_TRUE } else { sys::B_FALSE };
        let mut errlist: *mut sys::nvlist_t = ptr::null_mut();
        // SAFETY: list is a valid list of snapshot names (read only); errlist is a valid
        // out-pointer that lzc_destroy_snaps sets to NULL or a new list we own.
        let rc = unsafe { sys::lzc_destroy_snaps(list.as_ptr(), defer, &mut errlist) };
        // SAFETY: errlist is NULL or a list allocated for us by libnvpair, owned by nobody else.
        let errlist = unsafe { NvList::from_raw(errlist) };
        check_with_errlist(op, &names, rc, errlist.as_ref())
    }

    /// Whether the filesystem or snapshot `name` exists.
    pub fn exists(&self, name: &str) -> Result<bool, ZfsError> {
        let c_name = c_name(ZfsOp::Exists, name, None, name, name::check_dataset)?;
        // SAFETY: c_name is NUL-terminated and lives across the call.
        let found = unsafe { sys::lzc_exists(c_name.as_ptr()) };
        Ok(found != sys::B_FALSE)
    }
}

impl Drop for Zfs {
    fn drop(&mut self) {
        // SAFETY: balances the successful libzfs_core_init of Zfs::new (one per Zfs value).
        unsafe { sys::libzfs_core_fini() }
    }
}

/// Validates `which` (one of the operation's names) with `check` and converts it for C.
fn c_name(
    op: ZfsOp,
    name: &str,
    related: Option<&str>,
    which: &str,
    check: fn(&str) -> Result<(), NameError>,
) -> Result<CString, ZfsError> {
    check(which).map_err(|e| ZfsError::invalid_name(op, name, related, e))?;
    // A valid name has no NUL (it is not a valid character), so this cannot fail.
    CString::new(which)
        .map_err(|_| ZfsError::invalid_name(op, name, related, NameError::InvalidChar('\0')))
}

/// The snapshot nvlist for lzc_snapshot / lzc_destroy_snaps, and the names for errors.
/// `None` for an empty slice (nothing to do).
fn snapshot_list(op: ZfsOp, snaps: &[&str]) -> Result<Option<(NvList, String)>, ZfsError> {
    if snaps.is_empty() {
        return Ok(None);
    }
    let names = snaps.join(", ");
    let mut list = NvList::new();
    for snap in snaps {
        if let Err(e) = name::check_snapshot(snap) {
            return Err(ZfsError::invalid_name(op, snap, None, e));
        }
        list.add_boolean(snap)
            .map_err(|e| ZfsError::invalid_property(op, snap, e))?;
    }
    Ok(Some((list, names)))
}

/// Decodes a libzfs_core errlist: `{dataset: int32 errno, ..., N_MORE_ERRORS: int32}`.
pub(crate) fn decode_errlist(errlist: &NvList) -> (Vec<(String, Errno)>, u32) {
    let mut failures = Vec::new();
    let mut more = 0;
    for (name, value) in errlist.pairs() {
        match value {
            NvValue::Int32(n) if name == N_MORE_ERRORS => more = u32::try_from(n).unwrap_or(0),
            NvValue::Int32(e) => failures.push((name, Errno::from_raw(e))),
            _ => {}
        }
    }
    (failures, more)
}

fn check_with_errlist(
    op: ZfsOp,
    names: &str,
    rc: c_int,
    errlist: Option<&NvList>,
) -> Result<(), ZfsError> {
    check(op, names, None, rc).map_err(|mut err| {
        if let Some((failures, more)) = errlist.map(decode_errlist) {
            if !failures.is_empty() || more > 0 {
                err.cause = Cause::PerDataset { failures, more };
            }
        }
        err
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn errlist_is_decoded_into_the_error() {
        let mut errlist = NvList::new();
        errlist
            .add_i32("zroot/jb/a@s", Errno::EEXIST as i32)
            .unwrap();
        errlist
            .add_i32("zroot/jb/b@s", Errno::ENOSPC as i32)
            .unwrap();
        errlist.add_i32(N_MORE_ERRORS, 3).unwrap();
        let (failures, more) = decode_errlist(&errlist);
        assert_eq!(
            failures,
            vec![
                ("zroot/jb/a@s".to_string(), Errno::EEXIST),
                ("zroot/jb/b@s".to_string(), Errno::ENOSPC),
            ]
        );
        assert_eq!(more, 3);

        let err = check_with_errlist(
            ZfsOp::Snapshot,
            "zroot/jb/a@s, zroot/jb/b@s",
            Errno::EEXIST as c_int,
            Some(&errlist),
        )
        .unwrap_err();
        assert_eq!(err.errno, Errno::EEXIST);
        assert_eq!(err.cause, Cause::PerDataset { failures, more: 3 });
        let text = err.to_string();
        assert!(
            text.starts_with("zfs snapshot zroot/jb/a@s, zroot/jb/b@s: "),
            "{text}"
        );
        assert!(text.contains("zroot/jb/b@s: "), "{text}");
        assert!(text.contains("(ENOSPC)"), "{text}");
        assert!(text.ends_with("; and 3 more"), "{text}");
    }

    #[test]
    fn success_ignores_errlist_and_empty_errlist_keeps_plain_error() {
        assert_eq!(check_with_errlist(ZfsOp::Snapshot, "p@s", 0, None), Ok(()));
        let empty = NvList::new();
        let err = check_with_errlist(
            ZfsOp::DestroySnapshots,
            "p@s",
            Errno::EBUSY as c_int,
            Some(&empty),
        )
        .unwrap_err();
        assert_eq!(err.cause, Cause::Call);
    }

    #[test]
    fn snapshot_lists_are_validated_before_any_call() {
        let (list, names) = snapshot_list(ZfsOp::Snapshot, &["p/a@s", "p/b@s"])
            .unwrap()
            .unwrap();
        assert!(list.contains_boolean("p/a@s") && list.contains_boolean("p/b@s"));
        assert_eq!(names, "p/a@s, p/b@s");
        assert!(snapshot_list(ZfsOp::Snapshot, &[]).unwrap().is_none());

        let err = snapshot_list(ZfsOp::DestroySnapshots, &["p/a@s", "p/b"]).unwrap_err();
        assert_eq!(err.name, "p/b");
        assert_eq!(err.errno, Errno::EINVAL);
        assert_eq!(err.cause, Cause::InvalidName(NameError::NotASnapshot));
        let err = snapshot_list(ZfsOp::Snapshot, &["p/a@s@t"]).unwrap_err();
        assert_eq!(err.cause, Cause::InvalidName(NameError::MultipleAt));
    }

    #[test]
    fn names_are_validated_for_c() {
        let ok = c_name(
            ZfsOp::Clone,
            "p/c",
            Some("p/i@r"),
            "p/i@r",
            name::check_snapshot,
        )
        .unwrap();
        assert_eq!(ok.as_bytes(), b"p/i@r");
        let err = c_name(
            ZfsOp::Clone,
            "p/c",
            Some("p/i"),
            "p/i",
            name::check_snapshot,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "zfs clone p/c from p/i: invalid name: expected a snapshot name (dataset@snapshot) (EINVAL)");
        let err = c_name(ZfsOp::Destroy, "p/c\0", None, "p/c\0", name::check_dataset).unwrap_err();
        assert_eq!(err.cause, Cause::InvalidName(NameError::InvalidChar('\0')));
    }

    #[test]
    fn new_without_dev_zfs_is_a_clear_error() {
        if Path::new(ZFS_DEV).exists() {
            eprintln!("skipped: {ZFS_DEV} exists on this machine");
            return;
        }
        let err = Zfs::new().unwrap_err();
        assert_eq!(err.op, ZfsOp::Init);
        assert_eq!(err.name, ZFS_DEV);
        assert_eq!(err.errno, Errno::ENOENT);
        assert_eq!(
            err.to_string(),
            format!("zfs init /dev/zfs: {} (ENOENT)", Errno::ENOENT.desc())
        );
    }

    #[test]
    fn zfs_handle_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Zfs>();
    }
}
