//! The coordinator: one task that owns the profile store, the data plane
//! and the current control session, and turns LocalAPI requests and session
//! events into changes of all three. It decides nothing about wire formats
//! or packets; each owner does its own job:
//!
//! | owner | holds |
//! |---|---|
//! | [`ProfileStore`] | the state file: machine key, profiles, prefs |
//! | [`control`](super::control) task | the control connection, map stream, reconnects |
//! | [`DataPlane`] | WireGuard, disco, TUN addresses (incremental) |
//! | [`Bus`] | the `watch` event stream |
//! | `Backend` (here) | the runtime facts of the current profile and the state derived from them |
//!
//! Requests arrive as closures run on the coordinator task ([`Handle::call`]),
//! so no locks are needed and every change is seen in one order. Work that
//! waits on the network (logout, ping) is split: the closure starts it and
//! hands back what to wait on, the caller waits outside.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use weft_client::{ClientParams, ConnectOptions, Target};
use weft_localapi::{
    BackendState, DebugPrefs, Notify, Prefs, PrefsPatch, ProfileSummary, StartRequest, UserInfo,
};
use weft_types::control::{AuthKey, ExpiryRequest, RegisterAuth, Registered};
use weft_types::{Endpoint, HostInfo, NetMap, NodePrivate, Tag};

use super::bus::Bus;
use super::control::{self, ControlCmd, ControlEvent, ControlHandle, ControlSpec};
use super::dataplane::DataPlane;
use super::dns_os::{self, OsDns};
use super::profiles::{ProfileError, ProfileStore};
use super::state_file::StateError;
use super::validate::InvalidPrefs;

/// Why the coordinator refused or could not finish a request. The
/// LocalAPI turns each into an HTTP status (`localapi::ApiError`); the
/// message is for the user.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The coordinator has stopped.
    #[error("weftd is shutting down")]
    ShuttingDown,
    /// A logged-in profile cannot move to another control server.
    #[error(
        "changing the control server needs a new login: use weft login --login-server=URL (a new profile)"
    )]
    ServerChangeNeedsLogin,
    /// The prefs break a limit; nothing was stored.
    #[error(transparent)]
    InvalidPrefs(#[from] InvalidPrefs),
    /// An unknown profile, or the state could not be written.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// The state could not be written; nothing changed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The current profile changed while a logout was at control.
    #[error("the profile changed while logging out; nothing was removed")]
    ProfileChanged,
    /// Control did not log the node out.
    #[error("logout failed, the node is still logged in: {0}")]
    LogoutFailed(String),
    /// No peer has this tailnet address.
    #[error("no peer has the address {0}")]
    NoPeer(IpAddr),
    /// The peer cannot be reached (expired or not authorized).
    #[error("{name} ({ip}) is expired or not authorized")]
    PeerUnusable { name: String, ip: IpAddr },
    /// The peer has no disco key yet.
    #[error("{name} ({ip}) has no disco key yet (it has not connected to control)")]
    PeerNotConnected { name: String, ip: IpAddr },
    /// netcheck needs the relay map, which comes with the netmap.
    #[error(
        "netcheck needs the relay map from control, and this node has no netmap yet: run weft up (or wait until weft status shows it running)"
    )]
    NoRelayMap,
}

/// Where a netcheck run's report arrives ([`Backend::netcheck`]).
pub type NetcheckRx = tokio::sync::watch::Receiver<Option<weft_disco::Report>>;

/// How the user is logging in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoginVia {
    /// `up --auth-key`.
    AuthKey,
    /// `login-interactive`: the user is at hand to visit the auth URL.
    Interactive,
}

/// The current profile's standing with control at run time (reset on a
/// profile switch; never persisted): one variant per situation, carrying
/// what it needs. [`Backend::state`] reads it together with the profile
/// (prefs, registration), the key being registered and the netmap in force.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Standing {
    /// Nothing in the way: the profile's registration (if any) stands.
    /// `machine_authorized`: control's last word on approval (`None`: not
    /// heard this run).
    Settled { machine_authorized: Option<bool> },
    /// The user started a login that control has not finished.
    /// `auth_url`: where control sent the user; `key_expired`: the login
    /// replaces a node key that expired.
    LoggingIn {
        via: LoginVia,
        auth_url: Option<String>,
        key_expired: bool,
    },
    /// Control wants a login the user has not started: it does not know
    /// the node key (`auth_url` to visit), or the key expired.
    NeedsLogin {
        auth_url: Option<String>,
        key_expired: bool,
    },
}

impl Default for Standing {
    fn default() -> Self {
        Standing::Settled {
            machine_authorized: None,
        }
    }
}

impl Standing {
    /// The auth URL control gave for the login under way or needed.
    fn auth_url(&self) -> Option<&str> {
        match self {
            Standing::Settled { .. } => None,
            Standing::LoggingIn { auth_url, .. } | Standing::NeedsLogin { auth_url, .. } => {
                auth_url.as_deref()
            }
        }
    }

