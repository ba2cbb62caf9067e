//! Routes and handlers. Handlers only translate: read the request, call [`crate::decode`] and
//! the [`Dispatcher`], map the outcome.

pub mod error;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::Utc;
use http::header::{HeaderValue, CONTENT_LENGTH};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::json;
use service_runtime::auth::Scope;
use service_runtime::http_error::SharedError;
use service_runtime::http_json;
use service_runtime::rate_limit::RateLimiter;
use service_runtime::server::Peer;
use shared_types::Event;

pub use error::ApiError;

use crate::config::GatewayConfig;
use crate::decode::{decode_content, decode_events, DecodeError, Mode};
use crate::dispatch::Dispatcher;
use crate::publish::EventPublisher;
use crate::request_id::{self, request_id};

/// The OpenAPI document for the public API, served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../../../openapi.json");

/// What the gateway answers, by path; the router and the OpenAPI test both read this table.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/events"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v1/openapi.json"),
];

/// What every request handler shares.
pub struct AppState<P> {
    /// Turns accepted events into confirmed broker messages.
    pub dispatcher: Dispatcher<P>,
    /// Settings.
    pub config: GatewayConfig,
    /// Set when shutdown starts, so `/readyz` turns red before connections drain.
    pub draining: AtomicBool,
    /// Per-key token buckets for ingest.
    pub limiter: RateLimiter,
    /// The JSON Schemas in force, kept current by [`crate::schema_registry::refresh`].
    pub schemas: Arc<crate::schema_registry::enforce::Schemas>,
}

/// Handles one request and writes its log line.
pub async fn handle<P: EventPublisher>(
    state: Arc<AppState<P>>,
    request: Request<Incoming>,
    peer: Peer,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let id = request_id(request.headers());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let (route, outcome) = route(&state, request, &id).await;
    let (mut response, events) = match outcome {
        Ok((response, events)) => (response, events),
        Err(error) => {
            let status = error.status();
            if status.is_server_error() {
                tracing::warn!(request_id = %id, error = %error, "request failed");
            }
            record_failure(&error);
            (error.into_response(state.config.retry_after_secs), 0)
        }
    };
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(request_id::HEADER, value);
    }
    let status = response.status().as_u16().to_string();
    metrics::counter!("warren_gateway_requests_total", "route" => route, "status" => status)
        .increment(1);
    metrics::histogram!("warren_gateway_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    tracing::info!(
        request_id = %id,
        %method,
        route,
        path = %path,
        status = response.status().as_u16(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        events,
        %peer,
        "request"
    );
    response
}

type Outcome = Result<(Response<Full<Bytes>>, usize), ApiError>;

/// Rejected events by code, and 503s by cause.
fn record_failure(error: &ApiError) {
    match error {
        ApiError::Decode(DecodeError::InvalidEvents(problems)) => {
            for problem in problems {
                metrics::counter!("warren_gateway_events_rejected_total", "code" => problem.code.as_str())
                    .increment(1);
            }
        }
        ApiError::Publish(_) | ApiError::ShuttingDown | ApiError::SchemasUnavailable => {
            metrics::counter!("warren_gateway_unavailable_total", "cause" => error.code())
                .increment(1);
        }
        other if other.status().is_client_error() => {
            metrics::counter!("warren_gateway_events_rejected_total", "code" => other.code())
                .increment(1);
        }
        _ => {}
    }
}

