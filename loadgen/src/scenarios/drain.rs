//! The second half of scenario `deep` (issue 16): how fast a deep queue drains, with and without
//! its owners' sessions, and whether sessions hold stale positions once the queue stops.
//!
//! Each measurement queues `--drain-jobs` jobs over the scenario's users while every simulator
//! hangs (`POST /sim/config {"mode":"hang"}`), so only the backends' slots hold a job; then the
//! simulators go back to `normal`, the hung jobs are cancelled (which frees their slots), and
//! the clock runs until the queue is empty. The end is found over REST in both runs, so that
//! the runs differ only by the sessions: the job with the highest queue position (the queue is
//! FIFO) is polled until it ends, then every user's pending list must be empty.
//!
//! The staleness check queues the jobs again with the sessions open, lets about half drain,
//! makes the simulators hang again, waits until no job has been dispatched for 500 ms, and then
//! `--stale-after` later compares each session's last known position of each queued job with
//! REST's `queue_position`.

use super::common::{merge_extra, wait_until};
use super::{Ctx, Res};
use crate::client::{Listed, Submitted};
use crate::log;
use crate::report::{Row, ScenarioResult};
use crate::session::{Counters, Session};
use futures::StreamExt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How often the tail job is polled while the queue drains.
const POLL_EVERY: Duration = Duration::from_millis(50);
/// No dispatch for this long means the queue stopped.
const STOPPED_AFTER: Duration = Duration::from_millis(500);

/// A queued job: its owner's index, its id, and the position its 202 gave.
pub(super) type Queued = (usize, Uuid, Option<u32>);

/// One drain measurement.
struct Drain {
    /// Jobs accepted.
    jobs: usize,
    /// Hung jobs cancelled to free the backends.
    cancelled: usize,
    /// From the release until the queue was found empty.
    elapsed: Duration,
    /// Jobs still pending at the drain timeout (0 when it drained).
    left: usize,
}

