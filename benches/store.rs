//! Merges per second through the `MessageStoreActor`: one hot message and many messages,
//! with and without folding, on SQLite and (with `BENCH_DATABASE_URL`) PostgreSQL.
//!
//! `cargo bench --bench store` (add `BENCH_DATABASE_URL=postgres://postgres@127.0.0.1/test`
//! for PostgreSQL; a fresh schema is created and dropped).

mod common;

use actix::Actor;
use chrono::Utc;
use forge_gateway::actors::store::{MessageStoreActor, StoreHandle, StoreLimits};
use forge_gateway::db::{Database, DbSettings};
use forge_gateway::domain::change::Change;
use forge_gateway::domain::message::ChatMessage;
use forge_gateway::domain::outages::Outages;
use forge_gateway::domain::params::{CreateRequest, GenerationParams};

use forge_gateway::events::registry::SessionCaps;
use forge_gateway::events::{LocalBus, SessionRegistry};
use forge_gateway::metrics::Metrics;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

const CLIENTS: usize = 64;
const RUN_FOR: Duration = Duration::from_secs(4);

fn message(id: Uuid) -> ChatMessage {
    let request = CreateRequest {
        prompt: "bench".into(),
        params: GenerationParams::default(),
        conversation_id: None,
        model: None,
        data: json!({}),
    };
    let mut message = ChatMessage::queued(id, "bench", request, Utc::now());
    message.queue_position = Some(1);
    message.ticket = Some(1);
    message
}

/// Runs `CLIENTS` clients patching `targets` (round robin) for `RUN_FOR`; returns merges/s
/// and checks that nothing acknowledged is lost: each client overwrites its own key with a
/// counter, so the database must hold every client's last acknowledged value.
async fn run(store: &StoreHandle, db: &Database, targets: &[Uuid]) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let store = store.clone();
        let targets = targets.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut done = 0usize;
            let mut last = std::collections::HashMap::new();
            while started.elapsed() < RUN_FOR {
                let id = targets[(client + done) % targets.len()];
                let patch = json!({ format!("c{client}"): { "n": done, "at": "bench" } });
                match store
                    .apply(
                        id,
                        Change::ClientPatch {
                            owner: "bench".into(),
                            patch,
                            client_ref: None,
                        },
                    )
                    .await
                {
                    Ok(_) => {
                        last.insert(id, done);
                        done += 1;
                    }
                    Err(err) => panic!("merge failed: {err}"),
                }
            }
            (client, done, last)
        }));
    }
    let mut total = 0;
    let mut expected = Vec::new();
    for task in tasks {
        let (client, done, last) = task.await.expect("client");
        total += done;
        expected.push((client, last));
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    for (client, last) in expected {
        for (id, n) in last {
            let message = db.get(id).await.expect("read").expect("message");
            assert_eq!(
                message.data[format!("c{client}")]["n"],
                json!(n),
                "an acknowledged merge was lost"
            );
        }
    }
    rate
}

async fn bench(label: &str, settings: DbSettings) {
    let db = match Database::connect(&settings).await {
        Ok(db) => db,
        Err(err) => {
            eprintln!("{label}: cannot connect: {err}");
            return;
        }
    };
    for fold in [true, false] {
        let mut limits = StoreLimits::for_backend(db.backend_name(), settings.max_connections);
        limits.fold = fold;
        let bus = LocalBus::new(SessionRegistry::start(
            &actix::Arbiter::current(),
            SessionCaps {
                per_user: 1,
                total: 1,
            },
        ));
        let store = StoreHandle::new(
            MessageStoreActor::new(
                db.clone(),
                bus,
                Arc::new(Metrics::new()),
                Arc::new(Outages::new(chrono::Utc::now())),
                limits,
                tokio::runtime::Handle::current(),
            )
            .start(),
        );
        for (shape, count) in [("one hot message", 1usize), ("1000 messages", 1000)] {
            let targets: Vec<Uuid> = (0..count).map(|_| Uuid::now_v7()).collect();
            for id in &targets {
                store
                    .apply(*id, Change::Create(Box::new(message(*id))))
                    .await
                    .expect("create");
            }
            let rate = run(&store, &db, &targets).await;
            println!(
                "| {label} | {shape} | {} | {rate:.0} |",
                if fold { "on" } else { "off" }
            );
        }
    }
}

fn main() {
    let system = actix::System::new();
    system.block_on(async {
        println!("| database | messages | folding | merges/s |\n|---|---|---|---|");
        common::on_each_database(16, |name, settings, _| bench(name, settings)).await;
    });
}
