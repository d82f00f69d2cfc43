//! The control session: one task per (profile, login attempt) that pins the
//! server key, registers, and follows the map stream, reconnecting with
//! backoff. It reports what happens as [`SessionEvent`]s tagged with its
//! generation; the coordinator ignores events from sessions it replaced.
//!
//! ```text
//!   pin key ──▶ register ──Registered──▶ map stream ◀──┐
//!      ▲  │        │  NeedsAuth: report URL; long-poll  │ reconnect (backoff)
//!  backoff └───────┘  once login-interactive is asked   │
//!                  ◀── map says NotRegistered ──────────┘
//! ```
//!
//! The netmap survives reconnects ([`MapSession::restart`]), so the
//! coordinator only hears about real changes, and the data plane keeps the
//! last netmap while control is away.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio::time::timeout;
use weft_control_proto::MapSession;
use weft_types::control::{
    AuthKey, ErrorCode, ExpiryRequest, MapRequest, RefusalReason, RegisterAuth, RegisterRequest,
    RegisterResponse, Registered,
};
use weft_types::{
    CapabilityVersion, DiscoPublic, Endpoint, HostInfo, MachinePrivate, MachinePublic, NetMap,
    NodePrivate, NodePublic,
};

use super::control::{Backoff, ControlClient, ControlError, ControlTarget, MapEvent, MapUpdate};

/// How long one attempt to reach control may take (key fetch, register
/// without follow-up, opening the map stream) before it counts as failed.
pub const CONTACT_TIMEOUT: Duration = Duration::from_secs(10);
/// No map message or keep-alive for this long: the stream is dead.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(150);

/// How to prove the user's consent at registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginMode {
    /// Register the node key as it is: fine if control knows it, otherwise
    /// control hands out an auth URL (reported, then used once the user asks
    /// for an interactive login).
    Existing,
    /// Register with a pre-auth key.
    AuthKey(AuthKey),
}

/// Everything a session needs to start.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    pub generation: u64,
    pub url: String,
    pub machine_key: MachinePrivate,
    /// The pinned server key; `None` at first contact.
    pub pinned: Option<MachinePublic>,
    /// The node key to register (a new one during re-authentication).
    pub node_key: NodePrivate,
    /// The key being replaced, for a rotation.
    pub old_node_key: Option<NodePublic>,
    pub login: LoginMode,
    /// The user already asked for an interactive login.
    pub interactive: bool,
    /// Open the map stream after registering (`want_running`).
    pub want_map: bool,
    pub host_info: HostInfo,
    pub endpoints: Vec<Endpoint>,
    pub disco_key: DiscoPublic,
    /// Seed for the backoff jitter.
    pub seed: u64,
}

/// What the coordinator can tell a running session.
#[derive(Debug, Clone)]
pub enum SessionCmd {
    /// The user asked for an interactive login (`weft up`, `weft login`).
    Interactive,
    /// Our endpoints changed.
    Endpoints(Vec<Endpoint>),
    /// Our host info changed.
    HostInfo(HostInfo),
}

/// What a session reports.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// The server's key at first contact (to pin in the profile).
    ServerKey(MachinePublic),
    /// Control could not be reached (or the stream broke); retrying.
    Unreachable(String),
    /// A map stream is open again.
    Reachable,
    /// Control wants the user to log in at this URL; `browse` once the user
    /// asked for an interactive login (the session now waits for it).
    AuthUrl { url: String, browse: bool },
    /// Registration refused; the message is for the user.
    Refused(String),
    /// Our node key expired: only a new key (re-authentication) helps.
    KeyExpired,
    /// Registered (or re-registered after a restart).
    Registered(Registered),
    /// The netmap changed (the first one of a stream always counts).
    NetMap(Arc<NetMap>),
}

/// Tagged events go to the coordinator on this channel.
pub type EventTx = mpsc::UnboundedSender<(u64, SessionEvent)>;

/// A running session; dropping it stops the task.
#[derive(Debug)]
pub struct SessionHandle {
    pub cmds: mpsc::UnboundedSender<SessionCmd>,
    task: tokio::task::JoinHandle<()>,
}

