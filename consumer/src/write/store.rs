//! Writing events: one statement per batch and day, deduplicated on the storage key.
//!
//! Rows go in as `INSERT ... SELECT FROM UNNEST(arrays)`: a fixed statement with one bind per
//! column, whatever the batch size, which Postgres plans once and executes faster than a
//! multi-row VALUES list with a bind per cell.
//!
//! `events` is partitioned by the UTC day the gateway received an event (`received_on`, a week per
//! partition, see `migrations/`), and its unique key is `(source_id, id, received_on)`. A
//! redelivery carries the original `received_at`, so it meets its first copy in the same partition
//! and `ON CONFLICT` skips it. A client retry is a new request with a new `received_at`: an event
//! received within the retry window ([`RetryWindow`], `WARREN_DEDUP_RETRY_WINDOW_SECS`) of midnight
//! is also looked for under the neighbouring day, so a retry across midnight is skipped whichever
//! copy a consumer writes first. Events further from midnight skip that probe: two index lookups
//! per row that almost never find anything. The rows of a batch are grouped by day and by which
//! neighbours they probe (one group, except near midnight), so each statement names its day as a
//! parameter and Postgres prunes to the partitions it touches.
//!
//! A batch of new messages is first written as one `COPY` ([`super::copy`]) or, when some of its
//! events are near midnight, as a plain `INSERT`; the unique storage key guards both: each fails
//! with a unique violation if any row is stored already, and the batch is then written again with
//! `ON CONFLICT DO NOTHING`, as a batch holding a redelivered message is at once. Duplicates are
//! rare (redeliveries and client retries), and `ON CONFLICT` costs every row a second descent of
//! the storage key, a speculative-insertion lock and one more WAL record (docs/benchmarks.md,
//! thirty-seventh round).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::LazyLock;

use bytes::BufMut as _;
use chrono::{DateTime, NaiveDate, Utc};
use diesel::pg::Pg;
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::{Array, Date, Integer, Jsonb, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::Value;
use shared_types::{EventData, RequestPart};

use crate::db::partitions;
use crate::db::PgPool;
use crate::write::copy::{self, CopyError, CopyPool, RowWriter};
use crate::write::key_ids::{KeyIds, Resolved};

/// The columns a batch writes, in one list from which the struct of column arrays, the
/// statement's column list, its `UNNEST` parameters and the binds are all generated, so they
/// cannot disagree. A unit test ties the list to the diesel table in `db/tables.rs`.
macro_rules! written_columns {
    ($($field:ident: $rust:ty => $column:literal as $sql:literal $diesel:ty),+ $(,)?) => {
        /// Column arrays for one insert, borrowing the batch's events: nothing is copied, and a
        /// batch written again (after a unique violation) binds the same events again.
        #[derive(Default)]
        pub(super) struct Columns<'a> {
            $($field: Vec<$rust>,)+
        }

        /// The written columns' names and SQL array element types, in bind order.
        pub(super) const WRITTEN_COLUMNS: &[(&str, &str)] = &[$(($column, $sql)),+];

        impl<'a> Columns<'a> {
            /// Binds every array, in [`WRITTEN_COLUMNS`] order.
            fn bind_to<'q>(
                &'q self,
                mut query: BoxedSqlQuery<'q, Pg, SqlQuery>,
            ) -> BoxedSqlQuery<'q, Pg, SqlQuery> {
                $(query = query.bind::<Array<$diesel>, _>(&self.$field);)+
                query
            }

            /// Appends row `row`'s written columns to a copy, in [`WRITTEN_COLUMNS`] order.
            pub(super) fn copy_row(
                &self,
                row: usize,
                writer: &mut RowWriter<'_>,
            ) -> Result<(), CopyError> {
                $(writer.field(&self.$field[row])?;)+
                Ok(())
            }
        }
    };
}

