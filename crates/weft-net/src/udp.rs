//! The WireGuard UDP socket: dual-stack, big buffers, batched I/O.
//!
//! One socket bound to `[::]:port` with `IPV6_V6ONLY` off serves IPv4 and
//! IPv6 peers (IPv4 ones appear as `::ffff:a.b.c.d`; [`normalize`] turns
//! them back into IPv4 so the core and `wg show` see plain addresses). If
//! the host has no IPv6 at all, it falls back to `0.0.0.0:port`.
//!
//! I/O goes through quinn-udp's `UdpSocketState`: `recvmmsg` with `UDP_GRO`
//! on receive (one buffer may hold many datagrams of one sender, `stride`
//! bytes apart), and `sendmsg` with `UDP_SEGMENT` (GSO) on send, so a run of
//! equal-size datagrams to one peer costs one system call.

use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};

use nix::poll::PollFlags;
use nix::sys::socket::{setsockopt, sockopt};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};

use crate::error::NetError;
use crate::notify::{self, Notify};

/// Socket buffer size we ask for (wireguard-go uses the same 7 MiB).
pub const SOCKET_BUFFER: usize = 7 << 20;

/// A bound UDP socket with its offload state.
#[derive(Debug)]
pub struct BoundSocket {
    sock: UdpSocket,
    state: UdpSocketState,
    port: u16,
    dual_stack: bool,
}

