//! Errors of the Linux backend, one variant per failing step, each naming what it touched.

use std::io;
use std::path::PathBuf;

use crate::exec::ExecError;
use crate::untrusted::{BeneathError, UnpackError};

#[derive(Debug, thiserror::Error)]
pub enum LinuxError {
    #[error(
        "needs root (CAP_SYS_ADMIN) to mount overlayfs and create namespaces; running as uid {uid}"
    )]
    NotRoot { uid: u32 },
    #[error(
        "the kernel has no overlay filesystem (\"overlay\" is not in /proc/filesystems); \
         load it with `modprobe overlay`"
    )]
    NoOverlay,
    #[error("state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state directory {path} is unsafe: {reason}")]
    StateDirUnsafe { path: PathBuf, reason: &'static str },
    #[error(
        "path {path} cannot be used as an overlayfs layer: it contains ',', ':' or '\\' \
         (overlayfs option separators)"
    )]
    UnusablePath { path: PathBuf },
    #[error(
        "another jailbuilder instance holds the lock {path}: stop it, or give this one its \
         own state_dir"
    )]
    Locked { path: PathBuf },
    #[error("taking the instance lock {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("building the shared skeleton layer {path}: {source}")]
    Skel {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("image {id} already exists at {path}")]
    ImageExists { id: String, path: PathBuf },
    #[error("creating image directory {path}: {source}")]
    CreateImage {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("flushing image {path} to disk (syncfs): {source}")]
    SyncImage {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing the completeness marker of image {path}: {source}")]
    MarkImage {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("opening image directory {path}: {source}")]
    OpenImageRoot {
        path: PathBuf,
        #[source]
        source: BeneathError,
    },
    #[error("unpacking toolchain {id} into {path}: {source}")]
    Unpack {
        id: String,
        path: PathBuf,
        #[source]
        source: UnpackError,
    },
    #[error("removing {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("creating container directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mounting the upper-layer tmpfs on {path}: {source}")]
    MountTmpfs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mounting overlayfs on {root}: {source}")]
    MountOverlay {
        root: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unmounting {path}: {source}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is still mounted after unmounting everything beneath the state directory")]
    StillMounted { path: PathBuf },
    #[error("reading /proc/self/mountinfo: {source}")]
    Mountinfo {
        #[source]
        source: io::Error,
    },
    #[error("creating namespaces for {path}: unshare: {source}")]
    Unshare {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pinning namespace {path} (bind mount of /proc/thread-self/ns/...): {source}")]
    BindNamespace {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("opening namespace {path} for setns: {source}")]
    Setns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("preparing the mount namespace of {root} (private mounts, pivot_root): {source}")]
    PivotRoot {
        root: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("making the seed mount namespace on {path}: {source}")]
    SeedNamespace {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("attaching a clone of the mount of {root} in its mount namespace: {source}")]
    CloneRoot {
        root: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "bind-mounting the image directory {path} read-only over the container root: {source}"
    )]
    BindImageDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "detaching the last command's /proc ({path}) in the container's mount namespace: {source}"
    )]
    DetachProc {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("namespace helper thread for {path} panicked")]
    NamespaceThread { path: PathBuf },
    #[error("creating pipes for a sandboxed command: {source}")]
    Pipe {
        #[source]
        source: io::Error,
    },
    #[error("clone: {source}")]
    Fork {
        #[source]
        source: io::Error,
    },
    #[error("mapping the sandbox child's stack: {source}")]
    ChildStack {
        #[source]
        source: io::Error,
    },
    #[error("pidfd_open of the sandbox's first child: {source}")]
    PidfdOpen {
        #[source]
        source: io::Error,
    },
    #[error("running a command in {root}: {source}")]
    Exec {
        root: PathBuf,
        #[source]
        source: ExecError,
    },
    #[error("cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The seccomp filter could not be built (another architecture than x86_64/aarch64).
    #[error("building the sandbox's seccomp filter")]
    Seccomp(#[source] super::seccomp::SeccompError),
    #[error("{count} process(es) of the sandbox {root} still alive after SIGKILL")]
    Kill { root: PathBuf, count: usize },
}

impl LinuxError {
    /// True when the client, not the sandbox, is at fault: a missing executable or working
    /// directory (see [`ExecError::is_job_error`]), or a corrupt or hostile toolchain
    /// archive (see [`UnpackError::is_archive_fault`]; the engine then reports
    /// `BuildError::Toolchain`, and the sccache glue drops the toolchain from its cache).
    pub fn is_job_error(&self) -> bool {
        match self {
            LinuxError::Exec { source, .. } => source.is_job_error(),
            LinuxError::Unpack { source, .. } => source.is_archive_fault(),
            _ => false,
        }
    }

    /// The set-up failure of a sandboxed child, if that is what this is.
    pub fn exec_error(&self) -> Option<&ExecError> {
        match self {
            LinuxError::Exec { source, .. } => Some(source),
            _ => None,
        }
    }
}
