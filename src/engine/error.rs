//! Errors of one build, each named after the step that failed. `is_client_error` tells the
//! job's fault (bad request data) from the builder's (a backend failure).

use crate::backend::ToolchainId;
use crate::exec::InvalidCommand;
use crate::untrusted::{BeneathError, UnpackError};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid command: {0}")]
    Command(#[from] InvalidCommand),
    #[error("invalid output path {path:?}: {reason}")]
    OutputPath { path: String, reason: String },
    #[error("{count} outputs requested, more than the limit of {limit}")]
    TooManyOutputs { count: usize, limit: usize },
    #[error("output {path:?} names the same file as output {first:?}")]
    DuplicateOutput { path: String, first: String },
    #[error("toolchain {id}: opening the archive: {source}")]
    ToolchainOpen {
        id: ToolchainId,
        #[source]
        source: std::io::Error,
    },
    /// The toolchain archive is unusable (corrupt, hostile): remove it from any cache.
    #[error("toolchain {id} is unusable: {source}")]
    Toolchain {
        id: ToolchainId,
        #[source]
        source: BoxError,
    },
    #[error("inputs archive: {0}")]
    Inputs(#[source] UnpackError),
    #[error("creating directory {path:?}: {source}")]
    Directory {
        path: String,
        #[source]
        source: BeneathError,
    },
    /// The command could not start inside the sandbox (missing executable or cwd).
    #[error("the command could not start in the sandbox: {0}")]
    Start(#[source] BoxError),
    #[error("output {path:?}: {source}")]
    Output {
        path: String,
        #[source]
        source: BeneathError,
    },
    /// The outputs together are larger than `max_outputs_total_bytes`; `path` is the one
    /// that would pass it.
    #[error("output {path:?}: the outputs together exceed the limit of {limit} bytes")]
    OutputsTooLarge { path: String, limit: u64 },
    #[error("encoding output {path:?}: {source}")]
    OutputEncode {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{step} failed ({backend} backend): {source}")]
    Backend {
        step: &'static str,
        backend: &'static str,
        #[source]
        source: BoxError,
    },
    /// The engine configuration cannot work (checked by [`crate::engine::Engine::start`]).
    #[error("engine configuration {what}: {reason}")]
    InvalidConfig { what: &'static str, reason: String },
    #[error("the builder is shutting down")]
    ShuttingDown,
    /// [`crate::exec::CancelToken::cancel`] was called: the build stopped, its sandbox's
    /// processes were killed and the container went back to the recycler.
    #[error("the build was cancelled")]
    Cancelled,
}

impl BuildError {
    /// True when the request was at fault (or the client cancelled it); false when the
    /// builder was.
    pub fn is_client_error(&self) -> bool {
        !matches!(
            self,
            BuildError::Backend { .. }
                | BuildError::ShuttingDown
                | BuildError::InvalidConfig { .. }
        )
    }
}
