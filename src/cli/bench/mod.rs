//! `jailbuilder bench`: the same C workload through each strategy in one run, interleaved
//! round-robin so that machine noise hits all alike.
//!
//! - `native`: jailbuilder's engine and the platform backend with its warm pool;
//! - `cli`: the seed's PotBuilder step sequence, one spawned CLI process per step (real
//!   `pot`/`jexec` on FreeBSD, util-linux equivalents on Linux);
//! - `bwrap` (Linux): sccache-dist's OverlayBuilder, one `bwrap` per compile;
//! - `bare`: the host compiler without a sandbox, the floor.
//!
//! Every object must be byte-identical across strategies: a mismatch is an error.
//!
//! SIGINT or SIGTERM stops the bench after the compiles in flight: it then shuts every
//! strategy down, unmounts and removes what it made, and exits with 130. A second signal
//! ends it at once (`jailbuilder clean` or the next run removes what that leaves).

#[cfg(target_os = "linux")]
mod census;
mod report;
mod strategy;
mod workload;

#[cfg(target_os = "freebsd")]
mod freebsd;
#[cfg(target_os = "linux")]
mod linux;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use jailbuilder::backend::ToolchainId;
use jailbuilder::engine::EngineConfig;
use jailbuilder::toolchain::{package, PackageOptions};

use super::common::{self, BuilderArgs, Progress};
use report::{Cell, Report};
use strategy::{Job, Strategy};

#[cfg(target_os = "linux")]
const DEFAULT_STRATEGIES: &str = "native,cli,bwrap,bare";
#[cfg(not(target_os = "linux"))]
const DEFAULT_STRATEGIES: &str = "native,cli,bare";
const DEFAULT_ROOT: &str = "/var/lib/jailbuilder-bench";

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  sudo jailbuilder bench --json bench.json --plot bench.svg\n  \
sudo jailbuilder bench --compiles 4 --concurrency 1 --quick    # CI smoke run\n\n\
Everything lives under --state-dir (default /var/lib/jailbuilder-bench): native/ is the engine's\n\
state directory, cli/ and bwrap/ the other strategies', work/ the toolchain and scratch."
)]
pub struct BenchArgs {
    /// Measured compiles per strategy and concurrency level.
    #[arg(long, default_value_t = 96)]
    pub compiles: usize,
    /// Concurrency levels, comma-separated (default: 1 and the number of cores).
    #[arg(long, value_delimiter = ',', value_name = "N,N")]
    pub concurrency: Vec<usize>,
    /// Strategies, comma-separated: native, cli, bwrap (Linux), bare; also native-fresh
    /// (Linux: native with `reset_in_place = false`) and native-overlay (Linux: native with
    /// `bind_image_dirs = false`).
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_STRATEGIES, value_name = "S,S")]
    pub strategies: Vec<String>,
    /// Write the results as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write an SVG plot (overhead and throughput per strategy).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Host C compiler to package and use.
    #[arg(long, default_value = "cc")]
    pub compiler: String,
    /// Small translation units in the generated project.
    #[arg(long, default_value_t = 30)]
    pub small_units: usize,
    /// Functions (~20 lines each) per small unit; 0 makes near-empty units whose compile
    /// takes a few ms, to measure the sandbox's own cost precisely.
    #[arg(long, default_value_t = 5)]
    pub small_functions: usize,
    /// Large translation units in the generated project.
    #[arg(long, default_value_t = 2)]
    pub large_units: usize,
    /// Lines of each large unit.
    #[arg(long, default_value_t = 3000)]
    pub large_lines: usize,
    /// Compiles per strategy per round of the interleaving (default: 8 x concurrency).
    #[arg(long)]
    pub chunk: Option<usize>,
    /// A tiny project (3 small units, 1 of 400 lines), one warm-up compile, one round: a smoke run for CI.
    #[arg(long)]
    pub quick: bool,
    /// FreeBSD cli strategy: pot's filesystem root (default $JAILBUILDER_POT_FS_ROOT or /opt/pot).
    #[arg(long, value_name = "DIR")]
    pub pot_fs_root: Option<PathBuf>,
    /// FreeBSD cli strategy: the pot cloned for images (default $JAILBUILDER_POT_TEMPLATE or sccache-template).
    #[arg(long, value_name = "POT")]
    pub pot_template: Option<String>,
    #[command(flatten)]
    pub builder: BuilderArgs,
}

