//! A slot worker of one backend: when the breaker lets it, takes one of the backend's slots
//! (shared by every process, see [`super::slot`]) and keeps it from one job to the next; takes
//! the next job, marks it processing, runs txt2img with its deadline while polling progress,
//! and writes the outcome.
//!
//! A job goes to another backend (back to the head of the queue, where a healthy backend's
//! worker takes it) instead of failing or getting the placeholder while another backend's
//! breaker is closed, when this backend's breaker opened after the worker took the job, or
//! when its call failed before Forge generated anything (refused, reset, a 5xx, and no progress
//! reported) on the job's first run. A timeout is never run again: its user was promised R5.1.
//! The backend that handed a job off then takes no job for [`HOLD_OFF`] while another is
//! healthy.
//!
//! Two rules keep one bad moment from losing a job or stopping the queue ([`super::outcome`]):
//! - an outcome is written until it lands: while the database is unavailable the write is
//!   retried with a backoff (the image is on disk already), and the job counts as finishing,
//!   so this process's watchdog does not race it with a stuck mark;
//! - a job whose record cannot be read or written (a damaged row) is tried a few times, then
//!   failed with R9.4 (through the store's quarantine) so the queue moves on.

use super::pool::BusyGuard;
use super::slot::Slot;
use super::{Ended, ForgeActor, ForgeDeps, ForgeSettings, Running, Stop, note, seen, state_of};
use crate::actors::queue::OfferNow;
use crate::actors::store::StoreError;
use crate::domain::breaker::{Admission, CallOutcome, pause_before_taking};
use crate::domain::change::{Change, Refusal, Transition};
use crate::domain::message::ChatMessage;
use crate::domain::queue_book::QueuedJob;
use crate::forge_client::{ForgeClient, ForgeFailure, Generated};
use crate::images::PLACEHOLDER_URL;
use crate::metrics::{BackendLabel, OutcomeLabel};
use actix::Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use uuid::Uuid;

/// Deadline of storing a generated image.
pub(super) const STORAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Tries of marking a job processing whose record cannot be read or written.
const START_ATTEMPTS: u32 = 3;
/// How long a popped job's missing record is waited for (its create may still be in flight).
const CREATE_GRACE: Duration = Duration::from_secs(5);
/// How long a worker that handed its job to another backend waits before taking one again.
const HAND_OFF_PAUSE: Duration = Duration::from_millis(250);
/// How long a backend that handed a job to another one takes no job while another backend is
/// healthy.
const HOLD_OFF: Duration = Duration::from_secs(10);
/// Longest pause between two writes of an outcome while the database is unavailable.
pub(super) const OUTCOME_RETRY_MAX: Duration = Duration::from_secs(5);

/// One slot of a backend: takes a job, runs it, repeats.
pub(super) struct Worker {
    pub addr: Addr<ForgeActor>,
    pub client: ForgeClient,
    pub deps: ForgeDeps,
    pub settings: ForgeSettings,
}

/// What became of marking a popped job processing.
enum Started {
    Processing(Box<ChatMessage>),
    /// It is not this worker's to run (ended, failed, or put back for a retry).
    Skipped,
    /// This backend handed it back to run elsewhere, and another is healthy: put back.
    Declined,
}

enum Ran {
    Generated(Result<Generated, ForgeFailure>),
    Stopped(Stop),
}

impl Worker {
    pub(super) async fn run_slot(self) {
        // The slot is kept from one job to the next (renewed all along), and given back when
        // the worker hands a job to another backend or stops.
        let mut kept: Option<Slot> = None;
        loop {
            if !self.addr.connected() {
                break;
            }
            let slot = match kept.take() {
                Some(slot) if !slot.is_lost() => slot,
                lost => {
                    if let Some(lost) = lost {
                        lost.release().await;
                    }
                    self.deps
                        .slots
                        .take(self.client.name(), self.settings.slots, &self.deps.metrics)
                        .await
                }
            };
            // Asked with the slot in hand: whoever held it before may have just opened or
            // held off the breaker.
            if let Some(pause) = self.pause_before_taking().await {
                kept = Some(slot);
                tokio::time::sleep(pause).await;
                continue;
            }
            let Some(job) = self.deps.queue.next_job(self.offer_now()).await else {
                slot.release().await;
                return;
            };
            if slot.is_lost() {
                // Lost while this worker waited for a job: the job waits for a slot, at its
                // place in the queue.
                if let Err(err) = self.deps.queue.requeue(&job).await {
                    tracing::error!(job = %job.id, error = %err, "could not put a popped job back");
                }
                slot.release().await;
                continue;
            }
            let busy = self.deps.busy.hold(job.id);
            let handed_off = self.run_job(job, &busy).await;
            drop(busy);
            if handed_off {
                slot.release().await;
                // A healthy backend's worker, waiting for a job, takes it first.
                tokio::time::sleep(HAND_OFF_PAUSE).await;
            } else {
                kept = Some(slot);
            }
        }
        if let Some(slot) = kept {
            slot.release().await;
        }
    }

