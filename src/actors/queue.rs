//! `QueueActor`: owns the queue order and positions.
//!
//! It wraps the [`QueueStore`] (in-process or Redis), hands jobs to idle backends, keeps a
//! mirror of the queue fed by the store's change feed and pushes `job.position` to the owner
//! of every job whose position changed, rebuilds the queue from the database (at start and
//! whenever the store is found empty or lost while the database holds queued jobs), and
//! estimates ETAs from recent processing times.

use crate::db::Database;
use crate::domain::eta::EtaModel;
use crate::domain::outages::Outages;
use crate::domain::queue_book::{QueueBook, QueueChange, QueuedJob};
use crate::events::SessionHub;
use crate::metrics::Metrics;
use crate::queue::{Enqueued, FeedItem, QueueError, QueueStore};
use actix::prelude::*;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, oneshot};
use uuid::Uuid;

/// How often idle backends look at the queue even without a feed signal (another process may
/// have queued a job whose signal was lost), and how often the store is checked for a lost queue.
const POLL_EVERY: Duration = Duration::from_millis(500);
const AUDIT_EVERY: Duration = Duration::from_secs(5);
/// Most pops in flight at once.
const MAX_CONCURRENT_POPS: usize = 16;
/// Position pushes of a burst of queue changes are coalesced to one per this period.
const POSITION_FLUSH_EVERY: Duration = Duration::from_millis(25);

/// The queue actor.
pub struct QueueActor {
    store: Arc<dyn QueueStore>,
    db: Database,
    hub: SessionHub,
    metrics: Arc<Metrics>,
    outages: Arc<Outages>,
    mirror: QueueBook,
    waiters: VecDeque<oneshot::Sender<QueuedJob>>,
    pops_in_flight: usize,
    eta: Arc<Mutex<EtaModel>>,
    rebuilding: bool,
    paused: bool,
    /// Changes that arrived while the mirror reloads, replayed on the reloaded mirror (a
    /// change the snapshot already holds applies as a no-op).
    reload_backlog: Option<Vec<QueueChange>>,
    /// The position each queued job's owner was last told.
    pushed: HashMap<Uuid, u32>,
    /// Positions from this index on may have changed since the last push.
    dirty_from: Option<usize>,
    flush_scheduled: bool,
    last_flush: Instant,
}

impl QueueActor {
    /// A queue actor over `store`, rebuilding from `db`, pushing positions through `hub`, its
    /// ETAs from `eta` (which [`QueueHandle::finished`] feeds).
    pub fn new(
        store: Arc<dyn QueueStore>,
        db: Database,
        hub: SessionHub,
        metrics: Arc<Metrics>,
        outages: Arc<Outages>,
        eta: Arc<Mutex<EtaModel>>,
    ) -> Self {
        QueueActor {
            store,
            db,
            hub,
            metrics,
            outages,
            mirror: QueueBook::new(),
            waiters: VecDeque::new(),
            pops_in_flight: 0,
            eta,
            rebuilding: false,
            paused: false,
            reload_backlog: None,
            pushed: HashMap::new(),
            dirty_from: None,
            flush_scheduled: false,
            last_flush: Instant::now(),
        }
    }

    /// Hands queued jobs to waiting backends: one pop in flight per waiting backend, at most
    /// [`MAX_CONCURRENT_POPS`].
    fn dispatch(&mut self, ctx: &mut Context<Self>) {
        self.waiters.retain(|waiter| !waiter.is_closed());
        if self.paused {
            return;
        }
        // As many pops in flight as backends wait (a pop is a round trip to Redis).
        let wanted = self.waiters.len().min(MAX_CONCURRENT_POPS);
        while self.pops_in_flight < wanted {
            self.pops_in_flight += 1;
            let store = self.store.clone();
            ctx.spawn(
                async move { store.pop().await }
                    .into_actor(self)
                    .map(|popped, act, ctx| {
                        act.pops_in_flight -= 1;
                        match popped {
                            Ok(Some(job)) => {
                                act.hand_out(job);
                                act.dispatch(ctx);
                            }
                            // Empty: the next enqueue (or the poll) wakes the waiters again.
                            Ok(None) => {}
                            Err(err) => {
                                act.outages.queue_failed(Utc::now());
                                tracing::warn!(error = %err, "queue pop failed; retrying shortly")
                            }
                        }
                    }),
            );
        }
    }

