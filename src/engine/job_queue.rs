//! The recycler's job queue: many producers, a few worker threads, one worker woken per
//! job.
//!
//! It replaces an `mpsc` channel whose receiver the workers shared behind a mutex. There,
//! one worker slept in `recv` holding the mutex while the others slept on the mutex, so
//! every job woke two threads: the one that took it and, when that one let the mutex go,
//! the next, only for it to go back to sleep in `recv`. On a 2-core server that was a
//! wake-up (a cross-CPU IPI when the other core idles) and two context switches per
//! compile for nothing. Here an idle worker waits on the condvar and `push` wakes one.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

pub(super) struct JobQueue<T> {
    state: Mutex<Queued<T>>,
    ready: Condvar,
}

struct Queued<T> {
    jobs: VecDeque<T>,
    open: bool,
}

impl<T> JobQueue<T> {
    pub(super) fn new() -> Self {
        JobQueue {
            state: Mutex::new(Queued {
                jobs: VecDeque::new(),
                open: true,
            }),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queued<T>> {
        // A worker that panicked while holding the lock left the queue itself consistent
        // (push_back/pop_front do not unwind halfway).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a job and wakes one idle worker; hands the job back once the queue is closed.
    pub(super) fn push(&self, job: T) -> Result<(), T> {
        let mut q = self.lock();
        if !q.open {
            return Err(job);
        }
        q.jobs.push_back(job);
        drop(q);
        self.ready.notify_one();
        Ok(())
    }

    /// The next job, waiting for one; `None` once the queue is closed and drained, so jobs
    /// queued before `close` still run.
    pub(super) fn pop(&self) -> Option<T> {
        let mut q = self.lock();
        loop {
            if let Some(job) = q.jobs.pop_front() {
                return Some(job);
            }
            if !q.open {
                return None;
            }
            q = self.ready.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Refuses further jobs and wakes every worker, to drain what is queued and stop.
    pub(super) fn close(&self) {
        self.lock().open = false;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::JobQueue;

    #[test]
    fn jobs_run_in_order_and_those_queued_before_close_still_run() {
        let q = JobQueue::new();
        for i in 0..3 {
            q.push(i).unwrap();
        }
        q.close();
        assert_eq!(q.push(9), Err(9), "a closed queue hands the job back");
        assert_eq!(
            (q.pop(), q.pop(), q.pop(), q.pop()),
            (Some(0), Some(1), Some(2), None)
        );
    }

    #[test]
    fn workers_take_every_job_once_and_stop_at_close() {
        let q = Arc::new(JobQueue::new());
        let done = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let (q, done) = (Arc::clone(&q), Arc::clone(&done));
                std::thread::spawn(move || {
                    let mut sum = 0;
                    while let Some(n) = q.pop() {
                        sum += n;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    sum
                })
            })
            .collect();
        for n in 1..=1000 {
            q.push(n).unwrap();
        }
        q.close();
        let total: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
        assert_eq!(done.load(Ordering::Relaxed), 1000);
        assert_eq!(total, 1000 * 1001 / 2, "each job taken exactly once");
    }
}
