//! Forwarding I/O.
//!
//! * UDP goes through a [`UdpPool`]: per upstream a few connected host
//!   sockets, each with a reader task, reused across queries and matched to
//!   attempts by (socket, message id). Sending is one non-blocking
//!   `send(2)` from the resolver loop; no task and no socket per query.
//!   The kernel drops datagrams from any other address or port (the
//!   sockets are connected), the core checks id and question, and a socket
//!   is replaced after [`ROTATE_AFTER`] queries, so its source port does
//!   not stay guessable for long.
//! * TCP (TCP clients, truncated answers), and UDP when the pool cannot
//!   take a query, uses one task per attempt on a fresh host socket.
//!
//! Either way the reply or the failure comes back to the resolver loop as
//! an [`UpstreamEvent`]. The core owns the timeouts; a task gives up on
//! its own only after [`ATTEMPT_LIMIT`], so none lingers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use weft_dns::{ForwardId, Transport};

/// A task ends after this whatever happens (past the core's own timeout);
/// a pooled attempt is forgotten after it too.
const ATTEMPT_LIMIT: Duration = Duration::from_secs(5);
/// The largest UDP reply read.
const UDP_MAX: usize = 65535;
/// Connected sockets per upstream.
const SOCKETS_PER_UPSTREAM: usize = 4;
/// Queries a pooled socket sends before it is replaced (a new source port).
const ROTATE_AFTER: u32 = 512;
/// An upstream's sockets are closed after this long without a query.
const IDLE_CLOSE: Duration = Duration::from_secs(60);
/// How often stale attempts and idle sockets are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What an attempt came to, or what a pooled socket received.
#[derive(Debug)]
pub enum UpstreamEvent {
    Reply(ForwardId, Vec<u8>),
    Failed(ForwardId),
    /// A datagram on pooled socket `serial` (to be matched by
    /// [`UdpPool::take_reply`]).
    Datagram {
        serial: u64,
        bytes: Vec<u8>,
    },
    /// Pooled socket `serial` reported an error (an ICMP port unreachable
    /// shows as `ECONNREFUSED`): its attempts failed.
    SocketError {
        serial: u64,
    },
}

/// Starts one attempt on its own socket, in its own task.
pub fn spawn(
    id: ForwardId,
    upstream: SocketAddr,
    transport: Transport,
    query: Vec<u8>,
    events: mpsc::UnboundedSender<UpstreamEvent>,
) {
    tokio::spawn(async move {
        let attempt = async {
            match transport {
                Transport::Udp => ask_udp(upstream, &query).await,
                Transport::Tcp => ask_tcp(upstream, &query).await,
            }
        };
        let ev = match tokio::time::timeout(ATTEMPT_LIMIT, attempt).await {
            Ok(Ok(reply)) => UpstreamEvent::Reply(id, reply),
            Ok(Err(e)) => {
                tracing::debug!(%upstream, error = %e, "Upstream DNS attempt failed");
                UpstreamEvent::Failed(id)
            }
            Err(_) => return, // the core timed the attempt out already
        };
        let _ = events.send(ev);
    });
}

/// One pooled socket.
struct Pooled {
    serial: u64,
    /// For sending from the loop: a plain non-blocking `send(2)` (tokio's
    /// `try_send` says "would block" until the reactor has polled the new
    /// socket once). The reader task holds the other handle.
    sock: std::net::UdpSocket,
    sent: u32,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// An upstream's sockets.
struct Slot {
    sockets: Vec<Pooled>,
    next: usize,
    last_used: Instant,
}

/// An attempt waiting for its reply on a pooled socket.
struct Inflight {
    id: ForwardId,
    since: Instant,
}

/// Connected UDP sockets to upstream resolvers, reused across queries.
/// Owned by the resolver loop; replies come back on its event channel.
pub struct UdpPool {
    events: mpsc::UnboundedSender<UpstreamEvent>,
    slots: BTreeMap<SocketAddr, Slot>,
    /// Replaced sockets, kept (reading) until their attempts are over.
    retiring: Vec<(Pooled, Instant)>,
    /// By (socket serial, message id).
    inflight: BTreeMap<(u64, u16), Inflight>,
    next_serial: u64,
    next_sweep: Option<Instant>,
}

impl UdpPool {
    pub fn new(events: mpsc::UnboundedSender<UpstreamEvent>) -> Self {
        Self {
            events,
            slots: BTreeMap::new(),
            retiring: Vec::new(),
            inflight: BTreeMap::new(),
            next_serial: 0,
            next_sweep: None,
        }
    }

