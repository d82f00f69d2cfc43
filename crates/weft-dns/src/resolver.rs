//! [`Resolver`]: the sans-IO MagicDNS resolver (see the crate doc).

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use weft_types::NetMap;

use crate::names::{NameTable, is_under, key};
use crate::{DNS_PORT, MAX_PENDING, MAX_TRIES, MAX_UDP_ANSWER, TTL, UPSTREAM_TRY, is_service_addr};

/// How a query reached the resolver (and how an upstream is asked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Transport {
    /// One datagram per message; answers larger than the client's size are
    /// truncated (TC bit) so it retries over TCP.
    Udp,
    /// Length-prefixed messages on a stream (the prefix is the driver's).
    Tcp,
}

/// Which upstream list a forwarded name used.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Route {
    /// A split-DNS route: the name is this domain or under it.
    Split(String),
    /// The tailnet's global nameservers.
    Global,
    /// The nameservers the host had before Weft.
    Host,
}

/// Where an answer came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A tailnet node's name or address (MagicDNS), including NXDOMAIN for
    /// names under the tailnet domain that are no visible node.
    MagicDns,
    /// An admin-configured extra record.
    ExtraRecord,
    /// A split-DNS route without resolvers: answered here only (NXDOMAIN).
    SplitLocal(String),
    /// The reply of an upstream.
    Forwarded {
        /// The upstream that answered.
        upstream: SocketAddr,
        /// Why it was asked.
        route: Route,
    },
    /// Built here because nothing better could be had: SERVFAIL (no
    /// upstream, timeouts, garbage from upstream, too many in flight),
    /// FORMERR or NOTIMP.
    Resolver,
}

/// Identifies one forwarded attempt; a reply is matched to it by this id
/// (a later attempt of the same query gets a new id, so a late reply of
/// an earlier one is ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ForwardId(pub u64);

/// An upstream resolver (port 53).
pub type Upstream = SocketAddr;

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit<C> {
    /// Send `bytes` to the client that asked.
    Reply(Answer<C>),
    /// Send `bytes` (a query) to `upstream` and feed its reply to
    /// [`Resolver::handle_upstream`] with `id`.
    Forward {
        /// The attempt.
        id: ForwardId,
        /// Where to.
        upstream: Upstream,
        /// Over what.
        transport: Transport,
        /// The query's message id (random; the reply must carry it), for
        /// a driver that shares one socket among queries.
        dns_id: u16,
        /// The query (the client's, with a fresh message id).
        bytes: Vec<u8>,
    },
}

/// A reply for a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<C> {
    /// The client handle given to [`Resolver::handle_query`].
    pub client: C,
    /// The transport the query came over.
    pub transport: Transport,
    /// The DNS message.
    pub bytes: Vec<u8>,
    /// Where it came from.
    pub origin: Origin,
}

/// Counters (monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Queries received over UDP.
    pub queries_udp: u64,
    /// Queries received over TCP.
    pub queries_tcp: u64,
    /// Queries answered from the name table (names, extra records, PTR,
    /// NXDOMAIN under the tailnet domain).
    pub answered_local: u64,
    /// Queries forwarded to an upstream (first attempt).
    pub forwarded: u64,
    /// Answers with NXDOMAIN (local or forwarded).
    pub nxdomain: u64,
    /// Answers with SERVFAIL (built here or forwarded).
    pub servfail: u64,
    /// Queries that did not parse: answered FORMERR when the header was
    /// readable, dropped otherwise.
    pub malformed: u64,
    /// Upstream attempts that timed out.
    pub upstream_timeouts: u64,
    /// Upstream replies that were garbage or did not match the query.
    pub upstream_bad: u64,
}

#[derive(Debug)]
struct Pending<C> {
    client: C,
    client_transport: Transport,
    client_id: u16,
    client_max: usize,
    upstream_id: u16,
    question: (Name, RecordType),
    /// The query as sent upstream (with `upstream_id`).
    query: Vec<u8>,
    upstreams: Vec<Upstream>,
    /// Index of the upstream asked now.
    current: usize,
    transport: Transport,
    deadline: Instant,
    route: Route,
}

