//! Linux backend: overlayfs + namespaces.
//!
//! Layout under [`LinuxConfig::state_dir`] (only this instance's; the instance lock makes
//! it exclusive, so anything found there at start-up is a crashed instance's leftover):
//!
//! ```text
//! lock                  flock(2)ed by the live instance for its whole life
//! images/<id>/root/     an unpacked toolchain: a read-only overlay lower layer
//! images/<id>/.jailbuilder-image  its completeness marker (crate::image_marker), outside
//!                       the layer; kept across restarts, adopted at start when valid
//! staging/<id>/         a toolchain being unpacked (renamed to images/<id> when complete)
//! skel/                 shared lower layer: /dev nodes (null zero full random urandom tty;
//!                       /dev is opaque, nothing of the layers below shows there),
//!                       empty /proc, /tmp (1777): per-container reset needs no mknod
//! containers/c<n>/tmp/  per-container tmpfs holding upper/ and work/
//! containers/c<n>/root/ the overlay mount: lowerdir=skel:image[:base], nosuid
//! containers/c<n>/ns/{net,uts,mnt}  bind mounts pinning the container's namespaces;
//!                       mnt holds the seed's empty tmpfs and a clone of root/'s mount
//!                       at /r (reset swaps the clone), with the image's unchangeable
//!                       top-level directories bound read-only over it (`binds`);
//!                       exec chroots into /r
//! ```
//!
//! An image is published complete: unpacked in staging/, flushed (syncfs(2)), marked (the
//! marker fsync'd and renamed into place), then renamed into images/. A restarted instance
//! adopts every images/<id> whose marker of this format names <id>, and removes anything
//! else there (a pre-marker layout, a foreign or other-version one).
//!
//! The skeleton is the *top* lower layer (not the bottom): the toolchain archive is
//! untrusted, and with skel on top it cannot replace /dev/null with a file or turn /proc
//! into a symlink that the sandbox's proc mount would follow.
//!
//! `exec` clones one child straight into new pid and ipc namespaces
//! (`clone(CLONE_NEWPID | CLONE_NEWIPC)`: no SysV object or POSIX queue outlives the
//! command, and a reset has no ipc namespace to replace). It
//! joins the container's pinned net/uts namespaces and its mount namespace (a copy of
//! a one-mount seed with the root attached at /r, so neither exec nor reset costs grow with
//! the host's mount table) and chroots into /r, unshares a cgroup namespace, leaves the
//! server's session (no controlling terminal), mounts /proc (pid directories only) in the
//! container's mount namespace, drops privileges, installs the seccomp filter and execs the
//! compiler as pid 1 (see the `child` and `seccomp` modules). The next reset detaches that
//! /proc off the compile's path (the `proc_detach` module's thread). When it exits the
//! kernel kills every process left in its pid namespace before the server's wait returns,
//! so nothing outlives a compile.

mod binds;
mod cgroup;
mod child;
mod error;
mod folios;
mod page_cache;
mod probe;
mod proc_detach;
mod seccomp;
mod spawn;
mod sys;
mod upper;

pub use upper::NotReusable;

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::backend::{
    Backend, BuildUser, CleanupReport, ExecOutcome, ExistingImage, ExitStatus, Limits, ToolchainId,
};
use crate::exec::{supervise_cancellable, CancelToken, PreparedCommand, SpawnedChild};
use crate::image_marker;
use crate::untrusted::{unpack_tar_gz, write_ld_cache, LdCache, RootDir, UnpackLimits};

pub use cgroup::LimitMechanism;
pub use error::LinuxError;
pub use folios::{compact_memory, FolioCount, TARGET as LARGE_FOLIO_TARGET};
pub use page_cache::{
    large_folios_of, refill as refill_page_cache, refill_file as refill_page_cache_file, Refilled,
};
pub use probe::{probe, ProbeItem};
pub use seccomp::SeccompError;

/// Where state lives unless configured otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/jailbuilder";
/// Hostname inside every container (its own uts namespace).
pub const SANDBOX_HOSTNAME: &str = "jailbuilder";

/// How long to wait for a killed sandbox's processes to disappear.
const KILL_PATIENCE: Duration = Duration::from_secs(2);

/// The namespaces pinned per container, by their /proc/<pid>/ns/ names.
const NS_KINDS: [&str; 3] = ["net", "uts", "mnt"];
/// The skeleton layer's directories (besides its root) and their modes.
const SKEL_DIRS: [(&str, u32); 3] = [("dev", 0o755), ("proc", 0o555), ("tmp", 0o1777)];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinuxConfig {
    /// Root of everything this backend creates (default `/var/lib/jailbuilder`). Must be
    /// root-owned and not group/world-writable; created 0700 if missing.
    pub state_dir: PathBuf,
    /// An optional host root directory (e.g. a minimal distribution tree) used as the lowest
    /// layer under every toolchain image.
    pub base_dir: Option<PathBuf>,
    /// Size of each container's tmpfs (its writable upper layer), bytes.
    pub tmpfs_size_bytes: u64,
    /// Bounds on an unpacked toolchain archive.
    pub image_limits: UnpackLimits,
    /// Use a cgroup v2 per container for memory and process limits where the unified
    /// hierarchy offers the memory and pids controllers (else rlimits): see
    /// [`LimitMechanism`].
    pub cgroup_v2: bool,
    /// Reset a container by emptying its overlay's upper layer in place, keeping the
    /// overlay and its warm dentry cache, when the build changed nothing of the lower
    /// layers (the `upper` module's argument); else, and always when false, by mounting
    /// a fresh tmpfs and overlay.
    pub reset_in_place: bool,
    /// Give each new image without one an `/etc/ld.so.cache` listing the libraries of its
    /// system directories that every glibc loader would resolve alike
    /// ([`crate::untrusted::write_ld_cache`]): fewer lookups per compiler process.
    pub ld_cache: bool,
    /// Bind each image's top-level directories that the overlay would show unchanged and
    /// that the build user can change nothing in read-only over the container root, in
    /// the container's mount namespace, so that the compiler's lookups there bypass
    /// overlayfs (see the `binds` module); false sends every path through the overlay.
    pub bind_image_dirs: bool,
    /// When a new or adopted image's executables, read back into the page cache, got fewer
    /// than 60 % of their pages in large folios (64 KiB or more), compact memory
    /// (`vm.compact_memory`, machine-wide, once per such image) and read them again (the
    /// `folios` module): a compiler runs measurably faster from large folios.
    pub compact_memory: bool,
}

