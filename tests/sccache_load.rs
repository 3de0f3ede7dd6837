//! Load through `jailbuilder serve` (the engine-only load test is `load.rs`): a stock
//! `sccache-dist scheduler`, `jailbuilder serve` with a pool of two containers, and a stock
//! `sccache` client on 127.0.0.1 (the harness is `common::sccache`); many distinct C files
//! compiled with `sccache gcc -c`, as many at once as the scheduler assigns. Every compile
//! must be a distributed compile on our server (no distributed error, so no local
//! fallback; no failure), and once the load settles the serve process's open descriptors,
//! threads and child processes, the mounts beneath its state directory and the state
//! directory's entries must be back at the counts sampled after a warm-up (which made the
//! toolchain image and filled the pool). Then SIGTERM: exit 0, nothing left mounted, no
//! containers left. VmRSS before and after is printed, not asserted.
//!
//! `JAILBUILDER_SERVE_LOAD_COMPILES` sets the number of compiles (default 300).
//! `JAILBUILDER_SERVE_LOAD_JOBS` sets the client's parallel compiles; the default is the
//! most the stock scheduler assigns to one server at once (cores + 1 + cores / 8, cores as
//! the server announces them: fewer than the host's so that this fits the pool of 2
//! containers): beyond that it answers "Insufficient capacity" and the client compiles
//! locally, which this test counts as a failure (a `dist_errors`).
//!
//! Needs root, gcc and the stock sccache 0.19.0 binaries; the SKIP / `JAILBUILDER_CI=1`
//! rules are `sccache_e2e`'s. The waits are hang guards, never speed limits.
#![cfg(all(target_os = "linux", feature = "sccache"))]

mod common;

use std::fs;
use std::ops::Range;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::mounts_beneath;
use common::sccache::{dist_compiles, prerequisites, served_jobs, Client, Cluster};

/// How long any wait for the server to settle may take before the test fails as hung.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// What must come back to where it was: of the serve process, and beneath its state
/// directory.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Counts {
    fds: usize,
    threads: usize,
    children: usize,
    mounts: usize,
    /// Entries of `<state>/containers`, `<state>/images` and `<state>` itself.
    containers: usize,
    images: usize,
    state_entries: usize,
}

fn count_dir(p: &Path) -> usize {
    fs::read_dir(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .count()
}

/// Processes whose parent is `pid` (from /proc/*/stat).
fn children_of(pid: u32) -> usize {
    let pid = pid.to_string();
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|s| {
                    // pid (comm) state ppid ...: comm may hold spaces; split after ')'.
                    let rest = s.rsplit_once(')')?.1.to_string();
                    rest.split_whitespace().nth(1).map(|p| p == pid)
                })
                .unwrap_or(false)
        })
        .count()
}

fn counts(pid: u32, state: &Path) -> Counts {
    let proc = Path::new("/proc").join(pid.to_string());
    Counts {
        fds: count_dir(&proc.join("fd")),
        threads: count_dir(&proc.join("task")),
        children: children_of(pid),
        mounts: mounts_beneath(state).len(),
        containers: count_dir(&state.join("containers")),
        images: count_dir(&state.join("images")),
        state_entries: count_dir(state),
    }
}

fn vm_rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Polls until three samples in a row, 200 ms apart, are equal and `want` holds for
/// them; panics after [`HANG_GUARD`].
fn settled(pid: u32, state: &Path, what: &str, want: impl Fn(&Counts) -> bool) -> Counts {
    let deadline = Instant::now() + HANG_GUARD;
    let mut last = counts(pid, state);
    let mut same = 1;
    loop {
        if same >= 3 && want(&last) {
            return last;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not settled after {HANG_GUARD:?}; last sample {last:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
        let now = counts(pid, state);
        same = if now == last { same + 1 } else { 1 };
        last = now;
    }
}

fn env_usize(key: &str) -> Option<usize> {
    std::env::var(key).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|e| panic!("{key}={v}: not a number: {e}"))
    })
}

/// Compiles `u<i>.c` to `obj/u<i>.o` for every i in `range`, `jobs` at a time, each a
/// different source (so the client's cache cannot serve any).
fn compile(client: &Client, proj: &Path, range: Range<usize>, jobs: usize) {
    for i in range.clone() {
        fs::write(
            proj.join(format!("u{i}.c")),
            format!(
                "int f{i}(int x) {{ return x * {i} + {}; }}\n",
                i.wrapping_mul(7919) % 1000
            ),
        )
        .unwrap();
    }
    let next = AtomicUsize::new(range.start);
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= range.end {
                    return;
                }
                let (src, obj) = (format!("u{i}.c"), format!("obj/u{i}.o"));
                let out = client
                    .command(&["gcc", "-O2", "-c", &src, "-o", &obj])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "sccache gcc -c {src}: {}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(proj.join(&obj).is_file(), "{obj} missing");
            });
        }
    });
}

