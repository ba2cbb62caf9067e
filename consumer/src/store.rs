//! Writing events: one statement per batch and day, deduplicated on the storage key.
//!
//! Rows go in as `INSERT ... SELECT FROM UNNEST(arrays)`: a fixed statement with one bind per
//! column, whatever the batch size, which Postgres plans once and executes faster than a
//! multi-row VALUES list with a bind per cell.
//!
//! `events` is partitioned by the UTC day the gateway received an event (`received_on`, see
//! `migrations/`), and its unique key is `(source, id, received_on)`. A redelivery carries the
//! original `received_at`, so it meets its first copy in the same partition and `ON CONFLICT`
//! skips it. A client retry is a new request with a new `received_at`: the statement also checks
//! the partitions of the day before and the day after, so a retry across midnight is skipped
//! whichever copy a consumer writes first. The rows of a batch are grouped by day (one group, except around midnight), so each
//! statement names its day as a parameter and Postgres prunes to the one or two partitions it
//! touches.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{Array, Date, Jsonb, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::Value;
use shared_types::{EventData, RequestPart};

use crate::db::PgPool;
use crate::partitions;

const INSERT: &str = "\
INSERT INTO events (id, source, type, subject, time, datacontenttype, dataschema, data, \
                    data_base64, extensions, request_id, received_at, received_on) \
SELECT n.*, $13::date \
FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], \
            $6::text[], $7::text[], $8::jsonb[], $9::text[], $10::jsonb[], $11::text[], \
            $12::timestamptz[]) \
     AS n(id, source, type, subject, time, datacontenttype, dataschema, data, data_base64, \
          extensions, request_id, received_at) \
WHERE NOT EXISTS (SELECT 1 FROM events stored \
                  WHERE stored.source = n.source AND stored.id = n.id \
                    AND stored.received_on IN ($13::date - 1, $13::date + 1)) \
ON CONFLICT (source, id, received_on) DO NOTHING";

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

impl Columns {
    fn push_part(&mut self, part: &RequestPart) {
        for event in &part.events {
            self.id.push(event.id.clone());
            self.source.push(event.source.clone());
            self.event_type.push(event.event_type.clone());
            self.subject.push(event.subject.clone());
            self.time.push(event.time);
            self.datacontenttype.push(event.datacontenttype.clone());
            self.dataschema.push(event.dataschema.clone());
            let (data, data_base64) = match &event.data {
                Some(EventData::Json(value)) => (Some(value.clone()), None),
                Some(EventData::Base64(text)) => (None, Some(text.clone())),
                None => (None, None),
            };
            self.data.push(data);
            self.data_base64.push(data_base64);
            self.extensions.push(Value::Object(
                event
                    .extensions
                    .iter()
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect(),
            ));
            self.request_id.push(Some(part.request_id.clone()));
            self.received_at.push(part.received_at);
        }
    }
}

/// The partition day of an event received at `received_at`: its UTC date.
pub fn received_on(received_at: DateTime<Utc>) -> NaiveDate {
    received_at.date_naive()
}

/// The days the events of `parts` belong to.
pub fn days_of(parts: &[&RequestPart]) -> Vec<NaiveDate> {
    let mut days: Vec<NaiveDate> = parts.iter().map(|p| received_on(p.received_at)).collect();
    days.sort_unstable();
    days.dedup();
    days
}

/// Inserts every event of `parts`; returns how many rows were new (the rest were
/// duplicates of stored events and were skipped).
pub async fn insert_events(
    connection: &mut AsyncPgConnection,
    parts: &[&RequestPart],
) -> diesel::QueryResult<usize> {
    let mut by_day: BTreeMap<NaiveDate, Columns> = BTreeMap::new();
    for part in parts {
        by_day
            .entry(received_on(part.received_at))
            .or_default()
            .push_part(part);
    }
    let mut inserted = 0;
    for (day, columns) in by_day {
        if columns.id.is_empty() {
            continue;
        }
        inserted += diesel::sql_query(INSERT)
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
            .bind::<Date, _>(day)
            .execute(connection)
            .await?;
    }
    Ok(inserted)
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

/// One transaction for all `parts`; returns the number of new rows. When a day has no
/// partition yet (Postgres answers with a check violation: no partition for the row), it is
/// created and the transaction runs once more.
pub async fn write(pool: &PgPool, parts: &[&RequestPart]) -> Result<usize, WriteError> {
    let mut connection = pool
        .get()
        .await
        .map_err(|error| WriteError::Pool(error.to_string()))?;
    let attempt = connection
        .transaction(async |connection| insert_events(connection, parts).await)
        .await;
    let inserted = match attempt {
        Err(DieselError::DatabaseError(DatabaseErrorKind::CheckViolation, _)) => {
            for day in days_of(parts) {
                partitions::ensure(&mut connection, day).await?;
            }
            connection
                .transaction(async |connection| insert_events(connection, parts).await)
                .await?
        }
        other => other?,
    };
    Ok(inserted)
}
