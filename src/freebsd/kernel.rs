//! The kernel seam of the FreeBSD backend: every system call (and libzfs_core call) the
//! orchestration in [`super::backend`] makes, as one trait. `RealKernel` (FreeBSD only) makes
//! the calls on FreeBSD; [`super::fake::FakeKernel`] records them and enforces the same
//! rules on any OS, so the orchestration is tested on Linux.
//!
//! Nothing here names a type of `crate::zfs`: the seam compiles without ZFS.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{BuildUser, ExecOutcome, Limits};
use crate::exec::{CancelToken, ExecError, PreparedCommand};

/// A ZFS property set at creation (lzc_create / lzc_clone). Numeric and index properties
/// are passed as uint64 (the kernel rejects strings for index properties: OpenZFS
/// module/zfs/zfs_ioctl.c, zfs_check_settable / zfs_prop_set_special), strings as strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ZfsProp {
    U64(&'static str, u64),
    Str(&'static str, String),
}

impl std::fmt::Display for ZfsProp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ZfsProp::U64(n, v) => write!(f, "{n}={v}"),
            ZfsProp::Str(n, v) => write!(f, "{n}={v}"),
        }
    }
}

/// Index values from OpenZFS include/sys/fs/zfs.h (zfs_sync_type_t, zfs_canmount_type_t);
/// boolean properties (atime, setuid) are 0 = off, 1 = on.
pub mod prop {
    pub const SYNC_DISABLED: u64 = 2;
    pub const CANMOUNT_NOAUTO: u64 = 2;
    pub const OFF: u64 = 0;
}

/// Parameters of a new persistent jail (jail_set(2) with JAIL_CREATE).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JailParams {
    /// `name`: must not contain '.' (hierarchical names) nor be numeric (kern_jail.c).
    pub name: String,
    /// `path`: the jail's root directory on the host.
    pub path: PathBuf,
    /// `host.hostname`.
    pub hostname: String,
    /// `securelevel`: at least the host's.
    pub securelevel: i32,
    /// `devfs_ruleset`: the ruleset the jail may use for devfs mounted inside it.
    pub devfs_ruleset: i32,
}

/// Every `allow.*` permission the new jail gets, by name: each is turned off explicitly
/// (a boolean is passed by name only, `allow.noX` clears X) but `allow.suser`.
///
/// Why explicit: a jail made by jail_set(2) starts with `JAIL_DEFAULT_ALLOW & parent`
/// (kern_jail.c kern_jail_set, "Set some default values": set_hostname, reserved_ports,
/// unprivileged_proc_debug, suser) and with `enforce_statfs` from the host's
/// `security.jail.enforce_statfs` sysctl (jail_default_enforce_statfs): the host's
/// configuration, not ours, would decide. The names are those of `pr_flag_allow` in
/// kern_jail.c as of 13.0 (so every 14.x kernel knows them) and the two dynamic ones every
/// host of this backend registers: `allow.mount.devfs` (devfs) and `allow.mount.zfs`
/// (OpenZFS zfs_vfsops.c `VFS_SET(..., VFCF_JAIL ...)`; vfs_init.c vfs_register ->
/// prison_add_vfs -> prison_add_allow("mount", ...) names them `allow.mount.noX`). Newer or
/// module-dependent permissions (allow.extattr, allow.adjtime, allow.settime, allow.routing,
/// allow.nfsd, allow.vmm, allow.mount.nullfs, ...) are not in `JAIL_DEFAULT_ALLOW`, so they
/// start off, and naming one a kernel lacks fails the whole jail_set(2) with EINVAL
/// ("unknown parameter: %s", kern_jail_set).
///
/// `allow.suser` stays on: the child drops from root to the build user after
/// jail_attach(2) (which needs root on the host), and setgroups(2)/setgid(2)/setuid(2) need
/// PRIV_CRED_* privilege (kern_prot.c), which uid 0 in a jail only has with PR_ALLOW_SUSER
/// (kern_priv.c priv_check_cred grants root's privileges only `if (suser_enabled(cred))`,
/// which asks prison_allow(cred, PR_ALLOW_SUSER)). The compile itself never runs as root and the clone is mounted
/// `setuid=off`, so no process of the job holds uid 0 inside the jail.
pub const JAIL_ALLOW: &[&str] = &[
    "allow.noset_hostname",
    "allow.nosysvipc",
    "allow.noraw_sockets",
    "allow.nochflags",
    "allow.nomount",
    "allow.mount.nodevfs",
    "allow.mount.nozfs",
    "allow.noquotas",
    "allow.nosocket_af",
    "allow.nomlock",
    "allow.noreserved_ports",
    "allow.noread_msgbuf",
    "allow.nounprivileged_proc_debug",
    "allow.suser",
];

