//! Dead letters: undecodable messages and events the database refuses go to the dead-letter
//! queue with a readable reason, nothing else does, and `dlq replay` sends them back.

use diesel_async::RunQueryDsl;
use lapin::options::{
    BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use lapin::BasicProperties;
use serde_json::Value;
use shared_types::envelope::Envelope;

use crate::helpers::{event, spawn_app, spawn_app_with, TestApp};

async fn publish_garbage(app: &TestApp) {
    let connection = app.amqp().await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = channel
        .basic_publish(
            app.topology().exchange().as_str().into(),
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
    service_runtime::amqp::close(&connection, "done").await;
}

/// Takes one dead letter, returns (reason, body), and puts it back.
async fn peek_dead_letter(app: &TestApp) -> (String, Vec<u8>) {
    let (reason, body, _) = peek_dead_letter_encoded(app).await;
    (reason, body)
}

/// The first dead letter's reason, body and `content_encoding`, left in the queue.
async fn peek_dead_letter_encoded(app: &TestApp) -> (String, Vec<u8>, Option<String>) {
    let connection = app.amqp().await;
    let channel = connection.create_channel().await.unwrap();
    let message = channel
        .basic_get(
            app.topology().dead_letter_queue().as_str().into(),
            BasicGetOptions { no_ack: false },
        )
        .await
        .unwrap()
        .expect("a dead letter");
    let reason =
        consumer::write::dead_letter::reason_of(message.delivery.properties.headers().as_ref());
    let body = message.delivery.data.clone();
    let encoding = message
        .delivery
        .properties
        .content_encoding()
        .as_ref()
        .map(|e| e.to_string());
    channel
        .basic_nack(
            message.delivery.delivery_tag,
            BasicNackOptions {
                multiple: false,
                requeue: true,
            },
        )
        .await
        .unwrap();
    service_runtime::amqp::close(&connection, "done").await;
    (reason, body, encoding)
}

#[tokio::test(flavor = "multi_thread")]
async fn undecodable_message_is_dead_lettered_with_its_reason_and_consumer_goes_on() {
    let app = spawn_app().await;

    publish_garbage(&app).await;

    app.wait_for_depth(&app.topology().dead_letter_queue(), 1)
        .await;
    let (reason, body) = peek_dead_letter(&app).await;
    assert!(
        reason.starts_with("undecodable: malformed envelope"),
        "{reason}"
    );
    assert_eq!(body, b"\x00 this is not an envelope");
    assert_eq!(app.post_event(&event("after.garbage")).await.status(), 202);
    app.wait_for_rows(1).await;
    app.wait_for_depth(&app.topology().store_queue(), 0).await;
    app.cleanup().await;
}

async fn refuse_id(app: &TestApp, id: &str) {
    let mut db = app.db().await;
    diesel::sql_query(format!(
        "ALTER TABLE events ADD CONSTRAINT test_refuse CHECK (id <> '{id}')"
    ))
    .execute(&mut db)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn event_the_database_refuses_is_dead_lettered_alone() {
    let app = spawn_app().await;
    refuse_id(&app, "poison").await;
    let mut batch: Vec<Value> = (0..3).map(|_| event("order.placed")).collect();
    batch[1]["id"] = "poison".into();

    let response = app.post_batch(batch).await;

    assert_eq!(response.status(), 202);
    app.wait_for_rows(2).await;
    app.wait_for_depth(&app.topology().dead_letter_queue(), 1)
        .await;
    let (reason, body) = peek_dead_letter(&app).await;
    assert!(reason.contains("test_refuse"), "{reason}");
    let dead = Envelope::decode_single(&body).unwrap();
    assert_eq!(dead.events.len(), 1);
    assert_eq!(dead.events[0].id, "poison");
    app.wait_for_depth(&app.topology().store_queue(), 0).await;
    assert_eq!(app.count_rows().await, 2);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn compressed_batches_are_stored_and_a_refused_event_keeps_its_messages_encoding() {
    let app = spawn_app_with(&[("WARREN_PUBLISH_COMPRESSION", "lz4")]).await;
    refuse_id(&app, "poison").await;
    let mut batch: Vec<Value> = (0..20).map(|_| event("order.placed")).collect();
    batch[7]["id"] = "poison".into();

    assert_eq!(app.post_batch(batch).await.status(), 202);

    app.wait_for_rows(19).await;
    app.wait_for_depth(&app.topology().dead_letter_queue(), 1)
        .await;
    let (reason, body, encoding) = peek_dead_letter_encoded(&app).await;
    assert!(reason.contains("test_refuse"), "{reason}");
    // The dead letter carries the original message's properties, so its body is compressed too.
    assert_eq!(encoding.as_deref(), Some("lz4"));
    assert!(
        Envelope::decode(&body).is_err(),
        "the body is not plain JSON"
    );
    let dead = Envelope::decode_message(&body, encoding.as_deref()).unwrap();
    assert_eq!(dead.parts.len(), 1);
    assert_eq!(dead.parts[0].events.len(), 1);
    assert_eq!(dead.parts[0].events[0].id, "poison");
    app.wait_for_depth(&app.topology().store_queue(), 0).await;
    assert_eq!(app.count_rows().await, 19);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_event_among_coalesced_requests_is_dead_lettered_with_its_own_request_id() {
    let app = spawn_app_with(&[("WARREN_COALESCE_LINGER_US", "2000")]).await;
    refuse_id(&app, "poison").await;
    let mut singles: Vec<Value> = (0..10).map(|_| event("order.placed")).collect();
    singles[4]["id"] = "poison".into();

    let statuses = app.post_singles_at_once(&singles).await;

    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    app.wait_for_rows(9).await;
    app.wait_for_depth(&app.topology().dead_letter_queue(), 1)
        .await;
    let (reason, body) = peek_dead_letter(&app).await;
    assert!(reason.contains("test_refuse"), "{reason}");
    let dead = Envelope::decode(&body).unwrap();
    assert_eq!(dead.parts.len(), 1);
    assert_eq!(dead.parts[0].request_id, "single-4");
    assert_eq!(dead.parts[0].events.len(), 1);
    assert_eq!(dead.parts[0].events[0].id, "poison");
    app.wait_for_depth(&app.topology().store_queue(), 0).await;
    assert_eq!(app.count_rows().await, 9);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dlq_list_shows_reasons_and_replay_sends_them_back() {
    let app = spawn_app().await;
    refuse_id(&app, "poison").await;
    let mut poison = event("order.placed");
    poison["id"] = "poison".into();
    assert_eq!(app.post_event(&poison).await.status(), 202);
    publish_garbage(&app).await;
    let dead_queue = app.topology().dead_letter_queue();
    app.wait_for_depth(&dead_queue, 2).await;
    let connection = app.amqp().await;

    let report = consumer::write::dead_letter::admin::list(&connection, &app.topology(), 10)
        .await
        .unwrap();

    assert_eq!(report.total, 2);
    assert_eq!(report.shown.len(), 2);
    assert!(
        report.reasons.keys().any(|r| r.starts_with("undecodable")),
        "{:?}",
        report.reasons
    );
    assert!(
        report.reasons.keys().any(|r| r.contains("test_refuse")),
        "{:?}",
        report.reasons
    );
    app.wait_for_depth(&dead_queue, 2).await;

    // Once the database accepts the event, a replay stores it; the garbage comes back dead.
    let mut db = app.db().await;
    diesel::sql_query("ALTER TABLE events DROP CONSTRAINT test_refuse")
        .execute(&mut db)
        .await
        .unwrap();
    let replayed = consumer::write::dead_letter::admin::replay(&connection, &app.topology(), 10)
        .await
        .unwrap();
    assert_eq!(replayed, 2);
    app.wait_for_rows(1).await;
    app.wait_for_depth(&dead_queue, 1).await;
    app.wait_for_depth(&app.topology().store_queue(), 0).await;
    assert_eq!(app.count_rows().await, 1);
    service_runtime::amqp::close(&connection, "done").await;
    app.cleanup().await;
}
