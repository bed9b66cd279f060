//! `ForgeActor`: one Forge backend.
//!
//! The actor owns the backend's circuit breaker and the set of jobs it runs; its slot workers
//! (one per job it may run at a time) take the next job from the queue whenever the breaker
//! lets them, run txt2img with its deadline while polling progress, and record the outcome
//! through the store. While the breaker is open jobs complete at once with the placeholder
//! image, but only when no other backend is healthy: an open backend leaves the queue to the
//! healthy ones until its open period ends and it may try one trial request.

use crate::actors::queue::QueueHandle;
use crate::actors::store::{StoreError, StoreHandle};
use crate::domain::breaker::{
    Admission, BreakerState, CallOutcome, CircuitBreaker, Transition as BreakerTransition,
};
use crate::domain::catalogue::JobFailure;
use crate::domain::change::{Change, Refusal, Transition};
use crate::domain::event::{JobEvent, JobEventKind};
use crate::domain::message::Message;
use crate::domain::queue_book::QueuedJob;
use crate::events::EventBus;
use crate::forge_client::{ForgeClient, ForgeFailure};
use crate::images::{ImageStore, PLACEHOLDER_URL};
use crate::metrics::{BackendLabel, Metrics, OutcomeLabel, TransitionLabel};
use actix::prelude::*;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use uuid::Uuid;

/// Deadline of storing a generated image.
const STORAGE_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Consecutive failures that open the breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open.
    pub breaker_open_for: Duration,
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
    /// Where ephemeral events (previews) go.
    pub bus: Arc<dyn EventBus>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Every backend's breaker state.
    pub health: BackendHealth,
    /// Jobs held by this process's backends.
    pub busy: Busy,
    /// The multi-threaded runtime the slot workers run on: their HTTP calls, image writes and
    /// store round trips would otherwise all share the actor thread.
    pub io: tokio::runtime::Handle,
}

/// The breaker state of every backend of this process, so an open backend can tell whether
/// another one can serve the queue.
#[derive(Clone, Default)]
pub struct BackendHealth(Arc<RwLock<HashMap<String, BreakerState>>>);

impl BackendHealth {
    fn set(&self, backend: &str, state: BreakerState) {
        self.0.write().insert(backend.to_owned(), state);
    }

    fn another_is_closed(&self, backend: &str) -> bool {
        self.0
            .read()
            .iter()
            .any(|(name, state)| name != backend && *state == BreakerState::Closed)
    }

    /// Each backend's breaker state.
    pub fn states(&self) -> Vec<(String, BreakerState)> {
        let mut states: Vec<_> = self.0.read().iter().map(|(n, s)| (n.clone(), *s)).collect();
        states.sort_by(|a, b| a.0.cmp(&b.0));
        states
    }
}

/// One backend.
pub struct ForgeActor {
    client: ForgeClient,
    deps: ForgeDeps,
    settings: ForgeSettings,
    breaker: CircuitBreaker,
    running: HashMap<Uuid, oneshot::Sender<()>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl ForgeActor {
    /// An actor for the backend `client` talks to.
    pub fn new(client: ForgeClient, deps: ForgeDeps, settings: ForgeSettings) -> Self {
        let breaker = CircuitBreaker::new(settings.breaker_failures, settings.breaker_open_for);
        deps.health.set(client.name(), BreakerState::Closed);
        ForgeActor {
            client,
            deps,
            settings,
            breaker,
            running: HashMap::new(),
            workers: Vec::new(),
        }
    }

    fn label(&self) -> BackendLabel {
        BackendLabel {
            backend: self.client.name().to_owned(),
        }
    }

    fn note(&self, transition: Option<BreakerTransition>) {
        let Some(transition) = transition else { return };
        let backend = self.client.name();
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
        self.deps
            .metrics
            .breaker_transitions
            .get_or_create(&TransitionLabel {
                backend: backend.to_owned(),
                from: transition.from.as_str().to_owned(),
                to: transition.to.as_str().to_owned(),
            })
            .inc();
        self.deps
            .metrics
            .breaker_state
            .get_or_create(&self.label())
            .set(transition.to.gauge());
        self.deps.health.set(backend, transition.to);
    }
}

impl Actor for ForgeActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.deps
            .metrics
            .breaker_state
            .get_or_create(&self.label())
            .set(0);
        for _ in 0..self.settings.slots {
            let worker = Worker {
                addr: ctx.address(),
                client: self.client.clone(),
                deps: self.deps.clone(),
                settings: self.settings.clone(),
            };
            self.workers.push(self.deps.io.spawn(worker.run_slot()));
        }
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

/// May this backend take a job now?
#[derive(Message)]
#[rtype(result = "Gate")]
struct MayTake;

/// The answer to [`MayTake`].
enum Gate {
    Take,
    WaitFor(Duration),
}

impl Handler<MayTake> for ForgeActor {
    type Result = MessageResult<MayTake>;

