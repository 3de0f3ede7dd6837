//! Resource limits through the whole engine and the real Linux backend: a fork bomb, a
//! memory hog, an infinite loop, a daemon left behind and a disk filler each end as a
//! clean job result or error (no hang, no server crash), and the next job on the same
//! container starts clean. Also: ENOSPC while unpacking inputs, a build uid without a
//! passwd entry, and cancelling a running build. Needs root and busybox-static.
//!
//! This machine may lack cgroup v2 controllers (hybrid hierarchy): the rlimit path runs
//! then, and the cgroup-specific assertions print "SKIP(cgroup v2): <reason>".
#![cfg(target_os = "linux")]

mod common;

use std::time::{Duration, Instant};

use common::*;
use jailbuilder::backend::{BuildUser, ExitStatus, LimitHit, ToolchainId};
use jailbuilder::engine::{BuildError, BuildRequest};
use jailbuilder::exec::CancelToken;
use jailbuilder::linux::LimitMechanism;

/// Processes visible in the sandbox's own pid namespace (its /proc), counted with shell
/// builtins only: no fork needed, so it works when the process limit is reached.
const COUNT_PROCS: &str = "n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; echo $n";

fn one_container(e: &mut jailbuilder::engine::EngineConfig) {
    e.max_containers = 1;
    e.max_containers_per_toolchain = 1;
}

/// The next job on the (only) container is clean: no process, no file of the last one.
fn assert_next_job_clean(f: &Fixture, leftover_file: &str) {
    let o = f
        .sh(&format!(
            "test -e {leftover_file} && echo dirty; {COUNT_PROCS}"
        ))
        .unwrap();
    let out = stdout(&o);
    assert!(!out.contains("dirty"), "{out}");
    let n: u32 = out.trim().parse().unwrap();
    assert!(n <= 3, "processes left in the sandbox: {out}");
    let s = f.engine.stats();
    assert_eq!(s.containers_created, 1, "{s:?}");
    assert_eq!(s.reset_failures, 0, "{s:?}");
    assert!(f.engine.is_healthy());
}

fn mechanism_note(f: &Fixture) {
    match f.engine.backend().limit_mechanism() {
        LimitMechanism::CgroupV2 { parent } => {
            eprintln!("limits: cgroup v2 under {}", parent.display())
        }
        LimitMechanism::Rlimits { reason } => eprintln!("SKIP(cgroup v2): {reason}"),
    }
}

#[test]
fn a_fork_bomb_is_bounded_and_ends_as_a_clean_job_result() {
    require_root!();
    // A uid of its own: RLIMIT_NPROC (the fallback) counts all of a uid's processes.
    let user = BuildUser {
        uid: 61001,
        gid: 61001,
    };
    let f = fixture_with(
        |e| {
            one_container(e);
            e.build_user_base = user;
            e.limits.max_processes = 24;
            e.limits.timeout = Duration::from_secs(3);
        },
        |_| {},
    );
    mechanism_note(&f);
    // The bound holds: 60 background sleeps, at most 24 processes. (busybox sh exits when
    // a fork fails, hence the subshell.)
    let o = f
        .sh(&format!(
            "(for i in $(seq 60); do sleep 1000 & done) 2>/dev/null; {COUNT_PROCS}"
        ))
        .unwrap();
    let n: u32 = stdout(&o)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{o:?}"));
    assert!(n <= 24, "{n} processes in the sandbox, limit 24: {o:?}");
    assert!(n >= 10, "the sandbox could barely fork: {o:?}");

    // A real fork bomb: ends at the timeout, the sandbox is killed.
    let start = Instant::now();
    let o = f.sh("bomb() { bomb & bomb; }; bomb").unwrap();
    // A hang guard (the command would otherwise run for ever), not a speed bound.
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "{:?}",
        start.elapsed()
    );
    assert!(!o.exec.status.success(), "{o:?}");
    f.engine.wait_idle();
    assert!(
        eventually(Duration::from_secs(5), || host_processes_of_uid(user.uid)
            .is_empty()),
        "processes of the bomb survived: {:?}",
        host_processes_of_uid(user.uid)
    );
    if let LimitMechanism::CgroupV2 { parent } = f.engine.backend().limit_mechanism() {
        let max = std::fs::read_to_string(parent.join("c1/pids.max")).unwrap();
        assert_eq!(max.trim(), "24");
    }
    assert_next_job_clean(&f, "/work/nothing");
}

