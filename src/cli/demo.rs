//! `jailbuilder demo`: the newcomer's tour. Packages the host C compiler, compiles a small
//! bundled project with every compile in its own sandbox (in parallel, from the warm pool),
//! links the objects on the host, runs the program, and shows where the time went.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use jailbuilder::backend::ToolchainId;
use jailbuilder::engine::{BuildOutcome, BuildRequest, Engine, EngineConfig, PhaseTimings};
use jailbuilder::exec::CommandSpec;
use jailbuilder::toolchain::{package, PackageOptions};
use jailbuilder::NativeBackend;

use super::common::{self, ms, percentile, BuilderArgs, Progress};

/// The bundled project: a tiny calculator, one translation unit per file.
const SOURCES: &[(&str, &str)] = &[
    ("calc.h", include_str!("demo/calc.h")),
    ("main.c", include_str!("demo/main.c")),
    ("lexer.c", include_str!("demo/lexer.c")),
    ("parser.c", include_str!("demo/parser.c")),
    ("eval.c", include_str!("demo/eval.c")),
    ("tree.c", include_str!("demo/tree.c")),
    ("format.c", include_str!("demo/format.c")),
];

/// What the linked program must print.
const EXPECTED: &str = "1 + 2 * 3 = 7\n(1 + 2) * 3 = 9\n100 / (5 - 3) = 50\n-(4 * 5) + 42 = 22\n";

const CFLAGS: &[&str] = &["-O2", "-Wall"];

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Host C compiler to package and use.
    #[arg(long, default_value = "cc")]
    pub compiler: String,
    /// Compiles run at once (default: number of cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Rounds of compiling the project; the first builds the image and the containers, the
    /// others show the warm pool.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Keep the working directory (toolchain, objects, program) here instead of a temp dir.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    #[command(flatten)]
    pub builder: BuilderArgs,
}

struct Compile {
    file: &'static str,
    outcome: BuildOutcome,
}

fn object_of(file: &str) -> String {
    format!("{}.o", file.trim_end_matches(".c"))
}

fn compile_all(
    engine: &Engine<NativeBackend>,
    id: &ToolchainId,
    tc: &Path,
    cc: &str,
    jobs: usize,
    label: &str,
) -> anyhow::Result<Vec<Compile>> {
    let files: Vec<&'static str> = SOURCES
        .iter()
        .map(|(f, _)| *f)
        .filter(|f| f.ends_with(".c"))
        .collect();
    let header: Vec<(String, Vec<u8>)> = SOURCES
        .iter()
        .filter(|(f, _)| f.ends_with(".h"))
        .map(|(f, s)| (format!("/work/{f}"), s.as_bytes().to_vec()))
        .collect();
    let queue = Arc::new(Mutex::new(files.clone()));
    let results = Arc::new(Mutex::new(Vec::new()));
    let progress = Arc::new(Mutex::new(Progress::new(label, files.len())));
    let tc = tc.to_path_buf();
    std::thread::scope(|s| {
        for _ in 0..jobs.min(files.len()).max(1) {
            s.spawn(|| loop {
                let Some(file) = queue.lock().unwrap().pop() else {
                    return;
                };
                let src = SOURCES
                    .iter()
                    .find(|(f, _)| *f == file)
                    .map(|(_, s)| s.as_bytes().to_vec())
                    .unwrap_or_default();
                let mut inputs_files = header.clone();
                inputs_files.push((format!("/work/{file}"), src));
                let result = common::tar_files(&inputs_files).and_then(|inputs| {
                    let mut args: Vec<String> = CFLAGS.iter().map(|s| s.to_string()).collect();
                    args.extend(["-c".into(), file.into(), "-o".into(), object_of(file)]);
                    Ok(engine.build(BuildRequest {
                        toolchain: id.clone(),
                        toolchain_archive: &tc,
                        inputs: &mut inputs.as_slice(),
                        command: CommandSpec {
                            executable: cc.to_string(),
                            arguments: args,
                            env_vars: vec![
                                ("PATH".into(), "/usr/bin:/bin".into()),
                                ("LC_ALL".into(), "C".into()),
                            ],
                            cwd: "/work".into(),
                        },
                        outputs: vec![object_of(file)],
                    })?)
                });
                progress.lock().unwrap().inc(file);
                results.lock().unwrap().push((file, result));
            });
        }
    });
    progress.lock().unwrap().finish();
    let mut out = Vec::new();
    for (file, r) in Arc::try_unwrap(results)
        .map_err(|_| anyhow::anyhow!("threads still hold results"))?
        .into_inner()
        .unwrap()
    {
        let outcome = r.with_context(|| format!("compiling {file}"))?;
        if !outcome.exec.status.success() {
            bail!(
                "compiling {file} failed ({:?}):\n{}",
                outcome.exec.status,
                String::from_utf8_lossy(&outcome.exec.stderr)
            );
        }
        out.push(Compile { file, outcome });
    }
    out.sort_by_key(|c| c.file);
    Ok(out)
}

