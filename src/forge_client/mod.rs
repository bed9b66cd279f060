//! The HTTP client of one Forge backend (the AUTOMATIC1111-compatible API): txt2img with a
//! deadline, progress, interrupt, and what it offers ([`models`]). How a call fails is in [`failure`], how its answer is read
//! in [`answer`], TLS to an https backend in [`tls`].

mod answer;
mod failure;
mod models;
mod tls;

pub use failure::ForgeFailure;
pub use models::{MAX_LIST_ANSWER, MAX_LISTED};
pub use tls::{TlsRoots, install_default_provider};

use crate::domain::params::GenerationParams;
use answer::{read_answer, read_progress, read_txt2img};
use bytes::Bytes;
use failure::classify;
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
    pub png: Bytes,
    /// The seed Forge used.
    pub seed: Option<i64>,
    /// The checkpoint Forge says it used (`info.sd_model_name`), when it said.
    pub model: Option<String>,
}

/// Forge's progress report (global to the server).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    /// 0.0..1.0.
    pub fraction: f64,
    /// Seconds left, by Forge's estimate (`None` when it gave none that can be true).
    pub eta_seconds: Option<f64>,
    /// Current sampling step.
    pub step: u64,
    /// Steps of the running job.
    pub steps: u64,
    /// The live preview PNG, when asked for and available.
    pub preview_png: Option<Bytes>,
}

/// A client of one backend.
#[derive(Clone)]
pub struct ForgeClient {
    http: reqwest::Client,
    backend: Backend,
    timeout: Duration,
    max_answer: usize,
}

/// The most a progress answer without a preview, or an interrupt's, may hold.
const MAX_SMALL_ANSWER: usize = 64 * 1024;

/// A txt2img answer up to this size is read where it arrives; a larger one on the blocking
/// pool (a 512×512 PNG in base64 is about this size and decodes in about a millisecond).
const INLINE_ANSWER_BYTES: usize = 256 * 1024;

impl ForgeClient {
    /// A client whose txt2img calls give up after `timeout`, whose connects give up after
    /// `connect_timeout`, trusting `roots` over https, and which reads at most `max_answer`
    /// bytes of an answer (`FORGE_MAX_ANSWER`).
    pub fn new(
        backend: Backend,
        timeout: Duration,
        connect_timeout: Duration,
        max_answer: usize,
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
            max_answer,
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

    /// `POST /sdapi/v1/txt2img` with the call's deadline; with `model`, on that checkpoint
    /// (`override_settings`, left loaded afterwards), and an answer made with another one
    /// fails ([`ForgeFailure::WrongModel`]).
    pub async fn txt2img(
        &self,
        prompt: &str,
        params: &GenerationParams,
        model: Option<&str>,
    ) -> Result<Generated, ForgeFailure> {
        let mut body = json!({
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
        if let Some(model) = model {
            body["override_settings"] = json!({"sd_model_checkpoint": model});
            body["override_settings_restore_afterwards"] = json!(false);
        }
        let answer = self
            .request(reqwest::Method::POST, "/sdapi/v1/txt2img")
            .timeout(self.timeout)
            .json(&body)
            .send()
            .await
            .map_err(classify)?;
        let body = read_answer(answer, self.max_answer).await?;
        // Decoding and checking a large image takes milliseconds of CPU: off the threads that
        // serve requests. A small one is read in place: handing each of many small answers to
        // the blocking pool cost more than reading it (+180 MiB of RSS and -5% throughput at
        // 128 jobs at once, docs/benchmarks.md).
        let (width, height) = (params.width, params.height);
        let (png, seed, used) = if body.len() <= INLINE_ANSWER_BYTES {
            read_txt2img(&body, width, height)?
        } else {
            tokio::task::spawn_blocking(move || read_txt2img(&body, width, height))
                .await
                .map_err(|err| ForgeFailure::unparsable("reading the answer failed", err))??
        };
        if let (Some(asked), Some(got)) = (model, &used)
            && asked != got
        {
            return Err(ForgeFailure::WrongModel {
                asked: asked.to_owned(),
                got: got.clone(),
            });
        }
        Ok(Generated {
            png,
            seed,
            model: used,
        })
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
        let limit = if with_preview {
            self.max_answer
        } else {
            MAX_SMALL_ANSWER
        };
        let bytes = self
            .fetch(reqwest::Method::GET, path, deadline, limit)
            .await?;
        if !with_preview {
            return read_progress(&bytes);
        }
        // Checking a preview decodes a PNG: off the threads that serve requests.
        tokio::task::spawn_blocking(move || read_progress(&bytes))
            .await
            .map_err(|err| ForgeFailure::unparsable("reading the progress failed", err))?
    }

    /// `POST /sdapi/v1/interrupt`: ends whatever generation the server runs now.
    pub async fn interrupt(&self) -> Result<(), ForgeFailure> {
        let path = "/sdapi/v1/interrupt";
        self.fetch(
            reqwest::Method::POST,
            path,
            Duration::from_secs(5),
            MAX_SMALL_ANSWER,
        )
        .await
        .map(|_| ())
    }

    /// A bodiless call within `deadline`, its answer read up to `limit` bytes.
    async fn fetch(
        &self,
        method: reqwest::Method,
        path: &str,
        deadline: Duration,
        limit: usize,
    ) -> Result<Bytes, ForgeFailure> {
        let answer = self
            .request(method, path)
            .timeout(deadline)
            .send()
            .await
            .map_err(classify)?;
        read_answer(answer, limit).await
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
