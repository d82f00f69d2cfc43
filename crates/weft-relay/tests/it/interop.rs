//! Interop with the real thing: Tailscale 1.82.5's `derper`, `derpprobe`,
//! `stunc` and `stund` (found through `WEFT_TAILSCALE_TOOLS`, which .ci/run
//! sets), against the `weft-relay` binary and this crate's client and STUN
//! codec. Everything runs in network namespaces of the test's own; needs
//! root, skipped without it unless `WEFT_E2E=1`.
//!
//! Topology: `cli` ── `relay` (a direct link), and for STUN
//! `cli` ── `nat` ── `relay`, where `nat` rewrites the source of UDP to the
//! STUN ports to its own address and port 40000, so the reflexive address
//! the servers report is one the client could not have told them.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use weft_lab::{Lab, Netns, e2e_strict, with_diagnostics};
use weft_relay::{ClientConfig, RelayNode};

use super::*;

/// The environment variable naming the directory of Tailscale's tools.
const TOOLS_ENV: &str = "WEFT_TAILSCALE_TOOLS";
const DERP_NAME: &str = "derp.test";
const DERP_PORT: u16 = 8443;
const STUN_PORT: u16 = 3478;
const STUND_PORT: u16 = 3479;
/// The port the NAT router maps STUN clients to.
const MAPPED_PORT: u16 = 40000;

/// Returns the path of Tailscale's `program`, or `None` (skip) when the
/// tools are not configured; under `WEFT_E2E=1` that is a failure.
fn tool(program: &str) -> Option<String> {
    match std::env::var(TOOLS_ENV) {
        Ok(dir) => Some(Path::new(&dir).join(program).to_string_lossy().into_owned()),
        Err(_) => {
            let msg = format!(
                "{TOOLS_ENV} is not set: point it at the directory holding Tailscale's derper, derpprobe, \
                 stunc and stund (e.g. /work/shared/tools/tailscale-1.82.5; .ci/run exports it)"
            );
            assert!(!e2e_strict(), "{msg}");
            eprintln!("SKIP {}: {msg}", weft_lab::current_test_name());
            None
        }
    }
}

const RELAY_BIN: &str = env!("CARGO_BIN_EXE_weft-relay");

/// `/etc/netns/<ns>/` files (what `ip netns exec` binds over `/etc`), so
/// Go programs resolve the test name; removed on drop.
struct EtcNetns(PathBuf);

impl EtcNetns {
    fn hosts(ns: &Netns, lines: &str) -> anyhow::Result<Self> {
        let dir = Path::new("/etc/netns").join(ns.name());
        std::fs::create_dir_all(&dir)?;
        let guard = EtcNetns(dir.clone());
        std::fs::write(dir.join("hosts"), format!("127.0.0.1 localhost\n{lines}\n"))?;
        // No name servers: nothing may leave the namespace anyway.
        std::fs::write(dir.join("resolv.conf"), "options timeout:1 attempts:1\n")?;
        Ok(guard)
    }
}

impl Drop for EtcNetns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The direct topology: `cli` and `relay`, certificates for derp.test, a
/// DERP map naming the relay.
struct Direct {
    lab: Lab,
    cli: Netns,
    relay: Netns,
    relay_ip: Ipv4Addr,
    certs: PathBuf,
    map: PathBuf,
    _etc: EtcNetns,
}

fn direct(lab: Lab) -> anyhow::Result<Direct> {
    let (cli, relay) = (lab.netns("cli")?, lab.netns("relay")?);
    let link = lab.link(&cli, &relay)?;
    let relay_ip = link.b.addr;
    let certs = lab.dir().join("certs");
    std::fs::create_dir_all(&certs)?;
    make_certs(&certs, DERP_NAME);
    let map = lab.dir().join("derpmap.json");
    std::fs::write(
        &map,
        format!(
            r#"{{"Regions":{{"900":{{"RegionID":900,"RegionCode":"test","RegionName":"Test","Nodes":[
              {{"Name":"900a","RegionID":900,"HostName":"{DERP_NAME}","IPv4":"{relay_ip}","IPv6":"none","DERPPort":{DERP_PORT},"STUNPort":{STUN_PORT}}}]}}}}}}"#
        ),
    )?;
    let etc = EtcNetns::hosts(&cli, &format!("{relay_ip} {DERP_NAME}"))?;
    Ok(Direct {
        lab,
        cli,
        relay,
        relay_ip,
        certs,
        map,
        _etc: etc,
    })
}

