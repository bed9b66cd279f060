//! A WebSocket client that keeps every frame it saw, and what tests read from frames.

use super::DEADLINE;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A WebSocket client.
pub struct WsClient {
    stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    /// Every frame received so far.
    pub seen: Vec<Value>,
    /// The `snapshot` received on connect.
    pub snapshot: Value,
    /// The server's close frame (code and reason), once it came.
    pub closed: Option<(u16, String)>,
}

impl WsClient {
    /// Connects and reads `hello` and `snapshot`.
    pub async fn connect(base: &str, token: &str) -> WsClient {
        let url = format!("{}/ws?token={}", base.replacen("http", "ws", 1), token);
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("WebSocket connects");
        let mut client = WsClient {
            stream,
            seen: Vec::new(),
            snapshot: Value::Null,
            closed: None,
        };
        let hello = client.next().await.expect("hello");
        assert_eq!(hello["type"], "hello", "first frame is hello: {hello}");
        let snapshot = client.next().await.expect("snapshot");
        assert_eq!(
            snapshot["type"], "snapshot",
            "second frame is snapshot: {snapshot}"
        );
        client.snapshot = snapshot;
        client
    }

    /// The next JSON frame, or `None` at the deadline or when the socket closes.
    pub async fn next_within(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()??;
            match frame.ok()? {
                WsMessage::Text(text) => {
                    let value: Value =
                        serde_json::from_str(text.as_str()).expect("frames are JSON");
                    self.seen.push(value.clone());
                    return Some(value);
                }
                WsMessage::Close(frame) => {
                    self.closed = Some(frame.map_or((1005, String::new()), |frame| {
                        (u16::from(frame.code), frame.reason.to_string())
                    }));
                    return None;
                }
                _ => continue,
            }
        }
    }

    /// The next JSON frame within the default deadline.
    pub async fn next(&mut self) -> Option<Value> {
        self.next_within(DEADLINE).await
    }

    /// Reads frames until one matches; panics at the deadline.
    pub async fn wait_for(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_within(left).await {
                Some(frame) if matches(&frame) => return frame,
                Some(_) => continue,
                None => panic!(
                    "no frame matching {what} before the deadline; seen: {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Waits for an event of `kind` about message `id`. An event already received counts:
    /// events of several jobs may arrive in any order.
    pub async fn wait_event(&mut self, kind: &str, id: &str) -> Value {
        let matches = |frame: &Value| frame["type"] == kind && frame["id"] == id;
        if let Some(seen) = self.seen.iter().find(|frame| matches(frame)) {
            return seen.clone();
        }
        self.wait_for(&format!("{kind} for {id}"), matches).await
    }

    /// Sends a JSON command.
    pub async fn send(&mut self, command: Value) {
        self.stream
            .send(WsMessage::text(command.to_string()))
            .await
            .expect("send");
    }

    /// Closes normally (a close frame, then the server's answer) right away.
    pub async fn close(&mut self) {
        let _ = self.stream.close(None).await;
        while let Some(Ok(_)) = self.stream.next().await {}
    }

    /// Sends a raw frame.
    pub async fn send_raw(&mut self, frame: WsMessage) {
        self.stream.send(frame).await.expect("send");
    }

    /// The positions `id` was shown at, in order: its `job.queued`, then every `job.position`
    /// and `job.positions` entry about it.
    pub fn positions_of(&self, id: &str) -> Vec<i64> {
        self.seen
            .iter()
            .flat_map(positions_in)
            .filter(|(about, _)| about == id)
            .map(|(_, position)| position)
            .collect()
    }

    /// The newest position shown of each queued message.
    pub fn latest_positions(&self) -> HashMap<String, i64> {
        self.seen.iter().flat_map(positions_in).collect()
    }

    /// Reads frames until the newest positions shown of `expected`'s messages are these.
    pub async fn wait_positions(&mut self, expected: &[(&str, i64)]) {
        let holds = |latest: &HashMap<String, i64>| {
            expected
                .iter()
                .all(|(id, position)| latest.get(*id) == Some(position))
        };
        let deadline = Instant::now() + DEADLINE;
        while !holds(&self.latest_positions()) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                self.next_within(left).await.is_some(),
                "positions never became {expected:?}; latest {:?}",
                self.latest_positions()
            );
        }
    }

    /// The events seen so far about message `id`, by type.
    pub fn types_for(&self, id: &str) -> Vec<String> {
        self.seen
            .iter()
            .filter(|frame| frame["id"] == id)
            .map(|frame| frame["type"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

/// The `(message, position)` pairs a frame shows: `job.queued` and `job.position` carry one,
/// `job.positions` several.
pub fn positions_in(frame: &Value) -> Vec<(String, i64)> {
    let one = |frame: &Value| {
        Some((
            frame["id"].as_str()?.to_owned(),
            frame["queue_position"].as_i64()?,
        ))
    };
    match frame["type"].as_str() {
        Some("job.queued" | "job.position") => one(frame).into_iter().collect(),
        Some("job.positions") => frame["positions"]
            .as_array()
            .map(|entries| entries.iter().filter_map(one).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}
