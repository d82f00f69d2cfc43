//! The control protocol's HTTP side: `GET /key` and the `POST /control`
//! upgrade. An accepted upgrade hands the raw connection to a task of its
//! own ([`conn`]) that runs the channel.

mod conn;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use hyper_util::rt::TokioIo;
use weft_control_proto::upgrade::{CAPABILITY_HEADER, HANDSHAKE_HEADER, UPGRADE_PROTOCOL};
use weft_control_proto::{Connection, UpgradeHeaders};
use weft_types::CapabilityVersion;
use weft_types::control::KeyResponse;

use crate::admission::{Standing, Ticket};
use crate::ctx::Ctx;
use crate::http::RemoteAddr;

/// `GET /key`: the server's static key and capability versions.
pub(crate) async fn key(State(ctx): State<Arc<Ctx>>) -> axum::Json<KeyResponse> {
    axum::Json(KeyResponse {
        public_key: ctx.server_key.public(),
        capability_version: CapabilityVersion::CURRENT,
        min_capability_version: CapabilityVersion::MIN_SUPPORTED,
    })
}

/// Client capability versions more than this far ahead of the server's own
/// are called implausible in the log (a client one or two versions ahead
/// is normal while a fleet is upgraded node by node).
pub(crate) const PLAUSIBLE_VERSIONS_AHEAD: u32 = 16;

/// Returns the capability version the server speaks to a client that
/// announced `client`: the client's, but never more than the server's own
/// (it cannot speak what it does not know).
pub(crate) fn served_version(client: CapabilityVersion) -> CapabilityVersion {
    client.min(CapabilityVersion::CURRENT)
}

/// Clamps a client's capability version and logs when it had to.
fn clamp_version(
    client: CapabilityVersion,
    machine: &weft_types::MachinePublic,
) -> CapabilityVersion {
    let served = served_version(client);
    if served != client {
        let far = client.0 - CapabilityVersion::CURRENT.0 > PLAUSIBLE_VERSIONS_AHEAD;
        metrics::counter!(
            "weft_control_capability_versions_clamped_total",
            "kind" => if far { "implausible" } else { "newer" }
        )
        .increment(1);
        if far {
            tracing::info!(machine = %machine.short(), client = %client, served = %served, "client capability version far beyond the server's; clamped");
        } else {
            tracing::debug!(machine = %machine.short(), client = %client, served = %served, "client capability version newer than the server's; clamped");
        }
    }
    served
}

/// `POST /control`: checks the upgrade request and Noise message 1, answers
/// `101`, and starts the connection's task.
pub(crate) async fn upgrade(State(ctx): State<Arc<Ctx>>, mut req: Request) -> Response {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let headers = UpgradeHeaders {
        upgrade: header(header::UPGRADE.as_str()),
        capability: header(CAPABILITY_HEADER),
        handshake: header(HANDSHAKE_HEADER),
    };
    let peer = req.extensions().get::<RemoteAddr>().map(|r| r.0);
    let ticket = req.extensions().get::<Arc<Ticket>>().cloned();
    let remote = peer.map(|p| p.to_string()).unwrap_or_default();
    let accepted = match Connection::accept(
        &ctx.server_key,
        &headers,
        ctx.config.channel.clone(),
        crate::seed(),
        crate::now(),
    ) {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(%remote, reason = %e, "control upgrade refused");
            metrics::counter!("weft_control_upgrades_refused_total").increment(1);
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
            let mut resp = (status, e.to_string()).into_response();
            if status == StatusCode::UPGRADE_REQUIRED {
                resp.headers_mut()
                    .insert(header::UPGRADE, HeaderValue::from_static(UPGRADE_PROTOCOL));
            }
            return resp;
        }
    };
    if let Some(t) = &ticket {
        t.set(Standing::Unregistered);
    }
    let origin = conn::Origin {
        peer,
        ticket,
        version: clamp_version(accepted.version, &accepted.machine_key),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let task_ctx = ctx.clone();
    ctx.tasks.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => conn::run(task_ctx, TokioIo::new(upgraded), accepted, origin).await,
            Err(e) => tracing::debug!(%remote, error = %e, "upgrade did not complete"),
        }
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static(UPGRADE_PROTOCOL));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_capability_versions_are_served_as_the_servers_own() {
        let current = CapabilityVersion::CURRENT;
        assert_eq!(served_version(CapabilityVersion(1)), CapabilityVersion(1));
        assert_eq!(served_version(current), current);
        assert_eq!(served_version(CapabilityVersion(current.0 + 1)), current);
        assert_eq!(served_version(CapabilityVersion(u32::MAX)), current);
    }
}
