//! Per-type JSON Schemas for `data`: what a registrable schema is, how an event names a registered
//! version in `dataschema`, and how a violation is reported.
//!
//! The consumer checks a schema with [`compile`] before it stores it, and the gateway compiles
//! the same way before it enforces it, so a schema the registry accepted always compiles at the
//! edge. Schemas are JSON Schema 2020-12, with `format` asserted (an `email` or `date-time` that
//! is not one is a violation, as Snowplow's and Segment's users expect) and no remote `$ref`: a
//! schema must be self-contained, so validation never waits on the network.

use serde_json::Value;

use crate::event::{Event, EventData};
use crate::problem::{ErrorCode, Problem};

/// A compiled schema; validating with it allocates only for the violations it reports.
pub type Validator = jsonschema::Validator;

/// The `$schema` a registered schema may declare; absent means the same.
pub const DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

/// The most violations reported per event: enough to fix a payload, bounded for a hostile one.
pub const MAX_VIOLATIONS_PER_EVENT: usize = 20;

/// What the registry does with events of a type whose data breaks its schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Refuse the request (400, `schema_violation`).
    Enforce,
    /// Accept, and count and log the violation.
    Warn,
}

impl Policy {
    /// The policy as stored and as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Enforce => "enforce",
            Policy::Warn => "warn",
        }
    }

    /// Reads a stored policy.
    pub fn parse(text: &str) -> Option<Policy> {
        match text {
            "enforce" => Some(Policy::Enforce),
            "warn" => Some(Policy::Warn),
            _ => None,
        }
    }
}

/// Why a document cannot be registered as a schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// `$schema` names another dialect.
    #[error("$schema must be {DIALECT} (or absent); other dialects are not accepted")]
    Dialect,
    /// Not a JSON Schema 2020-12 document, or a `$ref` that points outside it.
    #[error("not a valid JSON Schema 2020-12 document: {0}")]
    Invalid(String),
}

/// Compiles `schema` for validation, refusing what the registry must not store.
pub fn compile(schema: &Value) -> Result<Validator, SchemaError> {
    if let Some(dialect) = schema.get("$schema") {
        if dialect.as_str() != Some(DIALECT) {
            return Err(SchemaError::Dialect);
        }
    }
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(schema)
        .map_err(|error| SchemaError::Invalid(error.to_string()))
}

/// The registered version an event's `dataschema` names, as `(type, version)`: any absolute URI
/// whose path ends in `/v1/schemas/{type}/versions/{version}` (the `dataschema` the registry
/// returns for each version), whatever its host, so events name it by the public URL.
pub fn registered_version(dataschema: &str) -> Option<(String, u32)> {
    let uri = fluent_uri::Uri::parse(dataschema).ok()?;
    let segments: Vec<_> = uri.path().segments_if_absolute()?.collect();
    let [.., v1, schemas, event_type, versions, version] = segments.as_slice() else {
        return None;
    };
    if v1.as_str() != "v1" || schemas.as_str() != "schemas" || versions.as_str() != "versions" {
        return None;
    }
    let version = version.as_str().parse().ok().filter(|v: &u32| *v > 0)?;
    let event_type = event_type.decode().to_string().ok()?.into_owned();
    Some((event_type, version))
}

