//! The store's write: a batch of rows in one transaction, each row a compare-and-swap on
//! `version`, and the isolation of a row that cannot be read or written from the rest.
//!
//! A batch holds changes of many users' messages. One row that cannot be decoded, or that
//! the database refuses, must not fail the others: an undecodable row is answered on its own
//! (or quarantined, see below) and the rest of the batch goes on; a statement the database
//! refuses for a reason that is not the connection's makes the batch be written again row by
//! row, so the refusal stays with its row.
//!
//! Quarantine: a failure (`Transition::Fail`) of a row that cannot be decoded is still
//! written, by a statement that needs no decoding. Its JSON columns are repaired on the way
//! (what did not parse is kept as text in the client data), so the row reads again.

use super::rows::{
    self, MUTABLE_COLUMNS, MessageRow, column_value, pg_type, select_messages, to_active,
};
use super::{Database, DbError};
use crate::domain::change::{self, Change, Refusal, Transition};
use crate::domain::event::JobEventKind;
use crate::domain::message::ChatMessage;
use chrono::{DateTime, Utc};
use entity::messages::{Column, Entity};
use sea_orm::sea_query::{Expr, ExprTrait as _, OnConflict};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, QueryFilter,
    Statement,
};
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

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
        message: Option<Box<ChatMessage>>,
    },
    /// This row alone could not be read or written; nothing of it changed.
    Failed(DbError),
}

enum Write {
    Insert(Box<ChatMessage>),
    Update {
        message: Box<ChatMessage>,
        expected_version: i64,
    },
}

impl Database {
    /// Applies each row's changes in order (one read, one write per row) and writes every
    /// changed row in one transaction. Each update is a compare-and-swap on `version`; a row
    /// another writer changed meanwhile comes back as [`RowResult::Conflict`] and is not
    /// written. An error of the connection or the server rolls the whole transaction back
    /// (`Err`, no row changed); a row-level refusal is isolated (see the module doc).
    pub async fn apply_batch(
        &self,
        work: &[RowWork],
        now: DateTime<Utc>,
    ) -> Result<Vec<RowResult>, DbError> {
        let written = self.write_batch(work, now).await;
        self.record_write(&written);
        match written {
            Err(err) if work.len() > 1 && !err.is_transient() => {
                tracing::warn!(error = %err, rows = work.len(), "a batch write was refused; writing its rows one by one");
                let mut results = Vec::with_capacity(work.len());
                for row in work {
                    let one = self.write_batch(std::slice::from_ref(row), now).await;
                    self.record_write(&one);
                    let result = match one {
                        Ok(mut one) => one.pop().unwrap_or(RowResult::Conflict),
                        Err(err) => RowResult::Failed(err),
                    };
                    results.push(result);
                }
                Ok(results)
            }
            other => other,
        }
    }

