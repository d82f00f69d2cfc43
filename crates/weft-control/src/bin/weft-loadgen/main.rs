//! weft-loadgen: N simulated nodes against one `weft-control` server.
//!
//! ```text
//! cargo build --release -p weft-control
//! target/release/weft-loadgen --nodes 5000 [--rounds 20] [--policy-rules 500]
//! ```
//!
//! It starts the server binary (next to this one) on a temporary state
//! directory, creates users and keys over the admin socket, and then:
//! 1. registers N nodes (pre-auth key, one `register` each);
//! 2. opens N map streams at once and measures the time until every node
//!    has its full map (each node's first stream also announces its disco
//!    key, so peers get a delta about it);
//! 3. runs rounds of "one node changes endpoints" and measures, per round,
//!    the time until every peer has the delta (p50/p99 over rounds, and
//!    over all deliveries);
//! 4. with `--policy-rules M`: sets a generated policy of M rules (and then
//!    a one-rule edit of it), measuring compile time, how many nodes get a
//!    new filter and how fast, and endpoint rounds under that policy.
//!
//! Server CPU and RSS are read from `/proc` per phase. This is a
//! measurement tool, not a test; every wait is bounded.
#![allow(clippy::print_stdout)] // it reports to stdout

mod lean;
mod procstat;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use tokio::sync::{Mutex, Semaphore, mpsc};
use weft_client::{ConnectOptions, ControlUrl, Target};
use weft_control::admin::client::{AdminClient, AdminTarget};
use weft_control::admin::types::{NewPreauthKey, NewUser};
use weft_types::control::{
    AuthKey, ClientMessage, EndpointUpdate, ExpiryRequest, MapRequest, RefusalReason, RegisterAuth,
    RegisterRequest, RegisterResponse,
};
use weft_types::{
    CapabilityVersion, DiscoPrivate, Endpoint, EndpointKind, MachinePrivate, NodeId, NodePrivate,
};

use lean::{Ev, Sender, Watch};

/// weft-loadgen: simulated nodes against one weft-control server.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "weft-loadgen: N simulated nodes against one weft-control server"
)]
struct Args {
    /// How many nodes.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// "One node changes endpoints" rounds.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Also set a generated policy of this many rules and measure it.
    #[arg(long, default_value_t = 0)]
    policy_rules: usize,
    /// Users owning the nodes (default: 1, or 50 with --policy-rules).
    #[arg(long)]
    users: Option<usize>,
    /// Registrations in flight.
    #[arg(long, default_value_t = 64)]
    register_concurrency: usize,
    /// Map stream connections being opened at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// The server's batch delay (passed to `weft-control serve`).
    #[arg(long, default_value = "150ms")]
    batch_delay: String,
    /// The weft-control binary (default: next to this one).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The server's database (`postgres://…`; default: SQLite in a temporary state directory).
    /// The database should be empty: the run creates users `u0@loadgen.test`….
    #[arg(long)]
    db_url: Option<String>,
    /// Upper bound for each phase, seconds.
    #[arg(long, default_value_t = 1800)]
    phase_timeout: u64,
    /// End the run after this phase (`register`, `maps`: the initial full maps).
    #[arg(long, value_enum)]
    stop_after: Option<StopAfter>,
}

/// The phases a run can end after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StopAfter {
    Register,
    Maps,
}

