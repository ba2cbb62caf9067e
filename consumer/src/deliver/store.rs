//! The delivery side's tables: subscriptions, retries waiting for their time, dead letters.
//! Plain functions over a connection, like `write::store`; the callers own transactions.

use chrono::{DateTime, Utc};
use diesel::sql_types::{
    Array, BigInt, Bool, Bytea, Integer, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel::QueryResult;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::{json, Value};
use shared_types::event::{Event, Validation};
use uuid::Uuid;

use super::secret_box::SecretBox;
use super::signature::SigningSecret;
use super::subscription::{Subscription, SubscriptionSpec};

#[derive(diesel::QueryableByName)]
struct SubscriptionRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    sink: String,
    #[diesel(sql_type = Jsonb)]
    filters: Value,
    #[diesel(sql_type = Nullable<Array<Text>>)]
    types: Option<Vec<String>>,
    #[diesel(sql_type = Nullable<Text>)]
    source: Option<String>,
    #[diesel(sql_type = Jsonb)]
    protocol_settings: Value,
    #[diesel(sql_type = Jsonb)]
    delivery: Value,
    #[diesel(sql_type = Text)]
    format: String,
    #[diesel(sql_type = Text)]
    ordering: String,
    #[diesel(sql_type = Bytea)]
    secret: Vec<u8>,
    #[diesel(sql_type = Nullable<Bytea>)]
    previous_secret: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    previous_secret_until: Option<DateTime<Utc>>,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Nullable<Text>)]
    status_reason: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    failing_since: Option<DateTime<Utc>>,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    updated_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "id, sink, filters, types, source, protocol_settings, delivery, format, ordering, \
    secret, previous_secret, previous_secret_until, status, status_reason, failing_since, \
    created_at, updated_at";

impl SubscriptionRow {
    /// The stored definition, read back through the API's own parser (with private sinks allowed:
    /// the address rule is enforced again at every connection). A row that no longer parses is
    /// skipped with a warning rather than stopping every other subscription's delivery.
    fn into_subscription(self, secrets: &SecretBox) -> Option<Subscription> {
        let body = json!({
            "sink": self.sink, "filters": self.filters, "types": self.types, "source": self.source,
            "protocolsettings": self.protocol_settings, "delivery": self.delivery,
            "format": self.format, "status": self.status, "ordering": self.ordering,
        });
        let spec = match SubscriptionSpec::parse(&body, true) {
            Ok(spec) => spec,
            Err(problems) => {
                tracing::warn!(subscription = %self.id, ?problems, "stored subscription does not parse; skipped");
                return None;
            }
        };
        let opened = secrets.open(self.id, &self.secret).and_then(|secret| {
            let previous = match self.previous_secret.zip(self.previous_secret_until) {
                Some((bytes, until)) => Some((secrets.open(self.id, &bytes)?, until)),
                None => None,
            };
            Ok((secret, previous))
        });
        let (secret, previous_secret) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                tracing::warn!(subscription = %self.id, %error, "cannot read the signing secret; subscription skipped");
                return None;
            }
        };
        Some(Subscription {
            id: self.id,
            spec,
            status_reason: self.status_reason,
            secret,
            previous_secret,
            failing_since: self.failing_since,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

fn subscriptions(rows: Vec<SubscriptionRow>, secrets: &SecretBox) -> Vec<Subscription> {
    rows.into_iter()
        .filter_map(|row| row.into_subscription(secrets))
        .collect()
}

fn seal(secrets: &SecretBox, id: Uuid, secret: &SigningSecret) -> QueryResult<Vec<u8>> {
    secrets
        .seal(id, secret)
        .map_err(|error| diesel::result::Error::SerializationError(Box::new(error)))
}

/// The columns a subscription's definition is stored in, bound as `$2`..`$10` by [`bind_spec`]
/// (in this order) in both the insert and the replace; `$1` is the id.
const SPEC_COLUMNS: &str =
    "sink, filters, types, source, protocol_settings, delivery, format, status, ordering";
const SPEC_PLACEHOLDERS: &str = "$2, $3, $4, $5, $6, $7, $8, $9, $10";

/// Binds `$1` (the id) and the definition's columns in [`SPEC_COLUMNS`] order.
fn bind_spec<'a>(
    query: diesel::query_builder::BoxedSqlQuery<
        'a,
        diesel::pg::Pg,
        diesel::query_builder::SqlQuery,
    >,
    id: Uuid,
    spec: &'a SubscriptionSpec,
) -> diesel::query_builder::BoxedSqlQuery<'a, diesel::pg::Pg, diesel::query_builder::SqlQuery> {
    query
        .bind::<SqlUuid, _>(id)
        .bind::<Text, _>(&spec.sink)
        .bind::<Jsonb, _>(&spec.filters_json)
        .bind::<Nullable<Array<Text>>, _>(&spec.types)
        .bind::<Nullable<Text>, _>(&spec.source)
        .bind::<Jsonb, _>(spec.protocol_settings())
        .bind::<Jsonb, _>(json!(spec.delivery))
        .bind::<Text, _>(spec.format.as_str())
        .bind::<Text, _>(spec.status.as_str())
        .bind::<Text, _>(spec.ordering.as_str())
}

