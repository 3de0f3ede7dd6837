//! `jailbuilder serve`'s configuration file.
//!
//! The top-level keys are those of `sccache-dist server` (sccache 0.19), so an operator's
//! file carries over: `public_addr`, `bind_address`, `scheduler_url`, `scheduler_auth`,
//! `cache_dir`, `toolchain_cache_size`. sccache-dist's `[builder]` (type docker / overlay /
//! pot) is replaced by jailbuilder's `[builder]` ([`BuilderConfig`]).
//!
//! sccache's own `sccache::config::server::Config` cannot be reused: its `builder` field is
//! a closed enum of sccache's builders. Its `scheduler_auth` enum and URL type are public
//! and are reused, so those keys parse exactly as sccache-dist parses them.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use sccache::config::server::SchedulerAuth;
use sccache::config::HTTPUrl;
use sccache::dist::ServerId;
use serde::Deserialize;

use crate::config::{BuilderConfig, ConfigError};

/// sccache-dist's default toolchain cache size: 10 GiB.
pub const DEFAULT_TOOLCHAIN_CACHE_SIZE: u64 = 10 << 30;

/// The server token of `scheduler_auth = { type = "DANGEROUSLY_INSECURE" }`. A private
/// constant of the `sccache-dist` binary (not exported by the library), copied.
const INSECURE_DIST_SERVER_TOKEN: &str = "dangerously_insecure_server";

fn default_toolchain_cache_size() -> u64 {
    DEFAULT_TOOLCHAIN_CACHE_SIZE
}
fn default_max_toolchain_upload_bytes() -> u64 {
    super::DEFAULT_MAX_TOOLCHAIN_UPLOAD
}
fn default_max_staged_upload_bytes() -> u64 {
    super::DEFAULT_MAX_STAGED_UPLOADS
}
fn default_max_run_job_header_bytes() -> u64 {
    super::http::DEFAULT_MAX_RUN_JOB_HEADER
}
fn default_unhealthy_probe_interval_secs() -> u64 {
    super::UNHEALTHY_PROBE_INTERVAL.as_secs()
}

/// The whole `jailbuilder serve` file. Unknown keys anywhere are refused, naming the key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// The address clients and the scheduler reach this server at (host:port).
    pub public_addr: SocketAddr,
    /// The address to listen on, when it differs from `public_addr` (e.g. 0.0.0.0:10501).
    #[serde(default)]
    pub bind_address: Option<SocketAddr>,
    /// The scheduler, e.g. "http://10.0.0.1:10600".
    pub scheduler_url: HTTPUrl,
    /// `{ type = "token", token = "..." }`, `{ type = "jwt_token", token = "..." }` or
    /// `{ type = "DANGEROUSLY_INSECURE" }`.
    pub scheduler_auth: SchedulerAuth,
    /// Toolchain archives are cached in `<cache_dir>/tc` (sccache-dist's layout).
    pub cache_dir: PathBuf,
    /// Bytes of toolchain archives kept.
    #[serde(default = "default_toolchain_cache_size")]
    pub toolchain_cache_size: u64,
    /// jailbuilder's: the largest toolchain upload accepted (bytes; further capped by
    /// `toolchain_cache_size`). Larger uploads get CannotCache (or 413 if announced).
    #[serde(default = "default_max_toolchain_upload_bytes")]
    pub max_toolchain_upload_bytes: u64,
    /// jailbuilder's: the bytes of all toolchain uploads staged at once.
    #[serde(default = "default_max_staged_upload_bytes")]
    pub max_staged_upload_bytes: u64,
    /// jailbuilder's: the largest run_job header (command, environment, outputs), in bytes.
    #[serde(default = "default_max_run_job_header_bytes")]
    pub max_run_job_header_bytes: u64,
    /// jailbuilder's: where to serve Prometheus metrics (plain HTTP `GET /metrics`), e.g.
    /// "127.0.0.1:9469". Off unless set. Unauthenticated: bind it to a private address.
    #[serde(default)]
    pub metrics_addr: Option<SocketAddr>,
    /// jailbuilder's: while the builder is unhealthy, one job assignment per this many
    /// seconds is accepted as a probe (the others are refused; a probe that builds makes
    /// it healthy again). Default [`super::UNHEALTHY_PROBE_INTERVAL`].
    #[serde(default = "default_unhealthy_probe_interval_secs")]
    pub unhealthy_probe_interval_secs: u64,
    /// The sandbox backend and the engine's policy.
    #[serde(default)]
    pub builder: BuilderConfig,
    /// The file this was read from, for messages.
    #[serde(skip)]
    pub path: PathBuf,
}

impl fmt::Debug for ServeConfig {
    /// Everything but the scheduler token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match &self.scheduler_auth {
            SchedulerAuth::Insecure => "DANGEROUSLY_INSECURE",
            SchedulerAuth::Token { .. } => "token (redacted)",
            SchedulerAuth::JwtToken { .. } => "jwt_token (redacted)",
        };
        f.debug_struct("ServeConfig")
            .field("public_addr", &self.public_addr)
            .field("bind_address", &self.bind_address)
            .field("scheduler_url", &self.scheduler_url.to_url().as_str())
            .field("scheduler_auth", &auth)
            .field("cache_dir", &self.cache_dir)
            .field("toolchain_cache_size", &self.toolchain_cache_size)
            .field(
                "max_toolchain_upload_bytes",
                &self.max_toolchain_upload_bytes,
            )
            .field("max_staged_upload_bytes", &self.max_staged_upload_bytes)
            .field("max_run_job_header_bytes", &self.max_run_job_header_bytes)
            .field("metrics_addr", &self.metrics_addr)
            .field(
                "unhealthy_probe_interval_secs",
                &self.unhealthy_probe_interval_secs,
            )
            .field("builder", &self.builder)
            .field("path", &self.path)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeConfigError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{path}: {key}: {reason}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
}

