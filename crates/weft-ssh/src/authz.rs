//! The two seams between the SSH server and the rest of the node: who is
//! connecting and may they log in ([`Authorizer`]), and has a `check` rule's
//! re-authentication happened yet ([`CheckHook`]).
//!
//! weftd implements both on top of its netmap, the compiled SSH policy and the
//! control client. This module holds no policy logic of its own: it only
//! describes the questions the server asks and the answers it understands.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

/// The tailnet identity behind a connection's source address.
///
/// The WireGuard layer has already authenticated the source address, so the
/// server trusts this identity without any SSH-level credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The peer's tailnet address the connection came from.
    pub addr: IpAddr,
    /// Stable node id as control knows it (for logs and the check cache).
    pub node_id: String,
    /// The node's name (for logs and messages).
    pub node_name: String,
    /// The login of the user who owns the node, or `None` for a tagged node.
    pub user_login: Option<String>,
    /// The node's tags (`tag:ci`), empty for a user-owned node.
    pub tags: Vec<String>,
}

impl PeerIdentity {
    /// Returns the principal to name in logs and messages: the user login, or
    /// the tags of a tagged node.
    pub fn principal(&self) -> String {
        match &self.user_login {
            Some(login) => login.clone(),
            None if self.tags.is_empty() => "(untagged node)".to_owned(),
            None => self.tags.join(","),
        }
    }
}

/// What an accepted login may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The local account the session runs as.
    pub local_user: String,
    /// Refuse the login if `local_user` resolves to uid 0. This is how
    /// `autogroup:nonroot` (`"*" → "="`) is expressed: the policy engine is pure
    /// and cannot look up passwd, so the server checks the uid.
    pub refuse_root: bool,
    /// `ssh -A`: the per-session agent socket.
    pub allow_agent_forwarding: bool,
    /// `ssh -L` and `ssh -W` (`direct-tcpip` channels).
    pub allow_local_port_forwarding: bool,
    /// `ssh -R` (`tcpip-forward` requests).
    pub allow_remote_port_forwarding: bool,
    /// Glob patterns (`*`, `?`) of environment variable names the client may
    /// set with `SendEnv`/`SetEnv`. Empty means [`DEFAULT_ACCEPT_ENV`].
    pub accept_env: Vec<String>,
}

impl Grant {
    /// Returns a grant for `local_user` with every forwarding allowed and the
    /// default environment allowlist, the way an `accept` rule compiles.
    pub fn new(local_user: impl Into<String>) -> Self {
        Grant {
            local_user: local_user.into(),
            refuse_root: false,
            allow_agent_forwarding: true,
            allow_local_port_forwarding: true,
            allow_remote_port_forwarding: true,
            accept_env: Vec::new(),
        }
    }

    /// Returns whether the client may set the environment variable `name`.
    pub fn accepts_env(&self, name: &str) -> bool {
        if self.accept_env.is_empty() {
            DEFAULT_ACCEPT_ENV.iter().any(|p| glob_match(p, name))
        } else {
            self.accept_env.iter().any(|p| glob_match(p, name))
        }
    }
}

/// Variables a client may send when the policy names none (OpenSSH's stock
/// Debian `AcceptEnv LANG LC_*`).
pub const DEFAULT_ACCEPT_ENV: &[&str] = &["LANG", "LC_*"];

/// The policy's answer for one (identity, requested login) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Proceed at once.
    Accept(Grant),
    /// Proceed only once the user has re-authenticated at the control server
    /// within `period` (`checkPeriod`; zero means every time).
    Check {
        /// What the login may do once approved.
        grant: Grant,
        /// How long an approval stays good for further logins.
        period: Duration,
    },
    /// Refuse, showing `message` to the client.
    Reject {
        /// Shown to the user before the connection is refused.
        message: String,
    },
}

impl Decision {
    /// Returns the refusal for a login that no rule matches, with the message
    /// users see ("tailnet policy does not permit you to SSH to this node as root").
    pub fn no_matching_rule(ssh_user: &str) -> Self {
        Decision::Reject {
            message: format!(
                "tailnet policy does not permit you to SSH to this node as {ssh_user}"
            ),
        }
    }

    /// Returns the grant of an accepting decision.
    pub fn grant(&self) -> Option<&Grant> {
        match self {
            Decision::Accept(g) | Decision::Check { grant: g, .. } => Some(g),
            Decision::Reject { .. } => None,
        }
    }
}

