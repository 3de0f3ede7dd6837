//! Images and the container pool, with the background recycler.
//!
//! One mutex guards the bookkeeping (never held across a backend call); a condvar wakes
//! builds waiting for an image being built or a container coming back (no busy-waiting).
//! Images are built single-flight per toolchain: concurrent builds of the same toolchain
//! wait for the first, other toolchains proceed. A container handed back is reset by the
//! recycler threads, off the build's critical path; one that fails to reset is destroyed.
//!
//! Every container holds a slot number, unique among live containers, taken when its
//! creation is reserved (with the `alive` count, so `alive` slots are in use and one is
//! always free below the bound) and given back only after it is destroyed. Its builds run
//! as the slot's identity ([`EngineConfig::build_user`]); it keeps the slot across resets,
//! which kill whatever its uid left running (the pid namespace dies with the compile on
//! Linux; FreeBSD's reset removes the jail).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::build::ToolchainSource;
use super::job_queue::JobQueue;
use super::{BuildError, EngineConfig, EngineStats, Health, ToolchainPoolStats};
use crate::backend::{Backend, ExistingImage, ToolchainId};
use crate::exec::CancelToken;

/// How long shutdown waits for cancelled builds to hand their containers back.
const KILL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The slot of a container created past the slot range (a bookkeeping bug): no build
/// identity maps to it ([`EngineConfig::build_user`] is None past `u32::MAX`).
pub(crate) const NO_SLOT: u32 = u32::MAX;

enum ImageState<B: Backend> {
    Building,
    Ready(Arc<B::Image>),
}

/// A container and the slot its builds' identity comes from.
pub(crate) struct Held<C> {
    pub(crate) container: C,
    pub(crate) slot: u32,
}

struct Slot<B: Backend> {
    image: ImageState<B>,
    ready: Vec<Held<B::Container>>,
    /// Containers of this image in any state: ready, lent, queued, being created.
    alive: usize,
    /// Builds between `image()` and `release()`: the image must not be evicted under them.
    users: usize,
    /// Containers of this image lent to builds now.
    lent: usize,
    last_used: u64,
}

struct State<B: Backend> {
    images: HashMap<ToolchainId, Slot<B>>,
    alive: usize,
    /// Container slots not held by a live (or reserved) container.
    free_slots: BTreeSet<u32>,
    lent: usize,
    queued: usize,
    clock: u64,
    shutting_down: bool,
}

enum Job<B: Backend> {
    Reset(ToolchainId, Held<B::Container>),
    /// Creates a container for the image; its slot is already reserved.
    Create(ToolchainId, Arc<B::Image>, u32),
    DestroyImage(ToolchainId, Arc<B::Image>, Vec<Held<B::Container>>),
}

#[derive(Default)]
struct Counters {
    images_created: AtomicU64,
    images_evicted: AtomicU64,
    images_adopted: AtomicU64,
    containers_created: AtomicU64,
    containers_reset: AtomicU64,
    containers_destroyed: AtomicU64,
    reset_failures: AtomicU64,
    destroy_failures: AtomicU64,
}

pub(crate) struct Pool<B: Backend> {
    pub(crate) backend: B,
    pub(crate) config: EngineConfig,
    pub(crate) health: Health,
    state: Mutex<State<B>>,
    changed: Condvar,
    jobs: JobQueue<Job<B>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    counters: Counters,
    /// Cancel tokens of the builds running now, so shutdown can stop those that outlive
    /// its grace period.
    running: Mutex<Vec<(u64, Arc<CancelToken>)>>,
    next_build: AtomicU64,
}

fn backend_error<B: Backend>(backend: &B, step: &'static str, e: B::Error) -> BuildError {
    BuildError::Backend {
        step,
        backend: backend.kind(),
        source: Box::new(e),
    }
}

