//! The Redis queue store (production): one queue shared by every gateway process.
//! (A little over 500 lines: it is the one `QueueStore` implementation for Redis, an operation
//! per script, read best together; its keys, feed and rebuild are modules of their own.)
//!
//! Every key of one queue carries the hash tag `{<prefix>}` so they all live in one Redis
//! Cluster slot and one Lua script may touch them all:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{p}:ticket` | string (INCR) | the last ticket drawn; its absence means Redis lost the queue |
//! | `{p}:queue` | sorted set | job id → ticket |
//! | `{p}:jobs` | hash | job id → owner |
//! | `{p}:models` | hash | job id → the model it asks for (jobs that ask for one) |
//! | `{p}:lane:<model>` | sorted set | the jobs for one model, id → ticket |
//! | `{p}:lane` | sorted set | the jobs without a model, id → ticket |
//! | `{p}:lanes` | set | the models that have queued jobs (the lanes a position looks at) |
//! | `{p}:pending:<user>` | set | job ids counted against the user's pending cap |
//! | `{p}:users` | set | users with a pending set (so a rebuild can reset them all) |
//! | `{p}:moved` | string | when the queue last moved, ms since the epoch |
//! | `{p}:feedseq` | string (INCR) | sequence number of the last feed message |
//!
//! Every change of the queue is one Lua script that also increments `{p}:feedseq` and publishes
//! the change on the channel `{p}:feed`, so the feed's order is the server's order of
//! operations. Feed messages are text: `<seq> A <id> <ticket> <model> <user>` (added; the
//! model as hex, `-` for none; the user comes last so it may contain spaces) or `<seq> R <id>`
//! (removed). The lanes are how a pop finds the first job a backend may run without walking
//! the queue: the scripts derive their names from the key base (the same hash tag, so the
//! same Cluster slot), since which lane a job is in is known only inside the script. A subscriber task turns them into
//! [`FeedItem`]s and reports a [`FeedItem::Gap`] when a sequence number is skipped, a message
//! cannot be parsed, or the subscriber reconnected.

mod feed;
mod keys;
mod positions;
mod rebuild;

use super::{Enqueued, FeedItem, QueueError, QueueStore, Rebuilt};
use crate::domain::health::WriteHealth;
use crate::domain::queue_book::QueuedJob;
use crate::domain::routing::{Offer, Routing};
use crate::redis_client::{RedisError, Role, Subscription, builder, check_prefix};
use chrono::{DateTime, Utc};
use feed::run_feed;
use fred::clients::SubscriberClient;
use fred::prelude::{
    ClientLike, KeysInterface, LuaInterface, Pool, SetsInterface, SortedSetsInterface, Value,
};
use keys::{Keys, Script, Scripts};
use parking_lot::Mutex;
use std::sync::Arc;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Command connections: Lua scripts run one at a time on the server anyway, a few connections
/// keep the client side (encoding, the router task) from being the bottleneck.
const POOL_SIZE: usize = 4;
/// How long the tombstone of an undone enqueue stays: far longer than any enqueue can wait in
/// Redis's buffers before it runs.
const ABORTED_FOR: std::time::Duration = std::time::Duration::from_secs(600);
/// Jobs (or pending ids) per rebuild script call, so a rebuild of a long queue never blocks
/// Redis for long.
const REBUILD_CHUNK: usize = 500;
/// Jobs per snapshot page (one atomic script call each).
const SNAPSHOT_PAGE: usize = 1_000;
/// Capacity of the feed's broadcast channel (as the in-process queue's).
const FEED_CAPACITY: usize = 1 << 16;

fn unavailable(what: &str, err: fred::error::Error) -> QueueError {
    RedisError::failed(what, err).into()
}

fn unexpected(what: &'static str, reply: &Value) -> QueueError {
    QueueError::Unexpected {
        doing: what,
        reply: format!("{reply:?}"),
    }
}

