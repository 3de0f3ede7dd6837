//! The cloned half of `exec`: what the child does between clone and execve.
//!
//! The server is multi-threaded, so everything here is async-signal-safe: raw system calls
//! on memory prepared before fork ([`ChildPlan`]), no allocation, no locks, no panics. A
//! failed step is reported with [`child_fail`] on the error pipe at fd 3.
//!
//! One child, cloned by the server straight into a new pid namespace (clone(2) with
//! CLONE_NEWPID and CLONE_NEWIPC: allowed in a threaded process, unlike setns into a mount
//! namespace, which the child does), sharing the server's memory until its execve ([`super::spawn`]). As pid 1 of that namespace it joins the container's cgroup (if any),
//! dies with the server (`PR_SET_PDEATHSIG`), moves its descriptors into place, joins the
//! container's net/uts namespaces and its mount namespace (the seed's empty tmpfs with
//! a clone of the container root at `/r`), chroots into `/r`, unshares a cgroup
//! namespace, leaves the server's session, mounts /proc (in the container's mount
//! namespace, where the next reset detaches it), drops to the build user, sets rlimits,
//! installs the seccomp filter and execs the compiler. When the compiler (pid 1) exits, the kernel kills every other process of its
//! pid namespace before the server's wait returns. (It used to fork twice: A, then B.)

use std::os::raw::{c_char, c_int, c_long, c_ulong};

use crate::exec::{child_fail, errno, SetupStep};

#[cfg(target_env = "gnu")]
pub(super) type RlimitResource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
pub(super) type RlimitResource = c_int;

/// The error pipe's descriptor number in the child.
const ERR_FD: c_int = 3;
/// The server's pidfd in the child, until the death signal is re-armed.
const PARENT_FD: c_int = 4;

/// Everything the children need, prepared (and allocated) before fork.
pub(super) struct ChildPlan {
    /// A pidfd of the server, to detect that it died before `PR_SET_PDEATHSIG` took effect
    /// (getppid() is 0 in a new pid namespace).
    pub parent_fd: c_int,
    pub stdin: c_int,
    pub stdout: c_int,
    pub stderr: c_int,
    pub error: c_int,
    /// (descriptor, CLONE_NEW* type) of the net, uts and mount namespaces to join; the
    /// mount namespace is the container's (its root attached at `sys::SANDBOX_ROOT`).
    /// The ipc namespace is the child's own, new with its clone.
    pub ns: [(c_int, c_int); 3],
    /// An open `cgroup.procs` of the container's cgroup (written "0" to join it), or -1.
    pub cgroup_procs: c_int,
    pub cwd: *const c_char,
    pub executable: *const c_char,
    pub argv: *const *const c_char,
    pub envp: *const *const c_char,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// Limits to set (soft = hard); a value of 0 means "leave as is".
    pub rlimits: [(RlimitResource, u64); 4],
    /// The seccomp program, installed (after setting no_new_privs) as the last step
    /// before execve; it points into the backend's [`super::seccomp::Filters`].
    pub seccomp: libc::sock_fprog,
}

