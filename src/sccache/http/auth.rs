//! Job tokens: sccache's `JWTJobAuthorizer` (HS256, claims exactly `{exp: 0, job_id}`, the
//! key this server sends in its heartbeat), plus the lifetime and route rules the token
//! itself cannot carry.
//!
//! The stock scheduler mints a token that never expires and hands the same token to the
//! scheduler's own assign_job and to the client, so the rules are enforced here, per job
//! id, under the current key:
//!
//! - `assign_job` once per job id (the scheduler assigns an id once: ids are a random base
//!   plus a counter, and a client only ever receives a token after the scheduler's
//!   assign_job, so a second assign_job is a replay);
//! - `submit_toolchain` only while the job is assigned and not yet run;
//! - `run_job` only for an assigned job, and it consumes the job;
//! - an assignment not run within [`UNCLAIMED_JOB_TIMEOUT`] expires.
//!
//! The record of ids seen is bounded ([`MAX_RECORDED_JOBS`]). It is cleared by rotating the
//! key and the server nonce, when the key is older than [`KEY_LIFETIME`] or the record is
//! full, and only when no job is assigned or running: a stock scheduler that sees a new
//! nonce treats the server as restarted and drops every job it had on it
//! (sccache-dist `handle_heartbeat_server`), and tokens under the old key stop working.
//! A full record refuses new assignments until the server is idle and the key rotated.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use sccache::dist::{JobId, ServerNonce};
use serde::{Deserialize, Serialize};

use crate::sccache::UNCLAIMED_JOB_TIMEOUT;

/// sccache's `JWT_KEY_LENGTH`: 256 bits.
const JWT_KEY_LENGTH: usize = 256 / 8;
/// Job ids remembered per key: about 40 bytes each, so some 10 MiB at most.
pub const MAX_RECORDED_JOBS: usize = 1 << 18;
/// A key older than this is replaced as soon as the server is idle.
pub const KEY_LIFETIME: Duration = Duration::from_secs(3600);

/// sccache's private `JobJwt`: the claims of a job token.
#[derive(Clone, Debug, Serialize, Deserialize, Eq, PartialEq)]
#[serde(deny_unknown_fields)]
struct JobJwt {
    exp: u64,
    job_id: JobId,
}

/// Why a request's job token was refused (sent to the client in the 401 body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("no Authorization header")]
    NoToken,
    #[error("JWT decode failed: {0}")]
    BadToken(String),
    #[error("the token is for another job")]
    WrongJob,
    #[error("job {0} was already assigned")]
    AlreadyAssigned(JobId),
    #[error("job {0} is not assigned to this server")]
    NotAssigned(JobId),
    #[error("job {0} was already run")]
    AlreadyRun(JobId),
    #[error("job {0} was not run in time and has expired")]
    Expired(JobId),
    #[error("the server's job record is full; refusing assignments until it is idle")]
    RecordFull,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Assigned(Instant),
    Running,
    Done,
}

struct Keys {
    jwt_key: Vec<u8>,
    nonce: ServerNonce,
    created: Instant,
    /// Bumped by every rotation, so the heartbeat thread knows to send at once.
    generation: u64,
    jobs: HashMap<JobId, Phase>,
}

impl Keys {
    fn fresh(generation: u64) -> Keys {
        let mut jwt_key = vec![0; JWT_KEY_LENGTH];
        rand::rngs::OsRng.fill_bytes(&mut jwt_key);
        Keys {
            jwt_key,
            nonce: ServerNonce::new(),
            created: Instant::now(),
            generation,
            jobs: HashMap::new(),
        }
    }

    fn busy(&self, now: Instant, unclaimed: Duration) -> bool {
        self.jobs.values().any(|p| match p {
            Phase::Assigned(at) => now.duration_since(*at) < unclaimed,
            Phase::Running => true,
            Phase::Done => false,
        })
    }
}

/// What the heartbeat sends: the current key and nonce.
pub struct KeySnapshot {
    pub jwt_key: Vec<u8>,
    pub nonce: ServerNonce,
    pub generation: u64,
}

/// The job-token authority of one server process.
pub struct JobAuth {
    keys: Mutex<Keys>,
    rotated: Condvar,
    lifetime: Duration,
    capacity: usize,
    unclaimed: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for JobAuth {
    fn default() -> Self {
        Self::new(KEY_LIFETIME, MAX_RECORDED_JOBS, UNCLAIMED_JOB_TIMEOUT)
    }
}

impl JobAuth {
    pub fn new(lifetime: Duration, capacity: usize, unclaimed: Duration) -> JobAuth {
        JobAuth {
            keys: Mutex::new(Keys::fresh(0)),
            rotated: Condvar::new(),
            lifetime,
            capacity: capacity.max(1),
            unclaimed,
        }
    }

