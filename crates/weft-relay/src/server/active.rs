//! The packet path's view of the routing table: node key → the connection
//! that receives its packets, in 64 shards, each behind its own read-write
//! lock. Readers (every client's read task, per packet) take one shard's
//! read lock for a lookup and an enqueue; writers (logins, logouts,
//! duplicate switches) are rare and touch one shard. There is no lock shared
//! by all packets.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use weft_types::NodePublic;

use super::conn::Conn;

const SHARDS: usize = 64;

type Shard = RwLock<HashMap<NodePublic, Arc<Conn>>>;

/// The sharded map of active connections.
pub(crate) struct ActiveMap {
    shards: Box<[Shard]>,
}

impl ActiveMap {
    pub fn new() -> Self {
        ActiveMap {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, key: &NodePublic) -> &Shard {
        // Keys are X25519 points: their bytes are as good as a hash for
        // picking a shard (the map inside still hashes with SipHash).
        &self.shards[usize::from(key.as_bytes()[31]) % SHARDS]
    }

    /// Runs `f` on the active connection of `key` under the shard's read
    /// lock; `None` if there is none.
    pub fn with<T>(&self, key: &NodePublic, f: impl FnOnce(&Conn) -> T) -> Option<T> {
        let shard = self
            .shard(key)
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        shard.get(key).map(|c| f(c))
    }

    pub fn set(&self, key: NodePublic, conn: Option<Arc<Conn>>) {
        let mut shard = self
            .shard(&key)
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match conn {
            Some(c) => {
                shard.insert(key, c);
            }
            None => {
                shard.remove(&key);
            }
        }
    }
}
