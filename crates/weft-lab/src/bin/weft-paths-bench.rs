//! `weft-paths-bench`: issue 12's path benchmark, in one run and one set of namespaces (driven by
//! `bench/paths.sh`, which builds the binaries and waits for a quiet machine).
//!
//! Topology (`weft_lab::nat`): control with its embedded relay on "the internet"; nodes `a` and
//! `b` behind two easy NATs (`masquerade`), `c` and `d` behind two hard NATs (`masquerade
//! fully-random`, so only the relay connects them). Measures, each `--reps` times:
//!
//! * `underlay`: iperf3 TCP, 1 stream, from `a`'s LAN to a host `x` on the internet: the raw
//!   underlay through one NAT, the ceiling;
//! * `direct`: iperf3 TCP, 1 stream, `a` → `b` through the tunnel once the path is direct;
//! * `relay`: iperf3 TCP, 1 stream, `c` → `d` through the tunnel via the relay, with control's
//!   process CPU time (utime+stime from /proc, all threads: the relay is in that process) during
//!   the run, as CPU seconds per relayed Gbit;
//! * `up`: a fresh node `eN` behind an easy NAT runs `weft up` against a peer `b` that is up:
//!   time from starting `weft up` to its exit, to the first ICMP echo answered through the tunnel
//!   (`ping -i 0.02` until one reply), and to the direct path (`weft status --json` of `eN` shows
//!   a `cur_addr` for `b`, polled every 20 ms).
//!
//! Prints one `key=value` line per measurement and a markdown table. Builds nothing: runs the
//! `weft-control`, `weftd` and `weft` next to itself (or in `$WEFT_BIN_DIR`).

#![allow(clippy::print_stdout)] // printing results is this program's job

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use weft_lab::nat::{NatKind, Site};
use weft_lab::tailnet::{Binaries, Control, KeyOptions, Node, Tailnet, peer};
use weft_lab::{Lab, Netns, now};

const IPERF_PORT: u16 = 5201;

