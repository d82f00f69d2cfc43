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
        let recorder = login
            .grant
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recorder;
        let recording = match recorder {
            None => None,
            Some(spec) => {
                let opened = match &program {
                    Program::Sftp(..) => Err(
                        "SFTP sessions cannot be recorded (use ssh with a command instead)"
                            .to_owned(),
                    ),
                    _ => open_recording(
                        &Who {
                            shared: &self.shared,
                            identity: &self.identity,
                            peer_addr: self.peer_addr,
                            conn_id: self.conn_id,
                            ssh_user: &self.ssh_user,
                            local_user: &user.name,
                        },
                        spec,
                        &program,
                        pty,
                        &env,
                    ),
                };
                match opened {
                    Ok(rec) => Some(rec),
                    Err(why) if spec.enforce => {
                        let msg = crate::recording::refusal("it cannot be recorded", &why);
                        tracing::warn!(conn = self.conn_id, what, reason = %why, "ssh session refused: cannot record it");
                        // Accepted, then ended with the reason and status 1: OpenSSH
                        // prints stderr that comes after the reply, not before a failure.
                        tokio::spawn(async move {
                            let _ = write.extended_data_bytes(1, format!("{msg}\r\n")).await;
                            let _ = write.exit_status(1).await;
                            let _ = write.eof().await;
                            let _ = write.close().await;
                        });
                        return session.channel_success(channel);
                    }
                    Err(why) => {
                        tracing::warn!(conn = self.conn_id, what, reason = %why, "ssh session not recorded (the rule does not enforce recording)");
                        None
                    }
                }
            }
        };
        chan.recording = recording.clone();
        let spawned = match session::spawn(&program, user, &env, pty) {
            Ok(s) => s,
            Err(e) => {
                if let Some(rec) = &recording {
                    rec.finish(crate::server::now().1);
                }
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
            recording,
        );
        self.shared.tracker.spawn(task);
        session.channel_success(channel)
    }
}

/// Who a session is for, borrowed from the handler next to its sessions.
struct Who<'a> {
    shared: &'a Shared,
    identity: &'a Result<PeerIdentity, Unidentified>,
    peer_addr: SocketAddr,
    conn_id: u64,
    ssh_user: &'a str,
    local_user: &'a str,
}

/// Creates the recording of a session about to start as `program`.
fn open_recording(
    who: &Who<'_>,
    spec: weft_types::filter::SshRecorder,
    program: &Program,
    pty: Option<&PtyReq>,
    env: &[(String, String)],
) -> Result<Arc<crate::recording::Recording>, String> {
    use crate::recording::{Recording, RecordingMeta, cast::CastHeader, new_id};
    let peer = who
        .identity
        .clone()
        .unwrap_or_else(|_| unknown_peer(who.peer_addr));
    let command = match program {
        Program::Exec(c) => Some(c.to_string_lossy().into_owned()),
        _ => None,
    };
    let (instant, unix_ms) = now();
    let meta = RecordingMeta {
        id: new_id(),
        conn_id: who.conn_id,
        src_user: peer.principal(),
        src_node_id: peer.node_id.clone(),
        src_node: peer.node_name.clone(),
        src_addr: peer.addr.to_string(),
        ssh_user: who.ssh_user.to_owned(),
        local_user: who.local_user.to_owned(),
        kind: program.kind().to_owned(),
        command: command.clone(),
        input: spec.input,
        started_ms: unix_ms,
        ended_ms: None,
        failure: None,
    };
    let env_of = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let header = CastHeader {
        version: 2,
        width: pty.map_or(80, |p| p.cols),
        height: pty.map_or(24, |p| p.rows),
        timestamp: unix_ms.div_euclid(1000),
        command,
        title: Some(format!(
            "{} from {} as {}",
            meta.src_user, meta.src_node, meta.local_user
        )),
        env: ["TERM", "SHELL"]
            .into_iter()
            .filter_map(|k| env_of(k).map(|v| (k.to_owned(), v)))
            .collect(),
    };
    let dir = &who.shared.config.recordings_dir;
    let sink = who.shared.config.recording_sink.clone();
    Recording::create(dir, spec, meta, &header, instant, sink).map_err(|e| e.to_string())
}
