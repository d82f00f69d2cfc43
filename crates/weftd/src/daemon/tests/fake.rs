//! A scripted control server and a recording data plane.
//!
//! The control server is in memory but speaks the real protocol: the fake
//! is the [`Dialer`] of the daemon's `ConnectOptions`, answers `GET /key`
//! itself, and serves each upgraded connection over a `tokio::io::duplex`
//! pipe with the protocol crate's `ServerConnection` (Noise, frames,
//! keep-alives). So the daemon's control task, `weft-client`'s session and
//! driver and the sans-IO `ControlClient` all run as in production; only
//! what control decides is scripted here.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
use tokio::sync::{Notify as TokioNotify, mpsc, oneshot};
use weft_client::{ClientError, ConnectOptions, ControlUrl, Dialer, SharedDialer, Upgraded};
use weft_control_proto::{
    ChannelConfig, Connection, Event, ServerConnection, UpgradeHeaders, UpgradeRefused,
    UpgradeRequest,
};
use weft_disco::PingOutcome;
use weft_types::control::{
    ClientMessage, ErrorCode, ExpiryRequest, KeyResponse, ProtocolError, Refusal, RefusalReason,
    RegisterAuth, RegisterRequest, RegisterResponse, Registered, ServerMessage,
};
use weft_types::netmap::{MapBody, MapResponse};
use weft_types::{
    CapabilityVersion, DiscoPrivate, DiscoPublic, MachinePrivate, MachinePublic, NetMap, NodeId,
    NodePrivate, NodePublic, UserId, UserProfile,
};

use crate::daemon::config::tests::netmap;
use crate::daemon::dataplane::{DataPlane, PeerLive};

/// Something a test makes control do on the newest map stream.
#[derive(Debug)]
pub enum Push {
    /// The connection breaks (as a reset would).
    Reset,
    /// Control sends this error and closes the connection.
    Error(ErrorCode, String),
}

/// What the fake control server knows and does.
#[derive(Default)]
pub struct FakeState {
    /// URLs that answer; others are unreachable.
    pub up: BTreeSet<String>,
    pub auth_keys: BTreeSet<String>,
    /// Registered node keys → node id.
    pub nodes: BTreeMap<NodePublic, NodeId>,
    pub expired: BTreeSet<NodePublic>,
    /// Auth URLs handed out → approved.
    pub auth_urls: BTreeMap<String, bool>,
    /// Auth URLs an administrator declined.
    pub declined: BTreeSet<String>,
    /// Answer this many registrations with `server_busy` (retry after
    /// [`BUSY_RETRY_MS`]) before serving them.
    pub busy: u32,
    pub register_calls: Vec<RegisterRequest>,
    pub map_calls: usize,
    pub key_calls: usize,
    /// The open map streams (the last one is current).
    pub streams: Vec<mpsc::UnboundedSender<Push>>,
    /// What nodes sent on open map streams (endpoints, host info).
    pub updates: Vec<ClientMessage>,
    pub next_node: i64,
    /// Machine keys that connected.
    pub machines: BTreeSet<MachinePublic>,
}

#[derive(Clone, Default)]
pub struct FakeControl {
    pub state: Arc<Mutex<FakeState>>,
    pub approved: Arc<TokioNotify>,
}

pub const URL: &str = "http://198.18.0.1:8080";
pub const URL2: &str = "http://198.18.0.2:8080";

fn server_private() -> MachinePrivate {
    MachinePrivate::from_bytes([77; 32])
}

pub fn server_key() -> MachinePublic {
    server_private().public()
}

/// The delay a busy fake control names.
pub const BUSY_RETRY_MS: u64 = 3_000;

