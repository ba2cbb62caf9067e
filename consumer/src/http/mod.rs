//! The consumer's HTTP surface: health, readiness, the OpenAPI document, the read API and the
//! schema registry ([`schemas`]). Handlers only translate: parse parameters, call
//! [`crate::query`] or [`crate::registry`], map the outcome.

pub mod schemas;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::Utc;
use http::header::{HeaderValue, ALLOW, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;
use service_runtime::auth::{Auth, AuthError, Scope};
use service_runtime::http_json;
use service_runtime::rate_limit::{Limited, RateLimiter};

use crate::db::{database_answers, PgPool};
use crate::query::{self, params};
use crate::worker::WorkerStatus;

/// The OpenAPI document for the public API, served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../../../openapi.json");

/// What the consumer answers, by path; the router and the OpenAPI test both read this table.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/v1/events"),
    ("GET", "/v1/events/lookup"),
    ("GET", "/v1/stats/counts"),
    ("GET", "/v1/schemas"),
    ("GET", "/v1/schemas/{type}"),
    ("PUT", "/v1/schemas/{type}"),
    ("DELETE", "/v1/schemas/{type}"),
    ("GET", "/v1/schemas/{type}/versions/{version}"),
    ("DELETE", "/v1/schemas/{type}/versions/{version}"),
];

/// What every request handler shares.
pub struct AppState {
    /// Pool for queries (the read URL).
    pub read_pool: PgPool,
    /// Pool the worker writes with (the primary): what readiness depends on.
    pub write_pool: PgPool,
    /// The worker's connection state.
    pub worker: Arc<WorkerStatus>,
    /// API keys.
    pub auth: Auth,
    /// Per-key token buckets for queries.
    pub limiter: RateLimiter,
    /// `Retry-After` seconds on a 503.
    pub retry_after_secs: u64,
    /// The read pool's statement timeout, to tell a cancelled query from a failed one.
    pub statement_timeout: std::time::Duration,
}

