//! [`FreeBsdBackend`]: images and containers as ZFS clones, isolation as jails, over the
//! [`Kernel`] seam.
//!
//! Names (all derived, so a restarted instance finds what a dead one left):
//! - image `<dataset_root>/i-<toolchain>`, snapshot `@image`, mounted (while being
//!   unpacked only) at `<mount_root>/i-<toolchain>`;
//! - container `<dataset_root>/c-<instance>-<n>`, snapshot `@clean`, mounted at
//!   `<mount_root>/c-<instance>-<n>` with devfs at `.../dev`, jail `<jail_prefix>-<instance>-<n>`.
//!
//! The directory `<mount_root>/<leaf>` is created before its dataset and removed after it,
//! so the mount root's entries are the journal that leftover clean-up reads (libzfs_core
//! has no call to list datasets).
//!
//! Images are kept across restarts. An image is complete once its `@image` snapshot exists
//! and, written after it, the marker `<mount_root>/i-<toolchain>/.jailbuilder-image`
//! ([`crate::image_marker`]) names it. The marker lives in the (unmounted) mount point on
//! the mount root's filesystem, not in the dataset: libzfs_core has no call that reads a
//! property back (libzfs_core.h has lzc_exists, lzc_get_holds, lzc_get_bookmarks, no
//! property getter; `zfs get` goes through libzfs's ZFS_IOC_OBJSET_STATS), and a marker
//! inside the dataset could come from the toolchain archive. `remove_leftovers` destroys
//! every container and every image dataset that is not complete (no snapshot, no marker,
//! a marker of another version or naming another toolchain, or still mounted: a crash
//! mid-unpack); `existing_images` hands the complete ones to the engine. A destroyed image
//! loses its marker first, so a crash half-way leaves an incomplete one.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use nix::fcntl::{Flock, FlockArg};

use crate::backend::{
    Backend, BuildUser, CleanupReport, ExecOutcome, ExistingImage, Limits, ToolchainId,
};
use crate::exec::{CancelToken, ExecError, PreparedCommand};
use crate::image_marker;
use crate::untrusted::{self, BeneathError, RootDir, UnpackError, UnpackLimits};

use super::kernel::{prop, ExecPlan, JailParams, Kernel, KernelError, ZfsProp};

/// Longest dataset or snapshot name ZFS accepts (ZFS_MAX_DATASET_NAME_LEN - 1,
/// include/sys/fs/zfs.h).
const ZFS_MAX_NAME: usize = 255;
/// Longest jail name (MAXHOSTNAMELEN - 1, kern_jail.c checks `len > MAXHOSTNAMELEN`).
const JAIL_MAX_NAME: usize = 255;
const LOCK_FILE: &str = ".jailbuilder.lock";
const IMAGE_SNAP: &str = "image";
const CLEAN_SNAP: &str = "clean";

/// Configuration of the FreeBSD backend.
#[derive(Clone, Debug)]
pub struct FreeBsdConfig {
    /// Parent dataset of every image and container, e.g. `zroot/jailbuilder`. Created
    /// (canmount=off, mountpoint=legacy) if missing.
    pub dataset_root: String,
    /// Directory under which containers (and images being built) are mounted, e.g.
    /// `/var/jailbuilder`; holds the instance lock. Created mode 0700 if missing.
    pub mount_root: PathBuf,
    /// Snapshot images are cloned from, e.g. `zroot/jailbuilder/base@14.2` (a FreeBSD
    /// base the toolchain is unpacked over); `None`: images start empty.
    pub base_snapshot: Option<String>,
    /// devfs ruleset for the jails' /dev (4 = devfsrules_jail in /etc/defaults/devfs.rules).
    pub devfs_ruleset: u16,
    /// Jail securelevel (at least the host's; kern_jail.c returns EPERM below it).
    pub securelevel: i32,
    /// First part of jail names: `<jail_prefix>-<instance>-<n>`. No '.', not numeric.
    pub jail_prefix: String,
    /// Bounds on a toolchain archive.
    pub unpack_limits: UnpackLimits,
    /// How long reset and destroy wait for a removed jail's processes to be gone.
    pub jail_gone_timeout: Duration,
    /// Limits per jail as rctl rules (rctl_add_rule(2)), when the kernel has RACCT enabled
    /// (kern.racct.enable=1); without RACCT the per-process rlimits of `Limits` apply.
    pub jail_limits: JailLimits,
    /// ZFS `quota` of each container clone, bytes; 0 = none. A clone's used space starts
    /// at zero (the toolchain is charged to the image), so this bounds what a compile
    /// writes; a compile beyond it gets EDQUOT, that job only.
    pub container_quota_bytes: u64,
}

/// Per-jail resource limits as rctl(8) rules on the jail's name (subject `jail:<name>`,
/// action `deny`); 0 = no rule for that resource.
///
/// Only resources the kernel can deny are used (kern_racct.c `racct_types`, flag
/// RACCT_DENIABLE): `memoryuse` (RACCT_RSS) is not deniable; rctl_rule_add (kern_rctl.c)
/// still accepts a `deny` rule for it, but enforces it only by having the VM daemon page
/// the process out (sys/vm/vm_swapout.c vm_daemon), which bounds nothing a compile
/// allocates. `vmemoryuse` (RACCT_VMEM) is deniable: an mmap/brk beyond it fails.
///
/// No `openfiles` rule: RACCT_NOFILE is the size of each process's descriptor table
/// (kern_descrip.c fdalloc / kern_dup: `racct_set_unlocked(p, RACCT_NOFILE, ...)`),
/// inherited at fork and summed over the jail, so a jail rule equal to the per-process
/// limit makes fork fail (EAGAIN) as soon as one process has grown its table to the limit.
/// RLIMIT_NOFILE bounds each process; `maxproc` bounds their number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JailLimits {
    /// `vmemoryuse` (virtual memory of the whole jail), bytes. RLIMIT_AS still bounds
    /// each process.
    pub memory_bytes: u64,
    /// `maxproc` (processes in the jail); replaces RLIMIT_NPROC, which counts the build
    /// uid's processes host-wide.
    pub max_processes: u64,
}

