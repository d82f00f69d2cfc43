//! SSH check mode: a destination node asks, the right user approves at
//! `/a/<id>` (here through the admin service, as `weft-control nodes
//! approve` does), approvals are remembered per user and source node for
//! the check period, nobody approving ends in a refusal at the bound.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::{TestNode, TestServer, WAIT};
use weft_client::{
    CheckProgress, CheckResult, ConnectOptions, SessionEvent, SshCheckWait, check_id_from,
};
use weft_control::clock::Clock as _;
use weft_types::control::SshCheckRequest;
use weft_types::{NodeId, UserId};

/// The node id and user id a joined node registered with.
fn ids(n: &TestNode) -> (NodeId, UserId) {
    n.events
        .iter()
        .find_map(|e| match e {
            SessionEvent::Registered(r) => Some((r.node_id, r.user.as_ref().unwrap().id)),
            _ => None,
        })
        .unwrap()
}

/// A check from `dst` about a login from `src`.
pub(crate) fn request(
    dst: &TestNode,
    src: &TestNode,
    seed: u8,
    period: Duration,
    max_wait: Duration,
) -> SshCheckRequest {
    let (src_node, src_user) = ids(src);
    SshCheckRequest {
        request_id: u64::from(seed),
        node_key: dst.node_key.public(),
        check_id: check_id_from([seed; 16]),
        src_node,
        src_user,
        ssh_user: "alice".into(),
        local_user: "alice".into(),
        check_period_ms: u64::try_from(period.as_millis()).unwrap(),
        max_wait_ms: u64::try_from(max_wait.as_millis()).unwrap(),
    }
}

pub(crate) async fn send(dst: &TestNode, req: SshCheckRequest) -> SshCheckWait {
    weft_client::ssh_check(&dst.target, req, &ConnectOptions::default())
        .await
        .unwrap()
}

pub(crate) async fn next(w: &mut SshCheckWait) -> CheckProgress {
    tokio::time::timeout(WAIT, w.next())
        .await
        .expect("a check answer in time")
        .unwrap()
}

/// A server with alice's laptop (the SSH client) and server, and bob's laptop.
async fn tailnet() -> (TestServer, TestNode, TestNode, TestNode) {
    tailnet_with(|_| {}).await
}

/// [`tailnet`] on a server with settings changed by `tweak`.
pub(crate) async fn tailnet_with(
    tweak: impl FnOnce(&mut weft_control::ServerConfig),
) -> (TestServer, TestNode, TestNode, TestNode) {
    let t = TestServer::start_with(tweak).await;
    t.user("alice").await;
    t.user("bob").await;
    let (ka, kb) = (t.reusable_key("alice").await, t.reusable_key("bob").await);
    let laptop = TestNode::joined(&t, "alice-laptop", &ka).await;
    let server = TestNode::joined(&t, "server", &ka).await;
    let bob = TestNode::joined(&t, "bob-laptop", &kb).await;
    (t, laptop, server, bob)
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn a_check_waits_for_its_user_and_a_second_login_within_the_period_is_accepted_at_once() {
    let (t, laptop, server, _bob) = tailnet().await;
    let mut w = send(
        &server,
        request(&server, &laptop, 1, HOUR, Duration::from_secs(600)),
    )
    .await;
    let CheckProgress::Pending { auth_url, .. } = next(&mut w).await else {
        panic!("expected pending")
    };
    let id = check_id_from([1; 16]);
    assert_eq!(auth_url, format!("{}/a/{id}", t.server.url()));

    // The page says who must approve and how.
    let page = t.http_get(&format!("/a/{id}")).await;
    assert!(
        page.contains(&format!("weft-control nodes approve {id} --user alice")),
        "{page}"
    );
    assert!(
        page.contains("alice-laptop") && page.contains("server"),
        "{page}"
    );

    // Bob cannot approve alice's login; the check keeps waiting.
    let err = t
        .server
        .admin()
        .approve_login(&id, "bob")
        .await
        .unwrap_err();
    assert_eq!(err.code, "forbidden");
    assert!(err.message.contains("only alice may approve it"), "{err}");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), w.next())
            .await
            .is_err(),
        "still pending"
    );

    let before = t.clock.now();
    let approval = t.server.admin().approve(&id, "alice").await.unwrap();
    let after = t.clock.now();
    let node = approval.node;
    let check = approval
        .ssh_check
        .expect("the answer says it was an SSH check");
    assert_eq!(
        (
            check.login.as_str(),
            check.src_name.as_str(),
            check.dst_name.as_str()
        ),
        ("alice", "alice-laptop", "server"),
        "{check:?}"
    );
    assert_eq!(check.period_ms, 3_600_000, "{check:?}");
    assert_eq!(
        node.id,
        ids(&laptop).0.0,
        "the approval names the source node"
    );
    let CheckProgress::Done(CheckResult::Accepted { until }) = next(&mut w).await else {
        panic!("expected accept")
    };
    assert!(
        until >= before.saturating_add(HOUR) && until <= after.saturating_add(HOUR),
        "{until:?}"
    );

    // Within the period: accepted at once, without a URL.
    let mut again = send(
        &server,
        request(&server, &laptop, 2, HOUR, Duration::from_secs(600)),
    )
    .await;
    assert_eq!(
        next(&mut again).await,
        CheckProgress::Done(CheckResult::Accepted { until })
    );

    // After it: asked again.
    t.clock.advance(HOUR + Duration::from_secs(1));
    let mut later = send(
        &server,
        request(&server, &laptop, 3, HOUR, Duration::from_secs(600)),
    )
    .await;
    assert!(matches!(
        next(&mut later).await,
        CheckProgress::Pending { .. }
    ));
    t.server.shutdown().await;
}

