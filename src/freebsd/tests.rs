//! Orchestration tests over the fake kernel: exact call order, failure at every step,
//! reset failure, leftover clean-up, the instance lock, and the fake's own rules.

use std::path::PathBuf;
use std::sync::Arc;

use super::test_support::*;
use super::*;
use crate::backend::{Backend, ExitStatus, Limits, ToolchainId};
use crate::exec::{CommandSpec, ExecError, PreparedCommand, SetupStep};

/// A started backend (lock taken, dataset root made) with an empty call log.
fn setup() -> (Arc<FakeKernel>, Fb) {
    let fake = Arc::new(FakeKernel::new());
    let b = backend_on(&fake);
    b.remove_leftovers().unwrap();
    fake.take_calls();
    (fake, b)
}

fn tc(id: &str) -> ToolchainId {
    ToolchainId::new(id).unwrap()
}

fn image(b: &Fb, id: &str) -> FreeBsdImage {
    b.create_image(&tc(id), &mut &toolchain_tar_gz(Some(b"#!/bin/sh\n"))[..])
        .unwrap()
}

fn cmd(exe: &str) -> PreparedCommand {
    PreparedCommand::try_from(CommandSpec {
        executable: exe.into(),
        arguments: vec!["-c".into(), "a.c".into()],
        env_vars: vec![],
        cwd: "/work".into(),
    })
    .unwrap()
}

/// Nothing but the image (if any) is left: no container dataset, mount, jail or directory.
fn assert_only_images(fake: &FakeKernel, images: &[&str]) {
    assert_only_image_storage(fake, images);
    assert_eq!(fake.jails(), vec![]);
}

/// Of datasets, snapshots, mounts and directories, only the images' are left (jails are
/// the caller's to check).
fn assert_only_image_storage(fake: &FakeKernel, images: &[&str]) {
    let mut want = vec!["pool".to_string(), "pool/jb".to_string()];
    want.extend(images.iter().map(|i| format!("pool/jb/i-{i}")));
    assert_eq!(fake.datasets(), want);
    let snaps: Vec<String> = images
        .iter()
        .map(|i| format!("pool/jb/i-{i}@image"))
        .collect();
    assert_eq!(fake.snapshots(), snaps);
    assert_eq!(fake.mounts(), vec![]);
    let mut dirs = vec![".jailbuilder.lock".to_string()];
    dirs.extend(images.iter().map(|i| format!("i-{i}")));
    assert_eq!(entries(&fake.base().join("mnt")), dirs);
}

#[test]
fn image_creation_calls_in_order() {
    let (fake, b) = setup();
    let img = image(&b, "tc1");
    assert_eq!(
        fake.take_calls(),
        [
            "create pool/jb/i-tc1",
            "nmount zfs pool/jb/i-tc1 on $T/mnt/i-tc1",
            "unmount $T/mnt/i-tc1",
            "snapshot pool/jb/i-tc1@image",
        ]
    );
    assert_eq!(img.snapshot(), "pool/jb/i-tc1@image");
    assert!(fake
        .props("pool/jb/i-tc1")
        .contains(&ZfsProp::Str("mountpoint", "legacy".into())));
    assert_eq!(fake.mounts(), vec![]);
}

#[test]
fn image_from_base_snapshot_is_a_clone() {
    let fake = Arc::new(FakeKernel::new());
    fake.add_dataset("pool/jb").unwrap();
    fake.add_dataset("pool/jb/base").unwrap();
    fake.zfs_snapshot(&["pool/jb/base@14.2".into()]).unwrap();
    let cfg = FreeBsdConfig {
        base_snapshot: Some("pool/jb/base@14.2".into()),
        ..config(&fake)
    };
    let b = FreeBsdBackend::new(fake.clone(), cfg).unwrap();
    b.remove_leftovers().unwrap();
    fake.take_calls();
    image(&b, "tc1");
    assert_eq!(
        fake.take_calls()[0],
        "clone pool/jb/i-tc1 <- pool/jb/base@14.2"
    );
}

