//! Job events: what the pipeline tells a user's browsers, one JSON text frame each.

use crate::domain::catalogue::JobError;
use crate::domain::frames::{ControlFrame, JobPositionFrame, JobPositionsFrame, SnapshotFrame};
use crate::domain::message::{MessageView, Notice};
use crate::domain::position_feed::JobPosition;
use crate::domain::status::JobStatus;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// One event about one message, addressed to its owner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// Owner of the message: only their sessions receive it.
    pub user_id: String,
    /// The message.
    pub message_id: Uuid,
    /// The message's version after the change (`None` only for an event that changes no record).
    pub version: Option<i64>,
    /// What happened.
    pub kind: JobEventKind,
}

/// What every job event frame carries besides the fields of its kind.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct EventEnvelope {
    /// The message.
    pub id: Uuid,
    /// The message's version after the change; grows with every write. A client ignores
    /// anything older than what it has.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = i64, minimum = 1)]
    pub version: Option<i64>,
    /// The status the message is in after the event (`message.updated` has none: it changes
    /// no status).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<JobStatus>,
}

/// A job event frame, without `seq`.
#[derive(Serialize)]
pub(crate) struct EventFrame<'a> {
    #[serde(flatten)]
    pub(crate) kind: &'a JobEventKind,
    #[serde(flatten)]
    pub(crate) envelope: EventEnvelope,
}

/// What happened to the message. Serialized with its wire `type`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type")]
pub enum JobEventKind {
    /// It entered the queue.
    #[serde(rename = "job.queued")]
    Queued {
        /// Its 1-based position (the newest this connection knows); null when the queue
        /// store could not say.
        #[schema(minimum = 1)]
        queue_position: Option<u32>,
    },
    /// A backend took it.
    #[serde(rename = "job.processing")]
    Processing {
        /// Always 0 at the start.
        progress: u8,
    },
    /// Forge reported progress.
    #[serde(rename = "job.progress")]
    Progress {
        /// 0..=100.
        #[schema(maximum = 100)]
        progress: u8,
        /// Estimated seconds until done.
        eta_s: Option<u32>,
    },
    /// Forge reported an intermediate image.
    #[serde(rename = "job.preview")]
    Preview {
        /// Where the preview is served.
        preview_url: String,
    },
    /// Done.
    #[serde(rename = "job.complete")]
    Complete {
        /// The image.
        image_url: String,
        /// True when the breaker served the placeholder.
        placeholder: bool,
        /// Why the placeholder was served.
        notice: Option<Notice>,
        /// The seed Forge used, when it said (null for the placeholder).
        seed: Option<i64>,
        /// The checkpoint it ran on (as Forge reports it), or the one asked for when Forge
        /// did not say; null when none was asked for and Forge did not say.
        model: Option<String>,
    },
    /// Failed.
    #[serde(rename = "job.error")]
    Error {
        /// Code and exact message.
        error: JobError,
    },
    /// Cancelled.
    #[serde(rename = "job.cancelled")]
    Cancelled {
        /// Code and message of the cancellation.
        error: Option<JobError>,
        /// The ref of the client's `cancel` command that did it, if it gave one.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        client_ref: Option<String>,
    },
    /// Client-owned data changed.
    #[serde(rename = "message.updated")]
    Updated {
        /// The whole merged data object.
        #[schema(value_type = Object)]
        data: Value,
        /// The ref of the client's `update_message` that did it, if it gave one.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        client_ref: Option<String>,
    },
}

/// Every frame type the server sends that is not a job event (`docs/api.md`): the `TYPE` of
/// each [`ControlFrame`].
pub const CONTROL_FRAME_TYPES: [&str; 7] = [
    crate::domain::frames::HelloFrame::TYPE,
    SnapshotFrame::TYPE,
    JobPositionFrame::TYPE,
    JobPositionsFrame::TYPE,
    crate::domain::frames::PongFrame::TYPE,
    crate::domain::frames::ResyncFrame::TYPE,
    crate::domain::frames::ErrorFrame::TYPE,
];

/// Every `type` a server frame can have: the control frames and one per [`JobEventKind`].
pub fn server_frame_types() -> Vec<&'static str> {
    let mut types = CONTROL_FRAME_TYPES.to_vec();
    types.extend(JobEventKind::examples().iter().map(JobEventKind::type_name));
    types
}

