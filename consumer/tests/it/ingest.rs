//! Events posted in every HTTP mode end up as exactly one row each.

use std::io::Write;

use diesel_async::RunQueryDsl;
use serde_json::{json, Value};

use crate::helpers::{event, spawn_app, spawn_app_with};

#[derive(diesel::QueryableByName, Debug)]
struct Row {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    #[diesel(column_name = "type")]
    event_type: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    subject: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Jsonb>)]
    data: Option<Value>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    data_base64: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Jsonb)]
    extensions: Value,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    request_id: Option<String>,
}

async fn rows(app: &crate::helpers::TestApp) -> Vec<Row> {
    let mut db = app.db().await;
    diesel::sql_query(
        "SELECT id, type, subject, data, data_base64, extensions, request_id FROM events ORDER BY seq",
    )
    .load(&mut db)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn structured_event_is_stored_with_its_attributes() {
    let app = spawn_app().await;
    let mut sent = event("order.placed");
    sent["subject"] = json!("order/1");
    sent["region"] = json!("eu1");
    sent["attempt"] = json!(3);
    sent["sampled"] = json!(true);

    let response = app.post_event(&sent).await;

    assert_eq!(response.status(), 202);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"accepted": 1})
    );
    app.wait_for_rows(1).await;
    let row = &rows(&app).await[0];
    assert_eq!(row.id, sent["id"].as_str().unwrap());
    assert_eq!(row.event_type, "order.placed");
    assert_eq!(row.subject.as_deref(), Some("order/1"));
    assert_eq!(row.data, Some(json!({"n": 1})));
    assert_eq!(
        row.extensions,
        json!({"region": "eu1", "attempt": 3, "sampled": true})
    );
    assert_eq!(row.request_id.as_deref(), Some(request_id.as_str()));
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_event_is_stored_with_header_attributes() {
    let app = spawn_app().await;

    let response = app
        .post(
            "application/octet-stream",
            vec![0u8, 1, 2, 3],
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "bin-1"),
                ("ce-source", "/tests/binary"),
                ("ce-type", "blob.uploaded"),
                ("ce-subject", "files/7"),
            ],
        )
        .await;

    assert_eq!(response.status(), 202);
    app.wait_for_rows(1).await;
    let row = &rows(&app).await[0];
    assert_eq!(row.id, "bin-1");
    assert_eq!(row.subject.as_deref(), Some("files/7"));
    assert_eq!(row.data_base64.as_deref(), Some("AAECAw=="));
    assert_eq!(row.data, None);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_of_500_events_is_stored() {
    let app = spawn_app().await;
    let batch: Vec<Value> = (0..500)
        .map(|i| {
            event(if i % 2 == 0 {
                "page.viewed"
            } else {
                "page.left"
            })
        })
        .collect();

    let response = app.post_batch(batch).await;

    assert_eq!(response.status(), 202);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"accepted": 500})
    );
    app.wait_for_rows(500).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_batch_is_stored() {
    let app = spawn_app().await;
    let batch = Value::Array((0..50).map(|_| event("page.viewed")).collect()).to_string();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(batch.as_bytes()).unwrap();
    let compressed = encoder.finish().unwrap();

    let response = app
        .post(
            "application/json",
            compressed,
            &[("content-encoding", "gzip")],
        )
        .await;

    assert_eq!(response.status(), 202);
    app.wait_for_rows(50).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn same_event_posted_twice_is_stored_once() {
    let app = spawn_app().await;
    let sent = event("order.placed");

    assert_eq!(app.post_event(&sent).await.status(), 202);
    assert_eq!(app.post_event(&sent).await.status(), 202);
    // A later, different event proves both earlier messages were processed.
    assert_eq!(app.post_event(&event("order.placed")).await.status(), 202);

    app.wait_for_rows(2).await;
    app.wait_for_depth(&app.topology().store_queue(), 0).await;
    assert_eq!(app.count_rows().await, 2);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_with_one_invalid_event_is_refused_whole() {
    let app = spawn_app().await;
    let mut batch: Vec<Value> = (0..3).map(|_| event("page.viewed")).collect();
    batch[1]["specversion"] = json!("0.3");

    let response = app.post_batch(batch).await;

    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_event");
    assert_eq!(body["error"]["details"][0]["index"], 1);
    assert_eq!(body["error"]["details"][0]["code"], "invalid_specversion");
    // Nothing was published: a sentinel posted afterwards is the only row.
    assert_eq!(app.post_event(&event("sentinel")).await.status(), 202);
    app.wait_for_rows(1).await;
    app.wait_for_depth(&app.topology().store_queue(), 0).await;
    assert_eq!(app.count_rows().await, 1);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_object_gets_400_naming_each_missing_attribute() {
    let app = spawn_app().await;

    let response = app.post("application/json", "{}", &[]).await;

    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    let pointers: Vec<&str> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(pointers, ["/specversion", "/id", "/source", "/type"]);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn coalesced_single_events_are_stored_each_with_its_own_request_id() {
    let app = spawn_app_with(&[("WARREN_COALESCE_LINGER_US", "2000")]).await;
    let sent: Vec<Value> = (0..30).map(|_| event("page.viewed")).collect();

    let statuses = app.post_singles_at_once(&sent).await;

    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    app.wait_for_rows(30).await;
    let stored: std::collections::HashMap<String, Option<String>> = rows(&app)
        .await
        .into_iter()
        .map(|row| (row.id, row.request_id))
        .collect();
    for (n, event) in sent.iter().enumerate() {
        let request_id = stored[event["id"].as_str().unwrap()].as_deref();
        assert_eq!(request_id, Some(format!("single-{n}").as_str()));
    }
    app.cleanup().await;
}
