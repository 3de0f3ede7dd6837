//! Configuration: the `[builder]` section shared by `jailbuilder run/demo/bench` and
//! `jailbuilder serve`. Every key has a default that works without a file; unknown keys and
//! bad values are refused with a message naming the key (serde `deny_unknown_fields`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::{BuildUser, Limits};
use crate::engine::EngineConfig;
use crate::untrusted::UnpackLimits;

/// `[builder]`: the sandbox backend and the engine's policy.
///
/// `Serialize` too, so that an embedder's configuration can hold it as a variant of
/// sccache-dist's builder types (`sccache::config::server::BuilderType` derives both).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BuilderConfig {
    /// Linux: where images, containers and the instance lock live.
    pub state_dir: PathBuf,
    /// Linux: optional base root directory laid under every toolchain (a lower layer).
    pub base_dir: Option<PathBuf>,
    /// Linux: size of each container's tmpfs (its writable layer), bytes. A compile that
    /// writes more gets ENOSPC (that job only); inputs beyond it fail the job's unpack.
    pub container_tmpfs_bytes: u64,
    /// Linux: enforce `memory_bytes` and `max_processes` per container with a cgroup v2
    /// (memory.max, pids.max) where the unified hierarchy offers the memory and pids
    /// controllers; otherwise, or when false, per-process rlimits. `jailbuilder doctor`
    /// shows which is active.
    pub cgroup_v2: bool,
    /// Linux: reset a container by emptying its writable layer in place when the build
    /// changed nothing of the layers below (faster: no unmount and remount, and the
    /// overlay's lookups stay cached);
    /// false always mounts a fresh tmpfs and overlay.
    pub reset_in_place: bool,
    /// Linux: give each new toolchain image that has none an `/etc/ld.so.cache` of the
    /// libraries every glibc loader would find alike, so that the compiler's processes
    /// find their libraries without searching every system directory; false keeps images
    /// exactly as the client sent them.
    pub ld_cache: bool,
    /// Linux: bind each image's top-level directories that the overlay would show
    /// unchanged, and in which the build user can change nothing, read-only over the
    /// container root, so that the compiler's lookups of its own files bypass overlayfs
    /// (faster); false sends every path through the overlay.
    pub bind_image_dirs: bool,
    /// Linux: when a toolchain image's executables, read back into the page cache, got
    /// fewer than 60 % of their pages in large folios (64 KiB or more), compact memory
    /// (machine-wide, once per such image) and read them again; false never compacts.
    pub compact_memory: bool,

    /// FreeBSD: the ZFS dataset everything is created under, e.g. "zroot/jailbuilder".
    pub dataset_root: String,
    /// FreeBSD: the directory containers are mounted under.
    pub mount_root: PathBuf,
    /// FreeBSD: snapshot of a FreeBSD userland that images are cloned from, e.g.
    /// "zroot/jailbuilder/base@14.3-RELEASE". Without it images hold only the toolchain.
    pub base_snapshot: Option<String>,
    /// FreeBSD: devfs ruleset for jails (4 = devfsrules_jail), 1..=65535; it must be
    /// loaded and have rules (checked at start: an unloaded ruleset hides nothing).
    pub devfs_ruleset: u32,
    /// FreeBSD: ZFS `quota` of each container clone, bytes (what a compile may write; the
    /// toolchain it shares with the image does not count); 0 = none.
    pub container_quota_bytes: u64,

    /// First uid and gid of the build range. Each container slot runs its compiles as its
    /// own identity, `(build_uid_base + n, build_gid_base + n)` for slot n in
    /// 0..max_containers, shared with no other live container and (if the range is kept
    /// free: `jailbuilder doctor` checks) no host account or process. Default 0x70000000
    /// (see [`crate::engine::DEFAULT_BUILD_ID_BASE`] for why).
    pub build_uid_base: u32,
    /// First gid of the build range; unset, the same number as `build_uid_base` (so each
    /// slot's gid equals its uid).
    pub build_gid_base: Option<u32>,
    /// Removed: the single shared build user of earlier versions. Set, it is refused with a
    /// message pointing at `build_uid_base`/`build_gid_base` rather than taken as the base,
    /// since a config naming an existing account (65534 = nobody) would otherwise share it
    /// again with the host's processes.
    pub build_uid: Option<u32>,
    pub build_gid: Option<u32>,

    /// Containers alive at once; also the length of the build id range (one per slot).
    pub max_containers: usize,
    pub max_containers_per_toolchain: usize,
    pub warm_per_toolchain: usize,
    pub max_images: usize,
    /// Keep toolchain images across restarts (default true): a restarted server adopts
    /// the complete images the last one left (the `max_images` most recently used) instead
    /// of unpacking each toolchain again. False: every image is removed at start and at
    /// shutdown. `jailbuilder clean` removes them either way.
    pub keep_images: bool,
    pub recycler_threads: usize,
    pub unhealthy_after: u32,
    pub shutdown_grace_secs: u64,

    /// Wall-clock limit of one compile.
    pub timeout_secs: u64,
    /// Bytes of stdout and of stderr kept per compile.
    pub stream_cap_bytes: usize,
    /// Memory of one compile, bytes; 0 = unlimited. Linux: memory.max of the container's
    /// cgroup (v2), else RLIMIT_AS per process. FreeBSD: RLIMIT_AS per process, and with
    /// kern.racct.enable=1 also rctl `vmemoryuse:deny` per jail.
    pub memory_bytes: u64,
    /// Processes of one compile; 0 = unlimited. Linux: pids.max (cgroup v2), else
    /// RLIMIT_NPROC (which counts all processes of the build uid, host-wide). FreeBSD:
    /// rctl `maxproc:deny` per jail, else RLIMIT_NPROC.
    pub max_processes: u64,
    /// Open files per process (RLIMIT_NOFILE); 0 = unlimited.
    pub max_open_files: u64,
    /// Largest file a compile may write (RLIMIT_FSIZE); 0 = unlimited.
    pub max_file_bytes: u64,
    /// Largest output file returned.
    pub max_output_bytes: u64,
    /// Most outputs one job may request (sccache asks for a handful: the object, a .d,
    /// a .dwo; rustc several).
    pub max_outputs: usize,
    /// Largest total size of one job's outputs, bytes before compression.
    pub max_outputs_total_bytes: u64,
    /// Content bytes and entries of one inputs archive.
    pub max_inputs_bytes: u64,
    pub max_inputs_entries: u64,
    /// Content bytes and entries of one toolchain archive.
    pub max_toolchain_bytes: u64,
    pub max_toolchain_entries: u64,
}