impl JobEventKind {
    /// One event of every kind. The match in [`JobEventKind::ordinal`] is exhaustive and a
    /// unit test checks this list covers every ordinal, so a new kind cannot be left out of
    /// [`server_frame_types`] (and so of the contract tests).
    pub fn examples() -> Vec<JobEventKind> {
        let error = JobError {
            code: "unknown".into(),
            message: "m".into(),
        };
        vec![
            JobEventKind::Queued {
                queue_position: Some(1),
            },
            JobEventKind::Processing { progress: 0 },
            JobEventKind::Progress {
                progress: 50,
                eta_s: Some(3),
            },
            JobEventKind::Preview {
                preview_url: "/images/x.preview.png".into(),
            },
            JobEventKind::Complete {
                image_url: "/images/x.png".into(),
                placeholder: false,
                notice: None,
                seed: Some(1),
                model: None,
            },
            JobEventKind::Error {
                error: error.clone(),
            },
            JobEventKind::Cancelled {
                error: Some(error),
                client_ref: None,
            },
            JobEventKind::Updated {
                client_ref: None,
                data: Value::Object(Default::default()),
            },
        ]
    }

    /// The kind's place in [`JobEventKind::examples`].
    #[cfg(test)]
    fn ordinal(&self) -> usize {
        match self {
            JobEventKind::Queued { .. } => 0,
            JobEventKind::Processing { .. } => 1,
            JobEventKind::Progress { .. } => 2,
            JobEventKind::Preview { .. } => 3,
            JobEventKind::Complete { .. } => 4,
            JobEventKind::Error { .. } => 5,
            JobEventKind::Cancelled { .. } => 6,
            JobEventKind::Updated { .. } => 7,
        }
    }

    /// The wire `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            JobEventKind::Queued { .. } => "job.queued",
            JobEventKind::Processing { .. } => "job.processing",
            JobEventKind::Progress { .. } => "job.progress",
            JobEventKind::Preview { .. } => "job.preview",
            JobEventKind::Complete { .. } => "job.complete",
            JobEventKind::Error { .. } => "job.error",
            JobEventKind::Cancelled { .. } => "job.cancelled",
            JobEventKind::Updated { .. } => "message.updated",
        }
    }

    /// The status the message is in after this event, for job events that imply one.
    pub fn status(&self) -> Option<JobStatus> {
        match self {
            JobEventKind::Queued { .. } => Some(JobStatus::Queued),
            JobEventKind::Processing { .. }
            | JobEventKind::Progress { .. }
            | JobEventKind::Preview { .. } => Some(JobStatus::Processing),
            JobEventKind::Complete { .. } => Some(JobStatus::Complete),
            JobEventKind::Error { .. } => Some(JobStatus::Error),
            JobEventKind::Cancelled { .. } => Some(JobStatus::Cancelled),
            JobEventKind::Updated { .. } => None,
        }
    }
}

impl JobEvent {
    /// The frame body without `seq`: `{"type":…,"id":…,"version":…,"status":…,<fields>}`.
    /// Sessions splice their own `seq` in front (see [`with_seq`]), so an event is serialized
    /// once however many sessions receive it.
    pub fn frame_body(&self) -> String {
        let frame = EventFrame {
            kind: &self.kind,
            envelope: EventEnvelope {
                id: self.message_id,
                version: self.version,
                status: self.kind.status(),
            },
        };
        serde_json::to_string(&frame).unwrap_or_default()
    }
}

impl JobEvent {
    /// The frame body of a `job.queued` event with `position` in place of the one it was
    /// made with (a session may know a newer one); the body as it is for any other event.
    pub fn queued_frame_body(&self, position: u32) -> String {
        match &self.kind {
            JobEventKind::Queued { .. } => JobEvent {
                kind: JobEventKind::Queued {
                    queue_position: Some(position),
                },
                user_id: String::new(),
                ..*self
            }
            .frame_body(),
            _ => self.frame_body(),
        }
    }
}

/// The `snapshot` frame body: all pending messages with live positions.
pub fn snapshot_frame_body(messages: &[MessageView]) -> String {
    SnapshotFrame { messages }.body()
}

/// The frame telling a user the live positions of their queued jobs: `job.position` for one
/// job, `job.positions` for several. Neither carries a version: positions change no record.
pub fn positions_frame_body(positions: &[JobPosition]) -> String {
    match positions {
        [one] => JobPositionFrame {
            id: one.id,
            queue_position: one.queue_position,
            eta_s: one.eta_s,
            status: JobStatus::Queued,
        }
        .body(),
        several => JobPositionsFrame { positions: several }.body(),
    }
}

