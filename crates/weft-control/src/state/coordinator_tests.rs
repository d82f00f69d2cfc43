//! The coordinator's state on virtual time: no runtime, no store, no clock;
//! every step is a message or a deadline at a given wall time.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use weft_policy::Policy;
use weft_types::control::{ErrorCode, ProtocolError};
use weft_types::{DiscoPublic, Endpoint, EndpointKind, HostInfo, NodeId, UnixMillis};

use super::{BatchState, CoordConfig, CoordState, Msg, Subscribe, Subscribed};
use crate::state::budget::{HOST_INFO_BURST, HOST_INFO_REFILL};
use crate::state::persist::Persister;
use crate::state::queue::{Item, StreamQueue};
use crate::state::tests::{domain, nodes, users};
use weft_control_store::Node as StoreNode;

const T0: UnixMillis = UnixMillis(1_000_000_000);
const GRACE: Duration = Duration::from_secs(60);

fn config() -> CoordConfig {
    CoordConfig {
        domain: domain(),
        dns: crate::state::default_dns_config(),
        batch_delay: Duration::from_millis(50),
        ephemeral_grace: GRACE,
        relay_map: weft_types::netmap::RelayMap::default(),
    }
}

/// Bob's nodes 1 and 2 and alice's node 3, as the store returns them.
fn records() -> Vec<StoreNode> {
    nodes().into_values().map(|e| e.rec.clone()).collect()
}

fn record(id: i64) -> StoreNode {
    records()
        .into_iter()
        .find(|r| r.id == NodeId(id))
        .expect("a test node")
}

/// A state of `nodes` under the allow-all policy, loaded at `T0`.
fn state(nodes: Vec<StoreNode>) -> CoordState {
    let users = users().into_values().map(|e| e.user.clone()).collect();
    let policy = (Arc::new(Policy::default_allow_all()), None);
    CoordState::new(
        users,
        nodes,
        policy,
        Arc::new(Persister::default()),
        config(),
        T0,
    )
    .unwrap()
}

/// An open (or asked-for) map stream.
struct Stream {
    queue: Arc<StreamQueue>,
    reply: oneshot::Receiver<Result<Subscribed, ProtocolError>>,
    id: Option<u64>,
}

impl Stream {
    /// The stream id it was accepted with.
    fn id(&mut self) -> u64 {
        if self.id.is_none() {
            self.id = Some(self.reply.try_recv().unwrap().unwrap().stream);
        }
        self.id.unwrap()
    }

    fn drain(&self) -> Vec<Item> {
        std::iter::from_fn(|| self.queue.pop()).collect()
    }
}

fn subscribe(c: &mut CoordState, rec: &StoreNode, now: UnixMillis) -> Stream {
    let queue = Arc::new(StreamQueue::new(64));
    let (tx, reply) = oneshot::channel();
    c.handle(
        Msg::Subscribe(Box::new(Subscribe {
            node_key: rec.node_key,
            machine_key: rec.machine_key,
            disco_key: DiscoPublic::from_bytes([rec.id.0 as u8 + 50; 32]),
            endpoints: Vec::new(),
            home_relay: None,
            host_info: HostInfo::default(),
            stream: true,
            queue: queue.clone(),
            reply: tx,
        })),
        now,
    );
    Stream {
        queue,
        reply,
        id: None,
    }
}

fn endpoint(port: u16) -> Endpoint {
    Endpoint {
        addr: ([198, 18, 0, 7], port).into(),
        kind: EndpointKind::Local,
    }
}

fn deltas(items: &[Item]) -> Vec<(u64, String)> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Delta { version, body } => Some((*version, body.as_str().to_owned())),
            _ => None,
        })
        .collect()
}

fn closed_with(items: &[Item]) -> Option<ErrorCode> {
    items.iter().find_map(|i| match i {
        Item::Close(e) => Some(e.code),
        _ => None,
    })
}

