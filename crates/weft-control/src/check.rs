//! SSH check mode on the server (docs/PROTOCOL.md §"SSH check"): a node
//! whose SSH server holds a login under a `check` rule asks whether the
//! tailnet user re-authenticated recently; if not, the user approves at
//! `<server>/a/<check-id>`, the same link and approval command as an
//! interactive device login (`weft-control nodes approve <id> --user <login>`,
//! or the authenticator's own flow through [`crate::auth::CompleteLogin`]).
//!
//! Rules:
//! - Only the tailnet user who owns the source node may approve; another
//!   user's approval is refused (the check stays pending).
//! - An approval is remembered per (user, source node) for the approving
//!   rule's `checkPeriod`: an approval on one device does not vouch for
//!   another. A later check is accepted at once while its own rule's
//!   period, counted from the approval, and the approval's have both not
//!   run out: a rule with a longer period does not stretch an approval
//!   given under a shorter one. A `checkPeriod` of zero (`always`) approves
//!   only the login at hand and is not remembered.
//! - Approvals are in the database (`Store::put_ssh_approval`), written
//!   before the node hears the verdict, so they survive a restart of
//!   control; they end on time, when an admin revokes them
//!   (`weft-control ssh approvals revoke`) or expires the source node, and
//!   with the user or node.
//! - A check that nobody approves is rejected at the earlier of the node's
//!   `max_wait` and [`MAX_CHECK_WAIT`]; one whose connection closes is
//!   forgotten.
//!
//! Pending checks are kept in memory, in `waiting::Checks`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use weft_control_store::{SshApproval, StoreError};
use weft_types::control::{SshCheckRequest, SshCheckVerdict, is_auth_id};
use weft_types::{MachinePublic, NodeId, UnixMillis, UserId};

use crate::clock;
use crate::ctx::Ctx;
use crate::pages::{CheckInfo, login_url};
use crate::waiting::{ApproveError, ApprovedCheck, PendingCheck};

/// The longest control holds a check open, whatever the node asks.
pub const MAX_CHECK_WAIT: Duration = Duration::from_secs(10 * 60);

/// The longest SSH login or local account name a check may name, in bytes.
pub const MAX_CHECK_USER_LEN: usize = 256;

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
    if let Some(until) = fresh(ctx, user, src.id, period, now).await? {
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
    let check = PendingCheck {
        user,
        src_node: src.id,
        dst_node: dst.id,
        period,
        info: CheckInfo {
            login: login.clone(),
            src_name: src.given_name.to_string(),
            dst_name: dst.given_name.to_string(),
            ssh_user: req.ssh_user.clone(),
            local_user: req.local_user.clone(),
            expires,
            period,
        },
        tx,
    };
    if taken || !ctx.checks.add(&req.check_id, check) {
        return refuse("this check id is already in use; try again");
    }
    tracing::info!(check = %req.check_id, user = %login, src = %src.given_name, dst = %dst.given_name, ssh_user = %req.ssh_user, "ssh check waiting for approval");
    let auth_url = login_url(&ctx.server_url, &req.check_id);
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

/// Returns until when an approval backs a check from `(user, src)` under a
/// rule with `period` at `now` (see the module docs), if one does.
async fn fresh(
    ctx: &Ctx,
    user: UserId,
    src: NodeId,
    period: Duration,
    now: UnixMillis,
) -> Result<Option<UnixMillis>, StoreError> {
    if period.is_zero() {
        return Ok(None);
    }
    let Some(a) = ctx.store.ssh_approval(user, src, now).await? else {
        return Ok(None);
    };
    let until = a.approved.saturating_add(period).min(a.expires);
    Ok((now < until).then_some(until))
}

/// Approves pending check `id` as `user` (`login`): records the approval,
/// then lets the login through. Returns `None` if `id` is not a pending
/// check.
///
/// The approval is committed before the node hears the verdict, so what a
/// user was told is approved survives a restart. If it cannot be stored,
/// the check stays pending and the error is returned (the approver may try
/// again).
pub(crate) async fn approve(
    ctx: &Ctx,
    id: &str,
    user: UserId,
    login: &str,
    now: UnixMillis,
) -> Option<Result<ApprovedCheck, ApproveFailed>> {
    let c = match ctx.checks.approvable(id, user, login, now)? {
        Ok(c) => c,
        Err(e) => return Some(Err(ApproveFailed::Refused(e))),
    };
    let until = now.saturating_add(c.period);
    if !c.period.is_zero() {
        let record = SshApproval {
            user: c.user,
            node: c.src_node,
            approved: now,
            expires: until,
            approved_by: login.to_owned(),
            check_id: id.to_owned(),
            dst_node: Some(c.dst_node),
            local_user: c.info.local_user.clone(),
        };
        if let Err(e) = ctx.store.put_ssh_approval(&record).await {
            return Some(Err(ApproveFailed::Store(e)));
        }
    }
    // Given up meanwhile (timed out, or the SSH client left): the approval
    // stands for the next login.
    ctx.checks.accept(id, SshCheckVerdict::Accept { until });
    Some(Ok(ApprovedCheck {
        src_node: c.src_node,
        info: c.info,
        period: c.period,
    }))
}

/// Why [`approve`] did not approve.
#[derive(Debug)]
pub(crate) enum ApproveFailed {
    /// Not this user's to approve, or too late.
    Refused(ApproveError),
    /// The approval could not be recorded.
    Store(StoreError),
}