struct Args {
    secs: u32,
    reps: u32,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args { secs: 10, reps: 3 };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> anyhow::Result<u32> {
            it.next()
                .with_context(|| format!("{name} needs a value"))?
                .parse()
                .with_context(|| format!("{name}: not a number"))
        };
        match a.as_str() {
            "-t" | "--secs" => args.secs = value("--secs")?,
            "-n" | "--reps" => args.reps = value("--reps")?,
            "-h" | "--help" => {
                println!("Usage: weft-paths-bench [-t SECS] [-n REPS]  (root; see bench/paths.sh)");
                std::process::exit(0);
            }
            other => {
                bail!("unknown argument {other:?} (usage: weft-paths-bench [-t SECS] [-n REPS])")
            }
        }
    }
    ensure!((1..=60).contains(&args.secs), "--secs: 1 to 60");
    ensure!((1..=10).contains(&args.reps), "--reps: 1 to 10");
    Ok(args)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    weft_lab::require_root().map_err(|e| anyhow::anyhow!("weft-paths-bench needs root: {e}"))?;
    for tool in ["ip", "nft", "ping", "iperf3"] {
        weft_lab::require_cmd(tool).map_err(|e| anyhow::anyhow!("needs {tool}: {e}"))?;
    }
    let bins = Binaries::discover().context("build the binaries first (bench/paths.sh does)")?;
    let lab = Lab::new("weft-paths-bench")?;
    let net = Tailnet::with_binaries(&lab, bins)?;
    let control = net.control("ctl")?;
    control.ensure_user("alice")?;
    let key = control.create_key("alice", &KeyOptions::reusable())?;
    let (sa, sb) = (
        Site::new(&net, "sa", NatKind::Easy)?,
        Site::new(&net, "sb", NatKind::Easy)?,
    );
    let (sc, sd) = (
        Site::new(&net, "sc", NatKind::Hard)?,
        Site::new(&net, "sd", NatKind::Hard)?,
    );
    let (a, b, c, d) = (sa.node("a")?, sb.node("b")?, sc.node("c")?, sd.node("d")?);
    for n in [&a, &b, &c, &d] {
        n.up_with_key(&control, &key)?;
    }
    for (n, others) in [
        (&a, ["b", "c", "d"]),
        (&b, ["a", "c", "d"]),
        (&c, ["a", "b", "d"]),
        (&d, ["a", "b", "c"]),
    ] {
        n.wait_peers_online(&others, Duration::from_secs(30))?;
    }
    let mut rows: Vec<(String, String)> = Vec::new();

    // The raw underlay: a's LAN -> a host on the internet, through a's NAT (the routers drop
    // unsolicited inbound, so nothing behind b's can be reached without the tunnel).
    let (x, x_addr) = net.attach("x")?;
    let mut underlay = Vec::new();
    for _ in 0..args.reps {
        underlay.push(iperf(a.netns(), &x, x_addr.into(), args.secs)?.0);
    }
    rows.push((
        "raw underlay (a → internet host, 1 NAT)".into(),
        gbits(&underlay),
    ));

    // Direct through the tunnel.
    let ip_b = b.ip4()?;
    a.netns().wait_ping(ip_b.into(), Duration::from_secs(10))?;
    let ep = wait_direct(&a, "b", Duration::from_secs(10))?;
    println!("direct_endpoint={ep}");
    let mut direct = Vec::new();
    for _ in 0..args.reps {
        direct.push(iperf(a.netns(), b.netns(), ip_b.into(), args.secs)?.0);
    }
    rows.push((format!("tunnel, direct (a → b via {ep})"), gbits(&direct)));

    // Via the relay (hard <-> hard), with control's (= the relay's) CPU.
    let ip_d = d.ip4()?;
    match relayed(&control, &c, &d, ip_d.into(), &args) {
        Ok((rates, cpu_per_gbit)) => {
            rows.push(("tunnel, via relay (c → d, hard NATs)".into(), gbits(&rates)));
            rows.push((
                "relay CPU s per Gbit relayed".into(),
                stats(&cpu_per_gbit, 3),
            ));
        }
        Err(e) => {
            println!("relay_error={e:#}");
            rows.push((
                "tunnel, via relay (c → d, hard NATs)".into(),
                format!("n/a: {}", first_line(&e)),
            ));
        }
    }

    // Time to first packet and to direct, a fresh node behind an easy NAT to b.
    let (mut ups, mut firsts, mut directs) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..args.reps {
        let site = Site::new(&net, &format!("se{i}"), NatKind::Easy)?;
        let e = site.node(&format!("e{i}"))?;
        let started = now();
        e.up_with_key(&control, &key)?;
        let up = started.elapsed();
        first_reply(e.netns(), ip_b.into())?;
        let first = started.elapsed();
        wait_direct(&e, "b", Duration::from_secs(20))?;
        let direct = started.elapsed();
        println!(
            "up_run={i} up_exit_s={:.3} first_packet_s={:.3} direct_s={:.3}",
            up.as_secs_f64(),
            first.as_secs_f64(),
            direct.as_secs_f64()
        );
        ups.push(up.as_secs_f64());
        firsts.push(first.as_secs_f64());
        directs.push(direct.as_secs_f64());
    }
    rows.push(("`weft up` exits (s after start)".into(), stats(&ups, 2)));
    rows.push((
        "first ICMP reply through the tunnel (s after `weft up` started)".into(),
        stats(&firsts, 2),
    ));
    rows.push((
        "direct path across easy NATs (s after `weft up` started)".into(),
        stats(&directs, 2),
    ));

    println!(
        "\n| what | median [min-max] over {} runs |\n|---|---|",
        args.reps
    );
    for (what, v) in rows {
        println!("| {what} | {v} |");
    }
    Ok(())
}

