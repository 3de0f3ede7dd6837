//! The seam between the platform-neutral engine and a platform backend.
//!
//! The engine sees only this trait. A backend owns storage (toolchain images, per-build
//! container roots, resetting them) and isolation (running a command inside a container).
//! Handles are owned values, never `Copy`; a backend's handle types release what they hold
//! in `Drop` as a last resort, but the engine always destroys them explicitly so that errors
//! are reported.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::exec::{CancelToken, PreparedCommand};

/// Identifies a toolchain image: sccache's `Toolchain.archive_id` (a hex digest), or any
/// name of `[A-Za-z0-9_.-]{2,128}` not starting with `.`. Validated because it becomes part
/// of dataset names and directory names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ToolchainId(String);

#[derive(Debug, thiserror::Error)]
#[error("invalid toolchain id {0:?}: expected 2-128 characters of [A-Za-z0-9_.-], not starting with '.'")]
pub struct InvalidToolchainId(pub String);

impl ToolchainId {
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidToolchainId> {
        let id = id.into();
        // At least two: sccache's toolchain cache keeps `<id[0]>/<id[1]>/<id>` and slices
        // the id unchecked (a one-character id panics its request handler).
        let ok = id.len() >= 2
            && id.len() <= 128
            && !id.starts_with('.')
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if ok {
            Ok(ToolchainId(id))
        } else {
            Err(InvalidToolchainId(id))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ToolchainId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The unprivileged identity compiles run as. Never root unless the operator insists.
///
/// Each container slot has its own (the engine's `build_user_base` plus the slot number),
/// so nothing keyed by uid is shared between concurrent builds or with host accounts:
/// /proc/<pid> access, the per-uid keyring, RLIMIT_NPROC, inotify and pipe-buffer quotas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildUser {
    pub uid: u32,
    pub gid: u32,
}

impl BuildUser {
    /// The identity of slot `slot` when slot 0 runs as `self`: both ids offset by `slot`.
    /// None when either would pass `u32::MAX`, which is `(uid_t)-1`: setresuid(2) and
    /// chown(2) read it as "leave unchanged", so a compile would keep the server's root.
    pub fn offset(self, slot: u32) -> Option<BuildUser> {
        let uid = self.uid.checked_add(slot).filter(|&u| u != u32::MAX)?;
        let gid = self.gid.checked_add(slot).filter(|&g| g != u32::MAX)?;
        Some(BuildUser { uid, gid })
    }
}

/// Per-build resource limits, enforced by the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock limit of one compile; on expiry every process of the sandbox is killed.
    pub timeout: Duration,
    /// Bytes of stdout and of stderr kept each; the rest is drained and dropped.
    pub output_stream_cap: usize,
    /// Address-space limit (RLIMIT_AS) of each process, bytes; 0 = unlimited.
    pub memory_bytes: u64,
    /// Processes of the build user (RLIMIT_NPROC); 0 = unlimited.
    pub max_processes: u64,
    /// Open files per process (RLIMIT_NOFILE); 0 = unlimited.
    pub max_open_files: u64,
    /// Largest file a process may write (RLIMIT_FSIZE), bytes; 0 = unlimited.
    pub max_file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(600),
            output_stream_cap: 4 << 20,
            memory_bytes: 8 << 30,
            max_processes: 256,
            max_open_files: 1024,
            max_file_bytes: 4 << 30,
        }
    }
}

/// How a sandboxed command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal (not by us).
    Signal(i32),
    /// Killed by the backend because `Limits::timeout` expired.
    TimedOut,
}

impl ExitStatus {
    /// The code sccache reports: the exit code, or 128 + signal as a shell would.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
            ExitStatus::TimedOut => 128 + libc::SIGKILL,
        }
    }

    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

/// What a sandboxed command produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutcome {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// True when the stream exceeded `Limits::output_stream_cap` and was cut.
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// The sandbox's own limit that ended (or broke) a command that did not succeed, when
    /// the backend can tell: Linux with a cgroup v2 per container reads its OOM-kill and
    /// pids.max counters. `None` everywhere else: with rlimits (Linux without cgroup v2,
    /// FreeBSD) the kernel records no per-sandbox event, a compiler just sees ENOMEM or
    /// EAGAIN and fails in its own way. The time limit is [`ExitStatus::TimedOut`].
    pub limit_hit: Option<LimitHit>,
}

/// A sandbox limit (other than time) that fired during a failed command, with the
/// configured value; displayed with the configuration key that sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitHit {
    /// `Limits::memory_bytes`: the sandbox's memory was exhausted (a process OOM-killed).
    Memory { bytes: u64 },
    /// `Limits::max_processes`: a fork failed at the sandbox's process limit.
    Processes { max: u64 },
}

