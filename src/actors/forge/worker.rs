//! A slot worker of one backend: when the breaker lets it, takes one of the backend's slots
//! (shared by every process, see [`super::slot`]), then the next job; marks it processing,
//! runs txt2img with its deadline while polling progress, writes the outcome, and gives the
//! slot back.
//!
//! Two rules keep one bad moment from losing a job or stopping the queue:
//! - an outcome is written until it lands: while the database is unavailable the write is
//!   retried with a backoff (the image is on disk already), and the job counts as finishing,
//!   so this process's watchdog does not race it with a stuck mark;
//! - a job whose record cannot be read or written (a damaged row) is tried a few times, then
//!   failed with R9.4 (through the store's quarantine) so the queue moves on.

use super::pool::BusyGuard;
use super::{Admit, Ended, ForgeActor, ForgeDeps, ForgeSettings, Gate, MayTake, Stop};
use crate::actors::store::StoreError;
use crate::domain::breaker::{Admission, CallOutcome};
use crate::domain::catalogue::JobFailure;
use crate::domain::change::{Change, Refusal, Transition};
use crate::domain::message::ChatMessage;
use crate::domain::queue_book::QueuedJob;
use crate::forge_client::{ForgeClient, ForgeFailure, Generated};
use crate::images::PLACEHOLDER_URL;
use crate::metrics::{BackendLabel, OutcomeLabel, StatusLabel};
use actix::Addr;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use uuid::Uuid;

/// Deadline of storing a generated image.
const STORAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Tries of marking a job processing whose record cannot be read or written.
const START_ATTEMPTS: u32 = 3;
/// How long a popped job's missing record is waited for (its create may still be in flight).
const CREATE_GRACE: Duration = Duration::from_secs(5);
/// Longest pause between two writes of an outcome while the database is unavailable.
const OUTCOME_RETRY_MAX: Duration = Duration::from_secs(5);

/// One slot of a backend: takes a job, runs it, repeats.
pub(super) struct Worker {
    pub addr: Addr<ForgeActor>,
    pub client: ForgeClient,
    pub deps: ForgeDeps,
    pub settings: ForgeSettings,
}

enum Ran {
    Generated(Result<Generated, ForgeFailure>),
    Stopped(Stop),
}

impl Worker {
    pub(super) async fn run_slot(self) {
        loop {
            match self.addr.send(MayTake).await {
                Ok(Gate::Take) => {}
                Ok(Gate::WaitFor(pause)) => {
                    tokio::time::sleep(pause).await;
                    continue;
                }
                Err(_) => return,
            }
            let slot = self
                .deps
                .slots
                .take(self.client.name(), self.settings.slots, &self.deps.metrics)
                .await;
            let Some(job) = self.deps.queue.next_job().await else {
                slot.release().await;
                return;
            };
            let busy = self.deps.busy.hold(job.id);
            self.run_job(job, &busy).await;
            drop(busy);
            slot.release().await;
        }
    }

