//! The seccomp filter of every sandboxed command: what a compiler never needs is refused, so
//! that a hostile job cannot reach the kernel code behind it (new user namespaces and the
//! mounts they allow, keyrings, eBPF, io_uring, netlink and nf_tables, ptrace, modules...).
//!
//! Built once per backend into one classic-BPF program; the child only installs it, as its
//! last step before execve, with raw `prctl(PR_SET_NO_NEW_PRIVS)` and
//! `seccomp(SECCOMP_SET_MODE_FILTER)` calls on this memory (async-signal-safe: no
//! allocation). Each install costs the kernel a verification, a conversion to eBPF and a
//! JIT, all in proportion to the program's length, and a pass over every system call
//! number for its allow cache, in proportion to the path each number takes
//! (kernel/seccomp.c `seccomp_attach_filter`, `seccomp_cache_prepare`): on a compile's
//! critical path, so the program is kept short and its paths shallow ([`dispatch`]):
//!
//! - a binary search on the system call number: a call no rule lists is allowed after a
//!   handful of comparisons; a call refused whatever its arguments (the [`DENIED`] list:
//!   EPERM; clone3: ENOSYS) is answered at its leaf;
//! - the two calls whose arguments decide, clone(2) and socket(2), continue into
//!   `seccompiler`'s rules (rust-vmm / firecracker's BPF compiler; EPERM on a match).
//!
//! What is refused:
//!
//! - EPERM: the [`DENIED`] calls, clone(2) with a CLONE_NEW* flag, socket(AF_NETLINK).
//! - ENOSYS: clone3. clone3's flags live in a
//!   `struct clone_args` in memory, which a seccomp filter cannot read (it sees the call's
//!   number and raw arguments, `struct seccomp_data`, and cannot follow pointers), so it
//!   cannot tell a plain thread from a new namespace; ENOSYS is what glibc (>= 2.34, clone3 in
//!   `sysdeps/unix/sysv/linux/clone-internal.c`) treats as "old kernel" and falls back to
//!   clone(2), whose flags argument is checked. On x86_64 every x32 system call
//!   (`__X32_SYSCALL_BIT`) gets ENOSYS too: those share AUDIT_ARCH_X86_64 with the native
//!   calls but have other numbers, so a default-allow filter keyed on native numbers would
//!   let `x32 unshare` through on a kernel built with CONFIG_X86_X32_ABI.
//!
//! The program starts with seccompiler's architecture check: a system call of another ABI
//! (i386 `int 0x80` on x86_64, AArch32 on aarch64) kills the process, since its numbers
//! mean other calls. Compilers are 64-bit programs.
//!
//! The unit tests hold the program to a reference built from seccompiler alone (one
//! filter per errno, run as the kernel runs several installed filters): the same action for every number, argument and arch. The
//! default-allow calls cost next to nothing once installed: the kernel caches "always
//! allowed" per system call number and skips the filter for them
//! (seccomp_cache_check_allow, Linux 5.11).

use std::collections::BTreeMap;
use std::os::raw::c_ulong;

use crate::exec::{errno, SetupStep};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Why the filter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error(
        "no seccomp filter for architecture {arch}: the Linux backend supports x86_64 and \
         aarch64"
    )]
    UnsupportedArch { arch: &'static str },
    #[error("compiling the seccomp filter")]
    Compile(#[source] seccompiler::BackendError),
    #[error("seccompiler's program does not start with the expected architecture check")]
    UnexpectedLayout,
}

/// The compiled program, kept by the backend for its whole life: every child's
/// `sock_fprog` points into it.
pub(super) struct Filters {
    program: BpfProgram,
}

/// What the number search does with a system call it lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leaf {
    /// Return this action: the call is refused whatever its arguments.
    Ret(u32),
    /// Continue into seccompiler's rules, which look at the arguments.
    Rules,
}

