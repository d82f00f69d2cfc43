//! SSH session recording end to end: real `weft-control`, `weftd` and `weft` in network
//! namespaces (`weft_lab::tailnet`) and Debian's OpenSSH client.
//!
//! The tailnet: alice's node `a` (the client) and `b` (`tag:server`, `weft up --ssh`). The only
//! SSH rule admits members to `tag:server` as non-root users and requires recording
//! (`"recorder": {"enforce": true}`). A pty session (`ssh -tt`, commands on stdin) and an exec
//! session each leave an asciicast v2 file in `b`'s `<statedir>/recordings` whose `"o"` events
//! hold the commands' output; with the recordings directory replaced by a regular file, the next
//! login is refused and the client reads why. `b` logs one `weft_ssh::audit` line per attempt.
//!
//! Needs root, `setpriv`, `ssh`, `useradd` and `/dev/net/tun`; skips without them unless
//! `WEFT_E2E=1`. Every wait is bounded; a failure carries each daemon's status and log.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use weft_lab::account::LocalAccount;
use weft_lab::{e2e_lab, wait_for, with_diagnostics};

use crate::ssh_common::{self, ALICE, alice_key, ok, tailnet_and_control, wait_ssh_ready};

const POLICY: &str = r#"{
  "tagOwners": {"tag:server": ["alice@example.com"]},
  "acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["*:*"]}],
  "ssh": [
    {"action": "accept", "src": ["autogroup:member"], "dst": ["tag:server"],
     "users": ["autogroup:nonroot"], "recorder": {"enforce": true}},
  ],
}"#;

/// The events of the one `.cast` file in `dir` that `pick` selects by its header: checks the
/// header is asciicast v2 and every line parses.
fn cast_events(
    dir: &Path,
    pick: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<(serde_json::Value, Vec<serde_json::Value>)> {
    for entry in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "cast") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let mut lines = text.lines();
        let header: serde_json::Value = serde_json::from_str(lines.next().context("empty cast")?)?;
        if !pick(&header) {
            continue;
        }
        ensure!(header["version"] == 2, "not asciicast v2: {header}");
        ensure!(
            header["width"].as_u64().is_some() && header["timestamp"].as_i64().is_some(),
            "{header}"
        );
        let events = lines
            .map(serde_json::from_str::<serde_json::Value>)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{}:\n{text}", path.display()))?;
        return Ok((header, events));
    }
    anyhow::bail!("no matching .cast file in {}", dir.display())
}

/// The concatenated data of the events with `code`.
fn stream(events: &[serde_json::Value], code: &str) -> String {
    events
        .iter()
        .filter(|e| e[1] == code)
        .filter_map(|e| e[2].as_str())
        .collect()
}

