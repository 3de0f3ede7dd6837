//! The HTTP side's request handling, in process: real request bytes through the request
//! reader and the router to a [`JailServer`] over the test backend, with the job tokens a
//! scheduler would mint. The stock scheduler and client are in tests/sccache_hostile_http.rs.

use std::io::{BufReader, Write};
use std::sync::Arc;

use sccache::dist::{
    AssignJobResult, JobId, JobState, RunJobResult, SubmitToolchainResult, Toolchain,
};

use super::conn::{read_head, Body, Response};
use super::*;
use crate::engine::test_backend::TestBackend;
use crate::sccache::tests::{
    cc, good_toolchain, harness_with, small_config, tar_of, Harness, Scheduler,
};
use crate::sccache::UploadLimits;

/// Field order is drop order: the server's last handle before its temporary directory.
struct Rig {
    shared: Shared<TestBackend>,
    sched: Arc<Scheduler>,
    h: Harness,
}

fn rig() -> Rig {
    let h = harness_with(
        small_config(),
        UploadLimits {
            per_upload: 1 << 16,
            staged_total: 1 << 17,
        },
    );
    let sched = Arc::new(Scheduler::default());
    let shared = Shared::new(
        h.server.clone(),
        Arc::clone(&sched) as Arc<Requester>,
        1 << 12,
    );
    Rig { shared, sched, h }
}

impl Rig {
    fn token(&self, job: u64) -> String {
        self.shared.auth.mint(JobId(job))
    }

