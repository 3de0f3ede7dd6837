//! The constants and layouts of [`super::abi`] against FreeBSD's headers, on any OS.
//!
//! Each assertion cites the header and, where the stored copy read for this test gives it,
//! the line (freebsd/freebsd-src at the commit named; these values are ABI and the same in
//! FreeBSD 14). Where only the definition's text is cited, the line was not available.
//! On FreeBSD the `libc` crate's values are checked against ours as well.

use std::mem::{offset_of, size_of};

use super::abi::*;
use super::JailLimits;

#[test]
fn jail_flags_match_sys_jail_h() {
    // sys/sys/jail.h:104 (01623a5): #define JAIL_CREATE 0x01
    assert_eq!(JAIL_CREATE, 0x01);
    // sys/sys/jail.h:107 (01623a5): #define JAIL_DYING 0x08
    assert_eq!(JAIL_DYING, 0x08);
}

#[test]
fn mount_and_procdesc_flags_match_their_headers() {
    // sys/sys/mount.h: #define MNT_FORCE 0x0000000000080000ULL /* force unmount or
    // readonly */ (an int flag to unmount(2)).
    assert_eq!(MNT_FORCE, 0x0008_0000);
    // sys/sys/procdesc.h:133 (0162500): #define PD_CLOEXEC 0x00000002
    assert_eq!(PD_CLOEXEC, 0x2);
}

#[test]
fn rlimit_and_fcntl_values_match_their_headers() {
    // sys/sys/resource.h: #define RLIMIT_FSIZE 1, RLIMIT_CORE 4, RLIMIT_NPROC 7,
    // RLIMIT_NOFILE 8, RLIMIT_VMEM 10, #define RLIMIT_AS RLIMIT_VMEM.
    assert_eq!(
        (
            RLIMIT_FSIZE,
            RLIMIT_CORE,
            RLIMIT_NPROC,
            RLIMIT_NOFILE,
            RLIMIT_AS
        ),
        (1, 4, 7, 8, 10)
    );
    // sys/sys/fcntl.h: #define F_DUPFD_CLOEXEC 17, #define F_DUP2FD_CLOEXEC 18,
    // #define O_CLOEXEC 0x00100000.
    assert_eq!((F_DUPFD_CLOEXEC, F_DUP2FD_CLOEXEC), (17, 18));
    assert_eq!(O_CLOEXEC, 0x0010_0000);
}

#[test]
fn signal_numbers_syscalls_and_sigaction_layout_match() {
    // sys/sys/signal.h: #define SIGKILL 9, #define SIGPIPE 13, #define SIG_SETMASK 3,
    // #define SIG_DFL ((__sighandler_t *)0).
    assert_eq!((SIGKILL, SIGPIPE, SIG_SETMASK, SIG_DFL), (9, 13, 3, 0));
    // sys/kern/syscalls.master: "340 AUE_SIGPROCMASK STD { int sigprocmask(...) }" and
    // "416 AUE_SIGACTION STD { int sigaction(int sig, const struct sigaction *act,
    // struct sigaction *oact); }".
    assert_eq!(SYS_SIGPROCMASK, 340);
    assert_eq!(SYS_SIGACTION, 416);
    // sys/sys/_sigset.h: #define _SIG_WORDS 4; typedef struct __sigset { __uint32_t
    // __bits[_SIG_WORDS]; } __sigset_t;
    assert_eq!(size_of::<SigSet>(), 16);
    // sys/sys/signal.h struct sigaction: union { handler } __sigaction_u; int sa_flags;
    // sigset_t sa_mask; (LP64: 8 + 4 + 16, aligned to 8).
    assert_eq!(offset_of!(SigAction, handler), 0);
    assert_eq!(offset_of!(SigAction, flags), size_of::<usize>());
    assert_eq!(offset_of!(SigAction, mask), size_of::<usize>() + 4);
    assert_eq!(
        size_of::<SigAction>(),
        if size_of::<usize>() == 8 { 32 } else { 24 }
    );
}

#[test]
fn process_table_mib_matches_sys_sysctl_h() {
    // sys/sys/sysctl.h: #define CTL_KERN 1, #define KERN_PROC 14,
    // #define KERN_PROC_PROC 8 /* only return procs */
    assert_eq!((CTL_KERN, KERN_PROC, KERN_PROC_PROC), (1, 14, 8));
}

#[test]
fn ioctl_encoding_matches_sys_ioccom_h() {
    // sys/sys/ioccom.h:41 (039ea81): #define IOCPARM_SHIFT 13
    assert_eq!(IOCPARM_SHIFT, 13);
    assert_eq!(IOCPARM_MASK, 0x1fff);
    // sys/sys/ioccom.h:49-51: IOC_OUT 0x40000000, IOC_IN 0x80000000, IOC_INOUT both.
    assert_eq!(
        (IOC_OUT, IOC_IN, IOC_INOUT),
        (0x4000_0000, 0x8000_0000, 0xc000_0000)
    );
    // sys/sys/ioccom.h:54-55: _IOC(inout,group,num,len) = inout | ((len & IOCPARM_MASK)
    // << 16) | (group << 8) | num; :61 _IOWR(g,n,t) = _IOC(IOC_INOUT, g, n, sizeof(t)).
    assert_eq!(iowr(b'D', 4, 236), 0xc0ec_4404);
    assert_eq!(ioc(IOC_IN, b'D', 10, 2), 0x8002_440a);
}