/// The program's parts before [`dispatch`] joins them.
struct Parts {
    /// seccompiler's filter for the calls whose arguments decide (EPERM on a match,
    /// default allow), starting with its architecture check.
    rules: BpfProgram,
    /// Every listed system call number, ascending, with what its leaf does: all others
    /// are allowed.
    leaves: Vec<(u32, Leaf)>,
}

/// `SECCOMP_RET_ERRNO` with `errno`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const fn ret_errno(errno: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | errno as u32
}

/// The CLONE_NEW* flags clone(2) can carry in its flags argument: a new namespace of any
/// kind (a user namespace gives CAP_SYS_ADMIN over new mount namespaces, hence mounts).
/// CLONE_NEWTIME (0x80) is missing: in clone(2) that bit is part of the exit signal
/// (CSIGNAL), the kernel accepts it only from clone3 and unshare (kernel/fork.c).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const CLONE_NEW_FLAGS: [libc::c_int; 7] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWCGROUP,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
];

/// System calls refused outright with EPERM. None is needed to compile, link or run a build
/// tool; each opens kernel surface a hostile job has no business with.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const DENIED: &[libc::c_long] = &[
    // Namespaces: no unshare at all (a compiler never calls it; unshare(CLONE_NEWUSER)
    // grants CAP_SYS_ADMIN over new mount/net namespaces), no joining one.
    libc::SYS_unshare,
    libc::SYS_setns,
    // Mounts, old and new API (the latter works on fds, so blocking mount(2) alone is not
    // enough), and root changes.
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    // Kernel keyrings: shared per uid across the host, not namespaced by our namespaces.
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    // eBPF, io_uring, perf events, userfaultfd: large attack surface, frequent CVEs.
    libc::SYS_bpf,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    // Other processes' memory.
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    // The kernel itself (these need capabilities a job lacks; refused here regardless).
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
];

/// `x32` system calls are the native x86_64 numbers with this bit set
/// (arch/x86/include/uapi/asm/unistd.h).
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// Classic BPF opcodes (include/uapi/linux/bpf_common.h: BPF_LD 0x00, BPF_W 0x00, BPF_ABS
// 0x20, BPF_JMP 0x05, BPF_JA 0x00, BPF_JEQ 0x10, BPF_JGE 0x30, BPF_K 0x00, BPF_A 0x10,
// BPF_RET 0x06) and the offset of `nr` in `struct seccomp_data`
// (include/uapi/linux/seccomp.h), for the x32 prelude and the chaining.
/// BPF_LD | BPF_W | BPF_ABS
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const BPF_LD_W_ABS: u16 = 0x20;
/// BPF_JMP | BPF_JEQ | BPF_K
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const BPF_JMP_JEQ_K: u16 = 0x15;
/// BPF_JMP | BPF_JGE | BPF_K
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const BPF_JMP_JGE_K: u16 = 0x35;
/// BPF_JMP | BPF_JA (unconditional, offset in k)
#[cfg(all(test, any(target_arch = "x86_64", target_arch = "aarch64")))]
const BPF_JMP_JA: u16 = 0x05;
/// BPF_RET | BPF_K
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const BPF_RET_K: u16 = 0x06;
/// BPF_RET | BPF_A
#[cfg(all(test, any(target_arch = "x86_64", target_arch = "aarch64")))]
const BPF_RET_A: u16 = 0x16;
/// The kernel's limit on a classic BPF program (include/uapi/linux/bpf_common.h).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const BPF_MAXINSNS: usize = 4096;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const SECCOMP_DATA_NR_OFFSET: u32 = 0;

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn condition(
    arg: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    errno: i32,
    arch: TargetArch,
) -> Result<BpfProgram, seccompiler::BackendError> {
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        arch,
    )?;
    filter.try_into()
}

impl Filters {
    /// Compiles both programs for the architecture this binary runs on.
    pub(super) fn build() -> Result<Filters, SeccompError> {
        let arch = std::env::consts::ARCH;
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        {
            let target =
                TargetArch::try_from(arch).map_err(|_| SeccompError::UnsupportedArch { arch })?;
            let Parts { rules, leaves } =
                Parts::build_for(target).map_err(SeccompError::Compile)?;
            Ok(Filters {
                program: dispatch(rules, &leaves)?,
            })
        }
        // The system call lists below are written for these two; another architecture
        // gets no silently partial filter.
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        Err(SeccompError::UnsupportedArch { arch })
    }

