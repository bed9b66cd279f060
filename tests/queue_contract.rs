//! The queue store contract, written once and run against both stores.
//!
//! Every check is an async function over `Arc<dyn QueueStore>`; the `contract!` macro
//! instantiates each for the in-process `MemoryQueue` (plain tests) and for `RedisQueue` on a
//! fresh key prefix (ignored unless asked for: run them with
//! `TEST_REDIS_URL=redis://127.0.0.1:6379 cargo test --test queue_contract -- --include-ignored`).
//! Redis tests only ever delete their own prefix's keys.
//!
//! After the contract come the Redis-only checks: a lost state and its rebuild, the feed's gap
//! after a dropped subscriber, recovery after Redis goes away, and the Redis event bus.

mod common;
use actix::{Actor, Context, Handler};
use common::{TcpProxy, delete_redis_prefix, plain_client};
use forge_gateway::domain::event::{JobEvent, JobEventKind};
use forge_gateway::domain::queue_book::{QueueBook, QueueChange, QueuedJob};
use forge_gateway::events::redis_bus::RedisBus;
use forge_gateway::events::registry::{Deliver, Permit, SessionCaps};
use forge_gateway::events::{EventBus, SessionRegistry};
use forge_gateway::queue::memory::MemoryQueue;
use forge_gateway::queue::redis::RedisQueue;
use forge_gateway::queue::{FeedItem, QueueError, QueueStore};
use fred::prelude::{ClientLike, PubsubInterface};
use fred::types::{ClusterHash, CustomCommand};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use uuid::Uuid;

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
             TEST_REDIS_URL=redis://127.0.0.1:6379 cargo test --test queue_contract -- --include-ignored"
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

// ---------------------------------------------------------------------------------------------
// The contract
// ---------------------------------------------------------------------------------------------

async fn empty_queue_has_nothing(store: Arc<dyn QueueStore>) {
    assert_eq!(store.pop().await, Ok(None));
    assert_eq!(store.depth().await, Ok(0));
    assert_eq!(store.snapshot().await, Ok(Vec::new()));
    assert_eq!(store.position(id(1)).await, Ok(None));
    assert_eq!(store.remove(id(1)).await, Ok(false));
    assert_eq!(store.pending_of("nobody").await, Ok(Vec::new()));
    assert_eq!(store.ping().await, Ok(()));
}

async fn positions_are_one_based_unique_and_gap_free(store: Arc<dyn QueueStore>) {
    let mut tickets = Vec::new();
    for n in 1..=10u32 {
        let user = format!("user {}", n % 3);
        let enqueued = store
            .enqueue(id(n.into()), &user, NO_CAP)
            .await
            .expect("enqueue");
        assert_eq!(enqueued.position, n, "the n-th job is at position n");
        tickets.push(enqueued.ticket);
    }
    assert!(
        tickets.windows(2).all(|pair| pair[0] < pair[1]),
        "tickets increase: {tickets:?}"
    );
    assert_eq!(store.depth().await, Ok(10));
    let snapshot = store.snapshot().await.expect("snapshot");
    assert_eq!(snapshot.len(), 10);
    assert_eq!(
        snapshot.iter().map(|job| job.ticket).collect::<Vec<_>>(),
        tickets,
        "the snapshot is in ticket order"
    );
    for (index, job) in snapshot.iter().enumerate() {
        assert_eq!(job.id, id(index as u128 + 1));
        assert_eq!(&*job.user_id, format!("user {}", (index + 1) % 3));
        assert_eq!(
            store.position(job.id).await,
            Ok(Some(index as u32 + 1)),
            "position agrees with the snapshot's order"
        );
    }
    assert_eq!(store.position(id(99)).await, Ok(None));
}

async fn three_concurrent_enqueues_get_positions_one_two_three(store: Arc<dyn QueueStore>) {
    let (a, b, c) = tokio::join!(
        store.enqueue(id(1), "a", NO_CAP),
        store.enqueue(id(2), "b", NO_CAP),
        store.enqueue(id(3), "c", NO_CAP),
    );
    let results = [a.expect("a"), b.expect("b"), c.expect("c")];
    let positions: BTreeSet<u32> = results.iter().map(|r| r.position).collect();
    assert_eq!(positions, BTreeSet::from([1, 2, 3]));
    let tickets: BTreeSet<i64> = results.iter().map(|r| r.ticket).collect();
    assert_eq!(tickets.len(), 3, "distinct tickets");
    let mut by_ticket = results.to_vec();
    by_ticket.sort_by_key(|r| r.ticket);
    assert_eq!(
        by_ticket.iter().map(|r| r.position).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "the lower ticket is in front"
    );
}

