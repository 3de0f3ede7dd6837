//! Safe layer over libzfs_core and libnvpair (sys/).
//!
//! - [`nvlist`]: an owned nvlist, the argument and result format of libzfs_core.
//! - [`name`]: dataset and snapshot name validation (OpenZFS `zfs_namecheck.c` rules).
//! - [`props`]: property values as the kernel expects them (index properties as uint64).
//! - [`error`]: [`ZfsError`] (operation, dataset, errno) and the return-code conversion.
//! - [`lzc`]: the [`Zfs`] handle and its dataset operations.
//!
//! Compiled on FreeBSD always, and on other systems with feature `zfs` (Debian's OpenZFS
//! libraries), so that the nvlist code is unit-tested against the real libnvpair.

pub mod error;
pub mod lzc;
pub mod name;
pub mod nvlist;
pub mod props;

pub use error::{Cause, ZfsError, ZfsOp};
pub use lzc::Zfs;
pub use name::NameError;
pub use nvlist::{NvList, NvListError, NvValue};
