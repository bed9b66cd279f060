//! Scenario `big` (issue 16, item 4): a queue of `--big-jobs` (100,000) waiting jobs.
//!
//! Every simulator hangs (`POST /sim/config {"mode":"hang"}`), so only the backends' slots hold
//! a job and everything else waits. Measured, in order:
//!
//! 1. enqueue: `--big-jobs` POSTs spread over `--clients` users (`--submit-concurrency` in
//!    flight), jobs/s;
//! 2. memory: the gateway's RSS and, with Redis, Redis's `used_memory`, before and after;
//! 3. snapshot: one more user queues 20 jobs at the tail, then opens a WebSocket ten times:
//!    connect → `hello` + `snapshot`, p50 and max;
//! 4. with Redis, a Redis loss: every key of the gateway's prefix is deleted, and the clock
//!    runs until REST shows that user's 20 positions exactly as before (found by the queue
//!    audit, rebuilt from the database);
//! 5. a restart: the gateway is killed (SIGKILL) and started again on the same stores; the
//!    time until it listens, and until REST shows that user's 20 positions again (consecutive,
//!    earlier by at most the jobs the new process took to its slots: the killed process's
//!    running jobs stay `processing` until the watchdog ends them).
//!
//! The rebuild's own duration, as the gateway logged it (`took`), is added where its log line
//! is found.

use super::common::tokens;
use super::drain::{fill, set_mode};
use super::{Ctx, Res};
use crate::log;
use crate::procs::{Deployment, delete_redis_keys, redis_used_memory};
use crate::report::{Row, ScenarioResult, ms, summarize};
use crate::sampling::rss_kib;
use crate::session::{Counters, Session, SessionOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Jobs of the user whose snapshot and positions are measured.
const READER_JOBS: usize = 20;
/// Connects timed for the snapshot.
const SNAPSHOTS: usize = 10;
/// How long the positions may take to come back after a loss.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the scenario; `deployment` is the gateway this run started (restart and Redis loss
/// need it; against `--url` they are skipped).
pub async fn big(ctx: &Ctx, deployment: Option<&mut Deployment>) -> Res<ScenarioResult> {
    let args = &ctx.args;
    let mut result = ScenarioResult::new("big", &ctx.stores);
    result.config = format!(
        "{} jobs queued over {} users behind hanging backends; snapshot of a user with {READER_JOBS} queued jobs at the tail; Redis loss and restart",
        args.big_jobs, args.clients
    );
    let users = tokens(ctx, "big", args.clients).await?;
    let tokens_only: Vec<String> = users.iter().map(|(_, token)| token.clone()).collect();
    let rss_before = ctx.pid.and_then(rss_kib).map(|(rss, _)| rss);
    let redis_url = deployment
        .as_ref()
        .and_then(|deployment| deployment.redis())
        .map(|(url, prefix)| (url.clone(), prefix.clone()));
    let redis_before = redis_url
        .as_ref()
        .and_then(|(url, _)| redis_used_memory(url));

    let started = Instant::now();
    let queued = fill(ctx, &tokens_only, args.big_jobs, &mut result).await?;
    let took = started.elapsed();
    result.rows.push(Row::new(
        format!("enqueue {} jobs", queued.len()),
        format!(
            "{:.0} jobs/s ({:.1} s)",
            queued.len() as f64 / took.as_secs_f64(),
            took.as_secs_f64()
        ),
        None,
    ));
    let rss_after = ctx.pid.and_then(rss_kib).map(|(rss, _)| rss);
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        result.rows.push(Row::new(
            "gateway RSS before → after",
            format!(
                "{:.1} → {:.1} MiB ({:.0} bytes per queued job)",
                before as f64 / 1024.0,
                after as f64 / 1024.0,
                (after.saturating_sub(before) * 1024) as f64 / queued.len().max(1) as f64
            ),
            None,
        ));
    }
    if let (Some((url, _)), Some(before)) = (&redis_url, redis_before)
        && let Some(after) = redis_used_memory(url)
    {
        result.rows.push(Row::new(
            "Redis used_memory before → after",
            format!(
                "{:.1} → {:.1} MiB ({:.0} bytes per queued job)",
                before as f64 / 1048576.0,
                after as f64 / 1048576.0,
                after.saturating_sub(before) as f64 / queued.len().max(1) as f64
            ),
            None,
        ));
    }

    // The reader: 20 jobs at the tail of the queue.
    let reader = tokens(ctx, "big-reader", 1).await?;
    let (reader_name, reader_token) = reader[0].clone();
    for i in 0..READER_JOBS {
        let submitted = ctx
            .api
            .submit(&reader_token, &format!("big reader {i}"))
            .await;
        submitted
            .result
            .map_err(|code| format!("reader's POST: {code}"))?;
    }
    let expected = positions(ctx, &reader_token).await?;
    if expected.len() != READER_JOBS || expected.iter().any(|(_, position)| position.is_none()) {
        return Err(format!("the reader's queued jobs over REST: {expected:?}"));
    }
    log(format!(
        "big: the reader's jobs are at {:?}..{:?}",
        expected.first().and_then(|(_, p)| *p),
        expected.last().and_then(|(_, p)| *p)
    ));
    let mut opens = Vec::new();
    for _ in 0..SNAPSHOTS {
        let started = Instant::now();
        let session = Session::open(
            &ctx.api,
            &reader_name,
            &reader_token,
            Arc::new(Counters::default()),
            SessionOptions::default(),
        )
        .await?;
        opens.push(ms(started.elapsed()));
        session.close().await;
    }
    result.rows.push(Row::new(
        format!("WebSocket connect → snapshot, a user with {READER_JOBS} queued jobs"),
        "",
        summarize(opens),
    ));

    match deployment {
        None => result
            .notes
            .push("Redis loss and restart: skipped (a gateway we did not start)".into()),
        Some(deployment) => {
            if let Some((url, prefix)) = &redis_url {
                delete_redis_keys(url, prefix);
                let back = until_back(
                    ctx,
                    &reader_token,
                    &format!("after the Redis loss (expected {expected:?})"),
                    |now| now == expected,
                )
                .await
                .map_err(|err| {
                    format!(
                        "{err}; the gateway's last lines:\n{}",
                        deployment.gateway.logs.tail().join("\n")
                    )
                })?;
                result.rows.push(Row::new(
                    "Redis loss (every key deleted) → REST positions exact again",
                    format!("{:.2} s{}", back.as_secs_f64(), logged_took(deployment)),
                    None,
                ));
            }
            let listening = deployment.restart_gateway().await?;
            // The killed process's running jobs stay `processing` (stuck after STUCK_AFTER) and
            // the new one fills its free slots from the queue, so up to `slots` jobs ahead of
            // the reader leave the queue: its positions must come back in one consecutive run,
            // as many places earlier as jobs were taken.
            let slots = args.sims.max(1) * args.forge_slots.unwrap_or(1) as usize;
            let back = until_back(
                ctx,
                &reader_token,
                &format!("after the restart (before: {expected:?})"),
                |now| consecutive_within(now, &expected, slots),
            )
            .await?;
            result.rows.push(Row::new(
                "restart (SIGKILL, start again) → listening",
                format!(
                    "{:.2} s{}",
                    listening.as_secs_f64(),
                    logged_took(deployment)
                ),
                None,
            ));
            result.rows.push(Row::new(
                "restart: listening → REST positions back (the new process's slots filled)",
                format!("{:.2} s", back.as_secs_f64()),
                None,
            ));
        }
    }
    set_mode(ctx, "normal").await?;
    Ok(result)
}

