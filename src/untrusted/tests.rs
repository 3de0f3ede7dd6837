//! Hostile-input tests: every case must stay inside the root or be refused.
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::*;
use crate::test_support::skip_unless_root;

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
fn a_sandbox_device_in_inputs_is_left_to_the_sandbox() {
    // sccache packs `cc -c -x c /dev/null` as a character-device entry "dev/null" that
    // carries the preprocessed text as data: skipped, and the entries after it unpack.
    let f = fixture();
    let stats = unpack(&f, |b| {
        raw_entry(b, b"dev/null", T::Char, 0o666, b"# 0 \"/dev/null\"\n", None);
        raw_entry(b, b"/dev/zero", T::Char, 0o666, b"", None);
        raw_entry(b, b"work/a.c", T::Regular, 0o644, b"int x;", None);
    })
    .unwrap();
    assert_eq!(stats.entries, 3);
    assert!(
        !f.root.join("dev").exists(),
        "nothing made for the skipped nodes"
    );
    assert_eq!(fs::read(f.root.join("work/a.c")).unwrap(), b"int x;");
    // Any other device is refused, at /dev or elsewhere, and so is a block device at a
    // sandbox device's name.
    for (path, kind) in [
        (&b"dev/mem"[..], T::Char),
        (b"work/null", T::Char),
        (b"dev/sub/null", T::Char),
        (b"dev/null", T::Block),
    ] {
        let f = fixture();
        let err = unpack(&f, |b| raw_entry(b, path, kind, 0o666, b"", None)).unwrap_err();
        assert!(matches!(err, UnpackError::Unsupported { .. }), "{err}");
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

/// Counts the bytes taken from an endless stream of `a`s that follows `head`.
struct Endless {
    head: Vec<u8>,
    served: u64,
}

impl std::io::Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let at = self.served as usize;
        let n = if at < self.head.len() {
            let n = buf.len().min(self.head.len() - at);
            buf[..n].copy_from_slice(&self.head[at..at + n]);
            n
        } else {
            buf.fill(b'a');
            buf.len()
        };
        self.served += n as u64;
        Ok(n)
    }
}

