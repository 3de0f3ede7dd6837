//! One uid per container slot, over the real Linux backend (root, busybox-static): builds
//! running at once run as different uids of the build range, and a client's private inputs
//! (0600 file, 0700 directory, 0640 file) belong to that uid, so the compile can read them.
//! Needs root and busybox-static (else SKIP, or failure under JAILBUILDER_CI=1).
#![cfg(target_os = "linux")]

mod common;

use std::time::Duration;

use common::*;

/// The uid and gid `id` printed, and the rest of stdout.
fn ids(o: &jailbuilder::engine::BuildOutcome) -> (u32, u32, String) {
    let out = stdout(o);
    let mut lines = out.lines();
    let uid = lines.next().and_then(|l| l.parse().ok());
    let gid = lines.next().and_then(|l| l.parse().ok());
    let (Some(uid), Some(gid)) = (uid, gid) else {
        panic!("no ids in {o:?}");
    };
    (uid, gid, lines.collect::<Vec<_>>().join("\n"))
}

#[test]
fn concurrent_builds_run_as_different_uids_of_the_range() {
    require_root!();
    let f = fixture(); // max_containers = 2
                       // Both builds wait in a `sleep` the host sees; once both are running at once (so in
                       // two containers) the host kills the sleeps and the builds finish.
    const MARK: &[u8] = b"sleep\x007777771\x00";
    let script = "id -u; id -g; sleep 7777771; echo done";
    let (a, b) = std::thread::scope(|s| {
        let run = || s.spawn(|| f.build(&tar(&[]), spec(&["sh", "-c", script]), &[]));
        let (a, b) = (run(), run());
        let sleeping = || {
            host_processes_with("7777771")
                .into_iter()
                .filter(|p| std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c == MARK))
                .collect::<Vec<_>>()
        };
        let both = eventually(Duration::from_secs(20), || sleeping().len() == 2);
        for pid in sleeping() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        assert!(both, "the two builds were never running at once");
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    let (ua, ga, rest_a) = ids(&a);
    let (ub, gb, rest_b) = ids(&b);
    assert_eq!(
        (rest_a.as_str(), rest_b.as_str()),
        ("done", "done"),
        "{a:?} {b:?}"
    );
    assert_ne!(ua, ub, "two live containers ran as one uid");
    assert_ne!(ga, gb, "two live containers ran as one gid");
    let range = USER.uid..USER.uid + 2;
    for (u, g) in [(ua, ga), (ub, gb)] {
        assert!(range.contains(&u), "uid {u} outside {range:?}");
        // Slot n: uid base + n and gid base + n (both bases are the default here).
        assert_eq!(g - USER.gid, u - USER.uid);
    }
}

#[test]
fn private_inputs_belong_to_the_build_uid_and_are_readable() {
    require_root!();
    let f = fixture();
    let inputs = tar(&[
        dir("work/src", 0o700),
        file("work/src/main.c", 0o600, b"int main;\n"),
        file("work/libdep.rmeta", 0o640, b"rmeta\n"),
    ]);
    let script = "id -u; id -g; cat src/main.c libdep.rmeta && \
                  stat -c '%n %u %g %a' src src/main.c libdep.rmeta";
    let o = f.build(&inputs, spec(&["sh", "-c", script]), &[]).unwrap();
    assert!(o.exec.status.success(), "{o:?} {}", stderr(&o));
    let (uid, gid, rest) = ids(&o);
    assert!((USER.uid..USER.uid + 2).contains(&uid), "{o:?}");
    assert_eq!(
        rest,
        format!(
            "int main;\nrmeta\nsrc {uid} {gid} 700\nsrc/main.c {uid} {gid} 600\n\
             libdep.rmeta {uid} {gid} 640"
        ),
        "{}",
        stderr(&o)
    );
    // The toolchain is still root's.
    let o = f.sh("stat -c '%u %g' /bin/busybox").unwrap();
    assert_eq!(stdout(&o), "0 0\n", "{o:?}");
}
