//! [`TailnetTunnel`]: what the engine drives in tailnet mode — WireGuard
//! ([`weft_wg::Device`]) and disco ([`weft_disco::Disco`]) on one UDP
//! socket, with the hooks where the packet filter plugs in.
//!
//! * Receive: a datagram with the disco magic goes to disco (pongs are sent
//!   through the engine's `send`); everything else to WireGuard. Packets
//!   WireGuard hands to TUN pass [`PacketHooks::inbound_allowed`] first.
//!   Datagrams either of them drops are counted by reason ([`UdpDrops`]:
//!   garbage that is neither is WireGuard's `malformed`).
//! * Send: every packet read from TUN is shown to
//!   [`PacketHooks::note_outbound`] (the stateful filter tracks flows there)
//!   before it is sealed.
//! * Timers: WireGuard's, then disco's, then the hooks' (the filter sweeps
//!   expired flows there); pings asked for from outside (the
//!   LocalAPI) are built here, so their round-trip time starts when the
//!   datagram really leaves (the engine has no way to send outside its
//!   threads yet; see `/work/notes/engine-requests.md`).
//! * Disco's best-path changes become WireGuard endpoint updates of that
//!   peer only.
//!
//! Locks: `disco` is taken on its own, never while the device runs a
//! callback; `pings` only after `disco` is released. The per-packet path
//! takes none of them: the hooks sit in a `OnceLock` (set once, read with
//! one atomic load) and the packet counters are relaxed atomics, the tx
//! ones and the rx ones on separate cache lines (one thread writes each).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use weft_disco::{Destination, Disco, Event, Path, PingId, PingOutcome, Transmit};
use weft_net::Tunnel;
use weft_packet::IpPacket;
use weft_types::{DiscoPublic, NodePublic};
use weft_wg::{Decapsulated, Device, DeviceUpdate, DropReason, Encapsulated, PeerUpdate};

/// Where the packet filter plugs in ([`super::filter::NodeFilter`]). A tunnel
/// without hooks lets everything through. Packets come as the views
/// WireGuard's decapsulation and the engine's TUN reader built: nothing here
/// parses them again.
pub trait PacketHooks: Send + Sync + 'static {
    /// Returns whether a decrypted packet from a peer may reach TUN.
    fn inbound_allowed(&self, packet: &IpPacket<'_>, now: Instant) -> bool;
    /// Sees each packet from TUN before it is sealed (to track flows, so
    /// replies to our own connections pass `inbound_allowed`).
    fn note_outbound(&self, packet: &IpPacket<'_>, now: Instant);
    /// Runs on the engine's timer thread every tick.
    fn handle_timeout(&self, _now: Instant) {}
}

/// IP packets and bytes through the tunnel, as [`TailnetTunnel::counters`]
/// reads them: tx = read from TUN (before sealing), rx = written to TUN
/// (after decryption and the filter).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunnelCounters {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
}

/// Datagrams the UDP socket received and dropped, by protocol and reason
/// (every reason present, zeros included).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UdpDrops {
    /// WireGuard's decapsulation drops; a datagram that is neither disco nor
    /// WireGuard is `Malformed`.
    pub wireguard: BTreeMap<DropReason, u64>,
    /// Disco's drops, by the names of [`weft_disco::Stats::by_reason`].
    pub disco: BTreeMap<&'static str, u64>,
}

impl UdpDrops {
    /// Returns every drop counted.
    pub fn total(&self) -> u64 {
        self.wireguard.values().chain(self.disco.values()).sum()
    }
}

/// One direction's counters, alone on its cache line: the tx thread and the
/// rx thread never write the same line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Traffic {
    packets: AtomicU64,
    bytes: AtomicU64,
    filtered: AtomicU64,
    /// WireGuard drops by [`DropReason::ALL`] index (rx only).
    dropped: [AtomicU64; DropReason::ALL.len()],
}

impl Traffic {
    fn add(&self, len: usize) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(len as u64, Ordering::Relaxed);
    }
}