impl Default for BuilderConfig {
    fn default() -> Self {
        let e = EngineConfig::default();
        let l = &e.limits;
        BuilderConfig {
            state_dir: PathBuf::from("/var/lib/jailbuilder"),
            base_dir: None,
            container_tmpfs_bytes: 4 << 30,
            cgroup_v2: true,
            reset_in_place: true,
            ld_cache: true,
            bind_image_dirs: true,
            compact_memory: true,
            dataset_root: "zroot/jailbuilder".into(),
            mount_root: PathBuf::from("/var/jailbuilder"),
            base_snapshot: None,
            devfs_ruleset: 4,
            container_quota_bytes: 4 << 30,
            build_uid_base: e.build_user_base.uid,
            build_gid_base: None,
            build_uid: None,
            build_gid: None,
            max_containers: e.max_containers,
            max_containers_per_toolchain: e.max_containers_per_toolchain,
            warm_per_toolchain: e.warm_per_toolchain,
            max_images: e.max_images,
            keep_images: e.keep_images,
            recycler_threads: e.recycler_threads,
            unhealthy_after: e.unhealthy_after,
            shutdown_grace_secs: e.shutdown_grace.as_secs(),
            timeout_secs: l.timeout.as_secs(),
            stream_cap_bytes: l.output_stream_cap,
            memory_bytes: l.memory_bytes,
            max_processes: l.max_processes,
            max_open_files: l.max_open_files,
            max_file_bytes: l.max_file_bytes,
            max_output_bytes: e.max_output_bytes,
            max_outputs: e.max_outputs,
            max_outputs_total_bytes: e.max_outputs_total_bytes,
            max_inputs_bytes: e.inputs_limits.max_bytes,
            max_inputs_entries: e.inputs_limits.max_entries,
            max_toolchain_bytes: e.toolchain_limits.max_bytes,
            max_toolchain_entries: e.toolchain_limits.max_entries,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: [builder] {key}: {reason}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
}

impl BuilderConfig {
    /// Checks values serde cannot: zero where zero makes no sense, root as build user.
    pub fn validate(&self, path: &std::path::Path) -> Result<(), ConfigError> {
        let bad = |key, reason: &str| {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                key,
                reason: reason.to_string(),
            })
        };
        if self.max_containers == 0 {
            return bad("max_containers", "must be at least 1");
        }
        if self.max_containers_per_toolchain == 0 {
            return bad("max_containers_per_toolchain", "must be at least 1");
        }
        if self.max_images == 0 {
            return bad("max_images", "must be at least 1");
        }
        if self.max_outputs == 0 {
            return bad("max_outputs", "must be at least 1");
        }
        if self.timeout_secs == 0 {
            return bad("timeout_secs", "must be at least 1");
        }
        for (key, set) in [("build_uid", self.build_uid), ("build_gid", self.build_gid)] {
            if set.is_some() {
                return bad(
                    key,
                    "was replaced by build_uid_base/build_gid_base: each container slot n \
                     runs as its own uid/gid base + n (0 <= n < max_containers); pick a base \
                     whose range no host account uses (default 1879048192 = 0x70000000)",
                );
            }
        }
        let slots = u32::try_from(self.max_containers).unwrap_or(u32::MAX);
        for (key, base) in [
            ("build_uid_base", self.build_uid_base),
            ("build_gid_base", self.gid_base()),
        ] {
            if let Err(reason) = check_id_range(base, slots) {
                return bad(key, &reason);
            }
        }
        if !self.state_dir.is_absolute() {
            return bad("state_dir", "must be an absolute path");
        }
        if !self.mount_root.is_absolute() {
            return bad("mount_root", "must be an absolute path");
        }
        // devfs_rsnum is 16 bits (sys/fs/devfs/devfs.h); ruleset 0 is the empty ruleset
        // (sys/fs/devfs/devfs_rule.c), under which a jail sees every host device.
        if self.devfs_ruleset == 0 || self.devfs_ruleset > u32::from(u16::MAX) {
            return bad(
                "devfs_ruleset",
                "must be a loaded devfs ruleset, 1..=65535 (4 = devfsrules_jail)",
            );
        }
        Ok(())
    }

