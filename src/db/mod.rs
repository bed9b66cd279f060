//! The database edge: connecting, migrating, reading messages, and the batched
//! compare-and-swap write the store actor uses. Converts between the sea-orm entity and the
//! domain [`Message`]; nothing above this module sees sea-orm types.

use crate::domain::catalogue::JobError;
use crate::domain::change::{self, Change, Refusal};
use crate::domain::event::JobEventKind;
use crate::domain::message::Message;
use crate::domain::params::GenerationParams;
use crate::domain::status::JobStatus;
use chrono::{DateTime, Utc};
use entity::messages::{self, ActiveModel, Column, Entity};
use migration::{Migrator, MigratorTrait};
use parking_lot::Mutex;
use sea_orm::sea_query::{Expr, ExprTrait as _, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectOptions, ConnectionTrait, Database as SeaDatabase,
    DatabaseConnection, DbBackend, DbErr, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
    QuerySelect, Statement, TransactionTrait,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// A database error, as callers see it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    /// The driver or the server failed.
    #[error("database error: {0}")]
    Db(String),
    /// A row that does not decode (a bug or a manual edit).
    #[error("message {id} does not decode: {reason}")]
    Corrupt {
        /// The row.
        id: Uuid,
        /// What is wrong.
        reason: String,
    },
}

impl From<DbErr> for DbError {
    fn from(err: DbErr) -> Self {
        DbError::Db(err.to_string())
    }
}

/// How to connect.
#[derive(Clone, Debug)]
pub struct DbSettings {
    /// `postgres://…` or `sqlite://…`.
    pub url: String,
    /// PostgreSQL schema to create and use.
    pub schema: Option<String>,
    /// Pool size.
    pub max_connections: u32,
}

/// Connections to the database: a read pool and a write pool (one connection on SQLite,
/// which has a single writer anyway; the read pool on PostgreSQL).
#[derive(Clone)]
pub struct Database {
    read: DatabaseConnection,
    write: DatabaseConnection,
    backend: DbBackend,
    faults: Arc<Mutex<Option<InjectedFault>>>,
}

/// A statement the next writes run inside their transaction before commit, to prove that a
/// failure mid-write rolls everything back (used by tests; never armed in production).
#[derive(Clone, Debug)]
struct InjectedFault {
    sql: String,
    remaining: u32,
}

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

/// The changes for one message in a batch, in arrival order.
#[derive(Debug)]
pub struct RowWork {
    /// The message.
    pub id: Uuid,
    /// Its changes, applied one after another in one read-modify-write.
    pub changes: Vec<Change>,
}

/// What happened to one row of a batch.
#[derive(Debug)]
pub enum RowResult {
    /// Another writer changed the row since we read it: nothing was written; retry.
    Conflict,
    /// Written (or every change was refused and nothing needed writing).
    Done {
        /// One outcome per change: the event it produced and the version after it, or why it was refused.
        outcomes: Vec<Result<(JobEventKind, i64), Refusal>>,
        /// The message after all its changes (`None` if it does not exist).
        message: Option<Box<Message>>,
    },
}

