//! Issue 19, the first hour of a new user, CLI side: the everyday `weft up` of a self-hosted node
//! (the login server remembered per profile, a system-wide default, a server that never
//! registered the node replaced freely, identity flags refused naming themselves),
//! `--advertise-tags` on a registered node, profiles (`switch --list` columns, `logout`,
//! `status --json` self after `switch`), `whois` by name and `status --header`.
//!
//! Real `weft-control`, `weftd` and `weft` binaries in network namespaces (`weft_lab::tailnet`);
//! needs root, `ping`, `runuser` and `/dev/net/tun`, skips without them unless `WEFT_E2E=1`.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use anyhow::{Context as _, ensure};
use weft_lab::tailnet::{Binaries, Control, ControlOptions, KeyOptions, Node, Tailnet};
use weft_lab::{Lab, e2e_lab, with_diagnostics};

const WEFTD: &str = env!("CARGO_BIN_EXE_weftd");
const SECS: fn(u64) -> Duration = Duration::from_secs;
const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";

macro_rules! lab {
    () => {
        e2e_lab!("ping", "runuser", "/dev/net/tun")
    };
}

fn tailnet(lab: &Lab) -> anyhow::Result<Tailnet<'_>> {
    Ok(Tailnet::with_binaries(
        lab,
        Binaries::discover()?.with_weftd(WEFTD),
    )?)
}

fn report(controls: &[&Control], nodes: &[&Node]) -> String {
    let mut s = String::new();
    for c in controls {
        s.push_str(&format!("=== control {} ===\n{}\n", c.name(), c.log()));
    }
    for n in nodes {
        s.push_str(&n.report());
        s.push('\n');
    }
    s
}

/// Returns `weft debug prefs` (the current profile's prefs and identity) as JSON.
fn prefs(n: &Node) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(
        &n.weft(["debug", "prefs"]).run()?.stdout,
    )?)
}

