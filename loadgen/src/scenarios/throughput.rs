//! Scenario 1, throughput: `--clients` users, each with a WebSocket, keep `--window` jobs
//! outstanding for `--duration` (closed loop); the rate is the jobs whose `job.complete` arrived
//! inside the window. Target: ≥ 2,000 jobs/s on PostgreSQL + Redis.

use super::common::{
    Accepted, account_jobs, account_sessions, backends, close_sessions, count_submit_errors, drain,
    durations, merge_extra, open_sessions, per_second, rss_into, since, tokens, traces,
    verify_persisted, warm_pool,
};
use super::drive::closed_loop;
use super::perf::{finish_perf, start_perf};
use super::{Ctx, Res};
use crate::log;
use crate::report::{Row, ScenarioResult, ms, summarize};
use crate::sampling::RssSampler;
use crate::session::{Counters, SessionOptions};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// `--duration` when not given.
const DEFAULT_DURATION: Duration = Duration::from_secs(30);

/// Runs the throughput scenario.
pub async fn throughput(ctx: &Ctx) -> Res<ScenarioResult> {
    let args = &ctx.args;
    let duration = args.duration_or(DEFAULT_DURATION);
    let mut result = ScenarioResult::new("throughput", &ctx.stores);
    result.config = format!(
        "{} clients × window {} outstanding jobs, {:?}, {}, 64×64, 1 step",
        args.clients,
        args.window,
        duration,
        backends(ctx)
    );
    let counters = Arc::new(Counters::default());
    let users = tokens(ctx, "tp", args.clients).await?;
    let (sessions, _) =
        open_sessions(ctx, &users, &counters, |_| SessionOptions::default()).await?;
    warm_pool(ctx, args.clients.min(256)).await;
    log(format!(
        "throughput: {} sessions open; submitting for {:?}",
        sessions.len(),
        duration
    ));

    let perf = start_perf(ctx, "throughput");
    let rss = RssSampler::start_with(ctx.pid, ctx.others.clone());
    let run = closed_loop(ctx, &sessions, args.window, duration, "throughput").await?;
    let (start, end, submit_end) = (run.start, run.end, run.submit_end);
    let submissions = run.submissions;
    let accepted = count_submit_errors(&submissions, &mut result);
    log(format!(
        "throughput: {} jobs accepted in {:.1} s ({} completions so far); draining",
        accepted.len(),
        (submit_end - start).as_secs_f64(),
        counters.terminal.load(Ordering::Relaxed)
    ));
    drain(ctx, &counters, &sessions, &accepted).await;
    rss_into(&mut result, rss.finish().await);
    finish_perf(perf, &mut result).await;

    let traces = traces(&sessions);
    account_sessions(&sessions, &mut result);
    account_jobs(&accepted, &traces, &mut result);
    let in_window: Vec<&Accepted> = accepted
        .iter()
        .filter(|job| {
            traces
                .get(&job.id)
                .and_then(|trace| trace.complete)
                .is_some_and(|at| at <= end)
        })
        .collect();
    let completed_total = accepted
        .iter()
        .filter(|job| {
            traces
                .get(&job.id)
                .is_some_and(|trace| trace.complete.is_some())
        })
        .count();
    let rate = per_second(in_window.len(), duration);
    result.rows.push(Row::new(
        "submit → job.complete (jobs completed inside the window)",
        format!("{rate:.0} jobs/s"),
        summarize(durations(&accepted, &traces, |job, trace| {
            since(trace.complete, job.sent)
        })),
    ));
    result.rows.push(Row::new(
        "POST round trip",
        format!(
            "{:.0} accepted/s",
            per_second(accepted.len(), submit_end - start)
        ),
        summarize(
            accepted
                .iter()
                .map(|job| ms(job.answered - job.sent))
                .collect(),
        ),
    ));
    result.rows.push(Row::new(
        "POST sent → job.queued",
        "",
        summarize(durations(&accepted, &traces, |job, trace| {
            since(trace.queued, job.sent)
        })),
    ));
    result.rows.push(Row::new(
        "job.processing → job.complete",
        "",
        summarize(durations(&accepted, &traces, |_, trace| {
            Some(trace.complete?.saturating_duration_since(trace.processing?))
        })),
    ));
    result.notes.push(format!(
        "{} accepted, {} completed in the {:?} window, {} completed in total; submissions stopped at the end of the window",
        accepted.len(),
        in_window.len(),
        duration,
        completed_total
    ));
    verify_persisted(ctx, &sessions, &accepted, &traces, &mut result).await;
    merge_extra(
        &mut result,
        serde_json::json!({
            "jobs_per_second": rate,
            "accepted": accepted.len(),
            "completed_in_window": in_window.len(),
            "completed_total": completed_total,
        }),
    );
    close_sessions(sessions).await;
    Ok(result)
}
