//! The UAPI text protocol: round trips, the `get` format and error handling.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};

use ipnet::IpNet;
use proptest::prelude::*;
use weft_types::{NodePrivate, NodePublic};
use weft_wg::uapi::{self, EINVAL, EPROTO};
use weft_wg::{DeviceUpdate, PeerUpdate};

use crate::harness::*;

#[test]
fn get_output_matches_the_golden_text() {
    let mut net = Net::pair();
    // A second peer with everything set but no traffic.
    let mut third = PeerUpdate::new(key(3).public());
    third.preshared_key = Some(Some([0xab; 32]));
    third.persistent_keepalive = Some(25);
    third.endpoint = Some(SocketAddr::V6(SocketAddrV6::new(
        "fd7a:115c:a1e0::3".parse().unwrap(),
        41641,
        0,
        0,
    )));
    third.allowed_ips = vec![
        "fd7a:115c:a1e0::3/128".parse().unwrap(),
        "100.64.3.0/24".parse().unwrap(),
    ];
    net.nodes[0].dev.apply(
        DeviceUpdate {
            fwmark: Some(51),
            peers: vec![third],
            ..Default::default()
        },
        net.now,
    );
    net.handshake();

    // Peers come out sorted by public key: key(3)'s is 5dfe…, key(2)'s ce8d….
    assert_eq!(key(3).public().to_hex()[..4], *"5dfe");
    let got = net.nodes[0].dev.uapi_get(net.now);
    let expected = "\
private_key=0101010101010101010101010101010101010101010101010101010101010101
listen_port=51820
fwmark=51
public_key=5dfedd3b6bd47f6fa28ee15d969d5bb0ea53774d488bdaf9df1c6e0124b3ef22
preshared_key=abababababababababababababababababababababababababababababababab
protocol_version=1
endpoint=[fd7a:115c:a1e0::3]:41641
last_handshake_time_sec=0
last_handshake_time_nsec=0
tx_bytes=0
rx_bytes=0
persistent_keepalive_interval=25
allowed_ip=100.64.3.0/24
allowed_ip=fd7a:115c:a1e0::3/128
public_key=ce8d3ad1ccb633ec7b70c17814a5c76ecd029685050d344745ba05870e587d59
preshared_key=0000000000000000000000000000000000000000000000000000000000000000
protocol_version=1
endpoint=198.18.0.2:51820
last_handshake_time_sec=1800000000
last_handshake_time_nsec=0
tx_bytes=256
rx_bytes=92
persistent_keepalive_interval=0
allowed_ip=100.64.0.2/32
allowed_ip=fd7a:115c:a1e0::2/128
";
    // tx 256 = initiation 148 + keepalive 32 + the queued 44-byte packet + 32;
    // rx 92 = the response. The handshake completed at the device epoch.
    assert_eq!(got, expected);
}

#[test]
fn a_wg_setconf_body_parses_into_a_typed_update() {
    let pk = key(2).public().to_hex();
    let body = format!(
        "private_key={}\nlisten_port=51820\nreplace_peers=true\n\
         public_key={pk}\nprotocol_version=1\npreshared_key={}\nendpoint=[fd7a:115c:a1e0::2]:51820\n\
         persistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=100.64.0.2/32\n\
         allowed_ip=fd7a:115c:a1e0::2/128\n\nignored=after the blank line\n",
        "01".repeat(32),
        "00".repeat(32),
    );
    let u = uapi::parse_set(&body).unwrap();
    assert_eq!(u.private_key, Some(Some(key(1))));
    assert_eq!((u.listen_port, u.replace_peers), (Some(51820), true));
    let p = &u.peers[0];
    assert_eq!(p.public_key, key(2).public());
    assert_eq!(
        p.preshared_key,
        Some(None),
        "all-zero preshared key means none"
    );
    assert_eq!(
        p.endpoint,
        Some("[fd7a:115c:a1e0::2]:51820".parse().unwrap())
    );
    assert_eq!(
        (p.persistent_keepalive, p.replace_allowed_ips),
        (Some(25), true)
    );
    assert_eq!(p.allowed_ips.len(), 2);
}

