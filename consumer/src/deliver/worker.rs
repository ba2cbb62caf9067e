//! The delivery worker (`consumer deliver`): reads the subscriptions every
//! `WARREN_DELIVERY_REFRESH_MS`, consumes each active one's queue ([`super::live`]), delivers due
//! retries ([`super::retries`]) and replays ([`super::replay`]), pauses subscriptions whose sink
//! has failed too long, and serves `/healthz`, `/readyz` and `/metrics`. Workers share nothing
//! but RabbitMQ and PostgreSQL, so they scale with `docker compose up --scale delivery=N`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use lapin::types::LongString;
use lapin::ConnectionProperties;
use serde_json::json;
use service_runtime::backoff::backoff;
use service_runtime::http_error::SharedError;
use service_runtime::http_json;
use service_runtime::server::Peer;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::deliverer::Deliverer;
use super::retries::Snapshot;
use super::subscription::Status;
use super::{live, queues, replay, retries, store};
use crate::config::ConsumerConfig;
use crate::db::{self, database_answers, DbError, PgPool};

/// Why the delivery worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// The database pool could not be built.
    #[error(transparent)]
    Database(#[from] DbError),
    /// The HTTP client for sinks could not be built (TLS setup).
    #[error("cannot build the sink client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Runs a delivery worker until `shutdown` completes: in-flight deliveries finish, their
/// messages are acknowledged, then it exits.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: ConsumerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), DeliverError> {
    service_runtime::metrics::install();
    let mut shutdown = std::pin::pin!(shutdown);
    if !crate::migrate_when_reachable(&config, &mut shutdown).await {
        return Ok(());
    }
    let pool = db::pool(
        config.database_url.expose(),
        config.pool_size,
        config.pool_timeout,
        config.write_timeout,
        db::Plans::ServerChoice,
    )?;
    let deliverer = Arc::new(Deliverer::new(pool.clone(), config.delivery)?);
    let config = Arc::new(config);
    let cancel = CancellationToken::new();
    let consuming = Arc::new(AtomicBool::new(false));
    let (publish, subscriptions) = watch::channel(Snapshot::default());
    let tasks = vec![
        tokio::spawn(refresh(
            Arc::clone(&config),
            pool.clone(),
            publish,
            cancel.clone(),
        )),
        tokio::spawn(retries::run(
            Arc::clone(&deliverer),
            subscriptions.clone(),
            cancel.clone(),
        )),
        tokio::spawn(replay::run(
            Arc::clone(&deliverer),
            subscriptions.clone(),
            cancel.clone(),
        )),
        tokio::spawn(sessions(
            Arc::clone(&config),
            Arc::clone(&deliverer),
            subscriptions,
            Arc::clone(&consuming),
            cancel.clone(),
        )),
    ];
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "delivery worker listening");
    }
    let stop = cancel.clone();
    let health = Arc::new((pool.clone(), consuming));
    service_runtime::server::serve(
        listener,
        move |request, peer| handle(Arc::clone(&health), request, peer),
        config.server,
        async move {
            shutdown.await;
            stop.cancel();
        },
    )
    .await;
    cancel.cancel();
    for task in tasks {
        if let Err(error) = task.await {
            tracing::error!(%error, "delivery task panicked");
        }
    }
    pool.close();
    tracing::info!("delivery worker stopped");
    Ok(())
}

async fn handle(
    health: Arc<(PgPool, Arc<AtomicBool>)>,
    request: Request<Incoming>,
    _peer: Peer,
) -> Response<Full<Bytes>> {
    match request.uri().path() {
        "/healthz" => http_json::json(StatusCode::OK, &json!({"status": "ok"})),
        "/readyz" => {
            let broker = health.1.load(Ordering::Acquire);
            let database = database_answers(&health.0).await;
            http_json::readiness(
                broker && database,
                json!({"broker": broker, "database": database}),
            )
        }
        "/metrics" => service_runtime::metrics::response(),
        _ => SharedError::NoRoute.into_response(),
    }
}

