//! The WebSocket of the public contract (`docs/api.md`): bad frames answered and survived,
//! heartbeats, the snapshot of a late client, many sessions at once, and a graceful shutdown.

use crate::common::*;
use forge_sim::{Latency, SimConfig};
use futures::StreamExt;
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn slow_sim() -> SimConfig {
    SimConfig {
        latency: Latency::Fixed(Duration::from_secs(30)),
        ..fast_sim()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_error_events_and_the_connection_stays() {
    let (app, _storage) = TestApp::spawn_with(slow_sim(), &[]).await;
    let token = app.token("alice").await;
    let bob = app.token("bob").await;
    let (_, bobs) = app.submit(&bob, small_prompt("bob's")).await;
    let mut ws = app.ws(&token).await;
    let frames = [
        (WsMessage::text("not json"), "invalid_json"),
        (WsMessage::text("[1]"), "invalid_json"),
        (WsMessage::text(r#"{"no":"type"}"#), "validation"),
        (
            WsMessage::text(r#"{"type":"launch_missiles"}"#),
            "validation",
        ),
        (WsMessage::text(r#"{"type":"cancel"}"#), "validation"),
        (
            WsMessage::text(r#"{"type":"update_message","id":"x","data":{}}"#),
            "not_found",
        ),
        (
            WsMessage::text(json!({"type": "cancel", "id": bobs["id"]}).to_string()),
            "not_found",
        ),
        (
            WsMessage::text(
                json!({"type": "update_message", "id": bobs["id"], "data": 1}).to_string(),
            ),
            "validation",
        ),
        (WsMessage::binary(vec![0u8, 159, 146, 150]), "invalid_json"),
        (
            WsMessage::text(format!(
                "{{\"type\":\"ping\",\"pad\":\"{}\"}}",
                "x".repeat(100 * 1024)
            )),
            "payload_too_large",
        ),
    ];
    for (frame, code) in frames {
        let shown = format!("{frame:?}").chars().take(80).collect::<String>();
        ws.send_raw(frame).await;
        let error = ws.wait_for("error", |f| f["type"] == "error").await;
        assert_eq!(error["error"]["code"], code, "{shown}");
        ws.seen.clear();
        ws.send(json!({"type": "ping"})).await;
        ws.wait_for("pong", |f| f["type"] == "pong").await;
    }
    ws.send(json!({"type": "resync"})).await;
    let snapshot = ws.wait_for("snapshot", |f| f["type"] == "snapshot").await;
    assert_eq!(
        snapshot["messages"],
        json!([]),
        "alice has nothing pending; bob's job is not hers"
    );
    let (_, still) = app
        .get(
            &bob,
            &format!("/api/v1/messages/{}", bobs["id"].as_str().expect("id")),
        )
        .await;
    assert_ne!(
        still["status"], "cancelled",
        "alice could not cancel bob's job"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_dropped_and_a_live_one_is_kept() {
    let (app, _storage) = TestApp::spawn_with(
        slow_sim(),
        &["--ws-heartbeat", "100ms", "--ws-idle-timeout", "400ms"],
    )
    .await;
    let token = app.token("alice").await;
    let url = format!("{}/ws?token={}", app.base.replacen("http", "ws", 1), token);
    // Silent: never reads, so never answers the server's pings.
    let (mut silent, _) = tokio_tungstenite::connect_async(url.clone())
        .await
        .expect("connect");
    // Live: reads continuously, so the client library answers every ping.
    let mut live = app.ws(&token).await;
    let live_until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < live_until {
        let _ = live.next_within(Duration::from_millis(100)).await;
    }
    live.send(json!({"type": "ping"})).await;
    live.wait_for("pong", |f| f["type"] == "pong").await;
    let mut pings = 0;
    let closed = tokio::time::timeout(DEADLINE, async {
        while let Some(frame) = silent.next().await {
            match frame {
                Ok(WsMessage::Ping(_)) => pings += 1,
                Ok(WsMessage::Close(_)) | Err(_) => return true,
                Ok(_) => {}
            }
        }
        true
    })
    .await
    .expect("the silent client is dropped");
    assert!(closed);
    assert!(pings >= 2, "the server pinged before giving up ({pings})");
    let _ = silent.close(None).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_client_gets_every_pending_job_in_its_snapshot() {
    let (app, _storage) = TestApp::spawn_with(slow_sim(), &[]).await;
    let token = app.token("alice").await;
    let mut ids = Vec::new();
    for n in 0..4 {
        let (_, created) = app.submit(&token, small_prompt(&format!("p{n}"))).await;
        ids.push(created["id"].as_str().expect("id").to_owned());
    }
    app.wait_message(&token, &ids[0], |m| m["status"] == "processing")
        .await;
    let ws = app.ws(&token).await;
    let snapshot = ws.snapshot["messages"]
        .as_array()
        .expect("messages")
        .clone();
    let got: Vec<(&str, &str, Option<i64>)> = snapshot
        .iter()
        .map(|m| {
            (
                m["id"].as_str().expect("id"),
                m["status"].as_str().expect("status"),
                m["queue_position"].as_i64(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (ids[0].as_str(), "processing", None),
            (ids[1].as_str(), "queued", Some(1)),
            (ids[2].as_str(), "queued", Some(2)),
            (ids[3].as_str(), "queued", Some(3))
        ]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_sessions_all_get_hello_and_snapshot() {
    let (app, _storage) = TestApp::spawn_with(slow_sim(), &[]).await;
    // 125 users with 8 sessions each: MAX_SESSIONS_PER_USER's default.
    let mut tokens = Vec::new();
    for n in 0..125 {
        tokens.push(app.token(&format!("user{n}")).await);
    }
    let sessions = futures::future::join_all(
        (0..1000).map(|n| WsClient::connect(&app.base, &tokens[n % tokens.len()])),
    )
    .await;
    assert_eq!(sessions.len(), 1000);
    let metrics = app.metrics().await;
    assert_eq!(metric(&metrics, "forge_gateway_ws_sessions_open"), 1000.0);
    drop(sessions);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_process_closes_its_sockets_with_1001_at_sigterm() {
    let sim = start_sim(fast_sim()).await;
    let storage = Storage::sqlite();
    let gateway = GatewayProcess::start(&storage.process_env(sim.url())).await;
    let client = gateway.client();
    let token = client.token("alice").await;
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(client.ws(&token).await);
    }
    let status = gateway.terminate().await;
    assert!(status.success(), "clean exit: {status}");
    for mut ws in sockets {
        while ws.next_within(DEADLINE).await.is_some() {}
        let (code, reason) = ws.closed.clone().expect("a close frame");
        assert_eq!(
            code, 1001,
            "a shutdown asks the client to reconnect: {reason}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sessions_and_leaves_queued_jobs_queued() {
    let sim = start_sim(SimConfig {
        latency: Latency::Fixed(Duration::from_secs(1)),
        ..fast_sim()
    })
    .await;
    let storage = Storage::sqlite();
    let mut env = storage.process_env(sim.url());
    env.push(("SHUTDOWN_GRACE", "5s".to_owned()));
    let gateway = GatewayProcess::start(&env).await;
    let client = gateway.client();
    let token = client.token("alice").await;
    let mut ws = client.ws(&token).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let (_, created) = client.submit(&token, small_prompt(&format!("p{n}"))).await;
        ids.push(created["id"].as_str().expect("id").to_owned());
    }
    client
        .wait_message(&token, &ids[0], |m| m["status"] == "processing")
        .await;
    let status = gateway.terminate().await;
    assert!(status.success(), "clean exit: {status}");
    let closed = tokio::time::timeout(DEADLINE, async {
        while ws.next_within(DEADLINE).await.is_some() {}
    })
    .await;
    assert!(closed.is_ok(), "the session was closed");
    let gateway = GatewayProcess::start(&env).await;
    let client = gateway.client();
    let token = client.token("alice").await;
    let (_, first) = client
        .get(&token, &format!("/api/v1/messages/{}", ids[0]))
        .await;
    assert_eq!(
        first["status"], "complete",
        "the running job finished within the grace period"
    );
    for id in &ids[1..] {
        let done = client
            .wait_message(&token, id, |m| {
                m["status"] == "complete" || m["status"] == "error"
            })
            .await;
        assert_eq!(
            done["status"], "complete",
            "queued jobs stayed queued and ran after the restart"
        );
    }
    gateway.kill().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_frame_kind_takes_the_command_rate() {
    // Binary frames (and pings) are frames a user sends: a flood of them is held to
    // WS_COMMANDS_PER_SECOND like text, not answered as fast as it arrives.
    let (app, _storage) = TestApp::spawn_with(fast_sim(), &["--ws-commands-per-second", "5"]).await;
    let alice = app.token("alice").await;
    let mut ws = app.ws(&alice).await;
    for _ in 0..200 {
        ws.send_raw(WsMessage::Binary(vec![0u8].into())).await;
    }
    ws.send_raw(WsMessage::Ping(Default::default())).await;
    let started = std::time::Instant::now();
    while ws.next_within(Duration::from_millis(700)).await.is_some() {}
    let count = |code: &str| {
        ws.seen
            .iter()
            .filter(|f| f["type"] == "error" && f["error"]["code"] == code)
            .count()
    };
    let (answered, limited) = (count("invalid_json"), count("rate_limited"));
    // The burst of 10, then 5 a second while the frames were read.
    let allowed = 10 + 5 * (started.elapsed().as_secs() as usize + 1);
    assert!(
        answered <= allowed,
        "{answered} binary frames answered in {:?}",
        started.elapsed()
    );
    assert!(limited > 0, "the flood was never told it is limited");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_ends_when_its_token_expires() {
    let (app, _storage) = TestApp::spawn().await;
    let secret = std::fs::read_to_string(app.data_dir.join("dev-jwt-secret")).expect("secret");
    forge_gateway::http::auth::install_jwt_crypto();
    let now = chrono::Utc::now().timestamp();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "alice", "exp": now + 1}),
        &jsonwebtoken::EncodingKey::from_secret(secret.trim().as_bytes()).expect("key"),
    )
    .expect("token");
    let mut ws = app.ws(&token).await;
    // Valid (with the 5 s leeway) for a few seconds: the socket serves.
    ws.send(json!({"type": "ping"})).await;
    ws.wait_for("pong", |f| f["type"] == "pong").await;
    let opened = std::time::Instant::now();
    while ws.next_within(Duration::from_secs(15)).await.is_some() {}
    assert_eq!(
        ws.closed,
        Some((4001, "token expired".to_owned())),
        "closed after {:?}",
        opened.elapsed()
    );
    assert!(
        opened.elapsed() < Duration::from_secs(9),
        "closed {:?} after opening, the token being refused 7 s after at most",
        opened.elapsed()
    );
    let (status, _) = app.get(&token, "/api/v1/messages").await;
    assert_eq!(status, 401, "REST agrees the token is expired");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clean_close_loses_no_update_sent_before_it() {
    // 20 sockets of one user each send 25 update_message frames on one message and close
    // normally right after the last send: every update reaches the message.
    let (app, _storage) = TestApp::spawn_with(
        fast_sim(),
        &[
            "--max-sessions-per-user",
            "32",
            "--ws-commands-per-second",
            "1000",
        ],
    )
    .await;
    let token = app.token("alice").await;
    let id = app.submit_id(&token, "edited").await;
    app.wait_message(&token, &id, |m| m["status"] == "complete")
        .await;
    let sockets = (0..20).map(|socket| {
        let (base, token, id) = (app.base.clone(), token.clone(), id.clone());
        async move {
            let mut ws = WsClient::connect(&base, &token).await;
            for n in 0..25 {
                ws.send(json!({"type": "update_message", "id": id, "data": {format!("s{socket}"): {format!("n{n}"): n}}}))
                    .await;
            }
            ws.close().await;
        }
    });
    futures::future::join_all(sockets).await;
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let (_, message) = app.get(&token, &format!("/api/v1/messages/{id}")).await;
        let applied: usize = message["data"]
            .as_object()
            .map(|data| {
                data.values()
                    .filter_map(|socket| socket.as_object())
                    .map(|updates| updates.len())
                    .sum()
            })
            .unwrap_or(0);
        if applied == 500 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{applied} of 500 updates reached the message"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_resent_with_its_ref_is_applied_once_and_acknowledged_again() {
    let (app, _storage) = TestApp::spawn().await;
    let token = app.token("alice").await;
    let id = app.submit_id(&token, "edited").await;
    app.wait_message(&token, &id, |m| m["status"] == "complete")
        .await;
    let mut ws = app.ws(&token).await;
    let write = json!({"type": "update_message", "id": id, "data": {"liked": true}, "ref": "r-1"});
    ws.send(write.clone()).await;
    let first = ws
        .wait_for("the update's acknowledgement", |f| f["ref"] == "r-1")
        .await;
    assert_eq!(first["type"], "message.updated", "{first}");
    // Sent again (as after a lost connection), on another socket: acknowledged there, not
    // applied again.
    let mut again = app.ws(&token).await;
    again.send(write).await;
    let second = again
        .wait_for("the resend's acknowledgement", |f| f["ref"] == "r-1")
        .await;
    assert_eq!(second["type"], "message.updated", "{second}");
    assert_eq!(
        second["version"], first["version"],
        "applied once: {second}"
    );
    let (_, message) = app.get(&token, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(message["version"], first["version"]);
    // A refused write echoes its ref; so does a bad one on an unknown message.
    again
        .send(json!({"type": "update_message", "id": id, "data": "not an object", "ref": "r-2"}))
        .await;
    let refused = again.wait_for("the refusal", |f| f["ref"] == "r-2").await;
    assert_eq!(refused["type"], "error", "{refused}");
    again
        .send(json!({"type": "update_message", "id": id, "data": {}, "ref": "x".repeat(65)}))
        .await;
    let bad_ref = again
        .wait_for("a refused ref", |f| f["error"]["field"] == "ref")
        .await;
    assert_eq!(bad_ref["error"]["code"], "validation", "{bad_ref}");
    assert_eq!(
        bad_ref["id"],
        id.as_str(),
        "a failed command names its id: {bad_ref}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_and_snapshot_come_first_even_when_commands_arrive_at_once() {
    use futures::SinkExt;
    let (app, _storage) = TestApp::spawn().await;
    let token = app.token("alice").await;
    // A few queued messages make the snapshot's database read take a moment.
    for n in 0..5 {
        app.submit_id(&token, &format!("waiting {n}")).await;
    }
    for attempt in 0..10 {
        let url = format!("{}/ws?token={token}", app.base.replacen("http", "ws", 1));
        let (mut socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connects");
        // Sent before anything is read: the server must still greet first.
        for command in [
            r#"{"type":"ping"}"#,
            r#"{"type":"teleport"}"#,
            r#"{"type":"ping"}"#,
        ] {
            socket
                .send(WsMessage::Text(command.into()))
                .await
                .expect("sent");
        }
        let mut types = Vec::new();
        while types.len() < 5 {
            let frame = tokio::time::timeout(DEADLINE, socket.next())
                .await
                .expect("a frame in time")
                .expect("open")
                .expect("a frame");
            if let WsMessage::Text(text) = frame {
                let frame: serde_json::Value = serde_json::from_str(text.as_str()).expect("JSON");
                let kind = frame["type"].as_str().unwrap_or_default();
                // Job events and positions may come anywhere after the snapshot.
                if ["hello", "snapshot", "pong", "error"].contains(&kind) {
                    types.push(kind.to_owned());
                }
            }
        }
        assert_eq!(
            types,
            ["hello", "snapshot", "pong", "error", "pong"],
            "connection {attempt}"
        );
    }
    app.stop().await;
}