    fn handle(&mut self, _msg: MayTake, _ctx: &mut Context<Self>) -> Self::Result {
        let now = Instant::now();
        let gate = match (self.breaker.state(), self.breaker.open_until()) {
            (BreakerState::Closed, _) => Gate::Take,
            (BreakerState::Open, Some(until)) if now >= until => Gate::Take,
            (BreakerState::Open, Some(until))
                if self.deps.health.another_is_closed(self.client.name()) =>
            {
                Gate::WaitFor((until - now).min(Duration::from_secs(1)))
            }
            (BreakerState::Open, _) => Gate::Take,
            (BreakerState::HalfOpen, _) if self.running.is_empty() => Gate::Take,
            (BreakerState::HalfOpen, _) => Gate::WaitFor(Duration::from_millis(50)),
        };
        MessageResult(gate)
    }
}

/// A worker is about to call Forge for job `id`: may it (the breaker decides), and if so the
/// job counts as running here (so it can be abandoned) until [`Ended`].
#[derive(Message)]
#[rtype(result = "Admission")]
struct Admit {
    id: Uuid,
    abandon: oneshot::Sender<()>,
}

impl Handler<Admit> for ForgeActor {
    type Result = MessageResult<Admit>;

    fn handle(&mut self, msg: Admit, _ctx: &mut Context<Self>) -> Self::Result {
        let (admission, transition) = self.breaker.admit(Instant::now());
        self.note(transition);
        if admission != Admission::Rejected {
            self.running.insert(msg.id, msg.abandon);
        }
        MessageResult(admission)
    }
}

/// The call for job `id` is over: it no longer runs here, and its outcome goes to the breaker.
/// (One message for both: a message to the actor per step is a thread hop per step.)
#[derive(Message)]
#[rtype(result = "()")]
struct Ended {
    id: Uuid,
    admission: Admission,
    outcome: CallOutcome,
}

impl Handler<Ended> for ForgeActor {
    type Result = ();

    fn handle(&mut self, msg: Ended, _ctx: &mut Context<Self>) {
        self.running.remove(&msg.id);
        let transition = self
            .breaker
            .record(msg.admission, msg.outcome, Instant::now());
        self.note(transition);
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
            let _ = signal.send(());
        }
    }
}

/// One slot of a backend: takes a job, runs it, repeats.
struct Worker {
    addr: Addr<ForgeActor>,
    client: ForgeClient,
    deps: ForgeDeps,
    settings: ForgeSettings,
}

enum Ran {
    Generated(Result<crate::forge_client::Generated, ForgeFailure>),
    Abandoned,
}

impl Worker {
    async fn run_slot(self) {
        loop {
            match self.addr.send(MayTake).await {
                Ok(Gate::Take) => {}
                Ok(Gate::WaitFor(pause)) => {
                    tokio::time::sleep(pause).await;
                    continue;
                }
                Err(_) => return,
            }
            let Some(job) = self.deps.queue.next_job().await else {
                return;
            };
            let _busy = self.deps.busy.hold();
            self.run_job(job).await;
        }
    }

