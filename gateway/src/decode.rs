//! From an HTTP request to validated events: the three CloudEvents HTTP modes and gzip.
//!
//! Everything here is pure (no I/O), so the rules are unit-tested and fuzzed directly. The mode is
//! chosen as the CloudEvents HTTP binding says: a `application/cloudevents+json` or
//! `application/cloudevents-batch+json` body is structured or batch; otherwise any `ce-*` header
//! means binary mode; otherwise plain `application/json` is one event (an object) or a batch (an
//! array); anything else is 415.

use std::io::Read;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http::HeaderMap;
use serde_json::{Map, Value};
use shared_types::event::{Event, Validation};
use shared_types::json::parse_strict;
use shared_types::problem::{ErrorCode, Problem};
use shared_types::Limits;

const CE_HEADER_PREFIX: &str = "ce-";

/// Why a request's body yields no events. Every variant is the client's to fix (4xx).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Neither a CloudEvents media type, nor JSON, nor binary mode.
    #[error("unsupported media type {0:?}")]
    UnsupportedMediaType(String),
    /// A `Content-Encoding` other than gzip or identity.
    #[error("unsupported content encoding {0:?}")]
    UnsupportedEncoding(String),
    /// `Content-Encoding: gzip` on bytes that are not gzip.
    #[error("the body is not valid gzip")]
    InvalidGzip,
    /// The body (after decompression) exceeds the limit.
    #[error("the body exceeds {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// More events in a batch than allowed.
    #[error("the batch holds {count} events; the limit is {limit}")]
    BatchTooLarge {
        /// Events in the batch.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// The body is not one well-formed JSON document of the expected shape.
    #[error("{}", .0.message)]
    Json(Problem),
    /// A batch with no events.
    #[error("the batch is empty")]
    EmptyBatch,
    /// One or more events break the rules; every problem is listed.
    #[error("{} problem(s) in the request's events", .0.len())]
    InvalidEvents(Vec<Problem>),
}

/// The HTTP mode a request used, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One event as a JSON object.
    Structured,
    /// An array of events.
    Batch,
    /// Attributes in `ce-*` headers, the body is the data.
    Binary,
}

/// Reverses `Content-Encoding`, stopping as soon as the output would pass `limit`.
pub fn decode_content(
    headers: &HeaderMap,
    body: bytes::Bytes,
    limit: usize,
) -> Result<bytes::Bytes, DecodeError> {
    let Some(encoding) = headers.get(CONTENT_ENCODING) else {
        return Ok(body);
    };
    let encoding = encoding
        .to_str()
        .map_err(|_| DecodeError::UnsupportedEncoding("(not text)".into()))?
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "" | "identity" => Ok(body),
        "gzip" | "x-gzip" => {
            let mut output = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
            let decoder = flate2::read::GzDecoder::new(&body[..]);
            let limit_plus_one = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
            decoder
                .take(limit_plus_one)
                .read_to_end(&mut output)
                .map_err(|_| DecodeError::InvalidGzip)?;
            if output.len() > limit {
                return Err(DecodeError::BodyTooLarge { limit });
            }
            Ok(output.into())
        }
        other => Err(DecodeError::UnsupportedEncoding(other.to_owned())),
    }
}

