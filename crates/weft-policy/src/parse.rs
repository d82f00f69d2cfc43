//! From a HuJSON value tree to a validated [`Policy`].
//!
//! Sections are read independently (names of groups, tags and hosts are
//! collected first, so references work in any key order); each section stops
//! at its first problem, and the earliest problem in the file is reported.

use std::collections::BTreeMap;

use ipnet::IpNet;
use weft_types::filter::{CheckPeriod, PortRange, SshRecorder, proto};

use crate::error::{ErrorKind, PolicyError};
use crate::hujson::{self, Key, Kind, Span, Value};
use crate::policy::{
    AclRule, AclTest, Autogroup, DstEntry, Item, Loc, Policy, Selector, SshRuleAction, SshRuleSpec,
    SshTest, TagOwner, TestDst,
};
use crate::syntax::{self, Names, Place};

/// A problem at a byte offset, before it gets a line and column.
#[derive(Debug)]
pub(crate) struct Fail {
    pub offset: usize,
    pub path: String,
    pub kind: ErrorKind,
}

pub(crate) type R<T> = Result<T, Fail>;

pub(crate) fn fail(span: Span, path: &str, kind: ErrorKind) -> Fail {
    Fail {
        offset: span.start,
        path: path.to_string(),
        kind,
    }
}

/// Maps byte offsets to lines and columns.
pub(crate) struct Lines<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> Lines<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Lines { text, starts }
    }

    pub(crate) fn line_col(&self, offset: usize) -> (u32, u32) {
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts.get(line - 1).copied().unwrap_or(0);
        let col = self
            .text
            .get(start..offset.min(self.text.len()))
            .map_or(1, |s| s.chars().count() + 1);
        (
            u32::try_from(line).unwrap_or(u32::MAX),
            u32::try_from(col).unwrap_or(u32::MAX),
        )
    }

    pub(crate) fn loc(&self, span: Span) -> Loc {
        let (line, column) = self.line_col(span.start);
        Loc {
            line,
            column,
            start: span.start,
            end: span.end,
        }
    }

    pub(crate) fn error(&self, source_name: &str, f: Fail) -> PolicyError {
        let (line, column) = self.line_col(f.offset);
        PolicyError {
            source_name: source_name.to_string(),
            line,
            column,
            path: f.path,
            kind: f.kind,
        }
    }
}

pub(crate) fn as_object<'v>(v: &'v Value, path: &str) -> R<&'v [(Key, Value)]> {
    match &v.kind {
        Kind::Object(m) => Ok(m),
        k => Err(fail(
            v.span,
            path,
            ErrorKind::WrongType {
                expected: "an object",
                found: k.describe(),
            },
        )),
    }
}

pub(crate) fn as_array<'v>(v: &'v Value, path: &str) -> R<&'v [Value]> {
    match &v.kind {
        Kind::Array(a) => Ok(a),
        k => Err(fail(
            v.span,
            path,
            ErrorKind::WrongType {
                expected: "an array",
                found: k.describe(),
            },
        )),
    }
}

pub(crate) fn as_str<'v>(v: &'v Value, path: &str) -> R<&'v str> {
    match &v.kind {
        Kind::String(s) => Ok(s),
        k => Err(fail(
            v.span,
            path,
            ErrorKind::WrongType {
                expected: "a string",
                found: k.describe(),
            },
        )),
    }
}