#[test]
fn container_creation_exec_reset_destroy_calls_in_order() {
    let (fake, b) = setup();
    let img = image(&b, "tc1");
    fake.take_calls();
    let inst = b.instance().to_string();
    let c = b.create_container(&img).unwrap();
    let ds = format!("pool/jb/c-{inst}-1");
    let root = format!("$T/mnt/c-{inst}-1");
    let jail = format!("jb-{inst}-1");
    assert_eq!(
        fake.take_calls(),
        [
            format!("clone {ds} <- pool/jb/i-tc1@image"),
            format!("snapshot {ds}@clean"),
            format!("nmount zfs {ds} on {root}"),
            format!("nmount devfs ruleset=4 on {root}/dev"),
            format!("jail_set create {jail} path={root}"),
        ]
    );
    let props = fake.props(&ds);
    for p in [
        ZfsProp::U64("sync", 2),
        ZfsProp::U64("atime", 0),
        ZfsProp::U64("setuid", 0),
        ZfsProp::Str("mountpoint", "legacy".into()),
    ] {
        assert!(props.contains(&p), "{p} missing from {props:?}");
    }
    // The container root shows the image's content.
    let host_root = b.root(&c).to_path_buf();
    assert!(host_root.join("usr/bin/cc").is_file());
    assert!(host_root.join("dev/null").exists(), "devfs mounted");

    // exec: a program writes an output and leaves a daemon behind.
    fake.register_program("/usr/bin/cc", |x| {
        assert_eq!(x.command.arguments, ["-c", "a.c"]);
        assert_eq!(x.user, USER);
        std::fs::write(x.root.join("work/a.o"), b"obj").unwrap();
        FakeRun {
            exit_code: 0,
            stdout: b"ok".to_vec(),
            left_running: 1,
            ..FakeRun::default()
        }
    });
    let out = b
        .exec(&c, &cmd("/usr/bin/cc"), USER, &Limits::default(), None)
        .unwrap();
    assert_eq!(out.status, ExitStatus::Code(0));
    assert_eq!(out.stdout, b"ok");
    assert_eq!(fake.take_calls(), ["exec 1 /usr/bin/cc as 1000:1000"]);
    assert!(host_root.join("work/a.o").is_file());
    assert_eq!(fake.live_jails()[0].processes, 1);

    // reset: kill, wait, devfs off, rollback, devfs on, new jail under the same name.
    let mut c = c;
    b.reset(&mut c).unwrap();
    assert_eq!(
        fake.take_calls(),
        [
            "jail_remove 1".to_string(),
            "jail_wait_gone 1".into(),
            format!("unmount {root}/dev"),
            format!("rollback {ds} -> {ds}@clean"),
            format!("nmount devfs ruleset=4 on {root}/dev"),
            format!("jail_set create {jail} path={root}"),
        ]
    );
    assert!(!host_root.join("work/a.o").exists(), "rolled back");
    assert!(host_root.join("usr/bin/cc").is_file());
    let jails = fake.jails();
    assert_eq!(jails.len(), 1, "the old jail is gone: {jails:?}");
    assert_eq!((jails[0].jid, jails[0].processes), (2, 0));
    assert_eq!(c.jid(), Some(2));

    // destroy: jail, devfs, fs, snapshot, dataset.
    b.destroy_container(c).unwrap();
    assert_eq!(
        fake.take_calls(),
        [
            "jail_remove 2".to_string(),
            "jail_wait_gone 2".into(),
            format!("unmount -f {root}/dev"),
            format!("unmount -f {root}"),
            format!("destroy_snaps {ds}@clean"),
            format!("destroy {ds}"),
        ]
    );
    assert_only_images(&fake, &["tc1"]);
    b.destroy_image(img).unwrap();
    assert_eq!(
        fake.take_calls(),
        ["destroy_snaps pool/jb/i-tc1@image", "destroy pool/jb/i-tc1"]
    );
    assert_only_images(&fake, &[]);
}

