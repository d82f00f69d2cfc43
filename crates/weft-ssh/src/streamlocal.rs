//! Unix-socket forwarding, OpenSSH's `streamlocal` extensions:
//! `ssh -R /remote.sock:…` (`streamlocal-forward@openssh.com`, and its
//! cancel) and `ssh -L …:/remote.sock` (`direct-streamlocal@openssh.com`).
//!
//! Every bind, connect and unlink on the node's file system is done with
//! the login user's permissions ([`crate::usersock`]), never root's: a user
//! cannot create a socket where only root may write, nor reach a socket only
//! root may open. A `-R` socket is created 0600 (OpenSSH's
//! `StreamLocalBindMask`), an existing path is refused unless the server
//! was configured like `StreamLocalBindUnlink yes`
//! ([`SshConfig::streamlocal_bind_unlink`](crate::SshConfig)), and the socket
//! is removed (as the user) when the forward is cancelled or the connection
//! ends. The policy grant's `-L`/`-R` permissions cover the unix-socket
//! forms too, as `AllowStreamLocalForwarding` follows them in OpenSSH.

use std::io;
use std::os::fd::OwnedFd;

use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::forward::FwdCtx;
use crate::pump::bridge;
use crate::user::LocalUser;
use crate::usersock::{self, SockOp};

/// Binds the `-R` socket at `path` as `user`.
///
/// # Errors
/// What the kernel told the user (`EACCES` for a directory the user may not
/// write, `EADDRINUSE` for an existing path), or a refused path.
pub(crate) async fn bind(
    user: &LocalUser,
    path: &str,
    unlink_first: bool,
) -> io::Result<UnixListener> {
    let fd = usersock::as_user(user, path, SockOp::Bind { unlink_first })
        .await?
        .ok_or_else(|| io::Error::other("no socket"))?;
    listener(fd)
}

/// Connects to the socket at `path` as `user` (`-L …:/path`).
///
/// # Errors
/// What the kernel told the user (`EACCES`, `ENOENT`, `ECONNREFUSED`), or a
/// refused path.
pub(crate) async fn connect(user: &LocalUser, path: &str) -> io::Result<UnixStream> {
    let fd = usersock::as_user(user, path, SockOp::Connect)
        .await?
        .ok_or_else(|| io::Error::other("no socket"))?;
    let std = std::os::unix::net::UnixStream::from(fd);
    std.set_nonblocking(true)?;
    UnixStream::from_std(std)
}

fn listener(fd: OwnedFd) -> io::Result<UnixListener> {
    let std = std::os::unix::net::UnixListener::from(fd);
    std.set_nonblocking(true)?;
    UnixListener::from_std(std)
}

/// Accepts on a `-R` socket and opens a `forwarded-streamlocal@openssh.com`
/// channel for each connection, until `stop` or the connection ends; then
/// removes the socket as `user`.
pub(crate) async fn serve_remote(
    listener: UnixListener,
    path: String,
    user: LocalUser,
    ctx: FwdCtx,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "streamlocal accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
            () = ctx.conn_closed.cancelled() => break,
        };
        let Ok(permit) = ctx.channels.clone().try_acquire_owned() else {
            tracing::debug!(
                conn = ctx.audit.conn_id,
                "channel cap reached; dropping forwarded connection"
            );
            continue;
        };
        let ctx = ctx.clone();
        let path = path.clone();
        tokio::spawn(async move {
            let channel = tokio::select! {
                r = ctx.handle.channel_open_forwarded_streamlocal(path) => match r {
                    Ok(c) => c,
                    Err(_) => return,
                },
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
    drop(listener);
    if let Err(e) = usersock::as_user(&user, &path, SockOp::Unlink).await {
        tracing::debug!(conn = ctx.audit.conn_id, error = %e, "cannot remove a forwarded socket");
    }
    // Audit line (info on purpose; see `server` module docs).
    tracing::info!(conn = ctx.audit.conn_id, peer_user = %ctx.audit.peer_user, peer_node = %ctx.audit.peer_node,
        local_user = %ctx.audit.local_user, what = "forward-remote-unix", "ssh session ended");
}
