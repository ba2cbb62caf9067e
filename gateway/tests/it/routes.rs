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
    let envelope = shared_types::Envelope::decode_single(&published[0].body).unwrap();
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
async fn a_batch_is_published_as_one_message_routed_by_each_of_its_types() {
    let gateway = spawn_gateway(&[]).await;
    let kinds = ["a.one", "b.two", "a.one", "c.three", "b.two", "a.one"];
    let mut events = Vec::new();
    for kind in kinds {
        let mut e = event();
        e["type"] = Value::from(kind);
        events.push(e);
    }

    let response = gateway
        .post("application/json", Value::Array(events).to_string(), &[])
        .await;

    assert_eq!(response.status(), 202);
    let published = gateway.publisher.published();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].routing_key, "a.one");
    assert_eq!(published[0].cc, ["b.two", "c.three"]);
    let carried: Vec<String> = shared_types::Envelope::decode_single(&published[0].body)
        .unwrap()
        .events
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    assert_eq!(carried, kinds);
}

/// POSTs `count` single events at once, each with its own request id; returns (request id,
/// event id) pairs in request order, after checking every request got 202.
async fn post_singles_at_once(
    gateway: &crate::helpers::TestGateway,
    count: usize,
) -> Vec<(String, String)> {
    let sent: Vec<(String, Value)> = (0..count)
        .map(|n| (format!("single-{n}"), event()))
        .collect();
    let responses =
        futures_util::future::join_all(sent.iter().map(|(request_id, body)| async move {
            gateway
                .post(
                    "application/cloudevents+json",
                    body.to_string(),
                    &[("x-request-id", request_id)],
                )
                .await
        }))
        .await;
    assert!(responses.iter().all(|r| r.status() == 202));
    sent.into_iter()
        .map(|(request_id, body)| (request_id, body["id"].as_str().unwrap().to_owned()))
        .collect()
}

/// Every (request id, event id) pair the published messages carry, sorted.
fn published_pairs(gateway: &crate::helpers::TestGateway) -> Vec<(String, String)> {
    let published = gateway.publisher.published();
    let mut pairs: Vec<(String, String)> = published
        .iter()
        .flat_map(|m| {
            shared_types::envelope::Envelope::decode(&m.body)
                .unwrap()
                .parts
        })
        .flat_map(|part| {
            let request_id = part.request_id.clone();
            part.events
                .into_iter()
                .map(move |e| (request_id.clone(), e.id))
        })
        .collect();
    pairs.sort();
    pairs
}

#[tokio::test]
async fn concurrent_single_events_each_keep_their_request_id_when_coalesced() {
    let gateway = spawn_gateway(&[("WARREN_COALESCE_LINGER_US", "2000")]).await;
    let mut sent = post_singles_at_once(&gateway, 40).await;
    sent.sort();
    assert_eq!(published_pairs(&gateway), sent);
}

#[tokio::test]
async fn with_coalescing_off_every_single_event_is_its_own_version_1_message() {
    let gateway = spawn_gateway(&[("WARREN_COALESCE_LINGER_US", "0")]).await;
    let mut sent = post_singles_at_once(&gateway, 20).await;
    sent.sort();
    assert_eq!(published_pairs(&gateway), sent);
    let published = gateway.publisher.published();
    assert_eq!(published.len(), 20);
    assert!(published
        .iter()
        .all(|m| m.content_type == shared_types::envelope::CONTENT_TYPE));
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
