//! SSH check approvals outlive the server: approve, restart weft-control on
//! the same state directory, and a second login within the check period is
//! let through without asking; after the period, or after an admin revokes
//! the approval (`weft-control ssh approvals revoke`), it asks again.
#![allow(clippy::unwrap_used)]

use crate::common;
use crate::ssh_check::{next, request, send, tailnet_with};

use std::time::Duration;

use common::{ServerProcess, TestNode, TestServer, free_port};
use weft_client::{CheckProgress, CheckResult, check_id_from};
use weft_control::admin::types::{NewPreauthKey, NewUser, RevokeSshApprovals, SshApprovalView};
use weft_control::{Server, ServerConfig};

const HOUR: Duration = Duration::from_secs(3600);
const WAIT: Duration = Duration::from_secs(600);

fn accepted_until(p: CheckProgress) -> weft_types::UnixMillis {
    match p {
        CheckProgress::Done(CheckResult::Accepted { until }) => until,
        other => panic!("expected an accept, got {other:?}"),
    }
}

/// Stops `t`'s server and starts a new one on the same state directory
/// and clock; points `nodes` at it.
async fn restart(t: TestServer, nodes: &mut [&mut TestNode]) -> TestServer {
    let TestServer { server, clock, dir } = t;
    server.shutdown().await;
    let mut config = ServerConfig::for_tests(dir.path());
    config.clock = clock.clone();
    let server = Server::start(config).await.unwrap();
    let t = TestServer { server, clock, dir };
    for n in nodes {
        n.target.url = t.url();
    }
    t
}

#[tokio::test]
async fn an_approval_survives_a_restart_of_control_and_still_ends_with_its_period() {
    let (t, mut laptop, mut server, _bob) = tailnet_with(|_| {}).await;
    let mut w = send(&server, request(&server, &laptop, 1, HOUR, WAIT)).await;
    assert!(matches!(next(&mut w).await, CheckProgress::Pending { .. }));
    t.server
        .admin()
        .approve_login(&check_id_from([1; 16]), "alice")
        .await
        .unwrap();
    let until = accepted_until(next(&mut w).await);
    drop(w);

    let t = restart(t, &mut [&mut laptop, &mut server]).await;
    // Within the period: let through at once, the same `until`.
    let mut again = send(&server, request(&server, &laptop, 2, HOUR, WAIT)).await;
    assert_eq!(accepted_until(next(&mut again).await), until);
    let list = t
        .server
        .admin()
        .list_ssh_approvals(None, None)
        .await
        .unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    let a = &list[0];
    assert_eq!(
        (a.user.as_str(), a.node.as_str(), a.expires, a.period_ms),
        ("alice", "alice-laptop", until.0, 3_600_000),
        "{a:?}"
    );
    assert_eq!(
        (
            a.approved_by.as_str(),
            a.dst_node.as_deref(),
            a.local_user.as_str()
        ),
        ("alice", Some("server"), "alice")
    );
    assert_eq!(a.check_id, check_id_from([1; 16]));

    // After the period: asked again, after another restart too.
    t.clock.advance(HOUR + Duration::from_secs(1));
    let t = restart(t, &mut [&mut laptop, &mut server]).await;
    let mut later = send(&server, request(&server, &laptop, 3, HOUR, WAIT)).await;
    assert!(matches!(
        next(&mut later).await,
        CheckProgress::Pending { .. }
    ));
    assert!(
        t.server
            .admin()
            .list_ssh_approvals(None, None)
            .await
            .unwrap()
            .is_empty()
    );
    t.server.shutdown().await;
}

#[tokio::test]
async fn deleting_or_expiring_the_source_node_ends_its_approvals() {
    let (t, laptop, server, _bob) = tailnet_with(|_| {}).await;
    for (seed, src, dst) in [(1, &laptop, &server), (2, &server, &laptop)] {
        let mut w = send(dst, request(dst, src, seed, HOUR, WAIT)).await;
        assert!(matches!(next(&mut w).await, CheckProgress::Pending { .. }));
        t.server
            .admin()
            .approve_login(&check_id_from([seed; 16]), "alice")
            .await
            .unwrap();
        accepted_until(next(&mut w).await);
    }
    let admin = t.server.admin();
    assert_eq!(admin.list_ssh_approvals(None, None).await.unwrap().len(), 2);
    let laptop_id = admin.list_ssh_approvals(Some("alice"), None).await.unwrap()[0].node_id;
    admin.expire_node(laptop_id).await.unwrap();
    let left = admin.list_ssh_approvals(None, None).await.unwrap();
    assert_eq!(
        left.iter().map(|a| a.node.as_str()).collect::<Vec<_>>(),
        ["server"]
    );
    admin.delete_node(left[0].node_id).await.unwrap();
    assert!(
        admin
            .list_ssh_approvals(None, None)
            .await
            .unwrap()
            .is_empty()
    );
    t.server.shutdown().await;
}

