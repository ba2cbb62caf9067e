//! The consumer's HTTP surface: health, readiness, the OpenAPI document, the read API and the
//! schema registry ([`schema_routes`]). Handlers only translate: parse parameters, call
//! [`crate::read::query`] or [`crate::read::schema_registry`], map the outcome.

pub mod schema_routes;
pub mod subscription_routes;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::Utc;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;
use service_runtime::auth::{Auth, Scope};
use service_runtime::http_error::SharedError;
use service_runtime::http_json;
use service_runtime::rate_limit::RateLimiter;
use service_runtime::server::Peer;

use crate::db::{database_answers, PgPool};
use crate::read::error::ReadError;
use crate::read::query::{self, params};
use crate::status::WorkerStatus;

/// The OpenAPI document for the public API, served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../../../../openapi.json");

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
    ("GET", "/v1/subscriptions"),
    ("POST", "/v1/subscriptions"),
    ("GET", "/v1/subscriptions/{id}"),
    ("PUT", "/v1/subscriptions/{id}"),
    ("DELETE", "/v1/subscriptions/{id}"),
    ("POST", "/v1/subscriptions/{id}/secret"),
    ("GET", "/v1/subscriptions/{id}/dead-letters"),
    ("POST", "/v1/subscriptions/{id}/dead-letters/redeliver"),
    (
        "POST",
        "/v1/subscriptions/{id}/dead-letters/{seq}/redeliver",
    ),
    ("GET", "/v1/subscriptions/{id}/replay"),
    ("POST", "/v1/subscriptions/{id}/replay"),
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
    /// Declares, counts and deletes subscriptions' queues.
    pub subscription_queues: crate::deliver::queues::SubscriptionQueues,
    /// Sink address rules and the secret rotation grace.
    pub delivery: crate::deliver::config::DeliveryConfig,
    /// Seals and opens subscriptions' signing secrets.
    pub secrets: crate::deliver::secret_box::SecretBox,
}

/// Handles one request and writes its log line.
pub async fn handle(
    state: Arc<AppState>,
    request: Request<Incoming>,
    peer: Peer,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let schema_path = schema_routes::parse_path(&path);
    let subscription_path = subscription_routes::parse_path(&path);
    let route = match (&schema_path, &subscription_path) {
        (Some(Ok(parsed)), _) => parsed.template(),
        (Some(Err(_)), _) => "/v1/schemas/{type}",
        (None, Some(Ok(parsed))) => parsed.template(),
        (None, Some(Err(_))) => "/v1/subscriptions/{id}",
        (None, None) => ROUTES
            .iter()
            .find(|(_, route)| *route == path)
            .map_or("(unmatched)", |(_, route)| *route),
    };
    let outcome = match (schema_path, subscription_path) {
        (Some(Ok(parsed)), _) => schema_routes::handle(&state, request, parsed).await,
        (Some(Err(error)), _) | (None, Some(Err(error))) => Err(error),
        (None, Some(Ok(parsed))) => subscription_routes::handle(&state, request, parsed).await,
        (None, None) => dispatch(&state, &request).await,
    };
    let response = match outcome {
        Ok(response) => response,
        Err(error) => {
            if matches!(error, ReadError::Database(_) | ReadError::Unavailable(_)) {
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
) -> Result<Response<Full<Bytes>>, ReadError> {
    let path = request.uri().path();
    if !ROUTES.iter().any(|(_, route)| *route == path) {
        return Err(ReadError::Shared(SharedError::NoRoute));
    }
    if request.method() != Method::GET {
        return Err(ReadError::Shared(SharedError::MethodNotAllowed {
            allow: "GET",
        }));
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
            .map_err(|limited| ReadError::Shared(SharedError::RateLimited(limited)))?;
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
                .ok_or(ReadError::NotFound)?;
            Ok(http_json::json(StatusCode::OK, &event))
        }
        "/v1/stats/counts" => {
            let query = params::counts_query(query, Utc::now())?;
            let mut connection = connection(state).await?;
            let counts = timed(state, query::count_events(&mut connection, &query)).await?;
            Ok(http_json::json(StatusCode::OK, &counts))
        }
        _ => Err(ReadError::Shared(SharedError::NoRoute)),
    }
}

/// Runs one read query and classifies its failure; see [`ReadError::from_database`].
pub(crate) async fn timed<T>(
    state: &AppState,
    query: impl std::future::Future<Output = diesel::QueryResult<T>>,
) -> Result<T, ReadError> {
    let started = Instant::now();
    query.await.map_err(|error| {
        ReadError::from_database(error, started.elapsed() >= state.statement_timeout)
    })
}

type PooledConnection =
    diesel_async::pooled_connection::deadpool::Object<diesel_async::AsyncPgConnection>;

async fn connection(state: &AppState) -> Result<PooledConnection, ReadError> {
    state
        .read_pool
        .get()
        .await
        .map_err(|error| ReadError::Unavailable(error.to_string()))
}

/// Admits a request to a resource that answers `allowed` methods (e.g. `"GET, PUT, DELETE"`):
/// 405 for another method; reading takes a read or admin key, changing an admin key; then the
/// caller's rate limit.
pub(crate) fn admit(
    state: &AppState,
    request: &Request<Incoming>,
    allowed: &'static str,
) -> Result<(), ReadError> {
    let method = request.method();
    if !allowed.split(", ").any(|name| name == method.as_str()) {
        return Err(ReadError::Shared(SharedError::MethodNotAllowed {
            allow: allowed,
        }));
    }
    let scopes: &[Scope] = if method == Method::GET {
        &[Scope::Read, Scope::Admin]
    } else {
        &[Scope::Admin]
    };
    let authorization = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let caller = state.auth.authorize_any(authorization, scopes)?;
    state
        .limiter
        .check(caller, 1.0)
        .map(drop)
        .map_err(|limited| ReadError::Shared(SharedError::RateLimited(limited)))
}

/// Reads a JSON request body of at most `limit` bytes, strictly (no duplicate keys, bounded
/// depth), within a deadline.
pub(crate) async fn read_json(
    request: Request<Incoming>,
    limit: usize,
) -> Result<serde_json::Value, ReadError> {
    use http_body_util::{BodyExt, Limited};
    let invalid = |code: &'static str, message: &str| ReadError::InvalidInput {
        code,
        message: message.to_owned(),
    };
    let body = match tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(request.into_body(), limit).collect(),
    )
    .await
    {
        Err(_) => return Err(invalid("body_timeout", "the body took too long to arrive")),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            return Err(ReadError::BodyTooLarge(limit))
        }
        Ok(Err(_)) => return Err(invalid("invalid_body", "the body could not be read")),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    shared_types::json::parse_strict(&body, shared_types::Limits::default().max_depth).map_err(
        |problem| ReadError::InvalidInput {
            code: "invalid_json",
            message: problem.message,
        },
    )
}

/// The longest a client may take to send a request body.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A connection to the primary, for the registry.
pub(crate) async fn write_connection(state: &AppState) -> Result<PooledConnection, ReadError> {
    state
        .write_pool
        .get()
        .await
        .map_err(|error| ReadError::Unavailable(error.to_string()))
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
