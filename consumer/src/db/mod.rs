//! Database plumbing both sides share: pools, creating the database, migrations under an
//! advisory lock so replicas starting together cannot race, the weekly partitions
//! ([`partitions`]) and the `events` table as diesel sees it ([`tables`]).

pub mod partitions;
pub mod tables;

use std::time::Duration;

use diesel::ConnectionError;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncConnection, AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

/// The migrations in `migrations/`, compiled in.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");

/// Advisory lock key held while migrating ("warren" in ASCII).
const MIGRATION_LOCK: i64 = 0x0000_7761_7272_656e;

/// A pool of Postgres connections.
pub type PgPool = Pool<AsyncPgConnection>;

/// Database failures at startup.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Could not connect.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// Why.
        source: ConnectionError,
    },
    /// A statement failed.
    #[error("database statement failed: {0}")]
    Query(#[from] diesel::result::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// The pool could not be built.
    #[error("cannot build the connection pool: {0}")]
    Pool(String),
    /// The URL names no database.
    #[error("the database URL names no database: {0}")]
    NoDatabaseName(String),
}

/// How a pool's connections let PostgreSQL plan the statements they prepare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plans {
    /// The server's choice (plans for the values of the first runs, then maybe a generic one):
    /// the write side, whose statements touch one or two partitions.
    ServerChoice,
    /// One generic plan per prepared statement, made on its first run and reused. The read
    /// API's list statements are shaped so that one index answers them whatever the values
    /// (migrations/2026-12-01-000001_type_estimate_for_generic_plans); planning them for their
    /// values walked every partition and its indexes on every request, ten times the
    /// cost of running them. A statement that needs a plan for its values asks for it itself.
    Generic,
}

/// A pool whose connections cancel any statement running longer than `statement_timeout`.
pub fn pool(
    url: &str,
    size: usize,
    wait_timeout: Duration,
    statement_timeout: Duration,
    plans: Plans,
) -> Result<PgPool, DbError> {
    // One round trip sets every session setting.
    let mut settings = format!(
        "SELECT set_config('statement_timeout', '{}', false)",
        statement_timeout.as_millis()
    );
    if plans == Plans::Generic {
        settings += ", set_config('plan_cache_mode', 'force_generic_plan', false)";
    }
    let mut manager_config = ManagerConfig::<AsyncPgConnection>::default();
    manager_config.custom_setup = Box::new(move |url| {
        let url = url.to_owned();
        let settings = settings.clone();
        Box::pin(async move {
            let mut connection = AsyncPgConnection::establish(&url).await?;
            diesel::sql_query(settings)
                .execute(&mut connection)
                .await
                .map_err(ConnectionError::CouldntSetupConfiguration)?;
            Ok(connection)
        })
    });
    let manager =
        AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, manager_config);
    bounded_pool(manager, size, wait_timeout).map_err(|error| DbError::Pool(error.to_string()))
}

/// A pool of at most `size` connections from `manager`, whose checkout, connect and recycle each
/// give up after `wait_timeout`: the bounds every database pool of the consumer shares.
pub fn bounded_pool<M: deadpool::managed::Manager>(
    manager: M,
    size: usize,
    wait_timeout: Duration,
) -> Result<deadpool::managed::Pool<M>, deadpool::managed::BuildError> {
    deadpool::managed::Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(wait_timeout))
        .create_timeout(Some(wait_timeout))
        .recycle_timeout(Some(wait_timeout))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
}

/// Creates the database `url` names when it does not exist, connecting to `postgres` to do so.
pub async fn ensure_database(url: &str) -> Result<(), DbError> {
    let (admin_url, name) = split_database(url)?;
    let mut admin = connect(&admin_url).await?;
    #[derive(diesel::QueryableByName)]
    struct Found {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        exists: bool,
    }
    let found: Found =
        diesel::sql_query("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS exists")
            .bind::<diesel::sql_types::Text, _>(&name)
            .get_result(&mut admin)
            .await?;
    if !found.exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match diesel::sql_query(format!("CREATE DATABASE {quoted}"))
            .execute(&mut admin)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created the database"),
            // Another replica created it between our check and our CREATE.
            Err(error) if error.to_string().contains("already exists") => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

/// Creates the database if needed and applies pending migrations, holding an advisory lock so
/// that only one replica migrates at a time. Needs the multi-threaded runtime.
pub async fn migrate(url: &str) -> Result<usize, DbError> {
    ensure_database(url).await?;
    let mut connection = connect(url).await?;
    diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
        .execute(&mut connection)
        .await?;
    let mut harness = AsyncMigrationHarness::new(connection);
    let applied = harness
        .run_pending_migrations(MIGRATIONS)
        .map(|versions| versions.len())
        .map_err(|error| DbError::Migration(error.to_string()));
    let mut connection = harness.into_inner();
    diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
        .execute(&mut connection)
        .await?;
    let applied = applied?;
    if applied > 0 {
        tracing::info!(applied, "applied migrations");
    }
    Ok(applied)
}

/// One connection outside any pool.
pub async fn connect(url: &str) -> Result<AsyncPgConnection, DbError> {
    AsyncPgConnection::establish(url)
        .await
        .map_err(|source| DbError::Connect {
            url: service_runtime::config::redact_url(url),
            source,
        })
}

/// Splits `postgres://u@h:p/name?x` into (`postgres://u@h:p/postgres?x`, `name`).
pub fn split_database(url: &str) -> Result<(String, String), DbError> {
    let no_name = || DbError::NoDatabaseName(service_runtime::config::redact_url(url));
    let authority_start = url.find("://").ok_or_else(no_name)? + 3;
    let path_start = url[authority_start..]
        .find('/')
        .map(|offset| authority_start + offset)
        .ok_or_else(no_name)?;
    let (path, query) = match url[path_start + 1..].split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (&url[path_start + 1..], None),
    };
    if path.is_empty() {
        return Err(no_name());
    }
    let mut admin = format!("{}/postgres", &url[..path_start]);
    if let Some(query) = query {
        admin.push('?');
        admin.push_str(query);
    }
    Ok((admin, path.to_owned()))
}

/// Whether the database answers a trivial query within a second.
pub async fn database_answers(pool: &PgPool) -> bool {
    let probe = async {
        let mut connection = pool.get().await.ok()?;
        diesel::sql_query("SELECT 1")
            .execute(&mut connection)
            .await
            .ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), probe).await,
        Ok(Some(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_split_from_the_url() {
        let (admin, name) = split_database("postgres://u:p@h:5432/warren?sslmode=disable").unwrap();
        assert_eq!(admin, "postgres://u:p@h:5432/postgres?sslmode=disable");
        assert_eq!(name, "warren");
    }

    #[test]
    fn url_without_database_is_refused() {
        assert!(split_database("postgres://h:5432").is_err());
        assert!(split_database("postgres://h:5432/").is_err());
    }
}
