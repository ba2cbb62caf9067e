//! The message that travels on the queue: events as accepted, plus what the gateway knows.
//!
//! The envelope is versioned (`"v"`) so a consumer can refuse a format it does not understand
//! instead of storing garbage; `tests/fixtures/envelope_v1.json` pins version 1 byte for byte.
//!
//! An [`Envelope`] is the whole message body; it holds one [`RequestPart`] per request whose events
//! it carries. Version 1 carries the events of one request. Version 2 carries several requests'
//! events, each part with its own request id and receive time: the gateway writes it only when it
//! coalesced concurrent single-event requests, and writes version 1 otherwise, so consumers that
//! read only version 1 keep working for batch traffic during a rolling upgrade.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::compression::{decompress, DecompressError};
use crate::event::Event;

/// The envelope format this build writes and reads.
pub const ENVELOPE_VERSION: u32 = 1;

/// AMQP `content_type` of an encoded envelope.
pub const CONTENT_TYPE: &str = "application/vnd.warren.envelope.v1+json";

/// The format of a message that carries coalesced requests.
pub const COALESCED_VERSION: u32 = 2;

/// AMQP `content_type` of a coalesced message.
pub const COALESCED_CONTENT_TYPE: &str = "application/vnd.warren.envelope.v2+json";

/// AMQP header carrying the gateway's request id, so logs can follow one request end to end.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// One request's events inside an envelope, with the id and receive time the gateway gave that
/// request. Redeliveries carry the original `received_at`, so storage keys stay stable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestPart {
    /// The request id the gateway assigned or received from nginx.
    pub request_id: String,
    /// When the gateway accepted the request.
    pub received_at: DateTime<Utc>,
    /// The events, in request order.
    pub events: Vec<Event>,
}

/// Why bytes taken off the queue are not an envelope: permanent, so the message is dead-lettered.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Not JSON, not the envelope's shape, or an event in it is not a valid CloudEvent.
    #[error("malformed envelope: {0}")]
    Malformed(#[from] serde_json::Error),
    /// Written by a newer (or older) gateway than this consumer understands.
    #[error("unsupported envelope version {0}; this build reads versions {ENVELOPE_VERSION} and {COALESCED_VERSION}")]
    UnsupportedVersion(u32),
    /// An envelope must carry at least one event.
    #[error("the envelope carries no events")]
    Empty,
    /// The fields present do not match the version (e.g. `parts` in a version 1 envelope).
    #[error("malformed envelope: {0}")]
    Shape(&'static str),
    /// A reader that wants one request's events got a coalesced (version 2) envelope.
    #[error("expected a version {ENVELOPE_VERSION} envelope, got version {0}")]
    NotSingle(u32),
    /// The message's `content_encoding` is unknown, or its body does not decompress.
    #[error("{0}")]
    Encoding(#[from] DecompressError),
}

impl RequestPart {
    /// One request's events.
    pub fn new(request_id: String, received_at: DateTime<Utc>, events: Vec<Event>) -> Self {
        Self {
            request_id,
            received_at,
            events,
        }
    }
}

/// The body of one AMQP message: one part per request whose events it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The format it was read in or will be written in: 1 for one part, 2 for more.
    pub version: u32,
    /// Each request's events, with the request's id and receive time.
    pub parts: Vec<RequestPart>,
}

/// What goes on the wire; one struct for both versions so a body is parsed once.
#[derive(Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    bound(serialize = "E: Serialize", deserialize = "E: Deserialize<'de>")
)]
struct Wire<E> {
    v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    received_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    events: Option<Vec<Event>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parts: Option<Vec<E>>,
}

/// One request inside a version 2 message.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Part {
    request_id: String,
    received_at: DateTime<Utc>,
    events: Vec<Event>,
}

/// Version 1 as written: one request's fields at the top level, in the golden fixture's order.
#[derive(Serialize)]
struct SingleRef<'a> {
    v: u32,
    request_id: &'a str,
    received_at: DateTime<Utc>,
    events: &'a [Event],
}

/// Borrowed form of [`Part`], so encoding does not clone events.
#[derive(Serialize)]
struct PartRef<'a> {
    request_id: &'a str,
    received_at: DateTime<Utc>,
    events: &'a [Event],
}

impl Envelope {
    /// An envelope for `parts`: version 1 when there is one, version 2 when there are more.
    pub fn new(parts: Vec<RequestPart>) -> Self {
        let version = if parts.len() == 1 {
            ENVELOPE_VERSION
        } else {
            COALESCED_VERSION
        };
        Self { version, parts }
    }

