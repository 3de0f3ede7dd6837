//! [`JailServer`]: sccache-dist's `ServerIncoming` (the build server's request handlers)
//! around a [`JailBuilder`], with the semantics of `sccache-dist server` (sccache 0.19,
//! `src/bin/sccache-dist/main.rs`, `impl ServerIncoming for Server`), and differences:
//!
//! - on `serve`'s HTTP side ([`JailServer::run_job_concurrent`]) the scheduler's Started
//!   goes out while the build runs and Complete beside the response's write, so
//!   neither round trip is part of the compile's latency; a failed Started still fails the
//!   job, a failed Complete is logged and the response goes out regardless (the stock
//!   server answers 500 then, discarding the compile's result);
//! - a toolchain upload is written to a file outside the toolchain-cache lock and then
//!   moved in, so one slow upload does not block every other job's toolchain lookup;
//!   uploads larger than the cache are refused (`CannotCache`) instead of being read to the
//!   end; an upload whose digest does not match is removed again;
//! - a job assigned twice, or a job the client never claims, cannot panic or leak: entries
//!   older than [`UNCLAIMED_JOB_TIMEOUT`] are dropped;
//! - draining (shutdown) and an unhealthy engine refuse new assignments: sccache's protocol
//!   has no health field, so a refused assignment is how the scheduler learns (it marks
//!   the server as erroring and prefers others for five minutes; the client compiles
//!   locally). While unhealthy, one assignment per [`UNHEALTHY_PROBE_INTERVAL`] is still
//!   accepted so that a recovered backend can prove itself;
//! - every toolchain id is validated ([`ToolchainId::new`]) before any cache or file-system
//!   call: sccache's `TcCache` stores an archive at `<cache>/tc/<id[0]>/<id[1]>/<id>`;
//! - uploads have budgets ([`UploadLimits`]): one upload at most `per_upload` bytes (and
//!   never more than the cache), all uploads being staged at once at most `staged_total`
//!   bytes; an upload that would exceed either is refused (`CannotCache`) and its staging
//!   file removed.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sccache::dist::{
    AssignJobResult, CompileCommand, InputsReader, JobComplete, JobId, JobState, RunJobResult,
    ServerIncoming, ServerOutgoing, SubmitToolchainResult, TcCache, Toolchain, ToolchainReader,
};

use super::builder::JailBuilder;
use crate::backend::{Backend, ToolchainId};

/// Assignments not claimed by a client within this time are forgotten (the scheduler gives
/// up on them after at most 300 s).
pub const UNCLAIMED_JOB_TIMEOUT: Duration = Duration::from_secs(600);
/// While the engine is unhealthy, one assignment per interval is accepted as a probe (the
/// default; [`JailServer::set_unhealthy_probe_interval`], `unhealthy_probe_interval_secs`).
pub const UNHEALTHY_PROBE_INTERVAL: Duration = Duration::from_secs(60);
/// Default [`UploadLimits::per_upload`]: 2 GiB.
pub const DEFAULT_MAX_TOOLCHAIN_UPLOAD: u64 = 2 << 30;
/// Default [`UploadLimits::staged_total`]: 4 GiB.
pub const DEFAULT_MAX_STAGED_UPLOADS: u64 = 4 << 30;

/// The budgets of toolchain uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimits {
    /// One upload's bytes (further capped by the toolchain cache size).
    pub per_upload: u64,
    /// The bytes of all uploads staged at the same time.
    pub staged_total: u64,
}

