//! The read path: list with keyset pagination, lookup by key, and counts per time bucket.
//!
//! Every query is bounded (a page size, a bucket count, the pool's statement timeout) and shaped so
//! that an index answers it: `(event_time DESC, seq DESC)` alone or behind `type`, `subject` or
//! `source`. Counting happens in SQL; events are never loaded to be counted.

pub mod cached;
pub mod params;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use diesel::dsl::{sql, AsExprOf};
use diesel::expression::{SqlLiteral, UncheckedBind};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use serde_json::Value;
use shared_types::event::{DataView, StructuredView};
use shared_types::Event;

use crate::db::tables::events;
use cached::CachedBySql;
use params::{encode_cursor, CountsQuery, Cursor, Filters, ListQuery, LookupQuery, TypeFilter};

/// One stored event, as the list and lookup routes read it.
#[derive(Debug, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = events)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct StoredEvent {
    seq: i64,
    id: String,
    source: String,
    event_type: String,
    subject: Option<String>,
    time: Option<DateTime<Utc>>,
    datacontenttype: Option<String>,
    dataschema: Option<String>,
    data: Option<Value>,
    data_base64: Option<String>,
    extensions: Value,
    received_at: DateTime<Utc>,
    event_time: DateTime<Utc>,
}

/// The event in CloudEvents structured JSON, as accepted, plus `received_at`: written straight
/// from the row, without building a JSON tree or copying the row into an [`Event`] first. Pages of
/// 50 rows at hundreds of requests a second made those copies the read path's largest cost.
impl Serialize for StoredEvent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        StructuredView {
            id: &self.id,
            source: &self.source,
            event_type: &self.event_type,
            subject: self.subject.as_deref(),
            time: self.time.as_ref(),
            datacontenttype: self.datacontenttype.as_deref(),
            dataschema: self.dataschema.as_deref(),
            extensions: self.extensions.as_object().into_iter().flatten(),
            data: match (&self.data, &self.data_base64) {
                (Some(value), _) => Some(DataView::Json(value)),
                (None, Some(text)) => Some(DataView::Base64(text)),
                (None, None) => None,
            },
            received_at: Some(&self.received_at),
        }
        .serialize(serializer)
    }
}