impl Default for LinuxConfig {
    fn default() -> Self {
        LinuxConfig {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            base_dir: None,
            tmpfs_size_bytes: 2 << 30,
            image_limits: UnpackLimits::default(),
            cgroup_v2: true,
            reset_in_place: true,
            ld_cache: true,
            bind_image_dirs: true,
            compact_memory: true,
        }
    }
}

/// How the backend's resets went (see [`LinuxConfig::reset_in_place`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ResetCounts {
    /// Upper layer emptied, overlay kept.
    pub in_place: u64,
    /// Fresh tmpfs and overlay.
    pub fresh: u64,
}

/// The Linux backend. One instance per state directory (enforced by a lock).
pub struct LinuxBackend {
    state: PathBuf,
    base: Option<PathBuf>,
    tmpfs_size: u64,
    image_limits: UnpackLimits,
    /// Holds the instance lock (flock) for the backend's life. Dropping it unlocks
    /// (LOCK_UN) rather than only closing: a flock belongs to the open file description,
    /// which every child cloned meanwhile shares until it closes its copy (flock(2)), so a
    /// close alone could leave the lock held past the backend by a child in mid-spawn.
    _lock: Flock<File>,
    /// The host's /dev/null: stdin of every sandboxed command.
    dev_null: OwnedFd,
    next_container: AtomicU64,
    skel_lock: Mutex<()>,
    limit_mechanism: LimitMechanism,
    /// Compiled once: every exec's child installs it (see the `seccomp` module).
    seccomp: seccomp::Filters,
    /// The seed of every container's mount namespace (see `sys::seed_mount_namespace`).
    seed_mnt: OwnedFd,
    /// Detaches the `/proc` each command leaves in its container's mount namespace.
    proc_detacher: proc_detach::ProcDetacher,
    reset_in_place: bool,
    ld_cache: bool,
    bind_image_dirs: bool,
    compact_memory: bool,
    resets_in_place: AtomicU64,
    resets_fresh: AtomicU64,
    /// The page cache of the images adopted at start, refilled in the background.
    adopted_refill: Mutex<Option<page_cache::Background>>,
}

/// An unpacked toolchain image. Holds no kernel resource: an image dropped without
/// [`Backend::destroy_image`] stays on disk, and the next start adopts it.
#[derive(Debug)]
pub struct LinuxImage {
    id: ToolchainId,
    /// `images/<id>`: the marker and the layer.
    top: PathBuf,
    /// `images/<id>/root`: the overlay lower layer.
    dir: PathBuf,
    /// Its top-level directories bound read-only over each container's root (the `binds`
    /// module); empty with [`LinuxConfig::bind_image_dirs`] off. Found by a walk of the
    /// image when its first container is made: not at start-up for every adopted image,
    /// some of which the engine then removes (`max_images`).
    binds: std::sync::OnceLock<Vec<std::ffi::OsString>>,
}

impl LinuxImage {
    pub fn id(&self) -> &ToolchainId {
        &self.id
    }

    /// The image's lower layer (the unpacked toolchain).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `images/<id>`, holding the layer (`root/`) and the marker.
    pub fn image_dir(&self) -> &Path {
        &self.top
    }
}

/// What the start-up scan of `images/` found.
#[derive(Default)]
struct ImageScan {
    valid: Vec<(ToolchainId, PathBuf, std::time::SystemTime)>,
    /// Entries to remove, and why.
    invalid: Vec<(PathBuf, String)>,
}

/// A container: a tmpfs-backed overlay root plus pinned net/uts/mount namespaces. Dropping it
/// without [`Backend::destroy_container`] tears it down best-effort, errors ignored.
#[derive(Debug)]
pub struct LinuxContainer {
    name: String,
    dir: PathBuf,
    root: PathBuf,
    tmp: PathBuf,
    ns_dir: PathBuf,
    lowers: Vec<PathBuf>,
    tmpfs_size: u64,
    /// Inodes in use on the tmpfs right after the overlay was mounted.
    fresh_inodes: u64,
    net: Option<OwnedFd>,
    uts: Option<OwnedFd>,
    /// The container's mount namespace: the seed's empty tmpfs with a clone of `root`'s
    /// mount at /r (`sys::MntPin`). exec setns's into it and chroots into /r instead of
    /// copying the host's mount table and pivoting each time; reset swaps the clone.
    mnt: Option<OwnedFd>,
    /// (dev, ino) of the network namespace: every sandbox process is in it.
    netns_id: (u64, u64),
    /// Set while processes of this container may be alive (a killed or failed exec).
    dirty: AtomicBool,
    /// The container's cgroup v2 leaf, when that is the limit mechanism.
    cgroup: Option<cgroup::ContainerCgroup>,
    /// The stack `exec`'s child runs on until its execve (it shares the server's memory).
    stack: Mutex<spawn::ChildStack>,
    /// The image directories bound over the root in its mount namespace (`binds`).
    binds: binds::Binds,
    /// Whether they are attached now: an exec whose build wrote under one detaches them,
    /// and the next reset is then a fresh one, which attaches them again.
    bound: AtomicBool,
    /// Set when an exec clones its child, which mounts the command's `/proc` in the mount
    /// namespace (`sys::COMMAND_PROC`); cleared when the next reset (or, without one, the
    /// next exec) has detached it.
    proc_mounted: AtomicBool,
    torn_down: bool,
}

impl LinuxContainer {
    /// Name of the container's directory under `containers/`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The container's root (same as [`Backend::root`]).
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn ns_path(&self, kind: &str) -> PathBuf {
        self.ns_dir.join(kind)
    }

    fn upper(&self) -> PathBuf {
        self.tmp.join("upper")
    }

    fn work(&self) -> PathBuf {
        self.tmp.join("work")
    }

