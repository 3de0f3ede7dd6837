//! jailbuilder's own implementation of the build server's side of sccache 0.19's dist
//! HTTP protocol, wire-compatible with the stock scheduler and client, in place of
//! `sccache::dist::http::Server` (which decodes request bodies with unbounded bincode: one
//! request with a huge length prefix aborts the process).
//!
//! - [`tls`]: a fresh self-signed certificate per start, as sccache makes it;
//! - [`conn`]: a bounded HTTP/1.1 request reader (one request per connection);
//! - [`wire`]: the bodies and their bounded decoding;
//! - [`auth`]: job tokens, with server-side lifetime and route rules;
//! - [`heartbeat`]: the heartbeat and job-state requests to the scheduler.
//!
//! Routes (all POST, bearer = the job token): `/api/v1/distserver/assign_job/<id>` (body:
//! bincode `Toolchain`, at most [`MAX_ASSIGN_BODY`]), `submit_toolchain/<id>` (body: the
//! archive, bounded by the server's upload budgets), `run_job/<id>` (body: u32 big-endian
//! length, a bincode `RunJobHttpRequest` of that length, at most the configured
//! `max_run_job_header_bytes`, then the zlib inputs stream, inflated at most
//! [`inputs_limit`] bytes). Replies as sccache's `prepare_response`: bincode, or JSON when
//! the client asks for it only; refusals as sccache's: 401 with `WWW-Authenticate: Bearer
//! error="invalid_jwt"` and a JSON `{description, cause}` body, 400 for a bad body, 413 for
//! an oversize one, 500 for a handler error.

pub mod auth;
pub mod conn;
pub mod heartbeat;
pub mod tls;
pub mod wire;

use std::convert::Infallible;
use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use flate2::read::ZlibDecoder;
use sccache::dist::{JobId, ServerOutgoing, Toolchain};
use serde::Serialize;

use self::auth::JobAuth;
use self::conn::{Body, Head, Response};
use self::heartbeat::SchedulerClient;
use self::tls::{Cert, TlsError};
use self::wire::{BodyError, LimitedReader, ReadClock, RunJobHttpRequest};
use super::JailServer;
use crate::backend::{Backend, ToolchainId};
use crate::untrusted::UnpackLimits;

