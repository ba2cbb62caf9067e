//! Keeps the gateway's schemas in step with the registry: polls `GET /v1/schemas?view=active`
//! every `WARREN_SCHEMA_REFRESH_MS` and swaps in a newly compiled set when the answer changed.
//!
//! Polling over HTTP keeps the gateway free of a database connection (the consumer owns the
//! database) and works through nginx or straight to a consumer. A change is enforced within one
//! refresh interval plus one fetch (at most [`FETCH_TIMEOUT`]) while the registry answers. When it
//! does not, the gateway goes on enforcing the last set it had and exports how old it is
//! (`warren_gateway_schema_age_seconds`): ingest never stops because the registry is away. Until
//! the first answer it has no set, and ingest answers 503 (`schemas_unavailable`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::schema_registry::enforce::{ListedVersion, SchemaSet, Schemas};

/// The longest one poll of the registry may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// How soon to ask again while the gateway has no schemas yet.
const FIRST_LOAD_RETRY: Duration = Duration::from_millis(250);
/// The largest registry answer read, in bytes.
const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;

/// Where the registry is and how often to ask it.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// Base URL of the consumer or of nginx in front of it (`WARREN_SCHEMA_REGISTRY_URL`).
    pub url: Uri,
    /// A read key, when the consumer requires one (`WARREN_SCHEMA_REGISTRY_KEY`).
    pub key: Option<SecretString>,
    /// `WARREN_SCHEMA_REFRESH_MS`.
    pub refresh: Duration,
}

/// Why one poll of the registry failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No connection, or the exchange failed.
    #[error("cannot reach the schema registry: {0}")]
    Connect(String),
    /// No answer in time.
    #[error("the schema registry did not answer within {FETCH_TIMEOUT:?}")]
    Timeout,
    /// An answer other than 200.
    #[error("the schema registry answered {0}")]
    Status(StatusCode),
    /// An answer that is not the registry's list.
    #[error("the schema registry's answer is not a schema list: {0}")]
    Body(String),
}

#[derive(Deserialize)]
struct Listing {
    schemas: Vec<ListedVersion>,
}

/// Polls until `cancel`, replacing `schemas` when the registry's answer changes.
pub async fn run(settings: RegistrySettings, schemas: Arc<Schemas>, cancel: CancellationToken) {
    let mut last_answer: Option<Bytes> = None;
    let mut failures: u64 = 0;
    loop {
        match tokio::time::timeout(FETCH_TIMEOUT, fetch(&settings)).await {
            Ok(Ok(answer)) => {
                failures = 0;
                if last_answer.as_ref() == Some(&answer) {
                    schemas.confirm();
                } else {
                    match serde_json::from_slice::<Listing>(&answer) {
                        Ok(listing) => {
                            let previous = schemas.get();
                            let set = SchemaSet::build(listing.schemas, previous.as_deref());
                            tracing::info!(versions = set.len(), "schemas loaded");
                            metrics::gauge!("warren_gateway_schemas").set(set.len() as f64);
                            schemas.replace(Arc::new(set));
                            last_answer = Some(answer);
                        }
                        Err(error) => report(&FetchError::Body(error.to_string()), &mut failures),
                    }
                }
            }
            Ok(Err(error)) => report(&error, &mut failures),
            Err(_) => report(&FetchError::Timeout, &mut failures),
        }
        if let Some(age) = schemas.age_secs() {
            metrics::gauge!("warren_gateway_schema_age_seconds").set(age);
        }
        // Until the first answer, ingest is refused: ask again soon rather than a whole interval.
        let pause = if schemas.get().is_some() {
            settings.refresh
        } else {
            settings.refresh.min(FIRST_LOAD_RETRY)
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Logs the first failure of a run of them and every 60th after, and counts each.
fn report(error: &FetchError, failures: &mut u64) {
    metrics::counter!("warren_gateway_schema_refresh_failures_total").increment(1);
    if failures.is_multiple_of(60) {
        tracing::warn!(%error, failures = *failures + 1, "schema refresh failed; keeping the last schemas");
    }
    *failures += 1;
}

/// One `GET {url}/v1/schemas?view=active` over a fresh HTTP/1.1 connection.
async fn fetch(settings: &RegistrySettings) -> Result<Bytes, FetchError> {
    let authority = settings
        .url
        .authority()
        .ok_or_else(|| FetchError::Connect("the URL has no host".into()))?;
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((authority.host(), port))
        .await
        .map_err(|error| FetchError::Connect(error.to_string()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| FetchError::Connect(error.to_string()))?;
    let driver = tokio::spawn(connection);
    let base = settings.url.path().trim_end_matches('/');
    let mut request = Request::get(format!("{base}/v1/schemas?view=active"))
        .header(http::header::HOST, authority.as_str())
        .header(http::header::ACCEPT, "application/json");
    if let Some(key) = &settings.key {
        request = request.header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", key.expose_secret()),
        );
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|error| FetchError::Connect(error.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| FetchError::Connect(error.to_string()))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|error| FetchError::Body(error.to_string()))?
        .to_bytes();
    driver.abort();
    if status != StatusCode::OK {
        return Err(FetchError::Status(status));
    }
    Ok(body)
}
