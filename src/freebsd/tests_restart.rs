//! Warm restarts over the fake kernel: complete images (dataset, `@image`, marker) survive
//! a restart and are adopted; partial, foreign, other-version and wrong-id ones and every
//! container are destroyed; the engine serves from an adopted image without creating it.

use std::sync::Arc;
use std::time::Duration;

use super::test_support::{backend_on, entries, Fb};
use super::*;
use crate::backend::{Backend, BuildUser, Limits, ToolchainId};
use crate::engine::{BuildRequest, Engine, EngineConfig};
use crate::exec::{CommandSpec, PreparedCommand};

fn toolchain_tar_gz() -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (path, body) in [("usr/bin/cc", &b"#!\n"[..]), ("work/keep", &b"k"[..])] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        h.set_size(body.len() as u64);
        tar.append_data(&mut h, path, body).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

fn image(b: &Fb, id: &str) -> FreeBsdImage {
    b.create_image(&ToolchainId::new(id).unwrap(), &mut &toolchain_tar_gz()[..])
        .unwrap()
}

fn marker(fake: &FakeKernel, leaf: &str) -> std::path::PathBuf {
    fake.base()
        .join("mnt")
        .join(leaf)
        .join(crate::image_marker::FILE)
}

#[test]
fn a_restart_adopts_complete_images_and_destroys_everything_else() {
    let fake = Arc::new(FakeKernel::new());
    {
        let dead = backend_on(&fake);
        dead.remove_leftovers().unwrap();
        let good = image(&dead, "good");
        // A container of it, mounted and jailed when the instance dies.
        let c = dead.create_container(&good).unwrap();
        // Complete, then spoiled the ways a crash or another version would leave them.
        let no_snap = image(&dead, "nosnap");
        fake.zfs_destroy_snaps(&[no_snap.snapshot().to_string()], false)
            .unwrap();
        let _ = image(&dead, "nomark");
        std::fs::remove_file(marker(&fake, "i-nomark")).unwrap();
        let _ = image(&dead, "wrongid");
        std::fs::write(marker(&fake, "i-wrongid"), "jailbuilder-image 1\nid good\n").unwrap();
        let _ = image(&dead, "future");
        std::fs::write(
            marker(&fake, "i-future"),
            "jailbuilder-image 2\nid future\n",
        )
        .unwrap();
        // Mid-unpack: mounted, no snapshot, and the archive brought its own "marker",
        // which lies inside the dataset, not in the mount point.
        let mid = fake.base().join("mnt/i-mid");
        std::fs::create_dir(&mid).unwrap();
        fake.zfs_create("pool/jb/i-mid", &[]).unwrap();
        fake.mount_zfs("pool/jb/i-mid", &mid).unwrap();
        std::fs::write(
            mid.join(".jailbuilder-image"),
            "jailbuilder-image 1\nid mid\n",
        )
        .unwrap();
        // Complete but mounted: only an unpack mounts an image.
        let _ = image(&dead, "mounted");
        fake.mount_zfs("pool/jb/i-mounted", &fake.base().join("mnt/i-mounted"))
            .unwrap();
        std::mem::forget((c, good, no_snap));
    }
    assert_eq!(fake.live_jails().len(), 1);
    fake.take_calls();

    let b = backend_on(&fake);
    let report = b.remove_leftovers().unwrap();
    for (leaf, why) in [
        ("i-nosnap", "no snapshot"),
        ("i-nomark", "no .jailbuilder-image marker"),
        ("i-wrongid", "names toolchain \"good\""),
        ("i-future", "version \"2\""),
        ("i-mid", "no snapshot"),
        ("i-mounted", "mounted"),
    ] {
        assert!(
            report
                .removed
                .iter()
                .any(|r| r.starts_with(&format!("image {leaf} (")) && r.contains(why)),
            "{leaf}: {report:?}"
        );
    }
    assert_eq!(fake.datasets(), ["pool", "pool/jb", "pool/jb/i-good"]);
    assert_eq!(fake.snapshots(), ["pool/jb/i-good@image"]);
    assert_eq!(fake.mounts(), vec![]);
    assert_eq!(fake.live_jails(), vec![]);
    assert_eq!(
        entries(&fake.base().join("mnt")),
        [".jailbuilder.lock", "i-good"]
    );
    // Leftover sweeping created nothing.
    let calls = fake.take_calls();
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("create ") || c.starts_with("snapshot pool/jb/i-")),
        "{calls:?}"
    );

    let kept = b.existing_images().unwrap();
    assert_eq!(kept.len(), 1);
    let img = kept.into_iter().next().unwrap();
    assert_eq!(img.id.as_str(), "good");
    assert_eq!(img.image.snapshot(), "pool/jb/i-good@image");
    // It serves: a clone of the kept snapshot, with the toolchain's files.
    let c = b.create_container(&img.image).unwrap();
    assert!(b.root(&c).join("usr/bin/cc").is_file());
    fake.register_program("/usr/bin/cc", |_| FakeRun::exit(0));
    let cmd = PreparedCommand::try_from(CommandSpec {
        executable: "/usr/bin/cc".into(),
        arguments: vec![],
        env_vars: vec![],
        cwd: "/work".into(),
    })
    .unwrap();
    let user = BuildUser {
        uid: 1000,
        gid: 1000,
    };
    let out = b.exec(&c, &cmd, user, &Limits::default(), None).unwrap();
    assert!(out.status.success());
    b.destroy_container(c).unwrap();
    // And destroying it removes dataset, snapshot, marker and journal entry.
    b.destroy_image(img.image).unwrap();
    assert_eq!(fake.datasets(), ["pool", "pool/jb"]);
    assert_eq!(entries(&fake.base().join("mnt")), [".jailbuilder.lock"]);
}

