//! Live delivery: each active subscription's queue consumed on its own channel. A message (one
//! request's or several coalesced requests' events) is acknowledged only after every matching
//! event in it was delivered, or its retry or dead letter was committed; a worker killed before
//! that leaves the message to be delivered again (at least once, same `webhook-id`).
//!
//! Unordered subscriptions deliver a message's events, and up to `WARREN_DELIVERY_PREFETCH`
//! messages, concurrently. Ordered ones take one message at a time, deliver its keys in parallel
//! and each key's events in order; an event that fails is written as a retry and holds back the
//! later events of its key (written behind it) until it is delivered or dead-lettered.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use service_runtime::topology::Topology;
use shared_types::envelope::Envelope;
use tokio_util::sync::CancellationToken;

use super::deliverer::{after_attempt, Deliverer};
use super::queues;
use super::schedule::Next;
use super::sink::Outcome;
use super::store::{self, Pending};
use super::subscription::{Ordering, Subscription};

/// What a message's deliveries leave to write before the ack.
#[derive(Debug, Default)]
struct Leftovers {
    retries: Vec<(Pending, chrono::DateTime<Utc>)>,
    dead: Vec<Pending>,
    pause: Option<String>,
}

impl Leftovers {
    fn is_empty(&self) -> bool {
        self.retries.is_empty() && self.dead.is_empty() && self.pause.is_none()
    }
}

/// Why a subscription's consumer ended without a broker error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Stopped: shutdown, the subscription changed, or the broker ended the consumer.
    Stopped,
    /// Its sink answered 410 Gone: the subscription is paused; it must not restart until the
    /// worker has read the pause.
    Paused,
    /// Its queue does not exist: the subscription is being deleted (the API deletes the queue
    /// first), or the queue was lost. Not restarted until the subscription changes (a `PUT`
    /// declares the queue again); a worker never re-creates it, or a deleted subscription's
    /// queue would come back and fill forever.
    QueueMissing,
}