/// Returns the members of `obj`, failing on keys outside `allowed`.
pub(crate) fn fields<'v>(
    obj: &'v [(Key, Value)],
    path: &str,
    allowed: &[&'static str],
    unsupported: &[(&str, &'static str)],
) -> R<Vec<(&'v str, &'v Value)>> {
    let mut out = Vec::with_capacity(obj.len());
    for (k, v) in obj {
        if allowed.contains(&k.name.as_str()) {
            out.push((k.name.as_str(), v));
        } else if let Some((_, hint)) = unsupported.iter().find(|(name, _)| *name == k.name) {
            return Err(fail(
                k.span,
                path,
                ErrorKind::Unsupported {
                    field: k.name.clone(),
                    hint,
                },
            ));
        } else {
            return Err(fail(
                k.span,
                path,
                ErrorKind::UnknownField {
                    field: k.name.clone(),
                    expected: allowed.to_vec(),
                },
            ));
        }
    }
    Ok(out)
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

const TOP_LEVEL: &[&str] = &[
    "groups",
    "tagOwners",
    "hosts",
    "acls",
    "ssh",
    "tests",
    "sshTests",
];
const TOP_LEVEL_UNSUPPORTED: &[(&str, &str)] = &[
    (
        "grants",
        "write the rules as \"acls\" (grants are not implemented yet)",
    ),
    (
        "ipsets",
        "list the addresses or CIDRs in the rules or as \"hosts\"",
    ),
    ("postures", "device posture checks are not implemented"),
    (
        "defaultSrcPosture",
        "device posture checks are not implemented",
    ),
    (
        "autoApprovers",
        "approve routes and exit nodes with weft-control",
    ),
    ("nodeAttrs", "node attributes are not implemented"),
    (
        "derpMap",
        "relays are configured on the control server, not in the policy",
    ),
    (
        "disableIPv4",
        "every node always gets an IPv4 and an IPv6 address",
    ),
    (
        "randomizeClientPort",
        "set the UDP port on each node with `weft set --port`",
    ),
    ("OneCGNATRoute", "routes are not configured in the policy"),
];

pub(crate) fn parse_policy(source_name: &str, text: &str) -> Result<Policy, PolicyError> {
    let lines = Lines::new(text);
    let root = hujson::parse(text).map_err(|e| {
        lines.error(
            source_name,
            Fail {
                offset: e.offset,
                path: String::new(),
                kind: ErrorKind::Syntax(e.message),
            },
        )
    })?;
    parse_root(text, &lines, &root)
        .map_err(|f| lines.error(source_name, f))
        .map(|mut p| {
            p.source_name = source_name.to_string();
            p
        })
}

fn parse_root(text: &str, lines: &Lines<'_>, root: &Value) -> R<Policy> {
    let obj = as_object(root, "").map_err(|f| Fail {
        kind: ErrorKind::Invalid(format!(
            "the policy must be a JSON object {{…}}; {}",
            f.kind
        )),
        ..f
    })?;
    let top = fields(obj, "", TOP_LEVEL, TOP_LEVEL_UNSUPPORTED)?;
    let section = |name: &str| top.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    let mut errors: Vec<Fail> = Vec::new();

    // Names first, so sections may refer to each other in any order. A name
    // whose definition is broken still counts as defined: its own error is
    // the one to report.
    let mut groups = BTreeMap::new();
    let mut group_names = BTreeMap::new();
    if let Some(v) = section("groups") {
        match as_object(v, "groups") {
            Ok(m) => {
                for (k, _) in m {
                    group_names.insert(k.name.clone(), Vec::new());
                }
                match parse_groups(m) {
                    Ok(g) => groups = g,
                    Err(f) => errors.push(f),
                }
            }
            Err(f) => errors.push(f),
        }
    }
    let mut tag_names: Vec<String> = Vec::new();
    if let Some(Kind::Object(m)) = section("tagOwners").map(|v| &v.kind) {
        tag_names = m.iter().map(|(k, _)| k.name.clone()).collect();
        tag_names.sort();
    }
    let mut hosts = BTreeMap::new();
    let mut host_names = BTreeMap::new();
    if let Some(v) = section("hosts") {
        match parse_hosts(v, &mut host_names) {
            Ok(h) => hosts = h,
            Err(f) => errors.push(f),
        }
    }
    let names = Names {
        groups: &group_names,
        tags: &tag_names,
        hosts: &host_names,
    };

    let mut tag_owners = BTreeMap::new();
    if let Some(v) = section("tagOwners") {
        match parse_tag_owners(v, &names) {
            Ok(t) => tag_owners = t,
            Err(f) => errors.push(f),
        }
    }
    let mut acls = Vec::new();
    if let Some(v) = section("acls") {
        match list(v, "acls", |item, path| parse_acl(item, path, &names, lines)) {
            Ok(a) => acls = a,
            Err(f) => errors.push(f),
        }
    }
    let mut ssh = Vec::new();
    if let Some(v) = section("ssh") {
        match list(v, "ssh", |item, path| parse_ssh(item, path, &names, lines)) {
            Ok(s) => ssh = s,
            Err(f) => errors.push(f),
        }
    }
    let mut tests = Vec::new();
    if let Some(v) = section("tests") {
        match list(v, "tests", |item, path| {
            parse_test(item, path, &names, lines)
        }) {
            Ok(t) => tests = t,
            Err(f) => errors.push(f),
        }
    }
    let mut ssh_tests = Vec::new();
    if let Some(v) = section("sshTests") {
        match list(v, "sshTests", |item, path| {
            parse_ssh_test(item, path, &names, lines)
        }) {
            Ok(t) => ssh_tests = t,
            Err(f) => errors.push(f),
        }
    }
    if let Some(first) = errors.into_iter().min_by_key(|f| f.offset) {
        return Err(first);
    }
    Ok(Policy {
        text: text.to_string(),
        source_name: String::new(),
        groups,
        tag_owners,
        hosts,
        acls,
        ssh,
        tests,
        ssh_tests,
    })
}

fn list<T>(v: &Value, path: &str, mut each: impl FnMut(&Value, &str) -> R<T>) -> R<Vec<T>> {
    as_array(v, path)?
        .iter()
        .enumerate()
        .map(|(i, item)| each(item, &format!("{path}[{i}]")))
        .collect()
}

fn parse_groups(m: &[(Key, Value)]) -> R<BTreeMap<String, Vec<String>>> {
    let mut out = BTreeMap::new();
    for (k, v) in m {
        let path = format!("groups[{}]", hujson::quote(&k.name));
        syntax::group_name(&k.name).map_err(|e| fail(k.span, "groups", e))?;
        let mut members = Vec::new();
        for (i, mv) in as_array(v, &path)?.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let s = as_str(mv, &p)?;
            if s.starts_with("group:") {
                return Err(fail(mv.span, &p, ErrorKind::NestedGroup(s.to_string())));
            }
            if s.starts_with("tag:") || s.starts_with("autogroup:") || s == "*" {
                return Err(fail(
                    mv.span,
                    &p,
                    ErrorKind::NotAllowedHere {
                        name: s.to_string(),
                        reason: "groups list user logins only",
                    },
                ));
            }
            syntax::user_login(s).map_err(|e| fail(mv.span, &p, e))?;
            members.push(s.to_string());
        }
        out.insert(k.name.clone(), members);
    }
    Ok(out)
}

fn parse_hosts(v: &Value, names: &mut BTreeMap<String, IpNet>) -> R<BTreeMap<String, IpNet>> {
    let m = as_object(v, "hosts")?;
    let placeholder = IpNet::from(std::net::IpAddr::from([0u8, 0, 0, 0]));
    for (k, _) in m {
        names.insert(k.name.clone(), placeholder);
    }
    let mut out = BTreeMap::new();
    for (k, hv) in m {
        let path = format!("hosts[{}]", hujson::quote(&k.name));
        syntax::host_name(&k.name).map_err(|e| fail(k.span, "hosts", e))?;
        let net = syntax::address(as_str(hv, &path)?).map_err(|e| fail(hv.span, &path, e))?;
        names.insert(k.name.clone(), net);
        out.insert(k.name.clone(), net);
    }
    Ok(out)
}

fn parse_tag_owners(v: &Value, names: &Names<'_>) -> R<BTreeMap<String, Vec<TagOwner>>> {
    let mut out = BTreeMap::new();
    for (k, ov) in as_object(v, "tagOwners")? {
        let path = format!("tagOwners[{}]", hujson::quote(&k.name));
        syntax::tag_name(&k.name).map_err(|e| fail(k.span, "tagOwners", e))?;
        let mut owners = Vec::new();
        for (i, item) in as_array(ov, &path)?.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let s = as_str(item, &p)?;
            let owner = match s {
                "autogroup:admin" => TagOwner::Admins,
                "autogroup:member" => TagOwner::Members,
                _ if s.starts_with("autogroup:") => {
                    return Err(fail(
                        item.span,
                        &p,
                        ErrorKind::UnknownAutogroup {
                            name: s.to_string(),
                            known: vec!["autogroup:admin", "autogroup:member"],
                        },
                    ));
                }
                _ => match syntax::selector(s, Place::AclSrc, names)
                    .map_err(|e| fail(item.span, &p, e))?
                {
                    Selector::User(u) => TagOwner::User(u),
                    Selector::Group(g) => TagOwner::Group(g),
                    Selector::Tag(t) => TagOwner::Tag(t),
                    _ => {
                        return Err(fail(
                            item.span,
                            &p,
                            ErrorKind::NotAllowedHere {
                                name: s.to_string(),
                                reason: "tag owners are users, groups, tags, autogroup:admin or autogroup:member",
                            },
                        ));
                    }
                },
            };
            owners.push(owner);
        }
        out.insert(k.name.clone(), owners);
    }
    Ok(out)
}

fn strings<'v>(
    v: &'v Value,
    path: &str,
    what: &'static str,
) -> R<Vec<(&'v str, &'v Value, String)>> {
    let items = as_array(v, path)?;
    if items.is_empty() {
        return Err(fail(v.span, path, ErrorKind::Empty(what)));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let p = format!("{path}[{i}]");
            Ok((as_str(item, &p)?, item, p))
        })
        .collect()
}

