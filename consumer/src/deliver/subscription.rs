//! A subscription as the API takes it and the workers use it: where to deliver (`sink`), which
//! events (`filters`, `types`, `source`), how (`protocolsettings`, `format`) and within which
//! limits (`delivery`). The resource follows the CloudEvents Subscriptions API
//! (`subscriptions/spec.md` 3.2); `format`, `delivery` and `status` are Warren's additions.
//!
//! Parsing reports every problem with a JSON pointer, like event validation, and nothing that
//! fails it is stored.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use shared_types::event::Event;
use uuid::Uuid;

use super::filter::Filter;
use super::problem::FieldProblem;
use super::signature::SigningSecret;
use super::sink_address;

/// How a sink receives an event (CloudEvents HTTP binding, section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Attributes in `ce-*` headers, `data` as the body: what most sinks expect.
    Binary,
    /// The whole event as `application/cloudevents+json`.
    Structured,
}

impl Format {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Binary => "binary",
            Format::Structured => "structured",
        }
    }
}

/// Which events must reach the sink in the order Warren accepted them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    /// Any order, the most parallel (the default).
    None,
    /// In order per `subject` (events without one share one key).
    Subject,
    /// In order per `source`.
    Source,
}

impl Ordering {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Ordering::None => "none",
            Ordering::Subject => "subject",
            Ordering::Source => "source",
        }
    }

    /// The event's ordering key; `None` when the subscription is unordered.
    pub fn key(self, event: &Event) -> Option<String> {
        match self {
            Ordering::None => None,
            Ordering::Subject => Some(event.subject.clone().unwrap_or_default()),
            Ordering::Source => Some(event.source.clone()),
        }
    }
}

/// Whether workers deliver to the subscription now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Delivering.
    Active,
    /// Not delivering; events wait in its queue and are delivered when it is resumed.
    Paused,
}

impl Status {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Paused => "paused",
        }
    }

    /// Reads the stored name; anything else is paused (the table's CHECK allows only these two).
    pub fn from_stored(text: &str) -> Self {
        if text == "active" {
            Status::Active
        } else {
            Status::Paused
        }
    }
}

/// The delivery limits of one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliverySettings {
    /// Attempts in all, the first included, before the event goes to dead letters.
    pub attempts: u32,
    /// Wait before the second attempt; each later wait doubles, with jitter.
    pub backoff_initial_ms: u64,
    /// Longest wait between two attempts (and the cap on a sink's `Retry-After`).
    pub backoff_max_ms: u64,
    /// Longest an attempt may take, connecting and reading the answer included.
    pub timeout_ms: u64,
    /// Most requests in flight to the sink at once, per delivery worker.
    pub max_in_flight: u32,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            attempts: 8,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 3_600_000,
            timeout_ms: 10_000,
            max_in_flight: 32,
        }
    }
}

impl DeliverySettings {
    /// The attempt timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// Headers a subscription may not set: they carry the event, its signature or the connection.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];
/// Most custom headers per subscription, and the longest value.
const MAX_HEADERS: usize = 20;
const MAX_HEADER_VALUE: usize = 1024;
/// Longest sink URL and `source`.
const MAX_URL_BYTES: usize = 2048;

/// What a subscriber asked for, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionSpec {
    /// Where to POST, as given.
    pub sink: String,
    /// The same, parsed once (a request to it needs no parsing).
    pub sink_url: reqwest::Url,
    /// The filters as given, returned as given.
    pub filters_json: Value,
    /// The filters, parsed.
    pub filters: Vec<Filter>,
    /// When set, only events of these types.
    pub types: Option<Vec<String>>,
    /// When set, only events from this source.
    pub source: Option<String>,
    /// Extra request headers (`protocolsettings.headers`).
    pub headers: BTreeMap<String, String>,
    /// `POST` (default) or `PUT` (`protocolsettings.method`).
    pub method: String,
    /// Binary or structured mode.
    pub format: Format,
    /// Limits.
    pub delivery: DeliverySettings,
    /// Asked-for status (`active` unless given).
    pub status: Status,
    /// Per-key order, fixed at creation.
    pub ordering: Ordering,
}