    /// Gives a popped job to the first backend still waiting, or puts it back if none is.
    fn hand_out(&mut self, mut job: QueuedJob) {
        while let Some(waiter) = self.waiters.pop_front() {
            match waiter.send(job) {
                Ok(()) => return,
                Err(returned) => job = returned,
            }
        }
        // Every waiter left (shutdown): put it back where it was.
        let store = self.store.clone();
        actix::spawn(async move {
            if let Err(err) = store.requeue(&job).await {
                tracing::error!(job = %job.id, error = %err, "could not put a popped job back");
            }
        });
    }

    /// Applies a feed change to the mirror and schedules a position push. Pushes are
    /// coalesced: a burst of pops moves a waiting job several places but its owner gets one
    /// `job.position` with where it is now, at most every [`POSITION_FLUSH_EVERY`]; the first
    /// change after a quiet period goes out at once.
    fn apply_change(&mut self, change: QueueChange, ctx: &mut Context<Self>) {
        let added = match &change {
            QueueChange::Added(job) => Some(job.id),
            QueueChange::Removed { id } => {
                self.pushed.remove(id);
                None
            }
            QueueChange::Reset(_) => {
                self.dirty_from = Some(0);
                None
            }
        };
        let updates = self.mirror.apply(change);
        if let Some(first) = updates.first() {
            let from = first.position as usize - 1;
            self.dirty_from = Some(self.dirty_from.map_or(from, |dirty| dirty.min(from)));
        }
        if let Some(id) = added {
            // Its `job.queued` event carries this position already.
            if let Some(update) = updates.iter().find(|update| update.id == id) {
                self.pushed.insert(id, update.position);
            }
        }
        self.metrics.queue_depth.set(self.mirror.len() as i64);
        self.schedule_flush(ctx);
        if added.is_some() {
            self.dispatch(ctx);
        }
    }

    fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        if self.flush_scheduled || self.dirty_from.is_none() {
            return;
        }
        let since = self.last_flush.elapsed();
        if since >= POSITION_FLUSH_EVERY {
            self.flush_positions();
        } else {
            self.flush_scheduled = true;
            ctx.run_later(POSITION_FLUSH_EVERY - since, |act, _| {
                act.flush_scheduled = false;
                act.flush_positions();
            });
        }
    }

    /// Pushes the position of every job that moved since its owner last heard of it.
    fn flush_positions(&mut self) {
        let Some(from) = self.dirty_from.take() else {
            return;
        };
        self.last_flush = Instant::now();
        if from == 0 {
            self.pushed.retain(|id, _| self.mirror.contains(id));
        }
        for update in self.mirror.positions_from(from) {
            if self.pushed.get(&update.id) == Some(&update.position) {
                continue;
            }
            let eta = self.eta.lock().for_position(update.position);
            self.hub
                .deliver_position(&update.user_id, update.id, update.position, eta);
            self.pushed.insert(update.id, update.position);
        }
    }

    /// Reloads the mirror from the store (at start, and after a gap in the feed). Changes that
    /// arrive meanwhile are kept and replayed on the reloaded mirror, so none is lost.
    fn reload_mirror(&mut self, ctx: &mut Context<Self>) {
        if self.reload_backlog.is_some() {
            return;
        }
        self.reload_backlog = Some(Vec::new());
        let store = self.store.clone();
        ctx.spawn(async move { store.snapshot().await }.into_actor(self).map(
            |snapshot, act, ctx| {
                let backlog = act.reload_backlog.take().unwrap_or_default();
                match snapshot {
                    Ok(jobs) => act.apply_change(QueueChange::Reset(jobs), ctx),
                    Err(err) => {
                        tracing::warn!(error = %err, "could not reload the queue mirror; retrying");
                        ctx.run_later(Duration::from_secs(1), |act, ctx| act.reload_mirror(ctx));
                    }
                }
                for change in backlog {
                    act.apply_change(change, ctx);
                }
            },
        ));
    }

    fn rebuild(&mut self, ctx: &mut Context<Self>, reason: &'static str) {
        if self.rebuilding {
            return;
        }
        self.rebuilding = true;
        let (store, db) = (self.store.clone(), self.db.clone());
        let work = async move { rebuild_from_db(&*store, &db).await };
        ctx.spawn(work.into_actor(self).map(move |result, act, ctx| {
            act.rebuilding = false;
            match result {
                Ok(rebuilt) if rebuilt.added > 0 => {
                    tracing::info!(
                        reason,
                        added = rebuilt.added,
                        queued = rebuilt.queued,
                        "queue rebuilt from the database"
                    );
                    act.dispatch(ctx);
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(reason, error = %err, "queue rebuild failed; will retry")
                }
            }
        }));
    }

    /// The store is empty but the database holds queued jobs: the store lost them (a Redis
    /// restart or FLUSHALL). Rebuild.
    fn audit(&mut self, ctx: &mut Context<Self>) {
        let (store, db) = (self.store.clone(), self.db.clone());
        let check = async move {
            let stored = store.depth().await?;
            let recorded = db
                .queued_in_ticket_order()
                .await
                .map_err(|err| QueueError::Unavailable(err.to_string()))?;
            Ok::<_, QueueError>(stored == 0 && !recorded.is_empty())
        };
        ctx.spawn(check.into_actor(self).map(|lost, act, ctx| match lost {
            Ok(true) => act.rebuild(
                ctx,
                "queue store empty while the database holds queued jobs",
            ),
            Ok(false) => {}
            Err(err) => tracing::debug!(error = %err, "queue audit skipped"),
        }));
    }
}

