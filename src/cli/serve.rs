//! `jailbuilder serve`: a drop-in `sccache-dist server` whose builds run in jailbuilder
//! sandboxes. It registers with a stock sccache-dist scheduler (heartbeats) and serves
//! clients through jailbuilder's implementation of the build server's HTTP side
//! (`jailbuilder::sccache::http`), wire-compatible with sccache's.
//!
//! Signals: SIGTERM and SIGINT start an orderly shutdown: assignments are refused, running
//! builds get `[builder] shutdown_grace_secs` to finish, the engine destroys every sandbox,
//! the process exits 0. The HTTP server never returns, so the shutdown runs on a signal
//! thread that ends the process itself.
//!
//! Signals are caught with signal-hook's handler + self-pipe, not by blocking them with
//! sigprocmask and sigwait: a blocked mask is inherited across fork and execve, and the
//! backends fork the compiler directly, so every compile would start with SIGTERM and
//! SIGINT blocked. A handler, by contrast, is reset to the default by execve.
//!
//! Exit statuses are `sccache-dist`'s ([`AFTER_HELP`]): its `main` exits 1 when the
//! command line (including reading and parsing the configuration file) fails, and 2 when
//! the server itself fails (`run()`); clap's usage errors exit 2.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use jailbuilder::backend::Backend;
use jailbuilder::engine::Engine;
use jailbuilder::sccache::http::{HttpConfig, HttpServer};
use jailbuilder::sccache::{JailBuilder, JailServer, ServeConfig};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// `serve --help`'s epilogue: the exit statuses and the syslog details.
pub const AFTER_HELP: &str = "\
Exit status, as sccache-dist server's:
  0  shut down on SIGTERM or SIGINT (running builds get [builder] shutdown_grace_secs)
  1  the configuration file could not be read, parsed or validated
  2  a usage error, or the server failed (the sandbox backend, cache_dir, the addresses)

