//! X11 forwarding (`ssh -X` / `-Y`), the way OpenSSH's sshd does it with
//! `X11UseLocalhost yes` and `X11DisplayOffset 10`.
//!
//! On an `x11-req` the session gets a display of its own: the first number
//! `N >= 10` whose TCP port `6000 + N` is free on both loopback addresses
//! (127.0.0.1 and, when the namespace has it, ::1) and that no local X
//! server uses (`/tmp/.X11-unix/X<N>`). The session's `DISPLAY` is
//! `localhost:N.S`. The client's cookie (OpenSSH sends a fake one and swaps
//! in the real one on its side) is added to the user's `~/.Xauthority` by
//! running the user's own `xauth -q -` *as the user* (the privilege drop of
//! a session) with `remove unix:N.S` and `add unix:N.S MIT-MAGIC-COOKIE-1
//! <hex>` on its stdin, exactly the lines sshd writes, so the file belongs
//! to the user. Only TCP listeners are made, no socket in `/tmp/.X11-unix`
//! (that directory is shared by every X server on the host, and a listener
//! there would have to be created as root).
//!
//! Each connection to the display opens an `x11` channel to the client,
//! carrying the connecting socket's address and port, and the bytes are
//! pumped both ways. A single-connection request stops listening after the
//! first connection. When the session channel ends, the listeners close and
//! the cookie is removed from `~/.Xauthority` (again as the user).
//!
//! What is refused: an authentication protocol other than
//! `MIT-MAGIC-COOKIE-1`, a cookie that is not an even number of hex digits
//! (at most [`MAX_COOKIE_HEX`]), a screen number over [`MAX_SCREEN`], a
//! second request on the same session, and any request while the node's
//! `--ssh-x11` pref is off.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::forward::FwdCtx;
use crate::pump::bridge;
use crate::user::{LocalUser, PrivDrop};

/// The first display number offered (OpenSSH's `X11DisplayOffset`).
pub const DISPLAY_OFFSET: u32 = 10;
/// How many display numbers are tried (OpenSSH's `MAX_DISPLAYS`).
pub const MAX_DISPLAYS: u32 = 1000;
/// The X11 TCP port of display 0.
const X11_BASE_PORT: u32 = 6000;
/// The only authentication protocol OpenSSH clients send.
pub const AUTH_PROTOCOL: &str = "MIT-MAGIC-COOKIE-1";
/// The longest cookie accepted, in hex digits (OpenSSH's client sends 32).
pub const MAX_COOKIE_HEX: usize = 256;
/// The highest screen number accepted.
pub const MAX_SCREEN: u32 = 255;
/// How long `xauth` may take.
const XAUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an `x11-req` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum X11Error {
    #[error(
        "X11 forwarding is off on this node (its owner can turn it on with 'weft set --ssh-x11')"
    )]
    Disabled,
    #[error("X11 forwarding was already requested on this session")]
    Duplicate,
    #[error("unsupported X11 authentication protocol {0:?} (only {AUTH_PROTOCOL})")]
    Protocol(String),
    #[error(
        "malformed X11 cookie: it must be an even number (2 to {MAX_COOKIE_HEX}) of hex digits"
    )]
    Cookie,
    #[error("X11 screen number {0} is out of range (0 to {MAX_SCREEN})")]
    Screen(u32),
    #[error("no free X11 display number between {DISPLAY_OFFSET} and {}", DISPLAY_OFFSET + MAX_DISPLAYS - 1)]
    NoDisplay,
    #[error("xauth is not installed on this node ({0}); install the xauth package")]
    NoXauth(String),
    #[error("xauth failed: {0}")]
    Xauth(String),
}

/// A validated `x11-req`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X11Request {
    /// Whether only one connection is forwarded.
    pub single_connection: bool,
    /// The (fake) cookie in lower-case hex.
    pub cookie_hex: String,
    /// The screen number.
    pub screen: u32,
}

