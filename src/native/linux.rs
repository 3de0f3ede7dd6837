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
        reset_in_place: cfg.reset_in_place,
        ld_cache: cfg.ld_cache,
        bind_image_dirs: cfg.bind_image_dirs,
        compact_memory: cfg.compact_memory,
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

/// Processes whose `/proc/<pid>/status` shows a uid in `uids` or a gid in `gids`, as
/// `pid (name)`. A process that exits during the scan is skipped.
pub(super) fn processes_in_range(
    uids: &std::ops::Range<u32>,
    gids: &std::ops::Range<u32>,
) -> Option<std::io::Result<Vec<String>>> {
    let scan = || -> std::io::Result<Vec<String>> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc")? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
                continue;
            };
            if super::status_in_range(&status, uids, gids) {
                let comm = status
                    .lines()
                    .find_map(|l| l.strip_prefix("Name:"))
                    .unwrap_or("")
                    .trim();
                found.push(format!("{pid} ({comm})"));
            }
        }
        Ok(found)
    };
    Some(scan())
}
