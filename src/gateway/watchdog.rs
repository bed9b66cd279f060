//! `WatchdogActor`: finds stuck jobs and marks them as errors (R4).
//!
//! Every `WATCHDOG_INTERVAL`, and once at start, one indexed query finds pending jobs with no
//! activity for `STUCK_AFTER`: processing jobs, and queued jobs only while the queue is not
//! moving either. Inactivity counts only over time this process could have seen activity
//! ([`Outages`]): after a start or an outage of the database or the queue store every job
//! gets a full `STUCK_AFTER`, so work that was only waiting runs, and an outcome whose write
//! is being retried lands instead of being raced by a stuck mark. A job whose outcome a
//! backend of this process is writing right now is skipped for the same reason.
//!
//! Each mark is a conditional write through the store (it applies only if the job is still
//! pending and still inactive), so watchdogs of several processes mark each job once. A
//! marked job leaves the queue, its backend (if it runs here) interrupts it, and its owner
//! gets `job.error` with the R9.3 message from the store's event.

use super::Gateway;
use crate::actors::forge::ForgePool;
use crate::db::QueuedStuck;
use crate::domain::change::{Change, Transition};
use crate::domain::models::ModelCatalogue;
use crate::domain::outages::Outages;
use crate::metrics::Metrics;
use actix::prelude::*;
use chrono::Utc;
use std::sync::Arc;
use std::time::Duration;

/// Most stuck jobs marked per scan (the next scan takes the rest).
const SCAN_LIMIT: u64 = 1000;

/// How the watchdog scans.
#[derive(Clone, Copy, Debug)]
pub struct WatchdogSettings {
    /// Inactivity after which a pending job is stuck.
    pub stuck_after: Duration,
    /// Scan period.
    pub interval: Duration,
    /// Total deadline of a job (`JOB_DEADLINE`), if any.
    pub job_deadline: Option<Duration>,
}

/// What a scan needs.
#[derive(Clone)]
pub struct WatchdogDeps {
    /// The use cases (database reads, marks through the store, the queue).
    pub gateway: Gateway,
    /// This process's backends (to skip jobs whose outcome they are writing).
    pub forge: ForgePool,
    /// Outages seen by this process.
    pub outages: Arc<Outages>,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

/// The watchdog.
pub struct WatchdogActor {
    deps: WatchdogDeps,
    settings: WatchdogSettings,
    scanning: bool,
}

impl WatchdogActor {
    /// A watchdog marking through `deps.gateway`.
    pub fn new(deps: WatchdogDeps, settings: WatchdogSettings) -> Self {
        WatchdogActor {
            deps,
            settings,
            scanning: false,
        }
    }

    fn scan(&mut self, ctx: &mut Context<Self>) {
        if self.scanning {
            return;
        }
        self.scanning = true;
        let (deps, settings) = (self.deps.clone(), self.settings);
        let work = async move { scan_once(&deps, settings).await };
        ctx.spawn(work.into_actor(self).map(|marked, act, _| {
            act.scanning = false;
            if marked > 0 {
                tracing::warn!(marked, "watchdog marked stuck jobs as errors");
            }
        }));
    }
}

/// One scan; returns how many jobs it marked (stuck, or past the job deadline).
pub async fn scan_once(deps: &WatchdogDeps, settings: WatchdogSettings) -> usize {
    let gateway = &deps.gateway;
    let Ok(stuck_after) = chrono::Duration::from_std(settings.stuck_after) else {
        return 0;
    };
    let now = Utc::now();
    let mut marked = 0;
    if let Some(cutoff) = deps.outages.processing_cutoff(now, stuck_after) {
        let include_queued = match deps.outages.queued_cutoff(now, stuck_after) {
            None => false,
            Some(_) => match gateway.queue().last_moved().await {
                Ok(moved) => moved.is_none_or(|moved| moved <= cutoff),
                Err(err) => {
                    deps.outages.queue_failed(now);
                    tracing::debug!(error = %err, "queue store unavailable; queued jobs are not judged");
                    false
                }
            },
        };
        // Jobs for a model no backend lists (asked before any backend answered, or removed
        // from every backend since) would wait forever while other jobs move the queue.
        let listed = deps.forge.models().read(ModelCatalogue::listed_models);
        let queued = if include_queued {
            QueuedStuck::All
        } else if deps.outages.queued_cutoff(now, stuck_after).is_some() && !listed.is_empty() {
            QueuedStuck::ForModelsNotIn(&listed)
        } else {
            QueuedStuck::None
        };
        match gateway.db().stuck_jobs(cutoff, queued, SCAN_LIMIT).await {
            Ok(candidates) => {
                for (id, user, status) in candidates {
                    if deps.forge.is_finishing(id) {
                        tracing::debug!(job = %id, "its outcome is being written; not marked");
                        continue;
                    }
                    let change = Change::Transition(Transition::MarkStuck {
                        inactive_since: cutoff,
                    });
                    match gateway.store().apply(id, change).await {
                        Ok(message) => {
                            marked += 1;
                            deps.metrics.stuck_jobs_marked.inc();
                            tracing::warn!(job = %id, %user, was = %status, "job inactive past STUCK_AFTER: marked as error (stuck_job)");
                            gateway.after_terminal(&message).await;
                        }
                        Err(err) => {
                            tracing::debug!(job = %id, error = %err, "not marked (it moved on meanwhile)")
                        }
                    }
                }
            }
            Err(err) => {
                deps.outages.database_failed(now);
                tracing::warn!(error = %err, "watchdog scan failed; will retry");
            }
        }
    } else {
        tracing::debug!(
            "not watched long enough since the start or the last outage; no job is judged stuck yet"
        );
    }
    if let Some(deadline) = settings
        .job_deadline
        .and_then(|d| chrono::Duration::from_std(d).ok())
    {
        let created_before = Utc::now() - deadline;
        match gateway.db().expired_jobs(created_before, SCAN_LIMIT).await {
            Ok(expired) => {
                for id in expired {
                    let change = Change::Transition(Transition::Expire { created_before });
                    if let Ok(message) = gateway.store().apply(id, change).await {
                        marked += 1;
                        tracing::warn!(job = %id, "job past JOB_DEADLINE: marked as error (timeout)");
                        gateway.after_terminal(&message).await;
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "job deadline scan failed; will retry"),
        }
    }
    marked
}

impl Actor for WatchdogActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.scan(ctx);
        ctx.run_interval(self.settings.interval, |act, ctx| act.scan(ctx));
    }
}

/// Scan now (tests, and an operator's nudge).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ScanNow;

impl Handler<ScanNow> for WatchdogActor {
    type Result = ();

    fn handle(&mut self, _msg: ScanNow, ctx: &mut Context<Self>) {
        self.scan(ctx);
    }
}

/// The typed handle to the watchdog.
#[derive(Clone)]
pub struct WatchdogHandle {
    addr: Addr<WatchdogActor>,
}

impl WatchdogHandle {
    /// Wraps the actor's address.
    pub fn new(addr: Addr<WatchdogActor>) -> Self {
        WatchdogHandle { addr }
    }

    /// Starts a scan now.
    pub fn scan_now(&self) {
        self.addr.do_send(ScanNow);
    }
}