/// Progress: a bar on a terminal, a line per 10% otherwise.
struct Bar {
    bar: Option<Progress>,
    total: usize,
    done: usize,
}

impl Bar {
    fn new(total: usize) -> Bar {
        let bar = std::io::stderr()
            .is_terminal()
            .then(|| Progress::new("bench", total));
        Bar {
            bar,
            total,
            done: 0,
        }
    }

    fn inc(&mut self, what: &str) {
        self.done += 1;
        match &mut self.bar {
            Some(b) => b.inc(what),
            None => {
                if self.done * 10 / self.total.max(1) != (self.done - 1) * 10 / self.total.max(1)
                    || self.done == self.total
                {
                    eprintln!("  bench {}/{} {what}", self.done, self.total);
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}

/// CPU accounting for everything the bench starts: on Linux a cgroup (v1 cpuacct) of its
/// own, which also counts processes that are never reaped by the bench (bwrap's pid 1);
/// elsewhere, getrusage of the bench and its reaped descendants.
struct CpuMeter {
    cgroup: Option<PathBuf>,
}

impl CpuMeter {
    fn new() -> CpuMeter {
        let base = Path::new("/sys/fs/cgroup/cpuacct");
        let dir = base.join(format!("jailbuilder-bench-{}", std::process::id()));
        let ok = base.join("cpuacct.usage").exists()
            && std::fs::create_dir(&dir).is_ok()
            && std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string()).is_ok();
        if !ok {
            let _ = std::fs::remove_dir(&dir);
        }
        CpuMeter {
            cgroup: ok.then_some(dir),
        }
    }

    fn now(&self) -> Duration {
        if let Some(ns) = self
            .cgroup
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.join("cpuacct.usage")).ok())
            .and_then(|s| s.trim().parse().ok())
        {
            return Duration::from_nanos(ns);
        }
        cpu_time()
    }

    /// Moves the bench back to the root cgroup and removes its own.
    fn close(&self) {
        if let Some(dir) = &self.cgroup {
            let root = dir
                .parent()
                .expect("a cgroup has a parent")
                .join("cgroup.procs");
            let _ = std::fs::write(root, std::process::id().to_string());
            for _ in 0..100 {
                if std::fs::remove_dir(dir).is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!(
                "jailbuilder bench: could not remove cgroup {}",
                dir.display()
            );
        }
    }
}

/// CPU time (user + system) of this process and of its reaped descendants.
fn cpu_time() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::new(t.tv_sec().max(0) as u64, (t.tv_usec().max(0) as u32) * 1000)
    };
    [UsageWho::RUSAGE_SELF, UsageWho::RUSAGE_CHILDREN]
        .into_iter()
        .filter_map(|w| getrusage(w).ok())
        .map(|u| tv(u.user_time()) + tv(u.system_time()))
        .sum()
}

/// What a chunk measured.
struct ChunkResult {
    latencies: Vec<(usize, Duration)>,
    wall: Duration,
    cpu: Duration,
    tasks: Option<u64>,
}

/// Tasks (processes and threads) the kernel has created since boot: /proc/stat `processes`.
fn forks_since_boot() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("processes "))
        .and_then(|n| n.trim().parse().ok())
}

/// One strategy's results at one concurrency level, accumulated over rounds.
#[derive(Default)]
struct Acc {
    /// (position in the sequence, latency)
    latencies: Vec<(usize, Duration)>,
    wall: Duration,
    cpu: Duration,
    tasks: Option<u64>,
    spawned: u64,
}

struct Bench<'a> {
    jobs: Vec<Job<'a>>,
    /// The first object seen per unit: every other must be identical.
    refs: Mutex<HashMap<String, (String, Vec<u8>)>>,
    bar: Mutex<Bar>,
    cpu: CpuMeter,
    /// Set by SIGINT/SIGTERM: no compile starts after it.
    stop: Arc<AtomicBool>,
}

