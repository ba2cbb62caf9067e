//! Warren's consumer: takes envelopes off the store queue, writes them to Postgres exactly once,
//! acknowledges only after the commit, and serves the read API.
//!
//! Two halves over one database: [`write`] (the store queue's worker) and [`read`] (the HTTP
//! API, queries, the schema registry). They share [`db`] and the worker's [`status`] only.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod db;
pub mod deliver;
pub mod read;
pub mod status;
pub mod write;

use std::future::Future;
use std::sync::Arc;

use service_runtime::backoff::backoff;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::ConsumerConfig;

use crate::db::DbError;
use crate::read::http::AppState;
use crate::status::WorkerStatus;

/// Runs the consumer until `shutdown` completes: migrates (under an advisory lock, retrying while
/// the database is unreachable), consumes, serves HTTP; on shutdown it cancels its subscription,
/// writes and acknowledges the current batch, and drains HTTP.
pub async fn run(
    listener: TcpListener,
    config: ConsumerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), DbError> {
    // Before any task records: a metric recorded earlier would go to no recorder.
    service_runtime::metrics::install();
    write::dead_letter::publish::zero_counters();
    for notice in &config.deprecations {
        tracing::warn!(%notice, "deprecated setting");
    }
    let cancel = CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);
    if !migrate_when_reachable(&config, &mut shutdown).await {
        return Ok(());
    }
    let write_pool = db::pool(
        config.database_url.expose(),
        config.pool_size,
        config.pool_timeout,
        config.write_timeout,
        db::Plans::ServerChoice,
    )?;
    let read_pool = db::pool(
        config.database_read_url.expose(),
        config.pool_size,
        config.pool_timeout,
        config.statement_timeout,
        db::Plans::Generic,
    )?;
    let config = Arc::new(config);
    let status = Arc::new(WorkerStatus::default());
    let maintenance = tokio::spawn(db::partitions::maintain(
        write_pool.clone(),
        config.retention,
        cancel.clone(),
    ));
    let copies = write::copy::pool(
        config.database_url.expose(),
        config.batch.writes_in_flight,
        config.pool_timeout,
        config.write_timeout,
    )
    .map_err(DbError::Pool)?;
    let worker = tokio::spawn(write::worker::run(
        Arc::clone(&config),
        write::store::Storage::new(write_pool.clone(), copies),
        Arc::clone(&status),
        cancel.clone(),
    ));
    if !config.auth.is_on() {
        tracing::warn!("WARREN_AUTH=off: anyone who reaches a consumer may query events");
    }
    // With a separate read URL (a replica), measure and export how far behind it is.
    let lag_watch = (config.database_read_url.expose() != config.database_url.expose())
        .then(|| tokio::spawn(read::replica::watch(read_pool.clone(), cancel.clone())));
    let state = Arc::new(AppState {
        read_pool: read_pool.clone(),
        write_pool: write_pool.clone(),
        worker: status,
        auth: config.auth.clone(),
        limiter: service_runtime::rate_limit::RateLimiter::new(config.read_limit),
        retry_after_secs: config.retry_after_secs,
        statement_timeout: config.statement_timeout,
        subscription_queues: deliver::queues::SubscriptionQueues::new(
            config.amqp_url.clone(),
            config.topology.clone(),
        ),
        delivery: config.delivery,
        secrets: deliver::secret_box::SecretBox::new(config.delivery.secret_key),
    });
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "consumer listening");
    }
    let stop_worker = cancel.clone();
    service_runtime::server::serve(
        listener,
        move |request, peer| read::http::handle(Arc::clone(&state), request, peer),
        config.server,
        async move {
            shutdown.await;
            stop_worker.cancel();
        },
    )
    .await;
    cancel.cancel();
    if let Err(error) = worker.await {
        tracing::error!(%error, "worker panicked");
    }
    if let Some(lag_watch) = lag_watch {
        if let Err(error) = lag_watch.await {
            tracing::error!(%error, "replica lag watch panicked");
        }
    }
    if let Err(error) = maintenance.await {
        tracing::error!(%error, "partition maintenance panicked");
    }
    write_pool.close();
    read_pool.close();
    tracing::info!("consumer stopped");
    Ok(())
}

/// Applies the migrations (under an advisory lock), retrying with backoff while the database is
/// unreachable; `false` when `shutdown` came first.
pub(crate) async fn migrate_when_reachable(
    config: &ConsumerConfig,
    shutdown: &mut std::pin::Pin<&mut (impl Future<Output = ()> + Send)>,
) -> bool {
    let mut failures = 0;
    loop {
        tokio::select! {
            () = shutdown.as_mut() => return false,
            migrated = db::migrate(config.database_url.expose()) => match migrated {
                Ok(_) => return true,
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%error, failures, "cannot migrate yet; retrying");
                    tokio::time::sleep(backoff(failures, config.max_backoff)).await;
                }
            }
        }
    }
}
