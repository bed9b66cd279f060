//! The WebSocket contract: `assets/asyncapi.json` (served at `/asyncapi.json`) against what a
//! real gateway sends.
//!
//! The document is read the way a client generator would: each operation names a message of
//! the `/ws` channel; `receive` operations are the server's frames, `send` operations the
//! client's commands, and a message's frame type is the `const` of its payload's `type`. Every
//! frame a real gateway sends in the scenario below is validated against the payload schema of
//! its type (JSON Schema draft-07, as AsyncAPI's default schema format is a superset of it),
//! every command the test sends against its command schema, and the scenario must see every
//! type of [`server_frame_types`] at least once.

use crate::common::*;
use forge_gateway::domain::event::server_frame_types;
use forge_sim::{Latency, SimConfig, SimMode};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const ASYNCAPI: &str = include_str!("../../assets/asyncapi.json");

/// The commands a client may send (docs/api.md, "WebSocket").
const COMMANDS: [&str; 4] = ["ping", "resync", "update_message", "cancel"];

/// Every failure kind's code is in the document's `JobError` enum (and nothing else is), and
/// `docs/api.md` lists it with its exact message: adding a kind (see docs/architecture.md, "To
/// add a failure") fails here until both say so.
#[test]
fn every_failure_code_is_in_the_document_and_in_the_api_doc() {
    let doc = document();
    let listed: Vec<&str> = doc
        .pointer("/components/schemas/JobError/properties/code/enum")
        .and_then(Value::as_array)
        .expect("JobError.code is an enum")
        .iter()
        .map(|code| code.as_str().expect("a code is a string"))
        .collect();
    let kinds = forge_gateway::domain::catalogue::JobFailure::every();
    let codes: Vec<&str> = kinds.iter().map(|kind| kind.code()).collect();
    assert_eq!(listed, codes, "the JobError codes of assets/asyncapi.json");
    let api = include_str!("../../docs/api.md");
    for kind in kinds {
        let (code, message) = (
            format!("| `{}`", kind.code()),
            format!("`{}`", kind.message()),
        );
        assert!(
            api.lines()
                .any(|line| line.starts_with(&code) && line.contains(&message)),
            "docs/api.md lists {code} with its message {message}"
        );
    }
}

fn document() -> Value {
    serde_json::from_str(ASYNCAPI).expect("assets/asyncapi.json is JSON")
}

/// Follows local `$ref`s (`#/a/b`) until a value that is not a reference; returns it and the
/// JSON pointer it lives at.
fn resolve<'a>(doc: &'a Value, value: &'a Value, at: String) -> (&'a Value, String) {
    let (mut value, mut at) = (value, at);
    for _ in 0..16 {
        let Some(reference) = value.get("$ref").and_then(Value::as_str) else {
            return (value, at);
        };
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("only local references are used: {reference}"));
        value = doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{at}: {reference} points at nothing"));
        at = pointer.to_owned();
    }
    panic!("{at}: a reference loop");
}

/// One message of the document.
struct Described {
    /// Where the message object lives (`/components/messages/…`).
    pointer: String,
    /// Its payload schema, compiled.
    validator: jsonschema::Validator,
}

/// The messages of the document by frame type, per direction.
struct Contract {
    doc: Value,
    server: BTreeMap<String, Described>,
    client: BTreeMap<String, Described>,
}

impl Contract {
    fn load() -> Contract {
        let doc = document();
        let mut contract = Contract {
            server: BTreeMap::new(),
            client: BTreeMap::new(),
            doc: doc.clone(),
        };
        let operations = doc["operations"].as_object().expect("operations");
        for (name, operation) in operations {
            let (channel, _) = resolve(&doc, &operation["channel"], format!("{name}.channel"));
            assert_eq!(channel["address"], "/ws", "operation {name} is on /ws");
            let messages = operation["messages"].as_array().expect("messages");
            assert_eq!(messages.len(), 1, "operation {name}: one message each");
            let (message, pointer) = resolve(&doc, &messages[0], format!("{name}.messages[0]"));
            let (payload, _) = resolve(&doc, &message["payload"], format!("{pointer}/payload"));
            let kind = payload["properties"]["type"]["const"]
                .as_str()
                .unwrap_or_else(|| panic!("{pointer}: the payload's type is a const"))
                .to_owned();
            let described = Described {
                validator: validator(&doc, &format!("{pointer}/payload")),
                pointer,
            };
            let side = match operation["action"].as_str() {
                Some("receive") => &mut contract.server,
                Some("send") => &mut contract.client,
                other => panic!("operation {name}: action {other:?}"),
            };
            assert!(
                side.insert(kind.clone(), described).is_none(),
                "two operations for {kind}"
            );
        }
        contract
    }

