//! SSH check mode end to end: real `weft-control`, `weftd` and `weft` in network namespaces
//! (`weft_lab::tailnet`) and Debian's OpenSSH client.
//!
//! The tailnet: user `alice@example.com` owns node `a` (the SSH client); node `b` is tagged
//! `tag:server` and runs `weft up --ssh`. The policy's only SSH rule is a `check` rule (members to
//! `tag:server` as any non-root user, `checkPeriod` 1 h). A login from `a` to `b` is held: `ssh`
//! prints the control server's `/a/<id>` URL (keyboard-interactive instruction text) and waits;
//! `weft-control nodes approve <id> --user alice@example.com` lets it in; another user's approval
//! is refused; a second login within the period goes straight through (also in `BatchMode`:
//! `b` asks control at `none`), and a third one too after control restarts (approvals are in its
//! database; `b` keeps none of its own) until `weft-control ssh approvals revoke`, which holds the
//! very next login;
//! a login nobody approves is refused once `b`'s bound (`WEFTD_SSH_CHECK_TIMEOUT`, a few seconds
//! here) has passed.
//!
//! Needs root, `setpriv`, `ssh`, `useradd` and `/dev/net/tun`; skips without them unless
//! `WEFT_E2E=1`. The two scenarios run as parallel tests; every wait is bounded; a failure
//! carries each daemon's status and log.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use anyhow::ensure;
use weft_lab::tailnet::{Control, Node, NodeOptions, Tailnet};
use weft_lab::{Lab, Process, e2e_lab, wait_for, with_diagnostics};

use crate::ssh_common::{self, ALICE, SECS, alice_key, ok, tailnet_and_control, wait_ssh_ready};

const BOB: &str = "bob@example.com";

macro_rules! lab {
    () => {
        e2e_lab!("setpriv", "ssh", "useradd", "userdel", "/dev/net/tun")
    };
}

// ---- local accounts ------------------------------------------------------------------------

use weft_lab::account::LocalAccount;

// ---- the tailnet ---------------------------------------------------------------------------

const POLICY: &str = r#"{
  "tagOwners": {"tag:server": ["alice@example.com"]},
  "acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["*:*"]}],
  "ssh": [
    {"action": "check", "src": ["autogroup:member"], "dst": ["tag:server"],
     "users": ["autogroup:nonroot"], "checkPeriod": "1h"},
  ],
}"#;

struct Net<'l> {
    tailnet: Tailnet<'l>,
    control: Control,
    a: Node,
    b: Node,
}

impl Net<'_> {
    fn report(&self) -> String {
        format!(
            "=== control ===\n{}\n{}\n{}\n",
            self.control.log(),
            self.a.report(),
            self.b.report()
        )
    }
}

/// Control with the check policy, `a` (alice's) and `b` (`tag:server`, `--ssh`, waiting at most
/// `check_timeout` for an approval); returns once `a` has `b`'s host keys and `b` listens on 22.
fn tailnet(lab: &Lab, check_timeout: Duration) -> anyhow::Result<Net<'_>> {
    let (tailnet, control) = tailnet_and_control(lab, &[ALICE, BOB], POLICY)?;
    let a = tailnet.node("a")?;
    a.up(&control, &alice_key(&control, &[])?).run()?;
    let env = vec![(
        "WEFTD_SSH_CHECK_TIMEOUT".to_owned(),
        check_timeout.as_secs().to_string(),
    )];
    let b = tailnet.node_with(
        "b",
        NodeOptions {
            env,
            ..NodeOptions::default()
        },
    )?;
    b.up(&control, &alice_key(&control, &["tag:server"])?)
        .arg("--ssh")
        .run()?;
    let net = Net {
        tailnet,
        control,
        a,
        b,
    };
    with_diagnostics(|| wait_ssh_ready(&net.a, &net.b), || net.report())?;
    Ok(net)
}

// ---- running the client ----------------------------------------------------------------------

