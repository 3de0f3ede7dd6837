//! With stock sccache 0.19.0: a compile that the build server's own time limit ends is not
//! a compile error. `jailbuilder serve` fails that job (a 5xx from `run_job`), so the stock
//! client compiles it locally, counts a failed distributed compilation, and the user's
//! build gets the right object. (Before: exit code 137 and a failed compile, although the
//! client, which has no such limit, compiles the file.)
//!
//! Needs root, gcc and the stock binaries, as tests/sccache_e2e.rs.
#![cfg(all(feature = "sccache", target_os = "linux"))]

mod common;

use std::fs;
use std::process::Command;

use common::sccache::{prerequisites, slow_c_functions, Cluster};

#[test]
fn a_compile_over_the_servers_time_limit_is_built_locally() {
    let Some(bin) = prerequisites("sccache_limits") else {
        return;
    };
    // One second on the server; the file below takes about 3 s at -O2 on a 2-core machine.
    let cluster = Cluster::start(&bin, "timeout_secs = 1\nmax_containers = 2\n");
    let proj = cluster.proj();
    let mut src = slow_c_functions(500);
    src.push_str("int main(void) { return f499(3) == f499(3) ? 0 : 1; }\n");
    fs::write(proj.join("slow.c"), &src).unwrap();

    let out = cluster
        .client
        .run(&["gcc", "-O2", "-c", "slow.c", "-o", "slow.o"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stderr}", out.status);
    assert!(!stderr.contains("Job failed on server"), "{stderr}");

    // The object is the local compiler's: it links and runs as a host build does.
    let link = Command::new("gcc")
        .current_dir(&proj)
        .args(["slow.o", "-o", "slow"])
        .output()
        .unwrap();
    assert!(link.status.success(), "link: {link:?}");
    assert!(Command::new(proj.join("slow")).status().unwrap().success());

    // Counted as a failed distributed compilation (the fallback), not a compile failure.
    let stats = cluster.client.stats();
    assert_eq!(stats["dist_errors"].as_u64(), Some(1), "{stats}");
    assert_eq!(stats["compile_fails"].as_u64(), Some(0), "{stats}");
    // The server says which limit fired.
    let log = cluster.serve.log();
    assert!(
        log.contains("exceeded the build server's time limit (timeout_secs = 1)"),
        "{log}"
    );
}
