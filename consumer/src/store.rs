//! Writing events: one statement per batch, deduplicated on (source, id).
//!
//! Rows go in as one `INSERT ... SELECT FROM UNNEST(arrays)`: a fixed statement with one bind per
//! column, whatever the batch size, which Postgres plans once and executes faster than a
//! multi-row VALUES list with a bind per cell.

use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, Jsonb, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::Value;
use shared_types::{EventData, RequestPart};

use crate::db::PgPool;

const INSERT: &str = "\
INSERT INTO events (id, source, type, subject, time, datacontenttype, dataschema, data, \
                    data_base64, extensions, request_id, received_at) \
SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], \
                     $6::text[], $7::text[], $8::jsonb[], $9::text[], $10::jsonb[], $11::text[], \
                     $12::timestamptz[]) \
ON CONFLICT (source, id) DO NOTHING";

/// Column arrays for one insert.
#[derive(Default)]
struct Columns {
    id: Vec<String>,
    source: Vec<String>,
    event_type: Vec<String>,
    subject: Vec<Option<String>>,
    time: Vec<Option<DateTime<Utc>>>,
    datacontenttype: Vec<Option<String>>,
    dataschema: Vec<Option<String>>,
    data: Vec<Option<Value>>,
    data_base64: Vec<Option<String>>,
    extensions: Vec<Value>,
    request_id: Vec<Option<String>>,
    received_at: Vec<DateTime<Utc>>,
}

/// Inserts every event of `parts`; returns how many rows were new (the rest were
/// duplicates of stored events and were skipped).
pub async fn insert_events(
    connection: &mut AsyncPgConnection,
    parts: &[&RequestPart],
) -> diesel::QueryResult<usize> {
    let mut columns = Columns::default();
    for part in parts {
        for event in &part.events {
            columns.id.push(event.id.clone());
            columns.source.push(event.source.clone());
            columns.event_type.push(event.event_type.clone());
            columns.subject.push(event.subject.clone());
            columns.time.push(event.time);
            columns.datacontenttype.push(event.datacontenttype.clone());
            columns.dataschema.push(event.dataschema.clone());
            let (data, data_base64) = match &event.data {
                Some(EventData::Json(value)) => (Some(value.clone()), None),
                Some(EventData::Base64(text)) => (None, Some(text.clone())),
                None => (None, None),
            };
            columns.data.push(data);
            columns.data_base64.push(data_base64);
            columns.extensions.push(Value::Object(
                event
                    .extensions
                    .iter()
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect(),
            ));
            columns.request_id.push(Some(part.request_id.clone()));
            columns.received_at.push(part.received_at);
        }
    }
    if columns.id.is_empty() {
        return Ok(0);
    }
    diesel::sql_query(INSERT)
        .bind::<Array<Text>, _>(columns.id)
        .bind::<Array<Text>, _>(columns.source)
        .bind::<Array<Text>, _>(columns.event_type)
        .bind::<Array<Nullable<Text>>, _>(columns.subject)
        .bind::<Array<Nullable<Timestamptz>>, _>(columns.time)
        .bind::<Array<Nullable<Text>>, _>(columns.datacontenttype)
        .bind::<Array<Nullable<Text>>, _>(columns.dataschema)
        .bind::<Array<Nullable<Jsonb>>, _>(columns.data)
        .bind::<Array<Nullable<Text>>, _>(columns.data_base64)
        .bind::<Array<Jsonb>, _>(columns.extensions)
        .bind::<Array<Nullable<Text>>, _>(columns.request_id)
        .bind::<Array<Timestamptz>, _>(columns.received_at)
        .execute(connection)
        .await
}

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// No pooled connection.
    #[error("no database connection: {0}")]
    Pool(String),
    /// The statement or the commit failed.
    #[error("{0}")]
    Query(#[from] diesel::result::Error),
}

/// One transaction for all `parts`; returns the number of new rows.
pub async fn write(pool: &PgPool, parts: &[&RequestPart]) -> Result<usize, WriteError> {
    let mut connection = pool
        .get()
        .await
        .map_err(|error| WriteError::Pool(error.to_string()))?;
    let inserted = connection
        .transaction(async |connection| insert_events(connection, parts).await)
        .await?;
    Ok(inserted)
}
