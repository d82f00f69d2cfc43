//! The server's routing state: which connection receives packets for a node
//! key, and who must hear `PeerGone` when a key leaves. Pure data; the server
//! driver keeps it behind one lock that only logins, logouts, revocations
//! and duplicate-key activity take, and mirrors its *active* connection per
//! key (the [`RouteChanges::active`] it returns) into a sharded map that the
//! packet path reads without that lock.
//!
//! Duplicate keys follow derp's default policy ("last writer is active"): a
//! key normally has one connection; while it has several (a client
//! reconnecting over a new network before the old TCP connection died, or a
//! cloned key), the newest one is active, and any of them that sends a frame
//! becomes active. When the active one leaves, the most recent sender among
//! the rest takes over; when only one is left it is active again. Packets for
//! a key whose connections are all inactive are dropped (reason
//! `duplicate`).
//!
//! `PeerGone(key, Disconnected)` goes to every connection that has received
//! a packet from `key`, once `key` has no connection left (derp: only when
//! the count drops from 1 to 0).

use std::collections::{BTreeMap, BTreeSet};

use weft_types::NodePublic;

/// A connection's id, unique for the lifetime of a server.
pub type ConnId = u64;

/// What [`Routes::lookup`] found for a key.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a, C> {
    /// The connection that receives packets for the key.
    Active(&'a C),
    /// The key has `n` connections, none active (duplicates, none spoke
    /// since the active one left).
    Inactive(usize),
    /// The key is not connected.
    Absent,
}

/// The changes a mutation of [`Routes`] asks the driver to carry out.
#[derive(Debug)]
pub struct RouteChanges<C> {
    /// The active connection of these keys changed (`None`: none active).
    pub active: Vec<(NodePublic, Option<C>)>,
    /// Send `PeerGone(peer, Disconnected)` to these connections.
    pub peer_gone: Vec<(C, NodePublic)>,
    /// These connections became (`true`) or stopped being (`false`) one of
    /// several connections of their key.
    pub duplicate: Vec<(C, bool)>,
}

impl<C> Default for RouteChanges<C> {
    fn default() -> Self {
        RouteChanges {
            active: Vec::new(),
            peer_gone: Vec::new(),
            duplicate: Vec::new(),
        }
    }
}

impl<C> RouteChanges<C> {
    /// Returns whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.active.is_empty() && self.peer_gone.is_empty() && self.duplicate.is_empty()
    }
}

#[derive(Debug)]
struct KeyEntry {
    /// Every connection of the key.
    conns: BTreeSet<ConnId>,
    /// The one that receives packets, if any.
    active: Option<ConnId>,
    /// Connections of the key in the order they last sent (or arrived), most
    /// recent last, without adjacent repeats; only kept while duplicated.
    history: Vec<ConnId>,
}

#[derive(Debug)]
struct ConnEntry<C> {
    key: NodePublic,
    handle: C,
    /// Source keys this connection has received packets from.
    heard_from: BTreeSet<NodePublic>,
}

/// The routing state of one server. `C` is the driver's handle on a
/// connection (cloned into [`RouteChanges`]).
#[derive(Debug)]
pub struct Routes<C> {
    keys: BTreeMap<NodePublic, KeyEntry>,
    conns: BTreeMap<ConnId, ConnEntry<C>>,
    /// Source key → connections that received packets from it.
    listeners: BTreeMap<NodePublic, BTreeSet<ConnId>>,
}

impl<C> Default for Routes<C> {
    fn default() -> Self {
        Routes {
            keys: BTreeMap::new(),
            conns: BTreeMap::new(),
            listeners: BTreeMap::new(),
        }
    }
}

impl<C: Clone> Routes<C> {
    /// Creates an empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds connection `id` of `key` (after its login was admitted). It
    /// becomes the key's active connection.
    pub fn register(&mut self, id: ConnId, key: NodePublic, handle: C) -> RouteChanges<C> {
        let mut ch = RouteChanges::default();
        self.conns.insert(
            id,
            ConnEntry {
                key,
                handle: handle.clone(),
                heard_from: BTreeSet::new(),
            },
        );
        let entry = self.keys.entry(key).or_insert_with(|| KeyEntry {
            conns: BTreeSet::new(),
            active: None,
            history: Vec::new(),
        });
        entry.conns.insert(id);
        if entry.conns.len() == 2 {
            // It just became a duplicate: the first one too.
            for other in entry.conns.iter().filter(|c| **c != id) {
                if let Some(c) = self.conns.get(other) {
                    ch.duplicate.push((c.handle.clone(), true));
                }
                entry.history.push(*other);
            }
        }
        if entry.conns.len() >= 2 {
            ch.duplicate.push((handle.clone(), true));
            entry.history.push(id);
        }
        entry.active = Some(id);
        ch.active.push((key, Some(handle)));
        ch
    }

