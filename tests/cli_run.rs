//! `jailbuilder toolchain` + `jailbuilder run` end to end, as a user types them: a C file
//! compiled in a sandbox gives the object a host compile gives, and a compile error comes
//! back with the compiler's exit code and stderr. Needs root (Linux backend); without it
//! prints "SKIP: <reason>" and passes, unless JAILBUILDER_CI=1 (then it fails).
#![cfg(target_os = "linux")]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

const JB: &str = env!("CARGO_BIN_EXE_jailbuilder");

macro_rules! require_cc {
    () => {
        skip_unless!(common::root_and_cc_missing())
    };
}

/// One packaged host toolchain shared by the tests of this file (packaging takes seconds).
fn toolchain() -> &'static Path {
    static TC: OnceLock<(tempfile::TempDir, std::path::PathBuf)> = OnceLock::new();
    &TC.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let tc = dir.path().join("cc.tar.gz");
        common::package_host_cc(&tc);
        (dir, tc)
    })
    .1
}

fn symbols(obj: &Path) -> String {
    let out = Command::new("nm").arg(obj).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

const GOOD: &str = r#"#include <stdio.h>
#include "hello.h"
int counter;
static int twice(int x) { return 2 * x; }
int greet(const char *who) { counter++; return printf("hello, %s %d\n", who, twice(GREETING)); }
"#;

#[test]
fn a_sandboxed_compile_matches_the_host_compile() {
    require_cc!();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("hello.c"), GOOD).unwrap();
    std::fs::write(src.join("hello.h"), "#define GREETING 21\n").unwrap();
    let state = work.path().join("state");
    let out_dir = work.path().join("out");
    let out = Command::new(JB)
        .args(["run", "--timings", "--state-dir"])
        .arg(&state)
        .arg("--toolchain")
        .arg(toolchain())
        .arg("--inputs-dir")
        .arg(&src)
        .args(["--output", "hello.o", "--out-dir"])
        .arg(&out_dir)
        .args(["--", "cc", "-O2", "-c", "hello.c", "-o", "hello.o"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "run failed: {stderr}");
    assert!(stderr.contains("timings: image"), "{stderr}");

    let host = work.path().join("host.o");
    let st = Command::new("cc")
        .args(["-O2", "-c", "hello.c", "-o"])
        .arg(&host)
        .current_dir(&src)
        .status()
        .unwrap();
    assert!(st.success());
    let sandboxed = out_dir.join("hello.o");
    let (s, h) = (symbols(&sandboxed), symbols(&host));
    assert!(s.contains("T greet") && s.contains("counter"), "{s}");
    assert_eq!(s, h, "sandboxed and host objects define different symbols");
    assert_eq!(
        std::fs::read(&sandboxed).unwrap(),
        std::fs::read(&host).unwrap(),
        "objects differ"
    );
    // Nothing of the sandbox is left mounted once `run` exits.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(state.to_str().unwrap()),
        "leftover mount under {}",
        state.display()
    );
}

#[test]
fn a_compile_error_returns_the_compiler_exit_code_and_stderr() {
    require_cc!();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(
        src.join("broken.c"),
        "int main(void) { return undeclared_thing; }\n",
    )
    .unwrap();
    let out = Command::new(JB)
        .args(["run", "--state-dir"])
        .arg(work.path().join("state"))
        .arg("--toolchain")
        .arg(toolchain())
        .arg("--inputs-dir")
        .arg(&src)
        .args(["--output", "broken.o", "--out-dir"])
        .arg(work.path().join("out"))
        .args(["--", "cc", "-c", "broken.c", "-o", "broken.o"])
        .output()
        .unwrap();
    let host = Command::new("cc")
        .args(["-c", "broken.c", "-o", "/dev/null"])
        .current_dir(&src)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), host.status.code(), "exit code");
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("undeclared_thing") && stderr.contains("error"),
        "{stderr}"
    );
    assert!(!work.path().join("out/broken.o").exists());
}

