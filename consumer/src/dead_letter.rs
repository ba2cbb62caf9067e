//! Dead-lettering with a reason an operator can read.
//!
//! RabbitMQ's own dead-lettering (reject without requeue) records only "rejected". The consumer
//! instead publishes the message to the dead-letter exchange itself, with `x-warren-reason`, waits
//! for the broker's confirm, and only then acknowledges the original: at-least-once, so a crash in
//! between leaves a copy in both places, never in neither. When that publish fails, the message is
//! rejected and the broker dead-letters it (reason "rejected").

use lapin::options::{
    BasicAckOptions, BasicPublishOptions, BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Acker, BasicProperties, Channel, Confirmation, Connection};
use shared_types::topology::Topology;

/// Header holding why Warren dead-lettered a message.
pub const REASON_HEADER: &str = "x-warren-reason";
/// Header holding the routing key the message was first published with.
pub const ROUTING_KEY_HEADER: &str = "x-warren-routing-key";
/// Longest reason stored in a header.
const MAX_REASON_BYTES: usize = 1024;

/// A confirm-mode channel to the dead-letter exchange.
pub struct DeadLetters {
    channel: Channel,
    exchange: String,
}

/// The dead-letter publish was not confirmed.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The channel or connection failed.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker refused the message.
    #[error("the broker did not confirm the dead letter")]
    NotConfirmed,
}

impl DeadLetters {
    /// Opens the channel on the consumer's connection.
    pub async fn open(connection: &Connection, topology: &Topology) -> Result<Self, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            channel,
            exchange: topology.dead_letter_exchange(),
        })
    }

    /// Publishes `body` to the dead-letter exchange with `reason`, and waits for the confirm.
    pub async fn publish(
        &self,
        routing_key: &str,
        body: &[u8],
        original: &BasicProperties,
        reason: &str,
    ) -> Result<(), DeadLetterError> {
        let mut headers = original.headers().clone().unwrap_or_default();
        headers.insert(
            REASON_HEADER.into(),
            AMQPValue::LongString(LongString::from(truncate(reason, MAX_REASON_BYTES))),
        );
        headers.insert(
            ROUTING_KEY_HEADER.into(),
            AMQPValue::LongString(LongString::from(routing_key)),
        );
        let properties = original.clone().with_delivery_mode(2).with_headers(headers);
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            _ => Err(DeadLetterError::NotConfirmed),
        }
    }

    /// Dead-letters a whole delivery: publish with the reason, then ack; reject if that fails.
    pub async fn settle(
        &self,
        acker: &Acker,
        routing_key: &str,
        body: &[u8],
        original: &BasicProperties,
        reason: &str,
    ) -> Result<(), lapin::Error> {
        match self.publish(routing_key, body, original, reason).await {
            Ok(()) => {
                acker.ack(BasicAckOptions::default()).await?;
                metrics::counter!("warren_consumer_acks_total").increment(1);
            }
            Err(error) => {
                tracing::warn!(%error, "dead-letter publish failed; rejecting to the broker's dead-lettering");
                acker.reject(BasicRejectOptions { requeue: false }).await?;
                metrics::counter!("warren_consumer_rejects_total").increment(1);
            }
        }
        metrics::counter!("warren_consumer_dead_lettered_total", "reason" => "undecodable")
            .increment(1);
        Ok(())
    }
}

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

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}
