//! Helpers several scenarios use: dev tokens, opening and closing sessions, accounting for lost,
//! duplicated and failed jobs and frames, the REST read-back of finished jobs, and turning
//! samples into report rows.

use super::{Ctx, Res};
use crate::client::Submitted;
use crate::log;
use crate::report::{ScenarioResult, ms};
use crate::sampling::RssReport;
use crate::session::{Counters, JobTrace, Session, SessionOptions};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The Forge side of the throughput, latency, soak, deep and open runs.
pub(super) fn backends(ctx: &Ctx) -> String {
    if ctx.external {
        "the gateway's own backends".into()
    } else {
        format!(
            "{} forge-sim (latency 0 s) × FORGE_SLOTS {}",
            ctx.args.sims,
            ctx.args
                .forge_slots
                .map_or("1 (default)".to_owned(), |slots| slots.to_string())
        )
    }
}

/// Dev tokens for `{prefix}-{i}`, i in 0..n.
pub(super) async fn tokens(ctx: &Ctx, prefix: &str, n: usize) -> Res<Vec<(String, String)>> {
    let started = Instant::now();
    let names: Vec<String> = (0..n)
        .map(|i| format!("lg{}-{prefix}-{i}", ctx.tag))
        .collect();
    let results: Vec<Res<(String, String)>> =
        futures::stream::iter(names.into_iter().map(|name| {
            let api = ctx.api.clone();
            async move {
                let token = api.token(&name).await?;
                Ok((name, token))
            }
        }))
        .buffered(ctx.args.connect_concurrency)
        .collect()
        .await;
    let tokens: Res<Vec<_>> = results.into_iter().collect();
    if n >= 1000 {
        log(format!(
            "{n} dev tokens in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
    }
    tokens
}

/// Opens one session per user; returns them (in order) and each one's open time (connect →
/// snapshot) in ms.
pub(super) async fn open_sessions(
    ctx: &Ctx,
    users: &[(String, String)],
    counters: &Arc<Counters>,
    options: impl Fn(usize) -> SessionOptions,
) -> Res<(Vec<Session>, Vec<f64>)> {
    let opened = Arc::new(AtomicUsize::new(0));
    let total = users.len();
    let results: Vec<Res<(Session, f64)>> =
        futures::stream::iter(users.iter().enumerate().map(|(index, (user, token))| {
            let api = ctx.api.clone();
            let counters = counters.clone();
            let options = options(index);
            let opened = opened.clone();
            async move {
                let started = Instant::now();
                let session = Session::open(&api, user, token, counters, options).await?;
                let done = opened.fetch_add(1, Ordering::Relaxed) + 1;
                if total >= 2000 && done.is_multiple_of(2000) {
                    log(format!("{done}/{total} sessions open"));
                }
                Ok((session, ms(started.elapsed())))
            }
        }))
        .buffered(ctx.args.connect_concurrency)
        .collect()
        .await;
    let mut sessions = Vec::with_capacity(total);
    let mut times = Vec::with_capacity(total);
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok((session, time)) => {
                sessions.push(session);
                times.push(time);
            }
            Err(err) => failures.push(err),
        }
    }
    if !failures.is_empty() {
        close_sessions(sessions).await;
        return Err(format!(
            "{} of {total} WebSocket sessions failed to open; first: {}",
            failures.len(),
            failures[0]
        ));
    }
    Ok((sessions, times))
}

/// Closes the sessions, 500 at a time.
pub(super) async fn close_sessions(sessions: Vec<Session>) {
    futures::stream::iter(sessions.into_iter().map(Session::close))
        .buffer_unordered(500)
        .collect::<Vec<()>>()
        .await;
}

/// Warms the HTTP connection pool.
pub(super) async fn warm_pool(ctx: &Ctx, connections: usize) {
    futures::stream::iter((0..connections).map(|_| ctx.api.healthz()))
        .buffer_unordered(connections)
        .collect::<Vec<bool>>()
        .await;
}

/// Session-level problems: seq gaps, resyncs, bad frames, command errors, dropped sockets.
pub(super) fn account_sessions(sessions: &[Session], result: &mut ScenarioResult) {
    let mut dropped: HashMap<String, u64> = HashMap::new();
    for session in sessions {
        let state = &session.state;
        result.lost_frames += state.seq_gaps.load(Ordering::Relaxed);
        result.resyncs += state.resyncs.load(Ordering::Relaxed);
        result.duplicated += state.seq_regressions.load(Ordering::Relaxed);
        result.error("unparsable frame", state.bad_frames.load(Ordering::Relaxed));
        for (kind, count) in state.command_errors.lock().iter() {
            result.error(kind.clone(), *count);
        }
        if let Some(reason) = session.dropped() {
            *dropped
                .entry(crate::procs::truncate(&reason, 80))
                .or_default() += 1;
        }
    }
    for (reason, count) in dropped {
        result.error(format!("ws closed by server: {reason}"), count);
    }
}

