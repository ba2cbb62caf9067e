//! Reading from a streaming replica: how far behind the primary it is.
//!
//! With `WARREN_DATABASE_READ_URL` pointing at a PostgreSQL hot standby, the read API serves from
//! it and an event just stored may not be visible there yet (read-after-write is not guaranteed
//! across the split). [`watch`] measures that delay every [`LAG_INTERVAL`] and exports it as
//! `warren_consumer_replica_lag_seconds`, so an operator sees it and a client knows how long to
//! wait.

use std::time::Duration;

use diesel::sql_types::{Double, Nullable};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use tokio_util::sync::CancellationToken;

use crate::db::PgPool;

/// How often the lag is measured.
pub const LAG_INTERVAL: Duration = Duration::from_secs(2);

/// How far the server behind `connection` is behind its primary, in seconds: `None` when it is
/// not a standby. A standby that has replayed everything it received counts as 0 s, so an idle
/// primary (no new commits to replay) does not look like a growing lag.
pub async fn lag_seconds(connection: &mut AsyncPgConnection) -> diesel::QueryResult<Option<f64>> {
    #[derive(diesel::QueryableByName)]
    struct Lag {
        #[diesel(sql_type = Nullable<Double>)]
        seconds: Option<f64>,
    }
    let lag: Lag = diesel::sql_query(
        "SELECT CASE WHEN NOT pg_is_in_recovery() THEN NULL \
                     WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
                     ELSE greatest(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0) \
                END::float8 AS seconds",
    )
    .get_result(connection)
    .await?;
    Ok(lag.seconds)
}

/// Measures the read pool's replica lag until `cancel` fires. Failures (the replica is down) are
/// logged once per outage; the gauge keeps its last value and `warren_consumer_replica_up` says 0.
pub async fn watch(read_pool: PgPool, cancel: CancellationToken) {
    let mut was_up = true;
    loop {
        let measured = async {
            let mut connection = read_pool.get().await.map_err(|error| error.to_string())?;
            lag_seconds(&mut connection)
                .await
                .map_err(|error| error.to_string())
        };
        match measured.await {
            Ok(lag) => {
                metrics::gauge!("warren_consumer_replica_up").set(1.0);
                if let Some(seconds) = lag {
                    metrics::gauge!("warren_consumer_replica_lag_seconds").set(seconds);
                }
                was_up = true;
            }
            Err(error) => {
                metrics::gauge!("warren_consumer_replica_up").set(0.0);
                if was_up {
                    tracing::warn!(%error, "the read replica does not answer; queries get 503");
                }
                was_up = false;
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(LAG_INTERVAL) => {}
        }
    }
}
