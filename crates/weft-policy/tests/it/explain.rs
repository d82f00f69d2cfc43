//! `explain` and the offline commands, rendered: snapshots of what a person
//! sees. `WEFT_BLESS=1` rewrites the snapshots; review the diff.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::Path;

use weft_policy::{Outcome, Source, Verdict, offline_check, offline_explain};

const POLICY: &str = r#"// Example policy for the explain snapshots.
{
  "groups": {
    "group:eng": ["alice@example.com"],
    "group:ops": ["bob@example.com"],
  },
  "tagOwners": {"tag:server": ["group:eng"], "tag:db": ["group:ops"]},
  "hosts": {"db-net": "100.64.0.11/32"},
  "acls": [
    // Engineers reach the servers over SSH and HTTPS.
    {"action": "accept", "src": ["group:eng"], "dst": ["tag:server:22,443"]},
    // Servers reach the databases.
    {"action": "accept", "src": ["tag:server"], "dst": ["tag:db:5432"]},
    // Ops run the databases.
    {"action": "accept", "src": ["group:ops"], "dst": ["db-net:*"]},
    // Everyone reaches their own devices.
    {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
    {"action": "accept", "src": ["autogroup:member"], "proto": "udp", "dst": ["tag:server:53"]},
  ],
  "tests": [
    {"src": "alice@example.com", "accept": ["tag:server:22"], "deny": ["tag:db:5432"]},
    {"src": "bob@example.com", "accept": ["tag:db:5432", "tag:server:22"]},
  ],
}
"#;

fn snapshot(name: &str, got: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.txt"));
    if std::env::var_os("WEFT_BLESS").is_some() {
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(got, want, "snapshot {name} differs; got:\n{got}");
}

fn explain(src: &str, dst: &str, proto: Option<&str>) -> weft_policy::ExplainReport {
    offline_explain(
        Source {
            name: "policy.hujson",
            text: POLICY,
        },
        Source {
            name: "nodes.json",
            text: common::NODES,
        },
        src,
        dst,
        proto,
    )
}

#[test]
fn an_allowed_flow_names_the_rule_and_why_each_part_matched() {
    let r = explain("alice-laptop", "server:22", None);
    assert_eq!(r.outcome, Outcome::Ok);
    let x = r.explanation.as_ref().unwrap();
    assert_eq!(x.verdict, Verdict::Allowed);
    assert_eq!(
        x.decided_by.as_ref().map(|d| (d.index, d.line)),
        Some((0, 11))
    );
    snapshot("explain_allowed", &r.to_string());
}

#[test]
fn a_denied_flow_lists_near_misses_with_fixes() {
    let r = explain("alice-laptop", "server:8080", None);
    assert_eq!(r.outcome, Outcome::Failed);
    let x = r.explanation.as_ref().unwrap();
    assert_eq!(
        x.near_misses.first().and_then(|m| m.fix.clone()).as_deref(),
        Some("add port 8080 to \"tag:server:22,443\"")
    );
    snapshot("explain_denied_port", &r.to_string());
}

#[test]
fn a_tagged_source_is_not_its_owner() {
    // server was tagged by alice: it may reach the db (as tag:server) but not alice's phone.
    let r = explain("server", "alice-phone:22", None);
    assert_eq!(r.outcome, Outcome::Failed);
    snapshot("explain_denied_tagged_source", &r.to_string());
}

#[test]
fn explain_takes_users_addresses_and_protocols() {
    let r = explain("bob@example.com", "100.64.0.11:5432", None);
    assert_eq!(r.outcome, Outcome::Ok, "{r}");
    snapshot("explain_user_to_address", &r.to_string());
    let r = explain("fd7a:115c:a1e0::3", "[fd7a:115c:a1e0::10]:53", Some("udp"));
    assert_eq!(r.outcome, Outcome::Ok, "{r}");
    // ICMP has no ports: reaching any port of a device lets pings through.
    let r = explain("alice-laptop", "server", Some("icmp"));
    assert_eq!(r.outcome, Outcome::Ok);
    snapshot("explain_icmp", &r.to_string());
}

#[test]
fn explain_output_is_also_json() {
    let r = explain("alice-laptop", "alice-phone:22", None);
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["outcome"], "ok");
    assert_eq!(json["explanation"]["verdict"], "allowed");
    assert_eq!(json["explanation"]["decided_by"]["index"], 3);
    assert_eq!(
        json["explanation"]["decided_by"]["checks"][1]["detail"],
        "alice-phone belongs to alice@example.com, the source's own user"
    );
}

#[test]
fn bad_questions_get_one_clear_answer() {
    let r = explain("nobody", "server:22", None);
    assert_eq!(r.outcome, Outcome::Invalid);
    assert_eq!(
        r.to_string(),
        "--src: \"nobody\" is not a node name, user login or IP address (nodes: alice-laptop, alice-phone, bob-laptop, db, server)\n"
    );
    let r = explain("alice-laptop", "server", None);
    assert_eq!(
        r.to_string(),
        "--dst: give a port for tcp, e.g. \"server:22\"\n"
    );
    let r = offline_explain(
        Source {
            name: "p.hujson",
            text: "{\"acls\": [}",
        },
        Source {
            name: "nodes.json",
            text: common::NODES,
        },
        "a",
        "b:1",
        None,
    );
    assert_eq!(
        r.to_string(),
        "p.hujson:1:11: expected a value or `]`, found `}`\n"
    );
    assert_eq!(r.outcome.exit_code(), 2);
}

#[test]
fn offline_check_runs_the_tests_and_reports_failures_with_lines() {
    let r = offline_check(
        Source {
            name: "policy.hujson",
            text: POLICY,
        },
        Source {
            name: "nodes.json",
            text: common::NODES,
        },
    );
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(r.outcome.exit_code(), 1);
    snapshot("check_failed", &r.to_string());
    let fixed = POLICY.replace(r#""tag:db:5432", "tag:server:22""#, r#""tag:db:5432""#);
    let r = offline_check(
        Source {
            name: "policy.hujson",
            text: &fixed,
        },
        Source {
            name: "nodes.json",
            text: common::NODES,
        },
    );
    assert_eq!(r.outcome, Outcome::Ok, "{r}");
    assert_eq!(
        r.to_string(),
        "policy.hujson: all 2 tests and 0 sshTests passed (tailnet: 3 users, 5 nodes)\n"
    );
}

#[test]
fn offline_check_rejects_a_bad_nodes_file_with_its_position() {
    let nodes = r#"{"users": [{"login": "alice@example.com"}],
  "nodes": [{"name": "a", "user": "bob@example.com", "ipv4": "100.64.0.1"}]}"#;
    let r = offline_check(
        Source {
            name: "policy.hujson",
            text: POLICY,
        },
        Source {
            name: "nodes.json",
            text: nodes,
        },
    );
    assert_eq!(r.outcome, Outcome::Invalid);
    assert_eq!(
        r.to_string(),
        "nodes.json:2:35: nodes[0].user: unknown user \"bob@example.com\": add {\"login\": \"bob@example.com\"} to \"users\" (users: alice@example.com)\n"
    );
}
