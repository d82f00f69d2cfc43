//! The MagicDNS driver: runs the [`weft_dns::Resolver`] core behind the
//! service addresses, on one tokio task.
//!
//! * Packets from TUN to a service address arrive through the tunnel's
//!   [`LocalService`] hook ([`PacketSink`]: a bounded queue, drop and count
//!   when full) and go into a smoltcp interface ([`netstack`]) that owns
//!   the service addresses: UDP and TCP on port 53. Its reply packets are
//!   written to TUN through the engine's [`Injector`].
//! * Queries go to the core; its UDP forwards go out on a pool of
//!   connected host sockets ([`upstream::UdpPool`], reused across queries,
//!   replies matched by socket and message id), TCP ones (TCP clients,
//!   truncated answers) on a task and a fresh socket each. Replies and
//!   failures come back to the loop. The core owns the timeouts.
//! * Configuration comes as commands: the netmap (names, DnsConfig), the
//!   host's nameservers ([`DnsHandle::set_host_nameservers`], from the OS
//!   integration [`super::dns_os`]: the resolv.conf Weft replaced, or
//!   systemd-resolved's upstreams), and
//!   `weft dns query` ([`DnsHandle::query`]).
//! * Health: a supervisor watches the task. If port 53 could not be opened
//!   in the netstack, or the task ended or panicked while weftd runs,
//!   [`DnsHandle::health`] returns the line `weft status` shows
//!   ([`ServiceState`]).

mod netstack;
mod upstream;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use tokio::sync::{mpsc, oneshot, watch};
use weft_dns::{Origin, Resolver, Route, Transmit, Transport};
use weft_localapi::{DnsAnswerRecord, DnsAnswerSource, DnsQueryResult};
use weft_net::Injector;
use weft_packet::IpPacket;
use weft_types::NetMap;

use super::tunnel::LocalService;
use netstack::{NetStack, TcpConnId, UdpPeer};
use upstream::{UdpPool, UpstreamEvent};

/// Packets from TUN that may wait for the resolver task.
pub const PACKET_QUEUE: usize = 1024;
/// How long `weft dns query` waits for an answer.
const QUERY_WAIT: Duration = Duration::from_secs(6);

/// Where a reply goes.
#[derive(Debug)]
enum Client {
    Udp(UdpPeer),
    Tcp(TcpConnId),
    Local(oneshot::Sender<weft_dns::Answer<()>>),
}

enum Command {
    SetNetmap(Arc<NetMap>),
    Clear,
    SetHostNameservers(Vec<IpAddr>),
    Query {
        bytes: Vec<u8>,
        reply: oneshot::Sender<weft_dns::Answer<()>>,
    },
}

/// Counters the driver keeps besides the core's.
#[derive(Debug, Default)]
struct DriverCounters {
    /// Packets the hook dropped because the queue was full.
    queue_dropped: AtomicU64,
    /// Packets from TUN taken by the hook.
    packets_in: AtomicU64,
    /// Reply packets written to TUN.
    packets_out: AtomicU64,
    /// Replies that could not be queued on their socket.
    reply_dropped: AtomicU64,
}

/// The resolver's counters for `GET metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsMetrics {
    pub core: weft_dns::Stats,
    pub queue_dropped: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub reply_dropped: u64,
}

/// Whether the resolver serves port 53 on the service addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceState {
    Serving,
    /// The netstack could not open port 53 (the reason).
    CannotListen(String),
    /// The resolver task ended while weftd runs (the reason).
    Stopped(String),
}

impl ServiceState {
    /// The one line for `weft status`'s health, or `None` when serving.
    pub fn health(&self) -> Option<String> {
        let (what, why) = match self {
            Self::Serving => return None,
            Self::CannotListen(why) => ("cannot serve port 53", why),
            Self::Stopped(why) => ("stopped", why),
        };
        Some(format!(
            "MagicDNS resolver at {} {what} ({why}): names do not resolve through it; \
             restart weftd (systemctl restart weftd) and see its log",
            weft_dns::SERVICE_V4
        ))
    }
}

