//! The user's whole flow, end to end: real `weft-control`, `weftd` and `weft` binaries, real TUNs,
//! each node in its own network namespace on one switched underlay (`weft_lab::tailnet`).
//!
//! Needs root, `ping`, `runuser` and `/dev/net/tun`; skips without them unless `WEFT_E2E=1`.
//! Every scenario is its own test (they run in parallel, each in its own namespaces); every wait
//! is bounded, and a failure carries each daemon's status and log.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use weft_lab::tailnet::{
    Binaries, Control, ControlOptions, KeyOptions, Node, NodeOptions, Tailnet, peer, peer_hostnames,
};
use weft_lab::{Lab, e2e_lab, tcp_transfer, wait_for, wait_until, with_diagnostics};

const WEFTD: &str = env!("CARGO_BIN_EXE_weftd");
const SECS: fn(u64) -> Duration = Duration::from_secs;

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

fn report(control: &Control, nodes: &[&Node]) -> String {
    let mut s = format!("=== control ===\n{}\n", control.log());
    for n in nodes {
        s.push_str(&n.report());
        s.push('\n');
    }
    s
}

/// Whether ICMP from `from` reaches `to`'s tailnet address (one probe, 1 s).
fn pings(from: &Node, to: IpAddr) -> bool {
    from.netns().ping(to, 1).is_ok()
}

#[test]
fn three_nodes_join_with_a_pre_auth_key_and_reach_each_other_every_way() -> anyhow::Result<()> {
    let lab = lab!();
    let net = tailnet(&lab)?;
    let control = net.control("ctl")?;
    let nodes = net.join(&control, &["n1", "n2", "n3"])?;
    let refs: Vec<&Node> = nodes.iter().collect();
    with_diagnostics(
        || {
            let ips: Vec<_> = nodes.iter().map(Node::ip4).collect::<Result<_, _>>()?;
            // Every status lists the other two with the addresses they report themselves.
            for (i, node) in nodes.iter().enumerate() {
                let st = node.status_json()?;
                ensure!(st["backend_state"] == "running", "{}: {st}", node.name());
                for (j, other) in nodes.iter().enumerate() {
                    if i == j {
                        continue;
                    }
                    let p = peer(&st, other.name()).with_context(|| {
                        format!("{} does not list {}", node.name(), other.name())
                    })?;
                    let addrs: Vec<String> = p["addresses"]
                        .as_array()
                        .context("addresses")?
                        .iter()
                        .filter_map(|a| a.as_str().map(str::to_owned))
                        .collect();
                    ensure!(
                        addrs.first() == Some(&ips[j].to_string()),
                        "{} lists {} with {addrs:?}, it says it is {}",
                        node.name(),
                        other.name(),
                        ips[j]
                    );
                    ensure!(
                        addrs.iter().any(|a| a.starts_with("fd7a:115c:a1e0:")),
                        "{} lists {} without a ULA address: {addrs:?}",
                        node.name(),
                        other.name()
                    );
                }
            }
            // ICMP and a checksummed TCP transfer between every ordered pair.
            for (i, a) in nodes.iter().enumerate() {
                for (j, b) in nodes.iter().enumerate() {
                    if i == j {
                        continue;
                    }
                    a.netns().wait_ping(ips[j].into(), SECS(15))?;
                    let dest = SocketAddr::new(ips[j].into(), 5000 + u16::try_from(i * 3 + j)?);
                    tcp_transfer(a.netns(), b.netns(), dest, 256 * 1024, SECS(20))?.verify()?;
                }
            }
            // `weft ping` gets pongs over a direct endpoint (an underlay address and the port).
            for (a, b) in [
                (&nodes[0], &nodes[1]),
                (&nodes[1], &nodes[2]),
                (&nodes[2], &nodes[0]),
            ] {
                let out = a.weft(["ping", "-c", "2", b.name()]).run()?;
                let want = format!("via {}:", b.underlay_addr());
                ensure!(
                    out.stdout.contains(&format!("pong from {}", b.name()))
                        && out.stdout.contains(&want),
                    "weft ping {} from {}: {}{}",
                    b.name(),
                    a.name(),
                    out.stdout,
                    out.stderr
                );
            }
            // No duplicates at control.
            ensure!(control.nodes()?.len() == 3, "{:?}", control.nodes()?);
            Ok(())
        },
        || report(&control, &refs),
    )
}

