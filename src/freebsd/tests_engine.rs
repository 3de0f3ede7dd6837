//! The engine driving the FreeBSD orchestration through the fake kernel: the whole hot path
//! of DESIGN.md (image, warm container, inputs, exec as the build user, outputs, reset by
//! rollback in the recycler) with the kernel's rules enforced, on any OS.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use super::*;
use crate::backend::{BuildUser, ExitStatus, ToolchainId};
use crate::engine::{BuildError, BuildRequest, Engine, EngineConfig};
use crate::exec::CommandSpec;

fn toolchain_tar_gz() -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(3);
    tar.append_data(&mut h, "usr/bin/cc", &b"#!\n"[..]).unwrap();
    tar.into_inner().unwrap().finish().unwrap()
}

fn inputs(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

struct Setup {
    engine: Engine<FreeBsdBackend<Arc<FakeKernel>>>,
    fake: Arc<FakeKernel>,
    tc: Vec<u8>,
}

fn setup(max: usize) -> Setup {
    let fake = Arc::new(FakeKernel::new());
    // "cc a.c -o a.o": copies a.c to a.o in the cwd, as the build user.
    fake.register_program("/usr/bin/cc", move |x| {
        let cwd = x.root.join(x.command.cwd.trim_start_matches('/'));
        let src = std::fs::read(cwd.join(&x.command.arguments[0]));
        match src {
            // Slot n of `max` runs as 4242 + n.
            Ok(data) if (4242..4242 + max as u32).contains(&x.user.uid) => {
                std::fs::write(cwd.join(&x.command.arguments[2]), data).unwrap();
                FakeRun::exit(0)
            }
            _ => FakeRun {
                exit_code: 1,
                stderr: b"cc: error".to_vec(),
                ..FakeRun::default()
            },
        }
    });
    let backend = super::test_support::backend_on(&fake);
    let engine = Engine::start(
        backend,
        EngineConfig {
            max_containers: max,
            max_containers_per_toolchain: max,
            warm_per_toolchain: 1,
            build_user_base: BuildUser {
                uid: 4242,
                gid: 4242,
            },
            unhealthy_after: 2,
            shutdown_grace: Duration::from_secs(5),
            ..EngineConfig::default()
        },
    )
    .unwrap();
    Setup {
        engine,
        fake,
        tc: toolchain_tar_gz(),
    }
}

impl Setup {
    fn build(&self, exe: &str, src: &[u8]) -> Result<crate::engine::BuildOutcome, BuildError> {
        let inputs = inputs(&[("work/a.c", src)]);
        self.engine.build(BuildRequest {
            toolchain: ToolchainId::new("tc1").unwrap(),
            toolchain_archive: &self.tc,
            inputs: &mut inputs.as_slice(),
            command: CommandSpec {
                executable: exe.into(),
                arguments: vec!["a.c".into(), "-o".into(), "a.o".into()],
                env_vars: vec![],
                cwd: "/work".into(),
            },
            outputs: vec!["a.o".into()],
        })
    }
}

#[test]
fn builds_run_in_jails_and_containers_are_reset_by_rollback() {
    let s = setup(1);
    let out = s.build("/usr/bin/cc", b"int x;").unwrap();
    assert_eq!(out.exec.status, ExitStatus::Code(0));
    assert_eq!(out.outputs[0].data, b"int x;");
    s.engine.wait_idle();
    let calls = s.fake.calls();
    let exec_at = calls
        .iter()
        .position(|c| c.starts_with("exec "))
        .expect("exec");
    assert!(
        calls[exec_at].ends_with("as 4242:4242"),
        "{}",
        calls[exec_at]
    );
    // The recycler reset it: jail removed, rolled back to @clean, jail made again.
    let after = &calls[exec_at..];
    let rm = after
        .iter()
        .position(|c| c.starts_with("jail_remove"))
        .expect("jail_remove");
    let rb = after
        .iter()
        .position(|c| c.starts_with("rollback"))
        .expect("rollback");
    let mk = after
        .iter()
        .rposition(|c| c.starts_with("jail_set create"))
        .expect("jail_set");
    assert!(rm < rb && rb < mk, "{after:?}");
    // The second build reuses the same container, without the first build's files.
    let out = s.build("/usr/bin/cc", b"int y;").unwrap();
    assert_eq!(out.outputs[0].data, b"int y;");
    assert_eq!(
        s.fake
            .calls()
            .iter()
            .filter(|c| c.starts_with("clone pool/jb/c-"))
            .count(),
        1
    );
}

#[test]
fn client_faults_fail_the_job_and_leave_the_builder_healthy() {
    let s = setup(2);
    for _ in 0..3 {
        let e = s.build("/usr/bin/no-such-cc", b"x").unwrap_err();
        assert!(matches!(e, BuildError::Start(_)), "{e}");
    }
    let bad = s
        .engine
        .build(BuildRequest {
            toolchain: ToolchainId::new("broken").unwrap(),
            toolchain_archive: &&b"\x1f\x8b not really gzip"[..],
            inputs: &mut inputs(&[]).as_slice(),
            command: CommandSpec {
                executable: "/usr/bin/cc".into(),
                cwd: "/work".into(),
                ..Default::default()
            },
            outputs: vec![],
        })
        .unwrap_err();
    assert!(matches!(bad, BuildError::Toolchain { .. }), "{bad}");
    assert!(s.engine.is_healthy());
    // The half-made image of the broken toolchain is gone.
    assert!(
        !s.fake.datasets().iter().any(|d| d.contains("broken")),
        "{:?}",
        s.fake.datasets()
    );
    s.build("/usr/bin/cc", b"ok").unwrap();
}

#[test]
fn kernel_failures_make_the_builder_unhealthy_until_it_recovers() {
    let s = setup(1);
    s.build("/usr/bin/cc", b"warm").unwrap();
    s.engine.wait_idle();
    // Every rollback fails: the container is destroyed, and so is each replacement.
    s.fake.fail_on("rollback", 0, libc::EIO);
    s.build("/usr/bin/cc", b"1").unwrap();
    s.engine.wait_idle();
    s.fake.fail_on("clone pool/jb/c-", 0, libc::ENOSPC);
    for _ in 0..2 {
        let e = s.build("/usr/bin/cc", b"2").unwrap_err();
        assert!(!e.is_client_error(), "{e}");
    }
    assert!(!s.engine.is_healthy());
    assert!(s.engine.stats().reset_failures >= 1);
    s.fake.clear_faults();
    s.build("/usr/bin/cc", b"3").unwrap();
    assert!(s.engine.is_healthy());
}

#[test]
fn shutdown_leaves_no_container_mount_or_jail_and_keeps_the_image() {
    let s = setup(2);
    s.build("/usr/bin/cc", b"x").unwrap();
    s.engine.shutdown();
    // keep_images (the default): the image stays for the next start.
    assert_eq!(s.fake.datasets(), ["pool", "pool/jb", "pool/jb/i-tc1"]);
    assert_eq!(s.fake.snapshots(), ["pool/jb/i-tc1@image"]);
    assert!(s.fake.mounts().is_empty(), "{:?}", s.fake.mounts());
    assert!(s.fake.live_jails().is_empty());
}

#[test]
fn each_jail_runs_its_builds_as_its_own_uid() {
    let s = setup(2);
    // Both builds of a round are in exec at once, so in two different containers.
    let gate = Arc::new(Barrier::new(2));
    let seen: Arc<Mutex<Vec<(PathBuf, BuildUser, u32)>>> = Arc::default();
    {
        let (gate, seen) = (Arc::clone(&gate), Arc::clone(&seen));
        s.fake.register_program("/usr/bin/meet", move |x| {
            let input = x.root.join("work/a.c");
            let owner = std::fs::metadata(input).map_or(u32::MAX, |m| m.uid());
            seen.lock()
                .unwrap()
                .push((x.root.to_path_buf(), x.user, owner));
            gate.wait();
            FakeRun::exit(0)
        });
    }
    for _ in 0..3 {
        std::thread::scope(|sc| {
            let builds: Vec<_> = (0..2)
                .map(|_| sc.spawn(|| s.build("/usr/bin/meet", b"x").unwrap()))
                .collect();
            for b in builds {
                assert_eq!(b.join().unwrap().exec.status, ExitStatus::Code(0));
            }
        });
        s.engine.wait_idle();
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 6);
    let mut roots: Vec<&PathBuf> = seen.iter().map(|e| &e.0).collect();
    roots.sort();
    roots.dedup();
    assert_eq!(roots.len(), 2, "{seen:?}");
    let user_of = |root: &PathBuf| {
        let users: Vec<BuildUser> = seen.iter().filter(|e| &e.0 == root).map(|e| e.1).collect();
        assert!(
            users.iter().all(|u| *u == users[0]),
            "{root:?} changed users: {seen:?}"
        );
        users[0]
    };
    let (a, b) = (user_of(roots[0]), user_of(roots[1]));
    assert_ne!(a.uid, b.uid, "{seen:?}");
    for u in [a, b] {
        assert!((4242..4244).contains(&u.uid), "{u:?}");
        assert_eq!(u.gid, u.uid, "gid base = uid base here: same offset");
    }
    // The inputs were unpacked as the container's own user.
    for (_, user, owner) in &seen {
        assert_eq!(*owner, user.uid, "{seen:?}");
    }
    // The kernel saw the same identities: "exec <jid> /usr/bin/meet as uid:gid".
    let calls = s.fake.calls();
    let mut execs: Vec<&str> = calls
        .iter()
        .filter(|c| c.starts_with("exec ") && c.contains("/usr/bin/meet"))
        .map(|c| c.rsplit(' ').next().unwrap())
        .collect();
    execs.sort_unstable();
    execs.dedup();
    assert_eq!(execs, ["4242:4242", "4243:4243"], "{calls:?}");
}

/// DESIGN.md's hot path, checked on the call log: a warm compile's own thread makes one
/// kernel call, the exec (fork + jail_attach + execve of the compiler); no ZFS call (no
/// txg sync task: lzc_snapshot/lzc_clone/lzc_rollback each wait for one, see
/// dsl_sync_task(9) in OpenZFS module/zfs/dsl_synctask.c), no mount, no jail creation. The
/// reset that follows runs on the recycler's thread: jail removal (and the wait for it to
/// be gone), devfs unmount, one rollback (one sync task), devfs again and a new jail, and
/// nothing else.
#[test]
fn a_warm_compile_makes_one_kernel_call_and_its_reset_runs_off_the_critical_path() {
    let s = setup(1);
    s.build("/usr/bin/cc", b"warm").unwrap();
    s.engine.wait_idle();
    s.fake.take_calls();

    let me = std::thread::current().id();
    let out = s.build("/usr/bin/cc", b"hot").unwrap();
    assert_eq!(out.exec.status, ExitStatus::Code(0));
    let mine = s.fake.calls_by(me);
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert!(mine[0].starts_with("exec "), "{mine:?}");

    s.engine.wait_idle();
    let all = s.fake.take_calls();
    let reset: Vec<&String> = all.iter().filter(|c| !mine.contains(c)).collect();
    let kind = |c: &str| c.split(' ').next().unwrap_or_default().to_string();
    let kinds: Vec<String> = reset.iter().map(|c| kind(c)).collect();
    assert_eq!(
        kinds,
        [
            "jail_remove",
            "jail_wait_gone",
            "unmount",
            "rollback",
            "nmount",
            "jail_set"
        ],
        "{reset:?}"
    );
    assert!(reset[4].contains("devfs"), "{reset:?}");
    assert!(
        !all.iter().any(|c| c.starts_with("snapshot")
            || c.starts_with("clone")
            || c.starts_with("create")),
        "{all:?}"
    );
}
