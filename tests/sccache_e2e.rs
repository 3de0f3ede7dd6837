//! End to end with stock sccache 0.19.0: a `sccache-dist scheduler`, `jailbuilder serve`
//! (the Linux backend) and an `sccache` client server, all on 127.0.0.1, compile a small C
//! project with `sccache gcc -c`.
//!
//! Needs root, gcc, and the stock binaries: `SCCACHE_BIN_DIR`, else the directory
//! `.ci/install-sccache` installs into (run it first). Without them the test prints
//! "SKIP: ..." and passes, unless `JAILBUILDER_CI=1` (then it fails; with CI set and no
//! binaries it runs `.ci/install-sccache` itself).
//!
//! sccache has no switch that forbids falling back to a local compile, so the test proves
//! each object came from the build server twice over: the client's stats count every
//! compile as a distributed compile on our server with zero distributed errors (a fallback
//! is counted in `dist_errors`), and `jailbuilder serve` logged one finished job per
//! compile.
#![cfg(all(feature = "sccache", target_os = "linux"))]

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const CLIENT_TOKEN: &str = "e2e-client-token";
const SERVER_TOKEN: &str = "e2e-server-token";

fn ci() -> bool {
    std::env::var("JAILBUILDER_CI").is_ok_and(|v| v == "1")
}

/// Skips (returns None) or, under CI, fails.
fn skip(why: &str) -> Option<PathBuf> {
    if ci() {
        panic!("JAILBUILDER_CI=1 but the e2e test cannot run: {why}");
    }
    println!("SKIP: sccache_e2e: {why}");
    None
}

