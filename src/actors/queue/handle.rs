//! The typed handle to the queue: the actor's messages and direct reads of its store.

use super::{MirrorPositions, NextJob, OfferNow, Pause, QueueActor, Rebuild, SetRouting, rebuild};
use crate::db::Database;
use crate::domain::eta::EtaModel;
use crate::domain::queue_book::QueuedJob;
use crate::domain::routing::Routing;
use crate::events::registry::UserWatch;
use crate::queue::{Enqueued, QueueError, QueueStore};
use actix::prelude::*;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use std::sync::Arc;
use tokio::sync::oneshot;
use uuid::Uuid;

/// The typed handle to the queue.
#[derive(Clone)]
pub struct QueueHandle {
    addr: Addr<QueueActor>,
    store: Arc<dyn QueueStore>,
    db: Database,
    eta: Arc<Mutex<EtaModel>>,
}

impl QueueHandle {
    /// Wraps the actor's address, the store it owns (for enqueues and direct reads), the
    /// database (to heal the store on an enqueue) and its ETA model.
    pub fn new(
        addr: Addr<QueueActor>,
        store: Arc<dyn QueueStore>,
        db: Database,
        eta: Arc<Mutex<EtaModel>>,
    ) -> Self {
        QueueHandle {
            addr,
            store,
            db,
            eta,
        }
    }

    /// Queues a job if the user has fewer than `max_pending` pending jobs. The store does it
    /// atomically, straight from the caller (the queue actor keeps no state an enqueue needs;
    /// the change comes back to it through the store's feed). Two things are healed on the way,
    /// once each: pending slots leaked by a crash between a terminal write and its release,
    /// and a store that lost its state (rebuilt from the database).
    pub async fn enqueue(
        &self,
        id: Uuid,
        user_id: &str,
        model: Option<&str>,
        max_pending: u32,
    ) -> Result<Enqueued, QueueError> {
        let (store, db) = (&self.store, &self.db);
        let mut healed = false;
        let mut rebuilt = false;
        loop {
            match store.enqueue(id, user_id, model, max_pending).await {
                Err(QueueError::TooManyPending { .. }) if !healed => {
                    healed = true;
                    let counted = store.pending_of(user_id).await?;
                    let finished = db
                        .terminal_among(&counted)
                        .await
                        .map_err(QueueError::database)?;
                    if finished.is_empty() {
                        return Err(QueueError::TooManyPending { limit: max_pending });
                    }
                    for id in finished {
                        store.release(user_id, id).await?;
                    }
                }
                Err(QueueError::NeedsRebuild) if !rebuilt => {
                    rebuilt = true;
                    let started = std::time::Instant::now();
                    let result = rebuild::rebuild_from_db(&**store, db).await?;
                    tracing::warn!(
                        added = result.added,
                        took = ?started.elapsed(),
                        "queue store had lost its state; rebuilt from the database"
                    );
                }
                other => return other,
            }
        }
    }

    /// Undoes an enqueue whose outcome is unknown (see [`QueueStore::abort`]), in the
    /// background: tried until it lands (every second, for up to a minute), since the store
    /// may be slow or away right now.
    pub fn abort_enqueue(&self, id: Uuid, user_id: &str) {
        let (store, user) = (self.store.clone(), user_id.to_owned());
        tokio::spawn(async move {
            for attempt in 0..60 {
                if attempt > 0 {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                match store.abort(id, &user).await {
                    Ok(landed) => {
                        if landed {
                            tracing::info!(job = %id, "an enqueue answered as failed had landed; it is undone");
                        }
                        return;
                    }
                    Err(err) => {
                        tracing::debug!(job = %id, error = %err, "could not undo an enqueue yet")
                    }
                }
            }
            tracing::warn!(job = %id, "could not undo an enqueue whose outcome is unknown; if it landed, its worker drops it");
        });
    }

    /// Whether the enqueue of `id` was undone.
    pub async fn aborted(&self, id: Uuid) -> bool {
        self.store.aborted(id).await.unwrap_or(false)
    }

    /// Waits for the next job a backend may run (`offer` says what it offers whenever asked);
    /// `None` when the queue actor stopped.
    pub async fn next_job(&self, offer: OfferNow) -> Option<QueuedJob> {
        let (reply, answer) = oneshot::channel();
        self.addr.do_send(NextJob { reply, offer });
        answer.await.ok()
    }

    /// What the backends offer changed: the store and this process's mirror count positions
    /// by the new routing.
    pub fn set_routing(&self, routing: Arc<Routing>) {
        self.store.set_routing(routing.clone());
        self.addr.do_send(SetRouting(routing));
    }

    /// Removes a queued job (cancel, stuck). Returns whether it was queued.
    pub async fn remove(&self, id: Uuid) -> Result<bool, QueueError> {
        self.store.remove(id).await
    }

    /// Frees the job's slot in its owner's pending cap.
    pub async fn release(&self, user_id: &str, id: Uuid) -> Result<(), QueueError> {
        self.store.release(user_id, id).await
    }

    /// Puts a popped job back (a worker that could not start it).
    pub async fn requeue(&self, job: &QueuedJob) -> Result<(), QueueError> {
        self.store.requeue(job).await
    }

    /// The job's live position, read from the queue itself.
    pub async fn position(&self, id: Uuid) -> Result<Option<u32>, QueueError> {
        self.store.position(id).await
    }

    /// The live positions of several jobs at once (one round trip on Redis).
    pub async fn positions(&self, ids: &[Uuid]) -> Result<Vec<Option<u32>>, QueueError> {
        self.store.positions(ids).await
    }

    /// Jobs queued.
    pub async fn depth(&self) -> Result<u64, QueueError> {
        self.store.depth().await
    }

    /// When the queue last moved.
    pub async fn last_moved(&self) -> Result<Option<DateTime<Utc>>, QueueError> {
        self.store.last_moved().await
    }

    /// Records that a running job advanced (the queue is moving).
    pub async fn mark_moved(&self) -> Result<(), QueueError> {
        self.store.mark_moved(Utc::now()).await
    }

    /// Whether the store answers.
    pub async fn ping(&self) -> Result<(), QueueError> {
        self.store.ping().await
    }

    /// Reports a finished job's processing time (for ETAs).
    pub fn finished(&self, seconds: f64) {
        self.eta.lock().record(seconds);
    }

    /// The ETA model as it stands.
    pub fn eta(&self) -> EtaModel {
        *self.eta.lock()
    }

    /// Stops handing out jobs; returns once the actor has taken note.
    pub async fn pause(&self) {
        let _ = self.addr.send(Pause).await;
    }

    /// Rebuilds from the database now.
    pub fn rebuild(&self) {
        self.addr.do_send(Rebuild);
    }

    /// The positions of `user`'s queued jobs in this process's mirror, and the mirror's
    /// version (`None` if the actor stopped).
    pub async fn mirror_positions(&self, user: &str) -> Option<(u64, Vec<(Uuid, u32)>)> {
        self.addr
            .send(MirrorPositions {
                user: user.to_owned(),
            })
            .await
            .ok()
    }

    /// Where the session registry tells which users are connected.
    pub fn watch_recipient(&self) -> Recipient<UserWatch> {
        self.addr.clone().recipient()
    }

    /// The store's kind (`memory` or `redis`).
    pub fn kind(&self) -> &'static str {
        self.store.kind()
    }
}
