//! Scenario 6, soak: `--soak-rate` jobs/s for `--soak-duration` plus `--soak-idle` idle
//! sessions; the gateway's RSS every 10 s must not grow.

use super::common::{
    account_jobs, account_sessions, backends, close_sessions, drain, durations, merge_extra,
    open_sessions, rss_into, since, tokens, traces,
};
use super::drive::open_loop;
use super::{Ctx, Res};
use crate::log;
use crate::report::{Row, ScenarioResult, summarize};
use crate::sampling::{RssSampler, rss_kib};
use crate::session::{Counters, SessionOptions};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Runs the soak scenario.
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
