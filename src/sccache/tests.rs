//! Tests of the sccache glue over a directory-backed test backend (no root needed): the
//! mapping of sccache's types, the server's job protocol, the toolchain cache, draining,
//! health, and the configuration file.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Mutex;

use sccache::dist::{
    AssignJobResult, CompileCommand, JobId, JobState, RunJobResult, ServerOutgoing,
    SubmitToolchainResult, Toolchain, UpdateJobStateResult,
};

use super::builder::{command_spec, process_output};
use super::*;
use crate::backend::{BuildUser, ExecOutcome, ExitStatus, LimitHit};
use crate::engine::test_backend::{outcome, TestBackend, TestError};
use crate::engine::{Engine, EngineConfig};
use crate::exec::PreparedCommand;

/// The test backend's "compiler": concatenates its input arguments (relative to cwd) into
/// `-o` output; `--fail`, `--signal`, `--timeout`, `--backend-fail` and `--env` do what they
/// say; `--oom` and `--pids` end as the Linux backend reports a cgroup's memory and process
/// limits (SIGKILL, exit 1) and `--kill` as a SIGKILL of the compiler's own.
pub(crate) fn fake_compiler(root: &Path, cmd: &PreparedCommand) -> Result<ExecOutcome, TestError> {
    let spec = cmd.spec();
    let cwd = root.join(spec.cwd.trim_start_matches('/'));
    let (mut out, mut data) = (None, Vec::new());
    let mut args = spec.arguments.iter();
    while let Some(a) = args.next() {
        match a.as_str() {
            "-o" => out = args.next().cloned(),
            "--fail" => {
                return Ok(outcome(
                    ExitStatus::Code(1),
                    b"",
                    b"a.c:1:1: error: expected ';' before '}' token\n",
                ))
            }
            "--signal" => return Ok(outcome(ExitStatus::Signal(11), b"", b"")),
            "--timeout" => return Ok(outcome(ExitStatus::TimedOut, b"", b"")),
            "--oom" => {
                let mut o = outcome(ExitStatus::Signal(libc::SIGKILL), b"", b"");
                o.limit_hit = Some(LimitHit::Memory { bytes: 1 << 30 });
                return Ok(o);
            }
            "--pids" => {
                let mut o = outcome(ExitStatus::Code(1), b"", b"fork: Resource unavailable\n");
                o.limit_hit = Some(LimitHit::Processes { max: 64 });
                return Ok(o);
            }
            "--kill" => return Ok(outcome(ExitStatus::Signal(libc::SIGKILL), b"", b"")),
            "--backend-fail" => return Err(TestError("injected".into(), false)),
            "--env" => {
                let env = format!("{:?}", spec.env_vars);
                return Ok(outcome(ExitStatus::Code(0), env.as_bytes(), b""));
            }
            _ => data.extend(fs::read(cwd.join(a)).unwrap_or_default()),
        }
    }
    if let Some(o) = out {
        fs::write(cwd.join(o), &data).unwrap();
    }
    Ok(outcome(ExitStatus::Code(0), b"ok", b""))
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

pub(crate) fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A toolchain archive and its sccache id (the BLAKE3 digest sccache uses).
pub(crate) fn toolchain(archive: Vec<u8>) -> (Toolchain, Vec<u8>) {
    let archive_id = sccache::util::Digest::reader_sync(archive.as_slice()).unwrap();
    (Toolchain { archive_id }, archive)
}

pub(crate) fn good_toolchain() -> (Toolchain, Vec<u8>) {
    toolchain(gz(&tar_of(&[("usr/bin/cc", b"cc")])))
}

/// Records the job states the server reports to the "scheduler".
#[derive(Default)]
pub(crate) struct Scheduler(pub(crate) Mutex<Vec<(JobId, JobState)>>);

impl ServerOutgoing for Scheduler {
    fn do_update_job_state(
        &self,
        job_id: JobId,
        state: JobState,
    ) -> sccache::errors::Result<UpdateJobStateResult> {
        self.0.lock().unwrap().push((job_id, state));
        Ok(UpdateJobStateResult::Success)
    }
}

impl Scheduler {
    pub(crate) fn take(&self) -> Vec<JobState> {
        std::mem::take(&mut *self.0.lock().unwrap())
            .into_iter()
            .map(|(_, s)| s)
            .collect()
    }
}

pub(crate) struct Harness {
    pub(crate) server: JailServer<TestBackend>,
    pub(crate) sched: Scheduler,
    pub(crate) _tmp: tempfile::TempDir,
}

fn harness(config: EngineConfig) -> Harness {
    harness_with(config, UploadLimits::default())
}

pub(crate) fn harness_with(config: EngineConfig, uploads: UploadLimits) -> Harness {
    let tmp = tempfile::tempdir().unwrap();
    let (backend, _) = TestBackend::new(tmp.path().join("backend"), fake_compiler);
    let engine = Engine::start(backend, config).unwrap();
    let server = JailServer::with_upload_limits(
        JailBuilder::new(engine),
        &tmp.path().join("cache"),
        1 << 20,
        uploads,
    )
    .unwrap();
    Harness {
        server,
        sched: Scheduler::default(),
        _tmp: tmp,
    }
}

pub(crate) fn small_config() -> EngineConfig {
    EngineConfig {
        max_containers: 2,
        max_containers_per_toolchain: 2,
        warm_per_toolchain: 1,
        recycler_threads: 1,
        // Not root in every test environment: let the test backend's files belong to us.
        build_user_base: BuildUser {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        },
        ..EngineConfig::default()
    }
}

pub(crate) fn cc(args: &[&str]) -> CompileCommand {
    CompileCommand {
        executable: "/usr/bin/cc".into(),
        arguments: args.iter().map(|s| s.to_string()).collect(),
        env_vars: vec![("LANG".into(), "C".into())],
        cwd: "/src".into(),
    }
}

/// The uncompressed bytes of an `OutputData` (its fields are private; its serde form is
/// `[zlib bytes, length]`).
fn output_bytes(d: &sccache::dist::OutputData) -> Vec<u8> {
    let (z, len): (Vec<u8>, u64) =
        serde_json::from_value(serde_json::to_value(d).unwrap()).unwrap();
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(z.as_slice())
        .read_to_end(&mut out)
        .unwrap();
    assert_eq!(out.len() as u64, len);
    out
}

impl Harness {
    /// Assigns `job`, submitting the toolchain if the server asks for it.
    fn assign(&self, job: u64, tc: &(Toolchain, Vec<u8>)) -> AssignJobResult {
        let r = self.server.assign_job(JobId(job), tc.0.clone()).unwrap();
        if r.need_toolchain {
            let s = self
                .server
                .submit_toolchain(&self.sched, JobId(job), &mut tc.1.as_slice())
                .unwrap();
            assert!(matches!(s, SubmitToolchainResult::Success));
        }
        r
    }

    fn run(
        &self,
        job: u64,
        cmd: CompileCommand,
        outputs: &[&str],
        inputs: &[(&str, &[u8])],
    ) -> Result<RunJobResult, ServerError> {
        let tar = tar_of(inputs);
        self.server.run_job(
            &self.sched,
            JobId(job),
            cmd,
            outputs.iter().map(|s| s.to_string()).collect(),
            &mut tar.as_slice(),
        )
    }
}

pub(crate) fn complete(r: Result<RunJobResult, ServerError>) -> sccache::dist::JobComplete {
    match r {
        Ok(RunJobResult::Complete(c)) => c,
        Ok(RunJobResult::JobNotFound) => panic!("job not found"),
        Err(e) => panic!("job failed: {e}"),
    }
}

#[test]
fn a_job_runs_end_to_end_with_sccache_dist_semantics() {
    let h = harness(small_config());
    let tc = good_toolchain();

    let first = h.assign(1, &tc);
    assert!(first.need_toolchain);
    assert_eq!(first.state, JobState::Pending);
    assert_eq!(h.sched.take(), [JobState::Ready]);
    assert!(h
        .server
        .toolchain_cache()
        .lock()
        .unwrap()
        .contains_toolchain(&tc.0));

    let c = complete(h.run(
        1,
        cc(&["-c", "a.c", "b.h", "-o", "out/a.o"]),
        &["out/a.o", "missing.d"],
        &[("src/a.c", b"int a;\n"), ("src/b.h", b"int b;\n")],
    ));
    assert_eq!(h.sched.take(), [JobState::Started, JobState::Complete]);
    assert_eq!(c.output.code, 0);
    assert_eq!(c.output.stdout, b"ok");
    assert_eq!(c.outputs.len(), 1, "a missing output is left out");
    assert_eq!(c.outputs[0].0, "out/a.o");
    assert_eq!(output_bytes(&c.outputs[0].1), b"int a;\nint b;\n");

    // The toolchain is cached now: the next job is Ready without an upload.
    let second = h.server.assign_job(JobId(2), tc.0.clone()).unwrap();
    assert!(!second.need_toolchain);
    assert_eq!(second.state, JobState::Ready);
    assert_eq!(h.server.pending_jobs(), 1);
    let c = complete(h.run(2, cc(&["a.c", "-o", "a.o"]), &["a.o"], &[("src/a.c", b"x")]));
    assert_eq!(output_bytes(&c.outputs[0].1), b"x");
    assert_eq!(h.server.pending_jobs(), 0);
}

#[test]
fn a_compile_error_is_the_compilers_result_not_a_job_error() {
    let h = harness(small_config());
    let tc = good_toolchain();
    h.assign(1, &tc);
    let c = complete(h.run(1, cc(&["--fail"]), &["a.o"], &[]));
    assert_eq!(c.output.code, 1);
    assert!(String::from_utf8_lossy(&c.output.stderr).contains("error: expected ';'"));
    assert!(c.outputs.is_empty());
}

#[test]
fn killed_and_timed_out_compiles_report_shell_codes_and_say_why() {
    let p = process_output(outcome(ExitStatus::Signal(11), b"", b"partial"), 60);
    assert_eq!(p.code, 128 + 11);
    let err = String::from_utf8(p.stderr).unwrap();
    assert!(err.starts_with("partial\n"), "{err}");
    assert!(err.contains("killed by signal 11"), "{err}");

    let p = process_output(outcome(ExitStatus::TimedOut, b"", b""), 60);
    assert_eq!(p.code, 128 + 9);
    assert!(String::from_utf8(p.stderr)
        .unwrap()
        .contains("time limit (60 s)"));

    let mut o = outcome(ExitStatus::Code(0), b"o", b"e\n");
    o.stderr_truncated = true;
    let p = process_output(o, 60);
    assert_eq!(p.code, 0);
    assert_eq!(p.stdout, b"o");
    assert!(String::from_utf8(p.stderr)
        .unwrap()
        .starts_with("e\njailbuilder: stderr was truncated"));

    // Through the server, too.
    let h = harness(small_config());
    let tc = good_toolchain();
    h.assign(1, &tc);
    assert_eq!(
        complete(h.run(1, cc(&["--signal"]), &[], &[])).output.code,
        139
    );
}

#[test]
fn a_compile_a_sandbox_limit_ended_is_a_job_error_a_plain_kill_is_not() {
    // A compiler killed by its own signal is the compiler's outcome (128 + signal, as
    // above); one the sandbox's time limit killed is not: the job fails, and the stock
    // client falls back to a local compile instead of reporting a compile error. So does
    // one the backend puts down to the memory or process limit (Linux with a cgroup).
    let h = harness(small_config());
    let tc = good_toolchain();
    for (n, (arg, key)) in [
        ("--timeout", "time limit (timeout_secs = "),
        ("--oom", "memory limit (memory_bytes = 1073741824)"),
        ("--pids", "process limit (max_processes = 64)"),
    ]
    .into_iter()
    .enumerate()
    {
        let job = n as u64 + 1;
        h.assign(job, &tc);
        let err = match h.run(job, cc(&[arg]), &["a.o"], &[]) {
            Err(e) => e,
            Ok(_) => panic!("a compile ended by the {key} completed"),
        };
        let msg = err.to_string();
        assert!(msg.contains(key), "{msg}");
        assert!(msg.contains("compile it locally"), "{msg}");
        match &err {
            ServerError::Job(j) => {
                assert!(matches!(j, JobError::SandboxLimit { .. }), "{j:?}");
                assert!(j.is_client_error());
            }
            e => panic!("{e:?}"),
        }
    }
    // Not a builder failure: the builder stays healthy and serves the next job.
    assert!(h.server.builder().engine().is_healthy());
    // A SIGKILL no limit accounts for is the compiler's outcome: 128 + 9, as before.
    h.assign(4, &tc);
    let c = complete(h.run(4, cc(&["--kill"]), &[], &[]));
    assert_eq!(c.output.code, 128 + 9);
    assert!(String::from_utf8_lossy(&c.output.stderr).contains("killed by signal 9"));
}

#[test]
fn environment_variables_sccache_would_skip_are_dropped_not_fatal() {
    let mut cmd = cc(&["--env"]);
    cmd.env_vars = vec![
        ("A".into(), "1".into()),
        ("B=C".into(), "2".into()),
        (String::new(), "3".into()),
    ];
    assert_eq!(
        command_spec(cmd.clone()).env_vars,
        [("A".into(), "1".into())]
    );
    let h = harness(small_config());
    let tc = good_toolchain();
    h.assign(1, &tc);
    let c = complete(h.run(1, cmd, &[], &[]));
    assert_eq!(c.output.stdout, br#"[("A", "1")]"#);
}

#[test]
fn unknown_jobs_are_job_not_found_and_still_reported_complete() {
    let h = harness(small_config());
    let r = h.run(77, cc(&[]), &[], &[]).unwrap();
    assert!(matches!(r, RunJobResult::JobNotFound));
    assert_eq!(h.sched.take(), [JobState::Started, JobState::Complete]);
    let s = h
        .server
        .submit_toolchain(&h.sched, JobId(78), &mut &b"x"[..])
        .unwrap();
    assert!(matches!(s, SubmitToolchainResult::JobNotFound));
}

#[test]
fn an_upload_that_does_not_match_its_id_is_not_cached() {
    let h = harness(small_config());
    let (tc, _) = good_toolchain();
    h.server.assign_job(JobId(1), tc.clone()).unwrap();
    let s = h
        .server
        .submit_toolchain(&h.sched, JobId(1), &mut &b"something else"[..])
        .unwrap();
    assert!(matches!(s, SubmitToolchainResult::CannotCache));
    assert!(!h
        .server
        .toolchain_cache()
        .lock()
        .unwrap()
        .contains_toolchain(&tc));
    // Nothing left in the staging directory.
    let incoming = h._tmp.path().join("cache/incoming");
    assert_eq!(fs::read_dir(incoming).unwrap().count(), 0);
    // The job then fails cleanly (toolchain missing), as a client error.
    let e = h.run(1, cc(&[]), &[], &[]).err().expect("an error");
    assert!(
        matches!(&e, ServerError::Job(j) if j.is_client_error()),
        "{e}"
    );
}

#[test]
fn an_upload_larger_than_the_cache_is_refused_without_reading_it_all() {
    let h = harness(small_config());
    let (tc, _) = good_toolchain();
    h.server.assign_job(JobId(1), tc).unwrap();
    let mut huge = std::io::repeat(0).take(1 << 30);
    let s = h
        .server
        .submit_toolchain(&h.sched, JobId(1), &mut huge)
        .unwrap();
    assert!(matches!(s, SubmitToolchainResult::CannotCache));
    assert!(huge.limit() > (1 << 29), "read only about the cache size");
}

#[test]
fn a_corrupt_toolchain_fails_the_job_and_is_removed_from_the_cache() {
    let h = harness(small_config());
    // A valid upload (its digest matches) of an archive that is not a gzip'd tar.
    let bad = toolchain(b"not a tarball at all".to_vec());
    h.assign(1, &bad);
    assert!(h
        .server
        .toolchain_cache()
        .lock()
        .unwrap()
        .contains_toolchain(&bad.0));
    let e = h.run(1, cc(&[]), &[], &[]).err().expect("an error");
    match &e {
        ServerError::Job(JobError::Build(crate::engine::BuildError::Toolchain { .. })) => {}
        other => panic!("expected a toolchain error, got {other}"),
    }
    assert!(!h
        .server
        .toolchain_cache()
        .lock()
        .unwrap()
        .contains_toolchain(&bad.0));
    // The next job asks for the toolchain again.
    assert!(h.server.assign_job(JobId(2), bad.0).unwrap().need_toolchain);
}

#[test]
fn bad_requests_are_job_errors_never_panics() {
    let h = harness(small_config());
    let tc = good_toolchain();
    for (job, cmd, outputs) in [
        (
            1,
            CompileCommand {
                cwd: "relative".into(),
                ..cc(&[])
            },
            vec!["a.o"],
        ),
        (
            2,
            CompileCommand {
                executable: "cc".into(),
                ..cc(&[])
            },
            vec!["a.o"],
        ),
        (3, cc(&[]), vec!["obj/.."]),
        (
            4,
            CompileCommand {
                executable: "/usr/bin/none".into(),
                ..cc(&[])
            },
            vec![],
        ),
    ] {
        h.assign(job, &tc);
        let e = h.run(job, cmd, &outputs, &[]).err().expect("an error");
        assert!(
            matches!(&e, ServerError::Job(j) if j.is_client_error()),
            "{e}"
        );
    }
    // Garbage inputs.
    h.assign(5, &tc);
    let e = h
        .server
        .run_job(&h.sched, JobId(5), cc(&[]), vec![], &mut &b"garbage"[..])
        .err()
        .expect("an error");
    assert!(
        matches!(&e, ServerError::Job(j) if j.is_client_error()),
        "{e}"
    );
    // And the builder is still healthy and working.
    assert!(h.server.builder().engine().is_healthy());
    h.assign(6, &tc);
    assert_eq!(complete(h.run(6, cc(&[]), &[], &[])).output.code, 0);
}

/// Ids that would be file names outside the cache (or panic sccache's `TcCache`, which
/// slices the id's first byte).
const BAD_IDS: [&str; 5] = ["/etc/x", "../x", "", "\u{e9}\u{2026}", "x"];

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = walk(dir)
        .into_iter()
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .collect();
    v.sort();
    v
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn invalid_toolchain_ids_are_refused_at_every_entry() {
    let h = harness(small_config());
    let cache = h._tmp.path().join("cache");
    let before = listing(&cache);
    for (i, id) in BAD_IDS.iter().enumerate() {
        let tc = Toolchain {
            archive_id: id.to_string(),
        };
        let job = JobId(100 + i as u64);
        // JailServer::assign_job (the HTTP side and embedders).
        let e = h.server.assign_job(job, tc.clone()).err().expect("refused");
        assert!(
            matches!(&e, ServerError::Job(JobError::ToolchainId(_))),
            "{id:?}: {e}"
        );
        // Never assigned, so no upload and no run for it.
        let s = h
            .server
            .submit_toolchain(&h.sched, job, &mut &b"data"[..])
            .unwrap();
        assert!(matches!(s, SubmitToolchainResult::JobNotFound), "{id:?}");
        // JailBuilder::build (the library).
        let e = h
            .server
            .builder()
            .build(
                Some(job),
                &tc,
                cc(&[]),
                vec![],
                &mut &tar_of(&[])[..],
                h.server.toolchain_cache(),
            )
            .err()
            .expect("refused");
        assert!(matches!(e, JobError::ToolchainId(_)), "{id:?}: {e}");
        // BuilderIncoming::run_build is build() behind sccache's InputsReader, whose
        // constructor is private to sccache.
    }
    assert_eq!(listing(&cache), before, "nothing created in the cache dir");
    assert!(!Path::new("/etc/x").exists());
    assert!(!h._tmp.path().join("x").exists() && !cache.join("x").exists());
}

/// A reader that yields `first` bytes, then waits for a signal, then ends.
struct Gate {
    first: Vec<u8>,
    gate: std::sync::mpsc::Receiver<()>,
    started: std::sync::mpsc::Sender<()>,
}

impl Read for Gate {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.first.is_empty() {
            let n = buf.len().min(self.first.len());
            buf[..n].copy_from_slice(&self.first[..n]);
            self.first.drain(..n);
            return Ok(n);
        }
        let _ = self.started.send(());
        let _ = self.gate.recv();
        Ok(0)
    }
}

#[test]
fn uploads_have_a_per_upload_cap_and_a_shared_budget() {
    let h = harness_with(
        small_config(),
        UploadLimits {
            per_upload: 1000,
            staged_total: 1500,
        },
    );
    let incoming = h._tmp.path().join("cache/incoming");
    assert_eq!(h.server.max_upload_bytes(), 1000);
    // A valid archive (its digest matches) of 900 bytes.
    let body: Vec<u8> = (0..900u32).map(|i| (i * 7 % 251) as u8).collect();
    let b = toolchain(body);
    // One upload over the per-upload cap.
    let big = toolchain(vec![1u8; 1001]);
    h.server.assign_job(JobId(1), big.0.clone()).unwrap();
    let s = h
        .server
        .submit_toolchain(&h.sched, JobId(1), &mut big.1.as_slice())
        .unwrap();
    assert!(matches!(s, SubmitToolchainResult::CannotCache));
    assert_eq!(fs::read_dir(&incoming).unwrap().count(), 0);
    assert_eq!(h.server.staged_upload_bytes(), 0);

    // Upload A holds 700 bytes of the budget while B (900) arrives: B is refused.
    h.server.assign_job(JobId(2), good_toolchain().0).unwrap();
    h.server.assign_job(JobId(3), b.0.clone()).unwrap();
    let (open, gate) = std::sync::mpsc::channel();
    let (started, waiting) = std::sync::mpsc::channel();
    let server = h.server.clone();
    let a = std::thread::spawn(move || {
        let sched = Scheduler::default();
        let mut r = Gate {
            first: vec![0u8; 700],
            gate,
            started,
        };
        server.submit_toolchain(&sched, JobId(2), &mut r).unwrap()
    });
    waiting.recv().unwrap();
    assert_eq!(h.server.staged_upload_bytes(), 700);
    let s = h
        .server
        .submit_toolchain(&h.sched, JobId(3), &mut b.1.as_slice())
        .unwrap();
    assert!(matches!(s, SubmitToolchainResult::CannotCache));
    assert_eq!(h.server.staged_upload_bytes(), 700, "B's share released");
    assert_eq!(fs::read_dir(&incoming).unwrap().count(), 1, "only A's file");
    open.send(()).unwrap();
    // A's bytes do not match its id: CannotCache, and the budget is free again.
    assert!(matches!(
        a.join().unwrap(),
        SubmitToolchainResult::CannotCache
    ));
    assert_eq!(h.server.staged_upload_bytes(), 0);
    assert_eq!(fs::read_dir(&incoming).unwrap().count(), 0);
    // Now B fits.
    let s = h
        .server
        .submit_toolchain(&h.sched, JobId(3), &mut b.1.as_slice())
        .unwrap();
    assert!(matches!(s, SubmitToolchainResult::Success));
}

#[test]
fn upload_limit_keys_parse_and_validate() {
    let cfg = parse(EXAMPLE).unwrap();
    assert_eq!(cfg.upload_limits(), UploadLimits::default());
    assert_eq!(
        cfg.max_run_job_header_bytes,
        http::DEFAULT_MAX_RUN_JOB_HEADER
    );
    let cfg = parse(&EXAMPLE.replace(
        "cache_dir",
        "max_toolchain_upload_bytes = 10\nmax_staged_upload_bytes = 20\n\
         max_run_job_header_bytes = 30\ncache_dir",
    ))
    .unwrap();
    assert_eq!(
        cfg.upload_limits(),
        UploadLimits {
            per_upload: 10,
            staged_total: 20
        }
    );
    assert_eq!(cfg.max_run_job_header_bytes, 30);
    for bad in [
        "max_toolchain_upload_bytes = 0",
        "max_staged_upload_bytes = 0",
        "max_run_job_header_bytes = 0",
        "max_run_job_header_bytes = 4294967296",
    ] {
        let e = parse(&EXAMPLE.replace("cache_dir", &format!("{bad}\ncache_dir"))).expect_err(bad);
        assert!(
            e.to_string().contains(bad.split(' ').next().unwrap()),
            "{e}"
        );
    }
}

#[test]
fn draining_refuses_assignments() {
    let h = harness(small_config());
    let tc = good_toolchain();
    h.server.drain();
    assert!(h.server.is_draining());
    let e = h.server.assign_job(JobId(1), tc.0).err().expect("an error");
    assert!(matches!(e, ServerError::Draining));
    assert!(h.server.wait_idle(std::time::Duration::from_millis(10)));
}

#[test]
fn an_unhealthy_builder_refuses_assignments_but_probes() {
    let h = harness(EngineConfig {
        unhealthy_after: 1,
        ..small_config()
    });
    let tc = good_toolchain();
    h.assign(1, &tc);
    let e = h
        .run(1, cc(&["--backend-fail"]), &[], &[])
        .err()
        .expect("an error");
    assert!(
        matches!(&e, ServerError::Job(j) if !j.is_client_error()),
        "{e}"
    );
    assert!(!h.server.builder().engine().is_healthy());
    // One probe is let through, then assignments are refused.
    h.server.assign_job(JobId(2), tc.0.clone()).unwrap();
    let e = h
        .server
        .assign_job(JobId(3), tc.0.clone())
        .err()
        .expect("an error");
    assert!(matches!(e, ServerError::Unhealthy));
    // The probe succeeds: healthy again, assignments accepted.
    assert_eq!(complete(h.run(2, cc(&[]), &[], &[])).output.code, 0);
    assert!(h.server.builder().engine().is_healthy());
    h.server.assign_job(JobId(4), tc.0).unwrap();
}

#[test]
fn builder_incoming_is_usable_as_sccache_dist_builder() {
    // The trait object sccache-dist's own server holds.
    let h = harness(small_config());
    let b: Box<dyn sccache::dist::BuilderIncoming> = Box::new(h.server.builder().clone());
    drop(b);
    let s: Box<dyn sccache::dist::ServerIncoming> = Box::new(h.server.clone());
    drop(s);
}

// ---- configuration ----

const EXAMPLE: &str = r#"
public_addr = "192.0.2.10:10501"
bind_address = "0.0.0.0:10501"
scheduler_url = "http://192.0.2.1:10600"
cache_dir = "/var/cache/jailbuilder"

[scheduler_auth]
type = "token"
token = "s3cret"

[builder]
state_dir = "/var/lib/jailbuilder"
max_containers = 4
"#;

fn parse(text: &str) -> Result<ServeConfig, ServeConfigError> {
    ServeConfig::parse(Path::new("server.toml"), text)
}

#[test]
fn the_example_config_parses_and_builds_sccache_dists_token() {
    let c = parse(EXAMPLE).unwrap();
    assert_eq!(c.public_addr, "192.0.2.10:10501".parse().unwrap());
    assert_eq!(c.bind_address, Some("0.0.0.0:10501".parse().unwrap()));
    assert_eq!(c.scheduler_url.to_url().as_str(), "http://192.0.2.1:10600/");
    assert_eq!(c.toolchain_cache_size, DEFAULT_TOOLCHAIN_CACHE_SIZE);
    assert_eq!(c.builder.max_containers, 4);
    assert_eq!(c.scheduler_token().unwrap(), "192.0.2.10:10501 s3cret");
    assert!(
        !format!("{c:?}").contains("s3cret"),
        "Debug redacts the token"
    );

    let insecure = EXAMPLE.replace(
        "type = \"token\"\ntoken = \"s3cret\"",
        "type = \"DANGEROUSLY_INSECURE\"",
    );
    let c = parse(&insecure).unwrap();
    assert!(c.is_insecure());
    assert_eq!(
        c.scheduler_token().unwrap(),
        "192.0.2.10:10501 dangerously_insecure_server"
    );
}

#[test]
fn a_json_file_reads_as_the_same_toml_file() {
    // sccache's try_read_config_file: JSON by the name's extension, else TOML.
    let json = r#"{
        "public_addr": "192.0.2.10:10501",
        "bind_address": "0.0.0.0:10501",
        "scheduler_url": "http://192.0.2.1:10600",
        "cache_dir": "/var/cache/jailbuilder",
        "scheduler_auth": { "type": "token", "token": "s3cret" },
        "builder": { "state_dir": "/var/lib/jailbuilder", "max_containers": 4 }
    }"#;
    let from_json = ServeConfig::parse(Path::new("server.json"), json).unwrap();
    let from_toml = parse(EXAMPLE).unwrap();
    let strip = |c: &ServeConfig| format!("{c:?}").replace(&format!("{:?}", c.path), "");
    assert_eq!(strip(&from_json), strip(&from_toml));
    assert_eq!(
        from_json.scheduler_token().unwrap(),
        "192.0.2.10:10501 s3cret"
    );
    // Unknown keys and bad values are refused in JSON too, by name.
    let e = ServeConfig::parse(
        Path::new("server.json"),
        &json.replace("\"max_containers\": 4", "\"max_contaners\": 4"),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("max_contaners"), "{e}");
    // The extension decides, not the content.
    assert!(ServeConfig::parse(Path::new("server.toml"), json).is_err());
    assert!(ServeConfig::parse(Path::new("server.json"), EXAMPLE).is_err());
}