impl BoundSocket {
    /// Binds `[::]:port` dual-stack (or `0.0.0.0:port` without IPv6); port
    /// 0 picks a free port. Sets the fwmark when non-zero and enlarges the
    /// buffers (forcing past the sysctl limits when allowed to).
    ///
    /// # Errors
    /// [`NetError::Bind`] when the port is taken, [`NetError::Setup`] when a
    /// required option fails (the fwmark, the quinn-udp setup).
    pub fn bind(port: u16, fwmark: u32) -> Result<Self, NetError> {
        let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
        let (sock, dual_stack) = match bind_socket(v6, true) {
            Ok(s) => (s, true),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL | libc::EPROTONOSUPPORT)
                ) =>
            {
                let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
                let s =
                    bind_socket(v4, false).map_err(|source| NetError::Bind { addr: v4, source })?;
                (s, false)
            }
            Err(source) => return Err(NetError::Bind { addr: v6, source }),
        };
        let port = sock
            .local_addr()
            .map_err(|source| NetError::Setup {
                what: "reading the bound UDP port",
                source,
            })?
            .port();
        let state =
            UdpSocketState::new(UdpSockRef::from(&sock)).map_err(|source| NetError::Setup {
                what: "configuring the UDP socket for GSO/GRO",
                source,
            })?;
        let this = Self {
            sock,
            state,
            port,
            dual_stack,
        };
        this.grow_buffers();
        this.undo_quinn_defaults();
        if fwmark != 0 {
            this.set_mark(fwmark)?;
        }
        tracing::debug!(
            port,
            dual_stack,
            gso_segments = this.state.max_gso_segments(),
            gro_segments = this.state.gro_segments(),
            "UDP socket bound"
        );
        Ok(this)
    }

    /// Returns the bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Returns how many datagrams one GSO send may carry (1 = no GSO).
    pub fn max_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Returns how many datagrams one GRO receive buffer may hold.
    pub fn gro_segments(&self) -> usize {
        self.state.gro_segments()
    }

    /// Sets `SO_MARK` (0 clears it).
    ///
    /// # Errors
    /// [`NetError::Setup`], typically `EPERM` without CAP_NET_ADMIN.
    pub fn set_mark(&self, mark: u32) -> Result<(), NetError> {
        socket2::SockRef::from(&self.sock)
            .set_mark(mark)
            .map_err(|source| NetError::Setup {
                what: "setting SO_MARK (needs CAP_NET_ADMIN)",
                source,
            })
    }

    /// Returns the socket's `SO_MARK` as the kernel has it.
    ///
    /// # Errors
    /// The `getsockopt` error.
    pub fn mark(&self) -> io::Result<u32> {
        socket2::SockRef::from(&self.sock).mark()
    }

    fn grow_buffers(&self) {
        let fd = self.sock.as_fd();
        // The *FORCE variants ignore net.core.{r,w}mem_max but need
        // CAP_NET_ADMIN; without it, ask for what the sysctl allows.
        if setsockopt(&fd, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
            let _ = setsockopt(&fd, sockopt::RcvBuf, &SOCKET_BUFFER);
        }
        if setsockopt(&fd, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
            let _ = setsockopt(&fd, sockopt::SndBuf, &SOCKET_BUFFER);
        }
    }

    /// quinn-udp tunes the socket for QUIC; two of its choices do not suit a
    /// WireGuard socket:
    /// * "probe" path-MTU mode plus don't-fragment: a datagram over the path
    ///   MTU (a tunnel MTU set too high) would be dropped, where wireguard-go
    ///   and kernel WireGuard let the kernel fragment it. Restore the
    ///   kernel's default ("want": DF set, fragment locally when needed).
    /// * receive timestamps, which we never read: turn them off.
    fn undo_quinn_defaults(&self) {
        let fd = self.sock.as_fd();
        let _ = set_int_option(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_WANT,
        );
        if self.dual_stack {
            let _ = set_int_option(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_MTU_DISCOVER,
                libc::IPV6_PMTUDISC_WANT,
            );
            let _ = setsockopt(&fd, sockopt::Ipv6DontFrag, &false);
        }
        let _ = setsockopt(&fd, sockopt::ReceiveTimestampns, &false);
    }

    /// Maps `to` into this socket's address family (IPv4 → `::ffff:` on a
    /// dual-stack socket). `None` if the socket cannot reach it.
    fn destination(&self, to: SocketAddr) -> Option<SocketAddr> {
        match (to, self.dual_stack) {
            (SocketAddr::V4(v4), true) => Some(SocketAddr::V6(SocketAddrV6::new(
                v4.ip().to_ipv6_mapped(),
                v4.port(),
                0,
                0,
            ))),
            (SocketAddr::V4(_), false) | (SocketAddr::V6(_), true) => Some(to),
            (SocketAddr::V6(v6), false) => v6
                .ip()
                .to_ipv4_mapped()
                .map(|ip| SocketAddr::from((ip, v6.port()))),
        }
    }

    /// Sends one datagram without waiting; a full send buffer drops it.
    /// For control messages (handshakes, cookies, keepalives).
    pub fn send_one(&self, to: SocketAddr, datagram: &[u8]) {
        if let Err(e) = self.try_send(to, datagram, None) {
            tracing::debug!(error = %e, "dropped an outgoing WireGuard control message");
        }
    }

    /// Sends `contents` to `to` as datagrams of `segment` bytes (the last
    /// may be shorter) in one call, waiting for buffer space while `stop` is
    /// not set. Falls back to one call per datagram if the kernel rejects
    /// GSO.
    ///
    /// # Errors
    /// The send error (the datagrams are lost); `WouldBlock` only when
    /// stopping.
    pub fn send_run(
        &self,
        to: SocketAddr,
        contents: &[u8],
        segment: usize,
        stop: &Notify,
    ) -> io::Result<()> {
        let gso = (contents.len() > segment).then_some(segment);
        match self.send_waiting(to, contents, gso, stop) {
            Err(e)
                if gso.is_some()
                    && matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL))
                    && self.max_segments() == 1 =>
            {
                // quinn-udp just switched GSO off for this socket: resend
                // this run one datagram at a time.
                for d in contents.chunks(segment.max(1)) {
                    self.send_waiting(to, d, None, stop)?;
                }
                Ok(())
            }
            other => other,
        }
    }

    fn send_waiting(
        &self,
        to: SocketAddr,
        contents: &[u8],
        segment: Option<usize>,
        stop: &Notify,
    ) -> io::Result<()> {
        loop {
            match self.try_send(to, contents, segment) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !stop.is_set() => {
                    notify::wait(self.sock.as_fd(), PollFlags::POLLOUT, &[stop], None)?;
                }
                other => return other,
            }
        }
    }

    fn try_send(&self, to: SocketAddr, contents: &[u8], segment: Option<usize>) -> io::Result<()> {
        let Some(destination) = self.destination(to) else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "IPv6 destination on an IPv4-only socket",
            ));
        };
        let transmit = Transmit {
            destination,
            ecn: None,
            contents,
            segment_size: segment,
            src_ip: None,
        };
        self.state.try_send(UdpSockRef::from(&self.sock), &transmit)
    }

    /// Receives a batch without waiting: fills `bufs` (each should hold
    /// [`Self::gro_segments`] maximum-size datagrams) and `meta`.
    ///
    /// # Errors
    /// `WouldBlock` when nothing is queued; other errors are per-call
    /// (e.g. an ICMP error reported on the socket) and not fatal.
    pub fn recv(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> io::Result<usize> {
        self.state.recv(UdpSockRef::from(&self.sock), bufs, meta)
    }
}

