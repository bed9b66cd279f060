//! The routes: the part of the AUTOMATIC1111 API the gateway uses, plus `/sim/*` to change
//! faults while running. They decide what to answer; [`crate::exchange`] carries it out.

use crate::action::{Action, unprocessable};
use crate::http::{Request, Response};
use crate::params::json_invalid;
use crate::state::Shared;
use crate::txt2img::txt2img;
use serde_json::{Value, json};

/// Routes one request and decides what its connection must do.
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
                    "sd_model_checkpoint": crate::models::title(&shared.loaded()),
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
                &crate::models::sd_models_json(&shared.config().models),
            )),
            _ => respond(method_not_allowed()),
        },
        "/sdapi/v1/samplers" => match method {
            "GET" => respond(Response::json(200, &crate::models::samplers_json())),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_parse_like_pydantic() {
        assert_eq!(parse_bool("true"), Some(true));
        assert_eq!(parse_bool("False"), Some(false));
        assert_eq!(parse_bool("1"), Some(true));
        assert_eq!(parse_bool("maybe"), None);
    }
}
