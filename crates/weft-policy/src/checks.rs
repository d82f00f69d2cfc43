//! Running a policy's own `tests` and `sshTests`.
//!
//! Tests are about *identities*, as in Tailscale: `"src": "alice@example.com"`
//! asks about Alice whatever device she uses, including one she has not
//! registered yet. Weft therefore evaluates
//! - **`accept`** (and sshTests `check`) at the identity level: a user or tag
//!   stands for a device with that identity and no particular address, so
//!   the test passes only if a rule grants it by identity (or by `*`). An
//!   address src or dst (IP or host) is that address, with the identity of
//!   the node that holds it, if any.
//! - **`deny`** at the identity level *and* for every current device: the
//!   test fails if the identity, or any device of the src identity talking to
//!   any device of the dst identity (same address family), is allowed. An
//!   address-based rule that lets one of Alice's devices through therefore
//!   breaks a deny test about Alice.
//!
//! So a user with no devices is tested exactly like one with devices, and a
//! deny test also catches address rules that cover today's devices.
//! `sshTests` treat the login `root` as uid 0 (the node's user database is
//! not known to control); `autogroup:nonroot` never admits `root`.

use std::fmt;

use serde::Serialize;
use weft_types::filter::proto;

use crate::eval::{self, Probe, SshVerdict};
use crate::explain::explain_probes;
use crate::policy::{Item, Loc, Policy, Selector};
use crate::syntax::proto_name;
use crate::tailnet::Tailnet;

/// The outcome of one test entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestResult {
    /// `tests` or `sshTests`.
    pub section: &'static str,
    /// Index in that section.
    pub index: usize,
    /// Line of the test.
    pub line: u32,
    /// Column of the test.
    pub column: u32,
    /// The test's `src` as written.
    pub src: String,
    /// How many expectations were checked.
    pub checked: usize,
    /// What went wrong; empty when the test passed.
    pub failures: Vec<String>,
}

impl TestResult {
    /// Returns whether every expectation held.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// The outcome of all tests of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestReport {
    /// One result per test entry, `tests` first.
    pub results: Vec<TestResult>,
    /// The policy file name, for messages.
    pub source_name: String,
}

impl TestReport {
    /// Returns whether every test passed.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.results.iter().all(TestResult::passed)
    }

    /// Returns the failed tests.
    pub fn failed(&self) -> impl Iterator<Item = &TestResult> {
        self.results.iter().filter(|r| !r.passed())
    }
}

impl fmt::Display for TestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in self.failed() {
            writeln!(f, "{}:{}:{}: {}[{}] (src {}) failed:", self.source_name, r.line, r.column, r.section, r.index, r.src)?;
            for msg in &r.failures {
                writeln!(f, "  - {msg}")?;
            }
        }
        let count = |section: &str| self.results.iter().filter(|r| r.section == section).count();
        let failed = self.failed().count();
        if failed == 0 {
            write!(f, "{}: all {} tests and {} sshTests passed", self.source_name, count("tests"), count("sshTests"))
        } else {
            write!(f, "{}: {failed} of {} test entries failed", self.source_name, self.results.len())
        }
    }
}

impl Policy {
    /// Runs the policy's `tests` and `sshTests` against `tailnet` (see the
    /// module docs for the semantics).
    #[must_use]
    pub fn run_tests(&self, tailnet: &Tailnet) -> TestReport {
        let mut results = Vec::new();
        for (i, t) in self.tests.iter().enumerate() {
            let mut r = result("tests", i, &t.loc, &t.src.text);
            let (src_id, src_devs) = probes(tailnet, &t.src);
            for (expect_allow, list) in [(true, &t.accept), (false, &t.deny)] {
                for d in list {
                    r.checked += 1;
                    let target = Item { value: d.value.target.clone(), text: d.text.clone(), loc: d.loc };
                    let (dst_id, dst_devs) = probes(tailnet, &target);
                    let flow = |p: u8| if proto::has_ports(p) { format!("{} ({}/{})", d.text, proto_name(p), d.value.port) } else { format!("{} ({})", d.text, proto_name(p)) };
                    if expect_allow {
                        let e = explain_probes(self, tailnet, &src_id, &dst_id, t.proto, d.value.port);
                        if e.decided_by.is_none() {
                            let closest = e.near_misses.first().map_or(String::new(), |m| {
                                let why: Vec<String> = m.checks.iter().filter(|c| !c.ok).map(|c| c.detail.clone()).collect();
                                format!("; closest rule acls[{}] (line {}): {}", m.index, m.line, why.join("; "))
                            });
                            r.failures.push(format!("{} → {}: expected allowed, but no rule allows it{closest}", t.src.text, flow(e.proto_number)));
                        }
                    } else {
                        for (s, dd) in pairs(&src_id, &src_devs, &dst_id, &dst_devs) {
                            let p = eval::effective_proto(t.proto, s, dd);
                            let hits = eval::allowing_rules(self, tailnet, s, dd, p, d.value.port);
                            if let Some(h) = hits.first() {
                                let line = self.acls.get(h.rule).map_or(0, |a| a.loc.line);
                                r.failures.push(format!(
                                    "{} → {}: expected denied, but acls[{}] (line {line}) allows it{}",
                                    t.src.text,
                                    flow(p),
                                    h.rule,
                                    via(s, dd)
                                ));
                                break;
                            }
                        }
                    }
                }
            }
            results.push(r);
        }
        for (i, t) in self.ssh_tests.iter().enumerate() {
            let mut r = result("sshTests", i, &t.loc, &t.src.text);
            let (src_id, src_devs) = probes(tailnet, &t.src);
            for d in &t.dst {
                let (dst_id, dst_devs) = probes(tailnet, d);
                for (want, logins) in [("accept", &t.accept), ("check", &t.check), ("deny", &t.deny)] {
                    for login in logins {
                        r.checked += 1;
                        let what = format!("{} → {} as \"{}\"", t.src.text, d.text, login.value);
                        if want == "deny" {
                            for (s, dd) in pairs(&src_id, &src_devs, &dst_id, &dst_devs) {
                                let v = eval::ssh_decide(self, tailnet, s, dd, &login.value);
                                if let Some(msg) = ssh_admits(self, &v) {
                                    r.failures.push(format!("{what}: expected deny, but {msg}{}", via(s, dd)));
                                    break;
                                }
                            }
                            continue;
                        }
                        let v = eval::ssh_decide(self, tailnet, &src_id, &dst_id, &login.value);
                        let failure = match (&v, want) {
                            (SshVerdict::Accept { .. } | SshVerdict::Check { .. }, "accept") | (SshVerdict::Check { .. }, "check") => None,
                            (SshVerdict::Accept { rule, .. }, _) => {
                                Some(format!("expected check, but ssh[{rule}] (line {}) accepts without a check", ssh_line(self, *rule)))
                            }
                            _ => Some(format!("expected {want}, but no ssh rule lets it log in")),
                        };
                        if let Some(msg) = failure {
                            r.failures.push(format!("{what}: {msg}"));
                        }
                    }
                }
            }
            results.push(r);
        }
        TestReport { results, source_name: self.source_name().to_string() }
    }
}

