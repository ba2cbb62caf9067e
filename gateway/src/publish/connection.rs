//! The publishing connections: one per node of `WARREN_AMQP_URL`, each with a pool of
//! confirm-mode channels, each kept by its own supervisor that reconnects with capped, jittered
//! backoff.
//!
//! Why one per node, all in use, and not one with a standby: a quorum queue tells the channels
//! that already published to it when its leader changes, and they resend to the new leader; a
//! channel that publishes to it for the first time must first register with the leader it
//! finds in the queue's record, and while the old leader's node is paused (TCP open, silent, not
//! yet known to be down) that registration waits for that node. So the channels that carry a
//! failover must be warm before the failure: publishes are spread over every node's connection.
//!
//! When confirms stop coming on a connection, publishers move on to another node's and have
//! the silent one checked ([`Live::check_node`]): a node that does not answer is abandoned and
//! its supervisor reconnects to it while the others carry the load; a node that answers keeps
//! its connection (the queue was electing a leader, and warm channels are served first after). A channel a
//! node refused a message on is replaced by a fresh one ([`Live::replace_channel`]): RabbitMQ
//! 3.10 keeps refusing every publish on a channel whose first publish to a quorum queue came
//! while the queue's old leader was down (its enqueuer registration asks the dead node and gives
//! up), until that node comes back; a new channel asks the queue's current leader.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::ConfirmSelectOptions;
use lapin::types::LongString;
use lapin::{Channel, Connection, ConnectionProperties};
use service_runtime::amqp::ConnectedNode;
use service_runtime::backoff::backoff;
use service_runtime::config::SecretUrl;
use service_runtime::topology::SetupError;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::BrokerSettings;

/// What the supervisors share with publishers.
pub(super) struct Shared {
    /// One per node, in `WARREN_AMQP_URL`'s order.
    pub(super) links: Vec<Link>,
    /// Round-robin over the links.
    pub(super) next_link: AtomicUsize,
    /// The topology was declared by a connection of this process.
    declared: AtomicBool,
    pub(super) settings: BrokerSettings,
}

/// The publishing connection to one node.
pub(super) struct Link {
    url: SecretUrl,
    index: usize,
    /// The open connection, or `None` between connections.
    live: watch::Sender<Option<Arc<Live>>>,
    /// When the last connection was lost; `None` while connected or before the first one.
    lost_at: RwLock<Option<Instant>>,
}

impl Shared {
    pub(super) fn new(settings: BrokerSettings) -> Self {
        let nodes: Vec<String> = service_runtime::amqp::nodes(&settings.url)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let links = nodes
            .into_iter()
            .enumerate()
            .map(|(index, node)| Link {
                url: SecretUrl::new(node),
                index,
                live: watch::Sender::new(None),
                lost_at: RwLock::new(None),
            })
            .collect();
        Self {
            links,
            next_link: AtomicUsize::new(0),
            declared: AtomicBool::new(false),
            settings,
        }
    }

    /// The open connection of link `index`, if any.
    pub(super) fn live(&self, index: usize) -> Option<Arc<Live>> {
        self.links
            .get(index)
            .and_then(|link| link.live.borrow().as_ref().map(Arc::clone))
    }

    /// Whether some link lost its connection less than a request deadline ago, or was never
    /// tried yet, so a (re)connect is worth waiting for; a broker down for longer answers 503
    /// at once.
    pub(super) fn reconnecting(&self) -> bool {
        self.links.iter().any(|link| {
            let open = link
                .live
                .borrow()
                .as_ref()
                .is_some_and(|live| !live.usable());
            open || link
                .lost_at
                .read()
                .ok()
                .and_then(|lost_at| *lost_at)
                .is_some_and(|lost_at| lost_at.elapsed() < self.settings.confirm_timeout)
        })
    }

    fn connected_links(&self) -> usize {
        self.links
            .iter()
            .filter(|link| link.live.borrow().is_some())
            .count()
    }
}

/// One open connection and its channels.
pub(super) struct Live {
    connection: Connection,
    /// The node it is open to.
    pub(super) node: ConnectedNode,
    channels: Vec<RwLock<Channel>>,
    next_channel: AtomicUsize,
    /// The broker raised a resource alarm on this connection.
    pub(super) blocked: AtomicBool,
    /// A publish on it was confirmed: its channels are registered with the store queue.
    warm: AtomicBool,
    /// A liveness check of its node is running.
    checking: AtomicBool,
    /// Per slot, 1 + the id of its channel once a publish on it was confirmed (0: none yet).
    /// Such a channel is registered with the store queue, so a refusal on it is the queue's
    /// answer (full), not the stuck registration a fresh channel cures.
    registered: Vec<AtomicU32>,
    /// Fired by a publisher that stopped trusting this connection.
    abandoned: CancellationToken,
}

