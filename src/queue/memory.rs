//! The in-process queue store of the embedded default: a [`QueueBook`] behind a lock.

use super::{Enqueued, FeedItem, QueueError, QueueStore, Rebuilt};
use crate::domain::queue_book::{QueueBook, QueueChange, QueuedJob};
use crate::domain::routing::{Offer, Routing};
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::broadcast;
use uuid::Uuid;

#[derive(Default)]
struct State {
    book: QueueBook,
    last_ticket: i64,
    pending: HashMap<Arc<str>, HashSet<Uuid>>,
    last_moved: Option<DateTime<Utc>>,
}

/// The in-process queue. Every operation holds the lock for a few pointer moves, and feed
/// changes are sent under it, so the feed's order is the queue's order.
pub struct MemoryQueue {
    state: Mutex<State>,
    feed: broadcast::Sender<FeedItem>,
}

impl Default for MemoryQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryQueue {
    /// An empty queue.
    pub fn new() -> Self {
        let (feed, _) = broadcast::channel(1 << 16);
        MemoryQueue {
            state: Mutex::new(State::default()),
            feed,
        }
    }

    fn send(&self, change: QueueChange) {
        // No subscriber yet is fine: the mirror loads a snapshot when it subscribes.
        let _ = self.feed.send(FeedItem::Change(change));
    }
}

#[async_trait::async_trait]
impl QueueStore for MemoryQueue {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn enqueue(
        &self,
        id: Uuid,
        user_id: &str,
        model: Option<&str>,
        max_pending: u32,
    ) -> Result<Enqueued, QueueError> {
        let mut state = self.state.lock();
        let pending = state.pending.get(user_id).map_or(0, HashSet::len);
        if pending >= max_pending as usize {
            return Err(QueueError::TooManyPending { limit: max_pending });
        }
        state.last_ticket += 1;
        let ticket = state.last_ticket;
        let user: Arc<str> = Arc::from(user_id);
        let job = QueuedJob {
            id,
            user_id: user.clone(),
            ticket,
            model: model.map(Arc::from),
        };
        let position = state
            .book
            .insert(job.clone())
            .ok_or(QueueError::AlreadyQueued { id })?;
        state.pending.entry(user).or_default().insert(id);
        self.send(QueueChange::Added(job));
        Ok(Enqueued { ticket, position })
    }

    async fn pop(&self, offer: &Offer) -> Result<Option<QueuedJob>, QueueError> {
        let mut state = self.state.lock();
        let job = state.book.pop_for(offer);
        if let Some(job) = &job {
            state.last_moved = Some(Utc::now());
            self.send(QueueChange::Removed { id: job.id });
        }
        Ok(job)
    }

    fn set_routing(&self, routing: Arc<Routing>) {
        self.state.lock().book.set_routing(routing);
    }

    async fn requeue(&self, job: &QueuedJob) -> Result<(), QueueError> {
        let mut state = self.state.lock();
        if state.book.insert(job.clone()).is_some() {
            self.send(QueueChange::Added(job.clone()));
        }
        Ok(())
    }

    async fn remove(&self, id: Uuid) -> Result<bool, QueueError> {
        let mut state = self.state.lock();
        let removed = state.book.remove(&id).is_some();
        if removed {
            self.send(QueueChange::Removed { id });
        }
        Ok(removed)
    }

    /// In process, an enqueue always has an outcome: nothing lands later.
    async fn abort(&self, id: Uuid, user_id: &str) -> Result<bool, QueueError> {
        let removed = self.remove(id).await?;
        self.release(user_id, id).await?;
        Ok(removed)
    }

    async fn aborted(&self, _id: Uuid) -> Result<bool, QueueError> {
        Ok(false)
    }

    async fn release(&self, user_id: &str, id: Uuid) -> Result<(), QueueError> {
        let mut state = self.state.lock();
        if let Some(set) = state.pending.get_mut(user_id) {
            set.remove(&id);
            if set.is_empty() {
                state.pending.remove(user_id);
            }
        }
        Ok(())
    }

    async fn pending_of(&self, user_id: &str) -> Result<Vec<Uuid>, QueueError> {
        let state = self.state.lock();
        Ok(state
            .pending
            .get(user_id)
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default())
    }

    async fn position(&self, id: Uuid) -> Result<Option<u32>, QueueError> {
        Ok(self.state.lock().book.position(&id))
    }

    async fn depth(&self) -> Result<u64, QueueError> {
        Ok(self.state.lock().book.len() as u64)
    }

    async fn snapshot(&self) -> Result<Vec<QueuedJob>, QueueError> {
        Ok(self.state.lock().book.jobs().cloned().collect())
    }

    async fn last_moved(&self) -> Result<Option<DateTime<Utc>>, QueueError> {
        Ok(self.state.lock().last_moved)
    }

    async fn mark_moved(&self, at: DateTime<Utc>) -> Result<(), QueueError> {
        let mut state = self.state.lock();
        state.last_moved = state.last_moved.max(Some(at));
        Ok(())
    }

    async fn rebuild(
        &self,
        queued: Vec<QueuedJob>,
        pending: Vec<(String, Uuid)>,
        max_ticket: i64,
    ) -> Result<Rebuilt, QueueError> {
        let mut state = self.state.lock();
        let mut added = 0;
        for job in queued {
            state.last_ticket = state.last_ticket.max(job.ticket);
            if state.book.insert(job.clone()).is_some() {
                added += 1;
                self.send(QueueChange::Added(job));
            }
        }
        state.last_ticket = state.last_ticket.max(max_ticket);
        let mut sets: HashMap<Arc<str>, HashSet<Uuid>> = HashMap::new();
        for (user, id) in pending {
            sets.entry(Arc::from(user.as_str())).or_default().insert(id);
        }
        state.pending = sets;
        Ok(Rebuilt {
            added,
            queued: state.book.len(),
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<FeedItem> {
        self.feed.subscribe()
    }

    async fn ping(&self) -> Result<(), QueueError> {
        Ok(())
    }
}
