//! Validation problems: what is wrong with an input, where, under a stable code.
//!
//! Clients branch on `code`, so the codes are part of the public API: never rename one.

use serde::Serialize;

/// A stable, machine-readable reason an input was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not a single well-formed JSON document (syntax, encoding, duplicate keys,
    /// numbers out of range, trailing bytes).
    InvalidJson,
    /// A required attribute is absent or null.
    MissingAttribute,
    /// An attribute has the wrong JSON type or a value its definition forbids.
    InvalidAttribute,
    /// `specversion` is not "1.0".
    InvalidSpecversion,
    /// `time` is not RFC 3339, or is too far in the future.
    InvalidTime,
    /// An extension attribute's name is not 1-20 characters of a-z and 0-9.
    InvalidExtensionName,
    /// A string, an event or a body exceeds its limit.
    TooLarge,
    /// JSON nested deeper than the limit.
    TooDeep,
    /// A batch with no events in it.
    EmptyBatch,
    /// An event that is not a JSON object.
    NotAnObject,
    /// A batch body that is not a JSON array.
    NotAnArray,
    /// `data` breaks the JSON Schema registered for the event's type (policy `enforce`).
    SchemaViolation,
    /// `dataschema` names a registry version that does not exist or was retired.
    UnknownSchema,
    /// No schema is registered for the type and `WARREN_SCHEMA_REQUIRED=on`.
    SchemaRequired,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::MissingAttribute => "missing_attribute",
            ErrorCode::InvalidAttribute => "invalid_attribute",
            ErrorCode::InvalidSpecversion => "invalid_specversion",
            ErrorCode::InvalidTime => "invalid_time",
            ErrorCode::InvalidExtensionName => "invalid_extension_name",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::TooDeep => "too_deep",
            ErrorCode::EmptyBatch => "empty_batch",
            ErrorCode::NotAnObject => "not_an_object",
            ErrorCode::NotAnArray => "not_an_array",
            ErrorCode::SchemaViolation => "schema_violation",
            ErrorCode::UnknownSchema => "unknown_schema",
            ErrorCode::SchemaRequired => "schema_required",
        }
    }
}

/// One thing wrong with an input, located by a JSON pointer (RFC 6901) into the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Index of the event in a batch; absent for single events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// The stable reason.
    pub code: ErrorCode,
    /// Where in the event: `/id`, `/data/items/3`, or `""` for the whole document.
    pub pointer: String,
    /// A sentence for humans; may change between releases.
    pub message: String,
}

impl Problem {
    /// A problem at `pointer` inside an event.
    pub fn new(code: ErrorCode, pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            index: None,
            code,
            pointer: pointer.into(),
            message: message.into(),
        }
    }

    /// The same problem, attributed to element `index` of a batch.
    pub fn at_index(mut self, index: usize) -> Self {
        self.index = Some(index);
        self
    }
}

/// Escapes one reference token of a JSON pointer (RFC 6901 section 3).
pub fn pointer_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}
