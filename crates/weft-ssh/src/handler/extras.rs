//! The requests added for X11 and unix-socket forwarding: `x11-req`,
//! `streamlocal-forward@openssh.com` (and its cancel) and
//! `direct-streamlocal@openssh.com` channels. The work is in
//! [`crate::x11`] and [`crate::streamlocal`]; this is the handler's side.

use std::sync::atomic::Ordering;

use super::*;
use crate::streamlocal;
use crate::x11::{self, X11Error, X11Request};

impl ConnHandler {
    /// Answers an `x11-req` on session channel `channel`: a display for the
    /// session, or a failure with the reason on the channel's stderr.
    pub(super) async fn x11_req(
        &mut self,
        channel: ChannelId,
        single_connection: bool,
        protocol: &str,
        cookie: &str,
        screen: u32,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let refuse = |session: &mut Session, why: X11Error| {
            let msg = format!("weft-ssh: {why}\r\n");
            session.extended_data(channel, 1, msg.into_bytes())?;
            session.channel_failure(channel)
        };
        let Some(login) = self.login.as_ref() else {
            return session.channel_failure(channel);
        };
        if !self.sessions.contains_key(&channel) {
            return session.channel_failure(channel);
        }
        if !self.shared.x11_forwarding.load(Ordering::Relaxed) {
            return refuse(session, X11Error::Disabled);
        }
        if self.x11.contains_key(&channel) {
            return refuse(session, X11Error::Duplicate);
        }
        let req = match X11Request::parse(single_connection, protocol, cookie, screen) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(conn = self.conn_id, error = %e, "x11-req refused");
                return refuse(session, e);
            }
        };
        let ctx = self.fwd_ctx(session, login.audit.clone());
        let user = login.user.clone();
        let xauth = self.shared.config.xauth_program.clone();
        match x11::start(&req, &user, &xauth, ctx).await {
            Ok(disp) => {
                // Audit line (info on purpose; see `server` module docs).
                tracing::info!(conn = self.conn_id, peer_user = %login.audit.peer_user,
                    peer_node = %login.audit.peer_node, local_user = %login.audit.local_user,
                    what = "x11", display = disp.number(), "ssh session started");
                self.x11.insert(channel, disp);
                session.channel_success(channel)
            }
            Err(e) => {
                tracing::warn!(conn = self.conn_id, error = %e, "cannot set up X11 forwarding");
                refuse(session, e)
            }
        }
    }

    /// `streamlocal-forward@openssh.com`: binds `path` as the user and
    /// forwards each connection to it.
    pub(super) async fn unix_forward(
        &mut self,
        path: &str,
        session: &mut Session,
    ) -> Result<bool, russh::Error> {
        let (Some(grant), Some(login)) = (self.grant(), self.login.as_ref()) else {
            return Ok(false);
        };
        let held = self.remote_forwards.len() + self.unix_forwards.len();
        if !grant.allow_remote_port_forwarding
            || held >= self.shared.config.max_remote_forwards_per_conn
            || self.unix_forwards.contains_key(path)
        {
            return Ok(false);
        }
        let user = (*login.user).clone();
        let unlink = self.shared.config.streamlocal_bind_unlink;
        let listener = match streamlocal::bind(&user, path, unlink).await {
            Ok(l) => l,
            Err(e) => {
                tracing::info!(conn = self.conn_id, local_user = %login.audit.local_user,
                    error = %e, "streamlocal-forward refused");
                return Ok(false);
            }
        };
        let stop = self.closed.child_token();
        let ctx = self.fwd_ctx(session, login.audit.clone());
        // Audit line (info on purpose; see `server` module docs).
        tracing::info!(conn = self.conn_id, peer_user = %login.audit.peer_user, peer_node = %login.audit.peer_node,
            local_user = %login.audit.local_user, what = "forward-remote-unix", "ssh session started");
        self.shared.tracker.spawn(streamlocal::serve_remote(
            listener,
            path.to_owned(),
            user,
            ctx,
            stop.clone(),
        ));
        self.unix_forwards.insert(path.to_owned(), stop);
        Ok(true)
    }

    /// `cancel-streamlocal-forward@openssh.com`.
    pub(super) fn cancel_unix_forward(&mut self, path: &str) -> bool {
        match self.unix_forwards.remove(path) {
            Some(stop) => {
                stop.cancel();
                true
            }
            None => false,
        }
    }

    /// A `direct-streamlocal@openssh.com` channel: connects to `path` as
    /// the user and bridges it.
    pub(super) async fn open_unix_direct(
        &mut self,
        channel: Channel<Msg>,
        path: &str,
        reply: ChannelOpenHandle,
    ) {
        let (Some(grant), Some(login)) = (self.grant(), self.login.as_ref()) else {
            return;
        };
        if !grant.allow_local_port_forwarding {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return;
        }
        let Ok(permit) = self.channel_slots.clone().try_acquire_owned() else {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return;
        };
        let user = (*login.user).clone();
        let path = path.to_owned();
        let cap = self.shared.config.channel_input_buffer;
        let closed = self.closed.clone();
        let audit = login.audit.clone();
        // Connect off the session loop, like direct-tcpip.
        self.shared.tracker.spawn(async move {
            let stream = tokio::select! {
                r = streamlocal::connect(&user, &path) => r,
                () = closed.cancelled() => return,
            };
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    tracing::info!(conn = audit.conn_id, local_user = %audit.local_user, error = %e,
                        "direct-streamlocal refused");
                    reply.reject(ChannelOpenFailure::ConnectFailed).await;
                    return;
                }
            };
            reply.accept().await;
            let (read, write) = channel.split();
            // Audit line (info on purpose; see `server` module docs).
            tracing::info!(conn = audit.conn_id, peer_user = %audit.peer_user, peer_node = %audit.peer_node,
                local_user = %audit.local_user, what = "forward-local-unix", "ssh session started");
            let sent = bridge(stream, read, write, cap, closed, Some(permit)).await;
            tracing::info!(conn = audit.conn_id, peer_user = %audit.peer_user, peer_node = %audit.peer_node,
                local_user = %audit.local_user, what = "forward-local-unix", bytes_out = sent, "ssh session ended");
        });
    }
}
