//! The syscall census: how many system calls one compile and one reset make, counted with
//! `strace -ff` attached to the bench itself for a few extra compiles at concurrency 1.
//!
//! Counts, unlike times, do not move with the machine's load. Each thread and process gets
//! its own strace file, and its role follows from who created it:
//!
//! - the recycler threads (`jb-recycler-*`, and the threads they start) make the resets;
//! - the bench's other threads make the compile path (the engine's unpack, exec set-up,
//!   supervision and outputs; for `bare`, the `Command` spawn and the object read);
//! - a process those threads clone is the sandbox's (or bare's) child: its calls count up
//!   to and including its execve of the compiler, after which they are the compiler's;
//! - anything the compiler starts (cc1, as) is the compiler's and is not counted.
//!
//! ptrace makes the traced compiles slow; the census runs after the measured ones.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::report::Census;
use super::strategy::{Job, Strategy};

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Role {
    Compile,
    Reset,
    /// A process cloned by a compile-path or reset thread: counted until its execve.
    Child(bool),
    Compiler,
}

/// Traces `jobs` compiles of `s` one at a time (and the strategy's background work until
/// it settles), or returns None with the reason when strace is not installed.
pub fn take(s: &dyn Strategy, jobs: &[Job<'_>]) -> anyhow::Result<Result<Census, String>> {
    if Command::new("strace").arg("-V").output().is_err() {
        return Ok(Err("strace not installed (Debian package strace)".into()));
    }
    let dir = tempfile::tempdir()?;
    let prefix = dir.path().join("t");
    let comms = thread_names()?;
    let mut strace = attach(&prefix, comms.len())?;
    let run = (|| -> anyhow::Result<()> {
        for job in jobs {
            s.compile(job)?;
            s.settle();
        }
        Ok(())
    })();
    detach(&mut strace)?;
    run.context("a traced compile failed")?;
    let counts = count(dir.path(), &comms)?;
    let n = jobs.len().max(1) as f64;
    let per = |role: &[Role]| -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        for (r, calls) in &counts {
            if role.contains(r) {
                for (name, k) in calls {
                    *m.entry(name.clone()).or_insert(0.0) += *k as f64 / n;
                }
            }
        }
        m
    };
    let compile = per(&[Role::Compile, Role::Child(false)]);
    let reset = per(&[Role::Reset, Role::Child(true)]);
    let top = |m: &BTreeMap<String, f64>| {
        let mut v: Vec<(String, f64)> = m.iter().map(|(k, v)| (k.clone(), *v)).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(8);
        v
    };
    Ok(Ok(Census {
        strategy: s.name(),
        compiles: jobs.len(),
        per_compile: compile.values().sum(),
        per_reset: reset.values().sum(),
        top_compile: top(&compile),
        top_reset: top(&reset),
    }))
}

