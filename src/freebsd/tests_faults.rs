//! The engine over the FreeBSD orchestration over the fake kernel, with a kernel call
//! failing at each step of image creation, container creation, exec, reset and destroy:
//! the build fails (or the recycler drops the container), the error names the step, the
//! engine keeps serving and refills its pool, and nothing is left once it is shut down and
//! a new instance has cleaned up. Also rctl rules per jail, the container quota, a corrupt
//! toolchain and cancellation, all through the seam.

use std::sync::Arc;
use std::time::Duration;

use super::test_support::*;
use super::*;
use crate::backend::{Backend, BuildUser, Limits, ToolchainId};
use crate::engine::{BuildError, BuildRequest, Engine, EngineConfig};
use crate::exec::{CancelToken, CommandSpec};

const JAIL_LIMITS: JailLimits = JailLimits {
    memory_bytes: 1 << 30,
    max_processes: 128,
};

fn fake() -> Arc<FakeKernel> {
    let fake = Arc::new(FakeKernel::new());
    fake.set_racct(true);
    // The "compiler": writes a.o in its cwd, echoes the limits it was given.
    fake.register_program("/usr/bin/cc", |x| {
        let cwd = x.root.join(x.command.cwd.trim_start_matches('/'));
        std::fs::write(cwd.join("a.o"), b"object").unwrap();
        FakeRun {
            stdout: format!(
                "as={} nproc={} nofile={}",
                x.limits.memory_bytes, x.limits.max_processes, x.limits.max_open_files
            )
            .into_bytes(),
            ..FakeRun::exit(0)
        }
    });
    fake
}

fn backend(fake: &Arc<FakeKernel>) -> Fb {
    let cfg = FreeBsdConfig {
        jail_limits: JAIL_LIMITS,
        container_quota_bytes: 1 << 30,
        jail_gone_timeout: Duration::from_millis(10),
        ..super::test_support::config(fake)
    };
    FreeBsdBackend::new(fake.clone(), cfg).unwrap()
}

fn engine(fake: &Arc<FakeKernel>, warm: usize) -> Engine<Fb> {
    engine_max(fake, warm, 2)
}

fn engine_max(fake: &Arc<FakeKernel>, warm: usize, max: usize) -> Engine<Fb> {
    engine_with(fake, warm, max, true)
}

fn engine_with(fake: &Arc<FakeKernel>, warm: usize, max: usize, keep_images: bool) -> Engine<Fb> {
    let cfg = EngineConfig {
        keep_images,
        max_containers: max,
        max_containers_per_toolchain: max,
        warm_per_toolchain: warm,
        recycler_threads: 1,
        build_user_base: BuildUser {
            uid: 1000,
            gid: 1000,
        },
        unhealthy_after: 100,
        shutdown_grace: Duration::from_secs(5),
        ..EngineConfig::default()
    };
    Engine::start(backend(fake), cfg).unwrap()
}

fn build(e: &Engine<Fb>, tc: &[u8]) -> Result<crate::engine::BuildOutcome, BuildError> {
    e.build(BuildRequest {
        toolchain: ToolchainId::new("tc1").unwrap(),
        toolchain_archive: &tc.to_vec(),
        inputs: &mut &tar::Builder::new(Vec::new()).into_inner().unwrap()[..],
        command: CommandSpec {
            executable: "/usr/bin/cc".into(),
            arguments: vec![],
            env_vars: vec![],
            cwd: "/work".into(),
        },
        outputs: vec!["a.o".into()],
    })
}

/// After shutdown and a new instance's start-up clean-up: nothing of ours is left but
/// complete images (dataset and `@image`), which the new instance adopts.
fn assert_clean(fake: &Arc<FakeKernel>, e: Engine<Fb>) {
    e.shutdown();
    drop(e);
    fake.clear_faults();
    let b = backend(fake);
    b.remove_leftovers().unwrap();
    let kept: Vec<String> = b
        .existing_images()
        .unwrap()
        .iter()
        .map(|i| i.image.dataset().to_string())
        .collect();
    let mut datasets = vec!["pool".to_string(), "pool/jb".to_string()];
    datasets.extend(kept.iter().cloned());
    assert_eq!(fake.datasets(), datasets);
    let snaps: Vec<String> = kept.iter().map(|d| format!("{d}@image")).collect();
    assert_eq!(fake.snapshots(), snaps);
    assert_eq!(fake.mounts(), vec![]);
    assert_eq!(fake.live_jails(), vec![]);
    assert_eq!(fake.rctl_rules(), Vec::<String>::new());
}