#[test]
fn devfs_rule_layout_and_ioctls_match_sys_fs_devfs_devfs_h() {
    // sys/fs/devfs/devfs.h:42 (00ce217): #define DEVFS_MAGIC 0xdb0a087a
    assert_eq!(DEVFS_MAGIC, 0xdb0a_087a);
    // sys/fs/devfs/devfs.h:82: #define DEVFS_MAXPTRNLEN 200
    assert_eq!(DEVFS_MAXPTRNLEN, 200);
    // sys/fs/devfs/devfs.h:68-102 struct devfs_rule: uint32_t dr_magic; devfs_rid dr_id
    // (uint32_t, :54); int dr_icond; int dr_dswflags; char dr_pathptrn[200]; int
    // dr_iacts; int dr_bacts; uid_t dr_uid; gid_t dr_gid; mode_t dr_mode (__uint16_t);
    // devfs_rsnum dr_incset (uint16_t, :53).
    assert_eq!(offset_of!(DevfsRule, magic), 0);
    assert_eq!(offset_of!(DevfsRule, id), 4);
    assert_eq!(offset_of!(DevfsRule, icond), 8);
    assert_eq!(offset_of!(DevfsRule, dswflags), 12);
    assert_eq!(offset_of!(DevfsRule, pathptrn), 16);
    assert_eq!(offset_of!(DevfsRule, iacts), 216);
    assert_eq!(offset_of!(DevfsRule, bacts), 220);
    assert_eq!(offset_of!(DevfsRule, uid), 224);
    assert_eq!(offset_of!(DevfsRule, gid), 228);
    assert_eq!(offset_of!(DevfsRule, mode), 232);
    assert_eq!(offset_of!(DevfsRule, incset), 234);
    assert_eq!(size_of::<DevfsRule>(), 236);
    // sys/fs/devfs/devfs.h:61: #define mkrid(rsn, rn) ((rn) | ((rsn) << 16))
    assert_eq!(mkrid(4, 100), 0x0004_0064);
    // sys/fs/devfs/devfs.h:111: DEVFSIO_RGETNEXT _IOWR('D', 4, struct devfs_rule)
    assert_eq!(DEVFSIO_RGETNEXT, 0xc0ec_4404);
    // sys/fs/devfs/devfs.h:115: DEVFSIO_SGETNEXT _IOWR('D', 12, devfs_rsnum)
    assert_eq!(DEVFSIO_SGETNEXT, 0xc002_440c);
}

#[test]
fn rctl_rules_use_the_rule_syntax_kern_rctl_c_parses() {
    // kern_rctl.c rctl_string_to_rule: "subject:subject-id:resource:action=amount" with
    // the names of `subjectnames`, `resourcenames` and `actionnames`; rctl_read_inbuf
    // copies the string with its NUL (real.rs passes the length including it).
    let rules = JailLimits {
        memory_bytes: 1 << 30,
        max_processes: 64,
    }
    .rules("jb-ab12cd34-7");
    assert_eq!(
        rules,
        [
            "jail:jb-ab12cd34-7:vmemoryuse:deny=1073741824",
            "jail:jb-ab12cd34-7:maxproc:deny=64",
        ]
    );
}

/// On FreeBSD: the `libc` crate agrees with the headers as checked above.
#[cfg(target_os = "freebsd")]
#[test]
fn libc_crate_agrees_on_freebsd() {
    assert_eq!(libc::JAIL_CREATE, JAIL_CREATE);
    assert_eq!(libc::JAIL_DYING, JAIL_DYING);
    assert_eq!(libc::MNT_FORCE, MNT_FORCE);
    assert_eq!(libc::PD_CLOEXEC, PD_CLOEXEC);
    assert_eq!(libc::RLIMIT_FSIZE, RLIMIT_FSIZE);
    assert_eq!(libc::RLIMIT_CORE, RLIMIT_CORE);
    assert_eq!(libc::RLIMIT_NPROC, RLIMIT_NPROC);
    assert_eq!(libc::RLIMIT_NOFILE, RLIMIT_NOFILE);
    assert_eq!(libc::RLIMIT_AS, RLIMIT_AS);
    assert_eq!(libc::F_DUPFD_CLOEXEC, F_DUPFD_CLOEXEC);
    assert_eq!(libc::F_DUP2FD_CLOEXEC, F_DUP2FD_CLOEXEC);
    assert_eq!(libc::O_CLOEXEC, O_CLOEXEC);
    assert_eq!(libc::SIGKILL, SIGKILL);
    assert_eq!(libc::SIGPIPE, SIGPIPE);
    assert_eq!(libc::SIG_SETMASK, SIG_SETMASK);
    assert_eq!(libc::SIG_DFL, SIG_DFL);
    assert_eq!(libc::CTL_KERN, CTL_KERN);
    assert_eq!(libc::KERN_PROC, KERN_PROC);
    assert_eq!(libc::KERN_PROC_PROC, KERN_PROC_PROC);
    assert_eq!(size_of::<libc::sigaction>(), size_of::<SigAction>());
    assert_eq!(size_of::<libc::sigset_t>(), size_of::<SigSet>());
}

#[test]
fn zfs_index_property_values_match_include_sys_fs_zfs_h() {
    use super::kernel::prop;
    // OpenZFS include/sys/fs/zfs.h: typedef enum { ZFS_CANMOUNT_OFF = 0, ZFS_CANMOUNT_ON
    // = 1, ZFS_CANMOUNT_NOAUTO = 2 } zfs_canmount_type_t; typedef enum {
    // ZFS_SYNC_STANDARD = 0, ZFS_SYNC_ALWAYS = 1, ZFS_SYNC_DISABLED = 2 }
    // zfs_sync_type_t; boolean properties (atime, setuid) are 0/1.
    assert_eq!(prop::CANMOUNT_NOAUTO, 2);
    assert_eq!(prop::SYNC_DISABLED, 2);
    assert_eq!(prop::OFF, 0);
}