/// Puts back every queued job of the database the store lacks, in ticket order.
pub async fn rebuild_from_db(
    store: &dyn QueueStore,
    db: &Database,
) -> Result<crate::queue::Rebuilt, QueueError> {
    let unavailable = |err: crate::db::DbError| QueueError::Unavailable(err.to_string());
    let queued = db.queued_in_ticket_order().await.map_err(unavailable)?;
    let pending = db.pending_by_user().await.map_err(unavailable)?;
    let max_ticket = db.max_ticket().await.map_err(unavailable)?;
    let jobs = queued
        .into_iter()
        .map(|(id, user, ticket)| QueuedJob {
            id,
            user_id: Arc::from(user.as_str()),
            ticket,
        })
        .collect();
    store.rebuild(jobs, pending, max_ticket).await
}

impl Actor for QueueActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let feed = self.store.subscribe();
        let stream = futures::stream::unfold(feed, |mut feed| async move {
            let item = match feed.recv().await {
                Ok(item) => item,
                Err(broadcast::error::RecvError::Lagged(_)) => FeedItem::Gap,
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            Some((item, feed))
        });
        ctx.add_stream(stream);
        self.reload_mirror(ctx);
        ctx.run_interval(POLL_EVERY, |act, ctx| act.dispatch(ctx));
        ctx.run_interval(AUDIT_EVERY, |act, ctx| act.audit(ctx));
    }
}

impl StreamHandler<FeedItem> for QueueActor {
    fn handle(&mut self, item: FeedItem, ctx: &mut Context<Self>) {
        match item {
            FeedItem::Change(change) => match &mut self.reload_backlog {
                Some(backlog) => backlog.push(change),
                None => self.apply_change(change, ctx),
            },
            FeedItem::Gap => self.reload_mirror(ctx),
        }
    }

    fn finished(&mut self, _ctx: &mut Context<Self>) {
        tracing::debug!("queue feed ended");
    }
}

/// Queue a job, checking the owner's pending cap atomically with the enqueue.
#[derive(Message)]
#[rtype(result = "()")]
struct Enqueue {
    id: Uuid,
    user_id: String,
    max_pending: u32,
    reply: oneshot::Sender<Result<Enqueued, QueueError>>,
}

impl Handler<Enqueue> for QueueActor {
    type Result = ();

