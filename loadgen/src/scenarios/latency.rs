//! Scenario 2, latency: an open loop of `--rate` jobs/s over `--latency-users` users for
//! `--duration`; submit → `job.queued` and `job.processing` → `job.complete` percentiles well
//! below saturation. Target: p99 < 10 ms on PostgreSQL + Redis.

use super::common::{
    account_jobs, account_sessions, backends, close_sessions, drain, durations, open_sessions,
    per_second, rss_into, since, tokens, traces, verify_persisted, warm_pool,
};
use super::drive::open_loop;
use super::{Ctx, Res};
use crate::log;
use crate::report::{Row, ScenarioResult, ms, summarize};
use crate::sampling::RssSampler;
use crate::session::{Counters, SessionOptions};
use std::sync::Arc;
use std::time::Duration;

/// `--duration` when not given.
const DEFAULT_DURATION: Duration = Duration::from_secs(30);

/// Runs the latency scenario.
pub async fn latency(ctx: &Ctx) -> Res<ScenarioResult> {
    let args = &ctx.args;
    let duration = args.duration_or(DEFAULT_DURATION);
    let mut result = ScenarioResult::new("latency", &ctx.stores);
    result.config = format!(
        "open loop {} jobs/s over {} users for {:?}, {}, 64×64, 1 step",
        args.rate,
        args.latency_users,
        duration,
        backends(ctx)
    );
    let counters = Arc::new(Counters::default());
    let users = tokens(ctx, "lat", args.latency_users).await?;
    let (sessions, _) =
        open_sessions(ctx, &users, &counters, |_| SessionOptions::default()).await?;
    warm_pool(ctx, 64).await;
    log(format!("latency: {} jobs/s for {:?}", args.rate, duration));
    let rss = RssSampler::start_with(ctx.pid, ctx.others.clone());
    let run = open_loop(ctx, &sessions, args.rate, duration, &mut result, |_| {}).await;
    drain(ctx, &counters, &sessions, &run.accepted).await;
    rss_into(&mut result, rss.finish().await);
    let traces = traces(&sessions);
    account_sessions(&sessions, &mut result);
    account_jobs(&run.accepted, &traces, &mut result);
    let offered = format!("{:.0} jobs/s offered", args.rate);
    let accepted = &run.accepted;
    result.rows.push(Row::new(
        "(a) POST sent → job.queued received",
        offered.clone(),
        summarize(durations(accepted, &traces, |job, trace| {
            since(trace.queued, job.sent)
        })),
    ));
    result.rows.push(Row::new(
        "(b) job.processing → job.complete received (gateway's cost around a ~1 ms Forge call)",
        "",
        summarize(durations(accepted, &traces, |_, trace| {
            Some(trace.complete?.saturating_duration_since(trace.processing?))
        })),
    ));
    result.rows.push(Row::new(
        "(c) POST round trip",
        "",
        summarize(
            accepted
                .iter()
                .map(|job| ms(job.answered - job.sent))
                .collect(),
        ),
    ));
    result.rows.push(Row::new(
        "(d) POST sent → job.complete received",
        format!(
            "{:.0} jobs/s completed",
            per_second(
                accepted
                    .iter()
                    .filter(|job| traces.get(&job.id).is_some_and(|t| t.complete.is_some()))
                    .count(),
                duration
            )
        ),
        summarize(durations(accepted, &traces, |job, trace| {
            since(trace.complete, job.sent)
        })),
    ));
    result.rows.push(Row::new(
        "job.queued → job.processing (queue wait)",
        "",
        summarize(durations(accepted, &traces, |_, trace| {
            Some(trace.processing?.saturating_duration_since(trace.queued?))
        })),
    ));
    result.notes.push(format!(
        "{} submissions, {} accepted; the schedule lagged at most {:.1} ms",
        run.submissions,
        accepted.len(),
        ms(run.max_lag)
    ));
    let _ = run.end;
    verify_persisted(ctx, &sessions, accepted, &traces, &mut result).await;
    close_sessions(sessions).await;
    Ok(result)
}
