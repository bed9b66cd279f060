//! The HTTP client of one Forge backend (the AUTOMATIC1111-compatible API): txt2img with a
//! deadline, progress, interrupt, and the classification of every way a call can fail.

use crate::domain::breaker::CallOutcome;
use crate::domain::catalogue::JobFailure;
use crate::domain::params::GenerationParams;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;
use url::Url;

/// One Forge backend: where it is and how to authenticate.
#[derive(Clone, Debug)]
pub struct Backend {
    /// Its name in logs, metrics and the `backend` column: the URL without credentials.
    pub name: String,
    base: Url,
    auth: Option<(String, String)>,
}

impl Backend {
    /// A backend from its base URL; `http://user:pass@host` sets HTTP basic auth.
    pub fn from_url(url: &Url) -> Backend {
        let mut base = url.clone();
        let auth = (!url.username().is_empty()).then(|| {
            (
                percent_decode(url.username()),
                percent_decode(url.password().unwrap_or_default()),
            )
        });
        let _ = base.set_username("");
        let _ = base.set_password(None);
        let name = base.as_str().trim_end_matches('/').to_owned();
        Backend { name, base, auth }
    }

    fn endpoint(&self, path_and_query: &str) -> Url {
        let mut url = self.base.clone();
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let joined = format!(
            "{}/{}",
            url.path().trim_end_matches('/'),
            path.trim_start_matches('/')
        );
        url.set_path(&joined);
        url.set_query((!query.is_empty()).then_some(query));
        url
    }
}

fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={text}").as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_else(|| text.to_owned())
}

/// How a call to Forge failed. The technical detail goes to the log, never to the user.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ForgeFailure {
    /// Refused, reset, closed early, DNS.
    #[error("connection failed: {0}")]
    Connection(String),
    /// The call ran past its deadline.
    #[error("timed out")]
    Timeout,
    /// Forge answered an HTTP error.
    #[error("HTTP {status}: {body}")]
    Status {
        /// The status code.
        status: u16,
        /// The start of the answer's body.
        body: String,
    },
    /// The answer is not the expected JSON, or holds no decodable PNG.
    #[error("unexpected answer: {0}")]
    BadAnswer(String),
}

impl ForgeFailure {
    /// The user-facing failure (code and exact message).
    pub fn job_failure(&self, forge_timeout: Duration) -> JobFailure {
        match self {
            ForgeFailure::Connection(_) => JobFailure::ForgeConnection,
            ForgeFailure::Timeout => JobFailure::ForgeTimeout {
                timeout: forge_timeout,
            },
            ForgeFailure::Status {
                status: 401 | 403, ..
            } => JobFailure::ForgeAuth,
            ForgeFailure::Status { status, .. } if (400..500).contains(status) => {
                JobFailure::ForgeRejected { status: *status }
            }
            ForgeFailure::Status { .. } | ForgeFailure::BadAnswer(_) => JobFailure::Unknown,
        }
    }

    /// What the failure says about the backend's health (R8.1: connection errors, timeouts
    /// and 5xx count; a refused request or an odd answer does not).
    pub fn breaker_outcome(&self) -> CallOutcome {
        match self {
            ForgeFailure::Connection(_) | ForgeFailure::Timeout => CallOutcome::Failure,
            ForgeFailure::Status { status, .. } if *status >= 500 => CallOutcome::Failure,
            _ => CallOutcome::Neutral,
        }
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ForgeFailure::Connection(_) => "connection",
            ForgeFailure::Timeout => "timeout",
            ForgeFailure::Status { status, .. } if *status >= 500 => "http_5xx",
            ForgeFailure::Status { .. } => "http_4xx",
            ForgeFailure::BadAnswer(_) => "bad_answer",
        }
    }
}

/// A generated image.
#[derive(Clone, Debug)]
pub struct Generated {
    /// The PNG file.
    pub png: Vec<u8>,
    /// The seed Forge used.
    pub seed: Option<i64>,
}

