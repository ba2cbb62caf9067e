//! A validated CloudEvents 1.0 event.
//!
//! [`Event`] can only hold events that satisfy the CloudEvents 1.0.2 specification (core attributes
//! and the JSON format) plus Warren's limits, so code that holds one never re-checks it. Where the
//! specification is silent or only says SHOULD, Warren is strict; README.md lists those choices.

use std::collections::BTreeMap;
use std::io;

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::{self, Deserialize, Deserializer};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use crate::limits::Limits;
use crate::problem::{pointer_token, ErrorCode, Problem};

/// The only CloudEvents version Warren accepts.
pub const SPEC_VERSION: &str = "1.0";

/// Longest extension attribute name (CloudEvents 1.0.2 section 3.1.1).
pub const MAX_EXTENSION_NAME_LEN: usize = 20;

/// Attribute names with a meaning of their own; anything else is an extension.
const CONTEXT_ATTRIBUTES: [&str; 10] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
];

/// A CloudEvent that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Unique within `source`; (source, id) is the deduplication key.
    pub id: String,
    /// URI-reference of the producer.
    pub source: String,
    /// What happened, e.g. `com.example.page.viewed`; also the AMQP routing key.
    pub event_type: String,
    /// What the event is about, within the source.
    pub subject: Option<String>,
    /// When it happened, normalised to UTC.
    pub time: Option<DateTime<Utc>>,
    /// Media type of `data`.
    pub datacontenttype: Option<String>,
    /// Absolute URI of the schema `data` adheres to.
    pub dataschema: Option<String>,
    /// The payload, if any.
    pub data: Option<EventData>,
    /// Extension attributes by name; each a string, an integer or a boolean.
    pub extensions: BTreeMap<String, Value>,
}

/// An event's payload: JSON, or bytes carried as base64 (`data_base64`).
#[derive(Debug, Clone, PartialEq)]
pub enum EventData {
    /// `data`: any JSON value.
    Json(Value),
    /// `data_base64`: the base64 text exactly as received (validated).
    Base64(String),
}

/// What validation checks beyond the specification; the consumer decodes with
/// [`Validation::structural`] so an operator raising a gateway limit never dead-letters events.
#[derive(Debug, Clone)]
pub struct Validation<'a> {
    /// Size limits to enforce.
    pub limits: &'a Limits,
    /// The current time, to refuse events too far in the future; `None` skips that check.
    pub now: Option<DateTime<Utc>>,
}

impl Validation<'static> {
    /// The specification's rules only: no size limits, no clock.
    pub fn structural() -> Self {
        static UNBOUNDED: Limits = Limits {
            max_attribute_bytes: usize::MAX,
            max_event_bytes: usize::MAX,
            max_batch_events: usize::MAX,
            max_body_bytes: usize::MAX,
            max_depth: usize::MAX,
            max_future_skew: std::time::Duration::MAX,
        };
        Validation {
            limits: &UNBOUNDED,
            now: None,
        }
    }
}

