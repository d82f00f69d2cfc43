//! weft-control, the coordination server: it registers nodes, keeps the
//! tailnet's state, compiles the policy per node, and streams each node its
//! netmap (a full map, then deltas). It never carries tailnet traffic.
//!
//! This library is the whole server; the `weft-control` binary is its CLI,
//! and tests and the load generator start it in-process with
//! [`Server::start`].
//!
//! ```text
//!  HTTP (hyper accept loop) ── GET /key, POST /control ──▶ one task per connection (control::conn)
//!        │                     /a/<id>, /api/v1, /metrics        │ register ─▶ store (SQLite/PostgreSQL)
//!        │                                                       │ map ─────▶ coordinator: subscribe
//!  admin socket ─▶ admin::Admin ─▶ store, then coordinator        ▼
//!                                        state::coordinator (one task): batch ─▶ deltas ─▶ stream queues
//!                                        publishes state::Snapshot (Arc swap) ◀── full maps spliced from it
//! ```
//!
//! The database is the source of truth; the hot path is the in-memory
//! [`state`] (see its docs for how deltas are computed and encoded once).
//! Time comes from an injectable [`clock::Clock`], so expiry and the
//! ephemeral-node grace period are tested without waiting.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod admin;
mod admission;
pub mod auth;
pub mod check;
pub mod clock;
pub mod config;
pub mod config_file;
mod console;
mod control;
mod ctx;
mod http;
pub mod install;
pub mod keyfile;
mod lock;
mod login;
mod metrics;
pub mod oidc;
pub mod pages;
pub mod recordings;
mod registration;
mod relay;
mod state;
mod waiting;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_control_store::{Store, StoreConfig};
use weft_types::MachinePublic;

pub use admin::Admin;
pub use config::ServerConfig;

use crate::ctx::Ctx;
use crate::state::coordinator::{CoordConfig, Coordinator};
use crate::state::persist::Persister;

/// Reads the monotonic clock (for the channel's timers).
#[allow(clippy::disallowed_methods)] // the server driver is where time enters
pub(crate) fn now() -> Instant {
    Instant::now()
}

/// Draws a 32-byte seed from the OS CSPRNG (a Noise ephemeral key); a
/// failed RNG aborts the server ([`weft_types::entropy`]).
pub(crate) fn seed() -> [u8; 32] {
    weft_types::entropy::seed()
}

/// Why the server could not start.
///
/// Each message names the cause itself and exposes no separate
/// [`std::error::Error::source`], so a caller printing the whole chain
/// (`{:#}`) shows each cause once.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The state directory could not be created.
    #[error("cannot create the state directory {path}: {error}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// Another server holds the state directory, or its lock file cannot
    /// be taken (the message says which).
    #[error(transparent)]
    Locked(#[from] lock::LockError),
    /// The server key or the relay key could not be loaded or made (the
    /// message names which).
    #[error(transparent)]
    Key(#[from] keyfile::KeyFileError),
    /// The database could not be opened.
    #[error("cannot open the database: {0}")]
    Store(weft_control_store::StoreError),
    /// The OIDC settings are invalid.
    #[error("OIDC: {0}")]
    Oidc(String),
    /// The initial state could not be loaded.
    #[error("cannot load the tailnet state: {0}")]
    Load(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        error: std::io::Error,
    },
    /// The metrics address could not be bound.
    #[error(
        "cannot serve metrics on {addr}: {error}; choose another with --metrics-listen or turn metrics off with --no-metrics"
    )]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        error: std::io::Error,
    },
    /// The TLS certificate or key could not be loaded.
    #[error("cannot serve TLS: {0}")]
    Tls(weft_relay::tls::TlsError),
    /// The relay could not start.
    #[error("cannot start the relay: {0}")]
    Relay(weft_relay::RelayError),
    /// A STUN address could not be bound.
    #[error(
        "cannot serve STUN on {addr} (UDP): {error}; choose another with --stun-listen or turn STUN off with --no-stun"
    )]
    Stun {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        error: std::io::Error,
    },
    /// The admin socket could not be bound.
    #[error("cannot create the admin socket {path}: {error}")]
    AdminSocket {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
}

