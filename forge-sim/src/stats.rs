//! What a simulator counts, for tests and benchmarks.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters since start (or the last reset), for tests and benchmarks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SimStats {
    /// `POST /sdapi/v1/txt2img` requests received, whatever their outcome.
    pub txt2img_requests: u64,
    /// Generations that ran to their end and answered 200.
    pub completed: u64,
    /// Generations ended early by interrupt or skip (they still answered 200).
    pub interrupted: u64,
    /// txt2img requests answered with a fault: an explicit fault mode or a `fail_rate` pick.
    pub failed: u64,
    /// `POST /sdapi/v1/interrupt` and `POST /sdapi/v1/skip` calls.
    pub interrupts: u64,
    /// `GET /sdapi/v1/progress` calls.
    pub progress_requests: u64,
    /// Most generations ever seen holding the lock at once; 1 unless the lock is broken.
    pub max_concurrent_generations: u64,
    /// Most normal-mode txt2img requests ever in hand at once, waiting for the lock or
    /// generating: more than 1 means callers queued work inside this server.
    pub max_txt2img_in_flight: u64,
    /// Checkpoint loads: a request that asked for another checkpoint than the loaded one, and
    /// the load back when it asked to restore afterwards.
    pub model_switches: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub txt2img_requests: AtomicU64,
    pub completed: AtomicU64,
    pub interrupted: AtomicU64,
    pub failed: AtomicU64,
    pub interrupts: AtomicU64,
    pub progress_requests: AtomicU64,
    pub max_concurrent_generations: AtomicU64,
    /// Generations running now (not reset with the others).
    pub active_generations: AtomicU64,
    pub max_txt2img_in_flight: AtomicU64,
    pub model_switches: AtomicU64,
    /// Normal-mode txt2img requests in hand now (not reset with the others).
    pub txt2img_in_flight: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> SimStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        SimStats {
            txt2img_requests: get(&self.txt2img_requests),
            completed: get(&self.completed),
            interrupted: get(&self.interrupted),
            failed: get(&self.failed),
            interrupts: get(&self.interrupts),
            progress_requests: get(&self.progress_requests),
            max_concurrent_generations: get(&self.max_concurrent_generations),
            max_txt2img_in_flight: get(&self.max_txt2img_in_flight),
            model_switches: get(&self.model_switches),
        }
    }

    pub(crate) fn reset(&self) {
        for counter in [
            &self.txt2img_requests,
            &self.completed,
            &self.interrupted,
            &self.failed,
            &self.interrupts,
            &self.progress_requests,
            &self.model_switches,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        self.max_concurrent_generations.store(
            self.active_generations.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        self.max_txt2img_in_flight.store(
            self.txt2img_in_flight.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
    }

    /// Counts a normal-mode txt2img request in hand until the guard drops.
    pub fn txt2img_in_hand(&self) -> InFlight<'_> {
        let now = self.txt2img_in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_txt2img_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(&self.txt2img_in_flight)
    }
}

/// A request counted in flight; dropping it stops counting it.
pub(crate) struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
