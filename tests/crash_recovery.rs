//! Crash recovery, for real: the `jailbuilder` binary runs a long build, is killed with
//! SIGKILL in the middle, and a new `jailbuilder run` on the same state directory removes
//! every mount, namespace pin, process and directory the dead instance left, then serves.
//! Needs root and busybox-static (else SKIP, or failure under JAILBUILDER_CI=1).
#![cfg(target_os = "linux")]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_jailbuilder");

/// However the test ends: kills the first instance if it still runs, then runs
/// `jailbuilder clean` on the state dir.
struct Cleanup(PathBuf, Option<u32>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(pid) = self.1 {
            // SAFETY: kill(2) on our child (ESRCH/no-op if it was reaped already: its pid
            // is only reused after it is reaped, which happens below in the test).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = Command::new(BIN)
            .args(["clean", "--state-dir"])
            .arg(&self.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn run_cmd(state: &Path, tc: &Path, script: &str) -> Command {
    let mut c = Command::new(BIN);
    c.args(["run", "--state-dir"])
        .arg(state)
        .arg("--toolchain")
        .arg(tc)
        .args(["--env", "PATH=/bin", "--", BUSYBOX, "sh", "-c", script]);
    c
}

/// (dev, ino) of a process's network namespace.
fn netns(pid: u32) -> Option<(u64, u64)> {
    let md = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
    Some((md.dev(), md.ino()))
}

/// Every host process in one of `namespaces`.
fn processes_in(namespaces: &[(u64, u64)]) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| netns(*pid).is_some_and(|n| namespaces.contains(&n)))
        .collect()
}

#[test]
fn a_killed_instance_leaves_nothing_the_next_one_does_not_remove() {
    require_root!();
    let dir = tempfile::Builder::new()
        .prefix("jb-crash-recovery")
        .tempdir()
        .unwrap();
    let state = std::fs::canonicalize(dir.path()).unwrap().join("state");
    let mut cleanup = Cleanup(state.clone(), None);
    let tc = dir.path().join("busybox.tar.gz");
    std::fs::write(&tc, toolchain()).unwrap();

    let mut child = run_cmd(&state, &tc, "sleep 987444 & sleep 987445")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    cleanup.1 = Some(child.id());
    // The sandbox's processes (the server's own command line names them too).
    let own = netns(std::process::id()).unwrap();
    let sandboxed = || -> Vec<u32> {
        host_processes_with("98744")
            .into_iter()
            .filter(|p| netns(*p).is_some_and(|n| n != own))
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(30), || sandboxed().len() >= 2),
        "the long build never started"
    );
    let mut namespaces: Vec<(u64, u64)> = sandboxed().iter().filter_map(|p| netns(*p)).collect();
    namespaces.sort();
    namespaces.dedup();
    assert_eq!(namespaces.len(), 1);
    let mounts_before = mounts_beneath(&state);
    // One container: its tmpfs, overlay and three namespace pins.
    assert_eq!(mounts_before.len(), 5, "{mounts_before:?}");

    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
    child.wait().unwrap();
    cleanup.1 = None;

    // The sandbox dies with the server (parent-death signals down the chain).
    assert!(
        eventually(Duration::from_secs(5), || processes_in(&namespaces)
            .is_empty()),
        "sandbox processes outlived the server: {:?}",
        processes_in(&namespaces)
    );
    // What a crash leaves: mounts, namespace pins, the container's directories; and the
    // complete image, which the next instance adopts.
    assert_eq!(mounts_beneath(&state), mounts_before);
    assert!(std::fs::read_dir(state.join("containers")).unwrap().count() > 0);
    let images = || -> Vec<(PathBuf, u64)> {
        std::fs::read_dir(state.join("images"))
            .unwrap()
            .flatten()
            .map(|e| (e.path(), e.metadata().unwrap().ino()))
            .collect()
    };
    let image_before = images();
    assert_eq!(image_before.len(), 1, "{image_before:?}");

    // A new instance on the same state directory cleans up and serves.
    let out = run_cmd(
        &state,
        &tc,
        "echo served; cat /proc/1/cmdline | tr '\\0' ' '",
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("served\n"),
        "{out:?}"
    );

    assert_eq!(mounts_beneath(&state), Vec::<String>::new());
    assert!(processes_in(&namespaces).is_empty());
    assert!(sandboxed().is_empty());
    let left: Vec<_> = std::fs::read_dir(state.join("containers"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "containers: {left:?}");
    // The image was adopted (the same directory), not unpacked again.
    assert_eq!(images(), image_before);
    let mut entries: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "staging" || std::fs::read_dir(state.join(n)).unwrap().count() > 0)
        .collect();
    entries.sort();
    assert_eq!(entries, ["containers", "images", "lock", "skel"]);
}