/// The path (under the public base URL) that names a registered version, percent-encoding the
/// type so [`registered_version`] reads it back.
pub fn version_path(event_type: &str, version: u32) -> String {
    format!(
        "/v1/schemas/{}/versions/{version}",
        encode_segment(event_type)
    )
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn encode_segment(segment: &str) -> String {
    let mut encoded = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Every way `event`'s data breaks `validator`, as problems located from the event's root
/// (`/data/...`), at most [`MAX_VIOLATIONS_PER_EVENT`]. Binary data cannot match a JSON Schema,
/// and absent data is checked as `null`.
pub fn violations(validator: &Validator, event: &Event) -> Vec<Problem> {
    let data = match &event.data {
        Some(EventData::Json(value)) => value,
        Some(EventData::Base64(_)) => {
            return vec![Problem::new(
                ErrorCode::SchemaViolation,
                "/data_base64",
                "the type has a JSON Schema, so its data must be JSON, not binary",
            )]
        }
        None => &Value::Null,
    };
    if validator.is_valid(data) {
        return Vec::new();
    }
    validator
        .iter_errors(data)
        .take(MAX_VIOLATIONS_PER_EVENT)
        .map(|error| {
            let pointer = format!("/data{}", error.instance_path().as_str());
            Problem::new(ErrorCode::SchemaViolation, pointer, error.to_string())
        })
        .collect()
}

/// A problem for an event whose `dataschema` names a version the registry does not hold.
pub fn unknown_version(event_type: &str, version: u32) -> Problem {
    Problem::new(
        ErrorCode::UnknownSchema,
        "/dataschema",
        format!(
            "dataschema names version {version} of {event_type:?}, which is not registered (or was retired)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(data: Option<EventData>) -> Event {
        Event {
            id: "1".into(),
            source: "/s".into(),
            event_type: "t".into(),
            subject: None,
            time: None,
            datacontenttype: None,
            dataschema: None,
            data,
            extensions: Default::default(),
        }
    }

    #[test]
    fn violations_point_into_the_event() {
        let validator = compile(&json!({
            "type": "object",
            "properties": {"user": {"type": "object", "properties": {"id": {"type": "integer"}}}},
            "required": ["user"]
        }))
        .unwrap();
        let problems = violations(
            &validator,
            &event(Some(EventData::Json(json!({"user": {"id": "x"}})))),
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].pointer, "/data/user/id");
        assert_eq!(problems[0].code, ErrorCode::SchemaViolation);
        let missing = violations(&validator, &event(Some(EventData::Json(json!({})))));
        assert_eq!(missing[0].pointer, "/data");
        assert!(violations(&validator, &event(None))[0]
            .message
            .contains("null"));
        assert_eq!(
            violations(&validator, &event(Some(EventData::Base64("AA==".into()))))[0].pointer,
            "/data_base64"
        );
        assert!(violations(
            &validator,
            &event(Some(EventData::Json(json!({"user": {"id": 7}}))))
        )
        .is_empty());
    }

    #[test]
    fn formats_are_asserted() {
        let validator = compile(&json!({"type": "string", "format": "email"})).unwrap();
        assert!(!validator.is_valid(&json!("not an address")));
        assert!(validator.is_valid(&json!("a@example.com")));
    }

    #[test]
    fn other_dialects_and_broken_schemas_are_refused() {
        assert_eq!(
            compile(&json!({"$schema": "http://json-schema.org/draft-07/schema#"})).unwrap_err(),
            SchemaError::Dialect
        );
        assert!(matches!(
            compile(&json!({"type": "no-such-type"})),
            Err(SchemaError::Invalid(_))
        ));
        assert!(matches!(
            compile(&json!({"$ref": "https://example.com/remote.json"})),
            Err(SchemaError::Invalid(_))
        ));
        assert!(compile(&json!({"$schema": DIALECT, "type": "object"})).is_ok());
    }

    #[test]
    fn violations_per_event_are_bounded() {
        let validator = compile(&json!({"type": "array", "items": {"type": "integer"}})).unwrap();
        let data = Value::Array(vec![json!("x"); 100]);
        assert_eq!(
            violations(&validator, &event(Some(EventData::Json(data)))).len(),
            MAX_VIOLATIONS_PER_EVENT
        );
    }

    #[test]
    fn dataschema_names_a_version_by_path_on_any_host() {
        let path = version_path("com.example/order created", 3);
        assert_eq!(path, "/v1/schemas/com.example%2Forder%20created/versions/3");
        assert_eq!(
            registered_version(&format!("https://ingest.example.com{path}")),
            Some(("com.example/order created".to_owned(), 3))
        );
        assert_eq!(
            registered_version("https://h/prefix/v1/schemas/t/versions/2"),
            Some(("t".to_owned(), 2))
        );
        for other in [
            "https://h/v1/schemas/t/versions/0",
            "https://h/v1/schemas/t/versions/x",
            "https://h/v1/schemas/t",
            "https://example.com/schemas/t.json",
            "urn:example:t",
        ] {
            assert_eq!(registered_version(other), None, "{other}");
        }
    }
}