/// Nodes 1 and 3 streaming, the first batch published and drained.
fn streaming() -> (CoordState, Stream, Stream) {
    let mut c = state(records());
    let (mut s1, mut s3) = (
        subscribe(&mut c, &record(1), T0),
        subscribe(&mut c, &record(3), T0),
    );
    assert!(s1.id() > 0 && s3.id() > 0);
    assert!(matches!(s1.drain()[..], [Item::Full]));
    assert!(matches!(s3.drain()[..], [Item::Full]));
    c.flush(T0);
    s1.drain();
    s3.drain();
    assert_eq!(c.batch(), BatchState::Clean);
    (c, s1, s3)
}

#[test]
fn a_change_waits_for_the_batch_and_reaches_peers_as_one_delta() {
    let (mut c, s1, mut s3) = streaming();
    let stream3 = s3.id();
    let version = c.published().load().version;

    for port in [41641, 41642] {
        c.handle(
            Msg::Endpoints {
                node: NodeId(3),
                stream: stream3,
                endpoints: vec![endpoint(port)],
                home_relay: None,
            },
            T0,
        );
    }
    // Applied to the working state, not yet published or sent.
    assert_eq!(c.batch(), BatchState::Dirty);
    assert_eq!(c.published().load().version, version);
    assert!(s1.drain().is_empty());

    c.flush(T0);
    assert_eq!(c.batch(), BatchState::Clean);
    let snap = c.published().load();
    assert_eq!(snap.version, version + 1);
    assert_eq!(snap.nodes[&NodeId(3)].rec.endpoints, vec![endpoint(41642)]);
    let got = deltas(&s1.drain());
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, version + 1);
    assert!(got[0].1.contains("198.18.0.7:41642"), "{}", got[0].1);
    assert!(
        !got[0].1.contains("41641"),
        "the batch coalesced: {}",
        got[0].1
    );

    // A report on a stream that was replaced is ignored.
    c.handle(
        Msg::Endpoints {
            node: NodeId(3),
            stream: stream3 - 1,
            endpoints: vec![endpoint(9)],
            home_relay: None,
        },
        T0,
    );
    assert_eq!(c.batch(), BatchState::Clean);
}

#[test]
fn a_new_home_relay_reaches_peers_with_the_endpoints_and_in_full_maps() {
    let (mut c, s1, mut s3) = streaming();
    let stream3 = s3.id();
    let eps = c.published().load().nodes[&NodeId(3)].rec.endpoints.clone();
    c.handle(
        Msg::Endpoints {
            node: NodeId(3),
            stream: stream3,
            endpoints: eps,
            home_relay: Some(901),
        },
        T0,
    );
    c.flush(T0);
    let snap = c.published().load();
    assert_eq!(snap.nodes[&NodeId(3)].home_relay, Some(901));
    assert_eq!(snap.nodes[&NodeId(3)].wire.home_relay, Some(901));
    let got = deltas(&s1.drain());
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].1.contains(r#""home_relay":901"#), "{}", got[0].1);
    // The same again changes nothing.
    c.handle(
        Msg::Endpoints {
            node: NodeId(3),
            stream: stream3,
            endpoints: snap.nodes[&NodeId(3)].rec.endpoints.clone(),
            home_relay: Some(901),
        },
        T0,
    );
    assert_eq!(c.batch(), BatchState::Clean);
}

#[test]
fn a_node_registered_in_the_batch_gets_its_map_from_the_next_snapshot() {
    let mut c = state(
        records()
            .into_iter()
            .filter(|r| r.id != NodeId(3))
            .collect(),
    );
    c.handle(Msg::NodeUpsert(Box::new(record(3))), T0);
    let mut s3 = subscribe(&mut c, &record(3), T0);
    // Parked: the published snapshot does not have node 3 yet.
    assert!(matches!(
        s3.reply.try_recv(),
        Err(oneshot::error::TryRecvError::Empty)
    ));
    assert!(s3.drain().is_empty());
    assert_eq!(c.batch(), BatchState::Dirty);

    c.flush(T0);
    assert!(c.published().load().nodes.contains_key(&NodeId(3)));
    assert!(s3.id() > 0);
    assert!(matches!(s3.drain()[..], [Item::Full]));
    // Its going online is the next batch's.
    assert_eq!(c.batch(), BatchState::Dirty);
}

