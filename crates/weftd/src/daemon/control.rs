//! The control task: one per (profile, login attempt). It pins the server
//! key, then runs one [`weft_client::Session`] after another (the
//! conversation itself is `weft-control-proto`'s `ControlClient`, driven by
//! `weft-client`), reconnecting with backoff. What stays here is the
//! daemon's policy: when to register and when to resume the map, waiting
//! for the user before following an auth URL, and reporting what happens
//! as [`ControlEvent`]s tagged with the task's generation (the coordinator
//! ignores events from tasks it replaced). Key rotation is the
//! coordinator's: it hands the task the node key to register and the one it
//! replaces.
//!
//! ```text
//!   pin key ──▶ connect: register ──Registered──▶ map stream ◀──────┐
//!      ▲  │        │   NeedsAuth: report the URL; once     │ reconnect:
//!  backoff └───────┘   the user asks, register again with  │ resume the map
//!                      the follow-up (it waits on control) │ (backoff)
//!                  ◀── map refused: not registered ────────┘
//! ```
//!
//! A `server_busy` refusal (the server sheds registrations beyond its
//! capacity) is not a verdict: the task reports it like an unreachable
//! server and registers again after the delay the server named.
//!
//! The netmap survives reconnects (the [`MapSession`] goes from one session
//! to the next), so the coordinator only hears about real changes, and the
//! data plane keeps the last netmap while control is away.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant as TokioInstant, timeout};
use weft_client::{
    ClientError, ClientParams, ConnectOptions, ControlUrl, MapSession, Session, SessionEvent,
    Target,
};
use weft_types::control::{
    ErrorCode, ExpiryRequest, RefusalReason, RegisterAuth, RegisterRequest, RegisterResponse,
    Registered,
};
use weft_types::{CapabilityVersion, Endpoint, HostInfo, MachinePrivate, MachinePublic, NetMap};

/// Reconnect pacing (0.5 s doubling to 30 s, ±25 % jitter) is the client
/// library's.
pub use weft_client::Backoff;

/// How long one attempt to reach control may take (key fetch, the answer to
/// a `register` that does not wait for the user) before it counts as failed.
pub const CONTACT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait when a busy server names no delay.
const BUSY_DEFAULT_MS: u64 = 5_000;
/// The longest delay a busy server's answer makes this node wait.
const BUSY_MAX_MS: u64 = 60_000;

/// Everything a control task needs to start.
#[derive(Debug, Clone)]
pub struct ControlSpec {
    pub generation: u64,
    pub url: String,
    /// The profile's extra CA file for an `https://` server (`--login-server-ca`).
    pub ca_file: Option<String>,
    pub machine_key: MachinePrivate,
    /// The pinned server key; `None` at first contact.
    pub pinned: Option<MachinePublic>,
    /// What the node registers and maps with: the node key (a new one
    /// during re-authentication) and the one it replaces, the proof of
    /// consent, whether the user already asked for an interactive login,
    /// whether to open the map stream (`want_running`), host info,
    /// endpoints and disco key.
    pub params: ClientParams,
    /// Seed for the backoff jitter.
    pub seed: u64,
}

/// What the coordinator can tell a running task.
#[derive(Debug, Clone)]
pub enum ControlCmd {
    /// The user asked for an interactive login (`weft up`, `weft login`).
    Interactive,
    /// Our endpoints changed.
    Endpoints(Vec<Endpoint>),
    /// Our home relay region changed.
    HomeRelay(Option<u16>),
    /// Our host info changed.
    HostInfo(HostInfo),
}

/// What a control task reports.
#[derive(Debug, Clone)]
pub enum ControlEvent {
    /// The server's key at first contact (to pin in the profile).
    ServerKey(MachinePublic),
    /// Control could not be reached (or the stream broke); retrying.
    Unreachable(String),
    /// A map stream is open again.
    Reachable,
    /// Control wants the user to log in at this URL; `browse` once the user
    /// asked for an interactive login (the task now waits for it).
    AuthUrl { url: String, browse: bool },
    /// Registration refused; the message is for the user.
    Refused(String),
    /// Our node key expired: only a new key (re-authentication) helps.
    KeyExpired,
    /// Registered (or re-registered after a restart).
    Registered(Registered),
    /// The netmap changed.
    NetMap(Arc<NetMap>),
}

/// Tagged events go to the coordinator on this channel.
pub type EventTx = mpsc::UnboundedSender<(u64, ControlEvent)>;