impl Live {
    /// The next channel, round-robin, and its slot.
    pub(super) fn next_channel(&self) -> Option<(usize, Channel)> {
        let slot = self.next_channel.fetch_add(1, Ordering::Relaxed) % self.channels.len().max(1);
        let channel = self.channels.get(slot)?.read().ok()?.clone();
        Some((slot, channel))
    }

    /// Records that a publish on `channel`, in `slot`, was confirmed.
    pub(super) fn mark_registered(&self, slot: usize, channel: &Channel) {
        if !self.warm.load(Ordering::Relaxed) {
            self.warm.store(true, Ordering::Relaxed);
        }
        if let Some(registered) = self.registered.get(slot) {
            let id = u32::from(channel.id()) + 1;
            if registered.load(Ordering::Relaxed) != id {
                registered.store(id, Ordering::Relaxed);
            }
        }
    }

    /// Replaces the channel in `slot` with a new confirm-mode channel, unless another publisher
    /// already did (the slot no longer holds `refused`) or the channel had publishes confirmed
    /// (then a refusal is the queue's, e.g. full, and a new channel would not help). The old
    /// channel is closed, so publishes still waiting on it fail over as well.
    pub(super) async fn replace_channel(&self, slot: usize, refused: &Channel) {
        let Some(current) = self.channels.get(slot) else {
            return;
        };
        let registered = self.registered.get(slot).is_some_and(|registered| {
            registered.load(Ordering::Relaxed) == u32::from(refused.id()) + 1
        });
        if registered && refused.status().connected() {
            return;
        }
        if current
            .read()
            .map(|c| c.id() != refused.id())
            .unwrap_or(true)
        {
            return;
        }
        let fresh = match open_channel(&self.connection).await {
            Ok(fresh) => fresh,
            Err(error) => {
                tracing::warn!(%error, "cannot open a fresh publishing channel");
                return;
            }
        };
        let replaced = match current.write() {
            Ok(mut current) if current.id() == refused.id() => {
                Some(std::mem::replace(&mut *current, fresh.clone()))
            }
            _ => None,
        };
        let unused = match replaced {
            Some(old) => {
                metrics::counter!("warren_gateway_channel_replacements_total").increment(1);
                old
            }
            None => fresh,
        };
        let _ = unused
            .close(200, "replaced by a fresh publishing channel".into())
            .await;
    }

    /// After confirms stopped coming on this connection: asks its node for something only the
    /// node itself handles (opening a channel), in the background, and abandons the connection
    /// if the node does not answer within `bound`. A node that answers keeps its connection:
    /// the silence was the queue's (a leader election), and its warm channels are the ones the
    /// new leader will serve first.
    pub(super) fn check_node(self: &Arc<Self>, bound: Duration) {
        if self.checking.swap(true, Ordering::AcqRel) {
            return;
        }
        let live = Arc::clone(self);
        tokio::spawn(async move {
            match tokio::time::timeout(bound, live.connection.create_channel()).await {
                Ok(Ok(channel)) => {
                    let _ = channel.close(200, "node liveness check".into()).await;
                }
                Ok(Err(_)) | Err(_) => {
                    tracing::warn!(node = %live.node.url, "the node did not answer a liveness check");
                    live.abandon();
                }
            }
            live.checking.store(false, Ordering::Release);
        });
    }

    /// Makes the supervisor drop this connection and connect again.
    fn abandon(&self) {
        self.abandoned.cancel();
    }

    /// Whether it can carry a publish: the connection is open and not given up on.
    pub(super) fn usable(&self) -> bool {
        !self.abandoned.is_cancelled() && self.connection.status().connected()
    }

    /// Whether a publish on it was confirmed since it opened.
    pub(super) fn is_warm(&self) -> bool {
        self.warm.load(Ordering::Relaxed)
    }
}

/// Starts one supervisor per node; each keeps its connection open until `cancel` fires, then
/// closes it. The returned task ends when all of them have.
pub(super) async fn supervise(shared: Arc<Shared>, cancel: CancellationToken) {
    let supervisors: Vec<_> = (0..shared.links.len())
        .map(|index| tokio::spawn(supervise_link(Arc::clone(&shared), index, cancel.clone())))
        .collect();
    for supervisor in supervisors {
        let _ = supervisor.await;
    }
}

