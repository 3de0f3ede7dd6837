//! End to end with stock sccache 0.19.0: a `sccache-dist scheduler`, `jailbuilder serve`
//! (the Linux backend) and an `sccache` client server, all on 127.0.0.1, compile a small C
//! project with `sccache gcc -c`.
//!
//! Needs root, gcc, and the stock binaries: `SCCACHE_BIN_DIR`, else the directory
//! `.ci/install-sccache` installs into (run it first). Without them the test prints
//! "SKIP: ..." and passes, unless `JAILBUILDER_CI=1` (then it fails; with CI set and no
//! binaries it runs `.ci/install-sccache` itself). The harness is `common::sccache`.
//!
//! sccache has no switch that forbids falling back to a local compile, so the test proves
//! each object came from the build server twice over: the client's stats count every
//! compile as a distributed compile on our server with zero distributed errors (a fallback
//! is counted in `dist_errors`), and `jailbuilder serve` logged one finished job per
//! compile.
#![cfg(all(feature = "sccache", target_os = "linux"))]

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::mounts_beneath;
use common::sccache::{dist_compiles, prerequisites, served_jobs, Cluster};

#[test]
fn sccache_compiles_through_jailbuilder_serve() {
    let Some(bin) = prerequisites("sccache_e2e") else {
        return;
    };
    let started = Instant::now();
    // 1.-3. The scheduler, jailbuilder serve and the sccache client server, ready.
    let mut cluster = Cluster::start(&bin, "shutdown_grace_secs = 10\nmax_containers = 4\n");
    let server_key = cluster.server_key();
    let state = cluster.state.clone();
    let serve = &mut cluster.serve;
    let client = &cluster.client;
    let t = cluster.tmp.path();

    // 4. A small C project: three files and a header, one object in a subdirectory.
    let proj = t.join("proj");
    fs::write(
        proj.join("util.h"),
        "int add(int a, int b);\nint mul(int a, int b);\n",
    )
    .unwrap();
    fs::write(
        proj.join("add.c"),
        "#include \"util.h\"\nint add(int a, int b) { return a + b; }\n",
    )
    .unwrap();
    fs::write(
        proj.join("mul.c"),
        "#include \"util.h\"\nint mul(int a, int b) { return a * b; }\n",
    )
    .unwrap();
    fs::write(
        proj.join("main.c"),
        "#include <stdio.h>\n#include \"util.h\"\n\
         int main(void) { printf(\"2 + 3 * 4 = %d\\n\", add(2, mul(3, 4))); return 0; }\n",
    )
    .unwrap();
    let objects = [
        ("add.c", "add.o"),
        ("mul.c", "obj/mul.o"),
        ("main.c", "main.o"),
    ];
    // All at once: concurrent jobs, and concurrent first uses of the toolchain.
    let compiles: Vec<_> = objects
        .iter()
        .map(|(src, obj)| {
            let child = client
                .command(&["gcc", "-O2", "-Wall", "-c", src, "-o", obj])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (*src, *obj, child)
        })
        .collect();
    for (src, obj, child) in compiles {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "sccache gcc -c {src}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(proj.join(obj).is_file(), "{obj} missing");
    }

    // Every compile was distributed to our server and none fell back to local.
    let stats = client.stats();
    assert_eq!(dist_compiles(&stats), 3, "stats: {stats}");
    assert_eq!(
        stats["dist_compiles"][server_key.as_str()].as_u64(),
        Some(3),
        "{stats}"
    );
    assert_eq!(stats["dist_errors"].as_u64(), Some(0), "{stats}");
    assert_eq!(stats["compile_fails"].as_u64(), Some(0), "{stats}");
    assert_eq!(served_jobs(&serve.log(), 0), 3, "{}", serve.log());

    // The objects link on the host and the program runs.
    let link = Command::new("gcc")
        .current_dir(&proj)
        .args(["add.o", "obj/mul.o", "main.o", "-o", "prog"])
        .output()
        .unwrap();
    assert!(link.status.success(), "link: {link:?}");
    let run = Command::new(proj.join("prog")).output().unwrap();
    assert!(run.status.success());
    assert_eq!(String::from_utf8_lossy(&run.stdout), "2 + 3 * 4 = 14\n");

    // A compile error comes back as the compiler's error, from the server.
    fs::write(
        proj.join("bad.c"),
        "int broken(void) { return undeclared_thing; }\n",
    )
    .unwrap();
    let out = client.run(&["gcc", "-c", "bad.c", "-o", "bad.o"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "bad.c compiled?");
    assert!(
        stderr.contains("'undeclared_thing' undeclared") && stderr.contains("error"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("Job failed on server {server_key}")),
        "{stderr}"
    );
    let stats = client.stats();
    assert_eq!(dist_compiles(&stats), 4, "{stats}");
    assert_eq!(stats["dist_errors"].as_u64(), Some(0), "{stats}");
    assert_eq!(stats["compile_fails"].as_u64(), Some(1), "{stats}");
    assert_eq!(served_jobs(&serve.log(), 1), 1, "{}", serve.log());

    // Orderly shutdown: SIGTERM, exit 0, nothing left behind.
    assert!(
        !mounts_beneath(&state).is_empty(),
        "containers were mounted"
    );
    let status = serve
        .terminate()
        .expect("serve exited within the grace period");
    assert_eq!(status.code(), Some(0), "{status}\n{}", serve.log());
    assert!(serve.log().contains("shut down in"), "{}", serve.log());
    assert_eq!(mounts_beneath(&state), Vec::<String>::new());
    let left: Vec<_> = fs::read_dir(state.join("containers"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "containers left: {left:?}");

    // The server log has one info line per job with its phase timings.
    let job_line = BufReader::new(fs::File::open(&serve.log).unwrap())
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("jailbuilder::sccache::builder] job "))
        .unwrap();
    assert!(job_line.contains("(image "), "{job_line}");
    eprintln!(
        "sccache_e2e: passed in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
