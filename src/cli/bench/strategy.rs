//! What every strategy implements, and the two that need no platform code: `native`
//! (jailbuilder's engine) and `bare` (the host, no sandbox).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use jailbuilder::backend::{
    Backend, BuildUser, CleanupReport, ExecOutcome, ExistingImage, Limits, ToolchainId,
};
use jailbuilder::engine::{BuildRequest, Engine, EngineConfig, PhaseTimings};
use jailbuilder::exec::{CancelToken, CommandSpec, PreparedCommand};
use jailbuilder::NativeBackend;

use super::workload::{Unit, CFLAGS, CWD};

/// One compile: a unit and its inputs tar (header + source under [`CWD`]).
pub struct Job<'a> {
    pub unit: &'a Unit,
    pub inputs: &'a [u8],
}

impl Job<'_> {
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = CFLAGS.iter().map(|s| s.to_string()).collect();
        a.extend([
            "-c".into(),
            self.unit.file.clone(),
            "-o".into(),
            self.unit.object(),
        ]);
        a
    }
}

pub fn env_vars() -> Vec<(String, String)> {
    vec![
        ("PATH".into(), "/usr/bin:/bin".into()),
        ("LC_ALL".into(), "C".into()),
    ]
}

/// A way of running compiles. `compile` is called from several threads at once.
pub trait Strategy: Send + Sync {
    fn name(&self) -> &'static str;
    /// Compiles and returns the object's bytes; an error (or a failed compile) ends the bench.
    fn compile(&self, job: &Job<'_>) -> anyhow::Result<Vec<u8>>;
    /// Blocks until the strategy's background work (recycling containers) is done.
    fn settle(&self) {}
    /// Processes this bench spawned (`Command`s) for this strategy so far, recycling included.
    fn spawned(&self) -> u64;
    /// Container recycle times since the last call.
    fn take_recycles(&self) -> Vec<Duration> {
        Vec::new()
    }
    /// A line for the report about the compiles since the last call (native: phase times).
    fn take_notes(&self) -> Option<String> {
        None
    }
    /// What "recycle" means for this strategy, for the report.
    fn recycle_what(&self) -> &'static str {
        "-"
    }
    /// Removes what the strategy created.
    fn shutdown(&self) -> anyhow::Result<()> {
        Ok(())
    }
    /// The platform backend under the engine (native only): the FreeBSD census reads its
    /// kernel-call counts (Linux counts with strace instead).
    #[cfg_attr(not(target_os = "freebsd"), allow(dead_code))]
    fn native_backend(&self) -> Option<&NativeBackend> {
        None
    }
}

/// Counts the processes the bench spawns.
#[derive(Default)]
pub struct Spawner {
    count: AtomicU64,
}

impl Spawner {
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Runs `cmd` to completion (stdin /dev/null), capturing its output.
    pub fn output(&self, cmd: &mut Command) -> anyhow::Result<Output> {
        self.count.fetch_add(1, Ordering::Relaxed);
        cmd.stdin(Stdio::null())
            .output()
            .with_context(|| format!("spawning {cmd:?}"))
    }