/// `weft ssh <target>@b <remote>` on `a` as `client` (host keys pinned through the known_hosts
/// file `weft ssh` writes; no `BatchMode`: an interactive client is held until approval, where a
/// BatchMode one ends after printing the URL).
fn weft_ssh(net: &Net<'_>, client: &LocalAccount, target: &str, remote: &str) -> weft_lab::Cmd {
    ssh_common::weft_ssh(
        &net.tailnet,
        &net.a,
        client,
        &[&format!("{target}@b"), remote],
    )
}

/// Returns the check id in the first `/a/<32 hex>` URL of `text`.
fn check_id(text: &str) -> Option<String> {
    text.match_indices("/a/").find_map(|(i, _)| {
        let id = text.get(i + 3..i + 35)?;
        id.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            .then(|| id.to_owned())
    })
}

/// Waits until the held `ssh` has printed the URL; returns the check id.
fn wait_url(p: &Process) -> anyhow::Result<String> {
    Ok(wait_for(SECS(30), "ssh to print the check URL", || {
        ensure!(
            p.is_running(),
            "ssh ended before showing a URL:\n{}",
            p.log()
        );
        Ok(check_id(&p.log()))
    })?)
}

// ---- the scenarios -------------------------------------------------------------------------

#[test]
fn check_holds_the_login_until_its_user_approves_and_a_second_login_within_the_period_goes_through()
-> anyhow::Result<()> {
    let lab = lab!();
    let client = LocalAccount::create("wck", "c")?;
    let target = LocalAccount::create("wck", "t")?;
    let net = tailnet(&lab, SECS(120))?;
    with_diagnostics(
        || {
            let held = weft_ssh(&net, &client, &target.name, "id -un").spawn("ssh-held")?;
            let id = wait_url(&held)?;
            let log = held.log();
            ensure!(
                log.contains("re-authenticate")
                    && log.contains(&format!("{}/a/{id}", net.control.url())),
                "{log}"
            );

            // Bob cannot approve alice's login; ssh keeps waiting.
            let bob = net
                .control
                .admin(["nodes", "approve", &id, "--user", BOB])
                .run_unchecked()?;
            ensure!(
                !bob.status.success(),
                "bob's approval was accepted: {bob:?}"
            );
            ensure!(
                bob.stderr.contains(&format!("only {ALICE} may approve it")),
                "{}",
                bob.stderr
            );
            ensure!(
                held.is_running(),
                "ssh ended without an approval:\n{}",
                held.log()
            );

            let approved = net
                .control
                .admin(["nodes", "approve", &id, "--user", ALICE])
                .run()?;
            // What was approved, not registration wording.
            ensure!(
                approved
                    .stdout
                    .starts_with(&format!("approved SSH check: {ALICE} from "))
                    && approved.stdout.contains(&format!(" as {}", target.name))
                    && !approved.stdout.contains("owns"),
                "{}",
                approved.stdout
            );
            let status = held.wait_exit(SECS(30))?;
            let log = held.log();
            ensure!(
                status.success(),
                "the approved login failed ({status}):\n{log}"
            );
            ensure!(
                log.lines().any(|l| l == target.name),
                "the session did not run as {}:\n{log}",
                target.name
            );

            // Within the check period: straight in, no URL.
            let again = weft_ssh(&net, &client, &target.name, "id -un").run_unchecked()?;
            ok(&again, "the second login")?;
            ensure!(again.stdout == format!("{}\n", target.name), "{again:?}");
            ensure!(
                check_id(&again.stderr).is_none(),
                "the second login was asked again: {}",
                again.stderr
            );
            let b_log = net.b.log();
            ensure!(
                b_log.contains("ssh check approved by control"),
                "b logged no approval"
            );
            // BatchMode skips keyboard-interactive: b's check at `none` lets it in.
            let batch = ssh_common::weft_ssh(
                &net.tailnet,
                &net.a,
                &client,
                &[
                    &format!("{}@b", target.name),
                    "-o",
                    "BatchMode=yes",
                    "id -un",
                ],
            )
            .run_unchecked()?;
            ok(&batch, "a BatchMode login within the period")?;
            ensure!(batch.stdout == format!("{}\n", target.name), "{batch:?}");

            // Control restarts between two logins within the period: the approval is in its
            // database, so still straight in; `b` keeps no approvals and asks control each time.
            net.control.stop()?;
            net.control.start()?;
            let third = weft_ssh(&net, &client, &target.name, "id -un").run_unchecked()?;
            ok(&third, "the login after a control restart")?;
            ensure!(third.stdout == format!("{}\n", target.name), "{third:?}");
            // b asked; control let it through from its database, with nobody approving.
            ensure!(
                net.b.log().contains("ssh check approved by control"),
                "b did not ask control after its restart:\n{}",
                net.b.log()
            );
            ensure!(
                net.control
                    .log()
                    .contains("ssh check accepted: approved within the check period"),
                "control did not find the approval after its restart:\n{}",
                net.control.log()
            );
            let listed = net
                .control
                .admin(["ssh", "approvals", "list"])
                .run()?
                .stdout;
            ensure!(listed.contains(ALICE), "{listed}");

            // Revoked at control: the very next login is held (b remembers nothing).
            net.control
                .admin(["ssh", "approvals", "revoke", "--user", ALICE])
                .run()?;
            // A BatchMode client is shown the URL in a banner and ends there (exit 255, no
            // session); b keeps the check running, so approving that URL afterwards lets the
            // next BatchMode login in.
            let batch_login = || {
                ssh_common::weft_ssh(
                    &net.tailnet,
                    &net.a,
                    &client,
                    &[
                        &format!("{}@b", target.name),
                        "-o",
                        "BatchMode=yes",
                        "id -un",
                    ],
                )
                .run_unchecked()
            };
            let refused = batch_login()?;
            ensure!(
                refused.status.code() == Some(255) && refused.stdout.is_empty(),
                "a revoked approval still let the login in: {refused:?}"
            );
            let id = check_id(&refused.stderr).ok_or_else(|| {
                anyhow::anyhow!("BatchMode showed no check URL: {}", refused.stderr)
            })?;
            ensure!(
                refused.stderr.contains("then connect again"),
                "{}",
                refused.stderr
            );
            net.control
                .admin(["nodes", "approve", &id, "--user", ALICE])
                .run()?;
            let after = batch_login()?;
            ok(&after, "a BatchMode login after its URL was approved")?;
            ensure!(
                after.stdout == format!("{}\n", target.name) && check_id(&after.stderr).is_none(),
                "{after:?}"
            );
            Ok(())
        },
        || net.report(),
    )
}

#[test]
fn a_check_nobody_approves_is_refused_after_the_bound() -> anyhow::Result<()> {
    let lab = lab!();
    let client = LocalAccount::create("wck", "c")?;
    let target = LocalAccount::create("wck", "t")?;
    let net = tailnet(&lab, SECS(4))?;
    with_diagnostics(
        || {
            let held = weft_ssh(&net, &client, &target.name, "id -un").spawn("ssh-unapproved")?;
            let id = wait_url(&held)?;
            let status = held.wait_exit(SECS(30))?;
            let log = held.log();
            ensure!(!status.success(), "an unapproved login got in:\n{log}");
            ensure!(
                log.contains("not approved within 4 seconds"),
                "no reason shown:\n{log}"
            );
            ensure!(
                !log.lines().any(|l| l == target.name),
                "a session ran:\n{log}"
            );
            // Too late to approve now.
            let late = net
                .control
                .admin(["nodes", "approve", &id, "--user", ALICE])
                .run_unchecked()?;
            ensure!(
                !late.status.success(),
                "a late approval was accepted: {late:?}"
            );
            Ok(())
        },
        || net.report(),
    )
}
