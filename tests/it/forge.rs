//! Issue 5: timeouts, the circuit breaker, clear errors, several backends (R5, R8, R9, R10.4).

use crate::common::*;
use forge_sim::{Latency, SimConfig, SimMode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const R5_1_ONE_SECOND: &str = "Forge API zaman aşımına uğradı (1s). Lütfen tekrar deneyin.";
const R9_1: &str = "Forge API bağlantı hatası. Lütfen sistem yöneticisine bildirin.";
const R9_2: &str = "İşlem zaman aşımına uğradı. Lütfen tekrar deneyin.";
const R9_4: &str = "Bilinmeyen bir hata oluştu. Lütfen tekrar deneyin.";

fn sim(mode: SimMode) -> SimConfig {
    SimConfig { mode, ..fast_sim() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_gives_forge_timeout_with_the_exact_message_and_no_placeholder() {
    let (app, _storage) = TestApp::spawn_with(sim(SimMode::Hang), &["--forge-timeout", "1s"]).await;
    let token = app.token("alice").await;
    let mut ws = app.ws(&token).await;
    let id = app.submit_id(&token, "never finishes").await;
    let started = Instant::now();
    let error = ws.wait_event("job.error", &id).await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "not before the timeout"
    );
    assert_eq!(
        error["error"],
        json!({"code": "forge_timeout", "message": R5_1_ONE_SECOND})
    );
    assert_eq!(error["status"], "error");
    let (_, stored) = app.get(&token, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(stored["status"], "error");
    assert_eq!(stored["error"]["message"], R5_1_ONE_SECOND);
    assert_eq!(
        stored["image_url"],
        Value::Null,
        "no placeholder on a timeout (R5.3)"
    );
    assert_eq!(stored["placeholder"], false);
    // The gateway asked Forge to stop the abandoned generation.
    let deadline = Instant::now() + DEADLINE;
    while app.sim.stats().interrupts == 0 {
        assert!(Instant::now() < deadline, "no interrupt reached Forge");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_message_shows_the_configured_timeout() {
    let (app, _storage) =
        TestApp::spawn_with(sim(SimMode::Hang), &["--forge-timeout", "1500ms"]).await;
    let token = app.token("alice").await;
    let id = app.submit_id(&token, "slow").await;
    let failed = app
        .wait_message(&token, &id, |m| m["status"] == "error")
        .await;
    assert_eq!(
        failed["error"]["message"],
        "Forge API zaman aşımına uğradı (1.5s). Lütfen tekrar deneyin."
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_error_reaches_the_websocket_with_its_exact_message() {
    let (app, _storage) = TestApp::spawn_with(
        fast_sim(),
        &["--forge-timeout", "1s", "--breaker-failures", "100"],
    )
    .await;
    let token = app.token("alice").await;
    let mut ws = app.ws(&token).await;
    let cases = [
        (SimMode::Reset, "forge_connection", R9_1),
        (SimMode::Close, "forge_connection", R9_1),
        (SimMode::Error500, "unknown", R9_4),
        (SimMode::Garbage, "unknown", R9_4),
        (SimMode::Hang, "forge_timeout", R5_1_ONE_SECOND),
    ];
    for (mode, code, message) in cases {
        app.sim.set_mode(mode);
        let id = app.submit_id(&token, mode.as_str()).await;
        let error = ws.wait_event("job.error", &id).await;
        assert_eq!(
            error["error"],
            json!({"code": code, "message": message}),
            "mode {}",
            mode.as_str()
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_total_deadline_fails_with_the_timeout_message() {
    let slow = SimConfig {
        latency: Latency::Fixed(Duration::from_secs(30)),
        ..fast_sim()
    };
    let (app, _storage) = TestApp::spawn_with(
        slow,
        &["--job-deadline", "1s", "--watchdog-interval", "100ms"],
    )
    .await;
    let token = app.token("alice").await;
    let mut ws = app.ws(&token).await;
    let id = app.submit_id(&token, "takes too long").await;
    let error = ws.wait_event("job.error", &id).await;
    assert_eq!(error["error"], json!({"code": "timeout", "message": R9_2}));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_failures_open_the_breaker_then_placeholders_then_a_good_backend_closes_it() {
    let (app, _storage) =
        TestApp::spawn_with(sim(SimMode::Reset), &["--breaker-open-for", "1s"]).await;
    let token = app.token("alice").await;
    let mut ws = app.ws(&token).await;
    for n in 0..5 {
        let id = app.submit_id(&token, &format!("failing {n}")).await;
        let error = ws.wait_event("job.error", &id).await;
        assert_eq!(error["error"]["code"], "forge_connection");
    }
    let opened = Instant::now();
    let metrics = app.metrics().await;
    assert_eq!(
        metric(&metrics, "forge_gateway_breaker_state"),
        1.0,
        "open after 5 failures"
    );
    let requests_when_opened = app.sim.stats().txt2img_requests;

    // While open, jobs complete at once with the placeholder, and the user is told why.
    let id = app.submit_id(&token, "while open").await;
    let complete = ws.wait_event("job.complete", &id).await;
    assert_eq!(complete["placeholder"], true);
    assert_eq!(complete["image_url"], "/images/placeholder.png");
    assert_eq!(complete["notice"]["code"], "forge_unavailable");
    assert_eq!(
        app.sim.stats().txt2img_requests,
        requests_when_opened,
        "no request reaches Forge while open"
    );
    let png = app
        .http
        .get(format!("{}/images/placeholder.png", app.base))
        .send()
        .await
        .expect("image")
        .bytes()
        .await
        .expect("bytes");
    assert!(png.starts_with(b"\x89PNG"));

    // The backend recovers; after the open time one trial goes through and closes the breaker.
    app.sim.set_mode(SimMode::Normal);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let id = app.submit_id(&token, "after").await;
        let complete = ws.wait_event("job.complete", &id).await;
        if complete["placeholder"] == false {
            assert!(
                opened.elapsed() >= Duration::from_secs(1),
                "no trial before the open time"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the breaker never closed");
    }
    let metrics = app.metrics().await;
    assert_eq!(
        metric(&metrics, "forge_gateway_breaker_state"),
        0.0,
        "closed again"
    );
    assert!(
        metrics.contains("forge_gateway_breaker_transitions_total{backend="),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_trial_opens_the_breaker_again() {
    let (app, _storage) = TestApp::spawn_with(
        sim(SimMode::Error500),
        &["--breaker-open-for", "500ms", "--breaker-failures", "2"],
    )
    .await;
    let token = app.token("alice").await;
    for n in 0..2 {
        let id = app.submit_id(&token, &format!("failing {n}")).await;
        app.wait_message(&token, &id, |m| m["status"] == "error")
            .await;
    }
    // Wait past the open time: the next job is the trial, it fails, and the breaker opens again.
    let deadline = Instant::now() + DEADLINE;
    let requests = app.sim.stats().txt2img_requests;
    while app.sim.stats().txt2img_requests == requests {
        let id = app.submit_id(&token, "trial?").await;
        let done = app
            .wait_message(&token, &id, |m| {
                m["status"] != "queued" && m["status"] != "processing"
            })
            .await;
        assert!(Instant::now() < deadline, "no trial request");
        if app.sim.stats().txt2img_requests > requests {
            assert_eq!(
                done["error"]["code"], "unknown",
                "the trial's own error: {done}"
            );
        } else {
            assert_eq!(done["placeholder"], true);
        }
    }
    assert_eq!(
        app.sim.stats().txt2img_requests,
        requests + 1,
        "exactly one trial"
    );
    let id = app.submit_id(&token, "after the failed trial").await;
    let done = app
        .wait_message(&token, &id, |m| m["status"] == "complete")
        .await;
    assert_eq!(
        done["placeholder"], true,
        "open again after the failed trial"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_backends_run_two_jobs_at_the_same_time() {
    let slow = SimConfig {
        latency: Latency::Fixed(Duration::from_millis(800)),
        ..fast_sim()
    };
    let storage = Storage::fresh();
    let first = start_sim(slow.clone()).await;
    let second = start_sim(slow).await;
    let app = forge_gateway::app::start(config(&storage, &[first.url(), second.url()], &[]))
        .await
        .expect("starts");
    let base = app.url();
    let client = TestApp {
        app: Some(app),
        data_dir: storage.dir.path().to_owned(),
        client: Client {
            base: base.clone(),
            http: http_client(),
        },
        sim: first,
    };
    let token = client.token("alice").await;
    let mut ws = client.ws(&token).await;
    let a = client.submit_id(&token, "a").await;
    let b = client.submit_id(&token, "b").await;
    ws.wait_for("both processing", |_| true).await;
    let mut processing = 0;
    let deadline = Instant::now() + DEADLINE;
    while processing < 2 {
        let frame = ws.next().await.expect("frame");
        assert!(
            frame["type"] != "job.complete" || processing == 2,
            "a job completed before both were processing: {:?}",
            ws.seen
        );
        if frame["type"] == "job.processing" {
            processing += 1;
        }
        assert!(Instant::now() < deadline);
    }
    ws.wait_event("job.complete", &a).await;
    ws.wait_event("job.complete", &b).await;
    assert_eq!(client.sim.stats().txt2img_requests, 1);
    assert_eq!(second.stats().txt2img_requests, 1);
    client.stop().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backends_progress_arrives_in_order() {
    let slow = SimConfig {
        steps_per_second: Some(10.0),
        latency: Latency::Fixed(Duration::ZERO),
        ..fast_sim()
    };
    let (app, _storage) = TestApp::spawn_with(slow, &[]).await;
    let token = app.token("alice").await;
    let mut ws = app.ws(&token).await;
    let (_, created) = app
        .submit(
            &token,
            json!({"prompt": "slow", "width": 64, "height": 64, "steps": 15}),
        )
        .await;
    let id = created["id"].as_str().expect("id").to_owned();
    ws.wait_event("job.complete", &id).await;
    let progress: Vec<(i64, i64)> = ws
        .seen
        .iter()
        .filter(|f| f["id"] == id.as_str() && f["type"] == "job.progress")
        .map(|f| {
            (
                f["progress"].as_i64().expect("progress"),
                f["version"].as_i64().expect("version"),
            )
        })
        .collect();
    assert!(progress.len() >= 3, "progress events: {progress:?}");
    assert!(
        progress
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1),
        "in order: {progress:?}"
    );
    assert!(
        progress.iter().all(|(p, _)| (1..100).contains(p)),
        "{progress:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_creates_a_new_job_with_the_same_prompt_and_params() {
    let (app, _storage) = TestApp::spawn_with(sim(SimMode::Hang), &["--forge-timeout", "1s"]).await;
    let token = app.token("alice").await;
    let (_, created) = app
        .submit(
            &token,
            json!({"prompt": "again", "width": 64, "height": 72, "steps": 3, "seed": 42}),
        )
        .await;
    let id = created["id"].as_str().expect("id").to_owned();
    app.wait_message(&token, &id, |m| m["status"] == "error")
        .await;
    app.sim.set_mode(SimMode::Normal);
    let (status, retried) = app.retry(&token, &id).await;
    assert_eq!(status, 202, "{retried}");
    assert_ne!(retried["id"], id.as_str());
    assert_eq!(retried["retry_of"], id.as_str());
    assert_eq!(retried["prompt"], "again");
    assert_eq!(retried["params"], created["params"]);
    let new_id = retried["id"].as_str().expect("id");
    app.wait_message(&token, new_id, |m| m["status"] == "complete")
        .await;
    let (_, original) = app.get(&token, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(original["status"], "error", "the original stays as it was");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previews_are_stored_announced_readable_over_rest_and_deleted_when_the_job_ends() {
    // 20 steps at 5 a second: the job runs for 4 s, long after its first preview.
    let slow = SimConfig {
        steps_per_second: Some(5.0),
        latency: Latency::Fixed(Duration::ZERO),
        previews: true,
        ..fast_sim()
    };
    let (app, _storage) = TestApp::spawn_with(slow, &["--forge-previews", "true"]).await;
    let token = app.token("alice").await;
    let mut ws = app.ws(&token).await;
    let (_, created) = app
        .submit(
            &token,
            json!({"prompt": "preview", "width": 64, "height": 64, "steps": 20}),
        )
        .await;
    let id = created["id"].as_str().expect("id").to_owned();
    let preview = ws.wait_event("job.preview", &id).await;
    let version = preview["version"]
        .as_i64()
        .expect("a preview carries the version of its write");
    let url = preview["preview_url"].as_str().expect("url").to_owned();
    assert_eq!(url, format!("/images/{id}.preview.png"));
    // A reload while the job runs shows the preview too (R7.2), and it is served.
    let (_, running) = app.get(&token, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(running["status"], "processing", "{running}");
    assert_eq!(running["preview_url"], url.as_str());
    let fetched = app
        .http
        .get(format!("{}{}", app.base, url))
        .send()
        .await
        .expect("preview");
    assert_eq!(fetched.status().as_u16(), 200);
    assert!(
        fetched
            .bytes()
            .await
            .expect("bytes")
            .starts_with(b"\x89PNG")
    );
    let complete = ws.wait_event("job.complete", &id).await;
    assert!(
        complete["version"].as_i64().expect("version") > version,
        "a preview never outranks the completion"
    );
    // The job ended: its preview is gone, from the record and from the disk.
    let (_, done) = app.get(&token, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(done["preview_url"], Value::Null, "{done}");
    let gone = app
        .http
        .get(format!("{}{}", app.base, url))
        .send()
        .await
        .expect("preview");
    assert_eq!(gone.status().as_u16(), 404);
    app.stop().await;
}
