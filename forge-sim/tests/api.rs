//! The simulator over real sockets: the AUTOMATIC1111 routes the gateway uses, one generation
//! at a time, interrupts, and the `/sim/*` admin routes.

mod common;

use common::*;
use forge_sim::{Latency, SimConfig, SimMode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn a_normal_txt2img_returns_a_png_of_the_requested_size() -> TestResult {
    let server = start(instant()).await?;
    let client = client();
    let response = txt2img(
        &client,
        &server,
        &json!({"prompt": "a lighthouse", "negative_prompt": "fog", "width": 320, "height": 192,
                "seed": 42, "steps": 12, "cfg_scale": 5.5, "sampler_name": "DPM++ 2M"}),
    )
    .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "Forge answers JSON"
    );
    let body: Value = response.json().await?;
    let images = body["images"].as_array().ok_or("no images")?;
    assert_eq!(images.len(), 1);
    assert_eq!(
        png_size(images[0].as_str().ok_or("not a string")?)?,
        (320, 192)
    );
    assert_eq!(body["parameters"]["prompt"], "a lighthouse");
    let info: Value = serde_json::from_str(body["info"].as_str().ok_or("info is not a string")?)?;
    assert_eq!(info["seed"], 42);
    assert_eq!(info["all_seeds"], json!([42]));
    assert_eq!(
        (info["width"].clone(), info["height"].clone()),
        (json!(320), json!(192))
    );
    assert_eq!(info["steps"], 12);
    assert_eq!(info["cfg_scale"], 5.5);
    assert_eq!(info["sampler_name"], "DPM++ 2M");
    assert_eq!(info["negative_prompt"], "fog");
    assert_eq!(info["sd_model_name"], "sim-model");

    // The same seed and prompt draw the same picture; seed -1 draws a fresh seed.
    let again: Value = txt2img(
        &client,
        &server,
        &json!({"prompt": "a lighthouse", "width": 320, "height": 192, "seed": 42}),
    )
    .await?
    .json()
    .await?;
    assert_eq!(again["images"][0], body["images"][0]);
    let random: Value = txt2img(&client, &server, &json!({"seed": -1}))
        .await?
        .json()
        .await?;
    let info: Value = serde_json::from_str(random["info"].as_str().ok_or("no info")?)?;
    assert!(
        info["seed"].as_u64().is_some_and(|seed| seed < 1 << 32),
        "{info}"
    );
    assert_eq!(
        png_size(random["images"][0].as_str().ok_or("no image")?)?,
        (512, 512)
    );
    assert_eq!(server.stats().completed, 3);
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_fields_are_ignored_and_wrong_types_are_422() -> TestResult {
    let server = start(instant()).await?;
    let client = client();
    // What the webuiapi client sends.
    let webuiapi = json!({
        "enable_hr": false, "denoising_strength": 0.7, "firstphase_width": 0, "firstphase_height": 0,
        "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 0, "hr_resize_x": 0,
        "hr_resize_y": 0, "prompt": "cat", "styles": [], "seed": 7, "subseed": -1,
        "subseed_strength": 0.0, "seed_resize_from_h": 0, "seed_resize_from_w": 0,
        "sampler_name": null, "batch_size": 1, "n_iter": 1, "steps": 4, "cfg_scale": 7.0,
        "width": 96, "height": 64, "restore_faces": false, "tiling": false, "do_not_save_samples": false,
        "do_not_save_grid": false, "negative_prompt": "", "eta": 1.0, "s_churn": 0, "s_tmax": 0,
        "s_tmin": 0, "s_noise": 1, "override_settings": {}, "override_settings_restore_afterwards": true,
        "script_args": [], "sampler_index": "Euler a", "script_name": null, "send_images": true,
        "save_images": false, "alwayson_scripts": {}
    });
    let response = txt2img(&client, &server, &webuiapi).await?;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await?;
    assert_eq!(
        png_size(body["images"][0].as_str().ok_or("no image")?)?,
        (96, 64)
    );
    assert_eq!(
        body["parameters"]["s_churn"], 0,
        "the request is echoed as given"
    );
    let info: Value = serde_json::from_str(body["info"].as_str().ok_or("no info")?)?;
    assert_eq!(info["sampler_name"], "Euler a");

    let response = txt2img(&client, &server, &json!({"width": "wide", "steps": 2.5})).await?;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await?;
    assert_eq!(body["detail"][0]["loc"], json!(["body", "width"]));
    assert_eq!(body["detail"][1]["loc"], json!(["body", "steps"]));

    let response = client
        .post(format!("{}/sdapi/v1/txt2img", server.url()))
        .header("content-type", "application/json")
        .body("{\"prompt\": ")
        .send()
        .await?;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await?;
    assert_eq!(body["detail"][0]["type"], "json_invalid");
    assert_eq!(body["detail"][0]["loc"][0], "body");
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_advances_while_a_job_runs_and_drops_to_zero_after() -> TestResult {
    let server = start(SimConfig {
        steps_per_second: Some(20.0),
        ..SimConfig::default()
    })
    .await?;
    let client = client();
    let idle = progress(&client, &server, false).await?;
    assert_eq!(idle["progress"], 0.0);
    assert_eq!(idle["state"]["job"], "");
    assert_eq!(idle["current_image"], Value::Null);

    // 20 steps at 20 steps per second: about one second.
    let started = Instant::now();
    let job = {
        let client = client.clone();
        let url = server.url();
        tokio::spawn(async move {
            client
                .post(format!("{url}/sdapi/v1/txt2img"))
                .json(&json!({"prompt": "slow", "steps": 20, "width": 128, "height": 96}))
                .send()
                .await
        })
    };
    until_job_runs(&client, &server).await?;
    let first = progress(&client, &server, false).await?;
    assert_eq!(first["state"]["sampling_steps"], 20);
    let preview = first["current_image"]
        .as_str()
        .ok_or("no preview with previews on")?;
    let (w, h) = png_size(preview)?;
    assert!(w <= 64 && h <= 64 && w > h, "preview {w}x{h}");

    let mut steps_seen = Vec::new();
    while !job.is_finished() {
        let view = progress(&client, &server, true).await?;
        if view["state"]["job"] == "" {
            continue; // ended between the two checks
        }
        let fraction = view["progress"]
            .as_f64()
            .ok_or("progress is not a number")?;
        assert!(fraction > 0.0 && fraction < 1.0, "progress {fraction}");
        assert_eq!(
            view["current_image"],
            Value::Null,
            "skip_current_image=true"
        );
        assert!(
            view["eta_relative"]
                .as_f64()
                .is_some_and(|eta| (0.0..=1.5).contains(&eta))
        );
        steps_seen.push(view["state"]["sampling_step"].as_u64().ok_or("no step")?);
        if started.elapsed() > PATIENCE {
            return Err("the job does not end".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = job.await??;
    assert_eq!(response.status(), 200);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert!(
        steps_seen.windows(2).all(|pair| pair[0] <= pair[1]),
        "{steps_seen:?}"
    );
    let (first_step, last_step) = (steps_seen.first().copied(), steps_seen.last().copied());
    assert!(
        last_step > first_step && last_step < Some(20),
        "{steps_seen:?}"
    );

    let after = progress(&client, &server, false).await?;
    assert_eq!(after["progress"], 0.0);
    assert_eq!(after["state"]["job"], "");
    assert_eq!(after["state"]["sampling_step"], 0);
    assert_eq!(after["current_image"], Value::Null);
    assert!(server.stats().progress_requests >= 3);
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_txt2img_calls_run_one_at_a_time() -> TestResult {
    let server = start(SimConfig {
        latency: Latency::Fixed(Duration::from_millis(250)),
        ..SimConfig::default()
    })
    .await?;
    let client = client();
    let started = Instant::now();
    let body = json!({"width": 64, "height": 64});
    let (a, b, c) = tokio::join!(
        txt2img(&client, &server, &body),
        txt2img(&client, &server, &body),
        txt2img(&client, &server, &body)
    );
    for response in [a?, b?, c?] {
        assert_eq!(response.status(), 200);
    }
    assert!(
        started.elapsed() >= Duration::from_millis(750),
        "three generations of 250 ms overlapped: {:?}",
        started.elapsed()
    );
    let stats = server.stats();
    assert_eq!(stats.max_concurrent_generations, 1);
    assert_eq!(stats.completed, 3);
    assert_eq!(stats.txt2img_requests, 3);
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn interrupt_ends_a_long_job_early_with_an_image() -> TestResult {
    let server = start(SimConfig {
        latency: Latency::Fixed(Duration::from_secs(60)),
        ..SimConfig::default()
    })
    .await?;
    let client = client();
    let started = Instant::now();
    let job = {
        let client = client.clone();
        let url = server.url();
        tokio::spawn(async move {
            client
                .post(format!("{url}/sdapi/v1/txt2img"))
                .json(&json!({"width": 80, "height": 64}))
                .send()
                .await
        })
    };
    until_job_runs(&client, &server).await?;
    let answer: Value = client
        .post(format!("{}/sdapi/v1/interrupt", server.url()))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(answer, json!({}));
    let response = job.await??;
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() < PATIENCE, "{:?}", started.elapsed());
    let body: Value = response.json().await?;
    assert_eq!(
        png_size(body["images"][0].as_str().ok_or("no image")?)?,
        (80, 64)
    );
    let stats = server.stats();
    assert_eq!(
        (stats.interrupted, stats.completed, stats.interrupts),
        (1, 0, 1)
    );
    assert_eq!(progress(&client, &server, true).await?["progress"], 0.0);

    // Skip has the same effect; an interrupt with nothing running changes nothing later.
    let status = client
        .post(format!("{}/sdapi/v1/interrupt", server.url()))
        .send()
        .await?
        .status();
    assert_eq!(status, 200);
    let job = {
        let client = client.clone();
        let url = server.url();
        tokio::spawn(async move {
            client
                .post(format!("{url}/sdapi/v1/txt2img"))
                .json(&json!({"width": 64, "height": 64}))
                .send()
                .await
        })
    };
    let running = until_job_runs(&client, &server).await?;
    assert_eq!(
        running["state"]["interrupted"], false,
        "an old interrupt leaked"
    );
    client
        .post(format!("{}/sdapi/v1/skip", server.url()))
        .send()
        .await?;
    assert_eq!(job.await??.status(), 200);
    assert_eq!(server.stats().interrupted, 2);
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_generation_runs_to_its_end_after_its_client_leaves() -> TestResult {
    let server = start(SimConfig {
        latency: Latency::Fixed(Duration::from_millis(500)),
        ..SimConfig::default()
    })
    .await?;
    let client = client();
    let gone = client
        .post(format!("{}/sdapi/v1/txt2img", server.url()))
        .timeout(Duration::from_millis(100))
        .json(&json!({"width": 64, "height": 64}))
        .send()
        .await;
    assert!(gone.is_err_and(|err| err.is_timeout()));
    // Like Forge, the generation keeps the lock to its end: the next one waits for it.
    let view = until_job_runs(&client, &server).await?;
    assert_eq!(view["state"]["job"], "txt2img");
    let started = Instant::now();
    let response = txt2img(&client, &server, &json!({"width": 64, "height": 64})).await?;
    assert_eq!(response.status(), 200);
    assert!(
        started.elapsed() >= Duration::from_millis(650),
        "the abandoned generation did not hold the lock: {:?}",
        started.elapsed()
    );
    let stats = server.stats();
    assert_eq!((stats.completed, stats.max_concurrent_generations), (2, 1));
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_endpoints_change_faults_at_run_time() -> TestResult {
    let server = start(instant()).await?;
    let client = client();
    let url = server.url();
    let config = get_json(&client, format!("{url}/sim/config")).await?;
    assert_eq!(
        config,
        json!({"latency": "0s", "fail_rate": 0.0, "mode": "normal", "steps_per_second": null, "seed": 0, "previews": true,
               "models": ["sim-model"], "model_switch": "0s"})
    );

    let response = client
        .post(format!("{url}/sim/config"))
        .json(&json!({"mode": "error500", "latency": "1s..3s", "steps_per_second": 40, "previews": false}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let changed: Value = response.json().await?;
    assert_eq!(changed["mode"], "error500");
    assert_eq!(changed["latency"], "1s..3s");
    assert_eq!(changed["steps_per_second"], 40.0);
    assert_eq!(
        get_json(&client, format!("{url}/sim/config")).await?,
        changed
    );
    assert_eq!(server.config().mode, SimMode::Error500);
    assert_eq!(
        server.config().latency,
        Latency::Range(Duration::from_secs(1), Duration::from_secs(3))
    );
    assert_eq!(txt2img(&client, &server, &json!({})).await?.status(), 500);

    for bad in [
        json!({"mode": "sideways"}),
        json!({"fail_rate": 2}),
        json!({"latency": "soon"}),
        json!({"steps_per_second": -1}),
        json!({"colour": "blue"}),
    ] {
        let response = client
            .post(format!("{url}/sim/config"))
            .json(&bad)
            .send()
            .await?;
        assert_eq!(response.status(), 422, "{bad}");
    }
    let response = client
        .post(format!("{url}/sim/config"))
        .body("{")
        .send()
        .await?;
    assert_eq!(response.status(), 422);
    assert_eq!(
        get_json(&client, format!("{url}/sim/config")).await?,
        changed,
        "unchanged by bad input"
    );

    let response = client
        .post(format!("{url}/sim/config"))
        .json(&json!({"mode": "normal", "latency": "0s", "steps_per_second": null}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(
        txt2img(&client, &server, &json!({"width": 64, "height": 64}))
            .await?
            .status(),
        200
    );

    let stats = get_json(&client, format!("{url}/sim/stats")).await?;
    assert_eq!(stats["txt2img_requests"], 2);
    assert_eq!(stats["failed"], 1);
    assert_eq!(stats["completed"], 1);
    let reset: Value = client
        .post(format!("{url}/sim/reset-stats"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(reset["txt2img_requests"], 0);
    assert_eq!(server.stats().completed, 0);
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn health_routes_answer_and_unknown_ones_are_404_or_405() -> TestResult {
    let server = start(instant()).await?;
    let client = client();
    let url = server.url();
    assert_eq!(
        get_json(&client, format!("{url}/internal/ping")).await?,
        json!({})
    );
    let options = get_json(&client, format!("{url}/sdapi/v1/options")).await?;
    assert_eq!(
        options["sd_model_checkpoint"],
        models_title_of_the_loaded_one(&client, &url).await?
    );
    let models = get_json(&client, format!("{url}/sdapi/v1/sd-models")).await?;
    assert_eq!(models[0]["model_name"], "sim-model");

    let response = client.get(format!("{url}/sdapi/v1/nothing")).send().await?;
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.json::<Value>().await?,
        json!({"detail": "Not Found"})
    );
    let response = client.get(format!("{url}/sdapi/v1/txt2img")).send().await?;
    assert_eq!(response.status(), 405);
    assert_eq!(
        response.json::<Value>().await?,
        json!({"detail": "Method Not Allowed"})
    );
    let response = client
        .get(format!(
            "{url}/sdapi/v1/progress?skip_current_image=perhaps"
        ))
        .send()
        .await?;
    assert_eq!(response.status(), 422);
    server.shutdown().await;
    Ok(())
}

/// The title `GET /sdapi/v1/sd-models` gives the first (loaded) checkpoint.
async fn models_title_of_the_loaded_one(
    client: &reqwest::Client,
    url: &str,
) -> Result<Value, reqwest::Error> {
    let models = get_json(client, format!("{url}/sdapi/v1/sd-models")).await?;
    Ok(models[0]["title"].clone())
}
