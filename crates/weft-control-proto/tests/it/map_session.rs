//! The client's map session against a reference model: full map, deltas,
//! sequence numbers, stalls, and diffs.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::*;
use proptest::prelude::*;
use weft_control_proto::{ChangedFields, MapError, MapSession, NetMapDiff, PeerDiff};
use weft_types::netmap::{Delta, DnsConfig, MapBody, MapResponse, NetMap, PeerDelta};
use weft_types::{NodeId, NodePrivate, UnixMillis, UserId};

const STALL: Duration = Duration::from_secs(150);

fn full(seq: u64, map: &NetMap) -> MapResponse {
    MapResponse {
        seq,
        body: MapBody::Full(Box::new(map.clone())),
    }
}

fn delta(seq: u64, deltas: Vec<Delta>) -> MapResponse {
    MapResponse {
        seq,
        body: MapBody::Delta(deltas),
    }
}

fn added(id: i64) -> Delta {
    Delta::Peer(PeerDelta::Added(Box::new(node(id))))
}

// --- the happy path ---

#[test]
fn a_full_map_then_deltas_builds_the_netmap() {
    let now = t0();
    let mut s = MapSession::new(STALL, now);
    let diff = s.handle_response(full(1, &netmap(1, [2, 3])), now).unwrap();
    assert_eq!(diff, NetMapDiff::between(None, &netmap(1, [2, 3])));
    assert_eq!(diff.peers.len(), 2);

    let diff = s
        .handle_response(
            delta(
                2,
                vec![added(4), Delta::Peer(PeerDelta::Removed(NodeId(2)))],
            ),
            now,
        )
        .unwrap();
    assert_eq!(diff.peers.get(&NodeId(4)), Some(&PeerDiff::Added));
    assert_eq!(
        diff.peers.get(&NodeId(2)),
        Some(&PeerDiff::Removed(Box::new(node(2))))
    );
    assert_eq!(s.netmap().unwrap(), &netmap(1, [3, 4]));
    assert_eq!(s.last_seq(), Some(2));
}

#[test]
fn a_rekeyed_peer_reports_its_previous_key() {
    let now = t0();
    let mut s = MapSession::new(STALL, now);
    s.handle_response(full(1, &netmap(1, [2])), now).unwrap();
    let mut rekeyed = node(2);
    rekeyed.node_key = NodePrivate::from_bytes([0xEE; 32]).public();
    let diff = s
        .handle_response(
            delta(2, vec![Delta::Peer(PeerDelta::Changed(Box::new(rekeyed)))]),
            now,
        )
        .unwrap();
    let Some(PeerDiff::Changed { previous, fields }) = diff.peers.get(&NodeId(2)) else {
        panic!("{diff:?}")
    };
    assert_eq!(previous.node_key, node(2).node_key);
    assert_eq!(
        *fields,
        ChangedFields {
            node_key: true,
            ..Default::default()
        }
    );
}

#[test]
fn endpoint_and_presence_deltas_change_only_those_fields() {
    let now = t0();
    let mut s = MapSession::new(STALL, now);
    s.handle_response(full(1, &netmap(1, [2])), now).unwrap();
    let diff = s
        .handle_response(
            delta(
                2,
                vec![
                    Delta::Peer(PeerDelta::Endpoints {
                        id: NodeId(2),
                        endpoints: vec![endpoint(9, 9)],
                        home_relay: Some(900),
                    }),
                    Delta::Peer(PeerDelta::Online {
                        id: NodeId(2),
                        online: false,
                        last_seen: UnixMillis(5),
                    }),
                ],
            ),
            now,
        )
        .unwrap();
    let Some(PeerDiff::Changed { fields, .. }) = diff.peers.get(&NodeId(2)) else {
        panic!()
    };
    assert_eq!(
        *fields,
        ChangedFields {
            endpoints: true,
            presence: true,
            ..Default::default()
        }
    );
    let peer = &s.netmap().unwrap().peers[&NodeId(2)];
    assert_eq!((peer.online, peer.last_seen), (false, Some(UnixMillis(5))));
    assert_eq!(peer.endpoints, vec![endpoint(9, 9)]);
    assert_eq!(peer.home_relay, Some(900));

    // A new home relay alone is a change of where the peer is reached.
    let diff = s
        .handle_response(
            delta(
                3,
                vec![Delta::Peer(PeerDelta::Endpoints {
                    id: NodeId(2),
                    endpoints: vec![endpoint(9, 9)],
                    home_relay: Some(901),
                })],
            ),
            now,
        )
        .unwrap();
    let Some(PeerDiff::Changed { fields, .. }) = diff.peers.get(&NodeId(2)) else {
        panic!("{diff:?}")
    };
    assert_eq!(
        *fields,
        ChangedFields {
            endpoints: true,
            ..Default::default()
        }
    );
    assert_eq!(s.netmap().unwrap().peers[&NodeId(2)].home_relay, Some(901));
}

