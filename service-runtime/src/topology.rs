//! Broker names and the idempotent declaration of exchanges and queues.
//!
//! Both services declare the topology at startup, so whichever starts first creates it. Queue
//! arguments can never change once a queue exists, so the store queue's are decided here once:
//! quorum type, a dead-letter exchange with the `at-least-once` strategy (dead-lettering itself
//! cannot lose a message), `reject-publish` overflow (a full queue nacks publishes, and the
//! gateway answers 503, instead of the broker running out of memory), a delivery limit and a
//! maximum length.

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ExchangeKind};

use crate::config::{ConfigError, Settings};

/// The names under one `WARREN_AMQP_PREFIX`; tests use a random prefix each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
    shards: u16,
}

/// Store-queue arguments an operator chooses once, before the queue first exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Deliveries of one message before it is dead-lettered (`x-delivery-limit`).
    pub delivery_limit: u32,
    /// Messages the store queue holds before publishes are refused (`x-max-length`).
    pub max_length: u64,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            delivery_limit: 20,
            max_length: 1_000_000,
        }
    }
}

impl QueueLimits {
    /// `WARREN_QUEUE_DELIVERY_LIMIT` and `WARREN_QUEUE_MAX_LENGTH` over the defaults.
    pub fn from_settings(settings: &Settings<'_>) -> Result<Self, ConfigError> {
        let defaults = QueueLimits::default();
        Ok(QueueLimits {
            delivery_limit: settings.bounded(
                "WARREN_QUEUE_DELIVERY_LIMIT",
                defaults.delivery_limit,
                1..=1000,
            )?,
            max_length: settings.bounded(
                "WARREN_QUEUE_MAX_LENGTH",
                defaults.max_length,
                1..=u64::from(u32::MAX),
            )?,
        })
    }
}