    /// Whether another healthy backend lists the job's model (so it may run there instead).
    fn another_can_run(&self, job: &QueuedJob) -> bool {
        self.deps.health.another_can_run(
            self.client.name(),
            &self.deps.models,
            job.model.as_deref(),
        )
    }

    /// What this backend offers the queue, read whenever the queue hands out jobs.
    fn offer_now(&self) -> OfferNow {
        let (models, backend) = (self.deps.models.clone(), self.client.name().to_owned());
        Arc::new(move || models.offer(&backend))
    }

    /// This backend handed a job to another one: it takes no job for [`HOLD_OFF`] while
    /// another backend is healthy, so the job is not taken back and declined again and again
    /// (every process obeys: the hold is in the breaker store).
    async fn hold_off(&self) {
        let backend = self.client.name();
        if let Err(err) = self.deps.breakers.hold_off(backend, HOLD_OFF).await {
            tracing::warn!(backend, error = %err, "cannot hold the backend off");
        }
    }

    /// What this backend's breaker says about taking a job now (see
    /// [`pause_before_taking`]). A breaker store that fails lets the job through: the call
    /// itself then shows whether the backend is healthy.
    async fn pause_before_taking(&self) -> Option<Duration> {
        let backend = self.client.name();
        match self.deps.breakers.readiness(backend).await {
            Ok(readiness) => {
                seen(&self.deps, backend, state_of(readiness));
                pause_before_taking(readiness, self.deps.health.another_is_closed(backend))
            }
            Err(err) => {
                tracing::warn!(backend, error = %err, "cannot read the backend's breaker");
                None
            }
        }
    }

    /// Asks the breaker to call Forge for job `id` (`holder` names the call); an admitted
    /// call counts as running on this backend until [`Self::ended`].
    async fn admit(&self, id: Uuid, holder: &str, stop: oneshot::Sender<Stop>) -> Admission {
        let backend = self.client.name();
        let admission = match self.deps.breakers.admit(backend, holder).await {
            Ok((admission, transition)) => {
                note(&self.deps, backend, transition);
                admission
            }
            Err(err) => {
                tracing::warn!(backend, error = %err, "cannot ask the backend's breaker; calling");
                Admission::Allowed
            }
        };
        if admission != Admission::Rejected {
            self.addr.do_send(Running { id, stop });
        }
        admission
    }

    /// The call for job `id` is over: it no longer runs here, and its outcome goes to the
    /// breaker.
    async fn ended(&self, id: Uuid, holder: &str, admission: Admission, outcome: CallOutcome) {
        self.addr.do_send(Ended { id });
        let backend = self.client.name();
        match self
            .deps
            .breakers
            .record(backend, holder, admission, outcome)
            .await
        {
            Ok(transition) => note(&self.deps, backend, transition),
            Err(err) => {
                tracing::warn!(backend, error = %err, "cannot tell the backend's breaker")
            }
        }
    }