#[test]
fn exec_errors_keep_the_setup_step() {
    let (fake, b) = setup();
    let img = image(&b, "tc1");
    let c = b.create_container(&img).unwrap();
    let e = b
        .exec(&c, &cmd("/usr/bin/missing"), USER, &Limits::default(), None)
        .unwrap_err();
    match &e {
        FreeBsdError::Exec { source, .. } => {
            assert!(matches!(
                source,
                ExecError::Setup {
                    step: SetupStep::Execve,
                    errno: libc::ENOENT
                }
            ));
            assert!(source.is_job_error());
        }
        other => panic!("unexpected {other}"),
    }
    fake.register_program("/usr/bin/cc", |_| FakeRun::exit(0));
    let mut bad_cwd = cmd("/usr/bin/cc").spec().clone();
    bad_cwd.cwd = "/nonexistent".into();
    let e = b
        .exec(
            &c,
            &PreparedCommand::try_from(bad_cwd).unwrap(),
            USER,
            &Limits::default(),
            None,
        )
        .unwrap_err();
    assert!(matches!(
        e,
        FreeBsdError::Exec {
            source: ExecError::Setup {
                step: SetupStep::Chdir,
                ..
            },
            ..
        }
    ));
    b.destroy_container(c).unwrap();
}

#[test]
fn timeout_kills_the_jail_and_reset_recovers() {
    let (fake, b) = setup();
    let img = image(&b, "tc1");
    let mut c = b.create_container(&img).unwrap();
    fake.register_program("/usr/bin/cc", |_| FakeRun {
        hang: true,
        left_running: 3,
        ..FakeRun::default()
    });
    let out = b
        .exec(&c, &cmd("/usr/bin/cc"), USER, &Limits::default(), None)
        .unwrap();
    assert_eq!(out.status, ExitStatus::TimedOut);
    assert!(fake.live_jails().is_empty());
    b.reset(&mut c).unwrap();
    assert_eq!(fake.live_jails().len(), 1);
    assert_eq!(fake.live_jails()[0].processes, 0);
    b.destroy_container(c).unwrap();
    assert_only_images(&fake, &["tc1"]);
}

#[test]
fn failure_at_each_container_step_leaves_nothing() {
    let cases = [
        ("clone", Step::ContainerClone),
        ("snapshot", Step::ContainerSnapshot),
        ("nmount zfs", Step::ContainerMount),
        ("nmount devfs", Step::ContainerDevfs),
        ("jail_set", Step::ContainerJail),
    ];
    for (pattern, step) in cases {
        let (fake, b) = setup();
        let img = image(&b, "tc1");
        fake.fail_on(pattern, 1, libc::EIO);
        let e = match b.create_container(&img) {
            Ok(_) => panic!("{pattern}: created"),
            Err(e) => e,
        };
        assert_eq!(e.step(), Some(step), "{pattern}: {e}");
        assert_eq!(e.errno(), Some(libc::EIO), "{pattern}: {e}");
        assert!(e.to_string().contains(&format!("{step}")), "{e}");
        assert_only_images(&fake, &["tc1"]);
        // The image's container count went back: it is destroyed at once, not deferred.
        fake.clear_faults();
        b.destroy_image(img).unwrap();
        assert_only_images(&fake, &[]);
    }
}

#[test]
fn failure_at_each_image_step_leaves_nothing() {
    let cases = [
        ("create", Step::ImageCreate),
        ("nmount zfs", Step::ImageMount),
        ("unmount", Step::ImageUnmount),
        ("snapshot", Step::ImageSnapshot),
    ];
    for (pattern, step) in cases {
        let (fake, b) = setup();
        fake.fail_on(pattern, 1, libc::EIO);
        let e = match b.create_image(&tc("tc1"), &mut &toolchain_tar_gz(Some(b"#!/bin/sh\n"))[..]) {
            Ok(_) => panic!("{pattern}: created"),
            Err(e) => e,
        };
        assert_eq!(e.step(), Some(step), "{pattern}: {e}");
        assert_only_images(&fake, &[]);
    }
    // A corrupt archive: the unpack step.
    let (fake, b) = setup();
    let e = match b.create_image(&tc("tc1"), &mut &b"not a tarball"[..]) {
        Ok(_) => panic!("created"),
        Err(e) => e,
    };
    assert_eq!(e.step(), Some(Step::ImageUnpack), "{e}");
    assert_only_images(&fake, &[]);
    // A clone from a missing base.
    let fake = Arc::new(FakeKernel::new());
    let cfg = FreeBsdConfig {
        base_snapshot: Some("pool/jb/base@none".into()),
        ..config(&fake)
    };
    let b = FreeBsdBackend::new(fake.clone(), cfg).unwrap();
    b.remove_leftovers().unwrap();
    let e = match b.create_image(&tc("tc1"), &mut &toolchain_tar_gz(Some(b"#!/bin/sh\n"))[..]) {
        Ok(_) => panic!("created"),
        Err(e) => e,
    };
    assert_eq!(e.step(), Some(Step::ImageClone));
    assert_eq!(e.errno(), Some(libc::ENOENT));
    assert_only_images(&fake, &[]);
}

