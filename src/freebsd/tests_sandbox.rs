//! What the jailed child is asked to do and what the jail is created with: a new session,
//! RLIMIT_CORE 0, the exact jail_set(2) parameters, and the fake's jail_set checks.

use std::sync::Arc;

use super::test_support::*;
use super::*;
use crate::backend::{Backend, Limits, ToolchainId};
use crate::exec::{CommandSpec, PreparedCommand};

fn backend(fake: &Arc<FakeKernel>, jail_limits: JailLimits) -> Fb {
    let cfg = FreeBsdConfig {
        dataset_root: "pool/jb".into(),
        mount_root: fake.base().join("mnt"),
        jail_limits,
        ..FreeBsdConfig::default()
    };
    let b = FreeBsdBackend::new(fake.clone(), cfg).unwrap();
    b.remove_leftovers().unwrap();
    b
}

fn cmd() -> PreparedCommand {
    PreparedCommand::try_from(CommandSpec {
        executable: "/usr/bin/cc".into(),
        arguments: vec![],
        env_vars: vec![],
        cwd: "/work".into(),
    })
    .unwrap()
}

/// Runs the fake compiler once in a fresh container; the plan its child was given (as the
/// fake recorded it, and as the program saw it).
fn plan_of_one_exec(fake: &Arc<FakeKernel>, b: &Fb, limits: &Limits) -> ExecPlan {
    let seen = Arc::new(std::sync::Mutex::new(None));
    let s = seen.clone();
    fake.register_program("/usr/bin/cc", move |x| {
        *s.lock().unwrap() = Some(x.plan.clone());
        FakeRun::exit(0)
    });
    let img = b
        .create_image(
            &ToolchainId::new("tc").unwrap(),
            &mut &toolchain_tar_gz(None)[..],
        )
        .unwrap();
    let c = b.create_container(&img).unwrap();
    let before = fake.exec_plans().len();
    b.exec(&c, &cmd(), USER, limits, None).unwrap();
    let plans = fake.exec_plans();
    assert_eq!(plans.len(), before + 1, "one exec, one plan");
    let plan = plans.last().unwrap().clone();
    assert_eq!(seen.lock().unwrap().as_ref(), Some(&plan));
    assert_eq!(plan.jid, c.jid().unwrap());
    assert_eq!(plan.user, USER);
    b.destroy_container(c).unwrap();
    b.destroy_image(img).unwrap();
    plan
}

#[test]
fn the_child_starts_a_new_session_and_may_not_dump_core() {
    let fake = Arc::new(FakeKernel::new());
    let b = backend(&fake, JailLimits::default());
    let l = Limits::default();
    let plan = plan_of_one_exec(&fake, &b, &l);
    assert!(plan.new_session, "no setsid(2): {plan:?}");
    assert_eq!(
        plan.rlimits,
        [
            (Rlimit::As, l.memory_bytes),
            (Rlimit::Nproc, l.max_processes),
            (Rlimit::Nofile, l.max_open_files),
            (Rlimit::Fsize, l.max_file_bytes),
            (Rlimit::Core, 0),
        ]
    );

    // Limits of 0 mean "unlimited" and set nothing, but RLIMIT_CORE is 0 all the same.
    let none = Limits {
        memory_bytes: 0,
        max_processes: 0,
        max_open_files: 0,
        max_file_bytes: 0,
        ..Limits::default()
    };
    let plan = plan_of_one_exec(&fake, &b, &none);
    assert!(plan.new_session);
    assert_eq!(plan.rlimits, [(Rlimit::Core, 0)]);
}

#[test]
fn with_rctl_rules_the_child_still_gets_a_new_session_and_no_core() {
    let fake = Arc::new(FakeKernel::new());
    fake.set_racct(true);
    let b = backend(
        &fake,
        JailLimits {
            memory_bytes: 1 << 30,
            max_processes: 64,
        },
    );
    let l = Limits::default();
    let plan = plan_of_one_exec(&fake, &b, &l);
    assert!(plan.new_session);
    // maxproc is per jail and replaces RLIMIT_NPROC; RLIMIT_AS stays (vmemoryuse bounds
    // the jail's sum, RLIMIT_AS each process).
    assert_eq!(
        plan.rlimits,
        [
            (Rlimit::As, l.memory_bytes),
            (Rlimit::Nofile, l.max_open_files),
            (Rlimit::Fsize, l.max_file_bytes),
            (Rlimit::Core, 0),
        ]
    );
}

