//! Connecting to a RabbitMQ cluster: `WARREN_AMQP_URL` may list several nodes, comma-separated.
//!
//! Each connection attempt starts at the node after the one the previous attempt started at, and
//! goes on to the next node when one refuses, fails or does not finish the AMQP handshake within
//! [`NODE_TIMEOUT`] (a paused node accepts TCP and then says nothing). So after losing its node,
//! a gateway or consumer reconnects to another one with its usual backoff, re-declares its
//! topology (idempotent) and resumes; a quorum queue with members on every node stays available
//! as long as a majority of them is up.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

use crate::config::{redact_url, SecretUrl};

/// The longest one node may take to accept a connection.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest closing a connection may take. A broker that went away may never answer the
/// close, and a session must not wait on it to reconnect, nor a shutdown to end.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the next attempt starts, shared by every connection of the process, so two connections
/// opened one after the other spread over the nodes.
static NEXT_NODE: AtomicUsize = AtomicUsize::new(0);

/// The node URLs of `WARREN_AMQP_URL`, in order.
pub fn nodes(url: &SecretUrl) -> Vec<&str> {
    url.expose()
        .split(',')
        .map(str::trim)
        .filter(|node| !node.is_empty())
        .collect()
}

/// Opens a connection to the first node, starting from a rotating one, that accepts it. Returns
/// the connection and the node's URL, redacted, for logs.
pub async fn connect(
    url: &SecretUrl,
    properties: ConnectionProperties,
) -> Result<(Connection, String), lapin::Error> {
    connect_avoiding(url, properties, None, NODE_TIMEOUT)
        .await
        .map(|(connection, node)| (connection, node.url))
}

/// The node a connection was opened to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectedNode {
    /// Its position in `WARREN_AMQP_URL`'s list, to avoid it on the next attempt.
    pub index: usize,
    /// Its URL, redacted, for logs.
    pub url: String,
}

/// As [`connect`], but tries the node at `avoid` last (the one a failover is leaving: killed,
/// paused or refusing) and gives each node `node_timeout` to finish the handshake, so a
/// publisher failing over inside a request does not spend its deadline on a paused node.
pub async fn connect_avoiding(
    url: &SecretUrl,
    properties: ConnectionProperties,
    avoid: Option<usize>,
    node_timeout: Duration,
) -> Result<(Connection, ConnectedNode), lapin::Error> {
    let nodes = nodes(url);
    let start = NEXT_NODE.fetch_add(1, Ordering::Relaxed);
    let mut last_error = None;
    for index in attempt_order(nodes.len(), start, avoid) {
        let Some(node) = nodes.get(index) else {
            break;
        };
        match tokio::time::timeout(node_timeout, Connection::connect(node, properties.clone()))
            .await
        {
            Ok(Ok(connection)) => {
                let url = redact_url(node);
                return Ok((connection, ConnectedNode { index, url }));
            }
            Ok(Err(error)) => {
                if nodes.len() > 1 {
                    tracing::warn!(node = %redact_url(node), %error, "broker node refused; trying the next");
                }
                last_error = Some(error);
            }
            Err(_) => {
                if nodes.len() > 1 {
                    tracing::warn!(node = %redact_url(node), "broker node did not answer in time; trying the next");
                }
                last_error = Some(lapin::Error::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the broker node did not answer in time",
                )));
            }
        }
    }
    Err(last_error.unwrap_or_else(|| {
        lapin::Error::from(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "no broker URL configured",
        ))
    }))
}

/// Closes `connection` with `reason`, giving up after [`CLOSE_TIMEOUT`] (see there why).
pub async fn close(connection: &Connection, reason: &str) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, reason.into())).await;
}

/// The order to try `count` nodes in: from `start` round the list, with `avoid` moved last.
fn attempt_order(count: usize, start: usize, avoid: Option<usize>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..count).map(|offset| (start + offset) % count).collect();
    if let Some(avoid) = avoid.filter(|_| count > 1) {
        order.retain(|&index| index != avoid);
        order.push(avoid);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_nodes_is_split_and_trimmed() {
        let url = SecretUrl::new("amqp://a:5672/%2f, amqp://b:5672/%2f,,amqp://c:5672/%2f");
        assert_eq!(
            nodes(&url),
            [
                "amqp://a:5672/%2f",
                "amqp://b:5672/%2f",
                "amqp://c:5672/%2f"
            ]
        );
    }

    #[test]
    fn the_avoided_node_is_tried_last() {
        assert_eq!(attempt_order(3, 0, None), [0, 1, 2]);
        assert_eq!(attempt_order(3, 4, None), [1, 2, 0]);
        assert_eq!(attempt_order(3, 1, Some(1)), [2, 0, 1]);
        assert_eq!(attempt_order(3, 0, Some(2)), [0, 1, 2]);
        // With one node there is nowhere else to go.
        assert_eq!(attempt_order(1, 7, Some(0)), [0]);
        assert!(attempt_order(0, 0, Some(0)).is_empty());
    }

    #[tokio::test]
    async fn a_dead_node_is_skipped_for_the_next() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_port = dead.local_addr().unwrap().port();
        drop(dead);
        let broker = std::env::var("WARREN_TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
        let url = SecretUrl::new(format!(
            "amqp://guest:guest@127.0.0.1:{dead_port}/%2f,{broker}"
        ));
        // Whichever node the rotation starts at, the live one is reached.
        for _ in 0..2 {
            let (connection, node) = connect(&url, ConnectionProperties::default())
                .await
                .unwrap();
            assert!(!node.contains(&dead_port.to_string()), "{node}");
            close(&connection, "test done").await;
        }
    }
}
