//! The event bus behind `watch`: a broadcast channel of [`Notify`]. Sending
//! never blocks; a watcher that falls more than [`CAPACITY`] events behind
//! loses its place and its stream is closed (it can watch again).

use tokio::sync::broadcast;
use weft_localapi::Notify;

/// Events kept for the slowest watcher.
pub const CAPACITY: usize = 256;

/// The daemon's event bus.
#[derive(Debug, Clone)]
pub struct Bus {
    tx: broadcast::Sender<Notify>,
}

impl Default for Bus {
    fn default() -> Self {
        Self::new()
    }
}

impl Bus {
    /// Creates a bus with no watchers.
    pub fn new() -> Self {
        Self {
            tx: broadcast::channel(CAPACITY).0,
        }
    }

    /// Publishes an event (dropped if nobody watches).
    pub fn send(&self, n: Notify) {
        tracing::trace!(event = ?n, "Notify");
        let _ = self.tx.send(n);
    }

    /// Returns a new watcher's receiver.
    pub fn subscribe(&self) -> broadcast::Receiver<Notify> {
        self.tx.subscribe()
    }
}