fn result(section: &'static str, index: usize, loc: &Loc, src: &str) -> TestResult {
    TestResult { section, index, line: loc.line, column: loc.column, src: src.to_string(), checked: 0, failures: Vec::new() }
}

fn ssh_line(policy: &Policy, rule: usize) -> u32 {
    policy.ssh.get(rule).map_or(0, |r| r.loc.line)
}

fn ssh_admits(policy: &Policy, v: &SshVerdict) -> Option<String> {
    match v {
        SshVerdict::Accept { rule, local } => Some(format!("ssh[{rule}] (line {}) accepts it as local user \"{local}\"", ssh_line(policy, *rule))),
        SshVerdict::Check { rule, local } => Some(format!("ssh[{rule}] (line {}) admits it after a check as local user \"{local}\"", ssh_line(policy, *rule))),
        SshVerdict::Deny => None,
    }
}

fn via(s: &Probe, d: &Probe) -> String {
    match (s.addr, d.addr) {
        (Some(sa), Some(da)) => format!(" (from {} {sa} to {} {da})", s.label, d.label),
        (Some(sa), None) => format!(" (from {} {sa})", s.label),
        (None, Some(da)) => format!(" (to {} {da})", d.label),
        (None, None) => String::new(),
    }
}

/// The identity probe of a test endpoint, and its current devices.
fn probes(tailnet: &Tailnet, sel: &Item<Selector>) -> (Probe, Vec<Probe>) {
    let devices = |nodes: &[usize]| -> Vec<Probe> {
        nodes
            .iter()
            .flat_map(|&i| {
                let addrs: Vec<_> = tailnet.nodes().get(i).map(|n| n.addresses().collect()).unwrap_or_default();
                addrs.into_iter().filter_map(move |a| Probe::node(tailnet, i, Some(a)))
            })
            .collect()
    };
    match &sel.value {
        Selector::User(u) => (Probe::user(u), devices(tailnet.user_nodes(u))),
        Selector::Tag(t) => (Probe::tag(t), devices(tailnet.tag_nodes(t))),
        Selector::Host(_, net) | Selector::Prefix(net) => (Probe::address(tailnet, net.addr()), Vec::new()),
        // Rejected by the parser for tests; an identity-less probe matches only `*`.
        _ => (Probe { user: None, tags: Vec::new(), addr: None, label: sel.text.clone() }, Vec::new()),
    }
}

/// Every (src, dst) combination a deny test must refuse: identities and
/// devices, skipping device pairs of different address families.
fn pairs<'p>(src_id: &'p Probe, src_devs: &'p [Probe], dst_id: &'p Probe, dst_devs: &'p [Probe]) -> Vec<(&'p Probe, &'p Probe)> {
    let srcs: Vec<&Probe> = std::iter::once(src_id).chain(src_devs).collect();
    let dsts: Vec<&Probe> = std::iter::once(dst_id).chain(dst_devs).collect();
    let mut out = Vec::new();
    for s in &srcs {
        for d in &dsts {
            let same_family = match (s.addr, d.addr) {
                (Some(a), Some(b)) => a.is_ipv4() == b.is_ipv4(),
                _ => true,
            };
            if same_family {
                out.push((*s, *d));
            }
        }
    }
    out
}