/// Reads the events of one request whose body is already decoded.
pub fn decode_events(
    headers: &HeaderMap,
    body: &[u8],
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<(Mode, Vec<Event>), DecodeError> {
    if body.len() > limits.max_body_bytes {
        return Err(DecodeError::BodyTooLarge {
            limit: limits.max_body_bytes,
        });
    }
    let rules = Validation {
        limits,
        now: Some(now),
    };
    let media_type = media_type(headers);
    match media_type.as_deref() {
        Some("application/cloudevents+json") => {
            structured(body, &rules).map(|e| (Mode::Structured, vec![e]))
        }
        Some("application/cloudevents-batch+json") => batch(body, &rules).map(|e| (Mode::Batch, e)),
        _ if has_ce_headers(headers) => {
            binary(headers, body, &rules).map(|e| (Mode::Binary, vec![e]))
        }
        Some("application/json") => {
            let value = parse_strict(body, limits.max_depth + 1).map_err(DecodeError::Json)?;
            if value.is_array() {
                batch_value(value, &rules).map(|e| (Mode::Batch, e))
            } else {
                depth_ok(&value, limits.max_depth)?;
                one(value, &rules).map(|e| (Mode::Structured, vec![e]))
            }
        }
        Some(other) => Err(DecodeError::UnsupportedMediaType(other.to_owned())),
        None => Err(DecodeError::UnsupportedMediaType(String::new())),
    }
}

/// The media type's essence, lower-cased: `application/json; charset=utf-8` → `application/json`.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next()?.trim().to_ascii_lowercase();
    (!essence.is_empty()).then_some(essence)
}

fn has_ce_headers(headers: &HeaderMap) -> bool {
    headers
        .keys()
        .any(|name| name.as_str().starts_with(CE_HEADER_PREFIX))
}

fn structured(body: &[u8], rules: &Validation<'_>) -> Result<Event, DecodeError> {
    let value = parse_strict(body, rules.limits.max_depth).map_err(DecodeError::Json)?;
    one(value, rules)
}

fn one(value: Value, rules: &Validation<'_>) -> Result<Event, DecodeError> {
    Event::from_json(value, rules).map_err(DecodeError::InvalidEvents)
}

/// A plain-JSON object was parsed with one level of slack (it might have been a batch).
fn depth_ok(value: &Value, max_depth: usize) -> Result<(), DecodeError> {
    fn depth(value: &Value) -> usize {
        match value {
            Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
            Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    if depth(value) > max_depth {
        return Err(DecodeError::Json(Problem::new(
            ErrorCode::TooDeep,
            "",
            format!("JSON is nested deeper than {max_depth} levels"),
        )));
    }
    Ok(())
}

fn batch(body: &[u8], rules: &Validation<'_>) -> Result<Vec<Event>, DecodeError> {
    let value = parse_strict(body, rules.limits.max_depth + 1).map_err(DecodeError::Json)?;
    batch_value(value, rules)
}

fn batch_value(value: Value, rules: &Validation<'_>) -> Result<Vec<Event>, DecodeError> {
    let Value::Array(items) = value else {
        return Err(DecodeError::Json(Problem::new(
            ErrorCode::NotAnArray,
            "",
            "a batch must be a JSON array of events",
        )));
    };
    if items.is_empty() {
        return Err(DecodeError::EmptyBatch);
    }
    if items.len() > rules.limits.max_batch_events {
        return Err(DecodeError::BatchTooLarge {
            count: items.len(),
            limit: rules.limits.max_batch_events,
        });
    }
    let mut events = Vec::with_capacity(items.len());
    let mut problems = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        match Event::from_json(item, rules) {
            Ok(event) => events.push(event),
            Err(found) => problems.extend(found.into_iter().map(|p| p.at_index(index))),
        }
    }
    if problems.is_empty() {
        Ok(events)
    } else {
        Err(DecodeError::InvalidEvents(problems))
    }
}

/// Binary mode: attributes from `ce-*` headers (percent-decoded), `Content-Type` as
/// `datacontenttype`, the body as `data` when it is JSON and as `data_base64` otherwise.
fn binary(headers: &HeaderMap, body: &[u8], rules: &Validation<'_>) -> Result<Event, DecodeError> {
    let mut attributes = Map::new();
    let mut problems = Vec::new();
    for name in headers.keys() {
        let Some(attribute) = name.as_str().strip_prefix(CE_HEADER_PREFIX) else {
            continue;
        };
        let pointer = format!("/{attribute}");
        let mut values = headers.get_all(name).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            problems.push(Problem::new(
                ErrorCode::InvalidAttribute,
                pointer,
                format!("the header {name} is repeated"),
            ));
            continue;
        };
        match percent_decode(value.as_bytes()) {
            Some(text) => {
                attributes.insert(attribute.to_owned(), Value::String(text));
            }
            None => problems.push(Problem::new(
                ErrorCode::InvalidAttribute,
                pointer,
                format!("the header {name} is not valid percent-encoded UTF-8"),
            )),
        }
    }
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    if let Some(content_type) = &content_type {
        attributes.insert(
            "datacontenttype".into(),
            Value::String(content_type.clone()),
        );
    }
    if !body.is_empty() {
        if content_type.as_deref().is_some_and(is_json_media_type) {
            match parse_strict(body, rules.limits.max_depth.saturating_sub(1)) {
                Ok(data) => {
                    attributes.insert("data".into(), data);
                }
                Err(mut problem) => {
                    problem.pointer = "/data".into();
                    problems.push(problem);
                }
            }
        } else {
            let encoded = base64::engine::general_purpose::STANDARD.encode(body);
            attributes.insert("data_base64".into(), Value::String(encoded));
        }
    }
    match Event::from_json(Value::Object(attributes), rules) {
        Ok(event) if problems.is_empty() => Ok(event),
        Ok(_) => Err(DecodeError::InvalidEvents(problems)),
        Err(found) => {
            problems.extend(found);
            Err(DecodeError::InvalidEvents(problems))
        }
    }
}