    async fn run_job(&self, job: QueuedJob, busy: &BusyGuard) {
        let started = Instant::now();
        let Some(message) = self.mark_processing(&job).await else {
            return;
        };
        busy.started(message.runs);
        let (stop, stopped) = oneshot::channel();
        let Ok(admission) = self.addr.send(Admit { id: job.id, stop }).await else {
            return;
        };
        if admission == Admission::Rejected {
            self.deps.metrics.placeholders_served.inc();
            tracing::info!(backend = self.client.name(), job = %job.id, "breaker open: serving the placeholder image");
            let placeholder = Transition::Complete {
                image_url: PLACEHOLDER_URL.to_owned(),
                placeholder: true,
                seed: None,
            };
            self.finish(&message, placeholder, started, busy).await;
            return;
        }
        let generation = tokio::select! {
            result = self.generate(&message) => Ran::Generated(result),
            Ok(why) = stopped => Ran::Stopped(why),
        };
        let latency = started.elapsed().as_secs_f64();
        let outcome = match &generation {
            Ran::Stopped(_) => CallOutcome::Neutral,
            Ran::Generated(Ok(_)) => CallOutcome::Success,
            Ran::Generated(Err(failure)) => failure.breaker_outcome(),
        };
        self.addr.do_send(Ended {
            id: job.id,
            admission,
            outcome,
        });
        let transition = match generation {
            Ran::Stopped(Stop::Abandoned) => {
                // Cancelled or marked stuck meanwhile (the terminal state is written already),
                // or its lease was taken (the job runs again elsewhere).
                self.interrupt(job.id);
                self.forget_preview(job.id).await;
                return;
            }
            Ran::Stopped(Stop::HandBack) => {
                self.interrupt(job.id);
                self.forget_preview(job.id).await;
                self.hand_back(&job, message.runs).await;
                return;
            }
            Ran::Generated(Ok(generated)) => {
                self.count_call(latency, "ok");
                self.store_image(&job, generated).await
            }
            Ran::Generated(Err(failure)) => {
                self.count_call(latency, failure.label());
                tracing::warn!(job = %job.id, backend = self.client.name(), cause = failure.detail(), "Forge call failed");
                if matches!(failure, ForgeFailure::Timeout) {
                    // Forge has no timeout of its own: stop the abandoned generation.
                    self.interrupt(job.id);
                }
                Transition::Fail {
                    error: failure.job_failure(self.settings.timeout).to_error(),
                }
            }
        };
        self.finish(&message, transition, started, busy).await;
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

    /// Stores the generated image; the transition to write. A disk that is full (or over
    /// quota) is waited for, up to `STORAGE_TIMEOUT`, since space often comes back; any other
    /// failure, or no space in time, fails the job.
    async fn store_image(&self, job: &QueuedJob, generated: Generated) -> Transition {
        let deadline = tokio::time::Instant::now() + STORAGE_TIMEOUT;
        let mut pause = Duration::from_millis(100);
        let failure = loop {
            let saved = tokio::time::timeout_at(
                deadline,
                self.deps.images.save(job.id, generated.png.clone()),
            )
            .await;
            let err = match saved {
                Ok(Ok(image_url)) => {
                    return Transition::Complete {
                        image_url,
                        placeholder: false,
                        seed: generated.seed,
                    };
                }
                // A storage step that ran out of time is R9.2's "any other deadline".
                Err(_) => break JobFailure::Timeout,
                Ok(Err(err)) => err,
            };
            let full = matches!(
                err.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            );
            if !full {
                tracing::error!(job = %job.id, error = %err, "could not store the image");
                break JobFailure::Unknown;
            }
            if tokio::time::Instant::now() + pause >= deadline {
                break JobFailure::Timeout;
            }
            tracing::warn!(job = %job.id, error = %err, "no room for the image; trying again");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        };
        if failure == JobFailure::Timeout {
            tracing::error!(job = %job.id, "could not store the image within STORAGE_TIMEOUT");
        }
        Transition::Fail {
            error: failure.to_error(),
        }
    }

    /// Moves the job to processing. The create of a job popped right after its enqueue may
    /// still be in flight, so a missing record is waited for a little; a record that cannot be
    /// read or written is tried a few times, then the job is failed.
    async fn mark_processing(&self, job: &QueuedJob) -> Option<ChatMessage> {
        let change = || {
            Change::Transition(Transition::Processing {
                backend: self.client.name().to_owned(),
            })
        };
        let mut pause = Duration::from_millis(5);
        let give_up = Instant::now() + CREATE_GRACE;
        let mut attempts = 0;
        loop {
            match self.deps.store.apply(job.id, change()).await {
                Ok(message) => return Some(message),
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
                    return None;
                }
                Err(StoreError::Refused(refusal)) => {
                    tracing::info!(job = %job.id, %refusal, "popped job is no longer queued; skipping it");
                    return None;
                }
                Err(StoreError::Row(err)) => {
                    attempts += 1;
                    if attempts < START_ATTEMPTS {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    self.fail_unstartable(job, &err.to_string()).await;
                    return None;
                }
                Err(err @ StoreError::Db(_)) => {
                    tracing::error!(job = %job.id, error = %err, "could not mark the job processing; putting it back");
                    let _ = self.deps.queue.requeue(job).await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    return None;
                }
                Err(StoreError::Stopped) => return None,
            }
        }
    }

    /// Fails a job whose record cannot be started (R9.4), so the queue moves on.
    async fn fail_unstartable(&self, job: &QueuedJob, cause: &str) {
        self.deps.metrics.jobs_unstartable.inc();
        tracing::error!(job = %job.id, cause, "job cannot be started; failing it (R9.4)");
        let fail = Change::Transition(Transition::Fail {
            error: JobFailure::Unknown.to_error(),
        });
        if let Err(err) = self.deps.store.apply(job.id, fail).await {
            tracing::error!(job = %job.id, error = %err, "could not fail it either; it stays out of this process's queue");
        }
        let _ = self.deps.queue.release(&job.user_id, job.id).await;
    }

    /// Runs txt2img while polling progress (when this backend runs one job at a time:
    /// Forge's progress is global to the server).
    async fn generate(&self, message: &ChatMessage) -> Result<Generated, ForgeFailure> {
        let call = self.client.txt2img(&message.prompt, &message.params);
        if self.settings.slots != 1 {
            return call.await;
        }
        tokio::select! {
            result = call => result,
            () = self.poll_progress(message) => Err(ForgeFailure::bad_answer("progress polling ended")),
        }
    }

    async fn poll_progress(&self, message: &ChatMessage) {
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

    /// Writes the outcome until it lands (see the module doc), then lets the job go.
    async fn finish(
        &self,
        message: &ChatMessage,
        transition: Transition,
        started: Instant,
        busy: &BusyGuard,
    ) {
        busy.finishing();
        // The preview goes first, so that nobody who heard of the end finds it still there.
        self.forget_preview(message.id).await;
        let status = transition.target();
        let mut pause = Duration::from_millis(100);
        let mut retried = false;
        let mut transition = transition;
        // Written as this run's, unless the record cannot be read: then a failure is written
        // through the store's quarantine, which cannot tell runs apart.
        let mut of_run = true;
        loop {
            let change = Change::Transition(transition.clone());
            let change = if of_run {
                Change::OfRun {
                    run: message.runs,
                    change: Box::new(change),
                }
            } else {
                change
            };
            match self.deps.store.apply(message.id, change).await {
                Ok(done) => {
                    self.deps
                        .metrics
                        .jobs_finished
                        .get_or_create(&StatusLabel {
                            status: done.status.as_str().into(),
                        })
                        .inc();
                    let total = (done.updated_at - done.created_at)
                        .num_milliseconds()
                        .max(0) as f64
                        / 1000.0;
                    self.deps.metrics.job_duration_seconds.observe(total);
                    self.deps.queue.finished(started.elapsed().as_secs_f64());
                    if retried {
                        tracing::info!(job = %message.id, %status, "the job's outcome is written after all");
                    }
                    break;
                }
                Err(StoreError::Refused(refusal)) => {
                    // Cancelled or marked stuck meanwhile (the terminal state stands), or the
                    // lease was taken (the next run's outcome wins).
                    tracing::info!(job = %message.id, %refusal, "late result ignored");
                    break;
                }
                Err(StoreError::Row(err)) if of_run => {
                    tracing::error!(job = %message.id, error = %err, "the job's outcome cannot be written to its record; failing it");
                    if !matches!(transition, Transition::Fail { .. }) {
                        transition = Transition::Fail {
                            error: JobFailure::Unknown.to_error(),
                        };
                    }
                    of_run = false;
                }
                Err(StoreError::Row(err)) => {
                    tracing::error!(job = %message.id, error = %err, "the job's failure cannot be written to its record");
                    break;
                }
                Err(StoreError::Stopped) => break,
                Err(err @ StoreError::Db(_)) => {
                    if !retried {
                        tracing::warn!(job = %message.id, error = %err, "could not write the job's outcome; retrying until the database answers");
                    }
                    retried = true;
                    self.deps.metrics.outcome_write_retries.inc();
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(OUTCOME_RETRY_MAX);
                }
            }
        }
        let _ = self.deps.queue.release(&message.user_id, message.id).await;
    }

    /// Puts a job this process stops running (run `run`, at a shutdown) back in the queue: its record first
    /// (queued again, so whoever pops it may start it), then the queue, with its own ticket
    /// (at its old place: the head, as it was taken before every job still waiting). Tried a
    /// few times; if the record cannot be written the job stays processing, for the
    /// watchdog.
    async fn hand_back(&self, job: &QueuedJob, run: i64) {
        let change = || Change::Transition(Transition::HandBack { run });
        for attempt in 0..3 {
            match self.deps.store.apply(job.id, change()).await {
                Ok(_) => {
                    if let Err(err) = self.deps.queue.requeue(job).await {
                        // The queue's audit finds the queued record and puts it back.
                        tracing::warn!(job = %job.id, error = %err, "handed back a job the queue did not take; its audit will");
                    }
                    tracing::info!(job = %job.id, "handed a running job back to the queue");
                    return;
                }
                Err(StoreError::Db(err)) if attempt < 2 => {
                    tracing::warn!(job = %job.id, error = %err, "could not hand a job back yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => {
                    tracing::warn!(job = %job.id, error = %err, "could not hand a job back; it stays processing");
                    return;
                }
            }
        }
    }

    /// Deletes the job's live preview file (it has ended).
    async fn forget_preview(&self, id: Uuid) {
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