    /// Every error of `frame` against the schema of its type, as lines.
    fn errors(side: &BTreeMap<String, Described>, frame: &Value) -> Vec<String> {
        let Some(kind) = frame["type"].as_str() else {
            return vec![format!("a frame without a type: {frame}")];
        };
        let Some(described) = side.get(kind) else {
            return vec![format!(
                "the document has no message for the frame type {kind:?}: {frame}"
            )];
        };
        described
            .validator
            .iter_errors(frame)
            .map(|error| {
                format!(
                    "{kind} at {:?}: {error} (schema {:?}); frame {}",
                    error.instance_path().as_str(),
                    error.schema_path().as_str(),
                    shorten(frame)
                )
            })
            .collect()
    }
}

/// A validator of the schema at `pointer` in `doc`: a draft-07 root whose `$ref` points there
/// and which carries the document's components, so the schema's own references resolve.
fn validator(doc: &Value, pointer: &str) -> jsonschema::Validator {
    let root = json!({
        "$ref": format!("#{pointer}"),
        "components": doc["components"],
    });
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft7)
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|err| panic!("{pointer} is not a valid schema: {err}"))
}

fn shorten(frame: &Value) -> String {
    let text = frame.to_string();
    if text.len() > 400 {
        format!("{}…", &text[..text.floor_char_boundary(400)])
    } else {
        text
    }
}

/// Validates frames and commands against a [`Contract`], and counts the frame types seen.
struct Checker {
    contract: Contract,
    seen: BTreeMap<String, usize>,
    failures: Vec<String>,
    frames: usize,
}

impl Checker {
    fn new() -> Checker {
        Checker {
            contract: Contract::load(),
            seen: BTreeMap::new(),
            failures: Vec::new(),
            frames: 0,
        }
    }

    /// Validates every frame one connection received, in order; `seq` must count 1, 2, 3, …
    fn connection(&mut self, label: &str, frames: &[Value]) {
        for (at, frame) in frames.iter().enumerate() {
            self.frames += 1;
            if let Some(kind) = frame["type"].as_str() {
                *self.seen.entry(kind.to_owned()).or_default() += 1;
            }
            if frame["seq"] != json!(at + 1) {
                self.failures.push(format!(
                    "{label}: frame {} has seq {}",
                    at + 1,
                    frame["seq"]
                ));
            }
            for error in Contract::errors(&self.contract.server, frame) {
                self.failures.push(format!("{label}: {error}"));
            }
        }
    }

    /// A command the test is about to send must match its schema.
    fn command(&self, command: Value) -> Value {
        let errors = Contract::errors(&self.contract.client, &command);
        assert!(errors.is_empty(), "the test's own command: {errors:#?}");
        command
    }

