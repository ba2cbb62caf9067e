//! The envelope wire format: pinned by a golden fixture, and round-tripped by property tests.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{json, Value};
use shared_types::envelope::{
    Envelope, EnvelopeError, RequestPart, COALESCED_CONTENT_TYPE, CONTENT_TYPE,
};
use shared_types::event::{Event, EventData, Validation};
use shared_types::Limits;

const GOLDEN: &str = include_str!("fixtures/envelope_v1.json");
const GOLDEN_V2: &str = include_str!("fixtures/envelope_v2.json");

/// The request part of the version 1 fixture.
fn golden_part() -> RequestPart {
    let event = |id: &str, data: EventData| Event {
        id: id.into(),
        source: "https://shop.example/checkout".into(),
        event_type: "order.placed".into(),
        subject: None,
        time: None,
        datacontenttype: None,
        dataschema: None,
        data: Some(data),
        extensions: BTreeMap::new(),
    };
    let mut first = event(
        "evt-1",
        EventData::Json(json!({"total": 12.5, "items": [{"sku": "A1", "qty": 2}]})),
    );
    first.subject = Some("order/42".into());
    first.time = Some(
        Utc.with_ymd_and_hms(2024, 5, 1, 9, 59, 59).unwrap() + chrono::Duration::milliseconds(500),
    );
    first.datacontenttype = Some("application/json".into());
    first.dataschema = Some("https://shop.example/schemas/order.json".into());
    first.extensions.insert("region".into(), json!("eu1"));
    let second = event("evt-2", EventData::Base64("AQIDBA==".into()));
    let received_at: DateTime<Utc> = "2024-05-01T10:00:00.123456Z".parse().unwrap();
    RequestPart::new("req-0001".into(), received_at, vec![first, second])
}

fn golden_envelope() -> Envelope {
    Envelope::new(vec![golden_part()])
}

#[test]
fn envelope_v1_encodes_to_the_golden_bytes() {
    let encoded = String::from_utf8(golden_envelope().encode()).unwrap();
    assert_eq!(encoded, GOLDEN.trim_end());
}

#[test]
fn golden_bytes_decode_to_the_envelope() {
    assert_eq!(
        Envelope::decode_single(GOLDEN.as_bytes()).unwrap(),
        golden_part()
    );
}

/// Two requests coalesced into one message: the golden envelope's events, one per request.
fn golden_message() -> Envelope {
    let part = golden_part();
    let later = part.received_at + chrono::Duration::microseconds(700);
    let mut events = part.events.into_iter();
    let first = RequestPart::new(
        "req-0001".into(),
        part.received_at,
        events.next().into_iter().collect(),
    );
    let second = RequestPart::new("req-0002".into(), later, events.collect());
    Envelope::new(vec![first, second])
}

#[test]
fn unknown_envelope_version_is_refused() {
    let bytes = GOLDEN.replacen("\"v\":1", "\"v\":3", 1);
    assert!(matches!(
        Envelope::decode_single(bytes.as_bytes()),
        Err(EnvelopeError::UnsupportedVersion(3))
    ));
    assert!(matches!(
        Envelope::decode(bytes.as_bytes()),
        Err(EnvelopeError::UnsupportedVersion(3))
    ));
}

#[test]
fn coalesced_message_encodes_to_the_golden_v2_bytes() {
    let message = golden_message();
    assert_eq!(message.version, 2);
    assert_eq!(message.content_type(), COALESCED_CONTENT_TYPE);
    let encoded = String::from_utf8(message.encode()).unwrap();
    assert_eq!(encoded, GOLDEN_V2.trim_end());
}

#[test]
fn golden_v2_bytes_decode_to_their_parts() {
    let decoded = Envelope::decode(GOLDEN_V2.as_bytes()).unwrap();
    assert_eq!(decoded, golden_message());
    assert_eq!(decoded.event_count(), 2);
    assert_eq!(decoded.parts[1].request_id, "req-0002");
}

#[test]
fn a_single_part_message_is_written_as_version_1() {
    let message = golden_envelope();
    assert_eq!(message.version, 1);
    assert_eq!(message.content_type(), CONTENT_TYPE);
    assert_eq!(
        String::from_utf8(message.encode()).unwrap(),
        GOLDEN.trim_end()
    );
    assert_eq!(Envelope::decode(GOLDEN.as_bytes()).unwrap(), message);
}

#[test]
fn a_single_request_reader_refuses_v2_as_not_single_not_malformed() {
    assert!(matches!(
        Envelope::decode_single(GOLDEN_V2.as_bytes()),
        Err(EnvelopeError::NotSingle(2))
    ));
}

