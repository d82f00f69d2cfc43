//! Relay connections: one [`weft_relay::RelayClient`] per relay region we
//! talk through, kept for our home region (where peers reach us) and
//! opened on demand for a peer's home region.
//!
//! [`Relays`] is the synchronous side the tunnel uses (from the engine's
//! threads): [`Relays::send`] queues a datagram on a region's client
//! (never blocks; connects first if needed) and [`Relays::set_home`]
//! follows disco's home relay. Everything the clients report (packets,
//! connection changes) and the latency samples of a periodic DERP ping
//! arrive as [`Input`]s on one bounded channel that [`run`] drains into the
//! tunnel ([`TailnetTunnel::handle_relay_input`]); the channel is bounded
//! so a tunnel that falls behind slows the relay readers (and TCP the
//! relay) instead of queueing without limit.
//!
//! A region's relay is its first node (Tailscale's clients do the same;
//! failing over to the next node is left for later). Non-home clients
//! unused for [`IDLE_CLOSE`] are closed.
//!
//! TLS: a relay node is reached over TLS unless its relay port is 80 or
//! the daemon was started with plain HTTP for tests ([`RelayOptions`]).
//! TODO(noderelay): take the scheme from the relay map once
//! `weft_types::RelayNode` carries it (ctlrelay adds the node fields).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use weft_disco::RegionId;
use weft_relay::{ClientConfig, Event, RelayClient, RelayNode};
use weft_types::netmap::RelayMap;
use weft_types::{NodePrivate, NodePublic};

use super::tunnel::TailnetTunnel;

/// A non-home relay client unused this long is closed.
pub const IDLE_CLOSE: Duration = Duration::from_secs(60);
/// How often every connected relay is pinged (latency for the home relay
/// choice).
pub const PING_INTERVAL: Duration = Duration::from_secs(5);
/// How long a relay ping waits for its pong.
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a relay host name's lookup may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Inputs waiting for the tunnel before the relay readers wait.
pub const INPUT_QUEUE: usize = 4096;

/// What reaches the tunnel from the relays.
#[derive(Debug)]
pub enum Input {
    /// A client's event.
    Relay(RegionId, Event),
    /// A DERP ping's round trip over the region's connection.
    Latency(RegionId, Duration),
    /// A relay host name's addresses (for its STUN server), or why the
    /// lookup failed.
    Resolved {
        host: String,
        addrs: Result<Vec<std::net::IpAddr>, String>,
    },
}

/// How relays are reached.
#[derive(Debug, Clone, Default)]
pub struct RelayOptions {
    /// Plain HTTP to every relay (tests, where the relay has no
    /// certificate).
    pub plain_http: bool,
}

struct Client {
    client: Arc<RelayClient>,
    last_used: Instant,
}

#[derive(Default)]
struct State {
    key: Option<NodePrivate>,
    /// The profile's private CA for its control server (`--login-server-ca`),
    /// trusted for the relays too (control's embedded relay shares its
    /// certificate).
    ca_file: Option<std::path::PathBuf>,
    nodes: BTreeMap<RegionId, RelayNode>,
    clients: BTreeMap<RegionId, Client>,
    home: Option<RegionId>,
}

/// The relay clients of one daemon.
pub struct Relays {
    rt: tokio::runtime::Handle,
    options: RelayOptions,
    input: mpsc::Sender<Input>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Relays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state();
        f.debug_struct("Relays")
            .field("regions", &s.nodes.len())
            .field("connected", &s.clients.keys().collect::<Vec<_>>())
            .field("home", &s.home)
            .finish_non_exhaustive()
    }
}

