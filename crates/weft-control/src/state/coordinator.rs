//! The coordinator: the one task that changes the in-memory tailnet.
//!
//! Everything that changes the tailnet arrives as a [`Msg`]: committed
//! registrations and admin edits, policy changes, map streams opening and
//! closing, endpoint and host-info reports. The coordinator applies each to
//! its working state at once (so a registration is known before the node's
//! first map request is), and marks the node dirty. The first change of a
//! batch starts the batch timer; when it fires, [`CoordState::flush`]
//! re-encodes the dirty nodes, recompiles the policy if identities or the
//! policy changed, computes and queues the deltas, and publishes the new
//! snapshot. A map stream is registered between batches and gets a full
//! map built from a snapshot at least as new as the one it was registered
//! at, then every delta after it.
//!
//! Timers: node-key expiry (the node shows as expired everywhere and its
//! stream ends), the ephemeral-node collector, and the release of host
//! info held back by a node's [`budget`](super::budget), all on the
//! injectable [`Clock`].
//!
//! # Core and driver
//!
//! [`CoordState`] is all of the above as a pure state machine: it is given
//! each message with the wall time ([`CoordState::handle`]), says whether a
//! batch is waiting ([`CoordState::batch`]), ends it on request
//! ([`CoordState::flush`]), names its next deadline
//! ([`CoordState::next_timer`]) and acts on it ([`CoordState::on_timer`]).
//! It does no I/O: it writes only to in-memory sinks (the snapshot, the
//! streams' queues, the [`Persister`]'s queue), and what must reach the
//! database is asked for ([`CoordState::poll_deletion`]: ephemeral nodes to
//! delete). It is tested on virtual time below.
//!
//! [`Coordinator`] is the thin tokio driver: it loads the state from the
//! store, receives messages, sleeps until the batch delay (monotonic) or
//! the next deadline (on the [`Clock`]), and deletes the ephemeral nodes the
//! state hands it, telling the state when they are gone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use weft_control_proto::Encoded;
use weft_control_store::{Node as StoreNode, NodeStatusUpdate, PolicyVersionId, Store, User};
use weft_policy::Policy;
use weft_types::control::{ErrorCode, ProtocolError};
use weft_types::netmap::{DnsConfig, RelayMap};
use weft_types::{
    DiscoPublic, DnsName, Endpoint, HostInfo, MachinePublic, NodeId, NodePublic, UnixMillis, UserId,
};

use super::budget::Budget;
use super::delta::{self, Batch, Output, Recipient, kind};
use super::persist::Persister;
use super::queue::StreamQueue;
use super::{NodeEntry, NodePolicy, PolicyState, Published, Snapshot, UserEntry};
use crate::clock::{self, Clock};

/// A request to open (or, with `stream: false`, just validate) a map stream.
#[derive(Debug)]
pub(crate) struct Subscribe {
    pub node_key: NodePublic,
    pub machine_key: MachinePublic,
    pub disco_key: DiscoPublic,
    pub endpoints: Vec<Endpoint>,
    pub home_relay: Option<u16>,
    pub host_info: HostInfo,
    pub stream: bool,
    pub queue: Arc<StreamQueue>,
    pub reply: oneshot::Sender<Result<Subscribed, ProtocolError>>,
}

/// An accepted map request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Subscribed {
    pub node: NodeId,
    pub stream: u64,
}

/// What the coordinator is told.
#[derive(Debug)]
pub(crate) enum Msg {
    /// A node record committed to the database (registration, admin edit).
    NodeUpsert(Box<StoreNode>),
    /// A node was deleted from the database.
    NodeDeleted(NodeId),
    /// A user was created or changed.
    UserUpsert(Box<User>),
    /// A user was deleted.
    UserDeleted(UserId),
    /// A new policy is in force.
    Policy {
        policy: Arc<Policy>,
        version: Option<PolicyVersionId>,
    },
    /// Open a map stream.
    Subscribe(Box<Subscribe>),
    /// A map stream ended.
    Unsubscribe { node: NodeId, stream: u64 },
    /// A node reported new endpoints (and home relay) on its stream.
    Endpoints {
        node: NodeId,
        stream: u64,
        endpoints: Vec<Endpoint>,
        home_relay: Option<u16>,
    },
    /// A node reported new host info on its stream.
    HostInfo {
        node: NodeId,
        stream: u64,
        host_info: Box<HostInfo>,
    },
    /// End the current batch now; answers with the published version.
    Flush(oneshot::Sender<u64>),
    /// A new relay map is in force (every streamed node gets it as a delta).
    RelayMap(Box<RelayMap>),
    /// New DNS settings are in force (every streamed node gets them as a
    /// `Delta::Dns`).
    Dns(Box<DnsConfig>),
}

