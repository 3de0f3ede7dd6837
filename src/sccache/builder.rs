//! [`JailBuilder`]: sccache-dist's `BuilderIncoming` over the engine.
//!
//! A copyable adapter: this file names only sccache's public API and jailbuilder's public
//! engine API (`jailbuilder::...`, never `crate::` or `super::`), and needs only the crates
//! `sccache`, `jailbuilder` (`default-features = false`), `log` and `thiserror`. So sccache's
//! own tree can copy it verbatim as a module of `sccache-dist` (README "Embedding in
//! sccache-dist"), which cannot depend on jailbuilder's `sccache` feature: that would be a
//! second copy of sccache, whose `BuilderIncoming` is another trait. Inside jailbuilder it is
//! `jailbuilder::sccache::JailBuilder` (lib.rs's `extern crate self as jailbuilder` makes
//! the paths resolve); `examples/sccache_dist_server.rs` includes the same file by `#[path]`,
//! so CI proves it builds against the public API alone.

use std::fmt;
use std::io::{self, BufReader, Read};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use sccache::dist::{
    BuildResult, BuilderIncoming, CompileCommand, InputsReader, JobId, OutputData, ProcessOutput,
    TcCache, Toolchain,
};
use sccache::lru_disk_cache::Error as LruError;

use jailbuilder::backend::{Backend, ExecOutcome, ExitStatus, InvalidToolchainId, ToolchainId};
use jailbuilder::engine::{BuildError, BuildRequest, Engine, OutputEncoder, ToolchainSource};
use jailbuilder::exec::CommandSpec;

/// Why one job failed. Never a panic: every request-data problem ends up here.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    ToolchainId(#[from] InvalidToolchainId),
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The sandbox's own limit ended the compile, which the client (without that limit)
    /// may well complete: the job fails, so the stock client compiles locally (a 5xx from
    /// `run_job` makes sccache 0.19 fall back, `compiler.rs` `dist_or_local_compile`)
    /// instead of reporting a compile error.
    #[error(
        "the compile exceeded the build server's {limit}; the client should compile it locally"
    )]
    SandboxLimit { limit: String },
}

impl JobError {
    /// True when the request was at fault (bad toolchain, bad command, bad inputs); false
    /// when the builder was (a backend failure, shutting down).
    pub fn is_client_error(&self) -> bool {
        match self {
            JobError::ToolchainId(_) => true,
            JobError::Build(e) => e.is_client_error(),
            // Neither the request's fault nor the builder's; not a backend failure either.
            JobError::SandboxLimit { .. } => true,
        }
    }
}

/// The job id for logs: `job 42`, or `job -` when sccache did not say (the
/// `BuilderIncoming` trait carries none).
#[derive(Clone, Copy)]
struct JobLabel(Option<JobId>);

impl fmt::Display for JobLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, "job {id}"),
            None => f.write_str("job -"),
        }
    }
}

/// A build server's builder: runs sccache-dist jobs in jailbuilder sandboxes.
///
/// Plug it into sccache-dist's server as a `Box<dyn BuilderIncoming>`, or run it behind
/// `jailbuilder serve`'s server (`jailbuilder::sccache::JailServer`). Cheap to clone (the
/// engine is shared).
pub struct JailBuilder<B: Backend> {
    engine: Arc<Engine<B>>,
}

impl<B: Backend> Clone for JailBuilder<B> {
    fn clone(&self) -> Self {
        JailBuilder {
            engine: Arc::clone(&self.engine),
        }
    }
}

/// The toolchain archive in sccache's toolchain cache, opened only if the engine has to
/// build the image. The cache lock is held only while opening the file, never while the
/// archive is unpacked (an open file survives its eviction from the cache).
struct CachedToolchain<'a> {
    cache: &'a Mutex<TcCache>,
    toolchain: &'a Toolchain,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ToolchainSource for CachedToolchain<'_> {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        let file = lock(self.cache)
            .get_file(self.toolchain)
            .map_err(|e| match e {
                LruError::FileNotInCache => io::Error::new(
                    io::ErrorKind::NotFound,
                    "not in the toolchain cache (never submitted, or evicted since)",
                ),
                LruError::Io(e) => e,
                LruError::FileTooLarge => io::Error::other(e.to_string()),
            })?;
        Ok(Box::new(BufReader::new(file)))
    }
}