impl X11Request {
    /// Validates the fields of an `x11-req`.
    ///
    /// # Errors
    /// [`X11Error::Protocol`], [`X11Error::Cookie`] or [`X11Error::Screen`].
    pub fn parse(
        single_connection: bool,
        protocol: &str,
        cookie: &str,
        screen: u32,
    ) -> Result<Self, X11Error> {
        if protocol != AUTH_PROTOCOL {
            return Err(X11Error::Protocol(protocol.chars().take(64).collect()));
        }
        if cookie.is_empty()
            || cookie.len() > MAX_COOKIE_HEX
            || !cookie.len().is_multiple_of(2)
            || !cookie.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(X11Error::Cookie);
        }
        if screen > MAX_SCREEN {
            return Err(X11Error::Screen(screen));
        }
        Ok(X11Request {
            single_connection,
            cookie_hex: cookie.to_ascii_lowercase(),
            screen,
        })
    }
}

/// The display of one session: its listeners run until the value is
/// dropped, which also removes the cookie from the user's `~/.Xauthority`.
#[derive(Debug)]
pub(crate) struct X11Display {
    number: u32,
    screen: u32,
    stop: CancellationToken,
    xauth: PathBuf,
    user: LocalUser,
}

impl X11Display {
    /// Returns the session's `DISPLAY` (`localhost:N.S`).
    pub(crate) fn display_env(&self) -> String {
        format!("localhost:{}.{}", self.number, self.screen)
    }

    /// Returns the display number.
    pub(crate) fn number(&self) -> u32 {
        self.number
    }
}

impl Drop for X11Display {
    fn drop(&mut self) {
        self.stop.cancel();
        let lines = format!("remove {}\n", auth_display(self.number, self.screen));
        let (xauth, user) = (self.xauth.clone(), self.user.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = run_xauth(&xauth, &user, &lines).await {
                    tracing::debug!(error = %e, "cannot remove the X11 cookie");
                }
            });
        }
    }
}

/// The name xauth files the cookie under (`unix:N.S`, as sshd writes it
/// with `X11UseLocalhost yes`: Xlib looks a `localhost:N` display up as the
/// local host's entry).
fn auth_display(number: u32, screen: u32) -> String {
    format!("unix:{number}.{screen}")
}

/// Sets up the display for `req` as `user`: binds the listeners, adds the
/// cookie with `xauth` (as the user) and starts accepting, each X
/// connection bridged to a new `x11` channel of `ctx`'s connection.
///
/// # Errors
/// [`X11Error::NoDisplay`], [`X11Error::NoXauth`] or [`X11Error::Xauth`];
/// nothing is left behind then.
pub(crate) async fn start(
    req: &X11Request,
    user: &LocalUser,
    xauth: &Path,
    ctx: FwdCtx,
) -> Result<X11Display, X11Error> {
    if !xauth.is_file() {
        return Err(X11Error::NoXauth(xauth.display().to_string()));
    }
    let (number, listeners) = bind_display().await?;
    let display = X11Display {
        number,
        screen: req.screen,
        stop: ctx.conn_closed.child_token(),
        xauth: xauth.to_owned(),
        user: user.clone(),
    };
    let ad = auth_display(number, req.screen);
    let lines = format!("remove {ad}\nadd {ad} {AUTH_PROTOCOL} {}\n", req.cookie_hex);
    run_xauth(xauth, user, &lines).await?;
    for l in listeners {
        tokio::spawn(serve(
            l,
            req.single_connection,
            ctx.clone(),
            display.stop.clone(),
        ));
    }
    Ok(display)
}

/// Binds `6000 + N` on loopback for the first free `N`.
async fn bind_display() -> Result<(u32, Vec<TcpListener>), X11Error> {
    for n in DISPLAY_OFFSET..DISPLAY_OFFSET + MAX_DISPLAYS {
        if Path::new(&format!("/tmp/.X11-unix/X{n}")).exists() {
            continue;
        }
        let Ok(port) = u16::try_from(X11_BASE_PORT + n) else {
            break;
        };
        let Ok(v4) =
            TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)).await
        else {
            continue;
        };
        // ::1 too where the namespace has it, so that no one else can take
        // the same display number there (Xlib tries both for `localhost`).
        match TcpListener::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port)).await {
            Ok(v6) => return Ok((n, vec![v4, v6])),
            Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => return Ok((n, vec![v4])),
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => return Ok((n, vec![v4])),
            Err(_) => continue,
        }
    }
    Err(X11Error::NoDisplay)
}

/// Accepts X clients on `listener` until `stop`, each bridged to an `x11`
/// channel; after the first one when `single`.
async fn serve(listener: TcpListener, single: bool, ctx: FwdCtx, stop: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "X11 accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        tokio::spawn(forward(stream, peer, ctx.clone()));
        if single {
            stop.cancel();
            return;
        }
    }
}

