//! The one pre-authentication input of an SSH client that reaches Weft's
//! own code: the requested login name (russh parses everything before it
//! and hands it to `auth_none` / `auth_keyboard_interactive`). weftd's
//! authorizer evaluates it with `weft_policy::authorize_ssh` against the
//! node's compiled SSH policy, from a tailnet peer's address; this target
//! does the same for every node of the fixture tailnet and several sources.
#![no_main]

use std::net::IpAddr;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use weft_fuzz::NODES_JSON;
use weft_policy::ssh::{LocalAccount, authorize_ssh};
use weft_policy::{Policy, Tailnet, compile_all};
use weft_types::filter::SshPolicy;

const POLICY: &str =
    include_str!("../../crates/weft-policy/tests/corpus/valid/full_example.hujson");

fn policies() -> &'static Vec<SshPolicy> {
    static P: OnceLock<Vec<SshPolicy>> = OnceLock::new();
    P.get_or_init(|| {
        let t = Tailnet::from_nodes_json(NODES_JSON).expect("the fixture tailnet");
        let policy = Policy::parse(POLICY).expect("the fixture policy");
        let compiled = compile_all(&policy, &t);
        t.nodes()
            .iter()
            .filter_map(|n| compiled.ssh_policy(n.id))
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    // russh hands over the name as UTF-8 text.
    let Ok(user) = std::str::from_utf8(data) else {
        return;
    };
    let sources: [IpAddr; 3] = [
        "100.64.0.1".parse().expect("ip"),
        "fd7a:115c:a1e0::3".parse().expect("ip"),
        "198.18.0.9".parse().expect("ip"),
    ];
    for policy in policies() {
        for src in sources {
            let d = authorize_ssh(policy, src, user, |name: &str| {
                (name == "root" || name.len() <= 32).then_some(LocalAccount {
                    uid: if name == "root" { 0 } else { 1000 },
                })
            });
            std::hint::black_box(format!("{d:?}"));
        }
    }
});
