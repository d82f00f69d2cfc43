//! SSH check mode on the server (docs/PROTOCOL.md §"SSH check"): a node
//! whose SSH server holds a login under a `check` rule asks whether the
//! tailnet user re-authenticated recently; if not, the user approves at
//! `<server>/a/<check-id>`, the same link and approval command as an
//! interactive device login (`weft-control nodes approve <id> --user <login>`
//! or the authenticator's own flow through [`crate::admin::Admin`]).
//!
//! Rules:
//! - Only the tailnet user who owns the source node may approve; another
//!   user's approval is refused (the check stays pending).
//! - An approval is remembered per (user, source node) for the rule's
//!   `checkPeriod`: an approval on one device does not vouch for another.
//! - A check that nobody approves is rejected at the earlier of the node's
//!   `max_wait` and [`MAX_CHECK_WAIT`]; one whose connection closes is
//!   forgotten.
//!
//! Approvals live in memory, not in the database: they are short-lived
//! (minutes to hours), losing them at a restart costs the user one more
//! approval (it fails safe), and they need no schema. Several server
//! processes behind one database would each keep their own.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
use weft_control_store::StoreError;
use weft_types::control::{SshCheckRequest, SshCheckVerdict, is_auth_id};
use weft_types::{MachinePublic, NodeId, UnixMillis, UserId};

use crate::clock;
use crate::ctx::Ctx;
use crate::registration::LOGIN_PATH;

/// The longest control holds a check open, whatever the node asks.
pub const MAX_CHECK_WAIT: Duration = Duration::from_secs(10 * 60);

/// The longest SSH login or local account name a check may name, in bytes.
pub const MAX_CHECK_USER_LEN: usize = 256;

/// Approvals remembered at most (the oldest are dropped beyond it).
const MAX_APPROVALS: usize = 65_536;

/// A check waiting for its user.
#[derive(Debug)]
struct Pending {
    user: UserId,
    login: String,
    src_node: NodeId,
    src_name: String,
    dst_name: String,
    ssh_user: String,
    local_user: String,
    period: Duration,
    expires: UnixMillis,
    tx: oneshot::Sender<SshCheckVerdict>,
}

#[derive(Debug, Default)]
struct Inner {
    pending: BTreeMap<String, Pending>,
    /// (user, source node) → when approved and for how long.
    approved: BTreeMap<(UserId, NodeId), (UnixMillis, Duration)>,
}

/// The checks in progress and the recent approvals.
#[derive(Debug, Default)]
pub(crate) struct Checks {
    inner: Mutex<Inner>,
}

/// What the login page of a pending check shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckInfo {
    /// The tailnet user who must approve.
    pub login: String,
    /// The node the SSH connection comes from.
    pub src_name: String,
    /// The node being logged in to.
    pub dst_name: String,
    /// The login name asked for.
    pub ssh_user: String,
    /// The local account.
    pub local_user: String,
    /// When the check gives up.
    pub expires: UnixMillis,
}

/// Why an approval of a check was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ApproveError {
    /// Someone other than the user it is for.
    #[error(
        "this SSH check is for {owner}'s login from {src}; only {owner} may approve it, not {approver}"
    )]
    WrongUser {
        owner: String,
        src: String,
        approver: String,
    },
    /// Too late.
    #[error("this SSH check has expired; the login was refused")]
    Expired,
}

/// The first answer to a check, and the rest when it must wait.
pub(crate) enum Start {
    /// Decided at once.
    Now(SshCheckVerdict),
    /// `pending` was answered; the final verdict comes from the future.
    Wait(
        SshCheckVerdict,
        Pin<Box<dyn Future<Output = SshCheckVerdict> + Send>>,
    ),
}

fn reject(message: impl Into<String>) -> SshCheckVerdict {
    SshCheckVerdict::Reject {
        message: message.into(),
    }
}

impl Checks {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns what the page of a pending check shows, if `id` is one.
    pub fn info(&self, id: &str) -> Option<CheckInfo> {
        self.lock().pending.get(id).map(|p| CheckInfo {
            login: p.login.clone(),
            src_name: p.src_name.clone(),
            dst_name: p.dst_name.clone(),
            ssh_user: p.ssh_user.clone(),
            local_user: p.local_user.clone(),
            expires: p.expires,
        })
    }

