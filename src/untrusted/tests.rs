//! Hostile-input tests: every case must stay inside the root or be refused.
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::*;

/// Builds a tar entry by hand so hostile names (`..`, absolute) get through: the tar
/// crate's own builder refuses them, a hostile client's does not.
fn raw_entry(
    b: &mut tar::Builder<Vec<u8>>,
    path: &[u8],
    kind: tar::EntryType,
    mode: u32,
    data: &[u8],
    link: Option<&[u8]>,
) {
    let mut h = tar::Header::new_gnu();
    {
        let name = &mut h.as_old_mut().name;
        name.fill(0);
        name[..path.len()].copy_from_slice(path);
    }
    if let Some(l) = link {
        let ln = &mut h.as_old_mut().linkname;
        ln.fill(0);
        ln[..l.len()].copy_from_slice(l);
    }
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: std::path::PathBuf,
    outside: std::path::PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    fs::create_dir(&root).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"host secret").unwrap();
    Fixture {
        _tmp: tmp,
        root,
        outside,
    }
}

fn unpack(
    f: &Fixture,
    build: impl FnOnce(&mut tar::Builder<Vec<u8>>),
) -> Result<UnpackStats, UnpackError> {
    unpack_with(f, &UnpackLimits::default(), build)
}

fn unpack_with(
    f: &Fixture,
    limits: &UnpackLimits,
    build: impl FnOnce(&mut tar::Builder<Vec<u8>>),
) -> Result<UnpackStats, UnpackError> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    let data = b.into_inner().unwrap();
    let root = RootDir::open(&f.root).unwrap();
    unpack_tar(&mut data.as_slice(), &root, limits, None)
}

fn outside_untouched(f: &Fixture) {
    let names: Vec<_> = fs::read_dir(&f.outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("secret")],
        "outside dir changed"
    );
    assert_eq!(fs::read(f.outside.join("secret")).unwrap(), b"host secret");
    assert_eq!(fs::metadata(f.outside.join("secret")).unwrap().nlink(), 1);
}

use tar::EntryType as T;

#[test]
fn lays_out_a_normal_archive_with_merged_usr_symlinks() {
    let f = fixture();
    unpack(&f, |b| {
        raw_entry(b, b"usr/", T::Directory, 0o755, b"", None);
        raw_entry(b, b"usr/lib/", T::Directory, 0o755, b"", None);
        raw_entry(b, b"lib", T::Symlink, 0o777, b"", Some(b"usr/lib"));
        raw_entry(b, b"lib/libc.so", T::Regular, 0o755, b"ELF", None);
        raw_entry(b, b"/usr/bin/cc", T::Regular, 0o755, b"cc", None);
        raw_entry(b, b"usr/bin/gcc", T::Link, 0o755, b"", Some(b"usr/bin/cc"));
    })
    .unwrap();
    assert_eq!(fs::read(f.root.join("usr/lib/libc.so")).unwrap(), b"ELF");
    assert_eq!(fs::read(f.root.join("usr/bin/cc")).unwrap(), b"cc");
    assert_eq!(fs::metadata(f.root.join("usr/bin/gcc")).unwrap().nlink(), 2);
    outside_untouched(&f);
}

#[test]
fn refuses_dotdot_entries() {
    let f = fixture();
    let err = unpack(&f, |b| {
        raw_entry(b, b"../outside/evil", T::Regular, 0o644, b"x", None)
    })
    .unwrap_err();
    assert!(err.to_string().contains("'..'"), "{err}");
    outside_untouched(&f);
}

#[test]
fn symlinked_parent_pointing_out_resolves_inside_the_root() {
    let f = fixture();
    unpack(&f, |b| {
        raw_entry(
            b,
            b"esc",
            T::Symlink,
            0o777,
            b"",
            Some(b"../../../../outside"),
        );
        raw_entry(
            b,
            b"abs",
            T::Symlink,
            0o777,
            b"",
            Some(f.outside.to_str().unwrap().as_bytes()),
        );
        raw_entry(b, b"esc/pwned", T::Regular, 0o644, b"x", None);
        raw_entry(b, b"abs/pwned2", T::Regular, 0o644, b"y", None);
    })
    .unwrap();
    outside_untouched(&f);
    // `..` clamps at the root: esc/pwned lands in <root>/outside/pwned.
    assert_eq!(fs::read(f.root.join("outside/pwned")).unwrap(), b"x");
    let abs_inside = f
        .root
        .join(f.outside.strip_prefix("/").unwrap())
        .join("pwned2");
    assert_eq!(fs::read(abs_inside).unwrap(), b"y");
}

