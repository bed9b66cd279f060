//! Opening the pools, creating the schema, running the migrations; health and closing.

use super::session::{PoolConn, pooled_setup};
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
        Self::open(settings).await.map_err(pooler_hint)
    }

    async fn open(settings: &DbSettings) -> Result<Database, DbError> {
        let is_sqlite = settings.url.starts_with("sqlite:");
        if is_sqlite {
            create_sqlite_parent(&settings.url)?;
        }
        if !is_sqlite && !settings.pooler {
            refuse_a_transaction_pooler(settings).await?;
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
        let setup: Option<Arc<str>> = (settings.pooler && backend == DbBackend::Postgres)
            .then(|| Arc::from(pooled_setup(settings.timeout, settings.schema.as_deref())));
        let read = PoolConn {
            pool: read,
            setup: setup.clone(),
        };
        let write = PoolConn { pool: write, setup };
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
        self.read.pool.ping().await?;
        if let Some(why) = self.writes_failing() {
            return Err(DbError::Db(sea_orm::DbErr::Custom(format!(
                "writes are failing: {why}"
            ))));
        }
        if self.writes.needs_proof(std::time::Instant::now()) {
            let started = std::time::Instant::now();
            let probed = self.probe_write().await;
            match &probed {
                Ok(()) => self.writes.proven(started),
                Err(_) => self.record_write(&probed),
            }
            probed.map_err(|err| {
                DbError::Db(sea_orm::DbErr::Custom(format!("writes are failing: {err}")))
            })?;
        }
        Ok(())
    }

    /// Writes the one row of `write_probe` anew, with [`PROBE_BYTES`] of fresh, hardly
    /// compressible text, so the write needs new room on the disk as a large message's would.
    async fn probe_write(&self) -> Result<(), DbError> {
        use sea_orm::sea_query::{Alias, Expr, OnConflict, Query};
        let pad: String = (0..PROBE_BYTES / 32)
            .map(|_| uuid::Uuid::now_v7().simple().to_string())
            .collect();
        let mut insert = Query::insert();
        insert
            .into_table(Alias::new("write_probe"))
            .columns([
                Alias::new("id"),
                Alias::new("written_at"),
                Alias::new("pad"),
            ])
            .values([
                Expr::value(1),
                Expr::value(chrono::Utc::now()),
                Expr::value(pad),
            ])
            .map_err(|err| DbError::Db(sea_orm::DbErr::Custom(err.to_string())))?
            .on_conflict(
                OnConflict::column(Alias::new("id"))
                    .update_columns([Alias::new("written_at"), Alias::new("pad")])
                    .to_owned(),
            );
        self.write.execute_raw(self.backend.build(&insert)).await?;
        Ok(())
    }

    /// Closes the pools.
    pub async fn close(self) {
        let _ = self.read.pool.close().await;
        if self.backend == DbBackend::Sqlite {
            let _ = self.write.pool.close().await;
        }
    }

    /// Runs one statement outside any transaction (tools and benchmarks: dropping a schema).
    pub async fn execute_raw(&self, sql: &str) -> Result<(), DbError> {
        self.write.execute_unprepared(sql).await?;
        Ok(())
    }
}

/// Creates the schema if asked and runs the migrations, on a connection of their own without
/// the statement deadline (a migration may take longer than any request should): to
/// `DATABASE_MIGRATION_URL` if set, else to `DATABASE_URL`. Behind a transaction pooler they
/// run in one transaction, set up as every other (see [`super::session`]).
/// The advisory lock (per database) that several processes starting at once take turns on to
/// migrate: a first rollout or a scale-up must not race `CREATE SCHEMA` and `CREATE TABLE`.
const MIGRATION_LOCK: i64 = 0x0466_6f72_6765_4d69;

