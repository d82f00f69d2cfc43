//! The SSH server's [`Authorizer`] over one netmap: who a tailnet source
//! address is (a peer's user or tags), and what the node's compiled SSH
//! policy says about the login they ask for.
//!
//! One `NetmapAuthorizer` is built per netmap and handed to the server; the
//! server re-evaluates live connections against each new one, so a policy
//! change closes the sessions it no longer allows.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use weft_policy::ssh::{LocalAccount, RejectReason, SshDecision, authorize_ssh};
use weft_ssh::{Authorizer, Decision, Grant, PeerIdentity};
use weft_types::filter::{CheckPeriod, SshAction};
use weft_types::{NetMap, Node, NodeOwner, UnixMillis};

/// Shown when a `check` rule matches but no [`CheckHook`](weft_ssh::CheckHook)
/// is installed.
pub const CHECK_UNAVAILABLE: &str = "tailnet policy requires a fresh check with the control \
     server for this login, but check mode is unavailable on this node";

/// Answers the SSH server's questions from one netmap.
#[derive(Debug, Clone)]
pub struct NetmapAuthorizer {
    netmap: Arc<NetMap>,
    /// A check hook is installed: `check` rules are passed on as
    /// [`Decision::Check`]; without one they are refused.
    check_available: bool,
}

impl NetmapAuthorizer {
    /// Returns the authorizer for `netmap`.
    pub fn new(netmap: Arc<NetMap>, check_available: bool) -> Self {
        Self {
            netmap,
            check_available,
        }
    }

    /// Returns the node (a peer or this node itself) that owns `src`, if it is
    /// usable at `now`.
    fn node_at(&self, src: IpAddr, now: UnixMillis) -> Option<&Node> {
        let nm = &self.netmap;
        let owns = |n: &&Node| n.addresses.iter().any(|a| a.addr() == src);
        nm.peers
            .values()
            .find(owns)
            .filter(|n| n.is_usable_at(now))
            // Connections to ourselves over the tailnet address.
            .or_else(|| Some(&nm.self_node).filter(owns))
    }

    /// [`Authorizer::identify`] at wall time `now`.
    pub fn identify_at(&self, src: IpAddr, now: UnixMillis) -> Option<PeerIdentity> {
        let node = self.node_at(src, now)?;
        let (user_login, tags) = match &node.owner {
            NodeOwner::User(id) => {
                // A user node whose profile is missing is not identifiable.
                let profile = self.netmap.user_profiles.get(id)?;
                (Some(profile.login_name.to_string()), Vec::new())
            }
            NodeOwner::Tags(tags) => (None, tags.iter().map(ToString::to_string).collect()),
        };
        Some(PeerIdentity {
            addr: src,
            node_id: node.stable_id.to_string(),
            node_name: node.name.to_string(),
            user_login,
            tags,
        })
    }
}

impl Authorizer for NetmapAuthorizer {
    fn identify(&self, src: IpAddr) -> Option<PeerIdentity> {
        self.identify_at(src, super::super::dataplane::unix_now())
    }

    fn authorize(
        &self,
        peer: &PeerIdentity,
        ssh_user: &str,
        _now_unix_ms: i64,
        uid_of: &dyn Fn(&str) -> Option<u32>,
    ) -> Decision {
        let lookup = |name: &str| uid_of(name).map(|uid| LocalAccount { uid });
        match authorize_ssh(&self.netmap.ssh_policy, peer.addr, ssh_user, lookup) {
            SshDecision::Accept {
                local_user, action, ..
            } => Decision::Accept(grant(local_user, action)),
            SshDecision::Check { .. } if !self.check_available => Decision::Reject {
                message: CHECK_UNAVAILABLE.to_owned(),
            },
            SshDecision::Check {
                local_user,
                period,
                action,
                ..
            } => Decision::Check {
                grant: grant(local_user, action),
                period: match period {
                    CheckPeriod::Always => Duration::ZERO,
                    CheckPeriod::Millis(ms) => Duration::from_millis(ms),
                },
            },
            SshDecision::Reject(reason) => reject(&reason, ssh_user),
        }
    }
}

fn grant(local_user: String, a: SshAction) -> Grant {
    Grant {
        allow_agent_forwarding: a.allow_agent_forwarding,
        allow_local_port_forwarding: a.allow_local_port_forwarding,
        allow_remote_port_forwarding: a.allow_remote_port_forwarding,
        // The server re-checks the uid of every account it starts a
        // session as; the evaluator already refused uid 0 for nonroot rules.
        ..Grant::new(local_user)
    }
}