#[test]
fn a_failed_reset_destroys_the_container() {
    for pattern in ["rollback", "jail_set", "unmount", "jail_wait_gone"] {
        let (fake, b) = setup();
        let img = image(&b, "tc1");
        let mut c = b.create_container(&img).unwrap();
        fake.fail_on(pattern, 1, libc::EIO);
        let e = b.reset(&mut c).unwrap_err();
        assert!(e.step().is_some(), "{pattern}: {e}");
        fake.clear_faults();
        // Whatever teardown could not do (its first step failed too for jail_wait_gone),
        // destroy_container finishes; the container is never usable again.
        assert!(matches!(
            b.exec(&c, &cmd("/usr/bin/cc"), USER, &Limits::default(), None),
            Err(FreeBsdError::ContainerDead(_))
        ));
        assert!(matches!(
            b.reset(&mut c),
            Err(FreeBsdError::ContainerDead(_))
        ));
        b.destroy_container(c).unwrap();
        assert_only_images(&fake, &["tc1"]);
    }
    // Without help: after a failed rollback, nothing of the container is left at once.
    let (fake, b) = setup();
    let img = image(&b, "tc1");
    let mut c = b.create_container(&img).unwrap();
    fake.fail_on("rollback", 1, libc::EIO);
    assert_eq!(b.reset(&mut c).unwrap_err().step(), Some(Step::Rollback));
    assert_only_images(&fake, &["tc1"]);
}

#[test]
fn destroying_an_image_with_containers_defers() {
    let (fake, b) = setup();
    let img = image(&b, "tc1");
    let c1 = b.create_container(&img).unwrap();
    let c2 = b.create_container(&img).unwrap();
    b.destroy_image(img).unwrap();
    assert_eq!(fake.deferred_snapshots(), ["pool/jb/i-tc1@image"]);
    b.destroy_container(c1).unwrap();
    assert!(fake.datasets().contains(&"pool/jb/i-tc1".to_string()));
    fake.take_calls();
    b.destroy_container(c2).unwrap();
    let calls = fake.take_calls();
    assert_eq!(calls.last().unwrap(), "destroy pool/jb/i-tc1", "{calls:?}");
    assert_only_images(&fake, &[]);
}

