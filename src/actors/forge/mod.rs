//! `ForgeActor`: one Forge backend.
//!
//! The actor (this module) owns the set of running jobs (so they can be stopped); its slot
//! workers ([`worker`]) run the jobs on the I/O runtime, asking the backend's breaker (in
//! [`crate::breakers`]: this process's, or Redis's shared by every process) before each call;
//! [`pool`] holds what the backends share.
//!
//! Its slot workers (one per job it may run at a time) take the next job from the queue
//! whenever the breaker lets them, run txt2img with its deadline while polling progress, and
//! record the outcome through the store. While the breaker is open jobs complete at once with
//! the placeholder image, but only when no other backend is healthy: an open backend leaves
//! the queue to the healthy ones until its open period ends and it may try one trial request.

mod discovery;
mod outcome;
mod pool;
mod slot;
mod worker;

pub use pool::{BackendHealth, Busy, ForgePool, ModelsSeen};
pub use slot::Slots;

use crate::actors::queue::QueueHandle;
use crate::actors::store::StoreHandle;
use crate::breakers::BreakerStore;
use crate::domain::breaker::{BreakerState, Readiness, Transition as BreakerTransition};
use crate::forge_client::ForgeClient;
use crate::images::ImageStore;
use crate::metrics::{BackendLabel, Metrics, TransitionLabel};
use actix::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use uuid::Uuid;
use worker::Worker;

/// How a backend runs jobs.
#[derive(Clone, Debug)]
pub struct ForgeSettings {
    /// Deadline of one txt2img call (`FORGE_TIMEOUT`).
    pub timeout: Duration,
    /// Progress poll period.
    pub progress_interval: Duration,
    /// Fetch live previews.
    pub previews: bool,
    /// Jobs at a time.
    pub slots: u32,
    /// How often the backend is asked what it offers (`MODELS_REFRESH`).
    pub models_refresh: Duration,
}

/// What the slot workers need besides the actor.
#[derive(Clone)]
pub struct ForgeDeps {
    /// Where jobs come from.
    pub queue: QueueHandle,
    /// Where outcomes go.
    pub store: StoreHandle,
    /// Where images go.
    pub images: ImageStore,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Every backend's breaker state.
    pub health: BackendHealth,
    /// Jobs held by this process's backends.
    pub busy: Busy,
    /// Where backend slots are taken (shared with other processes on Redis).
    pub slots: Slots,
    /// Every backend's breaker (shared with other processes on Redis).
    pub breakers: Arc<dyn BreakerStore>,
    /// What every backend offers.
    pub models: ModelsSeen,
    /// The multi-threaded runtime the slot workers run on: their HTTP calls, image writes and
    /// store round trips would otherwise all share the actor thread.
    pub io: tokio::runtime::Handle,
}