/// The MagicDNS resolver core. `C` is the driver's handle on a client
/// (where to send the reply); it comes back in [`Answer::client`].
#[derive(Debug)]
pub struct Resolver<C> {
    names: NameTable,
    magic_dns: bool,
    /// Global nameservers (port 53), service addresses removed.
    global: Vec<Upstream>,
    /// Split routes: domain key → resolvers.
    routes: BTreeMap<String, Vec<Upstream>>,
    host: Vec<Upstream>,
    pending: BTreeMap<ForwardId, Pending<C>>,
    next_id: u64,
    rng: u64,
    out: VecDeque<Transmit<C>>,
    stats: Stats,
}

fn upstreams(ips: &[IpAddr]) -> Vec<Upstream> {
    ips.iter()
        .filter(|ip| !is_service_addr(**ip) && !ip.is_unspecified())
        .map(|ip| SocketAddr::new(*ip, DNS_PORT))
        .collect()
}

impl<C> Resolver<C> {
    /// Creates a resolver that knows no names and no upstreams yet.
    /// `seed` drives the message ids of forwarded queries.
    pub fn new(seed: [u8; 32]) -> Self {
        let mut s = [0u8; 8];
        s.copy_from_slice(&seed[..8]);
        Self {
            names: NameTable::default(),
            magic_dns: false,
            global: Vec::new(),
            routes: BTreeMap::new(),
            host: Vec::new(),
            pending: BTreeMap::new(),
            next_id: 1,
            rng: u64::from_le_bytes(s) | 1,
            out: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// Takes names and DNS settings from a netmap (full, or rebuilt after
    /// deltas). Queries in flight keep their upstreams.
    pub fn set_netmap(&mut self, nm: &NetMap) {
        self.names = NameTable::from_netmap(nm);
        self.magic_dns = nm.dns.magic_dns;
        self.global = upstreams(&nm.dns.nameservers);
        self.routes = nm
            .dns
            .routes
            .iter()
            .map(|(d, ips)| (key(d.as_str()), upstreams(ips)))
            .collect();
    }

    /// Forgets names and settings (logged out, stopped).
    pub fn clear(&mut self) {
        self.names = NameTable::default();
        self.magic_dns = false;
        self.global.clear();
        self.routes.clear();
    }

    /// Sets the nameservers the host had before Weft (used when the
    /// tailnet gives no global ones). Service addresses are skipped, so
    /// the resolver never forwards to itself.
    pub fn set_host_nameservers(&mut self, ips: &[IpAddr]) {
        self.host = upstreams(ips);
    }

    /// Returns the host nameservers in use.
    pub fn host_nameservers(&self) -> Vec<IpAddr> {
        self.host.iter().map(SocketAddr::ip).collect()
    }

    /// Returns the counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Returns the name table.
    pub fn names(&self) -> &NameTable {
        &self.names
    }

    /// Returns how many forwarded queries wait for an upstream.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Returns the next thing to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit<C>> {
        self.out.pop_front()
    }

    /// Returns when [`Resolver::handle_timeout`] must run next, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        self.pending
            .values()
            .map(|p| p.deadline)
            .min()
            .map(|d| (d, "upstream timeout"))
    }

