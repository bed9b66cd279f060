//! Whether a dependency's writes are failing now, for readiness.
//!
//! A database that answers a ping may still refuse every write (a full disk, an I/O error, a
//! Redis past its memory limit): readiness must say what a submit needs. What the real writes
//! did is recorded. The dependency is failing for [`FAILING_FOR`] after any write failed, even
//! if others succeed meanwhile (a nearly full disk takes small writes and refuses larger ones).
//! Once that time passes without a failure, it is ready again only when readiness has proven
//! it with a write of its own, as large as the largest a client may cause
//! ([`WriteHealth::needs_proof`]): small writes may still land on a disk with no room for a
//! message, and a process taken out of the load balancer gets no traffic to find out with.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

/// How long one failed write keeps a dependency failing when nothing else is written.
pub const FAILING_FOR: Duration = Duration::from_secs(5);

/// What the writes to one dependency did lately. Shared by everyone who writes to it.
#[derive(Debug, Default)]
pub struct WriteHealth(Mutex<Recent>);

#[derive(Debug, Default)]
struct Recent {
    /// The last failure, and why.
    failure: Option<(Instant, String)>,
    /// Readiness's own write landed after it.
    proven: bool,
}

impl WriteHealth {
    /// A write failed at `at`, for `why`.
    pub fn failed(&self, at: Instant, why: impl Into<String>) {
        let mut recent = self.0.lock();
        if recent.failure.as_ref().is_none_or(|(when, _)| *when <= at) {
            recent.failure = Some((at, why.into()));
            recent.proven = false;
        }
    }

    /// Readiness's own write, started at `started`, landed.
    pub fn proven(&self, started: Instant) {
        let mut recent = self.0.lock();
        if recent
            .failure
            .as_ref()
            .is_some_and(|(failed_at, _)| *failed_at <= started)
        {
            recent.proven = true;
        }
    }

    /// Why writes are failing at `now`, if they are: the last failure, if it was less than
    /// [`FAILING_FOR`] ago.
    pub fn failing(&self, now: Instant) -> Option<String> {
        let recent = self.0.lock();
        let (failed_at, why) = recent.failure.as_ref()?;
        (now.saturating_duration_since(*failed_at) < FAILING_FOR).then(|| why.clone())
    }

    /// Whether readiness must prove with a write of its own that writes land again: the last
    /// failure is past [`FAILING_FOR`] and no such proof landed since.
    pub fn needs_proof(&self, now: Instant) -> bool {
        let recent = self.0.lock();
        recent.failure.as_ref().is_some_and(|(failed_at, _)| {
            now.saturating_duration_since(*failed_at) >= FAILING_FOR && !recent.proven
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_fails_readiness_for_a_while_whatever_else_succeeds() {
        let health = WriteHealth::default();
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        assert_eq!(health.failing(t0), None, "nothing failed yet");
        health.failed(t0 + second, "disk full");
        assert_eq!(
            health.failing(t0 + 2 * second).as_deref(),
            Some("disk full")
        );
        health.failed(t0 + 3 * second, "I/O error");
        let last = t0 + 3 * second;
        assert_eq!(
            health
                .failing(last + FAILING_FOR - Duration::from_millis(1))
                .as_deref(),
            Some("I/O error"),
            "each failure starts the period again"
        );
        assert_eq!(
            health.failing(last + FAILING_FOR),
            None,
            "ready again after it"
        );
    }

    #[test]
    fn past_the_period_only_a_proof_written_since_the_failure_makes_it_ready() {
        let health = WriteHealth::default();
        let t0 = Instant::now();
        assert!(!health.needs_proof(t0), "nothing failed");
        health.failed(t0, "disk full");
        assert!(
            !health.needs_proof(t0 + Duration::from_secs(1)),
            "still failing"
        );
        let past = t0 + FAILING_FOR;
        assert_eq!(health.failing(past), None);
        assert!(health.needs_proof(past), "nothing landed since");
        health.proven(t0 - Duration::from_secs(1));
        assert!(
            health.needs_proof(past),
            "a proof from before the failure proves nothing"
        );
        health.proven(t0 + Duration::from_secs(1));
        assert!(!health.needs_proof(past), "a proof landed since");
        health.failed(past, "disk full again");
        assert!(
            health.needs_proof(past + FAILING_FOR),
            "a new failure needs a new proof"
        );
    }

    #[test]
    fn an_older_failure_does_not_replace_a_newer_one() {
        let health = WriteHealth::default();
        let t0 = Instant::now();
        health.failed(t0 + Duration::from_secs(2), "newer");
        health.failed(t0, "older");
        assert_eq!(
            health.failing(t0 + Duration::from_secs(3)).as_deref(),
            Some("newer")
        );
        assert_eq!(
            health.failing(t0 + Duration::from_secs(2) + FAILING_FOR),
            None
        );
    }
}
