//! Initiations from keys that were not peers when they arrived.
//!
//! A new node learns its peers from the control server a moment before
//! those peers learn of it, so its first handshake initiation usually
//! reaches a device that does not know its key yet. WireGuard drops it and
//! the initiator retries only after `REKEY_TIMEOUT` (5 s): the new node's
//! first ping took 5.2 s. Remembering the last authenticated initiation per
//! unknown key for that long, and answering it as soon as the key becomes a
//! peer, removes the wait.
//!
//! Only initiations that passed MAC1 and whose sender's static key decrypted
//! under ours are kept (an attacker needs our public key and spends a DH per
//! entry, as for any initiation); the table is small and bounded, the oldest
//! entry goes first, and an entry older than `REKEY_TIMEOUT` is forgotten
//! (its initiator has given up on it and sent a new one).

use std::net::SocketAddr;
use std::time::Instant;

use weft_types::NodePublic;

use crate::session::REKEY_TIMEOUT;
use crate::wire::INITIATION_LEN;

/// At most this many unknown senders are remembered.
pub(super) const CAPACITY: usize = 16;

/// One remembered initiation.
pub(super) struct Initiation {
    pub(super) key: NodePublic,
    pub(super) from: SocketAddr,
    pub(super) datagram: [u8; INITIATION_LEN],
    at: Instant,
}

/// The table of remembered initiations, oldest first.
#[derive(Default)]
pub(super) struct Unclaimed {
    entries: Vec<Initiation>,
}

impl Unclaimed {
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Remembers `datagram` (an initiation from `key`), replacing an earlier
    /// one from the same key; a datagram of another length is ignored.
    pub(super) fn remember(
        &mut self,
        key: NodePublic,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
    ) {
        let Ok(datagram) = <[u8; INITIATION_LEN]>::try_from(datagram) else {
            return;
        };
        self.entries.retain(|e| e.key != key);
        if self.entries.len() >= CAPACITY {
            self.entries.remove(0);
        }
        self.entries.push(Initiation {
            key,
            from,
            datagram,
            at: now,
        });
    }

    /// Removes and returns the entries whose key `is_peer` now, forgetting
    /// those older than `REKEY_TIMEOUT`.
    pub(super) fn take_claimed(
        &mut self,
        now: Instant,
        is_peer: impl Fn(&NodePublic) -> bool,
    ) -> Vec<Initiation> {
        self.entries
            .retain(|e| now.saturating_duration_since(e.at) < REKEY_TIMEOUT);
        let (claimed, rest) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|e| is_peer(&e.key));
        self.entries = rest;
        claimed
    }
}