impl SessionHandle {
    /// Sends a command (ignored if the task already ended).
    pub fn send(&self, cmd: SessionCmd) {
        let _ = self.cmds.send(cmd);
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a session task.
pub fn spawn<C: ControlClient + ?Sized>(
    client: Arc<C>,
    spec: SessionSpec,
    events: EventTx,
) -> SessionHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut s = Session::new(client, spec, events, rx);
        s.run().await;
    });
    SessionHandle { cmds: tx, task }
}

struct Session<C: ?Sized> {
    client: Arc<C>,
    spec: SessionSpec,
    events: EventTx,
    cmds: mpsc::UnboundedReceiver<SessionCmd>,
    backoff: Backoff,
    map: Option<MapSession>,
}

/// What the map phase ended with.
enum AfterMap {
    Reregister,
    Park,
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

impl<C: ControlClient + ?Sized> Session<C> {
    fn new(
        client: Arc<C>,
        spec: SessionSpec,
        events: EventTx,
        cmds: mpsc::UnboundedReceiver<SessionCmd>,
    ) -> Self {
        let backoff = Backoff::new(spec.seed);
        Self {
            client,
            spec,
            events,
            cmds,
            backoff,
            map: None,
        }
    }

    fn emit(&self, e: SessionEvent) {
        let _ = self.events.send((self.spec.generation, e));
    }

    async fn run(&mut self) {
        let Some(server_key) = self.pin_server_key().await else {
            return;
        };
        let target = ControlTarget {
            url: self.spec.url.clone(),
            machine_key: self.spec.machine_key.clone(),
            server_key,
        };
        loop {
            if !self.register(&target).await {
                return self.park().await;
            }
            if !self.spec.want_map {
                return self.park().await;
            }
            match self.follow_map(&target).await {
                AfterMap::Reregister => {
                    self.spec.login = LoginMode::Existing;
                    self.spec.old_node_key = None;
                }
                AfterMap::Park => return self.park().await,
            }
        }
    }

    /// Waits for commands until the coordinator drops the session.
    async fn park(&mut self) {
        while let Some(cmd) = self.cmds.recv().await {
            self.apply_cmd(cmd, None);
        }
    }

    fn apply_cmd(&mut self, cmd: SessionCmd, updates: Option<&mpsc::UnboundedSender<MapUpdate>>) {
        match cmd {
            SessionCmd::Interactive => self.spec.interactive = true,
            SessionCmd::Endpoints(e) => {
                self.spec.endpoints.clone_from(&e);
                if let Some(u) = updates {
                    let _ = u.send(MapUpdate::Endpoints(e));
                }
            }
            SessionCmd::HostInfo(h) => {
                self.spec.host_info = h.clone();
                if let Some(u) = updates {
                    let _ = u.send(MapUpdate::HostInfo(h));
                }
            }
        }
    }