/// WireGuard + disco for the engine.
pub struct TailnetTunnel {
    device: Arc<Device>,
    disco: Mutex<Disco>,
    pings: Mutex<BTreeMap<PingId, oneshot::Sender<PingOutcome>>>,
    /// Unset: everything passes.
    hooks: OnceLock<Arc<dyn PacketHooks>>,
    tx: Traffic,
    rx: Traffic,
}

impl TailnetTunnel {
    /// Joins a device and a disco core.
    pub fn new(device: Arc<Device>, disco: Disco) -> Self {
        Self {
            device,
            disco: Mutex::new(disco),
            pings: Mutex::new(BTreeMap::new()),
            hooks: OnceLock::new(),
            tx: Traffic::default(),
            rx: Traffic::default(),
        }
    }

    /// Returns the WireGuard device.
    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }

    /// Installs the packet hooks (the filter, see [`super::filter`]), once;
    /// until then every packet passes. Returns `false` (and changes nothing)
    /// if hooks were installed already: the filter's policy changes through
    /// the filter itself, never by swapping it.
    pub fn set_hooks(&self, hooks: Arc<dyn PacketHooks>) -> bool {
        self.hooks.set(hooks).is_ok()
    }

    /// Returns how many inbound packets the hooks refused.
    pub fn filtered(&self) -> u64 {
        self.rx.filtered.load(Ordering::Relaxed)
    }

    /// Returns the packets and bytes through the tunnel so far.
    pub fn counters(&self) -> TunnelCounters {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TunnelCounters {
            tx_packets: l(&self.tx.packets),
            tx_bytes: l(&self.tx.bytes),
            rx_packets: l(&self.rx.packets),
            rx_bytes: l(&self.rx.bytes),
        }
    }

    /// Returns the datagrams dropped on receive so far, by reason.
    pub fn udp_drops(&self) -> UdpDrops {
        let wireguard = DropReason::ALL
            .iter()
            .zip(&self.rx.dropped)
            .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
            .collect();
        let disco = self.disco().stats().by_reason().into_iter().collect();
        UdpDrops { wireguard, disco }
    }

    /// Returns our disco public key.
    pub fn disco_key(&self) -> DiscoPublic {
        self.disco().public_key()
    }

    /// Changes the node key our disco pings carry.
    pub fn set_node_key(&self, key: NodePublic) {
        self.disco().set_node_key(key);
    }

    /// Adds or updates a disco peer.
    pub fn disco_upsert(
        &self,
        peer: NodePublic,
        disco_key: DiscoPublic,
        endpoints: Vec<SocketAddr>,
        now: Instant,
    ) {
        // No relay map reaches disco yet: paths are direct or none.
        self.disco()
            .upsert_peer(peer, disco_key, endpoints, None, now);
    }

    /// Forgets a disco peer.
    pub fn disco_remove(&self, peer: &NodePublic) {
        self.disco().remove_peer(peer);
        self.complete_pings();
    }

    /// Returns the peer's trusted direct path.
    pub fn best_addr(&self, peer: &NodePublic, now: Instant) -> Option<SocketAddr> {
        self.disco().best_addr(peer, now)
    }

    /// Asks for one disco ping to `peer`; the receiver gets the outcome.
    /// `None` if disco does not know the peer (no disco key yet).
    pub fn ping(
        &self,
        peer: &NodePublic,
        timeout: Duration,
        now: Instant,
    ) -> Option<oneshot::Receiver<PingOutcome>> {
        let id = self.disco().ping(peer, timeout, now)?;
        let (tx, rx) = oneshot::channel();
        self.pings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        Some(rx)
    }

    fn disco(&self) -> MutexGuard<'_, Disco> {
        self.disco.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends disco's datagrams and acts on its events.
    fn drain(&self, now: Instant, send: &mut dyn FnMut(SocketAddr, &[u8])) {
        let (transmits, events) = {
            let mut d = self.disco();
            let t: Vec<_> = std::iter::from_fn(|| d.poll_transmit()).collect();
            let e: Vec<_> = std::iter::from_fn(|| d.poll_event()).collect();
            (t, e)
        };
        for t in transmits {
            match t {
                Transmit::Disco {
                    to: Destination::Udp(to),
                    payload,
                } => send(to, &payload),
                // Without a relay map disco asks for neither.
                other => tracing::trace!(?other, "No relay or STUN client yet; dropped"),
            }
        }
        for e in events {
            self.handle_event(e, now);
        }
    }

    fn handle_event(&self, e: Event, now: Instant) {
        match e {
            Event::PathChanged {
                peer,
                path: Some(Path::Direct(addr)),
            } => {
                tracing::debug!(peer = %peer.short(), %addr, "Direct path");
                let update = PeerUpdate {
                    update_only: true,
                    endpoint: Some(addr),
                    ..PeerUpdate::new(peer)
                };
                self.device.apply(
                    DeviceUpdate {
                        peers: vec![update],
                        ..DeviceUpdate::default()
                    },
                    now,
                );
            }
            Event::PathChanged { peer, .. } => {
                tracing::debug!(peer = %peer.short(), "Direct path lost");
            }
            Event::Ping { id, outcome, .. } => {
                if let Some(tx) = self
                    .pings
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id)
                {
                    let _ = tx.send(outcome);
                }
            }
            Event::Latency { .. }
            | Event::HomeRelayChanged { .. }
            | Event::EndpointsChanged { .. }
            | Event::Netcheck(_) => {}
        }
    }

    fn complete_pings(&self) {
        let events: Vec<_> = {
            let mut d = self.disco();
            std::iter::from_fn(|| d.poll_event()).collect()
        };
        let now = crate::clock::now();
        for e in events {
            self.handle_event(e, now);
        }
    }
}

