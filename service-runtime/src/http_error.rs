//! The errors both services answer the same way: a missing or wrong API key, a spent rate limit,
//! no route, a method the route does not take. Mapped to HTTP here once, so the gateway and the
//! consumer cannot drift apart; each service maps only its own errors and wraps these.

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use crate::auth::AuthError;
use crate::http_json;
use crate::rate_limit::Limited;

/// A request refused before any service-specific work.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// No key, a wrong key, or a key of another scope.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The key's rate limit is spent.
    #[error("rate limit exceeded for this API key")]
    RateLimited(Limited),
    /// No route for this path.
    #[error("no route for this path")]
    NoRoute,
    /// The route exists, but not for this method.
    #[error("method not allowed")]
    MethodNotAllowed {
        /// The methods the route answers, for `Allow`.
        allow: &'static str,
    },
}

impl SharedError {
    /// The stable code clients branch on.
    pub fn code(&self) -> &'static str {
        match self {
            SharedError::Auth(AuthError::Missing) => "unauthenticated",
            SharedError::Auth(AuthError::Invalid) => "invalid_api_key",
            SharedError::Auth(AuthError::WrongScope(_)) => "forbidden",
            SharedError::RateLimited(_) => "rate_limited",
            SharedError::NoRoute => "not_found",
            SharedError::MethodNotAllowed { .. } => "method_not_allowed",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            SharedError::Auth(AuthError::Missing | AuthError::Invalid) => StatusCode::UNAUTHORIZED,
            SharedError::Auth(AuthError::WrongScope(_)) => StatusCode::FORBIDDEN,
            SharedError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            SharedError::NoRoute => StatusCode::NOT_FOUND,
            SharedError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// The response in the shared error shape, with `WWW-Authenticate`, `Retry-After` and the
    /// `RateLimit-*` headers, or `Allow`, as the error calls for.
    pub fn into_response(&self) -> Response<Full<Bytes>> {
        let mut response = http_json::simple_error(self.status(), self.code(), &self.to_string());
        let headers = response.headers_mut();
        match self {
            SharedError::Auth(error) => headers.extend(http_json::extra_headers(Some(error), None)),
            SharedError::RateLimited(limited) => {
                headers.extend(http_json::extra_headers(None, Some(limited)))
            }
            SharedError::NoRoute => {}
            SharedError::MethodNotAllowed { allow } => {
                headers.insert(ALLOW, HeaderValue::from_static(allow));
            }
        }
        response
    }
}

/// A service's own error in the shared shape; a 503 carries `Retry-After`, as every 503 of
/// Warren does, so a client knows when to try again.
pub fn service_error<D: Serialize>(
    status: StatusCode,
    code: &str,
    message: &str,
    details: D,
    retry_after_secs: u64,
) -> Response<Full<Bytes>> {
    let mut response = http_json::error(status, code, message, details);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_scope_is_403_with_insufficient_scope() {
        let response = SharedError::Auth(AuthError::WrongScope("query events")).into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let challenge = response.headers()[http::header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap_or_default()
            .to_owned();
        assert!(challenge.contains("insufficient_scope"), "{challenge}");
    }

    #[test]
    fn a_wrong_method_names_the_allowed_ones() {
        let response = SharedError::MethodNotAllowed { allow: "GET" }.into_response();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[ALLOW], "GET");
    }
}
