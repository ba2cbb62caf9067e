//! Coalescing single-event requests: one AMQP message for many concurrent requests.
//!
//! A broker message costs the same whether it carries one event or a hundred, so publishing each
//! single-event request alone caps ingest at the broker's message rate. The [`Coalescer`] keeps
//! one message waiting for its confirm and gathers the single events that arrive meanwhile,
//! whatever their types: they go out together, as one version 2 message with one part per
//! request, routed by each type it carries (the first as the routing key, the others in `CC`),
//! as soon as that confirm comes back, the way a database commits a group. An event that finds
//! nothing in flight goes out at once, so a quiet gateway adds no wait; under load a message
//! holds what arrived during one broker round trip, and grows as the broker slows. A group waits
//! at most the linger (`WARREN_COALESCE_LINGER_US`) behind a slow confirm before it goes out
//! beside it, and goes out early when it reaches `max_events` or
//! [`MAX_TYPES_PER_MESSAGE`] types. Every request still answers only after its message was
//! confirmed, and all of them share its outcome: a nack or timeout is a 503 for each.
//!
//! Each publish runs in its own task, so a client that hangs up cannot cancel its neighbours'.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use shared_types::envelope::Envelope;
use shared_types::RequestPart;
use tokio::sync::oneshot;

use crate::dispatch::MAX_TYPES_PER_MESSAGE;
use crate::publish::{EventPublisher, OutgoingMessage, PublishError};

/// How long and how much to coalesce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoalesceSettings {
    /// How long a group waits behind a message in flight before it goes out beside it
    /// (`WARREN_COALESCE_LINGER_US`); zero turns coalescing off.
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

/// Gathers single-event requests and publishes them together; cheap to clone.
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
    state: Mutex<State>,
}

/// The messages awaiting confirms and the group gathering behind them.
#[derive(Default)]
struct State {
    in_flight: usize,
    waiting: Option<Group>,
    next_generation: u64,
}

/// Requests waiting for the same message.
struct Group {
    generation: u64,
    parts: Vec<RequestPart>,
    /// The types of the parts' events, in order of first appearance: the message's routing keys.
    types: Vec<String>,
    events: usize,
    waiters: Vec<Waiter>,
}

type Waiter = oneshot::Sender<Result<(), PublishError>>;

impl<P: EventPublisher + Clone> Coalescer<P> {
    /// A coalescer publishing through `publisher`.
    pub fn new(publisher: P, settings: CoalesceSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                publisher,
                settings,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Publishes `part` (one request's events) in a shared message; returns once that message
    /// was confirmed, or with the error that ended it.
    pub async fn publish(&self, part: RequestPart) -> Result<(), PublishError> {
        let (done, outcome) = oneshot::channel();
        let ready = self.join(part, done)?;
        if let Some(group) = ready {
            self.spawn_send(group);
        }
        outcome.await.unwrap_or(Err(PublishError::ConnectionLost))
    }

    /// Adds `part` to the waiting group; returns the group if it is to go out now.
    fn join(&self, part: RequestPart, done: Waiter) -> Result<Option<Group>, PublishError> {
        let mut state = self
            .inner
            .state
            .lock()
            .map_err(|_| PublishError::ConnectionLost)?;
        let State {
            in_flight,
            waiting,
            next_generation,
        } = &mut *state;
        let idle = *in_flight == 0;
        let group = waiting.get_or_insert_with(|| {
            *next_generation += 1;
            let generation = *next_generation;
            if !idle {
                self.start_linger(generation);
            }
            Group {
                generation,
                parts: Vec::new(),
                types: Vec::new(),
                events: 0,
                waiters: Vec::new(),
            }
        });
        for event in &part.events {
            if !group.types.contains(&event.event_type) {
                group.types.push(event.event_type.clone());
            }
        }
        group.events += part.events.len();
        group.parts.push(part);
        group.waiters.push(done);
        let full = group.events >= self.inner.settings.max_events
            || group.types.len() >= MAX_TYPES_PER_MESSAGE;
        if idle || full {
            *in_flight += 1;
            Ok(waiting.take())
        } else {
            Ok(None)
        }
    }

    /// Bounds how long a group waits behind a slow confirm.
    fn start_linger(&self, generation: u64) {
        let timer = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(timer.inner.settings.linger).await;
            if let Some(group) = timer.take_waiting(Some(generation), false) {
                timer.send(group).await;
            }
        });
    }