/// Returns the tags of `self` in `status --json`, sorted.
fn self_tags(status: &serde_json::Value) -> Vec<String> {
    let mut tags: Vec<String> = status["self"]["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    tags.sort();
    tags
}

/// Checks a refusal: non-zero exit, one line on stderr holding every one of `words`.
fn refused(out: &weft_lab::Output, words: &[&str]) -> anyhow::Result<()> {
    ensure!(!out.status.success(), "not refused: {out:?}");
    let err = out.stderr.trim_end();
    ensure!(err.lines().count() == 1, "not one line: {err}");
    for w in words {
        ensure!(err.contains(w), "{w:?} missing from: {err}");
    }
    Ok(())
}

#[test]
fn a_self_hosted_node_joins_changes_its_flags_and_tags_the_everyday_way() -> anyhow::Result<()> {
    let lab = lab!();
    let net = tailnet(&lab)?;
    let control = net.control("ctl")?;
    control.ensure_user(ALICE)?;
    control.ensure_user(BOB)?;
    let key = control.create_key(ALICE, &KeyOptions::reusable())?;
    let f1 = net.node("f1")?;
    let f2 = net.node("f2")?;
    with_diagnostics(
        || {
            let url = control.url();
            // A typo'd server (nothing listens on port 9): the profile never registers there ...
            let typo = format!("http://{}:9", control.addr());
            let out = f1
                .weft(["up", "--login-server", &typo, "--authkey", &key])
                .args(["--hostname", "f1", "--timeout", "3s"])
                .run_unchecked()?;
            ensure!(!out.status.success(), "up against the typo: {out:?}");
            // ... so the corrected URL replaces it without --force-reauth.
            let out = f1
                .weft(["up", "--login-server", &url, "--authkey", &key])
                .args(["--hostname", "f1", "--timeout", "30s"])
                .run_unchecked()?;
            ensure!(out.status.success(), "the corrected server: {out:?}");

            // The system-wide default: `weft up` with only a key joins this server.
            let out = f2
                .weft(["up", "--authkey", &key, "--timeout", "30s"])
                .env("WEFT_LOGIN_SERVER", &url)
                .run_unchecked()?;
            ensure!(out.status.success(), "up with the default server: {out:?}");
            ensure!(prefs(&f2)?["prefs"]["control_url"] == url.as_str());
            f1.wait_state("running", SECS(30))?;
            f2.wait_state("running", SECS(30))?;
            let f1_ip = f1.ip4()?.to_string();

            // The everyday flags after joining, without repeating --login-server.
            for flags in [
                &["up", "--ssh"][..],
                &["up", "--ssh", "--shields-up"],
                &["up", "--ssh", "--shields-up", "--accept-dns=false"],
            ] {
                let out = f2.weft(flags).run_unchecked()?;
                ensure!(out.status.success(), "weft {flags:?}: {out:?}");
            }
            let p = prefs(&f2)?;
            ensure!(
                p["prefs"]["control_url"] == url.as_str()
                    && p["prefs"]["run_ssh"] == true
                    && p["prefs"]["shields_up"] == true
                    && p["prefs"]["accept_dns"] == false,
                "{p}"
            );
            let st = f2.wait_state("running", SECS(20))?;
            ensure!(st["filter"]["shields_up"] == true, "{}", st["filter"]);

            // Identity-changing flags on a registered node: refused naming the flag, nothing
            // changed.
            let before = prefs(&f1)?;
            let elsewhere = format!("http://{}:8080", f2.underlay_addr());
            let out = f1
                .weft(["up", "--hostname", "f1", "--login-server", &elsewhere])
                .run_unchecked()?;
            refused(&out, &["--login-server", &elsewhere, "--force-reauth"])?;
            let out = f1
                .weft(["up", "--hostname", "f1", "--advertise-tags", "tag:web"])
                .run_unchecked()?;
            refused(&out, &["--advertise-tags", "tag:web", "--force-reauth"])?;
            ensure!(prefs(&f1)? == before, "a refusal changed the prefs");

            // --advertise-tags with --force-reauth: control checks tagOwners and applies it.
            control.set_policy(
                r#"{
  "tagOwners": {"tag:web": ["alice@example.com"], "tag:db": ["bob@example.com"]},
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
}"#,
            )?;
            let out = f1
                .weft(["up", "--hostname", "f1", "--advertise-tags", "tag:web"])
                .args(["--force-reauth", "--authkey", &key, "--timeout", "30s"])
                .run_unchecked()?;
            ensure!(out.status.success(), "tagging: {out:?}");
            f1.wait_status(SECS(20), "self tagged tag:web", |v| {
                self_tags(v) == ["tag:web"]
            })?;
            // A tag alice does not own: control refuses with the reason; the tags stay.
            let out = f1
                .weft([
                    "up",
                    "--hostname",
                    "f1",
                    "--advertise-tags",
                    "tag:db,tag:web",
                ])
                .args(["--force-reauth", "--authkey", &key, "--timeout", "30s"])
                .run_unchecked()?;
            refused(&out, &["tagOwners", "tag:db"])?;
            let p = prefs(&f1)?;
            ensure!(
                p["prefs"]["advertise_tags"] == serde_json::json!(["tag:web"]),
                "the refused login left its tags in the prefs: {p}"
            );
            f1.wait_state("running", SECS(20))?;
            let node = control
                .nodes()?
                .into_iter()
                .find(|n| n["hostname"] == "f1")
                .context("f1 at control")?;
            ensure!(node["tags"] == serde_json::json!(["tag:web"]), "{node}");
            // Dropping a tag control applied: refused, naming the admin command.
            let out = f1
                .weft(["up", "--hostname", "f1", "--advertise-tags="])
                .arg("--force-reauth")
                .run_unchecked()?;
            refused(&out, &["tag:web", "weft-control nodes tags"])?;

            // whois by name and by address agree; status --header names the columns.
            let by_ip = f2.weft(["whois", &f1_ip]).run()?.stdout;
            let by_name = f2.weft(["whois", "f1"]).run()?.stdout;
            ensure!(
                by_ip == by_name && by_ip.contains("f1."),
                "{by_ip}\n{by_name}"
            );
            let json_ip = f2.weft(["whois", "--json", &f1_ip]).run()?.stdout;
            let json_name = f2.weft(["whois", "--json", "f1"]).run()?.stdout;
            ensure!(json_ip == json_name, "{json_ip}\n{json_name}");
            let out = f2.weft(["whois", "nosuchnode"]).run_unchecked()?;
            refused(&out, &["nosuchnode"])?;
            let header = f2.weft(["status", "--header"]).run()?.stdout;
            let first = header.lines().next().unwrap_or_default();
            ensure!(
                first.split_whitespace().collect::<Vec<_>>()
                    == ["IP", "Name", "Owner", "OS", "Status"],
                "{header}"
            );
            let plain = f2.weft(["status"]).run()?.stdout;
            ensure!(!plain.starts_with("IP "), "no header by default: {plain}");
            Ok(())
        },
        || report(&[&control], &[&f1, &f2]),
    )
}

