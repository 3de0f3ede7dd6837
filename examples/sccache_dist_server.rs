//! sccache-dist's own build server, `sccache::dist::http::Server` (sccache 0.19), with
//! jailbuilder as its builder: what an embedder writes, built by CI.
//!
//! ```text
//! sccache_dist_server --config server.toml
//! ```
//!
//! The file has `sccache-dist server`'s keys (`public_addr`, `bind_address`,
//! `scheduler_url`, `scheduler_auth`, `cache_dir`, `toolchain_cache_size`) with
//! jailbuilder's `[builder]` section in place of sccache-dist's builder types: a
//! `jailbuilder serve` file without serve's own keys. Logging: `RUST_LOG`.
//!
//! It uses only what sccache's own tree would have: sccache's library, jailbuilder's engine
//! API (nothing of jailbuilder's `sccache` feature) and the adapter file below, included
//! verbatim. [`Server`] is `sccache-dist server`'s (`src/bin/sccache-dist/main.rs`): the
//! toolchain cache and the three handlers, with no limits of its own; `main` is that
//! binary's `Command::Server` arm with jailbuilder's engine as the builder. What this gives
//! up against `jailbuilder serve` is listed in README "Embedding in sccache-dist".

// The adapter an embedder copies into sccache's tree, compiled here from the same file.
#[path = "../src/sccache/builder.rs"]
mod jail_builder;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use anyhow::{bail, Context};
use jailbuilder::backend::Backend;
use jailbuilder::config::BuilderConfig;
use jailbuilder::engine::Engine;
use sccache::config::server::SchedulerAuth;
use sccache::config::HTTPUrl;
use sccache::dist::{
    AssignJobResult, BuilderIncoming, CompileCommand, InputsReader, JobComplete, JobId, JobState,
    RunJobResult, ServerId, ServerIncoming, ServerOutgoing, SubmitToolchainResult, TcCache,
    Toolchain, ToolchainReader,
};
use serde::Deserialize;

/// `scheduler_auth = { type = "DANGEROUSLY_INSECURE" }`'s token: a private constant of the
/// `sccache-dist` binary, copied.
const INSECURE_DIST_SERVER_TOKEN: &str = "dangerously_insecure_server";

fn default_toolchain_cache_size() -> u64 {
    10 << 30
}

/// `sccache::config::server::Config` with jailbuilder's `[builder]`: sccache's own struct
/// cannot carry it, its `builder` is a closed enum (inside sccache's tree, the embedder adds
/// a variant holding a `BuilderConfig` instead).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    public_addr: SocketAddr,
    #[serde(default)]
    bind_address: Option<SocketAddr>,
    scheduler_url: HTTPUrl,
    scheduler_auth: SchedulerAuth,
    cache_dir: PathBuf,
    #[serde(default = "default_toolchain_cache_size")]
    toolchain_cache_size: u64,
    #[serde(default)]
    builder: BuilderConfig,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `sccache-dist server`'s `ServerIncoming`: jobs wait for their toolchain in `cache`, then
/// run on `builder`.
struct Server {
    builder: Box<dyn BuilderIncoming>,
    cache: Mutex<TcCache>,
    job_toolchains: Mutex<HashMap<JobId, Toolchain>>,
}

impl Server {
    fn new(
        builder: Box<dyn BuilderIncoming>,
        cache_dir: &Path,
        toolchain_cache_size: u64,
    ) -> anyhow::Result<Server> {
        let cache = TcCache::new(&cache_dir.join("tc"), toolchain_cache_size)
            .context("creating the toolchain cache")?;
        Ok(Server {
            builder,
            cache: Mutex::new(cache),
            job_toolchains: Mutex::new(HashMap::new()),
        })
    }
}

impl ServerIncoming for Server {
    fn handle_assign_job(&self, job_id: JobId, tc: Toolchain) -> anyhow::Result<AssignJobResult> {
        let need_toolchain = !lock(&self.cache).contains_toolchain(&tc);
        if lock(&self.job_toolchains).insert(job_id, tc).is_some() {
            bail!("job {job_id} was assigned twice");
        }
        let state = if need_toolchain {
            JobState::Pending
        } else {
            JobState::Ready
        };
        Ok(AssignJobResult {
            state,
            need_toolchain,
        })
    }

