//! `RegistryActor`: who is connected to this process, and the one way frames reach them.
//!
//! It owns the map of users to their WebSocket sessions and enforces the session caps
//! (`MAX_SESSIONS_PER_USER`, `MAX_SESSIONS`) atomically with the registration. Job events from
//! the bus and position updates from the queue actor arrive as messages and leave as
//! [`Deliver`] to the sessions of the event's user (serialized once for all of them). It tells
//! the queue actor which users it serves ([`UserWatch`]) so positions are computed for
//! connected users only.
//!
//! The messages it sends are defined here, by their sender (as in the actix chat example);
//! the session actor and the queue actor implement their handlers.

use crate::domain::event::{JobEvent, JobEventKind};
use crate::domain::frames::{ControlFrame, ResyncFrame};
use crate::domain::position_feed::JobPosition;
use actix::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

/// A frame for a session to send.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub enum Deliver {
    /// A job event's frame body (without `seq`). `queued` is the event itself when it is a
    /// `job.queued`, whose position the session may know a newer value of.
    Event {
        /// The frame body.
        body: Arc<str>,
        /// The `job.queued` event, to make its frame again with a newer position.
        queued: Option<Arc<JobEvent>>,
        /// The message of a `message.updated` event: it carries the message's whole data, so
        /// an unsent earlier one of the same message may be dropped for it.
        updates: Option<Uuid>,
    },
    /// The live positions of the user's queued jobs, as of `version` of this process's queue
    /// mirror (a higher version is newer); `body` is the `job.position` or `job.positions` frame.
    Positions {
        /// The mirror's version.
        version: u64,
        /// Each queued job's position and estimate.
        positions: Arc<[JobPosition]>,
        /// The frame body.
        body: Arc<str>,
        /// Whether these are all of the user's queued jobs.
        complete: bool,
    },
    /// Events may have been lost (the bus reconnected): the client should reload.
    Resync,
    /// The server is shutting down: close the connection.
    Shutdown,
}

/// Tells the queue actor that this process has sessions of `user` (`watching`), or no longer.
/// Sent again for every new session, so it gets the positions at once.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct UserWatch {
    /// The user.
    pub user: Arc<str>,
    /// Whether a session of the user is open here.
    pub watching: bool,
}

/// The queue actor's positions for one user's sessions.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Positions {
    /// The user.
    pub user: Arc<str>,
    /// The mirror's version.
    pub version: u64,
    /// Each queued job's position and estimate.
    pub positions: Arc<[JobPosition]>,
    /// The frame body.
    pub body: Arc<str>,
    /// Whether these are all of the user's queued jobs (a newer complete frame replaces an
    /// unsent older one; a partial one cannot).
    pub complete: bool,
}

/// The session caps.
#[derive(Clone, Copy, Debug)]
pub struct SessionCaps {
    /// `MAX_SESSIONS_PER_USER`.
    pub per_user: u32,
    /// `MAX_SESSIONS`.
    pub total: u32,
}

/// Why a session was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The user has `MAX_SESSIONS_PER_USER` sessions here.
    #[error("the user has {0} sessions already")]
    PerUser(u32),
    /// This process has `MAX_SESSIONS` sessions.
    #[error("the server has {0} sessions already")]
    Total(u32),
    /// The registry is gone (shutting down).
    #[error("the registry is stopped")]
    Stopped,
}

#[derive(Default)]
struct Entry {
    /// Admitted, not attached yet.
    reserved: u32,
    sessions: Vec<(u64, Recipient<Deliver>)>,
}

impl Entry {
    fn count(&self) -> u32 {
        self.reserved + self.sessions.len() as u32
    }
}

/// The registry actor.
pub struct RegistryActor {
    caps: SessionCaps,
    users: HashMap<Arc<str>, Entry>,
    total: u32,
    next_id: u64,
    watch: Option<Recipient<UserWatch>>,
}

