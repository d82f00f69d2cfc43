//! The coordinator's life cycle against the fake control server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::broadcast;
use weft_localapi::{BackendState, Notify, Prefs, PrefsPatch, StartRequest};
use weft_types::control::RegisterAuth;

use super::fake::{FakeControl, FakeDataPlane, Push, URL, URL2};
use crate::daemon::backend::{Backend, DaemonInfo, Handle};
use crate::daemon::bus::Bus;
use crate::daemon::localapi::ApiError;
use crate::daemon::profiles::ProfileStore;
use crate::daemon::state_file::StateFile;

pub struct Harness {
    pub handle: Handle,
    pub stop: tokio::sync::watch::Sender<bool>,
    pub watch: broadcast::Receiver<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Harness {
    pub async fn start(path: &Path, control: &FakeControl, dp: &FakeDataPlane) -> Self {
        let store = ProfileStore::open(path, 1).unwrap();
        let (etx, erx) = tokio::sync::mpsc::unbounded_channel();
        let (handle, jobs) = Backend::mailbox();
        let info = DaemonInfo {
            tun: "weft0".into(),
            os_hostname: "testhost".into(),
        };
        let b = Backend::new(
            store,
            control.options(),
            Box::new(dp.clone()),
            Bus::new(),
            info,
            etx,
        );
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(b.run(jobs, erx, stop_rx));
        let (_, watch) = handle.call(|b| b.watch()).await.unwrap();
        Self {
            handle,
            stop,
            watch,
            task,
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.await.unwrap();
    }

    /// Waits (virtual time, at most 60 s) for an event matching `pred`.
    pub async fn wait(&mut self, what: &str, pred: impl Fn(&Notify) -> bool) -> Notify {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match tokio::time::timeout_at(deadline, self.watch.recv()).await {
                Ok(Ok(n)) if pred(&n) => return n,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("watch failed while waiting for {what}: {e}"),
                Err(_) => panic!("timed out waiting for {what}"),
            }
        }
    }

    /// Returns once the state is `s` (now, or by a later event).
    pub async fn wait_state(&mut self, s: BackendState) {
        if self.state().await == s {
            return;
        }
        self.wait(&format!("state {s:?}"), |n| {
            *n == Notify::State { state: s }
        })
        .await;
    }

    pub async fn state(&self) -> BackendState {
        self.handle.call(|b| b.state()).await.unwrap()
    }

    pub async fn start_with(&self, req: StartRequest) {
        self.handle
            .call(move |b| b.start(req))
            .await
            .unwrap()
            .unwrap();
    }
}

pub fn prefs(url: &str) -> Prefs {
    Prefs {
        control_url: url.into(),
        want_running: true,
        ..Prefs::default()
    }
}

pub fn with_key(url: &str, key: &str) -> StartRequest {
    StartRequest {
        prefs: Some(prefs(url)),
        auth_key: Some(key.into()),
        force_reauth: false,
    }
}

fn state_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("weftd.state")
}

