//! The scenarios: throughput, latency, fanout, hot, idle, soak.

use crate::client::{Api, Counters, JobTrace, Session, SessionOptions, Submitted};
use crate::procs::{RssSampler, rss_kib};
use crate::report::{Row, ScenarioResult, ms, summarize};
use crate::{Args, log};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// What every scenario gets.
pub struct Ctx {
    pub api: Api,
    pub sim_url: Option<String>,
    pub pid: Option<u32>,
    pub stores: String,
    pub args: Args,
    /// Running against a gateway we did not start (clean up what we leave behind).
    pub external: bool,
    /// Other processes whose CPU time is reported (the simulators we started).
    pub others: Vec<(String, u32)>,
    /// Tag that makes user names unique per run.
    pub tag: String,
}

type Res<T> = Result<T, String>;

/// The Forge side of the throughput, latency and soak runs.
fn backends(ctx: &Ctx) -> String {
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
async fn tokens(ctx: &Ctx, prefix: &str, n: usize) -> Res<Vec<(String, String)>> {
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
async fn open_sessions(
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

async fn close_sessions(sessions: Vec<Session>) {
    futures::stream::iter(sessions.into_iter().map(Session::close))
        .buffer_unordered(500)
        .collect::<Vec<()>>()
        .await;
}

/// Warms the HTTP connection pool.
async fn warm_pool(ctx: &Ctx, connections: usize) {
    futures::stream::iter((0..connections).map(|_| ctx.api.healthz()))
        .buffer_unordered(connections)
        .collect::<Vec<bool>>()
        .await;
}

/// Session-level problems: seq gaps, resyncs, bad frames, command errors, dropped sockets.
fn account_sessions(sessions: &[Session], result: &mut ScenarioResult) {
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
struct Accepted {
    id: Uuid,
    session: usize,
    sent: Instant,
    answered: Instant,
}

/// Every job trace of every session (a job is seen by its owner's sessions; with one session
/// per user, by one).
fn traces(sessions: &[Session]) -> HashMap<Uuid, JobTrace> {
    let mut all = HashMap::new();
    for session in sessions {
        for (id, trace) in session.state.jobs.lock().iter() {
            all.insert(*id, trace.clone());
        }
    }
    all
}

/// Lost, duplicated, reordered and failed jobs among `accepted`.
fn account_jobs(
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
async fn wait_until(timeout: Duration, step: Duration, mut done: impl FnMut() -> bool) -> bool {
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

fn all_terminal(sessions: &[Session], accepted: &[Accepted]) -> usize {
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
async fn drain(ctx: &Ctx, counters: &Counters, sessions: &[Session], accepted: &[Accepted]) {
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
async fn verify_persisted(
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

fn count_submit_errors(
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

fn rss_into(result: &mut ScenarioResult, report: Option<crate::procs::RssReport>) {
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
fn merge_extra(result: &mut ScenarioResult, extra: serde_json::Value) {
    if let (Some(into), serde_json::Value::Object(from)) = (result.extra.as_object_mut(), extra) {
        into.extend(from);
    }
}

fn per_second(count: usize, over: Duration) -> f64 {
    count as f64 / over.as_secs_f64().max(1e-9)
}

fn durations<'a>(
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

fn since(later: Option<Instant>, earlier: Instant) -> Option<Duration> {
    later.map(|at| at.saturating_duration_since(earlier))
}

// ---------------------------------------------------------------------------------------------
// 1. throughput

pub async fn throughput(ctx: &Ctx) -> Res<ScenarioResult> {
    let args = &ctx.args;
    let mut result = ScenarioResult::new("throughput", &ctx.stores);
    result.config = format!(
        "{} clients × window {} outstanding jobs, {:?}, {}, 64×64, 1 step",
        args.clients,
        args.window,
        args.duration,
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
        args.duration
    ));

    let perf = start_perf(ctx, "throughput");
    let rss = RssSampler::start_with(ctx.pid, ctx.others.clone());
    let start = Instant::now();
    let end = start + args.duration;
    let mut tasks = Vec::new();
    for (index, session) in sessions.iter().enumerate() {
        let api = ctx.api.clone();
        let token = session.token.clone();
        let state = session.state.clone();
        let window = args.window;
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
                    .submit(&token, &format!("loadgen throughput {index}/{n}"))
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
    let submit_end = Instant::now();
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
    let rate = per_second(in_window.len(), args.duration);
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
        args.duration,
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

struct Perf {
    child: tokio::process::Child,
    path: String,
}

/// Starts `perf record` on the gateway (with `--perf-out`), into `<prefix>-<scenario>-<stores>.data`.
fn start_perf(ctx: &Ctx, scenario: &str) -> Option<Perf> {
    let prefix = ctx.args.perf_out.as_ref()?;
    let pid = ctx.pid?;
    let path = format!(
        "{prefix}-{scenario}-{}.data",
        ctx.stores
            .to_lowercase()
            .replace("in-process", "mem")
            .replace([' ', '+'], "")
    );
    let child = tokio::process::Command::new("perf")
        .args([
            "record",
            "-F",
            "499",
            "-g",
            "-p",
            &pid.to_string(),
            "-o",
            &path,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    match child {
        Ok(child) => Some(Perf { child, path }),
        Err(err) => {
            log(format!("perf record could not start: {err}"));
            None
        }
    }
}

/// Stops `perf record` with SIGINT (so it writes a complete file) and waits for it.
async fn finish_perf(perf: Option<Perf>, result: &mut ScenarioResult) {
    if let Some(mut perf) = perf {
        if let Some(pid) = perf.child.id() {
            let _ = tokio::process::Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(60), perf.child.wait())
            .await
            .is_err()
        {
            let _ = perf.child.start_kill();
        }
        result
            .notes
            .push(format!("perf profile of the gateway: {}", perf.path));
    }
}

// ---------------------------------------------------------------------------------------------
// 2. latency (open loop) and 6. soak share the open-loop driver

struct OpenLoop {
    accepted: Vec<Accepted>,
    submissions: usize,
    max_lag: Duration,
    end: Instant,
}

/// Submits `rate` jobs per second, round-robin over `sessions`, for `duration`, on a fixed
/// schedule regardless of answers; `tick` is called about every 10 s with the elapsed time.
async fn open_loop(
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

pub async fn latency(ctx: &Ctx) -> Res<ScenarioResult> {
    let args = &ctx.args;
    let mut result = ScenarioResult::new("latency", &ctx.stores);
    result.config = format!(
        "open loop {} jobs/s over {} users for {:?}, {}, 64×64, 1 step",
        args.rate,
        args.latency_users,
        args.duration,
        backends(ctx)
    );
    let counters = Arc::new(Counters::default());
    let users = tokens(ctx, "lat", args.latency_users).await?;
    let (sessions, _) =
        open_sessions(ctx, &users, &counters, |_| SessionOptions::default()).await?;
    warm_pool(ctx, 64).await;
    log(format!(
        "latency: {} jobs/s for {:?}",
        args.rate, args.duration
    ));
    let rss = RssSampler::start_with(ctx.pid, ctx.others.clone());
    let run = open_loop(
        ctx,
        &sessions,
        args.rate,
        args.duration,
        &mut result,
        |_| {},
    )
    .await;
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
                args.duration
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

// ---------------------------------------------------------------------------------------------
// 3. fanout

pub async fn fanout(ctx: &Ctx) -> Res<ScenarioResult> {
    let args = &ctx.args;
    let sessions_wanted = args.sessions;
    let pops = args.pops.min(sessions_wanted);
    let mut result = ScenarioResult::new("fanout", &ctx.stores);
    result.config = format!(
        "{sessions_wanted} sessions (one user each) with one queued job each behind a hanging backend; {pops} pops, each by cancelling the running job"
    );
    let Some(sim) = ctx.sim_url.clone() else {
        return Err("fanout needs control of the simulator (--sim-url)".into());
    };
    ctx.api
        .sim_config(&sim, serde_json::json!({"mode": "hang"}))
        .await?;
    let counters = Arc::new(Counters::default());
    let outcome = fanout_inner(ctx, &sim, sessions_wanted, pops, &counters, &mut result).await;
    let _ = ctx
        .api
        .sim_config(&sim, serde_json::json!({"mode": "normal"}))
        .await;
    outcome?;
    Ok(result)
}

async fn fanout_inner(
    ctx: &Ctx,
    _sim: &str,
    sessions_wanted: usize,
    pops: usize,
    counters: &Arc<Counters>,
    result: &mut ScenarioResult,
) -> Res<()> {
    let users = tokens(ctx, "fan", sessions_wanted).await?;
    let blocker_user = tokens(ctx, "fan-blocker", 1).await?;
    let rss = RssSampler::start_with(ctx.pid, ctx.others.clone());
    let (blocker, _) =
        open_sessions(ctx, &blocker_user, counters, |_| SessionOptions::default()).await?;
    let blocker = blocker.into_iter().next().ok_or("no blocker session")?;
    let (sessions, open_times) = open_sessions(ctx, &users, counters, |_| SessionOptions {
        record_positions: true,
        ..Default::default()
    })
    .await?;
    log(format!("fanout: {} sessions open", sessions.len()));

    // The blocker occupies the (hanging) backend.
    let submitted = ctx
        .api
        .submit(&blocker.token, "loadgen fanout blocker")
        .await;
    let (blocker_id, _) = submitted
        .result
        .map_err(|err| format!("blocker submit: {err}"))?;
    let taken = wait_until(Duration::from_secs(30), Duration::from_millis(5), || {
        blocker
            .state
            .jobs
            .lock()
            .get(&blocker_id)
            .is_some_and(|trace| trace.processing.is_some())
    })
    .await;
    if !taken {
        return Err("the blocker job was not taken by the backend within 30 s".into());
    }

    // One queued job per session.
    let started = Instant::now();
    let results: Vec<(usize, Submitted)> =
        futures::stream::iter(sessions.iter().enumerate().map(|(index, session)| {
            let api = ctx.api.clone();
            let token = session.token.clone();
            async move {
                (
                    index,
                    api.submit(&token, &format!("loadgen fanout {index}")).await,
                )
            }
        }))
        .buffer_unordered(ctx.args.submit_concurrency)
        .collect()
        .await;
    let accepted = count_submit_errors(&results, result);
    log(format!(
        "fanout: {} jobs queued in {:.1} s",
        accepted.len(),
        started.elapsed().as_secs_f64()
    ));
    if accepted.len() != sessions.len() {
        return Err(format!(
            "only {} of {} fanout jobs were accepted",
            accepted.len(),
            sessions.len()
        ));
    }
    let job_of: Vec<Uuid> = {
        let mut ids = vec![Uuid::nil(); sessions.len()];
        for job in &accepted {
            ids[job.session] = job.id;
        }
        ids
    };
    let all_queued = wait_until(Duration::from_secs(120), Duration::from_millis(10), || {
        counters.queued.load(Ordering::Relaxed) > sessions.len() as u64
    })
    .await;
    if !all_queued {
        result.lost_frames +=
            (sessions.len() as u64 + 1).saturating_sub(counters.queued.load(Ordering::Relaxed));
        return Err("not every session received its job.queued within 120 s".into());
    }
    // Let any position pushes of the submission burst settle.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Positions now: they must be exactly 1..=n.
    let mut initial = vec![0u32; sessions.len()];
    let mut by_position: HashMap<u32, usize> = HashMap::new();
    let mut bad_initial = 0u64;
    for (index, session) in sessions.iter().enumerate() {
        let mut jobs = session.state.jobs.lock();
        let trace = jobs.get_mut(&job_of[index]);
        let position = trace
            .as_ref()
            .and_then(|trace| trace.last_position)
            .unwrap_or(0);
        if let Some(trace) = trace {
            // Only what follows the pops matters from here on.
            trace.positions.clear();
        }
        initial[index] = position;
        if position == 0
            || position as usize > sessions.len()
            || by_position.insert(position, index).is_some()
        {
            bad_initial += 1;
        }
    }
    if bad_initial > 0 {
        result.error("initial positions not exactly 1..n", bad_initial);
    }

    // The pops.
    let perf = start_perf(ctx, "fanout");
    let mut t0 = Vec::with_capacity(pops);
    let mut cancel_rtt = Vec::with_capacity(pops);
    let mut waits_ok = 0;
    let mut running: (String, Uuid) = (blocker.token.clone(), blocker_id);
    let expected_total = |k: usize| initial.iter().filter(|p| **p as usize > k).count() as u64;
    for k in 1..=pops {
        let positions_before = counters.position.load(Ordering::Relaxed);
        let processing_before = counters.processing.load(Ordering::Relaxed);
        let expected = expected_total(k);
        let sent = Instant::now();
        let status = ctx.api.cancel(&running.0, running.1).await;
        cancel_rtt.push(ms(sent.elapsed()));
        match status {
            Ok(200) => {}
            Ok(other) => result.error(format!("cancel answered {other}"), 1),
            Err(err) => result.error(format!("cancel failed: {err}"), 1),
        }
        t0.push(sent);
        let done = wait_until(Duration::from_secs(30), Duration::from_millis(1), || {
            counters.position.load(Ordering::Relaxed) >= positions_before + expected
                && counters.processing.load(Ordering::Relaxed) > processing_before
        })
        .await;
        if done {
            waits_ok += 1;
        } else {
            log(format!(
                "fanout pop {k}: only {} of {expected} position updates within 30 s",
                counters.position.load(Ordering::Relaxed) - positions_before
            ));
        }
        // The job at position k is the one running now.
        let Some(&next) = by_position.get(&(k as u32)) else {
            return Err(format!(
                "no session had position {k}; cannot continue the pops"
            ));
        };
        running = (sessions[next].token.clone(), job_of[next]);
        // Give stragglers (positions beyond the count) a moment before the next pop.
        tokio::time::sleep(Duration::from_millis(ctx.args.pop_gap_ms)).await;
    }
    // A last look: late frames.
    tokio::time::sleep(Duration::from_millis(500)).await;
    finish_perf(perf, result).await;
    let rss_report = rss.finish().await;

    // Analysis.
    let mut per_pop_last = vec![Duration::ZERO; pops];
    let mut per_pop_all: Vec<Vec<f64>> = vec![Vec::new(); pops];
    let mut missing = 0u64;
    let mut wrong = 0u64;
    let mut first_wrong = None;
    let mut processing_after = Vec::new();
    for (index, session) in sessions.iter().enumerate() {
        let p = initial[index] as usize;
        if p == 0 {
            continue;
        }
        let jobs = session.state.jobs.lock();
        let Some(trace) = jobs.get(&job_of[index]) else {
            continue;
        };
        result.duplicated += u64::from(trace.duplicates);
        result.reordered += u64::from(trace.reordered);
        let mut cursor = 0;
        for k in 1..=pops.min(p.saturating_sub(1)) {
            let want = (p - k) as u32;
            // Positions must arrive in order: the next one must be `want`.
            match trace.positions[cursor..]
                .iter()
                .position(|(_, v)| *v == want)
            {
                Some(offset) => {
                    for (_, v) in &trace.positions[cursor..cursor + offset] {
                        wrong += 1;
                        first_wrong.get_or_insert(format!(
                            "a session at position {p} got {v} while {want} was due after pop {k}"
                        ));
                    }
                    let (at, _) = trace.positions[cursor + offset];
                    cursor += offset + 1;
                    let delay = at.saturating_duration_since(t0[k - 1]);
                    per_pop_last[k - 1] = per_pop_last[k - 1].max(delay);
                    per_pop_all[k - 1].push(ms(delay));
                }
                None => {
                    missing += 1;
                    first_wrong.get_or_insert(format!(
                        "a session at position {p} never got {want} (pop {k}); it got {:?}",
                        trace.positions.iter().map(|(_, v)| *v).collect::<Vec<_>>()
                    ));
                }
            }
        }
        for (_, v) in &trace.positions[cursor.min(trace.positions.len())..] {
            wrong += 1;
            first_wrong.get_or_insert(format!(
                "a session at position {p} got an extra position {v}"
            ));
        }
        if p <= pops {
            match trace.processing {
                Some(at) => processing_after.push(ms(at.saturating_duration_since(t0[p - 1]))),
                None => {
                    missing += 1;
                    first_wrong
                        .get_or_insert(format!("the job at position {p} never got job.processing"));
                }
            }
        }
    }
    result.lost_frames += missing;
    if wrong > 0 {
        result.error("wrong job.position value", wrong);
    }
    if let Some(first) = first_wrong {
        result.notes.push(format!("first problem: {first}"));
    }
    account_sessions(&sessions, result);
    rss_into(result, rss_report);

    let fan: Vec<f64> = per_pop_last.iter().map(|d| ms(*d)).collect();
    let median_pop = summarize(fan.clone());
    let throughput = median_pop.map_or(String::new(), |s| {
        format!(
            "{} positions in {:.0} ms (median pop)",
            sessions.len().saturating_sub(1),
            s.p50
        )
    });
    result.rows.push(Row::new(
        "cancel sent → last session has its new position (per pop)",
        throughput,
        median_pop,
    ));
    result.rows.push(Row::new(
        "cancel sent → each session's new position (all sessions, all pops)",
        "",
        summarize(per_pop_all.iter().flatten().copied().collect()),
    ));
    result.rows.push(Row::new(
        "cancel sent → next job's job.processing",
        "",
        summarize(processing_after),
    ));
    result.rows.push(Row::new(
        "cancel POST round trip",
        "",
        summarize(cancel_rtt),
    ));
    result.rows.push(Row::new(
        "session open (connect → hello + snapshot)",
        "",
        summarize(open_times),
    ));
    result.notes.push(format!(
        "per-pop fan-out ms: {}",
        fan.iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    result.notes.push(format!(
        "per-pop p50 over sessions ms: {}",
        per_pop_all
            .iter()
            .map(|v| summarize(v.clone()).map_or("—".into(), |s| format!("{:.0}", s.p50)))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if waits_ok < pops {
        result.notes.push(format!(
            "{} pops did not see every update within 30 s",
            pops - waits_ok
        ));
    }
    merge_extra(
        result,
        serde_json::json!({
            "per_pop_fanout_ms": fan,
            "sessions": sessions.len(),
            "pops": pops,
        }),
    );

    if ctx.external {
        // Leave the gateway as we found it: cancel what we queued.
        let mut all = sessions
            .iter()
            .map(|s| s.token.clone())
            .zip(job_of.iter().copied())
            .collect::<Vec<_>>();
        all.push((blocker.token.clone(), blocker_id));
        futures::stream::iter(all.into_iter().map(|(token, id)| {
            let api = ctx.api.clone();
            async move {
                let _ = api.cancel(&token, id).await;
            }
        }))
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    }
    close_sessions(sessions).await;
    blocker.close().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. hot message

pub async fn hot(ctx: &Ctx) -> Res<ScenarioResult> {
    let args = &ctx.args;
    let patchers = args.patchers;
    let mut result = ScenarioResult::new("hot", &ctx.stores);
    result.config = format!(
        "{patchers} sessions of one user patching one (complete) message via update_message, at most {} unacknowledged each, for {:?}",
        args.patch_window, args.hot_duration
    );
    let counters = Arc::new(Counters::default());
    let user = tokens(ctx, "hot", 1).await?;
    let users: Vec<(String, String)> = (0..patchers).map(|_| user[0].clone()).collect();
    let (sessions, _) = open_sessions(ctx, &users, &counters, |k| SessionOptions {
        patch_key: Some(format!("p{k}")),
        ..Default::default()
    })
    .await?;
    let token = user[0].1.clone();
    let submitted = ctx.api.submit(&token, "loadgen hot message").await;
    let (id, _) = submitted
        .result
        .map_err(|err| format!("hot message submit: {err}"))?;
    let finished = wait_until(Duration::from_secs(60), Duration::from_millis(5), || {
        sessions[0]
            .state
            .jobs
            .lock()
            .get(&id)
            .is_some_and(|trace| trace.terminal().is_some())
    })
    .await;
    if !finished {
        return Err("the hot message did not finish within 60 s".into());
    }
    let updated_before: Vec<u64> = sessions
        .iter()
        .map(|s| s.state.updated.load(Ordering::Relaxed))
        .collect();
    log(format!(
        "hot: {patchers} patchers for {:?}",
        args.hot_duration
    ));

    let rss = RssSampler::start_with(ctx.pid, ctx.others.clone());
    let perf = start_perf(ctx, "hot");
    let start = Instant::now();
    let end = start + args.hot_duration;
    let mut tasks = Vec::new();
    for (k, session) in sessions.iter().enumerate() {
        let writer = session.writer.clone();
        let state = session.state.clone();
        let window = args.patch_window as i64;
        tasks.push(tokio::spawn(async move {
            let mut next: i64 = 0;
            let mut pending: std::collections::VecDeque<(i64, Instant)> = Default::default();
            let mut acks = Vec::new();
            let mut send_error = None;
            loop {
                let acked = state.acked.load(Ordering::Relaxed);
                let now = Instant::now();
                while pending.front().is_some_and(|(n, _)| *n <= acked) {
                    let (_, sent) = pending.pop_front().unwrap_or((0, now));
                    acks.push(ms(now - sent));
                }
                if now >= end || state.closed.load(Ordering::Relaxed) {
                    break;
                }
                if next - (acked + 1) < window {
                    let frame = format!(
                        "{{\"type\":\"update_message\",\"id\":\"{id}\",\"data\":{{\"p{k}\":{{\"n\":{next}}}}}}}"
                    );
                    if let Err(err) = writer.text(&frame).await {
                        send_error = Some(err.to_string());
                        break;
                    }
                    pending.push_back((next, Instant::now()));
                    next += 1;
                } else {
                    tokio::select! {
                        () = state.ack_notify.notified() => {}
                        () = tokio::time::sleep_until(end.into()) => {}
                    }
                }
            }
            (next - 1, next as u64, acks, pending, send_error)
        }));
    }
    let mut last_sent = Vec::with_capacity(patchers);
    let mut total_sent = 0u64;
    let mut ack_latencies = Vec::new();
    let mut leftovers = Vec::new();
    for task in tasks {
        let (last, sent, acks, pending, error) = task.await.map_err(|err| err.to_string())?;
        if let Some(error) = error {
            result.error(format!("patch send failed: {error}"), 1);
        }
        last_sent.push(last);
        total_sent += sent;
        ack_latencies.extend(acks);
        leftovers.push(pending);
    }
    log(format!(
        "hot: {total_sent} patches sent; waiting until each patcher sees its last one"
    ));
    let all_acked = wait_until(Duration::from_secs(120), Duration::from_millis(1), || {
        sessions
            .iter()
            .zip(&last_sent)
            .all(|(s, last)| s.state.acked.load(Ordering::Relaxed) >= *last)
    })
    .await;
    let visible_at = Instant::now();
    // The acknowledgement latency of the patches still pending at the end.
    for (pending, session) in leftovers.into_iter().zip(&sessions) {
        let acked = session.state.acked.load(Ordering::Relaxed);
        for (n, sent) in pending {
            if n <= acked {
                ack_latencies.push(ms(visible_at - sent));
            }
        }
    }
    if !all_acked {
        result
            .notes
            .push("not every patcher saw its last patch over the WebSocket within 120 s".into());
    }
    // REST agrees?
    let mut rest_ok = false;
    let mut missing_in_rest = 0;
    for _ in 0..100 {
        match ctx.api.message(&token, id).await {
            Ok(view) => {
                missing_in_rest = last_sent
                    .iter()
                    .enumerate()
                    .filter(|(k, last)| {
                        **last >= 0 && view["data"][format!("p{k}")]["n"].as_i64() != Some(**last)
                    })
                    .count();
                if missing_in_rest == 0 {
                    rest_ok = true;
                    break;
                }
            }
            Err(err) => result.error(format!("GET message: {err}"), 1),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rest_at = Instant::now();
    if !rest_ok {
        result.lost_frames += missing_in_rest as u64;
        result.error(
            "patcher's last value missing in REST",
            missing_in_rest as u64,
        );
    }
    // Let late message.updated frames arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    finish_perf(perf, &mut result).await;
    rss_into(&mut result, rss.finish().await);
    let elapsed = visible_at - start;
    let merges = per_second(total_sent as usize, elapsed);
    // Every session must have received one message.updated per patch.
    let mut received = 0u64;
    for (session, before) in sessions.iter().zip(&updated_before) {
        let got = session.state.updated.load(Ordering::Relaxed) - before;
        received += got;
        if got < total_sent {
            result.lost_frames += total_sent - got;
        } else {
            result.duplicated += got - total_sent;
        }
    }
    for session in &sessions {
        if let Some(trace) = session.state.jobs.lock().get(&id) {
            result.duplicated += u64::from(trace.duplicates);
            result.reordered += u64::from(trace.reordered);
        }
    }
    account_sessions(&sessions, &mut result);
    result.rows.push(Row::new(
        "patch sent → own value seen in message.updated",
        format!("{merges:.0} merges/s"),
        summarize(ack_latencies),
    ));
    result.notes.push(format!(
        "{total_sent} patches in {:.2} s until all visible over the WebSocket ({:.2} s incl. the REST check); {received} message.updated frames received ({:.0}/s; expected {} = patches × sessions)",
        elapsed.as_secs_f64(),
        (rest_at - start).as_secs_f64(),
        per_second(received as usize, elapsed),
        total_sent * patchers as u64
    ));
    merge_extra(
        &mut result,
        serde_json::json!({
            "patches": total_sent,
            "merges_per_second": merges,
            "message_updated_received": received,
        }),
    );
    close_sessions(sessions).await;
    Ok(result)
}

// ---------------------------------------------------------------------------------------------
// 5. idle sessions

async fn settle_rss(pid: u32, wait: Duration) -> u64 {
    tokio::time::sleep(wait).await;
    rss_kib(pid).map_or(0, |(rss, _)| rss)
}

pub async fn idle(ctx: &Ctx) -> Res<ScenarioResult> {
    let args = &ctx.args;
    let n = args.idle_sessions;
    let rounds = args.idle_rounds.max(1);
    let mut result = ScenarioResult::new("idle", &ctx.stores);
    result.config = format!(
        "{n} idle WebSocket sessions (one user each), held 5 s, then closed; {rounds} round(s) with the same users"
    );
    let counters = Arc::new(Counters::default());
    let users = tokens(ctx, "idle", n).await?;
    let rss = RssSampler::start_with(ctx.pid, ctx.others.clone());
    let measure = |wait: Duration| async move {
        match ctx.pid {
            Some(pid) => Some(settle_rss(pid, wait).await),
            None => None,
        }
    };
    let before = measure(Duration::from_secs(2)).await;
    let mut open_rate = Vec::new();
    let mut all_open_times = Vec::new();
    let mut series = Vec::new();
    for round in 1..=rounds {
        let started = Instant::now();
        let (sessions, open_times) =
            open_sessions(ctx, &users, &counters, |_| SessionOptions::default()).await?;
        let open_elapsed = started.elapsed();
        open_rate.push(per_second(n, open_elapsed));
        all_open_times.extend(open_times);
        log(format!(
            "idle round {round}: {} sessions open in {:.1} s",
            sessions.len(),
            open_elapsed.as_secs_f64()
        ));
        let with_sessions = measure(Duration::from_secs(3)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        account_sessions(&sessions, &mut result);
        close_sessions(sessions).await;
        let closed = measure(Duration::from_secs(3)).await;
        series.push((with_sessions, closed));
    }
    rss_into(&mut result, rss.finish().await);
    result.rows.push(Row::new(
        "session open (connect → hello + snapshot)",
        format!(
            "{} sessions/s",
            open_rate
                .iter()
                .map(|rate| format!("{rate:.0}"))
                .collect::<Vec<_>>()
                .join(" / ")
        ),
        summarize(all_open_times),
    ));
    if let (Some(before), Some((Some(after), _))) = (before, series.first().copied()) {
        let per = (after as f64 - before as f64) / n as f64;
        result.rows.push(Row::new(
            format!("KiB per idle session: {per:.1}"),
            "",
            None,
        ));
        let mib = |kib: Option<u64>| {
            kib.map_or("—".to_owned(), |kib| {
                format!("{:.1}", kib as f64 / 1024.0)
            })
        };
        result.notes.push(format!(
            "gateway RSS MiB: before {}; {}",
            mib(Some(before)),
            series
                .iter()
                .enumerate()
                .map(|(i, (with, closed))| format!(
                    "round {}: with {n} sessions {}, after closing them {}",
                    i + 1,
                    mib(*with),
                    mib(*closed)
                ))
                .collect::<Vec<_>>()
                .join("; ")
        ));
        merge_extra(
            &mut result,
            serde_json::json!({
                "kib_per_session": per,
                "rss_before_kib": before,
                "rounds_rss_with_and_after_close_kib": series,
            }),
        );
    }
    Ok(result)
}

// ---------------------------------------------------------------------------------------------
// 6. soak

pub async fn soak(ctx: &Ctx) -> Res<ScenarioResult> {
    let args = &ctx.args;
    let mut result = ScenarioResult::new("soak", &ctx.stores);
    result.config = format!(
        "{:?} of {} jobs/s over {} users plus {} idle sessions, {}; RSS sampled every 10 s",
        args.soak_duration,
        args.soak_rate,
        args.latency_users,
        args.soak_idle,
        backends(ctx)
    );
    let counters = Arc::new(Counters::default());
    let idle_users = tokens(ctx, "soak-idle", args.soak_idle).await?;
    let users = tokens(ctx, "soak", args.latency_users).await?;
    let (idle_sessions, _) =
        open_sessions(ctx, &idle_users, &counters, |_| SessionOptions::default()).await?;
    let (sessions, _) =
        open_sessions(ctx, &users, &counters, |_| SessionOptions::default()).await?;
    let rss = RssSampler::start_with(ctx.pid, ctx.others.clone());
    let series = Arc::new(parking_lot::Mutex::new(Vec::<(f64, u64)>::new()));
    let pid = ctx.pid;
    if let Some(pid) = pid
        && let Some((rss, _)) = rss_kib(pid)
    {
        series.lock().push((0.0, rss));
    }
    let recorder = series.clone();
    let counters_for_tick = counters.clone();
    let run = open_loop(
        ctx,
        &sessions,
        args.soak_rate,
        args.soak_duration,
        &mut result,
        move |elapsed| {
            if let Some(pid) = pid
                && let Some((rss, _)) = rss_kib(pid)
            {
                recorder.lock().push((elapsed.as_secs_f64() / 60.0, rss));
                log(format!(
                    "soak: {:.0} s, RSS {:.1} MiB, {} jobs ended",
                    elapsed.as_secs_f64(),
                    rss as f64 / 1024.0,
                    counters_for_tick.terminal.load(Ordering::Relaxed)
                ));
            }
        },
    )
    .await;
    drain(ctx, &counters, &sessions, &run.accepted).await;
    if let Some(pid) = pid
        && let Some((rss, _)) = rss_kib(pid)
    {
        series
            .lock()
            .push((args.soak_duration.as_secs_f64() / 60.0, rss));
    }
    rss_into(&mut result, rss.finish().await);
    let traces = traces(&sessions);
    account_sessions(&sessions, &mut result);
    account_sessions(&idle_sessions, &mut result);
    account_jobs(&run.accepted, &traces, &mut result);
    result.rows.push(Row::new(
        "POST sent → job.complete received",
        format!("{:.0} jobs/s offered", args.soak_rate),
        summarize(durations(&run.accepted, &traces, |job, trace| {
            since(trace.complete, job.sent)
        })),
    ));
    result.rows.push(Row::new(
        "(a) POST sent → job.queued received",
        "",
        summarize(durations(&run.accepted, &traces, |job, trace| {
            since(trace.queued, job.sent)
        })),
    ));
    let series = series.lock().clone();
    if series.len() >= 2 {
        let first = series[0].1;
        let last = series[series.len() - 1].1;
        let min = series.iter().map(|(_, v)| *v).min().unwrap_or(0);
        let max = series.iter().map(|(_, v)| *v).max().unwrap_or(0);
        let half_start = series[series.len() - 1].0 / 2.0;
        let half: Vec<(f64, f64)> = series
            .iter()
            .filter(|(t, _)| *t >= half_start)
            .map(|(t, v)| (*t, *v as f64))
            .collect();
        let slope = slope(&half);
        result.rows.push(Row::new(
            format!(
                "RSS MiB first {:.1} / min {:.1} / max {:.1} / last {:.1}; growth {:+.1} MiB; slope over the last half {:+.1} KiB/min",
                first as f64 / 1024.0,
                min as f64 / 1024.0,
                max as f64 / 1024.0,
                last as f64 / 1024.0,
                (last as f64 - first as f64) / 1024.0,
                slope.unwrap_or(0.0)
            ),
            "",
            None,
        ));
        result.notes.push(format!(
            "RSS series (min, MiB): {}",
            series
                .iter()
                .map(|(t, v)| format!("{t:.1}:{:.1}", *v as f64 / 1024.0))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        merge_extra(
            &mut result,
            serde_json::json!({
                "rss_series_min_kib": series,
                "growth_kib": last as i64 - first as i64,
                "slope_last_half_kib_per_min": slope,
            }),
        );
    }
    close_sessions(sessions).await;
    close_sessions(idle_sessions).await;
    Ok(result)
}

/// Least-squares slope of y over x.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let cov: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let var: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    (var > 0.0).then(|| cov / var)
}
