//! Embedding end to end: `examples/sccache_dist_server` (sccache's own
//! `dist::http::Server` with the adapter file `src/sccache/builder.rs` as its builder)
//! serves a stock scheduler and a stock client, and one C file compiles on it.
//!
//! The harness's cluster starts with `jailbuilder serve`; the test stops it and starts the
//! example on the same address with the same configuration file, which the scheduler takes
//! as that server restarting (a new nonce replaces it). So the example also reads a
//! `jailbuilder serve` file unchanged.
//!
//! The example is built by `cargo test` without a target filter (CI's run) or by
//! `cargo build --all-features --example sccache_dist_server`; without it the test prints
//! "SKIP: ..." and passes, unless `JAILBUILDER_CI=1`.
#![cfg(all(feature = "sccache", target_os = "linux"))]

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::sccache::{dist_compiles, prerequisites, wait_for, Cluster, Proc};

#[test]
fn sccache_dist_http_server_runs_jobs_through_the_adapter() {
    let Some(bin) = prerequisites("sccache_embed") else {
        return;
    };
    let example = Path::new(env!("CARGO_BIN_EXE_jailbuilder"))
        .with_file_name("examples")
        .join("sccache_dist_server");
    if !example.is_file() {
        let why = format!("{} not built", example.display());
        if std::env::var("JAILBUILDER_CI").is_ok_and(|v| v == "1") {
            panic!("JAILBUILDER_CI=1 but sccache_embed cannot run: {why}");
        }
        println!(
            "SKIP: sccache_embed: {why} (cargo build --all-features --example sccache_dist_server)"
        );
        return;
    }

    let mut cluster = Cluster::start(&bin, "");
    let status = cluster.serve.terminate().expect("serve stopped on SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", cluster.serve.log());
    let dir = cluster.dir().to_path_buf();
    // Declared after the cluster, so it stops before the cluster detaches leftover mounts.
    let mut server = Proc::spawn(
        "sccache_dist_server",
        Command::new(&example)
            .arg("--config")
            .arg(dir.join("server.toml"))
            .env("RUST_LOG", "info"),
        &dir,
        Duration::from_secs(5),
    );
    wait_for(
        "sccache_dist_server to register with the scheduler",
        Duration::from_secs(30),
        || {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "sccache_dist_server exited early ({status}):\n{}",
                    server.log()
                );
            }
            server.log().contains("Server connected to scheduler")
        },
    );

    let proj = cluster.proj();
    fs::write(
        proj.join("hello.c"),
        "#include <stdio.h>\nint main(void) { puts(\"embedded\"); return 0; }\n",
    )
    .unwrap();
    let out = cluster
        .client
        .run(&["gcc", "-O2", "-c", "hello.c", "-o", "hello.o"]);
    assert!(
        out.status.success(),
        "sccache gcc -c hello.c: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    // Distributed to the example's address, no fallback, and the adapter ran the job.
    let stats = cluster.client.stats();
    assert_eq!(dist_compiles(&stats), 1, "{stats}");
    assert_eq!(
        stats["dist_compiles"][cluster.server_key().as_str()].as_u64(),
        Some(1),
        "{stats}"
    );
    assert_eq!(stats["dist_errors"].as_u64(), Some(0), "{stats}");
    let log = server.log();
    let jobs = log
        .lines()
        .filter(|l| {
            l.contains("sccache_dist_server::jail_builder] job ") && l.contains(": exit 0 in ")
        })
        .count();
    assert_eq!(jobs, 1, "{log}");

    let link = Command::new("gcc")
        .current_dir(&proj)
        .args(["hello.o", "-o", "hello"])
        .output()
        .unwrap();
    assert!(link.status.success(), "link: {link:?}");
    let run = Command::new(proj.join("hello")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout), "embedded\n");
}