#[test]
fn an_expired_peer_stays_in_the_map_but_is_not_usable() {
    let now = t0();
    let mut s = MapSession::new(STALL, now);
    s.handle_response(full(1, &netmap(1, [2, 3])), now).unwrap();
    let mut expired = node(3);
    expired.expired = true;
    s.handle_response(
        delta(2, vec![Delta::Peer(PeerDelta::Changed(Box::new(expired)))]),
        now,
    )
    .unwrap();
    let map = s.netmap().unwrap();
    assert_eq!(map.peers.len(), 2);
    let wall = UnixMillis(1_700_000_000_000);
    let usable: Vec<_> = map.usable_peers(wall).map(|n| n.id).collect();
    assert_eq!(usable, vec![NodeId(2)]);
    // A key past its expiry is unusable too, even before the server says so.
    let past = node(2).key_expiry.unwrap();
    assert!(map.usable_peers(past).next().is_none());
}

#[test]
fn a_repeated_identical_delta_reports_no_change() {
    let now = t0();
    let mut s = MapSession::new(STALL, now);
    s.handle_response(full(1, &netmap(1, [2])), now).unwrap();
    let same = Delta::Peer(PeerDelta::Changed(Box::new(node(2))));
    let diff = s
        .handle_response(delta(2, vec![same, Delta::Dns(netmap(1, []).dns)]), now)
        .unwrap();
    assert!(diff.is_empty(), "{diff:?}");
}

// --- sequence and consistency errors ---

#[test]
fn a_seq_gap_needs_a_restart_and_keeps_the_last_good_map() {
    let now = t0();
    let mut s = MapSession::new(STALL, now);
    s.handle_response(full(1, &netmap(1, [2])), now).unwrap();
    assert_eq!(
        s.handle_response(delta(3, vec![added(3)]), now),
        Err(MapError::UnexpectedSeq {
            expected: 2,
            got: 3
        })
    );
    assert_eq!(
        s.handle_response(delta(2, vec![added(3)]), now),
        Err(MapError::NeedsRestart)
    );
    assert_eq!(s.netmap().unwrap(), &netmap(1, [2]));
    assert_eq!(s.poll_timeout(), None);

    // After a reconnect, the new stream's full map is diffed against it.
    s.restart(now);
    let diff = s.handle_response(full(1, &netmap(1, [2, 3])), now).unwrap();
    assert_eq!(diff.peers.len(), 1);
    assert_eq!(diff.peers.get(&NodeId(3)), Some(&PeerDiff::Added));
    assert!(!diff.dns && !diff.self_node);
}

#[test]
fn a_repeated_or_old_seq_is_refused() {
    let now = t0();
    let mut s = MapSession::new(STALL, now);
    s.handle_response(full(1, &netmap(1, [2])), now).unwrap();
    s.handle_response(delta(2, vec![added(3)]), now).unwrap();
    assert_eq!(
        s.handle_response(delta(2, vec![added(4)]), now),
        Err(MapError::UnexpectedSeq {
            expected: 3,
            got: 2
        })
    );
}

#[test]
fn a_stream_must_start_with_a_full_map_at_seq_one() {
    let now = t0();
    let mut s = MapSession::new(STALL, now);
    assert_eq!(
        s.handle_response(delta(1, vec![added(3)]), now),
        Err(MapError::DeltaBeforeFull)
    );
    let mut s = MapSession::new(STALL, now);
    assert_eq!(
        s.handle_response(full(5, &netmap(1, [])), now),
        Err(MapError::UnexpectedSeq {
            expected: 1,
            got: 5
        })
    );
}