/// The clock the client's driver reads (tokio's, so paused time moves it).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl FakeControl {
    pub fn new() -> Self {
        let f = Self::default();
        {
            let mut s = f.s();
            s.up.insert(URL.into());
            s.up.insert(URL2.into());
            s.auth_keys.insert("tskey-good".into());
            s.next_node = 10;
        }
        f
    }

    /// The daemon's connection options with this fake behind them.
    pub fn options(&self) -> ConnectOptions {
        ConnectOptions {
            dialer: SharedDialer(Arc::new(self.clone())),
            ..ConnectOptions::default()
        }
    }

    pub fn s(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    pub fn approve_all(&self) {
        for v in self.s().auth_urls.values_mut() {
            *v = true;
        }
        self.approved.notify_waiters();
    }

    /// Declines every login waiting at an auth URL (the admin's "no").
    pub fn decline_all(&self) {
        {
            let mut s = self.s();
            let waiting: Vec<String> = s.auth_urls.keys().cloned().collect();
            s.declined.extend(waiting);
        }
        self.approved.notify_waiters();
    }

    /// Makes control do `p` on the newest map stream.
    pub fn push(&self, p: Push) {
        if let Some(tx) = self.s().streams.last() {
            let _ = tx.send(p);
        }
    }

    /// Ends every open stream and makes `url` unreachable (or reachable).
    pub fn set_up(&self, url: &str, up: bool) {
        let mut s = self.s();
        if up {
            s.up.insert(url.into());
        } else {
            s.up.remove(url);
            s.streams.clear();
        }
    }

    fn unreachable(url: &str) -> ClientError {
        ClientError::Unreachable {
            url: url.into(),
            cause: "connection refused".into(),
        }
    }

    fn register_node(s: &mut FakeState, key: NodePublic, old: Option<NodePublic>) -> Registered {
        let id = match old.and_then(|o| s.nodes.remove(&o)) {
            Some(id) => id,
            None => {
                s.next_node += 1;
                NodeId(s.next_node)
            }
        };
        s.nodes.insert(key, id);
        s.expired.remove(&key);
        Registered {
            node_id: id,
            user: Some(user()),
            tags: BTreeSet::new(),
            machine_authorized: true,
            key_expiry: None,
        }
    }

    /// Control's answer to `register` on a connection to `url`; a follow-up
    /// waits for the approval. `None`: control went away meanwhile.
    async fn answer_register(self, url: String, req: RegisterRequest) -> Option<RegisterResponse> {
        loop {
            let approved = self.approved.notified();
            {
                let mut s = self.s();
                if !s.up.contains(&url) {
                    return None;
                }
                s.register_calls.push(req.clone());
                if s.busy > 0 {
                    s.busy -= 1;
                    return Some(RegisterResponse::Refused(Refusal {
                        reason: RefusalReason::ServerBusy,
                        message: "the control server is busy registering other nodes (1 at once); this node will try again in 3.0 s".into(),
                        retry_after_ms: Some(BUSY_RETRY_MS),
                    }));
                }
                if req.expiry == ExpiryRequest::Now {
                    s.nodes.remove(&req.node_key);
                    return Some(RegisterResponse::LoggedOut);
                }
                if s.expired.contains(&req.node_key) {
                    return Some(RegisterResponse::NodeKeyExpired);
                }
                match &req.auth {
                    RegisterAuth::AuthKey(k) => {
                        if s.auth_keys.contains(&k.0) {
                            return Some(RegisterResponse::Registered(Self::register_node(
                                &mut s,
                                req.node_key,
                                req.old_node_key,
                            )));
                        }
                        return Some(RegisterResponse::Refused(Refusal {
                            reason: RefusalReason::InvalidAuthKey,
                            message: "invalid auth key: unknown".into(),
                            retry_after_ms: None,
                        }));
                    }
                    RegisterAuth::None => {
                        if req.old_node_key.is_none() && s.nodes.contains_key(&req.node_key) {
                            let id = s.nodes[&req.node_key];
                            return Some(RegisterResponse::Registered(Registered {
                                node_id: id,
                                user: Some(user()),
                                tags: BTreeSet::new(),
                                machine_authorized: true,
                                key_expiry: None,
                            }));
                        }
                        let url = format!("{url}/a/{}", s.auth_urls.len() + 1);
                        s.auth_urls.insert(url.clone(), false);
                        return Some(RegisterResponse::NeedsAuth { auth_url: url });
                    }
                    RegisterAuth::Followup { auth_url } => {
                        if s.declined.contains(auth_url) {
                            return Some(RegisterResponse::Refused(Refusal {
                                reason: RefusalReason::AccessDenied,
                                message: "the login was declined".into(),
                                retry_after_ms: None,
                            }));
                        }
                        if s.auth_urls.get(auth_url) == Some(&true) {
                            return Some(RegisterResponse::Registered(Self::register_node(
                                &mut s,
                                req.node_key,
                                req.old_node_key,
                            )));
                        }
                        s.register_calls.pop(); // count a long-poll once
                    }
                }
            }
            approved.await;
        }
    }
}

