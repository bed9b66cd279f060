//! Issue 25, routing: a job runs only where its model is offered, among free backends the
//! one with it loaded takes it, and positions count what really runs before a job when
//! backends offer different (overlapping) models. Runs on both stores.

use crate::common::*;
use crate::models::{models_when, offering};
use chrono::{DateTime, Utc};
use forge_gateway::app::RunningApp;
use forge_sim::{Latency, SimConfig, SimServer};
use serde_json::{Value, json};
use std::time::Duration;

/// A gateway on `sims`, once its listing shows `models` models.
async fn gateway_on(storage: &Storage, sims: &[&SimServer], models: usize) -> (RunningApp, Client) {
    let urls: Vec<String> = sims.iter().map(|sim| sim.url()).collect();
    let config = config(storage, &urls, &["--models-refresh", "200ms"]);
    let app = forge_gateway::app::start(config).await.expect("starts");
    let client = Client {
        base: app.url(),
        http: http_client(),
    };
    let token = client.token("watcher").await;
    models_when(&client, &token, |listing| {
        listing["models"]
            .as_array()
            .is_some_and(|m| m.len() == models)
    })
    .await;
    (app, client)
}

/// Submits a small job for `model` (none: no model asked) and returns its id and shown
/// position (none if a backend took it before the answer was made).
async fn submit_for(client: &Client, token: &str, model: Option<&str>) -> (String, Option<i64>) {
    let mut body = small_prompt(&format!("for {model:?}"));
    if let Some(model) = model {
        body["model"] = json!(model);
    }
    let (status, queued) = client.submit(token, body).await;
    assert_eq!(status, 202, "{queued}");
    (
        queued["id"].as_str().expect("id").to_owned(),
        queued["queue_position"].as_i64(),
    )
}

async fn completed(client: &Client, token: &str, id: &str) -> Value {
    client
        .wait_message(token, id, |m| m["status"] == "complete")
        .await
}