    /// The `sock_fprog` to hand to seccomp(2), pointing into `self`.
    pub(super) fn program(&self) -> libc::sock_fprog {
        libc::sock_fprog {
            len: self.program.len() as libc::c_ushort,
            // seccompiler's sock_filter is #[repr(C)] with the kernel's layout
            // (include/uapi/linux/filter.h), like libc's; the kernel only reads it.
            filter: self.program.as_ptr() as *mut libc::sock_filter,
        }
    }
}

/// The rules of the calls whose arguments decide: clone(2) with any CLONE_NEW* flag and
/// socket(AF_NETLINK), each refused with EPERM.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn argument_rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    // clone(2): flags is argument 0 on both architectures (aarch64 is CLONE_BACKWARDS:
    // only tls and child_tid swap places). One rule per flag: rules of a chain are
    // alternatives, and "any of these bits set" is not one masked comparison.
    let clone_rules = CLONE_NEW_FLAGS
        .iter()
        .map(|f| {
            let f = *f as u32 as u64;
            SeccompRule::new(vec![condition(0, SeccompCmpOp::MaskedEq(f), f)?])
        })
        .collect::<Result<Vec<_>, _>>()?;
    // socket(AF_NETLINK, ...): netlink is the interface to routing, nf_tables, audit,
    // uevents, xfrm... A compile needs files and, at most, local sockets (the network
    // namespace has only lo); the one netlink user in glibc, getaddrinfo asking for the
    // local addresses (check_pf.c), assumes both IPv4 and IPv6 when it cannot ask.
    let socket_rules = vec![SeccompRule::new(vec![condition(
        0,
        SeccompCmpOp::Eq,
        libc::AF_NETLINK as u64,
    )?])?];
    Ok([
        (libc::SYS_clone, clone_rules),
        (libc::SYS_socket, socket_rules),
    ]
    .into_iter()
    .collect())
}

impl Parts {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn build_for(arch: TargetArch) -> Result<Parts, seccompiler::BackendError> {
        let rules = argument_rules()?;
        let mut leaves: Vec<(u32, Leaf)> = DENIED
            .iter()
            .map(|nr| (*nr as u32, Leaf::Ret(ret_errno(libc::EPERM))))
            .chain([(libc::SYS_clone3 as u32, Leaf::Ret(ret_errno(libc::ENOSYS)))])
            .chain(rules.keys().map(|nr| (*nr as u32, Leaf::Rules)))
            .collect();
        leaves.sort_unstable_by_key(|(nr, _)| *nr);
        Ok(Parts {
            rules: compile(rules, libc::EPERM, arch)?,
            leaves,
        })
    }
}

/// Instructions of seccompiler's architecture check: load arch; jeq ARCH +1; ret KILL.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const ARCH_CHECK_LEN: usize = 3;

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn starts_with_arch_check(p: &BpfProgram) -> bool {
    p.len() > ARCH_CHECK_LEN
        && p[0].code == BPF_LD_W_ABS
        && p[1].code == BPF_JMP_JEQ_K
        && p[1].jt == 1
        && p[2].code == BPF_RET_K
        && p[2].k == libc::SECCOMP_RET_KILL_PROCESS
}