impl Event {
    /// Turns one decoded JSON value into an event, reporting every problem found at once.
    pub fn from_json(value: Value, rules: &Validation<'_>) -> Result<Event, Vec<Problem>> {
        let Value::Object(mut object) = value else {
            return Err(vec![Problem::new(
                ErrorCode::NotAnObject,
                "",
                "an event must be a JSON object",
            )]);
        };
        let mut problems = Vec::new();
        let limits = rules.limits;

        match take(&mut object, "specversion") {
            None => problems.push(missing("specversion")),
            Some(Value::String(version)) if version == SPEC_VERSION => {}
            Some(other) => problems.push(Problem::new(
                ErrorCode::InvalidSpecversion,
                "/specversion",
                format!("specversion must be \"1.0\", got {}", short(&other)),
            )),
        }
        let id = required_string(&mut object, "id", limits, &mut problems);
        let source = required_string(&mut object, "source", limits, &mut problems);
        if let Some(source) = &source {
            if fluent_uri::UriRef::parse(source.as_str()).is_err() {
                problems.push(invalid(
                    "source",
                    "source must be a URI-reference (RFC 3986)",
                ));
            }
        }
        let event_type = required_string(&mut object, "type", limits, &mut problems);
        let subject = optional_string(&mut object, "subject", limits, &mut problems);
        let time = optional_string(&mut object, "time", limits, &mut problems)
            .and_then(|text| parse_time(&text, rules, &mut problems));
        let datacontenttype =
            optional_string(&mut object, "datacontenttype", limits, &mut problems);
        if let Some(media_type) = &datacontenttype {
            if !is_media_type(media_type) {
                problems.push(invalid(
                    "datacontenttype",
                    "datacontenttype must be a media type such as application/json (RFC 2046)",
                ));
            }
        }
        let dataschema = optional_string(&mut object, "dataschema", limits, &mut problems);
        if let Some(schema) = &dataschema {
            if fluent_uri::Uri::parse(schema.as_str()).is_err() {
                problems.push(invalid("dataschema", "dataschema must be an absolute URI"));
            }
        }
        let data = take_data(&mut object, &mut problems);
        let extensions = take_extensions(object, limits, &mut problems);

        if !problems.is_empty() {
            return Err(problems);
        }
        let (Some(id), Some(source), Some(event_type)) = (id, source, event_type) else {
            // Unreachable in practice: a missing required attribute was recorded as a problem.
            return Err(vec![missing("id")]);
        };
        let event = Event {
            id,
            source,
            event_type,
            subject,
            time,
            datacontenttype,
            dataschema,
            data,
            extensions,
        };
        let size = event.serialized_len();
        if size > limits.max_event_bytes {
            return Err(vec![Problem::new(
                ErrorCode::TooLarge,
                "",
                format!(
                    "the event is {size} bytes serialized; the limit is {}",
                    limits.max_event_bytes
                ),
            )]);
        }
        Ok(event)
    }

    /// Size of the structured JSON form, without building it.
    pub fn serialized_len(&self) -> usize {
        let mut counter = ByteCounter(0);
        // Writing to a counter cannot fail, and every value here is serializable.
        let _ = serde_json::to_writer(&mut counter, self);
        counter.0
    }

    /// The JSON `time` text Warren returns: UTC, RFC 3339, with only the fraction digits needed.
    pub fn time_text(time: &DateTime<Utc>) -> String {
        time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        StructuredView {
            id: &self.id,
            source: &self.source,
            event_type: &self.event_type,
            subject: self.subject.as_deref(),
            time: self.time.as_ref(),
            datacontenttype: self.datacontenttype.as_deref(),
            dataschema: self.dataschema.as_deref(),
            extensions: self.extensions.iter(),
            data: match &self.data {
                Some(EventData::Json(value)) => Some(DataView::Json(value)),
                Some(EventData::Base64(text)) => Some(DataView::Base64(text)),
                None => None,
            },
            received_at: None,
        }
        .serialize(serializer)
    }
}

/// An event's payload, borrowed; see [`StructuredView`].
#[derive(Debug, Clone, Copy)]
pub enum DataView<'a> {
    /// `data`.
    Json(&'a Value),
    /// `data_base64`.
    Base64(&'a str),
}

/// An event's structured JSON form written from borrowed parts: the one serializer of that form,
/// for [`Event`] and for rows the read API streams out without copying them into an [`Event`].
#[derive(Debug, Clone)]
pub struct StructuredView<'a, X> {
    /// `id`.
    pub id: &'a str,
    /// `source`.
    pub source: &'a str,
    /// `type`.
    pub event_type: &'a str,
    /// `subject`.
    pub subject: Option<&'a str>,
    /// `time`.
    pub time: Option<&'a DateTime<Utc>>,
    /// `datacontenttype`.
    pub datacontenttype: Option<&'a str>,
    /// `dataschema`.
    pub dataschema: Option<&'a str>,
    /// Extension attributes (names are `[a-z0-9]+`, so they never collide with `received_at`).
    pub extensions: X,
    /// `data` or `data_base64`.
    pub data: Option<DataView<'a>>,
    /// Warren's own `received_at`, written last, for stored events.
    pub received_at: Option<&'a DateTime<Utc>>,
}