#[test]
fn a_kernel_call_failing_in_image_container_or_exec_fails_that_build_and_names_the_step() {
    let tc = toolchain_tar_gz(Some(b"cc\n"));
    let cases = [
        ("create pool/jb/i-", "ImageCreate"),
        ("nmount zfs pool/jb/i-", "ImageMount"),
        ("unmount $T/mnt/i-", "ImageUnmount"),
        ("snapshot pool/jb/i-", "ImageSnapshot"),
        ("clone pool/jb/c-", "ContainerClone"),
        ("snapshot pool/jb/c-", "ContainerSnapshot"),
        ("nmount zfs pool/jb/c-", "ContainerMount"),
        ("rctl_add_rule", "Rctl"),
        ("nmount devfs", "ContainerDevfs"),
        ("jail_set create", "ContainerJail"),
        ("exec ", "Execve"),
    ];
    for (pattern, step) in cases {
        let fake = fake();
        let e = engine(&fake, 0);
        fake.fail_on(pattern, 1, libc::EIO);
        let err = build(&e, &tc).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(step), "{pattern}: {msg}");
        assert!(
            msg.contains("Input/output error") || msg.contains("EIO"),
            "{pattern}: {msg}"
        );
        if step == "Execve" {
            // execve failing is the command's problem (a missing or broken executable).
            assert!(matches!(err, BuildError::Start(_)), "{pattern}: {err}");
        } else {
            assert!(
                matches!(err, BuildError::Backend { .. }),
                "{pattern}: {err}"
            );
            assert!(!err.is_client_error());
        }
        // The engine keeps serving: the next build of the same toolchain works.
        fake.clear_faults();
        let out = build(&e, &tc).unwrap_or_else(|e| panic!("{pattern}: after: {e}"));
        assert_eq!(out.outputs[0].data, b"object", "{pattern}");
        e.wait_idle();
        let s = e.stats();
        assert!(s.containers_alive <= 2, "{pattern}: {s:?}");
        assert_clean(&fake, e);
    }
}

#[test]
fn a_failed_reset_destroys_the_container_and_the_pool_refills() {
    let tc = toolchain_tar_gz(Some(b"cc\n"));
    // One container, no pre-warming: after the first build, the next matching call is the
    // reset of the second build's container.
    let cases = [
        "jail_remove",
        "jail_wait_gone",
        "rctl_remove_rule",
        "unmount $T/mnt/c-",
        "rollback",
        "jail_set create",
    ];
    for pattern in cases {
        let nth = 1;
        let fake = fake();
        let e = engine_max(&fake, 0, 1);
        build(&e, &tc).unwrap();
        e.wait_idle();
        let before = e.stats();
        fake.fail_on(pattern, nth, libc::EIO);
        // This build's container goes back to the recycler, whose reset fails.
        build(&e, &tc).unwrap();
        e.wait_idle();
        let s = e.stats();
        if pattern == "rctl_remove_rule" {
            // Reset keeps the rules (they are per jail name); only destroy removes them.
            assert_eq!(s.reset_failures, before.reset_failures, "{pattern}: {s:?}");
        } else {
            assert_eq!(
                s.reset_failures,
                before.reset_failures + 1,
                "{pattern}: {s:?}"
            );
            assert!(
                s.containers_destroyed > before.containers_destroyed,
                "{pattern}"
            );
        }
        fake.clear_faults();
        // Never reused, and the pool serves again.
        for _ in 0..3 {
            build(&e, &tc).unwrap_or_else(|e| panic!("{pattern}: {e}"));
        }
        e.wait_idle();
        let s = e.stats();
        assert!(
            s.containers_ready >= 1,
            "{pattern}: pool did not refill: {s:?}"
        );
        assert!(e.is_healthy());
        assert_clean(&fake, e);
    }
}

#[test]
fn a_failed_destroy_is_logged_and_cleaned_up_at_the_next_start() {
    let tc = toolchain_tar_gz(Some(b"cc\n"));
    for pattern in [
        "jail_remove",
        "rctl_remove_rule",
        "unmount -f $T/mnt/c-",
        "destroy pool/jb/c-",
        "destroy pool/jb/i-",
    ] {
        let fake = fake();
        // Images are destroyed at shutdown only without keep_images.
        let e = engine_with(&fake, 1, 2, !pattern.contains("/i-"));
        build(&e, &tc).unwrap();
        e.wait_idle();
        fake.fail_on(pattern, 0, libc::EIO);
        e.shutdown(); // destroys every container (and image); some of it fails
        assert!(
            fake.calls().iter().any(|c| c.contains("injected")),
            "{pattern}: never hit"
        );
        assert_clean(&fake, e);
    }
}

