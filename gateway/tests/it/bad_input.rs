//! Bad input: every case gets a 4xx in the JSON error shape, publishes nothing, and the next
//! valid event is accepted.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::bad_input_cases::{cases, event};
use crate::helpers::{error_code, spawn_gateway, TestGateway};

async fn assert_valid_event_accepted(gateway: &TestGateway) {
    let before = gateway.published_events();
    let response = gateway
        .post("application/cloudevents+json", event().to_string(), &[])
        .await;
    assert_eq!(response.status(), 202);
    assert_eq!(gateway.published_events(), before + 1);
}

#[tokio::test]
async fn every_bad_input_gets_a_json_4xx_and_publishes_nothing() {
    let gateway = spawn_gateway(&[]).await;
    for case in cases() {
        let before = gateway.published_events();
        let headers: Vec<(&str, &str)> =
            case.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();

        let response = gateway.post(case.content_type, case.body, &headers).await;

        assert_eq!(response.status().as_u16(), case.status, "{}", case.name);
        assert_eq!(error_code(response).await, case.code, "{}", case.name);
        assert_eq!(
            gateway.published_events(),
            before,
            "{} published something",
            case.name
        );
        assert_valid_event_accepted(&gateway).await;
    }
}

#[tokio::test]
async fn every_problem_of_an_event_is_reported_with_its_pointer() {
    let gateway = spawn_gateway(&[]).await;
    let body = json!({"specversion": "2.0", "id": "", "source": 5, "time": "soon"}).to_string();

    let response = gateway
        .post("application/cloudevents+json", body, &[])
        .await;

    let body: Value = response.json().await.unwrap();
    let found: Vec<(String, String)> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["code"].as_str().unwrap().into(),
                d["pointer"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected = [
        ("invalid_specversion", "/specversion"),
        ("invalid_attribute", "/id"),
        ("invalid_attribute", "/source"),
        ("missing_attribute", "/type"),
        ("invalid_time", "/time"),
    ];
    for (code, pointer) in expected {
        assert!(
            found.contains(&(code.into(), pointer.into())),
            "{code} {pointer} not in {found:?}"
        );
    }
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_refused_while_streaming() {
    let gateway = spawn_gateway(&[("WARREN_MAX_BODY_BYTES", "4096")]).await;
    let mut request = b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..8 {
        request.extend_from_slice(b"400\r\n");
        request.extend_from_slice(&[b' '; 0x400]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");

    let answer = gateway.raw(&request).await;

    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""code":"too_large""#), "{answer}");
    assert_eq!(gateway.published_events(), 0);
    assert_valid_event_accepted(&gateway).await;
}

#[tokio::test]
async fn declared_length_over_the_limit_is_refused_before_reading() {
    let gateway = spawn_gateway(&[("WARREN_MAX_BODY_BYTES", "4096")]).await;

    let answer = gateway
        .raw(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\nConnection: close\r\n\r\n")
        .await;

    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""code":"too_large""#), "{answer}");
}

#[tokio::test]
async fn slowloris_client_is_cut_and_others_are_served() {
    let gateway = spawn_gateway(&[("WARREN_HEADER_TIMEOUT_MS", "500")]).await;
    let mut slow = tokio::net::TcpStream::connect(gateway.address)
        .await
        .unwrap();
    slow.write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();

    // Meanwhile another client is served normally.
    assert_valid_event_accepted(&gateway).await;
    let mut cut = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if slow.write_all(b"X-Slow: 1\r\n").await.is_err() {
            cut = true;
            break;
        }
        let mut probe = [0u8; 1024];
        if let Ok(Ok(0)) = tokio::time::timeout(
            Duration::from_millis(1),
            tokio::io::AsyncReadExt::read(&mut slow, &mut probe),
        )
        .await
        {
            cut = true;
            break;
        }
    }
    assert!(cut, "the slow client was never cut");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn body_sent_too_slowly_gets_408() {
    let gateway = spawn_gateway(&[("WARREN_BODY_TIMEOUT_MS", "300")]).await;
    let mut stream = tokio::net::TcpStream::connect(gateway.address)
        .await
        .unwrap();
    stream
        .write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut stream, &mut answer),
    )
    .await
    .unwrap()
    .unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");
}

#[tokio::test]
async fn get_and_delete_on_the_ingest_route_are_405() {
    let gateway = spawn_gateway(&[]).await;
    for method in [
        reqwest::Method::GET,
        reqwest::Method::DELETE,
        reqwest::Method::PUT,
    ] {
        let response = gateway
            .client
            .request(method.clone(), gateway.url("/v1/events"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method}");
        assert_eq!(response.headers()["allow"], "POST");
        assert_eq!(error_code(response).await, "method_not_allowed");
    }
    assert_eq!(gateway.published_events(), 0);
}
