//! The resolver's side of the packet path: a smoltcp interface that owns
//! the service addresses, with a UDP socket and TCP listeners on port 53.
//! Packets from TUN go in ([`NetStack::push`]); the packets smoltcp builds
//! (with their checksums) come out of [`NetStack::take_outgoing`] for TUN.
//!
//! smoltcp has no accept queue: [`TCP_LISTENERS`] sockets are kept
//! listening, and a new one is added each time one is taken by a client,
//! up to [`TCP_MAX`] connections (clients past that get a reset).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint};
use weft_dns::{DNS_PORT, SERVICE_V4, SERVICE_V6};

/// TCP sockets kept in `Listen`.
pub const TCP_LISTENERS: usize = 4;
/// TCP connections at most (listeners included).
pub const TCP_MAX: usize = 64;
/// A TCP connection with nothing to do is closed after this.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// The largest DNS message plus its length prefix.
const TCP_BUF: usize = 64 * 1024 + 2;
/// UDP datagrams buffered each way.
const UDP_PACKETS: usize = 256;
/// IP packets from TUN waiting for smoltcp.
const RX_QUEUE: usize = 1024;
/// The interface MTU (the TUN's is smaller; replies are much smaller).
const MTU: usize = 65535;

/// An in-memory smoltcp device: packets in from TUN, packets out for TUN.
#[derive(Default)]
struct Stub {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
}

struct RxToken(Vec<u8>);
struct TxToken<'a>(&'a mut Vec<Vec<u8>>);

impl smoltcp::phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl smoltcp::phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0; len];
        let r = f(&mut buf);
        self.0.push(buf);
        r
    }
}

impl Device for Stub {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(
        &mut self,
        _now: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let p = self.rx.pop_front()?;
        Some((RxToken(p), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _now: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        Some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = MTU;
        // Checksums are computed and verified by smoltcp (the default, set
        // explicitly): the host's stack checks what we write to TUN.
        caps.checksum = smoltcp::phy::ChecksumCapabilities::default();
        caps
    }
}

/// Where a UDP query came from (and where its reply goes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpPeer {
    pub client: IpEndpoint,
    pub local: IpAddress,
}

/// One TCP connection: its socket and a serial number, since smoltcp
/// reuses the handles of removed sockets (a late forwarded answer must not
/// reach a later connection on the same handle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpConnId {
    handle: SocketHandle,
    serial: u64,
}

/// One TCP connection's framing state.
struct TcpConn {
    id: TcpConnId,
    /// Bytes received and not yet a whole message.
    buf: Vec<u8>,
    last_active: Instant,
}

/// The interface, its sockets, and the TCP framing.
pub struct NetStack {
    iface: Interface,
    device: Stub,
    sockets: SocketSet<'static>,
    udp: SocketHandle,
    tcp: Vec<TcpConn>,
    next_serial: u64,
    base: Instant,
    /// Packets that were not for us or did not fit.
    pub rx_dropped: u64,
}

