//! jailbuilder: spawn-free build sandboxes for sccache-dist.
//!
//! Layers (arrows point one way, see DESIGN.md):
//! CLI / [`sccache`] glue -> [`engine`] -> [`backend`] seam <- platform backends -> `sys/`.
//!
//! - [`backend`]: the seam between the platform-neutral engine and a platform.
//! - [`engine`]: toolchain images, the warm container pool, one build end to end.
//! - [`untrusted`]: the one place that touches client-supplied archives and paths.
//! - [`exec`]: command validation (before fork) and supervision of a sandboxed child.
//! - [`freebsd`]: jails + ZFS orchestration over a kernel seam (fake-testable on any OS).
//! - [`linux`]: overlayfs + namespaces.
//! - [`zfs`]: the safe layer over libzfs_core / libnvpair (`sys/`), FreeBSD's storage.
//! - [`native`]: this platform's backend built from the configuration, and its probe.
//! - [`config`]: the `[builder]` TOML section.
//! - [`toolchain`]: packaging a host compiler into a toolchain archive (host tooling).
//! - [`sccache`] (feature `sccache`): `BuilderIncoming` and the `serve` server.
//!
//! Embedding: the engine API ([`engine`], [`backend`], [`exec`], [`config`], [`native`]) is
//! free of sccache types and builds with `--no-default-features`. The sccache adapter
//! (`src/sccache/builder.rs`) names only public `jailbuilder::` paths, so sccache's own tree
//! can copy it verbatim (README "Embedding in sccache-dist");
//! `examples/sccache_dist_server.rs` compiles that very file outside the crate.

// The adapter file `src/sccache/builder.rs` says `jailbuilder::...`, as a copy outside
// this crate must: this makes the same paths resolve inside it.
extern crate self as jailbuilder;

pub mod backend;
pub mod config;
pub mod engine;
pub mod error_chain;
pub mod exec;
pub mod freebsd;
pub mod image_marker;
pub mod native;
pub mod toolchain;
pub mod untrusted;

#[cfg(test)]
mod test_support;

#[cfg(target_os = "linux")]
pub mod linux;

#[cfg(any(target_os = "freebsd", feature = "zfs"))]
pub mod zfs;

#[cfg(feature = "metrics")]
pub mod metrics;

#[cfg(feature = "sccache")]
pub mod sccache;

/// The backend this platform builds by default.
#[cfg(target_os = "linux")]
pub type NativeBackend = linux::LinuxBackend;
/// The backend this platform builds by default.
#[cfg(target_os = "freebsd")]
pub type NativeBackend = freebsd::FreeBsdBackend<freebsd::Counted<freebsd::RealKernel>>;
