//! The per-connection russh [`Handler`]: authentication by tailnet identity
//! and policy, then session, forwarding and agent requests.
//!
//! Authentication flow. The identity was fixed at accept time from the
//! source address (and, for a connection from the node itself, the local
//! account that opened it). `none` succeeds when the policy accepts the login, or,
//! under a `check` rule, when control answers the check within a second (it
//! still holds the user's approval); this node keeps no approvals itself.
//!
//! Text for the user travels as SSH_MSG_USERAUTH_BANNER in front of the
//! answer it explains (RFC 4252 §5.4; russh patched for it, see
//! third_party/README.md), which OpenSSH prints in every mode, BatchMode
//! included:
//! - A refused login gets its one-line reason (`weft: …`) and a failure that
//!   offers only `none`, which no client tries twice, so it gives up at once:
//!   `weft: tailnet policy does not permit …` then `Permission denied
//!   (none).`, exit 255. No method a client could prompt for is ever offered.
//! - A login held by a `check` gets the re-authentication URL (once per
//!   connection) and a failure that offers `keyboard-interactive`: an
//!   interactive client continues there, with zero prompts, and is held until
//!   the [`CheckHook`](crate::CheckHook) answers; a BatchMode client stops,
//!   and the check keeps running after it left (see `Drop`), so that approving
//!   at the URL lets the next connection in.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use russh::server::{Auth, ChannelOpenHandle, Handler, Msg, Response, Session};
use russh::{Channel, ChannelWriteHalf};
use russh::{ChannelId, ChannelOpenFailure, MethodKind, MethodSet, Sig};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::authz::{
    CheckOutcome, CheckRequest, Decision, Grant, Origin, PeerIdentity, PendingCheck, Unidentified,
};
use crate::forward::{self, AgentDir, FwdCtx};
use crate::pump::{InputQueue, bridge, drain};
use crate::server::{ConnEntry, Phase, Shared, now};
use crate::session::{self, Audit, Program, PtyReq};
use crate::user::LocalUser;

mod auth;
mod extras;
mod start;

use auth::{Kbd, Verdict};

/// How long a held login waits for control's first answer before it shows
/// the check URL: an approval control still remembers comes back within it.
const CHECK_QUICK_ANSWER: Duration = Duration::from_secs(1);

/// An authenticated login.
struct Login {
    user: Arc<LocalUser>,
    grant: Arc<Mutex<Grant>>,
    audit: Audit,
}

/// State of one session channel.
struct SessionChan {
    write: Option<ChannelWriteHalf<Msg>>,
    input: Arc<InputQueue>,
    pty: Option<PtyReq>,
    env: Vec<(String, String)>,
    pgid: Option<i32>,
    resize: Option<OwnedFd>,
    /// The session's recording, if its rule asks for one (for resizes).
    recording: Option<Arc<crate::recording::Recording>>,
    /// Cancelled when the client closes the channel or the connection ends.
    cancel: CancellationToken,
}

pub(crate) struct ConnHandler {
    shared: Arc<Shared>,
    conn_id: u64,
    peer_addr: SocketAddr,
    local_addr: SocketAddr,
    identity: Result<PeerIdentity, Unidentified>,
    phase: watch::Sender<Phase>,
    /// Cancelled when the connection ends for any reason.
    closed: CancellationToken,
    kbd: Kbd,
    login: Option<Login>,
    /// The login name of the latest attempt (the accepted one once
    /// authenticated).
    ssh_user: String,
    /// Refusals so far (the reason is shown once per connection).
    refusals: u32,
    /// A refusal was logged (once per connection, whichever method saw it).
    refusal_logged: bool,
    /// The banner to send in front of the answer to the current
    /// authentication request (taken by `authentication_request_banner`).
    banner: Option<String>,
    sessions: BTreeMap<ChannelId, SessionChan>,
    /// Open session channel ids, shared with the registry for messages.
    session_ids: Arc<Mutex<BTreeSet<ChannelId>>>,
    channel_slots: Arc<Semaphore>,
    remote_forwards: BTreeMap<(String, u32), CancellationToken>,
    /// `ssh -R /path:…` forwards by path.
    unix_forwards: BTreeMap<String, CancellationToken>,
    /// X11 displays by session channel; dropping one closes it.
    x11: BTreeMap<ChannelId, crate::x11::X11Display>,
    agent: Option<AgentDir>,
}