    /// Takes the waiting group to publish it (counting it in flight), if there is one and it is
    /// still `generation` (any, when `None`); `confirmed` first counts one message as no longer
    /// in flight.
    fn take_waiting(&self, generation: Option<u64>, confirmed: bool) -> Option<Group> {
        let mut state = self.inner.state.lock().ok()?;
        if confirmed {
            state.in_flight = state.in_flight.saturating_sub(1);
        }
        let matches = state
            .waiting
            .as_ref()
            .is_some_and(|group| generation.is_none_or(|g| g == group.generation));
        if !matches {
            return None;
        }
        state.in_flight += 1;
        state.waiting.take()
    }

    fn spawn_send(&self, group: Group) {
        let publisher = self.clone();
        tokio::spawn(async move { publisher.send(group).await });
    }

    /// Publishes `group`, sends the group that gathered behind it on its way, then answers its
    /// requests.
    async fn send(&self, group: Group) {
        metrics::histogram!("warren_gateway_coalesced_message_events")
            .record(group.parts.len() as f64);
        let request_id = group
            .parts
            .first()
            .map(|part| part.request_id.clone())
            .unwrap_or_default();
        let message = Envelope::new(group.parts);
        let outgoing = OutgoingMessage::routed_by(
            group.types,
            message.encode(),
            message.content_type(),
            request_id,
        );
        let result = self.inner.publisher.publish(vec![outgoing]).await;
        if let Some(next) = self.take_waiting(None, true) {
            self.spawn_send(next);
        }
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

    /// One single-event request of `kind`, in a task of its own as a connection would send it.
    fn spawn_publish(
        coalescer: &Coalescer<MemoryPublisher>,
        request: usize,
        kind: &str,
    ) -> tokio::task::JoinHandle<Result<(), PublishError>> {
        let coalescer = coalescer.clone();
        let part = part(request, kind);
        tokio::spawn(async move { coalescer.publish(part).await })
    }

    /// Lets every spawned task run as far as it can without time passing.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    fn sizes(publisher: &MemoryPublisher) -> Vec<usize> {
        decoded(publisher)
            .iter()
            .map(|(_, m)| m.event_count())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_that_finds_nothing_in_flight_goes_out_at_once_as_version_1() {
        let (coalescer, publisher) = coalescer(100);
        let started = tokio::time::Instant::now();
        coalescer.publish(part(1, "t")).await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
        let messages = decoded(&publisher);
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].1.version, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn events_that_arrive_during_a_confirm_share_the_next_message_in_order() {
        let (coalescer, publisher) = coalescer(100);
        publisher.hold_confirms(true);
        let requests: Vec<_> = (0..10)
            .map(|n| spawn_publish(&coalescer, n, "page.viewed"))
            .collect();
        settle().await;
        // The first went out alone; the other nine wait behind its confirm.
        assert_eq!(sizes(&publisher), vec![1]);
        publisher.hold_confirms(false);
        for request in requests {
            request.await.unwrap().unwrap();
        }
        let messages = decoded(&publisher);
        assert_eq!(messages.len(), 2);
        let (key, message) = &messages[1];
        assert_eq!(key, "page.viewed");
        assert_eq!(message.version, 2);
        let ids: Vec<&str> = message
            .parts
            .iter()
            .map(|p| p.request_id.as_str())
            .collect();
        let expected: Vec<String> = (1..10).map(|n| format!("req-{n}")).collect();
        assert_eq!(ids, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_waits_behind_a_slow_confirm_for_the_linger_at_most() {
        let (coalescer, publisher) = coalescer(100);
        publisher.hold_confirms(true);
        let first = spawn_publish(&coalescer, 0, "t");
        settle().await;
        let second = spawn_publish(&coalescer, 1, "t");
        settle().await;
        assert_eq!(sizes(&publisher), vec![1]);
        // tokio's timers tick in whole milliseconds: check well inside and well past the 2 ms.
        tokio::time::sleep(Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(
            sizes(&publisher),
            vec![1],
            "went out before the linger ended"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
        settle().await;
        assert_eq!(
            sizes(&publisher),
            vec![1, 1],
            "still waiting after the linger"
        );
        publisher.hold_confirms(false);
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn types_share_a_message_routed_by_each_of_them() {
        let (coalescer, publisher) = coalescer(100);
        publisher.hold_confirms(true);
        let kinds = ["a.one", "b.two", "c.three"];
        let requests: Vec<_> = (0..9)
            .map(|n| spawn_publish(&coalescer, n, kinds[n % 3]))
            .collect();
        settle().await;
        publisher.hold_confirms(false);
        for request in requests {
            request.await.unwrap().unwrap();
        }
        // The first alone (nothing was in flight), the other eight together.
        assert_eq!(sizes(&publisher), vec![1, 8]);
        let published = publisher.published();
        assert_eq!(published[1].routing_key, "b.two");
        assert_eq!(published[1].cc, ["c.three", "a.one"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_of_the_most_types_goes_out_without_waiting() {
        let (coalescer, publisher) = coalescer(100);
        publisher.hold_confirms(true);
        let requests: Vec<_> = (0..=MAX_TYPES_PER_MESSAGE + 1)
            .map(|n| spawn_publish(&coalescer, n, &format!("type.{n}")))
            .collect();
        settle().await;
        // Confirms are held and no time passed: the first, then a group as soon as it had the
        // most types; the last waits.
        assert_eq!(sizes(&publisher), vec![1, MAX_TYPES_PER_MESSAGE]);
        assert_eq!(publisher.published()[1].cc.len(), MAX_TYPES_PER_MESSAGE - 1);
        publisher.hold_confirms(false);
        for request in requests {
            request.await.unwrap().unwrap();
        }
        assert_eq!(sizes(&publisher), vec![1, MAX_TYPES_PER_MESSAGE, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_group_goes_out_without_waiting_and_none_exceeds_the_bound() {
        let (coalescer, publisher) = coalescer(4);
        publisher.hold_confirms(true);
        let requests: Vec<_> = (0..10).map(|n| spawn_publish(&coalescer, n, "t")).collect();
        settle().await;
        // Confirms are held and no time passed: only the first and the full groups went out.
        assert_eq!(sizes(&publisher), vec![1, 4, 4]);
        publisher.hold_confirms(false);
        for request in requests {
            request.await.unwrap().unwrap();
        }
        assert_eq!(sizes(&publisher), vec![1, 4, 4, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn every_request_of_a_refused_message_gets_the_error() {
        let (coalescer, publisher) = coalescer(100);
        publisher.fail_with(Some(PublishError::Nacked));
        let results = join_all((0..5).map(|n| coalescer.publish(part(n, "t")))).await;
        assert!(results.iter().all(|r| *r == Err(PublishError::Nacked)));
        publisher.fail_with(None);
        coalescer.publish(part(9, "t")).await.unwrap();
        assert_eq!(decoded(&publisher).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_goes_away_does_not_stop_the_others() {
        let (coalescer, publisher) = coalescer(100);
        publisher.hold_confirms(true);
        let first = spawn_publish(&coalescer, 0, "t");
        settle().await;
        let abandoned = spawn_publish(&coalescer, 1, "t");
        settle().await;
        abandoned.abort();
        let kept = spawn_publish(&coalescer, 2, "t");
        settle().await;
        publisher.hold_confirms(false);
        first.await.unwrap().unwrap();
        kept.await.unwrap().unwrap();
        // The abandoned event was already handed over: it is published with its neighbour (the
        // client never got a 202, so a retry is deduplicated by the store).
        assert_eq!(sizes(&publisher), vec![1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_gateway_leaves_nothing_behind() {
        let (coalescer, _publisher) = coalescer(100);
        join_all((0..5).map(|n| coalescer.publish(part(n, "t")))).await;
        settle().await;
        let state = coalescer.inner.state.lock().unwrap();
        assert_eq!(state.in_flight, 0);
        assert!(state.waiting.is_none());
    }
}
