//! Every read of the `messages` table. Listings decode row by row (see [`super::rows`]): a
//! row that cannot be decoded is left out of a listing with an error in the log, never the
//! reason a whole listing fails.

use super::rows::{MessageRow, select_messages};
use super::{Database, DbError};
use crate::domain::message::ChatMessage;
use crate::domain::status::JobStatus;
use chrono::{DateTime, Utc};
use entity::messages::{Column, Entity};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, FromQueryResult, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Statement,
};
use uuid::Uuid;

/// Filters of a message listing.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Only these statuses (empty = all).
    pub statuses: Vec<JobStatus>,
    /// Only this conversation.
    pub conversation_id: Option<String>,
    /// At most this many (newest first).
    pub limit: u64,
    /// Only messages older than this one.
    pub before: Option<Uuid>,
}

const PENDING: [&str; 2] = ["queued", "processing"];

/// The metrics' count of pending messages (public so the benchmark can EXPLAIN it).
pub const COUNT_PENDING: &str = "SELECT status, COUNT(*) AS count FROM messages WHERE status IN ('queued', 'processing') GROUP BY status";

/// Messages as read from the database, not decoded yet: a caller goes through them one at a
/// time ([`decode_each`](Self::decode_each)), so a listing never holds every message's data as
/// a tree of values at once.
pub struct StoredPage {
    rows: Vec<MessageRow>,
    db: Database,
}

/// Which queued jobs [`Database::stuck_jobs`] may judge.
#[derive(Clone, Copy, Debug)]
pub enum QueuedStuck<'a> {
    /// Every one (the queue is not moving either).
    All,
    /// Those that ask for a model none of these (every model a backend lists) is.
    ForModelsNotIn(&'a [String]),
    /// None.
    None,
}

/// A queued job as the queue is rebuilt from it: id, owner, ticket, model.
pub type QueuedRow = (Uuid, String, i64, Option<String>);
impl StoredPage {
    /// How many messages.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The ids of the queued ones (their live positions are read before decoding).
    pub fn queued_ids(&self) -> Vec<Uuid> {
        self.rows
            .iter()
            .filter(|row| row.status() == JobStatus::Queued.as_str())
            .map(MessageRow::id)
            .collect()
    }

    /// The id of the last (oldest) message: where the next page starts.
    pub fn last_id(&self) -> Option<Uuid> {
        self.rows.last().map(MessageRow::id)
    }

    /// Decodes the messages in order and hands each to `f`, dropping it after; undecodable
    /// ones are logged and left out.
    pub fn decode_each<T>(self, mut f: impl FnMut(ChatMessage) -> T) -> Vec<T> {
        let db = self.db;
        self.rows
            .into_iter()
            .filter_map(|row| {
                let id = row.id();
                match db.decode(row) {
                    Ok(message) => Some(f(message)),
                    Err(err) => {
                        tracing::error!(message_id = %id, error = %err, "left an undecodable row out of a listing");
                        None
                    }
                }
            })
            .collect()
    }
}

impl Database {
    /// One message.
    pub async fn get(&self, id: Uuid) -> Result<Option<ChatMessage>, DbError> {
        select_messages()
            .filter(Column::Id.eq(id))
            .into_model::<MessageRow>()
            .one(&self.read)
            .await?
            .map(|row| self.decode(row))
            .transpose()
    }

    /// One message of one user (another user's id answers `None`).
    pub async fn get_for_user(
        &self,
        user_id: &str,
        id: Uuid,
    ) -> Result<Option<ChatMessage>, DbError> {
        Ok(self
            .get(id)
            .await?
            .filter(|message| message.user_id == user_id))
    }

    /// A user's message with this idempotency key.
    pub async fn find_by_idempotency_key(
        &self,
        user_id: &str,
        key: &str,
    ) -> Result<Option<ChatMessage>, DbError> {
        select_messages()
            .filter(Column::UserId.eq(user_id))
            .filter(Column::IdempotencyKey.eq(key))
            .into_model::<MessageRow>()
            .one(&self.read)
            .await?
            .map(|row| self.decode(row))
            .transpose()
    }

