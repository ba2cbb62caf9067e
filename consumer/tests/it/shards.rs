//! The sharded store (`WARREN_STORE_SHARDS`): events spread over the shard queues through the
//! consistent-hash exchange, every shard consumed, and a switch from one shard to several that
//! drains what the single store queue held.

use crate::helpers::{event, spawn_app, spawn_app_with};

#[tokio::test(flavor = "multi_thread")]
async fn events_spread_over_the_shards_and_every_shard_is_stored() {
    let mut app = spawn_app_with(&[("WARREN_STORE_SHARDS", "3")]).await;
    let topology = app.topology();
    let shards = topology.store_queues();
    assert_eq!(shards.len(), 3);
    // With the consumer stopped the shards keep what they are routed.
    app.stop_consumer().await;
    for n in 0..30 {
        let response = app
            .post_event(&event(&format!("shard.test.{}", n % 2)))
            .await;
        assert_eq!(response.status(), 202);
    }

    let mut depths = Vec::new();
    for shard in &shards {
        depths.push(app.queue_depth(shard).await);
    }
    assert!(depths.iter().all(|&depth| depth > 0), "depths {depths:?}");

    app.start_consumer().await;
    app.wait_for_rows(30).await;
    for shard in &shards {
        app.wait_for_depth(shard, 0).await;
    }
    assert_eq!(app.count_rows().await, 30);
    // The consumer reports each shard's depth.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(12);
    loop {
        let metrics = app.consumer_metrics().await;
        let reported = shards.iter().all(|shard| {
            metrics.contains(&format!(
                "warren_consumer_store_queue_messages{{queue=\"{shard}\"}} 0"
            ))
        });
        if reported {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn going_from_one_shard_to_three_drains_the_single_queue() {
    let mut app = spawn_app().await;
    let single = app.topology().store_queue();
    // Events wait in the single store queue while no consumer runs.
    app.stop_consumer().await;
    for _ in 0..5 {
        assert_eq!(
            app.post_event(&event("before.the.switch")).await.status(),
            202
        );
    }
    app.wait_for_depth(&single, 5).await;
    app.stop_gateway().await;

    // Consumers first, then gateways, all with three shards: the consumer drains the single
    // queue, which no longer receives anything.
    app.set_env("WARREN_STORE_SHARDS", "3");
    app.start_consumer().await;
    app.start_gateway().await;
    app.wait_for_rows(5).await;
    app.wait_for_depth(&single, 0).await;
    app.stop_consumer().await;
    for _ in 0..6 {
        assert_eq!(
            app.post_event(&event("after.the.switch")).await.status(),
            202
        );
    }
    let mut routed = 0;
    for shard in app.topology().store_queues() {
        routed += app.queue_depth(&shard).await;
    }
    assert_eq!(app.queue_depth(&single).await, 0);
    assert!(routed >= 1, "nothing reached the shards");

    app.start_consumer().await;
    app.wait_for_rows(11).await;
    for shard in app.topology().store_queues() {
        app.wait_for_depth(&shard, 0).await;
    }
    assert_eq!(app.count_rows().await, 11);
    app.cleanup().await;
}
