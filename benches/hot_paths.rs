//! Criterion benchmarks of the pure hot paths: `cargo bench --bench hot_paths` (about 40 s).
//!
//! - merge: a small client patch into a ~2 KiB data object (`merge_client_data`);
//! - change: `change::apply` of a client patch and of a progress report to a `Message`;
//! - queue book: taking the head of 100,000 queued jobs; inserting at the tail (and removing it
//!   again); the positions of one user's 20 jobs in a queue of 100,000;
//! - position feed: one tick telling 10,000 connected users their positions in a queue of
//!   100,000 after a pop (the cost of live positions per tick);
//! - events: `JobEvent::frame_body` (serialized once per event), positions frames, `with_seq`
//!   (once per session), and a 20-message snapshot;
//! - outbox: a session's `push`/`push_keyed` and the writer's `next_batch`.

use chrono::Utc;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use forge_gateway::domain::change::{self, Change};
use forge_gateway::domain::eta::EtaModel;
use forge_gateway::domain::event::{
    JobEvent, JobEventKind, positions_frame_body, snapshot_frame_body, with_seq,
};
use forge_gateway::domain::merge::merge_client_data;
use forge_gateway::domain::message::{ChatMessage, LivePosition};
use forge_gateway::domain::params::{CreateRequest, GenerationParams};
use forge_gateway::domain::position_feed::{JobPosition, PositionFeed};
use forge_gateway::domain::queue_book::{QueueBook, QueueChange, QueuedJob};
use forge_gateway::domain::status::JobStatus;
use forge_gateway::http::ws::outbox::{Coalesce, Frame, Outbox};
use serde_json::{Value, json};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// A client data object of about 2 KiB: what a chat frontend might keep on a message.
fn data_2k() -> Value {
    let mut object = serde_json::Map::new();
    for i in 0..24 {
        object.insert(
            format!("field_{i:02}"),
            json!({"label": format!("value number {i}"), "n": i, "flags": [true, false], "note": "x".repeat(20)}),
        );
    }
    let data = Value::Object(object);
    let len = serde_json::to_vec(&data).map(|v| v.len()).unwrap_or(0);
    assert!((1500..3000).contains(&len), "data is {len} bytes");
    data
}

fn message(status: JobStatus, data: Value) -> ChatMessage {
    let request = CreateRequest {
        prompt: "a cat in a hat, watercolour".into(),
        params: GenerationParams::default(),
        conversation_id: Some("c-42".into()),
        model: None,
        data,
    };
    let mut message = ChatMessage::queued(Uuid::now_v7(), "alice", request, Utc::now());
    message.status = status;
    message.queue_position = Some(3);
    message.ticket = Some(7);
    message.backend = Some("http://127.0.0.1:7861".into());
    message
}

/// `jobs` queued jobs of `users` users, round robin.
fn book(jobs: usize, users: usize) -> QueueBook {
    let users: Vec<Arc<str>> = (0..users).map(|u| Arc::from(format!("user-{u}"))).collect();
    let mut book = QueueBook::new();
    for ticket in 0..jobs as i64 {
        book.insert(QueuedJob {
            id: Uuid::from_u128(ticket as u128 + 1),
            user_id: users[ticket as usize % users.len()].clone(),
            ticket,
            model: None,
        });
    }
    book
}

fn merge(c: &mut Criterion) {
    let mut group = c.benchmark_group("merge");
    let mut data = data_2k();
    let patch = json!({"p3": {"n": 17}});
    group.bench_function("small patch into 2 KiB data", |b| {
        b.iter(|| merge_client_data(black_box(&mut data), black_box(&patch)))
    });
    group.finish();
}

fn apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("change::apply");
    let now = Utc::now();
    let patch = Change::ClientPatch {
        owner: "alice".into(),
        patch: json!({"p3": {"n": 17}}),
        client_ref: None,
    };
    let mut current = Some(message(JobStatus::Complete, data_2k()));
    group.bench_function("client patch (2 KiB data)", |b| {
        b.iter(|| change::apply(black_box(&mut current), black_box(&patch), now))
    });
    let progress = Change::Progress {
        progress: 40,
        eta_s: Some(3),
    };
    let mut current = Some(message(JobStatus::Processing, data_2k()));
    group.bench_function("progress", |b| {
        b.iter(|| change::apply(black_box(&mut current), black_box(&progress), now))
    });
    group.finish();
}

fn queue_book(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue_book");
    group.sample_size(30);
    let full = book(100_000, 5_000);
    group.bench_function("take the head of 100k", |b| {
        b.iter_batched(
            || full.clone(),
            |mut book| {
                let head = book.pop_front();
                (book, head)
            },
            BatchSize::LargeInput,
        )
    });
    let tail = QueuedJob {
        id: Uuid::from_u128(u128::MAX),
        user_id: Arc::from("user-tail"),
        ticket: 100_000,
        model: None,
    };
    // On a long-lived book (a fresh clone has no spare capacity, so its first insert would
    // measure a reallocation): insert at the tail, then take the job out again.
    let mut book = full.clone();
    group.bench_function("apply Added at the tail of 100k (+ remove again)", |b| {
        b.iter(|| {
            let changed = book.apply(QueueChange::Added(black_box(tail.clone())));
            book.remove(&tail.id);
            changed
        })
    });
    group.bench_function("positions of one user's 20 jobs in 100k", |b| {
        b.iter(|| black_box(&book).positions_of(black_box("user-42")))
    });
    group.finish();
}