    /// Sends `route/<job>` with `body` (Content-Length unless `headers` says otherwise).
    fn post(
        &self,
        route: &str,
        job: u64,
        token: Option<&str>,
        extra: &str,
        body: &[u8],
    ) -> Response {
        let mut raw = format!("POST /api/v1/distserver/{route}/{job} HTTP/1.1\r\n");
        if let Some(t) = token {
            raw.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        raw.push_str("Content-Type: application/octet-stream\r\n");
        if !extra.contains("Content-Length") {
            raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        raw.push_str(extra);
        raw.push_str("\r\n");
        let mut bytes = raw.into_bytes();
        bytes.extend_from_slice(body);
        let mut r = BufReader::new(&bytes[..]);
        let head = read_head(&mut r).unwrap();
        let mut b = Body::new(&mut r, &head);
        let (response, after) = self.shared.handle(&head, &mut b);
        // As serve_connection: what is left runs once the response is out.
        if let Some(after) = after {
            after();
        }
        response
    }

    fn assign(&self, job: u64, tc: &Toolchain) -> Response {
        self.post(
            "assign_job",
            job,
            Some(&self.token(job)),
            "",
            &bincode::serialize(tc).unwrap(),
        )
    }
}

fn run_body(header_len: Option<u32>, header: &[u8], inputs: &[u8]) -> Vec<u8> {
    let mut b = header_len
        .unwrap_or(header.len() as u32)
        .to_be_bytes()
        .to_vec();
    b.extend_from_slice(header);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(inputs).unwrap();
    b.extend(z.finish().unwrap());
    b
}

fn good_run_body(out: &str) -> Vec<u8> {
    let req = RunJobHttpRequest {
        command: cc(&["a.c", "-o", out]),
        outputs: vec![out.into()],
    };
    run_body(
        None,
        &bincode::serialize(&req).unwrap(),
        &tar_of(&[("build/a.c", b"int x;")]),
    )
}

fn status(r: &Response) -> u16 {
    r.status
}

#[test]
fn a_job_runs_through_the_http_side_and_its_token_is_single_use() {
    let rig = rig();
    let (tc, archive) = good_toolchain();
    let r = rig.assign(1, &tc);
    assert_eq!(status(&r), 200);
    assert_eq!(r.content_type, "application/octet-stream");
    let a: AssignJobResult = bincode::deserialize(&r.body).unwrap();
    assert!(a.need_toolchain);
    // Replaying the token on assign_job is refused (sccache's 401 shape).
    let r = rig.assign(1, &tc);
    assert_eq!(status(&r), 401);
    assert!(r
        .headers
        .iter()
        .any(|(k, v)| *k == "WWW-Authenticate" && v.contains("invalid_jwt")));
    let t = rig.token(1);
    let r = rig.post("submit_toolchain", 1, Some(&t), "", &archive);
    assert_eq!(status(&r), 200);
    assert!(matches!(
        bincode::deserialize::<SubmitToolchainResult>(&r.body).unwrap(),
        SubmitToolchainResult::Success
    ));
    let r = rig.post("run_job", 1, Some(&t), "", &good_run_body("a.o"));
    assert_eq!(status(&r), 200, "{}", String::from_utf8_lossy(&r.body));
    match bincode::deserialize::<RunJobResult>(&r.body).unwrap() {
        RunJobResult::Complete(c) => assert_eq!(c.output.code, 0),
        RunJobResult::JobNotFound => panic!("job not found"),
    }
    // Run twice, upload after the run, assign again: all refused.
    for route in ["run_job", "submit_toolchain", "assign_job"] {
        let r = rig.post(route, 1, Some(&t), "", &good_run_body("a.o"));
        assert_eq!(status(&r), 401, "{route}");
    }
    // No token, a token for another job, a forged token.
    rig.assign(2, &tc);
    assert_eq!(status(&rig.post("run_job", 2, None, "", b"")), 401);
    assert_eq!(
        status(&rig.post("run_job", 2, Some(&rig.token(3)), "", b"")),
        401
    );
    assert_eq!(status(&rig.post("run_job", 2, Some("a.b.c"), "", b"")), 401);
    // Unknown routes.
    assert_eq!(
        status(&rig.post("nope", 2, Some(&rig.token(2)), "", b"")),
        404
    );
    // JSON when asked for.
    let r = rig.post(
        "run_job",
        2,
        Some(&rig.token(2)),
        "Accept: application/json\r\n",
        &good_run_body("b.o"),
    );
    assert_eq!(status(&r), 200);
    assert_eq!(r.content_type, "application/json");
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert!(v.get("Complete").is_some(), "{v}");
}

#[test]
fn hostile_assign_job_bodies_are_refused() {
    let rig = rig();
    let huge = {
        let mut b = (1u64 << 45).to_le_bytes().to_vec();
        b.extend_from_slice(b"abc");
        b
    };
    let random: Vec<u8> = (0..64u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let valid = bincode::serialize(&good_toolchain().0).unwrap();
    let bad_id = {
        let mut b = 6u64.to_le_bytes().to_vec();
        b.extend_from_slice(b"/etc/x");
        b
    };
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("2^45 length prefix", huge, 400),
        ("64 random bytes", random, 400),
        ("truncated", valid[..valid.len() - 5].to_vec(), 400),
        ("oversize", vec![0u8; MAX_ASSIGN_BODY as usize + 1], 413),
        ("bad toolchain id", bad_id, 400),
    ];
    for (i, (what, body, want)) in cases.into_iter().enumerate() {
        let job = 10 + i as u64;
        let r = rig.post("assign_job", job, Some(&rig.token(job)), "", &body);
        assert_eq!(
            status(&r),
            want,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert!(v["description"].is_string(), "{what}: {v}");
        // The id is spent: the scheduler never assigns it twice.
        assert_eq!(status(&rig.assign(job, &good_toolchain().0)), 401, "{what}");
    }
    // An announced length over the cap is refused before reading.
    let r = rig.post(
        "assign_job",
        20,
        Some(&rig.token(20)),
        "Content-Length: 35184372088832\r\n",
        b"",
    );
    assert_eq!(status(&r), 413);
    assert_eq!(rig.h.server.pending_jobs(), 0);
    // And a real assignment still works.
    assert_eq!(status(&rig.assign(30, &good_toolchain().0)), 200);
}

#[test]
fn hostile_run_job_bodies_are_refused_and_the_job_released() {
    let rig = rig();
    let (tc, archive) = good_toolchain();
    // Cache the toolchain once, so later jobs are Ready.
    rig.assign(1, &tc);
    rig.post("submit_toolchain", 1, Some(&rig.token(1)), "", &archive);
    let huge_string = {
        let mut h = (1u64 << 45).to_le_bytes().to_vec();
        h.extend_from_slice(b"abcdefgh");
        h
    };
    let random: Vec<u8> = (0..64u32)
        .map(|i| (i.wrapping_mul(2_246_822_519) >> 11) as u8)
        .collect();
    let valid = good_run_body("a.o");
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "2^45 string in the header",
            run_body(None, &huge_string, b""),
            400,
        ),
        (
            "header length 2^32-1",
            run_body(Some(u32::MAX), b"", b""),
            413,
        ),
        ("64 random bytes", random, 413),
        ("truncated length", vec![0, 0], 400),
        ("truncated header", valid[..20].to_vec(), 400),
    ];
    for (i, (what, body, want)) in cases.into_iter().enumerate() {
        let job = 10 + i as u64;
        assert_eq!(status(&rig.assign(job, &tc)), 200);
        rig.sched.take();
        let t = rig.token(job);
        let r = rig.post("run_job", job, Some(&t), "", &body);
        assert_eq!(
            status(&r),
            want,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        // Released at the scheduler, consumed here.
        assert_eq!(
            rig.sched.take(),
            vec![JobState::Started, JobState::Complete],
            "{what}"
        );
        assert_eq!(status(&rig.post("run_job", job, Some(&t), "", &valid)), 401);
    }
    // A Pending job (no toolchain yet) is released through Ready.
    let other = crate::sccache::tests::toolchain(vec![9u8; 100]);
    assert_eq!(status(&rig.assign(40, &other.0)), 200);
    rig.sched.take();
    rig.post("run_job", 40, Some(&rig.token(40)), "", b"");
    assert_eq!(
        rig.sched.take(),
        vec![JobState::Ready, JobState::Started, JobState::Complete]
    );
    // An inputs stream that is not zlib is the job's error, not the server's.
    rig.assign(41, &tc);
    let mut body = valid.clone();
    let hdr = 4 + u32::from_be_bytes(valid[..4].try_into().unwrap()) as usize;
    body.truncate(hdr);
    body.extend_from_slice(b"not zlib at all");
    let r = rig.post("run_job", 41, Some(&rig.token(41)), "", &body);
    assert_eq!(status(&r), 500);
    // The builder still works.
    rig.assign(42, &tc);
    let r = rig.post("run_job", 42, Some(&rig.token(42)), "", &valid);
    assert_eq!(status(&r), 200);
    assert!(rig.h.server.builder().engine().is_healthy());
}

#[test]
fn an_announced_oversize_upload_is_413() {
    let rig = rig();
    let other = crate::sccache::tests::toolchain(vec![9u8; 100]);
    rig.assign(1, &other.0);
    let r = rig.post(
        "submit_toolchain",
        1,
        Some(&rig.token(1)),
        &format!("Content-Length: {}\r\n", (1u64 << 16) + 1),
        b"",
    );
    assert_eq!(status(&r), 413);
    // Chunked and over the cap: CannotCache.
    let mut chunked = Vec::new();
    for _ in 0..20 {
        chunked.extend_from_slice(b"1000\r\n");
        chunked.extend(std::iter::repeat_n(7u8, 0x1000));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = rig.post(
        "submit_toolchain",
        1,
        Some(&rig.token(1)),
        "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
        &chunked,
    );
    assert_eq!(status(&r), 200);
    assert!(matches!(
        bincode::deserialize::<SubmitToolchainResult>(&r.body).unwrap(),
        SubmitToolchainResult::CannotCache
    ));
    assert_eq!(rig.h.server.staged_upload_bytes(), 0);
    // The right bytes, chunked: cached.
    let mut chunked = format!("{:x}\r\n", other.1.len()).into_bytes();
    chunked.extend_from_slice(&other.1);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let r = rig.post(
        "submit_toolchain",
        1,
        Some(&rig.token(1)),
        "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
        &chunked,
    );
    assert!(matches!(
        bincode::deserialize::<SubmitToolchainResult>(&r.body).unwrap(),
        SubmitToolchainResult::Success
    ));
}

/// The whole HTTP side on a loopback port, over TLS: the certificate, the request reader,
/// a response the client can read even when the server refused before reading the body.
#[test]
fn the_server_speaks_tls_on_its_port() {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    use std::io::Read as _;
    use std::net::TcpStream;

    let h = harness_with(small_config(), UploadLimits::default());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let http = HttpServer::new(
        HttpConfig {
            public_addr: addr,
            bind_address: None,
            // Nobody listens there: heartbeats fail (and are retried), requests still work.
            scheduler_url: "http://127.0.0.1:9/".parse().unwrap(),
            scheduler_token: "t".into(),
            max_run_job_header_bytes: DEFAULT_MAX_RUN_JOB_HEADER,
            max_connections: 2,
        },
        h.server.clone(),
    )
    .unwrap();
    let auth = Arc::clone(&http.shared.auth);
    let pem = http.cert.pem.clone();
    std::thread::spawn(move || http.start());

    let post = |path: &str, token: &str, announced: u64, body: &[u8]| -> String {
        let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
        b.set_verify(SslVerifyMode::PEER);
        b.cert_store_mut()
            .add_cert(openssl::x509::X509::from_pem(&pem).unwrap())
            .unwrap();
        let tcp = loop {
            match TcpStream::connect(addr) {
                Ok(s) => break s,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        };
        let mut s = b
            .build()
            .configure()
            .unwrap()
            .use_server_name_indication(false)
            .verify_hostname(false)
            .connect("127.0.0.1", tcp)
            .unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nauthorization: Bearer {token}\r\n\
             content-type: application/octet-stream\r\ncontent-length: {announced}\r\n\r\n"
        )
        .unwrap();
        s.write_all(body).unwrap();
        // The request is all sent: a body shorter than announced ends here.
        s.get_ref().shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    let tc = bincode::serialize(&good_toolchain().0).unwrap();
    let t = auth.mint(JobId(5));
    let r = post("/api/v1/distserver/assign_job/5", &t, tc.len() as u64, &tc);
    assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
    assert!(r.contains("application/octet-stream"), "{r}");
    let r = post("/api/v1/distserver/assign_job/5", &t, tc.len() as u64, &tc);
    assert!(r.starts_with("HTTP/1.1 401 "), "{r}");
    // 2^45 announced, a few bytes sent: refused, the server stays up.
    let r = post("/api/v1/distserver/submit_toolchain/5", &t, 1 << 45, b"abc");
    assert!(r.starts_with("HTTP/1.1 413 "), "{r}");
    let r = post("/api/v1/distserver/run_job/5", &t, 1 << 45, &[0, 0, 0, 8]);
    assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
    let r = post("/api/v1/distserver/run_job/5", &t, 0, b"");
    assert!(r.starts_with("HTTP/1.1 401 "), "{r}");
    // More connections than slots, one after the other: all served.
    for _ in 0..4 {
        let r = post("/nowhere", "x", 0, b"");
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
    }
}

#[test]
fn deferred_work_runs_once_on_its_own_thread() {
    // Not waiting for the connection thread (which may be stuck writing to a client that
    // does not read): it runs without `take`, exactly once.
    let (tx, rx) = std::sync::mpsc::channel();
    let d = super::Deferred::start(Box::new(move || tx.send(()).unwrap()));
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .expect("the deferred work ran on its own");
    assert!(d.take().is_none(), "and is not run a second time");
}