#[tokio::test]
async fn revoke_refuses_an_empty_or_ambiguous_selection() {
    let (t, _laptop, _server, _bob) = tailnet_with(|_| {}).await;
    let admin = t.server.admin();
    let err = admin
        .revoke_ssh_approvals(&RevokeSshApprovals::default())
        .await
        .unwrap_err();
    assert_eq!(err.code, "invalid");
    assert!(err.message.contains("--user LOGIN, --node ID"), "{err}");
    let err = admin
        .revoke_ssh_approvals(&RevokeSshApprovals {
            user: Some("alice".into()),
            all: true,
            ..RevokeSshApprovals::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, "invalid", "{err}");
    let err = admin
        .revoke_ssh_approvals(&RevokeSshApprovals {
            user: Some("alice".into()),
            ..RevokeSshApprovals::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, "not_found");
    assert!(err.message.contains("ssh approvals list"), "{err}");
    let err = admin
        .revoke_ssh_approvals(&RevokeSshApprovals {
            user: Some("carol".into()),
            ..RevokeSshApprovals::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, "not_found", "{err}");
    let none = admin
        .revoke_ssh_approvals(&RevokeSshApprovals {
            all: true,
            ..RevokeSshApprovals::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
    t.server.shutdown().await;
}

/// The real binary: approve with `nodes approve`, `kill -9`, start it
/// again, the next login is let through; `ssh approvals list --json` shows
/// the approval, `ssh approvals revoke` takes it back, and the next login
/// asks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_server_keeps_approvals_across_kill_9_and_the_cli_lists_and_revokes_them() {
    common::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut proc = ServerProcess::start(dir.path(), port).await;
    let admin = proc.admin();
    admin
        .create_user(&NewUser {
            login_name: "alice".into(),
            ..NewUser::default()
        })
        .await
        .unwrap();
    let key = admin
        .create_preauth_key(&NewPreauthKey {
            user: Some("alice".into()),
            reusable: true,
            ..NewPreauthKey::default()
        })
        .await
        .unwrap()
        .secret;
    let url: weft_client::ControlUrl = proc.url().parse().unwrap();
    let server_key = weft_client::fetch_key(&url, Duration::from_secs(5))
        .await
        .unwrap()
        .public_key;
    let mut laptop = TestNode::for_server(url.clone(), server_key, "alice-laptop");
    laptop.join(&key).await;
    let mut server = TestNode::for_server(url, server_key, "server");
    server.join(&key).await;

    let mut w = send(&server, request(&server, &laptop, 1, HOUR, WAIT)).await;
    assert!(matches!(next(&mut w).await, CheckProgress::Pending { .. }));
    let id = check_id_from([1; 16]);
    let (code, out, err) = proc.cli(&["nodes", "approve", &id, "--user", "alice"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("approved SSH check"), "{out}");
    let until = accepted_until(next(&mut w).await);
    drop(w);

    // kill -9: what the user was told is approved was committed first.
    laptop.close().await;
    server.close().await;
    proc.kill9();
    let proc = ServerProcess::start(dir.path(), port).await;
    let mut again = send(&server, request(&server, &laptop, 2, HOUR, WAIT)).await;
    assert_eq!(accepted_until(next(&mut again).await), until);

    let (code, out, err) = proc.cli(&["ssh", "approvals", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let list: Vec<SshApprovalView> = serde_json::from_str(&out).unwrap();
    assert_eq!(list.len(), 1, "{out}");
    assert_eq!(
        (
            list[0].user.as_str(),
            list[0].node.as_str(),
            list[0].expires
        ),
        ("alice", "alice-laptop", until.0)
    );
    let (code, table, err) = proc.cli(&["ssh", "approvals", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        table.starts_with("USER")
            && table.contains("alice-laptop")
            && table.contains("server as alice"),
        "{table}"
    );

    // Revoke by node name: asked again.
    let (code, out, err) = proc.cli(&[
        "ssh",
        "approvals",
        "revoke",
        "--user",
        "alice",
        "--node",
        "alice-laptop",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("revoked: alice from alice-laptop"), "{out}");
    let mut later = send(&server, request(&server, &laptop, 3, HOUR, WAIT)).await;
    assert!(matches!(
        next(&mut later).await,
        CheckProgress::Pending { .. }
    ));
    // Nothing left to revoke: a clear refusal.
    let (code, _, err) = proc.cli(&["ssh", "approvals", "revoke", "--user", "alice"]);
    assert_ne!(code, 0);
    assert!(err.contains("weft-control ssh approvals list"), "{err}");
    let (code, _, err) = proc.cli(&["ssh", "approvals", "revoke", "--node", "nosuchnode"]);
    assert_ne!(code, 0);
    assert!(err.contains("weft-control nodes list"), "{err}");
}
