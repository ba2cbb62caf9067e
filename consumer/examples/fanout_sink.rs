//! The test suite's webhook sink (`tests/it/sink.rs`) as a program, for `scripts/perf/fanout`:
//! Python's http.server cannot take thousands of requests a second beside Warren on two cores.
//! Answers 204, or as told; on SIGTERM or SIGINT writes one JSON line per request to `--out`.
//!
//! usage: fanout_sink --port P --out FILE [--delay PATH=MS]... [--fail-first PATH=SUBJECT=COUNT]
//!   --delay: answer requests to PATH after MS milliseconds
//!   --fail-first: answer 500 to the first COUNT attempts of the first event with subject SUBJECT
//!                 sent to PATH (every other event, and that one afterwards, gets 204)
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[allow(dead_code)]
#[path = "../tests/it/sink.rs"]
mod sink;

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sink::{Answer, TestSink};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: fanout_sink --port P --out FILE [--delay PATH=MS]... [--fail-first PATH=SUBJECT=COUNT]";
    let mut port = None;
    let mut out = None;
    let mut delays: HashMap<String, u64> = HashMap::new();
    let mut fail_first: Option<(String, String, usize)> = None;
    let mut words = args.iter();
    while let Some(word) = words.next() {
        let value = words.next().expect(usage);
        match word.as_str() {
            "--port" => port = Some(value.parse::<u16>().expect(usage)),
            "--out" => out = Some(value.clone()),
            "--delay" => {
                let (path, ms) = value.split_once('=').expect(usage);
                delays.insert(path.to_owned(), ms.parse().expect(usage));
            }
            "--fail-first" => {
                let mut parts = value.splitn(3, '=');
                fail_first = Some((
                    parts.next().expect(usage).to_owned(),
                    parts.next().expect(usage).to_owned(),
                    parts.next().expect(usage).parse().expect(usage),
                ));
            }
            _ => panic!("{usage}"),
        }
    }
    let (port, out) = (port.expect(usage), out.expect(usage));
    let sink = TestSink::start_on(port).await;
    // The webhook-id of the first event with the failing subject, once seen.
    let failing: Mutex<Option<String>> = Mutex::new(None);
    sink.respond(move |received, earlier| {
        let delay = Duration::from_millis(delays.get(&received.path).copied().unwrap_or(0));
        if let Some((path, subject, count)) = &fail_first {
            if received.path == *path && received.header("ce-subject") == Some(subject.as_str()) {
                let mut first = failing.lock().unwrap();
                let id = first.get_or_insert_with(|| received.webhook_id()).clone();
                if id == received.webhook_id() && earlier < *count {
                    return Answer {
                        delay,
                        ..Answer::status(500)
                    };
                }
            }
        }
        Answer {
            delay,
            ..Answer::status(204)
        }
    });
    eprintln!("fanout_sink listening on {}", sink.url(""));
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // Arrival times as wall-clock seconds, to join with the events' received_at.
    let now_wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let now_mono = std::time::Instant::now();
    let mut file = std::io::BufWriter::new(std::fs::File::create(&out).unwrap());
    for received in sink.received() {
        let at = now_wall - (now_mono - received.at).as_secs_f64();
        let line = serde_json::json!({
            "t": at,
            "path": received.path,
            "status": received.status,
            "webhook_id": received.webhook_id(),
            "ce_id": received.event_id(),
            "ce_subject": received.header("ce-subject"),
        });
        writeln!(file, "{line}").unwrap();
    }
    file.flush().unwrap();
}
