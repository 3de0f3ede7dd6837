//! `jailbuilder doctor` checks for the Linux backend: what the kernel and the process
//! offer, each with a human-readable detail.

use std::fs;
use std::os::fd::{FromRawFd, OwnedFd};

use nix::sched::{unshare, CloneFlags};

/// One line of `jailbuilder doctor`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeItem {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

fn item(name: &'static str, ok: bool, detail: impl Into<String>) -> ProbeItem {
    ProbeItem {
        name,
        ok,
        detail: detail.into(),
    }
}

/// True when the kernel lists overlayfs in /proc/filesystems.
pub(super) fn overlay_available() -> bool {
    fs::read_to_string("/proc/filesystems")
        .map(|s| {
            s.lines()
                .any(|l| l.split_whitespace().last() == Some("overlay"))
        })
        .unwrap_or(false)
}

/// Effective capabilities of this process, from /proc/self/status.
fn effective_caps() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Tries `flags` in a throw-away thread (its namespaces die with it).
fn try_unshare(flags: CloneFlags) -> Result<(), String> {
    std::thread::spawn(move || unshare(flags).map_err(|e| e.desc().to_string()))
        .join()
        .unwrap_or_else(|_| Err("probe thread panicked".into()))
}

/// Checks everything the Linux backend needs; `ok == false` items explain what is missing.
pub fn probe() -> Vec<ProbeItem> {
    let mut items = Vec::new();

    let euid = nix::unistd::geteuid().as_raw();
    let caps = effective_caps();
    let needed = [
        (21, "CAP_SYS_ADMIN"),
        (18, "CAP_SYS_CHROOT"),
        (6, "CAP_SETGID"),
        (7, "CAP_SETUID"),
        (27, "CAP_MKNOD"),
        (5, "CAP_KILL"),
    ];
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(bit, _)| caps.is_none_or(|c| c & (1u64 << bit) == 0))
        .map(|(_, name)| *name)
        .collect();
    items.push(item(
        "root",
        euid == 0 && missing.is_empty(),
        if euid != 0 {
            format!(
                "running as uid {euid}: needs root (CAP_SYS_ADMIN) to mount overlayfs and \
                 create namespaces"
            )
        } else if missing.is_empty() {
            "uid 0 with CAP_SYS_ADMIN, CAP_SYS_CHROOT, CAP_SETUID/GID, CAP_MKNOD, CAP_KILL".into()
        } else {
            format!("uid 0 but missing {}", missing.join(", "))
        },
    ));

    let overlay = overlay_available();
    items.push(item(
        "overlayfs",
        overlay,
        if overlay {
            "overlay listed in /proc/filesystems"
        } else {
            "overlay is not in /proc/filesystems: `modprobe overlay`"
        },
    ));

    for (name, flags, file) in [
        (
            "net/ipc/uts namespaces",
            CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS,
            "net",
        ),
        (
            "mount namespace",
            CloneFlags::CLONE_FS | CloneFlags::CLONE_NEWNS,
            "mnt",
        ),
        ("pid namespace", CloneFlags::CLONE_NEWPID, "pid"),
        ("cgroup namespace", CloneFlags::CLONE_NEWCGROUP, "cgroup"),
    ] {
        let present = fs::symlink_metadata(format!("/proc/self/ns/{file}")).is_ok();
        let r = if present {
            try_unshare(flags)
        } else {
            Err(format!(
                "/proc/self/ns/{file} missing: kernel built without it"
            ))
        };
        items.push(match r {
            Ok(()) => item(name, true, "unshare works"),
            Err(e) => item(name, false, format!("unshare failed: {e}")),
        });
    }
    let max_userns = fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    items.push(
        match (
            fs::symlink_metadata("/proc/self/ns/user").is_ok(),
            max_userns,
        ) {
            (true, Some(n)) if n > 0 => item(
                "user namespace",
                true,
                format!("max_user_namespaces={n} (not used by this backend)"),
            ),
            (true, _) => item(
                "user namespace",
                false,
                "disabled (max_user_namespaces=0); not used by this backend",
            ),
            (false, _) => item(
                "user namespace",
                false,
                "kernel built without user namespaces; not used by this backend",
            ),
        },
    );

    let cg = [
        "/sys/fs/cgroup/cgroup.controllers",
        "/sys/fs/cgroup/unified/cgroup.controllers",
    ]
    .iter()
    .find_map(|p| {
        fs::read_to_string(p)
            .ok()
            .map(|s| (*p, s.trim().to_string()))
    });
    items.push(match cg {
        Some((p, c)) if !c.is_empty() => item("cgroup v2", true, format!("{p}: {c}")),
        Some((p, _)) => item(
            "cgroup v2",
            false,
            format!("{p} lists no controllers (hybrid hierarchy: controllers are on v1)"),
        ),
        None => item(
            "cgroup v2",
            false,
            "no cgroup2 mount at /sys/fs/cgroup or /sys/fs/cgroup/unified",
        ),
    });

    // Which limit mechanism a backend started now would use (with cgroup_v2 = true).
    let mechanism =
        super::cgroup::decide(true, &super::cgroup::system_mounts(), "i-<state-dir-hash>");
    items.push(item("resource limits", true, mechanism.to_string()));

    // SAFETY: pidfd_open(2) on our own pid; the descriptor is owned and closed below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
    items.push(if fd >= 0 {
        // SAFETY: a descriptor the kernel just gave us.
        drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        item("pidfd_open", true, "supported")
    } else {
        item(
            "pidfd_open",
            false,
            format!("{} (needs Linux 5.3+)", std::io::Error::last_os_error()),
        )
    });

    // An empty range far above any open descriptor: closes nothing.
    // SAFETY: close_range(2) with integer arguments on a range with no open descriptors.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            libc::c_uint::MAX - 1,
            libc::c_uint::MAX,
            0,
        )
    };
    items.push(if r == 0 {
        item("close_range", true, "supported")
    } else {
        item(
            "close_range",
            false,
            format!("{} (needs Linux 5.9+)", std::io::Error::last_os_error()),
        )
    });

    items.push(match super::seccomp::Filters::build() {
        Ok(f) => item(
            "seccomp filter",
            true,
            format!(
                "{} BPF instructions for {}",
                f.program().len,
                std::env::consts::ARCH
            ),
        ),
        Err(e) => item("seccomp filter", false, e.to_string()),
    });
    items
}
