//! Requests and responses of the LocalAPI. JSON field names are stable:
//! fields may be added, never renamed or removed.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use weft_types::ids::{NodeId, UserId};
use weft_types::key::NodePublic;

/// Where the daemon's backend is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendState {
    /// Starting up; nothing known yet.
    NoState,
    /// No usable node key: the user must log in (`weft up` / `weft login`).
    NeedsLogin,
    /// Logged in, but an admin must approve this machine.
    NeedsMachineAuth,
    /// Logged in, but the user asked to be down (`weft down`).
    Stopped,
    /// Connecting to control / waiting for the first netmap.
    Starting,
    /// Connected; the data plane is programmed from a netmap.
    Running,
}

impl BackendState {
    /// Returns the line `weft status` prints when the daemon is not running.
    pub fn not_running_message(self) -> Option<&'static str> {
        match self {
            BackendState::Stopped => Some("Weft is stopped."),
            BackendState::NeedsLogin => Some("Logged out."),
            BackendState::NeedsMachineAuth => Some("Machine is not yet approved by tailnet admin."),
            BackendState::NoState => Some("Weft is starting."),
            BackendState::Starting | BackendState::Running => None,
        }
    }
}

/// A profile's preferences. Every field is sticky: it persists in the state
/// file and survives restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prefs {
    /// The control server's URL (`--login-server`).
    pub control_url: String,
    /// A PEM CA file trusted for an `https://` control server besides the
    /// system's roots (`--login-server-ca`, an absolute path weftd reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_ca_file: Option<String>,
    /// Whether the user wants the node connected (`up` sets, `down` clears).
    pub want_running: bool,
    /// Whether the profile was explicitly logged out.
    pub logged_out: bool,
    /// Hostname to report instead of the OS hostname (`--hostname`).
    pub hostname: Option<String>,
    /// Run the built-in SSH server on the tailnet addresses (`--ssh`).
    pub run_ssh: bool,
    /// Serve X11 forwarding (`ssh -X`/`-Y`) on the SSH server (`--ssh-x11`);
    /// off by default, as OpenSSH's `X11Forwarding`.
    #[serde(default)]
    pub ssh_x11: bool,
    /// Refuse all new inbound connections (`--shields-up`).
    pub shields_up: bool,
    /// Use the tailnet's DNS settings (`--accept-dns`).
    pub accept_dns: bool,
    /// Tags this node asks to be given (`--advertise-tags`), e.g. `tag:server`.
    pub advertise_tags: Vec<String>,
    /// The profile's nickname (`weft set --nickname`), shown by `switch --list`.
    pub nickname: Option<String>,
}

/// The URL used when `--login-server` is never given.
pub const DEFAULT_CONTROL_URL: &str = "http://127.0.0.1:8080";

impl Default for Prefs {
    fn default() -> Self {
        Prefs {
            control_url: DEFAULT_CONTROL_URL.to_owned(),
            control_ca_file: None,
            want_running: false,
            logged_out: false,
            hostname: None,
            run_ssh: false,
            ssh_x11: false,
            shields_up: false,
            accept_dns: true,
            advertise_tags: Vec::new(),
            nickname: None,
        }
    }
}

/// A partial change to [`Prefs`]: `None` leaves a field unchanged (Tailscale's
/// `MaskedPrefs`, typed). `hostname`/`nickname` use `Some(None)` to clear.
///
/// On the wire a patch carries only the fields it changes: an absent field
/// is unchanged, and for `hostname`/`nickname` an explicit `null` clears.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PrefsPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub want_running: Option<bool>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "double_option"
    )]
    pub hostname: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_ssh: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_x11: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shields_up: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accept_dns: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise_tags: Option<Vec<String>>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "double_option"
    )]
    pub nickname: Option<Option<String>>,
}

/// Reads a present field (value or `null`) as `Some(..)`, so `null` means
/// "clear" while an absent field stays `None` ("unchanged") via `default`.
fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

