//! A message: one image request and everything that happened to it, and its public view.

use crate::domain::catalogue::{JobError, PLACEHOLDER_NOTICE_CODE, PLACEHOLDER_NOTICE_MESSAGE};
use crate::domain::params::GenerationParams;
use crate::domain::status::JobStatus;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// The record of a job, as the database holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// Message id = job id (UUID v7).
    pub id: Uuid,
    /// Owner.
    pub user_id: String,
    /// Chat conversation, if given.
    pub conversation_id: Option<String>,
    /// Current status.
    pub status: JobStatus,
    /// 0..=100.
    pub progress: u8,
    /// Queue position at the last status transition (1-based); live positions come from the queue.
    pub queue_position: Option<u32>,
    /// Queue ticket from the atomic counter.
    pub ticket: Option<i64>,
    /// The prompt.
    pub prompt: String,
    /// Generation parameters.
    pub params: GenerationParams,
    /// `/images/<id>.png` once complete.
    pub image_url: Option<String>,
    /// The breaker served the placeholder.
    pub placeholder: bool,
    /// Why it failed (or was cancelled).
    pub error: Option<JobError>,
    /// Client-owned data (an object).
    pub data: Value,
    /// Grows by one with every applied change.
    pub version: i64,
    /// The message this one retries.
    pub retry_of: Option<Uuid>,
    /// The Forge backend that took it.
    pub backend: Option<String>,
    /// The client's `Idempotency-Key` on create.
    pub idempotency_key: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// When a backend took it.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a terminal state.
    pub finished_at: Option<DateTime<Utc>>,
    /// Last write of any kind.
    pub updated_at: DateTime<Utc>,
    /// Last sign of life of the job (transitions and generation steps, not client patches).
    pub activity_at: DateTime<Utc>,
}

/// A user-facing note that is not an error: why the placeholder image was served (R8.2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Notice {
    /// `forge_unavailable`.
    pub code: String,
    /// The Turkish explanation.
    pub message: String,
}

impl Notice {
    /// The notice sent with a placeholder image.
    pub fn placeholder() -> Notice {
        Notice {
            code: PLACEHOLDER_NOTICE_CODE.to_owned(),
            message: PLACEHOLDER_NOTICE_MESSAGE.to_owned(),
        }
    }
}

/// The message as REST bodies and WebSocket snapshots show it (API.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MessageView {
    /// Message id.
    pub id: Uuid,
    /// Chat conversation.
    pub conversation_id: Option<String>,
    /// Current status.
    pub status: JobStatus,
    /// 0..=100.
    pub progress: u8,
    /// Live 1-based queue position, only while queued.
    pub queue_position: Option<u32>,
    /// Estimated seconds until done, when known.
    pub eta_s: Option<u32>,
    /// The image, once complete.
    pub image_url: Option<String>,
    /// True when the breaker served the placeholder image.
    pub placeholder: bool,
    /// Why the placeholder was served.
    pub notice: Option<Notice>,
    /// Why it failed.
    pub error: Option<JobError>,
    /// The prompt.
    pub prompt: String,
    /// Generation parameters.
    pub params: GenerationParams,
    /// Client-owned data.
    #[schema(value_type = Object)]
    pub data: Value,
    /// The message this one retries.
    pub retry_of: Option<Uuid>,
    /// Grows with every write; a client ignores anything older than what it has.
    pub version: i64,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last write.
    pub updated_at: DateTime<Utc>,
    /// When a backend took it.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a terminal state.
    pub finished_at: Option<DateTime<Utc>>,
}

impl Message {
    /// The public view with the live queue position and ETA. A queued job that is not in the
    /// queue (popped, its `processing` write in flight) shows no position rather than a stale
    /// one that another job now has.
    pub fn view(&self, live_position: Option<u32>, eta_s: Option<u32>) -> MessageView {
        let queued = self.status == JobStatus::Queued;
        MessageView {
            id: self.id,
            conversation_id: self.conversation_id.clone(),
            status: self.status,
            progress: self.progress,
            queue_position: if queued { live_position } else { None },
            eta_s: if self.status.is_pending() {
                eta_s
            } else {
                None
            },
            image_url: self.image_url.clone(),
            placeholder: self.placeholder,
            notice: self.placeholder.then(Notice::placeholder),
            error: self.error.clone(),
            prompt: self.prompt.clone(),
            params: self.params.clone(),
            data: self.data.clone(),
            retry_of: self.retry_of,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A queued message as a fresh create leaves it.
    pub(crate) fn queued_message() -> Message {
        let now = Utc::now();
        Message {
            id: Uuid::now_v7(),
            user_id: "alice".into(),
            conversation_id: None,
            status: JobStatus::Queued,
            progress: 0,
            queue_position: Some(3),
            ticket: Some(7),
            prompt: "a cat".into(),
            params: GenerationParams::default(),
            image_url: None,
            placeholder: false,
            error: None,
            data: json!({}),
            version: 1,
            retry_of: None,
            backend: None,
            idempotency_key: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            updated_at: now,
            activity_at: now,
        }
    }

    #[test]
    fn the_view_shows_the_live_position_only_while_queued() {
        let mut message = queued_message();
        assert_eq!(message.view(Some(1), Some(4)).queue_position, Some(1));
        assert_eq!(
            message.view(None, None).queue_position,
            None,
            "never a stale position"
        );
        message.status = JobStatus::Processing;
        assert_eq!(message.view(Some(1), None).queue_position, None);
        message.status = JobStatus::Complete;
        message.placeholder = true;
        let view = message.view(None, Some(3));
        assert_eq!(view.eta_s, None);
        assert_eq!(
            view.notice.map(|n| n.code),
            Some("forge_unavailable".to_owned())
        );
    }
}
