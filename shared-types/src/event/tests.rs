//! Unit tests of the event type, its parser and its serializer.

use super::*;
use crate::problem::{ErrorCode, Problem};
use serde_json::json;

fn minimal() -> Value {
    json!({"specversion": "1.0", "id": "e-1", "source": "/shop", "type": "order.placed"})
}

fn validate(value: Value) -> Result<Event, Vec<Problem>> {
    let limits = Limits::default();
    Event::from_json(
        value,
        &Validation {
            limits: &limits,
            now: Some(Utc::now()),
        },
    )
}

fn with(field: &str, value: Value) -> Value {
    let mut event = minimal();
    event[field] = value;
    event
}

fn codes(value: Value) -> Vec<(ErrorCode, String)> {
    validate(value)
        .unwrap_err()
        .into_iter()
        .map(|p| (p.code, p.pointer))
        .collect()
}

#[test]
fn minimal_event_is_valid() {
    let event = validate(minimal()).unwrap();
    assert_eq!(event.id, "e-1");
    assert_eq!(event.source, "/shop");
    assert_eq!(event.event_type, "order.placed");
    assert!(event.data.is_none());
}

#[test]
fn empty_object_reports_every_missing_attribute() {
    let found = codes(json!({}));
    for name in ["specversion", "id", "source", "type"] {
        assert!(
            found.contains(&(ErrorCode::MissingAttribute, format!("/{name}"))),
            "{name} not reported in {found:?}"
        );
    }
    assert_eq!(found.len(), 4);
}

#[test]
fn null_required_attribute_counts_as_missing() {
    assert_eq!(
        codes(with("id", Value::Null)),
        vec![(ErrorCode::MissingAttribute, "/id".into())]
    );
}

#[test]
fn other_spec_versions_are_refused() {
    for version in [json!("0.3"), json!("2.0"), json!(1.0)] {
        assert_eq!(
            codes(with("specversion", version)),
            vec![(ErrorCode::InvalidSpecversion, "/specversion".into())]
        );
    }
}

#[test]
fn wrong_json_types_are_invalid_attributes() {
    for name in [
        "id",
        "source",
        "type",
        "subject",
        "datacontenttype",
        "dataschema",
    ] {
        assert_eq!(
            codes(with(name, json!(42))),
            vec![(ErrorCode::InvalidAttribute, format!("/{name}"))],
            "{name}"
        );
    }
    assert_eq!(
        codes(with("time", json!(42))),
        vec![(ErrorCode::InvalidAttribute, "/time".into())]
    );
}

#[test]
fn empty_strings_are_refused() {
    for name in ["id", "source", "type", "subject"] {
        assert_eq!(
            codes(with(name, json!(""))),
            vec![(ErrorCode::InvalidAttribute, format!("/{name}"))],
            "{name}"
        );
    }
}

#[test]
fn attributes_over_the_byte_limit_are_too_large() {
    assert_eq!(
        codes(with("id", json!("x".repeat(257)))),
        vec![(ErrorCode::TooLarge, "/id".into())]
    );
    assert!(validate(with("id", json!("x".repeat(256)))).is_ok());
}

#[test]
fn source_must_be_a_uri_reference() {
    assert!(validate(with("source", json!("https://example.com/a?b=c"))).is_ok());
    assert!(validate(with("source", json!("urn:uuid:6e8bc430-9c3a-11d9-9669"))).is_ok());
    assert_eq!(
        codes(with("source", json!("has space"))),
        vec![(ErrorCode::InvalidAttribute, "/source".into())]
    );
}

#[test]
fn dataschema_must_be_an_absolute_uri() {
    assert!(validate(with("dataschema", json!("https://example.com/s.json"))).is_ok());
    assert_eq!(
        codes(with("dataschema", json!("relative/path"))),
        vec![(ErrorCode::InvalidAttribute, "/dataschema".into())]
    );
}

#[test]
fn datacontenttype_must_be_a_media_type() {
    assert!(validate(with(
        "datacontenttype",
        json!("application/json; charset=utf-8")
    ))
    .is_ok());
    assert_eq!(
        codes(with("datacontenttype", json!("json"))),
        vec![(ErrorCode::InvalidAttribute, "/datacontenttype".into())]
    );
}

#[test]
fn time_is_parsed_and_normalised_to_utc() {
    let event = validate(with("time", json!("2024-05-01T12:00:00.5+02:00"))).unwrap();
    assert_eq!(
        Event::time_text(&event.time.unwrap()),
        "2024-05-01T10:00:00.500Z"
    );
}

#[test]
fn invalid_time_is_refused() {
    for text in ["yesterday", "2024-13-01T00:00:00Z", "2024-05-01"] {
        assert_eq!(
            codes(with("time", json!(text))),
            vec![(ErrorCode::InvalidTime, "/time".into())],
            "{text}"
        );
    }
}

#[test]
fn time_more_than_a_day_ahead_is_refused() {
    let later = Utc::now() + chrono::Duration::hours(25);
    assert_eq!(
        codes(with("time", json!(Event::time_text(&later)))),
        vec![(ErrorCode::InvalidTime, "/time".into())]
    );
    let soon = Utc::now() + chrono::Duration::hours(23);
    assert!(validate(with("time", json!(Event::time_text(&soon)))).is_ok());
}

