//! The audit line of every SSH login attempt, accepted or refused.
//!
//! One line per attempt on the destination node, logged at `info` under the
//! tracing target `weft_ssh::audit` (so `RUST_LOG=weft_ssh::audit=info`
//! selects exactly these), with the fields
//! `conn` (the connection id, which the session lines and the recording's
//! metadata carry too), `result` (`accepted` / `refused`), `user` (the
//! tailnet user, a tagged node's tags, or `local uid N`), `src_node`,
//! `src_addr`, `ssh_user` (the login asked for), `local_user` (the account
//! the session runs as; empty when refused) and `reason` (why it was
//! refused; empty when accepted).
//!
//! Audit lines name users above `debug` on purpose: they are the record an
//! operator keeps. The handler calls [`login`] from the two places where the
//! verdict becomes final: `auth_succeeded` and the connection's first
//! refusal.

use std::net::SocketAddr;

use crate::authz::PeerIdentity;

/// The verdict on a login attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginResult {
    /// The session may start.
    Accepted,
    /// The client was turned away.
    Refused,
}

impl LoginResult {
    /// Returns the audit name (`accepted`, `refused`).
    pub fn as_str(self) -> &'static str {
        match self {
            LoginResult::Accepted => "accepted",
            LoginResult::Refused => "refused",
        }
    }
}

/// One login attempt, as the audit line shows it.
#[derive(Debug, Clone, Copy)]
pub struct LoginAttempt<'a> {
    /// The connection id.
    pub conn: u64,
    /// Who connected, when known.
    pub peer: Option<&'a PeerIdentity>,
    /// The client's address and port.
    pub src_addr: SocketAddr,
    /// The login name the client asked for.
    pub ssh_user: &'a str,
    /// The account the session runs as (accepted logins).
    pub local_user: Option<&'a str>,
    /// Accepted or refused.
    pub result: LoginResult,
    /// Why it was refused.
    pub reason: Option<&'a str>,
}

/// Logs the audit line of `a` (target `weft_ssh::audit`).
pub fn login(a: &LoginAttempt<'_>) {
    let user = a.peer.map(PeerIdentity::principal).unwrap_or_default();
    let src_node = a.peer.map(|p| p.node_name.as_str()).unwrap_or_default();
    let client_uid = a.peer.and_then(PeerIdentity::client_uid);
    tracing::info!(
        target: "weft_ssh::audit",
        conn = a.conn,
        result = a.result.as_str(),
        user = %user,
        src_node = %src_node,
        src_addr = %a.src_addr.ip(),
        client_uid = ?client_uid,
        ssh_user = %a.ssh_user,
        local_user = %a.local_user.unwrap_or_default(),
        reason = %a.reason.unwrap_or_default(),
        "ssh login {}",
        a.result.as_str()
    );
}
