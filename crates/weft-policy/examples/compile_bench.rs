//! Compile-time benchmark: a synthetic tailnet of N nodes (default 5,000)
//! and a policy of M rules (default 500) with a realistic mix of groups,
//! tags, autogroups, host aliases, CIDRs and port ranges.
//!
//! ```text
//! cargo run --release -p weft-policy --example compile_bench -- [--nodes N] [--rules M] [--compile-only]
//! ```
//!
//! Prints the time of each stage and the peak heap use (a counting global
//! allocator wraps the system one). This is a measurement, not a test.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::disallowed_methods)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use weft_policy::{Node, NodeId, Policy, Role, Tailnet, User, compile_all};

struct Counting;
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A small deterministic PRNG (xorshift) so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n.max(1) as u64)).unwrap()
    }
}

const TAGS: usize = 50;
const GROUPS: usize = 60;

fn tailnet(n: usize, rng: &mut Rng) -> (Tailnet, usize) {
    let n_users = (n / 4).max(1);
    let users: Vec<User> = (0..n_users)
        .map(|u| User {
            login: format!("user{u}@example.com").parse().unwrap(),
            role: if u % 50 == 0 {
                Role::Admin
            } else {
                Role::Member
            },
            groups: Default::default(),
        })
        .collect();
    let nodes: Vec<Node> = (0..n)
        .map(|i| {
            let tagged = rng.below(10) < 4;
            let tags = if tagged {
                let mut t = BTreeSet::from([format!("tag:t{}", rng.below(TAGS)).parse().unwrap()]);
                if rng.below(4) == 0 {
                    t.insert(format!("tag:t{}", rng.below(TAGS)).parse().unwrap());
                }
                t
            } else {
                BTreeSet::new()
            };
            // Scatter addresses over 100.64.0.0/10 as a real allocator would.
            let host = u32::try_from((i as u64 * 2_654_435_761) % (1 << 22)).unwrap();
            Node {
                id: NodeId(i64::try_from(i).unwrap() + 1),
                name: format!("node{i}").parse().unwrap(),
                user: Some(
                    format!("user{}@example.com", rng.below(n_users))
                        .parse()
                        .unwrap(),
                ),
                tags,
                ipv4: Some(Ipv4Addr::from(0x6440_0000 | host)),
                ipv6: Some(Ipv6Addr::from(
                    0xfd7a_115c_a1e0_0000_0000_0000_0000_0000u128 | u128::from(host),
                )),
            }
        })
        .collect();
    (Tailnet::new(users, nodes).unwrap(), n_users)
}

