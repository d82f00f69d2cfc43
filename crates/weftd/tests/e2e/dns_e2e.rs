//! MagicDNS end to end: three real weftd nodes in namespaces, stock `dig` asking the resolver at
//! 100.100.100.100 (and the IPv6 service address) through each node's TUN, and dnsmasq from
//! Debian as the upstream resolver on the underlay (never the internet: each node's namespace has
//! its own resolv.conf naming only the test's dnsmasq, which weftd backs up, replaces with its own
//! and forwards to).
//!
//! Split DNS, extra records and global nameservers come from `weft-control dns set` as netmap
//! deltas, each route to its own dnsmasq.
//!
//! Needs root, `dig`, `dnsmasq` and `/dev/net/tun`; skips without them unless `WEFT_E2E=1`.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use weft_lab::tailnet::{Binaries, Control, KeyOptions, Node, NodeOptions, Tailnet, peer};
use weft_lab::{Process, e2e_lab, wait_until, with_diagnostics};

const WEFTD: &str = env!("CARGO_BIN_EXE_weftd");
const PROPAGATION: Duration = Duration::from_secs(30);
/// The upstream's test zone: every name under it is this address.
const FWD_ZONE: &str = "fwd.example";
const FWD_ADDR: &str = "198.18.77.7";

/// Alice's nodes see each other; Bob's node sees nobody and nobody sees it.
const POLICY: &str = r#"{
  "acls": [
    {"action": "accept", "src": ["alice@example.com"], "dst": ["alice@example.com:*"]},
  ],
}"#;

macro_rules! lab {
    () => {
        e2e_lab!("dig", "dnsmasq", "/dev/net/tun")
    };
}

/// Starts dnsmasq in a new underlay namespace, answering `*.fwd.example` with [`FWD_ADDR`] and
/// refusing to recurse; returns it and its address.
fn dnsmasq(net: &Tailnet<'_>, short: &str) -> anyhow::Result<(Process, IpAddr)> {
    dnsmasq_zones(net, short, &[(FWD_ZONE, FWD_ADDR)])
}

/// Starts dnsmasq in a new underlay namespace, answering every name under each `(zone, address)`
/// with that address and refusing everything else; returns it and its address.
fn dnsmasq_zones(
    net: &Tailnet<'_>,
    short: &str,
    zones: &[(&str, &str)],
) -> anyhow::Result<(Process, IpAddr)> {
    let (ns, addr) = net.attach(short)?;
    let mut args: Vec<String> = [
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--bind-interfaces",
        "--user=root",
        "--port=53",
        "--pid-file=",
        "--log-facility=-",
    ]
    .map(str::to_owned)
    .to_vec();
    args.push(format!("--listen-address={addr}"));
    for (zone, ip) in zones {
        args.push(format!("--address=/{zone}/{ip}"));
    }
    let p = ns.spawn(&format!("{short}-dnsmasq"), "dnsmasq", &args)?;
    ns.wait_tcp_listen(53, Duration::from_secs(10))?;
    Ok((p, IpAddr::V4(addr)))
}

/// Starts a node whose "host" resolv.conf (its namespace's own, `/etc/netns/<ns>/resolv.conf`)
/// is `resolv_conf`: what weftd backs up and replaces with its own when it comes up (MagicDNS's
/// direct mode), and whose nameservers its resolver forwards to — never the real host's.
fn node_with_host_resolver(
    net: &Tailnet<'_>,
    short: &str,
    resolv_conf: &str,
) -> anyhow::Result<Node> {
    let (ns, addr) = net.attach(short)?;
    ns.write_etc("resolv.conf", resolv_conf)?;
    Ok(net.node_in(ns, addr, NodeOptions::default())?)
}

/// One `dig` run: its status line's rcode, the answer section, and how long it took.
struct Dig {
    rcode: String,
    answers: Vec<String>,
    took: Duration,
    text: String,
}

fn dig(node: &Node, args: &[&str]) -> anyhow::Result<Dig> {
    let mut all = vec!["+time=5", "+tries=1", "+noall", "+comments", "+answer"];
    all.extend_from_slice(args);
    let start = weft_lab::now();
    let out = node.netns().command("dig").args(&all).run_unchecked()?;
    let took = start.elapsed();
    let text = format!("{}{}", out.stdout, out.stderr);
    let rcode = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .and_then(|r| r.split(',').next())
        .map(str::to_owned)
        .with_context(|| format!("dig {args:?} on {}: no status line:\n{text}", node.name()))?;
    let answers = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
        .collect();
    Ok(Dig {
        rcode,
        answers,
        took,
        text,
    })
}

