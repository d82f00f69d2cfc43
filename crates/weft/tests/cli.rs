//! The real `weft` binary against a fake LocalAPI (`fake/mod.rs`): what it
//! sends, what it prints where, and how it exits.
#![allow(clippy::unwrap_used)]

mod fake;

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::time::Duration;

use fake::{Fake, PingReply, State};
use hyper::Method;
use serde_json::json;
use weft_localapi::*;
use weft_types::ids::NodeId;
use weft_types::key::NodePublic;

/// The most any single `weft` run may take before the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(30);

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `weft args…` against `fake` (socket from `WEFT_SOCKET`).
async fn weft(fake: &Fake, args: &[&str]) -> Out {
    weft_env(fake, args, &[]).await
}

async fn weft_env(fake: &Fake, args: &[&str], env: &[(&str, &Path)]) -> Out {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_weft"));
    cmd.args(args)
        .env("WEFT_SOCKET", &fake.socket)
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(RUN_LIMIT, cmd.output())
        .await
        .expect("weft hung")
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn node(id: i64, name: &str, addrs: &[&str]) -> PeerStatus {
    PeerStatus {
        id: NodeId(id),
        stable_id: format!("n{id:020x}"),
        name: name.into(),
        dns_name: format!("{name}.t.weft.internal."),
        hostname: name.into(),
        os: "linux".into(),
        user: Some("alice@example.com".into()),
        tags: vec![],
        addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        allowed_ips: vec![],
        public_key: NodePublic::from_bytes([id as u8; 32]),
        endpoints: vec![],
        cur_addr: None,
        relay: None,
        online: true,
        last_seen_ms: None,
        last_handshake_ms: None,
        active: false,
        rx_bytes: 0,
        tx_bytes: 0,
        expired: false,
        key_expiry_ms: None,
        ssh_host_keys: vec![],
    }
}

fn profile(id: &str, nickname: Option<&str>, account: &str, selected: bool) -> ProfileSummary {
    ProfileSummary {
        id: id.into(),
        nickname: nickname.map(Into::into),
        tailnet: Some("t.weft.internal".into()),
        account: Some(account.into()),
        control_url: DEFAULT_CONTROL_URL.into(),
        selected,
        registered: true,
    }
}

/// A running node `me` (100.64.0.1) with peers `db` (tagged, idle) and
/// `web` (active, direct), two profiles, default prefs.
fn running() -> State {
    let mut web = node(3, "web", &["100.64.0.3", "fd7a:115c:a1e0::3"]);
    web.active = true;
    web.cur_addr = Some("198.18.0.2:41641".parse().unwrap());
    (web.tx_bytes, web.rx_bytes) = (1024, 2048);
    web.ssh_host_keys = vec!["ssh-ed25519 AAAAC3web".into()];
    let mut db = node(2, "db", &["100.64.0.2"]);
    db.user = None;
    db.tags = vec!["tag:db".into()];
    State {
        status: Status {
            version: "0.1.0-fake".into(),
            backend_state: BackendState::Running,
            auth_url: None,
            tun: "weft0".into(),
            tailnet: Some(TailnetInfo {
                domain: "t.weft.internal".into(),
                control_url: DEFAULT_CONTROL_URL.into(),
            }),
            self_node: Some(node(1, "me", &["100.64.0.1", "fd7a:115c:a1e0::1"])),
            user: None,
            peers: vec![db, web],
            health: vec![],
            filter: FilterStatus::default(),
            profile: Some(profile("a1b2", None, "alice@example.com", true)),
            udp: UdpStatus::default(),
        },
        prefs: Prefs {
            want_running: true,
            ..Prefs::default()
        },
        profiles: vec![
            profile("a1b2", None, "alice@example.com", true),
            profile("c3d4", Some("work"), "alice@corp.example", false),
        ],
        read_only: false,
        pings: VecDeque::new(),
        script: BTreeMap::new(),
        requests: Vec::new(),
    }
}

/// A node that has never logged in.
fn logged_out() -> State {
    let mut st = running();
    st.status.backend_state = BackendState::NeedsLogin;
    st.status.self_node = None;
    st.status.profile = None;
    st.status.peers.clear();
    st.prefs = Prefs::default();
    st
}

fn bodies(fake: &Fake, method: Method, path: &str) -> Vec<serde_json::Value> {
    fake.changes()
        .into_iter()
        .filter(|r| r.method == method && r.path == path)
        .map(|r| r.body)
        .collect()
}

// --- up and login ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_with_an_interactive_login_prints_the_url_waits_and_says_success() {
    let mut st = logged_out();
    st.script.insert(
        "login-interactive",
        vec![
            Notify::BrowseToUrl {
                url: "http://127.0.0.1:8080/a/tok123".into(),
            },
            Notify::LoginFinished,
            Notify::State {
                state: BackendState::Starting,
            },
            Notify::State {
                state: BackendState::Running,
            },
        ],
    );
    let fake = Fake::start(st);
    let out = weft(&fake, &["up", "--hostname=box"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "");
    assert_eq!(
        out.stderr,
        "\nTo authenticate, visit:\n\n\thttp://127.0.0.1:8080/a/tok123\n\nSuccess.\n"
    );
    let start = bodies(&fake, Method::POST, "start");
    assert_eq!(start.len(), 1);
    assert_eq!(start[0]["prefs"]["hostname"], json!("box"));
    assert_eq!(start[0]["prefs"]["want_running"], json!(true));
    assert_eq!(start[0]["auth_key"], json!(null));
    assert_eq!(bodies(&fake, Method::POST, "login-interactive").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_with_json_prints_the_url_and_the_final_state_as_json_lines() {
    let mut st = logged_out();
    st.script.insert(
        "login-interactive",
        vec![
            Notify::BrowseToUrl {
                url: "http://c/a/1".into(),
            },
            Notify::State {
                state: BackendState::Running,
            },
        ],
    );
    let fake = Fake::start(st);
    let out = weft(&fake, &["up", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "{\"auth_url\":\"http://c/a/1\",\"backend_state\":\"needs_login\"}\n\
         {\"auth_url\":\"http://c/a/1\",\"backend_state\":\"running\"}\n"
    );
    assert!(!out.stderr.contains("To authenticate"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_with_an_auth_key_file_sends_the_trimmed_key_and_never_asks_for_a_url() {
    let mut st = logged_out();
    st.script.insert(
        "start",
        vec![
            Notify::State {
                state: BackendState::Starting,
            },
            Notify::State {
                state: BackendState::Running,
            },
        ],
    );
    let fake = Fake::start(st);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "tskey-abc\n").unwrap();
    let arg = format!("--authkey=file:{}", key.display());
    let out = weft(&fake, &["up", &arg]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stderr, "", "no URL, so no Success. either");
    let start = bodies(&fake, Method::POST, "start");
    assert_eq!(start[0]["auth_key"], json!("tskey-abc"));
    assert_eq!(start[0]["prefs"], json!(null), "a bare up keeps the prefs");
    assert!(bodies(&fake, Method::POST, "login-interactive").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_with_a_refused_key_prints_the_servers_reason_and_exits_1() {
    let mut st = logged_out();
    st.script.insert(
        "start",
        vec![Notify::Error {
            message: "invalid auth key: expired".into(),
        }],
    );
    let fake = Fake::start(st);
    let out = weft(&fake, &["up", "--authkey=tskey-old"]).await;
    assert_eq!(out.code, 1);
    assert_eq!(out.stderr, "error: invalid auth key: expired\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_gives_up_after_the_timeout_naming_the_control_server() {
    let fake = Fake::start(logged_out());
    let out = weft(&fake, &["up", "--authkey=k", "--timeout=300ms"]).await;
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr,
        "error: timed out after 300ms waiting for the node to run (control server \
         http://127.0.0.1:8080, state needs_login); see 'weft status', or give --timeout\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_refuses_to_revert_unmentioned_settings_and_suggests_the_full_command() {
    let mut st = running();
    st.prefs.run_ssh = true;
    st.prefs.hostname = Some("foo".into());
    let fake = Fake::start(st);
    let out = weft(&fake, &["up", "--shields-up"]).await;
    assert_eq!(out.code, 1);
    let sock = fake.socket.display();
    assert_eq!(
        out.stderr,
        format!(
            "error: 'weft up' takes the complete settings, and leaving out --hostname=foo --ssh \
             would reset them to the default; to keep them run: weft --socket={sock} up --shields-up \
             --hostname=foo --ssh (or add --reset to reset them, or use 'weft set')\n"
        )
    );
    assert!(
        fake.changes().is_empty(),
        "nothing may change: {:?}",
        fake.changes()
    );

    let out = weft(&fake, &["up", "--shields-up", "--hostname=foo", "--ssh"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let start = bodies(&fake, Method::POST, "start");
    assert_eq!(start[0]["prefs"]["shields_up"], json!(true));
    assert_eq!(start[0]["prefs"]["run_ssh"], json!(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_ssh_after_joining_a_login_server_keeps_it_without_repeating_it() {
    let mut st = running();
    st.prefs.control_url = "http://198.18.0.1:8080".into();
    let fake = Fake::start(st);
    for flags in [
        &["up", "--ssh"][..],
        &["up", "--ssh", "--shields-up"],
        &["up", "--ssh", "--shields-up", "--accept-dns=false"],
    ] {
        let out = weft(&fake, flags).await;
        assert_eq!(out.code, 0, "{flags:?}: {}", out.stderr);
    }
    let start = bodies(&fake, Method::POST, "start");
    assert_eq!(start.len(), 3);
    let last = &start[2]["prefs"];
    assert_eq!(last["control_url"], json!("http://198.18.0.1:8080"));
    assert_eq!(
        (&last["run_ssh"], &last["shields_up"], &last["accept_dns"]),
        (&json!(true), &json!(true), &json!(false))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_changes_on_a_registered_node_are_refused_in_one_line_naming_the_flag() {
    let fake = Fake::start(running());
    for (flags, want) in [
        (
            &["up", "--login-server=http://198.18.0.9:8080"][..],
            "error: can't change --login-server from http://127.0.0.1:8080 to http://198.18.0.9:8080: ",
        ),
        (
            &["up", "--advertise-tags=tag:web"],
            "error: can't change --advertise-tags from (none) to tag:web on a registered node: ",
        ),
    ] {
        let out = weft(&fake, flags).await;
        assert_eq!(out.code, 1, "{flags:?}");
        assert!(out.stderr.starts_with(want), "{flags:?}: {}", out.stderr);
        assert!(out.stderr.contains("--force-reauth"), "{}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    }
    assert!(
        fake.changes().is_empty(),
        "nothing may change: {:?}",
        fake.changes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_server_that_never_registered_the_node_is_replaced_without_force_reauth() {
    let mut st = logged_out();
    // `up --login-server=<typo>` left the typo behind and the backend waiting.
    st.prefs.control_url = "http://typo.invalid:8080".into();
    st.prefs.want_running = true;
    st.status.backend_state = BackendState::Starting;
    st.script.insert(
        "start",
        vec![Notify::State {
            state: BackendState::Running,
        }],
    );
    let fake = Fake::start(st);
    let out = weft(
        &fake,
        &["up", "--login-server=http://198.18.0.1:8080", "--authkey=k"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let start = bodies(&fake, Method::POST, "start");
    assert_eq!(
        start[0]["prefs"]["control_url"],
        json!("http://198.18.0.1:8080")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_up_on_a_fresh_node_joins_the_system_default_login_server() {
    let mut st = logged_out();
    st.script.insert(
        "start",
        vec![Notify::State {
            state: BackendState::Running,
        }],
    );
    let fake = Fake::start(st);
    let out = weft_env(
        &fake,
        &["up", "--authkey=k"],
        &[("WEFT_LOGIN_SERVER", Path::new("http://198.18.0.1:8080"))],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let start = bodies(&fake, Method::POST, "start");
    assert_eq!(
        start[0]["prefs"]["control_url"],
        json!("http://198.18.0.1:8080")
    );
    let out = weft_env(
        &fake,
        &["up", "--authkey=k"],
        &[("WEFT_LOGIN_SERVER", Path::new("control:8080"))],
    )
    .await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.starts_with("error: $WEFT_LOGIN_SERVER: "),
        "{}",
        out.stderr
    );
    assert_eq!(bodies(&fake, Method::POST, "start").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_as_a_non_root_user_is_refused_with_the_sudo_command() {
    let mut st = logged_out();
    st.read_only = true;
    let fake = Fake::start(st);
    let out = weft(&fake, &["up", "--ssh"]).await;
    assert_eq!(out.code, 1);
    let sock = fake.socket.display();
    assert_eq!(
        out.stderr,
        format!(
            "error: this command changes weftd and needs root (or the --operator user); \
             weftd said: access denied: read-only LocalAPI caller\n\
             try: sudo weft --socket={sock} up --ssh\n"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_creates_a_profile_then_logs_it_in_with_its_nickname() {
    let mut st = running();
    st.script.insert(
        "start",
        vec![Notify::State {
            state: BackendState::Running,
        }],
    );
    let fake = Fake::start(st);
    let out = weft(
        &fake,
        &[
            "login",
            "--nickname=lab",
            "--authkey=k1",
            "--login-server=http://127.0.0.1:9",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let changes: Vec<String> = fake
        .changes()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(changes, ["PUT profiles", "POST start"]);
    let start = &bodies(&fake, Method::POST, "start")[0];
    assert_eq!(start["prefs"]["nickname"], json!("lab"));
    assert_eq!(start["prefs"]["control_url"], json!("http://127.0.0.1:9"));
    assert_eq!(start["auth_key"], json!("k1"));
}

// --- status, ip, whois ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_self_then_peers_in_aligned_columns() {
    let fake = Fake::start(running());
    let out = weft(&fake, &["status"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "100.64.0.1  me   alice@          linux  -\n\
         100.64.0.2  db   tagged-devices  linux  -\n\
         100.64.0.3  web  alice@          linux  active; direct 198.18.0.2:41641, tx 1024 rx 2048\n"
    );
    assert_eq!(out.stderr, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_is_the_localapi_status() {
    let st = running();
    let want = serde_json::to_value(&st.status).unwrap();
    let fake = Fake::start(st);
    let out = weft(&fake, &["status", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let got: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(got, want);
    assert_eq!(got["peers"][1]["cur_addr"], json!("198.18.0.2:41641"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_a_node_that_is_not_running_says_why_and_exits_1() {
    let mut st = logged_out();
    st.status.auth_url = Some("http://c/a/xyz".into());
    let fake = Fake::start(st);
    let out = weft(&fake, &["status"]).await;
    assert_eq!(out.code, 1);
    assert_eq!(out.stdout, "Logged out.\n\nLog in at: http://c/a/xyz\n");

    fake.with(|s| (s.status.backend_state, s.status.auth_url) = (BackendState::Stopped, None));
    let out = weft(&fake, &["status"]).await;
    assert_eq!((out.code, out.stdout.as_str()), (1, "Weft is stopped.\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_and_whois_find_nodes_by_name_and_address() {
    let fake = Fake::start(running());
    let out = weft(&fake, &["ip"]).await;
    assert_eq!(out.stdout, "100.64.0.1\nfd7a:115c:a1e0::1\n");
    let out = weft(&fake, &["ip", "-6", "web"]).await;
    assert_eq!(out.stdout, "fd7a:115c:a1e0::3\n");
    let out = weft(&fake, &["ip", "-4", "-6"]).await;
    assert_eq!(out.code, 2, "-4 and -6 conflict");
    let out = weft(&fake, &["whois", "100.64.0.3"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .starts_with("Machine:\n  Name:       web.t.weft.internal\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("User:\n  Name:       alice@example.com\n"),
        "{}",
        out.stdout
    );
    let by_ip = out.stdout;
    for name in ["web", "web.t.weft.internal.", "WEB"] {
        let out = weft(&fake, &["whois", name]).await;
        assert_eq!((out.code, &out.stdout), (0, &by_ip), "whois {name}");
    }
    let out = weft(&fake, &["whois", "nope"]).await;
    assert_eq!(
        (out.code, out.stderr.as_str()),
        (
            1,
            "error: no node named \"nope\" in the tailnet (see 'weft status')\n"
        )
    );
    let out = weft(&fake, &["whois", "100.64.0.99"]).await;
    assert_eq!(
        (out.code, out.stderr.as_str()),
        (1, "error: no node has that address\n")
    );
}

// --- profiles and prefs ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_lists_profiles_and_switches_by_nickname() {
    let fake = Fake::start(running());
    let out = weft(&fake, &["switch", "--list"]).await;
    assert_eq!(
        out.stdout,
        "ID     Server                 Tailnet          Account             Nickname\n\
         a1b2*  http://127.0.0.1:8080  t.weft.internal  alice@example.com   -\n\
         c3d4   http://127.0.0.1:8080  t.weft.internal  alice@corp.example  work\n"
    );
    let out = weft(&fake, &["switch", "--list", "--json"]).await;
    let got: Vec<ProfileSummary> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(got, fake.with(|s| s.profiles.clone()));

    let out = weft(&fake, &["switch", "work"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stderr, "Switching to account \"work\"\nSuccess.\n");
    assert_eq!(bodies(&fake, Method::POST, "profiles/c3d4").len(), 1);
    let out = weft(&fake, &["switch", "c3d4"]).await;
    assert_eq!(out.stderr, "Already on account \"work\"\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_sends_only_the_mentioned_fields() {
    let fake = Fake::start(running());
    let out = weft(&fake, &["set", "--ssh", "--nickname=work"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let patches = bodies(&fake, Method::PATCH, "prefs");
    let set: BTreeMap<String, serde_json::Value> = patches[0]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let want: BTreeMap<String, serde_json::Value> = [
        ("nickname".to_owned(), json!("work")),
        ("run_ssh".to_owned(), json!(true)),
    ]
    .into();
    assert_eq!(set, want);

    let out = weft(&fake, &["set"]).await;
    assert_eq!(
        out.code, 2,
        "set without flags is a usage error: {}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_stops_once_and_then_says_it_already_was() {
    let fake = Fake::start(running());
    let out = weft(&fake, &["down"]).await;
    assert_eq!((out.code, out.stderr.as_str()), (0, ""));
    assert_eq!(
        bodies(&fake, Method::PATCH, "prefs")[0]["want_running"],
        json!(false)
    );
    fake.with(|s| s.status.backend_state = BackendState::Stopped);
    let out = weft(&fake, &["down"]).await;
    assert_eq!(
        (out.code, out.stderr.as_str()),
        (0, "Weft was already stopped.\n")
    );
    assert_eq!(bodies(&fake, Method::PATCH, "prefs").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_asks_the_daemon_to_expire_the_key() {
    let fake = Fake::start(running());
    let out = weft(&fake, &["logout"]).await;
    assert_eq!((out.code, out.stderr.as_str()), (0, "Logged out.\n"));
    assert_eq!(bodies(&fake, Method::POST, "logout").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_prefs_prints_the_redacted_json() {
    let fake = Fake::start(running());
    let out = weft(&fake, &["debug", "prefs"]).await;
    let got: DebugPrefs = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(got.private_node_key.as_deref(), Some("<redacted>"));
    assert!(got.prefs.want_running);
}

// --- ping -----------------------------------------------------------------------------------

fn pong(via: PingPath) -> PingReply {
    PingReply::Pong(PingResult {
        node_name: "web".into(),
        node_ip: "100.64.0.3".parse().unwrap(),
        via,
        latency_ms: 3.2,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_prints_each_pong_and_stops_at_the_first_direct_one() {
    let mut st = running();
    st.pings = VecDeque::from([
        PingReply::Timeout,
        pong(PingPath::Relay("lab".into())),
        pong(PingPath::Direct("198.18.0.2:41641".parse().unwrap())),
        pong(PingPath::Direct("198.18.0.2:41641".parse().unwrap())),
    ]);
    let fake = Fake::start(st);
    let out = weft(&fake, &["ping", "web"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "ping \"100.64.0.3\" timed out\n\
         pong from web (100.64.0.3) via relay(lab) in 3.2ms\n\
         pong from web (100.64.0.3) via 198.18.0.2:41641 in 3.2ms\n"
    );
    let pings = bodies(&fake, Method::POST, "ping");
    assert_eq!(pings.len(), 3);
    assert_eq!(pings[0], json!({"ip": "100.64.0.3", "timeout_ms": 5000}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_without_any_reply_fails_and_pinging_yourself_is_local() {
    let fake = Fake::start(running());
    let out = weft(&fake, &["ping", "-c", "1", "--timeout=200ms", "100.64.0.2"]).await;
    assert_eq!(out.code, 1);
    assert_eq!(out.stdout, "ping \"100.64.0.2\" timed out\n");
    assert_eq!(out.stderr, "error: no reply\n");
    assert_eq!(
        bodies(&fake, Method::POST, "ping")[0]["timeout_ms"],
        json!(200)
    );

    let out = weft(&fake, &["ping", "me"]).await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "100.64.0.1 is local Weft IP\n")
    );
}

// --- ssh ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_pins_host_keys_and_runs_ssh_against_the_peers_address() {
    use std::os::unix::fs::PermissionsExt;
    let fake = Fake::start(running());
    let dir = tempfile::tempdir().unwrap();
    let fake_ssh = dir.path().join("ssh");
    std::fs::write(
        &fake_ssh,
        "#!/bin/sh\nfor a in \"$@\"; do echo \"$a\"; done\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake_ssh, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path().join("config");
    let env = [
        ("WEFT_SSH", fake_ssh.as_path()),
        ("XDG_CONFIG_HOME", config.as_path()),
    ];
    let out = weft_env(&fake, &["ssh", "bob@web", "uptime"], &env).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let kh = config.join("weft/ssh_known_hosts");
    assert_eq!(
        out.stdout,
        format!(
            "-o\nUserKnownHostsFile={}\n-o\nStrictHostKeyChecking=yes\n-o\nUpdateHostKeys=no\n\
             -o\nCanonicalizeHostname=no\nbob@100.64.0.3\nuptime\n",
            kh.display()
        )
    );
    assert_eq!(
        std::fs::read_to_string(&kh).unwrap(),
        "web ssh-ed25519 AAAAC3web\n\
         web.t.weft.internal ssh-ed25519 AAAAC3web\n\
         100.64.0.3 ssh-ed25519 AAAAC3web\n\
         fd7a:115c:a1e0::3 ssh-ed25519 AAAAC3web\n"
    );
    assert_eq!(
        std::fs::metadata(&kh).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        out.stderr.contains("Host *.t.weft.internal\n"),
        "first run explains: {}",
        out.stderr
    );

    let out = weft_env(&fake, &["ssh", "web"], &env).await;
    assert_eq!(out.stderr, "", "the hint is shown on the first run only");
    assert!(out.stdout.ends_with("\n100.64.0.3\n"), "{}", out.stdout);
}

// --- errors ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_daemon_names_the_socket_and_the_fix() {
    let fake = Fake::start(running());
    let out = weft(&fake, &["--socket", "/nonexistent/weftd.sock", "status"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("/nonexistent/weftd.sock"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("WEFT_SOCKET"), "{}", out.stderr);
    let out = weft(&fake, &["--socket", "/nonexistent/weftd.sock", "version"]).await;
    assert_eq!(out.code, 0, "version works without a daemon");
    assert_eq!(out.stdout, format!("weft {}\n", env!("CARGO_PKG_VERSION")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_flags_and_bad_values_are_usage_errors() {
    let fake = Fake::start(running());
    for args in [
        &["up", "--bogus"][..],
        &["up", "--timeout=soon"],
        &["up", "--advertise-tags=9x"],
        &["ping", "web", "-c", "many"],
        &["status", "--peers=perhaps"],
    ] {
        let out = weft(&fake, args).await;
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.starts_with("error:"), "{args:?}: {}", out.stderr);
    }
    assert!(
        fake.with(|s| s.requests.is_empty()),
        "usage errors never reach the daemon"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_shows_the_daemons_version_too() {
    let fake = Fake::start(running());
    let out = weft(&fake, &["version"]).await;
    assert_eq!(
        out.stdout,
        format!("weft {}\nweftd 0.1.0-fake\n", env!("CARGO_PKG_VERSION"))
    );
}

// --- terminal escapes from peers, closed pipes ------------------------------------------------

/// A screen clear, a cursor jump home, a fake status line, a bell, a C1 CSI
/// and a right-to-left override: what a hostile peer might put in its names.
const HOSTILE: &str =
    "evil\x1b[2J\x1b[H\r\n100.64.0.9  bank  alice@  linux  -\x07\u{9b}31m\u{202e}";

/// No byte that a terminal would act on: ESC, CR, BEL, C1, bidi overrides.
fn inert(text: &str) -> bool {
    !text.chars().any(|c| {
        (c.is_control() && c != '\n')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_strings_with_terminal_controls_are_printed_escaped_and_json_is_exact() {
    let mut st = running();
    let mut evil = node(9, HOSTILE, &["100.64.0.9"]);
    evil.os = format!("linux{HOSTILE}");
    evil.hostname = HOSTILE.into();
    evil.user = Some(format!("mallory{HOSTILE}@example.com"));
    evil.dns_name = format!("{HOSTILE}.t.weft.internal.");
    st.status.peers.push(evil.clone());
    st.status.health = vec![format!("control says: {HOSTILE}")];
    st.profiles[1].nickname = Some(format!("work{HOSTILE}"));
    st.pings.push_back(PingReply::Pong(PingResult {
        node_name: HOSTILE.into(),
        node_ip: "100.64.0.9".parse().unwrap(),
        via: PingPath::Direct("198.18.0.9:41641".parse().unwrap()),
        latency_ms: 1.0,
    }));
    let fake = Fake::start(st);

    // status: one row per node (the injected line break stays inside the
    // cell), every control shown as an escape, the health footer too.
    let out = weft(&fake, &["status"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(inert(&out.stdout), "{:?}", out.stdout);
    let rows: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(rows.len(), 4 + 2, "{}", out.stdout);
    let evil_row = rows.iter().find(|r| r.starts_with("100.64.0.9")).unwrap();
    assert!(
        evil_row.contains(r"evil\x1b[2J\x1b[H\x0d\x0a100.64.0.9  bank")
            && evil_row.contains(r"\x07\u{9b}31m\u{202e}")
            && evil_row.contains(r"malloryevil\x1b[2J"),
        "{evil_row}"
    );
    assert!(
        out.stdout.contains(r"#     - control says: evil\x1b[2J"),
        "{}",
        out.stdout
    );

    // status --json: exactly what the daemon said, unchanged (JSON itself
    // writes C0 controls as \u001b; a script gets the real value back).
    let out = weft(&fake, &["status", "--json"]).await;
    assert!(
        !out.stdout.contains(['\x1b', '\r', '\x07']),
        "{}",
        out.stdout
    );
    let got: Status = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(got.peers.last().unwrap().os, evil.os);

    // whois, switch --list, ping, and an error that echoes control's words.
    let out = weft(&fake, &["whois", "100.64.0.9"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        inert(&out.stdout) && out.stdout.contains(r"Name:       evil\x1b[2J"),
        "{}",
        out.stdout
    );
    assert_eq!(out.stdout.lines().count(), 7, "{}", out.stdout);
    let out = weft(&fake, &["switch", "--list"]).await;
    assert!(
        inert(&out.stdout) && out.stdout.contains(r"workevil\x1b[2J"),
        "{}",
        out.stdout
    );
    assert_eq!(out.stdout.lines().count(), 3, "{}", out.stdout);
    let out = weft(&fake, &["ping", "-c", "1", "100.64.0.9"]).await;
    assert!(
        inert(&out.stdout) && out.stdout.starts_with(r"pong from evil\x1b[2J"),
        "{}",
        out.stdout
    );
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);
    let mut st = logged_out();
    st.script.insert(
        "start",
        vec![Notify::Error {
            message: format!("control refused: {HOSTILE}"),
        }],
    );
    let fake = Fake::start(st);
    let out = weft(&fake, &["up", "--authkey=k"]).await;
    assert_eq!(out.code, 1);
    assert!(
        inert(&out.stderr) && out.stderr.contains(r"control refused: evil\x1b[2J"),
        "{}",
        out.stderr
    );
}

/// Runs `weft <args> | head -c 10` in bash; returns weft's exit status, its
/// stderr, and what head printed.
async fn weft_into_head(fake: &Fake, args: &str) -> (String, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let err = dir.path().join("stderr");
    let script = format!(
        "'{weft}' {args} 2>'{err}' | head -c 10; echo \" ${{PIPESTATUS[0]}}\"",
        weft = env!("CARGO_BIN_EXE_weft"),
        err = err.display(),
    );
    let out = tokio::time::timeout(
        RUN_LIMIT,
        tokio::process::Command::new("bash")
            .args(["-c", &script])
            .env("WEFT_SOCKET", &fake.socket)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("weft | head hung")
    .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (head, status) = stdout.rsplit_once(' ').unwrap();
    (
        status.trim().to_owned(),
        std::fs::read_to_string(err).unwrap(),
        head.to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_goes_away_ends_every_command_quietly_with_status_0() {
    // Far more output than a pipe holds (64 KiB), so weft is still writing
    // when head has taken its 10 bytes and gone: the next write is EPIPE.
    let mut st = running();
    for i in 0..3000 {
        let ip = format!("100.65.{}.{}", i / 250, i % 250 + 1);
        st.status
            .peers
            .push(node(100 + i, &format!("peer{i}"), &[&ip]));
    }
    st.prefs.advertise_tags = (0..20_000).map(|i| format!("tag:t{i}")).collect();
    for i in 0..3000 {
        st.profiles
            .push(profile(&format!("{i:04x}"), None, "x@example.com", false));
    }
    let fake = Fake::start(st);
    for args in [
        "debug prefs",
        "status",
        "status --json",
        "switch --list",
        "switch --list --json",
    ] {
        let (status, stderr, head) = weft_into_head(&fake, args).await;
        assert_eq!(head.len(), 10, "weft {args}: {head:?}");
        assert_eq!(
            (status.as_str(), stderr.as_str()),
            ("0", ""),
            "weft {args} | head -c 10"
        );
    }
}