/// How to reach the coordinator and read what it published.
#[derive(Debug, Clone)]
pub(crate) struct CoordHandle {
    tx: mpsc::UnboundedSender<Msg>,
    pub published: Arc<Published>,
}

impl CoordHandle {
    /// Sends a message (dropped if the server is shutting down).
    pub fn send(&self, m: Msg) {
        let _ = self.tx.send(m);
    }

    /// Returns the latest snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.published.load()
    }

    /// Ends the current batch and waits until its snapshot is published.
    pub async fn flush(&self) -> Option<u64> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Flush(tx));
        rx.await.ok()
    }
}

/// Settings the coordinator uses.
#[derive(Debug, Clone)]
pub(crate) struct CoordConfig {
    pub domain: DnsName,
    pub batch_delay: Duration,
    pub ephemeral_grace: Duration,
    /// The relay map every node is given.
    pub relay_map: RelayMap,
    /// The DNS settings at start (stored ones, or the defaults).
    pub dns: DnsConfig,
}

#[derive(Debug)]
struct StreamRec {
    id: u64,
    queue: Arc<StreamQueue>,
    sent: Arc<NodePolicy>,
    closing: bool,
}

#[derive(Debug, Default)]
struct Pending {
    changes: BTreeMap<NodeId, u8>,
    recompute_all: bool,
    dirty: bool,
    /// Someone waits for the batch: end it without the batch delay.
    now: bool,
    waiters: Vec<oneshot::Sender<u64>>,
}

/// Whether the working state is ahead of the published snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BatchState {
    /// Nothing to publish.
    Clean,
    /// Changes wait for the batch delay.
    Dirty,
    /// Someone waits for the batch: end it now.
    Due,
}

/// The coordinator's state, without I/O. See the module docs.
pub(crate) struct CoordState {
    published: Arc<Published>,
    persist: Arc<Persister>,
    config: CoordConfig,
    // --- working state (ahead of the published snapshot by one batch) ---
    nodes: BTreeMap<NodeId, Arc<NodeEntry>>,
    by_key: HashMap<NodePublic, NodeId>,
    users: BTreeMap<UserId, Arc<UserEntry>>,
    policy: (Arc<Policy>, Option<PolicyVersionId>),
    relay_map: Encoded<RelayMap>,
    dns: Encoded<DnsConfig>,
    expiries: BTreeSet<(UnixMillis, NodeId)>,
    streams: BTreeMap<NodeId, StreamRec>,
    parked: Vec<Subscribe>,
    pending: Pending,
    next_stream: u64,
    next_gc: UnixMillis,
    /// Ephemeral nodes handed out for deletion and not yet deleted.
    gc_in_flight: BTreeSet<NodeId>,
    /// Ephemeral nodes to delete, not yet handed out.
    doomed: Vec<NodeId>,
    // --- host-info rate limit ---
    /// Nodes that changed host info lately, and what they have left.
    host_budgets: BTreeMap<NodeId, Budget>,
    /// The latest host info a node reported beyond its budget.
    held_host_info: BTreeMap<NodeId, HostInfo>,
    /// When each held host info may be applied.
    host_info_due: BTreeSet<(UnixMillis, NodeId)>,
}