/// Opens an `x11` channel for one X client and bridges it.
async fn forward(stream: TcpStream, peer: SocketAddr, ctx: FwdCtx) {
    let Ok(permit) = ctx.channels.clone().try_acquire_owned() else {
        tracing::debug!(
            conn = ctx.audit.conn_id,
            "channel cap reached; dropping X11 connection"
        );
        return;
    };
    let open = ctx
        .handle
        .channel_open_x11(peer.ip().to_string(), u32::from(peer.port()));
    let channel = tokio::select! {
        r = open => match r {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(conn = ctx.audit.conn_id, error = ?e, "the client refused an x11 channel");
                return;
            }
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
}

/// Runs `xauth -q -` as `user` with `lines` on its stdin.
async fn run_xauth(xauth: &Path, user: &LocalUser, lines: &str) -> Result<(), X11Error> {
    let mut drop = PrivDrop::new(user, true);
    let mut cmd = tokio::process::Command::new(xauth);
    cmd.args(["-q", "-"])
        .env_clear()
        .env("HOME", &user.home)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .env("PATH", user.default_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: `apply` makes only async-signal-safe syscalls on buffers
    // prepared before fork (see `PrivDrop`).
    unsafe { cmd.pre_exec(move || drop.apply()) };
    let mut child = cmd.spawn().map_err(|e| X11Error::Xauth(e.to_string()))?;
    let run = async {
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(lines.as_bytes()).await?;
            stdin.shutdown().await?;
        }
        child.wait_with_output().await
    };
    let out = tokio::time::timeout(XAUTH_TIMEOUT, run)
        .await
        .map_err(|_| X11Error::Xauth("timed out".to_owned()))?
        .map_err(|e| X11Error::Xauth(e.to_string()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err.lines().next().unwrap_or("").trim();
        return Err(X11Error::Xauth(format!("{} {first}", out.status)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_well_formed_request_is_accepted_and_the_cookie_normalized() {
        let r = X11Request::parse(false, AUTH_PROTOCOL, "00FFaa11", 0).unwrap();
        assert_eq!(r.cookie_hex, "00ffaa11");
        assert_eq!(r.screen, 0);
        assert!(!r.single_connection);
    }

    #[test]
    fn malformed_requests_are_refused_with_the_reason() {
        let p = AUTH_PROTOCOL;
        assert_eq!(
            X11Request::parse(false, "XDM-AUTHORIZATION-1", "00", 0),
            Err(X11Error::Protocol("XDM-AUTHORIZATION-1".into()))
        );
        for bad in ["", "abc", "zz", "00 11", "0g", "00\n11"] {
            assert_eq!(
                X11Request::parse(false, p, bad, 0),
                Err(X11Error::Cookie),
                "{bad:?}"
            );
        }
        let long = "a".repeat(MAX_COOKIE_HEX + 2);
        assert_eq!(X11Request::parse(false, p, &long, 0), Err(X11Error::Cookie));
        assert!(X11Request::parse(false, p, &long[..MAX_COOKIE_HEX], 0).is_ok());
        assert_eq!(
            X11Request::parse(false, p, "00", 4_000_000_000),
            Err(X11Error::Screen(4_000_000_000))
        );
        assert!(X11Request::parse(true, p, "00", MAX_SCREEN).is_ok());
    }

    #[test]
    fn the_display_and_its_xauth_name_follow_sshd() {
        assert_eq!(auth_display(10, 0), "unix:10.0");
        let d = X11Display {
            number: 12,
            screen: 1,
            stop: CancellationToken::new(),
            xauth: PathBuf::from("/nonexistent/xauth"),
            user: LocalUser {
                name: "u".into(),
                uid: 1,
                gid: 1,
                home: "/".into(),
                shell: "/bin/sh".into(),
                groups: vec![1],
            },
        };
        assert_eq!(d.display_env(), "localhost:12.1");
        assert_eq!(d.number(), 12);
    }

    #[tokio::test]
    async fn displays_are_numbered_from_the_offset_and_never_shared() {
        let (a, la) = bind_display().await.unwrap();
        let (b, lb) = bind_display().await.unwrap();
        assert!(a >= DISPLAY_OFFSET && b >= DISPLAY_OFFSET);
        assert_ne!(a, b);
        drop((la, lb));
    }
}