impl JailLimits {
    /// The rules for jail `name`, in rctl(8) syntax.
    pub fn rules(&self, name: &str) -> Vec<String> {
        [
            ("vmemoryuse", self.memory_bytes),
            ("maxproc", self.max_processes),
        ]
        .into_iter()
        .filter(|(_, v)| *v > 0)
        .map(|(r, v)| format!("jail:{name}:{r}:deny={v}"))
        .collect()
    }
}

impl Default for FreeBsdConfig {
    fn default() -> Self {
        FreeBsdConfig {
            dataset_root: "zroot/jailbuilder".into(),
            mount_root: PathBuf::from("/var/jailbuilder"),
            base_snapshot: None,
            devfs_ruleset: 4,
            securelevel: 3,
            jail_prefix: "jb".into(),
            unpack_limits: UnpackLimits {
                max_bytes: 4 << 30,
                max_entries: 1_000_000,
            },
            jail_gone_timeout: Duration::from_secs(10),
            jail_limits: JailLimits::default(),
            container_quota_bytes: 0,
        }
    }
}

/// The step a backend operation failed at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Opening /dev/zfs (libzfs_core_init).
    Init,
    /// Resolving the mount root's symlinks.
    MountRoot,
    /// Reading the devfs ruleset jails get.
    DevfsRuleset,
    Lock,
    DatasetRoot,
    MountDir,
    ImageCreate,
    ImageClone,
    ImageMount,
    ImageUnpack,
    ImageDevDir,
    ImageUnmount,
    ImageSnapshot,
    /// Writing the image's completeness marker.
    ImageMark,
    /// Reading the mount root for kept images.
    ListImages,
    ContainerClone,
    ContainerSnapshot,
    ContainerMount,
    ContainerDevfs,
    ContainerJail,
    /// Adding the jail's rctl rules.
    Rctl,
    Exec,
    JailRemove,
    JailWait,
    /// Removing the jail's rctl rules.
    RctlRemove,
    UnmountDevfs,
    Rollback,
    Unmount,
    DestroySnapshot,
    Destroy,
    ListJails,
    RemoveDir,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FreeBsdError {
    #[error("{step} {what}: {source}")]
    Kernel {
        step: Step,
        what: String,
        #[source]
        source: KernelError,
    },
    #[error("{step} {}: {source}", .path.display())]
    Io {
        step: Step,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unpacking toolchain {id}: {source}")]
    Unpack {
        id: String,
        #[source]
        source: UnpackError,
    },
    #[error("{step} {what}: {source}")]
    Beneath {
        step: Step,
        what: String,
        #[source]
        source: BeneathError,
    },
    /// The client's command or the sandbox failed before execve; see
    /// [`ExecError::is_job_error`].
    #[error("exec in {jail}: {source}")]
    Exec {
        jail: String,
        #[source]
        source: ExecError,
    },
    #[error("mount root {} is in use by another jailbuilder instance (lock {})", .mount_root.display(), .lock.display())]
    InstanceLocked { mount_root: PathBuf, lock: PathBuf },
    #[error("mount root {} belongs to dataset root {other:?}, not {ours:?}", .mount_root.display())]
    ForeignMountRoot {
        mount_root: PathBuf,
        other: String,
        ours: String,
    },
    #[error("the instance lock is not held: call remove_leftovers first")]
    NotLocked,
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The configured devfs ruleset would hide nothing (see `check_devfs_ruleset`).
    #[error(
        "devfs ruleset {ruleset} {}: a jail's /dev would show every device of the host; \
         load it (devfs.rules(5), `service devfs restart`) or set devfs_ruleset",
        if *.loaded { "has no rules" } else { "is not loaded" }
    )]
    DevfsRulesetEmpty { ruleset: u16, loaded: bool },
    #[error("name too long: {0}")]
    NameTooLong(String),
    #[error("image {0} is being destroyed")]
    ImageRetired(String),
    #[error("container {0} was destroyed after a failed reset")]
    ContainerDead(String),
}

impl FreeBsdError {
    /// The step this error names.
    pub fn step(&self) -> Option<Step> {
        match self {
            FreeBsdError::Kernel { step, .. }
            | FreeBsdError::Io { step, .. }
            | FreeBsdError::Beneath { step, .. } => Some(*step),
            FreeBsdError::Unpack { .. } => Some(Step::ImageUnpack),
            FreeBsdError::Exec { .. } => Some(Step::Exec),
            _ => None,
        }
    }

    /// The errno of the failed kernel call, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            FreeBsdError::Kernel { source, .. } => source.errno(),
            FreeBsdError::Exec {
                source: ExecError::Setup { errno, .. },
                ..
            } => Some(*errno),
            _ => None,
        }
    }
}

type Result<T, E = FreeBsdError> = std::result::Result<T, E>;

fn kerr(step: Step, what: impl Into<String>) -> impl FnOnce(KernelError) -> FreeBsdError {
    let what = what.into();
    move |source| FreeBsdError::Kernel { step, what, source }
}

fn ioerr(step: Step, path: &Path) -> impl FnOnce(std::io::Error) -> FreeBsdError + '_ {
    move |source| FreeBsdError::Io {
        step,
        path: path.to_path_buf(),
        source,
    }
}

struct ImageState {
    containers: usize,
    retired: bool,
}

struct ImageInner {
    id: ToolchainId,
    dataset: String,
    snapshot: String,
    dir: PathBuf,
    state: Mutex<ImageState>,
}