/// A new node's first packet to a peer used to wait 5 s: its handshake initiation reached the
/// peer before the peer's netmap named the new key, was dropped, and WireGuard retries only after
/// REKEY_TIMEOUT. The peer now answers a remembered initiation as soon as the key is configured.
#[test]
fn a_new_nodes_first_ping_is_answered_at_once_not_after_a_handshake_retry() -> anyhow::Result<()> {
    let lab = lab!();
    let net = tailnet(&lab)?;
    let control = net.control("ctl")?;
    let first = net.join(&control, &["n1"])?;
    let n1 = &first[0];
    let key = control.create_key(
        "alice",
        &KeyOptions {
            reusable: true,
            ..KeyOptions::default()
        },
    )?;
    let n2 = net.node("n2")?;
    with_diagnostics(
        || {
            let ip1 = n1.ip4()?;
            n2.up_with_key(&control, &key)?;
            #[allow(clippy::disallowed_methods)] // the test measures elapsed wall time
            let started = std::time::Instant::now();
            // One echo every 0.2 s until the first reply, for at most 4 s (the old retry came at 5 s).
            let out = n2
                .netns()
                .command("ping")
                .args(["-n", "-i", "0.2", "-c", "1", "-w", "4", &ip1.to_string()])
                .timeout(SECS(10))
                .run_unchecked()?;
            let took = started.elapsed();
            ensure!(
                out.stdout.contains("1 received"),
                "no reply within 4 s of `weft up`: {}{}",
                out.stdout,
                out.stderr
            );
            ensure!(
                took < Duration::from_millis(1500),
                "the first reply took {took:?}"
            );
            eprintln!("first ping answered {took:?} after `weft up` returned");
            Ok(())
        },
        || report(&control, &[n1, &n2]),
    )
}

#[test]
fn a_node_deleted_at_control_vanishes_from_its_peers_and_its_traffic_stops() -> anyhow::Result<()> {
    let lab = lab!();
    let net = tailnet(&lab)?;
    let control = net.control("ctl")?;
    let nodes = net.join(&control, &["d1", "d2", "d3"])?;
    let refs: Vec<&Node> = nodes.iter().collect();
    with_diagnostics(
        || {
            let ip3 = nodes[2].ip4()?;
            nodes[0].netns().wait_ping(ip3.into(), SECS(15))?;
            let id = control.node_id("d3")?;
            control.delete_node(&id)?;
            for n in &nodes[..2] {
                let other = if n.name() == "d1" { "d2" } else { "d1" };
                n.wait_peers(&[other], SECS(10))?;
            }
            wait_until(SECS(10), "ICMP from d1 to the deleted d3 to fail", || {
                Ok(!pings(&nodes[0], ip3.into()))
            })?;
            // And it stays failed (not a blip).
            ensure!(
                !pings(&nodes[0], ip3.into()),
                "d3 reachable again after deletion"
            );
            let ids: Vec<String> = control
                .nodes()?
                .iter()
                .map(|n| n["hostname"].to_string())
                .collect();
            ensure!(ids.len() == 2, "{ids:?}");
            Ok(())
        },
        || report(&control, &refs),
    )
}

/// The reusable key of user `alice` on `control`.
fn alice_key(control: &Control) -> anyhow::Result<String> {
    control.ensure_user("alice")?;
    Ok(control.create_key("alice", &KeyOptions::reusable())?)
}

#[test]
fn an_interactive_login_prints_a_url_and_succeeds_once_an_admin_approves_it() -> anyhow::Result<()>
{
    let lab = lab!();
    let net = tailnet(&lab)?;
    let control = net.control("ctl")?;
    control.ensure_user("alice")?;
    let node = net.node("i1")?;
    with_diagnostics(
        || {
            let up = node
                .weft([
                    "up",
                    "--login-server",
                    &control.url(),
                    "--hostname",
                    "i1",
                    "--timeout",
                    "60s",
                ])
                .spawn("weft-up")?;
            let url = wait_for(SECS(20), "weft up to print a login URL", || {
                let log = up.log();
                let Some(after) = log.split("To authenticate, visit:").nth(1) else {
                    return Ok(None);
                };
                Ok(after.split_whitespace().next().map(str::to_owned))
            })?;
            ensure!(
                url.starts_with(&control.url()),
                "login URL {url} is not on {}",
                control.url()
            );
            ensure!(node.backend_state()? == "needs_login");
            control.approve(&url, "alice")?;
            let status = up.wait_exit(SECS(20))?;
            let log = up.log();
            ensure!(
                status.success() && log.contains("Success."),
                "weft up: {status}\n{log}"
            );
            node.wait_state("running", SECS(10))?;
            let st = node.status_json()?;
            ensure!(st["user"]["login_name"] == "alice", "{st}");
            Ok(())
        },
        || report(&control, &[&node]),
    )
}

#[test]
fn a_node_whose_key_expired_loses_traffic_says_so_and_force_reauth_brings_it_back()
-> anyhow::Result<()> {
    let lab = lab!();
    let net = tailnet(&lab)?;
    let control = net.control("ctl")?;
    let nodes = net.join(&control, &["e1", "e2"])?;
    let refs: Vec<&Node> = nodes.iter().collect();
    with_diagnostics(
        || {
            let (e1, e2) = (&nodes[0], &nodes[1]);
            let ip2 = e2.ip4()?;
            e1.netns().wait_ping(ip2.into(), SECS(15))?;
            control.expire_node(&control.node_id("e2")?)?;
            wait_until(SECS(15), "ICMP from e1 to the expired e2 to fail", || {
                Ok(!pings(e1, ip2.into()))
            })?;
            e2.wait_state("needs_login", SECS(10))?;
            let text = e2.weft(["status"]).run_unchecked()?;
            ensure!(
                !text.status.success() && text.stdout.contains("log in again"),
                "weft status on an expired node: {} {}{}",
                text.status,
                text.stdout,
                text.stderr
            );
            let key = alice_key(&control)?;
            e2.weft([
                "up",
                "--force-reauth",
                "--login-server",
                &control.url(),
                "--authkey",
                &key,
                "--hostname",
                "e2",
                "--timeout",
                "30s",
            ])
            .run()?;
            e2.wait_state("running", SECS(10))?;
            let ip2 = e2.ip4()?;
            e1.wait_peers_online(&["e2"], SECS(20))?;
            e1.netns().wait_ping(ip2.into(), SECS(15))?;
            ensure!(
                control.nodes()?.len() == 2,
                "duplicate nodes: {:?}",
                control.nodes()?
            );
            Ok(())
        },
        || report(&control, &refs),
    )
}

