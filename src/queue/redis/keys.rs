//! The queue's Lua scripts (loaded at connect, loaded again when Redis forgot them) and the
//! names of its keys. Redis scripts cannot include one another: what several share
//! (`lanes.lua`: a job's place in its model's lane; `routing.lua`: counting positions) is
//! prepended to each at build time.

use super::unavailable;
use crate::queue::QueueError;
use fred::prelude::{LuaInterface, Pool};

/// One Lua script: its source (to load it again after a Redis restart) and its SHA1.
pub(super) struct Script {
    pub(super) name: &'static str,
    pub(super) source: &'static str,
    pub(super) sha: String,
}

/// The scripts, loaded once at connect.
pub(super) struct Scripts {
    pub(super) enqueue: Script,
    pub(super) abort: Script,
    pub(super) pop: Script,
    pub(super) requeue: Script,
    pub(super) remove: Script,
    pub(super) release: Script,
    pub(super) mark_moved: Script,
    pub(super) snapshot: Script,
    pub(super) positions: Script,
    pub(super) rebuild_jobs: Script,
    pub(super) rebuild_pending: Script,
    pub(super) clear_pending: Script,
    pub(super) finish_rebuild: Script,
}

impl Scripts {
    pub(super) async fn load(pool: &Pool) -> Result<Scripts, QueueError> {
        async fn one(
            pool: &Pool,
            name: &'static str,
            source: &'static str,
        ) -> Result<Script, QueueError> {
            let sha: String = pool
                .script_load(source)
                .await
                .map_err(|err| unavailable(&format!("loading the {name} script"), err))?;
            Ok(Script { name, source, sha })
        }
        Ok(Scripts {
            enqueue: one(
                pool,
                "enqueue",
                concat!(
                    include_str!("lanes.lua"),
                    include_str!("routing.lua"),
                    include_str!("enqueue.lua")
                ),
            )
            .await?,
            abort: one(
                pool,
                "abort",
                concat!(include_str!("lanes.lua"), include_str!("abort.lua")),
            )
            .await?,
            pop: one(
                pool,
                "pop",
                concat!(include_str!("lanes.lua"), include_str!("pop.lua")),
            )
            .await?,
            requeue: one(
                pool,
                "requeue",
                concat!(include_str!("lanes.lua"), include_str!("requeue.lua")),
            )
            .await?,
            remove: one(
                pool,
                "remove",
                concat!(include_str!("lanes.lua"), include_str!("remove.lua")),
            )
            .await?,
            release: one(pool, "release", include_str!("release.lua")).await?,
            mark_moved: one(pool, "mark_moved", include_str!("mark_moved.lua")).await?,
            snapshot: one(pool, "snapshot", include_str!("snapshot.lua")).await?,
            positions: one(
                pool,
                "positions",
                concat!(include_str!("routing.lua"), include_str!("positions.lua")),
            )
            .await?,
            rebuild_jobs: one(
                pool,
                "rebuild_jobs",
                concat!(include_str!("lanes.lua"), include_str!("rebuild_jobs.lua")),
            )
            .await?,
            rebuild_pending: one(pool, "rebuild_pending", include_str!("rebuild_pending.lua"))
                .await?,
            clear_pending: one(pool, "clear_pending", include_str!("clear_pending.lua")).await?,
            finish_rebuild: one(pool, "finish_rebuild", include_str!("finish_rebuild.lua")).await?,
        })
    }
}

/// The names of one queue's keys and channel.
pub(super) struct Keys {
    /// `{prefix}:`, the start of every key.
    pub(super) base: String,
    pub(super) ticket: String,
    pub(super) queue: String,
    pub(super) jobs: String,
    /// Job id → the model it asks for (jobs without one are not in it).
    pub(super) models: String,
    /// The models that have queued jobs (whose lanes are not empty).
    pub(super) lanes: String,
    pub(super) users: String,
    pub(super) moved: String,
    pub(super) feedseq: String,
    pub(super) feed: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Keys {
        let base = format!("{{{prefix}}}:");
        let key = |name: &str| format!("{base}{name}");
        Keys {
            ticket: key("ticket"),
            queue: key("queue"),
            jobs: key("jobs"),
            models: key("models"),
            lanes: key("lanes"),
            users: key("users"),
            moved: key("moved"),
            feedseq: key("feedseq"),
            feed: key("feed"),
            base,
        }
    }

    pub(super) fn pending(&self, user: &str) -> String {
        format!("{}pending:{user}", self.base)
    }

    /// The tombstone of an enqueue that was undone (see `abort.lua`).
    pub(super) fn aborted(&self, id: uuid::Uuid) -> String {
        format!("{}aborted:{id}", self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis_client::check_prefix;

    #[test]
    fn keys_share_one_hash_tag() {
        let keys = Keys::new("fg");
        for key in [
            &keys.ticket,
            &keys.queue,
            &keys.jobs,
            &keys.models,
            &keys.lanes,
            &keys.users,
            &keys.moved,
            &keys.feedseq,
            &keys.feed,
            &keys.pending("a b"),
            &keys.aborted(uuid::Uuid::nil()),
        ] {
            assert!(key.starts_with("{fg}:"), "{key}");
        }
        assert!(check_prefix("a{b").is_err());
        assert!(check_prefix("").is_err());
        assert!(check_prefix("fg-test.1").is_ok());
    }
}
