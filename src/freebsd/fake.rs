//! [`FakeKernel`]: the kernel seam in memory, for tests on any OS.
//!
//! It records every call in order as a readable line, injects failures, and enforces the
//! kernel's rules (DESIGN.md "Verified facts"), so an orchestration bug fails a test here
//! rather than on a FreeBSD server:
//! - ZFS: EEXIST creating/cloning onto an existing dataset, ENOENT without the parent or
//!   the origin, EBUSY destroying a mounted dataset, one with snapshots or with children,
//!   EBUSY destroying a snapshot that has clones unless deferred (a deferred one goes with
//!   its last clone), EXDEV rolling back to a snapshot that is not the newest.
//! - Mounts: ENOENT/ENOTDIR for a missing mount point, EBUSY mounting a dataset twice or
//!   on a mount point, EINVAL unmounting what is not a mount point (unmount(2)), EBUSY
//!   unmounting with a mount beneath (always) or under a jail's root (unless forced).
//! - Jails: EEXIST for a live jail's name, EINVAL for a numeric name, ENOENT for a missing
//!   path, EINVAL removing an unknown jid (kern_jail.c sys_jail_remove), EINVAL attaching
//!   to a jail that is not alive (sys_jail_attach). jail_set(2) parameters are checked as
//!   kern_jail_set checks them ([`FakeKernel::check_jail_set`]): EINVAL "unknown
//!   parameter" for a name the kernel does not know, EINVAL for a value of the wrong type
//!   or size, EINVAL without `persist`, EINVAL for enforce_statfs outside 0..=2 or a
//!   devfs_ruleset outside 0..=65535, EPERM for a securelevel below the host's (-1).
//!   The parameters of each jail and the plan of each exec are recorded.
//!   Jail paths are stored resolved
//!   (kern_jail_set: vn_path_to_global_path); jail_remove skips processes being forked
//!   and does nothing to a dying jail; a child nothing killed after a timeout panics
//!   (waitpid would block).
//! - rctl: EINVAL for an unknown resource, EOPNOTSUPP for `deny` on a resource that is not
//!   RACCT_DENIABLE but for memoryuse/pcpu (kern_rctl.c rctl_rule_add); `openfiles` is the
//!   jail's sum of descriptor-table sizes, so forks past it fail (kern_descrip.c fdalloc).
//! - devfs: rulesets 1-5 loaded as at boot; mounting an unloaded one creates it empty
//!   (devfs_rule.c devfs_ruleset_use).
//!
//! Stricter than the kernel (documented deviations): a mount point must be a real
//! directory, not a symlink (the real nmount follows it, which is never what we want);
//! rollback is refused (EBUSY) while something is mounted beneath the dataset; jail_set
//! knows only the parameters every FreeBSD 14.x host of this backend has (see
//! [`JAIL_PARAM_TYPES`]), not those a loadable module or a newer release adds.
//!
//! Datasets are real directories under a temporary directory, so unpacking and output
//! reads really happen: a snapshot or clone copies the tree, a rollback copies it back,
//! and a mount moves the dataset's directory onto the mount point (the mount point's own
//! content is set aside and put back at unmount).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::backend::{BuildUser, ExecOutcome, ExitStatus, Limits};
use crate::exec::{CancelToken, CommandSpec, ExecError, PreparedCommand, SetupStep};

use super::kernel::{
    kill_jail, ExecPlan, JailInfo, JailParam, JailParams, KResult, Kernel, KernelError, ZfsProp,
};

/// What a fake program sees: the container root on the host, the command, the user, and
/// the plan the child would have followed before execve.
pub struct FakeExec<'a> {
    pub root: &'a Path,
    pub command: &'a CommandSpec,
    pub user: BuildUser,
    pub limits: &'a Limits,
    pub plan: &'a ExecPlan,
}

/// The type of a jail_set(2) parameter, as the kernel reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JailParamType {
    /// vfs_copyopt(opts, name, &int, sizeof(int)): exactly 4 bytes, else EINVAL.
    Int,
    /// vfs_getopt + a NUL-terminated check (`len == 0 || s[len - 1] != '\0'`: EINVAL).
    Str,
    /// vfs_flagopt on the name and on its "no" form (`allow.noX`, `allow.mount.noX`,
    /// `nopersist`), by name only.
    Bool,
}

/// Every jail_set(2) parameter the fake accepts, with its type: kern_jail.c kern_jail_set
/// (the vfs_copyopt/vfs_getopt calls, `pr_flag_bool`, `pr_flag_jailsys` and, as of 13.0,
/// `pr_flag_allow`, so every 14.x kernel has them) plus the two `allow.mount.*` every host
/// of this backend registers (devfs, and zfs: OpenZFS `VFS_SET(zfs_vfsops, zfs, ...
/// VFCF_JAIL ...)`, vfs_register -> prison_add_vfs). Anything else the kernel does not
/// consume is refused after the checks: "unknown parameter: %s", EINVAL.
pub const JAIL_PARAM_TYPES: &[(&str, JailParamType)] = &[
    ("jid", JailParamType::Int),
    ("name", JailParamType::Str),
    ("path", JailParamType::Str),
    ("host.hostname", JailParamType::Str),
    ("host.domainname", JailParamType::Str),
    ("host.hostuuid", JailParamType::Str),
    ("osrelease", JailParamType::Str),
    ("osreldate", JailParamType::Int),
    ("securelevel", JailParamType::Int),
    ("enforce_statfs", JailParamType::Int),
    ("children.max", JailParamType::Int),
    ("devfs_ruleset", JailParamType::Int),
    // pr_flag_jailsys: JAIL_SYS_DISABLE / NEW / INHERIT, as an int.
    ("host", JailParamType::Int),
    ("ip4", JailParamType::Int),
    ("ip6", JailParamType::Int),
    ("vnet", JailParamType::Int),
    // pr_flag_bool.
    ("persist", JailParamType::Bool),
    ("ip4.saddrsel", JailParamType::Bool),
    ("ip6.saddrsel", JailParamType::Bool),
    // pr_flag_allow (13.0).
    ("allow.set_hostname", JailParamType::Bool),
    ("allow.sysvipc", JailParamType::Bool),
    ("allow.raw_sockets", JailParamType::Bool),
    ("allow.chflags", JailParamType::Bool),
    ("allow.mount", JailParamType::Bool),
    ("allow.quotas", JailParamType::Bool),
    ("allow.socket_af", JailParamType::Bool),
    ("allow.mlock", JailParamType::Bool),
    ("allow.reserved_ports", JailParamType::Bool),
    ("allow.read_msgbuf", JailParamType::Bool),
    ("allow.unprivileged_proc_debug", JailParamType::Bool),
    ("allow.suser", JailParamType::Bool),
    // prison_add_vfs: "allow.mount.<fs>" / "allow.mount.no<fs>".
    ("allow.mount.devfs", JailParamType::Bool),
    ("allow.mount.zfs", JailParamType::Bool),
];

