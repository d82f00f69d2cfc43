//! The SSH server's [`Authorizer`] over one netmap: who a connection is (a
//! peer's user or tags, or a local account on this node), and what the
//! node's compiled SSH policy says about the login they ask for.
//!
//! Identity. A source address that belongs to a peer was authenticated by
//! WireGuard (cryptokey routing drops anything else), so it stands for that
//! peer's node. A source address that is one of *this* node's addresses
//! never passed WireGuard: a program here opened the connection, and the
//! address says nothing about who. Such a connection is attributed to the
//! local account owning the client socket ([`SocketOwners`], sock_diag) and
//! evaluated with this node's identity; the server then lets it log in only
//! as that account, or as anyone if it is root
//! ([`PeerIdentity::may_log_in_as`]). When the owner cannot be found, the
//! login is refused. (A local program cannot complete a TCP handshake from
//! a *peer's* address: the replies would be routed into the tunnel.)
//!
//! One `NetmapAuthorizer` is built per netmap and handed to the server; the
//! server re-evaluates live connections against each new one, so a policy
//! change closes the sessions it no longer allows.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use weft_policy::ssh::{LocalAccount, RejectReason, SshDecision, authorize_ssh};
use weft_ssh::{Authorizer, Decision, Grant, Origin, PeerIdentity, Unidentified};
use weft_types::filter::{CheckPeriod, SshAction};
use weft_types::{NetMap, Node, NodeOwner, UnixMillis};

use super::sock_owner::SocketOwners;

/// Shown when a `check` rule matches but no [`CheckHook`](weft_ssh::CheckHook)
/// is installed.
pub const CHECK_UNAVAILABLE: &str = "tailnet policy requires a fresh check with the control \
     server for this login, but check mode is unavailable on this node";

/// Answers the SSH server's questions from one netmap.
#[derive(Clone)]
pub struct NetmapAuthorizer {
    netmap: Arc<NetMap>,
    /// A check hook is installed: `check` rules are passed on as
    /// [`Decision::Check`]; without one they are refused.
    check_available: bool,
    /// Who owns the client socket of a connection from this node itself.
    owners: Arc<dyn SocketOwners>,
}

impl std::fmt::Debug for NetmapAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetmapAuthorizer")
            .field("check_available", &self.check_available)
            .finish_non_exhaustive()
    }
}

impl NetmapAuthorizer {
    /// Returns the authorizer for `netmap`; `owners` answers for connections
    /// from this node's own addresses.
    pub fn new(netmap: Arc<NetMap>, check_available: bool, owners: Arc<dyn SocketOwners>) -> Self {
        Self {
            netmap,
            check_available,
            owners,
        }
    }

    /// Returns the node a connection from `peer` to `local` stands for, and
    /// whether it came from a peer or from a program on this node, at `now`.
    fn node_of(
        &self,
        peer: SocketAddr,
        local: SocketAddr,
        now: UnixMillis,
    ) -> Result<(&Node, Origin), Unidentified> {
        let src = peer.ip();
        let nm = &self.netmap;
        let owns = |n: &Node| n.addresses.iter().any(|a| a.addr() == src);
        if owns(&nm.self_node) {
            // Not through WireGuard: ask the kernel who opened it.
            return match self.owners.tcp_client_uid(peer, local) {
                Ok(uid) => Ok((&nm.self_node, Origin::LocalProcess { uid })),
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "Owner of a local SSH connection unknown");
                    Err(Unidentified::LocalOwnerUnknown {
                        reason: e.to_string(),
                    })
                }
            };
        }
        nm.peers
            .values()
            .find(|n| owns(n))
            .filter(|n| n.is_usable_at(now))
            .map(|n| (n, Origin::Peer))
            .ok_or(Unidentified::UnknownAddress(src))
    }

    /// [`Authorizer::identify`] at wall time `now`.
    ///
    /// # Errors
    /// The address is no usable node's, or the connection is from this node
    /// and its local account cannot be found.
    pub fn identify_at(
        &self,
        peer: SocketAddr,
        local: SocketAddr,
        now: UnixMillis,
    ) -> Result<PeerIdentity, Unidentified> {
        let (node, origin) = self.node_of(peer, local, now)?;
        let (user_login, tags) = match &node.owner {
            NodeOwner::User(id) => {
                // A user node whose profile is missing is not identifiable.
                let profile = self
                    .netmap
                    .user_profiles
                    .get(id)
                    .ok_or(Unidentified::UnknownAddress(peer.ip()))?;
                (Some(profile.login_name.to_string()), Vec::new())
            }
            NodeOwner::Tags(tags) => (None, tags.iter().map(ToString::to_string).collect()),
        };
        Ok(PeerIdentity {
            addr: peer.ip(),
            origin,
            node_id: node.stable_id.to_string(),
            node_name: node.name.to_string(),
            user_login,
            tags,
        })
    }
}