    /// Handles one query from a client. The answer, or the forward, is
    /// queued for [`Resolver::poll_transmit`]; a message too broken to
    /// answer is dropped (and counted).
    pub fn handle_query(&mut self, client: C, transport: Transport, bytes: &[u8], now: Instant) {
        match transport {
            Transport::Udp => self.stats.queries_udp += 1,
            Transport::Tcp => self.stats.queries_tcp += 1,
        }
        let req = match Message::from_vec(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.stats.malformed += 1;
                tracing::trace!(error = %e, "Malformed DNS query");
                if let Some(reply) = formerr(bytes) {
                    self.reply(client, transport, reply, Origin::Resolver);
                }
                return;
            }
        };
        if req.metadata.message_type != MessageType::Query {
            self.stats.malformed += 1;
            return;
        }
        let client_max = match transport {
            Transport::Udp => usize::from(req.max_payload()).clamp(512, MAX_UDP_ANSWER),
            Transport::Tcp => usize::from(u16::MAX),
        };
        if req.metadata.op_code != OpCode::Query {
            let m = respond(&req, ResponseCode::NotImp, Vec::new());
            self.reply_msg(client, transport, client_max, &m, Origin::Resolver);
            return;
        }
        let [q] = req.queries.as_slice() else {
            self.stats.malformed += 1;
            let m = respond(&req, ResponseCode::FormErr, Vec::new());
            self.reply_msg(client, transport, client_max, &m, Origin::Resolver);
            return;
        };
        let name = key(&q.name().to_ascii());
        let qtype = q.query_type();
        match self.decide(&name, q.name(), qtype, q.query_class()) {
            Decision::Local { origin, addrs, ptr } => {
                self.stats.answered_local += 1;
                let m = local_answer(&req, q.name(), qtype, addrs, ptr);
                self.reply_msg(client, transport, client_max, &m, origin);
            }
            Decision::NxDomain(origin) => {
                self.stats.answered_local += 1;
                let m = respond(&req, ResponseCode::NXDomain, Vec::new());
                self.reply_msg(client, transport, client_max, &m, origin);
            }
            Decision::Forward(route, list) => {
                if list.is_empty() || self.pending.len() >= MAX_PENDING {
                    let m = respond(&req, ResponseCode::ServFail, Vec::new());
                    self.reply_msg(client, transport, client_max, &m, Origin::Resolver);
                    return;
                }
                self.stats.forwarded += 1;
                let upstream_id = self.random_u16();
                let mut query = bytes.to_vec();
                query[..2].copy_from_slice(&upstream_id.to_be_bytes());
                let pending = Pending {
                    client,
                    client_transport: transport,
                    client_id: req.metadata.id,
                    client_max,
                    upstream_id,
                    question: (q.name().to_lowercase(), qtype),
                    query,
                    upstreams: list.into_iter().take(MAX_TRIES).collect(),
                    current: 0,
                    transport,
                    deadline: now + UPSTREAM_TRY,
                    route,
                };
                self.send_attempt(pending, now);
            }
        }
    }

    /// Handles an upstream's reply to attempt `id` (unknown or late ids are
    /// ignored). A reply that is garbage, or answers another question,
    /// moves on to the next upstream, or SERVFAIL.
    pub fn handle_upstream(&mut self, id: ForwardId, bytes: &[u8], now: Instant) {
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        let msg = match Message::from_vec(bytes) {
            Ok(m)
                if m.metadata.id == p.upstream_id
                    && m.metadata.message_type == MessageType::Response
                    && m.queries.len() == 1
                    && m.queries.first().is_some_and(|q| {
                        q.query_type() == p.question.1 && q.name().to_lowercase() == p.question.0
                    }) =>
            {
                m
            }
            _ => {
                self.stats.upstream_bad += 1;
                tracing::debug!(upstream = %p.upstreams[p.current], "Bad reply from an upstream resolver");
                self.next_upstream(p, now);
                return;
            }
        };
        if msg.metadata.truncation
            && p.transport == Transport::Udp
            && p.client_transport == Transport::Tcp
        {
            let retry = Pending {
                transport: Transport::Tcp,
                deadline: now + UPSTREAM_TRY,
                ..p
            };
            self.send_attempt(retry, now);
            return;
        }
        let upstream = p.upstreams[p.current];
        let origin = Origin::Forwarded {
            upstream,
            route: p.route.clone(),
        };
        match msg.metadata.response_code {
            ResponseCode::NXDomain => self.stats.nxdomain += 1,
            ResponseCode::ServFail => self.stats.servfail += 1,
            _ => {}
        }
        if p.client_transport == Transport::Udp && bytes.len() > p.client_max {
            let mut t = msg.truncate();
            t.metadata.id = p.client_id;
            match t.to_vec() {
                Ok(b) => self.reply(p.client, p.client_transport, b, origin),
                Err(e) => tracing::debug!(error = %e, "Could not encode a truncated answer"),
            }
            return;
        }
        let mut b = bytes.to_vec();
        b[..2].copy_from_slice(&p.client_id.to_be_bytes());
        self.reply(p.client, p.client_transport, b, origin);
    }

    /// Handles an attempt the driver could not make or complete (socket
    /// error, connection refused): the next upstream is tried at once.
    pub fn handle_upstream_failed(&mut self, id: ForwardId, now: Instant) {
        if let Some(p) = self.pending.remove(&id) {
            self.next_upstream(p, now);
        }
    }

    /// Moves attempts past their deadline to the next upstream, or answers
    /// SERVFAIL.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<ForwardId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(p) = self.pending.remove(&id) {
                self.stats.upstream_timeouts += 1;
                self.next_upstream(p, now);
            }
        }
    }

    // -- helpers --------------------------------------------------------

    fn decide(&self, name: &str, qname: &Name, qtype: RecordType, class: DNSClass) -> Decision {
        if class == DNSClass::IN {
            if let Some(addrs) = self.names.extra.get(name) {
                return Decision::Local {
                    origin: Origin::ExtraRecord,
                    addrs: addrs.clone(),
                    ptr: None,
                };
            }
            if self.magic_dns
                && let Some(d) = self.local_magic(name, qname, qtype)
            {
                return d;
            }
        }
        let route = self
            .routes
            .iter()
            .filter(|(d, _)| is_under(name, d))
            .max_by_key(|(d, _)| d.len());
        match route {
            Some((d, list)) if list.is_empty() => Decision::NxDomain(Origin::SplitLocal(d.clone())),
            Some((d, list)) => Decision::Forward(Route::Split(d.clone()), list.clone()),
            None if !self.global.is_empty() => {
                Decision::Forward(Route::Global, self.global.clone())
            }
            None => Decision::Forward(Route::Host, self.host.clone()),
        }
    }

    fn local_magic(&self, name: &str, qname: &Name, qtype: RecordType) -> Option<Decision> {
        let names = &self.names;
        let node = |fqdn: &str| {
            names.nodes.get(fqdn).map(|addrs| Decision::Local {
                origin: Origin::MagicDns,
                addrs: addrs.clone(),
                ptr: None,
            })
        };
        if let Some(domain) = &names.domain
            && is_under(name, domain)
        {
            return Some(node(name).unwrap_or(Decision::NxDomain(Origin::MagicDns)));
        }
        if !name.is_empty() && !name.contains('.') {
            if let Some(fqdn) = names.short.get(name) {
                return node(fqdn);
            }
            return None;
        }
        if name.ends_with(".in-addr.arpa") || name.ends_with(".ip6.arpa") {
            let net = qname.parse_arpa_name().ok()?;
            let ip = net.addr();
            if net.prefix_len() != net.max_prefix_len() || !is_tailnet_addr(ip) {
                return None;
            }
            return Some(match names.reverse.get(&ip) {
                Some(fqdn) => Decision::Local {
                    origin: Origin::MagicDns,
                    addrs: Vec::new(),
                    ptr: (qtype == RecordType::PTR || qtype == RecordType::ANY)
                        .then(|| fqdn.clone())
                        .or(Some(String::new())),
                },
                None => Decision::NxDomain(Origin::MagicDns),
            });
        }
        None
    }

    fn send_attempt(&mut self, mut p: Pending<C>, now: Instant) {
        let id = ForwardId(self.next_id);
        self.next_id += 1;
        p.deadline = now + UPSTREAM_TRY;
        self.out.push_back(Transmit::Forward {
            id,
            upstream: p.upstreams[p.current],
            transport: p.transport,
            dns_id: p.upstream_id,
            bytes: p.query.clone(),
        });
        self.pending.insert(id, p);
    }

    fn next_upstream(&mut self, mut p: Pending<C>, now: Instant) {
        if p.current + 1 < p.upstreams.len() {
            p.current += 1;
            p.transport = p.client_transport;
            self.send_attempt(p, now);
            return;
        }
        let mut m = Message::error_msg(p.client_id, OpCode::Query, ResponseCode::ServFail);
        m.metadata.recursion_available = true;
        m.metadata.recursion_desired = true;
        m.add_query(hickory_proto::op::Query::query(
            p.question.0.clone(),
            p.question.1,
        ));
        self.stats.servfail += 1;
        match m.to_vec() {
            Ok(b) => self.reply(p.client, p.client_transport, b, Origin::Resolver),
            Err(e) => tracing::debug!(error = %e, "Could not encode SERVFAIL"),
        }
    }

    fn reply_msg(
        &mut self,
        client: C,
        transport: Transport,
        max: usize,
        m: &Message,
        origin: Origin,
    ) {
        match m.metadata.response_code {
            ResponseCode::NXDomain => self.stats.nxdomain += 1,
            ResponseCode::ServFail => self.stats.servfail += 1,
            _ => {}
        }
        let bytes = match m.to_vec() {
            Ok(b) if b.len() <= max => b,
            Ok(_) => match m.truncate().to_vec() {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!(error = %e, "Could not encode a truncated answer");
                    return;
                }
            },
            Err(e) => {
                tracing::debug!(error = %e, "Could not encode an answer");
                return;
            }
        };
        self.reply(client, transport, bytes, origin);
    }

    fn reply(&mut self, client: C, transport: Transport, bytes: Vec<u8>, origin: Origin) {
        self.out.push_back(Transmit::Reply(Answer {
            client,
            transport,
            bytes,
            origin,
        }));
    }

    fn random_u16(&mut self) -> u16 {
        // splitmix64: ids only need to be hard to guess for an off-path
        // sender, and the driver also uses a fresh source port per query.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as u16
    }
}

