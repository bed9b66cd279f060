//! The REST side of the public contract (`docs/api.md`): every call with bad input, tokens,
//! idempotency, caps, listings, routes and the dev token endpoint. The WebSocket side is in
//! `websocket.rs`.
//!
//! Past 500 lines on purpose: eight tests, one per part of the REST contract, each a table of
//! requests and the exact answers `docs/api.md` promises; split further, a reader checking the
//! contract against the document would have to hop between files.

use crate::common::*;
use forge_sim::{Latency, SimConfig};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

fn slow_sim() -> SimConfig {
    SimConfig {
        latency: Latency::Fixed(Duration::from_secs(30)),
        ..fast_sim()
    }
}

async fn error_of(answer: reqwest::Response) -> (u16, Value) {
    let status = answer.status().as_u16();
    let body: Value = answer.json().await.expect("errors are JSON");
    assert!(
        body["error"]["code"].is_string() && body["error"]["message"].is_string(),
        "{body}"
    );
    (status, body["error"].clone())
}

fn jwt(secret: &[u8], claims: Value) -> String {
    forge_gateway::http::auth::install_jwt_crypto();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret).expect("key"),
    )
    .expect("token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_validates_every_field() {
    let (app, _storage) = TestApp::spawn().await;
    let token = app.token("alice").await;
    let post = |body: String| {
        app.request(Method::POST, "/api/v1/messages", &token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for (body, status, code, field) in [
        ("not json", 400, "invalid_json", None),
        ("", 400, "invalid_json", None),
        ("[1,2]", 400, "invalid_json", None),
        ("{}", 422, "validation", Some("prompt")),
        (r#"{"prompt": ""}"#, 422, "validation", Some("prompt")),
        (r#"{"prompt": 12}"#, 422, "validation", Some("prompt")),
        (
            r#"{"prompt": "p", "width": 63}"#,
            422,
            "validation",
            Some("width"),
        ),
        (
            r#"{"prompt": "p", "width": 2056}"#,
            422,
            "validation",
            Some("width"),
        ),
        (
            r#"{"prompt": "p", "height": 100}"#,
            422,
            "validation",
            Some("height"),
        ),
        (
            r#"{"prompt": "p", "steps": 0}"#,
            422,
            "validation",
            Some("steps"),
        ),
        (
            r#"{"prompt": "p", "steps": 151}"#,
            422,
            "validation",
            Some("steps"),
        ),
        (
            r#"{"prompt": "p", "cfg_scale": 31}"#,
            422,
            "validation",
            Some("cfg_scale"),
        ),
        (
            r#"{"prompt": "p", "cfg_scale": "7"}"#,
            422,
            "validation",
            Some("cfg_scale"),
        ),
        (
            r#"{"prompt": "p", "seed": -5}"#,
            422,
            "validation",
            Some("seed"),
        ),
        (
            r#"{"prompt": "p", "sampler_name": ""}"#,
            422,
            "validation",
            Some("sampler_name"),
        ),
        (
            r#"{"prompt": "p", "conversation_id": ""}"#,
            422,
            "validation",
            Some("conversation_id"),
        ),
        (
            r#"{"prompt": "p", "data": "x"}"#,
            422,
            "validation",
            Some("data"),
        ),
        (
            r#"{"prompt": "p", "status": "complete"}"#,
            422,
            "validation",
            Some("status"),
        ),
    ] {
        let (got_status, error) = error_of(post(body.to_owned()).await.expect("post")).await;
        assert_eq!(
            (got_status, error["code"].as_str()),
            (status, Some(code)),
            "{body}: {error}"
        );
        assert_eq!(error["field"].as_str(), field, "{body}");
    }
    let long = json!({"prompt": "x".repeat(2001)}).to_string();
    let (status, error) = error_of(post(long).await.expect("post")).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("prompt")));
    let huge = json!({"prompt": "p", "data": {"blob": "x".repeat(70 * 1024)}}).to_string();
    let (status, error) = error_of(post(huge).await.expect("post")).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    let (_, listed) = app.get(&token, "/api/v1/messages").await;
    assert_eq!(
        listed["messages"],
        json!([]),
        "nothing was created by bad input"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_for_signature_expiry_and_owner() {
    // (`secret` is the dev key: a token signed with it is what a dev token is.)
    let (app, _storage) = TestApp::spawn().await;
    let secret = std::fs::read_to_string(app.data_dir.join("dev-jwt-secret")).expect("secret");
    let secret = secret.trim().as_bytes();
    let alice = app.token("alice").await;
    let (_, created) = app.submit(&alice, small_prompt("alice's")).await;
    let id = created["id"].as_str().expect("id").to_owned();
    let far = chrono::Utc::now().timestamp() + 3600;
    let cases = [
        (
            jwt(
                b"some-other-secret-entirely",
                json!({"sub": "alice", "exp": far}),
            ),
            401,
            "unauthorized",
        ),
        (
            jwt(
                secret,
                json!({"sub": "alice", "exp": chrono::Utc::now().timestamp() - 120}),
            ),
            401,
            "token_expired",
        ),
        (jwt(secret, json!({"exp": far})), 401, "unauthorized"),
        // Not valid for another hour (`nbf`).
        (
            jwt(secret, json!({"sub": "alice", "exp": far, "nbf": far})),
            401,
            "unauthorized",
        ),
        // Without `exp` a token would be valid forever.
        (jwt(secret, json!({"sub": "alice"})), 401, "unauthorized"),
        ("garbage".to_owned(), 401, "unauthorized"),
    ];
    for (token, status, code) in cases {
        let (got, error) = error_of(
            app.request(Method::GET, &format!("/api/v1/messages/{id}"), &token)
                .send()
                .await
                .expect("get"),
        )
        .await;
        assert_eq!((got, error["code"].as_str()), (status, Some(code)));
    }
    let (got, _) = error_of(
        app.http
            .get(format!("{}/api/v1/messages", app.base))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(got, 401, "no token");
    // A valid token of another user: 404, as if the message did not exist.
    let mallory = jwt(secret, json!({"sub": "mallory", "exp": far}));
    for (method, path) in [
        (Method::GET, format!("/api/v1/messages/{id}")),
        (Method::PATCH, format!("/api/v1/messages/{id}")),
        (Method::POST, format!("/api/v1/messages/{id}/cancel")),
        (Method::POST, format!("/api/v1/messages/{id}/retry")),
    ] {
        let answer = app
            .request(method.clone(), &path, &mallory)
            .json(&json!({"data": {"x": 1}}))
            .send()
            .await
            .expect("call");
        let (status, error) = error_of(answer).await;
        assert_eq!(
            (status, error["code"].as_str()),
            (404, Some("not_found")),
            "{method} {path}"
        );
    }
    // The WebSocket refuses bad tokens before the upgrade.
    let url = format!("{}/ws?token=garbage", app.base.replacen("http", "ws", 1));
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
    let url = format!("{}/ws", app.base.replacen("http", "ws", 1));
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_returns_the_first_answer_again() {
    let (app, _storage) = TestApp::spawn_with(slow_sim(), &[]).await;
    let token = app.token("alice").await;
    let post = || {
        app.request(Method::POST, "/api/v1/messages", &token)
            .header("idempotency-key", "k-1")
            .json(&small_prompt("once"))
            .send()
    };
    let (first, second) = tokio::join!(post(), post());
    let first: Value = first.expect("first").json().await.expect("json");
    let second: Value = second.expect("second").json().await.expect("json");
    assert_eq!(first["id"], second["id"]);
    let third: Value = post().await.expect("third").json().await.expect("json");
    assert_eq!(third["id"], first["id"]);
    let (_, listed) = app.get(&token, "/api/v1/messages").await;
    assert_eq!(
        listed["messages"].as_array().expect("list").len(),
        1,
        "one message however often it is sent"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_is_capped_at_max_pending_per_user() {
    let (app, _storage) = TestApp::spawn_with(slow_sim(), &["--max-pending-per-user", "3"]).await;
    let alice = app.token("alice").await;
    let bob = app.token("bob").await;
    // Concurrent submissions cannot overshoot the cap.
    let answers = futures::future::join_all(
        (0..6).map(|n| app.submit(&alice, small_prompt(&format!("p{n}")))),
    )
    .await;
    let accepted: Vec<&Value> = answers
        .iter()
        .filter(|(status, _)| *status == 202)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(accepted.len(), 3, "{answers:?}");
    let refused = answers
        .iter()
        .find(|(status, _)| *status == 429)
        .expect("a 429");
    assert_eq!(refused.1["error"]["code"], "too_many_pending");
    assert_eq!(
        refused.1["error"]["message"],
        "Aynı anda en fazla 3 bekleyen isteğiniz olabilir. Lütfen mevcut isteklerinizin tamamlanmasını bekleyin."
    );
    assert_eq!(app.submit(&bob, small_prompt("bob is fine")).await.0, 202);
    let id = accepted[2]["id"].as_str().expect("id");
    assert_eq!(app.cancel(&alice, id).await.0, 200);
    assert_eq!(app.submit(&alice, small_prompt("fits again")).await.0, 202);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_filters_pages_and_validates() {
    let (app, _storage) = TestApp::spawn_with(slow_sim(), &[]).await;
    let token = app.token("alice").await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let conversation = if n % 2 == 0 { "even" } else { "odd" };
        let (_, created) = app.submit(&token, json!({"prompt": format!("p{n}"), "width": 64, "height": 64, "conversation_id": conversation})).await;
        ids.push(created["id"].as_str().expect("id").to_owned());
    }
    let (_, page) = app.get(&token, "/api/v1/messages?limit=2").await;
    let first: Vec<&str> = page["messages"]
        .as_array()
        .expect("list")
        .iter()
        .map(|m| m["id"].as_str().expect("id"))
        .collect();
    assert_eq!(first, [ids[4].as_str(), ids[3].as_str()], "newest first");
    let (_, next) = app
        .get(
            &token,
            &format!("/api/v1/messages?limit=2&before={}", ids[3]),
        )
        .await;
    let second: Vec<&str> = next["messages"]
        .as_array()
        .expect("list")
        .iter()
        .map(|m| m["id"].as_str().expect("id"))
        .collect();
    assert_eq!(second, [ids[2].as_str(), ids[1].as_str()]);
    let (_, odd) = app
        .get(&token, "/api/v1/messages?conversation_id=odd")
        .await;
    assert_eq!(odd["messages"].as_array().expect("list").len(), 2);
    let (_, pending) = app.get(&token, "/api/v1/messages?status=pending").await;
    let pending = pending["messages"].as_array().expect("list");
    assert_eq!(pending.len(), 5);
    let positions: Vec<i64> = pending
        .iter()
        .filter_map(|m| m["queue_position"].as_i64())
        .collect();
    assert_eq!(
        positions,
        [4, 3, 2, 1],
        "live positions, newest first; the oldest is processing"
    );
    for query in [
        "status=done",
        "status=",
        "status=queued,",
        "limit=0",
        "limit=201",
        "limit=x",
        "before=nope",
        "conversation_id=",
    ] {
        let (status, body) = app.get(&token, &format!("/api/v1/messages?{query}")).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (422, Some("validation")),
            "{query}"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_retry_and_patch_answer_as_documented() {
    // A 10-minute lease: no lease renewal comes before the deadline below, so only the cancel
    // itself can stop the run.
    let (app, _storage) = TestApp::spawn_with(slow_sim(), &["--job-lease", "10m"]).await;
    let token = app.token("alice").await;
    let mut ws = app.ws(&token).await;
    let (_, running) = app.submit(&token, small_prompt("running")).await;
    let (_, queued) = app.submit(&token, small_prompt("queued")).await;
    let (running, queued) = (
        running["id"].as_str().expect("id").to_owned(),
        queued["id"].as_str().expect("id").to_owned(),
    );
    app.wait_message(&token, &running, |m| m["status"] == "processing")
        .await;

    let answer = app
        .request(
            Method::POST,
            &format!("/api/v1/messages/{queued}/retry"),
            &token,
        )
        .send()
        .await
        .expect("retry");
    assert_eq!(
        error_of(answer).await.0,
        409,
        "a pending message cannot be retried"
    );
    let (status, cancelled) = app.cancel(&token, &queued).await;
    assert_eq!(status, 200);
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["error"]["code"], "cancelled");
    ws.wait_event("job.cancelled", &queued).await;
    // Cancelling a running job interrupts it on Forge.
    assert_eq!(app.cancel(&token, &running).await.0, 200);
    let deadline = std::time::Instant::now() + DEADLINE;
    while app.sim.stats().interrupts == 0 {
        assert!(std::time::Instant::now() < deadline, "no interrupt");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answer = app
        .request(
            Method::POST,
            &format!("/api/v1/messages/{queued}/cancel"),
            &token,
        )
        .send()
        .await
        .expect("cancel");
    let (status, error) = error_of(answer).await;
    assert_eq!((status, error["code"].as_str()), (409, Some("conflict")));

    let patch = |body: &str| {
        app.request(Method::PATCH, &format!("/api/v1/messages/{queued}"), &token)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
    };
    assert_eq!(error_of(patch("{").await.expect("patch")).await.0, 400);
    assert_eq!(
        error_of(patch(r#"{"data": 5}"#).await.expect("patch"))
            .await
            .0,
        422
    );
    let merged: Value = patch(r#"{"data": {"a": {"b": 1}}}"#)
        .await
        .expect("patch")
        .json()
        .await
        .expect("json");
    assert_eq!(merged["data"], json!({"a": {"b": 1}}));
    let updated = ws.wait_event("message.updated", &queued).await;
    assert_eq!(updated["data"], json!({"a": {"b": 1}}));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_methods_images_admin_and_openapi() {
    let (app, _storage) = TestApp::spawn().await;
    let token = app.token("alice").await;
    let call = |method: Method, path: &str| {
        app.http
            .request(method, format!("{}{}", app.base, path))
            .send()
    };
    assert_eq!(
        error_of(call(Method::GET, "/nope").await.expect("call")).await,
        (
            404,
            json!({"code": "route_not_found", "message": "İstenen adres bulunamadı.", "field": null})
        )
    );
    assert_eq!(
        error_of(
            call(Method::DELETE, "/api/v1/messages")
                .await
                .expect("call")
        )
        .await
        .0,
        405
    );
    assert_eq!(
        error_of(call(Method::PUT, "/healthz").await.expect("call"))
            .await
            .0,
        405
    );
    let answer = call(Method::DELETE, "/api/v1/messages/x")
        .await
        .expect("call");
    assert_eq!(
        answer.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("GET, HEAD, PATCH"),
        "405 names the methods (RFC 9110)"
    );
    for path in [
        "/images/../dev-jwt-secret",
        "/images/..%2Fdev-jwt-secret",
        "/images/%2e%2e%2fdev-jwt-secret",
        "/images/dev-jwt-secret",
        "/images/x.png",
    ] {
        let answer = call(Method::GET, path).await.expect("image");
        assert_eq!(answer.status().as_u16(), 404, "{path}");
    }
    assert_eq!(
        error_of(call(Method::GET, "/admin/metrics").await.expect("metrics"))
            .await
            .0,
        401
    );
    let answer = app
        .request(Method::GET, "/admin/metrics", &token)
        .send()
        .await
        .expect("metrics");
    assert_eq!(
        error_of(answer).await.0,
        403,
        "a user token is not the admin token"
    );
    let metrics = app.metrics().await;
    for name in [
        "forge_gateway_queue_depth",
        "forge_gateway_jobs{status=\"queued\"}",
        "forge_gateway_ws_sessions_open",
        "forge_gateway_breaker_state{backend=",
        "forge_gateway_store_conflict_retries_total",
        "forge_gateway_job_duration_seconds_bucket",
        "forge_gateway_stuck_jobs_marked_total",
        "forge_gateway_ws_events_dropped_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    let doc: Value = call(Method::GET, "/openapi.json")
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with('3')));
    for path in [
        "/api/v1/messages",
        "/api/v1/messages/{id}",
        "/api/v1/messages/{id}/cancel",
        "/api/v1/messages/{id}/retry",
        "/readyz",
    ] {
        assert!(doc["paths"][path].is_object(), "{path}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_off_hides_the_token_endpoint() {
    let storage = Storage::fresh();
    let sim = start_sim(fast_sim()).await;
    let mut config = config(
        &storage,
        &[sim.url()],
        &[
            "--auth-jwt-secret",
            "a-real-secret-of-at-least-32-bytes",
            "--admin-token",
            "admin-token-123",
        ],
    );
    config.dev_mode = Some(false);
    let app = forge_gateway::app::start(config).await.expect("starts");
    let answer = http_client()
        .post(format!("{}/api/v1/dev/token", app.url()))
        .json(&json!({"user": "x"}))
        .send()
        .await
        .expect("call");
    assert_eq!(answer.status().as_u16(), 404);
    let doc: Value = reqwest::get(format!("{}/openapi.json", app.url()))
        .await
        .expect("doc")
        .json()
        .await
        .expect("json");
    assert!(doc["paths"].get("/api/v1/dev/token").is_none());
    let metrics = http_client()
        .get(format!("{}/admin/metrics", app.url()))
        .bearer_auth("admin-token-123")
        .send()
        .await
        .expect("metrics");
    assert_eq!(metrics.status().as_u16(), 200);
    app.shutdown().await;
    sim.shutdown().await;
}