/// Registrations the server shed with `server_busy` (each retried).
static SHED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[allow(clippy::disallowed_methods)] // the load generator's clock
fn now() -> Instant {
    Instant::now()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `q` quantile (0..=1) of sorted values.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

struct ServerProc {
    child: std::process::Child,
    pid: String,
    url: String,
    /// Where its metrics are served (`--metrics-listen`, `host:port`).
    metrics: String,
    dir: tempfile::TempDir,
}

impl ServerProc {
    fn usage(&self) -> procstat::Usage {
        procstat::read(&self.pid)
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Ok(pid) = self.pid.parse::<i32>() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = self.child.wait();
    }
}

/// A phase's cost on the server.
struct Phase {
    name: String,
    wall: Duration,
    server_cpu_s: f64,
    server_rss_mib: f64,
    gen_cpu_s: f64,
}

struct Report {
    phases: Vec<Phase>,
    lines: Vec<String>,
}

impl Report {
    fn phase(
        &mut self,
        server: &ServerProc,
        name: &str,
        start: Instant,
        before: (procstat::Usage, procstat::Usage),
    ) {
        let (s, g) = (server.usage(), procstat::read("self"));
        let p = Phase {
            name: name.to_owned(),
            wall: start.elapsed(),
            server_cpu_s: s.cpu_s - before.0.cpu_s,
            server_rss_mib: s.rss_mib,
            gen_cpu_s: g.cpu_s - before.1.cpu_s,
        };
        println!(
            "[{}] {:.2} s wall; server CPU {:.1} s, RSS {:.0} MiB; loadgen CPU {:.1} s",
            p.name,
            p.wall.as_secs_f64(),
            p.server_cpu_s,
            p.server_rss_mib,
            p.gen_cpu_s
        );
        self.phases.push(p);
    }

    fn line(&mut self, l: String) {
        println!("{l}");
        self.lines.push(l);
    }
}

fn usage_pair(server: &ServerProc) -> (procstat::Usage, procstat::Usage) {
    (server.usage(), procstat::read("self"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    raise_fd_limit();
    let n = args.nodes;
    anyhow::ensure!(n >= 2, "--nodes must be at least 2");
    let users = args
        .users
        .unwrap_or(if args.policy_rules > 0 { 50 } else { 1 })
        .max(1);
    let timeout = Duration::from_secs(args.phase_timeout);
    let server = start_server(&args).await?;
    let url: ControlUrl = server.url.parse()?;
    let admin = AdminClient::new(AdminTarget::Socket(server.dir.path().join("admin.sock")));
    let server_key = weft_client::fetch_key(&url, Duration::from_secs(10))
        .await?
        .public_key;
    println!(
        "weft-loadgen: {n} nodes, {users} user(s), {} rounds, policy rules {}, batch delay {}, database {}, server {} (pid {})",
        args.rounds,
        args.policy_rules,
        args.batch_delay,
        if args.db_url.is_some() {
            "PostgreSQL (--db-url)"
        } else {
            "SQLite"
        },
        server.url,
        server.pid
    );
    let mut report = Report {
        phases: Vec::new(),
        lines: Vec::new(),
    };

    // --- users and keys -------------------------------------------------------------------
    let mut keys = Vec::new();
    for u in 0..users {
        let login = format!("u{u}@loadgen.test");
        admin
            .create_user(&NewUser {
                login_name: login.clone(),
                ..NewUser::default()
            })
            .await?;
        let k = admin
            .create_preauth_key(&NewPreauthKey {
                user: Some(login),
                reusable: true,
                expiration_ms: Some(24 * 3600 * 1000),
                ..NewPreauthKey::default()
            })
            .await?;
        keys.push(k.secret);
    }

    // --- 1. register ------------------------------------------------------------------------
    let machines: Vec<MachinePrivate> = (0..n).map(|_| MachinePrivate::generate()).collect();
    let node_keys: Vec<NodePrivate> = (0..n).map(|_| NodePrivate::generate()).collect();
    let discos: Vec<DiscoPrivate> = (0..n).map(|_| DiscoPrivate::generate()).collect();
    let before = usage_pair(&server);
    let start = now();
    let sem = Arc::new(Semaphore::new(args.register_concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let target = Target {
            url: url.clone(),
            machine_key: machines[i].clone(),
            server_key,
        };
        let req = RegisterRequest {
            version: CapabilityVersion::CURRENT,
            node_key: node_keys[i].public(),
            old_node_key: None,
            auth: RegisterAuth::AuthKey(AuthKey(keys[i % users].clone())),
            expiry: ExpiryRequest::Default,
            ephemeral: false,
            host_info: lean::host_info(i),
        };
        tasks.spawn(async move {
            let t = now();
            let r = register_with_retry(&target, req).await;
            drop(permit);
            (i, r, t.elapsed())
        });
    }
    let mut ids = vec![NodeId(0); n];
    let mut reg_lat = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        let (i, r, d) = r?;
        ids[i] = r.with_context(|| format!("registering node {i}"))?;
        reg_lat.push(d);
    }
    reg_lat.sort();
    report.phase(&server, "register", start, before);
    report.line(format!(
        "register: {n} nodes in {:.2} s ({:.0}/s); per registration p50 {:.1} ms, p99 {:.1} ms; {} shed with server_busy and retried",
        start.elapsed().as_secs_f64(),
        n as f64 / start.elapsed().as_secs_f64(),
        ms(quantile(&reg_lat, 0.5)),
        ms(quantile(&reg_lat, 0.99)),
        SHED.load(Ordering::Relaxed)
    ));

    if args.stop_after == Some(StopAfter::Register) {
        return finish(&server, &report);
    }

    // --- 2. open map streams ------------------------------------------------------------------
    let watch = Arc::new(Watch::default());
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let before = usage_pair(&server);
    let start = now();
    let sem = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let (url, machine, watch, ev_tx) = (
            url.clone(),
            machines[i].clone(),
            watch.clone(),
            ev_tx.clone(),
        );
        let map = MapRequest {
            version: CapabilityVersion::CURRENT,
            node_key: node_keys[i].public(),
            disco_key: discos[i].public(),
            endpoints: vec![endpoint(i, 41641)],
            home_relay: None,
            host_info: lean::host_info(i),
            stream: true,
        };
        tasks.spawn(async move {
            let t = now();
            let r = lean::open_stream(i, &url, server_key, &machine, map, watch, ev_tx).await;
            drop(permit);
            (i, r, t)
        });
    }
    let mut senders: Vec<Option<Arc<Mutex<Sender>>>> = (0..n).map(|_| None).collect();
    let mut opened_at = vec![start; n];
    while let Some(r) = tasks.join_next().await {
        let (i, r, t) = r?;
        senders[i] =
            Some(Arc::new(Mutex::new(r.with_context(|| {
                format!("opening the stream of node {i}")
            })?)));
        opened_at[i] = t;
    }
    let connected = start.elapsed();
    // Keep-alives from now on, so the server never times a node out (it drops a node silent
    // for 150 s, and with thousands of nodes the initial maps alone can take longer than that).
    let ka_senders: Vec<Arc<Mutex<Sender>>> = senders.iter().flatten().cloned().collect();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(30)).await;
            for s in &ka_senders {
                let _ = lean::keep_alive(s).await;
            }
        }
    });
    let mut got_full = vec![false; n];
    let mut full_lat = Vec::with_capacity(n);
    let mut last_full = start;
    let deadline = tokio::time::Instant::now() + timeout;
    while full_lat.len() < n {
        match tokio::time::timeout_at(deadline, ev_rx.recv()).await {
            Ok(Some(Ev::Full { idx, at })) if !got_full[idx] => {
                got_full[idx] = true;
                full_lat.push(at - opened_at[idx]);
                last_full = last_full.max(at);
            }
            Ok(Some(Ev::Closed { idx, reason })) => {
                anyhow::bail!("node {idx} lost its stream: {reason}")
            }
            Ok(Some(_)) => {}
            Ok(None) => anyhow::bail!("all receivers ended"),
            Err(_) => anyhow::bail!(
                "only {} of {n} full maps within {timeout:?}",
                full_lat.len()
            ),
        }
    }
    full_lat.sort();
    let initial = last_full - start;
    report.phase(&server, "initial maps", start, before);
    report.line(format!(
        "initial maps: all {n} streams opened in {:.2} s, every node had its full map after {:.2} s; per node (open → full map) p50 {:.0} ms, p99 {:.0} ms; {:.2} GB received",
        connected.as_secs_f64(),
        initial.as_secs_f64(),
        ms(quantile(&full_lat, 0.5)),
        ms(quantile(&full_lat, 0.99)),
        watch.bytes.load(Ordering::Relaxed) as f64 / 1e9
    ));

    if args.stop_after == Some(StopAfter::Maps) {
        return finish(&server, &report);
    }

    let before = usage_pair(&server);
    let start = now();
    quiesce(&watch, &mut ev_rx, timeout).await?;
    report.phase(&server, "settle", start, before);
    watch.full_decrypt.store(true, Ordering::Relaxed);

    // --- 3. endpoint rounds -----------------------------------------------------------------------
    rounds(
        &args,
        &server,
        &watch,
        &mut ev_rx,
        &senders,
        &ids,
        &mut report,
        "allow-all",
        Some(n - 1),
        0,
    )
    .await?;

    // --- 4. policy ------------------------------------------------------------------------------
    if args.policy_rules > 0 {
        let p1 = generate_policy(args.policy_rules, users, None);
        policy_phase(
            &server,
            &watch,
            &mut ev_rx,
            &mut report,
            &p1,
            "policy set (from allow-all)",
        )
        .await?;
        let p2 = generate_policy(args.policy_rules, users, Some(7));
        policy_phase(
            &server,
            &watch,
            &mut ev_rx,
            &mut report,
            &p2,
            "policy edit (one rule)",
        )
        .await?;
        rounds(
            &args,
            &server,
            &watch,
            &mut ev_rx,
            &senders,
            &ids,
            &mut report,
            "policy",
            None,
            1_000,
        )
        .await?;
    }

    finish(&server, &report)
}