enum Decision {
    /// Answer from the table: `addrs` filtered by type; `ptr`: `Some` for a
    /// reverse name (empty string: the name exists, no record of that type).
    Local {
        origin: Origin,
        addrs: Vec<IpAddr>,
        ptr: Option<String>,
    },
    NxDomain(Origin),
    Forward(Route, Vec<Upstream>),
}

/// Returns whether `ip` is a tailnet address (100.64.0.0/10 or the project
/// ULA fd7a:115c:a1e0::/48), whose reverse names are answered here.
fn is_tailnet_addr(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            o[0] == 100 && (o[1] & 0xc0) == 64
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            s[0] == 0xfd7a && s[1] == 0x115c && s[2] == 0xa1e0
        }
    }
}

/// Returns a FORMERR reply for a query whose header is readable but whose
/// body is not; `None` when not even that (or it is no query).
fn formerr(bytes: &[u8]) -> Option<Vec<u8>> {
    let head = bytes.get(..12)?;
    if head[2] & 0x80 != 0 {
        return None;
    }
    let id = u16::from_be_bytes([head[0], head[1]]);
    let op = OpCode::from_u8((head[2] >> 3) & 0x0f);
    Message::error_msg(id, op, ResponseCode::FormErr)
        .to_vec()
        .ok()
}

