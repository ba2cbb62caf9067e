//! A message that cannot be decoded goes to the dead-letter queue; the consumer goes on.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::BasicProperties;

use crate::helpers::{event, spawn_app};

#[tokio::test(flavor = "multi_thread")]
async fn undecodable_message_is_dead_lettered_and_consumer_goes_on() {
    let app = spawn_app().await;
    let topology = app.topology();
    let connection = app.amqp().await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();

    let confirm = channel
        .basic_publish(
            topology.exchange().as_str().into(),
            "garbage".into(),
            BasicPublishOptions::default(),
            b"\x00 this is not an envelope",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());

    app.wait_for_depth(&topology.dead_letter_queue(), 1).await;
    assert_eq!(app.post_event(&event("after.garbage")).await.status(), 202);
    app.wait_for_rows(1).await;
    app.wait_for_depth(&topology.store_queue(), 0).await;
    let _ = connection.close(200, "done".into()).await;
    app.cleanup().await;
}
