//! A backend slot lost while held (found by the attack on issue 23: a frozen process, or a
//! Redis that forgot its keys, kept a lapsed slot for good beside its new holder, so a one-slot
//! backend ran two jobs, and a cancel interrupted another user's generation). A lost slot is
//! given up: its worker takes no other job with it and waits in line for a slot again.
//! Ignored without `TEST_DATABASE_URL` and `TEST_REDIS_URL` (CI sets both).

use crate::common::*;
use forge_gateway::app::{self, RunningApp};
use std::time::{Duration, Instant};

/// Slots held and slots lost so far by one process, across its backends.
fn slots_of(running: &RunningApp) -> (f64, f64) {
    let text = running.core().expect("running").metrics.encode();
    (
        metric(&text, "forge_gateway_forge_slots_held"),
        metric(&text, "forge_gateway_forge_slots_lost_total"),
    )
}

async fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL and Redis: set TEST_DATABASE_URL and TEST_REDIS_URL"]
async fn a_slot_lost_while_held_is_given_up_and_no_job_runs_with_it() {
    let storage = shared_storage();
    let (redis_url, prefix) = storage.redis.clone().expect("redis");
    let sim = start_sim(hanging_sim()).await;
    let urls = [sim.url()];
    // A takes the backend's only slot at its start and keeps it while idle.
    let a = app::start(config(&storage, &urls, &["--job-lease", "1s"]))
        .await
        .expect("A starts");
    until("A holds the slot", || slots_of(&a).0 == 1.0).await;

    // Its lease lapses and another holder takes the slot (as after a freeze of A past its
    // lease, or a Redis that forgot it while another process waited): A's holder is taken out
    // of the backend's slot set and an intruder, whose lease never ends, put in.
    let redis = |command: &str| {
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "key=$(redis-cli -u '{redis_url}' --scan --pattern '{{{prefix}}}:slots:*' | head -1); \
                 test -n \"$key\" && redis-cli -u '{redis_url}' {command}"
            ))
            .output()
            .expect("redis-cli");
        assert!(output.status.success(), "{command}: {output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    let holder = redis("zrange \"$key\" 0 -1");
    assert!(
        !holder.is_empty() && !holder.contains('\n'),
        "one holder: {holder:?}"
    );
    redis("zadd \"$key\" 99999999999999 intruder");
    redis(&format!("zrem \"$key\" {holder}"));
    until("A found its slot lost", || slots_of(&a).1 >= 1.0).await;

    // A job arrives: A's worker, waiting with the lost slot, puts it back and gives the slot
    // up. (Kept, the slot ran the job beside the intruder's: two inside one-slot Forge.)
    let client = Client {
        base: a.url(),
        http: http_client(),
    };
    let token = client.token("alice").await;
    let id = client.submit_id(&token, "not with a lost slot").await;
    until("A gave the lost slot up", || slots_of(&a).0 == 0.0).await;
    let view = client
        .get(&token, &format!("/api/v1/messages/{id}"))
        .await
        .1;
    assert_eq!(view["status"], "queued", "{view}");
    assert_eq!(view["queue_position"], 1, "{view}");
    assert_eq!(
        sim.stats().txt2img_requests,
        0,
        "nothing ran with the lost slot"
    );

    // The intruder leaves: A takes the slot again and runs the job.
    redis("zrem \"$key\" intruder");
    client
        .wait_message(&token, &id, |m| m["status"] == "processing")
        .await;
    a.shutdown().await;
}
