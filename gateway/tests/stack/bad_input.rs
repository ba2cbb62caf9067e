//! The bad-input list through nginx: each case a 4xx in the JSON error shape, nothing stored, and
//! a valid event accepted right after.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bad_input_cases::cases;
use crate::{base_url, encode, with_key};

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_input_through_nginx_gets_a_json_4xx_and_stores_nothing() {
    let base = base_url();
    let client = reqwest::Client::new();
    let source = format!("/bad-input/{}", uuid::Uuid::new_v4().simple());
    for case in cases() {
        // Bad cases carry this run's source wherever their body is an event, so a leak would show.
        let body = String::from_utf8(case.body.clone())
            .map(|text| {
                text.replace("\"/tests\"", &format!("\"{source}\""))
                    .into_bytes()
            })
            .unwrap_or(case.body);
        let mut request = with_key(client.post(format!("{base}/v1/events")), "ingest").body(body);
        if !case.content_type.is_empty() {
            request = request.header("content-type", case.content_type);
        }
        for (name, value) in &case.headers {
            request = request.header(*name, value.as_str());
        }
        let response = request.send().await.unwrap();
        // nginx answers oversized headers itself, always with status 400 (its internal 494),
        // though the body carries Warren's code.
        let status = if case.code == "headers_too_large" {
            400
        } else {
            case.status
        };
        assert_eq!(response.status().as_u16(), status, "{}", case.name);
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap()),
            Some("application/json"),
            "{}",
            case.name
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], case.code, "{}: {body}", case.name);
        assert!(body["error"]["message"].is_string() && body["error"]["details"].is_array());

        let valid = serde_json::json!({"specversion": "1.0", "id": uuid::Uuid::new_v4().to_string(),
                                       "source": format!("{source}/valid"), "type": "after.bad"});
        let response = with_key(client.post(format!("{base}/v1/events")), "ingest")
            .header("content-type", "application/cloudevents+json")
            .body(valid.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "valid event after {}", case.name);
    }
    // A sentinel with the bad cases' source is the only event stored under it.
    assert_only_the_sentinel_is_stored(&base, &source, "a bad input was stored").await;
}

