//! `policy explain`: why one flow is allowed or denied, and what to change.
//!
//! The answer names the deciding rule (index, file line and the rule as
//! written), says which `src` selector matched which identity or address and
//! which `dst` entry and port matched, and lists other rules that also allow
//! it. A denial lists the *near misses*: rules that fail on one or two
//! counts (the source matched but not the port, the destination matched but
//! not the source, …) with the edit that would make them match.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;
use weft_types::filter::proto;

use crate::eval::{self, Probe};
use crate::policy::{AclRule, Policy};
use crate::syntax::proto_name;
use crate::tailnet::{Endpoint, Tailnet};

/// How many near misses an explanation lists at most.
const MAX_NEAR_MISSES: usize = 5;

/// The verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Some rule allows the flow.
    Allowed,
    /// No rule allows it (deny by default).
    Denied,
}

/// One side of the flow, as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Party {
    /// For people, e.g. `laptop (alice@example.com, 100.64.0.7)`.
    pub description: String,
    /// The address evaluated, if the side is a device or an address.
    pub address: Option<IpAddr>,
}

/// One criterion of a rule, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `src`, `dst`, `port` or `proto`.
    pub what: &'static str,
    /// Whether it holds.
    pub ok: bool,
    /// The selector or entry concerned, as written.
    pub selector: Option<String>,
    /// Why it holds or not.
    pub detail: String,
}

/// A rule and how the flow fares against it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleReport {
    /// Index in `acls`.
    pub index: usize,
    /// Line of the rule in the policy file.
    pub line: u32,
    /// Column of the rule.
    pub column: u32,
    /// The rule as written, on one line.
    pub rule: String,
    /// src, dst, port and proto, in that order.
    pub checks: Vec<Check>,
    /// For near misses: the edit that would make the rule allow the flow.
    pub fix: Option<String>,
}

impl RuleReport {
    fn failures(&self) -> usize {
        self.checks.iter().filter(|c| !c.ok).count()
    }
}

/// A reference to a rule by index and line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RuleLink {
    /// Index in `acls`.
    pub index: usize,
    /// Line in the policy file.
    pub line: u32,
}

/// The full answer of `policy explain`. `Display` renders it for a terminal;
/// `serde` gives the `--json` form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// Allowed or denied.
    pub verdict: Verdict,
    /// The source.
    pub src: Party,
    /// The destination.
    pub dst: Party,
    /// Protocol name (`tcp`, `udp`, `icmp`, …).
    pub proto: String,
    /// Protocol number tried.
    pub proto_number: u8,
    /// Destination port (`None` for protocols without ports).
    pub port: Option<u16>,
    /// The first rule that allows the flow.
    pub decided_by: Option<RuleReport>,
    /// Further rules that allow it too.
    pub also_allowed_by: Vec<RuleLink>,
    /// For denials: the closest rules and what to change.
    pub near_misses: Vec<RuleReport>,
    /// Remarks on how the question was interpreted.
    pub notes: Vec<String>,
    /// The policy file name, for `file:line` references.
    pub source_name: String,
}

/// A question `explain` cannot answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ExplainError(pub String);

/// Explains the flow from `src` to `dst` with protocol number `proto_num`
/// (use [`proto::ICMP`] for ICMP of either family) and destination `port`.
///
/// A node endpoint without a specific address is evaluated on the address
/// family both sides share (IPv4 first). A user or tag endpoint is evaluated
/// as that identity: rules that match by address do not apply to it.
///
/// # Errors
/// The two sides share no address family, or a node id is unknown.
pub fn explain(
    policy: &Policy,
    tailnet: &Tailnet,
    src: &Endpoint,
    dst: &Endpoint,
    port: u16,
    proto_num: u8,
) -> Result<Explanation, ExplainError> {
    let (s, d) = eval::probe_pair(tailnet, src, dst).map_err(ExplainError)?;
    let mut e = explain_probes(policy, tailnet, &s, &d, proto_num, port);
    e.src.description = tailnet.describe(&endpoint_with_addr(src, s.addr));
    e.dst.description = tailnet.describe(&endpoint_with_addr(dst, d.addr));
    for (side, entries, ep) in [("source", "src", src), ("destination", "dst", dst)] {
        if let Endpoint::User(_) | Endpoint::Tag(_) = ep {
            e.notes.push(format!(
                "the {side} is evaluated as an identity: {entries} entries that match by address (hosts, IPs, CIDRs) do not apply to it — name a device to include them"
            ));
        }
    }
    Ok(e)
}