    /// Sleeps for the next backoff delay, still taking commands. Returns
    /// `false` if the coordinator went away.
    async fn pause(&mut self) -> bool {
        let delay = self.backoff.next_delay();
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return true,
                cmd = self.cmds.recv() => match cmd {
                    Some(cmd) => self.apply_cmd(cmd, None),
                    None => return false,
                },
            }
        }
    }

    async fn pin_server_key(&mut self) -> Option<MachinePublic> {
        if let Some(k) = self.spec.pinned {
            return Some(k);
        }
        loop {
            let got = timeout(CONTACT_TIMEOUT, self.client.server_key(&self.spec.url)).await;
            match flatten(got, &self.spec.url) {
                Ok(k) => {
                    self.emit(SessionEvent::ServerKey(k));
                    return Some(k);
                }
                Err(e) => {
                    self.emit(SessionEvent::Unreachable(e.to_string()));
                    if !self.pause().await {
                        return None;
                    }
                }
            }
        }
    }

    fn register_request(&self, auth: RegisterAuth) -> RegisterRequest {
        RegisterRequest {
            version: CapabilityVersion::CURRENT,
            node_key: self.spec.node_key.public(),
            old_node_key: self.spec.old_node_key,
            auth,
            expiry: ExpiryRequest::Default,
            ephemeral: false,
            host_info: self.spec.host_info.clone(),
        }
    }

    /// Registers until it succeeds (`true`) or needs the user (`false`:
    /// the session parks and the coordinator decides what comes next).
    async fn register(&mut self, target: &ControlTarget) -> bool {
        let mut followup: Option<String> = None;
        loop {
            let auth = match (&followup, &self.spec.login) {
                (Some(url), _) => RegisterAuth::Followup {
                    auth_url: url.clone(),
                },
                (None, LoginMode::AuthKey(k)) => RegisterAuth::AuthKey(k.clone()),
                (None, LoginMode::Existing) => RegisterAuth::None,
            };
            let req = self.register_request(auth);
            let result = if followup.is_some() {
                // The long-poll waits for the user; only the transport bounds it.
                self.client.register(target, req).await
            } else {
                flatten(
                    timeout(CONTACT_TIMEOUT, self.client.register(target, req)).await,
                    &target.url,
                )
            };
            match result {
                Ok(RegisterResponse::Registered(r)) => {
                    self.backoff.reset();
                    self.emit(SessionEvent::Registered(r));
                    return true;
                }
                Ok(RegisterResponse::NeedsAuth { auth_url }) => {
                    let browse = self.spec.interactive;
                    self.emit(SessionEvent::AuthUrl {
                        url: auth_url.clone(),
                        browse,
                    });
                    if !browse && !self.wait_for_interactive().await {
                        return false;
                    }
                    if !browse {
                        self.emit(SessionEvent::AuthUrl {
                            url: auth_url.clone(),
                            browse: true,
                        });
                    }
                    followup = Some(auth_url);
                }
                Ok(RegisterResponse::NodeKeyExpired) => {
                    self.emit(SessionEvent::KeyExpired);
                    return false;
                }
                Ok(RegisterResponse::Refused(r)) => {
                    self.emit(SessionEvent::Refused(r.message));
                    if r.reason == RefusalReason::AuthUrlExpired && followup.is_some() {
                        // Start again: the next NeedsAuth carries a fresh URL.
                        followup = None;
                        self.spec.login = LoginMode::Existing;
                        continue;
                    }
                    return false;
                }
                Ok(RegisterResponse::LoggedOut) => {
                    self.emit(SessionEvent::Refused("control logged this node out".into()));
                    return false;
                }
                Err(e) => {
                    self.emit(SessionEvent::Unreachable(e.to_string()));
                    if !self.pause().await {
                        return false;
                    }
                }
            }
        }
    }

    /// Waits until the user asks for an interactive login. `false` if the
    /// coordinator went away.
    async fn wait_for_interactive(&mut self) -> bool {
        while !self.spec.interactive {
            match self.cmds.recv().await {
                Some(cmd) => self.apply_cmd(cmd, None),
                None => return false,
            }
        }
        true
    }

    async fn follow_map(&mut self, target: &ControlTarget) -> AfterMap {
        loop {
            let (utx, urx) = mpsc::unbounded_channel();
            let req = MapRequest {
                version: CapabilityVersion::CURRENT,
                node_key: self.spec.node_key.public(),
                disco_key: self.spec.disco_key,
                endpoints: self.spec.endpoints.clone(),
                host_info: self.spec.host_info.clone(),
                stream: true,
            };
            let opened = flatten(
                timeout(CONTACT_TIMEOUT, self.client.map(target, req, urx)).await,
                &target.url,
            );
            let outcome = match opened {
                Ok(stream) => self.read_stream(stream, &utx).await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => {}
                Err(e) => match e.code() {
                    Some(ErrorCode::NodeKeyExpired) => {
                        self.emit(SessionEvent::KeyExpired);
                        return AfterMap::Park;
                    }
                    Some(ErrorCode::NotRegistered | ErrorCode::NotAuthorized) => {
                        // Register again (after a pause, so a server that keeps
                        // saying this is not hammered).
                        tracing::debug!(error = %e, "Map refused; registering again");
                        if !self.pause().await {
                            return AfterMap::Park;
                        }
                        return AfterMap::Reregister;
                    }
                    _ => self.emit(SessionEvent::Unreachable(e.to_string())),
                },
            }
            if !self.pause().await {
                return AfterMap::Park;
            }
        }
    }

    /// Reads one map stream until it ends. `Ok` for a clean end or a stall
    /// (both mean: reconnect), `Err` for a failure to classify.
    async fn read_stream(
        &mut self,
        mut stream: super::control::MapStream,
        utx: &mpsc::UnboundedSender<MapUpdate>,
    ) -> Result<(), ControlError> {
        let mut first = true;
        let map = self
            .map
            .get_or_insert_with(|| MapSession::new(STALL_TIMEOUT, now()));
        map.restart(now());
        loop {
            let stall = self
                .map
                .as_ref()
                .and_then(MapSession::poll_timeout)
                .map_or_else(
                    || tokio::time::Instant::now() + STALL_TIMEOUT,
                    |(t, _)| tokio::time::Instant::from_std(t),
                );
            tokio::select! {
                item = stream.next() => match item {
                    Some(Ok(MapEvent::Response(resp))) => {
                        let Some(map) = self.map.as_mut() else { return Ok(()) };
                        match map.handle_response(resp, now()) {
                            Ok(diff) => {
                                let changed = (!diff.is_empty()).then(|| map.netmap().cloned()).flatten();
                                if first {
                                    first = false;
                                    self.backoff.reset();
                                    self.emit(SessionEvent::Reachable);
                                }
                                if let Some(nm) = changed {
                                    self.emit(SessionEvent::NetMap(Arc::new(nm)));
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "Map stream out of step; reconnecting");
                                return Err(ControlError::Unreachable { url: self.spec.url.clone(), cause: e.to_string() });
                            }
                        }
                    }
                    Some(Ok(MapEvent::KeepAlive)) => {
                        if let Some(map) = self.map.as_mut() {
                            map.handle_keep_alive(now());
                        }
                    }
                    Some(Err(e)) => return Err(e),
                    None => {
                        return Err(ControlError::Unreachable {
                            url: self.spec.url.clone(),
                            cause: "the map stream ended".into(),
                        })
                    }
                },
                cmd = self.cmds.recv() => match cmd {
                    Some(cmd) => self.apply_cmd(cmd, Some(utx)),
                    None => return Ok(()),
                },
                () = tokio::time::sleep_until(stall) => {
                    if let Some(map) = self.map.as_mut()
                        && let Err(e) = map.handle_timeout(now())
                    {
                        return Err(ControlError::Unreachable { url: self.spec.url.clone(), cause: e.to_string() });
                    }
                }
            }
        }
    }
}

