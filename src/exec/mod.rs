//! Running a command in a sandbox, the platform-neutral half: validating a client's command
//! into C strings before fork ([`PreparedCommand`]), the protocol a forked child uses to
//! report a failed set-up step ([`SetupStep`], [`child_fail`]), and the parent's supervision
//! of the child ([`supervise`]): capped stdout/stderr, wall-clock timeout, exit status.
//!
//! The platform half (what the child does between fork and execve) lives in each backend.

mod cancel;
mod command;
mod supervise;

pub use cancel::CancelToken;
pub use command::{CommandSpec, InvalidCommand, PreparedCommand};
pub use supervise::{supervise, supervise_cancellable, ExecError, SetupStep, SpawnedChild};

/// Called in a forked child when a set-up step fails: writes (step, errno) to the error pipe
/// and exits 127 without unwinding. Async-signal-safe: `write(2)` and `_exit(2)` only.
pub fn child_fail(error_pipe: std::os::fd::RawFd, step: SetupStep, errno: i32) -> ! {
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&(step as u32).to_ne_bytes());
    msg[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: msg is a live 8-byte buffer; write(2) and _exit(2) are async-signal-safe. A
    // short or failed write is harmless: the parent then reports an unknown set-up failure.
    unsafe {
        libc::write(error_pipe, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// The current thread's errno, read without allocating (safe in a forked child).
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}
