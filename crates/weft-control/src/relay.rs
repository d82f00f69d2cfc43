//! The embedded relay (DERP, `weft-relay`) and STUN server.
//!
//! weft-control serves the relay's routes (`/derp`, `/derp/probe`,
//! `/derp/latency-check`, `/generate_204`) on its own HTTP listener, and a
//! STUN server on UDP. Only nodes of the tailnet may use the relay:
//!
//! * [`LiveKeys`] is the relay's [`Admission`]: a node key is admitted when
//!   it is the current key of a node in the latest published snapshot that
//!   is authorized (not pending approval) and not expired at the moment of
//!   the login (the expiry is checked against the clock, not only when the
//!   coordinator's timer publishes it).
//! * [`follow`] wakes on every publication of the coordinator and, before
//!   anything else, removes the keys that stopped being admitted (node
//!   deleted, key rotated, logged out, expired, de-authorized) and revokes
//!   them on the relay: their connections are closed at once. A node
//!   deletion reaches the relay in one coordinator batch (the admin API
//!   ends the batch at once for deletions it makes).
//!
//! The same decision answers `POST /api/v1/relay/verify` for a standalone
//! `weft-relay --control …` ([`LiveKeys::allowed`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};

use tokio_util::sync::CancellationToken;
use weft_relay::admission::VerifyFuture;
use weft_relay::{Admission, RelayServer};
use weft_types::{NodePublic, UnixMillis};

use crate::clock::Clock;
use crate::state::{Published, Snapshot};

/// The node keys that may use the relay, with their expiry, kept in step
/// with the coordinator's published snapshot by [`follow`].
#[derive(Debug)]
pub(crate) struct LiveKeys {
    keys: RwLock<BTreeMap<NodePublic, Option<UnixMillis>>>,
    clock: Arc<dyn Clock>,
}

impl LiveKeys {
    /// Builds the set from a snapshot.
    pub fn new(snapshot: &Snapshot, clock: Arc<dyn Clock>) -> Self {
        Self {
            keys: RwLock::new(admitted(snapshot)),
            clock,
        }
    }

    /// Returns the subset of `keys` admitted now.
    pub fn allowed(&self, keys: &[NodePublic]) -> BTreeSet<NodePublic> {
        let now = self.clock.now();
        let set = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        keys.iter()
            .filter(|k| set.get(k).is_some_and(|exp| exp.is_none_or(|t| t > now)))
            .copied()
            .collect()
    }

    /// Replaces the set with `snapshot`'s; returns the keys admitted before
    /// and not any more (as of `now`).
    fn update(&self, snapshot: &Snapshot, now: UnixMillis) -> Vec<NodePublic> {
        let live = |exp: &Option<UnixMillis>| exp.is_none_or(|t| t > now);
        let new = admitted(snapshot);
        let mut set = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        let gone = set
            .iter()
            .filter(|(k, exp)| live(exp) && !new.get(*k).is_some_and(live))
            .map(|(k, _)| *k)
            .collect();
        *set = new;
        gone
    }
}

impl Admission for LiveKeys {
    fn verify<'a>(&'a self, keys: &'a [NodePublic]) -> VerifyFuture<'a> {
        Box::pin(std::future::ready(Ok(self.allowed(keys))))
    }
}

/// The keys of the nodes that may use the relay (expiry still to check).
fn admitted(snapshot: &Snapshot) -> BTreeMap<NodePublic, Option<UnixMillis>> {
    snapshot
        .nodes
        .values()
        .filter(|e| e.rec.authorized && !snapshot.unauthorized.contains(&e.rec.id))
        .map(|e| (e.rec.node_key, e.rec.key_expiry))
        .collect()
}