impl<'a, X> Serialize for StructuredView<'a, X>
where
    X: Iterator<Item = (&'a String, &'a Value)> + Clone,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("specversion", SPEC_VERSION)?;
        map.serialize_entry("id", self.id)?;
        map.serialize_entry("source", self.source)?;
        map.serialize_entry("type", self.event_type)?;
        if let Some(subject) = self.subject {
            map.serialize_entry("subject", subject)?;
        }
        if let Some(time) = self.time {
            map.serialize_entry("time", &Event::time_text(time))?;
        }
        if let Some(media_type) = self.datacontenttype {
            map.serialize_entry("datacontenttype", media_type)?;
        }
        if let Some(schema) = self.dataschema {
            map.serialize_entry("dataschema", schema)?;
        }
        for (name, value) in self.extensions.clone() {
            map.serialize_entry(name, value)?;
        }
        match self.data {
            Some(DataView::Json(value)) => map.serialize_entry("data", value)?,
            Some(DataView::Base64(text)) => map.serialize_entry("data_base64", text)?,
            None => {}
        }
        if let Some(received_at) = self.received_at {
            map.serialize_entry("received_at", &Event::time_text(received_at))?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Event {
    /// Decodes structured JSON with the specification's rules only ([`Validation::structural`]).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Event::from_json(value, &Validation::structural()).map_err(|problems| {
            let first = problems
                .first()
                .map(|p| format!("{} at {:?}: {}", p.code.as_str(), p.pointer, p.message))
                .unwrap_or_default();
            de::Error::custom(format_args!("invalid CloudEvent: {first}"))
        })
    }
}

struct ByteCounter(usize);

impl io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Removes an attribute; JSON `null` counts as absent (CloudEvents JSON format, section 3.1).
fn take(object: &mut Map<String, Value>, name: &str) -> Option<Value> {
    object.remove(name).filter(|value| !value.is_null())
}

fn missing(name: &str) -> Problem {
    Problem::new(
        ErrorCode::MissingAttribute,
        format!("/{name}"),
        format!("the required attribute {name} is missing"),
    )
}

fn invalid(name: &str, message: &str) -> Problem {
    Problem::new(ErrorCode::InvalidAttribute, format!("/{name}"), message)
}

fn short(value: &Value) -> String {
    let mut text = value.to_string();
    if text.len() > 40 {
        let mut cut = 40;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

fn required_string(
    object: &mut Map<String, Value>,
    name: &str,
    limits: &Limits,
    problems: &mut Vec<Problem>,
) -> Option<String> {
    let value = optional_string(object, name, limits, problems);
    if value.is_none() && !problems.iter().any(|p| p.pointer == format!("/{name}")) {
        problems.push(missing(name));
    }
    value
}

/// A string attribute that, when present, must be non-empty, bounded and free of NUL.
fn optional_string(
    object: &mut Map<String, Value>,
    name: &str,
    limits: &Limits,
    problems: &mut Vec<Problem>,
) -> Option<String> {
    match take(object, name)? {
        Value::String(text) => {
            if text.is_empty() {
                problems.push(invalid(name, &format!("{name} must not be empty")));
                None
            } else if text.len() > limits.max_attribute_bytes {
                problems.push(Problem::new(
                    ErrorCode::TooLarge,
                    format!("/{name}"),
                    format!(
                        "{name} is {} bytes; the limit is {}",
                        text.len(),
                        limits.max_attribute_bytes
                    ),
                ));
                None
            } else if text.contains('\0') {
                problems.push(invalid(
                    name,
                    &format!("{name} must not contain NUL (\\u0000)"),
                ));
                None
            } else {
                Some(text)
            }
        }
        other => {
            problems.push(invalid(
                name,
                &format!("{name} must be a string, got {}", json_type(&other)),
            ));
            None
        }
    }
}

fn parse_time(
    text: &str,
    rules: &Validation<'_>,
    problems: &mut Vec<Problem>,
) -> Option<DateTime<Utc>> {
    let time = match DateTime::parse_from_rfc3339(text) {
        Ok(time) => time.with_timezone(&Utc),
        Err(error) => {
            problems.push(Problem::new(
                ErrorCode::InvalidTime,
                "/time",
                format!("time must be an RFC 3339 timestamp: {error}"),
            ));
            return None;
        }
    };
    if let Some(now) = rules.now {
        let skew = chrono::Duration::from_std(rules.limits.max_future_skew)
            .unwrap_or(chrono::Duration::MAX);
        if now
            .checked_add_signed(skew)
            .is_some_and(|latest| time > latest)
        {
            problems.push(Problem::new(
                ErrorCode::InvalidTime,
                "/time",
                format!(
                    "time is more than {} s in the future",
                    rules.limits.max_future_skew.as_secs()
                ),
            ));
            return None;
        }
    }
    Some(time)
}

/// `type/subtype` with token characters (RFC 2045 section 5.1), parameters allowed after `;`.
fn is_media_type(text: &str) -> bool {
    let essence = text.split(';').next().unwrap_or_default().trim();
    let is_token = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    let well_formed = match essence.split_once('/') {
        Some((kind, subtype)) => is_token(kind) && is_token(subtype),
        None => false,
    };
    well_formed && !text.chars().any(char::is_control)
}

fn take_data(object: &mut Map<String, Value>, problems: &mut Vec<Problem>) -> Option<EventData> {
    let data = take(object, "data");
    let data_base64 = take(object, "data_base64");
    match (data, data_base64) {
        (Some(_), Some(_)) => {
            problems.push(invalid(
                "data_base64",
                "an event carries either data or data_base64, not both",
            ));
            None
        }
        (Some(value), None) => {
            find_nul(&value, "/data", problems);
            Some(EventData::Json(value))
        }
        (None, Some(Value::String(text))) => {
            if base64::engine::general_purpose::STANDARD
                .decode(&text)
                .is_err()
            {
                problems.push(invalid(
                    "data_base64",
                    "data_base64 must be valid base64 (RFC 4648)",
                ));
                None
            } else {
                Some(EventData::Base64(text))
            }
        }
        (None, Some(other)) => {
            problems.push(invalid(
                "data_base64",
                &format!("data_base64 must be a string, got {}", json_type(&other)),
            ));
            None
        }
        (None, None) => None,
    }
}

/// Postgres can store NUL neither in text nor in jsonb, so it is refused at the edge.
fn find_nul(value: &Value, pointer: &str, problems: &mut Vec<Problem>) {
    match value {
        Value::String(text) if text.contains('\0') => problems.push(Problem::new(
            ErrorCode::InvalidAttribute,
            pointer,
            "strings must not contain NUL (\\u0000)",
        )),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                find_nul(item, &format!("{pointer}/{index}"), problems);
            }
        }
        Value::Object(object) => {
            for (key, item) in object {
                let child = format!("{pointer}/{}", pointer_token(key));
                if key.contains('\0') {
                    problems.push(Problem::new(
                        ErrorCode::InvalidAttribute,
                        child.clone(),
                        "object keys must not contain NUL (\\u0000)",
                    ));
                }
                find_nul(item, &child, problems);
            }
        }
        _ => {}
    }
}

