//! Model-based test: random sequences of inbound and outbound packets,
//! clock steps, policy changes and sweeps run against the filter and
//! against a plain reference model of the semantics in the crate docs (a
//! list of flows, linear search, the rule-by-rule matcher of `weft-types`).
//! Every verdict must agree, and after each sweep so must the flow count.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use proptest::prelude::*;
use weft_filter::{Accept, CompiledFilter, DropReason, Outbound, Timeouts, Verdict};

// ----- what is generated -----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tcp { lport: u16, rport: u16, flags: u8 },
    Udp { lport: u16, rport: u16 },
    EchoRequest { id: u16 },
    EchoReply { id: u16 },
}

/// A packet between this node and a peer, described from this node's side.
#[derive(Debug, Clone, Copy)]
struct Spec {
    v6: bool,
    bob: bool,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Op {
    In(Spec),
    /// Inbound, addressed to another tailnet address.
    InNotForUs(Spec),
    /// An ICMP error quoting the outbound packet `Spec` describes.
    InError(Spec),
    Out(Spec),
    Advance(u64),
    SetFilter(usize),
    Shields(bool),
    Sweep,
}

fn filters() -> [CompiledFilter; 4] {
    [
        alice_ssh_and_web(),
        alice_ssh_only(),
        udp_service(),
        CompiledFilter::default(),
    ]
}

fn kind() -> impl Strategy<Value = Kind> {
    let lport = prop_oneof![Just(22u16), Just(80), Just(5000), Just(40000)];
    let rport = prop_oneof![3 => Just(50000u16), 1 => Just(53)];
    let flags = prop_oneof![
        3 => Just(SYN),
        2 => Just(SYN | ACK),
        4 => Just(ACK),
        1 => Just(FIN | ACK),
        1 => Just(RST),
    ];
    prop_oneof![
        4 => (lport.clone(), rport.clone(), flags).prop_map(|(lport, rport, flags)| Kind::Tcp { lport, rport, flags }),
        2 => (lport, rport).prop_map(|(lport, rport)| Kind::Udp { lport, rport }),
        1 => (1u16..3).prop_map(|id| Kind::EchoRequest { id }),
        1 => (1u16..3).prop_map(|id| Kind::EchoReply { id }),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    // Few distinct tuples, so that sequences revisit the same flows often.
    (
        proptest::bool::weighted(0.3),
        proptest::bool::weighted(0.3),
        kind(),
    )
        .prop_map(|(v6, bob, kind)| Spec { v6, bob, kind })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => spec().prop_map(Op::In),
        1 => spec().prop_map(Op::InNotForUs),
        2 => spec().prop_map(Op::InError),
        8 => spec().prop_map(Op::Out),
        3 => prop_oneof![0u64..5, 25u64..35, 55u64..65, Just(5 * 24 * 3600)].prop_map(Op::Advance),
        1 => (0usize..4).prop_map(Op::SetFilter),
        1 => any::<bool>().prop_map(Op::Shields),
        1 => Just(Op::Sweep),
    ]
}

// ----- packet bytes -----

fn addrs(s: &Spec) -> (&'static str, &'static str) {
    match (s.v6, s.bob) {
        (false, false) => (ME4, ALICE4),
        (false, true) => (ME4, BOB4),
        (true, false) => (ME6, ALICE6),
        (true, true) => (ME6, BOB6),
    }
}

fn inbound_bytes(s: &Spec, dst_override: Option<&str>) -> Vec<u8> {
    let (me, peer) = addrs(s);
    let me = dst_override.unwrap_or(me);
    match s.kind {
        Kind::Tcp {
            lport,
            rport,
            flags,
        } => tcp(peer, me, rport, lport, flags),
        Kind::Udp { lport, rport } => udp(peer, me, rport, lport),
        Kind::EchoRequest { id } => echo_request(peer, me, id),
        Kind::EchoReply { id } => echo_reply(peer, me, id),
    }
}

fn outbound_bytes(s: &Spec) -> Vec<u8> {
    let (me, peer) = addrs(s);
    match s.kind {
        Kind::Tcp {
            lport,
            rport,
            flags,
        } => tcp(me, peer, lport, rport, flags),
        Kind::Udp { lport, rport } => udp(me, peer, lport, rport),
        Kind::EchoRequest { id } => echo_request(me, peer, id),
        Kind::EchoReply { id } => echo_reply(me, peer, id),
    }
}

// ----- the reference model -----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    In,
    Out,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tcp {
    Opening,
    Open { fin_in: bool, fin_out: bool },
    Closing,
}

/// (protocol, v6, bob, local port or echo id, remote port or echo opener).
type Key = (u8, bool, bool, u16, u16);

#[derive(Debug, Clone)]
struct MFlow {
    key: Key,
    origin: Side,
    tcp: Option<Tcp>,
    last: Instant,
}

struct Model {
    filter: CompiledFilter,
    shields: bool,
    flows: Vec<MFlow>,
    t: Timeouts,
}

fn key_of(s: &Spec, dir: Side) -> (Key, u8) {
    let icmp = if s.v6 { ICMPV6 } else { ICMP };
    // Echo flows are named by the side that sent the request.
    let echo_opener = |request: bool| -> u16 {
        match (dir, request) {
            (Side::Out, true) | (Side::In, false) => 0,
            _ => 1,
        }
    };
    match s.kind {
        Kind::Tcp { lport, rport, .. } => ((TCP, s.v6, s.bob, lport, rport), TCP),
        Kind::Udp { lport, rport } => ((UDP, s.v6, s.bob, lport, rport), UDP),
        Kind::EchoRequest { id } => ((icmp, s.v6, s.bob, id, echo_opener(true)), icmp),
        Kind::EchoReply { id } => ((icmp, s.v6, s.bob, id, echo_opener(false)), icmp),
    }
}

impl Model {
    fn timeout(&self, f: &MFlow) -> Duration {
        match f.tcp {
            Some(Tcp::Opening) => self.t.tcp_opening,
            Some(Tcp::Open { .. }) => self.t.tcp_established,
            Some(Tcp::Closing) => self.t.tcp_closing,
            None if f.key.0 == UDP => self.t.udp,
            None => self.t.icmp,
        }
    }