impl NetStack {
    /// Creates the interface at `now`.
    ///
    /// # Errors
    /// The UDP socket cannot be bound to port 53 (then nothing is served).
    pub fn new(now: Instant) -> Result<Self, udp::BindError> {
        let mut device = Stub::default();
        let mut iface = Interface::new(
            Config::new(HardwareAddress::Ip),
            &mut device,
            smoltcp::time::Instant::ZERO,
        );
        iface.update_ip_addrs(|a| {
            // Prefix 0: every client is "on link" (no routes needed; with
            // the IP medium there is no neighbor discovery).
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(SERVICE_V4), 0));
            let _ = a.push(IpCidr::new(IpAddress::Ipv6(SERVICE_V6), 0));
        });
        let mut sockets = SocketSet::new(Vec::new());
        let mut u = udp::Socket::new(
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; UDP_PACKETS],
                vec![0; UDP_PACKETS * 1500],
            ),
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; UDP_PACKETS],
                vec![0; UDP_PACKETS * 1500],
            ),
        );
        // Bound to the port on every address of the interface.
        u.bind(DNS_PORT)?;
        let udp = sockets.add(u);
        let mut s = Self {
            iface,
            device,
            sockets,
            udp,
            tcp: Vec::new(),
            next_serial: 0,
            base: now,
            rx_dropped: 0,
        };
        s.rearm_listeners(now);
        Ok(s)
    }

    fn smol(&self, now: Instant) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(
            i64::try_from(now.saturating_duration_since(self.base).as_micros()).unwrap_or(i64::MAX),
        )
    }

    /// Queues one packet from TUN; returns `false` (and counts) when the
    /// queue is full.
    pub fn push(&mut self, packet: Vec<u8>) -> bool {
        if self.device.rx.len() >= RX_QUEUE {
            self.rx_dropped += 1;
            return false;
        }
        self.device.rx.push_back(packet);
        true
    }

    /// Runs smoltcp at `now`: queued packets in, due retransmissions and
    /// replies out.
    pub fn poll(&mut self, now: Instant) {
        let t = self.smol(now);
        self.iface.poll(t, &mut self.device, &mut self.sockets);
    }

    /// Returns when [`NetStack::poll`] must run next (TCP timers).
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        let t = self.smol(now);
        self.iface
            .poll_delay(t, &self.sockets)
            .map(|d| now + Duration::from_micros(d.total_micros()))
    }

    /// Returns the packets smoltcp built since the last call (for TUN).
    pub fn take_outgoing(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.device.tx)
    }

    /// Returns the next UDP query.
    pub fn recv_udp(&mut self) -> Option<(Vec<u8>, UdpPeer)> {
        let s = self.sockets.get_mut::<udp::Socket>(self.udp);
        let (data, meta) = s.recv().ok()?;
        let local = meta.local_address?;
        Some((
            data.to_vec(),
            UdpPeer {
                client: meta.endpoint,
                local,
            },
        ))
    }

    /// Queues a UDP reply (from the address the query went to).
    pub fn send_udp(&mut self, peer: UdpPeer, bytes: &[u8]) -> bool {
        let s = self.sockets.get_mut::<udp::Socket>(self.udp);
        let meta = udp::UdpMetadata {
            endpoint: peer.client,
            local_address: Some(peer.local),
            meta: Default::default(),
        };
        s.send_slice(bytes, meta).is_ok()
    }

    /// Returns the whole DNS messages received on TCP connections, with the
    /// connection's handle; closes connections that are done or idle and
    /// keeps listeners armed.
    pub fn recv_tcp(&mut self, now: Instant) -> Vec<(TcpConnId, Vec<u8>)> {
        let mut out = Vec::new();
        let mut scratch = vec![0u8; 16 * 1024];
        for c in &mut self.tcp {
            let s = self.sockets.get_mut::<tcp::Socket>(c.id.handle);
            if s.is_listening() {
                c.last_active = now;
                continue;
            }
            while s.can_recv() {
                match s.recv_slice(&mut scratch) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        c.last_active = now;
                        c.buf
                            .extend_from_slice(scratch.get(..n).unwrap_or_default());
                    }
                }
            }
            while c.buf.len() >= 2 {
                let len = usize::from(u16::from_be_bytes([c.buf[0], c.buf[1]]));
                if c.buf.len() < 2 + len {
                    break;
                }
                let msg: Vec<u8> = c.buf.drain(..2 + len).skip(2).collect();
                out.push((c.id, msg));
            }
            let idle = now.saturating_duration_since(c.last_active) > TCP_IDLE;
            // The client closed its side and has everything: close ours.
            let done = s.state() == tcp::State::CloseWait && s.send_queue() == 0;
            if s.is_active() && (done || idle) {
                s.close();
            }
        }
        self.rearm_listeners(now);
        out
    }

    /// Queues a reply on a TCP connection (with its length prefix).
    pub fn send_tcp(&mut self, id: TcpConnId, bytes: &[u8], now: Instant) -> bool {
        let Some(c) = self.tcp.iter_mut().find(|c| c.id == id) else {
            return false;
        };
        c.last_active = now;
        let s = self.sockets.get_mut::<tcp::Socket>(id.handle);
        let Ok(len) = u16::try_from(bytes.len()) else {
            return false;
        };
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(bytes);
        s.send_slice(&framed).is_ok_and(|n| n == framed.len())
    }

    /// Removes closed connections and adds listeners up to
    /// [`TCP_LISTENERS`] (within [`TCP_MAX`]).
    fn rearm_listeners(&mut self, now: Instant) {
        let sockets = &mut self.sockets;
        self.tcp.retain(|c| {
            let closed = sockets.get_mut::<tcp::Socket>(c.id.handle).state() == tcp::State::Closed;
            if closed {
                sockets.remove(c.id.handle);
            }
            !closed
        });
        let listening = self
            .tcp
            .iter()
            .filter(|c| sockets.get_mut::<tcp::Socket>(c.id.handle).is_listening())
            .count();
        for _ in listening..TCP_LISTENERS {
            if self.tcp.len() >= TCP_MAX {
                break;
            }
            let mut s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; TCP_BUF]),
                tcp::SocketBuffer::new(vec![0; TCP_BUF]),
            );
            s.set_timeout(Some(smoltcp::time::Duration::from_secs(TCP_IDLE.as_secs())));
            if s.listen(DNS_PORT).is_err() {
                break;
            }
            let handle = sockets.add(s);
            self.next_serial += 1;
            self.tcp.push(TcpConn {
                id: TcpConnId {
                    handle,
                    serial: self.next_serial,
                },
                buf: Vec::new(),
                last_active: now,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr};

    use super::*;

    const CLIENT: std::net::Ipv4Addr = std::net::Ipv4Addr::new(100, 64, 0, 1);

    fn t0() -> Instant {
        crate::clock::now()
    }

    fn udp_packet(payload: &[u8]) -> Vec<u8> {
        let udp = UdpRepr {
            src_port: 40000,
            dst_port: DNS_PORT,
        };
        let ip = Ipv4Repr {
            src_addr: CLIENT,
            dst_addr: SERVICE_V4,
            next_header: IpProtocol::Udp,
            payload_len: udp.header_len() + payload.len(),
            hop_limit: 64,
        };
        let mut buf = vec![0u8; ip.buffer_len() + udp.header_len() + payload.len()];
        let caps = smoltcp::phy::ChecksumCapabilities::default();
        let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
        ip.emit(&mut p, &caps);
        let mut u = UdpPacket::new_unchecked(p.payload_mut());
        udp.emit(
            &mut u,
            &CLIENT.into(),
            &SERVICE_V4.into(),
            payload.len(),
            |b| b.copy_from_slice(payload),
            &caps,
        );
        buf
    }

    #[test]
    fn a_udp_query_comes_out_and_the_reply_goes_back_with_valid_checksums() {
        let now = t0();
        let mut net = NetStack::new(now).unwrap();
        assert!(net.push(udp_packet(b"query")));
        net.poll(now);
        let (data, peer) = net.recv_udp().unwrap();
        assert_eq!(data, b"query");
        assert_eq!(peer.client, IpEndpoint::new(CLIENT.into(), 40000));
        assert_eq!(peer.local, IpAddress::Ipv4(SERVICE_V4));
        assert!(net.send_udp(peer, b"answer"));
        net.poll(now);
        let out = net.take_outgoing();
        assert_eq!(out.len(), 1);
        let ip = Ipv4Packet::new_checked(&out[0][..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.src_addr(), SERVICE_V4);
        assert_eq!(ip.dst_addr(), CLIENT);
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(udp.verify_checksum(&SERVICE_V4.into(), &CLIENT.into()));
        assert_eq!(udp.src_port(), DNS_PORT);
        assert_eq!(udp.payload(), b"answer");
        // The packet is what weft-packet (and so the engine) accepts.
        assert!(weft_packet::IpPacket::new(&out[0]).is_ok());
    }

    #[test]
    fn the_queue_from_tun_is_bounded() {
        let mut net = NetStack::new(t0()).unwrap();
        for _ in 0..RX_QUEUE {
            assert!(net.push(udp_packet(b"q")));
        }
        assert!(!net.push(udp_packet(b"q")));
        assert_eq!(net.rx_dropped, 1);
    }

    /// A smoltcp client on the other side of "TUN": length-prefixed queries
    /// in, answers out, then a second connection while the first is open.
    #[test]
    fn tcp_messages_are_framed_both_ways_and_listeners_are_rearmed() {
        let now = t0();
        let mut net = NetStack::new(now).unwrap();
        let mut dev = Stub::default();
        let mut iface = Interface::new(
            Config::new(HardwareAddress::Ip),
            &mut dev,
            smoltcp::time::Instant::ZERO,
        );
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(CLIENT), 0));
        });
        let mut sockets = SocketSet::new(Vec::new());
        let mut handles = Vec::new();
        for port in [50001u16, 50002] {
            let mut s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 4096]),
                tcp::SocketBuffer::new(vec![0; 4096]),
            );
            s.connect(
                iface.context(),
                IpEndpoint::new(IpAddress::Ipv4(SERVICE_V4), DNS_PORT),
                port,
            )
            .unwrap();
            handles.push(sockets.add(s));
        }
        let mut got = Vec::new();
        for step in 0..200u64 {
            let t = smoltcp::time::Instant::from_millis(i64::try_from(step).unwrap());
            iface.poll(t, &mut dev, &mut sockets);
            for p in std::mem::take(&mut dev.tx) {
                net.push(p);
            }
            let now_s = now + Duration::from_millis(step);
            net.poll(now_s);
            for (id, msg) in net.recv_tcp(now_s) {
                got.push(msg.clone());
                let mut reply = b"re:".to_vec();
                reply.extend_from_slice(&msg);
                assert!(net.send_tcp(id, &reply, now_s));
            }
            net.poll(now_s);
            dev.rx.extend(net.take_outgoing());
            for (i, h) in handles.iter().enumerate() {
                let s = sockets.get_mut::<tcp::Socket>(*h);
                if step == 20 && s.may_send() {
                    // Two messages in one write, the second split by the prefix.
                    let m = format!("q{i}");
                    let mut w = vec![0, 2];
                    w.extend_from_slice(m.as_bytes());
                    w.extend_from_slice(&[0, 3, b'x', b'y', b'z']);
                    s.send_slice(&w).unwrap();
                }
            }
        }
        got.sort();
        assert_eq!(
            got,
            vec![
                b"q0".to_vec(),
                b"q1".to_vec(),
                b"xyz".to_vec(),
                b"xyz".to_vec()
            ]
        );
        for h in &handles {
            let s = sockets.get_mut::<tcp::Socket>(*h);
            let mut buf = [0u8; 64];
            let n = s.recv_slice(&mut buf).unwrap();
            // "re:qN" (5 bytes + 2 prefix) then "re:xyz" (6 + 2).
            assert_eq!(n, 15, "{:?}", &buf[..n]);
            assert_eq!(&buf[7..9], &[0, 6]);
        }
        let listening = net
            .tcp
            .iter()
            .filter(|c| net.sockets.get::<tcp::Socket>(c.id.handle).is_listening())
            .count();
        assert_eq!(listening, TCP_LISTENERS);
    }
}
