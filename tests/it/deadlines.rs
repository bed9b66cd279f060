//! Every database call a request makes has a deadline (`DATABASE_TIMEOUT`): a table locked for
//! longer answers `503 unavailable` within it, and what was accepted before still completes
//! once the lock goes (issue 22).

use crate::common::*;
use forge_sim::{Latency, SimConfig};
use std::time::{Duration, Instant};

/// Runs `sql` with psql on `url` in the background (a session of its own, like an operator's).
fn psql_session(url: &str, sql: &str) -> tokio::process::Child {
    tokio::process::Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-qc", sql])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("run psql")
}

/// Whether `schema.messages` is locked exclusively by another session now.
async fn locked(url: &str, schema: &str) -> bool {
    let query = format!(
        "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relname = 'messages' AND n.nspname = '{schema}' \
         AND l.mode = 'AccessExclusiveLock' AND l.granted"
    );
    let out = tokio::process::Command::new("psql")
        .args([url, "-Atc", &query])
        .output()
        .await
        .expect("run psql");
    String::from_utf8_lossy(&out.stdout).trim() == "1"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set TEST_DATABASE_URL"]
async fn a_locked_table_answers_503_within_the_deadline_and_accepted_work_completes_after() {
    let sim = start_sim(SimConfig {
        latency: Latency::Fixed(Duration::from_secs(2)),
        ..fast_sim()
    })
    .await;
    let storage = Storage::fresh();
    let (url, schema) = storage.postgres.clone().expect("TEST_DATABASE_URL");
    let mut env = storage.process_env(sim.url());
    env.push(("DATABASE_TIMEOUT", "2s".to_owned()));
    let gateway = GatewayProcess::start(&env).await;
    let client = gateway.client();
    let token = client.token("alice").await;
    // Accepted before the lock: running (2 s on Forge) when the table is locked.
    let running = client.submit_id(&token, "before the lock").await;
    client
        .wait_message(&token, &running, |m| m["status"] == "processing")
        .await;

    let mut holder = psql_session(
        &url,
        &format!(
            "BEGIN; LOCK TABLE \"{schema}\".messages IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(8); COMMIT;"
        ),
    );
    let deadline = Instant::now() + DEADLINE;
    while !locked(&url, &schema).await {
        assert!(Instant::now() < deadline, "the lock was never taken");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let submits = (0..10).map(|n| {
        let (client, token) = (client.clone(), token.clone());
        async move {
            client
                .submit(&token, small_prompt(&format!("during {n}")))
                .await
        }
    });
    let list = client.get(&token, "/api/v1/messages");
    let (answers, (list_status, _)) = tokio::join!(futures::future::join_all(submits), list);
    let answered_in = started.elapsed();
    for (status, body) in &answers {
        assert_eq!(*status, 503, "{body}");
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
    }
    assert_eq!(list_status, 503);
    assert!(
        answered_in < Duration::from_secs(5),
        "10 submits and a list under a held lock answered in {answered_in:?}, DATABASE_TIMEOUT being 2 s"
    );
    assert!(
        locked(&url, &schema).await,
        "the lock was still held all along"
    );

    // Once the lock goes, the job accepted before completes and submits work again.
    holder.wait().await.expect("psql ends");
    client
        .wait_message(&token, &running, |m| m["status"] == "complete")
        .await;
    let after = client.submit_id(&token, "after the lock").await;
    client
        .wait_message(&token, &after, |m| m["status"] == "complete")
        .await;
    gateway.kill().await;
    sim.shutdown().await;
}