    /// Kills whatever is left in the container, if anything may be.
    /// Detaches the `/proc` the last command mounted, if it may have (see `proc_mounted`).
    fn detach_command_procs(&self, by: &proc_detach::ProcDetacher) -> Result<(), LinuxError> {
        if !self.proc_mounted.load(Ordering::Acquire) {
            return Ok(());
        }
        if let Some(mnt) = &self.mnt {
            by.detach(mnt)?;
        }
        self.proc_mounted.store(false, Ordering::Release);
        Ok(())
    }

    fn sweep(&self) -> Result<(), LinuxError> {
        if !self.dirty.load(Ordering::Acquire) {
            return Ok(());
        }
        let left = sys::kill_netns_processes(self.netns_id, KILL_PATIENCE);
        if left > 0 {
            return Err(LinuxError::Kill {
                root: self.root.clone(),
                count: left,
            });
        }
        self.dirty.store(false, Ordering::Release);
        Ok(())
    }

    /// Mounts the tmpfs, creates upper/ and work/ in it, mounts the overlay.
    fn mount_layers(&mut self) -> Result<(), LinuxError> {
        sys::mount_tmpfs(&self.tmp, self.tmpfs_size).map_err(|source| LinuxError::MountTmpfs {
            path: self.tmp.clone(),
            source,
        })?;
        let (upper, work) = (self.upper(), self.work());
        mkdir(&upper, 0o755)?;
        mkdir(&work, 0o700)?;
        let lowers: Vec<&Path> = self.lowers.iter().map(PathBuf::as_path).collect();
        sys::mount_overlay(&self.root, &lowers, &upper, &work).map_err(|source| {
            LinuxError::MountOverlay {
                root: self.root.clone(),
                source,
            }
        })?;
        // A failed count only disables the in-place reset (it cannot match later).
        self.fresh_inodes = upper::inodes_in_use(&self.tmp).unwrap_or(u64::MAX);
        Ok(())
    }

    /// Empties the upper layer in place (see the `upper` module).
    fn empty_upper(&self) -> Result<(), NotReusable> {
        upper::empty(&upper::Layers {
            overlay: &self.root,
            upper: &self.upper(),
            lowers: &self.lowers,
            tmpfs: &self.tmp,
            fresh_inodes: self.fresh_inodes,
        })
    }

    fn unmount_layers(&self) -> Result<(), LinuxError> {
        sys::umount_if_mounted(&self.root)?;
        sys::umount_if_mounted(&self.tmp)?;
        Ok(())
    }

    fn open_namespaces(&mut self) -> Result<(), LinuxError> {
        self.net = Some(sys::open_ns(&self.ns_path("net"))?);
        self.uts = Some(sys::open_ns(&self.ns_path("uts"))?);
        self.mnt = Some(sys::open_ns(&self.ns_path("mnt"))?);
        if let Some(net) = &self.net {
            self.netns_id = sys::ns_identity(net).map_err(|source| LinuxError::Setns {
                path: self.ns_path("net"),
                source,
            })?;
        }
        Ok(())
    }

    /// Everything `create_container` did, undone; tolerant of a half-built container.
    fn teardown(&mut self) -> Result<(), LinuxError> {
        let swept = self.sweep();
        self.net = None;
        self.uts = None;
        self.mnt = None;
        // The pinned mount namespace holds a reference to the overlay: release it first.
        for kind in NS_KINDS {
            sys::umount_if_mounted(&self.ns_path(kind))?;
        }
        self.unmount_layers()?;
        for kind in NS_KINDS {
            let p = self.ns_path(kind);
            sys::umount_if_mounted(&p)?;
            remove_file_if_exists(&p)?;
        }
        for d in [&self.ns_dir, &self.tmp, &self.root, &self.dir] {
            remove_dir_if_exists(d)?;
        }
        if let Some(cg) = self.cgroup.take() {
            let dir = cg.dir.clone();
            drop(cg);
            cgroup::kill_and_remove(&dir, KILL_PATIENCE)
                .map_err(|source| LinuxError::Cgroup { path: dir, source })?;
        }
        self.torn_down = true;
        swept
    }
}

impl Drop for LinuxContainer {
    fn drop(&mut self) {
        if !self.torn_down {
            if let Err(e) = self.teardown() {
                log::warn!("tearing down dropped container {}: {e}", self.dir.display());
            }
        }
    }
}

fn mkdir(path: &Path, mode: u32) -> Result<(), LinuxError> {
    DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(|source| LinuxError::CreateDir {
            path: path.to_path_buf(),
            source,
        })?;
    // The process umask may have masked bits (1777 for tmp, for instance).
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| {
        LinuxError::CreateDir {
            path: path.to_path_buf(),
            source,
        }
    })
}