/// Consumes `subscription`'s queue until `stop` fires, the sink asks to stop (410), or the
/// broker ends the consumer (the queue was deleted, the channel closed).
pub async fn consume(
    channel: Channel,
    topology: Topology,
    deliverer: Arc<Deliverer>,
    subscription: Arc<Subscription>,
    stop: CancellationToken,
) -> Result<Ended, lapin::Error> {
    let ordered = subscription.spec.ordering != Ordering::None;
    if !queues::exists(&channel, &topology, subscription.id).await? {
        return Ok(Ended::QueueMissing);
    }
    // As many messages as requests may be in flight: a message carries one event or more, so
    // single-event messages keep the sink at `max_in_flight`, and batches are held to it by
    // the subscription's permits.
    let prefetch = u16::try_from(subscription.spec.delivery.max_in_flight).unwrap_or(u16::MAX);
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let tag = format!(
        "warren-deliver-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    let queue = queues::queue_name(&topology, subscription.id);
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(subscription = %subscription.id, %queue, ordered, "delivering");
    let concurrency = if ordered { 1 } else { usize::from(prefetch) };
    let failure: std::sync::Mutex<Option<lapin::Error>> = std::sync::Mutex::new(None);
    let paused = std::sync::atomic::AtomicBool::new(false);
    consumer
        .take_until(stop.cancelled().boxed())
        .for_each_concurrent(concurrency, |delivery| {
            let (deliverer, subscription, failure, stop, paused) =
                (&deliverer, &subscription, &failure, &stop, &paused);
            async move {
                let result = match delivery {
                    Ok(delivery) => handle(deliverer, subscription, delivery, stop, paused).await,
                    Err(error) => Err(error),
                };
                match result {
                    Ok(Handled::Done) => {}
                    Ok(Handled::Paused) => {
                        paused.store(true, std::sync::atomic::Ordering::Release);
                        stop.cancel();
                    }
                    Err(error) => {
                        let mut slot = failure.lock().unwrap_or_else(|p| p.into_inner());
                        slot.get_or_insert(error);
                        stop.cancel();
                    }
                }
            }
        })
        .await;
    let _ = channel
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await;
    let _ = channel.close(200, "delivery stopped".into()).await;
    let failure = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
    match failure {
        Some(error) => Err(error),
        None if paused.load(std::sync::atomic::Ordering::Acquire) => Ok(Ended::Paused),
        None => Ok(Ended::Stopped),
    }
}

/// What one message came to.
enum Handled {
    /// Settled (or left unacknowledged for later).
    Done,
    /// Settled, and the sink asked to stop: consume no more.
    Paused,
}

async fn handle(
    deliverer: &Deliverer,
    subscription: &Subscription,
    delivery: Delivery,
    stop: &CancellationToken,
    paused: &std::sync::atomic::AtomicBool,
) -> Result<Handled, lapin::Error> {
    let envelope = match Envelope::decode(&delivery.data) {
        Ok(envelope) => envelope,
        Err(error) => {
            // The store path dead-letters what it cannot decode; here there is nothing to deliver.
            tracing::warn!(subscription = %subscription.id, %error, "skipping a message that is not an envelope");
            return delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .map(|_| Handled::Done);
        }
    };
    let ordering = subscription.spec.ordering;
    let matching: Vec<Pending> = envelope
        .parts
        .into_iter()
        .flat_map(|part| {
            let received_at = part.received_at;
            part.events
                .into_iter()
                .map(move |event| (event, received_at))
        })
        .filter(|(event, _)| subscription.spec.matches(event))
        .map(|(event, received_at)| Pending {
            subscription_id: subscription.id,
            ordering_key: ordering.key(&event),
            event,
            received_at,
            attempts: 0,
            last_status: None,
            last_error: None,
            replay: false,
        })
        .collect();
    let leftovers = if matching.is_empty() {
        Leftovers::default()
    } else if paused.load(std::sync::atomic::Ordering::Acquire) {
        // The sink said 410 on another message of this consumer: attempt nothing more, keep the
        // events for when the subscription is resumed (messages taken concurrently with that one).
        Leftovers {
            retries: matching
                .into_iter()
                .map(|pending| (pending, Utc::now()))
                .collect(),
            ..Leftovers::default()
        }
    } else if ordering == Ordering::None {
        unordered(deliverer, subscription, matching).await
    } else {
        match ordered(deliverer, subscription, matching).await {
            Some(leftovers) => leftovers,
            // The database could not say which keys wait: leave the message for later.
            None => return Ok(Handled::Done),
        }
    };
    if leftovers.pause.is_some() {
        paused.store(true, std::sync::atomic::Ordering::Release);
    }
    if !persist(deliverer, subscription, &leftovers, stop).await {
        // Stopping before the commit: the message stays unacknowledged and comes back.
        return Ok(Handled::Done);
    }
    delivery.acker.ack(BasicAckOptions::default()).await?;
    Ok(if leftovers.pause.is_some() {
        Handled::Paused
    } else {
        Handled::Done
    })
}

async fn unordered(
    deliverer: &Deliverer,
    subscription: &Subscription,
    matching: Vec<Pending>,
) -> Leftovers {
    let attempts = matching.into_iter().map(|pending| async move {
        let outcome = deliverer.attempt(subscription, &pending).await;
        let pending = after_attempt(pending, &outcome);
        let next = deliverer.next(subscription, &pending, &outcome);
        (pending, outcome, next)
    });
    let mut leftovers = Leftovers::default();
    for (pending, outcome, next) in futures_util::future::join_all(attempts).await {
        settle(&mut leftovers, pending, &outcome, next);
    }
    leftovers
}

fn settle(leftovers: &mut Leftovers, pending: Pending, outcome: &Outcome, next: Next) {
    match next {
        Next::Done => {}
        Next::RetryAt(at) => leftovers.retries.push((pending, at)),
        Next::DeadLetter => leftovers.dead.push(pending),
        Next::Pause => {
            if let Outcome::Gone = outcome {
                leftovers.pause = Some("the sink answered 410 Gone".into());
            }
            leftovers.retries.push((pending, Utc::now()));
        }
    }
}

/// Delivers keys in parallel and each key's events in order. `None` when the database cannot
/// say which keys already have events waiting.
async fn ordered(
    deliverer: &Deliverer,
    subscription: &Subscription,
    matching: Vec<Pending>,
) -> Option<Leftovers> {
    let mut keys: Vec<String> = Vec::new();
    let mut by_key: HashMap<String, Vec<Pending>> = HashMap::new();
    for pending in matching {
        let key = pending.ordering_key.clone().unwrap_or_default();
        if !by_key.contains_key(&key) {
            keys.push(key.clone());
        }
        by_key.entry(key).or_default().push(pending);
    }
    let waiting: HashSet<String> = {
        let mut conn = deliverer.pool.get().await.ok()?;
        store::waiting_keys(&mut conn, subscription.id, &keys)
            .await
            .ok()?
    };
    let chains = keys.into_iter().filter_map(|key| {
        let events = by_key.remove(&key)?;
        let held = waiting.contains(&key);
        Some(async move {
            let mut leftovers = Leftovers::default();
            let mut blocked = held;
            for pending in events {
                if blocked {
                    // Behind an earlier event of its key: waits, due as soon as it is first.
                    leftovers.retries.push((pending, Utc::now()));
                    continue;
                }
                let outcome = deliverer.attempt(subscription, &pending).await;
                let pending = after_attempt(pending, &outcome);
                let next = deliverer.next(subscription, &pending, &outcome);
                blocked = matches!(next, Next::RetryAt(_) | Next::Pause);
                settle(&mut leftovers, pending, &outcome, next);
            }
            leftovers
        })
    });
    let mut all = Leftovers::default();
    for leftovers in futures_util::future::join_all(chains).await {
        all.retries.extend(leftovers.retries);
        all.dead.extend(leftovers.dead);
        all.pause = all.pause.or(leftovers.pause);
    }
    Some(all)
}

/// Writes a message's retries, dead letters and pause in one transaction, retrying while the
/// database fails; `false` if `stop` fired first.
async fn persist(
    deliverer: &Deliverer,
    subscription: &Subscription,
    leftovers: &Leftovers,
    stop: &CancellationToken,
) -> bool {
    if leftovers.is_empty() {
        return true;
    }
    let mut failures = 0u32;
    loop {
        let written = match deliverer.pool.get().await {
            Ok(mut conn) => write(&mut conn, subscription, leftovers).await,
            Err(error) => Err(diesel::result::Error::QueryBuilderError(
                error.to_string().into(),
            )),
        };
        match written {
            Ok(()) => {
                for pending in &leftovers.dead {
                    metrics::counter!("warren_delivery_dead_letters_total", "subscription" => pending.subscription_id.to_string())
                        .increment(1);
                }
                if let Some(reason) = &leftovers.pause {
                    tracing::warn!(subscription = %subscription.id, reason, "subscription paused");
                }
                return true;
            }
            Err(error) => {
                failures += 1;
                tracing::warn!(%error, failures, subscription = %subscription.id, "cannot write retries; holding the message");
            }
        }
        let wait = service_runtime::backoff::backoff(failures, Duration::from_secs(5));
        tokio::select! {
            () = stop.cancelled() => return false,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

async fn write(
    conn: &mut AsyncPgConnection,
    subscription: &Subscription,
    leftovers: &Leftovers,
) -> diesel::QueryResult<()> {
    conn.transaction(async |conn| {
        for (pending, due_at) in &leftovers.retries {
            store::schedule_retry(conn, pending, *due_at).await?;
        }
        for pending in &leftovers.dead {
            store::insert_dead_letter(conn, pending).await?;
        }
        if let Some(reason) = &leftovers.pause {
            store::pause(conn, subscription.id, reason).await?;
        }
        Ok::<(), diesel::result::Error>(())
    })
    .await
}