/// Keeps `live` in step with every published snapshot and revokes, on the
/// embedded relay (if served), the keys that lost admission. Runs until
/// `stop`.
pub(crate) async fn follow(
    relay: Option<RelayServer>,
    live: Arc<LiveKeys>,
    published: Arc<Published>,
    clock: Arc<dyn Clock>,
    stop: CancellationToken,
) {
    let mut rx = published.watch();
    loop {
        rx.borrow_and_update();
        let snapshot = published.load();
        let gone = live.update(&snapshot, clock.now());
        for key in gone.iter().filter(|_| relay.is_some()) {
            let closed = relay.as_ref().map_or(0, |r| r.revoke(key));
            if closed > 0 {
                tracing::debug!(%key, connections = closed, "relay access revoked");
            }
        }
        // Keys that expire without a publication are refused at login by
        // `LiveKeys::allowed`; the coordinator publishes each expiry, which
        // brings us here to close their connections.
        tokio::select! {
            () = stop.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
    }
}

/// Binds a STUN socket and serves it until `stop`; returns the bound
/// address. Counters go to the `metrics` recorder
/// (`weft_relay_stun_requests_total`, `weft_relay_stun_dropped_total`).
pub(crate) fn start_stun(
    addr: SocketAddr,
    stop: &CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) -> std::io::Result<SocketAddr> {
    let sock = weft_relay::stun::bind(addr)?;
    let bound = sock.local_addr()?;
    let stats = Arc::new(weft_relay::stun::StunStats::default());
    tasks.spawn(weft_relay::stun::serve(sock, stats, stop.clone()));
    Ok(bound)
}

/// The region id of the default relay map's one region.
pub const DEFAULT_REGION_ID: u16 = 900;

/// The default relay map: one region (id 900, code `weft`, named after the
/// control host) whose one relay is this server, at the host and port of
/// the control URL (plain HTTP if the URL is `http://`), with the first
/// STUN port (0 without STUN). `None` when the relay is off.
pub(crate) fn default_map(
    server_url: &str,
    relay: bool,
    stun: &[SocketAddr],
) -> Option<weft_types::netmap::RelayMap> {
    use weft_types::netmap::{RelayMap, RelayNode, RelayRegion};
    if !relay {
        return None;
    }
    let url: weft_client::ControlUrl = server_url.parse().ok()?;
    let host = url.host().trim_start_matches('[').trim_end_matches(']');
    let ip: Option<std::net::IpAddr> = host.parse().ok();
    let node = RelayNode {
        name: format!("{DEFAULT_REGION_ID}a"),
        host: host.to_owned(),
        relay_port: url.port(),
        stun_port: stun.first().map_or(0, SocketAddr::port),
        ipv4: ip.and_then(|ip| match ip {
            std::net::IpAddr::V4(a) => Some(a),
            std::net::IpAddr::V6(_) => None,
        }),
        ipv6: ip.and_then(|ip| match ip {
            std::net::IpAddr::V6(a) => Some(a),
            std::net::IpAddr::V4(_) => None,
        }),
        insecure_for_tests: !url.is_tls(),
    };
    let region = RelayRegion {
        id: DEFAULT_REGION_ID,
        code: "weft".into(),
        name: host.to_owned(),
        nodes: vec![node],
    };
    Some(RelayMap {
        regions: [(DEFAULT_REGION_ID, region)].into_iter().collect(),
    })
}

/// The administrator's relay map inside the state directory (replaces the
/// default map while it exists).
pub const RELAY_MAP_FILE: &str = "relay-map.json";

/// Checks a relay map given as a list of regions and returns it keyed by
/// id: region ids unique and non-zero, codes and names non-empty, at least
/// one relay per region, relay names unique in the map, hosts non-empty,
/// relay ports non-zero (a STUN port of 0 means no STUN).
pub(crate) fn validate_map(
    regions: Vec<weft_types::netmap::RelayRegion>,
) -> Result<weft_types::netmap::RelayMap, String> {
    let mut map = weft_types::netmap::RelayMap::default();
    let mut names = BTreeSet::new();
    for r in regions {
        let at = format!("region {} ({:?})", r.id, r.code);
        if r.id == 0 {
            return Err(format!("{at}: region ids start at 1"));
        }
        if r.code.trim().is_empty() || r.name.trim().is_empty() {
            return Err(format!("{at}: give the region a code and a name"));
        }
        if r.nodes.is_empty() {
            return Err(format!("{at}: a region needs at least one relay in nodes"));
        }
        for n in &r.nodes {
            if n.name.trim().is_empty() || n.host.trim().is_empty() {
                return Err(format!("{at}: every relay needs a name and a host"));
            }
            if n.relay_port == 0 {
                return Err(format!("{at}: relay {:?} has relay_port 0", n.name));
            }
            if !names.insert(n.name.clone()) {
                return Err(format!("{at}: relay name {:?} is used twice", n.name));
            }
        }
        if map.regions.contains_key(&r.id) {
            return Err(format!("{at}: region id {} is used twice", r.id));
        }
        map.regions.insert(r.id, r);
    }
    Ok(map)
}

/// Reads the administrator's relay map from `path`, if the file exists.
pub(crate) fn load_map(
    path: &std::path::Path,
) -> Result<Option<weft_types::netmap::RelayMap>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let cfg: crate::admin::types::RelayMapConfig = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a relay map: {e}", path.display()))?;
    validate_map(cfg.regions)
        .map(Some)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes the administrator's relay map to `path` (whole or not at all).
pub(crate) fn store_map(
    path: &std::path::Path,
    map: &weft_types::netmap::RelayMap,
) -> std::io::Result<()> {
    let cfg = crate::admin::types::RelayMapConfig {
        regions: map.regions.values().cloned().collect(),
    };
    let text = serde_json::to_vec_pretty(&cfg).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
