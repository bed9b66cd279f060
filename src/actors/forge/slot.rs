//! A slot worker's hold on one of its backend's slots ([`crate::slots`]): taken before the
//! worker asks the queue for a job, kept (its lease renewed) while it waits and runs, and from
//! one job to the next; given back when the worker hands a job to another backend, or stops.
//! A slot whose lease lapsed while held (the process froze, or Redis forgot it) and was taken
//! by another process is lost: the job running with it may end, but the worker takes no other
//! job with it, and waits in line for a slot again.
//! A worker without a slot takes no job, so a backend
//! runs at most `FORGE_SLOTS` jobs however many processes list it, and a job waits in the
//! queue (with its exact position) rather than inside Forge.

use crate::metrics::{BackendLabel, Metrics};
use crate::slots::SlotStore;
use parking_lot::Mutex;
use rand::Rng as _;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Longest pause between two tries of a worker waiting for a slot another process holds.
const SLOT_POLL: Duration = Duration::from_millis(100);
/// Longest pause between two tries while the slot store fails.
const FAILING_POLL: Duration = Duration::from_secs(1);

/// Where slots are taken, and for how long a lease lasts.
#[derive(Clone)]
pub struct Slots {
    store: Arc<dyn SlotStore>,
    lease: Duration,
    /// Per backend, the line of this process's workers waiting for a slot: only the first
    /// asks the store, so waiting costs one script per poll per backend and process, however
    /// many workers wait.
    lines: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Slots {
    /// Slots in `store`, each held for `lease` and renewed every third of it (`JOB_LEASE`).
    pub fn new(store: Arc<dyn SlotStore>, lease: Duration) -> Slots {
        Slots {
            store,
            lease,
            lines: Arc::default(),
        }
    }

    /// Waits until one of the `slots` slots of `backend` is this worker's.
    pub(super) async fn take(&self, backend: &str, slots: u32, metrics: &Arc<Metrics>) -> Slot {
        let line = self
            .lines
            .lock()
            .entry(backend.to_owned())
            .or_default()
            .clone();
        let _turn = line.lock().await;
        let holder = Uuid::now_v7().to_string();
        let mut failing = false;
        loop {
            let pause = match self.store.hold(backend, &holder, slots, self.lease).await {
                Ok(true) => break,
                Ok(false) => SLOT_POLL,
                Err(err) => {
                    if !failing {
                        tracing::warn!(backend, error = %err, "cannot take a backend slot; trying again");
                    }
                    failing = true;
                    FAILING_POLL
                }
            };
            // Jittered: workers of several processes waiting for one slot do not ask in step.
            let pause = pause.mul_f64(rand::rng().random_range(0.5..1.0));
            tokio::time::sleep(pause).await;
        }
        let label = BackendLabel {
            backend: backend.to_owned(),
        };
        metrics.forge_slots_held.get_or_create(&label).inc();
        let lost = Arc::new(AtomicBool::new(false));
        let keeper = tokio::spawn(keep(
            self.clone(),
            Held {
                backend: backend.to_owned(),
                holder: holder.clone(),
                count: slots,
                lost: lost.clone(),
            },
            metrics.clone(),
        ));
        Slot {
            slots: self.clone(),
            backend: backend.to_owned(),
            holder,
            keeper,
            metrics: metrics.clone(),
            lost,
            released: false,
        }
    }
}

/// What the keeper of a held slot renews.
struct Held {
    backend: String,
    holder: String,
    /// The backend's `FORGE_SLOTS`.
    count: u32,
    /// Set while the slot is someone else's (see the module doc).
    lost: Arc<AtomicBool>,
}

/// Renews a held slot's lease every third of it until aborted.
async fn keep(slots: Slots, held: Held, metrics: Arc<Metrics>) {
    let Held {
        backend,
        holder,
        count,
        lost,
    } = held;
    let mut tick = tokio::time::interval(slots.lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match slots
            .store
            .hold(&backend, &holder, count, slots.lease)
            .await
        {
            // Renewed, or taken back because one was free.
            Ok(true) => lost.store(false, Ordering::Release),
            Ok(false) => {
                // Its lease lapsed (Redis forgot it, or renewals failed for a whole lease) and
                // every slot is someone else's now: the backend runs one job too many until
                // the job running with it ends; the worker takes no other job with it.
                if !lost.swap(true, Ordering::AcqRel) {
                    metrics
                        .forge_slots_lost
                        .get_or_create(&BackendLabel {
                            backend: backend.clone(),
                        })
                        .inc();
                    tracing::warn!(
                        backend,
                        "a backend slot's lease was lost while held; it is given up"
                    );
                }
            }
            Err(err) => {
                tracing::warn!(backend, error = %err, "cannot renew a backend slot's lease")
            }
        }
    }
}

/// A held slot. Give it back with [`Slot::release`]; dropped without it (a worker aborted at
/// shutdown), it is given back in the background.
pub(super) struct Slot {
    slots: Slots,
    backend: String,
    holder: String,
    keeper: JoinHandle<()>,
    metrics: Arc<Metrics>,
    lost: Arc<AtomicBool>,
    released: bool,
}

impl Slot {
    /// Whether another process holds this slot now (its lease lapsed while held): no job may
    /// start with it.
    pub(super) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Gives the slot back.
    pub(super) async fn release(mut self) {
        self.let_go();
        if let Err(err) = self.slots.store.release(&self.backend, &self.holder).await {
            // It lapses by itself after one lease.
            tracing::warn!(backend = self.backend, error = %err, "cannot give a backend slot back");
        }
    }

    fn let_go(&mut self) {
        if !self.released {
            self.released = true;
            self.keeper.abort();
            self.metrics
                .forge_slots_held
                .get_or_create(&BackendLabel {
                    backend: self.backend.clone(),
                })
                .dec();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.let_go();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (store, backend, holder) = (
                self.slots.store.clone(),
                self.backend.clone(),
                self.holder.clone(),
            );
            runtime.spawn(async move {
                let _ = store.release(&backend, &holder).await;
            });
        }
    }
}
