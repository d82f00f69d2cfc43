//! MagicDNS, server side, end to end: `weft-control dns set` and `nodes rename` on a real
//! control server reach real weftd nodes (each in its own namespace) within 2 s, and the `weft`
//! CLI finds a renamed peer by its new short name and full name.
//!
//! Needs root, `ping`, `runuser` and `/dev/net/tun`; skips without them unless `WEFT_E2E=1`.
//! `dns_set_reaches_every_node_within_two_seconds` reads the node's view with
//! `weft dns status --json` (weftd's OS integration of issue 13).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use anyhow::{Context as _, ensure};
use weft_lab::tailnet::{Binaries, Control, ControlOptions, Node, Tailnet, peer};
use weft_lab::{Lab, e2e_lab, now, wait_until, with_diagnostics};

const WEFTD: &str = env!("CARGO_BIN_EXE_weftd");
/// The brief's bound for a change to reach the nodes.
const PROPAGATION: Duration = Duration::from_secs(2);
const DOMAIN: &str = "lab.weft.internal";

macro_rules! lab {
    () => {
        e2e_lab!("ping", "runuser", "/dev/net/tun")
    };
}

fn tailnet(lab: &Lab) -> anyhow::Result<Tailnet<'_>> {
    Ok(Tailnet::with_binaries(
        lab,
        Binaries::discover()?.with_weftd(WEFTD),
    )?)
}

fn control(net: &Tailnet<'_>) -> anyhow::Result<Control> {
    Ok(net.control_with(
        "ctl",
        ControlOptions {
            serve_args: vec!["--domain".into(), DOMAIN.into()],
        },
    )?)
}

fn report(control: &Control, nodes: &[&Node]) -> String {
    let mut s = format!("=== control ===\n{}\n", control.log());
    for n in nodes {
        s.push_str(&n.report());
        s.push('\n');
    }
    s
}

/// A status entry's `dns_name` without the final dot, if any.
fn fqdn(p: &serde_json::Value) -> &str {
    p["dns_name"]
        .as_str()
        .unwrap_or_default()
        .trim_end_matches('.')
}

/// `weft dns status --json` on `node`.
fn dns_status(node: &Node) -> anyhow::Result<serde_json::Value> {
    let out = node.weft(["dns", "status", "--json"]).run_unchecked()?;
    serde_json::from_str(&out.stdout).with_context(|| {
        format!(
            "weft dns status --json on {}: not JSON; stdout: {} stderr: {}",
            node.name(),
            out.stdout,
            out.stderr
        )
    })
}

#[test]
fn dns_set_reaches_every_node_within_two_seconds() -> anyhow::Result<()> {
    let lab = lab!();
    let net = tailnet(&lab)?;
    let control = control(&net)?;
    let nodes = net.join(&control, &["a", "b"])?;
    let refs: Vec<&Node> = nodes.iter().collect();
    with_diagnostics(
        || {
            for n in &nodes {
                let st = dns_status(n)?;
                ensure!(st["magic_dns"] == true, "{}: {st}", n.name());
                ensure!(st["domain"] == DOMAIN, "{}: {st}", n.name());
            }
            let started = now();
            control
                .admin([
                    "dns",
                    "set",
                    "--nameserver",
                    "198.18.0.53",
                    "--route",
                    "corp.example.com=198.18.0.54,198.18.0.55",
                ])
                .run()?;
            for n in &nodes {
                wait_until(PROPAGATION, "the new DNS settings on the node", || {
                    let st = dns_status(n)?;
                    Ok(
                        st["global_nameservers"] == serde_json::json!(["198.18.0.53"])
                            && st["split_routes"]
                                == serde_json::json!({"corp.example.com": ["198.18.0.54", "198.18.0.55"]}),
                    )
                })?;
            }
            let took = started.elapsed();
            eprintln!("dns set: on both nodes {took:?} after weft-control dns set began");
            ensure!(took < PROPAGATION, "took {took:?}");

            // Off, then on again: only that part changes.
            control.admin(["dns", "set", "--magic-dns=false"]).run()?;
            for n in &nodes {
                wait_until(PROPAGATION, "MagicDNS off on the node", || {
                    let st = dns_status(n)?;
                    Ok(st["magic_dns"] == false
                        && st["global_nameservers"] == serde_json::json!(["198.18.0.53"]))
                })?;
            }
            // A refused change leaves the nodes' settings alone.
            let out = control
                .admin(["dns", "set", "--nameserver", "100.100.100.100"])
                .run_unchecked()?;
            ensure!(!out.status.success(), "a looping nameserver was accepted");
            ensure!(
                out.stderr.contains("is a Weft address"),
                "stderr: {}",
                out.stderr
            );
            control
                .admin(["dns", "set", "--magic-dns=true", "--clear-nameservers"])
                .run()?;
            for n in &nodes {
                wait_until(
                    PROPAGATION,
                    "MagicDNS back on, no global nameservers",
                    || {
                        let st = dns_status(n)?;
                        Ok(st["magic_dns"] == true
                            && st["global_nameservers"] == serde_json::json!([]))
                    },
                )?;
            }
            Ok(())
        },
        || report(&control, &refs),
    )
}

