//! One attempt to deliver one event to one sink: the request (CloudEvents HTTP binding, binary
//! or structured mode, signed per Standard Webhooks) and what its answer means.
//!
//! Redirects are not followed (a 3xx is a failure to retry: following one would let a sink send
//! Warren's signed requests elsewhere), the answer is read only up to a bound, and the whole
//! attempt is under the subscription's timeout.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use shared_types::event::{Event, EventData};

use super::config::DeliveryConfig;
use super::signature::{signature_header, webhook_id};
use super::subscription::{Format, Subscription};

/// Header that marks a delivery made by a replay, so a sink can tell it from live traffic.
pub const REPLAY_HEADER: &str = "warren-replay";
/// `User-Agent` of delivery requests.
const USER_AGENT: &str = concat!("Warren-Delivery/", env!("CARGO_PKG_VERSION"));
/// Longest `Retry-After` honoured, whatever the subscription's backoff cap.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3_600);

/// The HTTP client every subscription's deliveries share.
pub fn client(config: &DeliveryConfig) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(USER_AGENT)
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64);
    if let Some(resolver) = super::sink_address::resolver(config.allow_private_sinks) {
        builder = builder.dns_resolver(resolver);
    }
    builder.build()
}

/// What an attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx.
    Delivered(u16),
    /// 410 Gone: the sink asks to stop (CloudEvents HTTP webhook spec); the subscription pauses.
    Gone,
    /// Not sent: the sink asked (429 or 503 with `Retry-After`) not to be sent anything before
    /// this time (CloudEvents HTTP webhook spec, 2: the sender MUST observe it). Not an attempt.
    Deferred(DateTime<Utc>),
    /// Anything else: a non-2xx answer, a timeout, a refused connection.
    Failed {
        /// The status, when the sink answered.
        status: Option<u16>,
        /// What happened, for operators (never the secret, never the body sent).
        error: String,
        /// The sink's `Retry-After` on a 429 or 503, capped.
        retry_after: Option<Duration>,
    },
}

/// Builds the request body and headers for one event.
pub fn request_parts(event: &Event, format: Format) -> (HeaderMap, Vec<u8>) {
    let mut headers = HeaderMap::new();
    match format {
        Format::Structured => {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/cloudevents+json; charset=utf-8"),
            );
            (headers, serde_json::to_vec(event).unwrap_or_default())
        }
        Format::Binary => {
            let mut put = |name: &str, value: &str| {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(format!("ce-{name}").as_bytes()),
                    HeaderValue::from_str(&percent_encode(value)),
                ) {
                    headers.insert(name, value);
                }
            };
            put("specversion", shared_types::event::SPEC_VERSION);
            put("id", &event.id);
            put("source", &event.source);
            put("type", &event.event_type);
            if let Some(subject) = &event.subject {
                put("subject", subject);
            }
            if let Some(time) = &event.time {
                put("time", &Event::time_text(time));
            }
            if let Some(dataschema) = &event.dataschema {
                put("dataschema", dataschema);
            }
            for (name, value) in &event.extensions {
                let text = match value {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                put(name, &text);
            }
            let json_content = event
                .datacontenttype
                .as_deref()
                .is_none_or(|media| media.contains("json"));
            let body = match &event.data {
                None => Vec::new(),
                // A string under a non-JSON media type is the data itself (JSON format 3.1).
                Some(EventData::Json(Value::String(text))) if !json_content => {
                    text.as_bytes().to_vec()
                }
                Some(EventData::Json(value)) => serde_json::to_vec(value).unwrap_or_default(),
                Some(EventData::Base64(text)) => STANDARD.decode(text).unwrap_or_default(),
            };
            let content_type = match (&event.datacontenttype, &event.data) {
                (Some(media), _) => HeaderValue::from_str(media).ok(),
                (None, Some(EventData::Json(_))) => {
                    Some(HeaderValue::from_static("application/json"))
                }
                (None, Some(EventData::Base64(_))) => {
                    Some(HeaderValue::from_static("application/octet-stream"))
                }
                (None, None) => None,
            };
            if let Some(content_type) = content_type {
                headers.insert(http::header::CONTENT_TYPE, content_type);
            }
            (headers, body)
        }
    }
}

