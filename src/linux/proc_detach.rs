//! One thread per backend that detaches the `/proc` a command left in its container's mount
//! namespace (see [`super::child`]), so that neither the command's exit nor a thread made
//! per reset pays for it.
//!
//! A command mounts its `/proc` in the container's mount namespace instead of a namespace
//! of its own: that namespace's teardown ran in the command's exit, before the server saw
//! it end, and waited there for an expedited RCU grace period (namespace_unlock in
//! fs/namespace.c). The unmount still waits for one, here, on the reset's path.
//!
//! Entering a mount namespace takes a thread whose filesystem attributes are its own
//! (setns(2): CLONE_NEWNS needs them unshared, which unshare(2) allows a thread of a
//! multi-threaded process with CLONE_FS). This thread unshares them once, enters each
//! container's namespace only for the unmount, and goes back to the backend's seed
//! namespace after each, so that it never keeps a destroyed container's namespace (and its
//! overlay) alive.

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;

use nix::mount::{umount2, MntFlags};
use nix::sched::{setns, unshare, CloneFlags};

use super::error::LinuxError;
use super::sys::{io, COMMAND_PROC};

/// More `/proc` mounts than commands can stack at [`COMMAND_PROC`] between two detaches
/// (one per exec, and exec detaches the last one itself when no reset did).
const MAX_STACKED: usize = 64;

/// A container's mount namespace to clean, and where the answer goes.
type Job = (OwnedFd, mpsc::SyncSender<Result<(), io::Error>>);

pub(super) struct ProcDetacher {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl ProcDetacher {
    /// Starts the thread; `seed` is the namespace it waits in (a copy of its descriptor).
    pub(super) fn start(seed: &OwnedFd) -> Result<ProcDetacher, LinuxError> {
        let err = |source| LinuxError::DetachProc {
            path: PathBuf::from(COMMAND_PROC),
            source,
        };
        let seed = seed.try_clone().map_err(err)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("jb-proc-detach".into())
            .spawn(move || {
                let setup = unshare(CloneFlags::CLONE_FS)
                    .and_then(|()| setns(&seed, CloneFlags::CLONE_NEWNS))
                    .map_err(io);
                let failed = setup.is_err();
                let _ = ready_tx.send(setup);
                if failed {
                    return;
                }
                for (ns, reply) in rx {
                    let done = detach_in(&ns);
                    // Back to the seed whatever happened: the container's namespace must
                    // not outlive the container through this thread.
                    let back = setns(&seed, CloneFlags::CLONE_NEWNS).map_err(io);
                    let _ = reply.send(done.and(back));
                }
            })
            .map_err(err)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(ProcDetacher {
                jobs: Some(tx),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(err(e))
            }
            Err(_) => {
                let _ = thread.join();
                Err(LinuxError::NamespaceThread {
                    path: PathBuf::from(COMMAND_PROC),
                })
            }
        }
    }

    /// Detaches every `/proc` stacked at [`COMMAND_PROC`] in the mount namespace `ns`, and
    /// returns when it is done (the next command must not mount its own before).
    pub(super) fn detach(&self, ns: &OwnedFd) -> Result<(), LinuxError> {
        let err = |source| LinuxError::DetachProc {
            path: PathBuf::from(COMMAND_PROC),
            source,
        };
        let ns = ns.try_clone().map_err(err)?;
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        let sent = self
            .jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send((ns, reply_tx)).is_ok());
        if !sent {
            return Err(LinuxError::NamespaceThread {
                path: PathBuf::from(COMMAND_PROC),
            });
        }
        match reply_rx.recv() {
            Ok(done) => done.map_err(err),
            Err(_) => Err(LinuxError::NamespaceThread {
                path: PathBuf::from(COMMAND_PROC),
            }),
        }
    }
}

impl Drop for ProcDetacher {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop.
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// In this thread: enters `ns` and unmounts at [`COMMAND_PROC`] until EINVAL, "not a mount
/// point" (umount(2)): a command that failed before mounting left nothing there.
fn detach_in(ns: &OwnedFd) -> Result<(), io::Error> {
    setns(ns, CloneFlags::CLONE_NEWNS).map_err(io)?;
    for _ in 0..MAX_STACKED {
        match umount2(COMMAND_PROC, MntFlags::MNT_DETACH) {
            Ok(()) => {}
            Err(nix::errno::Errno::EINVAL) => return Ok(()),
            Err(e) => return Err(io(e)),
        }
    }
    Err(io::Error::other(format!(
        "more than {MAX_STACKED} mounts stacked there"
    )))
}