/// An assign_job body is a bincode `Toolchain`: a 64-character id and its 8-byte length.
pub const MAX_ASSIGN_BODY: u64 = 4 << 10;
/// Default cap of run_job's bincode header (the command line, environment and outputs).
pub const DEFAULT_MAX_RUN_JOB_HEADER: u64 = 4 << 20;
/// Socket read and write timeout: a client that sends or reads nothing for this long loses
/// its connection (and its handler thread is freed).
const IO_TIMEOUT: Duration = Duration::from_secs(300);
/// The TLS handshake and the request head must arrive within this (per read).
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the drain of an unread body waits for bytes.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// What the HTTP side needs besides the [`JailServer`].
pub struct HttpConfig {
    pub public_addr: SocketAddr,
    pub bind_address: Option<SocketAddr>,
    pub scheduler_url: reqwest::Url,
    /// The bearer token for the scheduler (`ServeConfig::scheduler_token`).
    pub scheduler_token: String,
    pub max_run_job_header_bytes: u64,
    /// Connections handled at once; more wait in the listen backlog until one ends.
    /// sccache's pool: num_cpus * 8.
    pub max_connections: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("building the scheduler HTTP client")]
    SchedulerClient(#[source] reqwest::Error),
    #[error("listening on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("starting the heartbeat thread")]
    Thread(#[source] io::Error),
}

/// The inflated inputs stream's cap: the engine's unpack budget (file bytes), plus a tar
/// header and padding (1 KiB) per allowed entry, plus 1 MiB for end blocks and
/// long-name/pax records.
pub fn inputs_limit(limits: &UnpackLimits) -> u64 {
    limits
        .max_bytes
        .saturating_add(limits.max_entries.saturating_mul(1024))
        .saturating_add(1 << 20)
}

/// Milliseconds, for the debug timing lines.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Work left once a response is written (a run_job's Complete for the scheduler).
type After = Box<dyn FnOnce() + Send>;

/// The scheduler as the request handlers see it (job-state updates).
type Requester = dyn ServerOutgoing + Send + Sync;

/// The request handlers' state, shared by the connection threads.
struct Shared<B: Backend> {
    server: JailServer<B>,
    auth: Arc<JobAuth>,
    requester: Arc<Requester>,
    max_header: u64,
    inputs_limit: u64,
}

/// The build server's HTTP side.
pub struct HttpServer<B: Backend> {
    shared: Arc<Shared<B>>,
    scheduler: Arc<SchedulerClient>,
    cert: Cert,
    bind: SocketAddr,
    max_connections: usize,
}

/// sccache's `ErrJson`.
#[derive(Serialize)]
struct ErrJson {
    description: String,
    cause: Option<Box<ErrJson>>,
}

impl ErrJson {
    fn from_err(e: &dyn std::error::Error) -> ErrJson {
        ErrJson {
            description: e.to_string(),
            cause: e.source().map(|c| Box::new(ErrJson::from_err(c))),
        }
    }
}

fn json_response(status: u16, json: &ErrJson) -> Response {
    Response {
        status,
        content_type: "application/json",
        body: serde_json::to_vec(json).unwrap_or_default(),
        headers: Vec::new(),
    }
}

fn error_response(status: u16, e: &dyn std::error::Error) -> Response {
    json_response(status, &ErrJson::from_err(e))
}

/// sccache's `make_401_with_body("invalid_jwt", ...)`.
fn unauthorized(e: &auth::Denied) -> Response {
    let mut r = error_response(401, e);
    r.headers
        .push(("WWW-Authenticate", "Bearer error=\"invalid_jwt\"".into()));
    r
}

fn not_found() -> Response {
    Response {
        status: 404,
        content_type: "text/plain",
        body: Vec::new(),
        headers: Vec::new(),
    }
}

/// sccache's `prepare_response`.
fn reply<T: Serialize>(head: &Head, value: &T) -> Response {
    if head.wants_json() {
        return Response {
            status: 200,
            content_type: "application/json",
            body: serde_json::to_vec(value).unwrap_or_default(),
            headers: Vec::new(),
        };
    }
    match wire::encode(value) {
        Ok(body) => Response {
            status: 200,
            content_type: "application/octet-stream",
            body,
            headers: Vec::new(),
        },
        Err(e) => error_response(500, &e),
    }
}

#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("the request didn't have a binary content type")]
    ContentType,
    #[error("the announced body of {len} bytes exceeds the limit of {limit} bytes")]
    Announced { len: u64, limit: u64 },
    #[error("the run_job header of {len} bytes exceeds the limit of {limit} bytes")]
    Header { len: u64, limit: u64 },
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error(transparent)]
    ToolchainId(#[from] crate::backend::InvalidToolchainId),
}

impl Refused {
    fn status(&self) -> u16 {
        match self {
            Refused::Announced { .. } | Refused::Header { .. } => 413,
            Refused::Body(b) => b.status(),
            Refused::ContentType | Refused::ToolchainId(_) => 400,
        }
    }
}

impl<B: Backend> Shared<B> {
    fn new(server: JailServer<B>, requester: Arc<Requester>, max_header: u64) -> Self {
        let inputs_limit = inputs_limit(&server.builder().engine().config().inputs_limits);
        Shared {
            server,
            auth: Arc::new(JobAuth::default()),
            requester,
            max_header,
            inputs_limit,
        }
    }

    /// The response, and what is left to do once it is written.
    fn handle(&self, head: &Head, body: &mut Body<'_>) -> (Response, Option<After>) {
        let Some(rest) = head.path.strip_prefix("/api/v1/distserver/") else {
            return (not_found(), None);
        };
        let Some((route, id)) = rest.split_once('/') else {
            return (not_found(), None);
        };
        let Ok(job) = id.parse::<JobId>() else {
            return (not_found(), None);
        };
        if head.method != "POST" {
            return (not_found(), None);
        }
        match route {
            "assign_job" => (self.assign_job(head, job, body), None),
            "submit_toolchain" => (self.submit_toolchain(head, job, body), None),
            "run_job" => self.run_job(head, job, body),
            _ => (not_found(), None),
        }
    }

