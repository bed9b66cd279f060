//! Changes to a message and the pure function that applies one.
//!
//! The store folds every change that arrives for a message while a write is in flight into
//! the next read-modify-write: it reads the row once, applies the changes here one after
//! another (each gets its own outcome), and writes the result once with a version check.

use crate::domain::catalogue::{JobError, JobFailure};
use crate::domain::event::JobEventKind;
use crate::domain::merge::{self, PatchError};
use crate::domain::message::{ChatMessage, Notice};
use crate::domain::status::JobStatus;
use chrono::{DateTime, Utc};
use serde_json::Value;

/// A change to one message.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Insert the message (status `queued`).
    Create(Box<ChatMessage>),
    /// A server-side status change.
    Transition(Transition),
    /// Forge reported a new generation step (counts as activity).
    Progress {
        /// 0..=100.
        progress: u8,
        /// Forge's estimate of the seconds left.
        eta_s: Option<u32>,
    },
    /// Forge showed a live preview, stored at `preview_url` (counts as activity).
    Preview {
        /// Where the preview is served.
        preview_url: String,
    },
    /// A client's JSON Merge Patch of its data; applies only to a message of `owner`
    /// (another user's answers "no such message", as if it did not exist). With a `client_ref`
    /// the message remembers it ([`crate::domain::client_refs::ClientRefs`]): the same ref again is not applied twice.
    ClientPatch {
        /// The user who sent it.
        owner: String,
        /// The patch.
        patch: Value,
        /// The client's ref of this write, if it gave one.
        client_ref: Option<String>,
    },
    /// A change written by the run of the job numbered `run` (its process's write of progress
    /// or an outcome): applies only while that run is the job's current one and still
    /// processing, so a process whose lease was taken cannot overwrite the next run.
    OfRun {
        /// The run (the message's `runs` when its backend took it).
        run: i64,
        /// The change itself.
        change: Box<Change>,
    },
}

/// A server-side status change.
#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    /// A backend took the job.
    Processing {
        /// The backend's name (its base URL without credentials).
        backend: String,
        /// Another backend is healthy: refuse ([`Refusal::RunElsewhere`]) if the job was
        /// handed back by this very backend to run elsewhere.
        may_decline: bool,
    },
    /// Forge answered with an image (or the breaker served the placeholder).
    Complete {
        /// Where the image is served.
        image_url: String,
        /// The breaker served the placeholder.
        placeholder: bool,
        /// The seed Forge reports it used, if it said.
        seed: Option<i64>,
        /// The checkpoint Forge reports it used, if it said (the one asked for stays
        /// otherwise).
        model: Option<String>,
    },
    /// The job failed.
    Fail {
        /// Code and exact message.
        error: JobError,
    },
    /// The owner cancelled it (with the client's ref of the command, if it gave one: the
    /// same ref again is acknowledged, not refused as a conflict).
    Cancel {
        /// The client's ref.
        client_ref: Option<String>,
    },
    /// The watchdog found it inactive: applies only if the job is still pending and nothing
    /// happened to it since `inactive_since` (so two watchdogs, or a late progress report,
    /// cannot both win).
    MarkStuck {
        /// The cutoff the watchdog's scan used.
        inactive_since: DateTime<Utc>,
    },
    /// Its run ended before the job did (its process shut down past its grace, or the run's
    /// lease expired): the job goes back to the queue, where it keeps its ticket, to run again.
    /// Applies only while run `run` is the job's current one and still processing (a late
    /// hand-back cannot undo a run that moved on).
    HandBack {
        /// The run that ended.
        run: i64,
        /// Its backend failed before generating: the job should run on another one next (the
        /// backend is kept in the record so it can decline the job, see
        /// [`Transition::Processing`]).
        elsewhere: bool,
    },
    /// The job's total deadline ran out (`JOB_DEADLINE`): applies only if the job is still
    /// pending and was created before `created_before`.
    Expire {
        /// Jobs created before this are past their deadline.
        created_before: DateTime<Utc>,
    },
}

impl Transition {
    /// The status the transition leads to.
    pub fn target(&self) -> JobStatus {
        match self {
            Transition::Processing { .. } => JobStatus::Processing,
            Transition::HandBack { .. } => JobStatus::Queued,
            Transition::Complete { .. } => JobStatus::Complete,
            Transition::Fail { .. } | Transition::MarkStuck { .. } | Transition::Expire { .. } => {
                JobStatus::Error
            }
            Transition::Cancel { .. } => JobStatus::Cancelled,
        }
    }
}

