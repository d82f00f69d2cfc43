//! Listening sockets on exactly one tailnet address each.
//!
//! The SSH server never binds a wildcard address: one listener per tailnet
//! address (`100.x.y.z:22`, `[fd7a:115c:a1e0::…]:22`). Sockets are bound with
//! `IP_FREEBIND`/`IPV6_FREEBIND`, so binding works in the short window where
//! the netmap already names an address the TUN does not carry yet (or an
//! IPv6 address is still tentative); connections arrive once it does.

use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

/// The listen backlog (connections waiting for `accept`).
const BACKLOG: i32 = 128;

/// Binds a TCP listener on `addr:port` only.
///
/// # Errors
/// The socket cannot be created or bound (e.g. another server already
/// listens on the port of that address or of the wildcard address).
pub fn bind(addr: IpAddr, port: u16) -> io::Result<TcpListener> {
    let sa = SocketAddr::new(addr, port);
    let socket = Socket::new(Domain::for_address(sa), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    match addr {
        IpAddr::V4(_) => socket.set_freebind_v4(true)?,
        IpAddr::V6(_) => {
            socket.set_only_v6(true)?;
            socket.set_freebind_v6(true)?;
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&sa.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listener_is_bound_to_the_one_address_it_was_given() {
        let l = bind("127.0.0.1".parse().unwrap(), 0).unwrap();
        let local = l.local_addr().unwrap();
        assert_eq!(local.ip(), "127.0.0.1".parse::<IpAddr>().unwrap());
        let (accepted, connected) = tokio::join!(l.accept(), tokio::net::TcpStream::connect(local));
        connected.unwrap();
        accepted.unwrap();
    }

    #[tokio::test]
    async fn an_address_not_on_any_interface_can_still_be_bound() {
        // 100.64.0.0/10 is never configured on a test host outside a namespace.
        let l = bind("100.127.255.254".parse().unwrap(), 0).unwrap();
        assert_eq!(
            l.local_addr().unwrap().ip(),
            "100.127.255.254".parse::<IpAddr>().unwrap()
        );
    }
}
