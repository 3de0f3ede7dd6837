//! The Linux backend's in-place reset (src/linux/upper.rs): a build that only created
//! files has them removed through the overlay, which is kept; a build that changed
//! anything of the lower layers gets fresh layers. Either way the next build sees the
//! image as it was. Needs root; without it each test prints "SKIP: <reason>".
#![cfg(target_os = "linux")]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{dir, file, linux_config, toolchain_with};
use jailbuilder::backend::{Backend, ExitStatus, ToolchainId};
use jailbuilder::linux::{LinuxBackend, LinuxConfig, LinuxContainer, LinuxImage, ResetCounts};

struct Fixture {
    _dir: tempfile::TempDir,
    backend: LinuxBackend,
    image: LinuxImage,
}

fn fixture_with(edit: impl FnOnce(&mut LinuxConfig)) -> Fixture {
    let state = tempfile::Builder::new()
        .prefix("jb-reset-test")
        .tempdir()
        .unwrap();
    let mut cfg = linux_config(&std::fs::canonicalize(state.path()).unwrap());
    edit(&mut cfg);
    let backend = LinuxBackend::new(cfg).unwrap();
    backend.remove_leftovers().unwrap();
    // /work (0777) and /tmp (the skeleton's, 1777) are lower directories a build writes
    // into; /work/keep.txt and /etc/conf are lower files.
    let tgz = toolchain_with(&[
        file("work/keep.txt", 0o644, b"keep\n"),
        dir("etc", 0o755),
        file("etc/conf", 0o666, b"conf\n"),
    ]);
    let image = backend
        .create_image(&ToolchainId::new("busybox-reset").unwrap(), &mut &tgz[..])
        .unwrap();
    Fixture {
        _dir: state,
        backend,
        image,
    }
}

fn fixture() -> Fixture {
    fixture_with(|_| {})
}

