//! The one place gateway errors become HTTP responses.
//!
//! The match is exhaustive, so a new error variant cannot ship without a status and a code.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use shared_types::problem::Problem;

use service_runtime::auth::AuthError;
use service_runtime::http_error::{service_error, SharedError};

use crate::decode::DecodeError;
use crate::publish::PublishError;

/// Everything a gateway request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request's body or headers are not acceptable events.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The broker did not durably accept the events; the client may retry.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The client sent its body too slowly.
    #[error("the request body was not received in time")]
    BodyTimeout,
    /// The connection failed while the body was read.
    #[error("the request body could not be read")]
    BodyRead,
    /// The request's headers exceed the limit.
    #[error("the request headers exceed {limit} bytes")]
    HeadersTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The gateway is shutting down.
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// Refused the way every Warren service refuses: auth, rate limit, route, method.
    #[error(transparent)]
    Shared(#[from] SharedError),
    /// A schema registry is configured but has not answered since the gateway started.
    #[error("the schemas are not loaded yet")]
    SchemasUnavailable,
}

impl ApiError {
    /// The stable code clients branch on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Decode(error) => match error {
                DecodeError::UnsupportedMediaType(_) => "unsupported_media_type",
                DecodeError::UnsupportedEncoding(_) => "unsupported_encoding",
                DecodeError::InvalidGzip => "invalid_encoding",
                DecodeError::BodyTooLarge { .. } | DecodeError::BatchTooLarge { .. } => "too_large",
                DecodeError::Json(problem) => problem.code.as_str(),
                DecodeError::EmptyBatch => "empty_batch",
                DecodeError::InvalidEvents(_) => "invalid_event",
            },
            ApiError::Publish(error) => match error {
                PublishError::Unavailable | PublishError::ConnectionLost => "broker_unavailable",
                PublishError::Blocked => "broker_blocked",
                PublishError::Overloaded => "overloaded",
                PublishError::ConfirmTimeout => "confirm_timeout",
                PublishError::Nacked => "broker_nack",
                PublishError::Unroutable => "unroutable",
            },
            ApiError::BodyTimeout => "request_timeout",
            ApiError::BodyRead => "invalid_body",
            ApiError::HeadersTooLarge { .. } => "headers_too_large",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::SchemasUnavailable => "schemas_unavailable",
            ApiError::Shared(error) => error.code(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Decode(error) => match error {
                DecodeError::UnsupportedMediaType(_) | DecodeError::UnsupportedEncoding(_) => {
                    StatusCode::UNSUPPORTED_MEDIA_TYPE
                }
                DecodeError::BodyTooLarge { .. } | DecodeError::BatchTooLarge { .. } => {
                    StatusCode::PAYLOAD_TOO_LARGE
                }
                DecodeError::InvalidGzip
                | DecodeError::Json(_)
                | DecodeError::EmptyBatch
                | DecodeError::InvalidEvents(_) => StatusCode::BAD_REQUEST,
            },
            ApiError::Publish(_) | ApiError::ShuttingDown | ApiError::SchemasUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::BodyRead => StatusCode::BAD_REQUEST,
            ApiError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::Shared(error) => error.status(),
        }
    }

    /// The response, in the shared error shape; 503s carry `Retry-After`.
    pub fn into_response(self, retry_after_secs: u64) -> Response<Full<Bytes>> {
        if let ApiError::Shared(error) = &self {
            return error.into_response();
        }
        let status = self.status();
        let code = self.code();
        let message = match &self {
            ApiError::Decode(DecodeError::InvalidEvents(_)) => {
                "one or more events are invalid; see details".to_owned()
            }
            other => other.to_string(),
        };
        let details: Vec<Problem> = match self {
            ApiError::Decode(DecodeError::InvalidEvents(problems)) => problems,
            ApiError::Decode(DecodeError::Json(problem)) => vec![problem],
            _ => Vec::new(),
        };
        service_error(status, code, &message, details, retry_after_secs)
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        ApiError::Shared(SharedError::Auth(error))
    }
}

/// Every `warren_gateway_unavailable_total{cause}` label a 503 can carry, so each series exists at
/// zero from the start (a dashboard's `rate()` then shows 0, not "no data").
pub fn unavailable_causes() -> impl Iterator<Item = &'static str> {
    [
        PublishError::Unavailable,
        PublishError::ConnectionLost,
        PublishError::Blocked,
        PublishError::Overloaded,
        PublishError::ConfirmTimeout,
        PublishError::Nacked,
        PublishError::Unroutable,
    ]
    .into_iter()
    .map(ApiError::Publish)
    .chain([ApiError::ShuttingDown, ApiError::SchemasUnavailable])
    .map(|error| error.code())
}
