//! The `messages` table: one row per image request and everything that happened to it.
//!
//! The columns the watchdog and the reload queries filter on (`status`, `activity_at`,
//! `user_id`, `created_at`, `ticket`) are real indexed columns, written in the same statement
//! as the JSON columns (see the `migration` crate for the indexes).

use sea_orm::entity::prelude::*;

/// One image request.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "messages")]
pub struct Model {
    /// Message id and job id (UUID v7, time-ordered).
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Owner (the JWT `sub`).
    pub user_id: String,
    /// The chat conversation the request belongs to, if the client gave one.
    pub conversation_id: Option<String>,
    /// `queued`, `processing`, `complete`, `error` or `cancelled`.
    pub status: String,
    /// 0..=100.
    pub progress: i16,
    /// The 1-based queue position at the last status transition (live positions come from the queue).
    pub queue_position: Option<i32>,
    /// The queue ticket (from the atomic counter); orders the queue and its rebuild.
    pub ticket: Option<i64>,
    /// The prompt as the user wrote it.
    #[sea_orm(column_type = "Text")]
    pub prompt: String,
    /// Validated generation parameters (JSON object).
    #[sea_orm(column_type = "JsonBinary")]
    pub params: Json,
    /// `/images/<id>.png` once complete.
    pub image_url: Option<String>,
    /// True when the breaker served the bundled placeholder image.
    pub placeholder: bool,
    /// Machine-readable error code (`forge_timeout`, `stuck_job`, ...).
    pub error_code: Option<String>,
    /// The exact user-facing (Turkish) error message.
    #[sea_orm(column_type = "Text", nullable)]
    pub error_message: Option<String>,
    /// Client-owned data, deep-merged with JSON Merge Patch (RFC 7396).
    #[sea_orm(column_type = "JsonBinary")]
    pub data: Json,
    /// Grows with every change; the compare-and-swap token of every write.
    pub version: i64,
    /// The message this one retries, if any.
    pub retry_of: Option<Uuid>,
    /// The Forge backend that ran (or runs) the job.
    pub backend: Option<String>,
    /// The client's `Idempotency-Key` on create, unique per user.
    pub idempotency_key: Option<String>,
    /// When the message was created.
    pub created_at: DateTimeUtc,
    /// When a backend took the job.
    pub started_at: Option<DateTimeUtc>,
    /// When the job reached a terminal state.
    pub finished_at: Option<DateTimeUtc>,
    /// Moves on every write.
    pub updated_at: DateTimeUtc,
    /// Last sign of life of the job (a transition or a new generation step); the watchdog reads it.
    pub activity_at: DateTimeUtc,
    /// Forge's estimate of the seconds left, as of `activity_at` (processing jobs).
    pub eta_s: Option<i32>,
    /// `/images/<id>.preview.png` while a live preview exists.
    pub preview_url: Option<String>,
    /// The seed Forge used (from its answer), once complete.
    pub seed: Option<i64>,
    /// The checkpoint asked for (or the default), and once complete the one Forge used.
    pub model: Option<String>,
    /// The refs of the client writes applied lately, a JSON array of `[ref, ms]` as text.
    #[sea_orm(column_type = "Text")]
    pub client_refs: String,
    /// How many times a backend has taken the job: the fencing token of its current run.
    pub runs: i64,
    /// When the process running the job last renewed its lease (`JOB_LEASE`); written only by
    /// the renewal, never by a message write.
    pub lease_at: Option<DateTimeUtc>,
}

/// The table has no relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