impl SubscriptionSpec {
    /// Whether an event is one this subscription wants.
    pub fn matches(&self, event: &Event) -> bool {
        self.types
            .as_ref()
            .is_none_or(|types| types.contains(&event.event_type))
            && self.source.as_ref().is_none_or(|s| *s == event.source)
            && self.filters.iter().all(|filter| filter.matches(event))
    }

    /// `protocolsettings` as stored and shown.
    pub fn protocol_settings(&self) -> Value {
        json!({"method": self.method, "headers": self.headers})
    }

    /// Validates a create or replace body. Sink addresses are checked for form here; whether the
    /// name resolves to a public address is checked by the caller (it needs DNS).
    pub fn parse(body: &Value, allow_private: bool) -> Result<Self, Vec<FieldProblem>> {
        let mut problems = Vec::new();
        let Some(object) = body.as_object() else {
            return Err(vec![FieldProblem::new(
                "",
                "invalid_subscription",
                "the body is a JSON object",
            )]);
        };
        const KNOWN: &[&str] = &[
            "sink",
            "protocol",
            "protocolsettings",
            "filters",
            "types",
            "source",
            "format",
            "delivery",
            "status",
            "ordering",
            "id",
            "config",
            "sinkcredential",
        ];
        for name in object.keys() {
            if !KNOWN.contains(&name.as_str()) {
                problems.push(FieldProblem::new(
                    &format!("/{name}"),
                    "unknown_field",
                    format!("unknown field {name:?}"),
                ));
            }
        }
        for (name, why) in [
            ("id", "the id is assigned by Warren"),
            (
                "config",
                "config is not used: Warren's events are generated by its clients",
            ),
            (
                "sinkcredential",
                "sinkcredential is not supported; put credentials in protocolsettings.headers",
            ),
        ] {
            if object.contains_key(name) {
                problems.push(FieldProblem::new(&format!("/{name}"), "unsupported", why));
            }
        }
        let ordering = match object
            .get("ordering")
            .and_then(|v| v.as_str().or(v.is_null().then_some("none")))
        {
            None if object.get("ordering").is_none() => Ordering::None,
            Some("none") => Ordering::None,
            Some("subject") => Ordering::Subject,
            Some("source") => Ordering::Source,
            _ => {
                problems.push(FieldProblem::new(
                    "/ordering",
                    "invalid_field",
                    "ordering is \"none\", \"subject\" or \"source\"",
                ));
                Ordering::None
            }
        };
        let mut sink_url = None;
        let sink = match object.get("sink").and_then(Value::as_str) {
            None => {
                problems.push(FieldProblem::new(
                    "/sink",
                    "missing_field",
                    "sink is required: the URL to deliver to",
                ));
                String::new()
            }
            Some(sink) if sink.len() > MAX_URL_BYTES => {
                problems.push(FieldProblem::new(
                    "/sink",
                    "too_large",
                    format!("a sink URL is at most {MAX_URL_BYTES} bytes"),
                ));
                String::new()
            }
            Some(sink) => match sink_address::check_url(sink, allow_private) {
                Ok(url) => {
                    sink_url = Some(url);
                    sink.to_owned()
                }
                Err(error) => {
                    let code = match error {
                        sink_address::SinkError::NotPublic(_) => "sink_not_allowed",
                        _ => "invalid_sink",
                    };
                    problems.push(FieldProblem::new("/sink", code, error.to_string()));
                    String::new()
                }
            },
        };
        match object.get("protocol") {
            None | Some(Value::Null) => {}
            Some(Value::String(protocol)) if protocol == "HTTP" => {}
            Some(_) => problems.push(FieldProblem::new(
                "/protocol",
                "unsupported",
                "the only protocol supported is \"HTTP\" (case-sensitive)",
            )),
        }
        let (method, headers) = protocol_settings(object.get("protocolsettings"), &mut problems);
        let filters_json = object.get("filters").cloned().unwrap_or_else(|| json!([]));
        let filters = Filter::parse_all(&filters_json, &mut problems);
        let types = match object.get("types") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items))
                if !items.is_empty()
                    && items
                        .iter()
                        .all(|t| t.as_str().is_some_and(|t| !t.is_empty())) =>
            {
                Some(
                    items
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect(),
                )
            }
            Some(_) => {
                problems.push(FieldProblem::new(
                    "/types",
                    "invalid_field",
                    "types is a non-empty array of non-empty type names",
                ));
                None
            }
        };
        let source = match object.get("source") {
            None | Some(Value::Null) => None,
            Some(Value::String(source)) if !source.is_empty() && source.len() <= MAX_URL_BYTES => {
                Some(source.clone())
            }
            Some(_) => {
                problems.push(FieldProblem::new(
                    "/source",
                    "invalid_field",
                    "source is a non-empty string",
                ));
                None
            }
        };
        let format = match object.get("format") {
            None | Some(Value::Null) => Format::Binary,
            Some(Value::String(text)) if text == "binary" => Format::Binary,
            Some(Value::String(text)) if text == "structured" => Format::Structured,
            Some(_) => {
                problems.push(FieldProblem::new(
                    "/format",
                    "invalid_field",
                    "format is \"binary\" or \"structured\"",
                ));
                Format::Binary
            }
        };
        let status = match object.get("status") {
            None | Some(Value::Null) => Status::Active,
            Some(Value::String(text)) if text == "active" => Status::Active,
            Some(Value::String(text)) if text == "paused" => Status::Paused,
            Some(_) => {
                problems.push(FieldProblem::new(
                    "/status",
                    "invalid_field",
                    "status is \"active\" or \"paused\"",
                ));
                Status::Active
            }
        };
        let delivery = delivery_settings(object.get("delivery"), &mut problems);
        let Some(sink_url) = sink_url.filter(|_| problems.is_empty()) else {
            return Err(problems);
        };
        Ok(Self {
            sink,
            sink_url,
            filters_json,
            filters,
            types,
            source,
            headers,
            method,
            format,
            delivery,
            status,
            ordering,
        })
    }
}

