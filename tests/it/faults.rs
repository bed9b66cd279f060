//! Issue 10: faults, bad input and restarts: nothing lost, nothing leaks.

use crate::common::*;
use forge_sim::{Latency, SimConfig};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const R9_1: &str = "Forge API bağlantı hatası. Lütfen sistem yöneticisine bildirin.";
const R9_4: &str = "Bilinmeyen bir hata oluştu. Lütfen tekrar deneyin.";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_jobs_at_a_thirty_percent_failure_rate_all_end_correctly() {
    let flaky = SimConfig {
        latency: Latency::Fixed(Duration::ZERO),
        fail_rate: 0.3,
        seed: 7,
        ..fast_sim()
    };
    let (app, _storage) = TestApp::spawn_with(
        flaky,
        &[
            "--breaker-failures",
            "3",
            "--breaker-open-for",
            "200ms",
            "--max-pending-per-user",
            "1000",
        ],
    )
    .await;
    let token = app.token("alice").await;
    let mut ws = app.ws(&token).await;
    let answers = futures::future::join_all(
        (0..500).map(|n| app.submit(&token, small_prompt(&format!("job {n}")))),
    )
    .await;
    let ids: Vec<String> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 202, "{body}");
            body["id"].as_str().expect("id").to_owned()
        })
        .collect();
    let mut ends: HashMap<String, Value> = HashMap::new();
    let mut resynced = false;
    while ends.len() < ids.len() && !resynced {
        let frame = ws
            .next()
            .await
            .unwrap_or_else(|| panic!("events stopped with {} of 500 finished", ends.len()));
        if frame["type"] == "resync" {
            // The client fell behind and must reload over REST, as a browser would.
            resynced = true;
        } else if frame["type"] == "job.complete" || frame["type"] == "job.error" {
            let id = frame["id"].as_str().expect("id").to_owned();
            assert!(ends.insert(id, frame).is_none(), "a job finished twice");
        }
    }
    if resynced {
        for id in &ids {
            if ends.contains_key(id) {
                continue;
            }
            let done = app
                .wait_message(&token, id, |m| {
                    m["status"] == "complete" || m["status"] == "error"
                })
                .await;
            let kind = if done["status"] == "complete" {
                "job.complete"
            } else {
                "job.error"
            };
            ends.insert(
                id.clone(),
                json!({"type": kind, "placeholder": done["placeholder"], "error": done["error"]}),
            );
        }
    }
    let (mut complete, mut placeholders, mut codes) = (0, 0, HashMap::new());
    for frame in ends.values() {
        if frame["type"] == "job.complete" {
            complete += 1;
            if frame["placeholder"] == true {
                placeholders += 1;
            }
        } else {
            let (code, message) = (
                frame["error"]["code"].as_str().expect("code"),
                frame["error"]["message"].as_str().expect("message"),
            );
            let expected = match code {
                "forge_connection" => R9_1,
                "unknown" => R9_4,
                other => panic!("unexpected error code {other}"),
            };
            assert_eq!(message, expected);
            *codes.entry(code.to_owned()).or_insert(0) += 1;
        }
    }
    // Every job is accounted for in the record too: none pending, each in a terminal state.
    let (_, pending) = app.get(&token, "/api/v1/messages?status=pending").await;
    assert_eq!(pending["messages"], json!([]), "no job stays pending");
    let metrics = app.metrics().await;
    let opened = metrics
        .lines()
        .filter(|l| {
            l.starts_with("forge_gateway_breaker_transitions_total") && l.contains("to=\"open\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    let closed = metrics
        .lines()
        .filter(|l| {
            l.starts_with("forge_gateway_breaker_transitions_total") && l.contains("to=\"closed\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    println!(
        "500 jobs: {complete} complete ({placeholders} placeholders), errors {codes:?}, breaker opened {opened} and closed {closed} times, resync {resynced}"
    );
    assert!(complete + codes.values().sum::<usize>() == 500);
    assert!(
        opened >= 1.0,
        "30% failures with a threshold of 3 open the breaker"
    );
    assert!(closed >= 1.0, "and it closes again after successful trials");
    assert!(
        placeholders >= 1,
        "jobs completed with the placeholder while open"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_fuzz_gets_errors_or_a_clean_close_and_other_sessions_are_unaffected() {
    // The fuzz is about what frames do, not how many: the rate limit is out of its way.
    let (app, _storage) = TestApp::spawn_with(
        SimConfig {
            latency: Latency::Fixed(Duration::from_millis(100)),
            ..fast_sim()
        },
        &["--ws-commands-per-second", "100000"],
    )
    .await;
    let token = app.token("alice").await;
    let bystander_token = app.token("bystander").await;
    let mut bystander = app.ws(&bystander_token).await;
    let url = format!("{}/ws?token={}", app.base.replacen("http", "ws", 1), token);
    let mut seed: u64 = 0x5eed;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..40 {
        let (mut socket, _) = tokio_tungstenite::connect_async(url.clone())
            .await
            .expect("connect");
        for _ in 0..25 {
            let frame = match next() % 8 {
                0 => WsMessage::binary((0..(next() % 2048)).map(|_| next() as u8).collect::<Vec<u8>>()),
                1 => WsMessage::text(String::from_utf8_lossy(&(0..(next() % 512)).map(|_| next() as u8).collect::<Vec<u8>>()).into_owned()),
                2 => WsMessage::text(json!({"type": "update_message", "id": "01a2259a-0000-7000-8000-000000000000", "data": {"x": next()}}).to_string()),
                3 => WsMessage::text("{\"type\":\"cancel\",\"id\":".to_owned()),
                4 => WsMessage::text(format!("{{\"type\":\"ping\",\"pad\":\"{}\"}}", "y".repeat((next() % 200_000) as usize))),
                5 => WsMessage::text(json!({"type": ["not", "a", "string"], "id": 5}).to_string()),
                6 => WsMessage::text("{\"type\":\"resync\"}".to_owned()),
                _ => WsMessage::text(json!({"type": "update_message", "id": Value::Null, "data": [1, 2, 3]}).to_string()),
            };
            if socket.send(frame).await.is_err() {
                break;
            }
        }
        // A flood of pings: answered or cut off cleanly, never a crash.
        for _ in 0..200 {
            if socket
                .send(WsMessage::text("{\"type\":\"ping\"}"))
                .await
                .is_err()
            {
                break;
            }
        }
        let mut errors = 0;
        let drained = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(frame)) = socket.next().await {
                if let WsMessage::Text(text) = frame {
                    let value: Value =
                        serde_json::from_str(text.as_str()).expect("every server frame is JSON");
                    if value["type"] == "error" {
                        errors += 1;
                    }
                    if value["type"] == "pong" && errors > 0 {
                        break;
                    }
                }
            }
        })
        .await;
        assert!(
            drained.is_ok() || errors > 0,
            "round {round}: the server neither answered nor closed"
        );
        let _ = socket.close(None).await;
    }
    // The server is fine and the bystander's session works as before.
    let (_, created) = app
        .submit(&bystander_token, small_prompt("still fine"))
        .await;
    let id = created["id"].as_str().expect("id").to_owned();
    bystander.wait_event("job.complete", &id).await;
    assert!(
        bystander.seen.iter().all(|f| f["type"] != "error"),
        "{:?}",
        bystander.seen
    );
    assert_eq!(
        reqwest::get(format!("{}/healthz", app.base))
            .await
            .expect("health")
            .status()
            .as_u16(),
        200
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_and_data_are_stored_verbatim_never_interpreted() {
    let (app, _storage) = TestApp::spawn().await;
    let token = app.token("o'brien\"; DROP TABLE messages; --").await;
    let hostile = [
        "'; DROP TABLE messages; --",
        "<script>alert(1)</script>",
        "$(rm -rf /) `reboot` && echo pwned",
        "Robert'); DELETE FROM messages WHERE ('1'='1",
        "ünïcödé ✓ 😀 İşlem",
    ];
    let mut ids = Vec::new();
    for prompt in hostile {
        let (status, created) = app
            .submit(
                &token,
                json!({"prompt": prompt, "width": 64, "height": 64, "data": {prompt: prompt}}),
            )
            .await;
        assert_eq!(status, 202, "{created}");
        ids.push(created["id"].as_str().expect("id").to_owned());
    }
    for (id, prompt) in ids.iter().zip(hostile) {
        let stored = app
            .wait_message(&token, id, |m| m["status"] == "complete")
            .await;
        assert_eq!(stored["prompt"], prompt);
        assert_eq!(stored["data"][prompt], prompt);
    }
    let (_, listed) = app.get(&token, "/api/v1/messages").await;
    assert_eq!(
        listed["messages"].as_array().expect("list").len(),
        hostile.len(),
        "the table is still there, with everything"
    );
    let page = reqwest::get(format!("{}/", app.base))
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    assert!(!page.contains("<script>alert(1)</script>"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_with_fifty_queued_and_two_processing_loses_nothing_and_runs_the_two_again() {
    // The two running jobs go back to the queue when their lease runs out (JOB_LEASE after the
    // restart), long before STUCK_AFTER; the fifty queued run in their order, each once.
    let sim = start_sim(hanging_sim()).await;
    let storage = Storage::fresh();
    let mut env = storage.process_env(sim.url());
    env.extend([
        ("FORGE_TIMEOUT", "10m".to_owned()),
        ("MAX_PENDING_PER_USER", "100".to_owned()),
        ("STUCK_AFTER", "10m".to_owned()),
        ("JOB_LEASE", "1s".to_owned()),
    ]);
    let mut before = env.clone();
    before.push(("FORGE_SLOTS", "2".to_owned()));
    let first = GatewayProcess::start(&before).await;
    let client = first.client();
    let token = client.token("alice").await;
    let mut ids = Vec::new();
    for n in 0..52 {
        let (status, body) = client
            .submit(&token, small_prompt(&format!("job {n}")))
            .await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["id"].as_str().expect("id").to_owned());
    }
    for id in &ids[..2] {
        client
            .wait_message(&token, id, |m| m["status"] == "processing")
            .await;
    }
    first.kill().await;

    // One job at a time after the restart, so the order is plain to see.
    sim.set_config(SimConfig {
        latency: Latency::Fixed(Duration::ZERO),
        ..fast_sim()
    });
    let requests_before = sim.stats().txt2img_requests;
    let second = GatewayProcess::start(&env).await;
    let client = second.client();
    let token = client.token("alice").await;
    for id in &ids[..2] {
        let done = client
            .wait_message(&token, id, |m| {
                m["status"] == "complete" || m["status"] == "error"
            })
            .await;
        assert_eq!(done["status"], "complete", "{done}");
    }
    let mut started = Vec::new();
    for id in &ids[2..] {
        let done = client
            .wait_message(&token, id, |m| {
                m["status"] == "complete" || m["status"] == "error"
            })
            .await;
        assert_eq!(done["status"], "complete", "{done}");
        started.push(done["started_at"].as_str().expect("started_at").to_owned());
    }
    let mut sorted = started.clone();
    sorted.sort();
    assert_eq!(started, sorted, "queued jobs ran in their order");
    assert_eq!(
        sim.stats().txt2img_requests - requests_before,
        52,
        "each queued job ran exactly once, and the two that were running once more"
    );
    second.kill().await;
    sim.shutdown().await;
}