    fn live(&mut self, key: Key, now: Instant) -> Option<usize> {
        let i = self.flows.iter().position(|f| f.key == key)?;
        if now.saturating_duration_since(self.flows[i].last) >= self.timeout(&self.flows[i]) {
            self.flows.remove(i);
            return None;
        }
        Some(i)
    }

    fn allowed(&self, s: &Spec, proto: u8, port: u16) -> Option<Option<weft_filter::RuleOrigin>> {
        let (me, peer) = addrs(s);
        self.filter
            .rules()
            .iter()
            .find(|r| r.matches(ip(peer), ip(me), proto, port))
            .map(|r| r.origin)
    }

    fn judge(&mut self, s: &Spec, key: Key, proto: u8, now: Instant) -> Verdict {
        if self.shields {
            return Verdict::Drop(DropReason::ShieldsUp);
        }
        let port = if proto == TCP || proto == UDP {
            key.3
        } else {
            0
        };
        let Some(rule) = self.allowed(s, proto, port) else {
            return Verdict::Drop(DropReason::NotAllowed);
        };
        self.flows.retain(|f| f.key != key);
        self.flows.push(MFlow {
            key,
            origin: Side::In,
            tcp: (proto == TCP).then_some(Tcp::Opening),
            last: now,
        });
        Verdict::Accept(Accept::NewFlow { rule })
    }

    fn step_tcp(f: &mut MFlow, dir: Side, flags: u8) {
        let Some(state) = f.tcp else { return };
        f.tcp = Some(if flags & RST != 0 && state != Tcp::Closing {
            Tcp::Closing
        } else {
            match state {
                Tcp::Opening if dir != f.origin && flags & SYN != 0 && flags & ACK != 0 => {
                    Tcp::Open {
                        fin_in: false,
                        fin_out: false,
                    }
                }
                Tcp::Open { fin_in, fin_out } if flags & FIN != 0 => {
                    let fin_in = fin_in || dir == Side::In;
                    let fin_out = fin_out || dir == Side::Out;
                    if fin_in && fin_out {
                        Tcp::Closing
                    } else {
                        Tcp::Open { fin_in, fin_out }
                    }
                }
                other => other,
            }
        });
    }

    fn inbound(&mut self, s: &Spec, now: Instant) -> Verdict {
        let (key, proto) = key_of(s, Side::In);
        let found = self.live(key, now);
        match (s.kind, found) {
            (Kind::Tcp { flags, .. }, Some(i)) => {
                let bare_syn = flags & SYN != 0 && flags & ACK == 0;
                if bare_syn && self.flows[i].tcp != Some(Tcp::Opening) {
                    return self.judge(s, key, proto, now);
                }
                let f = &mut self.flows[i];
                Self::step_tcp(f, Side::In, flags);
                f.last = f.last.max(now);
                Verdict::Accept(Accept::Flow)
            }
            (Kind::Tcp { flags, .. }, None) if flags & SYN != 0 && flags & ACK == 0 => {
                self.judge(s, key, proto, now)
            }
            (Kind::Tcp { .. } | Kind::EchoReply { .. }, None) => Verdict::Drop(DropReason::NoFlow),
            (_, Some(i)) => {
                let f = &mut self.flows[i];
                f.last = f.last.max(now);
                Verdict::Accept(Accept::Flow)
            }
            (_, None) => self.judge(s, key, proto, now),
        }
    }