#[tokio::test(start_paused = true)]
async fn an_auth_key_login_reaches_running_and_programs_the_data_plane() {
    let dir = tempfile::tempdir().unwrap();
    let (control, dp) = (FakeControl::new(), FakeDataPlane::default());
    let mut h = Harness::start(&state_path(&dir), &control, &dp).await;
    assert_eq!(h.state().await, BackendState::NeedsLogin);

    h.start_with(with_key(URL, "tskey-good")).await;
    h.wait("login finished", |n| *n == Notify::LoginFinished)
        .await;
    h.wait("netmap", |n| matches!(n, Notify::NetMap { peers: 2 }))
        .await;
    h.wait_state(BackendState::Running).await;

    {
        let log = dp.log.lock().unwrap();
        assert!(log.programmed);
        assert!(
            log.keys.last().unwrap().is_some(),
            "the new node key went to WireGuard"
        );
    }
    let saved = StateFile::load(&state_path(&dir)).unwrap().unwrap();
    let p = saved.current().unwrap();
    assert!(p.is_registered());
    assert_eq!(
        p.control_key,
        Some(super::fake::server_key()),
        "server key pinned at first contact"
    );
    assert_eq!(p.tailnet.as_deref(), Some("example.weft.internal"));
    assert_eq!(
        p.user.as_ref().map(|u| u.login_name.as_str()),
        Some("alice@example.com")
    );
    // The auth key was used once and never stored.
    assert!(
        !std::fs::read_to_string(state_path(&dir))
            .unwrap()
            .contains("tskey-good")
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_refused_auth_key_reports_the_servers_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (control, dp) = (FakeControl::new(), FakeDataPlane::default());
    let mut h = Harness::start(&state_path(&dir), &control, &dp).await;
    h.start_with(with_key(URL, "tskey-bad")).await;
    let e = h.wait("error", |n| matches!(n, Notify::Error { .. })).await;
    assert_eq!(
        e,
        Notify::Error {
            message: "invalid auth key: unknown".into()
        }
    );
    assert_eq!(h.state().await, BackendState::NeedsLogin);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_busy_server_is_reported_and_registered_with_again_after_the_delay_it_named() {
    let dir = tempfile::tempdir().unwrap();
    let (control, dp) = (FakeControl::new(), FakeDataPlane::default());
    control.s().busy = 2;
    let mut h = Harness::start(&state_path(&dir), &control, &dp).await;
    let t0 = tokio::time::Instant::now();
    h.start_with(with_key(URL, "tskey-good")).await;
    let e = h.wait("error", |n| matches!(n, Notify::Error { .. })).await;
    let Notify::Error { message } = e else {
        unreachable!()
    };
    assert!(
        message.contains("busy") && message.contains("try again in 3.0 s"),
        "{message}"
    );
    h.wait("login finished", |n| *n == Notify::LoginFinished)
        .await;
    h.wait_state(BackendState::Running).await;
    let waited = t0.elapsed();
    let calls = control.s().register_calls.len();
    assert_eq!(calls, 3, "two busy answers, then served");
    let named = Duration::from_millis(2 * super::fake::BUSY_RETRY_MS);
    assert!(
        waited >= named && waited < named + Duration::from_secs(5),
        "came back after {waited:?}, the server named 2 × {} ms",
        super::fake::BUSY_RETRY_MS
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_server_is_reported_with_its_url_within_ten_seconds_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (control, dp) = (FakeControl::new(), FakeDataPlane::default());
    let dead = "http://198.18.9.9:8080";
    let mut h = Harness::start(&state_path(&dir), &control, &dp).await;
    let t0 = tokio::time::Instant::now();
    h.start_with(with_key(dead, "tskey-good")).await;
    let e = h.wait("error", |n| matches!(n, Notify::Error { .. })).await;
    let Notify::Error { message } = e else {
        unreachable!()
    };
    assert!(
        message.contains(dead) && message.contains("connection refused"),
        "{message}"
    );
    assert!(t0.elapsed() <= Duration::from_secs(10));
    let health = h.handle.call(|b| b.health()).await.unwrap();
    assert!(health.iter().any(|m| m.contains(dead)), "{health:?}");
    // It keeps trying, with growing pauses.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let tries = control.s().key_calls;
    assert!((3..=8).contains(&tries), "{tries} attempts in 20 s");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn interactive_login_shows_the_url_once_asked_and_finishes_after_approval() {
    let dir = tempfile::tempdir().unwrap();
    let (control, dp) = (FakeControl::new(), FakeDataPlane::default());
    let mut h = Harness::start(&state_path(&dir), &control, &dp).await;
    h.start_with(StartRequest {
        prefs: Some(prefs(URL)),
        ..StartRequest::default()
    })
    .await;
    h.wait_state(BackendState::NeedsLogin).await;
    // `start` alone mints (at most) one URL and does not show it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    while let Ok(n) = h.watch.try_recv() {
        assert!(
            !matches!(n, Notify::BrowseToUrl { .. }),
            "nothing to browse before login-interactive"
        );
    }
    assert_eq!(control.s().auth_urls.len(), 1, "start minted one URL");
    h.handle.call(|b| b.login_interactive()).await.unwrap();
    let Notify::BrowseToUrl { url } = h
        .wait("url", |n| matches!(n, Notify::BrowseToUrl { .. }))
        .await
    else {
        unreachable!()
    };
    assert!(url.starts_with(URL));
    // Asking again re-sends the pending URL instead of minting another.
    h.handle.call(|b| b.login_interactive()).await.unwrap();
    let again = h
        .wait("url again", |n| matches!(n, Notify::BrowseToUrl { .. }))
        .await;
    assert_eq!(again, Notify::BrowseToUrl { url: url.clone() });
    assert_eq!(control.s().auth_urls.len(), 1);

    control.approve_all();
    h.wait("login finished", |n| *n == Notify::LoginFinished)
        .await;
    h.wait_state(BackendState::Running).await;
    h.stop().await;
}

async fn logged_in(dir: &tempfile::TempDir, control: &FakeControl, dp: &FakeDataPlane) -> Harness {
    let mut h = Harness::start(&state_path(dir), control, dp).await;
    h.start_with(with_key(URL, "tskey-good")).await;
    h.wait_state(BackendState::Running).await;
    h
}

#[tokio::test(start_paused = true)]
async fn down_persists_across_a_restart_and_up_needs_no_new_login() {
    let dir = tempfile::tempdir().unwrap();
    let (control, dp) = (FakeControl::new(), FakeDataPlane::default());
    let mut h = logged_in(&dir, &control, &dp).await;
    let patch = PrefsPatch {
        want_running: Some(false),
        ..PrefsPatch::default()
    };
    h.handle
        .call(move |b| b.edit_prefs(&patch))
        .await
        .unwrap()
        .unwrap();
    h.wait_state(BackendState::Stopped).await;
    assert!(
        !dp.log.lock().unwrap().programmed,
        "down empties the data plane"
    );
    h.stop().await;

    let maps_before = control.s().map_calls;
    let mut h = Harness::start(&state_path(&dir), &control, &dp).await;
    assert_eq!(h.state().await, BackendState::Stopped);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        control.s().map_calls,
        maps_before,
        "a stopped node does not connect"
    );

    let registers = control.s().register_calls.len();
    h.start_with(StartRequest::default()).await;
    h.wait_state(BackendState::Running).await;
    let calls = control.s().register_calls.clone();
    assert_eq!(calls.len(), registers + 1);
    assert_eq!(
        calls.last().unwrap().auth,
        RegisterAuth::None,
        "up reuses the stored key"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_keeps_the_same_keys_and_node() {
    let dir = tempfile::tempdir().unwrap();
    let (control, dp) = (FakeControl::new(), FakeDataPlane::default());
    let h = logged_in(&dir, &control, &dp).await;
    let before = h.handle.call(|b| b.debug_prefs()).await.unwrap();
    h.stop().await;
    let mut h = Harness::start(&state_path(&dir), &control, &dp).await;
    h.wait_state(BackendState::Running).await;
    let after = h.handle.call(|b| b.debug_prefs()).await.unwrap();
    assert_eq!(before, after);
    assert_eq!(control.s().nodes.len(), 1, "no duplicate node");
    assert_eq!(
        control.s().machines.len(),
        1,
        "the same machine key after a restart"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_last_netmap_stays_while_control_is_away() {
    let dir = tempfile::tempdir().unwrap();
    let (control, dp) = (FakeControl::new(), FakeDataPlane::default());
    let h = logged_in(&dir, &control, &dp).await;
    let clears = dp.log.lock().unwrap().clears;
    control.push(Push::Reset);
    control.set_up(URL, false);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(h.state().await, BackendState::Running);
    assert_eq!(
        dp.log.lock().unwrap().clears,
        clears,
        "data plane untouched"
    );
    assert!(dp.log.lock().unwrap().programmed);
    let health = h.handle.call(|b| b.health()).await.unwrap();
    assert!(
        health
            .iter()
            .any(|m| m.contains("keeping the last network map")),
        "{health:?}"
    );

    control.set_up(URL, true);
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert!(h.handle.call(|b| b.health()).await.unwrap().is_empty());
    assert_eq!(control.s().nodes.len(), 1);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_expired_key_needs_a_new_login_and_force_reauth_rotates_it() {
    let dir = tempfile::tempdir().unwrap();
    let (control, dp) = (FakeControl::new(), FakeDataPlane::default());
    let mut h = logged_in(&dir, &control, &dp).await;
    let old = h
        .handle
        .call(|b| b.debug_prefs())
        .await
        .unwrap()
        .node_key
        .unwrap();
    control.s().expired.insert(old);
    control.push(Push::Error(
        weft_types::control::ErrorCode::NodeKeyExpired,
        "expired".into(),
    ));
    h.wait_state(BackendState::NeedsLogin).await;
    assert!(!dp.log.lock().unwrap().programmed, "traffic stops");
    let health = h.handle.call(|b| b.health()).await.unwrap();
    assert!(
        health.iter().any(|m| m.contains("--force-reauth")),
        "{health:?}"
    );

    h.start_with(StartRequest {
        prefs: None,
        auth_key: Some("tskey-good".into()),
        force_reauth: true,
    })
    .await;
    h.wait_state(BackendState::Running).await;
    let new = h
        .handle
        .call(|b| b.debug_prefs())
        .await
        .unwrap()
        .node_key
        .unwrap();
    assert_ne!(new, old);
    let last = control
        .s()
        .register_calls
        .iter()
        .rev()
        .find(|r| r.node_key == new)
        .cloned()
        .unwrap();
    assert_eq!(last.old_node_key, Some(old));
    assert_eq!(dp.log.lock().unwrap().keys.last().unwrap(), &Some(new));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_refused_reauth_puts_the_prefs_back_and_resumes_the_old_registration() {
    let dir = tempfile::tempdir().unwrap();
    let (control, dp) = (FakeControl::new(), FakeDataPlane::default());
    let mut h = logged_in(&dir, &control, &dp).await;
    let before = h.handle.call(|b| b.debug_prefs()).await.unwrap();
    let maps_before = control.s().map_calls;
    let mut wish = prefs(URL);
    wish.advertise_tags = vec!["tag:db".into()];
    h.start_with(StartRequest {
        prefs: Some(wish),
        auth_key: Some("tskey-bad".into()),
        force_reauth: true,
    })
    .await;
    let e = h.wait("error", |n| matches!(n, Notify::Error { .. })).await;
    assert_eq!(
        e,
        Notify::Error {
            message: "invalid auth key: unknown".into()
        }
    );
    let after = h.handle.call(|b| b.debug_prefs()).await.unwrap();
    assert_eq!(after, before, "the refused login left nothing behind");
    // The old registration's map stream is opened again.
    for _ in 0..200 {
        if control.s().map_calls > maps_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        control.s().map_calls > maps_before,
        "no map session resumed"
    );
    h.wait_state(BackendState::Running).await;
    h.stop().await;
}

/// An interactive re-authentication (no auth key: a login URL) that the
/// administrator declines leaves the prefs as they were and the old
/// registration running, as a refused auth key does.
#[tokio::test(start_paused = true)]
async fn a_declined_interactive_reauth_puts_the_prefs_back() {
    let dir = tempfile::tempdir().unwrap();
    let (control, dp) = (FakeControl::new(), FakeDataPlane::default());
    let mut h = logged_in(&dir, &control, &dp).await;
    let before = h.handle.call(|b| b.debug_prefs()).await.unwrap();
    let mut wish = prefs(URL);
    wish.advertise_tags = vec!["tag:db".into()];
    h.start_with(StartRequest {
        prefs: Some(wish),
        auth_key: None,
        force_reauth: true,
    })
    .await;
    h.handle.call(|b| b.login_interactive()).await.unwrap();
    h.wait("the login URL", |n| matches!(n, Notify::BrowseToUrl { .. }))
        .await;
    control.decline_all();
    let e = h.wait("error", |n| matches!(n, Notify::Error { .. })).await;
    assert_eq!(
        e,
        Notify::Error {
            message: "the login was declined".into()
        }
    );
    let after = h.handle.call(|b| b.debug_prefs()).await.unwrap();
    assert_eq!(after, before, "the declined login left nothing behind");
    h.wait_state(BackendState::Running).await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn logout_expires_the_key_at_control_and_removes_the_profile() {
    let dir = tempfile::tempdir().unwrap();
    let (control, dp) = (FakeControl::new(), FakeDataPlane::default());
    let mut h = logged_in(&dir, &control, &dp).await;
    let old_id = h
        .handle
        .call(|b| b.store().current().id.clone())
        .await
        .unwrap();
    let job = h
        .handle
        .call(|b| b.begin_logout())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let id = job.profile_id.clone();
    let r = job.run().await;
    h.handle
        .call(move |b| b.finish_logout(&id, r))
        .await
        .unwrap()
        .unwrap();
    h.wait_state(BackendState::NeedsLogin).await;
    assert!(
        control.s().nodes.is_empty(),
        "the key was expired at control"
    );
    // The logged-out profile is gone; the empty slot left in its place
    // keeps the server (so `weft up` goes back there) and is not listed.
    let profiles = h.handle.call(|b| b.profiles()).await.unwrap();
    assert!(profiles.is_empty(), "{profiles:?}");
    let slot = h.handle.call(|b| b.current_summary()).await.unwrap();
    assert_ne!(slot.id, old_id);
    assert_eq!(slot.control_url, URL);
    assert!(!slot.registered);
    assert!(!dp.log.lock().unwrap().programmed);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn logout_with_control_down_fails_and_keeps_the_profile() {
    let dir = tempfile::tempdir().unwrap();
    let (control, dp) = (FakeControl::new(), FakeDataPlane::default());
    let h = logged_in(&dir, &control, &dp).await;
    control.set_up(URL, false);
    let job = h
        .handle
        .call(|b| b.begin_logout())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let id = job.profile_id.clone();
    let r = job.run().await;
    let err = h
        .handle
        .call(move |b| b.finish_logout(&id, r))
        .await
        .unwrap()
        .unwrap_err();
    let err = ApiError::from(err);
    assert_eq!(err.status, 502);
    assert!(err.message.contains(URL), "{}", err.message);
    assert!(
        h.handle
            .call(|b| b.store().current().is_registered())
            .await
            .unwrap()
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn two_tailnets_side_by_side_switch_without_a_new_login() {
    let dir = tempfile::tempdir().unwrap();
    let (control, dp) = (FakeControl::new(), FakeDataPlane::default());
    let mut h = logged_in(&dir, &control, &dp).await;
    let first = h
        .handle
        .call(|b| b.store().current().id.clone())
        .await
        .unwrap();
    // weft login --login-server=URL2 --auth-key=…
    let second = h
        .handle
        .call(|b| b.new_profile())
        .await
        .unwrap()
        .unwrap()
        .id;
    h.start_with(with_key(URL2, "tskey-good")).await;
    h.wait_state(BackendState::Running).await;
    let nick = PrefsPatch {
        nickname: Some(Some("work".into())),
        ..PrefsPatch::default()
    };
    h.handle
        .call(move |b| b.edit_prefs(&nick))
        .await
        .unwrap()
        .unwrap();
    let list = h.handle.call(|b| b.profiles()).await.unwrap();
    assert_eq!(list.len(), 2);
    assert!(list.iter().any(|p| p.id == second
        && p.selected
        && p.nickname.as_deref() == Some("work")
        && p.control_url == URL2));

    let auth_logins = |c: &FakeControl| {
        c.s()
            .register_calls
            .iter()
            .filter(|r| r.auth != RegisterAuth::None)
            .count()
    };
    let logins = auth_logins(&control);
    let f = first.clone();
    h.handle
        .call(move |b| b.switch_profile(&f))
        .await
        .unwrap()
        .unwrap();
    h.wait_state(BackendState::Running).await;
    let s = second.clone();
    h.handle
        .call(move |b| b.switch_profile(&s))
        .await
        .unwrap()
        .unwrap();
    h.wait_state(BackendState::Running).await;
    assert_eq!(
        auth_logins(&control),
        logins,
        "switching never logs in again"
    );
    let e = h.handle.call(|b| b.switch_profile("ffff")).await.unwrap();
    if first != "ffff" && second != "ffff" {
        assert_eq!(ApiError::from(e.unwrap_err()).status, 404);
    }
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn endpoint_changes_reach_the_open_map_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (control, dp) = (FakeControl::new(), FakeDataPlane::default());
    let h = logged_in(&dir, &control, &dp).await;
    let ep = weft_types::Endpoint {
        addr: "198.18.0.7:41641".parse().unwrap(),
        kind: weft_types::EndpointKind::Local,
    };
    h.handle
        .call(move |b| b.set_endpoints(vec![ep]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let got = control.s().updates.last().cloned().unwrap();
    assert_eq!(
        got,
        weft_types::control::ClientMessage::Endpoints(weft_types::control::EndpointUpdate {
            endpoints: vec![ep],
            home_relay: None,
        })
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_start_always_announces_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let (control, dp) = (FakeControl::new(), FakeDataPlane::default());
    let mut h = logged_in(&dir, &control, &dp).await;
    h.start_with(StartRequest {
        prefs: Some(Prefs {
            run_ssh: true,
            ..prefs(URL)
        }),
        ..StartRequest::default()
    })
    .await;
    h.wait_state(BackendState::Running).await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_magicdns_resolver_that_stopped_is_a_health_line_until_it_serves_again() {
    use crate::daemon::dns::{DnsHandle, ServiceState};
    let dir = tempfile::tempdir().unwrap();
    let (control, dp) = (FakeControl::new(), FakeDataPlane::default());
    dp.log.lock().unwrap().dns = Some(DnsHandle::in_state(ServiceState::Serving));
    let h = logged_in(&dir, &control, &dp).await;
    assert!(h.handle.call(|b| b.health()).await.unwrap().is_empty());

    dp.log.lock().unwrap().dns = Some(DnsHandle::in_state(ServiceState::Stopped(
        "the task panicked: boom".into(),
    )));
    let health = h.handle.call(|b| b.health()).await.unwrap();
    assert_eq!(health.len(), 1, "{health:?}");
    assert!(
        health[0]
            .starts_with("MagicDNS resolver at 100.100.100.100 stopped (the task panicked: boom)"),
        "{health:?}"
    );
    h.stop().await;
}
