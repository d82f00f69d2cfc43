//! The STUN server: answers Binding requests with the address they came
//! from (weft-disco's codec), on UDP, both families; drops and counts
//! everything else. weft-control runs it on UDP 3478 by default, and so does
//! the `weft-relay` binary.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use weft_disco::stun::{self, StunError};

/// The default STUN port (RFC 8489 §9).
pub const DEFAULT_PORT: u16 = 3478;

/// Counters of a STUN server.
#[derive(Debug, Default)]
pub struct StunStats {
    answered: AtomicU64,
    not_stun: AtomicU64,
    malformed: AtomicU64,
    not_binding: AtomicU64,
}

/// A copy of [`StunStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StunStatsSnapshot {
    /// Binding requests answered.
    pub answered: u64,
    /// Datagrams that were not STUN at all.
    pub not_stun: u64,
    /// STUN messages that failed validation.
    pub malformed: u64,
    /// Valid STUN that was not a Binding request.
    pub not_binding: u64,
}

impl StunStats {
    /// Returns the counters.
    pub fn snapshot(&self) -> StunStatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StunStatsSnapshot {
            answered: l(&self.answered),
            not_stun: l(&self.not_stun),
            malformed: l(&self.malformed),
            not_binding: l(&self.not_binding),
        }
    }

    fn dropped(&self, e: &StunError) {
        let (counter, reason) = match e {
            StunError::NotStun => (&self.not_stun, "not_stun"),
            StunError::Unexpected { .. } => (&self.not_binding, "not_binding"),
            _ => (&self.malformed, "malformed"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("weft_relay_stun_dropped_total", "reason" => reason).increment(1);
    }
}

/// Binds a UDP socket for STUN on `addr`; an IPv6 wildcard is IPv6-only, so
/// `0.0.0.0:3478` and `[::]:3478` can be bound side by side.
///
/// # Errors
/// The bind error.
pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    UdpSocket::from_std(sock.into())
}

/// Answers Binding requests on `socket` until `stop` is cancelled.
pub async fn serve(socket: UdpSocket, stats: Arc<StunStats>, stop: CancellationToken) {
    let mut buf = [0u8; 1500];
    let mut out = [0u8; stun::MAX_BINDING_RESPONSE_LEN];
    loop {
        let (n, from) = tokio::select! {
            () = stop.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors of earlier sends surface here on Linux; they
                    // concern one peer, not the socket.
                    tracing::trace!(error = %e, "STUN receive error");
                    continue;
                }
            },
        };
        match stun::answer_binding_request(&buf[..n], from, &mut out) {
            Ok(len) => {
                if let Err(e) = socket.send_to(&out[..len], from).await {
                    tracing::trace!(error = %e, "STUN send error");
                    continue;
                }
                stats.answered.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("weft_relay_stun_requests_total").increment(1);
            }
            Err(e) => {
                tracing::trace!(error = %e, len = n, "STUN datagram dropped");
                stats.dropped(&e);
            }
        }
    }
}
