//! The socket's read side: what a client sends, bounded in rate, size and backlog.
//!
//! Frames are read one at a time, and the next is read only once the previous is dealt with:
//! - every frame takes a token of the user's [`CommandRate`], whatever its kind (text, binary,
//!   ping, pong); without one a text or binary frame is refused with a `rate_limited` error
//!   naming the write's `id` and `ref` if it has them (a ping or pong is not answered) and the reader waits for the next token before reading
//!   on, so a flood costs a bounded amount of work and is slowed by TCP itself;
//! - a write command (`update_message`, `cancel`) goes into a queue of `WS_COMMAND_QUEUE`
//!   commands that [`apply_commands`] works through in order; while it is full, nothing more is
//!   read;
//! - at most one `resync` is answered at a time (one more while it runs is redundant).
//!
//! When reading ends (the client's close frame, a broken connection, the token's expiry), the
//! commands already read are still applied, in order, within `WS_CLOSE_TIMEOUT`
//! ([`super::serve`]).

use super::outbox::{Frame, Outbox};
use super::rate::CommandRate;
use super::session::{LastSeen, Resync, SessionActor, error_frame_body};
use crate::domain::catalogue::{ApiError, BadJson, Invalid};
use crate::domain::client_refs::{MAX_REF_CHARS, valid_ref};
use crate::domain::event::{JobEvent, JobEventKind};
use crate::domain::merge;
use crate::domain::params::data_error;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use actix::Addr;
use futures::{Stream, StreamExt};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use uuid::Uuid;

/// A client command that writes, applied in the order the client sent it, with the client's
/// `ref` of it if it gave one (echoed in what answers it).
pub(super) enum Command {
    Patch(Uuid, Value, Option<String>),
    Cancel(Uuid, Option<String>),
}

/// The `id` and `ref` of a frame refused before it was read as a command, if it names them.
#[derive(Default, serde::Deserialize)]
struct WriteAbout {
    id: Option<String>,
    #[serde(rename = "ref")]
    client_ref: Option<String>,
}

impl WriteAbout {
    /// Anything that is not an object with string fields names nothing.
    fn of(text: &[u8]) -> WriteAbout {
        serde_json::from_slice(text).unwrap_or_default()
    }

    fn client_ref(&self) -> Option<&str> {
        self.client_ref.as_deref().filter(|r| valid_ref(r))
    }
}

/// Why reading stopped.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum End {
    /// The client sent its close frame.
    Closed,
    /// The connection broke.
    Gone,
    /// The client sent nothing for `WS_IDLE_TIMEOUT`.
    Idle,
    /// The client sent a frame over the hard limit.
    TooBig,
}

/// What the reader works with.
pub(super) struct Reader {
    pub user: Arc<str>,
    pub outbox: Arc<Outbox>,
    pub session: Addr<SessionActor>,
    pub commands: mpsc::Sender<Command>,
    pub resyncing: Arc<AtomicBool>,
    pub last_seen: Arc<LastSeen>,
    pub rate: Arc<CommandRate>,
    pub metrics: Arc<Metrics>,
    pub idle_timeout: Duration,
    /// The largest text frame taken as a command.
    pub max_frame: usize,
    /// Turns true once the session sent `hello` and the first `snapshot`.
    pub greeted: tokio::sync::watch::Receiver<bool>,
}