    /// Runs one job; returns whether it was handed to another backend (see the module doc).
    async fn run_job(&self, job: QueuedJob, busy: &BusyGuard) -> bool {
        let started = Instant::now();
        let message = match self.mark_processing(&job).await {
            Started::Processing(message) => *message,
            Started::Skipped => return false,
            Started::Declined => {
                self.hold_off().await;
                return true;
            }
        };
        busy.started(message.runs);
        let (stop, stopped) = oneshot::channel();
        let holder = Uuid::now_v7().to_string();
        let admission = self.admit(job.id, &holder, stop).await;
        if admission == Admission::Rejected {
            return self.breaker_open(&job, &message, started, busy).await;
        }
        // Whether Forge reported progress on this call (then a failure is not "before
        // generating", whatever its kind).
        let progressed = AtomicBool::new(false);
        let generation = tokio::select! {
            result = self.generate(&message, &progressed) => Ran::Generated(result),
            Ok(why) = stopped => Ran::Stopped(why),
        };
        let latency = started.elapsed().as_secs_f64();
        let outcome = match &generation {
            Ran::Stopped(_) => CallOutcome::Neutral,
            Ran::Generated(Ok(_)) => CallOutcome::Success,
            Ran::Generated(Err(failure)) => failure.breaker_outcome(),
        };
        self.ended(job.id, &holder, admission, outcome).await;
        let transition = match generation {
            Ran::Stopped(Stop::Abandoned) => {
                // Cancelled or marked stuck meanwhile (the terminal state is written already),
                // or its lease was taken (the job runs again elsewhere).
                self.interrupt(job.id);
                self.forget_preview(job.id).await;
                return false;
            }
            Ran::Stopped(Stop::HandBack) => {
                self.interrupt(job.id);
                self.forget_preview(job.id).await;
                self.hand_back(&job, message.runs, false).await;
                return false;
            }
            Ran::Generated(Ok(generated)) => {
                self.count_call(latency, "ok");
                self.count_model(&generated);
                self.store_image(&job, generated).await
            }
            Ran::Generated(Err(failure)) => {
                self.count_call(latency, failure.label());
                let progressed = progressed.load(Ordering::Relaxed);
                match self.failed(&job, &message, failure, progressed).await {
                    Some(transition) => transition,
                    None => return true,
                }
            }
        };
        self.finish(&message, transition, started, busy).await;
        false
    }

    /// The breaker refused the call: a healthy backend runs the job if there is one (the
    /// breaker opened since this worker took it; returns `true`), else the placeholder.
    async fn breaker_open(
        &self,
        job: &QueuedJob,
        message: &ChatMessage,
        started: Instant,
        busy: &BusyGuard,
    ) -> bool {
        if self.another_can_run(job) {
            tracing::info!(backend = self.client.name(), job = %job.id, "breaker opened meanwhile: handing the job to a healthy backend");
            self.hand_back(job, message.runs, true).await;
            return true;
        }
        self.deps.metrics.placeholders_served.inc();
        tracing::info!(backend = self.client.name(), job = %job.id, "breaker open: serving the placeholder image");
        let placeholder = Transition::Complete {
            image_url: PLACEHOLDER_URL.to_owned(),
            placeholder: true,
            seed: None,
            model: None,
        };
        self.finish(message, placeholder, started, busy).await;
        false
    }

    /// The call failed: the job's error to write, or `None` when it was handed to another
    /// backend (it failed before Forge generated anything, on its first run, and another
    /// backend is healthy: once more there, before the user sees an error).
    async fn failed(
        &self,
        job: &QueuedJob,
        message: &ChatMessage,
        failure: ForgeFailure,
        progressed: bool,
    ) -> Option<Transition> {
        tracing::warn!(job = %job.id, backend = self.client.name(), cause = failure.detail(), "Forge call failed");
        if matches!(failure, ForgeFailure::Timeout) {
            // Forge has no timeout of its own: stop the abandoned generation.
            self.interrupt(job.id);
        }
        if failure.may_run_elsewhere()
            && !progressed
            && message.runs == 1
            && self.another_can_run(job)
        {
            self.deps.metrics.forge_failovers.inc();
            tracing::info!(job = %job.id, backend = self.client.name(), "handing the failed job to another backend");
            self.forget_preview(job.id).await;
            self.hand_back(job, message.runs, true).await;
            self.hold_off().await;
            return None;
        }
        Some(Transition::Fail {
            error: failure.job_failure(self.settings.timeout).to_error(),
        })
    }