/// Forge's progress report (global to the server).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    /// 0.0..1.0.
    pub fraction: f64,
    /// Seconds left, by Forge's estimate.
    pub eta_seconds: Option<f64>,
    /// Current sampling step.
    pub step: u64,
    /// Steps of the running job.
    pub steps: u64,
    /// The live preview PNG, when asked for and available.
    pub preview_png: Option<Vec<u8>>,
}

#[derive(Deserialize)]
struct ProgressAnswer {
    #[serde(default)]
    progress: f64,
    #[serde(default)]
    eta_relative: Option<f64>,
    #[serde(default)]
    state: ProgressState,
    #[serde(default)]
    current_image: Option<String>,
}

#[derive(Deserialize, Default)]
struct ProgressState {
    #[serde(default)]
    sampling_step: u64,
    #[serde(default)]
    sampling_steps: u64,
}

/// A client of one backend.
#[derive(Clone)]
pub struct ForgeClient {
    http: reqwest::Client,
    backend: Backend,
    timeout: Duration,
}

/// Largest PNG we accept from Forge.
const MAX_IMAGE_BYTES: usize = 64 * 1024 * 1024;

impl ForgeClient {
    /// A client whose txt2img calls give up after `timeout`.
    pub fn new(backend: Backend, timeout: Duration) -> Result<ForgeClient, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10).min(timeout))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|err| format!("cannot build the HTTP client: {err}"))?;
        Ok(ForgeClient {
            http,
            backend,
            timeout,
        })
    }

    /// The backend's name.
    pub fn name(&self) -> &str {
        &self.backend.name
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, self.backend.endpoint(path));
        match &self.backend.auth {
            Some((user, pass)) => builder.basic_auth(user, Some(pass)),
            None => builder,
        }
    }

    /// `POST /sdapi/v1/txt2img` with the call's deadline.
    pub async fn txt2img(
        &self,
        prompt: &str,
        params: &GenerationParams,
    ) -> Result<Generated, ForgeFailure> {
        let body = json!({
            "prompt": prompt,
            "negative_prompt": params.negative_prompt,
            "width": params.width,
            "height": params.height,
            "steps": params.steps,
            "cfg_scale": params.cfg_scale,
            "sampler_name": params.sampler_name,
            "seed": params.seed,
            "batch_size": 1,
            "n_iter": 1,
            "send_images": true,
            "save_images": false,
        });
        let answer = self
            .request(reqwest::Method::POST, "/sdapi/v1/txt2img")
            .timeout(self.timeout)
            .json(&body)
            .send()
            .await
            .map_err(classify)?;
        let bytes = read_answer(answer).await?;
        // Typed, borrowing the base64 text: a `Value` tree of Forge's answer (its `info` and
        // `parameters` included) cost more than the rest of reading it.
        let answer: Txt2ImgAnswer = serde_json::from_slice(&bytes)
            .map_err(|err| ForgeFailure::BadAnswer(format!("not the expected JSON: {err}")))?;
        let image = answer
            .images
            .as_ref()
            .and_then(|images| images.first())
            .map(|image| image.as_ref())
            .ok_or_else(|| ForgeFailure::BadAnswer("no images[0] string".into()))?;
        let encoded = image.split_once("base64,").map_or(image, |(_, data)| data);
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|err| ForgeFailure::BadAnswer(format!("images[0] is not base64: {err}")))?;
        if png.len() > MAX_IMAGE_BYTES {
            return Err(ForgeFailure::BadAnswer(format!(
                "image of {} bytes",
                png.len()
            )));
        }
        check_png(&png, params.width, params.height)?;
        let seed = match answer.info {
            Some(InfoField::Text(info)) => serde_json::from_str::<InfoSeed>(&info)
                .ok()
                .and_then(|info| info.seed),
            _ => None,
        };
        Ok(Generated { png, seed })
    }

    /// `GET /sdapi/v1/progress`, with the live preview when `with_preview`.
    pub async fn progress(
        &self,
        with_preview: bool,
        deadline: Duration,
    ) -> Result<Progress, ForgeFailure> {
        let path = if with_preview {
            "/sdapi/v1/progress?skip_current_image=false"
        } else {
            "/sdapi/v1/progress?skip_current_image=true"
        };
        let answer = self
            .request(reqwest::Method::GET, path)
            .timeout(deadline)
            .send()
            .await
            .map_err(classify)?;
        let bytes = read_answer(answer).await?;
        let answer: ProgressAnswer = serde_json::from_slice(&bytes)
            .map_err(|err| ForgeFailure::BadAnswer(format!("progress: {err}")))?;
        let preview_png = answer
            .current_image
            .filter(|image| !image.is_empty())
            .and_then(|image| {
                base64::engine::general_purpose::STANDARD
                    .decode(image.trim())
                    .ok()
            })
            .filter(|png| png.starts_with(b"\x89PNG"));
        Ok(Progress {
            fraction: answer.progress.clamp(0.0, 1.0),
            eta_seconds: answer
                .eta_relative
                .filter(|eta| eta.is_finite() && *eta >= 0.0),
            step: answer.state.sampling_step,
            steps: answer.state.sampling_steps,
            preview_png,
        })
    }

    /// `POST /sdapi/v1/interrupt`: ends whatever generation the server runs now.
    pub async fn interrupt(&self) -> Result<(), ForgeFailure> {
        let answer = self
            .request(reqwest::Method::POST, "/sdapi/v1/interrupt")
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(classify)?;
        read_answer(answer).await.map(|_| ())
    }
}

