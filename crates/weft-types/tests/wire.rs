//! The JSON shapes docs/PROTOCOL.md shows: every example there is checked
//! here, so the document cannot drift from the types.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use weft_types::control::*;
use weft_types::netmap::*;
use weft_types::*;

fn key<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().unwrap()
}

const NODEKEY: &str = "nodekey:1111111111111111111111111111111111111111111111111111111111111111";
const OLD_NODEKEY: &str =
    "nodekey:2222222222222222222222222222222222222222222222222222222222222222";
const MKEY: &str = "mkey:3333333333333333333333333333333333333333333333333333333333333333";
const DISCOKEY: &str = "discokey:4444444444444444444444444444444444444444444444444444444444444444";

fn host_info() -> HostInfo {
    HostInfo {
        hostname: "Alice's Laptop".into(),
        os: "linux".into(),
        os_version: "Debian 13".into(),
        weft_version: "0.1.0".into(),
        ssh_host_keys: vec![
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHh0ZXN0 root@laptop"
                .parse()
                .unwrap(),
        ],
        requested_tags: BTreeSet::new(),
        shields_up: false,
    }
}

fn sample_node() -> Node {
    Node {
        id: NodeId(7),
        stable_id: "n00000000000000000007".parse().unwrap(),
        name: "alices-laptop.example.weft".parse().unwrap(),
        owner: NodeOwner::User(UserId(1)),
        node_key: key(NODEKEY),
        machine_key: key(MKEY),
        disco_key: Some(key(DISCOKEY)),
        addresses: vec![
            "100.64.0.7/32".parse().unwrap(),
            "fd7a:115c:a1e0::7/128".parse().unwrap(),
        ],
        allowed_ips: vec![
            "100.64.0.7/32".parse().unwrap(),
            "fd7a:115c:a1e0::7/128".parse().unwrap(),
        ],
        endpoints: vec![Endpoint {
            addr: "198.18.0.7:41641".parse().unwrap(),
            kind: EndpointKind::Local,
        }],
        home_relay: Some(900),
        host_info: host_info(),
        created: UnixMillis(1_790_000_000_000),
        last_seen: Some(UnixMillis(1_790_000_500_000)),
        online: true,
        key_expiry: Some(UnixMillis(1_805_552_000_000)),
        expired: false,
        machine_authorized: true,
    }
}

fn round_trip<T>(value: &T, json: &str)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let compact: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(
        serde_json::to_value(value).unwrap(),
        compact,
        "encoding differs from the documented JSON"
    );
    assert_eq!(
        &serde_json::from_str::<T>(json).unwrap(),
        value,
        "documented JSON decodes differently"
    );
}

#[test]
fn the_register_request_example_matches() {
    let req = ClientMessage::Register(RegisterRequest {
        version: CapabilityVersion(1),
        node_key: key(NODEKEY),
        old_node_key: None,
        auth: RegisterAuth::AuthKey(AuthKey("wk-auth-0123456789abcdef".into())),
        expiry: ExpiryRequest::Default,
        ephemeral: false,
        host_info: host_info(),
    });
    round_trip(&req, EXAMPLE_REGISTER);
}

