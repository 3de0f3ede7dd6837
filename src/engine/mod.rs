//! The platform-neutral engine: toolchain images (created once, single-flight per
//! toolchain), a bounded warm pool of containers, a background recycler, and one build end
//! to end (DESIGN.md "The hot path"). It sees a platform only through [`Backend`].

mod build;
mod error;
mod job_queue;
mod pool;
mod stats;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use build::{
    BuildOutcome, BuildRequest, Output, OutputEncoder, PhaseTimings, RawOutput, ToolchainSource,
    OUTPUT_CHUNK_BYTES,
};
pub use error::{BoxError, BuildError};
pub use stats::{
    BuildStats, JobOutcome, OutcomeCounts, Phase, PhaseHistogram, PHASE_BUCKETS_SECS,
    PHASE_BUCKET_COUNT,
};

use crate::backend::{Backend, BuildUser, Limits};
use crate::untrusted::UnpackLimits;
use pool::Pool;

/// Default first uid and gid of the build range: 0x70000000. systemd's "Users, Groups,
/// UIDs and GIDs on systemd Systems" (docs/UIDS-GIDS.md) lists 1879048192..=2147483647 as
/// unused: above the container ranges systemd-nspawn picks (524288..=1879048191) and far
/// from its dynamic users (61184..=65519), nobody (65534) and the 16-bit `(uid_t)-1`
/// (65535); and below 2^31, since ids from 2^31 on break tools that treat them as signed
/// ("HIC SVNT LEONES" there). FreeBSD's uid_t is a u32 too (sys/sys/_types.h, UID_MAX =
/// UINT_MAX), so the same range works on both backends.
pub const DEFAULT_BUILD_ID_BASE: u32 = 0x7000_0000;

/// Engine policy. Defaults suit a 2-16 core build server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Containers alive at once, all toolchains together (busy, ready and recycling).
    pub max_containers: usize,
    /// Containers alive at once for one toolchain.
    pub max_containers_per_toolchain: usize,
    /// Ready containers the recycler keeps prepared per toolchain in use.
    pub warm_per_toolchain: usize,
    /// Toolchain images kept; beyond this the least recently used idle image is evicted.
    pub max_images: usize,
    /// Threads resetting and creating containers in the background.
    pub recycler_threads: usize,
    /// Identity of container slot 0; slot n runs as (uid + n, gid + n). Every live
    /// container holds a slot of its own in 0..max(1, max_containers) (kept across
    /// resets, freed when it is destroyed), so concurrent builds never share a uid.
    pub build_user_base: BuildUser,
    pub limits: Limits,
    pub toolchain_limits: UnpackLimits,
    pub inputs_limits: UnpackLimits,
    /// Largest single output file returned.
    pub max_output_bytes: u64,
    /// Most outputs one build may request.
    pub max_outputs: usize,
    /// Largest total size of one build's outputs (before encoding).
    pub max_outputs_total_bytes: u64,
    /// Consecutive backend failures after which the builder reports itself unhealthy.
    pub unhealthy_after: u32,
    /// How long `shutdown` waits for running builds before killing them.
    pub shutdown_grace: Duration,
    /// Keep toolchain images across restarts: shutdown leaves them in place and start
    /// adopts those an earlier instance left complete (the most recently used
    /// `max_images`). False: start and shutdown destroy every image, as before.
    pub keep_images: bool,
}

impl EngineConfig {
    /// Container slots, hence build identities: one per container alive at once.
    pub fn slots(&self) -> u32 {
        u32::try_from(self.max_containers.max(1)).unwrap_or(u32::MAX)
    }

    /// The identity builds in container slot `slot` run as (None past `u32::MAX`).
    pub fn build_user(&self, slot: u32) -> Option<BuildUser> {
        self.build_user_base.offset(slot)
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        EngineConfig {
            max_containers: 2 * cores + 2,
            max_containers_per_toolchain: 2 * cores + 2,
            warm_per_toolchain: cores,
            max_images: 8,
            recycler_threads: 2,
            build_user_base: BuildUser {
                uid: DEFAULT_BUILD_ID_BASE,
                gid: DEFAULT_BUILD_ID_BASE,
            },
            limits: Limits::default(),
            toolchain_limits: UnpackLimits {
                max_bytes: 8 << 30,
                max_entries: 1_000_000,
            },
            inputs_limits: UnpackLimits {
                max_bytes: 2 << 30,
                max_entries: 200_000,
            },
            max_output_bytes: 1 << 30,
            max_outputs: 256,
            max_outputs_total_bytes: 1 << 30,
            unhealthy_after: 5,
            shutdown_grace: Duration::from_secs(30),
            keep_images: true,
        }
    }
}