/// One jail_set(2) parameter: a name/value iovec pair (jail(2) "jail_set").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JailParam {
    /// A NUL-terminated string.
    Str(&'static str, Vec<u8>),
    /// A 4-byte integer (kern_jail.c reads them with vfs_copyopt(..., sizeof(int)), which
    /// fails EINVAL for any other length).
    Int(&'static str, i32),
    /// A boolean, by name only with an empty value (vfs_flagopt).
    Flag(&'static str),
}

impl JailParam {
    pub fn name(&self) -> &'static str {
        match self {
            JailParam::Str(n, _) | JailParam::Int(n, _) | JailParam::Flag(n) => n,
        }
    }
}

impl std::fmt::Display for JailParam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JailParam::Str(n, v) => write!(f, "{n}={}", String::from_utf8_lossy(v)),
            JailParam::Int(n, v) => write!(f, "{n}={v}"),
            JailParam::Flag(n) => write!(f, "{n}"),
        }
    }
}

impl JailParams {
    /// The exact parameters of the jail_set(2) JAIL_CREATE call (errmsg aside), in order:
    /// nothing is left to the kernel's or the host's defaults that matters to isolation.
    /// - `persist`: a new jail must persist or attach (kern_jail_set, EINVAL otherwise).
    /// - no `ip4`/`ip6`/`ip4.addr`/`ip6.addr`/`vnet`: the jail gets PR_IP4|PR_IP4_USER and
    ///   PR_IP6|PR_IP6_USER with no address and the host's vnet (kern_jail_set, "Set some
    ///   default values"), so prison_check_af() refuses AF_INET/AF_INET6 sockets.
    /// - `securelevel`: the jail's own, at least the host's (EPERM below it); the effective
    ///   level of a jailed process is the higher of the two (kern_prot.c securelevel_gt).
    /// - `enforce_statfs=2`: statfs/getfsstat show only mounts beneath the jail's root,
    ///   with paths relative to it (kern_jail.c prison_enforce_statfs).
    /// - `children.max=0`: no jail inside (kern_jail_set refuses JAIL_CREATE with EPERM
    ///   when `pr_childmax` is 0).
    /// - `devfs_ruleset`: the only ruleset a devfs mounted for the jail applies.
    /// - [`JAIL_ALLOW`].
    pub fn jail_set_params(&self) -> Vec<JailParam> {
        let mut v = vec![
            JailParam::Str("name", self.name.as_bytes().to_vec()),
            JailParam::Str("path", path_bytes(&self.path)),
            JailParam::Str("host.hostname", self.hostname.as_bytes().to_vec()),
            JailParam::Flag("persist"),
            JailParam::Int("securelevel", self.securelevel),
            JailParam::Int("enforce_statfs", 2),
            JailParam::Int("children.max", 0),
            JailParam::Int("devfs_ruleset", self.devfs_ruleset),
        ];
        v.extend(JAIL_ALLOW.iter().map(|n| JailParam::Flag(n)));
        v
    }
}

fn path_bytes(p: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes().to_vec()
}

/// A resource limit the jailed child sets, soft = hard (setrlimit(2)); mapped to the
/// `RLIMIT_*` constants of <sys/resource.h> where the call is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rlimit {
    /// RLIMIT_AS: address space of each process.
    As,
    /// RLIMIT_NPROC: processes of the real uid, host-wide (kern_fork.c chgproccnt).
    Nproc,
    /// RLIMIT_NOFILE: descriptors of each process.
    Nofile,
    /// RLIMIT_FSIZE: largest file a process may write.
    Fsize,
    /// RLIMIT_CORE: largest core dump.
    Core,
}

