//! What every part of the running server shares: settings, the store, the
//! server key, the coordinator handle, connection admission and the logins
//! and SSH checks waiting for a decision ([`crate::waiting`]).

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_control_store::Store;
use weft_types::MachinePrivate;

use crate::admission::Admission;
use crate::clock::Clock;
use crate::config::ServerConfig;
use crate::state::coordinator::CoordHandle;
use crate::waiting::{Checks, Logins};

/// The shared state of a running server.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub config: ServerConfig,
    /// The URL nodes use; login links start with it.
    pub server_url: String,
    pub store: Store,
    pub server_key: MachinePrivate,
    pub coord: CoordHandle,
    /// Interactive device logins in progress.
    pub logins: Logins,
    /// Which connections are held (limits per source and in total).
    pub admission: Arc<Admission>,
    /// SSH checks waiting for approval, and recent approvals.
    pub checks: Checks,
    pub clock: Arc<dyn Clock>,
    /// Bounds how many full maps are built and written at once.
    pub full_maps: Semaphore,
    /// Bounds how many registrations are worked on at once; beyond it they
    /// are shed (see [`crate::registration`]).
    pub registrations: Arc<Semaphore>,
    /// Cancelled when the server shuts down.
    pub stop: CancellationToken,
    /// Connection tasks, awaited at shutdown.
    pub tasks: TaskTracker,
    /// The embedded relay, unless turned off.
    pub relay: Option<weft_relay::RelayServer>,
    /// Who may use a relay (the embedded one, and standalone ones through
    /// `POST /api/v1/relay/verify`).
    pub relay_keys: Arc<crate::relay::LiveKeys>,
    /// Held across a DNS settings change (read, apply, store, publish), so
    /// two concurrent partial changes cannot lose one another.
    pub dns_edit: tokio::sync::Mutex<()>,
    /// The OIDC authenticator, when configured (also `config.authenticator`).
    pub oidc: Option<Arc<crate::oidc::Oidc>>,
}