#[test]
fn leftovers_of_a_dead_instance_are_removed_in_a_legal_order() {
    let fake = Arc::new(FakeKernel::new());
    {
        let dead = backend_on(&fake);
        dead.remove_leftovers().unwrap();
        let img = image(&dead, "tc1");
        let _img2 = image(&dead, "tc2");
        fake.register_program("/usr/bin/cc", |_| FakeRun {
            left_running: 2,
            ..FakeRun::default()
        });
        let c1 = dead.create_container(&img).unwrap();
        let c2 = dead.create_container(&img).unwrap();
        dead.exec(&c1, &cmd("/usr/bin/cc"), USER, &Limits::default(), None)
            .unwrap();
        // A crash: nothing is destroyed; the lock goes with the process (the backend).
        std::mem::forget((c1, c2, img, _img2));
    }
    // A jail that is not ours (rooted elsewhere) survives.
    let other_root = fake.base().join("elsewhere");
    std::fs::create_dir(&other_root).unwrap();
    fake.jail_create(&JailParams {
        name: "other".into(),
        path: other_root,
        hostname: "other".into(),
        securelevel: 3,
        devfs_ruleset: 4,
    })
    .unwrap();
    assert_eq!(fake.live_jails().len(), 3);
    // tc1 as if the crash came before its marker was written: incomplete, destroyed;
    // tc2 is complete and stays.
    std::fs::remove_file(fake.base().join("mnt/i-tc1/.jailbuilder-image")).unwrap();
    fake.take_calls();

    let b = backend_on(&fake);
    let report = b.remove_leftovers().unwrap();
    assert_only_images_except_other(&fake, &["tc2"]);
    let calls = fake.take_calls();
    // Clones go before their origin snapshot.
    let last_container = calls
        .iter()
        .rposition(|c| c.starts_with("destroy pool/jb/c-"))
        .unwrap();
    let image_snap = calls
        .iter()
        .position(|c| c == "destroy_snaps pool/jb/i-tc1@image")
        .unwrap();
    assert!(last_container < image_snap, "{calls:?}");
    assert!(report.removed.iter().any(|r| r == "dataset pool/jb/i-tc1"));
    assert!(
        !report.removed.iter().any(|r| r.contains("i-tc2")),
        "{report:?}"
    );
    assert_eq!(
        report
            .removed
            .iter()
            .filter(|r| r.starts_with("jail "))
            .count(),
        2,
        "{report:?}"
    );
    // The new instance works on the same root.
    let img = image(&b, "tc1");
    let c = b.create_container(&img).unwrap();
    b.destroy_container(c).unwrap();
}

fn assert_only_images_except_other(fake: &FakeKernel, images: &[&str]) {
    assert_only_image_storage(fake, images);
    let live: Vec<String> = fake
        .live_jails()
        .into_iter()
        .map(|j| j.params.name)
        .collect();
    assert_eq!(live, ["other"]);
}

#[test]
fn clean_all_removes_everything_we_created() {
    let (fake, b) = setup();
    let img = image(&b, "tc1");
    let c = b.create_container(&img).unwrap();
    let report = b.clean_all().unwrap();
    assert!(!report.removed.is_empty());
    assert_only_images(&fake, &[]);
    std::mem::forget((c, img));
}

#[test]
fn a_second_instance_on_the_same_root_is_refused() {
    let (fake, _a) = setup();
    let b = backend_on(&fake);
    assert!(matches!(
        b.remove_leftovers(),
        Err(FreeBsdError::InstanceLocked { .. })
    ));
    assert!(matches!(
        b.clean_all(),
        Err(FreeBsdError::InstanceLocked { .. })
    ));
    assert!(matches!(
        b.create_image(&tc("x1"), &mut &b""[..]),
        Err(FreeBsdError::NotLocked)
    ));
    // Nothing was touched by the refused instance (it only read its devfs ruleset).
    assert_eq!(fake.calls(), ["devfs_ruleset_rules 4"]);
}

#[test]
fn a_mount_root_serves_one_dataset_root() {
    let (fake, a) = setup();
    drop(a);
    let cfg = FreeBsdConfig {
        dataset_root: "pool/other".into(),
        ..config(&fake)
    };
    let b = FreeBsdBackend::new(fake.clone(), cfg).unwrap();
    assert!(matches!(
        b.remove_leftovers(),
        Err(FreeBsdError::ForeignMountRoot { .. })
    ));
}

#[test]
fn bad_configuration_is_refused() {
    let fake = Arc::new(FakeKernel::new());
    for cfg in [
        FreeBsdConfig {
            jail_prefix: "a.b".into(),
            ..config(&fake)
        },
        FreeBsdConfig {
            jail_prefix: "123".into(),
            ..config(&fake)
        },
        FreeBsdConfig {
            dataset_root: "pool//x".into(),
            ..config(&fake)
        },
        FreeBsdConfig {
            mount_root: PathBuf::from("relative"),
            ..config(&fake)
        },
        FreeBsdConfig {
            base_snapshot: Some("pool/base".into()),
            ..config(&fake)
        },
    ] {
        assert!(matches!(
            FreeBsdBackend::new(fake.clone(), cfg),
            Err(FreeBsdError::Config(_))
        ));
    }
}

