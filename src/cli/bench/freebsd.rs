//! The seed's `PotBuilder` (sccache's build_freebsd.rs) against the real `pot` and `jexec`,
//! step for step: `pot clone`/`pot snapshot`/`pot start` for a new container, per compile
//! inputs unpacked into `<pot_fs_root>/jails/<cid>/m`, `jexec mkdir -p`, `jexec env ... sh
//! -c`, one `jexec cat` per output, then `pot stop`/`pot revert`/`pot start` in a
//! background thread. Pot names start with `jbbench-` (not `sccache-`), so a bench never
//! touches a running sccache-dist's pots.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::report::Census;
use super::strategy::{check_compile, env_vars, Job, SeedCleanups, Spawner, Strategy};
use super::workload::CWD;

const BUILDER_PREFIX: &str = "jbbench-builder-";
const IMAGE_PREFIX: &str = "jbbench-image-";

struct PotInner {
    pot_cmd: PathBuf,
    pot_fs_root: PathBuf,
    pot_clone_args: Vec<String>,
    image: String,
    compiler: String,
    spawner: Spawner,
    ready: Mutex<Vec<String>>,
    cleanups: SeedCleanups,
}

pub struct CliPot {
    inner: Arc<PotInner>,
}

impl CliPot {
    /// Removes leftover `jbbench-` pots, then makes the toolchain image from `template`
    /// (make_image: clone, unpack the toolchain into it, snapshot).
    pub fn new(
        pot_fs_root: &Path,
        template: &str,
        toolchain: &Path,
        archive_id: &str,
        compiler: &str,
    ) -> anyhow::Result<CliPot> {
        let pot_cmd = PathBuf::from("pot");
        let spawner = Spawner::default();
        let listed = spawner
            .check_run(Command::new(&pot_cmd).args(["ls", "-q"]))
            .context("`pot ls -q` (is pot installed?)")?;
        for cid in String::from_utf8_lossy(&listed.stdout)
            .split('\n')
            .map(str::trim)
        {
            if cid.starts_with(BUILDER_PREFIX) || cid.starts_with(IMAGE_PREFIX) {
                if let Err(e) = pot_rm(&spawner, &pot_cmd, cid) {
                    eprintln!("jailbuilder bench: removing pot {cid}: {e:#}");
                }
            }
        }
        let image = format!("{IMAGE_PREFIX}{archive_id}");
        spawner
            .check_run(Command::new(&pot_cmd).args(["clone", "-p", &image, "-P", template]))
            .context("Failed to create pot container")?;
        let tc = std::fs::File::open(toolchain)?;
        tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(tc)))
            .unpack(pot_fs_root.join("jails").join(&image).join("m"))
            .context("unpacking the toolchain into the pot image")?;
        spawner
            .check_run(Command::new(&pot_cmd).args(["snapshot", "-p", &image]))
            .context("Failed to snapshot container after build")?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(CliPot {
            inner: Arc::new(PotInner {
                pot_cmd,
                pot_fs_root: pot_fs_root.to_path_buf(),
                pot_clone_args: Vec::new(),
                image,
                compiler: compiler.to_string(),
                spawner,
                ready: Mutex::new(Vec::new()),
                cleanups: SeedCleanups::new(cores * 3),
            }),
        })
    }
}

fn pot_rm(spawner: &Spawner, pot_cmd: &Path, cid: &str) -> anyhow::Result<()> {
    spawner
        .check_run(Command::new(pot_cmd).args(["destroy", "-F", "-p", cid]))
        .map(drop)
        .context("Failed to force delete container")
}

impl PotInner {
    fn start_container(&self) -> anyhow::Result<String> {
        let cid = format!("{BUILDER_PREFIX}{}", uuid::Uuid::new_v4());
        let mut clone_args: Vec<&str> = vec!["clone", "-p", &cid, "-P", &self.image];
        clone_args.extend(self.pot_clone_args.iter().map(String::as_str));
        self.spawner
            .check_run(Command::new(&self.pot_cmd).args(&clone_args))
            .context("Failed to create pot container")?;
        self.spawner
            .check_run(Command::new(&self.pot_cmd).args(["snapshot", "-p", &cid]))
            .context("Failed to snapshotpot container")?;
        self.spawner
            .check_run(Command::new(&self.pot_cmd).args(["start", "-p", &cid]))
            .context("Failed to start container")?;
        Ok(cid)
    }

    fn clean_container(&self, cid: &str) -> anyhow::Result<()> {
        // The seed runs a hard-coded "pot" here; pot_cmd is "pot" in the bench too.
        self.spawner
            .check_run(Command::new("pot").args(["stop", "-p", cid]))
            .context("Failed to stop container")?;
        self.spawner
            .check_run(Command::new("pot").args(["revert", "-p", cid]))
            .context("Failed to revert container")?;
        self.spawner
            .check_run(Command::new("pot").args(["start", "-p", cid]))
            .context("Failed to (re)start container")?;
        Ok(())
    }