#[test]
fn clean_all_removes_kept_images_too() {
    let fake = Arc::new(FakeKernel::new());
    let b = backend_on(&fake);
    b.remove_leftovers().unwrap();
    std::mem::forget(image(&b, "tc1"));
    b.clean_all().unwrap();
    assert_eq!(fake.datasets(), ["pool", "pool/jb"]);
    assert_eq!(entries(&fake.base().join("mnt")), [".jailbuilder.lock"]);
}

fn engine(fake: &Arc<FakeKernel>, keep_images: bool) -> Engine<Fb> {
    let cfg = EngineConfig {
        max_containers: 2,
        max_containers_per_toolchain: 2,
        warm_per_toolchain: 1,
        recycler_threads: 1,
        build_user_base: BuildUser {
            uid: 4242,
            gid: 4242,
        },
        shutdown_grace: Duration::from_secs(5),
        keep_images,
        ..EngineConfig::default()
    };
    Engine::start(backend_on(fake), cfg).unwrap()
}

fn build(e: &Engine<Fb>) {
    let tc = toolchain_tar_gz();
    let out = e
        .build(BuildRequest {
            toolchain: ToolchainId::new("tc1").unwrap(),
            toolchain_archive: &tc,
            inputs: &mut &tar::Builder::new(Vec::new()).into_inner().unwrap()[..],
            command: CommandSpec {
                executable: "/usr/bin/cc".into(),
                arguments: vec![],
                env_vars: vec![],
                cwd: "/work".into(),
            },
            outputs: vec![],
        })
        .unwrap();
    assert!(out.exec.status.success());
}

#[test]
fn a_restarted_engine_serves_from_the_kept_image_without_creating_it() {
    let fake = Arc::new(FakeKernel::new());
    fake.register_program("/usr/bin/cc", |_| FakeRun::exit(0));
    let e = engine(&fake, true);
    build(&e);
    drop(e);
    assert_eq!(fake.snapshots(), ["pool/jb/i-tc1@image"]);
    fake.take_calls();

    let e = engine(&fake, true);
    assert_eq!(e.stats().images_adopted, 1);
    build(&e);
    e.wait_idle();
    assert_eq!(e.stats().images_created, 0);
    let calls = fake.take_calls();
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("create pool/jb/i-tc1")
                || c.starts_with("snapshot pool/jb/i-tc1")),
        "{calls:?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("clone pool/jb/c-") && c.contains("pool/jb/i-tc1@image")),
        "{calls:?}"
    );
    drop(e);

    // keep_images off: the kept image is destroyed at start, created again on use, and
    // destroyed at shutdown.
    let e = engine(&fake, false);
    assert_eq!(e.stats().images_adopted, 0);
    assert_eq!(fake.datasets(), ["pool", "pool/jb"]);
    build(&e);
    assert_eq!(e.stats().images_created, 1);
    drop(e);
    assert_eq!(fake.datasets(), ["pool", "pool/jb"]);
}
