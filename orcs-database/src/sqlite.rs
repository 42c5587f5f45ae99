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

/// Opens the writer connection, checks that the file is in WAL mode, and creates the tables and
/// indexes. IF NOT EXISTS makes every step idempotent and the immediate transaction makes
/// processes starting on a new file at once take turns.
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
    for statement in &sql.schema {
        sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
    }
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
        let mut results = Vec::with_capacity(leases.len());
        let mut per_queue: std::collections::BTreeMap<String, i64> =
            std::collections::BTreeMap::new();
        for lease in leases {
            let row = q(&self.sql.delete_leased)
                .bind(lease.id.clone())
                .bind(lease.token.clone())
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
            results.push(match row {
                Some(row) => {
                    let queue: String = row.try_get(0).map_err(backend)?;
                    *per_queue.entry(queue).or_default() += 1;
                    Ok(())
                }
                None => Err(Error::LeaseLost { id: lease.id.clone() }),
            });
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
        Ok(results)
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
