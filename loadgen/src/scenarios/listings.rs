//! Scenario `listings` (issue 22): what maximum listings of large messages cost the gateway's
//! memory and everybody else.
//!
//! User A first creates [`MESSAGES`] messages, each with client data `{"zeros": [0, 0, …]}` of
//! [`ZEROS`] zeros (just under the 64 KiB the gateway takes), and waits until none is pending.
//! Then, for `--duration`, [`LISTERS`] tasks each ask `GET /api/v1/messages?limit=200` with A's
//! token back to back, reading every answer to the end (a page the gateway cut short, with a
//! `next` cursor, counts as one listing too: the cursor is not followed). Meanwhile user B, on
//! a WebSocket of its own, every 100 ms probes `GET /healthz` and submits a job: both latencies
//! say whether the listings hurt others. The gateway's RSS is sampled every 100 ms from just
//! before the listings until they end; its growth over idle is set against the bytes the
//! concurrent listings have in flight, which is what a gateway that builds whole answers in
//! memory multiplies.

use super::common::{
    Accepted, account_sessions, close_sessions, durations, merge_extra, open_sessions, per_second,
    rss_into, since, tokens, traces, wait_until,
};
use super::drive::open_loop;
use super::{Ctx, Res};
use crate::client::{Api, LIST_LIMIT, short_error};
use crate::log;
use crate::report::{Row, ScenarioResult, ms, summarize};
use crate::sampling::{RssSampler, rss_kib};
use crate::session::{Counters, SessionOptions};
use futures::StreamExt;
use parking_lot::Mutex;
use serde::Deserialize;
use serde::de::IgnoredAny;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `--duration` when not given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// A's messages: more than one maximum page, so every listing is a full one.
const MESSAGES: usize = 360;
/// Zeros in each message's data: `{"zeros":[0,…]}` is 2 × ZEROS + 11 bytes, and the whole
/// POST body must stay within the gateway's 64 KiB body limit too.
const ZEROS: usize = 32_700;
/// A's submissions in flight during the setup.
const SETUP_CONCURRENCY: usize = 16;
/// Concurrent listing loops.
const LISTERS: usize = 4;
/// B's probe and submission period.
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// How long after the end B's jobs may take to be queued before they count as lost.
const QUEUED_GRACE: Duration = Duration::from_secs(10);

/// The client data of A's messages: `{"zeros": [0, …]}` with [`ZEROS`] zeros.
fn zeros_data() -> serde_json::Value {
    serde_json::json!({ "zeros": vec![0u8; ZEROS] })
}

/// The body of A's `n`th submission.
fn setup_body(n: usize, data: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "prompt": format!("loadgen listings {n}"), "width": 64, "height": 64, "steps": 1, "data": data
    }))
    .unwrap_or_default()
}

/// RSS growth over idle divided by the bytes `listers` listings of `mean_bytes` hold at once.
fn growth_ratio(idle_kib: u64, peak_kib: u64, mean_bytes: f64, listers: usize) -> Option<f64> {
    let in_flight = listers as f64 * mean_bytes;
    (in_flight > 0.0).then(|| (peak_kib as f64 - idle_kib as f64) * 1024.0 / in_flight)
}

/// What the listing loops saw.
#[derive(Default)]
struct Listings {
    /// Time from sending the request to the last byte of the answer, ms, per 200 answer.
    latency_ms: Vec<f64>,
    /// Body size of each 200 answer.
    bytes: Vec<u64>,
    /// Messages in each 200 answer.
    messages: Vec<usize>,
    /// 200 answers with a `next` cursor (a page cut short by its size).
    with_next: u64,
    /// Failures by kind.
    errors: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct Page {
    messages: Vec<IgnoredAny>,
    #[serde(default)]
    next: Option<String>,
}

/// Lists A's newest page back to back until `end`, into `seen` (shared by the loops).
async fn list_loop(api: Api, token: String, end: Instant, seen: Arc<Mutex<Listings>>) {
    let url = format!("{}/api/v1/messages?limit={LIST_LIMIT}", api.base);
    while Instant::now() < end {
        let sent = Instant::now();
        let answer = match api.http.get(&url).bearer_auth(&token).send().await {
            Ok(response) => {
                let status = response.status();
                match response.bytes().await {
                    Ok(body) if status.as_u16() == 200 => Ok(body),
                    Ok(_) => Err(format!("listing: http {}", status.as_u16())),
                    Err(err) => Err(format!("listing body: {}", short_error(&err))),
                }
            }
            Err(err) => Err(format!("listing send: {}", short_error(&err))),
        };
        let latency = ms(sent.elapsed());
        let Ok(body) = answer.map_err(|kind| *seen.lock().errors.entry(kind).or_default() += 1)
        else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        // Parsed after the clock stopped: the count is for the report only.
        let page = serde_json::from_slice::<Page>(&body);
        let mut seen = seen.lock();
        seen.latency_ms.push(latency);
        seen.bytes.push(body.len() as u64);
        match page {
            Ok(page) => {
                seen.messages.push(page.messages.len());
                seen.with_next += u64::from(page.next.is_some());
            }
            Err(_) => *seen.errors.entry("unparsable listing".into()).or_default() += 1,
        }
    }
}

/// Probes `GET /healthz` every [`PROBE_EVERY`] until `end`, each probe on a task of its own so
/// that a slow answer does not delay the next probe: (latencies ms, failures).
async fn probe_healthz(api: Api, end: Instant) -> (Vec<f64>, u64) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    let mut probes = Vec::new();
    while Instant::now() < end {
        tick.tick().await;
        let api = api.clone();
        probes.push(tokio::spawn(async move {
            let sent = Instant::now();
            api.healthz().await.then(|| ms(sent.elapsed()))
        }));
    }
    let (mut latencies, mut failures) = (Vec::new(), 0);
    for probe in probes {
        match probe.await {
            Ok(Some(latency)) => latencies.push(latency),
            _ => failures += 1,
        }
    }
    (latencies, failures)
}

