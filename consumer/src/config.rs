//! Consumer settings: `WARREN_*` variables over documented defaults, validated at startup.

use std::net::SocketAddr;
use std::time::Duration;

use service_runtime::auth::Auth;
use service_runtime::config::{amqp_url, ConfigError, SecretUrl, Settings};
use service_runtime::rate_limit::{Limit, RateLimiter};
use service_runtime::server::ServerSettings;
use service_runtime::topology::{QueueLimits, Topology};

use crate::db::partitions::Retention;
use crate::deliver::config::DeliveryConfig;
use crate::write::store::RetryWindow;

/// Everything the consumer needs to run.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// HTTP listen address for health and queries (`WARREN_CONSUMER_ADDR`).
    pub addr: SocketAddr,
    /// Where events are written (`WARREN_DATABASE_URL`).
    pub database_url: SecretUrl,
    /// Where queries read (`WARREN_DATABASE_READ_URL`, default: the write URL).
    pub database_read_url: SecretUrl,
    /// Largest number of pooled database connections, per pool.
    pub pool_size: usize,
    /// Longest wait for a pooled connection.
    pub pool_timeout: Duration,
    /// Queries are cancelled by Postgres after this long.
    pub statement_timeout: Duration,
    /// Batch writes are cancelled by Postgres after this long (then retried).
    pub write_timeout: Duration,
    /// AMQP URL (may hold a password).
    pub amqp_url: SecretUrl,
    /// Names of the exchange and queues.
    pub topology: Topology,
    /// Store-queue arguments, applied only when the queue is first created.
    pub queue_limits: QueueLimits,
    /// How to batch deliveries into writes.
    pub batch: BatchSettings,
    /// Longest pause between reconnect or retry attempts.
    pub max_backoff: Duration,
    /// Connection bounds and the drain deadline of the HTTP server.
    pub server: ServerSettings,
    /// Test-only: a fixed delay added to every batch write, to measure consumer scaling.
    pub write_delay: Duration,
    /// API keys (`WARREN_AUTH`, `WARREN_INGEST_KEYS`, `WARREN_READ_KEYS`, `WARREN_KEYS_FILE`).
    pub auth: Auth,
    /// Per-key queries per second (`WARREN_READ_RATE_LIMIT`, `WARREN_READ_RATE_BURST`).
    pub read_limit: Option<Limit>,
    /// Days of events kept (`WARREN_RETENTION_DAYS`; unset or 0 keeps everything).
    pub retention: Option<Retention>,
    /// How far apart a client retry and its original may be, across midnight, and still be
    /// stored once (`WARREN_DEDUP_RETRY_WINDOW_SECS`).
    pub retry_window: RetryWindow,
    /// Seconds clients are told to wait in `Retry-After` on a 503 (`WARREN_RETRY_AFTER_SECS`).
    pub retry_after_secs: u64,
    /// Deprecated variables that were read, to log once telemetry is up.
    pub deprecations: Vec<String>,
    /// Subscriptions and their delivery workers (`WARREN_DELIVERY_*`).
    pub delivery: DeliveryConfig,
}

/// Consumer variables that were renamed: (current name, old name still read with a warning).
/// `WARREN_BATCH_MAX_EVENTS` differed from the gateway's per-request `WARREN_MAX_BATCH_EVENTS`
/// only in word order, so the per-write settings now say "write".
pub const RENAMED: &[(&str, &str)] = &[
    ("WARREN_WRITE_BATCH_EVENTS", "WARREN_BATCH_MAX_EVENTS"),
    ("WARREN_WRITE_BATCH_WAIT_MS", "WARREN_BATCH_MAX_WAIT_MS"),
];

/// When a batch is written: at `max_events` events or `max_wait` after its first delivery.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    /// Events that fill a batch.
    pub max_events: usize,
    /// Longest time the first delivery of a batch waits for the write.
    pub max_wait: Duration,
    /// Unacknowledged messages the broker may push to this consumer (`basic.qos`).
    pub prefetch: u16,
    /// Batch writes one consumer runs at once, each in its own transaction: more than one lets
    /// a batch be written while the one before it commits.
    pub writes_in_flight: usize,
}

