//! The HTTP accept loop both services run: hyper 1.x with bounded headers, a header read timeout
//! that cuts slowloris clients, and a graceful drain with a deadline; on a TCP address, and on a
//! unix socket beside it when one is configured.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixStream};

use crate::unix_socket::UnixSocket;

/// Default of `WARREN_HEADER_TIMEOUT_MS`; also how long an idle keep-alive connection stays open,
/// so nginx's upstream `keepalive_timeout` must stay below it (`scripts/check/check-deploy` reads it).
pub const DEFAULT_HEADER_TIMEOUT_MS: u64 = 10_000;

/// Connection-level bounds.
#[derive(Debug, Clone, Copy)]
pub struct ServerSettings {
    /// A client must finish sending its request headers within this time.
    pub header_read_timeout: Duration,
    /// Largest request head the services accept with a JSON 431; hyper itself cuts the
    /// connection at four times this (see [`ServerSettings::hard_header_limit`]).
    pub max_header_bytes: usize,
    /// How long in-flight requests may take to finish after shutdown starts.
    pub shutdown_grace: Duration,
}

impl ServerSettings {
    /// The one default for every bound, used by [`ServerSettings::from_settings`] and `Default`.
    const DEFAULT: ServerSettings = ServerSettings {
        header_read_timeout: Duration::from_millis(DEFAULT_HEADER_TIMEOUT_MS),
        max_header_bytes: 16 * 1024,
        shutdown_grace: Duration::from_secs(25),
    };

    /// `WARREN_HEADER_TIMEOUT_MS`, `WARREN_MAX_HEADER_BYTES` and `WARREN_SHUTDOWN_GRACE_MS`.
    pub fn from_settings(
        settings: &crate::config::Settings<'_>,
    ) -> Result<Self, crate::config::ConfigError> {
        Ok(Self {
            header_read_timeout: settings.millis(
                "WARREN_HEADER_TIMEOUT_MS",
                millis(Self::DEFAULT.header_read_timeout),
                100..=600_000,
            )?,
            max_header_bytes: settings.bounded(
                "WARREN_MAX_HEADER_BYTES",
                Self::DEFAULT.max_header_bytes,
                8192..=1024 * 1024,
            )?,
            shutdown_grace: settings.millis(
                "WARREN_SHUTDOWN_GRACE_MS",
                millis(Self::DEFAULT.shutdown_grace),
                0..=600_000,
            )?,
        })
    }

    /// Where hyper stops reading a request head. Above `max_header_bytes` so that the handler
    /// can answer an oversized head with the JSON error shape instead of a bare status.
    pub fn hard_header_limit(&self) -> usize {
        self.max_header_bytes.saturating_mul(4).max(8192)
    }
}

/// The size of a request head as the limit counts it: header names and values plus separators.
pub fn head_size(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self::DEFAULT
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// What a service accepts connections on: its TCP address always (health checks and metrics
/// use it), and a unix socket beside it when configured, for nginx on the same host.
#[derive(Debug)]
pub struct Listeners {
    /// The TCP listener.
    pub tcp: TcpListener,
    /// The unix socket, if any.
    pub unix: Option<UnixSocket>,
}

impl From<TcpListener> for Listeners {
    fn from(tcp: TcpListener) -> Self {
        Self { tcp, unix: None }
    }
}

/// Who is at the other end of a connection, for log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A TCP client (behind nginx: nginx's address).
    Tcp(SocketAddr),
    /// A client of the unix socket (nginx on the same host).
    Unix,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(address) => address.fmt(f),
            Peer::Unix => f.write_str("unix"),
        }
    }
}

/// Serves `handler` on `listeners` until `shutdown` completes, then drains open connections for
/// at most `settings.shutdown_grace`. Returns whether every connection finished in time.
pub async fn serve<H, F>(
    listeners: impl Into<Listeners>,
    handler: H,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()>,
) -> bool
where
    H: Fn(Request<Incoming>, Peer) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let Listeners { tcp, unix } = listeners.into();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.hard_header_limit());
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        let accepted = tokio::select! {
            accepted = tcp.accept() => accepted.map(|(stream, peer)| {
                let _ = stream.set_nodelay(true);
                Accepted::Tcp(stream, peer)
            }),
            accepted = accept_unix(unix.as_ref()) => accepted.map(Accepted::Unix),
            () = &mut shutdown => break,
        };
        match accepted {
            Ok(Accepted::Tcp(stream, peer)) => {
                spawn_connection(
                    &builder,
                    &graceful,
                    stream,
                    Peer::Tcp(peer),
                    handler.clone(),
                );
            }
            Ok(Accepted::Unix(stream)) => {
                spawn_connection(&builder, &graceful, stream, Peer::Unix, handler.clone());
            }
            Err(error) => {
                // Usually EMFILE: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(tcp);
    drop(unix);
    tokio::select! {
        () = graceful.shutdown() => true,
        () = tokio::time::sleep(settings.shutdown_grace) => {
            tracing::warn!(grace = ?settings.shutdown_grace, "connections still open after the shutdown grace period");
            false
        }
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream, SocketAddr),
    Unix(UnixStream),
}

/// The next connection on the unix socket; never, when there is none.
async fn accept_unix(socket: Option<&UnixSocket>) -> std::io::Result<UnixStream> {
    match socket {
        Some(socket) => socket.accept().await,
        None => std::future::pending().await,
    }
}

fn spawn_connection<S, H, F>(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    stream: S,
    peer: Peer,
    handler: H,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>, Peer) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let response = handler(request, peer);
        async move { Ok::<_, Infallible>(response.await) }
    });
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .into_owned();
    let connection = graceful.watch(connection);
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%peer, error = %error, "connection closed with an error");
        }
    });
}
