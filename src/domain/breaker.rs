//! The circuit breaker around one Forge backend, as a pure state machine.
//!
//! Time is injected: every call takes `now`, so tests drive it with a fake clock and the
//! actor passes `Instant::now()`. `closed → open` after `failure_threshold` consecutive
//! failures (R8.1); while open every call is rejected (the caller serves the placeholder, R8.2);
//! once `open_for` has passed exactly one trial call is let through (R8.3); its success closes
//! the breaker, its failure opens it for another `open_for` (R8.4).

use std::time::{Duration, Instant};

/// What the breaker currently is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; failures are counted.
    Closed,
    /// Calls are rejected until the open period ends.
    Open,
    /// One trial call is (or may be) in flight.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open`, `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// 0 closed, 1 open, 2 half-open (the metric's value).
    pub fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

/// The breaker's answer to "may I call the backend?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Closed: call, and report the outcome.
    Allowed,
    /// Half-open: this call is the one trial; report its outcome.
    Trial,
    /// Open (or a trial is already in flight): do not call.
    Rejected,
}

/// How an admitted call ended, as far as the backend's health goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    /// The backend answered as a healthy backend does.
    Success,
    /// Connection error, timeout or 5xx: the backend is failing.
    Failure,
    /// Says nothing about the backend (the call was abandoned, or Forge refused the request itself).
    Neutral,
}

/// A change of state, for the log and the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// State before.
    pub from: BreakerState,
    /// State after.
    pub to: BreakerState,
}

/// What a backend's breaker says about calling it now, before any call is admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Closed: calls go through.
    Closed,
    /// Open for this much longer.
    Open(Duration),
    /// The open period is over, or a trial ended without a verdict: the next call is the trial.
    TrialDue,
    /// A trial call is in flight (here or in another process).
    TrialRunning,
    /// Closed, but held off for this much longer: it handed a job to another backend lately,
    /// and should not take the job back before another backend does.
    HeldOff(Duration),
}