/// Posts an event with id `sentinel` under `source`, waits until the read API lists it, and
/// asserts it is the only event stored under `source`.
async fn assert_only_the_sentinel_is_stored(base: &str, source: &str, leaked: &str) {
    let client = reqwest::Client::new();
    let sentinel = serde_json::json!({"specversion": "1.0", "id": "sentinel", "source": source, "type": "sentinel"});
    let response = with_key(client.post(format!("{base}/v1/events")), "ingest")
        .header("content-type", "application/cloudevents+json")
        .body(sentinel.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page: Value = with_key(
            client.get(format!("{base}/v1/events?source={}", encode(source))),
            "read",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        let ids: Vec<&str> = page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect();
        if !ids.is_empty() {
            assert_eq!(ids, ["sentinel"], "{leaked}");
            break;
        }
        assert!(Instant::now() < deadline, "the sentinel never arrived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_client_is_cut_by_nginx_and_others_are_served() {
    let base = base_url();
    let address = base.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    slow.write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let client = reqwest::Client::new();
    let mut cut = false;
    while started.elapsed() < Duration::from_secs(20) {
        let served = with_key(client.get(format!("{base}/v1/events?limit=1")), "read")
            .send()
            .await
            .unwrap();
        assert_eq!(served.status(), 200, "another client was not served");
        if slow.write_all(b"X-Slow: 1\r\n").await.is_err() {
            cut = true;
            break;
        }
        let mut buffer = [0u8; 512];
        if let Ok(Ok(read)) =
            tokio::time::timeout(Duration::from_millis(500), slow.read(&mut buffer)).await
        {
            if read == 0 || buffer.starts_with(b"HTTP/1.1 408") {
                cut = true;
                break;
            }
        }
    }
    assert!(cut, "nginx never cut the slow client");
}

#[tokio::test(flavor = "multi_thread")]
async fn methods_other_than_get_and_post_on_the_ingest_route_are_405() {
    let base = base_url();
    let client = reqwest::Client::new();
    for method in [
        reqwest::Method::DELETE,
        reqwest::Method::PUT,
        reqwest::Method::PATCH,
    ] {
        let response = client
            .request(method.clone(), format!("{base}/v1/events"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "method_not_allowed");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn service_health_and_metrics_are_not_public() {
    let base = base_url();
    let client = reqwest::Client::new();
    for path in ["/metrics", "/readyz", "/internal"] {
        let response = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found");
    }
}

/// Sends `request` as raw bytes and returns (status, content type, body) of the answer.
async fn raw_exchange(address: &str, request: &[u8]) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_http_through_nginx_gets_a_json_4xx_never_a_500_and_stores_nothing() {
    let base = base_url();
    let address = base.trim_start_matches("http://").to_owned();
    let source = format!("/hygiene/{}", uuid::Uuid::new_v4().simple());
    let event =
        format!(r#"{{"specversion":"1.0","id":"h-1","source":"{source}","type":"hygiene"}}"#);
    let key = std::env::var("WARREN_INGEST_KEY").unwrap_or_default();
    // A POST of a valid event behind a broken request line or header: none may be stored.
    let post = |line: &str, extra: &str| -> Vec<u8> {
        format!(
            "{line}\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/cloudevents+json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{event}",
            event.len()
        )
        .into_bytes()
    };
    let mut long_uri = b"GET /v1/events?source=".to_vec();
    long_uri.extend(std::iter::repeat_n(b'a', 20_000));
    long_uri.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        // Garbage request lines.
        ("control bytes for a request line", b"\x01\x02garbage\r\n\r\n".to_vec(), 400),
        ("a method with a symbol", post("P@ST /v1/events HTTP/1.1", ""), 400),
        ("a lowercase method", post("post /v1/events HTTP/1.1", ""), 400),
        ("no URI", b"GET\r\n\r\n".to_vec(), 400),
        ("a token after the version", post("POST /v1/events HTTP/1.1 extra", ""), 400),
        ("a misspelled protocol", post("POST /v1/events HTTX/1.1", ""), 400),
        ("NUL inside the path", post("POST /v1/ev\0ents HTTP/1.1", ""), 400),
        ("a space inside the path", post("POST /v1/ev ents HTTP/1.1", ""), 400),
        ("HTTP/2.0 on an HTTP/1 port", post("POST /v1/events HTTP/2.0", ""), 400),
        // Dot-segments that climb above the root.
        ("dot-segments above the root", post("POST /../../v1/events HTTP/1.1", ""), 400),
        ("dot-segments after a prefix", post("POST /v1/../../v1/events HTTP/1.1", ""), 400),
        ("percent-encoded dot-segments", post("POST /v1/%2e%2e/%2e%2e/v1/events HTTP/1.1", ""), 400),
        ("dot-segments in an absolute URI", post("POST http://x/../../v1/events HTTP/1.1", ""), 400),
        // Header lines nginx refuses.
        ("a space in a header name", post("POST /v1/events HTTP/1.1", "Bad Name: 1\r\n"), 400),
        ("NUL in a header value", post("POST /v1/events HTTP/1.1", "X-A: a\0b\r\n"), 400),
        ("two Content-Lengths", post("POST /v1/events HTTP/1.1", "Content-Length: 3\r\n"), 400),
        ("Transfer-Encoding with Content-Length", post("POST /v1/events HTTP/1.1", "Transfer-Encoding: chunked\r\n"), 400),
        ("HTTP/1.1 without Host", format!("POST /v1/events HTTP/1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{event}", event.len()).into_bytes(), 400),
        // A URI over nginx's buffers.
        ("a 20 kB URI", long_uri, 414),
    ];
    for (name, request, expected) in cases {
        let (status, content_type, body) = raw_exchange(&address, &request).await;
        assert_eq!(status, expected, "{name}: {body}");
        assert_eq!(content_type, "application/json", "{name}");
        let body: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{name}: {body}"));
        assert!(body["error"]["code"].is_string(), "{name}: {body}");
    }
    // The sentinel under the same source is then the only event stored there.
    assert_only_the_sentinel_is_stored(&base, &source, "a malformed request was stored").await;
}
