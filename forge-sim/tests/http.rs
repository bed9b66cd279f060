//! The simulator's HTTP itself: malformed requests refused while it keeps serving,
//! keep-alive and pipelining, and a shutdown that does not wait for hung requests.

mod common;

use common::*;
use forge_sim::{SimConfig, SimMode, SimServer};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes on a fresh connection and reads until the server closes it.
async fn raw_exchange(
    server: &SimServer,
    bytes: &[u8],
) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
    let mut stream = TcpStream::connect(server.addr()).await?;
    stream.write_all(bytes).await?;
    let mut answer = Vec::new();
    match tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer)).await {
        Ok(Ok(_)) | Ok(Err(_)) => Ok(answer),
        Err(_) => Err("the server kept the connection open".into()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_http_is_refused_and_the_server_keeps_serving() -> TestResult {
    let server = start(instant()).await?;
    for junk in [
        &b"\x00\x01\x02\xff garbage\r\n\r\n"[..],
        b"GET / HTTP/7.0\r\n\r\n",
        b"POST /sdapi/v1/txt2img HTTP/1.1\r\nContent-Length: nine\r\n\r\n",
        b"POST /sdapi/v1/txt2img HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        let answer = raw_exchange(&server, junk).await?;
        let text = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || text.starts_with("HTTP/1.1 400") || text.starts_with("HTTP/1.1 411"),
            "{text}"
        );
    }
    let answer = raw_exchange(&server, &vec![b'A'; 100 * 1024]).await?;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || text.starts_with("HTTP/1.1 4"),
        "{text}"
    );

    let response = txt2img(&client(), &server, &json!({"width": 64, "height": 64})).await?;
    assert_eq!(response.status(), 200);
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_serves_several_requests_until_connection_close() -> TestResult {
    let server = start(instant()).await?;
    let answer = raw_exchange(
        &server,
        b"GET /internal/ping HTTP/1.1\r\nHost: x\r\n\r\nGET /sdapi/v1/options?a=b HTTP/1.1\r\nHost: x\r\n\r\nGET /internal/ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await?;
    let text = String::from_utf8_lossy(&answer);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 3, "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert!(text.to_ascii_lowercase().contains("content-length: 2\r\n"));
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_closes_hung_and_idle_connections_promptly() -> TestResult {
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
                .json(&json!({}))
                .send()
                .await
        })
    };
    until_job_runs(&client, &server).await?;
    let mut idle = TcpStream::connect(server.addr()).await?;
    let addr = server.addr();
    tokio::time::timeout(PATIENCE, server.shutdown())
        .await
        .map_err(|_| "shutdown hung")?;
    let answer = hung.await?;
    assert!(answer.is_err(), "a hung request answered: {answer:?}");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(PATIENCE, idle.read(&mut buf)).await?;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
    Ok(())
}
