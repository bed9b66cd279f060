//! Several processes listing the same Forge backends (issue 23): a backend's slots are counted
//! across every process, so jobs wait in the queue, with exact positions, not inside Forge.
//! Ignored without `TEST_DATABASE_URL` and `TEST_REDIS_URL` (CI sets both).

use crate::common::*;
use forge_gateway::app::{self, RunningApp};
use forge_sim::{Latency, SimConfig, SimMode, SimServer};
use serde_json::Value;
use std::time::{Duration, Instant};

/// `count` gateways in this test process on `storage`, each listing every one of `sims`.
async fn processes_sharing(
    storage: &Storage,
    sims: &[SimServer],
    count: usize,
    extra: &[&str],
) -> Vec<(RunningApp, Client)> {
    let urls: Vec<String> = sims.iter().map(SimServer::url).collect();
    let mut processes = Vec::new();
    for _ in 0..count {
        let running = app::start(config(storage, &urls, extra))
            .await
            .expect("gateway starts");
        let client = Client {
            base: running.url(),
            http: http_client(),
        };
        processes.push((running, client));
    }
    processes
}

/// Statuses and positions of `ids`, read over REST from one process.
async fn read_all(client: &Client, token: &str, ids: &[String]) -> Vec<Value> {
    let mut views = Vec::new();
    for id in ids {
        views.push(client.get(token, &format!("/api/v1/messages/{id}")).await.1);
    }
    views
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL and Redis: set TEST_DATABASE_URL and TEST_REDIS_URL"]
async fn three_processes_sharing_two_one_slot_backends_run_two_jobs_at_a_time_and_queue_the_rest() {
    let storage = shared_storage();
    let sims = [
        start_sim(hanging_sim()).await,
        start_sim(hanging_sim()).await,
    ];
    let processes = processes_sharing(&storage, &sims, 3, &[]).await;
    let clients: Vec<&Client> = processes.iter().map(|(_, client)| client).collect();
    let token = clients[0].token("alice").await;
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(clients[n % 3].submit_id(&token, &format!("job {n}")).await);
    }
    // Every job settles as processing or queued with a position (generations hang: nothing
    // moves afterwards).
    let deadline = Instant::now() + DEADLINE;
    let views = loop {
        let views = read_all(clients[1], &token, &ids).await;
        let settled = views.iter().all(|view| {
            view["status"] == "processing"
                || (view["status"] == "queued" && view["queue_position"].is_i64())
        });
        if settled {
            break views;
        }
        assert!(Instant::now() < deadline, "never settled: {views:#?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let states: Vec<(&Value, &Value)> = views
        .iter()
        .map(|view| (&view["status"], &view["queue_position"]))
        .collect();
    let processing: Vec<&Value> = views
        .iter()
        .filter(|view| view["status"] == "processing")
        .collect();
    assert_eq!(processing.len(), 2, "one per backend slot: {states:?}");
    let mut positions: Vec<i64> = views
        .iter()
        .filter_map(|view| view["queue_position"].as_i64())
        .collect();
    positions.sort_unstable();
    assert_eq!(
        positions,
        vec![1, 2, 3, 4],
        "the others wait, exactly placed"
    );
    for sim in &sims {
        assert_eq!(
            sim.stats().max_txt2img_in_flight,
            1,
            "no job waits inside Forge"
        );
    }

    // Let them run: each backend still takes one job at a time, from whichever process.
    let fast = SimConfig {
        latency: Latency::Fixed(Duration::from_millis(100)),
        ..fast_sim()
    };
    for sim in &sims {
        sim.set_config(fast.clone());
    }
    for view in &processing {
        let id = view["id"].as_str().expect("id");
        assert_eq!(clients[2].cancel(&token, id).await.0, 200);
    }
    for id in &ids {
        clients[0]
            .wait_message(&token, id, |m| {
                m["status"] == "complete" || m["status"] == "cancelled"
            })
            .await;
    }
    let completed: u64 = sims.iter().map(|sim| sim.stats().completed).sum();
    assert_eq!(completed, 4);
    for sim in &sims {
        assert_eq!(sim.stats().max_txt2img_in_flight, 1);
    }
    for (running, _) in processes {
        running.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL and Redis: set TEST_DATABASE_URL and TEST_REDIS_URL"]
async fn a_failing_backend_of_two_fails_no_job_and_is_held_off_for_every_process() {
    let storage = shared_storage();
    let failing = SimConfig {
        mode: SimMode::Error500,
        ..fast_sim()
    };
    let sims = [start_sim(failing).await, start_sim(fast_sim()).await];
    let processes = processes_sharing(&storage, &sims, 3, &["--max-pending-per-user", "100"]).await;
    let clients: Vec<&Client> = processes.iter().map(|(_, client)| client).collect();
    let token = clients[0].token("alice").await;
    let mut ids = Vec::new();
    for n in 0..40 {
        ids.push(clients[n % 3].submit_id(&token, &format!("job {n}")).await);
    }
    for id in &ids {
        let done = clients[0]
            .wait_message(&token, id, |m| {
                m["status"] == "complete" || m["status"] == "error"
            })
            .await;
        // Each call the failing backend failed (a 500: nothing generated) went to the other.
        assert_eq!(done["status"], "complete", "{done}");
        assert_eq!(
            done["placeholder"], false,
            "a healthy backend was there: {done}"
        );
    }
    // Its first failure handed the job to the healthy backend and held the failing one off
    // for every process (held off per process, each would try it once).
    assert_eq!(sims[0].stats().failed, 1, "calls the failing backend got");
    assert_eq!(sims[1].stats().completed, 40);
    let failovers: u64 = processes
        .iter()
        .map(|(running, _)| {
            running
                .core()
                .expect("running")
                .metrics
                .forge_failovers
                .get()
        })
        .sum();
    assert_eq!(failovers, 1);
    for (running, _) in processes {
        running.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_refused_before_generating_runs_once_more_on_the_other_backend() {
    let storage = Storage::fresh();
    let failing = SimConfig {
        mode: SimMode::Error500,
        ..fast_sim()
    };
    let sims = [start_sim(failing).await, start_sim(fast_sim()).await];
    let mut processes = processes_sharing(&storage, &sims, 1, &[]).await;
    let (running, client) = processes.pop().expect("one process");
    let token = client.token("alice").await;
    let mut ws = client.ws(&token).await;
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(client.submit_id(&token, &format!("job {n}")).await);
    }
    for id in &ids {
        let done = client
            .wait_message(&token, id, |m| {
                m["status"] == "complete" || m["status"] == "error"
            })
            .await;
        assert_eq!(done["status"], "complete", "{done}");
        assert_eq!(done["placeholder"], false, "{done}");
    }
    let failed_over = sims[0].stats().failed;
    assert!(failed_over >= 1, "the failing backend took a job first");
    assert_eq!(
        running
            .core()
            .expect("running")
            .metrics
            .forge_failovers
            .get(),
        failed_over
    );
    // A job that failed over went back to the queue, then ran on the other backend.
    for id in &ids {
        ws.wait_event("job.complete", id).await;
    }
    let ran = |id: &&String| {
        ws.types_for(id)
            .iter()
            .filter(|kind| *kind == "job.processing")
            .count()
    };
    let moved = ids
        .iter()
        .find(|id| ran(id) == 2)
        .expect("a job that ran twice");
    let types = ws.types_for(moved);
    let back = types
        .iter()
        .position(|t| t == "job.queued")
        .expect("queued");
    assert!(
        types[back + 1..].contains(&"job.processing".to_owned()),
        "{types:?}"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timeout_is_not_run_again_elsewhere() {
    let storage = Storage::fresh();
    let sims = [
        start_sim(hanging_sim()).await,
        start_sim(hanging_sim()).await,
    ];
    let mut processes = processes_sharing(&storage, &sims, 1, &["--forge-timeout", "1s"]).await;
    let (running, client) = processes.pop().expect("one process");
    let token = client.token("alice").await;
    let id = client.submit_id(&token, "hangs").await;
    let done = client
        .wait_message(&token, &id, |m| m["status"] == "error")
        .await;
    assert_eq!(done["error"]["code"], "forge_timeout", "R5.1: {done}");
    let calls: u64 = sims.iter().map(|sim| sim.stats().txt2img_requests).sum();
    assert_eq!(calls, 1, "one call, on one backend");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL and Redis: set TEST_DATABASE_URL and TEST_REDIS_URL"]
async fn two_processes_on_a_redis_cluster_give_exact_positions_and_run_every_job() {
    let cluster = PrivateRedisCluster::start().await;
    let mut storage = shared_storage();
    let prefix = storage.redis.as_ref().expect("redis").1.clone();
    storage.redis = Some((cluster.url.clone(), prefix));
    let sims = [
        start_sim(hanging_sim()).await,
        start_sim(hanging_sim()).await,
    ];
    let processes = processes_sharing(&storage, &sims, 2, &["--max-pending-per-user", "100"]).await;
    let clients: Vec<&Client> = processes.iter().map(|(_, client)| client).collect();
    let token = clients[0].token("alice").await;
    // Two blockers hold the two backends; twenty more queue behind them.
    let mut blockers = Vec::new();
    for (n, client) in clients.iter().enumerate() {
        let id = client.submit_id(&token, &format!("blocker {n}")).await;
        client
            .wait_message(&token, &id, |m| m["status"] == "processing")
            .await;
        blockers.push(id);
    }
    let mut ws = clients[1].ws(&token).await;
    let answers = futures::future::join_all(
        (0..20).map(|n| clients[n % 2].submit(&token, small_prompt(&format!("p{n}")))),
    )
    .await;
    assert_eq!(
        accepted_positions(&answers),
        (1..=20).collect::<Vec<i64>>(),
        "exactly 1..20 across both processes"
    );
    let ids: Vec<String> = answers
        .iter()
        .map(|(_, body)| body["id"].as_str().expect("id").to_owned())
        .collect();
    let fast = SimConfig {
        latency: Latency::Fixed(Duration::ZERO),
        ..fast_sim()
    };
    for sim in &sims {
        sim.set_config(fast.clone());
    }
    for blocker in &blockers {
        assert_eq!(clients[0].cancel(&token, blocker).await.0, 200);
    }
    for id in &ids {
        clients[0]
            .wait_message(&token, id, |m| m["status"] == "complete")
            .await;
        // A session on the other process saw it complete too (events over the cluster).
        ws.wait_event("job.complete", id).await;
    }
    let completed: u64 = sims.iter().map(|sim| sim.stats().completed).sum();
    assert_eq!(completed, 20, "each job ran once");
    for (running, _) in processes {
        running.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL and Redis: set TEST_DATABASE_URL and TEST_REDIS_URL"]
async fn a_process_whose_images_folder_is_not_the_others_refuses_to_start() {
    let storage = shared_storage();
    let sim = start_sim(fast_sim()).await;
    let first = app::start(config(&storage, &[sim.url()], &[]))
        .await
        .expect("the first process starts");
    // The same database and Redis prefix, another folder.
    let elsewhere = Storage {
        dir: tempfile::tempdir().expect("folder"),
        postgres: storage.postgres.clone(),
        redis: storage.redis.clone(),
    };
    let refused = app::start(config(&elsewhere, &[sim.url()], &[]))
        .await
        .err()
        .expect("a process with its own images folder is refused");
    let text = refused.to_string();
    assert!(
        text.contains("IMAGES_DIR") && text.contains("share one images folder"),
        "{text}"
    );
    // Another process on the shared folder starts.
    let second = app::start(config(&storage, &[sim.url()], &[]))
        .await
        .expect("a process on the shared folder starts");
    second.shutdown().await;
    first.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL and Redis: set TEST_DATABASE_URL and TEST_REDIS_URL"]
async fn three_processes_starting_at_once_on_a_fresh_schema_all_start() {
    let storage = shared_storage();
    let sim = start_sim(fast_sim()).await;
    let started =
        futures::future::join_all((0..3).map(|_| app::start(config(&storage, &[sim.url()], &[]))))
            .await;
    let mut running = Vec::new();
    for start in started {
        match start {
            Ok(app) => running.push(app),
            Err(err) => panic!("a process failed to start: {err}"),
        }
    }
    for app in running {
        app.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL and Redis: set TEST_DATABASE_URL and TEST_REDIS_URL"]
async fn a_lone_failing_backend_fails_breaker_failures_jobs_then_serves_the_placeholder_across_processes()
 {
    let storage = shared_storage();
    let failing = SimConfig {
        mode: SimMode::Error500,
        ..fast_sim()
    };
    let sims = [start_sim(failing).await];
    let processes = processes_sharing(&storage, &sims, 3, &["--max-pending-per-user", "100"]).await;
    let clients: Vec<&Client> = processes.iter().map(|(_, client)| client).collect();
    let token = clients[0].token("alice").await;
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(clients[n % 3].submit_id(&token, &format!("job {n}")).await);
    }
    let (mut failed, mut placeholders) = (0, 0);
    for id in &ids {
        let done = clients[0]
            .wait_message(&token, id, |m| {
                m["status"] == "complete" || m["status"] == "error"
            })
            .await;
        if done["status"] == "error" {
            failed += 1;
        } else if done["placeholder"] == true {
            placeholders += 1;
        }
    }
    // BREAKER_FAILURES (5) for the whole deployment, not per process (up to 15).
    assert_eq!(sims[0].stats().failed, 5, "calls the failing backend got");
    assert_eq!((failed, placeholders), (5, 15));
    for (running, _) in processes {
        running.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: set TEST_REDIS_URL"]
async fn two_processes_count_failures_into_one_breaker_and_one_takes_the_trial() {
    use forge_gateway::breakers::redis::RedisBreakers;
    use forge_gateway::breakers::{BreakerSettings, BreakerStore};
    use forge_gateway::domain::breaker::{
        Admission, CallOutcome, Readiness, Transition as BreakerTransition,
    };
    let storage = shared_storage();
    let (url, prefix) = storage.redis.clone().expect("redis");
    let settings = BreakerSettings {
        failures: 5,
        open_for: Duration::from_millis(500),
        trial_lease: Duration::from_secs(30),
    };
    let a = RedisBreakers::connect(&url, &prefix, settings)
        .await
        .expect("a");
    let b = RedisBreakers::connect(&url, &prefix, settings)
        .await
        .expect("b");
    async fn fail(store: &RedisBreakers, n: usize) -> Option<BreakerTransition> {
        let holder = format!("call-{n}");
        let (admission, _) = store.admit("gpu", &holder).await.expect("admit");
        assert_eq!(admission, Admission::Allowed);
        store
            .record("gpu", &holder, admission, CallOutcome::Failure)
            .await
            .expect("record")
    }
    for n in 0..4 {
        let store = if n % 2 == 0 { &a } else { &b };
        assert_eq!(
            fail(store, n).await,
            None,
            "not open after {} failures",
            n + 1
        );
    }
    let opened = fail(&a, 4).await.expect("the fifth failure opens it");
    assert_eq!(opened.to.as_str(), "open");
    assert!(matches!(
        b.readiness("gpu").await.expect("readiness"),
        Readiness::Open(_)
    ));
    assert_eq!(
        b.admit("gpu", "x").await.expect("admit").0,
        Admission::Rejected
    );
    // After the open period, one trial for both.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        a.admit("gpu", "trial-a").await.expect("admit").0,
        Admission::Trial
    );
    assert_eq!(
        b.admit("gpu", "trial-b").await.expect("admit").0,
        Admission::Rejected
    );
    assert_eq!(
        b.readiness("gpu").await.expect("readiness"),
        Readiness::TrialRunning
    );
    let closed = a
        .record("gpu", "trial-a", Admission::Trial, CallOutcome::Success)
        .await
        .expect("record")
        .expect("the trial's success closes it");
    assert_eq!(closed.to.as_str(), "closed");
    assert_eq!(
        b.readiness("gpu").await.expect("readiness"),
        Readiness::Closed
    );
    // A hold-off is seen by both.
    a.hold_off("gpu", Duration::from_secs(5))
        .await
        .expect("hold");
    assert!(matches!(
        b.readiness("gpu").await.expect("readiness"),
        Readiness::HeldOff(_)
    ));
    a.close().await;
    b.close().await;
}
