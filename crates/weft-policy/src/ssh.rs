//! Judging one SSH login on a node, from its compiled [`SshPolicy`].
//!
//! The node's SSH server calls [`authorize_ssh`] with the connection's
//! source address, the login the client asked for, and a lookup into the
//! local user database that the *caller* performs (this crate never reads
//! passwd). Rules are tried in order; the first rule whose principals cover
//! the source and whose users map the login to an existing local account
//! decides. A mapping to "same name but never uid 0" (`autogroup:nonroot`,
//! `localpart:`) refuses any uid-0 account, whatever its name.

use std::fmt;
use std::net::IpAddr;

use weft_types::filter::{CheckPeriod, LocalUser, SSH_ANY_USER, SshAction, SshMode, SshPolicy};

/// What the caller knows about a local account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalAccount {
    /// The account's uid.
    pub uid: u32,
}

/// The decision on one login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshDecision {
    /// Start the session as `local_user`.
    Accept {
        /// The local account to run as.
        local_user: String,
        /// Index of the deciding rule in [`SshPolicy::rules`].
        rule: usize,
        /// The rule's action (forwarding permissions).
        action: SshAction,
    },
    /// Ask control whether the user authenticated within `period`; on
    /// success, start the session as `local_user`.
    Check {
        /// The local account to run as.
        local_user: String,
        /// How recent the authentication must be.
        period: CheckPeriod,
        /// Index of the deciding rule.
        rule: usize,
        /// The rule's action (forwarding permissions).
        action: SshAction,
    },
    /// Refuse.
    Reject(RejectReason),
}

/// Why a login was refused, most specific first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectReason {
    /// No rule covers the source address.
    SourceNotAllowed,
    /// Rules cover the source but none maps the requested login.
    LoginNotAllowed,
    /// The only mappings found were "same name, never root", and the
    /// requested account has uid 0.
    RootRefused,
    /// A rule maps the login to a local user that does not exist.
    NoSuchLocalUser(String),
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::SourceNotAllowed => {
                f.write_str("tailnet policy does not permit you to SSH to this node")
            }
            RejectReason::LoginNotAllowed => {
                f.write_str("tailnet policy does not permit you to SSH to this node as this user")
            }
            RejectReason::RootRefused => {
                f.write_str("tailnet policy permits only non-root users here")
            }
            RejectReason::NoSuchLocalUser(u) => {
                write!(f, "local user \"{u}\" does not exist on this node")
            }
        }
    }
}

/// Decides a login of `requested` from `src`, looking local accounts up
/// through `lookup` (return `None` for a missing account).
pub fn authorize_ssh(
    policy: &SshPolicy,
    src: IpAddr,
    requested: &str,
    lookup: impl Fn(&str) -> Option<LocalAccount>,
) -> SshDecision {
    let mut reason = RejectReason::SourceNotAllowed;
    let mut note = |r: RejectReason| {
        // Keep the most specific reason seen.
        let rank = |r: &RejectReason| match r {
            RejectReason::SourceNotAllowed => 0,
            RejectReason::LoginNotAllowed => 1,
            RejectReason::RootRefused => 2,
            RejectReason::NoSuchLocalUser(_) => 3,
        };
        if rank(&r) > rank(&reason) {
            reason = r;
        }
    };
    for (i, rule) in policy.rules.iter().enumerate() {
        if !rule.matches_source(src) {
            continue;
        }
        let local = match rule.local_user_for(requested) {
            None | Some(LocalUser::NoMapping) => {
                // `root` is kept out of a "same name, never root" rule by an
                // explicit no-mapping entry: say so.
                let nonroot_rule =
                    rule.users.get(SSH_ANY_USER) == Some(&LocalUser::SameNameNonRoot);
                note(if nonroot_rule {
                    RejectReason::RootRefused
                } else {
                    RejectReason::LoginNotAllowed
                });
                continue;
            }
            Some(LocalUser::Named(name)) => {
                if lookup(name).is_none() {
                    note(RejectReason::NoSuchLocalUser(name.clone()));
                    continue;
                }
                name.clone()
            }
            Some(LocalUser::SameNameNonRoot) => match lookup(requested) {
                None => {
                    note(RejectReason::NoSuchLocalUser(requested.to_string()));
                    continue;
                }
                Some(acct) if acct.uid == 0 => {
                    note(RejectReason::RootRefused);
                    continue;
                }
                Some(_) if requested == "root" => {
                    note(RejectReason::RootRefused);
                    continue;
                }
                Some(_) => requested.to_string(),
            },
        };
        return match rule.action.mode {
            SshMode::Accept => SshDecision::Accept {
                local_user: local,
                rule: i,
                action: rule.action,
            },
            SshMode::Check { period } => SshDecision::Check {
                local_user: local,
                period,
                rule: i,
                action: rule.action,
            },
        };
    }
    SshDecision::Reject(reason)
}