fn exit(code: c_int) -> ! {
    // SAFETY: _exit(2) is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}

/// Fails the step unless the raw result `r` is >= 0.
fn check(fd: c_int, step: SetupStep, r: c_long) -> c_long {
    if r < 0 {
        child_fail(fd, step, errno())
    }
    r
}

/// The child, pid 1 of its own pid namespace. Never returns.
pub(super) fn first_child(p: &ChildPlan) -> ! {
    // Join the container's cgroup first, so that everything the sandbox forks is in it.
    if p.cgroup_procs >= 0 {
        // SAFETY: write(2) of a static byte string to a descriptor opened before fork.
        let r = unsafe { libc::write(p.cgroup_procs, c"0".as_ptr().cast(), 1) };
        check(p.error, SetupStep::Cgroup, r as c_long);
    }
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as c_ulong, 0, 0, 0) };
    check(p.error, SetupStep::ParentDeathSignal, r as c_long);
    let mut pfd = libc::pollfd {
        fd: p.parent_fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll(2) on one valid pollfd, zero timeout.
    if unsafe { libc::poll(&mut pfd, 1, 0) } != 0 {
        exit(127); // the server died before PR_SET_PDEATHSIG (or poll failed): give up
    }

    // Move every descriptor we need to >= 10 first, so that placing stdio and the error pipe
    // at 0..=3 below cannot clobber one that happens to sit there.
    let mut fds = [
        p.stdin,
        p.stdout,
        p.stderr,
        p.error,
        p.ns[0].0,
        p.ns[1].0,
        p.ns[2].0,
        p.parent_fd,
    ];
    for fd in fds.iter_mut() {
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor inherited from the server.
        let moved = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10) };
        check(p.error, SetupStep::Dup2, moved as c_long);
        *fd = moved;
    }
    let [stdin, stdout, stderr, error, net, uts, mnt, parent] = fds;
    for (from, to) in [(stdin, 0), (stdout, 1), (stderr, 2)] {
        // SAFETY: dup2(2) between descriptors we hold; the new one is not close-on-exec.
        let r = unsafe { libc::dup2(from, to) };
        check(error, SetupStep::Dup2, r as c_long);
    }
    // The error pipe stays close-on-exec: a successful execve closes it (EOF = success).
    // SAFETY: dup3(2) between descriptors we hold.
    let r = unsafe { libc::dup3(error, ERR_FD, libc::O_CLOEXEC) };
    check(error, SetupStep::Dup2, r as c_long);
    // The server's pidfd, for the second check once the death signal is re-armed.
    // SAFETY: dup3(2) between descriptors we hold.
    let r = unsafe { libc::dup3(parent, PARENT_FD, libc::O_CLOEXEC) };
    check(ERR_FD, SetupStep::Dup2, r as c_long);

    // Joining the mount namespace moves root and cwd to its root (the seed's tmpfs).
    for (fd, (_, nstype)) in [net, uts, mnt].into_iter().zip(p.ns) {
        // SAFETY: setns(2) with a namespace descriptor we hold and its type.
        let r = unsafe { libc::setns(fd, nstype) };
        check(ERR_FD, SetupStep::Setns, r as c_long);
    }
    // The container root is attached at SANDBOX_ROOT in its namespace, above nothing but
    // the seed's empty tmpfs; setns left root and cwd at the namespace's root, so chroot
    // into it and move the cwd inside (an unprivileged process cannot chroot again, so it
    // cannot climb out: chroot(2) needs CAP_SYS_CHROOT).
    // SAFETY: chroot(2) and chdir(2) with static NUL-terminated paths.
    let r = unsafe { libc::chroot(super::sys::SANDBOX_ROOT.as_ptr()) };
    check(ERR_FD, SetupStep::Chroot, r as c_long);
    // SAFETY: as above.
    let r = unsafe { libc::chdir(c"/".as_ptr()) };
    check(ERR_FD, SetupStep::Chdir, r as c_long);
    // Close everything else, including the moved copies and whatever the server had open.
    // SAFETY: close_range(2) with integer arguments; closes only this process's descriptors.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 5 as c_ulong, c_ulong::MAX, 0) };
    check(ERR_FD, SetupStep::CloseFds, r);

    reset_signals();

    // A session of its own, with no controlling terminal: otherwise a job started from an
    // operator's terminal (`jailbuilder run`, a server in the foreground) could open
    // /dev/tty, which is the caller's controlling terminal (tty(4)), read what is typed and
    // push keystrokes into the operator's shell with TIOCSTI (ioctl_tty(2)). After setsid
    // opening /dev/tty fails with ENXIO. Being a session leader, the job would acquire any
    // terminal it opened without O_NOCTTY (tty_open_proc_set_tty in drivers/tty/tty_io.c), but
    // none is reachable: the skeleton's /dev/tty is the only tty node, device nodes cannot
    // come from a toolchain archive (refused on unpack) nor be made (mknod needs
    // CAP_MKNOD), no devpts is mounted, and stdio is /dev/null and pipes. pid 1 of a new
    // pid namespace is not a process group leader (its group is the server's), so setsid
    // cannot fail with EPERM.
    // SAFETY: setsid(2) takes no arguments.
    let r = unsafe { libc::syscall(libc::SYS_setsid) };
    check(ERR_FD, SetupStep::Setsid, r);

    // A cgroup namespace rooted at the cgroup joined above (or the server's, without cgroup
    // limits): /proc/self/cgroup then shows "0::/", not the host's cgroup paths
    // (cgroup_namespaces(7)). No mount namespace of its own: this command's /proc goes into
    // the container's (all private, one command at a time), and the server's next reset
    // detaches it (the proc_detach module). A namespace per command cost its exit an
    // expedited RCU grace period (namespace_unlock in fs/namespace.c, from free_nsproxy)
    // before the server saw the command end (measured in README, Benchmark).
    // SAFETY: unshare(2) with integer flags; this process is single-threaded.
    let r = unsafe { libc::unshare(libc::CLONE_NEWCGROUP) };
    check(ERR_FD, SetupStep::Unshare, r as c_long);
    exec_in_sandbox(p)
}

