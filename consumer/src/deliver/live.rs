//! Live delivery: each active subscription's queue consumed on its own channel. A message (one
//! request's or several coalesced requests' events) is acknowledged only after every matching
//! event in it was delivered, or its retry or dead letter was committed; a worker killed before
//! that leaves the message to be delivered again (at least once, same `webhook-id`).
//!
//! Unordered subscriptions deliver a message's events, and up to `max_in_flight` messages,
//! concurrently. Ordered ones handle as many messages at once, but each key's events in the
//! order the queue holds them ([`KeyOrder`]): keys go in parallel, a key's events one after
//! another, and an event that fails is written as a retry and holds back the later events of its
//! key (written behind it) until it is delivered or dead-lettered.

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
use super::key_order::{KeyOrder, Place, Turn};
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
    let key_order = ordered.then(|| Arc::new(KeyOrder::default()));
    let failure: std::sync::Mutex<Option<lapin::Error>> = std::sync::Mutex::new(None);
    let paused = std::sync::atomic::AtomicBool::new(false);
    consumer
        .take_until(stop.cancelled().boxed())
        .for_each_concurrent(usize::from(prefetch), |delivery| {
            // Called in the order the broker delivers: an ordered subscription's message takes
            // its place in its keys' lines here, before any later message can.
            let taken = delivery.map(|delivery| take(&subscription, key_order.as_ref(), delivery));
            let (deliverer, subscription, failure, stop, paused) =
                (&deliverer, &subscription, &failure, &stop, &paused);
            async move {
                let result = match taken {
                    Ok(taken) => handle(deliverer, subscription, taken, stop, paused).await,
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

/// A message as taken off the queue: its matching events, and for an ordered subscription its
/// places in the lines of their keys.
struct Taken {
    delivery: Delivery,
    work: Work,
}

enum Work {
    /// Not an envelope: nothing to deliver (the store path dead-letters it).
    Undecodable(String),
    Unordered(Vec<Pending>),
    /// Per key, in the order the message carries them: its place and its events in order.
    Ordered(Vec<(Place, Vec<Pending>)>),
}

fn take(
    subscription: &Subscription,
    key_order: Option<&Arc<KeyOrder>>,
    delivery: Delivery,
) -> Taken {
    let encoding = delivery
        .properties
        .content_encoding()
        .as_ref()
        .map(|e| e.as_str());
    let envelope = match Envelope::decode_message(&delivery.data, encoding) {
        Ok(envelope) => envelope,
        Err(error) => {
            return Taken {
                delivery,
                work: Work::Undecodable(error.to_string()),
            }
        }
    };
    let ordering = subscription.spec.ordering;
    let matching = envelope
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
        });
    let work = match key_order {
        None => Work::Unordered(matching.collect()),
        Some(key_order) => {
            let mut keys: Vec<String> = Vec::new();
            let mut by_key: HashMap<String, Vec<Pending>> = HashMap::new();
            for pending in matching {
                let key = pending.ordering_key.clone().unwrap_or_default();
                if !by_key.contains_key(&key) {
                    keys.push(key.clone());
                }
                by_key.entry(key).or_default().push(pending);
            }
            let lanes = key_order
                .enter(keys)
                .into_iter()
                .map(|place| {
                    let events = by_key.remove(&place.key).unwrap_or_default();
                    (place, events)
                })
                .collect();
            Work::Ordered(lanes)
        }
    };
    Taken { delivery, work }
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
    taken: Taken,
    stop: &CancellationToken,
    paused: &std::sync::atomic::AtomicBool,
) -> Result<Handled, lapin::Error> {
    let Taken { delivery, work } = taken;
    let settled = match work {
        Work::Undecodable(error) => {
            tracing::warn!(subscription = %subscription.id, %error, "skipping a message that is not an envelope");
            Some(false)
        }
        Work::Unordered(matching) => {
            unordered(deliverer, subscription, matching, stop, paused).await
        }
        Work::Ordered(lanes) => ordered(deliverer, subscription, lanes, stop, paused).await,
    };
    let Some(pause) = settled else {
        // Stopping before everything was committed: the message stays unacknowledged and
        // comes back.
        return Ok(Handled::Done);
    };
    delivery.acker.ack(BasicAckOptions::default()).await?;
    Ok(if pause {
        Handled::Paused
    } else {
        Handled::Done
    })
}

/// Delivers a message's events concurrently and commits what is left; `Some(paused)` once
/// committed, `None` if stopping first.
async fn unordered(
    deliverer: &Deliverer,
    subscription: &Subscription,
    matching: Vec<Pending>,
    stop: &CancellationToken,
    paused: &std::sync::atomic::AtomicBool,
) -> Option<bool> {
    if matching.is_empty() {
        return Some(false);
    }
    let leftovers = if paused.load(std::sync::atomic::Ordering::Acquire) {
        // The sink said 410 on another message of this consumer: attempt nothing more, keep the
        // events for when the subscription is resumed.
        keep_all(matching)
    } else {
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
    };
    let pause = leftovers.pause.is_some();
    if pause {
        paused.store(true, std::sync::atomic::Ordering::Release);
    }
    persist(deliverer, subscription, &leftovers, stop)
        .await
        .then_some(pause)
}

/// Every event to the retries, due now (the subscription is being paused).
fn keep_all(events: Vec<Pending>) -> Leftovers {
    Leftovers {
        retries: events
            .into_iter()
            .map(|pending| (pending, Utc::now()))
            .collect(),
        ..Leftovers::default()
    }
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

/// Delivers each key's events in order once the key's turn comes, keys in parallel; commits
/// each key's retries and hands it on. `Some(paused)` once every key is committed, `None` if
/// stopping first (the keys not handed on are given up, and those behind them too).
async fn ordered(
    deliverer: &Deliverer,
    subscription: &Subscription,
    lanes: Vec<(Place, Vec<Pending>)>,
    stop: &CancellationToken,
    paused: &std::sync::atomic::AtomicBool,
) -> Option<bool> {
    if lanes.is_empty() {
        return Some(false);
    }
    let unheld: Vec<String> = lanes
        .iter()
        .filter(|(place, _)| matches!(place.turn, Turn::Settled))
        .map(|(place, _)| place.key.clone())
        .collect();
    let waiting = waiting_keys(deliverer, subscription, &unheld, stop).await?;
    let chains = lanes.into_iter().map(|(place, events)| {
        let waiting = &waiting;
        async move {
            let Place {
                key,
                turn,
                handover,
            } = place;
            let mut blocked = turn.blocked(|| waiting.contains(&key)).await?;
            let leftovers = if paused.load(std::sync::atomic::Ordering::Acquire) {
                blocked = !events.is_empty();
                keep_all(events)
            } else {
                let mut leftovers = Leftovers::default();
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
            };
            let pause = leftovers.pause.is_some();
            if pause {
                paused.store(true, std::sync::atomic::Ordering::Release);
            }
            if !persist(deliverer, subscription, &leftovers, stop).await {
                return None;
            }
            handover.hand_on(blocked);
            Some(pause)
        }
    });
    let settled = futures_util::future::join_all(chains).await;
    settled
        .into_iter()
        .try_fold(false, |any, pause| pause.map(|pause| any || pause))
}

/// Which of `keys` have events waiting in the retries, asking again while the database fails;
/// `None` if stopping first.
async fn waiting_keys(
    deliverer: &Deliverer,
    subscription: &Subscription,
    keys: &[String],
    stop: &CancellationToken,
) -> Option<HashSet<String>> {
    if keys.is_empty() {
        return Some(HashSet::new());
    }
    let mut failures = 0u32;
    loop {
        let found = match deliverer.pool.get().await {
            Ok(mut conn) => store::waiting_keys(&mut conn, subscription.id, keys)
                .await
                .map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        };
        match found {
            Ok(found) => return Some(found),
            Err(error) => {
                failures += 1;
                tracing::warn!(%error, failures, subscription = %subscription.id, "cannot read which keys wait; holding the message");
            }
        }
        let wait = service_runtime::backoff::backoff(failures, Duration::from_secs(5));
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Writes retries, dead letters and a pause in one transaction, retrying while the
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
                deliverer.dead_lettered(subscription.id, leftovers.dead.len());
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
