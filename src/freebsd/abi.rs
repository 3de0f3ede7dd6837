//! Every constant and structure layout jailbuilder hands to the FreeBSD kernel, in one place
//! and without platform cfgs, so that `abi_tests` checks them against FreeBSD 14's headers
//! on any OS. `real.rs` (FreeBSD only) uses these rather than the `libc` crate's copies;
//! on FreeBSD, `abi_tests` also checks that the two agree.

/// jail_set(2) / jail_get(2) flags (sys/sys/jail.h).
pub const JAIL_CREATE: i32 = 0x01;
pub const JAIL_DYING: i32 = 0x08;

/// unmount(2) flag (sys/sys/mount.h).
pub const MNT_FORCE: i32 = 0x0008_0000;

/// pdfork(2) flag (sys/sys/procdesc.h): the process descriptor is not inherited by exec.
pub const PD_CLOEXEC: i32 = 0x02;

/// setrlimit(2) resources the child lowers (sys/sys/resource.h); `RLIMIT_AS` is
/// `RLIMIT_VMEM`. real.rs names them through `libc`; `abi_tests` checks both agree.
pub const RLIMIT_FSIZE: i32 = 1;
pub const RLIMIT_CORE: i32 = 4;
pub const RLIMIT_NPROC: i32 = 7;
pub const RLIMIT_NOFILE: i32 = 8;
pub const RLIMIT_AS: i32 = 10;

/// fcntl(2) commands and open(2) flag (sys/sys/fcntl.h).
pub const F_DUPFD_CLOEXEC: i32 = 17;
pub const F_DUP2FD_CLOEXEC: i32 = 18;
pub const O_CLOEXEC: i32 = 0x0010_0000;

/// Signals and signal-mask operations (sys/sys/signal.h).
pub const SIGKILL: i32 = 9;
pub const SIGPIPE: i32 = 13;
pub const SIG_SETMASK: i32 = 3;
/// `SIG_DFL` is `(__sighandler_t *)0`.
pub const SIG_DFL: usize = 0;

/// System call numbers (sys/kern/syscalls.master), for the raw calls the child makes
/// between pdfork and execve (see `real.rs` child_main).
pub const SYS_SIGPROCMASK: i32 = 340;
pub const SYS_SIGACTION: i32 = 416;

/// `sigset_t` (sys/sys/_sigset.h): `__uint32_t __bits[_SIG_WORDS]`, `_SIG_WORDS` = 4.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SigSet {
    pub bits: [u32; 4],
}

/// `struct sigaction` (sys/sys/signal.h): the handler union, `int sa_flags`,
/// `sigset_t sa_mask`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SigAction {
    pub handler: usize,
    pub flags: i32,
    pub mask: SigSet,
}

/// sysctl MIB of the process table (sys/sys/sysctl.h): kern.proc.proc, one
/// `struct kinfo_proc` per process (threads not listed separately).
pub const CTL_KERN: i32 = 1;
pub const KERN_PROC: i32 = 14;
pub const KERN_PROC_PROC: i32 = 8;

/// ioctl encoding (sys/sys/ioccom.h).
pub const IOCPARM_SHIFT: u32 = 13;
pub const IOCPARM_MASK: u32 = (1 << IOCPARM_SHIFT) - 1;
pub const IOC_OUT: u32 = 0x4000_0000;
pub const IOC_IN: u32 = 0x8000_0000;
pub const IOC_INOUT: u32 = IOC_IN | IOC_OUT;

/// `_IOC(inout, group, num, len)` (sys/sys/ioccom.h).
pub const fn ioc(inout: u32, group: u8, num: u8, len: usize) -> u32 {
    inout | (((len as u32) & IOCPARM_MASK) << 16) | ((group as u32) << 8) | num as u32
}

/// `_IOWR(g, n, t)`.
pub const fn iowr(group: u8, num: u8, len: usize) -> u32 {
    ioc(IOC_INOUT, group, num, len)
}

/// devfs rules (sys/fs/devfs/devfs.h).
pub const DEVFS_MAGIC: u32 = 0xdb0a_087a;
pub const DEVFS_MAXPTRNLEN: usize = 200;

/// `struct devfs_rule` (sys/fs/devfs/devfs.h), shared verbatim between kernel and
/// userland. `uid_t`, `gid_t` are 32 bits, `mode_t` and `devfs_rsnum` 16 bits.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DevfsRule {
    pub magic: u32,
    /// `devfs_rid`: ruleset number in the upper 16 bits, rule number in the lower.
    pub id: u32,
    pub icond: i32,
    pub dswflags: i32,
    pub pathptrn: [u8; DEVFS_MAXPTRNLEN],
    pub iacts: i32,
    pub bacts: i32,
    pub uid: u32,
    pub gid: u32,
    pub mode: u16,
    pub incset: u16,
}

impl DevfsRule {
    /// The query for the first rule of `ruleset` numbered above `rule`
    /// (DEVFSIO_RGETNEXT: devfs_rule_input checks the magic).
    pub fn query(ruleset: u16, rule: u16) -> DevfsRule {
        DevfsRule {
            magic: DEVFS_MAGIC,
            id: mkrid(ruleset, rule),
            icond: 0,
            dswflags: 0,
            pathptrn: [0; DEVFS_MAXPTRNLEN],
            iacts: 0,
            bacts: 0,
            uid: 0,
            gid: 0,
            mode: 0,
            incset: 0,
        }
    }
}

/// `mkrid(rsn, rn)` (sys/fs/devfs/devfs.h).
pub const fn mkrid(ruleset: u16, rule: u16) -> u32 {
    (rule as u32) | ((ruleset as u32) << 16)
}

/// `DEVFSIO_RGETNEXT`: `_IOWR('D', 4, struct devfs_rule)`.
pub const DEVFSIO_RGETNEXT: u32 = iowr(b'D', 4, std::mem::size_of::<DevfsRule>());
/// `DEVFSIO_SGETNEXT`: `_IOWR('D', 12, devfs_rsnum)`.
pub const DEVFSIO_SGETNEXT: u32 = iowr(b'D', 12, std::mem::size_of::<u16>());
