//! The database edge: the `messages` table through sea-orm, on SQLite or PostgreSQL.
//!
//! - [`connect`]: pools, migrations, health;
//! - [`read`]: every query the use cases, the queue rebuild and the watchdog need;
//! - [`write`]: the store's batched compare-and-swap write and the quarantine of a row that
//!   cannot be read;
//! - [`leases`]: job leases (renewal, expiry);
//! - [`rows`]: conversion between rows and the domain [`Message`].
//!
//! Nothing above this module sees sea-orm types. A row that cannot be decoded is a problem of
//! that row alone: reads and writes of other rows go on (see [`rows`]).

mod connect;
#[cfg(feature = "test-hooks")]
mod faults;
mod leases;
mod read;
mod rows;
mod session;
mod write;

pub use read::{COUNT_PENDING, ListFilter, QueuedRow, QueuedStuck, StoredPage};
pub use write::{RowResult, RowWork};

use crate::domain::health::WriteHealth;
use crate::domain::message::ChatMessage;
use sea_orm::{DbBackend, DbErr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use uuid::Uuid;

/// A database error, with its cause.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    /// The driver or the server failed.
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    /// The write did not complete (its task was stopped: the runtime is shutting down, or it
    /// panicked).
    #[error("the write did not complete: {0}")]
    Interrupted(#[source] Arc<tokio::task::JoinError>),
    /// A row that does not decode (a manual edit, or a bug): only this row is affected.
    #[error("message {id} does not decode: {reason}")]
    Corrupt {
        /// The row.
        id: Uuid,
        /// What is wrong.
        reason: String,
    },
}

impl DbError {
    /// Whether the failure is about the connection or the server's state (it says nothing
    /// about the rows involved, and retrying later may succeed), as opposed to a statement or
    /// a row the database refuses.
    pub fn is_transient(&self) -> bool {
        use sea_orm::RuntimeErr;
        use sea_orm::sqlx::Error as Sqlx;
        let sqlx = match self {
            DbError::Corrupt { .. } => return false,
            DbError::Interrupted(_) => return true,
            DbError::Db(DbErr::ConnectionAcquire(_) | DbErr::Conn(_)) => return true,
            DbError::Db(DbErr::Exec(RuntimeErr::SqlxError(err)))
            | DbError::Db(DbErr::Query(RuntimeErr::SqlxError(err))) => err,
            DbError::Db(_) => return false,
        };
        match &**sqlx {
            Sqlx::Io(_)
            | Sqlx::Tls(_)
            | Sqlx::Protocol(_)
            | Sqlx::PoolTimedOut
            | Sqlx::PoolClosed
            | Sqlx::WorkerCrashed => true,
            Sqlx::Database(err) => {
                let code = err.code().unwrap_or_default();
                let sqlite = err
                    .try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>()
                    .and_then(|_| code.parse::<i32>().ok());
                match sqlite {
                    // SQLite, whose extended codes keep the primary one in the low byte:
                    // SQLITE_NOMEM (7), SQLITE_READONLY (8: a file system remounted read-only),
                    // SQLITE_IOERR (10), SQLITE_BUSY (5), SQLITE_LOCKED (6), SQLITE_FULL (13),
                    // SQLITE_CANTOPEN (14). The disk or the file's state, not the row.
                    Some(sqlite) => matches!(sqlite & 0xff, 5..=8 | 10 | 13 | 14),
                    // PostgreSQL: connection exceptions, insufficient resources (a full disk:
                    // 53100), operator intervention (a restart, a statement timeout), system
                    // errors (58030, I/O), transaction rollbacks (serialization, deadlock).
                    None => ["08", "53", "57", "58", "40"]
                        .iter()
                        .any(|class| code.starts_with(class)),
                }
            }
            _ => false,
        }
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
    /// `DATABASE_TIMEOUT`: the longest wait for a connection, and for one statement.
    pub timeout: std::time::Duration,
    /// `DATABASE_POOLER=transaction`: the URL goes through a pooler in transaction mode
    /// (see [`session`]).
    pub pooler: bool,
    /// `DATABASE_MIGRATION_URL`: where the migrations run, if not through `url`.
    pub migration_url: Option<String>,
}

/// Connections to the database: a read pool and a write pool (one connection on SQLite,
/// which has a single writer anyway; the read pool on PostgreSQL).
#[derive(Clone)]
pub struct Database {
    read: session::PoolConn,
    write: session::PoolConn,
    backend: DbBackend,
    /// Rows read whose client data was not JSON and was kept as text (see [`rows`]).
    unreadable_data: Arc<AtomicU64>,
    /// What the writes did lately (a database that answers may still refuse every write).
    writes: Arc<WriteHealth>,
    #[cfg(feature = "test-hooks")]
    faults: faults::Faults,
}

impl Database {
    /// `sqlite` or `postgres`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            DbBackend::Postgres => "postgres",
            DbBackend::Sqlite => "sqlite",
            _ => "other",
        }
    }

    /// Why writes are failing now, if they are (see [`WriteHealth`]).
    pub fn writes_failing(&self) -> Option<String> {
        self.writes.failing(std::time::Instant::now())
    }

    /// Records what a write did: a failure of the database's state (not a refused row) makes
    /// it fail readiness until readiness proves writes land again (see [`WriteHealth`]).
    fn record_write<T>(&self, result: &Result<T, DbError>) {
        if let Err(err) = result
            && err.is_transient()
        {
            self.writes
                .failed(std::time::Instant::now(), err.to_string());
        }
    }

    /// Rows read so far whose client data did not parse and was kept as text.
    pub fn unreadable_data_reads(&self) -> u64 {
        self.unreadable_data.load(Ordering::Relaxed)
    }

    /// Decodes a row, counting one whose data had to be kept as text.
    fn decode(&self, row: rows::MessageRow) -> Result<ChatMessage, DbError> {
        let decoded = row.into_domain().map_err(|undecodable| undecodable.error)?;
        if decoded.data_was_unreadable {
            self.unreadable_data.fetch_add(1, Ordering::Relaxed);
        }
        Ok(decoded.message)
    }
}