written_columns! {
    id: &'a str => "id" as "text" Text,
    source: &'a str => "source" as "text" Text,
    event_type: &'a str => "type" as "text" Text,
    subject: Option<&'a str> => "subject" as "text" Nullable<Text>,
    time: Option<DateTime<Utc>> => "time" as "timestamptz" Nullable<Timestamptz>,
    datacontenttype: Option<&'a str> => "datacontenttype" as "text" Nullable<Text>,
    dataschema: Option<&'a str> => "dataschema" as "text" Nullable<Text>,
    data: Option<&'a Value> => "data" as "jsonb" Nullable<Jsonb>,
    data_base64: Option<&'a str> => "data_base64" as "text" Nullable<Text>,
    extensions: ExtensionsJson<'a> => "extensions" as "jsonb" Jsonb,
    request_id: Option<&'a str> => "request_id" as "text" Nullable<Text>,
    received_at: DateTime<Utc> => "received_at" as "timestamptz" Timestamptz,
    source_id: i32 => "source_id" as "int4" Integer,
    type_id: i32 => "type_id" as "int4" Integer,
}

/// An event's extension attributes bound as one `jsonb` object, written straight from the
/// event's map (as diesel writes a `serde_json::Value`: the format version byte, then the text).
#[derive(Debug)]
struct ExtensionsJson<'a>(&'a BTreeMap<String, Value>);

impl ToSql<Jsonb, Pg> for ExtensionsJson<'_> {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        out.write_all(&[JSONB_FORMAT_VERSION])?;
        serde_json::to_writer(out, self.0)?;
        Ok(IsNull::No)
    }
}

/// The same `jsonb` value for a copy (tokio-postgres' binary encoding).
impl tokio_postgres::types::ToSql for ExtensionsJson<'_> {
    fn to_sql(
        &self,
        _: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.put_u8(JSONB_FORMAT_VERSION);
        serde_json::to_writer(out.writer(), self.0)?;
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(column_type: &tokio_postgres::types::Type) -> bool {
        *column_type == tokio_postgres::types::Type::JSONB
    }

    tokio_postgres::types::to_sql_checked!();
}

/// The first byte of a `jsonb` value in PostgreSQL's binary format.
const JSONB_FORMAT_VERSION: u8 = 1;

/// How long after a client's first attempt its retry is still deduplicated when the two fall on
/// either side of midnight (UTC). Retries on the same day are always deduplicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryWindow(pub chrono::Duration);

impl Default for RetryWindow {
    /// One hour (`WARREN_DEDUP_RETRY_WINDOW_SECS`, default 3600).
    fn default() -> Self {
        Self(chrono::Duration::hours(1))
    }
}

/// Which neighbouring days' partitions an insert looks in for an earlier copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Neighbours {
    None,
    Before,
    After,
    Both,
}

impl Neighbours {
    /// The neighbours an event received at `received_at` must look in, given the window.
    fn of(received_at: DateTime<Utc>, window: RetryWindow) -> Self {
        let day_start = received_on(received_at)
            .and_hms_opt(0, 0, 0)
            .map(|start| start.and_utc())
            .unwrap_or(received_at);
        let since_start = received_at - day_start;
        let until_end = chrono::Duration::days(1) - since_start;
        match (since_start < window.0, until_end <= window.0) {
            (false, false) => Self::None,
            (true, false) => Self::Before,
            (false, true) => Self::After,
            (true, true) => Self::Both,
        }
    }
}

/// What a write's insert does with a row whose storage key is stored already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duplicates {
    /// None expected (new messages): a plain `INSERT`, which fails on one (a unique violation),
    /// and [`write`] then writes the batch again with [`Duplicates::Skip`].
    Fail,
    /// Some likely (redelivered messages): `ON CONFLICT DO NOTHING` skips them.
    Skip,
}

/// The insert statements, written once from [`WRITTEN_COLUMNS`] for each [`Duplicates`] and
/// [`Neighbours`]; the day is the last parameter.
static INSERT: LazyLock<[[String; 4]; 2]> = LazyLock::new(|| {
    [Duplicates::Fail, Duplicates::Skip].map(|duplicates| {
        [
            Neighbours::None,
            Neighbours::Before,
            Neighbours::After,
            Neighbours::Both,
        ]
        .map(|neighbours| insert_statement(WRITTEN_COLUMNS, neighbours, duplicates))
    })
});