/// One backend.
pub struct ForgeActor {
    client: ForgeClient,
    deps: ForgeDeps,
    settings: ForgeSettings,
    running: HashMap<Uuid, oneshot::Sender<Stop>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl ForgeActor {
    /// An actor for the backend `client` talks to.
    pub fn new(client: ForgeClient, deps: ForgeDeps, settings: ForgeSettings) -> Self {
        deps.health.set(client.name(), BreakerState::Closed);
        ForgeActor {
            client,
            deps,
            settings,
            running: HashMap::new(),
            workers: Vec::new(),
        }
    }
}

/// Logs and counts a breaker transition of `backend`, and remembers its new state.
pub(super) fn note(deps: &ForgeDeps, backend: &str, transition: Option<BreakerTransition>) {
    let Some(transition) = transition else { return };
    match transition.to {
        BreakerState::Open => tracing::warn!(
            backend,
            from = transition.from.as_str(),
            "circuit breaker opened: jobs get the placeholder until a trial succeeds"
        ),
        BreakerState::HalfOpen => tracing::info!(
            backend,
            "circuit breaker half-open: letting one trial request through"
        ),
        BreakerState::Closed => tracing::info!(
            backend,
            "circuit breaker closed: the backend is healthy again"
        ),
    }
    deps.metrics
        .breaker_transitions
        .get_or_create(&TransitionLabel {
            backend: backend.to_owned(),
            from: transition.from.as_str().to_owned(),
            to: transition.to.as_str().to_owned(),
        })
        .inc();
    seen(deps, backend, transition.to);
}

/// Remembers `backend`'s breaker state as last seen (another process may have changed it).
pub(super) fn seen(deps: &ForgeDeps, backend: &str, state: BreakerState) {
    deps.metrics
        .breaker_state
        .get_or_create(&BackendLabel {
            backend: backend.to_owned(),
        })
        .set(state.gauge());
    deps.health.set(backend, state);
}

/// The breaker state a readiness answer shows.
pub(super) fn state_of(readiness: Readiness) -> BreakerState {
    match readiness {
        Readiness::Closed | Readiness::HeldOff(_) => BreakerState::Closed,
        Readiness::Open(_) => BreakerState::Open,
        Readiness::TrialDue | Readiness::TrialRunning => BreakerState::HalfOpen,
    }
}

impl Actor for ForgeActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        seen(&self.deps, self.client.name(), BreakerState::Closed);
        for _ in 0..self.settings.slots {
            let worker = Worker {
                addr: ctx.address(),
                client: self.client.clone(),
                deps: self.deps.clone(),
                settings: self.settings.clone(),
            };
            self.workers.push(self.deps.io.spawn(worker.run_slot()));
        }
        self.workers.push(self.deps.io.spawn(discovery::discover(
            self.client.clone(),
            self.deps.models.clone(),
            self.deps.queue.clone(),
            self.settings.models_refresh,
        )));
        tracing::info!(
            backend = self.client.name(),
            slots = self.settings.slots,
            "Forge backend ready"
        );
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        // The workers live on the I/O runtime, not in this actor's context: stop them with it.
        for worker in self.workers.drain(..) {
            worker.abort();
        }
    }
}

/// Why a running job's worker must stop calling Forge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stop {
    /// It was cancelled or marked stuck: its terminal state is written already.
    Abandoned,
    /// This process is shutting down: the job goes back to the queue to run elsewhere.
    HandBack,
}

/// A worker calls Forge for job `id` (its breaker admitted the call): the job counts as running
/// here, so it can be stopped, until [`Ended`].
#[derive(Message)]
#[rtype(result = "()")]
struct Running {
    id: Uuid,
    stop: oneshot::Sender<Stop>,
}

impl Handler<Running> for ForgeActor {
    type Result = ();

    fn handle(&mut self, msg: Running, _ctx: &mut Context<Self>) {
        self.running.insert(msg.id, msg.stop);
    }
}

/// The call for job `id` is over: it no longer runs here.
#[derive(Message)]
#[rtype(result = "()")]
struct Ended {
    id: Uuid,
}

impl Handler<Ended> for ForgeActor {
    type Result = ();

    fn handle(&mut self, msg: Ended, _ctx: &mut Context<Self>) {
        self.running.remove(&msg.id);
    }
}

/// Stop working on a job (it was cancelled or marked stuck): interrupt it on Forge.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Abandon(pub Uuid);

impl Handler<Abandon> for ForgeActor {
    type Result = ();

    fn handle(&mut self, msg: Abandon, _ctx: &mut Context<Self>) {
        if let Some(signal) = self.running.remove(&msg.0) {
            tracing::info!(backend = self.client.name(), job = %msg.0, "abandoning a running job");
            let _ = signal.send(Stop::Abandoned);
        }
    }
}

/// The process is shutting down: every job running here is interrupted on Forge and goes back
/// to the queue (see `worker`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct HandBackAll;

impl Handler<HandBackAll> for ForgeActor {
    type Result = ();

    fn handle(&mut self, _msg: HandBackAll, _ctx: &mut Context<Self>) {
        for (id, signal) in self.running.drain() {
            tracing::info!(backend = self.client.name(), job = %id, "handing a running job back to the queue");
            let _ = signal.send(Stop::HandBack);
        }
    }
}
