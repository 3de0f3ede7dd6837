//! Exec overhead of the Linux backend against a plain fork+exec, same static binary.
//! `cargo test --test linux_bench -- --ignored --nocapture` (needs root).
#![cfg(target_os = "linux")]

use std::ffi::CString;
use std::time::{Duration, Instant};

use jailbuilder::backend::{Backend, BuildUser, ExitStatus, Limits, ToolchainId};
use jailbuilder::exec::{CommandSpec, PreparedCommand};
use jailbuilder::linux::{LinuxBackend, LinuxConfig};

const N: usize = 500;

fn summary(name: &str, mut v: Vec<Duration>) -> Duration {
    v.sort();
    let mean = v.iter().sum::<Duration>() / v.len() as u32;
    let p = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    eprintln!(
        "{name:<40} mean {:>8.1?}  p50 {:>8.1?}  p90 {:>8.1?}  p99 {:>8.1?}",
        mean,
        p(0.5),
        p(0.9),
        p(0.99)
    );
    p(0.5)
}

/// fork + execve + waitpid, nothing else.
fn plain_fork_exec(path: &CString, argv: &[*const libc::c_char]) {
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: fork; the child only calls execve and _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: NUL-terminated strings and NULL-terminated arrays prepared before fork.
        unsafe {
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
    }
    let mut st = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0);
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn exec_overhead() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: needs root");
        return;
    }
    let path = CString::new("/bin/busybox").unwrap();
    let a0 = CString::new("busybox").unwrap();
    let a1 = CString::new("true").unwrap();
    let argv = [a0.as_ptr(), a1.as_ptr(), std::ptr::null()];
    let mut plain = Vec::with_capacity(N);
    for _ in 0..N {
        let t = Instant::now();
        plain_fork_exec(&path, &argv);
        plain.push(t.elapsed());
    }

    let mut fork_only = Vec::with_capacity(N);
    for _ in 0..N {
        let t = Instant::now();
        // SAFETY: fork; the child only calls _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: _exit in the child.
            unsafe { libc::_exit(0) };
        }
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        fork_only.push(t.elapsed());
    }

    let mut cmd = Vec::with_capacity(N);
    for _ in 0..N {
        let t = Instant::now();
        let st = std::process::Command::new("/bin/busybox")
            .arg("true")
            .status()
            .unwrap();
        assert!(st.success());
        cmd.push(t.elapsed());
    }

    let dir = tempfile::tempdir().unwrap();
    let b = LinuxBackend::new(LinuxConfig {
        state_dir: dir.path().to_path_buf(),
        tmpfs_size_bytes: 64 << 20,
        ..LinuxConfig::default()
    })
    .unwrap();
    let tgz = {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        let bb = std::fs::read("/bin/busybox").unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        h.set_size(bb.len() as u64);
        tar.append_data(&mut h, "bin/busybox", &bb[..]).unwrap();
        tar.into_inner().unwrap().finish().unwrap()
    };
    let img = b
        .create_image(&ToolchainId::new("bench").unwrap(), &mut &tgz[..])
        .unwrap();
    let mut c = b.create_container(&img).unwrap();
    let command = PreparedCommand::new(CommandSpec {
        executable: "/bin/busybox".into(),
        arguments: vec!["true".into()],
        env_vars: vec![],
        cwd: "/".into(),
    })
    .unwrap();
    let user = BuildUser {
        uid: 65534,
        gid: 65534,
    };
    let limits = Limits::default();
    let mut sandbox = Vec::with_capacity(N);
    for _ in 0..N {
        let t = Instant::now();
        let o = b.exec(&c, &command, user, &limits).unwrap();
        sandbox.push(t.elapsed());
        assert_eq!(o.status, ExitStatus::Code(0));
    }
    let mut resets = Vec::with_capacity(50);
    for _ in 0..50 {
        let t = Instant::now();
        b.reset(&mut c).unwrap();
        resets.push(t.elapsed());
    }
    let mut creates = Vec::with_capacity(20);
    for _ in 0..20 {
        let t = Instant::now();
        let c2 = b.create_container(&img).unwrap();
        creates.push(t.elapsed());
        b.destroy_container(c2).unwrap();
    }

    eprintln!("{N} runs of /bin/busybox true (static):");
    summary("fork+_exit+waitpid (no exec)", fork_only);
    let p = summary("plain fork+execve+waitpid", plain);
    summary("std::process::Command::status", cmd);
    let s = summary("LinuxBackend::exec", sandbox);
    eprintln!(
        "exec overhead (p50 - plain p50): {:.1?}",
        s.saturating_sub(p)
    );
    summary("LinuxBackend::reset", resets);
    summary("LinuxBackend::create_container", creates);
}