/// Why a read request failed. Mapped to HTTP in [`QueryError::into_response`] only.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// A parameter is invalid.
    #[error(transparent)]
    Param(#[from] params::ParamError),
    /// No event with that key.
    #[error("no event with this source and id")]
    NotFound,
    /// No such schema type or version in the registry.
    #[error("no schema registered under this type or version")]
    SchemaNotFound,
    /// A request body or path segment the registry cannot take.
    #[error("{message}")]
    InvalidInput {
        /// Stable code.
        code: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A request body over the limit, in bytes.
    #[error("the body exceeds {0} bytes")]
    BodyTooLarge(usize),
    /// No pooled connection in time.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// Postgres cancelled the query at the statement timeout.
    #[error("the query took longer than the statement timeout")]
    Timeout,
    /// Anything else the database said.
    #[error("database error: {0}")]
    Database(diesel::result::Error),
    /// No route for this path.
    #[error("no route for this path")]
    NoRoute,
    /// The path exists, but not for this method.
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    /// No key, a wrong key, or a key of the other scope.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The key's rate limit is spent.
    #[error("rate limit exceeded for this API key")]
    RateLimited(Limited),
}

impl QueryError {
    /// Classifies a failed query. PostgreSQL reports a statement timeout as SQLSTATE 57014, but
    /// diesel 2.3 and diesel-async 0.9 map only a fixed set of SQLSTATEs to
    /// [`diesel::result::DatabaseErrorKind`] (57014 is not among them) and otherwise expose just
    /// the message, which the server translates per `lc_messages`. So a timeout is recognised by
    /// what does not depend on language: an unclassified database error raised once the statement
    /// timeout had elapsed is the server cancelling the statement.
    fn from_database(error: diesel::result::Error, timeout_elapsed: bool) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match &error {
            Error::DatabaseError(DatabaseErrorKind::Unknown, _) if timeout_elapsed => {
                QueryError::Timeout
            }
            Error::DatabaseError(
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                _,
            ) => QueryError::Unavailable(error.to_string()),
            _ => QueryError::Database(error),
        }
    }

    /// The response in the shared error shape; 503s carry `Retry-After`.
    pub fn into_response(self, retry_after_secs: u64) -> Response<Full<Bytes>> {
        let (status, code, message) = match &self {
            QueryError::Param(error) => (
                StatusCode::BAD_REQUEST,
                error.code,
                format!("invalid parameter {}: {}", error.parameter, error.message),
            ),
            QueryError::NotFound => (StatusCode::NOT_FOUND, "not_found", self.to_string()),
            QueryError::SchemaNotFound => {
                (StatusCode::NOT_FOUND, "schema_not_found", self.to_string())
            }
            QueryError::InvalidInput { code, message } => {
                (StatusCode::BAD_REQUEST, *code, message.clone())
            }
            QueryError::BodyTooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "too_large", self.to_string())
            }
            QueryError::NoRoute => (StatusCode::NOT_FOUND, "not_found", self.to_string()),
            QueryError::MethodNotAllowed(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                self.to_string(),
            ),
            QueryError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "the database is unavailable".to_owned(),
            ),
            QueryError::Timeout => (
                StatusCode::SERVICE_UNAVAILABLE,
                "query_timeout",
                self.to_string(),
            ),
            QueryError::Database(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the query failed".to_owned(),
            ),
            QueryError::Auth(AuthError::Missing) => (
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                self.to_string(),
            ),
            QueryError::Auth(AuthError::Invalid) => (
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                self.to_string(),
            ),
            QueryError::Auth(AuthError::WrongScope(_)) => {
                (StatusCode::FORBIDDEN, "forbidden", self.to_string())
            }
            QueryError::RateLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                self.to_string(),
            ),
        };
        let details = match &self {
            QueryError::Param(error) => {
                vec![json!({"parameter": error.parameter, "code": error.code})]
            }
            _ => Vec::new(),
        };
        let mut response = http_json::error(status, code, &message, details);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        let extra = http_json::extra_headers(
            match &self {
                QueryError::Auth(error) => Some(error),
                _ => None,
            },
            match &self {
                QueryError::RateLimited(limited) => Some(limited),
                _ => None,
            },
        );
        response.headers_mut().extend(extra);
        if let QueryError::MethodNotAllowed(allow) = self {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

/// Handles one request and writes its log line.
pub async fn handle(
    state: Arc<AppState>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let schema_path = schemas::parse_path(&path);
    let route = match &schema_path {
        Some(Ok(parsed)) => parsed.template(),
        Some(Err(_)) => "/v1/schemas/{type}",
        None => ROUTES
            .iter()
            .find(|(_, route)| *route == path)
            .map_or("(unmatched)", |(_, route)| *route),
    };
    let outcome = match schema_path {
        Some(parsed) => match parsed {
            Ok(parsed) => schemas::handle(&state, request, parsed).await,
            Err(error) => Err(error),
        },
        None => dispatch(&state, &request).await,
    };
    let response = match outcome {
        Ok(response) => response,
        Err(error) => {
            if matches!(error, QueryError::Database(_) | QueryError::Unavailable(_)) {
                tracing::warn!(%error, route, "query failed");
            }
            error.into_response(state.retry_after_secs)
        }
    };
    let status = response.status().as_u16().to_string();
    metrics::counter!("warren_consumer_requests_total", "route" => route, "status" => status)
        .increment(1);
    if route.starts_with("/v1/") {
        metrics::histogram!("warren_consumer_query_duration_seconds", "route" => route)
            .record(started.elapsed().as_secs_f64());
    }
    tracing::info!(
        %method,
        route,
        status = response.status().as_u16(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        %peer,
        "request"
    );
    response
}

async fn dispatch(
    state: &AppState,
    request: &Request<Incoming>,
) -> Result<Response<Full<Bytes>>, QueryError> {
    let path = request.uri().path();
    if !ROUTES.iter().any(|(_, route)| *route == path) {
        return Err(QueryError::NoRoute);
    }
    if request.method() != Method::GET {
        return Err(QueryError::MethodNotAllowed("GET"));
    }
    let query = request.uri().query();
    if matches!(
        path,
        "/v1/events" | "/v1/events/lookup" | "/v1/stats/counts"
    ) {
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        let caller = state.auth.authorize(authorization, Scope::Read)?;
        state
            .limiter
            .check(caller, 1.0)
            .map_err(QueryError::RateLimited)?;
    }
    match path {
        "/healthz" => Ok(http_json::json(StatusCode::OK, &json!({"status": "ok"}))),
        "/readyz" => Ok(readiness(state).await),
        "/metrics" => {
            metrics::gauge!("warren_consumer_db_pool_connections_in_use", "pool" => "read").set(
                state.read_pool.status().size as f64 - state.read_pool.status().available as f64,
            );
            Ok(service_runtime::metrics::response())
        }
        "/v1/openapi.json" => Ok(http_json::static_json(OPENAPI)),
        "/v1/events" => {
            let query = params::list_query(query)?;
            let mut connection = connection(state).await?;
            let page = timed(state, query::list_events(&mut connection, &query)).await?;
            Ok(http_json::json(StatusCode::OK, &page))
        }
        "/v1/events/lookup" => {
            let query = params::lookup_query(query)?;
            let mut connection = connection(state).await?;
            let event = timed(state, query::lookup_event(&mut connection, &query))
                .await?
                .ok_or(QueryError::NotFound)?;
            Ok(http_json::json(StatusCode::OK, &event))
        }
        "/v1/stats/counts" => {
            let query = params::counts_query(query, Utc::now())?;
            let mut connection = connection(state).await?;
            let counts = timed(state, query::count_events(&mut connection, &query)).await?;
            Ok(http_json::json(StatusCode::OK, &counts))
        }
        _ => Err(QueryError::NoRoute),
    }
}

/// Runs one read query and classifies its failure; see [`QueryError::from_database`].
pub(crate) async fn timed<T>(
    state: &AppState,
    query: impl std::future::Future<Output = diesel::QueryResult<T>>,
) -> Result<T, QueryError> {
    let started = Instant::now();
    query.await.map_err(|error| {
        QueryError::from_database(error, started.elapsed() >= state.statement_timeout)
    })
}

type PooledConnection =
    diesel_async::pooled_connection::deadpool::Object<diesel_async::AsyncPgConnection>;

async fn connection(state: &AppState) -> Result<PooledConnection, QueryError> {
    state
        .read_pool
        .get()
        .await
        .map_err(|error| QueryError::Unavailable(error.to_string()))
}

/// A connection to the primary, for the registry.
pub(crate) async fn write_connection(state: &AppState) -> Result<PooledConnection, QueryError> {
    state
        .write_pool
        .get()
        .await
        .map_err(|error| QueryError::Unavailable(error.to_string()))
}

/// Ready when the worker can store: subscribed, and the primary answers. A read replica that is
/// down is reported (`read_database`) but does not make the consumer unready: ingest goes on,
/// and only queries answer 503.
async fn readiness(state: &AppState) -> Response<Full<Bytes>> {
    let broker = state.worker.consuming.load(Ordering::Acquire);
    let database = database_answers(&state.write_pool).await;
    let read_database = database_answers(&state.read_pool).await;
    http_json::readiness(
        broker && database,
        json!({"broker": broker, "database": database, "read_database": read_database}),
    )
}