/// Why loading the initial state failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    #[error(transparent)]
    Store(#[from] weft_control_store::StoreError),
    #[error("cannot encode the tailnet state: {0}")]
    Encode(#[from] weft_control_proto::EncodeError),
}

/// The tokio driver of a [`CoordState`]. See the module docs.
pub(crate) struct Coordinator {
    rx: mpsc::UnboundedReceiver<Msg>,
    tx: mpsc::UnboundedSender<Msg>,
    store: Store,
    clock: Arc<dyn Clock>,
    state: CoordState,
}

impl Coordinator {
    /// Loads users, nodes and the policy from the store and publishes the
    /// first snapshot.
    pub async fn load(
        store: Store,
        persist: Arc<Persister>,
        clock: Arc<dyn Clock>,
        config: CoordConfig,
    ) -> Result<(Coordinator, CoordHandle), LoadError> {
        let users = store.list_users().await?;
        let nodes = store.list_nodes().await?;
        let (policy, version) = match store.current_policy().await? {
            None => (Policy::default_allow_all(), None),
            Some(pv) => match Policy::parse(&pv.text) {
                Ok(p) => (p, Some(pv.id)),
                Err(e) => {
                    // Policies are validated before they are stored; a bad one
                    // means the database was edited. Deny everything.
                    tracing::error!(version = %pv.id, error = %e, "the stored policy is invalid; denying all traffic until a valid one is set");
                    (
                        Policy::parse("{}").unwrap_or_else(|_| Policy::default_allow_all()),
                        Some(pv.id),
                    )
                }
            },
        };
        let state = CoordState::new(
            users,
            nodes,
            (Arc::new(policy), version),
            persist,
            config,
            clock.now(),
        )?;
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = CoordHandle {
            tx: tx.clone(),
            published: state.published().clone(),
        };
        let c = Coordinator {
            rx,
            tx,
            store,
            clock,
            state,
        };
        Ok((c, handle))
    }

    /// Runs until `stop` is cancelled; then ends every stream with
    /// `shutting_down`.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut batch_at: Option<tokio::time::Instant> = None;
        loop {
            let timer = self.state.next_timer();
            let clock = self.clock.clone();
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                () = sleep_opt(batch_at) => {
                    batch_at = None;
                    self.state.flush(self.clock.now());
                }
                m = self.rx.recv() => {
                    let Some(m) = m else { break };
                    self.state.handle(m, self.clock.now());
                    // Take whatever else is waiting before looking at timers.
                    for _ in 0..4096 {
                        match self.rx.try_recv() {
                            Ok(m) => self.state.handle(m, self.clock.now()),
                            Err(_) => break,
                        }
                    }
                }
                () = clock::sleep_until(&*clock, timer) => self.state.on_timer(self.clock.now()),
            }
            while let Some(id) = self.state.poll_deletion() {
                self.delete_ephemeral(id);
            }
            match self.state.batch() {
                BatchState::Due => {
                    batch_at = None;
                    self.state.flush(self.clock.now());
                }
                BatchState::Dirty if batch_at.is_none() => {
                    batch_at = Some(tokio::time::Instant::now() + self.state.config.batch_delay);
                }
                BatchState::Dirty | BatchState::Clean => {}
            }
        }
        self.state.shut_down();
    }

    /// Deletes an ephemeral node from the store in the background; the
    /// state hears of it as of any deletion ([`Msg::NodeDeleted`]).
    fn delete_ephemeral(&self, id: NodeId) {
        let store = self.store.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            match store.delete_node(id).await {
                Ok(_) | Err(weft_control_store::StoreError::UnknownNode(_)) => {
                    tracing::info!(node = %id, "deleted an ephemeral node after its grace period offline");
                    metrics::counter!("weft_ephemeral_nodes_deleted_total").increment(1);
                    let _ = tx.send(Msg::NodeDeleted(id));
                }
                Err(e) => {
                    tracing::warn!(node = %id, error = %e, "could not delete an ephemeral node")
                }
            }
        });
    }
}

