//! Slots counted in Redis, shared by every process that uses the same Redis and key prefix.
//!
//! Each backend's slots are one sorted set, `{prefix}:slots:<backend>`, of holders scored by
//! when their lease ends; `hold.lua` drops ended leases, then takes or keeps one, atomically.

use super::{SlotError, SlotStore};
use crate::redis_client::{check_prefix, connect_pool};
use fred::prelude::{ClientLike, LuaInterface, Pool, SortedSetsInterface};
use std::time::Duration;

/// Connections of the slot store: slot workers poll while they wait, one short script each.
const POOL_SIZE: usize = 2;

/// Slots in Redis.
pub struct RedisSlots {
    pool: Pool,
    base: String,
}

impl RedisSlots {
    /// Connects to `url`; every key starts with `{prefix}:slots:`.
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisSlots, SlotError> {
        check_prefix(prefix).map_err(|err| SlotError(err.to_string()))?;
        let pool = connect_pool(url, POOL_SIZE, "slots")
            .await
            .map_err(|err| SlotError(err.to_string()))?;
        Ok(RedisSlots {
            pool,
            base: format!("{{{prefix}}}:slots:"),
        })
    }

    /// Closes the connections.
    pub async fn close(&self) {
        if let Err(err) = self.pool.quit().await {
            tracing::debug!(error = %err, "closing the slot store's Redis connections");
        }
    }

    fn key(&self, backend: &str) -> String {
        format!("{}{backend}", self.base)
    }
}

#[async_trait::async_trait]
impl SlotStore for RedisSlots {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn hold(
        &self,
        backend: &str,
        holder: &str,
        slots: u32,
        lease: Duration,
    ) -> Result<bool, SlotError> {
        let held: i64 = self
            .pool
            .eval(
                include_str!("hold.lua"),
                vec![self.key(backend)],
                vec![
                    holder.to_owned(),
                    slots.to_string(),
                    (lease.as_millis().max(1) as u64).to_string(),
                ],
            )
            .await
            .map_err(|err| SlotError(format!("Redis failed while taking a slot: {err}")))?;
        Ok(held == 1)
    }

    async fn release(&self, backend: &str, holder: &str) -> Result<(), SlotError> {
        let _: i64 = self
            .pool
            .zrem(self.key(backend), holder)
            .await
            .map_err(|err| SlotError(format!("Redis failed while giving a slot back: {err}")))?;
        Ok(())
    }
}
