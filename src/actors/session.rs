//! `SessionActor`: one browser connection.
//!
//! On start it sends `hello`, registers with the hub and sends a `snapshot` of the user's
//! pending messages with live positions; events that arrive while the snapshot loads wait in
//! the mailbox (the load runs with `ctx.wait`), so they follow it. It relays only its own
//! user's events, answers client commands, pings every heartbeat and drops a silent client.
//! The socket itself is served by two tasks of the HTTP runtime: a reader that forwards
//! frames here and a writer that drains the [`Outbox`].

use crate::domain::catalogue::ApiError;
use crate::domain::event::{control_frame_body, snapshot_frame_body};
use crate::domain::merge;
use crate::domain::params::data_error;
use crate::events::SessionHub;
use crate::events::outbox::{Frame, Outbox};
use crate::gateway::Gateway;
use actix::prelude::*;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Largest client frame the session reads (bigger ones get an `error` event).
pub const MAX_CLIENT_FRAME: usize = 64 * 1024;

/// Something for the session to send.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub enum Deliver {
    /// A frame body (without `seq`); `position_of` marks a `job.position` that may coalesce.
    Frame {
        /// The body.
        body: Arc<str>,
        /// The message whose position this is.
        position_of: Option<Uuid>,
    },
    /// The server is shutting down: close the connection.
    Shutdown,
}

/// What the reader task saw on the socket.
#[derive(Message)]
#[rtype(result = "()")]
pub enum Inbound {
    /// A text frame.
    Text(String),
    /// A binary frame (not part of the protocol).
    Binary(usize),
    /// A frame larger than [`MAX_CLIENT_FRAME`].
    TooLarge(usize),
    /// A ping, pong or anything else that shows the client is alive.
    Alive,
    /// The socket closed or failed.
    Closed,
}

/// A client command that writes, applied in the order the client sent it.
enum Command {
    Patch(Uuid, Value),
    Cancel(Uuid),
}

/// A command failed: tell the client.
#[derive(Message)]
#[rtype(result = "()")]
struct CommandFailed {
    error: ApiError,
    id: Uuid,
}

/// Applies a session's write commands one after another, so a client's patches land in the
/// order it sent them. The task outlives the actor: commands the server read are applied even
/// if the client disconnects right after sending them.
async fn apply_commands(
    mut commands: mpsc::UnboundedReceiver<Command>,
    gateway: Gateway,
    user: String,
    session: Addr<SessionActor>,
) {
    while let Some(command) = commands.recv().await {
        let (id, result) = match command {
            Command::Patch(id, patch) => (id, gateway.patch(&user, id, patch).await.map(|_| ())),
            Command::Cancel(id) => (id, gateway.cancel(&user, id).await.map(|_| ())),
        };
        if let Err(error) = result {
            session.do_send(CommandFailed { error, id });
        }
    }
}

/// Timing of one session.
#[derive(Clone, Copy, Debug)]
pub struct SessionTiming {
    /// Ping period.
    pub heartbeat: Duration,
    /// Silence after which the client is dropped.
    pub idle_timeout: Duration,
}

/// One WebSocket session.
pub struct SessionActor {
    user: String,
    outbox: Arc<Outbox>,
    hub: SessionHub,
    gateway: Gateway,
    timing: SessionTiming,
    last_seen: Instant,
    registration: Option<u64>,
    commands: mpsc::UnboundedSender<Command>,
    pending_commands: Option<mpsc::UnboundedReceiver<Command>>,
}

impl SessionActor {
    /// A session of `user` writing into `outbox`.
    pub fn new(
        user: String,
        outbox: Arc<Outbox>,
        hub: SessionHub,
        gateway: Gateway,
        timing: SessionTiming,
    ) -> Self {
        let (commands, pending_commands) = mpsc::unbounded_channel();
        SessionActor {
            user,
            outbox,
            hub,
            gateway,
            timing,
            last_seen: Instant::now(),
            registration: None,
            commands,
            pending_commands: Some(pending_commands),
        }
    }

    fn send_control(&self, kind: &str, fields: Map<String, Value>) {
        self.outbox
            .push(Frame::Text(Arc::from(control_frame_body(kind, fields))));
    }

    fn send_error(&self, err: &ApiError, command_id: Option<&str>) {
        let mut error = Map::new();
        error.insert("code".into(), Value::from(err.code()));
        error.insert("message".into(), Value::from(err.message()));
        if let Some(field) = err.field() {
            error.insert("field".into(), Value::from(field));
        }
        let mut fields = Map::new();
        fields.insert("error".into(), Value::Object(error));
        if let Some(id) = command_id {
            fields.insert("id".into(), Value::from(id));
        }
        self.send_control("error", fields);
    }

    /// Loads and sends the snapshot; the mailbox waits meanwhile so events follow it.
    fn send_snapshot(&mut self, ctx: &mut Context<Self>) {
        let (gateway, user) = (self.gateway.clone(), self.user.clone());
        ctx.wait(
            async move { gateway.pending_views(&user).await }
                .into_actor(self)
                .map(|views, act, _ctx| match views {
                    Ok(views) => {
                        act.outbox
                            .push(Frame::Text(Arc::from(snapshot_frame_body(&views))));
                    }
                    Err(err) => {
                        tracing::warn!(user = %act.user, error = ?err, "snapshot failed");
                        act.send_error(&err, None);
                    }
                }),
        );
    }

