//! Opening the pools, creating the schema, running the migrations; health and closing.

use super::{Database, DbError, DbSettings};
use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database as SeaDatabase, DatabaseConnection, DbBackend,
};
use std::sync::Arc;
use std::time::Duration;

impl Database {
    /// Connects, creates the schema if asked, and runs the migrations.
    pub async fn connect(settings: &DbSettings) -> Result<Database, DbError> {
        let is_sqlite = settings.url.starts_with("sqlite:");
        if is_sqlite {
            create_sqlite_parent(&settings.url)?;
        }
        migrate(settings).await?;
        let read = connect_pool(
            settings,
            if is_sqlite {
                Ord::max(settings.max_connections, 2)
            } else {
                settings.max_connections
            },
            Some(settings.timeout),
        )
        .await?;
        let write = if is_sqlite {
            connect_pool(settings, 1, Some(settings.timeout)).await?
        } else {
            read.clone()
        };
        let backend = read.get_database_backend();
        Ok(Database {
            read,
            write,
            backend,
            unreadable_data: Arc::default(),
            writes: Arc::default(),
            #[cfg(feature = "test-hooks")]
            faults: Default::default(),
        })
    }

    /// Whether the database answers, and takes writes: a ping, and what the last writes did
    /// (a database that answers may still refuse every write, its disk full).
    pub async fn ping(&self) -> Result<(), DbError> {
        self.read.ping().await?;
        match self.writes_failing() {
            Some(why) => Err(DbError::Db(sea_orm::DbErr::Custom(format!(
                "writes are failing: {why}"
            )))),
            None => Ok(()),
        }
    }

    /// Closes the pools.
    pub async fn close(self) {
        let _ = self.read.close().await;
        if self.backend == DbBackend::Sqlite {
            let _ = self.write.close().await;
        }
    }

    /// Runs one statement outside any transaction (tools and benchmarks: dropping a schema).
    pub async fn execute_raw(&self, sql: &str) -> Result<(), DbError> {
        self.write.execute_unprepared(sql).await?;
        Ok(())
    }
}

/// Creates the schema if asked and runs the migrations, on a connection of their own without
/// the statement deadline (a migration may take longer than any request should).
async fn migrate(settings: &DbSettings) -> Result<(), DbError> {
    let connection = connect_pool(settings, 1, None).await?;
    if let (DbBackend::Postgres, Some(schema)) =
        (connection.get_database_backend(), &settings.schema)
    {
        connection
            .execute_unprepared(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
            .await?;
    }
    let migrated = Migrator::up(&connection, None).await;
    let _ = connection.close().await;
    Ok(migrated?)
}

/// A pool of `max_connections`. With a `deadline` (`DATABASE_TIMEOUT`), a connection is
/// waited for at most that long, and every statement ends with an error past it (PostgreSQL's
/// `statement_timeout`, which covers waiting for a lock; SQLite's busy timeout), so a request
/// never hangs on a locked table or an exhausted pool.
async fn connect_pool(
    settings: &DbSettings,
    max_connections: u32,
    deadline: Option<Duration>,
) -> Result<DatabaseConnection, DbError> {
    let mut options = ConnectOptions::new(settings.url.clone());
    let waits = deadline.unwrap_or(Duration::from_secs(60));
    options
        .max_connections(max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(waits)
        .sqlx_logging(false);
    if let Some(deadline) = deadline {
        options.statement_timeout(deadline);
    }
    if let Some(schema) = &settings.schema {
        options.set_schema_search_path(schema.clone());
    }
    // A connection that comes back still in a transaction is closed, not reused. SQLite rolls
    // a transaction back by itself on some errors (a full disk, I/O): the driver's own ROLLBACK
    // then fails, its count of open transactions stays at one, and every later BEGIN on that
    // connection became a SAVEPOINT inside a transaction that was never committed (writes
    // answered as done, then lost). A new connection has no such state.
    options
        .map_sqlx_sqlite_pool_opts(|pool| pool.after_release(|conn, _| Box::pin(reusable(conn))));
    options
        .map_sqlx_postgres_pool_opts(|pool| pool.after_release(|conn, _| Box::pin(reusable(conn))));
    options.map_sqlx_sqlite_opts(move |opts| {
        opts.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
            .busy_timeout(waits)
            .create_if_missing(true)
    });
    Ok(SeaDatabase::connect(options).await?)
}

/// Whether a connection given back to the pool may be used again (see [`connect_pool`]).
async fn reusable<C: sea_orm::sqlx::Connection>(
    conn: &mut C,
) -> Result<bool, sea_orm::sqlx::Error> {
    if conn.is_in_transaction() {
        tracing::warn!(
            "a database connection came back inside a transaction it could not roll back; replacing it"
        );
        return Ok(false);
    }
    Ok(true)
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
        std::fs::create_dir_all(parent).map_err(|err| {
            DbError::Db(sea_orm::DbErr::Custom(format!(
                "cannot create {}: {err}",
                parent.display()
            )))
        })?;
    }
    Ok(())
}