async fn route<P: EventPublisher>(
    state: &AppState<P>,
    request: Request<Incoming>,
    request_id: &str,
) -> (&'static str, Outcome) {
    let limit = state.config.server.max_header_bytes;
    if service_runtime::server::head_size(request.headers()) > limit {
        return ("(any)", Err(ApiError::HeadersTooLarge { limit }));
    }
    let path = request.uri().path();
    let Some(&(allowed, route)) = ROUTES.iter().find(|(_, route)| *route == path) else {
        return ("(unmatched)", Err(ApiError::Shared(SharedError::NoRoute)));
    };
    if request.method().as_str() != allowed {
        let allow = if allowed == "POST" { "POST" } else { "GET" };
        return (
            route,
            Err(ApiError::Shared(SharedError::MethodNotAllowed { allow })),
        );
    }
    let outcome = match route {
        "/v1/events" => ingest(state, request, request_id).await,
        "/healthz" => Ok((http_json::json(StatusCode::OK, &json!({"status": "ok"})), 0)),
        "/readyz" => Ok((readiness(state), 0)),
        "/metrics" => Ok((service_runtime::metrics::response(), 0)),
        "/v1/openapi.json" => Ok((http_json::static_json(OPENAPI), 0)),
        _ => Err(ApiError::Shared(SharedError::NoRoute)),
    };
    (route, outcome)
}

/// Ready when the broker takes publishes, not draining, and (with a registry) schemas loaded.
fn readiness<P: EventPublisher>(state: &AppState<P>) -> Response<Full<Bytes>> {
    let draining = state.draining.load(Ordering::Acquire);
    let broker = state.dispatcher.is_ready();
    if state.config.schema_registry.is_none() {
        return http_json::readiness(
            broker && !draining,
            json!({"broker": broker, "draining": draining}),
        );
    }
    let schemas = state.schemas.get().is_some();
    http_json::readiness(
        broker && !draining && schemas,
        json!({
            "broker": broker,
            "draining": draining,
            "schemas": schemas,
            "schema_age_seconds": state.schemas.age_secs(),
        }),
    )
}

async fn ingest<P: EventPublisher>(
    state: &AppState<P>,
    request: Request<Incoming>,
    request_id: &str,
) -> Outcome {
    if state.draining.load(Ordering::Acquire) {
        return Err(ApiError::ShuttingDown);
    }
    let authorization = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let caller = state.config.auth.authorize(authorization, Scope::Ingest)?;
    let received_at = Utc::now();
    let limits = &state.config.limits;
    let (parts, body) = request.into_parts();
    let declared_length = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared_length.is_some_and(|length| length > limits.max_body_bytes) {
        return Err(DecodeError::BodyTooLarge {
            limit: limits.max_body_bytes,
        }
        .into());
    }
    let body = read_body(body, limits.max_body_bytes, state.config.body_timeout).await?;
    let body = decode_content(&parts.headers, body, limits.max_body_bytes)?;
    let (mode, events) = decode_events(&parts.headers, &body, limits, received_at)?;
    check_schemas(state, mode, &events)?;
    let count = events.len();
    let quota = state
        .limiter
        .check(caller, count as f64)
        .map_err(|limited| ApiError::Shared(SharedError::RateLimited(limited)))?;
    let confirm_started = std::time::Instant::now();
    state
        .dispatcher
        .dispatch(request_id, received_at, events)
        .await?;
    metrics::histogram!("warren_gateway_publish_confirm_seconds")
        .record(confirm_started.elapsed().as_secs_f64());
    metrics::counter!("warren_gateway_events_accepted_total").increment(count as u64);
    let mut response = http_json::json(StatusCode::ACCEPTED, &json!({"accepted": count}));
    if let Some(quota) = quota {
        response
            .headers_mut()
            .extend(http_json::quota_headers(&quota));
    }
    Ok((response, count))
}

/// Checks `data` against the registered schemas, when a registry is configured.
fn check_schemas<P>(state: &AppState<P>, mode: Mode, events: &[Event]) -> Result<(), ApiError> {
    if state.config.schema_registry.is_none() {
        return Ok(());
    }
    let set = state.schemas.get().ok_or(ApiError::SchemasUnavailable)?;
    let problems = set.check(mode, events, state.config.schema_required);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(DecodeError::InvalidEvents(problems).into())
    }
}

async fn read_body(
    body: Incoming,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(ApiError::BodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) => {
            if error.is::<http_body_util::LengthLimitError>() {
                Err(DecodeError::BodyTooLarge { limit }.into())
            } else {
                Err(ApiError::BodyRead)
            }
        }
    }
}
