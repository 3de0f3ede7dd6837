//! The harness of the tests against stock sccache 0.19.0 (feature `sccache`): a
//! `sccache-dist scheduler`, `jailbuilder serve` (the Linux backend) and an `sccache` client
//! server, all on 127.0.0.1, each isolated by its own port, directories and log file.
//!
//! Needs root, gcc, and the stock binaries: `SCCACHE_BIN_DIR`, else the directory
//! `.ci/install-sccache` installs into (run it first). Without them [`prerequisites`]
//! prints "SKIP: ..." and the test passes, unless `JAILBUILDER_CI=1` (then it fails; with
//! CI set and no binaries it runs `.ci/install-sccache` itself).
//!
//! sccache has no switch that forbids falling back to a local compile, so a test proves
//! each object came from the build server by the client's stats (every compile a
//! distributed compile on our server, zero distributed errors: a fallback is counted in
//! `dist_errors`) and by the finished-job lines `jailbuilder serve` logs ([`served_jobs`]).

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::mounts_beneath;

pub const CLIENT_TOKEN: &str = "e2e-client-token";
pub const SERVER_TOKEN: &str = "e2e-server-token";

fn ci() -> bool {
    std::env::var("JAILBUILDER_CI").is_ok_and(|v| v == "1")
}

/// Skips (returns None) or, under CI, fails.
fn skip(test: &str, why: &str) -> Option<PathBuf> {
    if ci() {
        panic!("JAILBUILDER_CI=1 but {test} cannot run: {why}");
    }
    println!("SKIP: {test}: {why}");
    None
}

/// The stock binaries' version the tests are written against.
pub const STOCK_VERSION: &str = "0.19.0";

/// `dir`, if its `sccache --version` and `sccache-dist --version` say [`STOCK_VERSION`]
/// (both print "sccache <version>"); else skips (None) or, under CI, fails.
fn checked_version(test: &str, dir: PathBuf) -> Option<PathBuf> {
    for bin in ["sccache", "sccache-dist"] {
        let path = dir.join(bin);
        let said = match Command::new(&path).arg("--version").output() {
            Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_string(),
            Err(e) => format!("(cannot run: {e})"),
        };
        if said != format!("sccache {STOCK_VERSION}") {
            return skip(
                test,
                &format!(
                    "{} --version says {said:?}, not sccache {STOCK_VERSION}",
                    path.display()
                ),
            );
        }
    }
    Some(dir)
}

/// The directory of the stock `sccache` and `sccache-dist` (checked to be version
/// [`STOCK_VERSION`]), or None to skip `test`.
pub fn prerequisites(test: &str) -> Option<PathBuf> {
    let dir = find_stock_binaries(test)?;
    checked_version(test, dir)
}

fn find_stock_binaries(test: &str) -> Option<PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        return skip(test, "needs root (the Linux backend mounts and unshares)");
    }
    if Command::new("gcc").arg("--version").output().is_err() {
        return skip(test, "gcc not found");
    }
    let has = |d: &Path| d.join("sccache").is_file() && d.join("sccache-dist").is_file();
    if let Some(dir) = std::env::var_os("SCCACHE_BIN_DIR").map(PathBuf::from) {
        return if has(&dir) {
            Some(dir)
        } else {
            skip(
                test,
                &format!(
                    "SCCACHE_BIN_DIR={} lacks sccache or sccache-dist",
                    dir.display()
                ),
            )
        };
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_default();
    let default = cache.join("jailbuilder/sccache-0.19.0/bin");
    if has(&default) {
        return Some(default);
    }
    if ci() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/install-sccache");
        let out = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .expect("running .ci/install-sccache");
        assert!(out.status.success(), ".ci/install-sccache failed");
        let dir = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_string();
        return Some(PathBuf::from(dir));
    }
    skip(
        test,
        "stock sccache 0.19.0 not installed: run .ci/install-sccache or set SCCACHE_BIN_DIR",
    )
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

pub fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn port_open(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// A child process that is stopped however the test ends: SIGTERM, then SIGKILL after
/// `patience`. Its stdout and stderr go to `log`.
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
    pub log: PathBuf,
    pub patience: Duration,
}

