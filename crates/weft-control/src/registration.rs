//! The server's answer to a `register` request (docs/PROTOCOL.md §8).
//!
//! In order: logout (`expiry: now`); a node key bound to another machine
//! (refused); key rotation (`old_node_key`); a known key of this machine
//! (restart: answered at once, or `node_key_expired`); then the proof of
//! consent: a pre-auth key registers at once, none starts an interactive
//! login (auth URL), a follow-up waits until that login is decided.
//! Every committed change goes to the coordinator before the answer goes
//! out, so the node's next `map` finds it.
//!
//! Before any of that, the server's capacity: at most
//! `max_registrations_in_flight` requests (not counting interactive logins'
//! follow-ups, which wait for a person) are worked on at once; one more is
//! shed at once with [`RefusalReason::ServerBusy`] and a retry delay
//! (`retry_after_ms`, spread per machine so a storm does not come back in
//! step), which clients honour. A registration storm beyond what the
//! database can commit therefore waits in the clients, not in the server's
//! memory or its database queue (issue 17).
//!
//! Then the request is bounded: host info within
//! `weft_types::node::host_info_limits` ([`HostInfo::validate`]), an auth
//! key and a follow-up URL by length. A new interactive login is capped per
//! source address and in total (docs/PROTOCOL.md §12); a machine that
//! starts a new login gives up its older pending one.
//!
//! [`HostInfo::validate`]: weft_types::HostInfo::validate

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use weft_control_store::{
    KeyLifetime, NewAuthRequest, Node as StoreNode, RegisterAuth as StoreAuth, RegisterNode,
    StoreError,
};
use weft_types::control::{
    ExpiryRequest, Refusal, RefusalReason, RegisterAuth, RegisterRequest, RegisterResponse,
    Registered,
};
use weft_types::{MachinePublic, Tag, UnixMillis};

use crate::admission::{LOG_EVERY, LogEvery, Source};
use crate::clock;
use crate::ctx::Ctx;
use crate::pages::{LOGIN_PATH, login_url};
use crate::state::coordinator::Msg;
use crate::waiting::LoginWish;

/// The longest pre-auth key accepted (the server's are under 100 bytes).
pub(crate) const MAX_AUTH_KEY_LEN: usize = 256;
/// The longest follow-up URL accepted.
pub(crate) const MAX_AUTH_URL_LEN: usize = 2048;

/// The shortest delay a shed registration is told to wait; each machine
/// adds its own share of [`SHED_SPREAD_MS`].
pub(crate) const SHED_RETRY_AFTER_MS: u64 = 2_000;
/// How far the retry delays of shed registrations are spread.
pub(crate) const SHED_SPREAD_MS: u64 = 2_000;

/// Logs refusals of bad or capped requests at most once per interval.
static REFUSALS: std::sync::Mutex<Option<LogEvery>> = std::sync::Mutex::new(None);

/// Answers one `register` request from the machine `machine_key`, which
/// connected from `source`.
pub(crate) async fn register(
    ctx: Arc<Ctx>,
    machine_key: MachinePublic,
    source: Option<Source>,
    req: RegisterRequest,
) -> RegisterResponse {
    #[allow(clippy::disallowed_methods)] // measuring only
    let started = std::time::Instant::now();
    // A follow-up waits for a person (up to the login's lifetime) and
    // writes nothing itself: it holds no slot, or logins waiting at their
    // URLs would shed everyone else.
    let _slot = if matches!(req.auth, RegisterAuth::Followup { .. }) {
        None
    } else {
        let Ok(slot) = ctx.registrations.clone().try_acquire_owned() else {
            metrics::counter!("weft_registrations_total", "outcome" => "shed").increment(1);
            return shed(&ctx, &machine_key);
        };
        Some(slot)
    };
    let (resp, outcome) = match handle(&ctx, machine_key, source, req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "registration failed");
            (
                refused(
                    RefusalReason::Other,
                    format!(
                        "the control server could not complete the registration: {e}; try again later"
                    ),
                ),
                "error",
            )
        }
    };
    metrics::counter!("weft_registrations_total", "outcome" => outcome).increment(1);
    metrics::histogram!("weft_register_duration_seconds", "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
    if outcome.starts_with("refused_invalid") || outcome.starts_with("refused_login_cap") {
        let due = REFUSALS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert_with(|| LogEvery::new(LOG_EVERY))
            .hit(crate::now());
        if let (Some(refused), RegisterResponse::Refused(r)) = (due, &resp) {
            tracing::info!(refused, outcome, last = %r.message, "registrations refused");
        }
    }
    resp
}