/// Starts the weft-relay binary in `relay` on `ip`: TLS on 8443 and STUN on
/// 3478, admitting any key (Tailscale's probers use random keys).
fn start_weft_relay(d: &Direct) -> anyhow::Result<weft_lab::Process> {
    let p = d
        .relay
        .command(RELAY_BIN)
        .args([
            "--listen",
            &format!("{}:{DERP_PORT}", d.relay_ip),
            "--tls-cert",
            &d.certs.join(format!("{DERP_NAME}.crt")).to_string_lossy(),
            "--tls-key",
            &d.certs.join(format!("{DERP_NAME}.key")).to_string_lossy(),
            "--key-file",
            &d.lab.dir().join("relay.key").to_string_lossy(),
            "--stun-listen",
            &format!("{}:{STUN_PORT}", d.relay_ip),
            "--admit-any-key-insecure",
        ])
        .env("RUST_LOG", "info,weft_relay=debug")
        .spawn("weft-relay")?;
    d.relay
        .wait_tcp_listen(DERP_PORT, Duration::from_secs(10))?;
    Ok(p)
}

#[test]
fn derpprobe_finds_the_weft_relay_mesh_and_stun_good() -> anyhow::Result<()> {
    let Some(derpprobe) = tool("derpprobe") else {
        return Ok(());
    };
    let lab = weft_lab::e2e_lab!(derpprobe.as_str());
    let d = direct(lab)?;
    let relay = start_weft_relay(&d)?;
    with_diagnostics(
        || {
            let out = d
                .cli
                .command(&derpprobe)
                .args([
                    "--derp-map",
                    &format!("file://{}", d.map.display()),
                    "--once",
                ])
                .env("SSL_CERT_FILE", d.certs.join("ca.pem").to_string_lossy())
                .timeout(Duration::from_secs(90))
                .run_unchecked()?;
            let text = format!("{}{}", out.stdout, out.stderr);
            // The TLS probe judges a production certificate (expiry, OCSP)
            // and fails on any test certificate, derper's too; mesh and STUN
            // are the relay's.
            for want in ["good: derp/test/900a/900a/mesh", "good: derp/test/900a/udp"] {
                if !text.contains(want) {
                    bail!("derpprobe did not report {want:?}:\n{text}");
                }
            }
            Ok(())
        },
        || relay.report(),
    )
}

/// Runs `f` with a Tokio runtime on a thread inside `ns` (sockets made there
/// belong to the namespace).
fn in_netns<T: Send>(
    ns: &Netns,
    f: impl AsyncFnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    ns.enter(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(f())
    })?
}

/// Two weft clients exchange packets both ways through the DERP server at
/// `relay_ip`: 2,000 packets of 1,200 bytes each way, at most 16 in flight
/// (derper queues 32 per client), plus a ping.
fn exchange_through(d: &Direct) -> anyhow::Result<()> {
    let node = RelayNode {
        host_name: DERP_NAME.into(),
        port: DERP_PORT,
        tls: true,
        addrs: vec![SocketAddr::from((d.relay_ip, DERP_PORT))],
    };
    let ca = d.certs.join("ca.pem");
    in_netns(&d.cli, async || {
        let (ka, kb) = (node_key(), node_key());
        let config = |k: &NodePrivate| {
            let mut c = ClientConfig::new(k.clone(), node.clone());
            c.ca_file = Some(ca.clone());
            c
        };
        let (a, mut ea) = connected(config(&ka)).await;
        let (b, mut eb) = connected(config(&kb)).await;
        let rtt = a.ping(WAIT).await.context("ping through the relay")?;
        const N: u32 = 2000;
        const WINDOW: u32 = 16;
        let packet = |i: u32| {
            let mut p = vec![(i % 251) as u8; 1200];
            p[..4].copy_from_slice(&i.to_be_bytes());
            p
        };
        let mut sent = 0;
        while sent < WINDOW {
            a.send(&kb.public(), &packet(sent))?;
            sent += 1;
        }
        for i in 0..N {
            let (src, data) = next_packet(&mut eb).await;
            if src != ka.public() || data[..] != packet(i)[..] {
                bail!("packet {i}: wrong source or content");
            }
            b.send(&ka.public(), &data)?;
            let (src, back) = next_packet(&mut ea).await;
            if src != kb.public() || back != data {
                bail!("echo {i}: wrong source or content");
            }
            if sent < N {
                a.send(&kb.public(), &packet(sent))?;
                sent += 1;
            }
        }
        eprintln!("{N} packets each way, relay RTT {rtt:?}");
        Ok(())
    })
}

#[test]
fn weft_clients_exchange_packets_through_tailscales_derper() -> anyhow::Result<()> {
    let Some(derper) = tool("derper") else {
        return Ok(());
    };
    let lab = weft_lab::e2e_lab!(derper.as_str());
    let d = direct(lab)?;
    let server = d
        .relay
        .command(&derper)
        .args([
            "-a",
            &format!("{}:{DERP_PORT}", d.relay_ip),
            "--certmode",
            "manual",
            "--certdir",
            &d.certs.to_string_lossy(),
            "--hostname",
            DERP_NAME,
            "-http-port",
            "-1",
            "--stun=false",
        ])
        .spawn("derper")?;
    d.relay
        .wait_tcp_listen(DERP_PORT, Duration::from_secs(10))?;
    with_diagnostics(|| exchange_through(&d), || server.report())
}