#[test]
fn fields_of_the_other_version_are_refused() {
    let v1_with_parts = GOLDEN.replacen("\"events\":", "\"parts\":[],\"events\":", 1);
    let v2_with_events = GOLDEN_V2.replacen("\"parts\":", "\"events\":[],\"parts\":", 1);
    let v2_labelled_v1 = GOLDEN_V2.replacen("\"v\":2", "\"v\":1", 1);
    for bytes in [v1_with_parts, v2_with_events, v2_labelled_v1] {
        assert!(
            matches!(
                Envelope::decode(bytes.as_bytes()),
                Err(EnvelopeError::Shape(_))
            ),
            "{bytes}"
        );
    }
}

#[test]
fn coalesced_message_without_parts_or_with_an_empty_part_is_refused() {
    let no_parts = r#"{"v":2,"parts":[]}"#;
    let empty_part =
        r#"{"v":2,"parts":[{"request_id":"r","received_at":"2024-05-01T10:00:00Z","events":[]}]}"#;
    for bytes in [no_parts, empty_part] {
        assert!(matches!(
            Envelope::decode(bytes.as_bytes()),
            Err(EnvelopeError::Empty)
        ));
    }
}

#[test]
fn envelope_without_events_is_refused() {
    let bytes = r#"{"v":1,"request_id":"r","received_at":"2024-05-01T10:00:00Z","events":[]}"#;
    assert!(matches!(
        Envelope::decode_single(bytes.as_bytes()),
        Err(EnvelopeError::Empty)
    ));
}

#[test]
fn envelope_with_an_invalid_event_is_malformed() {
    let bytes =
        r#"{"v":1,"request_id":"r","received_at":"2024-05-01T10:00:00Z","events":[{"id":"x"}]}"#;
    assert!(matches!(
        Envelope::decode_single(bytes.as_bytes()),
        Err(EnvelopeError::Malformed(_))
    ));
}

#[test]
fn garbage_is_malformed() {
    assert!(matches!(
        Envelope::decode_single(b"\x00\x01 not json"),
        Err(EnvelopeError::Malformed(_))
    ));
}

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,40}"
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1.0e12f64..1.0e12).prop_map(|f| json!(f)),
        "[^\u{0}]{0,20}".prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[^\u{0}]{0,10}", inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

prop_compose! {
    fn arbitrary_event()(
        id in token(),
        source in "(/[a-z0-9]{1,10}){1,3}|https://[a-z]{1,10}\\.example/[a-z]{0,8}",
        event_type in token(),
        subject in proptest::option::of(token()),
        seconds in proptest::option::of(0i64..4_000_000_000),
        micros in 0u32..1_000_000,
        data in proptest::option::of(json_value()),
        extensions in prop::collection::btree_map("[a-z0-9]{1,20}", prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(|n| json!(n)),
            "[^\u{0}]{0,20}".prop_map(Value::String),
        ], 0..4),
    ) -> Value {
        let mut event = json!({"specversion": "1.0", "id": id, "source": source, "type": event_type});
        if let Some(subject) = subject { event["subject"] = json!(subject); }
        if let Some(seconds) = seconds {
            let time = Utc.timestamp_opt(seconds, micros * 1000).unwrap();
            event["time"] = json!(Event::time_text(&time));
        }
        if let Some(data) = data { event["data"] = data; }
        for (name, value) in extensions {
            if event.get(&name).is_none() && !["data", "time", "subject"].contains(&name.as_str()) {
                event[name] = value;
            }
        }
        event
    }
}

proptest! {
    #[test]
    fn valid_event_survives_envelope_round_trip(raw in prop::collection::vec(arbitrary_event(), 1..5)) {
        let limits = Limits { max_event_bytes: usize::MAX, ..Limits::default() };
        let rules = Validation { limits: &limits, now: None };
        let events: Vec<Event> = raw.into_iter()
            .map(|value| Event::from_json(value, &rules))
            .collect::<Result<_, _>>()
            .map_err(|problems| TestCaseError::fail(format!("{problems:?}")))?;
        let envelope = Envelope::single("req".into(), Utc::now(), events.clone());
        let decoded = Envelope::decode_single(&envelope.encode()).unwrap();
        prop_assert_eq!(decoded.events, events.clone());
        prop_assert_eq!(decoded.received_at, envelope.parts[0].received_at);
    }

    #[test]
    fn valid_events_survive_a_coalesced_round_trip(raw in prop::collection::vec(arbitrary_event(), 2..6)) {
        let limits = Limits { max_event_bytes: usize::MAX, ..Limits::default() };
        let rules = Validation { limits: &limits, now: None };
        let parts: Vec<RequestPart> = raw.into_iter()
            .enumerate()
            .map(|(n, value)| Event::from_json(value, &rules)
                .map(|event| RequestPart::new(format!("req-{n}"), Utc::now(), vec![event])))
            .collect::<Result<_, _>>()
            .map_err(|problems| TestCaseError::fail(format!("{problems:?}")))?;
        let message = Envelope::new(parts);
        prop_assert_eq!(Envelope::decode(&message.encode()).unwrap(), message);
    }
}