fn dns_name(node: &Node, of: &str) -> anyhow::Result<String> {
    let st = node.status_json()?;
    let p = peer(&st, of).with_context(|| format!("{} does not list {of}: {st}", node.name()))?;
    Ok(p["dns_name"]
        .as_str()
        .context("dns_name")?
        .trim_end_matches('.')
        .to_owned())
}

fn report(control: &Control, nodes: &[&Node], extra: &[&Process]) -> String {
    let mut s = format!("=== control ===\n{}\n", control.log());
    for n in nodes {
        s.push_str(&n.report());
        s.push('\n');
    }
    for p in extra {
        s.push_str(&p.report());
        s.push('\n');
    }
    s
}

#[test]
fn dig_gets_tailnet_names_ptr_nxdomain_nodata_tcp_and_forwarded_names() -> anyhow::Result<()> {
    let lab = lab!();
    let net = Tailnet::with_binaries(&lab, Binaries::discover()?.with_weftd(WEFTD))?;
    let control = net.control("ctl")?;
    let (upstream, upstream_ip) = dnsmasq(&net, "dns1")?;
    // A resolver that never answers: an underlay address nobody has.
    let silent = net.new_underlay_addr()?;
    let good = format!("nameserver {upstream_ip}\n");
    let silent = format!("nameserver {silent}\n");
    for user in ["alice@example.com", "bob@example.com"] {
        control.create_user(user)?;
    }
    control.set_policy(POLICY)?;
    let alice_key = control.create_key("alice@example.com", &KeyOptions::reusable())?;
    let bob_key = control.create_key("bob@example.com", &KeyOptions::reusable())?;
    let n1 = node_with_host_resolver(&net, "n1", &good)?;
    n1.up_with_key(&control, &alice_key)?;
    let n2 = node_with_host_resolver(&net, "n2", &silent)?;
    n2.up_with_key(&control, &alice_key)?;
    let n3 = node_with_host_resolver(&net, "n3", &good)?;
    n3.up_with_key(&control, &bob_key)?;
    n1.wait_peers(&["n2"], PROPAGATION)?;
    n2.wait_peers(&["n1"], PROPAGATION)?;
    n3.wait_state("running", PROPAGATION)?;

    with_diagnostics(
        || {
            let n2_name = dns_name(&n1, "n2")?;
            let domain = n2_name
                .split_once('.')
                .map(|(_, d)| d.to_owned())
                .context("a node name has a domain")?;
            let st = n1.status_json()?;
            let n2_addrs: Vec<String> = peer(&st, "n2").context("n2")?["addresses"]
                .as_array()
                .context("addresses")?
                .iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect();
            let n2_v4 = n2_addrs.iter().find(|a| !a.contains(':')).context("v4")?;
            let n2_v6 = n2_addrs.iter().find(|a| a.contains(':')).context("v6")?;

            // A and AAAA for the full name, over the IPv4 service address.
            let d = dig(&n1, &["@100.100.100.100", &n2_name, "A"])?;
            ensure!(
                d.rcode == "NOERROR" && d.answers == vec![n2_v4.clone()],
                "{}",
                d.text
            );
            let d = dig(&n1, &["@100.100.100.100", &n2_name, "AAAA"])?;
            ensure!(
                d.rcode == "NOERROR" && d.answers == vec![n2_v6.clone()],
                "{}",
                d.text
            );
            // The same over the IPv6 service address.
            let d = dig(&n1, &["@fd7a:115c:a1e0::53", &n2_name, "A"])?;
            ensure!(d.answers == vec![n2_v4.clone()], "{}", d.text);
            // The short name (a single label).
            let d = dig(&n1, &["@100.100.100.100", "n2", "A"])?;
            ensure!(d.answers == vec![n2_v4.clone()], "{}", d.text);
            // The short name through the search domain, as the OS resolver does it: weftd wrote
            // the namespace's resolv.conf (`ip netns exec`, which runs everything here,
            // bind-mounts it over /etc/resolv.conf), so dig +search and getent (glibc) read
            // weftd's `search <domain>` and `nameserver 100.100.100.100`.
            let ours = std::fs::read_to_string(n1.netns().resolv_conf())?;
            ensure!(
                ours.contains("nameserver 100.100.100.100") && ours.contains(&domain),
                "weftd's resolv.conf: {ours}"
            );
            let d = dig(&n1, &["+search", "n2", "A"])?;
            ensure!(d.answers == vec![n2_v4.clone()], "{}", d.text);
            let out = n1.netns().exec("getent", ["ahostsv4", "n2"])?;
            ensure!(
                out.stdout.starts_with(n2_v4.as_str()),
                "getent: {}",
                out.stdout
            );
            // PTR, v4 and v6.
            let d = dig(&n1, &["@100.100.100.100", "-x", n2_v4])?;
            ensure!(d.answers == vec![format!("{n2_name}.")], "{}", d.text);
            let d = dig(&n1, &["@100.100.100.100", "-x", n2_v6])?;
            ensure!(d.answers == vec![format!("{n2_name}.")], "{}", d.text);
            // NXDOMAIN under the tailnet domain; NODATA for a type the node has no record of.
            let d = dig(&n1, &["@100.100.100.100", &format!("nope.{domain}"), "A"])?;
            ensure!(d.rcode == "NXDOMAIN", "{}", d.text);
            let d = dig(&n1, &["@100.100.100.100", &n2_name, "MX"])?;
            ensure!(d.rcode == "NOERROR" && d.answers.is_empty(), "{}", d.text);
            // TCP.
            let d = dig(&n1, &["+tcp", "@100.100.100.100", &n2_name, "A"])?;
            ensure!(d.answers == vec![n2_v4.clone()], "{}", d.text);
            // A node the policy hides is NXDOMAIN, both ways.
            let n3_self = n3.status_json()?;
            let n3_name = n3_self["self"]["dns_name"]
                .as_str()
                .context("n3's own dns_name")?
                .trim_end_matches('.')
                .to_owned();
            let d = dig(&n1, &["@100.100.100.100", &n3_name, "A"])?;
            ensure!(d.rcode == "NXDOMAIN", "n1 resolves hidden n3:\n{}", d.text);
            let d = dig(&n3, &["@100.100.100.100", &n2_name, "A"])?;
            ensure!(d.rcode == "NXDOMAIN", "n3 resolves hidden n2:\n{}", d.text);

            // Forwarded to the host's resolver (dnsmasq), UDP and TCP.
            let fwd = format!("www.{FWD_ZONE}");
            let d = dig(&n1, &["@100.100.100.100", &fwd, "A"])?;
            ensure!(
                d.rcode == "NOERROR" && d.answers == vec![FWD_ADDR.to_owned()],
                "{}",
                d.text
            );
            let d = dig(&n1, &["+tcp", "@100.100.100.100", &fwd, "A"])?;
            ensure!(d.answers == vec![FWD_ADDR.to_owned()], "{}", d.text);
            // `weft dns query` says where answers came from.
            let q: serde_json::Value = n1.weft(["dns", "query", &fwd, "A", "--json"]).json()?;
            ensure!(
                q["source"]["kind"] == "forwarded"
                    && q["source"]["route"] == "host"
                    && q["source"]["upstream"] == format!("{upstream_ip}:53")
                    && q["records"][0]["data"] == FWD_ADDR,
                "{q}"
            );
            let q: serde_json::Value = n1.weft(["dns", "query", &n2_name, "--json"]).json()?;
            ensure!(
                q["source"]["kind"] == "magic_dns" && q["records"][0]["data"] == n2_v4.as_str(),
                "{q}"
            );

            // A rename shows in DNS within 2 s; the old name is gone.
            let n3_id = control.node_id("n3")?;
            let id = control.node_id("n2")?;
            ensure!(n3_id != id, "node ids");
            let start = weft_lab::now();
            control
                .admin(["nodes", "rename", &id, "renamed-n2"])
                .run()?;
            let new_name = format!("renamed-n2.{domain}");
            wait_until(
                Duration::from_secs(2),
                "the new name to resolve on n1",
                || {
                    Ok(dig(&n1, &["@100.100.100.100", &new_name, "A"])?.answers
                        == vec![n2_v4.clone()])
                },
            )?;
            eprintln!("rename visible in DNS after {:?}", start.elapsed());
            let d = dig(&n1, &["@100.100.100.100", &n2_name, "A"])?;
            ensure!(
                d.rcode == "NXDOMAIN",
                "the old name still answers:\n{}",
                d.text
            );

            // n2's upstream never answers: SERVFAIL inside dig's 5 s, and local names answer
            // meanwhile.
            let n1_name = dns_name(&n2, "n1")?;
            let slow = std::thread::scope(|s| {
                let h = s.spawn(|| dig(&n2, &["@100.100.100.100", &fwd, "A"]));
                let local = dig(&n2, &["@100.100.100.100", &n1_name, "A"]);
                (h.join(), local)
            });
            let (slow, local) = slow;
            let slow = slow.map_err(|_| anyhow::anyhow!("dig thread panicked"))??;
            let local = local?;
            ensure!(slow.rcode == "SERVFAIL", "{}", slow.text);
            ensure!(
                slow.took < Duration::from_secs(5),
                "SERVFAIL took {:?}",
                slow.took
            );
            ensure!(
                local.rcode == "NOERROR" && local.took < Duration::from_secs(1),
                "a local name waited for the silent upstream ({:?}):\n{}",
                local.took,
                local.text
            );
            eprintln!("silent upstream: SERVFAIL after {:?}", slow.took);
            Ok(())
        },
        || report(&control, &[&n1, &n2, &n3], &[&upstream]),
    )
}