/// The answer to a registration beyond the server's capacity.
fn shed(ctx: &Ctx, machine_key: &MachinePublic) -> RegisterResponse {
    let limit = ctx.config.max_registrations_in_flight;
    // Spread by machine, not at random: the same machine is told the same
    // delay, and a crowd is spread evenly over the window.
    let spread = u64::from(u16::from_le_bytes([
        machine_key.as_bytes()[0],
        machine_key.as_bytes()[1],
    ])) * SHED_SPREAD_MS
        / u64::from(u16::MAX);
    let retry_after_ms = SHED_RETRY_AFTER_MS + spread;
    let due = REFUSALS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get_or_insert_with(|| LogEvery::new(LOG_EVERY))
        .hit(crate::now());
    if let Some(refused) = due {
        tracing::warn!(
            refused,
            limit,
            "registrations shed: {limit} are already being worked on (--max-registrations-in-flight)"
        );
    }
    RegisterResponse::Refused(Refusal {
        reason: RefusalReason::ServerBusy,
        message: format!(
            "the control server is busy registering other nodes ({limit} at once); this node will try again in {:.1} s",
            retry_after_ms as f64 / 1000.0
        ),
        retry_after_ms: Some(retry_after_ms),
    })
}

/// Checks the bounds of a request; returns what is wrong.
fn out_of_bounds(req: &RegisterRequest) -> Option<String> {
    if let Err(e) = req.host_info.validate() {
        return Some(e.to_string());
    }
    match &req.auth {
        RegisterAuth::AuthKey(k) if k.0.len() > MAX_AUTH_KEY_LEN => Some(format!(
            "the auth key is {} bytes long; at most {MAX_AUTH_KEY_LEN} are allowed",
            k.0.len()
        )),
        RegisterAuth::Followup { auth_url } if auth_url.len() > MAX_AUTH_URL_LEN => Some(format!(
            "the follow-up URL is {} bytes long; at most {MAX_AUTH_URL_LEN} are allowed",
            auth_url.len()
        )),
        _ => None,
    }
}

fn refused(reason: RefusalReason, message: String) -> RegisterResponse {
    RegisterResponse::Refused(Refusal {
        reason,
        message,
        retry_after_ms: None,
    })
}

