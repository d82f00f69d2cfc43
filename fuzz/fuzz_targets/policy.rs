//! The policy file, as an admin writes it: HuJSON parse, the policy's own
//! checks, and compiling it for a small tailnet (filters and SSH policies of
//! every node), plus the offline check `weft policy check` runs.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use weft_fuzz::NODES_JSON;
use weft_policy::{Policy, Tailnet, compile_all};

fn tailnet() -> &'static Tailnet {
    static T: OnceLock<Tailnet> = OnceLock::new();
    T.get_or_init(|| Tailnet::from_nodes_json(NODES_JSON).expect("the fixture tailnet"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = Policy::parse(text) else {
        return;
    };
    let t = tailnet();
    let compiled = compile_all(&policy, t);
    for node in t.nodes() {
        if let Some(rules) = compiled.filter_rules(node.id) {
            // What the node's data plane builds from it.
            std::hint::black_box(weft_filter::CompiledFilter::new(&rules));
        }
        std::hint::black_box(compiled.ssh_policy(node.id));
    }
});
