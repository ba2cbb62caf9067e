//! Turning one decoded JSON value into an [`Event`], reporting every problem at once: the
//! specification's rules (CloudEvents 1.0.2 core attributes and JSON format) plus Warren's limits.

use std::collections::BTreeMap;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::de::{self, Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::{Event, EventData, Validation, MAX_EXTENSION_NAME_LEN, SPEC_VERSION};
use crate::limits::Limits;
use crate::problem::{pointer_token, ErrorCode, Problem};

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
        // Structural validation (the consumer's) has no size limit, so nothing to count against.
        if limits.max_event_bytes != usize::MAX {
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
        }
        Ok(event)
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
            if holds_nul(&value) {
                find_nul(&value, "/data", problems);
            }
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

/// Whether any string or key in `value` holds NUL: the check every event's data passes, so it
/// allocates nothing; [`find_nul`] then names where, for the few that fail.
fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(object) => object
            .iter()
            .any(|(key, item)| key.contains('\0') || holds_nul(item)),
        _ => false,
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
        let pointer = || format!("/{}", pointer_token(&name));
        if !is_extension_name(&name) {
            problems.push(Problem::new(
                ErrorCode::InvalidExtensionName,
                pointer(),
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
                pointer(),
                "strings must not contain NUL (\\u0000)",
            )),
            // Extensions are attributes too: the same byte limit as id, source, type and subject
            // (bytes of UTF-8, not characters).
            Value::String(ref text) if text.len() > limits.max_attribute_bytes => {
                problems.push(Problem::new(
                    ErrorCode::TooLarge,
                    pointer(),
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
                pointer(),
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
