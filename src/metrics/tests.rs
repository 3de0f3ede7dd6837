//! The text rendering, over builds through the engine's test backend.

use std::fs;
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::backend::{BuildUser, ExecOutcome, ExitStatus, ToolchainId};
use crate::engine::test_backend::{outcome, toolchain_tgz, Shared, TestBackend, TestError};
use crate::engine::{BuildRequest, Engine, EngineConfig};
use crate::exec::{CommandSpec, PreparedCommand};

/// Writes "o" to `out.o` in cwd, or fails when asked (`--fail`).
fn cc(root: &Path, cmd: &PreparedCommand) -> Result<ExecOutcome, TestError> {
    let spec = cmd.spec();
    if spec.arguments.iter().any(|a| a == "--fail") {
        return Ok(outcome(ExitStatus::Code(1), b"", b"error"));
    }
    fs::write(
        root.join(spec.cwd.trim_start_matches('/')).join("out.o"),
        b"o",
    )
    .unwrap();
    Ok(outcome(ExitStatus::Code(0), b"", b""))
}

struct Fixture {
    engine: Engine<TestBackend>,
    shared: std::sync::Arc<Shared>,
    tc: Vec<u8>,
    _tmp: tempfile::TempDir,
}

impl Fixture {
    fn new(max_images: usize) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let (backend, shared) = TestBackend::new(tmp.path().to_path_buf(), cc);
        let config = EngineConfig {
            max_containers: 4,
            max_containers_per_toolchain: 4,
            warm_per_toolchain: 1,
            max_images,
            recycler_threads: 1,
            build_user_base: BuildUser {
                uid: 4242,
                gid: 4242,
            },
            shutdown_grace: Duration::from_secs(5),
            ..EngineConfig::default()
        };
        Fixture {
            engine: Engine::start(backend, config).unwrap(),
            shared,
            tc: toolchain_tgz(),
            _tmp: tmp,
        }
    }

    fn build(&self, tc: &str, args: &[&str], output: &str) -> bool {
        let inputs = tar::Builder::new(Vec::new()).into_inner().unwrap();
        let r = self.engine.build(BuildRequest {
            toolchain: ToolchainId::new(tc).unwrap(),
            toolchain_archive: &self.tc,
            inputs: &mut &inputs[..],
            command: CommandSpec {
                executable: "/usr/bin/cc".into(),
                arguments: args.iter().map(|s| s.to_string()).collect(),
                env_vars: vec![],
                cwd: "/work".into(),
            },
            outputs: vec![output.into()],
        });
        self.engine.wait_idle();
        r.is_ok()
    }

    fn fault(&self, step: &'static str) {
        self.shared.faults.lock().unwrap().insert(step, 0);
    }

    fn scrape(&self, server: Option<ServerStats>) -> String {
        render(&Snapshot {
            engine: self.engine.stats(),
            server,
        })
    }
}

fn has_line(text: &str, line: &str) {
    assert!(
        text.lines().any(|l| l == line),
        "no line {line:?} in:\n{text}"
    );
}