fn insert_statement(
    columns: &[(&str, &str)],
    neighbours: Neighbours,
    duplicates: Duplicates,
) -> String {
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
    let probed_days = match neighbours {
        Neighbours::None => None,
        Neighbours::Before => Some(format!("= {day} - 1")),
        Neighbours::After => Some(format!("= {day} + 1")),
        Neighbours::Both => Some(format!("IN ({day} - 1, {day} + 1)")),
    };
    let probe = match probed_days {
        None => String::new(),
        Some(days) => format!(
            " WHERE NOT EXISTS (SELECT 1 FROM events stored \
                                WHERE stored.source_id = n.source_id AND stored.id = n.id \
                                  AND stored.received_on {days})"
        ),
    };
    let on_conflict = match duplicates {
        Duplicates::Fail => "",
        Duplicates::Skip => " ON CONFLICT (source_id, id, received_on) DO NOTHING",
    };
    format!(
        "INSERT INTO events ({names}, received_on) \
         SELECT n.*, {day} FROM UNNEST({arrays}) AS n({names}){probe}{on_conflict}"
    )
}

impl<'a> Columns<'a> {
    /// Adds the events of `part`, with the source and type ids in `ids`.
    pub(super) fn push_part(
        &mut self,
        part: &'a RequestPart,
        ids: &Resolved,
    ) -> diesel::QueryResult<()> {
        for event in &part.events {
            let unresolved = |what: &str, name: &str| {
                DieselError::QueryBuilderError(
                    format!("no id was resolved for {what} {name}").into(),
                )
            };
            self.source_id.push(
                ids.source(&event.source)
                    .ok_or_else(|| unresolved("source", &event.source))?,
            );
            self.type_id.push(
                ids.event_type(&event.event_type)
                    .ok_or_else(|| unresolved("type", &event.event_type))?,
            );
            self.id.push(&event.id);
            self.source.push(&event.source);
            self.event_type.push(&event.event_type);
            self.subject.push(event.subject.as_deref());
            self.time.push(event.time);
            self.datacontenttype.push(event.datacontenttype.as_deref());
            self.dataschema.push(event.dataschema.as_deref());
            let (data, data_base64) = match &event.data {
                Some(EventData::Json(value)) => (Some(value), None),
                Some(EventData::Base64(text)) => (None, Some(text.as_str())),
                None => (None, None),
            };
            self.data.push(data);
            self.data_base64.push(data_base64);
            self.extensions.push(ExtensionsJson(&event.extensions));
            self.request_id.push(Some(&part.request_id));
            self.received_at.push(part.received_at);
        }
        Ok(())
    }
}

impl Columns<'_> {
    /// How many rows the arrays hold.
    pub(super) fn len(&self) -> usize {
        self.id.len()
    }

    /// The partition day of each row, in row order.
    pub(super) fn days(&self) -> impl Iterator<Item = NaiveDate> + '_ {
        self.received_at.iter().map(|at| received_on(*at))
    }
}

