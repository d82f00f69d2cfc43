//! Opening the database, per-backend setup, migrations, and the write
//! transaction discipline that every mutating operation goes through.
//!
//! **SQLite.** The file is created with mode 0600 (its directory 0700) before
//! sqlx opens it. Every connection runs `journal_mode=WAL` (readers never block
//! the writer), `synchronous=FULL` (a commit is on disk before it returns, so
//! an acknowledged registration survives `kill -9` *and* power loss; the extra
//! fsync per commit is cheap at control-plane write rates), `busy_timeout=5000`
//! and `foreign_keys=ON`. Writers are serialized inside the process by an
//! async mutex, and each write transaction starts with `BEGIN IMMEDIATE`, which
//! takes SQLite's write lock up front: a deferred transaction that reads and
//! then writes can fail with `SQLITE_BUSY` when another connection committed
//! in between, and the busy timeout does not help there. Another process on
//! the same file waits on the busy timeout and, failing that, is retried.
//!
//! **PostgreSQL.** A pool of 8 connections by default; writers run
//! concurrently under READ COMMITTED. Uniqueness races (two registrations
//! picking the same address or name) surface as unique-constraint violations,
//! serialization failures and deadlocks as SQLSTATE 40001/40P01; all of these
//! make the whole transaction retry, at most [`MAX_ATTEMPTS`] times.
//!
//! A transaction's result is returned only after `COMMIT` succeeded, so
//! whatever the server acknowledges is durable.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Executor as _, Transaction};
use tokio::sync::MutexGuard;

use crate::StoreError;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// How often a write transaction is attempted before giving up on contention.
pub const MAX_ATTEMPTS: u32 = 12;

/// Per-connection SQLite settings (see the module documentation).
const SQLITE_PRAGMAS: [&str; 4] = [
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = FULL",
    "PRAGMA busy_timeout = 5000",
    "PRAGMA foreign_keys = ON",
];

/// Which database engine a store runs on, decided by the URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite://PATH` (the default, one file in the state directory).
    Sqlite,
    /// `postgres://…` or `postgresql://…`.
    Postgres,
}

impl Backend {
    /// Returns the backend a URL selects.
    ///
    /// # Errors
    /// [`StoreError::UnsupportedUrl`] for any other scheme.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::UnsupportedUrl(redact_url(url)))
        }
    }

    /// Returns the default pool size for this backend.
    pub const fn default_max_connections(self) -> u32 {
        match self {
            // Readers run in parallel under WAL; writers are serialized anyway.
            Backend::Sqlite => 4,
            Backend::Postgres => 8,
        }
    }
}

/// Returns the `sqlite://` URL for a database file.
pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// Connects, prepares the SQLite file if needed, and runs the migrations.
pub(crate) async fn connect(
    url: &str,
    max_connections: u32,
) -> Result<(AnyPool, Backend), StoreError> {
    sqlx::any::install_default_drivers();
    let backend = Backend::from_url(url)?;
    if backend == Backend::Sqlite
        && let Some(path) = sqlite_file_path(url)
    {
        prepare_sqlite_file(&path)?;
    }
    let is_sqlite = backend == Backend::Sqlite;
    let pool = AnyPoolOptions::new()
        .max_connections(max_connections)
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                if is_sqlite {
                    for pragma in SQLITE_PRAGMAS {
                        conn.execute(pragma).await?;
                    }
                }
                Ok(())
            })
        })
        .connect(url)
        .await?;
    let migrator = match backend {
        Backend::Sqlite => &SQLITE_MIGRATIONS,
        Backend::Postgres => &POSTGRES_MIGRATIONS,
    };
    migrator.run(&pool).await?;
    Ok((pool, backend))
}

/// Returns the file a `sqlite:` URL names, or `None` for in-memory databases.
fn sqlite_file_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" || query.split('&').any(|kv| kv == "mode=memory") {
        return None;
    }
    Some(PathBuf::from(path))
}

/// Creates the database file with mode 0600 (and its directory with 0700) if
/// it does not exist yet. An existing file keeps its permissions.
fn prepare_sqlite_file(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| StoreError::Io { path, source }
    };
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io(path)(e)),
    }
}