    /// A user's messages, newest first.
    pub async fn list(
        &self,
        user_id: &str,
        filter: &ListFilter,
    ) -> Result<Vec<ChatMessage>, DbError> {
        Ok(self
            .list_stored(user_id, filter)
            .await?
            .decode_each(|message| message))
    }

    /// A user's messages, newest first, as stored: decoded only when the caller goes through
    /// them ([`StoredPage::decode_each`]), one at a time.
    pub async fn list_stored(
        &self,
        user_id: &str,
        filter: &ListFilter,
    ) -> Result<StoredPage, DbError> {
        let mut query = select_messages().filter(Column::UserId.eq(user_id));
        if !filter.statuses.is_empty() {
            query = query.filter(Column::Status.is_in(filter.statuses.iter().map(|s| s.as_str())));
        }
        if let Some(conversation) = &filter.conversation_id {
            query = query.filter(Column::ConversationId.eq(conversation.as_str()));
        }
        // Newest first by id: ids are UUIDv7, made at submit and ordered by when, so the id
        // alone is the cursor. A `before` whose message is gone (retention) or is another
        // user's is still exactly a place in that order: nothing is skipped or shown twice.
        if let Some(before) = filter.before {
            query = query.filter(Column::Id.lt(before));
        }
        let rows = query
            .order_by_desc(Column::Id)
            .limit(filter.limit)
            .into_model::<MessageRow>()
            .all(&self.read)
            .await?;
        Ok(StoredPage {
            rows,
            db: self.clone(),
        })
    }

    /// A user's pending (queued or processing) messages, oldest first.
    pub async fn pending_for_user(&self, user_id: &str) -> Result<Vec<ChatMessage>, DbError> {
        Ok(self
            .pending_stored(user_id)
            .await?
            .decode_each(|message| message))
    }

    /// A user's pending (queued or processing) messages, oldest first, as stored.
    pub async fn pending_stored(&self, user_id: &str) -> Result<StoredPage, DbError> {
        let mut stored = self
            .list_stored(
                user_id,
                &ListFilter {
                    statuses: vec![JobStatus::Queued, JobStatus::Processing],
                    limit: 10_000,
                    ..ListFilter::default()
                },
            )
            .await?;
        stored.rows.reverse();
        Ok(stored)
    }

    /// Which of `ids` exist and are terminal (their pending-cap slot can be freed).
    pub async fn terminal_among(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, DbError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(Entity::find()
            .select_only()
            .column(Column::Id)
            .filter(Column::Id.is_in(ids.iter().copied()))
            .filter(Column::Status.is_not_in(PENDING))
            .into_tuple::<Uuid>()
            .all(&self.read)
            .await?)
    }

    /// The highest ticket ever drawn (new tickets must come after it).
    pub async fn max_ticket(&self) -> Result<i64, DbError> {
        Ok(Entity::find()
            .select_only()
            .column_as(Column::Ticket.max(), "max_ticket")
            .into_tuple::<Option<i64>>()
            .one(&self.read)
            .await?
            .flatten()
            .unwrap_or(0))
    }

    /// Every queued job in ticket order (id, owner, ticket, model): the record the queue is
    /// rebuilt from.
    pub async fn queued_in_ticket_order(&self) -> Result<Vec<QueuedRow>, DbError> {
        Ok(Entity::find()
            .select_only()
            .column(Column::Id)
            .column(Column::UserId)
            .column(Column::Ticket)
            .column(Column::Model)
            .filter(Column::Status.eq(JobStatus::Queued.as_str()))
            .filter(Column::Ticket.is_not_null())
            .order_by_asc(Column::Ticket)
            .into_tuple::<QueuedRow>()
            .all(&self.read)
            .await?)
    }

    /// How many messages are queued (an index-only count on `(status, …)`).
    pub async fn queued_count(&self) -> Result<u64, DbError> {
        Ok(Entity::find()
            .filter(Column::Status.eq(JobStatus::Queued.as_str()))
            .count(&self.read)
            .await?)
    }