impl Proc {
    pub fn spawn(name: &'static str, cmd: &mut Command, dir: &Path, patience: Duration) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            name,
            child,
            log,
            patience,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits up to `patience`; None if it had to be killed.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + self.patience;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "{} ignored SIGTERM for {:?}: killing it",
            self.name, self.patience
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("---- last lines of {} ----", self.name);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// Last resort when the test failed half-way: detaches whatever is still mounted beneath
/// the state directory, so the temporary directory can go.
pub struct Unmount(pub PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        for m in mounts_beneath(&self.0).into_iter().rev() {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Runs the stock `sccache` client with exactly the given `SCCACHE_*` settings (none
/// inherited from the caller's environment), in `dir`.
pub struct Client {
    pub bin: PathBuf,
    pub env: Vec<(&'static str, String)>,
    pub dir: PathBuf,
}

impl Client {
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SCCACHE_") || k == "RUSTC_WRAPPER" {
                cmd.env_remove(k);
            }
        }
        cmd.args(args).current_dir(&self.dir);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    pub fn stats(&self) -> serde_json::Value {
        let out = self.run(&["--show-stats", "--stats-format=json"]);
        assert!(out.status.success(), "show-stats: {out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["stats"].clone()
    }
}

/// Distributed compiles on all servers, from the client's stats.
pub fn dist_compiles(stats: &serde_json::Value) -> u64 {
    stats["dist_compiles"]
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0)
}

/// Finished-job lines `jailbuilder serve` logged with this exit code.
pub fn served_jobs(log: &str, code: i32) -> usize {
    let exit = format!(": exit {code} in ");
    log.lines()
        .filter(|l| l.contains("jailbuilder::sccache::builder] job ") && l.contains(&exit))
        .count()
}

/// The three processes, started in order and ready. Field order is drop order: the
/// processes stop (client server, serve, scheduler) before anything left mounted beneath
/// the state directory is detached and the temporary directory goes.
pub struct Cluster {
    pub client_server: Proc,
    pub serve: Proc,
    pub scheduler: Proc,
    pub client: Client,
    /// `jailbuilder serve`'s `[builder] state_dir`.
    pub state: PathBuf,
    pub server_port: u16,
    pub sched_port: u16,
    /// The stock binaries' directory.
    pub bin: PathBuf,
    _unmount: Unmount,
    pub tmp: tempfile::TempDir,
}

/// How a [`Cluster`]'s scheduler and build server authenticate each other, and more of
/// the server's settings. The default is [`Cluster::start`]'s: the shared token
/// [`SERVER_TOKEN`], a free port, no extra keys, wait for the registration.
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    /// The scheduler's `[server_auth]` lines (newline-terminated); None: the token.
    pub scheduler_server_auth: Option<String>,
    /// The build server's `[scheduler_auth]` lines; None: the token.
    pub server_scheduler_auth: Option<String>,
    /// The build server's port (e.g. to make a JWT for it first); None: a free one.
    pub server_port: Option<u16>,
    /// More top-level keys of the build server's file (newline-terminated).
    pub server_extra: String,
    /// Return as soon as the server runs, without waiting for "Server connected to
    /// scheduler" (for a server the scheduler refuses).
    pub no_wait_registered: bool,
}

impl ClusterOptions {
    fn scheduler_server_auth(&self) -> String {
        self.scheduler_server_auth
            .clone()
            .unwrap_or_else(|| format!("type = \"token\"\ntoken = \"{SERVER_TOKEN}\"\n"))
    }

    fn server_scheduler_auth(&self) -> String {
        self.server_scheduler_auth
            .clone()
            .unwrap_or_else(|| format!("type = \"token\"\ntoken = \"{SERVER_TOKEN}\"\n"))
    }
}

/// Writes `<t>/server.toml` for `kind` and starts it; waits for its registration unless
/// `opts.no_wait_registered`.
fn spawn_server(
    bin: &Path,
    t: &Path,
    kind: ServerKind,
    opts: &ClusterOptions,
    sched_port: u16,
    server_port: u16,
) -> Proc {
    let state = t.join("state");
    let builder = match kind {
        ServerKind::Jailbuilder(builder) => {
            format!("[builder]\nstate_dir = \"{}\"\n{builder}", state.display())
        }
        ServerKind::StockOverlay => format!(
            "[builder]\ntype = \"overlay\"\nbuild_dir = \"{}\"\n\
             bwrap_path = \"/usr/bin/bwrap\"\n",
            state.display()
        ),
    };
    fs::write(
        t.join("server.toml"),
        format!(
            "public_addr = \"127.0.0.1:{server_port}\"\n\
             scheduler_url = \"http://127.0.0.1:{sched_port}\"\n\
             cache_dir = \"{}\"\n{}\
             [scheduler_auth]\n{}\
             {builder}",
            t.join("cache").display(),
            opts.server_extra,
            opts.server_scheduler_auth(),
        ),
    )
    .unwrap();
    let mut server_cmd = match kind {
        ServerKind::Jailbuilder(_) => {
            let mut c = Command::new(env!("CARGO_BIN_EXE_jailbuilder"));
            c.arg("serve").env("RUST_LOG", "info");
            c
        }
        ServerKind::StockOverlay => {
            let mut c = Command::new(bin.join("sccache-dist"));
            c.arg("server").env("SCCACHE_LOG", "info");
            c
        }
    };
    let mut serve = Proc::spawn(
        kind.name(),
        server_cmd.arg("--config").arg(t.join("server.toml")),
        t,
        Duration::from_secs(30),
    );
    if !opts.no_wait_registered {
        wait_for(
            &format!("{} to register with the scheduler", kind.name()),
            Duration::from_secs(30),
            || {
                if let Ok(Some(status)) = serve.child.try_wait() {
                    panic!("{} exited early ({status}):\n{}", kind.name(), serve.log());
                }
                serve.log().contains("Server connected to scheduler")
            },
        );
    }
    serve
}

/// Which build server a [`Cluster`] runs.
#[derive(Clone, Copy, Debug)]
pub enum ServerKind<'a> {
    /// `jailbuilder serve`, the Linux backend, with these `[builder]` lines after
    /// `state_dir` (newline-terminated).
    Jailbuilder(&'a str),
    /// Stock `sccache-dist server` with its overlay builder (bubblewrap at /usr/bin/bwrap;
    /// needs root): the reference a differential test compares `serve` against.
    StockOverlay,
}

impl ServerKind<'_> {
    /// The process name in logs and panics.
    pub fn name(&self) -> &'static str {
        match self {
            ServerKind::Jailbuilder(_) => "serve",
            ServerKind::StockOverlay => "sccache-dist-server",
        }
    }
}

impl Cluster {
    /// Starts the scheduler, `jailbuilder serve` with `builder` (more `[builder]` lines
    /// after `state_dir`, newline-terminated) and the sccache client server, the stock
    /// binaries from `bin`. The client compiles in [`Cluster::proj`] (with an `obj/`
    /// subdirectory), with a fresh local cache (`SCCACHE_DIR`).
    pub fn start(bin: &Path, builder: &str) -> Cluster {
        Cluster::start_with(bin, ServerKind::Jailbuilder(builder))
    }

