//! WebSocket sessions of the gateway's users: connecting, waiting for `hello` + `snapshot`, the
//! reader task (which answers pings and hands every text frame to the session's
//! [`SessionState`]), and closing. What the reader records is in `trace.rs`.

pub use crate::trace::{Counters, JobTrace, SessionOptions, SessionState};

use crate::client::Api;
use crate::ws::{self, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, WsReader, WsWriter};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// One open WebSocket session of a user.
pub struct Session {
    /// The user's token.
    pub token: String,
    /// The socket's writing half (commands to the gateway).
    pub writer: WsWriter,
    /// What the reader task recorded.
    pub state: Arc<SessionState>,
    task: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Connects, starts the reader and waits for `hello` + `snapshot`.
    pub async fn open(
        api: &Api,
        user: &str,
        token: &str,
        counters: Arc<Counters>,
        options: SessionOptions,
    ) -> Result<Session, String> {
        let query: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
        let mut last = String::new();
        let mut connection = None;
        for attempt in 0..4u64 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250 * attempt)).await;
            }
            match tokio::time::timeout(
                Duration::from_secs(20),
                ws::connect(&api.ws_addr, &format!("/ws?token={query}")),
            )
            .await
            {
                Ok(Ok(pair)) => {
                    connection = Some(pair);
                    break;
                }
                Ok(Err(err)) => last = err.to_string(),
                Err(_) => last = "handshake timed out (20 s)".into(),
            }
        }
        let Some((reader, writer)) = connection else {
            return Err(format!("WebSocket of {user}: {last}"));
        };
        let (ready_tx, ready_rx) = oneshot::channel();
        let state = Arc::new(SessionState::new(counters, options, ready_tx));
        let task = tokio::spawn(read_loop(reader, writer.clone(), state.clone()));
        match tokio::time::timeout(Duration::from_secs(60), ready_rx).await {
            Ok(Ok(())) if state.saw_hello.load(Ordering::Relaxed) => {}
            Ok(Ok(())) => return Err(format!("WebSocket of {user}: snapshot without hello")),
            Ok(Err(_)) => {
                let reason = state.end_reason.lock().clone().unwrap_or_default();
                return Err(format!(
                    "WebSocket of {user} closed before its snapshot: {reason}"
                ));
            }
            Err(_) => return Err(format!("WebSocket of {user}: no snapshot within 60 s")),
        }
        Ok(Session {
            token: token.to_owned(),
            writer,
            state,
            task,
        })
    }

    /// Sends a close frame and waits (briefly) for the reader to end.
    pub async fn close(self) {
        self.state.closing.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.writer.close()).await;
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }

    /// Whether the reader ended without us asking.
    pub fn dropped(&self) -> Option<String> {
        if self.state.closed.load(Ordering::Relaxed) && !self.state.closing.load(Ordering::Relaxed)
        {
            Some(
                self.state
                    .end_reason
                    .lock()
                    .clone()
                    .unwrap_or_else(|| "closed".into()),
            )
        } else {
            None
        }
    }
}

async fn read_loop(mut reader: WsReader, writer: WsWriter, state: Arc<SessionState>) {
    let mut last_seq = 0u64;
    let reason = loop {
        match reader.next().await {
            Ok(message) => match message.opcode {
                OP_TEXT => state.handle_text(&message.payload, Instant::now(), &mut last_seq),
                OP_PING => {
                    if let Err(err) = writer.send(OP_PONG, &message.payload).await {
                        break format!("pong failed: {err}");
                    }
                }
                OP_CLOSE => {
                    let code = (message.payload.len() >= 2)
                        .then(|| u16::from_be_bytes([message.payload[0], message.payload[1]]));
                    let text =
                        String::from_utf8_lossy(message.payload.get(2..).unwrap_or_default())
                            .into_owned();
                    if !state.closing.load(Ordering::Relaxed) {
                        let _ = writer
                            .send(OP_CLOSE, &message.payload[..message.payload.len().min(2)])
                            .await;
                    }
                    break format!("server closed: {code:?} {text}");
                }
                _ => {}
            },
            Err(err) => break err.to_string(),
        }
    };
    *state.end_reason.lock() = Some(reason);
    state.closed.store(true, Ordering::Relaxed);
    // Wake anything waiting on this session.
    state.ack_notify.notify_one();
    state.done.add_permits(1 << 20);
    state.ready.lock().take();
}
