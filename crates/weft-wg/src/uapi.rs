//! The cross-platform UAPI: the `key=value` text protocol `wg(8)` speaks to a
//! userspace WireGuard over `/var/run/wireguard/<iface>.sock`.
//!
//! Read first: <https://www.wireguard.com/xplatform/> ("Configuration
//! Protocol"). A request is `get=1` or `set=1`, then `key=value` lines, then
//! a blank line; the reply ends with `errno=N` and a blank line. This module
//! handles the bodies only — the socket and the framing are the driver's:
//!
//! * [`parse_set`] turns a `set=1` body into a typed [`DeviceUpdate`];
//!   [`serialize_set`] is its inverse (for round-trip tests and for tools).
//! * [`crate::Device::uapi_get`] writes the `get=1` body.
//!
//! Keys are lowercase hex on the wire; an all-zero preshared key means none
//! and an all-zero private key removes the key. Errors carry the positive
//! errno wireguard-go replies with (its `device/uapi.go`): a line without `=`
//! is [`EPROTO`]; an unknown key, a bad value, `protocol_version` other than
//! 1, or a peer key before any `public_key` is [`EINVAL`]. Unlike
//! wireguard-go, which applies lines as it reads them, the whole body is
//! parsed first, so a bad line leaves the device exactly as it was.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::UNIX_EPOCH;

use ipnet::IpNet;
use weft_types::{NodePrivate, NodePublic};
use zeroize::Zeroizing;

use crate::device::{DeviceUpdate, PeerStats, PeerUpdate};

/// `EINVAL`: a malformed or unknown key or value.
pub const EINVAL: i32 = 22;
/// `EPROTO`: a line that is not `key=value`.
pub const EPROTO: i32 = 71;

/// A UAPI request that could not be applied; carries the errno to report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (errno {errno})")]
pub struct UapiError {
    /// The errno value for the `errno=N` line.
    pub errno: i32,
    /// What was wrong, for the log.
    pub message: String,
}

impl UapiError {
    fn invalid(line: usize, what: impl std::fmt::Display) -> Self {
        Self {
            errno: EINVAL,
            message: format!("line {line}: {what}"),
        }
    }
}

/// Parses a `set=1` body (the lines after `set=1`; parsing stops at the first
/// blank line) into a typed update. Nothing is applied.
///
/// Lines are order-sensitive the way wireguard-go reads them: device keys
/// come before the first `public_key`; `replace_allowed_ips` drops the
/// prefixes listed before it for that peer; `allowed_ip=-<prefix>` cancels an
/// earlier `allowed_ip=<prefix>` for that peer.
///
/// # Errors
/// [`EPROTO`] for a line without `=`; [`EINVAL`] for anything else wrong.
pub fn parse_set(body: &str) -> Result<DeviceUpdate, UapiError> {
    let mut update = DeviceUpdate::default();
    let mut peer: Option<PeerUpdate> = None;
    for (i, line) in body.lines().enumerate() {
        let n = i + 1;
        if line.is_empty() {
            break;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(UapiError {
                errno: EPROTO,
                message: format!("line {n}: expected key=value"),
            });
        };
        if key == "public_key" {
            let key =
                NodePublic::from_hex(value).map_err(|_| UapiError::invalid(n, "bad public_key"))?;
            update.peers.extend(peer.replace(PeerUpdate::new(key)));
            continue;
        }
        match &mut peer {
            None => device_line(&mut update, n, key, value)?,
            Some(p) => peer_line(p, n, key, value)?,
        }
    }
    update.peers.extend(peer);
    Ok(update)
}

fn device_line(u: &mut DeviceUpdate, n: usize, key: &str, value: &str) -> Result<(), UapiError> {
    match key {
        "private_key" => {
            let bytes = Zeroizing::new(
                hex32(value).ok_or_else(|| UapiError::invalid(n, "bad private_key"))?,
            );
            u.private_key = Some((*bytes != [0; 32]).then(|| NodePrivate::from_bytes(*bytes)));
        }
        "listen_port" => u.listen_port = Some(number(n, key, value)?),
        "fwmark" => u.fwmark = Some(number(n, key, value)?),
        "replace_peers" => u.replace_peers = only_true(n, key, value)?,
        _ => {
            return Err(UapiError::invalid(
                n,
                format_args!("invalid device key {key:?}"),
            ));
        }
    }
    Ok(())
}

fn peer_line(p: &mut PeerUpdate, n: usize, key: &str, value: &str) -> Result<(), UapiError> {
    match key {
        "update_only" => p.update_only = only_true(n, key, value)?,
        "remove" => p.remove = only_true(n, key, value)?,
        "preshared_key" => {
            let bytes = hex32(value).ok_or_else(|| UapiError::invalid(n, "bad preshared_key"))?;
            p.preshared_key = Some((bytes != [0; 32]).then_some(bytes));
        }
        "endpoint" => {
            let endpoint = value
                .parse::<SocketAddr>()
                .map_err(|_| UapiError::invalid(n, format_args!("bad endpoint {value:?}")))?;
            p.endpoint = Some(endpoint);
        }
        "persistent_keepalive_interval" => p.persistent_keepalive = Some(number(n, key, value)?),
        "replace_allowed_ips" => {
            p.replace_allowed_ips = only_true(n, key, value)?;
            p.allowed_ips.clear();
            p.remove_allowed_ips.clear();
        }
        "allowed_ip" => {
            let (remove, text) = match value.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, value),
            };
            let net = text
                .parse::<IpNet>()
                .map_err(|_| UapiError::invalid(n, format_args!("bad allowed_ip {value:?}")))?;
            if remove {
                p.allowed_ips.retain(|a| a.trunc() != net.trunc());
                p.remove_allowed_ips.push(net);
            } else {
                p.allowed_ips.push(net);
            }
        }
        "protocol_version" if value == "1" => {}
        "protocol_version" => {
            return Err(UapiError::invalid(
                n,
                format_args!("unsupported protocol_version {value:?}"),
            ));
        }
        _ => {
            return Err(UapiError::invalid(
                n,
                format_args!("invalid peer key {key:?}"),
            ));
        }
    }
    Ok(())
}

