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

/// An error response without details.
pub fn simple_error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    error(status, code, message, [(); 0])
}