/// The parameter `name` names and its type; for a boolean, whether it is the "no" form.
fn jail_param_type(name: &str) -> Option<(JailParamType, bool)> {
    let find = |n: &str| {
        JAIL_PARAM_TYPES
            .iter()
            .find(|(k, _)| *k == n)
            .map(|(_, t)| *t)
    };
    if let Some(t) = find(name) {
        return Some((t, false));
    }
    // The "no" form puts "no" before the last component (kern_jail.c prison_add_allow:
    // "allow.%s.no%s"; pr_flag_bool/pr_flag_allow: "nopersist", "allow.noX").
    let (head, last) = match name.rfind('.') {
        Some(i) => (&name[..=i], &name[i + 1..]),
        None => ("", name),
    };
    let base = format!("{head}{}", last.strip_prefix("no")?);
    match find(&base) {
        Some(JailParamType::Bool) => Some((JailParamType::Bool, true)),
        _ => None,
    }
}

/// What a fake program did.
#[derive(Clone, Debug, Default)]
pub struct FakeRun {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Ran past the timeout: the fake kills the jail, as the real supervisor does.
    pub hang: bool,
    /// Processes it left running in the jail (daemons); only jail_remove ends them.
    pub left_running: u32,
    /// Size its descriptor table grows to (0: NDFILE, the initial size); the kernel caps
    /// it at RLIMIT_NOFILE (kern_descrip.c fdalloc: `min(fd * 2, maxfd)`).
    pub fd_table: u64,
    /// Children it forks while its table has that size: each inherits the table, and
    /// with it the table's RACCT_NOFILE charge (RACCT_INHERITABLE, kern_racct.c).
    pub forks: u32,
    /// With `hang`: processes it forks while the timeout kill runs (they escape
    /// jail_remove's kill pass, see [`FakeJail::escaping`]).
    pub escapes_kill: u32,
}

impl FakeRun {
    pub fn exit(code: i32) -> FakeRun {
        FakeRun {
            exit_code: code,
            ..FakeRun::default()
        }
    }
}

