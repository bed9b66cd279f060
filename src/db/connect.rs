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
    // A connection that comes back still in a transaction is closed, not reused. SQLite rolls
    // a transaction back by itself on some errors (a full disk, I/O): the driver's own ROLLBACK
    // then fails, its count of open transactions stays at one, and every later BEGIN on that
    // connection became a SAVEPOINT inside a transaction that was never committed (writes
    // answered as done, then lost). A new connection has no such state.
    options
        .map_sqlx_sqlite_pool_opts(|pool| pool.after_release(|conn, _| Box::pin(reusable(conn))));
    options
        .map_sqlx_postgres_pool_opts(|pool| pool.after_release(|conn, _| Box::pin(reusable(conn))));
    options.map_sqlx_sqlite_opts(|opts| {
        opts.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
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
