//! `LeaseActor`: job leases (`JOB_LEASE`), so a job whose process died runs again.
//!
//! A job's run holds a lease from the moment a backend takes it (the transition to processing
//! counts as the first renewal). Every third of `JOB_LEASE` this actor:
//! - renews the lease of every job this process's backends run; a job whose run is no longer
//!   current (another process took the lease, or the job ended) is abandoned here, so its
//!   generation stops and nothing of it is written (every write of a run is fenced by its
//!   number, see [`Change::OfRun`]);
//! - finds the processing jobs whose lease ran out (their process was killed, froze, or lost
//!   the database for a whole `JOB_LEASE`) and hands each back: queued again at its old place
//!   at the head of the queue, through a conditional write that names the run, so of several
//!   processes finding it one wins. Its owner sees `job.queued`, then its position.
//!
//! Expiry is judged only after this process has watched the database for a whole
//! `JOB_LEASE` without an outage ([`Outages`]): after an outage every lease looks expired
//! because nobody could renew it.
//!
//! R4's watchdog stays for jobs whose process is alive but whose generation makes no progress.

use super::Gateway;
use crate::actors::forge::ForgePool;
use crate::domain::change::{Change, Transition};
use crate::domain::outages::Outages;
use crate::domain::queue_book::QueuedJob;
use crate::metrics::Metrics;
use actix::prelude::*;
use chrono::Utc;
use std::sync::Arc;
use std::time::Duration;

/// Most expired leases handed back per scan (the next scan takes the rest).
const SCAN_LIMIT: u64 = 500;

/// What the lease keeper needs.
#[derive(Clone)]
pub struct LeaseDeps {
    /// The use cases (database, store, queue).
    pub gateway: Gateway,
    /// This process's backends: the runs whose leases it renews.
    pub forge: ForgePool,
    /// Outages seen by this process.
    pub outages: Arc<Outages>,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

/// The lease keeper.
pub struct LeaseActor {
    deps: LeaseDeps,
    lease: Duration,
    busy: bool,
}

impl LeaseActor {
    /// A keeper of leases of length `lease`.
    pub fn new(deps: LeaseDeps, lease: Duration) -> Self {
        LeaseActor {
            deps,
            lease,
            busy: false,
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        self.busy = true;
        let (deps, lease) = (self.deps.clone(), self.lease);
        let work = async move {
            renew(&deps).await;
            hand_back_expired(&deps, lease).await
        };
        ctx.spawn(work.into_actor(self).map(|handed_back, act, _| {
            act.busy = false;
            if handed_back > 0 {
                tracing::warn!(
                    handed_back,
                    "jobs whose lease ran out went back to the queue"
                );
            }
        }));
    }
}

/// Renews the leases of this process's runs; abandons the runs it lost.
async fn renew(deps: &LeaseDeps) {
    let runs = deps.forge.runs();
    if runs.is_empty() {
        return;
    }
    let now = Utc::now();
    match deps.gateway.db().renew_leases(&runs, now).await {
        Ok(lost) => {
            for id in lost {
                if !deps.forge.holds(id) || deps.forge.is_finishing(id) {
                    // It ended, or its outcome is being written, since the list was taken.
                    continue;
                }
                tracing::warn!(job = %id, "this run of the job is no longer its current one (its lease was taken, or it ended); stopping it");
                deps.forge.abandon(id);
            }
        }
        Err(err) => {
            deps.outages.database_failed(now);
            tracing::warn!(error = %err, "could not renew job leases; will retry");
        }
    }
}

/// Hands back the jobs whose lease ran out; returns how many.
async fn hand_back_expired(deps: &LeaseDeps, lease: Duration) -> usize {
    let Ok(lease) = chrono::Duration::from_std(lease) else {
        return 0;
    };
    let now = Utc::now();
    let Some(cutoff) = deps.outages.processing_cutoff(now, lease) else {
        return 0;
    };
    let gateway = &deps.gateway;
    let expired = match gateway.db().expired_leases(cutoff, SCAN_LIMIT).await {
        Ok(expired) => expired,
        Err(err) => {
            deps.outages.database_failed(now);
            tracing::warn!(error = %err, "lease scan failed; will retry");
            return 0;
        }
    };
    let mut handed_back = 0;
    for (id, run) in expired {
        if deps.forge.holds(id) {
            // Ours, and alive: its renewal is only late.
            continue;
        }
        let change = Change::Transition(Transition::HandBack {
            run,
            elsewhere: false,
        });
        let message = match gateway.store().apply(id, change).await {
            Ok(message) => message,
            Err(err) => {
                tracing::debug!(job = %id, error = %err, "not handed back (it moved on meanwhile)");
                continue;
            }
        };
        handed_back += 1;
        deps.metrics.leases_expired.inc();
        tracing::warn!(job = %id, run, "job lease ran out (its process is gone): back to the queue");
        let Some(ticket) = message.ticket else {
            continue;
        };
        let job = QueuedJob {
            id,
            user_id: message.user_id.as_str().into(),
            ticket,
            model: message.model.as_deref().map(Into::into),
        };
        if let Err(err) = gateway.queue().requeue(&job).await {
            // The queue's audit finds the queued record and puts it back.
            tracing::warn!(job = %id, error = %err, "the queue did not take a handed-back job; its audit will");
        }
    }
    handed_back
}

impl Actor for LeaseActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.lease / 3, |act, ctx| act.tick(ctx));
    }
}
