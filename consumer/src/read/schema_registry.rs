//! The schema registry's storage: versions of a JSON Schema per event type, in `event_schemas`.
//!
//! Versions are immutable. Registering a schema that equals the type's current one (with the same
//! policy) returns that version instead of adding one, so a retried `PUT` is harmless. Retiring
//! keeps the row; the newest version that is not retired is the type's current schema.

use chrono::{DateTime, Utc};
use diesel::result::{DatabaseErrorKind, Error};
use diesel::sql_types::{Bool, Integer, Jsonb, Nullable, Text, Timestamptz};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use serde_json::Value;
use shared_types::data_schema::{version_path, Policy};

/// One version of a type's schema.
#[derive(Debug, Clone, Serialize, QueryableByName)]
pub struct SchemaVersion {
    /// The CloudEvents type it applies to.
    #[diesel(sql_type = Text)]
    #[serde(rename = "type")]
    pub event_type: String,
    /// 1, 2, …; never reused.
    #[diesel(sql_type = Integer)]
    pub version: i32,
    /// `enforce` or `warn`.
    #[diesel(sql_type = Text)]
    pub policy: String,
    /// When it was registered.
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    /// When it was retired; retired versions are not enforced.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub retired_at: Option<DateTime<Utc>>,
    /// The JSON Schema, absent from summaries.
    #[diesel(sql_type = Nullable<Jsonb>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
}

impl SchemaVersion {
    /// The path an event's `dataschema` ends with to name this version.
    pub fn dataschema_path(&self) -> String {
        version_path(&self.event_type, u32::try_from(self.version).unwrap_or(0))
    }
}

/// A version as the API answers it: the row and the `dataschema` path that names it.
#[derive(Debug, Serialize)]
pub struct VersionView {
    /// The stored version.
    #[serde(flatten)]
    pub version: SchemaVersion,
    /// Append to the public base URL to make this version's `dataschema`.
    pub dataschema_path: String,
}

impl From<SchemaVersion> for VersionView {
    fn from(version: SchemaVersion) -> Self {
        let dataschema_path = version.dataschema_path();
        VersionView {
            version,
            dataschema_path,
        }
    }
}

const COLUMNS: &str = "type AS event_type, version, policy, created_at, retired_at";

/// Registers `schema` for `event_type`: a new version, or the current one when it is identical.
/// Returns the version and whether it is new. Concurrent registrations of one type are
/// serialised by the primary key: the loser retries with the next version number.
pub async fn register(
    connection: &mut AsyncPgConnection,
    event_type: &str,
    schema: &Value,
    policy: Policy,
) -> diesel::QueryResult<(SchemaVersion, bool)> {
    #[derive(QueryableByName)]
    struct Registered {
        #[diesel(embed)]
        version: SchemaVersion,
        #[diesel(sql_type = Bool)]
        created: bool,
    }
    let statement = format!(
        "WITH current AS ( \
             SELECT * FROM event_schemas WHERE type = $1 AND retired_at IS NULL \
             ORDER BY version DESC LIMIT 1), \
         unchanged AS ( \
             SELECT * FROM current WHERE schema = $2 AND policy = $3), \
         inserted AS ( \
             INSERT INTO event_schemas (type, version, schema, policy) \
             SELECT $1, COALESCE((SELECT max(version) FROM event_schemas WHERE type = $1), 0) + 1, \
                    $2, $3 \
             WHERE NOT EXISTS (SELECT 1 FROM unchanged) \
             RETURNING *) \
         SELECT {COLUMNS}, schema, true AS created FROM inserted \
         UNION ALL SELECT {COLUMNS}, schema, false AS created FROM unchanged"
    );
    let mut attempts = 0;
    loop {
        let result: diesel::QueryResult<Registered> = diesel::sql_query(&statement)
            .bind::<Text, _>(event_type)
            .bind::<Jsonb, _>(schema)
            .bind::<Text, _>(policy.as_str())
            .get_result(connection)
            .await;
        match result {
            Err(Error::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) if attempts < 5 => {
                attempts += 1;
            }
            other => return other.map(|registered| (registered.version, registered.created)),
        }
    }
}

/// Every type's current version, without the schema bodies, by type.
pub async fn current_versions(
    connection: &mut AsyncPgConnection,
) -> diesel::QueryResult<Vec<SchemaVersion>> {
    diesel::sql_query(format!(
        "SELECT DISTINCT ON (type) {COLUMNS}, NULL::jsonb AS schema FROM event_schemas \
         WHERE retired_at IS NULL ORDER BY type, version DESC"
    ))
    .load(connection)
    .await
}

/// Every version in force (not retired), with its schema: what a gateway enforces.
pub async fn active_versions(
    connection: &mut AsyncPgConnection,
) -> diesel::QueryResult<Vec<SchemaVersion>> {
    diesel::sql_query(format!(
        "SELECT {COLUMNS}, schema FROM event_schemas WHERE retired_at IS NULL \
         ORDER BY type, version"
    ))
    .load(connection)
    .await
}

/// Every version of one type, newest first, retired ones included; the current one (the newest
/// not retired) carries its schema.
pub async fn versions_of(
    connection: &mut AsyncPgConnection,
    event_type: &str,
) -> diesel::QueryResult<Vec<SchemaVersion>> {
    diesel::sql_query(format!(
        "SELECT {COLUMNS}, CASE WHEN version = (SELECT max(version) FROM event_schemas \
             WHERE type = $1 AND retired_at IS NULL) THEN schema END AS schema \
         FROM event_schemas WHERE type = $1 ORDER BY version DESC"
    ))
    .bind::<Text, _>(event_type)
    .load(connection)
    .await
}

/// One version with its schema, retired or not.
pub async fn version(
    connection: &mut AsyncPgConnection,
    event_type: &str,
    version: i32,
) -> diesel::QueryResult<Option<SchemaVersion>> {
    use diesel::OptionalExtension;
    diesel::sql_query(format!(
        "SELECT {COLUMNS}, schema FROM event_schemas WHERE type = $1 AND version = $2"
    ))
    .bind::<Text, _>(event_type)
    .bind::<Integer, _>(version)
    .get_result(connection)
    .await
    .optional()
}

/// Retires one version of a type, or every version when `version` is `None`. Returns the
/// versions that match (already retired ones keep their first `retired_at`), so an empty answer
/// means there is no such version.
pub async fn retire(
    connection: &mut AsyncPgConnection,
    event_type: &str,
    version: Option<i32>,
) -> diesel::QueryResult<Vec<SchemaVersion>> {
    diesel::sql_query(format!(
        "UPDATE event_schemas SET retired_at = COALESCE(retired_at, now()) \
         WHERE type = $1 AND ($2::integer IS NULL OR version = $2) \
         RETURNING {COLUMNS}, NULL::jsonb AS schema"
    ))
    .bind::<Text, _>(event_type)
    .bind::<Nullable<Integer>, _>(version)
    .load(connection)
    .await
}
