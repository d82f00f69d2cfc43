//! Authentication: the policy verdict for a login, the banners that carry
//! refusals and `check` URLs, and the keyboard-interactive round that holds a
//! checked login.

use super::*;

pub(super) type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = CheckOutcome> + Send>>;

/// What the next keyboard-interactive round does.
pub(super) enum Kbd {
    Idle,
    /// A `check` URL was shown; the next response waits for the outcome.
    Checking {
        pending: Pending,
        user: Arc<LocalUser>,
        grant: Grant,
        ssh_user: String,
    },
}

/// The result of evaluating one login attempt.
pub(super) enum Verdict {
    Allow {
        user: Arc<LocalUser>,
        grant: Grant,
    },
    Refuse(String),
    Hold {
        user: Arc<LocalUser>,
        grant: Grant,
        period: std::time::Duration,
    },
}

impl ConnHandler {
    /// Evaluates a login attempt (see the free [`decide`]).
    pub(super) fn decide(
        &self,
        ssh_user: &str,
    ) -> impl std::future::Future<Output = Verdict> + Send + 'static {
        decide(
            self.shared.clone(),
            self.identity.clone(),
            ssh_user.to_owned(),
        )
    }

    /// Records an accepted login for `auth_succeeded` and the sessions.
    pub(super) fn accept_login(
        &mut self,
        ssh_user: &str,
        user: Arc<LocalUser>,
        grant: Grant,
    ) -> Auth {
        let peer = self
            .identity
            .clone()
            .unwrap_or_else(|_| unknown_peer(self.peer_addr));
        let audit = Audit {
            conn_id: self.conn_id,
            peer_user: peer.principal(),
            peer_node: peer.node_name.clone(),
            local_user: user.name.clone(),
        };
        self.login = Some(Login {
            user,
            grant: Arc::new(Mutex::new(grant)),
            audit,
        });
        self.ssh_user = ssh_user.to_owned();
        Auth::Accept
    }

    /// Logs a refused login once per connection (clients retry methods).
    pub(super) fn log_refusal(&mut self, message: &str) {
        if self.refusal_logged {
            return;
        }
        self.refusal_logged = true;
        crate::audit::login(&crate::audit::LoginAttempt {
            conn: self.conn_id,
            peer: self.identity.as_ref().ok(),
            src_addr: self.peer_addr,
            ssh_user: &self.ssh_user,
            local_user: None,
            result: crate::audit::LoginResult::Refused,
            reason: Some(message),
        });
    }

    /// Refuses the login: the reason goes out as a userauth banner in front
    /// of a failure whose only method is `none`, which no client offers
    /// again, so every OpenSSH client prints the reason (BatchMode too) and
    /// gives up at once with `Permission denied (none).` (An empty list would
    /// not do: OpenSSH reads it as "try all your methods".) Shown and logged
    /// once per connection.
    pub(super) fn refuse(&mut self, message: &str) -> Auth {
        self.log_refusal(message);
        if self.refusals == 0 {
            self.banner = Some(format!("{}\n", refusal_line(message)));
        }
        self.refusals += 1;
        self.kbd = Kbd::Idle;
        Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::None][..])),
            partial_success: false,
        }
    }

    /// Holds a login under a `check` rule whose approval control does not
    /// have yet: the URL goes out as a userauth banner (once per connection),
    /// and the next keyboard-interactive round waits for the outcome. A
    /// client that stops here (BatchMode) leaves the check running for
    /// [`SshConfig::check_timeout`](crate::SshConfig::check_timeout) (see
    /// `Drop`), so approving at the URL lets its next connection in.
    pub(super) fn hold(
        &mut self,
        ssh_user: &str,
        local: Arc<LocalUser>,
        grant: Grant,
        pending: crate::authz::PendingCheck,
    ) {
        self.banner = Some(check_prompt(ssh_user, &pending.url));
        self.kbd = Kbd::Checking {
            pending: pending.outcome,
            user: local,
            grant,
            ssh_user: ssh_user.to_owned(),
        };
    }
}