#[test]
fn jobs_phases_pool_and_health_are_rendered() {
    let f = Fixture::new(4);
    assert!(f.build("tc1", &[], "out.o"));
    assert!(f.build("tc1", &[], "out.o"));
    assert!(
        f.build("tc1", &["--fail"], "out.o"),
        "compile failures return"
    );
    assert!(!f.build("tc1", &[], "obj/.."), "a bad output path");
    f.fault("exec");
    assert!(!f.build("tc1", &[], "out.o"), "a backend failure");
    f.fault("reset");
    assert!(f.build("tc1", &[], "out.o"));

    let text = f.scrape(Some(ServerStats {
        assignments_refused: 2,
        uploads_in_flight: 1,
        uploads_staged_bytes: 4096,
        toolchain_cache_bytes: 12345,
        toolchain_cache_archives: 3,
    }));
    has_line(&text, "# TYPE jailbuilder_jobs_total counter");
    for (outcome, n) in [
        ("ok", 3),
        ("compile_failed", 1),
        ("job_error", 1),
        ("backend_error", 1),
        ("cancelled", 0),
        ("shutting_down", 0),
        ("refused", 2),
    ] {
        has_line(
            &text,
            &format!("jailbuilder_jobs_total{{outcome=\"{outcome}\"}} {n}"),
        );
    }

    has_line(&text, "# TYPE jailbuilder_build_phase_seconds histogram");
    for phase in ["image", "container", "unpack", "exec", "outputs", "total"] {
        let bucket = format!("jailbuilder_build_phase_seconds_bucket{{phase=\"{phase}\",");
        assert_eq!(
            text.lines().filter(|l| l.starts_with(&bucket)).count(),
            PHASE_BUCKETS_SECS.len() + 1,
            "{phase}: 18 bounds and +Inf"
        );
        // The builds that ran: 3 ok and the compile failure.
        has_line(&text, &format!("{bucket}le=\"+Inf\"}} 4"));
        has_line(
            &text,
            &format!("jailbuilder_build_phase_seconds_count{{phase=\"{phase}\"}} 4"),
        );
    }
    // Cumulative buckets never decrease and end at the count.
    let total: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with("jailbuilder_build_phase_seconds_bucket{phase=\"total\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(total.windows(2).all(|w| w[0] <= w[1]), "{total:?}");

    has_line(&text, "# TYPE jailbuilder_pool_containers gauge");
    let s = f.engine.stats();
    let t = &s.toolchains[0];
    has_line(
        &text,
        &format!(
            "jailbuilder_pool_containers{{toolchain=\"tc1\",state=\"ready\"}} {}",
            t.ready
        ),
    );
    has_line(
        &text,
        "jailbuilder_pool_containers{toolchain=\"tc1\",state=\"busy\"} 0",
    );
    has_line(
        &text,
        "jailbuilder_pool_containers{toolchain=\"tc1\",state=\"recycling\"} 0",
    );
    assert!(t.ready >= 1);
    has_line(&text, "jailbuilder_pool_images 1");
    has_line(&text, "jailbuilder_images_created_total 1");
    has_line(
        &text,
        "jailbuilder_container_resets_total{result=\"failed\"} 1",
    );
    has_line(
        &text,
        &format!(
            "jailbuilder_container_resets_total{{result=\"ok\"}} {}",
            s.containers_reset
        ),
    );
    assert!(s.containers_reset >= 4, "{s:?}");
    has_line(
        &text,
        "jailbuilder_container_destroys_total{result=\"ok\"} 1",
    );
    has_line(
        &text,
        "jailbuilder_container_destroys_total{result=\"failed\"} 0",
    );
    has_line(&text, "# TYPE jailbuilder_healthy gauge");
    has_line(&text, "jailbuilder_healthy 1");
    has_line(&text, "jailbuilder_toolchain_cache_bytes 12345");
    has_line(&text, "jailbuilder_toolchain_cache_archives 3");
    has_line(&text, "jailbuilder_uploads_in_flight 1");
    has_line(&text, "jailbuilder_uploads_staged_bytes 4096");

    // Outside a server: no server series, refused 0.
    let text = f.scrape(None);
    has_line(&text, "jailbuilder_jobs_total{outcome=\"refused\"} 0");
    assert!(!text.contains("uploads_in_flight"), "{text}");
}

#[test]
fn an_evicted_toolchain_loses_its_series_and_health_drops_to_zero() {
    let f = Fixture::new(1);
    assert!(f.build("first", &[], "out.o"));
    let text = f.scrape(None);
    assert!(text.contains("toolchain=\"first\""), "{text}");
    assert!(f.build("second", &[], "out.o"));
    let text = f.scrape(None);
    assert!(!text.contains("toolchain=\"first\""), "{text}");
    has_line(
        &text,
        "jailbuilder_pool_containers{toolchain=\"second\",state=\"busy\"} 0",
    );
    has_line(&text, "jailbuilder_images_evicted_total 1");
    has_line(&text, "jailbuilder_pool_images 1");

    // `unhealthy_after` (5) backend failures in a row.
    for _ in 0..5 {
        f.fault("exec");
        assert!(!f.build("second", &[], "out.o"));
    }
    let text = f.scrape(None);
    has_line(&text, "jailbuilder_healthy 0");
    has_line(&text, "jailbuilder_jobs_total{outcome=\"backend_error\"} 5");
}

#[test]
fn the_summary_line_covers_the_interval_and_is_skipped_when_idle() {
    let f = Fixture::new(4);
    let start = f.engine.stats();
    assert_eq!(summary_line(&start, &start), None);
    assert!(f.build("tc1", &[], "out.o"));
    let mid = f.engine.stats();
    assert!(f.build("tc1", &["--fail"], "out.o"));
    assert!(f.build("tc1", &[], "out.o"));
    let now = f.engine.stats();
    let line = summary_line(&mid, &now).unwrap();
    assert!(
        line.starts_with(
            "jobs: 1 ok, 1 failed in the last interval (2 ok, 1 failed since start); p50 total <= "
        ),
        "{line}"
    );
    assert!(line.ends_with("busy, 1 images; healthy"), "{line}");
    assert_eq!(summary_line(&now, &now), None);
}
