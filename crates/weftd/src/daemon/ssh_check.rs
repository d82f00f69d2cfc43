//! SSH check mode in the daemon: the [`CheckHook`] that asks control
//! whether a login held by a `check` rule may proceed (docs/PROTOCOL.md
//! §"SSH check").
//!
//! When the SSH server holds a login, [`ControlCheckHook::start`]:
//! 1. picks a random check id and returns the URL `<control>/a/<id>` at
//!    once; the server shows it to the client in the keyboard-interactive
//!    instruction text, which OpenSSH prints (a `BatchMode` client never
//!    asks for keyboard-interactive, so it sees only "Permission denied");
//! 2. opens a connection of its own to control ([`weft_client::ssh_check`],
//!    the same conversation and driver as the map stream's) and sends the
//!    check: the source node and its user from the netmap,
//!    the login, the rule's `checkPeriod` and how long we wait;
//! 3. resolves the outcome when control answers: `accept` (approved by that
//!    user, now or within the period) lets the login in, `reject`
//!    (declined, another problem, or nobody approved within the bound)
//!    refuses it with control's message.
//!
//! The wait is bounded by [`DEFAULT_MAX_WAIT`] (10 minutes, or
//! `WEFTD_SSH_CHECK_TIMEOUT` seconds, which tests set short). If the SSH
//! client goes away first, the outcome future is dropped, the connection
//! to control closes and control forgets the check.
//!
//! The hook's `start` is synchronous (the server shows the URL before it
//! waits), so what it needs from the coordinator (control URL and keys, our
//! node key, the netmap) is kept in a snapshot that a small task refreshes
//! on every backend event.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{broadcast, oneshot, watch};
use weft_client::{CheckProgress, CheckResult, ConnectOptions, Target};
use weft_ssh::{CheckHook, CheckOutcome, CheckRequest, PendingCheck};
use weft_types::control::SshCheckRequest;
use weft_types::{MachinePrivate, MachinePublic, NetMap, NodeOwner, NodePublic};

use super::backend::{Backend, Handle};

/// How long a login waits for approval unless configured.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(10 * 60);

/// The environment variable that shortens (or lengthens) the wait, in
/// seconds (tests use a few seconds).
pub const MAX_WAIT_ENV: &str = "WEFTD_SSH_CHECK_TIMEOUT";

/// What a check needs from the coordinator, refreshed on every event.
#[derive(Clone)]
struct Snapshot {
    url: String,
    ca_file: Option<String>,
    machine_key: MachinePrivate,
    server_key: MachinePublic,
    node_key: NodePublic,
    netmap: Arc<NetMap>,
}

impl Snapshot {
    /// Reads the snapshot; `None` until the node is registered and has a
    /// netmap and a pinned control key.
    fn of(b: &Backend) -> Option<Snapshot> {
        let p = b.store().current();
        Some(Snapshot {
            url: p.prefs.control_url.clone(),
            ca_file: p.prefs.control_ca_file.clone(),
            machine_key: b.store().machine_key().clone(),
            server_key: p.control_key?,
            node_key: p.node_key.as_ref().filter(|_| p.is_registered())?.public(),
            netmap: Arc::clone(b.netmap()?),
        })
    }
}

/// The [`CheckHook`] that asks the control server. See the module docs.
#[derive(Clone)]
pub struct ControlCheckHook {
    snapshot: Arc<Mutex<Option<Snapshot>>>,
    opts: ConnectOptions,
    max_wait: Duration,
}

impl std::fmt::Debug for ControlCheckHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlCheckHook")
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

/// Returns the wait bound from [`MAX_WAIT_ENV`], else [`DEFAULT_MAX_WAIT`].
pub fn max_wait_from_env() -> Duration {
    match std::env::var(MAX_WAIT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        Some(s) if s > 0 => Duration::from_secs(s),
        _ => DEFAULT_MAX_WAIT,
    }
}