// ---- the fake's rules ----

fn errno<T: std::fmt::Debug>(r: KResult<T>) -> i32 {
    r.unwrap_err().errno().unwrap()
}

#[test]
fn fake_enforces_zfs_rules() {
    let k = FakeKernel::new();
    assert_eq!(errno(k.zfs_create("pool/a/b", &[])), libc::ENOENT);
    k.zfs_create("pool/a", &[]).unwrap();
    assert_eq!(errno(k.zfs_create("pool/a", &[])), libc::EEXIST);
    assert_eq!(errno(k.zfs_clone("pool/c", "pool/a@s", &[])), libc::ENOENT);
    k.zfs_snapshot(&["pool/a@s1".into()]).unwrap();
    k.zfs_snapshot(&["pool/a@s2".into()]).unwrap();
    assert_eq!(errno(k.zfs_rollback_to("pool/a", "pool/a@s1")), libc::EXDEV);
    k.zfs_rollback_to("pool/a", "pool/a@s2").unwrap();
    k.zfs_clone("pool/c", "pool/a@s2", &[]).unwrap();
    assert_eq!(
        errno(k.zfs_destroy_snaps(&["pool/a@s2".into()], false)),
        libc::EBUSY
    );
    // A filesystem with snapshots or children cannot go.
    assert_eq!(errno(k.zfs_destroy("pool/a")), libc::EBUSY);
    assert_eq!(errno(k.zfs_destroy("pool")), libc::EBUSY);
    // Mounted: EBUSY.
    let mnt = k.base().join("m");
    std::fs::create_dir(&mnt).unwrap();
    k.mount_zfs("pool/c", &mnt).unwrap();
    assert_eq!(errno(k.mount_zfs("pool/c", &mnt)), libc::EBUSY);
    assert_eq!(errno(k.zfs_destroy("pool/c")), libc::EBUSY);
    k.unmount(&mnt, false).unwrap();
    // Deferred destroy of a snapshot with clones: gone with its last clone.
    k.zfs_destroy_snaps(&["pool/a@s2".into()], true).unwrap();
    assert_eq!(k.deferred_snapshots(), ["pool/a@s2"]);
    assert_eq!(errno(k.zfs_clone("pool/d", "pool/a@s2", &[])), libc::ENOENT);
    k.zfs_destroy("pool/c").unwrap();
    assert_eq!(k.snapshots(), ["pool/a@s1"]);
    k.zfs_destroy_snaps(&["pool/a@s1".into()], false).unwrap();
    k.zfs_destroy("pool/a").unwrap();
    assert_eq!(k.datasets(), ["pool"]);
}

#[test]
fn fake_data_follows_snapshots_clones_and_mounts() {
    let k = FakeKernel::new();
    k.zfs_create("pool/a", &[]).unwrap();
    let mnt = k.base().join("m");
    std::fs::create_dir(&mnt).unwrap();
    std::fs::write(mnt.join("under"), b"hidden").unwrap();
    k.mount_zfs("pool/a", &mnt).unwrap();
    assert!(!mnt.join("under").exists(), "the mount hides the directory");
    std::fs::write(mnt.join("f"), b"1").unwrap();
    k.zfs_snapshot(&["pool/a@s".into()]).unwrap();
    std::fs::write(mnt.join("f"), b"2").unwrap();
    std::fs::write(mnt.join("g"), b"new").unwrap();
    k.zfs_rollback_to("pool/a", "pool/a@s").unwrap();
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"1");
    assert!(!mnt.join("g").exists());
    k.unmount(&mnt, false).unwrap();
    assert_eq!(std::fs::read(mnt.join("under")).unwrap(), b"hidden");
    k.zfs_clone("pool/b", "pool/a@s", &[]).unwrap();
    k.mount_zfs("pool/b", &mnt).unwrap();
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"1");
}

