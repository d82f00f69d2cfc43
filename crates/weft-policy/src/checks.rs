//! Running a policy's own `tests` and `sshTests`.
//!
//! Tests are about *identities*, as in Tailscale: `"src": "alice@example.com"`
//! asks about Alice whatever device she uses, including one she has not
//! registered yet. Weft evaluates them as follows.
//! - The **src** is an identity: a user or tag stands for a device with that
//!   identity and no particular address, so only rules that grant it by
//!   identity (users, groups, tags, autogroups, `*`) count. An IP or host src
//!   is that address, with the identity of the node holding it, if any.
//! - The **dst** is what exists: every current device of the dst identity
//!   (or the dst address). When the identity has no devices yet, a device
//!   with that identity and no particular address stands in for it.
//! - **`accept`** (and sshTests `accept`/`check`) passes when the src
//!   identity reaches every dst device (on at least one of its addresses).
//! - **`deny`** passes only when *nothing* gets through: neither the src
//!   identity nor any current device of it (by address, same family) reaches
//!   the dst identity or any of its devices. An address rule that lets one of
//!   Alice's devices through therefore breaks a deny test about Alice.
//!
//! A user with no devices is thus tested like one with devices, and a deny
//! test also catches address rules that cover today's devices.
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
            writeln!(
                f,
                "{}:{}:{}: {}[{}] (src {}) failed:",
                self.source_name, r.line, r.column, r.section, r.index, r.src
            )?;
            for msg in &r.failures {
                writeln!(f, "  - {msg}")?;
            }
        }
        let count = |section: &str| self.results.iter().filter(|r| r.section == section).count();
        let failed = self.failed().count();
        if failed == 0 {
            write!(
                f,
                "{}: all {} tests and {} sshTests passed",
                self.source_name,
                count("tests"),
                count("sshTests")
            )
        } else {
            write!(
                f,
                "{}: {failed} of {} test entries failed",
                self.source_name,
                self.results.len()
            )
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
                    let target = Item {
                        value: d.value.target.clone(),
                        text: d.text.clone(),
                        loc: d.loc,
                    };
                    let (dst_id, dst_devs) = probes(tailnet, &target);
                    let flow = |p: u8| {
                        if proto::has_ports(p) {
                            format!("{} ({}/{})", d.text, proto_name(p), d.value.port)
                        } else {
                            format!("{} ({})", d.text, proto_name(p))
                        }
                    };
                    if expect_allow {
                        let targets: Vec<Vec<Probe>> = if dst_devs.is_empty() {
                            vec![vec![dst_id.clone()]]
                        } else {
                            dst_devs.clone()
                        };
                        for device in &targets {
                            let explained: Vec<_> = device
                                .iter()
                                .map(|dd| {
                                    explain_probes(
                                        self,
                                        tailnet,
                                        &src_id,
                                        dd,
                                        t.proto,
                                        d.value.port,
                                    )
                                })
                                .collect();
                            if explained.iter().any(|e| e.decided_by.is_some()) {
                                continue;
                            }
                            let Some(e) = explained.first() else { continue };
                            let closest = e.near_misses.first().map_or(String::new(), |m| {
                                let why: Vec<String> = m
                                    .checks
                                    .iter()
                                    .filter(|c| !c.ok)
                                    .map(|c| c.detail.clone())
                                    .collect();
                                format!(
                                    "; closest rule acls[{}] (line {}): {}",
                                    m.index,
                                    m.line,
                                    why.join("; ")
                                )
                            });
                            let dev = device.first().map_or(String::new(), |dd| via(&src_id, dd));
                            r.failures.push(format!(
                                "{} → {}: expected allowed, but no rule allows it{dev}{closest}",
                                t.src.text,
                                flow(e.proto_number)
                            ));
                            break;
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
                for (want, logins) in [
                    ("accept", &t.accept),
                    ("check", &t.check),
                    ("deny", &t.deny),
                ] {
                    for login in logins {
                        r.checked += 1;
                        let what = format!("{} → {} as \"{}\"", t.src.text, d.text, login.value);
                        if want == "deny" {
                            for (s, dd) in pairs(&src_id, &src_devs, &dst_id, &dst_devs) {
                                let v = eval::ssh_decide(self, tailnet, s, dd, &login.value);
                                if let Some(msg) = ssh_admits(self, &v) {
                                    r.failures.push(format!(
                                        "{what}: expected deny, but {msg}{}",
                                        via(s, dd)
                                    ));
                                    break;
                                }
                            }
                            continue;
                        }
                        let targets: Vec<&Probe> = if dst_devs.is_empty() {
                            vec![&dst_id]
                        } else {
                            dst_devs.iter().filter_map(|dev| dev.first()).collect()
                        };
                        let verdicts: Vec<(SshVerdict, &Probe)> = targets
                            .iter()
                            .map(|dd| {
                                (
                                    eval::ssh_decide(self, tailnet, &src_id, dd, &login.value),
                                    *dd,
                                )
                            })
                            .collect();
                        let (v, dd) = verdicts
                            .iter()
                            .find(|(v, _)| {
                                !matches!(
                                    (v, want),
                                    (
                                        SshVerdict::Accept { .. } | SshVerdict::Check { .. },
                                        "accept"
                                    ) | (SshVerdict::Check { .. }, "check")
                                )
                            })
                            .or(verdicts.first())
                            .map_or((SshVerdict::Deny, &dst_id), |(v, dd)| (v.clone(), *dd));
                        let at = if dd.addr.is_some() {
                            via(&src_id, dd)
                        } else {
                            String::new()
                        };
                        let failure = match (&v, want) {
                            (SshVerdict::Accept { .. } | SshVerdict::Check { .. }, "accept")
                            | (SshVerdict::Check { .. }, "check") => None,
                            (SshVerdict::Accept { rule, .. }, _) => Some(format!(
                                "expected check, but ssh[{rule}] (line {}) accepts without a check",
                                ssh_line(self, *rule)
                            )),
                            _ => Some(format!("expected {want}, but no ssh rule lets it log in")),
                        };
                        if let Some(msg) = failure {
                            r.failures.push(format!("{what}: {msg}{at}"));
                        }
                    }
                }
            }
            results.push(r);
        }
        TestReport {
            results,
            source_name: self.source_name().to_string(),
        }
    }
}

