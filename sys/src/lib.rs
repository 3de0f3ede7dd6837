//! Raw declarations for the parts of libzfs_core and libnvpair (OpenZFS) that jailbuilder uses.
//!
//! Declarations only, no logic. FreeBSD does not install the libnvpair headers, so these are
//! written by hand; `tests/header_check.rs` compiles them against the real OpenZFS headers
//! (Debian's `libzfslinux-dev`) and fails when a signature or a constant drifts.
//!
//! Conventions the header check relies on (keep them when adding a declaration):
//! - plain `pub fn name(arg: Type, ...) -> Ret;` items inside `extern "C"` blocks (no
//!   attributes, no variadics);
//! - only the types listed in the check's mapping table (C names as type aliases here);
//! - `*const T` where current OpenZFS (2.2+, FreeBSD 14) has `const T *`. Older headers
//!   (OpenZFS 2.1) lack some of those `const`s; the check accepts either spelling for a
//!   `*const`, but a `*mut` must match the header exactly.
//! - every `pub const` is named exactly as the C constant or enumerator it mirrors.
//!
//! Return values: the `lzc_*` functions return 0 or an errno value directly (never -1 with
//! `errno` set); `lzc_exists` returns a `boolean_t`. The `fnvlist_*` functions abort the process
//! on allocation failure instead of returning an error.

#![no_std]
#![allow(non_camel_case_types)]

use core::ffi::{c_char, c_int, c_uint};

/// An nvlist (opaque: only ever handled through a pointer).
#[repr(C)]
pub struct nvlist_t {
    _opaque: [u8; 0],
    _not_send_sync_unpin: core::marker::PhantomData<(*mut u8, core::marker::PhantomPinned)>,
}

/// One name/value pair inside an nvlist (opaque).
#[repr(C)]
pub struct nvpair_t {
    _opaque: [u8; 0],
    _not_send_sync_unpin: core::marker::PhantomData<(*mut u8, core::marker::PhantomPinned)>,
}

/// `typedef enum { B_FALSE, B_TRUE } boolean_t;` (an `int`-sized enum).
pub type boolean_t = c_uint;
pub const B_FALSE: boolean_t = 0;
pub const B_TRUE: boolean_t = 1;

/// `uint_t` from libspl (`unsigned int`).
pub type uint_t = c_uint;

/// `enum lzc_dataset_type` (binary compatible with `dmu_objset_type_t`).
pub type lzc_dataset_type = c_uint;
/// A filesystem (the misspelling "DATSET" is OpenZFS's own).
pub const LZC_DATSET_TYPE_ZFS: lzc_dataset_type = 2;
/// A volume.
pub const LZC_DATSET_TYPE_ZVOL: lzc_dataset_type = 3;

/// `data_type_t`, the type tag of an nvpair (an enum with a negative member, so `int`).
pub type data_type_t = c_int;
pub const DATA_TYPE_UNKNOWN: data_type_t = 0;
pub const DATA_TYPE_BOOLEAN: data_type_t = 1;
pub const DATA_TYPE_INT32: data_type_t = 5;
pub const DATA_TYPE_UINT64: data_type_t = 8;
pub const DATA_TYPE_STRING: data_type_t = 9;
pub const DATA_TYPE_NVLIST: data_type_t = 19;
pub const DATA_TYPE_BOOLEAN_VALUE: data_type_t = 21;

/// Longest dataset/snapshot name, including the terminating NUL (`sys/fs/zfs.h`).
pub const ZFS_MAX_DATASET_NAME_LEN: usize = 256;

/// Values of the `sync` index property (`zfs_sync_type_t` in `sys/fs/zfs.h`).
pub type zfs_sync_type_t = c_uint;
pub const ZFS_SYNC_STANDARD: zfs_sync_type_t = 0;
pub const ZFS_SYNC_ALWAYS: zfs_sync_type_t = 1;
pub const ZFS_SYNC_DISABLED: zfs_sync_type_t = 2;

// libzfs_core
extern "C" {
    pub fn libzfs_core_init() -> c_int;
    pub fn libzfs_core_fini();
    pub fn lzc_create(
        name: *const c_char,
        kind: lzc_dataset_type,
        props: *mut nvlist_t,
        wkeydata: *mut u8,
        wkeylen: uint_t,
    ) -> c_int;
    pub fn lzc_clone(fsname: *const c_char, origin: *const c_char, props: *mut nvlist_t) -> c_int;
    pub fn lzc_snapshot(
        snaps: *mut nvlist_t,
        props: *mut nvlist_t,
        errlist: *mut *mut nvlist_t,
    ) -> c_int;
    pub fn lzc_rollback_to(fsname: *const c_char, snapname: *const c_char) -> c_int;
    pub fn lzc_destroy(fsname: *const c_char) -> c_int;
    pub fn lzc_destroy_snaps(
        snaps: *mut nvlist_t,
        defer: boolean_t,
        errlist: *mut *mut nvlist_t,
    ) -> c_int;
    pub fn lzc_exists(dataset: *const c_char) -> boolean_t;
}

// libnvpair
extern "C" {
    pub fn fnvlist_alloc() -> *mut nvlist_t;
    pub fn fnvlist_free(nvl: *mut nvlist_t);
    pub fn fnvlist_num_pairs(nvl: *mut nvlist_t) -> usize;
    pub fn fnvlist_add_boolean(nvl: *mut nvlist_t, name: *const c_char);
    pub fn fnvlist_add_int32(nvl: *mut nvlist_t, name: *const c_char, val: i32);
    pub fn fnvlist_add_uint64(nvl: *mut nvlist_t, name: *const c_char, val: u64);
    pub fn fnvlist_add_string(nvl: *mut nvlist_t, name: *const c_char, val: *const c_char);
    pub fn fnvlist_add_nvlist(nvl: *mut nvlist_t, name: *const c_char, val: *mut nvlist_t);
    pub fn nvlist_lookup_boolean(nvl: *const nvlist_t, name: *const c_char) -> c_int;
    pub fn nvlist_lookup_uint64(nvl: *const nvlist_t, name: *const c_char, val: *mut u64) -> c_int;
    pub fn nvlist_lookup_string(
        nvl: *const nvlist_t,
        name: *const c_char,
        val: *mut *const c_char,
    ) -> c_int;
    pub fn nvlist_lookup_int32(nvl: *const nvlist_t, name: *const c_char, val: *mut i32) -> c_int;
    pub fn nvlist_next_nvpair(nvl: *mut nvlist_t, nvp: *const nvpair_t) -> *mut nvpair_t;
    pub fn nvpair_name(nvp: *const nvpair_t) -> *const c_char;
    pub fn nvpair_type(nvp: *const nvpair_t) -> data_type_t;
    pub fn nvpair_value_int32(nvp: *const nvpair_t, val: *mut i32) -> c_int;
    pub fn nvpair_value_uint64(nvp: *const nvpair_t, val: *mut u64) -> c_int;
    pub fn nvpair_value_string(nvp: *const nvpair_t, val: *mut *const c_char) -> c_int;
}