async fn supervise_link(shared: Arc<Shared>, index: usize, cancel: CancellationToken) {
    let Some(link) = shared.links.get(index) else {
        return;
    };
    let settings = &shared.settings;
    let redacted = link.url.redacted();
    let mut failures: u32 = 0;
    while !cancel.is_cancelled() {
        let declared = shared.declared.load(Ordering::Acquire);
        match connect(settings, link, declared).await {
            Ok(live) => {
                failures = 0;
                shared.declared.store(true, Ordering::Release);
                let events = live.connection.events_listener();
                let live = Arc::new(live);
                link.live.send_replace(Some(Arc::clone(&live)));
                if let Ok(mut lost_at) = link.lost_at.write() {
                    *lost_at = None;
                }
                tracing::info!(node = %live.node.url, channels = live.channels.len(), "publishing connection open");
                publish_connection_gauges(&shared);
                let abandoned = watch_connection(&shared, &live, events, &cancel).await;
                link.live.send_replace(None);
                if let Ok(mut lost_at) = link.lost_at.write() {
                    *lost_at = Some(Instant::now());
                }
                publish_connection_gauges(&shared);
                if cancel.is_cancelled() {
                    let _ = live
                        .connection
                        .close(200, "gateway shutting down".into())
                        .await;
                    tracing::info!(node = %live.node.url, "publishing connection closed");
                    return;
                }
                if abandoned {
                    metrics::counter!("warren_gateway_broker_failovers_total").increment(1);
                    tracing::warn!(node = %live.node.url, "confirms stopped coming; publishing on the other nodes and reconnecting");
                    // Closing may hang on a paused node: let it finish in the background.
                    tokio::spawn(async move {
                        let _ = live
                            .connection
                            .close(320, "confirms stopped coming".into())
                            .await;
                    });
                    failures = 1;
                } else {
                    tracing::warn!(node = %live.node.url, "publishing connection lost; reconnecting");
                    // The first retry after a loss does not wait.
                    continue;
                }
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

/// `warren_gateway_broker_connected` counts the nodes with an open publishing connection;
/// `warren_gateway_broker_blocked` is 1 while any of them blocks publishers.
fn publish_connection_gauges(shared: &Shared) {
    metrics::gauge!("warren_gateway_broker_connected").set(shared.connected_links() as f64);
    let blocked = (0..shared.links.len())
        .filter_map(|index| shared.live(index))
        .any(|live| live.blocked.load(Ordering::Acquire));
    metrics::gauge!("warren_gateway_broker_blocked").set(if blocked { 1.0 } else { 0.0 });
}

async fn connect(
    settings: &BrokerSettings,
    link: &Link,
    declared: bool,
) -> Result<Live, SetupError> {
    service_runtime::topology::with_setup_timeout(connect_inner(settings, link, declared)).await
}

async fn connect_inner(
    settings: &BrokerSettings,
    link: &Link,
    declared: bool,
) -> Result<Live, lapin::Error> {
    let properties = ConnectionProperties::default()
        .with_connection_name(LongString::from("warren-gateway-publish"));
    let node_timeout = settings.confirm_attempt.max(Duration::from_millis(500));
    let (connection, mut node) =
        service_runtime::amqp::connect_avoiding(&link.url, properties, None, node_timeout).await?;
    node.index = link.index;
    tracing::info!(node = %node.url, "connected to the broker");
    let declare = settings
        .topology
        .declare(&connection, settings.queue_limits);
    if declared {
        // Declaring again is only a safeguard, and on a cluster with a node paused (not yet
        // known to be down) it waits in a cluster-wide transaction for up to the Erlang tick
        // time: do not let it hold the reconnect.
        if tokio::time::timeout(settings.confirm_attempt, declare)
            .await
            .is_err()
        {
            tracing::warn!(node = %node.url, "re-declaring the topology did not finish; publishing without waiting for it");
        }
    } else {
        declare.await?;
    }
    let mut channels = Vec::with_capacity(settings.channels);
    for _ in 0..settings.channels {
        channels.push(RwLock::new(open_channel(&connection).await?));
    }
    Ok(Live {
        connection,
        node,
        channels,
        next_channel: AtomicUsize::new(0),
        blocked: AtomicBool::new(false),
        warm: AtomicBool::new(false),
        checking: AtomicBool::new(false),
        registered: (0..settings.channels).map(|_| AtomicU32::new(0)).collect(),
        abandoned: CancellationToken::new(),
    })
}

async fn open_channel(connection: &Connection) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Returns when the connection fails (`false`), a publisher abandons it (`true`), or on cancel.
/// A closed channel alone does not end the connection: publishers replace it.
async fn watch_connection(
    shared: &Shared,
    live: &Live,
    events: impl futures_util::Stream<Item = lapin::Event> + Send,
    cancel: &CancellationToken,
) -> bool {
    let mut events = std::pin::pin!(events);
    let mut check = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return false,
            () = live.abandoned.cancelled() => return true,
            event = events.next() => match event {
                Some(lapin::Event::ConnectionBlocked(reason)) => {
                    tracing::warn!(%reason, node = %live.node.url, "broker blocked publishing");
                    live.blocked.store(true, Ordering::Release);
                    publish_connection_gauges(shared);
                }
                Some(lapin::Event::ConnectionUnblocked) => {
                    tracing::info!(node = %live.node.url, "broker unblocked publishing");
                    live.blocked.store(false, Ordering::Release);
                    publish_connection_gauges(shared);
                }
                Some(lapin::Event::Error(error)) => {
                    tracing::warn!(%error, node = %live.node.url, "publishing connection error");
                    return false;
                }
                Some(_) => {}
                None => return false,
            },
            _ = check.tick() => {
                if !live.connection.status().connected() {
                    return false;
                }
            }
        }
    }
}
