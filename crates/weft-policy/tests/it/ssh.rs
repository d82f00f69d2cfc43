//! Judging SSH logins on a node from its compiled policy.
#![allow(clippy::unwrap_used)]

use crate::common;
use common::*;

use std::collections::BTreeMap;

use proptest::prelude::*;
use weft_policy::{LocalAccount, RejectReason, SshDecision, authorize_ssh, compile_all};
use weft_types::filter::{
    CheckPeriod, LocalUser, SshAction, SshMode, SshPolicy, SshPrincipal, SshRecorder, SshRule,
};

fn passwd(entries: &[(&str, u32)]) -> impl Fn(&str) -> Option<LocalAccount> + use<> {
    let map: BTreeMap<String, u32> = entries.iter().map(|(n, u)| (n.to_string(), *u)).collect();
    move |name: &str| map.get(name).map(|&uid| LocalAccount { uid })
}

fn server_policy(text: &str) -> SshPolicy {
    let t = tailnet();
    compile_all(&policy(text), &t)
        .ssh_policy(id(&t, "server"))
        .unwrap()
}

const RULES: &str = r#"{"tagOwners": {"tag:server": []}, "ssh": [
    {"action": "check", "src": ["alice@example.com"], "dst": ["tag:server"], "users": ["root"], "checkPeriod": "always"},
    {"action": "accept", "src": ["autogroup:member"], "dst": ["tag:server"], "users": ["autogroup:nonroot"]},
]}"#;

