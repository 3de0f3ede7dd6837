//! Hostile requests against `jailbuilder serve`'s HTTP side, with the stock sccache 0.19.0
//! scheduler and client (the harness is `common::sccache`; needs root, gcc and the stock
//! binaries, else it prints "SKIP: ..." and passes, unless `JAILBUILDER_CI=1`).
//!
//! The attacker is a client: it holds the client token, asks the scheduler for a job
//! (`alloc_job`), and so holds a real job token for a job the scheduler assigned to our
//! server. With it, it sends crafted bodies to the server: each gets an error response,
//! a legitimate compile running meanwhile finishes on the server, and the server is still
//! alive afterwards and serves another compile. sccache's own HTTP server aborts on the
//! first of them (unbounded bincode: a 2^45-byte length prefix is a 32 TiB allocation).
#![cfg(all(feature = "sccache", target_os = "linux"))]

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use common::sccache::{dist_compiles, prerequisites, served_jobs, Cluster, CLIENT_TOKEN};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use sccache::dist::{JobAlloc, Toolchain};
use serde::Deserialize;

/// sccache's private `AllocJobHttpResponse` (src/dist/http.rs), field for field.
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
enum AllocJobHttpResponse {
    Success {
        job_alloc: JobAlloc,
        need_toolchain: bool,
        cert_digest: Vec<u8>,
    },
    Fail {
        msg: String,
    },
}

/// A safety net against a hung server, not a timing assertion.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(120);

/// Status line and body of a raw HTTP/1.1 response.
fn parse_response(raw: &[u8]) -> (u16, Vec<u8>) {
    let text = String::from_utf8_lossy(raw);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
    let body = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| raw[p + 4..].to_vec())
        .unwrap_or_default();
    (status, body)
}

fn head(path: &str, token: &str, extra: &str, len: Option<usize>) -> Vec<u8> {
    let mut h = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/octet-stream\r\nConnection: close\r\n{extra}"
    );
    if let Some(n) = len {
        h.push_str(&format!("Content-Length: {n}\r\n"));
    }
    h.push_str("\r\n");
    h.into_bytes()
}

/// POSTs to the scheduler (plain HTTP).
fn scheduler_post(port: u16, path: &str, token: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(SOCKET_TIMEOUT)).unwrap();
    s.write_all(&head(path, token, "", Some(body.len())))
        .unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse_response(&raw)
}

/// POSTs to the build server over TLS (its certificate is self-signed; the attacker does
/// not care). `announced` overrides Content-Length; `half_close` ends the body early.
fn server_post(
    port: u16,
    path: &str,
    token: &str,
    announced: Option<usize>,
    body: &[u8],
    half_close: bool,
) -> (u16, Vec<u8>) {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(SOCKET_TIMEOUT)).unwrap();
    let mut s = b
        .build()
        .configure()
        .unwrap()
        .verify_hostname(false)
        .use_server_name_indication(false)
        .connect("127.0.0.1", tcp)
        .unwrap();
    s.write_all(&head(
        path,
        token,
        "",
        Some(announced.unwrap_or(body.len())),
    ))
    .unwrap();
    s.write_all(body).unwrap();
    s.flush().unwrap();
    if half_close {
        s.get_ref().shutdown(Shutdown::Write).unwrap();
    }
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // An unclean TLS close after the whole response is fine.
            Err(_) if !raw.is_empty() => break,
            Err(e) => panic!("{path}: reading the response: {e}"),
        }
    }
    parse_response(&raw)
}

/// A job on our server, as an attacker gets one: alloc_job with the client token.
fn alloc(sched_port: u16, toolchain: &Toolchain) -> JobAlloc {
    let (status, body) = scheduler_post(
        sched_port,
        "/api/v1/scheduler/alloc_job",
        CLIENT_TOKEN,
        &bincode::serialize(toolchain).unwrap(),
    );
    assert_eq!(status, 200, "alloc_job: {}", String::from_utf8_lossy(&body));
    match bincode::deserialize::<AllocJobHttpResponse>(&body).unwrap() {
        AllocJobHttpResponse::Success { job_alloc, .. } => job_alloc,
        AllocJobHttpResponse::Fail { msg } => panic!("alloc_job failed: {msg}"),
    }
}

fn huge_prefix() -> Vec<u8> {
    let mut b = (1u64 << 45).to_le_bytes().to_vec();
    b.extend_from_slice(b"abcdefgh");
    b
}

fn random64() -> Vec<u8> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..64)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn run_body(len: u32, header: &[u8]) -> Vec<u8> {
    let mut b = len.to_be_bytes().to_vec();
    b.extend_from_slice(header);
    b
}