/// Drops the password from a URL before it goes into an error message.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

/// An open write transaction. On SQLite it also holds the process-wide writer
/// lock. `tx` is declared first so it is dropped (rolled back) before the lock
/// is released.
pub(crate) struct WriteTx<'s> {
    pub(crate) tx: Transaction<'static, Any>,
    pub(crate) _writer: Option<MutexGuard<'s, ()>>,
}

/// Shared by the `Store` handle's clones.
pub(crate) struct Inner {
    pub(crate) pool: AnyPool,
    pub(crate) backend: Backend,
    pub(crate) writer: tokio::sync::Mutex<()>,
    /// How many write transactions were retried (a contention metric).
    pub(crate) retries: std::sync::atomic::AtomicU64,
}

impl Inner {
    pub(crate) async fn begin_write(&self) -> Result<WriteTx<'_>, StoreError> {
        match self.backend {
            Backend::Sqlite => {
                let writer = self.writer.lock().await;
                let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
                Ok(WriteTx {
                    tx,
                    _writer: Some(writer),
                })
            }
            Backend::Postgres => Ok(WriteTx {
                tx: self.pool.begin().await?,
                _writer: None,
            }),
        }
    }
}

/// Turns the last error of a retried operation into what the caller sees.
pub(crate) fn give_up(e: StoreError, attempts: u32) -> StoreError {
    match e {
        StoreError::Contention { what, .. } => StoreError::Contention { what, attempts },
        StoreError::Db(db) if crate::error::db_is_transient(&db) => StoreError::Contention {
            what: db.to_string(),
            attempts,
        },
        other => other,
    }
}

/// Runs `$body` (a block using `$conn: &mut AnyConnection` that yields
/// `Result<T, StoreError>`; `?` and `return` leave the block, not the caller)
/// in a write transaction, commits, and retries the whole transaction on
/// transient errors. `$attempt` counts from 0. The value is returned only
/// after COMMIT succeeded.
macro_rules! write_tx {
    ($inner:expr, |$conn:ident, $attempt:ident| $body:block) => {{
        let inner: &$crate::db::Inner = $inner;
        let mut $attempt: u32 = 0;
        loop {
            let mut wtx = inner.begin_write().await?;
            let result: Result<_, $crate::StoreError> = {
                let $conn: &mut sqlx::AnyConnection = &mut *wtx.tx;
                let $attempt: u32 = $attempt;
                async { $body }.await
            };
            let outcome = match result {
                Ok(v) => wtx.tx.commit().await.map(|()| v).map_err($crate::StoreError::from),
                Err(e) => {
                    // A failed rollback leaves nothing to undo: the connection is discarded.
                    let _ = wtx.tx.rollback().await;
                    Err(e)
                }
            };
            match outcome {
                Ok(v) => break Ok(v),
                Err(e) if e.is_transient() && $attempt + 1 < $crate::db::MAX_ATTEMPTS => {
                    tracing::debug!(attempt = $attempt, error = %e, "retrying write transaction");
                    inner.retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    $attempt += 1;
                }
                Err(e) => break Err($crate::db::give_up(e, $attempt + 1)),
            }
        }
    }};
}
pub(crate) use write_tx;

/// Keeps the `Inner` type reachable for `Store`.
pub(crate) type Shared = Arc<Inner>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_scheme_picks_the_backend() {
        assert_eq!(
            Backend::from_url("sqlite:///var/lib/weft-control/weft.db").unwrap(),
            Backend::Sqlite
        );
        assert_eq!(
            Backend::from_url("postgres://u@h/db").unwrap(),
            Backend::Postgres
        );
        assert_eq!(
            Backend::from_url("postgresql://u@h/db").unwrap(),
            Backend::Postgres
        );
        let err = Backend::from_url("mysql://root:hunter2@h/db").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn in_memory_sqlite_urls_have_no_file() {
        assert_eq!(sqlite_file_path("sqlite::memory:"), None);
        assert_eq!(
            sqlite_file_path("sqlite://x.db?mode=memory&cache=shared"),
            None
        );
        assert_eq!(
            sqlite_file_path("sqlite:///a/b.db?mode=rwc"),
            Some(PathBuf::from("/a/b.db"))
        );
    }
}
