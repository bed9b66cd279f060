//! The routes: the part of the AUTOMATIC1111 API the gateway uses, plus `/sim/*` to change
//! faults while running.

use super::config::SimMode;
use super::http::{Request, Response};
use super::render::render_png;
use super::state::{Counters, JobSpec, Picture, Shared};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::Rng;
use serde_json::{Map, Value, json};
use std::time::Duration;

/// What the connection must do with a request.
pub(crate) enum Action {
    /// Write this answer.
    Respond(Response),
    /// Hold the generation lock and never answer, until the client leaves.
    Hang(JobSpec),
    /// Reset the connection.
    Reset,
    /// Announce this answer in full, write only its first `sent` body bytes, then close.
    Truncate { response: Response, sent: usize },
}

/// Pictures bigger than this are drawn on the blocking pool, so one large request does not
/// stall the other connections served by the same worker thread.
const INLINE_PIXELS: u64 = 512 * 512;

const MODEL: &str = "sim-model";

pub(crate) async fn handle(shared: &Shared, request: &Request) -> Action {
    let method = request.method.as_str();
    let respond = Action::Respond;
    match request.path.as_str() {
        "/sdapi/v1/txt2img" => match method {
            "POST" => txt2img(shared, request).await,
            _ => respond(method_not_allowed()),
        },
        "/sdapi/v1/progress" => match method {
            "GET" => respond(progress(shared, request)),
            _ => respond(method_not_allowed()),
        },
        "/sdapi/v1/interrupt" | "/sdapi/v1/skip" => match method {
            "POST" => {
                shared.interrupt(request.path.ends_with("/skip"));
                respond(Response::json(200, &json!({})))
            }
            _ => respond(method_not_allowed()),
        },
        "/sdapi/v1/options" => match method {
            "GET" => respond(Response::json(
                200,
                &json!({
                    "sd_model_checkpoint": MODEL,
                    "samples_format": "png",
                    "live_previews_enable": shared.config().previews,
                    "show_progress_every_n_steps": 1,
                }),
            )),
            _ => respond(method_not_allowed()),
        },
        "/sdapi/v1/sd-models" => match method {
            "GET" => respond(Response::json(
                200,
                &json!([{
                    "title": MODEL,
                    "model_name": MODEL,
                    "hash": null,
                    "sha256": null,
                    "filename": "/models/Stable-diffusion/sim-model.safetensors",
                    "config": null,
                }]),
            )),
            _ => respond(method_not_allowed()),
        },
        "/sdapi/v1/memory" => match method {
            "GET" => respond(Response::json(
                200,
                &json!({
                    "ram": {"free": 8.0e9, "used": 8.0e9, "total": 1.6e10},
                    "cuda": {"system": {"free": 2.0e9, "used": 6.0e9, "total": 8.0e9}},
                }),
            )),
            _ => respond(method_not_allowed()),
        },
        "/internal/ping" => match method {
            "GET" => respond(Response::json(200, &json!({}))),
            _ => respond(method_not_allowed()),
        },
        "/sim/config" => match method {
            "GET" => respond(config_json(shared)),
            "POST" => respond(set_config(shared, &request.body)),
            _ => respond(method_not_allowed()),
        },
        "/sim/stats" => match method {
            "GET" => respond(stats_json(shared)),
            _ => respond(method_not_allowed()),
        },
        "/sim/reset-stats" => match method {
            "POST" => {
                shared.reset_stats();
                respond(stats_json(shared))
            }
            _ => respond(method_not_allowed()),
        },
        _ => respond(Response::json(404, &json!({"detail": "Not Found"}))),
    }
}

fn method_not_allowed() -> Response {
    Response::json(405, &json!({"detail": "Method Not Allowed"}))
}

fn unprocessable(errors: Vec<Value>) -> Response {
    Response::json(422, &json!({ "detail": errors }))
}

fn config_json(shared: &Shared) -> Response {
    match serde_json::to_value(shared.config()) {
        Ok(value) => Response::json(200, &value),
        Err(err) => Response::json(500, &json!({"detail": err.to_string()})),
    }
}

fn stats_json(shared: &Shared) -> Response {
    match serde_json::to_value(shared.stats()) {
        Ok(value) => Response::json(200, &value),
        Err(err) => Response::json(500, &json!({"detail": err.to_string()})),
    }
}