fn flatten<T>(
    r: Result<Result<T, ControlError>, tokio::time::error::Elapsed>,
    url: &str,
) -> Result<T, ControlError> {
    r.unwrap_or_else(|_| {
        Err(ControlError::Unreachable {
            url: url.to_owned(),
            cause: format!("no answer within {} s", CONTACT_TIMEOUT.as_secs()),
        })
    })
}

/// Expires `node_key` at control (logout): one register exchange with
/// [`ExpiryRequest::Now`], bounded by [`CONTACT_TIMEOUT`].
///
/// # Errors
/// The control error, or a refusal as its message.
pub async fn logout<C: ControlClient + ?Sized>(
    client: &C,
    target: &ControlTarget,
    node_key: &NodePrivate,
    host_info: HostInfo,
) -> Result<(), String> {
    let req = RegisterRequest {
        version: CapabilityVersion::CURRENT,
        node_key: node_key.public(),
        old_node_key: None,
        auth: RegisterAuth::None,
        expiry: ExpiryRequest::Now,
        ephemeral: false,
        host_info,
    };
    match flatten(
        timeout(CONTACT_TIMEOUT, client.register(target, req)).await,
        &target.url,
    ) {
        Ok(
            RegisterResponse::LoggedOut
            | RegisterResponse::NodeKeyExpired
            | RegisterResponse::NeedsAuth { .. },
        ) => Ok(()),
        Ok(RegisterResponse::Registered(_)) => Err("control did not expire the node key".into()),
        Ok(RegisterResponse::Refused(r)) => Err(r.message),
        Err(e) => Err(e.to_string()),
    }
}

/// Fetches the server key with [`CONTACT_TIMEOUT`] (for logout of a profile
/// that never pinned one).
///
/// # Errors
/// As [`ControlClient::server_key`].
pub async fn fetch_key<C: ControlClient + ?Sized>(
    client: &C,
    url: &str,
) -> Result<MachinePublic, ControlError> {
    flatten(timeout(CONTACT_TIMEOUT, client.server_key(url)).await, url)
}
