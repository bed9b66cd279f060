//! `WatchdogActor`: finds stuck jobs and marks them as errors (R4).
//!
//! Every `WATCHDOG_INTERVAL`, and once at start, one indexed query finds pending jobs with no
//! activity for `STUCK_AFTER` (queued jobs only while the queue is not moving either). Each is
//! marked by a conditional write through the store (it applies only if the job is still
//! pending and still inactive), so watchdogs of several processes mark each job once. A marked
//! job leaves the queue, its backend (if it runs here) interrupts it, and its owner gets
//! `job.error` with the R9.3 message from the store's event.

use crate::db::Database;
use crate::domain::change::{Change, Transition};
use crate::gateway::Gateway;
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

/// The watchdog.
pub struct WatchdogActor {
    db: Database,
    gateway: Gateway,
    metrics: Arc<Metrics>,
    settings: WatchdogSettings,
    scanning: bool,
}

impl WatchdogActor {
    /// A watchdog over `db`, marking through `gateway`'s store.
    pub fn new(
        db: Database,
        gateway: Gateway,
        metrics: Arc<Metrics>,
        settings: WatchdogSettings,
    ) -> Self {
        WatchdogActor {
            db,
            gateway,
            metrics,
            settings,
            scanning: false,
        }
    }

    fn scan(&mut self, ctx: &mut Context<Self>) {
        if self.scanning {
            return;
        }
        self.scanning = true;
        let (db, gateway, metrics, settings) = (
            self.db.clone(),
            self.gateway.clone(),
            self.metrics.clone(),
            self.settings,
        );
        let work = async move { scan_once(&db, &gateway, &metrics, settings).await };
        ctx.spawn(work.into_actor(self).map(|marked, act, _| {
            act.scanning = false;
            if marked > 0 {
                tracing::warn!(marked, "watchdog marked stuck jobs as errors");
            }
        }));
    }
}

/// One scan; returns how many jobs it marked (stuck, or past the job deadline).
pub async fn scan_once(
    db: &Database,
    gateway: &Gateway,
    metrics: &Metrics,
    settings: WatchdogSettings,
) -> usize {
    let Ok(stuck_after) = chrono::Duration::from_std(settings.stuck_after) else {
        return 0;
    };
    let cutoff = Utc::now() - stuck_after;
    let queue_moved = gateway.queue().last_moved().await.unwrap_or(None);
    let candidates = match db.stuck_jobs(cutoff, queue_moved, SCAN_LIMIT).await {
        Ok(candidates) => candidates,
        Err(err) => {
            tracing::warn!(error = %err, "watchdog scan failed; will retry");
            return 0;
        }
    };
    let mut marked = 0;
    for (id, user, status) in candidates {
        let change = Change::Transition(Transition::MarkStuck {
            inactive_since: cutoff,
        });
        match gateway.store().apply(id, change).await {
            Ok(message) => {
                marked += 1;
                metrics.stuck_jobs_marked.inc();
                tracing::warn!(job = %id, %user, was = %status, "job inactive past STUCK_AFTER: marked as error (stuck_job)");
                gateway.after_terminal(&message).await;
            }
            Err(err) => {
                tracing::debug!(job = %id, error = %err, "not marked (it moved on meanwhile)")
            }
        }
    }
    if let Some(deadline) = settings
        .job_deadline
        .and_then(|d| chrono::Duration::from_std(d).ok())
    {
        let created_before = Utc::now() - deadline;
        match db.expired_jobs(created_before, SCAN_LIMIT).await {
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
