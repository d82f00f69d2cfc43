//! Groups from the identity provider ([`weft_policy::User::groups`]): a
//! policy may use `group:<prefix>:<name>` without defining it, a user's IdP
//! groups count as membership next to the policy's own `groups`, `explain`
//! says where the membership comes from, and removing the group removes
//! the access.

use crate::common::{id, ip, matcher, policy};

use weft_policy::{Policy, Tailnet, Verdict, compile_all, explain_query, is_idp_group};

const NODES: &str = r#"{
  "users": [
    {"login": "alice@example.com", "groups": ["group:oidc:engineering"]},
    {"login": "bob@example.com"},
    {"login": "carol@example.com", "groups": ["group:eng"]}
  ],
  "nodes": [
    {"name": "alice-laptop", "user": "alice@example.com", "ipv4": "100.64.0.1", "ipv6": "fd7a:115c:a1e0::1"},
    {"name": "bob-laptop", "user": "bob@example.com", "ipv4": "100.64.0.2", "ipv6": "fd7a:115c:a1e0::2"},
    {"name": "carol-laptop", "user": "carol@example.com", "ipv4": "100.64.0.4", "ipv6": "fd7a:115c:a1e0::4"},
    {"name": "server", "tags": ["tag:server"], "ipv4": "100.64.0.10", "ipv6": "fd7a:115c:a1e0::10"}
  ]
}"#;

const POLICY: &str = r#"{
  "groups": {"group:eng": ["bob@example.com"]},
  "tagOwners": {"tag:server": ["group:oidc:engineering"]},
  "acls": [
    {"action": "accept", "src": ["group:oidc:engineering"], "dst": ["tag:server:22"]},
    {"action": "accept", "src": ["group:eng"], "dst": ["tag:server:443"]},
  ],
}"#;

fn tailnet(text: &str) -> Tailnet {
    Tailnet::from_nodes_json(text).unwrap()
}

fn allows(p: &Policy, t: &Tailnet, src: &str, port: u16) -> bool {
    let c = compile_all(p, t);
    let m = matcher(&c, id(t, "server"));
    let s = t.node_by_name(src).unwrap().ipv4.unwrap();
    m.allows(ip(&s.to_string()), ip("100.64.0.10"), 6, port)
        .is_some()
}

#[test]
fn an_idp_group_needs_no_definition_but_a_plain_unknown_group_does() {
    assert!(is_idp_group("group:oidc:engineering"));
    assert!(!is_idp_group("group:engineering"));
    policy(POLICY);
    let e =
        Policy::parse(r#"{"acls": [{"action": "accept", "src": ["group:nope"], "dst": ["*:*"]}]}"#)
            .unwrap_err();
    assert!(e.to_string().contains("unknown group"), "{e}");
}

#[test]
fn idp_membership_grants_access_and_its_removal_takes_it_away() {
    let p = policy(POLICY);
    let t = tailnet(NODES);
    assert!(allows(&p, &t, "alice-laptop", 22));
    assert!(!allows(&p, &t, "bob-laptop", 22));
    // carol's IdP group and bob's policy membership both count for group:eng.
    assert!(allows(&p, &t, "carol-laptop", 443));
    assert!(allows(&p, &t, "bob-laptop", 443));
    let t = tailnet(&NODES.replace(r#", "groups": ["group:oidc:engineering"]"#, ""));
    assert!(
        !allows(&p, &t, "alice-laptop", 22),
        "removed at the IdP: no access"
    );
}

#[test]
fn explain_names_the_idp_group_a_decision_came_through() {
    let p = policy(POLICY);
    let t = tailnet(NODES);
    let x = explain_query(&p, &t, "alice-laptop", "server:22", None).unwrap();
    assert_eq!(x.verdict, Verdict::Allowed);
    let text = x.to_string();
    assert!(
        text.contains("alice@example.com is a member of group:oidc:engineering (a group of the identity provider"),
        "{text}"
    );
    let x = explain_query(&p, &t, "bob-laptop", "server:22", None).unwrap();
    assert_eq!(x.verdict, Verdict::Denied);
    assert!(x.to_string().contains("members: alice@example.com"), "{x}");
}

#[test]
fn an_idp_group_may_own_tags() {
    let p = policy(POLICY);
    let t = tailnet(NODES);
    assert!(p.may_apply_tag(&t, "tag:server", Some("alice@example.com"), &[]));
    assert!(!p.may_apply_tag(&t, "tag:server", Some("bob@example.com"), &[]));
}