impl ImageInner {
    fn state(&self) -> MutexGuard<'_, ImageState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A toolchain image: a dataset with an `@image` snapshot that containers are cloned from.
pub struct FreeBsdImage {
    inner: Arc<ImageInner>,
}

impl FreeBsdImage {
    pub fn dataset(&self) -> &str {
        &self.inner.dataset
    }
    pub fn snapshot(&self) -> &str {
        &self.inner.snapshot
    }
    pub fn id(&self) -> &ToolchainId {
        &self.inner.id
    }
}

/// A container: a clone of an image, mounted, with devfs and a jail.
pub struct FreeBsdContainer {
    image: Arc<ImageInner>,
    dataset: String,
    clean: String,
    root: PathBuf,
    dev: PathBuf,
    jail_name: String,
    // What is live, so that destroy (also after a failed reset) undoes exactly that.
    jid: Option<i32>,
    devfs: bool,
    mounted: bool,
    snapshot: bool,
    dataset_exists: bool,
    /// The clone was made (the image's container count then drops in `container_gone`).
    clone_made: bool,
    /// rctl rules may exist for the jail's name.
    rctl: bool,
    dead: bool,
}

impl FreeBsdContainer {
    pub fn dataset(&self) -> &str {
        &self.dataset
    }
    pub fn jail_name(&self) -> &str {
        &self.jail_name
    }
    /// The current jail id (a reset creates a new jail).
    pub fn jid(&self) -> Option<i32> {
        self.jid
    }
}

/// The FreeBSD backend over kernel `K` (`RealKernel` on FreeBSD, [`super::FakeKernel`]
/// in tests).
pub struct FreeBsdBackend<K: Kernel> {
    kernel: K,
    config: FreeBsdConfig,
    instance: String,
    next: AtomicU64,
    lock: Mutex<Option<Flock<File>>>,
    /// kern.racct.enable, read once at start: rctl rules per jail, else rlimits only.
    racct: bool,
}

/// `path` with the symlinks of its longest existing prefix resolved (realpath(3)); the
/// part that does not exist yet is appended as given.
fn resolve_existing_prefix(path: &Path) -> std::io::Result<PathBuf> {
    let mut existing = path;
    let mut rest = Vec::new();
    loop {
        match fs::canonicalize(existing) {
            Ok(resolved) => {
                return Ok(rest.iter().rev().fold(resolved, |p, c| p.join(c)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
                    return Err(e);
                };
                rest.push(name.to_os_string());
                existing = parent;
            }
            Err(e) => return Err(e),
        }
    }
}

fn valid_component(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

impl<K: Kernel> FreeBsdBackend<K> {
    pub fn new(kernel: K, config: FreeBsdConfig) -> Result<Self> {
        let root_ok =
            !config.dataset_root.is_empty() && config.dataset_root.split('/').all(valid_component);
        if !root_ok {
            return Err(FreeBsdError::Config(format!(
                "dataset_root {:?} is not a dataset name",
                config.dataset_root
            )));
        }
        if !config.mount_root.is_absolute() {
            return Err(FreeBsdError::Config(format!(
                "mount_root {} is not absolute",
                config.mount_root.display()
            )));
        }
        // kern_jail.c: a '.' makes a hierarchical name; a numeric name is taken as a jid.
        let prefix_ok = valid_component(&config.jail_prefix)
            && !config.jail_prefix.contains('.')
            && !config.jail_prefix.bytes().all(|b| b.is_ascii_digit());
        if !prefix_ok {
            return Err(FreeBsdError::Config(format!(
                "jail_prefix {:?} must be [A-Za-z0-9_-], not numeric",
                config.jail_prefix
            )));
        }
        if let Some(base) = &config.base_snapshot {
            if !base.contains('@') {
                return Err(FreeBsdError::Config(format!(
                    "base_snapshot {base:?} is not a snapshot name"
                )));
            }
        }
        // The kernel stores a jail's path resolved (kern_jail.c kern_jail_set: namei with
        // FOLLOW, then vn_path_to_global_path), and the leftover sweep recognises our jails
        // by that path: compare with the resolved mount root, or a mount root under a
        // symlink (/home -> /usr/home) never matches.
        let mut config = config;
        config.mount_root = resolve_existing_prefix(&config.mount_root)
            .map_err(ioerr(Step::MountRoot, &config.mount_root))?;
        Self::check_devfs_ruleset(&kernel, config.devfs_ruleset)?;
        let instance = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let racct = kernel.racct_enabled();
        Ok(FreeBsdBackend {
            racct,
            kernel,
            config,
            instance,
            next: AtomicU64::new(1),
            lock: Mutex::new(None),
        })
    }

    /// The jails' devfs ruleset must be loaded and hide something: devfs_ruleset_use
    /// (sys/fs/devfs/devfs_rule.c) creates a ruleset that does not exist, empty, and
    /// ruleset 0 is the empty ruleset; either way the jail's /dev shows every device of
    /// the host.
    fn check_devfs_ruleset(kernel: &K, ruleset: u16) -> Result<()> {
        if ruleset == 0 {
            return Err(FreeBsdError::Config(
                "devfs_ruleset 0 is the empty ruleset: a jail would see every device of \
                 the host; use 4 (devfsrules_jail) or a ruleset of your own"
                    .into(),
            ));
        }
        match kernel.devfs_ruleset_rules(ruleset) {
            Ok(Some(n)) if n > 0 => Ok(()),
            Ok(found) => Err(FreeBsdError::DevfsRulesetEmpty {
                ruleset,
                loaded: found.is_some(),
            }),
            Err(source) => Err(FreeBsdError::Kernel {
                step: Step::DevfsRuleset,
                what: format!("ruleset {ruleset}"),
                source,
            }),
        }
    }

    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// True when jails get rctl rules (RACCT enabled); false: rlimits per process only.
    pub fn uses_rctl(&self) -> bool {
        self.racct
    }

    pub fn config(&self) -> &FreeBsdConfig {
        &self.config
    }

    /// This instance's id, part of container and jail names.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn lock_guard(&self) -> MutexGuard<'_, Option<Flock<File>>> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the instance lock: `flock(LOCK_EX | LOCK_NB)` on `<mount_root>/.jailbuilder.lock`
    /// (flock(2): the lock belongs to the open file and ends with it, also on a crash).
    /// The file records the dataset root, so one mount root never serves two roots.
    fn acquire_lock(&self) -> Result<()> {
        let mut held = self.lock_guard();
        if held.is_some() {
            return Ok(());
        }
        let root = &self.config.mount_root;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(ioerr(Step::Lock, root))?;
        let path = root.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&path)
            .map_err(ioerr(Step::Lock, &path))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(FreeBsdError::InstanceLocked {
                    mount_root: root.clone(),
                    lock: path,
                })
            }
            Err((_, e)) => return Err(ioerr(Step::Lock, &path)(e.into())),
        };
        let mut content = String::new();
        lock.read_to_string(&mut content)
            .map_err(ioerr(Step::Lock, &path))?;
        if let Some(other) = content
            .lines()
            .find_map(|l| l.strip_prefix("dataset_root="))
        {
            if other != self.config.dataset_root {
                return Err(FreeBsdError::ForeignMountRoot {
                    mount_root: root.clone(),
                    other: other.to_string(),
                    ours: self.config.dataset_root.clone(),
                });
            }
        }
        lock.set_len(0).map_err(ioerr(Step::Lock, &path))?;
        let record = format!(
            "dataset_root={}\ninstance={}\npid={}\n",
            self.config.dataset_root,
            self.instance,
            std::process::id()
        );
        lock.write_all_at(record.as_bytes(), 0)
            .map_err(ioerr(Step::Lock, &path))?;
        *held = Some(lock);
        Ok(())
    }