    pub fn snapshot(&self) -> KeySnapshot {
        let k = lock(&self.keys);
        KeySnapshot {
            jwt_key: k.jwt_key.clone(),
            nonce: k.nonce.clone(),
            generation: k.generation,
        }
    }

    /// Waits up to `timeout` for a rotation past `generation`.
    pub fn wait_rotation(&self, generation: u64, timeout: Duration) {
        let k = lock(&self.keys);
        let _ = self
            .rotated
            .wait_timeout_while(k, timeout, |k| k.generation == generation)
            .unwrap_or_else(PoisonError::into_inner);
    }

    /// A token for `job` under the current key, as the scheduler mints it (for tests).
    pub fn mint(&self, job: JobId) -> String {
        let key = lock(&self.keys).jwt_key.clone();
        let claims = JobJwt {
            exp: 0,
            job_id: job,
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&key),
        )
        .unwrap_or_default()
    }

    /// sccache's `verify_token`: HS256, no expiry or not-before check, claims exactly
    /// `{exp: 0, job_id}`.
    fn verify(key: &[u8], job: JobId, token: Option<&str>) -> Result<(), Denied> {
        let token = token.ok_or(Denied::NoToken)?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let data =
            jsonwebtoken::decode::<JobJwt>(token, &DecodingKey::from_secret(key), &validation)
                .map_err(|e| Denied::BadToken(e.to_string()))?;
        if data.claims
            != (JobJwt {
                exp: 0,
                job_id: job,
            })
        {
            return Err(Denied::WrongJob);
        }
        Ok(())
    }

    /// Rotates if due (old key or full record) and idle; true if it did.
    fn rotate_if_due(&self, k: &mut Keys, now: Instant) -> bool {
        let due = now.duration_since(k.created) >= self.lifetime || k.jobs.len() >= self.capacity;
        if !due || k.busy(now, self.unclaimed) {
            return false;
        }
        let generation = k.generation + 1;
        *k = Keys::fresh(generation);
        log::info!(
            "job-token key and server nonce rotated (the scheduler forgets this server's \
             past jobs)"
        );
        self.rotated.notify_all();
        true
    }

    /// Called by the heartbeat thread every round.
    pub fn tick(&self) {
        let mut k = lock(&self.keys);
        self.rotate_if_due(&mut k, Instant::now());
    }

    /// assign_job: a valid token for a job id never seen under this key.
    pub fn begin_assign(&self, job: JobId, token: Option<&str>) -> Result<(), Denied> {
        let mut k = lock(&self.keys);
        Self::verify(&k.jwt_key, job, token)?;
        if k.jobs.contains_key(&job) {
            return Err(Denied::AlreadyAssigned(job));
        }
        if k.jobs.len() >= self.capacity {
            // The token is under the current key, which a rotation now would invalidate.
            return Err(Denied::RecordFull);
        }
        k.jobs.insert(job, Phase::Assigned(Instant::now()));
        Ok(())
    }

    /// assign_job failed after the token was accepted: the id stays used.
    pub fn assign_failed(&self, job: JobId) {
        let mut k = lock(&self.keys);
        if let Some(p) = k.jobs.get_mut(&job) {
            *p = Phase::Done;
        }
        self.rotate_if_due(&mut k, Instant::now());
    }

    fn check_assigned(&self, k: &Keys, job: JobId, token: Option<&str>) -> Result<(), Denied> {
        Self::verify(&k.jwt_key, job, token)?;
        match k.jobs.get(&job) {
            None => Err(Denied::NotAssigned(job)),
            Some(Phase::Running | Phase::Done) => Err(Denied::AlreadyRun(job)),
            Some(Phase::Assigned(at)) if at.elapsed() >= self.unclaimed => {
                Err(Denied::Expired(job))
            }
            Some(Phase::Assigned(_)) => Ok(()),
        }
    }

    /// submit_toolchain: the job is assigned and not yet run.
    pub fn check_submit(&self, job: JobId, token: Option<&str>) -> Result<(), Denied> {
        let k = lock(&self.keys);
        self.check_assigned(&k, job, token)
    }

    /// run_job: the job is assigned and not yet run; it is consumed (running from now on).
    pub fn begin_run(&self, job: JobId, token: Option<&str>) -> Result<(), Denied> {
        let mut k = lock(&self.keys);
        self.check_assigned(&k, job, token)?;
        k.jobs.insert(job, Phase::Running);
        Ok(())
    }