#[test]
fn sessions_under_a_recorder_rule_leave_asciicast_files_and_fail_closed_without_a_place_to_write()
-> anyhow::Result<()> {
    let lab = e2e_lab!("setpriv", "ssh", "useradd", "userdel", "/dev/net/tun");
    let client = LocalAccount::create("wrc", "c")?;
    let target = LocalAccount::create("wrc", "t")?;
    let (tailnet, control) = tailnet_and_control(&lab, &[ALICE], POLICY)?;
    let a = tailnet.node("a")?;
    a.up(&control, &alice_key(&control, &[])?).run()?;
    let b = tailnet.node("b")?;
    b.up(&control, &alice_key(&control, &["tag:server"])?)
        .arg("--ssh")
        .run()?;
    let report = || format!("{}\n{}\n{}", control.log(), a.report(), b.report());
    with_diagnostics(|| wait_ssh_ready(&a, &b), report)?;
    let dir = b.statedir().join("recordings");
    let to_b = format!("{}@b", target.name);
    with_diagnostics(
        || {
            // A pty session typing commands on stdin.
            let pty = ssh_common::weft_ssh(&tailnet, &a, &client, &[&to_b, "-tt"])
                .stdin(b"echo rec-$((6*7))-ok\npwd\nexit\n".to_vec())
                .run_unchecked()?;
            ok(&pty, "pty session")?;
            ensure!(pty.stdout.contains("rec-42-ok"), "{}", pty.stdout);
            let (header, events) = cast_events(&dir, |h| h["command"].is_null())?;
            let out = stream(&events, "o");
            ensure!(out.contains("rec-42-ok"), "no command output in {out:?}");
            ensure!(
                out.contains(&target.home.display().to_string()),
                "no pwd output in {out:?}"
            );
            ensure!(
                stream(&events, "i").is_empty(),
                "input recorded: {events:?}"
            );
            ensure!(header["env"]["TERM"].as_str().is_some(), "{header}");
            let mode = |p: &Path| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777)
            };
            ensure!(mode(&dir)? == 0o700, "recordings dir is not 0700");

            // An exec session (no pty) is recorded too.
            let exec = ssh_common::weft_ssh(&tailnet, &a, &client, &[&to_b, "echo exec-$((2+3))"])
                .run_unchecked()?;
            ok(&exec, "exec session")?;
            let (_, events) = cast_events(&dir, |h| h["command"].is_string())?;
            ensure!(stream(&events, "o").contains("exec-5"), "{events:?}");

            // Both reach control over b's control connection: listed with user,
            // nodes, local user and times, and `play --no-wait` prints the output.
            let sessions = wait_for(Duration::from_secs(20), "2 recordings at control", || {
                let list: serde_json::Value = control
                    .admin(["ssh", "sessions", "list", "--json"])
                    .json()?;
                let s = list["sessions"].as_array().cloned().unwrap_or_default();
                Ok((s.len() == 2).then_some(s))
            })?;
            for s in &sessions {
                ensure!(
                    s["src_user"] == ALICE
                        && s["src_node"]
                            .as_str()
                            .is_some_and(|n| n == "a" || n.starts_with("a."))
                        && s["node"] == "b"
                        && s["local_user"] == target.name.as_str()
                        && s["started"].as_i64().is_some_and(|t| t > 0)
                        && s["ended"].as_i64() >= s["started"].as_i64(),
                    "{s}"
                );
            }
            let shell = sessions
                .iter()
                .find(|s| s["kind"] == "shell")
                .context("no shell session listed")?;
            let id = shell["id"].as_str().context("no id")?;
            let played = control
                .admin(["ssh", "sessions", "play", id, "--no-wait"])
                .run()?;
            ensure!(played.stdout.contains("rec-42-ok"), "{}", played.stdout);
            let shown: serde_json::Value = control
                .admin(["ssh", "sessions", "show", id, "--json"])
                .json()?;
            ensure!(shown["id"] == id && shown["input"] == false, "{shown}");
            let stored = control
                .state_dir()
                .join("recordings")
                .join(format!("{id}.cast"));
            ensure!(
                mode(stored.as_path())? == 0o600,
                "control's cast file is not 0600"
            );
            ensure!(
                mode(stored.parent().context("no dir")?)? == 0o700,
                "control's dir is not 0700"
            );

            // Nowhere to write: the login is refused, and the client reads why.
            let kept = dir.with_extension("kept");
            std::fs::rename(&dir, &kept)?;
            std::fs::write(&dir, b"not a directory")?;
            let refused =
                ssh_common::weft_ssh(&tailnet, &a, &client, &[&to_b, "echo must-not-run"])
                    .run_unchecked()?;
            std::fs::remove_file(&dir)?;
            std::fs::rename(&kept, &dir)?;
            // Refused at authentication (the reason in a banner), not after a login.
            ensure!(
                refused.status.code() == Some(255)
                    && !refused.stdout.contains("must-not-run")
                    && refused.stderr.contains("Permission denied (none)."),
                "an unrecordable session was not refused at login: {refused:?}"
            );
            ensure!(
                refused
                    .stderr
                    .contains("weft: tailnet policy requires this SSH session to be recorded")
                    && refused.stderr.contains("cannot write recordings"),
                "no reason on stderr: {}",
                refused.stderr
            );

            // One audit line per attempt on b: the two recorded logins, the refused one.
            let log = b.log();
            let audit: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("weft_ssh::audit"))
                .collect();
            ensure!(
                audit
                    .iter()
                    .filter(|l| l.contains("result=\"accepted\""))
                    .count()
                    == 2
                    && audit
                        .iter()
                        .filter(|l| l.contains("result=\"refused\"")
                            && l.contains("cannot write recordings"))
                        .count()
                        == 1
                    && audit
                        .iter()
                        .all(|l| l.contains(ALICE) && l.contains(&target.name)),
                "audit lines: {audit:#?}"
            );
            Ok(())
        },
        report,
    )
}