fn reject(reason: &RejectReason, ssh_user: &str) -> Decision {
    match reason {
        RejectReason::SourceNotAllowed | RejectReason::LoginNotAllowed => {
            Decision::no_matching_rule(ssh_user)
        }
        RejectReason::RootRefused => Decision::Reject {
            message: format!(
                "tailnet policy does not permit you to SSH to this node as {ssh_user}: only non-root users may log in here"
            ),
        },
        RejectReason::NoSuchLocalUser(_) => Decision::Reject {
            message: reason.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use weft_types::filter::{LocalUser, SshMode, SshPolicy, SshPrincipal, SshRule};
    use weft_types::{NodeId, UserId, UserProfile};

    use super::*;

    fn netmap(policy: SshPolicy) -> Arc<NetMap> {
        // Self is node 2 (100.64.0.2), peers 1 (alice's) and 3 (tag:ci).
        let mut nm = crate::daemon::config::tests::netmap(2, &[1, 3]);
        nm.user_profiles.insert(
            UserId(1),
            UserProfile {
                id: UserId(1),
                login_name: "alice@example.com".parse().unwrap(),
                display_name: "Alice".into(),
                profile_pic_url: None,
            },
        );
        if let Some(ci) = nm.peers.get_mut(&NodeId(3)) {
            ci.owner = NodeOwner::Tags(["tag:ci".parse().unwrap()].into());
        }
        nm.ssh_policy = policy;
        Arc::new(nm)
    }

    fn rule(src: &str, users: &[(&str, LocalUser)], mode: SshMode) -> SshRule {
        SshRule {
            principals: vec![SshPrincipal::Prefix(src.parse().unwrap())],
            users: users
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
            action: SshAction {
                mode,
                allow_agent_forwarding: true,
                allow_local_port_forwarding: true,
                allow_remote_port_forwarding: false,
            },
            origin: None,
        }
    }

    fn uid_of(name: &str) -> Option<u32> {
        match name {
            "root" => Some(0),
            "alice" => Some(1000),
            "deploy" => Some(1001),
            _ => None,
        }
    }

    fn nonroot() -> Vec<(&'static str, LocalUser)> {
        vec![
            ("*", LocalUser::SameNameNonRoot),
            ("root", LocalUser::NoMapping),
        ]
    }

    #[test]
    fn a_source_address_maps_to_its_peers_user_or_tags() {
        let nm = netmap(SshPolicy::default());
        let a = NetmapAuthorizer::new(nm, false);
        let now = UnixMillis(1);
        let alice = a
            .identify_at("fd7a:115c:a1e0::1".parse().unwrap(), now)
            .unwrap();
        assert_eq!(alice.user_login.as_deref(), Some("alice@example.com"));
        assert_eq!(alice.node_name, "node1.example.weft.internal");
        assert!(alice.tags.is_empty());
        let ci = a.identify_at("100.64.0.3".parse().unwrap(), now).unwrap();
        assert_eq!(ci.user_login, None);
        assert_eq!(ci.tags, ["tag:ci"]);
        assert_eq!(a.identify_at("100.64.0.99".parse().unwrap(), now), None);
        // Ourselves, over our own tailnet address.
        assert_eq!(
            a.identify_at("100.64.0.2".parse().unwrap(), now)
                .unwrap()
                .node_id,
            "n2"
        );
    }

    #[test]
    fn first_matching_rule_wins_and_nonroot_never_maps_to_root() {
        let policy = SshPolicy {
            rules: vec![
                rule("100.64.0.1/32", &nonroot(), SshMode::Accept),
                rule(
                    "100.64.0.0/10",
                    &[("root", LocalUser::Named("root".into()))],
                    SshMode::Accept,
                ),
            ],
        };
        let nm = netmap(policy);
        let a = NetmapAuthorizer::new(nm, false);
        let from = |ip: &str| a.identify_at(ip.parse().unwrap(), UnixMillis(1)).unwrap();
        let alice = from("100.64.0.1");
        match a.authorize(&alice, "alice", 0, &uid_of) {
            Decision::Accept(g) => {
                assert_eq!(g.local_user, "alice");
                assert!(!g.allow_remote_port_forwarding);
            }
            d => panic!("{d:?}"),
        }
        // The first rule does not map root; the second (root → root) does.
        assert!(
            matches!(a.authorize(&alice, "root", 0, &uid_of), Decision::Accept(g) if g.local_user == "root")
        );
        // A user not in any rule's users, and an account that does not exist.
        let ci = from("100.64.0.3");
        let Decision::Reject { message } = a.authorize(&ci, "alice", 0, &uid_of) else {
            panic!()
        };
        assert_eq!(
            message,
            "tailnet policy does not permit you to SSH to this node as alice"
        );
        let Decision::Reject { message } = a.authorize(&alice, "ghost", 0, &uid_of) else {
            panic!()
        };
        assert!(message.contains("\"ghost\" does not exist"), "{message}");
    }

    #[test]
    fn nonroot_alone_refuses_root_with_a_clear_message() {
        let nm = netmap(SshPolicy {
            rules: vec![rule("100.64.0.1/32", &nonroot(), SshMode::Accept)],
        });
        let a = NetmapAuthorizer::new(nm, false);
        let alice = a
            .identify_at("100.64.0.1".parse().unwrap(), UnixMillis(1))
            .unwrap();
        let Decision::Reject { message } = a.authorize(&alice, "root", 0, &uid_of) else {
            panic!()
        };
        assert!(
            message.starts_with("tailnet policy does not permit you to SSH to this node as root"),
            "{message}"
        );
    }

    #[test]
    fn check_rules_are_refused_until_a_check_hook_is_installed() {
        let check = SshMode::Check {
            period: CheckPeriod::Millis(60_000),
        };
        let nm = netmap(SshPolicy {
            rules: vec![rule("100.64.0.1/32", &nonroot(), check)],
        });
        let without = NetmapAuthorizer::new(Arc::clone(&nm), false);
        let alice = without
            .identify_at("100.64.0.1".parse().unwrap(), UnixMillis(1))
            .unwrap();
        assert_eq!(
            without.authorize(&alice, "alice", 0, &uid_of),
            Decision::Reject {
                message: CHECK_UNAVAILABLE.to_owned()
            }
        );
        let with = NetmapAuthorizer::new(nm, true);
        match with.authorize(&alice, "alice", 0, &uid_of) {
            Decision::Check { grant, period } => {
                assert_eq!(grant.local_user, "alice");
                assert_eq!(period, Duration::from_secs(60));
            }
            d => panic!("{d:?}"),
        }
    }
}