/// tid -> comm of this process's threads now.
fn thread_names() -> anyhow::Result<HashMap<u32, String>> {
    let mut out = HashMap::new();
    for e in std::fs::read_dir("/proc/self/task")? {
        let e = e?;
        let Ok(tid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        out.insert(tid, comm.trim().to_string());
    }
    Ok(out)
}

/// Starts `strace -f -ff` on this process and waits until it has attached every thread.
fn attach(prefix: &Path, threads: usize) -> anyhow::Result<Child> {
    let mut child = Command::new("strace")
        .args(["-f", "-ff", "-qq", "-o"])
        .arg(prefix)
        .arg("-p")
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting strace")?;
    // Without -qq strace would say "Process N attached" per thread; with it, wait until a
    // file exists per thread instead (each is created at attach).
    drop(child.stderr.take());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let files = std::fs::read_dir(prefix.parent().expect("prefix in a dir"))?.count();
        if files >= threads {
            break;
        }
        if let Some(status) = child.try_wait()? {
            bail!("strace exited early ({status}): is ptrace allowed here?");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("strace did not attach to all {threads} threads in 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

fn detach(strace: &mut Child) -> anyhow::Result<()> {
    // SIGINT: strace detaches from every tracee and exits.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(strace.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )?;
    strace.wait()?;
    Ok(())
}

/// A system call line of an strace file: `name(args...) = result`, or the start of one that
/// was interrupted (`name(args <unfinished ...>`); `<... name resumed>` continues one.
fn call_name(line: &str) -> Option<&str> {
    let end = line.find('(')?;
    let name = &line[..end];
    (!name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
    .then_some(name)
}

/// (child tid, is a thread) of a clone/clone3/fork/vfork line that succeeded.
fn cloned(line: &str) -> Option<(u32, bool)> {
    let name = call_name(line)?;
    if !matches!(name, "clone" | "clone3" | "fork" | "vfork") {
        return None;
    }
    let tid = line
        .rsplit_once(" = ")?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((tid, line.contains("CLONE_THREAD")))
}

/// Calls per role and name, from the strace files in `dir`.
fn count(
    dir: &Path,
    comms: &HashMap<u32, String>,
) -> anyhow::Result<Vec<(Role, BTreeMap<String, u64>)>> {
    let mut files: HashMap<u32, PathBuf> = HashMap::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if let Some(tid) = p
            .extension()
            .and_then(|x| x.to_str())
            .and_then(|x| x.parse().ok())
        {
            files.insert(tid, p);
        }
    }
    let mut lines: HashMap<u32, Vec<String>> = HashMap::new();
    let mut parent: HashMap<u32, (u32, bool)> = HashMap::new();
    for (&tid, p) in &files {
        let v: Vec<String> = BufReader::new(std::fs::File::open(p)?)
            .lines()
            .collect::<Result<_, _>>()?;
        for l in &v {
            if let Some((child, thread)) = cloned(l) {
                parent.insert(child, (tid, thread));
            }
        }
        lines.insert(tid, v);
    }
    let mut roles: HashMap<u32, Role> = HashMap::new();
    fn role_of(
        tid: u32,
        comms: &HashMap<u32, String>,
        parent: &HashMap<u32, (u32, bool)>,
        roles: &mut HashMap<u32, Role>,
        depth: usize,
    ) -> Role {
        if let Some(r) = roles.get(&tid) {
            return *r;
        }
        let r = if let Some(c) = comms.get(&tid) {
            if c.starts_with("jb-recycler") {
                Role::Reset
            } else {
                Role::Compile
            }
        } else if let (Some(&(p, thread)), true) = (parent.get(&tid), depth < 64) {
            match (role_of(p, comms, parent, roles, depth + 1), thread) {
                (r @ (Role::Compile | Role::Reset), true) => r,
                (Role::Compile, false) => Role::Child(false),
                (Role::Reset, false) => Role::Child(true),
                _ => Role::Compiler,
            }
        } else {
            Role::Compiler
        };
        roles.insert(tid, r);
        r
    }
    let mut out: HashMap<Role, BTreeMap<String, u64>> = HashMap::new();
    for (&tid, v) in &lines {
        let role = role_of(tid, comms, &parent, &mut roles, 0);
        if role == Role::Compiler {
            continue;
        }
        let m = out.entry(role).or_default();
        for l in v {
            let Some(name) = call_name(l) else { continue };
            *m.entry(name.to_string()).or_insert(0) += 1;
            if matches!(role, Role::Child(_)) && name == "execve" && l.ends_with(" = 0") {
                break; // the compiler's from here on
            }
        }
    }
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strace_lines_parse() {
        assert_eq!(
            call_name("openat(AT_FDCWD, \"/x\", O_RDONLY) = 3"),
            Some("openat")
        );
        assert_eq!(call_name("<... read resumed>\"\", 10) = 0"), None);
        assert_eq!(call_name("+++ exited with 0 +++"), None);
        assert_eq!(call_name("--- SIGCHLD {si_signo=SIGCHLD} ---"), None);
        assert_eq!(
            cloned("clone3({flags=CLONE_VM|CLONE_FS|CLONE_THREAD|CLONE_SYSVSEM, ...}, 88) = 4242"),
            Some((4242, true))
        );
        assert_eq!(
            cloned("clone(child_stack=0x7f, flags=CLONE_VM|CLONE_VFORK|CLONE_NEWPID|SIGCHLD) = 77"),
            Some((77, false))
        );
        assert_eq!(cloned("clone3({flags=CLONE_VM}, 88) = -1 EPERM (x)"), None);
    }

    #[test]
    fn roles_follow_the_creator_and_the_child_stops_at_execve() {
        let dir = tempfile::tempdir().unwrap();
        let w = |tid: u32, body: &str| {
            std::fs::write(dir.path().join(format!("t.{tid}")), body).unwrap()
        };
        // 10: a bench worker; 20: a recycler; 11: the sandbox child; 12: cc1 (compiler's);
        // 21: a thread the recycler started.
        w(10, "pipe2([3, 4], O_CLOEXEC) = 0\nclone(child_stack=0x1, flags=CLONE_VM|CLONE_VFORK|SIGCHLD) = 11\nwait4(11) = 11\n");
        w(11, "setns(3, CLONE_NEWNET) = 0\nexecve(\"/usr/bin/cc\", [\"cc\"], 0x1 /* 0 vars */) = 0\nbrk(NULL) = 0x1\nclone(child_stack=NULL, flags=SIGCHLD) = 12\n");
        w(12, "execve(\"cc1\") = 0\nread(3) = 1\n");
        w(
            20,
            "umount2(\"/x\", MNT_DETACH) = 0\nclone3({flags=CLONE_VM|CLONE_THREAD}, 88) = 21\n",
        );
        w(21, "unshare(CLONE_NEWNS) = 0\n");
        let comms = HashMap::from([(10, "bench".to_string()), (20, "jb-recycler-0".to_string())]);
        let counts: HashMap<Role, BTreeMap<String, u64>> =
            count(dir.path(), &comms).unwrap().into_iter().collect();
        assert_eq!(counts[&Role::Compile].values().sum::<u64>(), 3);
        let child = &counts[&Role::Child(false)];
        assert_eq!(child.values().sum::<u64>(), 2, "{child:?}");
        assert!(!child.contains_key("brk"));
        assert_eq!(counts[&Role::Reset].values().sum::<u64>(), 3);
        assert!(!counts.contains_key(&Role::Compiler));
    }
}
