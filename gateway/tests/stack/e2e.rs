//! End to end through nginx on the stack `scripts/stack up` started: 1 000 events in mixed modes
//! (single, batch, binary, gzip), read back by list pagination and by lookup, each exactly once,
//! and the counts endpoint agrees. Needs `WARREN_E2E_URL` (the URL `scripts/stack up` printed).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};

use crate::{base_url, encode, with_key};

fn event(source: &str, id: &str, kind: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": source, "type": kind, "data": {"id": id}})
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn post(&self, content_type: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> u16 {
        let mut request = with_key(self.http.post(format!("{}/v1/events", self.base)), "ingest")
            .header("content-type", content_type)
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        assert!(response.headers().contains_key("x-request-id"));
        response.status().as_u16()
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = with_key(self.http.get(format!("{}{path}", self.base)), "read")
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_events_in_mixed_modes_are_each_stored_once() {
    let client = Client {
        http: reqwest::Client::new(),
        base: base_url(),
    };
    let run = uuid::Uuid::new_v4().simple().to_string();
    let source = format!("/e2e/{run}");
    let started = chrono::Utc::now() - chrono::Duration::minutes(1);
    let mut sent: BTreeMap<String, &str> = BTreeMap::new();

    // 250 single structured events.
    for i in 0..250 {
        let id = format!("single-{i}");
        let status = client
            .post(
                "application/cloudevents+json",
                event(&source, &id, "e2e.single").to_string().into_bytes(),
                &[],
            )
            .await;
        assert_eq!(status, 202, "{id}");
        sent.insert(id, "e2e.single");
    }
    // 250 in five batches of 50, two types each.
    for batch in 0..5 {
        let events: Vec<Value> = (0..50)
            .map(|i| {
                let kind = if i % 2 == 0 {
                    "e2e.batch.even"
                } else {
                    "e2e.batch.odd"
                };
                let id = format!("batch-{batch}-{i}");
                sent.insert(id.clone(), kind);
                event(&source, &id, kind)
            })
            .collect();
        let status = client
            .post(
                "application/cloudevents-batch+json",
                Value::Array(events).to_string().into_bytes(),
                &[],
            )
            .await;
        assert_eq!(status, 202);
    }
    // 250 binary-mode events.
    for i in 0..250 {
        let id = format!("binary-{i}");
        let headers = [
            ("ce-specversion", "1.0"),
            ("ce-id", id.as_str()),
            ("ce-source", source.as_str()),
            ("ce-type", "e2e.binary"),
        ];
        let status = client
            .post(
                "application/json",
                format!(r#"{{"n":{i}}}"#).into_bytes(),
                &headers,
            )
            .await;
        assert_eq!(status, 202, "{id}");
        sent.insert(id, "e2e.binary");
    }
    // 250 in gzip batches of 25.
    for batch in 0..10 {
        let events: Vec<Value> = (0..25)
            .map(|i| {
                let id = format!("gzip-{batch}-{i}");
                sent.insert(id.clone(), "e2e.gzip");
                event(&source, &id, "e2e.gzip")
            })
            .collect();
        let body = gzip(Value::Array(events).to_string().as_bytes());
        let status = client
            .post("application/json", body, &[("content-encoding", "gzip")])
            .await;
        assert_eq!(status, 202);
    }
    assert_eq!(sent.len(), 1000);

    // Read back by list pagination, waiting for the consumers to catch up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let listed = loop {
        let mut listed: Vec<String> = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/events?source={}&limit=150", encode(&source));
            if let Some(cursor) = &cursor {
                path.push_str(&format!("&cursor={cursor}"));
            }
            let (status, page) = client.get(&path).await;
            assert_eq!(status, 200, "{page}");
            listed.extend(
                page["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["id"].as_str().unwrap().to_owned()),
            );
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        if listed.len() >= 1000 || tokio::time::Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for id in &listed {
        *seen.entry(id.as_str()).or_default() += 1;
    }
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "listed more than once: {duplicated:?}"
    );
    let missing: Vec<_> = sent
        .keys()
        .filter(|id| !seen.contains_key(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} events missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(listed.len(), 1000);

    // Each by lookup, with its type.
    for (id, kind) in &sent {
        let (status, found) = client
            .get(&format!(
                "/v1/events/lookup?source={}&id={id}",
                encode(&source)
            ))
            .await;
        assert_eq!(status, 200, "{id}");
        assert_eq!(found["type"], *kind, "{id}");
    }

    // The counts endpoint agrees, in total and per type.
    let since = encode(&started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let (status, counts) = client
        .get(&format!(
            "/v1/stats/counts?bucket=hour&since={since}&source={}&group_by=type",
            encode(&source)
        ))
        .await;
    assert_eq!(status, 200, "{counts}");
    let mut total = 0;
    let mut by_type: BTreeMap<String, i64> = BTreeMap::new();
    for bucket in counts["buckets"].as_array().unwrap() {
        total += bucket["count"].as_i64().unwrap();
        for (kind, n) in bucket["by_type"].as_object().unwrap() {
            *by_type.entry(kind.clone()).or_default() += n.as_i64().unwrap();
        }
    }
    assert_eq!(total, 1000);
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for kind in sent.values() {
        *expected.entry((*kind).to_owned()).or_default() += 1;
    }
    assert_eq!(by_type, expected);
}
