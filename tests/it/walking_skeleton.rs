//! Issue 2: one image request end to end on the embedded default, over HTTP and WebSocket.

use crate::common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_goes_queued_processing_complete_with_a_png_of_the_requested_size() {
    let (app, _storage) = TestApp::spawn().await;
    let token = app.token("alice").await;
    let mut ws = app.ws(&token).await;
    assert_eq!(ws.snapshot["messages"], Value::Array(vec![]));

    let (status, created) = app
        .submit(
            &token,
            serde_json::json!({"prompt": "a red fox", "width": 128, "height": 96, "steps": 4}),
        )
        .await;
    assert_eq!(status, 202, "{created}");
    assert_eq!(created["status"], "queued");
    let id = created["id"].as_str().expect("id").to_owned();

    let queued = ws.wait_event("job.queued", &id).await;
    assert!(queued["queue_position"].as_u64().is_some(), "{queued}");
    ws.wait_event("job.processing", &id).await;
    let complete = ws.wait_event("job.complete", &id).await;
    assert_eq!(complete["placeholder"], false);
    let types: Vec<String> = ws
        .types_for(&id)
        .into_iter()
        .filter(|t| t != "job.progress")
        .collect();
    assert_eq!(types, ["job.queued", "job.processing", "job.complete"]);

    let seqs: Vec<u64> = ws
        .seen
        .iter()
        .map(|frame| frame["seq"].as_u64().expect("seq"))
        .collect();
    assert!(
        seqs.windows(2).all(|pair| pair[0] < pair[1]),
        "seq increases: {seqs:?}"
    );
    let versions: Vec<i64> = ws
        .seen
        .iter()
        .filter(|f| f["id"] == id.as_str())
        .filter_map(|f| f["version"].as_i64())
        .collect();
    assert!(
        versions.windows(2).all(|pair| pair[0] < pair[1]),
        "versions increase: {versions:?}"
    );

    let image_url = complete["image_url"].as_str().expect("image url");
    let png = app
        .http
        .get(format!("{}{}", app.base, image_url))
        .send()
        .await
        .expect("image")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(png_size(&png), (128, 96));

    let (status, stored) = app.get(&token, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(stored["status"], "complete");
    assert_eq!(stored["image_url"], image_url);
    assert_eq!(stored["progress"], 100);
    assert_eq!(stored["queue_position"], Value::Null);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_survive_a_restart_with_every_field() {
    let storage = Storage::fresh();
    let app = TestApp::start(&storage, fast_sim(), &[]).await;
    let token = app.token("bob").await;
    let (_, created) = app.submit(&token, serde_json::json!({"prompt": "a boat", "width": 64, "height": 64, "conversation_id": "c-1", "data": {"note": {"a": 1}}})).await;
    let id = created["id"].as_str().expect("id").to_owned();
    let before = app
        .wait_message(&token, &id, |m| m["status"] == "complete")
        .await;
    app.stop().await;

    let app = TestApp::start(&storage, fast_sim(), &[]).await;
    let token = app.token("bob").await;
    let (status, listed) = app.get(&token, "/api/v1/messages?status=complete").await;
    assert_eq!(status, 200);
    let after = listed["messages"]
        .as_array()
        .expect("list")
        .iter()
        .find(|m| m["id"] == id.as_str())
        .cloned()
        .expect("still there");
    assert_eq!(after, before, "every field is as it was");
    assert_eq!(after["data"], serde_json::json!({"note": {"a": 1}}));
    assert_eq!(after["conversation_id"], "c-1");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_never_sees_another_users_messages_or_events() {
    let (app, _storage) = TestApp::spawn().await;
    let alice = app.token("alice").await;
    let bob = app.token("bob").await;
    let mut bob_ws = app.ws(&bob).await;
    let (_, created) = app.submit(&alice, small_prompt("alice's secret")).await;
    let id = created["id"].as_str().expect("id").to_owned();
    app.wait_message(&alice, &id, |m| m["status"] == "complete")
        .await;

    let (status, body) = app.get(&bob, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    let (_, listed) = app.get(&bob, "/api/v1/messages").await;
    assert_eq!(listed["messages"], Value::Array(vec![]));
    assert_eq!(app.cancel(&bob, &id).await.0, 404);

    // Bob's socket stays silent about Alice's job: a ping proves it is alive and in order.
    bob_ws.send(serde_json::json!({"type": "ping"})).await;
    let pong = bob_ws.wait_for("pong", |f| f["type"] == "pong").await;
    assert!(pong["seq"].as_u64().is_some());
    assert!(
        bob_ws.seen.iter().all(|frame| frame["id"] != id.as_str()),
        "bob saw alice's events: {:?}",
        bob_ws.seen
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_unknown_routes() {
    let (app, _storage) = TestApp::spawn().await;
    let get = |path: &str| app.http.get(format!("{}{}", app.base, path)).send();
    assert_eq!(
        get("/healthz").await.expect("healthz").status().as_u16(),
        200
    );
    assert_eq!(get("/readyz").await.expect("readyz").status().as_u16(), 200);
    let missing = get("/no/such/route").await.expect("404");
    assert_eq!(missing.status().as_u16(), 404);
    let body: Value = missing.json().await.expect("json");
    assert_eq!(body["error"]["code"], "route_not_found");
    let unauthorized = get("/api/v1/messages").await.expect("401");
    assert_eq!(unauthorized.status().as_u16(), 401);
    app.stop().await;
}
