//! What the write side tells the read side: whether the worker is subscribed to the store queue,
//! which `/readyz` reports. Its own module, so the read side imports nothing from the write side.

use std::sync::atomic::AtomicBool;

/// What the worker reports to `/readyz`.
#[derive(Debug, Default)]
pub struct WorkerStatus {
    /// Subscribed to the store queue right now.
    pub consuming: AtomicBool,
}