/// `rules` with a binary search on the system call number in front of it: a call not in
/// `leaves` (ascending, each number once) is allowed after about log2(len) comparisons, a
/// listed one gets its leaf's action or continues into `rules` (and on x86_64 every x32
/// number gets ENOSYS). The kernel runs the program once per system call number when it
/// installs it, to fill its always-allowed cache (kernel/seccomp.c
/// `seccomp_cache_prepare_bitmap`, `seccomp_is_const_allow`, with interrupts off under the
/// siglock), and converts and JITs every instruction: a shallow search and no rule for the
/// calls refused outright keep both short (seccompiler lays its rules out as one linear
/// chain, two instructions per listed call passed). The search goes right after the
/// architecture check, where that check's jump lands; every jump of `rules` stays inside
/// `rules` (classic BPF jumps only forward: `bpf_check_classic`, net/core/filter.c).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn dispatch(rules: BpfProgram, leaves: &[(u32, Leaf)]) -> Result<BpfProgram, SeccompError> {
    use seccompiler::sock_filter;
    if !starts_with_arch_check(&rules)
        || leaves.is_empty()
        || leaves.windows(2).any(|w| w[0].0 >= w[1].0)
    {
        return Err(SeccompError::UnexpectedLayout);
    }
    /// Where a jump of the search goes: the next instruction, the shared `ret ALLOW`, one
    /// of the shared returns (by index), the rules, or (as an index into the search) a
    /// subtree.
    #[derive(Clone, Copy)]
    enum To {
        Next,
        Allow,
        Ret(usize),
        Rules,
        At(usize),
    }
    // One `ret` per distinct action, after the `ret ALLOW`.
    let mut rets: Vec<u32> = Vec::new();
    let mut to = |leaf: Leaf| match leaf {
        Leaf::Rules => To::Rules,
        Leaf::Ret(k) => To::Ret(match rets.iter().position(|r| *r == k) {
            Some(i) => i,
            None => {
                rets.push(k);
                rets.len() - 1
            }
        }),
    };
    fn search(
        v: &[(u32, Leaf)],
        to: &mut dyn FnMut(Leaf) -> To,
        out: &mut Vec<(u16, To, To, u32)>,
    ) {
        if let [(nr, leaf)] = v {
            out.push((BPF_JMP_JEQ_K, to(*leaf), To::Allow, *nr));
            return;
        }
        let (low, high) = v.split_at(v.len() / 2);
        let at = out.len();
        out.push((BPF_JMP_JGE_K, To::Next, To::Next, high[0].0));
        search(low, to, out);
        out[at].1 = To::At(out.len());
        search(high, to, out);
    }
    let mut tree = Vec::new();
    // x32 numbers (x86_64 only) are above every native one: ENOSYS.
    #[cfg(target_arch = "x86_64")]
    tree.push((
        BPF_JMP_JGE_K,
        to(Leaf::Ret(ret_errno(libc::ENOSYS))),
        To::Next,
        X32_SYSCALL_BIT,
    ));
    search(leaves, &mut to, &mut tree);
    // Layout: ld nr; tree; ret ALLOW; the other returns; the rules.
    let allow = 1 + tree.len();
    let first_ret = allow + 1;
    let rules_at = first_ret + rets.len();
    let mut prelude = vec![sock_filter {
        code: BPF_LD_W_ABS,
        jt: 0,
        jf: 0,
        k: SECCOMP_DATA_NR_OFFSET,
    }];
    for (i, (code, jt, jf, k)) in tree.into_iter().enumerate() {
        let here = 1 + i;
        let offset = |to: To| -> Result<u8, SeccompError> {
            let target = match to {
                To::Next => here + 1,
                To::Allow => allow,
                To::Ret(r) => first_ret + r,
                To::Rules => rules_at,
                To::At(j) => 1 + j,
            };
            u8::try_from(target - here - 1).map_err(|_| SeccompError::UnexpectedLayout)
        };
        prelude.push(sock_filter {
            code,
            jt: offset(jt)?,
            jf: offset(jf)?,
            k,
        });
    }
    for k in std::iter::once(libc::SECCOMP_RET_ALLOW).chain(rets) {
        prelude.push(sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k,
        });
    }
    if rules.len() + prelude.len() > BPF_MAXINSNS {
        return Err(SeccompError::UnexpectedLayout);
    }
    let mut out = rules;
    out.splice(ARCH_CHECK_LEN..ARCH_CHECK_LEN, prelude);
    Ok(out)
}

