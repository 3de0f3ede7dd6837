//! The `/etc/ld.so.cache` a new image gets (`untrusted::ld_cache`), checked with the real
//! glibc loader: with it, no library of cc, cc1 or as is searched for in the default
//! directories (`LD_DEBUG=libs` shows each lookup), and the object is the same byte for
//! byte as without it and as the host's; a client's own cache is kept as sent; and
//! `ld_cache = false` leaves the image as the client sent it. Needs root and a host C
//! compiler; without them prints "SKIP: <reason>" and passes, unless JAILBUILDER_CI=1.
#![cfg(target_os = "linux")]

mod common;

use std::path::Path;

use jailbuilder::exec::CommandSpec;

/// The image must hold busybox too (common's toolchain), and a host cc to package.
fn missing() -> Option<String> {
    common::skip_reason().or_else(common::root_and_cc_missing)
}

const SOURCE: &str = "int twice(int x) { return 2 * x; }\n";

fn compile(f: &common::Fixture, tc: &[u8]) -> (Vec<u8>, String) {
    let inputs = common::tar(&[common::file("work/a.c", 0o644, SOURCE.as_bytes())]);
    let o = f
        .build_tc(
            "host-cc",
            tc,
            &inputs,
            CommandSpec {
                executable: "/usr/bin/cc".into(),
                arguments: ["-O2", "-c", "a.c", "-o", "a.o"].map(String::from).to_vec(),
                env_vars: vec![
                    ("PATH".into(), "/usr/bin:/bin".into()),
                    ("LD_DEBUG".into(), "libs".into()),
                ],
                cwd: "/work".into(),
            },
            &["a.o"],
        )
        .expect("the compile runs");
    let stderr = common::stderr(&o);
    assert!(o.exec.status.success(), "{stderr}");
    (o.outputs[0].data.clone(), stderr)
}

fn host_object(dir: &Path) -> Vec<u8> {
    std::fs::write(dir.join("a.c"), SOURCE).unwrap();
    let st = std::process::Command::new("cc")
        .args(["-O2", "-c", "a.c", "-o", "a.o"])
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read(dir.join("a.o")).unwrap()
}

fn image_cache(f: &common::Fixture) -> Option<Vec<u8>> {
    let images = f.state().join("images");
    let image = std::fs::read_dir(&images).unwrap().flatten().next()?.path();
    std::fs::read(image.join("root/etc/ld.so.cache")).ok()
}

/// The host's cc package is ~200 MB; the test fixture's image limit is 64 MiB.
fn big_images(l: &mut jailbuilder::linux::LinuxConfig) {
    l.image_limits = jailbuilder::untrusted::UnpackLimits::default();
}

#[test]
fn the_loader_finds_every_library_through_the_cache_and_the_object_is_unchanged() {
    skip_unless!(missing());
    let work = tempfile::tempdir().unwrap();
    let tc_path = work.path().join("cc.tar.gz");
    common::package_host_cc(&tc_path);
    let tc = std::fs::read(&tc_path).unwrap();
    let host = host_object(work.path());

    let with = common::fixture_with(|_| {}, big_images);
    let (object, debug) = compile(&with, &tc);
    let cache = image_cache(&with).expect("the image has an /etc/ld.so.cache");
    assert!(cache.starts_with(b"glibc-ld.so.cache1.1"));
    assert!(
        debug.contains("search cache=/etc/ld.so.cache"),
        "the loader did not read the cache: {debug}"
    );
    // Every library of cc, cc1 and as came from the cache: none was searched for in the
    // system directories.
    assert!(
        !debug.contains("search path="),
        "a library was searched for: {debug}"
    );
    assert_eq!(object, host, "the sandboxed object differs from the host's");

    let without = common::fixture_with(
        |_| {},
        |l| {
            big_images(l);
            l.ld_cache = false;
        },
    );
    let (object_without, debug_without) = compile(&without, &tc);
    assert_eq!(
        image_cache(&without),
        None,
        "ld_cache = false wrote a cache"
    );
    assert!(
        debug_without.contains("search path="),
        "without a cache the loader must search (else this test proves nothing): {debug_without}"
    );
    assert_eq!(object_without, object);
}

#[test]
fn a_clients_own_cache_is_kept_as_sent() {
    skip_unless!(missing());
    let f = common::fixture();
    let mine = b"the client's own, whatever it holds".to_vec();
    let tc = common::toolchain_with(&[
        common::dir("etc", 0o755),
        common::file("etc/ld.so.cache", 0o644, &mine),
        // A library name a cache would list, were the client's file not there.
        common::dir("lib", 0o755),
        common::file("lib/libdemo.so.1", 0o644, b"not even ELF"),
    ]);
    let o = f
        .build_tc(
            "own-cache",
            &tc,
            &common::tar(&[]),
            common::spec(&["cat", "/etc/ld.so.cache"]),
            &[],
        )
        .unwrap();
    assert_eq!(o.exec.stdout, mine);
}
