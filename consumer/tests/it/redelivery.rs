//! A consumer that dies after its insert committed but before its ack loses nothing and
//! duplicates nothing: the broker redelivers, and the table key dedupes.

use lapin::options::BasicGetOptions;
use shared_types::Envelope;

use crate::helpers::{event, spawn_app};

#[tokio::test(flavor = "multi_thread")]
async fn consumer_stopped_between_insert_and_ack_stores_once() {
    let mut app = spawn_app().await;
    app.stop_consumer().await;
    assert_eq!(app.post_event(&event("order.placed")).await.status(), 202);
    let store_queue = app.topology().store_queue();
    app.wait_for_depth(&store_queue, 1).await;

    // Play the consumer up to the commit, with its own write function, then die without acking.
    let connection = app.amqp().await;
    let channel = connection.create_channel().await.unwrap();
    let message = channel
        .basic_get(
            store_queue.as_str().into(),
            BasicGetOptions { no_ack: false },
        )
        .await
        .unwrap()
        .expect("a message to take");
    let part = Envelope::decode_single(&message.delivery.data).unwrap();
    assert_eq!(
        consumer::write::store::write(
            &app.storage(),
            &[&part],
            consumer::write::store::RetryWindow::default(),
            consumer::write::store::Duplicates::Fail,
        )
        .await
        .unwrap(),
        1
    );
    drop(message);
    connection
        .close(200, "simulated crash before ack".into())
        .await
        .unwrap();
    app.wait_for_depth(&store_queue, 1).await;

    app.start_consumer().await;

    app.wait_for_depth(&store_queue, 0).await;
    // The redelivered message was processed: a later event is stored after it.
    assert_eq!(app.post_event(&event("order.placed")).await.status(), 202);
    app.wait_for_rows(2).await;
    assert_eq!(app.count_rows().await, 2);
    app.cleanup().await;
}