/// A page of events.
#[derive(Debug, Serialize)]
pub struct EventPage {
    /// Newest first.
    pub events: Vec<StoredEvent>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /v1/events`.
pub async fn list_events(
    connection: &mut AsyncPgConnection,
    query: &ListQuery,
) -> QueryResult<EventPage> {
    let filters = &query.filters;
    let merge_prefix = match (&filters.event_type, &filters.source, &filters.subject) {
        // A subject is selective: its own index answers, whatever else is asked.
        (_, _, Some(_)) => None,
        (Some(TypeFilter::Prefix(prefix)), _, None) => Some(prefix.as_str()),
        (None, Some(_), None) => Some(""),
        _ => None,
    };
    let mut rows = match merge_prefix {
        Some(prefix) => list_merging_types(connection, query, prefix).await?,
        None => list_rows(connection, query).await?,
    };
    let has_more = rows.len() > usize::try_from(query.limit).unwrap_or(usize::MAX);
    rows.truncate(usize::try_from(query.limit).unwrap_or(usize::MAX));
    let next_cursor = match (has_more, rows.last()) {
        (true, Some(last)) => Some(encode_cursor(
            Cursor {
                event_time_micros: last.event_time.timestamp_micros(),
                seq: last.seq,
            },
            &query.filters,
        )),
        _ => None,
    };
    Ok(EventPage {
        events: rows,
        next_cursor,
    })
}

/// Up to `limit + 1` rows, newest first, in one index range scan.
async fn list_rows(
    connection: &mut AsyncPgConnection,
    query: &ListQuery,
) -> QueryResult<Vec<StoredEvent>> {
    let mut statement = events::table
        .select(StoredEvent::as_select())
        .order((events::event_time.desc(), events::seq.desc()))
        .limit(query.limit + 1)
        .into_boxed();
    statement = apply_list_filters(statement, &query.filters);
    if let Some(cursor) = query.cursor {
        let time = DateTime::from_timestamp_micros(cursor.event_time_micros).unwrap_or_default();
        statement = statement.filter(
            sql::<Bool>("(event_time, seq) < (")
                .bind::<Timestamptz, _>(time)
                .sql(", ")
                .bind::<BigInt, _>(cursor.seq)
                .sql(")"),
        );
    }
    CachedBySql(statement).load(connection).await
}

/// The newest `limit + 1` events whose type starts with `prefix` (within `source`, when the query
/// names one), merged from each matching type's own newest events.
///
/// `type LIKE 'prefix%'` ordered by time can only walk the time index and filter: fast while
/// matching events are among the newest, but a prefix whose events are older than a day of other
/// traffic makes it read that whole day (seen: seconds per query on 10 M rows, and a backlog of
/// them). Instead each matching type's newest `limit + 1` rows come from the `(type_id,
/// event_time, seq)` index, or from `(source_id, type_id, event_time, seq)` when a source is
/// named, and the merged top `limit + 1` are the page. The cost grows with the number of matching
/// types, not with how far back their events are. The matching types come from the type
/// dictionary; a source alone (the empty prefix) lists its own types instead, with a loose index
/// scan over the source index (one index descent per type), since most types of the dictionary
/// may never come from that source.
///
/// One statement reads the rows whole. Reading only keys there (index-only) and then the page's
/// rows by `seq` cost twice as much: `seq` does not name the partition, so each of the page's
/// keys was looked up in every partition (`scripts/perf/query-cost`, docs/benchmarks.md).
async fn list_merging_types(
    connection: &mut AsyncPgConnection,
    query: &ListQuery,
    prefix: &str,
) -> QueryResult<Vec<StoredEvent>> {
    let filters = &query.filters;
    let mut conditions = String::new();
    let mut next = 3;
    let mut placeholder = || {
        next += 1;
        format!("${}", next - 1)
    };
    let source_id = filters.source.as_ref().map(|_| {
        let source_id = format!("{SOURCE_ID_OF}{})", placeholder());
        conditions += &format!(" AND events.source_id = {source_id}");
        source_id
    });
    if filters.subject.is_some() {
        conditions += &format!(" AND events.subject = {}", placeholder());
    }
    if filters.since.is_some() {
        conditions += &format!(" AND events.event_time >= {}", placeholder());
    }
    if filters.until.is_some() {
        conditions += &format!(" AND events.event_time < {}", placeholder());
    }
    if query.cursor.is_some() {
        conditions += &format!(
            " AND (events.event_time, events.seq) < ({}, {})",
            placeholder(),
            placeholder()
        );
    }
    let types = match (&source_id, prefix) {
        (Some(source_id), "") => format!(
            "WITH RECURSIVE types(id) AS ( \
                 (SELECT type_id FROM events WHERE source_id = {source_id} \
                  ORDER BY type_id LIMIT 1) \
               UNION ALL \
                 SELECT (SELECT type_id FROM events \
                         WHERE source_id = {source_id} AND type_id > types.id \
                         ORDER BY type_id LIMIT 1) \
                 FROM types WHERE types.id IS NOT NULL) \
             SELECT page.* FROM types"
        ),
        _ => "SELECT page.* FROM event_types AS types".to_owned(),
    };
    let matching = match (&source_id, prefix) {
        (Some(_), "") => "types.id IS NOT NULL",
        _ => "starts_with(types.type, $1)",
    };
    let text = format!(
        "{types} CROSS JOIN LATERAL ( \
             SELECT events.seq, events.id, events.source, events.type AS event_type, \
                    events.subject, events.time, events.datacontenttype, events.dataschema, \
                    events.data, events.data_base64, events.extensions, events.received_at, \
                    events.event_time \
             FROM events \
             WHERE events.type_id = types.id{conditions} \
             ORDER BY events.event_time DESC, events.seq DESC LIMIT $2) page \
         WHERE {matching} \
         ORDER BY page.event_time DESC, page.seq DESC LIMIT $2"
    );
    let mut statement = diesel::sql_query(text)
        .into_boxed::<diesel::pg::Pg>()
        .bind::<Text, _>(prefix)
        .bind::<BigInt, _>(query.limit + 1);
    if let Some(source) = &filters.source {
        statement = statement.bind::<Text, _>(source);
    }
    if let Some(subject) = &filters.subject {
        statement = statement.bind::<Text, _>(subject);
    }
    if let Some(since) = filters.since {
        statement = statement.bind::<Timestamptz, _>(since);
    }
    if let Some(until) = filters.until {
        statement = statement.bind::<Timestamptz, _>(until);
    }
    if let Some(cursor) = query.cursor {
        let time = DateTime::from_timestamp_micros(cursor.event_time_micros).unwrap_or_default();
        statement = statement
            .bind::<Timestamptz, _>(time)
            .bind::<BigInt, _>(cursor.seq);
    }
    CachedBySql(statement).load(connection).await
}

type BoxedList<'a> =
    events::BoxedQuery<'a, diesel::pg::Pg, <StoredEventSelect as Expression>::SqlType>;
type StoredEventSelect = diesel::dsl::AsSelect<StoredEvent, diesel::pg::Pg>;

fn apply_list_filters<'a>(mut statement: BoxedList<'a>, filters: &'a Filters) -> BoxedList<'a> {
    match &filters.event_type {
        Some(TypeFilter::Exact(kind)) => {
            statement = statement.filter(id_matches("type_id", TYPE_ID_OF, kind))
        }
        Some(TypeFilter::Prefix(prefix)) => {
            statement = statement.filter(events::event_type.like(like_prefix(prefix)).escape('\\'))
        }
        None => {}
    }
    if let Some(source) = &filters.source {
        statement = statement.filter(id_matches("source_id", SOURCE_ID_OF, source));
    }
    if let Some(subject) = &filters.subject {
        statement = statement.filter(events::subject.eq(subject));
    }
    if let Some(since) = filters.since {
        statement = statement.filter(events::event_time.ge(since));
    }
    if let Some(until) = filters.until {
        statement = statement.filter(events::event_time.lt(until));
    }
    statement
}

/// The id of a source, in SQL, up to its parameter: the indexes hold ids, the API takes text. A
/// source never stored has no id, and the comparison with NULL matches nothing.
const SOURCE_ID_OF: &str = "(SELECT id FROM event_sources WHERE source = ";

/// The id of a type, in SQL, up to its parameter (see [`SOURCE_ID_OF`]).
const TYPE_ID_OF: &str = "(SELECT id FROM event_types WHERE type = ";

/// A filter on a dictionary id column by the text the API takes: `column = {id_of}$n)`, with
/// `id_of` one of [`SOURCE_ID_OF`] and [`TYPE_ID_OF`].
type IdMatches<'a> = SqlLiteral<Bool, UncheckedBind<SqlLiteral<Bool>, AsExprOf<&'a str, Text>>>;

/// See [`IdMatches`].
fn id_matches<'a>(column: &str, id_of: &str, text: &'a str) -> IdMatches<'a> {
    sql::<Bool>(&format!("{column} = {id_of}"))
        .bind::<Text, _>(text)
        .sql(")")
}