fn take_extensions(
    object: Map<String, Value>,
    limits: &Limits,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, Value> {
    let mut extensions = BTreeMap::new();
    for (name, value) in object {
        let pointer = format!("/{}", pointer_token(&name));
        if !is_extension_name(&name) {
            problems.push(Problem::new(
                ErrorCode::InvalidExtensionName,
                pointer,
                format!(
                    "extension attribute names are 1-{MAX_EXTENSION_NAME_LEN} characters of a-z and 0-9"
                ),
            ));
            continue;
        }
        match value {
            Value::Null => {}
            Value::Bool(_) => {
                extensions.insert(name, value);
            }
            Value::Number(ref number)
                if number.as_i64().is_some_and(|n| i32::try_from(n).is_ok()) =>
            {
                extensions.insert(name, value);
            }
            Value::String(ref text) if text.contains('\0') => problems.push(Problem::new(
                ErrorCode::InvalidAttribute,
                pointer,
                "strings must not contain NUL (\\u0000)",
            )),
            // Extensions are attributes too: the same byte limit as id, source, type and subject
            // (bytes of UTF-8, not characters).
            Value::String(ref text) if text.len() > limits.max_attribute_bytes => {
                problems.push(Problem::new(
                    ErrorCode::TooLarge,
                    pointer,
                    format!(
                        "{name} is {} bytes; the limit is {}",
                        text.len(),
                        limits.max_attribute_bytes
                    ),
                ))
            }
            Value::String(_) => {
                extensions.insert(name, value);
            }
            other => problems.push(Problem::new(
                ErrorCode::InvalidAttribute,
                pointer,
                format!(
                    "extension values are strings, booleans or 32-bit integers, got {}",
                    json_type(&other)
                ),
            )),
        }
    }
    extensions
}

fn is_extension_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_EXTENSION_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && !CONTEXT_ATTRIBUTES.contains(&name)
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn minimal() -> Value {
        json!({"specversion": "1.0", "id": "e-1", "source": "/shop", "type": "order.placed"})
    }

    fn validate(value: Value) -> Result<Event, Vec<Problem>> {
        let limits = Limits::default();
        Event::from_json(
            value,
            &Validation {
                limits: &limits,
                now: Some(Utc::now()),
            },
        )
    }

    fn with(field: &str, value: Value) -> Value {
        let mut event = minimal();
        event[field] = value;
        event
    }

    fn codes(value: Value) -> Vec<(ErrorCode, String)> {
        validate(value)
            .unwrap_err()
            .into_iter()
            .map(|p| (p.code, p.pointer))
            .collect()
    }

    #[test]
    fn minimal_event_is_valid() {
        let event = validate(minimal()).unwrap();
        assert_eq!(event.id, "e-1");
        assert_eq!(event.source, "/shop");
        assert_eq!(event.event_type, "order.placed");
        assert!(event.data.is_none());
    }

    #[test]
    fn empty_object_reports_every_missing_attribute() {
        let found = codes(json!({}));
        for name in ["specversion", "id", "source", "type"] {
            assert!(
                found.contains(&(ErrorCode::MissingAttribute, format!("/{name}"))),
                "{name} not reported in {found:?}"
            );
        }
        assert_eq!(found.len(), 4);
    }

    #[test]
    fn null_required_attribute_counts_as_missing() {
        assert_eq!(
            codes(with("id", Value::Null)),
            vec![(ErrorCode::MissingAttribute, "/id".into())]
        );
    }

    #[test]
    fn other_spec_versions_are_refused() {
        for version in [json!("0.3"), json!("2.0"), json!(1.0)] {
            assert_eq!(
                codes(with("specversion", version)),
                vec![(ErrorCode::InvalidSpecversion, "/specversion".into())]
            );
        }
    }

    #[test]
    fn wrong_json_types_are_invalid_attributes() {
        for name in [
            "id",
            "source",
            "type",
            "subject",
            "datacontenttype",
            "dataschema",
        ] {
            assert_eq!(
                codes(with(name, json!(42))),
                vec![(ErrorCode::InvalidAttribute, format!("/{name}"))],
                "{name}"
            );
        }
        assert_eq!(
            codes(with("time", json!(42))),
            vec![(ErrorCode::InvalidAttribute, "/time".into())]
        );
    }

    #[test]
    fn empty_strings_are_refused() {
        for name in ["id", "source", "type", "subject"] {
            assert_eq!(
                codes(with(name, json!(""))),
                vec![(ErrorCode::InvalidAttribute, format!("/{name}"))],
                "{name}"
            );
        }
    }

    #[test]
    fn attributes_over_the_byte_limit_are_too_large() {
        assert_eq!(
            codes(with("id", json!("x".repeat(257)))),
            vec![(ErrorCode::TooLarge, "/id".into())]
        );
        assert!(validate(with("id", json!("x".repeat(256)))).is_ok());
    }

    #[test]
    fn source_must_be_a_uri_reference() {
        assert!(validate(with("source", json!("https://example.com/a?b=c"))).is_ok());
        assert!(validate(with("source", json!("urn:uuid:6e8bc430-9c3a-11d9-9669"))).is_ok());
        assert_eq!(
            codes(with("source", json!("has space"))),
            vec![(ErrorCode::InvalidAttribute, "/source".into())]
        );
    }

    #[test]
    fn dataschema_must_be_an_absolute_uri() {
        assert!(validate(with("dataschema", json!("https://example.com/s.json"))).is_ok());
        assert_eq!(
            codes(with("dataschema", json!("relative/path"))),
            vec![(ErrorCode::InvalidAttribute, "/dataschema".into())]
        );
    }

    #[test]
    fn datacontenttype_must_be_a_media_type() {
        assert!(validate(with(
            "datacontenttype",
            json!("application/json; charset=utf-8")
        ))
        .is_ok());
        assert_eq!(
            codes(with("datacontenttype", json!("json"))),
            vec![(ErrorCode::InvalidAttribute, "/datacontenttype".into())]
        );
    }

    #[test]
    fn time_is_parsed_and_normalised_to_utc() {
        let event = validate(with("time", json!("2024-05-01T12:00:00.5+02:00"))).unwrap();
        assert_eq!(
            Event::time_text(&event.time.unwrap()),
            "2024-05-01T10:00:00.500Z"
        );
    }

    #[test]
    fn invalid_time_is_refused() {
        for text in ["yesterday", "2024-13-01T00:00:00Z", "2024-05-01"] {
            assert_eq!(
                codes(with("time", json!(text))),
                vec![(ErrorCode::InvalidTime, "/time".into())],
                "{text}"
            );
        }
    }

    #[test]
    fn time_more_than_a_day_ahead_is_refused() {
        let later = Utc::now() + chrono::Duration::hours(25);
        assert_eq!(
            codes(with("time", json!(Event::time_text(&later)))),
            vec![(ErrorCode::InvalidTime, "/time".into())]
        );
        let soon = Utc::now() + chrono::Duration::hours(23);
        assert!(validate(with("time", json!(Event::time_text(&soon)))).is_ok());
    }

    #[test]
    fn nul_is_refused_in_attributes_data_and_keys() {
        assert_eq!(
            codes(with("subject", json!("a\u{0}b"))),
            vec![(ErrorCode::InvalidAttribute, "/subject".into())]
        );
        assert_eq!(
            codes(with("data", json!({"k": ["ok", "bad\u{0}"]}))),
            vec![(ErrorCode::InvalidAttribute, "/data/k/1".into())]
        );
        assert_eq!(
            codes(with("data", json!({"a/\u{0}": 1}))),
            vec![(ErrorCode::InvalidAttribute, "/data/a~1\u{0}".into())]
        );
    }

    #[test]
    fn data_and_data_base64_together_are_refused() {
        let mut event = with("data", json!(1));
        event["data_base64"] = json!("AQID");
        assert_eq!(
            codes(event),
            vec![(ErrorCode::InvalidAttribute, "/data_base64".into())]
        );
    }

    #[test]
    fn data_base64_must_be_base64() {
        let event = validate(with("data_base64", json!("AQID"))).unwrap();
        assert_eq!(event.data, Some(EventData::Base64("AQID".into())));
        assert_eq!(
            codes(with("data_base64", json!("not base64!"))),
            vec![(ErrorCode::InvalidAttribute, "/data_base64".into())]
        );
    }

    #[test]
    fn extensions_are_kept_with_their_values() {
        let mut event = minimal();
        event["traceparent"] = json!("00-abc");
        event["priority"] = json!(3);
        event["sampled"] = json!(true);
        let event = validate(event).unwrap();
        assert_eq!(event.extensions.len(), 3);
        assert_eq!(event.extensions["priority"], json!(3));
    }

    #[test]
    fn attribute_limits_count_utf8_bytes_not_characters() {
        // 129 two-byte characters: 258 bytes, over the default 256, though only 129 characters.
        let long = "é".repeat(129);
        for field in ["id", "type", "subject", "myext"] {
            assert_eq!(
                codes(with(field, json!(long))),
                vec![(ErrorCode::TooLarge, format!("/{field}"))],
                "{field}"
            );
        }
        // 128 of them is 256 bytes: exactly the limit.
        assert!(validate(with("myext", json!("é".repeat(128)))).is_ok());
    }

    #[test]
    fn extension_names_outside_a_to_z_and_digits_are_refused() {
        for name in [
            "Upper",
            "with-dash",
            "with_underscore",
            "abcdefghijklmnopqrstu",
        ] {
            assert_eq!(
                codes(with(name, json!("x"))),
                vec![(ErrorCode::InvalidExtensionName, format!("/{name}"))],
                "{name}"
            );
        }
    }

    #[test]
    fn extension_values_must_be_scalars_of_the_type_system() {
        for value in [
            json!({"a": 1}),
            json!([1]),
            json!(1.5),
            json!(3_000_000_000_i64),
        ] {
            assert_eq!(
                codes(with("ext", value.clone())),
                vec![(ErrorCode::InvalidAttribute, "/ext".into())],
                "{value}"
            );
        }
    }

    #[test]
    fn event_over_the_size_limit_is_too_large() {
        let event = with("data", json!("x".repeat(64 * 1024)));
        assert_eq!(codes(event), vec![(ErrorCode::TooLarge, String::new())]);
    }

    #[test]
    fn non_object_is_refused() {
        assert_eq!(
            codes(json!([1])),
            vec![(ErrorCode::NotAnObject, String::new())]
        );
    }

    #[test]
    fn serialized_form_round_trips_through_validation() {
        let mut input = with("data", json!({"a": [1, 2.5, null]}));
        input["subject"] = json!("cart/7");
        input["time"] = json!("2024-05-01T10:00:00Z");
        input["ext"] = json!("v");
        let event = validate(input).unwrap();
        let text = serde_json::to_vec(&event).unwrap();
        assert_eq!(text.len(), event.serialized_len());
        let again: Event = serde_json::from_slice(&text).unwrap();
        assert_eq!(again, event);
    }
}
