//! The `healthcheck` subcommand both binaries offer: container images have no curl.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No answer, or not in time.
    #[error("no answer from {0}: {1}")]
    Unreachable(SocketAddr, String),
    /// An answer other than 200.
    #[error("{0} answered: {1}")]
    Unhealthy(SocketAddr, String),
}

/// GETs `/healthz` on the service's own address; `0.0.0.0` is probed on loopback.
pub async fn probe(addr: SocketAddr) -> anyhow::Result<()> {
    let target = if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(target).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(3), exchange)
        .await
        .map_err(|_| ProbeError::Unreachable(target, "timed out".into()))?
        .map_err(|error| ProbeError::Unreachable(target, error.to_string()))?;
    let status_line = String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    if status_line.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(ProbeError::Unhealthy(target, status_line).into())
    }
}