/// Parses 64 hex digits (either case) into 32 bytes.
fn hex32(value: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if value.len() != 64 {
        return None;
    }
    hex::decode_to_slice(value, &mut out).ok()?;
    Some(out)
}

/// Parses an unsigned decimal the way Go's `strconv.ParseUint(v, 10, bits)`
/// does: digits only, no sign, no spaces.
fn number<T: std::str::FromStr>(n: usize, key: &str, value: &str) -> Result<T, UapiError> {
    let bad = || UapiError::invalid(n, format_args!("bad {key} {value:?}"));
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    value.parse().map_err(|_| bad())
}

fn only_true(n: usize, key: &str, value: &str) -> Result<bool, UapiError> {
    if value == "true" {
        Ok(true)
    } else {
        Err(UapiError::invalid(
            n,
            format_args!("{key} must be \"true\", not {value:?}"),
        ))
    }
}

/// Writes `update` as a `set=1` body (without the `set=1` line and the
/// final blank line), such that [`parse_set`] reads it back unchanged. The
/// text may hold the private key, hence `Zeroizing`.
pub fn serialize_set(update: &DeviceUpdate) -> Zeroizing<String> {
    let mut s = Zeroizing::new(String::new());
    let out = &mut *s;
    match &update.private_key {
        Some(Some(key)) => line(out, "private_key", &*key.to_hex()),
        Some(None) => line(out, "private_key", hex::encode([0u8; 32])),
        None => {}
    }
    if let Some(port) = update.listen_port {
        line(out, "listen_port", port);
    }
    if let Some(mark) = update.fwmark {
        line(out, "fwmark", mark);
    }
    if update.replace_peers {
        line(out, "replace_peers", "true");
    }
    for p in &update.peers {
        line(out, "public_key", p.public_key.to_hex());
        if p.remove {
            line(out, "remove", "true");
        }
        if p.update_only {
            line(out, "update_only", "true");
        }
        if let Some(psk) = &p.preshared_key {
            line(
                out,
                "preshared_key",
                &*Zeroizing::new(hex::encode(psk.unwrap_or([0; 32]))),
            );
        }
        if let Some(endpoint) = p.endpoint {
            line(out, "endpoint", endpoint);
        }
        if let Some(interval) = p.persistent_keepalive {
            line(out, "persistent_keepalive_interval", interval);
        }
        if p.replace_allowed_ips {
            line(out, "replace_allowed_ips", "true");
        }
        for net in &p.remove_allowed_ips {
            line(out, "allowed_ip", format_args!("-{net}"));
        }
        for net in &p.allowed_ips {
            line(out, "allowed_ip", net);
        }
    }
    s
}

/// Writes a `get=1` body the way wireguard-go does: device keys (the private
/// key and listen port only when set, the fwmark only when non-zero), then
/// per peer its key, preshared key (zeros for none), `protocol_version=1`,
/// endpoint, last handshake, byte counters, keepalive and allowed IPs.
pub(crate) fn write_get(
    private_key: Option<&NodePrivate>,
    listen_port: u16,
    fwmark: u32,
    peers: &[(PeerStats, Option<Zeroizing<[u8; 32]>>)],
) -> String {
    let mut out = String::new();
    if let Some(key) = private_key {
        line(&mut out, "private_key", &*key.to_hex());
    }
    if listen_port != 0 {
        line(&mut out, "listen_port", listen_port);
    }
    if fwmark != 0 {
        line(&mut out, "fwmark", fwmark);
    }
    for (p, psk) in peers {
        line(&mut out, "public_key", p.public_key.to_hex());
        line(
            &mut out,
            "preshared_key",
            &*Zeroizing::new(hex::encode(psk.as_deref().copied().unwrap_or([0; 32]))),
        );
        line(&mut out, "protocol_version", 1);
        if let Some(endpoint) = p.endpoint {
            line(&mut out, "endpoint", endpoint);
        }
        let since_unix = p
            .last_handshake
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        line(&mut out, "last_handshake_time_sec", since_unix.as_secs());
        line(
            &mut out,
            "last_handshake_time_nsec",
            since_unix.subsec_nanos(),
        );
        line(&mut out, "tx_bytes", p.tx_bytes);
        line(&mut out, "rx_bytes", p.rx_bytes);
        line(
            &mut out,
            "persistent_keepalive_interval",
            p.persistent_keepalive.unwrap_or(0),
        );
        for net in &p.allowed_ips {
            line(&mut out, "allowed_ip", net);
        }
    }
    out
}

fn line(out: &mut String, key: &str, value: impl std::fmt::Display) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "{key}={value}");
}
