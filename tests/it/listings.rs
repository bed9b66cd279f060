//! Listings bounded in bytes, not only in rows (issue 22): a page ends at about
//! `LIST_MAX_BYTES` and `next` continues it, and four concurrent largest listings of messages
//! with 64 KiB of data each cost the gateway a bounded multiple of what it serves.

use crate::common::*;
use forge_sim::{Latency, SimConfig};
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Client data of about 64 KiB: an array of 32,700 zeros (the largest `data` allowed).
fn zeros() -> Value {
    json!({ "zeros": vec![0; 32_700] })
}

/// Follows `next` from the first page; every page's ids, in order.
async fn pages(client: &Client, token: &str, first: &str) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut path = first.to_owned();
    loop {
        let (status, page) = client.get(token, &path).await;
        assert_eq!(status, 200, "{page}");
        let ids: Vec<String> = page["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["id"].as_str().expect("id").to_owned())
            .collect();
        pages.push(ids);
        match page["next"].as_str() {
            Some(next) => path = format!("{first}&before={next}"),
            None => return pages,
        }
        assert!(pages.len() < 100, "next never ends");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_ends_at_its_byte_bound_and_next_continues_it() {
    let (app, _storage) = TestApp::spawn_with(fast_sim(), &["--list-max-bytes", "200KiB"]).await;
    let token = app.token("alice").await;
    let mut created = Vec::new();
    for n in 0..10 {
        let mut body = small_prompt(&format!("big {n}"));
        body["data"] = zeros();
        let (status, view) = app.submit(&token, body).await;
        assert_eq!(status, 202, "{view}");
        created.push(view["id"].as_str().expect("id").to_owned());
    }
    created.reverse();
    let pages = pages(&app, &token, "/api/v1/messages?limit=200").await;
    assert!(
        pages.len() >= 3,
        "10 × 64 KiB in pages of about 200 KiB: {pages:?}"
    );
    assert!(pages.iter().all(|page| !page.is_empty() && page.len() <= 4));
    assert_eq!(pages.concat(), created, "every message once, newest first");
    // The row limit ends a page too, and `next` is null only on the last one.
    let pages = pages_of_three(&app, &token).await;
    assert_eq!(pages.concat(), created);
    app.stop().await;
}

async fn pages_of_three(app: &TestApp, token: &str) -> Vec<Vec<String>> {
    let (app_client, token) = (app.client.clone(), token.to_owned());
    // Three small pages' worth at a time: the byte bound (200 KiB) holds 3 here.
    pages(&app_client, &token, "/api/v1/messages?limit=3").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_concurrent_largest_listings_cost_a_bounded_multiple_of_what_they_serve() {
    let sim = start_sim(SimConfig {
        latency: Latency::Fixed(Duration::ZERO),
        ..fast_sim()
    })
    .await;
    let storage = Storage::fresh();
    let mut env = storage.process_env(sim.url());
    env.extend([
        ("MAX_PENDING_PER_USER", "400".to_owned()),
        ("FORGE_SLOTS", "8".to_owned()),
    ]);
    let gateway = GatewayProcess::start(&env).await;
    let client = gateway.client();
    let (owner, other) = (client.token("owner").await, client.token("other").await);
    let submits = (0..360).map(|n| {
        let (client, owner) = (client.clone(), owner.clone());
        async move {
            let mut body = small_prompt(&format!("big {n}"));
            body["data"] = zeros();
            client.submit(&owner, body).await
        }
    });
    let mut answers = futures::stream::iter(submits).buffer_unordered(16);
    let mut last: Option<String> = None;
    while let Some((status, view)) = answers.next().await {
        assert_eq!(status, 202, "{view}");
        last = view["id"].as_str().map(str::to_owned);
    }
    let last = last.expect("one");
    client
        .wait_message_within(Duration::from_secs(120), &owner, &last, |m| {
            m["status"] == "complete"
        })
        .await;
    let idle = gateway.rss_kib();

    let listing = |client: Client, token: String| async move {
        let (mut bytes, mut count) = (0usize, 0usize);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            let answer = client
                .request(reqwest::Method::GET, "/api/v1/messages?limit=200", &token)
                .send()
                .await
                .expect("list");
            assert_eq!(answer.status(), 200);
            bytes = bytes.max(answer.bytes().await.expect("body").len());
            count += 1;
        }
        (bytes, count)
    };
    let listings: Vec<_> = (0..4)
        .map(|_| tokio::spawn(listing(client.clone(), owner.clone())))
        .collect();
    let (mut peak, mut slowest) = (idle, Duration::ZERO);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        peak = peak.max(gateway.rss_kib());
        let asked = Instant::now();
        let (status, _) = client.get(&other, "/api/v1/messages?limit=1").await;
        assert_eq!(status, 200);
        slowest = slowest.max(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut largest = 0;
    for listing in listings {
        largest = largest.max(listing.await.expect("listing").0);
    }
    let in_flight = 4 * largest as u64 / 1024;
    println!(
        "largest listing {largest} bytes; RSS idle {idle} KiB, peak {peak} KiB; another user's slowest read {slowest:?}"
    );
    assert!(
        largest < 4 * 1024 * 1024,
        "a page of {largest} bytes: LIST_MAX_BYTES (2 MiB) bounds it"
    );
    assert!(
        peak - idle < 10 * in_flight,
        "RSS grew {} KiB for {in_flight} KiB in flight",
        peak - idle
    );
    // The tight figure (p99 under 500 ms) is loadgen's, on a release build; this debug build
    // shares two cores with the rest of the suite. Listings serialized on the threads that
    // serve everyone made another user wait many seconds here.
    assert!(
        slowest < Duration::from_millis(2500),
        "another user waited {slowest:?}"
    );
    gateway.kill().await;
    sim.shutdown().await;
}

/// Waits until the clock is past the millisecond it shows now (ids carry milliseconds).
fn next_millisecond() {
    let now = chrono::Utc::now().timestamp_millis();
    while chrono::Utc::now().timestamp_millis() == now {
        std::hint::spin_loop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_whose_cursor_message_is_gone_goes_on_from_where_it_was() {
    // A cursor whose message was deleted meanwhile (retention), or that is not the user's, is
    // still a point in time: the older messages follow, none is lost.
    let slow = SimConfig {
        latency: Latency::Fixed(Duration::from_secs(30)),
        ..fast_sim()
    };
    let (app, _storage) = TestApp::spawn_with(slow, &[]).await;
    let token = app.token("alice").await;
    let bob = app.token("bob").await;
    let older = [
        app.submit_id(&token, "a").await,
        app.submit_id(&token, "b").await,
    ];
    next_millisecond();
    let gone = uuid::Uuid::now_v7();
    next_millisecond();
    let bobs = app.submit_id(&bob, "bob's").await;
    next_millisecond();
    for prompt in ["c", "d"] {
        app.submit_id(&token, prompt).await;
    }
    for cursor in [gone.to_string(), bobs] {
        let (status, page) = app
            .get(
                &token,
                &format!("/api/v1/messages?limit=10&before={cursor}"),
            )
            .await;
        assert_eq!(status, 200, "{page}");
        let ids: Vec<&str> = page["messages"]
            .as_array()
            .expect("list")
            .iter()
            .map(|m| m["id"].as_str().expect("id"))
            .collect();
        assert_eq!(ids, [older[1].as_str(), older[0].as_str()], "{cursor}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn any_cursor_of_messages_made_at_once_skips_nothing_and_repeats_nothing() {
    // 120 submits at once from two users, many in the same millisecond: every id, the user's
    // own or the other's, is a cursor after which exactly the user's older messages follow.
    let slow = SimConfig {
        latency: Latency::Fixed(Duration::from_secs(30)),
        ..fast_sim()
    };
    let (app, _storage) = TestApp::spawn_with(slow, &["--max-pending-per-user", "200"]).await;
    let alice = app.token("alice").await;
    let bob = app.token("bob").await;
    let submitted = futures::future::join_all((0..120).map(|n| {
        let token = if n % 2 == 0 { &alice } else { &bob };
        let app = &app;
        async move { app.submit_id(token, &format!("at once {n}")).await }
    }))
    .await;
    let ids_of = |page: &Value| -> Vec<String> {
        page["messages"]
            .as_array()
            .expect("list")
            .iter()
            .map(|m| m["id"].as_str().expect("id").to_owned())
            .collect()
    };
    let (_, all) = app.get(&alice, "/api/v1/messages?limit=200").await;
    let listed = ids_of(&all);
    assert_eq!(listed.len(), 60, "{all}");
    let mut newest_first = listed.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(listed, newest_first, "newest first");
    for cursor in &submitted {
        let (status, page) = app
            .get(
                &alice,
                &format!("/api/v1/messages?limit=200&before={cursor}"),
            )
            .await;
        assert_eq!(status, 200, "{page}");
        let expected: Vec<String> = listed
            .iter()
            .filter(|id| id.as_str() < cursor.as_str())
            .cloned()
            .collect();
        assert_eq!(ids_of(&page), expected, "after {cursor}");
    }
    app.stop().await;
}