impl Topology {
    /// The names under `WARREN_AMQP_PREFIX` (default `warren`).
    pub fn from_settings(settings: &Settings<'_>) -> Result<Self, ConfigError> {
        let prefix = settings.string("WARREN_AMQP_PREFIX", "warren");
        if prefix.is_empty()
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(ConfigError {
                name: "WARREN_AMQP_PREFIX".into(),
                value: prefix,
                reason: "use letters, digits, '.', '_' and '-' only".into(),
            });
        }
        let shards = settings.bounded("WARREN_STORE_SHARDS", 1u16, 1..=MAX_SHARDS)?;
        Ok(Topology::new(prefix).with_shards(shards))
    }

    /// The names under `prefix`, with one store queue.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            shards: 1,
        }
    }

    /// The same names with the store queue split into `shards` (`WARREN_STORE_SHARDS`).
    pub fn with_shards(mut self, shards: u16) -> Self {
        self.shards = shards.clamp(1, MAX_SHARDS);
        self
    }

    /// How many queues the events are stored from.
    pub fn shards(&self) -> u16 {
        self.shards
    }

    /// The prefix every name starts with (`WARREN_AMQP_PREFIX`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Topic exchange the gateway publishes to, routing key = event type.
    pub fn exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// Quorum queue the consumers store from, bound to every routing key, when there is one
    /// shard; with more, the queue an earlier single-shard deployment left to drain.
    pub fn store_queue(&self) -> String {
        format!("{}.events.store", self.prefix)
    }

    /// The queues the consumers store from: the store queue, or one per shard
    /// (`{prefix}.events.store.1` ...), each a quorum queue with its leader placed by the broker
    /// to balance leaders over the nodes.
    pub fn store_queues(&self) -> Vec<String> {
        if self.shards == 1 {
            return vec![self.store_queue()];
        }
        (1..=self.shards)
            .map(|shard| format!("{}.events.store.{shard}", self.prefix))
            .collect()
    }

    /// Consistent-hash exchange between the topic exchange and the shards (several shards
    /// only): it spreads messages over the shards by their `message_id`.
    pub fn shard_exchange(&self) -> String {
        format!("{}.events.shards", self.prefix)
    }

    /// Exchange that receives what the store queue dead-letters.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.events.dlx", self.prefix)
    }

    /// Queue that keeps dead-lettered messages for inspection and replay.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.events.dead", self.prefix)
    }

    /// Declares the events exchange alone, idempotently: what a subscription's queue binds to.
    pub async fn declare_exchange(&self, connection: &Connection) -> Result<(), lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .exchange_declare(
                self.exchange().as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel.close(200, "exchange declared".into()).await
    }

    /// Declares everything, idempotently. When the store queue already exists with other
    /// arguments, the existing queue is kept and a warning names the difference: RabbitMQ would
    /// otherwise refuse every start after an operator changed a limit.
    pub async fn declare(
        &self,
        connection: &Connection,
        limits: QueueLimits,
    ) -> Result<(), lapin::Error> {
        let channel = connection.create_channel().await?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.exchange().as_str().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.dead_letter_exchange().as_str().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        let mut quorum = FieldTable::default();
        quorum.insert("x-queue-type".into(), long_string("quorum"));
        declare_queue(&channel, &self.dead_letter_queue(), quorum).await?;
        bind(
            &channel,
            &self.dead_letter_queue(),
            &self.dead_letter_exchange(),
        )
        .await?;

        channel.close(200, "topology declared".into()).await?;
        if self.shards == 1 {
            let queue = self.store_queue();
            let arguments = self.store_queue_arguments(limits);
            let channel = declare_store_queue(connection, &queue, arguments).await?;
            bind(&channel, &queue, &self.exchange()).await?;
            channel.close(200, "topology declared".into()).await?;
            return Ok(());
        }
        self.declare_shards(connection, limits).await
    }

    /// The sharded store: the consistent-hash exchange bound to the topic exchange, a quorum
    /// queue per shard bound to it with equal weight, and the unsharded store queue, when one
    /// exists, unbound so that it only drains (consumers keep consuming it).
    async fn declare_shards(
        &self,
        connection: &Connection,
        limits: QueueLimits,
    ) -> Result<(), lapin::Error> {
        let channel = connection.create_channel().await?;
        let mut hashing = FieldTable::default();
        hashing.insert("hash-property".into(), long_string("message_id"));
        channel
            .exchange_declare(
                self.shard_exchange().as_str().into(),
                ExchangeKind::Custom("x-consistent-hash".into()),
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                hashing,
            )
            .await?;
        channel
            .exchange_bind(
                self.shard_exchange().as_str().into(),
                self.exchange().as_str().into(),
                "#".into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel.close(200, "topology declared".into()).await?;
        for queue in self.store_queues() {
            let mut arguments = self.store_queue_arguments(limits);
            arguments.insert("x-queue-leader-locator".into(), long_string("balanced"));
            let channel = declare_store_queue(connection, &queue, arguments).await?;
            // For the consistent-hash exchange the routing key is the shard's weight.
            channel
                .queue_bind(
                    queue.as_str().into(),
                    self.shard_exchange().as_str().into(),
                    "1".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            channel.close(200, "topology declared".into()).await?;
        }
        if self.store_queue_exists(connection).await? {
            let channel = connection.create_channel().await?;
            channel
                .queue_unbind(
                    self.store_queue().as_str().into(),
                    self.exchange().as_str().into(),
                    "#".into(),
                    FieldTable::default(),
                )
                .await?;
            channel.close(200, "topology declared".into()).await?;
        }
        Ok(())
    }

    /// Whether the unsharded store queue exists (with several shards: whether it may still hold
    /// events to drain).
    pub async fn store_queue_exists(&self, connection: &Connection) -> Result<bool, lapin::Error> {
        let channel = connection.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match channel
            .queue_declare(
                self.store_queue().as_str().into(),
                passive,
                FieldTable::default(),
            )
            .await
        {
            Ok(_) => {
                channel.close(200, "checked".into()).await?;
                Ok(true)
            }
            // The passive declare of a missing queue closes the channel with NOT_FOUND.
            Err(error) if is_not_found(&error) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Deletes this prefix's queues and exchanges, for scripts and tests that clean up after
    /// themselves. Unless `force`, a queue that holds ready messages is kept and reported, so a
    /// mistyped prefix cannot throw events away. (Quorum queues do not support `if-empty` on
    /// delete, so the check is a passive declare just before.) Names that do not exist are fine.
    pub async fn remove(&self, connection: &Connection, force: bool) -> Result<(), RemoveError> {
        self.remove_with(connection, &[], force).await
    }

    /// [`Self::remove`], and first the queues `others` names: those other roles declared under
    /// this prefix (a subscription's), which the topology alone cannot list, since AMQP has no
    /// way to enumerate queues.
    pub async fn remove_with(
        &self,
        connection: &Connection,
        others: &[String],
        force: bool,
    ) -> Result<(), RemoveError> {
        let mut queues = others.to_vec();
        queues.extend([self.store_queue(), self.dead_letter_queue()]);
        if self.shards > 1 {
            queues.extend(self.store_queues());
        }
        for queue in queues {
            let channel = connection.create_channel().await?;
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            let declared = channel
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await;
            match declared {
                Ok(found) if !force && found.message_count() > 0 => {
                    return Err(RemoveError::NotEmpty {
                        queue,
                        messages: found.message_count(),
                    })
                }
                Ok(_) => {
                    channel
                        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                        .await?;
                }
                // The passive declare of a missing queue closes the channel with NOT_FOUND.
                Err(error) if is_not_found(&error) => {}
                Err(error) => return Err(error.into()),
            }
        }
        for exchange in [
            self.exchange(),
            self.dead_letter_exchange(),
            self.shard_exchange(),
        ] {
            let channel = connection.create_channel().await?;
            channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }

    /// The store queue's arguments, fixed at creation.
    pub fn store_queue_arguments(&self, limits: QueueLimits) -> FieldTable {
        let mut arguments = FieldTable::default();
        arguments.insert("x-queue-type".into(), long_string("quorum"));
        arguments.insert(
            "x-dead-letter-exchange".into(),
            long_string(&self.dead_letter_exchange()),
        );
        arguments.insert(
            "x-dead-letter-strategy".into(),
            long_string("at-least-once"),
        );
        arguments.insert("x-overflow".into(), long_string("reject-publish"));
        arguments.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(limits.delivery_limit)),
        );
        arguments.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(i64::try_from(limits.max_length).unwrap_or(i64::MAX)),
        );
        arguments
    }
}

/// Why [`Topology::remove`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// The broker failed.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// A queue still holds messages and removal was not forced.
    #[error("{queue} still holds {messages} message(s); not removed (use --force)")]
    NotEmpty {
        /// The queue.
        queue: String,
        /// Its ready messages.
        messages: u32,
    },
}

