//! MagicDNS on the server: the DNS settings (admin service, REST API and
//! CLI), stored and published to streamed nodes as `Delta::Dns` at once,
//! and node names (the tailnet domain, renames reaching peers).
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{ServerProcess, TestNode, TestServer, free_port};
use weft_control::admin::types::{DnsPatch, DnsRecordView, DnsSettingsBody};
use weft_types::netmap::DnsRecord;

async fn two_nodes(t: &TestServer) -> (TestNode, TestNode) {
    t.user("alice").await;
    let key = t.reusable_key("alice").await;
    let mut a = TestNode::new(t, "a");
    let mut b = TestNode::new(t, "b");
    a.join(&key).await;
    b.join(&key).await;
    a.wait_map(|m| m.peers.len() == 1).await;
    (a, b)
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).to_owned()).collect()
}

#[tokio::test]
async fn the_tailnet_domain_is_implicit_not_a_search_domain() {
    let t = TestServer::start_with(|c| c.domain = "office.weft.internal".parse().unwrap()).await;
    let (mut a, _b) = two_nodes(&t).await;
    let m = a.wait_map(|_| true).await;
    assert_eq!(m.domain.as_str(), "office.weft.internal");
    assert!(m.dns.magic_dns);
    assert!(
        m.dns.search_domains.is_empty(),
        "the node adds the tailnet domain itself: {:?}",
        m.dns.search_domains
    );
    let b = TestNode::peer(&m, "b").unwrap();
    assert_eq!(b.name.as_str(), "b.office.weft.internal");
    let v = t.server.admin().dns().await.unwrap();
    assert_eq!(v.domain, "office.weft.internal");
    assert_eq!((v.updated, v.author), (None, None));
}