    /// Fails with every mismatch, and when a type the server can send was never seen.
    fn finish(self) {
        let never: Vec<&str> = server_frame_types()
            .into_iter()
            .filter(|kind| !self.seen.contains_key(*kind))
            .collect();
        println!("{} frames validated, by type: {:?}", self.frames, self.seen);
        assert!(
            self.failures.is_empty(),
            "{} frame(s) do not match assets/asyncapi.json:\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
        assert!(
            never.is_empty(),
            "frame types the server can send that the scenario never saw: {never:?}"
        );
    }
}

fn id_of(view: &Value) -> String {
    view["id"].as_str().expect("id").to_owned()
}

#[test]
fn the_document_has_a_message_for_every_frame_type_and_command_and_its_examples_match() {
    let contract = Contract::load();
    let server: BTreeSet<&str> = contract.server.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = server_frame_types().into_iter().collect();
    assert_eq!(
        server, expected,
        "the receive operations of assets/asyncapi.json are exactly server_frame_types()"
    );
    let client: BTreeSet<&str> = contract.client.keys().map(String::as_str).collect();
    assert_eq!(client, BTreeSet::from(COMMANDS));

    // The channel says how to authenticate.
    let channel = contract.doc["channels"]
        .as_object()
        .expect("channels")
        .values()
        .find(|channel| channel["address"] == "/ws")
        .expect("a channel at /ws");
    let text = channel.to_string();
    assert!(text.contains("Authorization") && text.contains("Bearer") && text.contains("token"));

    // Every example of every message matches its payload.
    let mut examples = 0;
    for side in [&contract.server, &contract.client] {
        for (kind, described) in side {
            let message = contract.doc.pointer(&described.pointer).expect("message");
            let list = message["examples"].as_array().expect("examples");
            assert!(!list.is_empty(), "{kind} has an example");
            for example in list {
                let errors = Contract::errors(side, &example["payload"]);
                assert!(errors.is_empty(), "example of {kind}: {errors:#?}");
                assert_eq!(example["payload"]["type"], kind.as_str());
                examples += 1;
            }
        }
    }
    assert_eq!(examples, server.len() + client.len());
}

/// A named change to a frame that should make it invalid.
type Mutation<'a> = (&'a str, &'a dyn Fn(&mut Value));

#[test]
fn the_schemas_refuse_what_the_server_must_not_send() {
    let contract = Contract::load();
    let server = &contract.server;
    let complete = json!({"seq": 9, "type": "job.complete", "id": "0193e3a4-7b2c-7d10-9a51-3f6c2b8e4d01",
        "version": 5, "status": "complete", "image_url": "/images/x.png", "placeholder": false,
        "notice": null, "seed": 7, "model": null});
    assert!(Contract::errors(server, &complete).is_empty());
    let broken = |change: &dyn Fn(&mut Value)| {
        let mut frame = complete.clone();
        change(&mut frame);
        Contract::errors(server, &frame)
    };
    let cases: [Mutation; 8] = [
        ("seq 0", &|f| f["seq"] = json!(0)),
        ("no seq", &|f| {
            f.as_object_mut().unwrap().remove("seq");
        }),
        ("no seed", &|f| {
            f.as_object_mut().unwrap().remove("seed");
        }),
        ("a string version", &|f| f["version"] = json!("5")),
        ("another status", &|f| f["status"] = json!("error")),
        ("an unknown field", &|f| f["extra"] = json!(1)),
        ("a bad id", &|f| f["id"] = json!("not-a-uuid")),
        ("a notice of the wrong shape", &|f| {
            f["notice"] = json!({"code": "forge_unavailable"})
        }),
    ];
    for (what, change) in cases {
        assert!(!broken(change).is_empty(), "{what} was accepted");
    }
    let hello = json!({"seq": 1, "type": "hello", "user": "alice", "server_time": "2026-12-01T17:00:00.123456789Z"});
    assert!(Contract::errors(server, &hello).is_empty());
    let mut late = hello.clone();
    late["server_time"] = json!("yesterday");
    assert!(
        !Contract::errors(server, &late).is_empty(),
        "a time that is not one"
    );
    let unknown = json!({"seq": 1, "type": "job.teleported"});
    assert!(!Contract::errors(server, &unknown).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_frame_a_real_gateway_sends_matches_the_document() {
    let mut checker = Checker::new();

    // 20 steps at 10 a second: two seconds of generation, with progress and previews on the way.
    let sim = SimConfig {
        steps_per_second: Some(10.0),
        latency: Latency::Fixed(Duration::ZERO),
        previews: true,
        ..fast_sim()
    };
    let (app, _storage) = TestApp::spawn_with(sim, &["--forge-previews", "true"]).await;
    let served: Value = app
        .http
        .get(format!("{}/asyncapi.json", app.base))
        .send()
        .await
        .expect("GET /asyncapi.json")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        served,
        document(),
        "/asyncapi.json serves assets/asyncapi.json"
    );

    let token = app.token("alice").await;
    let mut ws = app.ws(&token).await;

    // pong
    ws.send(checker.command(json!({"type": "ping"}))).await;
    ws.wait_for("pong", |frame| frame["type"] == "pong").await;

    // queued → processing → progress and preview → complete, with the seed Forge used.
    let (status, created) = app
        .submit(
            &token,
            json!({"prompt": "contract: a lighthouse", "width": 64, "height": 64, "steps": 20}),
        )
        .await;
    assert_eq!(status, 202, "{created}");
    let done = id_of(&created);
    for kind in [
        "job.queued",
        "job.processing",
        "job.progress",
        "job.preview",
    ] {
        ws.wait_event(kind, &done).await;
    }
    let complete = ws.wait_event("job.complete", &done).await;
    assert!(complete["seed"].is_i64(), "{complete}");

    // message.updated, from a command with a ref, echoed.
    ws.send(checker.command(
        json!({"type": "update_message", "id": done, "data": {"liked": true, "note": "güzel"}, "ref": "u-1"}),
    ))
    .await;
    let updated = ws.wait_event("message.updated", &done).await;
    assert_eq!(updated["ref"], "u-1", "{updated}");

    // error: a command the server does not know, and one about a message (a finished one
    // cannot be cancelled).
    ws.send(json!({"type": "teleport"})).await;
    let unknown = ws
        .wait_for("an error frame", |frame| frame["type"] == "error")
        .await;
    assert_eq!(unknown["error"]["field"], "type", "{unknown}");
    ws.send(checker.command(json!({"type": "cancel", "id": done, "ref": "c-1"})))
        .await;
    let conflict = ws
        .wait_for("an error about the message", |frame| {
            frame["type"] == "error" && frame["id"] == done.as_str()
        })
        .await;
    assert_eq!(conflict["error"]["code"], "conflict", "{conflict}");
    assert_eq!(conflict["ref"], "c-1", "{conflict}");

    // job.error: Forge answers 500.
    app.sim.set_mode(SimMode::Error500);
    let (_, failing) = app.submit(&token, small_prompt("contract: 500")).await;
    let failed = ws.wait_event("job.error", &id_of(&failing)).await;
    assert_eq!(failed["error"]["code"], "unknown", "{failed}");

    // job.position and job.positions behind a wedged backend; job.cancelled by a command and
    // over REST.
    app.sim.set_mode(SimMode::Hang);
    let (_, blocker) = app.submit(&token, small_prompt("contract: blocker")).await;
    let blocker = id_of(&blocker);
    ws.wait_event("job.processing", &blocker).await;
    let (_, first) = app.submit(&token, small_prompt("contract: first")).await;
    let first = id_of(&first);
    ws.wait_for("job.position of the only queued message", |frame| {
        frame["type"] == "job.position" && frame["id"] == first.as_str()
    })
    .await;
    let (_, second) = app.submit(&token, small_prompt("contract: second")).await;
    let second = id_of(&second);
    let positions = ws
        .wait_for("job.positions of both queued messages", |frame| {
            frame["type"] == "job.positions"
        })
        .await;
    let order: Vec<(&str, i64)> = positions["positions"]
        .as_array()
        .expect("positions")
        .iter()
        .map(|entry| {
            (
                entry["id"].as_str().expect("id"),
                entry["queue_position"].as_i64().expect("position"),
            )
        })
        .collect();
    assert_eq!(order, [(first.as_str(), 1), (second.as_str(), 2)]);
    // A second tab now gets a snapshot of three pending messages (one processing, two queued
    // with their positions), and another one when it asks with resync.
    let mut other = app.ws(&token).await;
    let pending = other.snapshot["messages"].as_array().expect("messages");
    assert_eq!(pending.len(), 3, "{}", other.snapshot);
    other.send(checker.command(json!({"type": "resync"}))).await;
    other
        .wait_for("the snapshot answering resync", |frame| {
            frame["type"] == "snapshot"
        })
        .await;
    ws.send(checker.command(json!({"type": "cancel", "id": first, "ref": "c-2"})))
        .await;
    let cancelled = ws.wait_event("job.cancelled", &first).await;
    assert_eq!(cancelled["ref"], "c-2", "{cancelled}");
    app.sim.set_mode(SimMode::Normal);
    assert_eq!(app.cancel(&token, &blocker).await.0, 200);
    ws.wait_event("job.cancelled", &blocker).await;
    ws.wait_event("job.complete", &second).await;

    checker.connection("alice", &ws.seen);
    checker.connection("alice, second tab", &other.seen);
    app.stop().await;

    // resync: a client that stops reading loses its backlog past WS_OUTBOX frames. It reads
    // nothing while ten messages get 60 KB of data thirty times each: 18 MB of message.updated,
    // far more than the socket buffers (a few MB) and the outbox (8 frames) hold.
    let (small, _storage) = TestApp::spawn_with(fast_sim(), &["--ws-outbox", "8"]).await;
    let token = small.token("bob").await;
    let mut ids = Vec::new();
    for n in 0..10 {
        let (status, created) = small
            .submit(&token, small_prompt(&format!("contract: {n}")))
            .await;
        assert_eq!(status, 202, "{created}");
        ids.push(id_of(&created));
    }
    for id in &ids {
        small
            .wait_message(&token, id, |m| m["status"] == "complete")
            .await;
    }
    let mut stalled = small.ws(&token).await;
    let blob = "x".repeat(60_000);
    futures::future::join_all(ids.iter().map(|id| {
        let (small, token, blob) = (&small, &token, &blob);
        async move {
            for n in 0..30 {
                let answer = small
                    .request(
                        reqwest::Method::PATCH,
                        &format!("/api/v1/messages/{id}"),
                        token,
                    )
                    .json(&json!({"data": {"blob": blob, "n": n}}))
                    .send()
                    .await
                    .expect("patch");
                assert_eq!(answer.status().as_u16(), 200);
            }
        }
    }))
    .await;
    stalled
        .wait_for("resync after the backlog overflowed", |frame| {
            frame["type"] == "resync"
        })
        .await;
    stalled
        .send(checker.command(json!({"type": "resync"})))
        .await;
    stalled
        .wait_for("the snapshot answering resync", |frame| {
            frame["type"] == "snapshot" && frame["seq"].as_u64() > Some(2)
        })
        .await;
    checker.connection("bob, stalled", &stalled.seen);
    small.stop().await;

    checker.finish();
}
