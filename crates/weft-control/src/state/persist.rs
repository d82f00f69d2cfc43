//! Writes the high-frequency runtime state (online, last seen, endpoints,
//! disco key, host info) to the database in the background.
//!
//! The coordinator marks what changed and moves on; this task writes the
//! latest value of each dirty node, one node after the other, coalescing
//! everything that changed meanwhile. A node that connects and disconnects
//! ten times while a write is in progress costs one more write, not ten.
//! The in-memory state is what nodes see; the database follows within a
//! moment and is what survives a restart. Every few minutes the `last_seen`
//! of all connected nodes is refreshed in one transaction.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use weft_control_store::{NodeStatusUpdate, Store, StoreError};
use weft_types::{NodeId, UnixMillis};

use crate::clock::Clock;

/// How often the `last_seen` of connected nodes is written.
pub(crate) const LAST_SEEN_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// The latest unwritten state of one node.
#[derive(Debug, Default)]
pub(crate) struct Dirty {
    pub status: Option<NodeStatusUpdate>,
    pub online: Option<(bool, UnixMillis)>,
}

/// The queue of unwritten runtime state.
#[derive(Debug, Default)]
pub(crate) struct Persister {
    pending: Mutex<BTreeMap<NodeId, Dirty>>,
    connected: Mutex<Vec<NodeId>>,
    notify: Notify,
}

impl Persister {
    /// Records new self-reported state of a node (merged with what is pending).
    pub fn status(&self, id: NodeId, update: NodeStatusUpdate) {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let d = p.entry(id).or_default();
        let s = d.status.get_or_insert_with(NodeStatusUpdate::default);
        if update.disco_key.is_some() {
            s.disco_key = update.disco_key;
        }
        if update.endpoints.is_some() {
            s.endpoints = update.endpoints;
        }
        if update.host_info.is_some() {
            s.host_info = update.host_info;
        }
        if update.hostname.is_some() {
            s.hostname = update.hostname;
        }
        drop(p);
        self.notify.notify_one();
    }

    /// Records that a node connected or disconnected at `at`.
    pub fn online(&self, id: NodeId, online: bool, at: UnixMillis) {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        p.entry(id).or_default().online = Some((online, at));
        drop(p);
        self.notify.notify_one();
    }

    /// Forgets a deleted node.
    pub fn forget(&self, id: NodeId) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    /// Sets the nodes whose `last_seen` the periodic refresh writes.
    pub fn set_connected(&self, ids: Vec<NodeId>) {
        *self
            .connected
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = ids;
    }

    /// Returns how many nodes have unwritten state.
    pub fn backlog(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Writes until cancelled, then writes what is left.
    pub async fn run(
        self: Arc<Self>,
        store: Store,
        clock: Arc<dyn Clock>,
        stop: CancellationToken,
    ) {
        let mut refresh = tokio::time::interval(LAST_SEEN_INTERVAL);
        refresh.tick().await;
        loop {
            tokio::select! {
                () = self.notify.notified() => self.write_pending(&store, &*clock).await,
                _ = refresh.tick() => {
                    let ids = self.connected.lock().unwrap_or_else(PoisonError::into_inner).clone();
                    if !ids.is_empty()
                        && let Err(e) = store.touch_last_seen(&ids, clock.now()).await
                    {
                        tracing::warn!(error = %e, "could not refresh last_seen");
                    }
                }
                () = stop.cancelled() => {
                    self.write_pending(&store, &*clock).await;
                    return;
                }
            }
        }
    }

    async fn write_pending(&self, store: &Store, clock: &dyn Clock) {
        loop {
            let batch =
                std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
            if batch.is_empty() {
                return;
            }
            metrics::histogram!("weft_persist_batch_nodes").record(batch.len() as f64);
            for (id, d) in batch {
                if let Some(status) = d.status {
                    report(
                        id,
                        store
                            .update_node_status(id, status, clock.now())
                            .await
                            .map(|_| ()),
                    );
                }
                if let Some((online, at)) = d.online {
                    report(id, store.set_online(id, online, at).await);
                }
            }
        }
    }
}

fn report(id: NodeId, r: Result<(), StoreError>) {
    match r {
        Ok(()) | Err(StoreError::UnknownNode(_)) => {}
        Err(e) => tracing::warn!(node = %id, error = %e, "could not save the node's runtime state"),
    }
}
