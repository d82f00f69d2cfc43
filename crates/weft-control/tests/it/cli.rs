//! The `weft-control` CLI against the real binary: over the admin socket,
//! over the REST API with an API key, and offline policy commands. Errors
//! say what was wrong; unknown ids are named.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::{ServerProcess, free_port};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_work_over_the_socket_and_the_rest_api() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = ServerProcess::start(dir.path(), free_port()).await;

    let (code, out, err) = s.cli(&["users", "create", "alice@example.com", "--admin"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("created user alice@example.com"), "{out}");
    let (code, _, err) = s.cli(&["users", "create", "alice@example.com"]);
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");

    let (code, secret, err) = s.cli(&[
        "keys",
        "create",
        "--user",
        "alice@example.com",
        "--reusable",
        "--expiration",
        "24h",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(secret.trim().starts_with("weftkey-auth-"), "{secret}");
    assert!(err.contains("shown only now"), "{err}");
    let (_, out, _) = s.cli(&["keys", "list"]);
    assert!(
        out.contains("usable") && !out.contains(secret.trim()),
        "the secret is shown once: {out}"
    );
    let (code, _, err) = s.cli(&["keys", "create"]);
    assert_eq!(code, 1);
    assert!(err.contains("--user USER or --tags"), "{err}");
    let (code, _, err) = s.cli(&[
        "keys",
        "create",
        "--user",
        "alice@example.com",
        "--expiration",
        "soon",
    ]);
    assert_eq!(code, 2, "clap refuses it: {err}");
    assert!(err.contains("invalid duration"), "{err}");

    // Unknown ids are named.
    for (args, needle) in [
        (vec!["nodes", "expire", "42"], "unknown node id 42"),
        (vec!["nodes", "delete", "42"], "unknown node id 42"),
        (vec!["keys", "expire", "9"], "unknown pre-auth key id 9"),
        (vec!["users", "delete", "nobody"], "unknown user \"nobody\""),
        (
            vec![
                "nodes",
                "approve",
                "0123456789abcdef0123456789abcdef",
                "--user",
                "alice@example.com",
            ],
            "unknown auth request",
        ),
    ] {
        let (code, _, err) = s.cli(&args);
        assert_eq!(code, 1, "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }

    // JSON output parses.
    let (_, out, _) = s.cli(&["users", "list", "--json"]);
    let users: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(users[0]["role"], "admin");

    // The connection flags and --json are global: before the subcommand
    // as well as after it (`tailscale --socket=… status`).
    let dir_arg = s.state_dir.to_str().unwrap().to_owned();
    let socket = s.state_dir.join("admin.sock");
    let socket_arg = socket.to_str().unwrap();
    for args in [
        vec!["--json", "users", "list"],
        vec!["--state-dir", &dir_arg, "--json", "users", "list"],
        vec!["--state-dir", &dir_arg, "users", "--json", "list"],
        vec!["--socket", socket_arg, "--json", "users", "list"],
        vec!["users", "list", "--socket", socket_arg, "--json"],
    ] {
        let (code, out, err) = if args.contains(&"--state-dir") || args.contains(&"--socket") {
            ServerProcess::cli_exact(&args)
        } else {
            s.cli(&args)
        };
        assert_eq!(code, 0, "{args:?}: {err}");
        let users: Vec<serde_json::Value> = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"));
        assert_eq!(users[0]["login_name"], "alice@example.com", "{args:?}");
    }
    let (code, _, err) = ServerProcess::cli_exact(&["--state-dir", &dir_arg, "nodes", "list"]);
    assert_eq!(code, 0, "{err}");

    // The REST API with an API key gives the same answers.
    let (code, api_key, err) = s.cli(&["apikeys", "create", "--description", "ci"]);
    assert_eq!(code, 0, "{err}");
    let api_key = api_key.trim().to_owned();
    let url = s.url();
    let (code, out, err) = s.cli(&[
        "users",
        "list",
        "--json",
        "--server",
        &url,
        "--api-key",
        &api_key,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("alice@example.com"));
    let (code, out, err) = ServerProcess::cli_exact(&[
        "--server",
        &url,
        "--api-key",
        &api_key,
        "--json",
        "users",
        "list",
    ]);
    assert_eq!(code, 0, "flags before the subcommand: {err}");
    assert!(out.contains("alice@example.com"), "{out}");
    let (code, _, err) = ServerProcess::cli_exact(&["--server", &url, "users", "list"]);
    assert_eq!(code, 1);
    assert!(err.contains("needs --api-key"), "{err}");
    let (code, _, err) = s.cli(&[
        "users",
        "list",
        "--server",
        &url,
        "--api-key",
        "weftkey-api-000000000000-000000000000000000000000000000000000000000000000",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid API key"), "{err}");
    let (code, _, err) = s.cli(&["users", "list", "--server", &url]);
    assert_eq!(code, 1);
    assert!(err.contains("needs --api-key"), "{err}");
    let (_, out, _) = s.cli(&["apikeys", "list"]);
    assert!(out.contains("ci") && out.contains("usable"), "{out}");
    let (code, _, _) = s.cli(&["apikeys", "expire", "1"]);
    assert_eq!(code, 0);
    let (code, _, err) = s.cli(&["users", "list", "--server", &url, "--api-key", &api_key]);
    assert_eq!(code, 1);
    assert!(err.contains("expired or was revoked"), "{err}");

    // Policy: get, check, set, explain; offline check and explain.
    let (code, out, _) = s.cli(&["policy", "get"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"*:*\""), "{out}");
    let policy = dir.path().join("policy.hujson");
    std::fs::write(
        &policy,
        r#"{
  // Only admins reach anything.
  "acls": [{"action": "accept", "src": ["autogroup:admin"], "dst": ["*:22"]}],
  "tests": [{"src": "alice@example.com", "accept": ["100.64.0.1:22"]}],
}"#,
    )
    .unwrap();
    let (code, out, err) = s.cli(&["policy", "check", policy.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("all 1 tests"), "{out}");
    let (code, out, err) = s.cli(&["policy", "set", policy.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("policy version 1 is in force"), "{out}");
    let bad = dir.path().join("bad.hujson");
    std::fs::write(&bad, "{\"acls\": [}").unwrap();
    let (code, _, err) = s.cli(&["policy", "set", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("old policy stays in force") && err.contains("1:"),
        "{err}"
    );
    let (code, out, _) = s.cli(&["policy", "check", bad.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    let (code, out, _) = s.cli(&[
        "policy",
        "explain",
        "--src",
        "alice@example.com",
        "--dst",
        "100.64.0.1:80",
    ]);
    assert_eq!(code, 1, "denied: {out}");
    assert!(out.contains("DENIED"), "{out}");

    let nodes = dir.path().join("nodes.json");
    std::fs::write(
        &nodes,
        r#"{"users": [{"login": "alice@example.com", "role": "admin"}],
            "nodes": [{"name": "laptop", "user": "alice@example.com", "ipv4": "100.64.0.1"},
                      {"name": "srv", "user": null, "tags": [], "ipv4": "100.64.0.2"}]}"#,
    )
    .unwrap();
    let (code, out, _) = s.cli(&[
        "policy",
        "check",
        policy.to_str().unwrap(),
        "--nodes",
        nodes.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "srv has no owner: {out}");
    std::fs::write(
        &nodes,
        r#"{"users": [{"login": "alice@example.com", "role": "admin"}],
            "nodes": [{"name": "laptop", "user": "alice@example.com", "ipv4": "100.64.0.1"},
                      {"name": "srv", "user": "alice@example.com", "ipv4": "100.64.0.2"}]}"#,
    )
    .unwrap();
    let (code, out, _) = s.cli(&[
        "policy",
        "check",
        policy.to_str().unwrap(),
        "--nodes",
        nodes.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = s.cli(&[
        "policy",
        "explain",
        "--policy",
        policy.to_str().unwrap(),
        "--nodes",
        nodes.to_str().unwrap(),
        "--src",
        "laptop",
        "--dst",
        "srv:22",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ALLOWED") && out.contains("policy.hujson:3:"),
        "{out}"
    );

    assert!(s.stop().success());
    assert!(
        !dir.path().join("admin.sock").exists(),
        "the socket is removed at shutdown"
    );
}

#[test]
fn serve_takes_the_global_state_dir_and_refuses_the_admin_client_flags() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for (args, flag) in [
        (vec!["serve", "--server", "http://127.0.0.1:1"], "--server"),
        (vec!["--json", "serve"], "--json"),
        (vec!["serve", "--api-key", "k"], "--api-key"),
    ] {
        let args = [&args[..], &["--state-dir", d, "--listen", "127.0.0.1:0"]].concat();
        let (code, _, err) = ServerProcess::cli_exact(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains(&format!("{flag} is for the admin commands"))
                && err.contains("--server-url"),
            "{args:?}: {err}"
        );
    }
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "refused before anything was created"
    );
}

/// Runs the CLI with stdout on a pipe whose reader is already gone, the
/// way `| head -1` leaves it once head has exited: the first write fails
/// with EPIPE. Returns (status, stderr).
fn cli_into_closed_pipe(s: &ServerProcess, args: &[&str]) -> (i32, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft-control"))
        .args(args)
        .arg("--state-dir")
        .arg(&s.state_dir)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_exits_0_quietly_when_the_reader_of_its_output_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = ServerProcess::start(dir.path(), free_port()).await;
    let (code, _, err) = s.cli(&["users", "create", "alice@example.com", "--admin"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = s.cli(&["apikeys", "create"]);
    assert_eq!(code, 0, "{err}");
    let policy = dir.path().join("policy.hujson");
    std::fs::write(
        &policy,
        r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}"#,
    )
    .unwrap();
    let nodes = dir.path().join("nodes.json");
    std::fs::write(
        &nodes,
        r#"{"users": [{"login": "alice@example.com", "role": "admin"}],
            "nodes": [{"name": "laptop", "user": "alice@example.com", "ipv4": "100.64.0.1"}]}"#,
    )
    .unwrap();
    let (p, n) = (policy.to_str().unwrap(), nodes.to_str().unwrap());

    let commands: Vec<Vec<&str>> = vec![
        vec!["users", "list"],
        vec!["users", "list", "--json"],
        vec!["users", "create", "bob@example.com"],
        vec!["users", "delete", "bob@example.com"],
        vec!["keys", "create", "--user", "alice@example.com"],
        vec!["keys", "create", "--user", "alice@example.com", "--json"],
        vec!["keys", "list"],
        vec!["keys", "expire", "1"],
        vec!["nodes", "list"],
        vec!["nodes", "list", "--json"],
        vec!["apikeys", "create"],
        vec!["apikeys", "list"],
        vec!["apikeys", "expire", "1"],
        vec!["policy", "get"],
        vec!["policy", "set", p],
        vec!["policy", "check", p],
        vec!["policy", "check", p, "--nodes", n],
        vec![
            "policy",
            "explain",
            "--src",
            "alice@example.com",
            "--dst",
            "100.64.0.1:22",
        ],
        vec![
            "policy",
            "explain",
            "--policy",
            p,
            "--nodes",
            n,
            "--src",
            "laptop",
            "--dst",
            "laptop:22",
        ],
    ];
    for args in &commands {
        let (code, err) = cli_into_closed_pipe(&s, args);
        assert_eq!(code, 0, "{args:?} exited {code}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
    }
    // The side effects happened; only the output had nowhere to go.
    let (_, out, _) = s.cli(&["keys", "list"]);
    assert_eq!(out.lines().count(), 3, "header and two keys: {out}");

    // And through a real shell pipeline: an output larger than the pipe
    // buffer, cut by `head -1`; the command's own status is 0.
    let big = dir.path().join("big.hujson");
    let mut text = String::from("{\n");
    for i in 0..5000 {
        text.push_str(&format!(
            "  // comment line {i:05} to make the policy long enough\n"
        ));
    }
    text.push_str(r#"  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}"#);
    std::fs::write(&big, text).unwrap();
    let (code, _, err) = s.cli(&["policy", "set", big.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let script = format!(
        "'{bin}' policy get --state-dir '{dir}' | head -1; exit ${{PIPESTATUS[0]}}",
        bin = env!("CARGO_BIN_EXE_weft-control"),
        dir = s.state_dir.display(),
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "{\n");
    assert!(stderr.is_empty(), "{stderr}");
    assert!(s.stop().success());
}