impl ConnHandler {
    /// Returns the handler of connection `conn_id` from `peer_addr` to
    /// `local_addr`, whose identity the authorizer already decided.
    pub(crate) fn new(
        shared: Arc<Shared>,
        conn_id: u64,
        (peer_addr, local_addr): (SocketAddr, SocketAddr),
        identity: Result<PeerIdentity, Unidentified>,
        phase: watch::Sender<Phase>,
        closed: CancellationToken,
    ) -> Self {
        let slots = Arc::new(Semaphore::new(shared.config.max_channels_per_conn));
        ConnHandler {
            shared,
            conn_id,
            peer_addr,
            local_addr,
            identity,
            phase,
            closed,
            kbd: Kbd::Idle,
            login: None,
            ssh_user: String::new(),
            refusals: 0,
            refusal_logged: false,
            banner: None,
            sessions: BTreeMap::new(),
            session_ids: Arc::default(),
            channel_slots: slots,
            remote_forwards: BTreeMap::new(),
            unix_forwards: BTreeMap::new(),
            x11: BTreeMap::new(),
            agent: None,
        }
    }

    fn grant(&self) -> Option<Grant> {
        self.login.as_ref().map(|l| {
            l.grant
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        })
    }

    fn fwd_ctx(&self, session: &Session, audit: Audit) -> FwdCtx {
        FwdCtx {
            handle: session.handle(),
            channels: self.channel_slots.clone(),
            conn_closed: self.closed.clone(),
            input_cap: self.shared.config.channel_input_buffer,
            audit,
        }
    }
}

fn unknown_peer(addr: SocketAddr) -> PeerIdentity {
    PeerIdentity {
        addr: addr.ip(),
        origin: Origin::Peer,
        node_id: String::new(),
        node_name: String::new(),
        user_login: None,
        tags: Vec::new(),
    }
}

impl Drop for ConnHandler {
    fn drop(&mut self) {
        // A check whose URL was shown keeps running after the client left
        // (a BatchMode client stops at the URL): control records the
        // approval, and the next connection gets in at `none`.
        if let Kbd::Checking { pending, .. } = std::mem::replace(&mut self.kbd, Kbd::Idle) {
            self.shared.detach_check(pending);
        }
        self.closed.cancel();
        for stop in self.remote_forwards.values() {
            stop.cancel();
        }
        self.shared.unregister(self.conn_id);
    }
}

/// Control's answer to a held login within [`CHECK_QUICK_ANSWER`], or the
/// check still pending.
enum Quick {
    Approved,
    Denied(String),
    Pending(PendingCheck),
}

impl ConnHandler {
    /// Starts a check for a held login and waits up to [`CHECK_QUICK_ANSWER`]
    /// for control's answer: control answers at once when the user approved
    /// within the period (it keeps approvals; this node keeps none, so a
    /// revoke or an expiry at control holds the very next login).
    fn ask_check(
        &self,
        ssh_user: &str,
        local: &LocalUser,
        period: Duration,
    ) -> impl std::future::Future<Output = Quick> + Send + 'static {
        let identity = self.identity.clone();
        let shared = self.shared.clone();
        let closed = self.closed.clone();
        let (ssh_user, local_user) = (ssh_user.to_owned(), local.name.clone());
        async move {
            let Ok(peer) = identity else {
                return Quick::Denied("unknown peer".to_owned());
            };
            let mut pending = shared.check_hook.start(CheckRequest {
                peer,
                ssh_user,
                local_user,
                period,
            });
            let quick = tokio::select! {
                o = &mut pending.outcome => Some(o),
                () = tokio::time::sleep(CHECK_QUICK_ANSWER) => None,
                () = closed.cancelled() => None,
            };
            match quick {
                Some(CheckOutcome::Approved) => Quick::Approved,
                Some(CheckOutcome::Denied { message }) => Quick::Denied(message),
                None => Quick::Pending(pending),
            }
        }
    }
}

