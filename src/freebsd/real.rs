//! [`RealKernel`]: the kernel seam on FreeBSD. ZFS through libzfs_core (`crate::zfs`),
//! mounts through nmount(2)/unmount(2), jails through jail_set(2)/jail_get(2)/
//! jail_remove(2)/jail_attach(2), commands through pdfork(2) + execve(2). No process is
//! spawned: no helper process, no shell, no `jexec`.
//!
//! Jails are made with jail_set(2) through `libc` directly rather than the `jail` crate:
//! the calls are few (one iovec list per call), this keeps every errno and the kernel's
//! errmsg, and the crate's `process::Jailed` (its exec path) logs and may panic after fork,
//! which a threaded server cannot afford (DESIGN.md). All declarations used (jail_set,
//! jail_get, jail_remove, jail_attach, nmount, unmount, pdfork, closefrom, setrlimit,
//! setgroups) are in the `libc` crate for FreeBSD.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::backend::{ExecOutcome, Limits};
use crate::exec::{
    child_fail, errno, supervise_cancellable, CancelToken, ExecError, PreparedCommand, SetupStep,
    SpawnedChild,
};
use crate::zfs::{NvList, Zfs, ZfsError};

use super::abi;
use super::kernel::{
    check_rc, kill_jail, ExecPlan, JailInfo, JailParam, JailParams, KResult, Kernel, KernelError,
    Rlimit, ZfsProp,
};

/// Size of the errmsg buffers handed to jail_set(2), jail_get(2) and nmount(2); the kernel
/// truncates its message to the buffer (vfs_opterror, kern_jail.c done_errmsg).
const ERRMSG_LEN: usize = 256;
/// MAXPATHLEN (sys/sys/param.h): the largest jail path jail_get(2) returns.
const MAXPATHLEN: usize = 1024;
/// MAXHOSTNAMELEN (sys/sys/param.h): the largest jail name.
const MAXHOSTNAMELEN: usize = 256;

// rctl(2) system calls (FreeBSD libc, <sys/rctl.h>; rctl_add_rule(2) man page): not in the
// `libc` crate. Each takes a NUL-terminated rule string with its length including the NUL
// (kern_rctl.c rctl_read_inbuf copies it with copyinstr) and an optional output buffer;
// each returns 0 or -1 with errno (ENOSYS without RACCT, ESRCH from remove when no rule
// matched, EINVAL for a malformed rule).
extern "C" {
    fn rctl_add_rule(
        inbufp: *const libc::c_char,
        inbuflen: libc::size_t,
        outbufp: *mut libc::c_char,
        outbuflen: libc::size_t,
    ) -> libc::c_int;
    fn rctl_remove_rule(
        inbufp: *const libc::c_char,
        inbuflen: libc::size_t,
        outbufp: *mut libc::c_char,
        outbuflen: libc::size_t,
    ) -> libc::c_int;
}

/// The kernel seam on FreeBSD.
pub struct RealKernel {
    zfs: Zfs,
}

impl RealKernel {
    /// Opens /dev/zfs (libzfs_core_init, refcounted and thread-safe).
    pub fn new() -> KResult<RealKernel> {
        let zfs = Zfs::new().map_err(|e| zfs_err("init", "/dev/zfs", e))?;
        Ok(RealKernel { zfs })
    }
}

/// Keeps the libzfs_core return code as the errno (equal to it but for OpenZFS's own
/// ZFS_ERR_* codes, which the detail then names).
fn zfs_err(op: &'static str, name: &str, e: ZfsError) -> KernelError {
    KernelError::Zfs {
        op,
        name: name.to_string(),
        errno: e.code,
        detail: e.to_string(),
    }
}

fn zfs_props(op: &'static str, name: &str, props: &[ZfsProp]) -> KResult<NvList> {
    let mut l = NvList::new();
    for p in props {
        let r = match p {
            ZfsProp::U64(n, v) => l.add_u64(n, *v),
            ZfsProp::Str(n, v) => l.add_string(n, v),
        };
        r.map_err(|e| KernelError::Zfs {
            op,
            name: name.to_string(),
            errno: libc::EINVAL,
            detail: format!("property {p}: {e}"),
        })?;
    }
    Ok(l)
}