pub fn user() -> UserProfile {
    UserProfile {
        id: UserId(1),
        login_name: "alice@example.com".parse().unwrap(),
        display_name: "Alice".into(),
        profile_pic_url: None,
    }
}

/// The netmap the fake serves to `key` (node `id`): self plus peers 2 and 3.
pub fn map_for(key: NodePublic, id: NodeId) -> NetMap {
    let mut nm = netmap(1, &[2, 3]);
    nm.self_node.node_key = key;
    nm.self_node.id = id;
    nm.user_profiles.insert(UserId(1), user());
    nm
}

impl Dialer for FakeControl {
    fn fetch_key<'a>(
        &'a self,
        url: &'a ControlUrl,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<KeyResponse, ClientError>> {
        let mut s = self.s();
        s.key_calls += 1;
        let r = if s.up.contains(url.as_str()) {
            Ok(KeyResponse {
                public_key: server_key(),
                capability_version: CapabilityVersion::CURRENT,
                min_capability_version: CapabilityVersion::MIN_SUPPORTED,
            })
        } else {
            Err(Self::unreachable(url.as_str()))
        };
        Box::pin(async move { r })
    }

    fn upgrade<'a>(
        &'a self,
        url: &'a ControlUrl,
        request: &'a UpgradeRequest,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<Upgraded, ClientError>> {
        let r = self.accept(url, request);
        Box::pin(async move { r })
    }
}

impl FakeControl {
    /// Answers an upgrade: refused when `url` is down, a failed handshake
    /// when the client pinned another key (as a real server answers).
    fn accept(&self, url: &ControlUrl, request: &UpgradeRequest) -> Result<Upgraded, ClientError> {
        if !self.s().up.contains(url.as_str()) {
            return Err(Self::unreachable(url.as_str()));
        }
        let capability = request.capability.to_string();
        let headers = UpgradeHeaders {
            upgrade: Some("weft-control"),
            capability: Some(&capability),
            handshake: Some(&request.handshake),
        };
        let accepted = Connection::accept(
            &server_private(),
            &headers,
            ChannelConfig::for_server(),
            [9; 32],
            now(),
        )
        .map_err(|e| ClientError::Upgrade {
            url: url.to_string(),
            source: UpgradeRefused::Status {
                status: e.status(),
                message: e.to_string(),
            },
        })?;
        self.s().machines.insert(accepted.machine_key);
        let (client, server) = tokio::io::duplex(64 << 10);
        tokio::spawn(
            self.clone()
                .serve(url.to_string(), accepted.connection, server),
        );
        Ok(Upgraded {
            io: Box::new(client),
            leftover: Default::default(),
        })
    }