#[test]
fn peers_keep_talking_while_control_is_down_for_a_minute_and_resume_after() -> anyhow::Result<()> {
    let lab = lab!();
    let net = tailnet(&lab)?;
    let control = net.control("ctl")?;
    let nodes = net.join(&control, &["c1", "c2"])?;
    let refs: Vec<&Node> = nodes.iter().collect();
    with_diagnostics(
        || {
            let (c1, c2) = (&nodes[0], &nodes[1]);
            let (ip1, ip2) = (c1.ip4()?, c2.ip4()?);
            c1.netns().wait_ping(ip2.into(), SECS(15))?;
            control.stop()?;
            let down_since = weft_lab::now();
            let mut round = 0u16;
            while down_since.elapsed() < SECS(60) {
                // Both directions, ICMP and TCP, every few seconds.
                c1.netns().wait_ping(ip2.into(), SECS(5))?;
                c2.netns().wait_ping(ip1.into(), SECS(5))?;
                let dest = SocketAddr::new(ip2.into(), 6000 + round);
                tcp_transfer(c1.netns(), c2.netns(), dest, 64 * 1024, SECS(10))?.verify()?;
                round += 1;
                std::thread::sleep(SECS(5));
            }
            let st = c1.status_json()?;
            ensure!(st["backend_state"] == "running", "{st}");
            ensure!(
                st["health"].as_array().is_some_and(|h| !h.is_empty()),
                "no health warning while control is down: {st}"
            );
            control.start()?;
            for n in [c1, c2] {
                n.wait_status(SECS(40), "control reachable again", |v| {
                    v["health"].as_array().is_some_and(Vec::is_empty)
                })?;
            }
            // The map streams are live again: a node joining now shows up at both.
            let c3 = net.node("c3")?;
            c3.up_with_key(&control, &alice_key(&control)?)?;
            c1.wait_peers_online(&["c2", "c3"], SECS(20))?;
            c2.wait_peers_online(&["c1", "c3"], SECS(20))?;
            c1.netns().wait_ping(c3.ip4()?.into(), SECS(15))?;
            let names: Vec<String> = control
                .nodes()?
                .iter()
                .map(|n| n["hostname"].to_string())
                .collect();
            ensure!(
                names.len() == 3,
                "duplicate nodes after the restart: {names:?}"
            );
            Ok(())
        },
        || report(&control, &refs),
    )
}

#[test]
fn weftd_keeps_ips_keys_profiles_and_down_across_kill_9_and_a_deleted_state_is_a_new_node()
-> anyhow::Result<()> {
    let lab = lab!();
    let net = tailnet(&lab)?;
    let control = net.control("ctl")?;
    let nodes = net.join(&control, &["k1", "k2"])?;
    let refs: Vec<&Node> = nodes.iter().collect();
    with_diagnostics(
        || {
            let (k1, k2) = (&nodes[0], &nodes[1]);
            let ip1 = k1.ip4()?;
            let prefs = |n: &Node| -> anyhow::Result<serde_json::Value> {
                Ok(serde_json::from_str(
                    &n.weft(["debug", "prefs"]).run()?.stdout,
                )?)
            };
            let profiles = |n: &Node| -> anyhow::Result<serde_json::Value> {
                Ok(serde_json::from_str(
                    &n.weft(["switch", "--list", "--json"]).run()?.stdout,
                )?)
            };
            let (prefs_before, profiles_before) = (prefs(k1)?, profiles(k1)?);
            ensure!(!prefs_before["node_key"].is_null(), "{prefs_before}");

            k1.restart()?;
            k1.wait_state("running", SECS(20))?;
            ensure!(k1.ip4()? == ip1, "IP changed across kill -9");
            ensure!(
                prefs(k1)? == prefs_before,
                "prefs/keys changed: {} vs {prefs_before}",
                prefs(k1)?
            );
            ensure!(
                profiles(k1)? == profiles_before,
                "profiles changed across kill -9"
            );
            k2.netns().wait_ping(ip1.into(), SECS(15))?;

            // `down` is sticky.
            k1.weft(["down"]).run()?;
            k1.wait_state("stopped", SECS(10))?;
            k1.restart()?;
            ensure!(
                k1.backend_state()? == "stopped",
                "down did not survive a restart"
            );
            ensure!(!pings(k2, ip1.into()), "k1 answers while down");
            // A disco ping to a peer that is down times out (504 from the LocalAPI).
            let out = k2
                .weft(["ping", "-c", "1", "--timeout", "2s", &ip1.to_string()])
                .run_unchecked()?;
            ensure!(
                format!("{}{}", out.stdout, out.stderr).contains("timed out"),
                "weft ping to a node that is down: {out:?}"
            );
            ensure!(
                k1.backend_state()? == "stopped",
                "down did not survive a restart"
            );
            k1.weft(["up"]).run()?;
            k1.wait_state("running", SECS(20))?;
            ensure!(k1.ip4()? == ip1, "IP changed across down/up");
            k2.netns().wait_ping(ip1.into(), SECS(15))?;

            // A deleted state file: a new machine, a new node, a new address.
            k1.stop()?;
            std::fs::remove_file(k1.state_path())?;
            k1.start()?;
            ensure!(k1.backend_state()? == "needs_login");
            k1.up_with_key(&control, &alice_key(&control)?)?;
            let new_ip = k1.ip4()?;
            ensure!(new_ip != ip1, "a new node got the old address {ip1}");
            ensure!(control.nodes()?.len() == 3, "{:?}", control.nodes()?);
            k2.netns().wait_ping(new_ip.into(), SECS(15))?;
            Ok(())
        },
        || report(&control, &refs),
    )
}