/// Percent-encodes a `ce-*` header value as the HTTP binding asks (3.1.3.2): space, `"`, `%` and
/// everything outside printable ASCII, as UTF-8 bytes.
fn percent_encode(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if (0x21..=0x7e).contains(&byte) && byte != b'"' && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Sends one event and classifies the answer.
pub async fn attempt(
    client: &reqwest::Client,
    subscription: &Subscription,
    event: &Event,
    replay: bool,
    max_response_bytes: usize,
    now: DateTime<Utc>,
) -> Outcome {
    let (mut headers, body) = request_parts(event, subscription.spec.format);
    let id = webhook_id(&event.source, &event.id);
    let timestamp = now.timestamp();
    let signature = signature_header(&subscription.signing_secrets(now), &id, timestamp, &body);
    for (name, value) in [
        ("webhook-id", id),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    if replay {
        headers.insert(REPLAY_HEADER, HeaderValue::from_static("true"));
    }
    for (name, value) in &subscription.spec.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    let method = if subscription.spec.method == "PUT" {
        reqwest::Method::PUT
    } else {
        reqwest::Method::POST
    };
    let timeout = subscription.spec.delivery.timeout();
    let started = std::time::Instant::now();
    let sent = client
        .request(method, subscription.spec.sink_url.clone())
        .headers(headers)
        .body(body)
        .timeout(timeout)
        .send();
    let response = match tokio::time::timeout(timeout, sent).await {
        Err(_) => {
            return failed(
                None,
                format!("no answer within {} ms", timeout.as_millis()),
                None,
            )
        }
        Ok(Err(error)) => return failed(None, describe(&error), None),
        Ok(Ok(response)) => response,
    };
    let status = response.status().as_u16();
    let retry_after = matches!(status, 429 | 503)
        .then(|| retry_after(response.headers(), now))
        .flatten();
    // One timeout for the whole attempt: the answer's body gets what is left of it.
    let answer = read_bounded(
        response,
        max_response_bytes,
        timeout.saturating_sub(started.elapsed()),
    )
    .await;
    match status {
        200..=299 => Outcome::Delivered(status),
        410 => Outcome::Gone,
        _ => failed(
            Some(status),
            format!("the sink answered {status}: {}", answer.trim()),
            retry_after,
        ),
    }
}

fn failed(status: Option<u16>, error: String, retry_after: Option<Duration>) -> Outcome {
    Outcome::Failed {
        status,
        error,
        retry_after,
    }
}

/// Reads at most `limit` bytes of the answer (shown in dead letters), then drops the rest.
async fn read_bounded(mut response: reqwest::Response, limit: usize, timeout: Duration) -> String {
    let shown = limit.min(512);
    let mut body = Vec::new();
    let read = async {
        while body.len() < limit {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(timeout, read).await;
    body.truncate(shown);
    String::from_utf8_lossy(&body).into_owned()
}

/// `Retry-After` as seconds or an HTTP date, capped at an hour.
fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let text = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let wait = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = DateTime::parse_from_rfc2822(text).ok()?.with_timezone(&Utc);
            (at - now).to_std().unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "could not connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use shared_types::event::Validation;

    fn event(value: Value) -> Event {
        Event::from_json(value, &Validation::structural()).unwrap()
    }

    #[test]
    fn binary_mode_puts_attributes_in_headers_and_data_in_the_body() {
        let (headers, body) = request_parts(
            &event(json!({
                "specversion": "1.0", "id": "1", "source": "/s", "type": "t",
                "subject": "café 1", "tenant": "a\"b", "n": 3, "data": {"x": 1}
            })),
            Format::Binary,
        );
        assert_eq!(headers["ce-id"], "1");
        assert_eq!(headers["ce-subject"], "caf%C3%A9%201");
        assert_eq!(headers["ce-tenant"], "a%22b");
        assert_eq!(headers["ce-n"], "3");
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(body, br#"{"x":1}"#);
    }

    #[test]
    fn binary_mode_sends_base64_data_as_bytes_and_text_as_text() {
        let (headers, body) = request_parts(
            &event(
                json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t",
                "datacontenttype": "application/octet-stream", "data_base64": "AAEC"}),
            ),
            Format::Binary,
        );
        assert_eq!(headers["content-type"], "application/octet-stream");
        assert_eq!(body, [0u8, 1, 2]);
        let (_, body) = request_parts(
            &event(
                json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t",
                "datacontenttype": "text/plain", "data": "hello"}),
            ),
            Format::Binary,
        );
        assert_eq!(body, b"hello");
    }

    #[test]
    fn structured_mode_sends_the_whole_event() {
        let original = event(
            json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "data": [1]}),
        );
        let (headers, body) = request_parts(&original, Format::Structured);
        assert!(headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/cloudevents+json"));
        let parsed: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(event(parsed), original);
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_capped() {
        let now = Utc::now();
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(7)));
        headers.insert("retry-after", HeaderValue::from_static("999999"));
        assert_eq!(retry_after(&headers, now), Some(MAX_RETRY_AFTER));
        let later = (now + chrono::Duration::seconds(30)).to_rfc2822();
        headers.insert("retry-after", HeaderValue::from_str(&later).unwrap());
        let wait = retry_after(&headers, now).unwrap();
        assert!(
            wait <= Duration::from_secs(30) && wait >= Duration::from_secs(29),
            "{wait:?}"
        );
    }
}
