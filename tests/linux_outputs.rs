//! Outputs are read back only if the build user could have read them (issue 10 item 6),
//! over the real Linux backend with a `base_dir` holding root-only files.

#![cfg(target_os = "linux")]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::*;
use jailbuilder::engine::BuildError;
use jailbuilder::untrusted::BeneathError;

#[test]
fn an_output_the_compile_could_not_read_never_leaves_the_sandbox() {
    require_root!();
    let base = tempfile::Builder::new()
        .prefix("jb-outputs-base")
        .tempdir()
        .unwrap();
    let b = base.path();
    let chmod = |p: &str, mode: u32| {
        fs::set_permissions(b.join(p), fs::Permissions::from_mode(mode)).unwrap()
    };
    fs::create_dir_all(b.join("etc/private")).unwrap();
    for (name, mode) in [
        ("etc/shadow", 0o600),
        ("etc/gshadow", 0o640),
        ("etc/private/key", 0o644),
        ("etc/motd", 0o644),
    ] {
        fs::write(b.join(name), format!("TOPSECRET {name}\n")).unwrap();
        chmod(name, mode);
    }
    chmod(".", 0o755);
    chmod("etc", 0o755);
    chmod("etc/private", 0o700);
    // All root:root (the test runs as root); the build user is 65534:65534.
    let f = fixture_with(|_| {}, |lc| lc.base_dir = Some(b.to_path_buf()));

    // The compile itself cannot read them...
    let o = f
        .sh("for p in /etc/shadow /etc/gshadow /etc/private/key; do cat $p; echo \"$p rc=$?\"; done; cat /etc/motd")
        .unwrap();
    let out = stdout(&o);
    for p in ["/etc/shadow", "/etc/gshadow", "/etc/private/key"] {
        assert!(out.contains(&format!("{p} rc=1")), "{p}: {out}");
    }
    assert!(out.contains("TOPSECRET etc/motd"), "{out}");
    assert_eq!(out.matches("TOPSECRET").count(), 1, "{out}");
    assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));

    // ...so requesting them as outputs is a job error naming the path, never their bytes.
    for p in ["/etc/shadow", "/etc/gshadow", "/etc/private/key"] {
        let err = f
            .build(&tar(&[]), spec(&["true"]), &["/etc/motd", p])
            .unwrap_err();
        match &err {
            BuildError::Output {
                path,
                source: BeneathError::PermissionDenied { .. },
            } => assert_eq!(path, p),
            e => panic!("{p}: {e}"),
        }
        assert!(err.is_client_error(), "{err}");
        assert!(!format!("{err:?}").contains("TOPSECRET"), "{err:?}");
        eprintln!("{p}: refused: {err}");
    }

    // Files the compile could read come back: its own (whatever mode it gave them, as long
    // as it could read them itself) and the readable base file.
    let o = f
        .build(
            &tar(&[]),
            spec(&[
                "sh",
                "-c",
                "echo obj > /work/a.o && echo dep > /work/a.d && chmod 0400 /work/a.d",
            ]),
            &["a.o", "a.d", "/etc/motd"],
        )
        .unwrap();
    let got: Vec<(&str, &[u8])> = o
        .outputs
        .iter()
        .map(|o| (o.path.as_str(), o.data.as_slice()))
        .collect();
    assert_eq!(
        got,
        [
            ("a.o", &b"obj\n"[..]),
            ("a.d", b"dep\n"),
            ("/etc/motd", b"TOPSECRET etc/motd\n")
        ]
    );
    // One it made unreadable to itself is refused like the others.
    let err = f
        .build(
            &tar(&[]),
            spec(&["sh", "-c", "echo obj > /work/a.o && chmod 0 /work/a.o"]),
            &["a.o"],
        )
        .unwrap_err();
    assert!(
        matches!(
            &err,
            BuildError::Output {
                source: BeneathError::PermissionDenied { .. },
                ..
            }
        ),
        "{err}"
    );
    f.assert_serves();
}
