//! The `Authorizer` seam against the real policy evaluator: an adapter like
//! the one weftd builds over its netmap (`weft_policy::ssh::authorize_ssh` on
//! the node's compiled `SshPolicy`), driven by the real OpenSSH client.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use crate::common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use weft_policy::ssh::{LocalAccount, RejectReason, SshDecision, authorize_ssh};
use weft_ssh::{Authorizer, Decision, Grant, PeerIdentity, Unidentified};
use weft_types::filter::{
    CheckPeriod, LocalUser, SshAction, SshMode, SshPolicy, SshPrincipal, SshRule,
};

struct PolicyAuthz(SshPolicy);

impl Authorizer for PolicyAuthz {
    fn identify(&self, src: SocketAddr, _local: SocketAddr) -> Result<PeerIdentity, Unidentified> {
        if src.ip() == peer().addr {
            Ok(peer())
        } else {
            Err(Unidentified::UnknownAddress(src.ip()))
        }
    }

    fn authorize(
        &self,
        peer: &PeerIdentity,
        ssh_user: &str,
        _now: i64,
        uid_of: &dyn Fn(&str) -> Option<u32>,
    ) -> Decision {
        let grant = |local_user: String, a: SshAction| Grant {
            allow_agent_forwarding: a.allow_agent_forwarding,
            allow_local_port_forwarding: a.allow_local_port_forwarding,
            allow_remote_port_forwarding: a.allow_remote_port_forwarding,
            ..Grant::new(local_user)
        };
        match authorize_ssh(&self.0, peer.addr, ssh_user, |n| {
            uid_of(n).map(|uid| LocalAccount { uid })
        }) {
            SshDecision::Accept {
                local_user, action, ..
            } => Decision::Accept(grant(local_user, action)),
            SshDecision::Check {
                local_user,
                period,
                action,
                ..
            } => Decision::Check {
                grant: grant(local_user, action),
                period: match period {
                    CheckPeriod::Always => std::time::Duration::ZERO,
                    CheckPeriod::Millis(ms) => std::time::Duration::from_millis(ms),
                },
            },
            SshDecision::Reject(RejectReason::NoSuchLocalUser(u)) => Decision::Reject {
                message: format!("local user \"{u}\" does not exist on this node"),
            },
            SshDecision::Reject(_) => Decision::no_matching_rule(ssh_user),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compiled_nonroot_policy_admits_users_as_themselves_and_refuses_root() {
    if !e2e_ready() {
        return;
    }
    let user = TestUser::create("w");
    // What `{"action":"accept","src":["autogroup:member"],"dst":["autogroup:self"],
    // "users":["autogroup:nonroot"]}` compiles to for this node.
    let policy = SshPolicy {
        rules: vec![SshRule {
            principals: vec![SshPrincipal::Prefix("127.0.0.1/32".parse().unwrap())],
            users: BTreeMap::from([
                ("*".to_owned(), LocalUser::SameNameNonRoot),
                ("root".to_owned(), LocalUser::NoMapping),
            ]),
            action: SshAction {
                mode: SshMode::Accept,
                allow_agent_forwarding: true,
                allow_local_port_forwarding: true,
                allow_remote_port_forwarding: false,
                recorder: None,
            },
            origin: None,
        }],
    };
    let srv = start(FakeAuthz::new()).await;
    let update = srv
        .server
        .update_policy(Arc::new(PolicyAuthz(policy)))
        .await;
    assert_eq!(update, weft_ssh::PolicyUpdate::default());

    let out = run(srv.ssh(&user.name, &[], &["id -un"])).await;
    assert_eq!(
        text(&out.stdout),
        format!("{}\n", user.name),
        "{}",
        text(&out.stderr)
    );
    let out = run(srv.ssh("root", &[], &["id -un"])).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("does not permit you to SSH to this node as root"),
        "{}",
        text(&out.stderr)
    );
    let out = run(srv.ssh("wft-absent", &[], &["id -un"])).await;
    assert!(
        text(&out.stderr).contains("local user \"wft-absent\" does not exist"),
        "{}",
        text(&out.stderr)
    );
}
