//! Starting a shell, command or SFTP server on a session channel.

use super::*;

impl ConnHandler {
    /// Starts `program` on session channel `channel`.
    pub(super) fn start(
        &mut self,
        channel: ChannelId,
        program: Program,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let (Some(login), Some(chan)) = (self.login.as_ref(), self.sessions.get_mut(&channel))
        else {
            return session.channel_failure(channel);
        };
        let Some(write) = chan.write.take() else {
            // A second shell/exec on the same channel.
            return session.channel_failure(channel);
        };
        let user = &login.user;
        let mut env = vec![
            ("USER".to_owned(), user.name.clone()),
            ("LOGNAME".to_owned(), user.name.clone()),
            ("HOME".to_owned(), user.home.to_string_lossy().into_owned()),
            (
                "SHELL".to_owned(),
                user.shell.to_string_lossy().into_owned(),
            ),
            ("PATH".to_owned(), user.default_path().to_owned()),
            ("MAIL".to_owned(), format!("/var/mail/{}", user.name)),
            (
                "SSH_CLIENT".to_owned(),
                format!(
                    "{} {} {}",
                    self.peer_addr.ip(),
                    self.peer_addr.port(),
                    self.local_addr.port()
                ),
            ),
            (
                "SSH_CONNECTION".to_owned(),
                format!(
                    "{} {} {} {}",
                    self.peer_addr.ip(),
                    self.peer_addr.port(),
                    self.local_addr.ip(),
                    self.local_addr.port()
                ),
            ),
        ];
        if let Some(pty) = &chan.pty {
            env.push(("TERM".to_owned(), pty.term.clone()));
        }
        if let Some(x11) = self.x11.get(&channel) {
            env.push(("DISPLAY".to_owned(), x11.display_env()));
        }
        if let Some(agent) = &self.agent {
            env.push((
                "SSH_AUTH_SOCK".to_owned(),
                agent.socket().to_string_lossy().into_owned(),
            ));
        }
        for (k, v) in &chan.env {
            if !env.iter().any(|(e, _)| e == k) {
                env.push((k.clone(), v.clone()));
            }
        }
        let pty = if matches!(program, Program::Sftp(..)) {
            None
        } else {
            chan.pty.as_ref()
        };
        let what = program.kind();
        let spawned = match session::spawn(&program, user, &env, pty) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(conn = self.conn_id, what, error = %e, "cannot start ssh session");
                let handle = session.handle();
                let msg = format!("weft-ssh: cannot start {what} as {}: {e}\r\n", user.name);
                chan.write = Some(write);
                tokio::spawn(async move {
                    let _ = handle.extended_data(channel, 1, msg.into_bytes()).await;
                });
                return session.channel_failure(channel);
            }
        };
        chan.pgid = Some(spawned.pgid());
        chan.resize = spawned.resize_handle();
        // Audit line (info on purpose; see `server` module docs).
        tracing::info!(
            conn = self.conn_id,
            peer_user = %login.audit.peer_user,
            peer_node = %login.audit.peer_node,
            local_user = %login.audit.local_user,
            what,
            pty = pty.is_some(),
            "ssh session started"
        );
        let task = session::run(
            spawned,
            chan.input.clone(),
            write,
            session.handle(),
            channel,
            chan.cancel.clone(),
            what,
            login.audit.clone(),
        );
        self.shared.tracker.spawn(task);
        session.channel_success(channel)
    }
}