    fn require_lock(&self) -> Result<()> {
        if self.lock_guard().is_some() {
            Ok(())
        } else {
            Err(FreeBsdError::NotLocked)
        }
    }

    fn ensure_dataset_root(&self) -> Result<()> {
        let root = &self.config.dataset_root;
        if self.kernel.zfs_exists(root) {
            return Ok(());
        }
        let props = [
            ZfsProp::U64("canmount", prop::OFF),
            ZfsProp::Str("mountpoint", "legacy".into()),
        ];
        match self.kernel.zfs_create(root, &props) {
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            r => r.map_err(kerr(Step::DatasetRoot, root.clone())),
        }
    }

    fn check_name(name: &str) -> Result<()> {
        if name.len() > ZFS_MAX_NAME {
            return Err(FreeBsdError::NameTooLong(name.to_string()));
        }
        Ok(())
    }

    fn make_mount_dir(&self, dir: &Path) -> Result<()> {
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(ioerr(Step::MountDir, dir)(e)),
        }
    }

    /// Image properties: never mounted by `zfs mount -a` (mountpoint=legacy,
    /// canmount=noauto), no setuid (toolchains need none; zfsprops(7)).
    fn image_props() -> Vec<ZfsProp> {
        vec![
            ZfsProp::Str("mountpoint", "legacy".into()),
            ZfsProp::U64("canmount", prop::CANMOUNT_NOAUTO),
            ZfsProp::U64("setuid", prop::OFF),
            ZfsProp::U64("atime", prop::OFF),
        ]
    }

    /// Throwaway clones: as images, plus sync=disabled (as poudriere does). exec stays on
    /// (inherited): the compiler runs from here.
    fn container_props(&self) -> Vec<ZfsProp> {
        let mut p = Self::image_props();
        p.push(ZfsProp::U64("sync", prop::SYNC_DISABLED));
        if self.config.container_quota_bytes > 0 {
            p.push(ZfsProp::U64("quota", self.config.container_quota_bytes));
        }
        p
    }

    /// Adds the jail's rctl rules (by name: they outlive a reset's new jail, and apply to
    /// it from its creation on). No-op without RACCT or without limits.
    fn add_rctl(&self, c: &mut FreeBsdContainer) -> Result<()> {
        if !self.racct {
            return Ok(());
        }
        for rule in self.config.jail_limits.rules(&c.jail_name) {
            c.rctl = true;
            self.kernel
                .rctl_add_rule(&rule)
                .map_err(kerr(Step::Rctl, rule.clone()))?;
        }
        Ok(())
    }

    /// Removes every rctl rule of jail `name`; none is fine (ESRCH).
    fn remove_rctl(&self, name: &str) -> Result<bool> {
        let filter = format!("jail:{name}");
        match self.kernel.rctl_remove_rule(&filter) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(libc::ESRCH) => Ok(false),
            Err(e) => Err(kerr(Step::RctlRemove, filter)(e)),
        }
    }

    fn create_image_inner(
        &self,
        inner: &ImageInner,
        tar_gz: &mut dyn Read,
        undo: &mut ImageUndo,
    ) -> Result<()> {
        let k = &self.kernel;
        self.make_mount_dir(&inner.dir)?;
        undo.dir = true;
        let props = Self::image_props();
        match &self.config.base_snapshot {
            Some(base) => k
                .zfs_clone(&inner.dataset, base, &props)
                .map_err(kerr(Step::ImageClone, inner.dataset.clone()))?,
            None => k
                .zfs_create(&inner.dataset, &props)
                .map_err(kerr(Step::ImageCreate, inner.dataset.clone()))?,
        }
        undo.dataset = true;
        k.mount_zfs(&inner.dataset, &inner.dir)
            .map_err(kerr(Step::ImageMount, inner.dataset.clone()))?;
        undo.mounted = true;
        let stats;
        {
            let root = RootDir::open(&inner.dir).map_err(|source| FreeBsdError::Beneath {
                step: Step::ImageUnpack,
                what: inner.dataset.clone(),
                source,
            })?;
            stats = untrusted::unpack_tar_gz(tar_gz, &root, &self.config.unpack_limits).map_err(
                |source| FreeBsdError::Unpack {
                    id: inner.id.to_string(),
                    source,
                },
            )?;
            // The devfs mount point, a real directory: make_dirs_beneath refuses a symlink
            // planted by the archive (nmount(2) would follow it out of the root).
            untrusted::make_dirs_beneath(&root, "dev", None).map_err(|source| {
                FreeBsdError::Beneath {
                    step: Step::ImageDevDir,
                    what: inner.dataset.clone(),
                    source,
                }
            })?;
        }
        k.unmount(&inner.dir, false)
            .map_err(kerr(Step::ImageUnmount, inner.dataset.clone()))?;
        undo.mounted = false;
        k.zfs_snapshot(std::slice::from_ref(&inner.snapshot))
            .map_err(kerr(Step::ImageSnapshot, inner.snapshot.clone()))?;
        undo.snapshot = true;
        // Last: lzc_snapshot returned, so the snapshot is on disk (it waits for its txg to
        // sync, dsl_sync_task); the marker vouches for it. In the unmounted mount point.
        image_marker::write(&inner.dir, &inner.id, &stats)
            .map_err(ioerr(Step::ImageMark, &inner.dir))?;
        Ok(())
    }

    /// Best-effort removal after a failed step; the first error is the one reported.
    fn undo_image(&self, inner: &ImageInner, undo: &ImageUndo) {
        let k = &self.kernel;
        if undo.mounted {
            warn_err(k.unmount(&inner.dir, true));
        }
        if let Err(e) = image_marker::remove(&inner.dir) {
            log::warn!("clean-up after a failure: {e}");
        }
        if undo.snapshot {
            warn_err(k.zfs_destroy_snaps(std::slice::from_ref(&inner.snapshot), false));
        }
        if undo.dataset {
            warn_err(k.zfs_destroy(&inner.dataset));
        }
        if undo.dir {
            let _ = fs::remove_dir(&inner.dir);
        }
    }

    fn create_container_inner(&self, c: &mut FreeBsdContainer) -> Result<()> {
        let k = &self.kernel;
        self.make_mount_dir(&c.root)?;
        k.zfs_clone(&c.dataset, &c.image.snapshot, &self.container_props())
            .map_err(kerr(Step::ContainerClone, c.dataset.clone()))?;
        c.dataset_exists = true;
        c.clone_made = true;
        k.zfs_snapshot(std::slice::from_ref(&c.clean))
            .map_err(kerr(Step::ContainerSnapshot, c.clean.clone()))?;
        c.snapshot = true;
        k.mount_zfs(&c.dataset, &c.root)
            .map_err(kerr(Step::ContainerMount, c.dataset.clone()))?;
        c.mounted = true;
        self.add_rctl(c)?;
        self.start_jail(c)
    }

    /// devfs at `<root>/dev`, then the jail. `dev` is the image's real directory here: the
    /// dataset was just cloned or rolled back, and no process of the jail runs.
    fn start_jail(&self, c: &mut FreeBsdContainer) -> Result<()> {
        let k = &self.kernel;
        k.mount_devfs(&c.dev, self.config.devfs_ruleset)
            .map_err(kerr(Step::ContainerDevfs, c.dev.display().to_string()))?;
        c.devfs = true;
        let params = JailParams {
            name: c.jail_name.clone(),
            path: c.root.clone(),
            hostname: c.jail_name.clone(),
            securelevel: self.config.securelevel,
            devfs_ruleset: i32::from(self.config.devfs_ruleset),
        };
        let jid = k
            .jail_create(&params)
            .map_err(kerr(Step::ContainerJail, c.jail_name.clone()))?;
        c.jid = Some(jid);
        Ok(())
    }

    /// jail_remove, then wait until its processes are gone: jail_remove(2) only sends
    /// SIGKILL (kern_jail.c prison_deref PD_KILL), and a dying process could still write
    /// after a rollback or hold the mount busy.
    fn stop_jail(&self, c: &mut FreeBsdContainer) -> Result<()> {
        if let Some(jid) = c.jid {
            match self.kernel.jail_remove(jid) {
                // EINVAL: no such jail any more (already removed, e.g. after a timeout).
                Err(e) if e.errno() == Some(libc::EINVAL) => {}
                r => r.map_err(kerr(Step::JailRemove, c.jail_name.clone()))?,
            }
            self.kernel
                .jail_wait_gone(jid, self.config.jail_gone_timeout)
                .map_err(kerr(Step::JailWait, c.jail_name.clone()))?;
            c.jid = None;
        }
        Ok(())
    }

    fn reset_inner(&self, c: &mut FreeBsdContainer) -> Result<()> {
        let k = &self.kernel;
        self.stop_jail(c)?;
        if c.devfs {
            k.unmount(&c.dev, false)
                .map_err(kerr(Step::UnmountDevfs, c.dev.display().to_string()))?;
            c.devfs = false;
        }
        // lzc_rollback_to on the mounted filesystem: the kernel suspends and resumes it.
        k.zfs_rollback_to(&c.dataset, &c.clean)
            .map_err(kerr(Step::Rollback, c.dataset.clone()))?;
        self.start_jail(c)
    }

    /// Tears down whatever of `c` is live, children before parents. Stops at the first
    /// failure (later steps would fail with EBUSY); what is left is found at next start-up.
    fn teardown(&self, c: &mut FreeBsdContainer) -> Result<()> {
        let k = &self.kernel;
        c.dead = true;
        self.stop_jail(c)?;
        if c.rctl {
            self.remove_rctl(&c.jail_name)?;
            c.rctl = false;
        }
        if c.devfs {
            k.unmount(&c.dev, true)
                .map_err(kerr(Step::UnmountDevfs, c.dev.display().to_string()))?;
            c.devfs = false;
        }
        if c.mounted {
            k.unmount(&c.root, true)
                .map_err(kerr(Step::Unmount, c.root.display().to_string()))?;
            c.mounted = false;
        }
        if c.snapshot {
            k.zfs_destroy_snaps(std::slice::from_ref(&c.clean), false)
                .map_err(kerr(Step::DestroySnapshot, c.clean.clone()))?;
            c.snapshot = false;
        }
        if c.dataset_exists {
            k.zfs_destroy(&c.dataset)
                .map_err(kerr(Step::Destroy, c.dataset.clone()))?;
            c.dataset_exists = false;
            self.container_gone(&c.image)?;
        }
        match fs::remove_dir(&c.root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ioerr(Step::RemoveDir, &c.root)(e)),
        }
    }

    /// Accounts for a destroyed clone; the last clone of a retired image takes the image's
    /// dataset with it (its `@image` snapshot went with the clone: deferred destroy).
    fn container_gone(&self, image: &Arc<ImageInner>) -> Result<()> {
        let destroy_now = {
            let mut st = image.state();
            st.containers = st.containers.saturating_sub(1);
            st.retired && st.containers == 0
        };
        if destroy_now {
            self.destroy_image_dataset(image)?;
        }
        Ok(())
    }

    fn destroy_image_dataset(&self, image: &ImageInner) -> Result<()> {
        let k = &self.kernel;
        image_marker::remove(&image.dir).map_err(ioerr(Step::RemoveDir, &image.dir))?;
        k.zfs_destroy_snaps(std::slice::from_ref(&image.snapshot), false)
            .map_err(kerr(Step::DestroySnapshot, image.snapshot.clone()))?;
        k.zfs_destroy(&image.dataset)
            .map_err(kerr(Step::Destroy, image.dataset.clone()))?;
        match fs::remove_dir(&image.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ioerr(Step::RemoveDir, &image.dir)(e)),
        }
    }

    /// Removes every jail rooted under the mount root and every image and container
    /// dataset the mount root's journal names, but (with `keep_images`) complete images:
    /// containers (clones) before images (their origins); in each, devfs before the
    /// filesystem, unmount before destroy, snapshot before its filesystem. Needs the lock.
    fn sweep(&self, report: &mut CleanupReport, keep_images: bool) -> Result<()> {
        let k = &self.kernel;
        let mount_root = &self.config.mount_root;
        for jail in k.jail_list().map_err(kerr(Step::ListJails, "all jails"))? {
            if jail.path.starts_with(mount_root) {
                match k.jail_remove(jail.jid) {
                    Err(e) if e.errno() == Some(libc::EINVAL) => {}
                    r => r.map_err(kerr(Step::JailRemove, jail.name.clone()))?,
                }
                k.jail_wait_gone(jail.jid, self.config.jail_gone_timeout)
                    .map_err(kerr(Step::JailWait, jail.name.clone()))?;
                report.push(format!("jail {}", jail.name));
            }
        }
        let mut containers = Vec::new();
        let mut images = Vec::new();
        let entries = fs::read_dir(mount_root).map_err(ioerr(Step::RemoveDir, mount_root))?;
        for entry in entries {
            let entry = entry.map_err(ioerr(Step::RemoveDir, mount_root))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !valid_component(&name) {
                continue;
            }
            if name.starts_with("c-") {
                containers.push(name);
            } else if name.starts_with("i-") {
                images.push(name);
            }
        }
        containers.sort();
        images.sort();
        if keep_images {
            let mut doomed = Vec::new();
            for leaf in images {
                // A mounted image is one a crash left mid-unpack (an image is mounted only
                // then); unmounted first, so the marker read is the mount point's own.
                let was_mounted = self.unmount_leaf(&leaf, report)?;
                match self.complete_image(&leaf) {
                    Ok(_) if !was_mounted => {}
                    Ok(_) => doomed.push((leaf, "mounted (unpack interrupted)".to_string())),
                    Err(why) => doomed.push((leaf, why)),
                }
            }
            images = Vec::new();
            for (leaf, why) in doomed {
                log::warn!("removing image {leaf}: {why}");
                report.push(format!("image {leaf} ({why})"));
                images.push(leaf);
            }
        }
        for (leaf, snap) in containers
            .iter()
            .map(|l| (l, CLEAN_SNAP))
            .chain(images.iter().map(|l| (l, IMAGE_SNAP)))
        {
            self.sweep_one(leaf, snap, report)?;
        }
        Ok(())
    }

    /// Unmounts devfs and the dataset at `<mount_root>/<leaf>`, whichever is mounted;
    /// true when something was.
    fn unmount_leaf(&self, leaf: &str, report: &mut CleanupReport) -> Result<bool> {
        let dir = self.config.mount_root.join(leaf);
        let mut any = false;
        // unmount(2) follows symlinks: only a real directory is unmounted (no jail runs
        // now, so nothing can swap it between the check and the call).
        for (path, what) in [(dir.join("dev"), "devfs"), (dir.clone(), "mount")] {
            let is_dir = fs::symlink_metadata(&path)
                .map(|m| m.is_dir())
                .unwrap_or(false);
            if !is_dir {
                continue;
            }
            match self.kernel.unmount(&path, true) {
                Ok(()) => {
                    report.push(format!("{what} {}", path.display()));
                    any = true;
                }
                Err(e) if e.errno() == Some(libc::EINVAL) => {}
                Err(e) => return Err(kerr(Step::Unmount, path.display().to_string())(e)),
            }
        }
        Ok(any)
    }

    /// The toolchain and last use of the image journalled as `leaf` when it is complete:
    /// its dataset and `@image` snapshot exist and its marker (this format) names it.
    fn complete_image(&self, leaf: &str) -> std::result::Result<(ToolchainId, SystemTime), String> {
        let id = leaf
            .strip_prefix("i-")
            .and_then(|id| ToolchainId::new(id).ok())
            .ok_or_else(|| "not named after a toolchain id".to_string())?;
        let dataset = format!("{}/{leaf}", self.config.dataset_root);
        if !self.kernel.zfs_exists(&dataset) {
            return Err(format!("no dataset {dataset}"));
        }
        let snapshot = format!("{dataset}@{IMAGE_SNAP}");
        if !self.kernel.zfs_exists(&snapshot) {
            return Err(format!("no snapshot {snapshot} (partial image)"));
        }
        let dir = self.config.mount_root.join(leaf);
        let last_used = image_marker::read(&dir, id.as_str()).map_err(|why| why.to_string())?;
        Ok((id, last_used))
    }

    fn sweep_one(&self, leaf: &str, snap: &str, report: &mut CleanupReport) -> Result<()> {
        let k = &self.kernel;
        let dir = self.config.mount_root.join(leaf);
        let dataset = format!("{}/{leaf}", self.config.dataset_root);
        let snapshot = format!("{dataset}@{snap}");
        if let (true, Some(rest)) = (self.racct, leaf.strip_prefix("c-")) {
            let jail = format!("{}-{rest}", self.config.jail_prefix);
            if self.remove_rctl(&jail)? {
                report.push(format!("rctl rules of jail {jail}"));
            }
        }
        self.unmount_leaf(leaf, report)?;
        if k.zfs_exists(&snapshot) {
            k.zfs_destroy_snaps(std::slice::from_ref(&snapshot), false)
                .map_err(kerr(Step::DestroySnapshot, snapshot.clone()))?;
            report.push(format!("snapshot {snapshot}"));
        }
        if k.zfs_exists(&dataset) {
            k.zfs_destroy(&dataset)
                .map_err(kerr(Step::Destroy, dataset.clone()))?;
            report.push(format!("dataset {dataset}"));
        }
        image_marker::remove(&dir).map_err(ioerr(Step::RemoveDir, &dir))?;
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ioerr(Step::RemoveDir, &dir)(e)),
        }
        Ok(())
    }
}

