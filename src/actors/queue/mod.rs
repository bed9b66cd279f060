//! `QueueActor`: owns the queue order and positions.
//!
//! It wraps the [`QueueStore`] (in-process or Redis), hands jobs to idle backends, keeps a
//! mirror of the queue fed by the store's change feed, and tells the users connected to this
//! process the positions of their queued jobs (the [`PositionFeed`]: one frame per user per
//! tick, at a pace bounded by connected users, not by queue depth). It keeps the store and the
//! database in step ([`rebuild`]): at start, and when the audit finds the store lost its
//! queue or a queued job of the database missing from it.

use crate::db::Database;
use crate::domain::eta::EtaModel;
use crate::domain::event::positions_frame_body;
use crate::domain::outages::Outages;
use crate::domain::position_feed::PositionFeed;
use crate::domain::queue_book::{QueueBook, QueueChange, QueuedJob};
use crate::domain::routing::{Offer, Routing};
use crate::events::registry::{Positions, UserWatch};
use crate::metrics::Metrics;
use crate::queue::{FeedItem, QueueStore};
use actix::prelude::*;
use chrono::Utc;
use parking_lot::Mutex;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, oneshot};
use uuid::Uuid;

mod handle;
pub mod rebuild;

pub use handle::QueueHandle;

/// How often idle backends look at the queue even without a feed signal (another process may
/// have queued a job whose signal was lost), and how often the store is checked for a lost queue.
const POLL_EVERY: Duration = Duration::from_millis(500);
const AUDIT_EVERY: Duration = Duration::from_secs(5);
/// Most pops in flight at once.
const MAX_CONCURRENT_POPS: usize = 16;
/// How many jobs from the head of the mirror the dispatch looks at to choose which free
/// backend pops first.
const PLAN_AHEAD: usize = 64;

/// The queue actor.
pub struct QueueActor {
    store: Arc<dyn QueueStore>,
    db: Database,
    positions: Recipient<Positions>,
    metrics: Arc<Metrics>,
    outages: Arc<Outages>,
    mirror: QueueBook,
    /// Free backends waiting for a job, in the order they asked.
    waiters: VecDeque<Waiter>,
    next_waiter: u64,
    pops_in_flight: usize,
    eta: Arc<Mutex<EtaModel>>,
    rebuilding: bool,
    paused: bool,
    /// Changes that arrived while the mirror reloads, replayed on the reloaded mirror (a
    /// change the snapshot already holds applies as a no-op).
    reload_backlog: Option<Vec<QueueChange>>,
    feed: PositionFeed,
    tick_scheduled: bool,
    last_tick_cost: Duration,
    /// Queued ids of the database missing from the store at the last audit: missing again at
    /// the next one, they are put back (a pop in flight explains one audit, not two).
    suspects: HashSet<Uuid>,
}

impl QueueActor {
    /// A queue actor over `store`, rebuilding from `db`, sending positions to `positions`
    /// (the session registry) at most `positions_per_frame` in a frame, its ETAs from `eta`
    /// (which [`QueueHandle::finished`] feeds).
    pub fn new(
        store: Arc<dyn QueueStore>,
        db: Database,
        positions: Recipient<Positions>,
        metrics: Arc<Metrics>,
        outages: Arc<Outages>,
        eta: Arc<Mutex<EtaModel>>,
        positions_per_frame: usize,
    ) -> Self {
        QueueActor {
            store,
            db,
            positions,
            metrics,
            outages,
            mirror: QueueBook::new(),
            waiters: VecDeque::new(),
            next_waiter: 0,
            pops_in_flight: 0,
            eta,
            rebuilding: false,
            paused: false,
            reload_backlog: None,
            feed: PositionFeed::new(positions_per_frame),
            tick_scheduled: false,
            last_tick_cost: Duration::ZERO,
            suspects: HashSet::new(),
        }
    }

