//! The broker side of the gateway: publishing envelopes with confirms.
//!
//! [`EventPublisher`] is the seam between HTTP and the broker. [`BrokerPublisher`] is the real one:
//! its own connection (a blocked publisher must never stall consumers), a pool of confirm-mode
//! channels shared by all requests, a bound on publishes in flight, and a supervisor that
//! reconnects with capped, jittered exponential backoff. [`MemoryPublisher`] is the double that
//! lets HTTP tests run without RabbitMQ.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use service_runtime::backoff::backoff;
use service_runtime::config::SecretUrl;
use service_runtime::topology::{QueueLimits, Topology};
use shared_types::envelope::REQUEST_ID_HEADER;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// One AMQP message to publish: an encoded envelope and where it goes.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingMessage {
    /// The event type the envelope's events share; topic routing key.
    pub routing_key: String,
    /// The encoded envelope.
    pub body: Vec<u8>,
    /// The envelope version's media type.
    pub content_type: &'static str,
    /// Unique per message, for broker-side tracing.
    pub message_id: String,
    /// The request the events came in with.
    pub request_id: String,
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
    /// Longest wait for a confirm before answering 503.
    pub confirm_timeout: Duration,
    /// Most messages published but not yet confirmed, across all requests.
    pub max_in_flight: usize,
    /// Longest pause between reconnect attempts.
    pub max_backoff: Duration,
}

/// The RabbitMQ publisher; cheap to clone.
#[derive(Clone)]
pub struct BrokerPublisher {
    shared: Arc<Shared>,
}

struct Shared {
    live: RwLock<Option<Arc<Live>>>,
    blocked: AtomicBool,
    next_channel: AtomicUsize,
    in_flight: Arc<Semaphore>,
    settings: BrokerSettings,
}

struct Live {
    connection: Connection,
    channels: Vec<Channel>,
}

impl BrokerPublisher {
    /// Starts the connection supervisor; it connects in the background and keeps reconnecting
    /// until `cancel` fires, then closes the connection. Await the handle to know it is closed.
    pub fn start(
        settings: BrokerSettings,
        cancel: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let shared = Arc::new(Shared {
            live: RwLock::new(None),
            blocked: AtomicBool::new(false),
            next_channel: AtomicUsize::new(0),
            in_flight: Arc::new(Semaphore::new(settings.max_in_flight)),
            settings,
        });
        let supervisor = tokio::spawn(supervise(Arc::clone(&shared), cancel));
        (Self { shared }, supervisor)
    }

    /// Waits until the first connection is up, or `timeout` passes.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.is_ready() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    fn live(&self) -> Option<Arc<Live>> {
        self.shared
            .live
            .read()
            .ok()
            .and_then(|live| live.as_ref().map(Arc::clone))
    }
}

impl EventPublisher for BrokerPublisher {
    async fn publish(&self, messages: Vec<OutgoingMessage>) -> Result<(), PublishError> {
        let shared = &self.shared;
        if shared.blocked.load(Ordering::Acquire) {
            return Err(PublishError::Blocked);
        }
        let live = self.live().ok_or(PublishError::Unavailable)?;
        let count = u32::try_from(messages.len()).map_err(|_| PublishError::Overloaded)?;
        let _permit = Arc::clone(&shared.in_flight)
            .try_acquire_many_owned(count)
            .map_err(|_| PublishError::Overloaded)?;
        let _in_flight = InFlight::new(f64::from(count));
        let index = shared.next_channel.fetch_add(1, Ordering::Relaxed) % live.channels.len();
        let channel = &live.channels[index];
        let exchange = shared.settings.topology.exchange();
        let deadline = tokio::time::Instant::now() + shared.settings.confirm_timeout;
        let timestamp = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or_default();

        let mut confirms = Vec::with_capacity(messages.len());
        for message in &messages {
            let mut headers = FieldTable::default();
            headers.insert(
                REQUEST_ID_HEADER.into(),
                AMQPValue::LongString(LongString::from(message.request_id.as_str())),
            );
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type(message.content_type.into())
                .with_message_id(message.message_id.as_str().into())
                .with_timestamp(timestamp)
                .with_app_id("warren-gateway".into())
                .with_headers(headers);
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
            match sent {
                Ok(Ok(confirm)) => confirms.push(confirm),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "publish failed");
                    return Err(PublishError::ConnectionLost);
                }
                Err(_) => return Err(PublishError::ConfirmTimeout),
            }
        }
        for confirm in confirms {
            match tokio::time::timeout_at(deadline, confirm).await {
                Ok(Ok(Confirmation::Ack(None))) => {}
                Ok(Ok(Confirmation::Ack(Some(_)))) => return Err(PublishError::Unroutable),
                Ok(Ok(Confirmation::Nack(_))) => return Err(PublishError::Nacked),
                Ok(Ok(Confirmation::NotRequested)) => return Err(PublishError::ConnectionLost),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "confirm failed");
                    return Err(PublishError::ConnectionLost);
                }
                Err(_) => return Err(PublishError::ConfirmTimeout),
            }
        }
        Ok(())
    }

    fn is_ready(&self) -> bool {
        !self.shared.blocked.load(Ordering::Acquire)
            && self.live().is_some_and(|live| {
                live.connection.status().connected()
                    && live.channels.iter().all(|c| c.status().connected())
            })
    }
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

