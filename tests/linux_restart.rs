//! Warm restarts on the real Linux backend: a restarted engine adopts the complete images
//! the last instance left (no re-unpack), and removes everything else it finds: container
//! mounts and directories of a crash, partial, foreign and other-version image
//! directories. Needs root and busybox-static (else SKIP, or failure under
//! JAILBUILDER_CI=1).
#![cfg(target_os = "linux")]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;
use jailbuilder::backend::Backend;
use jailbuilder::engine::{Engine, EngineConfig};
use jailbuilder::linux::LinuxBackend;

fn inode(p: &Path) -> (u64, u64) {
    let md = std::fs::symlink_metadata(p).unwrap();
    (md.dev(), md.ino())
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn start(state: &Path, tweak: impl FnOnce(&mut EngineConfig)) -> Engine<LinuxBackend> {
    let mut ec = engine_config();
    tweak(&mut ec);
    Engine::start(LinuxBackend::new(linux_config(state)).unwrap(), ec).unwrap()
}

fn echo(engine: &Engine<LinuxBackend>, tc: &[u8]) -> String {
    let f = |engine: &Engine<LinuxBackend>| {
        engine
            .build(jailbuilder::engine::BuildRequest {
                toolchain: jailbuilder::backend::ToolchainId::new("busybox").unwrap(),
                toolchain_archive: &tc.to_vec(),
                inputs: &mut &tar(&[])[..],
                command: spec(&["sh", "-c", "cat /work/keep.txt 2>/dev/null; echo served"]),
                outputs: vec![],
            })
            .unwrap()
    };
    let o = f(engine);
    assert!(o.exec.status.success(), "{o:?}");
    String::from_utf8_lossy(&o.exec.stdout).into_owned()
}

/// A directory of images/ holding a `root/` layer and the marker `marker` (none: None).
fn plant_image(state: &Path, name: &str, marker: Option<&str>) {
    let dir = state.join("images").join(name);
    std::fs::create_dir_all(dir.join("root/bin")).unwrap();
    std::fs::write(dir.join("root/bin/cc"), b"planted").unwrap();
    if let Some(m) = marker {
        std::fs::write(dir.join(".jailbuilder-image"), m).unwrap();
    }
}

#[test]
fn a_restart_after_a_crash_adopts_the_image_and_removes_everything_else() {
    require_root!();
    let dir = tempfile::Builder::new()
        .prefix("jb-restart")
        .tempdir()
        .unwrap();
    let state = std::fs::canonicalize(dir.path()).unwrap();
    let tc = toolchain();

    // First run: one image, one build; an orderly stop keeps the image.
    let engine = start(&state, |_| {});
    assert_eq!(echo(&engine, &tc), "served\n");
    assert_eq!(engine.stats().images_created, 1);
    drop(engine);
    let image = state.join("images/busybox");
    assert!(image.join(".jailbuilder-image").is_file());
    assert_eq!(mounts_beneath(&state), Vec::<String>::new());
    let (top, layer) = (inode(&image), inode(&image.join("root")));

    // Second run crashes: a container stays mounted with its namespace pins (forgotten,
    // never torn down), and the instance lock goes with the backend as with a dead process.
    {
        let backend = LinuxBackend::new(linux_config(&state)).unwrap();
        backend.remove_leftovers().unwrap();
        let mut kept = backend.existing_images().unwrap();
        assert_eq!(kept.len(), 1);
        let c = backend
            .create_container(&kept.pop().unwrap().image)
            .unwrap();
        std::mem::forget(c);
    }
    let crashed = mounts_beneath(&state);
    assert_eq!(crashed.len(), 5, "{crashed:?}");
    assert_eq!(entries(&state.join("containers")).len(), 1);
    // And what else may be found there: a half-unpacked toolchain, an image without a
    // marker (a crash before the marker, or an older version's layout), a foreign marker,
    // one of another format version, one naming another toolchain, a stray file.
    std::fs::create_dir_all(state.join("staging/half/root")).unwrap();
    plant_image(&state, "partial", None);
    plant_image(&state, "foreign", Some("hello\n"));
    plant_image(&state, "future", Some("jailbuilder-image 2\nid future\n"));
    plant_image(&state, "other", Some("jailbuilder-image 1\nid busybox\n"));
    std::fs::write(state.join("images/stray.txt"), b"x").unwrap();

    let engine = start(&state, |_| {});
    let s = engine.stats();
    assert_eq!((s.images_adopted, s.images, s.images_created), (1, 1, 0));
    assert_eq!(mounts_beneath(&state), Vec::<String>::new());
    assert_eq!(entries(&state.join("containers")), Vec::<String>::new());
    assert_eq!(entries(&state.join("staging")), Vec::<String>::new());
    assert_eq!(entries(&state.join("images")), ["busybox"]);
    // The very directory the first run unpacked, not a new one.
    assert_eq!(inode(&image), top);
    assert_eq!(inode(&image.join("root")), layer);

    // It serves from the adopted image without unpacking the toolchain again.
    assert_eq!(echo(&engine, &tc), "served\n");
    assert_eq!(engine.stats().images_created, 0);
    assert_eq!(inode(&image.join("root")), layer);
    // Its executables were read back into the page cache in the background (the backend's
    // page_cache module): busybox is the toolchain's one ELF file of 64 KiB or more.
    let refilled = engine
        .backend()
        .wait_page_cache_refill()
        .expect("adopting an image starts a page-cache refill");
    assert_eq!(refilled.files, 1, "{refilled:?}");

    // `jailbuilder clean` still removes every image.
    drop(engine);
    let backend = LinuxBackend::new(linux_config(&state)).unwrap();
    backend.clean_all().unwrap();
    assert_eq!(entries(&state.join("images")), Vec::<String>::new());
}

#[test]
fn without_keep_images_a_restart_unpacks_again() {
    require_root!();
    let dir = tempfile::Builder::new()
        .prefix("jb-restart")
        .tempdir()
        .unwrap();
    let state = std::fs::canonicalize(dir.path()).unwrap();
    let tc = toolchain();
    let off = |c: &mut EngineConfig| c.keep_images = false;

    let engine = start(&state, |_| {});
    echo(&engine, &tc);
    drop(engine);
    assert_eq!(entries(&state.join("images")), ["busybox"]);

    let engine = start(&state, off);
    assert_eq!(engine.stats().images_adopted, 0);
    assert_eq!(entries(&state.join("images")), Vec::<String>::new());
    echo(&engine, &tc);
    assert_eq!(engine.stats().images_created, 1);
    drop(engine);
    // Its shutdown destroys the image too.
    assert_eq!(entries(&state.join("images")), Vec::<String>::new());
}