/// The `container` phase (acquiring a container, including waiting for one) of every
/// finished job `jailbuilder serve` logged, in seconds.
fn container_waits(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("jailbuilder::sccache::builder] job "))
        .filter_map(|l| {
            let v = l.split_once(", container ")?.1.split_once('s')?.0;
            v.parse().ok()
        })
        .collect()
}

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn serve_under_load_returns_to_its_counts() {
    let Some(bin) = prerequisites("sccache_load") else {
        return;
    };
    let started = Instant::now();
    let total = env_usize("JAILBUILDER_SERVE_LOAD_COMPILES").unwrap_or(300);
    // The stock scheduler's capacity per server (`load_weight` in sccache-dist) for the
    // core count serve announces: lowered so that it fits the pool (heartbeat.rs
    // `advertised_cpus`).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = 2;
    let announced = jailbuilder::sccache::http::heartbeat::advertised_cpus(cores, pool);
    let capacity = announced + 1 + announced / 8;
    let jobs = env_usize("JAILBUILDER_SERVE_LOAD_JOBS").unwrap_or(capacity);
    assert!(
        (2..=capacity).contains(&jobs),
        "JAILBUILDER_SERVE_LOAD_JOBS={jobs}: between 2 and the scheduler's capacity \
         ({capacity}: serve announces {announced} of {cores} cores for a pool of {pool}) so \
         that no compile falls back to local"
    );
    let mut cluster = Cluster::start(
        &bin,
        &format!(
            "shutdown_grace_secs = 10\nmax_containers = {pool}\n\
             max_containers_per_toolchain = {pool}\nwarm_per_toolchain = 1\n"
        ),
    );
    let pid = cluster.serve.pid();
    let state = cluster.state.clone();
    let proj = cluster.proj();
    let server_key = cluster.server_key();

    // Warm-up: the toolchain is uploaded, its image made, the pool filled. Batches until
    // the pool is full, in case one batch did not overlap enough.
    let warm_deadline = Instant::now() + HANG_GUARD;
    let mut next = 0;
    let warm = loop {
        compile(&cluster.client, &proj, next..next + 2 * jobs, jobs);
        next += 2 * jobs;
        let c = settled(pid, &state, "after the warm-up", |c| c.children == 0);
        if c.containers == pool {
            break c;
        }
        assert!(
            Instant::now() < warm_deadline,
            "the pool never filled: {c:?}"
        );
    };
    let warm_rss = vm_rss_kib(pid);
    let warm_compiles = next;
    assert_eq!(warm.images, 1, "{warm:?}");
    let before = cluster.client.stats();
    assert_eq!(dist_compiles(&before), warm_compiles as u64, "{before}");
    eprintln!(
        "sccache_load: warm-up of {warm_compiles} compiles done at {:.1}s: {warm:?}, VmRSS {warm_rss} KiB",
        started.elapsed().as_secs_f64()
    );

    // The load, watched: containers and mounts stay within the (full) pool's.
    let load_start = Instant::now();
    let peak = Mutex::new((0, 0));
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let containers = count_dir(&state.join("containers"));
                let mounts = mounts_beneath(&state).len();
                let mut p = peak.lock().unwrap();
                *p = (p.0.max(containers), p.1.max(mounts));
                drop(p);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        // Stops the watcher even if a compile fails (the scope joins it before unwinding).
        let _stop = StopOnDrop(&done);
        compile(&cluster.client, &proj, next..next + total, jobs);
    });
    let took = load_start.elapsed();
    let (peak_containers, peak_mounts) = *peak.lock().unwrap();

    // Every compile was distributed to our server; none fell back, none failed.
    let after = cluster.client.stats();
    let on_server = |s: &serde_json::Value| s["dist_compiles"][server_key.as_str()].as_u64();
    assert_eq!(
        dist_compiles(&after),
        dist_compiles(&before) + total as u64,
        "{after}"
    );
    assert_eq!(
        on_server(&after),
        Some(on_server(&before).unwrap_or(0) + total as u64),
        "{after}"
    );
    assert_eq!(after["dist_errors"].as_u64(), Some(0), "{after}");
    assert_eq!(after["compile_fails"].as_u64(), Some(0), "{after}");
    let log = cluster.serve.log();
    assert_eq!(served_jobs(&log, 0), warm_compiles + total);
    assert!(
        peak_containers <= pool,
        "{peak_containers} containers in a pool of {pool}"
    );
    assert!(
        peak_mounts <= warm.mounts,
        "{peak_mounts} mounts beneath the state dir during the load; the full pool has {}",
        warm.mounts
    );

    // Everything comes back to the warm-up's counts.
    let settle_start = Instant::now();
    let end = settled(
        pid,
        &state,
        &format!("after the load, back to the warm-up's {warm:?}"),
        |c| *c == warm,
    );
    let end_rss = vm_rss_kib(pid);
    let waits = container_waits(&log);
    let load_waits = &waits[waits.len().saturating_sub(total)..];
    let waited = load_waits.iter().filter(|w| **w >= 0.005).count();
    let max_wait = load_waits.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "sccache_load: {total} compiles, {jobs} at a time, pool of {pool}: {:.1}s ({:.0}/s); \
         settled in {:.1}s: {end:?}; VmRSS {warm_rss} -> {end_rss} KiB; \
         {waited} jobs waited >= 5 ms for a container (max {:.0} ms); \
         peak {peak_containers} containers, {peak_mounts} mounts",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64(),
        settle_start.elapsed().as_secs_f64(),
        max_wait * 1000.0
    );

    // Orderly shutdown: SIGTERM, exit 0, nothing left behind.
    let status = cluster
        .serve
        .terminate()
        .expect("serve exited within the grace period");
    assert_eq!(status.code(), Some(0), "{status}\n{}", cluster.serve.log());
    assert!(
        cluster.serve.log().contains("shut down in"),
        "{}",
        cluster.serve.log()
    );
    assert_eq!(mounts_beneath(&state), Vec::<String>::new());
    let left: Vec<_> = fs::read_dir(state.join("containers"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "containers left: {left:?}");
    eprintln!(
        "sccache_load: passed in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