type Program = Arc<dyn Fn(&FakeExec<'_>) -> FakeRun + Send + Sync>;

#[derive(Debug)]
struct Dataset {
    backing: PathBuf,
    /// Snapshot this dataset was cloned from.
    origin: Option<String>,
    /// Its snapshots' full names, oldest first.
    snapshots: Vec<String>,
    mounted_at: Option<PathBuf>,
    props: Vec<ZfsProp>,
}

#[derive(Debug)]
struct Snapshot {
    backing: PathBuf,
    clones: BTreeSet<String>,
    defer_destroy: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FakeMountKind {
    Zfs(String),
    Devfs(u16),
}

#[derive(Debug)]
struct Mount {
    fspath: PathBuf,
    kind: FakeMountKind,
    /// Where the mount point's own content was set aside.
    stash: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeJail {
    pub jid: i32,
    pub params: JailParams,
    /// The jail_set(2) parameters it was created with, in order.
    pub jail_set: Vec<JailParam>,
    pub alive: bool,
    /// Processes running in it.
    pub processes: u32,
    /// Of those, how many are being forked when jail_remove's kill pass runs: it skips
    /// them (`p_state == PRS_NEW`, kern_jail.c), so they survive it.
    pub escaping: u32,
    /// The exec'd child (supervised) is one of `processes` and not yet killed.
    pub child_alive: bool,
}

struct Fault {
    pattern: String,
    /// 1-based index of the matching call that fails; 0 = every matching call.
    nth: usize,
    seen: usize,
    errno: i32,
}

struct State {
    datasets: BTreeMap<String, Dataset>,
    snapshots: BTreeMap<String, Snapshot>,
    mounts: Vec<Mount>,
    jails: BTreeMap<i32, FakeJail>,
    next_jid: i32,
    next_backing: u64,
    calls: Vec<String>,
    /// The thread that made each of `calls` (same index): tells a build's own calls (its
    /// critical path) from the recycler's.
    callers: Vec<std::thread::ThreadId>,
    faults: Vec<Fault>,
    programs: HashMap<String, Program>,
    /// The plan of every exec, in order.
    plans: Vec<ExecPlan>,
    /// kern.racct.enable; off by default (as in GENERIC before 13: RACCT_DEFAULT_TO_DISABLED).
    racct: bool,
    /// rctl rules in force, as added.
    rules: BTreeSet<String>,
    /// Loaded devfs rulesets and their number of rules.
    devfs_rulesets: BTreeMap<u16, u32>,
}

/// The in-memory kernel. Cheap to share: `Arc<FakeKernel>` implements [`Kernel`] too.
pub struct FakeKernel {
    dir: ScratchDir,
    state: Mutex<State>,
}

/// A temporary directory removed on drop (the fake is a library type, so it does not
/// depend on the `tempfile` dev-dependency).
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> io::Result<ScratchDir> {
        let p = std::env::temp_dir().join(format!("jb-fake-{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir(&p)?;
        Ok(ScratchDir(p))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn zerr(op: &'static str, name: &str, errno: i32) -> KernelError {
    KernelError::Zfs {
        op,
        name: name.to_string(),
        errno,
        detail: String::new(),
    }
}

fn parent_of(name: &str) -> Option<&str> {
    name.rfind('/').map(|i| &name[..i])
}

/// Copies a directory tree without following symlinks.
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir(to)?;
    fs::set_permissions(to, fs::metadata(from)?.permissions())?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let meta = fs::symlink_metadata(&src)?;
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
        } else if meta.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

fn empty_dir(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let p = entry?.path();
        if fs::symlink_metadata(&p)?.is_dir() {
            fs::remove_dir_all(&p)?;
        } else {
            fs::remove_file(&p)?;
        }
    }
    Ok(())
}

fn io_errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// rctl resource names (kern_rctl.c `resourcenames`) and whether the resource
/// is RACCT_DENIABLE (kern_racct.c `racct_types`).
const RCTL_RESOURCES: [(&str, bool); 25] = [
    ("cputime", false),
    ("datasize", true),
    ("stacksize", true),
    ("coredumpsize", true),
    ("memoryuse", false),
    ("memorylocked", true),
    ("maxproc", true),
    ("openfiles", true),
    ("vmemoryuse", true),
    ("pseudoterminals", true),
    ("swapuse", true),
    ("nthr", true),
    ("msgqqueued", true),
    ("msgqsize", true),
    ("nmsgq", true),
    ("nsem", true),
    ("nsemop", true),
    ("nshm", true),
    ("shmsize", true),
    ("wallclock", false),
    ("pcpu", true),
    ("readbps", false),
    ("writebps", false),
    ("readiops", false),
    ("writeiops", false),
];

/// NDFILE (sys/sys/filedesc.h): the descriptor table a process starts with.
const NDFILE: u64 = 20;

impl Default for FakeKernel {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    /// Logs one call, with the thread that made it.
    fn record(&mut self, line: String) {
        self.calls.push(line);
        self.callers.push(std::thread::current().id());
    }
}

impl FakeKernel {
    /// A fake with one pool, `pool`, and no jails.
    pub fn new() -> FakeKernel {
        let dir = ScratchDir::new().expect("scratch directory for FakeKernel");
        fs::create_dir(dir.path().join("store")).expect("FakeKernel store");
        let fake = FakeKernel {
            dir,
            state: Mutex::new(State {
                datasets: BTreeMap::new(),
                snapshots: BTreeMap::new(),
                mounts: Vec::new(),
                jails: BTreeMap::new(),
                next_jid: 1,
                next_backing: 0,
                calls: Vec::new(),
                callers: Vec::new(),
                faults: Vec::new(),
                programs: HashMap::new(),
                plans: Vec::new(),
                racct: false,
                rules: BTreeSet::new(),
                // As /etc/rc.d/devfs loads /etc/defaults/devfs.rules: 1 devfsrules_hide_all,
                // 2 devfsrules_unhide_basic, 3 devfsrules_unhide_login, 4 devfsrules_jail
                // (three includes and two paths), 5 devfsrules_jail_vnet.
                devfs_rulesets: BTreeMap::from([(1, 1), (2, 10), (3, 8), (4, 5), (5, 6)]),
            }),
        };
        {
            let mut st = fake.lock();
            let backing = fake.new_backing(&mut st);
            fs::create_dir(&backing).expect("pool dir");
            st.datasets.insert(
                "pool".into(),
                Dataset {
                    backing,
                    origin: None,
                    snapshots: Vec::new(),
                    mounted_at: None,
                    props: Vec::new(),
                },
            );
        }
        fake
    }

    /// A scratch directory for the test (mount roots live here); shown as `$T` in the log.
    pub fn base(&self) -> &Path {
        self.dir.path()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn new_backing(&self, st: &mut State) -> PathBuf {
        st.next_backing += 1;
        self.dir
            .path()
            .join("store")
            .join(st.next_backing.to_string())
    }

    fn show(&self, p: &Path) -> String {
        match p.strip_prefix(self.dir.path()) {
            Ok(rel) => format!("$T/{}", rel.display()),
            Err(_) => p.display().to_string(),
        }
    }

    // ---- test API ----

    /// Registers a program: exec of `path` inside any jail runs `f`.
    pub fn register_program(
        &self,
        path: &str,
        f: impl Fn(&FakeExec<'_>) -> FakeRun + Send + Sync + 'static,
    ) {
        self.lock().programs.insert(path.to_string(), Arc::new(f));
    }

    /// The `nth` (1-based) call whose log line starts with `pattern` fails with `errno`
    /// (without changing any state); `nth` = 0 makes every such call fail.
    pub fn fail_on(&self, pattern: &str, nth: usize, errno: i32) {
        self.lock().faults.push(Fault {
            pattern: pattern.to_string(),
            nth,
            seen: 0,
            errno,
        });
    }

    /// Turns resource accounting (kern.racct.enable) on or off.
    pub fn set_racct(&self, on: bool) {
        self.lock().racct = on;
    }

    /// Loads devfs ruleset `ruleset` with `rules` rules (`None`: unloads it).
    pub fn set_devfs_ruleset(&self, ruleset: u16, rules: Option<u32>) {
        let mut st = self.lock();
        match rules {
            Some(n) => st.devfs_rulesets.insert(ruleset, n),
            None => st.devfs_rulesets.remove(&ruleset),
        };
    }

    /// The rctl rules in force, sorted.
    pub fn rctl_rules(&self) -> Vec<String> {
        self.lock().rules.iter().cloned().collect()
    }

    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// Returns the calls so far and clears the log.
    pub fn take_calls(&self) -> Vec<String> {
        let mut st = self.lock();
        st.callers.clear();
        std::mem::take(&mut st.calls)
    }

    /// Every call so far made by `thread`, in order.
    pub fn calls_by(&self, thread: std::thread::ThreadId) -> Vec<String> {
        let st = self.lock();
        st.calls
            .iter()
            .zip(&st.callers)
            .filter(|(_, t)| **t == thread)
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// Names of all datasets (not snapshots), sorted; includes `pool`.
    pub fn datasets(&self) -> Vec<String> {
        self.lock().datasets.keys().cloned().collect()
    }

    /// Full names of all snapshots, sorted.
    pub fn snapshots(&self) -> Vec<String> {
        self.lock().snapshots.keys().cloned().collect()
    }

    /// Snapshots marked for deferred destruction (they still have clones).
    pub fn deferred_snapshots(&self) -> Vec<String> {
        let st = self.lock();
        st.snapshots
            .iter()
            .filter(|(_, s)| s.defer_destroy)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The properties `name` was created with.
    pub fn props(&self, name: &str) -> Vec<ZfsProp> {
        self.lock()
            .datasets
            .get(name)
            .map(|d| d.props.clone())
            .unwrap_or_default()
    }

    /// Current mounts, in mount order.
    pub fn mounts(&self) -> Vec<(PathBuf, FakeMountKind)> {
        self.lock()
            .mounts
            .iter()
            .map(|m| (m.fspath.clone(), m.kind.clone()))
            .collect()
    }

    /// The plan of every exec so far, in order (also those refused before the program ran).
    pub fn exec_plans(&self) -> Vec<ExecPlan> {
        self.lock().plans.clone()
    }

    /// Checks a jail_set(2) JAIL_CREATE parameter list as kern_jail_set does:
    /// Err((errno, errmsg)) as the kernel would fail. (The kernel reports an unknown name
    /// only after its name and path checks; the fake checks the list first.)
    /// - a value of the wrong type or size: EINVAL (vfs_copyopt returns EINVAL when the
    ///   length is not sizeof(int); a string must be NUL-terminated; a boolean has no value);
    /// - no `persist`: EINVAL "new jail must persist or attach";
    /// - `enforce_statfs` outside 0..=2, `devfs_ruleset` outside 0..=65535: EINVAL;
    /// - `securelevel` below the parent's (the host's, -1 by default: prison0): EPERM;
    /// - a name nothing consumed: EINVAL "unknown parameter: <name>" (the loop over
    ///   `opt->seen` at the end of the checks).
    pub fn check_jail_set(params: &[JailParam]) -> Result<(), (i32, String)> {
        let mut persist = false;
        let mut unknown = None;
        for p in params {
            let Some((ty, no)) = jail_param_type(p.name()) else {
                unknown.get_or_insert(p.name());
                continue;
            };
            match (ty, p) {
                (JailParamType::Int, JailParam::Int(n, v)) => {
                    let bad = match *n {
                        "enforce_statfs" => !(0..=2).contains(v),
                        "devfs_ruleset" => !(0..=65535).contains(v),
                        _ => false,
                    };
                    if bad {
                        return Err((libc::EINVAL, String::new()));
                    }
                    if *n == "securelevel" && *v < -1 {
                        return Err((libc::EPERM, String::new()));
                    }
                }
                (JailParamType::Str, JailParam::Str(_, v)) if !v.contains(&0) => {}
                (JailParamType::Bool, JailParam::Flag(n)) => {
                    if *n == "persist" && !no {
                        persist = true;
                    }
                }
                _ => return Err((libc::EINVAL, String::new())),
            }
        }
        if !persist {
            return Err((libc::EINVAL, "new jail must persist or attach".into()));
        }
        if let Some(name) = unknown {
            return Err((libc::EINVAL, format!("unknown parameter: {name}")));
        }
        Ok(())
    }

    /// Jails, alive or dying.
    pub fn jails(&self) -> Vec<FakeJail> {
        self.lock().jails.values().cloned().collect()
    }

    /// Live jails.
    pub fn live_jails(&self) -> Vec<FakeJail> {
        self.jails().into_iter().filter(|j| j.alive).collect()
    }

    /// Creates a dataset directly (test set-up), like `zfs create`; not logged.
    pub fn add_dataset(&self, name: &str) -> KResult<()> {
        self.create_inner(name, &[], false)
    }

    // ---- internals ----

    /// Logs `line`; fails if an injected fault matches.
    fn enter(&self, st: &mut State, line: String) -> Result<(), i32> {
        let mut fail = None;
        for f in st.faults.iter_mut() {
            if line.starts_with(&f.pattern) {
                f.seen += 1;
                if f.nth == 0 || f.seen == f.nth {
                    fail = Some(f.errno);
                    break;
                }
            }
        }
        match fail {
            Some(errno) => {
                st.record(format!("{line} -> injected errno {errno}"));
                Err(errno)
            }
            None => {
                st.record(line);
                Ok(())
            }
        }
    }

    fn content_dir(ds: &Dataset) -> PathBuf {
        ds.mounted_at.clone().unwrap_or_else(|| ds.backing.clone())
    }

    fn create_inner(&self, name: &str, props: &[ZfsProp], log: bool) -> KResult<()> {
        let mut st = self.lock();
        if log {
            self.enter(&mut st, format!("create {name}"))
                .map_err(|e| zerr("create", name, e))?;
        }
        if name.contains('@') || name.is_empty() {
            return Err(zerr("create", name, libc::EINVAL));
        }
        if st.datasets.contains_key(name) {
            return Err(zerr("create", name, libc::EEXIST));
        }
        match parent_of(name) {
            Some(p) if st.datasets.contains_key(p) => {}
            _ => return Err(zerr("create", name, libc::ENOENT)),
        }
        let backing = self.new_backing(&mut st);
        fs::create_dir(&backing).map_err(|e| zerr("create", name, io_errno(&e)))?;
        st.datasets.insert(
            name.to_string(),
            Dataset {
                backing,
                origin: None,
                snapshots: Vec::new(),
                mounted_at: None,
                props: props.to_vec(),
            },
        );
        Ok(())
    }

    fn remove_snapshot(st: &mut State, snap: &str) {
        if let Some(s) = st.snapshots.remove(snap) {
            let _ = fs::remove_dir_all(&s.backing);
        }
        if let Some((fs_name, _)) = snap.split_once('@') {
            if let Some(ds) = st.datasets.get_mut(fs_name) {
                ds.snapshots.retain(|s| s != snap);
            }
        }
    }

    fn mount_inner(&self, st: &mut State, fspath: &Path, kind: FakeMountKind) -> Result<(), i32> {
        match fs::symlink_metadata(fspath) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(libc::ENOTDIR),
            Err(e) => return Err(io_errno(&e)),
        }
        if st.mounts.iter().any(|m| m.fspath == fspath) {
            return Err(libc::EBUSY);
        }
        let stash = self.new_backing(st);
        fs::rename(fspath, &stash).map_err(|e| io_errno(&e))?;
        let result = match &kind {
            FakeMountKind::Zfs(ds) => {
                let backing = st.datasets[ds].backing.clone();
                fs::rename(&backing, fspath)
            }
            FakeMountKind::Devfs(_) => {
                fs::create_dir(fspath).and_then(|()| fs::write(fspath.join("null"), b""))
            }
        };
        if let Err(e) = result {
            let _ = fs::rename(&stash, fspath);
            return Err(io_errno(&e));
        }
        if let FakeMountKind::Zfs(ds) = &kind {
            if let Some(d) = st.datasets.get_mut(ds) {
                d.mounted_at = Some(fspath.to_path_buf());
            }
        }
        st.mounts.push(Mount {
            fspath: fspath.to_path_buf(),
            kind,
            stash,
        });
        Ok(())
    }

    /// RACCT_NOFILE of a jail is the sum of its processes' descriptor-table sizes
    /// (kern_descrip.c fdalloc sets it to the table size; racct_proc_fork copies an
    /// inheritable resource to the child and charges the jail; kern_racct.c
    /// racct_add_cred_locked sums over the prison). True when the program's forks push the
    /// sum over the jail's `openfiles` deny rule.
    fn fork_denied_by_openfiles(
        st: &State,
        jail: &str,
        (fd_table, forks): (u64, u32),
        limits: &Limits,
    ) -> bool {
        if forks == 0 {
            return false;
        }
        let prefix = format!("jail:{jail}:openfiles:deny=");
        let Some(amount) = st
            .rules
            .iter()
            .find_map(|r| r.strip_prefix(&prefix).and_then(|n| n.parse::<u64>().ok()))
        else {
            return false;
        };
        let mut table = fd_table.max(NDFILE);
        if limits.max_open_files > 0 {
            table = table.min(limits.max_open_files);
        }
        table.saturating_mul(1 + u64::from(forks)) > amount
    }

    fn kill_jail(st: &mut State, jid: i32) {
        if let Some(j) = st.jails.get_mut(&jid) {
            j.alive = false;
            j.processes = 0;
        }
    }
}

impl Kernel for FakeKernel {
    fn zfs_create(&self, name: &str, props: &[ZfsProp]) -> KResult<()> {
        self.create_inner(name, props, true)
    }

    fn zfs_clone(&self, fs_name: &str, origin: &str, props: &[ZfsProp]) -> KResult<()> {
        let mut st = self.lock();
        self.enter(&mut st, format!("clone {fs_name} <- {origin}"))
            .map_err(|e| zerr("clone", fs_name, e))?;
        if st.datasets.contains_key(fs_name) {
            return Err(zerr("clone", fs_name, libc::EEXIST));
        }
        match parent_of(fs_name) {
            Some(p) if st.datasets.contains_key(p) => {}
            _ => return Err(zerr("clone", fs_name, libc::ENOENT)),
        }
        let Some(snap) = st.snapshots.get(origin) else {
            return Err(zerr("clone", fs_name, libc::ENOENT));
        };
        if snap.defer_destroy {
            // A snapshot marked for deferred destroy cannot get new clones.
            return Err(zerr("clone", fs_name, libc::ENOENT));
        }
        let from = snap.backing.clone();
        let backing = self.new_backing(&mut st);
        copy_tree(&from, &backing).map_err(|e| zerr("clone", fs_name, io_errno(&e)))?;
        if let Some(s) = st.snapshots.get_mut(origin) {
            s.clones.insert(fs_name.to_string());
        }
        st.datasets.insert(
            fs_name.to_string(),
            Dataset {
                backing,
                origin: Some(origin.to_string()),
                snapshots: Vec::new(),
                mounted_at: None,
                props: props.to_vec(),
            },
        );
        Ok(())
    }

    fn zfs_snapshot(&self, snaps: &[String]) -> KResult<()> {
        let mut st = self.lock();
        let first = snaps.first().cloned().unwrap_or_default();
        self.enter(&mut st, format!("snapshot {}", snaps.join(",")))
            .map_err(|e| zerr("snapshot", &first, e))?;
        // All or nothing, as one txg.
        for s in snaps {
            let Some((fs_name, short)) = s.split_once('@') else {
                return Err(zerr("snapshot", s, libc::EINVAL));
            };
            if short.is_empty() || !st.datasets.contains_key(fs_name) {
                return Err(zerr("snapshot", s, libc::ENOENT));
            }
            if st.snapshots.contains_key(s) {
                return Err(zerr("snapshot", s, libc::EEXIST));
            }
        }
        for s in snaps {
            let (fs_name, _) = s.split_once('@').unwrap_or_default();
            let from = Self::content_dir(&st.datasets[fs_name]);
            let backing = self.new_backing(&mut st);
            copy_tree(&from, &backing).map_err(|e| zerr("snapshot", s, io_errno(&e)))?;
            st.snapshots.insert(
                s.clone(),
                Snapshot {
                    backing,
                    clones: BTreeSet::new(),
                    defer_destroy: false,
                },
            );
            if let Some(d) = st.datasets.get_mut(fs_name) {
                d.snapshots.push(s.clone());
            }
        }
        Ok(())
    }

    fn zfs_rollback_to(&self, fs_name: &str, snap: &str) -> KResult<()> {
        let mut st = self.lock();
        self.enter(&mut st, format!("rollback {fs_name} -> {snap}"))
            .map_err(|e| zerr("rollback", fs_name, e))?;
        let Some(ds) = st.datasets.get(fs_name) else {
            return Err(zerr("rollback", fs_name, libc::ENOENT));
        };
        if !ds.snapshots.iter().any(|s| s == snap) {
            return Err(zerr("rollback", fs_name, libc::ENOENT));
        }
        if ds.snapshots.last().map(String::as_str) != Some(snap) {
            return Err(zerr("rollback", fs_name, libc::EXDEV));
        }
        let content = Self::content_dir(ds);
        if ds.mounted_at.is_some()
            && st
                .mounts
                .iter()
                .any(|m| m.fspath != content && m.fspath.starts_with(&content))
        {
            return Err(zerr("rollback", fs_name, libc::EBUSY));
        }
        let from = st.snapshots[snap].backing.clone();
        let tmp = self.new_backing(&mut st);
        copy_tree(&from, &tmp).map_err(|e| zerr("rollback", fs_name, io_errno(&e)))?;
        empty_dir(&content).map_err(|e| zerr("rollback", fs_name, io_errno(&e)))?;
        for entry in fs::read_dir(&tmp).map_err(|e| zerr("rollback", fs_name, io_errno(&e)))? {
            let entry = entry.map_err(|e| zerr("rollback", fs_name, io_errno(&e)))?;
            fs::rename(entry.path(), content.join(entry.file_name()))
                .map_err(|e| zerr("rollback", fs_name, io_errno(&e)))?;
        }
        let _ = fs::remove_dir_all(&tmp);
        Ok(())
    }

    fn zfs_destroy(&self, name: &str) -> KResult<()> {
        let mut st = self.lock();
        self.enter(&mut st, format!("destroy {name}"))
            .map_err(|e| zerr("destroy", name, e))?;
        let Some(ds) = st.datasets.get(name) else {
            return Err(zerr("destroy", name, libc::ENOENT));
        };
        let child_prefix = format!("{name}/");
        if ds.mounted_at.is_some()
            || !ds.snapshots.is_empty()
            || st.datasets.keys().any(|k| k.starts_with(&child_prefix))
        {
            return Err(zerr("destroy", name, libc::EBUSY));
        }
        let ds = st.datasets.remove(name).expect("checked above");
        let _ = fs::remove_dir_all(&ds.backing);
        if let Some(origin) = ds.origin {
            let mut gone = false;
            if let Some(s) = st.snapshots.get_mut(&origin) {
                s.clones.remove(name);
                gone = s.clones.is_empty() && s.defer_destroy;
            }
            if gone {
                Self::remove_snapshot(&mut st, &origin);
            }
        }
        Ok(())
    }

    fn zfs_destroy_snaps(&self, snaps: &[String], defer: bool) -> KResult<()> {
        let mut st = self.lock();
        let first = snaps.first().cloned().unwrap_or_default();
        let line = format!(
            "destroy_snaps {}{}",
            snaps.join(","),
            if defer { " defer" } else { "" }
        );
        self.enter(&mut st, line)
            .map_err(|e| zerr("destroy_snaps", &first, e))?;
        for s in snaps {
            if let Some(snap) = st.snapshots.get(s) {
                if !snap.clones.is_empty() && !defer {
                    return Err(zerr("destroy_snaps", s, libc::EBUSY));
                }
            }
        }
        // lzc_destroy_snaps ignores snapshots that do not exist.
        for s in snaps {
            let has_clones = match st.snapshots.get_mut(s) {
                Some(snap) if !snap.clones.is_empty() => {
                    snap.defer_destroy = true;
                    true
                }
                Some(_) => false,
                None => continue,
            };
            if !has_clones {
                Self::remove_snapshot(&mut st, s);
            }
        }
        Ok(())
    }

    fn zfs_exists(&self, name: &str) -> bool {
        let mut st = self.lock();
        if self.enter(&mut st, format!("exists {name}")).is_err() {
            return false;
        }
        st.datasets.contains_key(name) || st.snapshots.contains_key(name)
    }

    fn mount_zfs(&self, dataset: &str, fspath: &Path) -> KResult<()> {
        let mut st = self.lock();
        let err = |errno| KernelError::Nmount {
            fspath: fspath.to_path_buf(),
            fstype: "zfs",
            errno,
            errmsg: String::new(),
        };
        self.enter(
            &mut st,
            format!("nmount zfs {dataset} on {}", self.show(fspath)),
        )
        .map_err(err)?;
        match st.datasets.get(dataset) {
            None => return Err(err(libc::ENOENT)),
            Some(d) if d.mounted_at.is_some() => return Err(err(libc::EBUSY)),
            Some(_) => {}
        }
        self.mount_inner(&mut st, fspath, FakeMountKind::Zfs(dataset.to_string()))
            .map_err(err)
    }

    fn mount_devfs(&self, fspath: &Path, ruleset: u16) -> KResult<()> {
        let mut st = self.lock();
        let err = |errno| KernelError::Nmount {
            fspath: fspath.to_path_buf(),
            fstype: "devfs",
            errno,
            errmsg: String::new(),
        };
        self.enter(
            &mut st,
            format!("nmount devfs ruleset={ruleset} on {}", self.show(fspath)),
        )
        .map_err(err)?;
        self.mount_inner(&mut st, fspath, FakeMountKind::Devfs(ruleset))
            .map_err(err)?;
        // devfs_rule.c devfs_ruleset_use: a ruleset that does not exist is created, empty.
        if ruleset != 0 {
            st.devfs_rulesets.entry(ruleset).or_insert(0);
        }
        Ok(())
    }

    fn unmount(&self, fspath: &Path, force: bool) -> KResult<()> {
        let mut st = self.lock();
        let err = |errno| KernelError::Unmount {
            fspath: fspath.to_path_buf(),
            errno,
        };
        let flag = if force { "-f " } else { "" };
        self.enter(&mut st, format!("unmount {flag}{}", self.show(fspath)))
            .map_err(err)?;
        let Some(idx) = st.mounts.iter().position(|m| m.fspath == fspath) else {
            return Err(err(libc::EINVAL));
        };
        if st
            .mounts
            .iter()
            .any(|m| m.fspath != fspath && m.fspath.starts_with(fspath))
        {
            return Err(err(libc::EBUSY));
        }
        if !force && st.jails.values().any(|j| j.params.path.starts_with(fspath)) {
            // A jail, even a dying one, holds its root vnode (pr_root).
            return Err(err(libc::EBUSY));
        }
        let m = st.mounts.remove(idx);
        let result = match &m.kind {
            FakeMountKind::Zfs(ds) => {
                let backing = st.datasets[ds].backing.clone();
                fs::rename(fspath, backing)
            }
            FakeMountKind::Devfs(_) => fs::remove_dir_all(fspath),
        }
        .and_then(|()| fs::rename(&m.stash, fspath));
        if let FakeMountKind::Zfs(ds) = &m.kind {
            if let Some(d) = st.datasets.get_mut(ds) {
                d.mounted_at = None;
            }
        }
        result.map_err(|e| err(io_errno(&e)))
    }

    fn jail_create(&self, p: &JailParams) -> KResult<i32> {
        let mut st = self.lock();
        let err = |errno, errmsg: &str| KernelError::JailSet {
            name: p.name.clone(),
            errno,
            errmsg: errmsg.to_string(),
        };
        self.enter(
            &mut st,
            format!("jail_set create {} path={}", p.name, self.show(&p.path)),
        )
        .map_err(|e| err(e, ""))?;
        let jail_set = p.jail_set_params();
        Self::check_jail_set(&jail_set).map_err(|(errno, msg)| err(errno, &msg))?;
        if p.name.contains('.') || p.name.parse::<i64>().is_ok() || p.name.is_empty() {
            return Err(err(libc::EINVAL, "bad name"));
        }
        if st
            .jails
            .values()
            .any(|j| j.alive && j.params.name == p.name)
        {
            return Err(err(
                libc::EEXIST,
                &format!("jail \"{}\" already exists", p.name),
            ));
        }
        if !p.path.is_dir() {
            return Err(err(libc::ENOENT, ""));
        }
        // kern_jail.c kern_jail_set: the path is looked up with namei(FOLLOW) and stored
        // as vn_path_to_global_path made it: resolved, as jail_get(2) then reports it.
        let resolved = fs::canonicalize(&p.path).map_err(|e| err(io_errno(&e), ""))?;
        let jid = st.next_jid;
        st.next_jid += 1;
        st.jails.insert(
            jid,
            FakeJail {
                jid,
                params: JailParams {
                    path: resolved,
                    ..p.clone()
                },
                jail_set,
                alive: true,
                processes: 0,
                escaping: 0,
                child_alive: false,
            },
        );
        Ok(jid)
    }

    fn jail_remove(&self, jid: i32) -> KResult<()> {
        let mut st = self.lock();
        self.enter(&mut st, format!("jail_remove {jid}"))
            .map_err(|errno| KernelError::JailRemove { jid, errno })?;
        match st.jails.get(&jid) {
            None => Err(KernelError::JailRemove {
                jid,
                errno: libc::EINVAL,
            }),
            // sys_jail_remove: "Silently ignore already-dying prisons": no second kill.
            Some(j) if !j.alive => Ok(()),
            Some(_) => {
                let j = st.jails.get_mut(&jid).expect("checked above");
                // kern_jail.c prison_remove_one SIGKILLs every process of the jail
                // but those still being forked (PRS_NEW).
                j.alive = false;
                j.processes = j.escaping;
                j.escaping = 0;
                j.child_alive = false;
                Ok(())
            }
        }
    }

    fn jail_kill_processes(&self, jid: i32) -> KResult<u32> {
        let mut st = self.lock();
        self.enter(&mut st, format!("jail_kill_processes {jid}"))
            .map_err(|errno| KernelError::JailKill { jid, errno })?;
        Ok(match st.jails.get_mut(&jid) {
            Some(j) => {
                let n = j.processes;
                j.processes = 0;
                j.escaping = 0;
                j.child_alive = false;
                n
            }
            None => 0,
        })
    }

    fn devfs_ruleset_rules(&self, ruleset: u16) -> KResult<Option<u32>> {
        let mut st = self.lock();
        self.enter(&mut st, format!("devfs_ruleset_rules {ruleset}"))
            .map_err(|errno| KernelError::Devfs {
                op: "DEVFSIO_SGETNEXT",
                ruleset,
                errno,
            })?;
        Ok(st.devfs_rulesets.get(&ruleset).copied())
    }

    fn jail_wait_gone(&self, jid: i32, timeout: Duration) -> KResult<()> {
        let mut st = self.lock();
        self.enter(&mut st, format!("jail_wait_gone {jid}"))
            .map_err(|_| KernelError::JailDying {
                jid,
                waited_ms: timeout.as_millis() as u64,
            })?;
        match st.jails.get(&jid) {
            Some(j) if j.alive => Err(KernelError::JailDying {
                jid,
                waited_ms: timeout.as_millis() as u64,
            }),
            _ => {
                st.jails.remove(&jid);
                Ok(())
            }
        }
    }

    fn jail_find(&self, name: &str) -> KResult<Option<i32>> {
        let mut st = self.lock();
        self.enter(&mut st, format!("jail_find {name}"))
            .map_err(|errno| KernelError::JailGet {
                what: name.to_string(),
                errno,
                errmsg: String::new(),
            })?;
        Ok(st
            .jails
            .values()
            .find(|j| j.alive && j.params.name == name)
            .map(|j| j.jid))
    }

    fn jail_list(&self) -> KResult<Vec<JailInfo>> {
        let mut st = self.lock();
        self.enter(&mut st, "jail_list".to_string())
            .map_err(|errno| KernelError::JailGet {
                what: "lastjid".into(),
                errno,
                errmsg: String::new(),
            })?;
        Ok(st
            .jails
            .values()
            .filter(|j| j.alive)
            .map(|j| JailInfo {
                jid: j.jid,
                name: j.params.name.clone(),
                path: j.params.path.clone(),
            })
            .collect())
    }

    /// A program that "hangs" (`FakeRun::hang`) and is cancelled ends as cancelled rather
    /// than timed out; a token cancelled before the call stops it before the program runs.
    fn exec(
        &self,
        plan: &ExecPlan,
        command: &PreparedCommand,
        limits: &Limits,
        cancel: Option<&CancelToken>,
    ) -> KResult<ExecOutcome> {
        self.exec_inner(plan, command, limits, cancel)
    }

    fn racct_enabled(&self) -> bool {
        self.lock().racct
    }

    fn rctl_add_rule(&self, rule: &str) -> KResult<()> {
        let mut st = self.lock();
        let err = |errno| KernelError::Rctl {
            op: "rctl_add_rule",
            rule: rule.to_string(),
            errno,
        };
        self.enter(&mut st, format!("rctl_add_rule {rule}"))
            .map_err(err)?;
        if !st.racct {
            return Err(err(libc::ENOSYS));
        }
        // subject:id:resource:action=amount, fully specified (kern_rctl.c
        // rctl_string_to_rule: an unknown resource name is EINVAL).
        let parts: Vec<&str> = rule.split(':').collect();
        let ok = parts.len() == 4
            && parts[0] == "jail"
            && !parts[1].is_empty()
            && parts[3]
                .split_once('=')
                .is_some_and(|(a, n)| a == "deny" && n.parse::<u64>().is_ok());
        let Some(resource) = RCTL_RESOURCES
            .iter()
            .find(|r| r.0 == parts.get(2).copied().unwrap_or(""))
        else {
            return Err(err(libc::EINVAL));
        };
        if !ok {
            return Err(err(libc::EINVAL));
        }
        // kern_rctl.c rctl_rule_add: "deny" for a resource that is not RACCT_DENIABLE is
        // EOPNOTSUPP, except RACCT_RSS and RACCT_PCTCPU, "enforced in a different way"
        // (RSS: the VM daemon pages the process out, sys/vm/vm_swapout.c vm_daemon; no
        // allocation is ever refused).
        if !resource.1 && !matches!(resource.0, "memoryuse" | "pcpu") {
            return Err(err(libc::EOPNOTSUPP));
        }
        // A deny rule replaces one differing only in amount.
        let key = format!("{}:{}:{}:", parts[0], parts[1], parts[2]);
        st.rules.retain(|r| !r.starts_with(&key));
        st.rules.insert(rule.to_string());
        Ok(())
    }

    fn rctl_remove_rule(&self, filter: &str) -> KResult<()> {
        let mut st = self.lock();
        let err = |errno| KernelError::Rctl {
            op: "rctl_remove_rule",
            rule: filter.to_string(),
            errno,
        };
        self.enter(&mut st, format!("rctl_remove_rule {filter}"))
            .map_err(err)?;
        if !st.racct {
            return Err(err(libc::ENOSYS));
        }
        let prefix = format!("{filter}:");
        let before = st.rules.len();
        st.rules.retain(|r| !r.starts_with(&prefix));
        if st.rules.len() == before {
            return Err(err(libc::ESRCH));
        }
        Ok(())
    }
}

impl FakeKernel {
    fn exec_inner(
        &self,
        plan: &ExecPlan,
        command: &PreparedCommand,
        limits: &Limits,
        cancel: Option<&CancelToken>,
    ) -> KResult<ExecOutcome> {
        let (jid, user) = (plan.jid, plan.user);
        let cancelled = || cancel.is_some_and(CancelToken::is_cancelled);
        let spec = command.spec();
        let setup = |step, errno| KernelError::Exec {
            jid,
            source: ExecError::Setup { step, errno },
        };
        let (root, program) = {
            let mut st = self.lock();
            self.enter(
                &mut st,
                format!(
                    "exec {jid} {} as {}:{}",
                    spec.executable, user.uid, user.gid
                ),
            )
            .map_err(|errno| setup(SetupStep::Execve, errno))?;
            st.plans.push(plan.clone());
            let Some(jail) = st.jails.get(&jid).filter(|j| j.alive) else {
                return Err(setup(SetupStep::JailAttach, libc::EINVAL));
            };
            let root = jail.params.path.clone();
            let cwd = root.join(spec.cwd.trim_start_matches('/'));
            if !cwd.is_dir() {
                return Err(setup(SetupStep::Chdir, libc::ENOENT));
            }
            let Some(program) = st.programs.get(&spec.executable).cloned() else {
                return Err(setup(SetupStep::Execve, libc::ENOENT));
            };
            if cancelled() {
                st.record(format!("jail_remove {jid} (cancelled)"));
                Self::kill_jail(&mut st, jid);
                return Err(KernelError::Exec {
                    jid,
                    source: ExecError::Cancelled,
                });
            }
            (root, program)
        };
        // The program runs without the state lock, as a real child runs concurrently.
        let run = program(&FakeExec {
            root: &root,
            command: spec,
            user,
            limits,
            plan,
        });
        let mut st = self.lock();
        let cap = limits.output_stream_cap;
        let cut = |mut v: Vec<u8>| {
            let t = v.len() > cap;
            v.truncate(cap);
            (v, t)
        };
        let (stdout, stdout_truncated) = cut(run.stdout);
        let (mut stderr, stderr_truncated) = cut(run.stderr);
        let mut exit_code = run.exit_code;
        if let Some(name) = st.jails.get(&jid).map(|j| j.params.name.clone()) {
            if Self::fork_denied_by_openfiles(&st, &name, (run.fd_table, run.forks), limits) {
                // fork1 (kern_fork.c) turns a failed racct_proc_fork into EAGAIN; the
                // program reports it and fails.
                stderr = b"fork: Resource temporarily unavailable\n".to_vec();
                exit_code = 1;
            }
        }
        let status = if run.hang {
            // The supervisor's kill on timeout or cancel, through the seam as RealKernel
            // does it; the child is one of the jail's processes until something kills it.
            let why = if cancelled() { "cancelled" } else { "timeout" };
            st.record(format!("kill jail {jid} ({why})"));
            if let Some(j) = st.jails.get_mut(&jid) {
                j.processes += 1 + run.left_running + run.escapes_kill;
                j.escaping = run.escapes_kill;
                j.child_alive = true;
            }
            drop(st);
            let errors = kill_jail(self, jid, || {
                let mut st = self.lock();
                st.record(format!("pdkill child in jail {jid}"));
                if let Some(j) = st.jails.get_mut(&jid).filter(|j| j.child_alive) {
                    j.child_alive = false;
                    j.processes -= 1;
                }
                Ok(())
            });
            st = self.lock();
            // The supervisor reaps the child with waitpid(2) next: a child nothing killed
            // would block it (and the build) forever.
            assert!(
                !st.jails.get(&jid).is_some_and(|j| j.child_alive),
                "FakeKernel: the child in jail {jid} survived the kill: waitpid would \
                 block forever ({errors:?})"
            );
            if why == "cancelled" {
                return Err(KernelError::Exec {
                    jid,
                    source: ExecError::Cancelled,
                });
            }
            ExitStatus::TimedOut
        } else {
            if let Some(j) = st.jails.get_mut(&jid) {
                j.processes += run.left_running;
            }
            ExitStatus::Code(exit_code)
        };
        Ok(ExecOutcome {
            status,
            stdout,
            stderr,
            stdout_truncated,
            stderr_truncated,
            // As on the real kernel: rlimits and rctl deny without a per-jail event.
            limit_hit: None,
        })
    }
}