fn remove_file_if_exists(path: &Path) -> Result<(), LinuxError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(LinuxError::Remove {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn remove_dir_if_exists(path: &Path) -> Result<(), LinuxError> {
    match fs::remove_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(LinuxError::Remove {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Removes a directory tree we created (never one that may still have mounts beneath it:
/// callers unmount and check first). `remove_dir_all` does not follow symlinks, so the
/// untrusted names inside an image are harmless.
fn remove_tree_if_exists(path: &Path) -> Result<bool, LinuxError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(LinuxError::Remove {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Removes a tree, or a file or symlink (never followed), if it exists.
fn remove_any_if_exists(path: &Path) -> Result<bool, LinuxError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Ok(m) if !m.is_dir() => {
            remove_file_if_exists(path)?;
            Ok(true)
        }
        _ => remove_tree_if_exists(path),
    }
}

/// Fails unless the process can do what the backend needs.
fn check_privileges() -> Result<(), LinuxError> {
    let uid = nix::unistd::geteuid().as_raw();
    if uid != 0 {
        return Err(LinuxError::NotRoot { uid });
    }
    if !probe::overlay_available() {
        return Err(LinuxError::NoOverlay);
    }
    Ok(())
}

impl LinuxBackend {
    /// Checks privileges, creates the state directory and takes the instance lock: a second
    /// instance on the same state directory fails here with [`LinuxError::Locked`].
    pub fn new(config: LinuxConfig) -> Result<Self, LinuxError> {
        check_privileges()?;
        let seccomp = seccomp::Filters::build().map_err(LinuxError::Seccomp)?;
        let state_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LinuxError::StateDir { path, source }
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.state_dir)
            .map_err(state_err(&config.state_dir))?;
        let state = fs::canonicalize(&config.state_dir).map_err(state_err(&config.state_dir))?;
        let md = fs::metadata(&state).map_err(state_err(&state))?;
        if md.uid() != 0 {
            return Err(LinuxError::StateDirUnsafe {
                path: state,
                reason: "not owned by root",
            });
        }
        if md.mode() & 0o022 != 0 {
            return Err(LinuxError::StateDirUnsafe {
                path: state,
                reason: "writable by group or others",
            });
        }
        if !sys::overlay_safe(&state) {
            return Err(LinuxError::UnusablePath { path: state });
        }
        let base = match &config.base_dir {
            None => None,
            Some(b) => {
                let b = fs::canonicalize(b).map_err(state_err(b))?;
                if !sys::overlay_safe(&b) {
                    return Err(LinuxError::UnusablePath { path: b });
                }
                Some(b)
            }
        };

        let lock_path = state.join("lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&lock_path)
            .map_err(|source| LinuxError::Lock {
                path: lock_path.clone(),
                source,
            })?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
            if errno == Errno::EWOULDBLOCK {
                LinuxError::Locked {
                    path: lock_path.clone(),
                }
            } else {
                LinuxError::Lock {
                    path: lock_path.clone(),
                    source: sys::io(errno),
                }
            }
        })?;

        let dev_null = nix::fcntl::open(
            "/dev/null",
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| LinuxError::StateDir {
            path: PathBuf::from("/dev/null"),
            source: sys::io(e),
        })?;

        let limit_mechanism = match cgroup::decide(
            config.cgroup_v2,
            &cgroup::system_mounts(),
            &cgroup::instance_name(&state),
        ) {
            LimitMechanism::CgroupV2 { parent } => match cgroup::prepare_parent(&parent) {
                Ok(()) => LimitMechanism::CgroupV2 { parent },
                Err(e) => {
                    let reason = format!("preparing cgroup {}: {e}", parent.display());
                    log::warn!("{reason}; falling back to rlimits");
                    LimitMechanism::Rlimits { reason }
                }
            },
            rlimits => rlimits,
        };
        // The seed's tmpfs goes on the state directory, in the seed's namespace only.
        let seed_mnt = sys::seed_mount_namespace(&state)?;
        let proc_detacher = proc_detach::ProcDetacher::start(&seed_mnt)?;
        let backend = LinuxBackend {
            limit_mechanism,
            state,
            base,
            tmpfs_size: config.tmpfs_size_bytes,
            image_limits: config.image_limits,
            _lock: lock,
            dev_null,
            next_container: AtomicU64::new(1),
            skel_lock: Mutex::new(()),
            seccomp,
            seed_mnt,
            proc_detacher,
            reset_in_place: config.reset_in_place,
            ld_cache: config.ld_cache,
            bind_image_dirs: config.bind_image_dirs,
            compact_memory: config.compact_memory,
            adopted_refill: Mutex::new(None),
            resets_in_place: AtomicU64::new(0),
            resets_fresh: AtomicU64::new(0),
        };
        for d in [backend.images_dir(), backend.containers_dir()] {
            DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(&d)
                .map_err(state_err(&d))?;
        }
        Ok(backend)
    }

    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// Waits for the background refill of the adopted images' page cache (started by
    /// [`Backend::existing_images`]) and returns what it read; None if none was started.
    pub fn wait_page_cache_refill(&self) -> Option<Refilled> {
        let refill = self.adopted_refill.lock().unwrap().take();
        refill.map(page_cache::Background::wait)
    }

    /// How this backend's resets went so far.
    pub fn reset_counts(&self) -> ResetCounts {
        ResetCounts {
            in_place: self.resets_in_place.load(Ordering::Relaxed),
            fresh: self.resets_fresh.load(Ordering::Relaxed),
        }
    }

    /// How memory and process limits are enforced here (`jailbuilder doctor` shows it).
    pub fn limit_mechanism(&self) -> &LimitMechanism {
        &self.limit_mechanism
    }

    fn images_dir(&self) -> PathBuf {
        self.state.join("images")
    }

    fn staging_dir(&self) -> PathBuf {
        self.state.join("staging")
    }

    fn containers_dir(&self) -> PathBuf {
        self.state.join("containers")
    }

    fn skel_dir(&self) -> PathBuf {
        self.state.join("skel")
    }

    /// The names of `layer`'s (an image's) top-level directories to bind over container
    /// roots (the `binds` module): none when that is off or the walk fails.
    fn image_binds(&self, layer: &Path) -> Vec<std::ffi::OsString> {
        if !self.bind_image_dirs {
            return Vec::new();
        }
        let skel = SKEL_DIRS.map(|(name, _)| name);
        match binds::bindable(layer, &skel, self.base.as_deref()) {
            Ok(names) => names,
            Err(e) => {
                log::warn!("{}: no directories bound: {e}", layer.display());
                Vec::new()
            }
        }
    }

    /// Builds the shared skeleton layer if it is missing: in `skel.new`, then renamed, so a
    /// crash never leaves a half-built `skel`.
    fn ensure_skel(&self) -> Result<PathBuf, LinuxError> {
        let _guard = self.skel_lock.lock().unwrap_or_else(|p| p.into_inner());
        let skel = self.skel_dir();
        if skel.is_dir() {
            // A skeleton of an earlier version lacks the opaque mark: set it now, on a
            // directory no container of this instance uses yet (the first call comes
            // before any); later calls find it set.
            let dev = skel.join("dev");
            sys::set_overlay_opaque(&dev)
                .map_err(|source| LinuxError::Skel { path: dev, source })?;
            return Ok(skel);
        }
        let new = self.state.join("skel.new");
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LinuxError::Skel { path, source }
        };
        remove_tree_if_exists(&new)?;
        for (d, mode) in [("", 0o755)].into_iter().chain(SKEL_DIRS) {
            let p = new.join(d);
            DirBuilder::new().mode(mode).create(&p).map_err(err(&p))?;
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).map_err(err(&p))?;
        }
        let dev = new.join("dev");
        // /dev is exactly the skeleton's: an opaque directory hides the lower layers' /dev
        // (overlayfs: "trusted.overlay.opaque"), so neither a toolchain nor a base_dir tree
        // (a distribution's /dev/console, ttys, disks) adds device nodes or symlinks there.
        // Of terminals only /dev/tty remains, which without a controlling terminal is ENXIO.
        sys::set_overlay_opaque(&dev).map_err(err(&dev))?;
        for (name, major, minor) in [
            ("null", 1, 3),
            ("zero", 1, 5),
            ("full", 1, 7),
            ("random", 1, 8),
            ("urandom", 1, 9),
            ("tty", 5, 0),
        ] {
            let p = dev.join(name);
            nix::sys::stat::mknod(
                &p,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(major, minor),
            )
            .map_err(|e| LinuxError::Skel {
                path: p.clone(),
                source: sys::io(e),
            })?;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o666)).map_err(err(&p))?;
        }
        for (name, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            let p = dev.join(name);
            std::os::unix::fs::symlink(target, &p).map_err(err(&p))?;
        }
        fs::rename(&new, &skel).map_err(err(&skel))?;
        Ok(skel)
    }

    /// Sorts the entries of `images/`: complete images of this format (a valid toolchain
    /// id naming a directory holding `root/` and a marker for that id), and the rest.
    fn scan_images(&self) -> Result<ImageScan, LinuxError> {
        let dir = self.images_dir();
        let mut scan = ImageScan::default();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(scan),
            Err(source) => return Err(LinuxError::StateDir { path: dir, source }),
        };
        for e in entries {
            let e = e.map_err(|source| LinuxError::StateDir {
                path: dir.clone(),
                source,
            })?;
            let path = e.path();
            let name = e.file_name();
            let Some(id) = name.to_str().and_then(|n| ToolchainId::new(n).ok()) else {
                scan.invalid
                    .push((path, "not named after a toolchain id".into()));
                continue;
            };
            let is_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
            if !is_dir {
                scan.invalid.push((path, "not a directory".into()));
                continue;
            }
            let verdict = image_marker::read(&path, id.as_str()).and_then(|mtime| {
                let root_ok = fs::symlink_metadata(path.join("root")).is_ok_and(|m| m.is_dir());
                if root_ok {
                    Ok(mtime)
                } else {
                    Err(image_marker::Rejected::Layout("no root/ directory"))
                }
            });
            match verdict {
                Ok(mtime) => scan.valid.push((id, path, mtime)),
                Err(why) => scan.invalid.push((path, why.to_string())),
            }
        }
        Ok(scan)
    }

    /// Unmounts everything beneath the state directory and removes containers and
    /// staging; with `all` every image and the skeleton too, else only images that are not
    /// complete images of this format (each logged with the reason). The lock file stays:
    /// it is held.
    fn clean(&self, all: bool) -> Result<CleanupReport, LinuxError> {
        let skel = all;
        let mut report = CleanupReport::default();
        for m in sys::unmount_all_beneath(&self.state)? {
            report.push(format!("mount {}", m.display()));
        }
        if let LimitMechanism::CgroupV2 { parent } = &self.limit_mechanism {
            if let Ok(entries) = fs::read_dir(parent) {
                for e in entries.flatten() {
                    let p = e.path();
                    let leaf = e.file_name().to_string_lossy().starts_with('c');
                    if !leaf || !p.is_dir() {
                        continue;
                    }
                    let removed = cgroup::kill_and_remove(&p, KILL_PATIENCE).map_err(|source| {
                        LinuxError::Cgroup {
                            path: p.clone(),
                            source,
                        }
                    })?;
                    if removed {
                        report.push(format!("cgroup {}", p.display()));
                    }
                }
            }
        }
        let containers = self.containers_dir();
        if let Ok(entries) = fs::read_dir(&containers) {
            for e in entries.flatten() {
                let p = e.path();
                if remove_tree_if_exists(&p)? {
                    report.push(format!("container dir {}", p.display()));
                }
            }
        }
        if remove_tree_if_exists(&self.staging_dir())? {
            report.push(format!("staging {}", self.staging_dir().display()));
        }
        if all {
            if let Ok(entries) = fs::read_dir(self.images_dir()) {
                for e in entries.flatten() {
                    let p = e.path();
                    if remove_any_if_exists(&p)? {
                        report.push(format!("image {}", p.display()));
                    }
                }
            }
        } else {
            for (p, why) in self.scan_images()?.invalid {
                log::warn!("removing {}: {why}", p.display());
                if remove_any_if_exists(&p)? {
                    report.push(format!("image {} ({why})", p.display()));
                }
            }
        }
        let new = self.state.join("skel.new");
        if remove_tree_if_exists(&new)? {
            report.push(format!("skeleton {}", new.display()));
        }
        if skel {
            let _guard = self.skel_lock.lock().unwrap_or_else(|p| p.into_inner());
            let s = self.skel_dir();
            if remove_tree_if_exists(&s)? {
                report.push(format!("skeleton {}", s.display()));
            }
        }
        Ok(report)
    }

    /// Unpacks the toolchain into `layer`, flushes it to disk and writes the marker into
    /// `stage` (the marker last: it vouches for content already durable).
    fn fill_image(
        &self,
        id: &ToolchainId,
        toolchain_tar_gz: &mut dyn Read,
        stage: &Path,
        layer: &Path,
    ) -> Result<(), LinuxError> {
        let root = RootDir::open(layer).map_err(|source| LinuxError::OpenImageRoot {
            path: layer.to_path_buf(),
            source,
        })?;
        let stats =
            unpack_tar_gz(toolchain_tar_gz, &root, &self.image_limits).map_err(|source| {
                LinuxError::Unpack {
                    id: id.to_string(),
                    path: layer.to_path_buf(),
                    source,
                }
            })?;
        if self.ld_cache {
            // Only an optimisation: an image without a cache works as the client sent it.
            match write_ld_cache(&root) {
                Ok(LdCache::Written(n)) => {
                    log::debug!("toolchain {id}: /etc/ld.so.cache written, {n} libraries")
                }
                Ok(LdCache::Skipped(why)) => log::debug!("toolchain {id}: no ld.so.cache: {why}"),
                Err(e) => log::warn!("toolchain {id}: no ld.so.cache: {e}"),
            }
        }
        // syncfs(2): one call writes back every dirty inode and page of the filesystem
        // holding the state directory (all of the image's files are there) and, since
        // Linux 5.8, reports writeback errors; cheaper than an fsync per unpacked file.
        let sync_err = |source| LinuxError::SyncImage {
            path: layer.to_path_buf(),
            source,
        };
        let fd = File::open(layer).map_err(sync_err)?;
        // SAFETY: syncfs(2) on a descriptor we own.
        if unsafe { libc::syncfs(fd.as_raw_fd()) } != 0 {
            return Err(sync_err(io::Error::last_os_error()));
        }
        // Written back, so droppable: read the executables and libraries back into large
        // folios (page_cache). Only an optimisation.
        let refilled = if self.compact_memory {
            page_cache::refill_compacting(layer)
        } else {
            page_cache::refill(layer)
        };
        match refilled {
            Ok(r) => log::debug!(
                "toolchain {id}: page cache refilled, {} files, {} bytes, {:.0} % in folios of 64 KiB or more{}",
                r.files,
                r.bytes,
                r.folios.share() * 100.0,
                if r.compacted { " after compacting memory" } else { "" }
            ),
            Err(e) => log::warn!("toolchain {id}: page cache not refilled: {e}"),
        }
        image_marker::write(stage, id, &stats).map_err(|source| LinuxError::MarkImage {
            path: stage.to_path_buf(),
            source,
        })
    }

    fn make_container(&self, c: &mut LinuxContainer) -> Result<(), LinuxError> {
        if let Err(e) = mkdir(&c.dir, 0o700) {
            c.torn_down = true; // not ours (a leftover?): leave it alone
            return Err(e);
        }
        mkdir(&c.tmp, 0o700)?;
        mkdir(&c.root, 0o755)?;
        mkdir(&c.ns_dir, 0o700)?;
        for kind in NS_KINDS {
            let p = c.ns_path(kind);
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&p)
                .map_err(|source| LinuxError::CreateDir { path: p, source })?;
        }
        if let LimitMechanism::CgroupV2 { parent } = &self.limit_mechanism {
            let dir = parent.join(&c.name);
            c.cgroup = Some(
                cgroup::ContainerCgroup::create(dir.clone(), KILL_PATIENCE)
                    .map_err(|source| LinuxError::Cgroup { path: dir, source })?,
            );
        }
        c.mount_layers()?;
        let [net, uts, mnt] = NS_KINDS.map(|k| c.ns_path(k));
        let bound = sys::pin_new_namespaces(
            &sys::NsPins {
                net: Some(&net),
                uts: Some(&uts),
                mnt: Some(sys::MntPin::New {
                    pin: &mnt,
                    root: &c.root,
                    binds: &c.binds,
                }),
            },
            SANDBOX_HOSTNAME,
            &self.seed_mnt,
        )?;
        c.bound.store(bound, Ordering::Release);
        if !bound {
            // None to attach, or the kernel refused them (logged): none to come back either.
            c.binds = binds::Binds::default();
        }
        c.open_namespaces()
    }
}

