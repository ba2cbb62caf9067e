//! Warren's ingest gateway: CloudEvents over HTTP in, confirmed AMQP publishes out.
//!
//! A request gets 202 only after RabbitMQ confirmed every event in it; anything else is an error
//! the client can retry. [`run`] is the whole service; tests call [`serve_with`] to drive the real
//! HTTP stack with any [`publish::EventPublisher`].
#![forbid(unsafe_code)]

pub mod coalesce;
pub mod config;
pub mod decode;
pub mod dispatch;
pub mod http;
pub mod publish;
pub mod request_id;
pub mod schema_registry;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use service_runtime::server::Listeners;
use tokio_util::sync::CancellationToken;

pub use config::GatewayConfig;

use crate::http::AppState;
use crate::publish::{BrokerPublisher, EventPublisher};

/// Runs the gateway on `listeners` until `shutdown` completes, then drains in-flight requests
/// (and their confirms) and closes the broker connection.
pub async fn run(
    listeners: impl Into<Listeners>,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send,
) {
    // Before the broker task starts: a gauge it sets earlier would go to no recorder.
    service_runtime::metrics::install();
    let cancel = CancellationToken::new();
    let (publisher, supervisor) = BrokerPublisher::start(config.broker.clone(), cancel.clone());
    serve_with(listeners, config, publisher, shutdown).await;
    cancel.cancel();
    if let Err(error) = supervisor.await {
        tracing::error!(%error, "broker supervisor panicked");
    }
    tracing::info!("gateway stopped");
}

/// Serves the HTTP API with `publisher` until `shutdown`; `/readyz` turns red as soon as it fires.
/// Returns whether every connection drained within the grace period.
pub async fn serve_with<P: EventPublisher>(
    listeners: impl Into<Listeners>,
    config: GatewayConfig,
    publisher: P,
    shutdown: impl Future<Output = ()> + Send,
) -> bool {
    let settings = config.server;
    service_runtime::metrics::install();
    for cause in http::error::unavailable_causes() {
        metrics::counter!("warren_gateway_unavailable_total", "cause" => cause).increment(0);
    }
    for failover in publish::FAILOVER_COUNTERS {
        metrics::counter!(failover).increment(0);
    }
    if !config.auth.is_on() {
        tracing::warn!("WARREN_AUTH=off: anyone who reaches the gateway may ingest events");
    }
    let schemas = Arc::new(schema_registry::enforce::Schemas::default());
    let stop_refresh = CancellationToken::new();
    let refresh = config.schema_registry.clone().map(|registry| {
        tokio::spawn(schema_registry::refresh::run(
            registry,
            Arc::clone(&schemas),
            stop_refresh.clone(),
        ))
    });
    let state = Arc::new(AppState {
        limiter: service_runtime::rate_limit::RateLimiter::new(config.ingest_limit),
        dispatcher: dispatch::Dispatcher::new(publisher, config.coalesce),
        config,
        draining: AtomicBool::new(false),
        schemas,
    });
    let listeners = listeners.into();
    if let Ok(address) = listeners.tcp.local_addr() {
        tracing::info!(%address, "gateway listening");
    }
    if let Some(socket) = &listeners.unix {
        tracing::info!(socket = %socket.path().display(), "gateway listening");
    }
    let draining = Arc::clone(&state);
    let shutdown = async move {
        shutdown.await;
        draining.draining.store(true, Ordering::Release);
    };
    let drained = service_runtime::server::serve(
        listeners,
        move |request, peer| http::handle(Arc::clone(&state), request, peer),
        settings,
        shutdown,
    )
    .await;
    stop_refresh.cancel();
    if let Some(refresh) = refresh {
        if let Err(error) = refresh.await {
            tracing::error!(%error, "schema refresh panicked");
        }
    }
    drained
}