    /// An envelope for one request's events (always version 1).
    pub fn single(request_id: String, received_at: DateTime<Utc>, events: Vec<Event>) -> Self {
        Self::new(vec![RequestPart::new(request_id, received_at, events)])
    }

    /// The AMQP `content_type` for this envelope's version.
    pub fn content_type(&self) -> &'static str {
        if self.version == COALESCED_VERSION {
            COALESCED_CONTENT_TYPE
        } else {
            CONTENT_TYPE
        }
    }

    /// The message body.
    pub fn encode(&self) -> Vec<u8> {
        match (self.version, self.parts.as_slice()) {
            (ENVELOPE_VERSION, [only]) => {
                let wire = SingleRef {
                    v: ENVELOPE_VERSION,
                    request_id: &only.request_id,
                    received_at: only.received_at,
                    events: &only.events,
                };
                // Serializing owned strings, numbers and JSON values into memory cannot fail.
                serde_json::to_vec(&wire).unwrap_or_default()
            }
            _ => {
                let wire: Wire<PartRef<'_>> = Wire {
                    v: COALESCED_VERSION,
                    request_id: None,
                    received_at: None,
                    events: None,
                    parts: Some(
                        self.parts
                            .iter()
                            .map(|part| PartRef {
                                request_id: &part.request_id,
                                received_at: part.received_at,
                                events: &part.events,
                            })
                            .collect(),
                    ),
                };
                // Serializing owned strings, numbers and JSON values into memory cannot fail.
                serde_json::to_vec(&wire).unwrap_or_default()
            }
        }
    }

    /// Reads a message as it came off the queue: its body and AMQP `content_encoding`
    /// (compressed or plain, [`crate::compression`]).
    pub fn decode_message(
        body: &[u8],
        content_encoding: Option<&str>,
    ) -> Result<Envelope, EnvelopeError> {
        Envelope::decode(&decompress(body, content_encoding)?)
    }

    /// Reads a plain body of either version, checking the version's shape and every event.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        #[derive(Deserialize)]
        struct VersionOnly {
            v: u32,
        }
        let wire = match serde_json::from_slice::<Wire<Part>>(bytes) {
            Ok(wire) => wire,
            Err(error) => {
                return Err(match serde_json::from_slice::<VersionOnly>(bytes) {
                    Ok(VersionOnly { v }) if v != ENVELOPE_VERSION && v != COALESCED_VERSION => {
                        EnvelopeError::UnsupportedVersion(v)
                    }
                    _ => EnvelopeError::Malformed(error),
                })
            }
        };
        let version = wire.v;
        let parts = match wire {
            Wire {
                v: ENVELOPE_VERSION,
                request_id: Some(request_id),
                received_at: Some(received_at),
                events: Some(events),
                parts: None,
            } => vec![RequestPart::new(request_id, received_at, events)],
            Wire {
                v: ENVELOPE_VERSION,
                ..
            } => {
                return Err(EnvelopeError::Shape(
                    "version 1 needs request_id, received_at and events, and no parts",
                ))
            }
            Wire {
                v: COALESCED_VERSION,
                request_id: None,
                received_at: None,
                events: None,
                parts: Some(parts),
            } => parts
                .into_iter()
                .map(|part| RequestPart::new(part.request_id, part.received_at, part.events))
                .collect(),
            Wire {
                v: COALESCED_VERSION,
                ..
            } => {
                return Err(EnvelopeError::Shape(
                    "version 2 needs parts, and no top-level request_id, received_at or events",
                ))
            }
            Wire { v, .. } => return Err(EnvelopeError::UnsupportedVersion(v)),
        };
        if parts.is_empty() || parts.iter().any(|part| part.events.is_empty()) {
            return Err(EnvelopeError::Empty);
        }
        Ok(Envelope { version, parts })
    }

    /// Reads an envelope that must carry exactly one request's events (version 1): what tools
    /// and tests that published one request expect back.
    pub fn decode_single(bytes: &[u8]) -> Result<RequestPart, EnvelopeError> {
        let envelope = Envelope::decode(bytes)?;
        match (envelope.version, envelope.parts.len()) {
            (ENVELOPE_VERSION, 1) => envelope
                .parts
                .into_iter()
                .next()
                .ok_or(EnvelopeError::Empty),
            (version, _) => Err(EnvelopeError::NotSingle(version)),
        }
    }

    /// Events in all parts.
    pub fn event_count(&self) -> usize {
        self.parts.iter().map(|part| part.events.len()).sum()
    }
}
