//! The queue store: the order of queued jobs, behind one trait with two implementations.
//!
//! [`memory::MemoryQueue`] is the embedded default; [`redis::RedisQueue`] shares one queue
//! between gateway processes. Both give exact 1-based positions from the queue itself, check
//! the per-user pending cap atomically with the enqueue, and publish a totally ordered change
//! feed from which each process mirrors the queue to push new positions to its sessions.

pub mod memory;
pub mod redis;

use crate::domain::queue_book::{QueueChange, QueuedJob};
use crate::domain::routing::{Offer, Routing};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use tokio::sync::broadcast;
use uuid::Uuid;

/// A job accepted into the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enqueued {
    /// Its ticket from the atomic counter.
    pub ticket: i64,
    /// Its 1-based position at that moment.
    pub position: u32,
}

/// Why the queue refused or failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum QueueError {
    /// The user already has `limit` pending jobs.
    #[error("the user already has {limit} pending jobs")]
    TooManyPending {
        /// The cap.
        limit: u32,
    },
    /// The store lost its state (a Redis restart): rebuild from the database, then retry.
    #[error("the queue store lost its state and must be rebuilt")]
    NeedsRebuild,
    /// Redis failed or did not answer in time, or its settings cannot work.
    #[error(transparent)]
    Redis(#[from] crate::redis_client::RedisError),
    /// Redis answered what the queue's scripts never return (keys written by something else).
    #[error("unexpected Redis reply to {doing}: {reply}")]
    Unexpected {
        /// What the store was doing.
        doing: &'static str,
        /// The reply, as debug text.
        reply: String,
    },
    /// The enqueue was undone before it reached the store (see [`QueueStore::abort`]).
    #[error("the enqueue of {id} was aborted")]
    Aborted {
        /// The job.
        id: uuid::Uuid,
    },
    /// The job is in the queue already (ids are fresh UUIDs: a caller's bug).
    #[error("job {id} is queued already")]
    AlreadyQueued {
        /// The job.
        id: uuid::Uuid,
    },
    /// Redis answers, but refused a write lately (see `domain::health`).
    #[error("writes are failing: {0}")]
    WritesFailing(String),
    /// The database read behind a rebuild or a slot check failed.
    #[error("reading the database failed: {0}")]
    Database(#[source] std::sync::Arc<dyn std::error::Error + Send + Sync>),
    /// The queue actor stopped (the gateway is shutting down).
    #[error("the queue actor stopped")]
    Stopped,
}

impl QueueError {
    /// A failed database read, its cause kept.
    pub fn database(err: impl std::error::Error + Send + Sync + 'static) -> QueueError {
        QueueError::Database(std::sync::Arc::new(err))
    }
}

/// One entry of the change feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedItem {
    /// The next change, in the store's own order.
    Change(QueueChange),
    /// Changes were lost (a lagging subscriber, a dropped connection): reload the mirror from
    /// [`QueueStore::snapshot`].
    Gap,
}

/// The result of a rebuild.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rebuilt {
    /// Jobs that were missing and were put back.
    pub added: usize,
    /// Jobs queued afterwards.
    pub queued: usize,
}

/// The queue's storage.
#[async_trait::async_trait]
pub trait QueueStore: Send + Sync {
    /// `memory` or `redis`.
    fn kind(&self) -> &'static str;

    /// Draws a ticket and queues `id` if `user_id` has fewer than `max_pending` pending jobs
    /// (queued or processing); the check and the enqueue are one atomic step. `model`: the
    /// model the job asks for (only a backend that offers it takes the job).
    async fn enqueue(
        &self,
        id: Uuid,
        user_id: &str,
        model: Option<&str>,
        max_pending: u32,
    ) -> Result<Enqueued, QueueError>;

    /// Undoes an enqueue whose outcome is unknown (its reply never came): if it landed, the
    /// job leaves the queue and its owner's pending cap; if it lands later, it is refused
    /// ([`QueueError::Aborted`]). Idempotent. Returns whether the job had landed.
    async fn abort(&self, id: Uuid, user_id: &str) -> Result<bool, QueueError>;

    /// Whether the enqueue of `id` was aborted (a worker that popped it drops it at once).
    async fn aborted(&self, id: Uuid) -> Result<bool, QueueError>;

    /// Takes the first job a backend with `offer` may run (see [`crate::domain::routing`]);
    /// each job is handed to exactly one caller, in every process.
    async fn pop(&self, offer: &Offer) -> Result<Option<QueuedJob>, QueueError>;

    /// What the backends offer, from which positions are counted (every process sets the
    /// same, from the same backends' answers).
    fn set_routing(&self, routing: Arc<Routing>);

    /// Puts a popped job back with its ticket (a worker that could not start it).
    async fn requeue(&self, job: &QueuedJob) -> Result<(), QueueError>;

    /// Removes a queued job (cancelled, or marked stuck). Returns whether it was queued.
    async fn remove(&self, id: Uuid) -> Result<bool, QueueError>;

    /// The job is no longer pending (it reached a terminal state): frees its slot in the
    /// user's pending cap.
    async fn release(&self, user_id: &str, id: Uuid) -> Result<(), QueueError>;

    /// The ids counted against the user's pending cap.
    async fn pending_of(&self, user_id: &str) -> Result<Vec<Uuid>, QueueError>;

    /// The job's live 1-based position, if queued (counted as [`crate::domain::routing`]
    /// says).
    async fn position(&self, id: Uuid) -> Result<Option<u32>, QueueError>;

    /// The live positions of several jobs, in the order of `ids` (one round trip where the
    /// store is remote).
    async fn positions(&self, ids: &[Uuid]) -> Result<Vec<Option<u32>>, QueueError> {
        let mut positions = Vec::with_capacity(ids.len());
        for id in ids {
            positions.push(self.position(*id).await?);
        }
        Ok(positions)
    }

    /// Number of queued jobs.
    async fn depth(&self) -> Result<u64, QueueError>;

    /// Every queued job in order.
    async fn snapshot(&self) -> Result<Vec<QueuedJob>, QueueError>;

    /// When the queue last moved: a job left it for a backend, or a running job advanced.
    async fn last_moved(&self) -> Result<Option<DateTime<Utc>>, QueueError>;

    /// Records that work advanced (a running job made progress), so jobs waiting behind it
    /// are not mistaken for stuck ones.
    async fn mark_moved(&self, at: DateTime<Utc>) -> Result<(), QueueError>;

    /// Puts back every job the database holds as queued that the store lacks (in ticket order,
    /// never twice), resets the per-user pending sets from `pending`, and makes sure new
    /// tickets come after `max_ticket`.
    async fn rebuild(
        &self,
        queued: Vec<QueuedJob>,
        pending: Vec<(String, Uuid)>,
        max_ticket: i64,
    ) -> Result<Rebuilt, QueueError>;

    /// A receiver of the change feed.
    fn subscribe(&self) -> broadcast::Receiver<FeedItem>;

    /// Whether the store answers.
    async fn ping(&self) -> Result<(), QueueError>;
}
