//! With no broker at all, the real publisher fails fast: 503 + Retry-After, never a hang.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::helpers::{config, error_code, event};

#[tokio::test]
async fn unreachable_broker_gives_503_at_once_and_readyz_red() {
    // A port nothing listens on: bind one, then free it.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("amqp://guest:guest@127.0.0.1:{closed_port}/%2f");
    let config = config(&[
        ("WARREN_AMQP_URL", url.as_str()),
        ("WARREN_AMQP_PREFIX", "test.unreachable"),
    ]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(gateway::run(listener, config, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();

    let started = Instant::now();
    let response = client
        .post(format!("http://{address}/v1/events"))
        .header("content-type", "application/cloudevents+json")
        .body(event().to_string())
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(error_code(response).await, "broker_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    let readyz = client
        .get(format!("http://{address}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(readyz.status(), 503);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
}