/// Counters for logs, `serve` status and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub builds_ok: u64,
    pub builds_failed: u64,
    pub images_created: u64,
    pub images_evicted: u64,
    /// Images an earlier instance left that this one adopted at start.
    pub images_adopted: u64,
    pub containers_created: u64,
    pub containers_reset: u64,
    pub containers_destroyed: u64,
    pub reset_failures: u64,
    /// Containers whose destruction failed (they are counted in `containers_destroyed`).
    pub destroy_failures: u64,
    /// Containers alive now (busy + ready + recycling + being created).
    pub containers_alive: usize,
    pub containers_ready: usize,
    /// Containers lent to a running build now.
    pub containers_busy: usize,
    pub images: usize,
    /// Jobs by outcome and the phase histograms.
    pub builds: BuildStats,
    /// The containers of each toolchain image held now (at most `max_images` entries),
    /// in toolchain order.
    pub toolchains: Vec<ToolchainPoolStats>,
    /// [`Engine::is_healthy`] when the snapshot was taken.
    pub healthy: bool,
}

/// One toolchain image's containers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolchainPoolStats {
    pub toolchain: crate::backend::ToolchainId,
    pub ready: usize,
    /// Lent to a running build.
    pub busy: usize,
    /// Handed back and being reset, or being created.
    pub recycling: usize,
}

/// The engine. Share it with `Arc`; dropping it shuts it down (see [`Engine::shutdown`]).
pub struct Engine<B: Backend> {
    pool: Arc<Pool<B>>,
}

pub(crate) struct Health {
    consecutive_failures: AtomicU32,
    builds_ok: AtomicU64,
    builds_failed: AtomicU64,
    builds: stats::BuildRecorder,
}

impl<B: Backend> Engine<B> {
    /// Starts the engine: removes what an earlier instance left behind (the backend's
    /// `remove_leftovers`, which also takes the instance lock), starts the recycler, and
    /// adopts the complete images the earlier instance kept (`existing_images`; with
    /// `keep_images` false they are destroyed instead).
    pub fn start(backend: B, config: EngineConfig) -> Result<Self, BuildError> {
        let last = config.slots() - 1;
        if config.build_user(last).is_none() {
            return Err(BuildError::InvalidConfig {
                what: "build_user_base",
                reason: format!(
                    "{:?} plus {last} (max_containers - 1) passes the largest valid id",
                    config.build_user_base
                ),
            });
        }
        let report = backend
            .remove_leftovers()
            .map_err(|e| BuildError::Backend {
                step: "start-up clean-up",
                backend: backend.kind(),
                source: Box::new(e),
            })?;
        for line in &report.removed {
            log::info!("removed leftover of an earlier run: {line}");
        }
        let existing = backend.existing_images().map_err(|e| BuildError::Backend {
            step: "listing kept images",
            backend: backend.kind(),
            source: Box::new(e),
        })?;
        let pool = Pool::start(backend, config);
        pool.adopt(existing);
        Ok(Engine { pool })
    }

    pub fn backend(&self) -> &B {
        &self.pool.backend
    }

    pub fn config(&self) -> &EngineConfig {
        &self.pool.config
    }

    /// False once `unhealthy_after` backend failures happened in a row (a successful build
    /// resets the count). Job errors (bad requests) never count.
    pub fn is_healthy(&self) -> bool {
        self.pool
            .health
            .consecutive_failures
            .load(Ordering::Relaxed)
            < self.pool.config.unhealthy_after
    }

    /// A snapshot of the counters, the phase histograms and the pool (takes the pool's
    /// bookkeeping lock briefly; never held across a backend call).
    pub fn stats(&self) -> EngineStats {
        let mut s = self.pool.stats();
        s.healthy = self.is_healthy();
        s
    }

    /// Blocks until the recycler has nothing queued: every container handed back is ready
    /// or destroyed. For tests, benchmarks and orderly shutdown.
    pub fn wait_idle(&self) {
        self.pool.wait_idle();
    }

    /// Stops taking builds, waits up to `shutdown_grace` for running ones, then destroys
    /// every container, and every image unless `keep_images`. Idempotent.
    pub fn shutdown(&self) {
        self.pool.shutdown();
    }
}

impl<B: Backend> Drop for Engine<B> {
    fn drop(&mut self) {
        self.pool.shutdown();
    }
}

#[cfg(test)]
pub(crate) mod test_backend;
#[cfg(test)]
mod tests;