/// Waits for the resolver task and records why it ended, unless weftd is
/// stopping (`stop` true).
async fn supervise(
    task: tokio::task::JoinHandle<()>,
    stop: watch::Receiver<bool>,
    state: watch::Sender<ServiceState>,
) {
    let result = task.await;
    if *stop.borrow() {
        return;
    }
    let why = match result {
        Ok(()) => "the task ended".to_owned(),
        Err(e) if e.is_panic() => {
            let p = e.into_panic();
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            format!("the task panicked: {msg}")
        }
        Err(e) => format!("the task was cancelled: {e}"),
    };
    tracing::error!(reason = %why, "The MagicDNS resolver stopped");
    state.send_replace(ServiceState::Stopped(why));
}

/// The hook the tunnel calls for packets to a service address.
pub struct PacketSink {
    tx: mpsc::Sender<Vec<u8>>,
    counters: Arc<DriverCounters>,
}

impl LocalService for PacketSink {
    fn take(&self, packet: &IpPacket<'_>) {
        self.counters.packets_in.fetch_add(1, Ordering::Relaxed);
        if self.tx.try_send(packet.as_bytes().to_vec()).is_err() {
            self.counters.queue_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::trace!("MagicDNS queue full; packet dropped");
        }
    }
}

/// The handle on the running resolver. Cheap to clone.
#[derive(Clone)]
pub struct DnsHandle {
    cmds: mpsc::UnboundedSender<Command>,
    counters: Arc<DriverCounters>,
    stats: watch::Receiver<weft_dns::Stats>,
    state: watch::Receiver<ServiceState>,
}

impl std::fmt::Debug for DnsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsHandle").finish_non_exhaustive()
    }
}

/// Starts the resolver task. Returns its handle and the hook to install in
/// the tunnel. The task ends when `stop` turns true.
pub fn spawn(injector: Injector, stop: watch::Receiver<bool>) -> (DnsHandle, Arc<PacketSink>) {
    let (cmds, cmd_rx) = mpsc::unbounded_channel();
    let (tx, packets) = mpsc::channel(PACKET_QUEUE);
    let counters = Arc::new(DriverCounters::default());
    let (stats_tx, stats) = watch::channel(weft_dns::Stats::default());
    let (state_tx, state) = watch::channel(ServiceState::Serving);
    match NetStack::new(super::dataplane::now()) {
        Ok(net) => {
            let driver = Driver {
                resolver: Resolver::new(weft_types::entropy::seed()),
                net,
                injector,
                counters: Arc::clone(&counters),
                stats: stats_tx,
            };
            let task = tokio::spawn(driver.run(cmd_rx, packets, stop.clone()));
            tokio::spawn(supervise(task, stop, state_tx));
        }
        Err(e) => {
            tracing::error!(error = %e, "MagicDNS cannot open port 53 in its netstack");
            state_tx.send_replace(ServiceState::CannotListen(e.to_string()));
        }
    }
    let sink = Arc::new(PacketSink {
        tx,
        counters: Arc::clone(&counters),
    });
    (
        DnsHandle {
            cmds,
            counters,
            stats,
            state,
        },
        sink,
    )
}

impl DnsHandle {
    /// A handle on no resolver, in `state` (for tests of what reads it).
    #[cfg(test)]
    pub fn in_state(state: ServiceState) -> Self {
        let (cmds, _) = mpsc::unbounded_channel();
        let (_, stats) = watch::channel(weft_dns::Stats::default());
        let (_, state) = watch::channel(state);
        Self {
            cmds,
            counters: Arc::default(),
            stats,
            state,
        }
    }

    /// Takes names and DNS settings from the current netmap.
    pub fn set_netmap(&self, nm: &NetMap) {
        let _ = self.cmds.send(Command::SetNetmap(Arc::new(nm.clone())));
    }