impl RegistryActor {
    fn release(&mut self, user: &Arc<str>, id: u64) {
        let Some(entry) = self.users.get_mut(user) else {
            return;
        };
        let before = entry.sessions.len();
        entry.sessions.retain(|(registered, _)| *registered != id);
        if entry.sessions.len() == before {
            entry.reserved = entry.reserved.saturating_sub(1);
        }
        self.total = self.total.saturating_sub(1);
        if entry.count() == 0 {
            self.users.remove(user);
            self.notify_watch(user, false);
        }
    }

    fn notify_watch(&self, user: &Arc<str>, watching: bool) {
        if let Some(watch) = &self.watch {
            watch.do_send(UserWatch {
                user: user.clone(),
                watching,
            });
        }
    }

    fn deliver(&self, user: &str, frame: &Deliver) {
        if let Some(entry) = self.users.get(user) {
            for (_, session) in &entry.sessions {
                session.do_send(frame.clone());
            }
        }
    }
}

impl Actor for RegistryActor {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "Result<u64, Refused>")]
struct AdmitSession {
    user: Arc<str>,
}

impl Handler<AdmitSession> for RegistryActor {
    type Result = Result<u64, Refused>;

    fn handle(&mut self, msg: AdmitSession, _ctx: &mut Context<Self>) -> Self::Result {
        let count = self.users.get(&msg.user).map_or(0, Entry::count);
        if count >= self.caps.per_user {
            return Err(Refused::PerUser(self.caps.per_user));
        }
        if self.total >= self.caps.total {
            return Err(Refused::Total(self.caps.total));
        }
        self.total += 1;
        self.users.entry(msg.user).or_default().reserved += 1;
        self.next_id += 1;
        Ok(self.next_id)
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Attach {
    user: Arc<str>,
    id: u64,
    session: Recipient<Deliver>,
}

impl Handler<Attach> for RegistryActor {
    type Result = ();

    fn handle(&mut self, msg: Attach, _ctx: &mut Context<Self>) {
        let Some(entry) = self.users.get_mut(&msg.user) else {
            // Released before it attached (the socket went away at once).
            return;
        };
        entry.reserved = entry.reserved.saturating_sub(1);
        entry.sessions.push((msg.id, msg.session));
        self.notify_watch(&msg.user, true);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Release {
    user: Arc<str>,
    id: u64,
}

impl Handler<Release> for RegistryActor {
    type Result = ();

    fn handle(&mut self, msg: Release, _ctx: &mut Context<Self>) {
        self.release(&msg.user, msg.id);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Dispatch(JobEvent);

impl Handler<Dispatch> for RegistryActor {
    type Result = ();

    fn handle(&mut self, Dispatch(event): Dispatch, _ctx: &mut Context<Self>) {
        if !self.users.contains_key(event.user_id.as_str()) {
            return;
        }
        let body = Arc::from(event.frame_body());
        // A `message.updated` that answers a client's ref is never replaced by a newer one: the
        // client waits for that ref.
        let updates = matches!(
            event.kind,
            JobEventKind::Updated {
                client_ref: None,
                ..
            }
        )
        .then_some(event.message_id);
        let event = Arc::new(event);
        let queued = matches!(event.kind, JobEventKind::Queued { .. }).then(|| event.clone());
        let frame = Deliver::Event {
            body,
            queued,
            updates,
        };
        self.deliver(&event.user_id, &frame);
    }
}

impl Handler<Positions> for RegistryActor {
    type Result = ();

    fn handle(&mut self, msg: Positions, _ctx: &mut Context<Self>) {
        let frame = Deliver::Positions {
            version: msg.version,
            positions: msg.positions,
            body: msg.body,
            complete: msg.complete,
        };
        self.deliver(&msg.user, &frame);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
enum Broadcast {
    Resync,
    Shutdown,
}

impl Handler<Broadcast> for RegistryActor {
    type Result = ();

    fn handle(&mut self, msg: Broadcast, _ctx: &mut Context<Self>) {
        let frame = match msg {
            Broadcast::Resync => Deliver::Resync,
            Broadcast::Shutdown => Deliver::Shutdown,
        };
        for entry in self.users.values() {
            for (_, session) in &entry.sessions {
                session.do_send(frame.clone());
            }
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Configure {
    watch: Recipient<UserWatch>,
}

impl Handler<Configure> for RegistryActor {
    type Result = ();

    fn handle(&mut self, msg: Configure, _ctx: &mut Context<Self>) {
        self.watch = Some(msg.watch);
        for user in self.users.keys() {
            self.notify_watch(user, true);
        }
    }
}

/// Sessions and users registered.
#[derive(Message)]
#[rtype(result = "(usize, usize)")]
struct CountSessions;

impl Handler<CountSessions> for RegistryActor {
    type Result = MessageResult<CountSessions>;

    fn handle(&mut self, _msg: CountSessions, _ctx: &mut Context<Self>) -> Self::Result {
        let sessions = self.users.values().map(|entry| entry.sessions.len()).sum();
        MessageResult((sessions, self.users.len()))
    }
}

/// The handle to the registry. Cloning shares it.
#[derive(Clone)]
pub struct SessionRegistry {
    addr: Addr<RegistryActor>,
}

/// An admitted session's place under the caps; dropping it frees the place.
pub struct Permit {
    registry: Addr<RegistryActor>,
    user: Arc<str>,
    id: u64,
}

impl Permit {
    /// The session's user.
    pub fn user(&self) -> &Arc<str> {
        &self.user
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.registry.do_send(Release {
            user: self.user.clone(),
            id: self.id,
        });
    }
}

impl SessionRegistry {
    /// Starts the registry on `arbiter` with the caps.
    pub fn start(arbiter: &ArbiterHandle, caps: SessionCaps) -> SessionRegistry {
        let addr = RegistryActor::start_in_arbiter(arbiter, move |_| RegistryActor {
            caps,
            users: HashMap::new(),
            total: 0,
            next_id: 0,
            watch: None,
        });
        SessionRegistry { addr }
    }

    /// Tells `watch` which users have sessions here (now, and from now on).
    pub fn watch_users_with(&self, watch: Recipient<UserWatch>) {
        self.addr.do_send(Configure { watch });
    }

    /// Takes a place for a new session of `user`, or says which cap refuses it.
    pub async fn admit(&self, user: &str) -> Result<Permit, Refused> {
        let user: Arc<str> = Arc::from(user);
        let id = self
            .addr
            .send(AdmitSession { user: user.clone() })
            .await
            .map_err(|_| Refused::Stopped)??;
        Ok(Permit {
            registry: self.addr.clone(),
            user,
            id,
        })
    }

    /// Starts delivering to `session` under `permit` (the permit stays the session's: its drop
    /// unregisters it).
    pub fn attach(&self, permit: &Permit, session: Recipient<Deliver>) {
        self.addr.do_send(Attach {
            user: permit.user.clone(),
            id: permit.id,
            session,
        });
    }

    /// Delivers a job event to its user's sessions.
    pub fn dispatch(&self, event: JobEvent) {
        self.addr.do_send(Dispatch(event));
    }

    /// The recipient of the queue actor's positions.
    pub fn positions(&self) -> Recipient<Positions> {
        self.addr.clone().recipient()
    }

    /// Tells every session it may have missed events.
    pub fn resync_all(&self) {
        self.addr.do_send(Broadcast::Resync);
    }

    /// Tells every session the server is going away.
    pub fn close_all(&self) {
        self.addr.do_send(Broadcast::Shutdown);
    }

    /// Sessions open here and their users.
    pub async fn count(&self) -> (usize, usize) {
        self.addr.send(CountSessions).await.unwrap_or_default()
    }
}

/// The `resync` frame body.
pub fn resync_frame_body() -> String {
    ResyncFrame {}.body()
}
