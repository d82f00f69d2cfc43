//! weft-control's storage layer: users, nodes, pre-auth and API keys,
//! interactive logins, policy versions, DNS settings, SSH check
//! approvals and the audit log of admin actions, on SQLite (the default, one file in the state directory) or
//! PostgreSQL, chosen by the URL scheme at run time.
//!
//! The store is the server's source of truth. The server keeps its hot path
//! (netmaps) in memory and writes through this API; every method that changes
//! something returns only after its transaction committed, so what the server
//! acknowledges survives a crash.
//!
//! What this crate is not: it holds no caches, runs no background tasks and
//! never reads the clock. Times come in as `now_ms` (unix milliseconds) from
//! the caller; that keeps expiry and garbage collection testable on virtual
//! time. Randomness for secrets comes from the OS CSPRNG; address and name
//! choices use a seedable generator ([`StoreConfig::seed`]).
//!
//! # Schema conventions
//! One code path for both databases goes through sqlx's `Any` driver, which
//! only knows integers, floats, text and blobs. Hence: times are `i64` unix
//! milliseconds; booleans are INTEGER/BIGINT 0/1; keys are stored in their
//! text forms (`mkey:…`, `nodekey:…`, `discokey:…`); addresses, tags,
//! endpoints and host info are text (JSON where structured). The DDL differs
//! between the two engines, so there are two migration sets,
//! `migrations/sqlite` and `migrations/postgres`, kept in step.
//!
//! # Concurrency
//! See [`db`] for the transaction discipline. Registrations allocate addresses
//! and DNS names inside their transaction, and the database's unique
//! constraints are the final guard: a registration that loses a race is
//! retried with a fresh view, so two live nodes never share an address or a
//! name.
//!
//! # Tests
//! `cargo test -p weft-control-store` runs one suite (`tests/store/`) on
//! SQLite and, when `WEFT_TEST_PG_URL` names a PostgreSQL server, on
//! PostgreSQL too, each test in a database of its own. Start a throwaway
//! server with `eval "$(bash .ci/start-postgres.sh)"`. Without the URL the
//! PostgreSQL variants print why they skip; with `WEFT_E2E=1` they fail.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod alloc;
pub mod db;
mod error;
pub mod label;
mod model;
mod rows;
mod secret;

pub mod audit;
mod auth;
mod dns;
mod keys;
mod nodes;
mod policy;
mod recordings;
mod register;
mod ssh;
mod users;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

pub use alloc::AddressPool;
pub use audit::MAX_AUDIT_PAGE;
pub use db::Backend;
pub use error::StoreError;
pub use model::{
    ApiKey, ApiKeyId, AuditEntry, AuditEntryId, AuditOutcome, AuthRequest, AuthRequestState,
    DnsSettings, KeyLifetime, NewAuditEntry, NewAuthRequest, NewPreauthKey, NewUser, Node,
    NodeStatusUpdate, PolicyVersion, PolicyVersionId, PreauthKey, PreauthKeyId, RegisterAuth,
    RegisterNode, Registered, Role, SshApproval, SshApprovalFilter, SshRecording, SshRecordingPage,
    User, UserPatch,
};
pub use secret::KeySecret;
/// The `weft-types` vocabulary the API uses, re-exported for convenience.
pub use weft_types::{
    DnsLabel, Endpoint, EndpointKind, LoginName, NodeId, NodeOwner, StableNodeId, Tag, UnixMillis,
    UserId,
};

use alloc::SplitMix64;

/// The database file name inside the state directory.
pub const DB_FILE_NAME: &str = "weft.db";

/// The default node-key lifetime: 180 days.
pub const DEFAULT_NODE_KEY_EXPIRY: Duration = Duration::from_secs(180 * 24 * 60 * 60);