async fn read_answer(answer: reqwest::Response) -> Result<Vec<u8>, ForgeFailure> {
    let status = answer.status();
    // We decode JSON ourselves, so any error while reading the body (reqwest calls some of
    // them "decode" errors) means the connection broke mid-answer.
    let bytes = answer.bytes().await.map_err(|err| match classify(err) {
        ForgeFailure::BadAnswer(detail) => ForgeFailure::Connection(detail),
        other => other,
    })?;
    if !status.is_success() {
        let body = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
        return Err(ForgeFailure::Status {
            status: status.as_u16(),
            body,
        });
    }
    Ok(bytes.to_vec())
}

fn classify(err: reqwest::Error) -> ForgeFailure {
    if err.is_timeout() {
        ForgeFailure::Timeout
    } else if err.is_connect() || err.is_request() || err.is_body() {
        ForgeFailure::Connection(error_chain(&err))
    } else if err.is_decode() {
        ForgeFailure::BadAnswer(error_chain(&err))
    } else {
        ForgeFailure::Connection(error_chain(&err))
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The part of a `txt2img` answer the gateway reads.
#[derive(serde::Deserialize)]
struct Txt2ImgAnswer<'a> {
    #[serde(borrow)]
    images: Option<Vec<std::borrow::Cow<'a, str>>>,
    #[serde(borrow, default)]
    info: Option<InfoField<'a>>,
}

/// `info` is a string in every Forge seen; anything else is ignored rather than failing the job.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum InfoField<'a> {
    Text(#[serde(borrow)] std::borrow::Cow<'a, str>),
    Other(serde::de::IgnoredAny),
}

/// The seed inside `info` (itself a JSON document in a string).
#[derive(serde::Deserialize)]
struct InfoSeed {
    seed: Option<i64>,
}

/// Decodes the PNG fully: the answer must hold a real image of the requested size.
fn check_png(png: &[u8], width: u32, height: u32) -> Result<(), ForgeFailure> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder
        .read_info()
        .map_err(|err| ForgeFailure::BadAnswer(format!("not a PNG: {err}")))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| ForgeFailure::BadAnswer("PNG too large".into()))?;
    let mut pixels = vec![0; size];
    let frame = reader
        .next_frame(&mut pixels)
        .map_err(|err| ForgeFailure::BadAnswer(format!("PNG does not decode: {err}")))?;
    if (frame.width, frame.height) != (width, height) {
        // Forge may round sizes; a different size is still an image, so keep it but say so.
        tracing::debug!(want = ?(width, height), got = ?(frame.width, frame.height), "Forge answered another size");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_txt2img_answer_is_read_for_its_image_and_seed_only() {
        let answer: Txt2ImgAnswer = serde_json::from_str(
            r#"{"images":["aGk="],"parameters":{"x":[1,2]},"info":"{\"seed\": 42, \"all_seeds\": [42]}"}"#,
        )
        .unwrap();
        assert_eq!(
            answer
                .images
                .as_deref()
                .and_then(|i| i.first())
                .map(|i| i.as_ref()),
            Some("aGk=")
        );
        assert!(
            matches!(&answer.info, Some(InfoField::Text(info)) if serde_json::from_str::<InfoSeed>(info).unwrap().seed == Some(42))
        );
        // An `info` that is not a string is ignored, not a failure.
        let answer: Txt2ImgAnswer =
            serde_json::from_str(r#"{"images":["aGk="],"info":{"seed":1}}"#).unwrap();
        assert!(matches!(answer.info, Some(InfoField::Other(_))));
        // No images, or images that are not strings: not the expected answer.
        let answer: Txt2ImgAnswer = serde_json::from_str(r#"{"info":"x"}"#).unwrap();
        assert!(answer.images.is_none());
        assert!(serde_json::from_str::<Txt2ImgAnswer>(r#"{"images":[1]}"#).is_err());
        assert!(serde_json::from_str::<Txt2ImgAnswer>("<html>").is_err());
    }

    #[test]
    fn credentials_become_basic_auth_and_leave_the_name() {
        let backend = Backend::from_url(&Url::parse("http://us%40r:p%3Ass@gpu1:7860/").unwrap());
        assert_eq!(backend.name, "http://gpu1:7860");
        assert_eq!(backend.auth, Some(("us@r".into(), "p:ss".into())));
        assert_eq!(
            backend.endpoint("/sdapi/v1/txt2img").as_str(),
            "http://gpu1:7860/sdapi/v1/txt2img"
        );
        let prefixed = Backend::from_url(&Url::parse("http://proxy/forge/").unwrap());
        assert_eq!(
            prefixed.endpoint("/sdapi/v1/progress").as_str(),
            "http://proxy/forge/sdapi/v1/progress"
        );
    }

    #[test]
    fn failures_map_to_codes_and_breaker_outcomes() {
        let timeout = Duration::from_secs(180);
        let cases = [
            (
                ForgeFailure::Connection("refused".into()),
                "forge_connection",
                CallOutcome::Failure,
            ),
            (ForgeFailure::Timeout, "forge_timeout", CallOutcome::Failure),
            (
                ForgeFailure::Status {
                    status: 500,
                    body: String::new(),
                },
                "unknown",
                CallOutcome::Failure,
            ),
            (
                ForgeFailure::Status {
                    status: 503,
                    body: String::new(),
                },
                "unknown",
                CallOutcome::Failure,
            ),
            (
                ForgeFailure::Status {
                    status: 422,
                    body: String::new(),
                },
                "forge_rejected",
                CallOutcome::Neutral,
            ),
            (
                ForgeFailure::Status {
                    status: 401,
                    body: String::new(),
                },
                "forge_auth",
                CallOutcome::Neutral,
            ),
            (
                ForgeFailure::BadAnswer("x".into()),
                "unknown",
                CallOutcome::Neutral,
            ),
        ];
        for (failure, code, outcome) in cases {
            assert_eq!(failure.job_failure(timeout).code(), code, "{failure}");
            assert_eq!(failure.breaker_outcome(), outcome, "{failure}");
        }
        assert_eq!(
            ForgeFailure::Timeout.job_failure(timeout).message(),
            "Forge API zaman aşımına uğradı (180s). Lütfen tekrar deneyin."
        );
    }

    #[test]
    fn a_png_must_decode() {
        assert!(check_png(b"\x89PNG\r\n\x1a\nnot really", 8, 8).is_err());
        assert!(check_png(b"GIF89a", 8, 8).is_err());
    }
}
