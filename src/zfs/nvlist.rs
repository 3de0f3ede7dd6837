//! An owned nvlist (libnvpair), the argument and result format of libzfs_core.
//!
//! [`NvList`] owns its C list and frees it when dropped; it is not `Copy` or `Clone`, and no
//! raw pointer leaves this crate. Names are unique (`fnvlist_alloc` uses `NV_UNIQUE_NAME`):
//! adding a name again replaces the earlier pair. The `fnvlist_*` functions abort the process
//! on allocation failure, like Rust's own allocation does.

use std::ffi::{c_char, CStr, CString};
use std::fmt;
use std::ptr::{self, NonNull};

use jailbuilder_zfs_sys as sys;

/// A name or a string value could not be passed to C.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("nvlist {what} {text:?} contains a NUL byte")]
pub struct NvListError {
    /// `"name"` or `"value"`.
    pub what: &'static str,
    pub text: String,
}

fn cstring(what: &'static str, text: &str) -> Result<CString, NvListError> {
    CString::new(text).map_err(|_| NvListError {
        what,
        text: text.to_string(),
    })
}

/// A value read back from an nvlist (the types jailbuilder writes or the kernel reports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NvValue {
    /// A name with no value (`DATA_TYPE_BOOLEAN`), as in the snapshot lists of libzfs_core.
    Boolean,
    Int32(i32),
    Uint64(u64),
    String(String),
    /// Any other type, by its `data_type_t` tag.
    Other(i32),
}

/// An owned, mutable nvlist.
pub struct NvList {
    ptr: NonNull<sys::nvlist_t>,
}

// SAFETY: an NvList exclusively owns its C list (no other pointer to it exists outside calls
// made through `&self`/`&mut self`), and libnvpair's default allocator is plain malloc/free
// with no thread-local state, so the list may be used and freed on another thread.
unsafe impl Send for NvList {}

impl NvList {
    /// An empty list with unique names.
    pub fn new() -> Self {
        // SAFETY: fnvlist_alloc takes no arguments and returns a new list (it aborts rather
        // than return NULL on allocation failure).
        let raw = unsafe { sys::fnvlist_alloc() };
        match NonNull::new(raw) {
            Some(ptr) => Self { ptr },
            None => std::process::abort(),
        }
    }

    /// Takes ownership of a list returned by libzfs_core (e.g. an errlist). NULL gives `None`.
    ///
    /// # Safety
    /// `raw` is NULL or a valid nvlist allocated by libnvpair that nothing else owns or frees.
    pub(crate) unsafe fn from_raw(raw: *mut sys::nvlist_t) -> Option<Self> {
        NonNull::new(raw).map(|ptr| Self { ptr })
    }

    /// The C pointer, for libzfs_core calls that take `nvlist_t *` but only read the list.
    pub(crate) fn as_ptr(&self) -> *mut sys::nvlist_t {
        self.ptr.as_ptr()
    }

    /// Adds (or replaces) a string pair.
    pub fn add_string(&mut self, name: &str, value: &str) -> Result<(), NvListError> {
        let name = cstring("name", name)?;
        let value = cstring("value", value)?;
        // SAFETY: self.ptr is a valid list we own exclusively (&mut self); name and value are
        // NUL-terminated and outlive the call; libnvpair copies both.
        unsafe { sys::fnvlist_add_string(self.as_ptr(), name.as_ptr(), value.as_ptr()) };
        Ok(())
    }

    /// Adds (or replaces) a uint64 pair: numeric properties and index properties (see
    /// [`crate::zfs::props`]).
    pub fn add_u64(&mut self, name: &str, value: u64) -> Result<(), NvListError> {
        let name = cstring("name", name)?;
        // SAFETY: valid list owned exclusively; name is NUL-terminated and copied.
        unsafe { sys::fnvlist_add_uint64(self.as_ptr(), name.as_ptr(), value) };
        Ok(())
    }

    /// [`add_u64`](Self::add_u64) for a name known at compile time (cannot fail).
    pub fn add_u64_cstr(&mut self, name: &CStr, value: u64) {
        // SAFETY: valid list owned exclusively; name is NUL-terminated and copied.
        unsafe { sys::fnvlist_add_uint64(self.as_ptr(), name.as_ptr(), value) };
    }

    /// Adds (or replaces) an int32 pair (the format of libzfs_core errlists).
    pub fn add_i32(&mut self, name: &str, value: i32) -> Result<(), NvListError> {
        let name = cstring("name", name)?;
        // SAFETY: valid list owned exclusively; name is NUL-terminated and copied.
        unsafe { sys::fnvlist_add_int32(self.as_ptr(), name.as_ptr(), value) };
        Ok(())
    }

