//! A message: one image request and everything that happened to it, and its public view.
//!
//! The message is the gateway's one entity (the spec's word: table `messages`, REST
//! `/api/v1/messages`, the [`ChatMessage`] type, named apart from actix's and tungstenite's
//! `Message`). "Job" never names the record: it names the message's generation only, that
//! is its status ([`JobStatus`]), the events about it (`job.*`) and the work in the queue and
//! on Forge (`QueuedJob`), all keyed by the message id.

use crate::domain::catalogue::{JobError, PLACEHOLDER_NOTICE_CODE, PLACEHOLDER_NOTICE_MESSAGE};
use crate::domain::client_refs::ClientRefs;
use crate::domain::params::{CreateRequest, GenerationParams};
use crate::domain::status::JobStatus;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// A message as the database holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatMessage {
    /// Its id (UUID v7), also the id of its generation in the queue.
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
    /// Forge's estimate of the seconds left, as of `activity_at` (processing jobs only).
    pub eta_s: Option<u32>,
    /// The live preview, while a processing job has one.
    pub preview_url: Option<String>,
    /// The seed Forge reports it used (complete jobs).
    pub seed: Option<i64>,
    /// The checkpoint asked for (`DEFAULT_MODEL` when none was; none: whatever the backend
    /// has loaded), and once complete the one Forge reports it used.
    pub model: Option<String>,
    /// The refs of the client writes applied lately (never shown: see [`ClientRefs`]).
    pub client_refs: ClientRefs,
    /// How many times a backend has taken the job (0 until the first): the fencing token of
    /// its current run. A write of an older run ([`crate::domain::change::Change::OfRun`]) is
    /// refused, so a process that lost its job's lease cannot overwrite the new run.
    pub runs: i64,
}

impl MessageView {
    /// The view of a queued message as a fresh create leaves it, every optional value empty
    /// (for the contract documents, which derive which keys are always present from it).
    pub fn example() -> MessageView {
        let request = CreateRequest {
            prompt: "a cat".into(),
            params: GenerationParams::default(),
            conversation_id: None,
            model: None,
            data: serde_json::json!({}),
        };
        let now = DateTime::<Utc>::UNIX_EPOCH;
        ChatMessage::queued(Uuid::nil(), "u", request, now).view(LivePosition::NotQueued, now)
    }
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
    #[schema(maximum = 100)]
    pub progress: u8,
    /// Live 1-based queue position, only while queued; null also while the queue store cannot
    /// be read (then `position_unavailable` is true).
    #[schema(minimum = 1)]
    pub queue_position: Option<u32>,
    /// True while a queued message's live position cannot be read (the queue store is
    /// unreachable); the page says "position unknown for now". Positions come back by themselves.
    pub position_unavailable: bool,
    /// Estimated seconds until done, when known: from the queue's recent processing times
    /// while queued, from Forge's own estimate while processing.
    pub eta_s: Option<u32>,
    /// The image, once complete.
    pub image_url: Option<String>,
    /// True when the breaker served the placeholder image.
    pub placeholder: bool,
    /// Why the placeholder was served.
    pub notice: Option<Notice>,
    /// Why it failed.
    pub error: Option<JobError>,
    /// The live preview image while processing (with `FORGE_PREVIEWS`).
    pub preview_url: Option<String>,
    /// The seed Forge used, once complete (null for the placeholder or when Forge did not say).
    pub seed: Option<i64>,
    /// The checkpoint: the one asked for (or `DEFAULT_MODEL`; null: whatever the backend has
    /// loaded) until the job completes, then the one Forge reports it generated with.
    pub model: Option<String>,
    /// The prompt.
    pub prompt: String,
    /// Generation parameters.
    pub params: GenerationParams,
    /// Client-owned data.
    #[schema(value_type = Object)]
    pub data: ViewData,
    /// The message this one retries.
    pub retry_of: Option<Uuid>,
    /// Grows with every write; a client ignores anything older than what it has.
    #[schema(minimum = 1)]
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

/// The client data of a view, serialized once when the view is made: a listing then holds the
/// text of each message's data, not a tree of values per message (a tree of a 64 KiB array of
/// numbers takes about a megabyte), and the answer copies the text.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ViewData(Box<serde_json::value::RawValue>);

impl ViewData {
    /// The data of `value`.
    pub fn of(value: &Value) -> ViewData {
        ViewData(serde_json::value::to_raw_value(value).unwrap_or_else(|_| {
            serde_json::value::RawValue::from_string("{}".into()).expect("{} is JSON")
        }))
    }

    /// Its JSON text.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// The data as a value tree (tests, and callers that inspect it).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.0.get()).unwrap_or(Value::Null)
    }
}

impl PartialEq for ViewData {
    fn eq(&self, other: &ViewData) -> bool {
        self.0.get() == other.0.get() || self.to_value() == other.to_value()
    }
}

