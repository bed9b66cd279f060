//! The two load shapes: the closed loop (each user keeps a window of jobs outstanding and
//! submits again as soon as one ends; throughput, deep) and the open loop (a fixed schedule of
//! submissions regardless of answers; latency, soak).

use super::common::{Accepted, count_submit_errors};
use super::{Ctx, Res};
use crate::client::Submitted;
use crate::report::ScenarioResult;
use crate::session::Session;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// What a closed-loop run submitted.
pub(super) struct ClosedLoop {
    /// (session index, outcome) of every submission.
    pub submissions: Vec<(usize, Submitted)>,
    /// When the run started.
    pub start: Instant,
    /// The end of the window (`start + duration`).
    pub end: Instant,
    /// When the last submitter stopped.
    pub submit_end: Instant,
}

/// Each session's user keeps `window` jobs outstanding for `duration`: a job's first terminal
/// event (the session's `done` permits) lets it submit the next one. Prompts are
/// `loadgen <label> <session>/<n>`.
pub(super) async fn closed_loop(
    ctx: &Ctx,
    sessions: &[Session],
    window: usize,
    duration: Duration,
    label: &str,
) -> Res<ClosedLoop> {
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = Vec::new();
    for (index, session) in sessions.iter().enumerate() {
        let api = ctx.api.clone();
        let token = session.token.clone();
        let state = session.state.clone();
        let label = label.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut submitted = Vec::new();
            let mut credits = window;
            let mut n = 0u64;
            loop {
                if Instant::now() >= end || state.closed.load(Ordering::Relaxed) {
                    break;
                }
                while let Ok(permit) = state.done.try_acquire() {
                    permit.forget();
                    credits += 1;
                }
                if credits == 0 {
                    tokio::select! {
                        permit = state.done.acquire() => {
                            if let Ok(permit) = permit {
                                permit.forget();
                                credits += 1;
                            }
                        }
                        () = tokio::time::sleep_until(end.into()) => break,
                    }
                    continue;
                }
                n += 1;
                let outcome = api
                    .submit(&token, &format!("loadgen {label} {index}/{n}"))
                    .await;
                let ok = outcome.result.is_ok();
                submitted.push((index, outcome));
                if ok {
                    credits -= 1;
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            submitted
        }));
    }
    let mut submissions = Vec::new();
    for task in tasks {
        submissions.extend(task.await.map_err(|err| err.to_string())?);
    }
    Ok(ClosedLoop {
        submissions,
        start,
        end,
        submit_end: Instant::now(),
    })
}

/// What an open-loop run submitted.
pub(super) struct OpenLoop {
    /// The accepted jobs.
    pub accepted: Vec<Accepted>,
    /// Submissions made.
    pub submissions: usize,
    /// How late the schedule ran at worst.
    pub max_lag: Duration,
    /// When the last submission was sent.
    pub end: Instant,
}

/// Submits `rate` jobs per second, round-robin over `sessions`, for `duration`, on a fixed
/// schedule regardless of answers; `tick` is called about every 10 s with the elapsed time.
pub(super) async fn open_loop(
    ctx: &Ctx,
    sessions: &[Session],
    rate: f64,
    duration: Duration,
    result: &mut ScenarioResult,
    mut tick: impl FnMut(Duration),
) -> OpenLoop {
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut handles = Vec::with_capacity(total as usize);
    let mut max_lag = Duration::ZERO;
    let mut next_tick = Duration::from_secs(10);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(4096));
    for i in 0..total {
        let at = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(at.into()).await;
        max_lag = max_lag.max(Instant::now().saturating_duration_since(at));
        if start.elapsed() >= next_tick {
            tick(start.elapsed());
            next_tick += Duration::from_secs(10);
        }
        let index = (i as usize) % sessions.len();
        let api = ctx.api.clone();
        let token = sessions[index].token.clone();
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        handles.push(tokio::spawn(async move {
            let outcome = api.submit(&token, &format!("loadgen open-loop {i}")).await;
            drop(permit);
            (index, outcome)
        }));
    }
    let end = Instant::now();
    let mut submissions = Vec::with_capacity(handles.len());
    for handle in handles {
        if let Ok(pair) = handle.await {
            submissions.push(pair);
        }
    }
    let accepted = count_submit_errors(&submissions, result);
    OpenLoop {
        accepted,
        submissions: submissions.len(),
        max_lag,
        end,
    }
}
