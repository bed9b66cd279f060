//! The queue store contract, written once and run against both stores.
//!
//! Every check is an async function over `Arc<dyn QueueStore>`; the `contract!` macro
//! instantiates each for the in-process `MemoryQueue` (plain tests) and for `RedisQueue` on a
//! fresh key prefix (ignored unless asked for: run them with
//! `TEST_REDIS_URL=redis://127.0.0.1:6379 cargo test --test it queue_contract -- --include-ignored`).
//! Redis tests only ever delete their own prefix's keys.
//!
//! After the contract come the Redis-only checks: a lost state and its rebuild, the feed's gap
//! after a dropped subscriber, recovery after Redis goes away, and the Redis event bus.

mod feed;
mod models;
mod order;
mod redis_bus;
mod redis_queue;

use crate::common::{TcpProxy, delete_redis_prefix, plain_client};
use actix::{Actor, Context, Handler};
use forge_gateway::domain::event::{JobEvent, JobEventKind};
use forge_gateway::domain::queue_book::{QueueBook, QueueChange, QueuedJob};
use forge_gateway::domain::routing::{Offer, Routing};
use forge_gateway::events::redis_bus::RedisBus;
use forge_gateway::events::registry::{Deliver, Permit, SessionCaps};
use forge_gateway::events::{EventBus, SessionRegistry};
use forge_gateway::queue::memory::MemoryQueue;
use forge_gateway::queue::redis::RedisQueue;
use forge_gateway::queue::{FeedItem, QueueError, QueueStore};
use forge_gateway::redis_client::RedisError;
use fred::prelude::{ClientLike, PubsubInterface};
use fred::types::{ClusterHash, CustomCommand};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use uuid::Uuid;

use feed::*;
use models::*;
use order::*;

/// Store results compared in assertions: the error as text (errors keep causes that do not
/// compare).
trait Shown<T> {
    fn shown(self) -> Result<T, String>;
}

impl<T> Shown<T> for Result<T, QueueError> {
    fn shown(self) -> Result<T, String> {
        self.map_err(|err| err.to_string())
    }
}

/// Longest a test waits for something it expects.
const DEADLINE: Duration = Duration::from_secs(15);
/// A cap no test reaches.
const NO_CAP: u32 = 1_000_000;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

fn redis_url() -> String {
    match std::env::var("TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "TEST_REDIS_URL is not set: Redis tests need it, e.g. \
             TEST_REDIS_URL=redis://127.0.0.1:6379 cargo test --test it queue_contract -- --include-ignored"
        ),
    }
}

fn fresh_prefix() -> String {
    format!("fgtest-{}", Uuid::now_v7().simple())
}

async fn redis_queue(url: &str, prefix: &str) -> Arc<RedisQueue> {
    Arc::new(
        RedisQueue::connect(url, prefix)
            .await
            .expect("connect to Redis"),
    )
}

/// A Redis queue on `prefix`, initialised empty (as a gateway's start does).
async fn initialised_redis_queue(url: &str, prefix: &str) -> Arc<RedisQueue> {
    let queue = redis_queue(url, prefix).await;
    queue
        .rebuild(Vec::new(), Vec::new(), 0)
        .await
        .expect("initial rebuild");
    queue
}

/// Runs a check on a fresh in-process queue.
async fn on_memory<F, Fut>(check: F)
where
    F: FnOnce(Arc<dyn QueueStore>) -> Fut,
    Fut: Future<Output = ()>,
{
    check(Arc::new(MemoryQueue::new())).await;
}

/// Runs a check on a Redis queue with a fresh prefix (initialised as the gateway does at
/// start, with an empty rebuild), then closes it and deletes the prefix's keys, also when the
/// check failed.
async fn on_redis<F, Fut>(check: F)
where
    F: FnOnce(Arc<dyn QueueStore>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let url = redis_url();
    let prefix = fresh_prefix();
    let queue = initialised_redis_queue(&url, &prefix).await;
    let outcome = tokio::spawn(check(queue.clone())).await;
    queue.close().await;
    delete_redis_prefix(&url, &prefix).await;
    if let Err(err) = outcome {
        std::panic::resume_unwind(err.into_panic());
    }
}

/// Runs a Redis-only test with a fresh prefix and deletes the prefix's keys afterwards, also
/// when the test failed.
async fn redis_only<F, Fut>(test: F)
where
    F: FnOnce(String, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let url = redis_url();
    let prefix = fresh_prefix();
    let outcome = tokio::spawn(test(url.clone(), prefix.clone())).await;
    delete_redis_prefix(&url, &prefix).await;
    if let Err(err) = outcome {
        std::panic::resume_unwind(err.into_panic());
    }
}

macro_rules! contract {
    ($($check:ident),+ $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    super::on_memory(super::$check).await;
                }
            )+
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                #[ignore = "needs Redis: set TEST_REDIS_URL=redis://127.0.0.1:6379"]
                async fn $check() {
                    super::on_redis(super::$check).await;
                }
            )+
        }
    };
}

contract!(
    empty_queue_has_nothing,
    pops_take_only_offered_models_and_positions_count_shared_backends,
    a_rebuild_keeps_each_jobs_model,
    jobs_for_a_model_nobody_lists_count_in_no_position,
    positions_are_one_based_unique_and_gap_free,
    three_concurrent_enqueues_get_positions_one_two_three,
    two_hundred_concurrent_enqueues_get_each_position_once,
    pop_hands_out_jobs_in_ticket_order,
    concurrent_poppers_get_each_job_exactly_once,
    remove_shifts_everyone_behind,
    positions_in_one_call_match_one_by_one,
    requeue_restores_the_place_and_is_idempotent,
    per_user_cap_is_enforced,
    concurrent_enqueues_respect_the_cap_exactly,
    pending_of_lists_the_counted_ids,
    feed_reports_every_change_in_order,
    mirror_built_from_the_feed_equals_the_snapshot,
    rebuild_puts_back_only_missing_jobs,
    concurrent_rebuilds_add_each_job_once,
    rebuild_resets_pending_sets,
    last_moved_follows_pops_and_marks,
);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn id(n: u128) -> Uuid {
    Uuid::from_u128(0xf0f0_0000_0000_0000_0000_0000_0000_0000 | n)
}

fn job(n: u128, user: &str, ticket: i64) -> QueuedJob {
    QueuedJob {
        id: id(n),
        user_id: Arc::from(user),
        ticket,
        model: None,
    }
}

/// The next feed item, or a failure after the deadline.
async fn next_item(feed: &mut broadcast::Receiver<FeedItem>) -> FeedItem {
    match tokio::time::timeout(DEADLINE, feed.recv()).await {
        Ok(Ok(item)) => item,
        Ok(Err(err)) => panic!("the feed failed: {err}"),
        Err(_) => panic!("no feed item within {DEADLINE:?}"),
    }
}

/// The next feed item that is not a gap (a reconnect may report more than one).
async fn next_change(feed: &mut broadcast::Receiver<FeedItem>) -> FeedItem {
    loop {
        match next_item(feed).await {
            FeedItem::Gap => continue,
            change => return change,
        }
    }
}

/// The next `n` feed items.
async fn next_items(feed: &mut broadcast::Receiver<FeedItem>, n: usize) -> Vec<FeedItem> {
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        items.push(next_item(feed).await);
    }
    items
}

fn ids(jobs: &[QueuedJob]) -> Vec<Uuid> {
    jobs.iter().map(|job| job.id).collect()
}
