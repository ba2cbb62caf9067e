//! Why a read request failed, and the one place those failures become HTTP responses. The match
//! is exhaustive, so a new variant cannot ship without a status and a code.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::json;
use service_runtime::auth::AuthError;
use service_runtime::http_error::{service_error, SharedError};

use crate::read::query::params;

/// Why a read request (a query or a schema registry call) failed. Mapped to HTTP in
/// [`ReadError::into_response`] only.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
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
    /// No subscription with that id.
    #[error("no subscription with this id")]
    SubscriptionNotFound,
    /// No dead letter with that id in the subscription.
    #[error("no dead letter with this id in the subscription")]
    DeadLetterNotFound,
    /// A subscription or replay request with field-level problems.
    #[error("the subscription is invalid")]
    InvalidSubscription(Vec<crate::deliver::problem::FieldProblem>),
    /// The request contradicts the resource's state.
    #[error("{message}")]
    Conflict {
        /// Stable code.
        code: &'static str,
        /// What is wrong.
        message: String,
    },
    /// RabbitMQ did not answer (declaring or deleting a subscription's queue).
    #[error("the broker is unavailable: {0}")]
    BrokerUnavailable(String),
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
    /// Refused the way every Warren service refuses: auth, rate limit, route, method.
    #[error(transparent)]
    Shared(#[from] SharedError),
}

impl ReadError {
    /// Classifies a failed query. PostgreSQL reports a statement timeout as SQLSTATE 57014, but
    /// diesel 2.3 and diesel-async 0.9 map only a fixed set of SQLSTATEs to
    /// [`diesel::result::DatabaseErrorKind`] (57014 is not among them) and otherwise expose just
    /// the message, which the server translates per `lc_messages`. So a timeout is recognised by
    /// what does not depend on language: an unclassified database error raised once the statement
    /// timeout had elapsed is the server cancelling the statement.
    pub(crate) fn from_database(error: diesel::result::Error, timeout_elapsed: bool) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match &error {
            Error::DatabaseError(DatabaseErrorKind::Unknown, _) if timeout_elapsed => {
                ReadError::Timeout
            }
            Error::DatabaseError(
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                _,
            ) => ReadError::Unavailable(error.to_string()),
            _ => ReadError::Database(error),
        }
    }

    /// The response in the shared error shape; 503s carry `Retry-After`.
    pub fn into_response(self, retry_after_secs: u64) -> Response<Full<Bytes>> {
        let (status, code, message) = match &self {
            ReadError::Param(error) => (
                StatusCode::BAD_REQUEST,
                error.code,
                format!("invalid parameter {}: {}", error.parameter, error.message),
            ),
            ReadError::NotFound => (StatusCode::NOT_FOUND, "not_found", self.to_string()),
            ReadError::SchemaNotFound => {
                (StatusCode::NOT_FOUND, "schema_not_found", self.to_string())
            }
            ReadError::InvalidInput { code, message } => {
                (StatusCode::BAD_REQUEST, *code, message.clone())
            }
            ReadError::SubscriptionNotFound => (
                StatusCode::NOT_FOUND,
                "subscription_not_found",
                self.to_string(),
            ),
            ReadError::DeadLetterNotFound => (
                StatusCode::NOT_FOUND,
                "dead_letter_not_found",
                self.to_string(),
            ),
            ReadError::InvalidSubscription(problems) => (
                StatusCode::BAD_REQUEST,
                "invalid_subscription",
                format!(
                    "the request is invalid: {}",
                    problems
                        .iter()
                        .map(|problem| format!("{} {}", problem.pointer, problem.message))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            ),
            ReadError::Conflict { code, message } => (StatusCode::CONFLICT, *code, message.clone()),
            ReadError::BrokerUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "broker_unavailable",
                "the broker is unavailable".to_owned(),
            ),
            ReadError::BodyTooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "too_large", self.to_string())
            }
            ReadError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "the database is unavailable".to_owned(),
            ),
            ReadError::Timeout => (
                StatusCode::SERVICE_UNAVAILABLE,
                "query_timeout",
                self.to_string(),
            ),
            ReadError::Database(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the query failed".to_owned(),
            ),
            ReadError::Shared(error) => return error.into_response(),
        };
        let details = match &self {
            ReadError::Param(error) => {
                vec![json!({"parameter": error.parameter, "code": error.code})]
            }
            ReadError::InvalidSubscription(problems) => problems.iter().map(|p| json!(p)).collect(),
            _ => Vec::new(),
        };
        service_error(status, code, &message, details, retry_after_secs)
    }
}

impl From<AuthError> for ReadError {
    fn from(error: AuthError) -> Self {
        ReadError::Shared(SharedError::Auth(error))
    }
}