    /// Sends a UDP query (message id `dns_id`) for attempt `id`. Returns
    /// `false` if the pool could not take it (the caller then uses
    /// [`spawn`]).
    pub fn send(
        &mut self,
        id: ForwardId,
        upstream: SocketAddr,
        dns_id: u16,
        query: &[u8],
        now: Instant,
    ) -> bool {
        self.sweep(now);
        let slot = self.slots.entry(upstream).or_insert_with(|| Slot {
            sockets: Vec::new(),
            next: 0,
            last_used: now,
        });
        slot.last_used = now;
        for _ in 0..SOCKETS_PER_UPSTREAM {
            let i = slot.next % SOCKETS_PER_UPSTREAM;
            slot.next = slot.next.wrapping_add(1);
            let stale = slot.sockets.get(i).is_none_or(|p| p.sent >= ROTATE_AFTER);
            if stale {
                let Some(fresh) = open(&mut self.next_serial, upstream, &self.events) else {
                    return false;
                };
                if i < slot.sockets.len() {
                    let old = std::mem::replace(&mut slot.sockets[i], fresh);
                    self.retiring.push((old, now + ATTEMPT_LIMIT));
                } else {
                    slot.sockets.push(fresh);
                }
            }
            let Some(p) = slot.sockets.get_mut(i) else {
                return false;
            };
            let key = (p.serial, dns_id);
            if self.inflight.contains_key(&key) {
                continue; // the same id waits on this socket: try another
            }
            match p.sock.send(query) {
                Ok(_) => {
                    p.sent += 1;
                    self.inflight.insert(key, Inflight { id, since: now });
                    return true;
                }
                Err(e) => {
                    tracing::debug!(%upstream, error = %e, "Pooled upstream socket cannot send");
                    return false;
                }
            }
        }
        false
    }

    /// Matches a datagram from pooled socket `serial` to its attempt.
    pub fn take_reply(&mut self, serial: u64, bytes: &[u8]) -> Option<ForwardId> {
        // The message id: the first two bytes of the DNS header (RFC 1035
        // 4.1.1); the core parses and checks the whole reply.
        let dns_id = u16::from_be_bytes(bytes.get(..2)?.try_into().ok()?);
        self.inflight.remove(&(serial, dns_id)).map(|f| f.id)
    }

    /// Takes every attempt waiting on socket `serial` (it reported an error).
    pub fn take_failed(&mut self, serial: u64) -> Vec<ForwardId> {
        let keys: Vec<(u64, u16)> = self
            .inflight
            .range((serial, 0)..=(serial, u16::MAX))
            .map(|(k, _)| *k)
            .collect();
        keys.into_iter()
            .filter_map(|k| self.inflight.remove(&k).map(|f| f.id))
            .collect()
    }

    /// Forgets attempts past [`ATTEMPT_LIMIT`] (the core timed them out),
    /// closes replaced sockets whose attempts are over and upstreams idle
    /// for [`IDLE_CLOSE`].
    fn sweep(&mut self, now: Instant) {
        if self.next_sweep.is_some_and(|t| now < t) {
            return;
        }
        self.next_sweep = Some(now + SWEEP_EVERY);
        self.inflight
            .retain(|_, f| now.saturating_duration_since(f.since) < ATTEMPT_LIMIT);
        self.retiring.retain(|(_, until)| now < *until);
        let inflight = &self.inflight;
        self.slots.retain(|_, s| {
            now.saturating_duration_since(s.last_used) < IDLE_CLOSE
                || s.sockets.iter().any(|p| {
                    inflight
                        .range((p.serial, 0)..=(p.serial, u16::MAX))
                        .next()
                        .is_some()
                })
        });
    }

