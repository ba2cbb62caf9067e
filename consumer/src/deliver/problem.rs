//! A field-level problem with a subscription request, in the shape event validation reports
//! them: where (`pointer`, a JSON pointer into the body), a stable `code`, and a message for people.

use serde::Serialize;

/// One thing wrong with a request body, at one field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldProblem {
    /// JSON pointer to the field, e.g. `/filters/0/exact/type` or `/delivery/attempts`.
    pub pointer: String,
    /// Stable machine-readable reason.
    pub code: &'static str,
    /// What is wrong and what would be right.
    pub message: String,
}

impl FieldProblem {
    /// A problem at `pointer`.
    pub fn new(pointer: &str, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            pointer: pointer.to_owned(),
            code,
            message: message.into(),
        }
    }
}