impl AsFd for BoundSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// Sets an integer socket option that neither nix nor socket2 wraps.
fn set_int_option(fd: BorrowedFd<'_>, level: i32, name: i32, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `fd` is a live socket for the duration of the call, and the
    // option value is a properly sized and aligned c_int on our stack.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn bind_socket(addr: SocketAddr, v6: bool) -> io::Result<UdpSocket> {
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let s = Socket::new(domain, Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
    if v6 {
        s.set_only_v6(false)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Returns `addr` with an IPv4-mapped IPv6 address turned back into IPv4
/// (and any scope/flow info of a real IPv6 address kept).
pub fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(ip) => SocketAddr::from((ip, v6.port())),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn mapped_addresses_are_normalized_to_ipv4() {
        let mapped: SocketAddr = "[::ffff:198.18.0.2]:51820".parse().unwrap();
        assert_eq!(normalize(mapped), "198.18.0.2:51820".parse().unwrap());
        let v6: SocketAddr = "[fd7a:115c:a1e0::1]:1".parse().unwrap();
        assert_eq!(normalize(v6), v6);
        let v4: SocketAddr = "198.18.0.1:2".parse().unwrap();
        assert_eq!(normalize(v4), v4);
    }

    #[allow(clippy::disallowed_methods)] // a real-time bound on a real socket
    fn recv_all(sock: &BoundSocket, want: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        let stop = Notify::new().unwrap();
        let mut storage = vec![vec![0u8; 65536]; 4];
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while got.len() < want && std::time::Instant::now() < deadline {
            let mut iovs: Vec<IoSliceMut<'_>> =
                storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            let mut meta = vec![RecvMeta::default(); 4];
            match sock.recv(&mut iovs, &mut meta) {
                Ok(n) => {
                    for (m, buf) in meta.iter().zip(&storage).take(n) {
                        for d in buf[..m.len].chunks(m.stride.max(1)) {
                            got.push((normalize(m.addr), d.to_vec()));
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    notify::wait(
                        sock.as_fd(),
                        PollFlags::POLLIN,
                        &[&stop],
                        Some(Duration::from_millis(100)),
                    )
                    .unwrap();
                }
                Err(e) => panic!("{e}"),
            }
        }
        got
    }

    #[test]
    fn a_gso_run_arrives_as_separate_datagrams_from_an_ipv4_sender() {
        let a = BoundSocket::bind(0, 0).unwrap();
        let b = BoundSocket::bind(0, 0).unwrap();
        assert_ne!(a.port(), 0);
        let stop = Notify::new().unwrap();
        let mut run = Vec::new();
        for i in 0..5u8 {
            run.extend(std::iter::repeat_n(i, 1000));
        }
        run.extend(std::iter::repeat_n(9u8, 300));
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, b.port()));
        a.send_run(to, &run, 1000, &stop).unwrap();
        let got = recv_all(&b, 6);
        assert_eq!(got.len(), 6);
        for (i, (from, d)) in got.iter().enumerate() {
            assert_eq!(*from, SocketAddr::from((Ipv4Addr::LOCALHOST, a.port())));
            let want = if i == 5 {
                vec![9u8; 300]
            } else {
                vec![i as u8; 1000]
            };
            assert_eq!(d, &want);
        }
    }

    #[test]
    fn binding_a_taken_port_fails_with_the_address() {
        let a = BoundSocket::bind(0, 0).unwrap();
        let err = BoundSocket::bind(a.port(), 0).unwrap_err();
        assert!(matches!(err, NetError::Bind { .. }), "{err}");
        assert!(err.to_string().contains(&a.port().to_string()));
    }
}
