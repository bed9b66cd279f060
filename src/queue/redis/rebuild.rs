//! Writing a whole queue back into Redis from the database (after Redis lost it), in chunks
//! so that a long queue never blocks Redis for long.

use super::{REBUILD_CHUNK, RedisQueue, unavailable, unexpected};
use crate::domain::queue_book::QueuedJob;
use crate::queue::QueueError;
use fred::prelude::{SetsInterface, Value};
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

impl RedisQueue {
    pub(super) async fn pending_users(&self) -> Result<Vec<String>, QueueError> {
        self.pool
            .smembers(self.keys.users.as_str())
            .await
            .map_err(|err| unavailable("reading the users with pending jobs", err))
    }

    pub(super) async fn rebuild_jobs(
        &self,
        mut queued: Vec<QueuedJob>,
    ) -> Result<(usize, i64), QueueError> {
        // Stable sort: the caller's order stays for equal tickets, and each chunk goes in
        // ticket order.
        queued.sort_by_key(|job| job.ticket);
        let highest = queued.last().map_or(0, |job| job.ticket);
        let mut added = 0;
        for chunk in queued.chunks(REBUILD_CHUNK) {
            let mut args: Vec<Value> = Vec::with_capacity(2 + chunk.len() * 4);
            args.push(self.keys.feed.clone().into());
            args.push(self.keys.base.clone().into());
            for job in chunk {
                args.push(job.id.to_string().into());
                args.push(job.ticket.into());
                args.push(job.user_id.to_string().into());
                args.push(job.model.as_deref().unwrap_or("").into());
            }
            let keys = vec![
                self.keys.queue.clone(),
                self.keys.jobs.clone(),
                self.keys.feedseq.clone(),
                self.keys.models.clone(),
                self.keys.lanes.clone(),
            ];
            let reply = self.run(&self.scripts.rebuild_jobs, keys, args).await?;
            let count = reply
                .as_u64()
                .ok_or_else(|| unexpected("rebuild_jobs", &reply))?;
            added += count as usize;
        }
        Ok((added, highest))
    }

    pub(super) async fn rebuild_pending(
        &self,
        pending: Vec<(String, Uuid)>,
    ) -> Result<(), QueueError> {
        let mut by_user: BTreeMap<String, BTreeSet<Uuid>> = BTreeMap::new();
        for (user, id) in pending {
            by_user.entry(user).or_default().insert(id);
        }
        // Users the store counts but the database does not: nothing of theirs is pending.
        let stale: Vec<String> = self
            .pending_users()
            .await?
            .into_iter()
            .filter(|user| !by_user.contains_key(user))
            .collect();

        let mut keys = vec![self.keys.users.clone()];
        let mut args: Vec<Value> = Vec::new();
        let mut ids_in_batch = 0;
        for (user, ids) in &by_user {
            keys.push(self.keys.pending(user));
            args.push(user.clone().into());
            args.push((ids.len() as i64).into());
            args.extend(ids.iter().map(|id| Value::from(id.to_string())));
            ids_in_batch += ids.len();
            if ids_in_batch >= REBUILD_CHUNK {
                let batch_keys = std::mem::replace(&mut keys, vec![self.keys.users.clone()]);
                let batch_args = std::mem::take(&mut args);
                self.run(&self.scripts.rebuild_pending, batch_keys, batch_args)
                    .await?;
                ids_in_batch = 0;
            }
        }
        if !args.is_empty() {
            self.run(&self.scripts.rebuild_pending, keys, args).await?;
        }

        for chunk in stale.chunks(REBUILD_CHUNK) {
            let mut keys = vec![self.keys.users.clone()];
            keys.extend(chunk.iter().map(|user| self.keys.pending(user)));
            let args = chunk.iter().map(|user| Value::from(user.clone())).collect();
            self.run(&self.scripts.clear_pending, keys, args).await?;
        }
        Ok(())
    }
}
