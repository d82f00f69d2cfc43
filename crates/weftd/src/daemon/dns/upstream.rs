//! Forwarding I/O: one task per attempt the core asks for, on a fresh
//! host socket (a new source port each time), reporting the reply or the
//! failure back to the resolver loop. The core owns the timeouts; a task
//! gives up on its own only after [`ATTEMPT_LIMIT`], so none lingers.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use weft_dns::{ForwardId, Transport};

/// A task ends after this whatever happens (past the core's own timeout).
const ATTEMPT_LIMIT: Duration = Duration::from_secs(5);
/// The largest UDP reply read.
const UDP_MAX: usize = 65535;

/// What an attempt came to.
#[derive(Debug)]
pub enum UpstreamEvent {
    Reply(ForwardId, Vec<u8>),
    Failed(ForwardId),
}

/// Starts one attempt.
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
