//! Shared by the Linux integration tests that drive the whole engine over the real Linux
//! backend (root, busybox-static): skip logic, a busybox toolchain, raw tar entries (the
//! `tar` crate refuses to write hostile names), an engine fixture and host probes.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use jailbuilder::backend::{BuildUser, Limits, ToolchainId};
use jailbuilder::engine::{BuildError, BuildOutcome, BuildRequest, Engine, EngineConfig};
use jailbuilder::exec::CommandSpec;
use jailbuilder::linux::{LinuxBackend, LinuxConfig};
use jailbuilder::untrusted::UnpackLimits;

#[cfg(feature = "sccache")]
pub mod sccache;

pub const BUSYBOX: &str = "/bin/busybox";

pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (overlayfs, namespaces)".into());
    }
    if !Path::new(BUSYBOX).is_file() {
        return Some(format!("{BUSYBOX} missing: apt-get install busybox-static"));
    }
    None
}

/// Returns early (SKIP) when the test cannot run here; fails instead under JAILBUILDER_CI=1.
#[macro_export]
macro_rules! require_root {
    () => {
        $crate::skip_unless!(common::skip_reason())
    };
}

/// Returns early (SKIP: reason) when `reason` is Some; fails instead under JAILBUILDER_CI=1.
#[macro_export]
macro_rules! skip_unless {
    ($reason:expr) => {
        if let Some(reason) = $reason {
            if std::env::var("JAILBUILDER_CI").as_deref() == Ok("1") {
                panic!("JAILBUILDER_CI=1 but cannot run: {reason}");
            }
            eprintln!("SKIP: {reason}");
            return;
        }
    };
}

/// Root (namespaces, overlayfs) and a host C compiler to package: what the tests that
/// compile real C in the sandbox need.
pub fn root_and_cc_missing() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (overlayfs, namespaces)".into());
    }
    if jailbuilder::toolchain::which("cc").is_none() {
        return Some("no host C compiler (apt-get install build-essential)".into());
    }
    None
}

pub const APPLETS: &[&str] = &[
    "sh", "id", "cat", "ls", "sleep", "echo", "true", "false", "test", "dd", "head", "mkfifo",
    "ln", "mkdir", "chmod", "stat", "wc", "seq", "touch", "tr", "rm", "setsid", "grep", "printf",
    "yes", "hostname",
];

/// One tar entry written by hand (ustar header; a GNU 'L' long-name entry first when the
/// name does not fit), so tests can build archives no well-behaved writer produces.
pub fn raw_entry(name: &[u8], kind: u8, link: &[u8], mode: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if name.len() > 99 {
        let mut long = name.to_vec();
        long.push(0);
        out.extend(header(
            b"././@LongLink",
            b'L',
            b"",
            0o644,
            long.len() as u64,
        ));
        out.extend(&long);
        pad(&mut out);
    }
    let short = &name[..name.len().min(99)];
    out.extend(header(short, kind, link, mode, data.len() as u64));
    out.extend(data);
    pad(&mut out);
    out
}

fn pad(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(512) {
        v.push(0);
    }
}

fn header(name: &[u8], kind: u8, link: &[u8], mode: u32, size: u64) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name);
    let oct = |h: &mut [u8], at: usize, width: usize, v: u64| {
        let s = format!("{v:0w$o}\0", w = width - 1);
        h[at..at + width].copy_from_slice(s.as_bytes());
    };
    oct(&mut h, 100, 8, u64::from(mode));
    oct(&mut h, 108, 8, 0);
    oct(&mut h, 116, 8, 0);
    oct(&mut h, 124, 12, size);
    oct(&mut h, 136, 12, 0);
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

pub fn file(name: &str, mode: u32, data: &[u8]) -> Vec<u8> {
    raw_entry(name.as_bytes(), b'0', b"", mode, data)
}

