//! [`TailnetTunnel`]: what the engine drives in tailnet mode — WireGuard
//! ([`weft_wg::Device`]) and disco ([`weft_disco::Disco`]) on one UDP
//! socket, with the hooks where the packet filter plugs in.
//!
//! * Receive: a datagram with the disco magic goes to disco (pongs are sent
//!   through the engine's `send`); everything else to WireGuard. Packets
//!   WireGuard hands to TUN pass [`PacketHooks::inbound_allowed`] first.
//!   Datagrams either of them drops are counted by reason ([`UdpDrops`]:
//!   garbage that is neither is WireGuard's `malformed`).
//! * Local services: a packet from TUN addressed to a service address
//!   (`weft_dns::SERVICE_V4`/`SERVICE_V6`, the MagicDNS resolver) is handed
//!   to the [`LocalService`] instead of being sealed: one address compare
//!   per packet, then a non-blocking hand-off (the service drops and
//!   counts when its queue is full). Its replies reach TUN through the
//!   engine's injector, past WireGuard and the inbound filter.
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
//! * Relays ([`super::relay::Relays`], once set): disco datagrams for
//!   `Destination::Relay` go through the region's relay client; disco's home
//!   relay is followed; relayed disco datagrams, relay connection changes
//!   and relay latencies come in through [`TailnetTunnel::handle_relay_input`]
//!   (the relay pump task, outside the engine's threads), and the UDP
//!   datagrams disco answers with there wait for the next timer tick, the
//!   only place outside the engine's packet path that can send on the socket.
//! * WireGuard over the relay: while disco's path for a peer is
//!   `Relay(region)`, the peer's WireGuard endpoint is its relay endpoint
//!   ([`super::relay_addr`]); the engine hands datagrams to those addresses
//!   to [`Tunnel::send_diverted`] (one prefix compare per send run) and they
//!   go out through the region's relay client. Relayed WireGuard datagrams
//!   are handed to the engine's [`weft_net::Injector`], opened on the rx
//!   thread with the sender's relay endpoint as source.
//! * STUN (netcheck) on the WireGuard socket, so the reflexive address is
//!   this socket's own mapping: disco's `Transmit::Stun` is encoded and sent
//!   from it; a received datagram that is not a WireGuard data message
//!   (first byte 4, checked first so the data path pays one compare) and
//!   looks like STUN is parsed and given to disco. Disco's endpoints (ours
//!   plus what STUN found) are published on a watch channel
//!   ([`TailnetTunnel::endpoints`]) for control.
//!
//! Locks: `disco` is taken on its own, never while the device runs a
//! callback; `pings` only after `disco` is released. The per-packet path
//! takes none of them: the hooks sit in a `OnceLock` (set once, read with
//! one atomic load) and the packet counters are relaxed atomics, the tx
//! ones and the rx ones on separate cache lines (one thread writes each).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use weft_disco::{Destination, Disco, Event, Path, PingId, PingOutcome, RegionId, Transmit};
use weft_net::Tunnel;
use weft_packet::IpPacket;
use weft_types::netmap::RelayMap;
use weft_types::{DiscoPublic, Endpoint, NodePublic};
use weft_wg::{Decapsulated, Device, DeviceUpdate, DropReason, Encapsulated, PeerUpdate};

use super::relay::{Input, Relays};
use super::relay_addr::{self, RelayAddrs};
use super::stun_hosts::StunHosts;

/// How often relayed traffic to one peer is reported to disco (which then
/// probes a settled peer for a direct path again).
const RELAYED_TRAFFIC_NOTE: Duration = Duration::from_secs(1);

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

/// Takes the packets from TUN addressed to the node's own service addresses
/// (the MagicDNS resolver). Called on the engine's tx thread: must not block.
pub trait LocalService: Send + Sync + 'static {
    /// Takes one packet (the service copies what it keeps).
    fn take(&self, packet: &IpPacket<'_>);
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
    /// WireGuard datagrams over the relay that were dropped before the
    /// relay or WireGuard took them: `rx_not_opened` (received, the
    /// engine's queue full or not running), `tx_not_sent` (no relay
    /// connection for the region, or its send buffer full).
    pub relay: BTreeMap<&'static str, u64>,
}

