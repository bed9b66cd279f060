//! `SessionActor`: one browser connection's state.
//!
//! On start it sends `hello`, attaches to the session registry and sends a `snapshot` of the
//! user's pending messages; frames the registry delivers meanwhile wait in the mailbox (the
//! snapshot loads with `ctx.wait`), so they follow it. It relays its user's events and
//! positions into the [`Outbox`], answers `resync` with a new snapshot (one at a time),
//! pings every heartbeat and drops a silent client. The socket itself is served by the tasks
//! of [`super::serve`]: a reader that parses and applies the client's commands, and a writer
//! that drains the outbox.
//!
//! Positions come from this process's queue mirror and carry its version: the snapshot's and
//! every later frame's. A frame older than what the session showed is dropped, and a
//! `job.queued` event (written before the position frames that follow it were computed, but
//! delivered after the commit) shows the newest position the session knows: a position shown
//! never goes back.

use super::outbox::{Coalesce, Frame, Outbox};
use crate::domain::catalogue::ApiError;
use crate::domain::catalogue::ErrorDetail;
use crate::domain::event::{JobEvent, JobEventKind, snapshot_frame_body};
use crate::domain::frames::{ControlFrame, ErrorFrame, HelloFrame};
use crate::domain::position_feed::JobPosition;
use crate::events::SessionRegistry;
use crate::events::registry::{Deliver, Permit, resync_frame_body};
use crate::gateway::Gateway;
use actix::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Timing of one session.
#[derive(Clone, Copy, Debug)]
pub struct SessionTiming {
    /// Ping period.
    pub heartbeat: Duration,
    /// Silence after which the client is dropped.
    pub idle_timeout: Duration,
}

/// When the client last showed a sign of life (any frame), shared with the socket reader.
#[derive(Debug)]
pub struct LastSeen {
    origin: Instant,
    millis: AtomicU64,
}

impl LastSeen {
    /// Seen now.
    pub fn new() -> Arc<LastSeen> {
        Arc::new(LastSeen {
            origin: Instant::now(),
            millis: AtomicU64::new(0),
        })
    }

    /// The client showed a sign of life.
    pub fn touch(&self) {
        let millis = self.origin.elapsed().as_millis() as u64;
        self.millis.fetch_max(millis, Ordering::Relaxed);
    }

    fn elapsed(&self) -> Duration {
        let seen = Duration::from_millis(self.millis.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(seen)
    }
}

/// What a session shares with its socket's tasks.
pub struct SessionParts {
    /// The user.
    pub user: Arc<str>,
    /// The frames to write.
    pub outbox: Arc<Outbox>,
    /// When the client was last heard.
    pub last_seen: Arc<LastSeen>,
    /// A `resync` is being answered (the reader sends the next one only after).
    pub resyncing: Arc<AtomicBool>,
    /// Set once `hello` and the first `snapshot` (or its error) are in the outbox: the reader
    /// reads no command before, so no answer to one comes before them.
    pub greeted: Arc<tokio::sync::watch::Sender<bool>>,
}

/// One WebSocket session.
pub struct SessionActor {
    parts: SessionParts,
    gateway: Gateway,
    registry: SessionRegistry,
    permit: Option<Permit>,
    timing: SessionTiming,
    /// The mirror version of the positions shown last.
    positions_version: u64,
    /// The newest position (and estimate) shown of each queued message.
    positions: HashMap<Uuid, (u32, Option<u32>)>,
    /// The socket's service ended the session ([`Closed`]): it says goodbye itself.
    socket_ended: bool,
}

impl SessionActor {
    /// A session of the permit's user.
    pub fn new(
        parts: SessionParts,
        permit: Permit,
        gateway: Gateway,
        registry: SessionRegistry,
        timing: SessionTiming,
    ) -> Self {
        SessionActor {
            parts,
            gateway,
            registry,
            permit: Some(permit),
            timing,
            positions_version: 0,
            positions: HashMap::new(),
            socket_ended: false,
        }
    }

    fn push_text(&self, body: String) {
        self.parts.outbox.push(Frame::Text(Arc::from(body)));
    }

    /// Loads and sends the snapshot; the mailbox waits meanwhile so frames follow it.
    fn send_snapshot(&mut self, ctx: &mut Context<Self>) {
        let (gateway, user) = (self.gateway.clone(), self.parts.user.clone());
        ctx.wait(
            async move { gateway.snapshot(&user).await }
                .into_actor(self)
                .map(|snapshot, act, _ctx| {
                    match snapshot {
                        Ok(snapshot) => {
                            if snapshot.positions_version >= act.positions_version {
                                act.positions_version = snapshot.positions_version;
                                act.positions = snapshot
                                    .positions
                                    .into_iter()
                                    .map(|(id, position)| (id, (position, None)))
                                    .collect();
                            }
                            act.push_text(snapshot_frame_body(&snapshot.views));
                        }
                        Err(err) => {
                            tracing::warn!(user = %act.parts.user, error = ?err, "snapshot failed");
                            act.push_text(error_frame_body(&err, None, None));
                        }
                    }
                    act.parts.resyncing.store(false, Ordering::Release);
                    act.parts.greeted.send_replace(true);
                }),
        );
    }