/// The directory of the stock `sccache` and `sccache-dist`, or None to skip.
fn prerequisites() -> Option<PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        return skip("needs root (the Linux backend mounts and unshares)");
    }
    if Command::new("gcc").arg("--version").output().is_err() {
        return skip("gcc not found");
    }
    let has = |d: &Path| d.join("sccache").is_file() && d.join("sccache-dist").is_file();
    if let Some(dir) = std::env::var_os("SCCACHE_BIN_DIR").map(PathBuf::from) {
        return if has(&dir) {
            Some(dir)
        } else {
            skip(&format!(
                "SCCACHE_BIN_DIR={} lacks sccache or sccache-dist",
                dir.display()
            ))
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
    skip("stock sccache 0.19.0 not installed: run .ci/install-sccache or set SCCACHE_BIN_DIR")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn port_open(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// A child process that is stopped however the test ends: SIGTERM, then SIGKILL after
/// `patience`. Its stdout and stderr go to `log`.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
    patience: Duration,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, dir: &Path, patience: Duration) -> Proc {
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

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits up to `patience`; None if it had to be killed.
    fn terminate(&mut self) -> Option<ExitStatus> {
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

/// Mount points at or beneath `dir`, from /proc/self/mountinfo.
fn mounts_beneath(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| m.replace("\\040", " "))
        .filter(|m| m == &dir || m.starts_with(&format!("{dir}/")))
        .collect()
}

/// Last resort when the test failed half-way: detaches whatever is still mounted beneath
/// the state directory, so the temporary directory can go.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        for m in mounts_beneath(&self.0).into_iter().rev() {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

struct Client {
    bin: PathBuf,
    env: Vec<(&'static str, String)>,
    dir: PathBuf,
}

impl Client {
    fn command(&self, args: &[&str]) -> Command {
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

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn stats(&self) -> serde_json::Value {
        let out = self.run(&["--show-stats", "--stats-format=json"]);
        assert!(out.status.success(), "show-stats: {out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["stats"].clone()
    }
}

fn dist_compiles(stats: &serde_json::Value) -> u64 {
    stats["dist_compiles"]
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0)
}

/// Finished-job lines `jailbuilder serve` logged with this exit code.
fn served_jobs(log: &str, code: i32) -> usize {
    let exit = format!(": exit {code} in ");
    log.lines()
        .filter(|l| l.contains("jailbuilder::sccache::builder] job ") && l.contains(&exit))
        .count()
}

#[test]
fn sccache_compiles_through_jailbuilder_serve() {
    let Some(bin) = prerequisites() else {
        return;
    };
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let state = t.join("state");
    let _unmount = Unmount(state.clone());
    for d in ["proj/obj", "cache", "sccache", "dist-client"] {
        fs::create_dir_all(t.join(d)).unwrap();
    }
    let (sched_port, server_port, client_port) = (free_port(), free_port(), free_port());

    fs::write(
        t.join("scheduler.toml"),
        format!(
            "public_addr = \"127.0.0.1:{sched_port}\"\n\
             [client_auth]\ntype = \"token\"\ntoken = \"{CLIENT_TOKEN}\"\n\
             [server_auth]\ntype = \"token\"\ntoken = \"{SERVER_TOKEN}\"\n"
        ),
    )
    .unwrap();
    fs::write(
        t.join("server.toml"),
        format!(
            "public_addr = \"127.0.0.1:{server_port}\"\n\
             scheduler_url = \"http://127.0.0.1:{sched_port}\"\n\
             cache_dir = \"{}\"\n\
             [scheduler_auth]\ntype = \"token\"\ntoken = \"{SERVER_TOKEN}\"\n\
             [builder]\nstate_dir = \"{}\"\nshutdown_grace_secs = 10\nmax_containers = 4\n",
            t.join("cache").display(),
            state.display()
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
    let _scheduler = Proc::spawn(
        "scheduler",
        Command::new(bin.join("sccache-dist"))
            .args(["scheduler", "--config"])
            .arg(t.join("scheduler.toml"))
            .env("SCCACHE_NO_DAEMON", "1")
            .env("SCCACHE_LOG", "info"),
        t,
        Duration::from_secs(5),
    );
    wait_for("the scheduler", Duration::from_secs(20), || {
        port_open(sched_port)
    });

    // 2. jailbuilder serve, registered with the scheduler.
    let mut serve = Proc::spawn(
        "serve",
        Command::new(env!("CARGO_BIN_EXE_jailbuilder"))
            .args(["serve", "--config"])
            .arg(t.join("server.toml"))
            .env("RUST_LOG", "info"),
        t,
        Duration::from_secs(30),
    );
    wait_for(
        "jailbuilder serve to register with the scheduler",
        Duration::from_secs(30),
        || {
            if let Ok(Some(status)) = serve.child.try_wait() {
                panic!(
                    "jailbuilder serve exited early ({status}):\n{}",
                    serve.log()
                );
            }
            serve.log().contains("Server connected to scheduler")
        },
    );

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
    let _client_server = Proc::spawn(
        "sccache-server",
        client
            .command(&[])
            .env("SCCACHE_START_SERVER", "1")
            .env("SCCACHE_NO_DAEMON", "1")
            .env("SCCACHE_LOG", "info"),
        t,
        Duration::from_secs(5),
    );
    wait_for("the sccache client server", Duration::from_secs(20), || {
        port_open(client_port)
    });

    // 4. A small C project: three files and a header, one object in a subdirectory.
    let proj = t.join("proj");
    fs::write(
        proj.join("util.h"),
        "int add(int a, int b);\nint mul(int a, int b);\n",
    )
    .unwrap();
    fs::write(
        proj.join("add.c"),
        "#include \"util.h\"\nint add(int a, int b) { return a + b; }\n",
    )
    .unwrap();
    fs::write(
        proj.join("mul.c"),
        "#include \"util.h\"\nint mul(int a, int b) { return a * b; }\n",
    )
    .unwrap();
    fs::write(
        proj.join("main.c"),
        "#include <stdio.h>\n#include \"util.h\"\n\
         int main(void) { printf(\"2 + 3 * 4 = %d\\n\", add(2, mul(3, 4))); return 0; }\n",
    )
    .unwrap();
    let objects = [
        ("add.c", "add.o"),
        ("mul.c", "obj/mul.o"),
        ("main.c", "main.o"),
    ];
    // All at once: concurrent jobs, and concurrent first uses of the toolchain.
    let compiles: Vec<_> = objects
        .iter()
        .map(|(src, obj)| {
            let child = client
                .command(&["gcc", "-O2", "-Wall", "-c", src, "-o", obj])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (*src, *obj, child)
        })
        .collect();
    for (src, obj, child) in compiles {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "sccache gcc -c {src}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(proj.join(obj).is_file(), "{obj} missing");
    }

    // Every compile was distributed to our server and none fell back to local.
    let stats = client.stats();
    let server_key = format!("127.0.0.1:{server_port}");
    assert_eq!(dist_compiles(&stats), 3, "stats: {stats}");
    assert_eq!(
        stats["dist_compiles"][server_key.as_str()].as_u64(),
        Some(3),
        "{stats}"
    );
    assert_eq!(stats["dist_errors"].as_u64(), Some(0), "{stats}");
    assert_eq!(stats["compile_fails"].as_u64(), Some(0), "{stats}");
    assert_eq!(served_jobs(&serve.log(), 0), 3, "{}", serve.log());

    // The objects link on the host and the program runs.
    let link = Command::new("gcc")
        .current_dir(&proj)
        .args(["add.o", "obj/mul.o", "main.o", "-o", "prog"])
        .output()
        .unwrap();
    assert!(link.status.success(), "link: {link:?}");
    let run = Command::new(proj.join("prog")).output().unwrap();
    assert!(run.status.success());
    assert_eq!(String::from_utf8_lossy(&run.stdout), "2 + 3 * 4 = 14\n");

    // A compile error comes back as the compiler's error, from the server.
    fs::write(
        proj.join("bad.c"),
        "int broken(void) { return undeclared_thing; }\n",
    )
    .unwrap();
    let out = client.run(&["gcc", "-c", "bad.c", "-o", "bad.o"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "bad.c compiled?");
    assert!(
        stderr.contains("'undeclared_thing' undeclared") && stderr.contains("error"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("Job failed on server {server_key}")),
        "{stderr}"
    );
    let stats = client.stats();
    assert_eq!(dist_compiles(&stats), 4, "{stats}");
    assert_eq!(stats["dist_errors"].as_u64(), Some(0), "{stats}");
    assert_eq!(stats["compile_fails"].as_u64(), Some(1), "{stats}");
    assert_eq!(served_jobs(&serve.log(), 1), 1, "{}", serve.log());

    // Orderly shutdown: SIGTERM, exit 0, nothing left behind.
    assert!(
        !mounts_beneath(&state).is_empty(),
        "containers were mounted"
    );
    let status = serve
        .terminate()
        .expect("serve exited within the grace period");
    assert_eq!(status.code(), Some(0), "{status}\n{}", serve.log());
    assert!(serve.log().contains("shut down in"), "{}", serve.log());
    assert_eq!(mounts_beneath(&state), Vec::<String>::new());
    let left: Vec<_> = fs::read_dir(state.join("containers"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "containers left: {left:?}");

    // The server log has one info line per job with its phase timings.
    let job_line = BufReader::new(fs::File::open(&serve.log).unwrap())
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("jailbuilder::sccache::builder] job "))
        .unwrap();
    assert!(job_line.contains("(image "), "{job_line}");
    eprintln!(
        "sccache_e2e: passed in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