impl Reader {
    /// Reads until the socket ends.
    pub(super) async fn run<S>(mut self, mut stream: S) -> End
    where
        S: Stream<Item = Result<Message, WsError>> + Unpin,
    {
        // Nothing is read before `hello` and the snapshot are sent, so an early command's
        // answer (a `pong`, an `error`) never comes before them. A session that never greets
        // (its actor is gone) lets reading start at once; a slow snapshot holds it at most
        // the idle timeout, as the database's own deadline is shorter.
        let greeted = self.greeted.wait_for(|greeted| *greeted);
        let _ = tokio::time::timeout(self.idle_timeout, greeted).await;
        loop {
            let frame = match tokio::time::timeout(self.idle_timeout, stream.next()).await {
                Err(_) => return End::Idle,
                Ok(None) => return End::Gone,
                Ok(Some(Err(WsError::Capacity(_)))) => return End::TooBig,
                Ok(Some(Err(_))) => return End::Gone,
                Ok(Some(Ok(frame))) => frame,
            };
            self.last_seen.touch();
            if let Message::Close(_) = frame {
                return End::Closed;
            }
            if let Err(wait) = self.rate.take(&self.user) {
                self.metrics.ws_commands_limited.inc();
                let limited = ApiError::RateLimited {
                    per_second: self.rate.per_second(),
                };
                match &frame {
                    Message::Text(text) if text.len() <= self.max_frame => {
                        // The write it would have been is named, so its sender knows which
                        // write to send again.
                        let about = WriteAbout::of(text.as_bytes());
                        self.refuse_about(&limited, about.id.as_deref(), about.client_ref());
                    }
                    Message::Text(_) | Message::Binary(_) => self.refuse(&limited),
                    _ => {}
                }
                // Read on only when the user may send again: a flood waits in TCP.
                tokio::time::sleep(wait).await;
                continue;
            }
            let text = match frame {
                Message::Close(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {
                    continue;
                }
                Message::Binary(_) => {
                    self.refuse(&ApiError::InvalidJson(BadJson::BinaryFrame));
                    continue;
                }
                Message::Text(text) => text,
            };
            if text.len() > self.max_frame {
                self.refuse(&ApiError::PayloadTooLarge {
                    limit: self.max_frame,
                });
                continue;
            }
            if let Some(command) = self.parse(text.as_bytes()) {
                // Waits while the queue is full: nothing more is read meanwhile.
                if self.commands.send(command).await.is_err() {
                    return End::Gone;
                }
            }
        }
    }

    fn refuse(&self, err: &ApiError) {
        self.refuse_about(err, None, None);
    }

    fn refuse_about(&self, err: &ApiError, id: Option<&str>, client_ref: Option<&str>) {
        self.outbox.push(Frame::Text(Arc::from(error_frame_body(
            err, id, client_ref,
        ))));
    }

    /// Deals with one text frame; returns a write command to queue, if it is one.
    fn parse(&self, text: &[u8]) -> Option<Command> {
        let value = match crate::domain::client_json::parse(text) {
            Ok(value) => value,
            Err(err) => {
                self.refuse(&ApiError::from(err));
                return None;
            }
        };
        let Some(command) = value.as_object() else {
            self.refuse(&ApiError::InvalidJson(BadJson::FrameNotAnObject));
            return None;
        };
        let kind = command
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match kind {
            "ping" => {
                let pong =
                    crate::domain::frames::ControlFrame::body(&crate::domain::frames::PongFrame {});
                self.outbox.push(Frame::Text(Arc::from(pong)));
                None
            }
            "resync" => {
                if !self.resyncing.swap(true, Ordering::AcqRel) {
                    self.session.do_send(Resync);
                }
                None
            }
            "update_message" | "cancel" => self.write_command(kind, command),
            "" => {
                self.refuse(&ApiError::invalid("type", Invalid::Required));
                None
            }
            other => {
                self.refuse(&ApiError::invalid(
                    "type",
                    Invalid::UnknownCommand {
                        name: other.chars().take(64).collect(),
                    },
                ));
                None
            }
        }
    }

    fn write_command(&self, kind: &str, command: &Map<String, Value>) -> Option<Command> {
        let client_ref = match command.get("ref") {
            None => None,
            Some(Value::String(client_ref)) if valid_ref(client_ref) => Some(client_ref.clone()),
            Some(_) => {
                // Named by its id, as every failed command is.
                self.refuse_about(
                    &ApiError::invalid(
                        "ref",
                        Invalid::Chars {
                            min: 1,
                            max: MAX_REF_CHARS,
                        },
                    ),
                    command.get("id").and_then(Value::as_str),
                    None,
                );
                return None;
            }
        };
        let Some(raw_id) = command.get("id").and_then(Value::as_str) else {
            self.refuse_about(
                &ApiError::invalid("id", Invalid::MessageIdRequired),
                None,
                client_ref.as_deref(),
            );
            return None;
        };
        let Ok(id) = Uuid::try_parse(raw_id) else {
            self.refuse_about(&ApiError::NotFound, Some(raw_id), client_ref.as_deref());
            return None;
        };
        if kind == "cancel" {
            return Some(Command::Cancel(id, client_ref));
        }
        match merge::client_patch_from_body(command, &["type", "id", "ref"]) {
            Ok(patch) => Some(Command::Patch(id, patch, client_ref)),
            Err(err) => {
                self.refuse_about(
                    &data_error("data", &err),
                    Some(raw_id),
                    client_ref.as_deref(),
                );
                None
            }
        }
    }
}

/// Applies a session's write commands one after another, so a client's patches land in the
/// order it sent them. A failure becomes an `error` frame naming the message (and the ref); a
/// write applied now is heard of by everyone through its event (which carries the ref); a write
/// whose ref the message remembers (a resend) is acknowledged to this session alone, with the
/// frame the first one caused.
pub(super) async fn apply_commands(
    mut commands: mpsc::Receiver<Command>,
    gateway: Gateway,
    user: Arc<str>,
    outbox: Arc<Outbox>,
) {
    // The gateway's futures are boxed: the task lives as long as its socket, mostly idle, and
    // holding them inline made every idle socket carry their size (about 2 KiB).
    while let Some(command) = commands.recv().await {
        let (id, client_ref, result) = match command {
            Command::Patch(id, patch, client_ref) => (
                id,
                client_ref.clone(),
                Box::pin(gateway.patch_once(&user, id, patch, client_ref))
                    .await
                    .map(|written| (written, true)),
            ),
            Command::Cancel(id, client_ref) => (
                id,
                client_ref.clone(),
                Box::pin(gateway.cancel_once(&user, id, client_ref))
                    .await
                    .map(|written| (written, false)),
            ),
        };
        let body = match result {
            Ok((written, _)) if !written.again => continue,
            Ok((written, patched)) => {
                let kind = if patched {
                    JobEventKind::Updated {
                        data: written.view.data.to_value(),
                        client_ref,
                    }
                } else {
                    JobEventKind::Cancelled {
                        error: written.view.error.clone(),
                        client_ref,
                    }
                };
                JobEvent {
                    user_id: user.to_string(),
                    message_id: id,
                    version: Some(written.view.version),
                    kind,
                }
                .frame_body()
            }
            Err(error) => error_frame_body(&error, Some(&id.to_string()), client_ref.as_deref()),
        };
        outbox.push(Frame::Text(Arc::from(body)));
    }
}
