//! The publisher double: lets HTTP tests run without RabbitMQ and fail publishes on demand.

use std::sync::{Arc, Mutex};

use super::{EventPublisher, OutgoingMessage, PublishError};

/// An in-memory publisher for HTTP tests: records messages, or fails on demand.
#[derive(Clone, Default)]
pub struct MemoryPublisher {
    published: Arc<Mutex<Vec<OutgoingMessage>>>,
    failure: Arc<Mutex<Option<PublishError>>>,
}

impl MemoryPublisher {
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
        Ok(())
    }

    fn is_ready(&self) -> bool {
        self.failure.lock().map(|f| f.is_none()).unwrap_or(false)
    }
}