#[test]
fn a_memory_hog_fails_alone() {
    require_root!();
    let f = fixture_with(
        |e| {
            one_container(e);
            e.limits.memory_bytes = 64 << 20;
        },
        |_| {},
    );
    mechanism_note(&f);
    // busybox dd allocates its block: 256 MiB, four times the limit.
    let o = f
        .sh("dd if=/dev/zero of=/dev/null bs=256M count=1; echo rc=$?")
        .unwrap();
    let out = stdout(&o);
    // Refused (rlimit: malloc fails, dd exits 1) or killed (cgroup: OOM kill of dd).
    assert!(!out.contains("rc=0"), "the hog got its memory: {o:?}");
    eprintln!("memory hog: {out:?} {:?}", stderr(&o));
    // The hog as the whole command: a cgroup's OOM kill is named as the memory limit (the
    // sccache glue then fails the job); RLIMIT_AS's ENOMEM leaves no trace to go by.
    let o = f
        .sh("dd if=/dev/zero of=/dev/null bs=256M count=1")
        .unwrap();
    assert!(!o.exec.status.success(), "{o:?}");
    let expected = match f.engine.backend().limit_mechanism() {
        LimitMechanism::CgroupV2 { .. } => Some(LimitHit::Memory { bytes: 64 << 20 }),
        LimitMechanism::Rlimits { .. } => None,
    };
    assert_eq!(o.exec.limit_hit, expected, "{o:?}");
    // Modest use still works under the limit.
    let o = f
        .sh("dd if=/dev/zero of=/dev/null bs=8M count=2 2>/dev/null; echo rc=$?")
        .unwrap();
    assert_eq!(stdout(&o), "rc=0\n", "{o:?}");
    match f.engine.backend().limit_mechanism() {
        LimitMechanism::CgroupV2 { parent } => {
            let max = std::fs::read_to_string(parent.join("c1/memory.max")).unwrap();
            assert_eq!(max.trim(), (64u64 << 20).to_string());
        }
        LimitMechanism::Rlimits { .. } => {
            let o = f.sh("ulimit -v").unwrap();
            assert_eq!(stdout(&o).trim(), (64u64 << 10).to_string(), "{o:?}");
        }
    }
    assert_next_job_clean(&f, "/work/nothing");
}

#[test]
fn an_infinite_loop_times_out_promptly() {
    require_root!();
    let f = fixture_with(
        |e| {
            one_container(e);
            e.limits.timeout = Duration::from_secs(1);
        },
        |_| {},
    );
    let start = Instant::now();
    let o = f.sh("touch /work/partial; while :; do :; done").unwrap();
    let took = start.elapsed();
    assert_eq!(o.exec.status, ExitStatus::TimedOut, "{o:?}");
    // A hang guard (the command would otherwise run for ever), not a speed bound.
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert_next_job_clean(&f, "/work/partial");
}

#[test]
fn a_daemon_left_behind_does_not_hold_the_build_or_survive_it() {
    require_root!();
    let f = fixture_with(one_container, |_| {});
    let start = Instant::now();
    let o = f
        .sh("setsid sleep 987001 & sleep 987002 & (sleep 987003 &) ; echo started")
        .unwrap();
    // Had the daemons held the build open, it would have ended at the timeout instead.
    let _ = start;
    assert_eq!(o.exec.status, ExitStatus::Code(0), "{o:?}");
    assert_eq!(stdout(&o), "started\n");
    f.engine.wait_idle();
    assert!(
        host_processes_with("98700").is_empty(),
        "{:?}",
        host_processes_with("98700")
    );
    assert_next_job_clean(&f, "/work/nothing");
}

#[test]
fn a_disk_filler_gets_enospc_for_its_job_only() {
    require_root!();
    let f = fixture_with(
        |e| {
            one_container(e);
            e.limits.max_file_bytes = 0; // the tmpfs size is the bound here
        },
        |l| l.tmpfs_size_bytes = 16 << 20,
    );
    let o = f
        .sh("dd if=/dev/zero of=/work/fill bs=1M count=64; echo rc=$?")
        .unwrap();
    assert!(stderr(&o).contains("No space left on device"), "{o:?}");
    assert!(stdout(&o).contains("rc=1"), "{o:?}");
    // The next job on the same container has its space back.
    let o = f
        .sh("test -e /work/fill && echo dirty; dd if=/dev/zero of=/work/again bs=1M count=8 2>/dev/null && echo wrote")
        .unwrap();
    assert_eq!(stdout(&o), "wrote\n", "{o:?}");
    assert_next_job_clean(&f, "/work/fill");
}

#[test]
fn enospc_while_unpacking_inputs_fails_that_job_only() {
    require_root!();
    let f = fixture_with(one_container, |l| l.tmpfs_size_bytes = 16 << 20);
    let big = vec![7u8; 32 << 20];
    let inputs = tar(&[file("work/huge.c", 0o644, &big)]);
    let e = f.build(&inputs, spec(&["true"]), &[]).unwrap_err();
    assert!(matches!(e, BuildError::Inputs(_)), "{e}");
    assert!(e.is_client_error());
    assert!(e.to_string().contains("No space left"), "{e}");
    f.assert_serves();
    assert_next_job_clean(&f, "/work/huge.c");
}