#[test]
fn config_errors_name_the_key() {
    let cases = [
        (EXAMPLE.replace("cache_dir", "cach_dir"), "cach_dir"),
        (
            EXAMPLE.replace("max_containers = 4", "max_contaners = 4"),
            "max_contaners",
        ),
        (
            EXAMPLE.replace("[builder]", "[builder]\ntype = \"overlay\""),
            "type",
        ),
        (
            EXAMPLE.replace("token = \"s3cret\"", "token = \"s3cret\"\nextra = 1"),
            "extra",
        ),
        (
            EXAMPLE.replace("192.0.2.10:10501", "0.0.0.0:10501"),
            "public_addr",
        ),
        (
            EXAMPLE.replace(
                "cache_dir = ",
                "unhealthy_probe_interval_secs = 0\ncache_dir = ",
            ),
            "unhealthy_probe_interval_secs",
        ),
        (
            EXAMPLE.replace("/var/cache/jailbuilder", "cache"),
            "cache_dir",
        ),
        (
            EXAMPLE.replace("max_containers = 4", "max_containers = 0"),
            "max_containers",
        ),
        (EXAMPLE.replace("s3cret", ""), "scheduler_auth.token"),
        (
            EXAMPLE.replace("public_addr = \"192.0.2.10:10501\"\n", ""),
            "public_addr",
        ),
    ];
    for (text, key) in cases {
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains(key), "{key}: {e}");
        assert!(e.contains("server.toml"), "{key}: {e}");
    }
}