#[test]
fn an_oversized_long_name_is_refused_before_it_is_read_into_memory() {
    // tar 0.4 reads a GNU long name (and long link, pax header) whole into a Vec before it
    // yields the entry: a header claiming 1 GiB made the server allocate 1 GiB per job.
    let f = fixture();
    let root = RootDir::open(&f.root).unwrap();
    for ty in [T::GNULongName, T::GNULongLink, T::XHeader] {
        let mut h = tar::Header::new_gnu();
        h.set_path("././@LongLink").unwrap();
        h.set_entry_type(ty);
        h.set_size(1 << 30);
        h.set_cksum();
        let mut stream = Endless {
            head: h.as_bytes().to_vec(),
            served: 0,
        };
        let err = unpack_tar(&mut stream, &root, &UnpackLimits::default(), None).unwrap_err();
        assert!(matches!(err, UnpackError::ExtensionTooLarge(_)), "{err}");
        assert!(err.is_archive_fault());
        assert!(err.to_string().contains("1073741824 bytes"), "{err}");
        // Refused at the header: not even the first 64 KiB of the name were taken.
        assert!(
            stream.served < MAX_EXTENSION_BYTES,
            "{ty:?}: read {}",
            stream.served
        );
    }
    outside_untouched(&f);
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
    // `..` as the sandbox applies it: lexically after a directory, after the symlink's
    // target after a symlink (`up` -> the root), never above the root.
    assert_eq!(
        read_file_beneath(&root, "/work/sub/../a.o", 100).unwrap(),
        b"object"
    );
    assert_eq!(
        read_file_beneath(&root, "work/up/../../work/a.o", 100).unwrap(),
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
        // `..` stops at the root: the root's own /outside, which does not exist.
        ("work/../../outside/secret", |e| {
            matches!(e, BeneathError::Missing { .. })
        }),
        ("work/sub/..", |e| matches!(e, BeneathError::BadPath { .. })),
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
    // An existing directory is handed over only if the user could already read and
    // search it: never one that would open up what it could not see.
    let other = crate::backend::BuildUser {
        uid: me.uid + 1,
        gid: me.gid + 1,
    };
    fs::create_dir_all(f.root.join("open")).unwrap();
    fs::create_dir_all(f.root.join("closed")).unwrap();
    fs::set_permissions(f.root.join("open"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(f.root.join("closed"), fs::Permissions::from_mode(0o700)).unwrap();
    if nix::unistd::geteuid().is_root() {
        make_dirs_beneath(&root, "/open", Some(other)).unwrap();
        assert_eq!(fs::metadata(f.root.join("open")).unwrap().uid(), other.uid);
        make_dirs_beneath(&root, "/closed", Some(other)).unwrap();
        assert_eq!(fs::metadata(f.root.join("closed")).unwrap().uid(), me.uid);
    } else {
        assert_ne!(
            std::env::var("JAILBUILDER_CI").as_deref(),
            Ok("1"),
            "JAILBUILDER_CI=1 but handing directories to another user needs root"
        );
        eprintln!("SKIP (part): handing directories to another user needs root");
    }
    // `..` is applied as the sandbox would (make's `-o ../obj/a.o` from `src/`), and a path
    // that comes back to the root never hands the root over.
    make_dirs_beneath(&root, "/work/src/../obj/y", Some(me)).unwrap();
    assert!(f.root.join("work/src").is_dir() && f.root.join("work/obj/y").is_dir());
    let root_owner = fs::metadata(&f.root).unwrap().uid();
    if nix::unistd::geteuid().is_root() {
        make_dirs_beneath(&root, "/work/../..", Some(other)).unwrap();
        make_dirs_beneath(&root, "/work/..", Some(other)).unwrap();
        assert_eq!(fs::metadata(&f.root).unwrap().uid(), root_owner);
    }
    assert!(make_dirs_beneath(&root, "/", None).is_err());
    let _ = Path::new("/");
}

#[test]
fn the_build_user_access_rule_is_owner_else_group_else_other() {
    use beneath::{may_access, MAY_READ as R, MAY_SEARCH as X};
    let u = crate::backend::BuildUser {
        uid: 1000,
        gid: 2000,
    };
    // Owner: the owner bits alone decide, even when group or other would grant more.
    assert!(may_access(u, 0o400, 1000, 0, R));
    assert!(may_access(u, 0o600, 1000, 2000, R));
    assert!(!may_access(u, 0o044, 1000, 2000, R));
    // Group (the build gid; there are no supplementary groups): the group bits alone.
    assert!(may_access(u, 0o640, 0, 2000, R));
    assert!(!may_access(u, 0o604, 0, 2000, R));
    // Other: a root-owned 0600 or 0640 root:root file is unreadable.
    assert!(may_access(u, 0o644, 0, 0, R));
    assert!(!may_access(u, 0o600, 0, 0, R));
    assert!(!may_access(u, 0o640, 0, 0, R));
    assert!(!may_access(u, 0o640, 0, 3000, R));
    // 0000: nothing for anyone but root (whom callers skip).
    for (owner, group) in [(1000, 2000), (0, 2000), (0, 0)] {
        assert!(!may_access(u, 0o000, owner, group, R));
        assert!(!may_access(u, 0o000, owner, group, X));
    }
    // A directory without x cannot be traversed, with r or not; x alone suffices.
    assert!(!may_access(u, libc::S_IFDIR | 0o754, 0, 0, X));
    assert!(!may_access(u, libc::S_IFDIR | 0o770, 0, 0, X));
    assert!(!may_access(u, libc::S_IFDIR | 0o760, 0, 2000, X));
    assert!(!may_access(u, libc::S_IFDIR | 0o655, 1000, 0, X));
    assert!(may_access(u, libc::S_IFDIR | 0o711, 0, 0, X));
    assert!(may_access(u, libc::S_IFDIR | 0o710, 0, 2000, X));
    // Both wanted: both needed. The type and setuid bits never grant anything.
    assert!(!may_access(u, 0o711, 0, 0, R | X));
    assert!(!may_access(
        u,
        libc::S_IFREG | libc::S_ISUID | 0o600,
        0,
        0,
        R
    ));
    assert!(may_access(u, libc::S_IFREG | 0o644, 0, 0, R));
}

#[test]
fn outputs_are_opened_only_if_the_build_user_could_read_them() {
    use crate::backend::BuildUser;
    // The host side reads as root (as the engine does): a non-root test process could not
    // open the 0000 file or traverse the 0644 directory at all.
    if !nix::unistd::geteuid().is_root() {
        assert_ne!(
            std::env::var("JAILBUILDER_CI").as_deref(),
            Ok("1"),
            "JAILBUILDER_CI=1 but this test needs root"
        );
        eprintln!("SKIP: needs root (reads files whatever their mode, as the engine does)");
        return;
    }
    let f = fixture();
    let r = &f.root;
    let set = |p: &str, mode: u32| {
        fs::set_permissions(r.join(p), fs::Permissions::from_mode(mode)).unwrap()
    };
    fs::create_dir_all(r.join("work/closed")).unwrap();
    fs::create_dir_all(r.join("work/nox")).unwrap();
    for (name, mode) in [
        ("work/o600", 0o600),
        ("work/o640", 0o640),
        ("work/o644", 0o644),
        ("work/o000", 0o000),
        ("work/closed/a.o", 0o644),
        ("work/nox/a.o", 0o644),
    ] {
        fs::write(r.join(name), name).unwrap();
        set(name, mode);
    }
    set("work/closed", 0o700);
    set("work/nox", 0o644);
    std::os::unix::fs::symlink("closed", r.join("work/via-link")).unwrap();
    let root = RootDir::open(r).unwrap();
    // Everything here is owned by the test's own uid and gid (what it is: root or not).
    let md = fs::metadata(r.join("work/o600")).unwrap();
    let (uid, gid) = (md.uid(), md.gid());
    let owner = BuildUser { uid, gid: gid + 1 };
    let group = BuildUser { uid: uid + 1, gid };
    let other = BuildUser {
        uid: uid + 1,
        gid: gid + 1,
    };
    let open = |p: &str, u: Option<BuildUser>| open_file_beneath(&root, p, 1 << 20, u);
    let denied = |p: &str, u: BuildUser, what: &str| match open(p, Some(u)) {
        Err(BeneathError::PermissionDenied { path, denied }) => {
            assert_eq!(path, p);
            assert!(denied.contains(what), "{p}: {denied}");
        }
        other => panic!("{p} as {u:?}: {other:?}"),
    };
    for p in ["work/o600", "work/o640", "work/o644"] {
        assert!(open(p, Some(owner)).is_ok(), "{p}");
    }
    denied("work/o600", group, "read");
    assert!(open("work/o640", Some(group)).is_ok());
    denied("work/o600", other, "read");
    denied("work/o640", other, "read");
    assert!(open("work/o644", Some(other)).is_ok());
    for u in [owner, group, other] {
        denied("work/o000", u, "read");
    }
    // A readable file in a directory the user cannot search, directly or through a
    // symlinked parent, or in a directory with r but no x.
    assert!(open("work/closed/a.o", Some(owner)).is_ok());
    for u in [group, other] {
        denied("work/closed/a.o", u, "search");
        denied("work/via-link/a.o", u, "search");
    }
    for u in [owner, group, other] {
        denied("work/nox/a.o", u, "search");
    }
    // Without a reader (a root build user) nothing is checked; the content is the file's.
    use std::io::Read as _;
    let (mut file, size) = open("work/o000", None).unwrap();
    let mut data = Vec::new();
    file.read_to_end(&mut data).unwrap();
    assert_eq!((data.as_slice(), size), (&b"work/o000"[..], 9));
    // The root itself must be searchable too.
    set(".", 0o700);
    denied("work/o644", other, "search");
    assert!(open("work/o644", Some(owner)).is_ok());
}

#[test]
fn inputs_are_given_to_the_build_user_with_their_modes() {
    if skip_unless_root("unpack owner", "to chown") {
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
    if skip_unless_root("unpack owner", "to chown") {
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

#[test]
fn an_immutable_file_under_the_archive_is_replaced() {
    // FreeBSD's base installs libc.so.7 `schg`: unlink gives EPERM until the flag is
    // cleared (bsd.lib.mk PRECIOUSLIB). Linux's `chattr +i` is the same rule; the unpack
    // clears the flag and replaces the file.
    if skip_unless_root("immutable flag", "to set the immutable flag") {
        return;
    }
    let f = fixture();
    fs::create_dir_all(f.root.join("lib")).unwrap();
    let lib = f.root.join("lib/libc.so.7");
    fs::write(&lib, b"base libc").unwrap();
    let set = std::process::Command::new("chattr")
        .arg("+i")
        .arg(&lib)
        .output();
    match set {
        Ok(o) if o.status.success() => {}
        other => {
            assert!(
                std::env::var_os("JAILBUILDER_CI").is_none(),
                "chattr +i failed under CI: {other:?}"
            );
            println!("SKIP(immutable flag): chattr +i not possible here: {other:?}");
            return;
        }
    }
    assert!(fs::remove_file(&lib).is_err(), "the flag did not take");
    let res = unpack(&f, |b| {
        raw_entry(
            b,
            b"lib/libc.so.7",
            T::Regular,
            0o444,
            b"toolchain libc",
            None,
        )
    });
    let content = fs::read(&lib).unwrap();
    // Leave nothing immutable behind for the fixture's clean-up, whatever happened.
    let _ = std::process::Command::new("chattr")
        .arg("-i")
        .arg(&lib)
        .status();
    res.unwrap();
    assert_eq!(content, b"toolchain libc");
    outside_untouched(&f);
}
