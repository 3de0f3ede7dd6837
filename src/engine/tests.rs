//! Engine tests over a directory-backed test backend that counts calls and injects faults.
//! (The FreeBSD orchestration has its own fake kernel; this one isolates the engine.)

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use super::test_backend::{outcome, toolchain_tgz, Shared, TestBackend, TestError};
use super::*;
use crate::backend::{ExecOutcome, ExitStatus, ToolchainId};
use crate::exec::{CommandSpec, PreparedCommand};

/// A "compiler" that concatenates its input arguments (relative to cwd) into `-o` output.
fn fake_cc(root: &Path, cmd: &PreparedCommand) -> Result<ExecOutcome, TestError> {
    let spec = cmd.spec();
    let cwd = root.join(spec.cwd.trim_start_matches('/'));
    let mut out = None;
    let mut data = Vec::new();
    let mut args = spec.arguments.iter();
    while let Some(a) = args.next() {
        if a == "-o" {
            out = args.next().cloned();
        } else if a == "--fail" {
            return Ok(outcome(ExitStatus::Code(1), b"", b"error: asked to fail"));
        } else if a == "--leave" {
            fs::write(cwd.join("leftover.tmp"), b"x").unwrap();
        } else {
            match fs::read(cwd.join(a)) {
                Ok(d) => data.extend(d),
                Err(_) => data.extend(format!("[missing {a}]").bytes()),
            }
        }
    }
    if let Some(o) = out {
        fs::write(cwd.join(o), &data).unwrap();
    }
    Ok(outcome(ExitStatus::Code(0), b"ok", b""))
}

fn inputs_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

struct Harness {
    // Field order is drop order: the engine shuts down before its directory goes.
    engine: Engine<TestBackend>,
    shared: Arc<Shared>,
    tc: Vec<u8>,
    _tmp: tempfile::TempDir,
}

fn harness(config: EngineConfig) -> Harness {
    harness_with(config, fake_cc)
}

fn harness_with(
    config: EngineConfig,
    program: impl Fn(&Path, &PreparedCommand) -> Result<ExecOutcome, TestError> + Send + Sync + 'static,
) -> Harness {
    let tmp = tempfile::tempdir().unwrap();
    let (backend, shared) = TestBackend::new(tmp.path().to_path_buf(), program);
    let engine = Engine::start(backend, config).unwrap();
    Harness {
        _tmp: tmp,
        shared,
        engine,
        tc: toolchain_tgz(),
    }
}

fn config() -> EngineConfig {
    EngineConfig {
        max_containers: 4,
        max_containers_per_toolchain: 4,
        warm_per_toolchain: 1,
        max_images: 4,
        build_user_base: BuildUser {
            uid: 4242,
            gid: 4242,
        },
        shutdown_grace: Duration::from_secs(5),
        ..EngineConfig::default()
    }
}

impl Harness {
    fn build(
        &self,
        tc: &str,
        files: &[(&str, &[u8])],
        args: &[&str],
        outputs: &[&str],
    ) -> Result<BuildOutcome, BuildError> {
        let inputs = inputs_tar(files);
        self.engine.build(BuildRequest {
            toolchain: ToolchainId::new(tc).unwrap(),
            toolchain_archive: &self.tc,
            inputs: &mut inputs.as_slice(),
            command: CommandSpec {
                executable: "/usr/bin/cc".into(),
                arguments: args.iter().map(|s| s.to_string()).collect(),
                env_vars: vec![],
                cwd: "/work".into(),
            },
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn count(&self, step: &str) -> usize {
        self.shared
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.split(' ').next() == Some(step))
            .count()
    }

    fn fail(&self, step: &'static str, after: usize) {
        self.shared.faults.lock().unwrap().insert(step, after);
    }
}

/// `fake_cc` that first waits on `gate` when given `--meet`, so builds are in exec together.
fn meeting_cc(
    gate: Arc<Barrier>,
) -> impl Fn(&Path, &PreparedCommand) -> Result<ExecOutcome, TestError> + Send + Sync + 'static {
    move |root, cmd| {
        if cmd.spec().arguments.iter().any(|a| a == "--meet") {
            gate.wait();
        }
        fake_cc(root, cmd)
    }
}

impl Harness {
    /// (uid, container) of every exec so far, in order.
    fn execs(&self) -> Vec<(u32, String)> {
        self.shared
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter_map(|c| {
                let rest = c.strip_prefix("exec /usr/bin/cc as ")?;
                let (uid, container) = rest.split_once(" in ")?;
                Some((uid.parse().unwrap(), container.to_string()))
            })
            .collect()
    }