    fn outbound(&mut self, s: &Spec, now: Instant) -> Outbound {
        let (key, proto) = key_of(s, Side::Out);
        let found = self.live(key, now);
        let open = |model: &mut Model| {
            model.flows.retain(|f| f.key != key);
            model.flows.push(MFlow {
                key,
                origin: Side::Out,
                tcp: (proto == TCP).then_some(Tcp::Opening),
                last: now,
            });
            Outbound::NewFlow
        };
        match (s.kind, found) {
            (Kind::Tcp { flags, .. }, Some(i)) => {
                let bare_syn = flags & SYN != 0 && flags & ACK == 0;
                if bare_syn && self.flows[i].tcp != Some(Tcp::Opening) {
                    return open(self);
                }
                let f = &mut self.flows[i];
                Self::step_tcp(f, Side::Out, flags);
                f.last = f.last.max(now);
                Outbound::Flow
            }
            (Kind::Tcp { flags, .. }, None) if flags & SYN != 0 && flags & ACK == 0 => open(self),
            (Kind::Tcp { .. } | Kind::EchoReply { .. }, None) => Outbound::Untracked,
            (_, Some(i)) => {
                let f = &mut self.flows[i];
                f.last = f.last.max(now);
                Outbound::Flow
            }
            (_, None) => open(self),
        }
    }

    fn icmp_error(&mut self, quoted: &Spec, now: Instant) -> Verdict {
        let (key, _) = key_of(quoted, Side::Out);
        match self.live(key, now) {
            Some(_) => Verdict::Accept(Accept::Related),
            None => Verdict::Drop(DropReason::NoFlow),
        }
    }

    fn rejudge(&mut self) {
        let flows = std::mem::take(&mut self.flows);
        for f in flows {
            let (proto, v6, bob, lport, _) = f.key;
            let keep = f.origin == Side::Out || {
                let s = Spec {
                    v6,
                    bob,
                    kind: Kind::Udp { lport, rport: 0 },
                };
                let port = if proto == TCP || proto == UDP {
                    lport
                } else {
                    0
                };
                !self.shields && self.allowed(&s, proto, port).is_some()
            };
            if keep {
                self.flows.push(f);
            }
        }
    }

    fn live_count(&self, now: Instant) -> u64 {
        self.flows
            .iter()
            .filter(|f| now.saturating_duration_since(f.last) < self.timeout(f))
            .count() as u64
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn the_filter_agrees_with_the_reference_model(initial in 0usize..4, ops in proptest::collection::vec(op(), 1..120)) {
        let filters = filters();
        let f = node(filters[initial].clone());
        let mut m = Model {
            filter: filters[initial].clone(),
            shields: false,
            flows: Vec::new(),
            t: Timeouts::default(),
        };
        let mut now = t0();
        for (step, op) in ops.iter().enumerate() {
            match op {
                Op::In(s) => {
                    let got = f.inbound(&inbound_bytes(s, None), now);
                    prop_assert_eq!(got, m.inbound(s, now), "step {}: {:?}", step, op);
                }
                Op::InNotForUs(s) => {
                    let other = if s.v6 { "fd7a:115c:a1e0::99" } else { OTHER4 };
                    let got = f.inbound(&inbound_bytes(s, Some(other)), now);
                    prop_assert_eq!(got, Verdict::Drop(DropReason::NotForUs), "step {}", step);
                }
                Op::InError(s) => {
                    let (me, peer) = addrs(s);
                    let got = f.inbound(&unreachable(peer, me, &outbound_bytes(s)), now);
                    prop_assert_eq!(got, m.icmp_error(s, now), "step {}: {:?}", step, op);
                }
                Op::Out(s) => {
                    let got = f.outbound(&outbound_bytes(s), now);
                    prop_assert_eq!(got, m.outbound(s, now), "step {}: {:?}", step, op);
                }
                Op::Advance(n) => now += Duration::from_secs(*n),
                Op::SetFilter(i) => {
                    f.set_filter(filters[*i].clone());
                    m.filter = filters[*i].clone();
                    m.rejudge();
                }
                Op::Shields(up) => {
                    f.set_shields_up(*up);
                    m.shields = *up;
                    m.rejudge();
                }
                Op::Sweep => {
                    f.handle_timeout(now);
                    prop_assert_eq!(f.stats().flows, m.live_count(now), "step {}", step);
                }
            }
        }
    }
}