    /// run_job ended (however).
    pub fn finish(&self, job: JobId) {
        let mut k = lock(&self.keys);
        if let Some(p) = k.jobs.get_mut(&job) {
            *p = Phase::Done;
        }
        self.rotate_if_due(&mut k, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> JobAuth {
        JobAuth::new(KEY_LIFETIME, 4, UNCLAIMED_JOB_TIMEOUT)
    }

    #[test]
    fn token_rules() {
        let a = auth();
        let j = JobId(7);
        let t = a.mint(j);
        // Not yet assigned: nothing but assign_job.
        assert_eq!(a.check_submit(j, Some(&t)), Err(Denied::NotAssigned(j)));
        assert_eq!(a.begin_run(j, Some(&t)), Err(Denied::NotAssigned(j)));
        assert_eq!(a.begin_assign(j, None), Err(Denied::NoToken));
        assert!(matches!(
            a.begin_assign(j, Some("x.y.z")),
            Err(Denied::BadToken(_))
        ));
        assert_eq!(a.begin_assign(JobId(8), Some(&t)), Err(Denied::WrongJob));
        a.begin_assign(j, Some(&t)).unwrap();
        // Replayed assign_job.
        assert_eq!(a.begin_assign(j, Some(&t)), Err(Denied::AlreadyAssigned(j)));
        a.check_submit(j, Some(&t)).unwrap();
        a.check_submit(j, Some(&t)).unwrap();
        a.begin_run(j, Some(&t)).unwrap();
        // Running: no second run, no upload, no assign.
        assert_eq!(a.begin_run(j, Some(&t)), Err(Denied::AlreadyRun(j)));
        assert_eq!(a.check_submit(j, Some(&t)), Err(Denied::AlreadyRun(j)));
        a.finish(j);
        assert_eq!(a.begin_run(j, Some(&t)), Err(Denied::AlreadyRun(j)));
        assert_eq!(a.begin_assign(j, Some(&t)), Err(Denied::AlreadyAssigned(j)));
        // A token signed with another key.
        let other = auth();
        assert!(matches!(
            a.begin_assign(JobId(9), Some(&other.mint(JobId(9)))),
            Err(Denied::BadToken(_))
        ));
    }

    #[test]
    fn claims_must_be_exactly_exp_0_and_job_id() {
        let a = auth();
        let key = lock(&a.keys).jwt_key.clone();
        #[derive(Serialize)]
        struct Other {
            exp: u64,
            job_id: JobId,
        }
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Other {
                exp: 1,
                job_id: JobId(3),
            },
            &EncodingKey::from_secret(&key),
        )
        .unwrap();
        assert_eq!(a.begin_assign(JobId(3), Some(&t)), Err(Denied::WrongJob));
    }

    #[test]
    fn assignments_expire() {
        let a = JobAuth::new(KEY_LIFETIME, 4, Duration::ZERO);
        let j = JobId(1);
        let t = a.mint(j);
        a.begin_assign(j, Some(&t)).unwrap();
        assert_eq!(a.begin_run(j, Some(&t)), Err(Denied::Expired(j)));
        assert_eq!(a.check_submit(j, Some(&t)), Err(Denied::Expired(j)));
    }

    #[test]
    fn full_record_rotates_only_when_idle() {
        let a = auth();
        let gen0 = a.snapshot().generation;
        let ids: Vec<JobId> = (0..4).map(JobId).collect();
        for &j in &ids {
            a.begin_assign(j, Some(&a.mint(j))).unwrap();
        }
        // Full while jobs are assigned: refused, no rotation.
        assert_eq!(
            a.begin_assign(JobId(10), Some(&a.mint(JobId(10)))),
            Err(Denied::RecordFull)
        );
        a.tick();
        assert_eq!(a.snapshot().generation, gen0);
        let tokens: Vec<String> = ids.iter().map(|&j| a.mint(j)).collect();
        for (j, t) in ids.iter().zip(&tokens).take(3) {
            a.begin_run(*j, Some(t)).unwrap();
            a.finish(*j);
            assert_eq!(a.snapshot().generation, gen0, "still one job assigned");
        }
        a.begin_run(ids[3], Some(&tokens[3])).unwrap();
        assert_eq!(a.snapshot().generation, gen0, "one job running");
        a.finish(ids[3]);
        // Idle: rotated; the old tokens are worthless, the record is empty.
        let s = a.snapshot();
        assert_eq!(s.generation, gen0 + 1);
        assert!(matches!(
            a.begin_assign(ids[0], Some(&tokens[0])),
            Err(Denied::BadToken(_))
        ));
        a.begin_assign(JobId(10), Some(&a.mint(JobId(10)))).unwrap();
    }

    #[test]
    fn old_key_rotates_when_idle() {
        let a = JobAuth::new(Duration::ZERO, 100, UNCLAIMED_JOB_TIMEOUT);
        let g = a.snapshot().generation;
        let t = a.mint(JobId(1));
        a.begin_assign(JobId(1), Some(&t)).unwrap();
        a.tick();
        assert_eq!(a.snapshot().generation, g, "a job is assigned");
        a.begin_run(JobId(1), Some(&t)).unwrap();
        a.finish(JobId(1));
        assert_eq!(a.snapshot().generation, g + 1);
        assert_ne!(lock(&a.keys).jwt_key, Vec::<u8>::new());
    }
}
