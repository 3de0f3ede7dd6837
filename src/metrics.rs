//! The engine's statistics as Prometheus metrics (feature `metrics`), rendered with the
//! official client (`prometheus-client`) in the Prometheus text format 0.0.4, and the
//! periodic one-line summary `serve` logs.
//!
//! Nothing here is on the build path: builds update the engine's atomics
//! ([`crate::engine::Engine::stats`]); a scrape takes one snapshot and renders it.
//!
//! | metric | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `jailbuilder_jobs_total` | counter | `outcome` = `ok`, `compile_failed`, `job_error`, `backend_error`, `cancelled`, `shutting_down`, `refused` | jobs by how they ended: `ok` the compiler exited 0; `compile_failed` it ran and failed (exit code, signal, time limit); `job_error` the request was at fault (client); `backend_error` the builder was; `cancelled`; `shutting_down` refused by an engine shutting down; `refused` assignments refused by the server (draining, unhealthy) |
//! | `jailbuilder_build_phase_seconds` | histogram | `phase` = `image`, `container`, `unpack`, `exec`, `outputs`, `total` | wall-clock time of each phase of the builds that ran (ok and compile_failed); buckets 1 ms to 10 min |
//! | `jailbuilder_pool_containers` | gauge | `toolchain`, `state` = `ready`, `busy`, `recycling` | containers of each toolchain image held (at most `max_images` toolchains; an evicted image's series disappear); `recycling` = being reset or created |
//! | `jailbuilder_pool_containers_alive` | gauge | | all containers alive, including those of evicted images being destroyed |
//! | `jailbuilder_pool_images` | gauge | | toolchain images held |
//! | `jailbuilder_images_created_total` | counter | | toolchain images built |
//! | `jailbuilder_images_evicted_total` | counter | | toolchain images evicted (least recently used beyond `max_images`) |
//! | `jailbuilder_containers_created_total` | counter | | containers created |
//! | `jailbuilder_container_resets_total` | counter | `result` = `ok`, `failed` | container resets after a build (a failed one destroys the container) |
//! | `jailbuilder_container_destroys_total` | counter | `result` = `ok`, `failed` | containers destroyed |
//! | `jailbuilder_healthy` | gauge | | 1 while the builder is healthy, 0 after `unhealthy_after` backend failures in a row |
//! | `jailbuilder_toolchain_cache_bytes` | gauge | | bytes of toolchain archives in the toolchain cache (`serve` only) |
//! | `jailbuilder_toolchain_cache_archives` | gauge | | toolchain archives in the toolchain cache (`serve` only) |
//! | `jailbuilder_uploads_in_flight` | gauge | | toolchain uploads being received (`serve` only) |
//! | `jailbuilder_uploads_staged_bytes` | gauge | | bytes those uploads reserved of `max_staged_upload_bytes` (`serve` only) |

use std::fmt::Write as _;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::engine::{EngineStats, JobOutcome, Phase, PHASE_BUCKETS_SECS};

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// How often `serve` logs its one-line summary (skipped when nothing happened).
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// What the build server adds to the engine's statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Job assignments refused (draining, unhealthy).
    pub assignments_refused: u64,
    pub uploads_in_flight: u64,
    pub uploads_staged_bytes: u64,
    pub toolchain_cache_bytes: u64,
    pub toolchain_cache_archives: u64,
}

/// One scrape's data.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub engine: EngineStats,
    /// None outside a build server: its series are left out.
    pub server: Option<ServerStats>,
}

#[derive(Debug)]
struct SnapshotCollector(Snapshot);

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