impl ControlCheckHook {
    /// Creates the hook and starts the task that keeps its snapshot fresh;
    /// the task ends when `stop` becomes true or the coordinator goes away.
    pub fn spawn(handle: Handle, max_wait: Duration, mut stop: watch::Receiver<bool>) -> Self {
        let snapshot: Arc<Mutex<Option<Snapshot>>> = Arc::default();
        let shared = Arc::clone(&snapshot);
        tokio::spawn(async move {
            let Ok((_, mut events)) = handle.call(|b| b.watch()).await else {
                return;
            };
            loop {
                let Ok(s) = handle.call(|b| Snapshot::of(b)).await else {
                    break;
                };
                *shared.lock().unwrap_or_else(PoisonError::into_inner) = s;
                tokio::select! {
                    ev = events.recv() => match ev {
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        });
        Self {
            snapshot,
            opts: ConnectOptions::default(),
            max_wait,
        }
    }
}

impl ControlCheckHook {
    /// Returns how to reach control and our node key, once registered
    /// (shared with the recording uploader).
    pub fn control_target(&self) -> Option<(Target, NodePublic)> {
        let snap = self
            .snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()?;
        let url = super::control::control_url(&snap.url, snap.ca_file.as_deref()).ok()?;
        Some((
            Target {
                url,
                machine_key: snap.machine_key,
                server_key: snap.server_key,
            },
            snap.node_key,
        ))
    }
}

/// A check that cannot even be asked: refused at once with `message`.
fn refused(message: String) -> PendingCheck {
    PendingCheck {
        url: String::new(),
        outcome: Box::pin(async move { CheckOutcome::Denied { message } }),
    }
}

/// Aborts the task asking control when the outcome is dropped (the SSH
/// client went away), which closes the connection to control.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl CheckHook for ControlCheckHook {
    fn start(&self, req: CheckRequest) -> PendingCheck {
        let Some(snap) = self
            .snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        else {
            return refused(
                "this node is not connected to its control server; try again later".into(),
            );
        };
        if let Some(uid) = req.peer.client_uid() {
            // Control approves tailnet users, not local accounts.
            return refused(format!(
                "a login from this node itself (local uid {uid}) cannot be approved at the \
                 control server; the policy needs an accept rule for this node's own logins"
            ));
        }
        let Some(src) = snap
            .netmap
            .peers
            .values()
            .find(|n| n.stable_id.to_string() == req.peer.node_id)
        else {
            return refused(format!(
                "the node {} is not in this node's netmap",
                req.peer.node_name
            ));
        };
        let NodeOwner::User(src_user) = src.owner else {
            return refused(
                "a tagged node cannot re-authenticate; the policy needs an accept rule for it"
                    .into(),
            );
        };
        let url = match super::control::control_url(&snap.url, snap.ca_file.as_deref()) {
            Ok(u) => u,
            Err(e) => return refused(format!("the control server URL is not usable: {e}")),
        };
        let check_id = weft_client::check_id_from(weft_types::entropy::bytes());
        let auth_url = format!("{}/a/{check_id}", snap.url.trim_end_matches('/'));
        let request = SshCheckRequest {
            request_id: weft_types::entropy::u64(),
            node_key: snap.node_key,
            check_id,
            src_node: src.id,
            src_user,
            ssh_user: req.ssh_user.clone(),
            local_user: req.local_user.clone(),
            check_period_ms: u64::try_from(req.period.as_millis()).unwrap_or(u64::MAX),
            max_wait_ms: u64::try_from(self.max_wait.as_millis()).unwrap_or(u64::MAX),
        };
        let target = Target {
            url,
            machine_key: snap.machine_key,
            server_key: snap.server_key,
        };
        let opts = self.opts.clone();
        let (tx, rx) = oneshot::channel();
        let peer = req.peer.principal();
        let task = tokio::spawn(async move {
            let outcome = ask(&target, request, &opts).await;
            match &outcome {
                CheckOutcome::Approved => {
                    tracing::info!(%peer, ssh_user = %req.ssh_user, "ssh check approved by control")
                }
                CheckOutcome::Denied { message } => {
                    tracing::info!(%peer, ssh_user = %req.ssh_user, %message, "ssh check refused");
                }
            }
            let _ = tx.send(outcome);
        });
        let guard = AbortOnDrop(task);
        PendingCheck {
            url: auth_url,
            outcome: Box::pin(async move {
                let _guard = guard;
                rx.await.unwrap_or_else(|_| CheckOutcome::Denied {
                    message: "the check with control failed".into(),
                })
            }),
        }
    }
}

/// Sends one check and waits for control's final answer.
async fn ask(target: &Target, request: SshCheckRequest, opts: &ConnectOptions) -> CheckOutcome {
    let denied = |message: String| CheckOutcome::Denied { message };
    let mut wait = match weft_client::ssh_check(target, request, opts).await {
        Ok(w) => w,
        Err(e) => return denied(format!("cannot ask the control server: {e}")),
    };
    loop {
        match wait.next().await {
            Ok(CheckProgress::Pending { auth_url, .. }) => {
                tracing::info!(%auth_url, "ssh check waiting for approval at control");
            }
            Ok(CheckProgress::Done(CheckResult::Accepted { .. })) => return CheckOutcome::Approved,
            Ok(CheckProgress::Done(CheckResult::Rejected { message })) => return denied(message),
            Err(e) => return denied(format!("the check with the control server failed: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use weft_ssh::PeerIdentity;
    use weft_types::{MachinePrivate, NodeId, NodePrivate};

    use super::*;

    /// A hook whose snapshot is `netmap` (self 2, peers 1 and 3; 3 tagged)
    /// with control at `url`, or none at all.
    fn hook(url: Option<&str>) -> ControlCheckHook {
        let snapshot = url.map(|url| {
            let mut nm = crate::daemon::config::tests::netmap(2, &[1, 3]);
            if let Some(ci) = nm.peers.get_mut(&NodeId(3)) {
                ci.owner = NodeOwner::Tags(["tag:ci".parse().unwrap()].into());
            }
            Snapshot {
                url: url.to_owned(),
                ca_file: None,
                machine_key: MachinePrivate::from_bytes([1; 32]),
                server_key: MachinePrivate::from_bytes([2; 32]).public(),
                node_key: NodePrivate::from_bytes([3; 32]).public(),
                netmap: Arc::new(nm),
            }
        });
        ControlCheckHook {
            snapshot: Arc::new(Mutex::new(snapshot)),
            opts: ConnectOptions::default(),
            max_wait: DEFAULT_MAX_WAIT,
        }
    }

    fn request(node_id: &str) -> CheckRequest {
        let addr: IpAddr = "100.64.0.1".parse().unwrap();
        CheckRequest {
            peer: PeerIdentity {
                addr,
                origin: weft_ssh::Origin::Peer,
                node_id: node_id.into(),
                node_name: "node1".into(),
                user_login: None,
                tags: Vec::new(),
            },
            ssh_user: "alice".into(),
            local_user: "alice".into(),
            period: Duration::from_secs(3600),
        }
    }

    async fn denied(p: PendingCheck) -> String {
        match p.outcome.await {
            CheckOutcome::Denied { message } => message,
            CheckOutcome::Approved => panic!("approved"),
        }
    }

    #[tokio::test]
    async fn a_login_is_refused_at_once_while_the_node_has_no_control_connection() {
        let p = hook(None).start(request("n1"));
        assert!(p.url.is_empty());
        assert!(
            denied(p)
                .await
                .contains("not connected to its control server")
        );
    }

    #[tokio::test]
    async fn a_tagged_or_unknown_source_is_refused_without_asking_control() {
        let h = hook(Some("http://127.0.0.1:9"));
        assert!(denied(h.start(request("n3"))).await.contains("tagged node"));
        assert!(
            denied(h.start(request("n99")))
                .await
                .contains("not in this node's netmap")
        );
        // A login from this node itself is a local account's, not a tailnet
        // user's: control cannot approve it.
        let mut local = request("n2");
        local.peer.origin = weft_ssh::Origin::LocalProcess { uid: 1000 };
        let why = denied(h.start(local)).await;
        assert!(
            why.contains("local uid 1000") && why.contains("accept rule"),
            "{why}"
        );
    }

    #[tokio::test]
    async fn the_url_names_control_and_a_fresh_check_id_and_an_unreachable_control_refuses() {
        // A loopback port where nothing listens.
        let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://127.0.0.1:{}", sock.local_addr().unwrap().port());
        drop(sock);
        let h = hook(Some(&format!("{url}/")));
        let first = h.start(request("n1"));
        let second = h.start(request("n1"));
        let id = first
            .url
            .strip_prefix(&format!("{url}/a/"))
            .unwrap()
            .to_owned();
        assert!(weft_types::control::is_auth_id(&id), "{}", first.url);
        assert_ne!(first.url, second.url, "every check gets its own id");
        let message = tokio::time::timeout(Duration::from_secs(20), denied(first))
            .await
            .unwrap();
        assert!(
            message.contains("cannot ask the control server"),
            "{message}"
        );
    }
}