    fn assign_job(&self, head: &Head, job: JobId, body: &mut Body<'_>) -> Response {
        if let Err(e) = self.auth.begin_assign(job, head.bearer()) {
            log::warn!("job {job}: assign_job refused: {e}");
            return unauthorized(&e);
        }
        let toolchain = (|| -> Result<Toolchain, Refused> {
            if !head
                .header("Content-Type")
                .is_some_and(|t| t.starts_with("application/octet-stream"))
            {
                return Err(Refused::ContentType);
            }
            if let Some(len) = head.content_length().filter(|&l| l > MAX_ASSIGN_BODY) {
                return Err(Refused::Announced {
                    len,
                    limit: MAX_ASSIGN_BODY,
                });
            }
            let bytes = wire::read_capped(body, MAX_ASSIGN_BODY)?;
            let tc: Toolchain = wire::decode(&bytes)?;
            // Before any cache lookup: the id becomes a file name there.
            ToolchainId::new(tc.archive_id.as_str())?;
            Ok(tc)
        })();
        let toolchain = match toolchain {
            Ok(t) => t,
            Err(e) => {
                self.auth.assign_failed(job);
                log::warn!("job {job}: assign_job: bad request: {e}");
                return error_response(e.status(), &e);
            }
        };
        match self.server.assign_job(job, toolchain) {
            Ok(res) => reply(head, &res),
            Err(e) => {
                self.auth.assign_failed(job);
                error_response(500, &e)
            }
        }
    }

    fn submit_toolchain(&self, head: &Head, job: JobId, body: &mut Body<'_>) -> Response {
        if let Err(e) = self.auth.check_submit(job, head.bearer()) {
            log::warn!("job {job}: submit_toolchain refused: {e}");
            return unauthorized(&e);
        }
        let limit = self.server.max_upload_bytes();
        if let Some(len) = head.content_length().filter(|&l| l > limit) {
            let e = Refused::Announced { len, limit };
            log::warn!("job {job}: submit_toolchain: {e}");
            return error_response(413, &e);
        }
        match self.server.submit_toolchain(&*self.requester, job, body) {
            Ok(res) => reply(head, &res),
            Err(e) => error_response(500, &e),
        }
    }

    fn run_job(&self, head: &Head, job: JobId, body: &mut Body<'_>) -> (Response, Option<After>) {
        if let Err(e) = self.auth.begin_run(job, head.bearer()) {
            log::warn!("job {job}: run_job refused: {e}");
            return (unauthorized(&e), None);
        }
        let start = Instant::now();
        let request = (|| -> Result<RunJobHttpRequest, Refused> {
            let mut len = [0u8; 4];
            let got = wire::read_capped(&mut (&mut *body).take(4), 4)?;
            if got.len() < 4 {
                return Err(BodyError::Truncated {
                    expected: 4,
                    got: got.len() as u64,
                }
                .into());
            }
            len.copy_from_slice(&got);
            let len = u64::from(u32::from_be_bytes(len));
            if len > self.max_header {
                return Err(Refused::Header {
                    len,
                    limit: self.max_header,
                });
            }
            let header = wire::read_exact_len(body, len)?;
            Ok(wire::decode(&header)?)
        })();
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                log::warn!("job {job}: run_job: bad request: {e}");
                self.server.abandon_job(&*self.requester, job);
                self.auth.finish(job);
                return (error_response(e.status(), &e), None);
            }
        };
        let decoded = start.elapsed();
        // The clocks split the inputs' time into the body's transfer (inner) and its
        // inflation (outer minus inner); the tar unpack is the engine's unpack phase minus
        // both.
        let mut inputs = ReadClock::new(LimitedReader::new(
            ZlibDecoder::new(ReadClock::new(&mut *body)),
            self.inputs_limit,
        ));
        let (res, complete) = self.server.run_job_concurrent(
            &*self.requester,
            job,
            request.command,
            request.outputs,
            &mut inputs,
        );
        self.auth.finish(job);
        let mark = Instant::now();
        let response = match res {
            Ok(res) => reply(head, &res),
            Err(e) => error_response(500, &e),
        };
        if log::log_enabled!(log::Level::Debug) {
            let wire = inputs.get_ref().get_ref().get_ref();
            log::debug!(
                "job {job}: run_job timing: header {:.3} ms; inputs {} -> {} bytes, read {:.3} ms, \
                 inflate {:.3} ms; handler {:.3} ms; encode {:.3} ms ({} bytes)",
                ms(decoded),
                wire.bytes,
                inputs.bytes,
                ms(wire.spent),
                ms(inputs.spent.saturating_sub(wire.spent)),
                ms(mark.duration_since(start) - decoded),
                ms(mark.elapsed()),
                response.body.len(),
            );
        }
        let after = complete.map(|c| {
            let requester = Arc::clone(&self.requester);
            Box::new(move || c.send(&*requester)) as After
        });
        (response, after)
    }
}