/// `prefix%`, with LIKE's own wildcards in the prefix escaped.
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for character in prefix.chars() {
        if matches!(character, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(character);
    }
    pattern.push('%');
    pattern
}

/// `GET /v1/events/lookup`.
pub async fn lookup_event(
    connection: &mut AsyncPgConnection,
    query: &LookupQuery,
) -> QueryResult<Option<StoredEvent>> {
    events::table
        .select(StoredEvent::as_select())
        .filter(id_matches("source_id", SOURCE_ID_OF, &query.source))
        .filter(events::id.eq(&query.id))
        // A retry received more than a day after its original is stored again
        // (docs/guarantees.md); the lookup answers the first copy.
        .order(events::received_at.asc())
        .first(connection)
        .await
        .optional()
}

/// One bucket of `GET /v1/stats/counts`.
#[derive(Debug, Serialize)]
pub struct CountBucket {
    /// Start of the bucket (UTC).
    pub start: String,
    /// Events in the bucket.
    pub count: i64,
    /// Per event type, with `group_by=type`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by_type: Option<BTreeMap<String, i64>>,
}

/// The answer of `GET /v1/stats/counts`.
#[derive(Debug, Serialize)]
pub struct Counts {
    /// `minute`, `hour` or `day`.
    pub bucket: &'static str,
    /// Inclusive lower bound used.
    pub since: String,
    /// Exclusive upper bound used.
    pub until: String,
    /// Every bucket in the range, empty ones as 0, oldest first.
    pub buckets: Vec<CountBucket>,
}

