//! Replay from storage: `POST /v1/subscriptions/{id}/replay` (or `since` at creation) records a
//! job; a worker claims it with a lease, walks the events received in `[since, until)` in the
//! order received (`received_at`, then `seq`), delivers the ones the subscription matches
//! (marked `warren-replay: true`) within `WARREN_DELIVERY_REPLAY_RATE` events per second, and
//! keeps its place after every page, so a worker that stops leaves the rest to the next one.
//! Failures become ordinary retries.
//! Replays run beside live delivery and share the subscription's in-flight limit; they are not
//! ordered with respect to live events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use diesel::sql_types::{BigInt, Date, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel::QueryResult;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use serde_json::Value;
use shared_types::event::{Event, EventData};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::deliverer::{after_attempt, Deliverer};
use super::retries::Snapshot;
use super::schedule::Next;
use super::store::{self, Pending};
use super::subscription::{Status, Subscription};

/// Events read per page.
const PAGE: i64 = 200;
/// The first stretch of receive time a page's query reads; each page's stretch then doubles when
/// it held less than half a page and halves when it filled one, between the two bounds below.
/// The query reads every event of its stretch (a BRIN index finds them, in no order) and sorts
/// them, so a stretch should hold about a page: a minute bounds what one query reads where a
/// quiet stretch is followed by a busy one, and how many queries an empty stretch takes.
const FIRST_STRETCH: chrono::TimeDelta = chrono::TimeDelta::seconds(1);
/// The shortest stretch a page reads.
const SHORTEST_STRETCH: chrono::TimeDelta = chrono::TimeDelta::milliseconds(1);
/// The longest stretch a page reads.
const LONGEST_STRETCH: chrono::TimeDelta = chrono::TimeDelta::minutes(1);
/// How long a claim holds a job between pages.
const LEASE_SECS: i64 = 60;