    /// Open sockets (pooled and retiring).
    #[cfg(test)]
    fn open_sockets(&self) -> usize {
        self.slots.values().map(|s| s.sockets.len()).sum::<usize>() + self.retiring.len()
    }
}

/// Opens a connected socket to `upstream` and its reader task.
fn open(
    next_serial: &mut u64,
    upstream: SocketAddr,
    events: &mpsc::UnboundedSender<UpstreamEvent>,
) -> Option<Pooled> {
    let bind: SocketAddr = if upstream.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let opened = std::net::UdpSocket::bind(bind).and_then(|s| {
        s.connect(upstream)?;
        s.set_nonblocking(true)?;
        let reading = UdpSocket::from_std(s.try_clone()?)?;
        Ok((s, reading))
    });
    let (sock, reading) = match opened {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%upstream, error = %e, "Cannot open an upstream DNS socket");
            return None;
        }
    };
    *next_serial += 1;
    let serial = *next_serial;
    let reader = tokio::spawn(read_loop(serial, reading, events.clone()));
    Some(Pooled {
        serial,
        sock,
        sent: 0,
        reader,
    })
}

async fn read_loop(serial: u64, sock: UdpSocket, events: mpsc::UnboundedSender<UpstreamEvent>) {
    let mut buf = vec![0u8; UDP_MAX];
    loop {
        let ev = match sock.recv(&mut buf).await {
            Ok(n) => UpstreamEvent::Datagram {
                serial,
                bytes: buf.get(..n).unwrap_or_default().to_vec(),
            },
            Err(e) => {
                tracing::debug!(error = %e, "Upstream DNS socket error");
                UpstreamEvent::SocketError { serial }
            }
        };
        if events.send(ev).is_err() {
            return;
        }
    }
}

async fn ask_udp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if upstream.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(upstream).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; UDP_MAX];
    let n = sock.recv(&mut buf).await?;
    buf.truncate(n);
    Ok(buf)
}

