//! Checkpoints and samplers, the way Forge lists and switches them.

mod common;

use common::*;
use forge_sim::SimConfig;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn two_models(switch: Duration) -> SimConfig {
    SimConfig {
        models: vec!["a".into(), "b".into()],
        model_switch: switch,
        ..instant()
    }
}

/// The model a txt2img answer says it generated with.
async fn generate_with(
    client: &reqwest::Client,
    server: &forge_sim::SimServer,
    body: Value,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let answer: Value = txt2img(client, server, &body).await?.json().await?;
    let info: Value = serde_json::from_str(answer["info"].as_str().ok_or("no info")?)?;
    Ok(info["sd_model_name"].as_str().ok_or("no model")?.to_owned())
}

#[tokio::test]
async fn lists_its_checkpoints_samplers_and_the_loaded_one() -> TestResult {
    let server = start(two_models(Duration::ZERO)).await?;
    let client = client();
    let models = get_json(&client, format!("{}/sdapi/v1/sd-models", server.url())).await?;
    let names: Vec<&str> = models
        .as_array()
        .ok_or("a list")?
        .iter()
        .filter_map(|model| model["model_name"].as_str())
        .collect();
    assert_eq!(names, ["a", "b"]);
    let title = models[0]["title"].as_str().ok_or("a title")?.to_owned();
    assert!(title.starts_with("a.safetensors ["), "{title}");
    let options = get_json(&client, format!("{}/sdapi/v1/options", server.url())).await?;
    assert_eq!(
        options["sd_model_checkpoint"],
        title.as_str(),
        "the first is loaded"
    );
    let samplers = get_json(&client, format!("{}/sdapi/v1/samplers", server.url())).await?;
    assert!(
        samplers
            .as_array()
            .ok_or("a list")?
            .iter()
            .any(|sampler| sampler["name"] == "Euler a")
    );
    Ok(())
}

#[tokio::test]
async fn override_settings_switch_the_checkpoint_once_and_an_unknown_one_is_ignored() -> TestResult
{
    let switch = Duration::from_millis(300);
    let server = start(two_models(switch)).await?;
    let client = client();
    let keep = |model: &str| {
        json!({"prompt": "p", "override_settings": {"sd_model_checkpoint": model},
               "override_settings_restore_afterwards": false})
    };
    // The loaded one: no switch.
    assert_eq!(generate_with(&client, &server, keep("a")).await?, "a");
    assert_eq!(server.stats().model_switches, 0);
    // Another one: a switch that costs --model-switch, and it stays loaded.
    let started = Instant::now();
    assert_eq!(generate_with(&client, &server, keep("b")).await?, "b");
    assert!(started.elapsed() >= switch, "the switch takes its time");
    assert_eq!(generate_with(&client, &server, keep("b")).await?, "b");
    assert_eq!(server.stats().model_switches, 1);
    let options = get_json(&client, format!("{}/sdapi/v1/options", server.url())).await?;
    assert!(
        options["sd_model_checkpoint"]
            .as_str()
            .unwrap_or("")
            .starts_with("b.")
    );
    // Forge ignores a checkpoint it does not have and generates with the loaded one.
    assert_eq!(generate_with(&client, &server, keep("c")).await?, "b");
    assert_eq!(server.stats().model_switches, 1);
    // Forge's default restores the previous checkpoint afterwards: two loads.
    let restore = json!({"prompt": "p", "override_settings": {"sd_model_checkpoint": "a"}});
    assert_eq!(generate_with(&client, &server, restore).await?, "a");
    assert_eq!(server.stats().model_switches, 3);
    let options = get_json(&client, format!("{}/sdapi/v1/options", server.url())).await?;
    assert!(
        options["sd_model_checkpoint"]
            .as_str()
            .unwrap_or("")
            .starts_with("b.")
    );
    Ok(())
}

#[tokio::test]
async fn models_can_be_changed_at_run_time_and_a_bad_list_is_refused() -> TestResult {
    let server = start(instant()).await?;
    let client = client();
    let url = format!("{}/sim/config", server.url());
    let answer = client
        .post(&url)
        .json(&json!({"models": ["x", "y"], "model_switch": "2s"}))
        .send()
        .await?;
    assert_eq!(answer.status(), 200);
    assert_eq!(server.config().models, ["x", "y"]);
    assert_eq!(server.config().model_switch, Duration::from_secs(2));
    let options = get_json(&client, format!("{}/sdapi/v1/options", server.url())).await?;
    assert!(
        options["sd_model_checkpoint"]
            .as_str()
            .unwrap_or("")
            .starts_with("x.")
    );
    for bad in [
        json!({"models": []}),
        json!({"models": ["x", "x"]}),
        json!({"models": "x"}),
    ] {
        let answer = client.post(&url).json(&bad).send().await?;
        assert_eq!(answer.status(), 422, "{bad}");
    }
    Ok(())
}
