//! The one error type of the ZFS layer, and the one place that turns C return codes into it.

use std::ffi::c_int;
use std::fmt;

use nix::errno::Errno;

use super::name::NameError;
use super::nvlist::NvListError;

/// The libzfs_core operation that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZfsOp {
    /// `libzfs_core_init` (opening `/dev/zfs`).
    Init,
    Create,
    Clone,
    Snapshot,
    Rollback,
    Destroy,
    DestroySnapshots,
    Exists,
}

impl fmt::Display for ZfsOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ZfsOp::Init => "zfs init",
            ZfsOp::Create => "zfs create",
            ZfsOp::Clone => "zfs clone",
            ZfsOp::Snapshot => "zfs snapshot",
            ZfsOp::Rollback => "zfs rollback",
            ZfsOp::Destroy => "zfs destroy",
            ZfsOp::DestroySnapshots => "zfs destroy snapshots",
            ZfsOp::Exists => "zfs exists",
        })
    }
}

/// What went wrong, beyond the errno.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// libzfs_core returned the error code.
    Call,
    /// Rejected before any call: a name is not valid (errno `EINVAL`).
    InvalidName(NameError),
    /// Rejected before any call: a property could not be encoded (errno `EINVAL`).
    InvalidProperty(NvListError),
    /// The kernel's errlist: the datasets that failed and why. `more` counts failures the
    /// kernel left out of the list (`N_MORE_ERRORS`).
    PerDataset {
        failures: Vec<(String, Errno)>,
        more: u32,
    },
}

/// A failed ZFS operation: which one, on which dataset, and the errno.
///
/// Displays like `zfs clone zroot/jb/c1 from zroot/jb/img@ready: Device busy (EBUSY)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op} {name}{}: {}", related_text(*.op, .related), reason(*.errno, *.code, .cause))]
pub struct ZfsError {
    pub op: ZfsOp,
    /// The dataset operated on (for several snapshots: their names, comma-separated).
    pub name: String,
    /// The second dataset of the operation: the origin of a clone, the target of a rollback.
    pub related: Option<String>,
    pub errno: Errno,
    /// The raw code returned by libzfs_core. Equal to `errno as i32` except for OpenZFS's own
    /// `ZFS_ERR_*` codes (1024 and up), which have no errno (`errno` is then `UnknownErrno`).
    pub code: i32,
    pub cause: Cause,
}

fn related_text(op: ZfsOp, related: &Option<String>) -> String {
    match (op, related) {
        (ZfsOp::Clone, Some(origin)) => format!(" from {origin}"),
        (ZfsOp::Rollback, Some(snap)) => format!(" to {snap}"),
        (_, Some(other)) => format!(" ({other})"),
        (_, None) => String::new(),
    }
}

fn errno_text(errno: Errno, code: i32) -> String {
    if errno == Errno::UnknownErrno {
        format!("OpenZFS error {code}")
    } else {
        format!("{} ({errno:?})", errno.desc())
    }
}

fn reason(errno: Errno, code: i32, cause: &Cause) -> String {
    match cause {
        Cause::Call => errno_text(errno, code),
        Cause::InvalidName(e) => format!("invalid name: {e} ({errno:?})"),
        Cause::InvalidProperty(e) => format!("invalid property: {e} ({errno:?})"),
        Cause::PerDataset { failures, more } => {
            let mut s = errno_text(errno, code);
            for (i, (name, e)) in failures.iter().enumerate() {
                s.push_str(if i == 0 { ": " } else { "; " });
                s.push_str(&format!("{name}: {}", errno_text(*e, *e as i32)));
            }
            if *more > 0 {
                s.push_str(&format!("; and {more} more"));
            }
            s
        }
    }
}

impl ZfsError {
    /// An error from a libzfs_core return code (`rc != 0`).
    pub fn from_code(op: ZfsOp, name: &str, related: Option<&str>, rc: c_int) -> Self {
        Self {
            op,
            name: name.to_string(),
            related: related.map(str::to_string),
            errno: Errno::from_raw(rc),
            code: rc,
            cause: Cause::Call,
        }
    }

    /// A name rejected before any call.
    pub fn invalid_name(op: ZfsOp, name: &str, related: Option<&str>, e: NameError) -> Self {
        Self {
            cause: Cause::InvalidName(e),
            ..Self::from_code(op, name, related, Errno::EINVAL as c_int)
        }
    }

    /// A property list that could not be encoded.
    pub fn invalid_property(op: ZfsOp, name: &str, e: NvListError) -> Self {
        Self {
            cause: Cause::InvalidProperty(e),
            ..Self::from_code(op, name, None, Errno::EINVAL as c_int)
        }
    }
}

/// Turns a libzfs_core return code into a result.
///
/// libzfs_core returns 0 or the error code itself (an errno, or a `ZFS_ERR_*` code); it never
/// returns -1 with `errno` set, so `errno` is not read here.
pub fn check(op: ZfsOp, name: &str, related: Option<&str>, rc: c_int) -> Result<(), ZfsError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(ZfsError::from_code(op, name, related, rc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_op_dataset_and_errno() {
        let e = check(
            ZfsOp::Clone,
            "pool/jb/c1",
            Some("pool/jb/img@ready"),
            Errno::EBUSY as c_int,
        )
        .unwrap_err();
        assert_eq!(e.errno, Errno::EBUSY);
        assert_eq!(
            e.to_string(),
            format!(
                "zfs clone pool/jb/c1 from pool/jb/img@ready: {} (EBUSY)",
                Errno::EBUSY.desc()
            )
        );
        let e = check(
            ZfsOp::Rollback,
            "p/c",
            Some("p/c@clean"),
            Errno::EXDEV as c_int,
        );
        assert!(e
            .unwrap_err()
            .to_string()
            .starts_with("zfs rollback p/c to p/c@clean: "));
        assert_eq!(check(ZfsOp::Destroy, "p/c", None, 0), Ok(()));
    }

    #[test]
    fn openzfs_specific_codes_are_kept() {
        // The ZFS_ERR_* codes (sys/fs/zfs.h, zfs_errno_t) start at 1024 and are not errnos.
        let e = check(ZfsOp::Create, "p/c", None, 1030).unwrap_err();
        assert_eq!(e.code, 1030);
        assert_eq!(e.to_string(), "zfs create p/c: OpenZFS error 1030");
    }

    #[test]
    fn invalid_name_is_einval_with_reason() {
        let e = ZfsError::invalid_name(ZfsOp::Destroy, "p/..", None, NameError::ParentRef);
        assert_eq!(e.errno, Errno::EINVAL);
        assert_eq!(
            e.to_string(),
            "zfs destroy p/..: invalid name: a component of the name is '..' (EINVAL)"
        );
    }
}
