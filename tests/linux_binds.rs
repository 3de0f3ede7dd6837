//! The Linux backend's read-only binds of image directories over the container root
//! (src/linux/binds.rs): what a build sees and may do there is what the overlay alone
//! shows and allows, a build whose inputs land under a bound directory still sees them, and
//! the bind comes back with the next reset. Needs root; without it each test prints
//! "SKIP: <reason>".
#![cfg(target_os = "linux")]

mod common;

use common::{dir, file, linux_config, toolchain_with};
use jailbuilder::backend::{Backend, ExitStatus, ToolchainId};
use jailbuilder::linux::{LinuxBackend, LinuxContainer, LinuxImage, ResetCounts};

struct Fixture {
    _dir: tempfile::TempDir,
    backend: LinuxBackend,
    image: LinuxImage,
}

/// busybox in /bin, and /usr (bindable), /opt with a world-writable directory (not) and
/// /etc with a world-writable file (not).
fn fixture(bind: bool) -> Fixture {
    let state = tempfile::Builder::new()
        .prefix("jb-binds-test")
        .tempdir()
        .unwrap();
    let mut cfg = linux_config(&std::fs::canonicalize(state.path()).unwrap());
    cfg.bind_image_dirs = bind;
    let backend = LinuxBackend::new(cfg).unwrap();
    backend.remove_leftovers().unwrap();
    let tgz = toolchain_with(&[
        dir("usr", 0o755),
        dir("usr/share", 0o755),
        file("usr/share/data.txt", 0o644, b"image\n"),
        dir("opt", 0o755),
        dir("opt/pub", 0o777),
        dir("etc", 0o755),
        file("etc/conf", 0o666, b"conf\n"),
    ]);
    let image = backend
        .create_image(&ToolchainId::new("busybox-binds").unwrap(), &mut &tgz[..])
        .unwrap();
    Fixture {
        _dir: state,
        backend,
        image,
    }
}

/// Runs `script` in `c` as the build user; returns (exit code, stdout + stderr).
fn sh(f: &Fixture, c: &LinuxContainer, script: &str) -> (ExitStatus, String) {
    let o = common::backend_sh(&f.backend, c, script);
    let mut out = String::from_utf8_lossy(&o.stdout).into_owned();
    out.push_str(&String::from_utf8_lossy(&o.stderr));
    (o.status, out)
}

fn ok(f: &Fixture, c: &LinuxContainer, script: &str) -> String {
    let (status, out) = sh(f, c, script);
    assert_eq!(status, ExitStatus::Code(0), "{script}: {out}");
    out
}

/// The mount points below the root (mountinfo's fifth field) with their mount options.
fn mounts(f: &Fixture, c: &LinuxContainer) -> Vec<(String, String)> {
    ok(f, c, "cat /proc/self/mountinfo")
        .lines()
        .filter_map(|l| {
            let v: Vec<&str> = l.split(' ').collect();
            (v.len() > 5 && v[4] != "/").then(|| (v[4].to_string(), v[5].to_string()))
        })
        .collect()
}

fn bound(f: &Fixture, c: &LinuxContainer) -> Vec<String> {
    mounts(f, c)
        .into_iter()
        .filter(|(at, _)| at != "/proc")
        .map(|(at, opts)| {
            let mut o: Vec<&str> = opts.split(',').filter(|o| *o != "relatime").collect();
            o.sort();
            format!("{at} {}", o.join(","))
        })
        .collect()
}

/// What a build sees of the image, and what it may change (without times and inode
/// numbers, which differ between two images of the same archive).
const LOOK: &str = "ls -a / /bin /usr /usr/share /opt /etc; \
    stat -c '%a %u %g %s %h %F %n' /usr /usr/share /usr/share/data.txt /bin /bin/busybox /bin/sh /opt/pub /etc/conf; \
    cat /usr/share/data.txt /etc/conf; \
    for p in /usr/new /usr/share/new /bin/new /opt/new; do touch $p 2>/dev/null && echo made $p || echo refused $p; done; \
    (echo x > /usr/share/data.txt) 2>/dev/null && echo wrote data || echo refused data; \
    (echo x >> /bin/busybox) 2>/dev/null && echo wrote busybox || echo refused busybox; \
    touch /opt/pub/mine && echo made /opt/pub/mine; echo conf2 > /etc/conf && cat /etc/conf; \
    mkdir /work/w && echo made /work/w";