    fn handle(&mut self, msg: Enqueue, ctx: &mut Context<Self>) {
        let (store, db) = (self.store.clone(), self.db.clone());
        let work = async move {
            let mut healed = false;
            let mut rebuilt = false;
            loop {
                match store.enqueue(msg.id, &msg.user_id, msg.max_pending).await {
                    Err(QueueError::TooManyPending { .. }) if !healed => {
                        // A crash between a terminal write and its release leaks a slot: free
                        // the slots of jobs the database says are finished, then try once more.
                        healed = true;
                        let counted = store.pending_of(&msg.user_id).await?;
                        let finished = db
                            .terminal_among(&counted)
                            .await
                            .map_err(|e| QueueError::Unavailable(e.to_string()))?;
                        if finished.is_empty() {
                            return Err(QueueError::TooManyPending {
                                limit: msg.max_pending,
                            });
                        }
                        for id in finished {
                            store.release(&msg.user_id, id).await?;
                        }
                    }
                    Err(QueueError::NeedsRebuild) if !rebuilt => {
                        rebuilt = true;
                        let result = rebuild_from_db(&*store, &db).await?;
                        tracing::warn!(
                            added = result.added,
                            "queue store had lost its state; rebuilt from the database"
                        );
                    }
                    other => return other,
                }
            }
        };
        ctx.spawn(work.into_actor(self).map(move |result, _act, _ctx| {
            let _ = msg.reply.send(result);
        }));
    }
}

/// Wait for the next job (a backend is free).
#[derive(Message)]
#[rtype(result = "()")]
struct NextJob {
    reply: oneshot::Sender<QueuedJob>,
}

impl Handler<NextJob> for QueueActor {
    type Result = ();

    fn handle(&mut self, msg: NextJob, ctx: &mut Context<Self>) {
        if self.paused {
            // Dropping the reply tells the backend there is nothing more to take.
            return;
        }
        self.waiters.push_back(msg.reply);
        self.dispatch(ctx);
    }
}

/// Rebuild from the database now.
#[derive(Message)]
#[rtype(result = "()")]
struct Rebuild;

impl Handler<Rebuild> for QueueActor {
    type Result = ();

    fn handle(&mut self, _msg: Rebuild, ctx: &mut Context<Self>) {
        self.rebuild(ctx, "requested");
    }
}

/// Stop handing out jobs (shutdown): waiting backends are let go, queued jobs stay queued.
#[derive(Message)]
#[rtype(result = "()")]
struct Pause;

impl Handler<Pause> for QueueActor {
    type Result = ();

    fn handle(&mut self, _msg: Pause, _ctx: &mut Context<Self>) {
        self.paused = true;
        self.waiters.clear();
    }
}

/// The typed handle to the queue.
#[derive(Clone)]
pub struct QueueHandle {
    addr: Addr<QueueActor>,
    store: Arc<dyn QueueStore>,
    eta: Arc<Mutex<EtaModel>>,
}

impl QueueHandle {
    /// Wraps the actor's address, the store it owns (for direct reads) and its ETA model.
    pub fn new(
        addr: Addr<QueueActor>,
        store: Arc<dyn QueueStore>,
        eta: Arc<Mutex<EtaModel>>,
    ) -> Self {
        QueueHandle { addr, store, eta }
    }

    /// Queues a job if the user has fewer than `max_pending` pending jobs.
    pub async fn enqueue(
        &self,
        id: Uuid,
        user_id: &str,
        max_pending: u32,
    ) -> Result<Enqueued, QueueError> {
        let (reply, answer) = oneshot::channel();
        self.addr.do_send(Enqueue {
            id,
            user_id: user_id.to_owned(),
            max_pending,
            reply,
        });
        answer
            .await
            .unwrap_or_else(|_| Err(QueueError::Unavailable("the queue actor stopped".into())))
    }

    /// Waits for the next job; `None` when the queue actor stopped.
    pub async fn next_job(&self) -> Option<QueuedJob> {
        let (reply, answer) = oneshot::channel();
        self.addr.do_send(NextJob { reply });
        answer.await.ok()
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

    /// The store's kind (`memory` or `redis`).
    pub fn kind(&self) -> &'static str {
        self.store.kind()
    }
}
