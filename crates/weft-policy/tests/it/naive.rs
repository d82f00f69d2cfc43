//! The compiler and the per-flow evaluator against an independent, naive
//! interpreter of randomly generated policies.
//!
//! A policy is generated as a small model (below), rendered to HuJSON text
//! (with comments and trailing commas), parsed and compiled by the crate.
//! The naive interpreter reads the *model*, never the crate's types, and
//! decides each (source address, destination node, protocol, port) directly
//! from the rules' definitions. The compiled packet filter, the explain
//! evaluator and the visibility sets must agree with it.
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::net::IpAddr;

use proptest::prelude::*;
use weft_policy::{Endpoint, NodeId, Policy, Tailnet, Verdict, compile_all, explain};

#[derive(Debug, Clone)]
enum Sel {
    Any,
    User(usize),
    Group(usize),
    Tag(usize),
    Member,
    Tagged,
    Admin,
    SelfDev,
    Host(usize),
    Net(String),
}

#[derive(Debug, Clone)]
struct Rule {
    src: Vec<Sel>,
    dst: Vec<(Sel, Vec<(u16, u16)>)>,
    proto: Option<&'static str>,
}

#[derive(Debug, Clone)]
struct MNode {
    user: Option<usize>,
    tags: Vec<usize>,
    v4: u8,
    v6: Option<u8>,
}

#[derive(Debug, Clone)]
struct Model {
    admins: Vec<bool>,
    groups: Vec<Vec<usize>>,
    n_tags: usize,
    hosts: Vec<String>,
    nodes: Vec<MNode>,
    rules: Vec<Rule>,
    pretty: bool,
}

const NETS: &[&str] = &[
    "100.64.0.0/26",
    "100.64.0.0/28",
    "100.64.0.16/28",
    "100.64.0.5",
    "100.64.0.9/32",
    "10.0.0.0/8",
    "fd7a:115c:a1e0::/120",
    "fd7a:115c:a1e0::3",
    "fd7a:115c:a1e0::10/124",
    "0.0.0.0/0",
];

fn user_login(u: usize) -> String {
    format!("user{u}@example.com")
}

fn sel_text(s: &Sel, m: &Model) -> String {
    match s {
        Sel::Any => "*".into(),
        Sel::User(u) => user_login(*u % m.admins.len()),
        Sel::Group(g) => format!("group:g{}", g % m.groups.len().max(1)),
        Sel::Tag(t) => format!("tag:t{}", t % m.n_tags),
        Sel::Member => "autogroup:member".into(),
        Sel::Tagged => "autogroup:tagged".into(),
        Sel::Admin => "autogroup:admin".into(),
        Sel::SelfDev => "autogroup:self".into(),
        Sel::Host(h) => format!("h{}", h % m.hosts.len().max(1)),
        Sel::Net(n) => n.clone(),
    }
}