#[test]
fn two_tailnets_are_two_profiles_switched_by_nickname_without_a_new_login() -> anyhow::Result<()> {
    let lab = lab!();
    let net = tailnet(&lab)?;
    let home = net.control("home")?;
    let work = net.control_with(
        "work",
        ControlOptions {
            serve_args: vec!["--domain".into(), "work.internal".into()],
        },
    )?;
    let nodes = net.join(&home, &["p1", "p2"])?;
    let q2 = net.node("q2")?;
    let refs: Vec<&Node> = nodes.iter().chain([&q2]).collect();
    with_diagnostics(
        || {
            let p1 = &nodes[0];
            work.ensure_user("bob")?;
            let work_key = work.create_key("bob", &KeyOptions::reusable())?;
            q2.up_with_key(&work, &work_key)?;
            p1.weft([
                "login",
                "--login-server",
                &work.url(),
                "--authkey",
                &work_key,
                "--hostname",
                "p1",
                "--timeout",
                "30s",
            ])
            .run()?;
            p1.wait_peers_online(&["q2"], SECS(20))?;
            p1.netns().wait_ping(q2.ip4()?.into(), SECS(15))?;

            let list = p1.weft(["switch", "--list"]).run()?.stdout;
            ensure!(
                list.contains("weft.internal")
                    && list.contains("work.internal")
                    && list.contains('*'),
                "switch --list: {list}"
            );
            p1.weft(["set", "--nickname", "work"]).run()?;
            let profiles: serde_json::Value =
                serde_json::from_str(&p1.weft(["switch", "--list", "--json"]).run()?.stdout)?;
            let profiles = profiles.as_array().context("profiles")?.clone();
            ensure!(profiles.len() == 2, "{profiles:?}");
            let current = profiles
                .iter()
                .find(|p| p["selected"] == true)
                .context("no current")?;
            ensure!(current["nickname"] == "work", "{current}");
            let home_id = profiles
                .iter()
                .find(|p| p["selected"] == false)
                .and_then(|p| p["id"].as_str())
                .context("no home profile")?
                .to_owned();

            for round in 0..2 {
                let out = p1.weft(["switch", &home_id]).run()?;
                ensure!(
                    !out.stderr.contains("To authenticate"),
                    "re-auth asked: {}",
                    out.stderr
                );
                p1.wait_peers_online(&["p2"], SECS(20))?;
                p1.netns().wait_ping(nodes[1].ip4()?.into(), SECS(15))?;
                let out = p1.weft(["switch", "work"]).run()?;
                ensure!(
                    !out.stderr.contains("To authenticate"),
                    "re-auth asked: {}",
                    out.stderr
                );
                p1.wait_peers_online(&["q2"], SECS(20))?;
                p1.netns()
                    .wait_ping(q2.ip4()?.into(), SECS(15))
                    .with_context(|| format!("round {round}"))?;
            }
            ensure!(
                home.nodes()?.len() == 2 && work.nodes()?.len() == 2,
                "duplicate nodes"
            );
            Ok(())
        },
        || {
            format!(
                "{}\n=== work control ===\n{}",
                report(&home, &refs),
                work.log()
            )
        },
    )
}

