//! Rows ↔ the domain [`Message`].
//!
//! Reads select the JSON columns (`params`, `data`) as text and parse them here, row by row,
//! instead of letting the driver decode them: one row whose JSON the driver cannot decode
//! (a manual edit, or a value a past version let in) would otherwise fail the whole query, and
//! with it a user's listing or a write batch shared with other users. Client data that does
//! not parse is kept, as text, under [`UNREADABLE_DATA_KEY`] (the next write stores it that
//! way, so the row heals); any other undecodable column makes [`DbError::Corrupt`] for that
//! row alone.

use super::DbError;
use crate::domain::catalogue::JobError;
use crate::domain::client_refs::ClientRefs;
use crate::domain::message::ChatMessage;
use crate::domain::params::GenerationParams;
use chrono::{DateTime, Utc};
use entity::messages::{ActiveModel, Column, Entity};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Expr, ExprTrait as _};
use sea_orm::{EntityTrait, FromQueryResult, QuerySelect, Select};
use serde_json::Value;
use uuid::Uuid;

/// The key under which client data that no longer parses is kept as text.
pub const UNREADABLE_DATA_KEY: &str = "_unreadable_data";

/// One row as read, with the JSON columns as text.
#[derive(Debug, FromQueryResult)]
pub(super) struct MessageRow {
    id: Uuid,
    user_id: String,
    conversation_id: Option<String>,
    status: String,
    progress: i16,
    queue_position: Option<i32>,
    ticket: Option<i64>,
    prompt: String,
    params: String,
    image_url: Option<String>,
    placeholder: bool,
    error_code: Option<String>,
    error_message: Option<String>,
    data: String,
    version: i64,
    retry_of: Option<Uuid>,
    backend: Option<String>,
    idempotency_key: Option<String>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
    activity_at: DateTime<Utc>,
    eta_s: Option<i32>,
    preview_url: Option<String>,
    seed: Option<i64>,
    model: Option<String>,
    client_refs: String,
    runs: i64,
}

/// A row that cannot be decoded, handed back with why.
pub(super) struct Undecodable {
    pub error: DbError,
    pub row: MessageRow,
}

/// A decoded row.
pub(super) struct Decoded {
    pub message: ChatMessage,
    /// The client data did not parse and is kept as text.
    pub data_was_unreadable: bool,
}

/// `SELECT` of whole messages, the JSON columns as text.
pub(super) fn select_messages() -> Select<Entity> {
    use sea_orm::Iterable as _;
    Entity::find()
        .select_only()
        .columns(Column::iter().filter(|column| !matches!(column, Column::Params | Column::Data)))
        .expr_as(Expr::col(Column::Params).cast_as("text"), "params")
        .expr_as(Expr::col(Column::Data).cast_as("text"), "data")
}

impl MessageRow {
    /// The row's id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The row's status as stored.
    pub fn status(&self) -> &str {
        &self.status
    }

    /// The domain message, or the row back with why it does not decode.
    pub fn into_domain(self) -> Result<Decoded, Box<Undecodable>> {
        let id = self.id;
        let corrupt = |reason: String| DbError::Corrupt { id, reason };
        let status = match self.status.parse() {
            Ok(status) => status,
            Err(err) => {
                let err: crate::domain::status::UnknownStatus = err;
                return Err(Box::new(Undecodable {
                    error: corrupt(err.to_string()),
                    row: self,
                }));
            }
        };
        let params: GenerationParams = match serde_json::from_str(&self.params) {
            Ok(params) => params,
            Err(err) => {
                return Err(Box::new(Undecodable {
                    error: corrupt(format!("params: {err}")),
                    row: self,
                }));
            }
        };
        let (data, data_was_unreadable) = match serde_json::from_str::<Value>(&self.data) {
            Ok(data) => (data, false),
            Err(err) => {
                tracing::warn!(message_id = %id, error = %err, "client data does not parse; kept as text under {UNREADABLE_DATA_KEY}");
                let mut kept = serde_json::Map::new();
                kept.insert(UNREADABLE_DATA_KEY.to_owned(), Value::String(self.data));
                (Value::Object(kept), true)
            }
        };
        let error = self.error_code.map(|code| JobError {
            code,
            message: self.error_message.unwrap_or_default(),
        });
        let message = ChatMessage {
            id,
            user_id: self.user_id,
            conversation_id: self.conversation_id,
            status,
            progress: self.progress.clamp(0, 100) as u8,
            queue_position: self.queue_position.and_then(|p| u32::try_from(p).ok()),
            ticket: self.ticket,
            prompt: self.prompt,
            params,
            image_url: self.image_url,
            placeholder: self.placeholder,
            error,
            data,
            version: self.version,
            retry_of: self.retry_of,
            backend: self.backend,
            idempotency_key: self.idempotency_key,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            updated_at: self.updated_at,
            activity_at: self.activity_at,
            eta_s: self.eta_s.and_then(|eta| u32::try_from(eta).ok()),
            preview_url: self.preview_url,
            seed: self.seed,
            model: self.model,
            client_refs: ClientRefs::from_json(&self.client_refs),
            runs: self.runs,
        };
        Ok(Decoded {
            message,
            data_was_unreadable,
        })
    }
}

/// What the quarantine of an undecodable row writes: the failure, and JSON columns that
/// parse (what did not parse is kept as text in the client data, nothing is thrown away).
pub(super) struct Quarantine {
    pub params: Value,
    pub data: Value,
}

impl MessageRow {
    /// Whether the row may still be failed: pending, or a status nobody knows.
    pub fn may_quarantine(&self) -> bool {
        !matches!(
            self.status.parse::<crate::domain::status::JobStatus>(),
            Ok(status) if status.is_terminal()
        )
    }