/// The queue store on Redis, shared by every gateway process using the same prefix.
pub struct RedisQueue {
    pool: Pool,
    subscriber: SubscriberClient,
    keys: Keys,
    scripts: Scripts,
    feed: broadcast::Sender<FeedItem>,
    feed_task: Mutex<Option<JoinHandle<()>>>,
    /// What the scripts (every write) did lately: a Redis that answers PING may still refuse
    /// every write (past its `maxmemory`).
    writes: WriteHealth,
    /// What the backends offer, for positions (see [`crate::domain::routing`]).
    routing: parking_lot::RwLock<positions::RoutingArgs>,
}

impl RedisQueue {
    /// Connects to `url`, loads the scripts and subscribes to the queue's change feed.
    ///
    /// Every key starts with `{prefix}:`. Fails if Redis cannot be reached now; once
    /// connected, the clients reconnect by themselves forever (with a backoff) and calls made
    /// while Redis is away fail with [`QueueError::Unavailable`] within a few seconds.
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisQueue, QueueError> {
        check_prefix(prefix)?;
        let keys = Keys::new(prefix);
        let pool = builder(url, Role::Commands)?
            .build_pool(POOL_SIZE)
            .map_err(|err| unavailable("creating the Redis clients", err))?;
        pool.init()
            .await
            .map_err(|err| unavailable("connecting to Redis", err))?;
        let subscription = match Subscription::connect(url, &keys.feed).await {
            Ok(subscription) => subscription,
            Err(err) => {
                let _ = pool.quit().await;
                return Err(err.into());
            }
        };
        let subscriber = subscription.client();
        let scripts = match Scripts::load(&pool).await {
            Ok(scripts) => scripts,
            Err(err) => {
                let _ = pool.quit().await;
                let _ = subscriber.quit().await;
                return Err(err);
            }
        };
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        let task = tokio::spawn(run_feed(subscription, feed.clone()));
        Ok(RedisQueue {
            pool,
            subscriber,
            keys,
            scripts,
            feed,
            feed_task: Mutex::new(Some(task)),
            writes: WriteHealth::default(),
            routing: Default::default(),
        })
    }

    /// The client name of the feed subscriber's connection (as `CLIENT LIST` shows it), so an
    /// operator or a test can find that connection.
    pub fn feed_client_name(&self) -> &str {
        self.subscriber.id()
    }

    /// Stops the feed task and closes the connections. Calls made afterwards fail.
    pub async fn close(&self) {
        if let Some(task) = self.feed_task.lock().take() {
            task.abort();
        }
        if let Err(err) = self.subscriber.quit().await {
            tracing::debug!(error = %err, "closing the queue feed subscriber");
        }
        if let Err(err) = self.pool.quit().await {
            tracing::debug!(error = %err, "closing the queue's Redis connections");
        }
    }

