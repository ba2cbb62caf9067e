//! What every delivery path shares (live from the queues, retries, replays): the sink client,
//! the database, per-subscription limits on requests in flight, and the record of each attempt
//! (metrics, and the subscription's failing state that leads to an automatic pause).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::config::DeliveryConfig;
use super::schedule::{next_step, Next};
use super::sink::{self, Outcome};
use super::store::{self, Pending};
use super::subscription::Subscription;
use crate::db::PgPool;

/// Shared by the delivery paths of one worker.
pub struct Deliverer {
    /// Writes retries, dead letters and subscription state.
    pub pool: PgPool,
    /// Settings shared by all subscriptions.
    pub config: DeliveryConfig,
    client: reqwest::Client,
    /// Per subscription: permits for requests in flight (`delivery.max_in_flight`).
    in_flight: Mutex<HashMap<Uuid, (u32, Arc<Semaphore>)>>,
    /// Per subscription: whether its last attempt failed, so only changes are written.
    failing: Mutex<HashMap<Uuid, bool>>,
    /// Per subscription: no request before this time (the sink's last `Retry-After`).
    holds: Mutex<HashMap<Uuid, DateTime<Utc>>>,
    /// Per subscription: its metric handles, registered once (a labelled macro call per
    /// delivery allocates and hashes its labels every time).
    series: Mutex<HashMap<Uuid, Arc<Series>>>,
}

/// One subscription's delivery metrics.
struct Series {
    delivered: metrics::Counter,
    failed: metrics::Counter,
    gone: metrics::Counter,
    deferred: metrics::Counter,
    dead_letters: metrics::Counter,
    latency: metrics::Histogram,
}

impl Series {
    fn new(id: Uuid) -> Self {
        let label = id.to_string();
        let attempts = |outcome: &'static str| metrics::counter!("warren_delivery_attempts_total", "subscription" => label.clone(), "outcome" => outcome);
        Self {
            delivered: attempts("delivered"),
            failed: attempts("failed"),
            gone: attempts("gone"),
            deferred: attempts("deferred"),
            // Registered at 0, so a dashboard shows a subscription's dead-letter rate before the first.
            dead_letters: metrics::counter!("warren_delivery_dead_letters_total", "subscription" => label.clone()),
            latency: metrics::histogram!("warren_delivery_latency_seconds", "subscription" => label.clone()),
        }
    }
}

impl Deliverer {
    /// A deliverer over `pool`, with its own sink client.
    pub fn new(pool: PgPool, config: DeliveryConfig) -> Result<Self, reqwest::Error> {
        Ok(Self {
            pool,
            client: sink::client(&config)?,
            config,
            in_flight: Mutex::new(HashMap::new()),
            failing: Mutex::new(HashMap::new()),
            holds: Mutex::new(HashMap::new()),
            series: Mutex::new(HashMap::new()),
        })
    }

    /// The subscription's in-flight limit, shared by its live, retry and replay deliveries.
    pub fn permits(&self, subscription: &Subscription) -> Arc<Semaphore> {
        let limit = subscription.spec.delivery.max_in_flight;
        let mut map = self
            .in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = map
            .entry(subscription.id)
            .or_insert_with(|| (limit, Arc::new(Semaphore::new(limit as usize))));
        if entry.0 != limit {
            *entry = (limit, Arc::new(Semaphore::new(limit as usize)));
        }
        Arc::clone(&entry.1)
    }