impl LinuxBackend {
    /// `exec`, stopping early when `cancel` is cancelled (see [`Backend::exec`]).
    fn exec_inner(
        &self,
        container: &LinuxContainer,
        command: &PreparedCommand,
        user: BuildUser,
        limits: &Limits,
        cancel: Option<&CancelToken>,
    ) -> Result<ExecOutcome, LinuxError> {
        let (Some(net), Some(uts), Some(mnt)) = (&container.net, &container.uts, &container.mnt)
        else {
            return Err(LinuxError::Setns {
                path: container.ns_dir.clone(),
                source: io::Error::from_raw_os_error(libc::EBADF),
            });
        };
        // Inputs or directories the engine made under a bound directory are in the upper
        // layer, where the bind would hide them: this container goes without binds until
        // its next (fresh) reset.
        if container.bound.load(Ordering::Acquire) && container.binds.shadowed() {
            log::debug!(
                "{}: the build wrote under a bound image directory: detaching the binds",
                container.name
            );
            sys::detach_binds(mnt, &container.binds)?;
            container.bound.store(false, Ordering::Release);
        }
        // Normally the reset after the last command detached its /proc; a caller that runs
        // two commands without one pays for it here, or this command's would stack on it.
        container.detach_command_procs(&self.proc_detacher)?;
        let pipe = || {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| LinuxError::Pipe { source: sys::io(e) })
        };
        // With a cgroup, memory.max and pids.max bound the whole sandbox and replace
        // RLIMIT_AS (per process) and RLIMIT_NPROC (per uid, host-wide).
        let (rlimit_as, rlimit_nproc, cgroup_procs) = match &container.cgroup {
            Some(cg) => {
                cg.apply(limits.memory_bytes, limits.max_processes)
                    .map_err(|source| LinuxError::Cgroup {
                        path: cg.dir.clone(),
                        source,
                    })?;
                (0, 0, cg.procs.as_raw_fd())
            }
            None => (limits.memory_bytes, limits.max_processes, -1),
        };
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (ep_r, ep_w) = pipe()?;
        let server = sys::pidfd_open(nix::unistd::getpid().as_raw())
            .map_err(|source| LinuxError::PidfdOpen { source })?;
        let plan = child::ChildPlan {
            parent_fd: server.as_raw_fd(),
            stdin: self.dev_null.as_raw_fd(),
            stdout: out_w.as_raw_fd(),
            stderr: err_w.as_raw_fd(),
            error: ep_w.as_raw_fd(),
            ns: [
                (net.as_raw_fd(), libc::CLONE_NEWNET),
                (uts.as_raw_fd(), libc::CLONE_NEWUTS),
                (mnt.as_raw_fd(), libc::CLONE_NEWNS),
            ],
            cwd: command.cwd().as_ptr(),
            executable: command.executable().as_ptr(),
            argv: command.argv_ptr(),
            envp: command.envp_ptr(),
            cgroup_procs,
            uid: user.uid,
            gid: user.gid,
            rlimits: [
                (libc::RLIMIT_AS, rlimit_as),
                (libc::RLIMIT_NPROC, rlimit_nproc),
                (libc::RLIMIT_NOFILE, limits.max_open_files),
                (libc::RLIMIT_FSIZE, limits.max_file_bytes),
            ],
            seccomp: self.seccomp.program(),
        };