fn protocol_settings(
    value: Option<&Value>,
    problems: &mut Vec<FieldProblem>,
) -> (String, BTreeMap<String, String>) {
    let mut method = "POST".to_owned();
    let mut headers = BTreeMap::new();
    let object = match value {
        None | Some(Value::Null) => return (method, headers),
        Some(Value::Object(object)) => object,
        Some(_) => {
            problems.push(FieldProblem::new(
                "/protocolsettings",
                "invalid_field",
                "protocolsettings is an object",
            ));
            return (method, headers);
        }
    };
    for name in object
        .keys()
        .filter(|name| !["method", "headers"].contains(&name.as_str()))
    {
        problems.push(FieldProblem::new(
            &format!("/protocolsettings/{name}"),
            "unknown_field",
            "HTTP protocol settings are method and headers",
        ));
    }
    match object.get("method") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) if text == "POST" || text == "PUT" => method = text.clone(),
        Some(_) => problems.push(FieldProblem::new(
            "/protocolsettings/method",
            "invalid_field",
            "method is \"POST\" or \"PUT\"",
        )),
    }
    match object.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(given)) if given.len() <= MAX_HEADERS => {
            for (name, value) in given {
                let pointer = format!("/protocolsettings/headers/{name}");
                let lower = name.to_ascii_lowercase();
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    problems.push(FieldProblem::new(
                        &pointer,
                        "invalid_field",
                        "not a valid header name",
                    ));
                } else if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("ce-") {
                    problems.push(FieldProblem::new(
                        &pointer,
                        "reserved_header",
                        "this header carries the event or its signature; it cannot be set",
                    ));
                } else {
                    match value.as_str() {
                        Some(text) if text.len() <= MAX_HEADER_VALUE && http::HeaderValue::from_str(text).is_ok() => {
                            headers.insert(lower, text.to_owned());
                        }
                        _ => problems.push(FieldProblem::new(&pointer, "invalid_field", format!("a header value is a visible ASCII string of at most {MAX_HEADER_VALUE} bytes"))),
                    }
                }
            }
        }
        Some(_) => problems.push(FieldProblem::new(
            "/protocolsettings/headers",
            "invalid_field",
            format!("headers is an object of at most {MAX_HEADERS} names to strings"),
        )),
    }
    (method, headers)
}