/// The relayed run: confirms c reaches d through the relay, then measures.
fn relayed(
    control: &Control,
    c: &Node,
    d: &Node,
    ip_d: IpAddr,
    args: &Args,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    c.netns().wait_ping(ip_d, Duration::from_secs(10))?;
    let st = c.status_json()?;
    let pd = peer(&st, "d").context("d in c's status")?;
    ensure!(
        pd["cur_addr"].is_null(),
        "c reaches d directly ({}), not via the relay",
        pd["cur_addr"]
    );
    let pid = control.pid().context("control is not running")?;
    let (mut rates, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..args.reps {
        let t0 = proc_cpu_s(pid)?;
        let (gbit, secs) = iperf(c.netns(), d.netns(), ip_d, args.secs)?;
        let t1 = proc_cpu_s(pid)?;
        rates.push(gbit);
        cpu.push((t1 - t0) / (gbit * secs).max(1e-9));
    }
    Ok((rates, cpu))
}

/// Runs an iperf3 server in `server` on `addr` and a 1-stream TCP client in `client` for `secs`;
/// returns the receiver's Gbit/s and the measured seconds.
fn iperf(client: &Netns, server: &Netns, addr: IpAddr, secs: u32) -> anyhow::Result<(f64, f64)> {
    let srv = server.spawn(
        "iperf3-server",
        "iperf3",
        [
            "-s",
            "-1",
            "-B",
            &addr.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
        ],
    )?;
    server.wait_tcp_listen(IPERF_PORT, Duration::from_secs(10))?;
    let out = client
        .command("iperf3")
        .args([
            "-c",
            &addr.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
            "-J",
            "-t",
            &secs.to_string(),
        ])
        .timeout(Duration::from_secs(u64::from(secs) + 30))
        .run()?;
    let _ = srv.wait_exit(Duration::from_secs(10));
    let v: serde_json::Value = serde_json::from_str(&out.stdout).context("iperf3 -J output")?;
    let sum = &v["end"]["sum_received"];
    let bps = sum["bits_per_second"]
        .as_f64()
        .context("end.sum_received.bits_per_second")?;
    let seconds = sum["seconds"].as_f64().unwrap_or(f64::from(secs));
    let gbit = bps / 1e9;
    println!(
        "iperf3 {} -> {addr}: {gbit:.3} Gbit/s over {seconds:.1} s",
        client.short()
    );
    Ok((gbit, seconds))
}

/// Sends ICMP echoes every 20 ms until one is answered (at most 10 s).
fn first_reply(ns: &Netns, to: IpAddr) -> anyhow::Result<()> {
    ns.command("ping")
        .args([
            "-n",
            "-q",
            "-c",
            "1",
            "-i",
            "0.02",
            "-w",
            "10",
            &to.to_string(),
        ])
        .timeout(Duration::from_secs(15))
        .run()?;
    Ok(())
}

/// Polls `weft status --json` of `from` every 20 ms (fixed: a growing backoff would blur the
/// time) until peer `to` has a direct address.
fn wait_direct(from: &Node, to: &str, limit: Duration) -> anyhow::Result<SocketAddr> {
    let deadline = now() + limit;
    loop {
        let st = from.status_json()?;
        let cur = peer(&st, to)
            .and_then(|p| p["cur_addr"].as_str())
            .and_then(|s| s.parse().ok());
        if let Some(cur) = cur {
            return Ok(cur);
        }
        if now() >= deadline {
            bail!(
                "{} has no direct path to {to} after {limit:?}: {st}",
                from.name()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The process's CPU time (user + system, all threads) in seconds.
fn proc_cpu_s(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(") ").context("/proc/PID/stat format")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields after "pid (comm) ": state=0 … utime=11 stime=12.
    let ticks: f64 =
        f.get(11).context("utime")?.parse::<f64>()? + f.get(12).context("stime")?.parse::<f64>()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    Ok(ticks / hz)
}

fn median_min_max(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let mid = if s.is_empty() { 0.0 } else { s[s.len() / 2] };
    (
        mid,
        s.first().copied().unwrap_or(0.0),
        s.last().copied().unwrap_or(0.0),
    )
}

fn stats(v: &[f64], digits: usize) -> String {
    let (m, lo, hi) = median_min_max(v);
    format!("{m:.digits$} [{lo:.digits$}-{hi:.digits$}]")
}

fn gbits(v: &[f64]) -> String {
    format!("{} Gbit/s", stats(v, 2))
}

fn first_line(e: &anyhow::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_owned()
}