/// A job we submitted and the gateway accepted.
#[derive(Clone, Copy)]
pub(super) struct Accepted {
    /// The job id.
    pub id: Uuid,
    /// Index of the owner's session in the scenario's list.
    pub session: usize,
    /// Just before the POST was sent.
    pub sent: Instant,
    /// When its answer had been read.
    pub answered: Instant,
}

/// Every job trace of every session (a job is seen by its owner's sessions; with one session
/// per user, by one).
pub(super) fn traces(sessions: &[Session]) -> HashMap<Uuid, JobTrace> {
    let mut all = HashMap::new();
    for session in sessions {
        for (id, trace) in session.state.jobs.lock().iter() {
            all.insert(*id, trace.clone());
        }
    }
    all
}

/// Lost, duplicated, reordered and failed jobs among `accepted`.
pub(super) fn account_jobs(
    accepted: &[Accepted],
    traces: &HashMap<Uuid, JobTrace>,
    result: &mut ScenarioResult,
) {
    let mut missing_events: HashMap<&'static str, u64> = HashMap::new();
    for job in accepted {
        let Some(trace) = traces.get(&job.id) else {
            result.lost_jobs += 1;
            continue;
        };
        result.duplicated += u64::from(trace.duplicates);
        result.reordered += u64::from(trace.reordered);
        if trace.terminal().is_none() {
            result.lost_jobs += 1;
            continue;
        }
        if trace.queued.is_none() {
            *missing_events.entry("job.queued").or_default() += 1;
        }
        if trace.complete.is_some() && trace.processing.is_none() {
            *missing_events.entry("job.processing").or_default() += 1;
        }
        if let Some((_, code)) = &trace.error {
            result.error(format!("job.error {code}"), 1);
        }
        if trace.cancelled.is_some() {
            result.error("job.cancelled", 1);
        }
    }
    for (kind, count) in missing_events {
        result.lost_frames += count;
        result.notes.push(format!(
            "{count} finished jobs never got their {kind} event"
        ));
    }
    let accepted_ids: std::collections::HashSet<Uuid> = accepted.iter().map(|job| job.id).collect();
    let unknown = traces
        .keys()
        .filter(|id| !accepted_ids.contains(id))
        .count();
    if unknown > 0 {
        result.notes.push(format!(
            "{unknown} jobs had events but no 202 answer (their POST failed or timed out after the job was created)"
        ));
    }
}

/// Waits until `done()` or `timeout`; true if done.
pub(super) async fn wait_until(
    timeout: Duration,
    step: Duration,
    mut done: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(step).await;
    }
}

/// How many of `accepted` have ended, as their sessions saw it.
pub(super) fn all_terminal(sessions: &[Session], accepted: &[Accepted]) -> usize {
    accepted
        .iter()
        .filter(|job| {
            sessions[job.session]
                .state
                .jobs
                .lock()
                .get(&job.id)
                .is_some_and(|trace| trace.terminal().is_some())
        })
        .count()
}

/// Waits for every accepted job to end (or the drain timeout).
pub(super) async fn drain(
    ctx: &Ctx,
    counters: &Counters,
    sessions: &[Session],
    accepted: &[Accepted],
) {
    let target = accepted.len() as u64;
    let started = Instant::now();
    let done = wait_until(ctx.args.drain_timeout, Duration::from_millis(20), || {
        counters.terminal.load(Ordering::Relaxed) >= target
    })
    .await;
    if !done {
        log(format!(
            "drain: {} of {} jobs ended within {:?}",
            all_terminal(sessions, accepted),
            accepted.len(),
            ctx.args.drain_timeout
        ));
    } else {
        log(format!(
            "all {} jobs ended ({:.1} s after the end of submissions)",
            accepted.len(),
            started.elapsed().as_secs_f64()
        ));
    }
}