async fn two_hundred_concurrent_enqueues_get_each_position_once(store: Arc<dyn QueueStore>) {
    let tasks: Vec<_> = (1..=200u128)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                let user = format!("u{}", n % 17);
                (n, store.enqueue(id(n), &user, NO_CAP).await)
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        let (n, result) = task.await.expect("task");
        results.push((n, result.expect("enqueue")));
    }
    let mut positions: Vec<u32> = results.iter().map(|(_, r)| r.position).collect();
    positions.sort_unstable();
    assert_eq!(positions, (1..=200).collect::<Vec<_>>());
    // With only enqueues, the job with the k-th ticket was at position k when it entered.
    results.sort_by_key(|(_, r)| r.ticket);
    for (k, (_, r)) in results.iter().enumerate() {
        assert_eq!(r.position, k as u32 + 1);
    }
    let snapshot = store.snapshot().await.expect("snapshot");
    assert_eq!(
        ids(&snapshot),
        results.iter().map(|(n, _)| id(*n)).collect::<Vec<_>>()
    );
}

async fn pop_hands_out_jobs_in_ticket_order(store: Arc<dyn QueueStore>) {
    let mut expected = Vec::new();
    for n in 1..=5u128 {
        let enqueued = store.enqueue(id(n), "pat", NO_CAP).await.expect("enqueue");
        expected.push(job(n, "pat", enqueued.ticket));
    }
    for want in &expected {
        assert_eq!(store.pop().await.as_ref(), Ok(&Some(want.clone())));
    }
    assert_eq!(store.pop().await, Ok(None));
    assert_eq!(store.depth().await, Ok(0));
}

async fn concurrent_poppers_get_each_job_exactly_once(store: Arc<dyn QueueStore>) {
    let mut all = HashSet::new();
    for n in 1..=200u128 {
        store
            .enqueue(id(n), &format!("u{}", n % 5), NO_CAP)
            .await
            .expect("enqueue");
        all.insert(id(n));
    }
    let poppers: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut popped = Vec::new();
                while let Some(job) = store.pop().await.expect("pop") {
                    popped.push(job);
                }
                popped
            })
        })
        .collect();
    let mut seen = Vec::new();
    for popper in poppers {
        let popped = popper.await.expect("popper");
        assert!(
            popped
                .windows(2)
                .all(|pair| pair[0].ticket < pair[1].ticket),
            "each popper gets jobs in ticket order"
        );
        seen.extend(popped.into_iter().map(|job| job.id));
    }
    let unique: HashSet<Uuid> = seen.iter().copied().collect();
    assert_eq!(seen.len(), 200, "no job handed out twice");
    assert_eq!(unique, all, "no job missing");
    assert_eq!(store.depth().await, Ok(0));
}

async fn remove_shifts_everyone_behind(store: Arc<dyn QueueStore>) {
    for n in 1..=5u128 {
        store.enqueue(id(n), "rita", NO_CAP).await.expect("enqueue");
    }
    assert_eq!(store.remove(id(2)).await, Ok(true));
    assert_eq!(store.position(id(1)).await, Ok(Some(1)));
    assert_eq!(store.position(id(2)).await, Ok(None));
    for n in 3..=5u128 {
        assert_eq!(
            store.position(id(n)).await,
            Ok(Some(n as u32 - 1)),
            "everyone behind moved up by one"
        );
    }
    assert_eq!(store.remove(id(2)).await, Ok(false), "removed already");
    assert_eq!(store.remove(id(77)).await, Ok(false), "never queued");
    assert_eq!(store.depth().await, Ok(4));
    assert_eq!(
        ids(&store.snapshot().await.expect("snapshot")),
        vec![id(1), id(3), id(4), id(5)]
    );
}

async fn positions_in_one_call_match_one_by_one(store: Arc<dyn QueueStore>) {
    assert_eq!(store.positions(&[]).await, Ok(Vec::new()));
    assert_eq!(
        store.positions(&[id(9)]).await,
        Ok(vec![None]),
        "one, not queued"
    );
    for n in 1..=4u128 {
        store
            .enqueue(id(n), "paula", NO_CAP)
            .await
            .expect("enqueue");
    }
    assert_eq!(
        store.positions(&[id(3)]).await,
        Ok(vec![Some(3)]),
        "one, queued"
    );
    store.remove(id(2)).await.expect("remove");
    assert_eq!(
        store.positions(&[id(4), id(2), id(1), id(99), id(3)]).await,
        Ok(vec![Some(3), None, Some(1), None, Some(2)])
    );
}

