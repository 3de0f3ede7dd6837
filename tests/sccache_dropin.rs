//! `jailbuilder serve` in place of `sccache-dist server`, with the stock 0.19.0 scheduler
//! and client, on one cluster whose build server is replaced three times (same port, same
//! `cache_dir`, same state directory):
//!
//! 1. JWT server auth: the scheduler has `[server_auth] type = "jwt_hs256"`; `serve` with
//!    a `jwt_token` signed with another key is refused (its heartbeats fail), so the client
//!    compiles locally.
//! 2. Stock `sccache-dist server` (overlay builder) with the right token serves a compile,
//!    writing its toolchain cache in `cache_dir`.
//! 3. `serve` with the right token on that `cache_dir`: it counts the stock server's
//!    toolchain archive, serves a compile without the client uploading the toolchain
//!    again, and its Prometheus endpoint counts the job.
//! 4. `serve` restarted: it adopts the toolchain image the last one built (a warm restart)
//!    and serves the next compile without building an image.
//!
//! Needs root, gcc, bwrap and the stock binaries, as tests/sccache_e2e.rs.
#![cfg(all(feature = "sccache", target_os = "linux"))]

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::sccache::{
    dist_compiles, free_port, prerequisites, served_jobs, wait_for, Cluster, ClusterOptions,
    ServerKind,
};