    async fn run_job(&self, job: QueuedJob) {
        let started = Instant::now();
        let Some(message) = self.mark_processing(&job).await else {
            return;
        };
        let (abandon, abandoned) = oneshot::channel();
        let Ok(admission) = self
            .addr
            .send(Admit {
                id: job.id,
                abandon,
            })
            .await
        else {
            return;
        };
        if admission == Admission::Rejected {
            self.deps.metrics.placeholders_served.inc();
            tracing::info!(backend = self.client.name(), job = %job.id, "breaker open: serving the placeholder image");
            self.finish(
                &message,
                Transition::Complete {
                    image_url: PLACEHOLDER_URL.to_owned(),
                    placeholder: true,
                },
                started,
            )
            .await;
            return;
        }
        let generation = tokio::select! {
            result = self.generate(&message) => Ran::Generated(result),
            _ = abandoned => Ran::Abandoned,
        };
        let id = job.id;
        let latency = started.elapsed().as_secs_f64();
        let backend = self.client.name().to_owned();
        match generation {
            Ran::Abandoned => {
                self.addr.do_send(Ended {
                    id,
                    admission,
                    outcome: CallOutcome::Neutral,
                });
                self.interrupt(job.id);
            }
            Ran::Generated(Ok(generated)) => {
                self.addr.do_send(Ended {
                    id,
                    admission,
                    outcome: CallOutcome::Success,
                });
                self.deps
                    .metrics
                    .forge_latency_seconds
                    .get_or_create(&BackendLabel {
                        backend: backend.clone(),
                    })
                    .observe(latency);
                self.deps
                    .metrics
                    .forge_requests
                    .get_or_create(&OutcomeLabel {
                        backend,
                        outcome: "ok".into(),
                    })
                    .inc();
                let saved = tokio::time::timeout(
                    STORAGE_TIMEOUT,
                    self.deps.images.save(job.id, &generated.png),
                )
                .await;
                match saved {
                    Ok(Ok(image_url)) => {
                        self.finish(
                            &message,
                            Transition::Complete {
                                image_url,
                                placeholder: false,
                            },
                            started,
                        )
                        .await;
                    }
                    failed => {
                        // A storage step that ran out of time is R9.2's "any other deadline".
                        let failure = match failed {
                            Err(_) => JobFailure::Timeout,
                            Ok(_) => JobFailure::Unknown,
                        };
                        tracing::error!(job = %job.id, outcome = ?failed.map(|saved| saved.map(|_| ())), "could not store the image");
                        let error = failure.to_error();
                        self.finish(&message, Transition::Fail { error }, started)
                            .await;
                    }
                }
            }
            Ran::Generated(Err(failure)) => {
                self.addr.do_send(Ended {
                    id,
                    admission,
                    outcome: failure.breaker_outcome(),
                });
                self.deps
                    .metrics
                    .forge_latency_seconds
                    .get_or_create(&BackendLabel {
                        backend: backend.clone(),
                    })
                    .observe(latency);
                self.deps
                    .metrics
                    .forge_requests
                    .get_or_create(&OutcomeLabel {
                        backend: backend.clone(),
                        outcome: failure.label().into(),
                    })
                    .inc();
                tracing::warn!(job = %job.id, backend, cause = %failure, "Forge call failed");
                if failure == ForgeFailure::Timeout {
                    // Forge has no timeout of its own: stop the abandoned generation.
                    self.interrupt(job.id);
                }
                let error = failure.job_failure(self.settings.timeout).to_error();
                self.finish(&message, Transition::Fail { error }, started)
                    .await;
            }
        }
    }

