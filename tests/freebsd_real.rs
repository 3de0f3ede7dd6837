//! The FreeBSD backend against the real kernel: ZFS through libzfs_core, nmount(2) of ZFS
//! and devfs, jail_set(2)/jail_attach(2)/jail_remove(2), and the engine on top of them.
//!
//! Runs on FreeBSD only (elsewhere one test prints a SKIP line). Each test needs:
//! - root (jail_set, nmount, /dev/zfs);
//! - `JAILBUILDER_ZFS_ROOT`: an existing dataset under which each test creates (and
//!   destroys) its own child dataset `<root>/t<pid>-<test>-<n>`;
//! - `JAILBUILDER_BASE_SNAPSHOT` (tests that run programs in a jail): a snapshot of an
//!   extracted FreeBSD base (base.txz), so /bin/sh and /usr/bin/cc exist in the jails;
//! - `JAILBUILDER_BUILD_UID` (optional, default 1879048192): the first uid and gid of the
//!   per-slot build id range.
//!
//! When something is missing a test prints "SKIP: <reason>" and passes, unless
//! `JAILBUILDER_CI=1` or `JAILBUILDER_FREEBSD_REQUIRED=1` (then it fails). vagrant/run.sh
//! sets `JAILBUILDER_FREEBSD_REQUIRED=1` (not `JAILBUILDER_CI=1`: sys/'s header check
//! would then fail for want of OpenZFS headers, which FreeBSD base does not install).
//!
//! Every test mounts under its own `/var/tmp/jbt-<pid>-<test>-<n>` and cleans up through a
//! drop guard (a fresh backend's `clean_all`, then the test dataset itself), also when an
//! assertion fails. Tests may spawn `zfs`, `mount`, `jls`, `ps` to cross-check the
//! kernel's state; the library never spawns.

#[cfg(not(target_os = "freebsd"))]
#[test]
fn freebsd_only() {
    use std::io::Write;
    // Written to stderr directly: libtest's capture only intercepts print!/eprint!.
    let _ = writeln!(
        std::io::stderr(),
        "SKIP: FreeBSD-only tests (run vagrant/run.sh)"
    );
}

