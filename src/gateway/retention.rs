//! `RetentionActor`: deletes finished messages (complete, error, cancelled) whose last change
//! is older than `RETENTION`, with their image and preview files, so rows and images grow only
//! as fast as the retention allows.
//!
//! A sweep deletes in small batches (oldest first, by the index on `(status, updated_at)`),
//! each a conditional `DELETE … RETURNING id`: a row is deleted by one process, which then
//! deletes its files, so any number of processes may sweep at once. It runs every tenth of the
//! retention period (between 100 ms and a minute). Off by default: nothing is ever deleted
//! unless `RETENTION` is set.

use crate::db::Database;
use crate::images::ImageStore;
use crate::metrics::Metrics;
use actix::prelude::*;
use chrono::Utc;
use std::sync::Arc;
use std::time::Duration;

/// Rows deleted per statement.
const BATCH: u64 = 500;
/// Batches per sweep at most (the next sweep takes the rest).
const MAX_BATCHES: usize = 20;

/// The retention actor.
pub struct RetentionActor {
    db: Database,
    images: ImageStore,
    metrics: Arc<Metrics>,
    keep_for: Duration,
    sweeping: bool,
}

impl RetentionActor {
    /// Keeps finished messages for `keep_for` after their last change.
    pub fn new(
        db: Database,
        images: ImageStore,
        metrics: Arc<Metrics>,
        keep_for: Duration,
    ) -> Self {
        RetentionActor {
            db,
            images,
            metrics,
            keep_for,
            sweeping: false,
        }
    }

    fn sweep(&mut self, ctx: &mut Context<Self>) {
        if self.sweeping {
            return;
        }
        self.sweeping = true;
        let (db, images, metrics) = (self.db.clone(), self.images.clone(), self.metrics.clone());
        let keep_for = chrono::Duration::from_std(self.keep_for).unwrap_or(chrono::Duration::MAX);
        let work = async move {
            let mut deleted = 0;
            for _ in 0..MAX_BATCHES {
                let Some(cutoff) = Utc::now().checked_sub_signed(keep_for) else {
                    break;
                };
                let ids = match db.delete_finished(cutoff, BATCH).await {
                    Ok(ids) => ids,
                    Err(err) => {
                        tracing::warn!(error = %err, "retention sweep failed; will retry");
                        break;
                    }
                };
                for id in &ids {
                    images.delete_job(*id).await;
                }
                metrics.retention_deleted.inc_by(ids.len() as u64);
                deleted += ids.len();
                if (ids.len() as u64) < BATCH {
                    break;
                }
            }
            deleted
        };
        ctx.spawn(work.into_actor(self).map(|deleted, act, _| {
            act.sweeping = false;
            if deleted > 0 {
                tracing::info!(
                    deleted,
                    "retention deleted finished messages and their images"
                );
            }
        }));
    }
}

impl Actor for RetentionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let every = (self.keep_for / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
        ctx.run_interval(every, |act, ctx| act.sweep(ctx));
    }
}
