//! A validated CloudEvents 1.0 event.
//!
//! [`Event`] can only hold events that satisfy the CloudEvents 1.0.2 specification (core attributes
//! and the JSON format) plus Warren's limits, so code that holds one never re-checks it. Where the
//! specification is silent or only says SHOULD, Warren is strict; README.md lists those choices.
//! The type is here; turning JSON into one is [`parse`], writing its structured form is
//! [`serialize`], and the borrowed views that form is written from are [`view`].

mod parse;
mod serialize;
pub mod view;

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

use crate::limits::Limits;

pub use view::{DataView, StructuredView};

/// The only CloudEvents version Warren accepts.
pub const SPEC_VERSION: &str = "1.0";

/// Longest extension attribute name (CloudEvents 1.0.2 section 3.1.1).
pub const MAX_EXTENSION_NAME_LEN: usize = 20;

/// A CloudEvent that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Unique within `source`; (source, id) is the deduplication key.
    pub id: String,
    /// URI-reference of the producer.
    pub source: String,
    /// What happened, e.g. `com.example.page.viewed`; also what the broker routes its message by.
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
    /// Size of the structured JSON form, without building it.
    pub fn serialized_len(&self) -> usize {
        let mut counter = serialize::ByteCounter(0);
        // Writing to a counter cannot fail, and every value here is serializable.
        let _ = serde_json::to_writer(&mut counter, self);
        counter.0
    }

    /// The JSON `time` text Warren returns: UTC, RFC 3339, with only the fraction digits needed.
    pub fn time_text(time: &DateTime<Utc>) -> String {
        time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }
}

#[cfg(test)]
mod tests;
