//! Where each Forge backend's circuit breaker (R8) lives: in this process, or in Redis shared
//! by every process, so R8's numbers (`BREAKER_FAILURES` consecutive failures open it for
//! `BREAKER_OPEN_FOR`, then one trial) hold for the whole deployment rather than per process.
//!
//! [`MemoryBreakers`] wraps the pure [`CircuitBreaker`]; [`redis::RedisBreakers`] runs the
//! same state machine as one Lua script per step, on Redis's clock.

pub mod redis;

use crate::domain::breaker::{Admission, CallOutcome, CircuitBreaker, Readiness, Transition};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Why a breaker store could not answer.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct BreakerError(pub String);

/// The breaker settings every backend shares.
#[derive(Clone, Copy, Debug)]
pub struct BreakerSettings {
    /// Consecutive failures that open a breaker (`BREAKER_FAILURES`).
    pub failures: u32,
    /// How long it stays open (`BREAKER_OPEN_FOR`).
    pub open_for: Duration,
    /// How long a trial may run before another process may try (its process may have died):
    /// `FORGE_TIMEOUT` and some.
    pub trial_lease: Duration,
}

/// Every backend's breaker.
#[async_trait::async_trait]
pub trait BreakerStore: Send + Sync {
    /// `memory` or `redis`.
    fn kind(&self) -> &'static str;

    /// What `backend`'s breaker says about calling it now.
    async fn readiness(&self, backend: &str) -> Result<Readiness, BreakerError>;

    /// Asks to call `backend` now; `holder` names the call if it becomes the trial.
    async fn admit(
        &self,
        backend: &str,
        holder: &str,
    ) -> Result<(Admission, Option<Transition>), BreakerError>;

    /// Holds `backend` off for `long` (see [`Readiness::HeldOff`]).
    async fn hold_off(&self, backend: &str, long: Duration) -> Result<(), BreakerError>;

    /// How a call admitted as `admission` ended.
    async fn record(
        &self,
        backend: &str,
        holder: &str,
        admission: Admission,
        outcome: CallOutcome,
    ) -> Result<Option<Transition>, BreakerError>;
}

/// The breakers of this process's backends.
pub struct MemoryBreakers {
    settings: BreakerSettings,
    breakers: Mutex<HashMap<String, CircuitBreaker>>,
}

impl MemoryBreakers {
    /// Closed breakers with `settings`.
    pub fn new(settings: BreakerSettings) -> MemoryBreakers {
        MemoryBreakers {
            settings,
            breakers: Mutex::new(HashMap::new()),
        }
    }

    fn with<T>(&self, backend: &str, act: impl FnOnce(&mut CircuitBreaker) -> T) -> T {
        let mut breakers = self.breakers.lock();
        let breaker = breakers
            .entry(backend.to_owned())
            .or_insert_with(|| CircuitBreaker::new(self.settings.failures, self.settings.open_for));
        act(breaker)
    }
}

#[async_trait::async_trait]
impl BreakerStore for MemoryBreakers {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn readiness(&self, backend: &str) -> Result<Readiness, BreakerError> {
        Ok(self.with(backend, |breaker| breaker.readiness(Instant::now())))
    }

    async fn admit(
        &self,
        backend: &str,
        _holder: &str,
    ) -> Result<(Admission, Option<Transition>), BreakerError> {
        Ok(self.with(backend, |breaker| breaker.admit(Instant::now())))
    }

    async fn hold_off(&self, backend: &str, long: Duration) -> Result<(), BreakerError> {
        self.with(backend, |breaker| breaker.hold_off(Instant::now() + long));
        Ok(())
    }

    async fn record(
        &self,
        backend: &str,
        _holder: &str,
        admission: Admission,
        outcome: CallOutcome,
    ) -> Result<Option<Transition>, BreakerError> {
        Ok(self.with(backend, |breaker| {
            breaker.record(admission, outcome, Instant::now())
        }))
    }
}
