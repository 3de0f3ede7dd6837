//! Outputs stream into sccache's compressed form with bounded memory (issue 10 item 5):
//! through `JailBuilder` (the sccache glue, so sccache's own zlib encoder) over the real
//! Linux backend. Alone in its binary so that no other test's allocations move this
//! process's peak RSS (VmHWM), which it measures.
#![cfg(all(target_os = "linux", feature = "sccache"))]

mod common;

use std::io::{self, Read, Write};
use std::sync::Mutex;

use ::sccache::dist::{BuildResult, CompileCommand, OutputData, TcCache, Toolchain};
use common::*;
use jailbuilder::engine::{BuildError, EngineConfig};
use jailbuilder::linux::LinuxBackend;
use jailbuilder::sccache::{JailBuilder, JobError};

const MIB: u64 = 1 << 20;

/// A field of /proc/self/status, in bytes.
fn status_bytes(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|l| l.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from /proc/self/status"));
    kb << 10
}

/// Resets VmHWM to the current RSS (proc(5), /proc/pid/clear_refs, "5"), so the peak read
/// later is this job's alone; returns the RSS it starts from.
fn reset_peak() -> u64 {
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting VmHWM (Linux >= 4.0)");
    status_bytes("VmRSS:")
}

/// The stored form of `OutputData` (its fields are private): zlib bytes, inflated length.
fn parts(d: &OutputData) -> (Vec<u8>, u64) {
    serde_json::from_value(serde_json::to_value(d).unwrap()).unwrap()
}

/// Inflates `d` in a stream and returns (length, whether every byte was zero).
fn inflate_zeros(d: &OutputData) -> (u64, bool) {
    struct Zeros(u64, bool);
    impl Write for Zeros {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0 += b.len() as u64;
            self.1 &= b.iter().all(|x| *x == 0);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let (z, _) = parts(d);
    let mut sink = Zeros(0, true);
    io::copy(&mut flate2::read::ZlibDecoder::new(z.as_slice()), &mut sink).unwrap();
    (sink.0, sink.1)
}

struct Rig {
    builder: JailBuilder<LinuxBackend>,
    toolchain: Toolchain,
    cache: Mutex<TcCache>,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::Builder::new()
            .prefix("jb-outputs-mem")
            .tempdir()
            .unwrap();
        let config = EngineConfig {
            max_output_bytes: 512 * MIB,
            ..engine_config()
        };
        let backend = LinuxBackend::new(linux_config(&dir.path().join("state"))).unwrap();
        let engine = jailbuilder::engine::Engine::start(backend, config).unwrap();
        let archive = toolchain();
        let toolchain = Toolchain {
            archive_id: ::sccache::util::Digest::reader_sync(archive.as_slice()).unwrap(),
        };
        let mut cache = TcCache::new(&dir.path().join("tc"), 1 << 30).unwrap();
        cache
            .insert_with(&toolchain, |mut f| f.write_all(&archive))
            .unwrap();
        Rig {
            builder: JailBuilder::new(engine),
            toolchain,
            cache: Mutex::new(cache),
            _dir: dir,
        }
    }

    fn job(&self, script: &str, outputs: &[&str]) -> Result<BuildResult, JobError> {
        let inputs = tar(&[]);
        self.builder.build(
            None,
            &self.toolchain,
            CompileCommand {
                executable: BUSYBOX.into(),
                arguments: vec!["sh".into(), "-c".into(), script.into()],
                env_vars: vec![("PATH".into(), "/bin".into())],
                cwd: "/work".into(),
            },
            outputs.iter().map(|s| s.to_string()).collect(),
            &mut inputs.as_slice(),
            &self.cache,
        )
    }
}

fn refused(r: Result<BuildResult, JobError>) -> JobError {
    match r {
        Ok(res) => panic!("not refused: {} outputs returned", res.outputs.len()),
        Err(e) => e,
    }
}

/// A sparse 256 MiB file: no data blocks, so the compile is instant and the sandbox's
/// small tmpfs holds any number of them; the host still reads 256 MiB of zeros.
fn sparse(name: &str) -> String {
    format!("dd if=/dev/null of=/work/{name} bs=1048576 count=0 seek=256 2>/dev/null")
}

