//! Issue 17: what keeps a long-lived deployment cheap. With `RETENTION` set, finished messages
//! and their images go away once they are older than the retention (a job still waiting or
//! running is never touched, however old); a metrics scrape counts pending rows only.

use crate::common::*;
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn finished_messages_and_their_images_are_deleted_after_the_retention_and_pending_ones_kept()
{
    let (app, _storage) = TestApp::spawn_with(fast_sim(), &["--retention", "3s"]).await;
    let token = app.token("alice").await;

    let (status, done) = app.submit(&token, small_prompt("kept for 3 s")).await;
    assert_eq!(status, 202, "{done}");
    let done_id = done["id"].as_str().expect("id").to_owned();
    let done = app
        .wait_message(&token, &done_id, |m| m["status"] == "complete")
        .await;
    let image_url = done["image_url"].as_str().expect("image url").to_owned();
    let image = app
        .request(reqwest::Method::GET, &image_url, &token)
        .send()
        .await
        .expect("image");
    assert_eq!(image.status().as_u16(), 200);
    assert_eq!(files_of(&app.data_dir, &done_id), 1, "the image is on disk");

    // A job that runs forever, then one queued behind it and cancelled: the running one
    // changed last before the cancelled one did, so once the cancelled one is gone the
    // running one is older than the retention too.
    app.sim.set_config(hanging_sim());
    let (_, running) = app.submit(&token, small_prompt("runs forever")).await;
    let running_id = running["id"].as_str().expect("id").to_owned();
    app.wait_message(&token, &running_id, |m| m["status"] == "processing")
        .await;
    let (_, cancelled) = app.submit(&token, small_prompt("cancelled")).await;
    let cancelled_id = cancelled["id"].as_str().expect("id").to_owned();
    assert_eq!(app.cancel(&token, &cancelled_id).await.0, 200);

    let deadline = Instant::now() + DEADLINE;
    for id in [&done_id, &cancelled_id] {
        loop {
            let (status, body) = app.get(&token, &format!("/api/v1/messages/{id}")).await;
            if status == 404 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id} was never deleted; last: {body}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let image = app
        .request(reqwest::Method::GET, &image_url, &token)
        .send()
        .await
        .expect("image");
    assert_eq!(
        image.status().as_u16(),
        404,
        "the image outlived its message"
    );

    assert_eq!(
        files_of(&app.data_dir, &done_id),
        0,
        "a file outlived its message"
    );

    let (status, still_running) = app
        .get(&token, &format!("/api/v1/messages/{running_id}"))
        .await;
    assert_eq!(status, 200, "a running job was deleted: {still_running}");
    assert_eq!(still_running["status"], "processing");
    let (_, list) = app.get(&token, "/api/v1/messages").await;
    assert_eq!(listed_prompts(&list), vec!["runs forever"]);
    assert!(
        metric(
            &app.metrics().await,
            "forge_gateway_retention_deleted_total"
        ) >= 2.0
    );
    app.stop().await;
}

/// How many files under `dir` (at any depth) belong to the job `id`.
fn files_of(dir: &std::path::Path, id: &str) -> usize {
    std::fs::read_dir(dir)
        .expect("data dir")
        .map(|entry| entry.expect("entry").path())
        .map(|path| {
            if path.is_dir() {
                files_of(&path, id)
            } else {
                let name = path.file_name().expect("name").to_string_lossy();
                usize::from(name.contains(id))
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_jobs_gauge_counts_pending_messages_and_finished_ones_are_counters() {
    let (app, _storage) = TestApp::spawn().await;
    let token = app.token("alice").await;
    let (_, done) = app.submit(&token, small_prompt("done")).await;
    let done_id = done["id"].as_str().expect("id").to_owned();
    app.wait_message(&token, &done_id, |m| m["status"] == "complete")
        .await;
    app.sim.set_config(hanging_sim());
    let mut ids = Vec::new();
    for n in 0..3 {
        let (status, body) = app.submit(&token, small_prompt(&format!("job {n}"))).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["id"].as_str().expect("id").to_owned());
    }
    app.wait_message(&token, &ids[0], |m| m["status"] == "processing")
        .await;
    let metrics = app.metrics().await;
    assert_eq!(
        metric(&metrics, "forge_gateway_jobs{status=\"queued\"}"),
        2.0
    );
    assert_eq!(
        metric(&metrics, "forge_gateway_jobs{status=\"processing\"}"),
        1.0
    );
    assert!(
        !metrics.contains("forge_gateway_jobs{status=\"complete\"}"),
        "finished rows are not counted at each scrape:\n{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "forge_gateway_jobs_finished_total{status=\"complete\"}"
        ),
        1.0
    );
    app.stop().await;
}