/// Parses `--src`, `--dst` (`TARGET:PORT`) and `--proto` (default `tcp`)
/// strings against `tailnet` and explains the flow, as
/// `weft-control policy explain` does.
///
/// # Errors
/// A string names nothing in the tailnet, the port is missing for a
/// protocol with ports, or the protocol is unknown.
pub fn explain_query(
    policy: &Policy,
    tailnet: &Tailnet,
    src: &str,
    dst: &str,
    proto_text: Option<&str>,
) -> Result<Explanation, ExplainError> {
    let proto_num = match proto_text {
        None => proto::TCP,
        Some(p) => crate::syntax::protos(p)
            .map_err(|e| ExplainError(e.to_string()))?
            .first()
            .copied()
            .unwrap_or(proto::TCP),
    };
    let src_ep = tailnet
        .resolve(src)
        .map_err(|e| ExplainError(format!("--src: {e}")))?;
    let (dst_ep, port) = tailnet
        .resolve_with_port(dst)
        .map_err(|e| ExplainError(format!("--dst: {e}")))?;
    let port = match port {
        Some(p) => p,
        None if !proto::has_ports(proto_num) => 0,
        None => {
            return Err(ExplainError(format!(
                "--dst: give a port for {}, e.g. \"{dst}:22\"",
                proto_name(proto_num)
            )));
        }
    };
    explain(policy, tailnet, &src_ep, &dst_ep, port, proto_num)
}

fn endpoint_with_addr(e: &Endpoint, addr: Option<IpAddr>) -> Endpoint {
    match e {
        Endpoint::Node { id, .. } => Endpoint::Node { id: *id, addr },
        other => other.clone(),
    }
}

/// Explains a flow between two probes.
pub(crate) fn explain_probes(
    policy: &Policy,
    tailnet: &Tailnet,
    src: &Probe,
    dst: &Probe,
    proto_num: u8,
    port: u16,
) -> Explanation {
    let proto_num = eval::effective_proto(proto_num, src, dst);
    let reports: Vec<RuleReport> = policy
        .acls
        .iter()
        .enumerate()
        .map(|(i, r)| analyze(policy, tailnet, i, r, src, dst, proto_num, port))
        .collect();
    let mut allowing = reports.iter().filter(|r| r.failures() == 0);
    let decided_by = allowing.next().cloned();
    let also_allowed_by = allowing
        .map(|r| RuleLink {
            index: r.index,
            line: r.line,
        })
        .collect();
    let near_misses = if decided_by.is_some() {
        Vec::new()
    } else {
        let mut misses: Vec<RuleReport> = reports
            .into_iter()
            .filter(|r| {
                let src_ok = r.checks.first().is_some_and(|c| c.ok);
                let dst_ok = r.checks.get(1).is_some_and(|c| c.ok);
                r.failures() == 1 || (r.failures() == 2 && (src_ok || dst_ok))
            })
            .collect();
        misses.sort_by_key(|r| (r.failures(), r.index));
        misses.truncate(MAX_NEAR_MISSES);
        misses
    };
    let party = |p: &Probe| Party {
        description: p.label.clone(),
        address: p.addr,
    };
    Explanation {
        verdict: if decided_by.is_some() {
            Verdict::Allowed
        } else {
            Verdict::Denied
        },
        src: party(src),
        dst: party(dst),
        proto: proto_name(proto_num),
        proto_number: proto_num,
        port: proto::has_ports(proto_num).then_some(port),
        decided_by,
        also_allowed_by,
        near_misses,
        notes: Vec::new(),
        source_name: policy.source_name().to_string(),
    }
}