/// Why a change was not applied. A refused change leaves the message exactly as it was.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// There is no such message (yet).
    #[error("no such message")]
    NotFound,
    /// A create for an id that exists.
    #[error("the message exists already")]
    AlreadyExists,
    /// The status machine forbids it (e.g. leaving a terminal state).
    #[error("illegal transition {from} -> {to}")]
    IllegalTransition {
        /// Current status.
        from: JobStatus,
        /// Requested status.
        to: JobStatus,
    },
    /// The watchdog's mark no longer holds: the job moved on or showed activity.
    #[error("the job is no longer stuck")]
    NotStuck,
    /// The client patch is invalid.
    #[error("invalid patch: {0}")]
    Patch(PatchError),
    /// The stored record cannot be read (a damaged row); only a failure can still be written.
    #[error("the stored message cannot be read")]
    Unreadable,
    /// A client write whose ref the message remembers: it was applied already, and is not
    /// applied again.
    #[error("this write was applied already")]
    AlreadyApplied,
    /// A write of a run that is no longer the job's current one (its lease was taken, or the
    /// job ended meanwhile).
    #[error("the run this write belongs to has ended")]
    RunEnded,
    /// This backend handed the job back to run on another one, and another one is healthy.
    #[error("the job was handed back to run on another backend")]
    RunElsewhere,
}

/// Applies one change at time `now`. On success the message's version grows by one,
/// `updated_at` moves, and the event to publish is returned; on refusal nothing changes.
pub fn apply(
    current: &mut Option<ChatMessage>,
    change: &Change,
    now: DateTime<Utc>,
) -> Result<JobEventKind, Refusal> {
    if let Change::Create(new) = change {
        if current.is_some() {
            return Err(Refusal::AlreadyExists);
        }
        let (message, event) = created(new, now);
        *current = Some(message);
        return Ok(event);
    }
    if let Change::OfRun { run, change } = change {
        if let Some(message) = current.as_ref()
            && (message.status != JobStatus::Processing || message.runs != *run)
        {
            return Err(Refusal::RunEnded);
        }
        return apply(current, change, now);
    }
    let Some(message) = current.as_mut() else {
        return Err(Refusal::NotFound);
    };
    let event = match change {
        Change::Create(_) | Change::OfRun { .. } => unreachable!("handled above"),
        Change::ClientPatch {
            owner,
            patch,
            client_ref,
        } => patch_client_data(message, owner, patch, client_ref.as_ref(), now)?,
        Change::Progress { progress, eta_s } => {
            check(message.status, JobStatus::Processing)?;
            message.progress = message.progress.max((*progress).min(100));
            message.eta_s = *eta_s;
            message.activity_at = now;
            JobEventKind::Progress {
                progress: message.progress,
                eta_s: *eta_s,
            }
        }
        Change::Preview { preview_url } => {
            check(message.status, JobStatus::Processing)?;
            message.preview_url = Some(preview_url.clone());
            message.activity_at = now;
            JobEventKind::Preview {
                preview_url: preview_url.clone(),
            }
        }
        Change::Transition(transition) => {
            if let Transition::Cancel {
                client_ref: Some(client_ref),
            } = transition
                && message.status == JobStatus::Cancelled
                && message.client_refs.seen(client_ref, now)
            {
                return Err(Refusal::AlreadyApplied);
            }
            check(message.status, transition.target())?;
            apply_transition(message, transition, now)?
        }
    };
    message.version += 1;
    message.updated_at = now;
    Ok(event)
}

/// A new message as its create makes it: queued, version 1, made now.
fn created(new: &ChatMessage, now: DateTime<Utc>) -> (ChatMessage, JobEventKind) {
    let mut message = new.clone();
    message.status = JobStatus::Queued;
    message.version = 1;
    message.created_at = now;
    message.updated_at = now;
    message.activity_at = now;
    let event = JobEventKind::Queued {
        queue_position: message.queue_position,
    };
    (message, event)
}