    /// Approves check `id` as `approver` (`user`). Returns `None` if `id`
    /// is not a pending check, else the source node it vouches for.
    pub fn approve(
        &self,
        id: &str,
        user: UserId,
        approver: &str,
        now: UnixMillis,
    ) -> Option<Result<NodeId, ApproveError>> {
        let mut inner = self.lock();
        let p = inner.pending.get(id)?;
        if now >= p.expires {
            return Some(Err(ApproveError::Expired));
        }
        if p.user != user {
            return Some(Err(ApproveError::WrongUser {
                owner: p.login.clone(),
                src: p.src_name.clone(),
                approver: approver.to_owned(),
            }));
        }
        let p = inner.pending.remove(id)?;
        if inner.approved.len() >= MAX_APPROVALS {
            inner
                .approved
                .retain(|_, (at, period)| at.saturating_add(*period) > now);
            if inner.approved.len() >= MAX_APPROVALS {
                inner.approved.clear();
            }
        }
        inner.approved.insert((p.user, p.src_node), (now, p.period));
        tracing::info!(check = id, user = %p.login, src = %p.src_name, dst = %p.dst_name, ssh_user = %p.ssh_user, "ssh check approved");
        let _ = p.tx.send(SshCheckVerdict::Accept {
            until: now.saturating_add(p.period),
        });
        Some(Ok(p.src_node))
    }

    /// Declines check `id`. Returns whether it was one.
    pub fn reject(&self, id: &str) -> bool {
        let Some(p) = self.lock().pending.remove(id) else {
            return false;
        };
        tracing::info!(check = id, user = %p.login, src = %p.src_name, "ssh check declined");
        let _ = p.tx.send(reject("an administrator declined this login"));
        true
    }

    /// Returns until when a fresh approval backs `(user, src)` for `period`.
    fn fresh(
        &self,
        user: UserId,
        src: NodeId,
        period: Duration,
        now: UnixMillis,
    ) -> Option<UnixMillis> {
        let (at, _) = *self.lock().approved.get(&(user, src))?;
        let until = at.saturating_add(period);
        (!period.is_zero() && now < until).then_some(until)
    }

    fn forget(&self, id: &str) {
        self.lock().pending.remove(id);
    }
}

/// Removes a pending check when its waiter goes away (answered, expired,
/// or the connection closed).
struct Forget {
    ctx: Arc<Ctx>,
    id: String,
}

impl Drop for Forget {
    fn drop(&mut self) {
        self.ctx.checks.forget(&self.id);
    }
}

/// Answers a check from the machine `mk`.
pub(crate) async fn start(ctx: Arc<Ctx>, mk: MachinePublic, req: SshCheckRequest) -> Start {
    match decide(&ctx, mk, &req).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "ssh check failed");
            Start::Now(reject(format!(
                "the control server could not check this login: {e}"
            )))
        }
    }
}