#[test]
fn an_entry_replaces_a_symlink_instead_of_writing_through_it() {
    let f = fixture();
    let target = f.outside.join("secret");
    unpack(&f, |b| {
        raw_entry(
            b,
            b"link",
            T::Symlink,
            0o777,
            b"",
            Some(target.to_str().unwrap().as_bytes()),
        );
        raw_entry(b, b"link", T::Regular, 0o644, b"overwritten", None);
    })
    .unwrap();
    outside_untouched(&f);
    let md = fs::symlink_metadata(f.root.join("link")).unwrap();
    assert!(md.file_type().is_file());
}

#[test]
fn hard_links_cannot_reach_outside() {
    let f = fixture();
    let secret = f.outside.join("secret");
    let e1 = unpack(&f, |b| {
        raw_entry(
            b,
            b"h1",
            T::Link,
            0o644,
            b"",
            Some(secret.to_str().unwrap().as_bytes()),
        )
    })
    .unwrap_err();
    assert!(matches!(e1, UnpackError::Path { .. }), "{e1}");
    let e2 = unpack(&f, |b| {
        raw_entry(b, b"h2", T::Link, 0o644, b"", Some(b"../outside/secret"))
    })
    .unwrap_err();
    assert!(e2.to_string().contains("'..'"), "{e2}");
    let e3 = unpack(&f, |b| {
        raw_entry(
            b,
            b"d",
            T::Symlink,
            0o777,
            b"",
            Some(f.outside.to_str().unwrap().as_bytes()),
        );
        raw_entry(b, b"h3", T::Link, 0o644, b"", Some(b"d/secret"));
    })
    .unwrap_err();
    assert!(
        matches!(
            e3,
            UnpackError::Path {
                source: BeneathError::Missing { .. },
                ..
            }
        ),
        "{e3}"
    );
    outside_untouched(&f);
}

#[test]
fn devices_and_fifos_are_refused() {
    for (kind, name) in [
        (T::Char, "character device"),
        (T::Block, "block device"),
        (T::Fifo, "FIFO"),
    ] {
        let f = fixture();
        let err = unpack(&f, |b| raw_entry(b, b"dev/x", kind, 0o666, b"", None)).unwrap_err();
        assert!(
            matches!(err, UnpackError::Unsupported { kind: k, .. } if k == name),
            "{err}"
        );
        assert!(!f.root.join("dev/x").exists());
    }
}

