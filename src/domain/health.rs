//! Whether a dependency's writes are failing now, for readiness.
//!
//! A database that answers a ping may still refuse every write (a full disk, an I/O error, a
//! Redis past its memory limit): readiness must say what a submit needs. Writes are not
//! probed; what the real ones did is recorded. The dependency is failing for [`FAILING_FOR`]
//! after any write failed, even if others succeed meanwhile (a nearly full disk takes small
//! writes and refuses larger ones); once that time passes without a failure it is ready again,
//! so traffic comes back and tries (a process taken out of the load balancer would otherwise
//! never write again to find out).

use parking_lot::Mutex;
use std::time::{Duration, Instant};

/// How long one failed write keeps a dependency failing when nothing else is written.
pub const FAILING_FOR: Duration = Duration::from_secs(5);

/// What the writes to one dependency did lately: its last failure. Shared by everyone who
/// writes to it.
#[derive(Debug, Default)]
pub struct WriteHealth(Mutex<Option<(Instant, String)>>);

impl WriteHealth {
    /// A write failed at `at`, for `why`.
    pub fn failed(&self, at: Instant, why: impl Into<String>) {
        let mut last = self.0.lock();
        if last.as_ref().is_none_or(|(when, _)| *when <= at) {
            *last = Some((at, why.into()));
        }
    }

    /// Why writes are failing at `now`, if they are: the last failure, if it was less than
    /// [`FAILING_FOR`] ago.
    pub fn failing(&self, now: Instant) -> Option<String> {
        let last = self.0.lock();
        let (failed_at, why) = last.as_ref()?;
        (now.saturating_duration_since(*failed_at) < FAILING_FOR).then(|| why.clone())
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
