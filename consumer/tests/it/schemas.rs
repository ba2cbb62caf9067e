//! The schema registry (consumer) and its enforcement at the edge (gateway), end to end.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use service_runtime::auth::{generate_key, Scope};

use crate::helpers::{event, spawn_app_with, TestApp};
use crate::openapi::assert_matches;

/// How often the gateways in these tests poll the registry.
const REFRESH_MS: u64 = 200;

/// The documented bound on how stale a gateway's schemas are while the registry answers: one
/// refresh interval plus one fetch.
fn staleness_bound() -> Duration {
    Duration::from_millis(REFRESH_MS) + gateway::schema_registry::refresh::FETCH_TIMEOUT
}

async fn spawn_with_registry(extra: &[(&str, &str)]) -> TestApp {
    let refresh = REFRESH_MS.to_string();
    let mut env = vec![
        ("WARREN_SCHEMA_REGISTRY_URL", "http://{consumer}"),
        ("WARREN_SCHEMA_REFRESH_MS", refresh.as_str()),
    ];
    env.extend_from_slice(extra);
    spawn_app_with(&env).await
}

fn amount_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "amount": {"type": "integer", "minimum": 0},
            "email": {"type": "string", "format": "email"}
        },
        "required": ["amount"]
    })
}

fn unique_type(name: &str) -> String {
    format!("{name}.{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

async fn put_schema(
    app: &TestApp,
    event_type: &str,
    body: &Value,
    key: Option<&str>,
) -> (u16, Value) {
    let mut request = app
        .client
        .put(app.consumer_url(&format!("/v1/schemas/{event_type}")))
        .json(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn get_json(app: &TestApp, path: &str) -> (u16, Value) {
    let response = app.client.get(app.consumer_url(path)).send().await.unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn delete(app: &TestApp, path: &str) -> u16 {
    app.client
        .delete(app.consumer_url(path))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// What [`post_until`] saw.
struct Polled {
    /// How long until the answer wanted.
    took: Duration,
    /// The wanted answer's body.
    body: Value,
    /// How many of the events posted were accepted (202), the last one included.
    accepted: i64,
}

/// Posts a new event from `make()` until an answer satisfies `wanted`, within `within`.
async fn post_until(
    app: &TestApp,
    wanted: impl Fn(u16, &Value) -> bool,
    make: impl Fn() -> Value,
    within: Duration,
) -> Polled {
    let started = Instant::now();
    let mut accepted = 0;
    loop {
        let response = app.post_event(&make()).await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status == 202 {
            accepted += 1;
        }
        if wanted(status, &body) {
            return Polled {
                took: started.elapsed(),
                body,
                accepted,
            };
        }
        assert!(
            started.elapsed() < within,
            "no wanted answer within {within:?}; last answer {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn accepted(status: u16, _: &Value) -> bool {
    status == 202
}

fn violated(status: u16, body: &Value) -> bool {
    status == 400 && body["error"]["details"][0]["code"] == "schema_violation"
}

fn order(event_type: &str, data: Value) -> Value {
    let mut sent = event(event_type);
    sent["data"] = data;
    sent
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registered_schema_refuses_breaking_events_with_pointers_and_stores_conforming_ones() {
    let app = spawn_with_registry(&[]).await;
    let kind = unique_type("order.created");

    let (status, created) =
        put_schema(&app, &kind, &json!({"schema": amount_schema()}), None).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["version"], 1);
    assert_eq!(created["policy"], "enforce");
    let dataschema_path = created["dataschema_path"].as_str().unwrap().to_owned();
    assert_eq!(dataschema_path, format!("/v1/schemas/{kind}/versions/1"));
    // The same schema again adds no version: a retried PUT is harmless.
    let (status, again) = put_schema(&app, &kind, &json!({"schema": amount_schema()}), None).await;
    assert_eq!((status, &again["version"]), (200, &json!(1)));

    // Until the gateway has the schema, an event naming version 1 is refused as unknown; after,
    // a breaking one is refused for its data. Neither is stored.
    let named = format!("https://warren.example{dataschema_path}");
    let breaking = || {
        let mut sent = order(&kind, json!({"amount": -5, "email": "nope"}));
        sent["dataschema"] = json!(named);
        sent
    };
    let body = post_until(&app, violated, breaking, staleness_bound())
        .await
        .body;
    let details = body["error"]["details"].as_array().unwrap().clone();
    assert_eq!(body["error"]["code"], "invalid_event", "{body}");
    let mut pointers: Vec<&str> = details
        .iter()
        .map(|detail| detail["pointer"].as_str().unwrap())
        .collect();
    pointers.sort_unstable();
    assert_eq!(pointers, ["/data/amount", "/data/email"], "{body}");
    assert!(details
        .iter()
        .all(|detail| detail["code"] == "schema_violation" && detail.get("index").is_none()));

    // Without dataschema the current version applies; a batch is refused whole.
    let batch = vec![
        order(&kind, json!({"amount": 1})),
        order(&kind, json!({"amount": "ten"})),
    ];
    let response = app.post_batch(batch).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["details"][0]["index"], 1, "{body}");
    assert_eq!(body["error"]["details"][0]["pointer"], "/data/amount");

    let conforming = order(&kind, json!({"amount": 10, "email": "a@example.com"}));
    assert_eq!(app.post_event(&conforming).await.status(), 202);
    let untyped = event(&unique_type("no.schema"));
    assert_eq!(app.post_event(&untyped).await.status(), 202);
    app.wait_for_rows(2).await;
    let lookup = format!(
        "/v1/events/lookup?source=%2Ftests&id={}",
        conforming["id"].as_str().unwrap()
    );
    assert_eq!(get_json(&app, &lookup).await.0, 200);

    let (status, listed) = get_json(&app, "/v1/schemas").await;
    assert_eq!(status, 200);
    assert!(listed["schemas"]
        .as_array()
        .unwrap()
        .iter()
        .any(|entry| entry["type"] == json!(kind) && entry.get("schema").is_none()));
    assert_matches("SchemaList", &listed);
    assert_matches("SchemaVersion", &created);
    let (status, of_type) = get_json(&app, &format!("/v1/schemas/{kind}")).await;
    assert_eq!(status, 200);
    assert_eq!(of_type["current"]["schema"], amount_schema());
    assert_matches("SchemaType", &of_type);
    let (status, version) = get_json(&app, &dataschema_path).await;
    assert_eq!((status, &version["schema"]), (200, &amount_schema()));
    assert_matches("SchemaVersion", &version);
    assert_eq!(
        get_json(&app, "/v1/schemas/no.such.type").await.1["error"]["code"],
        "schema_not_found"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_warn_stores_and_counts_the_violation() {
    let app = spawn_with_registry(&[]).await;
    let kind = unique_type("page.viewed");
    let (status, created) = put_schema(
        &app,
        &kind,
        &json!({"schema": amount_schema(), "policy": "warn"}),
        None,
    )
    .await;
    assert_eq!((status, &created["policy"]), (201, &json!("warn")));
    // A conforming event naming version 1 is refused (unknown) until the gateway loads it.
    let named = format!("https://w{}", created["dataschema_path"].as_str().unwrap());
    let loaded = post_until(
        &app,
        accepted,
        || {
            let mut sent = order(&kind, json!({"amount": 1}));
            sent["dataschema"] = json!(named);
            sent
        },
        staleness_bound(),
    )
    .await;
    assert_eq!(loaded.accepted, 1);
    let breaking = order(&kind, json!({"amount": "lots"}));
    assert_eq!(app.post_event(&breaking).await.status(), 202);
    app.wait_for_rows(2).await;
    let metrics = app.gateway_metrics().await;
    let type_label = format!("type=\"{kind}\"");
    let counted = metrics.lines().find(|line| {
        line.starts_with("warren_gateway_schema_violations_total{")
            && line.contains(&type_label)
            && line.contains("policy=\"warn\"")
    });
    assert_eq!(
        counted.and_then(|line| line.rsplit(' ').next()),
        Some("1"),
        "{counted:?}"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schema_change_is_enforced_within_the_refresh_bound_without_a_restart() {
    let app = spawn_with_registry(&[]).await;
    let kind = unique_type("user.signed_up");
    let integer =
        json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]});
    let string =
        json!({"type": "object", "properties": {"n": {"type": "string"}}, "required": ["n"]});
    assert_eq!(
        put_schema(&app, &kind, &json!({"schema": integer}), None)
            .await
            .0,
        201
    );
    // Loaded: `{"n": "x"}` naming version 1 breaks it (and is refused as unknown before).
    let named = format!("https://w/v1/schemas/{kind}/versions/1");
    post_until(
        &app,
        violated,
        || {
            let mut sent = order(&kind, json!({"n": "x"}));
            sent["dataschema"] = json!(named);
            sent
        },
        staleness_bound(),
    )
    .await;
    let breaking_v1 = || order(&kind, json!({"n": "x"}));
    let mut stored = 0;

    // Version 2 takes strings: the same event becomes acceptable without restarting anything.
    assert_eq!(
        put_schema(&app, &kind, &json!({"schema": string}), None)
            .await
            .0,
        201
    );
    let polled = post_until(&app, accepted, breaking_v1, staleness_bound()).await;
    stored += polled.accepted;
    println!(
        "version 2 enforced {:?} after the PUT (bound {:?})",
        polled.took,
        staleness_bound()
    );

    // Retiring version 2 makes version 1 current again (events accepted meanwhile are stored).
    assert_eq!(
        delete(&app, &format!("/v1/schemas/{kind}/versions/2")).await,
        200
    );
    stored += post_until(&app, violated, breaking_v1, staleness_bound())
        .await
        .accepted;
    let (_, of_type) = get_json(&app, &format!("/v1/schemas/{kind}")).await;
    assert_eq!(of_type["current"]["version"], 1);
    assert!(of_type["versions"][0]["retired_at"].is_string());

    // Retiring the type stops checking it.
    assert_eq!(delete(&app, &format!("/v1/schemas/{kind}")).await, 200);
    stored += post_until(&app, accepted, breaking_v1, staleness_bound())
        .await
        .accepted;
    assert_eq!(delete(&app, "/v1/schemas/no.such.type").await, 404);
    app.wait_for_rows(stored).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_required_refuses_types_without_a_schema() {
    let app = spawn_with_registry(&[("WARREN_SCHEMA_REQUIRED", "on")]).await;
    let response = app.post_event(&event(&unique_type("unregistered"))).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["error"]["details"][0]["code"], "schema_required",
        "{body}"
    );
    assert_eq!(body["error"]["details"][0]["pointer"], "/type");
    let kind = unique_type("registered");
    assert_eq!(
        put_schema(&app, &kind, &json!({"schema": true}), None)
            .await
            .0,
        201
    );
    let loaded = post_until(&app, accepted, || event(&kind), staleness_bound()).await;
    assert_eq!(loaded.accepted, 1);
    app.wait_for_rows(1).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_registry_needs_an_admin_key_to_change_and_refuses_bad_schemas() {
    let (ingest_key, ingest_line) = generate_key(Scope::Ingest);
    let (read_key, read_line) = generate_key(Scope::Read);
    let (admin_key, admin_line) = generate_key(Scope::Admin);
    let hash = |line: &str| line.split(' ').nth(1).unwrap().to_owned();
    let (ingest_hash, read_hash, admin_hash) =
        (hash(&ingest_line), hash(&read_line), hash(&admin_line));
    // The gateway polls with the read key: it would never become ready without it.
    let app = spawn_with_registry(&[
        ("WARREN_AUTH", "on"),
        ("WARREN_INGEST_KEYS", &ingest_hash),
        ("WARREN_READ_KEYS", &read_hash),
        ("WARREN_ADMIN_KEYS", &admin_hash),
        ("WARREN_SCHEMA_REGISTRY_KEY", &read_key),
    ])
    .await;
    let kind = unique_type("secured");
    let body = json!({"schema": amount_schema()});
    assert_eq!(put_schema(&app, &kind, &body, None).await.0, 401);
    assert_eq!(put_schema(&app, &kind, &body, Some(&read_key)).await.0, 403);
    assert_eq!(
        put_schema(&app, &kind, &body, Some(&ingest_key)).await.0,
        403
    );
    for (refused, code) in [
        (
            json!({"schema": {"type": "no-such-type"}}),
            "invalid_schema",
        ),
        (
            json!({"schema": {"$schema": "http://json-schema.org/draft-07/schema#"}}),
            "invalid_schema",
        ),
        (json!({"schema": {}, "policy": "sometimes"}), "invalid_body"),
    ] {
        let (status, bad) = put_schema(&app, &kind, &refused, Some(&admin_key)).await;
        assert_eq!(
            (status, &bad["error"]["code"]),
            (400, &json!(code)),
            "{refused}"
        );
    }
    let huge = json!({"schema": {"description": "x".repeat(300 * 1024)}});
    assert_eq!(
        put_schema(&app, &kind, &huge, Some(&admin_key)).await.0,
        413
    );
    let response = app
        .client
        .put(app.consumer_url(&format!("/v1/schemas/{kind}")))
        .bearer_auth(&admin_key)
        .body("{\"schema\": {}, \"schema\": {}}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "duplicate keys are refused");
    assert_eq!(
        put_schema(&app, &kind, &body, Some(&admin_key)).await.0,
        201
    );
    let read = |key: &str| {
        app.client
            .get(app.consumer_url(&format!("/v1/schemas/{kind}")))
            .bearer_auth(key.to_owned())
            .send()
    };
    assert_eq!(read(&read_key).await.unwrap().status(), 200);
    assert_eq!(read(&admin_key).await.unwrap().status(), 200);
    assert_eq!(read(&ingest_key).await.unwrap().status(), 403);
    let response = app
        .client
        .post(app.consumer_url(&format!("/v1/schemas/{kind}")))
        .bearer_auth(&admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET, PUT, DELETE");
    app.cleanup().await;
}