#[test]
fn an_all_zero_private_key_removes_the_key() {
    let u = uapi::parse_set(&format!("private_key={}\n", "0".repeat(64))).unwrap();
    assert_eq!(u.private_key, Some(None));
}

#[test]
fn allowed_ip_lines_apply_in_order() {
    let pk = key(2).public().to_hex();
    let body = format!(
        "public_key={pk}\nallowed_ip=100.64.0.1/32\nallowed_ip=100.64.0.2/32\nallowed_ip=-100.64.0.1/32\n\
         replace_allowed_ips=true\nallowed_ip=100.64.0.3/32\nallowed_ip=-100.64.0.9/32\n"
    );
    let u = uapi::parse_set(&body).unwrap();
    let p = &u.peers[0];
    assert!(p.replace_allowed_ips);
    assert_eq!(
        p.allowed_ips,
        vec!["100.64.0.3/32".parse::<IpNet>().unwrap()]
    );
    assert_eq!(
        p.remove_allowed_ips,
        vec!["100.64.0.9/32".parse::<IpNet>().unwrap()]
    );
}

#[test]
fn bad_uapi_input_gives_the_right_errno_and_changes_nothing() {
    let mut net = Net::pair();
    net.handshake();
    let dev = &net.nodes[0].dev;
    let pk = key(7).public().to_hex();
    let cases: &[(&str, String, i32)] = &[
        ("unknown device key", "foo=bar\n".into(), EINVAL),
        (
            "unknown peer key",
            format!("public_key={pk}\nfoo=bar\n"),
            EINVAL,
        ),
        ("a line without =", "listen_port\n".into(), EPROTO),
        (
            "bad hex key",
            format!("private_key={}\n", "zz".repeat(32)),
            EINVAL,
        ),
        (
            "short key",
            format!("public_key={}\n", "ab".repeat(31)),
            EINVAL,
        ),
        (
            "bad preshared key",
            format!("public_key={pk}\npreshared_key=12\n"),
            EINVAL,
        ),
        ("port too large", "listen_port=65536\n".into(), EINVAL),
        ("negative port", "listen_port=-1\n".into(), EINVAL),
        ("signed port", "listen_port=+1\n".into(), EINVAL),
        ("empty port", "listen_port=\n".into(), EINVAL),
        ("hex fwmark", "fwmark=0x10\n".into(), EINVAL),
        (
            "replace_peers=false",
            "replace_peers=false\n".into(),
            EINVAL,
        ),
        (
            "host name endpoint",
            format!("public_key={pk}\nendpoint=example.com:51820\n"),
            EINVAL,
        ),
        (
            "endpoint without port",
            format!("public_key={pk}\nendpoint=198.18.0.9\n"),
            EINVAL,
        ),
        (
            "unbracketed v6 endpoint",
            format!("public_key={pk}\nendpoint=fd7a::1:51820\n"),
            EINVAL,
        ),
        (
            "allowed_ip before public_key",
            "allowed_ip=100.64.0.0/10\n".into(),
            EINVAL,
        ),
        (
            "prefix too long",
            format!("public_key={pk}\nallowed_ip=100.64.0.0/33\n"),
            EINVAL,
        ),
        (
            "allowed_ip without length",
            format!("public_key={pk}\nallowed_ip=100.64.0.1\n"),
            EINVAL,
        ),
        (
            "keepalive too large",
            format!("public_key={pk}\npersistent_keepalive_interval=65536\n"),
            EINVAL,
        ),
        (
            "protocol_version=2",
            format!("public_key={pk}\nprotocol_version=2\n"),
            EINVAL,
        ),
        (
            "remove=false",
            format!("public_key={pk}\nremove=false\n"),
            EINVAL,
        ),
        (
            "valid lines, then a bad one",
            format!(
                "listen_port=1\nfwmark=9\nprivate_key={}\nreplace_peers=true\npublic_key={pk}\n\
                 allowed_ip=0.0.0.0/0\nendpoint=198.18.0.9:1\nbogus=1\n",
                "05".repeat(32)
            ),
            EINVAL,
        ),
    ];
    for (name, body, errno) in cases {
        let before = dev.uapi_get(net.now);
        let err = dev.uapi_set(body, net.now).expect_err(name);
        assert_eq!(err.errno, *errno, "{name}: {err}");
        assert_eq!(dev.uapi_get(net.now), before, "{name}: the device changed");
    }
    // And the device still works.
    assert_eq!(
        net.send_ip(0, &ipv4_packet(overlay_v4(0), overlay_v4(1), 1, 8)),
        Outcome::Sent
    );
}

