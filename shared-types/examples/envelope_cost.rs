//! What the queue envelope costs per event on one core: encoding (the gateway, once per message),
//! decoding (the consumer, once per message it stores) and the serialised-size count that event
//! validation makes, on a message of 100 events shaped as `scripts/perf/bench` sends them (four
//! types, a subject, three data fields). The stack's figures (docs/benchmarks.md) give what a
//! gateway and a consumer spend per event in all; this says how much of it is the envelope.
//!
//! usage: cargo run --release -p shared-types --example envelope_cost [rounds]   (default 2000)
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Instant;

use chrono::Utc;
use shared_types::envelope::Envelope;
use shared_types::event::{Event, Validation};

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(2000, |text| text.parse().expect("rounds is a number"));
    let types = ["page.viewed", "page.left", "cart.updated", "order.placed"];
    let events: Vec<Event> = (0..100)
        .map(|n| {
            let value = serde_json::json!({
                "specversion": "1.0", "id": format!("1-{n}"), "source": "/wrk/bench-run",
                "type": types[n % 4], "subject": format!("user/{}", n * 7919 % 10000),
                "data": {"n": n, "path": format!("/p/{}", n % 97), "run": "bench-run"}
            });
            Event::from_json(value, &Validation::structural()).unwrap()
        })
        .collect();
    let envelope = Envelope::single("request-1".into(), Utc::now(), events);
    let body = envelope.encode();
    let per_event = |started: Instant| {
        started.elapsed().as_nanos() as f64 / (rounds * envelope.event_count()) as f64 / 1000.0
    };
    println!(
        "message of {} events, {} bytes",
        envelope.event_count(),
        body.len()
    );

    // One round of each first, so every figure measures warm code.
    let mut bytes = 0;
    for _ in 0..=rounds {
        bytes += envelope.encode().len();
    }
    let started = Instant::now();
    for _ in 0..rounds {
        bytes += envelope.encode().len();
    }
    println!("          encode: {:.2} µs per event", per_event(started));

    let mut decoded = 0;
    for _ in 0..=rounds {
        decoded += Envelope::decode(&body).unwrap().event_count();
    }
    let started = Instant::now();
    for _ in 0..rounds {
        decoded += Envelope::decode(&body).unwrap().event_count();
    }
    println!("          decode: {:.2} µs per event", per_event(started));

    let mut size = 0;
    let started = Instant::now();
    for _ in 0..rounds {
        size += envelope.parts[0]
            .events
            .iter()
            .map(Event::serialized_len)
            .sum::<usize>();
    }
    println!(" serialised size: {:.2} µs per event", per_event(started));
    assert!(bytes > 0 && decoded > 0 && size > 0);
}
