//! Fault injection for tests (feature `test-hooks`, which only the test build turns on): a
//! statement the next batch writes run inside their transaction before commit, to prove that
//! a failure mid-write rolls everything back.

use super::{Database, DbError};
use parking_lot::Mutex;
use sea_orm::{ConnectionTrait, DatabaseTransaction};
use std::sync::Arc;

#[derive(Clone, Debug)]
struct Fault {
    sql: String,
    remaining: u32,
}

/// The armed fault, shared by the clones of a [`Database`].
#[derive(Clone, Default)]
pub(super) struct Faults(Arc<Mutex<Option<Fault>>>);

impl Faults {
    /// Runs the armed statement, if any, counting it down.
    pub(super) async fn run_before_commit(&self, txn: &DatabaseTransaction) -> Result<(), DbError> {
        let sql = {
            let mut guard = self.0.lock();
            let sql = guard
                .as_mut()
                .filter(|fault| fault.remaining > 0)
                .map(|fault| {
                    fault.remaining -= 1;
                    fault.sql.clone()
                });
            if guard.as_ref().is_some_and(|fault| fault.remaining == 0) {
                *guard = None;
            }
            sql
        };
        if let Some(sql) = sql {
            txn.execute_unprepared(&sql).await?;
        }
        Ok(())
    }
}

impl Database {
    /// Makes the next `count` batch writes run `sql` inside their transaction before commit
    /// (a failing statement, or one that kills the connection), so tests can prove rollback.
    pub fn inject_fault(&self, sql: &str, count: u32) {
        *self.faults.0.lock() = Some(Fault {
            sql: sql.to_owned(),
            remaining: count,
        });
    }
}