/// What the jailed child does between pdfork(2) and execve(2), decided before the fork (and
/// recorded by the fake): attach to `jid`, start a new session, set `rlimits`, drop to `user`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecPlan {
    pub jid: i32,
    pub user: BuildUser,
    /// setsid(2): the job runs in a session of its own without a controlling terminal
    /// (kern_prot.c sys_setsid -> enterpgrp clears P_CONTROLT), so opening /dev/tty fails
    /// ENXIO (tty_tty.c ctty_clone hands out the `ctty` device, whose cttyopen returns
    /// ENXIO, to a process without P_CONTROLT); a host pty is not visible in the jail's
    /// devfs (devfs_vnops.c devfs_prison_check exempts only the caller's controlling
    /// terminal); and TIOCSTI needs the tty to be the caller's controlling terminal or
    /// PRIV_TTY_STI (tty.c tty_generic_ioctl: EACCES). The job's stdin is /dev/null and
    /// its stdout/stderr are pipes: no terminal descriptor is inherited either.
    pub new_session: bool,
    /// Set in this order, each soft = hard. Lowering a limit needs no privilege; raising a
    /// hard limit needs PRIV_PROC_SETRLIMIT (kern_resource.c kern_proc_setrlimit), so the
    /// job cannot undo them.
    pub rlimits: Vec<(Rlimit, u64)>,
}

impl ExecPlan {
    /// The plan for running in jail `jid` as `user` within `limits`: a new session always;
    /// RLIMIT_AS, RLIMIT_NPROC, RLIMIT_NOFILE, RLIMIT_FSIZE where the limit is not 0
    /// (0 = unlimited in [`Limits`]); RLIMIT_CORE 0 always (no core files: a core dump
    /// would spend the disk quota and time of the job, and nothing reads it).
    pub fn new(jid: i32, user: BuildUser, limits: &Limits) -> ExecPlan {
        let mut rlimits: Vec<(Rlimit, u64)> = [
            (Rlimit::As, limits.memory_bytes),
            (Rlimit::Nproc, limits.max_processes),
            (Rlimit::Nofile, limits.max_open_files),
            (Rlimit::Fsize, limits.max_file_bytes),
        ]
        .into_iter()
        .filter(|(_, v)| *v > 0)
        .collect();
        rlimits.push((Rlimit::Core, 0));
        ExecPlan {
            jid,
            user,
            new_session: true,
            rlimits,
        }
    }
}

/// A jail as jail_get(2) reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JailInfo {
    pub jid: i32,
    pub name: String,
    pub path: PathBuf,
}

/// A failed kernel call, named after the step, keeping errno and (for jail_set and nmount)
/// the kernel's own message.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("zfs {op} {name}: {}{}", errno_str(*.errno), errmsg_suffix(.detail))]
    Zfs {
        op: &'static str,
        name: String,
        errno: i32,
        /// More from the ZFS layer (per-snapshot errors, a rejected name), may be empty.
        detail: String,
    },
    #[error("nmount {fstype} on {}: {}{}", .fspath.display(), errno_str(*.errno), errmsg_suffix(.errmsg))]
    Nmount {
        fspath: PathBuf,
        fstype: &'static str,
        errno: i32,
        errmsg: String,
    },
    #[error("unmount {}: {}", .fspath.display(), errno_str(*.errno))]
    Unmount { fspath: PathBuf, errno: i32 },
    #[error("jail_set (create) {name}: {}{}", errno_str(*.errno), errmsg_suffix(.errmsg))]
    JailSet {
        name: String,
        errno: i32,
        errmsg: String,
    },
    #[error("jail_get {what}: {}{}", errno_str(*.errno), errmsg_suffix(.errmsg))]
    JailGet {
        what: String,
        errno: i32,
        errmsg: String,
    },
    #[error("jail_remove jid {jid}: {}", errno_str(*.errno))]
    JailRemove { jid: i32, errno: i32 },
    #[error("jail {jid} still dying after {waited_ms} ms")]
    JailDying { jid: i32, waited_ms: u64 },
    /// Listing or killing the processes of a jail (kern.proc sysctl, kill(2)).
    #[error("killing the processes of jail {jid}: {}", errno_str(*.errno))]
    JailKill { jid: i32, errno: i32 },
    /// A devfs rule ioctl (DEVFSIO_SGETNEXT / DEVFSIO_RGETNEXT on /dev).
    #[error("devfs {op} ruleset {ruleset}: {}", errno_str(*.errno))]
    Devfs {
        op: &'static str,
        ruleset: u16,
        errno: i32,
    },
    #[error("{op} {rule:?}: {}", errno_str(*.errno))]
    Rctl {
        op: &'static str,
        rule: String,
        errno: i32,
    },
    #[error("exec in jail {jid}: {source}")]
    Exec {
        jid: i32,
        #[source]
        source: ExecError,
    },
}