/// A running task; dropping it stops the task (and closes its connection).
#[derive(Debug)]
pub struct ControlHandle {
    cmds: mpsc::UnboundedSender<ControlCmd>,
    task: tokio::task::JoinHandle<()>,
}

impl ControlHandle {
    /// Sends a command (ignored if the task already ended).
    pub fn send(&self, cmd: ControlCmd) {
        let _ = self.cmds.send(cmd);
    }
}

impl Drop for ControlHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a control task.
pub fn spawn(opts: ConnectOptions, spec: ControlSpec, events: EventTx) -> ControlHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut t = Task::new(opts, spec, events, rx);
        t.run().await;
    });
    ControlHandle { cmds: tx, task }
}

struct Task {
    opts: ConnectOptions,
    spec: ControlSpec,
    events: EventTx,
    cmds: mpsc::UnboundedReceiver<ControlCmd>,
    backoff: Backoff,
    /// The netmap and stream state, handed from one session to the next.
    map: Option<MapSession>,
    /// Control accepted our node key since this task started: a reconnect
    /// resumes the map stream instead of registering.
    registered: bool,
    /// The auth URL of the login under way: the follow-up goes there.
    auth_url: Option<String>,
    /// Our home relay region, given to each session.
    home_relay: Option<u16>,
}

/// What comes after a session.
enum Next {
    /// Connect again after the backoff pause.
    Retry,
    /// Connect again at once (the user just asked to log in).
    Now,
    /// Connect again after this delay (the server asked for it).
    After(Duration),
    /// Nothing to do until the coordinator replaces the task.
    Park,
}

impl Task {
    fn new(
        opts: ConnectOptions,
        spec: ControlSpec,
        events: EventTx,
        cmds: mpsc::UnboundedReceiver<ControlCmd>,
    ) -> Self {
        let backoff = Backoff::new(spec.seed);
        Self {
            opts,
            spec,
            events,
            cmds,
            backoff,
            map: None,
            registered: false,
            auth_url: None,
            home_relay: None,
        }
    }

    fn emit(&self, e: ControlEvent) {
        let _ = self.events.send((self.spec.generation, e));
    }

    async fn run(&mut self) {
        let Some(server_key) = self.pin_server_key().await else {
            return;
        };
        let url = match control_url(&self.spec.url, self.spec.ca_file.as_deref()) {
            Ok(u) => u,
            Err(e) => {
                self.emit(ControlEvent::Unreachable(e.to_string()));
                return self.park().await;
            }
        };
        let target = Target {
            url,
            machine_key: self.spec.machine_key.clone(),
            server_key,
        };
        loop {
            let next = self.connect(&target).await;
            match next {
                Next::Now => {}
                Next::Retry => {
                    let delay = self.backoff.next_delay();
                    if !self.pause(delay).await {
                        return;
                    }
                }
                Next::After(delay) => {
                    if !self.pause(delay).await {
                        return;
                    }
                }
                Next::Park => return self.park().await,
            }
        }
    }

    /// Waits for commands until the coordinator drops the task.
    async fn park(&mut self) {
        while let Some(cmd) = self.cmds.recv().await {
            self.apply_cmd(cmd, None);
        }
    }

    fn apply_cmd(&mut self, cmd: ControlCmd, session: Option<&Session>) {
        match cmd {
            ControlCmd::Interactive => self.spec.params.interactive = true,
            ControlCmd::Endpoints(e) => {
                self.spec.params.endpoints.clone_from(&e);
                if let Some(s) = session {
                    s.update_endpoints(e);
                }
            }
            ControlCmd::HomeRelay(r) => {
                self.home_relay = r;
                if let Some(s) = session {
                    s.update_home_relay(r);
                }
            }
            ControlCmd::HostInfo(h) => {
                self.spec.params.host_info = h.clone();
                if let Some(s) = session {
                    s.update_host_info(h);
                }
            }
        }
    }