#[test]
fn inconsistent_deltas_are_refused_as_a_whole() {
    let now = t0();
    let cases: Vec<(Vec<Delta>, MapError)> = vec![
        (vec![added(4), added(2)], MapError::PeerExists(NodeId(2))),
        (vec![added(4), added(4)], MapError::PeerExists(NodeId(4))),
        (
            vec![added(4), Delta::Peer(PeerDelta::Removed(NodeId(9)))],
            MapError::UnknownPeer(NodeId(9)),
        ),
        (
            vec![
                Delta::Peer(PeerDelta::Removed(NodeId(2))),
                Delta::Peer(PeerDelta::Endpoints {
                    id: NodeId(2),
                    endpoints: vec![],
                    home_relay: None,
                }),
            ],
            MapError::UnknownPeer(NodeId(2)),
        ),
        (vec![added(1)], MapError::SelfAsPeer(NodeId(1))),
        (
            vec![Delta::SelfNode(Box::new(node(7)))],
            MapError::SelfIdChanged {
                expected: NodeId(1),
                got: NodeId(7),
            },
        ),
        (
            vec![Delta::UserProfileRemoved(UserId(99))],
            MapError::UnknownUser(UserId(99)),
        ),
    ];
    for (deltas, want) in cases {
        let mut s = MapSession::new(STALL, now);
        s.handle_response(full(1, &netmap(1, [2, 3])), now).unwrap();
        assert_eq!(s.handle_response(delta(2, deltas), now), Err(want));
        assert_eq!(
            s.netmap().unwrap(),
            &netmap(1, [2, 3]),
            "nothing of the batch is applied"
        );
    }
}

#[test]
fn a_full_map_listing_the_node_as_its_own_peer_is_refused() {
    let now = t0();
    let mut s = MapSession::new(STALL, now);
    let mut bad = netmap(1, [2]);
    bad.peers.insert(NodeId(1), node(1));
    assert_eq!(
        s.handle_response(full(1, &bad), now),
        Err(MapError::SelfAsPeer(NodeId(1)))
    );
    assert_eq!(s.netmap(), None);
}

// --- keep-alives ---

#[test]
fn the_stream_stalls_without_messages_or_keep_alives() {
    let now = t0();
    let mut s = MapSession::new(STALL, now);
    s.handle_response(full(1, &netmap(1, [])), now).unwrap();
    assert_eq!(s.poll_timeout(), Some((now + STALL, "map stream stall")));

    let later = now + Duration::from_secs(100);
    s.handle_keep_alive(later);
    assert_eq!(s.poll_timeout(), Some((later + STALL, "map stream stall")));
    s.handle_timeout(now + STALL).unwrap();
    assert_eq!(
        s.handle_timeout(later + STALL),
        Err(MapError::Stalled(STALL))
    );
    assert_eq!(
        s.handle_response(delta(2, vec![]), later + STALL),
        Err(MapError::NeedsRestart)
    );
    assert!(s.netmap().is_some());
}

// --- model-based ---

/// One generated step; choices are resolved against the model so every
/// generated delta is valid.
#[derive(Debug, Clone)]
enum Op {
    Add(u8),
    Remove(u8),
    Rekey(u8, u8),
    Endpoints(u8, u16),
    Online(u8, bool),
    Expire(u8),
    Dns(bool),
    SelfChange(u8),
    Profile(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => any::<u8>().prop_map(Op::Add),
        2 => any::<u8>().prop_map(Op::Remove),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Op::Rekey(a, b)),
        2 => (any::<u8>(), any::<u16>()).prop_map(|(a, b)| Op::Endpoints(a, b)),
        2 => (any::<u8>(), any::<bool>()).prop_map(|(a, b)| Op::Online(a, b)),
        1 => any::<u8>().prop_map(Op::Expire),
        1 => any::<bool>().prop_map(Op::Dns),
        1 => any::<u8>().prop_map(Op::SelfChange),
        1 => any::<u8>().prop_map(Op::Profile),
    ]
}

/// A response: a batch of ops, or (None) a fresh full map of the model.
fn step() -> impl Strategy<Value = Option<Vec<Op>>> {
    prop_oneof![
        1 => Just(None),
        8 => proptest::collection::vec(op(), 0..5).prop_map(Some),
    ]
}

fn pick(map: &NetMap, k: u8) -> Option<NodeId> {
    let ids: Vec<_> = map.peers.keys().copied().collect();
    if ids.is_empty() {
        None
    } else {
        Some(ids[usize::from(k) % ids.len()])
    }
}