    /// A `job.queued` frame with the newest position this session knows of the message; the
    /// position shown is remembered.
    fn queued_body(&mut self, body: Arc<str>, event: &JobEvent) -> Arc<str> {
        let id = event.message_id;
        let Some(&(position, _)) = self.positions.get(&id) else {
            if let JobEventKind::Queued {
                queue_position: Some(entered_at),
            } = event.kind
            {
                self.positions.insert(id, (entered_at, None));
            }
            return body;
        };
        Arc::from(event.queued_frame_body(position))
    }
}

/// An `error` frame body for `err`, about the command on message `id` if any, with the
/// command's `ref` if it had one.
pub fn error_frame_body(err: &ApiError, id: Option<&str>, client_ref: Option<&str>) -> String {
    ErrorFrame {
        error: ErrorDetail::from(err),
        id,
        client_ref,
    }
    .body()
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.push_text(
            HelloFrame {
                user: &self.parts.user,
                server_time: chrono::Utc::now(),
            }
            .body(),
        );
        if let Some(permit) = &self.permit {
            self.registry.attach(permit, ctx.address().recipient());
        }
        self.send_snapshot(ctx);
        ctx.run_interval(self.timing.heartbeat, |act, ctx| {
            if act.parts.last_seen.elapsed() > act.timing.idle_timeout {
                tracing::debug!(user = %act.parts.user, "dropping a silent WebSocket client");
                act.parts.outbox.push(Frame::Close(1001, "idle timeout"));
                ctx.stop();
            } else {
                act.parts.outbox.push(Frame::Ping);
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        // Dropping the permit unregisters the session.
        self.permit = None;
        // Stopped with its socket open and no close of its own: the actor system is stopping
        // (a shutdown whose broadcast did not reach this session first). The client is to
        // reconnect, as after any shutdown: 1001, never 1000 ("the session ended").
        if !self.socket_ended && !self.parts.outbox.is_closed() {
            self.parts
                .outbox
                .push(Frame::Close(1001, "server shutting down"));
        }
    }
}

impl Handler<Deliver> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Context<Self>) {
        match msg {
            Deliver::Event {
                body,
                queued,
                updates,
            } => {
                let body = match queued {
                    Some(event) => self.queued_body(body, &event),
                    None => body,
                };
                self.parts
                    .outbox
                    .push_keyed(Frame::Text(body), updates.map(Coalesce::Updated));
            }
            Deliver::Positions {
                version,
                positions,
                body,
                complete,
            } => {
                // A partial frame may follow another of the same version (the rest of the
                // user's jobs, in turns); a complete one at the same version says nothing new.
                if version < self.positions_version
                    || (complete && version == self.positions_version)
                {
                    return;
                }
                self.positions_version = version;
                // A complete frame that shows every queued job where (and with the estimate)
                // this session last showed it (a new session of the same user makes the feed tell the user again) is
                // not sent: a client sees each position once. (Jobs it lacks have left the
                // queue; their events say so.)
                let shown = |job: &JobPosition| (job.queue_position, job.eta_s);
                if complete
                    && positions
                        .iter()
                        .all(|job| self.positions.get(&job.id) == Some(&shown(job)))
                {
                    return;
                }
                // Only what was shown last is kept (bounded by a frame's size): a `job.queued`
                // frame of another job keeps its own position, which the client's
                // never-go-back rule sets right.
                self.positions = positions.iter().map(|job| (job.id, shown(job))).collect();
                self.parts
                    .outbox
                    .push_keyed(Frame::Text(body), complete.then_some(Coalesce::Positions));
            }
            Deliver::Resync => {
                self.parts
                    .outbox
                    .push(Frame::Text(Arc::from(resync_frame_body())));
            }
            Deliver::Shutdown => {
                self.parts
                    .outbox
                    .push(Frame::Close(1001, "server shutting down"));
                ctx.stop();
            }
        }
    }
}

/// The client asked for a new snapshot (`resync`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resync;

impl Handler<Resync> for SessionActor {
    type Result = ();

    fn handle(&mut self, _msg: Resync, ctx: &mut Context<Self>) {
        self.send_snapshot(ctx);
    }
}

/// The socket's reading ended (the client closed or left, the token expired): end the session
/// now, so it no longer counts against the caps nor gets events. The socket's service still
/// writes what answers the commands already read, and its own close frame.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Closed;

impl Handler<Closed> for SessionActor {
    type Result = ();

    fn handle(&mut self, _msg: Closed, ctx: &mut Context<Self>) {
        self.socket_ended = true;
        ctx.stop();
    }
}
