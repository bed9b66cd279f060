//! The HTTP client of one Forge backend (the AUTOMATIC1111-compatible API): txt2img with a
//! deadline, progress, interrupt. How a call fails is in [`failure`], how its answer is read
//! in [`answer`], TLS to an https backend in [`tls`].

mod answer;
mod failure;
mod tls;

pub use failure::ForgeFailure;
pub use tls::{TlsRoots, install_default_provider};

use crate::domain::params::GenerationParams;
use answer::{InfoField, InfoSeed, Txt2ImgAnswer, check_png};
use base64::Engine as _;
use failure::{classify, read_answer};
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
    /// A client whose txt2img calls give up after `timeout`, whose connects give up after
    /// `connect_timeout`, trusting `roots` over https.
    pub fn new(
        backend: Backend,
        timeout: Duration,
        connect_timeout: Duration,
        roots: &TlsRoots,
    ) -> Result<ForgeClient, String> {
        install_default_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout.min(timeout))
            .pool_idle_timeout(Duration::from_secs(30))
            .tls_backend_preconfigured(roots.client_config()?)
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
            .map_err(|err| ForgeFailure::unparsable("not the expected JSON", err))?;
        let image = answer
            .images
            .as_ref()
            .and_then(|images| images.first())
            .map(|image| image.as_ref())
            .ok_or_else(|| ForgeFailure::bad_answer("no images[0] string"))?;
        let encoded = image.split_once("base64,").map_or(image, |(_, data)| data);
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|err| ForgeFailure::unparsable("images[0] is not base64", err))?;
        if png.len() > MAX_IMAGE_BYTES {
            return Err(ForgeFailure::bad_answer(format_args!(
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
            .map_err(|err| ForgeFailure::unparsable("progress", err))?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
