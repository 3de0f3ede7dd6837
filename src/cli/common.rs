//! What several commands share: loading `[builder]`, starting the engine, small helpers.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use jailbuilder::config::{self, BuilderConfig, BuilderFile};
use jailbuilder::engine::{Engine, EngineConfig};
use jailbuilder::NativeBackend;

/// Where sandboxes live and who compiles run as; overrides the config file.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct BuilderArgs {
    /// TOML file with a `[builder]` section (see README "Configuration").
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Linux: state directory for images, containers and the instance lock.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// FreeBSD: ZFS dataset everything is created under (e.g. zroot/jailbuilder).
    #[arg(long, value_name = "DATASET")]
    pub dataset_root: Option<String>,
    /// FreeBSD: directory containers are mounted under.
    #[arg(long, value_name = "DIR")]
    pub mount_root: Option<PathBuf>,
    /// FreeBSD: userland snapshot images are cloned from (e.g. zroot/jailbuilder/base@14.3-RELEASE).
    #[arg(long, value_name = "SNAPSHOT")]
    pub base_snapshot: Option<String>,
    /// First UID:GID of the build range: container slot n runs as UID+n:GID+n
    /// (default 1879048192:1879048192; config keys build_uid_base/build_gid_base).
    #[arg(long, value_name = "UID:GID")]
    pub build_id_base: Option<String>,
}

impl BuilderArgs {
    pub fn load(&self) -> anyhow::Result<BuilderConfig> {
        let (mut cfg, path) = match &self.config {
            Some(p) => (config::load::<BuilderFile>(p)?.builder, p.clone()),
            None => (BuilderConfig::default(), PathBuf::from("(defaults)")),
        };
        if let Some(d) = &self.state_dir {
            cfg.state_dir = absolute(d)?;
        }
        if let Some(d) = &self.dataset_root {
            cfg.dataset_root = d.clone();
        }
        if let Some(d) = &self.mount_root {
            cfg.mount_root = absolute(d)?;
        }
        if let Some(s) = &self.base_snapshot {
            cfg.base_snapshot = Some(s.clone());
        }
        if let Some(u) = &self.build_id_base {
            let (uid, gid) = u
                .split_once(':')
                .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
                .with_context(|| {
                    format!("--build-id-base {u:?}: expected UID:GID, e.g. 1879048192:1879048192")
                })?;
            cfg.build_uid_base = uid;
            cfg.build_gid_base = Some(gid);
        }
        cfg.validate(&path)?;
        Ok(cfg)
    }
}

pub fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

/// Opens the platform backend and starts an engine (cleaning up after a crashed run).
pub fn start_engine(
    cfg: &BuilderConfig,
    engine: EngineConfig,
) -> anyhow::Result<Engine<NativeBackend>> {
    let backend = jailbuilder::native::open_backend(cfg)
        .context("opening the sandbox backend (try `jailbuilder doctor`)")?;
    Ok(Engine::start(backend, engine)?)
}

/// Percentile of sorted durations (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// A one-line progress bar on stderr (plain lines when stderr is not a terminal).
pub struct Progress {
    label: String,
    total: usize,
    done: usize,
    tty: bool,
}

impl Progress {
    pub fn new(label: &str, total: usize) -> Progress {
        let p = Progress {
            label: label.to_string(),
            total,
            done: 0,
            tty: std::io::stderr().is_terminal(),
        };
        p.draw();
        p
    }

    pub fn inc(&mut self, what: &str) {
        self.done += 1;
        if self.tty {
            self.draw();
        } else {
            eprintln!("  {} {}/{} {what}", self.label, self.done, self.total);
        }
    }

    fn draw(&self) {
        if !self.tty {
            return;
        }
        let width = 30;
        let filled = (self.done * width)
            .checked_div(self.total)
            .unwrap_or(width)
            .min(width);
        eprint!(
            "\r  {} [{}{}] {}/{}",
            self.label,
            "#".repeat(filled),
            ".".repeat(width - filled),
            self.done,
            self.total
        );
        let _ = std::io::stderr().flush();
    }

    pub fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

/// Refuses to go on without root, with the reason (namespaces, mounts, jails need it).
pub fn require_root(what: &str) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("{what} needs root: it mounts filesystems and creates namespaces or jails (run it with sudo)");
    }
    Ok(())
}

/// A tar of `files` (path inside the sandbox, contents), as sccache lays inputs out.
pub fn tar_files(files: &[(String, Vec<u8>)]) -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path.trim_start_matches('/'), data.as_slice())?;
    }
    Ok(b.into_inner()?)
}

/// A tar of directory `dir`'s contents placed at `at` inside the sandbox.
pub fn tar_dir_at(dir: &Path, at: &str) -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(at.trim_start_matches('/'), dir)
        .with_context(|| format!("reading inputs directory {}", dir.display()))?;
    Ok(b.into_inner()?)
}
