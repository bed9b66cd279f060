//! `POST /sdapi/v1/txt2img`: picking the outcome (a generation or a fault), timing the
//! generation under the generation lock, and drawing its pictures.

use crate::action::{Action, unprocessable};
use crate::config::{Latency, SimMode};
use crate::http::{Request, Response};
use crate::params::Txt2Img;
use crate::render::render_png;
use crate::state::{Counters, JobSpec, Picture, Shared, job_timestamp};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::Rng;
use serde_json::{Map, Value, json};
use std::time::Duration;

/// Pictures bigger than this are drawn on the blocking pool, so one large request does not
/// stall the other connections served by the same worker thread.
const INLINE_PIXELS: u64 = 512 * 512;

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

/// Reads the request, picks its outcome and, in `normal` mode, generates under the lock.
pub(crate) async fn txt2img(shared: &Shared, request: &Request) -> Action {
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
            Latency::Fixed(duration) => duration,
            range => range.pick(shared.random(|rng| rng.random::<f64>())),
        },
    };
    JobSpec {
        model: params.checkpoint.clone(),
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
    let _in_hand = shared.counters.txt2img_in_hand();
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
    let model = job.model.clone();
    if params.restore_afterwards
        && let Some(previous) = &job.switched_from
    {
        shared.load(Some(previous)).await;
    }
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
        "sd_model_name": model,
        "sd_model_hash": null,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": null,
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": seeds.iter().map(|s| format!(
            "{}\nNegative prompt: {}\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}",
            params.prompt, params.negative_prompt, params.steps, params.sampler_name,
            params.cfg_scale, s, params.width, params.height, model
        )).collect::<Vec<_>>(),
        "job_timestamp": job_timestamp(std::time::SystemTime::now()),
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
