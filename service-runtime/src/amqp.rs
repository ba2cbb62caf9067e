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
    let nodes = nodes(url);
    let start = NEXT_NODE.fetch_add(1, Ordering::Relaxed);
    let mut last_error = None;
    for offset in 0..nodes.len().max(1) {
        let Some(node) = nodes.get((start + offset) % nodes.len().max(1)) else {
            break;
        };
        match tokio::time::timeout(NODE_TIMEOUT, Connection::connect(node, properties.clone()))
            .await
        {
            Ok(Ok(connection)) => return Ok((connection, redact_url(node))),
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
            let _ = connection.close(200, "test done".into()).await;
        }
    }
}
