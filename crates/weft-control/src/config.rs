//! Server settings, with the defaults of `weft-control serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use weft_control_proto::ChannelConfig;
use weft_types::DnsName;

use crate::auth::{AdminApproval, Authenticator};
use crate::clock::{Clock, SystemClock};

/// The default state directory (database, server key, admin socket).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/weft-control";
/// The default listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// The default metrics address (loopback only, like Headscale's
/// `metrics_listen_addr`).
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9090";
/// The default tailnet DNS domain (`.internal` is reserved for private use).
pub const DEFAULT_DOMAIN: &str = "weft.internal";
/// The default node-key lifetime.
pub const DEFAULT_NODE_KEY_EXPIRY: Duration = weft_control_store::DEFAULT_NODE_KEY_EXPIRY;
/// How long an ephemeral node may stay offline before it is deleted.
pub const DEFAULT_EPHEMERAL_GRACE: Duration = Duration::from_secs(5 * 60);
/// How long changes are collected before they go out as one delta.
pub const DEFAULT_BATCH_DELAY: Duration = Duration::from_millis(150);
/// How long an interactive login URL stays valid.
pub const DEFAULT_AUTH_REQUEST_LIFETIME: Duration = Duration::from_secs(60 * 60);
/// How long an upgraded connection may stay without proving a registration
/// (unless a `register` is being answered, e.g. an interactive login).
pub const DEFAULT_REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections per source address (IPv4 address or IPv6 /64) that are not
/// registered yet, at most.
pub const DEFAULT_MAX_UNREGISTERED_PER_SOURCE: usize = 64;
/// Descriptors kept free below the open-file limit (database, admin socket,
/// logs) when the connection limit is derived from it.
pub const RESERVED_DESCRIPTORS: u64 = 128;
/// Interactive logins waiting for approval, at most, in all.
pub const DEFAULT_MAX_PENDING_LOGINS: usize = 1000;
/// Registrations worked on at once by default. A registration is one short
/// write transaction (a few ms on SQLite), so this is about a second of
/// work queued at most; more waits in the clients (issue 17).
pub const DEFAULT_MAX_REGISTRATIONS_IN_FLIGHT: usize = 256;
/// Interactive logins waiting for approval, at most, per source address.
pub const DEFAULT_MAX_PENDING_LOGINS_PER_SOURCE: usize = 10;
/// The server key file inside the state directory.
pub const SERVER_KEY_FILE: &str = "server.key";
/// The default STUN port (UDP).
pub const DEFAULT_STUN_PORT: u16 = weft_relay::stun::DEFAULT_PORT;
/// The relay's key file inside the state directory.
pub const RELAY_KEY_FILE: &str = "relay.key";
/// The admin socket inside the state directory.
pub const ADMIN_SOCKET_FILE: &str = "admin.sock";

/// The PEM files of the listener's TLS certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where to listen for HTTP (control protocol, login pages, REST API, relay).
    pub listen: SocketAddr,
    /// Serve TLS on the listener with this certificate chain and key (PEM
    /// files); `None`: plain HTTP (e.g. behind a TLS reverse proxy).
    pub tls: Option<TlsFiles>,
    /// Where to serve Prometheus metrics (`GET /metrics`), apart from the
    /// public listener; `None`: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// The URL nodes use and login links show. `None`: `http://<listen>`
    /// (`https://` with [`ServerConfig::tls`]; `127.0.0.1` for an
    /// unspecified address).
    pub server_url: Option<String>,
    /// The state directory: database (unless `db_url`), server key, admin socket.
    pub state_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; `None`: `<state_dir>/weft.db`.
    pub db_url: Option<String>,
    /// Serve the admin API on `<state_dir>/admin.sock`.
    pub admin_socket: bool,
    /// The tailnet's DNS domain.
    pub domain: DnsName,
    /// Node-key lifetime unless a key or approval says otherwise (`None`: never).
    pub node_key_expiry: Option<Duration>,
    /// Offline time after which ephemeral nodes are deleted.
    pub ephemeral_grace: Duration,
    /// How long changes are collected into one delta.
    pub batch_delay: Duration,
    /// How long an interactive login URL stays valid.
    pub auth_request_lifetime: Duration,
    /// Control channel limits and timers (handshake timeout, keep-alive,
    /// idle, the 64 KiB bound on a client message).
    pub channel: ChannelConfig,
    /// Time an upgraded connection has to prove a registration.
    pub register_timeout: Duration,
    /// Connections held at most (`None`: the open-file limit less
    /// [`RESERVED_DESCRIPTORS`]).
    pub max_connections: Option<usize>,
    /// Unregistered connections per source address, at most.
    pub max_unregistered_per_source: usize,
    /// Interactive logins waiting for approval, at most.
    pub max_pending_logins: usize,
    /// Interactive logins waiting for approval per source address, at most.
    pub max_pending_logins_per_source: usize,
    /// Registrations worked on at once, at most; more are shed with a retry
    /// delay.
    pub max_registrations_in_flight: usize,
    /// Time a client has to send its HTTP request headers.
    pub http_header_timeout: Duration,
    /// Time one write of map data may take before the stream is dropped.
    pub write_timeout: Duration,
    /// Pending map messages per stream before the stream is resynced with
    /// a fresh full map instead.
    pub stream_queue_limit: usize,
    /// How many full maps are built and written at the same time (bounds
    /// memory: each is O(peers) bytes, twice).
    pub full_map_concurrency: usize,
    /// New nodes wait for an administrator's authorization.
    pub require_device_approval: bool,
    /// Seed for address and name choices (`None`: random).
    pub store_seed: Option<u64>,
    /// Wall-clock source.
    pub clock: Arc<dyn Clock>,
    /// Completes interactive logins (`/a/<id>`).
    pub authenticator: Arc<dyn Authenticator>,
    /// Log in through this OIDC identity provider (docs/OIDC.md); when set,
    /// it is the authenticator (in place of [`ServerConfig::authenticator`]).
    pub oidc: Option<crate::oidc::OidcConfig>,
    /// Serve the embedded relay (DERP) at `/derp` on the HTTP listener.
    pub relay: bool,
    /// Serve STUN.
    pub stun: bool,
    /// Where STUN listens (UDP); empty: the listen address's IP, port
    /// [`DEFAULT_STUN_PORT`].
    pub stun_listen: Vec<SocketAddr>,
    /// The package directory served at `/packages/` for `/install.sh`
    /// (the `.deb` files and their `SHA256SUMS`); `None`: none.
    pub packages_dir: Option<PathBuf>,
}