impl PrefsPatch {
    /// Returns `prefs` with this patch applied.
    pub fn apply_to(&self, prefs: &Prefs) -> Prefs {
        let mut p = prefs.clone();
        if let Some(v) = &self.control_url {
            p.control_url.clone_from(v);
        }
        if let Some(v) = self.want_running {
            p.want_running = v;
        }
        if let Some(v) = &self.hostname {
            p.hostname.clone_from(v);
        }
        if let Some(v) = self.run_ssh {
            p.run_ssh = v;
        }
        if let Some(v) = self.ssh_x11 {
            p.ssh_x11 = v;
        }
        if let Some(v) = self.shields_up {
            p.shields_up = v;
        }
        if let Some(v) = self.accept_dns {
            p.accept_dns = v;
        }
        if let Some(v) = &self.advertise_tags {
            p.advertise_tags.clone_from(v);
        }
        if let Some(v) = &self.nickname {
            p.nickname.clone_from(v);
        }
        p
    }

    /// Returns whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == PrefsPatch::default()
    }
}

/// The body of `POST start`: what `weft up` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StartRequest {
    /// The complete desired prefs (`up` states everything); `None` keeps the
    /// current prefs and only sets `want_running`.
    pub prefs: Option<Prefs>,
    /// A pre-auth key to register with, if any (never stored).
    pub auth_key: Option<String>,
    /// Re-authenticate even if the node key is still valid (new node key).
    pub force_reauth: bool,
}

/// `GET status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The daemon's version.
    pub version: String,
    pub backend_state: BackendState,
    /// The pending interactive-login URL, while one is pending.
    pub auth_url: Option<String>,
    /// The TUN device name.
    pub tun: String,
    /// The current tailnet, once logged in.
    pub tailnet: Option<TailnetInfo>,
    /// This node: from the netmap once one arrived; before that (right
    /// after `switch`, `down` or a restart) from the profile's stored
    /// identity, with no addresses and `online: false`, while
    /// `backend_state` says what the node waits for. `None` only when the
    /// current profile never registered (a fresh install, after `logout`).
    #[serde(rename = "self")]
    pub self_node: Option<PeerStatus>,
    /// The logged-in user (none for tagged nodes).
    pub user: Option<UserInfo>,
    /// Peers, sorted by name.
    pub peers: Vec<PeerStatus>,
    /// Problems a human should know about ("control server unreachable since …").
    pub health: Vec<String>,
    /// The inbound packet filter.
    pub filter: FilterStatus,
    /// The current login profile.
    pub profile: Option<ProfileSummary>,
    /// Datagrams the node's UDP socket dropped.
    #[serde(default)]
    pub udp: UdpStatus,
}

/// Datagrams the node's UDP socket (WireGuard and disco) received and
/// dropped, by reason; every reason is listed, zeros included.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpStatus {
    /// Dropped in total.
    pub dropped: u64,
    /// WireGuard's drops, which include anything that is not disco
    /// (`malformed`, `unknown_peer`, `unauthenticated`, `replayed`,
    /// `spoofed_source`, `rate_limited`, …).
    pub wireguard_dropped: BTreeMap<String, u64>,
    /// Disco's drops (`malformed`, `unknown_sender`, `unauthenticated`,
    /// `wrong_node_key`).
    pub disco_dropped: BTreeMap<String, u64>,
}

/// The tailnet this node is in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TailnetInfo {
    /// The tailnet's DNS domain, e.g. `example.weft.internal`.
    pub domain: String,
    /// The control server's URL.
    pub control_url: String,
}

/// A user as the daemon knows it from the netmap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub id: UserId,
    pub login_name: String,
    pub display_name: String,
}

/// One node (self or a peer) in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub id: NodeId,
    pub stable_id: String,
    /// The short MagicDNS name (first label).
    pub name: String,
    /// The full MagicDNS name.
    pub dns_name: String,
    /// The hostname the node reported.
    pub hostname: String,
    pub os: String,
    /// The owner's login name; `None` for tagged nodes.
    pub user: Option<String>,
    pub tags: Vec<String>,
    /// Tailnet addresses (IPv4 first).
    pub addresses: Vec<IpAddr>,
    pub allowed_ips: Vec<IpNet>,
    pub public_key: NodePublic,
    /// Endpoints the node reported to control.
    pub endpoints: Vec<SocketAddr>,
    /// The UDP address traffic currently goes to, if a direct path is in use.
    pub cur_addr: Option<SocketAddr>,
    /// The relay in use when no direct path exists.
    pub relay: Option<String>,
    pub online: bool,
    /// Unix ms the node was last seen by control.
    pub last_seen_ms: Option<i64>,
    /// Unix ms of the last WireGuard handshake with this peer.
    pub last_handshake_ms: Option<i64>,
    /// Whether traffic flowed recently (a handshake within the last few minutes and bytes moving).
    pub active: bool,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub expired: bool,
    /// Unix ms the node key expires (none = never).
    pub key_expiry_ms: Option<i64>,
    /// The node's SSH host keys (authorized_keys lines).
    pub ssh_host_keys: Vec<String>,
}

