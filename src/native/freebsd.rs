//! FreeBSD: jails + ZFS through libzfs_core.

use std::path::Path;
use std::time::Duration;

use super::ProbeItem;
use crate::config::BuilderConfig;
use crate::freebsd::probe::probe_kernel;
use crate::freebsd::{
    Counted, FreeBsdBackend, FreeBsdConfig, FreeBsdError, JailLimits, RealKernel, Step,
};
use crate::untrusted::UnpackLimits;

pub type NativeError = FreeBsdError;

fn freebsd_config(cfg: &BuilderConfig) -> Result<FreeBsdConfig, FreeBsdError> {
    // devfs_rsnum is 16 bits (sys/fs/devfs/devfs.h); BuilderConfig::validate refuses
    // the rest, this keeps an unvalidated configuration from becoming another ruleset.
    let devfs_ruleset = u16::try_from(cfg.devfs_ruleset).map_err(|_| {
        FreeBsdError::Config(format!(
            "devfs_ruleset {} is out of range (1..=65535)",
            cfg.devfs_ruleset
        ))
    })?;
    Ok(FreeBsdConfig {
        dataset_root: cfg.dataset_root.clone(),
        mount_root: cfg.mount_root.clone(),
        base_snapshot: cfg.base_snapshot.clone(),
        devfs_ruleset,
        unpack_limits: UnpackLimits {
            max_bytes: cfg.max_toolchain_bytes,
            max_entries: cfg.max_toolchain_entries,
        },
        jail_gone_timeout: Duration::from_secs(10),
        jail_limits: JailLimits {
            memory_bytes: cfg.memory_bytes,
            max_processes: cfg.max_processes,
        },
        container_quota_bytes: cfg.container_quota_bytes,
        ..FreeBsdConfig::default()
    })
}

/// The backend over the real kernel, its calls counted ([`Counted`]: a lock and an add per
/// call, next to system calls that each cost far more).
pub fn open_backend(
    cfg: &BuilderConfig,
) -> Result<FreeBsdBackend<Counted<RealKernel>>, FreeBsdError> {
    let kernel = RealKernel::new().map_err(|source| FreeBsdError::Kernel {
        step: Step::Init,
        what: "/dev/zfs".into(),
        source,
    })?;
    FreeBsdBackend::new(Counted::new(kernel), freebsd_config(cfg)?)
}

/// What the backend configured as `cfg` needs, probed with that configuration.
pub fn probe(cfg: &BuilderConfig) -> Vec<ProbeItem> {
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
    let fcfg = match freebsd_config(cfg) {
        Ok(c) => c,
        Err(e) => {
            items.push(ProbeItem {
                name: "configuration",
                ok: false,
                detail: e.to_string(),
            });
            return items;
        }
    };
    match RealKernel::new() {
        Ok(k) => {
            items.push(ProbeItem {
                name: "libzfs_core",
                ok: true,
                detail: "initialised".into(),
            });
            items.extend(probe_kernel(&k, &fcfg, cfg.memory_bytes, cfg.max_processes));
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
