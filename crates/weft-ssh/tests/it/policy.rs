//! End-to-end: authorization by (fake) tailnet policy with the real client.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use crate::common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use weft_ssh::CheckOutcome;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonroot_refuses_root_and_unlisted_users_are_refused_with_a_message() {
    if !e2e_ready() {
        return;
    }
    let user = TestUser::create("r");
    let mut authz = FakeAuthz::new();
    authz.wildcard = Some(Rule::NonRoot);
    let srv = start(authz).await;

    // autogroup:nonroot lets the user in as themselves...
    let out = run(srv.ssh(&user.name, &[], &["id -un"])).await;
    assert_eq!(
        text(&out.stdout),
        format!("{}\n", user.name),
        "{}",
        text(&out.stderr)
    );
    // ...but never as root.
    let out = run(srv.ssh("root", &[], &["id -un"])).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr)
            .contains("tailnet policy does not permit you to SSH to this node as root"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        text(&out.stderr).matches("does not permit").count(),
        1,
        "the reason is shown once"
    );
    assert!(
        text(&out.stderr).contains("Permission denied (none).")
            && !text(&out.stderr).contains("try again"),
        "the client gives up at once: {}",
        text(&out.stderr)
    );
    // BatchMode clients print it too (a userauth banner), and no prompt.
    let out = run(srv.ssh("root", &["-o", "BatchMode=yes"], &["id -un"])).await;
    assert_eq!(out.status.code(), Some(255));
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr
            .matches("weft: tailnet policy does not permit you to SSH to this node as root")
            .count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("Permission denied (none)"), "{stderr}");
    // A local user that does not exist is a clear error.
    let out = run(srv.ssh("wft-nobody-here", &[], &["true"])).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("local user \"wft-nobody-here\" does not exist"),
        "{}",
        text(&out.stderr)
    );

    // With explicit users only, anyone else is refused.
    let srv = start(FakeAuthz::new().with(&user.name, Rule::Accept(user.name.clone()))).await;
    let out = run(srv.ssh("daemon", &[], &["true"])).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr)
            .contains("tailnet policy does not permit you to SSH to this node as daemon"),
        "{}",
        text(&out.stderr)
    );

    // An unknown source address is refused.
    let mut unknown = FakeAuthz::new();
    unknown.known = false;
    let srv = start(unknown).await;
    let out = run(srv.ssh(&user.name, &[], &["true"])).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("does not know the tailnet address 127.0.0.1"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batchmode_client_sees_the_check_url_and_gets_in_after_approving_there() {
    if !e2e_ready() {
        return;
    }
    let user = TestUser::create("q");
    let srv = start(FakeAuthz::new().with(
        &user.name,
        Rule::Check(user.name.clone(), Duration::from_secs(3600)),
    ))
    .await;
    let batch = ["-o", "BatchMode=yes"];
    let out = run(srv.ssh(&user.name, &batch, &["echo first"])).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    assert!(out.stdout.is_empty());
    assert_eq!(
        stderr
            .matches("To continue, visit: https://control.test/ssh/check/42")
            .count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("then connect again"), "{stderr}");
    // The client is gone, the check is not: control records the approval
    // given at the URL...
    assert_eq!(*srv.check.waiting.borrow(), 1, "the check keeps running");
    srv.check.decide(CheckOutcome::Approved);
    let mut waiting = srv.check.waiting.subscribe();
    tokio::time::timeout(Duration::from_secs(10), waiting.wait_for(|n| *n == 0))
        .await
        .unwrap()
        .unwrap();
    // ...and the next connection gets in at `none`, without a URL.
    let out = run(srv.ssh(&user.name, &batch, &["echo second"])).await;
    assert_eq!(text(&out.stdout), "second\n", "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("visit:"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(*srv.check.started.borrow(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_holds_the_login_until_approved_and_an_answer_at_once_shows_no_prompt() {
    if !e2e_ready() {
        return;
    }
    let user = TestUser::create("c");
    let srv = start(FakeAuthz::new().with(
        &user.name,
        Rule::Check(user.name.clone(), Duration::from_secs(3600)),
    ))
    .await;
    let mut started = srv.check.started.subscribe();

    let mut child = srv
        .ssh(&user.name, &[], &["echo approved-session"])
        .spawn()
        .unwrap();
    // `none` asks and, without an answer within a second, shows the URL; the
    // keyboard-interactive round waits for that same check.
    tokio::time::timeout(Duration::from_secs(20), started.wait_for(|n| *n == 1))
        .await
        .unwrap()
        .unwrap();
    // Held: the client has not finished (give it time to show the URL and wait).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "login must be held until approval"
    );
    srv.check.decide(CheckOutcome::Approved);
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "approved-session\n");
    assert_eq!(
        text(&out.stderr)
            .matches("https://control.test/ssh/check/42")
            .count(),
        1,
        "the URL is shown once: {}",
        text(&out.stderr)
    );
    assert_eq!(*srv.check.started.borrow(), 1);

    // Within checkPeriod control answers the next check at once (the fake
    // keeps its decision, as control keeps the approval): no prompt, no URL.
    // The node itself remembers nothing, so a revoke at control holds it.
    let out = run(srv.ssh(&user.name, &[], &["echo again"])).await;
    assert_eq!(text(&out.stdout), "again\n");
    assert_eq!(*srv.check.started.borrow(), 2);
    assert!(
        !text(&out.stderr).contains("https://control.test/ssh/check/42"),
        "{}",
        text(&out.stderr)
    );
    // BatchMode clients never try keyboard-interactive: the answer at `none`
    // lets them in too.
    let out = run(srv.ssh(&user.name, &["-o", "BatchMode=yes"], &["echo batch"])).await;
    assert_eq!(text(&out.stdout), "batch\n", "{}", text(&out.stderr));
    assert_eq!(*srv.check.started.borrow(), 3);

    // A denial refuses with the control server's message.
    let srv =
        start(FakeAuthz::new().with(&user.name, Rule::Check(user.name.clone(), Duration::ZERO)))
            .await;
    srv.check.decide(CheckOutcome::Denied {
        message: "re-authentication was denied".into(),
    });
    let out = run(srv.ssh(&user.name, &[], &["echo nope"])).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr).contains("re-authentication was denied"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_closes_sessions_it_no_longer_allows_and_keeps_the_others() {
    if !e2e_ready() {
        return;
    }
    let alice = TestUser::create("k");
    let bob = TestUser::create("b");
    let both = FakeAuthz::new()
        .with(&alice.name, Rule::Accept(alice.name.clone()))
        .with(&bob.name, Rule::Accept(bob.name.clone()));
    let srv = start(both).await;

    let mut a = srv.ssh(&alice.name, &[], &["echo started; sleep 300"]);
    a.stdin(Stdio::piped());
    let a = a.spawn().unwrap();
    let mut b = srv.ssh(&bob.name, &[], &["echo started; sleep 300"]);
    b.stdin(Stdio::piped());
    let mut b = b.spawn().unwrap();
    wait_for(Duration::from_secs(20), || {
        (srv.server.connections().len() == 2).then_some(())
    })
    .await;
    // Both sessions' processes run.
    let sleeping = |uid: u32| {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| {
                let p = e.path();
                let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
                let status = std::fs::read_to_string(p.join("status")).unwrap_or_default();
                comm.trim() == "sleep" && status.contains(&format!("Uid:\t{uid}\t"))
            })
    };
    wait_for(Duration::from_secs(10), || {
        (sleeping(alice.uid) && sleeping(bob.uid)).then_some(())
    })
    .await;

    let update = srv
        .server
        .update_policy(
            FakeAuthz::new()
                .with(&bob.name, Rule::Accept(bob.name.clone()))
                .arc(),
        )
        .await;
    assert_eq!((update.kept, update.closed), (1, 1));
    let out = tokio::time::timeout(Duration::from_secs(20), a.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("tailnet policy does not permit you to SSH to this node as"),
        "{err}"
    );
    // Alice's process is gone; Bob's session is untouched.
    wait_for(Duration::from_secs(10), || {
        (!sleeping(alice.uid)).then_some(())
    })
    .await;
    assert!(sleeping(bob.uid));
    assert!(b.try_wait().unwrap().is_none());
    assert_eq!(srv.server.connections().len(), 1);

    // Graceful shutdown ends the rest.
    srv.server.shutdown(Duration::from_secs(5)).await;
    let st = tokio::time::timeout(Duration::from_secs(20), b.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!st.success());
    wait_for(Duration::from_secs(10), || {
        (!sleeping(bob.uid)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_from_a_local_program_logs_in_only_as_the_account_that_opened_it() {
    if !e2e_ready() {
        return;
    }
    let user = TestUser::create("l");
    let other = TestUser::create("o");
    // The policy would let anyone in as root, the user or the other account.
    let authz = |local_uid| {
        let mut a = FakeAuthz::new()
            .with("root", Rule::Accept("root".into()))
            .with(&user.name, Rule::Accept(user.name.clone()))
            .with(&other.name, Rule::Accept(other.name.clone()));
        a.local_uid = Some(local_uid);
        a
    };

    // Opened by the user: only the user's own account.
    let srv = start(authz(user.uid)).await;
    for target in ["root", other.name.as_str()] {
        let out = run(srv.ssh(target, &[], &["id -un"])).await;
        assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
        assert!(out.stdout.is_empty(), "logged in as {target}");
        let why = text(&out.stderr);
        assert!(
            why.contains(&format!("local uid {}", user.uid))
                && why.contains(&format!("not as {target}"))
                && why.contains("sudo or su"),
            "{why}"
        );
    }
    let out = run(srv.ssh(&user.name, &[], &["id -un"])).await;
    assert_eq!(
        text(&out.stdout),
        format!("{}\n", user.name),
        "{}",
        text(&out.stderr)
    );

    // Opened by root: whatever the policy allows.
    let srv = start(authz(0)).await;
    for target in ["root", other.name.as_str()] {
        let out = run(srv.ssh(target, &[], &["id -un"])).await;
        assert_eq!(
            text(&out.stdout),
            format!("{target}\n"),
            "{}",
            text(&out.stderr)
        );
    }
}