        container.proc_mounted.store(true, Ordering::Release);
        let pid = {
            let mut stack = container
                .stack
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            spawn::clone_child(&plan, &mut stack, libc::CLONE_NEWPID | libc::CLONE_NEWIPC)
                .map_err(|source| LinuxError::Fork { source })?
        };
        drop((out_w, err_w, ep_w));

        // Until A is known to have exited normally, sandbox processes may be alive.
        container.dirty.store(true, Ordering::Release);
        let pidfd = match sys::pidfd_open(pid) {
            Ok(fd) => fd,
            Err(source) => {
                // SAFETY: kill + waitpid on our own unreaped child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
                return Err(LinuxError::PidfdOpen { source });
            }
        };
        let killer = pidfd
            .try_clone()
            .map_err(|source| LinuxError::PidfdOpen { source })?;
        let kill_a = || {
            // SAFETY: pidfd_send_signal(2) on a pidfd we own: it cannot hit a reused pid.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    killer.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
        };
        let child = SpawnedChild {
            pid,
            stdout: out_r,
            stderr: err_r,
            error_pipe: ep_r,
            exit_fd: pidfd,
        };
        let mut result = supervise_cancellable(child, limits, cancel, &mut || kill_a());
        match &result {
            // The command exited by itself; as pid 1 its exit waited for its whole pid
            // namespace. Nothing is left.
            Ok(o) if matches!(o.status, ExitStatus::Code(_)) => {
                container.dirty.store(false, Ordering::Release)
            }
            Err(crate::exec::ExecError::Setup { .. }) => {
                container.dirty.store(false, Ordering::Release)
            }
            // Timed out or cancelled (A killed), A killed by someone else, or supervision
            // failed: kill A
            // if it still runs, reap it, and wait for B's pid namespace to die with it.
            _ => {
                kill_a();
                // SAFETY: waitid(2) on our pidfd; ECHILD if supervise already reaped A.
                unsafe {
                    let mut info: libc::siginfo_t = std::mem::zeroed();
                    libc::waitid(
                        libc::P_PIDFD,
                        killer.as_raw_fd() as libc::id_t,
                        &mut info,
                        libc::WEXITED,
                    );
                }
                if let Err(e) = container.sweep() {
                    log::warn!("{e}; reset will retry");
                }
            }
        }
        // Only a failure reads the cgroup's counters (none without a cgroup: rlimits leave
        // no per-sandbox event to attribute a failure to).
        if let Some(cg) = &container.cgroup {
            match &mut result {
                Ok(o) => o.limit_hit = cg.limit_hit(o.status, limits),
                Err(_) => cg.refresh_limit_events(),
            }
        }
        result.map_err(|source| LinuxError::Exec {
            root: container.root.clone(),
            source,
        })
    }
}