#[test]
fn fake_enforces_mount_and_jail_rules() {
    let k = FakeKernel::new();
    k.zfs_create("pool/a", &[]).unwrap();
    let mnt = k.base().join("m");
    assert_eq!(errno(k.mount_zfs("pool/a", &mnt)), libc::ENOENT);
    std::fs::create_dir(&mnt).unwrap();
    assert_eq!(errno(k.unmount(&mnt, false)), libc::EINVAL);
    k.mount_zfs("pool/a", &mnt).unwrap();
    std::fs::create_dir(mnt.join("dev")).unwrap();
    k.mount_devfs(&mnt.join("dev"), 4).unwrap();
    // Parent before child: EBUSY, even forced.
    assert_eq!(errno(k.unmount(&mnt, true)), libc::EBUSY);
    let p = JailParams {
        name: "j".into(),
        path: mnt.clone(),
        hostname: "j".into(),
        securelevel: 3,
        devfs_ruleset: 4,
    };
    let jid = k.jail_create(&p).unwrap();
    assert_eq!(errno(k.jail_create(&p)), libc::EEXIST);
    assert_eq!(
        errno(k.jail_create(&JailParams {
            name: "7".into(),
            ..p.clone()
        })),
        libc::EINVAL
    );
    assert_eq!(k.jail_find("j").unwrap(), Some(jid));
    k.unmount(&mnt.join("dev"), false).unwrap();
    assert_eq!(errno(k.unmount(&mnt.join("dev"), false)), libc::EINVAL);
    // The jail holds its root: EBUSY unless forced; removed but dying still holds it.
    assert_eq!(errno(k.unmount(&mnt, false)), libc::EBUSY);
    k.jail_remove(jid).unwrap();
    assert_eq!(k.jail_find("j").unwrap(), None);
    // The name is free at once (a new jid), while the old one is dying.
    let jid2 = k.jail_create(&p).unwrap();
    assert_ne!(jid, jid2);
    k.jail_remove(jid2).unwrap();
    assert_eq!(errno(k.unmount(&mnt, false)), libc::EBUSY);
    k.jail_wait_gone(jid, std::time::Duration::ZERO).unwrap();
    k.jail_wait_gone(jid2, std::time::Duration::ZERO).unwrap();
    assert_eq!(errno(k.jail_remove(jid)), libc::EINVAL);
    k.unmount(&mnt, false).unwrap();
    // exec in a gone jail: jail_attach EINVAL.
    let e = k
        .exec(
            &ExecPlan::new(jid, USER, &Limits::default()),
            &cmd("/bin/true"),
            &Limits::default(),
            None,
        )
        .unwrap_err();
    assert!(matches!(
        e,
        KernelError::Exec {
            source: ExecError::Setup {
                step: SetupStep::JailAttach,
                errno: libc::EINVAL
            },
            ..
        }
    ));
}

#[test]
fn fake_injects_the_nth_failure_and_logs_it() {
    let k = FakeKernel::new();
    k.fail_on("create pool/x", 2, libc::ENOSPC);
    k.zfs_create("pool/x1", &[]).unwrap();
    assert_eq!(errno(k.zfs_create("pool/x2", &[])), libc::ENOSPC);
    k.zfs_create("pool/x3", &[]).unwrap();
    assert_eq!(
        k.calls(),
        [
            "create pool/x1",
            "create pool/x2 -> injected errno 28",
            "create pool/x3"
        ]
    );
    assert_eq!(k.datasets(), ["pool", "pool/x1", "pool/x3"]);
}

#[test]
fn output_is_capped() {
    let (fake, b) = setup();
    let img = image(&b, "tc1");
    let c = b.create_container(&img).unwrap();
    fake.register_program("/usr/bin/cc", |_| FakeRun {
        exit_code: 1,
        stderr: vec![b'x'; 100],
        ..FakeRun::default()
    });
    let limits = Limits {
        output_stream_cap: 10,
        ..Limits::default()
    };
    let out = b
        .exec(&c, &cmd("/usr/bin/cc"), USER, &limits, None)
        .unwrap();
    assert_eq!(out.status, ExitStatus::Code(1));
    assert_eq!(out.stderr.len(), 10);
    assert!(out.stderr_truncated);
    b.destroy_container(c).unwrap();
}
