//! The one place gateway errors become HTTP responses.
//!
//! The match is exhaustive, so a new error variant cannot ship without a status and a code.

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body_util::Full;
use service_runtime::http_json;
use shared_types::problem::Problem;

use service_runtime::auth::AuthError;
use service_runtime::rate_limit::Limited;

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
    /// No such route.
    #[error("no route for this path")]
    NotFound,
    /// The request's headers exceed the limit.
    #[error("the request headers exceed {limit} bytes")]
    HeadersTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The route exists, but not for this method.
    #[error("method not allowed")]
    MethodNotAllowed {
        /// The methods the route answers.
        allow: &'static str,
    },
    /// The gateway is shutting down.
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// No key, a wrong key, or a key of the other scope.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The key's rate limit is spent.
    #[error("rate limit exceeded for this API key")]
    RateLimited(Limited),
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
            ApiError::NotFound => "not_found",
            ApiError::HeadersTooLarge { .. } => "headers_too_large",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::SchemasUnavailable => "schemas_unavailable",
            ApiError::Auth(AuthError::Missing) => "unauthenticated",
            ApiError::Auth(AuthError::Invalid) => "invalid_api_key",
            ApiError::Auth(AuthError::WrongScope(_)) => "forbidden",
            ApiError::RateLimited(_) => "rate_limited",
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
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Auth(AuthError::Missing | AuthError::Invalid) => StatusCode::UNAUTHORIZED,
            ApiError::Auth(AuthError::WrongScope(_)) => StatusCode::FORBIDDEN,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The response, in the shared error shape; 503s carry `Retry-After`.
    pub fn into_response(self, retry_after_secs: u64) -> Response<Full<Bytes>> {
        let status = self.status();
        let code = self.code();
        let allow = match &self {
            ApiError::MethodNotAllowed { allow } => Some(*allow),
            _ => None,
        };
        let extra = service_runtime::http_json::extra_headers(
            match &self {
                ApiError::Auth(error) => Some(error),
                _ => None,
            },
            match &self {
                ApiError::RateLimited(limited) => Some(limited),
                _ => None,
            },
        );
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
        let mut response = http_json::error(status, code, &message, details);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        if let Some(allow) = allow {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        response.headers_mut().extend(extra);
        response
    }
}
