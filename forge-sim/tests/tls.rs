//! The simulator over HTTPS: a client that trusts only the simulator's self-signed certificate
//! completes a txt2img, one that trusts another certificate is refused, the faults still
//! reach the client, and the binary's `--tls-cert`/`--tls-key` serve the same way.

mod common;

use bytes::Bytes;
use common::{PATIENCE, instant};
use forge_sim::{SimConfig, SimMode, SimServer, TlsIdentity};
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// A certificate for `localhost` and 127.0.0.1, with its key.
struct Certificate {
    identity: TlsIdentity,
    der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

fn self_signed() -> Result<Certificate, Error> {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    let cert_pem = generated.cert.pem();
    let key_pem = generated.signing_key.serialize_pem();
    Ok(Certificate {
        identity: TlsIdentity::from_pem(cert_pem.clone(), key_pem.clone())?,
        der: generated.cert.der().clone(),
        cert_pem,
        key_pem,
    })
}

async fn start_https(certificate: &Certificate, config: SimConfig) -> Result<SimServer, Error> {
    let config = SimConfig {
        tls: Some(certificate.identity.clone()),
        ..config
    };
    Ok(SimServer::start("127.0.0.1:0".parse()?, config).await?)
}

/// A TLS client that trusts `root` and nothing else (no system roots).
fn trusting(root: &CertificateDer<'static>) -> Result<TlsConnector, Error> {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone())?;
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// One `POST` of `body` to `path` on the `https://host:port` base URL `url`, checking the
/// server's certificate against `server_name`. Gives the status and the whole body.
async fn post(
    connector: &TlsConnector,
    url: &str,
    server_name: &str,
    path: &str,
    body: &Value,
) -> Result<(StatusCode, Result<Bytes, hyper::Error>), Error> {
    let authority = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("not an https URL: {url}"))?;
    let tcp = TcpStream::connect(authority).await?;
    let name = ServerName::try_from(server_name.to_owned())?;
    let tls = tokio::time::timeout(PATIENCE, connector.connect(name, tcp)).await??;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::post(path)
        .header("host", authority)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body)?)))?;
    let response = tokio::time::timeout(PATIENCE, sender.send_request(request)).await??;
    let status = response.status();
    let body = tokio::time::timeout(PATIENCE, response.into_body().collect())
        .await?
        .map(|collected| collected.to_bytes());
    Ok((status, body))
}