#[test]
fn setuid_setgid_and_sticky_bits_are_dropped() {
    let f = fixture();
    unpack(&f, |b| {
        raw_entry(b, b"suid", T::Regular, 0o6755, b"x", None);
        raw_entry(b, b"sticky/", T::Directory, 0o1777, b"", None);
    })
    .unwrap();
    assert_eq!(
        fs::metadata(f.root.join("suid"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o755
    );
    assert_eq!(
        fs::metadata(f.root.join("sticky"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o777
    );
}

#[test]
fn size_and_count_limits_stop_a_bomb() {
    let f = fixture();
    let limits = UnpackLimits {
        max_bytes: 1000,
        max_entries: 10,
    };
    let big = vec![0u8; 4096];
    let err = unpack_with(&f, &limits, |b| {
        raw_entry(b, b"big", T::Regular, 0o644, &big, None)
    })
    .unwrap_err();
    assert!(
        matches!(err, UnpackError::TooManyBytes { limit: 1000 }),
        "{err}"
    );
    assert!(
        !f.root.join("big").exists(),
        "an over-limit file must not be written at all"
    );
    let err = unpack_with(&f, &limits, |b| {
        for i in 0..20 {
            raw_entry(b, format!("f{i}").as_bytes(), T::Regular, 0o644, b"", None);
        }
    })
    .unwrap_err();
    assert!(
        matches!(err, UnpackError::TooManyEntries { limit: 10 }),
        "{err}"
    );

    // A real gzip bomb: 64 MiB of zeros compress to ~64 KiB.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(64 << 20);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "bomb", std::io::repeat(0).take(64 << 20))
        .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&b.into_inner().unwrap()).unwrap();
    let gz = gz.finish().unwrap();
    assert!(gz.len() < 1 << 20);
    let root = RootDir::open(&f.root).unwrap();
    let err = unpack_tar_gz(
        &mut gz.as_slice(),
        &root,
        &UnpackLimits {
            max_bytes: 1 << 20,
            max_entries: 10,
        },
    )
    .unwrap_err();
    assert!(matches!(err, UnpackError::TooManyBytes { .. }), "{err}");
}

use std::io::Read as _;

#[test]
fn corrupt_and_truncated_archives_are_clear_errors() {
    let f = fixture();
    let root = RootDir::open(&f.root).unwrap();
    let err = unpack_tar_gz(
        &mut &b"not gzip at all"[..],
        &root,
        &UnpackLimits::default(),
    )
    .unwrap_err();
    assert!(matches!(err, UnpackError::Corrupt(_)), "{err}");

    let mut b = tar::Builder::new(Vec::new());
    raw_entry(&mut b, b"file", T::Regular, 0o644, &[7u8; 5000], None);
    let data = b.into_inner().unwrap();
    let err = unpack_tar(&mut &data[..1500], &root, &UnpackLimits::default(), None).unwrap_err();
    assert!(matches!(err, UnpackError::Corrupt(_)), "{err}");
}

#[test]
fn long_and_non_utf8_names() {
    let f = fixture();
    let long = vec![b'a'; 300];
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    // GNU long-name extension carries the 300-byte component.
    b.append_data(&mut h, std::str::from_utf8(&long).unwrap(), &b"x"[..])
        .unwrap();
    let data = b.into_inner().unwrap();
    let root = RootDir::open(&f.root).unwrap();
    let err = unpack_tar(&mut data.as_slice(), &root, &UnpackLimits::default(), None).unwrap_err();
    assert!(err.to_string().contains("255"), "{err}");

    unpack(&f, |b| {
        raw_entry(b, b"caf\xe9.c", T::Regular, 0o644, b"x", None)
    })
    .unwrap();
    use std::os::unix::ffi::OsStrExt;
    assert!(f
        .root
        .join(std::ffi::OsStr::from_bytes(b"caf\xe9.c"))
        .exists());
}

#[test]
fn reading_outputs_never_leaves_the_root_or_hangs() {
    let f = fixture();
    let r = &f.root;
    fs::create_dir_all(r.join("work/sub")).unwrap();
    fs::write(r.join("work/a.o"), b"object").unwrap();
    std::os::unix::fs::symlink(f.outside.join("secret"), r.join("work/link.o")).unwrap();
    std::os::unix::fs::symlink(&f.outside, r.join("work/outdir")).unwrap();
    std::os::unix::fs::symlink("../../../..", r.join("work/up")).unwrap();
    nix::unistd::mkfifo(
        &r.join("work/fifo.o"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    fs::write(r.join("work/big.o"), vec![1u8; 2048]).unwrap();
    let root = RootDir::open(r).unwrap();

    assert_eq!(
        read_file_beneath(&root, "/work/a.o", 100).unwrap(),
        b"object"
    );
    assert_eq!(
        read_file_beneath(&root, "work/up/work/a.o", 100).unwrap(),
        b"object"
    );
    type Expect = fn(&BeneathError) -> bool;
    let cases: Vec<(&str, Expect)> = vec![
        ("work/link.o", |e| {
            matches!(
                e,
                BeneathError::NotRegular {
                    kind: "symbolic link",
                    ..
                }
            )
        }),
        ("work/outdir/secret", |e| {
            matches!(e, BeneathError::Missing { .. })
        }),
        ("work/fifo.o", |e| {
            matches!(e, BeneathError::NotRegular { kind: "FIFO", .. })
        }),
        ("work/sub", |e| {
            matches!(
                e,
                BeneathError::NotRegular {
                    kind: "directory",
                    ..
                }
            )
        }),
        ("work/big.o", |e| {
            matches!(
                e,
                BeneathError::TooLarge {
                    size: 2048,
                    limit: 1000,
                    ..
                }
            )
        }),
        ("work/../../outside/secret", |e| {
            matches!(e, BeneathError::BadPath { .. })
        }),
        ("work/missing.o", |e| {
            matches!(e, BeneathError::Missing { .. })
        }),
        ("/", |e| matches!(e, BeneathError::BadPath { .. })),
    ];
    for (path, ok) in cases {
        let err = read_file_beneath(&root, path, 1000).unwrap_err();
        assert!(ok(&err), "{path}: unexpected {err:?}");
    }
}

#[test]
fn make_dirs_gives_the_build_user_its_directories() {
    let f = fixture();
    let root = RootDir::open(&f.root).unwrap();
    let me = crate::backend::BuildUser {
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
    };
    make_dirs_beneath(&root, "/work/obj/x", Some(me)).unwrap();
    assert!(f.root.join("work/obj/x").is_dir());
    assert_eq!(
        fs::metadata(f.root.join("work/obj/x")).unwrap().uid(),
        me.uid
    );
    let err = make_dirs_beneath(&root, "/work/../..", None).unwrap_err();
    assert!(matches!(err, BeneathError::BadPath { .. }));
    let _ = Path::new("/");
}

/// Root is needed to give files to another user; say so, and fail under CI.
fn skip_unless_root(what: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return false;
    }
    assert!(
        std::env::var_os("JAILBUILDER_CI").is_none(),
        "{what} needs root (JAILBUILDER_CI=1 forbids skipping)"
    );
    println!("SKIP({what}): needs root to chown");
    true
}

#[test]
fn inputs_are_given_to_the_build_user_with_their_modes() {
    if skip_unless_root("unpack owner") {
        return;
    }
    let f = fixture();
    let secret = f.outside.join("secret");
    let user = crate::backend::BuildUser {
        uid: 0x7000_0003,
        gid: 0x7000_0005,
    };
    let mut b = tar::Builder::new(Vec::new());
    raw_entry(&mut b, b"src/", T::Directory, 0o700, b"", None);
    raw_entry(
        &mut b,
        b"src/main.rs",
        T::Regular,
        0o600,
        b"fn main() {}",
        None,
    );
    raw_entry(
        &mut b,
        b"deps/libdep.rmeta",
        T::Regular,
        0o640,
        b"rmeta",
        None,
    );
    raw_entry(&mut b, b"bin/tool", T::Regular, 0o4755, b"#!", None);
    let target = secret.as_os_str().as_encoded_bytes();
    raw_entry(&mut b, b"escape", T::Symlink, 0o777, b"", Some(target));
    raw_entry(
        &mut b,
        b"main.rs",
        T::Link,
        0o600,
        b"",
        Some(b"src/main.rs"),
    );
    let data = b.into_inner().unwrap();
    let root = RootDir::open(&f.root).unwrap();
    unpack_tar(
        &mut data.as_slice(),
        &root,
        &UnpackLimits::default(),
        Some(user),
    )
    .unwrap();

    let meta = |p: &str| fs::symlink_metadata(f.root.join(p)).unwrap();
    for (path, mode) in [
        ("src", 0o700),
        ("src/main.rs", 0o600),
        ("deps", 0o755), // made for the entry below it
        ("deps/libdep.rmeta", 0o640),
        ("bin/tool", 0o755), // setuid dropped
        ("main.rs", 0o600),
    ] {
        let m = meta(path);
        assert_eq!((m.uid(), m.gid()), (user.uid, user.gid), "{path}");
        assert_eq!(m.mode() & 0o7777, mode, "{path}");
    }
    // The symlink itself is the user's; what it names (outside the root) is untouched.
    let m = meta("escape");
    assert!(m.file_type().is_symlink());
    assert_eq!((m.uid(), m.gid()), (user.uid, user.gid));
    let s = fs::metadata(&secret).unwrap();
    assert_eq!((s.uid(), s.gid()), (0, 0));
    outside_untouched(&f);
    // The root directory itself stays root's.
    assert_eq!(fs::metadata(&f.root).unwrap().uid(), 0);
}

#[test]
fn a_toolchain_stays_root_owned() {
    if skip_unless_root("unpack owner") {
        return;
    }
    let f = fixture();
    unpack(&f, |b| {
        raw_entry(
            b,
            b"usr/bin/cc",
            tar::EntryType::Regular,
            0o700,
            b"cc",
            None,
        );
    })
    .unwrap();
    for p in ["usr", "usr/bin", "usr/bin/cc"] {
        let m = fs::metadata(f.root.join(p)).unwrap();
        assert_eq!((m.uid(), m.gid()), (0, 0), "{p}");
    }
}
