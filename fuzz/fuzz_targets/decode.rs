//! Fuzzes the gateway's request decoding: the three HTTP modes, gzip, and event validation.
//!
//! The first byte picks the mode (and gzip); the rest is the body. Beyond "never panics", it
//! checks the one property everything downstream relies on: an accepted event survives the
//! envelope round trip unchanged.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use shared_types::{Envelope, Limits};

fuzz_target!(|input: &[u8]| {
    let Some((&selector, body)) = input.split_first() else {
        return;
    };
    let mut headers = HeaderMap::new();
    let content_type = match selector % 5 {
        0 => "application/cloudevents+json",
        1 => "application/cloudevents-batch+json",
        2 => "application/json",
        3 => "application/octet-stream",
        _ => "text/plain",
    };
    headers.insert("content-type", HeaderValue::from_static(content_type));
    if selector % 5 >= 3 {
        for (name, value) in [("ce-specversion", "1.0"), ("ce-id", "fuzz"), ("ce-source", "/fuzz"), ("ce-type", "fuzz")] {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    if selector & 0x80 != 0 {
        headers.insert("content-encoding", HeaderValue::from_static("gzip"));
    }
    let limits = Limits::default();
    let Ok(body) = gateway::decode::decode_content(&headers, bytes::Bytes::copy_from_slice(body), limits.max_body_bytes) else {
        return;
    };
    let Ok((_, events)) = gateway::decode::decode_events(&headers, &body, &limits, chrono::Utc::now()) else {
        return;
    };
    assert!(!events.is_empty() && events.len() <= limits.max_batch_events);
    let envelope = Envelope::single("fuzz".into(), chrono::Utc::now(), events.clone());
    let decoded = Envelope::decode_single(&envelope.encode()).expect("an accepted event must decode");
    assert_eq!(decoded.events, events);
});