/// A replay job as the API shows it.
#[derive(Debug, Clone, Serialize, diesel::QueryableByName)]
pub struct Replay {
    /// The job.
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// Whose.
    #[diesel(sql_type = SqlUuid)]
    pub subscription_id: Uuid,
    /// First receive time replayed.
    #[diesel(sql_type = Timestamptz)]
    pub since: DateTime<Utc>,
    /// Receive times before this are replayed.
    #[diesel(sql_type = Timestamptz)]
    pub until: DateTime<Utc>,
    /// Receive time reached: every event received before it is done, and those received at
    /// it up to `cursor_seq`.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    #[serde(skip)]
    pub cursor_received_at: Option<DateTime<Utc>>,
    /// See `cursor_received_at`.
    #[diesel(sql_type = Nullable<BigInt>)]
    #[serde(skip)]
    pub cursor_seq: Option<i64>,
    /// Matching events handed to the sink so far (delivered or left to retries).
    #[diesel(sql_type = BigInt)]
    pub delivered: i64,
    /// `running` or `done`.
    #[diesel(sql_type = Text)]
    pub status: String,
    /// When it was asked for.
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    /// When it finished.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub finished_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, subscription_id, since, until, cursor_received_at, cursor_seq, \
                       delivered, status, created_at, finished_at";

/// Records a replay job.
pub async fn create(
    conn: &mut AsyncPgConnection,
    subscription_id: Uuid,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> QueryResult<Replay> {
    diesel::sql_query(format!(
        "INSERT INTO delivery_replays (id, subscription_id, since, until, status) \
         VALUES ($1, $2, $3, $4, 'running') RETURNING {COLUMNS}"
    ))
    .bind::<SqlUuid, _>(Uuid::now_v7())
    .bind::<SqlUuid, _>(subscription_id)
    .bind::<Timestamptz, _>(since)
    .bind::<Timestamptz, _>(until)
    .get_result(conn)
    .await
}

/// A subscription's replays, newest first.
pub async fn list(conn: &mut AsyncPgConnection, subscription_id: Uuid) -> QueryResult<Vec<Replay>> {
    diesel::sql_query(format!(
        "SELECT {COLUMNS} FROM delivery_replays WHERE subscription_id = $1 ORDER BY created_at DESC LIMIT 100"
    ))
    .bind::<SqlUuid, _>(subscription_id)
    .load(conn)
    .await
}

async fn claim(conn: &mut AsyncPgConnection) -> QueryResult<Option<Replay>> {
    let mut found: Vec<Replay> = diesel::sql_query(format!(
        "UPDATE delivery_replays SET lease_until = now() + make_interval(secs => $1) \
         WHERE id = (SELECT id FROM delivery_replays WHERE status = 'running' AND lease_until <= now() \
           ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING {COLUMNS}"
    ))
    .bind::<BigInt, _>(LEASE_SECS)
    .load(conn)
    .await?;
    Ok(found.pop())
}

/// Lets any worker claim `id` again now.
async fn release(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<()> {
    diesel::sql_query("UPDATE delivery_replays SET lease_until = now() WHERE id = $1")
        .bind::<SqlUuid, _>(id)
        .execute(conn)
        .await?;
    Ok(())
}

async fn advance(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    cursor: Position,
    delivered: i64,
    done: bool,
) -> QueryResult<()> {
    diesel::sql_query(
        "UPDATE delivery_replays SET cursor_received_at = $6, cursor_seq = $2, \
         delivered = delivered + $3, lease_until = now() + make_interval(secs => $4), \
         status = CASE WHEN $5 THEN 'done' ELSE status END, \
         finished_at = CASE WHEN $5 THEN now() ELSE finished_at END WHERE id = $1",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<BigInt, _>(cursor.seq)
    .bind::<BigInt, _>(delivered)
    .bind::<BigInt, _>(LEASE_SECS)
    .bind::<diesel::sql_types::Bool, _>(done)
    .bind::<Timestamptz, _>(cursor.received_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// A place in the walk: every event received before `received_at` is done, and those received
/// at it whose `seq` is up to `seq` (0: none of them, as every `seq` is positive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    received_at: DateTime<Utc>,
    seq: i64,
}

impl Position {
    /// Where `job` left off, or its start.
    fn of(job: &Replay) -> Self {
        match job.cursor_received_at {
            Some(received_at) => Self {
                received_at,
                seq: job.cursor_seq.unwrap_or(0),
            },
            None => Self {
                received_at: job.since,
                seq: 0,
            },
        }
    }
}

/// The stretch of receive time the next page reads, from how full this one was.
fn next_stretch(stretch: chrono::TimeDelta, rows: usize) -> chrono::TimeDelta {
    let rows = rows as i64;
    if rows >= PAGE {
        (stretch / 2).max(SHORTEST_STRETCH)
    } else if rows < PAGE / 2 {
        (stretch * 2).min(LONGEST_STRETCH)
    } else {
        stretch
    }
}

#[derive(diesel::QueryableByName)]
struct StoredRow {
    #[diesel(sql_type = BigInt)]
    seq: i64,
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
    #[diesel(sql_type = Timestamptz)]
    received_at: DateTime<Utc>,
}

impl StoredRow {
    fn event(self) -> (Event, DateTime<Utc>) {
        let extensions: BTreeMap<String, Value> = match self.extensions {
            Value::Object(map) => map.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        let data = match (self.data, self.data_base64) {
            (Some(value), _) => Some(EventData::Json(value)),
            (None, Some(text)) => Some(EventData::Base64(text)),
            (None, None) => None,
        };
        let event = Event {
            id: self.id,
            source: self.source,
            event_type: self.event_type,
            subject: self.subject,
            time: self.time,
            datacontenttype: self.datacontenttype,
            dataschema: self.dataschema,
            data,
            extensions,
        };
        (event, self.received_at)
    }
}

/// At most a page of the stored events received after `after` and before `before`, in the order
/// received. The `received_on` bounds let PostgreSQL read only the partitions concerned, and the
/// plain bound on `received_at` lets it find the stretch through the BRIN index (a row
/// comparison cannot).
async fn page(
    conn: &mut AsyncPgConnection,
    after: Position,
    before: DateTime<Utc>,
) -> QueryResult<Vec<StoredRow>> {
    let first_day: NaiveDate = after.received_at.date_naive();
    let last_day: NaiveDate = before.date_naive();
    diesel::sql_query(
        "SELECT seq, id, source, type AS event_type, subject, time, datacontenttype, dataschema, \
         data, data_base64, extensions, received_at FROM events \
         WHERE received_on BETWEEN $1 AND $2 AND received_at >= $3 AND received_at < $4 \
           AND (received_at, seq) > ($3, $5) \
         ORDER BY received_at, seq LIMIT $6",
    )
    .bind::<Date, _>(first_day)
    .bind::<Date, _>(last_day)
    .bind::<Timestamptz, _>(after.received_at)
    .bind::<Timestamptz, _>(before)
    .bind::<BigInt, _>(after.seq)
    .bind::<BigInt, _>(PAGE)
    .load(conn)
    .await
}

/// Runs replay jobs until `cancel` fires.
pub async fn run(
    deliverer: Arc<Deliverer>,
    subscriptions: watch::Receiver<Snapshot>,
    cancel: CancellationToken,
) {
    loop {
        let job = match deliverer.pool.get().await {
            Ok(mut conn) => claim(&mut conn).await.unwrap_or_else(|error| {
                tracing::warn!(%error, "cannot claim a replay");
                None
            }),
            Err(_) => None,
        };
        if let Some(job) = job {
            let subscription = subscriptions.borrow().get(&job.subscription_id).cloned();
            match subscription {
                Some(subscription) if subscription.spec.status == Status::Active => {
                    replay(&deliverer, &subscription, job, &cancel).await;
                    continue;
                }
                // Paused: the lease brings the job back once it runs out.
                Some(_) => {}
                // Not in this worker's view of the subscriptions yet (made a moment ago): give
                // the job back at once rather than hold it for a whole lease.
                None => {
                    if let Ok(mut conn) = deliverer.pool.get().await {
                        if let Err(error) = release(&mut conn, job.id).await {
                            tracing::warn!(%error, replay = %job.id, "cannot give a replay back; its lease will");
                        }
                    }
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn replay(
    deliverer: &Deliverer,
    subscription: &Subscription,
    job: Replay,
    cancel: &CancellationToken,
) {
    tracing::info!(replay = %job.id, subscription = %subscription.id, since = %job.since, until = %job.until, "replaying");
    let mut position = Position::of(&job);
    let mut stretch = FIRST_STRETCH;
    let rate = f64::from(deliverer.config.replay_rate);
    while !cancel.is_cancelled() {
        let started = Instant::now();
        let before = position
            .received_at
            .checked_add_signed(stretch)
            .map_or(job.until, |end| end.min(job.until));
        let rows = match deliverer.pool.get().await {
            Ok(mut conn) => page(&mut conn, position, before).await,
            Err(error) => Err(diesel::result::Error::QueryBuilderError(
                error.to_string().into(),
            )),
        };
        let rows = match rows {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, replay = %job.id, "cannot read stored events; the lease will bring the replay back");
                return;
            }
        };
        // A full page may have left events of its stretch for the next one; a short page read
        // the whole stretch, and the last stretch ends the replay.
        let full = rows.len() as i64 >= PAGE;
        let next_position = match rows.last() {
            Some(row) if full => Position {
                received_at: row.received_at,
                seq: row.seq,
            },
            _ => Position {
                received_at: before,
                seq: 0,
            },
        };
        let last_page = !full && before >= job.until;
        stretch = next_stretch(stretch, rows.len());
        let matching: Vec<Pending> = rows
            .into_iter()
            .map(StoredRow::event)
            .filter(|(event, _)| subscription.spec.matches(event))
            .map(|(event, received_at)| Pending {
                subscription_id: subscription.id,
                ordering_key: None,
                event,
                received_at,
                attempts: 0,
                last_status: None,
                last_error: None,
                replay: true,
            })
            .collect();
        let count = matching.len();
        let attempts = matching.into_iter().map(|pending| async move {
            let outcome = deliverer.attempt(subscription, &pending).await;
            let pending = after_attempt(pending, &outcome);
            let next = deliverer.next(subscription, &pending, &outcome);
            (pending, next)
        });
        let results = futures_util::future::join_all(attempts).await;
        let Ok(mut conn) = deliverer.pool.get().await else {
            return;
        };
        for (pending, next) in results {
            let kept = match next {
                Next::Done => Ok(()),
                Next::RetryAt(at) => store::schedule_retry(&mut conn, &pending, at).await,
                Next::Pause => match store::schedule_retry(&mut conn, &pending, Utc::now()).await {
                    Ok(()) => {
                        store::pause(&mut conn, subscription.id, "the sink answered 410 Gone").await
                    }
                    Err(error) => Err(error),
                },
                Next::DeadLetter => store::insert_dead_letter(&mut conn, &pending).await,
            };
            if let Err(error) = kept {
                tracing::warn!(%error, replay = %job.id, "cannot keep a failed replayed event; the page will be replayed again");
                return;
            }
        }
        if let Err(error) = advance(&mut conn, job.id, next_position, count as i64, last_page).await
        {
            tracing::warn!(%error, replay = %job.id, "cannot record the replay's progress");
            return;
        }
        position = next_position;
        if last_page {
            tracing::info!(replay = %job.id, "replay done");
            return;
        }
        // Hold the rate: a page of `count` events takes at least count / rate seconds.
        let minimum = Duration::from_secs_f64(count as f64 / rate);
        if let Some(rest) = minimum.checked_sub(started.elapsed()) {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(rest) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(cursor_received_at: Option<DateTime<Utc>>, cursor_seq: Option<i64>) -> Replay {
        let since = DateTime::<Utc>::UNIX_EPOCH + chrono::TimeDelta::days(20_000);
        Replay {
            id: Uuid::nil(),
            subscription_id: Uuid::nil(),
            since,
            until: since + chrono::TimeDelta::hours(1),
            cursor_received_at,
            cursor_seq,
            delivered: 0,
            status: "running".into(),
            created_at: since,
            finished_at: None,
        }
    }

    #[test]
    fn a_new_replay_starts_before_every_event_received_at_its_since() {
        let new = job(None, None);
        assert_eq!(
            Position::of(&new),
            Position {
                received_at: new.since,
                seq: 0
            }
        );
        // A cursor from before the walk was in receive order (a seq alone) is not trusted.
        let old = job(None, Some(41));
        assert_eq!(Position::of(&old).received_at, old.since);
        assert_eq!(Position::of(&old).seq, 0);
    }

    #[test]
    fn a_resumed_replay_starts_after_the_last_event_it_recorded() {
        let at = DateTime::<Utc>::UNIX_EPOCH + chrono::TimeDelta::days(20_000);
        let resumed = job(Some(at), Some(41));
        assert_eq!(
            Position::of(&resumed),
            Position {
                received_at: at,
                seq: 41
            }
        );
    }

    #[test]
    fn the_stretch_halves_after_a_full_page_and_doubles_after_a_sparse_one() {
        let second = chrono::TimeDelta::seconds(1);
        assert_eq!(next_stretch(second, PAGE as usize), second / 2);
        assert_eq!(next_stretch(second, 0), second * 2);
        assert_eq!(next_stretch(second, (PAGE / 2 - 1) as usize), second * 2);
        assert_eq!(next_stretch(second, (PAGE / 2) as usize), second);
        assert_eq!(
            next_stretch(SHORTEST_STRETCH, PAGE as usize),
            SHORTEST_STRETCH
        );
        assert_eq!(next_stretch(LONGEST_STRETCH, 0), LONGEST_STRETCH);
    }
}