impl CoordState {
    /// Builds the working state from what the store holds and publishes the
    /// first snapshot (version 0), as of wall time `now`.
    pub fn new(
        users_in: Vec<User>,
        nodes_in: Vec<StoreNode>,
        policy: (Arc<Policy>, Option<PolicyVersionId>),
        persist: Arc<Persister>,
        config: CoordConfig,
        now: UnixMillis,
    ) -> Result<CoordState, LoadError> {
        let mut users = BTreeMap::new();
        for u in users_in {
            users.insert(u.id, Arc::new(UserEntry::new(u)?));
        }
        let mut nodes = BTreeMap::new();
        let mut by_key = HashMap::new();
        let mut expiries = BTreeSet::new();
        for n in nodes_in {
            if let Some(t) = n.key_expiry.filter(|t| *t > now) {
                expiries.insert((t, n.id));
            }
            by_key.insert(n.node_key, n.id);
            let e = NodeEntry::new(n, None, &config.domain, now)?;
            nodes.insert(e.rec.id, Arc::new(e));
        }
        let pstate = Arc::new(PolicyState::build(policy.0.clone(), &nodes, &users));
        let relay_map = Encoded::new(&config.relay_map)?;
        let dns = Encoded::new(&config.dns)?;
        let snapshot = Snapshot {
            version: 0,
            unauthorized: unauthorized(&nodes),
            nodes: nodes.clone(),
            users: users.clone(),
            policy: pstate,
            dns: dns.clone(),
            relay_map: relay_map.clone(),
            domain: config.domain.clone(),
        };
        let published = Arc::new(Published::new(Arc::new(snapshot)));
        let c = CoordState {
            published,
            persist,
            next_gc: now,
            config,
            nodes,
            by_key,
            users,
            policy,
            relay_map,
            dns,
            expiries,
            streams: BTreeMap::new(),
            parked: Vec::new(),
            pending: Pending::default(),
            next_stream: 1,
            gc_in_flight: BTreeSet::new(),
            doomed: Vec::new(),
            host_budgets: BTreeMap::new(),
            held_host_info: BTreeMap::new(),
            host_info_due: BTreeSet::new(),
        };
        c.update_gauges();
        Ok(c)
    }

    /// Returns where the snapshots are published.
    pub fn published(&self) -> &Arc<Published> {
        &self.published
    }

    /// Whether a batch waits, and whether it is due at once.
    pub fn batch(&self) -> BatchState {
        if self.pending.now {
            BatchState::Due
        } else if self.pending.dirty {
            BatchState::Dirty
        } else {
            BatchState::Clean
        }
    }

    /// Returns the next ephemeral node to delete from the store, once; the
    /// deletion is confirmed by [`Msg::NodeDeleted`].
    pub fn poll_deletion(&mut self) -> Option<NodeId> {
        self.doomed.pop()
    }

    /// Ends every stream with `shutting_down`.
    pub fn shut_down(&mut self) {
        for s in self.streams.values() {
            s.queue.close(ProtocolError {
                code: ErrorCode::ShuttingDown,
                message: "the control server is shutting down; reconnect later".into(),
            });
        }
    }

    /// Applies one message to the working state at wall time `now`.
    pub fn handle(&mut self, m: Msg, now: UnixMillis) {
        match m {
            Msg::NodeUpsert(rec) => self.upsert_node(*rec, now),
            Msg::NodeDeleted(id) => self.remove_node(id),
            Msg::UserUpsert(u) => match UserEntry::new(*u) {
                Ok(e) => {
                    self.users.insert(e.user.id, Arc::new(e));
                    self.recompute_all();
                }
                Err(e) => tracing::error!(error = %e, "cannot encode a user profile"),
            },
            Msg::UserDeleted(id) => {
                self.users.remove(&id);
                self.recompute_all();
            }
            Msg::Policy { policy, version } => {
                self.policy = (policy, version);
                self.recompute_all();
            }
            Msg::RelayMap(map) => match Encoded::new(&*map) {
                Ok(enc) => {
                    self.relay_map = enc;
                    self.pending.dirty = true;
                }
                Err(e) => tracing::error!(error = %e, "cannot encode the relay map"),
            },
            Msg::Dns(dns) => match Encoded::new(&*dns) {
                Ok(enc) => {
                    self.dns = enc;
                    self.pending.dirty = true;
                }
                Err(e) => tracing::error!(error = %e, "cannot encode the DNS settings"),
            },
            Msg::Subscribe(s) => self.subscribe(*s, now),
            Msg::Unsubscribe { node, stream } => self.unsubscribe(node, stream, now),
            Msg::Endpoints {
                node,
                stream,
                endpoints,
                home_relay,
            } => {
                if !self.is_current(node, stream) {
                    return;
                }
                let Some(e) = self.nodes.get_mut(&node) else {
                    return;
                };
                if e.rec.endpoints == endpoints && e.home_relay == home_relay {
                    return;
                }
                let e = Arc::make_mut(e);
                e.home_relay = home_relay;
                e.rec.endpoints.clone_from(&endpoints);
                self.persist.status(
                    node,
                    NodeStatusUpdate {
                        endpoints: Some(endpoints),
                        ..NodeStatusUpdate::default()
                    },
                );
                self.mark(node, kind::ENDPOINTS);
            }
            Msg::HostInfo {
                node,
                stream,
                host_info,
            } => {
                if !self.is_current(node, stream) {
                    return;
                }
                let Some(e) = self.nodes.get(&node) else {
                    return;
                };
                if e.host == *host_info {
                    // The node is back to what peers already have.
                    self.held_host_info.remove(&node);
                    return;
                }
                if self.spend_host_budget(node, now) {
                    self.held_host_info.remove(&node);
                    self.apply_host_info(node, *host_info);
                } else {
                    self.hold_host_info(node, *host_info);
                }
            }
            Msg::Flush(reply) => {
                self.pending.waiters.push(reply);
                self.pending.dirty = true;
                self.pending.now = true;
            }
        }
    }