#[tokio::test]
async fn an_approval_vouches_only_for_its_source_node_and_its_own_period() {
    let (t, laptop, server, _bob) = tailnet().await;
    let wait = Duration::from_secs(600);
    let mut w = send(&server, request(&server, &laptop, 1, Duration::ZERO, wait)).await;
    assert!(matches!(next(&mut w).await, CheckProgress::Pending { .. }));
    t.server
        .admin()
        .approve_login(&check_id_from([1; 16]), "alice")
        .await
        .unwrap();
    assert!(matches!(
        next(&mut w).await,
        CheckProgress::Done(CheckResult::Accepted { .. })
    ));
    // Period 0 approves only the login at hand: nothing is remembered.
    for (seed, period) in [(2, Duration::ZERO), (3, HOUR)] {
        let mut w = send(&server, request(&server, &laptop, seed, period, wait)).await;
        assert!(
            matches!(next(&mut w).await, CheckProgress::Pending { .. }),
            "period {period:?} asks after a period-0 approval"
        );
    }
    assert!(
        t.server
            .admin()
            .list_ssh_approvals(None, None)
            .await
            .unwrap()
            .is_empty()
    );

    // An approval under a 1-hour rule...
    let approved = t.clock.now();
    let mut w = send(&server, request(&server, &laptop, 4, HOUR, wait)).await;
    assert!(matches!(next(&mut w).await, CheckProgress::Pending { .. }));
    t.server
        .admin()
        .approve_login(&check_id_from([4; 16]), "alice")
        .await
        .unwrap();
    assert!(matches!(
        next(&mut w).await,
        CheckProgress::Done(CheckResult::Accepted { .. })
    ));
    let until_of = |p: CheckProgress| match p {
        CheckProgress::Done(CheckResult::Accepted { until }) => until,
        other => panic!("expected an accept, got {other:?}"),
    };
    // ...backs a rule with a longer period only for its own hour,
    let twelve = 12 * HOUR;
    let mut w = send(&server, request(&server, &laptop, 5, twelve, wait)).await;
    let until = until_of(next(&mut w).await);
    assert!(
        until >= approved.saturating_add(HOUR) && until <= t.clock.now().saturating_add(HOUR),
        "{until:?}"
    );
    // a rule with a shorter one for that shorter time,
    let minute = Duration::from_secs(60);
    let mut w = send(&server, request(&server, &laptop, 6, minute, wait)).await;
    let until = until_of(next(&mut w).await);
    assert!(until <= t.clock.now().saturating_add(minute), "{until:?}");
    t.clock.advance(minute + Duration::from_secs(1));
    let mut w = send(&server, request(&server, &laptop, 7, minute, wait)).await;
    assert!(matches!(next(&mut w).await, CheckProgress::Pending { .. }));
    let mut w = send(&server, request(&server, &laptop, 8, HOUR, wait)).await;
    assert!(matches!(
        next(&mut w).await,
        CheckProgress::Done(CheckResult::Accepted { .. })
    ));
    // and not a login from alice's other node.
    let mut other = send(&laptop, request(&laptop, &server, 9, HOUR, wait)).await;
    assert!(matches!(
        next(&mut other).await,
        CheckProgress::Pending { .. }
    ));
    t.server.shutdown().await;
}