impl Bench<'_> {
    fn check(&self, strategy: &str, job: &Job<'_>, object: Vec<u8>) -> anyhow::Result<()> {
        let mut refs = self.refs.lock().unwrap();
        match refs.get(&job.unit.file) {
            None => {
                refs.insert(job.unit.file.clone(), (strategy.to_string(), object));
            }
            Some((who, r)) if *r != object => bail!(
                "{strategy} built {} differently from {who} ({} vs {} bytes): objects must be byte-identical",
                job.unit.object(),
                object.len(),
                r.len()
            ),
            Some(_) => {}
        }
        Ok(())
    }

    /// Runs the compiles at `positions` of the sequence with `concurrency` workers (large
    /// units first, so that no worker idles behind one at the end), then waits for the
    /// strategy's background work. Wall and CPU time run until it has settled.
    fn chunk(
        &self,
        s: &dyn Strategy,
        positions: &[usize],
        concurrency: usize,
    ) -> anyhow::Result<ChunkResult> {
        let mut order = positions.to_vec();
        order.sort_by_key(|&p| !self.jobs[p].unit.large);
        let queue = Mutex::new(order.into_iter().rev().collect::<Vec<_>>());
        let results = Mutex::new(Vec::new());
        let forks0 = forks_since_boot();
        let cpu0 = self.cpu.now();
        let start = Instant::now();
        let errors: Vec<anyhow::Error> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..concurrency.min(positions.len()).max(1))
                .map(|_| {
                    scope.spawn(|| -> anyhow::Result<()> {
                        loop {
                            if self.stop.load(Ordering::Relaxed) {
                                bail!("interrupted by a signal");
                            }
                            let Some(pos) = queue.lock().unwrap().pop() else {
                                return Ok(());
                            };
                            let job = &self.jobs[pos];
                            let t = Instant::now();
                            let object = s.compile(job)?;
                            let latency = t.elapsed();
                            self.check(s.name(), job, object)?;
                            results.lock().unwrap().push((pos, latency));
                            self.bar.lock().unwrap().inc(s.name());
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .filter_map(|w| {
                    w.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("worker panicked")))
                        .err()
                })
                .collect()
        });
        s.settle();
        let wall = start.elapsed();
        let cpu = self.cpu.now().saturating_sub(cpu0);
        let tasks = forks0
            .zip(forks_since_boot())
            .map(|(a, b)| b.saturating_sub(a));
        if let Some(e) = errors.into_iter().next() {
            return Err(e.context(format!("strategy {}", s.name())));
        }
        Ok(ChunkResult {
            latencies: results.into_inner().unwrap(),
            wall,
            cpu,
            tasks,
        })
    }
}

/// SIGINT and SIGTERM set the returned flag; a second one ends the process at once with
/// 130, as if no handler were installed.
fn stop_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // Registered first, so it sees the flag as the previous signal left it.
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&stop))
            .context("installing signal handlers")?;
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    Ok(stop)
}

#[cfg(target_os = "freebsd")]
fn env_or(flag: &Option<PathBuf>, var: &str, default: &str) -> PathBuf {
    flag.clone()
        .or_else(|| std::env::var_os(var).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(default))
}

/// The native backend of `cfg` under the engine, reported as `name`.
fn native_strategy(
    name: &'static str,
    cfg: &jailbuilder::config::BuilderConfig,
    ctx: &Ctx,
) -> anyhow::Result<Box<dyn Strategy>> {
    let backend = jailbuilder::native::open_backend(cfg)
        .context("opening the sandbox backend (try `jailbuilder doctor`)")?;
    Ok(Box::new(strategy::Native::start(
        name,
        backend,
        ctx.engine.clone(),
        &ctx.archive,
        ctx.id.clone(),
        &ctx.compiler,
    )?))
}

