//! The policy's meaning, end to end: autogroups, tags, visibility, SSH.
#![allow(clippy::unwrap_used)]

use crate::common;
use common::*;

use weft_filter::CompiledFilter;
use weft_policy::{compile, compile_all};
use weft_types::filter::{CheckPeriod, LocalUser, SshMode, SshPrincipal, proto};

const TCP: u8 = proto::TCP;

#[test]
fn autogroup_self_lets_users_reach_only_their_own_untagged_devices() {
    let t = tailnet();
    let p = policy(
        r#"{"acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}]}"#,
    );
    let c = compile_all(&p, &t);
    let phone = matcher(&c, id(&t, "alice-phone"));
    assert!(
        phone
            .allows(ip("100.64.0.1"), ip("100.64.0.2"), TCP, 22)
            .is_some(),
        "alice's laptop → alice's phone"
    );
    assert!(
        phone
            .allows(ip("fd7a:115c:a1e0::1"), ip("fd7a:115c:a1e0::2"), TCP, 22)
            .is_some()
    );
    assert!(
        phone
            .allows(ip("100.64.0.3"), ip("100.64.0.2"), TCP, 22)
            .is_none(),
        "bob → alice's phone"
    );
    assert!(
        phone
            .allows(ip("100.64.0.10"), ip("100.64.0.2"), TCP, 22)
            .is_none(),
        "alice's tagged server is not alice"
    );
    let server = matcher(&c, id(&t, "server"));
    assert!(
        server.is_empty(),
        "a tagged device is nobody's self: {:?}",
        server.rules()
    );
    assert_eq!(
        c.visible_peers(id(&t, "alice-laptop")).unwrap(),
        vec![id(&t, "alice-phone")]
    );
    assert_eq!(c.visible_peers(id(&t, "bob-laptop")).unwrap(), vec![]);
}

#[test]
fn tagged_nodes_lose_the_identity_of_the_user_who_tagged_them() {
    let t = tailnet();
    let p = policy(
        r#"{
        "groups": {"group:eng": ["alice@example.com"]},
        "tagOwners": {"tag:server": ["alice@example.com"], "tag:db": []},
        "acls": [
          {"action": "accept", "src": ["alice@example.com"], "dst": ["bob-laptop-ip:22"]},
          {"action": "accept", "src": ["group:eng"], "dst": ["bob-laptop-ip:80"]},
          {"action": "accept", "src": ["autogroup:member"], "dst": ["bob-laptop-ip:443"]},
          {"action": "accept", "src": ["tag:server"], "dst": ["bob-laptop-ip:8080"]},
        ],
        "hosts": {"bob-laptop-ip": "100.64.0.3"},
    }"#,
    );
    let f = CompiledFilter::new(&compile(&p, &t, id(&t, "bob-laptop")).unwrap().0.rules);
    let (laptop, server, bob) = (ip("100.64.0.1"), ip("100.64.0.10"), ip("100.64.0.3"));
    for port in [22, 80, 443] {
        assert!(
            f.allows(laptop, bob, TCP, port).is_some(),
            "alice's laptop on {port}"
        );
        assert!(
            f.allows(server, bob, TCP, port).is_none(),
            "alice's tagged server must not pass as alice on {port}"
        );
    }
    assert!(f.allows(server, bob, TCP, 8080).is_some());
    assert!(f.allows(laptop, bob, TCP, 8080).is_none());
    // The dst side too: a user selector never covers a tagged node.
    let p =
        policy(r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["alice@example.com:*"]}]}"#);
    let c = compile_all(&p, &t);
    assert!(c.filter_rules(id(&t, "server")).unwrap().is_empty());
    assert_eq!(c.filter_rules(id(&t, "alice-phone")).unwrap().len(), 1);
}

#[test]
fn autogroup_admin_and_tagged_follow_roles_and_tags() {
    let t = tailnet();
    let p = policy(
        r#"{"acls": [
        {"action": "accept", "src": ["autogroup:admin"], "dst": ["autogroup:tagged:22"]}
    ]}"#,
    );
    let c = compile_all(&p, &t);
    let db = matcher(&c, id(&t, "db"));
    assert!(
        db.allows(ip("100.64.0.2"), ip("100.64.0.11"), TCP, 22)
            .is_some(),
        "alice is an admin"
    );
    assert!(
        db.allows(ip("100.64.0.3"), ip("100.64.0.11"), TCP, 22)
            .is_none(),
        "bob is not"
    );
    assert!(
        c.filter_rules(id(&t, "alice-laptop")).unwrap().is_empty(),
        "untagged devices are not autogroup:tagged"
    );
}