impl Tunnel for TailnetTunnel {
    fn encapsulate<'o>(
        &self,
        packet: IpPacket<'_>,
        out: &'o mut [u8],
        now: Instant,
        send: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> Encapsulated<'o> {
        if let Some(hooks) = self.hooks.get() {
            hooks.note_outbound(&packet, now);
        }
        self.tx.add(packet.total_len());
        self.device.encapsulate(packet, out, now, send)
    }

    fn decapsulate<'o>(
        &self,
        from: SocketAddr,
        datagram: &[u8],
        out: &'o mut [u8],
        now: Instant,
        send: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> Decapsulated<'o> {
        if weft_disco::is_disco(datagram) {
            self.disco().handle_udp(from, datagram, now);
            self.drain(now, send);
            return Decapsulated::Done;
        }
        match self.device.decapsulate(from, datagram, out, now, send) {
            Decapsulated::ToTunnel(p) => {
                if self.hooks.get().is_none_or(|h| h.inbound_allowed(&p, now)) {
                    self.rx.add(p.total_len());
                    Decapsulated::ToTunnel(p)
                } else {
                    self.rx.filtered.fetch_add(1, Ordering::Relaxed);
                    Decapsulated::Done
                }
            }
            Decapsulated::Dropped(reason) => {
                if let Some(n) = DropReason::ALL
                    .iter()
                    .position(|r| *r == reason)
                    .and_then(|i| self.rx.dropped.get(i))
                {
                    n.fetch_add(1, Ordering::Relaxed);
                }
                Decapsulated::Dropped(reason)
            }
            other => other,
        }
    }

    fn handle_timeout(&self, now: Instant, send: &mut dyn FnMut(SocketAddr, &[u8])) {
        self.device.handle_timeout(now, send);
        self.disco().handle_timeout(now);
        self.drain(now, send);
        if let Some(hooks) = self.hooks.get() {
            hooks.handle_timeout(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_types::{DiscoPrivate, NodePrivate};

    fn t0() -> Instant {
        #[allow(clippy::disallowed_methods)] // the test's base instant
        Instant::now()
    }

    struct DenyAll;
    impl PacketHooks for DenyAll {
        fn inbound_allowed(&self, _: &IpPacket<'_>, _: Instant) -> bool {
            false
        }
        fn note_outbound(&self, _: &IpPacket<'_>, _: Instant) {}
    }

    fn side(n: u8, now: Instant) -> (TailnetTunnel, NodePrivate, SocketAddr) {
        let key = NodePrivate::from_bytes([n; 32]);
        #[allow(clippy::disallowed_methods)] // wall clock for the device's handshake stamps
        let device = Arc::new(Device::new(now, std::time::SystemTime::now()));
        device.apply(
            DeviceUpdate {
                private_key: Some(Some(key.clone())),
                ..DeviceUpdate::default()
            },
            now,
        );
        let disco = Disco::new(
            DiscoPrivate::from_bytes([n + 50; 32]),
            key.public(),
            [n; 32],
        );
        (
            TailnetTunnel::new(device, disco),
            key,
            format!("198.18.0.{n}:41641").parse().unwrap(),
        )
    }

    /// Delivers every datagram queued in `queue` between the two tunnels
    /// until both are quiet; returns IP packets that reached each TUN.
    fn pump(
        a: &TailnetTunnel,
        b: &TailnetTunnel,
        aa: SocketAddr,
        ba: SocketAddr,
        mut queue: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
        now: Instant,
    ) -> (usize, usize) {
        let mut to_tun = (0, 0);
        let mut out = vec![0u8; 2048];
        for _ in 0..100 {
            let Some((from, to, d)) = queue.pop() else {
                break;
            };
            let mut next = Vec::new();
            let (t, me) = if to == aa { (a, aa) } else { (b, ba) };
            let r = t.decapsulate(from, &d, &mut out, now, &mut |dst, x| {
                next.push((me, dst, x.to_vec()))
            });
            if matches!(r, Decapsulated::ToTunnel(_)) {
                if to == aa {
                    to_tun.0 += 1
                } else {
                    to_tun.1 += 1
                }
            }
            queue.extend(next);
        }
        to_tun
    }

    #[test]
    fn disco_finds_the_path_and_wireguard_uses_it() {
        let now = t0();
        let (a, ak, aa) = side(1, now);
        let (b, bk, ba) = side(2, now);
        let wg = |k: &NodePrivate, ip: &str| PeerUpdate {
            allowed_ips: vec![ip.parse().unwrap()],
            ..PeerUpdate::new(k.public())
        };
        a.device.apply(
            DeviceUpdate {
                peers: vec![wg(&bk, "100.64.0.2/32")],
                ..DeviceUpdate::default()
            },
            now,
        );
        b.device.apply(
            DeviceUpdate {
                peers: vec![wg(&ak, "100.64.0.1/32")],
                ..DeviceUpdate::default()
            },
            now,
        );
        a.disco_upsert(bk.public(), b.disco_key(), vec![ba], now);
        b.disco_upsert(ak.public(), a.disco_key(), vec![aa], now);

        let mut queue = Vec::new();
        a.handle_timeout(now, &mut |to, d| queue.push((aa, to, d.to_vec())));
        assert!(!queue.is_empty(), "a pings b's endpoint");
        assert!(queue.iter().all(|(_, _, d)| weft_disco::is_disco(d)));
        pump(&a, &b, aa, ba, queue, now);
        assert_eq!(a.best_addr(&bk.public(), now), Some(ba));
        assert_eq!(
            a.device.peers(now)[0].endpoint,
            Some(ba),
            "the WireGuard endpoint follows disco"
        );

        // An IP packet from a's TUN now goes to b over WireGuard and arrives.
        let packet = ipv4_udp([100, 64, 0, 1], [100, 64, 0, 2]);
        let mut out = vec![0u8; 2048];
        let mut queue = Vec::new();
        let view = IpPacket::new(&packet).unwrap();
        let r = a.encapsulate(view, &mut out, now, &mut |to, d| {
            queue.push((aa, to, d.to_vec()))
        });
        assert!(matches!(r, Encapsulated::Queued));
        let (_, at_b) = pump(&a, &b, aa, ba, queue, now);
        assert_eq!(at_b, 1);

        // With a filter that refuses everything, b drops it and counts it.
        assert!(b.set_hooks(Arc::new(DenyAll)));
        assert!(!b.set_hooks(Arc::new(DenyAll)), "hooks are installed once");
        let mut queue = Vec::new();
        if let Encapsulated::Send { to, datagram } =
            a.encapsulate(view, &mut out, now, &mut |to, d| {
                queue.push((aa, to, d.to_vec()))
            })
        {
            queue.push((aa, to, datagram.to_vec()));
        }
        let (_, at_b) = pump(&a, &b, aa, ba, queue, now);
        assert_eq!(at_b, 0);
        assert_eq!(b.filtered(), 1);
        let c = b.counters();
        assert_eq!(
            (c.rx_packets, c.rx_bytes),
            (1, packet.len() as u64),
            "only the packet that passed"
        );
        assert_eq!(
            (a.counters().tx_packets, a.counters().tx_bytes),
            (2, 2 * packet.len() as u64)
        );
    }

    #[test]
    fn an_asked_for_ping_is_answered_through_the_timer_path() {
        let now = t0();
        let (a, ak, aa) = side(1, now);
        let (b, bk, ba) = side(2, now);
        a.disco_upsert(bk.public(), b.disco_key(), vec![ba], now);
        b.disco_upsert(ak.public(), a.disco_key(), vec![aa], now);
        let mut rx = a.ping(&bk.public(), Duration::from_secs(5), now).unwrap();
        let mut queue = Vec::new();
        a.handle_timeout(now, &mut |to, d| queue.push((aa, to, d.to_vec())));
        pump(&a, &b, aa, ba, queue, now);
        assert!(
            matches!(rx.try_recv().unwrap(), PingOutcome::Pong { path: Path::Direct(addr), .. } if addr == ba)
        );
        assert!(
            a.ping(
                &NodePrivate::from_bytes([9; 32]).public(),
                Duration::from_secs(1),
                now
            )
            .is_none()
        );
    }

    #[test]
    fn garbage_on_the_udp_socket_is_counted_by_protocol_and_reason() {
        let now = t0();
        let (a, ak, aa) = side(1, now);
        let (b, _, _) = side(2, now);
        let mut out = vec![0u8; 2048];
        let mut sent = Vec::new();
        let mut send = |to: SocketAddr, d: &[u8]| sent.push((to, d.to_vec()));
        // Neither protocol, a WireGuard data message for no session, and
        // disco from a key nobody knows.
        let mut data = vec![4u8, 0, 0, 0];
        data.extend_from_slice(&[0u8; 28]);
        let mut stranger_ping = Vec::new();
        b.disco_upsert(ak.public(), a.disco_key(), vec![aa], now);
        b.handle_timeout(now, &mut |_, d| stranger_ping.push(d.to_vec()));
        for datagram in [&b"GET / HTTP/1.1\r\n\r\n"[..], &data, &stranger_ping[0]] {
            let r = a.decapsulate(aa, datagram, &mut out, now, &mut send);
            assert!(!matches!(r, Decapsulated::ToTunnel(_)));
        }
        assert!(sent.is_empty(), "garbage is never answered");
        let d = a.udp_drops();
        assert_eq!(d.wireguard[&DropReason::Malformed], 1);
        assert_eq!(d.wireguard[&DropReason::UnknownPeer], 1);
        assert_eq!(d.disco["unknown_sender"], 1);
        assert_eq!(d.total(), 3);
        let text = crate::daemon::metrics::render(&crate::daemon::metrics::Snapshot {
            udp_drops: d,
            ..Default::default()
        });
        assert!(text.contains(
            "weftd_udp_dropped_datagrams_total{proto=\"wireguard\",reason=\"malformed\"} 1\n"
        ));
        assert!(text.contains(
            "weftd_udp_dropped_datagrams_total{proto=\"disco\",reason=\"unknown_sender\"} 1\n"
        ));
        assert!(text.contains(
            "weftd_udp_dropped_datagrams_total{proto=\"disco\",reason=\"wrong_node_key\"} 0\n"
        ));
    }

    fn ipv4_udp(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 32, 0, 0, 0, 0, 64, 17, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&[0x30, 0x39, 0x30, 0x39, 0, 12, 0, 0, 1, 2, 3, 4]);
        p
    }
}