impl Database {
    /// Connects, creates the schema if asked, and runs the migrations.
    pub async fn connect(settings: &DbSettings) -> Result<Database, DbError> {
        let is_sqlite = settings.url.starts_with("sqlite:");
        if is_sqlite {
            create_sqlite_parent(&settings.url)?;
        }
        let read = connect_pool(
            settings,
            if is_sqlite {
                Ord::max(settings.max_connections, 2)
            } else {
                settings.max_connections
            },
        )
        .await?;
        let write = if is_sqlite {
            connect_pool(settings, 1).await?
        } else {
            read.clone()
        };
        let backend = read.get_database_backend();
        if let (DbBackend::Postgres, Some(schema)) = (backend, &settings.schema) {
            write
                .execute_unprepared(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
                .await?;
        }
        Migrator::up(&write, None).await?;
        Ok(Database {
            read,
            write,
            backend,
            faults: Arc::new(Mutex::new(None)),
        })
    }

    /// `sqlite` or `postgres`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            DbBackend::Postgres => "postgres",
            DbBackend::Sqlite => "sqlite",
            _ => "other",
        }
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), DbError> {
        self.read.ping().await?;
        Ok(())
    }

    /// Closes the pools.
    pub async fn close(self) {
        let _ = self.read.close().await;
        if self.backend == DbBackend::Sqlite {
            let _ = self.write.close().await;
        }
    }

    /// Makes the next `count` batch writes run `sql` inside their transaction before commit
    /// (a failing statement, or one that kills the connection), so tests can prove rollback.
    pub fn inject_fault(&self, sql: &str, count: u32) {
        *self.faults.lock() = Some(InjectedFault {
            sql: sql.to_owned(),
            remaining: count,
        });
    }

    /// One message.
    pub async fn get(&self, id: Uuid) -> Result<Option<Message>, DbError> {
        Entity::find_by_id(id)
            .one(&self.read)
            .await?
            .map(to_domain)
            .transpose()
    }

    /// One message of one user (another user's id answers `None`).
    pub async fn get_for_user(&self, user_id: &str, id: Uuid) -> Result<Option<Message>, DbError> {
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
    ) -> Result<Option<Message>, DbError> {
        Entity::find()
            .filter(Column::UserId.eq(user_id))
            .filter(Column::IdempotencyKey.eq(key))
            .one(&self.read)
            .await?
            .map(to_domain)
            .transpose()
    }

    /// A user's messages, newest first.
    pub async fn list(&self, user_id: &str, filter: &ListFilter) -> Result<Vec<Message>, DbError> {
        let mut query = Entity::find().filter(Column::UserId.eq(user_id));
        if !filter.statuses.is_empty() {
            query = query.filter(Column::Status.is_in(filter.statuses.iter().map(|s| s.as_str())));
        }
        if let Some(conversation) = &filter.conversation_id {
            query = query.filter(Column::ConversationId.eq(conversation.as_str()));
        }
        if let Some(before) = filter.before {
            match Entity::find_by_id(before).one(&self.read).await? {
                Some(cursor) if cursor.user_id == user_id => {
                    query = query.filter(
                        Column::CreatedAt.lt(cursor.created_at).or(Column::CreatedAt
                            .eq(cursor.created_at)
                            .and(Column::Id.lt(before))),
                    );
                }
                _ => return Ok(Vec::new()),
            }
        }
        query
            .order_by_desc(Column::CreatedAt)
            .order_by_desc(Column::Id)
            .limit(filter.limit)
            .all(&self.read)
            .await?
            .into_iter()
            .map(to_domain)
            .collect()
    }

    /// A user's pending (queued or processing) messages, oldest first.
    pub async fn pending_for_user(&self, user_id: &str) -> Result<Vec<Message>, DbError> {
        let mut messages = self
            .list(
                user_id,
                &ListFilter {
                    statuses: vec![JobStatus::Queued, JobStatus::Processing],
                    limit: 10_000,
                    ..ListFilter::default()
                },
            )
            .await?;
        messages.reverse();
        Ok(messages)
    }

    /// Ids of a user's pending messages (to reconcile the queue's per-user count).
    pub async fn pending_ids_for_user(&self, user_id: &str) -> Result<Vec<Uuid>, DbError> {
        Ok(Entity::find()
            .select_only()
            .column(Column::Id)
            .filter(Column::UserId.eq(user_id))
            .filter(
                Column::Status.is_in([JobStatus::Queued.as_str(), JobStatus::Processing.as_str()]),
            )
            .into_tuple::<Uuid>()
            .all(&self.read)
            .await?)
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
            .filter(
                Column::Status
                    .is_not_in([JobStatus::Queued.as_str(), JobStatus::Processing.as_str()]),
            )
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

    /// Every queued job in ticket order: the record the queue is rebuilt from.
    pub async fn queued_in_ticket_order(&self) -> Result<Vec<(Uuid, String, i64)>, DbError> {
        Ok(Entity::find()
            .select_only()
            .column(Column::Id)
            .column(Column::UserId)
            .column(Column::Ticket)
            .filter(Column::Status.eq(JobStatus::Queued.as_str()))
            .filter(Column::Ticket.is_not_null())
            .order_by_asc(Column::Ticket)
            .into_tuple::<(Uuid, String, i64)>()
            .all(&self.read)
            .await?)
    }

    /// Pending jobs counted per user (to rebuild the queue's per-user pending sets).
    pub async fn pending_by_user(&self) -> Result<Vec<(String, Uuid)>, DbError> {
        Ok(Entity::find()
            .select_only()
            .column(Column::UserId)
            .column(Column::Id)
            .filter(
                Column::Status.is_in([JobStatus::Queued.as_str(), JobStatus::Processing.as_str()]),
            )
            .into_tuple::<(String, Uuid)>()
            .all(&self.read)
            .await?)
    }

    /// Stuck jobs, by one indexed query on `(status, activity_at)`: processing jobs with no
    /// activity since `cutoff`, and queued ones with none since `cutoff` while the queue did not
    /// move since then either (a long but moving queue is not stuck).
    pub async fn stuck_jobs(
        &self,
        cutoff: DateTime<Utc>,
        queue_moved_at: Option<DateTime<Utc>>,
        limit: u64,
    ) -> Result<Vec<(Uuid, String, JobStatus)>, DbError> {
        let queue_still = queue_moved_at.is_none_or(|moved| moved <= cutoff);
        let statuses: Vec<&str> = if queue_still {
            vec![JobStatus::Queued.as_str(), JobStatus::Processing.as_str()]
        } else {
            vec![JobStatus::Processing.as_str()]
        };
        let rows = Entity::find()
            .select_only()
            .column(Column::Id)
            .column(Column::UserId)
            .column(Column::Status)
            .filter(Column::Status.is_in(statuses))
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
            .filter(
                Column::Status.is_in([JobStatus::Queued.as_str(), JobStatus::Processing.as_str()]),
            )
            .filter(Column::CreatedAt.lte(created_before))
            .limit(limit)
            .into_tuple::<Uuid>()
            .all(&self.read)
            .await?)
    }

    /// Messages counted by status (for the metrics).
    pub async fn count_by_status(&self) -> Result<Vec<(JobStatus, i64)>, DbError> {
        #[derive(FromQueryResult)]
        struct Count {
            status: String,
            count: i64,
        }
        let rows = Count::find_by_statement(Statement::from_string(
            self.backend,
            "SELECT status, COUNT(*) AS count FROM messages GROUP BY status",
        ))
        .all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|row| row.status.parse().ok().map(|status| (status, row.count)))
            .collect())
    }

    /// Applies each row's changes in order (one read, one write per row) and writes every
    /// changed row in one transaction. Each update is a compare-and-swap on `version`; a row
    /// another writer changed meanwhile comes back as [`RowResult::Conflict`] and is not
    /// written. Any error rolls the whole transaction back: no row changes.
    pub async fn apply_batch(
        &self,
        work: &[RowWork],
        now: DateTime<Utc>,
    ) -> Result<Vec<RowResult>, DbError> {
        // One connection and one transaction per batch: the read, the writes, the commit. A
        // row that starts with its own creation has nothing to read (ids are fresh UUIDs; a
        // duplicate is refused by the insert).
        let txn = self.write.begin().await?;
        let ids: Vec<Uuid> = work
            .iter()
            .filter(|row| !matches!(row.changes.first(), Some(Change::Create(_))))
            .map(|row| row.id)
            .collect();
        let mut current: HashMap<Uuid, messages::Model> = if ids.is_empty() {
            HashMap::new()
        } else {
            Entity::find()
                .filter(Column::Id.is_in(ids))
                .all(&txn)
                .await?
                .into_iter()
                .map(|row| (row.id, row))
                .collect()
        };

        enum Write {
            Insert(Box<Message>),
            Update {
                message: Box<Message>,
                expected_version: i64,
            },
        }
        let mut results = Vec::with_capacity(work.len());
        let mut writes: Vec<(usize, Write)> = Vec::new();
        for (index, row) in work.iter().enumerate() {
            let before = current.remove(&row.id).map(to_domain).transpose()?;
            let expected_version = before.as_ref().map(|message| message.version);
            let mut message = before;
            let mut outcomes = Vec::with_capacity(row.changes.len());
            let mut changed = false;
            for change in &row.changes {
                let outcome = change::apply(&mut message, change, now);
                if let Some(applied) = &message {
                    let outcome = outcome.map(|event| (event, applied.version));
                    changed |= outcome.is_ok();
                    outcomes.push(outcome);
                } else {
                    outcomes.push(outcome.map(|event| (event, 0)));
                }
            }
            if changed && let Some(after) = &message {
                let write = match expected_version {
                    None => Write::Insert(Box::new(after.clone())),
                    Some(expected_version) => Write::Update {
                        message: Box::new(after.clone()),
                        expected_version,
                    },
                };
                writes.push((index, write));
            }
            results.push(RowResult::Done {
                outcomes,
                message: message.map(Box::new),
            });
        }
        if writes.is_empty() {
            // Every change was refused: nothing to write; end the read-only transaction.
            txn.rollback().await?;
            return Ok(results);
        }

        let fault = {
            let mut guard = self.faults.lock();
            let fault = guard
                .as_mut()
                .filter(|fault| fault.remaining > 0)
                .map(|fault| {
                    fault.remaining -= 1;
                    fault.sql.clone()
                });
            if guard.as_ref().is_some_and(|fault| fault.remaining == 0) {
                *guard = None;
            }
            fault
        };

        let mut inserts = Vec::new();
        let mut updates = Vec::new();
        for (index, write) in writes {
            match write {
                Write::Insert(message) => inserts.push((index, message)),
                Write::Update {
                    message,
                    expected_version,
                } => updates.push((index, message, expected_version)),
            }
        }
        // One statement for all inserts and one for all updates, whatever the batch size: a
        // statement per row made the round trips and the server's per-statement work the
        // largest cost of a job on PostgreSQL.
        let mut refused_inserts = Vec::new();
        if !inserts.is_empty() {
            let inserted = returned_ids(
                &txn,
                insert_statement(self.backend, inserts.iter().map(|(_, message)| &**message))?,
            )
            .await?;
            // A duplicate id or (user, Idempotency-Key) leaves the row out instead of failing
            // everyone's transaction.
            refused_inserts.extend(
                inserts
                    .iter()
                    .filter(|(_, message)| !inserted.contains(&message.id))
                    .map(|(index, _)| *index),
            );
        }
        let mut conflicts = Vec::new();
        if !updates.is_empty() {
            let updated = returned_ids(
                &txn,
                cas_update_statement(
                    self.backend,
                    updates
                        .iter()
                        .map(|(_, message, expected)| (&**message, *expected)),
                ),
            )
            .await?;
            // A row whose version moved (another process wrote it) is not updated: a conflict.
            conflicts.extend(
                updates
                    .iter()
                    .filter(|(_, message, _)| !updated.contains(&message.id))
                    .map(|(index, _, _)| *index),
            );
        }
        if let Some(sql) = fault {
            txn.execute_unprepared(&sql).await?;
        }
        txn.commit().await?;
        for index in conflicts {
            results[index] = RowResult::Conflict;
        }
        for index in refused_inserts {
            let changes = work[index].changes.len();
            results[index] = RowResult::Done {
                outcomes: (0..changes).map(|_| Err(Refusal::AlreadyExists)).collect(),
                message: None,
            };
        }
        Ok(results)
    }

    /// Runs one statement outside any transaction (tools and benchmarks: dropping a schema).
    pub async fn execute_raw(&self, sql: &str) -> Result<(), DbError> {
        self.write.execute_unprepared(sql).await?;
        Ok(())
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

    /// Sets `activity_at` of processing jobs to `now` without a version change: a cheap
    /// "still alive" for jobs whose generation advanced but whose progress did not change.
    pub async fn touch_activity(&self, ids: &[Uuid], now: DateTime<Utc>) -> Result<(), DbError> {
        if ids.is_empty() {
            return Ok(());
        }
        Entity::update_many()
            .col_expr(Column::ActivityAt, Expr::value(now))
            .filter(Column::Id.is_in(ids.iter().copied()))
            .filter(Column::Status.eq(JobStatus::Processing.as_str()))
            .exec(&self.write)
            .await?;
        Ok(())
    }
}