    /// One attempt of `pending`, within the subscription's in-flight limit, recorded.
    pub async fn attempt(&self, subscription: &Subscription, pending: &Pending) -> Outcome {
        // A literal address is not resolved, so the resolver cannot refuse it: check it here too
        // (the setting may have changed since the subscription was created).
        if let Err(error) = super::sink_address::check_host(
            &subscription.spec.sink_url,
            self.config.allow_private_sinks,
        ) {
            let outcome = Outcome::Failed {
                status: None,
                error: error.to_string(),
                retry_after: None,
            };
            self.record(subscription, pending, &outcome).await;
            return outcome;
        }
        let permits = self.permits(subscription);
        let _permit = permits.acquire().await;
        if let Some(until) = self.held_until(subscription.id) {
            let outcome = Outcome::Deferred(until);
            self.record(subscription, pending, &outcome).await;
            return outcome;
        }
        let outcome = sink::attempt(
            &self.client,
            subscription,
            &pending.event,
            pending.replay,
            self.config.max_response_bytes,
            Utc::now(),
        )
        .await;
        if let Outcome::Failed {
            retry_after: Some(wait),
            ..
        } = &outcome
        {
            let until = Utc::now() + chrono::Duration::from_std(*wait).unwrap_or_default();
            let mut holds = self
                .holds
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let held = holds.entry(subscription.id).or_insert(until);
            *held = (*held).max(until);
        }
        self.record(subscription, pending, &outcome).await;
        outcome
    }

    /// Counts events of subscription `id` moved to dead letters (after the commit).
    pub fn dead_lettered(&self, id: Uuid, events: usize) {
        self.series(id).dead_letters.increment(events as u64);
    }

    fn series(&self, id: Uuid) -> Arc<Series> {
        let mut series = self
            .series
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(
            series
                .entry(id)
                .or_insert_with(|| Arc::new(Series::new(id))),
        )
    }

    /// When the sink's `Retry-After` still holds, until when.
    fn held_until(&self, id: Uuid) -> Option<DateTime<Utc>> {
        let mut holds = self
            .holds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match holds.get(&id) {
            Some(until) if *until > Utc::now() => Some(*until),
            Some(_) => {
                holds.remove(&id);
                None
            }
            None => None,
        }
    }

    async fn record(&self, subscription: &Subscription, pending: &Pending, outcome: &Outcome) {
        let series = self.series(subscription.id);
        let failing = match outcome {
            Outcome::Delivered(_) => {
                let latency = (Utc::now() - pending.received_at)
                    .to_std()
                    .unwrap_or_default()
                    .as_secs_f64();
                series.latency.record(latency);
                series.delivered.increment(1);
                false
            }
            Outcome::Gone => {
                series.gone.increment(1);
                true
            }
            Outcome::Failed { .. } => {
                series.failed.increment(1);
                true
            }
            Outcome::Deferred(_) => {
                series.deferred.increment(1);
                return;
            }
        };
        let changed = {
            let mut map = self
                .failing
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let known = *map
                .entry(subscription.id)
                .or_insert(subscription.failing_since.is_some());
            map.insert(subscription.id, failing);
            known != failing
        };
        if changed {
            if let Ok(mut conn) = self.pool.get().await {
                if let Err(error) = store::set_failing(&mut conn, subscription.id, failing).await {
                    tracing::warn!(%error, subscription = %subscription.id, "cannot record the sink's state");
                }
            }
        }
    }

    /// What to do after an attempt, with `pending.attempts` already counting it.
    pub fn next(&self, subscription: &Subscription, pending: &Pending, outcome: &Outcome) -> Next {
        next_step(
            outcome,
            pending.attempts,
            &subscription.spec.delivery,
            Utc::now(),
        )
    }
}

/// `pending` after an attempt: counted, with what the sink said.
pub fn after_attempt(mut pending: Pending, outcome: &Outcome) -> Pending {
    match outcome {
        Outcome::Delivered(_) => {}
        // Not sent: not an attempt.
        Outcome::Deferred(_) => {}
        // A 410 pauses the subscription; the attempt does not count against the event.
        Outcome::Gone => {
            pending.last_status = Some(410);
            pending.last_error = Some("the sink answered 410 Gone; subscription paused".into());
        }
        Outcome::Failed { status, error, .. } => {
            pending.attempts += 1;
            pending.last_status = *status;
            pending.last_error = Some(error.clone());
        }
    }
    if matches!(outcome, Outcome::Delivered(_)) {
        pending.attempts += 1;
    }
    pending
}