/// Outputs as sccache's `OutputData`, compressed while the engine streams the file in:
/// `OutputData::try_from_reader` itself (zlib, `Compression::fast()`, the uncompressed
/// length it counted), so the bytes are exactly what stock sccache-dist's builders send
/// and the stock client's `OutputData::into_reader` inflates. Memory per output: its
/// compressed size plus the codec's buffers.
#[derive(Clone, Copy, Debug, Default)]
pub struct SccacheOutputs;

impl OutputEncoder for SccacheOutputs {
    type Encoded = OutputData;

    fn encode(&self, file: &mut dyn Read, _size: u64) -> io::Result<OutputData> {
        OutputData::try_from_reader(file)
    }
}

/// sccache-dist's `CompileCommand` as the engine's command. Environment variables whose
/// name is empty or contains '=' are dropped with a warning, as sccache-dist's builders do.
pub(crate) fn command_spec(command: CompileCommand) -> CommandSpec {
    let CompileCommand {
        executable,
        arguments,
        env_vars,
        cwd,
    } = command;
    let env_vars = env_vars
        .into_iter()
        .filter(|(k, _)| {
            let ok = !k.is_empty() && !k.contains('=');
            if !ok {
                log::warn!("skipping environment variable {k:?}: invalid name");
            }
            ok
        })
        .collect();
    CommandSpec {
        executable,
        arguments,
        env_vars,
        cwd,
    }
}

/// What the client sees of the compile: the exit code as a shell reports it (128 + signal
/// for a killed compiler; sccache's protocol carries no signals), stdout and stderr, with a
/// note on stderr when jailbuilder cut or killed something.
pub(crate) fn process_output(exec: ExecOutcome, timeout_secs: u64) -> ProcessOutput {
    let code = exec.status.code();
    let mut stderr = exec.stderr;
    let mut note = |msg: String| {
        if !stderr.is_empty() && !stderr.ends_with(b"\n") {
            stderr.push(b'\n');
        }
        stderr.extend_from_slice(b"jailbuilder: ");
        stderr.extend_from_slice(msg.as_bytes());
        stderr.push(b'\n');
    };
    if exec.stdout_truncated {
        note("stdout was truncated at the build server's limit".into());
    }
    if exec.stderr_truncated {
        note("stderr was truncated at the build server's limit".into());
    }
    match exec.status {
        ExitStatus::Code(_) => {}
        ExitStatus::Signal(s) => note(format!("the compiler was killed by signal {s}")),
        ExitStatus::TimedOut => note(format!(
            "the compile exceeded the build server's time limit ({timeout_secs} s) and was killed"
        )),
    }
    ProcessOutput {
        code,
        stdout: exec.stdout,
        stderr,
    }
}

impl<B: Backend> JailBuilder<B> {
    pub fn new(engine: Engine<B>) -> Self {
        Self::from_arc(Arc::new(engine))
    }

    /// A builder over an engine shared with its owner (who may shut it down).
    pub fn from_arc(engine: Arc<Engine<B>>) -> Self {
        JailBuilder { engine }
    }

    pub fn engine(&self) -> &Arc<Engine<B>> {
        &self.engine
    }