    /// Spends one of the node's host-info changes; `false` if none is left.
    fn spend_host_budget(&mut self, node: NodeId, now: UnixMillis) -> bool {
        self.host_budgets
            .entry(node)
            .or_insert_with(|| Budget::new(now))
            .take(now)
    }

    /// Keeps `host_info` until the node's budget allows it, replacing any
    /// held before.
    fn hold_host_info(&mut self, node: NodeId, host_info: HostInfo) {
        metrics::counter!("weft_host_info_updates_held_total").increment(1);
        let first = self.held_host_info.insert(node, host_info).is_none();
        if first && let Some(b) = self.host_budgets.get(&node) {
            self.host_info_due.insert((b.next_at(), node));
        }
    }

    /// Makes `host_info` the node's: stored, and sent to its peers.
    fn apply_host_info(&mut self, node: NodeId, host_info: HostInfo) {
        let Some(e) = self.nodes.get_mut(&node) else {
            return;
        };
        let e = Arc::make_mut(e);
        e.host = host_info;
        e.rec.hostname.clone_from(&e.host.hostname);
        e.rec.host_info = serde_json::to_value(&e.host).unwrap_or_default();
        self.persist.status(
            node,
            NodeStatusUpdate {
                host_info: Some(e.rec.host_info.clone()),
                hostname: Some(e.rec.hostname.clone()),
                ..NodeStatusUpdate::default()
            },
        );
        self.mark(node, kind::FULL);
    }

    /// Applies held host info whose time has come.
    fn release_host_info(&mut self, now: UnixMillis) {
        while let Some(&(t, node)) = self.host_info_due.first() {
            if t > now {
                break;
            }
            self.host_info_due.pop_first();
            let Some(h) = self.held_host_info.remove(&node) else {
                continue;
            };
            if self.nodes.get(&node).is_none_or(|e| e.host == h) {
                continue;
            }
            if self.spend_host_budget(node, now) {
                self.apply_host_info(node, h);
            } else {
                self.hold_host_info(node, h);
            }
        }
    }

    fn is_current(&self, node: NodeId, stream: u64) -> bool {
        self.streams
            .get(&node)
            .is_some_and(|s| s.id == stream && !s.closing)
    }

    fn mark(&mut self, node: NodeId, bits: u8) {
        *self.pending.changes.entry(node).or_default() |= bits;
        self.pending.dirty = true;
    }

    fn recompute_all(&mut self) {
        self.pending.recompute_all = true;
        self.pending.dirty = true;
    }

    fn close_stream(&mut self, node: NodeId, code: ErrorCode, message: String) {
        if let Some(s) = self.streams.get_mut(&node)
            && !s.closing
        {
            s.closing = true;
            s.queue.close(ProtocolError { code, message });
        }
    }

