//! Breakers in Redis, shared by every process that uses the same Redis and key prefix: one
//! hash per backend, `{prefix}:breaker:<backend>`, changed only by `breaker.lua`.
//!
//! One round trip of the healthy path is saved (a healthy backend then costs two scripts per
//! job, its readiness and the admission): the success of an admitted call is not sent while
//! the last answer counted no failure (it would only reset a count of 0).

use super::{BreakerError, BreakerSettings, BreakerStore};
use crate::domain::breaker::{Admission, BreakerState, CallOutcome, Readiness, Transition};
use crate::redis_client::{check_prefix, connect_pool};
use fred::prelude::{ClientLike, LuaInterface, Pool, Value};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Duration;

/// Connections of the breaker store: a few short scripts per job.
const POOL_SIZE: usize = 2;

/// A backend's breaker as this process last heard of it.
#[derive(Clone, Copy)]
struct Heard {
    closed: bool,
    failures: u64,
}

/// Breakers in Redis.
pub struct RedisBreakers {
    pool: Pool,
    base: String,
    settings: BreakerSettings,
    heard: Mutex<HashMap<String, Heard>>,
}

/// What the script answered.
struct Answer {
    before: BreakerState,
    after: BreakerState,
    word: String,
    ms: u64,
    failures: u64,
}

impl Answer {
    fn transition(&self) -> Option<Transition> {
        (self.before != self.after).then_some(Transition {
            from: self.before,
            to: self.after,
        })
    }
}

fn state_of(word: &str) -> Result<BreakerState, BreakerError> {
    match word {
        "closed" => Ok(BreakerState::Closed),
        "open" => Ok(BreakerState::Open),
        "half_open" => Ok(BreakerState::HalfOpen),
        other => Err(BreakerError(format!(
            "unexpected breaker state in Redis: {other:?}"
        ))),
    }
}

impl RedisBreakers {
    /// Connects to `url`; every key starts with `{prefix}:breaker:`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        settings: BreakerSettings,
    ) -> Result<RedisBreakers, BreakerError> {
        check_prefix(prefix).map_err(|err| BreakerError(err.to_string()))?;
        let pool = connect_pool(url, POOL_SIZE, "breakers")
            .await
            .map_err(|err| BreakerError(err.to_string()))?;
        Ok(RedisBreakers {
            pool,
            base: format!("{{{prefix}}}:breaker:"),
            settings,
            heard: Mutex::new(HashMap::new()),
        })
    }

    /// Closes the connections.
    pub async fn close(&self) {
        if let Err(err) = self.pool.quit().await {
            tracing::debug!(error = %err, "closing the breaker store's Redis connections");
        }
    }

    /// Runs `op` of `breaker.lua` (`hold`: the hold-off of `hold_off`, else zero).
    async fn run(
        &self,
        backend: &str,
        op: &str,
        holder: &str,
        admission: &str,
        outcome: &str,
        hold: Duration,
    ) -> Result<Answer, BreakerError> {
        let millis = |duration: Duration| duration.as_millis().max(1).to_string();
        let reply: Vec<Value> = self
            .pool
            .eval(
                include_str!("breaker.lua"),
                vec![format!("{}{backend}", self.base)],
                vec![
                    op.to_owned(),
                    holder.to_owned(),
                    self.settings.failures.max(1).to_string(),
                    millis(self.settings.open_for),
                    millis(self.settings.trial_lease),
                    admission.to_owned(),
                    outcome.to_owned(),
                    hold.as_millis().to_string(),
                ],
            )
            .await
            .map_err(|err| {
                BreakerError(format!("Redis failed while running a breaker {op}: {err}"))
            })?;
        let text = |n: usize| {
            reply
                .get(n)
                .and_then(|value| value.as_string())
                .unwrap_or_default()
        };
        let answer = Answer {
            before: state_of(&text(0))?,
            after: state_of(&text(1))?,
            word: text(2),
            ms: reply.get(3).and_then(Value::as_u64).unwrap_or(0),
            failures: reply.get(4).and_then(Value::as_u64).unwrap_or(0),
        };
        self.heard.lock().insert(
            backend.to_owned(),
            Heard {
                closed: answer.after == BreakerState::Closed,
                failures: answer.failures,
            },
        );
        Ok(answer)
    }

    fn heard(&self, backend: &str) -> Option<Heard> {
        self.heard.lock().get(backend).copied()
    }
}

#[async_trait::async_trait]
impl BreakerStore for RedisBreakers {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn readiness(&self, backend: &str) -> Result<Readiness, BreakerError> {
        let answer = self
            .run(backend, "readiness", "", "", "", Duration::ZERO)
            .await?;
        match answer.word.as_str() {
            "closed" => Ok(Readiness::Closed),
            "held_off" => Ok(Readiness::HeldOff(Duration::from_millis(answer.ms))),
            "open" => Ok(Readiness::Open(Duration::from_millis(answer.ms))),
            "trial_running" => Ok(Readiness::TrialRunning),
            "trial_due" => Ok(Readiness::TrialDue),
            other => Err(BreakerError(format!(
                "unexpected breaker readiness {other:?}"
            ))),
        }
    }

    async fn admit(
        &self,
        backend: &str,
        holder: &str,
    ) -> Result<(Admission, Option<Transition>), BreakerError> {
        let answer = self
            .run(backend, "admit", holder, "", "", Duration::ZERO)
            .await?;
        let admission = match answer.word.as_str() {
            "allowed" => Admission::Allowed,
            "trial" => Admission::Trial,
            "rejected" => Admission::Rejected,
            other => {
                return Err(BreakerError(format!(
                    "unexpected breaker admission {other:?}"
                )));
            }
        };
        Ok((admission, answer.transition()))
    }

    async fn hold_off(&self, backend: &str, long: Duration) -> Result<(), BreakerError> {
        self.run(backend, "hold_off", "", "", "", long)
            .await
            .map(|_| ())
    }

    async fn record(
        &self,
        backend: &str,
        holder: &str,
        admission: Admission,
        outcome: CallOutcome,
    ) -> Result<Option<Transition>, BreakerError> {
        if (admission, outcome) == (Admission::Allowed, CallOutcome::Success)
            && self
                .heard(backend)
                .is_some_and(|heard| heard.closed && heard.failures == 0)
        {
            return Ok(None);
        }
        let admission = match admission {
            Admission::Allowed => "allowed",
            Admission::Trial => "trial",
            Admission::Rejected => return Ok(None),
        };
        let outcome = match outcome {
            CallOutcome::Success => "success",
            CallOutcome::Failure => "failure",
            CallOutcome::Neutral => "neutral",
        };
        Ok(self
            .run(
                backend,
                "record",
                holder,
                admission,
                outcome,
                Duration::ZERO,
            )
            .await?
            .transition())
    }
}
