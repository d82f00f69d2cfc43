//! `Disco`'s private half: opening datagrams, pongs, netcheck reports,
//! endpoints, and sealing what goes out.

use std::net::SocketAddr;
use std::time::Instant;

use weft_types::{Endpoint, EndpointKind, NodePublic};

use super::{
    Destination, Disco, Event, PeerState, Pending, PingId, PingOutcome, Purpose, Source, Transmit,
};
use crate::home_relay::HomeChange;
use crate::message::{
    CallMeMaybe, DecodeError, MAX_CALL_ME_MAYBE, Message, NONCE_LEN, Ping, Pong, Sealed, TX_ID_LEN,
    TxId,
};
use crate::netcheck::Report;
use crate::path::{Ctx, Path};

impl Disco {
    pub(super) fn ctx(&self) -> Ctx {
        Ctx {
            udp_blocked: self.udp_blocked,
            have_endpoints: !self.endpoints.is_empty(),
        }
    }

    /// Runs `f` on a peer and reports a change of its path.
    pub(super) fn with_peer<R>(
        &mut self,
        peer: &NodePublic,
        f: impl FnOnce(&mut PeerState) -> R,
    ) -> Option<R> {
        let state = self.peers.get_mut(peer)?;
        let before = state.path.path();
        let r = f(state);
        self.note_path(*peer, before);
        Some(r)
    }

    pub(super) fn note_path(&mut self, peer: NodePublic, before: Option<Path>) {
        let after = self.path(&peer);
        if after == before {
            return;
        }
        match after {
            Some(Path::Direct(addr)) => {
                tracing::info!(peer = %peer.short(), "Path is direct");
                tracing::debug!(peer = %peer.short(), %addr, "Direct path");
            }
            Some(Path::Relay(region)) => {
                tracing::info!(peer = %peer.short(), %region, "Path is the relay");
            }
            None => tracing::debug!(peer = %peer.short(), "No path"),
        }
        self.events
            .push_back(Event::PathChanged { peer, path: after });
    }

    pub(super) fn note_home(&mut self, change: Option<HomeChange>) {
        if let Some(c) = change {
            tracing::info!(region = ?c.region, "Home relay");
            self.events
                .push_back(Event::HomeRelayChanged { region: c.region });
        }
    }