async fn connect_pool(
    settings: &DbSettings,
    max_connections: u32,
) -> Result<DatabaseConnection, DbError> {
    let mut options = ConnectOptions::new(settings.url.clone());
    options
        .max_connections(max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    if let Some(schema) = &settings.schema {
        options.set_schema_search_path(schema.clone());
    }
    options.map_sqlx_sqlite_opts(|opts| {
        opts.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .create_if_missing(true)
    });
    Ok(SeaDatabase::connect(options).await?)
}

fn create_sqlite_parent(url: &str) -> Result<(), DbError> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    if let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .map_err(|err| DbError::Db(format!("cannot create {}: {err}", parent.display())))?;
    }
    Ok(())
}

fn to_domain(row: messages::Model) -> Result<Message, DbError> {
    let corrupt = |reason: String| DbError::Corrupt { id: row.id, reason };
    let status = row
        .status
        .parse()
        .map_err(|err: crate::domain::status::UnknownStatus| corrupt(err.to_string()))?;
    let params: GenerationParams = serde_json::from_value(row.params.clone())
        .map_err(|err| corrupt(format!("params: {err}")))?;
    let error = match (row.error_code.clone(), row.error_message.clone()) {
        (Some(code), Some(message)) => Some(JobError { code, message }),
        (Some(code), None) => Some(JobError {
            code,
            message: String::new(),
        }),
        _ => None,
    };
    Ok(Message {
        id: row.id,
        user_id: row.user_id,
        conversation_id: row.conversation_id,
        status,
        progress: row.progress.clamp(0, 100) as u8,
        queue_position: row.queue_position.and_then(|p| u32::try_from(p).ok()),
        ticket: row.ticket,
        prompt: row.prompt,
        params,
        image_url: row.image_url,
        placeholder: row.placeholder,
        error,
        data: row.data,
        version: row.version,
        retry_of: row.retry_of,
        backend: row.backend,
        idempotency_key: row.idempotency_key,
        created_at: row.created_at,
        started_at: row.started_at,
        finished_at: row.finished_at,
        updated_at: row.updated_at,
        activity_at: row.activity_at,
    })
}

