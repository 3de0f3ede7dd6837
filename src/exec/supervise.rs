//! The parent's side of a sandboxed child: read stdout/stderr up to a cap, enforce the
//! wall-clock timeout, collect the exit status, and decode a set-up failure the child
//! reported through the error pipe (see [`super::child_fail`]).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::CancelToken;
use crate::backend::{ExecOutcome, ExitStatus, Limits};

/// The steps a child takes between fork and execve, named in set-up errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum SetupStep {
    Dup2 = 1,
    CloseFds,
    JailAttach,
    Setns,
    Unshare,
    Fork,
    ParentDeathSignal,
    MountPrivate,
    MountProc,
    PivotRoot,
    UnmountOldRoot,
    Chroot,
    Chdir,
    Setgroups,
    Setgid,
    Setuid,
    Rlimit,
    Execve,
    Wait,
    /// Joining the container's cgroup (writing to its cgroup.procs).
    Cgroup,
    /// Leaving the server's session (setsid(2)), and so its controlling terminal.
    Setsid,
    /// prctl(PR_SET_NO_NEW_PRIVS).
    NoNewPrivs,
    /// Installing the seccomp filter (seccomp(2) SECCOMP_SET_MODE_FILTER).
    Seccomp,
}

impl SetupStep {
    const ALL: [SetupStep; 23] = [
        SetupStep::Dup2,
        SetupStep::CloseFds,
        SetupStep::JailAttach,
        SetupStep::Setns,
        SetupStep::Unshare,
        SetupStep::Fork,
        SetupStep::ParentDeathSignal,
        SetupStep::MountPrivate,
        SetupStep::MountProc,
        SetupStep::PivotRoot,
        SetupStep::UnmountOldRoot,
        SetupStep::Chroot,
        SetupStep::Chdir,
        SetupStep::Setgroups,
        SetupStep::Setgid,
        SetupStep::Setuid,
        SetupStep::Rlimit,
        SetupStep::Execve,
        SetupStep::Wait,
        SetupStep::Cgroup,
        SetupStep::Setsid,
        SetupStep::NoNewPrivs,
        SetupStep::Seccomp,
    ];