/// Whether an event received at `received_at` is looked for under a neighbouring day too.
pub(super) fn probes_neighbours(received_at: DateTime<Utc>, window: RetryWindow) -> bool {
    Neighbours::of(received_at, window) != Neighbours::None
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

/// The ids of every source and type `parts` carry (see [`KeyIds::resolve`]: outside the
/// batch's transaction).
pub async fn resolve_ids(
    connection: &mut AsyncPgConnection,
    key_ids: &KeyIds,
    parts: &[&RequestPart],
) -> diesel::QueryResult<Resolved> {
    let events = || parts.iter().flat_map(|part| part.events.iter());
    key_ids
        .resolve(
            connection,
            events().map(|event| event.source.as_str()),
            events().map(|event| event.event_type.as_str()),
        )
        .await
}

/// Inserts every event of `parts`, with the source and type ids in `ids`; returns how many rows
/// were new (with [`Duplicates::Skip`], the rest were duplicates of stored events and were
/// skipped; with [`Duplicates::Fail`], a duplicate fails the statement).
async fn insert_events(
    connection: &mut AsyncPgConnection,
    parts: &[&RequestPart],
    ids: &Resolved,
    window: RetryWindow,
    duplicates: Duplicates,
) -> diesel::QueryResult<usize> {
    let mut groups: BTreeMap<(NaiveDate, Neighbours), Columns<'_>> = BTreeMap::new();
    for part in parts.iter().copied() {
        let key = (
            received_on(part.received_at),
            Neighbours::of(part.received_at, window),
        );
        groups.entry(key).or_default().push_part(part, ids)?;
    }
    let mut inserted = 0;
    for ((day, neighbours), columns) in groups {
        if columns.id.is_empty() {
            continue;
        }
        inserted += columns
            .bind_to(
                diesel::sql_query(INSERT[duplicates as usize][neighbours as usize].as_str())
                    .into_boxed(),
            )
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
    /// The copy of a batch of new events failed.
    #[error("{0}")]
    Copy(#[from] CopyError),
}

/// Where a worker stores events: its database's pools and the ids it has learned from that
/// database.
pub struct Storage {
    /// The write pool.
    pub pool: PgPool,
    /// The connections batches of new events are copied over ([`copy`]).
    pub copies: CopyPool,
    /// Ids of the sources and types seen so far.
    pub key_ids: KeyIds,
}

impl Storage {
    /// A store on `pool` and `copies` that has learned no ids yet.
    pub fn new(pool: PgPool, copies: CopyPool) -> Self {
        Self {
            pool,
            copies,
            key_ids: KeyIds::default(),
        }
    }
}

/// One transaction for all `parts`; returns the number of new rows. The first attempt treats
/// stored events as `duplicates` says: new messages away from midnight are copied ([`copy`]),
/// the rest inserted ([`insert`]); a copy that meets a stored event (a unique violation) is
/// written again as an insert skipping duplicates, and one that meets a day without a partition
/// is written as an insert, which creates the partition.
pub async fn write(
    storage: &Storage,
    parts: &[&RequestPart],
    window: RetryWindow,
    duplicates: Duplicates,
) -> Result<usize, WriteError> {
    if duplicates == Duplicates::Fail && copy::suits(parts, window) {
        let ids = {
            let mut connection = connection(storage).await?;
            resolve_ids(&mut connection, &storage.key_ids, parts).await?
        };
        match copy::write_new(&storage.copies, parts, &ids).await {
            Ok(inserted) => return Ok(inserted),
            Err(CopyError::Duplicate) => {
                metrics::counter!("warren_consumer_batches_rewritten_total").increment(1);
                return insert(storage, parts, window, Duplicates::Skip).await;
            }
            Err(CopyError::NoPartition) => {}
            Err(error) => return Err(error.into()),
        }
    }
    insert(storage, parts, window, duplicates).await
}

/// A connection from the write pool.
async fn connection(
    storage: &Storage,
) -> Result<diesel_async::pooled_connection::deadpool::Object<AsyncPgConnection>, WriteError> {
    storage
        .pool
        .get()
        .await
        .map_err(|error| WriteError::Pool(error.to_string()))
}

/// [`write`] without the copy: one `INSERT … SELECT FROM UNNEST` per day and neighbour group, in
/// one transaction. The first attempt treats stored events as `duplicates` says; when it fails on
/// one (a unique violation), the batch is written again skipping them. When a day has no
/// partition yet (Postgres answers with a check violation: no partition for the row), it is
/// created and the batch written again. Public so `examples/copy_cost.rs` can measure it.
pub async fn insert(
    storage: &Storage,
    parts: &[&RequestPart],
    window: RetryWindow,
    mut duplicates: Duplicates,
) -> Result<usize, WriteError> {
    let mut connection = connection(storage).await?;
    let ids = resolve_ids(&mut connection, &storage.key_ids, parts).await?;
    let mut partitions_created = false;
    loop {
        let attempt = connection
            .transaction(async |connection| {
                insert_events(connection, parts, &ids, window, duplicates).await
            })
            .await;
        match attempt {
            Ok(inserted) => return Ok(inserted),
            Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _))
                if duplicates == Duplicates::Fail =>
            {
                metrics::counter!("warren_consumer_batches_rewritten_total").increment(1);
                duplicates = Duplicates::Skip;
            }
            Err(DieselError::DatabaseError(DatabaseErrorKind::CheckViolation, _))
                if !partitions_created =>
            {
                for day in days_of(parts) {
                    partitions::ensure(&mut connection, day).await?;
                }
                partitions_created = true;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use diesel::query_dsl::QueryDsl;

    use super::*;
    use crate::db::tables::events;

    /// Columns the database fills in itself (`DEFAULT`s and generated columns): never written.
    const FILLED_BY_THE_DATABASE: [&str; 4] = ["seq", "specversion", "stored_at", "event_time"];

    /// Columns written but never read back through diesel (`db/tables.rs` leaves them out).
    const ONLY_WRITTEN: [&str; 2] = ["source_id", "type_id"];

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
            .chain(ONLY_WRITTEN.map(str::to_owned))
            .collect();
        let written: Vec<String> = WRITTEN_COLUMNS
            .iter()
            .map(|(name, _)| (*name).to_owned())
            .collect();
        assert_eq!(written, expected);
    }

    #[test]
    fn every_statement_has_one_array_per_written_column_and_the_day_last() {
        for statement in INSERT.iter().flatten() {
            let last = WRITTEN_COLUMNS.len();
            assert!(
                statement.contains(&format!("${last}::{}[])", WRITTEN_COLUMNS[last - 1].1)),
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

    #[test]
    fn only_events_within_the_window_of_midnight_probe_a_neighbouring_day() {
        let window = RetryWindow::default();
        let at = |text: &str| text.parse::<DateTime<Utc>>().unwrap_or_default();
        assert_eq!(
            Neighbours::of(at("2025-03-10T00:00:00Z"), window),
            Neighbours::Before
        );
        assert_eq!(
            Neighbours::of(at("2025-03-10T00:59:59Z"), window),
            Neighbours::Before
        );
        assert_eq!(
            Neighbours::of(at("2025-03-10T01:00:00Z"), window),
            Neighbours::None
        );
        assert_eq!(
            Neighbours::of(at("2025-03-10T12:00:00Z"), window),
            Neighbours::None
        );
        assert_eq!(
            Neighbours::of(at("2025-03-10T22:59:59Z"), window),
            Neighbours::None
        );
        assert_eq!(
            Neighbours::of(at("2025-03-10T23:00:00Z"), window),
            Neighbours::After
        );
        assert_eq!(
            Neighbours::of(at("2025-03-10T23:59:59.999Z"), window),
            Neighbours::After
        );
        let whole_day = RetryWindow(chrono::Duration::days(1));
        assert_eq!(
            Neighbours::of(at("2025-03-10T12:00:00Z"), whole_day),
            Neighbours::Both
        );
        let none = RetryWindow(chrono::Duration::zero());
        assert_eq!(
            Neighbours::of(at("2025-03-10T00:00:00Z"), none),
            Neighbours::None
        );
        assert_eq!(
            Neighbours::of(at("2025-03-10T23:59:59Z"), none),
            Neighbours::None
        );
    }

    #[test]
    fn only_the_statements_that_skip_duplicates_say_on_conflict() {
        for statement in &INSERT[Duplicates::Fail as usize] {
            assert!(!statement.contains("ON CONFLICT"), "{statement}");
        }
        for statement in &INSERT[Duplicates::Skip as usize] {
            assert!(
                statement.ends_with(") ON CONFLICT (source_id, id, received_on) DO NOTHING"),
                "{statement}"
            );
        }
    }

    #[test]
    fn the_statement_without_neighbours_has_no_probe() {
        for statements in INSERT.iter() {
            assert!(!statements[Neighbours::None as usize].contains("NOT EXISTS"));
            assert!(statements[Neighbours::Before as usize].contains("stored.received_on = $"));
            assert!(statements[Neighbours::Both as usize].contains("stored.received_on IN ("));
        }
    }
}