/// The columns a write after create may change (the others are fixed at create).
const MUTABLE_COLUMNS: [Column; 15] = [
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
];

/// PostgreSQL's name for a column's type, for the casts a `VALUES` list of parameters needs
/// (SQLite needs none).
fn pg_type(column: Column) -> &'static str {
    match column {
        Column::Id | Column::RetryOf => "uuid",
        Column::Progress => "int2",
        Column::QueuePosition => "int4",
        Column::Ticket | Column::Version => "int8",
        Column::Placeholder => "bool",
        Column::Params | Column::Data => "jsonb",
        Column::CreatedAt
        | Column::StartedAt
        | Column::FinishedAt
        | Column::UpdatedAt
        | Column::ActivityAt => "timestamptz",
        Column::Prompt | Column::ErrorMessage => "text",
        Column::UserId
        | Column::ConversationId
        | Column::Status
        | Column::ImageUrl
        | Column::ErrorCode
        | Column::Backend
        | Column::IdempotencyKey => "varchar",
    }
}

/// The value of `column` in `model`, bound exactly as sea-orm binds it in its own statements.
fn column_value(model: &ActiveModel, column: Column) -> sea_orm::Value {
    use sea_orm::ActiveModelTrait as _;
    model
        .get(column)
        .into_value()
        .unwrap_or(sea_orm::Value::String(None))
}