/// The reader's queued jobs over REST, oldest first, with their positions.
async fn positions(ctx: &Ctx, token: &str) -> Res<Vec<(Uuid, Option<u32>)>> {
    let mut listed = ctx.api.list(token, "queued", 100, None).await?;
    listed.sort_by_key(|item| item.id);
    Ok(listed
        .into_iter()
        .map(|item| (item.id, item.queue_position))
        .collect())
}

/// Polls REST until the reader's positions satisfy `back`; the time it took. `what` names the
/// wait in the error.
async fn until_back(
    ctx: &Ctx,
    token: &str,
    what: &str,
    back: impl Fn(&[(Uuid, Option<u32>)]) -> bool,
) -> Res<Duration> {
    let started = Instant::now();
    loop {
        if let Ok(now) = positions(ctx, token).await
            && back(&now)
        {
            return Ok(started.elapsed());
        }
        if started.elapsed() > RECOVERY_TIMEOUT {
            let now = positions(ctx, token).await;
            return Err(format!(
                "positions not back within {RECOVERY_TIMEOUT:?} {what}: {now:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The reader's positions are consecutive and at most `taken` places earlier than `before`.
fn consecutive_within(
    now: &[(Uuid, Option<u32>)],
    before: &[(Uuid, Option<u32>)],
    taken: usize,
) -> bool {
    let first_before = before
        .first()
        .and_then(|(_, position)| *position)
        .unwrap_or(0);
    let Some(Some(first)) = now.first().map(|(_, position)| *position) else {
        return false;
    };
    now.len() == before.len()
        && first <= first_before
        && (first_before - first) as usize <= taken
        && now
            .iter()
            .enumerate()
            .all(|(i, (_, position))| *position == Some(first + i as u32))
}

/// `; the gateway logged a rebuild of N jobs in T` from the last rebuild line of its log.
fn logged_took(deployment: &Deployment) -> String {
    deployment
        .gateway
        .logs
        .tail()
        .iter()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["fields"]["took"].is_string())
        .map(|line| {
            let fields = &line["fields"];
            let jobs = fields["added"].as_u64().or(fields["jobs"].as_u64());
            format!(
                "; logged: {} jobs rebuilt in {}",
                jobs.map_or("?".into(), |jobs| jobs.to_string()),
                fields["took"].as_str().unwrap_or("?")
            )
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(first: u32, n: u128) -> Vec<(Uuid, Option<u32>)> {
        (0..n)
            .map(|i| (Uuid::from_u128(i), Some(first + i as u32)))
            .collect()
    }

    #[test]
    fn positions_may_move_up_by_the_slots_taken_and_must_stay_consecutive() {
        let before = run(100, 3);
        assert!(consecutive_within(&before, &before, 4));
        assert!(consecutive_within(&run(96, 3), &before, 4));
        assert!(
            !consecutive_within(&run(95, 3), &before, 4),
            "more than taken"
        );
        assert!(!consecutive_within(&run(101, 3), &before, 4), "moved back");
        assert!(!consecutive_within(&run(96, 2), &before, 4), "one missing");
        let mut gap = run(96, 3);
        gap[2].1 = Some(99);
        assert!(!consecutive_within(&gap, &before, 4), "not consecutive");
        let mut unknown = run(96, 3);
        unknown[0].1 = None;
        assert!(
            !consecutive_within(&unknown, &before, 4),
            "unknown position"
        );
    }
}
