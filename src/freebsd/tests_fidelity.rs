//! Fidelity to the FreeBSD kernel (issue 11): rules the fake learned from the kernel
//! sources, each with the orchestration behaviour it checks.

use std::sync::Arc;
use std::time::Duration;

use super::test_support::*;
use super::*;
use crate::backend::{Backend, ExitStatus, Limits, ToolchainId};
use crate::exec::{CommandSpec, PreparedCommand};

fn config(fake: &FakeKernel) -> FreeBsdConfig {
    FreeBsdConfig {
        dataset_root: "pool/jb".into(),
        mount_root: fake.base().join("mnt"),
        jail_limits: JailLimits {
            memory_bytes: 1 << 30,
            max_processes: 128,
        },
        jail_gone_timeout: Duration::from_millis(10),
        ..FreeBsdConfig::default()
    }
}

/// A started backend with one container.
fn container_on(
    fake: &Arc<FakeKernel>,
    cfg: FreeBsdConfig,
) -> (Fb, FreeBsdImage, FreeBsdContainer) {
    let b = FreeBsdBackend::new(fake.clone(), cfg).unwrap();
    b.remove_leftovers().unwrap();
    let img = b
        .create_image(
            &ToolchainId::new("tc1").unwrap(),
            &mut &toolchain_tar_gz(None)[..],
        )
        .unwrap();
    let c = b.create_container(&img).unwrap();
    (b, img, c)
}

fn cmd(exe: &str) -> PreparedCommand {
    PreparedCommand::try_from(CommandSpec {
        executable: exe.into(),
        cwd: "/work".into(),
        ..CommandSpec::default()
    })
    .unwrap()
}

fn rctl_errno(fake: &FakeKernel, rule: &str) -> Option<i32> {
    fake.rctl_add_rule(rule).err().and_then(|e| e.errno())
}

#[test]
fn rctl_deny_is_refused_where_the_kernel_cannot_deny() {
    let fake = FakeKernel::new();
    fake.set_racct(true);
    // kern_rctl.c rctl_rule_add: EOPNOTSUPP for deny on a resource without
    // RACCT_DENIABLE (kern_racct.c racct_types)...
    assert_eq!(
        rctl_errno(&fake, "jail:j:wallclock:deny=10"),
        Some(libc::EOPNOTSUPP)
    );
    assert_eq!(
        rctl_errno(&fake, "jail:j:readbps:deny=10"),
        Some(libc::EOPNOTSUPP)
    );
    assert_eq!(
        rctl_errno(&fake, "jail:j:cputime:deny=10"),
        Some(libc::EOPNOTSUPP)
    );
    // ...but memoryuse (RACCT_RSS) is accepted: "enforced in a different way" (paged out).
    assert_eq!(rctl_errno(&fake, "jail:j:memoryuse:deny=10"), None);
    assert_eq!(rctl_errno(&fake, "jail:j:vmemoryuse:deny=10"), None);
    // rctl_string_to_rule: an unknown resource is EINVAL.
    assert_eq!(
        rctl_errno(&fake, "jail:j:memory:deny=10"),
        Some(libc::EINVAL)
    );
}

#[test]
fn memory_is_limited_by_vmemoryuse_per_jail_and_rlimit_as_per_process() {
    let fake = Arc::new(FakeKernel::new());
    fake.set_racct(true);
    fake.register_program("/usr/bin/cc", |x| FakeRun {
        stdout: format!(
            "as={} nproc={}",
            x.limits.memory_bytes, x.limits.max_processes
        )
        .into_bytes(),
        ..FakeRun::exit(0)
    });
    let (b, _img, c) = container_on(&fake, config(&fake));
    let jail = c.jail_name().to_string();
    assert_eq!(
        fake.rctl_rules(),
        [
            format!("jail:{jail}:maxproc:deny=128"),
            format!("jail:{jail}:vmemoryuse:deny={}", 1u64 << 30),
        ]
    );
    let limits = Limits {
        memory_bytes: 1 << 30,
        ..Limits::default()
    };
    let out = b
        .exec(&c, &cmd("/usr/bin/cc"), USER, &limits, None)
        .unwrap();
    // RLIMIT_AS kept; RLIMIT_NPROC replaced by maxproc.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("as={} nproc=0", 1u64 << 30)
    );
    b.destroy_container(c).unwrap();
}