fn position_feed(c: &mut Criterion) {
    let mut group = c.benchmark_group("position_feed");
    group.sample_size(20);
    // 100,000 queued jobs of 10,000 users (10 each), all of them connected here.
    let mut mirror = book(100_000, 10_000);
    let mut feed = PositionFeed::new(500);
    for user in 0..10_000 {
        feed.watch(Arc::from(format!("user-{user}")));
    }
    let mut eta = EtaModel::new(4);
    eta.record(2.0);
    let now = std::time::Instant::now();
    feed.tick(&mirror, &eta, now, Duration::ZERO);
    group.bench_function("tick after a pop: 10k users, 100k queued", |b| {
        b.iter(|| {
            mirror.pop_front();
            feed.changed();
            black_box(feed.tick(&mirror, &eta, now, Duration::ZERO).len())
        })
    });
    // One user owns 20,000 of 100,000 queued jobs (MAX_PENDING_PER_USER raised): frames of at
    // most 500 positions (the default) against frames of all 20,000 (the cap lifted, as before).
    for per_frame in [500, 1_000_000] {
        let mut mirror = book(80_000, 10_000);
        for ticket in 80_000..100_000i64 {
            mirror.insert(QueuedJob {
                id: Uuid::from_u128(ticket as u128 + 1),
                user_id: Arc::from("heavy"),
                ticket,
                model: None,
            });
        }
        let mut feed = PositionFeed::new(per_frame);
        feed.watch(Arc::from("heavy"));
        feed.tick(&mirror, &eta, now, Duration::ZERO);
        let name =
            format!("tick after a pop: one user with 20k of 100k queued, {per_frame} a frame");
        let mut next_ticket = 100_000i64;
        group.bench_function(name, |b| {
            b.iter(|| {
                // The head goes to the tail: the depth stays, every position moves.
                if let Some(mut job) = mirror.pop_front() {
                    job.ticket = next_ticket;
                    next_ticket += 1;
                    mirror.insert(job);
                }
                feed.changed();
                black_box(feed.tick(&mirror, &eta, now, Duration::ZERO).len())
            })
        });
    }
    group.finish();
}

fn events(c: &mut Criterion) {
    let mut group = c.benchmark_group("event");
    let complete = JobEvent {
        user_id: "alice".into(),
        message_id: Uuid::now_v7(),
        version: Some(4),
        kind: JobEventKind::Complete {
            image_url: "/images/0193a5c4-1f1e-7c2b-9f55-1d2c3b4a5e6f.png".into(),
            placeholder: false,
            notice: None,
            seed: None,
            model: None,
        },
    };
    let updated = JobEvent {
        version: Some(9),
        kind: JobEventKind::Updated {
            data: data_2k(),
            client_ref: None,
        },
        ..complete.clone()
    };
    group.bench_function("frame_body job.complete", |b| {
        b.iter(|| black_box(&complete).frame_body())
    });
    let one = [JobPosition {
        id: Uuid::now_v7(),
        queue_position: 1234,
        eta_s: Some(56),
    }];
    let twenty: Vec<JobPosition> = (0..20)
        .map(|i| JobPosition {
            id: Uuid::from_u128(i + 1),
            queue_position: 1000 + i as u32,
            eta_s: Some(60),
        })
        .collect();
    group.bench_function("job.position frame", |b| {
        b.iter(|| positions_frame_body(black_box(&one)))
    });
    group.bench_function("job.positions frame of 20 jobs", |b| {
        b.iter(|| positions_frame_body(black_box(&twenty)))
    });
    group.bench_function("frame_body message.updated (2 KiB data)", |b| {
        b.iter(|| black_box(&updated).frame_body())
    });
    let body = complete.frame_body();
    group.bench_function("with_seq job.complete", |b| {
        b.iter(|| with_seq(black_box(&body), black_box(123_456)))
    });
    let views: Vec<_> = (0..20)
        .map(|i| {
            message(JobStatus::Queued, json!({"k": i})).view(
                LivePosition::Queued {
                    position: i + 1,
                    eta_s: Some(10),
                },
                Utc::now(),
            )
        })
        .collect();
    group.bench_function("snapshot of 20 pending messages", |b| {
        b.iter(|| snapshot_frame_body(black_box(&views)))
    });
    group.finish();
}

fn outbox(c: &mut Criterion) {
    let mut group = c.benchmark_group("outbox");
    let body: Arc<str> = Arc::from(
        JobEvent {
            user_id: "alice".into(),
            message_id: Uuid::now_v7(),
            version: Some(2),
            kind: JobEventKind::Processing { progress: 0 },
        }
        .frame_body(),
    );
    let outbox = Outbox::new(256, 512 * 1024);
    group.bench_function("push + next_batch (1 frame)", |b| {
        b.iter(|| {
            outbox.push(Frame::Text(body.clone()));
            futures::executor::block_on(outbox.next_batch())
        })
    });
    group.bench_function(
        "8 events + 32 coalescing positions frames + next_batch",
        |b| {
            b.iter(|| {
                for _ in 0..8 {
                    outbox.push(Frame::Text(body.clone()));
                    for _ in 0..4 {
                        outbox.push_keyed(Frame::Text(body.clone()), Some(Coalesce::Positions));
                    }
                }
                let batch = futures::executor::block_on(outbox.next_batch());
                assert_eq!(batch.len(), 9);
                batch
            })
        },
    );
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = hot_paths;
    config = config();
    targets = merge, apply, queue_book, position_feed, events, outbox
}
criterion_main!(hot_paths);
