//! OIDC single sign-on end to end: real `weft-control` (with `--oidc-*`), `weftd` and `weft` in
//! network namespaces, a real OpenID Provider (`tests/web/idp.mjs`, oidc-provider) and Debian's
//! chromium driven by `tests/web/oidc-login.mjs`.
//!
//! The IdP listens on 127.0.0.1 inside control's namespace (an `http` issuer is accepted on
//! loopback only), and the browser runs there too: it reaches control at its underlay address
//! and the IdP on loopback, as a user's browser reaches both. Users: alice@example.com in
//! `engineering`, eve@other.test (outside the allowed domain `example.com`).
//!
//! - `weft up` on `a` prints a URL; the browser follows it, signs in as alice at the IdP,
//!   consents, and lands on "Device approved"; `weft up` ends with Success; `nodes list --json`
//!   shows `a` under alice@example.com; the policy grants `group:oidc:engineering` ICMP/TCP to
//!   `tag:target` and `a` pings `t`; `policy explain` names the group.
//! - The same callback URL replayed is refused (the state is one-shot).
//! - eve's login is refused with a page that names the domain rule; no node is registered.
//! - alice leaves `engineering` at the IdP (its user file is rewritten), `weft up --force-reauth`
//!   and the browser again: the filter pushed to `t` drops `a`'s packets.
//!
//! Screenshots go to `$WEFT_WEB_ARTIFACTS` (the lab's run dir, `web/`).
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use weft_lab::tailnet::{Binaries, Control, ControlOptions, KeyOptions, Node, Tailnet};
use weft_lab::{Lab, Process, e2e_lab, wait_for, wait_until, web, with_diagnostics};

const SECS: fn(u64) -> Duration = Duration::from_secs;
const WEFTD: &str = env!("CARGO_BIN_EXE_weftd");
const IDP_ADDR: &str = "127.0.0.1:9000";
const CLIENT_SECRET: &str = "weft-e2e-client-secret";
const ALICE: &str = "alice@example.com";
const OPS: &str = "ops@example.com";

const POLICY: &str = r#"{
  "tagOwners": {"tag:target": ["ops@example.com"]},
  "acls": [
    {"action": "accept", "src": ["group:oidc:engineering"], "dst": ["tag:target:*"]},
  ],
}"#;

fn users_json(alice_groups: &[&str]) -> String {
    serde_json::json!([
        {"login": "alice", "email": ALICE, "name": "Alice Example", "groups": alice_groups},
        {"login": "eve", "email": "eve@other.test", "name": "Eve Outsider", "groups": ["engineering"]},
    ])
    .to_string()
}

struct Idp {
    process: Process,
}

/// Starts the IdP in control's namespace with the users of `users_file`.
fn start_idp(control: &Control, users_file: &Path) -> anyhow::Result<Idp> {
    let redirect = format!("{}/login/oidc/callback", control.url());
    let process = control
        .netns()
        .command("node")
        .arg(web::script("idp.mjs").display().to_string())
        .args(["--listen", IDP_ADDR, "--client-id", "weft"])
        .args([
            "--client-secret",
            CLIENT_SECRET,
            "--redirect-uri",
            &redirect,
        ])
        .args(["--users", &users_file.display().to_string()])
        .spawn("idp")?;
    wait_for(SECS(20), "the IdP to be ready", || {
        process.ensure_running()?;
        Ok(process.log().contains("idp ready").then_some(()))
    })?;
    Ok(Idp { process })
}

/// Runs the browser in control's namespace: follows `url`, signs in as `login`.
fn browser(
    lab: &Lab,
    control: &Control,
    url: &str,
    login: &str,
    shot: &str,
) -> anyhow::Result<serde_json::Value> {
    let out = control
        .netns()
        .command("node")
        .arg(web::script("oidc-login.mjs").display().to_string())
        .args([url, login, "any-password", shot])
        .env(
            "WEFT_WEB_ARTIFACTS",
            lab.dir().join("web").display().to_string(),
        )
        .env("IDP_ORIGIN", format!("http://{IDP_ADDR}"))
        .timeout(SECS(60))
        .run()?;
    let line = out.stdout.lines().last().unwrap_or_default().to_owned();
    serde_json::from_str(&line)
        .with_context(|| format!("browser output: {}\n{}", out.stdout, out.stderr))
}

/// Starts `weft up` (interactive) on `node`; returns it and the URL it printed.
fn up_interactive(
    node: &Node,
    control: &Control,
    extra: &[&str],
) -> anyhow::Result<(Process, String)> {
    let server = control.url();
    let mut args = vec![
        "up",
        "--login-server",
        &server,
        "--hostname",
        node.name(),
        "--timeout",
        "60s",
    ];
    args.extend_from_slice(extra);
    let up = node.weft(args).spawn("weft-up")?;
    let url = wait_for(SECS(20), "weft up to print a login URL", || {
        let log = up.log();
        let Some(after) = log.split("To authenticate, visit:").nth(1) else {
            ensure!(up.is_running(), "weft up ended without a URL:\n{log}");
            return Ok(None);
        };
        Ok(after.split_whitespace().next().map(str::to_owned))
    })?;
    Ok((up, url))
}

fn pings(from: &Node, to: IpAddr) -> bool {
    from.netns().ping(to, 1).is_ok()
}

fn nodes_of(control: &Control, login: &str) -> anyhow::Result<Vec<String>> {
    Ok(control
        .nodes()?
        .iter()
        .filter(|n| n["user"] == login)
        .map(|n| {
            n["given_name"]
                .as_str()
                .or(n["name"].as_str())
                .unwrap_or_default()
                .to_owned()
        })
        .collect())
}