fn render(m: &Model) -> String {
    let sep = if m.pretty {
        ",\n    // a comment\n    "
    } else {
        ","
    };
    let trailing = if m.pretty { "," } else { "" };
    let mut s = String::from("/* generated */ {\n");
    let groups: Vec<String> = m
        .groups
        .iter()
        .enumerate()
        .map(|(g, us)| {
            format!(
                "\"group:g{g}\": [{}]",
                us.iter()
                    .map(|u| format!("\"{}\"", user_login(*u)))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        })
        .collect();
    let groups_trailing = if groups.is_empty() { "" } else { trailing };
    let _ = writeln!(
        s,
        "  \"groups\": {{{}{groups_trailing}}},",
        groups.join(sep)
    );
    let tags: Vec<String> = (0..m.n_tags).map(|t| format!("\"tag:t{t}\": []")).collect();
    let _ = writeln!(s, "  \"tagOwners\": {{{}}},", tags.join(sep));
    let hosts: Vec<String> = m
        .hosts
        .iter()
        .enumerate()
        .map(|(i, n)| format!("\"h{i}\": \"{n}\""))
        .collect();
    let _ = writeln!(s, "  \"hosts\": {{{}}},", hosts.join(sep));
    let rules: Vec<String> = m
        .rules
        .iter()
        .map(|r| {
            let src: Vec<String> = r
                .src
                .iter()
                .map(|x| format!("\"{}\"", sel_text(x, m)))
                .collect();
            let dst: Vec<String> = r
                .dst
                .iter()
                .map(|(x, ports)| {
                    let mut alias = sel_text(x, m);
                    if alias.contains("::") && !alias.contains('/') {
                        alias = format!("[{alias}]");
                    }
                    let ports: Vec<String> = ports
                        .iter()
                        .map(|&(a, b)| {
                            if (a, b) == (0, 65535) && ports.len() == 1 {
                                "*".into()
                            } else if a == b {
                                a.to_string()
                            } else {
                                format!("{a}-{b}")
                            }
                        })
                        .collect();
                    format!("\"{alias}:{}\"", ports.join(","))
                })
                .collect();
            let proto = r
                .proto
                .map(|p| format!(", \"proto\": \"{p}\""))
                .unwrap_or_default();
            format!(
                "{{\"action\": \"accept\", \"src\": [{}{}], \"dst\": [{}]{proto}}}",
                src.join(","),
                if src.is_empty() { "" } else { trailing },
                dst.join(",")
            )
        })
        .collect();
    let rules_trailing = if rules.is_empty() { "" } else { trailing };
    let _ = writeln!(
        s,
        "  \"acls\": [\n    {}{rules_trailing}\n  ]{trailing}\n}}",
        rules.join(sep)
    );
    s
}

fn nodes_json(m: &Model) -> String {
    let users: Vec<String> = m
        .admins
        .iter()
        .enumerate()
        .map(|(u, a)| {
            format!(
                "{{\"login\": \"{}\", \"role\": \"{}\"}}",
                user_login(u),
                if *a { "admin" } else { "member" }
            )
        })
        .collect();
    let nodes: Vec<String> = m
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let user = n.user.map_or("null".to_string(), |u| format!("\"{}\"", user_login(u)));
            let tags: Vec<String> = n.tags.iter().map(|t| format!("\"tag:t{t}\"")).collect();
            let v6 = n.v6.map(|h| format!(", \"ipv6\": \"fd7a:115c:a1e0::{h:x}\"")).unwrap_or_default();
            format!("{{\"id\": {}, \"name\": \"n{i}\", \"user\": {user}, \"tags\": [{}], \"ipv4\": \"100.64.0.{}\"{v6}}}", i + 1, tags.join(","), n.v4)
        })
        .collect();
    format!(
        "{{\"users\": [{}], \"nodes\": [{}]}}",
        users.join(","),
        nodes.join(",")
    )
}

// --- the naive interpreter -------------------------------------------------

fn net_contains(net: &str, a: IpAddr) -> bool {
    let n: ipnet::IpNet = net
        .parse()
        .or_else(|_| net.parse::<IpAddr>().map(ipnet::IpNet::from))
        .unwrap();
    n.trunc().contains(&a)
}

fn addr(n: &MNode, v4: bool) -> Option<IpAddr> {
    if v4 {
        Some(format!("100.64.0.{}", n.v4).parse().unwrap())
    } else {
        n.v6.map(|h| format!("fd7a:115c:a1e0::{h:x}").parse().unwrap())
    }
}

/// The identity of whoever holds address `a`: (untagged user, tags).
fn holder(m: &Model, a: IpAddr) -> Option<&MNode> {
    m.nodes
        .iter()
        .find(|n| addr(n, true) == Some(a) || addr(n, false) == Some(a))
}

fn user_of(n: &MNode) -> Option<usize> {
    if n.tags.is_empty() { n.user } else { None }
}

/// Does selector `s` cover the party at address `a` (held by node `n`, if any)?
fn covers(m: &Model, s: &Sel, a: IpAddr, n: Option<&MNode>) -> bool {
    let user = n.and_then(user_of);
    let tags: &[usize] = n.map_or(&[], |n| &n.tags);
    match s {
        Sel::Any => true,
        Sel::User(u) => user == Some(u % m.admins.len()),
        Sel::Group(g) => user.is_some_and(|u| m.groups[g % m.groups.len()].contains(&u)),
        Sel::Tag(t) => tags.contains(&(t % m.n_tags)),
        Sel::Member => user.is_some(),
        Sel::Tagged => !tags.is_empty(),
        Sel::Admin => user.is_some_and(|u| m.admins[u]),
        Sel::SelfDev => false,
        Sel::Host(h) => net_contains(&m.hosts[h % m.hosts.len()], a),
        Sel::Net(net) => net_contains(net, a),
    }
}

fn protos(p: Option<&str>) -> Vec<u8> {
    match p {
        None => vec![6, 17, 1, 58],
        Some("tcp") => vec![6],
        Some("udp") => vec![17],
        Some("icmp") => vec![1, 58],
        Some(other) => vec![other.parse().unwrap()],
    }
}

fn port_ok(ports: &[(u16, u16)], proto: u8, port: u16) -> bool {
    ports.iter().any(|&(a, b)| match proto {
        6 | 17 | 132 => a <= port && port <= b,
        1 | 58 => true,
        _ => (a, b) == (0, 65535),
    })
}