impl<B: Backend> HttpServer<B> {
    /// Makes the certificate, the job-token key and the scheduler client.
    pub fn new(cfg: HttpConfig, server: JailServer<B>) -> Result<Self, HttpError> {
        let cert = Cert::generate(cfg.public_addr)?;
        let scheduler = SchedulerClient::new(cfg.scheduler_url, cfg.scheduler_token)
            .map_err(HttpError::SchedulerClient)?;
        let scheduler = Arc::new(scheduler);
        Ok(HttpServer {
            shared: Arc::new(Shared::new(
                server,
                Arc::clone(&scheduler) as Arc<Requester>,
                cfg.max_run_job_header_bytes,
            )),
            scheduler,
            cert,
            bind: cfg.bind_address.unwrap_or(cfg.public_addr),
            max_connections: cfg.max_connections.max(1),
        })
    }

    /// Listens, sends heartbeats, serves forever; returns only on failure to start.
    pub fn start(self) -> Result<Infallible, HttpError> {
        let acceptor = Arc::new(self.cert.acceptor()?);
        let listener = TcpListener::bind(self.bind).map_err(|source| HttpError::Bind {
            addr: self.bind,
            source,
        })?;
        {
            let (scheduler, auth) = (Arc::clone(&self.scheduler), Arc::clone(&self.shared.auth));
            let (digest, pem) = (self.cert.digest.clone(), self.cert.pem.clone());
            let host = sccache::util::num_cpus();
            let pool = self
                .shared
                .server
                .builder()
                .engine()
                .config()
                .max_containers;
            let cpus = heartbeat::advertised_cpus(host, pool);
            if cpus < host {
                log::info!(
                    "announcing {cpus} cores to the scheduler (of {host}) so that it assigns at \
                     most {} jobs to {pool} containers",
                    cpus + 1 + cpus / 8
                );
            }
            std::thread::Builder::new()
                .name("heartbeat".into())
                .spawn(move || heartbeat::run(scheduler, auth, cpus, digest, pem))
                .map_err(HttpError::Thread)?;
        }
        log::info!("Server listening for clients on {}", self.bind);
        let active = Arc::new(Slots {
            used: Mutex::new(0),
            freed: Condvar::new(),
        });
        loop {
            // Back-pressure as rouille's pool: no accept while every slot is busy.
            active.acquire(self.max_connections);
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) => {
                    active.release();
                    // EMFILE and friends: back off instead of spinning.
                    log::warn!("accepting a connection: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let accepted = Instant::now();
            let (shared, acceptor, counter) = (
                Arc::clone(&self.shared),
                Arc::clone(&acceptor),
                Arc::clone(&active),
            );
            let spawned = std::thread::Builder::new()
                .name("http".into())
                .spawn(move || {
                    serve_connection(&shared, &acceptor, stream, accepted);
                    counter.release();
                });
            if let Err(e) = spawned {
                active.release();
                log::warn!("starting a connection thread: {e}");
            }
        }
    }
}

/// The connection slots.
struct Slots {
    used: Mutex<usize>,
    freed: Condvar,
}

impl Slots {
    fn acquire(&self, max: usize) {
        let mut n = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        while *n >= max {
            n = self.freed.wait(n).unwrap_or_else(PoisonError::into_inner);
        }
        *n += 1;
    }