pub fn dir(name: &str, mode: u32) -> Vec<u8> {
    raw_entry(name.as_bytes(), b'5', b"", mode, b"")
}

pub fn symlink(name: &str, target: &str) -> Vec<u8> {
    raw_entry(name.as_bytes(), b'2', target.as_bytes(), 0o777, b"")
}

/// The entries plus the two zero blocks that end a tar.
pub fn tar(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut v: Vec<u8> = entries.concat();
    v.extend([0u8; 1024]);
    v
}

pub fn gz(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// The toolchain's entries: /bin/busybox, applets as symlinks, /work (1777).
pub fn busybox_entries() -> Vec<Vec<u8>> {
    let mut v = vec![dir("bin", 0o755), dir("work", 0o777)];
    v.push(file("bin/busybox", 0o755, &std::fs::read(BUSYBOX).unwrap()));
    for a in APPLETS {
        v.push(symlink(&format!("bin/{a}"), "busybox"));
    }
    v
}

/// A busybox toolchain, plus `extra` entries after it.
pub fn toolchain_with(extra: &[Vec<u8>]) -> Vec<u8> {
    let mut e = busybox_entries();
    e.extend(extra.iter().cloned());
    gz(&tar(&e))
}

pub fn toolchain() -> Vec<u8> {
    toolchain_with(&[])
}

/// Container slot 0's identity (slot n runs as uid + n, gid + n): the default range.
pub const USER: BuildUser = BuildUser {
    uid: jailbuilder::engine::DEFAULT_BUILD_ID_BASE,
    gid: jailbuilder::engine::DEFAULT_BUILD_ID_BASE,
};

/// An engine over the real Linux backend on a fresh state directory.
pub struct Fixture {
    // Field order is drop order: the engine shuts down before its directory goes.
    pub engine: Engine<LinuxBackend>,
    pub tc: Vec<u8>,
    pub dir: tempfile::TempDir,
}

pub fn engine_config() -> EngineConfig {
    EngineConfig {
        max_containers: 2,
        max_containers_per_toolchain: 2,
        warm_per_toolchain: 1,
        max_images: 8,
        recycler_threads: 1,
        build_user_base: USER,
        limits: Limits {
            timeout: Duration::from_secs(30),
            ..Limits::default()
        },
        toolchain_limits: UnpackLimits {
            max_bytes: 64 << 20,
            max_entries: 10_000,
        },
        inputs_limits: UnpackLimits {
            max_bytes: 64 << 20,
            max_entries: 10_000,
        },
        max_output_bytes: 1 << 20,
        shutdown_grace: Duration::from_secs(5),
        ..EngineConfig::default()
    }
}

pub fn linux_config(state: &Path) -> LinuxConfig {
    LinuxConfig {
        state_dir: state.to_path_buf(),
        tmpfs_size_bytes: 64 << 20,
        image_limits: UnpackLimits {
            max_bytes: 64 << 20,
            max_entries: 10_000,
        },
        ..LinuxConfig::default()
    }
}

pub fn fixture_with(
    tweak_engine: impl FnOnce(&mut EngineConfig),
    tweak_linux: impl FnOnce(&mut LinuxConfig),
) -> Fixture {
    let dir = tempfile::Builder::new()
        .prefix("jb-engine-test")
        .tempdir()
        .unwrap();
    let mut lc = linux_config(dir.path());
    tweak_linux(&mut lc);
    let mut ec = engine_config();
    tweak_engine(&mut ec);
    let backend = LinuxBackend::new(lc).unwrap();
    let engine = Engine::start(backend, ec).unwrap();
    Fixture {
        engine,
        tc: toolchain(),
        dir,
    }
}

pub fn fixture() -> Fixture {
    fixture_with(|_| {}, |_| {})
}

/// Runs `script` with the toolchain's busybox sh in `c`, as slot 0's user, in /work, with
/// a minute's time limit.
pub fn backend_sh(
    backend: &LinuxBackend,
    c: &jailbuilder::linux::LinuxContainer,
    script: &str,
) -> jailbuilder::backend::ExecOutcome {
    use jailbuilder::backend::Backend;
    let cmd = jailbuilder::exec::PreparedCommand::new(spec(&["sh", "-c", script])).unwrap();
    let limits = Limits {
        timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    backend.exec(c, &cmd, USER, &limits, None).unwrap()
}

pub fn spec(args: &[&str]) -> CommandSpec {
    CommandSpec {
        executable: BUSYBOX.into(),
        arguments: args.iter().map(|s| s.to_string()).collect(),
        env_vars: vec![("PATH".into(), "/bin".into())],
        cwd: "/work".into(),
    }
}

impl Fixture {
    pub fn state(&self) -> PathBuf {
        std::fs::canonicalize(self.dir.path()).unwrap()
    }

    /// A build with the fixture's toolchain (id "busybox").
    pub fn build(
        &self,
        inputs: &[u8],
        command: CommandSpec,
        outputs: &[&str],
    ) -> Result<BuildOutcome, BuildError> {
        self.build_tc("busybox", &self.tc, inputs, command, outputs)
    }

    pub fn build_tc(
        &self,
        id: &str,
        tc: &[u8],
        mut inputs: &[u8],
        command: CommandSpec,
        outputs: &[&str],
    ) -> Result<BuildOutcome, BuildError> {
        let tc = tc.to_vec();
        self.engine.build(BuildRequest {
            toolchain: ToolchainId::new(id).unwrap(),
            toolchain_archive: &tc,
            inputs: &mut inputs,
            command,
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
        })
    }

    pub fn sh(&self, script: &str) -> Result<BuildOutcome, BuildError> {
        self.build(&tar(&[]), spec(&["sh", "-c", script]), &[])
    }

    /// A normal build works: the engine still serves.
    pub fn assert_serves(&self) {
        let o = self
            .sh("echo ok")
            .expect("a normal build after the hostile one");
        assert_eq!(o.exec.stdout, b"ok\n", "{o:?}");
        assert!(self.engine.is_healthy());
    }
}

pub fn stdout(o: &BuildOutcome) -> String {
    String::from_utf8_lossy(&o.exec.stdout).into_owned()
}

pub fn stderr(o: &BuildOutcome) -> String {
    String::from_utf8_lossy(&o.exec.stderr).into_owned()
}

/// Host pids whose command line (arguments joined by spaces) has `marker` at the start of
/// an argument: "98700" finds `sleep 987001`, not a compiler whose `-C metadata=...98700...`
/// happens to contain the digits.
pub fn host_processes_with(marker: &str) -> Vec<u32> {
    let needle = format!(" {marker}");
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let words = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if format!(" {words}").contains(&needle) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Host pids running as `uid` (real uid, from /proc/<pid>/status).
pub fn host_processes_of_uid(uid: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(status) = std::fs::read_to_string(e.path().join("status")) {
            let real = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|u| u.parse::<u32>().ok());
            if real == Some(uid) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Mount points at or beneath `dir` in this process's mount namespace, as one snapshot.
///
/// /proc/self/mountinfo cannot give one: it is a seq_file, filled a page at a time with
/// the namespace lock taken and dropped per page (fs/seq_file.c `seq_read_iter`,
/// fs/namespace.c `m_start`/`m_stop`), so a read that spans a reset lists the unmounted
/// layer (already printed) and its replacement (appended at the end) both: two mounts
/// that never coexisted. listmount(2) (Linux 6.8) copies the namespace's mount ids under
/// one hold of that lock; a mount gone before its statmount(2) is not counted, so the
/// count is never above what was mounted at the listmount. Older kernels fall back to
/// mountinfo.
pub fn mounts_beneath(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    let points = mount_points_snapshot().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            // A space in a path is escaped as `\040` in mountinfo.
            .map(|p| p.replace("\\040", " "))
            .collect()
    });
    points
        .into_iter()
        .filter(|p| *p == prefix || p.starts_with(&format!("{prefix}/")))
        .collect()
}

/// Every mount point of this process's mount namespace from one listmount(2), or None
/// where the kernel has no listmount (before 6.8).
fn mount_points_snapshot() -> Option<Vec<String>> {
    // include/uapi/linux/mount.h: the syscall numbers (the same on every architecture
    // but alpha and mips), LSMT_ROOT, STATMOUNT_MNT_POINT, and `struct mnt_id_req`
    // (MNT_ID_REQ_SIZE_VER0: u32 size, u32 spare, u64 mnt_id, u64 param).
    const SYS_STATMOUNT: libc::c_long = 457;
    const SYS_LISTMOUNT: libc::c_long = 458;
    const LSMT_ROOT: u64 = u64::MAX;
    const STATMOUNT_MNT_POINT: u64 = 0x10;
    #[repr(C)]
    struct MntIdReq {
        size: u32,
        spare: u32,
        mnt_id: u64,
        param: u64,
    }
    let req = |mnt_id, param| MntIdReq {
        size: std::mem::size_of::<MntIdReq>() as u32,
        spare: 0,
        mnt_id,
        param,
    };
    // One call with room for every mount of any test's namespace: a second page would
    // be a second hold of the lock.
    let mut ids = vec![0u64; 1 << 16];
    let list = req(LSMT_ROOT, 0);
    // SAFETY: listmount(2) reads `list` and writes at most `ids.len()` u64s into `ids`.
    let n = unsafe {
        libc::syscall(
            SYS_LISTMOUNT,
            &list as *const MntIdReq,
            ids.as_mut_ptr(),
            ids.len(),
            0,
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSYS), "listmount: {e}");
        return None;
    }
    let n = usize::try_from(n).unwrap();
    assert!(n < ids.len(), "listmount: {n} mounts fill the buffer");
    // `struct statmount` is 512 bytes before its strings; `mnt_point` (u32 at offset 108)
    // is the mount point's offset into them.
    const STRINGS: usize = 512;
    const MNT_POINT: usize = 108;
    let mut buf = vec![0u64; 8192 / 8];
    let mut points = Vec::with_capacity(n);
    for &id in &ids[..n] {
        let stat = req(id, STATMOUNT_MNT_POINT);
        // SAFETY: statmount(2) reads `stat` and writes at most the buffer's byte length.
        let r = unsafe {
            libc::syscall(
                SYS_STATMOUNT,
                &stat as *const MntIdReq,
                buf.as_mut_ptr(),
                buf.len() * 8,
                0,
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            // Unmounted since the listmount.
            assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "statmount {id}: {e}");
            continue;
        }
        // SAFETY: `buf` is 8192 initialised bytes; a u64 buffer is aligned for u8.
        let bytes: &[u8] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), 8192) };
        let mask = u64::from_ne_bytes(bytes[8..16].try_into().unwrap());
        assert!(
            mask & STATMOUNT_MNT_POINT != 0,
            "statmount {id}: no mount point"
        );
        let at = u32::from_ne_bytes(bytes[MNT_POINT..MNT_POINT + 4].try_into().unwrap());
        let s = &bytes[STRINGS + at as usize..];
        let end = s.iter().position(|&b| b == 0).unwrap();
        points.push(String::from_utf8_lossy(&s[..end]).into_owned());
    }
    Some(points)
}

/// Waits up to `patience` for `f` to hold.
pub fn eventually(patience: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + patience;
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Packages the host's `cc` into `out` with `jailbuilder toolchain` (the real binary), as a
/// user would; fails the test if that fails.
pub fn package_host_cc(out: &Path) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_jailbuilder"))
        .args(["toolchain", "--compiler", "cc", "-o"])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "toolchain: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}