/// Sends raw bytes to the LocalAPI socket and returns the raw response.
fn raw_localapi(socket: &std::path::Path, request: &str) -> anyhow::Result<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(SECS(10)))?;
    s.write_all(request.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn bad_input_gets_clear_errors_and_read_only_users_can_look_but_not_touch() -> anyhow::Result<()> {
    let lab = lab!();
    let net = tailnet(&lab)?;
    let control = net.control("ctl")?;
    let nodes = net.join(&control, &["b1"])?;
    let fresh = net.node("b2")?;
    let refs: Vec<&Node> = nodes.iter().chain([&fresh]).collect();
    with_diagnostics(
        || {
            let b1 = &nodes[0];
            // A non-root user reads, but may not change anything.
            let st = b1.weft_as("nobody", ["status"]).run_unchecked()?;
            ensure!(
                st.status.success() && st.stdout.contains("b1"),
                "status as nobody: {st:?}"
            );
            for args in [&["up"][..], &["down"], &["set", "--shields-up"]] {
                let out = b1.weft_as("nobody", args).run_unchecked()?;
                ensure!(
                    !out.status.success() && out.stderr.contains("root"),
                    "weft {args:?} as nobody: {out:?}"
                );
            }
            ensure!(b1.backend_state()? == "running");

            // whois of an address nobody has: 404 naming it.
            let out = b1.weft(["whois", "100.64.0.99"]).run_unchecked()?;
            ensure!(
                !out.status.success() && out.stderr.contains("100.64.0.99"),
                "whois of an unknown address: {out:?}"
            );

            // Usage errors.
            for args in [
                &["up", "--no-such-flag"][..],
                &["ping", "-c", "many", "b1"],
                &["up", "--ssh=maybe"],
            ] {
                let out = b1.weft(args).run_unchecked()?;
                ensure!(out.status.code() == Some(2), "weft {args:?}: {out:?}");
            }

            // A bad auth key: the server's reason.
            let out = fresh
                .weft([
                    "up",
                    "--login-server",
                    &control.url(),
                    "--authkey",
                    "weftkey-auth-000000000000-0000000000000000000000000000000000000000000000000",
                    "--timeout",
                    "20s",
                ])
                .run_unchecked()?;
            ensure!(
                !out.status.success()
                    && out.stderr.contains("auth key is not valid on this server"),
                "bad key: {out:?}"
            );

            // An unreachable login server: URL and cause, in bounded time.
            let bad_url = format!("http://{}:9", control.addr());
            let start = weft_lab::now();
            let out = fresh
                .weft([
                    "up",
                    "--login-server",
                    &bad_url,
                    "--authkey",
                    "weftkey-auth-000000000000-0000000000000000000000000000000000000000000000000",
                    "--timeout",
                    "60s",
                ])
                .run_unchecked()?;
            let took = start.elapsed();
            ensure!(
                !out.status.success()
                    && out.stderr.contains(&bad_url)
                    && out.stderr.to_lowercase().contains("refused"),
                "unreachable server: {out:?}"
            );
            ensure!(
                took < SECS(15),
                "took {took:?} to report an unreachable server"
            );

            // Bad LocalAPI JSON: 400 with a message; the daemon carries on.
            let body = "{not json";
            let resp = raw_localapi(
                b1.socket(),
                &format!(
                    "POST /localapi/v0/start HTTP/1.1\r\nHost: local\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                ),
            )?;
            ensure!(resp.starts_with("HTTP/1.1 400"), "{resp}");
            ensure!(
                resp.len() > resp.find("\r\n\r\n").unwrap_or(0) + 6,
                "400 without a message: {resp}"
            );
            let resp = raw_localapi(
                b1.socket(),
                "PATCH /localapi/v0/prefs HTTP/1.1\r\nHost: local\r\nContent-Type: application/json\r\n\
                 Content-Length: 20\r\nConnection: close\r\n\r\n{\"shields_up\": \"yes\"}",
            )?;
            ensure!(resp.starts_with("HTTP/1.1 400"), "{resp}");
            ensure!(
                b1.backend_state()? == "running",
                "daemon harmed by bad JSON"
            );
            ensure!(b1.weft(["status"]).run()?.stdout.contains("b1"));
            Ok(())
        },
        || report(&control, &refs),
    )
}

/// `PATCH /localapi/v0/prefs` with `body` as root; returns the raw response.
fn patch_prefs(node: &Node, body: &str) -> anyhow::Result<String> {
    raw_localapi(
        node.socket(),
        &format!(
            "PATCH /localapi/v0/prefs HTTP/1.1\r\nHost: local\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

#[test]
fn oversized_and_control_character_prefs_are_refused_and_control_never_sees_them()
-> anyhow::Result<()> {
    let lab = lab!();
    let net = tailnet(&lab)?;
    let control = net.control("ctl")?;
    let nodes = net.join(&control, &["c1", "c2"])?;
    let refs: Vec<&Node> = nodes.iter().collect();
    with_diagnostics(
        || {
            let (c1, c2) = (&nodes[0], &nodes[1]);
            let before = c1.weft(["debug", "prefs"]).run()?.stdout;
            let huge_host = serde_json::json!({ "hostname": "h".repeat(1 << 20) }).to_string();
            let tags: Vec<String> = (0..50_000).map(|i| format!("tag:t{i}")).collect();
            let many_tags = serde_json::json!({ "advertise_tags": tags }).to_string();
            let long_nick = serde_json::json!({ "nickname": "n".repeat(100_000) }).to_string();
            let ansi_host = serde_json::json!({ "hostname": "box\u{1b}[2J" }).to_string();
            let crlf_nick = serde_json::json!({ "nickname": "work\r\nfake" }).to_string();
            for (body, want) in [
                (
                    &huge_host,
                    "hostname (--hostname) is 1048576 bytes long; at most 253 are allowed",
                ),
                (
                    &many_tags,
                    "advertise_tags (--advertise-tags) has 50000 entries; at most 64 are allowed",
                ),
                (
                    &long_nick,
                    "nickname (--nickname) is 100000 bytes long; at most 64 are allowed",
                ),
                (
                    &ansi_host,
                    "hostname (--hostname) contains control characters",
                ),
                (
                    &crlf_nick,
                    "nickname (--nickname) contains control characters",
                ),
            ] {
                let resp = patch_prefs(c1, body)?;
                ensure!(
                    resp.starts_with("HTTP/1.1 400") && resp.contains(want),
                    "{want}: {}",
                    resp.get(..600).unwrap_or(&resp)
                );
            }
            // The CLI shows the daemon's reason.
            let out = c1
                .weft(["set", "--nickname", &"x".repeat(65)])
                .run_unchecked()?;
            ensure!(
                out.status.code() == Some(1)
                    && out
                        .stderr
                        .contains("nickname (--nickname) is 65 bytes long; at most 64"),
                "{out:?}"
            );
            // Nothing changed, and the control connection never noticed.
            ensure!(
                c1.weft(["debug", "prefs"]).run()?.stdout == before,
                "prefs changed"
            );
            let st = c1.status_json()?;
            ensure!(
                st["backend_state"] == "running"
                    && st["health"].as_array().is_some_and(Vec::is_empty),
                "{st}"
            );
            // The map stream still carries a (valid) change to the peer.
            c1.weft(["set", "--hostname", "c1-renamed"]).run()?;
            c2.wait_status(SECS(20), "c1's new hostname", |v| {
                peer(v, "c1-renamed").is_some()
            })?;
            Ok(())
        },
        || report(&control, &refs),
    )
}

/// The UDP drop counters from `status --json`: (proto, reason) → count.
fn udp_drops(node: &Node) -> anyhow::Result<std::collections::BTreeMap<(String, String), u64>> {
    let st = node.status_json()?;
    let mut out = std::collections::BTreeMap::new();
    for proto in ["wireguard", "disco"] {
        let map = st["udp"][format!("{proto}_dropped")]
            .as_object()
            .with_context(|| format!("no udp.{proto}_dropped in status: {}", st["udp"]))?;
        for (reason, n) in map {
            out.insert((proto.to_owned(), reason.clone()), n.as_u64().unwrap_or(0));
        }
    }
    Ok(out)
}

#[test]
fn garbage_datagrams_are_dropped_and_counted_by_reason_in_status_and_metrics() -> anyhow::Result<()>
{
    let lab = lab!();
    let net = tailnet(&lab)?;
    let control = net.control("ctl")?;
    let nodes = net.join(&control, &["g1", "g2"])?;
    let refs: Vec<&Node> = nodes.iter().collect();
    with_diagnostics(
        || {
            let (g1, g2) = (&nodes[0], &nodes[1]);
            let before = udp_drops(g1)?;
            let target = SocketAddr::new(g1.underlay_addr().into(), weft_lab::tailnet::NODE_PORT);
            let sock = g2.netns().udp_socket("0.0.0.0:0".parse()?)?;
            // Deterministic junk (xorshift), 50 of each kind, from g2's namespace.
            let mut x: u64 = 0x2545_f491_4f6c_dd1d;
            let mut junk = |n: usize| -> Vec<u8> {
                (0..n)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect()
            };
            let magic = weft_disco::MAGIC;
            for _ in 0..50 {
                // Neither WireGuard nor disco.
                sock.send_to(b"GET / HTTP/1.1\r\n\r\n", target)?;
                // A WireGuard handshake initiation full of noise.
                let mut init = vec![1u8, 0, 0, 0];
                init.extend(junk(144));
                sock.send_to(&init, target)?;
                // Disco magic and too little after it.
                let mut short = magic.to_vec();
                short.push(0);
                sock.send_to(&short, target)?;
                // A sealed-looking disco message from a key nobody knows.
                let mut stranger = magic.to_vec();
                stranger.extend(junk(32 + 24 + 40));
                sock.send_to(&stranger, target)?;
            }
            let delta =
                |after: &std::collections::BTreeMap<(String, String), u64>, p: &str, r: &str| {
                    let k = (p.to_owned(), r.to_owned());
                    after.get(&k).copied().unwrap_or(0) - before.get(&k).copied().unwrap_or(0)
                };
            let after = wait_for(SECS(10), "the drop counters to move", || {
                let after = udp_drops(g1)?;
                Ok((delta(&after, "disco", "unknown_sender") >= 50).then_some(after))
            })?;
            ensure!(delta(&after, "wireguard", "malformed") == 50, "{after:?}");
            ensure!(delta(&after, "disco", "malformed") == 50, "{after:?}");
            ensure!(delta(&after, "disco", "unknown_sender") == 50, "{after:?}");
            let wg_total: u64 = [
                "malformed",
                "unknown_peer",
                "unauthenticated",
                "rate_limited",
            ]
            .iter()
            .map(|r| delta(&after, "wireguard", r))
            .sum();
            ensure!(wg_total >= 100, "{after:?}");
            let st = g1.status_json()?;
            ensure!(
                st["udp"]["dropped"].as_u64().unwrap_or(0) >= 200,
                "{}",
                st["udp"]
            );

            // The same counters in Prometheus' text.
            let metrics = raw_localapi(
                g1.socket(),
                "GET /localapi/v0/metrics HTTP/1.1\r\nHost: local\r\nConnection: close\r\n\r\n",
            )?;
            let want = format!(
                "weftd_udp_dropped_datagrams_total{{proto=\"disco\",reason=\"unknown_sender\"}} {}\n",
                after[&("disco".to_owned(), "unknown_sender".to_owned())]
            );
            ensure!(metrics.contains(&want), "{want} not in {metrics}");

            // Nothing of it harmed the tunnel.
            let g2_ip: IpAddr = g2.ip4()?.into();
            wait_until(SECS(10), "g1 to ping g2", || Ok(pings(g1, g2_ip)))?;
            Ok(())
        },
        || report(&control, &refs),
    )
}

/// Opens up to `count` LocalAPI connections to `socket` as `uid` (from a thread whose
/// credentials alone change), every other one with half a request head, for at most `limit`.
fn flood_as(
    uid: u32,
    socket: &std::path::Path,
    count: usize,
    limit: Duration,
) -> anyhow::Result<Vec<std::os::unix::net::UnixStream>> {
    use std::io::Write as _;
    let socket = socket.to_owned();
    let t = std::thread::spawn(
        move || -> anyhow::Result<Vec<std::os::unix::net::UnixStream>> {
            // SAFETY: a plain syscall on this thread's own credentials.
            let r = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) };
            ensure!(r == 0, "setresuid: {}", std::io::Error::last_os_error());
            let start = weft_lab::now();
            let mut held = Vec::with_capacity(count);
            while held.len() < count && start.elapsed() < limit {
                let mut s = std::os::unix::net::UnixStream::connect(&socket)?;
                if held.len() % 2 == 1 {
                    let _ = s.write_all(b"GET /localapi/v0/status HTTP/1.1\r\nHost: lo");
                }
                held.push(s);
            }
            Ok(held)
        },
    );
    t.join()
        .map_err(|_| anyhow::anyhow!("the flood thread panicked"))?
}

/// Reads `s` until the server closes it; `None` if it is still open at `deadline`.
fn until_closed(
    s: &mut std::os::unix::net::UnixStream,
    deadline: std::time::Instant,
) -> Option<Vec<u8>> {
    use std::io::Read as _;
    let left = deadline
        .saturating_duration_since(weft_lab::now())
        .max(Duration::from_millis(1));
    s.set_read_timeout(Some(left)).ok()?;
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => Some(out),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        // A server that closes with our half-sent bytes unread resets the
        // connection: closed all the same, after what it wrote.
        Err(_) => Some(out),
    }
}

#[test]
fn a_non_root_localapi_flood_neither_slows_root_nor_cuts_the_control_connection()
-> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let lab = lab!();
    // The flood's 1,100 sockets live in this process.
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    ensure!(
        hard >= 2048,
        "the test needs 2048 descriptors, the hard limit is {hard}"
    );
    setrlimit(Resource::RLIMIT_NOFILE, hard.max(soft), hard)?;
    let flooder = weft_lab::account::LocalAccount::create("wlf", "u")?;
    let net = tailnet(&lab)?;
    let control = net.control("ctl")?;
    control.ensure_user("alice")?;
    let key = control.create_key("alice", &KeyOptions::reusable())?;
    // f1 starts the way distributions start daemons: 1,024 descriptors, 4,096 allowed.
    let f1 = net.node_with(
        "f1",
        NodeOptions {
            nofile: Some((1024, 4096)),
            ..NodeOptions::default()
        },
    )?;
    f1.up_with_key(&control, &key)?;
    let f2 = net.node("f2")?;
    f2.up_with_key(&control, &key)?;
    f1.wait_peers_online(&["f2"], SECS(30))?;
    with_diagnostics(
        || {
            let started = weft_lab::now();
            let mut held = flood_as(flooder.uid, f1.socket(), 1100, SECS(30))?;
            let opened = held.len();
            let flood_took = started.elapsed();
            ensure!(
                opened == 1100,
                "only {opened} connections opened in {flood_took:?}"
            );

            // Root's `weft status`, ten times during the flood: each within 1 s.
            let mut worst = Duration::ZERO;
            for _ in 0..10 {
                let t = weft_lab::now();
                let out = f1.weft(["status"]).run_unchecked()?;
                let took = t.elapsed();
                ensure!(out.status.success() && out.stdout.contains("f2"), "{out:?}");
                worst = worst.max(took);
            }
            ensure!(
                worst < SECS(1),
                "root's weft status took {worst:?} under the flood"
            );

            // The node is still connected to control: healthy, and a peer's change arrives.
            let st = f1.status_json()?;
            ensure!(
                st["backend_state"] == "running"
                    && st["health"].as_array().is_some_and(Vec::is_empty),
                "{st}"
            );
            f2.weft(["set", "--hostname", "f2-renamed"]).run()?;
            f1.wait_status(SECS(20), "f2's new name over the map stream", |v| {
                peer(v, "f2-renamed").is_some()
            })?;

            // The flooder got its share and a reason for the rest; its share is closed at the
            // header deadline (10 s), idle or half-sent alike.
            let deadline = started + SECS(10 + 5);
            let (mut refused, mut dropped) = (0, 0);
            for s in &mut held {
                match until_closed(s, deadline) {
                    Some(out) if out.starts_with(b"HTTP/1.1 503") => refused += 1,
                    Some(_) => dropped += 1,
                    None => anyhow::bail!("a connection was still open 15 s after the flood began"),
                }
            }
            ensure!(
                refused == 1100 - 32 && dropped == 32,
                "{refused} refused with a 503, {dropped} closed at the deadline"
            );
            let log = f1.log();
            ensure!(
                log.contains("Raised the open-file limit")
                    && log.contains("LocalAPI connections refused"),
                "{log}"
            );
            ensure!(
                log.matches("LocalAPI connections refused").count() <= 3,
                "the refusals were logged more than once per interval"
            );
            eprintln!(
                "flood: {opened} connections in {flood_took:?}, {refused} refused at once, \
                 {dropped} closed at the header deadline; root's status worst {worst:?}"
            );
            Ok(())
        },
        || report(&control, &[&f1, &f2]),
    )
}

#[test]
fn peer_hostnames_helper_reads_status() {
    // Guards the fixture's parsing against a shape change of status --json.
    let st: serde_json::Value = serde_json::from_str(
        r#"{"peers":[{"hostname":"b"},{"hostname":"a"}],"backend_state":"running"}"#,
    )
    .unwrap();
    assert_eq!(peer_hostnames(&st), vec!["a", "b"]);
    assert!(peer(&st, "b").is_some());
}

/// Two nodes whose UDP to each other is dropped (a firewall between them; control and its relay
/// stay reachable) talk through control's relay from the first packet: ICMP, `weft ping` says
/// `via relay(...)`, `weft status --json` names the region, and a checksummed 32 MiB TCP transfer
/// arrives whole.
#[test]
fn peers_without_udp_between_them_talk_through_the_relay_from_the_first_ping() -> anyhow::Result<()>
{
    let lab = lab!();
    let net = tailnet(&lab)?;
    let control = net.control("ctl")?;
    control.ensure_user("alice")?;
    let key = control.create_key(
        "alice",
        &KeyOptions {
            reusable: true,
            ..KeyOptions::default()
        },
    )?;
    let (r1, r2) = (net.node("r1")?, net.node("r2")?);
    // r1 drops all UDP to and from r2, both ways; everything else (control, relay, STUN) passes.
    r1.netns().drop_udp_with(r2.underlay_addr().into())?;
    with_diagnostics(
        || {
            r2.up_with_key(&control, &key)?;
            r1.up_with_key(&control, &key)?;
            let ip2 = r2.ip4()?;
            #[allow(clippy::disallowed_methods)] // the test measures elapsed wall time
            let started = std::time::Instant::now();
            let out = r1
                .netns()
                .command("ping")
                .args(["-n", "-i", "0.2", "-c", "1", "-w", "10", &ip2.to_string()])
                .timeout(SECS(15))
                .run_unchecked()?;
            let took = started.elapsed();
            ensure!(
                out.stdout.contains("1 received"),
                "no reply through the relay within 10 s: {}{}",
                out.stdout,
                out.stderr
            );
            eprintln!("first ping through the relay answered after {took:?}");
            let out = r1.weft(["ping", "-c", "3", "r2"]).run_unchecked()?;
            ensure!(
                out.stdout.contains("pong from r2") && out.stdout.contains("via relay(weft)"),
                "weft ping r2: {}{}",
                out.stdout,
                out.stderr
            );
            let st = r1.status_json()?;
            let peer = st["peers"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["hostname"] == "r2"))
                .cloned()
                .unwrap_or_default();
            ensure!(peer["relay"] == "weft", "r2 in r1's status: {peer}");
            // netcheck from the node's own socket: UDP to control's STUN works, the public
            // address is the underlay one (no NAT here), and the relay region has a latency.
            let nc: serde_json::Value = r1.weft(["netcheck", "--json"]).json()?;
            ensure!(
                nc["udp"] == true
                    && nc["global_v4"] == format!("{}:41641", r1.underlay_addr())
                    && nc["preferred_region"] == 900
                    && nc["regions"][0]["code"] == "weft"
                    && nc["regions"][0]["latency_ms"].is_f64(),
                "weft netcheck --json: {nc}"
            );
            let text = r1.weft(["netcheck"]).run()?.stdout;
            ensure!(
                text.contains("UDP: true") && text.contains("Nearest relay:"),
                "{text}"
            );
            let dest = SocketAddr::new(ip2.into(), 5201);
            tcp_transfer(r1.netns(), r2.netns(), dest, 32 << 20, SECS(60))?.verify()?;
            Ok(())
        },
        || report(&control, &[&r1, &r2]),
    )
}