/// The same compiles on the host, no sandbox: the floor the overhead is measured against.
fn compile_bare(dir: &Path, cc: &str, jobs: usize) -> anyhow::Result<Vec<Duration>> {
    let files: Vec<&str> = SOURCES
        .iter()
        .map(|(f, _)| *f)
        .filter(|f| f.ends_with(".c"))
        .collect();
    let queue = Mutex::new(files);
    let times = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                let Some(file) = queue.lock().unwrap().pop() else {
                    return;
                };
                let t = Instant::now();
                let st = Command::new(cc)
                    .args(CFLAGS)
                    .args(["-c", file, "-o", &object_of(file)])
                    .current_dir(dir)
                    .status();
                times.lock().unwrap().push((file, t.elapsed(), st));
            });
        }
    });
    let mut out = Vec::new();
    for (file, t, st) in times.into_inner().unwrap() {
        if !st.with_context(|| format!("running {cc}"))?.success() {
            bail!("host compile of {file} failed");
        }
        out.push(t);
    }
    Ok(out)
}

fn mean(ts: impl Iterator<Item = Duration>) -> Duration {
    let v: Vec<Duration> = ts.collect();
    if v.is_empty() {
        Duration::ZERO
    } else {
        v.iter().sum::<Duration>() / v.len() as u32
    }
}

