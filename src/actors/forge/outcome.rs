//! How a slot worker ends a job: stores its image, writes its outcome until it lands, fails
//! one whose record cannot be started, or hands it back to the queue.

use super::pool::BusyGuard;
use super::worker::{OUTCOME_RETRY_MAX, STORAGE_TIMEOUT, Worker};
use crate::actors::store::StoreError;
use crate::domain::catalogue::JobFailure;
use crate::domain::change::{Change, Transition};
use crate::domain::message::ChatMessage;
use crate::domain::queue_book::QueuedJob;
use crate::forge_client::Generated;
use crate::metrics::{BackendLabel, ModelLabel, StatusLabel};
use std::time::{Duration, Instant};

impl Worker {
    /// Counts the job by the checkpoint it ran on, and a switch when its backend had another
    /// one loaded; the backend has it loaded now.
    pub(super) fn count_model(&self, generated: &Generated) {
        let Some(model) = &generated.model else {
            return;
        };
        let backend = self.client.name();
        let before = self.deps.models.read(|catalogue| {
            catalogue
                .of(backend)
                .and_then(|offers| offers.loaded.clone())
        });
        if before.as_deref().is_some_and(|loaded| loaded != model) {
            self.deps
                .metrics
                .model_switches
                .get_or_create(&BackendLabel {
                    backend: backend.to_owned(),
                })
                .inc();
        }
        self.deps
            .metrics
            .jobs_by_model
            .get_or_create(&ModelLabel {
                model: model.clone(),
            })
            .inc();
        self.deps.models.loaded_now(backend, model);
    }

    /// Stores the generated image; the transition to write. A disk that is full (or over
    /// quota) is waited for, up to `STORAGE_TIMEOUT`, since space often comes back; any other
    /// failure, or no space in time, fails the job.
    pub(super) async fn store_image(&self, job: &QueuedJob, generated: Generated) -> Transition {
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
                        model: generated.model.clone(),
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

    /// Fails a job whose record cannot be started (R9.4), so the queue moves on.
    pub(super) async fn fail_unstartable(&self, job: &QueuedJob, cause: &str) {
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

    /// Writes the outcome until it lands (see the module doc), then lets the job go.
    pub(super) async fn finish(
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
    pub(super) async fn hand_back(&self, job: &QueuedJob, run: i64, elsewhere: bool) {
        let change = || Change::Transition(Transition::HandBack { run, elsewhere });
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
}