    /// Control said the node key expired (and no new key is accepted yet).
    fn key_expired(&self) -> bool {
        match self {
            Standing::Settled { .. } => false,
            Standing::LoggingIn { key_expired, .. } | Standing::NeedsLogin { key_expired, .. } => {
                *key_expired
            }
        }
    }
}

/// What the coordinator knows about the current profile at run time
/// (reset on a profile switch; never persisted).
#[derive(Debug, Default)]
struct Runtime {
    standing: Standing,
    /// The last netmap; it stays in force while control is away.
    netmap: Option<Arc<NetMap>>,
    /// Why control cannot be reached right now (for `health`).
    control_error: Option<String>,
    /// An error was already sent as `Notify::Error` since the last start.
    error_reported: bool,
    /// A node key being registered (first login or re-authentication);
    /// committed to the profile once control accepts it.
    pending_key: Option<NodePrivate>,
    /// The prefs from before a re-authentication of a registered profile
    /// (`up --force-reauth`, e.g. with new `--advertise-tags`): restored if
    /// control refuses it, so a refused login leaves nothing behind.
    reauth_undo: Option<Prefs>,
}

/// Fixed facts about this daemon.
#[derive(Debug, Clone)]
pub struct DaemonInfo {
    pub tun: String,
    pub os_hostname: String,
}

/// A closure run on the coordinator task.
pub type Job = Box<dyn FnOnce(&mut Backend) + Send>;

/// The coordinator's mailbox.
#[derive(Clone)]
pub struct Handle {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Handle {
    /// Runs `f` on the coordinator and returns its result.
    ///
    /// # Errors
    /// [`BackendError::ShuttingDown`] if the coordinator has stopped.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Backend) -> R + Send + 'static,
    ) -> Result<R, BackendError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |b| {
                let _ = tx.send(f(b));
            }))
            .map_err(|_| BackendError::ShuttingDown)?;
        rx.await.map_err(|_| BackendError::ShuttingDown)
    }
}

/// Work to finish a logout outside the coordinator.
pub struct LogoutJob {
    pub profile_id: String,
    pub control: ConnectOptions,
    pub url: String,
    pub ca_file: Option<String>,
    pub machine_key: weft_types::MachinePrivate,
    pub pinned: Option<weft_types::MachinePublic>,
    pub node_key: NodePrivate,
    pub host_info: HostInfo,
}

impl LogoutJob {
    /// Expires the node key at control.
    ///
    /// # Errors
    /// A message naming the control server and the cause.
    pub async fn run(self) -> Result<(), String> {
        let server_key = match self.pinned {
            Some(k) => k,
            None => control::fetch_key(&self.control, &self.url, self.ca_file.as_deref())
                .await
                .map_err(|e| e.to_string())?,
        };
        let url =
            control::control_url(&self.url, self.ca_file.as_deref()).map_err(|e| format!("{e}"))?;
        let target = Target {
            url,
            machine_key: self.machine_key.clone(),
            server_key,
        };
        control::logout(
            &self.control,
            &target,
            self.node_key.public(),
            self.host_info.clone(),
        )
        .await
    }
}

/// The coordinator. See the module docs.
pub struct Backend {
    store: ProfileStore,
    /// How control is reached (the real dialer, or a test's).
    control: ConnectOptions,
    dp: Box<dyn DataPlane>,
    bus: Bus,
    info: DaemonInfo,
    events_tx: control::EventTx,
    session: Option<ControlHandle>,
    generation: u64,
    rt: Runtime,
    last_state: BackendState,
    endpoints: Vec<Endpoint>,
    /// Our home relay region as disco last chose it.
    home_relay: Option<u16>,
    /// Our SSH host keys (set by the SSH service), published while `--ssh` is on.
    ssh_host_keys: Vec<weft_types::node::SshHostKey>,
    /// The OS's DNS configuration (MagicDNS), kept in step with prefs and
    /// netmap after every job; `None` (tests): the OS is never touched.
    os_dns: Option<OsDns>,
}

impl Backend {
    /// Creates the coordinator and programs the data plane with the current
    /// profile's key. Call [`Backend::run`] to start it.
    pub fn new(
        store: ProfileStore,
        control: ConnectOptions,
        dp: Box<dyn DataPlane>,
        bus: Bus,
        info: DaemonInfo,
        events_tx: control::EventTx,
    ) -> Self {
        let mut b = Self {
            store,
            control,
            dp,
            bus,
            info,
            events_tx,
            session: None,
            generation: 0,
            rt: Runtime::default(),
            last_state: BackendState::NoState,
            endpoints: Vec::new(),
            home_relay: None,
            ssh_host_keys: Vec::new(),
            os_dns: None,
        };
        b.load_profile();
        b
    }

