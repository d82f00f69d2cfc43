//! The queue between the coordinator and one map stream's connection task.
//!
//! The coordinator never waits on a stream: it pushes pre-encoded delta
//! bodies and moves on. A stream that falls too far behind (more than the
//! configured number of pending messages) has its queue replaced by one
//! "full map" marker: the connection then sends a fresh full map built from
//! the latest snapshot, which supersedes everything it missed.
//!
//! Deltas carry the snapshot version they lead to. A connection that builds
//! a full map from snapshot `v` drops queued deltas up to `v` (already in
//! the map) and applies the later ones; so it does not matter whether the
//! coordinator pushes a batch's deltas before or after it publishes the
//! batch's snapshot.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use tokio::sync::Notify;
use weft_control_proto::Encoded;
use weft_types::MapBody;
use weft_types::control::ProtocolError;

/// One thing for the stream to send.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    /// A full map built from the latest snapshot when it is sent.
    Full,
    /// A delta body leading to snapshot `version`.
    Delta {
        version: u64,
        body: Encoded<MapBody>,
    },
    /// Send this error and close the connection.
    Close(ProtocolError),
}

#[derive(Debug, Default)]
struct Inner {
    items: VecDeque<Item>,
    closed: bool,
    resyncs: u64,
}

/// A bounded queue of map messages for one stream.
#[derive(Debug)]
pub(crate) struct StreamQueue {
    limit: usize,
    inner: Mutex<Inner>,
    notify: Notify,
}

impl StreamQueue {
    /// Creates a queue that resyncs after `limit` pending deltas.
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            inner: Mutex::new(Inner::default()),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a delta; a queue over its limit is replaced by a full map.
    /// Returns `true` if that happened.
    pub fn push_delta(&self, version: u64, body: Encoded<MapBody>) -> bool {
        let mut q = self.lock();
        if q.closed {
            return false;
        }
        let mut resynced = false;
        if q.items.len() >= self.limit {
            q.items.clear();
            q.items.push_back(Item::Full);
            q.resyncs += 1;
            resynced = true;
        } else {
            q.items.push_back(Item::Delta { version, body });
        }
        drop(q);
        self.notify.notify_one();
        resynced
    }

    /// Queues a full map (the first one of a stream, or a resync).
    pub fn push_full(&self) {
        let mut q = self.lock();
        if q.closed {
            return;
        }
        q.items.clear();
        q.items.push_back(Item::Full);
        drop(q);
        self.notify.notify_one();
    }

    /// Drops everything pending and queues a final error.
    pub fn close(&self, err: ProtocolError) {
        let mut q = self.lock();
        if q.closed {
            return;
        }
        q.closed = true;
        q.items.clear();
        q.items.push_back(Item::Close(err));
        drop(q);
        self.notify.notify_one();
    }

    /// Takes the next item, if any.
    pub fn pop(&self) -> Option<Item> {
        self.lock().items.pop_front()
    }

    /// Waits until something may have been queued.
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    /// Returns how many times the queue was replaced by a full map.
    #[cfg(test)]
    pub fn resyncs(&self) -> u64 {
        self.lock().resyncs
    }

    /// Returns how many items are pending.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_control_proto::encode::delta_body;
    use weft_types::control::ErrorCode;

    fn body() -> Encoded<MapBody> {
        delta_body(&[]).unwrap()
    }

    #[test]
    fn a_stream_that_falls_behind_gets_one_full_map_instead_of_its_backlog() {
        let q = StreamQueue::new(3);
        q.push_full();
        for v in 1..=2 {
            assert!(!q.push_delta(v, body()));
        }
        assert!(q.push_delta(3, body()), "the fourth pending item overflows");
        assert!(matches!(q.pop(), Some(Item::Full)));
        assert!(q.pop().is_none());
        assert_eq!(q.resyncs(), 1);
    }

    #[test]
    fn closing_drops_pending_items_and_ignores_later_ones() {
        let q = StreamQueue::new(8);
        q.push_delta(1, body());
        q.close(ProtocolError {
            code: ErrorCode::Replaced,
            message: "x".into(),
        });
        q.push_delta(2, body());
        q.push_full();
        assert!(matches!(q.pop(), Some(Item::Close(e)) if e.code == ErrorCode::Replaced));
        assert!(q.pop().is_none());
    }
}