fn cstring(s: &[u8]) -> CString {
    // Our names are validated (no NUL); a NUL would make an empty, failing parameter.
    CString::new(s).unwrap_or_default()
}

fn path_c(p: &Path) -> CString {
    cstring(p.as_os_str().as_bytes())
}

/// A name/value iovec list for jail_set(2), jail_get(2) and nmount(2) (jail(3) and
/// nmount(2): pairs of iovecs, the name a NUL-terminated string; an empty value for a
/// boolean parameter). Owns every buffer its iovecs point into.
struct IoList {
    strings: Vec<CString>,
    // Boxed: the iovecs point at each integer, which must not move when the Vec grows.
    #[allow(clippy::vec_box)]
    ints: Vec<Box<i32>>,
    bufs: Vec<Vec<u8>>,
    iov: Vec<libc::iovec>,
}

impl IoList {
    fn new() -> IoList {
        IoList {
            strings: Vec::new(),
            ints: Vec::new(),
            bufs: Vec::new(),
            iov: Vec::new(),
        }
    }

    fn name(&mut self, name: &str) {
        let c = cstring(name.as_bytes());
        self.iov.push(libc::iovec {
            iov_base: c.as_ptr() as *mut libc::c_void,
            iov_len: c.as_bytes_with_nul().len(),
        });
        // Moving the CString does not move its heap buffer.
        self.strings.push(c);
    }

    fn str(&mut self, name: &str, value: &[u8]) {
        self.name(name);
        let c = cstring(value);
        self.iov.push(libc::iovec {
            iov_base: c.as_ptr() as *mut libc::c_void,
            iov_len: c.as_bytes_with_nul().len(),
        });
        self.strings.push(c);
    }

    /// Integer parameters are 4 bytes (kern_jail.c: vfs_copyopt(..., sizeof(int))).
    fn int(&mut self, name: &str, value: i32) -> usize {
        self.name(name);
        let mut b = Box::new(value);
        self.iov.push(libc::iovec {
            iov_base: (&mut *b as *mut i32).cast(),
            iov_len: std::mem::size_of::<i32>(),
        });
        self.ints.push(b);
        self.ints.len() - 1
    }

    fn flag(&mut self, name: &str) {
        self.name(name);
        self.iov.push(libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        });
    }

    /// An output buffer of `len` bytes (errmsg, or a string jail_get(2) fills in).
    fn buf(&mut self, name: &str, len: usize) -> usize {
        self.name(name);
        let mut b = vec![0u8; len];
        self.iov.push(libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: len,
        });
        self.bufs.push(b);
        self.bufs.len() - 1
    }

    fn buf_str(&self, idx: usize) -> String {
        let b = &self.bufs[idx];
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    }

    fn len(&self) -> libc::c_uint {
        self.iov.len() as libc::c_uint
    }
}

impl RealKernel {
    fn nmount(&self, fstype: &'static str, fspath: &Path, opts: &[(&str, &[u8])]) -> KResult<()> {
        let mut l = IoList::new();
        l.str("fstype", fstype.as_bytes());
        l.str("fspath", fspath.as_os_str().as_bytes());
        for (n, v) in opts {
            l.str(n, v);
        }
        let e = l.buf("errmsg", ERRMSG_LEN);
        // SAFETY: l.iov points into buffers `l` owns, alive for the call; nmount(2) reads
        // the name/value pairs and writes at most ERRMSG_LEN bytes into the errmsg buffer.
        let rc = unsafe { libc::nmount(l.iov.as_mut_ptr(), l.len(), 0) };
        check_rc(rc, false, |errno| KernelError::Nmount {
            fspath: fspath.to_path_buf(),
            fstype,
            errno,
            errmsg: l.buf_str(e),
        })
        .map(drop)
    }

