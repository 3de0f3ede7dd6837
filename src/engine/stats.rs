//! Lock-free build statistics: jobs by outcome and a fixed-bucket histogram of each build
//! phase, updated with a few relaxed atomic adds per build (no lock, no allocation), read
//! by [`super::Engine::stats`] for metrics and logs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{BuildError, BuildOutcome};

/// Upper bounds (inclusive) of the phase histograms' buckets, in seconds: 1 ms to 10 min,
/// roughly 1-2.5-5 per decade. A last, implicit bucket holds what is slower.
pub const PHASE_BUCKETS_SECS: [f64; 18] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// The same bounds in nanoseconds, for the hot path's integer comparison.
const BUCKET_NANOS: [u64; 18] = {
    let mut out = [0u64; 18];
    let mut i = 0;
    while i < 18 {
        // Every bound is a whole number of microseconds: rounded, then exact.
        out[i] = (PHASE_BUCKETS_SECS[i] * 1e6 + 0.5) as u64 * 1000;
        i += 1;
    }
    out
};

/// Buckets per histogram: the bounded ones and the overflow.
pub const PHASE_BUCKET_COUNT: usize = PHASE_BUCKETS_SECS.len() + 1;

/// How a build ended, as metrics count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobOutcome {
    /// The compiler ran and exited 0.
    Ok,
    /// The compiler ran and failed: non-zero exit, killed by a signal, ended by the time
    /// limit or another sandbox limit (`ExecOutcome::limit_hit`; the sccache glue turns
    /// those into job errors, but the engine counts what the compiler did).
    CompileFailed,
    /// The request was at fault (bad command, inputs, outputs, toolchain).
    JobError,
    /// The backend failed (or the engine is misconfigured): the builder's fault.
    BackendError,
    /// Cancelled (client gone, shutdown past its grace period).
    Cancelled,
    /// Refused because the engine is shutting down.
    ShuttingDown,
}

impl JobOutcome {
    pub const ALL: [JobOutcome; 6] = [
        JobOutcome::Ok,
        JobOutcome::CompileFailed,
        JobOutcome::JobError,
        JobOutcome::BackendError,
        JobOutcome::Cancelled,
        JobOutcome::ShuttingDown,
    ];

    /// The metrics label value.
    pub fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Ok => "ok",
            JobOutcome::CompileFailed => "compile_failed",
            JobOutcome::JobError => "job_error",
            JobOutcome::BackendError => "backend_error",
            JobOutcome::Cancelled => "cancelled",
            JobOutcome::ShuttingDown => "shutting_down",
        }
    }

    pub(crate) fn of<D>(result: &Result<BuildOutcome<D>, BuildError>) -> JobOutcome {
        match result {
            Ok(o) if o.exec.status.success() => JobOutcome::Ok,
            Ok(_) => JobOutcome::CompileFailed,
            Err(BuildError::Cancelled) => JobOutcome::Cancelled,
            Err(BuildError::ShuttingDown) => JobOutcome::ShuttingDown,
            Err(e) if e.is_client_error() => JobOutcome::JobError,
            Err(_) => JobOutcome::BackendError,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Jobs by [`JobOutcome`], in [`JobOutcome::ALL`] order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutcomeCounts(pub [u64; 6]);

impl OutcomeCounts {
    pub fn get(&self, o: JobOutcome) -> u64 {
        self.0[o.index()]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// The phases of [`super::PhaseTimings`], in field order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Image,
    Container,
    Unpack,
    Exec,
    Outputs,
    Total,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Image,
        Phase::Container,
        Phase::Unpack,
        Phase::Exec,
        Phase::Outputs,
        Phase::Total,
    ];

    /// The metrics label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Image => "image",
            Phase::Container => "container",
            Phase::Unpack => "unpack",
            Phase::Exec => "exec",
            Phase::Outputs => "outputs",
            Phase::Total => "total",
        }
    }
}

/// One phase's histogram: per-bucket (not cumulative) counts with the bounds
/// [`PHASE_BUCKETS_SECS`] plus the overflow, and the sum of the observations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhaseHistogram {
    pub buckets: [u64; PHASE_BUCKET_COUNT],
    pub sum: Duration,
}

