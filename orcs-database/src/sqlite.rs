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

use orcs_core::{Error, Lease, Millis, Result};
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
type DbRow = sqlx::sqlite::SqliteRow;

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

/// Setup steps tried on `SQLITE_BUSY` before giving up. Processes opening a new file at once can
/// meet "database is locked" before the busy timeout applies (switching the file to WAL takes an
/// exclusive lock without waiting); every setup step is idempotent, so it is simply tried again.
const SETUP_TRIES: u32 = 20;

fn is_busy(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("5"))
}

/// Pause before setup try `n` (1-based): 10 ms doubling, at most 200 ms.
fn setup_pause(n: u32) -> Duration {
    Duration::from_millis((10u64 << n.min(5)).min(200))
}

/// Creates the tables and indexes in one immediate transaction (so processes take turns).
async fn create_schema(conn: &mut SqliteConnection, sql: &Sql) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    for statement in &sql.schema {
        sqlx::query(sqlx::AssertSqlSafe(statement.clone())).execute(&mut *tx).await?;
    }
    tx.commit().await
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
        let mut tries = 1;
        let mut writer = loop {
            match options.connect().await {
                Err(e) if is_busy(&e) && tries < SETUP_TRIES => {
                    tokio::time::sleep(setup_pause(tries)).await;
                    tries += 1;
                }
                connected => break connected.map_err(backend)?,
            }
        };
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
        let sql = Arc::new(Sql::new(
            Dialect::Sqlite,
            &config.jobs_table,
            &config.failed_table,
            &config.counters_table,
        ));
        let reader = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(4)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_lazy_with(options);
        // Several processes may start on a new file at once: IF NOT EXISTS makes every step
        // idempotent and the immediate transaction makes them take turns.
        let mut tries = 1;
        loop {
            match create_schema(&mut writer, &sql).await {
                Err(e) if is_busy(&e) && tries < SETUP_TRIES => {
                    tokio::time::sleep(setup_pause(tries)).await;
                    tries += 1;
                }
                created => break created.map_err(backend)?,
            }
        }
        Ok(Self { writer: Mutex::new(writer), reader, sql, shared })
    }

    async fn writer(&self) -> Result<MutexGuard<'_, SqliteConnection>> {
        Ok(self.writer.lock().await)
    }

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// Wakes this process's idle workers; other processes find the job when they poll.
    #[allow(clippy::unused_async)]
    async fn announce(&self, _queues: &[&str]) -> Result<()> {
        self.shared.wake.notify_waiters();
        Ok(())
    }

    pub(crate) async fn complete(&self, lease: &Lease) -> Result<()> {
        let mut conn = self.writer().await?;
        let mut tx = begin(&mut conn).await?;
        let Some(row) = q(&self.sql.delete_leased)
            .bind(lease.id.clone())
            .bind(lease.token.clone())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?
        else {
            return Err(Error::LeaseLost { id: lease.id.clone() });
        };
        let queue: String = row.try_get(0).map_err(backend)?;
        q(&self.sql.count_processed).bind(queue).execute(&mut *tx).await.map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    /// Completes the leases in one write transaction; a lease whose token no longer matches is lost.
    pub(crate) async fn complete_many(&self, leases: &[Lease]) -> Result<Vec<Result<()>>> {
        let mut conn = self.writer().await?;
        let mut tx = begin(&mut conn).await?;
        let mut done = std::collections::HashSet::new();
        let mut per_queue: std::collections::BTreeMap<String, i64> =
            std::collections::BTreeMap::new();
        for lease in leases {
            let row = q(&self.sql.delete_leased)
                .bind(lease.id.clone())
                .bind(lease.token.clone())
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
            if let Some(row) = row {
                let queue: String = row.try_get(0).map_err(backend)?;
                *per_queue.entry(queue).or_default() += 1;
                done.insert((lease.id.clone(), lease.token.clone()));
            }
        }
        for (queue, n) in per_queue {
            q(&self.sql.count_processed_n)
                .bind(queue)
                .bind(n)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(crate::common::settled(leases, &done))
    }

    pub(crate) async fn fail_leased(&self, lease: &Lease, error: &str, now: Millis) -> Result<()> {
        let mut conn = self.writer().await?;
        let mut tx = begin(&mut conn).await?;
        let Some(row) = q(&self.sql.copy_to_failed)
            .bind(lease.id.clone())
            .bind(lease.token.clone())
            .bind(error.to_owned())
            .bind(now)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?
        else {
            return Err(Error::LeaseLost { id: lease.id.clone() });
        };
        let queue: String = row.try_get(0).map_err(backend)?;
        q(&self.sql.delete_job).bind(lease.id.clone()).execute(&mut *tx).await.map_err(backend)?;
        q(&self.sql.count_failed).bind(queue).execute(&mut *tx).await.map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    pub(crate) async fn wait(&self, queues: &[String], timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let notified = self.shared.wake.notified();
        let mut notified = std::pin::pin!(notified);
        // Register before looking, so a dispatch between the look and the wait still wakes us.
        notified.as_mut().enable();
        loop {
            if self.any_ready(queues).await? {
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