#[test]
fn weft_clients_exchange_packets_through_the_weft_relay_binary() -> anyhow::Result<()> {
    let lab = weft_lab::e2e_lab!();
    let d = direct(lab)?;
    let relay = start_weft_relay(&d)?;
    with_diagnostics(|| exchange_through(&d), || relay.report())
}

/// The NAT topology: `cli` → `nat` → `relay`; `nat` maps UDP to the STUN
/// ports to its own address, port 40000.
struct Natted {
    _lab: Lab,
    cli: Netns,
    relay: Netns,
    relay_ip: Ipv4Addr,
    public: SocketAddr,
    cli_ip: Ipv4Addr,
}

fn natted(lab: Lab) -> anyhow::Result<Natted> {
    let (cli, nat, relay) = (lab.netns("cli")?, lab.router("nat")?, lab.netns("relay")?);
    let inside = lab.link(&cli, &nat)?;
    let outside = lab.link(&nat, &relay)?;
    cli.add_route("default", inside.b.addr.into())?;
    nat.nft(&format!(
        "table ip weft-stun-nat {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
         oifname \"{}\" udp dport {{ {STUN_PORT}, {STUND_PORT} }} snat to {}:{MAPPED_PORT}\n  }}\n}}\n",
        outside.a.ifname, outside.a.addr
    ))?;
    Ok(Natted {
        _lab: lab,
        cli,
        relay,
        relay_ip: outside.b.addr,
        public: SocketAddr::from((outside.a.addr, MAPPED_PORT)),
        cli_ip: inside.a.addr,
    })
}

#[test]
fn stunc_learns_its_address_behind_a_nat_from_the_weft_relay() -> anyhow::Result<()> {
    let Some(stunc) = tool("stunc") else {
        return Ok(());
    };
    let lab = weft_lab::e2e_lab!(stunc.as_str(), "nft");
    let key_file = lab.dir().join("relay.key");
    let n = natted(lab)?;
    let relay = n
        .relay
        .command(RELAY_BIN)
        .args([
            "--listen",
            &format!("{}:8080", n.relay_ip),
            "--key-file",
            &key_file.to_string_lossy(),
            "--stun-listen",
            &format!("{}:{STUN_PORT}", n.relay_ip),
            "--admit-any-key-insecure",
        ])
        .spawn("weft-relay")?;
    n.relay.wait_tcp_listen(8080, Duration::from_secs(10))?;
    with_diagnostics(
        || {
            let out = n
                .cli
                .command(&stunc)
                .args([&n.relay_ip.to_string(), &STUN_PORT.to_string()])
                .timeout(Duration::from_secs(20))
                .run()?;
            let text = format!("{}{}", out.stdout, out.stderr);
            let got = text
                .lines()
                .find_map(|l| l.strip_prefix("stun addr: "))
                .with_context(|| format!("no `stun addr:` in stunc's output:\n{text}"))?;
            if got.trim() != n.public.to_string() {
                bail!(
                    "stunc was told {got}, expected the NAT's {} (its own address is {})",
                    n.public,
                    n.cli_ip
                );
            }
            Ok(())
        },
        || relay.report(),
    )
}

#[test]
fn our_stun_request_is_answered_by_tailscales_stund_with_the_nat_address() -> anyhow::Result<()> {
    let Some(stund) = tool("stund") else {
        return Ok(());
    };
    let lab = weft_lab::e2e_lab!(stund.as_str(), "nft");
    let n = natted(lab)?;
    let server = n
        .relay
        .command(&stund)
        .args([
            "--stun",
            &format!("{}:{STUND_PORT}", n.relay_ip),
            "--http",
            "127.0.0.1:3480",
        ])
        .spawn("stund")?;
    n.relay.wait_tcp_listen(3480, Duration::from_secs(10))?;
    let target = SocketAddr::from((n.relay_ip, STUND_PORT));
    let sock = n.cli.udp_socket("0.0.0.0:0".parse()?)?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    with_diagnostics(
        || {
            use weft_disco::stun::{
                BINDING_REQUEST_LEN, TxId, parse_binding_response, write_binding_request,
            };
            let tx = TxId(weft_types::entropy::bytes());
            let mut req = [0u8; BINDING_REQUEST_LEN];
            let len = write_binding_request(tx, &mut req)?;
            let mut buf = [0u8; 1500];
            // UDP: a few tries, each waiting a second.
            for _ in 0..5 {
                sock.send_to(&req[..len], target)?;
                let Ok((n_read, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if from != target {
                    continue;
                }
                let (got_tx, addr) = parse_binding_response(&buf[..n_read])?;
                if got_tx != tx {
                    bail!("stund answered another transaction");
                }
                if addr != n.public {
                    bail!("stund said {addr}, expected the NAT's {}", n.public);
                }
                return Ok(());
            }
            bail!("stund never answered")
        },
        || server.report(),
    )
}
