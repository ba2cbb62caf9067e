//! Writing a batch of new events with one `COPY events (…) FROM STDIN (FORMAT binary)`.
//!
//! A binary `COPY` of a batch costs PostgreSQL about a fifth less CPU per row than the
//! consumer's `INSERT … SELECT FROM UNNEST(arrays)` ([`super::store`]): the server reads each row
//! straight from the stream instead of unpacking fourteen arrays through an executor plan
//! (`cargo run --release -p consumer --example copy_cost`; docs/benchmarks.md, fortieth round).
//! `stored_at` stays with its default (`clock_timestamp()`, when the row was inserted): given by
//! the copy, it would let PostgreSQL insert a page of rows at a time, which measured no cheaper,
//! and it would move the time the benchmarks' lag is read from.
//!
//! `COPY` has no `ON CONFLICT` and no `WHERE`, so it writes only what needs neither: a batch of
//! new messages (no redelivery) received away from midnight (no neighbour-day probe). The unique
//! storage key still guards it: a copy that meets a stored event fails whole, and the caller
//! writes the batch again with `ON CONFLICT DO NOTHING`, as it does after a plain `INSERT`.
//!
//! diesel-async has no `COPY`, so the copies go over their own small pool of tokio-postgres
//! connections (the driver diesel-async itself runs on), one per write in flight.

use std::borrow::Cow;
use std::sync::LazyLock;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use futures_util::SinkExt;
use shared_types::RequestPart;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls};

use super::key_ids::Resolved;
use super::store::{Columns, RetryWindow, WRITTEN_COLUMNS};

/// Makes the connections the copies use: each with the write side's statement timeout.
pub struct CopyConnections {
    url: String,
    statement_timeout: Duration,
}

/// The copies' connections, one per write in flight.
pub type CopyPool = managed::Pool<CopyConnections>;

/// A pool of at most `size` copy connections to `url`.
pub fn pool(
    url: &str,
    size: usize,
    wait_timeout: Duration,
    statement_timeout: Duration,
) -> Result<CopyPool, String> {
    let manager = CopyConnections {
        url: url.to_owned(),
        statement_timeout,
    };
    crate::db::bounded_pool(manager, size, wait_timeout).map_err(|error| error.to_string())
}

impl managed::Manager for CopyConnections {
    type Type = Client;
    type Error = tokio_postgres::Error;

    async fn create(&self) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "copy connection ended");
            }
        });
        client
            .batch_execute(&format!(
                "SET statement_timeout = {}",
                self.statement_timeout.as_millis()
            ))
            .await?;
        Ok(client)
    }

    async fn recycle(
        &self,
        client: &mut Client,
        _: &Metrics,
    ) -> RecycleResult<tokio_postgres::Error> {
        if client.is_closed() {
            Err(RecycleError::Message(Cow::Borrowed(
                "the connection is closed",
            )))
        } else {
            Ok(())
        }
    }
}

/// Why a copy did not store its batch.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// An event of the batch is stored already: write it again skipping duplicates.
    #[error("the batch holds an event stored already")]
    Duplicate,
    /// A row's day has no partition yet (PostgreSQL's check violation).
    #[error("no partition for a row of the batch")]
    NoPartition,
    /// No pooled connection.
    #[error("no copy connection: {0}")]
    Pool(String),
    /// Encoding a value failed (a value PostgreSQL's binary format cannot carry).
    #[error("encoding the copy: {0}")]
    Encode(String),
    /// The database refused the copy, or the connection failed.
    #[error("{0}")]
    Database(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for CopyError {
    fn from(error: tokio_postgres::Error) -> Self {
        match error.code() {
            Some(code) if *code == SqlState::UNIQUE_VIOLATION => Self::Duplicate,
            Some(code) if *code == SqlState::CHECK_VIOLATION => Self::NoPartition,
            _ => Self::Database(error),
        }
    }
}

/// Whether a copy can write `parts` as new events: none needs a neighbour-day probe.
pub fn suits(parts: &[&RequestPart], window: RetryWindow) -> bool {
    parts
        .iter()
        .all(|part| !super::store::probes_neighbours(part.received_at, window))
}

/// The statement, written once.
static STATEMENT: LazyLock<String> = LazyLock::new(statement);

/// The statement: the written columns, then the day.
fn statement() -> String {
    let names = WRITTEN_COLUMNS
        .iter()
        .map(|(name, _)| *name)
        .chain(["received_on"])
        .collect::<Vec<_>>()
        .join(", ");
    format!("COPY events ({names}) FROM STDIN (FORMAT binary)")
}

/// The copied columns' types, in statement order, worked out once.
static COLUMN_TYPES: LazyLock<Result<Vec<Type>, String>> = LazyLock::new(|| {
    WRITTEN_COLUMNS
        .iter()
        .map(|(_, sql)| *sql)
        .chain(["date"])
        .map(|sql| column_type(sql).ok_or_else(|| format!("no copy type for {sql}")))
        .collect()
});

/// The PostgreSQL type of a column from its SQL name in [`WRITTEN_COLUMNS`].
fn column_type(sql: &str) -> Option<Type> {
    match sql {
        "text" => Some(Type::TEXT),
        "timestamptz" => Some(Type::TIMESTAMPTZ),
        "jsonb" => Some(Type::JSONB),
        "int4" => Some(Type::INT4),
        "date" => Some(Type::DATE),
        _ => None,
    }
}

/// One row of COPY's binary format at a time, each field checked against its column's type.
pub struct RowWriter<'t> {
    types: &'t [Type],
    buffer: BytesMut,
    field: usize,
}

