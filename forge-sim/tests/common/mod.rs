//! What the simulator's integration tests share: starting a server, a client that never
//! waits forever, the requests they send and the checks they repeat.

#![allow(dead_code)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use forge_sim::{Latency, SimConfig, SimServer};
use serde_json::Value;
use std::future::Future;
use std::time::{Duration, Instant};

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Longest any single wait in these tests may take before it counts as a failure.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// Settings whose generations take no time.
pub fn instant() -> SimConfig {
    SimConfig {
        latency: Latency::Fixed(Duration::ZERO),
        ..SimConfig::default()
    }
}

/// A simulator on a free loopback port.
pub async fn start(config: SimConfig) -> Result<SimServer, std::io::Error> {
    SimServer::start(
        "127.0.0.1:0".parse().map_err(std::io::Error::other)?,
        config,
    )
    .await
}

/// A client that ignores proxy variables of the environment and never waits forever.
/// A reqwest client builder. Built in one workspace with the gateway, reqwest has the
/// gateway's `rustls-no-provider` feature, so a TLS provider must be installed first.
pub fn client_builder() -> reqwest::ClientBuilder {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

pub fn client() -> reqwest::Client {
    client_builder()
        .no_proxy()
        .timeout(PATIENCE)
        .build()
        .expect("a plain HTTP client builds")
}

pub async fn txt2img(
    client: &reqwest::Client,
    server: &SimServer,
    body: &Value,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("{}/sdapi/v1/txt2img", server.url()))
        .json(body)
        .send()
        .await
}

pub async fn get_json(client: &reqwest::Client, url: String) -> Result<Value, reqwest::Error> {
    client.get(url).send().await?.json().await
}

pub async fn progress(
    client: &reqwest::Client,
    server: &SimServer,
    skip_image: bool,
) -> Result<Value, reqwest::Error> {
    get_json(
        client,
        format!(
            "{}/sdapi/v1/progress?skip_current_image={skip_image}",
            server.url()
        ),
    )
    .await
}

/// Width and height of a base64 PNG.
pub fn png_size(b64: &str) -> Result<(u32, u32), Box<dyn std::error::Error + Send + Sync>> {
    let bytes = BASE64.decode(b64)?;
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size().ok_or("no buffer size")?];
    let info = reader.next_frame(&mut buf)?;
    Ok((info.width, info.height))
}

/// Polls `check` until it yields a value or `PATIENCE` runs out.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until some generation holds the server's lock.
pub async fn until_job_runs(client: &reqwest::Client, server: &SimServer) -> Result<Value, String> {
    eventually("a running job", || async {
        let view = progress(client, server, true).await.ok()?;
        (view["state"]["job"] != "").then_some(view)
    })
    .await
}