#[test]
fn the_first_matching_rule_decides_and_carries_its_action() {
    let s = server_policy(RULES);
    let users = passwd(&[("root", 0), ("alice", 1000), ("bob", 1001)]);
    match authorize_ssh(&s, ip("100.64.0.1"), "root", &users) {
        SshDecision::Check {
            local_user,
            period,
            rule,
            ..
        } => {
            assert_eq!(
                (local_user.as_str(), period, rule),
                ("root", CheckPeriod::Always, 0)
            );
        }
        other => panic!("{other:?}"),
    }
    match authorize_ssh(&s, ip("fd7a:115c:a1e0::3"), "bob", &users) {
        SshDecision::Accept {
            local_user,
            rule,
            action,
        } => {
            assert_eq!((local_user.as_str(), rule), ("bob", 1));
            assert!(
                action.allow_agent_forwarding
                    && action.allow_local_port_forwarding
                    && action.allow_remote_port_forwarding
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn refusals_say_why() {
    let s = server_policy(RULES);
    let users = passwd(&[("root", 0), ("toor", 0), ("bob", 1001)]);
    let reject = |src: &str, login: &str| match authorize_ssh(&s, ip(src), login, &users) {
        SshDecision::Reject(r) => r,
        other => panic!("{login}: {other:?}"),
    };
    assert_eq!(
        reject("100.64.0.3", "root"),
        RejectReason::RootRefused,
        "bob may not be root"
    );
    assert_eq!(
        reject("100.64.0.3", "toor"),
        RejectReason::RootRefused,
        "nor any other uid-0 account"
    );
    assert_eq!(
        reject("100.64.0.3", "mallory"),
        RejectReason::NoSuchLocalUser("mallory".into())
    );
    assert_eq!(
        reject("100.64.0.10", "bob"),
        RejectReason::SourceNotAllowed,
        "a tagged device is not a member"
    );
    assert_eq!(reject("100.64.0.99", "bob"), RejectReason::SourceNotAllowed);
    assert_eq!(
        reject("100.64.0.3", "root").to_string(),
        "tailnet policy permits only non-root users here"
    );
    assert!(matches!(
        authorize_ssh(&SshPolicy::default(), ip("100.64.0.1"), "alice", &users),
        SshDecision::Reject(RejectReason::SourceNotAllowed)
    ));
}

fn arb_users() -> impl Strategy<Value = Vec<(String, u32)>> {
    proptest::collection::vec(
        (
            prop_oneof![
                Just("root".to_string()),
                Just("toor".to_string()),
                Just("admin".to_string()),
                "[a-z]{1,6}"
            ],
            prop_oneof![Just(0u32), 1u32..70000],
        ),
        0..8,
    )
}

fn arb_map() -> impl Strategy<Value = BTreeMap<String, LocalUser>> {
    proptest::collection::btree_map(
        prop_oneof![
            Just("*".to_string()),
            Just("root".to_string()),
            Just("toor".to_string()),
            "[a-z]{1,6}"
        ],
        prop_oneof![Just(LocalUser::SameNameNonRoot), Just(LocalUser::NoMapping)],
        0..4,
    )
}

proptest! {
    #[test]
    fn same_name_non_root_never_yields_a_uid_0_account(
        maps in proptest::collection::vec(arb_map(), 1..4),
        users in arb_users(),
        requested in prop_oneof![Just("root".to_string()), Just("toor".to_string()), Just("admin".to_string()), "[a-z]{1,6}"],
    ) {
        let uid_of: BTreeMap<String, u32> = users.iter().cloned().collect();
        let policy = SshPolicy {
            rules: maps.into_iter().map(|users| SshRule {
                principals: vec![SshPrincipal::Any],
                users,
                action: SshAction { mode: SshMode::Accept, allow_agent_forwarding: false, allow_local_port_forwarding: false, allow_remote_port_forwarding: false, recorder: None },
                origin: None,
            }).collect(),
        };
        let lookup = |n: &str| uid_of.get(n).map(|&uid| LocalAccount { uid });
        match authorize_ssh(&policy, ip("100.64.0.1"), &requested, lookup) {
            SshDecision::Accept { local_user, .. } | SshDecision::Check { local_user, .. } => {
                prop_assert_ne!(uid_of.get(&local_user).copied(), Some(0), "{} mapped to uid 0", requested);
                prop_assert_ne!(local_user.as_str(), "root");
                prop_assert_eq!(local_user, requested);
            }
            SshDecision::Reject(_) => {}
        }
    }

    #[test]
    fn nonroot_and_localpart_policies_never_map_to_root(
        users in arb_users(),
        requested in prop_oneof![Just("root".to_string()), Just("toor".to_string()), Just("alice".to_string()), Just("bob".to_string()), "[a-z]{1,6}"],
        src in prop_oneof![Just("100.64.0.1"), Just("100.64.0.3"), Just("fd7a:115c:a1e0::2")],
    ) {
        // Users of the example.com domain include a "root@example.com"-like
        // trap: localpart must never give root either.
        let t = weft_policy::Tailnet::new(
            vec![user("alice@example.com", false), user("bob@example.com", false), user("root@example.com", false)],
            vec![
                node(1, "a", Some("alice@example.com"), &[], "100.64.0.1", "fd7a:115c:a1e0::1"),
                node(2, "a2", Some("alice@example.com"), &[], "100.64.0.2", "fd7a:115c:a1e0::2"),
                node(3, "b", Some("bob@example.com"), &[], "100.64.0.3", "fd7a:115c:a1e0::3"),
                node(4, "r", Some("root@example.com"), &[], "100.64.0.4", "fd7a:115c:a1e0::4"),
                node(5, "srv", None, &["tag:server"], "100.64.0.10", "fd7a:115c:a1e0::10"),
            ],
        ).unwrap();
        let p = policy(r#"{"tagOwners": {"tag:server": []}, "ssh": [
            {"action": "accept", "src": ["autogroup:member"], "dst": ["tag:server"], "users": ["autogroup:nonroot", "localpart:*@example.com"]},
        ]}"#);
        let s = compile_all(&p, &t).ssh_policy(weft_policy::NodeId(5)).unwrap();
        let uid_of: BTreeMap<String, u32> = users.iter().cloned().collect();
        let lookup = |n: &str| uid_of.get(n).map(|&uid| LocalAccount { uid });
        if let SshDecision::Accept { local_user, .. } = authorize_ssh(&s, ip(src), &requested, lookup) {
            prop_assert_ne!(local_user.as_str(), "root");
            prop_assert_ne!(uid_of.get(&local_user).copied(), Some(0));
        }
    }
}

#[test]
fn a_recorder_reaches_the_destination_in_its_rule_action() {
    let s = server_policy(
        r#"{"tagOwners": {"tag:server": []}, "ssh": [
        {"action": "accept", "src": ["alice@example.com"], "dst": ["tag:server"], "users": ["root"], "recorder": {"input": true}},
        {"action": "accept", "src": ["autogroup:member"], "dst": ["tag:server"], "users": ["deploy"]},
        {"action": "accept", "src": ["autogroup:member"], "dst": ["tag:server"], "users": ["autogroup:nonroot"], "recorder": {"enforce": false}},
    ]}"#,
    );
    let users = passwd(&[("root", 0), ("bob", 1001), ("deploy", 1002)]);
    let recorder_of = |src: &str, login: &str| match authorize_ssh(&s, ip(src), login, &users) {
        SshDecision::Accept { action, .. } => action.recorder,
        other => panic!("{other:?}"),
    };
    // Omitted keys default to output only, enforced.
    assert_eq!(
        recorder_of("100.64.0.1", "root"),
        Some(SshRecorder {
            input: true,
            enforce: true
        })
    );
    assert_eq!(
        recorder_of("100.64.0.1", "bob"),
        Some(SshRecorder {
            input: false,
            enforce: false
        })
    );
    assert_eq!(recorder_of("100.64.0.1", "deploy"), None);
    // The wire form names the recorder only where there is one.
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(json.matches("\"recorder\"").count(), 2, "{json}");
}