    fn count_call(&self, latency: f64, outcome: &str) {
        let backend = self.client.name().to_owned();
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
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Moves the job to processing. The create of a job popped right after its enqueue may
    /// still be in flight, so a missing record is waited for a little; a record that cannot be
    /// read or written is tried a few times, then the job is failed.
    async fn mark_processing(&self, job: &QueuedJob) -> Started {
        let may_decline = self.another_can_run(job);
        let change = || {
            Change::Transition(Transition::Processing {
                backend: self.client.name().to_owned(),
                may_decline,
            })
        };
        let mut pause = Duration::from_millis(5);
        let give_up = Instant::now() + CREATE_GRACE;
        let mut attempts = 0;
        loop {
            match self.deps.store.apply(job.id, change()).await {
                Ok(message) => return Started::Processing(Box::new(message)),
                Err(StoreError::Refused(Refusal::NotFound))
                    if Instant::now() < give_up && !self.deps.queue.aborted(job.id).await =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(250));
                }
                Err(StoreError::Refused(Refusal::NotFound)) => {
                    // If its create commits after all, the queue's audit puts it back.
                    tracing::warn!(job = %job.id, "queued job has no record (its create failed); dropping it");
                    let _ = self.deps.queue.release(&job.user_id, job.id).await;
                    return Started::Skipped;
                }
                Err(StoreError::Refused(Refusal::RunElsewhere)) => {
                    // This backend failed it before; a healthy one takes it from the queue.
                    if let Err(err) = self.deps.queue.requeue(job).await {
                        tracing::warn!(job = %job.id, error = %err, "could not put back a job meant for another backend; the queue's audit will");
                    }
                    return Started::Declined;
                }
                Err(StoreError::Refused(refusal)) => {
                    tracing::info!(job = %job.id, %refusal, "popped job is no longer queued; skipping it");
                    return Started::Skipped;
                }
                Err(StoreError::Row(err)) => {
                    attempts += 1;
                    if attempts < START_ATTEMPTS {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    self.fail_unstartable(job, &err.to_string()).await;
                    return Started::Skipped;
                }
                Err(err @ StoreError::Db(_)) => {
                    tracing::error!(job = %job.id, error = %err, "could not mark the job processing; putting it back");
                    let _ = self.deps.queue.requeue(job).await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    return Started::Skipped;
                }
                Err(StoreError::Stopped) => return Started::Skipped,
            }
        }
    }

    /// Runs txt2img while polling progress (when this backend runs one job at a time:
    /// Forge's progress is global to the server).
    async fn generate(
        &self,
        message: &ChatMessage,
        progressed: &AtomicBool,
    ) -> Result<Generated, ForgeFailure> {
        let call = self
            .client
            .txt2img(&message.prompt, &message.params, message.model.as_deref());
        if self.settings.slots != 1 {
            return call.await;
        }
        tokio::select! {
            result = call => result,
            () = self.poll_progress(message, progressed) => Err(ForgeFailure::bad_answer("progress polling ended")),
        }
    }

    async fn poll_progress(&self, message: &ChatMessage, progressed: &AtomicBool) {
        let id = message.id;
        let mut last_step = 0;
        let deadline = (self.settings.progress_interval * 3)
            .clamp(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            tokio::time::sleep(self.settings.progress_interval).await;
            let progress = match self.client.progress(self.settings.previews, deadline).await {
                Ok(progress) => progress,
                Err(err) => {
                    tracing::debug!(job = %id, error = err.detail(), "progress poll failed");
                    continue;
                }
            };
            let mut changes = Vec::new();
            if progress.step > last_step {
                last_step = progress.step;
                progressed.store(true, Ordering::Relaxed);
                let percent = (progress.fraction * 100.0).round().clamp(0.0, 99.0) as u8;
                let eta_s = progress.eta_seconds.map(|eta| eta.ceil() as u32);
                changes.push(Change::Progress {
                    progress: percent,
                    eta_s,
                });
            }
            if let Some(png) = progress.preview_png
                && let Ok(preview_url) = self.deps.images.save_preview(id, png).await
            {
                changes.push(Change::Preview { preview_url });
            }
            let advanced = !changes.is_empty();
            for change in changes {
                // Cancelled, marked stuck or its lease taken meanwhile: no more progress or
                // previews; the abandon signal ends the call itself.
                let change = Change::OfRun {
                    run: message.runs,
                    change: Box::new(change),
                };
                if let Err(StoreError::Refused(_)) = self.deps.store.apply(id, change).await {
                    std::future::pending::<()>().await;
                }
            }
            if advanced {
                let _ = self.deps.queue.mark_moved().await;
            }
        }
    }

    /// Deletes the job's live preview file (it has ended).
    pub(super) async fn forget_preview(&self, id: Uuid) {
        if self.settings.previews {
            self.deps.images.delete_preview(id).await;
        }
    }

    fn interrupt(&self, id: Uuid) {
        let client = self.client.clone();
        self.deps.io.spawn(async move {
            if let Err(err) = client.interrupt().await {
                tracing::warn!(job = %id, error = err.detail(), "could not interrupt the generation");
            }
        });
    }
}