The configuration file is TOML, or JSON if its name ends in .json (as sccache-dist's).
--syslog LEVEL sends the log at LEVEL and more severe to the syslog instead of stderr,
facility daemon, tag sccache-buildserver: to /dev/log (or $JAILBUILDER_SYSLOG_SOCKET),
else 127.0.0.1:601 (TCP), else 127.0.0.1:514 (UDP). It overrides RUST_LOG/SCCACHE_LOG.";

#[derive(clap::Args)]
pub struct ServeArgs {
    /// The server configuration: `sccache-dist server`'s keys (public_addr, scheduler_url,
    /// scheduler_auth, cache_dir, ...) plus a `[builder]` section.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,
    /// Log to the syslog with LEVEL (instead of stderr).
    #[arg(long, value_name = "LEVEL")]
    pub syslog: Option<SyslogLevel>,
}

/// `--syslog`'s levels: `sccache-dist`'s `LogLevel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SyslogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<SyslogLevel> for log::LevelFilter {
    fn from(l: SyslogLevel) -> Self {
        match l {
            SyslogLevel::Error => log::LevelFilter::Error,
            SyslogLevel::Warn => log::LevelFilter::Warn,
            SyslogLevel::Info => log::LevelFilter::Info,
            SyslogLevel::Debug => log::LevelFilter::Debug,
            SyslogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// The syslog tag `sccache-dist server --syslog` logs under, kept so that an operator's
/// syslog filters and `journalctl -t` carry over.
const SYSLOG_TAG: &str = "sccache-buildserver";
/// Overrides the syslog socket (a Unix datagram or stream socket), e.g. for a container
/// whose syslog socket is elsewhere, or a test.
const SYSLOG_SOCKET_ENV: &str = "JAILBUILDER_SYSLOG_SOCKET";

/// Installs the syslog as the logger, at `level`, as `sccache-dist`'s `--syslog` does
/// (`syslog::init(Facility::LOG_DAEMON, level, Some("sccache-buildserver"))`: the local
/// socket, else TCP 127.0.0.1:601, else UDP 127.0.0.1:514), with [`SYSLOG_SOCKET_ENV`]
/// in place of the local socket's path when set.
pub fn init_syslog(level: SyslogLevel) -> anyhow::Result<()> {
    let mut formatter = syslog::Formatter3164 {
        facility: syslog::Facility::LOG_DAEMON,
        hostname: None,
        process: SYSLOG_TAG.into(),
        pid: std::process::id(),
    };
    let logger = match std::env::var_os(SYSLOG_SOCKET_ENV) {
        Some(path) => syslog::unix_custom(formatter, &path)
            .with_context(|| format!("connecting to {}", PathBuf::from(path).display()))?,
        None => match syslog::unix(formatter.clone()) {
            Ok(logger) => logger,
            Err(_) => {
                // Over the network the message names the host (RFC 3164).
                formatter.hostname = nix::unistd::gethostname()
                    .ok()
                    .map(|h| h.to_string_lossy().into_owned());
                match syslog::tcp(formatter.clone(), ("127.0.0.1", 601)) {
                    Ok(logger) => logger,
                    Err(_) => syslog::udp(formatter, ("127.0.0.1", 0), ("127.0.0.1", 514))
                        .context("no syslog socket, no syslog on 127.0.0.1")?,
                }
            }
        },
    };
    log::set_boxed_logger(Box::new(syslog::BasicLogger::new(logger)))
        .context("installing the syslog logger")?;
    log::set_max_level(level.into());
    Ok(())
}

/// How long, after the engine has shut down, request handlers get to send their replies.
const REPLY_GRACE: Duration = Duration::from_secs(5);

/// An error of the configuration returns `Err` (the caller exits 1); a server that fails
/// is reported here and exits 2.
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let cfg = ServeConfig::load(&args.config)?;
    log::debug!("configuration: {cfg:?}");
    match start(cfg) {
        Ok(code) => Ok(code),
        Err(e) => {
            super::report(&e);
            Ok(ExitCode::from(2))
        }
    }
}

fn start(cfg: ServeConfig) -> anyhow::Result<ExitCode> {
    // Before any thread or sandbox exists, so no signal is lost to the default action.
    let signals = Signals::new([SIGTERM, SIGINT]).context("installing signal handlers")?;
    let backend = jailbuilder::native::open_backend(&cfg.builder).with_context(|| {
        format!(
            "opening the sandbox backend for {} (try `jailbuilder doctor`)",
            cfg.path.display()
        )
    })?;
    serve(cfg, backend, signals)
}

fn serve<B: Backend>(cfg: ServeConfig, backend: B, signals: Signals) -> anyhow::Result<ExitCode> {
    let kind = backend.kind();
    let engine = Arc::new(
        Engine::start(backend, cfg.builder.engine_config()).context("starting the build engine")?,
    );
    let server = match JailServer::with_upload_limits(
        JailBuilder::from_arc(Arc::clone(&engine)),
        &cfg.cache_dir,
        cfg.toolchain_cache_size,
        cfg.upload_limits(),
    ) {
        Ok(s) => s,
        Err(e) => {
            engine.shutdown();
            return Err(e.into());
        }
    };
    server.set_unhealthy_probe_interval(cfg.unhealthy_probe_interval());
    if cfg.is_insecure() {
        log::warn!("scheduler_auth is DANGEROUSLY_INSECURE: any client can use this server");
    }
    let http = HttpServer::new(
        HttpConfig {
            public_addr: cfg.public_addr,
            bind_address: cfg.bind_address,
            scheduler_url: cfg.scheduler_url.to_url(),
            scheduler_token: cfg.scheduler_token()?,
            max_run_job_header_bytes: cfg.max_run_job_header_bytes,
            // sccache's pool size.
            max_connections: sccache::util::num_cpus() * 8,
        },
        server.clone(),
    );
    let http = match http {
        Ok(h) => h,
        Err(e) => {
            engine.shutdown();
            return Err(anyhow::Error::new(e).context("creating the build server's HTTP side"));
        }
    };

    if let Some(addr) = cfg.metrics_addr {
        let bound =
            jailbuilder::sccache::metrics::start(addr, server.clone(), cfg.cache_dir.join("tc"));
        match bound {
            Ok(bound) => log::info!("metrics: http://{bound}/metrics"),
            Err(e) => {
                engine.shutdown();
                return Err(anyhow::Error::new(e).context(format!("serving metrics on {addr}")));
            }
        }
    }
    {
        let engine = Arc::downgrade(&engine);
        jailbuilder::metrics::spawn_summary(jailbuilder::metrics::SUMMARY_INTERVAL, move || {
            engine.upgrade().map(|e| e.stats())
        })
        .context("starting the metrics summary thread")?;
    }

    {
        let server = server.clone();
        let engine = Arc::clone(&engine);
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || on_signals(signals, server, engine))
            .context("starting the signal thread")?;
    }

    log::info!(
        "jailbuilder serve: {kind} backend, serving {} (listening on {}), scheduler {}",
        cfg.public_addr,
        cfg.bind_address.unwrap_or(cfg.public_addr),
        cfg.scheduler_url.to_url()
    );
    // Returns only on failure (e.g. the address is taken); success never returns.
    let err = match http.start() {
        Ok(never) => match never {},
        Err(e) => e,
    };
    server.drain();
    engine.shutdown();
    Err(anyhow::Error::new(err).context("the build server's HTTP side failed"))
}

/// Waits for SIGTERM/SIGINT, shuts down in order and ends the process with status 0.
fn on_signals<B: Backend>(mut signals: Signals, server: JailServer<B>, engine: Arc<Engine<B>>) {
    let Some(signal) = signals.forever().next() else {
        return;
    };
    let name = if signal == SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    };
    let grace = engine.config().shutdown_grace;
    log::info!(
        "{name}: shutting down; refusing new jobs, giving the {} running builds {}s",
        engine.stats().containers_busy,
        grace.as_secs()
    );
    // Further signals during the shutdown are logged and otherwise ignored: cutting it
    // short would leave sandboxes behind (send SIGKILL to abandon them to the next start).
    std::thread::spawn(move || {
        for s in signals.forever() {
            log::warn!("signal {s} ignored: shutdown in progress (SIGKILL aborts it)");
        }
    });
    let start = Instant::now();
    server.drain();
    engine.shutdown();
    if !server.wait_idle(REPLY_GRACE) {
        log::warn!("shutdown: request handlers still running; exiting anyway");
    }
    let stats = engine.stats();
    log::info!(
        "shut down in {:.1}s: {} builds ok, {} failed, {} containers alive",
        start.elapsed().as_secs_f64(),
        stats.builds_ok,
        stats.builds_failed,
        stats.containers_alive
    );
    std::process::exit(0);
}
