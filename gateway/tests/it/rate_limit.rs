//! Per-key rate limits: a burst beyond the bucket gets 429 with the headers, then recovers.

use std::time::{Duration, Instant};

use crate::helpers::{error_code, event, spawn_gateway};

#[tokio::test]
async fn burst_beyond_the_bucket_gets_429_with_headers_then_recovers() {
    let gateway = spawn_gateway(&[
        ("WARREN_MAX_BATCH_EVENTS", "5"),
        ("WARREN_MAX_INFLIGHT_PUBLISHES", "100"),
        ("WARREN_INGEST_RATE_LIMIT", "5"),
        ("WARREN_INGEST_RATE_BURST", "10"),
    ])
    .await;
    let post = || gateway.post("application/cloudevents+json", event().to_string(), &[]);

    for sent in 1..=10 {
        let response = post().await;
        assert_eq!(response.status(), 202, "request {sent}");
        assert_eq!(response.headers()["ratelimit-limit"], "10");
        assert_eq!(
            response.headers()["ratelimit-remaining"],
            (10 - sent).to_string().as_str()
        );
    }
    let refused = post().await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(refused.headers()["ratelimit-remaining"], "0");
    assert!(refused.headers().contains_key("ratelimit-reset"));
    assert_eq!(error_code(refused).await, "rate_limited");
    assert_eq!(gateway.published_events(), 10);

    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let response = post().await;
        if response.status() == 202 {
            break;
        }
        assert_eq!(response.status(), 429);
        assert!(Instant::now() < deadline, "the bucket never refilled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gateway.published_events(), 11);
}