    /// jail_get(2) of a dying or live jail by jid: Ok(false) once it is gone (ENOENT).
    fn jail_exists_any(&self, jid: i32) -> KResult<bool> {
        let mut l = IoList::new();
        l.int("jid", jid);
        let e = l.buf("errmsg", ERRMSG_LEN);
        // SAFETY: as in nmount: the iovecs point into `l`'s live buffers.
        let rc = unsafe { libc::jail_get(l.iov.as_mut_ptr(), l.len(), abi::JAIL_DYING) };
        match check_rc(rc, false, |errno| KernelError::JailGet {
            what: format!("jid {jid}"),
            errno,
            errmsg: l.buf_str(e),
        }) {
            Ok(_) => Ok(true),
            Err(err) if err.errno() == Some(libc::ENOENT) => Ok(false),
            Err(err) => Err(err),
        }
    }
}

impl Kernel for RealKernel {
    fn zfs_create(&self, name: &str, props: &[ZfsProp]) -> KResult<()> {
        self.zfs
            .create_filesystem(name, &zfs_props("create", name, props)?)
            .map_err(|e| zfs_err("create", name, e))
    }

    fn zfs_clone(&self, fs: &str, origin: &str, props: &[ZfsProp]) -> KResult<()> {
        self.zfs
            .clone(fs, origin, &zfs_props("clone", fs, props)?)
            .map_err(|e| zfs_err("clone", fs, e))
    }

    fn zfs_snapshot(&self, snaps: &[String]) -> KResult<()> {
        let names: Vec<&str> = snaps.iter().map(String::as_str).collect();
        self.zfs
            .snapshot(&names)
            .map_err(|e| zfs_err("snapshot", snaps.first().map_or("", |s| s), e))
    }

    fn zfs_rollback_to(&self, fs: &str, snap: &str) -> KResult<()> {
        self.zfs
            .rollback_to(fs, snap)
            .map_err(|e| zfs_err("rollback_to", fs, e))
    }

    fn zfs_destroy(&self, name: &str) -> KResult<()> {
        self.zfs
            .destroy(name)
            .map_err(|e| zfs_err("destroy", name, e))
    }

    fn zfs_destroy_snaps(&self, snaps: &[String], defer: bool) -> KResult<()> {
        let names: Vec<&str> = snaps.iter().map(String::as_str).collect();
        self.zfs
            .destroy_snapshots(&names, defer)
            .map_err(|e| zfs_err("destroy_snaps", snaps.first().map_or("", |s| s), e))
    }

    fn zfs_exists(&self, name: &str) -> bool {
        // An error (e.g. an invalid name) means it cannot exist.
        self.zfs.exists(name).unwrap_or(false)
    }

    /// nmount(2) with fstype=zfs, from=<dataset>, fspath (as libzfs's zmount does:
    /// openzfs lib/libzfs/os/freebsd/libzfs_zmount.c).
    fn mount_zfs(&self, dataset: &str, fspath: &Path) -> KResult<()> {
        self.nmount("zfs", fspath, &[("from", dataset.as_bytes())])
    }

    /// nmount(2) with fstype=devfs and ruleset=<n>, parsed with "%d"
    /// (sys/fs/devfs/devfs_vfsops.c devfs_mount).
    fn mount_devfs(&self, fspath: &Path, ruleset: u16) -> KResult<()> {
        let rs = ruleset.to_string();
        self.nmount(
            "devfs",
            fspath,
            &[("from", b"devfs".as_slice()), ("ruleset", rs.as_bytes())],
        )
    }

    /// unmount(2); EINVAL when `fspath` is not a mount point (unmount(2) ERRORS).
    fn unmount(&self, fspath: &Path, force: bool) -> KResult<()> {
        let p = path_c(fspath);
        let flags = if force { abi::MNT_FORCE } else { 0 };
        // SAFETY: p is a live NUL-terminated path.
        let rc = unsafe { libc::unmount(p.as_ptr(), flags) };
        check_rc(rc, false, |errno| KernelError::Unmount {
            fspath: fspath.to_path_buf(),
            errno,
        })
        .map(drop)
    }

