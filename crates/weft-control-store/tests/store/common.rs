//! The harness: one fresh database per test, on SQLite (a file in a temp
//! dir) or PostgreSQL (a new database in the server `WEFT_TEST_PG_URL` names).

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::{AssertSqlSafe, Connection as _};
use std::collections::BTreeSet;

use weft_control_store::{
    Backend, Endpoint, EndpointKind, NewPreauthKey, NewUser, RegisterAuth, RegisterNode,
    Registered, Role, Store, StoreConfig, UnixMillis, User,
};
use weft_types::{MachinePublic, NodePublic};

/// A fixed "now" for tests (2027-01-15); time moves by adding to it.
pub const T0: UnixMillis = UnixMillis(1_800_000_000_000);
pub const SECOND: i64 = 1000;
pub const MINUTE: i64 = 60 * SECOND;
pub const HOUR: i64 = 60 * MINUTE;
pub const DAY: i64 = 24 * HOUR;

/// Returns the time `offset_ms` after [`T0`] (before it if negative).
pub fn at(offset_ms: i64) -> UnixMillis {
    UnixMillis(T0.0 + offset_ms)
}

/// One test's database.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    _dir: Option<tempfile::TempDir>,
    /// For PostgreSQL: the server URL and the database to drop at the end.
    pg: Option<(String, String)>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    /// A SQLite database file in a fresh temporary directory (not `:memory:`:
    /// a pool would give each connection its own empty database).
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}",
            dir.path().join("state").join("weft.db").display()
        );
        Self {
            url,
            backend: Backend::Sqlite,
            _dir: Some(dir),
            pg: None,
        }
    }

    /// A fresh PostgreSQL database, or `None` (with the reason on stderr) when
    /// `WEFT_TEST_PG_URL` is unset. With `WEFT_E2E=1` a missing URL fails the test.
    pub async fn postgres(test: &str) -> Option<Self> {
        let server = match std::env::var("WEFT_TEST_PG_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => {
                let how = "start one with: eval \"$(bash .ci/start-postgres.sh)\"";
                assert!(
                    std::env::var("WEFT_E2E").as_deref() != Ok("1"),
                    "WEFT_E2E=1 but WEFT_TEST_PG_URL is not set, so the PostgreSQL variant of \
                     {test} cannot run; {how}"
                );
                eprintln!(
                    "skipping the PostgreSQL variant of {test}: WEFT_TEST_PG_URL is not set; {how}"
                );
                return None;
            }
        };
        sqlx::any::install_default_drivers();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let short: String = test
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(30)
            .collect();
        let name = format!("wt_{}_{n}_{}", std::process::id(), short.to_lowercase());
        let mut admin = sqlx::AnyConnection::connect(&server)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to WEFT_TEST_PG_URL: {e}"));
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        let url = replace_db(&server, &name);
        Some(Self {
            url,
            backend: Backend::Postgres,
            _dir: None,
            pg: Some((server, name)),
        })
    }

    /// Opens a store with the test defaults (fixed seed, default pool).
    pub async fn store(&self) -> Store {
        self.store_with(config()).await
    }

    /// Opens a store with a given configuration.
    pub async fn store_with(&self, config: StoreConfig) -> Store {
        let store = Store::open(&self.url, config).await.unwrap();
        assert_eq!(store.backend(), self.backend);
        store
    }

    /// Drops the PostgreSQL database (SQLite's temp dir goes with `self`).
    pub async fn finish(self) {
        if let Some((server, name)) = &self.pg {
            let mut admin = sqlx::AnyConnection::connect(server).await.unwrap();
            sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await
            .unwrap();
            admin.close().await.unwrap();
        }
    }
}

/// Returns `server` with its database name replaced by `db`.
fn replace_db(server: &str, db: &str) -> String {
    let (base, query) = server
        .split_once('?')
        .map_or((server, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut url = format!("{}/{db}", &base[..path_start]);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

/// The test configuration: default pool and expiry, a fixed seed.
pub fn config() -> StoreConfig {
    StoreConfig {
        seed: Some(42),
        ..StoreConfig::default()
    }
}

/// Distinct keys for test node `n` (`salt` tells apart keys of one node).
pub fn node_key(n: u64, salt: u8) -> NodePublic {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&n.to_le_bytes());
    b[8] = 0xa0;
    b[9] = salt;
    NodePublic::from_bytes(b)
}

pub fn machine_key(n: u64) -> MachinePublic {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&n.to_le_bytes());
    b[8] = 0xb0;
    MachinePublic::from_bytes(b)
}

/// What node `n` reports when it registers.
pub fn register_req(n: u64, hostname: &str) -> RegisterNode {
    RegisterNode {
        machine_key: machine_key(n),
        node_key: node_key(n, 0),
        disco_key: None,
        hostname: hostname.to_owned(),
        host_info: serde_json::json!({ "os": "linux", "n": n }),
        endpoints: vec![Endpoint {
            addr: "198.18.0.1:41641".parse().unwrap(),
            kind: EndpointKind::Local,
        }],
    }
}

pub async fn user(store: &Store, login: &str) -> User {
    let new = NewUser {
        login_name: login.parse().unwrap(),
        display_name: login.to_uppercase(),
        role: Role::Member,
    };
    store.create_user(new, T0).await.unwrap()
}

/// A reusable, non-ephemeral key for `user` that expires in a day.
pub fn reusable_key_for(user: &User) -> NewPreauthKey {
    NewPreauthKey {
        user: Some(user.id),
        reusable: true,
        ephemeral: false,
        tags: BTreeSet::new(),
        expires: at(DAY),
        node_key_lifetime: Default::default(),
    }
}

/// Registers node `n` as `user` (interactive-approval style), at `now`.
pub async fn register_as(
    store: &Store,
    user: &User,
    n: u64,
    hostname: &str,
    now: UnixMillis,
) -> Registered {
    let auth = RegisterAuth::User {
        user: user.id,
        tags: &BTreeSet::new(),
        ephemeral: false,
        key_lifetime: Default::default(),
    };
    store
        .register_node(&register_req(n, hostname), auth, now)
        .await
        .unwrap()
}

#[test]
fn database_names_are_replaced_in_urls() {
    assert_eq!(
        replace_db("postgres://u@h:1/postgres", "x"),
        "postgres://u@h:1/x"
    );
    assert_eq!(replace_db("postgres://u@h:1", "x"), "postgres://u@h:1/x");
    assert_eq!(
        replace_db("postgres://u@h/db?sslmode=disable", "x"),
        "postgres://u@h/x?sslmode=disable"
    );
}