#[test]
fn hostile_requests_get_errors_and_the_server_keeps_serving() {
    let Some(bin) = prerequisites("sccache_hostile_http") else {
        return;
    };
    let mut cluster = Cluster::start(&bin, "shutdown_grace_secs = 10\nmax_containers = 4\n");
    let conf = fs::read_to_string(cluster.dir().join("scheduler.toml")).unwrap();
    let sched_port: u16 = conf
        .lines()
        .find_map(|l| l.strip_prefix("public_addr = \"127.0.0.1:"))
        .and_then(|p| p.trim_end_matches('"').parse().ok())
        .unwrap();
    let port = cluster.server_port;
    let proj = cluster.proj();
    let client = &cluster.client;
    fs::write(proj.join("a.c"), "int a(int x) { return x * 3; }\n").unwrap();
    fs::write(proj.join("b.c"), "int b(int x) { return x + 7; }\n").unwrap();
    fs::write(proj.join("c.c"), "int c(int x) { return x - 1; }\n").unwrap();

    // A legitimate compile, started first and running while the attacks go on.
    let legit = client
        .command(&["gcc", "-O2", "-c", "a.c", "-o", "a.o"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // The attacker's toolchain: any valid id; the server asks for it (Pending).
    let tc = Toolchain {
        archive_id: "5e3f3a1c2d8b4f6a7e9c0b1d2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a".into(),
    };
    let url = |route: &str, j: &JobAlloc| format!("/api/v1/distserver/{route}/{}", j.job_id);

    // assign_job replayed with the job's real token, with crafted bodies: refused.
    let job = alloc(sched_port, &tc);
    for (what, body) in [
        ("the scheduler's own body", bincode::serialize(&tc).unwrap()),
        ("2^45 length prefix", huge_prefix()),
        ("64 random bytes", random64()),
        ("truncated", bincode::serialize(&tc).unwrap()[..20].to_vec()),
    ] {
        let (status, body) = server_post(
            port,
            &url("assign_job", &job),
            &job.auth,
            None,
            &body,
            false,
        );
        assert_eq!(
            status,
            401,
            "assign_job replay, {what}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    // An upload announcing more than the server accepts: 413 before reading it.
    let (status, body) = server_post(
        port,
        &url("submit_toolchain", &job),
        &job.auth,
        Some(1 << 40),
        b"x",
        false,
    );
    assert_eq!(
        status,
        413,
        "oversize upload: {}",
        String::from_utf8_lossy(&body)
    );
    // run_job with a 2^45-byte string in its header: 400; the job is consumed...
    let (status, body) = server_post(
        port,
        &url("run_job", &job),
        &job.auth,
        None,
        &run_body(16, &huge_prefix()),
        false,
    );
    assert_eq!(
        status,
        400,
        "run_job 2^45: {}",
        String::from_utf8_lossy(&body)
    );
    // ... so running it again is refused.
    let (status, _) = server_post(port, &url("run_job", &job), &job.auth, None, b"", false);
    assert_eq!(status, 401, "run_job twice");

    // More run_job bodies, each on a fresh job.
    for (what, body, announced, half_close, want) in [
        ("64 random bytes", random64(), None, false, [400, 413]),
        (
            "header length 2^32-1",
            run_body(u32::MAX, b""),
            None,
            false,
            [413, 413],
        ),
        // Its first four bytes (big endian) are 0: an empty header.
        ("2^45 length prefix", huge_prefix(), None, false, [400, 400]),
        (
            "truncated header",
            run_body(1000, b"abc"),
            Some(1004),
            true,
            [400, 400],
        ),
        ("truncated length", vec![0, 0], Some(4), true, [400, 400]),
        (
            "announced 2^45 bytes",
            run_body(10, b"ab"),
            Some(1 << 45),
            true,
            [400, 400],
        ),
    ] {
        let job = alloc(sched_port, &tc);
        let (status, resp) = server_post(
            port,
            &url("run_job", &job),
            &job.auth,
            announced,
            &body,
            half_close,
        );
        assert!(
            want.contains(&status),
            "run_job {what}: {status} {}",
            String::from_utf8_lossy(&resp)
        );
        let desc: serde_json::Value = serde_json::from_slice(&resp).unwrap();
        assert!(desc["description"].is_string(), "{what}: {desc}");
        assert!(
            matches!(cluster.serve.child.try_wait(), Ok(None)),
            "serve died on run_job {what}"
        );
    }

    // The legitimate compile finished, on the server.
    let out = legit.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sccache gcc -c a.c: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(proj.join("a.o").is_file());

    // The server is alive and serves further compiles.
    assert!(
        matches!(cluster.serve.child.try_wait(), Ok(None)),
        "serve died"
    );
    for (src, obj) in [("b.c", "b.o"), ("c.c", "c.o")] {
        let out = client.run(&["gcc", "-c", src, "-o", obj]);
        assert!(
            out.status.success(),
            "{src}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stats = client.stats();
    assert_eq!(dist_compiles(&stats), 3, "{stats}");
    assert_eq!(stats["dist_errors"].as_u64(), Some(0), "{stats}");
    let log = cluster.serve.log();
    assert_eq!(served_jobs(&log, 0), 3, "{log}");
    assert!(!log.contains("panicked"), "{log}");
}
