//! The publisher double: lets HTTP tests run without RabbitMQ, fail publishes on demand and hold
//! their confirms back.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::{EventPublisher, OutgoingMessage, PublishError};

/// An in-memory publisher for HTTP tests: records messages, or fails on demand.
#[derive(Clone)]
pub struct MemoryPublisher {
    published: Arc<Mutex<Vec<OutgoingMessage>>>,
    failure: Arc<Mutex<Option<PublishError>>>,
    held: Arc<watch::Sender<bool>>,
}

impl Default for MemoryPublisher {
    fn default() -> Self {
        Self {
            published: Arc::default(),
            failure: Arc::default(),
            held: Arc::new(watch::Sender::new(false)),
        }
    }
}

impl MemoryPublisher {
    /// While `held`, publishes are recorded but their confirms wait (like a slow broker).
    pub fn hold_confirms(&self, held: bool) {
        self.held.send_replace(held);
    }

    /// Makes every later publish fail with `error` (or succeed again with `None`).
    pub fn fail_with(&self, error: Option<PublishError>) {
        if let Ok(mut failure) = self.failure.lock() {
            *failure = error;
        }
    }

    /// Everything published so far.
    pub fn published(&self) -> Vec<OutgoingMessage> {
        self.published
            .lock()
            .map(|published| published.clone())
            .unwrap_or_default()
    }
}

impl EventPublisher for MemoryPublisher {
    async fn publish(&self, messages: Vec<OutgoingMessage>) -> Result<(), PublishError> {
        if let Some(error) = self.failure.lock().ok().and_then(|failure| *failure) {
            return Err(error);
        }
        if let Ok(mut published) = self.published.lock() {
            published.extend(messages);
        }
        let mut held = self.held.subscribe();
        // The sender lives as long as this publisher, so the wait cannot fail.
        let _ = held.wait_for(|held| !*held).await;
        Ok(())
    }

    fn is_ready(&self) -> bool {
        self.failure.lock().map(|f| f.is_none()).unwrap_or(false)
    }
}