    /// Runs the coordinator until every [`Handle`] is dropped or `stop`
    /// becomes `true`; the data plane and the session stop with it.
    pub async fn run(
        mut self,
        mut jobs: mpsc::UnboundedReceiver<Job>,
        mut events: mpsc::UnboundedReceiver<(u64, ControlEvent)>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        self.dp
            .set_shields_up(self.store.current().prefs.shields_up);
        self.sync_os_dns();
        self.publish_state(false);
        loop {
            tokio::select! {
                job = jobs.recv() => match job {
                    Some(job) => job(&mut self),
                    None => break,
                },
                _ = stop.wait_for(|s| *s) => break,
                Some((generation, event)) = events.recv() => self.on_session(generation, event),
            }
            self.dp
                .set_shields_up(self.store.current().prefs.shields_up);
            self.sync_os_dns();
            self.publish_state(false);
        }
        self.session = None;
        // Stopping: the host gets its own DNS back.
        if let Some(os) = &mut self.os_dns {
            tokio::task::block_in_place(|| os.set(None));
        }
    }

    /// Hands the OS's DNS to the coordinator (before [`Backend::run`], which
    /// must then run on a multi-threaded runtime).
    pub fn set_os_dns(&mut self, os: OsDns) {
        self.os_dns = Some(os);
    }

    /// Brings the OS's DNS in line with prefs, state and netmap: Weft's
    /// resolver while running with `--accept-dns` and a netmap that wants
    /// it, the host's own otherwise.
    fn sync_os_dns(&mut self) {
        let running = self.state() == BackendState::Running;
        let accept = self.store.current().prefs.accept_dns;
        let want = dns_os::desired(accept, running, self.rt.netmap.as_deref());
        if let Some(os) = &mut self.os_dns {
            // File writes and busctl calls (bounded by their timeout): other
            // tasks move off this worker meanwhile.
            tokio::task::block_in_place(|| os.set(want));
        }
    }

