//! What a sandboxed command can reach of the host kernel, through the whole engine and the
//! real Linux backend: no controlling terminal (a job started from an operator's terminal
//! cannot type into it), no_new_privs and a seccomp filter refusing what compilers never
//! need (namespaces, mounts, keyrings, eBPF, io_uring, ptrace, netlink...), no core dumps,
//! a /proc of the sandbox's own pids only, and a cgroup namespace. A static C probe
//! (tests/isolation/probe.c, built with the host's `gcc -static`) makes the system calls.
//! Needs root, busybox-static, gcc and a static libc (else SKIP, or failure under
//! JAILBUILDER_CI=1).
#![cfg(target_os = "linux")]

mod common;

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use jailbuilder::backend::{Backend, Limits, ToolchainId};
use jailbuilder::exec::{CommandSpec, PreparedCommand};
use jailbuilder::linux::LinuxBackend;

const JB: &str = env!("CARGO_BIN_EXE_jailbuilder");
const PROBE_SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/isolation/probe.c");

/// The probe, compiled once per test binary: Ok(bytes) or the reason it cannot be.
fn probe() -> &'static Result<Vec<u8>, String> {
    static PROBE: OnceLock<Result<Vec<u8>, String>> = OnceLock::new();
    PROBE.get_or_init(|| {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let bin = dir.path().join("probe");
        let out = Command::new("gcc")
            .args(["-static", "-O1", "-o"])
            .arg(&bin)
            .arg(PROBE_SRC)
            .arg("-lpthread")
            .output()
            .map_err(|e| format!("gcc not runnable ({e}): apt-get install gcc"))?;
        if !out.status.success() {
            return Err(format!(
                "gcc -static failed (static libc missing? apt-get install libc6-dev): {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        std::fs::read(&bin).map_err(|e| e.to_string())
    })
}

/// Like `require_root!`, and the probe must build.
macro_rules! require_probe {
    () => {{
        require_root!();
        match probe() {
            Ok(bin) => bin,
            Err(reason) => {
                if std::env::var("JAILBUILDER_CI").as_deref() == Ok("1") {
                    panic!("JAILBUILDER_CI=1 but cannot run: {reason}");
                }
                eprintln!("SKIP: {reason}");
                return;
            }
        }
    }};
}

/// The busybox toolchain with /bin/probe.
fn probe_toolchain(bin: &[u8]) -> Vec<u8> {
    toolchain_with(&[file("bin/probe", 0o755, bin)])
}

fn probe_spec(mode: &str) -> CommandSpec {
    CommandSpec {
        executable: "/bin/probe".into(),
        arguments: vec![mode.into()],
        env_vars: vec![("PATH".into(), "/bin".into())],
        cwd: "/work".into(),
    }
}

/// The probe's `name=RESULT` lines.
fn results(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn run_probe(f: &Fixture, bin: &[u8], mode: &str) -> BTreeMap<String, String> {
    let o = f
        .build_tc(
            "probe",
            &probe_toolchain(bin),
            &tar(&[]),
            probe_spec(mode),
            &[],
        )
        .expect("probe build");
    assert!(o.exec.status.success(), "{o:?}");
    eprintln!("probe {mode}:\n{}", stdout(&o));
    results(&stdout(&o))
}

/// Reads whatever arrives on `fd` within `patience` (it is non-blocking).
fn drain(fd: &impl AsRawFd, patience: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let end = Instant::now() + patience;
    while Instant::now() < end {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
            continue;
        }
        let mut buf = [0u8; 256];
        // SAFETY: read(2) into a live local buffer of that length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        got.extend_from_slice(&buf[..n as usize]);
    }
    got
}

#[test]
fn a_job_started_from_a_terminal_cannot_reach_it() {
    let bin = require_probe!();
    let dir = tempfile::tempdir().unwrap();
    let tc = dir.path().join("probe.tar.gz");
    std::fs::write(&tc, probe_toolchain(bin)).unwrap();
    let pty = nix::pty::openpty(None, None).unwrap();
    nix::fcntl::fcntl(
        &pty.master,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    let mut cmd = Command::new(JB);
    cmd.args(["run", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("--toolchain")
        .arg(&tc)
        .args(["--", "/bin/probe", "tty"])
        .stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec the closure makes two async-signal-safe system calls:
    // a session of its own, then the pty (its stdin) as that session's controlling
    // terminal, as a login shell has it.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "run failed: {stdout}\n{stderr}");
    eprintln!("probe tty:\n{stdout}");
    // Nothing was written to the terminal, nothing pushed into its input (with echo on,
    // an injected byte would also come back on the master).
    let echoed = drain(&pty.master, Duration::from_millis(300));
    assert!(
        echoed.is_empty(),
        "the job reached the terminal: {:?}",
        String::from_utf8_lossy(&echoed)
    );
    let mut pending: libc::c_int = 0;
    // SAFETY: FIONREAD on the slave we hold, into a live int.
    let r = unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::FIONREAD, &mut pending) };
    assert_eq!(r, 0);
    assert_eq!(pending, 0, "bytes were injected into the terminal's input");
    let r = results(&stdout);
    // No controlling terminal: /dev/tty is "no such device or address" (tty(4)).
    assert_eq!(r.get("open").map(String::as_str), Some("ENXIO"), "{stdout}");
    // stdio is /dev/null and pipes; no other terminal device is there.
    for fd in 0..=2 {
        assert_eq!(r[&format!("tiocsti_fd{fd}")], "ENOTTY", "{stdout}");
    }
    for dev in ["console", "tty0", "tty1", "ptmx", "pts/0"] {
        assert_ne!(r[&format!("open_{dev}")], "ok", "{dev} reachable: {stdout}");
    }
}

#[test]
fn refused_system_calls_fail_with_eperm_and_clone3_with_enosys() {
    let bin = require_probe!();
    let f = fixture();
    let r = run_probe(&f, bin, "syscalls");
    for call in [
        "unshare_user",
        "mount_in_userns",
        "fsopen_in_userns",
        "clone_newuser",
        "setns",
        "keyctl",
        "ptrace",
        "netlink",
        "bpf",
        "io_uring_setup",
        "perf_event_open",
        "userfaultfd",
        "process_vm_readv",
    ] {
        assert_eq!(
            r.get(call).map(String::as_str),
            Some("EPERM"),
            "{call}: {r:?}"
        );
    }
    // clone3 is ENOSYS, so that glibc falls back to clone(2), whose flags are checked.
    assert_eq!(r["clone3"], "ENOSYS", "{r:?}");
    // What compilers do need still works: fork, threads (glibc's pthread_create tries
    // clone3 first), local and inet sockets.
    for call in ["fork", "thread", "unix_socket", "inet_socket"] {
        assert_eq!(r.get(call).map(String::as_str), Some("ok"), "{call}: {r:?}");
    }
    f.assert_serves();
}

#[test]
fn a_job_runs_with_no_new_privs_and_a_seccomp_filter() {
    require_root!();
    let f = fixture();
    let o = f
        .sh("grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status")
        .unwrap();
    let s = stdout(&o);
    assert!(s.contains("NoNewPrivs:\t1"), "{s}");
    assert!(s.contains("Seccomp:\t2"), "{s}");
}

/// The probe's SysV key and POSIX queue name (tests/isolation/probe.c).
const PROBE_SHM_KEY: libc::key_t = 0x4a42;
const PROBE_MQ_NAME: &std::ffi::CStr = c"/jailbuilder-probe";

#[test]
fn sysv_objects_and_posix_queues_die_with_the_command() {
    let bin = require_probe!();
    let f = fixture();
    // Each command has its own ipc namespace: what one leaves behind, the next (in this
    // container or another) cannot find, and the host never sees.
    for round in 0..3 {
        let r = run_probe(&f, bin, "ipc");
        assert_eq!(
            r.get("shm_create").map(String::as_str),
            Some("ok"),
            "round {round}: {r:?}"
        );
        assert_eq!(
            r.get("mq_create").map(String::as_str),
            Some("ok"),
            "round {round}: {r:?}"
        );
    }
    // SAFETY: shmget(2) looking a key up (size 0, no flags): creates nothing.
    let shm = unsafe { libc::shmget(PROBE_SHM_KEY, 0, 0) };
    assert_eq!(
        (shm, std::io::Error::last_os_error().raw_os_error()),
        (-1, Some(libc::ENOENT)),
        "the sandbox's segment is visible on the host"
    );
    // SAFETY: mq_open(3) without O_CREAT on a NUL-terminated name: opens or fails.
    let mq = unsafe { libc::mq_open(PROBE_MQ_NAME.as_ptr(), libc::O_RDONLY) };
    let mq_errno = std::io::Error::last_os_error().raw_os_error();
    if mq >= 0 {
        // SAFETY: closing the descriptor just opened.
        unsafe { libc::mq_close(mq) };
    }
    assert_eq!(
        (mq, mq_errno),
        (-1, Some(libc::ENOENT)),
        "the sandbox's queue is on the host"
    );
}

#[test]
fn core_dumps_are_off_and_cannot_be_turned_on() {
    require_root!();
    let f = fixture();
    let o = f
        .sh("grep 'Max core file size' /proc/self/limits; ulimit -c unlimited && echo RAISED")
        .unwrap();
    let s = stdout(&o);
    let fields: Vec<&str> = s.lines().next().unwrap_or("").split_whitespace().collect();
    // "Max core file size  <soft>  <hard>  bytes"
    assert_eq!(fields.get(4..6), Some(&["0", "0"][..]), "{s}");
    assert!(!s.contains("RAISED"), "{s}");
}

#[test]
fn proc_holds_only_the_sandbox_pids() {
    require_root!();
    let f = fixture();
    let o = f
        .sh("ls -a /proc; echo MOUNT; grep ' /proc ' /proc/self/mountinfo")
        .unwrap();
    let s = stdout(&o);
    let (listing, mount) = s.split_once("MOUNT\n").unwrap();
    for name in listing.split_whitespace() {
        match name {
            "." | ".." | "self" | "thread-self" => {}
            pid => {
                // A new pid namespace per exec: sh is 1, ls one of the next few.
                let n: u32 = pid
                    .parse()
                    .unwrap_or_else(|_| panic!("{pid:?} in /proc: {listing}"));
                assert!(n < 10, "pid {n} from outside the sandbox: {listing}");
            }
        }
    }
    assert!(mount.contains("subset=pid"), "{mount}");
    assert!(mount.contains("hidepid=invisible"), "{mount}");
}

#[test]
fn compilers_still_see_the_cpus_and_memory() {
    let bin = require_probe!();
    let f = fixture();
    // /proc/stat and /proc/cpuinfo are gone (subset=pid): glibc counts the CPUs in the
    // affinity mask instead, which is what this process has too.
    // SAFETY: a zeroed cpu_set_t is an empty set; sched_getaffinity(2) fills it.
    let host = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
            0
        );
        libc::CPU_COUNT(&set)
    };
    let r = run_probe(&f, bin, "info");
    assert_eq!(r["get_nprocs"], host.to_string(), "{r:?}");
    assert_eq!(r["nprocessors_onln"], host.to_string(), "{r:?}");
    assert_eq!(r["phys_pages_known"], "yes", "{r:?}");
}

#[test]
fn the_cgroup_path_shows_nothing_of_the_host() {
    require_root!();
    let f = fixture();
    let o = f.sh("cat /proc/self/cgroup").unwrap();
    let s = stdout(&o);
    assert!(s.lines().any(|l| l == "0::/"), "{s}");
    // cgroup v1 hierarchies too (a hybrid host): every path is the namespace's root.
    for line in s.lines() {
        assert!(line.ends_with(":/"), "host cgroup path: {line} in {s}");
    }
}

#[test]
fn dev_holds_only_the_skeleton_nodes() {
    require_root!();
    // A base_dir tree with a /dev of its own (a distribution's: console, ttys) and a
    // toolchain with one: neither shows through the skeleton's /dev.
    let base = tempfile::tempdir().unwrap();
    let dev = base.path().join("dev");
    std::fs::create_dir(&dev).unwrap();
    nix::sys::stat::mknod(
        &dev.join("console"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(5, 1),
    )
    .unwrap();
    std::fs::write(dev.join("from-base"), b"x").unwrap();
    let base_dir = base.path().to_path_buf();
    let f = fixture_with(|_| {}, move |lc| lc.base_dir = Some(base_dir));
    let tc = toolchain_with(&[dir("dev", 0o755), file("dev/from-toolchain", 0o644, b"x")]);
    let o = f
        .build_tc(
            "busybox-dev",
            &tc,
            &tar(&[]),
            spec(&["ls", "-a", "/dev"]),
            &[],
        )
        .unwrap();
    let s = stdout(&o);
    let names: Vec<&str> = s.split_whitespace().collect();
    assert_eq!(
        names,
        [
            ".", "..", "fd", "full", "null", "random", "stderr", "stdin", "stdout", "tty",
            "urandom", "zero"
        ],
        "{s}"
    );
}

/// Packages the host's cc with `jailbuilder toolchain` (as tests/cli_run.rs does).
fn cc_toolchain(dir: &Path) -> Option<PathBuf> {
    jailbuilder::toolchain::which("cc")?;
    let tc = dir.join("cc.tar.gz");
    package_host_cc(&tc);
    Some(tc)
}

#[test]
fn gcc_compiles_under_the_filter() {
    require_root!();
    let work = tempfile::tempdir().unwrap();
    let Some(tc) = cc_toolchain(work.path()) else {
        if std::env::var("JAILBUILDER_CI").as_deref() == Ok("1") {
            panic!("JAILBUILDER_CI=1 but cannot run: no host C compiler");
        }
        eprintln!("SKIP: no host C compiler (apt-get install build-essential)");
        return;
    };
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(
        src.join("hello.c"),
        "#include <stdio.h>\nint main(void) { puts(\"hello from the sandbox\"); return 0; }\n",
    )
    .unwrap();
    let out_dir = work.path().join("out");
    // -march=native reads the CPU (cpuid on x86_64; /proc/cpuinfo, gone under
    // subset=pid, only on aarch64); -pipe runs cc1 and as side by side (forks: glibc tries
    // clone3, refused with ENOSYS, then clone). Packaged toolchains compile, they do not
    // link (as sccache-dist uses them): the host links the object and runs it.
    let out = Command::new(JB)
        .args(["run", "--state-dir"])
        .arg(work.path().join("state"))
        .arg("--toolchain")
        .arg(&tc)
        .arg("--inputs-dir")
        .arg(&src)
        .args(["--output", "hello.o", "--out-dir"])
        .arg(&out_dir)
        .args([
            "--",
            "cc",
            "-O2",
            "-march=native",
            "-pipe",
            "-c",
            "hello.c",
            "-o",
            "hello.o",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exe = work.path().join("hello");
    let st = Command::new("cc")
        .arg(out_dir.join("hello.o"))
        .arg("-o")
        .arg(&exe)
        .status()
        .unwrap();
    assert!(st.success());
    let ran = Command::new(&exe).output().unwrap();
    assert_eq!(ran.stdout, b"hello from the sandbox\n");
}

/// Not a threshold: prints what one `true` costs through the backend (clone, namespaces,
/// /proc, seccomp, execve, wait), for the record.
#[test]
fn exec_cost_is_printed() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let backend = LinuxBackend::new(linux_config(dir.path())).unwrap();
    let image = backend
        .create_image(
            &ToolchainId::new("busybox").unwrap(),
            &mut toolchain().as_slice(),
        )
        .unwrap();
    let container = backend.create_container(&image).unwrap();
    let command = PreparedCommand::try_from(spec(&["true"])).unwrap();
    let limits = Limits {
        timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    // CPU time (user + system) of this process and of its reaped children: less noisy than
    // wall-clock time on a shared machine.
    let cpu = || {
        let mut total = Duration::ZERO;
        for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
            // SAFETY: getrusage(2) into a zeroed local struct.
            let ru = unsafe {
                let mut ru: libc::rusage = std::mem::zeroed();
                libc::getrusage(who, &mut ru);
                ru
            };
            for tv in [ru.ru_utime, ru.ru_stime] {
                total += Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000);
            }
        }
        total
    };
    let run = |n: u32| {
        let (start, cpu_start) = (Instant::now(), cpu());
        for _ in 0..n {
            let o = backend
                .exec(&container, &command, USER, &limits, None)
                .unwrap();
            assert!(o.status.success(), "{o:?}");
        }
        (start.elapsed(), cpu() - cpu_start)
    };
    run(10);
    let n = 200;
    let (took, cpu_took) = run(n);
    eprintln!(
        "exec cost: {n} execs of true in {took:?}, {:?} each, {:?} CPU each",
        took / n,
        cpu_took / n
    );
    backend.destroy_container(container).unwrap();
    backend.destroy_image(image).unwrap();
}

#[test]
fn doctor_reports_the_seccomp_filter_and_the_cgroup_namespace() {
    require_root!();
    let items = jailbuilder::linux::probe();
    for name in ["seccomp filter", "cgroup namespace"] {
        let it = items
            .iter()
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("no {name}: {items:?}"));
        assert!(it.ok, "{it:?}");
        eprintln!("{name}: {}", it.detail);
    }
}