/// Longest wait for a broker connection and its setup: a frozen broker accepts TCP connections but
/// never answers the AMQP handshake, and a reconnect loop must not hang on it.
pub const SETUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a broker session could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The broker refused or failed.
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    /// The broker did not answer within [`SETUP_TIMEOUT`].
    #[error("the broker did not answer within {} s", SETUP_TIMEOUT.as_secs())]
    Timeout,
}

/// Runs a broker setup step (connect, declare, open channels) under [`SETUP_TIMEOUT`].
pub async fn with_setup_timeout<T>(
    setup: impl std::future::Future<Output = Result<T, lapin::Error>>,
) -> Result<T, SetupError> {
    match tokio::time::timeout(SETUP_TIMEOUT, setup).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(SetupError::Timeout),
    }
}

/// The most store shards `WARREN_STORE_SHARDS` accepts.
pub const MAX_SHARDS: u16 = 64;

/// Declares a store queue; when it exists with other arguments, keeps it (passively declared)
/// and warns. Returns an open channel for its bindings.
async fn declare_store_queue(
    connection: &Connection,
    queue: &str,
    arguments: FieldTable,
) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    match declare_queue(&channel, queue, arguments).await {
        Ok(()) => Ok(channel),
        Err(error) if is_precondition_failed(&error) => {
            tracing::warn!(
                %queue,
                %error,
                "the store queue exists with other arguments; keeping the existing queue \
                 (delete it when empty to apply the new settings)"
            );
            let channel = connection.create_channel().await?;
            channel
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            Ok(channel)
        }
        Err(error) => Err(error),
    }
}

fn long_string(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text))
}

async fn declare_queue(
    channel: &Channel,
    name: &str,
    arguments: FieldTable,
) -> Result<(), lapin::Error> {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .map(|_| ())
}

async fn bind(channel: &Channel, queue: &str, exchange: &str) -> Result<(), lapin::Error> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Whether the broker closed the channel with this soft error (read from the AMQP reply code,
/// not from its text).
fn is_soft_error(error: &lapin::Error, expected: AMQPSoftError) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(amqp) if *amqp.kind() == AMQPErrorKind::Soft(expected)
    )
}

fn is_precondition_failed(error: &lapin::Error) -> bool {
    is_soft_error(error, AMQPSoftError::PRECONDITIONFAILED)
}

/// Whether the broker answered NOT_FOUND (a passive declare of a queue that does not exist).
pub fn is_not_found(error: &lapin::Error) -> bool {
    is_soft_error(error, AMQPSoftError::NOTFOUND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shard_is_the_single_store_queue() {
        let topology = Topology::new("w");
        assert_eq!(topology.store_queues(), ["w.events.store"]);
    }

    #[test]
    fn shards_are_numbered_from_one_beside_the_single_queue() {
        let topology = Topology::new("w").with_shards(3);
        assert_eq!(
            topology.store_queues(),
            ["w.events.store.1", "w.events.store.2", "w.events.store.3"]
        );
        assert_eq!(topology.shard_exchange(), "w.events.shards");
        assert_eq!(topology.store_queue(), "w.events.store");
    }

    #[test]
    fn the_shard_count_is_read_and_bounded() {
        let shards = |value: &str| {
            Topology::from_settings(&Settings::from_pairs(&[("WARREN_STORE_SHARDS", value)]))
                .map(|topology| topology.shards())
        };
        assert_eq!(shards("4").ok(), Some(4));
        assert_eq!(
            shards("0").err().map(|error| error.name),
            Some("WARREN_STORE_SHARDS".to_owned())
        );
        assert!(shards("65").is_err());
        assert_eq!(
            Topology::from_settings(&Settings::from_pairs(&[]))
                .ok()
                .map(|topology| topology.shards()),
            Some(1)
        );
    }
}
