//! Weekly partitions of `events`: made ahead of time, and dropped whole when retention ends.
//!
//! A partition is named `events_wYYYYMMDD` after its Monday and holds the events received (UTC)
//! from that Monday to the next: a list query opens an index scan in every partition, so fewer
//! partitions make every query cheaper (docs/benchmarks.md, fourteenth round). The SQL function
//! `warren_events_partition(day)` (see `migrations/`) is the one place that creates one; it is
//! idempotent and safe when several consumers call it together. Every consumer runs
//! [`maintain`]: at start and then hourly it makes sure the partitions of today and the next
//! days exist, and, with `WARREN_RETENTION_DAYS` set, drops the partitions whose every day fell
//! out of the window. Dropping a partition is a catalog operation, not a DELETE: no dead rows,
//! no vacuum; the price is that an event is kept up to six days longer than the window.

use std::time::Duration;

use chrono::{Days, NaiveDate, Utc};
use diesel::sql_types::{Date, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use tokio_util::sync::CancellationToken;

use crate::db::PgPool;

/// Days after today whose partitions are made in advance, so midnight never finds one missing.
pub const DAYS_AHEAD: u64 = 2;

/// How often [`maintain`] runs after its first pass.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(3600);

/// How long a partition drop may wait for its lock before it gives up until the next pass, so
/// that a long query cannot make ingest queue behind the drop.
const DROP_LOCK_TIMEOUT: &str = "5s";

/// What retention keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Whole UTC days kept before today; a partition is dropped once all its days are older.
    pub days: u32,
}

impl Retention {
    /// The oldest day kept when today is `today`.
    pub fn first_kept_day(self, today: NaiveDate) -> NaiveDate {
        today
            .checked_sub_days(Days::new(u64::from(self.days)))
            .unwrap_or(NaiveDate::MIN)
    }
}

/// Makes sure the partition holding `day` exists; returns its name.
pub async fn ensure(
    connection: &mut AsyncPgConnection,
    day: NaiveDate,
) -> diesel::QueryResult<String> {
    #[derive(diesel::QueryableByName)]
    struct Made {
        #[diesel(sql_type = Text)]
        name: String,
    }
    let made: Made = diesel::sql_query("SELECT warren_events_partition($1) AS name")
        .bind::<Date, _>(day)
        .get_result(connection)
        .await?;
    Ok(made.name)
}

/// One partition of `events`.
#[derive(Debug, Clone, PartialEq, Eq, diesel::QueryableByName)]
pub struct Partition {
    /// Its table name.
    #[diesel(sql_type = Text)]
    pub name: String,
    /// The first day it holds.
    #[diesel(sql_type = Date)]
    pub first_day: NaiveDate,
    /// The day after the last one it holds (its upper bound, exclusive).
    #[diesel(sql_type = Date)]
    pub end_day: NaiveDate,
}

/// The partitions of `events`, oldest first, with the days they hold read from the catalog, so
/// retention also handles partitions made by an earlier layout (daily ones, before migration
/// `2026-12-01-000004`).
pub async fn list(connection: &mut AsyncPgConnection) -> diesel::QueryResult<Vec<Partition>> {
    diesel::sql_query(
        "SELECT name, bounds[1]::date AS first_day, bounds[2]::date AS end_day FROM ( \
           SELECT c.relname::text AS name, \
                  regexp_match(pg_get_expr(c.relpartbound, c.oid), \
                               'FROM \\(''([^'']+)''\\) TO \\(''([^'']+)''\\)') AS bounds \
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
           WHERE i.inhparent = 'events'::regclass) AS partitions \
         WHERE bounds IS NOT NULL \
         ORDER BY first_day",
    )
    .load(connection)
    .await
}

/// Drops every partition whose days are all before `first_kept`; returns the dropped ones.
pub async fn drop_before(
    connection: &mut AsyncPgConnection,
    first_kept: NaiveDate,
) -> diesel::QueryResult<Vec<Partition>> {
    let mut dropped = Vec::new();
    for partition in list(connection).await? {
        if partition.end_day > first_kept {
            continue;
        }
        let statement = format!("DROP TABLE IF EXISTS \"{}\"", partition.name);
        connection
            .transaction(async |connection| {
                diesel::sql_query(format!("SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT}'"))
                    .execute(connection)
                    .await?;
                diesel::sql_query(statement).execute(connection).await
            })
            .await?;
        dropped.push(partition);
    }
    Ok(dropped)
}

/// One maintenance pass: the partitions of today and the next [`DAYS_AHEAD`] days, then
/// retention.
pub async fn maintain_once(
    connection: &mut AsyncPgConnection,
    retention: Option<Retention>,
    today: NaiveDate,
) -> diesel::QueryResult<Vec<Partition>> {
    for ahead in 0..=DAYS_AHEAD {
        if let Some(day) = today.checked_add_days(Days::new(ahead)) {
            ensure(connection, day).await?;
        }
    }
    let dropped = match retention {
        Some(retention) => {
            let first_kept = retention.first_kept_day(today);
            let dropped = drop_before(connection, first_kept).await?;
            for partition in &dropped {
                tracing::info!(
                    partition = %partition.name,
                    first_day = %partition.first_day,
                    end_day = %partition.end_day,
                    retention_days = retention.days,
                    "dropped a partition past retention"
                );
            }
            metrics::counter!("warren_consumer_partitions_dropped_total")
                .increment(dropped.len() as u64);
            dropped
        }
        None => Vec::new(),
    };
    let count = list(connection).await?.len();
    metrics::gauge!("warren_consumer_partitions").set(count as f64);
    Ok(dropped)
}

/// Runs [`maintain_once`] now and every [`MAINTENANCE_INTERVAL`] until `cancel` fires. A failed
/// pass is logged and tried again at the next interval; writes create a missing day on their own.
pub async fn maintain(pool: PgPool, retention: Option<Retention>, cancel: CancellationToken) {
    loop {
        let pass = async {
            let mut connection = pool.get().await.map_err(|error| error.to_string())?;
            maintain_once(&mut connection, retention, Utc::now().date_naive())
                .await
                .map_err(|error| error.to_string())
        };
        if let Err(error) = pass.await {
            tracing::warn!(%error, "partition maintenance failed; retrying at the next interval");
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(MAINTENANCE_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_keeps_that_many_days_before_today() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 22).unwrap_or(NaiveDate::MIN);
        let kept = Retention { days: 7 }.first_kept_day(today);
        assert_eq!(
            kept,
            NaiveDate::from_ymd_opt(2026, 11, 15).unwrap_or(NaiveDate::MAX)
        );
    }
}
