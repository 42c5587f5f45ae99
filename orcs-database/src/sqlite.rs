//! The SQLite backend: one file in WAL mode, shared by every worker process on the machine.
//!
//! Writes go through a single pooled connection per process, so this process's writers queue on
//! the pool (fair and without sleeping) instead of in SQLite's busy handler; other processes are
//! kept apart by the busy timeout, and every multi-statement write starts with `BEGIN IMMEDIATE`
//! so it takes the write lock before it reads (a deferred transaction that reads first can fail
//! with "database is locked" without waiting). Reads use a few more connections, which WAL
//! lets run beside the writer.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use orcs_core::{Error, Millis, Result, Settle};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Row, Transaction};
use tokio::sync::{Mutex, MutexGuard};

use crate::common::{SLOW_STATEMENT, Shared, backend, common_ops};
use crate::config::{ACCEPTED, DatabaseConfig, URL_KEY};
use crate::sql::{Dialect, Sql};

type Db = sqlx::Sqlite;
type Conn = SqliteConnection;

/// The database's clock in milliseconds, for the migrations table.
const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";

async fn table_exists(conn: &mut Conn, name: &str) -> Result<bool> {
    let row = sqlx::query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1")
        .bind(name.to_owned())
        .fetch_optional(conn)
        .await
        .map_err(backend)?;
    Ok(row.is_some())
}

/// How long a write waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often an idle worker looks for jobs dispatched by other processes (this process's
/// dispatches wake it at once).
const POLL_INTERVAL: Duration = Duration::from_millis(50);

pub(crate) struct Store {
    /// The one connection this process writes through; the lock is the queue of writers. A
    /// pool would ping the connection after every statement.
    writer: Mutex<SqliteConnection>,
    reader: SqlitePool,
    sql: Arc<Sql>,
    shared: Arc<Shared>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore").field("tables", &self.sql.jobs).finish_non_exhaustive()
    }
}

common_ops!();

/// Takes the write lock first, so that the transaction never has to upgrade a read lock (which
/// fails at once with "database is locked" instead of waiting when another process wrote).
async fn begin(conn: &mut SqliteConnection) -> Result<Transaction<'_, Db>> {
    conn.begin_with("BEGIN IMMEDIATE").await.map_err(backend)
}

/// Setup tries on `SQLITE_BUSY` before giving up. Processes opening a new file at once can meet
/// "database is locked" before the busy timeout applies (switching the file to WAL takes an
/// exclusive lock without waiting); every setup step is idempotent, so setup is simply run again.
const SETUP_TRIES: u32 = 20;

/// `SQLITE_BUSY` ("database is locked") from a setup step.
fn is_busy(e: &Error) -> bool {
    matches!(e, Error::Backend { source, .. } if matches!(
        source.downcast_ref::<sqlx::Error>(),
        Some(sqlx::Error::Database(db)) if db.code().as_deref() == Some("5")
    ))
}

/// Opens the writer connection, checks that the file is in WAL mode, and applies the migrations.
/// The immediate transaction makes processes starting on a new file at once take turns.
async fn open_writer(options: &SqliteConnectOptions, sql: &Sql) -> Result<SqliteConnection> {
    let mut writer = options.connect().await.map_err(backend)?;
    let mode: String = sqlx::query("PRAGMA journal_mode")
        .fetch_one(&mut writer)
        .await
        .and_then(|row| row.try_get(0))
        .map_err(backend)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::config(
            URL_KEY,
            format!(
                "the SQLite file {} is in journal mode {mode:?}, not WAL, so several \
                 workers cannot share it; put it on a local file system that supports WAL",
                options.get_filename().display()
            ),
        ));
    }
    let mut tx = begin(&mut writer).await?;
    migrate(&mut tx, sql).await?;
    tx.commit().await.map_err(backend)?;
    Ok(writer)
}

impl Store {
    pub(crate) async fn connect(config: &DatabaseConfig, shared: Arc<Shared>) -> Result<Self> {
        let url = config.url.as_str();
        let rest = &url["sqlite:".len()..];
        let path = rest.trim_start_matches("//").split(['?', '#']).next().unwrap_or("");
        if path.is_empty() || path == ":memory:" || url.contains("mode=memory") {
            return Err(Error::config(
                URL_KEY,
                "an in-memory SQLite database would lose every job when the process ends and \
                 is invisible to other processes: name a file, such as \
                 sqlite://storage/queue.db, or use QUEUE_DRIVER=memory",
            ));
        }
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::config(URL_KEY, format!("{ACCEPTED}: {e}")))?;
        if let Some(dir) = Path::new(options.get_filename()).parent()
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::config(
                    URL_KEY,
                    format!(
                        "cannot create the directory {} for the SQLite file: {e}",
                        dir.display()
                    ),
                )
            })?;
        }
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // In WAL mode, NORMAL loses no committed job when a process crashes; only a power
            // loss may take back the last transactions, and it makes commits far cheaper.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .log_slow_statements(log::LevelFilter::Debug, SLOW_STATEMENT);
        let sql = Arc::new(Sql::new(
            Dialect::Sqlite,
            &config.jobs_table,
            &config.failed_table,
            &config.counters_table,
        ));
        let mut tries = 1;
        let writer = loop {
            match open_writer(&options, &sql).await {
                Err(e) if is_busy(&e) && tries < SETUP_TRIES => {
                    let pause = Duration::from_millis((10u64 << tries.min(5)).min(200));
                    tokio::time::sleep(pause).await;
                    tries += 1;
                }
                opened => break opened?,
            }
        };
        let reader = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(4)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_lazy_with(options);
        Ok(Self { writer: Mutex::new(writer), reader, sql, shared })
    }

    async fn writer(&self) -> Result<MutexGuard<'_, SqliteConnection>> {
        Ok(self.writer.lock().await)
    }

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// Other processes find new jobs when they poll; this process's waiters are woken by the
    /// caller after the commit.
    #[allow(clippy::unused_async)]
    async fn notify_in(&self, _conn: &mut Conn, _queues: &[String]) -> Result<()> {
        Ok(())
    }

    pub(crate) async fn claim(
        &self,
        req: &orcs_core::ClaimRequest<'_>,
    ) -> Result<orcs_core::Claim> {
        // One write transaction for the promotions and the claims: one commit (one fsync of
        // the WAL at most) per claim.
        let mut conn = self.writer().await?;
        let mut tx = begin(&mut conn).await?;
        let (claim, unreadable) = self.claim_on(&mut tx, req).await?;
        tx.commit().await.map_err(backend)?;
        drop(conn);
        self.fail_unreadable(unreadable, req.now).await?;
        Ok(claim)
    }

    /// The whole batch is one write transaction, each item token-checked on its own.
    pub(crate) async fn settle(&self, batch: &[Settle], now: Millis) -> Result<Vec<Result<()>>> {
        self.settle_each(batch, now).await
    }

    pub(crate) async fn wait(
        &self,
        queues: &[String],
        now: Millis,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let notified = self.shared.wake.notified();
        let mut notified = std::pin::pin!(notified);
        // Register before looking, so a dispatch between the look and the wait still wakes us.
        notified.as_mut().enable();
        loop {
            if self.any_ready(queues, now).await? {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(());
            }
            tokio::select! {
                () = notified.as_mut() => return Ok(()),
                () = tokio::time::sleep((deadline - now).min(POLL_INTERVAL)) => {}
            }
        }
    }
}
