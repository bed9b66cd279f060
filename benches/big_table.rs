//! The queries that run on a timer against the whole `messages` table, on 1,000,000 rows of
//! which 1,100 are pending: the watchdog's stuck-job scan (100 stuck) and a metrics scrape's
//! count, each timed with the query plan that shows it uses the `(status, activity_at)` index.
//! The scrape is also timed the way it was before (a GROUP BY over every row) for comparison.
//!
//! `cargo bench --bench big_table` (SQLite), plus PostgreSQL with
//! `BENCH_DATABASE_URL=postgres://postgres@127.0.0.1/test` (a fresh schema, dropped after).

mod common;

use chrono::{Duration as Age, Utc};
use forge_gateway::db::{COUNT_PENDING, Database, DbSettings};
use std::time::{Duration, Instant};

const ROWS: u64 = 1_000_000;
const STUCK: u64 = 100;

/// The query the watchdog runs (the shape of `Database::stuck_jobs`), for EXPLAIN.
const SCAN: &str = "SELECT id, user_id, status FROM messages WHERE status IN ('queued', 'processing') AND activity_at <= {cutoff} LIMIT 1000";

async fn fill(db: &Database, postgres: bool) {
    // 1,000,000 finished jobs spread over the last 30 days, 100 processing jobs whose last
    // activity is an hour old (stuck), and 1,000 queued/processing ones active just now.
    let sql = if postgres {
        format!(
            "INSERT INTO messages (id, user_id, status, progress, prompt, params, placeholder, data, version, created_at, updated_at, activity_at)
             SELECT gen_random_uuid(), 'user' || (i % 5000), CASE WHEN i % 10 = 0 THEN 'error' ELSE 'complete' END, 100, 'prompt ' || i, '{{}}'::jsonb, false, '{{}}'::jsonb, 3,
                    now() - (i % 2592000) * interval '1 second', now() - (i % 2592000) * interval '1 second', now() - (i % 2592000) * interval '1 second'
             FROM generate_series(1, {finished}) AS i;
             INSERT INTO messages (id, user_id, status, progress, prompt, params, placeholder, data, version, created_at, updated_at, activity_at)
             SELECT gen_random_uuid(), 'stuck' || i, 'processing', 10, 'stuck ' || i, '{{}}'::jsonb, false, '{{}}'::jsonb, 2,
                    now() - interval '2 hours', now() - interval '1 hour', now() - interval '1 hour'
             FROM generate_series(1, {STUCK}) AS i;
             INSERT INTO messages (id, user_id, status, progress, prompt, params, placeholder, data, version, created_at, updated_at, activity_at)
             SELECT gen_random_uuid(), 'live' || i, CASE WHEN i % 2 = 0 THEN 'queued' ELSE 'processing' END, 0, 'live ' || i, '{{}}'::jsonb, false, '{{}}'::jsonb, 1, now(), now(), now()
             FROM generate_series(1, 1000) AS i;
             ANALYZE messages;",
            finished = ROWS - STUCK - 1000
        )
    } else {
        // sqlx writes SQLite timestamps as RFC 3339 text; these compare the same way.
        let ts = |age: &str| format!("strftime('%Y-%m-%dT%H:%M:%S', 'now', {age}) || '+00:00'");
        format!(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {finished})
             INSERT INTO messages (id, user_id, status, progress, prompt, params, placeholder, data, version, created_at, updated_at, activity_at)
             SELECT randomblob(16), 'user' || (i % 5000), CASE WHEN i % 10 = 0 THEN 'error' ELSE 'complete' END, 100, 'prompt ' || i, '{{}}', 0, '{{}}', 3, {old}, {old}, {old} FROM s;
             WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {STUCK})
             INSERT INTO messages (id, user_id, status, progress, prompt, params, placeholder, data, version, created_at, updated_at, activity_at)
             SELECT randomblob(16), 'stuck' || i, 'processing', 10, 'stuck ' || i, '{{}}', 0, '{{}}', 2, {hour}, {hour}, {hour} FROM s;
             WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 1000)
             INSERT INTO messages (id, user_id, status, progress, prompt, params, placeholder, data, version, created_at, updated_at, activity_at)
             SELECT randomblob(16), 'live' || i, CASE WHEN i % 2 = 0 THEN 'queued' ELSE 'processing' END, 0, 'live ' || i, '{{}}', 0, '{{}}', 1, {now}, {now}, {now} FROM s;
             ANALYZE;",
            finished = ROWS - STUCK - 1000,
            old = ts("'-' || (i % 2592000) || ' seconds'"),
            hour = ts("'-3600 seconds'"),
            now = ts("'+0 seconds'"),
        )
    };
    for statement in sql.split(";\n") {
        if !statement.trim().is_empty() {
            db.execute_raw(statement).await.expect("fill");
        }
    }
}

async fn bench(label: &str, settings: DbSettings, postgres: bool) {
    let db = Database::connect(&settings).await.expect("connect");
    let started = Instant::now();
    fill(&db, postgres).await;
    println!(
        "{label}: filled {ROWS} rows in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let cutoff = Utc::now() - Age::minutes(5);
    let scan = timed(|| async {
        let stuck = db
            .stuck_jobs(cutoff, forge_gateway::db::QueuedStuck::All, 1000)
            .await
            .expect("scan");
        assert_eq!(stuck.len() as u64, STUCK, "exactly the stuck jobs");
    })
    .await;
    println!("| {label} | watchdog scan | {scan} |");
    let scrape = timed(|| async {
        let counts = db.count_pending_by_status().await.expect("count");
        let pending: i64 = counts.iter().map(|(_, n)| n).sum();
        assert_eq!(pending as u64, STUCK + 1000, "every pending row counted");
    })
    .await;
    println!("| {label} | metrics scrape (pending rows, now) | {scrape} |");
    let whole = timed(|| async {
        db.execute_raw("SELECT status, COUNT(*) FROM messages GROUP BY status")
            .await
            .expect("group by");
    })
    .await;
    println!("| {label} | metrics scrape (every row, before) | {whole} |");

    let literal = if postgres {
        format!("'{}'::timestamptz", cutoff.to_rfc3339())
    } else {
        format!("'{}'", cutoff.to_rfc3339())
    };
    let explain = if postgres {
        "EXPLAIN "
    } else {
        "EXPLAIN QUERY PLAN "
    };
    let plan = db
        .explain(&format!("{explain}{}", SCAN.replace("{cutoff}", &literal)))
        .await
        .expect("explain");
    println!("{label} watchdog plan:\n{plan}");
    let plan = db
        .explain(&format!("{explain}{COUNT_PENDING}"))
        .await
        .expect("explain");
    println!("{label} scrape plan:\n{plan}");
}

/// Runs `query` 30 times; "min | median | max" in milliseconds.
async fn timed<F, Fut>(query: F) -> String
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = Vec::new();
    for _ in 0..30 {
        let started = Instant::now();
        query().await;
        times.push(started.elapsed());
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "{:.2} | {:.2} | {:.2}",
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1])
    )
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        println!(
            "{ROWS} rows, {STUCK} stuck, 1,000 more pending\n\n| database | query | min ms | median ms | max ms |\n|---|---|---|---|---|"
        );
        common::on_each_database(4, bench).await;
    });
}