#[test]
fn a_build_uid_without_a_passwd_entry_is_fine() {
    require_root!();
    // Numeric ids only: setgroups/setresgid/setresuid need no passwd or group entry.
    let uid = 54321;
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    assert!(
        !passwd.lines().any(|l| l.split(':').nth(2) == Some("54321")),
        "uid 54321 exists on this host; the test needs an unknown uid"
    );
    let f = fixture_with(
        |e| {
            // One container, so the build runs in slot 0: as the base ids themselves.
            one_container(e);
            e.build_user_base = BuildUser { uid, gid: uid };
        },
        |_| {},
    );
    let o = f
        .sh("id -u; id -g; id -G; echo x > /work/out && echo wrote")
        .unwrap();
    assert_eq!(stdout(&o), "54321\n54321\n54321\nwrote\n", "{o:?}");
}

#[test]
fn a_running_build_is_cancelled_promptly_and_leaves_no_process() {
    require_root!();
    let f = fixture_with(one_container, |_| {});
    let cancel = std::sync::Arc::new(CancelToken::new().unwrap());
    let tc = f.tc.clone();
    let inputs = tar(&[]);
    let (result, took) = std::thread::scope(|s| {
        let h = s.spawn(|| {
            f.engine.build_with_cancel(
                BuildRequest {
                    toolchain: ToolchainId::new("busybox").unwrap(),
                    toolchain_archive: &tc,
                    inputs: &mut inputs.as_slice(),
                    command: spec(&["sh", "-c", "sleep 987777 & sleep 1000"]),
                    outputs: vec![],
                },
                &cancel,
            )
        });
        assert!(
            eventually(Duration::from_secs(10), || !host_processes_with("987777")
                .is_empty()),
            "the build never started"
        );
        let start = Instant::now();
        cancel.cancel();
        let r = h.join().unwrap();
        (r, start.elapsed())
    });
    assert!(matches!(result, Err(BuildError::Cancelled)), "{result:?}");
    // Without the cancel the build runs `sleep 1000` to the timeout and ends TimedOut,
    // which the assertion above rejects; this only guards against a hang.
    assert!(took < Duration::from_secs(60), "cancel took {took:?}");
    // Killed before build_with_cancel returned, not later by the recycler.
    assert!(host_processes_with("987777").is_empty());
    assert!(host_processes_with("sleep 1000").is_empty());
    assert!(f.engine.is_healthy(), "a cancel is not a builder failure");
    // A token cancelled before the build starts stops it at once.
    let e = f
        .engine
        .build_with_cancel(
            BuildRequest {
                toolchain: ToolchainId::new("busybox").unwrap(),
                toolchain_archive: &tc,
                inputs: &mut inputs.as_slice(),
                command: spec(&["true"]),
                outputs: vec![],
            },
            &cancel,
        )
        .unwrap_err();
    assert!(matches!(e, BuildError::Cancelled), "{e}");
    // An uncancelled token changes nothing.
    let fresh = std::sync::Arc::new(CancelToken::new().unwrap());
    let o = f
        .engine
        .build_with_cancel(
            BuildRequest {
                toolchain: ToolchainId::new("busybox").unwrap(),
                toolchain_archive: &tc,
                inputs: &mut inputs.as_slice(),
                command: spec(&["echo", "done"]),
                outputs: vec![],
            },
            &fresh,
        )
        .unwrap();
    assert_eq!(stdout(&o), "done\n");
    f.engine.wait_idle();
    assert_next_job_clean(&f, "/work/nothing");
}

#[test]
fn shutdown_kills_builds_that_outlive_the_grace_period() {
    require_root!();
    let f = fixture_with(
        |e| {
            one_container(e);
            e.shutdown_grace = Duration::from_millis(300);
        },
        |_| {},
    );
    let result = std::thread::scope(|s| {
        let h = s.spawn(|| f.sh("sleep 987444"));
        assert!(
            eventually(Duration::from_secs(10), || !host_processes_with("987444")
                .is_empty()),
            "the build never started"
        );
        f.engine.shutdown();
        h.join().unwrap()
    });
    // Without the kill, the build would run its `sleep` to the 600 s timeout.
    assert!(matches!(result, Err(BuildError::Cancelled)), "{result:?}");
    assert!(host_processes_with("987444").is_empty());
    assert_eq!(f.engine.stats().containers_alive, 0);
}