impl Drain {
    fn rate(&self) -> f64 {
        (self.jobs - self.cancelled - self.left) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Sets `mode` on every simulator.
pub(super) async fn set_mode(ctx: &Ctx, mode: &str) -> Res<()> {
    for sim in &ctx.sim_urls {
        ctx.api
            .sim_config(sim, serde_json::json!({ "mode": mode }))
            .await?;
    }
    Ok(())
}

/// Runs the drain measurements and the staleness check, then closes the sessions; the
/// simulators are left in `normal` mode whatever happens.
pub(super) async fn drain_and_staleness(
    ctx: &Ctx,
    users: &[(String, String)],
    sessions: Vec<Session>,
    counters: &Counters,
    result: &mut ScenarioResult,
) -> Res<()> {
    if ctx.args.drain_jobs == 0 || ctx.sim_urls.is_empty() {
        result.notes.push(
            "drain and staleness: skipped (--drain-jobs 0, or no simulator to control: --sim-url)"
                .into(),
        );
        super::common::close_sessions(sessions).await;
        return Ok(());
    }
    let tokens: Vec<String> = users.iter().map(|(_, token)| token.clone()).collect();
    let outcome = measure(ctx, &tokens, sessions, counters, result).await;
    let reset = set_mode(ctx, "normal").await;
    outcome.and(reset)
}

async fn measure(
    ctx: &Ctx,
    tokens: &[String],
    sessions: Vec<Session>,
    counters: &Counters,
    result: &mut ScenarioResult,
) -> Res<()> {
    let n = ctx.args.drain_jobs;
    log(format!(
        "deep: drain of {n} jobs with {} sessions open",
        sessions.len()
    ));
    let with = drain_once(ctx, tokens, result).await?;
    staleness(ctx, tokens, &sessions, counters, result).await?;
    let session_count = sessions.len();
    super::common::close_sessions(sessions).await;
    log(format!("deep: drain of {n} jobs with no session open"));
    let without = drain_once(ctx, tokens, result).await?;
    for (label, drain) in [
        (format!("the owners' {session_count} sessions open"), &with),
        ("no session open".to_owned(), &without),
    ] {
        result.rows.push(Row::new(
            format!(
                "drain of {} queued jobs ({} hung ones cancelled), {label}: {:.2} s{}",
                drain.jobs,
                drain.cancelled,
                drain.elapsed.as_secs_f64(),
                if drain.left > 0 {
                    format!(", {} still pending at the drain timeout", drain.left)
                } else {
                    String::new()
                }
            ),
            format!("{:.0} jobs/s", drain.rate()),
            None,
        ));
        result.lost_jobs += drain.left as u64;
    }
    let ratio = with.rate() / without.rate().max(1e-9);
    result.rows.push(Row::new(
        format!("drain rate with sessions ÷ without: {ratio:.2}"),
        "",
        None,
    ));
    merge_extra(
        result,
        serde_json::json!({
            "drain_jobs_per_second_with_sessions": with.rate(),
            "drain_jobs_per_second_without_sessions": without.rate(),
            "drain_ratio_with_over_without": ratio,
        }),
    );
    Ok(())
}

/// Queues `jobs` jobs behind hanging simulators, spread over `tokens`: each accepted job with
/// its owner's index and the position the 202 gave.
pub(super) async fn fill(
    ctx: &Ctx,
    tokens: &[String],
    jobs: usize,
    result: &mut ScenarioResult,
) -> Res<Vec<Queued>> {
    set_mode(ctx, "hang").await?;
    let started = Instant::now();
    let answers: Vec<(usize, Submitted)> = futures::stream::iter((0..jobs).map(|i| {
        let owner = i % tokens.len();
        let (api, token) = (ctx.api.clone(), tokens[owner].clone());
        async move {
            (
                owner,
                api.submit(&token, &format!("loadgen drain {i}")).await,
            )
        }
    }))
    .buffer_unordered(ctx.args.submit_concurrency)
    .collect()
    .await;
    let mut accepted = Vec::with_capacity(answers.len());
    for (owner, answer) in answers {
        match answer.result {
            Ok((id, position)) => accepted.push((owner, id, position)),
            Err(code) => result.error(format!("POST {}", crate::procs::truncate(&code, 100)), 1),
        }
    }
    log(format!(
        "deep: {} jobs queued in {:.1} s",
        accepted.len(),
        started.elapsed().as_secs_f64()
    ));
    // Let the dispatcher fill every slot with a (hanging) job.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(accepted)
}

/// Every user's messages with `status`, as (owner, listed).
async fn list_status(ctx: &Ctx, tokens: &[String], status: &str) -> Res<Vec<(usize, Listed)>> {
    let pages: Vec<Res<Vec<(usize, Listed)>>> =
        futures::stream::iter(tokens.iter().enumerate().map(|(owner, token)| {
            let api = ctx.api.clone();
            let token = token.clone();
            let status = status.to_owned();
            async move {
                let listed = api.list_all(&token, &status).await?;
                Ok(listed.into_iter().map(|item| (owner, item)).collect())
            }
        }))
        .buffer_unordered(16)
        .collect()
        .await;
    let mut all = Vec::new();
    for page in pages {
        all.extend(page?);
    }
    Ok(all)
}

/// Simulators back to `normal`, the hung (processing) jobs cancelled: the release time and
/// how many were cancelled.
async fn release(
    ctx: &Ctx,
    tokens: &[String],
    result: &mut ScenarioResult,
) -> Res<(Instant, usize)> {
    let hung = list_status(ctx, tokens, "processing").await?;
    let released = Instant::now();
    set_mode(ctx, "normal").await?;
    let statuses: Vec<Result<u16, String>> =
        futures::stream::iter(hung.iter().map(|(owner, listed)| {
            let (api, token, id) = (ctx.api.clone(), tokens[*owner].clone(), listed.id);
            async move { api.cancel(&token, id).await }
        }))
        .buffer_unordered(64)
        .collect()
        .await;
    let mut cancelled = 0;
    for status in statuses {
        match status {
            Ok(200) => cancelled += 1,
            // Already finished: it completed in normal mode before the cancel arrived.
            Ok(409) => {}
            Ok(other) => result.error(format!("cancel answered {other}"), 1),
            Err(err) => result.error(format!("cancel failed: {err}"), 1),
        }
    }
    Ok((released, cancelled))
}

/// Waits (until the drain timeout) for the queue behind `jobs` to be empty, over REST only.
/// Returns the time found empty and the jobs still pending if it was not.
async fn wait_empty(ctx: &Ctx, tokens: &[String], jobs: &[Queued]) -> Res<(Instant, usize)> {
    let deadline = Instant::now() + ctx.args.drain_timeout;
    let tail = jobs
        .iter()
        .max_by_key(|(_, _, position)| position.unwrap_or(0))
        .copied();
    if let Some((owner, id, _)) = tail {
        while Instant::now() < deadline {
            let view = ctx.api.message(&tokens[owner], id).await?;
            if !matches!(view["status"].as_str(), Some("queued" | "processing")) {
                break;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
    loop {
        let checked = Instant::now();
        let pending = list_status(ctx, tokens, "pending").await?.len();
        if pending == 0 || Instant::now() >= deadline {
            return Ok((checked, pending));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Queues, releases and times one drain.
async fn drain_once(ctx: &Ctx, tokens: &[String], result: &mut ScenarioResult) -> Res<Drain> {
    let jobs = fill(ctx, tokens, ctx.args.drain_jobs, result).await?;
    let (released, cancelled) = release(ctx, tokens, result).await?;
    let (empty_at, left) = wait_empty(ctx, tokens, &jobs).await?;
    let drain = Drain {
        jobs: jobs.len(),
        cancelled,
        elapsed: empty_at.saturating_duration_since(released),
        left,
    };
    log(format!(
        "deep: drained {} jobs in {:.2} s ({:.0} jobs/s){}",
        drain.jobs - drain.cancelled - drain.left,
        drain.elapsed.as_secs_f64(),
        drain.rate(),
        if left > 0 {
            format!(", {left} left")
        } else {
            String::new()
        }
    ));
    Ok(drain)
}

/// The staleness check (sessions open): see the module doc.
async fn staleness(
    ctx: &Ctx,
    tokens: &[String],
    sessions: &[Session],
    counters: &Counters,
    result: &mut ScenarioResult,
) -> Res<()> {
    let jobs = fill(ctx, tokens, ctx.args.drain_jobs, result).await?;
    let ended_before = counters.terminal.load(Ordering::Relaxed);
    let _ = release(ctx, tokens, result).await?;
    let half = ended_before + jobs.len() as u64 / 2;
    wait_until(ctx.args.drain_timeout, Duration::from_millis(2), || {
        counters.terminal.load(Ordering::Relaxed) >= half
    })
    .await;
    set_mode(ctx, "hang").await?;
    // The queue has stopped once no job is dispatched (or ends) for a while.
    let mut last = (
        counters.processing.load(Ordering::Relaxed),
        counters.terminal.load(Ordering::Relaxed),
    );
    let mut stopped_at = Instant::now();
    while stopped_at.elapsed() < STOPPED_AFTER {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = (
            counters.processing.load(Ordering::Relaxed),
            counters.terminal.load(Ordering::Relaxed),
        );
        if now != last {
            last = now;
            stopped_at = Instant::now();
        }
    }
    tokio::time::sleep_until((stopped_at + ctx.args.stale_after).into()).await;
    let queued = list_status(ctx, tokens, "queued").await?;
    let (mut mismatched, mut unknown) = (0usize, 0usize);
    let mut first = None;
    for (owner, listed) in &queued {
        let seen = sessions[*owner]
            .state
            .jobs
            .lock()
            .get(&listed.id)
            .and_then(|trace| trace.last_position);
        match seen {
            None => unknown += 1,
            Some(position) if Some(position) != listed.queue_position => {
                mismatched += 1;
                first.get_or_insert(format!(
                    "{}: session {position}, REST {:?}",
                    listed.id, listed.queue_position
                ));
            }
            Some(_) => {}
        }
    }
    result.rows.push(Row::new(
        format!(
            "staleness {:?} after the queue stopped at {} queued jobs: {mismatched} positions differ from REST, {unknown} unknown to their session",
            ctx.args.stale_after,
            queued.len()
        ),
        "",
        None,
    ));
    result.error(
        "stale position after the queue stopped",
        (mismatched + unknown) as u64,
    );
    if let Some(first) = first {
        result.notes.push(format!("first stale position: {first}"));
    }
    merge_extra(
        result,
        serde_json::json!({
            "stale_checked": queued.len(),
            "stale_mismatched": mismatched,
            "stale_unknown": unknown,
        }),
    );
    // Let the rest drain before the next measurement.
    let (released, _) = release(ctx, tokens, result).await?;
    let (_, left) = wait_empty(ctx, tokens, &jobs).await?;
    log(format!(
        "deep: staleness check done ({mismatched} stale, {unknown} unknown); the rest drained in {:.1} s",
        released.elapsed().as_secs_f64()
    ));
    result.lost_jobs += left as u64;
    Ok(())
}