    /// `build_gid_base`, defaulting to `build_uid_base`.
    pub fn gid_base(&self) -> u32 {
        self.build_gid_base.unwrap_or(self.build_uid_base)
    }

    /// The build uids and gids: `base..base + max_containers` each (clamped to u32).
    pub fn build_id_ranges(&self) -> (std::ops::Range<u32>, std::ops::Range<u32>) {
        let slots = u32::try_from(self.max_containers.max(1)).unwrap_or(u32::MAX);
        let range = |base: u32| base..base.saturating_add(slots);
        (range(self.build_uid_base), range(self.gid_base()))
    }

    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            max_containers: self.max_containers,
            max_containers_per_toolchain: self.max_containers_per_toolchain,
            warm_per_toolchain: self.warm_per_toolchain,
            max_images: self.max_images,
            keep_images: self.keep_images,
            recycler_threads: self.recycler_threads,
            build_user_base: BuildUser {
                uid: self.build_uid_base,
                gid: self.gid_base(),
            },
            limits: Limits {
                timeout: Duration::from_secs(self.timeout_secs),
                output_stream_cap: self.stream_cap_bytes,
                memory_bytes: self.memory_bytes,
                max_processes: self.max_processes,
                max_open_files: self.max_open_files,
                max_file_bytes: self.max_file_bytes,
            },
            toolchain_limits: UnpackLimits {
                max_bytes: self.max_toolchain_bytes,
                max_entries: self.max_toolchain_entries,
            },
            inputs_limits: UnpackLimits {
                max_bytes: self.max_inputs_bytes,
                max_entries: self.max_inputs_entries,
            },
            max_output_bytes: self.max_output_bytes,
            max_outputs: self.max_outputs,
            max_outputs_total_bytes: self.max_outputs_total_bytes,
            unhealthy_after: self.unhealthy_after,
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
        }
    }
}

