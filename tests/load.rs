//! Load: many builds through the engine and the real Linux backend, with more concurrent
//! builds than containers, then every resource count returns to where it started: open
//! descriptors, mounts, threads, child processes, state-directory entries. The count is
//! modest by default (2000; JAILBUILDER_LOAD_BUILDS overrides it). One test per binary, so
//! the counts are this test's own. Needs root and busybox-static.
#![cfg(target_os = "linux")]

mod common;

use std::time::{Duration, Instant};

use common::*;
use jailbuilder::backend::ToolchainId;
use jailbuilder::engine::BuildRequest;

#[derive(Debug, PartialEq, Eq)]
struct Counts {
    fds: usize,
    // Mounts are checked beneath the state dir (`mounts_beneath`): the host-wide count moves
    // with whatever else the machine mounts meanwhile.
    threads: usize,
    children: usize,
}

fn count_dir(p: &str) -> usize {
    std::fs::read_dir(p).unwrap().count()
}

/// Processes whose parent is this one.
fn children() -> usize {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            std::fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|s| {
                    // pid (comm) state ppid ...: comm may hold spaces; split after ')'.
                    let rest = s.rsplit_once(')')?.1.to_string();
                    rest.split_whitespace().nth(1).map(|p| p == me)
                })
                .unwrap_or(false)
        })
        .count()
}

fn counts() -> Counts {
    Counts {
        fds: count_dir("/proc/self/fd"),
        threads: count_dir("/proc/self/task"),
        children: children(),
    }
}

#[test]
fn thousands_of_builds_leak_nothing() {
    require_root!();
    let total: usize = std::env::var("JAILBUILDER_LOAD_BUILDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let threads = 8;
    let before = counts();
    let dir = tempfile::Builder::new()
        .prefix("jb-load")
        .tempdir()
        .unwrap();
    let state = std::fs::canonicalize(dir.path()).unwrap();
    let tc = toolchain();
    let start;
    {
        let f = fixture_with(
            |e| {
                e.max_containers = 4;
                e.max_containers_per_toolchain = 4;
                e.warm_per_toolchain = 4;
                e.recycler_threads = 2;
            },
            |l| l.state_dir = state.clone(),
        );
        start = Instant::now();
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= total {
                        return;
                    }
                    let src = format!("int x{i};\n");
                    let inputs = tar(&[file("work/in.c", 0o644, src.as_bytes())]);
                    let (args, outputs): (&[&str], Vec<String>) = if i.is_multiple_of(2) {
                        (&["true"], vec![])
                    } else {
                        (&["cp", "in.c", "out.o"], vec!["out.o".into()])
                    };
                    let o = f
                        .engine
                        .build(BuildRequest {
                            toolchain: ToolchainId::new("busybox").unwrap(),
                            toolchain_archive: &tc,
                            inputs: &mut inputs.as_slice(),
                            command: spec(args),
                            outputs,
                        })
                        .unwrap_or_else(|e| panic!("build {i}: {e}"));
                    assert!(o.exec.status.success(), "build {i}: {o:?}");
                    if i % 2 == 1 {
                        assert_eq!(o.outputs[0].data, src.as_bytes(), "build {i}");
                    }
                });
            }
        });
        let took = start.elapsed();
        f.engine.wait_idle();
        let s = f.engine.stats();
        eprintln!(
            "load: {total} builds, {threads} threads, pool of 4: {:.1} s, {:.0} builds/s; {s:?}",
            took.as_secs_f64(),
            total as f64 / took.as_secs_f64()
        );
        assert_eq!(s.builds_ok as usize, total);
        assert_eq!(s.builds_failed, 0);
        assert!(s.containers_alive <= 4, "{s:?}");
        assert_eq!(s.reset_failures, 0);
        assert!(f.engine.is_healthy());
        // While alive: one image, at most four containers' mounts (6 each).
        assert!(mounts_beneath(&state).len() <= 24);
        f.engine.shutdown();
        drop(f);
    }
    // Everything is back where it started.
    assert_eq!(mounts_beneath(&state), Vec::<String>::new());
    // The image stays for the next start (keep_images); containers go.
    assert_eq!(count_dir(state.join("containers").to_str().unwrap()), 0);
    assert_eq!(count_dir(state.join("images").to_str().unwrap()), 1);
    let mut entries: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "staging")
        .collect();
    entries.sort();
    assert_eq!(entries, ["containers", "images", "lock", "skel"]);
    // Threads end asynchronously after join; descriptors and mounts are immediate.
    assert!(
        eventually(Duration::from_secs(5), || counts() == before),
        "before {before:?}, after {:?}",
        counts()
    );
}
