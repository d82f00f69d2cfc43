//! The data plane as the coordinator sees it: a [`DataPlane`] it programs
//! from netmaps and asks about peers. [`EngineDataPlane`] is the real one
//! (TUN + engine + WireGuard + disco + netlink); tests use a recording fake.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use weft_disco::PingOutcome;
use weft_net::Engine;
use weft_types::{DiscoPublic, NetMap, NodePrivate, NodePublic};
use weft_wg::DeviceUpdate;

use super::config::{Configurator, Plan};
use super::filter::NodeFilter;
use super::netlink::AddrChange;
use super::tunnel::{TailnetTunnel, UdpDrops};

/// What the data plane knows about one peer right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerLive {
    /// The trusted direct path (disco), else WireGuard's endpoint.
    pub cur_addr: Option<SocketAddr>,
    /// The relay region disco sends this peer's traffic through, when it
    /// has no direct path.
    pub relay: Option<u16>,
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The coordinator's handle on the data plane.
pub trait DataPlane: Send + 'static {
    /// Sets (or, with `None`, removes) the WireGuard private key.
    fn set_node_key(&mut self, key: Option<&NodePrivate>);
    /// Sets the CA file relay connections trust besides the system's roots
    /// (the profile's `--login-server-ca`).
    fn set_relay_ca_file(&mut self, _ca_file: Option<&str>) {}
    /// Programs the data plane for `nm`, touching only what changed.
    fn apply_netmap(&mut self, nm: &NetMap);
    /// Removes every peer and address.
    fn clear(&mut self);
    /// Returns live per-peer state, by node key.
    fn peers(&self) -> BTreeMap<NodePublic, PeerLive>;
    /// Asks for one disco ping; `None` if disco does not know the peer.
    fn ping(&self, peer: &NodePublic, timeout: Duration) -> Option<oneshot::Receiver<PingOutcome>>;
    /// Starts a netcheck run; the receiver's next change is its report.
    /// `None`: this data plane has no disco (tests).
    fn netcheck(&self) -> Option<super::backend::NetcheckRx> {
        None
    }
    /// Returns this run's disco key.
    fn disco_key(&self) -> DiscoPublic;
    /// Returns how many inbound packets the filter dropped.
    fn filtered(&self) -> u64;
    /// Raises or lowers shields. The coordinator calls it after every step
    /// with the current prefs, so it must be cheap when nothing changes.
    fn set_shields_up(&mut self, _up: bool) {}
    /// Returns the inbound filter's counters, if this data plane has one.
    fn filter_stats(&self) -> Option<weft_filter::FilterStats> {
        None
    }
    /// Returns the datagrams the UDP socket dropped, by reason.
    fn udp_drops(&self) -> UdpDrops {
        UdpDrops::default()
    }
    /// Returns the data plane's counters for `GET metrics` (all zero for a
    /// data plane that counts nothing).
    fn metrics(&self) -> super::metrics::Snapshot {
        super::metrics::Snapshot::default()
    }
    /// Returns why the data plane stopped, if it did.
    fn failure(&self) -> Option<String>;
    /// Returns the MagicDNS resolver, if this data plane runs one.
    fn dns(&self) -> Option<super::dns::DnsHandle> {
        None
    }
}

pub use crate::clock::{now, unix_now};

/// The real data plane.
pub struct EngineDataPlane {
    tunnel: Arc<TailnetTunnel>,
    filter: Arc<NodeFilter>,
    engine: Engine<TailnetTunnel>,
    config: Configurator,
    os: mpsc::UnboundedSender<AddrChange>,
    /// The MagicDNS resolver; `None` until [`EngineDataPlane::with_dns`].
    dns: Option<super::dns::DnsHandle>,
}

impl EngineDataPlane {
    /// Joins a started engine with the netlink worker's queue, and puts the
    /// inbound filter into the tunnel (nothing comes in until a netmap).
    pub fn new(
        tunnel: Arc<TailnetTunnel>,
        engine: Engine<TailnetTunnel>,
        os: mpsc::UnboundedSender<AddrChange>,
    ) -> Self {
        let filter = Arc::new(NodeFilter::new(weft_types::entropy::seed()));
        if !tunnel.set_hooks(Arc::clone(&filter) as Arc<dyn super::tunnel::PacketHooks>) {
            tracing::warn!(
                "The tunnel already had packet hooks; the filter is not in the data path"
            );
        }
        Self {
            tunnel,
            filter,
            engine,
            config: Configurator::new(),
            os,
            dns: None,
        }
    }

    /// Feeds netmaps to the MagicDNS resolver (whose hook the caller put
    /// into the tunnel).
    pub fn with_dns(mut self, dns: super::dns::DnsHandle) -> Self {
        self.dns = Some(dns);
        self
    }