fn item<T>(value: T, text: &str, v: &Value, lines: &Lines<'_>) -> Item<T> {
    Item {
        value,
        text: text.to_string(),
        loc: lines.loc(v.span),
    }
}

fn selectors(
    v: &Value,
    path: &str,
    what: &'static str,
    place: Place,
    names: &Names<'_>,
    lines: &Lines<'_>,
) -> R<Vec<Item<Selector>>> {
    strings(v, path, what)?
        .into_iter()
        .map(|(s, sv, p)| {
            let sel = syntax::selector(s, place, names).map_err(|e| {
                // "tag:web:22" in an ssh dst: say that ports do not belong here.
                if place == Place::SshDst && syntax::split_dst(s).is_ok_and(|(_, ports)| syntax::ports(ports).is_ok()) {
                    fail(sv.span, &p, ErrorKind::NotAllowedHere {
                        name: s.to_string(),
                        reason: "ssh dst names devices without a port (Weft SSH listens on port 22)",
                    })
                } else {
                    fail(sv.span, &p, e)
                }
            })?;
            Ok(item(sel, s, sv, lines))
        })
        .collect()
}

fn action(v: &Value, path: &str, allowed: &'static [&'static str]) -> R<String> {
    let s = as_str(v, path)?;
    if allowed.contains(&s) {
        Ok(s.to_string())
    } else {
        Err(fail(
            v.span,
            path,
            ErrorKind::BadAction {
                found: s.to_string(),
                allowed,
            },
        ))
    }
}