impl KernelError {
    /// The errno of the failed call, if it has one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            KernelError::Zfs { errno, .. }
            | KernelError::Nmount { errno, .. }
            | KernelError::Unmount { errno, .. }
            | KernelError::JailSet { errno, .. }
            | KernelError::JailGet { errno, .. }
            | KernelError::JailRemove { errno, .. }
            | KernelError::JailKill { errno, .. }
            | KernelError::Devfs { errno, .. }
            | KernelError::Rctl { errno, .. } => Some(*errno),
            KernelError::Exec {
                source: ExecError::Setup { errno, .. },
                ..
            } => Some(*errno),
            _ => None,
        }
    }
}

fn errno_str(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}

fn errmsg_suffix(errmsg: &str) -> String {
    if errmsg.is_empty() {
        String::new()
    } else {
        format!(" ({errmsg})")
    }
}

pub type KResult<T> = Result<T, KernelError>;

/// The one helper that turns a C return code into a result: `rc` < 0 (or, for calls that
/// return an errno such as the lzc_* functions, `rc` > 0 with `rc_is_errno`) becomes the
/// error `make(errno)` builds; otherwise `rc` is returned.
pub fn check_rc(rc: i32, rc_is_errno: bool, make: impl FnOnce(i32) -> KernelError) -> KResult<i32> {
    if rc_is_errno {
        if rc != 0 {
            return Err(make(rc));
        }
        return Ok(0);
    }
    if rc < 0 {
        let errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        return Err(make(errno));
    }
    Ok(rc)
}

/// Everything the FreeBSD orchestration asks of the kernel and of ZFS.
pub trait Kernel: Send + Sync + 'static {
    // ZFS (libzfs_core). Names are full dataset / snapshot names.
    /// lzc_create(name, ZFS_TYPE_FILESYSTEM, props): EEXIST if it exists, ENOENT if the
    /// parent does not.
    fn zfs_create(&self, name: &str, props: &[ZfsProp]) -> KResult<()>;
    /// lzc_clone(fs, origin, props): ENOENT if `origin` does not exist. Does not mount.
    fn zfs_clone(&self, fs: &str, origin: &str, props: &[ZfsProp]) -> KResult<()>;
    /// lzc_snapshot(snaps): atomically, in one txg.
    fn zfs_snapshot(&self, snaps: &[String]) -> KResult<()>;
    /// lzc_rollback_to(fs, snap): EXDEV unless `snap` is the newest snapshot of `fs`.
    fn zfs_rollback_to(&self, fs: &str, snap: &str) -> KResult<()>;
    /// lzc_destroy(name) of a filesystem: EBUSY while mounted or while it has snapshots.
    fn zfs_destroy(&self, name: &str) -> KResult<()>;
    /// lzc_destroy_snaps(snaps, defer): EBUSY for a snapshot with clones unless deferred.
    fn zfs_destroy_snaps(&self, snaps: &[String], defer: bool) -> KResult<()>;
    /// lzc_exists(name).
    fn zfs_exists(&self, name: &str) -> bool;

    // Mounts (nmount(2), unmount(2)).
    /// nmount fstype=zfs from=`dataset` fspath=`fspath`.
    fn mount_zfs(&self, dataset: &str, fspath: &Path) -> KResult<()>;
    /// nmount fstype=devfs fspath=`fspath` ruleset=`ruleset`.
    fn mount_devfs(&self, fspath: &Path, ruleset: u16) -> KResult<()>;
    /// unmount(fspath, force ? MNT_FORCE : 0): EINVAL if `fspath` is not a mount point.
    fn unmount(&self, fspath: &Path, force: bool) -> KResult<()>;

    // Jails.
    /// jail_set(JAIL_CREATE) of a persistent jail without network; returns the jid.
    fn jail_create(&self, params: &JailParams) -> KResult<i32>;
    /// jail_remove(jid): marks it dying, SIGKILLs its processes, returns without waiting.
    fn jail_remove(&self, jid: i32) -> KResult<()>;
    /// Waits until jail `jid` has fully gone (no process of it left), up to `timeout`,
    /// SIGKILLing any process still in it while it waits (one forked while jail_remove's
    /// kill pass ran survives it: see [`kill_jail`]).
    fn jail_wait_gone(&self, jid: i32, timeout: Duration) -> KResult<()>;
    /// SIGKILLs every process whose jail is `jid`, live or dying, once; returns how many
    /// were signalled. kern.proc.proc (sysctl) lists them with their `ki_jid`.
    fn jail_kill_processes(&self, jid: i32) -> KResult<u32>;
    /// jail_get(name): the jid of the live jail called `name`, if any.
    fn jail_find(&self, name: &str) -> KResult<Option<i32>>;
    /// Every live jail (jail_get with lastjid iteration).
    fn jail_list(&self) -> KResult<Vec<JailInfo>>;

    // Exec.
    /// Runs `command` as `plan` says (inside jail `plan.jid`, as `plan.user`, in a new
    /// session, with its rlimits) and waits for it, within `limits` (timeout, output caps);
    /// on timeout, or when `cancel` is cancelled, every process of the jail is killed
    /// (jail_remove) and a cancelled call fails with `ExecError::Cancelled`.
    fn exec(
        &self,
        plan: &ExecPlan,
        command: &PreparedCommand,
        limits: &Limits,
        cancel: Option<&CancelToken>,
    ) -> KResult<ExecOutcome>;

    // Resource limits (rctl(8), RACCT).
    /// True when the kernel accounts resources (sysctl kern.racct.enable=1, a kernel built
    /// with `options RACCT`): rctl rules then work; otherwise the rctl calls fail ENOSYS
    /// (kern_rctl.c) and only rlimits limit a jail's processes.
    fn racct_enabled(&self) -> bool;

    // devfs rules (devfs(8), sys/fs/devfs/devfs_rule.c).
    /// The number of rules in devfs ruleset `ruleset`, or `None` when no such ruleset is
    /// loaded. A ruleset mounted before it is loaded is created empty
    /// (devfs_ruleset_use), and an empty ruleset hides nothing: check before use.
    fn devfs_ruleset_rules(&self, ruleset: u16) -> KResult<Option<u32>>;
    /// rctl_add_rule(2) with a full rule, e.g. `jail:jb-ab12-3:maxproc:deny=256`. A deny
    /// rule replaces one that differs only in amount (kern_rctl.c rctl_rule_add).
    fn rctl_add_rule(&self, rule: &str) -> KResult<()>;
    /// rctl_remove_rule(2) with a filter, e.g. `jail:jb-ab12-3`: removes every matching
    /// rule; ESRCH when none matched.
    fn rctl_remove_rule(&self, filter: &str) -> KResult<()>;
}

