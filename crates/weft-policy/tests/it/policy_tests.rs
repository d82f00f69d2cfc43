//! The semantics of a policy's own `tests` and `sshTests`.
#![allow(clippy::unwrap_used)]

use crate::common;
use common::*;

const BASE: &str = r#"
  "groups": {"group:eng": ["alice@example.com", "carol@example.com"]},
  "tagOwners": {"tag:server": ["group:eng"], "tag:db": []},
  "hosts": {"db-ip": "100.64.0.11"},
  "acls": [
    {"action": "accept", "src": ["group:eng"], "dst": ["tag:server:22,443"]},
    {"action": "accept", "src": ["tag:server"], "dst": ["tag:db:5432"]},
    {"action": "accept", "src": ["100.64.0.2"], "dst": ["db-ip:5432"]},
  ],
  "ssh": [
    {"action": "check", "src": ["group:eng"], "dst": ["tag:server"], "users": ["root"]},
    {"action": "accept", "src": ["group:eng"], "dst": ["tag:server"], "users": ["autogroup:nonroot"]},
  ],
"#;

fn run(tests: &str) -> weft_policy::TestReport {
    policy(&format!("{{{BASE}{tests}}}")).run_tests(&tailnet())
}

#[test]
fn passing_tests_pass() {
    let r = run(r#""tests": [
        {"src": "alice@example.com", "accept": ["tag:server:22", "tag:server:443"], "deny": ["tag:server:80", "tag:db:22"]},
        {"src": "tag:server", "accept": ["tag:db:5432"], "deny": ["tag:db:5433"]},
        {"src": "bob@example.com", "deny": ["tag:server:22", "tag:db:5432"]},
      ],
      "sshTests": [
        {"src": "alice@example.com", "dst": ["tag:server"], "check": ["root"], "accept": ["ubuntu", "root"], "deny": []},
        {"src": "bob@example.com", "dst": ["tag:server"], "deny": ["root", "ubuntu"]},
      ],"#);
    assert!(r.passed(), "{r}");
    assert_eq!(r.results.len(), 5);
    assert_eq!(r.results[0].checked, 4);
    assert_eq!(
        r.to_string(),
        "policy.hujson: all 3 tests and 2 sshTests passed"
    );
}

#[test]
fn a_user_without_devices_is_tested_as_an_identity() {
    // carol has no devices; she is in group:eng, so she may reach the servers.
    let r = run(
        r#""tests": [{"src": "carol@example.com", "accept": ["tag:server:22"], "deny": ["tag:db:5432"]}],"#,
    );
    assert!(r.passed(), "{r}");
}

#[test]
fn an_accept_test_needs_a_rule_for_the_identity_and_says_which_rule_came_closest() {
    let r = run(r#""tests": [{"src": "alice@example.com", "accept": ["tag:server:8080"]}],"#);
    assert!(!r.passed());
    assert_eq!(
        r.results[0].failures,
        [
            "alice@example.com → tag:server:8080 (tcp/8080): expected allowed, but no rule allows it (to server 100.64.0.10); closest rule acls[0] (line 6): 8080 is not in 22,443"
        ]
    );
}

#[test]
fn a_deny_test_fails_when_an_address_rule_lets_one_of_the_users_devices_through() {
    // acls[2] lets alice's phone (100.64.0.2) reach the db by address: alice
    // as an identity is denied, but one of her devices is not.
    let r = run(r#""tests": [{"src": "alice@example.com", "deny": ["tag:db:5432"]}],"#);
    assert_eq!(
        r.results[0].failures,
        [
            "alice@example.com → tag:db:5432 (tcp/5432): expected denied, but acls[2] (line 8) allows it (from alice-phone 100.64.0.2 to db 100.64.0.11)"
        ]
    );
    let shown = r.to_string();
    assert!(
        shown.starts_with("policy.hujson:14:11: tests[0] (src alice@example.com) failed:\n"),
        "{shown}"
    );
    assert!(
        shown.ends_with("policy.hujson: 1 of 1 test entries failed"),
        "{shown}"
    );
}

#[test]
fn ssh_tests_tell_check_from_accept_and_deny() {
    let r = run(r#""sshTests": [
        {"src": "alice@example.com", "dst": ["tag:server"], "check": ["ubuntu"]},
        {"src": "alice@example.com", "dst": ["tag:server"], "deny": ["root"]},
        {"src": "bob@example.com", "dst": ["tag:server"], "accept": ["ubuntu"]},
      ],"#);
    let f: Vec<&str> = r
        .results
        .iter()
        .flat_map(|x| x.failures.iter().map(String::as_str))
        .collect();
    assert_eq!(
        f,
        [
            "alice@example.com → tag:server as \"ubuntu\": expected check, but ssh[1] (line 12) accepts without a check (to server 100.64.0.10)",
            "alice@example.com → tag:server as \"root\": expected deny, but ssh[0] (line 11) admits it after a check as local user \"root\"",
            "bob@example.com → tag:server as \"ubuntu\": expected accept, but no ssh rule lets it log in (to server 100.64.0.10)",
        ]
    );
}

#[test]
fn tagged_sources_in_tests_have_no_user_identity() {
    // `server` was tagged by alice; as tag:server it is not in group:eng.
    let r = run(r#""tests": [{"src": "tag:server", "deny": ["tag:server:22"]}],"#);
    assert!(r.passed(), "{r}");
}
