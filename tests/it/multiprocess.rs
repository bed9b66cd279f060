//! Several gateway processes on one PostgreSQL and one Redis (issues 4, 7, 10). Each test runs
//! two gateways (two "processes") in one test process; they share nothing but the database and
//! Redis. Marked ignored: they need `TEST_DATABASE_URL` and `TEST_REDIS_URL` (CI sets both).

use crate::common::*;
use forge_sim::{Latency, SimConfig};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Occupies the app's only backend with a job that never ends (its simulator hangs).
async fn block_backend(app: &TestApp, token: &str) -> String {
    let id = app.submit_id(token, "blocker").await;
    app.wait_message(token, &id, |m| m["status"] == "processing")
        .await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL and Redis: set TEST_DATABASE_URL and TEST_REDIS_URL"]
async fn two_hundred_jobs_through_two_processes_get_positions_one_to_two_hundred_and_run_once() {
    let storage = shared_storage();
    let extra = ["--max-pending-per-user", "1000"];
    let a = TestApp::start(&storage, hanging_sim(), &extra).await;
    let b = TestApp::start(&storage, hanging_sim(), &extra).await;
    let token = a.token("alice").await;
    let blocker_a = block_backend(&a, &token).await;
    let blocker_b = block_backend(&b, &token).await;
    let answers = futures::future::join_all((0..200).map(|n| {
        let app = if n % 2 == 0 { &a } else { &b };
        app.submit(&token, small_prompt(&format!("p{n}")))
    }))
    .await;
    let positions = accepted_positions(&answers);
    assert_eq!(
        positions,
        (1..=200).collect::<Vec<i64>>(),
        "exactly 1..200, each once, across both processes"
    );
    // Reads on either process agree with the queue.
    let ids: Vec<String> = answers
        .iter()
        .map(|(_, body)| body["id"].as_str().expect("id").to_owned())
        .collect();
    let (_, first) = b.get(&token, &format!("/api/v1/messages/{}", ids[0])).await;
    assert!(first["queue_position"].as_i64().is_some());

    // Let both backends run everything: each job runs exactly once.
    let fast = SimConfig {
        latency: Latency::Fixed(Duration::ZERO),
        ..fast_sim()
    };
    a.sim.set_config(fast.clone());
    b.sim.set_config(fast);
    for blocker in [&blocker_a, &blocker_b] {
        assert_eq!(a.cancel(&token, blocker).await.0, 200);
    }
    for id in &ids {
        let done = a
            .wait_message(&token, id, |m| {
                m["status"] == "complete" || m["status"] == "error"
            })
            .await;
        assert_eq!(done["status"], "complete", "{done}");
    }
    let runs = a.sim.stats().completed + b.sim.stats().completed;
    assert_eq!(
        runs,
        200,
        "every job ran exactly once (a: {}, b: {})",
        a.sim.stats().completed,
        b.sim.stats().completed
    );
    assert!(
        a.sim.stats().completed > 0 && b.sim.stats().completed > 0,
        "both processes worked"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL and Redis: set TEST_DATABASE_URL and TEST_REDIS_URL"]
async fn a_session_on_one_process_sees_every_event_of_a_job_another_process_ran() {
    let storage = shared_storage();
    let a = TestApp::start(&storage, hanging_sim(), &[]).await;
    let token = a.token("alice").await;
    // A's only backend is busy for good (before B exists to take the blocker), so B runs what A queues.
    let blocker = block_backend(&a, &token).await;
    let b = TestApp::start(&storage, fast_sim(), &[]).await;
    let mut ws = a.ws(&token).await;
    let id = a.submit_id(&token, "run by b").await;
    let complete = ws.wait_event("job.complete", &id).await;
    assert_eq!(complete["placeholder"], false);
    let (_, done) = a.get(&token, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(done["status"], "complete");
    assert_eq!(b.sim.stats().completed, 1, "process B ran it");
    // Exactly once per session: no duplicate of any event.
    ws.send(json!({"type": "ping"})).await;
    ws.wait_for("pong", |f| f["type"] == "pong").await;
    let types = ws.types_for(&id);
    for kind in ["job.queued", "job.processing", "job.complete"] {
        assert_eq!(
            types.iter().filter(|t| *t == kind).count(),
            1,
            "{kind} once: {types:?}"
        );
    }
    let _ = blocker;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL and Redis: set TEST_DATABASE_URL and TEST_REDIS_URL"]
async fn the_queue_comes_back_from_the_database_in_order_after_its_redis_keys_are_deleted() {
    let storage = shared_storage();
    let app = TestApp::start(&storage, hanging_sim(), &[]).await;
    let token = app.token("alice").await;
    block_backend(&app, &token).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(app.submit_id(&token, &format!("p{n}")).await);
    }
    let (url, prefix) = storage.redis.clone().expect("redis");
    delete_redis_prefix(&url, &prefix).await;
    // The next enqueue finds the queue lost and rebuilds it from the database first.
    ids.push(app.submit_id(&token, "after the loss").await);
    let mut positions = Vec::new();
    for id in &ids {
        let (_, message) = app.get(&token, &format!("/api/v1/messages/{id}")).await;
        positions.push(message["queue_position"].as_i64());
    }
    assert_eq!(
        positions,
        [Some(1), Some(2), Some(3), Some(4), Some(5), Some(6)],
        "same order, nothing twice"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL and Redis: set TEST_DATABASE_URL and TEST_REDIS_URL"]
async fn redis_going_away_and_coming_back_empty_is_survived() {
    let mut storage = shared_storage();
    let (url, prefix) = storage.redis.clone().expect("redis");
    let proxy = storage.redis_through_proxy().await;
    let app = TestApp::start(&storage, hanging_sim(), &[]).await;
    let token = app.token("alice").await;
    block_backend(&app, &token).await;
    let queued = [
        app.submit_id(&token, "q0").await,
        app.submit_id(&token, "q1").await,
    ];
    let ready = || async {
        app.http
            .get(format!("{}/readyz", app.base))
            .send()
            .await
            .expect("readyz")
            .status()
            .as_u16()
    };
    assert_eq!(ready().await, 200);

    // Redis restarts: connections drop and it comes back with nothing (it keeps nothing on disk).
    proxy.cut().await;
    delete_redis_prefix(&url, &prefix).await;
    let deadline = Instant::now() + DEADLINE;
    while ready().await != 503 {
        assert!(
            Instant::now() < deadline,
            "readyz never said 503 while Redis was away"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = app.submit(&token, small_prompt("while away")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    proxy.resume();
    while ready().await != 200 {
        assert!(Instant::now() < deadline, "readyz never came back to 200");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // It reconnected by itself and the queue came back from the database.
    let after = app.submit_id(&token, "after").await;
    let mut positions = Vec::new();
    for id in queued.iter().chain([&after]) {
        let (_, message) = app.get(&token, &format!("/api/v1/messages/{id}")).await;
        positions.push(message["queue_position"].as_i64());
    }
    assert_eq!(positions, [Some(1), Some(2), Some(3)]);
    let (_, all) = app.get(&token, "/api/v1/messages").await;
    assert!(
        !listed_prompts(&all).contains(&"while away"),
        "the refused job left nothing behind"
    );
    app.stop().await;
    proxy.cut().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL and Redis: set TEST_DATABASE_URL and TEST_REDIS_URL"]
async fn a_postgres_outage_answers_503_writes_nothing_half_and_recovers_by_itself() {
    let mut storage = shared_storage();
    let proxy = storage.postgres_through_proxy().await;
    let slow = SimConfig {
        latency: Latency::Fixed(Duration::from_millis(300)),
        ..fast_sim()
    };
    let app = TestApp::start(&storage, slow, &["--forge-timeout", "30s"]).await;
    let token = app.token("alice").await;
    let before = app.submit_id(&token, "before the outage").await;

    proxy.cut().await;
    let (status, body) = app.submit(&token, small_prompt("during")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    let ready = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .expect("readyz")
        .status()
        .as_u16();
    assert_eq!(ready, 503);
    proxy.resume();

    // Recovered by itself: new work goes through, and the job from before finished.
    let deadline = Instant::now() + DEADLINE;
    let after = loop {
        let (status, body) = app.submit(&token, small_prompt("after")).await;
        if status == 202 {
            break body["id"].as_str().expect("id").to_owned();
        }
        assert!(Instant::now() < deadline, "never recovered: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    app.wait_message(&token, &after, |m| m["status"] == "complete")
        .await;
    let done = app
        .wait_message(&token, &before, |m| {
            m["status"] != "queued" && m["status"] != "processing"
        })
        .await;
    assert!(
        done["status"] == "complete" || done["error"]["code"] == "stuck_job",
        "{done}"
    );
    let (_, all) = app.get(&token, "/api/v1/messages").await;
    assert!(
        !listed_prompts(&all).contains(&"during"),
        "nothing half-written"
    );
    app.stop().await;
    proxy.cut().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL and Redis: set TEST_DATABASE_URL and TEST_REDIS_URL"]
async fn five_hundred_jobs_from_fifty_clients_on_two_processes_with_failures_are_all_accounted_for()
{
    let storage = shared_storage();
    let flaky = |seed| SimConfig {
        latency: Latency::Fixed(Duration::ZERO),
        fail_rate: 0.3,
        seed,
        ..fast_sim()
    };
    let extra = ["--breaker-failures", "4", "--breaker-open-for", "200ms"];
    let a = TestApp::start(&storage, flaky(1), &extra).await;
    let b = TestApp::start(&storage, flaky(2), &extra).await;
    let mut clients = Vec::new();
    for n in 0..50 {
        let app = if n % 2 == 0 { &a } else { &b };
        let token = app.token(&format!("client{n}")).await;
        let ws = app.ws(&token).await;
        clients.push((n, token, ws));
    }
    let tasks = clients.into_iter().map(|(n, token, mut ws)| {
        let (submit_to, base) = if n % 3 == 0 {
            (a.base.clone(), b.base.clone())
        } else {
            (b.base.clone(), a.base.clone())
        };
        async move {
            let client = Client {
                base: submit_to,
                http: http_client(),
            };
            let mut ids = HashSet::new();
            for k in 0..10 {
                let (status, body) = client
                    .submit(&token, small_prompt(&format!("c{n} j{k}")))
                    .await;
                assert_eq!(status, 202, "{body}");
                ids.insert(body["id"].as_str().expect("id").to_owned());
            }
            let mut ends: HashMap<String, usize> = HashMap::new();
            let mut resynced = false;
            while ends.values().filter(|count| **count > 0).count() < ids.len() && !resynced {
                let frame = ws
                    .next()
                    .await
                    .unwrap_or_else(|| panic!("client {n}: events stopped"));
                match frame["type"].as_str() {
                    Some("job.complete" | "job.error") => {
                        *ends
                            .entry(frame["id"].as_str().expect("id").to_owned())
                            .or_default() += 1
                    }
                    Some("resync") => resynced = true,
                    _ => {}
                }
            }
            // Read whatever else arrives for a moment: no second terminal event may come.
            while let Some(frame) = ws.next_within(Duration::from_millis(300)).await {
                if frame["type"] == "job.complete" || frame["type"] == "job.error" {
                    *ends
                        .entry(frame["id"].as_str().expect("id").to_owned())
                        .or_default() += 1;
                }
            }
            assert!(
                ends.values().all(|count| *count <= 1),
                "client {n}: a terminal event came twice: {ends:?}"
            );
            let reader = Client {
                base,
                http: http_client(),
            };
            for id in &ids {
                let done = reader
                    .wait_message(&token, id, |m| {
                        m["status"] == "complete" || m["status"] == "error"
                    })
                    .await;
                if done["status"] == "error" {
                    assert!(
                        ["forge_connection", "unknown"]
                            .contains(&done["error"]["code"].as_str().unwrap_or_default()),
                        "{done}"
                    );
                }
                if !resynced {
                    assert_eq!(
                        ends.get(id),
                        Some(&1),
                        "client {n}: no terminal event for {id}"
                    );
                }
            }
            ids.len()
        }
    });
    let accounted: usize = futures::future::join_all(tasks).await.into_iter().sum();
    assert_eq!(accounted, 500);
    a.stop().await;
    b.stop().await;
    let _: Value = Value::Null;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL and Redis: set TEST_DATABASE_URL and TEST_REDIS_URL"]
async fn a_job_running_when_its_process_shuts_down_is_run_by_another() {
    // A rolling restart whose grace is shorter than the job: the process stopping hands the
    // job back (interrupted on its backend, queued again at the head), and the other process
    // runs it to completion, nowhere near STUCK_AFTER.
    let storage = shared_storage();
    let a = TestApp::start(&storage, hanging_sim(), &["--shutdown-grace", "1s"]).await;
    let token = a.token("alice").await;
    let id = a.submit_id(&token, "through a restart").await;
    a.wait_message(&token, &id, |m| m["status"] == "processing")
        .await;
    let b = TestApp::start(&storage, fast_sim(), &[]).await;
    let mut ws = b.ws(&token).await;
    let started = Instant::now();
    a.stop().await;
    let done = b
        .wait_message(&token, &id, |m| m["status"] == "complete")
        .await;
    assert_eq!(done["placeholder"], false);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(b.sim.stats().completed, 1, "process B ran it");
    ws.wait_event("job.complete", &id).await;
    went_back_then_ran(&ws.types_for(&id));
    b.stop().await;
}

/// The frames a session saw of a job that went back to the queue and ran again: `job.queued`
/// before `job.processing`, `job.complete` last (position frames may come between: the queue
/// feed and the event bus are two channels).
fn went_back_then_ran(types: &[String]) {
    let at = |name: &str| types.iter().position(|t| t == name);
    assert!(at("job.queued").is_some(), "{types:?}");
    assert!(at("job.queued") < at("job.processing"), "{types:?}");
    assert_eq!(
        types.last().map(String::as_str),
        Some("job.complete"),
        "{types:?}"
    );
}

/// Process A, a child process on `storage` with its own simulator (`sim`) and lease `lease`,
/// running one job to `processing`; returns the process, its simulator, the token and the job.
async fn a_process_running_one_job(
    storage: &Storage,
    sim: SimConfig,
    lease: &str,
) -> (GatewayProcess, forge_sim::SimServer, String, String) {
    let sim = start_sim(sim).await;
    let mut env = storage.process_env(sim.url());
    env.extend([
        ("JOB_LEASE", lease.to_owned()),
        ("STUCK_AFTER", "10m".to_owned()),
        ("FORGE_TIMEOUT", "10m".to_owned()),
        ("FORGE_PROGRESS_INTERVAL", "100ms".to_owned()),
    ]);
    let a = GatewayProcess::start(&env).await;
    let client = a.client();
    let token = client.token("alice").await;
    let id = client.submit_id(&token, "on process A").await;
    client
        .wait_message(&token, &id, |m| m["status"] == "processing")
        .await;
    (a, sim, token, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL and Redis: set TEST_DATABASE_URL and TEST_REDIS_URL"]
async fn a_killed_process_s_running_job_runs_on_another_when_its_lease_runs_out() {
    let storage = shared_storage();
    let (a, _sim_a, token, id) = a_process_running_one_job(&storage, hanging_sim(), "1s").await;
    let b = TestApp::start(&storage, fast_sim(), &["--job-lease", "1s"]).await;
    let mut ws = b.ws(&token).await;
    let killed = Instant::now();
    a.kill().await;
    let done = b
        .wait_message(&token, &id, |m| m["status"] == "complete")
        .await;
    assert_eq!(done["placeholder"], false, "{done}");
    assert!(
        killed.elapsed() < Duration::from_secs(15),
        "within JOB_LEASE and the job's own time, nowhere near STUCK_AFTER: {:?}",
        killed.elapsed()
    );
    assert_eq!(b.sim.stats().completed, 1, "process B ran it");
    ws.wait_event("job.complete", &id).await;
    went_back_then_ran(&ws.types_for(&id));
    let metrics = b.metrics().await;
    assert_eq!(
        metric(&metrics, "forge_gateway_job_leases_expired_total"),
        1.0
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL and Redis: set TEST_DATABASE_URL and TEST_REDIS_URL"]
async fn a_frozen_process_that_comes_back_after_its_lease_was_taken_cannot_overwrite_the_new_run() {
    // A is frozen (SIGSTOP) while its backend generates; B (lease 1 s) finds A's lease run out
    // and starts the job again, slowly. A thaws with Forge's answer waiting and writes its
    // outcome before its own next renewal is due (its lease is 30 s): the write is fenced out,
    // and the job goes on as B's run.
    let storage = shared_storage();
    let slow = |latency| SimConfig {
        latency: Latency::Fixed(latency),
        ..fast_sim()
    };
    let (a, sim_a, token, id) =
        a_process_running_one_job(&storage, slow(Duration::from_secs(2)), "30s").await;
    // Frozen only once its backend has the request (processing is written just before it).
    let deadline = Instant::now() + DEADLINE;
    while sim_a.stats().txt2img_requests == 0 {
        assert!(Instant::now() < deadline, "A never called its backend");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = a.child.id().expect("running").to_string();
    let signal = |name: &str| {
        let status = std::process::Command::new("kill")
            .args([name, &pid])
            .status()
            .expect("kill runs");
        assert!(status.success());
    };
    signal("-STOP");
    let b = TestApp::start(
        &storage,
        slow(Duration::from_secs(4)),
        &["--job-lease", "1s"],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while (b.sim.stats().txt2img_requests == 0 || sim_a.stats().completed == 0)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(b.sim.stats().txt2img_requests, 1, "B runs it again");
    assert_eq!(sim_a.stats().completed, 1, "A's answer waits for A");
    let (_, before) = b.get(&token, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(before["status"], "processing", "{before}");
    signal("-CONT");
    let fenced = |line: &String| line.contains(&id) && line.contains("late result ignored");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !a.logs.lock().iter().any(fenced) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        a.logs.lock().iter().any(fenced),
        "A's outcome was refused: {:?}",
        a.logs.lock().iter().rev().take(20).collect::<Vec<_>>()
    );
    let (_, after) = b.get(&token, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(after["status"], "processing", "B's run goes on: {after}");
    let done = b
        .wait_message(&token, &id, |m| m["status"] == "complete")
        .await;
    assert_eq!(b.sim.stats().completed, 1, "B's run completed it: {done}");
    a.kill().await;
    b.stop().await;
    sim_a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL and Redis: set TEST_DATABASE_URL and TEST_REDIS_URL"]
async fn a_cancel_on_one_process_interrupts_the_run_on_another_at_once() {
    // Process A's backend runs the job; the cancel reaches process B. With a 10-minute lease
    // no lease renewal comes before the deadline below: only the event bus can tell A.
    let storage = shared_storage();
    let lease = ["--job-lease", "10m"];
    let a = TestApp::start(&storage, hanging_sim(), &lease).await;
    let token = a.token("alice").await;
    let id = block_backend(&a, &token).await;
    let b = TestApp::start(&storage, hanging_sim(), &lease).await;
    assert_eq!(b.cancel(&token, &id).await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.sim.stats().interrupts == 0 {
        assert!(
            Instant::now() < deadline,
            "process A never interrupted the run"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.sim.stats().interrupts, 0, "B's backend ran nothing");
    a.stop().await;
    b.stop().await;
}
