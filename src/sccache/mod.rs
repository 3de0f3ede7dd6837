//! sccache-dist integration (feature `sccache`).
//!
//! - [`JailBuilder`] implements [`sccache::dist::BuilderIncoming`] around an [`Engine`]: the
//!   piece an embedder plugs into sccache-dist's own server. Its file (`builder.rs`) uses
//!   public paths only, so sccache's tree copies it (README "Embedding in sccache-dist").
//! - [`JailServer`] implements [`sccache::dist::ServerIncoming`] around a [`JailBuilder`]
//!   and the toolchain cache, with the semantics of `sccache-dist server`, plus draining
//!   and health, upload budgets and toolchain-id validation.
//! - [`http`]: the build server's HTTP side of sccache's dist protocol (TLS, job tokens,
//!   bounded decoding, heartbeats): what `jailbuilder serve` runs the [`JailServer`] behind,
//!   in place of `sccache::dist::http::Server`.
//! - [`metrics`]: the Prometheus endpoint of `jailbuilder serve` (`metrics_addr`).
//! - [`ServeConfig`] is `jailbuilder serve`'s configuration file: `sccache-dist server`'s
//!   keys with a `[builder]` section ([`crate::config::BuilderConfig`]) in place of its
//!   builder types.
//!
//! sccache's traits return `sccache::errors::Error` (an `anyhow::Error`); this module's own
//! API returns typed errors ([`JobError`], [`ServerError`], [`ServeConfigError`]) and
//! converts only at the trait boundary.
//!
//! [`Engine`]: crate::engine::Engine

mod builder;
mod config;
pub mod http;
pub mod metrics;
mod server;

pub use builder::{JailBuilder, JobError, SccacheOutputs};
pub use config::{ServeConfig, ServeConfigError, DEFAULT_TOOLCHAIN_CACHE_SIZE};
pub use server::{
    JailServer, ServerError, UploadLimits, DEFAULT_MAX_STAGED_UPLOADS,
    DEFAULT_MAX_TOOLCHAIN_UPLOAD, UNCLAIMED_JOB_TIMEOUT, UNHEALTHY_PROBE_INTERVAL,
};

#[cfg(test)]
mod tests;