    async fn write_batch(
        &self,
        work: &[RowWork],
        now: DateTime<Utc>,
    ) -> Result<Vec<RowResult>, DbError> {
        // One connection and one transaction per batch: the read, the writes, the commit.
        let txn = self.begin_write().await?;
        let mut current = read_current(&txn, work).await?;
        let mut results = Vec::with_capacity(work.len());
        let mut writes: Vec<(usize, Write)> = Vec::new();
        let mut quarantined = false;
        for (index, row) in work.iter().enumerate() {
            let before = match current.remove(&row.id).map(MessageRow::into_domain) {
                None => None,
                Some(Ok(decoded)) => {
                    if decoded.data_was_unreadable {
                        self.unreadable_data
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Some(decoded.message)
                }
                Some(Err(undecodable)) => {
                    let result = quarantine(&txn, row, *undecodable, now).await?;
                    quarantined |= matches!(result, RowResult::Done { .. });
                    results.push(result);
                    continue;
                }
            };
            let (result, write) = apply_row(before, &row.changes, now);
            writes.extend(write.map(|write| (index, write)));
            results.push(result);
        }
        if writes.is_empty() && !quarantined {
            // Every change was refused: nothing to write; end the read-only transaction.
            txn.rollback().await?;
            return Ok(results);
        }
        let (refused_inserts, conflicts) = self.run_writes(&txn, writes).await?;
        #[cfg(feature = "test-hooks")]
        self.faults.run_before_commit(&txn).await?;
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

    /// Runs a batch's inserts and updates in one statement each, whatever the batch size (a
    /// statement per row made the round trips and the server's per-statement work the largest
    /// cost of a job on PostgreSQL). Returns the indexes of the inserts refused (a duplicate id
    /// or (user, Idempotency-Key): left out instead of failing everyone's transaction) and of
    /// the updates that lost their compare-and-swap (another process wrote the row).
    async fn run_writes(
        &self,
        txn: &DatabaseTransaction,
        writes: Vec<(usize, Write)>,
    ) -> Result<(Vec<usize>, Vec<usize>), DbError> {
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
        let mut refused_inserts = Vec::new();
        if !inserts.is_empty() {
            let inserted = returned_ids(
                txn,
                insert_statement(self.backend, inserts.iter().map(|(_, message)| &**message))?,
            )
            .await?;
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
                txn,
                cas_update_statement(
                    self.backend,
                    updates
                        .iter()
                        .map(|(_, message, expected)| (&**message, *expected)),
                ),
            )
            .await?;
            conflicts.extend(
                updates
                    .iter()
                    .filter(|(_, message, _)| !updated.contains(&message.id))
                    .map(|(index, _, _)| *index),
            );
        }
        Ok((refused_inserts, conflicts))
    }
}

/// The current rows of a batch. A row that starts with its own creation has nothing to read
/// (ids are fresh UUIDs; a duplicate is refused by the insert).
async fn read_current(
    txn: &DatabaseTransaction,
    work: &[RowWork],
) -> Result<HashMap<Uuid, MessageRow>, DbError> {
    let ids: Vec<Uuid> = work
        .iter()
        .filter(|row| !matches!(row.changes.first(), Some(Change::Create(_))))
        .map(|row| row.id)
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(select_messages()
        .filter(Column::Id.is_in(ids))
        .into_model::<MessageRow>()
        .all(txn)
        .await?
        .into_iter()
        .map(|row| (row.id(), row))
        .collect())
}

/// Applies a row's changes in order to what the database holds (`before`, none for a
/// create): the outcome of each, and the write it needs when any was applied.
fn apply_row(
    before: Option<ChatMessage>,
    changes: &[Change],
    now: DateTime<Utc>,
) -> (RowResult, Option<Write>) {
    let expected_version = before.as_ref().map(|message| message.version);
    let mut message = before;
    let mut outcomes = Vec::with_capacity(changes.len());
    let mut changed = false;
    for change in changes {
        let outcome = change::apply(&mut message, change, now);
        if let Some(applied) = &message {
            let outcome = outcome.map(|event| (event, applied.version));
            changed |= outcome.is_ok();
            outcomes.push(outcome);
        } else {
            outcomes.push(outcome.map(|event| (event, 0)));
        }
    }
    let write = match (&message, changed, expected_version) {
        (Some(after), true, None) => Some(Write::Insert(Box::new(after.clone()))),
        (Some(after), true, Some(expected_version)) => Some(Write::Update {
            message: Box::new(after.clone()),
            expected_version,
        }),
        _ => None,
    };
    let result = RowResult::Done {
        outcomes,
        message: message.map(Box::new),
    };
    (result, write)
}

/// Answers the changes of a row that cannot be decoded: its first failure is written with
/// the row repaired (see the module doc); every other change is refused as unreadable.
async fn quarantine(
    txn: &DatabaseTransaction,
    work: &RowWork,
    undecodable: rows::Undecodable,
    now: DateTime<Utc>,
) -> Result<RowResult, DbError> {
    let failure = work
        .changes
        .iter()
        .position(|change| matches!(change, Change::Transition(Transition::Fail { .. })));
    let (Some(failure), true) = (failure, undecodable.row.may_quarantine()) else {
        tracing::error!(message_id = %work.id, error = %undecodable.error, "a change to an undecodable message was refused");
        return Ok(RowResult::Failed(undecodable.error));
    };
    let Change::Transition(Transition::Fail { error }) = &work.changes[failure] else {
        return Ok(RowResult::Failed(undecodable.error));
    };
    let row = undecodable.row;
    let fixed = row.quarantine();
    let expected_version = row.version();
    let written = Entity::update_many()
        .col_expr(Column::Status, Expr::value("error"))
        .col_expr(Column::ErrorCode, Expr::value(error.code.clone()))
        .col_expr(Column::ErrorMessage, Expr::value(error.message.clone()))
        .col_expr(Column::Params, Expr::value(fixed.params.clone()))
        .col_expr(Column::Data, Expr::value(fixed.data.clone()))
        .col_expr(Column::Version, Expr::value(expected_version + 1))
        .col_expr(Column::QueuePosition, Expr::value(Option::<i32>::None))
        .col_expr(Column::EtaS, Expr::value(Option::<i32>::None))
        .col_expr(Column::PreviewUrl, Expr::value(Option::<String>::None))
        .col_expr(Column::UpdatedAt, Expr::value(now))
        .col_expr(Column::ActivityAt, Expr::value(now))
        .col_expr(Column::FinishedAt, Expr::value(now))
        .filter(Column::Id.eq(work.id))
        .filter(Column::Version.eq(expected_version))
        .exec(txn)
        .await?;
    if written.rows_affected == 0 {
        return Ok(RowResult::Conflict);
    }
    let message = match row.quarantined(error, &fixed, now).into_domain() {
        Ok(decoded) => decoded.message,
        Err(undecodable) => return Ok(RowResult::Failed(undecodable.error)),
    };
    tracing::error!(message_id = %work.id, cause = %undecodable.error, "quarantined an undecodable message: failed it and kept what did not parse as text in its data");
    let outcomes = (0..work.changes.len())
        .map(|index| {
            if index == failure {
                Ok((
                    JobEventKind::Error {
                        error: error.clone(),
                    },
                    message.version,
                ))
            } else {
                Err(Refusal::Unreadable)
            }
        })
        .collect();
    Ok(RowResult::Done {
        outcomes,
        message: Some(Box::new(message)),
    })
}

impl Database {
    /// Deletes at most `limit` finished messages (complete, error, cancelled) whose last change
    /// is at or before `changed_before`, oldest first, by the index on `(status, updated_at)`;
    /// returns the ids deleted. Each row is deleted by one statement of one process (`RETURNING`
    /// says which), so several processes may sweep at once.
    pub async fn delete_finished(
        &self,
        changed_before: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<Uuid>, DbError> {
        use sea_orm::{QueryOrder, QuerySelect};
        let finished = ["complete", "error", "cancelled"];
        let ids: Vec<Uuid> = Entity::find()
            .select_only()
            .column(Column::Id)
            .filter(Column::Status.is_in(finished))
            .filter(Column::UpdatedAt.lte(changed_before))
            .order_by_asc(Column::UpdatedAt)
            .limit(limit)
            .into_tuple::<Uuid>()
            .all(&self.read)
            .await?;
        if ids.is_empty() {
            return Ok(ids);
        }
        let mut delete = sea_orm::sea_query::Query::delete();
        delete
            .from_table(Entity)
            .and_where(Expr::col(Column::Id).is_in(ids))
            .and_where(Expr::col(Column::Status).is_in(finished))
            .and_where(Expr::col(Column::UpdatedAt).lte(changed_before))
            .returning_col(Column::Id);
        let deleted = returned_ids(&self.write, self.backend.build(&delete)).await?;
        Ok(deleted.into_iter().collect())
    }
}

/// Runs a statement ending in `RETURNING id` and collects the ids it returned (the rows it wrote).
pub(super) async fn returned_ids(
    txn: &impl ConnectionTrait,
    statement: Statement,
) -> Result<HashSet<Uuid>, DbError> {
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
    messages: impl Iterator<Item = &'a ChatMessage>,
) -> Result<Statement, DbError> {
    use sea_orm::Iterable as _;
    // The lease is written only by its renewal (`leases`): a new row has none.
    let columns: Vec<Column> = Column::iter()
        .filter(|column| !matches!(column, Column::LeaseAt))
        .collect();
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
            .map_err(|err| DbError::Db(sea_orm::DbErr::Custom(err.to_string())))?;
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
    rows: impl Iterator<Item = (&'a ChatMessage, i64)>,
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
