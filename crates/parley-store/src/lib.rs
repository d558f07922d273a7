//! Parley's durable state in one SQLite file: users, login sessions and the call log.
//!
//! Migrations in `migrations/` are embedded with `sqlx::migrate!` and run by [`Store::open`];
//! they are checksummed, so an applied one is never edited: add a new one instead.
//! Several processes may open the same file at once (the daemon and `parley user ...`): WAL mode
//! and a busy timeout make that safe.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};

pub mod admin;
pub mod calls;
pub mod quality;
mod sessions;
mod users;

pub use sessions::{NewSession, Session, SessionUnusable, UserKey};
pub use users::User;

/// A handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    /// The one connection, `None` once [`Store::close`] has closed it. The async mutex queues
    /// its users in turn, as the pool of one did.
    connection: std::sync::Arc<tokio::sync::Mutex<Option<SqliteConnection>>>,
    path: PathBuf,
    /// When the last write probe ran and what it found (`writable`).
    probe: std::sync::Arc<tokio::sync::Mutex<Option<ProbeResult>>>,
}

/// When a write probe ran, and its outcome (the database's error, for the log).
type ProbeResult = (std::time::Instant, Result<(), String>);

/// What went wrong with the database, worded for the admin.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error(
        "{path}: not a usable SQLite database ({detail}); stop parley, move the file aside and \
         restore it from a backup (or start with a fresh one)"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "{path}: cannot open the database ({detail}); check that the directory exists and is writable by the parley user"
    )]
    CannotOpen { path: PathBuf, detail: String },
    #[error(
        "{path}: database migration failed ({detail}); the file may be from a newer parley or \
         was edited by hand: restore a backup or upgrade parley"
    )]
    Migration { path: PathBuf, detail: String },
    #[error("the username {0:?} is taken")]
    UsernameTaken(String),
    #[error("no user named {0:?}")]
    NoSuchUser(String),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("password hashing failed: {0}")]
    Hash(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl Store {
    /// Opens (creating if missing) the database at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Store> {
        let options = SqliteConnectOptions::from_str("sqlite:")
            .expect("a bare sqlite: URL parses")
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: every commit is fsynced before it returns, so an acknowledged call record
            // or login survives a power cut (issue 10). NORMAL survived only process crashes.
            // The daemon's call log writer commits many records per transaction under load, so
            // the cost is one fsync per batch, not per call event (docs/benchmarks.md).
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        // One connection (issue 14), held by the store itself rather than a pool. Each sqlx
        // connection has its own thread and its own page cache, and a commit on one empties the
        // others' caches: with four, the pool's round-robin handed every query a connection whose
        // cache the last write had emptied (40 pread64 per call setup; 0.2 with one). The
        // daemon's writes are one writer task anyway and its reads are single-row lookups; the
        // cost is that a read can wait behind a commit's fsync. Not a pool of one: sqlx's pool
        // pings every connection it gets back, one more round trip to the connection's thread
        // after every query (ten hand-overs per call setup where five do the work; there is no
        // option to turn it off). The ping was there to finish what a dropped query left behind,
        // which the connection's thread does anyway before the next command: a dropped
        // transaction queues its rollback as it drops.
        let mut connection = options
            .connect()
            .await
            .map_err(|e| classify_open_error(path, e))?;
        MIGRATOR.run(&mut connection).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(inner) => classify_open_error(path, inner),
            other => StoreError::Migration {
                path: path.to_owned(),
                detail: other.to_string(),
            },
        })?;
        Ok(Store {
            connection: std::sync::Arc::new(tokio::sync::Mutex::new(Some(connection))),
            path: path.to_owned(),
            probe: Default::default(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection, for queries in this crate's modules, held until the guard drops:
    /// `query.fetch_one(&mut *self.conn().await?)` holds it for that one statement. After
    /// [`Store::close`], `sqlx::Error::PoolClosed`, as the pool answered.
    pub(crate) async fn conn(
        &self,
    ) -> Result<tokio::sync::MappedMutexGuard<'_, SqliteConnection>, sqlx::Error> {
        tokio::sync::MutexGuard::try_map(self.connection.lock().await, Option::as_mut)
            .map_err(|_| sqlx::Error::PoolClosed)
    }

    /// `PRAGMA integrity_check`: `"ok"` for a healthy file.
    pub async fn integrity_check(&self) -> Result<String> {
        let (result,): (String,) = sqlx::query_as("PRAGMA integrity_check")
            .fetch_one(&mut *self.conn().await?)
            .await?;
        Ok(result)
    }

    /// Answers whether the database still takes queries.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&mut *self.conn().await?)
            .await?;
        Ok(())
    }

    /// Proves that the database takes a durable write right now (for `/readyz`): a read says
    /// nothing about a full disk or a failing device. Rewrites the header's `user_version` (which
    /// nothing else uses; sqlx keeps its own table) with its own value: one small committed and
    /// fsynced transaction that changes nothing. Callers rate-limit it.
    pub async fn probe_write(&self) -> Result<()> {
        let mut connection = self.conn().await?;
        let (version,): (i64,) = sqlx::query_as("PRAGMA user_version")
            .fetch_one(&mut *connection)
            .await?;
        // PRAGMA takes no bound parameters; the value is an integer we just read.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "PRAGMA user_version = {version}"
        )))
        .execute(&mut *connection)
        .await?;
        Ok(())
    }

    /// Whether the database takes a write, probing (`probe_write`) at most once per `interval`
    /// and otherwise answering what the last probe found: `/readyz` may be polled often, and
    /// each probe costs an fsync. The error is the database's, for the log.
    pub async fn writable(&self, interval: Duration) -> Result<(), String> {
        let mut last = self.probe.lock().await;
        if let Some((at, result)) = &*last
            && at.elapsed() < interval
        {
            return result.clone();
        }
        let result = self.probe_write().await.map_err(|e| e.to_string());
        *last = Some((std::time::Instant::now(), result.clone()));
        result
    }

    /// Checkpoints the WAL into the main file and closes the connection; call at shutdown.
    pub async fn close(&self) {
        let Some(mut connection) = self.connection.lock().await.take() else {
            return;
        };
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut connection)
            .await
        {
            log::warn!("database checkpoint at shutdown failed: {e}");
        }
        if let Err(e) = connection.close().await {
            log::warn!("closing the database failed: {e}");
        }
    }
}

fn classify_open_error(path: &Path, error: sqlx::Error) -> StoreError {
    let detail = error.to_string();
    // SQLITE_NOTADB (26) and SQLITE_CORRUPT (11) mean the file is not a database we can use;
    // everything else at open time is about reaching the file.
    let corrupt = match &error {
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("26") | Some("11"))
                || detail.contains("not a database")
                || detail.contains("malformed")
        }
        _ => detail.contains("not a database") || detail.contains("malformed"),
    };
    if corrupt {
        StoreError::Corrupt {
            path: path.to_owned(),
            detail,
        }
    } else {
        StoreError::CannotOpen {
            path: path.to_owned(),
            detail,
        }
    }
}

/// Milliseconds since the Unix epoch, the unit of every timestamp column.
pub fn unix_millis_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Unix milliseconds as RFC 3339 UTC, the API's time format.
pub fn rfc3339(unix_millis: i64) -> String {
    let time = time::OffsetDateTime::from_unix_timestamp_nanos(unix_millis as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    time.format(&time::format_description::well_known::Rfc3339)
        .expect("any in-range UTC time formats as RFC 3339")
}
