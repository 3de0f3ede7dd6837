//! Memory of the server side with 64 warm containers: prints VmRSS and asserts the goal
//! (<= 50 MiB). The containers' tmpfs and overlay live in the kernel, not in this process;
//! what is measured is the engine's bookkeeping, the backend's open namespace descriptors
//! and the (debug) test binary itself. One test per binary, so the number is this test's.
//! Needs root and busybox-static.
#![cfg(target_os = "linux")]

mod common;

use std::time::Duration;

use common::*;

fn status_kib(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn sixty_four_warm_containers_fit_in_fifty_mib() {
    require_root!();
    let f = fixture_with(
        |e| {
            e.max_containers = 64;
            e.max_containers_per_toolchain = 64;
            e.warm_per_toolchain = 64;
            e.recycler_threads = 2;
        },
        |l| l.tmpfs_size_bytes = 256 << 20,
    );
    let start = std::time::Instant::now();
    f.sh("true").unwrap();
    assert!(
        eventually(Duration::from_secs(120), || {
            f.engine.wait_idle();
            f.engine.stats().containers_ready >= 64
        }),
        "{:?}",
        f.engine.stats()
    );
    let warm = start.elapsed();
    assert_eq!(mounts_beneath(&f.state()).len(), 64 * 5);
    // A few builds on the warm pool, then measure.
    for _ in 0..16 {
        f.sh("true").unwrap();
    }
    f.engine.wait_idle();
    let rss = status_kib("VmRSS:");
    let hwm = status_kib("VmHWM:");
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().count();
    eprintln!(
        "warm_rss: 64 warm containers (ready in {:.1} s): VmRSS {:.1} MiB, VmHWM {:.1} MiB, \
         {fds} open descriptors",
        warm.as_secs_f64(),
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    assert!(rss <= 50 * 1024, "VmRSS {rss} KiB exceeds the 50 MiB goal");
}