    fn upsert_node(&mut self, mut rec: StoreNode, now: UnixMillis) {
        let id = rec.id;
        let has_stream = self.streams.get(&id).is_some_and(|s| !s.closing);
        let old = self.nodes.get(&id).cloned();
        let mut identity = true;
        if let Some(old) = &old {
            // Runtime fields: the live view wins over the database's.
            rec.online = has_stream;
            if has_stream {
                rec.endpoints.clone_from(&old.rec.endpoints);
                rec.disco_key = old.rec.disco_key.or(rec.disco_key);
            }
            rec.last_seen = rec.last_seen.max(old.rec.last_seen);
            if old.rec.node_key != rec.node_key {
                self.by_key.remove(&old.rec.node_key);
            }
            if let Some(t) = old.rec.key_expiry {
                self.expiries.remove(&(t, id));
            }
            identity = old.rec.user != rec.user
                || old.rec.tags != rec.tags
                || old.rec.ipv4 != rec.ipv4
                || old.rec.ipv6 != rec.ipv6
                || old.rec.authorized != rec.authorized
                || old.rec.given_name != rec.given_name;
        } else {
            rec.online = false;
        }
        let expired = rec.is_expired(now);
        let authorized = rec.authorized;
        if let Some(t) = rec.key_expiry.filter(|_| !expired) {
            self.expiries.insert((t, id));
        }
        self.by_key.insert(rec.node_key, id);
        let home_relay = old.as_ref().and_then(|o| o.home_relay);
        match NodeEntry::new(rec, home_relay, &self.config.domain, now) {
            Ok(e) => {
                self.nodes.insert(id, Arc::new(e));
            }
            Err(e) => {
                tracing::error!(node = %id, error = %e, "cannot encode a node");
                return;
            }
        }
        if expired {
            self.close_stream(
                id,
                ErrorCode::NodeKeyExpired,
                "the node key has expired; log in again (weft up)".into(),
            );
        } else if !authorized {
            self.close_stream(
                id,
                ErrorCode::NotAuthorized,
                "this machine is waiting for an administrator's approval".into(),
            );
        }
        let bits = match (&old, identity) {
            (None, _) => kind::ADDED | kind::IDENTITY,
            (Some(_), true) => kind::FULL | kind::IDENTITY,
            (Some(_), false) => kind::FULL,
        };
        self.mark(id, bits);
    }

    fn remove_node(&mut self, id: NodeId) {
        self.gc_in_flight.remove(&id);
        self.persist.forget(id);
        self.host_budgets.remove(&id);
        self.held_host_info.remove(&id);
        let Some(old) = self.nodes.remove(&id) else {
            return;
        };
        if self.by_key.get(&old.rec.node_key) == Some(&id) {
            self.by_key.remove(&old.rec.node_key);
        }
        if let Some(t) = old.rec.key_expiry {
            self.expiries.remove(&(t, id));
        }
        self.close_stream(
            id,
            ErrorCode::NotRegistered,
            "this node was deleted from the tailnet; log in again".into(),
        );
        self.mark(id, kind::REMOVED | kind::IDENTITY);
    }

    fn subscribe(&mut self, s: Subscribe, now: UnixMillis) {
        let refuse = |code, message: String| Err(ProtocolError { code, message });
        let check = match self
            .by_key
            .get(&s.node_key)
            .and_then(|id| self.nodes.get(id))
        {
            None => refuse(
                ErrorCode::NotRegistered,
                format!(
                    "node key {} is not registered on this server; register first",
                    s.node_key
                ),
            ),
            Some(e) if e.rec.machine_key != s.machine_key => refuse(
                ErrorCode::NotRegistered,
                format!("node key {} is registered to another machine", s.node_key),
            ),
            Some(e) if e.rec.is_expired(now) => refuse(
                ErrorCode::NodeKeyExpired,
                "the node key has expired; log in again (weft up)".into(),
            ),
            Some(e) if !e.rec.authorized => refuse(
                ErrorCode::NotAuthorized,
                "this machine is waiting for an administrator's approval".into(),
            ),
            Some(e) => Ok(e.rec.id),
        };
        let id = match check {
            Ok(id) => id,
            Err(e) => {
                let _ = s.reply.send(Err(e));
                return;
            }
        };
        if !self.published.load().nodes.contains_key(&id) {
            // Registered in this batch: its full map needs the next snapshot.
            self.parked.push(s);
            self.pending.dirty = true;
            return;
        }
        if !s.stream {
            let _ = s.reply.send(Ok(Subscribed {
                node: id,
                stream: 0,
            }));
            return;
        }
        let host_changed = self.nodes.get(&id).is_some_and(|e| e.host != s.host_info);
        let apply_host = host_changed && self.spend_host_budget(id, now);
        if !host_changed {
            self.held_host_info.remove(&id);
        } else if !apply_host {
            self.hold_host_info(id, s.host_info.clone());
        }
        let Some(e) = self.nodes.get_mut(&id) else {
            return;
        };
        let e = Arc::make_mut(e);
        let mut bits = kind::ONLINE;
        if e.rec.disco_key != Some(s.disco_key) || apply_host {
            bits |= kind::FULL;
        }
        if e.rec.endpoints != s.endpoints || e.home_relay != s.home_relay {
            bits |= kind::ENDPOINTS;
        }
        e.home_relay = s.home_relay;
        e.rec.disco_key = Some(s.disco_key);
        e.rec.endpoints.clone_from(&s.endpoints);
        if apply_host {
            self.held_host_info.remove(&id);
            e.host = s.host_info.clone();
            e.rec.hostname.clone_from(&e.host.hostname);
            e.rec.host_info = serde_json::to_value(&e.host).unwrap_or_default();
        }
        e.rec.online = true;
        e.rec.last_seen = Some(now);
        self.persist.status(
            id,
            NodeStatusUpdate {
                disco_key: Some(s.disco_key),
                endpoints: Some(s.endpoints),
                host_info: Some(e.rec.host_info.clone()),
                hostname: Some(e.rec.hostname.clone()),
            },
        );
        self.persist.online(id, true, now);
        if let Some(old) = self.streams.remove(&id) {
            old.queue.close(ProtocolError {
                code: ErrorCode::Replaced,
                message: "another map stream for this node replaced this one".into(),
            });
        }
        let stream = self.next_stream;
        self.next_stream += 1;
        s.queue.push_full();
        let sent = self.published.load().policy.node_policy(id);
        self.streams.insert(
            id,
            StreamRec {
                id: stream,
                queue: s.queue,
                sent,
                closing: false,
            },
        );
        self.mark(id, bits);
        let _ = s.reply.send(Ok(Subscribed { node: id, stream }));
    }