/// Runs a statement ending in `RETURNING id` and collects the ids it returned (the rows it wrote).
async fn returned_ids(
    txn: &sea_orm::DatabaseTransaction,
    statement: Statement,
) -> Result<std::collections::HashSet<Uuid>, DbError> {
    txn.query_all_raw(statement)
        .await?
        .iter()
        .map(|row| row.try_get::<Uuid>("", "id").map_err(DbError::from))
        .collect()
}

/// `INSERT … VALUES (…), (…) ON CONFLICT DO NOTHING RETURNING id`: the ids returned are the
/// rows inserted.
fn insert_statement<'a>(
    backend: DbBackend,
    messages: impl Iterator<Item = &'a Message>,
) -> Result<Statement, DbError> {
    use sea_orm::Iterable as _;
    let columns: Vec<Column> = Column::iter().collect();
    let mut insert = sea_orm::sea_query::Query::insert();
    insert.into_table(Entity).columns(columns.clone());
    for message in messages {
        let model = to_active(message);
        insert
            .values(
                columns
                    .iter()
                    .map(|column| Expr::value(column_value(&model, *column))),
            )
            .map_err(|err| DbError::Db(err.to_string()))?;
    }
    insert
        .on_conflict(OnConflict::new().do_nothing().to_owned())
        .returning_col(Column::Id);
    Ok(backend.build(&insert))
}