fn result(section: &'static str, index: usize, loc: &Loc, src: &str) -> TestResult {
    TestResult {
        section,
        index,
        line: loc.line,
        column: loc.column,
        src: src.to_string(),
        checked: 0,
        failures: Vec::new(),
    }
}

fn ssh_line(policy: &Policy, rule: usize) -> u32 {
    policy.ssh.get(rule).map_or(0, |r| r.loc.line)
}

fn ssh_admits(policy: &Policy, v: &SshVerdict) -> Option<String> {
    match v {
        SshVerdict::Accept { rule, local } => Some(format!(
            "ssh[{rule}] (line {}) accepts it as local user \"{local}\"",
            ssh_line(policy, *rule)
        )),
        SshVerdict::Check { rule, local } => Some(format!(
            "ssh[{rule}] (line {}) admits it after a check as local user \"{local}\"",
            ssh_line(policy, *rule)
        )),
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

/// The identity probe of a test endpoint, and its current devices (one
/// probe per address, grouped by device).
fn probes(tailnet: &Tailnet, sel: &Item<Selector>) -> (Probe, Vec<Vec<Probe>>) {
    let devices = |nodes: &[usize]| -> Vec<Vec<Probe>> {
        nodes
            .iter()
            .map(|&i| {
                let addrs: Vec<_> = tailnet
                    .nodes()
                    .get(i)
                    .map(|n| n.addresses().collect())
                    .unwrap_or_default();
                addrs
                    .into_iter()
                    .filter_map(|a| Probe::node(tailnet, i, Some(a)))
                    .collect()
            })
            .collect()
    };
    match &sel.value {
        Selector::User(u) => (Probe::user(u), devices(tailnet.user_nodes(u))),
        Selector::Tag(t) => (Probe::tag(t), devices(tailnet.tag_nodes(t))),
        Selector::Host(_, net) | Selector::Prefix(net) => {
            (Probe::address(tailnet, net.addr()), Vec::new())
        }
        // Rejected by the parser for tests; an identity-less probe matches only `*`.
        _ => (
            Probe {
                user: None,
                tags: Vec::new(),
                addr: None,
                label: sel.text.clone(),
            },
            Vec::new(),
        ),
    }
}

/// Every (src, dst) combination a deny test must refuse: identities and
/// devices, skipping device pairs of different address families.
fn pairs<'p>(
    src_id: &'p Probe,
    src_devs: &'p [Vec<Probe>],
    dst_id: &'p Probe,
    dst_devs: &'p [Vec<Probe>],
) -> Vec<(&'p Probe, &'p Probe)> {
    let srcs: Vec<&Probe> = std::iter::once(src_id)
        .chain(src_devs.iter().flatten())
        .collect();
    let dsts: Vec<&Probe> = std::iter::once(dst_id)
        .chain(dst_devs.iter().flatten())
        .collect();
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