fn policy_text(m: usize, n_users: usize, rng: &mut Rng) -> String {
    let mut s = String::from("{\n  \"groups\": {\n");
    for g in 0..GROUPS {
        let members: Vec<String> = (0..5 + rng.below(45))
            .map(|_| format!("\"user{}@example.com\"", rng.below(n_users)))
            .collect();
        let _ = writeln!(s, "    \"group:g{g}\": [{}],", members.join(", "));
    }
    s.push_str("  },\n  \"tagOwners\": {\n");
    for t in 0..TAGS {
        let _ = writeln!(
            s,
            "    \"tag:t{t}\": [\"group:g{}\", \"autogroup:admin\"],",
            t % GROUPS
        );
    }
    s.push_str("  },\n  \"hosts\": {\n");
    for h in 0..20 {
        let _ = writeln!(
            s,
            "    \"h{h}\": \"100.{}.0.0/{}\",",
            64 + h % 64,
            12 + h % 12
        );
    }
    s.push_str("  },\n  \"acls\": [\n");
    let ports = [
        "22",
        "443",
        "80,443",
        "5432",
        "8000-8099",
        "*",
        "3000-3999,9090",
        "53",
    ];
    for _ in 0..m {
        let port = ports[rng.below(ports.len())];
        let (src, dst, proto) = match rng.below(20) {
            0..=7 => (
                format!("\"group:g{}\"", rng.below(GROUPS)),
                format!("\"tag:t{}:{port}\"", rng.below(TAGS)),
                "",
            ),
            8..=10 => (
                format!("\"tag:t{}\"", rng.below(TAGS)),
                format!(
                    "\"tag:t{}:{port}\", \"tag:t{}:{port}\"",
                    rng.below(TAGS),
                    rng.below(TAGS)
                ),
                "",
            ),
            11..=12 => (
                format!("\"user{}@example.com\"", rng.below(n_users)),
                format!("\"tag:t{}:{port}\"", rng.below(TAGS)),
                "",
            ),
            13..=14 => (
                "\"autogroup:member\"".into(),
                format!("\"tag:t{}:{port}\"", rng.below(TAGS)),
                "",
            ),
            15 => (
                "\"autogroup:member\"".into(),
                "\"autogroup:self:*\"".into(),
                "",
            ),
            16..=17 => (
                format!("\"h{}\", \"10.{}.0.0/16\"", rng.below(20), rng.below(256)),
                format!("\"tag:t{}:{port}\"", rng.below(TAGS)),
                "",
            ),
            18 => (
                "\"*\"".into(),
                format!("\"tag:t{}:53\"", rng.below(TAGS)),
                ", \"proto\": \"udp\"",
            ),
            _ => (
                format!("\"group:g{}\"", rng.below(GROUPS)),
                format!("\"h{}:{port}\"", rng.below(20)),
                "",
            ),
        };
        let _ = writeln!(
            s,
            "    {{\"action\": \"accept\", \"src\": [{src}], \"dst\": [{dst}]{proto}}},"
        );
    }
    s.push_str("  ],\n  \"ssh\": [\n");
    for _ in 0..20 {
        let _ = writeln!(
            s,
            "    {{\"action\": \"check\", \"src\": [\"group:g{}\"], \"dst\": [\"tag:t{}\"], \"users\": [\"root\", \"autogroup:nonroot\"]}},",
            rng.below(GROUPS),
            rng.below(TAGS)
        );
    }
    s.push_str("    {\"action\": \"accept\", \"src\": [\"autogroup:member\"], \"dst\": [\"autogroup:self\"], \"users\": [\"autogroup:nonroot\"]},\n  ],\n}\n");
    s
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration, usize) {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    (out, took, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let n = arg("--nodes", 5000);
    let m = arg("--rules", 500);
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let ((t, n_users), t_tailnet, mem_tailnet) = timed(|| tailnet(n, &mut rng));
    let text = policy_text(m, n_users, &mut rng);
    let (policy, t_parse, mem_parse) = timed(|| Policy::parse(&text).unwrap());
    let (compiled, t_compile, mem_compile) = timed(|| compile_all(&policy, &t));
    if std::env::args().any(|a| a == "--compile-only") {
        println!("compile_all: {:.1} ms", t_compile.as_secs_f64() * 1000.0);
        return;
    }
    let ((rules, prefixes), t_wire, mem_wire) = timed(|| {
        let (mut rules, mut prefixes) = (0usize, 0usize);
        for id in compiled.node_ids() {
            let f = compiled.filter_rules(*id).unwrap();
            rules += f.len();
            prefixes += f.iter().map(|r| r.src.len()).sum::<usize>();
            rules += compiled.ssh_policy(*id).unwrap().rules.len();
        }
        (rules, prefixes)
    });
    let (_, t_index, mem_index) = timed(|| {
        for id in compiled.node_ids() {
            drop(weft_filter::CompiledFilter::new(
                &compiled.filter_rules(*id).unwrap(),
            ));
        }
    });
    let (peers, t_visible, _) = timed(|| {
        compiled
            .node_ids()
            .iter()
            .map(|id| compiled.visible_peers(*id).unwrap().len())
            .sum::<usize>()
    });
    let ms = |d: Duration| format!("{:>9.1} ms", d.as_secs_f64() * 1000.0);
    let mib = |b: usize| format!("{:>8.1} MiB", b as f64 / (1024.0 * 1024.0));
    println!(
        "weft-policy compile benchmark: {n} nodes ({n_users} users), {m} acl rules + 21 ssh rules, policy {} KiB",
        text.len() / 1024
    );
    println!("{:<44} {:>12} {:>12}", "stage", "time", "peak heap");
    println!(
        "{:<44} {} {}",
        "build tailnet (index users, tags, addresses)",
        ms(t_tailnet),
        mib(mem_tailnet)
    );
    println!(
        "{:<44} {} {}",
        "parse + validate policy",
        ms(t_parse),
        mib(mem_parse)
    );
    println!(
        "{:<44} {} {}",
        "compile_all (filters, ssh, visibility)",
        ms(t_compile),
        mib(mem_compile)
    );
    println!(
        "{:<44} {} {}",
        "every node's filter rules + ssh policy (wire)",
        ms(t_wire),
        mib(mem_wire)
    );
    println!(
        "{:<44} {} {}",
        "every node's CompiledFilter::new (node side)",
        ms(t_index),
        mib(mem_index)
    );
    println!("{:<44} {}", "visible_peers for every node", ms(t_visible));
    println!(
        "per node on average: {:.1} filter/ssh rules, {:.0} source prefixes, {:.0} visible peers",
        rules as f64 / n as f64,
        prefixes as f64 / n as f64,
        peers as f64 / n as f64
    );
}
