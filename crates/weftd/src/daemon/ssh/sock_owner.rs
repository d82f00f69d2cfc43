//! Which local account opened a TCP connection: the uid owning the client's
//! socket, asked of the kernel with sock_diag (`NETLINK_SOCK_DIAG`, an exact
//! `inet_diag` lookup of the connection's 4-tuple).
//!
//! The SSH authorizer asks this for connections whose source is one of the
//! node's own addresses: those never passed WireGuard, so the address says
//! nothing about who sent them, but the kernel knows the client socket and
//! its owner. [`SocketOwners`] is the seam (the authorizer's tests inject
//! uids); [`SockDiag`] is the real lookup.
//!
//! What counts. Only an established, full socket is trusted: a `TIME_WAIT`
//! or orphaned `FIN_WAIT2` mini-socket reports uid 0 and inode 0, and the
//! kernel's lookup falls back to a *listener* on the client's address and
//! port when the connection is gone; both are refused rather than read as
//! root. The uid is the socket's creator (`sk_uid`, set at `socket(2)`), in
//! the daemon's user namespace, so a user namespace's "root" is its real uid.

use std::net::SocketAddr;
use std::os::fd::AsFd as _;
use std::time::Duration;

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP, TCP_ESTABLISHED};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_sys::Socket;
use netlink_sys::protocols::NETLINK_SOCK_DIAG;

/// How long to wait for the kernel's answer (it comes within the `send`
/// call in practice; this only bounds a kernel that never answers).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// `inet_diag_sockid.idiag_cookie` meaning "any socket with this 4-tuple".
const NO_COOKIE: [u8; 8] = [0xff; 8];

/// Why the owner of a connection is unknown.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    /// No socket has that 4-tuple (the client went away).
    #[error("the kernel knows no such connection")]
    NotFound,
    /// The socket found is not an open, owned connection (closing, a
    /// time-wait remnant or a listener).
    #[error("the client socket is no longer an open connection (TCP state {state})")]
    NotEstablished {
        /// The kernel's TCP state number.
        state: u8,
    },
    /// The addresses mix IPv4 and IPv6.
    #[error("the client and server addresses are of different families")]
    MixedFamilies,
    /// The netlink socket failed.
    #[error("sock_diag failed: {0}")]
    Io(#[from] std::io::Error),
    /// The kernel's answer was not what was asked for.
    #[error("unexpected sock_diag answer: {0}")]
    Protocol(String),
}

/// Answers "which uid owns the client end of this TCP connection".
pub trait SocketOwners: Send + Sync + 'static {
    /// Returns the uid owning the socket whose local end is `client` and
    /// whose remote end is `server` (our address and port).
    ///
    /// # Errors
    /// Why the owner is unknown; the caller must refuse then.
    fn tcp_client_uid(&self, client: SocketAddr, server: SocketAddr) -> Result<u32, OwnerError>;
}

/// The real lookup over `NETLINK_SOCK_DIAG`, in the daemon's network
/// namespace. Blocking (one request, one answer): call it off the async
/// runtime.
#[derive(Debug, Clone, Copy, Default)]
pub struct SockDiag;

impl SocketOwners for SockDiag {
    fn tcp_client_uid(&self, client: SocketAddr, server: SocketAddr) -> Result<u32, OwnerError> {
        let family = match (client, server) {
            (SocketAddr::V4(_), SocketAddr::V4(_)) => AF_INET,
            (SocketAddr::V6(_), SocketAddr::V6(_)) => AF_INET6,
            _ => return Err(OwnerError::MixedFamilies),
        };
        let id = SocketId {
            source_port: client.port(),
            destination_port: server.port(),
            source_address: client.ip(),
            destination_address: server.ip(),
            interface_id: 0,
            cookie: NO_COOKIE,
        };
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        socket.send(&request(family, id.clone()), 0)?;
        let answer = receive(&socket)?;
        parse_answer(&answer, &id)
    }
}