/// What the queue says about a queued message right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LivePosition {
    /// Queued at this 1-based position, with the queue's ETA estimate.
    Queued {
        /// 1-based position.
        position: u32,
        /// Seconds until done, when the queue has a processing-time history.
        eta_s: Option<u32>,
    },
    /// Not in the queue (not queued, or popped and its `processing` write in flight).
    NotQueued,
    /// The queue store could not be read.
    Unavailable,
}

impl ChatMessage {
    /// A new message of `user_id` from `request`, queued at `now` (version 1): the one place a
    /// message is made; what only the queue knows (its ticket and position) and what only some
    /// messages have (a retry's original, an idempotency key) are set by the caller after.
    pub fn queued(
        id: Uuid,
        user_id: &str,
        request: CreateRequest,
        now: DateTime<Utc>,
    ) -> ChatMessage {
        ChatMessage {
            id,
            user_id: user_id.to_owned(),
            conversation_id: request.conversation_id,
            status: JobStatus::Queued,
            progress: 0,
            queue_position: None,
            ticket: None,
            prompt: request.prompt,
            params: request.params,
            image_url: None,
            placeholder: false,
            error: None,
            data: request.data,
            version: 1,
            retry_of: None,
            backend: None,
            idempotency_key: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            updated_at: now,
            activity_at: now,
            eta_s: None,
            preview_url: None,
            seed: None,
            model: request.model,
            client_refs: ClientRefs::default(),
            runs: 0,
        }
    }

    /// The public view at time `now`. A queued message shows its live position (never a stale
    /// one another job now has); a processing one Forge's estimate, counted down since it came.
    /// The data is serialized from the message's tree, never copied as a tree.
    pub fn view(&self, live: LivePosition, now: DateTime<Utc>) -> MessageView {
        let (queue_position, position_unavailable, eta_s) = match (self.status, live) {
            (JobStatus::Queued, LivePosition::Queued { position, eta_s }) => {
                (Some(position), false, eta_s)
            }
            (JobStatus::Queued, LivePosition::Unavailable) => (None, true, None),
            (JobStatus::Processing, _) => {
                let elapsed = (now - self.activity_at).num_seconds().max(0);
                let left = self
                    .eta_s
                    .map(|eta| (i64::from(eta) - elapsed).max(0) as u32);
                (None, false, left)
            }
            _ => (None, false, None),
        };
        MessageView {
            id: self.id,
            conversation_id: self.conversation_id.clone(),
            status: self.status,
            progress: self.progress,
            queue_position,
            position_unavailable,
            eta_s,
            image_url: self.image_url.clone(),
            placeholder: self.placeholder,
            notice: self.placeholder.then(Notice::placeholder),
            error: self.error.clone(),
            preview_url: self.preview_url.clone(),
            seed: self.seed,
            model: self.model.clone(),
            prompt: self.prompt.clone(),
            params: self.params.clone(),
            data: ViewData::of(&self.data),
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
    pub(crate) fn queued_message() -> ChatMessage {
        let request = CreateRequest {
            prompt: "a cat".into(),
            params: GenerationParams::default(),
            conversation_id: None,
            model: None,
            data: json!({}),
        };
        let mut message = ChatMessage::queued(Uuid::now_v7(), "alice", request, Utc::now());
        message.queue_position = Some(3);
        message.ticket = Some(7);
        message
    }

    #[test]
    fn every_key_of_the_view_but_data_is_server_owned() {
        let view = serde_json::to_value(queued_message().view(LivePosition::NotQueued, Utc::now()))
            .unwrap();
        for key in view.as_object().unwrap().keys() {
            assert!(
                key == "data" || crate::domain::merge::SERVER_OWNED_FIELDS.contains(&key.as_str()),
                "the view's {key:?} is neither server-owned nor the client's data"
            );
        }
    }

    #[test]
    fn the_view_shows_the_live_position_only_while_queued() {
        let now = Utc::now();
        let mut message = queued_message();
        let live = LivePosition::Queued {
            position: 1,
            eta_s: Some(4),
        };
        assert_eq!(message.view(live, now).queue_position, Some(1));
        let unknown = message.view(LivePosition::Unavailable, now);
        assert_eq!(
            (unknown.queue_position, unknown.position_unavailable),
            (None, true)
        );
        assert_eq!(
            message.view(LivePosition::NotQueued, now).queue_position,
            None,
            "never a stale position"
        );
        message.status = JobStatus::Processing;
        message.eta_s = Some(10);
        message.activity_at = now - chrono::Duration::seconds(3);
        let view = message.view(live, now);
        assert_eq!((view.queue_position, view.eta_s), (None, Some(7)));
        message.activity_at = now - chrono::Duration::seconds(30);
        assert_eq!(message.view(live, now).eta_s, Some(0));
        message.status = JobStatus::Complete;
        message.placeholder = true;
        let view = message.view(live, now);
        assert_eq!(view.eta_s, None);
        assert_eq!(
            view.notice.map(|n| n.code),
            Some("forge_unavailable".to_owned())
        );
    }
}
