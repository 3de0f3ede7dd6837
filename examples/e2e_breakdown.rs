//! Where one distributed compile's time goes, `jailbuilder serve` next to the stock
//! `sccache-dist server` (overlay builder, bubblewrap), through the same stock scheduler and
//! client, compiling the same file, in one run.
//!
//! ```text
//! cargo build --release --bin jailbuilder --example e2e_breakdown
//! sudo target/release/examples/e2e_breakdown [--compiles 40] [--sccache-bin-dir DIR]
//! ```
//!
//! Needs root (both servers mount), gcc, bubblewrap at /usr/bin/bwrap, and stock sccache
//! 0.19.0 (`.ci/install-sccache`; `--sccache-bin-dir`, else `$SCCACHE_BIN_DIR`, else the
//! directory it installs into). `jailbuilder` is taken from next to this example's binary
//! (`target/release/`) unless `--jailbuilder` says otherwise.
//!
//! Each server gets its own scheduler and client server (same binaries, same
//! configuration but ports), started twice: a quiet pass (info logs) whose wall times are
//! the headline, then a traced pass (client at debug with millisecond timestamps, the
//! stock server at trace, `serve` at debug) whose log lines give the parts. Within a pass
//! the compiles alternate between the two servers (ABBA), so that load drift on the
//! machine hits both alike. Every compile is forced past the local cache with
//! `SCCACHE_RECACHE=1` (same file, same hash, never a hit) and must be a distributed
//! compile on the server of its cluster: a local fallback aborts the run.
//!
//! Parts from the client's log and the stock server's are millisecond timestamps (their
//! resolution); `serve`'s come from its own timing lines (microseconds).
//!
//! Not a test: nothing here asserts a time.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

#[derive(Parser)]
#[command(
    about = "Break distributed compiles into their parts: jailbuilder serve vs stock sccache-dist server"
)]
struct Args {
    /// Measured compiles per server and pass.
    #[arg(long, default_value_t = 40)]
    compiles: usize,
    /// Compiles per server before measuring (the first one uploads the toolchain).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// The directory of the stock `sccache` and `sccache-dist` 0.19.0.
    #[arg(long)]
    sccache_bin_dir: Option<PathBuf>,
    /// The `jailbuilder` binary (default: next to this example's directory).
    #[arg(long)]
    jailbuilder: Option<PathBuf>,
    /// Extra `[builder]` lines for `serve` (e.g. "max_containers = 4").
    #[arg(long, default_value = "")]
    serve_builder: String,
    /// Skip the traced pass (wall times only).
    #[arg(long)]
    quiet_only: bool,
    /// Keep the temporary directory (configurations and logs) and print its path.
    #[arg(long)]
    keep: bool,
}

const CLIENT_TOKEN: &str = "breakdown-client-token";
const SERVER_TOKEN: &str = "breakdown-server-token";

/// The compiled file: stdio.h makes the preprocessed input some 20-30 KB, as a small
/// real translation unit.
const SOURCE: &str = r#"#include <stdio.h>
#include <string.h>
static int add(int a, int b) { return a + b; }
static int mul(int a, int b) { return a * b; }
int main(int argc, char **argv) {
    char buf[64];
    snprintf(buf, sizeof buf, "%d", add(argc, mul(3, 4)));
    printf("%s %zu\n", buf, strlen(argv[0]));
    return 0;
}
"#;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Serve,
    Stock,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Serve => "serve",
            Kind::Stock => "stock",
        }
    }
}

struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command, dir: &Path) -> Result<Proc> {
        let log = dir.join(format!("{name}.log"));
        let file = fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log,
        })
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_len(&self) -> u64 {
        fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} ignored SIGTERM: killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready()? {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// One scheduler, one build server and one client server.
struct Cluster {
    kind: Kind,
    // Drop order: client server, build server, scheduler.
    client: Proc,
    server: Proc,
    _scheduler: Proc,
    sccache: PathBuf,
    env: Vec<(&'static str, String)>,
    proj: PathBuf,
    server_key: String,
}

struct Setup<'a> {
    bin: &'a Path,
    jailbuilder: &'a Path,
    serve_builder: &'a str,
    /// The client's toolchain cache, shared by every cluster so gcc is packaged once.
    dist_client: PathBuf,
}

impl Cluster {
    fn start(setup: &Setup, kind: Kind, traced: bool, dir: &Path) -> Result<Cluster> {
        for d in ["proj", "cache", "sccache", "state"] {
            fs::create_dir_all(dir.join(d))?;
        }
        let state = dir.join("state");
        let (sched_port, server_port, client_port) = (free_port()?, free_port()?, free_port()?);
        fs::write(
            dir.join("scheduler.toml"),
            format!(
                "public_addr = \"127.0.0.1:{sched_port}\"\n\
                 [client_auth]\ntype = \"token\"\ntoken = \"{CLIENT_TOKEN}\"\n\
                 [server_auth]\ntype = \"token\"\ntoken = \"{SERVER_TOKEN}\"\n"
            ),
        )?;
        let builder = match kind {
            Kind::Serve => format!(
                "[builder]\nstate_dir = \"{}\"\n{}\n",
                state.display(),
                setup.serve_builder
            ),
            Kind::Stock => format!(
                "[builder]\ntype = \"overlay\"\nbuild_dir = \"{}\"\nbwrap_path = \"/usr/bin/bwrap\"\n",
                state.display()
            ),
        };
        fs::write(
            dir.join("server.toml"),
            format!(
                "public_addr = \"127.0.0.1:{server_port}\"\n\
                 scheduler_url = \"http://127.0.0.1:{sched_port}\"\n\
                 cache_dir = \"{}\"\n\
                 [scheduler_auth]\ntype = \"token\"\ntoken = \"{SERVER_TOKEN}\"\n{builder}",
                dir.join("cache").display()
            ),
        )?;
        fs::write(
            dir.join("client.toml"),
            format!(
                "[dist]\nscheduler_url = \"http://127.0.0.1:{sched_port}\"\ntoolchains = []\n\
                 cache_dir = \"{}\"\n[dist.auth]\ntype = \"token\"\ntoken = \"{CLIENT_TOKEN}\"\n",
                setup.dist_client.display()
            ),
        )?;
        let level = |quiet: &str, loud: &str| {
            if traced {
                loud.to_string()
            } else {
                quiet.to_string()
            }
        };

        let scheduler = Proc::spawn(
            "scheduler",
            Command::new(setup.bin.join("sccache-dist"))
                .args(["scheduler", "--config"])
                .arg(dir.join("scheduler.toml"))
                .env("SCCACHE_NO_DAEMON", "1")
                .env("SCCACHE_LOG", "info"),
            dir,
        )?;
        wait_for("the scheduler", Duration::from_secs(20), || {
            Ok(TcpStream::connect(("127.0.0.1", sched_port)).is_ok())
        })?;

        let mut cmd = match kind {
            Kind::Serve => {
                let mut c = Command::new(setup.jailbuilder);
                c.arg("serve")
                    .env("RUST_LOG", level("info", "info,jailbuilder::sccache=debug"));
                c
            }
            Kind::Stock => {
                let mut c = Command::new(setup.bin.join("sccache-dist"));
                c.arg("server")
                    .env("SCCACHE_LOG", level("info", "info,sccache=trace"))
                    .env("SCCACHE_LOG_MILLIS", "1");
                c
            }
        };
        cmd.arg("--config").arg(dir.join("server.toml"));
        let mut server = Proc::spawn(kind.name(), &mut cmd, dir)?;
        wait_for(
            &format!("{} to register with the scheduler", kind.name()),
            Duration::from_secs(60),
            || {
                if let Some(status) = server.child.try_wait()? {
                    bail!("{} exited ({status}):\n{}", kind.name(), server.log());
                }
                Ok(server.log().contains("Server connected to scheduler"))
            },
        )?;

        let sccache = setup.bin.join("sccache");
        let env = vec![
            (
                "SCCACHE_CONF",
                dir.join("client.toml").display().to_string(),
            ),
            ("SCCACHE_DIR", dir.join("sccache").display().to_string()),
            ("SCCACHE_SERVER_PORT", client_port.to_string()),
            ("SCCACHE_IDLE_TIMEOUT", "0".to_string()),
        ];
        let proj = dir.join("proj");
        fs::write(proj.join("unit.c"), SOURCE)?;
        let mut c = client_command(&sccache, &env, &proj);
        c.env("SCCACHE_START_SERVER", "1")
            .env("SCCACHE_NO_DAEMON", "1")
            .env(
                "SCCACHE_LOG",
                level("info", "info,sccache=debug,sccache::dist=trace"),
            )
            .env("SCCACHE_LOG_MILLIS", "1");
        let client = Proc::spawn("client", &mut c, dir)?;
        wait_for("the sccache client server", Duration::from_secs(20), || {
            Ok(TcpStream::connect(("127.0.0.1", client_port)).is_ok())
        })?;
        Ok(Cluster {
            kind,
            client,
            server,
            _scheduler: scheduler,
            sccache,
            env,
            proj,
            server_key: format!("127.0.0.1:{server_port}"),
        })
    }

    /// One compile, forced past the local cache; its wall time.
    fn compile(&self) -> Result<Duration> {
        let mut c = client_command(&self.sccache, &self.env, &self.proj);
        c.args(["gcc", "-O2", "-c", "unit.c", "-o", "unit.o"])
            .env("SCCACHE_RECACHE", "1");
        let start = Instant::now();
        let out = c.output()?;
        let wall = start.elapsed();
        if !out.status.success() {
            bail!(
                "{}: compile failed: {}",
                self.kind.name(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(wall)
    }

    /// (distributed compiles on this cluster's server, distributed errors).
    fn dist_counts(&self) -> Result<(u64, u64)> {
        let out = client_command(&self.sccache, &self.env, &self.proj)
            .args(["--show-stats", "--stats-format=json"])
            .output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("--show-stats: {}", String::from_utf8_lossy(&out.stdout)))?;
        let s = &v["stats"];
        Ok((
            s["dist_compiles"][self.server_key.as_str()]
                .as_u64()
                .unwrap_or(0),
            s["dist_errors"].as_u64().unwrap_or(0),
        ))
    }
}

fn client_command(sccache: &Path, env: &[(&'static str, String)], dir: &Path) -> Command {
    let mut cmd = Command::new(sccache);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SCCACHE_") || k == "RUSTC_WRAPPER" {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// The bytes `log` gained between two offsets.
fn slice(log: &Path, from: u64, to: u64) -> String {
    let mut out = Vec::new();
    if let Ok(mut f) = fs::File::open(log) {
        if f.seek(SeekFrom::Start(from)).is_ok() {
            let _ = f.take(to.saturating_sub(from)).read_to_end(&mut out);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Milliseconds since midnight of an env_logger line with millisecond timestamps:
/// `[2026-12-03T13:02:08.123Z DEBUG target] message`.
fn stamp(line: &str) -> Option<f64> {
    let t = line.strip_prefix('[')?.split(' ').next()?;
    let time = t.split('T').nth(1)?.trim_end_matches('Z');
    let mut it = time.split(':');
    let (h, m, s) = (it.next()?, it.next()?, it.next()?);
    let secs: f64 = s.parse().ok()?;
    Some((h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + secs) * 1e3)
}

/// The first line containing `what` (at or after line `from`): (index, timestamp).
fn find(lines: &[&str], from: usize, what: &str) -> Option<(usize, f64)> {
    lines
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, l)| l.contains(what))
        .and_then(|(i, l)| Some((i, stamp(l)?)))
}

/// The number after `key` in `line` (up to the next space, comma or semicolon).
fn field(line: &str, key: &str) -> Option<f64> {
    let rest = &line[line.find(key)? + key.len()..];
    let end = rest.find([' ', ',', ';', ')']).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

type Parts = BTreeMap<&'static str, f64>;
/// Per server: the wall times (ms) and, in a traced pass, each compile's parts.
type Results = BTreeMap<Kind, (Vec<f64>, Vec<Parts>)>;

/// The client's parts of one compile, from its debug log slice.
fn client_parts(log: &str, parts: &mut Parts) {
    let lines: Vec<&str> = log.lines().collect();
    let Some((i0, t0)) = find(&lines, 0, "get_cached_or_compile") else {
        return;
    };
    let mut span = |name: &'static str, a: &str, b: &str| -> Option<usize> {
        let (ia, ta) = find(&lines, i0, a)?;
        let (ib, tb) = find(&lines, ia, b)?;
        parts.insert(name, tb - ta);
        Some(ib)
    };
    span(
        "c1 preprocess + hash",
        "get_cached_or_compile",
        "generate_hash_key took",
    );
    span(
        "c2 toolchain lookup",
        "Identifying dist toolchain",
        "Requesting allocation",
    );
    span(
        "c3 alloc (scheduler + assign_job)",
        "Requesting allocation",
        "Running job",
    );
    span(
        "c4 package + compress inputs",
        "Running job",
        "Compressed inputs from",
    );
    span(
        "c5 run_job request -> response",
        "Compressed inputs from",
        "fetched",
    );
    span("c6 write outputs", "fetched", "Compiled in");
    if let Some((_, t)) = find(&lines, i0, "Compiled in") {
        parts.insert("c0 client total", t - t0);
    }
}

/// `serve`'s parts of one compile, from its debug timing lines.
fn serve_parts(log: &str, parts: &mut Parts) {
    for l in log.lines() {
        if l.contains("/assign_job/") && l.contains(": timing: ") {
            let sum = ["tls ", "head ", "handler ", "drain ", "response "]
                .iter()
                .filter_map(|k| field(l, k))
                .sum::<f64>();
            parts.insert("s1 assign_job (tls..response)", sum);
            parts.insert("s1a assign_job tls", field(l, "tls ").unwrap_or(0.0));
            let resumed = if l.contains(", resumed)") { 1.0 } else { 0.0 };
            parts.insert("s1r assign_job tls resumed (1 = yes)", resumed);
        } else if l.contains("/run_job/") && l.contains(": timing: ") {
            parts.insert("s2 run_job tls handshake", field(l, "tls ").unwrap_or(0.0));
            let resumed = if l.contains(", resumed)") { 1.0 } else { 0.0 };
            parts.insert("s2r run_job tls resumed (1 = yes)", resumed);
            parts.insert("s9 response write", field(l, "response ").unwrap_or(0.0));
            let handler = field(l, "handler ").unwrap_or(0.0) + field(l, "head ").unwrap_or(0.0);
            parts.insert("s0 run_job head..handler end", handler);
        } else if l.contains("run_job timing: header") {
            parts.insert(
                "s3 head + header decode",
                field(l, "header ").unwrap_or(0.0),
            );
            parts.insert(
                "s5a inputs read (socket+TLS)",
                field(l, "read ").unwrap_or(0.0),
            );
            parts.insert("s5b inputs inflate", field(l, "inflate ").unwrap_or(0.0));
            parts.insert("s8 encode response", field(l, "encode ").unwrap_or(0.0));
        } else if l.contains("scheduler Started") || l.contains("scheduler Complete") {
            // Concurrent with the build, or beside the response, when the line says so.
            if let Some(v) = field(l, "scheduler Started ") {
                parts.insert("s4 scheduler Started", v);
            }
            if let Some(v) = field(l, "scheduler Complete ") {
                parts.insert("s7 scheduler Complete", v);
            }
        } else if l.contains("build timing: image") {
            let get = |k| field(l, k).unwrap_or(0.0);
            parts.insert("s4b image + container", get("image ") + get("container "));
            parts.insert("s5 inputs (read+inflate+unpack)", get("unpack "));
            parts.insert("s6 exec", get("exec "));
            parts.insert("s6b outputs read + compress", get("outputs "));
        }
    }
    if let (Some(u), Some(r), Some(i)) = (
        parts.get("s5 inputs (read+inflate+unpack)"),
        parts.get("s5a inputs read (socket+TLS)"),
        parts.get("s5b inputs inflate"),
    ) {
        let unpack = u - r - i;
        parts.insert("s5c tar unpack + dirs", unpack);
    }
}

/// The stock server's parts of one compile, from its trace log slice.
fn stock_parts(log: &str, parts: &mut Parts) {
    let lines: Vec<&str> = log.lines().collect();
    // Requests: "Req N (addr): Request { ... }" ... "Res N: ...".
    let mut i = 0;
    while let Some((ia, ta)) = find(&lines, i, "sccache::dist::http::server] Req ") {
        let line = lines[ia];
        let id = line
            .split("] Req ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap_or("")
            .to_string();
        let Some((ib, tb)) = find(&lines, ia, &format!("] Res {id}:")) else {
            break;
        };
        if line.contains("/assign_job/") {
            parts.insert("s1 assign_job (tls..response)", tb - ta);
        } else if line.contains("/run_job/") {
            parts.insert("s0 run_job head..handler end", tb - ta);
            let mut span = |name: &'static str, a: &str, b: &str| {
                if let (Some((ja, sa)), true) = (find(&lines, ia, a), true) {
                    if let Some((_, sb)) = find(&lines, ja, b) {
                        parts.insert(name, sb - sa);
                    }
                }
            };
            span(
                "s3 head + header decode",
                &format!("Req {id} ("),
                &format!("Req {id}: run_job("),
            );
            span(
                "s4 scheduler Started",
                &format!("Req {id}: run_job("),
                "Preparing overlay",
            );
            span(
                "s4b image + container",
                "Preparing overlay",
                "copying in inputs",
            );
            span(
                "s5 inputs (read+inflate+unpack)",
                "copying in inputs",
                "performing compile",
            );
            span("s6 exec", "performing compile", "compile_output:");
            span(
                "s6b outputs read + compress",
                "retrieving",
                "Finishing with overlay",
            );
            span(
                "s6c build dir removal",
                "Finishing with overlay",
                "Returning result",
            );
            span(
                "s7 scheduler Complete",
                "Returning result",
                &format!("Res {id}:"),
            );
        }
        i = ib + 1;
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn stats(mut v: Vec<f64>) -> (f64, f64) {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    (quantile(&v, 0.5), quantile(&v, 0.9))
}

/// Runs one pass: both clusters up, warmed, `n` compiles each (ABBA); returns per kind the
/// wall times and the parsed parts per compile.
fn pass(setup: &Setup, kinds: &[Kind], traced: bool, args: &Args, root: &Path) -> Result<Results> {
    let label = if traced { "traced" } else { "quiet" };
    let mut clusters = Vec::new();
    for &k in kinds {
        let dir = root.join(format!("{label}-{}", k.name()));
        eprintln!(
            "[{label}] starting the {} cluster in {}",
            k.name(),
            dir.display()
        );
        clusters.push(Cluster::start(setup, k, traced, &dir)?);
    }
    for c in &clusters {
        for _ in 0..args.warmup {
            c.compile()?;
        }
    }
    let mut out = Results::new();
    let mut marks: BTreeMap<Kind, Vec<(u64, u64)>> = BTreeMap::new();
    for round in 0..args.compiles {
        // ABBA: the order flips every round.
        let order: Vec<&Cluster> = if round % 2 == 0 {
            clusters.iter().collect()
        } else {
            clusters.iter().rev().collect()
        };
        for c in order {
            let before = (c.client.log_len(), c.server.log_len());
            let wall = c.compile()?;
            // The server's last lines (Complete, response) may follow the client's return.
            std::thread::sleep(Duration::from_millis(30));
            let after = (c.client.log_len(), c.server.log_len());
            marks.entry(c.kind).or_default().push((before.0, after.0));
            marks.entry(c.kind).or_default().push((before.1, after.1));
            out.entry(c.kind)
                .or_default()
                .0
                .push(wall.as_secs_f64() * 1e3);
        }
        if round % 10 == 9 {
            eprintln!("[{label}] {} rounds", round + 1);
        }
    }
    for c in &clusters {
        let (dist, errors) = c.dist_counts()?;
        let expected = (args.warmup + args.compiles) as u64;
        if dist != expected || errors != 0 {
            bail!(
                "{}: {dist} distributed compiles on its server of {expected}, {errors} distributed \
                 errors: some compiles fell back to local ({})",
                c.kind.name(),
                c.client.log.display()
            );
        }
        if traced {
            let m = &marks[&c.kind];
            let entry = out.entry(c.kind).or_default();
            for pair in m.chunks(2) {
                let mut parts = Parts::new();
                client_parts(&slice(&c.client.log, pair[0].0, pair[0].1), &mut parts);
                let server_log = slice(&c.server.log, pair[1].0, pair[1].1);
                match c.kind {
                    Kind::Serve => serve_parts(&server_log, &mut parts),
                    Kind::Stock => stock_parts(&server_log, &mut parts),
                }
                // What neither side's handler accounts for: connect, TLS handshake, upload,
                // the response's transfer and its decoding on the client.
                if let (Some(c), Some(h)) = (
                    parts.get("c5 run_job request -> response"),
                    parts.get("s0 run_job head..handler end"),
                ) {
                    parts.insert("c5-s0 transport (TLS, transfer)", c - h);
                }
                // The compile's own time taken out: what the protocol and the sandbox
                // cost around it, as the client and as the server see it.
                if let (Some(c), Some(h), Some(e)) = (
                    parts.get("c5 run_job request -> response").copied(),
                    parts.get("s0 run_job head..handler end").copied(),
                    parts.get("s6 exec").copied(),
                ) {
                    parts.insert("d1 run_job minus exec (client)", c - e);
                    parts.insert("d2 handler minus exec (server)", h - e);
                }
                entry.1.push(parts);
            }
        }
    }
    Ok(out)
}

fn fmt(x: f64) -> String {
    if x.is_finite() {
        format!("{x:7.2}")
    } else {
        "      -".to_string()
    }
}

fn run(args: Args) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("needs root: both build servers mount file systems");
    }
    let bin = match args.sccache_bin_dir.clone() {
        Some(d) => d,
        None => match std::env::var_os("SCCACHE_BIN_DIR") {
            Some(d) => PathBuf::from(d),
            None => {
                let cache = std::env::var_os("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                    .unwrap_or_default();
                cache.join("jailbuilder/sccache-0.19.0/bin")
            }
        },
    };
    for b in ["sccache", "sccache-dist"] {
        if !bin.join(b).is_file() {
            bail!(
                "{} missing: run .ci/install-sccache or pass --sccache-bin-dir",
                bin.join(b).display()
            );
        }
    }
    let jailbuilder = match args.jailbuilder.clone() {
        Some(p) => p,
        None => {
            let exe = std::env::current_exe()?;
            // target/<profile>/examples/e2e_breakdown -> target/<profile>/jailbuilder
            exe.parent()
                .and_then(Path::parent)
                .map(|p| p.join("jailbuilder"))
                .context("locating jailbuilder")?
        }
    };
    if !jailbuilder.is_file() {
        bail!(
            "{} missing: cargo build --release --bin jailbuilder, or pass --jailbuilder",
            jailbuilder.display()
        );
    }
    let tmp = tempfile::Builder::new().prefix("e2e-breakdown").tempdir()?;
    let root = tmp.path().to_path_buf();
    let setup = Setup {
        bin: &bin,
        jailbuilder: &jailbuilder,
        serve_builder: &args.serve_builder,
        dist_client: root.join("dist-client"),
    };
    fs::create_dir_all(&setup.dist_client)?;
    let kinds = [Kind::Serve, Kind::Stock];

    let quiet = pass(&setup, &kinds, false, &args, &root)?;
    let traced = if args.quiet_only {
        BTreeMap::new()
    } else {
        pass(&setup, &kinds, true, &args, &root)?
    };

    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\ndistributed compiles of one small C file (gcc -O2 -c), {} per server and pass, {} cores, loadavg {}",
        args.compiles,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        load.split(' ').take(3).collect::<Vec<_>>().join(" ")
    );
    println!(
        "{:<36} {:>15} {:>15} {:>8}",
        "ms (median / p90)", "serve", "stock", "ratio"
    );
    let row = |name: &str, a: (f64, f64), b: (f64, f64)| {
        let ratio = if b.0 > 0.0 { a.0 / b.0 } else { f64::NAN };
        println!(
            "{:<36} {} / {} {} / {} {}",
            name,
            fmt(a.0),
            fmt(a.1),
            fmt(b.0),
            fmt(b.1),
            if ratio.is_finite() {
                format!("{ratio:8.2}")
            } else {
                String::new()
            }
        );
    };
    let walls = |m: &Results, k| {
        m.get(&k)
            .map(|e| stats(e.0.clone()))
            .unwrap_or((f64::NAN, f64::NAN))
    };
    row(
        "wall, quiet pass (headline)",
        walls(&quiet, Kind::Serve),
        walls(&quiet, Kind::Stock),
    );
    // Compiles i of both servers ran back to back: the median of their ratios is less
    // exposed to the machine's load drifting during the pass than the ratio of medians.
    let paired = |m: &Results| {
        let (Some(a), Some(b)) = (m.get(&Kind::Serve), m.get(&Kind::Stock)) else {
            return f64::NAN;
        };
        stats(a.0.iter().zip(&b.0).map(|(x, y)| x / y).collect()).0
    };
    println!(
        "{:<36} {:>33} {:8.2}",
        "wall ratio, median of round pairs",
        "quiet pass",
        paired(&quiet)
    );
    if !traced.is_empty() {
        println!("{:<36} {:>33} {:8.2}", "", "traced pass", paired(&traced));
        row(
            "wall, traced pass",
            walls(&traced, Kind::Serve),
            walls(&traced, Kind::Stock),
        );
        let mut names: Vec<&'static str> = traced
            .values()
            .flat_map(|(_, ps)| ps.iter().flat_map(|p| p.keys().copied()))
            .collect();
        names.sort();
        names.dedup();
        for name in names {
            let col = |k| {
                let v: Vec<f64> = traced
                    .get(&k)
                    .map(|(_, ps)| ps.iter().filter_map(|p| p.get(name).copied()).collect())
                    .unwrap_or_default();
                stats(v)
            };
            row(name, col(Kind::Serve), col(Kind::Stock));
        }
        println!(
            "c*: the client's log (ms timestamps); s*: the server's (serve: its timing lines; \
             stock: ms timestamps of its trace lines, whose resolution is 1 ms); '-': not \
             visible in that server's log. s0 counts from the request head (stock: once its \
             TLS handshake is done). serve sends Started concurrently with the build and \
             Complete beside the response when its log says so"
        );
    }
    if args.keep {
        let kept = tmp.keep();
        println!("logs and configurations kept in {}", kept.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("e2e_breakdown: {e:#}");
            ExitCode::FAILURE
        }
    }
}