impl Relays {
    /// Creates the relay side on runtime `rt`; returns it and the receiver
    /// of its inputs (for [`run`]).
    pub fn new(
        rt: tokio::runtime::Handle,
        options: RelayOptions,
    ) -> (Arc<Self>, mpsc::Receiver<Input>) {
        let (input, rx) = mpsc::channel(INPUT_QUEUE);
        let relays = Arc::new(Self {
            rt,
            options,
            input,
            state: Mutex::new(State::default()),
        });
        (relays, rx)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the node key the clients log in with. A new key (or none)
    /// closes every client; the home region reconnects with the new one.
    pub fn set_node_key(&self, key: Option<NodePrivate>, now: Instant) {
        let mut s = self.state();
        if s.key.as_ref().map(NodePrivate::public) == key.as_ref().map(NodePrivate::public) {
            return;
        }
        s.key = key;
        s.clients.clear();
        if let Some(home) = s.home {
            self.client(&mut s, home, now);
        }
    }

    /// Sets the CA file relay TLS connections trust besides the system's
    /// roots (the profile's `--login-server-ca`); a change reconnects.
    pub fn set_ca_file(&self, ca_file: Option<std::path::PathBuf>, now: Instant) {
        let mut s = self.state();
        if s.ca_file == ca_file {
            return;
        }
        s.ca_file = ca_file;
        s.clients.clear();
        if let Some(home) = s.home {
            self.client(&mut s, home, now);
        }
    }

    /// Takes the relay map from the netmap. Clients of regions that left
    /// or whose relay changed are closed.
    pub fn set_relay_map(&self, map: &RelayMap, now: Instant) {
        let nodes: BTreeMap<RegionId, RelayNode> = map
            .regions
            .values()
            .filter_map(|r| Some((RegionId(r.id), self.relay_node(r.nodes.first()?))))
            .collect();
        let mut s = self.state();
        if s.nodes == nodes {
            return;
        }
        let old = std::mem::replace(&mut s.nodes, nodes);
        let State { nodes, clients, .. } = &mut *s;
        clients.retain(|id, _| nodes.get(id).is_some_and(|n| Some(n) == old.get(id)));
        if let Some(home) = s.home {
            self.client(&mut s, home, now);
        }
    }

    fn relay_node(&self, n: &weft_types::netmap::RelayNode) -> RelayNode {
        // The map's own addresses first; else the relay client resolves the
        // host name when it connects.
        let ips = n.known_addrs();
        RelayNode {
            host_name: n.host.clone(),
            port: n.relay_port,
            // Plain HTTP only where the map says so (a relay behind a
            // plain-HTTP control server; Tailscale's `InsecureForTests`).
            tls: !(self.options.plain_http || n.insecure_for_tests),
            addrs: ips
                .into_iter()
                .map(|ip| (ip, n.relay_port).into())
                .collect(),
        }
    }

    /// Looks `host` up (off the caller's thread, with the system resolver)
    /// and reports its addresses as [`Input::Resolved`].
    pub fn resolve(&self, host: String) {
        let input = self.input.clone();
        self.rt.spawn(async move {
            let lookup = tokio::net::lookup_host((host.as_str(), 0));
            let addrs = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                Ok(Ok(found)) => Ok(found.map(|a| a.ip()).collect()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {RESOLVE_TIMEOUT:?}")),
            };
            let _ = input.send(Input::Resolved { host, addrs }).await;
        });
    }

    /// Follows disco's home relay: connects to it and marks it preferred
    /// (DERP `NotePreferred`); the previous home is no longer preferred
    /// and closes once idle.
    pub fn set_home(&self, region: Option<RegionId>, now: Instant) {
        let mut s = self.state();
        if s.home == region {
            return;
        }
        if let Some(old) = s.home.and_then(|r| s.clients.get(&r)) {
            old.client.set_preferred(false);
        }
        s.home = region;
        if let Some(home) = region
            && let Some(c) = self.client(&mut s, home, now)
        {
            c.set_preferred(true);
        }
    }

    /// Returns our home region.
    #[cfg(test)]
    pub fn home(&self) -> Option<RegionId> {
        self.state().home
    }

    /// Returns the regions whose client is logged in now.
    #[cfg(test)]
    pub fn connected(&self) -> Vec<RegionId> {
        self.state()
            .clients
            .iter()
            .filter(|(_, c)| c.client.is_connected())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Sends `payload` to `node` through `region`'s relay, connecting to it
    /// first if needed. Never blocks: a full send buffer drops the datagram
    /// (counted by the client). `false` if it was not queued.
    pub fn send(&self, region: RegionId, node: &NodePublic, payload: &[u8], now: Instant) -> bool {
        let client = {
            let mut s = self.state();
            self.client(&mut s, region, now)
        };
        let Some(client) = client else {
            tracing::trace!(%region, "No relay for the region; datagram dropped");
            return false;
        };
        match client.send(node, payload) {
            Ok(()) => true,
            Err(e) => {
                tracing::trace!(%region, error = %e, "Relay send failed; datagram dropped");
                false
            }
        }
    }

    /// Returns `region`'s client, started if it was not (`None` without a
    /// node key or when the region is not in the map).
    fn client(&self, s: &mut State, region: RegionId, now: Instant) -> Option<Arc<RelayClient>> {
        if let Some(c) = s.clients.get_mut(&region) {
            c.last_used = now;
            return Some(Arc::clone(&c.client));
        }
        let key = s.key.clone()?;
        let node = s.nodes.get(&region)?.clone();
        let mut config = ClientConfig::new(key, node);
        config.ca_file.clone_from(&s.ca_file);
        config.options.preferred = s.home == Some(region);
        let started = {
            let _rt = self.rt.enter();
            RelayClient::start(config)
        };
        let (client, mut events) = match started {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(%region, error = %e, "Cannot start a relay client");
                return None;
            }
        };
        tracing::debug!(%region, "Relay client started");
        let input = self.input.clone();
        self.rt.spawn(async move {
            while let Some(ev) = events.recv().await {
                if input.send(Input::Relay(region, ev)).await.is_err() {
                    return;
                }
            }
        });
        let client = Arc::new(client);
        s.clients.insert(
            region,
            Client {
                client: Arc::clone(&client),
                last_used: now,
            },
        );
        Some(client)
    }

    /// Closes non-home clients idle for [`IDLE_CLOSE`]; returns the
    /// connected clients (for latency pings).
    fn sweep(&self, now: Instant) -> Vec<(RegionId, Arc<RelayClient>)> {
        let mut s = self.state();
        let home = s.home;
        s.clients.retain(|id, c| {
            let keep = Some(*id) == home || now.saturating_duration_since(c.last_used) < IDLE_CLOSE;
            if !keep {
                tracing::debug!(region = %id, "Idle relay client closed");
            }
            keep
        });
        s.clients
            .iter()
            .filter(|(_, c)| c.client.is_connected())
            .map(|(id, c)| (*id, Arc::clone(&c.client)))
            .collect()
    }
}

#[allow(clippy::disallowed_methods)] // the daemon is where time enters
fn now() -> Instant {
    Instant::now()
}

/// Feeds the relays' inputs to the tunnel, pings every connected relay
/// each [`PING_INTERVAL`] and closes idle clients, until `stop`.
pub async fn run(
    tunnel: Arc<TailnetTunnel>,
    relays: Arc<Relays>,
    mut inputs: mpsc::Receiver<Input>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(PING_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            input = inputs.recv() => {
                let Some(input) = input else { return };
                tunnel.handle_relay_input(input, now());
            }
            _ = tick.tick() => {
                tunnel.resolve_relay_hosts(now());
                for (region, client) in relays.sweep(now()) {
                    let input = relays.input.clone();
                    tokio::spawn(async move {
                        if let Ok(rtt) = client.ping(PING_TIMEOUT).await {
                            let _ = input.send(Input::Latency(region, rtt)).await;
                        }
                    });
                }
            }
        }
    }
}
