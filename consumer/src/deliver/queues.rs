//! Each subscription's own queue: a quorum queue bound to the events exchange with the routing
//! keys (event types) its filters can match ([`super::routing`]), so a slow or paused sink lets
//! only its own queue grow, never the store queue or another subscription's. The API declares it
//! before the subscription is committed (events accepted from then on wait for it), again on
//! every `PUT` (idempotent: the repair for a lost queue; the new bindings go on before the commit,
//! the old ones come off after it), and deletes it before the subscription's row; workers only
//! consume it, never create it.
//!
//! An ordered subscription's queue has a single active consumer (`x-single-active-consumer`):
//! one worker delivers it at a time, parallel across keys, and another takes over if it dies.
//! Queue arguments cannot change once a queue exists, which is why `ordering` is fixed at creation.

use std::collections::BTreeSet;

use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties};
use service_runtime::config::SecretUrl;
use service_runtime::topology::{is_not_found, with_setup_timeout, SetupError, Topology};
use tokio::sync::Mutex;
use uuid::Uuid;

/// The queue of subscription `id` under `topology`'s prefix.
pub fn queue_name(topology: &Topology, id: Uuid) -> String {
    format!("{}.subscription.{}", topology.prefix(), id.simple())
}

/// Declares the subscription's queue and binds it to the events exchange with `keys`
/// (idempotent).
pub async fn declare(
    channel: &Channel,
    topology: &Topology,
    id: Uuid,
    ordered: bool,
    keys: &BTreeSet<String>,
) -> Result<(), lapin::Error> {
    let queue = queue_name(topology, id);
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    if ordered {
        arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    }
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await?;
    let exchange = topology.exchange();
    for key in keys {
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Removes the subscription's bindings with `keys`. Removing a binding that does not exist is
/// not an error in AMQP 0-9-1 (RabbitMQ).
pub async fn unbind(
    channel: &Channel,
    topology: &Topology,
    id: Uuid,
    keys: impl IntoIterator<Item = &String>,
) -> Result<(), lapin::Error> {
    let (queue, exchange) = (queue_name(topology, id), topology.exchange());
    for key in keys {
        channel
            .queue_unbind(
                queue.as_str().into(),
                exchange.as_str().into(),
                key.as_str().into(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Whether subscription `id`'s queue exists (a passive declare). A missing queue closes the
/// channel, as AMQP does; the caller opened it for this subscription alone.
pub async fn exists(
    channel: &Channel,
    topology: &Topology,
    id: Uuid,
) -> Result<bool, lapin::Error> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match channel
        .queue_declare(
            queue_name(topology, id).as_str().into(),
            passive,
            FieldTable::default(),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(error) if is_not_found(&error) => Ok(false),
        Err(error) => Err(error),
    }
}

/// The API's broker connection for declaring, counting and deleting subscription queues: opened
/// on first use and again after it broke, so the read API starts without the broker.
pub struct SubscriptionQueues {
    url: SecretUrl,
    topology: Topology,
    connection: Mutex<Option<Connection>>,
}

impl SubscriptionQueues {
    /// Nothing is connected until the first call.
    pub fn new(url: SecretUrl, topology: Topology) -> Self {
        Self {
            url,
            topology,
            connection: Mutex::new(None),
        }
    }

    async fn channel(&self) -> Result<Channel, SetupError> {
        let mut connection = self.connection.lock().await;
        if let Some(open) = connection.as_ref() {
            if open.status().connected() {
                return with_setup_timeout(open.create_channel()).await;
            }
        }
        let properties = ConnectionProperties::default()
            .with_connection_name(LongString::from("warren-subscriptions-api"));
        let (opened, _) =
            with_setup_timeout(service_runtime::amqp::connect(&self.url, properties)).await?;
        let channel = with_setup_timeout(opened.create_channel()).await?;
        *connection = Some(opened);
        Ok(channel)
    }

    /// Declares subscription `id`'s queue (and the events exchange it binds to), bound with
    /// `keys`.
    pub async fn declare(
        &self,
        id: Uuid,
        ordered: bool,
        keys: &BTreeSet<String>,
    ) -> Result<(), SetupError> {
        let channel = self.channel().await?;
        {
            let connection = self.connection.lock().await;
            if let Some(connection) = connection.as_ref() {
                with_setup_timeout(self.topology.declare_exchange(connection)).await?;
            }
        }
        with_setup_timeout(declare(&channel, &self.topology, id, ordered, keys)).await?;
        let _ = channel.close(200, "declared".into()).await;
        Ok(())
    }

    /// Removes subscription `id`'s bindings with `keys` (those a replaced filter no longer needs).
    pub async fn unbind(&self, id: Uuid, keys: &BTreeSet<String>) -> Result<(), SetupError> {
        let channel = self.channel().await?;
        with_setup_timeout(unbind(&channel, &self.topology, id, keys)).await?;
        let _ = channel.close(200, "unbound".into()).await;
        Ok(())
    }

    /// Deletes subscription `id`'s queue and what it held; a queue already gone is fine.
    pub async fn delete(&self, id: Uuid) -> Result<(), SetupError> {
        let channel = self.channel().await?;
        with_setup_timeout(channel.queue_delete(
            queue_name(&self.topology, id).as_str().into(),
            QueueDeleteOptions::default(),
        ))
        .await?;
        let _ = channel.close(200, "deleted".into()).await;
        Ok(())
    }

    /// Messages ready in subscription `id`'s queue (each carries one or more events); `None`
    /// when the queue does not exist.
    pub async fn depth(&self, id: Uuid) -> Result<Option<u32>, SetupError> {
        let channel = self.channel().await?;
        let declared = with_setup_timeout(channel.queue_declare(
            queue_name(&self.topology, id).as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ))
        .await;
        match declared {
            Ok(queue) => {
                let _ = channel.close(200, "counted".into()).await;
                Ok(Some(queue.message_count()))
            }
            Err(SetupError::Broker(error)) if is_not_found(&error) => Ok(None),
            Err(error) => Err(error),
        }
    }
}