    /// Hands queued jobs to waiting backends: one pop in flight per waiting backend, at most
    /// [`MAX_CONCURRENT_POPS`], each for what that backend offers.
    fn dispatch(&mut self, ctx: &mut Context<Self>) {
        self.waiters
            .retain(|waiter| waiter.popping || !waiter.reply.is_closed());
        if self.paused {
            return;
        }
        for waiter in self.waiters.iter_mut().filter(|w| !w.popping) {
            waiter.offer = (waiter.offer_now)();
        }
        // No more pops in flight than the mirror says are queued (a pop is a script on Redis:
        // with 128 idle backends, each enqueue sent 16 of which 15 came back empty). At least
        // one: the mirror may not have heard of a job yet (the poll finds it).
        let most = MAX_CONCURRENT_POPS.min(self.mirror.len().max(1));
        for key in self.pop_order() {
            if self.pops_in_flight >= most {
                break;
            }
            let Some(waiter) = self.waiters.iter_mut().find(|w| w.key == key) else {
                continue;
            };
            waiter.popping = true;
            self.pops_in_flight += 1;
            let (store, offer) = (self.store.clone(), waiter.offer.clone());
            ctx.spawn(async move { store.pop(&offer).await }.into_actor(self).map(
                move |popped, act, ctx| {
                    act.pops_in_flight -= 1;
                    if let Some(waiter) = act.waiters.iter_mut().find(|w| w.key == key) {
                        waiter.popping = false;
                    }
                    match popped {
                        Ok(Some(job)) => {
                            act.hand_out(key, job);
                            act.dispatch(ctx);
                        }
                        // Empty: the next enqueue (or the poll) wakes the waiters again.
                        Ok(None) => {}
                        Err(err) => {
                            act.outages.queue_failed(Utc::now());
                            tracing::warn!(error = %err, "queue pop failed; retrying shortly")
                        }
                    }
                },
            ));
        }
    }

    /// The idle waiters in the order their pops go out: walking the mirror from its head,
    /// each job goes to a free backend that can run it, the one with its model loaded first
    /// (so among free backends a job lands where no switch is needed). When the mirror has a
    /// job for none of them (within [`PLAN_AHEAD`] jobs), the first one pops anyway: the
    /// mirror may be behind, and the store knows what it may take.
    fn pop_order(&self) -> Vec<u64> {
        let mut idle: Vec<&Waiter> = self.waiters.iter().filter(|w| !w.popping).collect();
        let mut order = Vec::with_capacity(idle.len());
        for job in self.mirror.head(PLAN_AHEAD) {
            if idle.is_empty() {
                break;
            }
            let model = job.model.as_deref();
            let chosen = idle
                .iter()
                .position(|w| w.offer.has_loaded(model))
                .or_else(|| idle.iter().position(|w| w.offer.can_run(model)));
            if let Some(index) = chosen {
                order.push(idle.remove(index).key);
            }
        }
        if order.is_empty() {
            order.extend(idle.first().map(|w| w.key));
        }
        order
    }

    /// Gives a popped job to the backend that popped it, or, if it left, to another free one
    /// that can run it; puts it back if none is.
    fn hand_out(&mut self, key: u64, job: QueuedJob) {
        let model = job.model.clone();
        let mut candidates: Vec<usize> = Vec::new();
        candidates.extend(self.waiters.iter().position(|w| w.key == key));
        candidates.extend(
            self.waiters
                .iter()
                .enumerate()
                .filter(|(_, w)| w.key != key && !w.popping && w.offer.can_run(model.as_deref()))
                .map(|(index, _)| index),
        );
        let mut gone = Vec::new();
        let mut left = Some(job);
        for index in candidates {
            let Some(job) = left.take() else { break };
            let waiter = &mut self.waiters[index];
            let reply = std::mem::replace(&mut waiter.reply, oneshot::channel().0);
            gone.push(waiter.key);
            if let Err(returned) = reply.send(job) {
                left = Some(returned);
            }
        }
        self.waiters.retain(|w| !gone.contains(&w.key));
        let Some(job) = left else {
            return;
        };
        // Every waiter that could run it left (shutdown): put it back where it was.
        let store = self.store.clone();
        actix::spawn(async move {
            if let Err(err) = store.requeue(&job).await {
                tracing::error!(job = %job.id, error = %err, "could not put a popped job back");
            }
        });
    }

    /// Applies a feed change to the mirror; a change of the queue schedules a positions tick.
    fn apply_change(&mut self, change: QueueChange, ctx: &mut Context<Self>) {
        let added = matches!(change, QueueChange::Added(_));
        if self.mirror.apply(change) {
            self.metrics.queue_depth.set(self.mirror.len() as i64);
            self.feed.changed();
            self.schedule_tick(ctx);
        }
        if added {
            self.dispatch(ctx);
        }
    }

    fn schedule_tick(&mut self, ctx: &mut Context<Self>) {
        if self.tick_scheduled {
            return;
        }
        let now = Instant::now();
        match self.feed.due(now) {
            None => {}
            Some(at) if at <= now => self.tick(ctx),
            Some(at) => {
                self.tick_scheduled = true;
                ctx.run_later(at - now, |act, ctx| {
                    act.tick_scheduled = false;
                    act.tick(ctx);
                });
            }
        }
    }