    /// Runs a script by its SHA1, loading it again if Redis forgot it (a restart).
    async fn run(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<Value, QueueError> {
        let ran = self.run_once(script, keys, args).await;
        if let Err(err) = &ran {
            self.writes
                .failed(std::time::Instant::now(), err.to_string());
        }
        ran
    }

    async fn run_once(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<Value, QueueError> {
        match self
            .pool
            .evalsha::<Value, _, _, _>(script.sha.as_str(), keys.clone(), args.clone())
            .await
        {
            Err(err) if err.details().starts_with("NOSCRIPT") => {
                // It did not run. EVAL runs it and caches it on the node that owns the keys
                // (in a Redis Cluster, SCRIPT LOAD reaches one node, not necessarily that one).
                tracing::info!(
                    script = script.name,
                    "Redis does not know a queue script; sending it whole"
                );
                self.pool
                    .eval(script.source, keys, args)
                    .await
                    .map_err(|err| unavailable(script.name, err))
            }
            other => other.map_err(|err| unavailable(script.name, err)),
        }
    }
}

impl Drop for RedisQueue {
    fn drop(&mut self) {
        // Without this the feed task (which holds its own handle to the subscriber) and fred's
        // connection tasks would outlive the store. Quitting twice (after `close`) is harmless.
        if let Some(task) = self.feed_task.lock().take() {
            task.abort();
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (pool, subscriber) = (self.pool.clone(), self.subscriber.clone());
            runtime.spawn(async move {
                let _ = subscriber.quit().await;
                let _ = pool.quit().await;
            });
        }
    }
}

fn string_of(value: &Value) -> Option<String> {
    value.as_str().map(|text| text.into_owned())
}

#[async_trait::async_trait]
impl QueueStore for RedisQueue {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn enqueue(
        &self,
        id: Uuid,
        user_id: &str,
        model: Option<&str>,
        max_pending: u32,
    ) -> Result<Enqueued, QueueError> {
        let keys = vec![
            self.keys.ticket.clone(),
            self.keys.queue.clone(),
            self.keys.jobs.clone(),
            self.keys.pending(user_id),
            self.keys.feedseq.clone(),
            self.keys.users.clone(),
            self.keys.aborted(id),
            self.keys.models.clone(),
            self.keys.lanes.clone(),
        ];
        let mut args: Vec<Value> = vec![
            id.to_string().into(),
            user_id.into(),
            i64::from(max_pending).into(),
            self.keys.feed.clone().into(),
            model.unwrap_or("").into(),
            self.keys.base.clone().into(),
        ];
        args.extend(self.routing.read().for_enqueue());
        let reply = self.run(&self.scripts.enqueue, keys, args).await?;
        let fields = match &reply {
            Value::Array(fields) => fields,
            _ => return Err(unexpected("enqueue", &reply)),
        };
        match fields.first().and_then(Value::as_i64) {
            Some(1) => {
                let ticket = fields.get(1).and_then(Value::as_i64);
                let position = fields
                    .get(2)
                    .and_then(Value::as_u64)
                    .and_then(|position| u32::try_from(position).ok());
                match (ticket, position) {
                    (Some(ticket), Some(position)) => Ok(Enqueued { ticket, position }),
                    _ => Err(unexpected("enqueue", &reply)),
                }
            }
            Some(-1) => Err(QueueError::NeedsRebuild),
            Some(-2) => Err(QueueError::TooManyPending { limit: max_pending }),
            Some(-3) => Err(QueueError::AlreadyQueued { id }),
            Some(-4) => Err(QueueError::Aborted { id }),
            _ => Err(unexpected("enqueue", &reply)),
        }
    }

    async fn abort(&self, id: Uuid, user_id: &str) -> Result<bool, QueueError> {
        let keys = vec![
            self.keys.aborted(id),
            self.keys.queue.clone(),
            self.keys.jobs.clone(),
            self.keys.pending(user_id),
            self.keys.users.clone(),
            self.keys.feedseq.clone(),
            self.keys.models.clone(),
            self.keys.lanes.clone(),
        ];
        let args: Vec<Value> = vec![
            id.to_string().into(),
            user_id.into(),
            self.keys.feed.clone().into(),
            (ABORTED_FOR.as_secs() as i64).into(),
            self.keys.base.clone().into(),
        ];
        let reply = self.run(&self.scripts.abort, keys, args).await?;
        match reply.as_i64() {
            Some(removed) => Ok(removed == 1),
            None => Err(unexpected("abort", &reply)),
        }
    }

    async fn aborted(&self, id: Uuid) -> Result<bool, QueueError> {
        let exists: i64 = self
            .pool
            .exists(self.keys.aborted(id))
            .await
            .map_err(|err| unavailable("reading an abort", err))?;
        Ok(exists == 1)
    }

    async fn pop(&self, offer: &Offer) -> Result<Option<QueuedJob>, QueueError> {
        let keys = vec![
            self.keys.queue.clone(),
            self.keys.jobs.clone(),
            self.keys.moved.clone(),
            self.keys.feedseq.clone(),
            self.keys.models.clone(),
            self.keys.lanes.clone(),
        ];
        let mut args: Vec<Value> = vec![
            Utc::now().timestamp_millis().into(),
            self.keys.feed.clone().into(),
            self.keys.base.clone().into(),
        ];
        args.extend(offer.models.iter().map(|model| Value::from(model.as_ref())));
        let reply = self.run(&self.scripts.pop, keys, args).await?;
        let fields = match &reply {
            Value::Null => return Ok(None),
            Value::Array(fields) => fields,
            _ => return Err(unexpected("pop", &reply)),
        };
        let id = fields.first().and_then(string_of);
        let ticket = fields.get(1).and_then(Value::as_i64);
        let user = fields.get(2).and_then(string_of);
        let model = fields.get(3).and_then(string_of).map(Arc::from);
        match (id, ticket, user) {
            (Some(id), Some(ticket), Some(user)) => match Uuid::parse_str(&id) {
                Ok(uuid) => Ok(Some(QueuedJob {
                    id: uuid,
                    user_id: Arc::from(user),
                    ticket,
                    model,
                })),
                // Something that is not a job id was in the queue; it is gone now, and the
                // caller retries and gets the next one.
                Err(_) => Err(QueueError::Unexpected {
                    doing: "pop",
                    reply: format!("a malformed job id {id:?}"),
                }),
            },
            _ => Err(unexpected("pop", &reply)),
        }
    }

    fn set_routing(&self, routing: Arc<Routing>) {
        *self.routing.write() = positions::RoutingArgs::new(routing);
    }

    async fn requeue(&self, job: &QueuedJob) -> Result<(), QueueError> {
        let keys = vec![
            self.keys.queue.clone(),
            self.keys.jobs.clone(),
            self.keys.feedseq.clone(),
            self.keys.models.clone(),
            self.keys.lanes.clone(),
        ];
        let args: Vec<Value> = vec![
            job.id.to_string().into(),
            job.ticket.into(),
            job.user_id.to_string().into(),
            self.keys.feed.clone().into(),
            job.model.as_deref().unwrap_or("").into(),
            self.keys.base.clone().into(),
        ];
        self.run(&self.scripts.requeue, keys, args).await?;
        Ok(())
    }

    async fn remove(&self, id: Uuid) -> Result<bool, QueueError> {
        let keys = vec![
            self.keys.queue.clone(),
            self.keys.jobs.clone(),
            self.keys.feedseq.clone(),
            self.keys.models.clone(),
            self.keys.lanes.clone(),
        ];
        let args: Vec<Value> = vec![
            id.to_string().into(),
            self.keys.feed.clone().into(),
            self.keys.base.clone().into(),
        ];
        let reply = self.run(&self.scripts.remove, keys, args).await?;
        match reply.as_i64() {
            Some(removed) => Ok(removed == 1),
            None => Err(unexpected("remove", &reply)),
        }
    }

    async fn release(&self, user_id: &str, id: Uuid) -> Result<(), QueueError> {
        let keys = vec![self.keys.pending(user_id), self.keys.users.clone()];
        let args: Vec<Value> = vec![id.to_string().into(), user_id.into()];
        self.run(&self.scripts.release, keys, args).await?;
        Ok(())
    }

    async fn pending_of(&self, user_id: &str) -> Result<Vec<Uuid>, QueueError> {
        let members: Vec<String> = self
            .pool
            .smembers(self.keys.pending(user_id))
            .await
            .map_err(|err| unavailable("reading pending jobs", err))?;
        Ok(members
            .iter()
            .filter_map(|member| match Uuid::parse_str(member) {
                Ok(id) => Some(id),
                Err(_) => {
                    tracing::warn!(
                        user = user_id,
                        member,
                        "ignoring a malformed pending job id"
                    );
                    None
                }
            })
            .collect())
    }

    async fn position(&self, id: Uuid) -> Result<Option<u32>, QueueError> {
        Ok(self.positions_of(&[id]).await?.pop().flatten())
    }

    async fn positions(&self, ids: &[Uuid]) -> Result<Vec<Option<u32>>, QueueError> {
        self.positions_of(ids).await
    }

    async fn depth(&self) -> Result<u64, QueueError> {
        self.pool
            .zcard(self.keys.queue.as_str())
            .await
            .map_err(|err| unavailable("reading the queue depth", err))
    }

    async fn snapshot(&self) -> Result<Vec<QueuedJob>, QueueError> {
        let mut jobs = Vec::new();
        // Paged by ticket (tickets are unique), each page read atomically, so jobs that leave
        // meanwhile only drop out and no job is listed twice.
        let mut after = "-inf".to_owned();
        loop {
            let keys = vec![
                self.keys.queue.clone(),
                self.keys.jobs.clone(),
                self.keys.models.clone(),
            ];
            let args: Vec<Value> = vec![after.clone().into(), (SNAPSHOT_PAGE as i64).into()];
            let reply = self.run(&self.scripts.snapshot, keys, args).await?;
            let fields = match &reply {
                Value::Array(fields) => fields,
                Value::Null => break,
                _ => return Err(unexpected("snapshot", &reply)),
            };
            if fields.len() % 4 != 0 {
                return Err(unexpected("snapshot", &reply));
            }
            let count = fields.len() / 4;
            for triple in fields.chunks_exact(4) {
                let id = string_of(&triple[0]).and_then(|id| Uuid::parse_str(&id).ok());
                let ticket = triple[1].as_i64();
                let user = string_of(&triple[2]);
                let model = string_of(&triple[3]).filter(|model| !model.is_empty());
                match (id, ticket, user) {
                    (Some(id), Some(ticket), Some(user)) => {
                        after = ticket.to_string();
                        jobs.push(QueuedJob {
                            id,
                            user_id: Arc::from(user),
                            ticket,
                            model: model.map(Arc::from),
                        });
                    }
                    _ => {
                        tracing::warn!(entry = ?triple, "ignoring a malformed queue entry");
                        if let Some(ticket) = triple[1].as_i64() {
                            after = ticket.to_string();
                        }
                    }
                }
            }
            if count < SNAPSHOT_PAGE {
                break;
            }
        }
        Ok(jobs)
    }

    async fn last_moved(&self) -> Result<Option<DateTime<Utc>>, QueueError> {
        let millis: Option<i64> = self
            .pool
            .get(self.keys.moved.as_str())
            .await
            .map_err(|err| unavailable("reading when the queue moved", err))?;
        Ok(millis.and_then(DateTime::from_timestamp_millis))
    }

    async fn mark_moved(&self, at: DateTime<Utc>) -> Result<(), QueueError> {
        let keys = vec![self.keys.moved.clone()];
        let args: Vec<Value> = vec![at.timestamp_millis().into()];
        self.run(&self.scripts.mark_moved, keys, args).await?;
        Ok(())
    }

    async fn rebuild(
        &self,
        queued: Vec<QueuedJob>,
        pending: Vec<(String, Uuid)>,
        max_ticket: i64,
    ) -> Result<Rebuilt, QueueError> {
        let (added, highest) = self.rebuild_jobs(queued).await?;
        self.rebuild_pending(pending).await?;
        // Last, so the store counts as initialised (enqueue stops answering NeedsRebuild) only
        // once every lost job is back.
        let keys = vec![self.keys.ticket.clone(), self.keys.queue.clone()];
        let args: Vec<Value> = vec![max_ticket.max(highest).max(0).into()];
        let reply = self.run(&self.scripts.finish_rebuild, keys, args).await?;
        let queued = reply
            .as_u64()
            .ok_or_else(|| unexpected("finish_rebuild", &reply))?;
        Ok(Rebuilt {
            added,
            queued: queued as usize,
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<FeedItem> {
        self.feed.subscribe()
    }

    async fn ping(&self) -> Result<(), QueueError> {
        self.pool
            .ping::<Value>(None)
            .await
            .map_err(|err| unavailable("pinging Redis", err))?;
        match self.writes.failing(std::time::Instant::now()) {
            Some(why) => Err(QueueError::WritesFailing(why)),
            None => Ok(()),
        }
    }
}
