//! Forwarding: `ssh -L`/`-W` (direct-tcpip, connected from the daemon),
//! `ssh -R` (tcpip-forward, listening on loopback or this node's tailnet
//! address only) and `ssh -A` (a per-connection agent socket owned by the
//! user, each local connection bridged to an `auth-agent@openssh.com` channel).

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use russh::server::Handle;
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::pump::bridge;
use crate::session::Audit;
use crate::user::LocalUser;

/// Connects to the `-L`/`-W` target with a timeout.
///
/// # Errors
/// Returns the connect error or a timeout.
pub(crate) async fn connect_direct(
    host: &str,
    port: u32,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let port = u16::try_from(port)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "port out of range"))?;
    match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

/// Maps the address of a `tcpip-forward` request to the one we bind:
/// loopback for the wildcard and loopback names (like OpenSSH with
/// `GatewayPorts no`), the address itself if it is one of this node's tailnet
/// addresses, and nothing else.
pub(crate) fn remote_bind_addr(requested: &str, tailnet: &[IpAddr]) -> Option<IpAddr> {
    match requested {
        "" | "*" | "localhost" | "0.0.0.0" | "127.0.0.1" => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        "::" | "::1" => Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        other => {
            let ip: IpAddr = other.parse().ok()?;
            tailnet.contains(&ip).then_some(ip)
        }
    }
}

/// Everything a forwarding accept loop needs from its connection.
#[derive(Clone)]
pub(crate) struct FwdCtx {
    pub(crate) handle: Handle,
    /// The connection's channel slots.
    pub(crate) channels: Arc<Semaphore>,
    /// Cancelled when the connection ends.
    pub(crate) conn_closed: CancellationToken,
    pub(crate) input_cap: usize,
    pub(crate) audit: Audit,
}

/// Accepts connections on a `-R` listener and opens a `forwarded-tcpip`
/// channel for each, until `stop` (cancel request) or the connection ends.
pub(crate) async fn serve_remote_forward(
    listener: TcpListener,
    requested: String,
    port: u32,
    ctx: FwdCtx,
    stop: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "remote forward accept failed");
                    continue;
                }
            },
            () = stop.cancelled() => return,
            () = ctx.conn_closed.cancelled() => return,
        };
        let Ok(permit) = ctx.channels.clone().try_acquire_owned() else {
            tracing::debug!(
                conn = ctx.audit.conn_id,
                "channel cap reached; dropping forwarded connection"
            );
            continue;
        };
        let ctx = ctx.clone();
        let requested = requested.clone();
        tokio::spawn(async move {
            let open = ctx.handle.channel_open_forwarded_tcpip(
                requested,
                port,
                peer.ip().to_string(),
                u32::from(peer.port()),
            );
            let channel = tokio::select! {
                r = open => match r { Ok(c) => c, Err(_) => return },
                () = ctx.conn_closed.cancelled() => return,
            };
            let (read, write) = channel.split();
            bridge(
                stream,
                read,
                write,
                ctx.input_cap,
                ctx.conn_closed.clone(),
                Some(permit),
            )
            .await;
        });
    }
}

/// A per-connection agent socket directory; removed on drop.
#[derive(Debug)]
pub(crate) struct AgentDir {
    dir: PathBuf,
    socket: PathBuf,
}

impl AgentDir {
    /// Returns the socket path for `SSH_AUTH_SOCK`.
    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for AgentDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Creates `<parent>/weft-ssh-<random>/agent.sock`: the directory 0700 and
/// the socket 0600, both owned by `user`, so only the user can reach the
/// forwarded agent.
///
/// # Errors
/// Returns the I/O error of any step; nothing is left behind then.
pub(crate) fn create_agent_socket(
    parent: &Path,
    user: &LocalUser,
) -> io::Result<(AgentDir, UnixListener)> {
    let name = format!("weft-ssh-{:016x}", weft_types::entropy::u64());
    let dir = parent.join(name);
    fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let socket = dir.join("agent.sock");
    let agent = AgentDir {
        dir: dir.clone(),
        socket: socket.clone(),
    };
    let listener = UnixListener::bind(&socket)?;
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o600))?;
    std::os::unix::fs::chown(&socket, Some(user.uid), Some(user.gid))?;
    std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid))?;
    Ok((agent, listener))
}

/// Accepts local agent clients and bridges each to a new agent channel.
pub(crate) async fn serve_agent(listener: UnixListener, ctx: FwdCtx) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "agent socket accept failed");
                    continue;
                }
            },
            () = ctx.conn_closed.cancelled() => return,
        };
        let Ok(permit) = ctx.channels.clone().try_acquire_owned() else {
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let channel = tokio::select! {
                r = ctx.handle.channel_open_agent() => match r { Ok(c) => c, Err(_) => return },
                () = ctx.conn_closed.cancelled() => return,
            };
            let (read, write) = channel.split();
            bridge(
                stream,
                read,
                write,
                ctx.input_cap,
                ctx.conn_closed.clone(),
                Some(permit),
            )
            .await;
        });
    }
}

/// Binds a `-R` listener at `ip:port` (port 0 = any).
///
/// # Errors
/// Returns the bind error.
pub(crate) async fn bind_remote(ip: IpAddr, port: u32) -> io::Result<(TcpListener, u32)> {
    let port = u16::try_from(port)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "port out of range"))?;
    let listener = TcpListener::bind(SocketAddr::new(ip, port)).await?;
    let bound = listener.local_addr()?.port();
    Ok((listener, u32::from(bound)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_forwards_bind_loopback_or_our_tailnet_address_only() {
        let ours: IpAddr = "100.64.0.7".parse().unwrap();
        let lo4 = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(remote_bind_addr("", &[ours]), lo4);
        assert_eq!(remote_bind_addr("*", &[ours]), lo4);
        assert_eq!(remote_bind_addr("localhost", &[ours]), lo4);
        assert_eq!(remote_bind_addr("0.0.0.0", &[ours]), lo4);
        assert_eq!(
            remote_bind_addr("::1", &[ours]),
            Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );
        assert_eq!(remote_bind_addr("100.64.0.7", &[ours]), Some(ours));
        assert_eq!(remote_bind_addr("100.64.0.8", &[ours]), None);
        assert_eq!(remote_bind_addr("198.18.0.1", &[ours]), None);
        assert_eq!(remote_bind_addr("example.com", &[ours]), None);
    }
}
