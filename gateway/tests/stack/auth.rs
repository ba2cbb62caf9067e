//! Through nginx on a stack with auth: the auth matrix, the request id reaching the consumer's
//! log, and no secret in any log line or error body.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{base_url, encode};

fn key(scope: &str) -> String {
    std::env::var(format!("WARREN_{}_KEY", scope.to_uppercase()))
        .expect("run against a stack with auth: source its keys.env")
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_matrix_through_nginx() {
    let base = base_url();
    let client = reqwest::Client::new();
    let (ingest, read) = (key("ingest"), key("read"));
    let event = serde_json::json!({"specversion": "1.0", "id": uuid::Uuid::new_v4().to_string(),
                                   "source": "/auth-matrix", "type": "auth.matrix"});
    let routes = [
        (
            reqwest::Method::POST,
            "/v1/events".to_owned(),
            &ingest,
            &read,
        ),
        (
            reqwest::Method::GET,
            "/v1/events?limit=1".to_owned(),
            &read,
            &ingest,
        ),
        (
            reqwest::Method::GET,
            "/v1/events/lookup?source=%2Fnone&id=none".to_owned(),
            &read,
            &ingest,
        ),
        (
            reqwest::Method::GET,
            "/v1/stats/counts?bucket=day&since=2024-01-01T00:00:00Z".to_owned(),
            &read,
            &ingest,
        ),
    ];
    for (method, path, right, other) in routes {
        let send = |key: Option<&str>| {
            let mut request = client.request(method.clone(), format!("{base}{path}"));
            if method == reqwest::Method::POST {
                request = request
                    .header("content-type", "application/cloudevents+json")
                    .body(event.to_string());
            }
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            request.send()
        };
        for (key, status) in [
            (None, 401),
            (Some("wrn_ingest_wrong"), 401),
            (Some(other.as_str()), 403),
        ] {
            let response = send(key).await.unwrap();
            assert_eq!(response.status(), status, "{method} {path} {key:?}");
            assert!(response.headers().contains_key("www-authenticate"));
            let body: Value = response.json().await.unwrap();
            assert!(body["error"]["code"].is_string());
        }
        let status = send(Some(right.as_str())).await.unwrap().status();
        assert!(
            status.is_success() || status == 404,
            "{method} {path}: {status}"
        );
    }
}

/// Every log file of the stack (`WARREN_E2E_LOGS`), concatenated.
fn stack_logs() -> String {
    let dir =
        std::env::var("WARREN_E2E_LOGS").expect("set WARREN_E2E_LOGS to the stack's log folder");
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        text.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default());
    }
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn request_id_nginx_assigned_reaches_the_consumer_log() {
    let base = base_url();
    let client = reqwest::Client::new();
    let event = serde_json::json!({"specversion": "1.0", "id": uuid::Uuid::new_v4().to_string(),
                                   "source": "/request-id", "type": "request.id"});
    let response = client
        .post(format!("{base}/v1/events"))
        .bearer_auth(key("ingest"))
        .header("content-type", "application/cloudevents+json")
        .body(event.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        request_id.len(),
        32,
        "nginx's $request_id is 32 hex digits: {request_id}"
    );

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let logs = stack_logs();
        let batch_line = logs
            .lines()
            .find(|line| line.contains("stored batch") && line.contains(&request_id));
        let gateway_line = logs
            .lines()
            .find(|line| line.contains("\"message\":\"request\"") && line.contains(&request_id));
        if let (Some(batch), Some(_)) = (batch_line, gateway_line) {
            let parsed: Value = serde_json::from_str(batch).unwrap();
            assert_eq!(parsed["message"], "stored batch");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no consumer batch line with {request_id}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let page: Value = client
        .get(format!("{base}/v1/events?source={}", encode("/request-id")))
        .bearer_auth(key("read"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!page["events"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_appears_in_logs_or_error_bodies() {
    let base = base_url();
    let client = reqwest::Client::new();
    // Requests with real and fake keys, good and bad, so the logs have had every chance.
    for key in [
        key("ingest"),
        key("read"),
        "wrn_ingest_not-configured-secret".to_owned(),
    ] {
        for body in ["{}", "not json"] {
            let response = client
                .post(format!("{base}/v1/events"))
                .bearer_auth(&key)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let text = response.text().await.unwrap();
            assert!(
                !text.contains(&key),
                "a key leaked into an error body: {text}"
            );
        }
    }
    let logs = stack_logs();
    let mut secrets = vec![
        key("ingest"),
        key("read"),
        "not-configured-secret".to_owned(),
    ];
    secrets.extend(
        std::env::var("WARREN_E2E_SECRETS")
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
    );
    for secret in secrets {
        assert!(
            !logs.contains(&secret),
            "a secret appears in the stack's logs"
        );
    }
}