fn started_at(message: &Value) -> DateTime<Utc> {
    message["started_at"]
        .as_str()
        .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
        .map(|at| at.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("no start time: {message}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_only_where_their_model_is_offered_and_switch_once_per_backend() {
    let storage = Storage::fresh();
    let switch = Duration::from_millis(50);
    // The backend for a is the slower one: jobs for a wait at the head of the queue while
    // the other backend takes the jobs for c behind them.
    let one = start_sim(SimConfig {
        model_switch: switch,
        latency: Latency::Fixed(Duration::from_millis(150)),
        ..offering(&["a", "b"])
    })
    .await;
    let two = start_sim(SimConfig {
        model_switch: switch,
        ..offering(&["b", "c"])
    })
    .await;
    let (app, client) = gateway_on(&storage, &[&one, &two], 3).await;
    let token = client.token("alice").await;
    let mut ids = Vec::new();
    for n in 0..8 {
        let model = if n % 2 == 0 { "a" } else { "c" };
        ids.push((model, submit_for(&client, &token, Some(model)).await.0));
    }
    for (model, id) in &ids {
        let done = completed(&client, &token, id).await;
        assert_eq!(done["model"], *model, "{done}");
    }
    let (first, second) = (one.stats(), two.stats());
    assert_eq!(
        first.completed, 4,
        "only the jobs for a ran on a,b: {first:?}"
    );
    assert_eq!(
        second.completed, 4,
        "only the jobs for c ran on b,c: {second:?}"
    );
    assert_eq!(first.model_switches, 0, "a was loaded all along");
    assert_eq!(second.model_switches, 1, "b to c once, then c stayed");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn among_free_backends_the_one_with_the_model_loaded_takes_the_job() {
    let storage = Storage::fresh();
    // Both offer everything; one has a loaded, the other b.
    let one = start_sim(offering(&["a", "b", "c"])).await;
    let two = start_sim(offering(&["b", "a", "c"])).await;
    let (app, client) = gateway_on(&storage, &[&one, &two], 3).await;
    let token = client.token("bob").await;
    for model in ["b", "a", "b", "a", "b"] {
        let (id, _) = submit_for(&client, &token, Some(model)).await;
        completed(&client, &token, &id).await;
    }
    assert_eq!(one.stats().completed, 2, "the jobs for a");
    assert_eq!(two.stats().completed, 3, "the jobs for b");
    assert_eq!(
        (one.stats().model_switches, two.stats().model_switches),
        (0, 0),
        "no job needed a switch"
    );
    app.shutdown().await;
}

/// How long each job takes once the backends run.
const JOB_TAKES: Duration = Duration::from_millis(150);
/// How far apart two backends' start times of jobs popped in order may be written.
const SKEW: chrono::TimeDelta = chrono::TimeDelta::milliseconds(40);

/// Whether a job for `behind` counts a job for `ahead` in its position, with backends
/// offering `a,b` and `b,c` (the rule of docs/api.md, written out).
fn counts(behind: Option<&str>, ahead: Option<&str>) -> bool {
    !matches!(
        (behind, ahead),
        (Some("a"), Some("c")) | (Some("c"), Some("a"))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_overlapping_backends_a_position_is_the_jobs_that_start_before_it_there() {
    let storage = Storage::fresh();
    let one = start_sim(SimConfig {
        models: vec!["a".into(), "b".into()],
        ..hanging_sim()
    })
    .await;
    let two = start_sim(SimConfig {
        models: vec!["b".into(), "c".into()],
        ..hanging_sim()
    })
    .await;
    let (app, client) = gateway_on(&storage, &[&one, &two], 3).await;
    let token = client.token("carol").await;
    let mut ws = client.ws(&token).await;
    // Each backend busy, so the queue builds.
    let mut blockers = Vec::new();
    for model in ["a", "c"] {
        let (id, _) = submit_for(&client, &token, Some(model)).await;
        client
            .wait_message(&token, &id, |m| m["status"] == "processing")
            .await;
        blockers.push(id);
    }
    let models = [
        Some("a"),
        Some("c"),
        Some("b"),
        Some("a"),
        None,
        Some("c"),
        Some("a"),
        Some("b"),
        Some("c"),
        Some("a"),
        Some("c"),
    ];
    let mut jobs = Vec::new();
    for model in models {
        let (id, shown) = submit_for(&client, &token, model).await;
        jobs.push((model, id, shown.expect("both backends are busy: queued")));
    }
    for (n, (model, _, shown)) in jobs.iter().enumerate() {
        let ahead = models[..n].iter().filter(|k| counts(*model, **k)).count();
        assert_eq!(*shown, ahead as i64 + 1, "job {n} for {model:?}");
    }

    // Let them run.
    let quick = |models: &[&str]| SimConfig {
        models: models.iter().map(|m| (*m).to_owned()).collect(),
        latency: Latency::Fixed(JOB_TAKES),
        ..fast_sim()
    };
    one.set_config(quick(&["a", "b"]));
    two.set_config(quick(&["b", "c"]));
    for blocker in &blockers {
        assert_eq!(client.cancel(&token, blocker).await.0, 200);
    }
    let mut started = Vec::new();
    for (_, id, _) in &jobs {
        started.push(started_at(&completed(&client, &token, id).await));
    }
    for (n, (model, id, shown)) in jobs.iter().enumerate() {
        let shown_frames = ws.positions_of(id);
        assert!(
            shown_frames.windows(2).all(|pair| pair[1] < pair[0]),
            "job {n}: a position went back or repeated: {shown_frames:?}"
        );
        assert!(
            shown_frames.first().is_none_or(|first| first <= shown),
            "job {n}: {shown_frames:?} after {shown}"
        );
        // Every job its position counted started before it (a job for b ahead may have
        // started on the other backend a moment before: the two mark their jobs processing
        // concurrently, so their start times may differ by a scheduler tick, never by a job)...
        for k in 0..n {
            if counts(*model, models[k]) && matches!(model, Some("a") | Some("c")) {
                assert!(
                    started[k] <= started[n] + SKEW,
                    "job {n} for {model:?} started before job {k} for {:?}, which it counted",
                    models[k]
                );
            }
        }
        // ...and no job behind it for the same model did (its backends run in ticket order).
        for k in n + 1..jobs.len() {
            if models[k] == *model && model.is_some() {
                assert!(started[n] <= started[k], "job {k} overtook job {n}");
            }
        }
    }
    let _ = ws
        .wait_event("job.complete", &jobs.last().expect("jobs").1)
        .await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_for_a_model_no_backend_lists_is_marked_stuck_while_the_queue_moves() {
    let storage = Storage::fresh();
    // The backend is down at start: nothing is listed yet, so the choice cannot be checked.
    let sim = start_sim(offering(&["a"])).await;
    let (sim_config, sim_url) = (sim.config(), sim.url());
    sim.shutdown().await;
    let config = config(
        &storage,
        std::slice::from_ref(&sim_url),
        &[
            "--models-refresh",
            "200ms",
            "--stuck-after",
            "1s",
            "--watchdog-interval",
            "100ms",
        ],
    );
    let app = forge_gateway::app::start(config).await.expect("starts");
    let client = Client {
        base: app.url(),
        http: http_client(),
    };
    let token = client.token("dora").await;
    let (stranded, _) = submit_for(&client, &token, Some("zzz")).await;
    let port: std::net::SocketAddr = sim_url
        .trim_start_matches("http://")
        .parse()
        .expect("an address");
    let _back = SimServer::start(port, sim_config)
        .await
        .expect("the backend starts again on its port");
    models_when(&client, &token, |listing| {
        listing["models"].as_array().is_some_and(|m| m.len() == 1)
    })
    .await;
    // Jobs for a keep the queue moving, so only its model can make the job stuck.
    let deadline = std::time::Instant::now() + DEADLINE;
    let failed = loop {
        let (id, _) = submit_for(&client, &token, Some("a")).await;
        completed(&client, &token, &id).await;
        let (_, message) = client
            .get(&token, &format!("/api/v1/messages/{stranded}"))
            .await;
        if message["status"] == "error" {
            break message;
        }
        assert_eq!(message["status"], "queued", "{message}");
        assert!(
            std::time::Instant::now() < deadline,
            "never marked: {message}"
        );
    };
    assert_eq!(failed["error"]["code"], "stuck_job", "{failed}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_only_backend_fails_is_not_handed_to_a_backend_that_lacks_its_model() {
    let storage = Storage::fresh();
    let one = start_sim(offering(&["a", "b"])).await;
    let two = start_sim(SimConfig {
        latency: Latency::Fixed(Duration::from_secs(30)),
        ..offering(&["b", "c"])
    })
    .await;
    let (app, client) = gateway_on(&storage, &[&one, &two], 3).await;
    let token = client.token("erin").await;
    let (first, _) = submit_for(&client, &token, Some("c")).await;
    client
        .wait_message(&token, &first, |m| m["status"] == "processing")
        .await;
    // The only backend with c dies mid-generation: the healthy one lacks c, so the job is
    // not handed to it (it would come back and be declined, over and over); it fails as on
    // a gateway with one backend.
    let (two_config, two_url) = (two.config(), two.url());
    two.shutdown().await;
    let failed = client
        .wait_message(&token, &first, |m| m["status"] != "processing")
        .await;
    assert_eq!(failed["status"], "error", "{failed}");
    // Back on its port, it takes jobs for c at once.
    let port: std::net::SocketAddr = two_url
        .trim_start_matches("http://")
        .parse()
        .expect("an address");
    let _back = SimServer::start(
        port,
        SimConfig {
            latency: Latency::Fixed(Duration::from_millis(20)),
            ..two_config
        },
    )
    .await
    .expect("the backend starts again on its port");
    let (second, _) = submit_for(&client, &token, Some("c")).await;
    let done = completed(&client, &token, &second).await;
    assert_eq!(done["model"], "c", "{done}");
    assert_eq!(one.stats().completed, 0, "nothing for c ran where c is not");
    app.shutdown().await;
}