impl Handler for ConnHandler {
    type Error = russh::Error;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        user.clone_into(&mut self.ssh_user);
        match self.decide(user).await {
            Verdict::Allow { user: local, grant } => Ok(self.accept_login(user, local, grant)),
            Verdict::Refuse(why) => Ok(self.refuse(&why)),
            // Control may still hold an approval: then the login goes through
            // here, BatchMode clients included. Otherwise the URL is shown
            // and keyboard-interactive holds the login.
            Verdict::Hold {
                user: local,
                grant,
                period,
            } => match self.ask_check(user, &local, period).await {
                Quick::Approved => Ok(self.accept_login(user, local, grant)),
                Quick::Denied(why) => Ok(self.refuse(&why)),
                Quick::Pending(pending) => {
                    self.hold(user, local, grant, pending);
                    Ok(Auth::Reject {
                        proceed_with_methods: Some(MethodSet::from(
                            &[MethodKind::KeyboardInteractive][..],
                        )),
                        partial_success: false,
                    })
                }
            },
        }
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        user.clone_into(&mut self.ssh_user);
        // Zero prompts: the client answers at once, and the answer waits.
        let wait_round = || Auth::Partial {
            name: Cow::Borrowed(""),
            instructions: Cow::Borrowed(""),
            prompts: Cow::Borrowed(&[]),
        };
        if response.is_none() {
            // Held at `none` already (the URL was shown there): wait for that
            // check, without asking control or showing the URL again.
            if matches!(&self.kbd, Kbd::Checking { ssh_user, .. } if ssh_user == user) {
                return Ok(wait_round());
            }
            // A fresh round (a client that skipped `none`, or another login
            // name): evaluate from scratch.
            return Ok(match self.decide(user).await {
                Verdict::Allow { user: local, grant } => self.accept_login(user, local, grant),
                Verdict::Refuse(why) => self.refuse(&why),
                Verdict::Hold {
                    user: local,
                    grant,
                    period,
                } => match self.ask_check(user, &local, period).await {
                    Quick::Approved => self.accept_login(user, local, grant),
                    Quick::Denied(why) => self.refuse(&why),
                    Quick::Pending(pending) => {
                        self.hold(user, local, grant, pending);
                        wait_round()
                    }
                },
            });
        }
        match std::mem::replace(&mut self.kbd, Kbd::Idle) {
            Kbd::Idle => Ok(Auth::Reject {
                proceed_with_methods: Some(MethodSet::from(&[MethodKind::None][..])),
                partial_success: false,
            }),
            Kbd::Checking {
                pending,
                user: local,
                grant,
                ssh_user,
            } => {
                self.phase.send_replace(Phase::Checking);
                let outcome = tokio::select! {
                    o = pending => Some(o),
                    () = tokio::time::sleep(self.shared.config.check_timeout) => None,
                    () = self.closed.cancelled() => None,
                };
                self.phase.send_replace(Phase::PreAuth);
                match outcome {
                    Some(CheckOutcome::Approved) => Ok(self.accept_login(&ssh_user, local, grant)),
                    Some(CheckOutcome::Denied { message }) => Ok(self.refuse(&message)),
                    None => Ok(self.refuse("re-authentication timed out")),
                }
            }
        }
    }

    async fn authentication_request_banner(&mut self) -> Result<Option<String>, Self::Error> {
        Ok(self.banner.take())
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        let Some(login) = &self.login else {
            return Ok(());
        };
        let peer = self
            .identity
            .clone()
            .unwrap_or_else(|_| unknown_peer(self.peer_addr));
        crate::audit::login(&crate::audit::LoginAttempt {
            conn: self.conn_id,
            peer: Some(&peer),
            src_addr: self.peer_addr,
            ssh_user: &self.ssh_user,
            local_user: Some(&login.user.name),
            result: crate::audit::LoginResult::Accepted,
            reason: None,
        });
        self.shared.register(
            self.conn_id,
            ConnEntry {
                peer,
                addrs: (self.peer_addr, self.local_addr),
                ssh_user: self.ssh_user.clone(),
                local_user: login.user.name.clone(),
                local_uid: login.user.uid,
                handle: session.handle(),
                closed: self.closed.clone(),
                grant: login.grant.clone(),
                sessions: self.session_ids.clone(),
            },
        );
        self.phase.send_replace(Phase::Authenticated);
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Ok(permit) = self.channel_slots.clone().try_acquire_owned() else {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        };
        reply.accept().await;
        let id = channel.id();
        let (read, write) = channel.split();
        let input = InputQueue::new(self.shared.config.channel_input_buffer);
        let cancel = self.closed.child_token();
        let chan_cancel = cancel.clone();
        let q = input.clone();
        tokio::spawn(async move {
            drain(read, q, chan_cancel.clone(), Some(permit)).await;
            chan_cancel.cancel();
        });
        self.sessions.insert(
            id,
            SessionChan {
                write: Some(write),
                input,
                pty: None,
                env: Vec::new(),
                pgid: None,
                resize: None,
                recording: None,
                cancel,
            },
        );
        self.session_ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id);
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(chan) = self.sessions.remove(&channel) {
            chan.cancel.cancel();
        }
        self.x11.remove(&channel);
        self.session_ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&channel);
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(chan) = self.sessions.get_mut(&channel) else {
            return session.channel_failure(channel);
        };
        let term = if term.is_empty() || term.len() > 64 {
            "dumb"
        } else {
            term
        };
        chan.pty = Some(PtyReq {
            term: term.to_owned(),
            cols: u16::try_from(col_width).unwrap_or(u16::MAX).max(1),
            rows: u16::try_from(row_height).unwrap_or(u16::MAX).max(1),
        });
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let allowed = self.grant().is_some_and(|g| g.accepts_env(name));
        match self.sessions.get_mut(&channel) {
            Some(chan) if allowed && chan.env.len() < 64 && value.len() <= 4096 => {
                chan.env.retain(|(k, _)| k != name);
                chan.env.push((name.to_owned(), value.to_owned()));
                session.channel_success(channel)
            }
            _ => session.channel_failure(channel),
        }
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(channel, Program::Shell, session)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(
            channel,
            Program::Exec(OsString::from_vec(data.to_vec())),
            session,
        )
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name != "sftp" {
            return session.channel_failure(channel);
        }
        let config = &self.shared.config;
        let program = match &config.sftp_command {
            Some(c) => Program::Sftp(c.program.clone(), c.args.clone()),
            None => {
                let Some(path) = config.sftp_server_paths.iter().find(|p| p.is_file()) else {
                    let msg = "weft-ssh: SFTP is unavailable: no SFTP server program is configured \
                               (run weftd, which has one built in, or install openssh-sftp-server)\r\n";
                    session.extended_data(channel, 1, msg.as_bytes().to_vec())?;
                    return session.channel_failure(channel);
                };
                Program::Sftp(path.clone(), Vec::new())
            }
        };
        self.start(channel, program, session)
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(fd) = self.sessions.get(&channel).and_then(|c| c.resize.as_ref()) {
            session::resize(fd, col_width, row_height);
        }
        if let Some(rec) = self
            .sessions
            .get(&channel)
            .and_then(|c| c.recording.as_ref())
        {
            rec.resize(col_width, row_height);
        }
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(pgid) = self.sessions.get(&channel).and_then(|c| c.pgid) {
            session::signal_group(pgid, &signal);
        }
        Ok(())
    }

    async fn agent_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let (Some(grant), Some(login)) = (self.grant(), self.login.as_ref()) else {
            return Ok(false);
        };
        if !grant.allow_agent_forwarding {
            return Ok(false);
        }
        if self.agent.is_none() {
            match forward::create_agent_socket(&self.shared.config.agent_socket_parent, &login.user)
            {
                Ok((dir, listener)) => {
                    let ctx = self.fwd_ctx(session, login.audit.clone());
                    self.shared
                        .tracker
                        .spawn(forward::serve_agent(listener, ctx));
                    self.agent = Some(dir);
                }
                Err(e) => {
                    tracing::warn!(conn = self.conn_id, error = %e, "cannot create agent socket");
                    return Ok(false);
                }
            }
        }
        Ok(self.sessions.contains_key(&channel))
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        single_connection: bool,
        x11_auth_protocol: &str,
        x11_auth_cookie: &str,
        x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.x11_req(
            channel,
            single_connection,
            x11_auth_protocol,
            x11_auth_cookie,
            x11_screen_number,
            session,
        )
        .await
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.unix_forward(socket_path, session).await
    }

    async fn cancel_streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(self.cancel_unix_forward(socket_path))
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        channel: Channel<Msg>,
        socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.open_unix_direct(channel, socket_path, reply).await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (Some(grant), Some(login)) = (self.grant(), self.login.as_ref()) else {
            return Ok(());
        };
        if !grant.allow_local_port_forwarding {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let Ok(permit) = self.channel_slots.clone().try_acquire_owned() else {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        };
        let host = host_to_connect.to_owned();
        let timeout = self.shared.config.forward_connect_timeout;
        let cap = self.shared.config.channel_input_buffer;
        let closed = self.closed.clone();
        let audit = login.audit.clone();
        // Connect off the session loop: a slow target must not stall the connection.
        self.shared.tracker.spawn(async move {
            let stream = tokio::select! {
                r = forward::connect_direct(&host, port_to_connect, timeout) => r,
                () = closed.cancelled() => return,
            };
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(conn = audit.conn_id, error = %e, "direct-tcpip connect failed");
                    reply.reject(ChannelOpenFailure::ConnectFailed).await;
                    return;
                }
            };
            reply.accept().await;
            let (read, write) = channel.split();
            // Audit line (info on purpose; see `server` module docs).
            tracing::info!(conn = audit.conn_id, peer_user = %audit.peer_user, peer_node = %audit.peer_node,
                local_user = %audit.local_user, what = "forward-local", "ssh session started");
            let sent = bridge(stream, read, write, cap, closed, Some(permit)).await;
            tracing::info!(conn = audit.conn_id, peer_user = %audit.peer_user, peer_node = %audit.peer_node,
                local_user = %audit.local_user, what = "forward-local", bytes_out = sent, "ssh session ended");
        });
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let (Some(grant), Some(login)) = (self.grant(), self.login.as_ref()) else {
            return Ok(false);
        };
        if !grant.allow_remote_port_forwarding
            || self.remote_forwards.len() >= self.shared.config.max_remote_forwards_per_conn
            || (*port != 0 && *port < 1024 && login.user.uid != 0)
        {
            return Ok(false);
        }
        let Some(ip) = forward::remote_bind_addr(address, &self.shared.config.tailnet_addrs) else {
            return Ok(false);
        };
        let (listener, bound) = match forward::bind_remote(ip, *port).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(conn = self.conn_id, error = %e, "tcpip-forward bind failed");
                return Ok(false);
            }
        };
        let stop = self.closed.child_token();
        let ctx = self.fwd_ctx(session, login.audit.clone());
        // Audit line (info on purpose; see `server` module docs).
        tracing::info!(conn = self.conn_id, peer_user = %login.audit.peer_user, peer_node = %login.audit.peer_node,
            local_user = %login.audit.local_user, what = "forward-remote", port = bound, "ssh session started");
        self.shared.tracker.spawn(forward::serve_remote_forward(
            listener,
            address.to_owned(),
            bound,
            ctx,
            stop.clone(),
        ));
        // OpenSSH cancels by the port it asked for (0 stays 0 only if it never learnt the port).
        self.remote_forwards
            .insert((address.to_owned(), bound), stop);
        *port = bound;
        Ok(true)
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        match self.remote_forwards.remove(&(address.to_owned(), port)) {
            Some(stop) => {
                stop.cancel();
                Ok(true)
            }
            None => Ok(false),
        }
    }
}