    /// [`Cluster::start`] with the build server `kind`: the same scheduler, client and
    /// directories whichever server runs, so two clusters differ only in their server.
    /// For [`ServerKind::StockOverlay`], `state` is the overlay builder's `build_dir`.
    pub fn start_with(bin: &Path, kind: ServerKind) -> Cluster {
        Cluster::start_opts(bin, kind, &ClusterOptions::default())
    }

    /// [`Cluster::start_with`] with `opts`: the auth sections, the server's port and
    /// extra keys, and whether to wait for the server to register.
    pub fn start_opts(bin: &Path, kind: ServerKind, opts: &ClusterOptions) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path().to_path_buf();
        let state = t.join("state");
        let unmount = Unmount(state.clone());
        for d in ["proj/obj", "cache", "sccache", "dist-client"] {
            fs::create_dir_all(t.join(d)).unwrap();
        }
        let (sched_port, client_port) = (free_port(), free_port());
        let server_port = opts.server_port.unwrap_or_else(free_port);

        fs::write(
            t.join("scheduler.toml"),
            format!(
                "public_addr = \"127.0.0.1:{sched_port}\"\n\
                 [client_auth]\ntype = \"token\"\ntoken = \"{CLIENT_TOKEN}\"\n\
                 [server_auth]\n{}",
                opts.scheduler_server_auth()
            ),
        )
        .unwrap();
        fs::write(
            t.join("client.toml"),
            format!(
                "[dist]\nscheduler_url = \"http://127.0.0.1:{sched_port}\"\ntoolchains = []\n\
                 cache_dir = \"{}\"\n[dist.auth]\ntype = \"token\"\ntoken = \"{CLIENT_TOKEN}\"\n",
                t.join("dist-client").display()
            ),
        )
        .unwrap();