impl Default for UploadLimits {
    fn default() -> Self {
        UploadLimits {
            per_upload: DEFAULT_MAX_TOOLCHAIN_UPLOAD,
            staged_total: DEFAULT_MAX_STAGED_UPLOADS,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("creating the toolchain cache in {path}: {message}")]
    Cache { path: PathBuf, message: String },
    #[error("preparing {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the build server is shutting down")]
    Draining,
    #[error("the builder is unhealthy (repeated backend failures); refusing jobs")]
    Unhealthy,
    #[error("updating the state of job {job} with the scheduler: {message}")]
    Scheduler { job: JobId, message: String },
    #[error(transparent)]
    Job(#[from] super::JobError),
}

struct Assigned {
    toolchain: Toolchain,
    at: Instant,
    /// The scheduler knows the job as Ready (not Pending).
    ready: bool,
}

struct Inner<B: Backend> {
    builder: JailBuilder<B>,
    cache: Mutex<TcCache>,
    cache_size: u64,
    uploads: UploadLimits,
    /// Bytes reserved by uploads being staged now.
    staged: Mutex<u64>,
    /// Uploads being received now (for metrics).
    uploads_in_flight: AtomicU64,
    /// Assignments refused (draining, unhealthy), for metrics.
    refused: AtomicU64,
    incoming: PathBuf,
    jobs: Mutex<HashMap<JobId, Assigned>>,
    draining: AtomicBool,
    /// Request handlers running now (assign, submit, run), for an orderly shutdown.
    busy: Mutex<usize>,
    idle: Condvar,
    health: Mutex<HealthState>,
}

struct HealthState {
    healthy: bool,
    last_probe: Option<Instant>,
    probe_interval: Duration,
}

/// The build server's request handlers. Cheap to clone: clones share one server, so the
/// owner keeps a handle to [`JailServer::drain`] after handing one to the HTTP side
/// ([`super::http::HttpServer`], or sccache's `http::Server` through [`ServerIncoming`]).
pub struct JailServer<B: Backend> {
    inner: Arc<Inner<B>>,
}

impl<B: Backend> Clone for JailServer<B> {
    fn clone(&self) -> Self {
        JailServer {
            inner: Arc::clone(&self.inner),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts a running handler for [`JailServer::wait_idle`]. Owns its share of the server,
/// so that it can outlive the handler call ([`CompletePending`]).
struct Busy<B: Backend>(Arc<Inner<B>>);

impl<B: Backend> Busy<B> {
    fn enter(inner: &Arc<Inner<B>>) -> Self {
        *lock(&inner.busy) += 1;
        Busy(Arc::clone(inner))
    }
}

impl<B: Backend> Drop for Busy<B> {
    fn drop(&mut self) {
        let mut n = lock(&self.0.busy);
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.0.idle.notify_all();
        }
    }
}

/// The scheduler's Complete for a job whose response is on its way: the HTTP side sends
/// it on a thread of its own while the response is written ([`CompletePending::send`]),
/// so the scheduler round trip is not part of the compile's latency, and a client slow to
/// read its response cannot hold the job open at the scheduler. Counts as a running handler until
/// sent (shutdown waits for it).
#[must_use = "the scheduler must learn that the job is complete"]
pub struct CompletePending<B: Backend> {
    job: JobId,
    _busy: Busy<B>,
}

impl<B: Backend> CompletePending<B> {
    /// Sends Complete; a failure is logged (the client gets its result regardless).
    pub fn send(self, requester: &dyn ServerOutgoing) {
        let start = Instant::now();
        match update_state(requester, self.job, JobState::Complete) {
            Ok(()) => log::debug!(
                "job {}: scheduler Complete {:.3} ms (beside the response)",
                self.job,
                super::http::ms(start.elapsed())
            ),
            Err(e) => log::warn!("job {}: {e}", self.job),
        }
    }
}

fn to_sccache(e: ServerError) -> sccache::errors::Error {
    sccache::errors::Error::new(e)
}

fn update_state(
    requester: &dyn ServerOutgoing,
    job: JobId,
    state: JobState,
) -> Result<(), ServerError> {
    match requester.do_update_job_state(job, state) {
        Ok(sccache::dist::UpdateJobStateResult::Success) => Ok(()),
        Ok(sccache::dist::UpdateJobStateResult::Fail { msg }) => {
            Err(ServerError::Scheduler { job, message: msg })
        }
        Err(e) => Err(ServerError::Scheduler {
            job,
            message: crate::error_chain::render(e.as_ref()),
        }),
    }
}

impl<B: Backend> JailServer<B> {
    /// A server whose toolchain cache lives in `<cache_dir>/tc` (as sccache-dist's) and
    /// holds up to `toolchain_cache_size` bytes; uploads are staged in
    /// `<cache_dir>/incoming`, emptied here.
    pub fn new(
        builder: JailBuilder<B>,
        cache_dir: &Path,
        toolchain_cache_size: u64,
    ) -> Result<Self, ServerError> {
        Self::with_upload_limits(
            builder,
            cache_dir,
            toolchain_cache_size,
            UploadLimits::default(),
        )
    }

    /// [`JailServer::new`] with upload budgets.
    pub fn with_upload_limits(
        builder: JailBuilder<B>,
        cache_dir: &Path,
        toolchain_cache_size: u64,
        uploads: UploadLimits,
    ) -> Result<Self, ServerError> {
        let tc_dir = cache_dir.join("tc");
        let cache =
            TcCache::new(&tc_dir, toolchain_cache_size).map_err(|e| ServerError::Cache {
                path: tc_dir.clone(),
                message: crate::error_chain::render(e.as_ref()),
            })?;
        let incoming = cache_dir.join("incoming");
        let dir_err = |source| ServerError::Dir {
            path: incoming.clone(),
            source,
        };
        if incoming.exists() {
            fs::remove_dir_all(&incoming).map_err(dir_err)?;
        }
        fs::create_dir_all(&incoming).map_err(dir_err)?;
        Ok(JailServer {
            inner: Arc::new(Inner {
                builder,
                cache: Mutex::new(cache),
                cache_size: toolchain_cache_size,
                uploads,
                staged: Mutex::new(0),
                uploads_in_flight: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                incoming,
                jobs: Mutex::new(HashMap::new()),
                draining: AtomicBool::new(false),
                busy: Mutex::new(0),
                idle: Condvar::new(),
                health: Mutex::new(HealthState {
                    healthy: true,
                    last_probe: None,
                    probe_interval: UNHEALTHY_PROBE_INTERVAL,
                }),
            }),
        })
    }

    pub fn builder(&self) -> &JailBuilder<B> {
        &self.inner.builder
    }

    /// The toolchain cache, as sccache's `BuilderIncoming::run_build` receives it.
    pub fn toolchain_cache(&self) -> &Mutex<TcCache> {
        &self.inner.cache
    }

    /// While unhealthy, accept one assignment per `interval` as a probe (default
    /// [`UNHEALTHY_PROBE_INTERVAL`]).
    pub fn set_unhealthy_probe_interval(&self, interval: Duration) {
        lock(&self.inner.health).probe_interval = interval;
    }

    /// Stops accepting job assignments (they are refused from now on; jobs already
    /// assigned may still run until the engine shuts down).
    pub fn drain(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// The largest toolchain upload accepted: the per-upload budget, at most the cache.
    pub fn max_upload_bytes(&self) -> u64 {
        self.inner.uploads.per_upload.min(self.inner.cache_size)
    }

    /// Bytes of uploads being staged now.
    pub fn staged_upload_bytes(&self) -> u64 {
        *lock(&self.inner.staged)
    }

    /// Toolchain uploads being received now.
    pub fn uploads_in_flight(&self) -> u64 {
        self.inner.uploads_in_flight.load(Ordering::Relaxed)
    }

    /// Job assignments refused so far (draining, unhealthy).
    pub fn assignments_refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Jobs assigned and not yet run.
    pub fn pending_jobs(&self) -> usize {
        lock(&self.inner.jobs).len()
    }

    /// Waits until no request handler is running, up to `timeout`; true if idle.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut n = lock(&self.inner.busy);
        while *n > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            n = self
                .inner
                .idle
                .wait_timeout(n, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// Whether to take a new assignment given the engine's health; logs transitions.
    fn admit(&self) -> Result<(), ServerError> {
        if self.is_draining() {
            return Err(ServerError::Draining);
        }
        let healthy = self.inner.builder.engine().is_healthy();
        let mut h = lock(&self.inner.health);
        if healthy {
            if !h.healthy {
                log::warn!("the builder is healthy again: accepting jobs");
            }
            h.healthy = true;
            return Ok(());
        }
        if h.healthy {
            h.healthy = false;
            log::error!(
                "THE BUILDER IS UNHEALTHY: {} or more backend failures in a row. Refusing job \
                 assignments (the scheduler routes them to other servers; clients compile \
                 locally), accepting one probe job per {} s. Stats: {:?}",
                self.inner.builder.engine().config().unhealthy_after,
                h.probe_interval.as_secs(),
                self.inner.builder.engine().stats()
            );
        }
        let now = Instant::now();
        match h.last_probe {
            Some(t) if now.duration_since(t) < h.probe_interval => Err(ServerError::Unhealthy),
            _ => {
                h.last_probe = Some(now);
                log::warn!("builder unhealthy: accepting one probe job");
                Ok(())
            }
        }
    }

    /// `handle_assign_job`: remembers the job's toolchain; asks for the toolchain if the
    /// cache lacks it (state Pending), else the job is Ready.
    pub fn assign_job(
        &self,
        job: JobId,
        toolchain: Toolchain,
    ) -> Result<AssignJobResult, ServerError> {
        let _busy = Busy::enter(&self.inner);
        // Before the cache sees it: the id is a file name there.
        ToolchainId::new(toolchain.archive_id.as_str()).map_err(super::JobError::from)?;
        if let Err(e) = self.admit() {
            self.inner.refused.fetch_add(1, Ordering::Relaxed);
            log::info!("job {job}: assignment refused: {e}");
            return Err(e);
        }
        let need_toolchain = !lock(&self.inner.cache).contains_toolchain(&toolchain);
        {
            let mut jobs = lock(&self.inner.jobs);
            let now = Instant::now();
            jobs.retain(|id, a| {
                let keep = now.duration_since(a.at) < UNCLAIMED_JOB_TIMEOUT;
                if !keep {
                    log::warn!("job {id}: never run by its client; forgetting it");
                }
                keep
            });
            let previous = jobs.insert(
                job,
                Assigned {
                    toolchain,
                    at: now,
                    ready: !need_toolchain,
                },
            );
            if previous.is_some() {
                log::warn!("job {job} was assigned again (scheduler restart?); replacing it");
            }
        }
        let state = if need_toolchain {
            JobState::Pending
        } else {
            JobState::Ready
        };
        log::debug!("job {job}: assigned, need_toolchain {need_toolchain}");
        Ok(AssignJobResult {
            state,
            need_toolchain,
        })
    }

    /// `handle_submit_toolchain`: marks the job Ready with the scheduler, then stores the
    /// uploaded archive in the toolchain cache (verified against its archive id).
    pub fn submit_toolchain(
        &self,
        requester: &dyn ServerOutgoing,
        job: JobId,
        archive: &mut dyn Read,
    ) -> Result<SubmitToolchainResult, ServerError> {
        let _busy = Busy::enter(&self.inner);
        update_state(requester, job, JobState::Ready)?;
        let toolchain = match lock(&self.inner.jobs).get_mut(&job) {
            Some(a) => {
                a.ready = true;
                a.toolchain.clone()
            }
            None => return Ok(SubmitToolchainResult::JobNotFound),
        };
        ToolchainId::new(toolchain.archive_id.as_str()).map_err(super::JobError::from)?;
        if lock(&self.inner.cache).contains_toolchain(&toolchain) {
            return Ok(SubmitToolchainResult::Success);
        }
        // Receive outside the cache lock, into a private staging file.
        let staging = self
            .inner
            .incoming
            .join(format!("{job}-{}", uuid::Uuid::new_v4().simple()));
        let mut budget = Reservation::new(&self.inner);
        let received = receive(archive, &staging, self.max_upload_bytes(), &mut budget);
        let result = match received {
            Err(e) => {
                log::warn!(
                    "job {job}: receiving toolchain {}: {e}",
                    toolchain.archive_id
                );
                SubmitToolchainResult::CannotCache
            }
            Ok(()) => {
                let mut cache = lock(&self.inner.cache);
                if cache.contains_toolchain(&toolchain) {
                    SubmitToolchainResult::Success
                } else {
                    let inserted = cache.insert_with(&toolchain, |mut file| {
                        let mut from = fs::File::open(&staging)?;
                        io::copy(&mut from, &mut file)?;
                        file.flush()
                    });
                    match inserted {
                        Ok(()) => {
                            log::info!(
                                "job {job}: toolchain {} cached ({} toolchains)",
                                toolchain.archive_id,
                                cache.len()
                            );
                            SubmitToolchainResult::Success
                        }
                        Err(e) => {
                            log::warn!(
                                "job {job}: toolchain {} not cached: {}",
                                toolchain.archive_id,
                                crate::error_chain::render(e.as_ref())
                            );
                            // sccache leaves a mismatching archive in the cache; do not.
                            if let Err(e) = cache.remove(&toolchain) {
                                log::warn!("removing the rejected toolchain: {e}");
                            }
                            SubmitToolchainResult::CannotCache
                        }
                    }
                }
            }
        };
        if let Err(e) = fs::remove_file(&staging) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("removing {}: {e}", staging.display());
            }
        }
        // Released only now that the staging file is gone.
        drop(budget);
        Ok(result)
    }

    /// `handle_run_job`: marks the job Started, builds, marks it Complete. An unknown job is
    /// `JobNotFound`; a failed build is an error for that job.
    pub fn run_job(
        &self,
        requester: &dyn ServerOutgoing,
        job: JobId,
        command: CompileCommand,
        outputs: Vec<String>,
        inputs: &mut dyn Read,
    ) -> Result<RunJobResult, ServerError> {
        let _busy = Busy::enter(&self.inner);
        update_state(requester, job, JobState::Started)?;
        let result = self.build_job(job, command, outputs, inputs);
        update_state(requester, job, JobState::Complete)?;
        result
    }

    /// [`JailServer::run_job`] with the scheduler's round trips off the compile's path:
    /// Started is sent on a thread of its own while the build runs (the build waits for it
    /// only at its end), Complete is left to the caller ([`CompletePending`]), who sends it
    /// beside writing the response. As `run_job`, a failed Started fails the job (the scheduler no
    /// longer knows it; the client compiles locally) and sends no Complete.
    pub fn run_job_concurrent(
        &self,
        requester: &(dyn ServerOutgoing + Sync),
        job: JobId,
        command: CompileCommand,
        outputs: Vec<String>,
        inputs: &mut dyn Read,
    ) -> (
        Result<RunJobResult, ServerError>,
        Option<CompletePending<B>>,
    ) {
        let busy = Busy::enter(&self.inner);
        let start = Instant::now();
        // Ok(the build's result), or Err(the failed Started).
        let (outcome, started_time, build_time) = std::thread::scope(|scope| {
            let started = std::thread::Builder::new()
                .name("jb-job-state".into())
                .spawn_scoped(scope, move || {
                    let r = update_state(requester, job, JobState::Started);
                    (r, start.elapsed())
                });
            match started {
                Ok(handle) => {
                    let mark = Instant::now();
                    let result = self.build_job(job, command, outputs, inputs);
                    let build_time = mark.elapsed();
                    let (started, started_time) = handle.join().unwrap_or_else(|_| {
                        let message = "the Started update panicked".to_string();
                        (
                            Err(ServerError::Scheduler { job, message }),
                            start.elapsed(),
                        )
                    });
                    (started.map(|()| result), started_time, build_time)
                }
                // No thread to spare: in line, as run_job.
                Err(e) => {
                    log::debug!("job {job}: no thread for the Started update ({e})");
                    let started = update_state(requester, job, JobState::Started);
                    let started_time = start.elapsed();
                    let mark = Instant::now();
                    let outcome = started.map(|()| self.build_job(job, command, outputs, inputs));
                    (outcome, started_time, mark.elapsed())
                }
            }
        });
        log::debug!(
            "job {job}: run_job: scheduler Started {:.3} ms (concurrent), build {:.3} ms, \
             run_job {:.3} ms",
            super::http::ms(started_time),
            super::http::ms(build_time),
            super::http::ms(start.elapsed()),
        );
        match outcome {
            Err(e) => (Err(e), None),
            Ok(result) => (result, Some(CompletePending { job, _busy: busy })),
        }
    }

    /// The build of a Started job: `JobNotFound` if it was never assigned (or claimed
    /// twice).
    fn build_job(
        &self,
        job: JobId,
        command: CompileCommand,
        outputs: Vec<String>,
        inputs: &mut dyn Read,
    ) -> Result<RunJobResult, ServerError> {
        let assigned = lock(&self.inner.jobs).remove(&job);
        match assigned {
            None => Ok(RunJobResult::JobNotFound),
            Some(a) => self
                .inner
                .builder
                .build(
                    Some(job),
                    &a.toolchain,
                    command,
                    outputs,
                    inputs,
                    &self.inner.cache,
                )
                .map(|res| {
                    RunJobResult::Complete(JobComplete {
                        output: res.output,
                        outputs: res.outputs,
                    })
                })
                .map_err(ServerError::from),
        }
    }

    /// A job whose run_job request was refused before it ran (a bad body): forgets it and
    /// tells the scheduler it is over (Ready if it was Pending, Started, Complete), so that
    /// its slot there is freed at once rather than after the scheduler's unclaimed-job
    /// timeout. Failures are logged.
    pub fn abandon_job(&self, requester: &dyn ServerOutgoing, job: JobId) {
        let Some(a) = lock(&self.inner.jobs).remove(&job) else {
            return;
        };
        let mut states = vec![JobState::Started, JobState::Complete];
        if !a.ready {
            states.insert(0, JobState::Ready);
        }
        for state in states {
            if let Err(e) = update_state(requester, job, state) {
                log::warn!("job {job}: abandoning: {e}");
                return;
            }
        }
        log::info!("job {job}: abandoned (bad run_job request)");
    }
}

/// Bytes reserved from the staged-upload budget by one upload; released on drop.
struct Reservation<'a, B: Backend> {
    inner: &'a Inner<B>,
    held: u64,
}

impl<'a, B: Backend> Reservation<'a, B> {
    /// An empty reservation, counted as an upload in flight until dropped.
    fn new(inner: &'a Inner<B>) -> Self {
        inner.uploads_in_flight.fetch_add(1, Ordering::Relaxed);
        Reservation { inner, held: 0 }
    }

    /// Reserves `n` more bytes, or fails without reserving any.
    fn grow(&mut self, n: u64) -> io::Result<()> {
        let limit = self.inner.uploads.staged_total;
        let mut staged = lock(&self.inner.staged);
        let after = staged.saturating_add(n);
        if after > limit {
            return Err(io::Error::other(format!(
                "the uploads being received would exceed the staged-upload budget \
                 (max_staged_upload_bytes = {limit})"
            )));
        }
        *staged = after;
        self.held += n;
        Ok(())
    }
}

impl<B: Backend> Drop for Reservation<'_, B> {
    fn drop(&mut self) {
        let mut staged = lock(&self.inner.staged);
        *staged = staged.saturating_sub(self.held);
        drop(staged);
        self.inner.uploads_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Copies at most `limit` bytes of `from` into a new file at `path`, each chunk reserved
/// from `budget` before it is written; more than `limit`, or an exhausted budget, is an
/// error.
fn receive<B: Backend>(
    from: &mut dyn Read,
    path: &Path,
    limit: u64,
    budget: &mut Reservation<'_, B>,
) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        total += n as u64;
        if total > limit {
            return Err(io::Error::other(format!(
                "larger than the largest upload accepted ({limit} bytes: \
                 max_toolchain_upload_bytes, at most toolchain_cache_size)"
            )));
        }
        budget.grow(n as u64)?;
        file.write_all(&buf[..n])?;
    }
    file.flush()
}

impl<B: Backend> ServerIncoming for JailServer<B> {
    fn handle_assign_job(
        &self,
        job_id: JobId,
        tc: Toolchain,
    ) -> Result<AssignJobResult, sccache::errors::Error> {
        self.assign_job(job_id, tc).map_err(to_sccache)
    }

    fn handle_submit_toolchain(
        &self,
        requester: &dyn ServerOutgoing,
        job_id: JobId,
        mut tc_rdr: ToolchainReader<'_>,
    ) -> Result<SubmitToolchainResult, sccache::errors::Error> {
        self.submit_toolchain(requester, job_id, &mut tc_rdr)
            .map_err(to_sccache)
    }

    fn handle_run_job(
        &self,
        requester: &dyn ServerOutgoing,
        job_id: JobId,
        command: CompileCommand,
        outputs: Vec<String>,
        mut inputs_rdr: InputsReader<'_>,
    ) -> Result<RunJobResult, sccache::errors::Error> {
        self.run_job(requester, job_id, command, outputs, &mut inputs_rdr)
            .map_err(to_sccache)
    }
}