async fn migrate(settings: &DbSettings) -> Result<(), DbError> {
    let direct = settings.migration_url.is_some();
    let migration = DbSettings {
        url: settings
            .migration_url
            .clone()
            .unwrap_or_else(|| settings.url.clone()),
        pooler: settings.pooler && !direct,
        ..settings.clone()
    };
    let connection = connect_pool(&migration, 1, None).await?;
    let postgres = connection.get_database_backend() == DbBackend::Postgres;
    let create_schema = settings
        .schema
        .as_ref()
        .filter(|_| postgres)
        .map(|schema| format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""));
    let migrated = if migration.pooler && postgres {
        let setup = pooled_setup(Duration::from_secs(3600), settings.schema.as_deref());
        migrate_in_one_transaction(&connection, create_schema.as_deref(), &setup).await
    } else {
        // Processes starting at once take turns (the pool has one connection: one session).
        let lock = if postgres {
            connection
                .execute_unprepared(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
                .await
                .map(|_| ())
        } else {
            Ok(())
        };
        let migrated = match lock {
            Err(err) => Err(err),
            Ok(()) => match &create_schema {
                Some(create) => connection.execute_unprepared(create).await.map(|_| ()),
                None => Ok(()),
            }
            .and(Migrator::up(&connection, None).await),
        };
        if postgres {
            let unlock = format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})");
            let _ = connection.execute_unprepared(&unlock).await;
        }
        migrated
    };
    let _ = connection.close().await;
    Ok(migrated?)
}

async fn migrate_in_one_transaction(
    connection: &DatabaseConnection,
    create_schema: Option<&str>,
    setup: &str,
) -> Result<(), sea_orm::DbErr> {
    use sea_orm::TransactionTrait as _;
    let txn = connection.begin().await?;
    // Processes starting at once take turns (held until the commit, through any pooler).
    txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
        .await?;
    if let Some(create) = create_schema {
        txn.execute_unprepared(create).await?;
    }
    txn.execute_unprepared(setup).await?;
    Migrator::up(&txn, None).await?;
    txn.commit().await
}

/// Bytes readiness writes to prove writes land again: as many as the largest client data a
/// message may carry, so a disk with room for small writes only is not called ready.
const PROBE_BYTES: usize = crate::domain::merge::MAX_DATA_BYTES;

/// Statements [`refuse_a_transaction_pooler`] sends, each in a transaction of its own.
const POOLER_PROBES: usize = 8;

/// Without `DATABASE_POOLER`, makes sure `DATABASE_URL` is not a transaction pooler: on one
/// client connection, every transaction of a direct connection runs on the same server
/// process, while a busy pooler hands them to several. (An idle pooler may hand them all to
/// one; the errors such a pooler causes later are recognized by [`pooler_hint`].)
async fn refuse_a_transaction_pooler(settings: &DbSettings) -> Result<(), DbError> {
    let connection = connect_pool(settings, 1, Some(settings.timeout)).await?;
    let mut servers = std::collections::HashSet::new();
    let mut probed: Result<(), DbError> = Ok(());
    for _ in 0..POOLER_PROBES {
        let statement =
            sea_orm::Statement::from_string(DbBackend::Postgres, "SELECT pg_backend_pid() AS pid");
        match connection.query_one_raw(statement).await {
            Ok(Some(row)) => {
                servers.insert(row.try_get::<i32>("", "pid").unwrap_or_default());
            }
            Ok(None) => {}
            Err(err) => {
                probed = Err(err.into());
                break;
            }
        }
    }
    let _ = connection.close().await;
    probed?;
    if servers.len() > 1 {
        return Err(DbError::Db(sea_orm::DbErr::Custom(POOLER_HINT.into())));
    }
    Ok(())
}

/// What to set when `DATABASE_URL` goes through a transaction pooler the settings do not know of.
const POOLER_HINT: &str = "DATABASE_URL goes through a connection pooler in transaction mode (PgBouncer?): set DATABASE_POOLER=transaction (see docs/operations.md, \"Connection poolers\")";

/// An error at start that says the URL goes through a transaction pooler the settings do not
/// know of, rewritten as what to set.
fn pooler_hint(err: DbError) -> DbError {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    let pooler = text.contains("unsupported startup parameter")
        || (text.contains("prepared statement")
            && (text.contains("already exists") || text.contains("does not exist")));
    if !pooler {
        return err;
    }
    DbError::Db(sea_orm::DbErr::Custom(POOLER_HINT.into()))
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
    if settings.pooler {
        // Nothing that lives in a session (see `session`): no startup options, no statement
        // cache; the deadline and the schema are set in each transaction instead.
        options.map_sqlx_postgres_opts(|opts| {
            opts.statement_cache_capacity(0).extra_float_digits(None)
        });
    } else {
        if let Some(deadline) = deadline {
            options.statement_timeout(deadline);
        }
        if let Some(schema) = &settings.schema {
            options.set_schema_search_path(schema.clone());
        }
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