impl UdpDrops {
    /// Returns every drop counted.
    pub fn total(&self) -> u64 {
        self.wireguard
            .values()
            .chain(self.disco.values())
            .chain(self.relay.values())
            .sum()
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
    /// Datagrams for a relay endpoint that could not be sent (tx only: no
    /// relay for the region, its queue full, an unknown endpoint).
    dropped_relay: AtomicU64,
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
    /// Unset: no relay (disco gets no relay map).
    relays: OnceLock<Arc<Relays>>,
    /// Unset: packets to the service addresses go to WireGuard (no route).
    local: OnceLock<Arc<dyn LocalService>>,
    /// UDP datagrams disco produced outside the engine's threads (answers
    /// to relayed disco), sent at the next timer tick.
    pending_udp: Mutex<Vec<(SocketAddr, Vec<u8>)>>,
    /// Relayed WireGuard datagrams dropped: no engine to open them yet, its
    /// queue full, or the relay endpoint table full.
    relay_dropped: AtomicU64,
    /// The relay map's STUN servers, host names looked up.
    stun_hosts: Mutex<StunHosts>,
    /// Relay endpoints of peers (see [`super::relay_addr`]).
    relay_addrs: RwLock<RelayAddrs>,
    /// When relayed traffic to each peer was last reported to disco.
    relay_noted: Mutex<BTreeMap<NodePublic, Instant>>,
    /// Where relayed WireGuard datagrams go to be opened (the engine's rx
    /// thread); set once the engine runs.
    injector: OnceLock<weft_net::Injector>,
    /// STUN-looking datagrams that did not parse as a Binding response.
    stun_malformed: AtomicU64,
    /// Disco's latest endpoints (local + STUN), for control.
    endpoints: tokio::sync::watch::Sender<Vec<Endpoint>>,
    /// Disco's home relay region, for control (peers reach us there).
    home_relay: tokio::sync::watch::Sender<Option<u16>>,
    /// The last netcheck report (`weft netcheck`); `None` until a run ends.
    netcheck: tokio::sync::watch::Sender<Option<weft_disco::Report>>,
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
            relays: OnceLock::new(),
            local: OnceLock::new(),
            pending_udp: Mutex::new(Vec::new()),
            relay_dropped: AtomicU64::new(0),
            stun_hosts: Mutex::new(StunHosts::default()),
            relay_addrs: RwLock::new(RelayAddrs::default()),
            relay_noted: Mutex::new(BTreeMap::new()),
            injector: OnceLock::new(),
            stun_malformed: AtomicU64::new(0),
            endpoints: tokio::sync::watch::Sender::new(Vec::new()),
            home_relay: tokio::sync::watch::Sender::new(None),
            netcheck: tokio::sync::watch::Sender::new(None),
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

    /// Installs the service behind the service addresses, once (`false` if
    /// already set).
    pub fn set_local_service(&self, service: Arc<dyn LocalService>) -> bool {
        self.local.set(service).is_ok()
    }

    /// Installs the relay clients, once (`false` if already set).
    pub fn set_relays(&self, relays: Arc<Relays>) -> bool {
        self.relays.set(relays).is_ok()
    }

    /// Installs the engine's injector, once (`false` if already set): relayed
    /// WireGuard datagrams are opened through it.
    pub fn set_injector(&self, injector: weft_net::Injector) -> bool {
        self.injector.set(injector).is_ok()
    }

    /// Returns the relay clients, if installed.
    pub fn relays(&self) -> Option<&Arc<Relays>> {
        self.relays.get()
    }

    /// Takes the netmap's relay map: the relay clients (if installed)
    /// connect to the regions' relays, and disco learns the regions (home
    /// relay choice, peers' relay paths) and their STUN servers (netcheck).
    /// A relay's STUN address is its map `ipv4`/`ipv6` or IP-literal host
    /// with its `stun_port`; a host name is looked up through the relay
    /// side ([`super::stun_hosts`]) and its STUN servers join when the
    /// answer comes. A region without any is measured over its relay
    /// connection only.
    pub fn set_relay_map(&self, map: &RelayMap, now: Instant) {
        if let Some(relays) = self.relays.get() {
            relays.set_relay_map(map, now);
        }
        // Disco takes the regions on every netmap, changed or not: it also
        // (re)sets each peer's relay path from the peers' home relays.
        let (changed, regions) = {
            let mut hosts = self.stun_hosts();
            (hosts.set_map(map, now), hosts.regions())
        };
        self.disco().set_relay_map(regions, now);
        self.drain(now, &mut |to, d| self.queue_udp(to, d));
        if changed {
            self.resolve_relay_hosts(now);
        }
    }

    /// Starts the lookups of relay host names that are due (new in the
    /// map, or their last answer is old); the relay pump calls it on its
    /// tick.
    pub fn resolve_relay_hosts(&self, now: Instant) {
        let Some(relays) = self.relays.get() else {
            return;
        };
        for host in self.stun_hosts().due(now) {
            relays.resolve(host);
        }
    }

    fn stun_hosts(&self) -> MutexGuard<'_, StunHosts> {
        self.stun_hosts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives disco our local endpoints (interface addresses with the
    /// socket's `port`); a change re-probes every peer and runs netcheck.
    pub fn set_local_endpoints(&self, port: u16, endpoints: Vec<Endpoint>, now: Instant) {
        self.disco()
            .handle_local_endpoints_changed(port, endpoints, now);
        self.drain(now, &mut |to, d| self.queue_udp(to, d));
    }

    /// Returns a receiver of disco's endpoints (local + STUN-learned),
    /// updated on every change: what control must be told.
    pub fn endpoints(&self) -> tokio::sync::watch::Receiver<Vec<Endpoint>> {
        self.endpoints.subscribe()
    }

    /// Returns a receiver of disco's home relay region, updated on every
    /// change: what control must be told next to the endpoints.
    pub fn home_relay(&self) -> tokio::sync::watch::Receiver<Option<u16>> {
        self.home_relay.subscribe()
    }

    /// Returns a receiver of netcheck reports: the last one, and each new
    /// one as a run ends (`weft netcheck` starts a run with
    /// [`TailnetTunnel::netcheck_now`] and waits for the next). The
    /// requests of a run leave at the engine's next timer tick.
    #[cfg_attr(not(test), allow(dead_code))] // for the `weft netcheck` route (next step)
    pub fn netcheck_reports(&self) -> tokio::sync::watch::Receiver<Option<weft_disco::Report>> {
        self.netcheck.subscribe()
    }

    /// Starts a netcheck run; `false` when there are no STUN servers.
    #[cfg_attr(not(test), allow(dead_code))] // for the `weft netcheck` route (next step)
    pub fn netcheck_now(&self, now: Instant) -> bool {
        self.disco().netcheck_now(now)
    }

    /// Returns how many relayed WireGuard datagrams were dropped before
    /// WireGuard saw them.
    #[cfg(test)]
    pub fn relay_dropped(&self) -> u64 {
        self.relay_dropped.load(Ordering::Relaxed)
    }

    /// Handles what the relays report (see [`super::relay::run`]).
    pub fn handle_relay_input(&self, input: Input, now: Instant) {
        match input {
            Input::Relay(region, weft_relay::Event::Packet { src, data }) => {
                if weft_disco::is_disco(&data) {
                    self.disco().handle_relay(region, src, &data, now);
                } else {
                    self.open_relayed(region, &src, &data);
                    return;
                }
            }
            Input::Relay(region, weft_relay::Event::Connected { .. }) => {
                tracing::debug!(%region, "Relay connected");
                self.disco().handle_relay_connection(region, true, now);
            }
            Input::Relay(region, weft_relay::Event::Disconnected { error, retry_in }) => {
                tracing::debug!(%region, %error, ?retry_in, "Relay disconnected");
                self.disco().handle_relay_connection(region, false, now);
            }
            Input::Relay(region, other) => {
                tracing::trace!(%region, ?other, "Relay event");
                return;
            }
            Input::Latency(region, rtt) => {
                tracing::trace!(%region, ?rtt, "Relay latency");
                self.disco().handle_relay_latency(region, rtt, now);
            }
            Input::Resolved { host, addrs } => {
                let regions = {
                    let mut hosts = self.stun_hosts();
                    if !hosts.resolved(&host, addrs, now) {
                        return;
                    }
                    hosts.regions()
                };
                tracing::debug!("A relay host name resolved; its STUN servers join netcheck");
                self.disco().set_relay_map(regions, now);
            }
        }
        self.drain(now, &mut |to, d| self.queue_udp(to, d));
    }

    /// Hands a relayed WireGuard datagram to the engine, from the sender's
    /// relay endpoint.
    fn open_relayed(&self, region: RegionId, src: &NodePublic, data: &[u8]) {
        let from = self.relay_addr(region, src);
        let queued = match (from, self.injector.get()) {
            (Some(from), Some(inj)) => inj.inject(from, data.to_vec()),
            _ => false,
        };
        if queued {
            tracing::trace!(%region, len = data.len(), "Relayed datagram queued for WireGuard");
        } else {
            self.relay_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(%region, len = data.len(), "Relayed datagram dropped");
        }
    }

    /// Returns `peer`'s relay endpoint through `region`: a read lock for a
    /// peer that has one (every relayed datagram after its first), the
    /// write lock only to give one out.
    fn relay_addr(&self, region: RegionId, peer: &NodePublic) -> Option<SocketAddr> {
        let known = self
            .relay_addrs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .existing(region, peer);
        known.or_else(|| {
            self.relay_addrs
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .addr(region, peer)
        })
    }

    fn queue_udp(&self, to: SocketAddr, datagram: &[u8]) {
        self.pending_udp
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((to, datagram.to_vec()));
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
        let mut disco: BTreeMap<&'static str, u64> =
            self.disco().stats().by_reason().into_iter().collect();
        disco.insert(
            "stun_malformed",
            self.stun_malformed.load(Ordering::Relaxed),
        );
        let relay = BTreeMap::from([
            ("rx_not_opened", self.relay_dropped.load(Ordering::Relaxed)),
            ("tx_not_sent", self.tx.dropped_relay.load(Ordering::Relaxed)),
        ]);
        UdpDrops {
            wireguard,
            disco,
            relay,
        }
    }

    /// Returns our disco public key.
    pub fn disco_key(&self) -> DiscoPublic {
        self.disco().public_key()
    }

    /// Changes the node key our disco pings carry.
    pub fn set_node_key(&self, key: NodePublic) {
        self.disco().set_node_key(key);
    }

    /// Adds or updates a disco peer, with its home relay region (its
    /// traffic goes through that relay until a direct path answers).
    pub fn disco_upsert(
        &self,
        peer: NodePublic,
        disco_key: DiscoPublic,
        endpoints: Vec<SocketAddr>,
        home_relay: Option<RegionId>,
        now: Instant,
    ) {
        self.disco()
            .upsert_peer(peer, disco_key, endpoints, home_relay, now);
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

    /// Returns the path disco sends `peer`'s traffic over.
    pub fn path(&self, peer: &NodePublic) -> Option<Path> {
        self.disco().path(peer)
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
                Transmit::Disco {
                    to: Destination::Relay { region, node },
                    payload,
                } => {
                    if let Some(relays) = self.relays.get() {
                        relays.send(region, &node, &payload, now);
                    }
                }
                Transmit::Stun { server, tx_id } => {
                    let mut buf = [0u8; weft_disco::stun::BINDING_REQUEST_LEN];
                    match weft_disco::stun::write_binding_request(
                        weft_disco::stun::TxId(tx_id),
                        &mut buf,
                    ) {
                        Ok(n) => send(server, &buf[..n]),
                        Err(e) => tracing::warn!(error = %e, "Cannot encode a STUN request"),
                    }
                }
            }
        }
        for e in events {
            self.handle_event(e, now);
        }
    }

    /// Points `peer`'s WireGuard endpoint at `addr` (a direct address or a
    /// relay endpoint), changing nothing else of the peer.
    fn set_wg_endpoint(&self, peer: NodePublic, addr: SocketAddr, now: Instant) {
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

    fn handle_event(&self, e: Event, now: Instant) {
        match e {
            Event::PathChanged {
                peer,
                path: Some(Path::Direct(addr)),
            } => {
                tracing::debug!(peer = %peer.short(), %addr, "Direct path");
                self.set_wg_endpoint(peer, addr, now);
            }
            Event::PathChanged {
                peer,
                path: Some(Path::Relay(region)),
            } => {
                let Some(addr) = self.relay_addr(region, &peer) else {
                    tracing::warn!(peer = %peer.short(), %region, "No relay endpoint left for a peer");
                    return;
                };
                tracing::debug!(peer = %peer.short(), %region, "Relay path");
                self.set_wg_endpoint(peer, addr, now);
            }
            Event::PathChanged { peer, path: None } => {
                tracing::debug!(peer = %peer.short(), "No path");
            }
            Event::HomeRelayChanged { region } => {
                tracing::info!(?region, "Home relay");
                self.home_relay.send_replace(region.map(|r| r.0));
                if let Some(relays) = self.relays.get() {
                    relays.set_home(region, now);
                }
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
            Event::EndpointsChanged { endpoints } => {
                tracing::debug!(count = endpoints.len(), "Our endpoints changed");
                self.endpoints.send_replace(endpoints);
            }
            Event::Netcheck(report) => {
                tracing::debug!(udp = report.udp, "netcheck report");
                self.netcheck.send_replace(Some(report));
            }
            Event::Latency { .. } => {}
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
        if weft_dns::is_service_addr(packet.dst())
            && let Some(service) = self.local.get()
        {
            // Handed over: nothing to seal or send.
            service.take(&packet);
            return Encapsulated::Queued;
        }
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
        if datagram.first() != Some(&4) && weft_disco::stun::is_stun(datagram) {
            match weft_disco::stun::parse_binding_response(datagram) {
                Ok((tx_id, mapped)) => {
                    self.disco()
                        .handle_stun_response(tx_id.0, mapped, from, now);
                    self.drain(now, send);
                }
                Err(e) => {
                    self.stun_malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::trace!(error = %e, "STUN datagram dropped");
                }
            }
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

    fn diverts(&self, to: SocketAddr) -> bool {
        relay_addr::is_relay_addr(&to)
    }

    fn send_diverted(&self, to: SocketAddr, datagram: &[u8]) {
        let Some((region, peer)) = self
            .relay_addrs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .lookup(&to)
        else {
            self.tx.dropped_relay.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(relays) = self.relays.get() else {
            self.tx.dropped_relay.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let now = crate::clock::now();
        if !relays.send(region, &peer, datagram, now) {
            self.tx.dropped_relay.fetch_add(1, Ordering::Relaxed);
        }
        tracing::trace!(%region, peer = %peer.short(), len = datagram.len(), "Sent through the relay");
        let note = {
            let mut noted = self
                .relay_noted
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match noted.get(&peer) {
                Some(t) if now.saturating_duration_since(*t) < RELAYED_TRAFFIC_NOTE => false,
                _ => {
                    noted.insert(peer, now);
                    true
                }
            }
        };
        if note {
            self.disco().handle_relayed_traffic(&peer, now);
        }
    }

    fn handle_timeout(&self, now: Instant, send: &mut dyn FnMut(SocketAddr, &[u8])) {
        self.device.handle_timeout(now, send);
        let pending = std::mem::take(
            &mut *self
                .pending_udp
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for (to, d) in pending {
            send(to, &d);
        }
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
        a.disco_upsert(bk.public(), b.disco_key(), vec![ba], None, now);
        b.disco_upsert(ak.public(), a.disco_key(), vec![aa], None, now);

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
        a.disco_upsert(bk.public(), b.disco_key(), vec![ba], None, now);
        b.disco_upsert(ak.public(), a.disco_key(), vec![aa], None, now);
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
        b.disco_upsert(ak.public(), a.disco_key(), vec![aa], None, now);
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

    /// Two tunnels whose only way to each other is a real relay server on
    /// loopback: disco learns the region from the relay map, both connect
    /// to it as their home, and an asked-for ping goes through the relay
    /// and comes back as a pong `via relay(1)`. A relayed datagram that is
    /// not disco is dropped and counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn disco_pings_a_peer_through_the_relay() {
        use crate::daemon::relay::{self, RelayOptions, Relays};
        use weft_types::netmap::{RelayNode, RelayRegion};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = weft_relay::RelayServer::new(weft_relay::RelayConfig::new(
            NodePrivate::from_bytes([77; 32]),
            Arc::new(weft_relay::AdmitAnyKeyInsecure),
        ))
        .unwrap();
        let stop_server = tokio_util::sync::CancellationToken::new();
        tokio::spawn(weft_relay::listen::serve(
            listener,
            server.router(),
            None,
            weft_relay::listen::ListenLimits::default(),
            stop_server.clone(),
        ));
        let map = RelayMap {
            regions: [(
                1,
                RelayRegion {
                    id: 1,
                    code: "lo".into(),
                    name: "Loopback".into(),
                    nodes: vec![RelayNode {
                        name: "1a".into(),
                        host: "127.0.0.1".into(),
                        relay_port: addr.port(),
                        stun_port: 0,
                        ipv4: None,
                        ipv6: None,
                        insecure_for_tests: true,
                    }],
                },
            )]
            .into(),
        };

        let now = t0();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut sides = Vec::new();
        for n in [1, 2] {
            let (t, key, _) = side(n, now);
            let t = Arc::new(t);
            let (relays, inputs) = Relays::new(
                tokio::runtime::Handle::current(),
                RelayOptions { plain_http: true },
            );
            assert!(t.set_relays(Arc::clone(&relays)));
            relays.set_node_key(Some(key.clone()), now);
            tokio::spawn(relay::run(
                Arc::clone(&t),
                Arc::clone(&relays),
                inputs,
                stop_rx.clone(),
            ));
            t.set_relay_map(&map, now);
            sides.push((t, key, relays));
        }
        let (a, ak, ar) = &sides[0];
        let (b, bk, br) = &sides[1];
        let region = RegionId(1);
        assert_eq!(ar.home(), Some(region), "the only region is home");
        tokio::time::timeout(Duration::from_secs(10), async {
            while ar.connected() != [region] || br.connected() != [region] {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("both connect to their home relay");

        a.disco_upsert(bk.public(), b.disco_key(), vec![], Some(region), now);
        b.disco_upsert(ak.public(), a.disco_key(), vec![], Some(region), now);
        let rx = a.ping(&bk.public(), Duration::from_secs(5), t0()).unwrap();
        let mut udp = Vec::new();
        a.handle_timeout(t0(), &mut |to, _| udp.push(to));
        let outcome = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("a pong within the ping's timeout")
            .unwrap();
        assert!(
            matches!(outcome, PingOutcome::Pong { path: Path::Relay(r), .. } if r == region),
            "{outcome:?}"
        );
        assert!(udp.is_empty(), "no UDP candidates, no UDP: {udp:?}");

        // Not disco: dropped and counted by the receiver.
        let (raw, _) = weft_relay::RelayClient::start(weft_relay::ClientConfig::new(
            NodePrivate::from_bytes([9; 32]),
            weft_relay::RelayNode {
                host_name: "127.0.0.1".into(),
                port: addr.port(),
                tls: false,
                addrs: vec![addr],
            },
        ))
        .unwrap();
        raw.send(&bk.public(), b"not disco").unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while b.relay_dropped() == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the garbage arrives and is counted");
        assert_eq!(b.relay_dropped(), 1);
        let _ = stop_tx.send(true);
        stop_server.cancel();
    }

    /// netcheck runs on the tunnel's socket: disco's STUN request leaves
    /// through the socket's `send`, the server's answer comes in through
    /// `decapsulate` (not to WireGuard), and the reflexive address joins our
    /// endpoints on the channel control is fed from. An answer from another
    /// address is ignored; a broken one is counted.
    #[test]
    fn stun_on_the_wireguard_socket_finds_our_public_address() {
        use weft_types::EndpointKind;
        use weft_types::netmap::{RelayNode, RelayRegion};

        let now = t0();
        let (a, _, aa) = side(1, now);
        let local = Endpoint {
            addr: aa,
            kind: EndpointKind::Local,
        };
        let mut eps = a.endpoints();
        a.set_local_endpoints(aa.port(), vec![local], now);
        assert_eq!(*eps.borrow_and_update(), [local]);

        let server: SocketAddr = "198.18.0.200:3478".parse().unwrap();
        let map = RelayMap {
            regions: [(
                1,
                RelayRegion {
                    id: 1,
                    code: "x".into(),
                    name: "X".into(),
                    nodes: vec![RelayNode {
                        name: "1a".into(),
                        host: "198.18.0.200".into(),
                        relay_port: 443,
                        stun_port: server.port(),
                        ipv4: None,
                        ipv6: None,
                        insecure_for_tests: true,
                    }],
                },
            )]
            .into(),
        };
        a.set_relay_map(&map, now);
        let mut sent = Vec::new();
        a.handle_timeout(now, &mut |to, d| sent.push((to, d.to_vec())));
        let (to, request) = sent
            .iter()
            .find(|(_, d)| weft_disco::stun::is_stun(d))
            .expect("a STUN request leaves through the socket");
        assert_eq!(*to, server);
        assert!(
            weft_disco::stun::parse(request)
                .unwrap()
                .is_binding_request()
        );

        let public: SocketAddr = "198.18.9.9:60000".parse().unwrap();
        let mut answer = [0u8; 128];
        let n = weft_disco::stun::answer_binding_request(request, public, &mut answer).unwrap();
        let mut out = vec![0u8; 2048];
        let mut nothing = |_: SocketAddr, _: &[u8]| panic!("a STUN answer is not answered");
        let elsewhere: SocketAddr = "198.18.0.201:3478".parse().unwrap();
        let r = a.decapsulate(elsewhere, &answer[..n], &mut out, now, &mut nothing);
        assert!(matches!(r, Decapsulated::Done));
        let r = a.decapsulate(server, &answer[..n - 4], &mut out, now, &mut nothing);
        assert!(matches!(r, Decapsulated::Done));
        assert!(!eps.has_changed().unwrap(), "neither counts as an answer");
        let r = a.decapsulate(server, &answer[..n], &mut out, now, &mut nothing);
        assert!(matches!(r, Decapsulated::Done));
        // The run ends when every server answered or at its deadline.
        a.handle_timeout(now + Duration::from_secs(4), &mut |_, _| {});
        let report = a
            .netcheck_reports()
            .borrow()
            .clone()
            .expect("the run ended");
        assert!(report.udp);
        assert_eq!(report.global_v4, Some(public));
        assert_eq!(
            report.mapping_varies_by_dest_ip, None,
            "one server cannot tell"
        );
        assert!(a.netcheck_now(now + Duration::from_secs(4)));
        let mut again = Vec::new();
        a.handle_timeout(now + Duration::from_secs(4), &mut |to, d| {
            again.push((to, d.to_vec()))
        });
        assert!(
            again
                .iter()
                .any(|(to, d)| *to == server && weft_disco::stun::is_stun(d)),
            "netcheck_now asks the server again"
        );
        let got = eps.borrow_and_update().clone();
        assert!(
            got.contains(&Endpoint {
                addr: public,
                kind: EndpointKind::Stun
            }) && got.contains(&local),
            "{got:?}"
        );
        let d = a.udp_drops();
        assert_eq!(d.disco["stun_malformed"], 1);
        assert_eq!(d.disco["stun_unexpected"], 1);
        assert_eq!(
            d.wireguard.values().sum::<u64>(),
            0,
            "nothing reached WireGuard"
        );
    }

    fn ipv4_udp(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 32, 0, 0, 0, 0, 64, 17, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&[0x30, 0x39, 0x30, 0x39, 0, 12, 0, 0, 1, 2, 3, 4]);
        p
    }
}