    /// Pending jobs counted per user (to rebuild the queue's per-user pending sets).
    pub async fn pending_by_user(&self) -> Result<Vec<(String, Uuid)>, DbError> {
        Ok(Entity::find()
            .select_only()
            .column(Column::UserId)
            .column(Column::Id)
            .filter(Column::Status.is_in(PENDING))
            .into_tuple::<(String, Uuid)>()
            .all(&self.read)
            .await?)
    }

    /// Stuck jobs, by one indexed query on `(status, activity_at)`: processing jobs with no
    /// activity since `cutoff`, and queued ones with none either as `queued` says: all of
    /// them, or only those asking for a model no backend lists (they would wait forever).
    pub async fn stuck_jobs(
        &self,
        cutoff: DateTime<Utc>,
        queued: QueuedStuck<'_>,
        limit: u64,
    ) -> Result<Vec<(Uuid, String, JobStatus)>, DbError> {
        let processing = Column::Status.eq(PENDING[1]);
        let which = match queued {
            QueuedStuck::All => Condition::any()
                .add(processing)
                .add(Column::Status.eq(PENDING[0])),
            QueuedStuck::None => Condition::all().add(processing),
            QueuedStuck::ForModelsNotIn(listed) => Condition::any().add(processing).add(
                Condition::all()
                    .add(Column::Status.eq(PENDING[0]))
                    .add(Column::Model.is_not_null())
                    .add(Column::Model.is_not_in(listed.iter().map(String::as_str))),
            ),
        };
        let rows = Entity::find()
            .select_only()
            .column(Column::Id)
            .column(Column::UserId)
            .column(Column::Status)
            .filter(Column::Status.is_in(PENDING))
            .filter(which)
            .filter(Column::ActivityAt.lte(cutoff))
            .limit(limit)
            .into_tuple::<(Uuid, String, String)>()
            .all(&self.read)
            .await?;
        rows.into_iter()
            .map(|(id, user, status)| {
                let status =
                    status
                        .parse()
                        .map_err(
                            |err: crate::domain::status::UnknownStatus| DbError::Corrupt {
                                id,
                                reason: err.to_string(),
                            },
                        )?;
                Ok((id, user, status))
            })
            .collect()
    }

    /// Pending jobs created at or before `created_before` (past the job deadline), by one
    /// indexed query on `(status, created_at)`.
    pub async fn expired_jobs(
        &self,
        created_before: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<Uuid>, DbError> {
        Ok(Entity::find()
            .select_only()
            .column(Column::Id)
            .filter(Column::Status.is_in(PENDING))
            .filter(Column::CreatedAt.lte(created_before))
            .limit(limit)
            .into_tuple::<Uuid>()
            .all(&self.read)
            .await?)
    }

    /// Waiting and running messages counted by status (for the metrics). Only pending rows are
    /// counted, by the index on `(status, activity_at)`, so a scrape costs as much as the queue
    /// is deep, not as the table is big; finished jobs are counted as they finish
    /// (`jobs_finished_total`).
    pub async fn count_pending_by_status(&self) -> Result<Vec<(JobStatus, i64)>, DbError> {
        #[derive(FromQueryResult)]
        struct Count {
            status: String,
            count: i64,
        }
        let rows = Count::find_by_statement(Statement::from_string(self.backend, COUNT_PENDING))
            .all(&self.read)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|row| row.status.parse().ok().map(|status| (status, row.count)))
            .collect())
    }

    /// The text of an `EXPLAIN` (benchmarks and operators checking index use).
    pub async fn explain(&self, sql: &str) -> Result<String, DbError> {
        let rows = self
            .read
            .query_all_raw(Statement::from_string(self.backend, sql.to_owned()))
            .await?;
        let mut lines = Vec::new();
        for row in rows {
            let mut cells = Vec::new();
            for column in row.column_names() {
                if let Ok(text) = row.try_get::<String>("", &column) {
                    cells.push(text);
                } else if let Ok(number) = row.try_get::<i64>("", &column) {
                    cells.push(number.to_string());
                }
            }
            lines.push(cells.join(" | "));
        }
        Ok(lines.join("\n"))
    }
}
