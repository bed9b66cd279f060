//! Several processes listing the same Forge backends (issue 23): a backend's slots are counted
//! across every process, so jobs wait in the queue, with exact positions, not inside Forge.
//! Ignored without `TEST_DATABASE_URL` and `TEST_REDIS_URL` (CI sets both).

use crate::common::*;
use forge_gateway::app::{self, RunningApp};
use forge_sim::{Latency, SimConfig, SimServer};
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