#[test]
fn unknown_keys_and_other_machines_are_refused() {
    let mut c = state(records());
    let mut stranger = record(3);
    stranger.node_key = weft_types::NodePublic::from_bytes([9; 32]);
    let mut s = subscribe(&mut c, &stranger, T0);
    assert_eq!(
        s.reply.try_recv().unwrap().unwrap_err().code,
        ErrorCode::NotRegistered
    );
    let mut thief = record(3);
    thief.machine_key = weft_types::MachinePublic::from_bytes([9; 32]);
    let mut s = subscribe(&mut c, &thief, T0);
    assert_eq!(
        s.reply.try_recv().unwrap().unwrap_err().code,
        ErrorCode::NotRegistered
    );
    assert_eq!(c.batch(), BatchState::Clean);
}

#[test]
fn a_key_expires_at_its_deadline_ends_its_stream_and_peers_see_it() {
    let expiry = T0.saturating_add(Duration::from_secs(600));
    let mut nodes = records();
    for n in &mut nodes {
        if n.id == NodeId(3) {
            n.key_expiry = Some(expiry);
        }
    }
    let mut c = state(nodes);
    let (s1, s3) = (
        subscribe(&mut c, &record(1), T0),
        subscribe(&mut c, &record(3), T0),
    );
    c.flush(T0);
    s1.drain();
    s3.drain();

    // The first deadline is the collector's, at load; then the expiry
    // comes before the collector's next round.
    assert_eq!(c.next_timer(), T0);
    let before = UnixMillis(expiry.0 - 1);
    c.on_timer(before);
    assert_eq!(c.next_timer(), expiry);
    assert_eq!(c.batch(), BatchState::Clean);
    assert!(s3.drain().is_empty());

    c.on_timer(expiry);
    assert_eq!(closed_with(&s3.drain()), Some(ErrorCode::NodeKeyExpired));
    assert_eq!(c.batch(), BatchState::Dirty);
    c.flush(expiry);
    assert!(c.published().load().nodes[&NodeId(3)].wire.expired);
    let got = deltas(&s1.drain());
    assert_eq!(got.len(), 1, "{got:?}");
    // The expired node may not open a new stream.
    let mut again = subscribe(&mut c, &record(3), expiry);
    assert_eq!(
        again.reply.try_recv().unwrap().unwrap_err().code,
        ErrorCode::NodeKeyExpired
    );
}

#[test]
fn an_offline_ephemeral_node_is_handed_out_for_deletion_once_after_its_grace() {
    let mut nodes = records();
    for n in &mut nodes {
        if n.id == NodeId(1) || n.id == NodeId(2) {
            n.ephemeral = true;
            n.last_seen = Some(T0);
        }
    }
    let mut c = state(nodes);
    // Node 1 is connected, so it stays however long.
    let s1 = subscribe(&mut c, &record(1), T0);
    c.flush(T0);
    s1.drain();

    // The collector's rounds (every quarter grace) hand it out at the
    // first round at or after its grace, not before.
    let due = T0.saturating_add(GRACE);
    let handed_out = loop {
        let t = c.next_timer();
        assert!(t <= due.saturating_add(GRACE / 4), "no round hands it out");
        c.on_timer(t);
        if let Some(id) = c.poll_deletion() {
            assert_eq!(id, NodeId(2));
            break t;
        }
        assert!(t < due, "not handed out at {t:?}, grace ended at {due:?}");
    };
    assert!(handed_out >= due);
    assert_eq!(c.poll_deletion(), None);
    // Not again while its deletion is under way.
    let later = due.saturating_add(GRACE);
    c.on_timer(later);
    assert_eq!(c.poll_deletion(), None);
    assert!(c.published().load().nodes.contains_key(&NodeId(2)));

    // The driver deleted it.
    c.handle(Msg::NodeDeleted(NodeId(2)), later);
    c.flush(later);
    assert!(!c.published().load().nodes.contains_key(&NodeId(2)));
    assert_eq!(deltas(&s1.drain()).len(), 1);
}