/// The inbound packet filter's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterStatus {
    pub shields_up: bool,
    /// Number of filter rules in force.
    pub rules: usize,
    /// Inbound packets dropped, total.
    pub dropped: u64,
    /// Inbound packets dropped, by reason (`not_allowed`, `malformed`, …).
    pub dropped_by_reason: BTreeMap<String, u64>,
    /// Flows tracked now (connections this node opened or admitted).
    #[serde(default)]
    pub flows: u64,
    /// Flows peers opened that a policy change or shields-up cut since start.
    #[serde(default)]
    pub flows_revoked: u64,
}

/// A login profile, as `switch --list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileSummary {
    /// Four hex digits, stable for the profile's life.
    pub id: String,
    pub nickname: Option<String>,
    /// The tailnet domain, once logged in.
    pub tailnet: Option<String>,
    /// The login name, once logged in.
    pub account: Option<String>,
    pub control_url: String,
    /// Whether this is the current profile.
    pub selected: bool,
    /// Whether control accepted a registration of this profile (it has a
    /// node key and a node id there). A profile that never registered may
    /// change its login server freely.
    #[serde(default)]
    pub registered: bool,
}

impl ProfileSummary {
    /// Returns what `switch --list` shows as the account: the nickname if
    /// set, else the login name, else `-`.
    pub fn display_account(&self) -> &str {
        self.nickname
            .as_deref()
            .or(self.account.as_deref())
            .unwrap_or("-")
    }
}

/// `POST ping`: one disco ping over the data plane's UDP path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingRequest {
    /// A peer's tailnet address.
    pub ip: IpAddr,
    /// How long to wait for the pong, in milliseconds.
    pub timeout_ms: u64,
}

/// One pong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingResult {
    /// The peer's short name.
    pub node_name: String,
    /// The peer's tailnet address that was pinged.
    pub node_ip: IpAddr,
    /// How the pong arrived.
    pub via: PingPath,
    /// Round-trip time in milliseconds.
    pub latency_ms: f64,
}

/// The path a pong took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PingPath {
    /// Directly over UDP from this address.
    Direct(SocketAddr),
    /// Through the named relay.
    Relay(String),
}

/// `GET netcheck`: what one netcheck run found about this node's network
/// (`weft netcheck`; Tailscale's `tailscale netcheck`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetcheckReport {
    /// A STUN round trip over UDP completed.
    pub udp: bool,
    /// Our public IPv4 address and port as STUN saw them.
    pub global_v4: Option<SocketAddr>,
    /// Our public IPv6 address and port.
    pub global_v6: Option<SocketAddr>,
    /// STUN servers at different addresses saw us at different ports or
    /// addresses (a hard NAT: endpoint-dependent mapping). `None`: fewer
    /// than two servers answered over IPv4, so unknown.
    pub mapping_varies_by_dest_ip: Option<bool>,
    /// A NAT-PMP/PCP/UPnP port mapping is available. `None`: not probed
    /// (weftd does not map ports yet).
    pub port_mapping: Option<bool>,
    /// Every relay region of the relay map with its measured latency.
    pub regions: Vec<NetcheckRegion>,
    /// Our home relay region after this run.
    pub preferred_region: Option<u16>,
    /// When UDP is blocked: milliseconds until UDP is tried again.
    pub udp_retry_in_ms: Option<u64>,
}

/// One relay region in a [`NetcheckReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetcheckRegion {
    pub id: u16,
    pub code: String,
    pub name: String,
    /// Round trip in milliseconds (STUN, or over the relay connection when
    /// UDP gets no answer); `None`: not reached.
    pub latency_ms: Option<f64>,
}

/// `GET whois?addr=IP`: who owns a tailnet address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhoIs {
    pub node: PeerStatus,
    /// The owner; `None` for tagged nodes.
    pub user: Option<UserInfo>,
}