/// One compare-and-swap update of many rows:
/// `WITH v(id, expected, …) AS (VALUES …) UPDATE messages SET … FROM v
///  WHERE messages.id = v.id AND messages.version = v.expected RETURNING messages.id`.
/// The ids returned are the rows updated; any other row's version had moved.
fn cas_update_statement<'a>(
    backend: DbBackend,
    rows: impl Iterator<Item = (&'a Message, i64)>,
) -> Statement {
    use sea_orm::{EntityName as _, IdenStatic as _};
    let postgres = backend == DbBackend::Postgres;
    let names: Vec<&str> = MUTABLE_COLUMNS
        .iter()
        .map(|column| column.as_str())
        .collect();
    let mut values = Vec::new();
    let mut tuples = Vec::new();
    let parameter = |value: sea_orm::Value, pg_type: &str, values: &mut Vec<_>| {
        values.push(value);
        if postgres {
            format!("${}::{pg_type}", values.len())
        } else {
            "?".to_owned()
        }
    };
    for (message, expected) in rows {
        let model = to_active(message);
        let mut cells = vec![
            parameter(
                column_value(&model, Column::Id),
                pg_type(Column::Id),
                &mut values,
            ),
            parameter(
                sea_orm::Value::from(expected),
                pg_type(Column::Version),
                &mut values,
            ),
        ];
        for column in MUTABLE_COLUMNS {
            cells.push(parameter(
                column_value(&model, column),
                pg_type(column),
                &mut values,
            ));
        }
        tuples.push(format!("({})", cells.join(", ")));
    }
    let table = Entity.table_name();
    let sql = format!(
        "WITH v(id, expected_version, {columns}) AS (VALUES {tuples}) \
         UPDATE {table} SET {assignments} FROM v \
         WHERE {table}.id = v.id AND {table}.version = v.expected_version \
         RETURNING {table}.id",
        columns = names.join(", "),
        tuples = tuples.join(", "),
        assignments = names
            .iter()
            .map(|name| format!("{name} = v.{name}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    Statement::from_sql_and_values(backend, sql, values)
}

fn to_active(message: &Message) -> ActiveModel {
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
    }
}