impl<K: Kernel> FreeBsdBackend<K> {
    fn exec_inner(
        &self,
        container: &FreeBsdContainer,
        command: &PreparedCommand,
        user: BuildUser,
        limits: &Limits,
        cancel: Option<&CancelToken>,
    ) -> Result<ExecOutcome> {
        let Some(jid) = container.jid.filter(|_| !container.dead) else {
            return Err(FreeBsdError::ContainerDead(container.jail_name.clone()));
        };
        // With rctl rules on the jail, maxproc bounds the whole jail and replaces
        // RLIMIT_NPROC (per uid, host-wide). RLIMIT_AS stays: it bounds each process,
        // vmemoryuse the sum.
        let per_jail;
        let limits = if container.rctl && self.config.jail_limits.max_processes > 0 {
            per_jail = Limits {
                max_processes: 0,
                ..limits.clone()
            };
            &per_jail
        } else {
            limits
        };
        let plan = ExecPlan::new(jid, user, limits);
        // The outcome's `limit_hit` stays None: rlimits and rctl's deny fail the
        // allocation or fork (ENOMEM, EAGAIN) and the kernel records no per-jail event to
        // attribute the failure to.
        self.kernel
            .exec(&plan, command, limits, cancel)
            .map_err(|e| match e {
                KernelError::Exec { source, .. } => FreeBsdError::Exec {
                    jail: container.jail_name.clone(),
                    source,
                },
                other => kerr(Step::Exec, container.jail_name.clone())(other),
            })
    }
}

