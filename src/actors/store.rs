//! `MessageStoreActor`: every write to a message goes through it.
//!
//! Changes to one message are applied one after another; changes to different messages are
//! written in parallel. Changes that arrive while a write for their message is in flight wait,
//! and the next write folds all of them into one read-modify-write. Rows ready at the same
//! time share one transaction (a batch). Each row write is a compare-and-swap on `version`
//! (see [`Database::apply_batch`]); a conflict puts the row's changes back in front and
//! retries them. Events are published after commit, in commit order, and carry the version
//! each change produced.

use crate::db::{Database, DbError, RowResult, RowWork};
use crate::domain::change::{Change, Refusal};
use crate::domain::event::{JobEvent, JobEventKind};
use crate::domain::message::ChatMessage;
use crate::domain::outages::Outages;
use crate::events::EventBus;
use crate::metrics::Metrics;
use actix::prelude::*;
use chrono::Utc;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// The most events the publishing task hands the bus at once.
const PUBLISH_BATCH: usize = 512;

/// Why a change was not applied.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The change is not allowed; the message is unchanged.
    #[error("refused: {0}")]
    Refused(Refusal),
    /// The database failed (the connection or the server: say nothing about the message); the
    /// transaction was rolled back and the message is unchanged. Retrying later may succeed.
    #[error(transparent)]
    Db(DbError),
    /// This message alone cannot be read or written (a damaged row, or a value the database
    /// refuses); other messages are written. Retrying will not help.
    #[error("this message cannot be written: {0}")]
    Row(#[source] DbError),
    /// The store is shutting down.
    #[error("the store is stopped")]
    Stopped,
}

impl StoreError {
    fn of(err: DbError) -> StoreError {
        if err.is_transient() {
            StoreError::Db(err)
        } else {
            StoreError::Row(err)
        }
    }
}

/// How the store batches.
#[derive(Clone, Copy, Debug)]
pub struct StoreLimits {
    /// Write transactions in flight at once.
    pub max_batches: usize,
    /// Messages per transaction.
    pub max_rows: usize,
    /// Fold every change waiting for a message into one read-modify-write (off only to
    /// measure what folding buys).
    pub fold: bool,
}

impl StoreLimits {
    /// Sensible limits for a pool of `connections` (SQLite has one writer).
    pub fn for_backend(backend: &str, connections: u32) -> StoreLimits {
        StoreLimits {
            // SQLite has one writer. On PostgreSQL two transactions in flight hide one's round
            // trips behind the other's; more only make each batch smaller, and the server's
            // cost is per transaction and per statement, not per row (measured: 8 in flight
            // gave a third less throughput than 2; see docs/benchmarks.md).
            max_batches: if backend == "sqlite" {
                1
            } else {
                (connections as usize / 2).clamp(1, 2)
            },
            max_rows: 128,
            fold: true,
        }
    }
}

/// Applies one change to one message; the reply carries the message after the write.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Apply {
    /// The message.
    pub id: Uuid,
    /// The change.
    pub change: Change,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<ChatMessage, StoreError>>,
}

/// Resolves once nothing is waiting or in flight (for shutdown and tests).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush(pub oneshot::Sender<()>);

struct Waiting {
    change: Change,
    reply: oneshot::Sender<Result<ChatMessage, StoreError>>,
}

/// The store actor.
pub struct MessageStoreActor {
    db: Database,
    io: tokio::runtime::Handle,
    events: mpsc::UnboundedSender<JobEvent>,
    metrics: Arc<Metrics>,
    outages: Arc<Outages>,
    limits: StoreLimits,
    waiting: HashMap<Uuid, VecDeque<Waiting>>,
    in_flight: HashSet<Uuid>,
    /// Messages with changes to write, in arrival order: those whose next change moves a
    /// job on (a transition, progress, a patch) ...
    ready: VecDeque<Uuid>,
    /// ... and new messages. Batches take from `ready` first: under a flood of submissions
    /// the writes that finish jobs are not queued behind the creates (intake must not starve
    /// the work), and creates still get a quarter of every batch.
    ready_creates: VecDeque<Uuid>,
    batches_in_flight: usize,
    flushes: Vec<oneshot::Sender<()>>,
}