async fn decide(
    ctx: &Arc<Ctx>,
    mk: MachinePublic,
    req: &SshCheckRequest,
) -> Result<Start, StoreError> {
    let now = ctx.clock.now();
    let refuse = |m: &str| Ok(Start::Now(reject(m)));
    if !is_auth_id(&req.check_id) {
        return refuse("the check id is not 32 lowercase hex digits");
    }
    let bad_name = |s: &str| s.len() > MAX_CHECK_USER_LEN || s.chars().any(char::is_control);
    if bad_name(&req.ssh_user) || bad_name(&req.local_user) {
        return refuse(
            "the login or local account name is longer than 256 bytes or holds control characters",
        );
    }
    let dst = match ctx.store.node_by_node_key(&req.node_key).await {
        Ok(n) if n.machine_key == mk && !n.is_expired(now) => n,
        Ok(_) | Err(StoreError::UnknownNodeKey(_)) => {
            return refuse(
                "the node asking for this check is not registered to its machine (or its key expired)",
            );
        }
        Err(e) => return Err(e),
    };
    let src = match ctx.store.node(req.src_node).await {
        Ok(n) => n,
        Err(StoreError::UnknownNode(_)) => {
            return refuse("the source node of this login is not in the tailnet");
        }
        Err(e) => return Err(e),
    };
    let Some(user) = src.user else {
        return refuse("a tagged node has no user to re-authenticate; use an accept rule for tags");
    };
    if user != req.src_user {
        return refuse("the source node belongs to another user than this check names");
    }
    let login = ctx.store.user(user).await?.login_name.to_string();
    let period = Duration::from_millis(req.check_period_ms);
    if let Some(until) = ctx.checks.fresh(user, src.id, period, now) {
        tracing::info!(user = %login, src = %src.given_name, dst = %dst.given_name, "ssh check accepted: approved within the check period");
        return Ok(Start::Now(SshCheckVerdict::Accept { until }));
    }
    let taken = match ctx.store.auth_request(&req.check_id).await {
        Ok(_) => true,
        Err(StoreError::UnknownAuthRequest(_)) => false,
        Err(e) => return Err(e),
    };
    let wait = Duration::from_millis(req.max_wait_ms).min(MAX_CHECK_WAIT);
    let expires = now.saturating_add(wait);
    let (tx, rx) = oneshot::channel();
    {
        let mut inner = ctx.checks.lock();
        if taken || inner.pending.contains_key(&req.check_id) {
            return refuse("this check id is already in use; try again");
        }
        inner.pending.insert(
            req.check_id.clone(),
            Pending {
                user,
                login: login.clone(),
                src_node: src.id,
                src_name: src.given_name.to_string(),
                dst_name: dst.given_name.to_string(),
                ssh_user: req.ssh_user.clone(),
                local_user: req.local_user.clone(),
                period,
                expires,
                tx,
            },
        );
    }
    tracing::info!(check = %req.check_id, user = %login, src = %src.given_name, dst = %dst.given_name, ssh_user = %req.ssh_user, "ssh check waiting for approval");
    let auth_url = format!("{}{LOGIN_PATH}{}", ctx.server_url, req.check_id);
    let guard = Forget {
        ctx: ctx.clone(),
        id: req.check_id.clone(),
    };
    let within = if wait < Duration::from_secs(120) {
        format!("{} seconds", wait.as_secs())
    } else {
        format!("{} minutes", wait.as_secs().div_ceil(60))
    };
    let clock = ctx.clock.clone();
    let fut = async move {
        let _guard = guard;
        tokio::select! {
            r = rx => r.unwrap_or_else(|_| reject("the check was abandoned")),
            () = clock::sleep_until(&*clock, expires) => {
                reject(format!("the login was not approved within {within}"))
            }
        }
    };
    Ok(Start::Wait(
        SshCheckVerdict::Pending { auth_url, expires },
        Box::pin(fut),
    ))
}

/// The page at `/a/<check-id>` when the authenticator has none of its own:
/// who must approve, what, and the command to do it.
pub fn default_page(id: &str, info: &CheckInfo, now: UnixMillis) -> crate::auth::LoginPage {
    use crate::auth::escape;
    let status = if now >= info.expires { 410 } else { 200 };
    let minutes = info.expires.saturating_since(now).as_secs().div_ceil(60);
    let body = format!(
        "<h1>Approve an SSH login</h1>\
         <p><b>{login}</b> is logging in from <b>{src}</b> to <b>{dst}</b> as <b>{ssh_user}</b> \
         (local account <code>{local}</code>). The tailnet policy asks {login} to confirm it.</p>\
         <p>To approve, {login} (or an administrator on their behalf) runs:</p>\
         <pre>weft-control nodes approve {id} --user {login}</pre>\
         <p>Only {login} can approve this login. It is refused in about {minutes} minute(s) otherwise. \
         If you did not start it, decline it: <code>weft-control nodes reject {id}</code>.</p>",
        login = escape(&info.login),
        src = escape(&info.src_name),
        dst = escape(&info.dst_name),
        ssh_user = escape(&info.ssh_user),
        local = escape(&info.local_user),
        id = escape(id),
    );
    crate::auth::LoginPage {
        status,
        html: format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>SSH check · Weft</title></head><body>{body}</body></html>"
        ),
    }
}