/// Runs the listings scenario.
pub async fn listings(ctx: &Ctx) -> Res<ScenarioResult> {
    let duration = ctx.args.duration_or(DEFAULT_DURATION);
    let data = zeros_data();
    let data_bytes = serde_json::to_string(&data).map_or(0, |text| text.len());
    let mut result = ScenarioResult::new("listings", &ctx.stores);
    result.config = format!(
        "user A: {MESSAGES} messages with data {{\"zeros\": [{ZEROS} zeros]}} ({data_bytes} B of JSON each); {LISTERS} concurrent loops of GET /api/v1/messages?limit={LIST_LIMIT} (A) for {duration:?}; user B (own WebSocket) every {PROBE_EVERY:?}: GET /healthz and a submit; gateway RSS every 100 ms"
    );
    let users = tokens(ctx, "listings", 2).await?;
    let token_a = users[0].1.clone();

    let started = Instant::now();
    let posted: Vec<_> = futures::stream::iter((0..MESSAGES).map(|n| {
        let api = ctx.api.clone();
        let (token, body) = (token_a.clone(), bytes::Bytes::from(setup_body(n, &data)));
        async move { api.post_message_status(&token, body).await }
    }))
    .buffer_unordered(SETUP_CONCURRENCY)
    .collect()
    .await;
    let refused: Vec<String> = posted
        .into_iter()
        .filter_map(|(_, status)| (status != Ok(202)).then(|| format!("{status:?}")))
        .collect();
    if let Some(first) = refused.first() {
        let count = refused.len();
        return Err(format!(
            "{count} of A's {MESSAGES} messages were refused; first: {first}"
        ));
    }
    let deadline = Instant::now() + ctx.args.drain_timeout;
    while !ctx.api.list(&token_a, "pending", 1, None).await?.is_empty() {
        if Instant::now() >= deadline {
            let timeout = ctx.args.drain_timeout;
            return Err(format!(
                "A's messages still pending {timeout:?} (--drain-timeout) after their submission"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    log(format!(
        "listings: A's {MESSAGES} messages created and finished in {:.1} s",
        started.elapsed().as_secs_f64()
    ));

    let counters = Arc::new(Counters::default());
    let (b_sessions, _) =
        open_sessions(ctx, &users[1..], &counters, |_| SessionOptions::default()).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = ctx.pid.and_then(rss_kib).map(|(rss, _)| rss);
    log(format!("listings: {LISTERS} listers for {duration:?}"));
    let rss = RssSampler::start_with(ctx.pid, ctx.others.clone());
    let start = Instant::now();
    let end = start + duration;
    let seen = Arc::new(Mutex::new(Listings::default()));
    let listers: Vec<_> = (0..LISTERS)
        .map(|_| {
            let (api, token) = (ctx.api.clone(), token_a.clone());
            tokio::spawn(list_loop(api, token, end, seen.clone()))
        })
        .collect();
    let healthz = tokio::spawn(probe_healthz(ctx.api.clone(), end));
    let rate = 1.0 / PROBE_EVERY.as_secs_f64();
    let run = open_loop(ctx, &b_sessions, rate, duration, &mut result, |_| {}).await;
    for lister in listers {
        lister.await.map_err(|err| err.to_string())?;
    }
    let listed_for = start.elapsed();
    let report = rss.finish().await;
    let peak = report.as_ref().map(|report| report.peak_kib);
    rss_into(&mut result, report);
    let (health_ms, health_failures) = healthz.await.map_err(|err| err.to_string())?;

    let accepted = &run.accepted;
    let unqueued = || {
        let traces = traces(&b_sessions);
        let queued = |job: &&Accepted| traces.get(&job.id).is_some_and(|t| t.queued.is_some());
        accepted.iter().filter(|job| !queued(job)).count()
    };
    wait_until(QUEUED_GRACE, Duration::from_millis(20), || unqueued() == 0).await;
    result.lost_jobs += unqueued() as u64;
    let traces = traces(&b_sessions);
    let seen = std::mem::take(&mut *seen.lock());
    account_sessions(&b_sessions, &mut result);
    for (kind, count) in &seen.errors {
        result.error(kind.clone(), *count);
    }
    result.error("GET /healthz failed", health_failures);

    result.rows.push(Row::new(
        "B: GET /healthz",
        format!("every {PROBE_EVERY:?}"),
        summarize(health_ms),
    ));
    result.rows.push(Row::new(
        "B: POST sent → job.queued received",
        format!("{} jobs accepted ({rate:.0}/s offered)", accepted.len()),
        summarize(durations(accepted, &traces, |job, trace| {
            since(trace.queued, job.sent)
        })),
    ));
    result.rows.push(Row::new(
        format!(
            "B: lost jobs (no job.queued within {}s after the end)",
            QUEUED_GRACE.as_secs()
        ),
        result.lost_jobs.to_string(),
        None,
    ));
    let count = seen.bytes.len();
    let total_bytes: u64 = seen.bytes.iter().sum();
    let mean_bytes = total_bytes as f64 / count.max(1) as f64;
    result.rows.push(Row::new(
        format!("A: GET /api/v1/messages?limit={LIST_LIMIT}, {LISTERS} concurrent"),
        format!(
            "{count} listings, {:.1}/s, {:.0} MB/s",
            per_second(count, listed_for),
            total_bytes as f64 / 1e6 / listed_for.as_secs_f64().max(1e-9)
        ),
        summarize(seen.latency_ms.clone()),
    ));
    let mean_messages =
        seen.messages.iter().sum::<usize>() as f64 / seen.messages.len().max(1) as f64;
    result.rows.push(Row::new(
        format!(
            "A: bytes per listing: mean {mean_bytes:.0} B ({:.2} MiB), min {} B, max {} B; messages per listing mean {mean_messages:.1}; {} of {count} with a next cursor",
            mean_bytes / 1048576.0,
            seen.bytes.iter().min().unwrap_or(&0),
            seen.bytes.iter().max().unwrap_or(&0),
            seen.with_next
        ),
        "",
        None,
    ));
    let mib = |kib: Option<u64>| {
        kib.map_or("—".to_owned(), |kib| {
            format!("{:.1}", kib as f64 / 1024.0)
        })
    };
    let growth = idle
        .zip(peak)
        .map(|(idle, peak)| (peak as f64 - idle as f64) / 1024.0);
    let ratio = idle
        .zip(peak)
        .and_then(|(idle, peak)| growth_ratio(idle, peak, mean_bytes, LISTERS));
    result.rows.push(Row::new(
        format!(
            "gateway RSS MiB: idle {} / peak {} / growth {}",
            mib(idle),
            mib(peak),
            growth.map_or("—".to_owned(), |growth| format!("{growth:+.1}"))
        ),
        "",
        None,
    ));
    result.rows.push(Row::new(
        format!("RSS growth ÷ bytes in flight ({LISTERS} × mean listing bytes)"),
        ratio.map_or("—".to_owned(), |ratio| format!("{ratio:.2}")),
        None,
    ));
    merge_extra(
        &mut result,
        serde_json::json!({
            "messages": MESSAGES,
            "data_bytes": data_bytes,
            "listings": count,
            "listings_per_second": per_second(count, listed_for),
            "mean_listing_bytes": mean_bytes,
            "listings_with_next": seen.with_next,
            "rss_idle_kib": idle,
            "rss_peak_kib": peak,
            "rss_growth_per_byte_in_flight": ratio,
        }),
    );
    close_sessions(b_sessions).await;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_and_the_body_fit_the_gateways_64_kib() {
        let data = serde_json::to_string(&zeros_data()).unwrap();
        assert!(
            data.len() <= 65_536 && data.len() > 60_000,
            "{}",
            data.len()
        );
        assert_eq!(data.len(), 2 * ZEROS + 11);
        assert!(setup_body(MESSAGES, &zeros_data()).len() <= 65_536);
    }

    #[test]
    fn the_ratio_is_growth_over_bytes_in_flight() {
        assert_eq!(growth_ratio(1024, 3072, 1024.0 * 1024.0, 2), Some(1.0));
        assert_eq!(growth_ratio(1024, 1024, 1000.0, 4), Some(0.0));
        assert_eq!(growth_ratio(1024, 2048, 0.0, 4), None);
    }
}