type Answer = (RegisterResponse, &'static str);

async fn handle(
    ctx: &Arc<Ctx>,
    mk: MachinePublic,
    source: Option<Source>,
    req: RegisterRequest,
) -> Result<Answer, StoreError> {
    if let Some(why) = out_of_bounds(&req) {
        tracing::debug!(machine = %mk.short(), %why, "registration out of bounds");
        return Ok((
            refused(
                RefusalReason::Other,
                format!("the control server refused this registration: {why}"),
            ),
            "refused_invalid",
        ));
    }
    let now = ctx.clock.now();
    let known = optional(ctx.store.node_by_node_key(&req.node_key).await)?;

    if req.expiry == ExpiryRequest::Now {
        return match known {
            Some(n) if n.machine_key == mk => {
                let n = ctx.store.expire_node(n.id, now).await?;
                tracing::info!(node = %n.id, "node logged out");
                announce(ctx, n);
                Ok((RegisterResponse::LoggedOut, "logged_out"))
            }
            Some(_) => Ok(in_use(&req)),
            None => Ok((RegisterResponse::LoggedOut, "logged_out")),
        };
    }
    if let Some(n) = &known
        && n.machine_key != mk
    {
        return Ok(in_use(&req));
    }

    if let Some(old) = req.old_node_key.filter(|o| *o != req.node_key) {
        let old_node = optional(ctx.store.node_by_node_key(&old).await)?;
        let Some(old_node) = old_node.filter(|n| n.machine_key == mk) else {
            return Ok((
                refused(
                    RefusalReason::OldNodeKeyMismatch,
                    format!(
                        "{old} is not this machine's current node key; log in again without it"
                    ),
                ),
                "refused_old_node_key_mismatch",
            ));
        };
        if known.as_ref().is_some_and(|n| n.id != old_node.id) {
            return Ok(in_use(&req));
        }
        return match &req.auth {
            // With an identity provider, a rotation (`weft up --force-reauth`) is a new login
            // there, as after expiry: the IdP decides again and refreshes the user's groups.
            RegisterAuth::None if old_node.is_expired(now) || ctx.oidc.is_some() => {
                needs_auth(ctx, mk, &req, source, now).await
            }
            RegisterAuth::None => {
                let n = ctx.store.rotate_node_key(&old, &req.node_key, now).await?;
                let n = apply_expiry_wish(ctx, n, req.expiry, now).await?;
                tracing::info!(node = %n.id, "node key rotated");
                registered(ctx, n, "rotated").await
            }
            RegisterAuth::AuthKey(k) => with_auth_key(ctx, mk, &req, &k.0, now).await,
            RegisterAuth::Followup { auth_url } => followup(ctx, mk, auth_url).await,
        };
    }

    match (&req.auth, known) {
        (RegisterAuth::None, Some(n)) if n.is_expired(now) => {
            Ok((RegisterResponse::NodeKeyExpired, "key_expired"))
        }
        (RegisterAuth::None, Some(n)) => registered(ctx, n, "known").await,
        (RegisterAuth::None, None) => needs_auth(ctx, mk, &req, source, now).await,
        (RegisterAuth::AuthKey(k), _) => with_auth_key(ctx, mk, &req, &k.0, now).await,
        (RegisterAuth::Followup { auth_url }, _) => followup(ctx, mk, auth_url).await,
    }
}

fn in_use(req: &RegisterRequest) -> Answer {
    (
        refused(
            RefusalReason::NodeKeyInUse,
            format!(
                "node key {} is already registered to another machine; make a new node key",
                req.node_key
            ),
        ),
        "refused_node_key_in_use",
    )
}

fn optional<T>(r: Result<T, StoreError>) -> Result<Option<T>, StoreError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(StoreError::UnknownNodeKey(_) | StoreError::UnknownNode(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Tells the coordinator about a committed node.
fn announce(ctx: &Ctx, n: StoreNode) {
    ctx.coord.send(Msg::NodeUpsert(Box::new(n)));
}

async fn registered(ctx: &Ctx, n: StoreNode, outcome: &'static str) -> Result<Answer, StoreError> {
    let user = match n.user {
        Some(u) => {
            let u = ctx.store.user(u).await?;
            Some(weft_types::UserProfile {
                id: u.id,
                login_name: u.login_name,
                display_name: u.display_name,
                profile_pic_url: None,
            })
        }
        None => None,
    };
    let resp = RegisterResponse::Registered(Registered {
        node_id: n.id,
        user,
        tags: n.tags.clone(),
        machine_authorized: n.authorized,
        key_expiry: n.key_expiry,
    });
    if outcome != "known" {
        announce(ctx, n);
    }
    Ok((resp, outcome))
}

/// Shortens the key expiry to what the node asked for, if earlier.
async fn apply_expiry_wish(
    ctx: &Ctx,
    n: StoreNode,
    wish: ExpiryRequest,
    now: UnixMillis,
) -> Result<StoreNode, StoreError> {
    match wish {
        ExpiryRequest::At(t) if t > now && n.key_expiry.is_none_or(|e| t < e) => {
            ctx.store.set_node_expiry(n.id, Some(t)).await
        }
        _ => Ok(n),
    }
}

/// Returns the tags of `tags` that the policy's `tagOwners` do not let
/// `login` apply (`None`: a pre-auth key without a user, which only tags'
/// own owners may use).
pub(crate) fn denied_tags<'a>(
    ctx: &Ctx,
    tags: &'a BTreeSet<Tag>,
    login: Option<&str>,
) -> Vec<&'a str> {
    if tags.is_empty() {
        return Vec::new();
    }
    let snap = ctx.coord.snapshot();
    let policy = &snap.policy;
    tags.iter()
        .filter(|t| {
            !policy
                .policy
                .may_apply_tag(&policy.tailnet, t.as_str(), login, &[])
        })
        .map(Tag::as_str)
        .collect()
}

fn register_node(mk: MachinePublic, req: &RegisterRequest) -> RegisterNode {
    RegisterNode {
        machine_key: mk,
        node_key: req.node_key,
        disco_key: None,
        hostname: req.host_info.hostname.clone(),
        host_info: serde_json::to_value(&req.host_info).unwrap_or_default(),
        endpoints: Vec::new(),
    }
}

async fn with_auth_key(
    ctx: &Ctx,
    mk: MachinePublic,
    req: &RegisterRequest,
    key: &str,
    now: UnixMillis,
) -> Result<Answer, StoreError> {
    let requested = &req.host_info.requested_tags;
    if !requested.is_empty() {
        let login = match ctx.store.validate_preauth_key(key, now).await {
            Ok(k) => match k.user {
                Some(u) => Some(ctx.store.user(u).await?.login_name.to_string()),
                None => None,
            },
            Err(e) => return key_refusal(e),
        };
        let denied = denied_tags(ctx, requested, login.as_deref());
        if !denied.is_empty() {
            let message = format!(
                "the policy's tagOwners do not let {} apply {}",
                login.as_deref().unwrap_or("this key"),
                denied.join(", ")
            );
            return Ok((
                refused(RefusalReason::TagsNotPermitted, message),
                "refused_tags",
            ));
        }
    }
    let reg = match ctx
        .store
        .register_node(&register_node(mk, req), StoreAuth::PreauthKey(key), now)
        .await
    {
        Ok(r) => r,
        Err(e) => return key_refusal(e),
    };
    let mut n = reg.node;
    if !requested.is_empty() {
        let mut tags = n.tags.clone();
        tags.extend(requested.iter().cloned());
        n = ctx.store.set_node_tags(n.id, &tags).await?;
    }
    let n = apply_expiry_wish(ctx, n, req.expiry, now).await?;
    tracing::info!(node = %n.id, name = %n.given_name, created = reg.created, "node registered with a pre-auth key");
    registered(
        ctx,
        n,
        if reg.created {
            "registered"
        } else {
            "reauthenticated"
        },
    )
    .await
}

/// Turns a store refusal of a pre-auth key into a message for the user.
fn key_refusal(e: StoreError) -> Result<Answer, StoreError> {
    let invalid = |m: String| {
        Ok((
            refused(RefusalReason::InvalidAuthKey, m),
            "refused_invalid_auth_key",
        ))
    };
    match e {
        StoreError::MalformedKey { .. } | StoreError::UnknownPreauthKey(_) => invalid(
            "the auth key is not valid on this server: check that it was copied whole, or ask an administrator for a new one (weft-control keys create)".into(),
        ),
        StoreError::PreauthKeyExpired(p) => invalid(format!(
            "the auth key weftkey-auth-{p}-… has expired; ask an administrator for a new one (weft-control keys create)"
        )),
        StoreError::PreauthKeyRevoked(p) => invalid(format!(
            "the auth key weftkey-auth-{p}-… was revoked by an administrator; ask for a new one"
        )),
        StoreError::PreauthKeyUsed(p) => invalid(format!(
            "the auth key weftkey-auth-{p}-… is single-use and was already used; ask for a new one, or a reusable key (weft-control keys create --reusable)"
        )),
        StoreError::DuplicateNodeKey(k) => Ok((
            refused(
                RefusalReason::NodeKeyInUse,
                format!("node key {k} is already registered to another machine; make a new node key"),
            ),
            "refused_node_key_in_use",
        )),
        StoreError::AddressPoolExhausted(pool) => Ok((
            refused(
                RefusalReason::Other,
                format!("the tailnet has no free address left in {pool}; delete unused nodes"),
            ),
            "refused_pool_exhausted",
        )),
        other => Err(other),
    }
}

async fn needs_auth(
    ctx: &Ctx,
    mk: MachinePublic,
    req: &RegisterRequest,
    source: Option<Source>,
    now: UnixMillis,
) -> Result<Answer, StoreError> {
    let _creating = ctx.logins.creating.lock().await;
    let existing = ctx.store.pending_auth_request_for(&mk, now).await?;
    let ar = match existing {
        Some(r) if r.node_key == req.node_key => r,
        replaced => {
            if let Some(old) = replaced {
                // The machine starts over with another node key; its old
                // login can never complete for it.
                ctx.store.delete_pending_auth_request(&old.auth_id).await?;
                ctx.logins.decided(&old.auth_id);
            }
            if let Some(answer) = login_cap_reached(ctx, source, now).await? {
                return Ok(answer);
            }
            let expires = now.saturating_add(ctx.config.auth_request_lifetime);
            ctx.store
                .create_auth_request(
                    NewAuthRequest {
                        register: register_node(mk, req),
                        expires,
                    },
                    now,
                )
                .await?
        }
    };
    ctx.logins.remember(
        &ar.auth_id,
        LoginWish {
            ephemeral: req.ephemeral,
            expiry: req.expiry,
            requested_tags: req.host_info.requested_tags.clone(),
        },
        source.map(|s| (s, ar.expires)),
    );
    let auth_url = login_url(&ctx.server_url, &ar.auth_id);
    Ok((RegisterResponse::NeedsAuth { auth_url }, "needs_auth"))
}

/// Returns the refusal if a new login from `source` would pass a cap on
/// pending logins.
async fn login_cap_reached(
    ctx: &Ctx,
    source: Option<Source>,
    now: UnixMillis,
) -> Result<Option<Answer>, StoreError> {
    let lifetime = crate::clock::short_duration(ctx.config.auth_request_lifetime);
    let per_source = ctx.config.max_pending_logins_per_source;
    if let Some(src) = source
        && ctx.logins.pending_from(src, now) >= per_source
    {
        return Ok(Some((
            refused(
                RefusalReason::Other,
                format!(
                    "{per_source} logins from your address are already waiting for approval, the most this server allows; \
                     try again once one is approved, declined or expired (after {lifetime}), or register with a pre-auth key (weft up --auth-key)"
                ),
            ),
            "refused_login_cap_source",
        )));
    }
    let total = ctx.config.max_pending_logins;
    if ctx.store.count_pending_auth_requests(now).await? >= total as u64 {
        return Ok(Some((
            refused(
                RefusalReason::Other,
                format!(
                    "{total} logins are already waiting for approval on this server, the most it allows; \
                     try again later, or register with a pre-auth key (weft up --auth-key)"
                ),
            ),
            "refused_login_cap_total",
        )));
    }
    Ok(None)
}

/// Returns the login id at the end of an auth URL.
pub(crate) fn auth_id_of(url: &str) -> Option<&str> {
    let (_, rest) = url.rsplit_once(LOGIN_PATH)?;
    let id = rest.split(['?', '#', '/']).next()?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

async fn followup(ctx: &Ctx, mk: MachinePublic, auth_url: &str) -> Result<Answer, StoreError> {
    let expired = |m: &str| {
        Ok((
            refused(RefusalReason::AuthUrlExpired, m.to_owned()),
            "refused_auth_url_expired",
        ))
    };
    let Some(id) = auth_id_of(auth_url) else {
        return expired(
            "this login URL is not one this server made; run weft up again for a new one",
        );
    };
    loop {
        let notify = ctx.logins.notifier(id);
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let ar = match ctx.store.auth_request(id).await {
            Ok(r) => r,
            Err(StoreError::UnknownAuthRequest(_)) => {
                ctx.logins.forget(id);
                return expired(
                    "this login URL is unknown or expired; run weft up again for a new one",
                );
            }
            Err(e) => return Err(e),
        };
        if ar.machine_key != mk {
            return expired(
                "this login URL belongs to another machine; run weft up again for your own",
            );
        }
        let now = ctx.clock.now();
        match ar.state {
            weft_control_store::AuthRequestState::Approved => {
                let Some(node) = ar.node else {
                    return expired(
                        "the login was approved but its node is gone; run weft up again",
                    );
                };
                let n = match optional(ctx.store.node(node).await)? {
                    Some(n) => n,
                    None => {
                        return expired(
                            "the login was approved but its node was deleted; run weft up again",
                        );
                    }
                };
                return registered(ctx, n, "known")
                    .await
                    .map(|(r, _)| (r, "approved"));
            }
            weft_control_store::AuthRequestState::Rejected => {
                return Ok((
                    refused(
                        RefusalReason::AccessDenied,
                        "an administrator declined this login".into(),
                    ),
                    "refused_access_denied",
                ));
            }
            weft_control_store::AuthRequestState::Pending if now >= ar.expires => {
                return expired(
                    "the login URL expired before anyone approved it; run weft up again for a new one",
                );
            }
            weft_control_store::AuthRequestState::Pending => {
                let clock = ctx.clock.clone();
                tokio::select! {
                    () = &mut notified => {}
                    () = clock::sleep_until(&*clock, ar.expires) => {}
                    // Re-check now and then in case another server process decided it.
                    () = tokio::time::sleep(Duration::from_secs(30)) => {}
                }
            }
        }
    }
}

/// Returns the key lifetime a login wish asks for.
pub(crate) fn lifetime_of(wish: ExpiryRequest, now: UnixMillis) -> KeyLifetime {
    match wish {
        ExpiryRequest::At(t) if t > now => KeyLifetime::After(t.saturating_since(now)),
        _ => KeyLifetime::ServerDefault,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_auth_id_is_the_last_path_part_of_the_login_url() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(auth_id_of(&format!("http://h:8080/a/{id}")), Some(id));
        assert_eq!(auth_id_of(&format!("https://h/weft/a/{id}?x=1")), Some(id));
        assert_eq!(auth_id_of("http://h/a/short"), None);
        assert_eq!(
            auth_id_of("http://h/b/0123456789abcdef0123456789abcdef"),
            None
        );
    }
}
