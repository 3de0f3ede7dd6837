//! Per-sandbox resource limits on Linux: a cgroup v2 per container (`memory.max`,
//! `pids.max`) where the unified hierarchy offers the memory and pids controllers, per-
//! process rlimits otherwise (see `Limits`).
//!
//! Layout (Documentation/admin-guide/cgroup-v2.rst): `<cgroup2 mount>/jailbuilder/` and
//! `.../jailbuilder/i-<hash of the state dir>/` are inner nodes holding no process, with
//! `+memory +pids` in their `cgroup.subtree_control` ("no internal process" rule); each
//! container is a leaf `.../i-<hash>/c<n>/`. The server opens the leaf's `cgroup.procs`
//! before fork and the sandbox's first child writes "0" to it (0 = the writing process;
//! kernel/cgroup/cgroup.c cgroup_procs_write_start) before it joins any namespace, so the
//! whole sandbox is born in the cgroup. The write is checked with the opener's credentials
//! (root), and it is one write(2): async-signal-safe.
//!
//! The v2 hierarchy's root is exempt from the "no internal process" rule, but we never
//! change the root's own `cgroup.subtree_control` (host policy): memory and pids must
//! already be enabled there, as systemd does on a pure v2 system. On a hybrid system
//! (controllers on v1, an empty v2 at /sys/fs/cgroup/unified) rlimits are used.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::backend::{ExitStatus, LimitHit, Limits};

/// How per-sandbox memory and process limits are enforced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LimitMechanism {
    /// A cgroup v2 per container under `parent`: memory.max and pids.max for the whole
    /// sandbox; RLIMIT_NOFILE and RLIMIT_FSIZE per process still apply.
    CgroupV2 { parent: PathBuf },
    /// Per-process rlimits only (RLIMIT_AS, RLIMIT_NPROC, RLIMIT_NOFILE, RLIMIT_FSIZE), and
    /// why cgroup v2 is not used. RLIMIT_NPROC counts every process of the build uid on
    /// the host, so concurrent builds share that budget.
    Rlimits { reason: String },
}

impl std::fmt::Display for LimitMechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimitMechanism::CgroupV2 { parent } => write!(
                f,
                "cgroup v2 per container under {} (memory.max, pids.max) + RLIMIT_NOFILE/FSIZE",
                parent.display()
            ),
            LimitMechanism::Rlimits { reason } => write!(
                f,
                "rlimits per process (RLIMIT_AS/NPROC/NOFILE/FSIZE): {reason}"
            ),
        }
    }
}

/// One cgroup2 mount as found on the system: its path, and the contents of its root's
/// `cgroup.controllers` and `cgroup.subtree_control`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Cgroup2Mount {
    pub path: PathBuf,
    pub controllers: String,
    pub subtree_control: String,
}

const NEEDED: [&str; 2] = ["memory", "pids"];

fn has_all(list: &str) -> bool {
    NEEDED
        .iter()
        .all(|c| list.split_whitespace().any(|w| w == *c))
}

/// The decision, from facts only (unit-tested): the first cgroup2 mount whose root offers
/// and enables memory and pids, else rlimits with the reason of the first mount.
pub(super) fn decide(enabled: bool, mounts: &[Cgroup2Mount], instance: &str) -> LimitMechanism {
    if !enabled {
        return LimitMechanism::Rlimits {
            reason: "cgroup v2 disabled by configuration (cgroup_v2 = false)".into(),
        };
    }
    if let Some(m) = mounts
        .iter()
        .find(|m| has_all(&m.controllers) && has_all(&m.subtree_control))
    {
        return LimitMechanism::CgroupV2 {
            parent: m.path.join("jailbuilder").join(instance),
        };
    }
    let reason = match mounts.first() {
        None => "no cgroup2 filesystem is mounted".to_string(),
        Some(m) if !has_all(&m.controllers) => format!(
            "cgroup2 at {} offers controllers [{}]: memory and pids are missing (a hybrid \
             hierarchy keeps them on cgroup v1)",
            m.path.display(),
            m.controllers.trim()
        ),
        Some(m) => format!(
            "memory and pids are not enabled in {}/cgroup.subtree_control ([{}]); enable \
             them there (host policy, jailbuilder does not change it)",
            m.path.display(),
            m.subtree_control.trim()
        ),
    };
    LimitMechanism::Rlimits { reason }
}