#[tokio::test]
async fn a_check_nobody_approves_is_refused_at_the_nodes_bound() {
    let (t, laptop, server, _bob) = tailnet().await;
    let before = t.clock.now();
    let mut w = send(
        &server,
        request(&server, &laptop, 1, HOUR, Duration::from_secs(60)),
    )
    .await;
    let CheckProgress::Pending { expires, .. } = next(&mut w).await else {
        panic!("expected pending")
    };
    let after = t.clock.now();
    let sixty = Duration::from_secs(60);
    assert!(
        expires >= before.saturating_add(sixty) && expires <= after.saturating_add(sixty),
        "{expires:?}"
    );
    t.clock.advance(Duration::from_secs(61));
    let CheckProgress::Done(CheckResult::Rejected { message }) = next(&mut w).await else {
        panic!("expected reject")
    };
    assert!(
        message.contains("not approved within 60 seconds"),
        "{message}"
    );
    // Gone: approving now finds nothing.
    let err = t
        .server
        .admin()
        .approve_login(&check_id_from([1; 16]), "alice")
        .await
        .unwrap_err();
    assert_eq!(err.code, "not_found", "{err}");

    // The server's own bound (10 min) caps what a node asks for.
    let before = t.clock.now();
    let mut w = send(&server, request(&server, &laptop, 2, HOUR, 10 * HOUR)).await;
    let CheckProgress::Pending { expires, .. } = next(&mut w).await else {
        panic!("expected pending")
    };
    let max = weft_control::check::MAX_CHECK_WAIT;
    assert!(
        expires >= before.saturating_add(max) && expires <= t.clock.now().saturating_add(max),
        "{expires:?}"
    );
    t.server.shutdown().await;
}

#[tokio::test]
async fn a_declined_check_is_refused_and_a_closed_one_is_forgotten() {
    let (t, laptop, server, _bob) = tailnet().await;
    let mut w = send(
        &server,
        request(&server, &laptop, 1, HOUR, Duration::from_secs(600)),
    )
    .await;
    assert!(matches!(next(&mut w).await, CheckProgress::Pending { .. }));
    t.server
        .admin()
        .reject_login(&check_id_from([1; 16]))
        .await
        .unwrap();
    let CheckProgress::Done(CheckResult::Rejected { message }) = next(&mut w).await else {
        panic!("expected reject")
    };
    assert!(message.contains("declined"), "{message}");

    let mut w = send(
        &server,
        request(&server, &laptop, 2, HOUR, Duration::from_secs(600)),
    )
    .await;
    assert!(matches!(next(&mut w).await, CheckProgress::Pending { .. }));
    drop(w);
    let id = check_id_from([2; 16]);
    let gone = async {
        while !t
            .http_get(&format!("/a/{id}"))
            .await
            .starts_with("HTTP/1.1 404")
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, gone)
        .await
        .expect("the check is forgotten once its connection closes");
    t.server.shutdown().await;
}

#[tokio::test]
async fn checks_that_do_not_add_up_are_refused_at_once() {
    let (t, laptop, server, bob) = tailnet().await;
    let refused = |p: CheckProgress| match p {
        CheckProgress::Done(CheckResult::Rejected { message }) => message,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let period = HOUR;
    let wait = Duration::from_secs(600);

    // Another machine's node key.
    let m =
        refused(next(&mut send(&server, request(&laptop, &laptop, 1, period, wait)).await).await);
    assert!(m.contains("not registered to its machine"), "{m}");
    // A user that does not own the source node.
    let mut r = request(&server, &laptop, 2, period, wait);
    r.src_user = ids(&bob).1;
    let m = refused(next(&mut send(&server, r).await).await);
    assert!(m.contains("another user"), "{m}");
    // An unknown source node.
    let mut r = request(&server, &laptop, 3, period, wait);
    r.src_node = NodeId(999_999);
    let m = refused(next(&mut send(&server, r).await).await);
    assert!(m.contains("not in the tailnet"), "{m}");
    // A malformed id.
    let mut r = request(&server, &laptop, 4, period, wait);
    r.check_id = "../../x".into();
    let m = refused(next(&mut send(&server, r).await).await);
    assert!(m.contains("hex"), "{m}");
    // An id already waiting.
    let mut first = send(&server, request(&server, &laptop, 5, period, wait)).await;
    assert!(matches!(
        next(&mut first).await,
        CheckProgress::Pending { .. }
    ));
    let m =
        refused(next(&mut send(&server, request(&server, &laptop, 5, period, wait)).await).await);
    assert!(m.contains("already in use"), "{m}");
    t.server.shutdown().await;
}
