//! Routes other than bad input: health, readiness, request ids, grouping, publish failures.

use gateway::publish::PublishError;
use serde_json::Value;

use crate::helpers::{error_code, event, spawn_gateway};

#[tokio::test]
async fn healthz_and_readyz_answer_200_when_the_publisher_is_ready() {
    let gateway = spawn_gateway(&[]).await;
    for path in ["/healthz", "/readyz"] {
        let response = gateway.client.get(gateway.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn unknown_route_is_404_json() {
    let gateway = spawn_gateway(&[]).await;
    let response = gateway
        .client
        .get(gateway.url("/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(error_code(response).await, "not_found");
}

#[tokio::test]
async fn request_id_from_the_proxy_is_echoed_and_published() {
    let gateway = spawn_gateway(&[]).await;

    let response = gateway
        .post(
            "application/cloudevents+json",
            event().to_string(),
            &[("x-request-id", "nginx-abc.123")],
        )
        .await;

    assert_eq!(response.headers()["x-request-id"], "nginx-abc.123");
    let published = gateway.publisher.published();
    assert_eq!(published[0].request_id, "nginx-abc.123");
    let envelope = shared_types::Envelope::decode(&published[0].body).unwrap();
    assert_eq!(envelope.request_id, "nginx-abc.123");
}

#[tokio::test]
async fn unsafe_request_id_is_replaced() {
    let gateway = spawn_gateway(&[]).await;
    let response = gateway
        .post(
            "application/cloudevents+json",
            event().to_string(),
            &[("x-request-id", "bad id with spaces")],
        )
        .await;
    let echoed = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(echoed, "bad id with spaces");
    assert_eq!(echoed.len(), 32);
}

#[tokio::test]
async fn batch_is_published_as_one_message_per_event_type() {
    let gateway = spawn_gateway(&[]).await;
    let mut events = Vec::new();
    for kind in ["a.one", "b.two", "a.one", "c.three", "b.two", "a.one"] {
        let mut e = event();
        e["type"] = Value::from(kind);
        events.push(e);
    }

    let response = gateway
        .post("application/json", Value::Array(events).to_string(), &[])
        .await;

    assert_eq!(response.status(), 202);
    let published = gateway.publisher.published();
    let shape: Vec<(String, usize)> = published
        .iter()
        .map(|m| {
            (
                m.routing_key.clone(),
                shared_types::Envelope::decode(&m.body)
                    .unwrap()
                    .events
                    .len(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("a.one".to_owned(), 3),
            ("b.two".to_owned(), 2),
            ("c.three".to_owned(), 1)
        ]
    );
}

#[tokio::test]
async fn publish_failures_are_503_with_retry_after() {
    let gateway = spawn_gateway(&[("WARREN_RETRY_AFTER_SECS", "3")]).await;
    let cases = [
        (PublishError::Unavailable, "broker_unavailable"),
        (PublishError::Blocked, "broker_blocked"),
        (PublishError::Overloaded, "overloaded"),
        (PublishError::ConfirmTimeout, "confirm_timeout"),
        (PublishError::Nacked, "broker_nack"),
        (PublishError::Unroutable, "unroutable"),
        (PublishError::ConnectionLost, "broker_unavailable"),
    ];
    for (failure, code) in cases {
        gateway.publisher.fail_with(Some(failure));
        let response = gateway
            .post("application/cloudevents+json", event().to_string(), &[])
            .await;
        assert_eq!(response.status(), 503, "{failure:?}");
        assert_eq!(response.headers()["retry-after"], "3");
        assert_eq!(error_code(response).await, code);
    }
    let readyz = gateway
        .client
        .get(gateway.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(readyz.status(), 503);
}