#[test]
fn outputs_stream_into_sccache_output_data_with_bounded_memory() {
    require_root!();
    let rig = Rig::new();
    // The toolchain image and a container exist before anything is measured.
    rig.job("echo warm > /work/w.o", &["w.o"]).unwrap();
    rig.builder.engine().wait_idle();

    let start = reset_peak();
    let script = format!(
        "{} && echo 'big.o: big.c' > /work/big.d && printf obj > /work/small.o",
        sparse("big.o")
    );
    let res = rig
        .job(&script, &["big.o", "big.d", "small.o", "none.dwo"])
        .unwrap();
    let growth = status_bytes("VmHWM:").saturating_sub(start);
    eprintln!(
        "peak RSS growth reading a 256 MiB output: {} KiB",
        growth >> 10
    );
    assert_eq!(
        res.output.code,
        0,
        "{:?}",
        String::from_utf8_lossy(&res.output.stderr)
    );
    let names: Vec<&str> = res.outputs.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(names, ["big.o", "big.d", "small.o"]);
    // The memory bound: the old code held the whole file (256 MiB) before compressing.
    assert!(growth < 64 * MIB, "peak RSS grew by {} MiB", growth / MIB);
    // The content arrives whole, and the small outputs are byte for byte what sccache's
    // own `OutputData::try_from_reader` (the stock builders' encoder) makes of them.
    assert_eq!(inflate_zeros(&res.outputs[0].1), (256 * MIB, true));
    assert_eq!(res.outputs[0].1.lens().actual, 256 * MIB);
    for (i, content) in [(1, &b"big.o: big.c\n"[..]), (2, b"obj")] {
        let stock = OutputData::try_from_reader(content).unwrap();
        assert_eq!(
            parts(&res.outputs[i].1),
            parts(&stock),
            "{}",
            res.outputs[i].0
        );
        let mut inflated = Vec::new();
        flate2::read::ZlibDecoder::new(parts(&stock).0.as_slice())
            .read_to_end(&mut inflated)
            .unwrap();
        assert_eq!(inflated, content);
    }
    drop(res);

    // One file listed several times, however spelled, is refused before anything runs.
    let same = [
        "big.o",
        "/work/big.o",
        "./big.o",
        "/work//big.o",
        "/work/./big.o",
        "big.o/",
        "big.o",
        "big.o",
    ];
    let err = refused(rig.job(&sparse("big.o"), &same));
    assert!(
        matches!(
            &err,
            JobError::Build(BuildError::DuplicateOutput { path, first })
                if path == "/work/big.o" && first == "big.o"
        ),
        "{err}"
    );
    assert!(err.is_client_error());

    // 20 distinct ones (5 GiB) pass the 1 GiB total: refused at the fifth, which is not read.
    let start = reset_peak();
    let names: Vec<String> = (0..20).map(|i| format!("big{i}.o")).collect();
    let script = names
        .iter()
        .map(|n| sparse(n))
        .collect::<Vec<_>>()
        .join(" && ");
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let err = refused(rig.job(&script, &refs));
    let growth = status_bytes("VmHWM:").saturating_sub(start);
    eprintln!("20 x 256 MiB: {err} (peak RSS growth {} KiB)", growth >> 10);
    assert!(
        matches!(
            &err,
            JobError::Build(BuildError::OutputsTooLarge { path, limit })
                if path == "big4.o" && *limit == 1u64 << 30
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("the outputs together exceed the limit of 1073741824 bytes"),
        "{err}"
    );
    assert!(err.is_client_error());
    assert!(growth < 64 * MIB, "peak RSS grew by {} MiB", growth / MIB);

    // The builder still serves.
    let res = rig.job("printf ok > /work/ok.o", &["ok.o"]).unwrap();
    assert_eq!(
        parts(&res.outputs[0].1),
        parts(&OutputData::try_from_reader(&b"ok"[..]).unwrap())
    );
}