impl ServerConfig {
    /// Returns the defaults of `weft-control serve` for a state directory.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            tls: None,
            server_url: None,
            state_dir: state_dir.into(),
            db_url: None,
            admin_socket: true,
            domain: default_domain(),
            node_key_expiry: Some(DEFAULT_NODE_KEY_EXPIRY),
            ephemeral_grace: DEFAULT_EPHEMERAL_GRACE,
            batch_delay: DEFAULT_BATCH_DELAY,
            auth_request_lifetime: DEFAULT_AUTH_REQUEST_LIFETIME,
            channel: ChannelConfig::for_server(),
            register_timeout: DEFAULT_REGISTER_TIMEOUT,
            max_connections: None,
            max_unregistered_per_source: DEFAULT_MAX_UNREGISTERED_PER_SOURCE,
            max_pending_logins: DEFAULT_MAX_PENDING_LOGINS,
            max_pending_logins_per_source: DEFAULT_MAX_PENDING_LOGINS_PER_SOURCE,
            max_registrations_in_flight: DEFAULT_MAX_REGISTRATIONS_IN_FLIGHT,
            http_header_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            stream_queue_limit: 256,
            full_map_concurrency: 4,
            require_device_approval: false,
            store_seed: None,
            clock: Arc::new(SystemClock),
            authenticator: Arc::new(AdminApproval),
            oidc: None,
            relay: true,
            stun: true,
            stun_listen: Vec::new(),
            packages_dir: None,
        }
    }

    /// Returns settings for tests: loopback on a free port, short batch
    /// delay and handshake timeout.
    pub fn for_tests(state_dir: impl Into<PathBuf>) -> Self {
        let mut c = Self::new(state_dir);
        c.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        c.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.batch_delay = Duration::from_millis(20);
        c.channel.handshake_timeout = Duration::from_millis(500);
        c.http_header_timeout = Duration::from_secs(2);
        c.store_seed = Some(1);
        c.stun_listen = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
        c
    }

    /// Returns the connection limit in force: [`ServerConfig::max_connections`],
    /// else the process's open-file limit less [`RESERVED_DESCRIPTORS`].
    pub fn connection_limit(&self) -> usize {
        if let Some(n) = self.max_connections {
            return n.max(1);
        }
        let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| soft);
        let n = soft.saturating_sub(RESERVED_DESCRIPTORS).clamp(64, 1 << 24);
        usize::try_from(n).unwrap_or(1 << 24)
    }

    /// Returns the STUN addresses in force (see [`ServerConfig::stun_listen`]).
    pub fn stun_addrs(&self) -> Vec<SocketAddr> {
        if !self.stun {
            return Vec::new();
        }
        if self.stun_listen.is_empty() {
            return vec![SocketAddr::new(self.listen.ip(), DEFAULT_STUN_PORT)];
        }
        self.stun_listen.clone()
    }

    /// Returns the admin socket path.
    pub fn admin_socket_path(&self) -> PathBuf {
        self.state_dir.join(ADMIN_SOCKET_FILE)
    }
}

/// Returns the default domain.
pub fn default_domain() -> DnsName {
    const INVARIANT: &str = "DEFAULT_DOMAIN is a valid DNS name (tested)";
    DEFAULT_DOMAIN.parse().expect(INVARIANT)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_metrics_address_is_loopback_9090() {
        let c = super::ServerConfig::new("/x");
        assert_eq!(
            c.metrics_listen,
            Some(super::DEFAULT_METRICS_LISTEN.parse().unwrap())
        );
    }

    #[test]
    fn the_default_domain_is_valid() {
        assert_eq!(super::default_domain().to_string(), super::DEFAULT_DOMAIN);
    }
}
