//! Hostile input through the whole engine and the real Linux backend: every archive,
//! output and command a client can send is laid out harmlessly inside the sandbox root or
//! refused with a clear job error; nothing outside the root is created, changed or read
//! (a host marker directory is checked after each case), and the engine keeps serving.
//! The untrusted layer's unit tests cover the same cases one level down; these prove the
//! wiring. Needs root and busybox-static (else SKIP, or failure under JAILBUILDER_CI=1).
#![cfg(target_os = "linux")]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::*;
use jailbuilder::engine::BuildError;
use jailbuilder::exec::CommandSpec;

const SECRET: &[u8] = b"TOPSECRET-host-only";

/// A host directory the archives and outputs aim at, with one secret file.
struct Marker {
    dir: PathBuf,
}

impl Marker {
    fn new() -> Marker {
        let dir = tempfile::Builder::new()
            .prefix("jb-hostile-marker")
            .tempdir()
            .unwrap()
            .keep();
        std::fs::write(dir.join("secret"), SECRET).unwrap();
        Marker { dir }
    }

    fn path(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    fn secret(&self) -> String {
        format!("{}/secret", self.path())
    }

    /// Fails the test if anything in the marker directory changed.
    fn check(&self, case: &str) {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec!["secret"],
            "{case}: the marker directory changed"
        );
        let md = std::fs::symlink_metadata(self.dir.join("secret")).unwrap();
        assert!(md.is_file(), "{case}");
        assert_eq!(md.nlink(), 1, "{case}: a hard link to the secret was made");
        assert_eq!(md.mode() & 0o7777, 0o644 & !umask(), "{case}: mode changed");
        assert_eq!(
            std::fs::read(self.dir.join("secret")).unwrap(),
            SECRET,
            "{case}"
        );
        assert!(!Path::new("/evil-jb-hostile").exists(), "{case}");
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn short(s: &str) -> String {
    s.chars().take(300).collect()
}

fn umask() -> u32 {
    // SAFETY: umask(2) always succeeds; it is set back at once.
    unsafe {
        let m = libc::umask(0o022);
        libc::umask(m);
        m
    }
}

/// The case's outcome must be a refusal naming the client's fault.
fn refused(case: &str, r: Result<jailbuilder::engine::BuildOutcome, BuildError>) -> String {
    let e = match r {
        Ok(o) => panic!("{case}: accepted: {o:?}"),
        Err(e) => e,
    };
    assert!(e.is_client_error(), "{case}: not a job error: {e}");
    let msg = e.to_string();
    assert!(!msg.is_empty());
    eprintln!("{case}: refused: {}", short(&msg));
    msg
}

#[test]
fn hostile_toolchain_archives_are_laid_out_inside_or_refused() {
    require_root!();
    let f = fixture();
    let m = Marker::new();
    let mp = m.path().trim_start_matches('/').to_string();
    let up = "../../../../../../../..";
    let big = vec![0u8; 80 << 20];
    let cases: Vec<(&str, Vec<Vec<u8>>, bool)> = vec![
        // (case, extra entries, accepted?)
        (
            "dotdot",
            vec![file(&format!("{up}/{mp}/evil"), 0o644, b"x")],
            false,
        ),
        (
            "absolute",
            vec![file(&format!("/{mp}/evil"), 0o644, b"inside")],
            true,
        ),
        (
            "absolute-root",
            vec![file("/evil-jb-hostile", 0o644, b"x")],
            true,
        ),
        (
            "symlink-then-write-through",
            vec![
                symlink("work/esc", m.path()),
                file("work/esc/evil", 0o644, b"x"),
            ],
            true,
        ),
        (
            "relative-symlink-then-write-through",
            vec![
                symlink("work/esc2", &format!("{up}/{mp}")),
                file("work/esc2/evil", 0o644, b"x"),
            ],
            true,
        ),
        (
            "symlink-then-overwrite",
            vec![
                symlink("work/s", &m.secret()),
                file("work/s", 0o644, b"overwritten"),
            ],
            true,
        ),
        (
            "hardlink-out-absolute",
            vec![raw_entry(
                b"work/hl",
                b'1',
                m.secret().as_bytes(),
                0o644,
                b"",
            )],
            false,
        ),
        (
            "hardlink-out-dotdot",
            vec![raw_entry(
                b"work/hl",
                b'1',
                format!("{up}/{mp}/secret").as_bytes(),
                0o644,
                b"",
            )],
            false,
        ),
        (
            "char-device",
            vec![raw_entry(b"work/null", b'3', b"", 0o666, b"")],
            false,
        ),
        (
            "block-device",
            vec![raw_entry(b"work/sda", b'4', b"", 0o666, b"")],
            false,
        ),
        (
            "fifo",
            vec![raw_entry(b"work/fifo", b'6', b"", 0o666, b"")],
            false,
        ),
        ("gzip-bomb", vec![file("work/zeros", 0o644, &big)], false),
        (
            "very-long-name",
            vec![file(&format!("work/{}", "a".repeat(5000)), 0o644, b"x")],
            false,
        ),
        (
            "long-component",
            vec![file(&format!("work/{}", "b".repeat(300)), 0o644, b"x")],
            false,
        ),
        (
            "non-utf8-name",
            vec![raw_entry(
                b"work/\xff\xfe-name.c",
                b'0',
                b"",
                0o644,
                b"int x;",
            )],
            true,
        ),
    ];
    for (i, (case, extra, accepted)) in cases.into_iter().enumerate() {
        let tc = toolchain_with(&extra);
        let id = format!("hostile-tc-{i}");
        let r = f.build_tc(&id, &tc, &tar(&[]), spec(&["true"]), &[]);
        if accepted {
            let o = r.unwrap_or_else(|e| panic!("{case}: {e}"));
            assert!(o.exec.status.success(), "{case}: {o:?}");
        } else {
            let msg = refused(case, r);
            let e = f
                .build_tc(&id, &tc, &tar(&[]), spec(&["true"]), &[])
                .unwrap_err();
            assert!(matches!(e, BuildError::Toolchain { .. }), "{case}: {e}");
            assert!(
                msg.contains(&id),
                "{case}: the error names the toolchain: {msg}"
            );
        }
        m.check(case);
        f.assert_serves();
    }

    // What the accepted ones laid out is inside the root, as the sandbox sees it.
    let tc = toolchain_with(&[
        file(&format!("/{mp}/evil"), 0o644, b"inside"),
        symlink("work/esc", m.path()),
        file("work/esc/evil2", 0o644, b"inside2"),
        file("bin/suid", 0o4755, b"#!/bin/sh\n"),
        file("bin/sgid", 0o2755, b"#!/bin/sh\n"),
    ]);
    let o = f
        .build_tc(
            "hostile-tc-layout",
            &tc,
            &tar(&[]),
            spec(&[
                "sh",
                "-c",
                &format!(
                    "cat {0}/evil; echo; cat {0}/evil2; echo; stat -c %a /bin/suid /bin/sgid",
                    m.path()
                ),
            ]),
            &[],
        )
        .unwrap();
    assert_eq!(stdout(&o), "inside\ninside2\n755\n755\n", "{o:?}");
    m.check("layout");

    // Truncated and corrupt archives.
    let whole = toolchain();
    for (case, tc) in [
        ("truncated-gzip", whole[..whole.len() / 2].to_vec()),
        ("not-gzip", b"this is not a gzip stream".to_vec()),
        ("gzip-of-garbage", gz(&[0x5a; 4096])),
        ("truncated-tar", gz(&tar(&busybox_entries())[..600_000])),
        ("empty", Vec::new()),
    ] {
        let r = f.build_tc(case, &tc, &tar(&[]), spec(&["true"]), &[]);
        if case == "empty" {
            // An empty gzip stream is an empty toolchain: no /bin/busybox to run.
            let e = r.unwrap_err();
            assert!(e.is_client_error(), "{case}: {e}");
        } else {
            let msg = refused(case, r);
            assert!(msg.contains("unusable"), "{case}: {msg}");
        }
        m.check(case);
        f.assert_serves();
    }
    assert_eq!(f.engine.stats().builds_ok, f.engine.stats().builds_ok);
}

#[test]
fn hostile_inputs_archives_are_laid_out_inside_or_refused() {
    require_root!();
    let f = fixture();
    let m = Marker::new();
    let mp = m.path().trim_start_matches('/').to_string();
    let up = "../../../../../../../..";
    let cases: Vec<(&str, Vec<Vec<u8>>, bool)> = vec![
        (
            "dotdot",
            vec![file(&format!("{up}/{mp}/evil"), 0o644, b"x")],
            false,
        ),
        (
            "absolute",
            vec![file(&format!("/{mp}/evil"), 0o644, b"x")],
            true,
        ),
        (
            "absolute-root",
            vec![file("/evil-jb-hostile", 0o644, b"x")],
            true,
        ),
        (
            "symlink-then-write-through",
            vec![
                symlink("work/esc", m.path()),
                file("work/esc/evil", 0o644, b"x"),
            ],
            true,
        ),
        (
            "symlink-to-dotdot-then-write-through",
            vec![
                symlink("work/esc2", &format!("{up}/{mp}")),
                file("work/esc2/evil", 0o644, b"x"),
            ],
            true,
        ),
        (
            "symlink-then-overwrite",
            vec![
                symlink("work/s", &m.secret()),
                file("work/s", 0o644, b"overwritten"),
            ],
            true,
        ),
        (
            "symlink-dir-then-mkdir-through",
            vec![symlink("work/d", m.path()), dir("work/d/sub", 0o755)],
            true,
        ),
        (
            "hardlink-out",
            vec![raw_entry(
                b"work/hl",
                b'1',
                m.secret().as_bytes(),
                0o644,
                b"",
            )],
            false,
        ),
        (
            "hardlink-via-symlink",
            vec![
                symlink("work/esc", m.path()),
                raw_entry(b"work/hl", b'1', b"work/esc/secret", 0o644, b""),
            ],
            false,
        ),
        (
            "char-device",
            vec![raw_entry(b"work/null", b'3', b"", 0o666, b"")],
            false,
        ),
        (
            "fifo",
            vec![raw_entry(b"work/fifo", b'6', b"", 0o666, b"")],
            false,
        ),
        (
            "declared-size-bomb",
            vec![header_only("work/huge", 100 << 20)],
            false,
        ),
        (
            "very-long-name",
            vec![file(&format!("work/{}", "a".repeat(5000)), 0o644, b"x")],
            false,
        ),
        (
            "non-utf8-name",
            vec![raw_entry(b"work/\xff\xfe.c", b'0', b"", 0o644, b"int x;")],
            true,
        ),
        (
            "truncated",
            vec![file("work/a.c", 0o644, &[b'x'; 4096])[..1024].to_vec()],
            false,
        ),
        ("garbage", vec![vec![0x5a; 2048]], false),
    ];
    for (case, entries, accepted) in cases {
        let inputs = if case == "truncated" {
            entries.concat() // no end blocks: the archive just stops
        } else {
            tar(&entries)
        };
        let r = f.build(&inputs, spec(&["true"]), &[]);
        if accepted {
            let o = r.unwrap_or_else(|e| panic!("{case}: {e}"));
            assert!(o.exec.status.success(), "{case}: {o:?}");
        } else {
            let msg = refused(case, r);
            assert!(msg.starts_with("inputs archive"), "{case}: {msg}");
        }
        m.check(case);
        f.assert_serves();
    }

    // Setuid bits are dropped; what was laid out is inside the root.
    let inputs = tar(&[
        file("work/suid", 0o4755, b"#!/bin/sh\n"),
        file(&format!("/{mp}/evil"), 0o644, b"inside"),
        raw_entry(b"work/\xff\xfe.c", b'0', b"", 0o644, b"int x;"),
    ]);
    let o = f
        .build(
            &inputs,
            spec(&[
                "sh",
                "-c",
                &format!(
                    "stat -c %a /work/suid; cat {}/evil; echo; ls /work | wc -l",
                    m.path()
                ),
            ]),
            &[],
        )
        .unwrap();
    assert_eq!(stdout(&o), "755\ninside\n2\n", "{o:?}");
    m.check("layout");
}

/// A header claiming `size` bytes, with no data after it.
fn header_only(name: &str, size: usize) -> Vec<u8> {
    let e = file(name, 0o644, &[]);
    let mut h = e[..512].to_vec();
    let s = format!("{size:011o}\0");
    h[124..136].copy_from_slice(s.as_bytes());
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

#[test]
fn hostile_outputs_never_return_a_byte_of_a_host_file() {
    require_root!();
    let f = fixture();
    let m = Marker::new();
    let secret = m.secret();
    let cases: Vec<(&str, String, String, bool)> = vec![
        // (case, script, output, refused before running?)
        // `..` resolves as in the sandbox, never above its root: the sandbox's own (missing)
        // file of that name, never the host's.
        (
            "dotdot",
            "true".into(),
            "../../../../../..".to_string() + &secret,
            false,
        ),
        (
            "dotdot-inside",
            "true".into(),
            "/work/../../etc/passwd".to_string(),
            false,
        ),
        ("dotdot-final", "true".into(), "/work/..".to_string(), true),
        ("nul", "true".into(), "a\0b".to_string(), true),
        ("empty", "true".into(), String::new(), true),
        (
            "symlink-to-host-file",
            format!("ln -s {secret} /work/out.o"),
            "out.o".into(),
            false,
        ),
        (
            "relative-symlink-to-host-file",
            format!("ln -s ../../../../../../../..{secret} /work/out.o"),
            "out.o".into(),
            false,
        ),
        (
            "symlinked-parent",
            format!("ln -s {} /work/sub", m.path()),
            "sub/secret".into(),
            false,
        ),
        ("directory", "mkdir /work/d.o".into(), "d.o".into(), false),
        ("fifo", "mkfifo /work/f.o".into(), "f.o".into(), false),
        ("device", "true".into(), "/dev/zero".into(), false),
        (
            "device-through-dotdot",
            "true".into(),
            "/work/../dev/zero".into(),
            false,
        ),
        (
            "larger-than-the-cap",
            "dd if=/dev/zero of=/work/big.o bs=1024 count=3072 2>/dev/null".into(),
            "big.o".into(),
            false,
        ),
    ];
    for (case, script, output, early) in cases {
        let start = std::time::Instant::now();
        let r = f.build(&tar(&[]), spec(&["sh", "-c", &script]), &[&output]);
        assert!(
            // A hang guard (a FIFO read would block for ever), not a speed bound.
            start.elapsed() < std::time::Duration::from_secs(60),
            "{case}: took {:?}",
            start.elapsed()
        );
        match r {
            Ok(o) => {
                // Allowed only as "missing": nothing came back.
                assert!(o.outputs.is_empty(), "{case}: returned {:?}", o.outputs);
            }
            Err(e) => {
                assert!(e.is_client_error(), "{case}: {e}");
                if early {
                    assert!(matches!(e, BuildError::OutputPath { .. }), "{case}: {e}");
                } else {
                    assert!(matches!(e, BuildError::Output { .. }), "{case}: {e}");
                }
                assert!(!e.to_string().contains("TOPSECRET"), "{case}: {e}");
                eprintln!("{case}: refused: {}", short(&e.to_string()));
            }
        }
        m.check(case);
        f.assert_serves();
    }
    // `-o /dev/null` (a probe's) is answered empty, whatever stands there.
    let o = f
        .build(
            &tar(&[]),
            spec(&["sh", "-c", "echo discarded > /dev/null"]),
            &["/dev/null"],
        )
        .unwrap();
    assert_eq!(o.outputs.len(), 1, "{:?}", o.outputs);
    assert!(o.outputs[0].data.is_empty(), "{:?}", o.outputs);
    // An absolute output names a path inside the sandbox, never the host's file of that name.
    let o = f
        .build(&tar(&[]), spec(&["true"]), &["/etc/hostname", &secret])
        .unwrap();
    assert!(o.outputs.is_empty(), "{:?}", o.outputs);
    // And a real output still comes back.
    let o = f
        .build(
            &tar(&[]),
            spec(&["sh", "-c", "echo obj > /work/a.o"]),
            &["a.o"],
        )
        .unwrap();
    assert_eq!(o.outputs.len(), 1);
    assert_eq!(o.outputs[0].data, b"obj\n");
}

#[test]
fn hostile_commands_are_clear_job_errors() {
    require_root!();
    let f = fixture();
    let base = spec(&["true"]);
    let cases: Vec<(&str, CommandSpec, &str)> = vec![
        (
            "env-key-with-equals",
            CommandSpec {
                env_vars: vec![("A=B".into(), "x".into())],
                ..base.clone()
            },
            "environment variable name",
        ),
        (
            "env-key-with-nul",
            CommandSpec {
                env_vars: vec![("A\0".into(), "x".into())],
                ..base.clone()
            },
            "NUL",
        ),
        (
            "env-value-with-nul",
            CommandSpec {
                env_vars: vec![("A".into(), "x\0y".into())],
                ..base.clone()
            },
            "NUL",
        ),
        (
            "empty-env-key",
            CommandSpec {
                env_vars: vec![(String::new(), "x".into())],
                ..base.clone()
            },
            "environment variable name",
        ),
        (
            "nul-in-argument",
            CommandSpec {
                arguments: vec!["a\0b".into()],
                ..base.clone()
            },
            "NUL",
        ),
        (
            "relative-executable",
            CommandSpec {
                executable: "busybox".into(),
                ..base.clone()
            },
            "not an absolute path",
        ),
        (
            "missing-executable",
            CommandSpec {
                executable: "/bin/no-such-compiler".into(),
                ..base.clone()
            },
            "could not start",
        ),
        (
            "executable-is-a-directory",
            CommandSpec {
                executable: "/bin".into(),
                ..base.clone()
            },
            "could not start",
        ),
        (
            "cwd-outside-root",
            CommandSpec {
                cwd: "/work/../../../etc".into(),
                ..base.clone()
            },
            "working directory",
        ),
        (
            "relative-cwd",
            CommandSpec {
                cwd: "work".into(),
                ..base.clone()
            },
            "working directory",
        ),
        (
            "cwd-is-a-file",
            CommandSpec {
                cwd: "/bin/busybox".into(),
                ..base.clone()
            },
            "busybox",
        ),
    ];
    for (case, cmd, want) in cases {
        let e = f.build(&tar(&[]), cmd, &[]).unwrap_err();
        assert!(e.is_client_error(), "{case}: {e}");
        assert!(e.to_string().contains(want), "{case}: {e}");
        eprintln!("{case}: refused: {}", short(&e.to_string()));
        f.assert_serves();
    }
    // Job errors never make the builder unhealthy, however many.
    assert!(f.engine.is_healthy());
}