#[test]
fn a_jwt_for_another_server_is_refused() {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let jwt = |addr: &str| {
        format!(
            "{}.{}.sig",
            b64(r#"{"alg":"HS256","typ":"JWT"}"#),
            b64(&format!(r#"{{"exp":0,"server_id":"{addr}"}}"#))
        )
    };
    let with = |token: &str| {
        EXAMPLE.replace(
            "type = \"token\"\ntoken = \"s3cret\"",
            &format!("type = \"jwt_token\"\ntoken = \"{token}\""),
        )
    };
    let ok = jwt("192.0.2.10:10501");
    assert_eq!(parse(&with(&ok)).unwrap().scheduler_token().unwrap(), ok);
    let e = parse(&with(&jwt("192.0.2.11:10501")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("issued for server 192.0.2.11:10501"), "{e}");
    let e = parse(&with("nonsense")).unwrap_err().to_string();
    assert!(e.contains("scheduler_auth.token"), "{e}");
}

/// The adapter stays copyable into sccache's tree (README "Embedding in sccache-dist"): its
/// code names no path of this crate but `jailbuilder::` ones outside the `sccache` feature,
/// and no platform. The example compiles the file with every feature on, so it cannot see
/// a `jailbuilder::sccache::` or `jailbuilder::metrics::` path creep in; this does.
#[test]
fn the_adapter_file_names_only_what_a_copy_in_sccache_has() {
    let forbidden = [
        "crate::",
        "super::",
        "self::",
        "jailbuilder::sccache",
        "jailbuilder::metrics",
        "target_os",
        "feature =",
    ];
    let code = include_str!("builder.rs")
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//"));
    for (n, line) in code {
        for f in forbidden {
            assert!(
                !line.contains(f),
                "src/sccache/builder.rs:{}: {f:?} would not resolve in a copy: {line}",
                n + 1
            );
        }
    }
}

#[test]
fn run_job_concurrent_defers_complete_to_its_caller() {
    let h = harness(small_config());
    let tc = good_toolchain();
    h.assign(1, &tc);
    h.sched.take();
    let tar = tar_of(&[("src/a.c", b"int a;\n")]);
    let (res, pending) = h.server.run_job_concurrent(
        &h.sched,
        JobId(1),
        cc(&["-c", "a.c", "-o", "a.o"]),
        vec!["a.o".into()],
        &mut tar.as_slice(),
    );
    let c = complete(res);
    assert_eq!(output_bytes(&c.outputs[0].1), b"int a;\n");
    // Started went out (from its own thread, joined before returning); Complete waits for
    // the caller, and until then the job counts as a running handler.
    assert_eq!(h.sched.take(), [JobState::Started]);
    assert!(!h.server.wait_idle(std::time::Duration::from_millis(50)));
    pending.expect("a Complete to send").send(&h.sched);
    assert_eq!(h.sched.take(), [JobState::Complete]);
    assert!(h.server.wait_idle(std::time::Duration::from_secs(5)));

    // A scheduler that refuses Started fails the job, as run_job does, and gets no
    // Complete.
    struct Refusing(Scheduler);
    impl ServerOutgoing for Refusing {
        fn do_update_job_state(
            &self,
            job_id: JobId,
            state: JobState,
        ) -> sccache::errors::Result<UpdateJobStateResult> {
            self.0.do_update_job_state(job_id, state)?;
            Ok(UpdateJobStateResult::Fail {
                msg: "unknown job".into(),
            })
        }
    }
    h.assign(2, &tc);
    let refusing = Refusing(Scheduler::default());
    let (res, pending) = h.server.run_job_concurrent(
        &refusing,
        JobId(2),
        cc(&["-c", "a.c", "-o", "a.o"]),
        vec!["a.o".into()],
        &mut tar.as_slice(),
    );
    assert!(matches!(res, Err(ServerError::Scheduler { .. })));
    assert!(pending.is_none());
    assert_eq!(refusing.0.take(), [JobState::Started]);
    assert!(h.server.wait_idle(std::time::Duration::from_secs(5)));
}
