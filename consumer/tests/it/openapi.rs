//! The OpenAPI document matches what the services answer, and real responses match its schemas.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::helpers::{event, spawn_app, TestApp};

fn document() -> Value {
    serde_json::from_str(consumer::read::http::OPENAPI).unwrap()
}

fn documented_routes() -> BTreeSet<(String, String)> {
    let document = document();
    let mut routes = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        // A path item also holds shared `parameters`, `summary` and `description`.
        for method in item.as_object().unwrap().keys() {
            if matches!(method.as_str(), "parameters" | "summary" | "description") {
                continue;
            }
            routes.insert((method.to_uppercase(), path.clone()));
        }
    }
    routes
}

#[test]
fn document_names_exactly_the_routes_the_services_answer() {
    let answered: BTreeSet<(String, String)> = gateway::http::ROUTES
        .iter()
        .chain(consumer::read::http::ROUTES)
        .map(|(method, path)| ((*method).to_owned(), (*path).to_owned()))
        .collect();
    assert_eq!(documented_routes(), answered);
    assert_eq!(gateway::http::OPENAPI, consumer::read::http::OPENAPI);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_documented_route_is_answered_and_others_are_404() {
    let app = spawn_app().await;
    for (method, path) in documented_routes() {
        let on_gateway = gateway::http::ROUTES.contains(&(method.as_str(), path.as_str()));
        let url = if on_gateway {
            app.gateway_url(&path)
        } else {
            app.consumer_url(&path)
        };
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = app
            .client
            .request(method.clone(), url)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(
            status != 404 || body["error"]["code"] != "not_found" || path.contains("lookup"),
            "{method} {path} is documented but not routed"
        );
    }
    for url in [
        app.gateway_url("/v1/undocumented"),
        app.consumer_url("/v1/undocumented"),
    ] {
        assert_eq!(app.client.get(url).send().await.unwrap().status(), 404);
    }
    app.cleanup().await;
}

/// Validates `instance` against `#/components/schemas/{name}` of the document.
pub(crate) fn assert_matches(name: &str, instance: &Value) {
    let document = document();
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": format!("#/components/schemas/{name}"),
        "components": document["components"],
    });
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{name}: {errors:?} in {instance}");
}

async fn json_of(app: &TestApp, url: String) -> (u16, Value) {
    let response = app.client.get(url).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn real_responses_match_the_document_schemas() {
    let app = spawn_app().await;
    let mut sent = event("schema.check");
    sent["subject"] = json!("s/1");
    sent["traceid"] = json!("abc");

    let response = app.post_event(&sent).await;
    assert_eq!(response.status(), 202);
    assert_matches("Accepted", &response.json().await.unwrap());
    app.wait_for_rows(1).await;
    assert_matches("CloudEvent", &sent);

    let (_, page) = json_of(&app, app.consumer_url("/v1/events?limit=10")).await;
    assert_matches("EventPage", &page);
    let lookup = format!(
        "/v1/events/lookup?source=%2Ftests&id={}",
        sent["id"].as_str().unwrap()
    );
    let (_, stored) = json_of(&app, app.consumer_url(&lookup)).await;
    assert_matches("StoredEvent", &stored);
    let (_, counts) = json_of(
        &app,
        app.consumer_url("/v1/stats/counts?bucket=day&since=2024-01-01T00:00:00Z&group_by=type"),
    )
    .await;
    assert_matches("Counts", &counts);
    for url in [app.gateway_url("/healthz"), app.consumer_url("/healthz")] {
        assert_matches("Health", &json_of(&app, url).await.1);
    }
    for url in [app.gateway_url("/readyz"), app.consumer_url("/readyz")] {
        assert_matches("Readiness", &json_of(&app, url).await.1);
    }
    let (status, error) = json_of(&app, app.consumer_url("/v1/events?limit=0")).await;
    assert_eq!(status, 400);
    assert_matches("Error", &error);
    let invalid = app.post("application/json", "{}", &[]).await;
    assert_matches("Error", &invalid.json().await.unwrap());
    app.cleanup().await;
}
