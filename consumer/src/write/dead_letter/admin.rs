//! `consumer dlq list` and `consumer dlq replay`: look at dead letters, and send them back.

use std::collections::BTreeMap;

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Confirmation, Connection};
use service_runtime::topology::Topology;

use super::{original_routing_key, reason_of, REASON_HEADER};

/// Bytes of each body shown by `list`.
const PREVIEW_BYTES: usize = 160;

/// One dead letter as `list` shows it.
#[derive(Debug, Clone)]
pub struct DeadLetterSummary {
    /// Why it was dead-lettered.
    pub reason: String,
    /// The routing key it was first published with.
    pub routing_key: String,
    /// Body size.
    pub bytes: usize,
    /// The first bytes of the body, lossily as text.
    pub preview: String,
}

/// What `list` found.
#[derive(Debug, Clone)]
pub struct DeadLetterReport {
    /// Messages in the dead-letter queue.
    pub total: u32,
    /// Up to `max` of them, oldest first.
    pub shown: Vec<DeadLetterSummary>,
    /// How many of those shown had each reason.
    pub reasons: BTreeMap<String, usize>,
}

/// Messages ready in `queue` now.
async fn message_count(channel: &lapin::Channel, queue: &str) -> Result<u32, lapin::Error> {
    Ok(channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?
        .message_count())
}

/// Peeks at up to `max` dead letters without removing them (they are returned to the queue).
pub async fn list(
    connection: &Connection,
    topology: &Topology,
    max: usize,
) -> Result<DeadLetterReport, lapin::Error> {
    let channel = connection.create_channel().await?;
    let queue = topology.dead_letter_queue();
    let total = message_count(&channel, &queue).await?;
    let mut shown = Vec::new();
    let mut last_tag = None;
    while shown.len() < max {
        let Some(message) = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await?
        else {
            break;
        };
        let delivery = message.delivery;
        last_tag = Some(delivery.delivery_tag);
        let headers = delivery.properties.headers().as_ref();
        let preview_len = delivery.data.len().min(PREVIEW_BYTES);
        shown.push(DeadLetterSummary {
            reason: reason_of(headers),
            routing_key: original_routing_key(headers, delivery.routing_key.as_str()),
            bytes: delivery.data.len(),
            preview: String::from_utf8_lossy(&delivery.data[..preview_len]).into_owned(),
        });
    }
    if let Some(tag) = last_tag {
        channel
            .basic_nack(
                tag,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            )
            .await?;
    }
    let _ = channel.close(200, "dlq list done".into()).await;
    let mut reasons = BTreeMap::new();
    for letter in &shown {
        *reasons.entry(letter.reason.clone()).or_default() += 1;
    }
    Ok(DeadLetterReport {
        total,
        shown,
        reasons,
    })
}

/// Why a replay stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The broker failed.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// A republish was not confirmed; that message stays in the dead-letter queue.
    #[error("the broker did not confirm a replayed message; {replayed} were replayed before it")]
    NotConfirmed {
        /// Messages replayed before the failure.
        replayed: usize,
    },
}

/// Republishes up to `limit` dead letters to the events exchange (with confirms), removing each
/// from the dead-letter queue only after its republish was confirmed. Only the messages present
/// when it starts are replayed, so one that fails again and returns is not replayed in a loop.
pub async fn replay(
    connection: &Connection,
    topology: &Topology,
    limit: usize,
) -> Result<usize, ReplayError> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let queue = topology.dead_letter_queue();
    let exchange = topology.exchange();
    let present = message_count(&channel, &queue).await?;
    let limit = limit.min(usize::try_from(present).unwrap_or(usize::MAX));
    let mut replayed = 0;
    while replayed < limit {
        let Some(message) = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await?
        else {
            break;
        };
        let delivery = message.delivery;
        let headers = delivery.properties.headers().clone();
        let routing_key = original_routing_key(headers.as_ref(), delivery.routing_key.as_str());
        let mut cleaned = FieldTable::default();
        if let Some(headers) = headers {
            for (key, value) in headers.inner() {
                if key.as_str() != REASON_HEADER && key.as_str() != "x-death" {
                    cleaned.insert(key.clone(), value.clone());
                }
            }
        }
        let properties = delivery.properties.clone().with_headers(cleaned);
        let confirm = channel
            .basic_publish(
                exchange.as_str().into(),
                routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &delivery.data,
                properties,
            )
            .await?
            .await?;
        if !matches!(confirm, Confirmation::Ack(None)) {
            channel
                .basic_nack(
                    delivery.delivery_tag,
                    BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    },
                )
                .await?;
            return Err(ReplayError::NotConfirmed { replayed });
        }
        channel
            .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
            .await?;
        replayed += 1;
    }
    let _ = channel.close(200, "dlq replay done".into()).await;
    Ok(replayed)
}