fn sandbox_time(t: &PhaseTimings) -> Duration {
    t.container + t.unpack + t.exec + t.outputs
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    common::require_root("jailbuilder demo")?;
    let cfg = args.builder.load()?;
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let (work, _tmp) = match &args.keep {
        Some(d) => (common::absolute(d)?, None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("jailbuilder-demo-")
                .tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let src = work.join("src");
    std::fs::create_dir_all(&src)?;
    for (f, s) in SOURCES {
        std::fs::write(src.join(f), s)?;
    }

    println!(
        "jailbuilder demo: {} backend, {} compiles at once",
        std::env::consts::OS,
        jobs
    );
    let t = Instant::now();
    let tc = work.join("toolchain.tar.gz");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tc)?);
    let summary = package(
        &PackageOptions {
            compiler: args.compiler.clone(),
            headers: true,
            extra: vec![],
        },
        &mut w,
    )?;
    drop(w);
    let cc = summary.compiler.to_string_lossy().into_owned();
    println!(
        "1. packaged {cc}: {} files, {:.0} MiB, in {:.1} s",
        summary.files,
        summary.bytes as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    );

    let engine_cfg = EngineConfig {
        max_containers: jobs * 2,
        max_containers_per_toolchain: jobs * 2,
        warm_per_toolchain: jobs,
        ..cfg.engine_config()
    };
    let engine = common::start_engine(&cfg, engine_cfg)?;
    let id = ToolchainId::new(jailbuilder::toolchain::archive_id(&tc)?)?;
    let mut rounds = Vec::new();
    for r in 1..=args.rounds.max(1) {
        let label = if r == 1 {
            "2. compiling (cold: image + containers)"
        } else {
            "3. compiling (warm pool)"
        };
        let t = Instant::now();
        let compiles = compile_all(&engine, &id, &tc, &cc, jobs, label)?;
        rounds.push((t.elapsed(), compiles));
        engine.wait_idle();
    }
    let (_, last) = rounds.last().expect("at least one round");
    let obj = work.join("obj");
    std::fs::create_dir_all(&obj)?;
    for c in last {
        for o in &c.outcome.outputs {
            std::fs::write(obj.join(&o.path), &o.data)?;
        }
    }

    // The floor: the same compiles on the host, same parallelism.
    let bare_dir = work.join("bare");
    std::fs::create_dir_all(&bare_dir)?;
    for (f, s) in SOURCES {
        std::fs::write(bare_dir.join(f), s)?;
    }
    let mut bare = compile_bare(&bare_dir, &cc, jobs)?;
    bare.sort();
    let identical = last
        .iter()
        .filter(|c| {
            let host = std::fs::read(bare_dir.join(object_of(c.file))).unwrap_or_default();
            c.outcome.outputs.first().is_some_and(|o| o.data == host)
        })
        .count();

    let program = work.join("calc");
    let objects: Vec<PathBuf> = last.iter().map(|c| obj.join(object_of(c.file))).collect();
    let st = Command::new(&cc)
        .arg("-o")
        .arg(&program)
        .args(&objects)
        .status()
        .context("linking on the host")?;
    if !st.success() {
        bail!("linking the sandbox-built objects failed");
    }
    let out = Command::new(&program)
        .output()
        .context("running the linked program")?;
    let printed = String::from_utf8_lossy(&out.stdout);
    println!(
        "4. linked {} objects on the host; ./calc prints:",
        objects.len()
    );
    for l in printed.lines() {
        println!("     {l}");
    }
    if printed != EXPECTED {
        bail!("the program printed something unexpected");
    }

    println!(
        "5. timings ({} compiles per round, {} at once)",
        last.len(),
        jobs
    );
    for (i, (wall, compiles)) in rounds.iter().enumerate() {
        let mut total: Vec<Duration> = compiles
            .iter()
            .map(|c| sandbox_time(&c.outcome.timings))
            .collect();
        total.sort();
        let image = mean(compiles.iter().map(|c| c.outcome.timings.image));
        println!(
            "   round {}: wall {} | per compile p50 {} (image {})",
            i + 1,
            ms(*wall),
            ms(percentile(&total, 50.0)),
            ms(image)
        );
    }
    let warm: Vec<&PhaseTimings> = last.iter().map(|c| &c.outcome.timings).collect();
    println!(
        "   last round, mean per phase: container {} | unpack {} | exec {} | outputs {}",
        ms(mean(warm.iter().map(|t| t.container))),
        ms(mean(warm.iter().map(|t| t.unpack))),
        ms(mean(warm.iter().map(|t| t.exec))),
        ms(mean(warm.iter().map(|t| t.outputs)))
    );
    let mut sandboxed: Vec<Duration> = warm.iter().map(|t| sandbox_time(t)).collect();
    sandboxed.sort();
    let (s50, b50) = (percentile(&sandboxed, 50.0), percentile(&bare, 50.0));
    println!(
        "   host compile p50 {} vs sandboxed p50 {}: sandbox overhead {} per compile",
        ms(b50),
        ms(s50),
        if s50 >= b50 {
            ms(s50 - b50)
        } else {
            format!("-{}", ms(b50 - s50))
        }
    );
    println!(
        "   objects identical to host-built ones: {identical}/{}",
        last.len()
    );
    let stats = engine.stats();
    engine.shutdown();
    println!(
        "6. cleaned up: {} containers created, {} resets, {} destroyed",
        stats.containers_created,
        stats.containers_reset,
        engine.stats().containers_destroyed
    );
    if let Some(d) = &args.keep {
        println!("   kept {}", d.display());
    }
    Ok(ExitCode::SUCCESS)
}