        // 1. The stock scheduler, in the foreground.
        let scheduler = Proc::spawn(
            "scheduler",
            Command::new(bin.join("sccache-dist"))
                .args(["scheduler", "--config"])
                .arg(t.join("scheduler.toml"))
                .env("SCCACHE_NO_DAEMON", "1")
                .env("SCCACHE_LOG", "info"),
            &t,
            Duration::from_secs(5),
        );
        wait_for("the scheduler", Duration::from_secs(20), || {
            port_open(sched_port)
        });

        // 2. The build server, registered with the scheduler.
        let serve = spawn_server(bin, &t, kind, opts, sched_port, server_port);

        // 3. The stock sccache client server, in the foreground, isolated by port and dirs.
        let client = Client {
            bin: bin.join("sccache"),
            env: vec![
                ("SCCACHE_CONF", t.join("client.toml").display().to_string()),
                ("SCCACHE_DIR", t.join("sccache").display().to_string()),
                ("SCCACHE_SERVER_PORT", client_port.to_string()),
                ("SCCACHE_IDLE_TIMEOUT", "0".into()),
            ],
            dir: t.join("proj"),
        };
        let client_server = Proc::spawn(
            "sccache-server",
            client
                .command(&[])
                .env("SCCACHE_START_SERVER", "1")
                .env("SCCACHE_NO_DAEMON", "1")
                .env("SCCACHE_LOG", "info"),
            &t,
            Duration::from_secs(5),
        );
        wait_for("the sccache client server", Duration::from_secs(20), || {
            port_open(client_port)
        });

        Cluster {
            client_server,
            serve,
            scheduler,
            client,
            state,
            server_port,
            sched_port,
            bin: bin.to_path_buf(),
            _unmount: unmount,
            tmp,
        }
    }

    /// Stops the build server (SIGTERM; its log is kept as `<name>.<pid>.log`) and starts
    /// `kind` with `opts` in its place: the same scheduler, client, port (unless
    /// `opts.server_port` says otherwise), `cache_dir` and state directory.
    pub fn replace_server(&mut self, kind: ServerKind, opts: &ClusterOptions) {
        self.serve.terminate();
        let kept = self
            .dir()
            .join(format!("{}.{}.log", self.serve.name, self.serve.pid()));
        fs::rename(&self.serve.log, &kept).unwrap();
        self.serve.log = kept;
        if let Some(port) = opts.server_port {
            self.server_port = port;
        }
        let t = self.dir().to_path_buf();
        self.serve = spawn_server(&self.bin, &t, kind, opts, self.sched_port, self.server_port);
    }

    /// The temporary directory holding the configurations, logs and directories.
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// The client's working directory.
    pub fn proj(&self) -> PathBuf {
        self.dir().join("proj")
    }

    /// How the client's stats name our server: "127.0.0.1:<port>".
    pub fn server_key(&self) -> String {
        format!("127.0.0.1:{}", self.server_port)
    }
}

/// A C file of `n` loop functions `f0`..`f{n-1}` (no `main`), slow to compile at -O2 (about
/// 6 ms a function on 2 cores): a compile that outlasts a server limit or a signal.
pub fn slow_c_functions(n: usize) -> String {
    use std::fmt::Write as _;
    let mut src = String::new();
    for i in 0..n {
        writeln!(
            src,
            "int f{i}(int x) {{ int s = 0; for (int i = 0; i < x; i++) {{ s += i * {i}; \
             if (s % 7 == {}) s ^= x; }} return s; }}",
            i % 7
        )
        .unwrap();
    }
    src
}