impl MessageStoreActor {
    /// A store writing to `db` and publishing on `bus`. The writes and the publishing run on
    /// `io` (a multi-threaded runtime), so the driver's work is not done on the actor's thread.
    pub fn new(
        db: Database,
        bus: Arc<dyn EventBus>,
        metrics: Arc<Metrics>,
        outages: Arc<Outages>,
        limits: StoreLimits,
        io: tokio::runtime::Handle,
    ) -> Self {
        let (events, mut queue) = mpsc::unbounded_channel::<JobEvent>();
        // One task publishes in commit order, so a message's events never overtake each other.
        // Whatever committed while the previous publish was under way goes out in one batch:
        // one Redis round trip per batch, not per event, keeps events from queueing up here.
        io.spawn(async move {
            let mut batch = Vec::with_capacity(PUBLISH_BATCH);
            while queue.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
                bus.publish_all(std::mem::take(&mut batch)).await;
            }
        });
        MessageStoreActor {
            db,
            io,
            events,
            metrics,
            outages,
            limits,
            waiting: HashMap::new(),
            in_flight: HashSet::new(),
            ready: VecDeque::new(),
            ready_creates: VecDeque::new(),
            batches_in_flight: 0,
            flushes: Vec::new(),
        }
    }

    fn enqueue(&mut self, id: Uuid, waiting: Waiting) {
        let create = matches!(waiting.change, Change::Create(_));
        let queue = self.waiting.entry(id).or_default();
        let was_idle = queue.is_empty();
        queue.push_back(waiting);
        if was_idle && !self.in_flight.contains(&id) {
            if create {
                self.ready_creates.push_back(id);
            } else {
                self.ready.push_back(id);
            }
        }
    }

    /// The next message to write: one that moves a job on first, but at least a quarter of a
    /// batch for new messages when both wait.
    fn next_ready(&mut self, taken: usize) -> Option<Uuid> {
        let creates_due = taken >= self.limits.max_rows * 3 / 4;
        if creates_due && let Some(id) = self.ready_creates.pop_front() {
            return Some(id);
        }
        self.ready
            .pop_front()
            .or_else(|| self.ready_creates.pop_front())
    }

    fn schedule(&mut self, ctx: &mut Context<Self>) {
        while self.batches_in_flight < self.limits.max_batches
            && !(self.ready.is_empty() && self.ready_creates.is_empty())
        {
            let mut work = Vec::new();
            let mut replies = Vec::new();
            while work.len() < self.limits.max_rows {
                let Some(id) = self.next_ready(work.len()) else {
                    break;
                };
                let Some(mut queue) = self.waiting.remove(&id) else {
                    continue;
                };
                let taken: Vec<Waiting> = if self.limits.fold || queue.len() <= 1 {
                    queue.drain(..).collect()
                } else {
                    queue.pop_front().into_iter().collect()
                };
                if !queue.is_empty() {
                    self.waiting.insert(id, queue);
                }
                self.in_flight.insert(id);
                let (changes, senders): (Vec<_>, Vec<_>) =
                    taken.into_iter().map(|w| (w.change, w.reply)).unzip();
                work.push(RowWork { id, changes });
                replies.push(senders);
            }
            if work.is_empty() {
                break;
            }
            self.batches_in_flight += 1;
            let db = self.db.clone();
            let ids: Vec<Uuid> = work.iter().map(|row| row.id).collect();
            let write = self.io.spawn(async move {
                let result = db.apply_batch(&work, Utc::now()).await;
                (work, result)
            });
            ctx.spawn(write.into_actor(self).map(move |joined, act, ctx| {
                match joined {
                    Ok((work, result)) => act.finish(work, replies, result),
                    // The runtime is shutting down (or the write panicked): nothing is known
                    // to be written, and the callers hear so.
                    Err(err) => act.abort_batch(ids, replies, Arc::new(err)),
                }
                act.schedule(ctx);
                act.notify_flushes();
            }));
        }
    }

    fn finish(
        &mut self,
        work: Vec<RowWork>,
        replies: Vec<Vec<oneshot::Sender<Result<ChatMessage, StoreError>>>>,
        result: Result<Vec<RowResult>, crate::db::DbError>,
    ) {
        self.batches_in_flight -= 1;
        self.metrics.store_batches.inc();
        let rows = match result {
            Ok(rows) => rows,
            Err(err) => {
                self.metrics.store_failures.inc();
                if err.is_transient() {
                    self.outages.database_failed(Utc::now());
                }
                tracing::error!(error = %err, rows = work.len(), "message write failed and was rolled back");
                for (row, senders) in work.into_iter().zip(replies) {
                    self.in_flight.remove(&row.id);
                    self.requeue_if_waiting(row.id);
                    for reply in senders {
                        let _ = reply.send(Err(StoreError::of(err.clone())));
                    }
                }
                return;
            }
        };
        for ((row, senders), result) in work.into_iter().zip(replies).zip(rows) {
            self.in_flight.remove(&row.id);
            match result {
                RowResult::Failed(err) => {
                    self.metrics.store_failures.inc();
                    tracing::error!(message_id = %row.id, error = %err, "a message could not be written; the rest of its batch was");
                    for reply in senders {
                        let _ = reply.send(Err(StoreError::of(err.clone())));
                    }
                    self.requeue_if_waiting(row.id);
                }
                RowResult::Conflict => {
                    self.metrics.store_conflict_retries.inc();
                    // The row's changes go back in front of anything that arrived meanwhile.
                    let queue = self.waiting.entry(row.id).or_default();
                    for (change, reply) in row.changes.into_iter().zip(senders).rev() {
                        queue.push_front(Waiting { change, reply });
                    }
                    self.ready.push_front(row.id);
                }
                RowResult::Done { outcomes, message } => {
                    self.answer_row(&row, senders, outcomes, message.as_deref());
                    self.requeue_if_waiting(row.id);
                }
            }
        }
    }

    /// Publishes the event of each change of a written row and answers its caller; a refused
    /// change is answered with its refusal.
    fn answer_row(
        &mut self,
        row: &RowWork,
        senders: Vec<oneshot::Sender<Result<ChatMessage, StoreError>>>,
        outcomes: Vec<Result<(JobEventKind, i64), Refusal>>,
        message: Option<&ChatMessage>,
    ) {
        let mut wrote = false;
        for ((outcome, reply), change) in outcomes.into_iter().zip(senders).zip(&row.changes) {
            match (outcome, message) {
                (Ok((kind, version)), Some(message)) => {
                    wrote = true;
                    self.metrics.store_changes.inc();
                    if matches!(change, Change::ClientPatch { .. }) {
                        self.metrics.store_merges.inc();
                    }
                    let _ = self.events.send(JobEvent {
                        user_id: message.user_id.clone(),
                        message_id: message.id,
                        version: Some(version),
                        kind,
                    });
                    let _ = reply.send(Ok(message.clone()));
                }
                (Ok(_), None) => {
                    let _ = reply.send(Err(StoreError::Refused(Refusal::NotFound)));
                }
                (Err(refusal), _) => {
                    self.metrics.store_refusals.inc();
                    log_refusal(row.id, change, &refusal);
                    let _ = reply.send(Err(StoreError::Refused(refusal)));
                }
            }
        }
        if wrote {
            self.metrics.store_row_writes.inc();
        }
    }

    fn abort_batch(
        &mut self,
        ids: Vec<Uuid>,
        replies: Vec<Vec<oneshot::Sender<Result<ChatMessage, StoreError>>>>,
        reason: Arc<tokio::task::JoinError>,
    ) {
        self.batches_in_flight -= 1;
        self.metrics.store_failures.inc();
        tracing::error!(
            error = %reason,
            rows = ids.len(),
            "message write task failed"
        );
        for (id, senders) in ids.into_iter().zip(replies) {
            self.in_flight.remove(&id);
            self.requeue_if_waiting(id);
            for reply in senders {
                let _ = reply.send(Err(StoreError::Db(DbError::Interrupted(reason.clone()))));
            }
        }
    }

    fn requeue_if_waiting(&mut self, id: Uuid) {
        if self.waiting.get(&id).is_some_and(|queue| !queue.is_empty()) {
            self.ready.push_back(id);
        }
    }

    fn notify_flushes(&mut self) {
        if self.batches_in_flight == 0 && self.waiting.is_empty() {
            for flush in self.flushes.drain(..) {
                let _ = flush.send(());
            }
        }
    }
}