/// Turns an op into a delta valid for `model` and applies it to the model
/// the plain way.
fn resolve(model: &mut NetMap, op: &Op) -> Option<Delta> {
    match *op {
        Op::Add(k) => {
            let id = NodeId(2 + i64::from(k % 64));
            if model.peers.contains_key(&id) {
                return None;
            }
            model.peers.insert(id, node(id.0));
            Some(Delta::Peer(PeerDelta::Added(Box::new(node(id.0)))))
        }
        Op::Remove(k) => {
            let id = pick(model, k)?;
            model.peers.remove(&id);
            Some(Delta::Peer(PeerDelta::Removed(id)))
        }
        Op::Rekey(k, b) => {
            let id = pick(model, k)?;
            let p = model.peers.get_mut(&id)?;
            p.node_key = NodePrivate::from_bytes([b; 32]).public();
            Some(Delta::Peer(PeerDelta::Changed(Box::new(p.clone()))))
        }
        Op::Endpoints(k, port) => {
            let id = pick(model, k)?;
            let eps = vec![endpoint(id.0, port)];
            let home_relay = (port % 3 != 0).then_some(900 + port % 2);
            let p = model.peers.get_mut(&id)?;
            p.endpoints = eps.clone();
            p.home_relay = home_relay;
            Some(Delta::Peer(PeerDelta::Endpoints {
                id,
                endpoints: eps,
                home_relay,
            }))
        }
        Op::Online(k, online) => {
            let id = pick(model, k)?;
            let p = model.peers.get_mut(&id)?;
            p.online = online;
            p.last_seen = Some(UnixMillis(i64::from(k) * 1000));
            Some(Delta::Peer(PeerDelta::Online {
                id,
                online,
                last_seen: UnixMillis(i64::from(k) * 1000),
            }))
        }
        Op::Expire(k) => {
            let id = pick(model, k)?;
            let p = model.peers.get_mut(&id)?;
            p.expired = !p.expired;
            Some(Delta::Peer(PeerDelta::Changed(Box::new(p.clone()))))
        }
        Op::Dns(magic) => {
            let dns = DnsConfig {
                magic_dns: magic,
                ..Default::default()
            };
            model.dns = dns.clone();
            Some(Delta::Dns(dns))
        }
        Op::SelfChange(k) => {
            model.self_node.endpoints = vec![endpoint(1, u16::from(k))];
            Some(Delta::SelfNode(Box::new(model.self_node.clone())))
        }
        Op::Profile(k) => {
            let mut p = profile(1 + i64::from(k % 3));
            p.display_name = format!("renamed {k}");
            model.user_profiles.insert(p.id, p.clone());
            Some(Delta::UserProfile(p))
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn the_session_matches_the_reference_model_and_reports_exact_diffs(
        initial in proptest::collection::btree_set(2i64..66, 0..12),
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        let now = t0();
        let mut model = netmap(1, initial);
        let mut s = MapSession::new(STALL, now);
        let first = s.handle_response(full(1, &model), now).unwrap();
        prop_assert_eq!(first, NetMapDiff::between(None, &model));
        for (i, step) in steps.iter().enumerate() {
            let seq = i as u64 + 2;
            let before = model.clone();
            let resp = match step {
                None => full(seq, &model),
                Some(ops) => delta(seq, ops.iter().filter_map(|op| resolve(&mut model, op)).collect()),
            };
            let diff = s.handle_response(resp, now).unwrap();
            prop_assert_eq!(s.netmap().unwrap(), &model);
            prop_assert_eq!(diff, NetMapDiff::between(Some(&before), &model));
        }
    }

    #[test]
    fn any_out_of_order_seq_is_refused_without_touching_the_map(
        good in 1u64..20,
        bad in 0u64..40,
    ) {
        prop_assume!(bad != good + 1);
        let now = t0();
        let mut s = MapSession::new(STALL, now);
        s.handle_response(full(1, &netmap(1, [2])), now).unwrap();
        for seq in 2..=good {
            s.handle_response(delta(seq, vec![]), now).unwrap();
        }
        prop_assert_eq!(
            s.handle_response(delta(bad, vec![added(3)]), now),
            Err(MapError::UnexpectedSeq { expected: good + 1, got: bad })
        );
        prop_assert_eq!(s.netmap().unwrap(), &netmap(1, [2]));
    }
}
