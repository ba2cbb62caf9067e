//! The read API on a real PostgreSQL streaming replica (`scripts/replica`): queries are served
//! from it while the primary ingests, its lag is exported, and when it is down queries get a
//! clear 503 while ingest goes on.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use diesel_async::RunQueryDsl;
use serde_json::Value;

use crate::helpers::{event, spawn_app_with};

/// A standby made by scripts/replica; stopped and removed on drop.
struct Replica {
    dir: PathBuf,
    base_url: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/replica")
}

impl Replica {
    fn start() -> Replica {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = PathBuf::from(format!(
            "/var/tmp/warren-test-replica-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let output = Command::new(script())
            .arg("start")
            .arg(&dir)
            .arg(port.to_string())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "scripts/replica start failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Replica {
            dir,
            base_url: String::from_utf8(output.stdout).unwrap().trim().to_owned(),
        }
    }

    fn stop(&self) {
        let _ = Command::new(script()).arg("stop").arg(&self.dir).output();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(diesel::QueryableByName)]
struct LatestMigration {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    version: Option<String>,
}

/// The newest migration applied to the database `connection` is on, if it has any.
async fn latest_migration(connection: &mut diesel_async::AsyncPgConnection) -> Option<String> {
    diesel::sql_query("SELECT max(version) AS version FROM __diesel_schema_migrations")
        .get_result::<LatestMigration>(connection)
        .await
        .ok()
        .and_then(|latest| latest.version)
}

#[derive(diesel::QueryableByName)]
struct Recovery {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    in_recovery: bool,
}

#[tokio::test(flavor = "multi_thread")]
async fn the_read_api_is_served_from_a_streaming_replica_and_a_dead_replica_is_a_503() {
    let replica = Replica::start();
    let read_url = format!("{}/{{db}}", replica.base_url);
    let app = spawn_app_with(&[("WARREN_DATABASE_READ_URL", read_url.as_str())]).await;
    let replica_db = format!("{}/{}", replica.base_url, app.db_name);
    let source = "/tests";

    // The replica replays the primary's WAL asynchronously: wait until it has this test's
    // database and every migration (applied on the primary a moment ago, each in its own
    // transaction) before reading from it. The `events` table alone is not enough: a query also
    // reads the dictionaries a later migration makes, and a slow machine's replica can be
    // between the two.
    let applied = latest_migration(&mut app.db().await).await;
    assert!(applied.is_some(), "the primary has no migrations");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let replayed = match consumer::db::connect(&replica_db).await {
            Ok(mut standby) => latest_migration(&mut standby).await == applied,
            Err(_) => false,
        };
        if replayed {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replica never received the test's database"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Full ingest on the primary while the read API answers from the replica.
    let batches = 10;
    let ingest = {
        let client = app.client.clone();
        let url = app.gateway_url("/v1/events");
        tokio::spawn(async move {
            for _ in 0..batches {
                let body: Vec<Value> = (0..500).map(|_| event("replica.load")).collect();
                let response = client
                    .post(&url)
                    .header("content-type", "application/cloudevents-batch+json")
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202);
            }
        })
    };
    let list = format!("/v1/events?source={source}&type=replica.load&limit=1000");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut answered = 0;
    loop {
        let response = app
            .client
            .get(app.consumer_url(&list))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let page: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "a query failed during ingest: {page}");
        answered += 1;
        if page["events"].as_array().unwrap().len() == 1000 && ingest.is_finished() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replica never showed the events"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ingest.await.unwrap();
    assert!(answered > 1);
    // The read URL is a standby, not the primary.
    let mut standby = consumer::db::connect(&replica_db).await.unwrap();
    let recovery: Recovery = diesel::sql_query("SELECT pg_is_in_recovery() AS in_recovery")
        .get_result(&mut standby)
        .await
        .unwrap();
    assert!(recovery.in_recovery);
    drop(standby);
    // The lag the consumer sees is exported.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let text = app.consumer_metrics().await;
        if text.contains("warren_consumer_replica_lag_seconds ") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no replica lag metric"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The replica goes away: queries get a clear, retryable 503; ingest is not affected.
    replica.stop();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let response = app
            .client
            .get(app.consumer_url(&list))
            .send()
            .await
            .unwrap();
        if response.status() == 503 {
            break response;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queries still answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "database_unavailable");
    let response = app
        .post_batch((0..20).map(|_| event("after.replica")).collect())
        .await;
    assert_eq!(response.status(), 202);
    app.wait_for_rows(batches * 500 + 20).await;
    let ready: Value = app
        .client
        .get(app.consumer_url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["checks"]["read_database"], false, "{ready}");
    app.cleanup().await;
}