    /// `n` builds at once, all inside exec together (the program meets on a barrier).
    fn meet(self: &Arc<Self>, n: usize) {
        let threads: Vec<_> = (0..n)
            .map(|_| {
                let h = Arc::clone(self);
                std::thread::spawn(move || h.build("tc1", &[], &["--meet", "-o", "o"], &["o"]))
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
    }
}

#[test]
fn concurrent_builds_run_as_different_users_of_the_range() {
    let gate = Arc::new(Barrier::new(3));
    let h = Arc::new(harness_with(config(), meeting_cc(Arc::clone(&gate))));
    h.meet(3);
    let execs = h.execs();
    assert_eq!(execs.len(), 3, "{execs:?}");
    let mut uids: Vec<u32> = execs.iter().map(|e| e.0).collect();
    uids.sort_unstable();
    uids.dedup();
    assert_eq!(
        uids.len(),
        3,
        "three live containers share a uid: {execs:?}"
    );
    // max_containers = 4: slots 0..4, uids 4242..4246.
    assert!(uids.iter().all(|u| (4242..4246).contains(u)), "{execs:?}");
}

#[test]
fn a_recycled_container_keeps_its_user_and_a_destroyed_ones_is_reused() {
    let mut cfg = config();
    cfg.max_containers = 2;
    cfg.max_containers_per_toolchain = 2;
    cfg.warm_per_toolchain = 0;
    let gate = Arc::new(Barrier::new(2));
    let h = Arc::new(harness_with(cfg, meeting_cc(Arc::clone(&gate))));
    h.meet(2);
    h.engine.wait_idle();
    let first = h.execs();
    let uid_of = |c: &str| first.iter().find(|e| e.1 == c).map(|e| e.0);
    assert_ne!(first[0].0, first[1].0, "{first:?}");
    assert_ne!(first[0].1, first[1].1, "{first:?}");
    // Reset in between, the same containers run as the same users, build after build.
    for _ in 0..4 {
        h.meet(2);
        h.engine.wait_idle();
    }
    h.build("tc1", &[], &["-o", "o"], &["o"]).unwrap();
    h.engine.wait_idle();
    let execs = h.execs();
    for (uid, c) in &execs {
        assert_eq!(Some(*uid), uid_of(c), "{c} changed users: {execs:?}");
    }
    assert_eq!(h.count("create_container"), 2);
    // A container whose reset fails is destroyed; its replacement gets the freed slot.
    h.fail("reset", 0);
    h.build("tc1", &[], &["-o", "o"], &["o"]).unwrap();
    h.engine.wait_idle();
    let (gone_uid, gone) = h.execs().last().unwrap().clone();
    assert_eq!(h.count("destroy_container"), 1);
    let before = h.execs().len();
    h.meet(2);
    let after = h.execs()[before..].to_vec();
    let fresh = after
        .iter()
        .find(|e| e.1 != first[0].1 && e.1 != first[1].1);
    let fresh = fresh.unwrap_or_else(|| panic!("no new container: {after:?}"));
    assert_ne!(fresh.1, gone);
    assert_eq!(fresh.0, gone_uid, "{after:?}");
    assert_ne!(after[0].0, after[1].0, "{after:?}");
}

#[test]
fn a_range_past_the_largest_id_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let (backend, _) = TestBackend::new(tmp.path().to_path_buf(), fake_cc);
    let mut cfg = config();
    cfg.build_user_base = BuildUser {
        uid: u32::MAX - 3,
        gid: 4242,
    };
    // Slot 3 would be u32::MAX, (uid_t)-1: setresuid would leave the server's uid.
    let e = Engine::start(backend, cfg).err().expect("refused");
    assert!(matches!(e, BuildError::InvalidConfig { .. }), "{e}");
}

#[test]
fn a_build_runs_end_to_end_as_the_build_user() {
    let h = harness(config());
    let out = h
        .build(
            "tc1",
            &[("work/a.c", b"AAA"), ("work/b.c", b"BBB")],
            &["a.c", "b.c", "-o", "obj/ab.o"],
            &["obj/ab.o", "never.o"],
        )
        .unwrap();
    assert!(out.exec.status.success());
    assert_eq!(
        out.outputs,
        vec![Output {
            path: "obj/ab.o".into(),
            data: b"AAABBB".to_vec()
        }]
    );
    // As slot 0 or 1 (the pre-warmed container, or one made at once): never another id.
    let calls = h.shared.calls.lock().unwrap().clone();
    let exec = calls.iter().find(|c| c.starts_with("exec ")).unwrap();
    assert!(
        exec.starts_with("exec /usr/bin/cc as 4242 in c")
            || exec.starts_with("exec /usr/bin/cc as 4243 in c"),
        "{calls:?}"
    );
    assert!(out.timings.total >= out.timings.exec);
}

#[test]
fn a_reused_container_has_none_of_the_previous_build_files() {
    let mut cfg = config();
    cfg.max_containers = 1;
    cfg.max_containers_per_toolchain = 1;
    let h = harness(cfg);
    h.build(
        "tc1",
        &[("work/a.c", b"A")],
        &["a.c", "--leave", "-o", "a.o"],
        &["a.o"],
    )
    .unwrap();
    h.engine.wait_idle();
    // Same single container, reset in between: leftover.tmp and a.c are gone.
    let out = h
        .build("tc1", &[], &["leftover.tmp", "a.c", "-o", "b.o"], &["b.o"])
        .unwrap();
    assert_eq!(out.outputs[0].data, b"[missing leftover.tmp][missing a.c]");
    h.engine.wait_idle();
    assert_eq!(
        h.count("create_container"),
        1,
        "{:?}",
        h.shared.calls.lock().unwrap()
    );
    assert_eq!(h.count("reset"), 2);
}

#[test]
fn images_are_built_once_under_concurrency() {
    let h = Arc::new(harness(config()));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let h = Arc::clone(&h);
            std::thread::spawn(move || {
                let name = format!("work/{i}.c");
                h.build(
                    "tc1",
                    &[(&name, b"x")],
                    &[&format!("{i}.c"), "-o", "o"],
                    &["o"],
                )
                .unwrap()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap().outputs[0].data, b"x");
    }
    assert_eq!(h.count("create_image"), 1);
    assert!(
        h.shared.max_alive.load(Ordering::SeqCst) <= 4,
        "pool bound exceeded"
    );
}

#[test]
fn a_slow_image_does_not_block_other_toolchains() {
    let h = Arc::new(harness(config()));
    let gate = Arc::new(Barrier::new(2));
    *h.shared.slow_gate.lock().unwrap() = Some(Arc::clone(&gate));
    let slow = {
        let h = Arc::clone(&h);
        std::thread::spawn(move || h.build("slow", &[], &["-o", "o"], &["o"]).unwrap())
    };
    gate.wait(); // "slow" is now inside create_image
                 // Another toolchain builds to completion while "slow" is still being created.
    h.build(
        "fast",
        &[("work/f.c", b"F")],
        &["f.c", "-o", "f.o"],
        &["f.o"],
    )
    .unwrap();
    gate.wait();
    slow.join().unwrap();
}

#[test]
fn the_pool_bound_holds_and_waiters_are_served() {
    let mut cfg = config();
    cfg.max_containers = 2;
    cfg.max_containers_per_toolchain = 2;
    let h = Arc::new(harness(cfg));
    let threads: Vec<_> = (0..12)
        .map(|i| {
            let h = Arc::clone(&h);
            let tc = if i % 2 == 0 { "tc1" } else { "tc2" };
            std::thread::spawn(move || h.build(tc, &[], &["-o", "o"], &["o"]).unwrap())
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(
        h.shared.max_alive.load(Ordering::SeqCst) <= 2,
        "max {}",
        h.shared.max_alive.load(Ordering::SeqCst)
    );
    h.engine.wait_idle();
    assert!(h.engine.stats().containers_alive <= 2);
}

#[test]
fn a_container_that_fails_to_reset_is_destroyed_and_replaced() {
    let mut cfg = config();
    cfg.max_containers = 1;
    cfg.max_containers_per_toolchain = 1;
    let h = harness(cfg);
    h.build("tc1", &[], &["-o", "o"], &["o"]).unwrap();
    h.engine.wait_idle();
    h.fail("reset", 0);
    h.build("tc1", &[], &["-o", "o"], &["o"]).unwrap();
    h.engine.wait_idle();
    let s = h.engine.stats();
    assert_eq!(s.reset_failures, 1);
    assert_eq!(h.count("destroy_container"), 1);
    // The next build gets a fresh container.
    h.build("tc1", &[], &["-o", "o"], &["o"]).unwrap();
    assert_eq!(h.count("create_container"), 2);
}

#[test]
fn repeated_backend_failures_make_the_builder_unhealthy_until_a_success() {
    let mut cfg = config();
    cfg.unhealthy_after = 3;
    cfg.warm_per_toolchain = 0;
    let h = harness(cfg);
    assert!(h.engine.is_healthy());
    for _ in 0..3 {
        h.fail("create_container", 0);
        let e = h.build("tc1", &[], &["-o", "o"], &["o"]).unwrap_err();
        assert!(!e.is_client_error(), "{e}");
    }
    assert!(!h.engine.is_healthy());
    h.build("tc1", &[], &["-o", "o"], &["o"]).unwrap();
    assert!(h.engine.is_healthy());
}

#[test]
fn bad_requests_fail_the_job_only() {
    let h = harness(config());
    let inputs = inputs_tar(&[]);
    let cases: Vec<(CommandSpec, Vec<String>, Vec<u8>)> = vec![
        (
            CommandSpec {
                executable: "cc".into(),
                cwd: "/work".into(),
                ..Default::default()
            },
            vec![],
            inputs.clone(),
        ),
        (
            CommandSpec {
                executable: "/usr/bin/cc".into(),
                cwd: "/work".into(),
                ..Default::default()
            },
            vec!["obj/..".into()],
            inputs.clone(),
        ),
        (
            CommandSpec {
                executable: "/usr/bin/cc".into(),
                cwd: "/work".into(),
                ..Default::default()
            },
            vec![],
            b"garbage that is not a tar archive at all".repeat(20),
        ),
        (
            CommandSpec {
                executable: "/no/such/cc".into(),
                cwd: "/work".into(),
                ..Default::default()
            },
            vec![],
            inputs.clone(),
        ),
    ];
    for (command, outputs, inputs) in cases {
        let err = h
            .engine
            .build(BuildRequest {
                toolchain: ToolchainId::new("tc1").unwrap(),
                toolchain_archive: &h.tc,
                inputs: &mut inputs.as_slice(),
                command,
                outputs,
            })
            .unwrap_err();
        assert!(err.is_client_error(), "{err}");
    }
    // A corrupt toolchain is the job's fault and is reported as such.
    let err = h
        .engine
        .build(BuildRequest {
            toolchain: ToolchainId::new("broken").unwrap(),
            toolchain_archive: &&b"not gzip"[..],
            inputs: &mut inputs.as_slice(),
            command: CommandSpec {
                executable: "/usr/bin/cc".into(),
                cwd: "/work".into(),
                ..Default::default()
            },
            outputs: vec![],
        })
        .unwrap_err();
    assert!(matches!(err, BuildError::Toolchain { .. }), "{err}");
    assert!(h.engine.is_healthy());
    // The builder still serves, and the failed compile's stderr comes back.
    let out = h.build("tc1", &[], &["--fail"], &["o"]).unwrap();
    assert_eq!(out.exec.status, ExitStatus::Code(1));
    assert_eq!(out.exec.stderr, b"error: asked to fail");
    assert!(out.outputs.is_empty());
    h.engine.wait_idle();
    assert_eq!(
        h.engine.stats().containers_alive,
        h.engine.stats().containers_ready
    );
}

#[test]
fn a_symlinked_output_is_refused_not_followed() {
    let h = harness(config());
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("secret");
    fs::write(&secret, b"host secret").unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut hd = tar::Header::new_gnu();
    hd.set_entry_type(tar::EntryType::Symlink);
    hd.set_size(0);
    hd.set_cksum();
    b.append_link(&mut hd, "work/out.o", &secret).unwrap();
    let inputs = b.into_inner().unwrap();
    let err = h
        .engine
        .build(BuildRequest {
            toolchain: ToolchainId::new("tc1").unwrap(),
            toolchain_archive: &h.tc,
            inputs: &mut inputs.as_slice(),
            command: CommandSpec {
                executable: "/usr/bin/cc".into(),
                cwd: "/work".into(),
                ..Default::default()
            },
            outputs: vec!["out.o".into()],
        })
        .unwrap_err();
    assert!(matches!(err, BuildError::Output { .. }), "{err}");
}

#[test]
fn idle_images_are_evicted_least_recently_used_first() {
    let mut cfg = config();
    cfg.max_images = 2;
    let h = harness(cfg);
    for tc in ["tc1", "tc2"] {
        h.build(tc, &[], &["-o", "o"], &["o"]).unwrap();
    }
    h.engine.wait_idle();
    h.build("tc1", &[], &["-o", "o"], &["o"]).unwrap(); // tc2 is now the LRU
    h.engine.wait_idle();
    h.build("tc3", &[], &["-o", "o"], &["o"]).unwrap();
    h.engine.wait_idle();
    let calls = h.shared.calls.lock().unwrap().clone();
    let destroyed: Vec<_> = calls
        .iter()
        .filter(|c| c.starts_with("destroy_image"))
        .collect();
    assert_eq!(destroyed, vec!["destroy_image tc2"]);
    // Its containers went first (a snapshot with clones cannot be destroyed).
    let img_at = calls.iter().position(|c| c == "destroy_image tc2").unwrap();
    assert!(calls[..img_at]
        .iter()
        .any(|c| c.starts_with("destroy_container")));
    assert_eq!(h.engine.stats().images, 2);
    assert_eq!(h.engine.stats().images_evicted, 1);
}

#[test]
fn shutdown_destroys_every_container_and_image() {
    let h = harness(EngineConfig {
        keep_images: false,
        ..config()
    });
    for tc in ["tc1", "tc2"] {
        h.build(tc, &[], &["-o", "o"], &["o"]).unwrap();
    }
    h.engine.shutdown();
    assert_eq!(h.shared.alive.load(Ordering::SeqCst), 0);
    assert_eq!(h.count("destroy_image"), 2);
    let err = h.build("tc1", &[], &[], &[]).unwrap_err();
    assert!(matches!(err, BuildError::ShuttingDown));
}

/// Stops `h`'s engine and starts a new one with `config` on the same backend directory.
fn restart(h: Harness, config: EngineConfig) -> Harness {
    let Harness {
        engine, tc, _tmp, ..
    } = h;
    drop(engine);
    let (backend, shared) = TestBackend::new(_tmp.path().to_path_buf(), fake_cc);
    Harness {
        engine: Engine::start(backend, config).unwrap(),
        shared,
        tc,
        _tmp,
    }
}

/// Sets when image `tc` of the test backend was last used.
fn set_last_used(h: &Harness, tc: &str, secs_ago: u64) {
    let dir = h._tmp.path().join("images").join(tc);
    let t = std::time::SystemTime::now() - Duration::from_secs(secs_ago);
    fs::File::open(dir).unwrap().set_modified(t).unwrap();
}

fn destroyed_images(h: &Harness) -> Vec<String> {
    let calls = h.shared.calls.lock().unwrap().clone();
    calls
        .into_iter()
        .filter(|c| c.starts_with("destroy_image"))
        .collect()
}

#[test]
fn shutdown_keeps_images_and_a_restart_adopts_the_most_recent_within_max_images() {
    let h = harness(config());
    for tc in ["tc1", "tc2", "tc3"] {
        h.build(tc, &[], &["-o", "o"], &["o"]).unwrap();
    }
    h.engine.shutdown();
    assert_eq!(h.shared.alive.load(Ordering::SeqCst), 0, "containers go");
    assert_eq!(h.count("destroy_image"), 0, "images stay");
    for (tc, ago) in [("tc1", 300), ("tc2", 100), ("tc3", 200)] {
        set_last_used(&h, tc, ago);
    }

    let h = restart(
        h,
        EngineConfig {
            max_images: 2,
            ..config()
        },
    );
    let s = h.engine.stats();
    assert_eq!((s.images_adopted, s.images, s.images_created), (2, 2, 0));
    // The least recently used one is beyond the bound.
    assert_eq!(destroyed_images(&h), ["destroy_image tc1"]);
    // Adopted images serve builds without being created again.
    let out = h.build("tc2", &[("work/a", b"A")], &["a", "-o", "o"], &["o"]);
    assert_eq!(out.unwrap().outputs[0].data, b"A");
    h.build("tc3", &[], &["-o", "o"], &["o"]).unwrap();
    assert_eq!(h.count("create_image"), 0);
    h.engine.wait_idle(); // an image with a container being reset is not idle
                          // The destroyed one is created again, and the bound evicts the least recently used
                          // adopted image (tc2: tc3 was used since).
    h.build("tc1", &[], &["-o", "o"], &["o"]).unwrap();
    h.engine.wait_idle();
    assert_eq!(h.count("create_image"), 1);
    let s = h.engine.stats();
    assert_eq!((s.images, s.images_evicted), (2, 1));
    assert_eq!(
        destroyed_images(&h),
        ["destroy_image tc1", "destroy_image tc2"]
    );
}

#[test]
fn without_keep_images_a_restart_destroys_what_an_earlier_run_kept() {
    let h = harness(config());
    h.build("tc1", &[], &["-o", "o"], &["o"]).unwrap();
    std::mem::take(&mut *h.shared.calls.lock().unwrap());
    let h = restart(
        h,
        EngineConfig {
            keep_images: false,
            ..config()
        },
    );
    assert_eq!(h.count("destroy_image"), 1);
    assert_eq!(h.engine.stats().images_adopted, 0);
    h.build("tc1", &[], &["-o", "o"], &["o"]).unwrap();
    assert_eq!(h.count("create_image"), 1);
}

fn tar_with_mode(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

impl Harness {
    fn build_outputs(&self, inputs: &[u8], outputs: &[&str]) -> Result<BuildOutcome, BuildError> {
        self.engine.build(BuildRequest {
            toolchain: ToolchainId::new("tc1").unwrap(),
            toolchain_archive: &self.tc,
            inputs: &mut &inputs[..],
            command: CommandSpec {
                executable: "/usr/bin/cc".into(),
                cwd: "/work".into(),
                ..Default::default()
            },
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
        })
    }
}

#[test]
fn too_many_or_duplicate_outputs_are_refused_before_any_sandbox_is_touched() {
    let mut cfg = config();
    cfg.max_outputs = 3;
    let h = harness(cfg);
    let err = h
        .build_outputs(&[], &["a.o", "b.o", "c.o", "d.o"])
        .unwrap_err();
    assert!(
        matches!(err, BuildError::TooManyOutputs { count: 4, limit: 3 }),
        "{err}"
    );
    for (dups, first, second) in [
        (&["a.o", "/work/a.o"][..], "a.o", "/work/a.o"),
        (&["./a.o", "b.o", "/work//a.o/"][..], "./a.o", "/work//a.o/"),
        (
            &["/work/sub/./a.o", "sub/a.o"][..],
            "/work/sub/./a.o",
            "sub/a.o",
        ),
    ] {
        match h.build_outputs(&[], dups).unwrap_err() {
            BuildError::DuplicateOutput { path, first: f } => {
                assert_eq!((f.as_str(), path.as_str()), (first, second), "{dups:?}");
            }
            e => panic!("{dups:?}: {e}"),
        }
    }
    assert!(err.is_client_error());
    assert_eq!(h.count("create_image"), 0);
    assert_eq!(h.count("create_container"), 0);
    // Distinct paths up to the limit are fine.
    let inputs = inputs_tar(&[("work/a.o", b"A"), ("work/sub/a.o", b"B")]);
    let out = h
        .build_outputs(&inputs, &["a.o", "sub/a.o", "/a.o"])
        .unwrap();
    let got: Vec<_> = out.outputs.iter().map(|o| o.data.as_slice()).collect();
    assert_eq!(got, [b"A", b"B"]);
}

#[test]
fn outputs_through_dotdot_and_dev_null_are_read_as_the_sandbox_names_them() {
    let h = harness(config());
    let inputs = inputs_tar(&[("work/obj/a.o", b"A")]);
    // `..` resolved inside the sandbox (a make rule in src/ writing ../obj/a.o); two
    // spellings of one path are one output; /dev/null is empty without being opened.
    let out = h
        .build_outputs(&inputs, &["src/../obj/a.o", "/dev/null"])
        .unwrap();
    let got: Vec<_> = out
        .outputs
        .iter()
        .map(|o| (o.path.as_str(), o.data.as_slice()))
        .collect();
    assert_eq!(got, [("src/../obj/a.o", &b"A"[..]), ("/dev/null", b"")]);
    match h
        .build_outputs(&inputs, &["obj/a.o", "x/../obj/a.o"])
        .unwrap_err()
    {
        BuildError::DuplicateOutput { .. } => {}
        e => panic!("{e}"),
    }
}

#[test]
fn outputs_are_capped_each_and_together() {
    let mut cfg = config();
    cfg.max_output_bytes = 8;
    cfg.max_outputs_total_bytes = 10;
    let h = harness(cfg);
    let inputs = inputs_tar(&[
        ("work/six", b"666666"),
        ("work/six2", b"666666"),
        ("work/nine", b"999999999"),
    ]);
    let out = h.build_outputs(&inputs, &["six", "missing.o"]).unwrap();
    assert_eq!(out.outputs.len(), 1);
    match h.build_outputs(&inputs, &["six", "six2"]).unwrap_err() {
        BuildError::OutputsTooLarge { path, limit: 10 } => assert_eq!(path, "six2"),
        e => panic!("{e}"),
    }
    match h.build_outputs(&inputs, &["nine"]).unwrap_err() {
        BuildError::Output {
            path,
            source:
                crate::untrusted::BeneathError::TooLarge {
                    size: 9, limit: 8, ..
                },
        } => assert_eq!(path, "nine"),
        e => panic!("{e}"),
    }
    assert!(h.engine.is_healthy());
}

/// Records the largest read it was handed and returns the byte count.
struct ChunkProbe(std::sync::Mutex<usize>);

impl OutputEncoder for ChunkProbe {
    type Encoded = u64;

    fn encode(&self, file: &mut dyn std::io::Read, size: u64) -> std::io::Result<u64> {
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                assert_eq!(total, size);
                return Ok(total);
            }
            let mut max = self.0.lock().unwrap();
            *max = (*max).max(n);
            total += n as u64;
        }
    }
}

#[test]
fn outputs_stream_through_the_encoder_in_chunks() {
    let h = harness(config());
    let big = vec![7u8; 3 << 20];
    let inputs = inputs_tar(&[("work/big.o", &big), ("work/small.o", b"s")]);
    let probe = ChunkProbe(std::sync::Mutex::new(0));
    let out = h
        .engine
        .build_encoded(
            BuildRequest {
                toolchain: ToolchainId::new("tc1").unwrap(),
                toolchain_archive: &h.tc,
                inputs: &mut inputs.as_slice(),
                command: CommandSpec {
                    executable: "/usr/bin/cc".into(),
                    cwd: "/work".into(),
                    ..Default::default()
                },
                outputs: vec!["big.o".into(), "small.o".into()],
            },
            &probe,
            None,
        )
        .unwrap();
    let sizes: Vec<u64> = out.outputs.iter().map(|o| o.data).collect();
    assert_eq!(sizes, [3 << 20, 1]);
    // A 1 MiB read was asked for; the engine hands out at most one chunk at a time.
    assert_eq!(*probe.0.lock().unwrap(), OUTPUT_CHUNK_BYTES);
}

#[test]
fn an_output_the_build_user_could_not_read_is_a_job_error() {
    // Inputs are given to the build user; the secret is a file the build user does not
    // own (as one in the image or the base layer): the "compile" leaves it 0600, owned by
    // the test process (root in CI), whose uid is not the build user's (4242).
    let inputs = tar_with_mode(&[("work/public.o", b"public", 0o644)]);
    let plant = |root: &Path, cmd: &PreparedCommand| {
        let secret = root.join("work/secret");
        fs::write(&secret, b"root only").unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        fake_cc(root, cmd)
    };
    assert_ne!(nix::unistd::geteuid().as_raw(), 4242);
    let h = harness_with(config(), plant);
    let out = h.build_outputs(&inputs, &["public.o"]).unwrap();
    assert_eq!(out.outputs[0].data, b"public");
    let err = h
        .build_outputs(&inputs, &["public.o", "secret"])
        .unwrap_err();
    match &err {
        BuildError::Output {
            path,
            source: crate::untrusted::BeneathError::PermissionDenied { .. },
        } => assert_eq!(path, "secret"),
        e => panic!("{e}"),
    }
    assert!(err.is_client_error());
    assert!(!format!("{err:?}").contains("root only"));
    assert!(h.engine.is_healthy());
}
