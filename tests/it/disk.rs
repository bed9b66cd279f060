//! A disk that fills and frees (issue 22): an accepted message is never lost, the store says
//! it is failing while it is, and everything resumes by itself once space is back. The disk is
//! a tmpfs of a few MiB (mounting needs root: `.ci/run` runs these with `--include-ignored`).

use crate::common::*;
use forge_gateway::domain::health::FAILING_FOR;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A submission large enough (about 48 KiB of client data that does not compress) to need
/// fresh pages on a full disk.
fn big_submission(prompt: &str) -> Value {
    let noise: String = (0..1500)
        .map(|_| Uuid::now_v7().simple().to_string())
        .collect();
    let mut body = small_prompt(prompt);
    body["data"] = json!({ "note": noise });
    body
}

/// Submits until one is accepted (the store recovers by itself); returns its id.
async fn submit_until_accepted(
    app: &Client,
    token: &str,
    prompt: &str,
    within: Duration,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = app.submit(token, small_prompt(prompt)).await;
        if status == 202 {
            return body["id"].as_str().expect("id").to_owned();
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            Instant::now() < deadline,
            "submits still refused after space came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `/readyz`'s answer now.
async fn readyz(app: &Client) -> reqwest::Response {
    app.http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .expect("readyz")
}

/// Waits until `/readyz` answers 200 (a few seconds after the last failed write).
async fn wait_ready(app: &Client, what: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let ready = readyz(app).await;
        if ready.status() == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not ready again after space came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Fills the disk, submits while it is full, frees it, submits again, three times over; every
/// message answered 202 must be readable, complete, and still there after a restart.
async fn every_accepted_message_outlives_a_full_disk(storage: &Storage, disk: &SmallDisk) {
    let app = TestApp::start(storage, fast_sim(), &[]).await;
    let token = app.token("alice").await;
    let first = app.submit_id(&token, "before").await;
    app.wait_message(&token, &first, |m| m["status"] == "complete")
        .await;
    let mut accepted = vec![first];
    for round in 0..3 {
        disk.fill();
        let mut refused = 0;
        for n in 0..4 {
            let (status, body) = app
                .submit(&token, big_submission(&format!("full {round}.{n}")))
                .await;
            match status {
                202 => accepted.push(body["id"].as_str().expect("id").to_owned()),
                503 => refused += 1,
                other => panic!("a full disk answered {other}: {body}"),
            }
        }
        assert!(refused > 0, "round {round}: a full disk refused nothing");
        let ready = readyz(&app).await;
        assert_eq!(
            ready.status(),
            503,
            "round {round}: ready while writes fail"
        );
        let ready: Value = ready.json().await.expect("json");
        assert_eq!(ready["checks"]["database"], "unavailable", "{ready}");
        if round == 0 {
            // Nothing is written past the failure: readiness must still see the disk full
            // once the period after the last failed write is over (it proves with a write).
            let until = Instant::now() + FAILING_FOR + Duration::from_secs(2);
            while Instant::now() < until {
                let ready = readyz(&app).await;
                assert_eq!(ready.status(), 503, "ready while the disk is still full");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }

        disk.free();
        accepted
            .push(submit_until_accepted(&app, &token, &format!("after {round}"), DEADLINE).await);
        for n in 0..3 {
            accepted.push(app.submit_id(&token, &format!("after {round}.{n}")).await);
        }
        wait_ready(&app, &format!("round {round}")).await;
    }
    for id in &accepted {
        app.wait_message(&token, id, |m| m["status"] == "complete")
            .await;
    }
    let listed = app.get(&token, "/api/v1/messages?limit=200").await.1;
    assert_eq!(
        listed["messages"].as_array().expect("messages").len(),
        accepted.len(),
        "the listing shows exactly the accepted messages"
    );
    app.stop().await;

    let app = TestApp::start(storage, fast_sim(), &[]).await;
    for id in &accepted {
        let (status, message) = app.get(&token, &format!("/api/v1/messages/{id}")).await;
        assert_eq!(status, 200, "{id} lost after a restart");
        assert_eq!(message["status"], "complete", "{message}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "mounts a tmpfs: needs root (.ci/run runs it)"]
async fn sqlite_loses_no_accepted_message_when_its_disk_fills_and_frees() {
    let storage = Storage::sqlite();
    let disk = SmallDisk::mount(storage.dir.path(), 3, None);
    every_accepted_message_outlives_a_full_disk(&storage, &disk).await;
}

/// Runs `sql` with psql against the server of `url` (its `postgres` database).
fn psql(url: &str, sql: &str) -> bool {
    let server = with_path(url, "/postgres");
    std::process::Command::new("psql")
        .args([server.as_str(), "-v", "ON_ERROR_STOP=1", "-qc", sql])
        .status()
        .is_ok_and(|status| status.success())
}

/// `url` with its path (the database) replaced.
fn with_path(url: &str, path: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("database URL");
    parsed.set_path(path);
    parsed.to_string()
}

/// A database of its own in a tablespace on a small disk: the server's data files for it live
/// there (its write-ahead log does not, as on a server whose data disk fills). Dropped with
/// the disk.
struct PostgresOnSmallDisk {
    url: String,
    name: String,
    disk: SmallDisk,
    place: Option<tempfile::TempDir>,
}

impl PostgresOnSmallDisk {
    fn create(url: &str, mib: u32) -> PostgresOnSmallDisk {
        let place = tempfile::tempdir().expect("folder");
        let disk = SmallDisk::mount(place.path(), mib, Some("postgres"));
        let name = format!("fg_disk_{}", Uuid::now_v7().simple());
        let location = place.path().display();
        assert!(psql(
            url,
            &format!("CREATE TABLESPACE {name} LOCATION '{location}'")
        ));
        assert!(psql(
            url,
            &format!("CREATE DATABASE {name} TABLESPACE {name}")
        ));
        PostgresOnSmallDisk {
            url: url.to_owned(),
            name,
            disk,
            place: Some(place),
        }
    }

    fn database_url(&self) -> String {
        with_path(&self.url, &format!("/{}", self.name))
    }
}

impl Drop for PostgresOnSmallDisk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.disk.path.join("filler"));
        // Dropping asks for a checkpoint, which may fail for a moment after the disk was full.
        let dropped = (0..20).any(|attempt| {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(500));
            }
            psql(
                &self.url,
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            )
        });
        if !(dropped
            && psql(
                &self.url,
                &format!("DROP TABLESPACE IF EXISTS {}", self.name),
            ))
        {
            // The server still has files there: unmounting would break its checkpoints.
            eprintln!("could not drop {}: its disk stays mounted", self.name);
            self.disk.keep();
            if let Some(place) = self.place.take() {
                let _ = place.keep();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (TEST_DATABASE_URL) and root to mount a tmpfs"]
async fn postgres_loses_no_accepted_message_when_its_disk_fills_and_frees() {
    let url = std::env::var("TEST_DATABASE_URL").expect("set TEST_DATABASE_URL=postgres://…");
    let database = PostgresOnSmallDisk::create(&url, 24);
    let mut storage = Storage::sqlite();
    storage.postgres = Some((database.database_url(), "gateway".to_owned()));
    every_accepted_message_outlives_a_full_disk(&storage, &database.disk).await;
}