    fn unsubscribe(&mut self, node: NodeId, stream: u64, now: UnixMillis) {
        if self.streams.get(&node).is_none_or(|s| s.id != stream) {
            return;
        }
        self.streams.remove(&node);
        let Some(e) = self.nodes.get_mut(&node) else {
            return;
        };
        let e = Arc::make_mut(e);
        e.rec.online = false;
        e.rec.last_seen = Some(now);
        self.persist.online(node, false, now);
        self.mark(node, kind::ONLINE);
    }

    /// Returns the next wall-clock deadline: a key expiry, a GC check, or
    /// held host info to release.
    pub fn next_timer(&self) -> UnixMillis {
        let mut next = self.next_gc;
        if let Some((t, _)) = self.expiries.first() {
            next = next.min(*t);
        }
        if let Some((t, _)) = self.host_info_due.first() {
            next = next.min(*t);
        }
        next
    }

    /// Acts on every deadline up to wall time `now`.
    pub fn on_timer(&mut self, now: UnixMillis) {
        tracing::trace!(now = now.0, next_gc = self.next_gc.0, "coordinator timer");
        while let Some(&(t, id)) = self.expiries.first() {
            if t > now {
                break;
            }
            self.expiries.pop_first();
            if self.nodes.get(&id).is_some_and(|e| e.rec.is_expired(now)) {
                tracing::info!(node = %id, "node key expired");
                self.close_stream(
                    id,
                    ErrorCode::NodeKeyExpired,
                    "the node key has expired; log in again (weft up)".into(),
                );
                self.mark(id, kind::FULL);
            }
        }
        self.release_host_info(now);
        if now >= self.next_gc {
            self.collect_ephemeral(now);
            let every = (self.config.ephemeral_grace / 4)
                .clamp(Duration::from_millis(50), Duration::from_secs(15));
            self.next_gc = now.saturating_add(every);
        }
    }