#[test]
fn uapi_set_applies_a_whole_body() {
    let net = Net::new(1);
    let dev = &net.nodes[0].dev;
    let body = format!(
        "listen_port=41641\npublic_key={}\nendpoint=198.18.0.2:51820\nallowed_ip=100.64.0.2/32\n",
        key(2).public().to_hex()
    );
    let applied = dev.uapi_set(&body, net.now).unwrap();
    assert_eq!(applied.listen_port, Some(41641));
    let peers = dev.peers(net.now);
    assert_eq!(peers[0].endpoint, Some(underlay(1)));
    assert_eq!(
        peers[0].allowed_ips,
        vec!["100.64.0.2/32".parse::<IpNet>().unwrap()]
    );
}

// --- round trip ---

fn key32() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>().prop_filter("all-zero means none", |k| *k != [0; 32])
}

fn endpoint() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::from(ip), port)),
        (any::<u128>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(ip),
            port,
            0,
            0
        ))),
    ]
}

fn prefix() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (any::<[u8; 4]>(), 0u8..=32)
            .prop_map(|(ip, len)| IpNet::new(IpAddr::from(ip), len).unwrap()),
        (any::<u128>(), 0u8..=128).prop_map(|(ip, len)| IpNet::new(
            IpAddr::from(Ipv6Addr::from(ip)),
            len
        )
        .unwrap()),
    ]
}

fn peer_update() -> impl Strategy<Value = PeerUpdate> {
    (
        any::<[u8; 32]>(),
        any::<(bool, bool, bool)>(),
        proptest::option::of(proptest::option::of(key32())),
        proptest::option::of(endpoint()),
        proptest::option::of(any::<u16>()),
        proptest::collection::vec(prefix(), 0..4),
        proptest::collection::vec(prefix(), 0..3),
    )
        .prop_map(
            |(pk, (remove, update_only, replace), psk, endpoint, keepalive, adds, removes)| {
                let mut u = PeerUpdate::new(NodePublic::from_bytes(pk));
                u.remove = remove;
                u.update_only = update_only;
                u.replace_allowed_ips = replace;
                u.preshared_key = psk;
                u.endpoint = endpoint;
                u.persistent_keepalive = keepalive;
                // A removal cancels an earlier addition of the same prefix, so a
                // canonical update never lists a prefix on both sides.
                u.remove_allowed_ips = removes
                    .into_iter()
                    .filter(|r| adds.iter().all(|a| a.trunc() != r.trunc()))
                    .collect();
                u.allowed_ips = adds;
                u
            },
        )
}

fn device_update() -> impl Strategy<Value = DeviceUpdate> {
    (
        proptest::option::of(proptest::option::of(
            key32().prop_map(NodePrivate::from_bytes),
        )),
        proptest::option::of(any::<u16>()),
        proptest::option::of(any::<u32>()),
        any::<bool>(),
        proptest::collection::vec(peer_update(), 0..4),
    )
        .prop_map(
            |(private_key, listen_port, fwmark, replace_peers, peers)| DeviceUpdate {
                private_key,
                listen_port,
                fwmark,
                replace_peers,
                peers,
            },
        )
}

proptest! {
    #[test]
    fn set_bodies_round_trip_through_the_serializer(update in device_update()) {
        let text = uapi::serialize_set(&update);
        let back = uapi::parse_set(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{}", *text)))?;
        prop_assert_eq!(back, update);
    }

    #[test]
    fn arbitrary_set_bodies_never_panic(body in "([a-z_]{0,12}=?[-0-9a-f:./\\[\\]]{0,70}\n){0,8}") {
        let _ = uapi::parse_set(&body);
    }
}
