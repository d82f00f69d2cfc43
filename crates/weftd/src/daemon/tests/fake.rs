//! A scripted control server and a recording data plane.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{Notify as TokioNotify, mpsc, oneshot};
use weft_disco::PingOutcome;
use weft_types::control::{
    ErrorCode, ExpiryRequest, MapRequest, Refusal, RefusalReason, RegisterAuth, RegisterRequest,
    RegisterResponse, Registered,
};
use weft_types::netmap::{MapBody, MapResponse};
use weft_types::{
    DiscoPrivate, DiscoPublic, MachinePrivate, MachinePublic, NetMap, NodeId, NodePrivate,
    NodePublic, UserId, UserProfile,
};

use crate::daemon::config::tests::netmap;
use crate::daemon::control::{
    ControlClient, ControlError, ControlTarget, MapEvent, MapStream, MapUpdate,
};
use crate::daemon::dataplane::{DataPlane, PeerLive};

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
    pub register_calls: Vec<RegisterRequest>,
    pub map_calls: usize,
    pub key_calls: usize,
    /// The open map streams' senders (the last one is current).
    pub streams: Vec<mpsc::UnboundedSender<Result<MapEvent, ControlError>>>,
    pub updates: Vec<mpsc::UnboundedReceiver<MapUpdate>>,
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

pub fn server_key() -> MachinePublic {
    MachinePrivate::from_bytes([77; 32]).public()
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

    pub fn s(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    pub fn approve_all(&self) {
        for v in self.s().auth_urls.values_mut() {
            *v = true;
        }
        self.approved.notify_waiters();
    }

    /// Sends a map event on the newest stream.
    pub fn push(&self, e: Result<MapEvent, ControlError>) {
        if let Some(tx) = self.s().streams.last() {
            let _ = tx.send(e);
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

    /// What a real client sees when the pinned key is not the server's:
    /// the Noise handshake fails.
    fn check_target(&self, target: &ControlTarget) -> Result<(), ControlError> {
        if target.server_key != server_key() {
            return Err(ControlError::Unreachable {
                url: target.url.clone(),
                cause: "handshake failed: wrong server key".into(),
            });
        }
        self.s().machines.insert(target.machine_key.public());
        Ok(())
    }

    fn unreachable(url: &str) -> ControlError {
        ControlError::Unreachable {
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

impl ControlClient for FakeControl {
    fn server_key(&self, url: &str) -> BoxFuture<'_, Result<MachinePublic, ControlError>> {
        let mut s = self.s();
        s.key_calls += 1;
        let r = if s.up.contains(url) {
            Ok(server_key())
        } else {
            Err(Self::unreachable(url))
        };
        Box::pin(async move { r })
    }

    fn register(
        &self,
        target: &ControlTarget,
        req: RegisterRequest,
    ) -> BoxFuture<'_, Result<RegisterResponse, ControlError>> {
        let url = target.url.clone();
        let checked = self.check_target(target);
        Box::pin(async move {
            checked?;
            loop {
                let approved = self.approved.notified();
                {
                    let mut s = self.s();
                    if !s.up.contains(&url) {
                        return Err(Self::unreachable(&url));
                    }
                    s.register_calls.push(req.clone());
                    if req.expiry == ExpiryRequest::Now {
                        s.nodes.remove(&req.node_key);
                        return Ok(RegisterResponse::LoggedOut);
                    }
                    if s.expired.contains(&req.node_key) {
                        return Ok(RegisterResponse::NodeKeyExpired);
                    }
                    match &req.auth {
                        RegisterAuth::AuthKey(k) => {
                            if s.auth_keys.contains(&k.0) {
                                return Ok(RegisterResponse::Registered(Self::register_node(
                                    &mut s,
                                    req.node_key,
                                    req.old_node_key,
                                )));
                            }
                            return Ok(RegisterResponse::Refused(Refusal {
                                reason: RefusalReason::InvalidAuthKey,
                                message: "invalid auth key: unknown".into(),
                            }));
                        }
                        RegisterAuth::None => {
                            if req.old_node_key.is_none() && s.nodes.contains_key(&req.node_key) {
                                let id = s.nodes[&req.node_key];
                                return Ok(RegisterResponse::Registered(Registered {
                                    node_id: id,
                                    user: Some(user()),
                                    tags: BTreeSet::new(),
                                    machine_authorized: true,
                                    key_expiry: None,
                                }));
                            }
                            let url = format!("{url}/a/{}", s.auth_urls.len() + 1);
                            s.auth_urls.insert(url.clone(), false);
                            return Ok(RegisterResponse::NeedsAuth { auth_url: url });
                        }
                        RegisterAuth::Followup { auth_url } => {
                            if s.auth_urls.get(auth_url) == Some(&true) {
                                return Ok(RegisterResponse::Registered(Self::register_node(
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
        })
    }

    fn map(
        &self,
        target: &ControlTarget,
        req: MapRequest,
        updates: mpsc::UnboundedReceiver<MapUpdate>,
    ) -> BoxFuture<'_, Result<MapStream, ControlError>> {
        let checked = self.check_target(target);
        let mut s = self.s();
        s.map_calls += 1;
        let r = if let Err(e) = checked {
            Err(e)
        } else if !s.up.contains(&target.url) {
            Err(Self::unreachable(&target.url))
        } else if s.expired.contains(&req.node_key) {
            Err(ControlError::Server {
                url: target.url.clone(),
                code: ErrorCode::NodeKeyExpired,
                message: "node key expired".into(),
            })
        } else if let Some(id) = s.nodes.get(&req.node_key).copied() {
            let (tx, rx) = mpsc::unbounded_channel();
            let _ = tx.send(Ok(MapEvent::Response(MapResponse {
                seq: 1,
                body: MapBody::Full(Box::new(map_for(req.node_key, id))),
            })));
            s.streams.push(tx);
            s.updates.push(updates);
            let stream: MapStream = Box::pin(tokio_stream(rx));
            Ok(stream)
        } else {
            Err(ControlError::Server {
                url: target.url.clone(),
                code: ErrorCode::NotRegistered,
                message: "not registered".into(),
            })
        };
        Box::pin(async move { r })
    }
}

fn tokio_stream<T: Send + 'static>(
    rx: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
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
}
