//! What checking `data` against a registered schema costs per event, on one core: decodes the
//! bench's batch body (100 events, as `scripts/perf/bench` sends them) repeatedly, without and with the
//! schema `scripts/perf/bench --schema` registers, and prints the time per event of each.
//!
//! usage: cargo run --release -p gateway --example schema_cost [rounds]     (default 2000)
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Instant;

use chrono::Utc;
use gateway::decode::{decode_events, Mode};
use gateway::schema_registry::enforce::{ListedVersion, SchemaSet};
use http::header::{HeaderValue, CONTENT_TYPE};
use http::HeaderMap;
use shared_types::data_schema::Policy;
use shared_types::Limits;

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(2000, |text| text.parse().expect("rounds is a number"));
    let body = format!(
        "[{}]",
        (0..100)
            .map(|n| format!(
                r#"{{"specversion":"1.0","id":"id-{n}","source":"/bench","type":"page.viewed","subject":"user/{n}","data":{{"n":{n},"path":"/p/{}","run":"bench-run"}}}}"#,
                n % 97
            ))
            .collect::<Vec<_>>()
            .join(",")
    );
    let schema = serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
        "required": ["n"], "additionalProperties": false, "properties": {
            "n": {"type": "integer", "minimum": 0},
            "path": {"type": "string", "pattern": "^/p/[0-9]+$"},
            "run": {"type": "string", "maxLength": 128}}
    });
    let set = SchemaSet::build(
        vec![ListedVersion {
            event_type: "page.viewed".into(),
            version: 1,
            policy: Policy::Enforce,
            schema,
        }],
        None,
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/cloudevents-batch+json"),
    );
    let limits = Limits::default();
    let now = Utc::now();
    let events = rounds * 100;
    for (label, check) in [("decode only", false), ("decode + schema", true)] {
        // One round first, so both measure warm code.
        let _ = decode_events(&headers, body.as_bytes(), &limits, now).unwrap();
        let started = Instant::now();
        for _ in 0..rounds {
            let (mode, decoded) = decode_events(&headers, body.as_bytes(), &limits, now).unwrap();
            assert_eq!(mode, Mode::Batch);
            if check {
                assert!(set.check(mode, &decoded, false).is_empty());
            }
        }
        let per_event = started.elapsed().as_nanos() as f64 / events as f64 / 1000.0;
        println!("{label:>16}: {per_event:.2} µs per event ({events} events)");
    }
}
