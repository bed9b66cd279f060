//! Keeping the queue store and the database in step: the database is the record, the store
//! can always be rebuilt from it.

use crate::db::{Database, DbError};
use crate::domain::queue_book::QueuedJob;
use crate::queue::{QueueError, QueueStore, Rebuilt};
use std::collections::HashSet;
use std::sync::Arc;
use uuid::Uuid;

fn unavailable(err: DbError) -> QueueError {
    QueueError::database(err)
}

/// Puts back every queued job of the database the store lacks, in ticket order.
pub async fn rebuild_from_db(store: &dyn QueueStore, db: &Database) -> Result<Rebuilt, QueueError> {
    let queued = db.queued_in_ticket_order().await.map_err(unavailable)?;
    let pending = db.pending_by_user().await.map_err(unavailable)?;
    let max_ticket = db.max_ticket().await.map_err(unavailable)?;
    let jobs = queued
        .into_iter()
        .map(|(id, user, ticket, model)| QueuedJob {
            id,
            user_id: Arc::from(user.as_str()),
            ticket,
            model: model.map(Arc::from),
        })
        .collect();
    store.rebuild(jobs, pending, max_ticket).await
}

/// What an audit found.
pub enum Audit {
    /// The store is empty while the database holds queued jobs: it lost its queue.
    Lost,
    /// `put_back` jobs missing twice in a row were put back; `suspects` are missing now.
    Missing {
        /// Jobs put back.
        put_back: usize,
        /// Jobs missing now, to check again next time.
        suspects: HashSet<Uuid>,
    },
}

/// Compares the store with the database. Cheap while they agree (two counts); lists the
/// queued jobs only when the database holds more than the store.
pub async fn audit(
    store: &dyn QueueStore,
    db: &Database,
    suspects: &HashSet<Uuid>,
) -> Result<Audit, QueueError> {
    let stored = store.depth().await?;
    let recorded = db.queued_count().await.map_err(unavailable)?;
    if recorded == 0 || recorded <= stored {
        return Ok(Audit::Missing {
            put_back: 0,
            suspects: HashSet::new(),
        });
    }
    if stored == 0 {
        return Ok(Audit::Lost);
    }
    let queued = db.queued_in_ticket_order().await.map_err(unavailable)?;
    let ids: Vec<Uuid> = queued.iter().map(|(id, _, _, _)| *id).collect();
    let positions = store.positions(&ids).await?;
    let mut missing = HashSet::new();
    let mut put_back = 0;
    for ((id, user, ticket, model), position) in queued.into_iter().zip(positions) {
        if position.is_some() {
            continue;
        }
        if suspects.contains(&id) {
            let job = QueuedJob {
                id,
                user_id: Arc::from(user.as_str()),
                ticket,
                model: model.map(Arc::from),
            };
            store.requeue(&job).await?;
            tracing::warn!(job = %id, "queued in the database but missing from the queue: put back");
            put_back += 1;
        } else {
            missing.insert(id);
        }
    }
    Ok(Audit::Missing {
        put_back,
        suspects: missing,
    })
}