#[test]
fn register_variants_have_the_documented_shapes() {
    round_trip(&RegisterAuth::None, r#""none""#);
    round_trip(
        &RegisterAuth::Followup {
            auth_url: "https://control.example/a/k3x9".into(),
        },
        r#"{"followup":{"auth_url":"https://control.example/a/k3x9"}}"#,
    );
    round_trip(&ExpiryRequest::Now, r#""now""#);
    round_trip(
        &ExpiryRequest::At(UnixMillis(1_800_000_000_000)),
        r#"{"at":1800000000000}"#,
    );
    round_trip(
        &RegisterResponse::NeedsAuth {
            auth_url: "https://control.example/a/k3x9".into(),
        },
        r#"{"needs_auth":{"auth_url":"https://control.example/a/k3x9"}}"#,
    );
    round_trip(&RegisterResponse::NodeKeyExpired, r#""node_key_expired""#);
    round_trip(&RegisterResponse::LoggedOut, r#""logged_out""#);
    round_trip(
        &RegisterResponse::Refused(Refusal {
            reason: RefusalReason::NodeKeyInUse,
            message: "this node key belongs to another machine".into(),
            retry_after_ms: None,
        }),
        r#"{"refused":{"reason":"node_key_in_use","message":"this node key belongs to another machine"}}"#,
    );
    round_trip(
        &RegisterResponse::Refused(Refusal {
            reason: RefusalReason::ServerBusy,
            message: "the control server is busy; try again in 2 s".into(),
            retry_after_ms: Some(2_000),
        }),
        r#"{"refused":{"reason":"server_busy","message":"the control server is busy; try again in 2 s","retry_after_ms":2000}}"#,
    );
    // A client from before `server_busy` reads it as `other` and ignores the delay.
    let old: RegisterResponse = serde_json::from_str(
        r#"{"refused":{"reason":"some_future_reason","message":"m","retry_after_ms":5}}"#,
    )
    .unwrap();
    assert!(matches!(
        old,
        RegisterResponse::Refused(Refusal {
            reason: RefusalReason::Other,
            ..
        })
    ));
    round_trip(
        &ServerMessage::Register(RegisterResponse::Registered(Registered {
            node_id: NodeId(7),
            user: Some(UserProfile {
                id: UserId(1),
                login_name: "alice@example.com".parse().unwrap(),
                display_name: "Alice".into(),
                profile_pic_url: None,
            }),
            tags: BTreeSet::new(),
            machine_authorized: true,
            key_expiry: Some(UnixMillis(1_805_552_000_000)),
        })),
        EXAMPLE_REGISTERED,
    );
    let with_old = RegisterRequest {
        version: CapabilityVersion(1),
        node_key: key(NODEKEY),
        old_node_key: Some(key(OLD_NODEKEY)),
        auth: RegisterAuth::None,
        expiry: ExpiryRequest::Now,
        ephemeral: false,
        host_info: HostInfo::default(),
    };
    let v = serde_json::to_value(&with_old).unwrap();
    assert_eq!(v["old_node_key"], OLD_NODEKEY);
    assert_eq!(v["expiry"], "now");
}

#[test]
fn unknown_refusal_reasons_and_error_codes_decode_as_other() {
    let r: Refusal = serde_json::from_str(r#"{"reason":"from_the_future","message":"m"}"#).unwrap();
    assert_eq!(r.reason, RefusalReason::Other);
    let e: ProtocolError =
        serde_json::from_str(r#"{"code":"from_the_future","message":"m"}"#).unwrap();
    assert_eq!(e.code, ErrorCode::Other);
}

#[test]
fn unknown_fields_are_ignored_but_unknown_messages_are_errors() {
    let ka: ClientMessage = serde_json::from_str(r#"{"keep_alive":{"future_field":1}}"#).unwrap();
    assert_eq!(ka, ClientMessage::KeepAlive(KeepAlive {}));
    assert!(serde_json::from_str::<ClientMessage>(r#"{"teleport":{}}"#).is_err());
}

#[test]
fn the_map_request_example_matches() {
    let req = ClientMessage::Map(MapRequest {
        version: CapabilityVersion(1),
        node_key: key(NODEKEY),
        disco_key: key(DISCOKEY),
        endpoints: vec![
            Endpoint {
                addr: "198.18.0.7:41641".parse().unwrap(),
                kind: EndpointKind::Local,
            },
            Endpoint {
                addr: "198.19.5.5:61000".parse().unwrap(),
                kind: EndpointKind::Stun,
            },
        ],
        home_relay: Some(900),
        host_info: HostInfo {
            ssh_host_keys: vec![],
            ..host_info()
        },
        stream: true,
    });
    round_trip(&req, EXAMPLE_MAP_REQUEST);
}

#[test]
fn the_node_example_matches() {
    round_trip(&sample_node(), EXAMPLE_NODE);
}

#[test]
fn the_delta_example_matches() {
    let msg = ServerMessage::Map(MapResponse {
        seq: 42,
        body: MapBody::Delta(vec![
            Delta::Peer(PeerDelta::Endpoints {
                id: NodeId(9),
                endpoints: vec![Endpoint {
                    addr: "198.18.0.9:41641".parse().unwrap(),
                    kind: EndpointKind::Local,
                }],
                home_relay: Some(901),
            }),
            Delta::Peer(PeerDelta::Online {
                id: NodeId(12),
                online: false,
                last_seen: UnixMillis(1_790_000_900_000),
            }),
            Delta::Peer(PeerDelta::Removed(NodeId(13))),
        ]),
    });
    round_trip(&msg, EXAMPLE_DELTA);
}

#[test]
fn the_full_map_example_matches() {
    let map = NetMap {
        self_node: sample_node(),
        peers: Default::default(),
        user_profiles: [(
            UserId(1),
            UserProfile {
                id: UserId(1),
                login_name: "alice@example.com".parse().unwrap(),
                display_name: "Alice".into(),
                profile_pic_url: None,
            },
        )]
        .into(),
        domain: "example.weft".parse().unwrap(),
        dns: DnsConfig {
            magic_dns: true,
            nameservers: vec![],
            search_domains: vec![],
            ..Default::default()
        },
        relay_map: RelayMap::default(),
        packet_filter: PacketFilter::default(),
        ssh_policy: SshPolicy::default(),
    };
    let msg = ServerMessage::Map(MapResponse {
        seq: 1,
        body: MapBody::Full(Box::new(map)),
    });
    let json = serde_json::to_string(&msg).unwrap();
    let with_node = EXAMPLE_FULL.replace("\"<the node example>\"", EXAMPLE_NODE);
    round_trip(&msg, &with_node);
    assert!(json.starts_with(r#"{"map":{"seq":1,"body":{"full":{"self_node":"#));
}

#[test]
fn a_full_map_with_a_duplicate_peer_is_rejected() {
    let node = serde_json::to_string(&sample_node()).unwrap();
    let json = EXAMPLE_FULL
        .replace("\"<the node example>\"", &node)
        .replace(r#""peers": []"#, &format!(r#""peers": [{node},{node}]"#));
    let err = serde_json::from_str::<ServerMessage>(&json).unwrap_err();
    assert!(err.to_string().contains("appears twice"), "{err}");
}

#[test]
fn keep_alives_errors_and_the_key_response_have_the_documented_shapes() {
    round_trip(
        &ServerMessage::KeepAlive(KeepAlive {}),
        r#"{"keep_alive":{}}"#,
    );
    round_trip(
        &ServerMessage::Error(ProtocolError {
            code: ErrorCode::NotRegistered,
            message: "register this node key first".into(),
        }),
        r#"{"error":{"code":"not_registered","message":"register this node key first"}}"#,
    );
    round_trip(
        &KeyResponse {
            public_key: key(MKEY),
            capability_version: CapabilityVersion(1),
            min_capability_version: CapabilityVersion(1),
        },
        &format!(r#"{{"public_key":"{MKEY}","capability_version":1,"min_capability_version":1}}"#),
    );
    round_trip(
        &ClientMessage::Endpoints(EndpointUpdate {
            endpoints: vec![],
            home_relay: None,
        }),
        r#"{"endpoints":{"endpoints":[]}}"#,
    );
    assert_eq!(
        format!("{:?}", AuthKey("secret".into())),
        "AuthKey(<redacted>)"
    );
}

#[test]
fn the_protocol_document_shows_these_examples() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/PROTOCOL.md"
    ))
    .unwrap();
    for ex in [
        EXAMPLE_REGISTER,
        EXAMPLE_REGISTERED,
        EXAMPLE_MAP_REQUEST,
        EXAMPLE_NODE,
        EXAMPLE_DELTA,
        EXAMPLE_FULL,
    ] {
        assert!(
            doc.contains(ex),
            "docs/PROTOCOL.md lacks this example:\n{ex}"
        );
    }
}

const EXAMPLE_REGISTER: &str = r#"{
  "register": {
    "version": 1,
    "node_key": "nodekey:1111111111111111111111111111111111111111111111111111111111111111",
    "old_node_key": null,
    "auth": {
      "auth_key": "wk-auth-0123456789abcdef"
    },
    "expiry": "default",
    "ephemeral": false,
    "host_info": {
      "hostname": "Alice's Laptop",
      "os": "linux",
      "os_version": "Debian 13",
      "weft_version": "0.1.0",
      "ssh_host_keys": [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHh0ZXN0 root@laptop"
      ],
      "requested_tags": [],
      "shields_up": false
    }
  }
}"#;
const EXAMPLE_REGISTERED: &str = r#"{
  "register": {
    "registered": {
      "node_id": 7,
      "user": {
        "id": 1,
        "login_name": "alice@example.com",
        "display_name": "Alice",
        "profile_pic_url": null
      },
      "tags": [],
      "machine_authorized": true,
      "key_expiry": 1805552000000
    }
  }
}"#;
const EXAMPLE_MAP_REQUEST: &str = r#"{
  "map": {
    "version": 1,
    "node_key": "nodekey:1111111111111111111111111111111111111111111111111111111111111111",
    "disco_key": "discokey:4444444444444444444444444444444444444444444444444444444444444444",
    "endpoints": [
      {
        "addr": "198.18.0.7:41641",
        "kind": "local"
      },
      {
        "addr": "198.19.5.5:61000",
        "kind": "stun"
      }
    ],
    "home_relay": 900,
    "host_info": {
      "hostname": "Alice's Laptop",
      "os": "linux",
      "os_version": "Debian 13",
      "weft_version": "0.1.0",
      "ssh_host_keys": [],
      "requested_tags": [],
      "shields_up": false
    },
    "stream": true
  }
}"#;
const EXAMPLE_NODE: &str = r#"{
  "id": 7,
  "stable_id": "n00000000000000000007",
  "name": "alices-laptop.example.weft",
  "owner": {
    "user": 1
  },
  "node_key": "nodekey:1111111111111111111111111111111111111111111111111111111111111111",
  "machine_key": "mkey:3333333333333333333333333333333333333333333333333333333333333333",
  "disco_key": "discokey:4444444444444444444444444444444444444444444444444444444444444444",
  "addresses": [
    "100.64.0.7/32",
    "fd7a:115c:a1e0::7/128"
  ],
  "allowed_ips": [
    "100.64.0.7/32",
    "fd7a:115c:a1e0::7/128"
  ],
  "endpoints": [
    {
      "addr": "198.18.0.7:41641",
      "kind": "local"
    }
  ],
  "home_relay": 900,
  "host_info": {
    "hostname": "Alice's Laptop",
    "os": "linux",
    "os_version": "Debian 13",
    "weft_version": "0.1.0",
    "ssh_host_keys": [
      "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHh0ZXN0 root@laptop"
    ],
    "requested_tags": [],
    "shields_up": false
  },
  "created": 1790000000000,
  "last_seen": 1790000500000,
  "online": true,
  "key_expiry": 1805552000000,
  "expired": false,
  "machine_authorized": true
}"#;
const EXAMPLE_DELTA: &str = r#"{
  "map": {
    "seq": 42,
    "body": {
      "delta": [
        {
          "peer": {
            "endpoints": {
              "id": 9,
              "endpoints": [
                {
                  "addr": "198.18.0.9:41641",
                  "kind": "local"
                }
              ],
              "home_relay": 901
            }
          }
        },
        {
          "peer": {
            "online": {
              "id": 12,
              "online": false,
              "last_seen": 1790000900000
            }
          }
        },
        {
          "peer": {
            "removed": 13
          }
        }
      ]
    }
  }
}"#;
const EXAMPLE_FULL: &str = r#"{
  "map": {
    "seq": 1,
    "body": {
      "full": {
        "self_node": "<the node example>",
        "peers": [],
        "user_profiles": [
          {
            "id": 1,
            "login_name": "alice@example.com",
            "display_name": "Alice",
            "profile_pic_url": null
          }
        ],
        "domain": "example.weft",
        "dns": {
          "magic_dns": true,
          "nameservers": [],
          "search_domains": [],
          "routes": {},
          "extra_records": []
        },
        "relay_map": {
          "regions": {}
        },
        "packet_filter": {
          "rules": []
        },
        "ssh_policy": {
          "rules": []
        }
      }
    }
  }
}"#;

#[test]
fn host_info_within_the_limits_validates_and_each_limit_is_enforced() {
    use weft_types::node::host_info_limits::*;
    assert_eq!(host_info().validate(), Ok(()));

    let mut h = host_info();
    h.hostname = "h".repeat(HOSTNAME_MAX_LEN);
    assert_eq!(h.validate(), Ok(()));
    h.hostname.push('h');
    assert!(matches!(
        h.validate(),
        Err(HostInfoError::TooLong {
            field: "hostname",
            ..
        })
    ));

    let mut h = host_info();
    h.os = "linux\x1b[2J".into();
    assert_eq!(
        h.validate(),
        Err(HostInfoError::ControlCharacters { field: "os" })
    );

    let mut h = host_info();
    h.os_version = "v".repeat(SHORT_FIELD_MAX_LEN + 1);
    assert!(h.validate().is_err());

    let mut h = host_info();
    h.requested_tags = (0..=REQUESTED_TAGS_MAX)
        .map(|i| format!("tag:t{i}").parse().unwrap())
        .collect();
    assert!(matches!(
        h.validate(),
        Err(HostInfoError::TooMany {
            field: "requested_tags",
            ..
        })
    ));

    let mut h = host_info();
    let key = format!("ssh-rsa {}", "A".repeat(4000));
    h.ssh_host_keys = (0..5)
        .map(|i| format!("{key}{i}").parse().unwrap())
        .collect();
    assert!(matches!(h.validate(), Err(HostInfoError::TooLarge { .. })));
}

#[test]
fn relay_nodes_decode_without_the_optional_fields_and_omit_them_when_unset() {
    use weft_types::netmap::RelayNode;
    let old = r#"{"name":"900a","host":"c.example","relay_port":443,"stun_port":3478}"#;
    let n: RelayNode = serde_json::from_str(old).unwrap();
    assert_eq!((n.ipv4, n.ipv6, n.insecure_for_tests), (None, None, false));
    assert_eq!(serde_json::to_string(&n).unwrap(), old);
    let new = r#"{"name":"900a","host":"c.example","relay_port":8080,"stun_port":0,"ipv4":"198.18.0.1","insecure_for_tests":true}"#;
    let n: RelayNode = serde_json::from_str(new).unwrap();
    assert_eq!(n.ipv4, Some("198.18.0.1".parse().unwrap()));
    assert!(n.insecure_for_tests);
    assert_eq!(serde_json::to_string(&n).unwrap(), new);
}
