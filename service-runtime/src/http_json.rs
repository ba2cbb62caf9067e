//! JSON responses in the one error shape every Warren endpoint (and nginx) uses:
//! `{"error": {"code": "...", "message": "...", "details": [...]}}`.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

/// The body of every error response.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a, D: Serialize> {
    /// The error object.
    pub error: ErrorObject<'a, D>,
}

/// What went wrong, for machines (`code`, `details`) and for humans (`message`).
#[derive(Debug, Serialize)]
pub struct ErrorObject<'a, D: Serialize> {
    /// Stable machine-readable code.
    pub code: &'a str,
    /// A sentence for humans.
    pub message: &'a str,
    /// Per-field problems; empty when there are none.
    pub details: D,
}

/// A JSON response with `status`.
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// An error response in the shared shape.
pub fn error<D: Serialize>(
    status: StatusCode,
    code: &str,
    message: &str,
    details: D,
) -> Response<Full<Bytes>> {
    json(
        status,
        &ErrorBody {
            error: ErrorObject {
                code,
                message,
                details,
            },
        },
    )
}

/// A JSON document known at compile time (the OpenAPI document), served as is.
pub fn static_json(document: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(document.as_bytes())));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The `/readyz` answer: 200 `ready` when every check holds, else 503 `not_ready`, with the
/// checks listed so an operator sees which one failed.
pub fn readiness(ready: bool, checks: serde_json::Value) -> Response<Full<Bytes>> {
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        status,
        &serde_json::json!({
            "status": if ready { "ready" } else { "not_ready" },
            "checks": checks,
        }),
    )
}

/// An error response without details.
pub fn simple_error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    error(status, code, message, [(); 0])
}

/// `WWW-Authenticate` for auth failures and `Retry-After` plus `RateLimit-*` for 429s: the
/// headers both services add to those errors.
pub fn extra_headers(
    auth: Option<&crate::auth::AuthError>,
    limited: Option<&crate::rate_limit::Limited>,
) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    if let Some(error) = auth {
        let value = match error {
            crate::auth::AuthError::WrongScope(_) => {
                "Bearer realm=\"warren\", error=\"insufficient_scope\""
            }
            crate::auth::AuthError::Invalid => "Bearer realm=\"warren\", error=\"invalid_token\"",
            crate::auth::AuthError::Missing => "Bearer realm=\"warren\"",
        };
        headers.insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(value),
        );
    }
    if let Some(limited) = limited {
        headers.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from(limited.retry_after_secs.max(1)),
        );
        headers.extend(quota_headers(&limited.quota));
    }
    headers
}

/// `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` for a quota.
pub fn quota_headers(quota: &crate::rate_limit::Quota) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert("ratelimit-limit", HeaderValue::from(quota.limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(quota.remaining));
    headers.insert("ratelimit-reset", HeaderValue::from(quota.reset_secs));
    headers
}