    /// Adds a name without a value (`DATA_TYPE_BOOLEAN`), e.g. a snapshot to create or destroy.
    pub fn add_boolean(&mut self, name: &str) -> Result<(), NvListError> {
        let name = cstring("name", name)?;
        // SAFETY: valid list owned exclusively; name is NUL-terminated and copied.
        unsafe { sys::fnvlist_add_boolean(self.as_ptr(), name.as_ptr()) };
        Ok(())
    }

    /// Builder form of [`add_string`](Self::add_string).
    pub fn with_string(mut self, name: &str, value: &str) -> Result<Self, NvListError> {
        self.add_string(name, value)?;
        Ok(self)
    }

    /// Builder form of [`add_u64`](Self::add_u64).
    pub fn with_u64(mut self, name: &str, value: u64) -> Result<Self, NvListError> {
        self.add_u64(name, value)?;
        Ok(self)
    }

    /// Builder form of [`add_boolean`](Self::add_boolean).
    pub fn with_boolean(mut self, name: &str) -> Result<Self, NvListError> {
        self.add_boolean(name)?;
        Ok(self)
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        // SAFETY: valid list; fnvlist_num_pairs only walks it.
        unsafe { sys::fnvlist_num_pairs(self.as_ptr()) }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `name` is present as a valueless boolean.
    pub fn contains_boolean(&self, name: &str) -> bool {
        let Ok(name) = CString::new(name) else {
            return false;
        };
        // SAFETY: valid list; name is NUL-terminated; the lookup only reads.
        unsafe { sys::nvlist_lookup_boolean(self.as_ptr(), name.as_ptr()) == 0 }
    }

    /// The string value of `name`, if present with that type.
    pub fn get_string(&self, name: &str) -> Option<String> {
        let name = CString::new(name).ok()?;
        let mut value: *const c_char = ptr::null();
        // SAFETY: valid list; name is NUL-terminated; value is a valid out-pointer. On success
        // it points into the list, which is not modified before we copy it below.
        let rc = unsafe { sys::nvlist_lookup_string(self.as_ptr(), name.as_ptr(), &mut value) };
        if rc != 0 || value.is_null() {
            return None;
        }
        // SAFETY: libnvpair stores strings NUL-terminated; the list outlives this borrow.
        Some(
            unsafe { CStr::from_ptr(value) }
                .to_string_lossy()
                .into_owned(),
        )
    }

    /// The uint64 value of `name`, if present with that type.
    pub fn get_u64(&self, name: &str) -> Option<u64> {
        let name = CString::new(name).ok()?;
        let mut value = 0u64;
        // SAFETY: valid list; name is NUL-terminated; value is a valid out-pointer.
        let rc = unsafe { sys::nvlist_lookup_uint64(self.as_ptr(), name.as_ptr(), &mut value) };
        (rc == 0).then_some(value)
    }

    /// The int32 value of `name`, if present with that type.
    pub fn get_i32(&self, name: &str) -> Option<i32> {
        let name = CString::new(name).ok()?;
        let mut value = 0i32;
        // SAFETY: valid list; name is NUL-terminated; value is a valid out-pointer.
        let rc = unsafe { sys::nvlist_lookup_int32(self.as_ptr(), name.as_ptr(), &mut value) };
        (rc == 0).then_some(value)
    }

    /// All pairs, in list order, copied out.
    pub fn pairs(&self) -> Vec<(String, NvValue)> {
        let mut out = Vec::new();
        let mut pair: *mut sys::nvpair_t = ptr::null_mut();
        loop {
            // SAFETY: valid list; `pair` is NULL (start) or the pair returned by the previous
            // call on this same, unmodified list.
            pair = unsafe { sys::nvlist_next_nvpair(self.as_ptr(), pair) };
            if pair.is_null() {
                return out;
            }
            // SAFETY: `pair` is a live pair of this list; its name is NUL-terminated and
            // copied before the list can change.
            let name = unsafe { CStr::from_ptr(sys::nvpair_name(pair)) }
                .to_string_lossy()
                .into_owned();
            out.push((name, Self::value(pair)));
        }
    }

    fn value(pair: *const sys::nvpair_t) -> NvValue {
        // SAFETY: `pair` is a live pair of a list borrowed by the caller (`pairs`). This also
        // covers the accessors below ("see above"): each is called only for its own type and
        // writes one value to a valid out-pointer; strings are NUL-terminated and copied at once.
        let kind = unsafe { sys::nvpair_type(pair) };
        match kind {
            sys::DATA_TYPE_BOOLEAN => NvValue::Boolean,
            sys::DATA_TYPE_INT32 => {
                let mut v = 0i32;
                // SAFETY: see above.
                match unsafe { sys::nvpair_value_int32(pair, &mut v) } {
                    0 => NvValue::Int32(v),
                    _ => NvValue::Other(kind),
                }
            }
            sys::DATA_TYPE_UINT64 => {
                let mut v = 0u64;
                // SAFETY: see above.
                match unsafe { sys::nvpair_value_uint64(pair, &mut v) } {
                    0 => NvValue::Uint64(v),
                    _ => NvValue::Other(kind),
                }
            }
            sys::DATA_TYPE_STRING => {
                let mut v: *const c_char = ptr::null();
                // SAFETY: see above.
                match unsafe { sys::nvpair_value_string(pair, &mut v) } {
                    0 if !v.is_null() => {
                        // SAFETY: see above.
                        let s = unsafe { CStr::from_ptr(v) };
                        NvValue::String(s.to_string_lossy().into_owned())
                    }
                    _ => NvValue::Other(kind),
                }
            }
            other => NvValue::Other(other),
        }
    }
}

impl Default for NvList {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NvList {
    fn drop(&mut self) {
        // SAFETY: we own the list and nothing refers to it any more; it is freed exactly once.
        unsafe { sys::fnvlist_free(self.as_ptr()) }
    }
}

impl fmt::Debug for NvList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.pairs()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip() {
        let mut nvl = NvList::new();
        assert!(nvl.is_empty());
        nvl.add_string("mountpoint", "/jails/c1").unwrap();
        nvl.add_string("org.jailbuilder:toolchain", "gcc-13 é")
            .unwrap();
        assert_eq!(nvl.len(), 2);
        assert_eq!(nvl.get_string("mountpoint").as_deref(), Some("/jails/c1"));
        assert_eq!(
            nvl.get_string("org.jailbuilder:toolchain").as_deref(),
            Some("gcc-13 é")
        );
        assert_eq!(nvl.get_string("missing"), None);
        // Unique names: adding again replaces.
        nvl.add_string("mountpoint", "/other").unwrap();
        assert_eq!(nvl.len(), 2);
        assert_eq!(nvl.get_string("mountpoint").as_deref(), Some("/other"));
    }