#[test]
fn host_info_beyond_the_budget_is_held_and_applied_when_it_refills() {
    let mut c = state(records());
    let mut s3 = subscribe(&mut c, &record(3), T0);
    let stream = s3.id();
    c.flush(T0);
    c.on_timer(T0);
    let host = |name: &str| HostInfo {
        hostname: name.to_owned(),
        ..HostInfo::default()
    };
    for i in 0..HOST_INFO_BURST {
        c.handle(
            Msg::HostInfo {
                node: NodeId(3),
                stream,
                host_info: Box::new(host(&format!("burst{i}"))),
            },
            T0,
        );
    }
    for name in ["held", "latest"] {
        c.handle(
            Msg::HostInfo {
                node: NodeId(3),
                stream,
                host_info: Box::new(host(name)),
            },
            T0,
        );
    }
    c.flush(T0);
    let last = format!("burst{}", HOST_INFO_BURST - 1);
    assert_eq!(c.published().load().nodes[&NodeId(3)].host.hostname, last);

    // Released when one change is due again, coalesced to the latest.
    let refill = T0.saturating_add(HOST_INFO_REFILL);
    assert_eq!(c.next_timer(), refill);
    c.on_timer(UnixMillis(refill.0 - 1));
    assert_eq!(c.batch(), BatchState::Clean);
    c.on_timer(refill);
    assert_eq!(c.batch(), BatchState::Dirty);
    c.flush(refill);
    assert_eq!(
        c.published().load().nodes[&NodeId(3)].host.hostname,
        "latest"
    );
}

#[test]
fn a_flush_request_ends_the_batch_at_once_and_answers_with_its_version() {
    let mut c = state(records());
    assert_eq!(c.batch(), BatchState::Clean);
    let (tx, mut rx) = oneshot::channel();
    c.handle(Msg::Flush(tx), T0);
    assert_eq!(c.batch(), BatchState::Due);
    assert!(rx.try_recv().is_err());
    c.flush(T0);
    assert_eq!(rx.try_recv().unwrap(), 1);
    assert_eq!(c.batch(), BatchState::Clean);
}

#[test]
fn shutting_down_ends_every_stream() {
    let (mut c, s1, s3) = streaming();
    c.shut_down();
    assert_eq!(closed_with(&s1.drain()), Some(ErrorCode::ShuttingDown));
    assert_eq!(closed_with(&s3.drain()), Some(ErrorCode::ShuttingDown));
}

#[test]
fn new_dns_settings_reach_every_stream_as_one_dns_delta_and_full_maps() {
    let (mut c, s1, s3) = streaming();
    let mut dns = crate::state::default_dns_config();
    dns.nameservers = vec!["192.0.2.53".parse().unwrap()];
    c.handle(Msg::Dns(Box::new(dns.clone())), T0);
    assert_eq!(c.batch(), BatchState::Dirty);
    c.flush(T0);
    for s in [&s1, &s3] {
        let got = deltas(&s.drain());
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].1.contains(r#"{"dns":{"magic_dns":true"#),
            "{}",
            got[0].1
        );
        assert!(got[0].1.contains("192.0.2.53"), "{}", got[0].1);
        assert!(!got[0].1.contains("\"peer\""), "only DNS: {}", got[0].1);
    }
    let full = c.published().load().full_map(NodeId(1)).unwrap().unwrap();
    let text = String::from_utf8_lossy(full.as_bytes()).into_owned();
    assert!(text.contains("192.0.2.53"), "{text}");
    assert!(
        !text.contains(r#""search_domains":["weft"#),
        "the tailnet domain is implicit: {text}"
    );
    // The same settings again send nothing.
    c.handle(Msg::Dns(Box::new(dns)), T0);
    c.flush(T0);
    assert!(deltas(&s1.drain()).is_empty());
}