    fn apply(&mut self, plan: Plan) {
        if plan.is_empty() {
            return;
        }
        let now = now();
        tracing::debug!(
            wg = plan.wg.len(),
            disco_upsert = plan.disco_upsert.len(),
            disco_remove = plan.disco_remove.len(),
            add = plan.add_addresses.len(),
            remove = plan.remove_addresses.len(),
            "Programming the data plane"
        );
        for key in &plan.disco_remove {
            self.tunnel.disco_remove(key);
        }
        if !plan.wg.is_empty() {
            self.tunnel.device().apply(
                DeviceUpdate {
                    peers: plan.wg,
                    ..DeviceUpdate::default()
                },
                now,
            );
        }
        for p in plan.disco_upsert {
            let home = p.home_relay.map(weft_disco::RegionId);
            self.tunnel
                .disco_upsert(p.node_key, p.disco_key, p.endpoints, home, now);
        }
        if !plan.add_addresses.is_empty() || !plan.remove_addresses.is_empty() {
            let _ = self.os.send(AddrChange {
                add: plan.add_addresses,
                remove: plan.remove_addresses,
            });
        }
    }
}

impl DataPlane for EngineDataPlane {
    fn set_relay_ca_file(&mut self, ca_file: Option<&str>) {
        if let Some(relays) = self.tunnel.relays() {
            relays.set_ca_file(ca_file.map(std::path::PathBuf::from), now());
        }
    }

    fn set_node_key(&mut self, key: Option<&NodePrivate>) {
        if let Some(k) = key {
            self.tunnel.set_node_key(k.public());
        }
        if let Some(relays) = self.tunnel.relays() {
            relays.set_node_key(key.cloned(), now());
        }
        self.tunnel.device().apply(
            DeviceUpdate {
                private_key: Some(key.cloned()),
                ..DeviceUpdate::default()
            },
            now(),
        );
    }

    fn apply_netmap(&mut self, nm: &NetMap) {
        self.filter.apply_netmap(nm);
        if let Some(dns) = &self.dns {
            dns.set_netmap(nm);
        }
        let plan = self.config.plan(nm, unix_now());
        self.apply(plan);
        self.tunnel.set_relay_map(&nm.relay_map, now());
    }

    fn clear(&mut self) {
        self.filter.clear();
        if let Some(dns) = &self.dns {
            dns.clear();
        }
        let plan = self.config.clear();
        self.apply(plan);
        self.tunnel
            .set_relay_map(&weft_types::netmap::RelayMap::default(), now());
    }

    fn peers(&self) -> BTreeMap<NodePublic, PeerLive> {
        let now = now();
        self.tunnel
            .device()
            .peers(now)
            .into_iter()
            .map(|p| {
                let direct = self.tunnel.best_addr(&p.public_key, now);
                let relay = match self.tunnel.path(&p.public_key) {
                    Some(weft_disco::Path::Relay(r)) if direct.is_none() => Some(r.0),
                    _ => None,
                };
                let cur = direct.or(if relay.is_some() { None } else { p.endpoint });
                let live = PeerLive {
                    cur_addr: cur,
                    relay,
                    last_handshake: p.last_handshake,
                    rx_bytes: p.rx_bytes,
                    tx_bytes: p.tx_bytes,
                };
                (p.public_key, live)
            })
            .collect()
    }

    fn ping(&self, peer: &NodePublic, timeout: Duration) -> Option<oneshot::Receiver<PingOutcome>> {
        self.tunnel.ping(peer, timeout, now())
    }

    fn netcheck(&self) -> Option<super::backend::NetcheckRx> {
        let mut rx = self.tunnel.netcheck_reports();
        rx.borrow_and_update();
        self.tunnel.netcheck_now(now());
        Some(rx)
    }

    fn disco_key(&self) -> DiscoPublic {
        self.tunnel.disco_key()
    }

    fn filtered(&self) -> u64 {
        self.tunnel.filtered()
    }

    fn set_shields_up(&mut self, up: bool) {
        self.filter.set_shields_up(up);
    }

    fn filter_stats(&self) -> Option<weft_filter::FilterStats> {
        Some(self.filter.stats())
    }

    fn udp_drops(&self) -> UdpDrops {
        self.tunnel.udp_drops()
    }

    fn metrics(&self) -> super::metrics::Snapshot {
        super::metrics::Snapshot {
            filter: self.filter.stats(),
            tunnel: self.tunnel.counters(),
            engine: self.engine.stats(),
            udp_drops: self.tunnel.udp_drops(),
            dns: self.dns.as_ref().map(|d| d.metrics()).unwrap_or_default(),
        }
    }

    fn dns(&self) -> Option<super::dns::DnsHandle> {
        self.dns.clone()
    }

    fn failure(&self) -> Option<String> {
        self.engine.failure()
    }
}