async fn ask_tcp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let len = u16::try_from(query.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "query too long"))?;
    let mut s = TcpStream::connect(upstream).await?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    s.write_all(&framed).await?;
    let n = s.read_u16().await?;
    let mut buf = vec![0u8; usize::from(n)];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A UDP "upstream" on loopback that echoes every datagram back.
    async fn echo() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        let t = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            for _ in 0..10_000 {
                let Ok((n, from)) = s.recv_from(&mut buf).await else {
                    return;
                };
                let _ = s.send_to(&buf[..n], from).await;
            }
        });
        (addr, t)
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<UpstreamEvent>) -> UpstreamEvent {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn replies_are_matched_to_attempts_by_socket_and_id_and_sockets_are_reused() {
        let (up, _t) = echo().await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut pool = UdpPool::new(tx);
        let now = crate::clock::now();
        for i in 0..20u16 {
            assert!(pool.send(
                ForwardId(u64::from(i)),
                up,
                1000 + i,
                &(1000 + i).to_be_bytes(),
                now
            ));
        }
        let mut got = Vec::new();
        for _ in 0..20 {
            let UpstreamEvent::Datagram { serial, bytes } = next(&mut rx).await else {
                panic!("not a datagram");
            };
            let id = pool.take_reply(serial, &bytes).unwrap();
            assert_eq!(
                u64::from(u16::from_be_bytes([bytes[0], bytes[1]])) - 1000,
                id.0
            );
            got.push(id.0);
            // Matched once only: a second copy is not an answer.
            assert_eq!(pool.take_reply(serial, &bytes), None);
        }
        got.sort_unstable();
        assert_eq!(got, (0..20).collect::<Vec<_>>());
        assert_eq!(
            pool.open_sockets(),
            SOCKETS_PER_UPSTREAM,
            "20 queries, 4 sockets"
        );
    }

    #[tokio::test]
    async fn a_reply_on_the_wrong_socket_or_with_another_id_is_not_an_answer() {
        let (up, _t) = echo().await;
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut pool = UdpPool::new(tx);
        assert!(pool.send(
            ForwardId(1),
            up,
            7,
            &7u16.to_be_bytes(),
            crate::clock::now()
        ));
        assert_eq!(pool.take_reply(99, &7u16.to_be_bytes()), None);
        assert_eq!(pool.take_reply(1, &8u16.to_be_bytes()), None);
        assert_eq!(pool.take_reply(1, &[7]), None, "too short for an id");
        assert_eq!(pool.take_reply(1, &7u16.to_be_bytes()), Some(ForwardId(1)));
    }

    #[tokio::test]
    async fn the_same_id_twice_goes_out_on_another_socket() {
        let (up, _t) = echo().await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut pool = UdpPool::new(tx);
        let now = crate::clock::now();
        for i in 0..SOCKETS_PER_UPSTREAM {
            assert!(pool.send(ForwardId(i as u64), up, 5, &5u16.to_be_bytes(), now));
        }
        assert!(
            !pool.send(ForwardId(9), up, 5, &5u16.to_be_bytes(), now),
            "every socket waits for id 5: the caller uses a fresh socket"
        );
        let mut ids = Vec::new();
        for _ in 0..SOCKETS_PER_UPSTREAM {
            let UpstreamEvent::Datagram { serial, bytes } = next(&mut rx).await else {
                panic!("not a datagram");
            };
            ids.push(pool.take_reply(serial, &bytes).unwrap().0);
        }
        ids.sort_unstable();
        assert_eq!(ids, vec![0, 1, 2, 3]);
    }

    #[tokio::test]
    async fn a_socket_is_replaced_after_its_quota_and_closed_once_its_attempts_are_over() {
        let (up, _t) = echo().await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut pool = UdpPool::new(tx);
        let now = crate::clock::now();
        let total = u32::try_from(SOCKETS_PER_UPSTREAM).unwrap() * ROTATE_AFTER + 1;
        let mut serials = std::collections::BTreeSet::new();
        for i in 0..total {
            let dns_id = u16::try_from(i % 60_000).unwrap();
            let q = dns_id.to_be_bytes();
            assert!(pool.send(ForwardId(u64::from(i)), up, dns_id, &q, now));
            let UpstreamEvent::Datagram { serial, bytes } = next(&mut rx).await else {
                panic!("not a datagram");
            };
            assert_eq!(
                pool.take_reply(serial, &bytes),
                Some(ForwardId(u64::from(i)))
            );
            serials.insert(serial);
        }
        assert_eq!(
            serials.len(),
            SOCKETS_PER_UPSTREAM + 1,
            "one socket rotated"
        );
        assert_eq!(pool.open_sockets(), SOCKETS_PER_UPSTREAM + 1);
        pool.sweep(now + ATTEMPT_LIMIT + Duration::from_secs(1));
        assert_eq!(
            pool.open_sockets(),
            SOCKETS_PER_UPSTREAM,
            "the replaced one closed"
        );
        pool.sweep(now + IDLE_CLOSE + Duration::from_secs(2));
        assert_eq!(pool.open_sockets(), 0, "an idle upstream's sockets closed");
    }

    #[tokio::test]
    async fn an_upstream_that_refuses_fails_the_attempts_on_that_socket() {
        // A port nobody listens on: the ICMP port unreachable comes back
        // as ECONNREFUSED on the connected socket.
        let up = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut pool = UdpPool::new(tx);
        assert!(pool.send(
            ForwardId(3),
            up,
            3,
            &3u16.to_be_bytes(),
            crate::clock::now()
        ));
        let UpstreamEvent::SocketError { serial } = next(&mut rx).await else {
            panic!("not a socket error");
        };
        assert_eq!(pool.take_failed(serial), vec![ForwardId(3)]);
        assert!(pool.take_failed(serial).is_empty());
    }
}