#[cfg(target_os = "freebsd")]
mod real {
    use std::io::Write;
    use std::net::TcpListener;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output, Stdio};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{mpsc, Arc};
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use jailbuilder::backend::{Backend, BuildUser, ExecOutcome, ExitStatus, Limits, ToolchainId};
    use jailbuilder::engine::{BuildError, BuildOutcome, BuildRequest, Engine, EngineConfig};
    use jailbuilder::exec::{CommandSpec, PreparedCommand};
    use jailbuilder::freebsd::{
        FreeBsdBackend, FreeBsdConfig, FreeBsdContainer, FreeBsdImage, Kernel, RealKernel,
    };
    use jailbuilder::untrusted::{BeneathError, UnpackLimits};

    type Real = FreeBsdBackend<RealKernel>;

    /// Bound on every spawned cross-check command.
    const CMD_TIMEOUT: Duration = Duration::from_secs(60);
    /// Bound on waiting for the engine's recycler.
    const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
    const TOOLCHAIN: &str = "jbtest-tc";
    const MARKER: &str = "jailbuilder toolchain marker 7f3a9c\n";
    /// Set in the environment of the child process of the crash test.
    const CHILD_DATASET_ROOT: &str = "JB_TEST_CRASH_CHILD_DATASET_ROOT";
    const CHILD_MOUNT_ROOT: &str = "JB_TEST_CRASH_CHILD_MOUNT_ROOT";
    /// Set (to the pty slave, /dev/pts/N) in the environment of the child process of the
    /// controlling-terminal test, which runs with that pty as its controlling terminal.
    const CHILD_TTY: &str = "JB_TEST_TTY_CHILD_SLAVE";

    // ------------------------------------------------------------------ environment

    struct Env {
        zfs_root: String,
        base: Option<String>,
        user: BuildUser,
    }

    fn required() -> bool {
        ["JAILBUILDER_CI", "JAILBUILDER_FREEBSD_REQUIRED"]
            .iter()
            .any(|v| std::env::var(v).as_deref() == Ok("1"))
    }

    fn say(line: &str) {
        // Past libtest's capture, so SKIP lines show in a plain `cargo test`.
        let _ = writeln!(std::io::stderr(), "{line}");
    }

    fn nonempty(var: &str) -> Option<String> {
        std::env::var(var).ok().filter(|v| !v.trim().is_empty())
    }

    /// Err(reason) when the test cannot run here. A variable that is set but names a
    /// missing dataset or snapshot is a misconfiguration: that panics.
    fn env(need_base: bool) -> Result<Env, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("needs root (jail_set(2), nmount(2), /dev/zfs)".into());
        }
        if !Path::new("/dev/zfs").exists() {
            return Err("no /dev/zfs (kldload zfs)".into());
        }
        let Some(zfs_root) = nonempty("JAILBUILDER_ZFS_ROOT") else {
            return Err("JAILBUILDER_ZFS_ROOT is not set (a dataset the tests may use)".into());
        };
        let base = nonempty("JAILBUILDER_BASE_SNAPSHOT");
        if need_base && base.is_none() {
            return Err(
                "JAILBUILDER_BASE_SNAPSHOT is not set (a snapshot of an extracted base.txz)".into(),
            );
        }
        let out = run(Command::new("zfs").args(["list", "-H", "-o", "name", &zfs_root]));
        assert!(
            out.status.success(),
            "JAILBUILDER_ZFS_ROOT={zfs_root} is not a dataset: {}",
            text(&out.stderr)
        );
        if let Some(b) = &base {
            let out =
                run(Command::new("zfs").args(["list", "-H", "-t", "snapshot", "-o", "name", b]));
            assert!(
                out.status.success(),
                "JAILBUILDER_BASE_SNAPSHOT={b} is not a snapshot: {}",
                text(&out.stderr)
            );
        }
        let uid = match nonempty("JAILBUILDER_BUILD_UID") {
            Some(v) => v
                .trim()
                .parse::<u32>()
                .unwrap_or_else(|e| panic!("JAILBUILDER_BUILD_UID={v:?}: {e}")),
            None => jailbuilder::engine::DEFAULT_BUILD_ID_BASE,
        };
        assert_ne!(uid, 0, "JAILBUILDER_BUILD_UID must not be root");
        Ok(Env {
            zfs_root,
            base,
            user: BuildUser { uid, gid: uid },
        })
    }

    /// `let env = setup!(need_base);`: returns early (SKIP) when the test cannot run,
    /// fails instead when the tests are required.
    macro_rules! setup {
        ($need_base:expr) => {
            match env($need_base) {
                Ok(env) => env,
                Err(reason) => {
                    if required() {
                        panic!(
                            "JAILBUILDER_CI=1 or JAILBUILDER_FREEBSD_REQUIRED=1, but cannot run: {reason}"
                        );
                    }
                    say(&format!("SKIP: {reason}"));
                    return;
                }
            }
        };
    }

    // ------------------------------------------------------------------ commands

    fn text(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    /// Runs a host command with stdin from /dev/null, killing it after CMD_TIMEOUT.
    fn run(cmd: &mut Command) -> Output {
        run_for(cmd, CMD_TIMEOUT)
    }

    /// Runs a host command with stdin from /dev/null, killing it after `timeout`.
    fn run_for(cmd: &mut Command, timeout: Duration) -> Output {
        try_run_for(cmd, timeout).unwrap_or_else(|e| panic!("{e}"))
    }

    /// As `run_for`, but never panics (for the drop guard, which may run while unwinding).
    fn try_run_for(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
        let shown = format!("{cmd:?}");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {shown}: {e}"))?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let (tx, rx) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(timeout) {
            Ok(out) => {
                let _ = waiter.join();
                out.map_err(|e| format!("wait {shown}: {e}"))
            }
            Err(_) => {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                Err(format!(
                    "{shown} did not finish within {timeout:?} (killed)"
                ))
            }
        }
    }

    /// Runs a host command that must succeed; its stdout.
    fn run_ok(cmd: &mut Command) -> String {
        run_ok_for(cmd, CMD_TIMEOUT)
    }

    fn run_ok_for(cmd: &mut Command, timeout: Duration) -> String {
        let shown = format!("{cmd:?}");
        let out = run_for(cmd, timeout);
        assert!(
            out.status.success(),
            "{shown}: {}\nstdout: {}\nstderr: {}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn zfs_get(prop: &str, ds: &str) -> String {
        run_ok(Command::new("zfs").args(["get", "-H", "-o", "value", prop, ds]))
            .trim()
            .to_string()
    }

    fn zfs_exists(name: &str) -> bool {
        run(Command::new("zfs").args(["list", "-H", "-t", "all", "-o", "name", name]))
            .status
            .success()
    }

    /// Every dataset and snapshot at or under `root`.
    fn zfs_tree(root: &str) -> Vec<String> {
        run_ok(Command::new("zfs").args(["list", "-H", "-r", "-t", "all", "-o", "name", root]))
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// (from, on, fstype) of every mount at or under `dir`, from `mount -p`.
    fn mounts_under(dir: &Path) -> Vec<(String, String, String)> {
        run_ok(Command::new("mount").arg("-p"))
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 3).then(|| (f[0].to_string(), f[1].to_string(), f[2].to_string()))
            })
            .filter(|(_, on, _)| Path::new(on).starts_with(dir))
            .collect()
    }

    /// (jid, name, path) of every jail, dying ones included, rooted at or under `dir`
    /// (`jls -d`, cross-checking the kernel seam's jail_list).
    fn jails_under(dir: &Path) -> Vec<(i32, String, String)> {
        run_ok(Command::new("jls").args(["-d", "jid", "name", "path"]))
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 3).then(|| (f[0].parse().unwrap_or(-1), f[1].into(), f[2].into()))
            })
            .filter(|(_, _, path)| Path::new(path).starts_with(dir))
            .collect()
    }

    /// `jls -d -j <jid>` (usr.sbin/jls/jls.c: exits 1 via xo_errx when jail_get fails).
    fn jail_known_to_jls(jid: i32) -> bool {
        run(Command::new("jls").args(["-d", "-j", &jid.to_string(), "jid"]))
            .status
            .success()
    }

    /// (pid, jid, command) of every process in jail `jid`.
    fn processes_in_jail(jid: i32) -> Vec<(i32, i32, String)> {
        run_ok(Command::new("ps").args(["-ax", "-o", "pid=,jid=,comm="]))
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                if f.len() < 3 {
                    return None;
                }
                Some((f[0].parse().ok()?, f[1].parse().ok()?, f[2..].join(" ")))
            })
            .filter(|(_, j, _)| *j == jid)
            .collect()
    }

    /// The command of process `pid`, if it exists.
    fn process(pid: i32) -> Option<String> {
        let out = run(Command::new("ps").args(["-o", "jid=,comm=", "-p", &pid.to_string()]));
        let s = text(&out.stdout).trim().to_string();
        (out.status.success() && !s.is_empty()).then_some(s)
    }

    // ------------------------------------------------------------------ scratch space

    /// A test's own dataset root and mount root; dropping it removes everything under them,
    /// also after a failed assertion.
    struct Scratch {
        config: FreeBsdConfig,
        zfs_root: String,
    }

    static SEQ: AtomicU32 = AtomicU32::new(0);

    fn unique(test: &str) -> String {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!(
            "{}-{test}-{}{:x}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            nanos & 0xffff
        )
    }

    fn config(env: &Env, dataset_root: String, mount_root: PathBuf) -> FreeBsdConfig {
        FreeBsdConfig {
            dataset_root,
            mount_root,
            base_snapshot: env.base.clone(),
            devfs_ruleset: 4,
            jail_prefix: "jbt".into(),
            unpack_limits: UnpackLimits {
                max_bytes: 64 << 20,
                max_entries: 10_000,
            },
            jail_gone_timeout: Duration::from_secs(30),
            ..FreeBsdConfig::default()
        }
    }

    impl Scratch {
        fn new(env: &Env, test: &str) -> Scratch {
            let u = unique(test);
            // The kernel stores a jail's path resolved; so does the mount table. A
            // symlinked /var/tmp would hide our jails from the sweep's path prefix match.
            let tmp = std::fs::canonicalize("/var/tmp")
                .or_else(|_| std::fs::canonicalize("/tmp"))
                .expect("/var/tmp or /tmp");
            Scratch {
                config: config(
                    env,
                    format!("{}/t{u}", env.zfs_root),
                    tmp.join(format!("jbt-{u}")),
                ),
                zfs_root: env.zfs_root.clone(),
            }
        }

        fn from_child_env(env: &Env) -> Option<Scratch> {
            let ds = nonempty(CHILD_DATASET_ROOT)?;
            let mnt = nonempty(CHILD_MOUNT_ROOT)?;
            Some(Scratch {
                config: config(env, ds, PathBuf::from(mnt)),
                zfs_root: env.zfs_root.clone(),
            })
        }

        fn dataset_root(&self) -> &str {
            &self.config.dataset_root
        }

        fn mount_root(&self) -> &Path {
            &self.config.mount_root
        }

        /// A backend that has not run `remove_leftovers` yet (for Engine::start).
        fn backend(&self) -> Real {
            let kernel = RealKernel::new().expect("libzfs_core_init");
            FreeBsdBackend::new(kernel, self.config.clone()).expect("backend config")
        }

        /// A backend that has taken the instance lock and swept leftovers.
        fn started(&self) -> Real {
            let b = self.backend();
            b.remove_leftovers().expect("remove_leftovers");
            b
        }

        /// Asserts nothing of the backend is left: only the test dataset itself, no
        /// mount, no jail, no directory but the lock file under the mount root.
        fn assert_empty(&self) {
            let tree = zfs_tree(self.dataset_root());
            assert_eq!(
                tree,
                vec![self.dataset_root().to_string()],
                "datasets or snapshots left under the test root"
            );
            let mounts = mounts_under(self.mount_root());
            assert!(mounts.is_empty(), "mounts left: {mounts:?}");
            let jails = jails_under(self.mount_root());
            assert!(jails.is_empty(), "jails left: {jails:?}");
            let entries: Vec<String> = std::fs::read_dir(self.mount_root())
                .expect("read mount root")
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != ".jailbuilder.lock")
                .collect();
            assert!(
                entries.is_empty(),
                "entries left in the mount root: {entries:?}"
            );
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            // Never panic here: this also runs while a failed test unwinds.
            let ds = self.config.dataset_root.clone();
            if !ds.starts_with(&format!("{}/", self.zfs_root)) {
                say(&format!(
                    "scratch: refusing to clean {ds}: not under {}",
                    self.zfs_root
                ));
                return;
            }
            match RealKernel::new().map(|k| FreeBsdBackend::new(k, self.config.clone())) {
                Ok(Ok(b)) => {
                    if let Err(e) = b.clean_all() {
                        say(&format!("scratch: clean_all {ds}: {e}"));
                    }
                    if b.kernel().zfs_exists(&ds) {
                        if let Err(e) = b.kernel().zfs_destroy(&ds) {
                            say(&format!("scratch: destroy {ds}: {e}"));
                        }
                    }
                }
                Ok(Err(e)) => say(&format!("scratch: backend for {ds}: {e}")),
                Err(e) => say(&format!("scratch: libzfs_core: {e}")),
            }
            let quick = Duration::from_secs(30);
            let left = try_run_for(
                Command::new("zfs").args(["list", "-H", "-o", "name", &ds]),
                quick,
            )
            .map(|o| o.status.success())
            .unwrap_or(true);
            if left {
                // Last resort, on our own scratch dataset only: force unmount + destroy.
                let r = try_run_for(
                    Command::new("zfs").args(["destroy", "-r", "-f", &ds]),
                    quick,
                );
                match r {
                    Ok(out) if out.status.success() => {}
                    Ok(out) => say(&format!(
                        "scratch: zfs destroy -r -f {ds}: {}",
                        text(&out.stderr)
                    )),
                    Err(e) => say(&format!("scratch: {e}")),
                }
            }
            let root = &self.config.mount_root;
            let _ = std::fs::remove_file(root.join(".jailbuilder.lock"));
            // Not remove_dir_all: it would descend into anything still mounted there.
            if let Err(e) = std::fs::remove_dir(root) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    say(&format!("scratch: rmdir {}: {e}", root.display()));
                }
            }
        }
    }

    // ------------------------------------------------------------------ archives

    fn tar_entry<W: Write>(
        tar: &mut tar::Builder<W>,
        path: &str,
        kind: tar::EntryType,
        mode: u32,
        data: &[u8],
    ) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        tar.append_data(&mut h, path, data).unwrap();
    }

    /// A small toolchain: a marker file and a shell script. /bin/sh, /usr/bin/cc and the
    /// headers come from the base snapshot the image is cloned from.
    fn toolchain_tar_gz() -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        let dir = tar::EntryType::Directory;
        let file = tar::EntryType::Regular;
        tar_entry(&mut tar, "opt", dir, 0o755, b"");
        tar_entry(&mut tar, "opt/jbtc", dir, 0o755, b"");
        tar_entry(&mut tar, "opt/jbtc/bin", dir, 0o755, b"");
        tar_entry(
            &mut tar,
            "opt/jbtc/marker.txt",
            file,
            0o644,
            MARKER.as_bytes(),
        );
        tar_entry(
            &mut tar,
            "opt/jbtc/bin/hello.sh",
            file,
            0o755,
            b"#!/bin/sh\necho \"toolchain says hello to $1\"\n",
        );
        tar.into_inner().unwrap().finish().unwrap()
    }

    /// An inputs tar (plain, as the engine takes it): `files` as (path, content).
    fn inputs_tar(files: &[(&str, &str)]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, content) in files {
            tar_entry(
                &mut tar,
                path,
                tar::EntryType::Regular,
                0o644,
                content.as_bytes(),
            );
        }
        tar.into_inner().unwrap()
    }

    fn toolchain_id() -> ToolchainId {
        ToolchainId::new(TOOLCHAIN).unwrap()
    }

    fn image(b: &Real) -> FreeBsdImage {
        let tgz = toolchain_tar_gz();
        b.create_image(&toolchain_id(), &mut &tgz[..])
            .expect("create_image")
    }

    // ------------------------------------------------------------------ running things

    fn limits() -> Limits {
        Limits {
            timeout: Duration::from_secs(120),
            ..Limits::default()
        }
    }

    fn spec(exe: &str, args: &[&str], cwd: &str) -> CommandSpec {
        CommandSpec {
            executable: exe.into(),
            arguments: args.iter().map(|s| s.to_string()).collect(),
            env_vars: vec![("PATH".into(), "/usr/bin:/bin:/usr/sbin:/sbin".into())],
            cwd: cwd.into(),
        }
    }

    fn sh(b: &Real, env: &Env, c: &FreeBsdContainer, script: &str) -> ExecOutcome {
        let cmd = PreparedCommand::new(spec("/bin/sh", &["-c", script], "/")).unwrap();
        b.exec(c, &cmd, env.user, &limits(), None)
            .unwrap_or_else(|e| panic!("exec sh -c {script:?}: {e}"))
    }

    fn describe(o: &ExecOutcome) -> String {
        format!(
            "status {:?}\nstdout: {}\nstderr: {}",
            o.status,
            text(&o.stdout),
            text(&o.stderr)
        )
    }

    fn sh_ok(b: &Real, env: &Env, c: &FreeBsdContainer, script: &str) -> String {
        let o = sh(b, env, c, script);
        assert_eq!(
            o.status,
            ExitStatus::Code(0),
            "sh -c {script:?}: {}",
            describe(&o)
        );
        text(&o.stdout)
    }

    fn engine_config(env: &Env) -> EngineConfig {
        EngineConfig {
            max_containers: 1,
            max_containers_per_toolchain: 1,
            warm_per_toolchain: 1,
            max_images: 2,
            recycler_threads: 1,
            build_user_base: env.user,
            limits: limits(),
            shutdown_grace: Duration::from_secs(30),
            ..EngineConfig::default()
        }
    }

    fn start_engine(env: &Env, s: &Scratch) -> Arc<Engine<Real>> {
        Arc::new(Engine::start(s.backend(), engine_config(env)).expect("Engine::start"))
    }

    /// Engine::wait_idle with a deadline.
    fn wait_idle(engine: &Arc<Engine<Real>>) {
        let (tx, rx) = mpsc::channel();
        let e = Arc::clone(engine);
        let t = std::thread::spawn(move || {
            e.wait_idle();
            let _ = tx.send(());
        });
        rx.recv_timeout(IDLE_TIMEOUT).unwrap_or_else(|_| {
            panic!("the engine's recycler did not go idle within {IDLE_TIMEOUT:?}")
        });
        // Joined, so the thread's Arc is gone before the caller drops the engine.
        t.join().expect("wait_idle thread");
    }

    /// Shuts the engine down and drops it (the last Arc), releasing the instance lock.
    fn stop_engine(engine: Arc<Engine<Real>>) {
        engine.shutdown();
        assert_eq!(Arc::strong_count(&engine), 1, "engine still shared");
        drop(engine);
    }

    fn build(
        engine: &Engine<Real>,
        exe: &str,
        args: &[&str],
        inputs: &[(&str, &str)],
        outputs: &[&str],
    ) -> Result<BuildOutcome, BuildError> {
        let tgz = toolchain_tar_gz();
        let tar = inputs_tar(inputs);
        engine.build(BuildRequest {
            toolchain: toolchain_id(),
            toolchain_archive: &tgz,
            inputs: &mut &tar[..],
            command: spec(exe, args, "/build"),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn build_ok(
        engine: &Engine<Real>,
        exe: &str,
        args: &[&str],
        inputs: &[(&str, &str)],
        outputs: &[&str],
    ) -> BuildOutcome {
        let out = build(engine, exe, args, inputs, outputs)
            .unwrap_or_else(|e| panic!("build {exe} {args:?}: {e}"));
        assert_eq!(
            out.exec.status,
            ExitStatus::Code(0),
            "build {exe} {args:?}: {}",
            describe(&out.exec)
        );
        out
    }

    fn stdout(out: &BuildOutcome) -> String {
        text(&out.exec.stdout)
    }

    // ------------------------------------------------------------------ tests

    #[test]
    fn image_is_cloned_from_the_base_and_holds_the_toolchain() {
        let env = setup!(false);
        let s = Scratch::new(&env, "image");
        let b = s.started();
        let img = image(&b);

        let ds = format!("{}/i-{TOOLCHAIN}", s.dataset_root());
        assert_eq!(img.dataset(), ds);
        assert_eq!(img.snapshot(), format!("{ds}@image"));
        assert!(zfs_exists(img.snapshot()), "no snapshot {}", img.snapshot());
        // Cloned from the base when there is one (lzc_clone), else created empty.
        let origin = zfs_get("origin", &ds);
        assert_eq!(origin, env.base.clone().unwrap_or_else(|| "-".into()));
        // Never mounted by `zfs mount -a`, no setuid, no atime (FreeBsdBackend::image_props).
        assert_eq!(zfs_get("mountpoint", &ds), "legacy");
        assert_eq!(zfs_get("canmount", &ds), "noauto");
        assert_eq!(zfs_get("setuid", &ds), "off");
        assert_eq!(zfs_get("atime", &ds), "off");
        // Unmounted once unpacked and snapshotted.
        let image_dir = s.mount_root().join(format!("i-{TOOLCHAIN}"));
        let mounts = mounts_under(&image_dir);
        assert!(mounts.is_empty(), "image still mounted: {mounts:?}");

        // What a container of it sees: the toolchain over the base.
        let c = b.create_container(&img).expect("create_container");
        let root = b.root(&c).to_path_buf();
        let marker = std::fs::read_to_string(root.join("opt/jbtc/marker.txt")).unwrap();
        assert_eq!(marker, MARKER);
        let mode = std::fs::metadata(root.join("opt/jbtc/bin/hello.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "script mode {mode:o}");
        assert!(
            root.join("dev").is_dir(),
            "no /dev mount point in the image"
        );
        if env.base.is_some() {
            for f in ["bin/sh", "usr/bin/cc", "usr/include/stdio.h"] {
                assert!(
                    root.join(f).exists(),
                    "{f} missing: the base is not under the image"
                );
            }
            let out = sh_ok(&b, &env, &c, "/opt/jbtc/bin/hello.sh jails");
            assert_eq!(out, "toolchain says hello to jails\n");
        } else {
            say("note: JAILBUILDER_BASE_SNAPSHOT unset: base files and exec not checked");
        }
        b.destroy_container(c).expect("destroy_container");
        b.destroy_image(img).expect("destroy_image");
        s.assert_empty();
    }

    #[test]
    fn container_is_a_mounted_clone_with_devfs_and_a_jail() {
        let env = setup!(false);
        let s = Scratch::new(&env, "container");
        let b = s.started();
        let img = image(&b);
        let c = b.create_container(&img).expect("create_container");
        let root = b.root(&c).to_path_buf();
        let ds = c.dataset().to_string();
        let jid = c.jid().expect("a jail");

        // The jail, through the kernel seam (jail_get(2)) and through jls(8).
        let k = b.kernel();
        assert_eq!(k.jail_find(c.jail_name()).unwrap(), Some(jid));
        let listed = k.jail_list().unwrap();
        let me = listed
            .iter()
            .find(|j| j.jid == jid)
            .unwrap_or_else(|| panic!("jid {jid} not in jail_list: {listed:?}"));
        assert_eq!(me.name, c.jail_name());
        assert_eq!(me.path, root);
        let jls = run_ok(Command::new("jls").args(["-j", &jid.to_string(), "name", "path"]));
        assert_eq!(
            jls.trim(),
            format!("{} {}", c.jail_name(), root.display()),
            "jls"
        );

        // The dataset: a clone of the image with the throwaway properties poudriere uses.
        assert_eq!(zfs_get("origin", &ds), img.snapshot());
        assert_eq!(zfs_get("sync", &ds), "disabled");
        assert_eq!(zfs_get("atime", &ds), "off");
        assert_eq!(zfs_get("setuid", &ds), "off");
        assert!(zfs_exists(&format!("{ds}@clean")), "no {ds}@clean");

        // Mounted: the clone at the root, devfs at root/dev.
        let mounts = mounts_under(&root);
        let want_zfs = (ds.clone(), root.display().to_string(), "zfs".to_string());
        let dev = root.join("dev");
        assert!(mounts.contains(&want_zfs), "{want_zfs:?} not in {mounts:?}");
        assert!(
            mounts
                .iter()
                .any(|(_, on, t)| t == "devfs" && Path::new(on) == dev),
            "no devfs on {}: {mounts:?}",
            dev.display()
        );
        // Ruleset 4 (devfsrules_jail in /etc/defaults/devfs.rules: hide_all, then unhide
        // basic (null, zero, random, ...) and login (pts)) applies to the mount itself.
        let null = std::fs::metadata(dev.join("null")).expect("dev/null in the container");
        assert!(null.file_type().is_char_device());
        for hidden in ["mem", "kmem", "io"] {
            if Path::new("/dev").join(hidden).exists() {
                assert!(
                    !dev.join(hidden).exists(),
                    "/dev/{hidden} visible in the container: ruleset 4 not applied"
                );
            }
        }

        if env.base.is_some() {
            let out = sh_ok(
                &b,
                &env,
                &c,
                "id -u; id -g; sysctl -n security.jail.jailed; hostname",
            );
            let u = env.user.uid;
            assert_eq!(out, format!("{u}\n{u}\n1\n{}\n", c.jail_name()));
        }

        b.destroy_container(c).expect("destroy_container");
        b.destroy_image(img).expect("destroy_image");
        s.assert_empty();
    }

    const HELLO_C: &str = r#"#include <stdio.h>
#include "hello.h"
int jb_counter;
static int twice(int x) { return 2 * x; }
int jb_greet(const char *who) {
    jb_counter++;
    return printf("hello, %s %d\n", who, twice(GREETING));
}
"#;
    const HELLO_H: &str = "#define GREETING 21\nint jb_greet(const char *who);\n";

    fn nm(obj: &Path) -> String {
        run_ok(Command::new("nm").arg(obj))
    }

    #[test]
    fn compile_in_the_jail_as_the_build_user_matches_a_host_compile() {
        let env = setup!(true);
        let s = Scratch::new(&env, "compile");
        let engine = start_engine(&env, &s);

        let ids = build_ok(&engine, "/bin/sh", &["-c", "id -u; id -g; id -G"], &[], &[]);
        let u = env.user.uid.to_string();
        let lines: Vec<String> = stdout(&ids).lines().map(str::to_string).collect();
        assert_eq!(lines.len(), 3, "{}", describe(&ids.exec));
        assert_eq!(lines[0], u, "uid");
        assert_eq!(lines[1], u, "gid");
        // setgroups(1, [gid]): the build gid and nothing else (id -G lists egid first).
        let groups: Vec<&str> = lines[2].split_whitespace().collect();
        assert!(
            !groups.is_empty() && groups.iter().all(|g| *g == u),
            "supplementary groups: {groups:?}"
        );

        let inputs = [("build/hello.c", HELLO_C), ("build/hello.h", HELLO_H)];
        let args = ["-c", "-O2", "hello.c", "-o", "hello.o"];
        let jail = build_ok(&engine, "/usr/bin/cc", &args, &inputs, &["hello.o"]);
        assert_eq!(jail.outputs.len(), 1, "hello.o not read back");
        assert_eq!(jail.outputs[0].path, "hello.o");
        let jail_obj = &jail.outputs[0].data;
        assert!(jail_obj.starts_with(b"\x7fELF"), "not an ELF object");

        // The same compile on the host, same relative names (they end up in the object).
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("hello.c"), HELLO_C).unwrap();
        std::fs::write(host.path().join("hello.h"), HELLO_H).unwrap();
        run_ok(Command::new("cc").args(args).current_dir(host.path()));
        let host_obj = std::fs::read(host.path().join("hello.o")).unwrap();
        let jail_path = host.path().join("jail.o");
        std::fs::write(&jail_path, jail_obj).unwrap();
        let host_syms = nm(&host.path().join("hello.o"));
        assert!(host_syms.contains("jb_greet"), "{host_syms}");
        assert_eq!(
            nm(&jail_path),
            host_syms,
            "nm of the jail's and the host's objects"
        );

        // Byte for byte when the compilers are the same build (the base snapshot and the
        // host are normally the same release; a patched host clang may differ).
        let jail_cc = build_ok(&engine, "/usr/bin/cc", &["--version"], &[], &[]);
        let host_cc = run_ok(Command::new("cc").arg("--version"));
        if stdout(&jail_cc) == host_cc {
            assert!(host_obj == *jail_obj, "same compiler, different objects");
        } else {
            say(&format!(
                "note: jail cc {:?} differs from host cc {:?}: compared symbols only",
                stdout(&jail_cc).lines().next(),
                host_cc.lines().next()
            ));
        }

        // A compile error comes back as the compiler's status and stderr, not as an error.
        let bad = build(
            &engine,
            "/usr/bin/cc",
            &["-c", "bad.c"],
            &[("build/bad.c", "int x = ;\n")],
            &["bad.o"],
        )
        .expect("a failed compile is a result");
        assert_ne!(bad.exec.status, ExitStatus::Code(0));
        assert!(
            text(&bad.exec.stderr).contains("bad.c"),
            "{}",
            describe(&bad.exec)
        );
        assert!(bad.outputs.is_empty());

        wait_idle(&engine);
        stop_engine(engine);
        s.assert_empty();
    }

    #[test]
    fn reset_rolls_back_files_and_kills_leftover_processes() {
        let env = setup!(true);
        let s = Scratch::new(&env, "reset");
        let engine = start_engine(&env, &s);

        // Build 1 writes files and leaves processes behind: a background job that keeps
        // the stdout pipe open, and a daemon(8) (supervisor + child, detached, setsid).
        let script = "\
            echo one > /build/leftover; \
            echo one > /tmp/leftover.tmp; \
            sleep 1000 & echo $! > /build/bg.pid; \
            daemon -f -p /build/child.pid -P /build/super.pid sleep 1000; \
            i=0; while [ ! -s /build/child.pid -o ! -s /build/super.pid ] && [ $i -lt 100 ]; \
            do sleep 0.1; i=$((i+1)); done; \
            cat /build/bg.pid /build/child.pid /build/super.pid";
        let started = Instant::now();
        let one = build_ok(&engine, "/bin/sh", &["-c", script], &[], &[]);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "a leftover process held the build open for {:?}",
            started.elapsed()
        );
        let pids: Vec<i32> = stdout(&one)
            .lines()
            .map(|l| {
                l.trim()
                    .parse()
                    .unwrap_or_else(|e| panic!("pid {l:?}: {e}"))
            })
            .collect();
        assert_eq!(pids.len(), 3, "{}", describe(&one.exec));

        // The recycler resets the container: jail_remove kills, rollback, new jail.
        wait_idle(&engine);
        for pid in &pids {
            if let Some(p) = process(*pid) {
                assert!(
                    !p.contains("sleep") && !p.contains("daemon"),
                    "pid {pid} survived the reset: {p}"
                );
            }
        }
        let jails = jails_under(s.mount_root());
        assert_eq!(jails.len(), 1, "one container, one jail: {jails:?}");
        let procs = processes_in_jail(jails[0].0);
        assert!(procs.is_empty(), "processes in the fresh jail: {procs:?}");

        // Build 2, same container: none of build 1's files.
        let check = "for f in /build/leftover /tmp/leftover.tmp /build/bg.pid /build/child.pid; \
                     do [ -e $f ] && echo \"present: $f\"; done; echo checked";
        let two = build_ok(&engine, "/bin/sh", &["-c", check], &[], &[]);
        assert_eq!(stdout(&two), "checked\n");
        wait_idle(&engine);
        let st = engine.stats();
        assert_eq!(
            st.containers_created, 1,
            "max_containers=1 reuses one: {st:?}"
        );
        assert_eq!(st.reset_failures, 0, "{st:?}");
        assert!(st.containers_reset >= 2, "{st:?}");

        stop_engine(engine);
        s.assert_empty();
    }

    /// Compiled inside the jail: socket(2) for each family, "name ok" or "name errno=N".
    const SOCKET_PROBE_C: &str = r#"#include <sys/socket.h>
#include <netinet/in.h>
#include <errno.h>
#include <stdio.h>
#include <unistd.h>
static void try(const char *name, int af, int type) {
    int s = socket(af, type, 0);
    if (s < 0) printf("%s errno=%d\n", name, errno);
    else { printf("%s ok\n", name); close(s); }
}
int main(void) {
    try("inet-stream", AF_INET, SOCK_STREAM);
    try("inet-dgram", AF_INET, SOCK_DGRAM);
    try("inet6-stream", AF_INET6, SOCK_STREAM);
    try("unix-stream", AF_UNIX, SOCK_STREAM);
    return 0;
}
"#;

    #[test]
    fn jail_has_no_network() {
        let env = setup!(true);
        let s = Scratch::new(&env, "net");
        let b = s.started();
        let img = image(&b);
        let c = b.create_container(&img).expect("create_container");

        // A listener on the host's loopback the jail must not reach.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let o = sh(&b, &env, &c, &format!("nc -z -w 3 127.0.0.1 {port}"));
        assert_ne!(
            o.status,
            ExitStatus::Code(0),
            "nc reached the host: {}",
            describe(&o)
        );
        listener.set_nonblocking(true).unwrap();
        match listener.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("the host listener saw a connection from the jail: {other:?}"),
        }

        // Why: the jail was created without ip4/ip6 parameters, so kern_jail_set gives it
        // PR_IP4|PR_IP4_USER (and PR_IP6|PR_IP6_USER) with no addresses ("Set some default
        // values" in sys/kern/kern_jail.c); prison_check_af() then returns EAFNOSUPPORT for
        // AF_INET/AF_INET6, and socreate() (sys/kern/uipc_socket.c) turns that into
        // EPROTONOSUPPORT. AF_LOCAL is always allowed. (Checked in freebsd-src.)
        std::fs::write(b.root(&c).join("tmp/probe.c"), SOCKET_PROBE_C).unwrap();
        sh_ok(&b, &env, &c, "cc -o /tmp/probe /tmp/probe.c");
        let out = sh_ok(&b, &env, &c, "/tmp/probe");
        let e = libc::EPROTONOSUPPORT;
        assert_eq!(
            out,
            format!("inet-stream errno={e}\ninet-dgram errno={e}\ninet6-stream errno={e}\nunix-stream ok\n"),
            "socket(2) inside the jail"
        );

        b.destroy_container(c).expect("destroy_container");
        b.destroy_image(img).expect("destroy_image");
        s.assert_empty();
    }

    /// Compiled inside the jail, run as the jailed child itself (argv[1]: a pty slave):
    /// whether /dev/tty opens, whether it leads its own session, whether TIOCSTI on the
    /// slave is accepted.
    const TTY_PROBE_C: &str = r#"#include <sys/ioctl.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char c = 'x';
    int fd = open("/dev/tty", O_RDWR);
    printf("dev-tty errno=%d\n", fd < 0 ? errno : 0);
    printf("session-leader %d\n", getsid(0) == getpid());
    if (argc < 2)
        return 2;
    fd = open(argv[1], O_RDWR | O_NOCTTY);
    if (fd < 0) {
        printf("pts-open errno=%d\n", errno);
        return 0;
    }
    printf("tiocsti errno=%d\n", ioctl(fd, TIOCSTI, &c) < 0 ? errno : 0);
    return 0;
}
"#;

    /// A pty master (posix_openpt(3)), kept open while the slave is in use, and the
    /// slave's path.
    fn open_pty() -> (std::os::fd::OwnedFd, String) {
        use std::os::fd::FromRawFd;
        // SAFETY: posix_openpt/grantpt/unlockpt/ptsname on a descriptor we own; ptsname's
        // static buffer is copied at once (no other thread of this test calls it).
        unsafe {
            let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(m >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
            let master = std::os::fd::OwnedFd::from_raw_fd(m);
            assert_eq!(libc::grantpt(m), 0, "grantpt");
            assert_eq!(libc::unlockpt(m), 0, "unlockpt");
            let name = libc::ptsname(m);
            assert!(!name.is_null(), "ptsname");
            let slave = std::ffi::CStr::from_ptr(name)
                .to_string_lossy()
                .into_owned();
            (master, slave)
        }
    }

    /// Not a test on its own: the child process of
    /// `a_job_cannot_reach_a_controlling_terminal`, started as a session leader with the
    /// pty named by CHILD_TTY as its controlling terminal. Runs the tty probe in a jail as
    /// the build user and prints "CHILD ..." lines.
    #[test]
    fn tty_child() {
        let Some(slave) = nonempty(CHILD_TTY) else {
            return;
        };
        let env = env(true).unwrap_or_else(|reason| panic!("tty child: {reason}"));
        let s = Scratch::from_child_env(&env).expect("tty child variables");
        let mut report = String::from("\n");
        // The premise: this process has a controlling terminal a jailed child would
        // otherwise inherit (tty_tty.c ctty_clone gives /dev/tty to P_CONTROLT only).
        let host = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty");
        report += &format!("CHILD host-tty {}\n", host.is_ok());
        let b = s.started();
        let img = image(&b);
        let c = b.create_container(&img).expect("create_container");
        let root = b.root(&c).to_path_buf();
        // The jail's own devfs node of the slave: readable and writable by anyone, so only
        // the session boundary (not the node's owner and mode) decides below.
        let node = root.join(slave.trim_start_matches('/'));
        std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o666))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", node.display()));
        std::fs::write(root.join("tmp/ttyprobe.c"), TTY_PROBE_C).unwrap();
        sh_ok(&b, &env, &c, "cc -o /tmp/ttyprobe /tmp/ttyprobe.c");
        let cmd = PreparedCommand::new(spec("/tmp/ttyprobe", &[&slave], "/")).unwrap();
        let o = b
            .exec(&c, &cmd, env.user, &limits(), None)
            .expect("exec ttyprobe");
        for line in text(&o.stdout).lines() {
            report += &format!("CHILD {line}\n");
        }
        report += &format!("CHILD status {:?}\n", o.status);
        b.destroy_container(c).expect("destroy_container");
        b.destroy_image(img).expect("destroy_image");
        let mut out = std::io::stdout();
        let _ = out.write_all(report.as_bytes());
        let _ = out.flush();
        // The parent's Scratch removes the test dataset and the mount root.
        std::mem::forget(s);
    }

    #[test]
    fn a_job_cannot_reach_a_controlling_terminal() {
        use std::os::unix::process::CommandExt;
        let env = setup!(true);
        let s = Scratch::new(&env, "tty");
        let (master, slave) = open_pty();
        let slave_c = std::ffi::CString::new(slave.clone()).unwrap();
        let exe = std::env::current_exe().unwrap();
        let mut cmd = Command::new(exe);
        cmd.args([
            "real::tty_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_TTY, &slave)
        .env(CHILD_DATASET_ROOT, s.dataset_root())
        .env(CHILD_MOUNT_ROOT, s.mount_root());
        // SAFETY: between fork and exec only setsid(2), open(2), ioctl(2), close(2) on a
        // path prepared before the fork: async-signal-safe, no allocation.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let fd = libc::open(slave_c.as_ptr(), libc::O_RDWR);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Opening a tty does not make it the controlling terminal on FreeBSD;
                // TIOCSCTTY does (tty.c tty_generic_ioctl), for a session leader.
                if libc::ioctl(fd, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
        let out = run_ok_for(&mut cmd, Duration::from_secs(300));
        // The master stays open until the child is done: closing it would revoke the
        // slave, and /dev/tty would fail for that reason instead.
        drop(master);
        let got: Vec<&str> = out
            .lines()
            .filter_map(|l| l.find("CHILD ").map(|at| &l[at + 6..]))
            .collect();
        assert_eq!(
            got.first().copied(),
            Some("host-tty true"),
            "set-up: the child process has no controlling terminal\n{out}"
        );
        // setsid(2) in the jailed child (src/freebsd/real.rs child_main): a session of
        // its own, no controlling terminal, so
        // - /dev/tty is the `ctty` device, whose open is ENXIO (sys/kern/tty_tty.c
        //   ctty_clone, cttyopen);
        // - the pty itself, a device of another prison, is not even visible in the jail's
        //   devfs (sys/fs/devfs/devfs_vnops.c devfs_prison_check, at lookup, with an
        //   exception for the caller's controlling terminal only); were it visible,
        //   TIOCSTI on a tty that is not the caller's controlling terminal needs
        //   PRIV_TTY_STI: EACCES (sys/kern/tty.c tty_generic_ioctl). Either is a refusal.
        // Without the setsid the jailed child shares this process's session: /dev/tty and
        // the pty open (the node is 0666) and TIOCSTI is accepted ("tiocsti errno=0").
        assert_eq!(
            got[1..3],
            [
                format!("dev-tty errno={}", libc::ENXIO).as_str(),
                "session-leader 1",
            ],
            "tty probe in the jail\n{out}"
        );
        // The probe prints "pts-open errno=N" only when the open failed.
        let sti_refused = format!("tiocsti errno={}", libc::EACCES);
        assert!(
            got.get(3)
                .is_some_and(|l| l.starts_with("pts-open errno=") || *l == sti_refused),
            "the job reached the pty: {:?}\n{out}",
            got.get(3)
        );
        assert_eq!(got.get(4).copied(), Some("status Code(0)"), "{out}");
        s.assert_empty();
    }

    /// `jls -j <jid> -n all`: every parameter (the pseudo-parameter `all`, jls(8)) as
    /// name=value, booleans as name or noname (usr.sbin/jls/jls.c), split on whitespace.
    fn jail_params_from_jls(jid: i32) -> Vec<String> {
        run_ok(Command::new("jls").args(["-j", &jid.to_string(), "-n", "all"]))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn jail_parameters_read_back_as_set() {
        let env = setup!(false);
        let s = Scratch::new(&env, "params");
        let b = s.started();
        let img = image(&b);
        let c = b.create_container(&img).expect("create_container");
        let jid = c.jid().expect("a jail");
        let params = jail_params_from_jls(jid);
        for want in [
            "persist",
            "securelevel=3",
            "enforce_statfs=2",
            "children.max=0",
            "devfs_ruleset=4",
        ] {
            assert!(
                params.iter().any(|p| p == want),
                "{want} not in jls -n: {params:?}"
            );
        }
        // Each permission passed explicitly reads back as passed.
        for want in jailbuilder::freebsd::JAIL_ALLOW {
            assert!(
                params.iter().any(|p| p == want),
                "{want} not in jls -n: {params:?}"
            );
        }
        // Every permission this kernel knows (also those not passed: newer ones, those of
        // loaded modules) is off, but allow.suser.
        let on: Vec<&String> = params
            .iter()
            .filter(|p| p.starts_with("allow.") && *p != "allow.suser")
            .filter(|p| !p.rsplit('.').next().unwrap_or("").starts_with("no"))
            .collect();
        assert!(on.is_empty(), "permissions on in the jail: {on:?}");
        // No address family of the host's: ip4/ip6 are not "inherit".
        for p in ["ip4=inherit", "ip6=inherit"] {
            assert!(!params.iter().any(|x| x == p), "{p}: {params:?}");
        }
        b.destroy_container(c).expect("destroy_container");
        b.destroy_image(img).expect("destroy_image");
        s.assert_empty();
    }

    /// Compiled inside the jail: privileged operations a compile has no use for, each
    /// "name errno=N" (0: it worked).
    const PRIV_PROBE_C: &str = r#"#include <sys/param.h>
#include <sys/uio.h>
#include <sys/ipc.h>
#include <sys/jail.h>
#include <sys/linker.h>
#include <sys/mount.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <netinet/in.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static void show(const char *what, int rc) {
    printf("%s errno=%d\n", what, rc < 0 ? errno : 0);
}
static struct iovec iov(const char *s) {
    struct iovec v = { (void *)s, strlen(s) + 1 };
    return v;
}
int main(void) {
    struct iovec m[4] = { iov("fstype"), iov("devfs"), iov("fspath"), iov("/tmp") };
    show("mount", nmount(m, 4, 0));
    show("unmount", unmount("/dev", 0));
    int fd = open("/tmp/jb-flag", O_CREAT | O_WRONLY, 0644);
    if (fd >= 0)
        close(fd);
    show("chflags", chflags("/tmp/jb-flag", SF_IMMUTABLE));
    show("shmget", shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600));
    show("kldload", kldload("jb_no_such_module"));
    struct iovec j[6] = { iov("name"), iov("jbinner"), iov("path"), iov("/"),
                          iov("persist"), { NULL, 0 } };
    show("jail", jail_set(j, 6, JAIL_CREATE));
    show("raw", socket(AF_INET, SOCK_RAW, IPPROTO_ICMP));
    show("sethostname", sethostname("jbother", 7));
    return 0;
}
"#;

    #[test]
    fn jailed_root_and_build_user_are_denied_what_the_jail_forbids() {
        let env = setup!(true);
        let s = Scratch::new(&env, "deny");
        let b = s.started();
        let img = image(&b);
        let c = b.create_container(&img).expect("create_container");

        // RLIMIT_CORE is 0, soft and hard, and the job cannot raise it
        // (kern_resource.c: raising a hard limit needs PRIV_PROC_SETRLIMIT).
        // securelevel 3 inside. enforce_statfs=2: getfsstat(2) shows only the mounts
        // beneath the jail's root, relative to it (kern_jail.c prison_enforce_statfs).
        let out = sh_ok(
            &b,
            &env,
            &c,
            "ulimit -H -c; ulimit -c; (ulimit -H -c 10) 2>/dev/null && echo raised || echo refused; \
             sysctl -n kern.securelevel; mount -p | awk '{print $2}'",
        );
        assert_eq!(out, "0\n0\nrefused\n3\n/\n/dev\n", "in the jail");

        std::fs::write(b.root(&c).join("tmp/privprobe.c"), PRIV_PROBE_C).unwrap();
        sh_ok(&b, &env, &c, "cc -o /tmp/privprobe /tmp/privprobe.c");
        let cmd = PreparedCommand::new(spec("/tmp/privprobe", &[], "/")).unwrap();
        let (eperm, enosys, eproto) = (libc::EPERM, libc::ENOSYS, libc::EPROTONOSUPPORT);
        // Why each fails, for root inside the jail too (defence in depth: no compile runs
        // as root, but a jailed root must not escape either):
        // mount (devfs: always in the kernel and jail-mountable, so only the permission
        // decides)/unmount: PRIV_VFS_MOUNT/UNMOUNT need allow.mount (kern_jail.c
        // prison_priv_check; also allow.mount.devfs, vfs_mount.c vfs_domount); chflags SF_IMMUTABLE: PRIV_VFS_SYSFLAGS needs allow.chflags;
        // shmget: sysvshm disabled without allow.sysvipc (sysv_shm.c shm_find_prison:
        // ENOSYS); kldload: securelevel > 0 (kern_linker.c kern_kldload), and
        // PRIV_KLD_LOAD is never granted in a jail; jail_set: children.max=0 (EPERM);
        // raw socket: no inet in the jail (prison_check_af, EPROTONOSUPPORT) before
        // allow.raw_sockets is even asked; sethostname: allow.noset_hostname.
        let want = format!(
            "mount errno={eperm}\nunmount errno={eperm}\nchflags errno={eperm}\n\
             shmget errno={enosys}\nkldload errno={eperm}\njail errno={eperm}\n\
             raw errno={eproto}\nsethostname errno={eperm}\n"
        );
        for user in [env.user, BuildUser { uid: 0, gid: 0 }] {
            let o = b
                .exec(&c, &cmd, user, &limits(), None)
                .unwrap_or_else(|e| panic!("exec privprobe as {user:?}: {e}"));
            assert_eq!(o.status, ExitStatus::Code(0), "{}", describe(&o));
            assert_eq!(text(&o.stdout), want, "privileged operations as {user:?}");
        }
        // /dev is still mounted in the container (the unmount was refused).
        assert!(
            mounts_under(b.root(&c))
                .iter()
                .any(|(_, on, t)| t == "devfs" && Path::new(on) == b.root(&c).join("dev")),
            "devfs gone from the container"
        );

        b.destroy_container(c).expect("destroy_container");
        b.destroy_image(img).expect("destroy_image");
        s.assert_empty();
    }

    #[test]
    fn symlinked_outputs_are_not_followed() {
        let env = setup!(true);
        let s = Scratch::new(&env, "symlink");
        let engine = start_engine(&env, &s);
        let host_file = std::fs::read("/etc/master.passwd").expect("host /etc/master.passwd");

        let refused = |script: &str, output: &str| {
            let r = build(&engine, "/bin/sh", &["-c", script], &[], &[output]);
            match r {
                Err(BuildError::Output {
                    path,
                    source: BeneathError::NotRegular { kind, .. },
                }) => {
                    assert_eq!(path, output);
                    assert_eq!(kind, "symbolic link");
                }
                Err(e) => panic!("{script:?}: expected a refused symlink output, got: {e}"),
                Ok(o) => panic!(
                    "{script:?}: a symlinked output was read ({} bytes{})",
                    o.outputs.iter().map(|x| x.data.len()).sum::<usize>(),
                    if o.outputs.iter().any(|x| x.data == host_file) {
                        ", the HOST's /etc/master.passwd"
                    } else {
                        ""
                    }
                ),
            }
        };
        // Absolute target: on the host side it would name the host's file.
        refused("ln -s /etc/master.passwd out.o", "out.o");
        // Relative target climbing out of the container root.
        refused(
            "ln -s ../../../../../../../../etc/master.passwd rel.o",
            "rel.o",
        );
        // A job error (the client's fault), not a builder failure.
        let e = build(
            &engine,
            "/bin/sh",
            &["-c", "ln -s /etc/master.passwd x.o"],
            &[],
            &["x.o"],
        )
        .unwrap_err();
        assert!(e.is_client_error(), "{e}");

        // A symlinked parent directory is resolved inside the container root (as the jail
        // itself would see it): whatever comes back is the container's own file, never
        // the host's.
        let r = build(
            &engine,
            "/bin/sh",
            &["-c", "rmdir outdir && ln -s /etc outdir"],
            &[],
            &["outdir/master.passwd"],
        );
        match r {
            Ok(o) => {
                for out in &o.outputs {
                    assert!(
                        out.data != host_file,
                        "the host's /etc/master.passwd was returned"
                    );
                    if host_file.windows(8).any(|w| w == b"jbbuild:") {
                        assert!(
                            !out.data.windows(8).any(|w| w == b"jbbuild:"),
                            "host-only user jbbuild in the returned file"
                        );
                    }
                }
            }
            Err(e) => assert!(e.is_client_error(), "{e}"),
        }
        assert!(
            engine.is_healthy(),
            "job errors must not make the builder unhealthy"
        );

        wait_idle(&engine);
        stop_engine(engine);
        s.assert_empty();
    }

    /// Not a test on its own: the child process of
    /// `leftovers_of_a_crashed_instance_are_removed_at_start_up`. Without its variables it
    /// does nothing. With them it creates an image and two containers (one with a process
    /// running in its jail) and exits without any clean-up, as a crash would.
    #[test]
    fn crash_child() {
        if nonempty(CHILD_DATASET_ROOT).is_none() {
            return;
        }
        let env = env(false).unwrap_or_else(|reason| panic!("crash child: {reason}"));
        let s = Scratch::from_child_env(&env).expect("crash child variables");
        let b = s.started();
        let img = image(&b);
        let c1 = b.create_container(&img).expect("create_container 1");
        let c2 = b.create_container(&img).expect("create_container 2");
        // On a line of its own: libtest has already printed "test real::crash_child ... ".
        let mut report = String::from("\n");
        for c in [&c1, &c2] {
            report += &format!("CHILD jail {} {}\n", c.jid().unwrap(), c.jail_name());
        }
        if env.base.is_some() {
            let pid = sh_ok(&b, &env, &c1, "sleep 1000 >/dev/null 2>&1 & echo $!");
            report += &format!("CHILD pid {}\n", pid.trim());
        }
        let mut out = std::io::stdout();
        let _ = out.write_all(report.as_bytes());
        let _ = out.flush();
        // No destructor runs: the jails, mounts, datasets and the process stay; the
        // instance lock (flock) goes with the process.
        std::process::exit(0);
    }

    #[test]
    fn leftovers_of_a_crashed_instance_are_removed_at_start_up() {
        let env = setup!(false);
        let s = Scratch::new(&env, "crash");
        let exe = std::env::current_exe().unwrap();
        let out = run_ok_for(
            Command::new(exe)
                .args([
                    "real::crash_child",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_DATASET_ROOT, s.dataset_root())
                .env(CHILD_MOUNT_ROOT, s.mount_root()),
            Duration::from_secs(300),
        );
        let mut jails = Vec::new();
        let mut pid = None;
        for line in out.lines() {
            let Some(at) = line.find("CHILD ") else {
                continue;
            };
            let f: Vec<&str> = line[at..].split_whitespace().collect();
            match f.as_slice() {
                ["CHILD", "jail", jid, name] => {
                    jails.push((jid.parse::<i32>().unwrap(), name.to_string()))
                }
                ["CHILD", "pid", p] => pid = Some(p.parse::<i32>().unwrap()),
                _ => {}
            }
        }
        assert_eq!(jails.len(), 2, "child output:\n{out}");

        // What the crash left: two jails, their mounts, the datasets, the process.
        let left = jails_under(s.mount_root());
        for (jid, name) in &jails {
            assert!(
                left.iter().any(|(j, n, _)| j == jid && n == name),
                "{name} not left: {left:?}"
            );
        }
        let mounts = mounts_under(s.mount_root());
        assert_eq!(
            mounts.iter().filter(|m| m.2 == "zfs").count(),
            2,
            "two container mounts: {mounts:?}"
        );
        assert_eq!(
            mounts.iter().filter(|m| m.2 == "devfs").count(),
            2,
            "{mounts:?}"
        );
        let tree = zfs_tree(s.dataset_root());
        assert!(
            tree.len() >= 7,
            "root, image, 2 clones and their snapshots: {tree:?}"
        );
        if let Some(pid) = pid {
            let p = process(pid).unwrap_or_else(|| panic!("pid {pid} not left running"));
            assert!(p.contains("sleep"), "{p}");
        }

        // A new instance: remove_leftovers (also what Engine::start runs first).
        let b = s.backend();
        let report = b.remove_leftovers().expect("remove_leftovers");
        for (_, name) in &jails {
            assert!(
                report.removed.contains(&format!("jail {name}")),
                "{name} not in the report: {:?}",
                report.removed
            );
        }
        assert!(
            report
                .removed
                .contains(&format!("dataset {}/i-{TOOLCHAIN}", s.dataset_root())),
            "{:?}",
            report.removed
        );
        for (jid, name) in &jails {
            assert_eq!(
                b.kernel().jail_find(name).unwrap(),
                None,
                "{name} still there"
            );
            assert!(
                !jail_known_to_jls(*jid),
                "jid {jid} still known to jls (dying?)"
            );
        }
        if let Some(pid) = pid {
            if let Some(p) = process(pid) {
                assert!(!p.contains("sleep"), "pid {pid} survived the sweep: {p}");
            }
        }
        s.assert_empty();

        // And it serves again.
        let img = image(&b);
        let c = b
            .create_container(&img)
            .expect("create_container after the sweep");
        if env.base.is_some() {
            assert_eq!(sh_ok(&b, &env, &c, "echo ok"), "ok\n");
        }
        b.destroy_container(c).expect("destroy_container");
        b.destroy_image(img).expect("destroy_image");
        s.assert_empty();
    }

    #[test]
    fn destroy_leaves_no_dataset_mount_or_jail() {
        let env = setup!(false);
        let s = Scratch::new(&env, "destroy");
        let b = s.started();
        let img = image(&b);
        let c = b.create_container(&img).expect("create_container");
        let (ds, name, jid) = (
            c.dataset().to_string(),
            c.jail_name().to_string(),
            c.jid().unwrap(),
        );
        let root = b.root(&c).to_path_buf();
        assert!(zfs_exists(&ds), "{ds} not created");
        assert!(jail_known_to_jls(jid), "jid {jid} unknown to jls");
        assert_eq!(
            mounts_under(&root).len(),
            2,
            "zfs + devfs under {}",
            root.display()
        );
        if env.base.is_some() {
            // A running process must not keep anything busy.
            sh_ok(&b, &env, &c, "sleep 1000 >/dev/null 2>&1 &");
        }

        b.destroy_container(c).expect("destroy_container");
        assert_eq!(
            b.kernel().jail_find(&name).unwrap(),
            None,
            "jail {name} left"
        );
        assert!(!jail_known_to_jls(jid), "jid {jid} left (dying?)");
        assert!(
            processes_in_jail(jid).is_empty(),
            "processes of jid {jid} left"
        );
        assert!(!zfs_exists(&ds), "{ds} left");
        assert!(!zfs_exists(&format!("{ds}@clean")), "{ds}@clean left");
        let mounts = mounts_under(&root);
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
        assert!(!root.exists(), "{} left", root.display());
        assert!(
            zfs_exists(img.snapshot()),
            "the image must outlive its container"
        );

        let image_ds = img.dataset().to_string();
        b.destroy_image(img).expect("destroy_image");
        assert!(!zfs_exists(&image_ds), "{image_ds} left");
        s.assert_empty();

        // Destroying an image while a container still uses it defers: the snapshot is
        // marked (lzc_destroy_snaps defer), the last container's destroy takes it along.
        let img = image(&b);
        let image_ds = img.dataset().to_string();
        let snap = img.snapshot().to_string();
        let c = b.create_container(&img).expect("create_container");
        b.destroy_image(img).expect("destroy_image (deferred)");
        assert_eq!(zfs_get("defer_destroy", &snap), "on", "{snap}");
        assert!(
            zfs_exists(&image_ds),
            "the image dataset went while a clone uses it"
        );
        if env.base.is_some() {
            assert_eq!(sh_ok(&b, &env, &c, "echo still-here"), "still-here\n");
        }
        b.destroy_container(c)
            .expect("destroy_container of a retired image");
        assert!(!zfs_exists(&snap), "{snap} left");
        assert!(!zfs_exists(&image_ds), "{image_ds} left");
        s.assert_empty();
    }

    // ------------------------------------------------------------------ limits

    /// A container of a fresh image on a backend built from `s` with `tune` applied.
    fn limited_container(
        s: &mut Scratch,
        tune: impl FnOnce(&mut FreeBsdConfig),
    ) -> (Real, FreeBsdImage, FreeBsdContainer) {
        tune(&mut s.config);
        let b = s.started();
        let img = image(&b);
        let c = b.create_container(&img).expect("create_container");
        (b, img, c)
    }

    /// Waits (bounded) until no process is left in jail `jid`.
    fn assert_jail_emptied(jid: i32, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !processes_in_jail(jid).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            processes_in_jail(jid),
            vec![],
            "{what}: processes left in jail {jid}"
        );
    }

    #[test]
    fn a_timeout_kills_every_process_of_the_jail() {
        let env = setup!(true);
        let mut s = Scratch::new(&env, "timeout");
        let (b, img, c) = limited_container(&mut s, |_| {});
        let jid = c.jid().expect("a jail");
        let cmd = PreparedCommand::new(spec(
            "/bin/sh",
            &["-c", "sleep 1000 & sleep 1000 & sleep 1000"],
            "/",
        ))
        .unwrap();
        let limits = Limits {
            timeout: Duration::from_secs(2),
            ..limits()
        };
        let started = Instant::now();
        let out = b.exec(&c, &cmd, env.user, &limits, None).expect("exec");
        assert_eq!(out.status, ExitStatus::TimedOut, "{}", describe(&out));
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the wait was not bounded"
        );
        assert_jail_emptied(jid, "after the timeout");
        b.destroy_container(c).expect("destroy_container");
        b.destroy_image(img).expect("destroy_image");
        s.assert_empty();
    }

    #[test]
    fn a_cancelled_exec_kills_the_jail_at_once() {
        let env = setup!(true);
        let mut s = Scratch::new(&env, "cancel");
        let (b, img, c) = limited_container(&mut s, |_| {});
        let jid = c.jid().expect("a jail");
        let cmd =
            PreparedCommand::new(spec("/bin/sh", &["-c", "sleep 1000 & sleep 1000"], "/")).unwrap();
        let token = Arc::new(jailbuilder::exec::CancelToken::new().expect("cancel pipe"));
        let t = Arc::clone(&token);
        let canceller = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(1));
            t.cancel();
        });
        let out = b.exec(&c, &cmd, env.user, &limits(), Some(&token));
        canceller.join().unwrap();
        assert!(
            out.is_err(),
            "a cancelled exec returned {:?}",
            out.map(|o| o.status)
        );
        assert_jail_emptied(jid, "after the cancel");
        b.destroy_container(c).expect("destroy_container");
        b.destroy_image(img).expect("destroy_image");
        s.assert_empty();
    }

    fn racct_enabled() -> bool {
        text(&run(Command::new("sysctl").args(["-n", "kern.racct.enable"])).stdout).trim() == "1"
    }

    #[test]
    fn rctl_rules_bound_the_jail_when_racct_is_on() {
        let env = setup!(true);
        if !racct_enabled() {
            // Not a failure even under CI: GENERIC ships RACCT disabled until
            // kern.racct.enable=1 in loader.conf (vagrant/run.sh reboots once for it).
            say("SKIP: kern.racct.enable is 0: rctl rules are not used (rlimits are)");
            return;
        }
        let mut s = Scratch::new(&env, "rctl");
        let (b, img, c) = limited_container(&mut s, |cfg| {
            cfg.jail_limits = jailbuilder::freebsd::JailLimits {
                memory_bytes: 256 << 20,
                max_processes: 16,
            };
        });
        assert!(
            b.uses_rctl(),
            "RACCT is on but the backend does not use rctl"
        );
        let rules = run_ok(Command::new("rctl").arg(format!("jail:{}", c.jail_name())));
        assert!(rules.contains("vmemoryuse:deny="), "{rules}");
        assert!(rules.contains("maxproc:deny="), "{rules}");
        assert!(
            !rules.contains("openfiles"),
            "no jail-wide openfiles rule: {rules}"
        );
        // More processes than maxproc allows: some forks fail inside the jail.
        let out = sh(
            &b,
            &env,
            &c,
            "i=0; while [ $i -lt 40 ]; do sleep 5 & i=$((i+1)); done; wait",
        );
        let err = text(&out.stderr).to_lowercase();
        assert!(
            err.contains("fork") || err.contains("resource"),
            "{}",
            describe(&out)
        );
        b.destroy_container(c).expect("destroy_container");
        b.destroy_image(img).expect("destroy_image");
        s.assert_empty();
    }

    #[test]
    fn the_container_quota_stops_a_compile_that_writes_too_much() {
        let env = setup!(true);
        let mut s = Scratch::new(&env, "quota");
        let (b, img, c) = limited_container(&mut s, |cfg| cfg.container_quota_bytes = 8 << 20);
        let out = sh(
            &b,
            &env,
            &c,
            "mkdir -p /tmp/q && dd if=/dev/random of=/tmp/q/big bs=1m count=64",
        );
        assert_ne!(out.status, ExitStatus::Code(0), "{}", describe(&out));
        assert!(
            text(&out.stderr).to_lowercase().contains("quota"),
            "EDQUOT expected: {}",
            describe(&out)
        );
        b.destroy_container(c).expect("destroy_container");
        b.destroy_image(img).expect("destroy_image");
        s.assert_empty();
    }
}
