//! Configuration: typed updates and the UAPI entry points.
//!
//! Semantics follow wireguard-go's UAPI handling (its `device/uapi.go`), with
//! one deliberate difference: a change is all-or-nothing. [`Device::apply`]
//! cannot fail and runs under the state's write lock, so the data path sees
//! the configuration either before or after it; [`Device::uapi_set`] parses
//! the whole body before applying anything.

use std::sync::{Arc, PoisonError, RwLockWriteGuard};
use std::time::Instant;

use weft_types::NodePrivate;
use zeroize::Zeroizing;

use super::peer::{Identity, Peer, State};
use super::{Applied, Device, DeviceUpdate, PeerUpdate};
use crate::session::HandshakeGate;
use crate::uapi::{self, UapiError};

impl Device {
    /// Applies a configuration change atomically.
    ///
    /// In order: the private key (a new key re-keys every session and drops a
    /// peer with our own public key; the same key changes nothing), listen
    /// port, fwmark, `replace_peers`, then each [`PeerUpdate`].
    pub fn apply(&self, update: DeviceUpdate, now: Instant) -> Applied {
        let mut state = self.write();
        let mut applied = Applied::default();
        if let Some(key) = update.private_key {
            self.set_private_key(&mut state, key, now);
        }
        if let Some(port) = update.listen_port.filter(|p| *p != state.listen_port) {
            state.listen_port = port;
            applied.listen_port = Some(port);
        }
        if let Some(mark) = update.fwmark.filter(|m| *m != state.fwmark) {
            state.fwmark = mark;
            applied.fwmark = Some(mark);
        }
        if update.replace_peers {
            state.remove_all_peers();
        }
        for peer in update.peers {
            self.apply_peer(&mut state, peer, now);
        }
        applied
    }

    /// Applies a UAPI `set=1` body (the lines after `set=1`, up to the blank line).
    ///
    /// # Errors
    /// A [`UapiError`] (carrying the errno to report) when the text is
    /// malformed; the device is then unchanged.
    pub fn uapi_set(&self, body: &str, now: Instant) -> Result<Applied, UapiError> {
        let update = uapi::parse_set(body)?;
        Ok(self.apply(update, now))
    }

    /// Returns the UAPI `get=1` response body, without the final `errno=0` line.
    pub fn uapi_get(&self, now: Instant) -> String {
        let _ = now;
        let state = self.read();
        let mut ips = state.allowed_ips_by_index();
        let peers: Vec<_> = state
            .peers
            .values()
            .map(|peer| {
                let p = peer.lock();
                let stats = self.peer_stats(peer, &p, ips.remove(&peer.index).unwrap_or_default());
                (stats, p.preshared_key.clone())
            })
            .collect();
        uapi::write_get(
            state.identity.as_ref().map(|id| &id.private),
            state.listen_port,
            state.fwmark,
            &peers,
        )
    }

    /// Records the port the driver actually bound after a listen port of 0,
    /// so `get` reports it. Unlike [`Device::apply`] this asks for no rebind.
    pub fn set_bound_port(&self, port: u16) {
        self.write().listen_port = port;
    }

    fn set_private_key(&self, state: &mut State, key: Option<NodePrivate>, now: Instant) {
        let Some(key) = key else {
            state.identity = None;
            *self.gate() = None;
            return;
        };
        if state.identity.as_ref().is_some_and(|id| id.private == key) {
            return;
        }
        let identity = Identity::new(key);
        // A peer with our own public key would be a loop (wireguard-go drops it too).
        state.remove_peer(&identity.public);
        for peer in state.peers.values() {
            let mut p = peer.lock();
            let live = p.has_current_session(now);
            match p.session.as_mut() {
                Some(session) => {
                    use crate::session::WgSession as _;
                    session.set_static_private(&identity.private, now);
                }
                None => p.new_session(&identity.private, peer, self.clock, now),
            }
            p.kick = live;
        }
        *self.gate() = Some(HandshakeGate::new(&identity.private, self.clock, now));
        state.identity = Some(identity);
    }

    fn apply_peer(&self, state: &mut State, u: PeerUpdate, now: Instant) {
        if state
            .identity
            .as_ref()
            .is_some_and(|id| id.public == u.public_key)
        {
            return;
        }
        if u.remove {
            state.remove_peer(&u.public_key);
            return;
        }
        let peer = match state.peers.get(&u.public_key) {
            Some(peer) => Arc::clone(peer),
            None if u.update_only => return,
            None => match state.add_peer(u.public_key, self.clock, now) {
                Some(peer) => peer,
                None => {
                    tracing::warn!(peer = %u.public_key.short(), "No free peer index; peer not added");
                    return;
                }
            },
        };
        {
            let mut p = peer.lock();
            if let Some(psk) = u.preshared_key {
                let psk = psk.map(Zeroizing::new);
                if p.preshared_key != psk {
                    p.preshared_key = psk;
                    // boringtun cannot change the key of a live `Tunn`: start a
                    // new one, and a handshake at the next tick if traffic was flowing.
                    if let Some(id) = &state.identity {
                        let live = p.has_current_session(now);
                        p.new_session(&id.private, &peer, self.clock, now);
                        p.kick = live;
                    }
                }
            }
            if let Some(endpoint) = u.endpoint {
                p.endpoint = Some(endpoint);
            }
            if let Some(interval) = u.persistent_keepalive {
                // Turning it on sends one right away, as wireguard-go does.
                p.keepalive_due = p.persistent_keepalive == 0 && interval != 0;
                p.persistent_keepalive = interval;
            }
        }
        let owned_by = |p: &Arc<Peer>| Arc::ptr_eq(p, &peer);
        if u.replace_allowed_ips {
            state.routes.remove_value(owned_by);
        }
        for net in &u.remove_allowed_ips {
            if state.routes.get(net).is_some_and(owned_by) {
                state.routes.remove(net);
            }
        }
        for net in u.allowed_ips {
            state.routes.insert(net, Arc::clone(&peer));
        }
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}