fn log_refusal(id: Uuid, change: &Change, refusal: &Refusal) {
    match refusal {
        Refusal::IllegalTransition { from, to } if from.is_terminal() => tracing::warn!(
            message_id = %id, %from, %to,
            "refused a write that would leave a terminal state (a late answer?); nothing changed"
        ),
        Refusal::NotStuck => {
            tracing::debug!(message_id = %id, "job showed activity; not marked stuck")
        }
        Refusal::Unreadable => {
            tracing::error!(message_id = %id, change = change_name(change), "refused a change to an unreadable message")
        }
        Refusal::Patch(_) | Refusal::NotFound => {
            tracing::debug!(message_id = %id, %refusal, "change refused")
        }
        _ => {
            tracing::info!(message_id = %id, %refusal, change = change_name(change), "change refused")
        }
    }
}

fn change_name(change: &Change) -> &'static str {
    match change {
        Change::Create(_) => "create",
        Change::Transition(transition) => transition.target().as_str(),
        Change::Progress { .. } => "progress",
        Change::Preview { .. } => "preview",
        Change::ClientPatch { .. } => "client_patch",
        Change::OfRun { change, .. } => change_name(change),
    }
}

impl Actor for MessageStoreActor {
    type Context = Context<Self>;
}

impl Handler<Apply> for MessageStoreActor {
    type Result = ();

    fn handle(&mut self, msg: Apply, ctx: &mut Context<Self>) {
        self.enqueue(
            msg.id,
            Waiting {
                change: msg.change,
                reply: msg.reply,
            },
        );
        self.schedule(ctx);
    }
}

impl Handler<Flush> for MessageStoreActor {
    type Result = ();

    fn handle(&mut self, msg: Flush, _ctx: &mut Context<Self>) {
        self.flushes.push(msg.0);
        self.notify_flushes();
    }
}

/// The typed handle to the store.
#[derive(Clone)]
pub struct StoreHandle {
    addr: Addr<MessageStoreActor>,
}

impl StoreHandle {
    /// Wraps the actor's address.
    pub fn new(addr: Addr<MessageStoreActor>) -> Self {
        StoreHandle { addr }
    }

    /// Applies `change` to message `id`; returns the message after the write that included it.
    pub async fn apply(&self, id: Uuid, change: Change) -> Result<ChatMessage, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.addr.do_send(Apply { id, change, reply });
        answer.await.unwrap_or(Err(StoreError::Stopped))
    }

    /// Waits until every accepted change is written.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        self.addr.do_send(Flush(done));
        let _ = wait.await;
    }
}