    #[test]
    fn uint64_round_trip_and_type_mismatch() {
        let nvl = NvList::new()
            .with_u64("sync", u64::from(sys::ZFS_SYNC_DISABLED))
            .unwrap()
            .with_u64("quota", u64::MAX)
            .unwrap();
        assert_eq!(nvl.get_u64("sync"), Some(2));
        assert_eq!(nvl.get_u64("quota"), Some(u64::MAX));
        // Lookups are typed: a uint64 is not a string or an int32.
        assert_eq!(nvl.get_string("sync"), None);
        assert_eq!(nvl.get_i32("sync"), None);
    }

    #[test]
    fn booleans_round_trip() {
        let nvl = NvList::new()
            .with_boolean("zroot/jb/a@s")
            .unwrap()
            .with_boolean("zroot/jb/b@s")
            .unwrap();
        assert!(nvl.contains_boolean("zroot/jb/a@s"));
        assert!(!nvl.contains_boolean("zroot/jb/c@s"));
        assert!(!nvl.contains_boolean("bad\0name"));
        assert_eq!(
            nvl.pairs(),
            vec![
                ("zroot/jb/a@s".to_string(), NvValue::Boolean),
                ("zroot/jb/b@s".to_string(), NvValue::Boolean),
            ]
        );
    }

    #[test]
    fn pairs_reports_every_type_in_order() {
        let mut nvl = NvList::new();
        nvl.add_i32("a", -5).unwrap();
        nvl.add_u64("b", 7).unwrap();
        nvl.add_string("c", "x").unwrap();
        nvl.add_boolean("d").unwrap();
        assert_eq!(
            nvl.pairs(),
            vec![
                ("a".to_string(), NvValue::Int32(-5)),
                ("b".to_string(), NvValue::Uint64(7)),
                ("c".to_string(), NvValue::String("x".into())),
                ("d".to_string(), NvValue::Boolean),
            ]
        );
        assert_eq!(
            format!("{nvl:?}"),
            r#"{"a": Int32(-5), "b": Uint64(7), "c": String("x"), "d": Boolean}"#
        );
    }

    #[test]
    fn interior_nul_is_an_error_not_a_truncation() {
        let mut nvl = NvList::new();
        let err = nvl.add_string("mountpoint", "/a\0/b").unwrap_err();
        assert_eq!(err.what, "value");
        let err = nvl.add_u64("sy\0nc", 1).unwrap_err();
        assert_eq!(err.what, "name");
        assert!(nvl.is_empty());
    }

    #[test]
    fn send_to_another_thread_and_drop_there() {
        let nvl = NvList::new().with_string("k", "v").unwrap();
        let got = std::thread::spawn(move || nvl.get_string("k"))
            .join()
            .unwrap();
        assert_eq!(got.as_deref(), Some("v"));
    }
}
