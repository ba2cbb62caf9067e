//! The message that travels on the queue: events as accepted, plus what the gateway knows.
//!
//! The envelope is versioned (`"v"`) so a consumer can refuse a format it does not understand
//! instead of storing garbage; `tests/fixtures/envelope_v1.json` pins version 1 byte for byte.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::Event;

/// The envelope format this build writes and reads.
pub const ENVELOPE_VERSION: u32 = 1;

/// AMQP `content_type` of an encoded envelope.
pub const CONTENT_TYPE: &str = "application/vnd.warren.envelope.v1+json";

/// AMQP header carrying the gateway's request id, so logs can follow one request end to end.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// One AMQP message: one or more events of one request (or of coalesced requests) with one type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Format version; see [`ENVELOPE_VERSION`].
    pub v: u32,
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
    #[error("unsupported envelope version {0}; this build reads version {ENVELOPE_VERSION}")]
    UnsupportedVersion(u32),
    /// An envelope must carry at least one event.
    #[error("the envelope carries no events")]
    Empty,
}

impl Envelope {
    /// A current-version envelope.
    pub fn new(request_id: String, received_at: DateTime<Utc>, events: Vec<Event>) -> Self {
        Self {
            v: ENVELOPE_VERSION,
            request_id,
            received_at,
            events,
        }
    }

    /// The message body.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing owned strings, numbers and JSON values into memory cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a message body, checking the version and every event.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        #[derive(Deserialize)]
        struct VersionOnly {
            v: u32,
        }
        let envelope = match serde_json::from_slice::<Envelope>(bytes) {
            Ok(envelope) => envelope,
            Err(error) => {
                return Err(match serde_json::from_slice::<VersionOnly>(bytes) {
                    Ok(VersionOnly { v }) if v != ENVELOPE_VERSION => {
                        EnvelopeError::UnsupportedVersion(v)
                    }
                    _ => EnvelopeError::Malformed(error),
                })
            }
        };
        if envelope.v != ENVELOPE_VERSION {
            return Err(EnvelopeError::UnsupportedVersion(envelope.v));
        }
        if envelope.events.is_empty() {
            return Err(EnvelopeError::Empty);
        }
        Ok(envelope)
    }
}