fn sccache_dist(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin.join("sccache-dist"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "sccache-dist {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `GET /metrics` on 127.0.0.1:`port`: the body.
fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text
}

/// The value of the sample `series` (name and labels, exactly as rendered).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Compiles `name`.c (returning `n`) with the stock client; checks the object by
/// linking and running it.
fn compile(cluster: &Cluster, name: &str, n: i32) {
    let proj = cluster.proj();
    fs::write(
        proj.join(format!("{name}.c")),
        format!("int main(void) {{ return {n}; }}\n"),
    )
    .unwrap();
    let (src, obj) = (format!("{name}.c"), format!("obj/{name}.o"));
    let out = cluster.client.run(&["gcc", "-c", &src, "-o", &obj]);
    assert!(out.status.success(), "{name}: {out:?}");
    let exe = proj.join(name);
    let link = Command::new("gcc")
        .arg(proj.join(&obj))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(link.status.success(), "link {name}: {link:?}");
    assert_eq!(Command::new(&exe).status().unwrap().code(), Some(n));
}

/// Files beneath `dir`, recursively.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else {
                out.push(e.path().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn jwt_auth_a_stock_written_cache_dir_and_a_metrics_scrape() {
    let Some(bin) = prerequisites("sccache_dropin") else {
        return;
    };
    let started = Instant::now();
    let port = free_port();
    let server = format!("127.0.0.1:{port}");
    let key = sccache_dist(&bin, &["auth", "generate-jwt-hs256-key"]);
    let other_key = sccache_dist(&bin, &["auth", "generate-jwt-hs256-key"]);
    let token = |key: &str| {
        sccache_dist(
            &bin,
            &[
                "auth",
                "generate-jwt-hs256-server-token",
                "--server",
                &server,
                "--secret-key",
                key,
            ],
        )
    };
    let (good, wrong) = (token(&key), token(&other_key));
    assert_ne!(good, wrong);
    let jwt = |t: &str| format!("type = \"jwt_token\"\ntoken = \"{t}\"\n");
    let scheduler_auth = Some(format!("type = \"jwt_hs256\"\nsecret_key = \"{key}\"\n"));

    // 1. A token signed with another key: serve runs, the scheduler refuses it.
    let mut cluster = Cluster::start_opts(
        &bin,
        ServerKind::Jailbuilder(""),
        &ClusterOptions {
            scheduler_server_auth: scheduler_auth.clone(),
            server_scheduler_auth: Some(jwt(&wrong)),
            server_port: Some(port),
            no_wait_registered: true,
            ..ClusterOptions::default()
        },
    );
    wait_for("a refused heartbeat", Duration::from_secs(30), || {
        cluster.serve.log().contains("Failed to send heartbeat")
    });
    assert!(!cluster
        .serve
        .log()
        .contains("Server connected to scheduler"));
    compile(&cluster, "refused", 3);
    let stats = cluster.client.stats();
    assert_eq!(dist_compiles(&stats), 0, "{stats}");
    // The fallback is the client's one distributed error.
    assert_eq!(stats["dist_errors"].as_u64(), Some(1), "{stats}");
    assert_eq!(served_jobs(&cluster.serve.log(), 0), 0);

    // 2. Stock sccache-dist server, the right token: serves, fills cache_dir/tc.
    let right = ClusterOptions {
        scheduler_server_auth: scheduler_auth.clone(),
        server_scheduler_auth: Some(jwt(&good)),
        server_port: Some(port),
        ..ClusterOptions::default()
    };
    cluster.replace_server(ServerKind::StockOverlay, &right);
    compile(&cluster, "stock", 4);
    let stats = cluster.client.stats();
    assert_eq!(
        stats["dist_compiles"][server.as_str()].as_u64(),
        Some(1),
        "{stats}"
    );
    let tc = files(&cluster.dir().join("cache/tc"));
    assert_eq!(tc.len(), 1, "the stock server's toolchain cache: {tc:?}");

    // 3. serve on the stock server's cache_dir, with metrics (`serve_with_metrics`: serve
    // in the build server's place, with a metrics endpoint; returns its port).
    let serve_with_metrics = |cluster: &mut Cluster| {
        let metrics_port = free_port();
        cluster.replace_server(
            ServerKind::Jailbuilder("max_containers = 2\n"),
            &ClusterOptions {
                server_extra: format!("metrics_addr = \"127.0.0.1:{metrics_port}\"\n"),
                ..right.clone()
            },
        );
        metrics_port
    };
    let metrics_port = serve_with_metrics(&mut cluster);
    let before = scrape(metrics_port);
    assert_eq!(
        sample(&before, "jailbuilder_toolchain_cache_archives"),
        Some(1.0),
        "{before}"
    );
    compile(&cluster, "served", 5);
    let stats = cluster.client.stats();
    assert_eq!(
        stats["dist_compiles"][server.as_str()].as_u64(),
        Some(2),
        "{stats}"
    );
    assert_eq!(stats["dist_errors"].as_u64(), Some(1), "{stats}");
    let log = cluster.serve.log();
    assert_eq!(served_jobs(&log, 0), 1, "{log}");
    // The stock server's archive was used: nothing uploaded, the cache unchanged.
    assert!(!log.contains(" cached ("), "{log}");
    assert_eq!(files(&cluster.dir().join("cache/tc")), tc);

    let after = scrape(metrics_port);
    assert_eq!(
        sample(&after, "jailbuilder_jobs_total{outcome=\"ok\"}"),
        Some(1.0),
        "{after}"
    );
    assert_eq!(sample(&after, "jailbuilder_healthy"), Some(1.0), "{after}");
    assert_eq!(
        sample(&after, "jailbuilder_images_created_total"),
        Some(1.0),
        "{after}"
    );

    // 4. A warm restart (issue 12.4): serve again on the same state directory adopts the
    // image the last one built, so the next compile unpacks no toolchain.
    let metrics_port = serve_with_metrics(&mut cluster);
    compile(&cluster, "restarted", 6);
    let stats = cluster.client.stats();
    assert_eq!(
        stats["dist_compiles"][server.as_str()].as_u64(),
        Some(3),
        "{stats}"
    );
    let log = cluster.serve.log();
    assert!(
        log.contains("adopted toolchain image"),
        "the restarted server adopted the image: {log}"
    );
    let restarted = scrape(metrics_port);
    assert_eq!(
        sample(&restarted, "jailbuilder_images_created_total"),
        Some(0.0),
        "no image built after the restart: {restarted}"
    );
    assert_eq!(
        sample(&restarted, "jailbuilder_jobs_total{outcome=\"ok\"}"),
        Some(1.0),
        "{restarted}"
    );
    eprintln!(
        "sccache_dropin: passed in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
