//! Issue 14, item 0: no poison pills. Whatever a client may store is read back exactly by
//! both stores (or refused at the door), and no single row can stop the queue.

use crate::common::*;
use forge_gateway::domain::client_json::canonicalize;
use forge_gateway::domain::merge::merge_client_data;
use forge_sim::{Latency, SimConfig, SimMode};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

const R9_4: &str = "Bilinmeyen bir hata oluştu. Lütfen tekrar deneyin.";

/// A JSON text literal for the `params` or `data` column in raw SQL.
fn json_sql(text: &str) -> String {
    let quoted = format!("'{}'", text.replace('\'', "''"));
    if on_postgres() {
        format!("{quoted}::jsonb")
    } else {
        quoted
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_double_round_trips_and_the_queue_keeps_moving() {
    let (app, _storage) = TestApp::spawn().await;
    let alice = app.token("alice").await;
    let bob = app.token("bob").await;
    let id = app.submit_id(&alice, "extremes").await;
    // The request of the report: PostgreSQL keeps it as `numeric` and gives back 309 digits.
    let extremes = json!({
        "max": f64::MAX, "min": -f64::MAX, "tiny": 5e-324, "small": f64::MIN_POSITIVE,
        "big": u64::MAX, "low": i64::MIN, "safe": 9_007_199_254_740_993u64,
    });
    let (status, patched) = app.patch(&alice, &id, &json!({"data": extremes})).await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["data"], extremes);
    let (status, read) = app.get(&alice, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["data"], extremes, "read back exactly");
    assert_eq!(read["data"]["max"].as_f64(), Some(f64::MAX));
    let (status, list) = app.get(&alice, "/api/v1/messages").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["messages"][0]["data"], extremes);
    // The queue is not blocked by it: both this job and another user's complete.
    let other = app.submit_id(&bob, "after the extremes").await;
    app.wait_message(&alice, &id, |m| m["status"] == "complete")
        .await;
    app.wait_message(&bob, &other, |m| m["status"] == "complete")
        .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integers_beyond_64_bits_are_refused_at_the_door_over_rest_and_websocket() {
    let (app, _storage) = TestApp::spawn().await;
    let alice = app.token("alice").await;
    let id = app.submit_id(&alice, "big integers").await;
    for text in [
        r#"{"data": {"x": 18446744073709551616}}"#,
        r#"{"data": {"x": [1, -9223372036854775809]}}"#,
        r#"{"data": {"x": 123456789012345678901234567890}}"#,
    ] {
        let answer = app
            .request(Method::PATCH, &format!("/api/v1/messages/{id}"), &alice)
            .header("content-type", "application/json")
            .body(text)
            .send()
            .await
            .expect("patch");
        assert_eq!(answer.status().as_u16(), 400, "{text}");
        let body: Value = answer.json().await.expect("json");
        assert_eq!(body["error"]["code"], "invalid_json");
        assert!(
            body["error"]["message"]
                .as_str()
                .expect("message")
                .contains("64 bit"),
            "{body}"
        );
    }
    // The same over the WebSocket: an error frame, and the data is untouched.
    let mut ws = app.ws(&alice).await;
    ws.send_raw(tokio_tungstenite::tungstenite::Message::text(format!(
        r#"{{"type":"update_message","id":"{id}","data":{{"x":18446744073709551616}}}}"#
    )))
    .await;
    let error = ws
        .wait_for("an error frame", |f| f["type"] == "error")
        .await;
    assert_eq!(error["error"]["code"], "invalid_json", "{error}");
    // Written as a double, the same magnitude is a double and is kept.
    let (status, patched) = app
        .patch(
            &alice,
            &id,
            &serde_json::from_str(r#"{"data": {"x": 1.8446744073709552e19}}"#).expect("json"),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(patched["data"]["x"].as_f64(), Some(2f64.powi(64)));
    app.stop().await;
}

/// Client data as a generator makes it: odd numbers (the extremes of a double, subnormals,
/// whole doubles, 64-bit integers), odd Unicode, nesting.
fn client_value() -> impl Strategy<Value = Value> {
    let number = prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(vec![
            f64::MAX,
            -f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
            -0.0,
            0.1,
            1e15,
            1e300,
            9_007_199_254_740_993.0,
            18_446_744_073_709_551_615.0,
        ])
        .prop_map(Value::from),
    ];
    let text = prop_oneof![
        "[^\u{0}]{0,24}",
        prop::sample::select(vec![
            "\u{FEFF}bom",
            "\u{10FFFF}",
            "e\u{301}\u{301}",
            "\u{202E}rtl",
            "\u{FFFE}\u{FFFF}",
            "😀👩‍👩‍👧",
            "\\\"quoted\"\\",
            "İıŞşĞğÇçÖöÜü",
        ])
        .prop_map(str::to_owned),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number,
        text.clone().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(text.clone(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

#[test]
fn generated_client_data_round_trips_through_patch_and_get() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (app, _storage, token, id) = runtime.block_on(async {
        let (app, storage) = TestApp::spawn().await;
        let token = app.token("prop").await;
        let id = app.submit_id(&token, "round trips").await;
        (app, storage, token, id)
    });
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(48);
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let outcome = runner.run(&client_value(), |value| {
        runtime.block_on(async {
            // Start from a clean slot each time, so the data stays far below its size limit.
            let (status, before) = app.patch(&token, &id, &json!({"data": {"v": null}})).await;
            prop_assert_eq!(status, 200, "{}", before);
            let patch_body = json!({"data": {"v": value}});
            let mut expected = before["data"].clone();
            let mut canonical = patch_body["data"].clone();
            canonicalize(&mut canonical);
            merge_client_data(&mut expected, &canonical)
                .map_err(|err| TestCaseError::reject(err.to_string()))?;
            let (status, patched) = app.patch(&token, &id, &patch_body).await;
            prop_assert_eq!(status, 200, "{}", patched);
            prop_assert_eq!(&patched["data"], &expected);
            let (status, read) = app.get(&token, &format!("/api/v1/messages/{id}")).await;
            prop_assert_eq!(status, 200);
            prop_assert_eq!(&read["data"], &expected, "read back exactly");
            Ok(())
        })
    });
    runtime.block_on(app.stop());
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_record_cannot_be_read_fails_with_r9_4_and_the_queue_moves_on() {
    let hang = hanging_sim();
    let (app, _storage) = TestApp::spawn_with(hang, &["--forge-timeout", "1m"]).await;
    let alice = app.token("alice").await;
    let bob = app.token("bob").await;
    let blocker = app.submit_id(&alice, "blocker").await;
    app.wait_message(&alice, &blocker, |m| m["status"] == "processing")
        .await;
    let poisoned = app.submit_id(&alice, "poisoned params").await;
    let behind = app.submit_id(&bob, "behind the poison").await;
    // A damaged row: parameters the gateway cannot read (a manual edit, say).
    app.core()
        .db
        .execute_raw(&format!(
            "UPDATE messages SET params = {} WHERE prompt = 'poisoned params'",
            json_sql(r#"{"width": "big"}"#)
        ))
        .await
        .expect("damage the row");
    let (status, _) = app
        .get(&alice, &format!("/api/v1/messages/{poisoned}"))
        .await;
    assert_eq!(status, 500, "the damaged row cannot be shown yet");
    let (status, list) = app.get(&alice, "/api/v1/messages").await;
    assert_eq!(
        status, 200,
        "a listing leaves it out instead of failing: {list}"
    );
    assert_eq!(listed_prompts(&list), vec!["blocker"]);
    app.sim.set_mode(SimMode::Normal);
    let (status, _) = app
        .request(
            Method::POST,
            &format!("/api/v1/messages/{blocker}/cancel"),
            &alice,
        )
        .send()
        .await
        .map(|answer| (answer.status().as_u16(), ()))
        .expect("cancel");
    assert_eq!(status, 200);
    let failed = app
        .wait_message(&alice, &poisoned, |m| m["status"] == "error")
        .await;
    assert_eq!(failed["error"]["code"], "unknown");
    assert_eq!(failed["error"]["message"], R9_4);
    assert_eq!(
        failed["data"]["_unreadable_params"], r#"{"width": "big"}"#,
        "what did not parse is kept: {failed}"
    );
    app.wait_message(&bob, &behind, |m| m["status"] == "complete")
        .await;
    assert_eq!(
        metric(&app.metrics().await, "forge_gateway_jobs_unstartable_total"),
        1.0
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_data_a_store_cannot_give_back_is_kept_as_text_and_the_job_runs() {
    let slow = SimConfig {
        latency: Latency::Fixed(Duration::from_millis(1500)),
        ..fast_sim()
    };
    let (app, _storage) = TestApp::spawn_with(slow, &[]).await;
    let alice = app.token("alice").await;
    let first = app.submit_id(&alice, "first").await;
    let damaged = app.submit_id(&alice, "damaged data").await;
    // A number past a double's range: both stores accept the text, no reader can decode it.
    let stored = r#"{"x": 1e400}"#;
    app.core()
        .db
        .execute_raw(&format!(
            "UPDATE messages SET data = {} WHERE prompt = 'damaged data'",
            json_sql(stored)
        ))
        .await
        .expect("damage the row");
    let (status, read) = app
        .get(&alice, &format!("/api/v1/messages/{damaged}"))
        .await;
    assert_eq!(status, 200, "{read}");
    let kept = read["data"]["_unreadable_data"]
        .as_str()
        .expect("kept as text");
    assert!(
        kept.contains("1e400") || kept.contains("10000000000"),
        "{kept}"
    );
    let (status, list) = app.get(&alice, "/api/v1/messages").await;
    assert_eq!(status, 200);
    assert_eq!(list["messages"].as_array().map(Vec::len), Some(2));
    app.wait_message(&alice, &first, |m| m["status"] == "complete")
        .await;
    let done = app
        .wait_message(&alice, &damaged, |m| m["status"] == "complete")
        .await;
    assert_eq!(done["data"]["_unreadable_data"].as_str(), Some(kept));
    app.stop().await;
}
