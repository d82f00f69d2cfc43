//! `weftd wg` as a plain WireGuard device, end to end: against Debian's wireguard-go and against
//! itself, configured only with `wg`, in network namespaces made by weft-lab.
//!
//! Needs root, `wg`, `wireguard-go`, `ping`, `nft` and `/dev/net/tun`; skips without them unless
//! `WEFT_E2E=1`. Every step has a time limit, and a failure carries both daemons' logs, `wg show`
//! and `weftd wg-stats`, gathered while the daemons still run.
//!
//! Harness self-check: `WEFT_WG_UNDER_TEST=wireguard-go` puts wireguard-go where weftd would be,
//! which validates the tests themselves; the weftd-only counter checks are then skipped.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use weft_lab::{
    Lab, Netns, Signal, WgDaemon, WgDevice, WgDump, WgKeyPair, XorShift, e2e_lab, tcp_transfer,
    uapi_errno, wait_for, wait_until, wg_socket_path, with_diagnostics,
};

const WEFTD: &str = env!("CARGO_BIN_EXE_weftd");
const PORT: u16 = 51820;
const MTU: u32 = 1420;
const MIB: u64 = 1 << 20;
const BULK: u64 = 64 * MIB;
const A_TUN: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const B_TUN: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
const C_TUN: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 3);

/// First line of each test: a Lab, or a skip (a failure under `WEFT_E2E=1`) without the tools.
macro_rules! lab {
    () => {
        e2e_lab!("wg", "wireguard-go", "ping", "nft", "/dev/net/tun")
    };
}

/// The implementation under test: weftd, unless the harness self-check asks for wireguard-go.
fn under_test() -> WgDaemon {
    match std::env::var("WEFT_WG_UNDER_TEST").as_deref() {
        Ok("wireguard-go") => WgDaemon::wireguard_go(),
        _ => WgDaemon::weftd(WEFTD),
    }
}

fn is_weftd(dev: &WgDevice) -> bool {
    dev.daemon.program == WEFTD
}

