//! Job leases (`JOB_LEASE`): the process running a job renews its lease, and any process finds
//! the jobs whose lease ran out. A lease is two columns no message write touches: `runs`
//! (the run's fencing token, moved by the transition to processing) and `lease_at` (the last
//! renewal; the run's `started_at` counts as the first, so a renewal left by an older run
//! never keeps a new one alive).

use super::{Database, DbError};
use chrono::{DateTime, Utc};
use entity::messages::{Column, Entity};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, QuerySelect};
use uuid::Uuid;

impl Database {
    /// Renews at `now` the lease of each `(job, run)` still processing as that run; returns
    /// the jobs whose run is no longer current (the lease was taken, or the job ended): their
    /// process must stop running them.
    pub async fn renew_leases(
        &self,
        runs: &[(Uuid, i64)],
        now: DateTime<Utc>,
    ) -> Result<Vec<Uuid>, DbError> {
        let mut lost = Vec::new();
        for &(id, run) in runs {
            let renewed = Entity::update_many()
                .col_expr(Column::LeaseAt, Expr::value(now))
                .filter(Column::Id.eq(id))
                .filter(Column::Runs.eq(run))
                .filter(Column::Status.eq("processing"))
                .exec(&self.write)
                .await;
            let renewed = renewed.map_err(DbError::from);
            self.record_write(&renewed);
            if renewed?.rows_affected == 0 {
                lost.push(id);
            }
        }
        Ok(lost)
    }

    /// At most `limit` processing jobs whose lease ran out at `cutoff` (started and last
    /// renewed at or before it), with their run.
    pub async fn expired_leases(
        &self,
        cutoff: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<(Uuid, i64)>, DbError> {
        Ok(Entity::find()
            .select_only()
            .column(Column::Id)
            .column(Column::Runs)
            .filter(Column::Status.eq("processing"))
            .filter(Column::StartedAt.lte(cutoff))
            .filter(
                Condition::any()
                    .add(Column::LeaseAt.is_null())
                    .add(Column::LeaseAt.lte(cutoff)),
            )
            .limit(limit)
            .into_tuple::<(Uuid, i64)>()
            .all(&self.read)
            .await?)
    }
}
