//! The two seams between the SSH server and the rest of the node: who is
//! connecting and may they log in ([`Authorizer`]), and has a `check` rule's
//! re-authentication happened yet ([`CheckHook`]).
//!
//! weftd implements both on top of its netmap, the compiled SSH policy and the
//! control client. This module holds no policy logic of its own: it describes
//! the questions the server asks and the answers it understands, plus the one
//! rule the server enforces whatever the policy says: a connection opened by
//! a program on the node itself ([`Origin::LocalProcess`]) logs in only as the
//! local account that opened it, unless that account is root
//! ([`PeerIdentity::may_log_in_as`]).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

/// Where a connection comes from, as far as the node can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// Through WireGuard from a peer: the source address was authenticated by
    /// the peer's key, so it stands for the peer's node and user.
    Peer,
    /// From a program on this node: the source is one of the node's own
    /// addresses, so the packets never passed WireGuard and the address says
    /// nothing about who sent them. The kernel says which local account owns
    /// the client socket: `uid`.
    LocalProcess {
        /// The uid owning the client's socket.
        uid: u32,
    },
}

/// The identity behind a connection: a tailnet node (and its user or tags),
/// and whether the connection came from a peer or from this node itself.
///
/// For [`Origin::Peer`] the WireGuard layer has already authenticated the
/// source address, so the server trusts this identity without any SSH-level
/// credential. For [`Origin::LocalProcess`] the node fields describe this
/// node (the policy is evaluated with its identity), and the login is
/// further limited to the local account that opened the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The tailnet address the connection came from.
    pub addr: IpAddr,
    /// Whether a peer or a local program opened the connection.
    pub origin: Origin,
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
    /// Returns the principal to name in logs and messages: `local uid N` for
    /// a connection from this node, else the user login, or the tags of a
    /// tagged node.
    pub fn principal(&self) -> String {
        match (&self.origin, &self.user_login) {
            (Origin::LocalProcess { uid }, _) => format!("local uid {uid}"),
            (Origin::Peer, Some(login)) => login.clone(),
            (Origin::Peer, None) if self.tags.is_empty() => "(untagged node)".to_owned(),
            (Origin::Peer, None) => self.tags.join(","),
        }
    }

    /// Returns the uid that opened the connection, for a connection from
    /// this node itself.
    pub fn client_uid(&self) -> Option<u32> {
        match self.origin {
            Origin::LocalProcess { uid } => Some(uid),
            Origin::Peer => None,
        }
    }

    /// Checks the one rule the server applies on top of the policy: a
    /// connection from a program on this node may log in only as the local
    /// account that opened it (`target_uid`, the account `ssh_user` maps
    /// to), unless it was opened by root. A peer's login is up to the policy.
    ///
    /// # Errors
    /// The refusal to show the client, saying why and what to do instead.
    pub fn may_log_in_as(&self, ssh_user: &str, target_uid: u32) -> Result<(), String> {
        match self.origin {
            Origin::Peer => Ok(()),
            Origin::LocalProcess { uid } if uid == 0 || uid == target_uid => Ok(()),
            Origin::LocalProcess { uid } => Err(format!(
                "this connection comes from local uid {uid} on this node itself, and such a \
                 connection may log in only as its own account, not as {ssh_user}; \
                 use sudo or su to act as another user here"
            )),
        }
    }
}

/// Why a connection has no identity; shown to the client and logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unidentified {
    /// The source address belongs to no node the netmap knows (or to one
    /// that is expired or otherwise unusable).
    #[error("this node does not know the tailnet address {0}")]
    UnknownAddress(IpAddr),
    /// The connection comes from this node's own address, and the kernel
    /// could not say which local account opened it.
    #[error(
        "this connection comes from a program on this node itself, and weftd cannot tell \
         which local account opened it ({reason}); log in from another node, or use sudo or su here"
    )]
    LocalOwnerUnknown {
        /// Why the lookup failed.
        reason: String,
    },
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
    /// Record shell and exec sessions (the rule's `recorder`); `None`: no
    /// recording. See [`crate::recording`].
    pub recorder: Option<weft_types::filter::SshRecorder>,
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
            recorder: None,
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
/// `identify` runs on a blocking thread once per connection (it may ask the
/// kernel who owns a local socket). `authorize` runs on a blocking thread: it
/// gets `uid_of`, a passwd lookup (`None` = no such account), so an
/// evaluator like `weft_policy::authorize_ssh` can skip rules whose local
/// user is missing or is root under "same name, never root". A new netmap is
/// installed by handing the server a new authorizer
/// ([`SshServer::update_policy`](crate::SshServer::update_policy)).
pub trait Authorizer: Send + Sync + 'static {
    /// Returns the identity behind the connection from `peer` (the client's
    /// address and port) to `local` (our tailnet address and port).
    ///
    /// # Errors
    /// Why the connection has no identity; the login is refused with it.
    fn identify(&self, peer: SocketAddr, local: SocketAddr) -> Result<PeerIdentity, Unidentified>;

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
    /// future for the outcome. Called for every login under a `check` rule:
    /// the server keeps no approvals itself; control answers at once when it
    /// holds a fresh one, and the URL is shown only when no answer came within
    /// a second.
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

    fn identity(origin: Origin) -> PeerIdentity {
        PeerIdentity {
            addr: "100.64.0.2".parse().unwrap(),
            origin,
            node_id: "n2".into(),
            node_name: "me.example.weft.internal".into(),
            user_login: Some("alice@example.com".into()),
            tags: Vec::new(),
        }
    }

    #[test]
    fn a_local_process_logs_in_only_as_itself_unless_it_is_root() {
        let local = identity(Origin::LocalProcess { uid: 1001 });
        assert_eq!(local.may_log_in_as("deploy", 1001), Ok(()));
        let refused = local.may_log_in_as("root", 0).unwrap_err();
        assert!(
            refused.contains("local uid 1001") && refused.contains("not as root"),
            "{refused}"
        );
        assert!(local.may_log_in_as("bob", 1002).is_err());
        let root = identity(Origin::LocalProcess { uid: 0 });
        assert_eq!(root.may_log_in_as("root", 0), Ok(()));
        assert_eq!(root.may_log_in_as("bob", 1002), Ok(()));
        // A peer's logins are the policy's business alone.
        assert_eq!(identity(Origin::Peer).may_log_in_as("root", 0), Ok(()));
    }

    #[test]
    fn logs_name_the_local_uid_not_the_nodes_owner() {
        let local = identity(Origin::LocalProcess { uid: 1001 });
        assert_eq!(local.principal(), "local uid 1001");
        assert_eq!(local.client_uid(), Some(1001));
        let peer = identity(Origin::Peer);
        assert_eq!(peer.principal(), "alice@example.com");
        assert_eq!(peer.client_uid(), None);
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