    fn perform_build(&self, cid: &str, job: &Job<'_>) -> anyhow::Result<Vec<u8>> {
        tar::Archive::new(job.inputs)
            .unpack(self.pot_fs_root.join("jails").join(cid).join("m"))
            .context("Failed to unpack inputs to pot")?;
        let cwd = Path::new(CWD);
        let object = job.unit.object();
        let mut cmd = Command::new("jexec");
        cmd.args([cid, "mkdir", "-p"]).arg(cwd);
        if let Some(p) = Path::new(&object).parent() {
            cmd.arg(cwd.join(p));
        }
        self.spawner
            .check_run(&mut cmd)
            .context("Failed to create directories required for compile in container")?;

        let mut cmd = Command::new("jexec");
        cmd.arg(cid).arg("env");
        for (k, v) in env_vars() {
            cmd.arg(format!("{k}={v}"));
        }
        cmd.args(["sh", "-c", "cd \"$1\" && shift && exec \"$@\""]);
        cmd.arg(&self.compiler)
            .arg(cwd)
            .arg(&self.compiler)
            .args(job.args());
        let out = self
            .spawner
            .output(&mut cmd)
            .context("Failed to start executing compile")?;
        check_compile("cli", job.unit, out.status.success(), &out.stderr)?;

        let out = self.spawner.output(
            Command::new("jexec")
                .args([cid, "cat"])
                .arg(cwd.join(&object)),
        )?;
        if !out.status.success() {
            bail!("cli: missing output {object}");
        }
        Ok(out.stdout)
    }
}

impl Strategy for CliPot {
    fn name(&self) -> &'static str {
        "cli"
    }

    fn compile(&self, job: &Job<'_>) -> anyhow::Result<Vec<u8>> {
        let inner = &self.inner;
        let cid = inner.ready.lock().unwrap().pop();
        let cid = match cid {
            Some(c) => c,
            None => inner.start_container()?,
        };
        let result = inner.perform_build(&cid, job);
        // As the seed: a cleanup thread per build, spinning while too many run.
        inner.cleanups.begin();
        let bg = Arc::clone(inner);
        std::thread::spawn(move || {
            let t = Instant::now();
            let mut took = None;
            match bg.clean_container(&cid) {
                Ok(()) => {
                    took = Some(t.elapsed());
                    bg.ready.lock().unwrap().push(cid);
                }
                Err(e) => {
                    eprintln!("jailbuilder bench: cli: cleaning pot {cid} failed: {e:#}");
                    let _ = pot_rm(&bg.spawner, &bg.pot_cmd, &cid);
                }
            }
            bg.cleanups.end(took);
        });
        result
    }

    fn settle(&self) {
        self.inner.cleanups.settle();
    }

    fn spawned(&self) -> u64 {
        self.inner.spawner.count()
    }

    fn take_recycles(&self) -> Vec<Duration> {
        self.inner.cleanups.take_recycles()
    }

    fn recycle_what(&self) -> &'static str {
        "pot stop + pot revert + pot start"
    }

    fn shutdown(&self) -> anyhow::Result<()> {
        self.settle();
        let pots = std::mem::take(&mut *self.inner.ready.lock().unwrap());
        for cid in pots.iter().chain(std::iter::once(&self.inner.image)) {
            if let Err(e) = pot_rm(&self.inner.spawner, &self.inner.pot_cmd, cid) {
                eprintln!("jailbuilder bench: removing pot {cid}: {e:#}");
            }
        }
        Ok(())
    }
}

/// The FreeBSD census: the kernel calls (the backend's [`Kernel`] seam, counted by
/// [`jailbuilder::freebsd::Counted`]) that `jobs` compiles of native and their resets make,
/// per compile. `exec` is the only call on a compile's path (pdfork + jail_attach + execve
/// of the compiler); everything else is the recycler's reset. None for other strategies.
///
/// [`Kernel`]: jailbuilder::freebsd::Kernel
pub fn census(s: &dyn Strategy, jobs: &[Job<'_>]) -> anyhow::Result<Option<Census>> {
    let Some(backend) = s.native_backend() else {
        return Ok(None);
    };
    let before = backend.kernel().calls();
    for job in jobs {
        s.compile(job)?;
        s.settle();
    }
    let n = jobs.len().max(1) as f64;
    let mut compile = Vec::new();
    let mut reset = Vec::new();
    for (name, count) in backend.kernel().calls() {
        let k = (count - before.get(name).copied().unwrap_or(0)) as f64 / n;
        if k > 0.0 {
            let side = if name == "exec" {
                &mut compile
            } else {
                &mut reset
            };
            side.push((name.to_string(), k));
        }
    }
    reset.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(Some(Census {
        strategy: s.name(),
        compiles: jobs.len(),
        per_compile: compile.iter().map(|c| c.1).sum(),
        per_reset: reset.iter().map(|c| c.1).sum(),
        top_compile: compile,
        top_reset: reset,
    }))
}
