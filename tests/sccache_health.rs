//! With the stock sccache 0.19.0 scheduler and client, one `jailbuilder serve`:
//!
//! 1. The unhealthy refusal: the state directory stops taking new entries (its `staging/`
//!    made immutable, as a full or read-only file system would), so building the
//!    toolchain image fails; after `unhealthy_after = 1` backend failure the server
//!    refuses assignments (one probe per `unhealthy_probe_interval_secs`), and the client
//!    compiles every file locally. Once the directory is writable again a probe builds, the
//!    server is healthy, and the next compile is distributed at once.
//! 2. Drain on SIGTERM: compiles running on the server when it gets SIGTERM finish there
//!    (the others are refused and built locally); every object is produced and correct;
//!    serve exits 0 and leaves no mount behind.
//!
//! Needs root, gcc, chattr (a file system with the immutable flag, e.g. ext4) and the
//! stock binaries, as tests/sccache_e2e.rs.
#![cfg(all(feature = "sccache", target_os = "linux"))]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::mounts_beneath;
use common::sccache::{
    dist_compiles, prerequisites, served_jobs, slow_c_functions, wait_for, Cluster, ClusterOptions,
    ServerKind,
};

/// `chattr +i` on a directory, undone however the test ends.
struct Immutable(PathBuf);

impl Immutable {
    fn set(dir: &Path) -> Result<Immutable, String> {
        let out = Command::new("chattr")
            .arg("+i")
            .arg(dir)
            .output()
            .map_err(|e| format!("chattr: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Immutable(dir.to_path_buf()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let ok = Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok || std::thread::panicking(),
            "chattr -i {}",
            self.0.display()
        );
    }
}

/// `name`.c returning `n`, compiled by the stock client; the object is checked by
/// linking and running it.
fn compile(cluster: &Cluster, name: &str, n: i32) {
    let proj = cluster.proj();
    let src = format!("{name}.c");
    fs::write(
        proj.join(&src),
        format!("int main(void) {{ return {n}; }}\n"),
    )
    .unwrap();
    let obj = format!("obj/{name}.o");
    let out = cluster.client.run(&["gcc", "-c", &src, "-o", &obj]);
    assert!(out.status.success(), "{name}: {out:?}");
    check_object(&proj, name, n);
}

fn check_object(proj: &Path, name: &str, n: i32) {
    let exe = proj.join(name);
    let link = Command::new("gcc")
        .arg(proj.join(format!("obj/{name}.o")))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(link.status.success(), "link {name}: {link:?}");
    assert_eq!(
        Command::new(&exe).status().unwrap().code(),
        Some(n),
        "{name}"
    );
}

fn served(cluster: &Cluster) -> u64 {
    dist_compiles(&cluster.client.stats())
}

#[test]
fn unhealthy_refusal_recovery_and_drain_on_sigterm() {
    let Some(bin) = prerequisites("sccache_health") else {
        return;
    };
    let started = std::time::Instant::now();
    let mut cluster = Cluster::start_opts(
        &bin,
        ServerKind::Jailbuilder(
            "unhealthy_after = 1\nkeep_images = false\nmax_containers = 3\n\
             shutdown_grace_secs = 20\n",
        ),
        &ClusterOptions {
            server_extra: "unhealthy_probe_interval_secs = 2\n".into(),
            ..ClusterOptions::default()
        },
    );

    // 1. No image can be built: staging/ takes no new entry.
    let staging = cluster.state.join("staging");
    fs::create_dir_all(&staging).unwrap();
    let frozen = match Immutable::set(&staging) {
        Ok(f) => f,
        Err(e) => {
            assert!(
                std::env::var("JAILBUILDER_CI").as_deref() != Ok("1"),
                "JAILBUILDER_CI=1 but chattr +i failed: {e}"
            );
            println!("SKIP: sccache_health: chattr +i {}: {e}", staging.display());
            return;
        }
    };
    // The first job fails (unhealthy now), then one probe per interval; the rest are
    // refused. Every compile still succeeds, locally.
    let refused = |c: &Cluster| {
        c.serve
            .log()
            .contains("assignment refused: the builder is unhealthy")
    };
    let mut n = 0;
    while !refused(&cluster) {
        assert!(
            n < 8,
            "no refusal after {n} compiles:\n{}",
            cluster.serve.log()
        );
        compile(&cluster, &format!("sick{n}"), n);
        n += 1;
    }
    let log = cluster.serve.log();
    assert!(log.contains("THE BUILDER IS UNHEALTHY"), "{log}");
    assert_eq!(served_jobs(&log, 0), 0, "{log}");
    assert_eq!(served(&cluster), 0);
    let stats = cluster.client.stats();
    assert_eq!(stats["dist_errors"].as_u64(), Some(n as u64), "{stats}");
    assert_eq!(stats["compile_fails"].as_u64(), Some(0), "{stats}");

    // Writable again: the next probe builds the image and the server is healthy.
    drop(frozen);
    let mut r = 0;
    wait_for("a probe to be served", Duration::from_secs(60), || {
        compile(&cluster, &format!("probe{r}"), r);
        r += 1;
        served(&cluster) == 1
    });
    // Healthy, not a probe: the next compile is distributed without waiting.
    compile(&cluster, "healthy", 42);
    assert_eq!(served(&cluster), 2);
    let log = cluster.serve.log();
    assert!(log.contains("the builder is healthy again"), "{log}");
    assert_eq!(served_jobs(&log, 0), 2, "{log}");

    // 2. Drain: SIGTERM while compiles run on the server.
    let proj = cluster.proj();
    let src = slow_c_functions(300);
    let started_jobs = |c: &Cluster| {
        c.scheduler
            .log()
            .matches("updated state to Started")
            .count()
    };
    let before = started_jobs(&cluster);
    let compiles: Vec<_> = (0..3)
        .map(|i| {
            let name = format!("slow{i}");
            fs::write(
                proj.join(format!("{name}.c")),
                format!("{src}int main(void) {{ return f299(3) == f299(3) ? {i} : 99; }}\n"),
            )
            .unwrap();
            let child = cluster
                .client
                .command(&[
                    "gcc",
                    "-O2",
                    "-c",
                    &format!("{name}.c"),
                    "-o",
                    &format!("obj/{name}.o"),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (name, i, child)
        })
        .collect();
    wait_for(
        "a job to start on the server",
        Duration::from_secs(60),
        || started_jobs(&cluster) > before,
    );
    let status = cluster
        .serve
        .terminate()
        .expect("serve exited within the grace period");
    let log = cluster.serve.log();
    assert_eq!(status.code(), Some(0), "{status}\n{log}");
    for (name, i, child) in compiles {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{name}: {out:?}");
        check_object(&proj, &name, i);
    }
    // The builds running at the signal (at least the one the scheduler saw start)
    // finished on the server, after it.
    let after_signal = &log[log.find("SIGTERM: shutting down").expect("SIGTERM logged")..];
    let running: usize = after_signal
        .split_once("giving the ")
        .and_then(|(_, rest)| rest.split_once(' '))
        .and_then(|(n, _)| n.parse().ok())
        .expect("the running builds logged");
    assert!(running >= 1, "{log}");
    assert!(served_jobs(after_signal, 0) >= running, "{log}");
    assert!(log.contains("shut down in"), "{log}");
    assert_eq!(mounts_beneath(&cluster.state), Vec::<String>::new());
    eprintln!(
        "sccache_health: passed in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
