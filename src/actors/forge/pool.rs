//! What this process's backends share: each backend's breaker state (so an open backend can
//! leave the queue to a healthy one), the jobs they hold, what they offer, and the handle to
//! all of them.

use super::{Abandon, ForgeActor, HandBackAll};
use crate::domain::breaker::BreakerState;
use crate::domain::models::{BackendModels, ModelCatalogue};
use crate::domain::routing::{Offer, Routing};
use actix::Addr;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The breaker state of every backend of this process.
#[derive(Clone, Default)]
pub struct BackendHealth(Arc<RwLock<HashMap<String, BreakerState>>>);

impl BackendHealth {
    pub(super) fn set(&self, backend: &str, state: BreakerState) {
        self.0.write().insert(backend.to_owned(), state);
    }

    pub(super) fn another_is_closed(&self, backend: &str) -> bool {
        self.0
            .read()
            .iter()
            .any(|(name, state)| name != backend && *state == BreakerState::Closed)
    }

    /// Whether a backend other than `backend` is healthy and lists `model`: only then may a
    /// job for it be handed to "another backend" (one nobody else lists would come back here
    /// and be declined again and again).
    pub(super) fn another_can_run(
        &self,
        backend: &str,
        models: &ModelsSeen,
        model: Option<&str>,
    ) -> bool {
        self.0.read().iter().any(|(name, state)| {
            name != backend && *state == BreakerState::Closed && models.offer(name).can_run(model)
        })
    }

    /// Each backend's breaker state.
    pub fn states(&self) -> Vec<(String, BreakerState)> {
        let mut states: Vec<_> = self.0.read().iter().map(|(n, s)| (n.clone(), *s)).collect();
        states.sort_by(|a, b| a.0.cmp(&b.0));
        states
    }
}

/// What every backend of this process offers (checkpoints, samplers, the loaded one), as
/// each last answered, and the routing of queued jobs made from it; the Forge actors write
/// it, the gateway and the HTTP layer read it.
#[derive(Clone, Default)]
pub struct ModelsSeen(Arc<RwLock<(ModelCatalogue, Arc<Routing>)>>);

impl ModelsSeen {
    /// Records what `backend` answered, or leaves it out (`None`); returns the routing of
    /// queued jobs when it changed.
    pub(super) fn set(&self, backend: &str, offers: Option<BackendModels>) -> Option<Arc<Routing>> {
        let mut seen = self.0.write();
        if !seen.0.set(backend, offers) {
            return None;
        }
        seen.1 = Arc::new(seen.0.routing());
        Some(seen.1.clone())
    }

    /// What `backend` offers the queue's pop now (its models, and the one loaded).
    pub(super) fn offer(&self, backend: &str) -> Offer {
        let seen = self.0.read();
        seen.1.offer(backend, seen.0.loaded_on(backend))
    }

    /// Records the checkpoint a job left loaded on `backend`.
    pub(super) fn loaded_now(&self, backend: &str, model: &str) {
        self.0.write().0.loaded_now(backend, model);
    }

    /// Reads the catalogue.
    pub fn read<T>(&self, read: impl FnOnce(&ModelCatalogue) -> T) -> T {
        read(&self.0.read().0)
    }
}

/// Where a held job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Taken from the queue and being run.
    Running,
    /// Its outcome is known and being written (perhaps again and again, while the database
    /// is unavailable): the watchdog must not mark it stuck meanwhile.
    Finishing,
}

/// A job a backend of this process holds.
#[derive(Clone, Copy, Debug)]
struct Held {
    phase: Phase,
    /// Its run, once it is marked processing (its lease is renewed from then on).
    run: Option<i64>,
}

/// The jobs this process's backends hold, from pop to recorded outcome.
#[derive(Clone, Default)]
pub struct Busy(Arc<Mutex<HashMap<Uuid, Held>>>);

impl Busy {
    /// Holds `id` until the guard drops.
    pub(super) fn hold(&self, id: Uuid) -> BusyGuard {
        let held = Held {
            phase: Phase::Running,
            run: None,
        };
        self.0.lock().insert(id, held);
        BusyGuard {
            busy: self.clone(),
            id,
        }
    }

    /// Jobs held now.
    pub fn count(&self) -> usize {
        self.0.lock().len()
    }

    fn is_finishing(&self, id: Uuid) -> bool {
        self.0
            .lock()
            .get(&id)
            .is_some_and(|held| held.phase == Phase::Finishing)
    }

    fn runs(&self) -> Vec<(Uuid, i64)> {
        self.0
            .lock()
            .iter()
            .filter_map(|(id, held)| Some((*id, held.run?)))
            .collect()
    }
}

/// A held job; dropping it lets go.
pub(super) struct BusyGuard {
    busy: Busy,
    id: Uuid,
}

impl BusyGuard {
    /// The job is processing as run `run`: its lease is renewed from now on.
    pub(super) fn started(&self, run: i64) {
        if let Some(held) = self.busy.0.lock().get_mut(&self.id) {
            held.run = Some(run);
        }
    }

    /// The job's outcome is being written from now on.
    pub(super) fn finishing(&self) {
        if let Some(held) = self.busy.0.lock().get_mut(&self.id) {
            held.phase = Phase::Finishing;
        }
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.busy.0.lock().remove(&self.id);
    }
}

/// Handles to every backend of this process.
#[derive(Clone, Default)]
pub struct ForgePool {
    backends: Vec<Addr<ForgeActor>>,
    health: BackendHealth,
    busy: Busy,
    models: ModelsSeen,
}

impl ForgePool {
    /// Wraps the backends' addresses.
    pub fn new(
        backends: Vec<Addr<ForgeActor>>,
        health: BackendHealth,
        busy: Busy,
        models: ModelsSeen,
    ) -> Self {
        ForgePool {
            backends,
            health,
            busy,
            models,
        }
    }

    /// What the backends offer, as they last answered.
    pub fn models(&self) -> &ModelsSeen {
        &self.models
    }

    /// Waits until no backend holds a job, or `grace` passes; returns how many still run.
    /// (Call after pausing the queue, so no new job is taken meanwhile.)
    pub async fn drain(&self, grace: Duration) -> usize {
        let deadline = Instant::now() + grace;
        while self.busy.count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.busy.count()
    }

    /// Interrupts every job still running on this process's backends and puts it back in the
    /// queue (each keeps its ticket), then waits until they are back, or `within` passes;
    /// returns how many are still held.
    pub async fn hand_back(&self, within: Duration) -> usize {
        for backend in &self.backends {
            backend.do_send(HandBackAll);
        }
        self.drain(within).await
    }

    /// The runs of the jobs this process holds, whose leases it renews.
    pub fn runs(&self) -> Vec<(Uuid, i64)> {
        self.busy.runs()
    }

    /// Whether a backend of this process holds job `id`.
    pub fn holds(&self, id: Uuid) -> bool {
        self.busy.0.lock().contains_key(&id)
    }

    /// Tells every backend to drop the job if it runs it.
    pub fn abandon(&self, id: Uuid) {
        for backend in &self.backends {
            backend.do_send(Abandon(id));
        }
    }

    /// Whether a backend of this process is writing the job's outcome right now.
    pub fn is_finishing(&self, id: Uuid) -> bool {
        self.busy.is_finishing(id)
    }

    /// Number of backends.
    pub fn len(&self) -> usize {
        self.backends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// Each backend's breaker state.
    pub fn health(&self) -> Vec<(String, BreakerState)> {
        self.health.states()
    }
}