fn require<T>(v: Option<T>, span: Span, path: &str, field: &'static str) -> R<T> {
    v.ok_or_else(|| fail(span, path, ErrorKind::MissingField(field)))
}

fn parse_acl(v: &Value, path: &str, names: &Names<'_>, lines: &Lines<'_>) -> R<AclRule> {
    let obj = as_object(v, path)?;
    let members = fields(
        obj,
        path,
        &["action", "src", "dst", "proto", "users", "ports"],
        &[],
    )?;
    let (mut act, mut src, mut dst, mut protos) = (None, None, None, Vec::new());
    let (mut proto_value, mut src_key) = (None, "src");
    for (k, fv) in members {
        let p = join(path, k);
        match k {
            "action" => act = Some(action(fv, &p, &["accept"])?),
            "src" | "users" => {
                if src.is_some() {
                    return Err(fail(
                        fv.span,
                        &p,
                        ErrorKind::Invalid(
                            "give either \"src\" or the legacy \"users\", not both".into(),
                        ),
                    ));
                }
                src = Some(selectors(fv, &p, "src", Place::AclSrc, names, lines)?);
                src_key = k;
            }
            "dst" | "ports" => {
                if dst.is_some() {
                    return Err(fail(
                        fv.span,
                        &p,
                        ErrorKind::Invalid(
                            "give either \"dst\" or the legacy \"ports\", not both".into(),
                        ),
                    ));
                }
                dst = Some(dst_entries(fv, &p, names, lines)?);
            }
            "proto" => {
                protos = syntax::protos(as_str(fv, &p)?).map_err(|e| fail(fv.span, &p, e))?;
                proto_value = Some(as_str(fv, &p)?.to_string());
            }
            _ => {}
        }
    }
    require(act, v.span, path, "action")?;
    let src = require(src, v.span, path, "src")?;
    let dst = require(dst, v.span, path, "dst")?;
    if dst
        .iter()
        .any(|d| d.value.target == Selector::Autogroup(Autogroup::SelfDevices))
    {
        self_sources(&src, &join(path, src_key), Place::AclSrc)?;
    }
    if let Some(name) =
        proto_value.filter(|_| !protos.is_empty() && !protos.iter().any(|p| proto::has_ports(*p)))
    {
        for (j, d) in dst.iter().enumerate() {
            if d.value.ports.iter().any(|r| !r.is_all()) {
                let (_, ports) = syntax::split_dst(&d.text).unwrap_or(("", ""));
                return Err(Fail {
                    offset: d.loc.start,
                    path: format!("{path}.dst[{j}]"),
                    kind: ErrorKind::BadPort {
                        text: ports.to_string(),
                        reason: format!("proto \"{name}\" has no ports; use \":*\""),
                    },
                });
            }
        }
    }
    Ok(AclRule {
        loc: lines.loc(v.span),
        src,
        dst,
        protos,
    })
}

