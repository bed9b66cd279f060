//! Positions in the Redis queue: a rank while every backend offers every model, else counted
//! over the lanes of the models that share a backend with the job (see
//! [`crate::domain::routing`]).

use super::{RedisQueue, unavailable, unexpected};
use crate::domain::routing::{Ahead, Routing};
use crate::queue::QueueError;
use fred::prelude::{SortedSetsInterface, Value};
use std::sync::Arc;
use uuid::Uuid;

/// The routing as the scripts take it.
#[derive(Default)]
pub(super) struct RoutingArgs {
    routing: Arc<Routing>,
    /// `model<TAB>counted<TAB>…` lines for `positions.lua` (empty while uniform).
    spec: String,
}

impl RoutingArgs {
    pub(super) fn new(routing: Arc<Routing>) -> RoutingArgs {
        // Names are checked (no control characters), so tabs and newlines separate them.
        let spec = routing
            .partial()
            .map(|(model, counted)| {
                std::iter::once(model.as_ref())
                    .chain(counted.iter().map(AsRef::as_ref))
                    .collect::<Vec<&str>>()
                    .join("\t")
            })
            .collect::<Vec<_>>()
            .join("\n");
        RoutingArgs { routing, spec }
    }

    /// The models whose jobs count ahead of a new job for `model`, as `enqueue.lua` takes
    /// them (none: every job ahead counts).
    pub(super) fn counted_ahead_of(&self, model: Option<&str>) -> Vec<Value> {
        match self.routing.ahead_of(model) {
            Ahead::All => Vec::new(),
            Ahead::Models(models) => models
                .iter()
                .map(|model| Value::from(model.as_ref()))
                .collect(),
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
            (!routing.routing.is_uniform()).then(|| routing.spec.clone())
        };
        let Some(spec) = spec else {
            return self.ranks(ids).await;
        };
        let keys = vec![self.keys.queue.clone(), self.keys.models.clone()];
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