impl From<weft_control_store::StoreError> for StartError {
    fn from(e: weft_control_store::StoreError) -> Self {
        StartError::Store(e)
    }
}

impl From<weft_relay::RelayError> for StartError {
    fn from(e: weft_relay::RelayError) -> Self {
        StartError::Relay(e)
    }
}

/// A running server. Dropping it does not stop it; call [`Server::shutdown`].
#[derive(Debug)]
pub struct Server {
    ctx: Arc<Ctx>,
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    admin_socket: Option<PathBuf>,
    stun_addrs: Vec<SocketAddr>,
    background: TaskTracker,
    /// Held until the server is shut down (or dropped).
    _lock: lock::StateLock,
}

impl Server {
    /// Locks the state directory, opens the store, loads the tailnet, binds
    /// the listeners (and the admin socket) and starts serving. Nothing is
    /// written to the database until the lock is held, and every address
    /// is bound before the database is touched.
    ///
    /// # Errors
    /// [`StartError`] with what failed and where.
    pub async fn start(mut config: ServerConfig) -> Result<Server, StartError> {
        metrics::install();
        std::fs::create_dir_all(&config.state_dir).map_err(|error| StartError::StateDir {
            path: config.state_dir.clone(),
            error,
        })?;
        let state_lock = lock::StateLock::acquire(&config.state_dir)?;
        let server_key = keyfile::load_or_create(&config.state_dir.join(config::SERVER_KEY_FILE))?;
        let relay_key = if config.relay {
            Some(weft_relay::load_or_create_key(
                &config.state_dir.join(config::RELAY_KEY_FILE),
            )?)
        } else {
            None
        };
        let tls = match &config.tls {
            Some(files) => Some(tokio_rustls::TlsAcceptor::from(
                weft_relay::tls::server_config(&files.cert, &files.key).map_err(StartError::Tls)?,
            )),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|error| StartError::Listen {
                addr: config.listen,
                error,
            })?;
        let local_addr = listener.local_addr().map_err(|error| StartError::Listen {
            addr: config.listen,
            error,
        })?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|error| StartError::Metrics { addr, error })?,
            ),
            None => None,
        };
        let metrics_addr = match &metrics_listener {
            Some(l) => Some(l.local_addr().map_err(|error| StartError::Metrics {
                addr: config.metrics_listen.unwrap_or(local_addr),
                error,
            })?),
            None => None,
        };
        let store_config = StoreConfig {
            node_key_expiry: config.node_key_expiry,
            seed: config.store_seed,
            require_device_approval: config.require_device_approval,
            ..StoreConfig::default()
        };
        let store = match &config.db_url {
            Some(url) => Store::open(url, store_config).await?,
            None => Store::open_state_dir(&config.state_dir, store_config).await?,
        };
        let clock = config.clock.clone();
        let server_url = match &config.server_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => {
                let mut a = local_addr;
                if a.ip().is_unspecified() {
                    a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                let scheme = if tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{a}")
            }
        };
        let oidc = match config.oidc.clone() {
            Some(o) => {
                let o = Arc::new(
                    oidc::Oidc::new(o, &server_url, clock.clone()).map_err(StartError::Oidc)?,
                );
                config.authenticator = o.clone();
                Some(o)
            }
            None => None,
        };
        let admin_listener = if config.admin_socket {
            let path = config.admin_socket_path();
            Some((
                admin::socket::bind(&path).map_err(|error| StartError::AdminSocket {
                    path: path.clone(),
                    error,
                })?,
                path,
            ))
        } else {
            None
        };

        let stop = CancellationToken::new();
        let background = TaskTracker::new();
        let mut stun_addrs = Vec::new();
        for addr in config.stun_addrs() {
            let bound = relay::start_stun(addr, &stop, &background)
                .map_err(|error| StartError::Stun { addr, error })?;
            stun_addrs.push(bound);
        }
        let relay_map = match relay::load_map(&config.state_dir.join(relay::RELAY_MAP_FILE)) {
            Ok(Some(map)) => map,
            Ok(None) => {
                relay::default_map(&server_url, config.relay, &stun_addrs).unwrap_or_default()
            }
            Err(e) => return Err(StartError::Load(e)),
        };

        let dns = match store.dns_settings().await {
            Ok(Some(s)) => s.config,
            Ok(None) => state::default_dns_config(),
            Err(e) => {
                return Err(StartError::Load(format!(
                    "{e}; fix or delete the dns_settings row (deleting it restores the defaults)"
                )));
            }
        };

        // Every address is bound: from here on this server is the one.
        let marked = store.mark_all_offline(clock.now()).await?;
        if marked > 0 {
            tracing::info!(nodes = marked, "marked nodes offline after a restart");
        }
        let persist = Arc::new(Persister::default());
        let (coordinator, coord) = Coordinator::load(
            store.clone(),
            persist.clone(),
            clock.clone(),
            CoordConfig {
                domain: config.domain.clone(),
                batch_delay: config.batch_delay,
                ephemeral_grace: config.ephemeral_grace,
                relay_map,
                dns,
            },
        )
        .await
        .map_err(|e| StartError::Load(e.to_string()))?;
        let relay_keys = Arc::new(relay::LiveKeys::new(&coord.snapshot(), clock.clone()));
        let relay = match relay_key {
            Some(key) => Some(weft_relay::RelayServer::new(weft_relay::RelayConfig::new(
                key,
                relay_keys.clone(),
            ))?),
            None => None,
        };
        let limits = admission::Limits {
            max_connections: config.connection_limit(),
            max_unregistered_per_source: config.max_unregistered_per_source,
        };
        tracing::info!(
            max_connections = limits.max_connections,
            max_unregistered_per_source = limits.max_unregistered_per_source,
            register_timeout = ?config.register_timeout,
            max_pending_logins = config.max_pending_logins,
            max_pending_logins_per_source = config.max_pending_logins_per_source,
            max_registrations_in_flight = config.max_registrations_in_flight,
            "connection and login limits"
        );
        let ctx = Arc::new(Ctx {
            full_maps: Semaphore::new(config.full_map_concurrency.max(1)),
            registrations: Arc::new(Semaphore::new(config.max_registrations_in_flight.max(1))),
            config,
            server_url,
            store: store.clone(),
            server_key,
            coord,
            logins: waiting::Logins::default(),
            admission: admission::Admission::new(limits),
            checks: waiting::Checks::default(),
            clock: clock.clone(),
            stop: stop.clone(),
            tasks: TaskTracker::new(),
            relay,
            relay_keys,
            dns_edit: tokio::sync::Mutex::new(()),
            oidc,
        });
        let admin = Admin::new(ctx.clone());
        background.spawn(coordinator.run(stop.clone()));
        background.spawn(persist.run(store.clone(), clock.clone(), stop.clone()));
        background.spawn(maintenance(ctx.clone()));
        background.spawn(relay::follow(
            ctx.relay.clone(),
            ctx.relay_keys.clone(),
            ctx.coord.published.clone(),
            clock.clone(),
            stop.clone(),
        ));
        let admin_socket = admin_listener.map(|(l, path)| {
            background.spawn(admin::socket::serve(
                l,
                path.clone(),
                admin::api::routes(admin.clone()),
                stop.clone(),
            ));
            path
        });
        let router = http::router(ctx.clone(), admin);
        background.spawn(http::serve(listener, router, ctx.clone(), tls));
        if let Some(l) = metrics_listener {
            background.spawn(http::serve_metrics(l, stop.clone()));
        }
        tracing::info!(
            listen = %local_addr,
            url = %ctx.server_url,
            key = %ctx.server_key.public(),
            backend = ?store.backend(),
            authenticator = ctx.config.authenticator.name(),
            relay = ctx.relay.as_ref().map(|r| r.public_key().to_string()),
            stun = ?stun_addrs,
            metrics = ?metrics_addr,
            "weft-control serving"
        );
        Ok(Server {
            ctx,
            local_addr,
            metrics_addr,
            admin_socket,
            stun_addrs,
            background,
            _lock: state_lock,
        })
    }

    /// Returns the bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Returns the bound address of the metrics listener (`GET /metrics`),
    /// if metrics are served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Returns the URL nodes use.
    pub fn url(&self) -> &str {
        &self.ctx.server_url
    }

    /// Returns the server's public Noise key (what `GET /key` returns).
    pub fn public_key(&self) -> MachinePublic {
        self.ctx.server_key.public()
    }

    /// Returns the admin service (in-process administration).
    pub fn admin(&self) -> Admin {
        Admin::new(self.ctx.clone())
    }

    /// Returns the embedded relay's public key, if the relay is served.
    pub fn relay_public_key(&self) -> Option<weft_types::NodePublic> {
        self.ctx
            .relay
            .as_ref()
            .map(weft_relay::RelayServer::public_key)
    }

    /// Returns the embedded relay's counters, if the relay is served.
    pub fn relay_stats(&self) -> Option<weft_relay::StatsSnapshot> {
        self.ctx.relay.as_ref().map(weft_relay::RelayServer::stats)
    }

    /// Returns the bound STUN addresses (UDP; empty without STUN).
    pub fn stun_addrs(&self) -> &[SocketAddr] {
        &self.stun_addrs
    }

    /// Returns the admin socket path, if it is served.
    pub fn admin_socket(&self) -> Option<&std::path::Path> {
        self.admin_socket.as_deref()
    }

    /// Stops accepting, ends every connection (`shutting_down`), writes the
    /// pending runtime state and closes the database.
    pub async fn shutdown(self) {
        if let Some(relay) = &self.ctx.relay {
            // Relay clients come back quickly to the next instance.
            let restarting = weft_relay::Restarting {
                reconnect_in: Duration::from_millis(500),
                try_for: Duration::from_secs(10),
            };
            relay
                .shutdown(Some(restarting), Duration::from_secs(3))
                .await;
        }
        self.ctx.stop.cancel();
        self.ctx.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.ctx.tasks.wait()).await;
        self.background.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.background.wait()).await;
        self.ctx.store.close().await;
    }

    /// Waits until the server stops (it stops only on [`Server::shutdown`]
    /// or a signal handled by the caller).
    pub async fn stopped(&self) {
        self.ctx.stop.cancelled().await;
    }
}