    /// Runs one sccache-dist job: the toolchain comes from `cache` (opened only if its image
    /// must be built), `inputs` is the plain tar sccache's http layer already inflated.
    /// A toolchain archive the backend finds unusable is removed from `cache`, as
    /// sccache-dist's builders do, so that the next client submits it again.
    /// Logs one line per job at info (debug adds the command).
    pub fn build(
        &self,
        job: Option<JobId>,
        toolchain: &Toolchain,
        command: CompileCommand,
        outputs: Vec<String>,
        inputs: &mut dyn Read,
        cache: &Mutex<TcCache>,
    ) -> Result<BuildResult, JobError> {
        let label = JobLabel(job);
        let start = Instant::now();
        let tc_short = toolchain
            .archive_id
            .get(..12)
            .unwrap_or(&toolchain.archive_id);
        log::debug!(
            "{label}: toolchain {} executable {:?} arguments {:?} cwd {:?} outputs {:?}",
            toolchain.archive_id,
            command.executable,
            command.arguments,
            command.cwd,
            outputs
        );
        let result = self.build_inner(toolchain, command, outputs, inputs, cache);
        match &result {
            Ok((res, t)) => {
                let bytes: u64 = res.outputs.iter().map(|(_, d)| d.lens().actual).sum();
                log::info!(
                    "{label} toolchain {tc_short}: exit {} in {:.3}s (image {:.3}s, container {:.3}s, unpack {:.3}s, exec {:.3}s, outputs {:.3}s); {} outputs, {bytes} bytes",
                    res.output.code,
                    t.total.as_secs_f64(),
                    t.image.as_secs_f64(),
                    t.container.as_secs_f64(),
                    t.unpack.as_secs_f64(),
                    t.exec.as_secs_f64(),
                    t.outputs.as_secs_f64(),
                    res.outputs.len(),
                );
                log::debug!(
                    "{label}: build timing: image {:.3} ms, container {:.3} ms, unpack {:.3} ms, exec {:.3} ms, outputs {:.3} ms, total {:.3} ms",
                    t.image.as_secs_f64() * 1e3,
                    t.container.as_secs_f64() * 1e3,
                    t.unpack.as_secs_f64() * 1e3,
                    t.exec.as_secs_f64() * 1e3,
                    t.outputs.as_secs_f64() * 1e3,
                    t.total.as_secs_f64() * 1e3,
                );
            }
            Err(e @ JobError::SandboxLimit { .. }) => log::warn!(
                "{label} toolchain {tc_short}: after {:.3}s: {e}",
                start.elapsed().as_secs_f64()
            ),
            Err(e) if e.is_client_error() => log::info!(
                "{label} toolchain {tc_short}: failed after {:.3}s (request error): {e}",
                start.elapsed().as_secs_f64()
            ),
            Err(e) => log::warn!(
                "{label} toolchain {tc_short}: failed after {:.3}s (builder error): {e}",
                start.elapsed().as_secs_f64()
            ),
        }
        result.map(|(res, _)| res)
    }

    fn build_inner(
        &self,
        toolchain: &Toolchain,
        command: CompileCommand,
        outputs: Vec<String>,
        inputs: &mut dyn Read,
        cache: &Mutex<TcCache>,
    ) -> Result<(BuildResult, jailbuilder::engine::PhaseTimings), JobError> {
        let id = ToolchainId::new(toolchain.archive_id.as_str())?;
        let source = CachedToolchain { cache, toolchain };
        let outcome = self.engine.build_encoded(
            BuildRequest {
                toolchain: id,
                toolchain_archive: &source,
                inputs,
                command: command_spec(command),
                outputs,
            },
            &SccacheOutputs,
            None,
        );
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                if let BuildError::Toolchain { id, .. } = &e {
                    log::warn!("toolchain {id} is unusable: removing it from the toolchain cache");
                    if let Err(re) = lock(cache).remove(toolchain) {
                        log::error!("removing the unusable toolchain {id} from the cache: {re}");
                    }
                }
                return Err(e.into());
            }
        };
        let outputs = outcome
            .outputs
            .into_iter()
            .map(|o| (o.path, o.data))
            .collect();
        let timeout = self.engine.config().limits.timeout.as_secs();
        // A limit of the sandbox's own that ended the compile fails the job: the time
        // limit, and the memory or process limit where the backend can tell (Linux with a
        // cgroup v2 per container reads its OOM-kill and pids.max counters). With rlimits
        // only, a compiler that hits RLIMIT_AS or RLIMIT_NPROC sees ENOMEM/EAGAIN and fails
        // or dies in its own way: that keeps its exit code (128 + signal), as the stock
        // overlay builder reports a compiler's own signal through bwrap.
        if outcome.exec.status == ExitStatus::TimedOut {
            return Err(JobError::SandboxLimit {
                limit: format!("time limit (timeout_secs = {timeout})"),
            });
        }
        if let Some(hit) = outcome.exec.limit_hit {
            return Err(JobError::SandboxLimit {
                limit: hit.to_string(),
            });
        }
        Ok((
            BuildResult {
                output: process_output(outcome.exec, timeout),
                outputs,
            },
            outcome.timings,
        ))
    }
}

impl<B: Backend> BuilderIncoming for JailBuilder<B> {
    fn run_build(
        &self,
        toolchain: Toolchain,
        command: CompileCommand,
        outputs: Vec<String>,
        mut inputs_rdr: InputsReader<'_>,
        cache: &Mutex<TcCache>,
    ) -> Result<BuildResult, sccache::errors::Error> {
        self.build(None, &toolchain, command, outputs, &mut inputs_rdr, cache)
            .map_err(sccache::errors::Error::new)
    }
}