#[allow(clippy::too_many_arguments)]
fn analyze(
    policy: &Policy,
    tailnet: &Tailnet,
    index: usize,
    rule: &AclRule,
    src: &Probe,
    dst: &Probe,
    proto_num: u8,
    port: u16,
) -> RuleReport {
    let src_check = {
        let results: Vec<(&str, eval::Why)> = rule
            .src
            .iter()
            .map(|s| {
                (
                    s.text.as_str(),
                    eval::match_src(policy, tailnet, &s.value, src),
                )
            })
            .collect();
        match results.iter().find(|(_, w)| w.is_ok()) {
            Some((text, Ok(why))) => Check {
                what: "src",
                ok: true,
                selector: Some((*text).to_string()),
                detail: why.clone(),
            },
            _ => Check {
                what: "src",
                ok: false,
                selector: None,
                detail: why_nots(&results),
            },
        }
    };
    // Prefer an entry matching target and port, then one matching the target.
    let entries: Vec<(usize, eval::Why, bool)> = rule
        .dst
        .iter()
        .enumerate()
        .map(|(j, d)| {
            (
                j,
                eval::match_dst(policy, tailnet, &d.value.target, src, dst),
                eval::ports_admit(&d.value.ports, proto_num, port),
            )
        })
        .collect();
    let best = entries
        .iter()
        .find(|(_, w, p)| w.is_ok() && *p)
        .or_else(|| entries.iter().find(|(_, w, _)| w.is_ok()));
    let port_label = if proto::has_ports(proto_num) {
        port.to_string()
    } else {
        format!("{} (no ports)", proto_name(proto_num))
    };
    let (dst_check, port_check) = match best {
        Some((j, Ok(why), port_ok)) => {
            let text = rule.dst.get(*j).map(|d| d.text.clone()).unwrap_or_default();
            let ports = crate::syntax::split_dst(&text)
                .map(|(_, p)| p.to_string())
                .unwrap_or_default();
            let detail = if *port_ok {
                if proto::has_ports(proto_num) {
                    format!("{port} is in {ports}")
                } else {
                    format!("{port_label}: matched by any port list")
                }
            } else if proto::has_ports(proto_num) {
                format!("{port} is not in {ports}")
            } else {
                format!("{port_label} needs all ports (\":*\"), the entry has {ports}")
            };
            (
                Check {
                    what: "dst",
                    ok: true,
                    selector: Some(text.clone()),
                    detail: why.clone(),
                },
                Check {
                    what: "port",
                    ok: *port_ok,
                    selector: Some(text),
                    detail,
                },
            )
        }
        _ => {
            let results: Vec<(&str, eval::Why)> = entries
                .iter()
                .filter_map(|(j, w, _)| Some((rule.dst.get(*j)?.text.as_str(), w.clone())))
                .collect();
            let any_port = entries.iter().any(|(_, _, p)| *p);
            (
                Check {
                    what: "dst",
                    ok: false,
                    selector: None,
                    detail: why_nots(&results),
                },
                Check {
                    what: "port",
                    ok: any_port,
                    selector: None,
                    detail: if any_port {
                        format!("{port_label} is listed")
                    } else {
                        format!("{port_label} is not listed in any entry")
                    },
                },
            )
        }
    };
    let proto_ok = eval::rule_admits_proto(rule, proto_num);
    let allowed: Vec<String> = if rule.protos.is_empty() {
        vec!["tcp, udp, icmp (the default)".into()]
    } else {
        rule.protos.iter().map(|p| proto_name(*p)).collect()
    };
    let proto_check = Check {
        what: "proto",
        ok: proto_ok,
        selector: None,
        detail: format!(
            "{} {} {}",
            proto_name(proto_num),
            if proto_ok {
                "is allowed:"
            } else {
                "is not allowed:"
            },
            allowed.join(", ")
        ),
    };
    let mut report = RuleReport {
        index,
        line: rule.loc.line,
        column: rule.loc.column,
        rule: policy.snippet_one_line(&rule.loc, 110),
        checks: vec![src_check, dst_check, port_check, proto_check],
        fix: None,
    };
    report.fix = fix(&report, rule, src, dst, proto_num, port);
    report
}

fn why_nots(results: &[(&str, eval::Why)]) -> String {
    let mut parts: Vec<String> = results
        .iter()
        .filter_map(|(_, w)| w.as_ref().err().cloned())
        .take(3)
        .collect();
    if results.len() > 3 {
        parts.push(format!("and {} more", results.len() - 3));
    }
    parts.join("; ")
}

