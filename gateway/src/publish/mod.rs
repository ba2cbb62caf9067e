//! The broker side of the gateway: publishing envelopes with confirms.
//!
//! [`EventPublisher`] is the seam between HTTP and the broker. [`BrokerPublisher`] is the real one:
//! its own connection (a blocked publisher must never stall consumers), a pool of confirm-mode
//! channels shared by all requests, a bound on publishes in flight, and failover inside the
//! request: what a node refuses, drops or leaves unconfirmed is republished on a fresh channel or
//! on a connection to another node until the request's deadline (storage deduplicates on
//! `(source, id)`, so a message published twice is stored once). [`MemoryPublisher`] is the
//! double that lets HTTP tests run without RabbitMQ.

mod broker;
mod connection;
mod memory;

use std::future::Future;
use std::time::Duration;

use service_runtime::config::SecretUrl;
use service_runtime::topology::{QueueLimits, Topology};
use shared_types::compression::Compression;

/// One AMQP message to publish: an encoded envelope and where it goes.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingMessage {
    /// The type of the envelope's first event; the topic routing key.
    pub routing_key: String,
    /// The other event types the envelope carries, sent as RabbitMQ's `CC` header so that the
    /// topic exchange routes the one message as if published with each of them: a queue bound
    /// to any of its types gets it once. Empty when every event has the routing key's type.
    pub cc: Vec<String>,
    /// The encoded envelope.
    pub body: Vec<u8>,
    /// The envelope version's media type.
    pub content_type: &'static str,
    /// Unique per message, for broker-side tracing.
    pub message_id: String,
    /// The request the events came in with.
    pub request_id: String,
    /// The body's AMQP `content_encoding`; `None` while it is plain JSON.
    pub content_encoding: Option<&'static str>,
}

impl OutgoingMessage {
    /// A plain message of `body`, routed by each of `types` (in order of first appearance, at
    /// least one): the first is its routing key, the others go in `CC`.
    pub fn routed_by(
        mut types: Vec<String>,
        body: Vec<u8>,
        content_type: &'static str,
        request_id: String,
    ) -> Self {
        let routing_key = if types.is_empty() {
            String::new()
        } else {
            types.remove(0)
        };
        Self {
            routing_key,
            cc: types,
            body,
            content_type,
            message_id: uuid::Uuid::now_v7().to_string(),
            request_id,
            content_encoding: None,
        }
    }

    /// This message with its body as `compression` writes it (a body already encoded is kept).
    pub fn encoded(self, compression: Compression) -> Self {
        if self.content_encoding.is_some() {
            return self;
        }
        let encoded = compression.encode(self.body);
        Self {
            body: encoded.body,
            content_encoding: encoded.content_encoding,
            ..self
        }
    }
}

/// Why a publish did not complete; every variant is retryable by the client (503).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// No open broker connection right now.
    #[error("the broker is unreachable")]
    Unavailable,
    /// The broker raised a resource alarm and blocked publishers.
    #[error("the broker is blocking publishers (resource alarm)")]
    Blocked,
    /// Too many publishes are already waiting for confirms.
    #[error("too many publishes in flight")]
    Overloaded,
    /// The broker did not confirm within the configured time.
    #[error("the broker did not confirm in time")]
    ConfirmTimeout,
    /// The broker refused the message (e.g. the store queue is full).
    #[error("the broker refused the message")]
    Nacked,
    /// No queue is bound to take the message.
    #[error("the message could not be routed to the store queue")]
    Unroutable,
    /// The channel or connection failed during the publish.
    #[error("the broker connection failed during the publish")]
    ConnectionLost,
}

pub use broker::BrokerPublisher;

/// The counters that show failovers inside requests (republished attempts, refused channels
/// replaced, silent nodes left), exported from the start so a dashboard shows 0, not "no data".
pub const FAILOVER_COUNTERS: [&str; 3] = [
    "warren_gateway_publish_retries_total",
    "warren_gateway_channel_replacements_total",
    "warren_gateway_broker_failovers_total",
];
pub use memory::MemoryPublisher;

/// Publishes groups of events durably: `Ok` only when the broker confirmed every message.
pub trait EventPublisher: Clone + Send + Sync + 'static {
    /// Publishes all `messages`, pipelined, and waits for every confirm.
    fn publish(
        &self,
        messages: Vec<OutgoingMessage>,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;

    /// Whether a publish could succeed now (connection open, channels ready, not blocked).
    fn is_ready(&self) -> bool;
}

/// How the gateway talks to the broker.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// AMQP URL (may hold a password: never logged unredacted).
    pub url: SecretUrl,
    /// Names of the exchange and queues.
    pub topology: Topology,
    /// Store-queue arguments, applied only when the queue is first created.
    pub queue_limits: QueueLimits,
    /// Confirm-mode channels shared by all requests.
    pub channels: usize,
    /// The request's deadline: longest wait for every confirm, failovers included, before 503.
    pub confirm_timeout: Duration,
    /// Longest wait for one attempt's confirms before republishing elsewhere; also how long a
    /// node gets to answer a connection. A paused node is left after this, not after heartbeats.
    pub confirm_attempt: Duration,
    /// Most messages published but not yet confirmed, across all requests.
    pub max_in_flight: usize,
    /// Longest pause between reconnect attempts.
    pub max_backoff: Duration,
    /// How envelopes are written on the queue: compressed, fewer bytes for the broker's log.
    pub compression: Compression,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use shared_types::compression::{decompress, LZ4_ENCODING};

    use super::*;

    fn message(body: Vec<u8>) -> OutgoingMessage {
        OutgoingMessage {
            routing_key: "page.viewed".into(),
            cc: Vec::new(),
            body,
            content_type: shared_types::envelope::CONTENT_TYPE,
            message_id: "m-1".into(),
            request_id: "r-1".into(),
            content_encoding: None,
        }
    }

    #[test]
    fn a_message_is_compressed_once_and_keeps_everything_else() {
        let body = br#"{"specversion":"1.0","id":"e","source":"/s","type":"t"}"#.repeat(40);
        let once = message(body.clone()).encoded(Compression::Lz4);
        assert_eq!(once.content_encoding, Some(LZ4_ENCODING));
        assert_eq!(once.routing_key, "page.viewed");
        assert_eq!(once.message_id, "m-1");
        // A republish after a failover must not compress the compressed bytes again.
        let twice = once.clone().encoded(Compression::Lz4);
        assert_eq!(twice, once);
        let plain = decompress(&twice.body, twice.content_encoding).unwrap();
        assert_eq!(plain.as_ref(), body.as_slice());
        assert_eq!(message(body.clone()).encoded(Compression::Off).body, body);
    }
}
