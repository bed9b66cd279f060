//! When the gateway could not see its dependencies, so the watchdog counts a job's inactivity
//! only over time it could have seen activity.
//!
//! A job is stuck when nothing happened to it for `STUCK_AFTER` (R4). But "nothing happened"
//! means nothing *recorded*: while the database is unreachable a running job's progress and
//! outcome cannot be written, while the queue store is unreachable the queue cannot move, and
//! while the gateway was not running (a restart after a long outage) nothing could happen at
//! all. Marking jobs stuck right after such a gap would fail work that was only waiting, and
//! race the late writes of work that succeeded. So the watchdog only marks a job once this
//! process has watched, without an outage, for `STUCK_AFTER`: after a restart or an outage,
//! every job gets a full `STUCK_AFTER` to show a sign of life.

use chrono::{DateTime, Duration, Utc};
use parking_lot::Mutex;

#[derive(Clone, Copy, Debug)]
struct Seen {
    watching_since: DateTime<Utc>,
    database_failed_at: Option<DateTime<Utc>>,
    queue_failed_at: Option<DateTime<Utc>>,
}

/// The outages this process saw. Shared by whoever talks to the database or the queue store.
#[derive(Debug)]
pub struct Outages(Mutex<Seen>);

impl Outages {
    /// Watching since `started` (the process's start).
    pub fn new(started: DateTime<Utc>) -> Self {
        Outages(Mutex::new(Seen {
            watching_since: started,
            database_failed_at: None,
            queue_failed_at: None,
        }))
    }

    /// The database did not answer at `at`.
    pub fn database_failed(&self, at: DateTime<Utc>) {
        let mut seen = self.0.lock();
        seen.database_failed_at = seen.database_failed_at.max(Some(at));
    }

    /// The queue store did not answer at `at`.
    pub fn queue_failed(&self, at: DateTime<Utc>) {
        let mut seen = self.0.lock();
        seen.queue_failed_at = seen.queue_failed_at.max(Some(at));
    }

    /// The cutoff of a scan for stuck processing jobs at `now`: a job whose last activity is
    /// at or before it is stuck. `None` while this process has not watched, without a
    /// database outage, for `stuck_after`.
    pub fn processing_cutoff(
        &self,
        now: DateTime<Utc>,
        stuck_after: Duration,
    ) -> Option<DateTime<Utc>> {
        let seen = *self.0.lock();
        let watched_from = seen
            .database_failed_at
            .map_or(seen.watching_since, |failed| {
                failed.max(seen.watching_since)
            });
        let cutoff = now - stuck_after;
        (watched_from <= cutoff).then_some(cutoff)
    }

    /// The same for queued jobs: the queue store must not have failed either.
    pub fn queued_cutoff(
        &self,
        now: DateTime<Utc>,
        stuck_after: Duration,
    ) -> Option<DateTime<Utc>> {
        let cutoff = self.processing_cutoff(now, stuck_after)?;
        let queue_failed = self.0.lock().queue_failed_at;
        queue_failed
            .is_none_or(|failed| failed <= cutoff)
            .then_some(cutoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap_or_default()
    }

    #[test]
    fn nothing_is_stuck_before_a_full_period_of_watching() {
        let outages = Outages::new(at(0));
        let five = Duration::seconds(5);
        assert_eq!(outages.processing_cutoff(at(4), five), None, "just started");
        assert_eq!(outages.processing_cutoff(at(5), five), Some(at(0)));
        assert_eq!(outages.queued_cutoff(at(9), five), Some(at(4)));
    }

    #[test]
    fn an_outage_restarts_the_period() {
        let outages = Outages::new(at(0));
        let five = Duration::seconds(5);
        outages.database_failed(at(20));
        assert_eq!(outages.processing_cutoff(at(24), five), None);
        assert_eq!(outages.processing_cutoff(at(25), five), Some(at(20)));
        outages.database_failed(at(10));
        assert_eq!(
            outages.processing_cutoff(at(25), five),
            Some(at(20)),
            "an older failure changes nothing"
        );
        outages.queue_failed(at(30));
        assert_eq!(outages.processing_cutoff(at(31), five), Some(at(26)));
        assert_eq!(
            outages.queued_cutoff(at(31), five),
            None,
            "the queue could not move"
        );
        assert_eq!(outages.queued_cutoff(at(35), five), Some(at(30)));
    }
}