fn dst_entries(
    v: &Value,
    path: &str,
    names: &Names<'_>,
    lines: &Lines<'_>,
) -> R<Vec<Item<DstEntry>>> {
    strings(v, path, "dst")?
        .into_iter()
        .map(|(s, sv, p)| {
            let missing_port = || {
                syntax::selector(s, Place::AclDst, names).is_ok().then(|| {
                    fail(sv.span, &p, ErrorKind::BadPort {
                        text: s.to_string(),
                        reason: format!("a destination needs ports: write \"{s}:*\" for all ports or \"{s}:22\" for one"),
                    })
                })
            };
            let (alias, ports) = syntax::split_dst(s).map_err(|e| missing_port().unwrap_or_else(|| fail(sv.span, &p, e)))?;
            let target = syntax::selector(alias, Place::AclDst, names)
                .map_err(|e| missing_port().unwrap_or_else(|| fail(sv.span, &p, e)))?;
            let ports = syntax::ports(ports).map_err(|e| fail(sv.span, &p, e))?;
            Ok(item(DstEntry { target, ports }, s, sv, lines))
        })
        .collect()
}

fn parse_ssh(v: &Value, path: &str, names: &Names<'_>, lines: &Lines<'_>) -> R<SshRuleSpec> {
    let obj = as_object(v, path)?;
    let members = fields(
        obj,
        path,
        &["action", "src", "dst", "users", "checkPeriod", "recorder"],
        &[
            (
                "acceptEnv",
                "sessions get a fixed environment; remove acceptEnv",
            ),
            (
                "enforceRecorder",
                "write \"recorder\": {\"enforce\": true} instead",
            ),
        ],
    )?;
    let (mut act, mut src, mut dst, mut users, mut period) = (None, None, None, None, None);
    let mut recorder = None;
    for (k, fv) in members {
        let p = join(path, k);
        match k {
            "action" => act = Some((action(fv, &p, &["accept", "check"])?, fv.span)),
            "src" => src = Some(selectors(fv, &p, "src", Place::SshSrc, names, lines)?),
            "dst" => dst = Some(selectors(fv, &p, "dst", Place::SshDst, names, lines)?),
            "users" => {
                let list = strings(fv, &p, "users")?
                    .into_iter()
                    .map(|(s, uv, up)| {
                        Ok(item(
                            syntax::ssh_user(s).map_err(|e| fail(uv.span, &up, e))?,
                            s,
                            uv,
                            lines,
                        ))
                    })
                    .collect::<R<Vec<_>>>()?;
                users = Some(list);
            }
            "recorder" => recorder = Some(parse_recorder(fv, &p)?),
            "checkPeriod" => {
                let s = as_str(fv, &p)?;
                period = Some((
                    syntax::check_period(s).map_err(|e| fail(fv.span, &p, e))?,
                    fv.span,
                    p,
                ));
            }
            _ => {}
        }
    }
    let (act, _) = require(act, v.span, path, "action")?;
    let action = match (act.as_str(), period) {
        ("check", period) => {
            SshRuleAction::Check(period.map_or(CheckPeriod::DEFAULT, |(p, _, _)| p))
        }
        (_, Some((_, span, p))) => {
            return Err(fail(
                span,
                &p,
                ErrorKind::Invalid(
                    "checkPeriod applies only to rules with \"action\": \"check\"".into(),
                ),
            ));
        }
        _ => SshRuleAction::Accept,
    };
    let src = require(src, v.span, path, "src")?;
    let dst = require(dst, v.span, path, "dst")?;
    let users = require(users, v.span, path, "users")?;
    if dst
        .iter()
        .any(|d| d.value == Selector::Autogroup(Autogroup::SelfDevices))
    {
        self_sources(&src, &join(path, "src"), Place::SshSrc)?;
    }
    Ok(SshRuleSpec {
        loc: lines.loc(v.span),
        action,
        src,
        dst,
        users,
        recorder,
    })
}