    /// jail_set(2), JAIL_CREATE, with exactly [`JailParams::jail_set_params`] (see there for
    /// what each parameter denies) and an errmsg buffer.
    fn jail_create(&self, p: &JailParams) -> KResult<i32> {
        let mut l = IoList::new();
        for param in p.jail_set_params() {
            match param {
                JailParam::Str(n, v) => l.str(n, &v),
                JailParam::Int(n, v) => {
                    l.int(n, v);
                }
                JailParam::Flag(n) => l.flag(n),
            }
        }
        let e = l.buf("errmsg", ERRMSG_LEN);
        // SAFETY: the iovecs point into `l`'s live buffers; the kernel reads them and
        // writes the errmsg buffer only.
        let rc = unsafe { libc::jail_set(l.iov.as_mut_ptr(), l.len(), abi::JAIL_CREATE) };
        check_rc(rc, false, |errno| KernelError::JailSet {
            name: p.name.clone(),
            errno,
            errmsg: l.buf_str(e),
        })
    }

    /// jail_remove(2): EINVAL for an unknown jid; a dying jail is ignored (returns 0).
    fn jail_remove(&self, jid: i32) -> KResult<()> {
        // SAFETY: plain system call on an integer.
        let rc = unsafe { libc::jail_remove(jid) };
        check_rc(rc, false, |errno| KernelError::JailRemove { jid, errno }).map(drop)
    }

