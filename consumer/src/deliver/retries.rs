//! Retries: rows in `delivery_retries`, claimed when due by any worker with a lease (a worker
//! killed mid-attempt leaves the row to be claimed again when the lease ends), then deleted when
//! delivered, rescheduled when not, or moved to dead letters in one transaction once the
//! subscription's attempts are spent. Waiting is a row in PostgreSQL, never an unacknowledged
//! message, so a sink that is down pins no prefetch and survives any restart.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::deliverer::{after_attempt, Deliverer};
use super::schedule::Next;
use super::store::{self, ClaimedRetry};
use super::subscription::{Status, Subscription};

/// Rows claimed per poll.
const CLAIM_BATCH: i64 = 200;
/// How long a claim holds a row: longer than the longest attempt (60 s timeout) with margin.
pub const LEASE_SECS: i64 = 120;
/// Claimed rows attempted at once (each subscription is also held to its own limit).
const CONCURRENCY: usize = 64;

/// The subscriptions as a worker last read them.
pub type Snapshot = Arc<HashMap<Uuid, Arc<Subscription>>>;

/// Delivers due retries until `cancel` fires.
pub async fn run(
    deliverer: Arc<Deliverer>,
    subscriptions: watch::Receiver<Snapshot>,
    cancel: CancellationToken,
) {
    loop {
        let claimed = match deliverer.pool.get().await {
            Ok(mut conn) => store::claim_due_retries(&mut conn, CLAIM_BATCH, LEASE_SECS)
                .await
                .unwrap_or_else(|error| {
                    tracing::warn!(%error, "cannot claim retries");
                    Vec::new()
                }),
            Err(error) => {
                tracing::warn!(%error, "cannot claim retries");
                Vec::new()
            }
        };
        let full = claimed.len() as i64 == CLAIM_BATCH;
        let snapshot = subscriptions.borrow().clone();
        futures_util::stream::iter(claimed)
            .for_each_concurrent(CONCURRENCY, |claim| {
                let (deliverer, snapshot) = (&deliverer, &snapshot);
                async move { deliver_chain(deliverer, snapshot, claim).await }
            })
            .await;
        if full && !cancel.is_cancelled() {
            continue;
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(deliverer.config.retry_poll) => {}
        }
    }
}

/// Delivers one claimed row and, for an ordered key that it unblocked, the key's next rows.
async fn deliver_chain(deliverer: &Deliverer, snapshot: &Snapshot, first: ClaimedRetry) {
    let mut claim = Some(first);
    while let Some(current) = claim.take() {
        let key = current.pending.ordering_key.clone();
        let subscription_id = current.pending.subscription_id;
        let unblocked = deliver_claimed(deliverer, snapshot, current).await;
        if let (true, Some(key)) = (unblocked, key) {
            if let Ok(mut conn) = deliverer.pool.get().await {
                claim = store::claim_next_of_key(&mut conn, subscription_id, &key, LEASE_SECS)
                    .await
                    .unwrap_or(None);
            }
        }
    }
}

/// One attempt of a claimed row and what follows; `true` when the row is gone (delivered or
/// dead-lettered), which unblocks an ordered key.
async fn deliver_claimed(deliverer: &Deliverer, snapshot: &Snapshot, claim: ClaimedRetry) -> bool {
    let ClaimedRetry { seq, pending } = claim;
    let subscription = snapshot
        .get(&pending.subscription_id)
        .filter(|subscription| subscription.spec.status == Status::Active);
    let Some(subscription) = subscription else {
        // The database said active when the row was claimed; this worker's copy is older (just
        // created or just resumed). Give the row back at once rather than hold it for the lease.
        if let Ok(mut conn) = deliverer.pool.get().await {
            let due = Utc::now()
                + chrono::Duration::from_std(deliverer.config.refresh).unwrap_or_default();
            if let Err(error) = store::reschedule_retry(&mut conn, seq, &pending, due).await {
                tracing::warn!(%error, seq, "cannot give a retry back; the lease will");
            }
        }
        return false;
    };
    let outcome = deliverer.attempt(subscription, &pending).await;
    let pending = after_attempt(pending, &outcome);
    let next = deliverer.next(subscription, &pending, &outcome);
    let Ok(mut conn) = deliverer.pool.get().await else {
        // The lease brings the row back.
        return false;
    };
    let result = match next {
        Next::Done => store::delete_retry(&mut conn, seq).await,
        Next::RetryAt(at) => store::reschedule_retry(&mut conn, seq, &pending, at).await,
        Next::Pause => pause_and_keep(&mut conn, subscription, seq, &pending).await,
        Next::DeadLetter => dead_letter(&mut conn, seq, &pending).await,
    };
    match result {
        Ok(()) => {
            if next == Next::DeadLetter {
                deliverer.dead_lettered(subscription.id, 1);
            }
            matches!(next, Next::Done | Next::DeadLetter)
        }
        Err(error) => {
            tracing::warn!(%error, seq, "cannot record a retry's outcome; the lease will bring it back");
            false
        }
    }
}

async fn pause_and_keep(
    conn: &mut AsyncPgConnection,
    subscription: &Subscription,
    seq: i64,
    pending: &store::Pending,
) -> diesel::QueryResult<()> {
    conn.transaction(async |conn| {
        store::reschedule_retry(conn, seq, pending, Utc::now()).await?;
        store::pause(conn, subscription.id, "the sink answered 410 Gone").await
    })
    .await?;
    tracing::warn!(subscription = %subscription.id, "the sink answered 410 Gone; subscription paused");
    Ok(())
}

async fn dead_letter(
    conn: &mut AsyncPgConnection,
    seq: i64,
    pending: &store::Pending,
) -> diesel::QueryResult<()> {
    conn.transaction(async |conn| {
        store::insert_dead_letter(conn, pending).await?;
        store::delete_retry(conn, seq).await
    })
    .await
}
