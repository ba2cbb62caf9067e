//! The wire contract both Warren services share.
//!
//! Everything that crosses a process boundary is defined here once: what a valid CloudEvent is
//! ([`event`]), the strict JSON reader it is parsed with ([`json`]), the bounds on it ([`limits`]),
//! how validation failures are reported ([`problem`]), the versioned envelope that goes on the
//! queue ([`envelope`]) and how its bytes may be compressed there ([`compression`]), and what a
//! per-type JSON Schema for `data` is ([`data_schema`]). The gateway and the consumer use only this
//! crate for them, so they cannot drift apart. What the services run on (HTTP server, broker
//! topology, metrics) lives in `service-runtime`, so this crate depends on serde, chrono, base64,
//! URI parsing, the JSON Schema validator and LZ4 only.
#![forbid(unsafe_code)]

pub mod compression;
pub mod data_schema;
pub mod envelope;
pub mod event;
pub mod json;
pub mod limits;
pub mod problem;

pub use envelope::{Envelope, EnvelopeError, RequestPart};
pub use event::{Event, EventData};
pub use limits::Limits;
pub use problem::{ErrorCode, Problem};
