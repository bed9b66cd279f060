//! Issue 25: models. The gateway asks each backend what it offers and lists the union.

use crate::common::*;
use forge_sim::SimConfig;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A simulator offering `models` (the first loaded).
pub(crate) fn offering(models: &[&str]) -> SimConfig {
    SimConfig {
        models: models.iter().map(|name| (*name).to_owned()).collect(),
        ..fast_sim()
    }
}

/// The listing once it satisfies `ready`.
pub(crate) async fn models_when(
    client: &Client,
    token: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, listing) = client.get(token, "/api/v1/models").await;
        assert_eq!(status, 200, "{listing}");
        if ready(&listing) {
            return listing;
        }
        assert!(
            Instant::now() < deadline,
            "the listing never became {listing}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `(name, backends, loaded)` of each model of a listing.
fn counts(listing: &Value) -> Vec<(String, u64, u64)> {
    listing["models"]
        .as_array()
        .expect("models")
        .iter()
        .map(|model| {
            (
                model["name"].as_str().expect("name").to_owned(),
                model["backends"].as_u64().expect("backends"),
                model["loaded"].as_u64().expect("loaded"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listing_is_the_union_of_what_answering_backends_offer() {
    let storage = Storage::fresh();
    let first = start_sim(offering(&["a", "b"])).await;
    let second = start_sim(offering(&["b", "c"])).await;
    let (app, client) = {
        let config = config(
            &storage,
            &[first.url(), second.url()],
            &["--models-refresh", "200ms"],
        );
        let app = forge_gateway::app::start(config).await.expect("starts");
        let client = Client {
            base: app.url(),
            http: http_client(),
        };
        (app, client)
    };
    let token = client.token("alice").await;
    let (status, _) = client.get("not a token", "/api/v1/models").await;
    assert_eq!(status, 401, "only for signed-in users");
    let both = |listing: &Value| listing["models"].as_array().is_some_and(|m| m.len() == 3);
    let listing = models_when(&client, &token, both).await;
    assert_eq!(
        counts(&listing),
        [
            ("a".to_owned(), 1, 1),
            ("b".to_owned(), 2, 1),
            ("c".to_owned(), 1, 0)
        ],
        "{listing}"
    );
    let title = listing["models"][0]["title"].as_str().expect("a title");
    assert!(title.starts_with("a.safetensors ["), "{title}");
    let samplers: Vec<&str> = listing["samplers"]
        .as_array()
        .expect("samplers")
        .iter()
        .filter_map(|sampler| sampler["name"].as_str())
        .collect();
    assert!(samplers.contains(&"Euler a"), "{samplers:?}");
    assert_eq!(
        listing["samplers"][samplers.iter().position(|s| *s == "Euler a").unwrap()]["aliases"],
        json!(["k_euler_a", "k_euler_ancestral"])
    );

    // A backend that cannot answer is left out, and back once it answers again.
    let (second_config, second_url) = (second.config(), second.url());
    second.shutdown().await;
    let only_first = |listing: &Value| {
        counts(listing)
            .iter()
            .all(|(_, backends, _)| *backends == 1)
            && listing["models"].as_array().is_some_and(|m| m.len() == 2)
    };
    let listing = models_when(&client, &token, only_first).await;
    assert_eq!(
        counts(&listing),
        [("a".to_owned(), 1, 1), ("b".to_owned(), 1, 0)],
        "{listing}"
    );
    // Left out of the listing, but what it offered is still accepted: the job waits for it.
    let (status, waiting) = client
        .submit(&token, json!({"prompt": "for c", "model": "c"}))
        .await;
    assert_eq!(status, 202, "{waiting}");
    let waiting = waiting["id"].as_str().expect("id").to_owned();
    let port: std::net::SocketAddr = second_url
        .trim_start_matches("http://")
        .parse()
        .expect("an address");
    let _back = forge_sim::SimServer::start(port, second_config)
        .await
        .expect("the second backend starts again on its port");
    models_when(&client, &token, both).await;
    let done = client
        .wait_message(&token, &waiting, |m| m["status"] == "complete")
        .await;
    assert_eq!(done["model"], "c", "{done}");
    app.shutdown().await;
}

/// An app on one simulator offering `models`, once its catalogue lists them all.
async fn app_offering(models: &[&str], extra: &[&str]) -> (TestApp, Storage, String) {
    let (app, storage) = TestApp::spawn_with(offering(models), extra).await;
    let token = app.token("alice").await;
    let count = models.len();
    models_when(&app, &token, |listing| {
        listing["models"]
            .as_array()
            .is_some_and(|m| m.len() == count)
    })
    .await;
    (app, storage, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_on_the_model_it_asks_for_and_unknown_choices_are_refused() {
    let (app, _storage, token) = app_offering(&["a", "b"], &[]).await;
    let mut ws = app.ws(&token).await;

    // A checkpoint named by its title is stored by its name, and the job runs on it.
    let listing = models_when(&app, &token, |_| true).await;
    let title_of_b = listing["models"][1]["title"]
        .as_str()
        .expect("b's title")
        .to_owned();
    let (status, queued) = app
        .submit(&token, json!({"prompt": "on b", "model": title_of_b}))
        .await;
    assert_eq!(status, 202, "{queued}");
    assert_eq!(queued["model"], "b", "{queued}");
    let id = queued["id"].as_str().expect("id").to_owned();
    let done = app
        .wait_message(&token, &id, |m| m["status"] == "complete")
        .await;
    assert_eq!(done["model"], "b", "{done}");
    let frame = ws.wait_event("job.complete", &id).await;
    assert_eq!(frame["model"], "b", "{frame}");
    assert_eq!(
        app.sim.stats().model_switches,
        1,
        "a was loaded: one switch to b"
    );

    // Another job on b needs no switch; a retry asks for the same model.
    let (status, retried) = app.retry(&token, &id).await;
    assert_eq!(status, 202, "{retried}");
    assert_eq!(retried["model"], "b");
    let again = retried["id"].as_str().expect("id").to_owned();
    app.wait_message(&token, &again, |m| m["status"] == "complete")
        .await;
    assert_eq!(app.sim.stats().model_switches, 1, "b stayed loaded");
    let metrics = app.metrics().await;
    assert_eq!(metric(&metrics, "forge_gateway_model_switches_total"), 1.0);
    assert_eq!(
        metric(&metrics, "forge_gateway_jobs_by_model_total{model=\"b\"}"),
        2.0
    );
    let listing = models_when(&app, &token, |_| true).await;
    assert_eq!(
        counts(&listing)[1],
        ("b".to_owned(), 1, 1),
        "b is the loaded one now"
    );

    // What no backend offers is refused, naming the field, in Turkish.
    for (body, field, asked) in [
        (json!({"prompt": "p", "model": "zzz"}), "model", "zzz"),
        (
            json!({"prompt": "p", "sampler_name": "Euler A"}),
            "sampler_name",
            "Euler A",
        ),
    ] {
        let (status, refused) = app.submit(&token, body).await;
        assert_eq!(status, 422, "{refused}");
        assert_eq!(refused["error"]["code"], "validation");
        assert_eq!(refused["error"]["field"], field);
        assert_eq!(
            refused["error"]["message"],
            format!("{field} sunucuların sunduklarından biri olmalıdır: '{asked}' bulunamadı.")
        );
    }
    // A sampler's alias is one of its names.
    let (status, _) = app
        .submit(&token, json!({"prompt": "p", "sampler_name": "k_euler_a"}))
        .await;
    assert_eq!(status, 202);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_generates_with_another_model_fails_the_job() {
    // The catalogue says the backend offers b; then its checkpoints change under the gateway
    // (the next discovery is a minute away), and Forge, asked for b, silently uses c.
    let (app, _storage, token) = app_offering(&["a", "b"], &[]).await;
    app.sim.set_config(SimConfig {
        models: vec!["c".into()],
        ..app.sim.config()
    });
    let (status, queued) = app
        .submit(&token, json!({"prompt": "on b", "model": "b"}))
        .await;
    assert_eq!(status, 202, "{queued}");
    let id = queued["id"].as_str().expect("id").to_owned();
    let failed = app
        .wait_message(&token, &id, |m| m["status"] == "error")
        .await;
    assert_eq!(failed["error"]["code"], "wrong_model", "{failed}");
    assert_eq!(
        failed["error"]["message"],
        "Görsel istenen modelle üretilemedi; başka bir modelle üretilen görsel gösterilmedi. Lütfen tekrar deneyin."
    );
    assert_eq!(
        failed["image_url"],
        Value::Null,
        "the wrong picture is not shown"
    );
    app.stop().await;
}