impl<B: Backend> Pool<B> {
    pub(crate) fn start(backend: B, config: EngineConfig) -> Arc<Self> {
        let pool = Arc::new(Pool {
            backend,
            health: Health {
                consecutive_failures: AtomicU32::new(0),
                builds_ok: AtomicU64::new(0),
                builds_failed: AtomicU64::new(0),
                builds: Default::default(),
            },
            state: Mutex::new(State {
                images: HashMap::new(),
                alive: 0,
                free_slots: (0..config.slots()).collect(),
                lent: 0,
                queued: 0,
                clock: 0,
                shutting_down: false,
            }),
            changed: Condvar::new(),
            jobs: JobQueue::new(),
            threads: Mutex::new(Vec::new()),
            counters: Counters::default(),
            running: Mutex::new(Vec::new()),
            next_build: AtomicU64::new(0),
            config,
        });
        let mut threads = Vec::new();
        for i in 0..pool.config.recycler_threads.max(1) {
            let pool = Arc::clone(&pool);
            let spawned = std::thread::Builder::new()
                .name(format!("jb-recycler-{i}"))
                .spawn(move || {
                    while let Some(job) = pool.jobs.pop() {
                        pool.run_job(job);
                        pool.lock().queued -= 1;
                        pool.changed.notify_all();
                    }
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => log::error!("cannot start recycler thread: {e}"),
            }
        }
        *pool.threads.lock().unwrap_or_else(|p| p.into_inner()) = threads;
        pool
    }

    /// Takes over the images an earlier instance kept (start-up, before any build): the
    /// `max_images` most recently used become ready images, in their order of last use;
    /// the rest are destroyed (all of them without `keep_images`).
    pub(crate) fn adopt(&self, mut images: Vec<ExistingImage<B::Image>>) {
        images.sort_by_key(|i| std::cmp::Reverse(i.last_used));
        let keep = if self.config.keep_images {
            self.config.max_images
        } else {
            0
        };
        let doomed = images.split_off(keep.min(images.len()));
        for old in doomed {
            let why = if self.config.keep_images {
                "beyond max_images"
            } else {
                "keep_images is off"
            };
            log::info!("destroying kept toolchain image {} ({why})", old.id);
            if let Err(e) = self.backend.destroy_image(old.image) {
                self.record_failure();
                log::error!("destroying kept toolchain image {} failed: {e}", old.id);
            }
        }
        let mut st = self.lock();
        for old in images.into_iter().rev() {
            st.clock += 1;
            log::info!("adopted toolchain image {} kept by an earlier run", old.id);
            let slot = Slot {
                image: ImageState::Ready(Arc::new(old.image)),
                ready: Vec::new(),
                alive: 0,
                lent: 0,
                users: 0,
                last_used: st.clock,
            };
            st.images.insert(old.id, slot);
            self.counters.images_adopted.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<B>> {
        // A panic elsewhere must not take the server down with a poisoned lock: the
        // bookkeeping is updated in single statements and stays consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves room for one more container: counts it alive and takes the lowest free
    /// slot. The callers keep `alive` within `max(1, max_containers)`, the number of slots,
    /// so one is free. Should that ever fail, the container gets `NO_SLOT`, which has no
    /// identity: its builds fail rather than share another container's uid.
    fn reserve(st: &mut State<B>) -> u32 {
        st.alive += 1;
        st.free_slots.pop_first().unwrap_or_else(|| {
            log::error!("no free container slot with {} alive", st.alive);
            NO_SLOT
        })
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State<B>>) -> MutexGuard<'a, State<B>> {
        self.changed.wait(guard).unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a job for the recycler; hands it back when there is none (shut down), for the
    /// caller to run itself.
    fn send(&self, st: &mut State<B>, job: Job<B>) -> Option<Job<B>> {
        match self.jobs.push(job) {
            Ok(()) => {
                st.queued += 1;
                None
            }
            Err(job) => Some(job),
        }
    }

    fn dispatch(&self, jobs: Vec<Job<B>>) {
        for job in jobs {
            let left = {
                let mut st = self.lock();
                self.send(&mut st, job)
            };
            if let Some(job) = left {
                self.run_job(job);
            }
        }
    }

    pub(crate) fn record_failure(&self) {
        self.health
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_build(&self, ok: bool) {
        if ok {
            self.health.consecutive_failures.store(0, Ordering::Relaxed);
            self.health.builds_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.health.builds_failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The image for `id`, built from `source` if no one has built it yet. Single-flight:
    /// a second caller waits for the first; other toolchains are not held up.
    pub(crate) fn image(
        &self,
        id: &ToolchainId,
        source: &dyn ToolchainSource,
    ) -> Result<Arc<B::Image>, BuildError> {
        let mut st = self.lock();
        loop {
            if st.shutting_down {
                return Err(BuildError::ShuttingDown);
            }
            st.clock += 1;
            let clock = st.clock;
            match st.images.get_mut(id) {
                Some(slot) => match &slot.image {
                    ImageState::Ready(image) => {
                        slot.users += 1;
                        slot.last_used = clock;
                        return Ok(Arc::clone(image));
                    }
                    ImageState::Building => st = self.wait(st),
                },
                None => break,
            }
        }
        let victims = self.evict_images(&mut st, self.config.max_images.saturating_sub(1));
        let clock = st.clock;
        st.images.insert(
            id.clone(),
            Slot {
                image: ImageState::Building,
                ready: Vec::new(),
                alive: 0,
                users: 1,
                lent: 0,
                last_used: clock,
            },
        );
        drop(st);
        self.dispatch(victims);

        // If creation panics, waiters must not wait forever on a Building slot.
        struct Unbuilt<'a, B: Backend>(&'a Pool<B>, &'a ToolchainId, bool);
        impl<B: Backend> Drop for Unbuilt<'_, B> {
            fn drop(&mut self) {
                if !self.2 {
                    self.0.lock().images.remove(self.1);
                    self.0.changed.notify_all();
                }
            }
        }
        let mut guard = Unbuilt(self, id, false);
        let started = Instant::now();
        let created = match source.open() {
            Err(e) => Err(BuildError::ToolchainOpen {
                id: id.clone(),
                source: e,
            }),
            Ok(mut reader) => self.backend.create_image(id, &mut *reader).map_err(|e| {
                if self.backend.is_job_error(&e) {
                    BuildError::Toolchain {
                        id: id.clone(),
                        source: Box::new(e),
                    }
                } else {
                    self.record_failure();
                    backend_error(&self.backend, "creating the toolchain image", e)
                }
            }),
        };
        let image = Arc::new(created?);
        guard.2 = true;
        self.counters.images_created.fetch_add(1, Ordering::Relaxed);
        log::info!("toolchain image {id} ready in {:?}", started.elapsed());

        let mut st = self.lock();
        let warm = self.prewarm_count(&st, 0, 0);
        let mut jobs = Vec::new();
        if let Some(slot) = st.images.get_mut(id) {
            slot.image = ImageState::Ready(Arc::clone(&image));
            let warm = warm.min(self.config.max_containers_per_toolchain);
            slot.alive += warm;
            for _ in 0..warm {
                let n = Self::reserve(&mut st);
                jobs.push(Job::Create(id.clone(), Arc::clone(&image), n));
            }
        }
        drop(st);
        self.changed.notify_all();
        self.dispatch(jobs);
        Ok(image)
    }

    /// How many containers to create in the background for a toolchain with `ready`
    /// ready and `alive` alive containers, within the bounds.
    fn prewarm_count(&self, st: &State<B>, ready: usize, alive: usize) -> usize {
        let want = self.config.warm_per_toolchain.saturating_sub(ready);
        let room_tc = self
            .config
            .max_containers_per_toolchain
            .saturating_sub(alive);
        let room = self.config.max_containers.saturating_sub(st.alive);
        if st.shutting_down {
            0
        } else {
            want.min(room_tc).min(room)
        }
    }

    /// Removes least-recently-used idle images until at most `keep` remain; returns the
    /// jobs that destroy them (containers first: a snapshot with clones cannot go).
    fn evict_images(&self, st: &mut State<B>, keep: usize) -> Vec<Job<B>> {
        let mut jobs = Vec::new();
        while st.images.len() > keep {
            let victim = st
                .images
                .iter()
                .filter(|(_, s)| {
                    s.users == 0
                        && s.alive == s.ready.len()
                        && matches!(s.image, ImageState::Ready(_))
                })
                .min_by_key(|(_, s)| s.last_used)
                .map(|(id, _)| id.clone());
            let Some(id) = victim else {
                log::warn!(
                    "{} images exceed max_images {keep}, none idle to evict",
                    st.images.len()
                );
                break;
            };
            // Its containers stay counted as alive until the recycler has destroyed them.
            let slot = st.images.remove(&id).expect("victim is in the map");
            if let ImageState::Ready(image) = slot.image {
                log::info!("evicting idle toolchain image {id}");
                self.counters.images_evicted.fetch_add(1, Ordering::Relaxed);
                jobs.push(Job::DestroyImage(id, image, slot.ready));
            }
        }
        jobs
    }

    /// A ready container of image `id`: from the warm pool, else created now within the
    /// bounds, else (at the bound) after evicting another toolchain's idle container or
    /// waiting for one to come back.
    pub(crate) fn acquire(
        &self,
        id: &ToolchainId,
        image: &Arc<B::Image>,
    ) -> Result<Held<B::Container>, BuildError> {
        let max = self.config.max_containers.max(1);
        let max_tc = self.config.max_containers_per_toolchain.max(1);
        let mut st = self.lock();
        let mut waiting: Option<Instant> = None;
        let waited = |since: Option<Instant>| {
            if let Some(t) = since {
                log::debug!(
                    "toolchain {id}: got a container after waiting {:.1} ms",
                    t.elapsed().as_secs_f64() * 1e3
                );
            }
        };
        loop {
            if st.shutting_down {
                return Err(BuildError::ShuttingDown);
            }
            let total_alive = st.alive;
            let Some(slot) = st.images.get_mut(id) else {
                return Err(BuildError::ShuttingDown);
            };
            if let Some(container) = slot.ready.pop() {
                let (ready, alive) = (slot.ready.len(), slot.alive);
                slot.lent += 1;
                st.lent += 1;
                let warm = self.prewarm_count(&st, ready, alive).min(1);
                let mut jobs = Vec::new();
                if warm > 0 {
                    let n = Self::reserve(&mut st);
                    if let Some(slot) = st.images.get_mut(id) {
                        slot.alive += 1;
                    }
                    jobs.push(Job::Create(id.clone(), Arc::clone(image), n));
                }
                drop(st);
                self.dispatch(jobs);
                waited(waiting);
                return Ok(container);
            }
            if total_alive < max && slot.alive < max_tc {
                slot.alive += 1;
                slot.lent += 1;
                let n = Self::reserve(&mut st);
                st.lent += 1;
                drop(st);
                waited(waiting);
                return match self.backend.create_container(image) {
                    Ok(c) => {
                        self.counters
                            .containers_created
                            .fetch_add(1, Ordering::Relaxed);
                        Ok(Held {
                            container: c,
                            slot: n,
                        })
                    }
                    Err(e) => {
                        self.forget_container(Some(id), true, n);
                        self.record_failure();
                        Err(backend_error(&self.backend, "creating a container", e))
                    }
                };
            }
            if total_alive >= max {
                if let Some((victim_id, victim)) = self.steal_idle_container(&mut st, id) {
                    drop(st);
                    let n = victim.slot;
                    self.destroy(victim);
                    self.forget_container(Some(&victim_id), false, n);
                    st = self.lock();
                    continue;
                }
            }
            if waiting.is_none() {
                waiting = Some(Instant::now());
                log_wait(id, total_alive, max, max_tc);
            }
            st = self.wait(st);
        }
    }

    /// Takes a ready container of the least recently used *other* toolchain, to make room.
    /// It stays counted as alive until it is destroyed, so the bound holds throughout.
    fn steal_idle_container(
        &self,
        st: &mut State<B>,
        not: &ToolchainId,
    ) -> Option<(ToolchainId, Held<B::Container>)> {
        let id = st
            .images
            .iter()
            .filter(|(k, s)| *k != not && !s.ready.is_empty())
            .min_by_key(|(_, s)| s.last_used)
            .map(|(k, _)| k.clone())?;
        let c = st.images.get_mut(&id)?.ready.pop()?;
        Some((id, c))
    }

    /// Bookkeeping for a container that no longer exists (or was never created), which
    /// held container slot `n`; `id` is None when its image's slot is already gone
    /// (evicted, shut down).
    fn forget_container(&self, id: Option<&ToolchainId>, was_lent: bool, n: u32) {
        let mut st = self.lock();
        st.alive = st.alive.saturating_sub(1);
        if n < self.config.slots() {
            st.free_slots.insert(n);
        }
        if was_lent {
            st.lent = st.lent.saturating_sub(1);
        }
        if let Some(slot) = id.and_then(|id| st.images.get_mut(id)) {
            slot.alive = slot.alive.saturating_sub(1);
            if was_lent {
                slot.lent = slot.lent.saturating_sub(1);
            }
        }
        drop(st);
        self.changed.notify_all();
    }

    /// Hands a container back after a build: the recycler resets it.
    pub(crate) fn release(&self, id: &ToolchainId, container: Held<B::Container>) {
        let left = {
            let mut st = self.lock();
            st.lent -= 1;
            if let Some(slot) = st.images.get_mut(id) {
                slot.lent = slot.lent.saturating_sub(1);
            }
            self.send(&mut st, Job::Reset(id.clone(), container))
        };
        if let Some(job) = left {
            self.run_job(job);
        }
        self.changed.notify_all();
    }

    /// The build is done with the image (pairs with a successful `image()`).
    pub(crate) fn done_with_image(&self, id: &ToolchainId) {
        let mut st = self.lock();
        if let Some(slot) = st.images.get_mut(id) {
            slot.users = slot.users.saturating_sub(1);
        }
    }

    fn destroy(&self, c: Held<B::Container>) {
        if let Err(e) = self.backend.destroy_container(c.container) {
            self.record_failure();
            self.counters
                .destroy_failures
                .fetch_add(1, Ordering::Relaxed);
            log::error!("destroying a container failed: {e}");
        }
        self.counters
            .containers_destroyed
            .fetch_add(1, Ordering::Relaxed);
    }

    fn run_job(&self, job: Job<B>) {
        match job {
            Job::Reset(id, mut c) => {
                let result = self.backend.reset(&mut c.container);
                let mut st = self.lock();
                let keep = result.is_ok() && !st.shutting_down;
                match (keep, st.images.get_mut(&id)) {
                    (true, Some(slot)) => {
                        slot.ready.push(c);
                        drop(st);
                        self.counters
                            .containers_reset
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        drop(st);
                        if let Err(e) = result {
                            // Never reuse a container whose reset failed.
                            log::warn!("container reset failed, destroying it: {e}");
                            self.counters.reset_failures.fetch_add(1, Ordering::Relaxed);
                            self.record_failure();
                        }
                        let n = c.slot;
                        self.destroy(c);
                        self.forget_container(Some(&id), false, n);
                    }
                }
            }
            Job::Create(id, image, n) => match self.backend.create_container(&image) {
                Ok(c) => {
                    self.counters
                        .containers_created
                        .fetch_add(1, Ordering::Relaxed);
                    let c = Held {
                        container: c,
                        slot: n,
                    };
                    let mut st = self.lock();
                    let keep = !st.shutting_down;
                    match (keep, st.images.get_mut(&id)) {
                        (true, Some(slot)) => slot.ready.push(c),
                        _ => {
                            drop(st);
                            self.destroy(c);
                            self.forget_container(Some(&id), false, n);
                        }
                    }
                }
                Err(e) => {
                    log::warn!("pre-warming a container for {id} failed: {e}");
                    self.record_failure();
                    self.forget_container(Some(&id), false, n);
                }
            },
            Job::DestroyImage(id, image, containers) => {
                for c in containers {
                    let n = c.slot;
                    self.destroy(c);
                    self.forget_container(None, false, n);
                }
                match Arc::try_unwrap(image) {
                    Ok(image) => {
                        if let Err(e) = self.backend.destroy_image(image) {
                            self.record_failure();
                            log::error!("destroying toolchain image {id} failed: {e}");
                        }
                    }
                    Err(_) => log::error!("toolchain image {id} still referenced; not destroyed"),
                }
            }
        }
    }

    pub(crate) fn wait_idle(&self) {
        let mut st = self.lock();
        while st.queued > 0 {
            st = self.wait(st);
        }
    }

    /// Records a running build's cancel token; the id goes back to `finished`.
    pub(crate) fn started(&self, token: &Arc<CancelToken>) -> u64 {
        let id = self.next_build.fetch_add(1, Ordering::Relaxed);
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, Arc::clone(token)));
        id
    }

    pub(crate) fn finished(&self, id: u64) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(i, _)| *i != id);
    }

    pub(crate) fn shutdown(&self) {
        let deadline = Instant::now() + self.config.shutdown_grace;
        let mut st = self.lock();
        if st.shutting_down && st.images.is_empty() {
            return;
        }
        st.shutting_down = true;
        self.changed.notify_all();
        while st.lent > 0 || st.queued > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                if st.lent > 0 {
                    log::warn!(
                        "shutdown: killing {} builds still running after the grace period",
                        st.lent
                    );
                    drop(st);
                    self.cancel_running();
                    st = self.lock();
                    // Cancelled builds return at once; their containers then go back.
                    let kill_deadline = Instant::now() + KILL_WAIT;
                    while st.lent > 0 && Instant::now() < kill_deadline {
                        let left = kill_deadline.saturating_duration_since(Instant::now());
                        st = self
                            .changed
                            .wait_timeout(st, left)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                }
                break;
            }
            st = self
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let slots: Vec<(ToolchainId, Slot<B>)> = st.images.drain().collect();
        drop(st);
        for (id, slot) in slots {
            if let ImageState::Ready(image) = slot.image {
                if self.config.keep_images {
                    // The next start adopts the image: only its containers go.
                    for c in slot.ready {
                        let n = c.slot;
                        self.destroy(c);
                        self.forget_container(None, false, n);
                    }
                } else {
                    self.run_job(Job::DestroyImage(id, image, slot.ready));
                }
            }
        }
        self.jobs.close();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }

    fn cancel_running(&self) {
        for (_, token) in self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            token.cancel();
        }
    }

    pub(crate) fn stats(&self) -> EngineStats {
        let st = self.lock();
        let c = &self.counters;
        let mut toolchains: Vec<ToolchainPoolStats> = st
            .images
            .iter()
            .map(|(id, s)| ToolchainPoolStats {
                toolchain: id.clone(),
                ready: s.ready.len(),
                busy: s.lent,
                recycling: s.alive.saturating_sub(s.ready.len() + s.lent),
            })
            .collect();
        toolchains.sort_by(|a, b| a.toolchain.cmp(&b.toolchain));
        EngineStats {
            builds_ok: self.health.builds_ok.load(Ordering::Relaxed),
            builds_failed: self.health.builds_failed.load(Ordering::Relaxed),
            images_created: c.images_created.load(Ordering::Relaxed),
            images_evicted: c.images_evicted.load(Ordering::Relaxed),
            images_adopted: c.images_adopted.load(Ordering::Relaxed),
            containers_created: c.containers_created.load(Ordering::Relaxed),
            containers_reset: c.containers_reset.load(Ordering::Relaxed),
            containers_destroyed: c.containers_destroyed.load(Ordering::Relaxed),
            reset_failures: c.reset_failures.load(Ordering::Relaxed),
            destroy_failures: c.destroy_failures.load(Ordering::Relaxed),
            containers_alive: st.alive,
            containers_ready: st.images.values().map(|s| s.ready.len()).sum(),
            containers_busy: st.lent,
            images: st.images.len(),
            builds: self.health.builds.snapshot(),
            toolchains,
            healthy: false,
        }
    }
}

/// Says, at most every [`WAIT_LOG_INTERVAL`], that a build waits for a container: the pool
/// is at its bound (`max_containers` or `max_containers_per_toolchain`), so the scheduler
/// sends more jobs than the pool holds, or images are being built.
fn log_wait(id: &ToolchainId, alive: usize, max: usize, max_tc: usize) {
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    if last.is_some_and(|t| t.elapsed() < WAIT_LOG_INTERVAL) {
        return;
    }
    *last = Some(Instant::now());
    log::info!(
        "toolchain {id}: a build waits for a container ({alive} of max_containers = {max} \
         alive, at most {max_tc} per toolchain); further waits are logged at debug for {} s",
        WAIT_LOG_INTERVAL.as_secs()
    );
}

const WAIT_LOG_INTERVAL: Duration = Duration::from_secs(10);