    /// Forgets names and settings (logged out).
    pub fn clear(&self) {
        let _ = self.cmds.send(Command::Clear);
    }

    /// Sets the nameservers the host had before Weft changed its DNS (from
    /// the OS integration, [`super::dns_os`]); service addresses are skipped.
    pub fn set_host_nameservers(&self, ips: Vec<IpAddr>) {
        let _ = self.cmds.send(Command::SetHostNameservers(ips));
    }

    /// Returns the health line when the resolver cannot serve port 53 on
    /// the service addresses, else `None`.
    pub fn health(&self) -> Option<String> {
        self.state.borrow().health()
    }

    /// Returns the counters.
    pub fn metrics(&self) -> DnsMetrics {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DnsMetrics {
            core: *self.stats.borrow(),
            queue_dropped: l(&self.counters.queue_dropped),
            packets_in: l(&self.counters.packets_in),
            packets_out: l(&self.counters.packets_out),
            reply_dropped: l(&self.counters.reply_dropped),
        }
    }

    /// Asks the resolver one question, as a client would (`weft dns query`).
    ///
    /// # Errors
    /// A name or type that does not parse; the resolver not running or not
    /// answering in time.
    pub async fn query(&self, name: &str, qtype: &str) -> anyhow::Result<DnsQueryResult> {
        let rtype: RecordType = qtype
            .to_ascii_uppercase()
            .parse()
            .map_err(|_| anyhow::anyhow!("unknown record type {qtype:?}"))?;
        let mut qname = match name.parse::<IpAddr>() {
            Ok(ip) if rtype == RecordType::PTR => Name::from(ip),
            _ => Name::from_ascii(name).with_context(|| format!("{name:?} is not a DNS name"))?,
        };
        qname.set_fqdn(true);
        let mut m = Message::new(
            u16::from_le_bytes([weft_types::entropy::bytes::<1>()[0], 0x5a]),
            MessageType::Query,
            OpCode::Query,
        );
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(qname, rtype));
        let bytes = m.to_vec().context("cannot encode the query")?;
        let (reply, rx) = oneshot::channel();
        self.cmds
            .send(Command::Query { bytes, reply })
            .map_err(|_| anyhow::anyhow!("the resolver is not running"))?;
        let answer = tokio::time::timeout(QUERY_WAIT, rx)
            .await
            .context("the resolver did not answer in time")?
            .map_err(|_| anyhow::anyhow!("the resolver dropped the query"))?;
        let msg =
            Message::from_vec(&answer.bytes).context("the resolver's answer does not parse")?;
        Ok(DnsQueryResult {
            name: name.to_owned(),
            qtype: rtype.to_string(),
            rcode: format!("{:?}", msg.metadata.response_code),
            records: msg
                .answers
                .iter()
                .map(|r| DnsAnswerRecord {
                    name: r.name.to_ascii(),
                    rtype: r.record_type().to_string(),
                    ttl: r.ttl,
                    data: r.data.to_string(),
                })
                .collect(),
            source: source(&answer.origin),
        })
    }
}

fn source(o: &Origin) -> DnsAnswerSource {
    match o {
        Origin::MagicDns => DnsAnswerSource::MagicDns,
        Origin::ExtraRecord => DnsAnswerSource::ExtraRecord,
        Origin::SplitLocal(d) => DnsAnswerSource::SplitLocal { domain: d.clone() },
        Origin::Forwarded { upstream, route } => {
            let (route, domain) = match route {
                Route::Split(d) => ("split", Some(d.clone())),
                Route::Global => ("global", None),
                Route::Host => ("host", None),
            };
            DnsAnswerSource::Forwarded {
                upstream: upstream.to_string(),
                route: route.to_owned(),
                domain,
            }
        }
        Origin::Resolver => DnsAnswerSource::Resolver,
    }
}

struct Driver {
    resolver: Resolver<Client>,
    net: NetStack,
    injector: Injector,
    counters: Arc<DriverCounters>,
    stats: watch::Sender<weft_dns::Stats>,
}