/// The `server_id` claim of an sccache-dist server JWT (`sccache-dist auth generate-jwt-hs256-server-token`).
#[derive(Deserialize)]
struct ServerJwtClaims {
    server_id: ServerId,
}

/// Reads the `server_id` claim of a JWT without checking its signature (the scheduler
/// does that), as sccache-dist does, to refuse a token issued for another server.
fn jwt_server_id(token: &str) -> Result<ServerId, String> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or("not a JWT (expected header.payload.signature)")?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| format!("JWT payload is not base64url: {e}"))?;
    serde_json::from_slice::<ServerJwtClaims>(&json)
        .map(|c| c.server_id)
        .map_err(|e| format!("JWT payload has no valid server_id: {e}"))
}

impl ServeConfig {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ServeConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates `text`, read from `path`: JSON if `path` ends in `.json`, else
    /// TOML, as sccache's `try_read_config_file` decides.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ServeConfigError> {
        let mut cfg: ServeConfig = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?
        } else {
            crate::config::parse(path, text)?
        };
        cfg.path = path.to_path_buf();
        cfg.validate()?;
        Ok(cfg)
    }

    fn invalid(&self, key: &'static str, reason: impl Into<String>) -> ServeConfigError {
        ServeConfigError::Invalid {
            path: self.path.clone(),
            key,
            reason: reason.into(),
        }
    }

    /// Checks what serde cannot, including the `[builder]` section.
    pub fn validate(&self) -> Result<(), ServeConfigError> {
        if self.public_addr.ip().is_unspecified() {
            return Err(self.invalid(
                "public_addr",
                "must be an address clients can connect to, not an unspecified address; \
                 listen on all interfaces with bind_address",
            ));
        }
        if self.public_addr.port() == 0 {
            return Err(self.invalid("public_addr", "needs a port"));
        }
        if self.toolchain_cache_size == 0 {
            return Err(self.invalid("toolchain_cache_size", "must be at least 1"));
        }
        for (key, v) in [
            (
                "max_toolchain_upload_bytes",
                self.max_toolchain_upload_bytes,
            ),
            ("max_staged_upload_bytes", self.max_staged_upload_bytes),
            ("max_run_job_header_bytes", self.max_run_job_header_bytes),
            (
                "unhealthy_probe_interval_secs",
                self.unhealthy_probe_interval_secs,
            ),
        ] {
            if v == 0 {
                return Err(self.invalid(key, "must be at least 1"));
            }
        }
        if self.max_run_job_header_bytes > u64::from(u32::MAX) {
            return Err(self.invalid(
                "max_run_job_header_bytes",
                "cannot exceed 4294967295 (the header length is a u32)",
            ));
        }
        if !self.cache_dir.is_absolute() {
            return Err(self.invalid("cache_dir", "must be an absolute path"));
        }
        self.builder.validate(&self.path)?;
        self.scheduler_token()?;
        Ok(())
    }

    /// The bearer token this server presents to the scheduler, as `sccache-dist server`
    /// builds it: `"<public_addr> <token>"` for `token` (and the insecure mode), the JWT
    /// itself for `jwt_token` (refused if issued for another `public_addr`).
    pub fn scheduler_token(&self) -> Result<String, ServeConfigError> {
        let id = ServerId::new(self.public_addr);
        match &self.scheduler_auth {
            SchedulerAuth::Insecure => {
                Ok(format!("{} {INSECURE_DIST_SERVER_TOKEN}", self.public_addr))
            }
            SchedulerAuth::Token { token } => {
                if token.is_empty() {
                    return Err(self.invalid("scheduler_auth.token", "is empty"));
                }
                Ok(format!("{} {token}", self.public_addr))
            }
            SchedulerAuth::JwtToken { token } => {
                let claimed =
                    jwt_server_id(token).map_err(|e| self.invalid("scheduler_auth.token", e))?;
                if claimed != id {
                    return Err(self.invalid(
                        "scheduler_auth.token",
                        format!(
                            "the JWT was issued for server {}, but public_addr is {}",
                            claimed.addr(),
                            self.public_addr
                        ),
                    ));
                }
                Ok(token.clone())
            }
        }
    }

    /// The upload budgets of `[max_toolchain_upload_bytes, max_staged_upload_bytes]`.
    pub fn upload_limits(&self) -> super::UploadLimits {
        super::UploadLimits {
            per_upload: self.max_toolchain_upload_bytes,
            staged_total: self.max_staged_upload_bytes,
        }
    }

    /// `unhealthy_probe_interval_secs`.
    pub fn unhealthy_probe_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.unhealthy_probe_interval_secs)
    }

    /// True for `scheduler_auth = { type = "DANGEROUSLY_INSECURE" }`.
    pub fn is_insecure(&self) -> bool {
        matches!(self.scheduler_auth, SchedulerAuth::Insecure)
    }
}