fn delivery_settings(value: Option<&Value>, problems: &mut Vec<FieldProblem>) -> DeliverySettings {
    let mut settings = DeliverySettings::default();
    let empty = Map::new();
    let object = match value {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(object)) => object,
        Some(_) => {
            problems.push(FieldProblem::new(
                "/delivery",
                "invalid_field",
                "delivery is an object",
            ));
            &empty
        }
    };
    let mut number =
        |name: &str, range: std::ops::RangeInclusive<u64>, slot: &mut u64| match object.get(name) {
            None | Some(Value::Null) => {}
            Some(value) => match value.as_u64().filter(|n| range.contains(n)) {
                Some(n) => *slot = n,
                None => problems.push(FieldProblem::new(
                    &format!("/delivery/{name}"),
                    "invalid_field",
                    format!(
                        "{name} is a whole number from {} to {}",
                        range.start(),
                        range.end()
                    ),
                )),
            },
        };
    let mut attempts = u64::from(settings.attempts);
    let mut in_flight = u64::from(settings.max_in_flight);
    number("attempts", 1..=100, &mut attempts);
    number(
        "backoff_initial_ms",
        10..=3_600_000,
        &mut settings.backoff_initial_ms,
    );
    number(
        "backoff_max_ms",
        10..=86_400_000,
        &mut settings.backoff_max_ms,
    );
    number("timeout_ms", 100..=60_000, &mut settings.timeout_ms);
    number("max_in_flight", 1..=1_000, &mut in_flight);
    for name in object.keys() {
        if ![
            "attempts",
            "backoff_initial_ms",
            "backoff_max_ms",
            "timeout_ms",
            "max_in_flight",
        ]
        .contains(&name.as_str())
        {
            problems.push(FieldProblem::new(
                &format!("/delivery/{name}"),
                "unknown_field",
                format!("unknown delivery setting {name:?}"),
            ));
        }
    }
    settings.attempts = u32::try_from(attempts).unwrap_or(u32::MAX);
    settings.max_in_flight = u32::try_from(in_flight).unwrap_or(u32::MAX);
    if settings.backoff_max_ms < settings.backoff_initial_ms {
        problems.push(FieldProblem::new(
            "/delivery/backoff_max_ms",
            "invalid_field",
            "backoff_max_ms is at least backoff_initial_ms",
        ));
    }
    settings
}

/// A stored subscription, with its secrets.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Assigned at creation.
    pub id: Uuid,
    /// What the subscriber asked for.
    pub spec: SubscriptionSpec,
    /// Why it is paused, when it is.
    pub status_reason: Option<String>,
    /// Signs every request.
    pub secret: SigningSecret,
    /// The secret before the last rotation, and until when it also signs.
    pub previous_secret: Option<(SigningSecret, DateTime<Utc>)>,
    /// When the sink started failing without a success since.
    pub failing_since: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change, by the API or a worker (pause).
    pub updated_at: DateTime<Utc>,
}