/// Ids that must not be build ids: root (compiles never run as root), nobody (shared with
/// the host and every NFS/user-namespace overflow), the 16-bit `(uid_t)-1`.
const RESERVED_IDS: [u32; 3] = [0, 65534, 65535];

/// Checks the build id range `base..base + count`: it must not hold 0, nobody or 65535, and
/// must end at or below 2^31 (ids from 2^31 on break tools that take them as signed, per
/// systemd's docs/UIDS-GIDS.md; it also keeps clear of `(uid_t)-1` = u32::MAX, which
/// setresuid(2)/chown(2) read as "unchanged", on Linux and FreeBSD alike, both u32).
pub fn check_id_range(base: u32, count: u32) -> Result<(), String> {
    let end = u64::from(base) + u64::from(count.max(1));
    if end > 1 << 31 {
        return Err(format!(
            "{base} + {} slots (max_containers) ends past 2^31 - 1 = 2147483647",
            count.max(1)
        ));
    }
    if let Some(id) = RESERVED_IDS
        .iter()
        .find(|&&id| u64::from(id) >= u64::from(base) && u64::from(id) < end)
    {
        return Err(format!(
            "the range {base}..{end} holds {id}{}; choose an unprivileged range of ids no \
             account uses",
            if *id == 0 { " (root)" } else { "" }
        ));
    }
    Ok(())
}

/// A file holding only `[builder]` (for `run`, `demo`, `bench`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BuilderFile {
    #[serde(default)]
    pub builder: BuilderConfig,
}