/// The split-DNS test zone (not under the tailnet domain) and what each resolver answers for it.
const CORP_ZONE: &str = "corp.test";
const CORP_BY_HOST: &str = "198.18.66.6";
const CORP_BY_SPLIT: &str = "198.18.88.8";
/// What the global nameserver answers for the forwarded zone (the host's says [`FWD_ADDR`]).
const FWD_BY_GLOBAL: &str = "198.18.99.9";

#[test]
fn split_dns_extra_records_and_global_nameservers_set_on_control_answer_on_the_node()
-> anyhow::Result<()> {
    let lab = lab!();
    let net = Tailnet::with_binaries(&lab, Binaries::discover()?.with_weftd(WEFTD))?;
    let control = net.control("ctl")?;
    // The host's resolver also answers the corp zone, differently: only the split route can
    // make the node's answer the split resolver's.
    let (host_dns, host_ip) = dnsmasq_zones(
        &net,
        "dnsh",
        &[(FWD_ZONE, FWD_ADDR), (CORP_ZONE, CORP_BY_HOST)],
    )?;
    let (split_dns, split_ip) = dnsmasq_zones(&net, "dnss", &[(CORP_ZONE, CORP_BY_SPLIT)])?;
    let (global_dns, global_ip) = dnsmasq_zones(
        &net,
        "dnsg",
        &[(FWD_ZONE, FWD_BY_GLOBAL), (CORP_ZONE, FWD_BY_GLOBAL)],
    )?;
    control.ensure_user("alice")?;
    let key = control.create_key("alice", &KeyOptions::reusable())?;
    let n1 = node_with_host_resolver(&net, "n1", &format!("nameserver {host_ip}\n"))?;
    n1.up_with_key(&control, &key)?;
    n1.wait_state("running", PROPAGATION)?;
    let corp = format!("wiki.{CORP_ZONE}");
    let fwd = format!("www.{FWD_ZONE}");
    let extra = "files.extra.test";
    let a = |name: &str| -> anyhow::Result<Dig> { dig(&n1, &["@100.100.100.100", name, "A"]) };
    let query = |name: &str| -> anyhow::Result<serde_json::Value> {
        Ok(n1.weft(["dns", "query", name, "A", "--json"]).json()?)
    };

    with_diagnostics(
        || {
            // Before: everything goes to the host's resolver; the extra name is not there.
            let d = a(&corp)?;
            ensure!(d.answers == vec![CORP_BY_HOST.to_owned()], "{}", d.text);
            let d = a(extra)?;
            ensure!(d.rcode != "NOERROR" && d.answers.is_empty(), "{}", d.text);

            let start = weft_lab::now();
            control
                .admin([
                    "dns",
                    "set",
                    "--route",
                    &format!("{CORP_ZONE}={split_ip}"),
                    "--record",
                    &format!("{extra}=198.18.55.5"),
                ])
                .run()?;
            wait_until(PROPAGATION, "the split route on n1", || {
                Ok(a(&corp)?.answers == vec![CORP_BY_SPLIT.to_owned()])
            })?;
            eprintln!("split route answering {:?} after dns set", start.elapsed());
            // A name under the routed domain and the domain itself go to the split resolver;
            // other names still to the host's.
            let d = a(&format!("a.b.{CORP_ZONE}"))?;
            ensure!(d.answers == vec![CORP_BY_SPLIT.to_owned()], "{}", d.text);
            let d = a(&fwd)?;
            ensure!(d.answers == vec![FWD_ADDR.to_owned()], "{}", d.text);
            // TCP follows the same route.
            let d = dig(&n1, &["+tcp", "@100.100.100.100", &corp, "A"])?;
            ensure!(d.answers == vec![CORP_BY_SPLIT.to_owned()], "{}", d.text);
            // The extra record.
            let d = a(extra)?;
            ensure!(
                d.rcode == "NOERROR" && d.answers == vec!["198.18.55.5".to_owned()],
                "{}",
                d.text
            );
            // `weft dns query` says where each came from, in JSON and in text.
            let q = query(&corp)?;
            ensure!(
                q["source"]["kind"] == "forwarded"
                    && q["source"]["route"] == "split"
                    && q["source"]["domain"] == CORP_ZONE
                    && q["source"]["upstream"] == format!("{split_ip}:53")
                    && q["records"][0]["data"] == CORP_BY_SPLIT,
                "{q}"
            );
            let text = n1.weft(["dns", "query", &corp]).run()?.stdout;
            ensure!(
                text.contains(&format!(
                    "from {split_ip}:53 via split DNS route {CORP_ZONE}"
                )) && text.contains(CORP_BY_SPLIT),
                "{text}"
            );
            let q = query(extra)?;
            ensure!(
                q["source"]["kind"] == "extra_record" && q["records"][0]["data"] == "198.18.55.5",
                "{q}"
            );
            let text = n1.weft(["dns", "query", extra]).run()?.stdout;
            ensure!(text.contains("from an extra record"), "{text}");
            let q = query(&fwd)?;
            ensure!(
                q["source"]["route"] == "host"
                    && q["source"]["upstream"] == format!("{host_ip}:53"),
                "{q}"
            );

            // Global nameservers replace the host's for everything not routed.
            control
                .admin(["dns", "set", "--nameserver", &global_ip.to_string()])
                .run()?;
            wait_until(PROPAGATION, "the global nameserver on n1", || {
                Ok(a(&fwd)?.answers == vec![FWD_BY_GLOBAL.to_owned()])
            })?;
            let q = query(&fwd)?;
            ensure!(
                q["source"]["route"] == "global"
                    && q["source"]["upstream"] == format!("{global_ip}:53"),
                "{q}"
            );
            let d = a(&corp)?;
            ensure!(
                d.answers == vec![CORP_BY_SPLIT.to_owned()],
                "a split route loses to the global nameservers:\n{}",
                d.text
            );
            let st: serde_json::Value = n1.weft(["dns", "status", "--json"]).json()?;
            ensure!(
                st["global_nameservers"] == serde_json::json!([global_ip.to_string()])
                    && st["host_nameservers"] == serde_json::json!([host_ip.to_string()]),
                "{st}"
            );

            // Removed again: back to the host's resolver for both.
            control
                .admin([
                    "dns",
                    "set",
                    "--clear-nameservers",
                    "--clear-routes",
                    "--clear-records",
                ])
                .run()?;
            wait_until(PROPAGATION, "the host's resolver again on n1", || {
                Ok(a(&corp)?.answers == vec![CORP_BY_HOST.to_owned()]
                    && a(&fwd)?.answers == vec![FWD_ADDR.to_owned()])
            })?;
            let d = a(extra)?;
            ensure!(d.answers.is_empty(), "{}", d.text);
            Ok(())
        },
        || report(&control, &[&n1], &[&host_dns, &split_dns, &global_dns]),
    )
}

