//! Encode-once splicing produces exactly the bytes of the typed messages.

#![allow(clippy::unwrap_used)]

use crate::common;

use common::*;
use weft_control_proto::encode::{FullMapParts, delta_body, full_map_body, map_message};
use weft_control_proto::{ChannelConfig, Encoded, Event, MapSession, MapStream, NetMapDiff};
use weft_types::control::ServerMessage;
use weft_types::netmap::{Delta, MapBody, MapResponse, NetMap, PeerDelta};
use weft_types::{Node, NodeId, UnixMillis, UserProfile};

/// Builds the spliced full map for `map` the way the server does.
fn spliced_full(map: &NetMap) -> Encoded<MapBody> {
    let self_node = Encoded::new(&map.self_node).unwrap();
    let peers: Vec<Encoded<Node>> = map
        .peers
        .values()
        .map(|n| Encoded::new(n).unwrap())
        .collect();
    let peer_refs: Vec<&Encoded<Node>> = peers.iter().collect();
    let profiles: Vec<Encoded<UserProfile>> = map
        .user_profiles
        .values()
        .map(|p| Encoded::new(p).unwrap())
        .collect();
    let profile_refs: Vec<&Encoded<UserProfile>> = profiles.iter().collect();
    full_map_body(&FullMapParts {
        self_node: &self_node,
        peers: &peer_refs,
        user_profiles: &profile_refs,
        domain: &map.domain,
        dns: &Encoded::new(&map.dns).unwrap(),
        relay_map: &Encoded::new(&map.relay_map).unwrap(),
        packet_filter: &Encoded::new(&map.packet_filter).unwrap(),
        ssh_policy: &Encoded::new(&map.ssh_policy).unwrap(),
    })
    .unwrap()
}

#[test]
fn a_spliced_full_map_is_byte_identical_to_the_typed_one() {
    let map = netmap(1, [2, 3, 4]);
    let msg = map_message(7, &spliced_full(&map)).unwrap();
    let typed = ServerMessage::Map(MapResponse {
        seq: 7,
        body: MapBody::Full(Box::new(map)),
    });
    assert_eq!(msg.as_str(), serde_json::to_string(&typed).unwrap());
    assert_eq!(
        serde_json::from_slice::<ServerMessage>(msg.as_bytes()).unwrap(),
        typed
    );
}

#[test]
fn a_delta_encoded_once_is_byte_identical_for_every_seq() {
    let deltas = vec![
        Delta::Peer(PeerDelta::Added(Box::new(node(9)))),
        Delta::Peer(PeerDelta::Online {
            id: NodeId(2),
            online: false,
            last_seen: UnixMillis(42),
        }),
    ];
    let body = delta_body(&deltas).unwrap();
    for seq in [2, 3, 1000] {
        let msg = map_message(seq, &body).unwrap();
        let typed = ServerMessage::Map(MapResponse {
            seq,
            body: MapBody::Delta(deltas.clone()),
        });
        assert_eq!(msg.as_str(), serde_json::to_string(&typed).unwrap());
    }
}

#[test]
fn the_server_stream_numbers_responses_from_one() {
    let mut stream = MapStream::new();
    let body = delta_body(&[]).unwrap();
    assert_eq!(stream.last_seq(), 0);
    let first = stream.next(&spliced_full(&netmap(1, []))).unwrap();
    let second = stream.next(&body).unwrap();
    let seq = |m: &Encoded<ServerMessage>| match serde_json::from_slice(m.as_bytes()).unwrap() {
        ServerMessage::Map(r) => r.seq,
        other => panic!("{other:?}"),
    };
    assert_eq!((seq(&first), seq(&second), stream.last_seq()), (1, 2, 2));
}

#[test]
fn a_server_stream_drives_a_client_session_over_the_channel() {
    // Server: splice a full map, then one shared delta; client: channel +
    // map session end up with the same netmap as the server's model.
    let now = t0();
    let (mut client, mut server) = established(ChannelConfig::default(), now);
    let mut model = netmap(1, 2..40);
    let mut stream = MapStream::new();
    server
        .send_encoded(&stream.next(&spliced_full(&model)).unwrap(), now)
        .unwrap();
    let deltas = vec![
        Delta::Peer(PeerDelta::Removed(NodeId(5))),
        Delta::Peer(PeerDelta::Added(Box::new(node(77)))),
    ];
    model.peers.remove(&NodeId(5));
    model.peers.insert(NodeId(77), node(77));
    server
        .send_encoded(&stream.next(&delta_body(&deltas).unwrap()).unwrap(), now)
        .unwrap();
    pump(&mut server, &mut client, now).unwrap();

    let mut session = MapSession::new(std::time::Duration::from_secs(150), now);
    let mut diffs = Vec::new();
    while let Some(ev) = client.poll_event() {
        let Event::Message(ServerMessage::Map(resp)) = ev else {
            panic!("{ev:?}")
        };
        diffs.push(session.handle_response(resp, now).unwrap());
    }
    assert_eq!(session.netmap().unwrap(), &model);
    assert_eq!(diffs.len(), 2);
    assert_eq!(diffs[0], NetMapDiff::between(None, &netmap(1, 2..40)));
    assert_eq!(diffs[1].peers.len(), 2);
}

#[test]
fn a_full_map_of_10000_peers_is_spliced_from_cached_fragments() {
    let peers: Vec<Encoded<Node>> = (2..10_002)
        .map(|i| Encoded::new(&node(i)).unwrap())
        .collect();
    let refs: Vec<&Encoded<Node>> = peers.iter().collect();
    let map = netmap(1, []);
    let self_node = Encoded::new(&map.self_node).unwrap();
    let empty = Encoded::new(&map.dns).unwrap();
    let relay = Encoded::new(&map.relay_map).unwrap();
    let filter = Encoded::new(&map.packet_filter).unwrap();
    let ssh = Encoded::new(&map.ssh_policy).unwrap();
    let parts = FullMapParts {
        self_node: &self_node,
        peers: &refs,
        user_profiles: &[],
        domain: &map.domain,
        dns: &empty,
        relay_map: &relay,
        packet_filter: &filter,
        ssh_policy: &ssh,
    };
    let body = full_map_body(&parts).unwrap();
    // The body is the fragments, the commas between them, and a small rest.
    let fragments: usize = peers.iter().map(Encoded::len).sum::<usize>() + peers.len() - 1;
    assert!(
        body.len() > fragments && body.len() < fragments + 2_000,
        "{} vs {fragments}",
        body.len()
    );
    let MapBody::Full(parsed) = serde_json::from_slice::<MapBody>(body.as_bytes()).unwrap() else {
        panic!()
    };
    assert_eq!(parsed.peers.len(), 10_000);
    assert_eq!(parsed.peers[&NodeId(5000)], node(5000));
}