/// Sets no_new_privs and installs `programs`. Async-signal-safe (raw system calls on memory
/// prepared before fork): the child's last step before execve. No_new_privs comes first:
/// an unprivileged process may install a filter only with it set (seccomp(2)), and it
/// makes execve refuse to grant privileges (set-user-ID bits, file capabilities) that the
/// filter's owner did not have (prctl(2) PR_SET_NO_NEW_PRIVS).
pub(super) fn install(program: &libc::sock_fprog) -> Result<(), (SetupStep, i32)> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as c_ulong, 0, 0, 0) } != 0 {
        return Err((SetupStep::NoNewPrivs, errno()));
    }
    // SAFETY: seccomp(2) copies the program the sock_fprog points to (alive in the
    // backend, shared with the child) and never writes to it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER as c_ulong,
            0 as c_ulong,
            program as *const libc::sock_fprog,
        )
    };
    if r != 0 {
        return Err((SetupStep::Seccomp, errno()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// errno after a raw system call that must fail, or 0 if it succeeded.
    fn failed(r: libc::c_long) -> i32 {
        if r < 0 {
            errno()
        } else {
            0
        }
    }

    /// In the filtered child: 0 when every call got the expected result, else the number
    /// of the first that did not.
    fn checks() -> i32 {
        let clone_flags = (libc::CLONE_NEWUSER | libc::SIGCHLD) as c_ulong;
        let calls: [(&dyn Fn() -> libc::c_long, i32); 6] = [
            (
                // SAFETY: a raw system call with integer arguments.
                &|| unsafe { libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER) },
                libc::EPERM,
            ),
            (
                // SAFETY: a raw system call with a NULL pointer and size 0.
                &|| unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) },
                libc::ENOSYS,
            ),
            (
                // SAFETY: a raw system call with integer arguments (fork-like: no stack).
                &|| unsafe { libc::syscall(libc::SYS_clone, clone_flags, 0, 0, 0, 0) },
                libc::EPERM,
            ),
            (
                // SAFETY: socket(2) with integer arguments.
                &|| unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, 0).into() },
                libc::EPERM,
            ),
            (
                // SAFETY: socket(2) with integer arguments.
                &|| unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0).into() },
                0,
            ),
            // SAFETY: getpid(2) has no arguments.
            (&|| unsafe { libc::syscall(libc::SYS_getpid) }, 0),
        ];
        for (i, (call, want)) in calls.iter().enumerate() {
            let r = call();
            if r == 0 && want != &0 {
                // A clone that went through: the new process must not run the checks.
                // SAFETY: _exit(2).
                unsafe { libc::_exit(99) };
            }
            if failed(r) != *want {
                return i as i32 + 1;
            }
        }
        0
    }

    #[test]
    fn a_filtered_child_is_refused_what_it_should_be() {
        let f = Filters::build().unwrap();
        let program = f.program();
        // SAFETY: fork(2) in a threaded test binary: the child makes raw system calls on
        // memory prepared before the fork and leaves with _exit(2).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = match install(&program) {
                Err(_) => 100,
                Ok(()) => checks(),
            };
            // SAFETY: _exit(2) from the forked child.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waitpid(2) on our own child with a valid status pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "failed check (see the child's codes)"
        );
    }

    /// The reference: what seccompiler alone gives, one filter per errno (the EPERM
    /// filter with every refused call, the ENOSYS filter with clone3 and, on x86_64, an
    /// x32 prelude), to be run both as the kernel runs installed filters
    /// ([`run_all`]).
    fn reference() -> [BpfProgram; 2] {
        use seccompiler::sock_filter;
        let arch = TargetArch::try_from(std::env::consts::ARCH).unwrap();
        let mut eperm: BTreeMap<i64, Vec<SeccompRule>> =
            DENIED.iter().map(|nr| (*nr, Vec::new())).collect();
        eperm.extend(argument_rules().unwrap());
        let enosys = [(libc::SYS_clone3, Vec::new())].into_iter().collect();
        let eperm = compile(eperm, libc::EPERM, arch).unwrap();
        #[allow(unused_mut)]
        let mut enosys = compile(enosys, libc::ENOSYS, arch).unwrap();
        #[cfg(target_arch = "x86_64")]
        {
            assert!(starts_with_arch_check(&enosys));
            let insn = |code, jt, jf, k| sock_filter { code, jt, jf, k };
            let prelude = [
                insn(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_NR_OFFSET),
                insn(BPF_JMP_JGE_K, 0, 1, X32_SYSCALL_BIT),
                insn(BPF_RET_K, 0, 0, ret_errno(libc::ENOSYS)),
            ];
            enosys.splice(ARCH_CHECK_LEN..ARCH_CHECK_LEN, prelude);
        }
        [eperm, enosys]
    }

    #[test]
    fn builds_for_this_architecture() {
        let f = Filters::build().unwrap();
        assert!(starts_with_arch_check(&f.program));
        let arch = TargetArch::try_from(std::env::consts::ARCH).unwrap();
        let Parts { rules, leaves } = Parts::build_for(arch).unwrap();
        assert_eq!(leaves.len(), DENIED.len() + 1 + 2);
        // Arch check, load, the search (a binary tree with one comparison per leaf and
        // per inner node, and the x32 test), `ret ALLOW`, the EPERM and ENOSYS returns,
        // and the argument rules after their own arch check.
        let x32 = usize::from(cfg!(target_arch = "x86_64"));
        assert_eq!(
            f.program.len(),
            ARCH_CHECK_LEN + 1 + x32 + 2 * leaves.len() - 1 + 3 + rules.len() - ARCH_CHECK_LEN
        );
        // Shorter than seccompiler's two filters even with the search in front (132
        // against 234 on x86_64): the kernel converts and JITs every instruction on each
        // install.
        let reference: usize = reference().iter().map(Vec::len).sum();
        assert!(
            f.program.len() < reference,
            "{} vs {reference}",
            f.program.len()
        );
        // Every jump lands inside the program.
        for (i, insn) in f.program.iter().enumerate() {
            if insn.code == BPF_JMP_JA {
                assert!(i + 1 + (insn.k as usize) < f.program.len());
            } else if insn.code & 0x07 == 0x05 {
                let far = i + 1 + usize::from(insn.jt.max(insn.jf));
                assert!(far < f.program.len(), "jump at {i}");
            }
        }
        #[cfg(target_arch = "x86_64")]
        assert!(f.program.iter().any(|i| i.k == X32_SYSCALL_BIT));
        assert!(f.program().len as usize <= BPF_MAXINSNS);
        // A number listed twice is a layout error, not a silently shadowed leaf.
        let mut twice = leaves.clone();
        twice.push(*leaves.last().unwrap());
        assert!(matches!(
            dispatch(rules, &twice),
            Err(SeccompError::UnexpectedLayout)
        ));
    }

    /// Runs a classic BPF seccomp program on (nr, arch, args) as the kernel's interpreter
    /// would (net/core/filter.c; only the instructions seccompiler and this module emit):
    /// the action and how many instructions ran.
    fn run(p: &[seccompiler::sock_filter], nr: u32, arch: u32, args: [u64; 6]) -> (u32, usize) {
        let word = |off: u32| -> u32 {
            match off {
                0 => nr,
                4 => arch,
                16..=63 => {
                    let a = args[(off as usize - 16) / 8];
                    if off.is_multiple_of(8) {
                        a as u32
                    } else {
                        (a >> 32) as u32
                    }
                }
                _ => panic!("load at {off}"),
            }
        };
        let (mut pc, mut acc, mut steps) = (0usize, 0u32, 0usize);
        loop {
            let i = &p[pc];
            steps += 1;
            let jump = |taken: bool| pc + 1 + usize::from(if taken { i.jt } else { i.jf });
            pc = match i.code {
                BPF_LD_W_ABS => {
                    acc = word(i.k);
                    pc + 1
                }
                0x54 => {
                    acc &= i.k;
                    pc + 1
                }
                BPF_JMP_JA => pc + 1 + i.k as usize,
                BPF_JMP_JEQ_K => jump(acc == i.k),
                BPF_JMP_JGE_K => jump(acc >= i.k),
                0x25 => jump(acc > i.k),
                0x45 => jump(acc & i.k != 0),
                BPF_RET_K => return (i.k, steps),
                BPF_RET_A => return (acc, steps),
                c => panic!("opcode {c:#x} at {pc}"),
            };
        }
    }

    /// What the kernel decides with several filters installed: each runs, and the action
    /// of highest precedence wins, the lowest `ACTION_ONLY` as a signed value (kernel/
    /// seccomp.c `seccomp_run_filters`); the result starts at ALLOW.
    fn run_all(programs: &[BpfProgram], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
        let action = |k: u32| (k & libc::SECCOMP_RET_ACTION_FULL) as i32;
        programs.iter().map(|p| run(p, nr, arch, args).0).fold(
            libc::SECCOMP_RET_ALLOW,
            |best, k| {
                if action(k) < action(best) {
                    k
                } else {
                    best
                }
            },
        )
    }

    #[test]
    fn the_number_search_changes_no_decision_and_shortens_the_allowed_path() {
        let f = Filters::build().unwrap();
        let arch = TargetArch::try_from(std::env::consts::ARCH).unwrap();
        let Parts { leaves, .. } = Parts::build_for(arch).unwrap();
        let listed: Vec<u32> = leaves.iter().map(|(nr, _)| *nr).collect();
        let by_rules: Vec<u32> = leaves
            .iter()
            .filter(|(_, l)| *l == Leaf::Rules)
            .map(|(nr, _)| *nr)
            .collect();
        let plain = reference();
        let native = u32::from_le_bytes(plain[0][1].k.to_le_bytes());
        let mut args: Vec<[u64; 6]> = vec![[0; 6], [u64::MAX; 6]];
        for flag in CLONE_NEW_FLAGS {
            args.push([flag as u32 as u64 | libc::SIGCHLD as u64, 0, 0, 0, 0, 0]);
        }
        for family in [libc::AF_NETLINK, libc::AF_UNIX, libc::AF_INET] {
            args.push([family as u64, 0, 0, 0, 0, 0]);
        }
        let mut numbers: Vec<u32> = (0..1024).collect();
        numbers.extend((0..1024).map(|n| n | 0x4000_0000));
        numbers.extend([u32::MAX, 0x7fff_ffff, 0x8000_0000]);
        let (mut longest_allowed, mut longest_refused) = (0, 0);
        for nr in numbers {
            for a in &args {
                for arch in [native, 0x4000_0003] {
                    let want = run_all(&plain, nr, arch, *a);
                    let (got, steps) = run(&f.program, nr, arch, *a);
                    assert_eq!(got, want, "nr {nr:#x} arch {arch:#x} args {a:?}");
                    if arch == native && nr < 0x4000_0000 && listed.binary_search(&nr).is_err() {
                        assert_eq!(got, libc::SECCOMP_RET_ALLOW, "nr {nr}");
                        longest_allowed = longest_allowed.max(steps);
                    } else if arch == native && !by_rules.contains(&nr) {
                        longest_refused = longest_refused.max(steps);
                    }
                }
            }
        }
        // arch check (3), load, the x32 test, the search, ret: a handful, not one per rule.
        let depth = (usize::BITS - listed.len().leading_zeros()) as usize;
        assert!(
            longest_allowed <= 3 + 3 + depth + 1,
            "{longest_allowed} instructions"
        );
        // A call refused whatever its arguments is answered at its leaf, x32 at once.
        assert!(
            longest_refused <= 3 + 3 + depth + 1,
            "{longest_refused} instructions"
        );
        // seccompiler's EPERM filter alone walks its whole chain.
        let (_, before) = run(&plain[0], 1023, native, [0; 6]);
        assert!(before > 2 * listed.len(), "{before}");
    }
}