    /// Runs `cmd` and fails unless it succeeds (the seed's `check_run`).
    pub fn check_run(&self, cmd: &mut Command) -> anyhow::Result<Output> {
        let out = self.output(cmd)?;
        if !out.status.success() {
            bail!(
                "{cmd:?} failed with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out)
    }

    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub fn spawn(&self, cmd: &mut Command) -> anyhow::Result<std::process::Child> {
        self.count.fetch_add(1, Ordering::Relaxed);
        cmd.spawn().with_context(|| format!("spawning {cmd:?}"))
    }
}

/// Fails with the compiler's stderr unless it succeeded.
pub fn check_compile(what: &str, unit: &Unit, ok: bool, stderr: &[u8]) -> anyhow::Result<()> {
    if !ok {
        bail!(
            "{what}: compiling {} failed:\n{}",
            unit.file,
            String::from_utf8_lossy(stderr)
        );
    }
    Ok(())
}

// ------------------------------------------------------------------------------ native

/// The native backend with its `reset` timed: the recycle time of a container.
pub struct Timed<B> {
    inner: B,
    resets: Mutex<Vec<Duration>>,
}

impl<B: Backend> Backend for Timed<B> {
    type Image = B::Image;
    type Container = B::Container;
    type Error = B::Error;

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn is_job_error(&self, e: &B::Error) -> bool {
        self.inner.is_job_error(e)
    }
    fn remove_leftovers(&self) -> Result<CleanupReport, B::Error> {
        self.inner.remove_leftovers()
    }
    fn existing_images(&self) -> Result<Vec<ExistingImage<B::Image>>, B::Error> {
        self.inner.existing_images()
    }
    fn create_image(&self, id: &ToolchainId, tc: &mut dyn Read) -> Result<B::Image, B::Error> {
        self.inner.create_image(id, tc)
    }
    fn destroy_image(&self, image: B::Image) -> Result<(), B::Error> {
        self.inner.destroy_image(image)
    }
    fn create_container(&self, image: &B::Image) -> Result<B::Container, B::Error> {
        self.inner.create_container(image)
    }
    fn root<'c>(&self, c: &'c B::Container) -> &'c Path {
        self.inner.root(c)
    }
    fn exec(
        &self,
        c: &B::Container,
        cmd: &PreparedCommand,
        user: BuildUser,
        limits: &Limits,
        cancel: Option<&CancelToken>,
    ) -> Result<ExecOutcome, B::Error> {
        self.inner.exec(c, cmd, user, limits, cancel)
    }
    fn reset(&self, c: &mut B::Container) -> Result<(), B::Error> {
        let t = Instant::now();
        let r = self.inner.reset(c);
        self.resets.lock().unwrap().push(t.elapsed());
        r
    }
    fn destroy_container(&self, c: B::Container) -> Result<(), B::Error> {
        self.inner.destroy_container(c)
    }
    fn clean_all(&self) -> Result<CleanupReport, B::Error> {
        self.inner.clean_all()
    }
}

pub struct Native {
    /// "native", "native-fresh" (Linux: every reset mounts fresh layers) or "native-overlay"
    /// (Linux: no image directory bound over the overlay).
    name: &'static str,
    engine: Engine<Timed<NativeBackend>>,
    phases: Mutex<Vec<PhaseTimings>>,
    id: ToolchainId,
    archive: PathBuf,
    compiler: String,
}

impl Native {
    pub fn start(
        name: &'static str,
        backend: NativeBackend,
        engine: EngineConfig,
        archive: &Path,
        id: ToolchainId,
        compiler: &str,
    ) -> anyhow::Result<Native> {
        let engine = Engine::start(
            Timed {
                inner: backend,
                resets: Mutex::new(Vec::new()),
            },
            engine,
        )?;
        Ok(Native {
            name,
            engine,
            phases: Mutex::default(),
            id,
            archive: archive.to_path_buf(),
            compiler: compiler.to_string(),
        })
    }
}

impl Strategy for Native {
    fn name(&self) -> &'static str {
        self.name
    }

    fn compile(&self, job: &Job<'_>) -> anyhow::Result<Vec<u8>> {
        let archive: &Path = &self.archive;
        let out = self.engine.build(BuildRequest {
            toolchain: self.id.clone(),
            toolchain_archive: &archive,
            inputs: &mut &job.inputs[..],
            command: CommandSpec {
                executable: self.compiler.clone(),
                arguments: job.args(),
                env_vars: env_vars(),
                cwd: CWD.into(),
            },
            outputs: vec![job.unit.object()],
        })?;
        check_compile(
            self.name,
            job.unit,
            out.exec.status.success(),
            &out.exec.stderr,
        )?;
        self.phases.lock().unwrap().push(out.timings);
        match out.outputs.into_iter().next() {
            Some(o) => Ok(o.data),
            None => bail!("native: {} produced no object", job.unit.file),
        }
    }

    fn settle(&self) {
        self.engine.wait_idle();
    }

    fn spawned(&self) -> u64 {
        0
    }

    fn take_recycles(&self) -> Vec<Duration> {
        std::mem::take(&mut *self.engine.backend().resets.lock().unwrap())
    }

    fn recycle_what(&self) -> &'static str {
        "backend reset (in the background)"
    }

    fn take_notes(&self) -> Option<String> {
        let phases = std::mem::take(&mut *self.phases.lock().unwrap());
        let p50 = |f: fn(&PhaseTimings) -> Duration| {
            let mut v: Vec<Duration> = phases.iter().map(f).collect();
            v.sort();
            format!(
                "{:.3}",
                v.get(v.len().saturating_sub(1) / 2)
                    .copied()
                    .unwrap_or_default()
                    .as_secs_f64()
                    * 1e3
            )
        };
        Some(format!(
            "phases p50 ms: image {}, container {}, unpack+dirs {}, exec {}, outputs {}",
            p50(|t| t.image),
            p50(|t| t.container),
            p50(|t| t.unpack),
            p50(|t| t.exec),
            p50(|t| t.outputs)
        ))
    }

    fn shutdown(&self) -> anyhow::Result<()> {
        self.engine.shutdown();
        Ok(())
    }

    fn native_backend(&self) -> Option<&NativeBackend> {
        Some(&self.engine.backend().inner)
    }
}

