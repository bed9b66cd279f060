//! The per-process registry of WebSocket sessions by user.

use crate::actors::session::Deliver;
use crate::domain::event::{JobEvent, JobEventKind, control_frame_body};
use actix::Recipient;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use uuid::Uuid;

type Sessions = Vec<(u64, Recipient<Deliver>)>;
type EndedListener = Arc<dyn Fn(Uuid) + Send + Sync>;

/// Routes each event to the sessions of its user. Cloning shares the registry.
///
/// Every job event of every gateway process passes through each process's hub, so the hub
/// also tells a listener when a job ended in error or was cancelled: the backends of this
/// process stop working on it if they run it (a cancel or a stuck mark made by another process).
#[derive(Clone, Default)]
pub struct SessionHub {
    users: Arc<RwLock<HashMap<Arc<str>, Sessions>>>,
    next_id: Arc<AtomicU64>,
    ended: Arc<RwLock<Option<EndedListener>>>,
}

impl SessionHub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a session of `user`; returns its registration id.
    pub fn register(&self, user: &str, session: Recipient<Deliver>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.users
            .write()
            .entry(Arc::from(user))
            .or_default()
            .push((id, session));
        id
    }

    /// Removes a session.
    pub fn unregister(&self, user: &str, id: u64) {
        let mut users = self.users.write();
        if let Some(sessions) = users.get_mut(user) {
            sessions.retain(|(registered, _)| *registered != id);
            if sessions.is_empty() {
                users.remove(user);
            }
        }
    }

    /// Sessions open in this process.
    pub fn session_count(&self) -> usize {
        self.users.read().values().map(Vec::len).sum()
    }

    /// Whether `user` has a session here.
    pub fn has_sessions(&self, user: &str) -> bool {
        self.users.read().contains_key(user)
    }

    /// Calls `listener` with the id of every job that ends in error or is cancelled.
    pub fn on_job_ended(&self, listener: impl Fn(Uuid) + Send + Sync + 'static) {
        *self.ended.write() = Some(Arc::new(listener));
    }

    /// Delivers a job event to its user's sessions (serialized once for all of them).
    pub fn dispatch(&self, event: &JobEvent) {
        if matches!(
            event.kind,
            JobEventKind::Error { .. } | JobEventKind::Cancelled { .. }
        ) {
            let listener = self.ended.read().clone();
            if let Some(listener) = listener {
                listener(event.message_id);
            }
        }
        let users = self.users.read();
        let Some(sessions) = users.get(event.user_id.as_str()) else {
            return;
        };
        let body: Arc<str> = Arc::from(event.frame_body());
        for (_, session) in sessions {
            session.do_send(Deliver::Frame {
                body: body.clone(),
                position_of: None,
            });
        }
    }

    /// Delivers a live position to the owner's sessions, where they coalesce per message.
    pub fn deliver_position(&self, user: &str, id: Uuid, position: u32, eta_s: Option<u32>) {
        let users = self.users.read();
        let Some(sessions) = users.get(user) else {
            return;
        };
        let event = JobEvent {
            user_id: user.to_owned(),
            message_id: id,
            version: None,
            kind: JobEventKind::Position {
                queue_position: position,
                eta_s,
            },
        };
        let body: Arc<str> = Arc::from(event.frame_body());
        for (_, session) in sessions {
            session.do_send(Deliver::Frame {
                body: body.clone(),
                position_of: Some(id),
            });
        }
    }

    /// Tells every session it may have missed events (the bus lost messages): each sends
    /// its client `resync`, and the client reloads over REST or asks for a snapshot.
    pub fn resync_all(&self) {
        let body: Arc<str> = Arc::from(control_frame_body("resync", serde_json::Map::new()));
        for sessions in self.users.read().values() {
            for (_, session) in sessions {
                session.do_send(Deliver::Frame {
                    body: body.clone(),
                    position_of: None,
                });
            }
        }
    }

    /// Tells every session the server is going away.
    pub fn close_all(&self) {
        for sessions in self.users.read().values() {
            for (_, session) in sessions {
                session.do_send(Deliver::Shutdown);
            }
        }
    }
}