/// One dnsperf run's results.
#[derive(Debug)]
struct Perf {
    qps: f64,
    p99_ms: f64,
    lost: String,
}

/// Runs dnsperf in `ns` against `server` with `queries` (one `name type` per line): `max_qps`
/// `None` = as fast as it goes (throughput), else paced (latency).
fn dnsperf(
    ns: &weft_lab::Netns,
    server: &str,
    queries: &std::path::Path,
    secs: u32,
    max_qps: Option<u32>,
) -> anyhow::Result<Perf> {
    let mut cmd = ns.command("dnsperf").args([
        "-s",
        server,
        "-d",
        &queries.display().to_string(),
        "-l",
        &secs.to_string(),
        "-c",
        "4",
        "-t",
        "2",
        "-v",
    ]);
    if let Some(q) = max_qps {
        cmd = cmd.args(["-Q", &q.to_string()]);
    }
    let out = cmd
        .timeout(Duration::from_secs(u64::from(secs) + 30))
        .run()?;
    let qps = out
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Queries per second:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("dnsperf output without a rate:\n{}", out.stdout))?;
    let lost = out
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Queries lost:"))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let mut lat: Vec<f64> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .collect();
    lat.sort_by(f64::total_cmp);
    let p99_ms = lat
        .get((lat.len() * 99 / 100).min(lat.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
        * 1000.0;
    Ok(Perf { qps, p99_ms, lost })
}

/// Not a test: the benchmark behind `bench/dns.sh` (docs/BENCHMARKS.md). Two nodes; on n1,
/// dnsperf against MagicDNS (tailnet names; forwarded names) and, in the same run, against
/// dnsmasq answering the same tailnet names from a hosts file in n1's namespace, and against the
/// upstream dnsmasq directly (what forwarding adds). Prints `key=value` lines.
#[test]
#[ignore = "benchmark: bench/dns.sh"]
fn dns_bench() -> anyhow::Result<()> {
    let lab = lab!();
    let secs: u32 = std::env::var("DNS_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let pace: u32 = std::env::var("DNS_BENCH_QPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let net = Tailnet::with_binaries(&lab, Binaries::discover()?.with_weftd(WEFTD))?;
    let control = net.control("ctl")?;
    let (upstream, upstream_ip) = dnsmasq(&net, "dns1")?;
    let conf = format!("nameserver {upstream_ip}\n");
    control.ensure_user("alice")?;
    let key = control.create_key("alice", &KeyOptions::reusable())?;
    let n1 = node_with_host_resolver(&net, "n1", &conf)?;
    n1.up_with_key(&control, &key)?;
    let n2 = node_with_host_resolver(&net, "n2", &conf)?;
    n2.up_with_key(&control, &key)?;
    n1.wait_peers(&["n2"], PROPAGATION)?;
    let st = n1.status_json()?;
    let p = peer(&st, "n2").context("n2")?;
    let n2_name = p["dns_name"]
        .as_str()
        .context("dns_name")?
        .trim_end_matches('.')
        .to_owned();
    let n2_v4 = p["addresses"][0].as_str().context("address")?.to_owned();
    let n1_name = st["self"]["dns_name"]
        .as_str()
        .context("self")?
        .trim_end_matches('.')
        .to_owned();
    let n1_v4 = n1.ip4()?.to_string();

    // dnsmasq with the same names from a hosts file, in n1's namespace on loopback.
    let hosts = lab.dir().join("tailnet.hosts");
    std::fs::write(&hosts, format!("{n2_v4} {n2_name}\n{n1_v4} {n1_name}\n"))?;
    n1.netns().exec("ip", ["link", "set", "lo", "up"])?;
    let reference = n1.netns().spawn(
        "n1-dnsmasq-hosts",
        "dnsmasq",
        [
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--user=root",
            "--listen-address=127.0.0.53",
            "--port=53",
            "--cache-size=0",
            &format!("--addn-hosts={}", hosts.display()),
            "--pid-file=",
            "--log-facility=-",
        ],
    )?;
    n1.netns().wait_tcp_listen(53, Duration::from_secs(10))?;

    let tailnet_q = lab.dir().join("tailnet.queries");
    std::fs::write(&tailnet_q, format!("{n2_name} A\n{n1_name} A\n"))?;
    let fwd_q = lab.dir().join("fwd.queries");
    std::fs::write(
        &fwd_q,
        (0..50)
            .map(|i| format!("h{i}.{FWD_ZONE} A\n"))
            .collect::<String>(),
    )?;
    let up = upstream_ip.to_string();
    let ns = n1.netns();
    with_diagnostics(
        || {
            let rows = [
                ("tailnet_magicdns", "100.100.100.100", &tailnet_q),
                ("tailnet_dnsmasq_hosts", "127.0.0.53", &tailnet_q),
                ("forwarded_magicdns", "100.100.100.100", &fwd_q),
                ("forwarded_upstream_direct", up.as_str(), &fwd_q),
            ];
            for (name, server, q) in rows {
                let max = dnsperf(ns, server, q, secs, None)?;
                let paced = dnsperf(ns, server, q, secs, Some(pace))?;
                eprintln!(
                    "DNSBENCH {name}: qps_max={:.0} p99_ms_at_max={:.3} lost_at_max={} p99_ms_at_{pace}qps={:.3} lost_paced={}",
                    max.qps, max.p99_ms, max.lost, paced.p99_ms, paced.lost
                );
            }
            Ok(())
        },
        || report(&control, &[&n1, &n2], &[&upstream, &reference]),
    )
}
