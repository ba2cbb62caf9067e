//! `spawn_gateway()`: the real HTTP stack over an in-memory publisher.

use std::net::SocketAddr;
use std::time::Duration;

use gateway::publish::MemoryPublisher;
use gateway::GatewayConfig;
use serde_json::Value;
use service_runtime::config::Settings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

pub struct TestGateway {
    pub address: SocketAddr,
    pub publisher: MemoryPublisher,
    pub client: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

/// A config from `env`, with auth off unless `env` says otherwise.
pub fn config(env: &[(&str, &str)]) -> GatewayConfig {
    let env: Vec<(&str, &str)> = env
        .iter()
        .copied()
        .chain([("WARREN_AUTH", "off")])
        .collect();
    GatewayConfig::from_settings(&Settings::from_pairs(&env)).unwrap()
}

pub async fn spawn_gateway(env: &[(&str, &str)]) -> TestGateway {
    service_runtime::telemetry::init_for_tests();
    let config = config(env);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let publisher = MemoryPublisher::default();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(gateway::serve_with(
        listener,
        config,
        publisher.clone(),
        async {
            let _ = stopped.await;
        },
    ));
    TestGateway {
        address,
        publisher,
        // Bounded, so a request the app never answers fails its test instead of hanging CI.
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("an HTTP client"),
        _stop: stop,
    }
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub async fn post(
        &self,
        content_type: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self.client.post(self.url("/v1/events")).body(body);
        if !content_type.is_empty() {
            request = request.header("content-type", content_type);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }

    /// Events published so far.
    pub fn published_events(&self) -> usize {
        self.publisher
            .published()
            .iter()
            .map(|m| {
                shared_types::envelope::Envelope::decode(&m.body)
                    .unwrap()
                    .event_count()
            })
            .sum()
    }

    /// Sends raw bytes on a new connection and returns everything the server answers.
    pub async fn raw(&self, request: &[u8]) -> String {
        let mut stream = tokio::net::TcpStream::connect(self.address).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).into_owned()
    }
}

pub use crate::bad_input_cases::event;

/// Asserts the shared error shape and returns the code.
pub async fn error_code(response: reqwest::Response) -> String {
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(content_type.as_deref(), Some("application/json"));
    let body: Value = response.json().await.unwrap();
    let error = &body["error"];
    assert!(error["message"].is_string(), "{body}");
    assert!(error["details"].is_array(), "{body}");
    error["code"].as_str().unwrap().to_owned()
}
