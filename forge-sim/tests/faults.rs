//! The fault modes of txt2img over real sockets, as a client sees them: hang, error500, reset,
//! garbage, close, and the random ones of `fail_rate` with their seed.

mod common;

use common::*;
use forge_sim::{Latency, SimConfig, SimMode, SimServer};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread")]
async fn a_hang_never_answers_and_frees_the_server_when_the_client_leaves() -> TestResult {
    let server = start(SimConfig {
        mode: SimMode::Hang,
        ..instant()
    })
    .await?;
    let client = client();
    let hung = {
        let client = client.clone();
        let url = server.url();
        tokio::spawn(async move {
            client
                .post(format!("{url}/sdapi/v1/txt2img"))
                .timeout(Duration::from_millis(300))
                .json(&json!({"prompt": "stuck"}))
                .send()
                .await
        })
    };
    let view = until_job_runs(&client, &server).await?;
    assert_eq!(view["state"]["sampling_step"], 0);
    assert!(view["progress"].as_f64().is_some_and(|p| p < 0.05));
    // A wedged server does not listen to interrupts.
    client
        .post(format!("{}/sdapi/v1/interrupt", server.url()))
        .send()
        .await?;
    match hung.await? {
        Err(err) => assert!(err.is_timeout(), "{err}"),
        Ok(response) => return Err(format!("a hang answered {}", response.status()).into()),
    }

    server.set_mode(SimMode::Normal);
    let started = Instant::now();
    let response = txt2img(&client, &server, &json!({"width": 64, "height": 64})).await?;
    assert_eq!(response.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.stats().failed, 1);
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn error500_answers_forges_out_of_memory_error() -> TestResult {
    let server = start(SimConfig {
        mode: SimMode::Error500,
        latency: Latency::Fixed(Duration::from_secs(60)),
        ..SimConfig::default()
    })
    .await?;
    let client = client();
    let response = txt2img(&client, &server, &json!({})).await?;
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await?;
    assert_eq!(
        body,
        json!({"error": "OutOfMemoryError", "detail": "", "body": "", "errors": "CUDA out of memory. Tried to allocate 2.00 GiB"})
    );
    // Other routes stay healthy.
    assert_eq!(
        get_json(&client, format!("{}/internal/ping", server.url())).await?,
        json!({})
    );
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_breaks_the_connection() -> TestResult {
    let server = start(SimConfig {
        mode: SimMode::Reset,
        ..instant()
    })
    .await?;
    let client = client();
    let err = txt2img(&client, &server, &json!({"prompt": "x"}))
        .await
        .err()
        .ok_or("a reset answered")?;
    assert!(err.is_connect() || err.is_request(), "{err:?}");
    assert!(!err.is_timeout(), "{err:?}");

    // A reset, not an orderly close: the read fails instead of reaching the end.
    let mut stream = TcpStream::connect(server.addr()).await?;
    stream
        .write_all(b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        .await?;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await?;
    match read {
        Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}"),
        Ok(n) => return Err(format!("read {n} bytes instead of a reset").into()),
    }
    assert_eq!(server.stats().failed, 2);
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_is_a_200_that_is_not_json() -> TestResult {
    let server = start(SimConfig {
        mode: SimMode::Garbage,
        ..instant()
    })
    .await?;
    let client = client();
    for _ in 0..4 {
        let response = txt2img(&client, &server, &json!({})).await?;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/json");
        let bytes = response.bytes().await?;
        assert!(!bytes.is_empty());
        assert!(
            serde_json::from_slice::<Value>(&bytes).is_err(),
            "{bytes:?}"
        );
    }
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn close_cuts_the_body_short() -> TestResult {
    let server = start(SimConfig {
        mode: SimMode::Close,
        ..instant()
    })
    .await?;
    let client = client();
    let response = txt2img(&client, &server, &json!({})).await?;
    assert_eq!(response.status(), 200);
    let err = response
        .bytes()
        .await
        .err()
        .ok_or("the whole body arrived")?;
    assert!(
        err.is_body() || err.is_decode() || err.is_request(),
        "{err:?}"
    );
    server.shutdown().await;
    Ok(())
}

/// Sorts a txt2img outcome into the kind of failure the gateway sees.
async fn outcome(client: &reqwest::Client, server: &SimServer) -> &'static str {
    match txt2img(client, server, &json!({"width": 64, "height": 64})).await {
        Err(_) => "connection",
        Ok(response) if response.status() == 500 => "500",
        Ok(response) => match response.bytes().await {
            Ok(bytes) if serde_json::from_slice::<Value>(&bytes).is_ok() => "ok",
            _ => "garbage",
        },
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fail_rate_one_fails_every_request() -> TestResult {
    let server = start(SimConfig {
        fail_rate: 1.0,
        ..instant()
    })
    .await?;
    // A fresh connection per request, so a reset cannot be retried on a pooled one.
    let client = common::client_builder()
        .no_proxy()
        .timeout(PATIENCE)
        .pool_max_idle_per_host(0)
        .build()?;
    let mut kinds = std::collections::BTreeSet::new();
    for _ in 0..15 {
        let kind = outcome(&client, &server).await;
        assert_ne!(kind, "ok");
        kinds.insert(kind);
    }
    assert_eq!(
        kinds.len(),
        3,
        "the faults are picked among three: {kinds:?}"
    );
    let stats = server.stats();
    assert_eq!(
        (stats.failed, stats.completed, stats.txt2img_requests),
        (15, 0, 15)
    );
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_seed_fails_the_same_requests() -> TestResult {
    let config = SimConfig {
        fail_rate: 0.5,
        seed: 1234,
        ..instant()
    };
    let client = common::client_builder()
        .no_proxy()
        .timeout(PATIENCE)
        .pool_max_idle_per_host(0)
        .build()?;
    let mut runs = Vec::new();
    for _ in 0..2 {
        let server = start(config.clone()).await?;
        let mut kinds = Vec::new();
        for _ in 0..12 {
            kinds.push(outcome(&client, &server).await);
        }
        server.shutdown().await;
        runs.push(kinds);
    }
    assert_eq!(runs[0], runs[1]);
    assert!(
        runs[0].contains(&"ok") && runs[0].iter().any(|kind| *kind != "ok"),
        "{:?}",
        runs[0]
    );
    Ok(())
}