/// Returns the bytes of an exact-lookup request (no `NLM_F_DUMP`) for `id`.
fn request(family: u8, id: SocketId) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = 1;
    let mut msg = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id: id,
        })
        .into(),
    );
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// Waits (bounded) for one datagram from the kernel.
fn receive(socket: &Socket) -> Result<Vec<u8>, OwnerError> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(ANSWER_TIMEOUT).unwrap_or(PollTimeout::MAX);
    if poll(&mut fds, timeout).map_err(std::io::Error::from)? == 0 {
        return Err(OwnerError::Protocol(
            "no answer from the kernel within 1 s".into(),
        ));
    }
    let mut buf = vec![0u8; 8192];
    let n = socket.recv(&mut &mut buf[..], 0)?;
    buf.truncate(n);
    Ok(buf)
}

/// Reads the kernel's answer to the lookup of `asked`: the owner's uid if
/// it is an established, full socket with exactly that 4-tuple.
fn parse_answer(bytes: &[u8], asked: &SocketId) -> Result<u32, OwnerError> {
    let msg = NetlinkMessage::<SockDiagMessage>::deserialize(bytes)
        .map_err(|e| OwnerError::Protocol(e.to_string()))?;
    match msg.payload {
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
            let h = &r.header;
            let same = h.socket_id.source_address == asked.source_address
                && h.socket_id.destination_address == asked.destination_address
                && h.socket_id.source_port == asked.source_port
                && h.socket_id.destination_port == asked.destination_port;
            if !same {
                return Err(OwnerError::Protocol(format!(
                    "asked for {:?}, got {:?}",
                    asked, h.socket_id
                )));
            }
            // A time-wait remnant has no owner (uid 0, inode 0); a listener
            // is not the connection. Neither may stand for root.
            if h.state != TCP_ESTABLISHED || h.inode == 0 {
                return Err(OwnerError::NotEstablished { state: h.state });
            }
            Ok(h.uid)
        }
        NetlinkPayload::Error(e) if e.raw_code().abs() == libc::ENOENT => Err(OwnerError::NotFound),
        NetlinkPayload::Error(e) => Err(OwnerError::Io(e.to_io())),
        other => Err(OwnerError::Protocol(format!(
            "message type {}",
            other.message_type()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;

    /// A connection on loopback: (client stream, server stream).
    fn connection(bind: &str) -> (TcpStream, TcpStream) {
        let l = TcpListener::bind(bind).unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    #[test]
    fn the_owner_of_a_local_connection_is_found_over_ipv4_and_ipv6() {
        let me = nix::unistd::geteuid().as_raw();
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let (client, server) = connection(bind);
            let uid = SockDiag
                .tcp_client_uid(server.peer_addr().unwrap(), server.local_addr().unwrap())
                .unwrap();
            assert_eq!(uid, me, "{bind}");
            drop(client);
        }
    }

    #[test]
    fn a_connection_that_is_gone_has_no_owner() {
        let (client, server) = connection("127.0.0.1:0");
        let (c, s) = (server.peer_addr().unwrap(), server.local_addr().unwrap());
        let made_up = SocketAddr::new(c.ip(), 1);
        assert!(matches!(
            SockDiag.tcp_client_uid(made_up, s),
            Err(OwnerError::NotFound)
        ));
        drop(client);
        drop(server);
        // The client closed first: what is left is a time-wait remnant or
        // nothing at all, never an owner.
        assert!(SockDiag.tcp_client_uid(c, s).is_err());
        assert!(matches!(
            SockDiag.tcp_client_uid(c, "[::1]:22".parse().unwrap()),
            Err(OwnerError::MixedFamilies)
        ));
    }

    #[test]
    fn the_owner_is_the_account_that_made_the_socket() {
        // Only root can make a socket as someone else (setresuid in a child).
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // A thread may change only its own ids (raw syscall; libc's setresuid
        // would change every thread's).
        let t = std::thread::spawn(move || {
            // SAFETY: a plain syscall on this thread's own credentials.
            let r = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
            assert_eq!(r, 0);
            let c = TcpStream::connect(addr).unwrap();
            tx.send(()).unwrap();
            c
        });
        rx.recv().unwrap();
        let (server, _) = l.accept().unwrap();
        let uid = SockDiag
            .tcp_client_uid(server.peer_addr().unwrap(), addr)
            .unwrap();
        assert_eq!(uid, 65534);
        drop(t.join().unwrap());
    }
}
