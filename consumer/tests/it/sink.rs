//! A webhook sink for the delivery tests: an HTTP server on 127.0.0.1 that records every request,
//! answers as the test scripts it, and verifies Standard Webhooks signatures with its own
//! implementation of the specification (not Warren's), so a signing bug cannot verify itself.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sha2::Sha256;

/// One request the sink received, with the status it answered.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the request arrived.
    pub started: Instant,
    /// When the sink answered.
    pub at: Instant,
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    pub fn webhook_id(&self) -> String {
        self.header("webhook-id").unwrap_or_default().to_owned()
    }

    /// The CloudEvents id: `ce-id` in binary mode.
    pub fn event_id(&self) -> String {
        self.header("ce-id").unwrap_or_default().to_owned()
    }

    pub fn delivered(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// How the sink answers a request: a status, optional `Retry-After`, and a delay before answering.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub delay: Duration,
}

impl Answer {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            retry_after: None,
            delay: Duration::ZERO,
        }
    }
}

/// Decides the answer from the request and how many earlier requests had the same webhook-id.
type Script = Box<dyn Fn(&Received, usize) -> Answer + Send + Sync>;

struct State {
    received: Mutex<Vec<Received>>,
    /// Requests per (path, webhook-id) so far, for the script's `earlier`.
    attempts: Mutex<HashMap<(String, String), usize>>,
    script: Mutex<Arc<Script>>,
}

pub struct TestSink {
    pub address: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestSink {
    /// A sink that answers 204 to everything, on a port of its own.
    pub async fn start() -> Self {
        Self::start_on(0).await
    }

    /// A sink that answers 204 to everything, on 127.0.0.1:`port`.
    pub async fn start_on(port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let address = listener.local_addr().unwrap();
        let always: Script = Box::new(|_, _| Answer::status(204));
        let state = Arc::new(State {
            received: Mutex::new(Vec::new()),
            attempts: Mutex::new(HashMap::new()),
            script: Mutex::new(Arc::new(always)),
        });
        let serving = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = Arc::clone(&serving);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, std::convert::Infallible>(answer(&state, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            address,
            state,
            task,
        }
    }

    /// The sink's URL with `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// From now on, answer as `script` decides.
    pub fn respond(&self, script: impl Fn(&Received, usize) -> Answer + Send + Sync + 'static) {
        *self.state.script.lock().unwrap() = Arc::new(Box::new(script));
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Requests to `path` answered with a 2xx.
    pub fn delivered(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path && r.delivered())
            .collect()
    }

    /// Polls until `path` has `count` delivered requests; panics after `timeout`.
    pub async fn wait_delivered(
        &self,
        path: &str,
        count: usize,
        timeout: Duration,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let delivered = self.delivered(path);
            if delivered.len() >= count {
                return delivered;
            }
            assert!(
                Instant::now() < deadline,
                "{path}: {} of {count} delivered after {timeout:?}",
                delivered.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn answer(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let path = request.uri().path().to_owned();
    let headers = request.headers().clone();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut received = Received {
        path,
        headers,
        body,
        started,
        at: Instant::now(),
        status: 0,
    };
    let script = Arc::clone(&state.script.lock().unwrap());
    let earlier = {
        let mut attempts = state.attempts.lock().unwrap();
        let count = attempts
            .entry((received.path.clone(), received.webhook_id()))
            .or_insert(0);
        *count += 1;
        *count - 1
    };
    let decided = script(&received, earlier);
    if !decided.delay.is_zero() {
        tokio::time::sleep(decided.delay).await;
        received.at = Instant::now();
    }
    received.status = decided.status;
    state.received.lock().unwrap().push(received);
    let mut response = Response::builder().status(decided.status);
    if let Some(seconds) = decided.retry_after {
        response = response.header("retry-after", seconds.to_string());
    }
    response
        .body(Full::new(Bytes::from_static(b"sink says hi")))
        .unwrap()
}

/// Verifies a request as a Standard Webhooks receiver does: one of the space-separated `v1,`
/// signatures is the HMAC-SHA256 of `id.timestamp.body` under the secret, and the timestamp is
/// within five minutes of now.
pub fn verify(received: &Received, secret: &str) -> bool {
    let Some(key) = secret
        .strip_prefix("whsec_")
        .and_then(|k| STANDARD.decode(k).ok())
    else {
        return false;
    };
    let (Some(id), Some(timestamp), Some(signatures)) = (
        received.header("webhook-id"),
        received.header("webhook-timestamp"),
        received.header("webhook-signature"),
    ) else {
        return false;
    };
    let Ok(seconds) = timestamp.parse::<i64>() else {
        return false;
    };
    if (chrono::Utc::now().timestamp() - seconds).abs() > 300 {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&received.body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    signatures.split(' ').any(|signature| signature == expected)
}
