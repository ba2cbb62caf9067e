//! Publishing dead letters with a reason an operator can read.
//!
//! RabbitMQ's own dead-lettering (reject without requeue) records only "rejected". The consumer
//! instead publishes the message to the dead-letter exchange itself, with `x-warren-reason`, waits
//! for the broker's confirm, and only then acknowledges the original: at-least-once, so a crash in
//! between leaves a copy in both places, never in neither. When that publish fails, the message is
//! rejected and the broker dead-letters it (reason "rejected").
//!
//! Dead letters go out on a connection of their own, not the consuming one: a dead-letter publish
//! that the broker blocks (resource alarm) or that fails its channel must not stall or close the
//! channel deliveries arrive on.

use lapin::options::{
    BasicAckOptions, BasicPublishOptions, BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, LongString};
use lapin::{Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use service_runtime::config::SecretUrl;
use service_runtime::topology::Topology;

use super::{REASON_HEADER, ROUTING_KEY_HEADER};

/// Longest reason stored in a header.
const MAX_REASON_BYTES: usize = 1024;

/// A confirm-mode channel to the dead-letter exchange, on its own connection.
pub struct DeadLetters {
    connection: Connection,
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
    /// Opens a connection of its own to `amqp_url` and a confirm-mode channel on it.
    pub async fn open(amqp_url: &SecretUrl, topology: &Topology) -> Result<Self, lapin::Error> {
        let properties = ConnectionProperties::default()
            .with_connection_name(LongString::from("warren-consumer-dead-letters"));
        let (connection, _) = service_runtime::amqp::connect(amqp_url, properties).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            connection,
            channel,
            exchange: topology.dead_letter_exchange(),
        })
    }

    /// Closes the dead-letter connection (on shutdown or when the consuming session ends).
    pub async fn close(&self) {
        let _ = self
            .connection
            .close(200, "consumer session ended".into())
            .await;
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
        metrics::counter!("warren_consumer_dead_lettered_total", "reason" => UNDECODABLE)
            .increment(1);
        Ok(())
    }
}

/// The `reason` label of events dead-lettered because they cannot be decoded.
pub const UNDECODABLE: &str = "undecodable";

/// Puts `warren_consumer_dead_lettered_total` at zero, so a dashboard's `rate()` of it shows 0
/// before the first dead letter instead of "no data".
pub fn zero_counters() {
    metrics::counter!("warren_consumer_dead_lettered_total", "reason" => UNDECODABLE).increment(0);
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