/// Returns `weftd wg-stats` of a weftd device as name → value (`None` for other daemons).
fn wg_stats(dev: &WgDevice) -> anyhow::Result<Option<BTreeMap<String, u64>>> {
    if !is_weftd(dev) {
        return Ok(None);
    }
    let out = dev.netns.exec(WEFTD, ["wg-stats", &dev.ifname])?;
    let stats: BTreeMap<String, u64> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| *k != "errno")
        .map(|(k, v)| {
            Ok((
                k.to_owned(),
                v.trim()
                    .parse()
                    .with_context(|| format!("wg-stats line {k}={v}"))?,
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    ensure!(
        stats.contains_key("rx_datagrams") && stats.contains_key("tx_packets"),
        "wg-stats printed:\n{}",
        out.stdout
    );
    Ok(Some(stats))
}

fn drops_total(stats: &BTreeMap<String, u64>) -> u64 {
    stats
        .iter()
        .filter(|(k, _)| k.starts_with("drop_"))
        .map(|(_, v)| v)
        .sum()
}

fn report(devs: &[&WgDevice]) -> String {
    devs.iter()
        .map(|d| {
            let stats = match wg_stats(d) {
                Ok(Some(s)) => format!("--- weftd wg-stats {}\n{s:?}\n", d.ifname),
                Ok(None) => String::new(),
                Err(e) => format!("--- weftd wg-stats {} failed: {e:#}\n", d.ifname),
            };
            format!("{}\n{stats}", d.report())
        })
        .collect()
}

/// Two namespaces joined by a veth, a WireGuard device in each, peered with each other through
/// `wg setconf` (each knows the other's endpoint, so either side can initiate).
struct Pair {
    a: Netns,
    b: Netns,
    wa: WgDevice,
    wb: WgDevice,
    ka: WgKeyPair,
    kb: WgKeyPair,
}

fn interface_conf(key: &WgKeyPair) -> String {
    format!(
        "[Interface]\nPrivateKey = {}\nListenPort = {PORT}\n",
        key.private
    )
}

fn peer_conf(key: &WgKeyPair, endpoint: Ipv4Addr, allowed: Ipv4Addr) -> String {
    format!(
        "\n[Peer]\nPublicKey = {}\nEndpoint = {endpoint}:{PORT}\nAllowedIPs = {allowed}/32\n",
        key.public
    )
}

fn pair(lab: &Lab, da: &WgDaemon, db: &WgDaemon) -> anyhow::Result<Pair> {
    let (a, b) = (lab.netns("a")?, lab.netns("b")?);
    for ns in [&a, &b] {
        ns.disable_ipv6()?;
    }
    let link = lab.link(&a, &b)?;
    let wa = WgDevice::start(lab, &a, da)?;
    let wb = WgDevice::start(lab, &b, db)?;
    let (ka, kb) = (WgKeyPair::generate()?, WgKeyPair::generate()?);
    wa.setconf(&(interface_conf(&ka) + &peer_conf(&kb, link.b.addr, B_TUN)))?;
    wb.setconf(&(interface_conf(&kb) + &peer_conf(&ka, link.a.addr, A_TUN)))?;
    wa.up(&format!("{A_TUN}/24"), MTU)?;
    wb.up(&format!("{B_TUN}/24"), MTU)?;
    Ok(Pair {
        a,
        b,
        wa,
        wb,
        ka,
        kb,
    })
}

impl Pair {
    fn report(&self) -> String {
        report(&[&self.wa, &self.wb])
    }

    fn ping_both_ways(&self) -> anyhow::Result<()> {
        self.a
            .wait_ping(IpAddr::V4(B_TUN), Duration::from_secs(20))
            .context("first ping a -> b (handshake)")?;
        self.a.ping(IpAddr::V4(B_TUN), 5).context("ping a -> b")?;
        self.b.ping(IpAddr::V4(A_TUN), 5).context("ping b -> a")?;
        Ok(())
    }
}

fn peer_in(dump: &WgDump, key: &WgKeyPair) -> anyhow::Result<weft_lab::WgPeerDump> {
    dump.peer(&key.public)
        .cloned()
        .with_context(|| format!("peer {} missing from {dump:?}", key.public))
}

#[allow(clippy::disallowed_methods)] // comparing with wg's wall-clock handshake time
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Sends `bytes` from `from` to `to` through the tunnel and checks checksums and both devices'
/// byte counters: the sender's tx and the receiver's rx grew by at least `bytes` (plus at most
/// 25% overhead and retransmissions, plus 4 MiB), the reverse direction (ACKs) by less than
/// a quarter of it.
fn transfer_and_check_counters(
    (from, wfrom, kfrom): (&Netns, &WgDevice, &WgKeyPair),
    (to, wto, kto): (&Netns, &WgDevice, &WgKeyPair),
    to_addr: Ipv4Addr,
    bytes: u64,
) -> anyhow::Result<()> {
    let (f0, t0) = (peer_in(&wfrom.dump()?, kto)?, peer_in(&wto.dump()?, kfrom)?);
    let dest = SocketAddr::new(IpAddr::V4(to_addr), 5001);
    let report = tcp_transfer(from, to, dest, bytes, Duration::from_secs(120))?;
    report.verify()?;
    eprintln!(
        "{} -> {}: {} MiB in {:?} ({:.3} Gbit/s)",
        wfrom.daemon.label,
        wto.daemon.label,
        bytes / MIB,
        report.elapsed,
        report.gbit_per_s()
    );
    let (f1, t1) = (peer_in(&wfrom.dump()?, kto)?, peer_in(&wto.dump()?, kfrom)?);
    let sent = f1.tx_bytes - f0.tx_bytes;
    let received = t1.rx_bytes - t0.rx_bytes;
    let upper = bytes + bytes / 4 + 4 * MIB;
    for (what, v) in [("sender tx", sent), ("receiver rx", received)] {
        ensure!(
            (bytes..=upper).contains(&v),
            "{what} counter grew by {v} bytes for a {bytes}-byte transfer (expected {bytes}..={upper})"
        );
    }
    let (acks_out, acks_in) = (t1.tx_bytes - t0.tx_bytes, f1.rx_bytes - f0.rx_bytes);
    for (what, v) in [("receiver tx", acks_out), ("sender rx", acks_in)] {
        ensure!(
            v > 0 && v < bytes / 4,
            "{what} (ACK direction) grew by {v} bytes for a {bytes}-byte transfer"
        );
    }
    let now = unix_now();
    for (who, p) in [(&wfrom.ifname, &f1), (&wto.ifname, &t1)] {
        ensure!(
            p.latest_handshake > 0
                && p.latest_handshake + 300 >= now
                && p.latest_handshake <= now + 5,
            "{who}: latest handshake {} is not recent (now {now})",
            p.latest_handshake
        );
    }
    Ok(())
}

/// Ping both ways, 64 MiB a -> b and 16 MiB b -> a with checksums and counter checks.
fn interop(da: &WgDaemon, db: &WgDaemon) -> anyhow::Result<()> {
    let lab = lab!();
    let p = pair(&lab, da, db)?;
    with_diagnostics(
        || {
            p.ping_both_ways()?;
            transfer_and_check_counters((&p.a, &p.wa, &p.ka), (&p.b, &p.wb, &p.kb), B_TUN, BULK)
                .context("a -> b")?;
            transfer_and_check_counters(
                (&p.b, &p.wb, &p.kb),
                (&p.a, &p.wa, &p.ka),
                A_TUN,
                BULK / 4,
            )
            .context("b -> a")?;
            p.wa.process.ensure_running()?;
            p.wb.process.ensure_running()?;
            Ok(())
        },
        || p.report(),
    )
}

#[test]
fn weftd_and_wireguard_go_ping_both_ways_and_carry_64_mib_intact() -> anyhow::Result<()> {
    interop(&under_test(), &WgDaemon::wireguard_go())
}

#[test]
fn two_weftd_devices_ping_both_ways_and_carry_64_mib_intact() -> anyhow::Result<()> {
    interop(&under_test(), &under_test())
}

/// Returns the `packets` value of named nft counter `weft-lab c` in `ns`.
fn nft_counter(ns: &Netns, name: &str) -> anyhow::Result<u64> {
    let out = ns.exec("nft", ["list", "counter", "inet", "weft-lab", name])?;
    let packets = out
        .stdout
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1);
    packets
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no packet count in:\n{}", out.stdout))
}

#[test]
fn a_peer_with_an_unknown_key_gets_no_answer() -> anyhow::Result<()> {
    let lab = lab!();
    let p = pair(&lab, &under_test(), &WgDaemon::wireguard_go())?;
    // The stranger: a wireguard-go that knows a's public key and endpoint; a does not know it.
    let c = lab.netns("c")?;
    c.disable_ipv6()?;
    let ac = lab.link(&p.a, &c)?;
    let wc = WgDevice::start(&lab, &c, &WgDaemon::wireguard_go())?;
    let kc = WgKeyPair::generate()?;
    wc.setconf(&(interface_conf(&kc) + &peer_conf(&p.ka, ac.a.addr, A_TUN)))?;
    wc.up(&format!("{C_TUN}/24"), MTU)?;
    // Count every UDP datagram that reaches c from a's WireGuard port: there must be none.
    c.nft(&format!(
        "table inet weft-lab {{\n counter from_a {{ }}\n chain input {{\n  type filter hook input priority 0; policy accept;\n  ip saddr {} udp sport {PORT} counter name from_a\n }}\n}}\n",
        ac.a.addr
    ))?;
    with_diagnostics(
        || {
            p.ping_both_ways()?;
            let stats0 = wg_stats(&p.wa)?;
            // Traffic from the stranger makes it send handshake initiations (every ~5 s).
            let pinger = c.spawn(
                "stranger-ping",
                "ping",
                ["-n", "-c", "12", "-i", "1", "-W", "1", &A_TUN.to_string()],
            )?;
            wait_until(
                Duration::from_secs(20),
                "the stranger to send two handshake initiations (2 x 148 bytes)",
                || {
                    let tx = peer_in(&wc.dump()?, &p.ka)?.tx_bytes;
                    ensure!(tx >= 2 * 148, "stranger tx_bytes = {tx}");
                    Ok(true)
                },
            )?;
            if let Some(s0) = stats0 {
                wait_until(
                    Duration::from_secs(10),
                    "weftd to count the stranger's initiations as unknown_peer drops",
                    || {
                        let s1 = wg_stats(&p.wa)?.context("weftd stats vanished")?;
                        let d = s1.get("drop_unknown_peer").copied().unwrap_or(0)
                            - s0.get("drop_unknown_peer").copied().unwrap_or(0);
                        ensure!(d >= 2, "drop_unknown_peer grew by {d}; stats now {s1:?}");
                        Ok(true)
                    },
                )?;
            }
            drop(pinger);
            let stranger = peer_in(&wc.dump()?, &p.ka)?;
            ensure!(
                stranger.latest_handshake == 0,
                "the stranger completed a handshake: {stranger:?}"
            );
            ensure!(
                stranger.rx_bytes == 0,
                "the stranger received {} bytes from a",
                stranger.rx_bytes
            );
            let answers = nft_counter(&c, "from_a")?;
            ensure!(
                answers == 0,
                "{answers} datagrams from a's WireGuard port reached the stranger"
            );
            let known = wc_dump_peers(&p.wa)?;
            ensure!(
                known == [p.kb.public.clone()],
                "a's peers changed: {known:?}"
            );
            // The real peer still works.
            p.a.ping(IpAddr::V4(B_TUN), 3)
                .context("a -> b after the stranger's attempts")?;
            Ok(())
        },
        || format!("{}{}", p.report(), report(&[&wc])),
    )
}

fn wc_dump_peers(dev: &WgDevice) -> anyhow::Result<Vec<String>> {
    Ok(dev
        .dump()?
        .peers
        .into_iter()
        .map(|p| p.public_key)
        .collect())
}

/// 10,000 datagrams of garbage: lengths that sit on and next to every WireGuard message size,
/// plus random ones up to 65,000 bytes; first bytes of every message type and others; reserved
/// bytes zero half the time so that they look like real headers.
fn garbage(rng: &mut XorShift) -> Vec<u8> {
    const LENGTHS: [usize; 17] = [
        0, 1, 3, 4, 5, 16, 31, 32, 33, 63, 64, 65, 91, 92, 93, 148, 1500,
    ];
    let len = match rng.below(100) {
        0 => 65_000 - rng.below(500) as usize,
        1..=60 => LENGTHS[rng.below(LENGTHS.len() as u64) as usize],
        61..=70 => 147 + rng.below(3) as usize,
        _ => rng.below(1501) as usize,
    };
    let mut d = vec![0u8; len];
    rng.fill(&mut d);
    if let Some(first) = d.first_mut() {
        *first = match rng.below(6) {
            0..=3 => 1 + rng.below(4) as u8, // handshake init, response, cookie, data
            4 => 0,
            _ => *first,
        };
    }
    if rng.below(2) == 0 {
        for b in d.iter_mut().skip(1).take(3) {
            *b = 0;
        }
    }
    d
}

#[test]
fn garbage_datagrams_are_dropped_and_counted_and_traffic_still_flows() -> anyhow::Result<()> {
    const COUNT: u64 = 10_000;
    let lab = lab!();
    let p = pair(&lab, &under_test(), &WgDaemon::wireguard_go())?;
    let c = lab.netns("c")?;
    c.disable_ipv6()?;
    let ac = lab.link(&p.a, &c)?;
    with_diagnostics(
        || {
            p.ping_both_ways()?;
            let (stats0, snmp0) = (wg_stats(&p.wa)?, p.a.snmp()?);
            let sock = c.udp_socket(SocketAddr::new(IpAddr::V4(ac.b.addr), 0))?;
            let target = SocketAddr::new(IpAddr::V4(ac.a.addr), PORT);
            let mut rng = XorShift::new(u64::from(lab.id().tag) << 16 | 0xbad);
            let mut sizes = [0u64; 4];
            for i in 0..COUNT {
                let d = garbage(&mut rng);
                sizes[usize::from(!d.is_empty())
                    + usize::from(d.len() > 200)
                    + usize::from(d.len() > 1500)] += 1;
                sock.send_to(&d, target)
                    .with_context(|| format!("sending garbage datagram {i} ({} bytes)", d.len()))?;
                // Paced so that the receiver's socket buffer does not overflow: the point is what
                // weftd does with the datagrams, not what the kernel drops before it sees them.
                if d.len() > 1500 {
                    std::thread::sleep(Duration::from_millis(3));
                } else if i % 20 == 19 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            eprintln!(
                "garbage sizes: empty: {}, 1..=200: {}, 201..=1500: {}, >1500: {}",
                sizes[0], sizes[1], sizes[2], sizes[3]
            );
            let snmp = |s: &BTreeMap<String, i64>, k: &str| s.get(k).copied().unwrap_or(0);
            let lost_in_kernel = wait_for(
                Duration::from_secs(10),
                "a's UDP counters to settle",
                || {
                    let s1 = p.a.snmp()?;
                    let lost = ["Udp.RcvbufErrors", "Udp.InErrors", "Ip.ReasmFails"]
                        .iter()
                        .map(|k| snmp(&s1, k) - snmp(&snmp0, k))
                        .sum::<i64>();
                    let delivered = snmp(&s1, "Udp.InDatagrams") - snmp(&snmp0, "Udp.InDatagrams");
                    Ok((delivered + lost >= COUNT as i64)
                        .then_some(u64::try_from(lost).unwrap_or(0)))
                },
            )?;
            ensure!(
                lost_in_kernel < COUNT / 10,
                "the kernel dropped {lost_in_kernel} of {COUNT} datagrams before weftd: pacing too fast to test anything"
            );
            p.wa.process
                .ensure_running()
                .context("weftd died from garbage")?;
            if let Some(s0) = stats0 {
                let expected = COUNT - lost_in_kernel;
                wait_until(
                    Duration::from_secs(20),
                    &format!("weftd to receive and drop {expected} garbage datagrams"),
                    || {
                        let s1 = wg_stats(&p.wa)?.context("weftd stats vanished")?;
                        let rx = s1["rx_datagrams"] - s0["rx_datagrams"];
                        let dropped = drops_total(&s1) - drops_total(&s0);
                        ensure!(
                            rx >= expected && dropped >= expected,
                            "rx_datagrams +{rx}, drops +{dropped}; stats now {s1:?}"
                        );
                        Ok(true)
                    },
                )?;
                let s1 = wg_stats(&p.wa)?.context("weftd stats vanished")?;
                eprintln!(
                    "weftd drops after garbage: {:?}",
                    s1.iter()
                        .filter(|(k, v)| k.starts_with("drop_") && **v > 0)
                        .collect::<Vec<_>>()
                );
            }
            // Still a working tunnel, both ways.
            p.a.ping(IpAddr::V4(B_TUN), 3)
                .context("ping a -> b after garbage")?;
            p.b.ping(IpAddr::V4(A_TUN), 3)
                .context("ping b -> a after garbage")?;
            transfer_and_check_counters((&p.a, &p.wa, &p.ka), (&p.b, &p.wb, &p.kb), B_TUN, 4 * MIB)
                .context("a -> b after garbage")?;
            transfer_and_check_counters((&p.b, &p.wb, &p.kb), (&p.a, &p.wa, &p.ka), A_TUN, 4 * MIB)
                .context("b -> a after garbage")?;
            p.wa.process.ensure_running()?;
            Ok(())
        },
        || p.report(),
    )
}

#[test]
fn malformed_configuration_is_rejected_and_leaves_the_device_unchanged() -> anyhow::Result<()> {
    let lab = lab!();
    let p = pair(&lab, &under_test(), &WgDaemon::wireguard_go())?;
    let dev = &p.wa;
    with_diagnostics(
        || {
            p.ping_both_ways()?;
            let before = (dev.showconf()?, wc_dump_peers(dev)?);
            // Through wg: refused (wg checks much itself; the device must not change either way).
            let peer = p.kb.public.as_str();
            for args in [
                vec!["set", &dev.ifname, "listen-port", "notaport"],
                vec!["set", &dev.ifname, "peer", "not-a-key"],
                vec![
                    "set",
                    &dev.ifname,
                    "peer",
                    peer,
                    "allowed-ips",
                    "300.1.1.1/32",
                ],
                vec!["set", &dev.ifname, "peer", peer, "endpoint", "no-port-here"],
                vec!["set", &dev.ifname, "private-key", "/nonexistent/key/file"],
            ] {
                let out = dev.netns.command("wg").args(&args).run_unchecked()?;
                ensure!(
                    !out.status.success(),
                    "`wg {}` was accepted:\n{}{}",
                    args.join(" "),
                    out.stdout,
                    out.stderr
                );
            }
            // Straight to the UAPI socket: input wg would never send. Each must get errno != 0.
            let b = p.kb.public_hex()?;
            let requests = [
                "set=1\nlisten_port=notaport\n\n".to_owned(),
                "set=1\nlisten_port=70000\n\n".to_owned(),
                "set=1\nlisten_port\n\n".to_owned(),
                "set=1\nprivate_key=zz\n\n".to_owned(),
                format!("set=1\nprivate_key={}\n\n", "a".repeat(63)),
                "set=1\nfwmark=abc\n\n".to_owned(),
                "set=1\nno_such_key=1\n\n".to_owned(),
                "set=1\nreplace_peers=maybe\n\n".to_owned(),
                "set=1\nallowed_ip=100.64.9.0/24\n\n".to_owned(),
                "set=1\npublic_key=nothex\n\n".to_owned(),
                format!("set=1\npublic_key={}\n\n", &b[..62]),
                format!("set=1\npublic_key={b}\nendpoint=not-an-endpoint\n\n"),
                format!("set=1\npublic_key={b}\nendpoint=198.18.0.1:99999\n\n"),
                format!("set=1\npublic_key={b}\nallowed_ip=300.1.1.1/32\n\n"),
                format!("set=1\npublic_key={b}\nallowed_ip=100.64.0.0/33\n\n"),
                format!("set=1\npublic_key={b}\nallowed_ip=100.64.0.0\n\n"),
                format!("set=1\npublic_key={b}\npersistent_keepalive_interval=-1\n\n"),
                format!("set=1\npublic_key={b}\npersistent_keepalive_interval=65536\n\n"),
                format!("set=1\npublic_key={b}\npreshared_key=xyz\n\n"),
                format!("set=1\npublic_key={b}\nprotocol_version=2\n\n"),
                format!("set=1\npublic_key={b}\nremove=maybe\n\n"),
            ];
            for req in &requests {
                let resp = dev
                    .uapi(req)
                    .with_context(|| format!("UAPI request {req:?}"))?;
                match uapi_errno(&resp) {
                    Some(0) | None => {
                        bail!("malformed UAPI request {req:?} was not rejected: response {resp:?}")
                    }
                    Some(_) => {}
                }
                dev.process
                    .ensure_running()
                    .with_context(|| format!("after UAPI request {req:?}"))?;
            }
            let after = (dev.showconf()?, wc_dump_peers(dev)?);
            ensure!(
                before == after,
                "device state changed:\n--- before\n{}\n--- after\n{}",
                before.0,
                after.0
            );
            // The socket still serves valid requests, and they do change the state.
            dev.wg([
                "set",
                &dev.ifname,
                "peer",
                peer,
                "persistent-keepalive",
                "25",
            ])?;
            let changed = dev.showconf()?;
            ensure!(
                changed.contains("PersistentKeepalive = 25"),
                "valid set had no effect:\n{changed}"
            );
            p.a.ping(IpAddr::V4(B_TUN), 2)?;
            Ok(())
        },
        || p.report(),
    )
}

fn stops_cleanly_on(signal: Signal) -> anyhow::Result<()> {
    let lab = lab!();
    let a = lab.netns("a")?;
    let dev = WgDevice::start(&lab, &a, &under_test())?;
    let key = WgKeyPair::generate()?;
    dev.setconf(&interface_conf(&key))?;
    dev.up(&format!("{A_TUN}/24"), MTU)?;
    let sock = wg_socket_path(&dev.ifname);
    ensure!(sock.exists() && a.has_link(&dev.ifname), "device not up");
    dev.process.signal(signal)?;
    let status = dev
        .process
        .wait_exit(Duration::from_secs(10))
        .map_err(|e| anyhow::anyhow!("{e}\n{}", dev.report()))?;
    ensure!(
        status.success(),
        "{} exited with {status} after {signal}:\n{}",
        dev.daemon.label,
        dev.process.log()
    );
    ensure!(
        !sock.exists(),
        "{} is still there after {signal}",
        sock.display()
    );
    ensure!(
        !a.has_link(&dev.ifname),
        "TUN {} is still there after {signal}",
        dev.ifname
    );
    Ok(())
}

#[test]
fn weftd_wg_exits_cleanly_on_sigterm_removing_its_socket_and_tun() -> anyhow::Result<()> {
    stops_cleanly_on(Signal::SIGTERM)
}

#[test]
fn weftd_wg_exits_cleanly_on_sigint_removing_its_socket_and_tun() -> anyhow::Result<()> {
    stops_cleanly_on(Signal::SIGINT)
}