impl Backend for LinuxBackend {
    type Image = LinuxImage;
    type Container = LinuxContainer;
    type Error = LinuxError;

    fn kind(&self) -> &'static str {
        "linux-ns-overlay"
    }

    /// See [`LinuxError::is_job_error`]: a missing executable or working directory, a
    /// corrupt or hostile toolchain archive.
    fn is_job_error(&self, error: &LinuxError) -> bool {
        error.is_job_error()
    }

    /// Removes what an earlier instance left: every mount beneath the state directory
    /// (deepest first), container directories and cgroups, half-unpacked images
    /// (staging/), and every entry of images/ that is not a complete image of this format
    /// (see [`image_marker`]). Complete images stay, for [`Backend::existing_images`]. The
    /// skeleton layer is kept (rebuilt if missing). The instance lock is already held
    /// (taken by [`LinuxBackend::new`]).
    fn remove_leftovers(&self) -> Result<CleanupReport, LinuxError> {
        self.clean(false)
    }

    /// The complete images in images/ (after `remove_leftovers`, nothing else is there).
    fn existing_images(&self) -> Result<Vec<ExistingImage<LinuxImage>>, LinuxError> {
        let scan = self.scan_images()?;
        for (p, why) in &scan.invalid {
            log::warn!("not adopting {}: {why}", p.display());
        }
        if !scan.valid.is_empty() {
            // Their pages may be gone (a reboot) or have come in through faults: see the
            // page_cache module. Only an optimisation, off every compile's path.
            let roots = scan
                .valid
                .iter()
                .map(|(_, top, _)| top.join("root"))
                .collect();
            match page_cache::Background::start(roots, self.compact_memory) {
                Ok(b) => *self.adopted_refill.lock().unwrap() = Some(b),
                Err(e) => log::warn!("page cache of adopted images not refilled: {e}"),
            }
        }
        Ok(scan
            .valid
            .into_iter()
            .map(|(id, top, last_used)| ExistingImage {
                image: LinuxImage {
                    id: id.clone(),
                    dir: top.join("root"),
                    binds: std::sync::OnceLock::new(),
                    top,
                },
                id,
                last_used,
            })
            .collect())
    }

    fn create_image(
        &self,
        id: &ToolchainId,
        toolchain_tar_gz: &mut dyn Read,
    ) -> Result<LinuxImage, LinuxError> {
        let dir = self.images_dir().join(id.as_str());
        if fs::symlink_metadata(&dir).is_ok() {
            return Err(LinuxError::ImageExists {
                id: id.to_string(),
                path: dir,
            });
        }
        let staging = self.staging_dir();
        DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&staging)
            .map_err(|source| LinuxError::CreateImage {
                path: staging.clone(),
                source,
            })?;
        let stage = staging.join(id.as_str());
        remove_tree_if_exists(&stage)?;
        let layer = stage.join("root");
        for (d, mode) in [(&stage, 0o700), (&layer, 0o755)] {
            DirBuilder::new()
                .mode(mode)
                .create(d)
                .map_err(|source| LinuxError::CreateImage {
                    path: d.clone(),
                    source,
                })?;
        }
        let made = self.fill_image(id, toolchain_tar_gz, &stage, &layer);
        if let Err(e) = made {
            if let Err(e2) = remove_tree_if_exists(&stage) {
                log::warn!("removing failed image: {e2}");
            }
            return Err(e);
        }
        fs::rename(&stage, &dir).map_err(|source| LinuxError::CreateImage {
            path: dir.clone(),
            source,
        })?;
        // The rename is durable once images/ is (fsync(2) of the directory); a crash before
        // that loses the image, not its completeness.
        if let Err(e) = File::open(self.images_dir()).and_then(|d| d.sync_all()) {
            log::warn!("fsync of {}: {e}", self.images_dir().display());
        }
        Ok(LinuxImage {
            id: id.clone(),
            dir: dir.join("root"),
            binds: std::sync::OnceLock::new(),
            top: dir,
        })
    }

    fn destroy_image(&self, image: LinuxImage) -> Result<(), LinuxError> {
        // The marker goes first: a crash half-way leaves an unmarked directory, removed at
        // the next start, never a marked partial one.
        image_marker::remove(&image.top).map_err(|source| LinuxError::Remove {
            path: image.top.join(image_marker::FILE),
            source,
        })?;
        remove_tree_if_exists(&image.top)?;
        Ok(())
    }

    fn create_container(&self, image: &LinuxImage) -> Result<LinuxContainer, LinuxError> {
        let skel = self.ensure_skel()?;
        let n = self.next_container.fetch_add(1, Ordering::Relaxed);
        let name = format!("c{n}");
        let dir = self.containers_dir().join(&name);
        let root = dir.join("root");
        // The marker's mtime records the image's last use, for the start-up bound.
        image_marker::touch(&image.top);
        let mut lowers = vec![skel, image.dir.clone()];
        lowers.extend(self.base.clone());
        let mut c = LinuxContainer {
            name,
            tmp: dir.join("tmp"),
            ns_dir: dir.join("ns"),
            root,
            dir,
            lowers,
            tmpfs_size: self.tmpfs_size,
            fresh_inodes: 0,
            net: None,
            uts: None,
            mnt: None,
            netns_id: (0, 0),
            dirty: AtomicBool::new(false),
            cgroup: None,
            stack: Mutex::new(
                spawn::ChildStack::new().map_err(|source| LinuxError::ChildStack { source })?,
            ),
            binds: binds::Binds::default(),
            bound: AtomicBool::new(false),
            proc_mounted: AtomicBool::new(false),
            torn_down: false,
        };
        let names = image.binds.get_or_init(|| self.image_binds(&image.dir));
        c.binds = binds::Binds::new(&image.dir, names, &c.upper());
        // On failure, dropping `c` tears down what was built.
        self.make_container(&mut c)?;
        Ok(c)
    }

    fn root<'c>(&self, container: &'c LinuxContainer) -> &'c Path {
        &container.root
    }

    fn exec(
        &self,
        container: &LinuxContainer,
        command: &PreparedCommand,
        user: BuildUser,
        limits: &Limits,
        cancel: Option<&CancelToken>,
    ) -> Result<ExecOutcome, LinuxError> {
        self.exec_inner(container, command, user, limits, cancel)
    }

    fn reset(&self, container: &mut LinuxContainer) -> Result<(), LinuxError> {
        container.sweep()?;
        // The last command's /proc, here rather than in its exit (see the `proc_detach` module).
        container.detach_command_procs(&self.proc_detacher)?;
        // The next build's baseline of the cgroup's limit counters, read here, off the
        // critical path: a build that tripped a limit and still succeeded (a fork it
        // retried) moved them, and its events must not be put down to the next one.
        if let Some(cg) = &container.cgroup {
            cg.refresh_limit_events();
        }
        // Either the upper layer emptied in place (see the `upper` module) or fresh layers
        // (a new tmpfs upper, a new overlay) with the container's mount namespace given a
        // clone of the new overlay in place of the old: no file of the previous build
        // survives. (Its SysV objects and POSIX queues died with its command's own ipc
        // namespace.)
        // Binds come back only with fresh layers: in place, a directory the last build made
        // under a bound name would stay (emptied) in the upper layer.
        let rebind = !container.binds.is_empty()
            && (!container.bound.load(Ordering::Acquire) || container.binds.shadowed());
        let in_place = self.reset_in_place
            && !rebind
            && match container.empty_upper() {
                Ok(()) => true,
                Err(why) => {
                    log::debug!("{}: fresh layers: {why}", container.name);
                    false
                }
            };
        if in_place {
            self.resets_in_place.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.resets_fresh.fetch_add(1, Ordering::Relaxed);
        container.unmount_layers()?;
        container.mount_layers()?;
        let Some(ns) = &container.mnt else {
            return Err(LinuxError::Setns {
                path: container.ns_path("mnt"),
                source: io::Error::from_raw_os_error(libc::EBADF),
            });
        };
        let bound = sys::pin_new_namespaces(
            &sys::NsPins {
                net: None,
                uts: None,
                mnt: Some(sys::MntPin::Replace {
                    ns,
                    root: &container.root,
                    binds: &container.binds,
                }),
            },
            SANDBOX_HOSTNAME,
            &self.seed_mnt,
        )?;
        container.bound.store(bound, Ordering::Release);
        if !bound {
            container.binds = binds::Binds::default();
        }
        Ok(())
    }

    fn destroy_container(&self, mut container: LinuxContainer) -> Result<(), LinuxError> {
        container.teardown()
    }

    /// Everything under the state directory except the (held) lock file: mounts,
    /// containers, staging, images, the skeleton layer.
    fn clean_all(&self) -> Result<CleanupReport, LinuxError> {
        self.clean(true)
    }
}
