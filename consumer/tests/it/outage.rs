//! A database outage holds the batch: nothing is acknowledged, nothing is dead-lettered, and
//! everything is stored once the database is back.

use std::time::Duration;

use diesel_async::RunQueryDsl;
use serde_json::Value;

use crate::helpers::{event, postgres_base, spawn_app};

async fn admin(sql: String) {
    let mut admin = consumer::db::connect(&format!("{}/postgres", postgres_base()))
        .await
        .unwrap();
    diesel::sql_query(sql).execute(&mut admin).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn database_outage_holds_deliveries_and_loses_nothing() {
    let app = spawn_app().await;
    let name = app.db_name.clone();
    admin(format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false")).await;
    admin(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    ))
    .await;

    let batch: Vec<Value> = (0..20).map(|_| event("during.outage")).collect();
    let response = app.post_batch(batch).await;
    assert_eq!(response.status(), 202);
    // Several write attempts fail and back off while the deliveries stay held.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while app
        .consumer_counter("warren_consumer_write_failures_total")
        .await
        < 3.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the consumer never retried the write"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        app.queue_depth(&app.topology().dead_letter_queue()).await,
        0
    );

    admin(format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true")).await;

    app.wait_for_rows(20).await;
    app.wait_for_depth(&app.topology().store_queue(), 0).await;
    assert_eq!(
        app.queue_depth(&app.topology().dead_letter_queue()).await,
        0
    );
    app.cleanup().await;
}
