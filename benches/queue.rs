//! Queue store benchmark: `cargo bench --bench queue`.
//!
//! Measures, with `CLIENTS` concurrent tasks for a few seconds each:
//! (a) `RedisQueue` enqueue + pop throughput (two Lua scripts per job),
//! (b) a baseline on the same Redis: plain `INCR` + `ZADD` to enqueue, `ZPOPMIN` to pop,
//! (c) `MemoryQueue` enqueue + pop throughput,
//! and (d) how long the `QueueActor`'s mirror takes to compute the new positions of 10,000
//! waiting jobs after one pop.
//!
//! Reads `REDIS_URL` (default `redis://127.0.0.1:6379`); uses a fresh key prefix and deletes
//! its keys at the end. If Redis cannot be reached, (a) and (b) are skipped.

use forge_gateway::domain::queue_book::{QueueBook, QueueChange, QueuedJob};
use forge_gateway::domain::routing::Offer;
use forge_gateway::queue::QueueStore;
use forge_gateway::queue::memory::MemoryQueue;
use forge_gateway::queue::redis::RedisQueue;
use fred::prelude::{Builder, ClientLike, Config, KeysInterface, SortedSetsInterface, Value};
use futures::StreamExt;
use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Concurrent clients for the throughput runs.
const CLIENTS: usize = 64;
/// How long each throughput run lasts.
const RUN_FOR: Duration = Duration::from_secs(5);
/// A cap the benchmark never reaches.
const NO_CAP: u32 = u32::MAX;
/// Jobs waiting in the mirror for (d).
const MIRROR_JOBS: usize = 10_000;
/// Pops measured for (d).
const MIRROR_POPS: usize = 100;

type BoxError = Box<dyn Error + Send + Sync>;

/// One row of the result table.
struct Row {
    case: &'static str,
    jobs: u64,
    elapsed: Duration,
}

impl Row {
    fn per_second(&self) -> f64 {
        self.jobs as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `CLIENTS` copies of `one_job` in a loop for `RUN_FOR`; counts the jobs done.
async fn throughput<F, Fut>(case: &'static str, one_job: F) -> Result<Row, BoxError>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), BoxError>> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + RUN_FOR;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (one_job, done) = (one_job.clone(), done.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    one_job(client, n).await?;
                    n += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, BoxError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(Row {
        case,
        jobs: done.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    })
}

/// Enqueue one job and pop one (not necessarily the same: other clients pop too).
async fn store_job(store: &dyn QueueStore, client: usize) -> Result<(), BoxError> {
    store
        .enqueue(Uuid::now_v7(), &format!("user-{client}"), None, NO_CAP)
        .await?;
    store.pop(&Offer::default()).await?;
    Ok(())
}

async fn bench_redis_queue(url: &str, prefix: &str) -> Result<Row, BoxError> {
    let queue = Arc::new(RedisQueue::connect(url, prefix).await?);
    queue.rebuild(Vec::new(), Vec::new(), 0).await?;
    let store = queue.clone();
    let row = throughput("(a) RedisQueue enqueue+pop (Lua)", move |client, _| {
        let store = store.clone();
        async move { store_job(&*store, client).await }
    })
    .await;
    queue.close().await;
    row
}

async fn bench_baseline(url: &str, prefix: &str) -> Result<Row, BoxError> {
    let pool = Builder::from_config(Config::from_url(url)?).build_pool(4)?;
    pool.init().await?;
    let ticket = format!("{{{prefix}}}:bench:ticket");
    let queue = format!("{{{prefix}}}:bench:queue");
    let shared = Arc::new((pool.clone(), ticket, queue));
    let row = throughput("(b) baseline INCR+ZADD / ZPOPMIN", move |_, _| {
        let shared = shared.clone();
        async move {
            let (pool, ticket, queue) = &*shared;
            let next: i64 = pool.incr(ticket.as_str()).await?;
            let _: i64 = pool
                .zadd(
                    queue.as_str(),
                    None,
                    None,
                    false,
                    false,
                    (next as f64, Uuid::now_v7().to_string()),
                )
                .await?;
            let _: Value = pool.zpopmin(queue.as_str(), None).await?;
            Ok(())
        }
    })
    .await;
    let _ = pool.quit().await;
    row
}

async fn bench_memory() -> Result<Row, BoxError> {
    let store = Arc::new(MemoryQueue::new());
    throughput("(c) MemoryQueue enqueue+pop", move |client, _| {
        let store = store.clone();
        async move { store_job(&*store, client).await }
    })
    .await
}

/// (d): the mirror's work after one pop: apply `Removed` for the front job of 10,000 (who
/// moved is computed later, per connected user, by the position feed). Returns the median and
/// p99 times and how many pops changed the mirror.
fn bench_mirror() -> (Duration, Duration, usize) {
    let mut book = QueueBook::new();
    let job = |ticket: i64| QueuedJob {
        id: Uuid::from_u128(ticket as u128),
        user_id: Arc::from(format!("user-{}", ticket % 100)),
        ticket,
        model: None,
    };
    for ticket in 1..=MIRROR_JOBS as i64 {
        book.insert(job(ticket));
    }
    let mut times = Vec::with_capacity(MIRROR_POPS);
    let mut updates = 0;
    for next in (MIRROR_JOBS + 1) as i64..=(MIRROR_JOBS + MIRROR_POPS) as i64 {
        let Some(front) = book.jobs().next().map(|job| job.id) else {
            break;
        };
        let started = Instant::now();
        let changed = book.apply(QueueChange::Removed { id: front });
        times.push(started.elapsed());
        updates += usize::from(changed);
        // Keep the book at 10,000 jobs (not timed).
        book.insert(job(next));
    }
    times.sort_unstable();
    let at = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99), updates)
}

