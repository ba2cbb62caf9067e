//! Size and shape limits on accepted events.
//!
//! Every bound has a default here; the gateway overrides them from `WARREN_*` variables. They exist
//! so that no client can make the gateway, the broker or the database do unbounded work.

use std::time::Duration;

/// The bounds applied while parsing and validating events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest `id`, `source`, `type` and `subject`, in bytes.
    pub max_attribute_bytes: usize,
    /// Largest single event, serialized as structured JSON, in bytes.
    pub max_event_bytes: usize,
    /// Most events in one batch request.
    pub max_batch_events: usize,
    /// Largest request body, after decompression, in bytes.
    pub max_body_bytes: usize,
    /// Deepest JSON nesting inside one event (the event object itself is depth 1).
    pub max_depth: usize,
    /// How far in the future an event's `time` may be (clock skew allowance).
    pub max_future_skew: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_attribute_bytes: 256,
            max_event_bytes: 64 * 1024,
            max_batch_events: 500,
            max_body_bytes: 1024 * 1024,
            max_depth: 64,
            max_future_skew: Duration::from_secs(24 * 60 * 60),
        }
    }
}