/// What a held login shows: why, where to approve, and what a client in
/// BatchMode (which ends at this point) does next.
pub(super) fn check_prompt(ssh_user: &str, url: &str) -> String {
    let flat = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    };
    format!(
        "weft: tailnet policy requires you to re-authenticate before logging in as {}.\n\
         To continue, visit: {}\n\
         (With BatchMode=yes the login ends here: approve there, then connect again.)\n",
        flat(ssh_user),
        flat(url)
    )
}

/// Returns the one line a refused client sees: `weft: <reason>`, with any
/// line breaks or control characters of the reason flattened.
pub(super) fn refusal_line(message: &str) -> String {
    let flat: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("weft: {}", flat.trim())
}

/// Evaluates a login attempt: identity, policy, local account, approvals.
/// Takes owned inputs so the handler (which holds a non-`Sync` pending check)
/// is not borrowed across the passwd lookup.
async fn decide(
    shared: Arc<Shared>,
    identity: Result<PeerIdentity, Unidentified>,
    ssh_user: String,
) -> Verdict {
    let ssh_user = ssh_user.as_str();
    if ssh_user.len() > shared.config.max_username_len {
        return Verdict::Refuse("login name too long".to_owned());
    }
    let peer = match &identity {
        Ok(peer) => peer,
        Err(why) => return Verdict::Refuse(why.to_string()),
    };
    let (_, unix_ms) = now();
    // The evaluator may consult passwd: run it on a blocking thread.
    let (authz, who, login) = (shared.authorizer(), peer.clone(), ssh_user.to_owned());
    let evaluated = tokio::task::spawn_blocking(move || {
        authz.authorize(&who, &login, unix_ms, &|name: &str| {
            LocalUser::lookup(name).ok().map(|u| u.uid)
        })
    })
    .await;
    let Ok(decision) = evaluated else {
        return Verdict::Refuse("policy evaluation failed".to_owned());
    };
    let (grant, period) = match decision {
        Decision::Reject { message } => return Verdict::Refuse(message),
        Decision::Accept(g) => (g, None),
        Decision::Check { grant, period } => (grant, Some(period)),
    };
    let name = grant.local_user.clone();
    let user = match tokio::task::spawn_blocking(move || LocalUser::lookup(&name)).await {
        Ok(Ok(u)) => Arc::new(u),
        Ok(Err(e)) => return Verdict::Refuse(e.to_string()),
        Err(_) => return Verdict::Refuse("local user lookup failed".to_owned()),
    };
    // Whatever the policy said: a program on this node logs in only as the
    // account that opened the connection (or anyone, if that was root).
    if let Err(message) = peer.may_log_in_as(ssh_user, user.uid) {
        return Verdict::Refuse(message);
    }
    if grant.refuse_root && user.uid == 0 {
        let Decision::Reject { message } = Decision::no_matching_rule(ssh_user) else {
            return Verdict::Refuse("refused".to_owned());
        };
        return Verdict::Refuse(message);
    }
    // A rule that must record refuses here, with the reason, when this node
    // cannot write recordings at all (the session start checks again).
    if grant.recorder.is_some_and(|r| r.enforce) {
        let dir = shared.config.recordings_dir.clone();
        let probed = tokio::task::spawn_blocking(move || crate::recording::probe_dir(&dir)).await;
        let why = match probed {
            Ok(Ok(())) => None,
            Ok(Err(why)) => Some(why),
            Err(_) => Some("the check failed".to_owned()),
        };
        if let Some(why) = why {
            tracing::warn!(reason = %why, "ssh login refused: its rule requires recording and none can be written");
            return Verdict::Refuse(format!(
                "tailnet policy requires this SSH session to be recorded, but this node cannot \
                 write recordings ({why}); ask the node's admin to fix the recordings directory, \
                 or a tailnet admin about the rule's \"recorder\""
            ));
        }
    }
    match period {
        None => Verdict::Allow { user, grant },
        Some(period) => Verdict::Hold {
            user,
            grant,
            period,
        },
    }
}
