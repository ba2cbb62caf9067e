//! Coalescing single-event requests: one AMQP message for many concurrent requests.
//!
//! A broker message costs the same whether it carries one event or a hundred, so publishing each
//! single-event request alone caps ingest at the broker's message rate. The [`Coalescer`] holds a
//! single event for a short linger (at most 2 ms), gathers the other single events of the same
//! type that arrive meanwhile, and publishes them as one version 2 message with one part per
//! request. Every request still answers only after that message was confirmed, and all of them
//! share its outcome: a nack or timeout is a 503 for each.
//!
//! The flush runs in its own task, so a client that hangs up cannot cancel its neighbours'
//! publish. A pending group is bounded by `max_events`; it flushes early when full.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shared_types::envelope::Envelope;
use shared_types::RequestPart;
use tokio::sync::oneshot;

use crate::publish::{EventPublisher, OutgoingMessage, PublishError};

/// How long and how much to coalesce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoalesceSettings {
    /// How long the first event of a group waits for others (`WARREN_COALESCE_LINGER_US`);
    /// zero turns coalescing off.
    pub linger: Duration,
    /// Most events in one coalesced message (`WARREN_COALESCE_MAX_EVENTS`).
    pub max_events: usize,
}

impl CoalesceSettings {
    /// Whether single events are coalesced at all.
    pub fn is_on(&self) -> bool {
        !self.linger.is_zero() && self.max_events > 1
    }
}

/// Gathers single-event requests per routing key and publishes them together; cheap to clone.
pub struct Coalescer<P> {
    inner: Arc<Inner<P>>,
}

impl<P> Clone for Coalescer<P> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<P> {
    publisher: P,
    settings: CoalesceSettings,
    groups: Mutex<Groups>,
}

#[derive(Default)]
struct Groups {
    by_key: HashMap<String, Group>,
    next_generation: u64,
}

/// Requests waiting for the same message.
struct Group {
    generation: u64,
    parts: Vec<RequestPart>,
    events: usize,
    waiters: Vec<oneshot::Sender<Result<(), PublishError>>>,
}