impl PhaseHistogram {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The observations since `earlier` (a snapshot of the same histogram).
    pub fn since(&self, earlier: &PhaseHistogram) -> PhaseHistogram {
        let mut buckets = [0u64; PHASE_BUCKET_COUNT];
        for (i, b) in buckets.iter_mut().enumerate() {
            *b = self.buckets[i].saturating_sub(earlier.buckets[i]);
        }
        PhaseHistogram {
            buckets,
            sum: self.sum.saturating_sub(earlier.sum),
        }
    }

    /// The upper bound of the bucket holding the `q` quantile (0..=1), in seconds; None
    /// without observations, infinity when it falls in the overflow bucket.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b;
            if seen >= rank {
                return Some(PHASE_BUCKETS_SECS.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        Some(f64::INFINITY)
    }
}

/// Jobs by outcome and phase histograms, for [`super::EngineStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BuildStats {
    pub outcomes: OutcomeCounts,
    /// Builds that returned (ok or compile_failed): a failed build has no timings.
    pub phases: [PhaseHistogram; 6],
}

impl BuildStats {
    pub fn phase(&self, p: Phase) -> &PhaseHistogram {
        &self.phases[p as usize]
    }
}

#[derive(Default)]
struct AtomicHistogram {
    buckets: [AtomicU64; PHASE_BUCKET_COUNT],
    sum_nanos: AtomicU64,
}

impl AtomicHistogram {
    fn observe(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKET_NANOS.partition_point(|&bound| bound < nanos);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn snapshot(&self) -> PhaseHistogram {
        let mut buckets = [0u64; PHASE_BUCKET_COUNT];
        for (b, a) in buckets.iter_mut().zip(&self.buckets) {
            *b = a.load(Ordering::Relaxed);
        }
        PhaseHistogram {
            buckets,
            sum: Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)),
        }
    }
}

/// The engine's recorder: one per engine.
#[derive(Default)]
pub(crate) struct BuildRecorder {
    outcomes: [AtomicU64; 6],
    phases: [AtomicHistogram; 6],
}

impl BuildRecorder {
    pub(crate) fn record<D>(&self, result: &Result<BuildOutcome<D>, BuildError>) {
        self.outcomes[JobOutcome::of(result).index()].fetch_add(1, Ordering::Relaxed);
        if let Ok(o) = result {
            let t = &o.timings;
            let each = [t.image, t.container, t.unpack, t.exec, t.outputs, t.total];
            for (h, d) in self.phases.iter().zip(each) {
                h.observe(d);
            }
        }
    }

    pub(crate) fn snapshot(&self) -> BuildStats {
        let mut outcomes = [0u64; 6];
        for (o, a) in outcomes.iter_mut().zip(&self.outcomes) {
            *o = a.load(Ordering::Relaxed);
        }
        let mut phases = [PhaseHistogram::default(); 6];
        for (p, h) in phases.iter_mut().zip(&self.phases) {
            *p = h.snapshot();
        }
        BuildStats {
            outcomes: OutcomeCounts(outcomes),
            phases,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_bucket_of_their_inclusive_upper_bound() {
        let h = AtomicHistogram::default();
        for d in [
            Duration::ZERO,
            Duration::from_millis(1),
            Duration::from_micros(1001),
            Duration::from_secs(600),
            Duration::from_secs(601),
        ] {
            h.observe(d);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets[0], 2, "0 and exactly 1 ms");
        assert_eq!(s.buckets[1], 1, "just over 1 ms");
        assert_eq!(s.buckets[17], 1, "exactly 600 s");
        assert_eq!(s.buckets[18], 1, "overflow");
        assert_eq!(s.count(), 5);
        assert_eq!(s.quantile_bound(0.5), Some(0.0025));
        assert_eq!(s.quantile_bound(1.0), Some(f64::INFINITY));
        assert_eq!(PhaseHistogram::default().quantile_bound(0.5), None);
        assert_eq!(s.since(&s).count(), 0);
    }
}
