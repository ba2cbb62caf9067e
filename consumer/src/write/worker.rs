//! The write path: deliveries in, one transaction per batch, acks only after the commit.
//! Up to `WARREN_WRITES_IN_FLIGHT` batches are written at once, and acknowledged in the order
//! they were taken, so one acknowledgement with `multiple` never covers an uncommitted batch.
//!
//! Failure handling follows one rule: a good event is never dead-lettered. A message that cannot
//! be decoded is rejected without requeue (the broker dead-letters it). A failing write is retried
//! with backoff while its deliveries stay unacknowledged; only when the database answers health
//! checks and the same batch still fails is it split, and a message that fails alone on a healthy
//! database is dead-lettered.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, LongString};
use lapin::{Connection, ConnectionProperties};
use service_runtime::backoff::backoff;
use service_runtime::topology::Topology;
use shared_types::compression::{encode_like, DecompressError};
use shared_types::envelope::Envelope;
use shared_types::RequestPart;
use tokio_util::sync::CancellationToken;

use crate::config::ConsumerConfig;
use crate::db::{self, PgPool};
use crate::status::WorkerStatus;
use crate::write::batch::{Batch, Pending};
use crate::write::dead_letter::{DeadLetterError, DeadLetters};
use crate::write::store::{self, Duplicates, Storage};

/// Failed attempts of one batch, on a database that answers health checks, before it is split.
const ATTEMPTS_BEFORE_ISOLATING: u32 = 3;

/// Most request ids listed on one batch log line.
const LOGGED_REQUEST_IDS: usize = 20;
/// How often the consuming connection's state is checked.
const CONNECTION_CHECK: Duration = Duration::from_secs(1);

