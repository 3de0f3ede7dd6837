//! Dataset properties as libzfs_core expects them.
//!
//! Why index properties (`sync`, `atime`, `canmount`, ...) go in as uint64 and not as strings:
//! libzfs_core hands the nvlist to the kernel unchanged. The string-to-index conversion that
//! makes `zfs create -o sync=disabled` work lives in libzfs (`zfs_valid_proplist`), which
//! lzc does not call. In the kernel, `zfs_set_prop_nvlist` (module/zfs/zfs_ioctl.c, used by
//! the create and clone ioctls) accepts a `DATA_TYPE_STRING` value only for
//! `PROP_TYPE_STRING` properties and answers `EINVAL` otherwise; for `DATA_TYPE_UINT64` it
//! accepts a `PROP_TYPE_INDEX` property only if `zfs_prop_index_to_string` knows the value.
//! The values are the index tables of module/zcommon/zfs_prop.c: `sync` uses
//! `zfs_sync_type_t` (`ZFS_SYNC_DISABLED` = 2, checked against the headers by sys/'s header
//! check), and boolean index properties like `atime` use `boolean_table`: off = 0, on = 1.

use std::ffi::CStr;

use jailbuilder_zfs_sys as sys;

use super::nvlist::NvList;

/// The `sync` property.
pub const SYNC: &CStr = c"sync";
/// The `atime` property.
pub const ATIME: &CStr = c"atime";

/// Value of a boolean index property (`boolean_table` in zfs_prop.c): off.
pub const OFF: u64 = 0;
/// Value of a boolean index property (`boolean_table` in zfs_prop.c): on.
pub const ON: u64 = 1;

/// Values of the `sync` property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    Standard,
    Always,
    Disabled,
}

impl SyncMode {
    /// The index value the kernel expects.
    pub fn index(self) -> u64 {
        u64::from(match self {
            SyncMode::Standard => sys::ZFS_SYNC_STANDARD,
            SyncMode::Always => sys::ZFS_SYNC_ALWAYS,
            SyncMode::Disabled => sys::ZFS_SYNC_DISABLED,
        })
    }
}

/// Properties of a throwaway container clone, as poudriere sets them: `sync=disabled`
/// (nothing in a build sandbox needs to survive a crash) and `atime=off`.
pub fn throwaway_clone() -> NvList {
    let mut props = NvList::new();
    props.add_u64_cstr(SYNC, SyncMode::Disabled.index());
    props.add_u64_cstr(ATIME, OFF);
    props
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zfs::nvlist::NvValue;

    #[test]
    fn throwaway_props_are_uint64_indexes() {
        let props = throwaway_clone();
        assert_eq!(
            props.pairs(),
            vec![
                ("sync".to_string(), NvValue::Uint64(2)),
                ("atime".to_string(), NvValue::Uint64(0)),
            ]
        );
    }

    #[test]
    fn sync_indexes_follow_the_headers() {
        assert_eq!(SyncMode::Standard.index(), 0);
        assert_eq!(SyncMode::Always.index(), 1);
        assert_eq!(SyncMode::Disabled.index(), 2);
    }
}