/// How often expired interactive logins and SSH check approvals are deleted.
const LOGIN_CLEANUP_EVERY: Duration = Duration::from_secs(60);

/// Periodic housekeeping: expired interactive logins and SSH check
/// approvals.
async fn maintenance(ctx: Arc<Ctx>) {
    let mut every = tokio::time::interval(LOGIN_CLEANUP_EVERY);
    loop {
        tokio::select! {
            () = ctx.stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let now = ctx.clock.now();
        match ctx.store.delete_expired_auth_requests(now).await {
            Ok(n) if n > 0 => tracing::debug!(deleted = n, "expired logins removed"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot remove expired logins"),
        }
        match ctx.store.delete_expired_ssh_approvals(now).await {
            Ok(n) if n > 0 => tracing::debug!(deleted = n, "expired SSH check approvals removed"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot remove expired SSH check approvals"),
        }
        let mut gone = std::collections::BTreeSet::new();
        for id in ctx.logins.ids() {
            match ctx.store.auth_request(&id).await {
                Ok(r) if r.state == weft_control_store::AuthRequestState::Pending => {}
                Ok(_) | Err(weft_control_store::StoreError::UnknownAuthRequest(_)) => {
                    gone.insert(id);
                }
                Err(_) => {}
            }
        }
        ctx.logins.retain(|id| !gone.contains(id));
    }
}