fn naive_allows(
    m: &Model,
    src: IpAddr,
    dst: &MNode,
    dst_addr: IpAddr,
    proto: u8,
    port: u16,
) -> bool {
    let s = holder(m, src);
    m.rules.iter().any(|r| {
        protos(r.proto).contains(&proto)
            && r.src.iter().any(|x| covers(m, x, src, s))
            && r.dst.iter().any(|(x, ports)| {
                let target = match x {
                    Sel::SelfDev => {
                        s.and_then(user_of).is_some() && s.and_then(user_of) == user_of(dst)
                    }
                    x => covers(m, x, dst_addr, Some(dst)),
                };
                target && port_ok(ports, proto, port)
            })
    })
}

fn naive_visible(m: &Model, a: &MNode, b: &MNode) -> bool {
    let reaches = |x: &MNode, y: &MNode| {
        [true, false]
            .into_iter()
            .any(|v4| match (addr(x, v4), addr(y, v4)) {
                (Some(xa), Some(ya)) => m.rules.iter().any(|r| {
                    r.src.iter().any(|s| covers(m, s, xa, Some(x)))
                        && r.dst.iter().any(|(d, _)| match d {
                            Sel::SelfDev => user_of(x).is_some() && user_of(x) == user_of(y),
                            d => covers(m, d, ya, Some(y)),
                        })
                }),
                _ => false,
            })
    };
    reaches(a, b) || reaches(b, a)
}

// --- generators --------------------------------------------------------------

fn arb_sel(dst: bool) -> impl Strategy<Value = Sel> {
    let mut v: Vec<BoxedStrategy<Sel>> = vec![
        Just(Sel::Any).boxed(),
        (0usize..4).prop_map(Sel::User).boxed(),
        (0usize..3).prop_map(Sel::Group).boxed(),
        (0usize..3).prop_map(Sel::Tag).boxed(),
        Just(Sel::Member).boxed(),
        Just(Sel::Tagged).boxed(),
        Just(Sel::Admin).boxed(),
        (0usize..2).prop_map(Sel::Host).boxed(),
        proptest::sample::select(NETS)
            .prop_map(|n| Sel::Net(n.to_string()))
            .boxed(),
    ];
    if dst {
        v.push(Just(Sel::SelfDev).boxed());
        v.push(Just(Sel::SelfDev).boxed());
    }
    proptest::strategy::Union::new(v)
}

fn arb_ports() -> impl Strategy<Value = Vec<(u16, u16)>> {
    proptest::collection::vec(
        prop_oneof![
            Just((0u16, 65535u16)),
            Just((22, 22)),
            Just((443, 443)),
            Just((20, 30)),
            Just((400, 500)),
            Just((0, 0))
        ],
        1..3,
    )
}

fn arb_model() -> impl Strategy<Value = Model> {
    (
        proptest::collection::vec(any::<bool>(), 1..5),
        proptest::collection::vec(proptest::collection::vec(0usize..4, 0..3), 1..4),
        1usize..4,
        proptest::collection::vec(proptest::sample::select(NETS), 1..3),
        proptest::collection::vec(
            (
                proptest::option::of(0usize..4),
                proptest::collection::vec(0usize..3, 0..2),
                proptest::option::weighted(0.7, Just(())),
            ),
            1..10,
        ),
        proptest::collection::vec(
            (
                proptest::collection::vec(arb_sel(false), 1..3),
                proptest::collection::vec((arb_sel(true), arb_ports()), 1..3),
                proptest::option::weighted(
                    0.3,
                    proptest::sample::select(&["tcp", "udp", "icmp", "47"][..]),
                ),
            ),
            0..6,
        ),
        any::<bool>(),
    )
        .prop_map(|(admins, groups, n_tags, hosts, nodes, rules, pretty)| {
            let n_users = admins.len();
            let groups = groups
                .into_iter()
                .map(|g| {
                    let mut g: Vec<usize> = g.into_iter().map(|u| u % n_users).collect();
                    g.sort();
                    g.dedup();
                    g
                })
                .collect();
            let nodes = nodes
                .into_iter()
                .enumerate()
                .map(|(i, (user, tags, v6))| {
                    let mut tags: Vec<usize> = tags.into_iter().map(|t| t % n_tags).collect();
                    tags.sort();
                    tags.dedup();
                    let user = match (user, tags.is_empty()) {
                        (None, true) => Some(0),
                        (u, _) => u.map(|u| u % n_users),
                    };
                    // Spread addresses so that the CIDRs above cut through them.
                    let host = u8::try_from(1 + i * 5).unwrap();
                    MNode {
                        user,
                        tags,
                        v4: host,
                        v6: v6.map(|()| host),
                    }
                })
                .collect();
            let rules = rules
                .into_iter()
                .map(|(mut src, dst, proto)| {
                    // ICMP and other port-less protocols take only ":*".
                    let dst = dst
                        .into_iter()
                        .map(|(s, ports)| {
                            if matches!(proto, Some("icmp" | "47")) {
                                (s, vec![(0, 65535)])
                            } else {
                                (s, ports)
                            }
                        })
                        .collect::<Vec<_>>();
                    // A rule with autogroup:self in dst takes only user
                    // sources or "*" (as in Tailscale); the parser refuses
                    // the rest, so keep those and fall back to "*".
                    if dst.iter().any(|(d, _)| matches!(d, Sel::SelfDev)) {
                        src.retain(|s| {
                            matches!(
                                s,
                                Sel::Any | Sel::User(_) | Sel::Group(_) | Sel::Member | Sel::Admin
                            )
                        });
                        if src.is_empty() {
                            src.push(Sel::Any);
                        }
                    }
                    Rule { src, dst, proto }
                })
                .collect();
            Model {
                admins,
                groups,
                n_tags,
                hosts: hosts.into_iter().map(str::to_string).collect(),
                nodes,
                rules,
                pretty,
            }
        })
}