/// Checks a txt2img answer: 200 with one picture of the requested size.
fn assert_picture(status: StatusCode, body: &[u8]) -> Result<(), Error> {
    assert_eq!(status, StatusCode::OK);
    let body: Value = serde_json::from_slice(body)?;
    let info: Value = serde_json::from_str(body["info"].as_str().ok_or("no info")?)?;
    assert_eq!(
        (info["width"].as_u64(), info["height"].as_u64()),
        (Some(96), Some(64))
    );
    assert_eq!(body["images"].as_array().map(Vec::len), Some(1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn txt2img_over_https_with_a_client_that_trusts_only_the_simulator() -> Result<(), Error> {
    let certificate = self_signed()?;
    let server = start_https(&certificate, instant()).await?;
    let url = server.url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    assert_eq!(server.config().tls.as_ref(), Some(&certificate.identity));

    let client = trusting(&certificate.der)?;
    let request = json!({"prompt": "over tls", "width": 96, "height": 64});
    for name in ["127.0.0.1", "localhost"] {
        let (status, body) = post(&client, &url, name, "/sdapi/v1/txt2img", &request).await?;
        assert_picture(status, &body?)?;
    }
    // Neither the admin endpoint nor set_config shows or drops the identity.
    let (status, body) = post(&client, &url, "localhost", "/sim/config", &json!({})).await?;
    assert_eq!(status, StatusCode::OK);
    let shown: Value = serde_json::from_slice(&body?)?;
    assert!(shown.get("tls").is_none(), "{shown}");
    assert!(server.config().tls.is_some());
    server.set_config(instant());
    assert_eq!(server.config().tls.as_ref(), Some(&certificate.identity));
    assert_eq!(server.stats().completed, 2);
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_trusts_another_certificate_is_refused() -> Result<(), Error> {
    let (served, other) = (self_signed()?, self_signed()?);
    let server = start_https(&served, instant()).await?;
    let url = server.url();
    let request = json!({"width": 96, "height": 64});
    let stranger = trusting(&other.der)?;
    let refused = post(&stranger, &url, "localhost", "/sdapi/v1/txt2img", &request).await;
    let err = refused
        .err()
        .ok_or("a client trusting another certificate was answered")?;
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    // Plain HTTP on the HTTPS port gets no HTTP answer either.
    let plain = common::client_builder()
        .no_proxy()
        .timeout(PATIENCE)
        .build()?;
    let http_url = url.replacen("https://", "http://", 1);
    assert!(
        plain
            .get(format!("{http_url}/internal/ping"))
            .send()
            .await
            .is_err()
    );

    // Neither broke the server.
    let (status, body) = post(
        &trusting(&served.der)?,
        &url,
        "localhost",
        "/sdapi/v1/txt2img",
        &request,
    )
    .await?;
    assert_picture(status, &body?)?;
    assert_eq!(server.stats().txt2img_requests, 1);
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_and_close_reach_an_https_client() -> Result<(), Error> {
    let certificate = self_signed()?;
    let server = start_https(
        &certificate,
        SimConfig {
            mode: SimMode::Reset,
            ..instant()
        },
    )
    .await?;
    let client = trusting(&certificate.der)?;
    let url = server.url();
    let reset = post(&client, &url, "localhost", "/sdapi/v1/txt2img", &json!({})).await;
    assert!(reset.is_err(), "a reset answered: {:?}", reset.ok());

    server.set_mode(SimMode::Close);
    let (status, body) = post(&client, &url, "localhost", "/sdapi/v1/txt2img", &json!({})).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_err(), "the whole body arrived");
    assert_eq!(server.stats().failed, 2);
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_serves_https_with_tls_cert_and_tls_key() -> Result<(), Error> {
    let certificate = self_signed()?;
    let dir = tempfile::tempdir()?;
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, &certificate.cert_pem)?;
    std::fs::write(&key_file, &certificate.key_pem)?;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_forge-sim"))
        .args(["--bind", "127.0.0.1:0", "--latency", "0s"])
        .arg("--tls-cert")
        .arg(&cert_file)
        .env("SIM_TLS_KEY", &key_file)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let url = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(at) = line.find("listening on ") {
                let rest = &line[at + "listening on ".len()..];
                return Ok::<_, Error>(rest.split_whitespace().next().unwrap_or(rest).to_owned());
            }
        }
        Err("forge-sim ended without a 'listening on' line".into())
    })
    .await??;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    let request = json!({"width": 96, "height": 64});
    let client = trusting(&certificate.der)?;
    let (status, body) = post(&client, &url, "localhost", "/sdapi/v1/txt2img", &request).await?;
    assert_picture(status, &body?)?;
    child.kill().await?;

    // A key that does not belong to the certificate is refused before listening.
    let other = self_signed()?;
    std::fs::write(&key_file, &other.key_pem)?;
    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_forge-sim"))
        .args(["--bind", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert_file)
        .arg("--tls-key")
        .arg(&key_file)
        .output()
        .await?;
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--tls-cert/--tls-key"), "{stderr}");

    // Each of the two flags needs the other.
    let alone = tokio::process::Command::new(env!("CARGO_BIN_EXE_forge-sim"))
        .arg("--tls-cert")
        .arg(&cert_file)
        .env_remove("SIM_TLS_KEY")
        .output()
        .await?;
    assert_eq!(alone.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&alone.stderr);
    assert!(stderr.contains("--tls-key"), "{stderr}");
    Ok(())
}