fn set_config(shared: &Shared, body: &[u8]) -> Response {
    let patch: Value = match serde_json::from_slice(body) {
        Ok(patch) => patch,
        Err(err) => return unprocessable(vec![json_invalid(body, &err)]),
    };
    match shared.config().patched(&patch) {
        Ok(next) => {
            shared.set_config(next);
            config_json(shared)
        }
        Err(err) => Response::json(422, &json!({ "detail": err.to_string() })),
    }
}

fn progress(shared: &Shared, request: &Request) -> Response {
    let skip_image = match request.query_param("skip_current_image") {
        None => false,
        Some(text) => match parse_bool(text) {
            Some(skip) => skip,
            None => {
                return unprocessable(vec![json!({
                    "type": "bool_parsing",
                    "loc": ["query", "skip_current_image"],
                    "msg": "Input should be a valid boolean, unable to interpret input",
                    "input": text,
                })]);
            }
        },
    };
    let with_image = !skip_image && shared.config().previews;
    let view = shared.progress(with_image);
    Response::json(
        200,
        &json!({
            "progress": view.progress,
            "eta_relative": view.eta_relative,
            "state": {
                "skipped": view.skipped,
                "interrupted": view.interrupted,
                "stopping_generation": false,
                "job": view.job,
                "job_count": view.job_count,
                "job_timestamp": view.job_timestamp,
                "job_no": view.job_no,
                "sampling_step": view.sampling_step,
                "sampling_steps": view.sampling_steps,
            },
            "current_image": view.current_image.as_deref(),
            "textinfo": null,
        }),
    )
}

/// Pydantic's lax booleans, as FastAPI reads query parameters.
fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" | "t" | "y" => Some(true),
        "false" | "0" | "no" | "off" | "f" | "n" => Some(false),
        _ => None,
    }
}

/// The fields of a txt2img request the simulator uses, with Forge's defaults.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Txt2Img {
    pub prompt: String,
    pub negative_prompt: String,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub cfg_scale: f64,
    /// Negative: pick a random seed.
    pub seed: i64,
    pub sampler_name: String,
    pub batch_size: u32,
    pub n_iter: u32,
}

impl Txt2Img {
    /// Reads the body the way FastAPI would: invalid JSON and wrong types give FastAPI's 422
    /// error list; unknown fields are ignored. Sizes are clamped to what the simulator serves.
    pub fn parse(body: &[u8]) -> Result<(Txt2Img, Map<String, Value>), Vec<Value>> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(vec![json!({
                "type": "missing",
                "loc": ["body"],
                "msg": "Field required",
                "input": null,
            })]);
        }
        let value: Value =
            serde_json::from_slice(body).map_err(|err| vec![json_invalid(body, &err)])?;
        let Value::Object(fields) = value else {
            return Err(vec![json!({
                "type": "model_attributes_type",
                "loc": ["body"],
                "msg": "Input should be a valid dictionary or object to extract fields from",
                "input": value,
            })]);
        };
        let mut errors = Vec::new();
        let mut reader = FieldReader {
            fields: &fields,
            errors: &mut errors,
        };
        let prompt = reader.string("prompt").unwrap_or_default();
        let negative_prompt = reader.string("negative_prompt").unwrap_or_default();
        let width = reader.int("width").unwrap_or(512);
        let height = reader.int("height").unwrap_or(512);
        let steps = reader.int("steps").unwrap_or(50);
        let cfg_scale = reader.float("cfg_scale").unwrap_or(7.0);
        let seed = reader.int("seed").unwrap_or(-1);
        let sampler_name = reader.string("sampler_name");
        let sampler_index = reader.string("sampler_index");
        let batch_size = reader.int("batch_size").unwrap_or(1);
        let n_iter = reader.int("n_iter").unwrap_or(1);
        if !errors.is_empty() {
            return Err(errors);
        }
        let request = Txt2Img {
            prompt,
            negative_prompt,
            width: clamp_u32(width, 64, 2048),
            height: clamp_u32(height, 64, 2048),
            steps: clamp_u32(steps, 1, 1000),
            cfg_scale: if cfg_scale.is_finite() {
                cfg_scale
            } else {
                7.0
            },
            seed,
            sampler_name: sampler_name
                .or(sampler_index)
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| "Euler".to_owned()),
            batch_size: clamp_u32(batch_size, 1, 8),
            n_iter: clamp_u32(n_iter, 1, 8),
        };
        Ok((request, fields))
    }
}