    /// Deletes ephemeral nodes that have been offline for the grace period.
    fn collect_ephemeral(&mut self, now: UnixMillis) {
        let grace = self.config.ephemeral_grace;
        let doomed: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|e| {
                e.rec.ephemeral
                    && !self.streams.contains_key(&e.rec.id)
                    && !self.gc_in_flight.contains(&e.rec.id)
                    && e.rec
                        .last_seen
                        .unwrap_or(e.rec.created)
                        .saturating_add(grace)
                        <= now
            })
            .map(|e| e.rec.id)
            .collect();
        for id in doomed {
            tracing::debug!(node = %id, "collecting an ephemeral node");
            self.gc_in_flight.insert(id);
            self.doomed.push(id);
        }
    }

    /// Ends the batch at wall time `now`: re-encode, recompile, compute and
    /// queue deltas, publish, and take the map requests parked for it.
    pub fn flush(&mut self, now: UnixMillis) {
        #[allow(clippy::disallowed_methods)] // measuring only
        let started = std::time::Instant::now();
        let old = self.published.load();
        let changes = std::mem::take(&mut self.pending.changes);
        let recompute_all = std::mem::take(&mut self.pending.recompute_all);
        for (id, bits) in &changes {
            if bits & kind::REMOVED != 0 {
                continue;
            }
            if let Some(e) = self.nodes.get_mut(id)
                && let Err(err) = Arc::make_mut(e).reencode(&self.config.domain, now)
            {
                tracing::error!(node = %id, error = %err, "cannot encode a node");
            }
        }
        let identity = changes.values().any(|b| b & kind::IDENTITY != 0);
        let policy = if identity || recompute_all {
            #[allow(clippy::disallowed_methods)] // measuring only
            let t = std::time::Instant::now();
            let p = Arc::new(PolicyState::build(
                self.policy.0.clone(),
                &self.nodes,
                &self.users,
            ));
            metrics::histogram!("weft_policy_compile_seconds").record(t.elapsed().as_secs_f64());
            p
        } else {
            old.policy.clone()
        };
        let new = Arc::new(Snapshot {
            version: old.version + 1,
            unauthorized: unauthorized(&self.nodes),
            nodes: self.nodes.clone(),
            users: self.users.clone(),
            policy,
            domain: old.domain.clone(),
            dns: self.dns.clone(),
            relay_map: self.relay_map.clone(),
        });

        let mut recipients: Vec<Recipient> = self
            .streams
            .iter()
            .filter(|(_, s)| !s.closing)
            .map(|(id, s)| Recipient {
                node: *id,
                sent: s.sent.clone(),
            })
            .collect();
        let outputs = delta::compute(
            &Batch {
                old: &old,
                new: &new,
                changes: &changes,
                recompute_all,
            },
            &mut recipients,
        );
        let (mut bodies, mut fulls, mut resyncs) = (0u64, 0u64, 0u64);
        for (r, out) in recipients.into_iter().zip(outputs) {
            let Some(s) = self.streams.get_mut(&r.node) else {
                continue;
            };
            s.sent = r.sent;
            match out {
                Output::Nothing => {}
                Output::Full => {
                    s.queue.push_full();
                    fulls += 1;
                }
                Output::Bodies(list) => {
                    for body in list {
                        bodies += 1;
                        if s.queue.push_delta(new.version, body) {
                            resyncs += 1;
                        }
                    }
                }
            }
        }
        let version = new.version;
        self.published.store(new);
        for w in self.pending.waiters.drain(..) {
            let _ = w.send(version);
        }
        self.pending.dirty = false;
        self.pending.now = false;
        for s in std::mem::take(&mut self.parked) {
            self.subscribe(s, now);
        }
        self.persist
            .set_connected(self.streams.keys().copied().collect());
        metrics::counter!("weft_map_delta_bodies_queued_total").increment(bodies);
        metrics::counter!("weft_map_resyncs_total").increment(resyncs + fulls);
        metrics::histogram!("weft_batch_duration_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("weft_batch_changes").record(changes.len() as f64);
        self.update_gauges();
        tracing::debug!(
            version,
            changes = changes.len(),
            bodies,
            fulls,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "batch published"
        );
    }

    fn update_gauges(&self) {
        metrics::gauge!("weft_nodes").set(self.nodes.len() as f64);
        metrics::gauge!("weft_nodes_online").set(self.streams.len() as f64);
        metrics::gauge!("weft_users").set(self.users.len() as f64);
        metrics::gauge!("weft_persist_backlog_nodes").set(self.persist.backlog() as f64);
    }
}

fn unauthorized(nodes: &BTreeMap<NodeId, Arc<NodeEntry>>) -> BTreeSet<NodeId> {
    nodes
        .values()
        .filter(|e| !e.rec.authorized)
        .map(|e| e.rec.id)
        .collect()
}

async fn sleep_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[path = "coordinator_tests.rs"]
mod tests;
