//! From one request's accepted events to confirmed broker messages.
//!
//! Topic routing is by event type, so a request's events go out as one message per type (in order
//! of first appearance): a request of N events costs one broker round trip per type, not per event.
//! A request of exactly one event instead joins the [`Coalescer`], which shares one message among
//! concurrent single-event requests of the same type. Either way, the call returns only once the
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
            [single] if self.coalesce_singles => {
                let routing_key = single.event_type.clone();
                let part = RequestPart::new(request_id.to_owned(), received_at, events);
                self.coalescer.publish(routing_key, part).await
            }
            _ => {
                let messages = group_by_type(request_id, received_at, events);
                self.publisher.publish(messages).await
            }
        }
    }
}

/// One version 1 message per event type, in order of first appearance.
pub fn group_by_type(
    request_id: &str,
    received_at: DateTime<Utc>,
    events: Vec<Event>,
) -> Vec<OutgoingMessage> {
    let mut groups: Vec<(String, Vec<Event>)> = Vec::new();
    for event in events {
        match groups
            .iter_mut()
            .find(|(kind, _)| *kind == event.event_type)
        {
            Some((_, members)) => members.push(event),
            None => groups.push((event.event_type.clone(), vec![event])),
        }
    }
    groups
        .into_iter()
        .map(|(routing_key, events)| OutgoingMessage {
            body: Envelope::single(request_id.to_owned(), received_at, events).encode(),
            content_type: CONTENT_TYPE,
            routing_key,
            message_id: uuid::Uuid::now_v7().to_string(),
            request_id: request_id.to_owned(),
            content_encoding: None,
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
    fn events_are_grouped_by_type_in_order_of_first_appearance() {
        let events = vec![event("1", "b"), event("2", "a"), event("3", "b")];
        let messages = group_by_type("req", Utc::now(), events);
        let keys: Vec<&str> = messages.iter().map(|m| m.routing_key.as_str()).collect();
        assert_eq!(keys, ["b", "a"]);
        let first = Envelope::decode_single(&messages[0].body).unwrap();
        let ids: Vec<&str> = first.events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["1", "3"]);
    }
}
