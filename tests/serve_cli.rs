//! `jailbuilder serve`'s command line as `sccache-dist server`'s (0.19.0,
//! `src/bin/sccache-dist/main.rs` and `cmdline/parse.rs`), through the binary: the exit
//! statuses (usage 2, configuration 1, server failure 2), JSON configuration files
//! (`.json`, as sccache's `try_read_config_file`) next to TOML, and `--syslog LEVEL`
//! (facility daemon, tag sccache-buildserver) to a Unix datagram socket bound here.
//!
//! The server never gets far: a state directory beneath /dev/null makes the sandbox
//! backend fail to open, the first step after the configuration is read. That needs
//! neither root nor the stock binaries.
#![cfg(feature = "sccache")]

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn serve(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jailbuilder"));
    cmd.arg("serve").args(args);
    for k in ["RUST_LOG", "SCCACHE_LOG", "JAILBUILDER_SYSLOG_SOCKET"] {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The same server file in TOML and in JSON (the `[builder]` section as an object),
/// whose backend cannot open.
const TOML: &str = "public_addr = \"127.0.0.1:10501\"\n\
    scheduler_url = \"http://127.0.0.1:10600\"\n\
    cache_dir = \"/dev/null/cache\"\n\
    [scheduler_auth]\ntype = \"token\"\ntoken = \"t\"\n\
    [builder]\nstate_dir = \"/dev/null/state\"\nmax_containers = 3\n";
const JSON: &str = r#"{
  "public_addr": "127.0.0.1:10501",
  "scheduler_url": "http://127.0.0.1:10600",
  "cache_dir": "/dev/null/cache",
  "scheduler_auth": { "type": "token", "token": "t" },
  "builder": { "state_dir": "/dev/null/state", "max_containers": 3 }
}"#;

#[test]
fn exit_statuses_are_sccache_dists() {
    let t = tempfile::tempdir().unwrap();
    let good = t.path().join("server.toml");
    std::fs::write(&good, TOML).unwrap();
    let good = good.to_str().unwrap();

    // Usage errors: clap's 2, as sccache-dist's.
    for args in [
        &[][..],
        &["--config", good, "--syslog", "loud"],
        &["--config", good, "--bogus"],
    ] {
        let out = serve(args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    let out = serve(&["--config", good, "--syslog", "loud"], &[]);
    assert!(stderr(&out).contains("'loud'"), "{}", stderr(&out));

    // The configuration cannot be read, parsed or validated: 1.
    let bad_key = t.path().join("bad.toml");
    std::fs::write(&bad_key, format!("{TOML}frobnicate = 1\n")).unwrap();
    let bad_value = t.path().join("bad-value.json");
    std::fs::write(
        &bad_value,
        JSON.replace("\"max_containers\": 3", "\"max_containers\": 0"),
    )
    .unwrap();
    let missing = t.path().join("missing.toml");
    for (path, says) in [
        (&bad_key, "frobnicate"),
        (&bad_value, "max_containers: must be at least 1"),
        (&missing, "missing.toml"),
    ] {
        let out = serve(&["--config", path.to_str().unwrap()], &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{}: {err}", path.display());
        assert!(
            err.starts_with("jailbuilder: ") && err.contains(says),
            "{err}"
        );
    }

    // Read, but the server fails (here: the sandbox backend): 2.
    let out = serve(&["--config", good], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("opening the sandbox backend"), "{err}");

    // --help says so.
    let help = serve(&["--help"], &[]);
    assert_eq!(help.status.code(), Some(0));
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("Exit status") && help.contains("--syslog <LEVEL>"),
        "{help}"
    );
}

#[test]
fn a_json_config_reads_as_the_same_toml() {
    let t = tempfile::tempdir().unwrap();
    let json = t.path().join("server.json");
    std::fs::write(&json, JSON).unwrap();
    // Past the configuration (2, not 1): the JSON file parsed and validated.
    let out = serve(&["--config", json.to_str().unwrap()], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("/dev/null/state"), "{err}");

    // JSON is chosen by the name, not sniffed: the same text named .toml is a TOML error.
    let named_toml = t.path().join("json.toml");
    std::fs::write(&named_toml, JSON).unwrap();
    let out = serve(&["--config", named_toml.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));

    // And an unknown key in JSON is refused by name, as in TOML.
    let unknown = t.path().join("unknown.json");
    std::fs::write(
        &unknown,
        JSON.replace(
            "\"max_containers\": 3",
            "\"max_containers\": 3, \"frobnicate\": 1",
        ),
    )
    .unwrap();
    let out = serve(&["--config", unknown.to_str().unwrap()], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("unknown field `frobnicate`"), "{err}");
}

/// Every datagram received within a short while of the last.
fn drain(sock: &UnixDatagram) -> Vec<String> {
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = sock.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    got
}

#[test]
fn syslog_gets_the_log_at_the_level_given() {
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("server.toml");
    std::fs::write(&cfg, TOML).unwrap();
    let cfg = cfg.to_str().unwrap();
    let path = t.path().join("log.sock");
    let sock = UnixDatagram::bind(&path).unwrap();

    // debug: the configuration line (serve's first log line) arrives, RFC 3164 framed:
    // <priority = facility daemon (3) * 8 + severity debug (7)>, the tag and the pid.
    let out = serve(
        &["--config", cfg, "--syslog", "debug"],
        &[("JAILBUILDER_SYSLOG_SOCKET", &path)],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let got = drain(&sock);
    let line = got
        .iter()
        .find(|l| l.contains("configuration: ServeConfig"))
        .unwrap_or_else(|| panic!("no configuration line in {got:?}"));
    assert!(line.starts_with("<31>"), "{line}");
    assert!(line.contains("sccache-buildserver["), "{line}");
    assert!(
        !line.contains("token = \"t\"") && !line.contains("\"t\""),
        "{line}"
    );
    // The log went to the syslog, not stderr; the final error still goes to stderr.
    let err = stderr(&out);
    assert!(!err.contains("configuration: ServeConfig"), "{err}");
    assert!(err.contains("opening the sandbox backend"), "{err}");

    // info: the debug line is filtered out.
    let out = serve(
        &["--config", cfg, "--syslog", "info"],
        &[("JAILBUILDER_SYSLOG_SOCKET", &path)],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let got = drain(&sock);
    assert!(!got.iter().any(|l| l.contains("configuration:")), "{got:?}");

    // A socket nobody listens on: a warning on stderr, and the log goes to stderr.
    drop(sock);
    let out = serve(
        &["--config", cfg, "--syslog", "debug"],
        &[("JAILBUILDER_SYSLOG_SOCKET", &path)],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("logging to stderr instead"), "{err}");
}