/// Prints the server's totals and the phase table.
#[allow(clippy::unnecessary_wraps)] // the tail of `main`
fn finish(server: &ServerProc, report: &Report) -> anyhow::Result<()> {
    let s = server.usage();
    println!(
        "server: RSS {:.0} MiB now, peak {:.0} MiB; CPU {:.1} s in total",
        s.rss_mib, s.peak_mib, s.cpu_s
    );
    println!(
        "\n| phase | wall s | server CPU s | server RSS MiB | loadgen CPU s |\n|---|---|---|---|---|"
    );
    for p in &report.phases {
        println!(
            "| {} | {:.2} | {:.1} | {:.0} | {:.1} |",
            p.name,
            p.wall.as_secs_f64(),
            p.server_cpu_s,
            p.server_rss_mib,
            p.gen_cpu_s
        );
    }
    Ok(())
}

fn endpoint(i: usize, port: u16) -> Endpoint {
    let i = u32::try_from(i).unwrap_or(0);
    Endpoint {
        addr: std::net::SocketAddr::from((
            [198, 18, ((i >> 8) & 0xff) as u8, (i & 0xff) as u8],
            port,
        )),
        kind: EndpointKind::Local,
    }
}

/// Registers one node; transient errors are retried up to 5 times, and a
/// `server_busy` refusal after the delay the server names (up to 100 times).
async fn register_with_retry(target: &Target, req: RegisterRequest) -> anyhow::Result<NodeId> {
    let mut last = None;
    let (mut transient, mut busy) = (0, 0);
    while transient < 5 && busy < 100 {
        match weft_client::register(target, req.clone(), &ConnectOptions::default()).await {
            Ok(RegisterResponse::Registered(r)) => return Ok(r.node_id),
            Ok(RegisterResponse::Refused(r)) if r.reason == RefusalReason::ServerBusy => {
                busy += 1;
                SHED.fetch_add(1, Ordering::Relaxed);
                let wait = r.retry_after_ms.unwrap_or(1_000).min(60_000);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            Ok(other) => anyhow::bail!("registration answered {other:?}"),
            Err(e) if e.is_transient() => {
                transient += 1;
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.map_or_else(|| anyhow::anyhow!("registration failed"), Into::into))
}

/// Waits until no map message arrived for a second (the server settled).
async fn quiesce(
    watch: &Watch,
    ev_rx: &mut mpsc::UnboundedReceiver<Ev>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = now() + timeout;
    let mut last = watch.messages.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        while let Ok(ev) = ev_rx.try_recv() {
            if let Ev::Closed { idx, reason } = ev {
                anyhow::bail!("node {idx} lost its stream: {reason}");
            }
        }
        let m = watch.messages.load(Ordering::Relaxed);
        if m == last {
            return Ok(());
        }
        anyhow::ensure!(now() < deadline, "the server never settled");
        last = m;
    }
}

#[allow(clippy::too_many_arguments)]
async fn rounds(
    args: &Args,
    server: &ServerProc,
    watch: &Watch,
    ev_rx: &mut mpsc::UnboundedReceiver<Ev>,
    senders: &[Option<Arc<Mutex<Sender>>>],
    ids: &[NodeId],
    report: &mut Report,
    label: &str,
    expected: Option<usize>,
    round_base: u64,
) -> anyhow::Result<()> {
    let n = ids.len();
    let before = usage_pair(server);
    let start = now();
    let mut round_times = Vec::new();
    let mut all = Vec::new();
    let mut counts = Vec::new();
    for r in 0..args.rounds {
        let changer = (r * 7919 + 1) % n;
        let round = round_base + r as u64 + 1;
        let port = 20_000 + u16::try_from(round % 40_000).unwrap_or(0);
        watch.changer.store(
            u64::try_from(ids[changer].0).unwrap_or(0),
            Ordering::Relaxed,
        );
        watch.port.store(u64::from(port), Ordering::Relaxed);
        watch.round.store(round, Ordering::Relaxed);
        let Some(sender) = &senders[changer] else {
            continue;
        };
        let t0 = now();
        sender
            .lock()
            .await
            .send(&ClientMessage::Endpoints(EndpointUpdate {
                endpoints: vec![endpoint(changer, port)],
                home_relay: None,
            }))
            .await?;
        let mut got: BTreeMap<usize, Duration> = BTreeMap::new();
        let idle = Duration::from_secs(3);
        let deadline = t0 + Duration::from_secs(60);
        loop {
            if expected.is_some_and(|e| got.len() >= e) {
                break;
            }
            let wait = if expected.is_some() {
                deadline.saturating_duration_since(now())
            } else {
                idle
            };
            match tokio::time::timeout(wait, ev_rx.recv()).await {
                Ok(Some(Ev::Endpoint { idx, round: rr, at })) if rr == round => {
                    got.entry(idx).or_insert(at - t0);
                }
                Ok(Some(Ev::Closed { idx, reason })) => {
                    anyhow::bail!("node {idx} lost its stream: {reason}")
                }
                Ok(Some(_)) => {}
                Ok(None) => anyhow::bail!("all receivers ended"),
                Err(_) => break,
            }
        }
        if let Some(e) = expected {
            anyhow::ensure!(
                got.len() >= e,
                "round {round}: only {} of {e} peers got the delta within 60 s",
                got.len()
            );
        }
        let slowest = got.values().max().copied().unwrap_or_default();
        round_times.push(slowest);
        counts.push(got.len());
        all.extend(got.into_values());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    round_times.sort();
    all.sort();
    report.phase(server, &format!("endpoint rounds ({label})"), start, before);
    let avg_recipients = counts.iter().sum::<usize>() as f64 / counts.len().max(1) as f64;
    report.line(format!(
        "one node changes endpoints ({label}, {} rounds, {avg_recipients:.0} recipients each): time until all peers have the delta p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; per delivery p50 {:.0} ms, p99 {:.0} ms",
        args.rounds,
        ms(quantile(&round_times, 0.5)),
        ms(quantile(&round_times, 0.99)),
        ms(round_times.last().copied().unwrap_or_default()),
        ms(quantile(&all, 0.5)),
        ms(quantile(&all, 0.99)),
    ));
    Ok(())
}

async fn policy_phase(
    server: &ServerProc,
    watch: &Watch,
    ev_rx: &mut mpsc::UnboundedReceiver<Ev>,
    report: &mut Report,
    policy: &str,
    label: &str,
) -> anyhow::Result<()> {
    let compile_before = metric_sum(&server.metrics, "weft_policy_compile_seconds").await;
    let before = usage_pair(server);
    let t0 = now();
    set_policy_slowly(
        &server.dir.path().join("admin.sock"),
        policy,
        timeout_for_policy(),
    )
    .await
    .context("setting the generated policy")?;
    let set = t0.elapsed();
    let mut got: BTreeMap<usize, Duration> = BTreeMap::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(3), ev_rx.recv()).await {
            Ok(Some(Ev::Filter { idx, at })) => {
                got.entry(idx).or_insert(at - t0);
            }
            Ok(Some(Ev::Full { idx, at })) => {
                // A recipient whose delta would be too long gets a full map.
                got.entry(idx).or_insert(at - t0);
            }
            Ok(Some(Ev::Closed { idx, reason })) => {
                anyhow::bail!("node {idx} lost its stream: {reason}")
            }
            Ok(Some(_)) => {}
            Ok(None) => anyhow::bail!("all receivers ended"),
            Err(_) => break,
        }
    }
    quiesce(watch, ev_rx, Duration::from_secs(600)).await?;
    let compile = metric_sum(&server.metrics, "weft_policy_compile_seconds").await - compile_before;
    let mut lat: Vec<Duration> = got.values().copied().collect();
    lat.sort();
    report.phase(server, label, t0, before);
    report.line(format!(
        "{label}: `policy set` returned after {:.0} ms (compile {:.0} ms); {} nodes got a new filter, the last after {:.0} ms (p50 {:.0} ms)",
        ms(set),
        compile * 1000.0,
        got.len(),
        ms(lat.last().copied().unwrap_or_default()),
        ms(quantile(&lat, 0.5)),
    ));
    Ok(())
}

/// How long `policy set` may take (the admin client's own limit is 60 s, which a large tailnet
/// can exceed; the loadgen wants the number, not a timeout).
fn timeout_for_policy() -> Duration {
    Duration::from_secs(600)
}

/// `PUT /policy` on the admin socket with our own time limit; fails unless the answer is 200.
async fn set_policy_slowly(
    sock: &std::path::Path,
    policy: &str,
    limit: Duration,
) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let body = serde_json::to_vec(&weft_control::admin::types::PolicyText {
        policy: policy.to_owned(),
        name: None,
    })?;
    let work = async {
        let mut s = tokio::net::UnixStream::connect(sock).await?;
        let head = format!(
            "PUT /policy HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await?;
        s.write_all(&body).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        anyhow::Ok(out)
    };
    let out = tokio::time::timeout(limit, work)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {} within {limit:?}", sock.display()))??;
    let text = String::from_utf8_lossy(&out);
    anyhow::ensure!(
        text.starts_with("HTTP/1.1 200"),
        "policy set refused: {}",
        text.chars().take(400).collect::<String>()
    );
    Ok(())
}

/// Returns `<name>_sum` from the server's /metrics at `addr` (`host:port`).
async fn metric_sum(addr: &str, name: &str) -> f64 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return 0.0;
    };
    let _ = s
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    let key = format!("{name}_sum ");
    out.lines()
        .find_map(|l| l.strip_prefix(&key).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// A deterministic policy of `rules` rules over `users` users (u0…) in
/// ten groups, mixing groups, users, autogroups, CIDRs and port ranges.
/// `edit` changes the port of that one rule.
fn generate_policy(rules: usize, users: usize, edit: Option<usize>) -> String {
    let mut rng: u64 = 0x5eed_1234_abcd_0001;
    let mut next = |m: usize| {
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        usize::try_from((rng >> 33) % (m.max(1) as u64)).unwrap_or(0)
    };
    let groups = 10.min(users);
    let mut out = String::from("{\n  \"groups\": {\n");
    for g in 0..groups {
        let members: Vec<String> = (0..users)
            .filter(|u| u % groups == g)
            .map(|u| format!("\"u{u}@loadgen.test\""))
            .collect();
        out.push_str(&format!("    \"group:g{g}\": [{}],\n", members.join(", ")));
    }
    out.push_str("  },\n  \"acls\": [\n");
    for k in 0..rules {
        let (a, b) = (next(users), next(users));
        let (ga, gb) = (next(groups), next(groups));
        let mut port = 1000 + next(50_000);
        if edit == Some(k) {
            port += 1;
        }
        let rule = match k % 5 {
            0 => format!(
                "{{\"action\": \"accept\", \"src\": [\"group:g{ga}\"], \"dst\": [\"u{b}@loadgen.test:{port}\"]}}"
            ),
            1 => format!(
                "{{\"action\": \"accept\", \"src\": [\"u{a}@loadgen.test\"], \"dst\": [\"group:g{gb}:{port}-{}\"]}}",
                port + 10
            ),
            2 => format!(
                "{{\"action\": \"accept\", \"src\": [\"u{a}@loadgen.test\", \"u{b}@loadgen.test\"], \"dst\": [\"u{b}@loadgen.test:443,{port}\"]}}"
            ),
            3 => format!(
                "{{\"action\": \"accept\", \"src\": [\"group:g{ga}\"], \"dst\": [\"group:g{gb}:{port}\"], \"proto\": \"udp\"}}"
            ),
            _ => format!(
                "{{\"action\": \"accept\", \"src\": [\"100.64.0.0/12\"], \"dst\": [\"u{b}@loadgen.test:{port}\"]}}"
            ),
        };
        out.push_str("    ");
        out.push_str(&rule);
        out.push_str(",\n");
    }
    out.push_str("  ],\n}\n");
    out
}

async fn start_server(args: &Args) -> anyhow::Result<ServerProc> {
    let bin = match &args.server_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory for the loadgen binary")?
            .join("weft-control"),
    };
    anyhow::ensure!(
        bin.exists(),
        "{} not found: build it (cargo build --release -p weft-control) or pass --server-bin",
        bin.display()
    );
    let dir = tempfile::tempdir()?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let metrics = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.to_string()
    };
    let log = std::fs::File::create(dir.path().join("server.log"))?;
    let mut cmd = std::process::Command::new(&bin);
    cmd.args([
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--metrics-listen",
        &metrics,
        "--batch-delay",
        &args.batch_delay,
        // Every simulated node connects from 127.0.0.1, hundreds at once.
        "--max-unregistered-per-source",
        "1000000",
        // Not measured here; and UDP 3478 may be taken.
        "--no-stun",
        "--state-dir",
    ])
    .arg(dir.path());
    if let Some(db) = &args.db_url {
        cmd.args(["--db-url", db]);
    }
    let child = cmd
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let server = ServerProc {
        pid: child.id().to_string(),
        child,
        url: format!("http://127.0.0.1:{port}"),
        metrics,
        dir,
    };
    let url: ControlUrl = server.url.parse()?;
    for _ in 0..200 {
        if weft_client::fetch_key(&url, Duration::from_secs(1))
            .await
            .is_ok()
            && server.dir.path().join("admin.sock").exists()
        {
            return Ok(server);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!(
        "the server did not start; see {}",
        server.dir.path().join("server.log").display()
    )
}

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
