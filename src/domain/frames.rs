//! The server's WebSocket frames that are not job events, as the types that serialize them.
//!
//! A job event frame is an `EventEnvelope` (id, version, status) with the fields of its
//! `JobEventKind` (both in [`crate::domain::event`]); every other frame is a [`ControlFrame`]. `seq` is spliced in per session
//! ([`crate::domain::event::with_seq`]). The AsyncAPI document's payload schemas are derived
//! from these types (`src/http/asyncapi.rs`), so a field added here is in the contract.

use crate::domain::catalogue::ErrorDetail;
use crate::domain::message::MessageView;
use crate::domain::position_feed::JobPosition;
use crate::domain::status::JobStatus;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

/// A frame that is not a job event, with its wire `type`.
pub trait ControlFrame: Serialize {
    /// The wire `type`.
    const TYPE: &'static str;

    /// The frame body without `seq`: `{"type": TYPE, <fields>}`.
    fn body(&self) -> String {
        let mut object = match serde_json::to_value(self) {
            Ok(Value::Object(object)) => object,
            _ => Map::new(),
        };
        object.insert("type".into(), Value::String(Self::TYPE.to_owned()));
        Value::Object(object).to_string()
    }
}

/// `hello`: the first frame of every connection.
#[derive(Serialize, utoipa::ToSchema)]
pub struct HelloFrame<'a> {
    /// The token's user (`sub`).
    pub user: &'a str,
    /// The server's time when the connection opened.
    pub server_time: DateTime<Utc>,
}

impl ControlFrame for HelloFrame<'_> {
    const TYPE: &'static str = "hello";
}

/// `snapshot`: every pending message of the user, with live positions (after `hello`, and
/// after a `resync`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct SnapshotFrame<'a> {
    /// The user's queued and processing messages.
    pub messages: &'a [MessageView],
}

impl ControlFrame for SnapshotFrame<'_> {
    const TYPE: &'static str = "snapshot";
}

/// `job.position`: the new live position of one queued job. It carries no version: a
/// position changes no record.
#[derive(Serialize, utoipa::ToSchema)]
pub struct JobPositionFrame {
    /// The message.
    pub id: Uuid,
    /// Its 1-based position.
    #[schema(minimum = 1)]
    pub queue_position: u32,
    /// Seconds until done, from the queue's recent processing times, when known.
    pub eta_s: Option<u32>,
    /// Always `queued`.
    pub status: JobStatus,
}

impl ControlFrame for JobPositionFrame {
    const TYPE: &'static str = "job.position";
}

/// `job.positions`: the new live positions of several queued jobs of the user, in one frame.
#[derive(Serialize, utoipa::ToSchema)]
pub struct JobPositionsFrame<'a> {
    /// One entry per job whose position changed.
    pub positions: &'a [JobPosition],
}

impl ControlFrame for JobPositionsFrame<'_> {
    const TYPE: &'static str = "job.positions";
}

/// `pong`: the answer to a `ping` command.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PongFrame {}

impl ControlFrame for PongFrame {
    const TYPE: &'static str = "pong";
}

/// `resync`: frames were dropped for this connection (it read too slowly); reload over
/// REST, or send `{"type":"resync"}` for a new snapshot.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ResyncFrame {}

impl ControlFrame for ResyncFrame {
    const TYPE: &'static str = "resync";
}

/// `error`: a refused command or frame.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorFrame<'a> {
    /// The code, the Turkish message and the offending field.
    pub error: ErrorDetail,
    /// The message id the refused command named.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub id: Option<&'a str>,
    /// The refused command's `ref`, if it had one.
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub client_ref: Option<&'a str>,
}

impl ControlFrame for ErrorFrame<'_> {
    const TYPE: &'static str = "error";
}
