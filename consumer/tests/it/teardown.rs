//! `consumer teardown` (`Topology::remove`): a prefix's queues and exchanges go away, but a queue
//! that still holds events is only removed when forced; subscriptions' queues are found in the
//! database and go with them.

use diesel_async::RunQueryDsl;
use service_runtime::topology::{is_not_found, RemoveError, Topology};

use crate::helpers::{event, postgres_base, spawn_app};

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

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriptions_queue_is_found_in_the_database_and_removed_with_its_prefix() {
    let mut app = spawn_app().await;
    let (id, _) = app
        .subscribe(serde_json::json!({"sink": "http://127.0.0.1:9/teardown"}))
        .await;
    let queue = consumer::deliver::queues::queue_name(&app.topology(), id.parse().unwrap());
    let response = app.post_batch(vec![event("held.event")]).await;
    assert_eq!(response.status(), 202);
    app.wait_for_depth(&queue, 1).await;
    app.stop_gateway().await;
    app.stop_consumer().await;

    let found = consumer::cli::subscription_queues(&app.db_url, &app.topology())
        .await
        .unwrap();
    assert_eq!(found, vec![queue.clone()]);
    let connection = app.amqp().await;
    let refused = app.topology().remove_with(&connection, &found, false).await;
    assert!(
        matches!(&refused, Err(RemoveError::NotEmpty { queue: kept, messages: 1 }) if *kept == queue),
        "{refused:?}"
    );
    assert_eq!(app.queue_depth(&queue).await, 1);

    app.topology()
        .remove_with(&connection, &found, true)
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let gone = channel
        .queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await;
    assert!(
        matches!(&gone, Err(error) if is_not_found(error)),
        "the subscription's queue is still there: {gone:?}"
    );
    service_runtime::amqp::close(&connection, "done").await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_never_migrated_has_no_subscription_queues() {
    let bare = format!(
        "warren_test_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    );
    let mut admin = consumer::db::connect(&format!("{}/postgres", postgres_base()))
        .await
        .unwrap();
    diesel::sql_query(format!("CREATE DATABASE \"{bare}\""))
        .execute(&mut admin)
        .await
        .unwrap();
    let found = consumer::cli::subscription_queues(
        &format!("{}/{bare}", postgres_base()),
        &Topology::new("test.bare"),
    )
    .await;
    diesel::sql_query(format!("DROP DATABASE \"{bare}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
    assert_eq!(found.unwrap(), Vec::<String>::new());
}