/// Reads a sample of the finished jobs back over REST: the status must match the last event.
pub(super) async fn verify_persisted(
    ctx: &Ctx,
    sessions: &[Session],
    accepted: &[Accepted],
    traces: &HashMap<Uuid, JobTrace>,
    result: &mut ScenarioResult,
) {
    let sample = ctx.args.verify_sample.min(accepted.len());
    if sample == 0 {
        return;
    }
    let step = (accepted.len() / sample).max(1);
    let checks: Vec<(String, Uuid, &'static str)> = accepted
        .iter()
        .step_by(step)
        .take(sample)
        .filter_map(|job| {
            let trace = traces.get(&job.id)?;
            let status = if trace.complete.is_some() {
                "complete"
            } else if trace.error.is_some() {
                "error"
            } else if trace.cancelled.is_some() {
                "cancelled"
            } else {
                return None;
            };
            Some((sessions[job.session].token.clone(), job.id, status))
        })
        .collect();
    let checked = checks.len();
    let outcomes: Vec<Option<String>> =
        futures::stream::iter(checks.into_iter().map(|(token, id, want)| {
            let api = ctx.api.clone();
            async move {
                match api.message(&token, id).await {
                    Ok(view) => {
                        let got = view["status"].as_str().unwrap_or("?").to_owned();
                        let image_ok = want != "complete" || view["image_url"].is_string();
                        (got != want || !image_ok)
                            .then(|| format!("{id}: event {want}, REST {got}"))
                    }
                    Err(err) => Some(format!("{id}: GET failed: {err}")),
                }
            }
        }))
        .buffer_unordered(32)
        .collect()
        .await;
    let mismatches: Vec<String> = outcomes.into_iter().flatten().collect();
    result.notes.push(format!(
        "REST read-back of {checked} finished jobs: {} mismatches",
        mismatches.len()
    ));
    if !mismatches.is_empty() {
        result.error(
            "REST status differs from the last event",
            mismatches.len() as u64,
        );
        result
            .notes
            .push(format!("first mismatch: {}", mismatches[0]));
    }
}

/// The accepted submissions; the failed ones counted as errors by code.
pub(super) fn count_submit_errors(
    submissions: &[(usize, Submitted)],
    result: &mut ScenarioResult,
) -> Vec<Accepted> {
    let mut accepted = Vec::with_capacity(submissions.len());
    for (session, submitted) in submissions {
        match &submitted.result {
            Ok((id, _)) => accepted.push(Accepted {
                id: *id,
                session: *session,
                sent: submitted.sent,
                answered: submitted.answered,
            }),
            Err(code) => result.error(format!("POST {}", crate::procs::truncate(code, 100)), 1),
        }
    }
    accepted
}

/// The gateway's memory and the CPU split into the result.
pub(super) fn rss_into(result: &mut ScenarioResult, report: Option<RssReport>) {
    if let Some(report) = report {
        result.peak_rss_mib = Some(report.peak_kib as f64 / 1024.0);
        result.end_rss_mib = Some(report.end_kib as f64 / 1024.0);
        if let (Some(gateway), Some(loadgen)) = (report.gateway_cpu_s, report.loadgen_cpu_s) {
            let others: f64 = report.others_cpu_s.iter().map(|(_, cpu)| cpu).sum();
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            result.notes.push(format!(
                "CPU over the {:.1} s measured: gateway {:.1} s ({:.0}% of one core), loadgen {:.1} s ({:.0}%){}; all {cores} cores {} busy",
                report.wall_s,
                gateway,
                100.0 * gateway / report.wall_s,
                loadgen,
                100.0 * loadgen / report.wall_s,
                if report.others_cpu_s.is_empty() {
                    String::new()
                } else {
                    format!(", forge-sim {others:.1} s ({:.0}%)", 100.0 * others / report.wall_s)
                },
                report
                    .system_busy
                    .map_or("?".to_owned(), |busy| format!("{:.0}%", busy * 100.0)),
            ));
            if let Some(object) = result.extra.as_object_mut() {
                object.insert("gateway_cpu_s".into(), serde_json::json!(gateway));
                object.insert("loadgen_cpu_s".into(), serde_json::json!(loadgen));
                object.insert("measured_wall_s".into(), serde_json::json!(report.wall_s));
            }
        }
    }
}

/// Adds the fields of `extra` (an object) to the result's JSON extras.
pub(super) fn merge_extra(result: &mut ScenarioResult, extra: serde_json::Value) {
    if let (Some(into), serde_json::Value::Object(from)) = (result.extra.as_object_mut(), extra) {
        into.extend(from);
    }
}

/// `count` per second over `over`.
pub(super) fn per_second(count: usize, over: Duration) -> f64 {
    count as f64 / over.as_secs_f64().max(1e-9)
}

/// `pick` of each accepted job that has a trace, in ms.
pub(super) fn durations<'a>(
    accepted: &'a [Accepted],
    traces: &'a HashMap<Uuid, JobTrace>,
    pick: impl Fn(&Accepted, &JobTrace) -> Option<Duration> + 'a,
) -> Vec<f64> {
    accepted
        .iter()
        .filter_map(|job| traces.get(&job.id).and_then(|trace| pick(job, trace)))
        .map(ms)
        .collect()
}

/// `later - earlier`, when `later` happened.
pub(super) fn since(later: Option<Instant>, earlier: Instant) -> Option<Duration> {
    later.map(|at| at.saturating_duration_since(earlier))
}