/// The [`Kernel`] methods of a wrapper, each calling `$note(method name)` and then the same
/// method of `$target` (an expression of `$self_`): one list for every forwarding impl.
macro_rules! forward_kernel {
    ($self_:ident, $target:expr, $note:expr) => {
    fn zfs_create(&$self_, name: &str, props: &[ZfsProp]) -> KResult<()> {
        $note("zfs_create");
        $target.zfs_create(name, props)
    }
    fn zfs_clone(&$self_, fs: &str, origin: &str, props: &[ZfsProp]) -> KResult<()> {
        $note("zfs_clone");
        $target.zfs_clone(fs, origin, props)
    }
    fn zfs_snapshot(&$self_, snaps: &[String]) -> KResult<()> {
        $note("zfs_snapshot");
        $target.zfs_snapshot(snaps)
    }
    fn zfs_rollback_to(&$self_, fs: &str, snap: &str) -> KResult<()> {
        $note("zfs_rollback_to");
        $target.zfs_rollback_to(fs, snap)
    }
    fn zfs_destroy(&$self_, name: &str) -> KResult<()> {
        $note("zfs_destroy");
        $target.zfs_destroy(name)
    }
    fn zfs_destroy_snaps(&$self_, snaps: &[String], defer: bool) -> KResult<()> {
        $note("zfs_destroy_snaps");
        $target.zfs_destroy_snaps(snaps, defer)
    }
    fn zfs_exists(&$self_, name: &str) -> bool {
        $note("zfs_exists");
        $target.zfs_exists(name)
    }
    fn mount_zfs(&$self_, dataset: &str, fspath: &Path) -> KResult<()> {
        $note("mount_zfs");
        $target.mount_zfs(dataset, fspath)
    }
    fn mount_devfs(&$self_, fspath: &Path, ruleset: u16) -> KResult<()> {
        $note("mount_devfs");
        $target.mount_devfs(fspath, ruleset)
    }
    fn unmount(&$self_, fspath: &Path, force: bool) -> KResult<()> {
        $note("unmount");
        $target.unmount(fspath, force)
    }
    fn jail_create(&$self_, params: &JailParams) -> KResult<i32> {
        $note("jail_create");
        $target.jail_create(params)
    }
    fn jail_remove(&$self_, jid: i32) -> KResult<()> {
        $note("jail_remove");
        $target.jail_remove(jid)
    }
    fn jail_wait_gone(&$self_, jid: i32, timeout: Duration) -> KResult<()> {
        $note("jail_wait_gone");
        $target.jail_wait_gone(jid, timeout)
    }
    fn jail_kill_processes(&$self_, jid: i32) -> KResult<u32> {
        $note("jail_kill_processes");
        $target.jail_kill_processes(jid)
    }
    fn devfs_ruleset_rules(&$self_, ruleset: u16) -> KResult<Option<u32>> {
        $note("devfs_ruleset_rules");
        $target.devfs_ruleset_rules(ruleset)
    }
    fn jail_find(&$self_, name: &str) -> KResult<Option<i32>> {
        $note("jail_find");
        $target.jail_find(name)
    }
    fn jail_list(&$self_) -> KResult<Vec<JailInfo>> {
        $note("jail_list");
        $target.jail_list()
    }
    fn exec(
        &$self_,
        plan: &ExecPlan,
        command: &PreparedCommand,
        limits: &Limits,
        cancel: Option<&CancelToken>,
    ) -> KResult<ExecOutcome> {
        $note("exec");
        $target.exec(plan, command, limits, cancel)
    }
    fn racct_enabled(&$self_) -> bool {
        $note("racct_enabled");
        $target.racct_enabled()
    }
    fn rctl_add_rule(&$self_, rule: &str) -> KResult<()> {
        $note("rctl_add_rule");
        $target.rctl_add_rule(rule)
    }
    fn rctl_remove_rule(&$self_, filter: &str) -> KResult<()> {
        $note("rctl_remove_rule");
        $target.rctl_remove_rule(filter)
    }
    };
}
pub(crate) use forward_kernel;

