//! Dead letters: events Warren will not store, kept with the reason, and the tools to look at
//! them and send them back.
//!
//! [`publish`] is the consumer's side (publish with a reason, confirmed, then ack); [`admin`] is
//! the operator's (`consumer dlq list` and `consumer dlq replay`). Both read the headers defined
//! here.

pub mod admin;
pub mod publish;

use lapin::types::{AMQPValue, FieldTable};

pub use publish::{DeadLetterError, DeadLetters};

/// Header holding why Warren dead-lettered a message.
pub const REASON_HEADER: &str = "x-warren-reason";
/// Header holding the routing key the message was first published with.
pub const ROUTING_KEY_HEADER: &str = "x-warren-routing-key";

/// The reason Warren recorded, or RabbitMQ's own (`x-death`), or "unknown".
pub fn reason_of(headers: Option<&FieldTable>) -> String {
    let Some(headers) = headers else {
        return "unknown".into();
    };
    if let Some(AMQPValue::LongString(reason)) = headers.inner().get(REASON_HEADER) {
        return reason.to_string();
    }
    if let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") {
        if let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().first() {
            if let Some(AMQPValue::LongString(reason)) = death.inner().get("reason") {
                return format!("broker: {reason}");
            }
        }
    }
    "unknown".into()
}

/// The routing key a dead-lettered message was first published with.
pub fn original_routing_key(headers: Option<&FieldTable>, fallback: &str) -> String {
    match headers.and_then(|h| h.inner().get(ROUTING_KEY_HEADER)) {
        Some(AMQPValue::LongString(key)) => key.to_string(),
        _ => fallback.to_owned(),
    }
}
