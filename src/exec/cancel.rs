//! Cancelling a running build from another thread (client disconnect, scheduler cancel).
//!
//! A [`CancelToken`] is a flag plus a pipe: [`CancelToken::cancel`] sets the flag and
//! writes one byte, so the read end polls readable from then on. The supervisor of a
//! sandboxed command adds that descriptor to its poll set ([`super::supervise_cancellable`]):
//! cancellation wakes it at once, without polling a flag on a timer.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::OFlag;

/// Cancels a build from another thread. Share it by reference or in an `Arc`; cancelling
/// is idempotent and cannot be undone.
#[derive(Debug)]
pub struct CancelToken {
    cancelled: AtomicBool,
    read: OwnedFd,
    write: OwnedFd,
}

impl CancelToken {
    /// A token not cancelled yet. Costs one pipe (two descriptors, close-on-exec).
    pub fn new() -> io::Result<CancelToken> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        Ok(CancelToken {
            cancelled: AtomicBool::new(false),
            read,
            write,
        })
    }

    /// Cancels: a build using this token stops as soon as it notices (a running command's
    /// sandbox is killed at once) and returns a cancelled error.
    pub fn cancel(&self) {
        if !self.cancelled.swap(true, Ordering::AcqRel) {
            // One byte keeps the read end readable for good; it is never read. A failed
            // write (impossible on a fresh pipe) leaves the flag, checked between phases.
            let _ = nix::unistd::write(&self.write, &[1u8]);
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Polls readable once the token is cancelled.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    #[test]
    fn cancel_makes_the_descriptor_readable_once_and_for_good() {
        let t = CancelToken::new().unwrap();
        let mut fds = [PollFd::new(t.fd(), PollFlags::POLLIN)];
        assert_eq!(poll(&mut fds, PollTimeout::ZERO).unwrap(), 0);
        assert!(!t.is_cancelled());
        t.cancel();
        t.cancel();
        assert!(t.is_cancelled());
        for _ in 0..2 {
            let mut fds = [PollFd::new(t.fd(), PollFlags::POLLIN)];
            assert_eq!(poll(&mut fds, PollTimeout::ZERO).unwrap(), 1);
        }
    }
}