    /// Serves one connection until either side ends it.
    async fn serve(self, url: String, mut conn: ServerConnection, io: DuplexStream) {
        type Pending = Pin<Box<dyn Future<Output = Option<RegisterResponse>> + Send>>;
        let (mut rd, mut wr) = tokio::io::split(io);
        let (push_tx, mut push_rx) = mpsc::unbounded_channel();
        // Handed to the state once a map stream opens; until then it keeps
        // `push_rx` open.
        let mut push_tx = Some(push_tx);
        let mut register: Option<Pending> = None;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            while let Some(bytes) = conn.poll_transmit() {
                if wr.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            let deadline = conn
                .poll_timeout()
                .map(|(t, _)| tokio::time::Instant::from_std(t));
            let mut close = false;
            tokio::select! {
                r = rd.read(&mut buf) => {
                    let n = match r {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if conn.handle_input(&buf[..n], now()).is_err() {
                        return;
                    }
                    while let Some(ev) = conn.poll_event() {
                        let Event::Message(msg) = ev else { continue };
                        match msg {
                            ClientMessage::Register(req) => {
                                register = Some(Box::pin(
                                    self.clone().answer_register(url.clone(), req),
                                ));
                            }
                            ClientMessage::Map(req) => {
                                let opened = self.open_map(req.node_key, &mut conn);
                                match opened {
                                    Some(()) => {
                                        if let Some(tx) = push_tx.take() {
                                            self.s().streams.push(tx);
                                        }
                                    }
                                    None => close = true,
                                }
                            }
                            m @ (ClientMessage::Endpoints(_) | ClientMessage::HostInfo(_)) => {
                                self.s().updates.push(m);
                            }
                            ClientMessage::KeepAlive(_)
                            | ClientMessage::SshCheck(_)
                            | ClientMessage::SshRecording(_) => {}
                        }
                    }
                }
                resp = wait(&mut register) => {
                    register = None;
                    let Some(resp) = resp else { return };
                    let _ = conn.send(&ServerMessage::Register(resp), now());
                }
                p = push_rx.recv() => match p {
                    Some(Push::Error(code, message)) => {
                        let _ = conn.send(&ServerMessage::Error(ProtocolError { code, message }), now());
                        close = true;
                    }
                    Some(Push::Reset) | None => return,
                },
                () = sleep_until(deadline) => {
                    if conn.handle_timeout(now()).is_err() {
                        return;
                    }
                }
            }
            if close {
                while let Some(bytes) = conn.poll_transmit() {
                    let _ = wr.write_all(&bytes).await;
                }
                return;
            }
        }
    }

    /// Opens a map stream for `key`: the full map, or a final error
    /// (`None`: close the connection after it).
    fn open_map(&self, key: NodePublic, conn: &mut ServerConnection) -> Option<()> {
        let mut s = self.s();
        s.map_calls += 1;
        let reply = if s.expired.contains(&key) {
            Err((ErrorCode::NodeKeyExpired, "node key expired"))
        } else if let Some(id) = s.nodes.get(&key).copied() {
            Ok(MapResponse {
                seq: 1,
                body: MapBody::Full(Box::new(map_for(key, id))),
            })
        } else {
            Err((ErrorCode::NotRegistered, "not registered"))
        };
        drop(s);
        match reply {
            Ok(full) => {
                let _ = conn.send(&ServerMessage::Map(full), now());
                Some(())
            }
            Err((code, message)) => {
                let err = ProtocolError {
                    code,
                    message: message.into(),
                };
                let _ = conn.send(&ServerMessage::Error(err), now());
                None
            }
        }
    }
}

async fn wait(
    r: &mut Option<Pin<Box<dyn Future<Output = Option<RegisterResponse>> + Send>>>,
) -> Option<RegisterResponse> {
    match r {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// What the recording data plane saw.
#[derive(Debug, Default)]
pub struct DpLog {
    pub keys: Vec<Option<NodePublic>>,
    pub netmaps: Vec<usize>,
    pub clears: usize,
    pub programmed: bool,
    pub ping_answer: Option<PingOutcome>,
    /// Senders of pings that never get an answer (kept open).
    pub unanswered: Vec<oneshot::Sender<PingOutcome>>,
    /// The MagicDNS resolver the data plane reports, if any.
    pub dns: Option<crate::daemon::dns::DnsHandle>,
}

#[derive(Clone, Default)]
pub struct FakeDataPlane {
    pub log: Arc<Mutex<DpLog>>,
}

impl DataPlane for FakeDataPlane {
    fn set_node_key(&mut self, key: Option<&NodePrivate>) {
        self.log
            .lock()
            .unwrap()
            .keys
            .push(key.map(NodePrivate::public));
    }
    fn apply_netmap(&mut self, nm: &NetMap) {
        let mut l = self.log.lock().unwrap();
        l.netmaps.push(nm.peers.len());
        l.programmed = true;
    }
    fn clear(&mut self) {
        let mut l = self.log.lock().unwrap();
        l.clears += 1;
        l.programmed = false;
    }
    fn peers(&self) -> BTreeMap<NodePublic, PeerLive> {
        BTreeMap::new()
    }
    fn ping(
        &self,
        _peer: &NodePublic,
        _timeout: Duration,
    ) -> Option<oneshot::Receiver<PingOutcome>> {
        let (tx, rx) = oneshot::channel();
        let mut l = self.log.lock().unwrap();
        match l.ping_answer {
            Some(a) => {
                let _ = tx.send(a);
            }
            None => l.unanswered.push(tx),
        }
        Some(rx)
    }
    fn disco_key(&self) -> DiscoPublic {
        DiscoPrivate::from_bytes([5; 32]).public()
    }
    fn filtered(&self) -> u64 {
        0
    }
    fn failure(&self) -> Option<String> {
        None
    }
    fn dns(&self) -> Option<crate::daemon::dns::DnsHandle> {
        self.log.lock().unwrap().dns.clone()
    }
}
