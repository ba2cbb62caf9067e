//! After posting and querying, the listed series exist and moved.

use crate::helpers::{event, spawn_app, TestApp};

/// The sum of every sample of `name` (all label sets), or `None` when the series is absent.
fn value(text: &str, name: &str) -> Option<f64> {
    let samples: Vec<f64> = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.starts_with(name) && matches!(line.as_bytes().get(name.len()), Some(b' ' | b'{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    (!samples.is_empty()).then(|| samples.iter().sum())
}

async fn scrape(app: &TestApp) -> (String, String) {
    let gateway = app
        .client
        .get(app.gateway_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        gateway.headers()["content-type"],
        "text/plain; version=0.0.4"
    );
    let gateway = gateway.text().await.unwrap();
    let consumer = app
        .client
        .get(app.consumer_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    (gateway, consumer)
}

#[tokio::test(flavor = "multi_thread")]
async fn listed_series_exist_and_move_after_posting_and_querying() {
    let app = spawn_app().await;
    let (gateway_before, consumer_before) = scrape(&app).await;

    for _ in 0..3 {
        assert_eq!(app.post_event(&event("metrics.check")).await.status(), 202);
    }
    assert_eq!(app.post("application/json", "{}", &[]).await.status(), 400);
    app.wait_for_rows(3).await;
    let query = app
        .client
        .get(app.consumer_url("/v1/events?type=metrics.check"))
        .send()
        .await
        .unwrap();
    assert_eq!(query.status(), 200);

    let (gateway, consumer) = scrape(&app).await;
    let moved = |before: &str, after: &str, name: &str, by: f64| {
        let old = value(before, name).unwrap_or(0.0);
        let new = value(after, name).unwrap_or_else(|| panic!("{name} is missing"));
        assert!(
            new - old >= by,
            "{name} moved {old} -> {new}, expected +{by}"
        );
    };
    moved(
        &gateway_before,
        &gateway,
        "warren_gateway_requests_total",
        4.0,
    );
    moved(
        &gateway_before,
        &gateway,
        "warren_gateway_request_duration_seconds_count",
        4.0,
    );
    moved(
        &gateway_before,
        &gateway,
        "warren_gateway_events_accepted_total",
        3.0,
    );
    moved(
        &gateway_before,
        &gateway,
        "warren_gateway_events_rejected_total",
        1.0,
    );
    moved(
        &gateway_before,
        &gateway,
        "warren_gateway_publish_confirm_seconds_count",
        3.0,
    );
    for present in [
        "warren_gateway_publishes_in_flight",
        "warren_gateway_broker_connected",
    ] {
        assert!(value(&gateway, present).is_some(), "{present} is missing");
    }
    moved(
        &consumer_before,
        &consumer,
        "warren_consumer_deliveries_total",
        3.0,
    );
    moved(
        &consumer_before,
        &consumer,
        "warren_consumer_batch_events_count",
        1.0,
    );
    moved(
        &consumer_before,
        &consumer,
        "warren_consumer_batch_write_seconds_count",
        1.0,
    );
    moved(
        &consumer_before,
        &consumer,
        "warren_consumer_rows_inserted_total",
        3.0,
    );
    moved(
        &consumer_before,
        &consumer,
        "warren_consumer_acks_total",
        1.0,
    );
    moved(
        &consumer_before,
        &consumer,
        "warren_consumer_end_to_end_lag_seconds_count",
        3.0,
    );
    moved(
        &consumer_before,
        &consumer,
        "warren_consumer_query_duration_seconds_count",
        1.0,
    );
    for present in [
        "warren_consumer_duplicates_skipped_total",
        "warren_consumer_db_pool_connections_in_use",
    ] {
        assert!(value(&consumer, present).is_some(), "{present} is missing");
    }
    app.cleanup().await;
}