/// The binary format's signature, flags and header extension length (PostgreSQL's `COPY` page).
const BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

impl<'t> RowWriter<'t> {
    fn new(types: &'t [Type], rows: usize) -> Self {
        let mut buffer = BytesMut::with_capacity(BINARY_HEADER.len() + rows * 512 + 2);
        buffer.put_slice(BINARY_HEADER);
        Self {
            types,
            buffer,
            field: 0,
        }
    }

    fn start_row(&mut self) {
        // The column count fits: a table has at most 1 600 columns.
        self.buffer.put_i16(self.types.len() as i16);
        self.field = 0;
    }

    /// Appends the next field of the row: its length, then its value in binary.
    pub fn field(&mut self, value: &(dyn ToSql + Sync)) -> Result<(), CopyError> {
        let column_type = self
            .types
            .get(self.field)
            .ok_or_else(|| CopyError::Encode("more fields than columns".into()))?;
        let at = self.buffer.len();
        self.buffer.put_i32(0);
        let is_null = value
            .to_sql_checked(column_type, &mut self.buffer)
            .map_err(|error| CopyError::Encode(error.to_string()))?;
        let length = match is_null {
            tokio_postgres::types::IsNull::Yes => -1,
            tokio_postgres::types::IsNull::No => i32::try_from(self.buffer.len() - at - 4)
                .map_err(|_| CopyError::Encode("a field longer than 2 GiB".into()))?,
        };
        self.buffer[at..at + 4].copy_from_slice(&length.to_be_bytes());
        self.field += 1;
        Ok(())
    }

    fn finish(mut self) -> bytes::Bytes {
        self.buffer.put_i16(-1);
        self.buffer.freeze()
    }
}

/// Copies every event of `parts` (new events, none needing a neighbour probe: [`suits`]) with the
/// source and type ids in `ids`, in one statement (so one transaction); returns how many rows
/// were stored.
pub async fn write_new(
    pool: &CopyPool,
    parts: &[&RequestPart],
    ids: &Resolved,
) -> Result<usize, CopyError> {
    let mut columns = Columns::default();
    for part in parts.iter().copied() {
        columns
            .push_part(part, ids)
            .map_err(|error| CopyError::Encode(error.to_string()))?;
    }
    let types = COLUMN_TYPES
        .as_ref()
        .map_err(|error| CopyError::Encode(error.clone()))?;
    let rows = columns.len();
    let mut writer = RowWriter::new(types, rows);
    for (row, day) in columns.days().enumerate() {
        writer.start_row();
        columns.copy_row(row, &mut writer)?;
        writer.field(&day)?;
    }
    let client = pool
        .get()
        .await
        .map_err(|error| CopyError::Pool(error.to_string()))?;
    let mut sink = std::pin::pin!(
        client
            .copy_in::<_, bytes::Bytes>(STATEMENT.as_str())
            .await?
    );
    sink.send(writer.finish()).await?;
    let copied = sink.as_mut().finish().await?;
    Ok(usize::try_from(copied).unwrap_or(rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statement_copies_the_written_columns_then_the_day() {
        let statement = statement();
        assert!(
            statement.starts_with("COPY events (id, source, type, subject, "),
            "{statement}"
        );
        assert!(
            statement.ends_with(", source_id, type_id, received_on) FROM STDIN (FORMAT binary)"),
            "{statement}"
        );
    }

    #[test]
    fn every_written_column_has_a_type_to_copy_it_as() {
        for (name, sql) in WRITTEN_COLUMNS {
            assert!(column_type(sql).is_some(), "{name}: {sql}");
        }
    }

    #[test]
    fn a_row_is_written_in_postgres_binary_copy_format() {
        let mut writer = RowWriter::new(&[Type::TEXT, Type::INT4, Type::TEXT], 1);
        writer.start_row();
        writer.field(&"ab").unwrap();
        writer.field(&7_i32).unwrap();
        writer.field(&None::<&str>).unwrap();
        let written = writer.finish();

        let mut expected = b"PGCOPY\n\xff\r\n\0".to_vec();
        expected.extend([0, 0, 0, 0, 0, 0, 0, 0]); // flags, header extension length
        expected.extend([0, 3]); // three fields
        expected.extend([0, 0, 0, 2, b'a', b'b']);
        expected.extend([0, 0, 0, 4, 0, 0, 0, 7]);
        expected.extend([0xff, 0xff, 0xff, 0xff]); // NULL
        expected.extend([0xff, 0xff]); // the trailer
        assert_eq!(written.as_ref(), expected.as_slice());
    }

    #[test]
    fn a_value_of_another_type_than_its_column_is_refused() {
        let mut writer = RowWriter::new(&[Type::TEXT], 1);
        writer.start_row();
        assert!(matches!(writer.field(&7_i32), Err(CopyError::Encode(_))));
    }

    #[test]
    fn more_fields_than_columns_are_refused() {
        let mut writer = RowWriter::new(&[Type::TEXT], 1);
        writer.start_row();
        writer.field(&"a").unwrap();
        assert!(matches!(writer.field(&"b"), Err(CopyError::Encode(_))));
    }
}
