//! Failover inside the request: the real publisher against the real broker, reached through two
//! TCP proxies that stand in for two cluster nodes. Freezing the proxy the gateway publishes
//! through is a paused node (TCP open, nothing said); dropping its connections is a killed one.
//! Either way the request in flight must still get its 202, from the other "node", well inside
//! its deadline, and the event must be in the store queue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use service_runtime::topology::Topology;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::sync::watch;

use crate::helpers::config;

fn broker_url() -> String {
    std::env::var("WARREN_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A TCP proxy to the broker that can freeze (stop forwarding, keep the sockets) or cut every
/// connection it carries.
struct NodeProxy {
    port: u16,
    frozen: watch::Sender<bool>,
    cut: watch::Sender<u64>,
    open: Arc<AtomicUsize>,
}

impl NodeProxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (frozen, _) = watch::channel(false);
        let (cut, _) = watch::channel(0u64);
        let open = Arc::new(AtomicUsize::new(0));
        let (frozen_tx, cut_tx, open_count) = (frozen.clone(), cut.clone(), Arc::clone(&open));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let open = Arc::clone(&open_count);
                open.fetch_add(1, Ordering::SeqCst);
                let mut cut = cut_tx.subscribe();
                let up = tokio::spawn(forward(client_read, server_write, frozen_tx.subscribe()));
                let down = tokio::spawn(forward(server_read, client_write, frozen_tx.subscribe()));
                tokio::spawn(async move {
                    tokio::select! {
                        _ = cut.changed() => {}
                        _ = async { let _ = up.await; } => {}
                    }
                    down.abort();
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            port,
            frozen,
            cut,
            open,
        }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let Ok(read) = from.read(&mut buffer).await else {
            return;
        };
        if read == 0 {
            return;
        }
        // A frozen node holds what it got and says nothing.
        while *frozen.borrow_and_update() {
            if frozen.changed().await.is_err() {
                return;
            }
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// A gateway publishing to the broker through two proxies, and the event ids in its store queue.
struct Fixture {
    nodes: [NodeProxy; 2],
    address: std::net::SocketAddr,
    topology: Topology,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

async fn fixture(name: &str) -> Fixture {
    service_runtime::telemetry::init_for_tests();
    let upstream = broker_url();
    let authority = upstream
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    let nodes = [
        NodeProxy::start(authority.clone()).await,
        NodeProxy::start(authority).await,
    ];
    let prefix = format!("test.failover.{name}.{}", std::process::id());
    let url = format!("{},{}", nodes[0].url(), nodes[1].url());
    let config = config(&[
        ("WARREN_AMQP_URL", url.as_str()),
        ("WARREN_AMQP_PREFIX", prefix.as_str()),
        ("WARREN_CONFIRM_ATTEMPT_MS", "300"),
        ("WARREN_CONFIRM_TIMEOUT_MS", "5000"),
        ("WARREN_PUBLISH_CHANNELS", "2"),
    ]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let _ = gateway::run(listener, config, async {
            let _ = stopped.await;
        })
        .await;
    });
    let fixture = Fixture {
        nodes,
        address,
        topology: Topology::new(prefix),
        stop: Some(stop),
        server: Some(server),
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = client
            .get(format!("http://{address}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "the gateway never got ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fixture
}

impl Fixture {
    /// Waits until the gateway holds a connection through every proxy, then warms both with a
    /// few publishes (their channels register with the queue on their first publish).
    async fn connected_to_both(&self, warm_up: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.nodes.iter().any(|node| node.connections() != 1) {
            assert!(
                Instant::now() < deadline,
                "not connected through both nodes"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for n in 0..warm_up {
            assert_eq!(self.post(&format!("warm-up-{n}")).await.0, 202);
        }
    }

    async fn post(&self, id: &str) -> (u16, Duration) {
        let event = serde_json::json!({
            "specversion": "1.0", "id": id, "source": "/tests/failover", "type": "test.failover",
        });
        let started = Instant::now();
        let response = reqwest::Client::new()
            .post(format!("http://{}/v1/events", self.address))
            .header("content-type", "application/cloudevents+json")
            .body(event.to_string())
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), started.elapsed())
    }

    /// The ids of the events waiting in the store queue (each message's events).
    async fn stored_ids(&self, expected: usize) -> Vec<String> {
        let (connection, _) = service_runtime::amqp::connect(
            &service_runtime::config::SecretUrl::new(broker_url()),
            lapin::ConnectionProperties::default(),
        )
        .await
        .unwrap();
        let channel = connection.create_channel().await.unwrap();
        channel
            .basic_qos(1000, BasicQosOptions::default())
            .await
            .unwrap();
        let mut consumer = channel
            .basic_consume(
                self.topology.store_queue().as_str().into(),
                "failover-test".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut ids = Vec::new();
        while ids.len() < expected {
            let Ok(Some(Ok(delivery))) =
                tokio::time::timeout(Duration::from_secs(5), consumer.next()).await
            else {
                break;
            };
            let envelope = shared_types::envelope::Envelope::decode(&delivery.data).unwrap();
            ids.extend(
                envelope
                    .parts
                    .iter()
                    .flat_map(|part| part.events.iter().map(|event| event.id.clone())),
            );
        }
        service_runtime::amqp::close(&connection, "test done").await;
        ids
    }

    async fn stop(mut self) {
        for node in &self.nodes {
            node.frozen.send_replace(false);
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), server).await;
        }
        // Each test's own queues and exchanges go with it.
        let url = service_runtime::config::SecretUrl::new(broker_url());
        if let Ok((connection, _)) =
            service_runtime::amqp::connect(&url, lapin::ConnectionProperties::default()).await
        {
            let _ = tokio::time::timeout(
                Duration::from_secs(30),
                self.topology.remove(&connection, true),
            )
            .await;
            service_runtime::amqp::close(&connection, "test done").await;
        }
    }
}

/// Posts `count` events one after the other; every one must get 202 well inside the 5 s
/// deadline (one 300 ms attempt bound to notice, then a republish on the other node).
async fn post_all_accepted(fixture: &Fixture, prefix: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for n in 0..count {
        let id = format!("{prefix}-{n}");
        let (status, took) = fixture.post(&id).await;
        assert_eq!(status, 202, "{id} took {took:?}");
        assert!(took < Duration::from_secs(2), "{id} took {took:?}");
        ids.push(id);
    }
    ids
}

#[tokio::test]
async fn a_paused_node_is_left_inside_the_request() {
    let fixture = fixture("paused").await;
    fixture.connected_to_both(4).await;
    fixture.nodes[0].frozen.send_replace(true);

    // Round-robin puts some of these on the paused node first.
    let posted = post_all_accepted(&fixture, "during-the-pause", 6).await;

    let stored = fixture.stored_ids(4 + posted.len()).await;
    for id in &posted {
        assert!(stored.contains(id), "{id} not in {stored:?}");
    }
    fixture.stop().await;
}

#[tokio::test]
async fn a_killed_node_is_left_inside_the_request() {
    let fixture = fixture("killed").await;
    fixture.connected_to_both(4).await;
    // Freeze first, so publishes are in flight on it when its connections are cut.
    fixture.nodes[0].frozen.send_replace(true);
    let cut = {
        let cut = fixture.nodes[0].cut.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            cut.send_modify(|generation| *generation += 1);
        })
    };

    let posted = post_all_accepted(&fixture, "during-the-kill", 6).await;

    cut.await.unwrap();
    let stored = fixture.stored_ids(4 + posted.len()).await;
    for id in &posted {
        assert!(stored.contains(id), "{id} not in {stored:?}");
    }
    fixture.stop().await;
}

#[tokio::test]
async fn a_broker_silent_past_the_deadline_gives_503_at_the_deadline() {
    let fixture = fixture("silent").await;
    fixture.connected_to_both(2).await;
    // Every node frozen: nowhere to fail over to.
    for node in &fixture.nodes {
        node.frozen.send_replace(true);
    }

    let (status, took) = fixture.post("never-confirmed").await;

    assert_eq!(status, 503);
    assert!(
        took >= Duration::from_millis(4_500) && took < Duration::from_secs(8),
        "took {took:?}"
    );
    for node in &fixture.nodes {
        node.frozen.send_replace(false);
    }
    fixture.stop().await;
}