#[test]
fn a_rename_reaches_a_peer_within_two_seconds_and_the_cli_finds_the_new_name() -> anyhow::Result<()>
{
    let lab = lab!();
    let net = tailnet(&lab)?;
    let control = control(&net)?;
    let nodes = net.join(&control, &["a", "b"])?;
    let (a, b) = (&nodes[0], &nodes[1]);
    with_diagnostics(
        || {
            let st = a.status_json()?;
            let p = peer(&st, "b").context("a does not list b")?;
            ensure!(p["name"] == "b", "{p}");
            ensure!(fqdn(p) == format!("b.{DOMAIN}"), "{p}");
            ensure!(st["tailnet"]["domain"] == DOMAIN, "{st}");

            let id = control.node_id("b")?;
            let started = now();
            control.admin(["nodes", "rename", &id, "build-box"]).run()?;
            wait_until(PROPAGATION, "a sees b renamed", || {
                let st = a.status_json()?;
                Ok(peer(&st, "b").is_some_and(|p| {
                    p["name"] == "build-box" && fqdn(p) == format!("build-box.{DOMAIN}")
                }))
            })?;
            let took = started.elapsed();
            eprintln!("rename: seen by the peer {took:?} after weft-control nodes rename began");
            ensure!(took < PROPAGATION, "took {took:?}");
            // b itself knows its new name.
            wait_until(PROPAGATION, "b sees its new name", || {
                Ok(b.status_json()?["self"]["name"] == "build-box")
            })?;

            // The CLI takes the short name and the full name, with or without the final dot.
            let ip = b.ip4()?.to_string();
            for target in [
                "build-box".to_owned(),
                format!("build-box.{DOMAIN}"),
                format!("BUILD-BOX.{DOMAIN}."),
            ] {
                let out = a.weft(["ip", "-4", &target]).run()?;
                ensure!(out.stdout.trim() == ip, "weft ip {target}: {}", out.stdout);
                let out = a.weft(["whois", &target]).run()?;
                ensure!(
                    out.stdout.contains("build-box"),
                    "weft whois {target}: {}",
                    out.stdout
                );
            }
            let out = a.weft(["ping", "-c", "1", "build-box"]).run()?;
            ensure!(out.stdout.contains("pong from build-box"), "{}", out.stdout);
            let out = a
                .weft(["ping", "-c", "1", &format!("build-box.{DOMAIN}")])
                .run()?;
            ensure!(out.stdout.contains("pong from build-box"), "{}", out.stdout);
            // The status table shows the new short name.
            let out = a.weft(["status"]).run()?;
            ensure!(
                out.stdout
                    .lines()
                    .any(|l| l.contains(&ip) && l.contains("build-box")),
                "{}",
                out.stdout
            );
            Ok(())
        },
        || report(&control, &[a, b]),
    )
}