#[test]
fn bound_directories_show_and_refuse_what_the_overlay_alone_does() {
    skip_unless!(common::skip_reason());
    let with = fixture(true);
    let without = fixture(false);
    let (a, b) = (
        with.backend.create_container(&with.image).unwrap(),
        without.backend.create_container(&without.image).unwrap(),
    );
    // /bin and /usr are bound read-only, nosuid, nodev; /opt (a world-writable directory)
    // and /etc (a world-writable file) are not, nor /work (world-writable itself).
    assert_eq!(
        bound(&with, &a),
        ["/bin nodev,nosuid,ro", "/usr nodev,nosuid,ro"],
        "{:?}",
        mounts(&with, &a)
    );
    assert!(bound(&without, &b).is_empty(), "{:?}", mounts(&without, &b));
    let seen = ok(&with, &a, LOOK);
    assert_eq!(seen, ok(&without, &b, LOOK));
    for line in [
        "refused /usr/new",
        "refused /usr/share/new",
        "refused /bin/new",
        "refused /opt/new",
        "refused data",
        "refused busybox",
        "made /opt/pub/mine",
        "conf2",
        "made /work/w",
    ] {
        assert!(seen.lines().any(|l| l == line), "{line:?} not in:\n{seen}");
    }
    // Nothing reached the image.
    assert_eq!(
        std::fs::read(with.image.dir().join("usr/share/data.txt")).unwrap(),
        b"image\n"
    );
    with.backend.destroy_container(a).unwrap();
    without.backend.destroy_container(b).unwrap();
}

#[test]
fn inputs_under_a_bound_directory_are_seen_and_the_bind_returns_with_the_next_reset() {
    skip_unless!(common::skip_reason());
    let f = fixture(true);
    let mut c = f.backend.create_container(&f.image).unwrap();
    assert_eq!(bound(&f, &c).len(), 2);
    // What the engine does with inputs: it writes them through the overlay's mount in the
    // server's namespace, so they land in the upper layer, under the bind.
    let src = f.backend.root(&c).join("usr/src/proj");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("in.c"), "input\n").unwrap();
    assert_eq!(
        ok(&f, &c, "cat /usr/src/proj/in.c; cat /usr/share/data.txt"),
        "input\nimage\n"
    );
    assert!(bound(&f, &c).is_empty(), "{:?}", mounts(&f, &c));

    let before = f.backend.reset_counts();
    f.backend.reset(&mut c).unwrap();
    let after = f.backend.reset_counts();
    assert_eq!(
        ResetCounts {
            in_place: after.in_place - before.in_place,
            fresh: after.fresh - before.fresh,
        },
        ResetCounts {
            in_place: 0,
            fresh: 1
        },
        "the reset after an unbound build is a fresh one"
    );
    assert_eq!(bound(&f, &c).len(), 2, "{:?}", mounts(&f, &c));
    let (status, out) = sh(&f, &c, "ls /usr/src");
    assert_ne!(status, ExitStatus::Code(0), "{out}");
    assert_eq!(ok(&f, &c, "ls /usr"), "share\n");

    // A build that wrote nothing under them keeps the binds through an in-place reset.
    ok(&f, &c, "echo x > /work/out");
    let before = f.backend.reset_counts();
    f.backend.reset(&mut c).unwrap();
    assert_eq!(f.backend.reset_counts().in_place, before.in_place + 1);
    assert_eq!(bound(&f, &c).len(), 2);
    f.backend.destroy_container(c).unwrap();
}