/// Merges a client's patch into the message's data, once per client ref.
fn patch_client_data(
    message: &mut ChatMessage,
    owner: &str,
    patch: &Value,
    client_ref: Option<&String>,
    now: DateTime<Utc>,
) -> Result<JobEventKind, Refusal> {
    if message.user_id != owner {
        return Err(Refusal::NotFound);
    }
    if let Some(client_ref) = client_ref
        && message.client_refs.seen(client_ref, now)
    {
        return Err(Refusal::AlreadyApplied);
    }
    merge::merge_client_data(&mut message.data, patch).map_err(Refusal::Patch)?;
    if let Some(client_ref) = client_ref {
        message.client_refs.remember(client_ref, now);
    }
    Ok(JobEventKind::Updated {
        data: message.data.clone(),
        client_ref: client_ref.cloned(),
    })
}

fn check(from: JobStatus, to: JobStatus) -> Result<(), Refusal> {
    if from.can_become(to) {
        Ok(())
    } else {
        Err(Refusal::IllegalTransition { from, to })
    }
}

fn apply_transition(
    message: &mut ChatMessage,
    transition: &Transition,
    now: DateTime<Utc>,
) -> Result<JobEventKind, Refusal> {
    let event = match transition {
        Transition::HandBack { run, elsewhere } => hand_back(message, *run, *elsewhere)?,
        Transition::Processing {
            backend,
            may_decline,
        } => start_run(message, backend, *may_decline, now)?,
        Transition::Complete {
            image_url,
            placeholder,
            seed,
            model,
        } => {
            message.image_url = Some(image_url.clone());
            message.placeholder = *placeholder;
            message.progress = 100;
            message.seed = *seed;
            if model.is_some() {
                message.model.clone_from(model);
            }
            JobEventKind::Complete {
                image_url: image_url.clone(),
                placeholder: *placeholder,
                notice: placeholder.then(Notice::placeholder),
                seed: *seed,
                model: message.model.clone(),
            }
        }
        Transition::Fail { error } => failed(message, error.clone()),
        Transition::Expire { created_before } => {
            if message.created_at > *created_before {
                return Err(Refusal::NotStuck);
            }
            failed(message, JobFailure::Timeout.to_error())
        }
        Transition::MarkStuck { inactive_since } => {
            if message.activity_at > *inactive_since {
                return Err(Refusal::NotStuck);
            }
            failed(message, JobFailure::StuckJob.to_error())
        }
        Transition::Cancel { client_ref } => {
            let error = JobFailure::Cancelled.to_error();
            message.error = Some(error.clone());
            if let Some(client_ref) = client_ref {
                message.client_refs.remember(client_ref, now);
            }
            JobEventKind::Cancelled {
                error: Some(error),
                client_ref: client_ref.clone(),
            }
        }
    };
    let target = transition.target();
    message.status = target;
    // The position stored at a transition is the one at that moment: only queued jobs have one.
    message.queue_position = None;
    message.activity_at = now;
    // Forge's estimate belongs to the generation that just started or ended.
    message.eta_s = None;
    if target.is_terminal() {
        message.finished_at = Some(now);
        // The preview file is deleted when the job ends; so is its URL.
        message.preview_url = None;
    }
    Ok(event)
}

/// The job goes back to the queue from its run `run` (a lost lease, a shutdown, or a failure
/// to run elsewhere, when it keeps its backend to be declined there).
fn hand_back(
    message: &mut ChatMessage,
    run: i64,
    elsewhere: bool,
) -> Result<JobEventKind, Refusal> {
    if message.status != JobStatus::Processing || message.runs != run {
        return Err(Refusal::RunEnded);
    }
    if !elsewhere {
        message.backend = None;
    }
    message.started_at = None;
    message.progress = 0;
    Ok(JobEventKind::Queued {
        queue_position: None,
    })
}

/// A backend starts a new run of the job.
fn start_run(
    message: &mut ChatMessage,
    backend: &str,
    may_decline: bool,
    now: DateTime<Utc>,
) -> Result<JobEventKind, Refusal> {
    if message.status == JobStatus::Processing {
        return Err(Refusal::IllegalTransition {
            from: JobStatus::Processing,
            to: JobStatus::Processing,
        });
    }
    // Only a hand-back to run elsewhere leaves a queued job's backend set.
    if may_decline && message.backend.as_deref() == Some(backend) {
        return Err(Refusal::RunElsewhere);
    }
    message.backend = Some(backend.to_owned());
    message.started_at = Some(now);
    message.runs += 1;
    message.progress = 0;
    Ok(JobEventKind::Processing { progress: 0 })
}

/// The job ends with `error`.
fn failed(message: &mut ChatMessage, error: JobError) -> JobEventKind {
    message.error = Some(error.clone());
    JobEventKind::Error { error }
}

#[cfg(test)]
mod tests;
