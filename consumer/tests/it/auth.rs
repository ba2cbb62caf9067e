//! The auth matrix: for each route, no key / wrong key / other scope / right key.

use serde_json::Value;
use service_runtime::auth::{generate_key, Scope};

use crate::helpers::{event, spawn_app_with};

#[tokio::test(flavor = "multi_thread")]
async fn every_route_checks_the_key_and_its_scope() {
    let (ingest_key, ingest_line) = generate_key(Scope::Ingest);
    let (read_key, read_line) = generate_key(Scope::Read);
    let ingest_hash = ingest_line.split(' ').nth(1).unwrap().to_owned();
    let read_hash = read_line.split(' ').nth(1).unwrap().to_owned();
    let app = spawn_app_with(&[
        ("WARREN_AUTH", "on"),
        ("WARREN_INGEST_KEYS", &ingest_hash),
        ("WARREN_READ_KEYS", &read_hash),
    ])
    .await;
    let sent = event("auth.check");
    let lookup = format!(
        "/v1/events/lookup?source=%2Ftests&id={}",
        sent["id"].as_str().unwrap()
    );
    let routes: Vec<(reqwest::Method, String, &str, &str)> = vec![
        (
            reqwest::Method::POST,
            app.gateway_url("/v1/events"),
            ingest_key.as_str(),
            read_key.as_str(),
        ),
        (
            reqwest::Method::GET,
            app.consumer_url("/v1/events"),
            read_key.as_str(),
            ingest_key.as_str(),
        ),
        (
            reqwest::Method::GET,
            app.consumer_url(&lookup),
            read_key.as_str(),
            ingest_key.as_str(),
        ),
        (
            reqwest::Method::GET,
            app.consumer_url("/v1/stats/counts?bucket=day&since=2024-01-01T00:00:00Z"),
            read_key.as_str(),
            ingest_key.as_str(),
        ),
    ];
    for (method, url, right, other_scope) in routes {
        let request = |key: Option<&str>| {
            let mut request = app.client.request(method.clone(), &url);
            if method == reqwest::Method::POST {
                request = request
                    .header("content-type", "application/cloudevents+json")
                    .body(sent.to_string());
            }
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            request.send()
        };
        for (key, status, code) in [
            (None, 401, "unauthenticated"),
            (Some("wrn_read_not-a-real-key"), 401, "invalid_api_key"),
            (Some(other_scope), 403, "forbidden"),
        ] {
            let response = request(key).await.unwrap();
            assert_eq!(response.status(), status, "{method} {url} with {key:?}");
            let challenge = response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .to_owned();
            assert!(
                challenge.starts_with("Bearer realm=\"warren\""),
                "{challenge}"
            );
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], code, "{method} {url}");
            let text = body.to_string();
            assert!(
                !text.contains(right) && !text.contains(other_scope),
                "a key leaked into {text}"
            );
        }
        let response = request(Some(right)).await.unwrap();
        assert!(
            response.status().is_success(),
            "{method} {url}: {}",
            response.status()
        );
        if method == reqwest::Method::POST {
            app.wait_for_rows(1).await;
        }
    }
    app.cleanup().await;
}