fn make_strategy(name: &str, ctx: &Ctx) -> anyhow::Result<Box<dyn Strategy>> {
    Ok(match name {
        "native" => native_strategy("native", &ctx.cfg, ctx)?,
        // The native backend as it was before resets emptied the upper layer in place.
        #[cfg(target_os = "linux")]
        "native-fresh" => {
            let mut cfg = ctx.cfg.clone();
            cfg.reset_in_place = false;
            cfg.state_dir = ctx.root.join("native-fresh");
            native_strategy("native-fresh", &cfg, ctx)?
        }
        // The native backend with every path through the overlay (no binds of the image's
        // directories).
        #[cfg(target_os = "linux")]
        "native-overlay" => {
            let mut cfg = ctx.cfg.clone();
            cfg.bind_image_dirs = false;
            cfg.state_dir = ctx.root.join("native-overlay");
            native_strategy("native-overlay", &cfg, ctx)?
        }
        "bare" => {
            let dir = ctx.root.join("work/bare");
            // Native builds on a tmpfs upper layer: so does bare, or the comparison
            // measures ext4's journal against tmpfs instead of the sandbox.
            #[cfg(target_os = "linux")]
            linux::mount_tmpfs(&dir)?;
            Box::new(strategy::Bare::new(&dir, &ctx.compiler)?)
        }
        #[cfg(target_os = "linux")]
        "cli" => {
            let base = ctx.root.join("cli-base");
            linux::make_base_layer(&base)?;
            Box::new(linux::CliLinux::new(
                &ctx.root.join("cli"),
                &ctx.unpacked()?,
                &base,
                &ctx.compiler,
            )?)
        }
        #[cfg(target_os = "linux")]
        "bwrap" => Box::new(linux::Bwrap::new(
            &ctx.root.join("bwrap"),
            &ctx.unpacked()?,
            ctx.id.as_str(),
            &ctx.compiler,
        )?),
        #[cfg(target_os = "freebsd")]
        "cli" => {
            let fs_root = env_or(&ctx.pot_fs_root, "JAILBUILDER_POT_FS_ROOT", "/opt/pot");
            let template = ctx
                .pot_template
                .clone()
                .or_else(|| std::env::var("JAILBUILDER_POT_TEMPLATE").ok())
                .unwrap_or_else(|| "sccache-template".into());
            Box::new(freebsd::CliPot::new(
                &fs_root,
                &template,
                &ctx.archive,
                ctx.id.as_str(),
                &ctx.compiler,
            )?)
        }
        other => bail!(
            "unknown strategy {other:?} on {}: expected one of {DEFAULT_STRATEGIES}{}",
            std::env::consts::OS,
            if cfg!(target_os = "linux") {
                ",native-fresh,native-overlay"
            } else {
                ""
            }
        ),
    })
}

struct Ctx {
    root: PathBuf,
    cfg: jailbuilder::config::BuilderConfig,
    engine: EngineConfig,
    archive: PathBuf,
    id: ToolchainId,
    compiler: String,
    #[cfg_attr(not(target_os = "freebsd"), allow(dead_code))]
    pot_fs_root: Option<PathBuf>,
    #[cfg_attr(not(target_os = "freebsd"), allow(dead_code))]
    pot_template: Option<String>,
    unpacked: Mutex<Option<PathBuf>>,
}

impl Ctx {
    /// The toolchain unpacked once on the host: the lower layer of the cli and bwrap
    /// strategies (sccache's toolchains/<archive_id>).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn unpacked(&self) -> anyhow::Result<PathBuf> {
        let mut u = self.unpacked.lock().unwrap();
        if let Some(p) = &*u {
            return Ok(p.clone());
        }
        let dir = self.root.join("toolchain").join(self.id.as_str());
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let f = std::io::BufReader::new(std::fs::File::open(&self.archive)?);
        tar::Archive::new(flate2::read::GzDecoder::new(f))
            .unpack(&dir)
            .context("unpacking the toolchain")?;
        *u = Some(dir.clone());
        Ok(dir)
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    common::require_root("jailbuilder bench")?;
    let stop = stop_on_signals()?;
    let load_before = report::loadavg();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut levels = if args.concurrency.is_empty() {
        vec![1, cores]
    } else {
        args.concurrency.clone()
    };
    levels.dedup();
    if levels.contains(&0) || args.compiles == 0 {
        bail!("--compiles and --concurrency must be at least 1");
    }
    let mut names: Vec<String> = Vec::new();
    for s in &args.strategies {
        let s = s.trim().to_string();
        if !names.contains(&s) {
            names.push(s);
        }
    }
    let max_c = *levels.iter().max().expect("at least one level");