/// Why a consuming session ended, other than shutdown.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("broker setup: {0}")]
    Setup(#[from] service_runtime::topology::SetupError),
    #[error("the broker cancelled the subscription or closed the channel")]
    SubscriptionEnded,
    #[error("the database went away while a batch was being split")]
    DatabaseLost,
    #[error("the broker connection was lost")]
    ConnectionLost,
    #[error("dead-lettering refused events failed: {0}")]
    DeadLetter(#[from] DeadLetterError),
    #[error("re-encoding refused events for the dead-letter queue failed: {0}")]
    Reencode(#[from] DecompressError),
}

/// Consumes until `cancel` fires, reconnecting with backoff whenever the broker connection fails.
pub async fn run(
    config: Arc<ConsumerConfig>,
    storage: Storage,
    status: Arc<WorkerStatus>,
    cancel: CancellationToken,
) {
    let mut failures = 0;
    while !cancel.is_cancelled() {
        let result = session(&config, &storage, &status, &cancel).await;
        status.consuming.store(false, Ordering::Release);
        match result {
            Ok(()) => break,
            Err(error) => {
                failures += 1;
                tracing::warn!(%error, failures, "consumer session ended; reconnecting");
            }
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(backoff(failures, config.max_backoff)) => {}
        }
    }
    tracing::info!("consumer stopped");
}

async fn session(
    config: &ConsumerConfig,
    storage: &Storage,
    status: &WorkerStatus,
    cancel: &CancellationToken,
) -> Result<(), SessionError> {
    let properties =
        ConnectionProperties::default().with_connection_name(LongString::from("warren-consumer"));
    let (connection, node) = service_runtime::amqp::connect(&config.amqp_url, properties).await?;
    tracing::info!(%node, "consuming connection open");
    config
        .topology
        .declare(&connection, config.queue_limits)
        .await?;
    let dead_letters = DeadLetters::open(&config.amqp_url, &config.topology).await?;
    let result = consume(config, storage, status, cancel, &connection, &dead_letters).await;
    // Closing a connection that broke returns at once; one that hangs must not hold the
    // reconnect back.
    let closing = async {
        dead_letters.close().await;
        let _ = connection.close(200, "consumer session ended".into()).await;
    };
    let _ = tokio::time::timeout(service_runtime::amqp::CLOSE_TIMEOUT, closing).await;
    result
}

/// Takes deliveries into batches and writes them until `cancel` fires or the broker fails.
async fn consume(
    config: &ConsumerConfig,
    storage: &Storage,
    status: &WorkerStatus,
    cancel: &CancellationToken,
    connection: &Connection,
    dead_letters: &DeadLetters,
) -> Result<(), SessionError> {
    let queues = queues_to_consume(&config.topology, connection).await?;
    // The depth reader lives as long as this session.
    let stop_depth = cancel.child_token();
    let _stop_depth_on_return = stop_depth.clone().drop_guard();
    tokio::spawn(crate::write::depth::report(
        connection.create_channel().await?,
        queues.clone(),
        stop_depth,
    ));
    let channel = connection.create_channel().await?;
    // Prefetch applies per consumer on quorum queues: split it so the total stays bounded.
    let per_queue = config
        .batch
        .prefetch
        .div_ceil(u16::try_from(queues.len()).unwrap_or(u16::MAX))
        .max(1);
    channel
        .basic_qos(per_queue, BasicQosOptions::default())
        .await?;
    let tag = format!(
        "warren-consumer-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    let mut subscriptions = Vec::with_capacity(queues.len());
    let mut tags = Vec::with_capacity(queues.len());
    for (index, queue) in queues.iter().enumerate() {
        let queue_tag = format!("{tag}-{index}");
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                queue_tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(%queue, consumer_tag = %queue_tag, prefetch = per_queue, "consuming");
        subscriptions.push(consumer);
        tags.push(queue_tag);
    }
    // One channel for every queue: its delivery tags are one sequence, so acking a batch with
    // `multiple` up to its highest tag covers deliveries from every shard.
    let mut deliveries = futures_util::stream::select_all(subscriptions);
    status.consuming.store(true, Ordering::Release);

    let mut batch = Batch::new(config.batch);
    // Writes run while the next batch fills; their outcomes come out in the order they started,
    // so a batch is acknowledged only after every batch before it was.
    let mut writes = FuturesOrdered::new();
    // Before a batch is handed over, running writes are settled until at most this many are left.
    let room = config.batch.writes_in_flight.saturating_sub(1);
    // The consumer stream is not always ended when the connection breaks (seen after a broker
    // container restart: lapin logged the reset, the stream stayed pending, and the consumer
    // never reconnected), so the connection's state is checked on its own too.
    let mut connection_check = tokio::time::interval(CONNECTION_CHECK);
    connection_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let deadline = batch.deadline();
        tokio::select! {
            biased;
            () = cancel.cancelled() => {
                status.consuming.store(false, Ordering::Release);
                for tag in &tags {
                    let _ = channel
                        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                        .await;
                }
                if settle_until(&mut writes, 0, storage).await? == Flow::Stop {
                    return Ok(());
                }
                if !batch.is_empty() {
                    let written = write(config, storage, dead_letters, batch.take(), cancel).await?;
                    settle(storage, written).await?;
                }
                return Ok(());
            }
            Some(written) = writes.next(), if !writes.is_empty() => {
                if settle(storage, written?).await? == Flow::Stop {
                    return Ok(());
                }
            }
            () = sleep_until(deadline) => {
                if settle_until(&mut writes, room, storage).await? == Flow::Stop {
                    return Ok(());
                }
                writes.push_back(write(config, storage, dead_letters, batch.take(), cancel));
            }
            _ = connection_check.tick() => {
                if !connection.status().connected() {
                    return Err(SessionError::ConnectionLost);
                }
            }
            delivery = deliveries.next() => {
                let delivery = match delivery {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(error)) => return Err(error.into()),
                    None => return Err(SessionError::SubscriptionEnded),
                };
                metrics::counter!("warren_consumer_deliveries_total").increment(1);
                let encoding = delivery.properties.content_encoding().as_ref().map(|e| e.as_str());
                match Envelope::decode_message(&delivery.data, encoding) {
                    Ok(envelope) => {
                        batch.push(Pending {
                            acker: delivery.acker,
                            delivery_tag: delivery.delivery_tag,
                            envelope,
                            routing_key: delivery.routing_key.to_string(),
                            properties: delivery.properties,
                            redelivered: delivery.redelivered,
                        });
                        if batch.is_full() {
                            if settle_until(&mut writes, room, storage).await? == Flow::Stop {
                                return Ok(());
                            }
                            writes.push_back(write(config, storage, dead_letters, batch.take(), cancel));
                        }
                    }
                    Err(error) => {
                        tracing::warn!(
                            delivery_tag = delivery.delivery_tag,
                            bytes = delivery.data.len(),
                            reason = %error,
                            "dead-lettering a message that cannot be decoded"
                        );
                        dead_letters
                            .settle(
                                &delivery.acker,
                                delivery.routing_key.as_str(),
                                &delivery.data,
                                &delivery.properties,
                                &format!("undecodable: {error}"),
                            )
                            .await?;
                    }
                }
            }
        }
    }
}

/// The store queues, and with several shards also the unsharded store queue while it exists, so
/// what a single-shard deployment left in it is drained after the switch (docs/scaling.md).
async fn queues_to_consume(
    topology: &Topology,
    connection: &Connection,
) -> Result<Vec<String>, SessionError> {
    let mut queues = topology.store_queues();
    if topology.shards() > 1 && topology.store_queue_exists(connection).await? {
        queues.push(topology.store_queue());
    }
    Ok(queues)
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// What became of a batch handed to [`write`].
enum Written {
    /// Committed; its deliveries still wait for their acknowledgement.
    Stored(StoredBatch),
    /// Split after repeated failures: each delivery was settled on its own already.
    Isolated,
    /// Shutdown came during a database outage: left unacknowledged for the broker to redeliver.
    Abandoned,
}

/// A committed batch, with what its log line and metrics report.
struct StoredBatch {
    items: Vec<Pending>,
    events: usize,
    inserted: usize,
    /// From the first attempt to the commit (not counting the wait for earlier batches' acks).
    write_seconds: f64,
}

/// Whether the session goes on taking deliveries after a write was settled.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    /// A batch was abandoned: no later batch may be acknowledged, since acknowledging with
    /// `multiple` would cover the abandoned deliveries too.
    Stop,
}

/// Writes one batch (the deliveries and event count [`Batch::take`] gives), retrying while the
/// database is away. It does not acknowledge: [`settle`] does, in the order the writes started.
async fn write(
    config: &ConsumerConfig,
    storage: &Storage,
    dead_letters: &DeadLetters,
    (items, events): (Vec<Pending>, usize),
    cancel: &CancellationToken,
) -> Result<Written, SessionError> {
    if !config.write_delay.is_zero() {
        tokio::time::sleep(config.write_delay).await;
    }
    let started = tokio::time::Instant::now();
    let mut failures = 0u32;
    let duplicates = if items.iter().any(|pending| pending.redelivered) {
        Duplicates::Skip
    } else {
        Duplicates::Fail
    };
    loop {
        let parts: Vec<&RequestPart> = items.iter().flat_map(|p| &p.envelope.parts).collect();
        match store::write(storage, &parts, config.retry_window, duplicates).await {
            Ok(inserted) => {
                return Ok(Written::Stored(StoredBatch {
                    items,
                    events,
                    inserted,
                    write_seconds: started.elapsed().as_secs_f64(),
                }))
            }
            Err(error) => {
                failures += 1;
                metrics::counter!("warren_consumer_write_failures_total", "queue" => config.topology.store_queue())
                    .increment(1);
                tracing::warn!(%error, failures, events, "batch write failed; holding its deliveries");
                if failures >= ATTEMPTS_BEFORE_ISOLATING
                    && db::database_answers(&storage.pool).await
                {
                    isolate(config, storage, dead_letters, items).await?;
                    return Ok(Written::Isolated);
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => {
                tracing::warn!(events, "shutting down with an unwritten batch; the broker will redeliver it");
                return Ok(Written::Abandoned);
            }
            () = tokio::time::sleep(backoff(failures, config.max_backoff)) => {}
        }
    }
}

/// Acknowledges a committed batch: every delivery up to its highest tag at once, which is right
/// because every batch before it was settled already.
async fn settle(storage: &Storage, written: Written) -> Result<Flow, SessionError> {
    let batch = match written {
        Written::Stored(batch) => batch,
        Written::Isolated => return Ok(Flow::Continue),
        Written::Abandoned => return Ok(Flow::Stop),
    };
    if let Some(last) = batch.items.iter().max_by_key(|p| p.delivery_tag) {
        last.acker.ack(BasicAckOptions { multiple: true }).await?;
    }
    record_batch(
        &storage.pool,
        &batch.items,
        batch.events,
        batch.inserted,
        batch.write_seconds,
    );
    let request_ids: Vec<&str> = batch
        .items
        .iter()
        .flat_map(|p| &p.envelope.parts)
        .map(|part| part.request_id.as_str())
        .take(LOGGED_REQUEST_IDS)
        .collect();
    tracing::info!(
        messages = batch.items.len(),
        events = batch.events,
        inserted = batch.inserted,
        duplicates = batch.events - batch.inserted,
        write_ms = batch.write_seconds * 1000.0,
        ?request_ids,
        "stored batch"
    );
    Ok(Flow::Continue)
}

/// Settles finished writes, oldest first, until at most `running` are left.
async fn settle_until<F>(
    writes: &mut FuturesOrdered<F>,
    running: usize,
    storage: &Storage,
) -> Result<Flow, SessionError>
where
    F: Future<Output = Result<Written, SessionError>>,
{
    while writes.len() > running {
        let Some(written) = writes.next().await else {
            break;
        };
        if settle(storage, written?).await? == Flow::Stop {
            return Ok(Flow::Stop);
        }
    }
    Ok(Flow::Continue)
}

/// Batch size, write time, rows, acks, pool use and end-to-end lag of one stored batch.
fn record_batch(pool: &PgPool, items: &[Pending], events: usize, inserted: usize, seconds: f64) {
    metrics::histogram!("warren_consumer_batch_events").record(events as f64);
    metrics::histogram!("warren_consumer_batch_write_seconds").record(seconds);
    metrics::counter!("warren_consumer_rows_inserted_total").increment(inserted as u64);
    metrics::counter!("warren_consumer_duplicates_skipped_total")
        .increment(events.saturating_sub(inserted) as u64);
    metrics::counter!("warren_consumer_acks_total").increment(items.len() as u64);
    let status = pool.status();
    metrics::gauge!("warren_consumer_db_pool_connections_in_use", "pool" => "write")
        .set(status.size as f64 - status.available as f64);
    let now = chrono::Utc::now();
    for part in items.iter().flat_map(|p| &p.envelope.parts) {
        let lag = (now - part.received_at).num_microseconds().unwrap_or(0);
        metrics::histogram!("warren_consumer_end_to_end_lag_seconds").record(lag as f64 / 1e6);
    }
}

/// The database is up but the batch keeps failing: write message by message, and within a
/// message that fails alone, event by event. Only the events the database refuses on their own
/// are dead-lettered (in one envelope, with the database's reason); the rest are stored.
async fn isolate(
    config: &ConsumerConfig,
    storage: &Storage,
    dead_letters: &DeadLetters,
    items: Vec<Pending>,
) -> Result<(), SessionError> {
    for pending in items {
        let parts: Vec<&RequestPart> = pending.envelope.parts.iter().collect();
        if store::write(storage, &parts, config.retry_window, Duplicates::Skip)
            .await
            .is_ok()
        {
            pending.acker.ack(BasicAckOptions::default()).await?;
            metrics::counter!("warren_consumer_acks_total").increment(1);
            continue;
        }
        if !db::database_answers(&storage.pool).await {
            // Leave this and the rest unacknowledged: the broker redelivers them.
            return Err(SessionError::DatabaseLost);
        }
        let mut refused_parts = Vec::new();
        let mut reason = String::new();
        for part in &pending.envelope.parts {
            let mut refused = Vec::new();
            for event in &part.events {
                let single = RequestPart::new(
                    part.request_id.clone(),
                    part.received_at,
                    vec![event.clone()],
                );
                if let Err(error) =
                    store::write(storage, &[&single], config.retry_window, Duplicates::Skip).await
                {
                    if !db::database_answers(&storage.pool).await {
                        return Err(SessionError::DatabaseLost);
                    }
                    if reason.is_empty() {
                        reason = format!("database refused the event: {error}");
                    }
                    refused.push(event.clone());
                }
            }
            if !refused.is_empty() {
                tracing::error!(
                    request_id = %part.request_id,
                    refused = refused.len(),
                    stored = part.events.len() - refused.len(),
                    %reason,
                    "dead-lettering events the database refuses"
                );
                refused_parts.push(RequestPart::new(
                    part.request_id.clone(),
                    part.received_at,
                    refused,
                ));
            }
        }
        if !refused_parts.is_empty() {
            let dead = Envelope::new(refused_parts);
            let properties = pending
                .properties
                .clone()
                .with_content_type(dead.content_type().into());
            // The copied properties keep the original's content_encoding; so does the body.
            let encoding = properties.content_encoding().as_ref().map(|e| e.as_str());
            let body = encode_like(dead.encode(), encoding)?;
            dead_letters
                .publish(&pending.routing_key, &body, &properties, &reason)
                .await?;
        }
        pending.acker.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}
