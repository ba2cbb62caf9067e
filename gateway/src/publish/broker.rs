//! [`BrokerPublisher`]: publishes a request's messages and fails over inside the request.
//!
//! One attempt publishes every message not yet confirmed, pipelined on one channel, and waits
//! for their confirms up to the attempt bound (`WARREN_CONFIRM_ATTEMPT_MS`). What the attempt
//! leaves unconfirmed is republished by the next one: after a refusal (nack) on a fresh channel,
//! after a lost connection on the supervisor's next one, after silence on a connection to
//! another node. The request answers 202 once every message is confirmed and 503 only when its
//! deadline (`WARREN_CONFIRM_TIMEOUT_MS`) passes first. A message confirmed by an earlier
//! attempt is not sent again; one published twice is stored once (storage dedupes on
//! `(source, id)`). Memory stays bounded: a request holds its in-flight permits throughout.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::PublisherConfirm;
use lapin::{BasicProperties, Channel, Confirmation};
use shared_types::envelope::REQUEST_ID_HEADER;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::connection::{supervise, Live, Shared};
use super::{BrokerSettings, EventPublisher, OutgoingMessage, PublishError};

/// RabbitMQ's sender-selected distribution header: further routing keys for one message. `CC`,
/// not `BCC`, so that the keys stay on the message and a dead letter replayed to the exchange is
/// routed as the original was.
const CC_HEADER: &str = "CC";

/// The RabbitMQ publisher; cheap to clone.
#[derive(Clone)]
pub struct BrokerPublisher {
    shared: Arc<Shared>,
    in_flight: Arc<Semaphore>,
}

impl BrokerPublisher {
    /// Starts the connection supervisor; it connects in the background and keeps reconnecting
    /// until `cancel` fires, then closes the connection. Await the handle to know it is closed.
    pub fn start(
        settings: BrokerSettings,
        cancel: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let in_flight = Arc::new(Semaphore::new(settings.max_in_flight));
        let shared = Arc::new(Shared::new(settings));
        let supervisor = tokio::spawn(supervise(Arc::clone(&shared), cancel));
        (Self { shared, in_flight }, supervisor)
    }

