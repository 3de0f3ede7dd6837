//! The platform's own backend, built from the `[builder]` configuration, and its probe for
//! `jailbuilder doctor`. The one place (besides `lib.rs`'s alias) that picks a platform.

#[cfg(target_os = "linux")]
#[path = "linux.rs"]
mod imp;

#[cfg(target_os = "freebsd")]
#[path = "freebsd.rs"]
mod imp;

pub use imp::{open_backend, probe, NativeError};

/// One line of `jailbuilder doctor`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeItem {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}