impl<P: EventPublisher + Clone> Coalescer<P> {
    /// A coalescer publishing through `publisher`.
    pub fn new(publisher: P, settings: CoalesceSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                publisher,
                settings,
                groups: Mutex::new(Groups::default()),
            }),
        }
    }

    /// Publishes `part` (one request's events, all of type `routing_key`) in a shared message;
    /// returns once that message was confirmed, or with the error that ended it.
    pub async fn publish(
        &self,
        routing_key: String,
        part: RequestPart,
    ) -> Result<(), PublishError> {
        let (done, outcome) = oneshot::channel();
        let full = {
            let mut groups = self
                .inner
                .groups
                .lock()
                .map_err(|_| PublishError::ConnectionLost)?;
            let Groups {
                by_key,
                next_generation,
            } = &mut *groups;
            let group = by_key.entry(routing_key.clone()).or_insert_with(|| {
                *next_generation += 1;
                let generation = *next_generation;
                let timer = self.clone();
                let key = routing_key.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(timer.inner.settings.linger).await;
                    timer.flush_if_current(key, generation).await;
                });
                Group {
                    generation,
                    parts: Vec::new(),
                    events: 0,
                    waiters: Vec::new(),
                }
            });
            group.events += part.events.len();
            group.parts.push(part);
            group.waiters.push(done);
            if group.events >= self.inner.settings.max_events {
                by_key.remove(&routing_key)
            } else {
                None
            }
        };
        if let Some(group) = full {
            let publisher = self.clone();
            tokio::spawn(async move { publisher.send(routing_key, group).await });
        }
        outcome.await.unwrap_or(Err(PublishError::ConnectionLost))
    }

    /// The linger ended: publish the group it started, unless that one already went out full.
    async fn flush_if_current(&self, routing_key: String, generation: u64) {
        let group = match self.inner.groups.lock() {
            Ok(mut groups) => match groups.by_key.get(&routing_key) {
                Some(group) if group.generation == generation => groups.by_key.remove(&routing_key),
                _ => None,
            },
            Err(_) => None,
        };
        if let Some(group) = group {
            self.send(routing_key, group).await;
        }
    }

    async fn send(&self, routing_key: String, group: Group) {
        metrics::histogram!("warren_gateway_coalesced_message_events")
            .record(group.parts.len() as f64);
        let request_id = group
            .parts
            .first()
            .map(|part| part.request_id.clone())
            .unwrap_or_default();
        let message = Envelope::new(group.parts);
        let outgoing = OutgoingMessage {
            body: message.encode(),
            content_type: message.content_type(),
            routing_key,
            message_id: uuid::Uuid::now_v7().to_string(),
            request_id,
            content_encoding: None,
        };
        let result = self.inner.publisher.publish(vec![outgoing]).await;
        for waiter in group.waiters {
            // A waiter whose client hung up has dropped its receiver; nothing to tell it.
            let _ = waiter.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use futures_util::future::join_all;
    use shared_types::Event;

    use super::*;
    use crate::publish::MemoryPublisher;

    fn part(request: usize, event_type: &str) -> RequestPart {
        let event = Event {
            id: format!("evt-{request}"),
            source: "/coalesce-test".into(),
            event_type: event_type.into(),
            subject: None,
            time: None,
            datacontenttype: None,
            dataschema: None,
            data: None,
            extensions: Default::default(),
        };
        RequestPart::new(format!("req-{request}"), Utc::now(), vec![event])
    }

    fn coalescer(max_events: usize) -> (Coalescer<MemoryPublisher>, MemoryPublisher) {
        let publisher = MemoryPublisher::default();
        let settings = CoalesceSettings {
            linger: Duration::from_millis(2),
            max_events,
        };
        (Coalescer::new(publisher.clone(), settings), publisher)
    }

    fn decoded(publisher: &MemoryPublisher) -> Vec<(String, Envelope)> {
        publisher
            .published()
            .into_iter()
            .map(|m| {
                let message = Envelope::decode(&m.body).unwrap();
                assert_eq!(m.content_type, message.content_type());
                (m.routing_key, message)
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_single_events_of_one_type_share_one_message() {
        let (coalescer, publisher) = coalescer(100);
        let results = join_all(
            (0..10).map(|n| coalescer.publish("page.viewed".into(), part(n, "page.viewed"))),
        )
        .await;
        assert!(results.iter().all(Result::is_ok));
        let messages = decoded(&publisher);
        assert_eq!(messages.len(), 1);
        let (key, message) = &messages[0];
        assert_eq!(key, "page.viewed");
        assert_eq!(message.version, 2);
        let ids: Vec<&str> = message
            .parts
            .iter()
            .map(|p| p.request_id.as_str())
            .collect();
        let expected: Vec<String> = (0..10).map(|n| format!("req-{n}")).collect();
        assert_eq!(ids, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn types_are_never_mixed_in_one_message() {
        let (coalescer, publisher) = coalescer(100);
        let results = join_all((0..9).map(|n| {
            let kind = ["a.one", "b.two", "c.three"][n % 3];
            coalescer.publish(kind.into(), part(n, kind))
        }))
        .await;
        assert!(results.iter().all(Result::is_ok));
        let messages = decoded(&publisher);
        assert_eq!(messages.len(), 3);
        for (key, message) in messages {
            assert_eq!(message.event_count(), 3);
            assert!(message
                .parts
                .iter()
                .flat_map(|p| &p.events)
                .all(|e| e.event_type == key));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_group_goes_out_without_waiting_and_none_exceeds_the_bound() {
        let (coalescer, publisher) = coalescer(4);
        let results = join_all((0..10).map(|n| coalescer.publish("t".into(), part(n, "t")))).await;
        assert!(results.iter().all(Result::is_ok));
        let sizes: Vec<usize> = decoded(&publisher)
            .iter()
            .map(|(_, m)| m.event_count())
            .collect();
        assert_eq!(sizes, vec![4, 4, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_event_goes_out_as_version_1_after_the_linger() {
        let (coalescer, publisher) = coalescer(100);
        let started = tokio::time::Instant::now();
        coalescer.publish("t".into(), part(1, "t")).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(2));
        let messages = decoded(&publisher);
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].1.version, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn every_request_of_a_refused_message_gets_the_error() {
        let (coalescer, publisher) = coalescer(100);
        publisher.fail_with(Some(PublishError::Nacked));
        let results = join_all((0..5).map(|n| coalescer.publish("t".into(), part(n, "t")))).await;
        assert!(results.iter().all(|r| *r == Err(PublishError::Nacked)));
        publisher.fail_with(None);
        coalescer.publish("t".into(), part(9, "t")).await.unwrap();
        assert_eq!(decoded(&publisher).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_goes_away_does_not_stop_the_others() {
        let (coalescer, publisher) = coalescer(100);
        let abandoned = tokio::spawn({
            let coalescer = coalescer.clone();
            async move { coalescer.publish("t".into(), part(0, "t")).await }
        });
        tokio::task::yield_now().await;
        abandoned.abort();
        coalescer.publish("t".into(), part(1, "t")).await.unwrap();
        let messages = decoded(&publisher);
        let events: usize = messages.iter().map(|(_, m)| m.event_count()).sum();
        // The abandoned event was already handed over: it is published (the client never got a
        // 202, so a retry is deduplicated by the store).
        assert_eq!(events, 2);
    }
}