#[derive(Default)]
struct ImageUndo {
    dir: bool,
    dataset: bool,
    mounted: bool,
    snapshot: bool,
}

fn warn_err<T>(r: std::result::Result<T, KernelError>) {
    if let Err(e) = r {
        log::warn!("clean-up after a failure: {e}");
    }
}

impl<K: Kernel> Backend for FreeBsdBackend<K> {
    type Image = FreeBsdImage;
    type Container = FreeBsdContainer;
    type Error = FreeBsdError;

    fn kind(&self) -> &'static str {
        "freebsd-jail-zfs"
    }

    /// The client's fault: a missing executable or working directory, a corrupt or hostile
    /// toolchain archive (also one that plants a non-directory at `dev`).
    fn is_job_error(&self, error: &FreeBsdError) -> bool {
        match error {
            FreeBsdError::Exec { source, .. } => source.is_job_error(),
            FreeBsdError::Unpack { source, .. } => source.is_archive_fault(),
            FreeBsdError::Beneath {
                step: Step::ImageDevDir,
                ..
            } => true,
            _ => false,
        }
    }

    fn remove_leftovers(&self) -> Result<CleanupReport> {
        self.acquire_lock()?;
        self.ensure_dataset_root()?;
        let mut report = CleanupReport::default();
        self.sweep(&mut report, true)?;
        Ok(report)
    }

    /// The complete images the mount root's journal names (after `remove_leftovers`,
    /// nothing else is there).
    fn existing_images(&self) -> Result<Vec<ExistingImage<FreeBsdImage>>> {
        self.require_lock()?;
        let root = &self.config.mount_root;
        let mut found = Vec::new();
        for entry in fs::read_dir(root).map_err(ioerr(Step::ListImages, root))? {
            let entry = entry.map_err(ioerr(Step::ListImages, root))?;
            let Some(leaf) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !leaf.starts_with("i-") || !valid_component(&leaf) {
                continue;
            }
            let (id, last_used) = match self.complete_image(&leaf) {
                Ok(found) => found,
                Err(why) => {
                    log::warn!("not adopting image {leaf}: {why}");
                    continue;
                }
            };
            let dataset = format!("{}/{leaf}", self.config.dataset_root);
            let inner = ImageInner {
                id: id.clone(),
                snapshot: format!("{dataset}@{IMAGE_SNAP}"),
                dataset,
                dir: root.join(&leaf),
                state: Mutex::new(ImageState {
                    containers: 0,
                    retired: false,
                }),
            };
            found.push(ExistingImage {
                id,
                image: FreeBsdImage {
                    inner: Arc::new(inner),
                },
                last_used,
            });
        }
        found.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(found)
    }

    fn create_image(&self, id: &ToolchainId, tar_gz: &mut dyn Read) -> Result<FreeBsdImage> {
        self.require_lock()?;
        let leaf = format!("i-{id}");
        let dataset = format!("{}/{leaf}", self.config.dataset_root);
        let snapshot = format!("{dataset}@{IMAGE_SNAP}");
        Self::check_name(&snapshot)?;
        let inner = ImageInner {
            id: id.clone(),
            dataset,
            snapshot,
            dir: self.config.mount_root.join(leaf),
            state: Mutex::new(ImageState {
                containers: 0,
                retired: false,
            }),
        };
        let mut undo = ImageUndo::default();
        if let Err(e) = self.create_image_inner(&inner, tar_gz, &mut undo) {
            self.undo_image(&inner, &undo);
            return Err(e);
        }
        Ok(FreeBsdImage {
            inner: Arc::new(inner),
        })
    }

    fn destroy_image(&self, image: FreeBsdImage) -> Result<()> {
        let inner = image.inner;
        // Unmarked first: a crash from here on leaves an image the next start destroys.
        image_marker::remove(&inner.dir).map_err(ioerr(Step::RemoveDir, &inner.dir))?;
        {
            let mut st = inner.state();
            if st.containers > 0 {
                // Clones still use @image: mark it for deferred destroy; the last
                // container's destroy removes the image dataset (container_gone).
                st.retired = true;
                drop(st);
                return self
                    .kernel
                    .zfs_destroy_snaps(std::slice::from_ref(&inner.snapshot), true)
                    .map_err(kerr(Step::DestroySnapshot, inner.snapshot.clone()));
            }
            st.retired = true;
        }
        self.destroy_image_dataset(&inner)
    }

    fn create_container(&self, image: &FreeBsdImage) -> Result<FreeBsdContainer> {
        self.require_lock()?;
        {
            let mut st = image.inner.state();
            if st.retired {
                return Err(FreeBsdError::ImageRetired(image.inner.id.to_string()));
            }
            st.containers += 1;
        }
        // The marker's mtime records the image's last use, for the start-up bound.
        image_marker::touch(&image.inner.dir);
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let leaf = format!("c-{}-{n}", self.instance);
        let dataset = format!("{}/{leaf}", self.config.dataset_root);
        let root = self.config.mount_root.join(&leaf);
        let jail_name = format!("{}-{}-{n}", self.config.jail_prefix, self.instance);
        let mut c = FreeBsdContainer {
            image: image.inner.clone(),
            clean: format!("{dataset}@{CLEAN_SNAP}"),
            dataset,
            dev: root.join("dev"),
            root,
            jail_name,
            jid: None,
            devfs: false,
            mounted: false,
            snapshot: false,
            dataset_exists: false,
            clone_made: false,
            rctl: false,
            dead: false,
        };
        let checked = Self::check_name(&c.clean).and_then(|()| {
            if c.jail_name.len() > JAIL_MAX_NAME {
                Err(FreeBsdError::NameTooLong(c.jail_name.clone()))
            } else {
                Ok(())
            }
        });
        if let Err(e) = checked.and_then(|()| self.create_container_inner(&mut c)) {
            if let Err(undo) = self.teardown(&mut c) {
                log::warn!("clean-up after a failed container creation: {undo}");
            }
            if !c.clone_made {
                // No clone was made: teardown's container_gone did not run for it.
                let mut st = image.inner.state();
                st.containers = st.containers.saturating_sub(1);
            }
            return Err(e);
        }
        Ok(c)
    }

    fn root<'c>(&self, container: &'c FreeBsdContainer) -> &'c Path {
        &container.root
    }

    fn exec(
        &self,
        container: &FreeBsdContainer,
        command: &PreparedCommand,
        user: BuildUser,
        limits: &Limits,
        cancel: Option<&CancelToken>,
    ) -> Result<ExecOutcome> {
        self.exec_inner(container, command, user, limits, cancel)
    }

    fn reset(&self, container: &mut FreeBsdContainer) -> Result<()> {
        if container.dead {
            return Err(FreeBsdError::ContainerDead(container.jail_name.clone()));
        }
        match self.reset_inner(container) {
            Ok(()) => Ok(()),
            Err(e) => {
                // Never reused: destroy now (what fails here is left for start-up).
                if let Err(d) = self.teardown(container) {
                    log::warn!(
                        "destroying {} after a failed reset: {d}",
                        container.jail_name
                    );
                }
                Err(e)
            }
        }
    }

    fn destroy_container(&self, mut container: FreeBsdContainer) -> Result<()> {
        self.teardown(&mut container)
    }

    fn clean_all(&self) -> Result<CleanupReport> {
        self.acquire_lock()?;
        let mut report = CleanupReport::default();
        self.sweep(&mut report, false)?;
        Ok(report)
    }
}