/// Parses TOML `text` read from `path` into `T`, with errors naming the file and key.
pub fn parse<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    text: &str,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Reads and parses a TOML file.
pub fn load<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_build_id_range_avoids_root_nobody_and_signed_ids() {
        check_id_range(0x7000_0000, 16).unwrap();
        check_id_range(1, 1).unwrap();
        check_id_range((1 << 31) - 4, 4).unwrap();
        assert!(check_id_range(0, 4).is_err());
        assert!(check_id_range(65530, 8).unwrap_err().contains("65534"));
        assert!(check_id_range(65535, 1).is_err());
        assert!(check_id_range((1 << 31) - 4, 5)
            .unwrap_err()
            .contains("2^31"));
        assert!(check_id_range(u32::MAX - 1, 1).is_err());
        // A range that wraps u32 is refused (it would hold u32::MAX and then 0).
        assert!(check_id_range(u32::MAX - 2, 8).is_err());
        let f: BuilderFile = parse(
            Path::new("x.toml"),
            "[builder]\nbuild_uid_base = 2147483640\nmax_containers = 9\n",
        )
        .unwrap();
        let e = f.builder.validate(Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("build_uid_base"), "{e}");
        let f: BuilderFile = parse(
            Path::new("x.toml"),
            "[builder]\nbuild_uid_base = 3000000000\n",
        )
        .unwrap();
        let e = f.builder.validate(Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("build_uid_base"), "{e}");
        let f: BuilderFile =
            parse(Path::new("x.toml"), "[builder]\nbuild_uid_base = 100000\n").unwrap();
        f.builder.validate(Path::new("x.toml")).unwrap();
        // The gid base follows the uid base unless set.
        assert_eq!(f.builder.engine_config().build_user(2).unwrap().gid, 100002);
        let f: BuilderFile = parse(
            Path::new("x.toml"),
            "[builder]\nbuild_gid_base = 65000\nmax_containers = 600\n",
        )
        .unwrap();
        let e = f.builder.validate(Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("build_gid_base"), "{e}");
    }

    #[test]
    fn empty_file_gives_working_defaults() {
        let f: BuilderFile = parse(Path::new("x.toml"), "").unwrap();
        f.builder.validate(Path::new("x.toml")).unwrap();
        let e = f.builder.engine_config();
        assert_eq!(e.build_user_base.uid, 0x7000_0000);
        assert_eq!(e.build_user(0).unwrap().gid, 0x7000_0000);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = parse::<BuilderFile>(Path::new("x.toml"), "[builder]\nmax_contaners = 3\n")
            .unwrap_err();
        assert!(e.to_string().contains("max_contaners"), "{e}");
        let e = parse::<BuilderFile>(Path::new("x.toml"), "[builder]\ntimeout_secs = \"ten\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("timeout_secs"), "{e}");
        let f: BuilderFile = parse(Path::new("x.toml"), "[builder]\nbuild_uid = 65534\n").unwrap();
        let e = f.builder.validate(Path::new("x.toml")).unwrap_err();
        assert!(
            e.to_string()
                .contains("build_uid: was replaced by build_uid_base"),
            "{e}"
        );
        let f: BuilderFile = parse(Path::new("x.toml"), "[builder]\nbuild_uid_base = 0\n").unwrap();
        let e = f.builder.validate(Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("build_uid_base"), "{e}");
        assert!(e.to_string().contains("(root)"), "{e}");
        let f: BuilderFile = parse(Path::new("x.toml"), "[builder]\nmax_outputs = 0\n").unwrap();
        let e = f.builder.validate(Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("max_outputs"), "{e}");
        let f: BuilderFile = parse(
            Path::new("x.toml"),
            "[builder]\nmax_outputs = 16\nmax_outputs_total_bytes = 4096\n",
        )
        .unwrap();
        let e = f.builder.engine_config();
        assert_eq!((e.max_outputs, e.max_outputs_total_bytes), (16, 4096));
        for bad in ["0", "65536", "70000"] {
            let f: BuilderFile = parse(
                Path::new("x.toml"),
                &format!("[builder]\ndevfs_ruleset = {bad}\n"),
            )
            .unwrap();
            let e = f.builder.validate(Path::new("x.toml")).unwrap_err();
            assert!(e.to_string().contains("devfs_ruleset"), "{bad}: {e}");
        }
        let f: BuilderFile = parse(Path::new("x.toml"), "[builder]\nmax_containers = 0\n").unwrap();
        assert!(f
            .builder
            .validate(Path::new("x.toml"))
            .unwrap_err()
            .to_string()
            .contains("max_containers"));
    }

    /// The variant README "Embedding in sccache-dist" adds to sccache's `BuilderType` (an
    /// internally tagged enum deriving Serialize, Deserialize, PartialEq and Debug): the
    /// section's keys sit next to `type`, unknown ones are still refused, and it round-trips.
    #[test]
    fn the_section_nests_in_sccaches_internally_tagged_builder_type() {
        #[derive(Debug, Deserialize, Serialize, PartialEq)]
        #[serde(tag = "type", deny_unknown_fields)]
        enum BuilderType {
            #[serde(rename = "overlay")]
            Overlay {
                build_dir: PathBuf,
                bwrap_path: PathBuf,
            },
            #[serde(rename = "jailbuilder")]
            Jailbuilder(Box<BuilderConfig>),
        }
        #[derive(Debug, Deserialize, Serialize, PartialEq)]
        struct ServerFile {
            builder: BuilderType,
        }
        let text =
            "[builder]\ntype = \"jailbuilder\"\nstate_dir = \"/var/lib/jb\"\nmax_containers = 3\n";
        let f: ServerFile = parse(Path::new("x.toml"), text).unwrap();
        let expected = BuilderConfig {
            state_dir: "/var/lib/jb".into(),
            max_containers: 3,
            ..BuilderConfig::default()
        };
        assert_eq!(f.builder, BuilderType::Jailbuilder(Box::new(expected)));
        let again: ServerFile = toml::from_str(&toml::to_string(&f).unwrap()).unwrap();
        assert_eq!(again, f);
        let e = parse::<ServerFile>(
            Path::new("x.toml"),
            "[builder]\ntype = \"jailbuilder\"\nstate_dirr = \"/x\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("state_dirr"), "{e}");
    }
}
