//! The web console in a real browser: Debian's chromium driven by
//! `tests/web/console.mjs` (playwright-core) against the real weft-control
//! binary on loopback. Sign in with an API key, rename a node, create a
//! pre-auth key (shown once), edit the policy with an error (shown at its
//! line, nothing saved), fix it, see the diff, save, roll back, and explain
//! a flow; the results are checked through the API and the CLI. Screenshots
//! go to `$WEFT_WEB_ARTIFACTS` (default: a temporary directory).
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::{ServerProcess, TestNode, free_port};
use weft_control::admin::types::{NewApiKey, NewPreauthKey, NewUser};
use weft_lab::web;

const INITIAL: &str = "{\n  \"acls\": [\n    {\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:*\"]},\n  ],\n}\n";
/// Line 4, column 48: a destination without a port.
const BAD: &str = "{\n  \"acls\": [\n    {\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:*\"]},\n    {\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"nonsense\"]},\n  ],\n}\n";
const GOOD: &str = "{\n  \"acls\": [\n    {\"action\": \"accept\", \"src\": [\"autogroup:member\"], \"dst\": [\"*:22\"]},\n  ],\n}\n";

/// Returns why the browser test cannot run here, if it cannot.
fn missing() -> Option<String> {
    let reasons: Vec<String> = [web::CHROMIUM, web::PLAYWRIGHT]
        .into_iter()
        .filter_map(|p| weft_lab::require_path(p).err())
        .chain(weft_lab::require_cmd("node").err())
        .collect();
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_runs_the_tailnet_from_the_console_in_a_browser() {
    if let Some(why) = missing() {
        assert!(
            !weft_lab::e2e_strict(),
            "WEFT_E2E=1 but the browser test cannot run: {why} (npm ci --prefix tests/web)"
        );
        eprintln!("SKIP console browser test: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let proc = ServerProcess::start(dir.path(), free_port()).await;
    let admin = proc.admin();
    admin
        .create_user(&NewUser {
            login_name: "alice".into(),
            ..NewUser::default()
        })
        .await
        .unwrap();
    let api_key = admin
        .create_api_key(&NewApiKey {
            description: "browser".into(),
            expiration_ms: None,
        })
        .await
        .unwrap()
        .secret;
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
    let mut laptop = TestNode::for_server(url.clone(), server_key, "laptop");
    laptop.join(&key).await;
    let mut server = TestNode::for_server(url, server_key, "server");
    server.join(&key).await;
    let initial = admin
        .set_policy(INITIAL, Some("policy.hujson"))
        .await
        .unwrap();
    let nodes = admin.list_nodes().await.unwrap();
    let laptop_id = nodes.iter().find(|n| n.name == "laptop").unwrap().id;

    let artifacts = std::env::var("WEFT_WEB_ARTIFACTS")
        .map_or_else(|_| dir.path().join("artifacts"), std::path::PathBuf::from);
    #[allow(clippy::disallowed_methods)] // measuring only
    let started = std::time::Instant::now();
    let run = tokio::process::Command::new("node")
        .arg(web::script("console.mjs"))
        .env("WEFT_URL", proc.url())
        .env("WEFT_API_KEY", &api_key)
        .env("WEFT_NODE_ID", laptop_id.to_string())
        .env("WEFT_NEW_NAME", "alice-laptop")
        .env("WEFT_BAD_POLICY", BAD)
        .env("WEFT_GOOD_POLICY", GOOD)
        .env("WEFT_EXPLAIN_SRC", "alice-laptop")
        .env("WEFT_EXPLAIN_DST", "server:22")
        .env("WEFT_EXPLAIN_PROTO", "tcp")
        .env("WEFT_WEB_ARTIFACTS", &artifacts)
        .kill_on_drop(true)
        .output();
    let run = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the browser script ran over 120 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "console.mjs failed:\n{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&run.stderr),
        proc.log()
    );
    eprintln!("browser walk-through took {:?}", started.elapsed());
    let out: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();

    // Signed in with the session cookie as documented.
    let cookie = &out["cookie"];
    assert_eq!(
        (
            &cookie["httpOnly"],
            &cookie["secure"],
            &cookie["sameSite"],
            &cookie["path"]
        ),
        (&true.into(), &true.into(), &"Strict".into(), &"/".into()),
        "{cookie}"
    );
    // Renamed.
    assert_eq!(out["shownName"], "alice-laptop");
    let renamed = admin.list_nodes().await.unwrap();
    assert_eq!(
        renamed.iter().find(|n| n.id == laptop_id).unwrap().name,
        "alice-laptop"
    );
    // The pre-auth key exists, and its secret was shown once.
    let secret = out["secret"].as_str().unwrap();
    assert_eq!(out["secretShownAgain"], false);
    let keys = admin.list_preauth_keys(None).await.unwrap();
    assert!(
        keys.iter()
            .any(|k| k.reusable && secret.contains(&k.prefix) && k.id > 1),
        "{secret} not among {keys:?}"
    );
    // The editor highlighted, the error was shown at its line and nothing was saved.
    assert!(out["highlighted"].as_u64().unwrap() > 0, "{out}");
    assert_eq!(
        (out["errorLine"].as_u64(), out["errorColumn"].as_u64()),
        (Some(4), Some(48)),
        "{out}"
    );
    assert!(
        out["errorText"]
            .as_str()
            .unwrap()
            .contains("invalid port \"nonsense\""),
        "{out}"
    );
    assert_eq!(out["saveOfferedForBad"], false);
    assert_eq!(out["versionBefore"], initial.version.unwrap());
    assert_eq!(out["versionAfterError"], initial.version.unwrap());
    // The diff showed what changes, then the fix was saved.
    assert!(
        out["checkResult"].as_str().unwrap().starts_with("Valid"),
        "{out}"
    );
    let added: Vec<&str> = out["diffAdded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let removed: Vec<&str> = out["diffRemoved"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        added,
        ["+     {\"action\": \"accept\", \"src\": [\"autogroup:member\"], \"dst\": [\"*:22\"]},"],
        "{out}"
    );
    assert_eq!(
        removed,
        ["-     {\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:*\"]},"],
        "{out}"
    );
    let saved = out["savedVersion"].as_i64().unwrap();
    assert!(saved > initial.version.unwrap());
    // Rolled back: the API shows the old text again, as a new version.
    let now = admin.policy().await.unwrap();
    assert_eq!(now.policy, INITIAL);
    assert_eq!(now.version, out["rolledBackVersion"].as_i64());
    assert!(now.version.unwrap() > saved);
    let history = admin.policy_history(10).await.unwrap();
    assert_eq!(
        history.len(),
        3,
        "the broken draft is no version: {history:?}"
    );
    assert!(
        history
            .iter()
            .take(2)
            .all(|v| v.author.starts_with("console: api key ")),
        "{history:?}"
    );

    // The explain form answers as the CLI does.
    let (code, cli, err) = proc.cli(&[
        "policy",
        "explain",
        "--src",
        "alice-laptop",
        "--dst",
        "server:22",
        "--proto",
        "tcp",
    ]);
    assert_eq!(code, 0, "{cli}{err}");
    assert_eq!(out["verdict"], "allowed");
    assert_eq!(out["explanation"].as_str().unwrap().trim(), cli.trim());

    // Every change is in the audit log, with who made it.
    let (code, audit, err) = proc.cli(&["audit", "list", "--json", "--limit", "20"]);
    assert_eq!(code, 0, "{err}");
    let audit: weft_control::admin::types::AuditPage = serde_json::from_str(&audit).unwrap();
    let actions: Vec<(&str, &str)> = audit
        .entries
        .iter()
        .filter(|e| e.actor.starts_with("console: "))
        .map(|e| (e.action.as_str(), e.outcome.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("POST /policy/rollback", "ok"),
            ("PUT /policy", "ok"),
            ("POST /preauthkeys", "ok"),
            ("POST /nodes/{id}/rename", "ok"),
        ],
        "{audit:?}"
    );
    assert!(
        !audit.entries.iter().any(|e| e.detail.contains(secret)),
        "a secret in the audit log"
    );
    assert_eq!(out["afterSignOut"], "/admin/signin");
    assert_eq!(
        out["consoleErrors"],
        serde_json::json!([]),
        "CSP violations or script errors"
    );
    for shot in [
        "console-machines",
        "console-keys-created",
        "console-policy-error",
        "console-policy-diff",
        "console-policy",
        "console-audit",
    ] {
        assert!(
            artifacts.join(format!("{shot}.png")).is_file(),
            "{shot}.png missing"
        );
    }
    laptop.close().await;
    server.close().await;
}