/// Stores a new subscription.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    secrets: &SecretBox,
    id: Uuid,
    spec: &SubscriptionSpec,
    secret: &SigningSecret,
) -> QueryResult<Option<Subscription>> {
    let sealed = seal(secrets, id, secret)?;
    let query = diesel::sql_query(format!(
        "INSERT INTO subscriptions (id, {SPEC_COLUMNS}, secret) \
         VALUES ($1, {SPEC_PLACEHOLDERS}, $11) RETURNING {COLUMNS}"
    ))
    .into_boxed();
    let rows: Vec<SubscriptionRow> = bind_spec(query, id, spec)
        .bind::<Bytea, _>(sealed)
        .load(conn)
        .await?;
    Ok(subscriptions(rows, secrets).pop())
}

/// Replaces a subscription's definition (its ordering, which the caller checked, stays). Setting
/// it active clears a pause and its reason.
pub async fn replace(
    conn: &mut AsyncPgConnection,
    secrets: &SecretBox,
    id: Uuid,
    spec: &SubscriptionSpec,
) -> QueryResult<Option<Subscription>> {
    let query = diesel::sql_query(format!(
        "UPDATE subscriptions SET ({SPEC_COLUMNS}) = ({SPEC_PLACEHOLDERS}), \
         status_reason = CASE WHEN $9 = 'active' THEN NULL ELSE status_reason END, \
         failing_since = CASE WHEN $9 = 'active' THEN NULL ELSE failing_since END, \
         updated_at = now() WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .into_boxed();
    let rows: Vec<SubscriptionRow> = bind_spec(query, id, spec).load(conn).await?;
    Ok(subscriptions(rows, secrets).pop())
}

/// One subscription.
pub async fn get(
    conn: &mut AsyncPgConnection,
    secrets: &SecretBox,
    id: Uuid,
) -> QueryResult<Option<Subscription>> {
    let rows: Vec<SubscriptionRow> =
        diesel::sql_query(format!("SELECT {COLUMNS} FROM subscriptions WHERE id = $1"))
            .bind::<SqlUuid, _>(id)
            .load(conn)
            .await?;
    Ok(subscriptions(rows, secrets).pop())
}

/// Every subscription, oldest first.
pub async fn list(
    conn: &mut AsyncPgConnection,
    secrets: &SecretBox,
) -> QueryResult<Vec<Subscription>> {
    let rows: Vec<SubscriptionRow> = diesel::sql_query(format!(
        "SELECT {COLUMNS} FROM subscriptions ORDER BY created_at, id"
    ))
    .load(conn)
    .await?;
    Ok(subscriptions(rows, secrets))
}

/// The ids of every subscription; none when the table is not there (a database never migrated).
pub async fn ids(conn: &mut AsyncPgConnection) -> QueryResult<Vec<Uuid>> {
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
    }
    #[derive(diesel::QueryableByName)]
    struct Present {
        #[diesel(sql_type = Bool)]
        present: bool,
    }
    let table: Present =
        diesel::sql_query("SELECT to_regclass('subscriptions') IS NOT NULL AS present")
            .get_result(conn)
            .await?;
    if !table.present {
        return Ok(Vec::new());
    }
    let rows: Vec<Id> = diesel::sql_query("SELECT id FROM subscriptions")
        .load(conn)
        .await?;
    Ok(rows.into_iter().map(|row| row.id).collect())
}

/// Deletes a subscription with its retries, dead letters and replays; whether it existed.
pub async fn delete(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<bool> {
    let deleted = diesel::sql_query("DELETE FROM subscriptions WHERE id = $1")
        .bind::<SqlUuid, _>(id)
        .execute(conn)
        .await?;
    Ok(deleted > 0)
}

/// Replaces the signing secret; the old one keeps signing until `previous_until`.
pub async fn rotate_secret(
    conn: &mut AsyncPgConnection,
    secrets: &SecretBox,
    id: Uuid,
    secret: &SigningSecret,
    previous_until: DateTime<Utc>,
) -> QueryResult<Option<Subscription>> {
    let sealed = seal(secrets, id, secret)?;
    let rows: Vec<SubscriptionRow> = diesel::sql_query(format!(
        "UPDATE subscriptions SET previous_secret = secret, previous_secret_until = $3, \
         secret = $2, updated_at = now() WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind::<SqlUuid, _>(id)
    .bind::<Bytea, _>(&sealed)
    .bind::<Timestamptz, _>(previous_until)
    .load(conn)
    .await?;
    Ok(subscriptions(rows, secrets).pop())
}

/// Pauses a subscription, saying why (a 410 from its sink, or failing too long).
pub async fn pause(conn: &mut AsyncPgConnection, id: Uuid, reason: &str) -> QueryResult<()> {
    diesel::sql_query(
        "UPDATE subscriptions SET status = 'paused', status_reason = $2, updated_at = now() \
         WHERE id = $1 AND status = 'active'",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records that the sink failed (`failing`) or succeeded. Only the transitions write.
pub async fn set_failing(conn: &mut AsyncPgConnection, id: Uuid, failing: bool) -> QueryResult<()> {
    let sql = if failing {
        "UPDATE subscriptions SET failing_since = now() WHERE id = $1 AND failing_since IS NULL"
    } else {
        "UPDATE subscriptions SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL"
    };
    diesel::sql_query(sql)
        .bind::<SqlUuid, _>(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Pauses every active subscription whose sink has failed for longer than `seconds`.
pub async fn pause_failing(conn: &mut AsyncPgConnection, seconds: i64) -> QueryResult<usize> {
    diesel::sql_query(
        "UPDATE subscriptions SET status = 'paused', updated_at = now(), \
         status_reason = 'the sink failed every attempt since ' || to_char(failing_since AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
         WHERE status = 'active' AND failing_since < now() - make_interval(secs => $1)",
    )
    .bind::<BigInt, _>(seconds)
    .execute(conn)
    .await
}

/// An event waiting to be (re)delivered or kept as a dead letter.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The subscription.
    pub subscription_id: Uuid,
    /// The event.
    pub event: Event,
    /// When the gateway accepted it (for the latency histogram).
    pub received_at: DateTime<Utc>,
    /// Attempts made so far.
    pub attempts: u32,
    /// The last answer's status, if there was one.
    pub last_status: Option<u16>,
    /// The last failure, for operators.
    pub last_error: Option<String>,
    /// Part of a replay (marked to the sink).
    pub replay: bool,
    /// The event's key, for an ordered subscription.
    pub ordering_key: Option<String>,
}

/// Schedules a retry.
pub async fn schedule_retry(
    conn: &mut AsyncPgConnection,
    pending: &Pending,
    due_at: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO delivery_retries (subscription_id, event, received_at, attempts, due_at, \
         last_status, last_error, replay, ordering_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind::<SqlUuid, _>(pending.subscription_id)
    .bind::<Jsonb, _>(event_json(&pending.event))
    .bind::<Timestamptz, _>(pending.received_at)
    .bind::<Integer, _>(attempts(pending.attempts))
    .bind::<Timestamptz, _>(due_at)
    .bind::<Nullable<Integer>, _>(pending.last_status.map(i32::from))
    .bind::<Nullable<Text>, _>(&pending.last_error)
    .bind::<Bool, _>(pending.replay)
    .bind::<Nullable<Text>, _>(&pending.ordering_key)
    .execute(conn)
    .await?;
    Ok(())
}

/// Which of `keys` have events waiting in an ordered subscription's retries: a live event of
/// such a key must wait behind them.
pub async fn waiting_keys(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    keys: &[String],
) -> QueryResult<std::collections::HashSet<String>> {
    #[derive(diesel::QueryableByName)]
    struct Key {
        #[diesel(sql_type = Text)]
        ordering_key: String,
    }
    let found: Vec<Key> = diesel::sql_query(
        "SELECT DISTINCT ordering_key FROM delivery_retries WHERE subscription_id = $1 \
         AND ordering_key = ANY($2)",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Array<Text>, _>(keys)
    .load(conn)
    .await?;
    Ok(found.into_iter().map(|key| key.ordering_key).collect())
}

/// Keeps an event that failed past its subscription's limits.
pub async fn insert_dead_letter(
    conn: &mut AsyncPgConnection,
    pending: &Pending,
) -> QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO delivery_dead_letters (subscription_id, event, received_at, attempts, \
         last_status, last_error, ordering_key) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind::<SqlUuid, _>(pending.subscription_id)
    .bind::<Jsonb, _>(event_json(&pending.event))
    .bind::<Timestamptz, _>(pending.received_at)
    .bind::<Integer, _>(attempts(pending.attempts))
    .bind::<Nullable<Integer>, _>(pending.last_status.map(i32::from))
    .bind::<Nullable<Text>, _>(&pending.last_error)
    .bind::<Nullable<Text>, _>(&pending.ordering_key)
    .execute(conn)
    .await?;
    Ok(())
}

fn attempts(count: u32) -> i32 {
    i32::try_from(count).unwrap_or(i32::MAX)
}

fn event_json(event: &Event) -> Value {
    serde_json::to_value(event).unwrap_or(Value::Null)
}

fn parse_event(value: Value) -> Option<Event> {
    Event::from_json(value, &Validation::structural()).ok()
}

#[derive(diesel::QueryableByName)]
struct RetryRow {
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = SqlUuid)]
    subscription_id: Uuid,
    #[diesel(sql_type = Jsonb)]
    event: Value,
    #[diesel(sql_type = Timestamptz)]
    received_at: DateTime<Utc>,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = Nullable<Integer>)]
    last_status: Option<i32>,
    #[diesel(sql_type = Nullable<Text>)]
    last_error: Option<String>,
    #[diesel(sql_type = Bool)]
    replay: bool,
    #[diesel(sql_type = Nullable<Text>)]
    ordering_key: Option<String>,
}

const RETRY_COLUMNS: &str =
    "r.seq, r.subscription_id, r.event, r.received_at, r.attempts, r.last_status, r.last_error, \
     r.replay, r.ordering_key";

/// A retry a worker claimed: its row stays, with `due_at` moved past the lease, until the worker
/// deletes or reschedules it; a worker that dies leaves it to be claimed again.
#[derive(Debug, Clone)]
pub struct ClaimedRetry {
    /// The row.
    pub seq: i64,
    /// What to deliver.
    pub pending: Pending,
}

/// Claims up to `limit` due retries of active subscriptions, for `lease_secs`. Of an ordered
/// key only the oldest row is ever claimed.
pub async fn claim_due_retries(
    conn: &mut AsyncPgConnection,
    limit: i64,
    lease_secs: i64,
) -> QueryResult<Vec<ClaimedRetry>> {
    let rows: Vec<RetryRow> = diesel::sql_query(format!(
        "UPDATE delivery_retries r SET due_at = now() + make_interval(secs => $2) \
         WHERE r.seq IN (SELECT d.seq FROM delivery_retries d JOIN subscriptions s ON s.id = d.subscription_id \
           WHERE d.due_at <= now() AND s.status = 'active' \
             AND (d.ordering_key IS NULL OR d.seq = (SELECT min(k.seq) FROM delivery_retries k \
                  WHERE k.subscription_id = d.subscription_id AND k.ordering_key = d.ordering_key)) \
           ORDER BY d.due_at LIMIT $1 FOR UPDATE OF d SKIP LOCKED) \
         RETURNING {RETRY_COLUMNS}"
    ))
    .bind::<BigInt, _>(limit)
    .bind::<BigInt, _>(lease_secs)
    .load(conn)
    .await?;
    claimed_rows(conn, rows).await
}

/// Claims the oldest waiting row of one ordered key when it is due, so a worker that just
/// delivered a key's head goes on with that key without waiting for the next poll.
pub async fn claim_next_of_key(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    key: &str,
    lease_secs: i64,
) -> QueryResult<Option<ClaimedRetry>> {
    let rows: Vec<RetryRow> = diesel::sql_query(format!(
        "UPDATE delivery_retries r SET due_at = now() + make_interval(secs => $3) \
         WHERE r.seq = (SELECT min(k.seq) FROM delivery_retries k \
           WHERE k.subscription_id = $1 AND k.ordering_key = $2) AND r.due_at <= now() \
         RETURNING {RETRY_COLUMNS}"
    ))
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(key)
    .bind::<BigInt, _>(lease_secs)
    .load(conn)
    .await?;
    Ok(claimed_rows(conn, rows).await?.pop())
}

async fn claimed_rows(
    conn: &mut AsyncPgConnection,
    rows: Vec<RetryRow>,
) -> QueryResult<Vec<ClaimedRetry>> {
    let mut claimed = Vec::with_capacity(rows.len());
    for row in rows {
        match parse_event(row.event) {
            Some(event) => claimed.push(ClaimedRetry {
                seq: row.seq,
                pending: Pending {
                    subscription_id: row.subscription_id,
                    event,
                    received_at: row.received_at,
                    attempts: u32::try_from(row.attempts).unwrap_or(0),
                    last_status: row.last_status.and_then(|s| u16::try_from(s).ok()),
                    last_error: row.last_error,
                    replay: row.replay,
                    ordering_key: row.ordering_key,
                },
            }),
            None => {
                tracing::error!(
                    seq = row.seq,
                    "a stored retry is not a valid event; removed"
                );
                delete_retry(conn, row.seq).await?;
            }
        }
    }
    Ok(claimed)
}

/// Removes a retry (delivered, or moved to dead letters in the same transaction).
pub async fn delete_retry(conn: &mut AsyncPgConnection, seq: i64) -> QueryResult<()> {
    diesel::sql_query("DELETE FROM delivery_retries WHERE seq = $1")
        .bind::<BigInt, _>(seq)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records a failed attempt of a claimed retry and when to try again.
pub async fn reschedule_retry(
    conn: &mut AsyncPgConnection,
    seq: i64,
    pending: &Pending,
    due_at: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::sql_query(
        "UPDATE delivery_retries SET attempts = $2, due_at = $3, last_status = $4, last_error = $5 \
         WHERE seq = $1",
    )
    .bind::<BigInt, _>(seq)
    .bind::<Integer, _>(attempts(pending.attempts))
    .bind::<Timestamptz, _>(due_at)
    .bind::<Nullable<Integer>, _>(pending.last_status.map(i32::from))
    .bind::<Nullable<Text>, _>(&pending.last_error)
    .execute(conn)
    .await?;
    Ok(())
}

/// Retries waiting, per subscription (for the API and metrics).
pub async fn retry_count(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<i64> {
    count(
        conn,
        "SELECT count(*) AS n FROM delivery_retries WHERE subscription_id = $1",
        id,
    )
    .await
}

/// Dead letters kept, per subscription.
pub async fn dead_letter_count(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<i64> {
    count(
        conn,
        "SELECT count(*) AS n FROM delivery_dead_letters WHERE subscription_id = $1",
        id,
    )
    .await
}

async fn count(conn: &mut AsyncPgConnection, sql: &str, id: Uuid) -> QueryResult<i64> {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let row: Count = diesel::sql_query(sql)
        .bind::<SqlUuid, _>(id)
        .get_result(conn)
        .await?;
    Ok(row.n)
}

/// A dead letter as the API lists it.
#[derive(Debug, serde::Serialize, diesel::QueryableByName)]
pub struct DeadLetter {
    /// Its id within the subscription's dead letters, for re-sending one.
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    /// The event, structured.
    #[diesel(sql_type = Jsonb)]
    pub event: Value,
    /// When the gateway accepted the event.
    #[diesel(sql_type = Timestamptz)]
    pub received_at: DateTime<Utc>,
    /// Attempts made.
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    /// The last answer's status, when there was an answer.
    #[diesel(sql_type = Nullable<Integer>)]
    pub last_status: Option<i32>,
    /// The last failure.
    #[diesel(sql_type = Nullable<Text>)]
    pub last_error: Option<String>,
    /// When it was given up on.
    #[diesel(sql_type = Timestamptz)]
    pub dead_at: DateTime<Utc>,
}

/// A page of a subscription's dead letters, oldest first, after `after` (a `seq`).
pub async fn list_dead_letters(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    after: i64,
    limit: i64,
) -> QueryResult<Vec<DeadLetter>> {
    diesel::sql_query(
        "SELECT seq, event, received_at, attempts, last_status, last_error, dead_at \
         FROM delivery_dead_letters WHERE subscription_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<BigInt, _>(after)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

/// Moves dead letters (one, by `seq`, or all) back to the retries, due now with a fresh attempt
/// count, in one statement: a dead letter is never both kept and re-sent, nor neither.
pub async fn resend_dead_letters(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    seq: Option<i64>,
) -> QueryResult<usize> {
    diesel::sql_query(
        "WITH moved AS (DELETE FROM delivery_dead_letters WHERE subscription_id = $1 \
           AND ($2::bigint IS NULL OR seq = $2) RETURNING subscription_id, event, received_at, ordering_key) \
         INSERT INTO delivery_retries (subscription_id, event, received_at, attempts, due_at, ordering_key) \
         SELECT subscription_id, event, received_at, 0, now(), ordering_key FROM moved",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Nullable<BigInt>, _>(seq)
    .execute(conn)
    .await
}

/// Per subscription: retries waiting and dead letters kept (for the gauges).
pub async fn backlog(
    conn: &mut AsyncPgConnection,
) -> QueryResult<std::collections::HashMap<Uuid, (i64, i64)>> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = SqlUuid)]
        subscription_id: Uuid,
        #[diesel(sql_type = BigInt)]
        waiting: i64,
        #[diesel(sql_type = BigInt)]
        dead: i64,
    }
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT subscription_id, sum(waiting)::bigint AS waiting, sum(dead)::bigint AS dead FROM ( \
           SELECT subscription_id, count(*) AS waiting, 0 AS dead FROM delivery_retries GROUP BY 1 \
           UNION ALL \
           SELECT subscription_id, 0, count(*) FROM delivery_dead_letters GROUP BY 1) counts \
         GROUP BY subscription_id",
    )
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.subscription_id, (row.waiting, row.dead)))
        .collect())
}