/// cgroup2 mount points listed in a /proc/self/mountinfo text, /sys/fs/cgroup first.
pub(super) fn cgroup2_mount_points(mountinfo: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            if right.split(' ').next()? != "cgroup2" {
                return None;
            }
            left.split(' ').nth(4).map(PathBuf::from)
        })
        .collect();
    found.sort_by_key(|p| p != Path::new("/sys/fs/cgroup"));
    found
}

/// Reads the facts [`decide`] needs from this system.
pub(super) fn system_mounts() -> Vec<Cgroup2Mount> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    cgroup2_mount_points(&info)
        .into_iter()
        .map(|path| Cgroup2Mount {
            controllers: fs::read_to_string(path.join("cgroup.controllers")).unwrap_or_default(),
            subtree_control: fs::read_to_string(path.join("cgroup.subtree_control"))
                .unwrap_or_default(),
            path,
        })
        .collect()
}

/// A stable name for this instance's cgroup, from its (canonical) state directory, so a
/// restarted instance finds what a crashed one left (FNV-1a, stable across builds).
pub(super) fn instance_name(state_dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in state_dir.as_os_str().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("i-{h:016x}")
}

fn write_file(path: &Path, value: &str) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?
        .write_all(value.as_bytes())
}

fn mkdir_ok_if_exists(path: &Path) -> io::Result<()> {
    match fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// Creates the inner nodes `jailbuilder/` and `jailbuilder/i-<hash>/` and enables memory
/// and pids for their children.
pub(super) fn prepare_parent(parent: &Path) -> io::Result<()> {
    let top = parent
        .parent()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    for dir in [top, parent] {
        mkdir_ok_if_exists(dir)?;
        write_file(&dir.join("cgroup.subtree_control"), "+memory +pids")?;
    }
    Ok(())
}

/// SIGKILLs every process in the cgroup at `dir` and removes it, retrying while exiting
/// processes still hold it (EBUSY). `Ok(false)` if it did not exist.
pub(super) fn kill_and_remove(dir: &Path, patience: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + patience;
    loop {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill(2) with a pid read from the cgroup; ESRCH if it just exited.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The counters of a container's cgroup that say one of its limits fired
/// (Documentation/admin-guide/cgroup-v2.rst): `memory.events` `oom` (memory.max was
/// reached and reclaim failed) and `oom_kill` (a process of the cgroup was OOM-killed),
/// `pids.events` `max` (a fork failed at pids.max). They only grow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct LimitEvents {
    pub oom: u64,
    pub oom_kill: u64,
    pub pids_max: u64,
}

/// The value of `key` in a flat-keyed cgroup file's text ("key value" lines); 0 when the
/// key is absent or its value is not a number.
fn flat_keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

impl LimitEvents {
    /// Reads the counters of the cgroup at `dir`; a missing file (a kernel without the
    /// controller's events) counts as zeros.
    pub fn read(dir: &Path) -> LimitEvents {
        let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap_or_default();
        let (memory, pids) = (read("memory.events"), read("pids.events"));
        LimitEvents {
            oom: flat_keyed(&memory, "oom"),
            oom_kill: flat_keyed(&memory, "oom_kill"),
            pids_max: flat_keyed(&pids, "max"),
        }
    }
}

/// Which of the sandbox's limits a command that did not succeed hit, from the counters
/// before and after it (unit-tested): the memory limit if a process was OOM-killed (or an
/// OOM was declared), else the process limit if a fork failed at it. A limit that is not
/// set (0) cannot have fired: an OOM kill then is the host's, not the sandbox's.
pub(super) fn limit_hit(
    status: ExitStatus,
    before: LimitEvents,
    after: LimitEvents,
    memory_bytes: u64,
    max_processes: u64,
) -> Option<LimitHit> {
    if status.success() {
        return None;
    }
    let oom = after.oom_kill > before.oom_kill || after.oom > before.oom;
    if oom && memory_bytes > 0 {
        Some(LimitHit::Memory {
            bytes: memory_bytes,
        })
    } else if after.pids_max > before.pids_max && max_processes > 0 {
        Some(LimitHit::Processes { max: max_processes })
    } else {
        None
    }
}

/// A container's leaf cgroup: its directory, the open `cgroup.procs` the sandbox's first
/// child writes to, the limits last written, and its limit counters as last read.
#[derive(Debug)]
pub(super) struct ContainerCgroup {
    pub dir: PathBuf,
    pub procs: OwnedFd,
    applied: Mutex<Option<(u64, u64)>>,
    seen: Mutex<LimitEvents>,
}

impl ContainerCgroup {
    /// Creates the leaf (removing a leftover of the same name first), with swap off so
    /// memory.max is a real bound.
    pub fn create(dir: PathBuf, patience: Duration) -> io::Result<ContainerCgroup> {
        if let Err(e) = fs::create_dir(&dir) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(e);
            }
            kill_and_remove(&dir, patience)?;
            fs::create_dir(&dir)?;
        }
        // Absent without swap accounting: best effort.
        let _ = write_file(&dir.join("memory.swap.max"), "0");
        let procs = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(dir.join("cgroup.procs"))?;
        Ok(ContainerCgroup {
            dir,
            procs: procs.into(),
            applied: Mutex::new(None),
            // A new cgroup's counters are zero: nothing to read.
            seen: Mutex::new(LimitEvents::default()),
        })
    }

    /// Which limit a command that ended with `status` hit (see [`limit_hit`]). Reads the
    /// counters only when the command did not succeed, so a successful compile costs no
    /// read on its critical path; the counters seen become the next command's baseline,
    /// and each reset reads them again ([`ContainerCgroup::refresh_limit_events`]), so
    /// events of a build that succeeded anyway (a fork it retried) are not put down to
    /// the next build of this container.
    pub fn limit_hit(&self, status: ExitStatus, limits: &Limits) -> Option<LimitHit> {
        if status.success() {
            return None;
        }
        let (before, after) = self.take_limit_events();
        limit_hit(
            status,
            before,
            after,
            limits.memory_bytes,
            limits.max_processes,
        )
    }

    /// Takes in the current counters as the next command's baseline: after each reset, and
    /// after a command that returned no outcome (cancelled, failed supervision).
    pub fn refresh_limit_events(&self) {
        self.take_limit_events();
    }

    /// Reads the counters and keeps them as the baseline: (the previous baseline, now).
    fn take_limit_events(&self) -> (LimitEvents, LimitEvents) {
        let now = LimitEvents::read(&self.dir);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        (std::mem::replace(&mut *seen, now), now)
    }

    /// Writes memory.max and pids.max (0 = "max") unless they already hold these values.
    pub fn apply(&self, memory_bytes: u64, max_processes: u64) -> io::Result<()> {
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        if *applied == Some((memory_bytes, max_processes)) {
            return Ok(());
        }
        let v = |n: u64| {
            if n == 0 {
                "max".to_string()
            } else {
                n.to_string()
            }
        };
        write_file(&self.dir.join("memory.max"), &v(memory_bytes))?;
        write_file(&self.dir.join("pids.max"), &v(max_processes))?;
        *applied = Some((memory_bytes, max_processes));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(path: &str, controllers: &str, subtree: &str) -> Cgroup2Mount {
        Cgroup2Mount {
            path: path.into(),
            controllers: controllers.into(),
            subtree_control: subtree.into(),
        }
    }

    #[test]
    fn cgroup_v2_only_where_memory_and_pids_are_offered_and_enabled() {
        let pure = m(
            "/sys/fs/cgroup",
            "cpuset cpu io memory pids\n",
            "cpu memory pids\n",
        );
        assert_eq!(
            decide(true, std::slice::from_ref(&pure), "i-1"),
            LimitMechanism::CgroupV2 {
                parent: "/sys/fs/cgroup/jailbuilder/i-1".into()
            }
        );
        // Disabled by configuration.
        assert!(matches!(
            decide(false, std::slice::from_ref(&pure), "i-1"),
            LimitMechanism::Rlimits { reason } if reason.contains("configuration")
        ));
        // Hybrid: an empty v2 hierarchy.
        let hybrid = m("/sys/fs/cgroup/unified", "", "");
        assert!(matches!(
            decide(true, std::slice::from_ref(&hybrid), "i-1"),
            LimitMechanism::Rlimits { reason } if reason.contains("hybrid")
                && reason.contains("/sys/fs/cgroup/unified")
        ));
        // Offered but not enabled at the root: we do not change host policy.
        let off = m("/sys/fs/cgroup", "memory pids", "cpu");
        assert!(matches!(
            decide(true, &[off], "i-1"),
            LimitMechanism::Rlimits { reason } if reason.contains("subtree_control")
        ));
        // pids alone is not enough.
        let half = m("/sys/fs/cgroup", "pids", "pids");
        assert!(matches!(
            decide(true, &[half], "i-1"),
            LimitMechanism::Rlimits { .. }
        ));
        // Nothing mounted.
        assert!(matches!(
            decide(true, &[], "i-1"),
            LimitMechanism::Rlimits { reason } if reason.contains("no cgroup2")
        ));
        // A usable mount after an unusable one is found.
        assert!(matches!(
            decide(true, &[hybrid, m("/mnt/cg", "memory pids", "memory pids")], "i-2"),
            LimitMechanism::CgroupV2 { parent } if parent == Path::new("/mnt/cg/jailbuilder/i-2")
        ));
    }

    #[test]
    fn finds_cgroup2_mounts_in_mountinfo() {
        let info = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw
40 30 0:35 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
50 25 0:40 / /mnt/other rw - cgroup2 none rw
";
        assert_eq!(
            cgroup2_mount_points(info),
            vec![
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/mnt/other")
            ]
        );
        let pure = "31 25 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n\
                    50 25 0:40 / /a rw - cgroup2 none rw\n";
        assert_eq!(
            cgroup2_mount_points(pure)[0],
            PathBuf::from("/sys/fs/cgroup")
        );
    }

    #[test]
    fn limit_counters_parse_from_flat_keyed_files_missing_ones_as_zero() {
        let dir = tempfile::tempdir().unwrap();
        // Nothing there (no such controller): zeros.
        assert_eq!(LimitEvents::read(dir.path()), LimitEvents::default());
        fs::write(
            dir.path().join("memory.events"),
            "low 0\nhigh 0\nmax 17\noom 2\noom_kill 3\noom_group_kill 0\n",
        )
        .unwrap();
        fs::write(dir.path().join("pids.events"), "max 5\n").unwrap();
        assert_eq!(
            LimitEvents::read(dir.path()),
            LimitEvents {
                oom: 2,
                oom_kill: 3,
                pids_max: 5
            }
        );
        // Keys match whole ("oom" does not answer "oom_kill", nor "max.imposed" "max");
        // a malformed value or an empty file is 0.
        assert_eq!(flat_keyed("oom 4\n", "oom_kill"), 0);
        assert_eq!(flat_keyed("max 1\noom 4\n", "oom"), 4);
        assert_eq!(flat_keyed("max.imposed 2\nmax 9\n", "max"), 9);
        assert_eq!(flat_keyed("max x\n", "max"), 0);
        assert_eq!(flat_keyed("", "max"), 0);
    }

    #[test]
    fn a_failed_command_is_put_down_to_the_limit_whose_counter_grew() {
        let z = LimitEvents::default();
        let oom = LimitEvents {
            oom: 1,
            oom_kill: 1,
            ..z
        };
        let forks = LimitEvents { pids_max: 3, ..z };
        let killed = ExitStatus::Signal(libc::SIGKILL);
        let (mem_hit, procs_hit) = (
            LimitHit::Memory { bytes: 1 << 30 },
            LimitHit::Processes { max: 64 },
        );
        let (mem, procs) = (Some(mem_hit), Some(procs_hit));
        assert_eq!(limit_hit(killed, z, oom, 1 << 30, 64), mem);
        // cc1 OOM-killed, the driver exits 1: still the memory limit.
        assert_eq!(limit_hit(ExitStatus::Code(1), z, oom, 1 << 30, 64), mem);
        // An OOM kill without the cgroup's own OOM (the host's OOM killer chose a sandbox
        // process): still put down to memory, and a local retry suits that too.
        let kill_only = LimitEvents { oom_kill: 1, ..z };
        assert_eq!(limit_hit(killed, z, kill_only, 1 << 30, 64), mem);
        assert_eq!(limit_hit(ExitStatus::Code(1), z, forks, 1 << 30, 64), procs);
        // Both: the OOM kill is what ended it.
        let both = LimitEvents { pids_max: 1, ..oom };
        assert_eq!(limit_hit(killed, z, both, 1 << 30, 64), mem);
        // Counters that did not move since the last read: the compiler's own failure.
        assert_eq!(limit_hit(killed, both, both, 1 << 30, 64), None);
        assert_eq!(limit_hit(ExitStatus::Code(1), z, z, 1 << 30, 64), None);
        // A success is a success, whatever happened on the way.
        assert_eq!(limit_hit(ExitStatus::Code(0), z, both, 1 << 30, 64), None);
        // An unset limit (0) cannot have fired.
        assert_eq!(limit_hit(killed, z, oom, 0, 64), None);
        assert_eq!(limit_hit(killed, z, forks, 1 << 30, 0), None);
        assert_eq!(
            mem_hit.to_string(),
            "memory limit (memory_bytes = 1073741824)"
        );
        assert_eq!(procs_hit.to_string(), "process limit (max_processes = 64)");
    }

    #[test]
    fn a_containers_counters_are_read_after_failures_only_and_kept_as_baseline() {
        let dir = tempfile::tempdir().unwrap();
        let cg = ContainerCgroup {
            dir: dir.path().to_path_buf(),
            procs: fs::File::open("/dev/null").unwrap().into(),
            applied: Mutex::new(None),
            seen: Mutex::new(LimitEvents::default()),
        };
        let limits = Limits {
            memory_bytes: 1 << 30,
            max_processes: 64,
            ..Limits::default()
        };
        let events = |oom_kill: u64, pids_max: u64| {
            fs::write(
                dir.path().join("memory.events"),
                format!("max 0\noom {oom_kill}\noom_kill {oom_kill}\n"),
            )
            .unwrap();
            fs::write(dir.path().join("pids.events"), format!("max {pids_max}\n")).unwrap();
        };
        let killed = ExitStatus::Signal(libc::SIGKILL);
        // A compiler's own failure in a fresh cgroup (no events files yet, too).
        assert_eq!(cg.limit_hit(ExitStatus::Code(1), &limits), None);
        events(1, 0);
        assert_eq!(
            cg.limit_hit(killed, &limits),
            Some(LimitHit::Memory { bytes: 1 << 30 })
        );
        // The same counters again: that OOM kill was the previous command's.
        assert_eq!(cg.limit_hit(killed, &limits), None);
        events(1, 2);
        assert_eq!(
            cg.limit_hit(ExitStatus::Code(2), &limits),
            Some(LimitHit::Processes { max: 64 })
        );
        // A cancelled command's events are taken in, not put down to the next one.
        events(2, 2);
        cg.refresh_limit_events();
        assert_eq!(cg.limit_hit(killed, &limits), None);
    }

    #[test]
    fn instance_names_are_stable_and_distinct() {
        let a = instance_name(Path::new("/var/lib/jailbuilder"));
        assert_eq!(a, instance_name(Path::new("/var/lib/jailbuilder")));
        assert_ne!(a, instance_name(Path::new("/var/lib/jailbuilder2")));
        assert!(a.starts_with("i-") && a.len() == 18, "{a}");
    }
}
