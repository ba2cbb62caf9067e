//! Several batch writes in flight per consumer (`WARREN_WRITES_IN_FLIGHT`): the writes overlap,
//! and still every event is stored once and every delivery is acknowledged, also when the
//! consumer stops while writes are running.

use std::time::Duration;

use crate::helpers::{event, spawn_app_with, TestApp};

/// Batches the tests post, each its own write (the write batch closes at its size).
const BATCHES: usize = 6;
const EVENTS_PER_BATCH: usize = 50;
/// Added before every write, so that writes one after another take at least this each.
const WRITE_DELAY_MS: u64 = 400;

async fn app_with_queued_batches() -> TestApp {
    let mut app = spawn_app_with(&[
        ("WARREN_WRITES_IN_FLIGHT", "3"),
        ("WARREN_TEST_WRITE_DELAY_MS", "400"),
        ("WARREN_WRITE_BATCH_EVENTS", "50"),
    ])
    .await;
    app.stop_consumer().await;
    for _ in 0..BATCHES {
        let events = (0..EVENTS_PER_BATCH)
            .map(|_| event("order.placed"))
            .collect();
        assert_eq!(app.post_batch(events).await.status(), 202);
    }
    app
}

/// Ready messages left in every store queue, after the broker has had time to requeue what a
/// closed channel left unacknowledged.
async fn messages_left(app: &TestApp) -> u32 {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut left = 0;
    for queue in app.topology().store_queues() {
        left += app.queue_depth(&queue).await;
    }
    left
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_overlap_and_every_event_is_stored_once_and_acknowledged() {
    let mut app = app_with_queued_batches().await;
    let started = tokio::time::Instant::now();
    app.start_consumer().await;
    app.wait_for_rows((BATCHES * EVENTS_PER_BATCH) as i64).await;
    let took = started.elapsed();
    // One write after another cannot be faster than the delays added up.
    let one_after_another = Duration::from_millis(WRITE_DELAY_MS * BATCHES as u64);
    assert!(
        took < one_after_another,
        "{BATCHES} writes took {took:?}: they did not overlap"
    );
    app.stop_consumer().await;
    assert_eq!(messages_left(&app).await, 0, "every delivery was acked");
    assert_eq!(app.count_rows().await, (BATCHES * EVENTS_PER_BATCH) as i64);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stopping_with_writes_in_flight_finishes_them_and_loses_nothing() {
    let mut app = app_with_queued_batches().await;
    app.start_consumer().await;
    // Stop while the first writes are still in their delay.
    tokio::time::sleep(Duration::from_millis(WRITE_DELAY_MS / 4)).await;
    assert_eq!(
        app.count_rows().await,
        0,
        "stopped before any write committed"
    );
    app.stop_consumer().await;
    let stored = app.count_rows().await;
    assert!(
        stored > 0,
        "the writes in flight were finished on the way out"
    );
    // What was stored was acknowledged, and only that: the rest waits in the queue.
    let left = messages_left(&app).await;
    assert_eq!(
        stored as usize + left as usize * EVENTS_PER_BATCH,
        BATCHES * EVENTS_PER_BATCH
    );
    app.start_consumer().await;
    app.wait_for_rows((BATCHES * EVENTS_PER_BATCH) as i64).await;
    app.stop_consumer().await;
    assert_eq!(messages_left(&app).await, 0);
    app.cleanup().await;
}