    let root = common::absolute(
        args.builder
            .state_dir
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_ROOT)),
    )?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&root)
        .with_context(|| format!("creating {}", root.display()))?;
    #[cfg(target_os = "linux")]
    for d in linux::MOUNTED_DIRS {
        linux::unmount_beneath(&root.join(d))?;
    }
    let mut cfg = args.builder.load()?;
    cfg.state_dir = root.join("native");
    #[cfg(target_os = "freebsd")]
    {
        if args.builder.dataset_root.is_none() && args.builder.config.is_none() {
            cfg.dataset_root = std::env::var("JAILBUILDER_ZFS_ROOT").map_or_else(
                |_| "zroot/jailbuilder-bench".into(),
                |r| format!("{r}/bench"),
            );
        }
        if args.builder.mount_root.is_none() && args.builder.config.is_none() {
            cfg.mount_root = root.join("mnt");
        }
        if cfg.base_snapshot.is_none() {
            cfg.base_snapshot = std::env::var("JAILBUILDER_BASE_SNAPSHOT").ok();
        }
        if args.builder.build_id_base.is_none() {
            if let Some(uid) = std::env::var("JAILBUILDER_BUILD_UID")
                .ok()
                .and_then(|u| u.parse().ok())
            {
                (cfg.build_uid_base, cfg.build_gid_base) = (uid, None);
            }
        }
    }
    let engine = EngineConfig {
        max_containers: 2 * max_c + 2,
        max_containers_per_toolchain: 2 * max_c + 2,
        warm_per_toolchain: max_c,
        ..cfg.engine_config()
    };

    let (small, large, lines) = if args.quick {
        (3, 1, 400)
    } else {
        (args.small_units, args.large_units, args.large_lines)
    };
    let w = workload::generate(small, args.small_functions, large, lines);
    if w.units.is_empty() {
        bail!("the workload has no translation units");
    }

    let t = Instant::now();
    let work = root.join("work");
    std::fs::create_dir_all(&work)?;
    let archive = work.join("toolchain.tar.gz");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&archive)?);
    let summary = package(
        &PackageOptions {
            compiler: args.compiler.clone(),
            headers: true,
            extra: vec![],
        },
        &mut out,
    )?;
    drop(out);
    let compiler = summary.compiler.to_string_lossy().into_owned();
    let id = ToolchainId::new(jailbuilder::toolchain::archive_id(&archive)?)?;
    eprintln!(
        "jailbuilder bench: packaged {compiler} ({} files, {:.0} MiB) in {:.1} s; {} small + {} large units ({} lines)",
        summary.files,
        summary.bytes as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64(),
        small,
        large,
        lines
    );

    let inputs: Vec<Vec<u8>> = w
        .units
        .iter()
        .map(|u| {
            common::tar_files(&[
                (
                    format!("{}/{}", workload::CWD, workload::HEADER),
                    w.header.as_bytes().to_vec(),
                ),
                (
                    format!("{}/{}", workload::CWD, u.file),
                    u.source.as_bytes().to_vec(),
                ),
            ])
        })
        .collect::<anyhow::Result<_>>()?;
    let ctx = Ctx {
        root: root.clone(),
        cfg,
        engine,
        archive,
        id,
        compiler: compiler.clone(),
        pot_fs_root: args.pot_fs_root.clone(),
        pot_template: args.pot_template.clone(),
        unpacked: Mutex::new(None),
    };

    // The sequence: warm-up first (unmeasured), then per level `compiles` compiles.
    let warm = if args.quick {
        1
    } else {
        (2 * max_c).max(w.units.len().min(8))
    };
    let seq = workload::sequence(&w, warm + args.compiles);
    let bench = Bench {
        jobs: seq
            .iter()
            .map(|&u| Job {
                unit: &w.units[u],
                inputs: &inputs[u],
            })
            .collect(),
        refs: Mutex::new(HashMap::new()),
        bar: Mutex::new(Bar::new(
            names.len() * (warm + args.compiles * levels.len()),
        )),
        cpu: CpuMeter::new(),
        stop: Arc::clone(&stop),
    };

    let t = Instant::now();
    let mut strategies: Vec<Box<dyn Strategy>> = Vec::new();
    let result = (|| -> anyhow::Result<Report> {
        for n in &names {
            strategies
                .push(make_strategy(n, &ctx).with_context(|| format!("setting up strategy {n}"))?);
        }
        // How equal the page caches of the toolchain's copies ended up (Linux).
        let page_cache_note: Option<String>;
        // Warm-up: builds the images and fills the pools; checks objects too.
        let warm_positions: Vec<usize> = (0..warm).collect();
        for s in &strategies {
            bench.chunk(s.as_ref(), &warm_positions, max_c)?;
            s.take_recycles();
            s.take_notes();
        }
        #[cfg(target_os = "linux")]
        {
            let r = linux::refill_toolchains(&root, &ctx.archive, &names)?;
            eprintln!(
                "jailbuilder bench: page cache refilled for every strategy's copy of the \
                 toolchain: {} files, {} MiB",
                r.refilled.files,
                r.refilled.bytes >> 20
            );
            page_cache_note = Some(format!(
                "page cache: share of the pages of the toolchain's {} large files in folios of 64 KiB or more: {}",
                r.files,
                r.shares
                    .iter()
                    .map(|(name, s)| format!("{name} {:.0} %", s * 100.0))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        #[cfg(not(target_os = "linux"))]
        {
            page_cache_note = None;
        }
        let mut cells = Vec::new();
        for &c in &levels {
            let chunk = if args.quick {
                args.compiles
            } else {
                args.chunk.unwrap_or(8 * c).max(1)
            };
            let positions: Vec<usize> = (warm..warm + args.compiles).collect();
            let mut acc: Vec<Acc> = strategies
                .iter()
                .map(|s| Acc {
                    spawned: s.spawned(),
                    tasks: Some(0),
                    ..Acc::default()
                })
                .collect();
            for (round, part) in positions.chunks(chunk).enumerate() {
                for k in 0..strategies.len() {
                    let i = (k + round) % strategies.len();
                    let r = bench.chunk(strategies[i].as_ref(), part, c)?;
                    let a = &mut acc[i];
                    a.latencies.extend(r.latencies);
                    a.wall += r.wall;
                    a.cpu += r.cpu;
                    a.tasks = a.tasks.zip(r.tasks).map(|(x, y)| x + y);
                }
            }
            for (s, a) in strategies.iter().zip(acc) {
                let spawned = s.spawned() - a.spawned;
                let mut cell = Cell::new(
                    s.name(),
                    c,
                    a.latencies,
                    a.wall,
                    a.tasks,
                    spawned,
                    s.take_recycles(),
                    s.recycle_what(),
                );
                cell.set_cpu(a.cpu, s.take_notes());
                cells.push(cell);
            }
        }
        if bench.stop.load(Ordering::Relaxed) {
            bail!("interrupted by a signal");
        }
        let mut report = Report::new(cells, &levels, cores);
        report.page_cache = page_cache_note;
        // The syscall census: a few more compiles of native and bare, traced.
        #[cfg(target_os = "linux")]
        {
            let n = if args.quick { 2 } else { 16 };
            let jobs = &bench.jobs[warm..(warm + n).min(bench.jobs.len())];
            for s in strategies
                .iter()
                .filter(|s| matches!(s.name(), "native" | "bare"))
            {
                match census::take(s.as_ref(), jobs)? {
                    Ok(c) => report.census.push(c),
                    Err(why) => {
                        report.census_note = Some(why);
                        break;
                    }
                }
            }
        }
        #[cfg(target_os = "freebsd")]
        {
            let n = if args.quick { 2 } else { 16 };
            let jobs = &bench.jobs[warm..(warm + n).min(bench.jobs.len())];
            report.census_what = "kernel calls (the FreeBSD backend's Kernel seam, counted; \
                                  exec = pdfork + jail_attach + execve, each other call one \
                                  system call or ZFS ioctl, jail_wait_gone a jail_get poll)";
            for s in &strategies {
                if let Some(c) = freebsd::census(s.as_ref(), jobs)? {
                    report.census.push(c);
                }
            }
        }
        Ok(report)
    })();
    bench.bar.lock().unwrap().finish();
    for s in &strategies {
        if let Err(e) = s.shutdown() {
            eprintln!("jailbuilder bench: shutting down {}: {e:#}", s.name());
        }
    }
    drop(strategies);
    #[cfg(target_os = "linux")]
    {
        for d in linux::MOUNTED_DIRS {
            let _ = linux::unmount_beneath(&root.join(d));
        }
    }
    bench.cpu.close();
    for d in ["toolchain", "cli-base", "work/bare"] {
        let _ = std::fs::remove_dir_all(root.join(d));
    }
    // A signal also reaches the compilers of bare, cli and bwrap (the terminal's process
    // group), which then fail: after a signal, any error is the interruption.
    if bench.stop.load(Ordering::Relaxed) {
        eprintln!(
            "jailbuilder bench: interrupted; shut down and removed what it mounted under {}",
            root.display()
        );
        return Ok(ExitCode::from(130));
    }
    let mut report = result?;
    report.set_context(
        &compiler,
        [small, large, lines, args.compiles, warm],
        t.elapsed(),
        args.quick,
        load_before,
    );

    print!("{}", report.table());
    if let Some(p) = &args.json {
        std::fs::write(p, report.json()).with_context(|| format!("writing {}", p.display()))?;
        eprintln!("jailbuilder bench: wrote {}", p.display());
    }
    if let Some(p) = &args.plot {
        std::fs::write(p, report.svg()).with_context(|| format!("writing {}", p.display()))?;
        eprintln!("jailbuilder bench: wrote {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}