    /// Polls jail_get(2) with JAIL_DYING until the jid is unknown (the prison is freed
    /// when its last process has exited), SIGKILLing what is still in it each time.
    fn jail_wait_gone(&self, jid: i32, timeout: Duration) -> KResult<()> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(1);
        while self.jail_exists_any(jid)? {
            self.jail_kill_processes(jid)?;
            if start.elapsed() >= timeout {
                return Err(KernelError::JailDying {
                    jid,
                    waited_ms: start.elapsed().as_millis() as u64,
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
        Ok(())
    }

    /// kern.proc.proc (sysctl(3), CTL_KERN.KERN_PROC.KERN_PROC_PROC): every process,
    /// with its jail id (`ki_jid`, sys/sys/user.h); kill(2) each one of jail `jid`. A pid
    /// cannot be reused between the listing and the kill while the process is a zombie
    /// or alive; an exited-and-reaped one gives ESRCH, ignored. Processes being forked
    /// (PRS_NEW) are not listed (kern_proc.c sysctl_kern_proc): the next round sees them.
    fn jail_kill_processes(&self, jid: i32) -> KResult<u32> {
        let err = |errno| KernelError::JailKill { jid, errno };
        let mib = [abi::CTL_KERN, abi::KERN_PROC, abi::KERN_PROC_PROC];
        let size = std::mem::size_of::<libc::kinfo_proc>();
        let procs: Vec<libc::kinfo_proc> = loop {
            let mut len: libc::size_t = 0;
            // SAFETY: sysctl(3) size query: no output buffer, `len` receives the size.
            let rc = unsafe {
                libc::sysctl(
                    mib.as_ptr(),
                    3,
                    std::ptr::null_mut(),
                    &mut len,
                    std::ptr::null(),
                    0,
                )
            };
            check_rc(rc, false, err)?;
            // Room for processes forked since the size query.
            let cap = len / size + 64;
            let mut buf: Vec<libc::kinfo_proc> = Vec::with_capacity(cap);
            let mut len = cap * size;
            // SAFETY: the buffer has room for `len` bytes; sysctl(3) writes at most that
            // and sets `len` to what it wrote.
            let rc = unsafe {
                libc::sysctl(
                    mib.as_ptr(),
                    3,
                    buf.as_mut_ptr().cast(),
                    &mut len,
                    std::ptr::null(),
                    0,
                )
            };
            match check_rc(rc, false, err) {
                Ok(_) => {
                    // SAFETY: the kernel wrote `len` bytes of whole kinfo_proc records.
                    unsafe { buf.set_len(len / size) };
                    break buf;
                }
                // The table grew past our slack: ask again.
                Err(e) if e.errno() == Some(libc::ENOMEM) => continue,
                Err(e) => return Err(e),
            }
        };
        // The kernel fills ki_structsize = KINFO_PROC_SIZE: refuse a layout we do not
        // know rather than read the wrong field as ki_jid.
        if procs
            .first()
            .is_some_and(|p| p.ki_structsize as usize != size)
        {
            return Err(err(libc::EPROTO));
        }
        let mut killed = 0;
        for p in procs.iter().filter(|p| p.ki_jid == jid && p.ki_pid > 1) {
            // SAFETY: kill(2) on a pid; ESRCH (already gone) is fine.
            if unsafe { libc::kill(p.ki_pid, abi::SIGKILL) } == 0 {
                killed += 1;
            }
        }
        Ok(killed)
    }

    /// DEVFSIO_SGETNEXT then DEVFSIO_RGETNEXT on a descriptor of /dev (devfs(8) does the
    /// same on a mount point: the rules are global, devfs_rule.c devfs_rules_ioctl). Both
    /// answer ENOENT at the end of the list (and RGETNEXT for a ruleset that does not
    /// exist).
    fn devfs_ruleset_rules(&self, ruleset: u16) -> KResult<Option<u32>> {
        let err = |op| move |errno| KernelError::Devfs { op, ruleset, errno };
        let dev = std::fs::File::open("/dev")
            .map_err(|e| err("open /dev")(e.raw_os_error().unwrap_or(libc::EIO)))?;
        let fd = dev.as_raw_fd();
        let mut found = false;
        let mut rs: u16 = 0;
        loop {
            // SAFETY: DEVFSIO_SGETNEXT reads and writes one devfs_rsnum (u16) at &rs.
            let rc = unsafe { libc::ioctl(fd, abi::DEVFSIO_SGETNEXT as libc::c_ulong, &mut rs) };
            match check_rc(rc, false, err("DEVFSIO_SGETNEXT")) {
                Ok(_) if rs == ruleset => {
                    found = true;
                    break;
                }
                Ok(_) if rs > ruleset => break,
                Ok(_) => {}
                Err(e) if e.errno() == Some(libc::ENOENT) => break,
                Err(e) => return Err(e),
            }
        }
        if !found {
            return Ok(None);
        }
        let mut rules = 0u32;
        let mut last: u16 = 0;
        loop {
            let mut rule = abi::DevfsRule::query(ruleset, last);
            // SAFETY: DEVFSIO_RGETNEXT reads and writes one struct devfs_rule at &rule.
            let rc = unsafe { libc::ioctl(fd, abi::DEVFSIO_RGETNEXT as libc::c_ulong, &mut rule) };
            match check_rc(rc, false, err("DEVFSIO_RGETNEXT")) {
                Ok(_) => {
                    rules += 1;
                    let n = (rule.id & 0xffff) as u16;
                    if n <= last {
                        // Not advancing: a kernel we do not understand.
                        return Err(err("DEVFSIO_RGETNEXT")(libc::EPROTO));
                    }
                    last = n;
                }
                Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(Some(rules)),
                Err(e) => return Err(e),
            }
        }
    }

    fn jail_find(&self, name: &str) -> KResult<Option<i32>> {
        let mut l = IoList::new();
        l.str("name", name.as_bytes());
        let e = l.buf("errmsg", ERRMSG_LEN);
        // SAFETY: the iovecs point into `l`'s live buffers.
        let rc = unsafe { libc::jail_get(l.iov.as_mut_ptr(), l.len(), 0) };
        match check_rc(rc, false, |errno| KernelError::JailGet {
            what: name.to_string(),
            errno,
            errmsg: l.buf_str(e),
        }) {
            Ok(jid) => Ok(Some(jid)),
            Err(err) if err.errno() == Some(libc::ENOENT) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// jail_get(2) with `lastjid`: the next live jail after it, ENOENT after the last
    /// (kern_jail.c kern_jail_get).
    fn jail_list(&self) -> KResult<Vec<JailInfo>> {
        let mut out = Vec::new();
        let mut last = 0;
        loop {
            let mut l = IoList::new();
            l.int("lastjid", last);
            let n = l.buf("name", MAXHOSTNAMELEN);
            let p = l.buf("path", MAXPATHLEN);
            let e = l.buf("errmsg", ERRMSG_LEN);
            // SAFETY: the iovecs point into `l`'s live buffers; the kernel writes at most
            // each buffer's length.
            let rc = unsafe { libc::jail_get(l.iov.as_mut_ptr(), l.len(), 0) };
            match check_rc(rc, false, |errno| KernelError::JailGet {
                what: format!("after jid {last}"),
                errno,
                errmsg: l.buf_str(e),
            }) {
                Ok(jid) => {
                    out.push(JailInfo {
                        jid,
                        name: l.buf_str(n),
                        path: PathBuf::from(l.buf_str(p)),
                    });
                    last = jid;
                }
                Err(err) if err.errno() == Some(libc::ENOENT) => return Ok(out),
                Err(err) => return Err(err),
            }
        }
    }

    fn exec(
        &self,
        plan: &ExecPlan,
        command: &PreparedCommand,
        limits: &Limits,
        cancel: Option<&CancelToken>,
    ) -> KResult<ExecOutcome> {
        self.exec_inner(plan, command, limits, cancel)
    }

    fn racct_enabled(&self) -> bool {
        // kern.racct.enable is a bool sysctl (kern_racct.c SYSCTL_BOOL): read into a
        // zeroed buffer wide enough for any integer width; absent (no RACCT) = off.
        let mut value = [0u8; 8];
        let mut len: libc::size_t = value.len();
        // SAFETY: sysctlbyname(3) with a NUL-terminated name, an output buffer of `len`
        // bytes and no new value.
        let r = unsafe {
            libc::sysctlbyname(
                c"kern.racct.enable".as_ptr(),
                value.as_mut_ptr().cast(),
                &mut len,
                std::ptr::null(),
                0,
            )
        };
        r == 0 && value[..len.min(8)].iter().any(|b| *b != 0)
    }

    fn rctl_add_rule(&self, rule: &str) -> KResult<()> {
        let c = cstring(rule.as_bytes());
        let n = c.as_bytes_with_nul().len();
        // SAFETY: rctl_add_rule(2) with a NUL-terminated string of n bytes (NUL included)
        // and no output buffer.
        let rc = unsafe { rctl_add_rule(c.as_ptr(), n, std::ptr::null_mut(), 0) };
        check_rc(rc, false, |errno| KernelError::Rctl {
            op: "rctl_add_rule",
            rule: rule.to_string(),
            errno,
        })
        .map(drop)
    }

    fn rctl_remove_rule(&self, filter: &str) -> KResult<()> {
        let c = cstring(filter.as_bytes());
        let n = c.as_bytes_with_nul().len();
        // SAFETY: rctl_remove_rule(2) with a NUL-terminated string of n bytes (NUL
        // included) and no output buffer.
        let rc = unsafe { rctl_remove_rule(c.as_ptr(), n, std::ptr::null_mut(), 0) };
        check_rc(rc, false, |errno| KernelError::Rctl {
            op: "rctl_remove_rule",
            rule: filter.to_string(),
            errno,
        })
        .map(drop)
    }
}

impl RealKernel {
    fn exec_inner(
        &self,
        plan: &ExecPlan,
        command: &PreparedCommand,
        limits: &Limits,
        cancel: Option<&CancelToken>,
    ) -> KResult<ExecOutcome> {
        let jid = plan.jid;
        let io = |e: std::io::Error| KernelError::Exec {
            jid,
            source: ExecError::Io(e),
        };
        let child = spawn_in_jail(plan, command).map_err(io)?;
        // The process descriptor stays open until supervise has reaped the child, after
        // its last call of `kill`.
        let pd = child.exit_fd.as_raw_fd();
        let mut kill = || {
            let pdkill = || {
                // SAFETY: pdkill(2) on our own, open process descriptor.
                if unsafe { libc::pdkill(pd, abi::SIGKILL) } < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            };
            for e in kill_jail(self, jid, pdkill) {
                log::warn!("killing jail {jid} on timeout or cancel: {e}");
            }
        };
        supervise_cancellable(child, limits, cancel, &mut kill)
            .map_err(|source| KernelError::Exec { jid, source })
    }
}

/// Everything the child needs, prepared before fork: it then only reads this memory.
struct ChildPlan<'a> {
    jid: i32,
    exe: &'a CStr,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: &'a CStr,
    uid: libc::uid_t,
    gid: libc::gid_t,
    new_session: bool,
    /// (resource, soft = hard), prepared before fork: the child only iterates the slice.
    rlimits: &'a [(libc::c_int, libc::rlim_t)],
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    errpipe: RawFd,
}

/// A pipe whose ends are close-on-exec and numbered at least 10, so that the child's
/// dup2 onto 0..=3 never overwrites a descriptor it still needs.
fn high_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid out-array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh descriptors we now own.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((high(r)?, high(w)?))
}

fn high(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own returns a new one we then own.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: n is a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// The <sys/resource.h> constant of `r`.
fn rlimit_resource(r: Rlimit) -> libc::c_int {
    match r {
        Rlimit::As => libc::RLIMIT_AS,
        Rlimit::Nproc => libc::RLIMIT_NPROC,
        Rlimit::Nofile => libc::RLIMIT_NOFILE,
        Rlimit::Fsize => libc::RLIMIT_FSIZE,
        Rlimit::Core => libc::RLIMIT_CORE,
    }
}

fn spawn_in_jail(plan: &ExecPlan, command: &PreparedCommand) -> std::io::Result<SpawnedChild> {
    let rlimits: Vec<(libc::c_int, libc::rlim_t)> = plan
        .rlimits
        .iter()
        .map(|(r, v)| (rlimit_resource(*r), *v as libc::rlim_t))
        .collect();
    let devnull = std::fs::File::open("/dev/null")?;
    let stdin = high(OwnedFd::from(devnull))?;
    let (out_r, out_w) = high_pipe()?;
    let (err_r, err_w) = high_pipe()?;
    let (ep_r, ep_w) = high_pipe()?;
    let child = ChildPlan {
        jid: plan.jid,
        exe: command.executable(),
        argv: command.argv_ptr(),
        envp: command.envp_ptr(),
        cwd: command.cwd(),
        uid: plan.user.uid,
        gid: plan.user.gid,
        new_session: plan.new_session,
        rlimits: &rlimits,
        stdin: stdin.as_raw_fd(),
        stdout: out_w.as_raw_fd(),
        stderr: err_w.as_raw_fd(),
        errpipe: ep_w.as_raw_fd(),
    };
    let mut pd: libc::c_int = -1;
    // SAFETY: pdfork(2) is fork(2) that also returns a process descriptor (PD_CLOEXEC:
    // not inherited across exec). In the child we call only async-signal-safe functions
    // on memory prepared above (child_main), never returning.
    let pid = unsafe { libc::pdfork(&mut pd, abi::PD_CLOEXEC) };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: we are the child of pdfork; child_main never returns.
        unsafe { child_main(&child) }
    }
    // SAFETY: pdfork stored a fresh process descriptor in pd.
    let exit_fd = unsafe { OwnedFd::from_raw_fd(pd) };
    drop((stdin, out_w, err_w, ep_w));
    Ok(SpawnedChild {
        pid,
        stdout: out_r,
        stderr: err_r,
        error_pipe: ep_r,
        exit_fd,
    })
}

/// The child between pdfork and execve: async-signal-safe calls only, no allocation, no
/// panics; on failure reports (step, errno) on the error pipe and _exits.
///
/// # Safety
/// Call only in the child of a fork, with `plan` pointing at memory prepared before it.
unsafe fn child_main(plan: &ChildPlan<'_>) -> ! {
    let ep = plan.errpipe;
    // SAFETY: each call below is async-signal-safe (sigaction(2) lists them) and takes
    // descriptors and pointers prepared before fork, which stay valid in the child.
    unsafe {
        // The server's signal mask and SIGPIPE disposition (ignored by Rust) are not the
        // compiler's. Raw system calls, not libc's sigprocmask/signal: in a threaded
        // process libc routes those to libthr (__thr_sigprocmask, __thr_sigaction in
        // lib/libthr/thread/thr_sig.c), and __thr_sigaction takes the signal's
        // `_thr_rwl_wrlock(&usa->lock)`. Only libthr's own fork (__thr_fork) takes those
        // locks around the fork (_thr_signal_prefork) and resets them in the child;
        // pdfork(2) is a plain system call, so a lock another server thread held at the
        // fork stays held here and the child would hang. syscall(2) is a trap stub that
        // takes no lock (errno goes to this thread's own TLS). What libthr's wrappers add,
        // keeping its SIGCANCEL out of the mask, is moot: no thread runs here and execve
        // follows. Caught signals are reset by execve itself; only the ignored SIGPIPE
        // needs resetting. The structures live on this stack: no allocation.
        let empty = abi::SigSet::default();
        libc::syscall(
            abi::SYS_SIGPROCMASK,
            abi::SIG_SETMASK,
            &empty as *const abi::SigSet,
            std::ptr::null_mut::<abi::SigSet>(),
        );
        let default = abi::SigAction {
            handler: abi::SIG_DFL,
            flags: 0,
            mask: abi::SigSet::default(),
        };
        libc::syscall(
            abi::SYS_SIGACTION,
            abi::SIGPIPE,
            &default as *const abi::SigAction,
            std::ptr::null_mut::<abi::SigAction>(),
        );

        for (from, to) in [(plan.stdin, 0), (plan.stdout, 1), (plan.stderr, 2)] {
            if libc::dup2(from, to) < 0 {
                child_fail(ep, SetupStep::Dup2, errno());
            }
        }
        // The error pipe at 3, still close-on-exec: EOF at a successful execve.
        if libc::fcntl(ep, libc::F_DUP2FD_CLOEXEC, 3) < 0 {
            child_fail(ep, SetupStep::Dup2, errno());
        }
        // Newer kernels refuse jail_attach with an open directory descriptor (EPERM):
        // close everything the server had open.
        libc::closefrom(4);
        // A session of its own, so no controlling terminal is reachable (see
        // ExecPlan::new_session). Cannot fail EPERM here: a new process is never a
        // process group leader (kern_prot.c sys_setsid; kern_fork.c fork_findpid never
        // hands out a pid in use as a process group or session id).
        if plan.new_session && libc::setsid() < 0 {
            child_fail(3, SetupStep::Setsid, errno());
        }
        // jail_attach(2) sets root and cwd to the jail's root (kern_jail.c
        // do_jail_attach: change_dir + pwd_chroot_chdir), so chdir comes after it.
        if libc::jail_attach(plan.jid) < 0 {
            child_fail(3, SetupStep::JailAttach, errno());
        }
        if libc::chdir(plan.cwd.as_ptr()) < 0 {
            child_fail(3, SetupStep::Chdir, errno());
        }
        // Lowering limits needs no privilege; done before dropping it. Every entry is
        // set, 0 included (RLIMIT_CORE 0: no core files).
        for &(res, v) in plan.rlimits {
            let lim = libc::rlimit {
                rlim_cur: v,
                rlim_max: v,
            };
            if libc::setrlimit(res, &lim) < 0 {
                child_fail(3, SetupStep::Rlimit, errno());
            }
        }
        if libc::setgroups(1, &plan.gid) < 0 {
            child_fail(3, SetupStep::Setgroups, errno());
        }
        if libc::setgid(plan.gid) < 0 {
            child_fail(3, SetupStep::Setgid, errno());
        }
        if libc::setuid(plan.uid) < 0 {
            child_fail(3, SetupStep::Setuid, errno());
        }
        libc::execve(plan.exe.as_ptr(), plan.argv, plan.envp);
        child_fail(3, SetupStep::Execve, errno())
    }
}
