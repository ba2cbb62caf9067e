//! From one request's accepted events to confirmed broker messages.
//!
//! Topic routing is by event type; a request's events go out together, as one message routed by
//! every type it carries (RabbitMQ's `CC` header), so a request of N events costs one broker
//! round trip, not one per event or per type, and keeps its order on the queue.
//! A request of exactly one event instead joins the [`Coalescer`], which shares one message among
//! concurrent single-event requests. Either way, the call returns only once the
//! broker confirmed every message the events went out in.

use chrono::{DateTime, Utc};
use shared_types::envelope::{Envelope, CONTENT_TYPE};
use shared_types::{Event, RequestPart};

use crate::coalesce::{CoalesceSettings, Coalescer};
use crate::publish::{EventPublisher, OutgoingMessage, PublishError};

/// Sends requests' events to the broker; cheap to clone.
#[derive(Clone)]
pub struct Dispatcher<P> {
    publisher: P,
    coalescer: Coalescer<P>,
    coalesce_singles: bool,
}

impl<P: EventPublisher> Dispatcher<P> {
    /// A dispatcher over `publisher`, coalescing single events as `coalesce` says.
    pub fn new(publisher: P, coalesce: CoalesceSettings) -> Self {
        Self {
            coalescer: Coalescer::new(publisher.clone(), coalesce),
            publisher,
            coalesce_singles: coalesce.is_on(),
        }
    }

    /// Whether a publish could succeed now; see [`EventPublisher::is_ready`].
    pub fn is_ready(&self) -> bool {
        self.publisher.is_ready()
    }

    /// Publishes one request's `events`; `Ok` only once the broker confirmed all of them.
    pub async fn dispatch(
        &self,
        request_id: &str,
        received_at: DateTime<Utc>,
        events: Vec<Event>,
    ) -> Result<(), PublishError> {
        match events.as_slice() {
            [_] if self.coalesce_singles => {
                let part = RequestPart::new(request_id.to_owned(), received_at, events);
                self.coalescer.publish(part).await
            }
            _ => {
                let messages = messages_for(request_id, received_at, events);
                self.publisher.publish(messages).await
            }
        }
    }
}

/// Most distinct event types one message carries: each is a routing key the exchange matches
/// against every binding, so a request of thousands of types goes out as several messages.
pub const MAX_TYPES_PER_MESSAGE: usize = 32;

/// A request's events as version 1 messages, in order: one message unless they span more than
/// [`MAX_TYPES_PER_MESSAGE`] types. Each is routed by its first event's type, and by the other
/// types it carries through `CC`, so one broker round trip serves every type of the request.
pub fn messages_for(
    request_id: &str,
    received_at: DateTime<Utc>,
    events: Vec<Event>,
) -> Vec<OutgoingMessage> {
    let mut runs: Vec<(Vec<String>, Vec<Event>)> = Vec::new();
    for event in events {
        let fits = runs.last().is_some_and(|(types, _)| {
            types.contains(&event.event_type) || types.len() < MAX_TYPES_PER_MESSAGE
        });
        if !fits {
            runs.push((Vec::new(), Vec::new()));
        }
        if let Some((types, members)) = runs.last_mut() {
            if !types.contains(&event.event_type) {
                types.push(event.event_type.clone());
            }
            members.push(event);
        }
    }
    runs.into_iter()
        .map(|(types, events)| {
            OutgoingMessage::routed_by(
                types,
                Envelope::single(request_id.to_owned(), received_at, events).encode(),
                CONTENT_TYPE,
                request_id.to_owned(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use super::*;

    fn event(id: &str, event_type: &str) -> Event {
        Event {
            id: id.into(),
            source: "/test".into(),
            event_type: event_type.into(),
            subject: None,
            time: None,
            datacontenttype: None,
            dataschema: None,
            data: None,
            extensions: BTreeMap::new(),
        }
    }

    #[test]
    fn a_request_goes_out_as_one_message_routed_by_each_of_its_types() {
        let events = vec![event("1", "b"), event("2", "a"), event("3", "b")];
        let messages = messages_for("req", Utc::now(), events);
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].routing_key, "b");
        assert_eq!(messages[0].cc, ["a"]);
        let envelope = Envelope::decode_single(&messages[0].body).unwrap();
        let ids: Vec<&str> = envelope.events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["1", "2", "3"]);
    }

    #[test]
    fn a_request_of_one_type_has_no_cc() {
        let events = vec![event("1", "a"), event("2", "a")];
        let messages = messages_for("req", Utc::now(), events);
        assert_eq!(messages.len(), 1);
        assert!(messages[0].cc.is_empty());
    }

    #[test]
    fn past_the_type_bound_the_events_are_split_in_order() {
        let total = MAX_TYPES_PER_MESSAGE * 2 + 1;
        let mut events: Vec<Event> = (0..total)
            .map(|n| event(&n.to_string(), &format!("type.{n}")))
            .collect();
        // A type already in the first message does not start another one.
        events.insert(5, event("again", "type.0"));
        let messages = messages_for("req", Utc::now(), events);
        let sizes: Vec<usize> = messages.iter().map(|m| m.cc.len() + 1).collect();
        assert_eq!(sizes, [MAX_TYPES_PER_MESSAGE, MAX_TYPES_PER_MESSAGE, 1]);
        let ids: Vec<String> = messages
            .iter()
            .flat_map(|m| Envelope::decode_single(&m.body).unwrap().events)
            .map(|e| e.id)
            .collect();
        assert_eq!(ids.len(), total + 1);
        assert_eq!(ids[5], "again");
        assert_eq!(
            messages[1].routing_key,
            format!("type.{MAX_TYPES_PER_MESSAGE}")
        );
    }
}