/// Server-wide settings the store needs.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Where node addresses come from.
    pub pool: AddressPool,
    /// Node-key lifetime when a key or approval does not say otherwise
    /// (`None`: keys never expire). Default: [`DEFAULT_NODE_KEY_EXPIRY`].
    pub node_key_expiry: Option<Duration>,
    /// Connection pool size (`None`: 4 for SQLite, 8 for PostgreSQL).
    pub max_connections: Option<u32>,
    /// Seed for address and name choices (`None`: from the OS CSPRNG).
    pub seed: Option<u64>,
    /// New nodes start unauthorized until an admin calls
    /// [`Store::set_node_authorized`] (device approval). Default: off.
    pub require_device_approval: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            pool: AddressPool::tailnet_default(),
            node_key_expiry: Some(DEFAULT_NODE_KEY_EXPIRY),
            max_connections: None,
            seed: None,
            require_device_approval: false,
        }
    }
}

/// A handle to the store. Cheap to clone; all clones share one pool.
#[derive(Clone)]
pub struct Store {
    // --- set once in `open` ---
    inner: db::Shared,
    config: Arc<StoreConfig>,
    // --- behind its own lock, held only to draw numbers ---
    rng: Arc<Mutex<SplitMix64>>,
    // --- behind its own lock, held only to pick or release an address ---
    /// The tailnet addresses in use (lock order: `rng`, then `used`).
    used: Arc<alloc::UsedAddresses>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.inner.backend)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the database at `url` and brings its schema
    /// up to date. `sqlite://PATH` creates the file with mode 0600;
    /// `postgres://…` needs an existing database. Opening twice is harmless:
    /// applied migrations are recorded and skipped.
    ///
    /// # Errors
    /// [`StoreError::UnsupportedUrl`], [`StoreError::Io`] when the file or its
    /// directory cannot be created, [`StoreError::Db`] when connecting fails,
    /// [`StoreError::Migrate`] when the schema cannot be brought up to date.
    pub async fn open(url: &str, config: StoreConfig) -> Result<Self, StoreError> {
        let backend = Backend::from_url(url)?;
        let max = config
            .max_connections
            .unwrap_or(backend.default_max_connections());
        let (pool, backend) = db::connect(url, max).await?;
        let seed = match config.seed {
            Some(s) => s,
            None => secret::random_u64()?,
        };
        tracing::debug!(?backend, max_connections = max, "store opened");
        Ok(Self {
            inner: Arc::new(db::Inner {
                pool,
                backend,
                writer: tokio::sync::Mutex::new(()),
                retries: AtomicU64::new(0),
            }),
            config: Arc::new(config),
            rng: Arc::new(Mutex::new(SplitMix64::new(seed))),
            used: Arc::new(alloc::UsedAddresses::default()),
        })
    }

    /// Opens the default SQLite database, `<state_dir>/weft.db`.
    ///
    /// # Errors
    /// As [`Store::open`].
    pub async fn open_state_dir(state_dir: &Path, config: StoreConfig) -> Result<Self, StoreError> {
        Self::open(&db::sqlite_url(&state_dir.join(DB_FILE_NAME)), config).await
    }

    /// Returns which database engine this store runs on.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// Returns the settings the store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Returns the schema version: the highest applied migration.
    ///
    /// # Errors
    /// [`StoreError::Db`] if the migrations table cannot be read.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let v: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
            .fetch_one(&self.inner.pool)
            .await?;
        Ok(v.unwrap_or(0))
    }

    /// Returns how many write transactions this handle retried after losing
    /// a race (lock, serialization failure or uniqueness collision). Worth
    /// exporting as a metric: a steadily rising count means heavy contention.
    pub fn write_retries(&self) -> u64 {
        self.inner.retries.load(Ordering::Relaxed)
    }

    /// Closes every connection; later calls fail. Pending work finishes first.
    pub async fn close(&self) {
        self.inner.pool.close().await;
    }

    /// Draws from the address/name generator.
    fn with_rng<T>(&self, f: impl FnOnce(&mut SplitMix64) -> T) -> T {
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut rng)
    }
}