#[tokio::test]
async fn dns_changes_are_validated_stored_and_reach_streamed_nodes_before_the_batch_delay() {
    // A batch delay beyond the deadline: only an immediate publication passes.
    let t = TestServer::start_with(|c| c.batch_delay = Duration::from_secs(3)).await;
    let (mut a, mut b) = two_nodes(&t).await;
    let admin = t.server.admin();

    let patch = DnsPatch {
        add_nameservers: s(&["192.0.2.53"]),
        add_search_domains: s(&["corp.example.com"]),
        set_routes: BTreeMap::from([("corp.example.com".into(), s(&["10.0.0.53", "10.0.0.54"]))]),
        add_records: vec![DnsRecordView {
            name: "nas.example.com".into(),
            addr: "192.0.2.9".into(),
        }],
        ..DnsPatch::default()
    };
    let started = tokio::time::Instant::now();
    let v = admin.patch_dns(&patch, "alice").await.unwrap();
    assert_eq!(v.author.as_deref(), Some("alice"));
    for n in [&mut a, &mut b] {
        let m = n.wait_map(|m| !m.dns.nameservers.is_empty()).await;
        assert_eq!(
            m.dns.nameservers,
            ["192.0.2.53".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(m.dns.routes["corp.example.com"].len(), 2);
        assert_eq!(
            m.dns.extra_records,
            [DnsRecord {
                name: "nas.example.com".parse().unwrap(),
                addr: "192.0.2.9".parse().unwrap()
            }]
        );
        assert_eq!(m.dns.search_domains[0].as_str(), "corp.example.com");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // On the open stream, as a DNS change.
    assert!(a.events.iter().any(|e| matches!(
        e,
        weft_client::SessionEvent::NetMap { diff, .. } if diff.dns && diff.peers.is_empty()
    )));

    // Only what a patch names changes.
    let off = admin
        .patch_dns(
            &DnsPatch {
                magic_dns: Some(false),
                ..DnsPatch::default()
            },
            "alice",
        )
        .await
        .unwrap();
    assert!(!off.magic_dns);
    assert_eq!(off.nameservers, v.nameservers);
    assert_eq!(off.routes, v.routes);
    a.wait_map(|m| !m.dns.magic_dns).await;

    // Refused whole, one line, nothing changed.
    for (bad, why) in [
        (
            DnsPatch {
                add_nameservers: s(&["100.100.100.100"]),
                clear_routes: true,
                ..DnsPatch::default()
            },
            "nameserver 100.100.100.100 is a Weft address",
        ),
        (
            DnsPatch {
                add_records: vec![DnsRecordView {
                    name: "no_underscores.example.com".into(),
                    addr: "192.0.2.1".into(),
                }],
                ..DnsPatch::default()
            },
            "is not a DNS name",
        ),
        (
            DnsPatch {
                set_routes: BTreeMap::from([("b.weft.internal".into(), vec![])]),
                ..DnsPatch::default()
            },
            "inside the tailnet domain",
        ),
    ] {
        let e = admin.patch_dns(&bad, "alice").await.unwrap_err();
        assert_eq!(e.code, "invalid");
        assert!(e.message.contains(why), "{}", e.message);
        assert!(!e.message.contains('\n'), "{}", e.message);
    }
    assert_eq!(admin.dns().await.unwrap(), off);

    // PUT replaces everything.
    let put = admin
        .put_dns(
            &DnsSettingsBody {
                magic_dns: true,
                nameservers: s(&["2001:db8::53"]),
                ..DnsSettingsBody::default()
            },
            "bob",
        )
        .await
        .unwrap();
    assert!(put.routes.is_empty() && put.extra_records.is_empty() && put.magic_dns);
    let m = a
        .wait_map(|m| m.dns.nameservers.first().is_some_and(|n| n.is_ipv6()))
        .await;
    assert!(m.dns.routes.is_empty() && m.dns.search_domains.is_empty());
}

#[tokio::test]
async fn concurrent_patches_are_applied_one_after_the_other() {
    let t = TestServer::start().await;
    let admin = t.server.admin();
    let mut tasks = Vec::new();
    for i in 1..=8u8 {
        let admin = admin.clone();
        tasks.push(tokio::spawn(async move {
            let p = DnsPatch {
                add_nameservers: vec![format!("192.0.2.{i}")],
                ..DnsPatch::default()
            };
            admin.patch_dns(&p, "alice").await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(admin.dns().await.unwrap().nameservers.len(), 8);
}

#[tokio::test]
async fn a_rename_reaches_peers_within_two_seconds() {
    let t = TestServer::start().await;
    let (mut a, _b) = two_nodes(&t).await;
    let admin = t.server.admin();
    let b_id = admin
        .list_nodes()
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.name == "b")
        .unwrap()
        .id;
    let started = tokio::time::Instant::now();
    let v = admin.rename_node(b_id, "build-box").await.unwrap();
    assert_eq!(v.name, "build-box");
    let m = a
        .wait_map(|m| {
            TestNode::peer(m, "b").is_some_and(|p| p.name.as_str() == "build-box.weft.internal")
        })
        .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(m.peers.len(), 1);
    // The name is b's now: nobody else may take it.
    let a_id = admin
        .list_nodes()
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.name == "a")
        .unwrap()
        .id;
    let e = admin.rename_node(a_id, "build-box").await.unwrap_err();
    assert_eq!(e.code, "conflict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_get_and_set_work_from_the_cli_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut s =
        ServerProcess::start_with(dir.path(), port, &["--domain", "Lab.Weft.Internal."], None)
            .await;

    let (code, out, err) = s.cli(&["dns", "get"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("tailnet domain  lab.weft.internal"), "{out}");
    assert!(out.contains("lab.weft.internal (implicit)"), "{out}");
    assert!(out.contains("never (the defaults)"), "{out}");

    let (code, out, err) = s.cli(&[
        "dns",
        "set",
        "--nameserver",
        "192.0.2.53",
        "--route",
        "corp.example.com=10.0.0.53,10.0.0.54",
        "--route",
        "internal.example=",
        "--record",
        "nas.example.com=192.0.2.9",
        "--search-domain",
        "corp.example.com",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("corp.example.com -> 10.0.0.53, 10.0.0.54"),
        "{out}"
    );
    assert!(out.contains("internal.example -> (MagicDNS only"), "{out}");
    assert!(out.contains("nas.example.com -> 192.0.2.9"), "{out}");

    let (code, _, err) = s.cli(&["dns", "set", "--nameserver", "fd7a:115c:a1e0::53"]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(
            "DNS settings refused, nothing changed: nameserver fd7a:115c:a1e0::53 is a Weft address"
        ),
        "{err}"
    );
    let (code, _, err) = s.cli(&["dns", "set"]);
    assert_eq!(code, 1);
    assert!(err.contains("nothing to change"), "{err}");

    let (code, _, err) = s.cli(&[
        "dns",
        "set",
        "--magic-dns=false",
        "--remove-route",
        "internal.example",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(s.stop().success());

    // Stored: a new process (on the same state) serves the same settings.
    let s2 =
        ServerProcess::start_with(dir.path(), port, &["--domain", "lab.weft.internal"], None).await;
    let (code, json, err) = s2.cli(&["dns", "get", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["domain"], "lab.weft.internal");
    assert_eq!(v["magic_dns"], false);
    assert_eq!(v["nameservers"], serde_json::json!(["192.0.2.53"]));
    assert_eq!(
        v["routes"],
        serde_json::json!({"corp.example.com": ["10.0.0.53", "10.0.0.54"]})
    );
    assert_eq!(v["search_domains"], serde_json::json!(["corp.example.com"]));
    assert_eq!(v["author"], "admin socket (uid 0)");

    // The REST API with an API key answers the same.
    let (code, api_key, err) = s2.cli(&["apikeys", "create"]);
    assert_eq!(code, 0, "{err}");
    let url = s2.url();
    let (code, json2, err) = s2.cli(&[
        "dns",
        "get",
        "--json",
        "--server",
        &url,
        "--api-key",
        api_key.trim(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json2, json);
    let (code, out, err) = s2.cli(&[
        "dns",
        "set",
        "--clear-nameservers",
        "--server",
        &url,
        "--api-key",
        api_key.trim(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("(none: each node's own resolvers)"), "{out}");
    let (_, json3, _) = s2.cli(&["dns", "get", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json3).unwrap();
    assert!(v["author"].as_str().unwrap().starts_with("api key "), "{v}");
    drop(s2);
}