/// `GET debug/prefs`: the current profile's prefs and persisted identity,
/// private keys redacted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugPrefs {
    pub profile_id: String,
    pub prefs: Prefs,
    /// The node's public key, if it has one.
    pub node_key: Option<NodePublic>,
    /// Always `"<redacted>"` when a private node key exists.
    pub private_node_key: Option<String>,
    pub node_id: Option<NodeId>,
    pub user: Option<String>,
    /// The control server key pinned at first contact.
    pub control_key: Option<String>,
}

/// One event on the `watch` stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notify {
    /// Always first: the state at the moment the watch began.
    Snapshot {
        state: BackendState,
        auth_url: Option<String>,
        prefs: Prefs,
    },
    /// The backend moved to a new state.
    State { state: BackendState },
    /// The user should open this URL to log in.
    BrowseToUrl { url: String },
    /// An interactive or key login finished successfully.
    LoginFinished,
    /// Prefs changed.
    Prefs { prefs: Prefs },
    /// A new netmap was applied.
    NetMap { peers: usize },
    /// Something went wrong that the user should see (e.g. a refused auth key).
    Error { message: String },
}

/// `GET dns/query?name=NAME&type=TYPE`: what the daemon's MagicDNS
/// resolver answers for one question, and where the answer came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsQueryResult {
    /// The name asked (as given).
    pub name: String,
    /// The record type asked (`A`, `AAAA`, `PTR`, …).
    pub qtype: String,
    /// The response code (`NoError`, `NXDomain`, `ServFail`, …).
    pub rcode: String,
    /// The answer section.
    pub records: Vec<DnsAnswerRecord>,
    /// Where the answer came from.
    pub source: DnsAnswerSource,
}

/// One record of a [`DnsQueryResult`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsAnswerRecord {
    pub name: String,
    #[serde(rename = "type")]
    pub rtype: String,
    pub ttl: u32,
    /// The record data in presentation format (an address, a name…).
    pub data: String,
}

/// Where a MagicDNS answer came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DnsAnswerSource {
    /// A tailnet node's name or address (or NXDOMAIN under the tailnet domain).
    MagicDns,
    /// An admin-configured extra record.
    ExtraRecord,
    /// A split-DNS route without resolvers: answered by the resolver only.
    SplitLocal { domain: String },
    /// An upstream's reply.
    Forwarded {
        /// `IP:port` of the upstream that answered.
        upstream: String,
        /// `split`, `global` or `host`.
        route: String,
        /// The split-DNS domain, for `route = split`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        domain: Option<String>,
    },
    /// Built by the resolver itself (SERVFAIL: no upstream, timeouts…;
    /// FORMERR).
    Resolver,
}

/// The body of every non-2xx response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `GET dns/status`: MagicDNS as the node sees it and what the OS uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsStatus {
    /// How weftd configures the OS: `direct` (/etc/resolv.conf),
    /// `resolved` (systemd-resolved, per link) or `unsupported`.
    pub mode: String,
    /// Why the mode is `unsupported`.
    pub mode_reason: Option<String>,
    /// `--accept-dns`.
    pub accept_dns: bool,
    /// Weft's configuration is in the OS now.
    pub managing: bool,
    /// The tailnet answers node names (from the netmap; `false` without one).
    pub magic_dns: bool,
    /// The tailnet's DNS domain, once there is a netmap.
    pub domain: Option<String>,
    /// The resolvers Weft put in the OS (its own), while `managing`.
    pub resolvers: Vec<IpAddr>,
    /// The search domains Weft put in the OS, while `managing`.
    pub search_domains: Vec<String>,
    /// Domains routed to Weft's resolver (resolved mode), while `managing`.
    pub match_domains: Vec<String>,
    /// Every name goes to Weft's resolver (the tailnet pushes global
    /// nameservers).
    pub default_route: bool,
    /// The tailnet's global nameservers (empty: the host's own).
    pub global_nameservers: Vec<IpAddr>,
    /// Split DNS: domain → resolvers.
    pub split_routes: BTreeMap<String, Vec<IpAddr>>,
    /// What the OS uses now (resolv.conf, or resolved's upstream list),
    /// parsed; `None` if it cannot be read or parsed.
    pub os: Option<OsResolvers>,
    /// The host's own resolvers, where Weft's resolver forwards other names.
    pub host_nameservers: Vec<IpAddr>,
    /// Why the OS could not be configured.
    pub health: Option<String>,
}

/// The DNS configuration the OS uses now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsResolvers {
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}