impl Driver {
    async fn run(
        mut self,
        mut cmds: mpsc::UnboundedReceiver<Command>,
        mut packets: mpsc::Receiver<Vec<u8>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let (up_tx, mut up_rx) = mpsc::unbounded_channel::<UpstreamEvent>();
        let mut pool = UdpPool::new(up_tx.clone());
        loop {
            let now = super::dataplane::now();
            let wake = [
                self.resolver.poll_timeout().map(|(t, _)| t),
                self.net.poll_at(now),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + Duration::from_secs(3600));
            let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(wake));
            tokio::select! {
                biased;
                r = stop.wait_for(|s| *s) => { let _ = r; return; }
                Some(c) = cmds.recv() => self.command(c),
                Some(p) = packets.recv() => {
                    self.net.push(p);
                    // Take what else is queued, up to a batch.
                    for _ in 0..64 {
                        match packets.try_recv() {
                            Ok(p) => { self.net.push(p); }
                            Err(_) => break,
                        }
                    }
                }
                Some(ev) = up_rx.recv() => {
                    self.upstream_event(ev, &mut pool);
                    // Take what else has come, up to a batch.
                    for _ in 0..64 {
                        match up_rx.try_recv() {
                            Ok(ev) => self.upstream_event(ev, &mut pool),
                            Err(_) => break,
                        }
                    }
                }
                () = sleep => {}
            }
            // Upstream replies waiting too: under load the packet branch
            // (polled first) is always ready and would starve them.
            for _ in 0..64 {
                match up_rx.try_recv() {
                    Ok(ev) => self.upstream_event(ev, &mut pool),
                    Err(_) => break,
                }
            }
            self.step(super::dataplane::now(), &up_tx, &mut pool);
        }
    }

    fn upstream_event(&mut self, ev: UpstreamEvent, pool: &mut UdpPool) {
        let now = super::dataplane::now();
        match ev {
            UpstreamEvent::Reply(id, bytes) => self.resolver.handle_upstream(id, &bytes, now),
            UpstreamEvent::Failed(id) => self.resolver.handle_upstream_failed(id, now),
            UpstreamEvent::Datagram { serial, bytes } => match pool.take_reply(serial, &bytes) {
                Some(id) => self.resolver.handle_upstream(id, &bytes, now),
                None => tracing::trace!("Upstream DNS datagram matching no query; dropped"),
            },
            UpstreamEvent::SocketError { serial } => {
                for id in pool.take_failed(serial) {
                    self.resolver.handle_upstream_failed(id, now);
                }
            }
        }
    }

    fn command(&mut self, c: Command) {
        let now = super::dataplane::now();
        match c {
            Command::SetNetmap(nm) => {
                self.resolver.set_netmap(&nm);
                tracing::debug!(
                    names = self.resolver.names().node_count(),
                    magic_dns = nm.dns.magic_dns,
                    "MagicDNS names updated"
                );
            }
            Command::Clear => self.resolver.clear(),
            Command::SetHostNameservers(ips) => self.resolver.set_host_nameservers(&ips),
            Command::Query { bytes, reply } => {
                self.resolver
                    .handle_query(Client::Local(reply), Transport::Tcp, &bytes, now);
            }
        }
    }

    /// One round: smoltcp in, queries to the core, the core's outputs out,
    /// smoltcp out, packets to TUN.
    fn step(
        &mut self,
        now: Instant,
        up_tx: &mpsc::UnboundedSender<UpstreamEvent>,
        pool: &mut UdpPool,
    ) {
        self.resolver.handle_timeout(now);
        self.net.poll(now);
        while let Some((bytes, peer)) = self.net.recv_udp() {
            self.resolver
                .handle_query(Client::Udp(peer), Transport::Udp, &bytes, now);
        }
        for (handle, bytes) in self.net.recv_tcp(now) {
            self.resolver
                .handle_query(Client::Tcp(handle), Transport::Tcp, &bytes, now);
        }
        while let Some(t) = self.resolver.poll_transmit() {
            match t {
                Transmit::Reply(a) => self.reply(a, now),
                Transmit::Forward {
                    id,
                    upstream,
                    transport,
                    dns_id,
                    bytes,
                } => {
                    let pooled =
                        transport == Transport::Udp && pool.send(id, upstream, dns_id, &bytes, now);
                    if !pooled {
                        upstream::spawn(id, upstream, transport, bytes, up_tx.clone());
                    }
                }
            }
        }
        self.net.poll(now);
        for p in self.net.take_outgoing() {
            if self.injector.write_tun(p) {
                self.counters.packets_out.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.stats.send_if_modified(|s| {
            let new = self.resolver.stats();
            let changed = *s != new;
            *s = new;
            changed
        });
    }

    fn reply(&mut self, a: weft_dns::Answer<Client>, now: Instant) {
        let ok = match a.client {
            Client::Udp(peer) => self.net.send_udp(peer, &a.bytes),
            Client::Tcp(h) => self.net.send_tcp(h, &a.bytes, now),
            Client::Local(tx) => tx
                .send(weft_dns::Answer {
                    client: (),
                    transport: a.transport,
                    bytes: a.bytes,
                    origin: a.origin,
                })
                .is_ok(),
        };
        if !ok {
            self.counters.reply_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn supervised(
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> (
        watch::Sender<bool>,
        watch::Receiver<ServiceState>,
        tokio::task::JoinHandle<()>,
    ) {
        let (stop_tx, stop) = watch::channel(false);
        let (state_tx, state) = watch::channel(ServiceState::Serving);
        let task = tokio::spawn(task);
        let sup = tokio::spawn(supervise(task, stop, state_tx));
        (stop_tx, state, sup)
    }

    #[tokio::test]
    async fn a_resolver_task_that_panics_is_a_health_line_naming_the_address_and_the_fix() {
        let (_stop, state, sup) = supervised(async { panic!("smoltcp said no") });
        sup.await.unwrap();
        let line = state.borrow().health().unwrap();
        assert!(line.contains("100.100.100.100 stopped"), "{line}");
        assert!(line.contains("panicked: smoltcp said no"), "{line}");
        assert!(line.contains("restart weftd"), "{line}");
        assert!(!line.contains('\n'), "one line: {line}");
    }

    #[tokio::test]
    async fn a_resolver_task_that_returns_while_weftd_runs_is_a_health_line() {
        let (_stop, state, sup) = supervised(async {});
        sup.await.unwrap();
        assert!(
            state.borrow().health().unwrap().contains("the task ended"),
            "{:?}",
            *state.borrow()
        );
    }

    #[tokio::test]
    async fn a_resolver_that_ends_because_weftd_stops_is_no_health_line() {
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let (state_tx, state) = watch::channel(ServiceState::Serving);
        let task = tokio::spawn(async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        });
        let sup = tokio::spawn(supervise(task, stop_tx.subscribe(), state_tx));
        stop_tx.send_replace(true);
        sup.await.unwrap();
        assert_eq!(*state.borrow(), ServiceState::Serving);
        assert_eq!(state.borrow().health(), None);
    }

    #[test]
    fn port_53_that_cannot_be_opened_is_a_health_line() {
        let line = ServiceState::CannotListen("unaddressable".into())
            .health()
            .unwrap();
        assert!(
            line.starts_with(
                "MagicDNS resolver at 100.100.100.100 cannot serve port 53 (unaddressable)"
            ),
            "{line}"
        );
    }

    #[tokio::test]
    async fn a_handle_reports_the_state_of_the_resolver_it_belongs_to() {
        assert_eq!(DnsHandle::in_state(ServiceState::Serving).health(), None);
        let h = DnsHandle::in_state(ServiceState::Stopped("the task ended".into()));
        assert!(h.health().unwrap().contains("stopped (the task ended)"));
    }
}
