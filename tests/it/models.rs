//! Issue 25: models. The gateway asks each backend what it offers and lists the union.

use crate::common::*;
use forge_sim::SimConfig;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A simulator offering `models` (the first loaded).
fn offering(models: &[&str]) -> SimConfig {
    SimConfig {
        models: models.iter().map(|name| (*name).to_owned()).collect(),
        ..fast_sim()
    }
}

/// The listing once it satisfies `ready`.
async fn models_when(client: &Client, token: &str, ready: impl Fn(&Value) -> bool) -> Value {
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
    let port: std::net::SocketAddr = second_url
        .trim_start_matches("http://")
        .parse()
        .expect("an address");
    let _back = forge_sim::SimServer::start(port, second_config)
        .await
        .expect("the second backend starts again on its port");
    models_when(&client, &token, both).await;
    app.shutdown().await;
}