/// How long to wait before a slot worker of this backend takes a job: `None` to take one now.
/// An open backend leaves the queue to a healthy one (`another_is_closed`) until its open
/// period ends; with none healthy it takes jobs, which get the placeholder (R8.2). While a
/// trial is in flight no other call is made.
pub fn pause_before_taking(readiness: Readiness, another_is_closed: bool) -> Option<Duration> {
    match readiness {
        Readiness::Closed | Readiness::TrialDue => None,
        Readiness::Open(left) | Readiness::HeldOff(left) if another_is_closed => {
            Some(left.min(Duration::from_secs(1)))
        }
        Readiness::Open(_) | Readiness::HeldOff(_) => None,
        Readiness::TrialRunning => Some(Duration::from_millis(50)),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inner {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen { trial_in_flight: bool },
}

/// One backend's circuit breaker.
#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    failure_threshold: u32,
    open_for: Duration,
    inner: Inner,
    held_until: Option<Instant>,
}

impl CircuitBreaker {
    /// A closed breaker that opens after `failure_threshold` consecutive failures (at least 1)
    /// and stays open for `open_for`.
    pub fn new(failure_threshold: u32, open_for: Duration) -> Self {
        CircuitBreaker {
            failure_threshold: failure_threshold.max(1),
            open_for,
            inner: Inner::Closed {
                consecutive_failures: 0,
            },
            held_until: None,
        }
    }

    /// Holds a closed breaker off until `until` (see [`Readiness::HeldOff`]); calls are still
    /// admitted.
    pub fn hold_off(&mut self, until: Instant) {
        self.held_until = Some(self.held_until.map_or(until, |held| held.max(until)));
    }

    /// The current state. An open breaker whose time is up still reads `Open` until the
    /// next [`admit`](Self::admit) turns it half-open.
    pub fn state(&self) -> BreakerState {
        match self.inner {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Consecutive failures counted while closed.
    pub fn consecutive_failures(&self) -> u32 {
        match self.inner {
            Inner::Closed {
                consecutive_failures,
            } => consecutive_failures,
            _ => 0,
        }
    }

    /// When an open breaker will let a trial through.
    pub fn open_until(&self) -> Option<Instant> {
        match self.inner {
            Inner::Open { until } => Some(until),
            _ => None,
        }
    }

    /// What the breaker says about calling now.
    pub fn readiness(&self, now: Instant) -> Readiness {
        match self.inner {
            Inner::Closed { .. } => match self.held_until {
                Some(until) if now < until => Readiness::HeldOff(until - now),
                _ => Readiness::Closed,
            },
            Inner::Open { until } if now < until => Readiness::Open(until - now),
            Inner::Open { .. } => Readiness::TrialDue,
            Inner::HalfOpen {
                trial_in_flight: true,
            } => Readiness::TrialRunning,
            Inner::HalfOpen {
                trial_in_flight: false,
            } => Readiness::TrialDue,
        }
    }

    /// Asks to make a call now. Returns the admission and the transition it caused, if any.
    pub fn admit(&mut self, now: Instant) -> (Admission, Option<Transition>) {
        match self.inner {
            Inner::Closed { .. } => (Admission::Allowed, None),
            Inner::Open { until } if now >= until => {
                let transition = self.set(Inner::HalfOpen {
                    trial_in_flight: true,
                });
                (Admission::Trial, transition)
            }
            Inner::Open { .. } => (Admission::Rejected, None),
            Inner::HalfOpen {
                trial_in_flight: true,
            } => (Admission::Rejected, None),
            Inner::HalfOpen {
                trial_in_flight: false,
            } => {
                self.inner = Inner::HalfOpen {
                    trial_in_flight: true,
                };
                (Admission::Trial, None)
            }
        }
    }

    /// Reports how a call admitted as `admission` ended. Returns the transition it caused, if any.
    pub fn record(
        &mut self,
        admission: Admission,
        outcome: CallOutcome,
        now: Instant,
    ) -> Option<Transition> {
        match (admission, self.inner, outcome) {
            (Admission::Rejected, _, _) => None,
            (Admission::Allowed, Inner::Closed { .. }, CallOutcome::Success) => {
                self.inner = Inner::Closed {
                    consecutive_failures: 0,
                };
                None
            }
            (
                Admission::Allowed,
                Inner::Closed {
                    consecutive_failures,
                },
                CallOutcome::Failure,
            ) => {
                let failures = consecutive_failures + 1;
                if failures >= self.failure_threshold {
                    self.set(Inner::Open {
                        until: now + self.open_for,
                    })
                } else {
                    self.inner = Inner::Closed {
                        consecutive_failures: failures,
                    };
                    None
                }
            }
            (Admission::Trial, Inner::HalfOpen { .. }, CallOutcome::Success) => {
                self.set(Inner::Closed {
                    consecutive_failures: 0,
                })
            }
            (Admission::Trial, Inner::HalfOpen { .. }, CallOutcome::Failure) => {
                self.set(Inner::Open {
                    until: now + self.open_for,
                })
            }
            (Admission::Trial, Inner::HalfOpen { .. }, CallOutcome::Neutral) => {
                self.inner = Inner::HalfOpen {
                    trial_in_flight: false,
                };
                None
            }
            // Neutral outcomes while closed, and late answers of calls admitted before the
            // breaker changed state, say nothing about the state we are in now.
            _ => None,
        }
    }

    fn set(&mut self, next: Inner) -> Option<Transition> {
        let from = self.state();
        self.inner = next;
        let to = self.state();
        (from != to).then_some(Transition { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN_FOR: Duration = Duration::from_secs(60);

    /// A fake clock: starts at a fixed instant and moves only when told.
    struct FakeClock(Instant);

    impl FakeClock {
        fn now(&self) -> Instant {
            self.0
        }
        fn advance(&mut self, by: Duration) {
            self.0 += by;
        }
    }

    fn fail(breaker: &mut CircuitBreaker, clock: &FakeClock) -> Option<Transition> {
        let (admission, _) = breaker.admit(clock.now());
        assert_eq!(admission, Admission::Allowed);
        breaker.record(admission, CallOutcome::Failure, clock.now())
    }

    fn opened(clock: &FakeClock) -> CircuitBreaker {
        let mut breaker = CircuitBreaker::new(5, OPEN_FOR);
        for _ in 0..5 {
            fail(&mut breaker, clock);
        }
        assert_eq!(breaker.state(), BreakerState::Open);
        breaker
    }

    #[test]
    fn readiness_and_the_pause_before_taking_follow_the_state() {
        let mut clock = FakeClock(Instant::now());
        let mut breaker = CircuitBreaker::new(5, OPEN_FOR);
        assert_eq!(breaker.readiness(clock.now()), Readiness::Closed);
        assert_eq!(pause_before_taking(Readiness::Closed, true), None);
        let mut breaker_open = opened(&clock);
        clock.advance(Duration::from_secs(59));
        let readiness = breaker_open.readiness(clock.now());
        assert_eq!(readiness, Readiness::Open(Duration::from_secs(1)));
        assert_eq!(
            pause_before_taking(readiness, true),
            Some(Duration::from_secs(1))
        );
        assert_eq!(pause_before_taking(readiness, false), None, "placeholder");
        clock.advance(Duration::from_secs(1));
        assert_eq!(breaker_open.readiness(clock.now()), Readiness::TrialDue);
        assert_eq!(breaker_open.admit(clock.now()).0, Admission::Trial);
        let readiness = breaker_open.readiness(clock.now());
        assert_eq!(readiness, Readiness::TrialRunning);
        assert_eq!(
            pause_before_taking(readiness, false),
            Some(Duration::from_millis(50))
        );
        breaker.admit(clock.now());
        assert_eq!(breaker.readiness(clock.now()), Readiness::Closed);
        breaker.hold_off(clock.now() + Duration::from_secs(10));
        let readiness = breaker.readiness(clock.now());
        assert_eq!(readiness, Readiness::HeldOff(Duration::from_secs(10)));
        assert_eq!(
            pause_before_taking(readiness, true),
            Some(Duration::from_secs(1))
        );
        assert_eq!(pause_before_taking(readiness, false), None);
        assert_eq!(
            breaker.admit(clock.now()).0,
            Admission::Allowed,
            "still admits"
        );
        clock.advance(Duration::from_secs(10));
        assert_eq!(breaker.readiness(clock.now()), Readiness::Closed);
    }

    #[test]
    fn five_consecutive_failures_open_it() {
        let clock = FakeClock(Instant::now());
        let mut breaker = CircuitBreaker::new(5, OPEN_FOR);
        for n in 1..5 {
            assert_eq!(fail(&mut breaker, &clock), None);
            assert_eq!(breaker.consecutive_failures(), n);
        }
        assert_eq!(
            fail(&mut breaker, &clock),
            Some(Transition {
                from: BreakerState::Closed,
                to: BreakerState::Open
            })
        );
        assert_eq!(breaker.admit(clock.now()).0, Admission::Rejected);
    }

    #[test]
    fn a_success_resets_the_count() {
        let clock = FakeClock(Instant::now());
        let mut breaker = CircuitBreaker::new(5, OPEN_FOR);
        for _ in 0..4 {
            fail(&mut breaker, &clock);
        }
        let (admission, _) = breaker.admit(clock.now());
        breaker.record(admission, CallOutcome::Success, clock.now());
        for _ in 0..4 {
            fail(&mut breaker, &clock);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        let (admission, _) = breaker.admit(clock.now());
        breaker.record(admission, CallOutcome::Neutral, clock.now());
        assert_eq!(
            breaker.consecutive_failures(),
            4,
            "neutral outcomes neither count nor reset"
        );
    }

    #[test]
    fn it_stays_open_for_the_whole_period() {
        let mut clock = FakeClock(Instant::now());
        let mut breaker = opened(&clock);
        clock.advance(OPEN_FOR - Duration::from_millis(1));
        assert_eq!(breaker.admit(clock.now()).0, Admission::Rejected);
        clock.advance(Duration::from_millis(1));
        let (admission, transition) = breaker.admit(clock.now());
        assert_eq!(admission, Admission::Trial);
        assert_eq!(
            transition,
            Some(Transition {
                from: BreakerState::Open,
                to: BreakerState::HalfOpen
            })
        );
    }

    #[test]
    fn only_one_trial_goes_through_in_half_open() {
        let mut clock = FakeClock(Instant::now());
        let mut breaker = opened(&clock);
        clock.advance(OPEN_FOR);
        let admissions: Vec<_> = (0..10).map(|_| breaker.admit(clock.now()).0).collect();
        assert_eq!(
            admissions
                .iter()
                .filter(|a| **a == Admission::Trial)
                .count(),
            1
        );
        assert_eq!(admissions[0], Admission::Trial);
    }

    #[test]
    fn a_successful_trial_closes_it() {
        let mut clock = FakeClock(Instant::now());
        let mut breaker = opened(&clock);
        clock.advance(OPEN_FOR);
        let (admission, _) = breaker.admit(clock.now());
        let transition = breaker.record(admission, CallOutcome::Success, clock.now());
        assert_eq!(
            transition,
            Some(Transition {
                from: BreakerState::HalfOpen,
                to: BreakerState::Closed
            })
        );
        assert_eq!(breaker.admit(clock.now()).0, Admission::Allowed);
    }

    #[test]
    fn a_failed_trial_opens_it_for_another_period() {
        let mut clock = FakeClock(Instant::now());
        let mut breaker = opened(&clock);
        clock.advance(OPEN_FOR);
        let (admission, _) = breaker.admit(clock.now());
        let transition = breaker.record(admission, CallOutcome::Failure, clock.now());
        assert_eq!(
            transition,
            Some(Transition {
                from: BreakerState::HalfOpen,
                to: BreakerState::Open
            })
        );
        assert_eq!(breaker.open_until(), Some(clock.now() + OPEN_FOR));
        clock.advance(OPEN_FOR - Duration::from_secs(1));
        assert_eq!(breaker.admit(clock.now()).0, Admission::Rejected);
        clock.advance(Duration::from_secs(1));
        assert_eq!(breaker.admit(clock.now()).0, Admission::Trial);
    }

    #[test]
    fn a_neutral_trial_lets_the_next_call_be_the_trial() {
        let mut clock = FakeClock(Instant::now());
        let mut breaker = opened(&clock);
        clock.advance(OPEN_FOR);
        let (admission, _) = breaker.admit(clock.now());
        assert_eq!(
            breaker.record(admission, CallOutcome::Neutral, clock.now()),
            None
        );
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert_eq!(breaker.admit(clock.now()).0, Admission::Trial);
        assert_eq!(breaker.admit(clock.now()).0, Admission::Rejected);
    }

    #[test]
    fn late_answers_from_before_the_open_change_nothing() {
        let clock = FakeClock(Instant::now());
        let mut breaker = CircuitBreaker::new(2, OPEN_FOR);
        let (early, _) = breaker.admit(clock.now());
        fail(&mut breaker, &clock);
        fail(&mut breaker, &clock);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(
            breaker.record(early, CallOutcome::Success, clock.now()),
            None
        );
        assert_eq!(breaker.state(), BreakerState::Open);
    }
}