async fn requeue_restores_the_place_and_is_idempotent(store: Arc<dyn QueueStore>) {
    for n in 1..=3u128 {
        store
            .enqueue(id(n), "quinn", NO_CAP)
            .await
            .expect("enqueue");
    }
    let first = store.pop().await.expect("pop").expect("a job");
    assert_eq!(first.id, id(1));
    assert_eq!(store.position(id(2)).await, Ok(Some(1)));
    store.requeue(&first).await.expect("requeue");
    assert_eq!(store.position(id(1)).await, Ok(Some(1)), "back in front");
    assert_eq!(store.position(id(2)).await, Ok(Some(2)));
    assert_eq!(store.position(id(3)).await, Ok(Some(3)));
    let before = store.snapshot().await.expect("snapshot");
    store.requeue(&first).await.expect("requeue again");
    assert_eq!(
        store.snapshot().await.as_ref(),
        Ok(&before),
        "nothing changed"
    );
    assert_eq!(store.depth().await, Ok(3));
    assert_eq!(
        store.pop().await,
        Ok(Some(first)),
        "it keeps its ticket and owner"
    );
}

async fn per_user_cap_is_enforced(store: Arc<dyn QueueStore>) {
    for n in 1..=3u128 {
        store
            .enqueue(id(n), "alice", 3)
            .await
            .expect("within the cap");
    }
    assert_eq!(
        store.enqueue(id(4), "alice", 3).await,
        Err(QueueError::TooManyPending { limit: 3 })
    );
    assert_eq!(
        store.position(id(4)).await,
        Ok(None),
        "refused jobs are not queued"
    );
    store
        .enqueue(id(10), "bob", 3)
        .await
        .expect("other users are unaffected");
    // A popped job is processing: still pending, still counted.
    assert_eq!(
        store.pop().await.map(|job| job.map(|j| j.id)),
        Ok(Some(id(1)))
    );
    assert_eq!(
        store.enqueue(id(4), "alice", 3).await,
        Err(QueueError::TooManyPending { limit: 3 })
    );
    store.release("alice", id(1)).await.expect("release");
    store
        .enqueue(id(4), "alice", 3)
        .await
        .expect("a freed slot fits one more");
    assert_eq!(
        store.enqueue(id(5), "alice", 3).await,
        Err(QueueError::TooManyPending { limit: 3 })
    );
    assert_eq!(
        store.enqueue(id(6), "carol", 0).await,
        Err(QueueError::TooManyPending { limit: 0 }),
        "a cap of zero refuses everything"
    );
}

async fn concurrent_enqueues_respect_the_cap_exactly(store: Arc<dyn QueueStore>) {
    let tasks: Vec<_> = (1..=20u128)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move { store.enqueue(id(n), "greedy", 5).await })
        })
        .collect();
    let mut accepted = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(_) => accepted += 1,
            Err(err) => assert_eq!(err, QueueError::TooManyPending { limit: 5 }),
        }
    }
    assert_eq!(accepted, 5, "exactly the cap");
    assert_eq!(store.depth().await, Ok(5));
    assert_eq!(store.pending_of("greedy").await.map(|ids| ids.len()), Ok(5));
}

async fn pending_of_lists_the_counted_ids(store: Arc<dyn QueueStore>) {
    for n in 1..=3u128 {
        store
            .enqueue(id(n), "carol", NO_CAP)
            .await
            .expect("enqueue");
    }
    store.enqueue(id(9), "dave", NO_CAP).await.expect("enqueue");
    let pending: BTreeSet<Uuid> = store
        .pending_of("carol")
        .await
        .expect("pending")
        .into_iter()
        .collect();
    assert_eq!(pending, BTreeSet::from([id(1), id(2), id(3)]));
    store.release("carol", id(2)).await.expect("release");
    store
        .release("carol", id(42))
        .await
        .expect("an unknown id is harmless");
    store
        .release("nobody", id(1))
        .await
        .expect("an unknown user is harmless");
    let pending: BTreeSet<Uuid> = store
        .pending_of("carol")
        .await
        .expect("pending")
        .into_iter()
        .collect();
    assert_eq!(pending, BTreeSet::from([id(1), id(3)]));
    assert_eq!(store.pending_of("dave").await, Ok(vec![id(9)]));
    assert_eq!(
        store.depth().await,
        Ok(4),
        "release does not touch the queue"
    );
}

async fn feed_reports_every_change_in_order(store: Arc<dyn QueueStore>) {
    let mut feed = store.subscribe();
    let a = store.enqueue(id(1), "fay", NO_CAP).await.expect("a");
    let b = store.enqueue(id(2), "gus", NO_CAP).await.expect("b");
    let c = store.enqueue(id(3), "fay", NO_CAP).await.expect("c");
    let popped = store.pop().await.expect("pop").expect("a job");
    assert!(store.remove(id(2)).await.expect("remove"));
    store.requeue(&popped).await.expect("requeue");
    assert!(
        !store.remove(id(50)).await.expect("remove absent"),
        "no change"
    );
    store
        .requeue(&popped)
        .await
        .expect("requeue again: no change");
    let d = store.enqueue(id(4), "hal", NO_CAP).await.expect("d");
    let expected = vec![
        FeedItem::Change(QueueChange::Added(job(1, "fay", a.ticket))),
        FeedItem::Change(QueueChange::Added(job(2, "gus", b.ticket))),
        FeedItem::Change(QueueChange::Added(job(3, "fay", c.ticket))),
        FeedItem::Change(QueueChange::Removed { id: id(1) }),
        FeedItem::Change(QueueChange::Removed { id: id(2) }),
        FeedItem::Change(QueueChange::Added(job(1, "fay", a.ticket))),
        // The last one right after the requeue: the no-op operations sent nothing.
        FeedItem::Change(QueueChange::Added(job(4, "hal", d.ticket))),
    ];
    assert_eq!(next_items(&mut feed, expected.len()).await, expected);
}