/// Splices `"seq":N` into a frame body made by [`JobEvent::frame_body`] or [`control_frame_body`].
pub fn with_seq(body: &str, seq: u64) -> String {
    let rest = body.strip_prefix('{').unwrap_or(body);
    let separator = if rest.starts_with('}') { "" } else { "," };
    format!("{{\"seq\":{seq}{separator}{rest}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_queued_frame_made_again_differs_only_in_its_position() {
        let event = JobEvent {
            user_id: "ayse".into(),
            message_id: Uuid::from_u128(7),
            version: Some(4),
            kind: JobEventKind::Queued {
                queue_position: Some(9),
            },
        };
        let mut expected: Value = serde_json::from_str(&event.frame_body()).expect("JSON");
        expected["queue_position"] = json!(3);
        let again: Value = serde_json::from_str(&event.queued_frame_body(3)).expect("JSON");
        assert_eq!(again, expected);
        let progress = JobEvent {
            kind: JobEventKind::Progress {
                progress: 40,
                eta_s: None,
            },
            ..event
        };
        assert_eq!(progress.queued_frame_body(3), progress.frame_body());
    }

    #[test]
    fn frames_carry_type_id_version_status_and_seq() {
        let event = JobEvent {
            user_id: "alice".into(),
            message_id: Uuid::nil(),
            version: Some(3),
            kind: JobEventKind::Complete {
                image_url: "/images/x.png".into(),
                placeholder: false,
                notice: None,
                seed: Some(7),
                model: Some("b".into()),
            },
        };
        let frame: Value = serde_json::from_str(&with_seq(&event.frame_body(), 9)).unwrap();
        assert_eq!(
            frame,
            json!({"seq": 9, "type": "job.complete", "id": Uuid::nil(), "version": 3, "status": "complete",
                   "image_url": "/images/x.png", "placeholder": false, "notice": null, "seed": 7,
                   "model": "b"})
        );
    }

    #[test]
    fn events_round_trip_for_the_bus() {
        let event = JobEvent {
            user_id: "bob".into(),
            message_id: Uuid::now_v7(),
            version: Some(1),
            kind: JobEventKind::Error {
                error: JobError {
                    code: "stuck_job".into(),
                    message: "m".into(),
                },
            },
        };
        let text = serde_json::to_string(&event).unwrap();
        assert_eq!(serde_json::from_str::<JobEvent>(&text).unwrap(), event);
    }

    #[test]
    fn one_position_is_a_job_position_and_several_a_job_positions_frame() {
        let id = Uuid::from_u128(1);
        let one = [JobPosition {
            id,
            queue_position: 3,
            eta_s: Some(9),
        }];
        let frame: Value = serde_json::from_str(&positions_frame_body(&one)).unwrap();
        assert_eq!(
            frame,
            json!({"type": "job.position", "id": id, "queue_position": 3, "eta_s": 9, "status": "queued"})
        );
        let two = [
            one[0],
            JobPosition {
                id: Uuid::from_u128(2),
                queue_position: 7,
                eta_s: None,
            },
        ];
        let frame: Value = serde_json::from_str(&positions_frame_body(&two)).unwrap();
        assert_eq!(
            frame,
            json!({"type": "job.positions", "positions": [
                {"id": id, "queue_position": 3, "eta_s": 9},
                {"id": Uuid::from_u128(2), "queue_position": 7, "eta_s": null},
            ]})
        );
    }

    #[test]
    fn the_examples_cover_every_kind_and_the_types_are_unique() {
        let ordinals: Vec<usize> = JobEventKind::examples()
            .iter()
            .map(JobEventKind::ordinal)
            .collect();
        assert_eq!(ordinals, (0..ordinals.len()).collect::<Vec<_>>());
        let types = server_frame_types();
        let unique: std::collections::HashSet<_> = types.iter().collect();
        assert_eq!(unique.len(), types.len(), "{types:?}");
        let api = include_str!("../../docs/api.md");
        for kind in types {
            assert!(
                api.contains(&format!("| `{kind}` |")),
                "docs/api.md does not describe the frame `{kind}`"
            );
        }
    }

    #[test]
    fn seq_is_spliced_into_empty_and_full_bodies() {
        assert_eq!(with_seq("{}", 1), "{\"seq\":1}");
        assert_eq!(
            with_seq("{\"type\":\"pong\"}", 2),
            "{\"seq\":2,\"type\":\"pong\"}"
        );
    }
}