    /// Waits until the first connection is up, or `timeout` passes.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.is_ready() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// A connection to publish on: round-robin over the nodes' usable, unblocked connections,
    /// skipping the links in `tried` (this request's failed attempts) while others remain, and
    /// preferring warm ones once an attempt failed. Waits until `deadline` while a link is
    /// reconnecting; `Err` means answer with that error now.
    async fn pick(
        &self,
        tried: &mut Vec<usize>,
        deadline: Instant,
    ) -> Result<(usize, Arc<Live>), PublishError> {
        let shared = &self.shared;
        loop {
            let open: Vec<(usize, Arc<Live>)> = (0..shared.links.len())
                .filter_map(|index| shared.live(index).map(|live| (index, live)))
                .filter(|(_, live)| live.usable())
                .collect();
            if !open.is_empty()
                && open
                    .iter()
                    .all(|(_, live)| live.blocked.load(Ordering::Acquire))
            {
                return Err(PublishError::Blocked);
            }
            let mut candidates: Vec<&(usize, Arc<Live>)> = open
                .iter()
                .filter(|(index, live)| {
                    !tried.contains(index) && !live.blocked.load(Ordering::Acquire)
                })
                .collect();
            if !tried.is_empty() && candidates.iter().any(|(_, live)| live.is_warm()) {
                candidates.retain(|(_, live)| live.is_warm());
            }
            if !candidates.is_empty() {
                let turn = shared.next_link.fetch_add(1, Ordering::Relaxed) % candidates.len();
                if let Some((index, live)) = candidates.get(turn) {
                    return Ok((*index, Arc::clone(live)));
                }
            }
            if !tried.is_empty() && !open.is_empty() {
                // Every open connection failed this request once: go round again.
                tried.clear();
                continue;
            }
            if !shared.reconnecting() || Instant::now() >= deadline {
                return Err(PublishError::Unavailable);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl EventPublisher for BrokerPublisher {
    async fn publish(&self, messages: Vec<OutgoingMessage>) -> Result<(), PublishError> {
        let settings = &self.shared.settings;
        let count = u32::try_from(messages.len()).map_err(|_| PublishError::Overloaded)?;
        let _permit = Arc::clone(&self.in_flight)
            .try_acquire_many_owned(count)
            .map_err(|_| PublishError::Overloaded)?;
        let _in_flight = InFlight::new(f64::from(count));
        let deadline = Instant::now() + settings.confirm_timeout;
        let timestamp = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or_default();
        // Encoded once: a republish after a failover sends the same bytes.
        let messages: Vec<OutgoingMessage> = messages
            .into_iter()
            .map(|message| message.encoded(settings.compression))
            .collect();

        let mut unconfirmed: Vec<&OutgoingMessage> = messages.iter().collect();
        let mut last_error = PublishError::Unavailable;
        let mut attempts: u32 = 0;
        let mut tried = Vec::new();
        loop {
            let (link, live) = match self.pick(&mut tried, deadline).await {
                Ok(picked) => picked,
                Err(PublishError::Unavailable) => return Err(give_up(attempts, last_error)),
                Err(error) => return Err(error),
            };
            let Some((slot, channel)) = live.next_channel() else {
                return Err(PublishError::Unavailable);
            };
            attempts = attempts.saturating_add(1);
            if attempts > 1 {
                metrics::counter!("warren_gateway_publish_retries_total").increment(1);
            }
            let attempt_deadline = deadline.min(Instant::now() + settings.confirm_attempt);
            let outcome = attempt(
                settings,
                &channel,
                &unconfirmed,
                timestamp,
                attempt_deadline,
            )
            .await;
            if outcome.iter().any(Result::is_ok) {
                live.mark_registered(slot, &channel);
            }
            let Some(error) = worst(&outcome) else {
                return Ok(());
            };
            let mut results = outcome.iter();
            unconfirmed.retain(|_| matches!(results.next(), Some(Err(_))));
            last_error = error;
            tried.push(link);
            match error {
                // Not a node's failure: no queue takes the message anywhere.
                PublishError::Unroutable => return Err(error),
                PublishError::ConfirmTimeout => live.check_node(settings.confirm_attempt),
                PublishError::Nacked | PublishError::ConnectionLost if live.usable() => {
                    live.replace_channel(slot, &channel).await;
                }
                _ => {}
            }
            let pause = retry_pause(attempts);
            if Instant::now() + pause >= deadline {
                return Err(error);
            }
            tracing::debug!(%error, attempts, left = unconfirmed.len(), node = %live.node.url, "republishing");
            tokio::time::sleep(pause).await;
        }
    }

    fn is_ready(&self) -> bool {
        (0..self.shared.links.len())
            .filter_map(|index| self.shared.live(index))
            .any(|live| live.usable() && !live.blocked.load(Ordering::Acquire))
    }
}

/// The error of an exhausted request: what the last attempt met, or, when no attempt could
/// start, that the broker is unreachable.
fn give_up(attempts: u32, last_error: PublishError) -> PublishError {
    if attempts == 0 {
        PublishError::Unavailable
    } else {
        last_error
    }
}

/// The failure that decides what the next attempt does, if any message failed: a message no
/// queue takes ends the request; silence means leaving the node; a refusal or a dropped
/// channel means a fresh channel.
fn worst(outcome: &[Result<(), PublishError>]) -> Option<PublishError> {
    let rank = |error: &PublishError| match error {
        PublishError::Unroutable => 0,
        PublishError::ConfirmTimeout => 1,
        PublishError::ConnectionLost => 2,
        PublishError::Nacked => 3,
        PublishError::Unavailable | PublishError::Blocked | PublishError::Overloaded => 4,
    };
    outcome
        .iter()
        .filter_map(|result| result.err())
        .min_by_key(rank)
}

/// The pause before a republish: short at first (a new quorum-queue leader is usually elected
/// within a few hundred milliseconds), doubling to at most 400 ms.
fn retry_pause(attempts: u32) -> Duration {
    let exponent = attempts.saturating_sub(1).min(4);
    Duration::from_millis(25u64 << exponent)
}

/// Publishes `messages` pipelined on `channel` and waits for each confirm until `deadline`;
/// one result per message, in order.
async fn attempt(
    settings: &BrokerSettings,
    channel: &Channel,
    messages: &[&OutgoingMessage],
    timestamp: u64,
    deadline: Instant,
) -> Vec<Result<(), PublishError>> {
    let exchange = settings.topology.exchange();
    let mut confirms: Vec<Result<PublisherConfirm, PublishError>> =
        Vec::with_capacity(messages.len());
    for message in messages {
        let mut headers = FieldTable::default();
        headers.insert(
            REQUEST_ID_HEADER.into(),
            AMQPValue::LongString(LongString::from(message.request_id.as_str())),
        );
        if !message.cc.is_empty() {
            let keys = message
                .cc
                .iter()
                .map(|key| AMQPValue::LongString(LongString::from(key.as_str())))
                .collect::<Vec<_>>();
            headers.insert(CC_HEADER.into(), AMQPValue::FieldArray(keys.into()));
        }
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(message.content_type.into())
            .with_message_id(message.message_id.as_str().into())
            .with_timestamp(timestamp)
            .with_app_id("warren-gateway".into())
            .with_headers(headers);
        if let Some(encoding) = message.content_encoding {
            properties = properties.with_content_encoding(encoding.into());
        }
        let sent = tokio::time::timeout_at(
            deadline,
            channel.basic_publish(
                exchange.as_str().into(),
                message.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &message.body,
                properties,
            ),
        )
        .await;
        confirms.push(match sent {
            Ok(Ok(confirm)) => Ok(confirm),
            Ok(Err(error)) => {
                tracing::warn!(%error, "publish failed");
                Err(PublishError::ConnectionLost)
            }
            Err(_) => Err(PublishError::ConfirmTimeout),
        });
    }
    let mut results = Vec::with_capacity(confirms.len());
    for confirm in confirms {
        let result = match confirm {
            Err(error) => Err(error),
            Ok(confirm) => match tokio::time::timeout_at(deadline, confirm).await {
                Ok(Ok(Confirmation::Ack(None))) => Ok(()),
                Ok(Ok(Confirmation::Ack(Some(_)))) => Err(PublishError::Unroutable),
                Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
                Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::ConnectionLost),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "confirm failed");
                    Err(PublishError::ConnectionLost)
                }
                Err(_) => Err(PublishError::ConfirmTimeout),
            },
        };
        results.push(result);
    }
    results
}

/// Counts messages awaiting confirms in `warren_gateway_publishes_in_flight` while alive.
struct InFlight(f64);

impl InFlight {
    fn new(count: f64) -> Self {
        metrics::gauge!("warren_gateway_publishes_in_flight").increment(count);
        Self(count)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("warren_gateway_publishes_in_flight").decrement(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_failure_decides_the_next_attempt() {
        use PublishError::*;
        assert_eq!(worst(&[Ok(()), Ok(())]), None);
        assert_eq!(worst(&[Ok(()), Err(Nacked)]), Some(Nacked));
        assert_eq!(
            worst(&[Err(Nacked), Err(ConfirmTimeout)]),
            Some(ConfirmTimeout)
        );
        assert_eq!(
            worst(&[Err(ConnectionLost), Err(Nacked)]),
            Some(ConnectionLost)
        );
        assert_eq!(
            worst(&[Err(ConfirmTimeout), Err(Unroutable)]),
            Some(Unroutable)
        );
    }

    #[test]
    fn retry_pauses_grow_and_stay_short() {
        assert_eq!(retry_pause(1), Duration::from_millis(25));
        assert_eq!(retry_pause(2), Duration::from_millis(50));
        assert_eq!(retry_pause(5), Duration::from_millis(400));
        assert_eq!(retry_pause(50), Duration::from_millis(400));
    }

    #[test]
    fn a_request_that_never_reached_a_connection_says_unavailable() {
        assert_eq!(
            give_up(0, PublishError::ConfirmTimeout),
            PublishError::Unavailable
        );
        assert_eq!(give_up(3, PublishError::Nacked), PublishError::Nacked);
    }
}