#[derive(QueryableByName)]
struct CountRow {
    #[diesel(sql_type = Timestamptz)]
    bucket: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Text>)]
    event_type: Option<String>,
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// `GET /v1/stats/counts`: grouped in SQL over the time index, gaps filled with zeros here.
pub async fn count_events(
    connection: &mut AsyncPgConnection,
    query: &CountsQuery,
) -> QueryResult<Counts> {
    let filters = &query.filters;
    let (Some(since), Some(until)) = (filters.since, filters.until) else {
        return Err(diesel::result::Error::NotFound);
    };
    let type_column = if query.group_by_type {
        "type"
    } else {
        "NULL::text"
    };
    // Only the filters present appear in the statement, so every plan can use the matching
    // index. It is planned for its values on every run (not cached, and custom plans forced for
    // this transaction although the read pool asks for generic ones): a generic plan cannot see
    // how wide the time range is, and a wide count wants another plan.
    let mut conditions = vec!["event_time >= $1".to_owned(), "event_time < $2".to_owned()];
    let mut texts: Vec<String> = Vec::new();
    let mut condition = |clause: &str, value: String| {
        texts.push(value);
        // Balance the parentheses a dictionary lookup opened.
        let closing = ")".repeat(clause.matches('(').count());
        conditions.push(format!("{clause} ${}{closing}", texts.len() + 2));
    };
    match &filters.event_type {
        Some(TypeFilter::Exact(kind)) => {
            condition(&format!("type_id = {TYPE_ID_OF}"), kind.clone())
        }
        Some(TypeFilter::Prefix(prefix)) => condition(
            "type_id = ANY (ARRAY (SELECT id FROM event_types WHERE type LIKE",
            like_prefix(prefix),
        ),
        None => {}
    }
    if let Some(source) = &filters.source {
        condition(&format!("source_id = {SOURCE_ID_OF}"), source.clone());
    }
    if let Some(subject) = &filters.subject {
        condition("subject =", subject.clone());
    }
    let statement = format!(
        "SELECT date_trunc('{bucket}', event_time, 'UTC') AS bucket, {type_column} AS event_type, \
                count(*) AS count \
         FROM events WHERE {conditions} GROUP BY 1, 2",
        bucket = query.bucket.as_str(),
        conditions = conditions.join(" AND "),
    );
    let mut bound = diesel::sql_query(statement)
        .into_boxed()
        .bind::<Timestamptz, _>(since)
        .bind::<Timestamptz, _>(until);
    for text in texts {
        bound = bound.bind::<Text, _>(text);
    }
    let rows: Vec<CountRow> = connection
        .transaction(async |connection| {
            diesel::sql_query("SET LOCAL plan_cache_mode = force_custom_plan")
                .execute(connection)
                .await?;
            bound.load(connection).await
        })
        .await?;

    let mut by_start: BTreeMap<i64, CountBucket> = query
        .bucket_starts()
        .into_iter()
        .map(|start| {
            let bucket = CountBucket {
                start: Event::time_text(&start),
                count: 0,
                by_type: query.group_by_type.then(BTreeMap::new),
            };
            (start.timestamp(), bucket)
        })
        .collect();
    for row in rows {
        if let Some(bucket) = by_start.get_mut(&row.bucket.timestamp()) {
            bucket.count += row.count;
            if let (Some(types), Some(kind)) = (bucket.by_type.as_mut(), row.event_type) {
                *types.entry(kind).or_default() += row.count;
            }
        }
    }
    Ok(Counts {
        bucket: query.bucket.as_str(),
        since: Event::time_text(&since),
        until: Event::time_text(&until),
        buckets: by_start.into_values().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_wildcards_in_a_prefix_are_escaped() {
        assert_eq!(like_prefix("page."), "page.%");
        assert_eq!(like_prefix("50%_off\\"), "50\\%\\_off\\\\%");
    }
}