#[test]
fn nul_is_refused_in_attributes_data_and_keys() {
    assert_eq!(
        codes(with("subject", json!("a\u{0}b"))),
        vec![(ErrorCode::InvalidAttribute, "/subject".into())]
    );
    assert_eq!(
        codes(with("data", json!({"k": ["ok", "bad\u{0}"]}))),
        vec![(ErrorCode::InvalidAttribute, "/data/k/1".into())]
    );
    assert_eq!(
        codes(with("data", json!({"a/\u{0}": 1}))),
        vec![(ErrorCode::InvalidAttribute, "/data/a~1\u{0}".into())]
    );
}

#[test]
fn data_and_data_base64_together_are_refused() {
    let mut event = with("data", json!(1));
    event["data_base64"] = json!("AQID");
    assert_eq!(
        codes(event),
        vec![(ErrorCode::InvalidAttribute, "/data_base64".into())]
    );
}

#[test]
fn data_base64_must_be_base64() {
    let event = validate(with("data_base64", json!("AQID"))).unwrap();
    assert_eq!(event.data, Some(EventData::Base64("AQID".into())));
    assert_eq!(
        codes(with("data_base64", json!("not base64!"))),
        vec![(ErrorCode::InvalidAttribute, "/data_base64".into())]
    );
}

#[test]
fn extensions_are_kept_with_their_values() {
    let mut event = minimal();
    event["traceparent"] = json!("00-abc");
    event["priority"] = json!(3);
    event["sampled"] = json!(true);
    let event = validate(event).unwrap();
    assert_eq!(event.extensions.len(), 3);
    assert_eq!(event.extensions["priority"], json!(3));
}

#[test]
fn attribute_limits_count_utf8_bytes_not_characters() {
    // 129 two-byte characters: 258 bytes, over the default 256, though only 129 characters.
    let long = "é".repeat(129);
    for field in ["id", "type", "subject", "myext"] {
        assert_eq!(
            codes(with(field, json!(long))),
            vec![(ErrorCode::TooLarge, format!("/{field}"))],
            "{field}"
        );
    }
    // 128 of them is 256 bytes: exactly the limit.
    assert!(validate(with("myext", json!("é".repeat(128)))).is_ok());
}

#[test]
fn extension_names_outside_a_to_z_and_digits_are_refused() {
    for name in [
        "Upper",
        "with-dash",
        "with_underscore",
        "abcdefghijklmnopqrstu",
    ] {
        assert_eq!(
            codes(with(name, json!("x"))),
            vec![(ErrorCode::InvalidExtensionName, format!("/{name}"))],
            "{name}"
        );
    }
}

#[test]
fn extension_values_must_be_scalars_of_the_type_system() {
    for value in [
        json!({"a": 1}),
        json!([1]),
        json!(1.5),
        json!(3_000_000_000_i64),
    ] {
        assert_eq!(
            codes(with("ext", value.clone())),
            vec![(ErrorCode::InvalidAttribute, "/ext".into())],
            "{value}"
        );
    }
}

#[test]
fn event_over_the_size_limit_is_too_large() {
    let event = with("data", json!("x".repeat(64 * 1024)));
    assert_eq!(codes(event), vec![(ErrorCode::TooLarge, String::new())]);
}

#[test]
fn non_object_is_refused() {
    assert_eq!(
        codes(json!([1])),
        vec![(ErrorCode::NotAnObject, String::new())]
    );
}

#[test]
fn serialized_form_round_trips_through_validation() {
    let mut input = with("data", json!({"a": [1, 2.5, null]}));
    input["subject"] = json!("cart/7");
    input["time"] = json!("2024-05-01T10:00:00Z");
    input["ext"] = json!("v");
    let event = validate(input).unwrap();
    let text = serde_json::to_vec(&event).unwrap();
    assert_eq!(text.len(), event.serialized_len());
    let again: Event = serde_json::from_slice(&text).unwrap();
    assert_eq!(again, event);
}

#[test]
fn nul_in_data_is_reported_where_it_is() {
    let found = codes(with(
        "data",
        json!({"fine": ["a", {"x/y": "b\u{0}c"}], "k\u{0}": 1, "also": "fine"}),
    ));
    assert_eq!(
        found,
        vec![
            (ErrorCode::InvalidAttribute, "/data/fine/1/x~1y".to_string()),
            (ErrorCode::InvalidAttribute, "/data/k\u{0}".to_string()),
        ]
    );
    assert!(validate(with("data", json!({"fine": ["a", {"x/y": "b"}]}))).is_ok());
}

#[test]
fn bad_extensions_are_reported_by_name() {
    let mut event = minimal();
    event["bad/name"] = json!("x");
    event["nul"] = json!("a\u{0}");
    event["nested"] = json!({"a": 1});
    event["fine"] = json!("ok");
    let found = codes(event);
    assert_eq!(
        found,
        vec![
            (ErrorCode::InvalidExtensionName, "/bad~1name".to_string()),
            (ErrorCode::InvalidAttribute, "/nested".to_string()),
            (ErrorCode::InvalidAttribute, "/nul".to_string()),
        ]
    );
}