/// Every signal back to its default disposition, then an empty mask. The child shares the
/// server's memory ([`super::spawn`]) and starts with every signal blocked: a handler of the
/// server (signal-hook's, say) must never run here. Ignored signals would also survive
/// execve (a compiler with SIGPIPE ignored misbehaves). Setting SIGKILL and SIGSTOP fails
/// (EINVAL), as do glibc's internal 32 and 33; execve resets those handlers anyway.
fn reset_signals() {
    for sig in 1..=64 {
        // SAFETY: a zeroed sigaction is SIG_DFL with an empty mask and no flags; sigaction(2)
        // is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    // SAFETY: sigemptyset/sigprocmask on a local set; both are async-signal-safe.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// The rest of the child, in its namespaces: /proc, cwd, identity, limits, execve.
fn exec_in_sandbox(p: &ChildPlan) -> ! {
    // A new proc of this pid namespace, so only the sandbox's own processes appear, with
    // `subset=pid` (proc(5); Linux 5.8, and close_range already needs 5.9): nothing but
    // the pid directories and self / thread-self, so none of the host-wide files
    // (/proc/sys, kallsyms, keys, stat, interrupts, sched_debug...), which are the
    // kernel's, not the job's, and a large read (and for root, write) surface. What a
    // compiler reads is under /proc/self (exe, maps, fd, cgroup, mountinfo for Rust's
    // available_parallelism). What goes: /proc/cpuinfo, /proc/stat, /proc/meminfo, and
    // the symlinks /proc/mounts and /proc/net (/proc/self/mounts and /proc/self/net
    // remain). glibc's get_nprocs falls back from /sys (absent here anyway) and /proc/stat
    // to sched_getaffinity (sysdeps/unix/sysv/linux/getsysstats.c), which nproc and
    // make -j use anyway; physical memory comes from sysinfo(2) (_SC_PHYS_PAGES). GCC's
    // -march=native uses cpuid on x86_64 (gcc/config/i386/driver-i386.cc); only aarch64's
    // -mcpu=native reads /proc/cpuinfo, and without it "ignores the option" (keeps the
    // default CPU, driver-aarch64.cc), while in a distributed build "native" would name
    // the build server's CPU, not the client's, anyway. `hidepid=invisible` also hides
    // processes the reader may not ptrace: the sandbox's all run as one uid, so this only
    // matters once one is non-dumpable.
    // SAFETY: mount(2) of a new proc (of this pid namespace) with static strings; /proc
    // resolves inside the container root, where the skeleton layer makes it a directory.
    let r = unsafe {
        libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            c"subset=pid,hidepid=invisible".as_ptr().cast(),
        )
    };
    check(ERR_FD, SetupStep::MountProc, r as c_long);
    // SAFETY: chdir(2) with the command's validated working directory.
    let r = unsafe { libc::chdir(p.cwd) };
    check(ERR_FD, SetupStep::Chdir, r as c_long);

    // Raw system calls, not glibc's wrappers: those broadcast set*id to every thread glibc
    // knows of, and this process was not created by glibc's fork.
    let groups = [p.gid];
    // SAFETY: setgroups(2) with a one-element array that lives on this stack.
    let r = unsafe { libc::syscall(libc::SYS_setgroups, 1 as c_ulong, groups.as_ptr()) };
    check(ERR_FD, SetupStep::Setgroups, r);
    // SAFETY: setresgid(2) with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_setresgid, p.gid, p.gid, p.gid) };
    check(ERR_FD, SetupStep::Setgid, r);
    // SAFETY: setresuid(2) with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_setresuid, p.uid, p.uid, p.uid) };
    check(ERR_FD, SetupStep::Setuid, r);

    // The death signal is armed only now: the kernel clears it whenever the credentials
    // change (commit_creds() resets pdeath_signal when the euid/egid changes), so set
    // before setresuid it would be gone, and a crashed server would leave this namespace
    // running. An unprivileged process may set its own (prctl(2) PR_SET_PDEATHSIG).
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as c_ulong, 0, 0, 0) };
    check(ERR_FD, SetupStep::ParentDeathSignal, r as c_long);
    let mut pfd = libc::pollfd {
        fd: PARENT_FD,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll(2) on one valid pollfd, zero timeout.
    if unsafe { libc::poll(&mut pfd, 1, 0) } != 0 {
        exit(127); // the server died while no death signal was armed (or poll failed)
    }
    // SAFETY: closing our copy of the server's pidfd.
    unsafe { libc::close(PARENT_FD) };

    for (resource, value) in p.rlimits {
        if value == 0 {
            continue;
        }
        let lim = libc::rlimit {
            rlim_cur: value as libc::rlim_t,
            rlim_max: value as libc::rlim_t,
        };
        // SAFETY: setrlimit(2) with a valid pointer to a local struct.
        let r = unsafe { libc::setrlimit(resource, &lim) };
        check(ERR_FD, SetupStep::Rlimit, r as c_long);
    }
    // No core dumps, and no raising the limit again: with a piped core_pattern
    // (core(5) "|program") a crash would run a host helper on the job's memory image.
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit(2) with a valid pointer to a local struct.
    let r = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
    check(ERR_FD, SetupStep::Rlimit, r as c_long);

    // Last: no_new_privs and the seccomp filter (see the seccomp module), so the set-up
    // above needs none of what it refuses.
    if let Err((step, e)) = super::seccomp::install(&p.seccomp) {
        child_fail(ERR_FD, step, e)
    }

    // SAFETY: execve(2) with NUL-terminated strings and NULL-terminated arrays prepared
    // before fork (PreparedCommand), alive in the parent's copy of memory we share by fork.
    unsafe { libc::execve(p.executable, p.argv, p.envp) };
    child_fail(ERR_FD, SetupStep::Execve, errno())
}
