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

/// A container's leaf cgroup: its directory, the open `cgroup.procs` the sandbox's first
/// child writes to, and the limits last written.
#[derive(Debug)]
pub(super) struct ContainerCgroup {
    pub dir: PathBuf,
    pub procs: OwnedFd,
    applied: Mutex<Option<(u64, u64)>>,
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
        })
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
    fn instance_names_are_stable_and_distinct() {
        let a = instance_name(Path::new("/var/lib/jailbuilder"));
        assert_eq!(a, instance_name(Path::new("/var/lib/jailbuilder")));
        assert_ne!(a, instance_name(Path::new("/var/lib/jailbuilder2")));
        assert!(a.starts_with("i-") && a.len() == 18, "{a}");
    }
}
