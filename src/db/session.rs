//! How a database call gets its connection: straight from the pool, or, behind a connection
//! pooler in transaction mode (`DATABASE_POOLER=transaction`, e.g. PgBouncer), inside a
//! transaction prepared for it.
//!
//! Behind such a pooler each transaction may run on another server connection, shared with
//! other clients, and nothing may outlive it: no session setting (`SET`), no statement
//! prepared in one transaction and used in another. The driver (sqlx under sea-orm) prepares
//! every statement under a name, so in this mode its statement cache is off (a statement is
//! prepared and used in one go), every call runs in a transaction (so its prepare and its
//! execution reach the same server connection), and each transaction starts by clearing the
//! statements a previous client left on that connection (`DEALLOCATE ALL`) and by setting,
//! for itself only (`SET LOCAL`), the statement deadline and the schema.

use super::{Database, DbError};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, ExecResult,
    QueryResult, Statement, TransactionTrait,
};
use std::sync::Arc;

/// What a transaction runs first behind a transaction pooler.
pub(super) fn pooled_setup(deadline: std::time::Duration, schema: Option<&str>) -> String {
    let mut setup = format!(
        "DEALLOCATE ALL; SET LOCAL statement_timeout = '{}ms'",
        deadline.as_millis()
    );
    if let Some(schema) = schema {
        setup.push_str(&format!("; SET LOCAL search_path TO \"{schema}\""));
    }
    setup
}

/// A pool whose every statement runs as the pooler needs: as it is without a pooler, in a
/// transaction of its own (set up by [`pooled_setup`]) behind one. Every read is one statement,
/// so reads need no other care; a write transaction is begun by [`Database::begin_write`].
#[derive(Clone)]
pub(super) struct PoolConn {
    pub(super) pool: DatabaseConnection,
    /// What a transaction runs first behind a transaction pooler; `None` without one.
    pub(super) setup: Option<Arc<str>>,
}

impl PoolConn {
    async fn pooled(&self, setup: &str) -> Result<DatabaseTransaction, DbErr> {
        let txn = self.pool.begin().await?;
        txn.execute_unprepared(setup).await?;
        Ok(txn)
    }

    /// A transaction, set up for the pooler when there is one.
    pub(super) async fn begin(&self) -> Result<DatabaseTransaction, DbErr> {
        match &self.setup {
            None => self.pool.begin().await,
            Some(setup) => self.pooled(setup).await,
        }
    }
}

impl Database {
    /// A write transaction (set up for the pooler when there is one).
    pub(super) async fn begin_write(&self) -> Result<DatabaseTransaction, DbError> {
        Ok(self.write.begin().await?)
    }
}

/// Runs `$call` on the pool, or in a pooled transaction of its own that commits when it
/// succeeds.
macro_rules! one_statement {
    ($conn:expr, $c:ident => $call:expr) => {
        match &$conn.setup {
            None => {
                let $c = &$conn.pool;
                $call
            }
            Some(setup) => {
                let txn = $conn.pooled(setup).await?;
                let result = {
                    let $c = &txn;
                    $call
                }?;
                txn.commit().await?;
                Ok(result)
            }
        }
    };
}

#[async_trait::async_trait]
impl ConnectionTrait for PoolConn {
    fn get_database_backend(&self) -> DbBackend {
        self.pool.get_database_backend()
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        one_statement!(self, c => c.execute_raw(stmt).await)
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        one_statement!(self, c => c.execute_unprepared(sql).await)
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        one_statement!(self, c => c.query_one_raw(stmt).await)
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        one_statement!(self, c => c.query_all_raw(stmt).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pooled_transaction_clears_statements_and_sets_only_its_own_deadline_and_schema() {
        let setup = pooled_setup(std::time::Duration::from_secs(5), Some("t_1"));
        assert_eq!(
            setup,
            "DEALLOCATE ALL; SET LOCAL statement_timeout = '5000ms'; SET LOCAL search_path TO \"t_1\""
        );
        assert!(!pooled_setup(std::time::Duration::from_secs(1), None).contains("search_path"));
    }
}
