//! The per-user command rate (`WS_COMMANDS_PER_SECOND`): every WebSocket frame a user sends,
//! and every WebSocket they open, takes one token from the user's bucket; the bucket refills at
//! the configured rate and holds twice as many (the burst). Shared by all of the user's
//! sessions in this process, so more tabs do not mean more commands.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// The limiter.
pub struct CommandRate {
    limiter: DefaultKeyedRateLimiter<Arc<str>>,
    clock: DefaultClock,
    per_second: u32,
}

impl CommandRate {
    /// `per_second` commands a second per user, bursts of twice that.
    pub fn new(per_second: u32) -> CommandRate {
        let rate = NonZeroU32::new(per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = rate.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
        CommandRate {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            clock: DefaultClock::default(),
            per_second: rate.get(),
        }
    }

    /// The configured rate.
    pub fn per_second(&self) -> u32 {
        self.per_second
    }

    /// Takes a token of `user`'s bucket, or says how long until one is there.
    pub fn take(&self, user: &Arc<str>) -> Result<(), Duration> {
        self.limiter
            .check_key(user)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets the buckets of users who have been quiet long enough for theirs to be full
    /// again (memory grows with active users only).
    pub fn forget_quiet(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_gets_a_burst_then_the_rate_and_others_are_unaffected() {
        let rate = CommandRate::new(5);
        let (alice, bob): (Arc<str>, Arc<str>) = (Arc::from("alice"), Arc::from("bob"));
        for _ in 0..10 {
            assert!(rate.take(&alice).is_ok(), "a burst of twice the rate");
        }
        let wait = rate.take(&alice).expect_err("past the burst");
        assert!(wait <= Duration::from_millis(200), "{wait:?}");
        assert!(rate.take(&bob).is_ok(), "bob has his own bucket");
    }
}