    /// Sends each connected user whose positions changed one frame with them.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let started = Instant::now();
        let eta = *self.eta.lock();
        let version = self.mirror.version();
        for user in self
            .feed
            .tick(&self.mirror, &eta, started, self.last_tick_cost)
        {
            let body: Arc<str> = Arc::from(positions_frame_body(&user.positions));
            self.positions.do_send(Positions {
                user: user.user,
                version,
                positions: user.positions.into(),
                body,
                complete: user.complete,
            });
        }
        self.last_tick_cost = started.elapsed();
        self.schedule_tick(ctx);
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
        let started = Instant::now();
        let work = async move { rebuild::rebuild_from_db(&*store, &db).await };
        ctx.spawn(work.into_actor(self).map(move |result, act, ctx| {
            act.rebuilding = false;
            match result {
                Ok(rebuilt) if rebuilt.added > 0 => {
                    tracing::info!(
                        reason,
                        added = rebuilt.added,
                        queued = rebuilt.queued,
                        took = ?started.elapsed(),
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

    /// Keeps the store and the database in step: a store that lost its whole queue (a Redis
    /// restart) is rebuilt; a queued job of the database missing from the store at two audits
    /// in a row (a `processing` write that never came, a create that committed late) is put
    /// back with its ticket.
    fn audit(&mut self, ctx: &mut Context<Self>) {
        if self.rebuilding {
            return;
        }
        let (store, db) = (self.store.clone(), self.db.clone());
        let suspects = std::mem::take(&mut self.suspects);
        let check = async move { rebuild::audit(&*store, &db, &suspects).await };
        ctx.spawn(check.into_actor(self).map(|found, act, ctx| match found {
            Ok(rebuild::Audit::Lost) => act.rebuild(
                ctx,
                "queue store empty while the database holds queued jobs",
            ),
            Ok(rebuild::Audit::Missing { put_back, suspects }) => {
                if put_back > 0 {
                    tracing::warn!(
                        put_back,
                        "queued jobs of the database were missing from the queue; put back"
                    );
                    act.dispatch(ctx);
                }
                act.suspects = suspects;
            }
            Err(err) => tracing::debug!(error = %err, "queue audit skipped"),
        }));
    }
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

/// What a backend offers now: read at each dispatch, since it changes while the backend
/// waits (its first discovery answers, a job switches its loaded model).
pub type OfferNow = Arc<dyn Fn() -> Offer + Send + Sync>;

/// A free backend waiting for a job.
struct Waiter {
    key: u64,
    reply: oneshot::Sender<QueuedJob>,
    offer_now: OfferNow,
    /// Its offer as read at the last dispatch.
    offer: Offer,
    popping: bool,
}

/// Wait for the next job the backend may run (a backend is free).
#[derive(Message)]
#[rtype(result = "()")]
struct NextJob {
    reply: oneshot::Sender<QueuedJob>,
    offer: OfferNow,
}

impl Handler<NextJob> for QueueActor {
    type Result = ();

    fn handle(&mut self, msg: NextJob, ctx: &mut Context<Self>) {
        if self.paused {
            // Dropping the reply tells the backend there is nothing more to take.
            return;
        }
        self.next_waiter += 1;
        self.waiters.push_back(Waiter {
            key: self.next_waiter,
            reply: msg.reply,
            offer: (msg.offer)(),
            offer_now: msg.offer,
            popping: false,
        });
        self.dispatch(ctx);
    }
}

/// What the backends offer changed: positions are counted anew.
#[derive(Message)]
#[rtype(result = "()")]
struct SetRouting(Arc<Routing>);

impl Handler<SetRouting> for QueueActor {
    type Result = ();

    fn handle(&mut self, msg: SetRouting, ctx: &mut Context<Self>) {
        if self.mirror.set_routing(msg.0) {
            self.feed.changed();
            self.schedule_tick(ctx);
        }
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

impl Handler<UserWatch> for QueueActor {
    type Result = ();

    fn handle(&mut self, msg: UserWatch, ctx: &mut Context<Self>) {
        if msg.watching {
            self.feed.watch(msg.user);
        } else {
            self.feed.unwatch(&msg.user);
        }
        self.schedule_tick(ctx);
    }
}

/// The positions of a user's queued jobs in this process's mirror, and its version (what a
/// new session shows first; later frames carry higher versions).
#[derive(Message)]
#[rtype(result = "(u64, Vec<(Uuid, u32)>)")]
struct MirrorPositions {
    user: String,
}

impl Handler<MirrorPositions> for QueueActor {
    type Result = MessageResult<MirrorPositions>;

    fn handle(&mut self, msg: MirrorPositions, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult((self.mirror.version(), self.mirror.positions_of(&msg.user)))
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
