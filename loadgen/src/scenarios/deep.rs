//! Scenario `deep` (issue 16): what a deep queue costs.
//!
//! 1. The throughput scenario's closed loop (`--clients` users, each with a WebSocket) once per
//!    `--windows` value, so that `clients × window` jobs are outstanding (128, 2,048 and 10,240
//!    by default) for `--duration` each: jobs/s per window and its ratio to the first window,
//!    and the position traffic each session gets — position frames (`job.position`, or a
//!    batched `job.positions`, each counting one) per session per second, max and p99 over
//!    sessions × whole seconds of the window.
//! 2. The drain and staleness measurements of `drain.rs`: `--drain-jobs` jobs queued behind
//!    hanging backends, drained once with the owners' sessions open and once with none; and
//!    whether every session's last position equals REST's once the queue stops.

use super::common::{
    Accepted, account_jobs, account_sessions, backends, count_submit_errors, durations,
    merge_extra, open_sessions, per_second, rss_into, since, tokens, traces, wait_until, warm_pool,
};
use super::drain::drain_and_staleness;
use super::drive::closed_loop;
use super::{Ctx, Res};
use crate::log;
use crate::report::{Row, ScenarioResult, summarize};
use crate::sampling::RssSampler;
use crate::session::{Counters, JobTrace, Session, SessionOptions};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// `--duration` (per window) when not given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// Runs the deep-queue scenario.
pub async fn deep(ctx: &Ctx) -> Res<ScenarioResult> {
    let args = &ctx.args;
    let duration = args.duration_or(DEFAULT_DURATION);
    let mut result = ScenarioResult::new("deep", &ctx.stores);
    result.config = format!(
        "{} users × windows {:?} outstanding jobs, {duration:?} per window, {}, 64×64, 1 step; drain of {} jobs queued behind hanging backends with and without the owners' sessions; positions vs REST {:?} after the queue stops",
        args.clients,
        args.windows,
        backends(ctx),
        args.drain_jobs,
        args.stale_after
    );
    let counters = Arc::new(Counters::default());
    let epoch = Instant::now();
    let users = tokens(ctx, "deep", args.clients).await?;
    let (sessions, _) = open_sessions(ctx, &users, &counters, |_| SessionOptions {
        position_buckets_since: Some(epoch),
        ..Default::default()
    })
    .await?;
    warm_pool(ctx, args.clients.min(256)).await;
    let rss = RssSampler::start_with(ctx.pid, ctx.others.clone());
    let mut rates: Vec<(usize, f64)> = Vec::new();
    for &window in &args.windows {
        let rate = window_run(
            ctx,
            &sessions,
            &counters,
            window,
            duration,
            epoch,
            &mut result,
        )
        .await?;
        rates.push((window, rate));
    }
    let (first_window, first_rate) = rates.first().copied().unwrap_or((0, 0.0));
    result.notes.push(format!(
        "jobs/s per window (ratio to window {first_window}): {}",
        rates
            .iter()
            .map(|(window, rate)| format!(
                "{window} → {rate:.0} ({:.2}×)",
                rate / first_rate.max(1e-9)
            ))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    merge_extra(
        &mut result,
        serde_json::json!({ "jobs_per_second_by_window": rates }),
    );
    account_sessions(&sessions, &mut result);
    let outcome = drain_and_staleness(ctx, &users, sessions, &counters, &mut result).await;
    rss_into(&mut result, rss.finish().await);
    outcome?;
    Ok(result)
}

/// One closed-loop run with `window` jobs outstanding per user; its jobs/s.
async fn window_run(
    ctx: &Ctx,
    sessions: &[Session],
    counters: &Counters,
    window: usize,
    duration: Duration,
    epoch: Instant,
    result: &mut ScenarioResult,
) -> Res<f64> {
    let outstanding = window * sessions.len();
    // Credits left from the previous window's jobs must not count in this one.
    for session in sessions {
        session.state.done.forget_permits(usize::MAX);
    }
    let ended_before = counters.terminal.load(Ordering::Relaxed);
    // Jobs of earlier windows are not this window's business.
    let earlier: HashSet<Uuid> = traces(sessions).into_keys().collect();
    log(format!(
        "deep: window {window} ({outstanding} outstanding) for {duration:?}"
    ));
    let run = closed_loop(ctx, sessions, window, duration, &format!("deep w{window}")).await?;
    let accepted = count_submit_errors(&run.submissions, result);
    let target = ended_before + accepted.len() as u64;
    let drained_from = Instant::now();
    let drained = wait_until(ctx.args.drain_timeout, Duration::from_millis(20), || {
        counters.terminal.load(Ordering::Relaxed) >= target
    })
    .await;
    log(format!(
        "deep: window {window}: {} accepted; {} after {:.1} s",
        accepted.len(),
        if drained {
            "all ended"
        } else {
            "NOT all ended"
        },
        drained_from.elapsed().as_secs_f64()
    ));
    let mut traces = traces(sessions);
    traces.retain(|id, _| !earlier.contains(id));
    account_jobs(&accepted, &traces, result);
    // Throughput *at* this many outstanding jobs: counted once every user has its first
    // `window` jobs accepted (filling 10,240 takes seconds, and the fill is intake, not this).
    let filled = filled_at(&accepted, sessions.len(), window).unwrap_or(run.end);
    let in_window = accepted
        .iter()
        .filter(|job| {
            traces
                .get(&job.id)
                .and_then(|trace| trace.complete)
                .is_some_and(|at| at > filled && at <= run.end)
        })
        .count();
    let measured = run.end.saturating_duration_since(filled);
    let rate = per_second(in_window, measured);
    result.notes.push(format!(
        "window {window}: filled {:.2} s after the start; jobs/s over the {:.2} s after that",
        filled.saturating_duration_since(run.start).as_secs_f64(),
        measured.as_secs_f64()
    ));
    result.rows.push(Row::new(
        format!("window {window} ({outstanding} outstanding): submit → job.complete"),
        format!("{rate:.0} jobs/s"),
        summarize(durations(&accepted, &traces, |job, trace| {
            since(trace.complete, job.sent)
        })),
    ));
    result.rows.push(Row::new(
        format!(
            "window {window}: {}",
            position_rates(sessions, &accepted, &traces, epoch, run.start, run.end)
        ),
        "",
        None,
    ));
    Ok(rate)
}

/// When every one of `users` users had its first `window` jobs accepted (their answers read):
/// from then on each has `window` outstanding. `None` if one never got that far.
fn filled_at(accepted: &[Accepted], users: usize, window: usize) -> Option<Instant> {
    let mut by_user: Vec<Vec<&Accepted>> = vec![Vec::new(); users];
    for job in accepted {
        by_user.get_mut(job.session)?.push(job);
    }
    let mut latest = None;
    for jobs in &mut by_user {
        jobs.sort_by_key(|job| job.sent);
        let first = jobs.get(..window)?;
        latest = latest.max(first.iter().map(|job| job.answered).max());
    }
    latest
}

/// Position frames per session per second over the whole seconds of `start..end`, and position
/// updates per job, as one line.
fn position_rates(
    sessions: &[Session],
    accepted: &[Accepted],
    traces: &HashMap<Uuid, JobTrace>,
    epoch: Instant,
    start: Instant,
    end: Instant,
) -> String {
    let from = start.saturating_duration_since(epoch).as_secs_f64().ceil() as usize;
    let to = end.saturating_duration_since(epoch).as_secs_f64().floor() as usize;
    let per_second: Vec<f64> = sessions
        .iter()
        .flat_map(|session| session.state.position_frames_per_second(from, to))
        .map(f64::from)
        .collect();
    let updates: u64 = accepted
        .iter()
        .filter_map(|job| traces.get(&job.id))
        .map(|trace| u64::from(trace.position_events))
        .sum();
    let per_job = updates as f64 / accepted.len().max(1) as f64;
    match summarize(per_second) {
        Some(s) => format!(
            "position frames per session per second: max {:.0}, p99 {:.0}, p50 {:.0}, mean {:.1} (over {} session-seconds); {per_job:.1} position updates per job",
            s.max, s.p99, s.p50, s.mean, s.n
        ),
        None => format!(
            "position frames per session per second: no whole second in the window; {per_job:.1} position updates per job"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_filled_when_every_user_has_its_first_jobs_answered() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let job = |session: usize, sent: u64, answered: u64| Accepted {
            id: Uuid::from_u128(sent as u128 + 1000 * session as u128),
            session,
            sent: at(sent),
            answered: at(answered),
        };
        // User 0's first two answered by 30 ms, user 1's by 50 ms; later jobs do not count.
        let accepted = [
            job(0, 0, 10),
            job(1, 0, 50),
            job(0, 1, 30),
            job(1, 2, 20),
            job(0, 60, 900),
        ];
        assert_eq!(filled_at(&accepted, 2, 2), Some(at(50)));
        assert_eq!(filled_at(&accepted, 2, 1), Some(at(50)));
        assert_eq!(filled_at(&accepted, 2, 3), None, "user 1 never had three");
        assert_eq!(filled_at(&accepted, 3, 1), None, "user 2 never submitted");
    }
}
