//! The build server's requests to the scheduler: the heartbeat (registration, key and
//! certificate) and job-state updates, as sccache 0.19's `dist::http::Server` sends them.

use std::sync::Arc;
use std::time::Duration;

use sccache::dist::{HeartbeatServerResult, JobId, JobState, ServerOutgoing, UpdateJobStateResult};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::auth::JobAuth;
use super::wire::{self, HeartbeatServerHttpRequest};

/// sccache's `HEARTBEAT_INTERVAL` and `HEARTBEAT_ERROR_INTERVAL`.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
pub const HEARTBEAT_ERROR_INTERVAL: Duration = Duration::from_secs(10);
/// A scheduler's reply is a few bytes; more is refused.
const MAX_SCHEDULER_REPLY: u64 = 1 << 20;

/// A bincode-over-HTTP client of the scheduler, with the server's bearer token.
pub struct SchedulerClient {
    client: reqwest::blocking::Client,
    url: reqwest::Url,
    token: String,
}

impl SchedulerClient {
    pub fn new(url: reqwest::Url, token: String) -> Result<Self, reqwest::Error> {
        Ok(SchedulerClient {
            client: sccache::util::new_reqwest_blocking_client()?,
            url,
            token,
        })
    }

    /// POSTs `body` (bincode) to `path`, decodes the bincode reply.
    fn post<T: Serialize, R: DeserializeOwned>(&self, path: &str, body: &T) -> Result<R, String> {
        let url = self
            .url
            .join(path)
            .map_err(|e| format!("scheduler URL {}{path}: {e}", self.url))?;
        let bytes = wire::encode(body).map_err(|e| format!("encoding the request: {e}"))?;
        let mut res = self
            .client
            .post(url.clone())
            .bearer_auth(&self.token)
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", bytes.len())
            // sccache's bincode_req: no pipelining (tiny_http issue #151).
            .header("Connection", "close")
            .body(bytes)
            .send()
            .map_err(|e| format!("POST {url}: {e}"))?;
        let status = res.status();
        let body = wire::read_capped(&mut res, MAX_SCHEDULER_REPLY)
            .map_err(|e| format!("POST {url}: reply: {e}"))?;
        if !status.is_success() {
            return Err(format!(
                "POST {url}: error {}: {}",
                status.as_u16(),
                String::from_utf8_lossy(&body)
            ));
        }
        wire::decode(&body).map_err(|e| format!("POST {url}: reply: {e}"))
    }
}

impl ServerOutgoing for SchedulerClient {
    fn do_update_job_state(
        &self,
        job_id: JobId,
        state: JobState,
    ) -> sccache::errors::Result<UpdateJobStateResult> {
        self.post(&format!("/api/v1/scheduler/job_state/{job_id}"), &state)
            .map_err(|e| anyhow::anyhow!("POST to scheduler job_state failed: {e}"))
    }
}

/// The core count to announce so that a stock scheduler never assigns more jobs than the
/// pool has containers. sccache-dist's scheduler (main.rs `load_weight`) assigns a server
/// another job while `jobs < cores + 1 + cores / 8`, so it holds at most
/// `cores + 1 + cores / 8` jobs at once. The answer is the host's cores, lowered to the
/// largest `c` with `c + 1 + c / 8 <= max_containers`, and at least 1 (the scheduler refuses
/// 0; with one container a second job then waits for it). The default `max_containers`
/// (2 x cores + 2) leaves the host's count unchanged.
pub fn advertised_cpus(host_cores: usize, max_containers: usize) -> usize {
    let held = |c: usize| c + 1 + c / 8;
    let mut c = host_cores.max(1);
    while c > 1 && held(c) > max_containers {
        c -= 1;
    }
    c
}

/// Sends heartbeats forever: every [`HEARTBEAT_INTERVAL`], after an error every
/// [`HEARTBEAT_ERROR_INTERVAL`], and at once after a key rotation.
pub fn run(
    client: Arc<SchedulerClient>,
    auth: Arc<JobAuth>,
    num_cpus: usize,
    cert_digest: Vec<u8>,
    cert_pem: Vec<u8>,
) {
    loop {
        auth.tick();
        let keys = auth.snapshot();
        let req = HeartbeatServerHttpRequest {
            jwt_key: keys.jwt_key,
            num_cpus,
            server_nonce: keys.nonce,
            cert_digest: cert_digest.clone(),
            cert_pem: cert_pem.clone(),
        };
        let wait = match client
            .post::<_, HeartbeatServerResult>("/api/v1/scheduler/heartbeat_server", &req)
        {
            Ok(HeartbeatServerResult { is_new }) => {
                if is_new {
                    // The harness of the tests and operators' scripts wait for sccache's line.
                    log::info!("Server connected to scheduler");
                }
                HEARTBEAT_INTERVAL
            }
            Err(e) => {
                log::error!("Failed to send heartbeat to server: {e}");
                HEARTBEAT_ERROR_INTERVAL
            }
        };
        auth.wait_rotation(keys.generation, wait);
    }
}

#[cfg(test)]
mod capacity_tests {
    use super::advertised_cpus;

    #[test]
    fn the_scheduler_is_never_told_of_more_slots_than_the_pool_has() {
        // Defaults (2 x cores + 2 containers): the host's count.
        for cores in [1, 2, 8, 64] {
            assert_eq!(advertised_cpus(cores, 2 * cores + 2), cores);
        }
        // A small pool: the scheduler's allotment c + 1 + c / 8 fits it.
        assert_eq!(advertised_cpus(8, 4), 3); // 3 + 1 + 0 = 4
        assert_eq!(advertised_cpus(64, 20), 17); // 17 + 1 + 2 = 20
        assert_eq!(advertised_cpus(64, 19), 16); // 16 + 1 + 2 = 19
        for (cores, pool) in [(8, 4), (64, 20), (64, 19), (32, 10), (2, 3)] {
            let c = advertised_cpus(cores, pool);
            assert!(c + 1 + c / 8 <= pool, "{cores} cores, pool {pool}: {c}");
        }
        // Never 0 (the scheduler refuses it), even for a pool of one or none.
        assert_eq!(advertised_cpus(8, 1), 1);
        assert_eq!(advertised_cpus(0, 0), 1);
    }
}