async fn mirror_built_from_the_feed_equals_the_snapshot(store: Arc<dyn QueueStore>) {
    let mut feed = store.subscribe();
    let mut mirror = QueueBook::new();
    mirror.reset(store.snapshot().await.expect("snapshot"));
    let workers: Vec<_> = (0..8u128)
        .map(|worker| {
            let store = store.clone();
            tokio::spawn(async move {
                let user = format!("w{worker}");
                let mut mine = Vec::new();
                for round in 0..25u128 {
                    let n = worker * 1_000 + round + 1;
                    store.enqueue(id(n), &user, NO_CAP).await.expect("enqueue");
                    mine.push(id(n));
                    // Every third round pops; every sixth puts the popped job back.
                    if round % 3 == 0
                        && let Some(job) = store.pop().await.expect("pop")
                        && round % 2 == 0
                    {
                        store.requeue(&job).await.expect("requeue");
                    }
                    if round % 5 == 4 {
                        let victim = mine[mine.len() / 2];
                        store.remove(victim).await.expect("remove");
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
    // Once the sentinel's change arrives, every earlier change has arrived too.
    let sentinel = id(999_999);
    store
        .enqueue(sentinel, "sentinel", NO_CAP)
        .await
        .expect("sentinel");
    let started = Instant::now();
    loop {
        match next_item(&mut feed).await {
            FeedItem::Gap => panic!("the feed lost changes during the burst"),
            FeedItem::Change(change) => {
                let done = matches!(&change, QueueChange::Added(job) if job.id == sentinel);
                mirror.apply(change);
                if done {
                    break;
                }
            }
        }
        assert!(started.elapsed() < DEADLINE, "the feed is too slow");
    }
    let snapshot = store.snapshot().await.expect("snapshot");
    assert!(!snapshot.is_empty());
    assert_eq!(mirror.jobs().cloned().collect::<Vec<_>>(), snapshot);
    for (index, job) in snapshot.iter().enumerate() {
        assert_eq!(mirror.position(&job.id), Some(index as u32 + 1));
    }
}

async fn rebuild_puts_back_only_missing_jobs(store: Arc<dyn QueueStore>) {
    let mut feed = store.subscribe();
    let x1 = store.enqueue(id(1), "xena", NO_CAP).await.expect("x1");
    let x2 = store.enqueue(id(2), "xena", NO_CAP).await.expect("x2");
    assert_eq!(next_items(&mut feed, 2).await.len(), 2, "the two enqueues");
    let top = x2.ticket;
    // The database's view, in ticket order (as `rebuild_from_db` reads it): two jobs the
    // store lacks, two it has.
    let recorded = vec![
        job(1, "xena", x1.ticket),
        job(2, "xena", x2.ticket),
        job(6, "zoe", top + 3),
        job(7, "yann", top + 5),
    ];
    let rebuilt = store
        .rebuild(recorded.clone(), Vec::new(), top + 5)
        .await
        .expect("rebuild");
    assert_eq!((rebuilt.added, rebuilt.queued), (2, 4));
    let order = vec![id(1), id(2), id(6), id(7)];
    assert_eq!(ids(&store.snapshot().await.expect("snapshot")), order);
    assert_eq!(
        next_items(&mut feed, 2).await,
        vec![
            FeedItem::Change(QueueChange::Added(job(6, "zoe", top + 3))),
            FeedItem::Change(QueueChange::Added(job(7, "yann", top + 5))),
        ],
        "additions are published in ticket order"
    );

    let shuffled = vec![
        recorded[3].clone(),
        recorded[0].clone(),
        recorded[2].clone(),
        recorded[1].clone(),
    ];
    let again = store
        .rebuild(shuffled, Vec::new(), top + 5)
        .await
        .expect("rebuild again");
    assert_eq!((again.added, again.queued), (0, 4), "never twice");
    assert_eq!(ids(&store.snapshot().await.expect("snapshot")), order);

    let after = store
        .rebuild(Vec::new(), Vec::new(), 1_000)
        .await
        .expect("rebuild with a higher max ticket");
    assert_eq!(after.added, 0);
    let next = store.enqueue(id(8), "xena", NO_CAP).await.expect("enqueue");
    assert!(next.ticket > 1_000, "new tickets come after max_ticket");
    assert_eq!(next.position, 5);

    // A queued ticket above max_ticket also counts.
    store
        .rebuild(vec![job(9, "yann", 5_000)], Vec::new(), 0)
        .await
        .expect("rebuild");
    let last = store
        .enqueue(id(10), "xena", NO_CAP)
        .await
        .expect("enqueue");
    assert!(last.ticket > 5_000);
    assert_eq!(last.position, 7);
    // A lower max_ticket never moves the counter back.
    store
        .rebuild(Vec::new(), Vec::new(), 3)
        .await
        .expect("rebuild");
    let later = store
        .enqueue(id(11), "xena", NO_CAP)
        .await
        .expect("enqueue");
    assert!(later.ticket > last.ticket);
}

async fn concurrent_rebuilds_add_each_job_once(store: Arc<dyn QueueStore>) {
    // Many jobs (more than one rebuild chunk) from two "processes" at once.
    let recorded: Vec<QueuedJob> = (1..=1_200u128)
        .map(|n| job(n, &format!("u{}", n % 7), n as i64 * 2))
        .collect();
    let (first, second) = tokio::join!(
        store.rebuild(recorded.clone(), Vec::new(), 2_400),
        store.rebuild(recorded.iter().rev().cloned().collect(), Vec::new(), 2_400),
    );
    let (first, second) = (first.expect("first"), second.expect("second"));
    assert_eq!(
        first.added + second.added,
        1_200,
        "each job added exactly once"
    );
    let snapshot = store.snapshot().await.expect("snapshot");
    assert_eq!(
        snapshot, recorded,
        "ticket order, each job once, owners kept"
    );
    assert_eq!(store.depth().await, Ok(1_200));
    assert_eq!(store.position(id(1_200)).await, Ok(Some(1_200)));
}

async fn rebuild_resets_pending_sets(store: Arc<dyn QueueStore>) {
    store.enqueue(id(1), "alice", NO_CAP).await.expect("a1");
    store.enqueue(id(2), "alice", NO_CAP).await.expect("a2");
    store.enqueue(id(3), "bob", NO_CAP).await.expect("b1");
    store
        .rebuild(
            Vec::new(),
            vec![
                ("alice".into(), id(1)),
                ("carol".into(), id(5)),
                ("alice".into(), id(1)),
            ],
            0,
        )
        .await
        .expect("rebuild");
    assert_eq!(store.pending_of("alice").await, Ok(vec![id(1)]));
    assert_eq!(store.pending_of("carol").await, Ok(vec![id(5)]));
    assert_eq!(
        store.pending_of("bob").await,
        Ok(Vec::new()),
        "users the database counts nothing for are cleared"
    );
    // The cap counts the rebuilt sets.
    store
        .enqueue(id(4), "alice", 2)
        .await
        .expect("one more fits");
    assert_eq!(
        store.enqueue(id(6), "alice", 2).await,
        Err(QueueError::TooManyPending { limit: 2 })
    );
    store
        .enqueue(id(7), "bob", 1)
        .await
        .expect("bob's slot is free");
}

async fn last_moved_follows_pops_and_marks(store: Arc<dyn QueueStore>) {
    assert_eq!(store.last_moved().await, Ok(None));
    store.enqueue(id(1), "mo", NO_CAP).await.expect("enqueue");
    let before = chrono::Utc::now() - chrono::Duration::milliseconds(1);
    store.pop().await.expect("pop").expect("a job");
    let after = chrono::Utc::now() + chrono::Duration::milliseconds(1);
    let moved = store
        .last_moved()
        .await
        .expect("last_moved")
        .expect("set by the pop");
    assert!(
        before <= moved && moved <= after,
        "{before} <= {moved} <= {after}"
    );
    assert_eq!(store.pop().await, Ok(None));
    assert_eq!(
        store.last_moved().await,
        Ok(Some(moved)),
        "an empty pop moves nothing"
    );

    // Whole milliseconds, as Redis keeps them.
    let ms = |at: chrono::DateTime<chrono::Utc>| {
        chrono::DateTime::from_timestamp_millis(at.timestamp_millis()).expect("a valid time")
    };
    let later = ms(after + chrono::Duration::minutes(5));
    store.mark_moved(later).await.expect("mark");
    assert_eq!(store.last_moved().await, Ok(Some(later)));
    store
        .mark_moved(ms(before - chrono::Duration::minutes(5)))
        .await
        .expect("mark earlier");
    assert_eq!(
        store.last_moved().await,
        Ok(Some(later)),
        "the latest time stays"
    );
}

// ---------------------------------------------------------------------------------------------
// Redis only: the queue
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Redis: set TEST_REDIS_URL=redis://127.0.0.1:6379"]
async fn redis_enqueue_on_an_uninitialised_prefix_needs_rebuild() {
    redis_only(redis_enqueue_on_an_uninitialised_prefix_needs_rebuild_body).await;
}

async fn redis_enqueue_on_an_uninitialised_prefix_needs_rebuild_body(url: String, prefix: String) {
    let queue = redis_queue(&url, &prefix).await;
    assert_eq!(queue.kind(), "redis");
    assert_eq!(
        queue.enqueue(id(1), "una", NO_CAP).await,
        Err(QueueError::NeedsRebuild)
    );
    assert_eq!(queue.depth().await, Ok(0), "nothing was queued");
    assert_eq!(
        queue.pending_of("una").await,
        Ok(Vec::new()),
        "nothing was counted"
    );
    queue
        .rebuild(Vec::new(), Vec::new(), 0)
        .await
        .expect("rebuild");
    let enqueued = queue.enqueue(id(1), "una", NO_CAP).await.expect("enqueue");
    assert_eq!((enqueued.ticket, enqueued.position), (1, 1));
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Redis: set TEST_REDIS_URL=redis://127.0.0.1:6379"]
async fn redis_lost_state_is_rebuilt_by_two_processes_without_duplicates() {
    redis_only(redis_lost_state_is_rebuilt_by_two_processes_without_duplicates_body).await;
}

async fn redis_lost_state_is_rebuilt_by_two_processes_without_duplicates_body(
    url: String,
    prefix: String,
) {
    let one = redis_queue(&url, &prefix).await;
    let two = redis_queue(&url, &prefix).await;
    one.rebuild(Vec::new(), Vec::new(), 0)
        .await
        .expect("initialise");
    for n in 1..=6u128 {
        let store = if n % 2 == 0 { &one } else { &two };
        store
            .enqueue(id(n), &format!("u{}", n % 3), NO_CAP)
            .await
            .expect("enqueue");
    }
    one.pop().await.expect("pop").expect("job 1 is processing");
    // What the database holds: jobs 2..=6 queued, 1..=6 pending, max ticket 6.
    let recorded = one.snapshot().await.expect("snapshot");
    let pending: Vec<(String, Uuid)> = (1..=6u128)
        .map(|n| (format!("u{}", n % 3), id(n)))
        .collect();

    delete_redis_prefix(&url, &prefix).await; // what a Redis restart does
    assert_eq!(
        two.enqueue(id(7), "u0", NO_CAP).await,
        Err(QueueError::NeedsRebuild)
    );
    assert_eq!(one.depth().await, Ok(0));

    let (a, b) = tokio::join!(
        one.rebuild(recorded.clone(), pending.clone(), 6),
        two.rebuild(recorded.clone(), pending.clone(), 6),
    );
    let (a, b) = (a.expect("rebuild one"), b.expect("rebuild two"));
    assert_eq!(
        a.added + b.added,
        recorded.len(),
        "each job back exactly once"
    );
    assert_eq!(
        one.snapshot().await.as_ref(),
        Ok(&recorded),
        "order restored"
    );
    let next = two
        .enqueue(id(7), "u1", NO_CAP)
        .await
        .expect("enqueue after rebuild");
    assert_eq!((next.ticket, next.position), (7, 6));
    let counted: BTreeSet<Uuid> = one
        .pending_of("u1")
        .await
        .expect("pending")
        .into_iter()
        .collect();
    assert_eq!(counted, BTreeSet::from([id(1), id(4), id(7)]));
    one.close().await;
    two.close().await;
}

/// The `id` of the connection named `name` in `CLIENT LIST`.
async fn connection_id(client: &fred::prelude::Client, name: &str) -> Option<String> {
    let list: String = client
        .custom(
            CustomCommand::new_static("CLIENT", ClusterHash::FirstKey, false),
            vec!["LIST"],
        )
        .await
        .expect("CLIENT LIST");
    list.lines().find_map(|line| {
        let fields: HashMap<&str, &str> = line
            .split(' ')
            .filter_map(|field| field.split_once('='))
            .collect();
        (fields.get("name") == Some(&name)).then(|| fields.get("id").map(|id| (*id).to_owned()))?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Redis: set TEST_REDIS_URL=redis://127.0.0.1:6379"]
async fn redis_feed_reports_a_gap_when_its_connection_drops_and_then_recovers() {
    redis_only(redis_feed_reports_a_gap_when_its_connection_drops_and_then_recovers_body).await;
}

async fn redis_feed_reports_a_gap_when_its_connection_drops_and_then_recovers_body(
    url: String,
    prefix: String,
) {
    let queue = initialised_redis_queue(&url, &prefix).await;
    let mut feed = queue.subscribe();
    queue.enqueue(id(1), "kim", NO_CAP).await.expect("enqueue");
    assert!(matches!(
        next_item(&mut feed).await,
        FeedItem::Change(QueueChange::Added(_))
    ));

    let admin = plain_client(&url).await;
    let connection = connection_id(&admin, queue.feed_client_name())
        .await
        .expect("the feed subscriber is in CLIENT LIST under its name");
    let _: i64 = admin
        .custom(
            CustomCommand::new_static("CLIENT", ClusterHash::FirstKey, false),
            vec!["KILL", "ID", connection.as_str()],
        )
        .await
        .expect("CLIENT KILL");
    assert_eq!(
        next_item(&mut feed).await,
        FeedItem::Gap,
        "the drop is reported"
    );

    // Subscribed again before the gap was reported: the next change arrives.
    let enqueued = queue.enqueue(id(2), "kim", NO_CAP).await.expect("enqueue");
    assert_eq!(
        next_change(&mut feed).await,
        FeedItem::Change(QueueChange::Added(job(2, "kim", enqueued.ticket)))
    );
    let _ = admin.quit().await;
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Redis: set TEST_REDIS_URL=redis://127.0.0.1:6379"]
async fn redis_malformed_feed_messages_become_gaps() {
    redis_only(redis_malformed_feed_messages_become_gaps_body).await;
}

async fn redis_malformed_feed_messages_become_gaps_body(url: String, prefix: String) {
    let queue = initialised_redis_queue(&url, &prefix).await;
    let mut feed = queue.subscribe();
    let admin = plain_client(&url).await;
    let channel = format!("{{{prefix}}}:feed");
    for garbage in ["garbage", "1 A not-a-uuid 1 u", "2 R"] {
        let _: i64 = admin
            .publish(channel.as_str(), garbage)
            .await
            .expect("publish");
        assert_eq!(next_item(&mut feed).await, FeedItem::Gap, "{garbage:?}");
    }
    let enqueued = queue.enqueue(id(1), "lee", NO_CAP).await.expect("enqueue");
    assert_eq!(
        next_item(&mut feed).await,
        FeedItem::Change(QueueChange::Added(job(1, "lee", enqueued.ticket)))
    );
    // A skipped sequence number (a lost message) is a gap too.
    let _: i64 = admin
        .publish(channel.as_str(), format!("1000 R {}", id(1)))
        .await
        .expect("publish");
    assert_eq!(next_item(&mut feed).await, FeedItem::Gap);
    let _ = admin.quit().await;
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Redis: set TEST_REDIS_URL=redis://127.0.0.1:6379"]
async fn redis_calls_fail_promptly_while_redis_is_away_and_work_again_after() {
    redis_only(redis_calls_fail_promptly_while_redis_is_away_and_work_again_after_body).await;
}

async fn redis_calls_fail_promptly_while_redis_is_away_and_work_again_after_body(
    url: String,
    prefix: String,
) {
    let target = url
        .strip_prefix("redis://")
        .expect("a redis:// URL")
        .split('/')
        .next()
        .expect("authority")
        .rsplit('@')
        .next()
        .expect("host:port")
        .to_owned();
    let proxy = TcpProxy::start(target).await;
    let queue =
        initialised_redis_queue(&format!("redis://127.0.0.1:{}", proxy.port), &prefix).await;
    let mut feed = queue.subscribe();
    queue.enqueue(id(1), "ada", NO_CAP).await.expect("enqueue");
    assert!(matches!(
        next_item(&mut feed).await,
        FeedItem::Change(QueueChange::Added(_))
    ));

    proxy.cut().await;
    let started = Instant::now();
    match queue.enqueue(id(2), "ada", NO_CAP).await {
        Err(QueueError::Unavailable(_)) => {}
        other => panic!("expected Unavailable while Redis is away, got {other:?}"),
    }
    assert!(
        queue.ping().await.is_err(),
        "ping fails while Redis is away"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "calls fail promptly ({:?})",
        started.elapsed()
    );

    proxy.resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    while queue.ping().await.is_err() {
        assert!(Instant::now() < deadline, "the queue did not reconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The subscriber reports its reconnect (after subscribing again) as a gap ...
    assert_eq!(next_item(&mut feed).await, FeedItem::Gap);
    let enqueued = queue
        .enqueue(id(2), "ada", NO_CAP)
        .await
        .expect("enqueue after recovery");
    assert_eq!(enqueued.position, 2, "the queue kept its state");
    // ... and carries changes again.
    assert_eq!(
        next_change(&mut feed).await,
        FeedItem::Change(QueueChange::Added(job(2, "ada", enqueued.ticket)))
    );
    queue.close().await;
    proxy.cut().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: set TEST_REDIS_URL=redis://127.0.0.1:6379"]
async fn redis_connect_fails_cleanly_without_redis() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = probe.local_addr().expect("address").port();
    drop(probe);
    let started = Instant::now();
    let result = RedisQueue::connect(&format!("redis://127.0.0.1:{port}"), &fresh_prefix()).await;
    assert!(matches!(result, Err(QueueError::Unavailable(_))));
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(matches!(
        RedisQueue::connect(&redis_url(), "bad{prefix}").await,
        Err(QueueError::Unavailable(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// Redis only: the event bus
// ---------------------------------------------------------------------------------------------

/// A stand-in for a WebSocket session: forwards what the hub delivers to a channel.
struct FakeSession(tokio::sync::mpsc::UnboundedSender<Deliver>);

impl Actor for FakeSession {
    type Context = Context<Self>;
}

impl Handler<Deliver> for FakeSession {
    type Result = ();

    fn handle(&mut self, msg: Deliver, _ctx: &mut Context<Self>) {
        let _ = self.0.send(msg);
    }
}

/// A registry on the test's arbiter.
fn registry() -> SessionRegistry {
    SessionRegistry::start(
        &actix::Arbiter::current(),
        SessionCaps {
            per_user: 8,
            total: 100,
        },
    )
}

/// A session of `user` in `registry`: its permit (keep it) and what it receives.
async fn fake_session(
    registry: &SessionRegistry,
    user: &str,
) -> (Permit, tokio::sync::mpsc::UnboundedReceiver<Deliver>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let permit = registry.admit(user).await.expect("admitted");
    registry.attach(&permit, FakeSession(tx).start().recipient());
    (permit, rx)
}

async fn next_frame(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Deliver>) -> String {
    match tokio::time::timeout(DEADLINE, rx.recv()).await {
        Ok(Some(Deliver::Event { body, .. })) => body.to_string(),
        Ok(Some(other)) => panic!("unexpected {other:?}"),
        Ok(None) => panic!("the session channel closed"),
        Err(_) => panic!("no frame within {DEADLINE:?}"),
    }
}

fn event(user: &str, n: u128, version: i64) -> JobEvent {
    JobEvent {
        user_id: user.to_owned(),
        message_id: id(n),
        version: Some(version),
        kind: JobEventKind::Processing { progress: 0 },
    }
}

#[actix_rt::test]
#[ignore = "needs Redis: set TEST_REDIS_URL=redis://127.0.0.1:6379"]
async fn redis_bus_delivers_each_event_once_to_every_process() {
    let url = redis_url();
    let prefix = fresh_prefix();
    let (hub_a, hub_b) = (registry(), registry());
    let bus_a = RedisBus::connect(&url, &prefix, hub_a.clone())
        .await
        .expect("bus a");
    let bus_b = RedisBus::connect(&url, &prefix, hub_b.clone())
        .await
        .expect("bus b");
    let (_a, mut on_a) = fake_session(&hub_a, "alice").await;
    let (_b, mut on_b) = fake_session(&hub_b, "alice").await;
    let (_c, mut bob_on_b) = fake_session(&hub_b, "bob").await;

    let first = event("alice", 1, 1);
    bus_a.publish(first.clone()).await;
    // The second event proves the first did not arrive twice: it is the very next frame.
    let second = event("alice", 1, 2);
    bus_b.publish(second.clone()).await;
    let bobs = event("bob", 2, 1);
    bus_a.publish(bobs.clone()).await;
    for session in [&mut on_a, &mut on_b] {
        assert_eq!(next_frame(session).await, first.frame_body());
        assert_eq!(next_frame(session).await, second.frame_body());
    }
    assert_eq!(
        next_frame(&mut bob_on_b).await,
        bobs.frame_body(),
        "bob's own event"
    );
    // Alice's sessions never saw bob's event: their next frame is the next alice event.
    let third = event("alice", 3, 1);
    bus_b.publish(third.clone()).await;
    assert_eq!(next_frame(&mut on_a).await, third.frame_body());
    assert_eq!(next_frame(&mut on_b).await, third.frame_body());

    bus_a.close().await;
    bus_b.close().await;
}

#[actix_rt::test]
#[ignore = "needs Redis: set TEST_REDIS_URL=redis://127.0.0.1:6379"]
async fn redis_bus_skips_malformed_messages() {
    let url = redis_url();
    let prefix = fresh_prefix();
    let hub = registry();
    let bus = RedisBus::connect(&url, &prefix, hub.clone())
        .await
        .expect("bus");
    let (_permit, mut session) = fake_session(&hub, "alice").await;
    let admin = plain_client(&url).await;
    let channel = format!("{{{prefix}}}:events");
    for garbage in ["not json", "{\"user_id\":\"alice\"}", "[]"] {
        let _: i64 = admin
            .publish(channel.as_str(), garbage)
            .await
            .expect("publish");
    }
    let valid = event("alice", 5, 1);
    bus.publish(valid.clone()).await;
    assert_eq!(next_frame(&mut session).await, valid.frame_body());
    let _ = admin.quit().await;
    bus.close().await;
    assert!(RedisBus::connect(&url, "bad}", hub).await.is_err());
}