impl Authorizer for NetmapAuthorizer {
    fn identify(&self, peer: SocketAddr, local: SocketAddr) -> Result<PeerIdentity, Unidentified> {
        self.identify_at(peer, local, super::super::dataplane::unix_now())
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
            SshDecision::Reject(reason) => reject(&reason, peer, ssh_user),
        }
    }
}

fn grant(local_user: String, a: SshAction) -> Grant {
    Grant {
        allow_agent_forwarding: a.allow_agent_forwarding,
        allow_local_port_forwarding: a.allow_local_port_forwarding,
        allow_remote_port_forwarding: a.allow_remote_port_forwarding,
        recorder: a.recorder,
        // The server re-checks the uid of every account it starts a
        // session as; the evaluator already refused uid 0 for nonroot rules.
        ..Grant::new(local_user)
    }
}

/// Returns the refusal a client sees, in one line: who was refused, as
/// whom, which part of the policy (no rule, no listed user, non-root only,
/// a missing account) and what to do instead.
fn reject(reason: &RejectReason, peer: &PeerIdentity, ssh_user: &str) -> Decision {
    let who = match peer.origin {
        Origin::LocalProcess { .. } => peer.principal(),
        Origin::Peer => format!("{} (node {})", peer.principal(), peer.node_name),
    };
    let denied = format!("tailnet policy does not permit {who} to SSH to this node as {ssh_user}");
    let message = match reason {
        RejectReason::SourceNotAllowed => format!(
            "{denied}: no SSH rule has that node as a source; ask a tailnet admin to add one (the policy's \"ssh\" section)"
        ),
        RejectReason::LoginNotAllowed => format!(
            "{denied}: no SSH rule for that node lists {ssh_user} in \"users\"; log in as a listed user or ask a tailnet admin"
        ),
        RejectReason::RootRefused => format!(
            "{denied}: the SSH rules for that node allow only non-root users (autogroup:nonroot); log in as a non-root user"
        ),
        RejectReason::NoSuchLocalUser(local) => format!(
            "local user \"{local}\" does not exist on this node (the SSH rule for {who} maps {ssh_user} to it); ask this node's admin to create it"
        ),
    };
    Decision::Reject { message }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use std::net::IpAddr;
    use std::sync::Mutex;

    use weft_types::filter::{LocalUser, SshMode, SshPolicy, SshPrincipal, SshRule};
    use weft_types::{NodeId, UserId, UserProfile};

    use super::super::sock_owner::OwnerError;
    use super::*;

    /// Socket owners the test decides: one uid for every connection (or
    /// none: the lookup fails), and the 4-tuples asked about.
    #[derive(Default)]
    struct FakeOwners {
        uid: Option<u32>,
        asked: Mutex<Vec<(SocketAddr, SocketAddr)>>,
    }

    impl SocketOwners for FakeOwners {
        fn tcp_client_uid(
            &self,
            client: SocketAddr,
            server: SocketAddr,
        ) -> Result<u32, OwnerError> {
            self.asked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((client, server));
            self.uid.ok_or(OwnerError::NotFound)
        }
    }

    fn owned_by(uid: Option<u32>) -> Arc<FakeOwners> {
        Arc::new(FakeOwners {
            uid,
            ..FakeOwners::default()
        })
    }

    fn authz(nm: Arc<NetMap>, check: bool) -> NetmapAuthorizer {
        NetmapAuthorizer::new(nm, check, owned_by(None))
    }

    /// A connection from `ip` (port 40000) to our port 22 on the same family.
    fn conn(ip: &str) -> (SocketAddr, SocketAddr) {
        let src: IpAddr = ip.parse().unwrap();
        let ours: IpAddr = if src.is_ipv4() {
            "100.64.0.2".parse().unwrap()
        } else {
            "fd7a:115c:a1e0::2".parse().unwrap()
        };
        (SocketAddr::new(src, 40000), SocketAddr::new(ours, 22))
    }

    fn from(a: &NetmapAuthorizer, ip: &str) -> PeerIdentity {
        let (peer, local) = conn(ip);
        a.identify_at(peer, local, UnixMillis(1)).unwrap()
    }

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
                recorder: None,
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
        let owners = owned_by(Some(1000));
        let a = NetmapAuthorizer::new(netmap(SshPolicy::default()), false, owners.clone());
        let alice = from(&a, "fd7a:115c:a1e0::1");
        assert_eq!(alice.user_login.as_deref(), Some("alice@example.com"));
        assert_eq!(alice.node_name, "node1.example.weft.internal");
        assert_eq!(alice.origin, Origin::Peer);
        assert!(alice.tags.is_empty());
        let ci = from(&a, "100.64.0.3");
        assert_eq!(ci.user_login, None);
        assert_eq!(ci.tags, ["tag:ci"]);
        let (peer, local) = conn("100.64.0.99");
        assert_eq!(
            a.identify_at(peer, local, UnixMillis(1)),
            Err(Unidentified::UnknownAddress(peer.ip()))
        );
        // A peer's address is its identity: the kernel is not asked.
        assert!(owners.asked.lock().unwrap().is_empty());
    }

    #[test]
    fn a_connection_from_our_own_address_is_the_local_account_that_opened_it() {
        let owners = owned_by(Some(1001));
        let a = NetmapAuthorizer::new(netmap(SshPolicy::default()), false, owners.clone());
        for ip in ["100.64.0.2", "fd7a:115c:a1e0::2"] {
            let me = from(&a, ip);
            assert_eq!(me.origin, Origin::LocalProcess { uid: 1001 }, "{ip}");
            // Evaluated with this node's identity, logged as the local uid.
            assert_eq!(me.node_id, "n2");
            assert_eq!(me.principal(), "local uid 1001");
        }
        // The kernel was asked about exactly the client's end and ours.
        assert_eq!(
            *owners.asked.lock().unwrap(),
            [conn("100.64.0.2"), conn("fd7a:115c:a1e0::2")]
        );

        // No owner found: refused, saying why and what to do instead.
        let a = authz(netmap(SshPolicy::default()), false);
        let (peer, local) = conn("100.64.0.2");
        let err = a.identify_at(peer, local, UnixMillis(1)).unwrap_err();
        assert!(matches!(err, Unidentified::LocalOwnerUnknown { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("no such connection") && msg.contains("sudo or su"),
            "{msg}"
        );
    }

    /// A login the way the server decides it: identity, policy, the local
    /// account, and the local-process rule on top.
    fn login(a: &NetmapAuthorizer, ip: &str, ssh_user: &str) -> Result<String, String> {
        let (peer, local) = conn(ip);
        let who = a
            .identify_at(peer, local, UnixMillis(1))
            .map_err(|e| e.to_string())?;
        let grant = match a.authorize(&who, ssh_user, 0, &uid_of) {
            Decision::Accept(g) | Decision::Check { grant: g, .. } => g,
            Decision::Reject { message } => return Err(message),
        };
        let uid = uid_of(&grant.local_user).ok_or("no such user")?;
        who.may_log_in_as(ssh_user, uid)?;
        Ok(grant.local_user)
    }

    #[test]
    fn under_a_policy_that_allows_root_to_our_own_nodes_a_local_user_stays_itself() {
        // Issue 10: members may log in to their own nodes as any non-root
        // user and as root; the principals include this node's addresses.
        let mut users = nonroot();
        users.retain(|(k, _)| *k != "root");
        users.push(("root", LocalUser::Named("root".into())));
        let policy = || SshPolicy {
            rules: vec![
                rule("100.64.0.0/10", &users, SshMode::Accept),
                rule("fd7a:115c:a1e0::/48", &users, SshMode::Accept),
            ],
        };
        // alice (uid 1000) on this node.
        let a = NetmapAuthorizer::new(netmap(policy()), false, owned_by(Some(1000)));
        for ip in ["100.64.0.2", "fd7a:115c:a1e0::2"] {
            assert_eq!(login(&a, ip, "alice"), Ok("alice".into()), "{ip}");
            for other in ["root", "deploy"] {
                let refused = login(&a, ip, other).unwrap_err();
                assert!(
                    refused.contains("local uid 1000")
                        && refused.contains(&format!("not as {other}")),
                    "{ip} {other}: {refused}"
                );
            }
        }
        // Root on this node: whatever the policy allows.
        let a = NetmapAuthorizer::new(netmap(policy()), false, owned_by(Some(0)));
        assert_eq!(login(&a, "100.64.0.2", "root"), Ok("root".into()));
        assert_eq!(
            login(&a, "fd7a:115c:a1e0::2", "deploy"),
            Ok("deploy".into())
        );
        // A peer of the same user is judged by the policy alone.
        assert_eq!(login(&a, "100.64.0.1", "root"), Ok("root".into()));
        // The owner unknown: refused whoever asks.
        let a = authz(netmap(policy()), false);
        assert!(login(&a, "100.64.0.2", "alice").is_err());
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
        let a = authz(netmap(policy), false);
        let alice = from(&a, "100.64.0.1");
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
        let ci = from(&a, "100.64.0.3");
        let Decision::Reject { message } = a.authorize(&ci, "alice", 0, &uid_of) else {
            panic!()
        };
        assert!(
            message.starts_with(&format!(
                "tailnet policy does not permit {} (node {}) to SSH to this node as alice: \
                 no SSH rule for that node lists alice in \"users\"",
                ci.principal(),
                ci.node_name
            )),
            "{message}"
        );
        assert!(!message.contains('\n'), "one line: {message}");
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
        let a = authz(nm, false);
        let alice = from(&a, "100.64.0.1");
        let Decision::Reject { message } = a.authorize(&alice, "root", 0, &uid_of) else {
            panic!()
        };
        assert!(
            message.starts_with("tailnet policy does not permit ")
                && message.contains(" to SSH to this node as root: ")
                && message.contains("only non-root users (autogroup:nonroot)"),
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
        let without = authz(Arc::clone(&nm), false);
        let alice = from(&without, "100.64.0.1");
        assert_eq!(
            without.authorize(&alice, "alice", 0, &uid_of),
            Decision::Reject {
                message: CHECK_UNAVAILABLE.to_owned()
            }
        );
        let with = authz(nm, true);
        match with.authorize(&alice, "alice", 0, &uid_of) {
            Decision::Check { grant, period } => {
                assert_eq!(grant.local_user, "alice");
                assert_eq!(period, Duration::from_secs(60));
            }
            d => panic!("{d:?}"),
        }
    }
}
