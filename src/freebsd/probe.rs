//! What `jailbuilder doctor` checks on FreeBSD, over the [`Kernel`] seam so that it runs
//! (and is tested) against the configuration actually in use: its dataset root, its devfs
//! ruleset, its limits.

use crate::native::ProbeItem;

use super::backend::FreeBsdConfig;
use super::kernel::Kernel;

/// Probes `kernel` for what the backend configured as `cfg` needs. `memory_bytes` and
/// `max_processes` are the per-compile limits (`[builder]`): without RACCT they are only
/// rlimits (RLIMIT_AS per process, RLIMIT_NPROC per build uid host-wide).
pub fn probe_kernel<K: Kernel>(
    kernel: &K,
    cfg: &FreeBsdConfig,
    memory_bytes: u64,
    max_processes: u64,
) -> Vec<ProbeItem> {
    let mut items = Vec::new();
    let racct = kernel.racct_enabled();
    let limited = memory_bytes > 0 || max_processes > 0;
    items.push(ProbeItem {
        name: "resource limits",
        ok: racct || !limited,
        detail: if racct {
            "rctl rules per jail (kern.racct.enable=1): vmemoryuse, maxproc deny \
             + RLIMIT_AS/NOFILE/FSIZE per process"
                .into()
        } else if limited {
            "kern.racct.enable=0: memory_bytes is RLIMIT_AS per process only, and \
             max_processes is RLIMIT_NPROC, shared by all jails (it counts the build uid \
             host-wide); set kern.racct.enable=1 in /boot/loader.conf for per-jail limits"
                .into()
        } else {
            "no memory or process limit configured (kern.racct.enable=0)".into()
        },
    });

    let root = &cfg.dataset_root;
    let parent = root.rsplit_once('/').map(|(p, _)| p);
    let (ok, state) = if kernel.zfs_exists(root) {
        (true, "exists".to_string())
    } else {
        match parent {
            Some(p) if kernel.zfs_exists(p) => {
                (true, "does not exist yet (created on first start)".into())
            }
            Some(p) => (false, format!("does not exist, nor its parent {p}")),
            None => (false, "does not exist (a pool is not created here)".into()),
        }
    };
    items.push(ProbeItem {
        name: "dataset root",
        ok,
        detail: format!("{root} {state}"),
    });

    if let Some(base) = &cfg.base_snapshot {
        let ok = kernel.zfs_exists(base);
        items.push(ProbeItem {
            name: "base snapshot",
            ok,
            detail: format!("{base} {}", if ok { "exists" } else { "does not exist" }),
        });
    }

    let rs = cfg.devfs_ruleset;
    let (ok, detail) = match kernel.devfs_ruleset_rules(rs) {
        Ok(Some(n)) if n > 0 && rs != 0 => (true, format!("ruleset {rs} loaded, {n} rules")),
        Ok(Some(_)) | Ok(None) if rs == 0 => (
            false,
            "ruleset 0 is the empty ruleset: a jail would see every host device".into(),
        ),
        Ok(Some(_)) => (
            false,
            format!("ruleset {rs} has no rules: a jail would see every host device"),
        ),
        Ok(None) => (
            false,
            format!(
                "ruleset {rs} is not loaded: a jail would see every host device \
                 (devfs.rules(5), service devfs restart)"
            ),
        ),
        Err(e) => (false, e.to_string()),
    };
    items.push(ProbeItem {
        name: "devfs ruleset",
        ok,
        detail,
    });
    items
}