#[test]
fn visibility_lists_peers_either_side_may_reach() {
    let t = tailnet();
    let p = policy(
        r#"{"tagOwners": {"tag:db": [], "tag:server": []}, "acls": [
        {"action": "accept", "src": ["tag:server"], "dst": ["tag:db:5432"]},
        {"action": "accept", "src": ["bob@example.com"], "dst": ["tag:server:443"]}
    ]}"#,
    );
    let c = compile_all(&p, &t);
    let names = |n: &str| -> Vec<String> {
        c.visible_peers(id(&t, n))
            .unwrap()
            .iter()
            .map(|i| t.node(*i).unwrap().name.to_string())
            .collect()
    };
    assert_eq!(names("server"), ["bob-laptop", "db"]);
    assert_eq!(names("db"), ["server"]);
    assert_eq!(names("bob-laptop"), ["server"]);
    assert!(names("alice-laptop").is_empty());
    assert!(c.can_see(id(&t, "db"), id(&t, "server")));
    assert!(!c.can_see(id(&t, "db"), id(&t, "bob-laptop")));
}

#[test]
fn compiling_one_node_gives_what_compiling_all_gives() {
    let t = tailnet();
    let p = policy(include_str!("../corpus/valid/full_example.hujson"));
    let all = compile_all(&p, &t);
    for n in t.nodes() {
        let (f, s) = compile(&p, &t, n.id).unwrap();
        assert_eq!(
            f.rules.as_slice(),
            all.filter_rules(n.id).unwrap().as_slice(),
            "filter of {}",
            n.name
        );
        assert_eq!(s, all.ssh_policy(n.id).unwrap(), "ssh policy of {}", n.name);
    }
}

#[test]
fn ssh_users_compile_to_the_wire_vocabulary() {
    let t = tailnet();
    let p = policy(
        r#"{"tagOwners": {"tag:server": []}, "ssh": [
        {"action": "check", "src": ["alice@example.com"], "dst": ["tag:server"], "users": ["autogroup:nonroot", "deploy"]},
        {"action": "accept", "src": ["*"], "dst": ["tag:server"], "users": ["root"]},
        {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["localpart:*@example.com"]},
    ]}"#,
    );
    let c = compile_all(&p, &t);
    let s = c.ssh_policy(id(&t, "server")).unwrap();
    assert_eq!(s.rules.len(), 2);
    let r0 = &s.rules[0];
    assert_eq!(r0.users.get("*"), Some(&LocalUser::SameNameNonRoot));
    assert_eq!(
        r0.users.get("root"),
        Some(&LocalUser::NoMapping),
        "root is kept out of the * entry"
    );
    assert_eq!(
        r0.users.get("deploy"),
        Some(&LocalUser::Named("deploy".into()))
    );
    assert_eq!(
        r0.action.mode,
        SshMode::Check {
            period: CheckPeriod::DEFAULT
        }
    );
    assert_eq!(
        r0.principals.len(),
        4,
        "alice's two devices, both families: {:?}",
        r0.principals
    );
    assert!(
        !r0.principals
            .contains(&SshPrincipal::Prefix("100.64.0.10/32".parse().unwrap())),
        "her tagged server is not alice"
    );
    assert_eq!(s.rules[1].principals, vec![SshPrincipal::Any]);
    assert_eq!(
        s.rules[1].users.get("root"),
        Some(&LocalUser::Named("root".into()))
    );
    // localpart: one rule per user, only from that user's own devices.
    let s = c.ssh_policy(id(&t, "bob-laptop")).unwrap();
    assert_eq!(s.rules.len(), 1);
    assert_eq!(
        s.rules[0].users.get("bob"),
        Some(&LocalUser::SameNameNonRoot)
    );
    assert_eq!(s.rules[0].users.len(), 1);
    assert!(s.rules[0].principals.iter().all(|p| matches!(p, SshPrincipal::Prefix(n) if n.to_string().ends_with("::3/128") || n.to_string() == "100.64.0.3/32")));
}

#[test]
fn tag_owners_decide_who_may_apply_a_tag() {
    let t = tailnet();
    let p = policy(
        r#"{"groups": {"group:eng": ["bob@example.com"]},
            "tagOwners": {"tag:server": ["group:eng"], "tag:ci": ["tag:server"], "tag:db": [], "tag:any": ["autogroup:member"]}}"#,
    );
    let bob = Some("bob@example.com");
    assert!(
        p.may_apply_tag(&t, "tag:server", bob, &[]),
        "bob is in group:eng"
    );
    assert!(!p.may_apply_tag(&t, "tag:server", Some("carol@example.com"), &[]));
    assert!(
        p.may_apply_tag(&t, "tag:server", Some("alice@example.com"), &[]),
        "admins may apply any declared tag"
    );
    assert!(
        !p.may_apply_tag(&t, "tag:db", bob, &[]),
        "an empty owner list means admins only"
    );
    assert!(
        p.may_apply_tag(&t, "tag:ci", None, &["tag:server".to_string()]),
        "a tag may own a tag"
    );
    assert!(!p.may_apply_tag(&t, "tag:ci", None, &[]));
    assert!(p.may_apply_tag(&t, "tag:any", Some("carol@example.com"), &[]));
    assert!(
        !p.may_apply_tag(&t, "tag:undeclared", Some("alice@example.com"), &[]),
        "undeclared tags are never applied"
    );
}
