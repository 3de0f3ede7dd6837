//! FreeBSD backend: jails + ZFS, orchestrated over a kernel seam.
//!
//! - [`kernel`]: the seam ([`Kernel`]), its errors and parameters.
//! - [`backend`]: [`FreeBsdBackend`], the orchestration (compiled and tested on every OS).
//! - [`fake`]: [`FakeKernel`], the seam in memory with the kernel's rules enforced.
//! - [`counted`]: [`Counted`], a seam that counts the calls through it (the bench's census).
//! - `real` (FreeBSD only): `RealKernel`, libzfs_core + nmount(2) + jail_set(2) + pdfork(2).

pub mod abi;
pub mod backend;
pub mod counted;
pub mod fake;
pub mod kernel;
pub mod probe;

#[cfg(target_os = "freebsd")]
mod real;

#[cfg(test)]
mod abi_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_engine;
#[cfg(test)]
mod tests_faults;
#[cfg(test)]
mod tests_fidelity;
#[cfg(test)]
mod tests_restart;
#[cfg(test)]
mod tests_sandbox;

pub use backend::{
    FreeBsdBackend, FreeBsdConfig, FreeBsdContainer, FreeBsdError, FreeBsdImage, JailLimits, Step,
};
pub use counted::Counted;
pub use fake::{
    FakeExec, FakeJail, FakeKernel, FakeMountKind, FakeRun, JailParamType, JAIL_PARAM_TYPES,
};
pub use kernel::{
    ExecPlan, JailInfo, JailParam, JailParams, KResult, Kernel, KernelError, Rlimit, ZfsProp,
    JAIL_ALLOW,
};
#[cfg(target_os = "freebsd")]
pub use real::RealKernel;