/// Parses an `ssh` rule's `recorder`: `{"input": bool, "enforce": bool}`,
/// both optional (input off, enforce on). Tailscale's list of recorder
/// nodes is refused with a hint: Weft records on the destination itself.
fn parse_recorder(v: &Value, path: &str) -> R<SshRecorder> {
    if matches!(v.kind, Kind::Array(_)) {
        return Err(fail(
            v.span,
            path,
            ErrorKind::Invalid(
                "recorder is an object such as {\"input\": false, \"enforce\": true}: the \
                 destination node records its sessions itself, there are no recorder nodes"
                    .into(),
            ),
        ));
    }
    let obj = as_object(v, path)?;
    let mut rec = SshRecorder {
        input: false,
        enforce: true,
    };
    for (k, fv) in fields(obj, path, &["input", "enforce"], &[])? {
        let p = join(path, k);
        let Kind::Bool(b) = fv.kind else {
            return Err(fail(
                fv.span,
                &p,
                ErrorKind::WrongType {
                    expected: "a boolean",
                    found: fv.kind.describe(),
                },
            ));
        };
        match k {
            "input" => rec.input = b,
            _ => rec.enforce = b,
        }
    }
    Ok(rec)
}

/// Refuses the first source that cannot go with an `autogroup:self`
/// destination (see [`syntax::self_source`]), at that source's position.
fn self_sources(src: &[Item<Selector>], path: &str, place: Place) -> R<()> {
    for (i, s) in src.iter().enumerate() {
        syntax::self_source(&s.value, &s.text, place).map_err(|kind| Fail {
            offset: s.loc.start,
            path: format!("{path}[{i}]"),
            kind,
        })?;
    }
    Ok(())
}

fn endpoint(v: &Value, path: &str, names: &Names<'_>, lines: &Lines<'_>) -> R<Item<Selector>> {
    let s = as_str(v, path)?;
    let sel = syntax::selector(s, Place::TestEndpoint, names).map_err(|e| fail(v.span, path, e))?;
    Ok(item(sel, s, v, lines))
}