impl ConsumerConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_settings(&Settings::from_env())
    }

    /// Only `WARREN_DATABASE_URL`: what `consumer migrate` needs, so a one-shot migration job
    /// does not have to carry API keys or broker settings.
    pub fn database_url(settings: &Settings<'_>) -> Result<SecretUrl, ConfigError> {
        let database_url = settings.string(
            "WARREN_DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/warren",
        );
        check_postgres_url("WARREN_DATABASE_URL", &database_url)?;
        Ok(SecretUrl::new(database_url))
    }

    /// Reads any settings source; every bad value names its variable.
    pub fn from_settings(settings: &Settings<'_>) -> Result<Self, ConfigError> {
        let (settings, deprecations) = settings.with_renamed(RENAMED);
        let settings = &settings;
        let database_url = Self::database_url(settings)?;
        let database_read_url = match settings.raw("WARREN_DATABASE_READ_URL") {
            Some(url) => {
                check_postgres_url("WARREN_DATABASE_READ_URL", &url)?;
                SecretUrl::new(url)
            }
            None => database_url.clone(),
        };
        let config = Self {
            addr: settings.parse("WARREN_CONSUMER_ADDR", ([127, 0, 0, 1], 8082).into())?,
            database_url,
            database_read_url,
            pool_size: settings.bounded("WARREN_DB_POOL_SIZE", 8, 1..=256)?,
            pool_timeout: settings.millis("WARREN_DB_POOL_TIMEOUT_MS", 5_000, 10..=120_000)?,
            statement_timeout: settings.millis(
                "WARREN_STATEMENT_TIMEOUT_MS",
                5_000,
                10..=600_000,
            )?,
            write_timeout: settings.millis("WARREN_WRITE_TIMEOUT_MS", 30_000, 100..=600_000)?,
            amqp_url: amqp_url(settings)?,
            topology: Topology::from_settings(settings)?,
            queue_limits: QueueLimits::from_settings(settings)?,
            batch: BatchSettings {
                max_events: settings.bounded("WARREN_WRITE_BATCH_EVENTS", 2_000, 1..=50_000)?,
                max_wait: settings.millis("WARREN_WRITE_BATCH_WAIT_MS", 50, 1..=60_000)?,
                prefetch: settings.bounded("WARREN_PREFETCH", 200, 1..=u16::MAX)?,
                writes_in_flight: settings.bounded("WARREN_WRITES_IN_FLIGHT", 1, 1..=8)?,
            },
            max_backoff: settings.millis(
                "WARREN_RECONNECT_MAX_BACKOFF_MS",
                5_000,
                100..=300_000,
            )?,
            server: ServerSettings::from_settings(settings)?,
            write_delay: settings.millis("WARREN_TEST_WRITE_DELAY_MS", 0, 0..=60_000)?,
            auth: Auth::from_settings(settings)?,
            read_limit: RateLimiter::limit_from_settings(settings, "WARREN_READ", 1)?,
            retry_after_secs: service_runtime::config::retry_after_secs(settings)?,
            retention: match settings.bounded("WARREN_RETENTION_DAYS", 0u32, 0..=36_500)? {
                0 => None,
                days => Some(Retention { days }),
            },
            retry_window: RetryWindow(chrono::Duration::seconds(settings.bounded(
                "WARREN_DEDUP_RETRY_WINDOW_SECS",
                3_600i64,
                0..=86_400,
            )?)),
            delivery: DeliveryConfig::from_settings(settings)?,
            deprecations,
        };
        if config.batch.writes_in_flight > config.pool_size {
            return Err(ConfigError {
                name: "WARREN_WRITES_IN_FLIGHT".into(),
                value: config.batch.writes_in_flight.to_string(),
                reason: format!(
                    "each write holds a pooled connection: at most WARREN_DB_POOL_SIZE ({})",
                    config.pool_size
                ),
            });
        }
        Ok(config)
    }
}

fn check_postgres_url(name: &str, url: &str) -> Result<(), ConfigError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(())
    } else {
        Err(ConfigError {
            name: name.into(),
            value: service_runtime::config::redact_url(url),
            reason: "must start with postgres:// or postgresql://".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<ConsumerConfig, ConfigError> {
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .copied()
            .chain([("WARREN_AUTH", "off")])
            .collect();
        ConsumerConfig::from_settings(&Settings::from_pairs(&pairs))
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let config = config(&[]).unwrap();
        assert_eq!(config.addr.to_string(), "127.0.0.1:8082");
        assert_eq!(
            config.database_url.expose(),
            "postgres://postgres@127.0.0.1:5432/warren"
        );
        assert_eq!(
            config.database_read_url.expose(),
            "postgres://postgres@127.0.0.1:5432/warren"
        );
        assert_eq!(config.topology.store_queue(), "warren.events.store");
        assert_eq!(config.batch.max_events, 2_000);
        assert_eq!(config.batch.max_wait, Duration::from_millis(50));
        assert_eq!(config.batch.writes_in_flight, 1);
    }

    #[test]
    fn the_old_batch_variable_still_sets_the_write_batch_with_a_deprecation() {
        let config = config(&[("WARREN_BATCH_MAX_EVENTS", "300")]).unwrap();
        assert_eq!(config.batch.max_events, 300);
        assert_eq!(config.deprecations.len(), 1);
        assert!(config.deprecations[0].contains("WARREN_WRITE_BATCH_EVENTS"));
    }

    #[test]
    fn bad_database_url_names_the_variable() {
        let error = config(&[("WARREN_DATABASE_URL", "mysql://x")]).unwrap_err();
        assert_eq!(error.name, "WARREN_DATABASE_URL");
    }

    #[test]
    fn more_writes_in_flight_than_pooled_connections_is_refused() {
        let error = config(&[
            ("WARREN_WRITES_IN_FLIGHT", "4"),
            ("WARREN_DB_POOL_SIZE", "3"),
        ])
        .unwrap_err();
        assert_eq!(error.name, "WARREN_WRITES_IN_FLIGHT");
        let config = config(&[
            ("WARREN_WRITES_IN_FLIGHT", "3"),
            ("WARREN_DB_POOL_SIZE", "3"),
        ]);
        assert_eq!(config.unwrap().batch.writes_in_flight, 3);
    }

    #[test]
    fn zero_prefetch_is_refused() {
        let error = config(&[("WARREN_PREFETCH", "0")]).unwrap_err();
        assert_eq!(error.name, "WARREN_PREFETCH");
    }

    #[test]
    fn migrate_needs_only_the_database_url_not_api_keys() {
        let settings = Settings::from_pairs(&[("WARREN_DATABASE_URL", "postgres://db/x")]);
        assert!(
            ConsumerConfig::from_settings(&settings).is_err(),
            "auth is on by default"
        );
        assert_eq!(
            ConsumerConfig::database_url(&settings).unwrap().expose(),
            "postgres://db/x"
        );
        let bad = Settings::from_pairs(&[("WARREN_DATABASE_URL", "mysql://x")]);
        assert_eq!(
            ConsumerConfig::database_url(&bad).unwrap_err().name,
            "WARREN_DATABASE_URL"
        );
    }
}