/// Returns the response skeleton for `req`.
fn respond(req: &Message, rcode: ResponseCode, answers: Vec<Record>) -> Message {
    let mut m = Message::response(req.metadata.id, req.metadata.op_code);
    m.metadata = Metadata::response_from_request(&req.metadata);
    m.metadata.response_code = rcode;
    m.metadata.recursion_available = true;
    m.add_queries(req.queries.iter().cloned());
    m.answers = answers;
    if req.edns.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(MAX_UDP_ANSWER as u16);
        m.set_edns(e);
    }
    m
}

fn local_answer(
    req: &Message,
    qname: &Name,
    qtype: RecordType,
    addrs: Vec<IpAddr>,
    ptr: Option<String>,
) -> Message {
    let mut answers = Vec::new();
    if let Some(target) = ptr.filter(|t| !t.is_empty())
        && let Ok(mut n) = Name::from_ascii(&target)
    {
        n.set_fqdn(true);
        answers.push(Record::from_rdata(qname.clone(), TTL, RData::PTR(PTR(n))));
    }
    for a in addrs {
        let rdata = match (a, qtype) {
            (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(v4)),
            (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(v6)),
            _ => continue,
        };
        answers.push(Record::from_rdata(qname.clone(), TTL, rdata));
    }
    let mut m = respond(req, ResponseCode::NoError, answers);
    m.metadata.authoritative = true;
    m
}

#[cfg(test)]
mod tests;