    /// Returns a mailbox and the receiver [`Backend::run`] takes.
    pub fn mailbox() -> (Handle, mpsc::UnboundedReceiver<Job>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Handle { jobs: tx }, rx)
    }

    // ---- derived state ------------------------------------------------------

    /// Returns the backend state of the current profile.
    pub fn state(&self) -> BackendState {
        let p = self.store.current();
        let want = p.prefs.want_running;
        let needs_login = match &self.rt.standing {
            Standing::Settled { .. } => false,
            Standing::LoggingIn {
                via: LoginVia::AuthKey,
                ..
            } if want => return BackendState::Starting,
            // Not done until control accepts the new key or the user
            // visits the URL.
            Standing::LoggingIn {
                auth_url,
                key_expired,
                ..
            } => auth_url.is_some() || *key_expired || self.rt.pending_key.is_some(),
            Standing::NeedsLogin { .. } => true,
        };
        if needs_login || !p.is_registered() {
            return BackendState::NeedsLogin;
        }
        if !want {
            return BackendState::Stopped;
        }
        if let Standing::Settled {
            machine_authorized: Some(false),
        } = self.rt.standing
        {
            return BackendState::NeedsMachineAuth;
        }
        if self.rt.netmap.is_none() {
            return BackendState::Starting;
        }
        BackendState::Running
    }

    fn publish_state(&mut self, always: bool) {
        let s = self.state();
        if always || s != self.last_state {
            if s != self.last_state {
                tracing::info!(from = ?self.last_state, to = ?s, "Backend state");
            }
            self.last_state = s;
            self.bus.send(Notify::State { state: s });
        }
    }

    // ---- read-only views ------------------------------------------------------

    pub fn store(&self) -> &ProfileStore {
        &self.store
    }
    pub fn data_plane(&self) -> &dyn DataPlane {
        &*self.dp
    }
    pub fn netmap(&self) -> Option<&Arc<NetMap>> {
        self.rt.netmap.as_ref()
    }
    pub fn auth_url(&self) -> Option<&str> {
        self.rt.standing.auth_url()
    }
    pub fn info(&self) -> &DaemonInfo {
        &self.info
    }

    /// Returns the problems a user should know about.
    pub fn health(&self) -> Vec<String> {
        let mut h = Vec::new();
        if let Some(e) = &self.rt.control_error {
            let kept = if self.rt.netmap.is_some() {
                "; keeping the last network map"
            } else {
                ""
            };
            h.push(format!("{e}{kept}"));
        }
        if self.rt.standing.key_expired() {
            h.push("node key expired: log in again with weft up --force-reauth".into());
        } else if self.rt.standing.auth_url().is_some() && self.store.current().is_registered() {
            h.push("control does not know this node any more: log in again with weft up".into());
        }
        if let Standing::Settled {
            machine_authorized: Some(false),
        } = self.rt.standing
        {
            h.push("waiting for an administrator to approve this machine".into());
        }
        if let Some(line) = self.os_dns.as_ref().and_then(OsDns::health) {
            h.push(line);
        }
        if let Some(line) = self.dp.dns().and_then(|d| d.health()) {
            h.push(line);
        }
        h
    }

    /// Returns `GET dns/status`: what Weft pushes, what the OS uses now.
    pub fn dns_status(&self) -> weft_localapi::DnsStatus {
        let prefs = &self.store.current().prefs;
        let nm = self.rt.netmap.as_deref();
        let report = self.os_dns.as_ref().map(OsDns::report);
        dns_os::status(prefs.accept_dns, nm, report)
    }

    pub fn prefs(&self) -> Prefs {
        self.store.current().prefs.clone()
    }

    pub fn profiles(&self) -> Vec<ProfileSummary> {
        self.store.listed()
    }

    pub fn current_summary(&self) -> ProfileSummary {
        self.store.summary(self.store.current())
    }

    /// Returns a snapshot for a new watcher and subscribes it, atomically
    /// (no event falls between the two).
    pub fn watch(&self) -> (Notify, tokio::sync::broadcast::Receiver<Notify>) {
        let snapshot = Notify::Snapshot {
            state: self.state(),
            auth_url: self.rt.standing.auth_url().map(str::to_owned),
            prefs: self.prefs(),
        };
        (snapshot, self.bus.subscribe())
    }

    pub fn debug_prefs(&self) -> DebugPrefs {
        let p = self.store.current();
        DebugPrefs {
            profile_id: p.id.clone(),
            prefs: p.prefs.clone(),
            node_key: p.node_key.as_ref().map(NodePrivate::public),
            private_node_key: p.node_key.as_ref().map(|_| "<redacted>".to_owned()),
            node_id: p.node_id,
            user: p.user.as_ref().map(|u| u.login_name.clone()),
            control_key: p.control_key.map(|k| k.to_string()),
        }
    }

    // ---- requests -----------------------------------------------------------

    /// `PATCH prefs`.
    ///
    /// # Errors
    /// [`BackendError::ServerChangeNeedsLogin`], [`BackendError::InvalidPrefs`];
    /// [`BackendError::State`] if the state cannot be written.
    pub fn edit_prefs(&mut self, patch: &PrefsPatch) -> Result<Prefs, BackendError> {
        let cur = self.store.current();
        if let Some(url) = &patch.control_url
            && *url != cur.prefs.control_url
            && cur.is_registered()
        {
            return Err(BackendError::ServerChangeNeedsLogin);
        }
        let before = cur.prefs.clone();
        let after = patch.apply_to(&before);
        super::validate::prefs(&after)?;
        self.store.update_current(|p| p.prefs = after.clone())?;
        self.after_prefs_change(&before, &after);
        Ok(after)
    }

    fn after_prefs_change(&mut self, before: &Prefs, after: &Prefs) {
        if before == after {
            return;
        }
        self.bus.send(Notify::Prefs {
            prefs: after.clone(),
        });
        if before.want_running != after.want_running {
            if after.want_running {
                self.rt.error_reported = false;
                self.ensure_session(true);
            } else {
                // Down: stop talking to control and empty the data plane; the
                // registration stays (no re-login needed for `up`).
                self.session = None;
                self.rt.netmap = None;
                self.rt.control_error = None;
                self.dp.clear();
            }
        } else if host_info_changed(before, after)
            && let Some(s) = &self.session
        {
            s.send(ControlCmd::HostInfo(self.host_info()));
        }
    }

    /// `POST start`.
    ///
    /// # Errors
    /// As [`Backend::edit_prefs`].
    pub fn start(&mut self, req: StartRequest) -> Result<(), BackendError> {
        let cur = self.store.current().clone();
        let mut prefs = req.prefs.clone().unwrap_or_else(|| cur.prefs.clone());
        prefs.want_running = true;
        prefs.logged_out = false;
        if prefs.nickname.is_none() && req.prefs.is_some() {
            prefs.nickname.clone_from(&cur.prefs.nickname);
        }
        super::validate::prefs(&prefs)?;
        let server_changed = prefs.control_url != cur.prefs.control_url;
        let before = cur.prefs.clone();
        self.store.update_current(|p| {
            p.prefs = prefs.clone();
            if server_changed {
                // Another server: this identity means nothing there.
                p.node_key = None;
                p.node_id = None;
                p.control_key = None;
                p.user = None;
                p.tailnet = None;
            }
        })?;
        if server_changed {
            self.reset_runtime();
        }
        self.rt.error_reported = false;
        if before != prefs {
            self.bus.send(Notify::Prefs {
                prefs: prefs.clone(),
            });
        }
        let registered = self.store.current().is_registered();
        let needs_login =
            !registered || self.rt.standing.key_expired() || self.rt.standing.auth_url().is_some();
        if req.force_reauth {
            self.rt.pending_key = Some(NodePrivate::generate());
        }
        self.rt.reauth_undo = (req.force_reauth && registered).then(|| before.clone());
        let auth_key = req.auth_key.filter(|k| !k.is_empty());
        match auth_key {
            Some(k) if needs_login || req.force_reauth => {
                self.rt.standing = Standing::LoggingIn {
                    via: LoginVia::AuthKey,
                    auth_url: self.rt.standing.auth_url().map(str::to_owned),
                    key_expired: self.rt.standing.key_expired(),
                };
                self.respawn(RegisterAuth::AuthKey(AuthKey(k)));
            }
            _ if req.force_reauth || server_changed => self.respawn(RegisterAuth::None),
            _ if self.session.is_none() || !registered => self.ensure_session(true),
            _ => {
                if let Some(s) = &self.session {
                    s.send(ControlCmd::HostInfo(self.host_info()));
                }
            }
        }
        // The CLI waits for a state event after every start.
        self.publish_state(true);
        Ok(())
    }

    /// `POST login-interactive`.
    pub fn login_interactive(&mut self) {
        let auth_url = self.rt.standing.auth_url().map(str::to_owned);
        self.rt.standing = Standing::LoggingIn {
            via: LoginVia::Interactive,
            auth_url: auth_url.clone(),
            key_expired: self.rt.standing.key_expired(),
        };
        self.rt.error_reported = false;
        if let Some(url) = auth_url {
            self.bus.send(Notify::BrowseToUrl { url });
        }
        match &self.session {
            Some(s) => s.send(ControlCmd::Interactive),
            None => self.respawn(RegisterAuth::None),
        }
    }

    /// First half of `POST logout`: stops the session and returns what must
    /// be done at control (`None`: nothing registered, done locally).
    ///
    /// # Errors
    /// [`BackendError::State`] if the state cannot be written.
    pub fn begin_logout(&mut self) -> Result<Option<LogoutJob>, BackendError> {
        let p = self.store.current().clone();
        let Some(node_key) = p.node_key.clone().filter(|_| p.is_registered()) else {
            self.finish_logout(&p.id, Ok(()))?;
            return Ok(None);
        };
        self.session = None;
        Ok(Some(LogoutJob {
            profile_id: p.id.clone(),
            control: self.control.clone(),
            url: p.prefs.control_url.clone(),
            ca_file: p.prefs.control_ca_file.clone(),
            machine_key: self.store.machine_key().clone(),
            pinned: p.control_key,
            node_key,
            host_info: self.host_info(),
        }))
    }

    /// Second half of `POST logout`: removes the profile, or on failure
    /// resumes as before.
    ///
    /// # Errors
    /// [`BackendError::ProfileChanged`], [`BackendError::LogoutFailed`] with the
    /// control error; [`BackendError::State`] if the state cannot be written.
    pub fn finish_logout(
        &mut self,
        profile_id: &str,
        result: Result<(), String>,
    ) -> Result<(), BackendError> {
        if self.store.current().id != profile_id {
            return Err(BackendError::ProfileChanged);
        }
        if let Err(e) = result {
            self.ensure_session(false);
            return Err(BackendError::LogoutFailed(e));
        }
        self.store
            .delete(profile_id, super::dataplane::unix_now().0)?;
        self.store.update_current(|p| p.prefs.logged_out = true)?;
        self.load_profile();
        self.bus.send(Notify::Prefs {
            prefs: self.prefs(),
        });
        tracing::info!("Logged out");
        Ok(())
    }

    /// `PUT profiles`: a new empty profile, now current.
    ///
    /// # Errors
    /// [`BackendError::State`] if the state cannot be written.
    pub fn new_profile(&mut self) -> Result<ProfileSummary, BackendError> {
        self.store
            .create(Prefs::default(), super::dataplane::unix_now().0)?;
        self.load_profile();
        self.bus.send(Notify::Prefs {
            prefs: self.prefs(),
        });
        Ok(self.current_summary())
    }

    /// `POST profiles/{id}`.
    ///
    /// # Errors
    /// [`BackendError::Profile`]: an unknown id, or the state cannot be written.
    pub fn switch_profile(&mut self, id: &str) -> Result<ProfileSummary, BackendError> {
        if self.store.current().id != id {
            self.store.switch(id)?;
            self.load_profile();
            self.bus.send(Notify::Prefs {
                prefs: self.prefs(),
            });
        }
        Ok(self.current_summary())
    }

    /// `DELETE profiles/{id}` (no logout at control).
    ///
    /// # Errors
    /// [`BackendError::Profile`]: an unknown id, or the state cannot be written.
    pub fn delete_profile(&mut self, id: &str) -> Result<(), BackendError> {
        if self.store.delete(id, super::dataplane::unix_now().0)? {
            self.load_profile();
            self.bus.send(Notify::Prefs {
                prefs: self.prefs(),
            });
        }
        Ok(())
    }

    /// Finds the peer with tailnet address `ip`.
    pub fn peer_by_ip(&self, ip: IpAddr) -> Option<&weft_types::Node> {
        let nm = self.rt.netmap.as_ref()?;
        nm.peers
            .values()
            .find(|n| n.addresses.iter().any(|a| a.addr() == ip))
    }

    /// Starts a disco ping to the peer at `ip`.
    ///
    /// # Errors
    /// [`BackendError::NoPeer`], [`BackendError::PeerUnusable`],
    /// [`BackendError::PeerNotConnected`].
    pub fn start_ping(
        &self,
        ip: IpAddr,
        timeout: Duration,
    ) -> Result<(String, oneshot::Receiver<weft_disco::PingOutcome>), BackendError> {
        let Some(peer) = self.peer_by_ip(ip) else {
            return Err(BackendError::NoPeer(ip));
        };
        let name = peer.name.first_label().to_string();
        if !peer.is_usable_at(super::dataplane::unix_now()) {
            return Err(BackendError::PeerUnusable { name, ip });
        }
        let Some(rx) = self.dp.ping(&peer.node_key, timeout) else {
            return Err(BackendError::PeerNotConnected { name, ip });
        };
        Ok((name, rx))
    }

    /// Starts a netcheck run; returns a receiver whose next change is its
    /// report, and the relay map's regions (latencies not filled in).
    pub fn netcheck(
        &self,
    ) -> Result<(NetcheckRx, Vec<weft_localapi::NetcheckRegion>), BackendError> {
        let nm = self.netmap().ok_or(BackendError::NoRelayMap)?;
        let regions = nm
            .relay_map
            .regions
            .values()
            .map(|r| weft_localapi::NetcheckRegion {
                id: r.id,
                code: r.code.clone(),
                name: r.name.clone(),
                latency_ms: None,
            })
            .collect();
        let rx = self.dp.netcheck().ok_or(BackendError::NoRelayMap)?;
        Ok((rx, regions))
    }

    /// Returns the code of relay region `region` in the current netmap's
    /// relay map (what `weft ping` and `weft status` show), or its id when
    /// the map does not name it.
    pub fn relay_region_name(&self, region: u16) -> String {
        self.netmap()
            .and_then(|nm| nm.relay_map.regions.get(&region))
            .map_or_else(|| region.to_string(), |r| r.code.clone())
    }

    /// Our endpoints changed (from the endpoint monitor).
    pub fn set_endpoints(&mut self, endpoints: Vec<Endpoint>) {
        if endpoints == self.endpoints {
            return;
        }
        tracing::debug!(count = endpoints.len(), "Local endpoints changed");
        self.endpoints.clone_from(&endpoints);
        if let Some(s) = &self.session {
            s.send(ControlCmd::Endpoints(endpoints));
        }
    }

    /// Our home relay region (from disco): peers reach us through it until
    /// a direct path works. Sent to control with the endpoints.
    pub fn set_home_relay(&mut self, home_relay: Option<u16>) {
        if home_relay == self.home_relay {
            return;
        }
        tracing::debug!(?home_relay, "Home relay changed");
        self.home_relay = home_relay;
        if let Some(s) = &self.session {
            s.send(ControlCmd::HomeRelay(home_relay));
        }
    }

    /// Our SSH host keys (from the SSH service); sent to control in HostInfo
    /// while `--ssh` is on.
    pub fn set_ssh_host_keys(&mut self, keys: Vec<weft_types::node::SshHostKey>) {
        if keys == self.ssh_host_keys {
            return;
        }
        self.ssh_host_keys = keys;
        if self.store.current().prefs.run_ssh
            && let Some(s) = &self.session
        {
            s.send(ControlCmd::HostInfo(self.host_info()));
        }
    }

    // ---- sessions -----------------------------------------------------------

    /// Makes the current profile's runtime fresh, programs its key into the
    /// data plane and starts a session if it wants to run.
    fn load_profile(&mut self) {
        self.session = None;
        self.reset_runtime();
        self.dp.clear();
        let key = self.store.current().node_key.clone();
        self.dp.set_node_key(key.as_ref());
        self.ensure_session(false);
    }

    fn reset_runtime(&mut self) {
        self.session = None;
        self.rt = Runtime::default();
        self.dp.clear();
    }

    /// Starts a session if none runs and the profile wants one
    /// (`login_ok`: also for a profile that still has to log in).
    fn ensure_session(&mut self, login_ok: bool) {
        if self.session.is_some() {
            return;
        }
        let p = self.store.current();
        let runnable = p.prefs.want_running
            && (p.is_registered() || login_ok)
            && !self.rt.standing.key_expired();
        if runnable {
            self.respawn(RegisterAuth::None);
        }
    }

    fn respawn(&mut self, auth: RegisterAuth) {
        self.session = None;
        self.generation += 1;
        let p = self.store.current();
        let node_key = match (&self.rt.pending_key, &p.node_key) {
            (Some(k), _) => k.clone(),
            (None, Some(k)) if p.is_registered() => k.clone(),
            (None, _) => {
                let k = NodePrivate::generate();
                self.rt.pending_key = Some(k.clone());
                k
            }
        };
        let old_node_key = match (&self.rt.pending_key, &p.node_key) {
            (Some(_), Some(old)) if p.is_registered() => Some(old.public()),
            _ => None,
        };
        self.dp
            .set_relay_ca_file(p.prefs.control_ca_file.as_deref());
        let spec = ControlSpec {
            generation: self.generation,
            url: p.prefs.control_url.clone(),
            ca_file: p.prefs.control_ca_file.clone(),
            machine_key: self.store.machine_key().clone(),
            pinned: p.control_key,
            params: ClientParams {
                node_key: node_key.public(),
                old_node_key,
                auth,
                expiry: ExpiryRequest::Default,
                ephemeral: false,
                host_info: self.host_info(),
                disco_key: self.dp.disco_key(),
                endpoints: self.endpoints.clone(),
                map: p.prefs.want_running,
                interactive: matches!(
                    self.rt.standing,
                    Standing::LoggingIn {
                        via: LoginVia::Interactive,
                        ..
                    }
                ),
            },
            seed: weft_types::entropy::u64(),
        };
        tracing::debug!(generation = self.generation, url = %spec.url, "Control task starting");
        let session = control::spawn(self.control.clone(), spec, self.events_tx.clone());
        if self.home_relay.is_some() {
            session.send(ControlCmd::HomeRelay(self.home_relay));
        }
        self.session = Some(session);
    }

    fn host_info(&self) -> HostInfo {
        let prefs = &self.store.current().prefs;
        HostInfo {
            hostname: prefs
                .hostname
                .clone()
                .unwrap_or_else(|| self.info.os_hostname.clone()),
            os: "linux".into(),
            os_version: String::new(),
            weft_version: env!("CARGO_PKG_VERSION").into(),
            ssh_host_keys: if prefs.run_ssh {
                self.ssh_host_keys.clone()
            } else {
                Vec::new()
            },
            requested_tags: prefs
                .advertise_tags
                .iter()
                .filter_map(|t| t.parse::<Tag>().ok())
                .collect(),
            shields_up: prefs.shields_up,
        }
    }

    fn on_session(&mut self, generation: u64, event: ControlEvent) {
        if generation != self.generation || self.session.is_none() {
            return;
        }
        match event {
            ControlEvent::ServerKey(k) => {
                tracing::info!(url = %self.store.current().prefs.control_url, key = %k, "Pinned the control server key");
                if let Err(e) = self.store.update_current(|p| p.control_key = Some(k)) {
                    tracing::error!(error = %e, "Cannot save the pinned key");
                }
            }
            ControlEvent::Unreachable(msg) => {
                tracing::warn!(error = %msg, "Control unreachable; retrying");
                self.rt.control_error = Some(msg.clone());
                if self.state() != BackendState::Running && !self.rt.error_reported {
                    self.rt.error_reported = true;
                    self.bus.send(Notify::Error { message: msg });
                }
            }
            ControlEvent::Reachable => {
                if self.rt.control_error.take().is_some() {
                    tracing::info!("Control reachable again");
                }
            }
            ControlEvent::AuthUrl { url, browse } => {
                self.rt.standing = match std::mem::take(&mut self.rt.standing) {
                    Standing::LoggingIn {
                        via: LoginVia::Interactive,
                        key_expired,
                        ..
                    } => Standing::LoggingIn {
                        via: LoginVia::Interactive,
                        auth_url: Some(url.clone()),
                        key_expired,
                    },
                    // An auth key login that control answers with a URL
                    // needs the user after all.
                    other => Standing::NeedsLogin {
                        auth_url: Some(url.clone()),
                        key_expired: other.key_expired(),
                    },
                };
                if browse {
                    self.bus.send(Notify::BrowseToUrl { url });
                }
            }
            ControlEvent::Refused(message) => {
                tracing::warn!(%message, "Registration refused");
                // A refused re-authentication (auth key refused, or its
                // login URL declined) leaves the registration that still
                // stands as it was; one replacing an expired key has none
                // and keeps waiting for the user, as a new node does.
                if !self.rt.standing.key_expired() {
                    self.undo_reauth();
                }
                self.rt.standing = match std::mem::take(&mut self.rt.standing) {
                    Standing::LoggingIn {
                        auth_url,
                        key_expired,
                        ..
                    } if auth_url.is_some() || key_expired => Standing::NeedsLogin {
                        auth_url,
                        key_expired,
                    },
                    Standing::LoggingIn { .. } => Standing::default(),
                    other => other,
                };
                self.rt.error_reported = true;
                self.bus.send(Notify::Error { message });
            }
            ControlEvent::KeyExpired => {
                tracing::warn!("Node key expired at control");
                self.rt.standing = Standing::NeedsLogin {
                    auth_url: self.rt.standing.auth_url().map(str::to_owned),
                    key_expired: true,
                };
                self.rt.netmap = None;
                self.dp.clear();
            }
            ControlEvent::Registered(r) => self.on_registered(r),
            ControlEvent::NetMap(nm) => self.on_netmap(nm),
        }
    }

    /// Control refused a re-authentication of a registered profile: puts
    /// the prefs back, forgets the new key and resumes the registration
    /// that still stands (its map session parked on the refusal).
    fn undo_reauth(&mut self) {
        let Some(before) = self.rt.reauth_undo.take() else {
            return;
        };
        self.rt.pending_key = None;
        if let Err(e) = self.store.update_current(|p| p.prefs = before.clone()) {
            tracing::error!(error = %e, "Cannot restore the prefs after a refused login");
        }
        self.bus.send(Notify::Prefs { prefs: before });
        self.rt.standing = Standing::default();
        self.session = None;
        self.ensure_session(false);
    }

    fn on_registered(&mut self, r: Registered) {
        self.rt.control_error = None;
        self.rt.reauth_undo = None;
        let new_key = self.rt.pending_key.take();
        let was_login = matches!(self.rt.standing, Standing::LoggingIn { .. }) || new_key.is_some();
        let user = r.user.as_ref().map(|u| UserInfo {
            id: u.id,
            login_name: u.login_name.to_string(),
            display_name: u.display_name.clone(),
        });
        let key_changed = new_key.is_some();
        let saved = self.store.update_current(|p| {
            if let Some(k) = new_key {
                p.node_key = Some(k);
            }
            p.node_id = Some(r.node_id);
            p.user = user;
            p.prefs.logged_out = false;
        });
        if let Err(e) = saved {
            tracing::error!(error = %e, "Cannot save the registration");
        }
        if key_changed {
            let key = self.store.current().node_key.clone();
            self.dp.clear();
            self.rt.netmap = None;
            self.dp.set_node_key(key.as_ref());
        }
        self.rt.standing = Standing::Settled {
            machine_authorized: Some(r.machine_authorized),
        };
        tracing::info!(node = %r.node_id, authorized = r.machine_authorized, "Registered");
        if was_login {
            self.bus.send(Notify::LoginFinished);
        }
    }

    fn on_netmap(&mut self, nm: Arc<NetMap>) {
        if nm.self_node.expired {
            self.on_session(self.generation, ControlEvent::KeyExpired);
            return;
        }
        self.rt.control_error = None;
        // A map that says we are fine wins over an earlier "expired": right
        // after a re-authentication, control may still stream one map made
        // before it saw the new key.
        let authorized = nm.self_node.machine_authorized;
        self.rt.standing = match std::mem::take(&mut self.rt.standing) {
            Standing::Settled { .. } | Standing::NeedsLogin { auth_url: None, .. } => {
                Standing::Settled {
                    machine_authorized: Some(authorized),
                }
            }
            Standing::NeedsLogin {
                auth_url: Some(u), ..
            } => Standing::NeedsLogin {
                auth_url: Some(u),
                key_expired: false,
            },
            Standing::LoggingIn { via, auth_url, .. } => Standing::LoggingIn {
                via,
                auth_url,
                key_expired: false,
            },
        };
        if nm.self_node.machine_authorized {
            self.dp.apply_netmap(&nm);
        } else {
            self.dp.clear();
        }
        let domain = nm.domain.to_string();
        let user = match &nm.self_node.owner {
            weft_types::NodeOwner::User(id) => nm.user_profiles.get(id).map(|u| UserInfo {
                id: u.id,
                login_name: u.login_name.to_string(),
                display_name: u.display_name.clone(),
            }),
            weft_types::NodeOwner::Tags(_) => None,
        };
        let saved = self.store.update_current(|p| {
            p.tailnet = Some(domain);
            if user.is_some() {
                p.user = user;
            }
            p.node_id = Some(nm.self_node.id);
        });
        if let Err(e) = saved {
            tracing::error!(error = %e, "Cannot save the tailnet name");
        }
        let peers = nm.peers.len();
        self.rt.netmap = Some(nm);
        self.bus.send(Notify::NetMap { peers });
    }
}

fn host_info_changed(a: &Prefs, b: &Prefs) -> bool {
    a.hostname != b.hostname
        || a.shields_up != b.shields_up
        || a.advertise_tags != b.advertise_tags
        || a.run_ssh != b.run_ssh
}