#[test]
fn oidc_login_registers_the_node_to_the_user_refuses_outsiders_and_idp_groups_drive_the_policy()
-> anyhow::Result<()> {
    let lab = e2e_lab!(
        "node",
        "ping",
        web::CHROMIUM,
        web::PLAYWRIGHT,
        web::OIDC_PROVIDER,
        "/dev/net/tun"
    );
    let tailnet = Tailnet::with_binaries(&lab, Binaries::discover()?.with_weftd(WEFTD))?;
    let secret = lab.dir().join("oidc-client-secret");
    std::fs::write(&secret, CLIENT_SECRET)?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
    }
    let users_file = lab.dir().join("idp-users.json");
    std::fs::write(&users_file, users_json(&["engineering"]))?;
    let serve_args = [
        "--oidc-issuer",
        &format!("http://{IDP_ADDR}"),
        "--oidc-client-id",
        "weft",
        "--oidc-client-secret-file",
        &secret.display().to_string(),
        "--oidc-scopes",
        "openid,email,profile,groups",
        "--oidc-allowed-domains",
        "example.com",
    ]
    .map(str::to_owned)
    .to_vec();
    let control = tailnet.control_with("ctl", ControlOptions { serve_args })?;
    let idp = start_idp(&control, &users_file)?;
    control.create_user(OPS)?;
    control.set_policy(POLICY)?;
    let t = tailnet.node("t")?;
    let key = control.create_key(
        OPS,
        &KeyOptions {
            tags: vec!["tag:target".into()],
            ..KeyOptions::default()
        },
    )?;
    t.up(&control, &key).run()?;
    let a = tailnet.node("a")?;
    let e = tailnet.node("e")?;
    let report = || {
        format!(
            "=== control ===\n{}\n=== idp ===\n{}\n{}\n{}\n{}",
            control.log(),
            idp.process.log(),
            a.report(),
            e.report(),
            t.report()
        )
    };
    with_diagnostics(
        || {
            // --- alice signs in at the IdP: the node is hers -------------------------------------
            let (up, url) = up_interactive(&a, &control, &[])?;
            ensure!(url.starts_with(&control.url()), "login URL {url}");
            let page = browser(&lab, &control, &url, "alice", "oidc-alice")?;
            ensure!(
                page["title"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("Device approved"),
                "{page}"
            );
            ensure!(
                page["text"].as_str().unwrap_or_default().contains(ALICE),
                "{page}"
            );
            let status = up.wait_exit(SECS(20))?;
            ensure!(
                status.success() && up.log().contains("Success."),
                "weft up: {status}\n{}",
                up.log()
            );
            ensure!(
                nodes_of(&control, ALICE)?.iter().any(|n| n == "a"),
                "nodes: {:?}",
                control.nodes()?
            );

            // The callback replayed (same state and code): refused, nothing changes.
            let callback = page["url"].as_str().unwrap_or_default().to_owned();
            ensure!(callback.contains("/login/oidc/callback?"), "{page}");
            let replay = browser(&lab, &control, &callback, "alice", "oidc-replay")?;
            ensure!(
                replay["status"] == 400
                    && replay["text"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("already completed"),
                "{replay}"
            );

            // --- the group grants access to t over real packets; explain names the group ---------
            let t_ip = t.ip4()?;
            a.netns().wait_ping(t_ip.into(), SECS(20))?;
            let x = control.explain("a", "t:22", None)?;
            ensure!(
                x.stdout
                    .contains("group:oidc:engineering (a group of the identity provider"),
                "{}",
                x.stdout
            );

            // --- eve, outside the allowed domain: a refusal page, no node ------------------------
            let (eup, eurl) = up_interactive(&e, &control, &[])?;
            let page = browser(&lab, &control, &eurl, "eve", "oidc-refused")?;
            ensure!(page["status"] == 403, "{page}");
            let text = page["text"].as_str().unwrap_or_default();
            ensure!(
                text.contains("eve@other.test is not in an allowed domain (allowed: example.com)"),
                "{page}"
            );
            ensure!(
                text.contains("allowed-domains"),
                "the page says what to do: {page}"
            );
            ensure!(
                eup.is_running(),
                "e keeps waiting for a login:\n{}",
                eup.log()
            );
            ensure!(
                control.nodes()?.iter().all(|n| n["hostname"] != "e"),
                "no node for eve: {:?}",
                control.nodes()?
            );
            eup.stop()?;

            // --- alice leaves engineering at the IdP; her next login takes the access away -------
            std::fs::write(&users_file, users_json(&[]))?;
            let (up, url) = up_interactive(&a, &control, &["--force-reauth"])?;
            let page = browser(&lab, &control, &url, "alice", "oidc-reauth")?;
            ensure!(
                page["title"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("Device approved"),
                "{page}"
            );
            let status = up.wait_exit(SECS(20))?;
            ensure!(
                status.success(),
                "weft up --force-reauth: {status}\n{}",
                up.log()
            );
            wait_until(
                SECS(15),
                "ICMP from a to t to fail after alice left engineering",
                || Ok(!pings(&a, t_ip.into())),
            )?;
            let x = control
                .admin(["policy", "explain", "--src", "a", "--dst", "t:22"])
                .run_unchecked()?;
            ensure!(
                !x.status.success()
                    && x.stdout.contains("DENIED")
                    && x.stdout
                        .contains("is not a member of group:oidc:engineering"),
                "{}",
                x.stdout
            );
            Ok(())
        },
        report,
    )
}
