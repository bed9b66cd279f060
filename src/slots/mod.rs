//! Where Forge backend slots are counted, so a backend runs at most its `FORGE_SLOTS` jobs at
//! a time however many processes list it.
//!
//! A slot is held by one slot worker, from before it takes its first job until it stops (or
//! hands a job to another backend). [`MemorySlots`] counts them in this process (the embedded default: one process
//! owns its backends). [`redis::RedisSlots`] counts them in Redis for every process that shares
//! it: a slot there is a lease that lapses unless its holder keeps it (a killed process's slots
//! come free after one lease).

pub mod redis;

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Why a slot store could not answer.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct SlotError(pub String);

/// Counts the slots of every backend.
#[async_trait::async_trait]
pub trait SlotStore: Send + Sync {
    /// `memory` or `redis`.
    fn kind(&self) -> &'static str;

    /// Takes one of the `slots` slots of `backend` for `holder` for `lease`, or keeps the one
    /// `holder` has for another `lease`. Returns whether `holder` has a slot now (false: all
    /// are held by others).
    async fn hold(
        &self,
        backend: &str,
        holder: &str,
        slots: u32,
        lease: Duration,
    ) -> Result<bool, SlotError>;

    /// Gives back `holder`'s slot of `backend`, if it has one.
    async fn release(&self, backend: &str, holder: &str) -> Result<(), SlotError>;
}

/// Slots counted in this process. Leases never lapse: the process that holds a slot is the one
/// that would have to be alive to count it.
#[derive(Default)]
pub struct MemorySlots {
    held: Mutex<HashMap<String, HashSet<String>>>,
}

#[async_trait::async_trait]
impl SlotStore for MemorySlots {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn hold(
        &self,
        backend: &str,
        holder: &str,
        slots: u32,
        _lease: Duration,
    ) -> Result<bool, SlotError> {
        let mut held = self.held.lock();
        let holders = held.entry(backend.to_owned()).or_default();
        if holders.contains(holder) {
            return Ok(true);
        }
        if holders.len() >= slots as usize {
            return Ok(false);
        }
        holders.insert(holder.to_owned());
        Ok(true)
    }

    async fn release(&self, backend: &str, holder: &str) -> Result<(), SlotError> {
        if let Some(holders) = self.held.lock().get_mut(backend) {
            holders.remove(holder);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_backend_gives_at_most_its_slots_and_a_release_frees_one() {
        let slots = MemorySlots::default();
        let lease = Duration::from_secs(30);
        assert!(slots.hold("a", "w1", 2, lease).await.unwrap());
        assert!(slots.hold("a", "w2", 2, lease).await.unwrap());
        assert!(!slots.hold("a", "w3", 2, lease).await.unwrap());
        assert!(slots.hold("a", "w1", 2, lease).await.unwrap(), "kept");
        assert!(
            slots.hold("b", "w3", 2, lease).await.unwrap(),
            "per backend"
        );
        slots.release("a", "w2").await.unwrap();
        assert!(slots.hold("a", "w3", 2, lease).await.unwrap());
    }
}
