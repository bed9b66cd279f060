//! Positions in the Redis queue: a rank (less the jobs whose model no backend lists) while
//! every backend offers every model, else counted over the lanes of the models that share a
//! backend with the job (see [`crate::domain::routing`]).

use super::{RedisQueue, unavailable, unexpected};
use crate::domain::routing::Routing;
use crate::queue::QueueError;
use fred::prelude::{SortedSetsInterface, Value};
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use uuid::Uuid;

/// The routing as the scripts take it.
#[derive(Default)]
pub(super) struct RoutingArgs {
    routing: Arc<Routing>,
    /// One line per listed model, `model<TAB>backends<TAB>partial`: `backends` a 0/1 per
    /// backend (1: it lists the model), `partial` 1 when its jobs do not count every job
    /// ahead. Its size grows with the models listed (one line each), not with their square:
    /// the scripts work out which lanes share a backend.
    spec: String,
}

impl RoutingArgs {
    pub(super) fn new(routing: Arc<Routing>) -> RoutingArgs {
        let backends: Vec<&[Arc<str>]> = routing.offers().map(|(_, models)| models).collect();
        let partial: HashSet<&Arc<str>> = routing.partial().collect();
        let listed: BTreeSet<&Arc<str>> =
            backends.iter().flat_map(|models| models.iter()).collect();
        // Names are checked (no control characters), so tabs and newlines separate them.
        let spec = listed
            .into_iter()
            .map(|model| {
                let mask: String = backends
                    .iter()
                    .map(|models| {
                        if models.binary_search(model).is_ok() {
                            '1'
                        } else {
                            '0'
                        }
                    })
                    .collect();
                let part = if partial.contains(model) { '1' } else { '0' };
                format!("{model}\t{mask}\t{part}")
            })
            .collect::<Vec<_>>()
            .join("\n");
        RoutingArgs { routing, spec }
    }

    /// What `enqueue.lua` takes to count a new job's position: the routing once some backend
    /// has listed models, else nothing (its rank).
    pub(super) fn for_enqueue(&self) -> Vec<Value> {
        if self.routing.knows_nothing() {
            Vec::new()
        } else {
            vec![Value::from(self.spec.as_str())]
        }
    }
}

impl RedisQueue {
    /// The live positions of `ids`, in one round trip.
    pub(super) async fn positions_of(&self, ids: &[Uuid]) -> Result<Vec<Option<u32>>, QueueError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let spec = {
            let routing = self.routing.read();
            (!routing.routing.knows_nothing()).then(|| routing.spec.clone())
        };
        let Some(spec) = spec else {
            return self.ranks(ids).await;
        };
        let keys = vec![
            self.keys.queue.clone(),
            self.keys.models.clone(),
            self.keys.lanes.clone(),
        ];
        let mut args: Vec<Value> = vec![self.keys.base.clone().into(), spec.into()];
        args.extend(ids.iter().map(|id| Value::from(id.to_string())));
        let reply = self.run(&self.scripts.positions, keys, args).await?;
        let fields = match &reply {
            Value::Array(fields) if fields.len() == ids.len() => fields,
            _ => return Err(unexpected("positions", &reply)),
        };
        Ok(fields
            .iter()
            .map(|field| field.as_u64().and_then(|p| u32::try_from(p).ok()))
            .collect())
    }

    /// Ranks (every job ahead counts), pipelined.
    async fn ranks(&self, ids: &[Uuid]) -> Result<Vec<Option<u32>>, QueueError> {
        let pipeline = self.pool.next().pipeline();
        for id in ids {
            let _: () = pipeline
                .zrank(self.keys.queue.as_str(), id.to_string(), false)
                .await
                .map_err(|err| unavailable("reading positions", err))?;
        }
        let ranks: Vec<Option<u64>> = pipeline
            .all()
            .await
            .map_err(|err| unavailable("reading positions", err))?;
        Ok(ranks
            .into_iter()
            .map(|rank| rank.and_then(|rank| u32::try_from(rank + 1).ok()))
            .collect())
    }
}