    /// Removes connection `id` (it closed). Unknown ids change nothing.
    pub fn unregister(&mut self, id: ConnId) -> RouteChanges<C> {
        let mut ch = RouteChanges::default();
        let Some(gone) = self.conns.remove(&id) else {
            return ch;
        };
        for src in &gone.heard_from {
            if let Some(set) = self.listeners.get_mut(src) {
                set.remove(&id);
                if set.is_empty() {
                    self.listeners.remove(src);
                }
            }
        }
        let key = gone.key;
        let Some(entry) = self.keys.get_mut(&key) else {
            return ch;
        };
        entry.conns.remove(&id);
        entry.history.retain(|c| *c != id);
        entry.history.dedup();
        match entry.conns.len() {
            0 => {
                self.keys.remove(&key);
                ch.active.push((key, None));
                // The key is gone from this server: tell whoever heard from it.
                if let Some(listeners) = self.listeners.remove(&key) {
                    for l in listeners {
                        if let Some(c) = self.conns.get_mut(&l) {
                            c.heard_from.remove(&key);
                            ch.peer_gone.push((c.handle.clone(), key));
                        }
                    }
                }
            }
            1 => {
                let Some(&remain) = entry.conns.iter().next() else {
                    return ch;
                };
                entry.history.clear();
                let was = entry.active;
                entry.active = Some(remain);
                if let Some(c) = self.conns.get(&remain) {
                    ch.duplicate.push((c.handle.clone(), false));
                    if was != Some(remain) {
                        ch.active.push((key, Some(c.handle.clone())));
                    }
                }
            }
            _ => {
                if entry.active == Some(id) {
                    entry.active = entry.history.last().copied();
                    let handle = entry
                        .active
                        .and_then(|a| self.conns.get(&a))
                        .map(|c| c.handle.clone());
                    ch.active.push((key, handle));
                }
            }
        }
        ch
    }

    /// Notes that connection `id` sent a frame. Only matters while its key
    /// is duplicated (the driver calls it only then): the sender becomes
    /// active.
    pub fn note_activity(&mut self, id: ConnId) -> RouteChanges<C> {
        let mut ch = RouteChanges::default();
        let Some(conn) = self.conns.get(&id) else {
            return ch;
        };
        let Some(entry) = self.keys.get_mut(&conn.key) else {
            return ch;
        };
        if entry.conns.len() < 2 {
            return ch;
        }
        if entry.history.last() != Some(&id) {
            entry.history.push(id);
        }
        if entry.active != Some(id) {
            entry.active = Some(id);
            ch.active.push((conn.key, Some(conn.handle.clone())));
        }
        ch
    }

    /// Notes that connection `receiver` was handed a packet from `src`, so
    /// it hears `PeerGone` when `src` leaves. Returns whether this was new
    /// (the driver remembers the pair and calls this once per pair).
    pub fn note_heard_from(&mut self, receiver: ConnId, src: NodePublic) -> bool {
        let Some(c) = self.conns.get_mut(&receiver) else {
            return false;
        };
        if !c.heard_from.insert(src) {
            return false;
        }
        self.listeners.entry(src).or_default().insert(receiver);
        true
    }

    /// Returns where packets for `key` go.
    pub fn lookup(&self, key: &NodePublic) -> Lookup<'_, C> {
        let Some(entry) = self.keys.get(key) else {
            return Lookup::Absent;
        };
        match entry.active.and_then(|a| self.conns.get(&a)) {
            Some(c) => Lookup::Active(&c.handle),
            None => Lookup::Inactive(entry.conns.len()),
        }
    }

    /// Returns the handles of every connection of `key` (to close them).
    pub fn connections_of(&self, key: &NodePublic) -> Vec<C> {
        self.keys.get(key).map_or_else(Vec::new, |e| {
            e.conns
                .iter()
                .filter_map(|id| self.conns.get(id).map(|c| c.handle.clone()))
                .collect()
        })
    }

    /// Returns every connected key, in order.
    pub fn keys(&self) -> Vec<NodePublic> {
        self.keys.keys().copied().collect()
    }

    /// Returns the handles of every connection.
    pub fn all_connections(&self) -> Vec<C> {
        self.conns.values().map(|c| c.handle.clone()).collect()
    }

    /// Returns the number of connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Returns the number of connected keys.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Returns the number of keys with more than one connection.
    pub fn duplicated_key_count(&self) -> usize {
        self.keys.values().filter(|e| e.conns.len() > 1).count()
    }
}

#[cfg(test)]
mod tests;