#[test]
fn a_process_at_its_descriptor_limit_can_still_fork() {
    let fake = Arc::new(FakeKernel::new());
    fake.set_racct(true);
    // Grows its table to RLIMIT_NOFILE (as make -j or a linker with many inputs can),
    // then forks a child, which inherits the table.
    fake.register_program("/usr/bin/make", |_| FakeRun {
        fd_table: u64::MAX,
        forks: 1,
        ..FakeRun::exit(0)
    });
    let (b, _img, c) = container_on(&fake, config(&fake));
    let limits = Limits::default();
    let out = b
        .exec(&c, &cmd("/usr/bin/make"), USER, &limits, None)
        .unwrap();
    assert_eq!(
        out.status,
        ExitStatus::Code(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The rule the backend used to add (openfiles = RLIMIT_NOFILE, per jail) makes that
    // fork fail: the jail's RACCT_NOFILE is the sum of both tables.
    let rule = format!(
        "jail:{}:openfiles:deny={}",
        c.jail_name(),
        limits.max_open_files
    );
    fake.rctl_add_rule(&rule).unwrap();
    let out = b
        .exec(&c, &cmd("/usr/bin/make"), USER, &limits, None)
        .unwrap();
    assert_eq!(out.status, ExitStatus::Code(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fork"));
    b.destroy_container(c).unwrap();
}

#[test]
fn leftover_jails_under_a_symlinked_mount_root_are_swept() {
    let fake = Arc::new(FakeKernel::new());
    // /home -> /usr/home: the configured mount root goes through a symlink.
    std::fs::create_dir(fake.base().join("real")).unwrap();
    std::os::unix::fs::symlink(fake.base().join("real"), fake.base().join("link")).unwrap();
    let cfg = FreeBsdConfig {
        mount_root: fake.base().join("link/mnt"),
        ..config(&fake)
    };
    let (b, img, c) = container_on(&fake, cfg.clone());
    assert_eq!(b.config().mount_root, fake.base().join("real/mnt"));
    // The kernel reports the jail's path resolved.
    assert_eq!(
        fake.live_jails()[0].params.path,
        fake.base()
            .join("real/mnt")
            .join(c.dataset().rsplit('/').next().unwrap())
    );
    // "Crash", then a new instance on the same (symlinked) configuration.
    std::mem::forget(c);
    std::mem::forget(img);
    drop(b);
    let b = FreeBsdBackend::new(fake.clone(), cfg).unwrap();
    let report = b.remove_leftovers().unwrap();
    assert!(
        report.removed.iter().any(|r| r.starts_with("jail ")),
        "{report:?}"
    );
    assert_eq!(fake.live_jails(), vec![]);
    // The container is gone; the complete image stays for adoption.
    assert_eq!(fake.datasets(), ["pool", "pool/jb", "pool/jb/i-tc1"]);
}

#[test]
fn a_devfs_ruleset_that_hides_nothing_is_refused_at_start() {
    let fake = Arc::new(FakeKernel::new());
    let start = |ruleset: u16| {
        let cfg = FreeBsdConfig {
            devfs_ruleset: ruleset,
            ..config(&fake)
        };
        FreeBsdBackend::new(fake.clone(), cfg).map(drop)
    };
    // Loaded with rules (as /etc/defaults/devfs.rules loads 4, devfsrules_jail): starts.
    start(4).unwrap();
    // Not loaded: mounting it would create it empty (devfs_rule.c devfs_ruleset_use).
    let e = start(12).unwrap_err();
    assert!(
        matches!(
            e,
            FreeBsdError::DevfsRulesetEmpty {
                ruleset: 12,
                loaded: false
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("not loaded"), "{e}");
    // Loaded but empty, e.g. created by an earlier devfs mount with that number.
    fake.set_devfs_ruleset(12, Some(0));
    let e = start(12).unwrap_err();
    assert!(e.to_string().contains("has no rules"), "{e}");
    // Ruleset 0 is the empty ruleset.
    let e = start(0).unwrap_err();
    assert!(e.to_string().contains("devfs_ruleset 0"), "{e}");
}

#[test]
fn the_fake_creates_an_unloaded_ruleset_empty_when_devfs_mounts_it() {
    let fake = FakeKernel::new();
    let dir = fake.base().join("dev");
    std::fs::create_dir(&dir).unwrap();
    assert_eq!(fake.devfs_ruleset_rules(9).unwrap(), None);
    fake.mount_devfs(&dir, 9).unwrap();
    assert_eq!(fake.devfs_ruleset_rules(9).unwrap(), Some(0));
    assert_eq!(fake.devfs_ruleset_rules(4).unwrap(), Some(5));
}

#[test]
fn a_timeout_kill_gets_the_child_even_when_jail_remove_fails() {
    let fake = Arc::new(FakeKernel::new());
    fake.register_program("/usr/bin/cc", |_| FakeRun {
        hang: true,
        left_running: 2,
        ..FakeRun::default()
    });
    let (b, _img, c) = container_on(&fake, config(&fake));
    fake.take_calls();
    fake.fail_on("jail_remove", 1, libc::EPERM);
    // The fake panics if the child survives the kill (waitpid would block forever).
    let out = b
        .exec(&c, &cmd("/usr/bin/cc"), USER, &Limits::default(), None)
        .unwrap();
    assert_eq!(out.status, ExitStatus::TimedOut);
    let jid = c.jid().unwrap();
    assert_eq!(
        fake.take_calls(),
        [
            format!("exec {jid} /usr/bin/cc as 1000:1000"),
            format!("kill jail {jid} (timeout)"),
            format!("pdkill child in jail {jid}"),
            format!("jail_remove {jid} -> injected errno {}", libc::EPERM),
            format!("jail_kill_processes {jid}"),
            format!("jail_kill_processes {jid}"),
        ]
    );
    // Everything the compile left running is dead; the jail itself lives on (reset
    // removes it).
    assert_eq!(fake.live_jails()[0].processes, 0);
    b.destroy_container(c).unwrap();
}

#[test]
fn a_process_forked_during_the_kill_pass_is_killed_too() {
    let fake = Arc::new(FakeKernel::new());
    fake.register_program("/usr/bin/cc", |_| FakeRun {
        hang: true,
        escapes_kill: 3,
        ..FakeRun::default()
    });
    let (b, _img, c) = container_on(&fake, config(&fake));
    let out = b
        .exec(&c, &cmd("/usr/bin/cc"), USER, &Limits::default(), None)
        .unwrap();
    assert_eq!(out.status, ExitStatus::TimedOut);
    // jail_remove's pass missed the three (PRS_NEW); a second jail_remove would do
    // nothing on the dying jail; the sweep by jail id got them.
    let jail = fake
        .jails()
        .into_iter()
        .find(|j| Some(j.jid) == c.jid())
        .unwrap();
    assert!(!jail.alive);
    assert_eq!(jail.processes, 0);
    b.destroy_container(c).unwrap();
}

/// Between pdfork and execve the child calls no libc function that libthr interposes
/// with a lock (signal/sigaction/sigprocmask: lib/libthr/thread/thr_sig.c); see
/// real.rs child_main. The source is read as text, so this runs on every OS.
#[test]
fn the_forked_child_makes_no_libthr_locked_signal_call() {
    let src = include_str!("real.rs");
    let child = &src[src
        .find("unsafe fn child_main")
        .expect("child_main in real.rs")..];
    for call in [
        "libc::signal(",
        "libc::sigaction(",
        "libc::sigprocmask(",
        "pthread_sigmask(",
    ] {
        assert!(!child.contains(call), "child_main calls {call}");
    }
    assert!(child.contains("abi::SYS_SIGACTION") && child.contains("abi::SYS_SIGPROCMASK"));
}

#[test]
fn doctor_probes_the_configured_dataset_root_ruleset_and_limits() {
    use super::probe::probe_kernel;
    let fake = FakeKernel::new();
    let item = |items: &[crate::native::ProbeItem], name: &str| {
        items.iter().find(|i| i.name == name).cloned().unwrap()
    };
    let cfg = FreeBsdConfig {
        dataset_root: "pool/builds".into(),
        devfs_ruleset: 12,
        ..config(&fake)
    };
    let items = probe_kernel(&fake, &cfg, 1 << 30, 64);
    let root = item(&items, "dataset root");
    assert!(
        root.ok && root.detail.starts_with("pool/builds "),
        "{root:?}"
    );
    // Without RACCT the limits are not what was configured: not reported as OK.
    let limits = item(&items, "resource limits");
    assert!(!limits.ok, "{limits:?}");
    let devfs = item(&items, "devfs ruleset");
    assert!(
        !devfs.ok && devfs.detail.contains("not loaded"),
        "{devfs:?}"
    );

    fake.set_racct(true);
    let cfg = FreeBsdConfig {
        dataset_root: "tank/jb".into(),
        ..config(&fake)
    };
    let items = probe_kernel(&fake, &cfg, 1 << 30, 64);
    assert!(item(&items, "resource limits").ok);
    assert!(item(&items, "devfs ruleset").ok);
    let root = item(&items, "dataset root");
    assert!(!root.ok && root.detail.contains("tank"), "{root:?}");
}