#[test]
fn jails_get_rctl_rules_and_containers_a_quota_when_racct_is_on() {
    let tc = toolchain_tar_gz(Some(b"cc\n"));
    let fake = fake();
    let e = engine(&fake, 0);
    let out = build(&e, &tc).unwrap();
    // With per-jail rules, RLIMIT_NPROC (per uid, host-wide) is not set per process;
    // RLIMIT_AS still bounds each process (vmemoryuse bounds the jail's sum).
    let l = Limits::default();
    assert_eq!(
        String::from_utf8_lossy(&out.exec.stdout),
        format!("as={} nproc=0 nofile={}", l.memory_bytes, l.max_open_files)
    );
    e.wait_idle();
    let rules = fake.rctl_rules();
    let jail = fake.live_jails()[0].params.name.clone();
    // vmemoryuse, not memoryuse (RSS is not deniable: kern_racct.c racct_types); no
    // openfiles (a per-jail sum of descriptor tables: kern_descrip.c fdalloc).
    assert_eq!(
        rules,
        [
            format!("jail:{jail}:maxproc:deny=128"),
            format!("jail:{jail}:vmemoryuse:deny={}", 1u64 << 30),
        ],
    );
    let ds = fake
        .datasets()
        .into_iter()
        .find(|d| d.starts_with("pool/jb/c-"))
        .unwrap();
    assert!(fake.props(&ds).contains(&ZfsProp::U64("quota", 1 << 30)));
    assert_clean(&fake, e);

    // Without RACCT: no rctl call at all, rlimits per process.
    let fake = fake_without_racct();
    let e = engine(&fake, 0);
    let out = build(&e, &tc).unwrap();
    let l = Limits::default();
    assert_eq!(
        String::from_utf8_lossy(&out.exec.stdout),
        format!(
            "as={} nproc={} nofile={}",
            l.memory_bytes, l.max_processes, l.max_open_files
        )
    );
    assert!(!fake.calls().iter().any(|c| c.starts_with("rctl")));
    assert!(!backend(&fake).uses_rctl());
    e.shutdown();
}

fn fake_without_racct() -> Arc<FakeKernel> {
    let f = fake();
    f.set_racct(false);
    f
}

#[test]
fn a_crash_leaves_rctl_rules_that_the_next_start_removes() {
    let fake = fake();
    let b = backend(&fake);
    b.remove_leftovers().unwrap();
    let img = b
        .create_image(
            &ToolchainId::new("tc1").unwrap(),
            &mut &toolchain_tar_gz(Some(b"cc\n"))[..],
        )
        .unwrap();
    let c = b.create_container(&img).unwrap();
    assert_eq!(fake.rctl_rules().len(), 2);
    // "Crash": forget everything without tearing down; release the instance lock.
    std::mem::forget(c);
    std::mem::forget(img);
    drop(b);
    let b = backend(&fake);
    let report = b.remove_leftovers().unwrap();
    assert!(
        report
            .removed
            .iter()
            .any(|r| r.starts_with("rctl rules of jail")),
        "{report:?}"
    );
    assert_eq!(fake.rctl_rules(), Vec::<String>::new());
}

#[test]
fn a_corrupt_toolchain_is_a_toolchain_error_not_a_backend_failure() {
    let fake = fake();
    let e = engine(&fake, 0);
    let mut tc = toolchain_tar_gz(Some(b"cc\n"));
    tc.truncate(tc.len() / 2);
    let err = build(&e, &tc).unwrap_err();
    assert!(matches!(err, BuildError::Toolchain { .. }), "{err}");
    assert!(err.is_client_error());
    // Not cached: the good archive builds the image afterwards.
    build(&e, &toolchain_tar_gz(Some(b"cc\n"))).unwrap();
    assert_clean(&fake, e);
}

#[test]
fn a_cancelled_build_kills_the_jail_and_the_container_is_reset() {
    let fake = fake();
    let token = Arc::new(CancelToken::new().unwrap());
    let t = Arc::clone(&token);
    // Cancelled once the program runs (not after a fixed sleep, which a loaded machine
    // may outlast before the build even reaches exec).
    let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let st = Arc::clone(&started);
    fake.register_program("/usr/bin/hang", move |_| {
        st.store(true, std::sync::atomic::Ordering::SeqCst);
        while !t.is_cancelled() {
            std::thread::sleep(Duration::from_millis(5));
        }
        FakeRun {
            hang: true,
            ..FakeRun::default()
        }
    });
    let e = engine(&fake, 0);
    let tc = toolchain_tar_gz(Some(b"cc\n"));
    build(&e, &tc).unwrap();
    let err = std::thread::scope(|s| {
        let h = s.spawn(|| {
            e.build_with_cancel(
                BuildRequest {
                    toolchain: ToolchainId::new("tc1").unwrap(),
                    toolchain_archive: &tc,
                    inputs: &mut &tar::Builder::new(Vec::new()).into_inner().unwrap()[..],
                    command: CommandSpec {
                        executable: "/usr/bin/hang".into(),
                        cwd: "/work".into(),
                        ..CommandSpec::default()
                    },
                    outputs: vec![],
                },
                &token,
            )
        });
        while !started.load(std::sync::atomic::Ordering::SeqCst) && !h.is_finished() {
            std::thread::sleep(Duration::from_millis(1));
        }
        token.cancel();
        h.join().unwrap().unwrap_err()
    });
    assert!(matches!(err, BuildError::Cancelled), "{err}");
    assert!(fake.calls().iter().any(|c| c.ends_with("(cancelled)")));
    e.wait_idle();
    assert!(e.is_healthy());
    build(&e, &tc).unwrap();
    assert_eq!(e.stats().reset_failures, 0);
    assert_clean(&fake, e);
}