#[test]
fn switch_lists_servers_accounts_and_nicknames_and_logout_leaves_no_empty_profile()
-> anyhow::Result<()> {
    let lab = lab!();
    let net = tailnet(&lab)?;
    let home = net.control("home")?;
    let work = net.control_with(
        "work",
        ControlOptions {
            serve_args: vec!["--domain".into(), "work.internal".into()],
        },
    )?;
    home.ensure_user(ALICE)?;
    work.ensure_user(BOB)?;
    let home_key = home.create_key(ALICE, &KeyOptions::reusable())?;
    let work_key = work.create_key(BOB, &KeyOptions::reusable())?;
    let p1 = net.node("p1")?;
    with_diagnostics(
        || {
            p1.up_with_key(&home, &home_key)?;
            p1.weft([
                "login",
                "--login-server",
                &work.url(),
                "--authkey",
                &work_key,
            ])
            .args(["--hostname", "p1", "--nickname", "job", "--timeout", "30s"])
            .run()?;
            p1.wait_state("running", SECS(30))?;

            // One column each: server, tailnet, account, nickname (the account stays shown).
            let list = p1.weft(["switch", "--list"]).run()?.stdout;
            let rows: Vec<Vec<&str>> = list
                .lines()
                .map(|l| l.split_whitespace().collect())
                .collect();
            ensure!(
                rows.first().map(Vec::as_slice)
                    == Some(&["ID", "Server", "Tailnet", "Account", "Nickname"][..]),
                "{list}"
            );
            let home_url = home.url();
            let work_url = work.url();
            let home_row = rows
                .iter()
                .find(|r| r.get(1) == Some(&home_url.as_str()))
                .context(list.clone())?;
            let work_row = rows
                .iter()
                .find(|r| r.get(1) == Some(&work_url.as_str()))
                .context(list.clone())?;
            ensure!(home_row[3] == ALICE && home_row[4] == "-", "{list}");
            ensure!(
                work_row[2] == "work.internal" && work_row[3] == BOB && work_row[4] == "job",
                "{list}"
            );
            ensure!(
                work_row[0].ends_with('*') && !home_row[0].ends_with('*'),
                "{list}"
            );

            // Right after a switch, status --json has a self (the transition is in
            // backend_state), and the node comes up on the other profile.
            let home_id = home_row[0].trim_end_matches('*').to_owned();
            p1.weft(["switch", &home_id]).run()?;
            let st = p1.status_json()?;
            ensure!(st["self"].is_object(), "self after switch: {st}");
            let key_home = prefs(&p1)?["node_key"].clone();
            ensure!(st["self"]["public_key"] == key_home, "{st}");
            p1.wait_status(SECS(30), "running with addresses", |v| {
                v["backend_state"] == "running"
                    && v["self"]["addresses"]
                        .as_array()
                        .is_some_and(|a| !a.is_empty())
            })?;

            // Logout removes the home profile; no empty profile is left in the list.
            p1.weft(["logout"]).run()?;
            let after: serde_json::Value =
                serde_json::from_str(&p1.weft(["switch", "--list", "--json"]).run()?.stdout)?;
            let after = after.as_array().context("profiles")?;
            ensure!(after.len() == 1, "{after:?}");
            ensure!(
                after[0]["control_url"] == work_url.as_str() && after[0]["selected"] == false,
                "{after:?}"
            );
            let list = p1.weft(["switch", "--list"]).run()?.stdout;
            ensure!(!list.contains('*') && !list.contains(&home_url), "{list}");
            let st = p1.status_json()?;
            ensure!(
                st["backend_state"] == "needs_login" && st["self"].is_null(),
                "after logout: {st}"
            );
            // Switching back to work needs no login.
            p1.weft(["switch", "job"]).run()?;
            p1.wait_state("running", SECS(30))?;
            Ok(())
        },
        || report(&[&home, &work], &[&p1]),
    )
}