fn clamp_u32(value: i64, low: u32, high: u32) -> u32 {
    u32::try_from(value.clamp(i64::from(low), i64::from(high))).unwrap_or(low)
}

/// FastAPI's answer to a body that is not JSON; `loc` carries the byte offset of the error.
fn json_invalid(body: &[u8], err: &serde_json::Error) -> Value {
    let offset: usize = body
        .split(|byte| *byte == b'\n')
        .take(err.line().saturating_sub(1))
        .map(|line| line.len() + 1)
        .sum::<usize>()
        + err.column().saturating_sub(1);
    json!({
        "type": "json_invalid",
        "loc": ["body", offset],
        "msg": "JSON decode error",
        "input": {},
        "ctx": {"error": err.to_string()},
    })
}

/// Reads typed fields and collects pydantic-style errors for the wrong ones. A missing field
/// or `null` means "use the default", as every Forge field is optional.
struct FieldReader<'a> {
    fields: &'a Map<String, Value>,
    errors: &'a mut Vec<Value>,
}

impl FieldReader<'_> {
    fn error(&mut self, name: &str, kind: &str, msg: &str, input: &Value) {
        self.errors.push(json!({
            "type": kind,
            "loc": ["body", name],
            "msg": msg,
            "input": input,
        }));
    }

    fn present(&self, name: &str) -> Option<&Value> {
        self.fields.get(name).filter(|value| !value.is_null())
    }

    fn string(&mut self, name: &str) -> Option<String> {
        let value = self.present(name)?.clone();
        match value {
            Value::String(text) => Some(text),
            other => {
                self.error(
                    name,
                    "string_type",
                    "Input should be a valid string",
                    &other,
                );
                None
            }
        }
    }

    /// Integers as pydantic's lax mode takes them: numbers with no fraction, numeric strings.
    fn int(&mut self, name: &str) -> Option<i64> {
        let value = self.present(name)?.clone();
        let parsed = match &value {
            Value::Number(number) => number.as_i64().or_else(|| {
                number
                    .as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                    .map(|f| f as i64)
            }),
            Value::String(text) => text.trim().parse::<i64>().ok(),
            _ => None,
        };
        if parsed.is_none() {
            let (kind, msg) = match &value {
                Value::Number(_) => (
                    "int_from_float",
                    "Input should be a valid integer, got a number with a fractional part",
                ),
                Value::String(_) => (
                    "int_parsing",
                    "Input should be a valid integer, unable to parse string as an integer",
                ),
                _ => ("int_type", "Input should be a valid integer"),
            };
            self.error(name, kind, msg, &value);
        }
        parsed
    }

    fn float(&mut self, name: &str) -> Option<f64> {
        let value = self.present(name)?.clone();
        let parsed = match &value {
            Value::Number(number) => number.as_f64(),
            Value::String(text) => text.trim().parse::<f64>().ok(),
            _ => None,
        };
        if parsed.is_none() {
            let (kind, msg) = match &value {
                Value::String(_) => (
                    "float_parsing",
                    "Input should be a valid number, unable to parse string as a number",
                ),
                _ => ("float_type", "Input should be a valid number"),
            };
            self.error(name, kind, msg, &value);
        }
        parsed
    }
}

/// The outcome chosen for one txt2img.
fn choose_mode(shared: &Shared) -> SimMode {
    let config = shared.config();
    match config.mode {
        SimMode::Normal if config.fail_rate > 0.0 => shared.random(|rng| {
            if rng.random::<f64>() < config.fail_rate {
                [SimMode::Error500, SimMode::Reset, SimMode::Garbage][rng.random_range(0..3)]
            } else {
                SimMode::Normal
            }
        }),
        mode => mode,
    }
}

