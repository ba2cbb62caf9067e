//! Collecting deliveries into one write: a batch closes at a number of events or a time limit.

use lapin::{Acker, BasicProperties};
use shared_types::envelope::Envelope;
use tokio::time::Instant;

use crate::config::BatchSettings;

/// A delivery whose envelope decoded, waiting for its batch to be written.
pub struct Pending {
    /// Settles the delivery on the broker.
    pub acker: Acker,
    /// The broker's delivery tag (increasing on one channel).
    pub delivery_tag: u64,
    /// The events, in one part per request the gateway coalesced into this message.
    pub envelope: Envelope,
    /// Where the gateway published it (the event type), kept for dead-lettering.
    pub routing_key: String,
    /// The message's properties, kept for dead-lettering.
    pub properties: BasicProperties,
    /// The broker delivered it before (its `redelivered` flag): its events may be stored already.
    pub redelivered: bool,
}

/// Deliveries collected since the last write.
pub struct Batch {
    settings: BatchSettings,
    items: Vec<Pending>,
    events: usize,
    deadline: Option<Instant>,
}

impl Batch {
    /// An empty batch.
    pub fn new(settings: BatchSettings) -> Self {
        Self {
            settings,
            items: Vec::new(),
            events: 0,
            deadline: None,
        }
    }

    /// Adds a delivery; the first one starts the clock.
    pub fn push(&mut self, pending: Pending) {
        if self.items.is_empty() {
            self.deadline = Some(Instant::now() + self.settings.max_wait);
        }
        self.events += pending.envelope.event_count();
        self.items.push(pending);
    }

    /// Whether the batch holds enough events to be written now.
    pub fn is_full(&self) -> bool {
        self.events >= self.settings.max_events
    }

    /// When the batch must be written at the latest; `None` while empty.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Takes the deliveries out with the number of events they hold, leaving the batch empty.
    pub fn take(&mut self) -> (Vec<Pending>, usize) {
        self.deadline = None;
        (
            std::mem::take(&mut self.items),
            std::mem::take(&mut self.events),
        )
    }
}