fn sh(f: &Fixture, c: &LinuxContainer, script: &str) -> String {
    let o = common::backend_sh(&f.backend, c, script);
    assert_eq!(
        o.status,
        ExitStatus::Code(0),
        "{script}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// What a build sees of the image: listings, modes and contents of what it can change.
const LOOK: &str = "ls -a /work /tmp /etc; stat -c '%a %u %Y %n' /work /tmp /etc /; \
                    cat /work/keep.txt /etc/conf; echo end";

/// Runs `build`, resets, and checks the next build sees what a fresh container sees;
/// returns how the reset went.
fn reset_after(f: &Fixture, build: &str) -> ResetCounts {
    let fresh = f.backend.create_container(&f.image).unwrap();
    let pristine = sh(f, &fresh, LOOK);
    f.backend.destroy_container(fresh).unwrap();

    let mut c = f.backend.create_container(&f.image).unwrap();
    sh(f, &c, build);
    let before = f.backend.reset_counts();
    f.backend.reset(&mut c).unwrap();
    let after = f.backend.reset_counts();
    // The root's mtime is the reset's: the same second, or the next, as a fresh one's.
    let strip_root = |s: &str| {
        s.lines()
            .filter(|l| !l.ends_with(" /"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        strip_root(&sh(f, &c, LOOK)),
        strip_root(&pristine),
        "after: {build}"
    );
    f.backend.destroy_container(c).unwrap();
    ResetCounts {
        in_place: after.in_place - before.in_place,
        fresh: after.fresh - before.fresh,
    }
}

const IN_PLACE: ResetCounts = ResetCounts {
    in_place: 1,
    fresh: 0,
};
const FRESH: ResetCounts = ResetCounts {
    in_place: 0,
    fresh: 1,
};

#[test]
fn a_build_that_only_created_files_is_emptied_in_place() {
    require_root!();
    let f = fixture();
    // Files, a nested tree, a directory without permissions, a symlink out, a fifo, hard
    // links across directories, in lower directories (/work, /tmp) and new ones.
    let build = "echo o > /work/a.o && mkdir -p /work/d/e/f /tmp/out && echo x > /work/d/e/f/g \
                 && mkdir /work/locked && echo s > /work/locked/s && chmod 000 /work/locked \
                 && ln -s /etc/conf /work/link && mkfifo /tmp/fifo && ln /work/a.o /tmp/hard \
                 && echo t > /tmp/t && echo y > /tmp/out/y && chmod 700 /tmp/out";
    assert_eq!(reset_after(&f, build), IN_PLACE);
    // Several in a row, the container's overlay kept throughout.
    let mut c = f.backend.create_container(&f.image).unwrap();
    let overlay = mount_id(f.backend.root(&c));
    for i in 0..5 {
        sh(
            &f,
            &c,
            &format!("echo {i} > /work/n{i} && echo {i} > /tmp/n{i}"),
        );
        f.backend.reset(&mut c).unwrap();
        assert_eq!(sh(&f, &c, "ls /work /tmp"), "/tmp:\n\n/work:\nkeep.txt\n");
    }
    assert_eq!(mount_id(f.backend.root(&c)), overlay);
    // The upper layer holds only the lower directories written into.
    assert_eq!(upper_tree(&f, &c), ["tmp", "work"]);
    f.backend.destroy_container(c).unwrap();
}

#[test]
fn a_build_that_changed_the_lower_layers_gets_fresh_layers() {
    require_root!();
    let f = fixture();
    for build in [
        // A whiteout.
        "rm /work/keep.txt",
        // A copy-up of a file, and of one's times only.
        "echo more >> /etc/conf",
        "touch /etc/conf",
        // A lower entry replaced by another kind.
        "rm /work/keep.txt && mkdir /work/keep.txt",
        // Deeper than the walk goes.
        "p=/work; for i in $(seq 40); do p=$p/d; done; mkdir -p $p",
        // More entries than the walk removes.
        "for i in $(seq 4200); do : > /tmp/f$i; done",
    ] {
        assert_eq!(reset_after(&f, build), FRESH, "{build}");
    }
}

#[test]
fn a_kept_directory_changed_or_an_unseen_inode_gets_fresh_layers() {
    require_root!();
    let f = fixture();
    // Through the overlay, as a build could (user xattrs on tmpfs, Linux 6.6).
    let mut c = f.backend.create_container(&f.image).unwrap();
    sh(&f, &c, "echo x > /work/x");
    let work = f.backend.root(&c).join("work");
    if set_xattr(&work, "user.mark").is_ok() {
        f.backend.reset(&mut c).unwrap();
        assert_eq!(f.backend.reset_counts(), FRESH);
        assert!(!has_xattr(&f.backend.root(&c).join("work"), "user.mark"));
    } else {
        eprintln!("SKIP (xattr part): user xattrs not supported on this tmpfs");
        f.backend.reset(&mut c).unwrap();
    }
    // A kept directory's mode (the image's are root's: as the build user, a build can
    // only change the mode of directories it owns).
    let counts = f.backend.reset_counts();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o700)).unwrap();
    f.backend.reset(&mut c).unwrap();
    assert_eq!(f.backend.reset_counts().fresh, counts.fresh + 1);
    assert_eq!(mode(&f.backend.root(&c).join("work")), 0o40777);
    // An inode the walk does not see: an orphan in overlayfs' work directory.
    let counts = f.backend.reset_counts();
    std::fs::write(tmpfs_of(&f, &c).join("work/work/orphan"), b"x").unwrap();
    sh(&f, &c, "echo x > /work/x");
    f.backend.reset(&mut c).unwrap();
    assert_eq!(f.backend.reset_counts().fresh, counts.fresh + 1);
    assert_eq!(sh(&f, &c, "ls /work"), "keep.txt\n");
    f.backend.destroy_container(c).unwrap();
}

#[test]
fn reset_in_place_off_always_gets_fresh_layers() {
    require_root!();
    let f = fixture_with(|c| c.reset_in_place = false);
    assert_eq!(reset_after(&f, "echo o > /work/a.o"), FRESH);
}

/// The container's tmpfs (holding upper/ and work/).
fn tmpfs_of(f: &Fixture, c: &LinuxContainer) -> PathBuf {
    f.backend.root(c).parent().unwrap().join("tmp")
}

/// Every path in the container's upper layer, sorted.
fn upper_tree(f: &Fixture, c: &LinuxContainer) -> Vec<String> {
    let upper = tmpfs_of(f, c).join("upper");
    let mut out = Vec::new();
    let mut todo = vec![upper.clone()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(&upper).unwrap().display().to_string());
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                todo.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The mount's unique id (statx STATX_MNT_ID_UNIQUE, Linux 6.8), else its device.
fn mount_id(path: &Path) -> u64 {
    const STATX_MNT_ID_UNIQUE: u32 = 0x4000;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statx(2) with a NUL-terminated path writes one statx struct into `st`.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let r = unsafe { libc::statx(libc::AT_FDCWD, c.as_ptr(), 0, STATX_MNT_ID_UNIQUE, &mut st) };
    assert_eq!(r, 0, "statx {}", path.display());
    if st.stx_mask & STATX_MNT_ID_UNIQUE != 0 {
        st.stx_mnt_id
    } else {
        std::fs::metadata(path).unwrap().dev()
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
}

fn set_xattr(path: &Path, name: &str) -> std::io::Result<()> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: lsetxattr(2) with NUL-terminated strings and a 1-byte value.
    let r = unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), b"1".as_ptr().cast(), 1, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn has_xattr(path: &Path, name: &str) -> bool {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: lgetxattr(2) with NUL-terminated strings, size 0: asks for the length only.
    unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}
