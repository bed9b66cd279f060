//! Issue 4: exact live queue positions (R1, R6, R10.1), pushed and read back.

use crate::common::*;
use forge_sim::{Latency, SimConfig, SimMode};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

/// Positions of `ids` as REST shows them.
async fn rest_positions(app: &TestApp, token: &str, ids: &[String]) -> Vec<Option<i64>> {
    let mut positions = Vec::new();
    for id in ids {
        let (_, message) = app.get(token, &format!("/api/v1/messages/{id}")).await;
        positions.push(message["queue_position"].as_i64());
    }
    positions
}

/// An app whose one backend hangs, running alice's first job: every job alice submits next
/// waits in the queue. Returns the app, its storage, alice's token and the running job's id.
async fn blocked_queue(extra: &[&str]) -> (TestApp, Storage, String, String) {
    let (app, storage) = TestApp::spawn_with(hanging_sim(), extra).await;
    let token = app.token("alice").await;
    let blocker = app.submit_id(&token, "blocker").await;
    app.wait_message(&token, &blocker, |m| m["status"] == "processing")
        .await;
    (app, storage, token, blocker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_jobs_at_once_get_positions_one_two_three_and_all_complete() {
    let (app, _storage, token, blocker) = blocked_queue(&[]).await;
    let answers = futures::future::join_all(
        (0..3).map(|n| app.submit(&token, small_prompt(&format!("p{n}")))),
    )
    .await;
    let positions = accepted_positions(&answers);
    assert_eq!(positions, [1, 2, 3], "unique positions (R6.1)");
    app.sim.set_mode(SimMode::Normal);
    assert_eq!(app.cancel(&token, &blocker).await.0, 200);
    for (_, body) in &answers {
        let id = body["id"].as_str().expect("id");
        app.wait_message(&token, id, |m| m["status"] == "complete")
            .await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_submissions_get_positions_one_to_two_hundred() {
    let (app, _storage, token, _blocker) = blocked_queue(&["--max-pending-per-user", "1000"]).await;
    let answers = futures::future::join_all(
        (0..200).map(|n| app.submit(&token, small_prompt(&format!("p{n}")))),
    )
    .await;
    let positions = accepted_positions(&answers);
    assert_eq!(
        positions,
        (1..=200).collect::<Vec<i64>>(),
        "exactly 1..200, each once"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_positions_only_move_forward_as_the_queue_moves_and_reload_agrees() {
    let (app, _storage) = TestApp::spawn_with(hanging_sim(), &[]).await;
    let token = app.token("alice").await;
    let mut ws = app.ws(&token).await;
    let blocker = app.submit_id(&token, "blocker").await;
    app.wait_message(&token, &blocker, |m| m["status"] == "processing")
        .await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(app.submit_id(&token, &format!("waiting {n}")).await);
    }
    for (n, id) in ids.iter().enumerate() {
        let queued = ws.wait_event("job.queued", id).await;
        assert_eq!(queued["queue_position"].as_i64(), Some(n as i64 + 1));
    }
    // A page reload (REST) shows the same live positions (R1.2).
    assert_eq!(
        rest_positions(&app, &token, &ids).await,
        [Some(1), Some(2), Some(3), Some(4), Some(5)]
    );
    let reloaded = app.ws(&token).await;
    let snapshot_positions: HashMap<String, i64> = reloaded.snapshot["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| Some((m["id"].as_str()?.to_owned(), m["queue_position"].as_i64()?)))
        .collect();
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(snapshot_positions.get(id), Some(&(n as i64 + 1)));
    }

    // Let the queue move: every pop moves every waiting job down by one (R1.1, R1.3).
    app.sim.set_config(SimConfig {
        latency: Latency::Fixed(Duration::from_millis(150)),
        ..fast_sim()
    });
    assert_eq!(app.cancel(&token, &blocker).await.0, 200);
    let last = ids.last().expect("ids").clone();
    ws.wait_event("job.complete", &last).await;
    for (n, id) in ids.iter().enumerate() {
        // Positions are pushed at most every 200 ms, so a quick queue may skip a step; what
        // a user sees only ever moves forward, from where the job entered.
        let shown = ws.positions_of(id);
        assert_eq!(shown.first(), Some(&(n as i64 + 1)), "job {n}: {shown:?}");
        assert!(
            shown.windows(2).all(|pair| pair[1] < pair[0]),
            "job {n}: a position went back or repeated: {shown:?}"
        );
        let order: Vec<&str> = ws
            .seen
            .iter()
            .filter(|f| f["id"] == id.as_str())
            .map(|f| f["type"].as_str().unwrap_or_default())
            .collect();
        let processing_at = order
            .iter()
            .position(|t| *t == "job.processing")
            .expect("processing");
        assert!(
            order[..processing_at]
                .iter()
                .all(|t| *t == "job.queued" || *t == "job.position"),
            "{order:?}"
        );
        assert!(
            !ws.seen[ws
                .seen
                .iter()
                .position(|f| f["id"] == id.as_str() && f["type"] == "job.processing")
                .expect("processing")..]
                .iter()
                .any(|f| positions_in(f).iter().any(|(about, _)| about == id)),
            "job {n}: a position after it left the queue"
        );
    }
    let metrics = app.metrics().await;
    assert_eq!(metric(&metrics, "forge_gateway_queue_depth"), 0.0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_queued_job_shifts_the_positions_behind_it() {
    let (app, _storage, token, _blocker) = blocked_queue(&[]).await;
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(app.submit_id(&token, &format!("p{n}")).await);
    }
    let mut ws = app.ws(&token).await;
    let cancel = app
        .request(
            reqwest::Method::POST,
            &format!("/api/v1/messages/{}/cancel", ids[1]),
            &token,
        )
        .send()
        .await
        .expect("cancel");
    assert_eq!(cancel.status().as_u16(), 200);
    // Within the push interval the session shows what a reload shows (R1.1, R1.2).
    ws.wait_positions(&[(&ids[0], 1), (&ids[2], 2), (&ids[3], 3)])
        .await;
    assert_eq!(
        rest_positions(&app, &token, &ids).await,
        [Some(1), None, Some(2), Some(3)]
    );
    let (_, cancelled) = app
        .get(&token, &format!("/api/v1/messages/{}", ids[1]))
        .await;
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["queue_position"], Value::Null);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_with_more_waiting_jobs_than_a_frame_holds_sees_them_all_in_turns() {
    let (app, _storage, token, _blocker) = blocked_queue(&[
        "--max-pending-per-user",
        "100",
        "--ws-positions-per-frame",
        "3",
    ])
    .await;
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(app.submit_id(&token, &format!("p{n}")).await);
    }
    let mut ws = app.ws(&token).await;
    // The two at the head leave: all eight others move, and the session is told each of
    // them, three per frame at most, until what it shows is what a reload shows.
    for id in &ids[..2] {
        assert_eq!(app.cancel(&token, id).await.0, 200);
    }
    let expected: Vec<(&str, i64)> = ids[2..]
        .iter()
        .zip(1..)
        .map(|(id, position)| (id.as_str(), position))
        .collect();
    ws.wait_positions(&expected).await;
    assert_eq!(
        rest_positions(&app, &token, &ids[2..]).await,
        (1..=8).map(Some).collect::<Vec<_>>()
    );
    let frames: Vec<usize> = ws
        .seen
        .iter()
        .filter(|frame| frame["type"] == "job.positions" || frame["type"] == "job.position")
        .map(|frame| positions_in(frame).len())
        .collect();
    assert!(
        frames.len() >= 3 && frames.iter().all(|n| *n <= 3),
        "at most 3 positions a frame, in turns: {frames:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_survive_a_restart_in_their_order() {
    let storage = Storage::fresh();
    let app = TestApp::start(&storage, hanging_sim(), &[]).await;
    let token = app.token("alice").await;
    let blocker = app.submit_id(&token, "blocker").await;
    app.wait_message(&token, &blocker, |m| m["status"] == "processing")
        .await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(app.submit_id(&token, &format!("p{n}")).await);
    }
    app.stop().await;
    // The in-process queue is gone; the database is the record it is rebuilt from.
    let app = TestApp::start(&storage, hanging_sim(), &[]).await;
    let token = app.token("alice").await;
    let positions = rest_positions(&app, &token, &ids).await;
    // One of them may already be running on the new process's backend; the rest keep their order.
    let queued: Vec<i64> = positions.iter().flatten().copied().collect();
    assert_eq!(
        queued,
        (1..=queued.len() as i64).collect::<Vec<_>>(),
        "{positions:?}"
    );
    assert!(queued.len() >= 4, "{positions:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_running_at_shutdown_goes_back_to_the_queue_and_runs_after_the_restart() {
    // The grace ends while the job runs: it is interrupted on Forge and queued again, at the
    // head; the next start runs it first, long before STUCK_AFTER (5 minutes) would fail it.
    let storage = Storage::fresh();
    let app = TestApp::start(&storage, hanging_sim(), &["--shutdown-grace", "500ms"]).await;
    let token = app.token("alice").await;
    let running = app.submit_id(&token, "running at shutdown").await;
    app.wait_message(&token, &running, |m| m["status"] == "processing")
        .await;
    let waiting = app.submit_id(&token, "waiting behind it").await;
    let (_, before) = app
        .get(&token, &format!("/api/v1/messages/{running}"))
        .await;
    let sim = app.stop_keeping_sim().await;
    assert_eq!(sim.stats().interrupts, 1, "interrupted on its backend");
    sim.shutdown().await;

    // After the restart it runs before the job that was waiting behind it.
    let app = TestApp::start(&storage, hanging_sim(), &["--shutdown-grace", "500ms"]).await;
    let again = app
        .wait_message(&token, &running, |m| m["status"] == "processing")
        .await;
    assert!(
        again["version"].as_i64() > before["version"].as_i64(),
        "{again}"
    );
    let (_, behind) = app
        .get(&token, &format!("/api/v1/messages/{waiting}"))
        .await;
    assert_eq!(behind["status"], "queued", "{behind}");
    assert_eq!(behind["queue_position"], 1, "{behind}");
    app.stop().await;

    // And it completes (handed back a second time on the way).
    let app = TestApp::start(&storage, fast_sim(), &[]).await;
    for id in [&running, &waiting] {
        let done = app
            .wait_message(&token, id, |m| m["status"] == "complete")
            .await;
        assert_eq!(done["placeholder"], false, "{done}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_keeps_its_lease_for_as_long_as_it_runs() {
    // Its process renews the lease every third of JOB_LEASE: over many leases the run stays
    // the job's current one (a renewal that missed would stop it and hand it back).
    let storage = Storage::fresh();
    let app = TestApp::start(&storage, hanging_sim(), &["--job-lease", "1s"]).await;
    let token = app.token("alice").await;
    let id = app.submit_id(&token, "a long one").await;
    let running = app
        .wait_message(&token, &id, |m| m["status"] == "processing")
        .await;
    // The observation window: three leases.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let (_, still) = app.get(&token, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(still["status"], "processing", "{still}");
    assert_eq!(
        still["version"], running["version"],
        "nothing happened to it: {still}"
    );
    let stats = app.sim.stats();
    assert_eq!((stats.txt2img_requests, stats.interrupts), (1, 0));
    app.stop().await;
}