// ------------------------------------------------------------------------------ bare

/// The host compiler, no sandbox: inputs unpacked into a fresh directory, the compiler
/// spawned there with its temporary files (`TMPDIR`) beside them, the object read back,
/// the directory removed. The directory is on the filesystem the caller chose for it (on
/// Linux a tmpfs, as native's writable layer is), so that the difference to native is the
/// sandbox and not where the compiler's files are written.
pub struct Bare {
    dir: PathBuf,
    compiler: String,
    next: AtomicU64,
    spawner: Arc<Spawner>,
}

impl Bare {
    pub fn new(dir: &Path, compiler: &str) -> anyhow::Result<Bare> {
        std::fs::create_dir_all(dir)?;
        Ok(Bare {
            dir: dir.to_path_buf(),
            compiler: compiler.to_string(),
            next: AtomicU64::new(0),
            spawner: Arc::default(),
        })
    }
}

impl Strategy for Bare {
    fn name(&self) -> &'static str {
        "bare"
    }

    fn compile(&self, job: &Job<'_>) -> anyhow::Result<Vec<u8>> {
        let root = self
            .dir
            .join(format!("b{}", self.next.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir(&root)?;
        tar::Archive::new(job.inputs)
            .unpack(&root)
            .context("bare: unpacking inputs")?;
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        let cwd = root.join(CWD.trim_start_matches('/'));
        let out = self.spawner.output(
            Command::new(&self.compiler)
                .args(job.args())
                .env_clear()
                .envs(env_vars())
                .env("TMPDIR", &tmp)
                .current_dir(&cwd),
        )?;
        check_compile("bare", job.unit, out.status.success(), &out.stderr)?;
        let obj = std::fs::read(cwd.join(job.unit.object())).context("bare: reading the object")?;
        std::fs::remove_dir_all(&root)?;
        Ok(obj)
    }

    fn spawned(&self) -> u64 {
        self.spawner.count()
    }
}

/// The seed PotBuilder's cleanup bookkeeping, shared by both cli ports: one cleanup thread
/// per build, admitted by spinning while more than `max` run (as the seed does), with a
/// count of those still running so `settle` can wait, and the time each took.
pub struct SeedCleanups {
    running: std::sync::atomic::AtomicUsize,
    max: usize,
    idle: (std::sync::Mutex<usize>, std::sync::Condvar),
    recycles: std::sync::Mutex<Vec<Duration>>,
}

impl SeedCleanups {
    pub fn new(max: usize) -> SeedCleanups {
        SeedCleanups {
            running: std::sync::atomic::AtomicUsize::new(0),
            max,
            idle: (std::sync::Mutex::new(0), std::sync::Condvar::new()),
            recycles: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Waits (spinning, like the seed) for a cleanup slot, then counts one more cleanup.
    pub fn begin(&self) {
        use std::sync::atomic::Ordering;
        while self.running.fetch_add(1, Ordering::SeqCst) > self.max {
            self.running.fetch_sub(1, Ordering::SeqCst);
            std::hint::spin_loop();
        }
        *self.idle.0.lock().unwrap() += 1;
    }

    /// A cleanup ended; `took` is its time when it succeeded.
    pub fn end(&self, took: Option<Duration>) {
        if let Some(t) = took {
            self.recycles.lock().unwrap().push(t);
        }
        self.running
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        let mut n = self.idle.0.lock().unwrap();
        *n -= 1;
        self.idle.1.notify_all();
    }

    /// Blocks until no cleanup runs.
    pub fn settle(&self) {
        let (lock, cv) = &self.idle;
        let mut n = lock.lock().unwrap();
        while *n > 0 {
            n = cv.wait(n).unwrap();
        }
    }

    pub fn take_recycles(&self) -> Vec<Duration> {
        std::mem::take(&mut *self.recycles.lock().unwrap())
    }
}