    fn from_u32(v: u32) -> Option<SetupStep> {
        SetupStep::ALL.into_iter().find(|s| *s as u32 == v)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The child failed before execve: `Execve` + ENOENT means the executable does not exist
    /// in the sandbox, `Chdir` + ENOENT a missing working directory: the job's fault.
    #[error("sandboxed child failed at {step:?}: {}", Errno::from_raw(*.errno))]
    Setup { step: SetupStep, errno: i32 },
    #[error("supervising sandboxed child: {0}")]
    Io(#[from] io::Error),
    /// The build was cancelled ([`CancelToken::cancel`]); the sandbox was killed.
    #[error("cancelled; the sandbox was killed")]
    Cancelled,
}

impl ExecError {
    /// True when the client's command, not the sandbox, is at fault (missing executable or
    /// working directory, executable not executable).
    pub fn is_job_error(&self) -> bool {
        matches!(
            self,
            ExecError::Setup {
                step: SetupStep::Execve | SetupStep::Chdir,
                ..
            }
        )
    }
}

/// A forked child as the backend hands it to [`supervise`].
pub struct SpawnedChild {
    pub pid: libc::pid_t,
    /// Read ends of the child's stdout and stderr pipes.
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// Read end of the CLOEXEC error pipe: EOF at a successful execve, 8 bytes on failure.
    pub error_pipe: OwnedFd,
    /// A descriptor that polls readable (or hung up) once the child has exited: a pidfd on
    /// Linux (pidfd_open(2)), a process descriptor on FreeBSD (pdfork(2)).
    pub exit_fd: OwnedFd,
}

struct Stream {
    fd: Option<OwnedFd>,
    data: Vec<u8>,
    truncated: bool,
}

impl Stream {
    fn new(fd: OwnedFd) -> io::Result<Stream> {
        set_nonblocking(&fd)?;
        Ok(Stream {
            fd: Some(fd),
            data: Vec::new(),
            truncated: false,
        })
    }

    /// Reads what is available now; closes the stream at EOF.
    fn drain(&mut self, cap: usize, scratch: &mut [u8]) -> io::Result<()> {
        while let Some(fd) = &self.fd {
            match nix::unistd::read(fd, scratch) {
                Ok(0) => self.fd = None,
                Ok(n) => {
                    let keep = n.min(cap.saturating_sub(self.data.len()));
                    self.data.extend_from_slice(&scratch[..keep]);
                    self.truncated |= keep < n;
                }
                Err(Errno::EAGAIN) => return Ok(()),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

fn wait_status(pid: libc::pid_t) -> io::Result<ExitStatus> {
    let mut status = 0;
    loop {
        // SAFETY: plain waitpid on our own child with a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(if libc::WIFEXITED(status) {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    } else {
        ExitStatus::Signal(libc::WTERMSIG(status))
    })
}

/// Supervises `child` until it exits or `limits.timeout` expires; on expiry calls
/// `kill_sandbox`, which must kill every process of the sandbox (including `child`).
///
/// Once the child has exited, what is already in its pipes is read and the rest is not
/// waited for: a daemon the compile left behind cannot hold the build open (reset kills it).
pub fn supervise(
    child: SpawnedChild,
    limits: &Limits,
    kill_sandbox: &mut dyn FnMut(),
) -> Result<ExecOutcome, ExecError> {
    supervise_cancellable(child, limits, None, kill_sandbox)
}

/// [`supervise`], and also stops when `cancel` is cancelled: its descriptor is in the poll
/// set, so cancellation wakes the supervisor at once; it then calls `kill_sandbox`, reaps
/// the child and returns [`ExecError::Cancelled`].
pub fn supervise_cancellable(
    child: SpawnedChild,
    limits: &Limits,
    cancel: Option<&CancelToken>,
    kill_sandbox: &mut dyn FnMut(),
) -> Result<ExecOutcome, ExecError> {
    let deadline = Instant::now() + limits.timeout;
    let cap = limits.output_stream_cap;
    let mut out = Stream::new(child.stdout)?;
    let mut err = Stream::new(child.stderr)?;
    let mut errpipe = Stream::new(child.error_pipe)?;
    let mut scratch = vec![0u8; 64 << 10];
    let mut timed_out = false;
    let mut cancelled = false;
    let mut exited = false;

    while !exited {
        if cancel.is_some_and(CancelToken::is_cancelled) {
            cancelled = true;
            kill_sandbox();
            break;
        }
        let mut fds = Vec::with_capacity(5);
        let mut which = Vec::with_capacity(5);
        for (i, s) in [&out, &err, &errpipe].into_iter().enumerate() {
            if let Some(fd) = &s.fd {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                which.push(i);
            }
        }
        fds.push(PollFd::new(child.exit_fd.as_fd(), PollFlags::POLLIN));
        which.push(3);
        if let Some(c) = cancel {
            fds.push(PollFd::new(c.fd(), PollFlags::POLLIN));
            which.push(4);
        }

        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            timed_out = true;
            kill_sandbox();
            break;
        }
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        let ready = match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from(e).into()),
        };
        if ready == 0 {
            continue; // the deadline check above fires
        }
        let revents: Vec<(usize, bool)> = fds
            .iter()
            .zip(&which)
            .map(|(p, w)| (*w, p.revents().is_some_and(|r| !r.is_empty())))
            .collect();
        drop(fds);
        for (w, hit) in revents {
            if !hit {
                continue;
            }
            match w {
                0 => out.drain(cap, &mut scratch)?,
                1 => err.drain(cap, &mut scratch)?,
                2 => errpipe.drain(8, &mut scratch)?,
                3 => exited = true,
                _ => {} // cancelled: handled at the top of the loop
            }
        }
    }

    let status = wait_status(child.pid)?;
    // Whatever the child wrote before it exited is in the pipes now.
    out.drain(cap, &mut scratch)?;
    err.drain(cap, &mut scratch)?;
    errpipe.drain(8, &mut scratch)?;
    drop(child.exit_fd);
    if cancelled {
        return Err(ExecError::Cancelled);
    }

    if errpipe.data.len() == 8 {
        let step = u32::from_ne_bytes(errpipe.data[..4].try_into().unwrap_or_default());
        let errno = i32::from_ne_bytes(errpipe.data[4..].try_into().unwrap_or_default());
        if let Some(step) = SetupStep::from_u32(step) {
            return Err(ExecError::Setup { step, errno });
        }
    }
    Ok(ExecOutcome {
        status: if timed_out {
            ExitStatus::TimedOut
        } else {
            status
        },
        stdout: out.data,
        stderr: err.data,
        stdout_truncated: out.truncated,
        stderr_truncated: err.truncated,
        // The backend that knows (Linux with a cgroup) fills it in.
        limit_hit: None,
    })
}