    /// Moves the job to processing. The create of a job popped right after its enqueue may
    /// still be in flight, so a missing row is waited for a little.
    async fn mark_processing(&self, job: &QueuedJob) -> Option<Message> {
        let change = || {
            Change::Transition(Transition::Processing {
                backend: self.client.name().to_owned(),
            })
        };
        let mut pause = Duration::from_millis(5);
        let give_up = Instant::now() + Duration::from_secs(5);
        loop {
            match self.deps.store.apply(job.id, change()).await {
                Ok(message) => return Some(message),
                Err(StoreError::Refused(Refusal::NotFound)) if Instant::now() < give_up => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(250));
                }
                Err(StoreError::Refused(Refusal::NotFound)) => {
                    tracing::warn!(job = %job.id, "queued job has no record (its create failed); dropping it");
                    let _ = self.deps.queue.release(&job.user_id, job.id).await;
                    return None;
                }
                Err(StoreError::Refused(refusal)) => {
                    tracing::info!(job = %job.id, %refusal, "popped job is no longer queued; skipping it");
                    return None;
                }
                Err(err) => {
                    tracing::error!(job = %job.id, error = %err, "could not mark the job processing; putting it back");
                    let _ = self.deps.queue.requeue(job).await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    return None;
                }
            }
        }
    }

    /// Runs txt2img while polling progress (when this backend runs one job at a time:
    /// Forge's progress is global to the server).
    async fn generate(
        &self,
        message: &Message,
    ) -> Result<crate::forge_client::Generated, ForgeFailure> {
        let call = self.client.txt2img(&message.prompt, &message.params);
        if self.settings.slots != 1 {
            return call.await;
        }
        tokio::select! {
            result = call => result,
            () = self.poll_progress(message) => unreachable_poll(),
        }
    }

    async fn poll_progress(&self, message: &Message) {
        let id = message.id;
        let mut last_step = 0;
        // Previews change no record; they carry the version of the job's last write, so a
        // client orders them like the write they follow (a late one never undoes a completion).
        let mut version = message.version;
        let deadline = (self.settings.progress_interval * 3)
            .clamp(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            tokio::time::sleep(self.settings.progress_interval).await;
            let progress = match self.client.progress(self.settings.previews, deadline).await {
                Ok(progress) => progress,
                Err(err) => {
                    tracing::debug!(job = %id, error = %err, "progress poll failed");
                    continue;
                }
            };
            if progress.step > last_step {
                last_step = progress.step;
                let percent = (progress.fraction * 100.0).round().clamp(0.0, 99.0) as u8;
                let eta_s = progress.eta_seconds.map(|eta| eta.ceil() as u32);
                let written = self
                    .deps
                    .store
                    .apply(
                        id,
                        Change::Progress {
                            progress: percent,
                            eta_s,
                        },
                    )
                    .await;
                match written {
                    Ok(after) => version = after.version,
                    // Cancelled or marked stuck meanwhile: no more progress or previews; the
                    // abandon signal ends the call itself.
                    Err(StoreError::Refused(_)) => std::future::pending::<()>().await,
                    Err(_) => {}
                }
                let _ = self.deps.queue.mark_moved().await;
            }
            if let Some(png) = progress.preview_png
                && let Ok(preview_url) = self.deps.images.save_preview(id, &png).await
            {
                let event = JobEventKind::Preview { preview_url };
                self.deps
                    .bus
                    .publish(JobEvent {
                        user_id: message.user_id.clone(),
                        message_id: id,
                        version: Some(version),
                        kind: event,
                    })
                    .await;
            }
        }
    }

    async fn finish(&self, message: &Message, transition: Transition, started: Instant) {
        let status = transition.target();
        match self
            .deps
            .store
            .apply(message.id, Change::Transition(transition))
            .await
        {
            Ok(done) => {
                self.deps
                    .metrics
                    .jobs_finished
                    .get_or_create(&crate::metrics::StatusLabel {
                        status: status.as_str().into(),
                    })
                    .inc();
                let total = (done.updated_at - done.created_at)
                    .num_milliseconds()
                    .max(0) as f64
                    / 1000.0;
                self.deps.metrics.job_duration_seconds.observe(total);
                self.deps.queue.finished(started.elapsed().as_secs_f64());
            }
            Err(StoreError::Refused(refusal)) => {
                // Cancelled or marked stuck meanwhile: the terminal state stands.
                tracing::info!(job = %message.id, %refusal, "late result ignored");
            }
            Err(err) => {
                tracing::error!(job = %message.id, error = %err, "could not record the job's outcome")
            }
        }
        let _ = self.deps.queue.release(&message.user_id, message.id).await;
    }

    fn interrupt(&self, id: Uuid) {
        let client = self.client.clone();
        self.deps.io.spawn(async move {
            if let Err(err) = client.interrupt().await {
                tracing::warn!(job = %id, error = %err, "could not interrupt the generation");
            }
        });
    }
}

fn unreachable_poll() -> Result<crate::forge_client::Generated, ForgeFailure> {
    Err(ForgeFailure::BadAnswer("progress polling ended".into()))
}

/// Handles to every backend of this process.
#[derive(Clone, Default)]
pub struct ForgePool {
    backends: Vec<Addr<ForgeActor>>,
    health: BackendHealth,
    busy: Busy,
}

/// How many jobs this process's backends hold (from pop to recorded outcome).
#[derive(Clone, Default)]
pub struct Busy(Arc<std::sync::atomic::AtomicUsize>);

impl Busy {
    fn hold(&self) -> BusyGuard {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        BusyGuard(self.0.clone())
    }

    /// Jobs held now.
    pub fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

struct BusyGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl ForgePool {
    /// Wraps the backends' addresses.
    pub fn new(backends: Vec<Addr<ForgeActor>>, health: BackendHealth, busy: Busy) -> Self {
        ForgePool {
            backends,
            health,
            busy,
        }
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

    /// Tells every backend to drop the job if it runs it.
    pub fn abandon(&self, id: Uuid) {
        for backend in &self.backends {
            backend.do_send(Abandon(id));
        }
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