    pub(super) fn forget_peer(&mut self, peer: &NodePublic) {
        let Some(old) = self.peers.remove(peer) else {
            return;
        };
        self.by_disco.remove(&old.disco_key);
        self.pending.retain(|_, p| p.peer != *peer);
        let gone: Vec<PingId> = self
            .asked
            .iter()
            .filter(|(_, a)| a.peer == *peer)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.asked.remove(&id);
            self.events.push_back(Event::Ping {
                id,
                peer: *peer,
                outcome: PingOutcome::Timeout,
            });
        }
    }

    /// Parses, authenticates and decodes a datagram; counts what fails.
    pub(super) fn open(&mut self, datagram: &[u8]) -> Option<(NodePublic, Message)> {
        let sealed = match Sealed::parse(datagram) {
            Ok(s) => s,
            Err(e) => {
                self.stats.malformed += 1;
                tracing::trace!(error = %e, "Dropping disco datagram");
                return None;
            }
        };
        let Some(peer) = self.by_disco.get(&sealed.sender()).copied() else {
            self.stats.unknown_sender += 1;
            tracing::trace!(sender = %sealed.sender().short(), "Disco message from an unknown key");
            return None;
        };
        let state = self.peers.get(&peer)?;
        match state.shared.open(&sealed) {
            Ok(m) => Some((peer, m)),
            Err(DecodeError::Unauthenticated) => {
                self.stats.unauthenticated += 1;
                tracing::trace!(peer = %peer.short(), "Disco datagram failed authentication");
                None
            }
            Err(e) => {
                self.stats.malformed += 1;
                tracing::trace!(error = %e, "Dropping disco datagram");
                None
            }
        }
    }

    pub(super) fn handle_pong(
        &mut self,
        peer: NodePublic,
        pong: Pong,
        source: Source,
        now: Instant,
    ) {
        let Some(pending) = self.pending.get(&pong.tx_id).copied() else {
            return;
        };
        if pending.peer != peer {
            return;
        }
        self.pending.remove(&pong.tx_id);
        let rtt = now.saturating_duration_since(pending.sent);
        let path = match (pending.to, source) {
            (Destination::Udp(to), Source::Udp(from)) if to == from => {
                self.with_peer(&peer, |p| p.path.handle_pong(to, rtt, now));
                Path::Direct(to)
            }
            (_, Source::Udp(from)) => {
                // Answered from another address than we pinged (the
                // peer's NAT rebound): not confirmed yet, so ping it.
                if self.with_peer(&peer, |p| p.path.handle_unexpected_source(from, now))
                    == Some(true)
                {
                    self.send_ping(peer, Destination::Udp(from), Purpose::Probe, now);
                }
                Path::Direct(from)
            }
            (_, Source::Relay(region)) => Path::Relay(region),
        };
        self.events.push_back(Event::Latency { peer, path, rtt });
        if let Purpose::Asked(id) = pending.purpose
            && self.asked.remove(&id).is_some()
        {
            self.events.push_back(Event::Ping {
                id,
                peer,
                outcome: PingOutcome::Pong { path, rtt },
            });
        }
    }

    pub(super) fn handle_report(&mut self, mut report: Report, now: Instant) {
        // STUN may be what is blocked: a working direct path proves UDP
        // works (and an unblock on every heartbeat would re-probe everyone).
        let any_direct = self.peers.values().any(|p| p.path.direct().is_some());
        let blocked = !report.udp && !any_direct;
        self.set_udp_blocked(blocked, now);
        if blocked {
            self.retry_udp(now);
        }
        let change = self
            .home
            .handle_latencies(report.region_latency.iter().map(|(r, d)| (*r, *d)), now);
        self.note_home(change);
        if self.home.home().is_none() {
            let change = self.home.fall_back();
            self.note_home(change);
        }
        let mut stun = Vec::new();
        if let Some(v4) = report.global_v4 {
            stun.push(Endpoint {
                addr: v4,
                kind: EndpointKind::Stun,
            });
            if report.mapping_varies_by_dest_ip == Some(true) && self.local_port != 0 {
                // A hard NAT may still keep our port for some mappings.
                stun.push(Endpoint {
                    addr: SocketAddr::new(v4.ip(), self.local_port),
                    kind: EndpointKind::Stun4LocalPort,
                });
            }
        }
        if let Some(v6) = report.global_v6 {
            stun.push(Endpoint {
                addr: v6,
                kind: EndpointKind::Stun,
            });
        }
        // A run with no answer says nothing about our public addresses (the
        // STUN servers may be what is unreachable): keep the last ones,
        // unless we moved since they were learned.
        if report.udp || self.stun_stale {
            self.stun_stale = false;
            self.set_stun_endpoints(stun, now);
        }
        for (region, rtt) in &self.relay_latency {
            report.region_latency.entry(*region).or_insert(*rtt);
        }
        report.preferred_region = self.home.home();
        tracing::debug!(
            udp = report.udp,
            hard_nat = ?report.mapping_varies_by_dest_ip,
            home = ?report.preferred_region,
            "netcheck"
        );
        self.events.push_back(Event::Netcheck(report));
    }

    pub(super) fn set_udp_blocked(&mut self, blocked: bool, now: Instant) {
        if blocked == self.udp_blocked {
            return;
        }
        self.udp_blocked = blocked;
        if blocked {
            tracing::info!("UDP is blocked: relay only, retrying UDP with backoff");
        } else {
            self.reprobe_all(now);
        }
    }

    /// While UDP is blocked, UDP is retried on netcheck's backoff schedule
    /// only: each blocked report pings every relayed peer's candidates once
    /// (STUN may be what is blocked, not the peers). A pong makes the path
    /// direct and ends the blocked state.
    pub(super) fn retry_udp(&mut self, now: Instant) {
        let targets: Vec<(NodePublic, SocketAddr)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.path.relay().is_some() && p.path.direct().is_none())
            .flat_map(|(k, p)| p.path.prober().candidates().map(move |c| (*k, c)))
            .collect();
        for (peer, to) in targets {
            self.send_ping(peer, Destination::Udp(to), Purpose::Probe, now);
        }
    }

    pub(super) fn set_stun_endpoints(&mut self, stun: Vec<Endpoint>, now: Instant) {
        if stun != self.stun_endpoints {
            self.stun_endpoints = stun;
            self.publish_endpoints(now);
        }
    }

    /// Recomputes our endpoints; a change is reported and every peer is
    /// probed again with a CallMeMaybe (roaming).
    pub(super) fn publish_endpoints(&mut self, now: Instant) {
        let mut all: Vec<Endpoint> = self
            .local_endpoints
            .iter()
            .chain(self.stun_endpoints.iter())
            .copied()
            .collect();
        all.sort();
        all.dedup_by_key(|e| e.addr);
        if all == self.endpoints {
            return;
        }
        self.endpoints = all.clone();
        tracing::debug!(count = all.len(), "Our endpoints changed");
        self.events
            .push_back(Event::EndpointsChanged { endpoints: all });
        self.reprobe_all(now);
    }

    pub(super) fn reprobe_all(&mut self, now: Instant) {
        let keys: Vec<NodePublic> = self.peers.keys().copied().collect();
        for peer in keys {
            self.with_peer(&peer, |p| p.path.reprobe(now));
        }
    }

    pub(super) fn send_asked_pings(&mut self, now: Instant) {
        let udp_blocked = self.udp_blocked;
        let mut sends: Vec<(NodePublic, Destination, Purpose)> = Vec::new();
        for (id, a) in &mut self.asked {
            if a.sent {
                continue;
            }
            a.sent = true;
            let Some(state) = self.peers.get(&a.peer) else {
                continue;
            };
            let purpose = Purpose::Asked(*id);
            if let Some(addr) = state.path.direct() {
                sends.push((a.peer, Destination::Udp(addr), purpose));
                continue;
            }
            let relay = state.path.relay();
            if let Some(region) = relay {
                let to = Destination::Relay {
                    region,
                    node: a.peer,
                };
                sends.push((a.peer, to, purpose));
            }
            if !udp_blocked || relay.is_none() {
                sends.extend(
                    state
                        .path
                        .prober()
                        .candidates()
                        .map(|c| (a.peer, Destination::Udp(c), purpose)),
                );
            }
        }
        for (peer, to, purpose) in sends {
            self.send_ping(peer, to, purpose, now);
        }
    }

    pub(super) fn send_ping(
        &mut self,
        peer: NodePublic,
        to: Destination,
        purpose: Purpose,
        now: Instant,
    ) {
        let tx_id = self.next_tx_id();
        let ping = Message::Ping(Ping {
            tx_id,
            node_key: self.node_key,
            padding: 0,
        });
        if self.seal_and_send(peer, to, &ping) {
            self.pending.insert(
                tx_id,
                Pending {
                    peer,
                    to,
                    sent: now,
                    purpose,
                },
            );
        }
    }

    pub(super) fn send_pong(
        &mut self,
        peer: NodePublic,
        tx_id: TxId,
        to: Destination,
        observed_src: SocketAddr,
    ) {
        let pong = Message::Pong(Pong {
            tx_id,
            observed_src,
        });
        self.seal_and_send(peer, to, &pong);
    }

    pub(super) fn send_call_me_maybe(&mut self, peer: NodePublic) {
        let Some(region) = self.peers.get(&peer).and_then(|p| p.path.relay()) else {
            return;
        };
        let endpoints: Vec<SocketAddr> = self
            .endpoints
            .iter()
            .map(|e| e.addr)
            .take(MAX_CALL_ME_MAYBE)
            .collect();
        if endpoints.is_empty() {
            return;
        }
        tracing::debug!(peer = %peer.short(), %region, endpoints = endpoints.len(), "Sending CallMeMaybe");
        let msg = Message::CallMeMaybe(CallMeMaybe { endpoints });
        self.seal_and_send(peer, Destination::Relay { region, node: peer }, &msg);
    }

    pub(super) fn seal_and_send(
        &mut self,
        peer: NodePublic,
        to: Destination,
        msg: &Message,
    ) -> bool {
        let nonce = self.next_nonce();
        let Some(state) = self.peers.get(&peer) else {
            return false;
        };
        let payload = state.shared.seal(&self.public, nonce, msg);
        self.transmits.push_back(Transmit::Disco { to, payload });
        true
    }

    pub(super) fn next_nonce(&mut self) -> [u8; NONCE_LEN] {
        self.counter += 1;
        let mut n = [0u8; NONCE_LEN];
        n[..NONCE_LEN - 8].copy_from_slice(&self.nonce_prefix);
        n[NONCE_LEN - 8..].copy_from_slice(&self.counter.to_be_bytes());
        n
    }

    pub(super) fn next_tx_id(&mut self) -> TxId {
        self.counter += 1;
        let mut t = [0u8; TX_ID_LEN];
        t[..4].copy_from_slice(&self.nonce_prefix[..4]);
        t[4..].copy_from_slice(&self.counter.to_be_bytes());
        t
    }
}
