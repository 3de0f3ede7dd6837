//! FreeBSD: jails + ZFS through libzfs_core.

use std::path::Path;
use std::time::Duration;

use super::ProbeItem;
use crate::config::BuilderConfig;
use crate::freebsd::{
    FreeBsdBackend, FreeBsdConfig, FreeBsdError, JailLimits, Kernel, RealKernel, Step,
};
use crate::untrusted::UnpackLimits;

pub type NativeError = FreeBsdError;

fn freebsd_config(cfg: &BuilderConfig) -> FreeBsdConfig {
    FreeBsdConfig {
        dataset_root: cfg.dataset_root.clone(),
        mount_root: cfg.mount_root.clone(),
        base_snapshot: cfg.base_snapshot.clone(),
        devfs_ruleset: u16::try_from(cfg.devfs_ruleset).unwrap_or(4),
        unpack_limits: UnpackLimits {
            max_bytes: cfg.max_toolchain_bytes,
            max_entries: cfg.max_toolchain_entries,
        },
        jail_gone_timeout: Duration::from_secs(10),
        jail_limits: JailLimits {
            memory_bytes: cfg.memory_bytes,
            max_processes: cfg.max_processes,
            max_open_files: cfg.max_open_files,
        },
        container_quota_bytes: cfg.container_quota_bytes,
        ..FreeBsdConfig::default()
    }
}

pub fn open_backend(cfg: &BuilderConfig) -> Result<FreeBsdBackend<RealKernel>, FreeBsdError> {
    let kernel = RealKernel::new().map_err(|source| FreeBsdError::Kernel {
        step: Step::Init,
        what: "/dev/zfs".into(),
        source,
    })?;
    FreeBsdBackend::new(kernel, freebsd_config(cfg))
}

pub fn probe() -> Vec<ProbeItem> {
    let mut items = Vec::new();
    let root = nix::unistd::geteuid().is_root();
    items.push(ProbeItem {
        name: "root",
        ok: root,
        detail: if root {
            "running as root".into()
        } else {
            "jail_set(2), nmount(2) and ZFS need root".into()
        },
    });
    let devzfs = Path::new("/dev/zfs").exists();
    items.push(ProbeItem {
        name: "zfs",
        ok: devzfs,
        detail: if devzfs {
            "/dev/zfs present".into()
        } else {
            "no /dev/zfs: kldload zfs".into()
        },
    });
    match RealKernel::new() {
        Ok(k) => {
            let racct = k.racct_enabled();
            items.push(ProbeItem {
                name: "resource limits",
                ok: true,
                detail: if racct {
                    "rctl rules per jail (kern.racct.enable=1): memoryuse, maxproc, openfiles \
                     deny + RLIMIT_NOFILE/FSIZE per process"
                        .into()
                } else {
                    "rlimits per process (RLIMIT_AS/NPROC/NOFILE/FSIZE): kern.racct.enable=0; \
                     set kern.racct.enable=1 in /boot/loader.conf for per-jail rctl limits"
                        .into()
                },
            });
            let cfg = BuilderConfig::default();
            let exists = k.zfs_exists(&cfg.dataset_root);
            items.push(ProbeItem {
                name: "libzfs_core",
                ok: true,
                detail: format!(
                    "initialised; default dataset root {} {}",
                    cfg.dataset_root,
                    if exists {
                        "exists"
                    } else {
                        "does not exist yet (created on first start)"
                    }
                ),
            });
        }
        Err(e) => items.push(ProbeItem {
            name: "libzfs_core",
            ok: false,
            detail: e.to_string(),
        }),
    }
    items
}

/// Not checked on FreeBSD (it would need sysctl kern.proc.all's `struct kinfo_proc`
/// layout); doctor says so.
pub(super) fn processes_in_range(
    _uids: &std::ops::Range<u32>,
    _gids: &std::ops::Range<u32>,
) -> Option<std::io::Result<Vec<String>>> {
    None
}
