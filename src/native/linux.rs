//! Linux: overlayfs + namespaces.

use super::ProbeItem;
use crate::config::BuilderConfig;
use crate::linux::{LinuxBackend, LinuxConfig, LinuxError};
use crate::untrusted::UnpackLimits;

pub type NativeError = LinuxError;

pub fn open_backend(cfg: &BuilderConfig) -> Result<LinuxBackend, LinuxError> {
    LinuxBackend::new(LinuxConfig {
        state_dir: cfg.state_dir.clone(),
        base_dir: cfg.base_dir.clone(),
        tmpfs_size_bytes: cfg.container_tmpfs_bytes,
        image_limits: UnpackLimits {
            max_bytes: cfg.max_toolchain_bytes,
            max_entries: cfg.max_toolchain_entries,
        },
        cgroup_v2: cfg.cgroup_v2,
    })
}

pub fn probe(_cfg: &crate::config::BuilderConfig) -> Vec<ProbeItem> {
    crate::linux::probe()
        .into_iter()
        .map(|p| ProbeItem {
            name: p.name,
            ok: p.ok,
            detail: p.detail,
        })
        .collect()
}
