//! [`Counted`]: a [`Kernel`] that counts the calls made through it, by method. The bench
//! reports them per compile and per reset on FreeBSD (where strace does not exist), and the
//! engine tests check on the fake kernel what a warm compile and a reset cost. Each call is
//! a fixed set of system calls: `exec` is pdfork(2) + jail_attach(2) + execve(2) of the
//! compiler (and the parent's wait), `zfs_rollback_to` one ZFS ioctl (lzc_rollback_to),
//! `jail_create` one jail_set(2), `jail_remove` one jail_remove(2), the mounts one
//! nmount(2) or unmount(2); `jail_wait_gone` polls jail_get(2) until the jail is gone.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use super::kernel::{forward_kernel, ExecPlan, JailInfo, JailParams, KResult, Kernel, ZfsProp};
use crate::backend::{ExecOutcome, Limits};
use crate::exec::{CancelToken, PreparedCommand};

/// `inner`, counting calls by the [`Kernel`] method's name.
pub struct Counted<K> {
    inner: K,
    calls: Mutex<BTreeMap<&'static str, u64>>,
}

impl<K: Kernel> Counted<K> {
    pub fn new(inner: K) -> Counted<K> {
        Counted {
            inner,
            calls: Mutex::default(),
        }
    }

    /// The kernel counted.
    pub fn inner(&self) -> &K {
        &self.inner
    }

    /// Calls so far, by method name.
    pub fn calls(&self) -> BTreeMap<&'static str, u64> {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn note(&self, method: &'static str) {
        *self
            .calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(method)
            .or_insert(0) += 1;
    }
}

impl<K: Kernel> Kernel for Counted<K> {
    forward_kernel!(self, self.inner, |m| self.note(m));
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::test_support::{config, toolchain_tar_gz, USER};
    use super::super::{FakeKernel, FakeRun, FreeBsdBackend};
    use super::*;
    use crate::backend::{Backend, ExitStatus, ToolchainId};
    use crate::exec::CommandSpec;

    /// What the bench reports on FreeBSD, here on the fake kernel: a compile in a warm
    /// container is one call (the exec), its reset six, and neither touches ZFS but the
    /// reset's one rollback (no snapshot, clone, create or dataset mount).
    #[test]
    fn a_compile_is_one_kernel_call_and_a_reset_six() {
        let fake = Arc::new(FakeKernel::new());
        fake.register_program("/usr/bin/cc", |_| FakeRun::exit(0));
        let b = FreeBsdBackend::new(Counted::new(fake.clone()), config(&fake)).unwrap();
        b.remove_leftovers().unwrap();
        let img = b
            .create_image(
                &ToolchainId::new("tc1").unwrap(),
                &mut &toolchain_tar_gz(Some(b"#!/bin/sh\n"))[..],
            )
            .unwrap();
        let mut c = b.create_container(&img).unwrap();
        let cmd = crate::exec::PreparedCommand::try_from(CommandSpec {
            executable: "/usr/bin/cc".into(),
            cwd: "/work".into(),
            ..Default::default()
        })
        .unwrap();
        let limits = crate::backend::Limits::default();
        let before = b.kernel().calls();
        let delta = |from: &BTreeMap<&'static str, u64>| -> BTreeMap<&'static str, u64> {
            b.kernel()
                .calls()
                .into_iter()
                .map(|(k, v)| (k, v - from.get(k).copied().unwrap_or(0)))
                .filter(|(_, v)| *v > 0)
                .collect()
        };
        let o = b.exec(&c, &cmd, USER, &limits, None).unwrap();
        assert_eq!(o.status, ExitStatus::Code(0));
        assert_eq!(delta(&before), BTreeMap::from([("exec", 1)]));
        let before = b.kernel().calls();
        b.reset(&mut c).unwrap();
        assert_eq!(
            delta(&before),
            BTreeMap::from([
                ("jail_create", 1),
                ("jail_remove", 1),
                ("jail_wait_gone", 1),
                ("mount_devfs", 1),
                ("unmount", 1),
                ("zfs_rollback_to", 1),
            ])
        );
        b.destroy_container(c).unwrap();
    }
}