/// Maps connections to tailnet identities and evaluates the SSH policy.
///
/// `identify` is called on the async runtime and must not block (it consults
/// an in-memory netmap snapshot). `authorize` runs on a blocking thread: it
/// gets `uid_of`, a passwd lookup (`None` = no such account), so an
/// evaluator like `weft_policy::authorize_ssh` can skip rules whose local
/// user is missing or is root under "same name, never root". A new netmap is
/// installed by handing the server a new authorizer
/// ([`SshServer::update_policy`](crate::SshServer::update_policy)).
pub trait Authorizer: Send + Sync + 'static {
    /// Returns the identity behind the tailnet source address `src`, or `None`
    /// if the address belongs to no known peer.
    fn identify(&self, src: IpAddr) -> Option<PeerIdentity>;

    /// Evaluates the SSH policy for `peer` logging in as `ssh_user` at
    /// `now_unix_ms` (rules can expire). First matching rule wins; no match is
    /// [`Decision::no_matching_rule`]. May call `uid_of` for local accounts.
    fn authorize(
        &self,
        peer: &PeerIdentity,
        ssh_user: &str,
        now_unix_ms: i64,
        uid_of: &dyn Fn(&str) -> Option<u32>,
    ) -> Decision;
}

/// A login held by a `check` rule, as handed to the [`CheckHook`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRequest {
    /// Who is connecting.
    pub peer: PeerIdentity,
    /// The login name the client asked for.
    pub ssh_user: String,
    /// The local account the session would run as.
    pub local_user: String,
    /// The rule's `checkPeriod` (zero: every login asks): control accepts at
    /// once if the user approved this recently, and remembers a new approval
    /// this long.
    pub period: Duration,
}

/// The final answer to a held login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The user re-authenticated; the login proceeds.
    Approved,
    /// The control server (or the user) refused; `message` is shown.
    Denied {
        /// Shown to the user before the connection is refused.
        message: String,
    },
}

/// A started re-authentication: the URL to show and the eventual answer.
pub struct PendingCheck {
    /// Where the user re-authenticates; shown to the SSH client.
    pub url: String,
    /// Resolves once control has decided. The server applies its own timeout
    /// ([`SshConfig::check_timeout`](crate::SshConfig::check_timeout)).
    pub outcome: Pin<Box<dyn Future<Output = CheckOutcome> + Send>>,
}

impl std::fmt::Debug for PendingCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingCheck")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Starts the control-side re-authentication that `check` rules require.
pub trait CheckHook: Send + Sync + 'static {
    /// Starts a re-authentication for `req` and returns the URL to show plus a
    /// future for the outcome. Called only when no approval for this peer and
    /// login is fresh enough (the server remembers approvals for `period`).
    fn start(&self, req: CheckRequest) -> PendingCheck;
}

/// Matches `name` against a glob `pattern` with `*` (any run) and `?` (one
/// character), the syntax of OpenSSH's `AcceptEnv` and Tailscale's `acceptEnv`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matcher with one backtrack point for the last `*`.
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == '?' || Some(&c) == n.get(ni) => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_accept_env() {
        assert!(glob_match("LC_*", "LC_ALL"));
        assert!(glob_match("LC_*", "LC_"));
        assert!(!glob_match("LC_*", "LANG"));
        assert!(glob_match("LANG", "LANG"));
        assert!(!glob_match("LANG", "LANGUAGE"));
        assert!(glob_match("*", "ANYTHING"));
        assert!(glob_match("A?C", "ABC"));
        assert!(!glob_match("A?C", "AC"));
        assert!(glob_match("*_X*", "A_B_X_Y"));
    }

    #[test]
    fn default_env_allowlist_is_lang_and_lc() {
        let g = Grant::new("alice");
        assert!(g.accepts_env("LANG"));
        assert!(g.accepts_env("LC_TIME"));
        assert!(!g.accepts_env("LD_PRELOAD"));
        assert!(!g.accepts_env("PATH"));
        let g = Grant {
            accept_env: vec!["GIT_*".into()],
            ..Grant::new("alice")
        };
        assert!(g.accepts_env("GIT_AUTHOR_NAME"));
        assert!(!g.accepts_env("LANG"));
    }

    #[test]
    fn refusal_message_names_the_login() {
        let Decision::Reject { message } = Decision::no_matching_rule("root") else {
            panic!("not a rejection");
        };
        assert_eq!(
            message,
            "tailnet policy does not permit you to SSH to this node as root"
        );
    }
}
