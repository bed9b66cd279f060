//! Clients that never read (issue 22): pipelined requests whose answers are never taken hold
//! a connection only until `HTTP_WRITE_TIMEOUT`, and one peer address never holds more than
//! `MAX_CONNECTIONS_PER_ADDRESS`, so other clients keep being served.

use crate::common::*;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// `GET /healthz` from `source`; the status, or 0 when the connection failed.
async fn healthz_from(base: &str, source: IpAddr) -> u16 {
    forge_gateway::forge_client::install_default_provider();
    let client = reqwest::Client::builder()
        .local_address(source)
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    match client.get(format!("{base}/healthz")).send().await {
        Ok(answer) => answer.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forty_clients_that_never_read_do_not_keep_others_out() {
    let sim = start_sim(fast_sim()).await;
    let storage = Storage::fresh();
    let mut env = storage.process_env(sim.url());
    env.extend([
        ("MAX_CONNECTIONS", "40".to_owned()),
        ("HTTP_IDLE_TIMEOUT", "3s".to_owned()),
    ]);
    let gateway = GatewayProcess::start(&env).await;
    let base = gateway.base.clone();
    let addr = base.trim_start_matches("http://").to_owned();
    let idle = gateway.rss_kib();

    // 40 connections from 127.0.0.1, each pipelining 100 requests for a 47 KB document and
    // reading nothing.
    let request = "GET /asyncapi.json HTTP/1.1\r\nhost: x\r\n\r\n".repeat(100);
    let mut attackers = Vec::new();
    for _ in 0..40 {
        let Ok(mut socket) = tokio::net::TcpStream::connect(&addr).await else {
            continue;
        };
        let _ = socket.write_all(request.as_bytes()).await;
        attackers.push(socket);
    }
    let started = Instant::now();

    // Another address is served at once: one address holds at most half the connections.
    let other: IpAddr = "127.0.0.2".parse().expect("address");
    assert_eq!(
        healthz_from(&base, other).await,
        200,
        "another address was kept out"
    );

    // The same address is served again once the stalled writes time out (10 s).
    let same: IpAddr = "127.0.0.1".parse().expect("address");
    let mut peak = idle;
    loop {
        peak = peak.max(gateway.rss_kib());
        if healthz_from(&base, same).await == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "/healthz still refused after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "served again after {:?}; RSS idle {idle} KiB, peak {peak} KiB",
        started.elapsed()
    );
    assert!(peak < idle + 100 * 1024, "peak {peak} KiB, idle {idle} KiB");
    drop(attackers);
    gateway.kill().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_readers_of_a_large_image_cost_a_buffer_each_not_the_image() {
    // A 2048x2048 image of noise (16 MB, as PNGs of photos are large) read by 40 clients that
    // take one byte now and then: the gateway sends it from its file as they read.
    let side = 2048;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let noise: Vec<u8> = (0..side * side * 4)
        .map(|_| {
            // xorshift64: bytes that do not compress.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let mut png = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png, side, side);
        encoder.set_color(png::ColorType::Rgba);
        let mut writer = encoder.write_header().expect("header");
        writer.write_image_data(&noise).expect("data");
    }
    let forge = FakeForge::start(Txt2ImgAnswer::Png(png.clone())).await;
    let storage = Storage::fresh();
    let mut env = storage.process_env(forge.url.clone());
    env.push(("FORGE_MAX_ANSWER", "64MiB".to_owned()));
    let gateway = GatewayProcess::start(&env).await;
    let client = gateway.client();
    let token = client.token("alice").await;
    let (status, created) = client
        .submit(
            &token,
            serde_json::json!({"prompt": "noise", "width": 2048, "height": 2048}),
        )
        .await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    let done = client
        .wait_message(&token, &id, |m| m["status"] == "complete")
        .await;
    let whole = client
        .http
        .get(format!(
            "{}{}",
            client.base,
            done["image_url"].as_str().expect("url")
        ))
        .send()
        .await
        .expect("image")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(whole.len(), png.len(), "the image is served whole");

    let idle = gateway.rss_kib();
    let addr = gateway.base.trim_start_matches("http://").to_owned();
    let request = format!("GET /images/{id}.png HTTP/1.1\r\nhost: x\r\n\r\n");
    let mut readers = Vec::new();
    for _ in 0..40 {
        let mut socket = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        socket.write_all(request.as_bytes()).await.expect("request");
        readers.push(tokio::spawn(async move {
            let mut byte = [0u8; 1];
            for _ in 0..4 {
                let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut byte).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            socket
        }));
    }
    let mut peak = idle;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        peak = peak.max(gateway.rss_kib());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "40 slow readers of a {} byte image: RSS idle {idle} KiB, peak {peak} KiB",
        png.len()
    );
    assert!(
        peak < idle + 100 * 1024,
        "40 slow readers of a {} MB image took {} KiB",
        png.len() / 1_000_000,
        peak - idle
    );
    for reader in readers {
        drop(reader.await);
    }
    gateway.kill().await;
}