impl Subscription {
    /// The secrets that sign a request made at `now`: the current one, and the previous one
    /// while its grace period lasts.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<&SigningSecret> {
        let mut secrets = vec![&self.secret];
        if let Some((previous, until)) = &self.previous_secret {
            if *until > now {
                secrets.push(previous);
            }
        }
        secrets
    }

    /// The resource as the API shows it: never a secret.
    pub fn view(&self) -> Value {
        json!({
            "id": self.id,
            "sink": self.spec.sink,
            "protocol": "HTTP",
            "protocolsettings": self.spec.protocol_settings(),
            "filters": self.spec.filters_json,
            "types": self.spec.types,
            "source": self.spec.source,
            "format": self.spec.format.as_str(),
            "ordering": self.spec.ordering.as_str(),
            "delivery": self.spec.delivery,
            "status": self.spec.status.as_str(),
            "status_reason": self.status_reason,
            "failing_since": self.failing_since,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(body: Value) -> Vec<String> {
        match SubscriptionSpec::parse(&body, false) {
            Ok(_) => Vec::new(),
            Err(problems) => problems
                .into_iter()
                .map(|p| format!("{} {}", p.pointer, p.code))
                .collect(),
        }
    }

    #[test]
    fn a_minimal_subscription_gets_the_defaults() {
        let spec = SubscriptionSpec::parse(&json!({"sink": "https://hooks.example.com/in"}), false)
            .unwrap();
        assert_eq!(spec.format, Format::Binary);
        assert_eq!(spec.method, "POST");
        assert_eq!(spec.delivery, DeliverySettings::default());
        assert_eq!(spec.status, Status::Active);
        assert!(spec.filters.is_empty());
    }

    #[test]
    fn every_problem_is_reported_with_its_pointer() {
        let found = problems(json!({
            "sink": "ftp://x", "protocol": "MQTT5", "format": "xml", "colour": 1,
            "delivery": {"attempts": 0, "timeout_ms": 5, "retries": 3},
            "protocolsettings": {"headers": {"webhook-signature": "x", "ce-type": "y"}, "method": "GET"},
            "filters": [{"sql": "1"}], "ordering": "type", "types": []
        }));
        for expected in [
            "/sink invalid_sink",
            "/protocol unsupported",
            "/format invalid_field",
            "/colour unknown_field",
            "/delivery/attempts invalid_field",
            "/delivery/timeout_ms invalid_field",
            "/delivery/retries unknown_field",
            "/protocolsettings/headers/webhook-signature reserved_header",
            "/protocolsettings/headers/ce-type reserved_header",
            "/protocolsettings/method invalid_field",
            "/filters/0/sql unsupported_filter_dialect",
            "/ordering invalid_field",
            "/types invalid_field",
        ] {
            assert!(
                found.iter().any(|p| p == expected),
                "missing {expected} in {found:?}"
            );
        }
        assert!(problems(json!({})).contains(&"/sink missing_field".to_owned()));
    }

    #[test]
    fn a_private_sink_is_refused_by_default() {
        assert_eq!(
            problems(json!({"sink": "http://127.0.0.1:9/hook"})),
            ["/sink sink_not_allowed"]
        );
        assert!(SubscriptionSpec::parse(&json!({"sink": "http://127.0.0.1:9/hook"}), true).is_ok());
    }

    #[test]
    fn types_and_source_narrow_what_the_filters_pass() {
        let spec = SubscriptionSpec::parse(
            &json!({"sink": "https://h.example/", "types": ["a", "b"], "source": "/s"}),
            false,
        )
        .unwrap();
        let event = |kind: &str, source: &str| {
            Event::from_json(
                json!({"specversion": "1.0", "id": "1", "source": source, "type": kind}),
                &shared_types::event::Validation::structural(),
            )
            .unwrap()
        };
        assert!(spec.matches(&event("a", "/s")));
        assert!(!spec.matches(&event("c", "/s")));
        assert!(!spec.matches(&event("b", "/t")));
    }
}