async fn txt2img(shared: &Shared, request: &Request) -> Action {
    Counters::bump(&shared.counters.txt2img_requests);
    let (params, given) = match Txt2Img::parse(&request.body) {
        Ok(parsed) => parsed,
        Err(errors) => return Action::Respond(unprocessable(errors)),
    };
    let mode = choose_mode(shared);
    if mode != SimMode::Normal {
        Counters::bump(&shared.counters.failed);
    }
    match mode {
        SimMode::Normal => Action::Respond(generate(shared, params, given).await),
        SimMode::Hang => {
            let seed = resolve_seed(shared, params.seed);
            Action::Hang(job_spec(shared, &params, seed, true))
        }
        SimMode::Error500 => Action::Respond(Response::json(
            500,
            &json!({
                "error": "OutOfMemoryError",
                "detail": "",
                "body": "",
                "errors": "CUDA out of memory. Tried to allocate 2.00 GiB",
            }),
        )),
        SimMode::Reset => Action::Reset,
        SimMode::Garbage => {
            let body: &[u8] = if shared.random(|rng| rng.random_bool(0.5)) {
                b"<html><body><h1>502</h1>Internal proxy error</body></html>"
            } else {
                b"{\"images\": [\"iVBORw0KGgoAAAANSUhEUgAA"
            };
            Action::Respond(Response::raw(200, body))
        }
        SimMode::Close => {
            let response = Response::json(
                200,
                &json!({
                    "images": [BASE64.encode(render_png(64, 64, 0, &params.prompt))],
                    "parameters": given,
                    "info": "{}",
                }),
            );
            let sent = response.body.len() / 2;
            Action::Truncate { response, sent }
        }
    }
}

fn resolve_seed(shared: &Shared, seed: i64) -> u64 {
    u64::try_from(seed).unwrap_or_else(|_| shared.random_seed())
}

/// How long a generation of these parameters takes under the current settings.
fn job_spec(shared: &Shared, params: &Txt2Img, seed: u64, hung: bool) -> JobSpec {
    let config = shared.config();
    let duration = match config.steps_per_second {
        Some(rate) if rate > 0.0 && rate.is_finite() => {
            let secs = f64::from(params.steps) * f64::from(params.n_iter) / rate;
            Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
        }
        _ => match config.latency {
            super::Latency::Fixed(duration) => duration,
            range => range.pick(shared.random(|rng| rng.random::<f64>())),
        },
    };
    JobSpec {
        duration,
        steps: params.steps,
        batches: params.n_iter,
        picture: Picture {
            width: params.width,
            height: params.height,
            seed,
            prompt: params.prompt.clone(),
        },
        hung,
    }
}

async fn generate(shared: &Shared, params: Txt2Img, given: Map<String, Value>) -> Response {
    let seed = resolve_seed(shared, params.seed);
    let spec = job_spec(shared, &params, seed, false);
    let duration = spec.duration;
    let job = shared.begin(spec).await;
    if !duration.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(duration) => {}
            () = job.stopped() => {}
        }
    }
    let stopped = job.was_stopped();
    drop(job);
    if stopped {
        Counters::bump(&shared.counters.interrupted);
    } else {
        Counters::bump(&shared.counters.completed);
    }

    let count = params.batch_size * params.n_iter;
    let seeds: Vec<u64> = (0..u64::from(count))
        .map(|i| seed.wrapping_add(i))
        .collect();
    let images = match draw(&params, &seeds).await {
        Ok(images) => images,
        Err(message) => {
            return Response::json(
                500,
                &json!({"error": "RuntimeError", "detail": "", "body": "", "errors": message}),
            );
        }
    };
    let info = json!({
        "prompt": params.prompt,
        "all_prompts": vec![&params.prompt; seeds.len()],
        "negative_prompt": params.negative_prompt,
        "all_negative_prompts": vec![&params.negative_prompt; seeds.len()],
        "seed": seed,
        "all_seeds": seeds,
        "subseed": seed,
        "all_subseeds": seeds,
        "subseed_strength": 0,
        "width": params.width,
        "height": params.height,
        "sampler_name": params.sampler_name,
        "cfg_scale": params.cfg_scale,
        "steps": params.steps,
        "batch_size": params.batch_size,
        "restore_faces": false,
        "sd_model_name": MODEL,
        "sd_model_hash": null,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": null,
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": seeds.iter().map(|s| format!(
            "{}\nNegative prompt: {}\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}",
            params.prompt, params.negative_prompt, params.steps, params.sampler_name,
            params.cfg_scale, s, params.width, params.height, MODEL
        )).collect::<Vec<_>>(),
        "job_timestamp": super::state::job_timestamp(std::time::SystemTime::now()),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": false,
        "version": "forge-sim",
    });
    Response::json(
        200,
        &json!({
            "images": images,
            "parameters": given,
            "info": info.to_string(),
        }),
    )
}

