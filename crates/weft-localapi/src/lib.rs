//! The LocalAPI: how the `weft` CLI (and anything else on the machine) talks
//! to `weftd`.
//!
//! Transport: HTTP/1.1 over the daemon's unix socket (default
//! [`DEFAULT_SOCKET`]), JSON bodies, every path under [`PREFIX`]. The daemon
//! authorizes each connection by its peer credentials (SO_PEERCRED): root or
//! the configured operator user may change things; everyone else may only
//! read (`GET`). Errors come back as a non-2xx status with an [`ErrorBody`].
//!
//! This crate is the contract: [`types`] holds every request and response
//! (their JSON is what `--json` prints, so fields are only ever added), and
//! [`LocalClient`] is the typed client the CLI uses — the CLI has no other
//! way into the daemon.
//!
//! | method | path | body → response |
//! |---|---|---|
//! | GET | `status` | → [`Status`] |
//! | GET | `prefs` | → [`Prefs`] |
//! | PATCH | `prefs` | [`PrefsPatch`] → [`Prefs`] |
//! | POST | `start` | [`StartRequest`] → `{}` |
//! | POST | `login-interactive` | → `{}` |
//! | POST | `logout` | → `{}` |
//! | GET | `profiles` | → `Vec<`[`ProfileSummary`]`>` |
//! | PUT | `profiles` | → [`ProfileSummary`] (a new empty profile, now current) |
//! | POST | `profiles/{id}` | → [`ProfileSummary`] (switch) |
//! | DELETE | `profiles/{id}` | → `{}` |
//! | POST | `ping` | [`PingRequest`] → [`PingResult`] |
//! | GET | `netcheck` | → [`NetcheckReport`] (after a fresh run, up to 5 s) |
//! | GET | `whois?addr=IP` | → [`WhoIs`] |
//! | GET | `watch` | → newline-delimited [`Notify`] stream, first a snapshot |
//! | GET | `debug/prefs` | → [`DebugPrefs`] (private keys redacted) |
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod client;
pub mod types;

pub use client::{LocalApiError, LocalClient, WatchStream};
pub use types::*;

/// The daemon's default LocalAPI socket.
pub const DEFAULT_SOCKET: &str = "/run/weft/weftd.sock";

/// The environment variable that overrides the socket path for the CLI.
pub const SOCKET_ENV: &str = "WEFT_SOCKET";

/// Every LocalAPI path starts with this.
pub const PREFIX: &str = "/localapi/v0/";