impl std::fmt::Display for LimitHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimitHit::Memory { bytes } => write!(f, "memory limit (memory_bytes = {bytes})"),
            LimitHit::Processes { max } => write!(f, "process limit (max_processes = {max})"),
        }
    }
}

/// A platform backend: images, containers, isolation. See DESIGN.md "The hot path".
///
/// Contract:
/// - `create_image` unpacks a gzip'd toolchain tar (untrusted) into a new read-only image
///   with [`crate::untrusted::unpack_tar_gz`]; it may take seconds and is called at most
///   once at a time per toolchain by the engine, concurrently for different toolchains.
/// - `create_container` makes a ready container from an image: its root is a writable view
///   of the image, isolated from the host and from other containers.
/// - `root` is the host path of the container's root directory; the engine unpacks inputs
///   into it and reads outputs from it, beneath it only ([`crate::untrusted`]).
/// - `exec` runs one command inside the container as `user` within `limits`; when it
///   returns, no process it started is still running unless `reset` will kill it.
///   Nothing but the command itself is spawned.
/// - `reset` kills every process in the container and returns its filesystem to the state
///   `create_container` left. A container whose reset failed must be destroyed.
/// - `remove_leftovers` is called once at start-up, before anything else: it takes the
///   instance lock and removes whatever an earlier (crashed or stopped) instance left
///   behind but complete images: every container, every partial, foreign or
///   other-version image.
/// - `existing_images` is called once, right after: the complete images an earlier
///   instance kept, which the engine adopts (or destroys, beyond its bounds).
pub trait Backend: Send + Sync + 'static {
    type Image: Send + Sync + 'static;
    type Container: Send + 'static;
    type Error: std::error::Error + Send + Sync + 'static;

    /// Short name for logs and `doctor`: "freebsd-jail-zfs", "linux-ns-overlay", ...
    fn kind(&self) -> &'static str;

    /// True when `error` is the client's fault (a corrupt toolchain archive, a missing
    /// executable or working directory), not the backend's: such errors fail the job but do
    /// not count against the builder's health.
    fn is_job_error(&self, error: &Self::Error) -> bool {
        let _ = error;
        false
    }

    fn remove_leftovers(&self) -> Result<CleanupReport, Self::Error>;

    /// The complete images an earlier instance left (each checked by its completeness
    /// marker), for the engine to adopt. A backend that keeps none returns none. No
    /// default: `remove_leftovers` leaves complete images in place, so a backend (or a
    /// wrapper forwarding to one) that reported none here would then fail to create them
    /// again ("already exists").
    fn existing_images(&self) -> Result<Vec<ExistingImage<Self::Image>>, Self::Error>;

    fn create_image(
        &self,
        id: &ToolchainId,
        toolchain_tar_gz: &mut dyn Read,
    ) -> Result<Self::Image, Self::Error>;

    fn destroy_image(&self, image: Self::Image) -> Result<(), Self::Error>;

    fn create_container(&self, image: &Self::Image) -> Result<Self::Container, Self::Error>;

    fn root<'c>(&self, container: &'c Self::Container) -> &'c Path;

    /// Runs `command` in the container. With `cancel`, the call also ends when the token is
    /// cancelled: the sandbox's processes are killed at once and the call returns an error
    /// (the engine reports [`crate::engine::BuildError::Cancelled`]).
    fn exec(
        &self,
        container: &Self::Container,
        command: &PreparedCommand,
        user: BuildUser,
        limits: &Limits,
        cancel: Option<&CancelToken>,
    ) -> Result<ExecOutcome, Self::Error>;

    fn reset(&self, container: &mut Self::Container) -> Result<(), Self::Error>;

    fn destroy_container(&self, container: Self::Container) -> Result<(), Self::Error>;

    /// Removes everything this backend instance created (images, containers, its state);
    /// `jailbuilder clean`. Valid without `remove_leftovers` first.
    fn clean_all(&self) -> Result<CleanupReport, Self::Error>;
}

/// A complete image an earlier instance left, found at start-up.
#[derive(Debug)]
pub struct ExistingImage<I> {
    pub id: ToolchainId,
    pub image: I,
    /// When it was last used (its marker's mtime): the engine keeps the most recent ones
    /// within `max_images`.
    pub last_used: SystemTime,
}

/// What a clean-up found and removed, for logs and `jailbuilder clean`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// One line per removed object: "jail jb-ab12-3", "dataset pool/jb/c3", "mount /x".
    pub removed: Vec<String>,
}

impl CleanupReport {
    pub fn push(&mut self, what: impl Into<String>) {
        self.removed.push(what.into());
    }
}
