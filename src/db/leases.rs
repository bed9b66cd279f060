//! Job leases (`JOB_LEASE`): the process running a job renews its lease, and any process finds
//! the jobs whose lease ran out. A lease is two columns no message write touches: `runs`
//! (the run's fencing token, moved by the transition to processing) and `lease_at` (the last
//! renewal; the run's `started_at` counts as the first, so a renewal left by an older run
//! never keeps a new one alive).

use super::write::returned_ids;
use super::{Database, DbError};
use chrono::{DateTime, Utc};
use entity::messages::{Column, Entity};
use sea_orm::sea_query::Query;
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, QuerySelect};
use uuid::Uuid;

/// Runs renewed by one statement.
const RENEW_CHUNK: usize = 100;

impl Database {
    /// Renews at `now` the lease of each `(job, run)` still processing as that run, by one
    /// statement per [`RENEW_CHUNK`] runs; returns the jobs whose run is no longer current (the
    /// lease was taken, or the job ended): their process must stop running them.
    pub async fn renew_leases(
        &self,
        runs: &[(Uuid, i64)],
        now: DateTime<Utc>,
    ) -> Result<Vec<Uuid>, DbError> {
        let mut lost = Vec::new();
        for chunk in runs.chunks(RENEW_CHUNK) {
            let mut current = Condition::any();
            for &(id, run) in chunk {
                current = current.add(
                    Condition::all()
                        .add(Column::Id.eq(id))
                        .add(Column::Runs.eq(run)),
                );
            }
            let mut update = Query::update();
            update
                .table(Entity)
                .value(Column::LeaseAt, now)
                .cond_where(
                    Condition::all()
                        .add(Column::Status.eq("processing"))
                        .add(current),
                )
                .returning_col(Column::Id);
            let renewed = returned_ids(&self.write, self.backend.build(&update)).await;
            self.record_write(&renewed);
            let renewed = renewed?;
            lost.extend(
                chunk
                    .iter()
                    .map(|(id, _)| *id)
                    .filter(|id| !renewed.contains(id)),
            );
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
