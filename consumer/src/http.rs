//! The consumer's HTTP surface: health, readiness, the OpenAPI document (and, with the read
//! path, queries). Handlers only translate.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;
use shared_types::http_json;

use crate::db::PgPool;
use crate::worker::{database_answers, WorkerStatus};

/// The OpenAPI document for the public API, served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// What every request handler shares.
pub struct AppState {
    /// Pool for queries (the read URL).
    pub read_pool: PgPool,
    /// The worker's connection state.
    pub worker: Arc<WorkerStatus>,
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
    let (route, response) = route(&state, &request).await;
    tracing::info!(
        %method,
        route,
        path = %path,
        status = response.status().as_u16(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        %peer,
        "request"
    );
    response
}

async fn route(
    state: &AppState,
    request: &Request<Incoming>,
) -> (&'static str, Response<Full<Bytes>>) {
    let path = request.uri().path();
    match (request.method(), path) {
        (&Method::GET, "/healthz") => (
            "/healthz",
            http_json::json(StatusCode::OK, &json!({"status": "ok"})),
        ),
        (&Method::GET, "/readyz") => ("/readyz", readiness(state).await),
        (&Method::GET, "/v1/openapi.json") => {
            let mut response = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            ("/v1/openapi.json", response)
        }
        (_, "/healthz" | "/readyz" | "/v1/openapi.json") => {
            let mut response = http_json::simple_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed",
            );
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET"));
            ("(method)", response)
        }
        _ => (
            "(unmatched)",
            http_json::simple_error(StatusCode::NOT_FOUND, "not_found", "no route for this path"),
        ),
    }
}

async fn readiness(state: &AppState) -> Response<Full<Bytes>> {
    let broker = state.worker.consuming.load(Ordering::Acquire);
    let database = database_answers(&state.read_pool).await;
    let status = if broker && database {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    http_json::json(
        status,
        &json!({
            "status": if status == StatusCode::OK { "ready" } else { "not_ready" },
            "checks": {"broker": broker, "database": database},
        }),
    )
}
