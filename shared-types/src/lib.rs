//! The contract both Warren services share.
//!
//! Everything that crosses a process boundary is defined here once: what a valid CloudEvent is
//! ([`event`]), how validation failures are reported ([`problem`]), the versioned message that goes
//! on the queue ([`envelope`]), and the broker names and arguments ([`topology`]). The gateway and
//! the consumer use only this crate for them, so they cannot drift apart.
#![forbid(unsafe_code)]

pub mod auth;
pub mod backoff;
pub mod config;
pub mod envelope;
pub mod event;
pub mod healthcheck;
pub mod http_json;
pub mod json;
pub mod limits;
pub mod metrics;
pub mod problem;
pub mod rate_limit;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod topology;

pub use envelope::{Envelope, EnvelopeError};
pub use event::{Event, EventData};
pub use limits::Limits;
pub use problem::{ErrorCode, Problem};
