//! Starting the sandbox's first process without copying the server: clone(2) with
//! `CLONE_VM | CLONE_VFORK`, as glibc's posix_spawn does (sysdeps/unix/sysv/linux/spawni.c).
//!
//! A fork of the multi-threaded server copies its page tables, and every page the server's
//! other threads write afterwards takes a copy-on-write fault until the child's execve drops
//! the copy: CPU per compile that grows with the server's resident size. With `CLONE_VM` the
//! child runs in the server's memory on a stack of its own, and `CLONE_VFORK` suspends the
//! calling thread (only it) until the child's execve or exit releases the memory.
//!
//! What sharing the memory asks of the child, which [`super::child`] already keeps for
//! other reasons: no allocation, no locks, nothing that writes to memory the server uses
//! (the plan is read-only; errno is the suspended thread's, which reads it only on a failed
//! clone). Signals are blocked across the clone, so no handler of the server (say
//! signal-hook's, which writes to a pipe the server reads) can run in the child before it
//! has reset every disposition to the default ([`super::child`]).

use std::io;
use std::os::raw::{c_int, c_void};

use super::child::{first_child, ChildPlan};

/// The child's stack: an anonymous mapping with a guard page below it (stacks grow down on
/// x86_64 and aarch64), so an overflow faults instead of writing into the server's heap.
/// One per container: a container runs one exec at a time (the caller holds its lock).
#[derive(Debug)]
pub(super) struct ChildStack {
    base: *mut c_void,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; it is used only through
// `&mut ChildStack` (behind the container's mutex).
unsafe impl Send for ChildStack {}

/// What the child's code needs (a few frames of plain system calls) with a wide margin.
const STACK_BYTES: usize = 256 * 1024;

impl ChildStack {
    pub(super) fn new() -> io::Result<ChildStack> {
        // SAFETY: sysconf with a valid name.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .unwrap_or(4096)
            .max(4096);
        let len = STACK_BYTES + page;
        // SAFETY: a new private anonymous mapping; no existing memory is affected.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = ChildStack { base, len };
        // SAFETY: the lowest page of the mapping made above.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error()); // `stack` unmaps it
        }
        Ok(stack)
    }

    fn top(&mut self) -> *mut c_void {
        // 16-byte aligned: the mapping is page-aligned and its length a multiple of pages.
        // SAFETY: one past the end of the mapping, which is where a downward stack starts.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping this value owns; no child uses it (clone
        // returns only after the child's execve or exit).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

extern "C" fn child_main(plan: *mut c_void) -> c_int {
    // SAFETY: `plan` is the `&ChildPlan` passed to clone by `clone_child`, alive and
    // unchanged until clone returns, which is after this process has exec'd or exited.
    first_child(unsafe { &*plan.cast::<ChildPlan>() })
}

/// Clones the child into a new pid namespace (`extra_flags`: `CLONE_NEWPID`), running
/// [`first_child`] with `plan` on `stack`; returns its pid once it has exec'd (or failed and
/// exited: its error is on the plan's error pipe).
pub(super) fn clone_child(
    plan: &ChildPlan,
    stack: &mut ChildStack,
    extra_flags: c_int,
) -> io::Result<libc::pid_t> {
    // SAFETY: a sigset_t is plain data; all-zero is a valid (empty) set.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigfillset/pthread_sigmask on local sets; the old mask is restored below.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | extra_flags | libc::SIGCHLD;
    // SAFETY: clone(2) through glibc's wrapper, which switches to `stack` and calls
    // `child_main(plan)` in the child; with CLONE_VFORK this thread waits until the child
    // execs or exits, so `plan` and `stack` outlive the child's use of them. The child
    // runs only async-signal-safe code (see the module comment).
    let pid = unsafe {
        libc::clone(
            child_main,
            stack.top(),
            flags,
            (plan as *const ChildPlan).cast_mut().cast(),
        )
    };
    let err = io::Error::last_os_error();
    // SAFETY: restoring this thread's mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    if pid < 0 {
        return Err(err);
    }
    Ok(pid)
}