#[test]
fn bad_arguments_get_clear_errors() {
    // No root needed: these fail before any sandbox is made.
    let out = Command::new(JB)
        .args([
            "run",
            "--toolchain",
            "/nonexistent.tar.gz",
            "--",
            "/bin/true",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("jailbuilder:"), "{stderr}");

    let out = Command::new(JB)
        .args([
            "run",
            "--build-id-base",
            "0:0",
            "--toolchain",
            "x",
            "--",
            "/bin/true",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    if nix::unistd::geteuid().is_root() {
        assert!(stderr.contains("build_uid_base"), "{stderr}");
    }

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[builder]\nmax_contaners = 4\n").unwrap();
    let out = Command::new(JB)
        .args(["clean", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    if nix::unistd::geteuid().is_root() {
        assert!(stderr.contains("max_contaners"), "{stderr}");
    }

    for cmd in ["run", "demo", "toolchain", "clean", "doctor"] {
        let out = Command::new(JB).args([cmd, "--help"]).output().unwrap();
        assert!(out.status.success(), "{cmd} --help");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{cmd} --help"
        );
    }
}

#[test]
fn an_error_names_each_cause_once() {
    // The config error carries the io error as its source and in its text; printed as a
    // chain it would read "...: No such file or directory: No such file or directory".
    let out = std::process::Command::new(JB)
        .args(["doctor", "--config", "/nonexistent/jailbuilder.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("jailbuilder: "), "{err}");
    assert!(err.contains("/nonexistent/jailbuilder.toml"), "{err}");
    let cause = std::io::Error::from_raw_os_error(libc::ENOENT).to_string();
    assert_eq!(err.matches(cause.as_str()).count(), 1, "{err}");
}

/// Ctrl-C on a bench (SIGINT) stops it after the compiles in flight, and it removes every
/// mount it made (native's containers, the cli port's overlays, bwrap's build tmpfs, bare's
/// tmpfs) before it exits with 130. Before, the signal killed it and left ~65 mounts.
#[test]
fn an_interrupted_bench_unmounts_what_it_made_and_exits_130() {
    require_cc!();
    let have = |c: &str| jailbuilder::toolchain::which(c).is_some();
    let mut strategies = vec!["native", "bare"];
    if have("busybox") {
        strategies.push("cli");
    }
    if have("bwrap") {
        strategies.push("bwrap");
    }
    let state = tempfile::tempdir().unwrap();
    let mut report = tempfile::tempfile().unwrap();
    let mut bench = Command::new(JB)
        .args([
            "bench",
            "--small-functions",
            "0",
            "--large-units",
            "0",
            "--small-units",
            "4",
        ])
        .args(["--compiles", "200", "--concurrency", "1", "--strategies"])
        .arg(strategies.join(","))
        .arg("--state-dir")
        .arg(state.path())
        .stderr(std::process::Stdio::piped())
        .stdout(report.try_clone().unwrap())
        .spawn()
        .unwrap();
    // The first progress line comes once every strategy is set up and compiling.
    let mut stderr = std::io::BufReader::new(bench.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
        assert!(n > 0, "bench ended before compiling: {seen}");
        seen.push_str(&line);
        if line.trim_start().starts_with("bench ") && line.contains('/') {
            break;
        }
    }
    assert!(
        !common::mounts_beneath(state.path()).is_empty(),
        "the bench mounts nothing while it runs: the test would prove nothing"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(bench.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = bench.wait().unwrap();
    assert_eq!(status.code(), Some(130), "stderr: {seen}{rest}");
    assert!(rest.contains("interrupted"), "stderr: {rest}");
    let mut table = String::new();
    std::io::Seek::rewind(&mut report).unwrap();
    std::io::Read::read_to_string(&mut report, &mut table).unwrap();
    assert_eq!(table, "", "an interrupted bench reports no figures");
    assert_eq!(common::mounts_beneath(state.path()), Vec::<String>::new());
    assert!(!state.path().join("work/bare").exists());
}