    /// The row's version.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// The repaired JSON columns of a quarantine.
    pub fn quarantine(&self) -> Quarantine {
        let mut data = match serde_json::from_str::<Value>(&self.data) {
            Ok(Value::Object(data)) => data,
            _ => {
                let mut kept = serde_json::Map::new();
                kept.insert(
                    UNREADABLE_DATA_KEY.to_owned(),
                    Value::String(self.data.clone()),
                );
                kept
            }
        };
        let params = match serde_json::from_str::<GenerationParams>(&self.params) {
            Ok(params) => serde_json::to_value(params).unwrap_or_default(),
            Err(_) => {
                data.insert(
                    UNREADABLE_PARAMS_KEY.to_owned(),
                    Value::String(self.params.clone()),
                );
                serde_json::to_value(GenerationParams::default()).unwrap_or_default()
            }
        };
        Quarantine {
            params,
            data: Value::Object(data),
        }
    }

    /// The row as the quarantine leaves it: failed with `error`, its JSON columns repaired.
    pub fn quarantined(mut self, error: &JobError, fixed: &Quarantine, now: DateTime<Utc>) -> Self {
        self.status = crate::domain::status::JobStatus::Error.as_str().to_owned();
        self.error_code = Some(error.code.clone());
        self.error_message = Some(error.message.clone());
        self.params = fixed.params.to_string();
        self.data = fixed.data.to_string();
        self.version += 1;
        self.queue_position = None;
        self.eta_s = None;
        self.preview_url = None;
        self.updated_at = now;
        self.activity_at = now;
        self.finished_at = Some(now);
        self
    }
}

/// The key under which generation parameters that no longer parse are kept as text, in the
/// client data of a quarantined row.
pub const UNREADABLE_PARAMS_KEY: &str = "_unreadable_params";

/// The columns a write after create may change (the others are fixed at create).
pub(super) const MUTABLE_COLUMNS: [Column; 21] = [
    Column::Status,
    Column::Progress,
    Column::QueuePosition,
    Column::Ticket,
    Column::ImageUrl,
    Column::Placeholder,
    Column::ErrorCode,
    Column::ErrorMessage,
    Column::Data,
    Column::Version,
    Column::Backend,
    Column::StartedAt,
    Column::FinishedAt,
    Column::UpdatedAt,
    Column::ActivityAt,
    Column::EtaS,
    Column::PreviewUrl,
    Column::Seed,
    Column::Model,
    Column::ClientRefs,
    Column::Runs,
];

/// PostgreSQL's name for a column's type, for the casts a `VALUES` list of parameters needs
/// (SQLite needs none).
pub(super) fn pg_type(column: Column) -> &'static str {
    match column {
        Column::Id | Column::RetryOf => "uuid",
        Column::Progress => "int2",
        Column::QueuePosition | Column::EtaS => "int4",
        Column::Ticket | Column::Version | Column::Seed | Column::Runs => "int8",
        Column::Placeholder => "bool",
        Column::Params | Column::Data => "jsonb",
        Column::CreatedAt
        | Column::StartedAt
        | Column::FinishedAt
        | Column::UpdatedAt
        | Column::ActivityAt
        | Column::LeaseAt => "timestamptz",
        Column::Prompt | Column::ErrorMessage | Column::ClientRefs => "text",
        Column::UserId
        | Column::ConversationId
        | Column::Status
        | Column::ImageUrl
        | Column::ErrorCode
        | Column::Backend
        | Column::IdempotencyKey
        | Column::PreviewUrl
        | Column::Model => "varchar",
    }
}

/// The value of `column` in `model`, bound exactly as sea-orm binds it in its own statements.
pub(super) fn column_value(model: &ActiveModel, column: Column) -> sea_orm::Value {
    use sea_orm::ActiveModelTrait as _;
    model
        .get(column)
        .into_value()
        .unwrap_or(sea_orm::Value::String(None))
}

/// The row of a message.
pub(super) fn to_active(message: &ChatMessage) -> ActiveModel {
    ActiveModel {
        id: Set(message.id),
        user_id: Set(message.user_id.clone()),
        conversation_id: Set(message.conversation_id.clone()),
        status: Set(message.status.as_str().to_owned()),
        progress: Set(i16::from(message.progress)),
        queue_position: Set(message
            .queue_position
            .map(|p| i32::try_from(p).unwrap_or(i32::MAX))),
        ticket: Set(message.ticket),
        prompt: Set(message.prompt.clone()),
        params: Set(serde_json::to_value(&message.params).unwrap_or_default()),
        image_url: Set(message.image_url.clone()),
        placeholder: Set(message.placeholder),
        error_code: Set(message.error.as_ref().map(|e| e.code.clone())),
        error_message: Set(message.error.as_ref().map(|e| e.message.clone())),
        data: Set(message.data.clone()),
        version: Set(message.version),
        retry_of: Set(message.retry_of),
        backend: Set(message.backend.clone()),
        idempotency_key: Set(message.idempotency_key.clone()),
        created_at: Set(message.created_at),
        started_at: Set(message.started_at),
        finished_at: Set(message.finished_at),
        updated_at: Set(message.updated_at),
        activity_at: Set(message.activity_at),
        eta_s: Set(message
            .eta_s
            .map(|eta| i32::try_from(eta).unwrap_or(i32::MAX))),
        preview_url: Set(message.preview_url.clone()),
        seed: Set(message.seed),
        model: Set(message.model.clone()),
        client_refs: Set(message.client_refs.to_json()),
        runs: Set(message.runs),
        // Only the lease renewal writes it; a message write leaves it as it is.
        lease_at: sea_orm::ActiveValue::NotSet,
    }
}