/// Shares one kernel between a backend and a test that inspects it.
impl<K: Kernel> Kernel for Arc<K> {
    forward_kernel!(self, (**self), |_: &'static str| ());
}

/// Rounds of [`Kernel::jail_kill_processes`] [`kill_jail`] makes at most: each round
/// SIGKILLs every process then in the jail, and a killed process forks no more, so only a
/// fork already under way when a round ran survives it.
pub const KILL_ROUNDS: usize = 16;

/// Kills every process of jail `jid` on a timeout or cancel, without relying on any one
/// call: `kill_child` first (pdkill(2) of the child: waitpid then returns even if all else
/// fails, and it also reaches a child not yet attached to the jail), then jail_remove(2),
/// then rounds of [`Kernel::jail_kill_processes`] until one finds nothing.
///
/// jail_remove alone is not enough: it may fail, and its kill pass skips a process being
/// forked (kern_jail.c prison_remove_one: `p->p_state != PRS_NEW`; FreeBSD 14 kills from
/// prison_deref with PD_KILL), while a second jail_remove on the now dying jail returns 0
/// without killing again (sys_jail_remove: "Silently ignore already-dying prisons").
///
/// Returns the errors met (for the log); the caller goes on to reap the child either way.
pub fn kill_jail<K: Kernel + ?Sized>(
    kernel: &K,
    jid: i32,
    kill_child: impl FnOnce() -> std::io::Result<()>,
) -> Vec<String> {
    let mut errors = Vec::new();
    if let Err(e) = kill_child() {
        errors.push(format!("pdkill of the child in jail {jid}: {e}"));
    }
    match kernel.jail_remove(jid) {
        // EINVAL: the jail is gone already.
        Err(e) if e.errno() != Some(libc::EINVAL) => errors.push(e.to_string()),
        _ => {}
    }
    for _ in 0..KILL_ROUNDS {
        match kernel.jail_kill_processes(jid) {
            Ok(0) => return errors,
            Ok(_) => {}
            Err(e) => {
                errors.push(e.to_string());
                return errors;
            }
        }
    }
    errors.push(format!(
        "jail {jid} still had processes after {KILL_ROUNDS} kill rounds"
    ));
    errors
}