    fn handle_submit_toolchain(
        &self,
        requester: &dyn ServerOutgoing,
        job_id: JobId,
        tc_rdr: ToolchainReader<'_>,
    ) -> anyhow::Result<SubmitToolchainResult> {
        requester
            .do_update_job_state(job_id, JobState::Ready)
            .context("updating the job state")?;
        let Some(tc) = lock(&self.job_toolchains).get(&job_id).cloned() else {
            return Ok(SubmitToolchainResult::JobNotFound);
        };
        let mut cache = lock(&self.cache);
        if cache.contains_toolchain(&tc) {
            return Ok(SubmitToolchainResult::Success);
        }
        Ok(cache
            .insert_with(&tc, |mut file| {
                io::copy(&mut { tc_rdr }, &mut file).map(|_| ())
            })
            .map(|_| SubmitToolchainResult::Success)
            .unwrap_or(SubmitToolchainResult::CannotCache))
    }

    fn handle_run_job(
        &self,
        requester: &dyn ServerOutgoing,
        job_id: JobId,
        command: CompileCommand,
        outputs: Vec<String>,
        inputs_rdr: InputsReader<'_>,
    ) -> anyhow::Result<RunJobResult> {
        requester
            .do_update_job_state(job_id, JobState::Started)
            .context("updating the job state")?;
        let tc = lock(&self.job_toolchains).remove(&job_id);
        let res = match tc {
            None => Ok(RunJobResult::JobNotFound),
            Some(tc) => self
                .builder
                .run_build(tc, command, outputs, inputs_rdr, &self.cache)
                .map(|res| {
                    RunJobResult::Complete(JobComplete {
                        output: res.output,
                        outputs: res.outputs,
                    })
                })
                .map_err(|e| e.context("run build failed")),
        };
        requester
            .do_update_job_state(job_id, JobState::Complete)
            .context("updating the job state")?;
        res
    }
}

fn main() -> anyhow::Result<()> {
    env_logger::init();
    let mut args = std::env::args_os().skip(1);
    let path = match (args.next(), args.next(), args.next()) {
        (Some(flag), Some(path), None) if flag == "--config" || flag == "-c" => PathBuf::from(path),
        _ => bail!("usage: sccache_dist_server --config FILE"),
    };
    let cfg: Config = jailbuilder::config::load(&path)?;
    cfg.builder.validate(&path)?;

    // sccache-dist's server token: "<public_addr> <token>".
    let server_id = ServerId::new(cfg.public_addr);
    let scheduler_auth = match cfg.scheduler_auth {
        SchedulerAuth::Insecure => {
            log::warn!("scheduler_auth is DANGEROUSLY_INSECURE: any client can use this server");
            format!("{} {INSECURE_DIST_SERVER_TOKEN}", server_id.addr())
        }
        SchedulerAuth::Token { token } => format!("{} {token}", server_id.addr()),
        // sccache-dist checks the JWT's server id against public_addr with a function of its
        // binary; inside sccache's tree that code is at hand.
        SchedulerAuth::JwtToken { .. } => {
            bail!("this example takes scheduler_auth type \"token\" or \"DANGEROUSLY_INSECURE\"")
        }
    };

    // What an embedder adds to sccache-dist: the engine from `[builder]`, the adapter
    // around it, handed to sccache's server as its `Box<dyn BuilderIncoming>`.
    let backend = jailbuilder::native::open_backend(&cfg.builder)
        .context("opening the sandbox backend (try `jailbuilder doctor`)")?;
    let engine =
        Engine::start(backend, cfg.builder.engine_config()).context("starting the build engine")?;
    let builder = jail_builder::JailBuilder::new(engine);
    log::info!("jailbuilder {} backend", builder.engine().backend().kind());
    let server = Server::new(Box::new(builder), &cfg.cache_dir, cfg.toolchain_cache_size)?;

    let http = sccache::dist::http::Server::new(
        cfg.public_addr,
        cfg.bind_address,
        cfg.scheduler_url.to_url(),
        scheduler_auth,
        server,
    )
    .context("creating sccache's HTTP server")?;
    match http.start()? {}
}
