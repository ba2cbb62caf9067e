//! The gateway on a unix socket beside its TCP address (`WARREN_GATEWAY_SOCKET`), as nginx on the
//! same host reaches it.

use std::time::Duration;

use gateway::publish::MemoryPublisher;
use service_runtime::server::Listeners;
use service_runtime::unix_socket::UnixSocket;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::helpers::{config, event};

async fn exchange(path: &std::path::Path, request: &[u8]) -> String {
    let mut stream = UnixStream::connect(path).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn events_posted_on_the_unix_socket_are_published_and_the_socket_goes_with_the_gateway() {
    service_runtime::telemetry::init_for_tests();
    let dir = std::env::temp_dir().join(format!("warren-gateway-socket-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.sock");
    let listeners = Listeners {
        tcp: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        unix: Some(UnixSocket::bind(&path).unwrap()),
    };
    let tcp_address = listeners.tcp.local_addr().unwrap();
    let publisher = MemoryPublisher::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(gateway::serve_with(
        listeners,
        config(&[]),
        publisher.clone(),
        async {
            let _ = stopped.await;
        },
    ));

    let body = event().to_string();
    let request = format!(
        "POST /v1/events HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/cloudevents+json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = exchange(&path, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert!(answer.contains(r#"{"accepted":1}"#), "{answer}");
    assert_eq!(publisher.published().len(), 1);

    // Bad input gets the same JSON error on either listener.
    let bad = "POST /v1/events HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n\
               Content-Length: 1\r\nConnection: close\r\n\r\n{";
    let answer = exchange(&path, bad.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains(r#""code":"#), "{answer}");
    assert_eq!(publisher.published().len(), 1);

    // The TCP address still answers (health checks and metrics use it).
    let health = reqwest::get(format!("http://{tcp_address}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    stop.send(()).unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .unwrap()
        .unwrap());
    assert!(!path.exists(), "the socket outlived the gateway");
    std::fs::remove_dir_all(dir).unwrap();
}