/// Deletes every key of the benchmark's prefix.
async fn cleanup(url: &str, prefix: &str) -> Result<u64, BoxError> {
    let client = Builder::from_config(Config::from_url(url)?).build()?;
    client.init().await?;
    let keys: Vec<fred::types::Key> = client
        .scan_buffered(format!("{{{prefix}}}:*"), Some(500), None)
        .filter_map(|key| async move { key.ok() })
        .collect()
        .await;
    let mut deleted = 0;
    for chunk in keys.chunks(500) {
        let n: u64 = client.del(chunk.to_vec()).await?;
        deleted += n;
    }
    let _ = client.quit().await;
    Ok(deleted)
}

async fn run() -> Result<(), BoxError> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("fgbench-{}", Uuid::now_v7().simple());
    println!(
        "queue benchmark: {CLIENTS} concurrent clients, {} s per run, Redis at {url}, prefix {{{prefix}}}",
        RUN_FOR.as_secs()
    );
    let mut rows = Vec::new();
    match bench_redis_queue(&url, &prefix).await {
        Ok(row) => {
            rows.push(row);
            rows.push(bench_baseline(&url, &prefix).await?);
        }
        Err(err) => println!("Redis runs skipped: {err}"),
    }
    rows.push(bench_memory().await?);
    let (median, p99, updates) = bench_mirror();

    println!();
    println!("| case | jobs | seconds | jobs/s |");
    println!("|---|---:|---:|---:|");
    for row in &rows {
        println!(
            "| {} | {} | {:.2} | {:.0} |",
            row.case,
            row.jobs,
            row.elapsed.as_secs_f64(),
            row.per_second()
        );
    }
    println!();
    println!(
        "(d) mirror after one pop, {MIRROR_JOBS} waiting jobs ({updates} pops applied), \
         {MIRROR_POPS} pops: median {:.1} µs, p99 {:.1} µs",
        median.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
    match cleanup(&url, &prefix).await {
        Ok(deleted) => println!("cleaned up {deleted} keys of {{{prefix}}}"),
        Err(err) => println!("cleanup of {{{prefix}}} skipped: {err}"),
    }
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}