/// The smallest edit that makes a near miss allow the flow.
fn fix(
    r: &RuleReport,
    rule: &AclRule,
    src: &Probe,
    dst: &Probe,
    proto_num: u8,
    port: u16,
) -> Option<String> {
    let failed: Vec<&str> = r.checks.iter().filter(|c| !c.ok).map(|c| c.what).collect();
    let src_name = src
        .user
        .clone()
        .or_else(|| src.tags.first().cloned())
        .or_else(|| src.addr.map(|a| a.to_string()))?;
    let dst_name = dst
        .user
        .clone()
        .or_else(|| dst.tags.first().cloned())
        .or_else(|| dst.addr.map(|a| a.to_string()))?;
    let port_text = if proto::has_ports(proto_num) {
        port.to_string()
    } else {
        "*".to_string()
    };
    let entry = r.checks.get(2).and_then(|c| c.selector.clone());
    match failed.as_slice() {
        ["src"] => Some(format!("add \"{src_name}\" to src")),
        ["dst"] | ["dst", "port"] => Some(format!("add \"{dst_name}:{port_text}\" to dst")),
        ["port"] => Some(match entry {
            Some(e) => format!("add port {port_text} to \"{e}\""),
            None => format!("add \"{dst_name}:{port_text}\" to dst"),
        }),
        ["proto"] => Some(format!(
            "this rule is limited to proto {}; add a rule for {}",
            rule.protos
                .iter()
                .map(|p| proto_name(*p))
                .collect::<Vec<_>>()
                .join(", "),
            proto_name(proto_num)
        )),
        ["src", "port"] => Some(format!(
            "add \"{src_name}\" to src and port {port_text} to dst"
        )),
        _ => None,
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flow = match self.port {
            Some(p) => format!("{}/{p}", self.proto),
            None => self.proto.clone(),
        };
        let head = match self.verdict {
            Verdict::Allowed => "✓ ALLOWED",
            Verdict::Denied => "✗ DENIED",
        };
        writeln!(f, "{head}  {flow}")?;
        writeln!(f, "  from  {}", self.src.description)?;
        writeln!(f, "  to    {}", self.dst.description)?;
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        writeln!(f)?;
        if let Some(r) = &self.decided_by {
            writeln!(
                f,
                "Allowed by acls[{}] at {}:{}:{}",
                r.index, self.source_name, r.line, r.column
            )?;
            self.write_rule(f, r)?;
            if !self.also_allowed_by.is_empty() {
                let list: Vec<String> = self
                    .also_allowed_by
                    .iter()
                    .map(|l| format!("acls[{}] (line {})", l.index, l.line))
                    .collect();
                writeln!(f)?;
                writeln!(f, "Also allowed by {}.", list.join(", "))?;
            }
            return Ok(());
        }
        writeln!(
            f,
            "No rule allows this flow, so the policy denies it (deny by default)."
        )?;
        if self.near_misses.is_empty() {
            return writeln!(
                f,
                "No rule comes close: none matches the source or the destination."
            );
        }
        writeln!(f)?;
        writeln!(f, "Closest rules:")?;
        for (i, r) in self.near_misses.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            writeln!(
                f,
                "acls[{}] at {}:{}:{}",
                r.index, self.source_name, r.line, r.column
            )?;
            self.write_rule(f, r)?;
            if let Some(fix) = &r.fix {
                writeln!(f, "    → to allow: {fix}")?;
            }
        }
        Ok(())
    }
}

impl Explanation {
    fn write_rule(&self, f: &mut fmt::Formatter<'_>, r: &RuleReport) -> fmt::Result {
        writeln!(f, "    {}", r.rule)?;
        for c in &r.checks {
            let mark = if c.ok { "✓" } else { "✗" };
            match (&c.selector, c.what) {
                (Some(sel), "src" | "dst") => {
                    writeln!(f, "    {mark} {:<5} {sel}: {}", c.what, c.detail)?
                }
                _ => writeln!(f, "    {mark} {:<5} {}", c.what, c.detail)?,
            }
        }
        Ok(())
    }
}