fn parse_test(v: &Value, path: &str, names: &Names<'_>, lines: &Lines<'_>) -> R<AclTest> {
    let obj = as_object(v, path)?;
    let members = fields(obj, path, &["src", "proto", "accept", "deny"], &[])?;
    let (mut src, mut proto_num, mut accept, mut deny) = (None, proto::TCP, Vec::new(), Vec::new());
    let mut lists: Vec<(&Value, String, bool)> = Vec::new();
    for (k, fv) in members {
        let p = join(path, k);
        match k {
            "src" => src = Some(endpoint(fv, &p, names, lines)?),
            "proto" => {
                let list = syntax::protos(as_str(fv, &p)?).map_err(|e| fail(fv.span, &p, e))?;
                proto_num = list.first().copied().unwrap_or(proto::TCP);
            }
            "accept" => lists.push((fv, p, true)),
            "deny" => lists.push((fv, p, false)),
            _ => {}
        }
    }
    let src = require(src, v.span, path, "src")?;
    for (fv, p, is_accept) in lists {
        for (i, tv) in as_array(fv, &p)?.iter().enumerate() {
            let tp = format!("{p}[{i}]");
            let s = as_str(tv, &tp)?;
            let (alias, port) = syntax::split_dst(s).map_err(|e| fail(tv.span, &tp, e))?;
            let target = syntax::selector(alias, Place::TestEndpoint, names)
                .map_err(|e| fail(tv.span, &tp, e))?;
            let port = match syntax::ports(port)
                .map_err(|e| fail(tv.span, &tp, e))?
                .as_slice()
            {
                [r] if r.first == r.last => r.first,
                [r] if *r == PortRange::ALL && !proto::has_ports(proto_num) => 0,
                _ => {
                    return Err(fail(
                        tv.span,
                        &tp,
                        ErrorKind::BadPort {
                            text: port.to_string(),
                            reason: "a test tries exactly one port, e.g. \"tag:web:443\""
                                .to_string(),
                        },
                    ));
                }
            };
            let entry = item(TestDst { target, port }, s, tv, lines);
            if is_accept {
                accept.push(entry)
            } else {
                deny.push(entry)
            }
        }
    }
    Ok(AclTest {
        loc: lines.loc(v.span),
        src,
        proto: proto_num,
        accept,
        deny,
    })
}

fn parse_ssh_test(v: &Value, path: &str, names: &Names<'_>, lines: &Lines<'_>) -> R<SshTest> {
    let obj = as_object(v, path)?;
    let members = fields(obj, path, &["src", "dst", "accept", "check", "deny"], &[])?;
    let mut t = SshTest {
        loc: lines.loc(v.span),
        src: Item {
            value: Selector::Any,
            text: String::new(),
            loc: Loc::default(),
        },
        dst: Vec::new(),
        accept: Vec::new(),
        check: Vec::new(),
        deny: Vec::new(),
    };
    let (mut has_src, mut has_dst) = (false, false);
    for (k, fv) in members {
        let p = join(path, k);
        match k {
            "src" => {
                t.src = endpoint(fv, &p, names, lines)?;
                has_src = true;
            }
            "dst" => {
                let items = as_array(fv, &p)?;
                if items.is_empty() {
                    return Err(fail(fv.span, &p, ErrorKind::Empty("dst")));
                }
                for (i, dv) in items.iter().enumerate() {
                    t.dst
                        .push(endpoint(dv, &format!("{p}[{i}]"), names, lines)?);
                }
                has_dst = true;
            }
            "accept" | "check" | "deny" => {
                let mut out = Vec::new();
                for (i, uv) in as_array(fv, &p)?.iter().enumerate() {
                    let up = format!("{p}[{i}]");
                    let s = as_str(uv, &up)?;
                    syntax::local_user_name(s).map_err(|e| fail(uv.span, &up, e))?;
                    out.push(item(s.to_string(), s, uv, lines));
                }
                match k {
                    "accept" => t.accept = out,
                    "check" => t.check = out,
                    _ => t.deny = out,
                }
            }
            _ => {}
        }
    }
    require(has_src.then_some(()), v.span, path, "src")?;
    require(has_dst.then_some(()), v.span, path, "dst")?;
    Ok(t)
}