fn is_json_media_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// Decodes `%XX` escapes (CloudEvents HTTP binding 3.1.3.2); `None` for a bad escape or bad UTF-8.
fn percent_decode(raw: &[u8]) -> Option<String> {
    let mut output = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter().copied();
    while let Some(byte) = bytes.next() {
        if byte == b'%' {
            let high = (bytes.next()? as char).to_digit(16)?;
            let low = (bytes.next()? as char).to_digit(16)?;
            output.push(u8::try_from(high * 16 + low).ok()?);
        } else {
            output.push(byte);
        }
    }
    String::from_utf8(output).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use shared_types::event::EventData;
    use std::io::Write;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn decode(
        pairs: &[(&'static str, &str)],
        body: &[u8],
    ) -> Result<(Mode, Vec<Event>), DecodeError> {
        decode_events(&headers(pairs), body, &Limits::default(), Utc::now())
    }

    const EVENT: &str = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#;

    #[test]
    fn structured_mode_reads_one_event() {
        let (mode, events) = decode(
            &[("content-type", "application/cloudevents+json")],
            EVENT.as_bytes(),
        )
        .unwrap();
        assert_eq!(mode, Mode::Structured);
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn plain_json_object_is_structured_and_array_is_batch() {
        let (mode, _) = decode(
            &[("content-type", "application/json; charset=utf-8")],
            EVENT.as_bytes(),
        )
        .unwrap();
        assert_eq!(mode, Mode::Structured);
        let body = format!("[{EVENT},{EVENT}]");
        let (mode, events) =
            decode(&[("content-type", "application/json")], body.as_bytes()).unwrap();
        assert_eq!((mode, events.len()), (Mode::Batch, 2));
    }

    #[test]
    fn batch_mode_must_be_an_array() {
        let error = decode(
            &[("content-type", "application/cloudevents-batch+json")],
            EVENT.as_bytes(),
        )
        .unwrap_err();
        assert!(matches!(error, DecodeError::Json(p) if p.code == ErrorCode::NotAnArray));
    }

    #[test]
    fn batch_reports_each_invalid_index() {
        let body = format!(r#"[{EVENT}, {{"id": 5}}, 7, {EVENT}]"#);
        let error = decode(
            &[("content-type", "application/cloudevents-batch+json")],
            body.as_bytes(),
        )
        .unwrap_err();
        let DecodeError::InvalidEvents(problems) = error else {
            panic!("{error:?}")
        };
        let indexes: std::collections::BTreeSet<_> = problems.iter().map(|p| p.index).collect();
        assert_eq!(
            indexes.into_iter().collect::<Vec<_>>(),
            vec![Some(1), Some(2)]
        );
    }

    #[test]
    fn empty_batch_and_oversized_batch_are_refused() {
        assert_eq!(
            decode(
                &[("content-type", "application/cloudevents-batch+json")],
                b"[]"
            )
            .unwrap_err(),
            DecodeError::EmptyBatch
        );
        let body = format!("[{}]", vec![EVENT; 501].join(","));
        assert_eq!(
            decode(
                &[("content-type", "application/cloudevents-batch+json")],
                body.as_bytes()
            )
            .unwrap_err(),
            DecodeError::BatchTooLarge {
                count: 501,
                limit: 500
            }
        );
    }

    #[test]
    fn binary_mode_reads_headers_and_json_data() {
        let (mode, events) = decode(
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "b1"),
                ("ce-source", "/src"),
                ("ce-type", "t"),
                ("ce-subject", "caf%C3%A9"),
                ("ce-myext", "v"),
                ("content-type", "application/json"),
            ],
            br#"{"k": 1}"#,
        )
        .unwrap();
        assert_eq!(mode, Mode::Binary);
        let event = &events[0];
        assert_eq!(event.subject.as_deref(), Some("café"));
        assert_eq!(event.extensions["myext"], serde_json::json!("v"));
        assert_eq!(
            event.data,
            Some(EventData::Json(serde_json::json!({"k": 1})))
        );
    }

    #[test]
    fn binary_mode_with_opaque_body_is_base64() {
        let (_, events) = decode(
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "b"),
                ("ce-source", "/s"),
                ("ce-type", "t"),
                ("content-type", "application/octet-stream"),
            ],
            &[0, 159, 146, 150],
        )
        .unwrap();
        assert_eq!(events[0].data, Some(EventData::Base64("AJ+Slg==".into())));
    }

    #[test]
    fn binary_mode_without_specversion_is_missing_attribute() {
        let error = decode(
            &[
                ("ce-id", "b"),
                ("ce-source", "/s"),
                ("ce-type", "t"),
                ("content-type", "text/plain"),
            ],
            b"hi",
        )
        .unwrap_err();
        let DecodeError::InvalidEvents(problems) = error else {
            panic!("{error:?}")
        };
        assert_eq!(problems[0].code, ErrorCode::MissingAttribute);
        assert_eq!(problems[0].pointer, "/specversion");
    }

    #[test]
    fn unknown_media_type_is_unsupported() {
        assert_eq!(
            decode(&[("content-type", "text/plain")], EVENT.as_bytes()).unwrap_err(),
            DecodeError::UnsupportedMediaType("text/plain".into())
        );
        assert_eq!(
            decode(&[], EVENT.as_bytes()).unwrap_err(),
            DecodeError::UnsupportedMediaType(String::new())
        );
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn gzip_body_is_decompressed() {
        let body = gzip(EVENT.as_bytes());
        let decoded =
            decode_content(&headers(&[("content-encoding", "gzip")]), body.into(), 1024).unwrap();
        assert_eq!(&decoded[..], EVENT.as_bytes());
    }

    #[test]
    fn gzip_bomb_stops_at_the_limit() {
        let bomb = gzip(&vec![b' '; 50 * 1024 * 1024]);
        assert!(bomb.len() < 100 * 1024);
        let error = decode_content(
            &headers(&[("content-encoding", "gzip")]),
            bomb.into(),
            1024 * 1024,
        )
        .unwrap_err();
        assert_eq!(error, DecodeError::BodyTooLarge { limit: 1024 * 1024 });
    }

    #[test]
    fn gzip_header_on_a_plain_body_is_invalid() {
        let error = decode_content(
            &headers(&[("content-encoding", "gzip")]),
            EVENT.as_bytes().to_vec().into(),
            1024,
        )
        .unwrap_err();
        assert_eq!(error, DecodeError::InvalidGzip);
    }

    #[test]
    fn other_encodings_are_unsupported() {
        let error = decode_content(
            &headers(&[("content-encoding", "br")]),
            EVENT.as_bytes().to_vec().into(),
            1024,
        )
        .unwrap_err();
        assert_eq!(error, DecodeError::UnsupportedEncoding("br".into()));
    }
}
