//! `consumer teardown` (`Topology::remove`): a prefix's queues and exchanges go away, but a queue
//! that still holds events is only removed when forced.

use service_runtime::topology::RemoveError;

use crate::helpers::{event, spawn_app};

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_holding_events_is_kept_unless_removal_is_forced() {
    let mut app = spawn_app().await;
    app.stop_consumer().await;
    let response = app.post_batch(vec![event("held.event")]).await;
    assert_eq!(response.status(), 202);
    app.wait_for_depth(&app.topology().store_queue(), 1).await;
    app.stop_gateway().await;
    let connection = app.amqp().await;

    let refused = app.topology().remove(&connection, false).await;
    assert!(
        matches!(refused, Err(RemoveError::NotEmpty { messages: 1, .. })),
        "{refused:?}"
    );
    assert_eq!(app.queue_depth(&app.topology().store_queue()).await, 1);

    app.topology().remove(&connection, true).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let gone = channel
        .exchange_declare(
            app.topology().exchange().as_str().into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await;
    assert!(gone.is_err(), "the exchange is still there");
    service_runtime::amqp::close(&connection, "done").await;
    app.cleanup().await;
}