    fn release(&self) {
        let mut n = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        *n = n.saturating_sub(1);
        self.freed.notify_one();
    }
}

/// One connection: TLS handshake, one request, its response, close.
fn serve_connection<B: Backend>(
    shared: &Shared<B>,
    acceptor: &openssl::ssl::SslAcceptor,
    stream: TcpStream,
    accepted: Instant,
) {
    let started = Instant::now();
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    // Every request is one exchange (sccache's clients send `Connection: close`), each
    // side writing a few small TLS records in a row (the handshake's flight, the session
    // tickets, the response): Nagle's algorithm would hold the later ones until the first
    // is acknowledged, which a peer waiting to read delays by up to its delayed-ACK time.
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(HEAD_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let Ok(socket) = stream.try_clone() else {
        return;
    };
    let ssl = match acceptor.accept(stream) {
        Ok(s) => s,
        Err(e) => {
            log::debug!("{peer}: TLS handshake failed: {e}");
            return;
        }
    };
    let handshake = Instant::now();
    let resumed = ssl.ssl().session_reused();
    let version = ssl.ssl().version_str();
    let mut conn = BufReader::new(ssl);
    let head = match conn::read_head(&mut conn) {
        Ok(h) => h,
        Err(conn::HeadError::Closed) => return,
        Err(e) => {
            log::warn!("{peer}: {e}");
            let status = if matches!(e, conn::HeadError::TooLarge) {
                413
            } else {
                400
            };
            let _ = error_response(status, &e).write_to(conn.get_mut());
            let _ = conn.get_mut().shutdown();
            return;
        }
    };
    let head_read = Instant::now();
    let _ = socket.set_read_timeout(Some(IO_TIMEOUT));
    if head
        .header("Expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        let w = conn.get_mut();
        if w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .and_then(|()| w.flush())
            .is_err()
        {
            return;
        }
    }
    let (response, after, handled) = {
        let mut body = Body::new(&mut conn, &head);
        let (response, after) = shared.handle(&head, &mut body);
        let handled = Instant::now();
        // Read away what the handler left (bounded) so that the close does not reset the
        // connection under the response.
        let _ = socket.set_read_timeout(Some(DRAIN_TIMEOUT));
        body.drain(conn::DRAIN_BYTES);
        (response, after, handled)
    };
    let after = after.map(Deferred::start);
    let drained = Instant::now();
    let _ = socket.set_read_timeout(Some(IO_TIMEOUT));
    if let Err(e) = response.write_to(conn.get_mut()) {
        log::debug!("{peer}: writing the response: {e}");
    }
    let _ = conn.get_mut().shutdown();
    // One line per request: where a request's time goes on this side (e2e-breakdown).
    log::debug!(
        "{peer}: {} {} -> {}: timing: thread {:.3} ms, tls {:.3} ms ({version}{}), head {:.3} ms, \
         handler {:.3} ms, drain {:.3} ms, response {:.3} ms ({} bytes)",
        head.method,
        head.path,
        response.status,
        ms(started.duration_since(accepted)),
        ms(handshake.duration_since(started)),
        if resumed { ", resumed" } else { "" },
        ms(head_read.duration_since(handshake)),
        ms(handled.duration_since(head_read)),
        ms(drained.duration_since(handled)),
        ms(drained.elapsed()),
        response.body.len(),
    );
    // In line when no thread could be had for it.
    if let Some(after) = after.and_then(Deferred::take) {
        after();
    }
}

/// What a handler left to do, run on a thread of its own beside the response's write: the
/// scheduler's Complete neither waits for a client that is slow to read (or never reads)
/// nor delays the response. [`Deferred::take`] returns it if no thread could be started.
struct Deferred(Arc<Mutex<Option<After>>>);

impl Deferred {
    fn start(after: After) -> Deferred {
        let slot = Arc::new(Mutex::new(Some(after)));
        let theirs = Arc::clone(&slot);
        let spawned = std::thread::Builder::new()
            .name("jb-job-state".into())
            .spawn(move || {
                let job = theirs.lock().unwrap_or_else(PoisonError::into_inner).take();
                if let Some(f) = job {
                    f();
                }
            });
        if let Err(e) = spawned {
            log::debug!("no thread for the deferred work ({e}): running it after the response");
        }
        Deferred(slot)
    }

    fn take(self) -> Option<After> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

#[cfg(test)]
mod tests;
