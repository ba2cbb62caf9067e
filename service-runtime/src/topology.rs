//! Broker names and the idempotent declaration of exchanges and queues.
//!
//! Both services declare the topology at startup, so whichever starts first creates it. Queue
//! arguments can never change once a queue exists, so the store queue's are decided here once:
//! quorum type, a dead-letter exchange with the `at-least-once` strategy (dead-lettering itself
//! cannot lose a message), `reject-publish` overflow (a full queue nacks publishes, and the
//! gateway answers 503, instead of the broker running out of memory), a delivery limit and a
//! maximum length.

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ExchangeKind};

use crate::config::{ConfigError, Settings};

/// The names under one `WARREN_AMQP_PREFIX`; tests use a random prefix each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
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
        Ok(Topology::new(prefix))
    }

    /// The names under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix every name starts with (`WARREN_AMQP_PREFIX`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Topic exchange the gateway publishes to, routing key = event type.
    pub fn exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// Quorum queue the consumers store from, bound to every routing key.
    pub fn store_queue(&self) -> String {
        format!("{}.events.store", self.prefix)
    }

    /// Exchange that receives what the store queue dead-letters.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.events.dlx", self.prefix)
    }

    /// Queue that keeps dead-lettered messages for inspection and replay.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.events.dead", self.prefix)
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

        let arguments = self.store_queue_arguments(limits);
        let channel = match declare_queue(&channel, &self.store_queue(), arguments).await {
            Ok(()) => channel,
            Err(error) if is_precondition_failed(&error) => {
                tracing::warn!(
                    queue = %self.store_queue(),
                    %error,
                    "the store queue exists with other arguments; keeping the existing queue \
                     (delete it when empty to apply the new settings)"
                );
                let channel = connection.create_channel().await?;
                channel
                    .queue_declare(
                        self.store_queue().as_str().into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                channel
            }
            Err(error) => return Err(error),
        };
        bind(&channel, &self.store_queue(), &self.exchange()).await?;
        channel.close(200, "topology declared".into()).await?;
        Ok(())
    }

    /// Deletes this prefix's queues and exchanges, for scripts and tests that clean up after
    /// themselves. Unless `force`, a queue that holds ready messages is kept and reported, so a
    /// mistyped prefix cannot throw events away. (Quorum queues do not support `if-empty` on
    /// delete, so the check is a passive declare just before.) Names that do not exist are fine.
    pub async fn remove(&self, connection: &Connection, force: bool) -> Result<(), RemoveError> {
        for queue in [self.store_queue(), self.dead_letter_queue()] {
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
        for exchange in [self.exchange(), self.dead_letter_exchange()] {
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

fn is_not_found(error: &lapin::Error) -> bool {
    is_soft_error(error, AMQPSoftError::NOTFOUND)
}