#[test]
fn the_jail_is_created_with_exactly_these_parameters() {
    let fake = Arc::new(FakeKernel::new());
    let b = backend(&fake, JailLimits::default());
    let img = b
        .create_image(
            &ToolchainId::new("tc").unwrap(),
            &mut &toolchain_tar_gz(None)[..],
        )
        .unwrap();
    let c = b.create_container(&img).unwrap();
    let jails = fake.live_jails();
    assert_eq!(jails.len(), 1);
    let got: Vec<String> = jails[0].jail_set.iter().map(|p| p.to_string()).collect();
    let name = c.jail_name();
    let root = b.root(&c).display().to_string();
    assert_eq!(
        got,
        [
            format!("name={name}"),
            format!("path={root}"),
            format!("host.hostname={name}"),
            "persist".into(),
            "securelevel=3".into(),
            "enforce_statfs=2".into(),
            "children.max=0".into(),
            "devfs_ruleset=4".into(),
            "allow.noset_hostname".into(),
            "allow.nosysvipc".into(),
            "allow.noraw_sockets".into(),
            "allow.nochflags".into(),
            "allow.nomount".into(),
            "allow.mount.nodevfs".into(),
            "allow.mount.nozfs".into(),
            "allow.noquotas".into(),
            "allow.nosocket_af".into(),
            "allow.nomlock".into(),
            "allow.noreserved_ports".into(),
            "allow.noread_msgbuf".into(),
            "allow.nounprivileged_proc_debug".into(),
            "allow.suser".into(),
        ]
    );
    // Integers are 4 bytes, booleans by name only (DESIGN.md): the types say so, and no
    // network parameter is passed (no ip4/ip6: no inet sockets; no vnet).
    for p in &jails[0].jail_set {
        assert!(
            !["ip4", "ip6", "ip4.addr", "ip6.addr", "vnet"].contains(&p.name()),
            "{p}"
        );
    }
    // Every permission the fake knows (every 14.x kernel has them) is named explicitly,
    // and off but allow.suser.
    for (n, ty) in JAIL_PARAM_TYPES {
        if !n.starts_with("allow.") || *n == "allow.suser" {
            continue;
        }
        assert_eq!(*ty, JailParamType::Bool);
        let (head, last) = n.rsplit_once('.').unwrap();
        let off = format!("{head}.no{last}");
        assert!(
            jails[0]
                .jail_set
                .iter()
                .any(|p| matches!(p, JailParam::Flag(f) if *f == off)),
            "{n} is not turned off explicitly ({off})"
        );
    }
    b.destroy_container(c).unwrap();
    b.destroy_image(img).unwrap();
}

fn good() -> Vec<JailParam> {
    JailParams {
        name: "j".into(),
        path: "/var/jb/j".into(),
        hostname: "j".into(),
        securelevel: 3,
        devfs_ruleset: 4,
    }
    .jail_set_params()
}

fn with(extra: JailParam) -> Vec<JailParam> {
    let mut v = good();
    v.push(extra);
    v
}

#[test]
fn the_fake_refuses_what_kern_jail_set_refuses() {
    assert_eq!(FakeKernel::check_jail_set(&good()), Ok(()));
    // Names 14.x does not know (a newer release's, a module's that may not be loaded) and
    // made-up ones: EINVAL "unknown parameter".
    for n in [
        "allow.nosetaudit",
        "allow.nounprivileged_parent_tampering",
        "allow.mount.nonullfs",
        "allow.novmm",
        "allow.nosuchthing",
        "children.cur",
    ] {
        let p = if n == "children.cur" {
            JailParam::Int(n, 0)
        } else {
            JailParam::Flag(n)
        };
        assert_eq!(
            FakeKernel::check_jail_set(&with(p)),
            Err((libc::EINVAL, format!("unknown parameter: {n}")))
        );
    }
    // Both forms of a boolean are known; "no" alone is not a name.
    assert_eq!(
        FakeKernel::check_jail_set(&with(JailParam::Flag("allow.mount.zfs"))),
        Ok(())
    );
    assert_eq!(
        FakeKernel::check_jail_set(&with(JailParam::Flag("allow.no"))),
        Err((libc::EINVAL, "unknown parameter: allow.no".into()))
    );
    // Wrong types: an integer as a string or a flag, a value on a boolean.
    for p in [
        JailParam::Str("securelevel", b"3".to_vec()),
        JailParam::Flag("children.max"),
        JailParam::Int("allow.nomount", 1),
        JailParam::Str("path", b"/a\0b".to_vec()),
    ] {
        assert_eq!(
            FakeKernel::check_jail_set(&with(p.clone())).map_err(|e| e.0),
            Err(libc::EINVAL),
            "{p}"
        );
    }
    // Out-of-range values.
    assert_eq!(
        FakeKernel::check_jail_set(&with(JailParam::Int("enforce_statfs", 3))).map_err(|e| e.0),
        Err(libc::EINVAL)
    );
    assert_eq!(
        FakeKernel::check_jail_set(&with(JailParam::Int("devfs_ruleset", 65536))).map_err(|e| e.0),
        Err(libc::EINVAL)
    );
    assert_eq!(
        FakeKernel::check_jail_set(&with(JailParam::Int("securelevel", -2))).map_err(|e| e.0),
        Err(libc::EPERM)
    );
    // No persist: a JAIL_CREATE without JAIL_ATTACH must persist.
    let no_persist: Vec<JailParam> = good()
        .into_iter()
        .filter(|p| p.name() != "persist")
        .collect();
    assert_eq!(
        FakeKernel::check_jail_set(&no_persist),
        Err((libc::EINVAL, "new jail must persist or attach".into()))
    );

    // jail_create goes through the same checks, and keeps the kernel's message.
    let k = FakeKernel::new();
    let root = k.base().join("j");
    std::fs::create_dir(&root).unwrap();
    let e = k
        .jail_create(&JailParams {
            name: "j".into(),
            path: root.clone(),
            hostname: "j".into(),
            securelevel: -2,
            devfs_ruleset: 4,
        })
        .unwrap_err();
    assert_eq!(e.errno(), Some(libc::EPERM));
    assert!(k.live_jails().is_empty());
    let e = k
        .jail_create(&JailParams {
            name: "j".into(),
            path: root,
            hostname: "j".into(),
            securelevel: 3,
            devfs_ruleset: 70000,
        })
        .unwrap_err();
    assert_eq!(e.errno(), Some(libc::EINVAL));
}
