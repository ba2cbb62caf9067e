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
use std::sync::LazyLock;

use chrono::{DateTime, NaiveDate, Utc};
use diesel::pg::Pg;
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{Array, Date, Jsonb, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::Value;
use shared_types::{EventData, RequestPart};

use crate::db::partitions;
use crate::db::PgPool;

/// The columns a batch writes, in one list from which the struct of column arrays, the
/// statement's column list, its `UNNEST` parameters and the binds are all generated, so they
/// cannot disagree. A unit test ties the list to the diesel table in `db/tables.rs`.
macro_rules! written_columns {
    ($($field:ident: $rust:ty => $column:literal as $sql:literal $diesel:ty),+ $(,)?) => {
        /// Column arrays for one insert.
        #[derive(Default)]
        struct Columns {
            $($field: Vec<$rust>,)+
        }

        /// The written columns' names and SQL array element types, in bind order.
        const WRITTEN_COLUMNS: &[(&str, &str)] = &[$(($column, $sql)),+];

        impl Columns {
            /// Binds every array, in [`WRITTEN_COLUMNS`] order.
            fn bind_to(self, mut query: BoxedSqlQuery<'static, Pg, SqlQuery>) -> BoxedSqlQuery<'static, Pg, SqlQuery> {
                $(query = query.bind::<Array<$diesel>, _>(self.$field);)+
                query
            }
        }
    };
}

written_columns! {
    id: String => "id" as "text" Text,
    source: String => "source" as "text" Text,
    event_type: String => "type" as "text" Text,
    subject: Option<String> => "subject" as "text" Nullable<Text>,
    time: Option<DateTime<Utc>> => "time" as "timestamptz" Nullable<Timestamptz>,
    datacontenttype: Option<String> => "datacontenttype" as "text" Nullable<Text>,
    dataschema: Option<String> => "dataschema" as "text" Nullable<Text>,
    data: Option<Value> => "data" as "jsonb" Nullable<Jsonb>,
    data_base64: Option<String> => "data_base64" as "text" Nullable<Text>,
    extensions: Value => "extensions" as "jsonb" Jsonb,
    request_id: Option<String> => "request_id" as "text" Nullable<Text>,
    received_at: DateTime<Utc> => "received_at" as "timestamptz" Timestamptz,
}

/// The insert statement, written once from [`WRITTEN_COLUMNS`]; the day is the last parameter.
static INSERT: LazyLock<String> = LazyLock::new(|| insert_statement(WRITTEN_COLUMNS));

fn insert_statement(columns: &[(&str, &str)]) -> String {
    let names = columns
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ");
    let arrays = columns
        .iter()
        .enumerate()
        .map(|(index, (_, sql_type))| format!("${}::{sql_type}[]", index + 1))
        .collect::<Vec<_>>()
        .join(", ");
    let day = format!("${}::date", columns.len() + 1);
    format!(
        "INSERT INTO events ({names}, received_on) \
         SELECT n.*, {day} FROM UNNEST({arrays}) AS n({names}) \
         WHERE NOT EXISTS (SELECT 1 FROM events stored \
                           WHERE stored.source = n.source AND stored.id = n.id \
                             AND stored.received_on IN ({day} - 1, {day} + 1)) \
         ON CONFLICT (source, id, received_on) DO NOTHING"
    )
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
        inserted += columns
            .bind_to(diesel::sql_query(INSERT.as_str()).into_boxed())
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

#[cfg(test)]
mod tests {
    use diesel::query_dsl::QueryDsl;

    use super::*;
    use crate::db::tables::events;

    /// Columns the database fills in itself (`DEFAULT`s and generated columns): never written.
    const FILLED_BY_THE_DATABASE: [&str; 4] = ["seq", "specversion", "stored_at", "event_time"];

    /// The columns diesel's `events` table lists, read from the SQL diesel writes for it.
    fn table_columns() -> Vec<String> {
        let select =
            diesel::debug_query::<Pg, _>(&events::table.select(events::all_columns)).to_string();
        let list = select
            .trim_start_matches("SELECT ")
            .split(" FROM ")
            .next()
            .unwrap_or_default();
        list.split(", ")
            .map(|column| {
                column
                    .rsplit('.')
                    .next()
                    .unwrap_or_default()
                    .trim_matches('"')
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn the_written_columns_are_the_tables_columns_less_those_the_database_fills() {
        let expected: Vec<String> = table_columns()
            .into_iter()
            .filter(|column| !FILLED_BY_THE_DATABASE.contains(&column.as_str()))
            .collect();
        let written: Vec<String> = WRITTEN_COLUMNS
            .iter()
            .map(|(name, _)| (*name).to_owned())
            .collect();
        assert_eq!(written, expected);
    }

    #[test]
    fn the_statement_has_one_array_per_written_column_and_the_day_last() {
        let statement = INSERT.as_str();
        let last = WRITTEN_COLUMNS.len();
        assert!(
            statement.contains(&format!("${last}::timestamptz[])")),
            "{statement}"
        );
        assert!(
            statement.contains(&format!("${}::date", last + 1)),
            "{statement}"
        );
        assert!(
            !statement.contains(&format!("${}", last + 2)),
            "{statement}"
        );
    }
}