/// Reads the subscriptions, pauses the ones failing too long, and exports their gauges.
async fn refresh(
    config: Arc<ConsumerConfig>,
    pool: PgPool,
    publish: watch::Sender<Snapshot>,
    cancel: CancellationToken,
) {
    let pause_after = i64::try_from(config.delivery.pause_after.as_secs()).unwrap_or(i64::MAX);
    let secrets = super::secret_box::SecretBox::new(config.delivery.secret_key);
    // Counting retries and dead letters reads those tables whole: a sink down for an hour leaves
    // millions of rows, so the gauges are refreshed every BACKLOG_EVERY rounds, not every round.
    const BACKLOG_EVERY: u32 = 10;
    let mut round = 0u32;
    let mut backlog = HashMap::new();
    loop {
        match pool.get().await {
            Ok(mut conn) => {
                if pause_after > 0 {
                    match store::pause_failing(&mut conn, pause_after).await {
                        Ok(0) => {}
                        Ok(paused) => {
                            tracing::warn!(paused, "paused subscriptions whose sink kept failing")
                        }
                        Err(error) => tracing::warn!(%error, "cannot pause failing subscriptions"),
                    }
                }
                match store::list(&mut conn, &secrets).await {
                    Ok(list) => {
                        if round.is_multiple_of(BACKLOG_EVERY) {
                            backlog = store::backlog(&mut conn).await.unwrap_or_default();
                        }
                        round = round.wrapping_add(1);
                        for subscription in &list {
                            let label = subscription.id.to_string();
                            let paused =
                                f64::from(u8::from(subscription.spec.status == Status::Paused));
                            metrics::gauge!("warren_delivery_paused", "subscription" => label.clone()).set(paused);
                            let (waiting, dead) =
                                backlog.get(&subscription.id).copied().unwrap_or_default();
                            metrics::gauge!("warren_delivery_retries_waiting", "subscription" => label.clone()).set(waiting as f64);
                            metrics::gauge!("warren_delivery_dead_letters", "subscription" => label).set(dead as f64);
                        }
                        let snapshot: HashMap<Uuid, Arc<_>> = list
                            .into_iter()
                            .map(|subscription| (subscription.id, Arc::new(subscription)))
                            .collect();
                        publish.send_replace(Arc::new(snapshot));
                    }
                    Err(error) => tracing::warn!(%error, "cannot read the subscriptions"),
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read the subscriptions"),
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(config.delivery.refresh) => {}
        }
    }
}

/// Why a broker session ended, other than shutdown.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker connection was lost")]
    ConnectionLost,
}

/// One subscription's consumer, and the version of the subscription it delivers.
struct Running {
    updated_at: DateTime<Utc>,
    stop: CancellationToken,
    task: JoinHandle<Result<live::Ended, lapin::Error>>,
}

/// Broker sessions: consume every active subscription's queue; reconnect with backoff when the
/// connection fails.
async fn sessions(
    config: Arc<ConsumerConfig>,
    deliverer: Arc<Deliverer>,
    mut subscriptions: watch::Receiver<Snapshot>,
    consuming: Arc<AtomicBool>,
    cancel: CancellationToken,
) {
    let mut failures = 0;
    while !cancel.is_cancelled() {
        let result = session(&config, &deliverer, &mut subscriptions, &consuming, &cancel).await;
        consuming.store(false, Ordering::Release);
        match result {
            Ok(()) => break,
            Err(error) => {
                failures += 1;
                tracing::warn!(%error, failures, "delivery session ended; reconnecting");
            }
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(backoff(failures, config.max_backoff)) => {}
        }
    }
}

async fn session(
    config: &ConsumerConfig,
    deliverer: &Arc<Deliverer>,
    subscriptions: &mut watch::Receiver<Snapshot>,
    consuming: &AtomicBool,
    cancel: &CancellationToken,
) -> Result<(), SessionError> {
    let properties =
        ConnectionProperties::default().with_connection_name(LongString::from("warren-delivery"));
    let (connection, node) = service_runtime::amqp::connect(&config.amqp_url, properties).await?;
    tracing::info!(%node, "delivery connection open");
    config.topology.declare_exchange(&connection).await?;
    consuming.store(true, Ordering::Release);
    let mut running: HashMap<Uuid, Running> = HashMap::new();
    // Subscriptions a consumer stopped for (a 410 pause, a missing queue), by the version it
    // delivered: not restarted until the subscription changes (or goes).
    let mut paused_here: HashMap<Uuid, DateTime<Utc>> = HashMap::new();
    let result = loop {
        let snapshot = subscriptions.borrow_and_update().clone();
        // Stop what was deleted, paused or changed; the changed ones start again below.
        let stale: Vec<Uuid> = running
            .iter()
            .filter(|(id, run)| {
                snapshot.get(id).is_none_or(|s| {
                    s.spec.status != Status::Active || s.updated_at != run.updated_at
                })
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(run) = running.remove(&id) {
                run.stop.cancel();
                let _ = run.task.await;
            }
        }
        // A consumer that ended (its queue deleted, its channel closed) starts again below if
        // its subscription is still active.
        let finished: Vec<Uuid> = running
            .iter()
            .filter(|(_, run)| run.task.is_finished())
            .map(|(id, _)| *id)
            .collect();
        for id in finished {
            if let Some(run) = running.remove(&id) {
                match run.task.await {
                    Ok(Ok(live::Ended::Paused)) => {
                        paused_here.insert(id, run.updated_at);
                    }
                    Ok(Ok(live::Ended::QueueMissing)) => {
                        tracing::warn!(subscription = %id, "the subscription's queue does not exist; deleted, or lost (PUT the subscription to declare it again)");
                        paused_here.insert(id, run.updated_at);
                    }
                    Ok(Ok(live::Ended::Stopped)) => {
                        tracing::info!(subscription = %id, "a subscription's consumer ended");
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(subscription = %id, %error, "a subscription's consumer failed");
                    }
                    Err(error) => {
                        tracing::error!(subscription = %id, %error, "a subscription's consumer panicked")
                    }
                }
            }
        }
        paused_here
            .retain(|id, version| snapshot.get(id).is_some_and(|s| s.updated_at == *version));
        if !connection.status().connected() {
            break Err(SessionError::ConnectionLost);
        }
        for subscription in snapshot.values() {
            // A consumer that stopped for a 410 or a missing queue waits for the snapshot to show
            // the pause (or the change that declares the queue again), not for the next round:
            // restarting it from a snapshot read before the pause would attempt the next event.
            if subscription.spec.status != Status::Active
                || running.contains_key(&subscription.id)
                || paused_here.contains_key(&subscription.id)
            {
                continue;
            }
            let channel = match connection.create_channel().await {
                Ok(channel) => channel,
                Err(error) => {
                    tracing::warn!(%error, "cannot open a channel; trying again next round");
                    break;
                }
            };
            let stop = cancel.child_token();
            let task = tokio::spawn(live::consume(
                channel,
                config.topology.clone(),
                Arc::clone(deliverer),
                Arc::clone(subscription),
                stop.clone(),
            ));
            running.insert(
                subscription.id,
                Running {
                    updated_at: subscription.updated_at,
                    stop,
                    task,
                },
            );
        }
        report_depths(&connection, config, &snapshot).await;
        tokio::select! {
            () = cancel.cancelled() => break Ok(()),
            _ = subscriptions.changed() => {}
            () = tokio::time::sleep(config.delivery.refresh) => {}
        }
    };
    for (_, run) in running.drain() {
        run.stop.cancel();
        let _ = run.task.await;
    }
    // A connection whose broker went away may never answer the close; the reconnect must not
    // wait on it.
    service_runtime::amqp::close(&connection, "delivery session ended").await;
    result
}

/// Exports each active subscription's queue depth (messages waiting).
async fn report_depths(
    connection: &lapin::Connection,
    config: &ConsumerConfig,
    snapshot: &Snapshot,
) {
    let Ok(channel) = connection.create_channel().await else {
        return;
    };
    for subscription in snapshot.values() {
        let queue = queues::queue_name(&config.topology, subscription.id);
        let declared = channel
            .queue_declare(
                queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await;
        match declared {
            Ok(found) => metrics::gauge!("warren_delivery_queue_depth", "subscription" => subscription.id.to_string())
                .set(f64::from(found.message_count())),
            // A passive declare of a missing queue closes the channel: stop here this round.
            Err(_) => return,
        }
    }
    let _ = channel.close(200, "depths read".into()).await;
}