/// A counter family with one label `key`.
fn labelled_counters(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    key: &'static str,
    values: &[(&'static str, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for &(label, v) in values {
        let labels = [(key, label)];
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0.engine;
        let b = &s.builds;

        let mut outcomes: Vec<(&'static str, u64)> = JobOutcome::ALL
            .iter()
            .map(|&o| (o.as_str(), b.outcomes.get(o)))
            .collect();
        outcomes.push((
            "refused",
            self.0.server.as_ref().map_or(0, |v| v.assignments_refused),
        ));
        labelled_counters(&mut e, "jobs", "Jobs by outcome.", "outcome", &outcomes)?;

        {
            let mut m = e.encode_descriptor(
                "build_phase_seconds",
                "Wall-clock time of each phase of the builds that ran (ok and compile_failed).",
                None,
                MetricType::Histogram,
            )?;
            let mut buckets = [(0.0, 0u64); PHASE_BUCKETS_SECS.len()];
            for p in Phase::ALL {
                let h = b.phase(p);
                for (i, slot) in buckets.iter_mut().enumerate() {
                    *slot = (PHASE_BUCKETS_SECS[i], h.buckets[i]);
                }
                let labels = [("phase", p.as_str())];
                m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                    h.sum.as_secs_f64(),
                    h.count(),
                    &buckets,
                    None,
                )?;
            }
        }

        {
            let mut m = e.encode_descriptor(
                "pool_containers",
                "Containers of each toolchain image held, by state.",
                None,
                MetricType::Gauge,
            )?;
            for t in &s.toolchains {
                for (state, n) in [
                    ("ready", t.ready),
                    ("busy", t.busy),
                    ("recycling", t.recycling),
                ] {
                    let labels = [("toolchain", t.toolchain.as_str()), ("state", state)];
                    ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX))
                        .encode(m.encode_family(&labels)?)?;
                }
            }
        }
        gauge(
            &mut e,
            "pool_containers_alive",
            "Containers alive, including those of evicted images being destroyed.",
            s.containers_alive as u64,
        )?;
        gauge(
            &mut e,
            "pool_images",
            "Toolchain images held.",
            s.images as u64,
        )?;
        counter(
            &mut e,
            "images_created",
            "Toolchain images built.",
            s.images_created,
        )?;
        counter(
            &mut e,
            "images_evicted",
            "Toolchain images evicted.",
            s.images_evicted,
        )?;
        counter(
            &mut e,
            "containers_created",
            "Containers created.",
            s.containers_created,
        )?;
        labelled_counters(
            &mut e,
            "container_resets",
            "Container resets after a build; a failed reset destroys the container.",
            "result",
            &[("ok", s.containers_reset), ("failed", s.reset_failures)],
        )?;
        labelled_counters(
            &mut e,
            "container_destroys",
            "Containers destroyed.",
            "result",
            &[
                (
                    "ok",
                    s.containers_destroyed.saturating_sub(s.destroy_failures),
                ),
                ("failed", s.destroy_failures),
            ],
        )?;
        gauge(
            &mut e,
            "healthy",
            "1 while the builder is healthy, 0 after repeated backend failures.",
            u64::from(s.healthy),
        )?;

        if let Some(v) = &self.0.server {
            gauge(
                &mut e,
                "toolchain_cache_bytes",
                "Bytes of toolchain archives in the toolchain cache.",
                v.toolchain_cache_bytes,
            )?;
            gauge(
                &mut e,
                "toolchain_cache_archives",
                "Toolchain archives in the toolchain cache.",
                v.toolchain_cache_archives,
            )?;
            gauge(
                &mut e,
                "uploads_in_flight",
                "Toolchain uploads being received.",
                v.uploads_in_flight,
            )?;
            gauge(
                &mut e,
                "uploads_staged_bytes",
                "Bytes reserved by the uploads being received.",
                v.uploads_staged_bytes,
            )?;
        }
        Ok(())
    }
}

/// `snapshot` in the Prometheus text format, every name prefixed `jailbuilder_`.
pub fn render(snapshot: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("jailbuilder");
    registry.register_collector(Box::new(SnapshotCollector(snapshot.clone())));
    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error would be a bug here.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        log::error!("rendering the metrics failed: {e}");
    }
    out
}

/// The periodic summary line for the interval from `prev` to `now`; None when no job
/// ended in it.
pub fn summary_line(prev: &EngineStats, now: &EngineStats) -> Option<String> {
    let (p, n) = (&prev.builds.outcomes, &now.builds.outcomes);
    let interval = n.total().saturating_sub(p.total());
    if interval == 0 {
        return None;
    }
    let ok = |o: &crate::engine::OutcomeCounts| o.get(JobOutcome::Ok);
    let failed = |o: &crate::engine::OutcomeCounts| o.total() - o.get(JobOutcome::Ok);
    let mut line = format!(
        "jobs: {} ok, {} failed in the last interval ({} ok, {} failed since start)",
        ok(n) - ok(p).min(ok(n)),
        failed(n).saturating_sub(failed(p)),
        ok(n),
        failed(n),
    );
    let total = now
        .builds
        .phase(Phase::Total)
        .since(prev.builds.phase(Phase::Total));
    if let Some(p50) = total.quantile_bound(0.5) {
        let _ = write!(line, "; p50 total <= {p50}s");
    }
    let ready: usize = now.toolchains.iter().map(|t| t.ready).sum();
    let _ = write!(
        line,
        "; pool: {ready} ready, {} busy, {} images; {}",
        now.containers_busy,
        now.images,
        if now.healthy { "healthy" } else { "UNHEALTHY" }
    );
    Some(line)
}

/// Logs [`summary_line`] at info every `interval`, from `stats`, on a thread of its own,
/// until `stats` returns None (the engine is gone).
pub fn spawn_summary(
    interval: Duration,
    stats: impl Fn() -> Option<EngineStats> + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("jb-metrics-summary".into())
        .spawn(move || {
            let Some(mut prev) = stats() else { return };
            loop {
                std::thread::sleep(interval);
                let Some(now) = stats() else { return };
                if let Some(line) = summary_line(&prev, &now) {
                    log::info!("{line}");
                }
                prev = now;
            }
        })
}

#[cfg(test)]
mod tests;