    /// Sleeps for `delay`, still taking commands. Returns `false` if the
    /// coordinator went away.
    async fn pause(&mut self, delay: Duration) -> bool {
        let deadline = TokioInstant::now() + delay;
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

    /// Waits until the user asks for an interactive login. `false` if the
    /// coordinator went away.
    async fn wait_for_interactive(&mut self) -> bool {
        while !self.spec.params.interactive {
            match self.cmds.recv().await {
                Some(cmd) => self.apply_cmd(cmd, None),
                None => return false,
            }
        }
        true
    }

    async fn pin_server_key(&mut self) -> Option<MachinePublic> {
        if let Some(k) = self.spec.pinned {
            return Some(k);
        }
        loop {
            match fetch_key(&self.opts, &self.spec.url, self.spec.ca_file.as_deref()).await {
                Ok(k) => {
                    self.emit(ControlEvent::ServerKey(k));
                    return Some(k);
                }
                Err(e) => {
                    self.emit(ControlEvent::Unreachable(e.to_string()));
                    let delay = self.backoff.next_delay();
                    if !self.pause(delay).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Runs one session until it ends; says what comes next.
    async fn connect(&mut self, target: &Target) -> Next {
        let mut params = self.spec.params.clone();
        let resume = self.registered;
        if let Some(url) = self.auth_url.as_ref().filter(|_| params.interactive) {
            params.auth = RegisterAuth::Followup {
                auth_url: url.clone(),
            };
        }
        let interactive = params.interactive;
        // A register that does not wait for the user gets an answer soon.
        let waits_for_user = interactive && matches!(params.auth, RegisterAuth::Followup { .. });
        let map = self.map.take();
        let opened = if resume {
            Session::resume(target, params, map, &self.opts).await
        } else {
            Session::start(target, params, map, &self.opts).await
        };
        let mut session = match opened {
            Ok(s) => s,
            Err(e) => {
                self.emit(ControlEvent::Unreachable(e.to_string()));
                return Next::Retry;
            }
        };
        if self.home_relay.is_some() {
            session.update_home_relay(self.home_relay);
        }
        let mut answer_by =
            (!resume && !waits_for_user).then(|| TokioInstant::now() + CONTACT_TIMEOUT);
        let mut first_map = true;
        loop {
            let event = tokio::select! {
                e = session.next_event() => e,
                cmd = self.cmds.recv() => {
                    match cmd {
                        Some(cmd) => self.apply_cmd(cmd, Some(&session)),
                        None => return Next::Park,
                    }
                    continue;
                }
                () = sleep_until(answer_by) => Err(ClientError::Unreachable {
                    url: target.url.to_string(),
                    cause: format!("no answer within {} s", CONTACT_TIMEOUT.as_secs()),
                }),
            };
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    self.map = session.close().await;
                    return self.after_error(&e);
                }
            };
            match event {
                SessionEvent::NeedsAuth { auth_url } => {
                    answer_by = None;
                    self.auth_url = Some(auth_url.clone());
                    let browse = self.spec.params.interactive;
                    self.emit(ControlEvent::AuthUrl {
                        url: auth_url.clone(),
                        browse,
                    });
                    if interactive {
                        // The follow-up is out; it waits for the user.
                        continue;
                    }
                    self.map = session.close().await;
                    if !browse {
                        if !self.wait_for_interactive().await {
                            return Next::Park;
                        }
                        self.emit(ControlEvent::AuthUrl {
                            url: auth_url,
                            browse: true,
                        });
                    }
                    return Next::Now;
                }
                SessionEvent::Registered(r) => {
                    answer_by = None;
                    self.backoff.reset();
                    self.registered = true;
                    self.auth_url = None;
                    // Later reconnects resume the map with this key; a new
                    // registration (control forgot us) starts afresh.
                    self.spec.params.auth = RegisterAuth::None;
                    self.spec.params.old_node_key = None;
                    let authorized = r.machine_authorized;
                    self.emit(ControlEvent::Registered(r));
                    if !self.spec.params.map {
                        return Next::Park;
                    }
                    if !authorized {
                        // No map until an admin approves: ask again later.
                        self.registered = false;
                        self.map = session.close().await;
                        return Next::Retry;
                    }
                }
                SessionEvent::NodeKeyExpired => {
                    self.emit(ControlEvent::KeyExpired);
                    return Next::Park;
                }
                SessionEvent::LoggedOut => {
                    self.emit(ControlEvent::Refused("control logged this node out".into()));
                    return Next::Park;
                }
                SessionEvent::Refused(r) if r.reason == RefusalReason::ServerBusy => {
                    // Not a verdict on this node: the server is at capacity
                    // and said when to come back (bounded, in case it asks
                    // for more than a minute).
                    let delay = Duration::from_millis(
                        r.retry_after_ms.unwrap_or(BUSY_DEFAULT_MS).min(BUSY_MAX_MS),
                    );
                    tracing::info!(message = %r.message, ?delay, "Control is busy; registering again after its delay");
                    self.emit(ControlEvent::Unreachable(r.message));
                    self.map = session.close().await;
                    return Next::After(delay);
                }
                SessionEvent::Refused(r) => {
                    self.emit(ControlEvent::Refused(r.message));
                    if r.reason == RefusalReason::AuthUrlExpired && self.auth_url.is_some() {
                        // Start again: the next answer carries a fresh URL
                        // (the session already asked when the user is at hand).
                        self.auth_url = None;
                        if interactive {
                            answer_by = Some(TokioInstant::now() + CONTACT_TIMEOUT);
                            continue;
                        }
                        self.map = session.close().await;
                        return Next::Now;
                    }
                    return Next::Park;
                }
                SessionEvent::NetMap { diff, netmap } => {
                    answer_by = None;
                    if first_map {
                        first_map = false;
                        self.backoff.reset();
                        self.emit(ControlEvent::Reachable);
                    }
                    if !diff.is_empty() {
                        self.emit(ControlEvent::NetMap(netmap));
                    }
                }
                // This connection sends no checks or recordings (see
                // `ssh_check`, `ssh_recording`).
                SessionEvent::SshCheck(_) | SessionEvent::SshRecording(_) => {}
            }
        }
    }

    /// Decides what a session's error means.
    fn after_error(&mut self, e: &ClientError) -> Next {
        match e.code() {
            Some(ErrorCode::NodeKeyExpired) => {
                self.emit(ControlEvent::KeyExpired);
                Next::Park
            }
            Some(ErrorCode::NotRegistered | ErrorCode::NotAuthorized) => {
                // Register again (after a pause, so a server that keeps
                // saying this is not hammered).
                tracing::debug!(error = %e, "Map refused; registering again");
                self.registered = false;
                Next::Retry
            }
            _ => {
                self.emit(ControlEvent::Unreachable(e.to_string()));
                Next::Retry
            }
        }
    }
}

async fn sleep_until(deadline: Option<TokioInstant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Bounds a contact with control by [`CONTACT_TIMEOUT`].
async fn bounded<T>(
    url: &str,
    work: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    timeout(CONTACT_TIMEOUT, work).await.unwrap_or_else(|_| {
        Err(ClientError::Unreachable {
            url: url.to_owned(),
            cause: format!("no answer within {} s", CONTACT_TIMEOUT.as_secs()),
        })
    })
}

/// Parses a profile's control server URL with its extra CA file
/// (`--login-server-ca`), if any.
///
/// # Errors
/// The URL does not parse.
pub fn control_url(url: &str, ca_file: Option<&str>) -> Result<ControlUrl, ClientError> {
    let parsed: ControlUrl = url.parse()?;
    Ok(parsed.with_ca_file(ca_file.map(std::path::PathBuf::from)))
}

/// Fetches the server key (`GET /key`), bounded by [`CONTACT_TIMEOUT`].
///
/// # Errors
/// The URL does not parse, or the server cannot be reached; the message
/// names the server and the cause.
pub async fn fetch_key(
    opts: &ConnectOptions,
    url: &str,
    ca_file: Option<&str>,
) -> Result<MachinePublic, ClientError> {
    let parsed = control_url(url, ca_file)?;
    let key = bounded(url, opts.dialer.0.fetch_key(&parsed, CONTACT_TIMEOUT)).await?;
    Ok(key.public_key)
}

/// Expires `node_key` at control (logout): one register exchange with
/// [`ExpiryRequest::Now`], bounded by [`CONTACT_TIMEOUT`].
///
/// # Errors
/// The control error, or a refusal as its message.
pub async fn logout(
    opts: &ConnectOptions,
    target: &Target,
    node_key: weft_types::NodePublic,
    host_info: HostInfo,
) -> Result<(), String> {
    let req = RegisterRequest {
        version: CapabilityVersion::CURRENT,
        node_key,
        old_node_key: None,
        auth: RegisterAuth::None,
        expiry: ExpiryRequest::Now,
        ephemeral: false,
        host_info,
    };
    let answer = bounded(
        target.url.as_str(),
        weft_client::register(target, req, opts),
    )
    .await;
    match answer {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_server_is_named_with_the_cause() {
        // A port on loopback where nothing listens.
        let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        drop(sock);
        let url = format!("http://127.0.0.1:{port}");
        let err = fetch_key(&ConnectOptions::default(), &url, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&url), "{err}");
        assert!(err.to_lowercase().contains("refused"), "{err}");
    }

    #[tokio::test]
    async fn a_bad_url_is_refused_with_a_message() {
        let err = fetch_key(&ConnectOptions::default(), "ftp://x", None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("ftp://x"), "{err}");
    }
}
