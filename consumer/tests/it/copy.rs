//! Batches of new events received away from midnight are written with one `COPY`: every column
//! arrives as an insert would write it, and the copy is what wrote them.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use consumer::write::store::{Duplicates, RetryWindow};
use diesel::sql_types::{Date, Jsonb, Nullable, Text, Timestamptz};
use diesel_async::RunQueryDsl;
use serde_json::{json, Value};
use shared_types::{Event, EventData, RequestPart};

use crate::helpers::spawn_app;

#[derive(Debug, PartialEq, diesel::QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    source: String,
    #[diesel(sql_type = Text)]
    event_type: String,
    #[diesel(sql_type = Nullable<Text>)]
    subject: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    time: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Text>)]
    datacontenttype: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    dataschema: Option<String>,
    #[diesel(sql_type = Nullable<Jsonb>)]
    data: Option<Value>,
    #[diesel(sql_type = Nullable<Text>)]
    data_base64: Option<String>,
    #[diesel(sql_type = Jsonb)]
    extensions: Value,
    #[diesel(sql_type = Nullable<Text>)]
    request_id: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    received_at: DateTime<Utc>,
    #[diesel(sql_type = Date)]
    received_on: NaiveDate,
}

#[derive(diesel::QueryableByName)]
struct LastStatement {
    #[diesel(sql_type = Text)]
    query: String,
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_of_new_events_away_from_midnight_is_copied_with_every_column() {
    let app = spawn_app().await;
    let noon: DateTime<Utc> = "2025-03-12T12:00:00.123456Z".parse().unwrap();
    let day = noon.date_naive();
    let mut db = app.db().await;
    consumer::db::partitions::ensure(&mut db, day)
        .await
        .unwrap();

    let full = Event {
        id: "copied-full".into(),
        source: "https://example.com/copy".into(),
        event_type: "test.copied".into(),
        subject: Some("user/42".into()),
        time: Some("2025-03-12T11:59:58.5Z".parse().unwrap()),
        datacontenttype: Some("application/json".into()),
        dataschema: Some("https://example.com/schemas/copied".into()),
        data: Some(EventData::Json(
            json!({"n": 1, "path": "/p/é", "nested": {"list": [1, "two", null]}}),
        )),
        extensions: BTreeMap::from([
            ("traceparent".into(), json!("00-abc-def-01")),
            ("attempt".into(), json!(3)),
            ("sampled".into(), json!(true)),
        ]),
    };
    let bare = Event {
        id: "copied-bare".into(),
        source: "/copy".into(),
        event_type: "test.copied.bare".into(),
        subject: None,
        time: None,
        datacontenttype: None,
        dataschema: None,
        data: None,
        extensions: BTreeMap::new(),
    };
    let bytes = Event {
        id: "copied-bytes".into(),
        data: Some(EventData::Base64("AAECAw==".into())),
        datacontenttype: Some("application/octet-stream".into()),
        ..bare.clone()
    };
    let first = RequestPart::new("req-copy-1".into(), noon, vec![full.clone(), bare.clone()]);
    let second = RequestPart::new("req-copy-2".into(), noon, vec![bytes.clone()]);

    let storage = app.storage();
    let batch = [&first, &second];
    let write = || {
        consumer::write::store::write(&storage, &batch, RetryWindow::default(), Duplicates::Fail)
    };
    assert_eq!(write().await.unwrap(), 3);

    // The copy connection's last statement was the copy, and it finished (the connection idle).
    let last: Vec<LastStatement> = diesel::sql_query(
        "SELECT query FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'idle' \
           AND query LIKE 'COPY events %'",
    )
    .load(&mut db)
    .await
    .unwrap();
    assert_eq!(
        last.len(),
        1,
        "one idle connection whose last statement was the copy"
    );
    assert!(last[0].query.ends_with("FROM STDIN (FORMAT binary)"));

    let rows: Vec<Row> = diesel::sql_query(
        "SELECT id, source, type AS event_type, subject, time, datacontenttype, dataschema, data, \
                data_base64, extensions, request_id, received_at, received_on \
         FROM events ORDER BY id",
    )
    .load(&mut db)
    .await
    .unwrap();
    let row = |event: &Event, request_id: &str| Row {
        id: event.id.clone(),
        source: event.source.clone(),
        event_type: event.event_type.clone(),
        subject: event.subject.clone(),
        time: event.time,
        datacontenttype: event.datacontenttype.clone(),
        dataschema: event.dataschema.clone(),
        data: match &event.data {
            Some(EventData::Json(value)) => Some(value.clone()),
            _ => None,
        },
        data_base64: match &event.data {
            Some(EventData::Base64(text)) => Some(text.clone()),
            _ => None,
        },
        extensions: serde_json::to_value(&event.extensions).unwrap(),
        request_id: Some(request_id.into()),
        received_at: noon,
        received_on: day,
    };
    assert_eq!(
        rows,
        [
            row(&bare, "req-copy-1"),
            row(&bytes, "req-copy-2"),
            row(&full, "req-copy-1"),
        ]
    );

    // The same batch again is a redelivery: the copy meets the stored events and the batch is
    // written again skipping them.
    assert_eq!(write().await.unwrap(), 0);
    drop(db);
    app.cleanup().await;
}