async fn supervise(shared: Arc<Shared>, cancel: CancellationToken) {
    let settings = &shared.settings;
    let redacted = settings.url.redacted();
    let mut failures: u32 = 0;
    while !cancel.is_cancelled() {
        match connect(settings).await {
            Ok(live) => {
                failures = 0;
                let events = live.connection.events_listener();
                let live = Arc::new(live);
                if let Ok(mut slot) = shared.live.write() {
                    *slot = Some(Arc::clone(&live));
                }
                tracing::info!(broker = %redacted, channels = live.channels.len(), "publishing connection open");
                metrics::gauge!("warren_gateway_broker_connected").set(1.0);
                // A new connection is not blocked until the broker says so; exported from the
                // start so a dashboard shows 0, not "no data".
                metrics::gauge!("warren_gateway_broker_blocked").set(0.0);
                watch_connection(&shared, &live, events, &cancel).await;
                metrics::gauge!("warren_gateway_broker_connected").set(0.0);
                if let Ok(mut slot) = shared.live.write() {
                    *slot = None;
                }
                shared.blocked.store(false, Ordering::Release);
                if cancel.is_cancelled() {
                    let _ = live
                        .connection
                        .close(200, "gateway shutting down".into())
                        .await;
                    tracing::info!("publishing connection closed");
                    return;
                }
                tracing::warn!("publishing connection lost; reconnecting");
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                tracing::warn!(broker = %redacted, %error, failures, "cannot connect to the broker");
            }
        }
        let pause = backoff(failures, settings.max_backoff);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

async fn connect(settings: &BrokerSettings) -> Result<Live, service_runtime::topology::SetupError> {
    service_runtime::topology::with_setup_timeout(connect_inner(settings)).await
}

async fn connect_inner(settings: &BrokerSettings) -> Result<Live, lapin::Error> {
    let properties = ConnectionProperties::default()
        .with_connection_name(LongString::from("warren-gateway-publish"));
    let (connection, node) = service_runtime::amqp::connect(&settings.url, properties).await?;
    tracing::info!(%node, "connected to the broker");
    settings
        .topology
        .declare(&connection, settings.queue_limits)
        .await?;
    let mut channels = Vec::with_capacity(settings.channels);
    for _ in 0..settings.channels {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        channels.push(channel);
    }
    Ok(Live {
        connection,
        channels,
    })
}

/// Returns when the connection or one of its channels fails, or on cancel.
async fn watch_connection(
    shared: &Shared,
    live: &Live,
    events: impl futures_util::Stream<Item = lapin::Event> + Send,
    cancel: &CancellationToken,
) {
    let mut events = std::pin::pin!(events);
    let mut check = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            event = events.next() => match event {
                Some(lapin::Event::ConnectionBlocked(reason)) => {
                    tracing::warn!(%reason, "broker blocked publishing");
                    shared.blocked.store(true, Ordering::Release);
                    metrics::gauge!("warren_gateway_broker_blocked").set(1.0);
                }
                Some(lapin::Event::ConnectionUnblocked) => {
                    tracing::info!("broker unblocked publishing");
                    shared.blocked.store(false, Ordering::Release);
                    metrics::gauge!("warren_gateway_broker_blocked").set(0.0);
                }
                Some(lapin::Event::Error(error)) => {
                    tracing::warn!(%error, "publishing connection error");
                    return;
                }
                Some(_) => {}
                None => return,
            },
            _ = check.tick() => {
                let healthy = live.connection.status().connected()
                    && live.channels.iter().all(|c| c.status().connected());
                if !healthy {
                    return;
                }
            }
        }
    }
}

/// An in-memory publisher for HTTP tests: records messages, or fails on demand.
#[derive(Clone, Default)]
pub struct MemoryPublisher {
    published: Arc<Mutex<Vec<OutgoingMessage>>>,
    failure: Arc<Mutex<Option<PublishError>>>,
}

impl MemoryPublisher {
    /// Makes every later publish fail with `error` (or succeed again with `None`).
    pub fn fail_with(&self, error: Option<PublishError>) {
        if let Ok(mut failure) = self.failure.lock() {
            *failure = error;
        }
    }

    /// Everything published so far.
    pub fn published(&self) -> Vec<OutgoingMessage> {
        self.published
            .lock()
            .map(|published| published.clone())
            .unwrap_or_default()
    }
}

impl EventPublisher for MemoryPublisher {
    async fn publish(&self, messages: Vec<OutgoingMessage>) -> Result<(), PublishError> {
        if let Some(error) = self.failure.lock().ok().and_then(|failure| *failure) {
            return Err(error);
        }
        if let Ok(mut published) = self.published.lock() {
            published.extend(messages);
        }
        Ok(())
    }

    fn is_ready(&self) -> bool {
        self.failure.lock().map(|f| f.is_none()).unwrap_or(false)
    }
}