    fn handle_text(&mut self, text: String, ctx: &mut Context<Self>) {
        let value = match crate::domain::client_json::parse(text.as_bytes()) {
            Ok(value) => value,
            Err(err) => return self.send_error(&ApiError::from(err), None),
        };
        let Some(command) = value.as_object() else {
            return self.send_error(
                &ApiError::InvalidJson {
                    message: "Mesaj bir JSON nesnesi olmalıdır.".into(),
                },
                None,
            );
        };
        let kind = command
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match kind {
            "ping" => self.send_control("pong", Map::new()),
            "resync" => self.send_snapshot(ctx),
            "update_message" | "cancel" => {
                let Some(raw_id) = command.get("id").and_then(Value::as_str) else {
                    return self.send_error(
                        &ApiError::validation("id", "id alanı zorunludur (mesaj kimliği)."),
                        None,
                    );
                };
                let Ok(id) = Uuid::try_parse(raw_id) else {
                    return self.send_error(&ApiError::NotFound, Some(raw_id));
                };
                let command = if kind == "cancel" {
                    Command::Cancel(id)
                } else {
                    match merge::client_patch_from_body(command, &["type", "id"]) {
                        Ok(patch) => Command::Patch(id, patch),
                        Err(err) => {
                            return self.send_error(&data_error("data", &err), Some(raw_id));
                        }
                    }
                };
                if self.commands.send(command).is_err() {
                    self.send_error(&ApiError::Unavailable, Some(raw_id));
                }
            }
            "" => self.send_error(
                &ApiError::validation("type", "type alanı zorunludur."),
                None,
            ),
            other => self.send_error(
                &ApiError::validation(
                    "type",
                    format!(
                        "Bilinmeyen komut: '{}'.",
                        other.chars().take(64).collect::<String>()
                    ),
                ),
                None,
            ),
        }
    }
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.send_control(
            "hello",
            Map::from_iter([
                ("user".to_owned(), Value::from(self.user.clone())),
                ("server_time".to_owned(), json!(chrono::Utc::now())),
            ]),
        );
        self.registration = Some(self.hub.register(&self.user, ctx.address().recipient()));
        if let Some(commands) = self.pending_commands.take() {
            actix::spawn(apply_commands(
                commands,
                self.gateway.clone(),
                self.user.clone(),
                ctx.address(),
            ));
        }
        self.send_snapshot(ctx);
        ctx.run_interval(self.timing.heartbeat, |act, ctx| {
            if act.last_seen.elapsed() > act.timing.idle_timeout {
                tracing::debug!(user = %act.user, "dropping a silent WebSocket client");
                act.outbox.push(Frame::Close("idle timeout"));
                ctx.stop();
            } else {
                act.outbox.push(Frame::Ping);
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        if let Some(id) = self.registration.take() {
            self.hub.unregister(&self.user, id);
        }
        if !self.outbox.is_closed() {
            self.outbox.push(Frame::Close("session ended"));
        }
    }
}

impl Handler<Deliver> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Context<Self>) {
        match msg {
            Deliver::Frame {
                body,
                position_of: Some(id),
            } => {
                self.outbox.push_position(id, body);
            }
            Deliver::Frame {
                body,
                position_of: None,
            } => {
                self.outbox.push(Frame::Text(body));
            }
            Deliver::Shutdown => {
                self.outbox.push(Frame::Close("server shutting down"));
                ctx.stop();
            }
        }
    }
}

impl Handler<CommandFailed> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: CommandFailed, _ctx: &mut Context<Self>) {
        self.send_error(&msg.error, Some(&msg.id.to_string()));
    }
}

impl Handler<Inbound> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: Inbound, ctx: &mut Context<Self>) {
        self.last_seen = Instant::now();
        match msg {
            Inbound::Text(text) => self.handle_text(text, ctx),
            Inbound::Binary(_) => self.send_error(
                &ApiError::InvalidJson {
                    message: "İkili (binary) çerçeveler desteklenmiyor; JSON metin gönderin."
                        .into(),
                },
                None,
            ),
            Inbound::TooLarge(size) => self.send_error(
                &ApiError::PayloadTooLarge {
                    limit: MAX_CLIENT_FRAME.max(size.min(MAX_CLIENT_FRAME)),
                },
                None,
            ),
            Inbound::Alive => {}
            Inbound::Closed => {
                self.outbox.abandon();
                ctx.stop();
            }
        }
    }
}

/// The typed handle to a session.
#[derive(Clone)]
pub struct SessionHandle {
    addr: Addr<SessionActor>,
}

impl SessionHandle {
    /// Starts a session on `arbiter`.
    pub fn start(arbiter: &actix::ArbiterHandle, session: SessionActor) -> SessionHandle {
        let addr = SessionActor::start_in_arbiter(arbiter, move |_| session);
        SessionHandle { addr }
    }

    /// Forwards what the socket reader saw.
    pub fn inbound(&self, inbound: Inbound) {
        self.addr.do_send(inbound);
    }
}