fn arb_packet() -> impl Strategy<Value = (usize, Option<u8>, usize, bool, u8, u16)> {
    (
        0usize..10,
        proptest::option::weighted(0.2, any::<u8>()),
        0usize..10,
        any::<bool>(),
        prop_oneof![Just(6u8), Just(17u8), Just(1u8), Just(47u8)],
        prop_oneof![
            Just(0u16),
            Just(22),
            Just(25),
            Just(443),
            Just(450),
            Just(8080),
            Just(65535)
        ],
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn compiled_filters_and_explain_agree_with_the_naive_interpreter(
        m in arb_model(),
        packets in proptest::collection::vec(arb_packet(), 1..24),
    ) {
        let text = render(&m);
        let policy = Policy::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let tailnet = Tailnet::from_nodes_json(&nodes_json(&m)).unwrap();
        let compiled = compile_all(&policy, &tailnet);
        for (si, raw_src, di, v4, proto, port) in packets {
            let dst = &m.nodes[di % m.nodes.len()];
            let dst_id = NodeId(i64::try_from(di % m.nodes.len()).unwrap() + 1);
            let Some(dst_addr) = addr(dst, v4) else { continue };
            let src_addr = match raw_src {
                // An address that may belong to no node (or to one, by chance).
                Some(h) if v4 => format!("100.64.0.{h}").parse().unwrap(),
                Some(h) => format!("fd7a:115c:a1e0::{h:x}").parse().unwrap(),
                None => match addr(&m.nodes[si % m.nodes.len()], v4) { Some(a) => a, None => continue },
            };
            let proto = if proto == 1 && !v4 { 58 } else { proto };
            let want = naive_allows(&m, src_addr, dst, dst_addr, proto, port);
            let filter = weft_filter::CompiledFilter::new(&compiled.packet_filter(dst_id).unwrap().rules);
            let got = filter.allows(src_addr, dst_addr, proto, port).is_some();
            prop_assert_eq!(got, want, "filter: {} -> {} proto {} port {}\npolicy:\n{}\nfilter: {:?}", src_addr, dst_addr, proto, port, text, filter.rules());
            let src_ep = match tailnet.node_by_addr(src_addr) {
                Some(n) => Endpoint::Node { id: n.id, addr: Some(src_addr) },
                None => Endpoint::Address(src_addr),
            };
            let e = explain(&policy, &tailnet, &src_ep, &Endpoint::Node { id: dst_id, addr: Some(dst_addr) }, port, if proto == 58 { 1 } else { proto }).unwrap();
            prop_assert_eq!(e.verdict == Verdict::Allowed, want, "explain: {} -> {} proto {} port {}\n{}\n{}", src_addr, dst_addr, proto, port, text, e);
        }
        for (a, na) in m.nodes.iter().enumerate() {
            let want: Vec<NodeId> = m.nodes.iter().enumerate()
                .filter(|(b, nb)| *b != a && naive_visible(&m, na, nb))
                .map(|(b, _)| NodeId(i64::try_from(b).unwrap() + 1))
                .collect();
            let got = compiled.visible_peers(NodeId(i64::try_from(a).unwrap() + 1)).unwrap();
            prop_assert_eq!(got, want, "visibility of n{}\n{}", a, text);
        }
    }
}