/// Draws and encodes the pictures, off the async workers when they are large.
async fn draw(params: &Txt2Img, seeds: &[u64]) -> Result<Vec<String>, String> {
    let (width, height) = (params.width, params.height);
    let pixels = u64::from(width) * u64::from(height) * seeds.len() as u64;
    let work = {
        let prompt = params.prompt.clone();
        let seeds = seeds.to_vec();
        move || -> Vec<String> {
            seeds
                .iter()
                .map(|seed| BASE64.encode(render_png(width, height, *seed, &prompt)))
                .collect()
        }
    };
    if pixels <= INLINE_PIXELS {
        Ok(work())
    } else {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|err| format!("rendering failed: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Txt2Img, Vec<Value>> {
        Txt2Img::parse(body.as_bytes()).map(|(params, _)| params)
    }

    #[test]
    fn an_empty_object_takes_forge_defaults() {
        let params = parse("{}").expect("valid");
        assert_eq!(
            params,
            Txt2Img {
                prompt: String::new(),
                negative_prompt: String::new(),
                width: 512,
                height: 512,
                steps: 50,
                cfg_scale: 7.0,
                seed: -1,
                sampler_name: "Euler".into(),
                batch_size: 1,
                n_iter: 1,
            }
        );
    }

    #[test]
    fn fields_are_read_and_unknown_ones_ignored() {
        let params = parse(
            r#"{"prompt":"a cat","negative_prompt":"dogs","width":768,"height":"320","steps":20.0,
                "cfg_scale":"5.5","seed":42,"sampler_name":"DPM++ 2M","eta":0.3,"s_churn":0,
                "hr_scale":2,"sampler_index":"Euler a","styles":[],"override_settings":{"a":1},
                "batch_size":null}"#,
        )
        .expect("valid");
        assert_eq!(params.prompt, "a cat");
        assert_eq!(params.negative_prompt, "dogs");
        assert_eq!((params.width, params.height), (768, 320));
        assert_eq!(params.steps, 20);
        assert_eq!(params.cfg_scale, 5.5);
        assert_eq!(params.seed, 42);
        assert_eq!(params.sampler_name, "DPM++ 2M");
        assert_eq!(params.batch_size, 1);
    }

    #[test]
    fn the_legacy_sampler_index_is_a_fallback() {
        assert_eq!(
            parse(r#"{"sampler_index":"Euler a"}"#)
                .expect("valid")
                .sampler_name,
            "Euler a"
        );
    }

    #[test]
    fn sizes_are_clamped() {
        let params = parse(r#"{"width":1,"height":100000,"steps":0,"n_iter":99}"#).expect("valid");
        assert_eq!((params.width, params.height), (64, 2048));
        assert_eq!(params.steps, 1);
        assert_eq!(params.n_iter, 8);
    }

    #[test]
    fn invalid_json_is_a_fastapi_422() {
        let errors = parse(r#"{"prompt": "#).expect_err("invalid");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0]["type"], "json_invalid");
        assert_eq!(errors[0]["loc"][0], "body");
        let errors = parse("").expect_err("empty");
        assert_eq!(errors[0]["type"], "missing");
        let errors = parse("[1]").expect_err("not an object");
        assert_eq!(errors[0]["type"], "model_attributes_type");
        let errors = parse("\u{0}\u{1}").expect_err("binary");
        assert_eq!(errors[0]["type"], "json_invalid");
    }

    #[test]
    fn wrong_types_are_all_reported() {
        let errors = parse(r#"{"width":"wide","steps":2.5,"prompt":5,"cfg_scale":[],"seed":true}"#)
            .expect_err("invalid");
        let fields: Vec<&str> = errors
            .iter()
            .filter_map(|error| error["loc"][1].as_str())
            .collect();
        assert_eq!(fields, ["prompt", "width", "steps", "cfg_scale", "seed"]);
        assert_eq!(errors[1]["type"], "int_parsing");
        assert_eq!(errors[2]["type"], "int_from_float");
    }

    #[test]
    fn booleans_parse_like_pydantic() {
        assert_eq!(parse_bool("true"), Some(true));
        assert_eq!(parse_bool("False"), Some(false));
        assert_eq!(parse_bool("1"), Some(true));
        assert_eq!(parse_bool("maybe"), None);
    }
}
