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

use orcs_core::{Error, Millis, Result, Settle, Touch};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteQueryResult, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Row, Transaction};
use tokio::sync::{Mutex, MutexGuard};

use crate::common::{
    self, Backend, Limits, SLOW_STATEMENT, Shared, backend, dynamic, first_texts, q,
};
use crate::config::{ACCEPTED, DatabaseConfig, URL_SETTING};
use crate::sql::{Dialect, Sql};

type Db = sqlx::Sqlite;
type Conn = SqliteConnection;

/// The driver's tables in a SQLite file.
pub(crate) type Store = common::Store<SqliteBackend>;

/// How long a write waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often an idle worker looks for jobs dispatched by other processes (this process's
/// dispatches wake it at once).
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// What a SQLite store has beside its statements.
pub(crate) struct SqliteBackend {
    /// The one connection this process writes through; the lock is the queue of writers. A
    /// pool would ping the connection after every statement.
    writer: Mutex<SqliteConnection>,
    reader: SqlitePool,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore").field("tables", &self.sql.jobs).finish_non_exhaustive()
    }
}

impl Backend for SqliteBackend {
    type Db = Db;
    type Conn = Conn;
    type Writer<'a> = MutexGuard<'a, Conn>;

    /// The database's clock in milliseconds.
    const NOW_MS: &'static str = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";

    async fn writer(&self) -> Result<MutexGuard<'_, Conn>> {
        Ok(self.writer.lock().await)
    }

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// Takes the write lock first, so that the transaction never has to upgrade a read lock (which
    /// fails at once with "database is locked" instead of waiting when another process wrote).
    async fn begin(conn: &mut Conn) -> Result<Transaction<'_, Db>> {
        conn.begin_with("BEGIN IMMEDIATE").await.map_err(backend)
    }

    fn rows_affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    async fn table_exists(conn: &mut Conn, name: &str) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1")
            .bind(name.to_owned())
            .fetch_optional(conn)
            .await
            .map_err(backend)?;
        Ok(row.is_some())
    }

    /// The column names of table `name`; empty if there is no such table.
    async fn table_columns(conn: &mut Conn, name: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT name FROM pragma_table_info($1)")
            .bind(name.to_owned())
            .fetch_all(conn)
            .await
            .map_err(backend)?;
        first_texts(&rows)
    }

    /// Other processes find new jobs when they poll; this process's waiters are woken by the
    /// caller after the commit.
    #[allow(clippy::unused_async)]
    async fn notify_in(_store: &Store, _conn: &mut Conn, _queues: &[String]) -> Result<()> {
        Ok(())
    }

    /// One `DELETE ... RETURNING` per chunk of leases (see [`Sql::complete_leases_sqlite`]),
    /// then the keys of the deleted jobs that held one are freed.
    async fn complete_leases(
        store: &Store,
        conn: &mut Conn,
        items: &[&Settle],
    ) -> Result<Option<Vec<common::Completed>>> {
        let mut completed = Vec::with_capacity(items.len());
        let mut keys: Vec<(String, String, String)> = Vec::new();
        for chunk in items.chunks(common::INSERT_CHUNK) {
            let mut query = dynamic(store.sql.complete_leases_sqlite(chunk.len()));
            for item in chunk {
                query = query.bind(item.lease.id.clone());
            }
            for item in chunk {
                query = query.bind(item.lease.token.clone());
            }
            for row in query.fetch_all(&mut *conn).await.map_err(backend)? {
                let job = common::Completed {
                    id: row.try_get(0).map_err(backend)?,
                    token: row.try_get(1).map_err(backend)?,
                    queue: row.try_get(2).map_err(backend)?,
                    batch: row.try_get(4).map_err(backend)?,
                    limited: row.try_get(5).map_err(backend)?,
                };
                if let Some(key) = row.try_get::<Option<String>, _>(3).map_err(backend)? {
                    keys.push((job.queue.clone(), key, job.id.clone()));
                }
                completed.push(job);
            }
        }
        for (queue, key, holder) in keys {
            q(&store.sql.free_key)
                .bind(queue)
                .bind(key)
                .bind(holder)
                .execute(&mut *conn)
                .await
                .map_err(backend)?;
        }
        Ok(Some(completed))
    }

    /// Promotes the queue's due delayed jobs (inside the claim's transaction) and reads its
    /// limits.
    async fn promote_due(
        store: &Store,
        conn: &mut Conn,
        queue: &str,
        now: Millis,
    ) -> Result<Option<Limits>> {
        loop {
            let done = q(&store.sql.promote)
                .bind(queue.to_owned())
                .bind(now)
                .execute(&mut *conn)
                .await
                .map_err(backend)?;
            if done.rows_affected() < crate::sql::PROMOTE_CHUNK {
                break;
            }
        }
        let Some(row) = q(&store.sql.limits)
            .bind(queue.to_owned())
            .fetch_optional(&mut *conn)
            .await
            .map_err(backend)?
        else {
            return Ok(None);
        };
        let get = |i: usize| row.try_get::<Option<i64>, _>(i).map_err(backend);
        Ok(Limits::from_columns(get(0)?, get(1)?, get(2)?))
    }

    /// Claims from a queue with limits, inside the claim's transaction (SQLite has one writer,
    /// so nothing changes between the count and the claim). Returns the rows and, when the rate
    /// window is full, when it reopens.
    async fn claim_limited(
        store: &Store,
        conn: &mut Conn,
        queue: &str,
        req: &orcs_core::ClaimRequest<'_>,
        want: usize,
        batch: &str,
        limits: Limits,
    ) -> Result<(Vec<sqlx::sqlite::SqliteRow>, Option<Millis>)> {
        let since = limits.rate.map_or(req.now, |(_, period)| req.now.saturating_sub(period));
        let row = q(&store.sql.room)
            .bind(queue.to_owned())
            .bind(limits.concurrency)
            .bind(since)
            .fetch_one(&mut *conn)
            .await
            .map_err(backend)?;
        let reserved: i64 = row.try_get(0).map_err(backend)?;
        let started: i64 = row.try_get(1).map_err(backend)?;
        let room = limits.room(want, reserved, started);
        let rows = if room > 0 {
            q(&store.sql.claim)
                .bind(queue.to_owned())
                .bind(req.now)
                .bind(crate::common::duration_ms(req.default_timeout_ms))
                .bind(crate::common::duration_ms(req.grace_ms))
                .bind(batch.to_owned())
                .bind(room)
                .fetch_all(&mut *conn)
                .await
                .map_err(backend)?
        } else {
            Vec::new()
        };
        let mut reopens = None;
        if let Some(rate) = limits.rate {
            if !rows.is_empty() {
                q(&store.sql.record_start)
                    .bind(queue.to_owned())
                    .bind(req.now)
                    .bind(i64::try_from(rows.len()).unwrap_or(i64::MAX))
                    .execute(&mut *conn)
                    .await
                    .map_err(backend)?;
            }
            q(&store.sql.prune_starts)
                .bind(queue.to_owned())
                .bind(since)
                .execute(&mut *conn)
                .await
                .map_err(backend)?;
            if rows.len() < want {
                reopens = store.rate_reopens(conn, queue, req.now, rate).await?;
            }
        }
        Ok((rows, reopens))
    }
}

/// Setup tries on `SQLITE_BUSY` before giving up. Processes opening a new file at once can meet
/// "database is locked" before the busy timeout applies (switching the file to WAL takes an
/// exclusive lock without waiting); every setup step is idempotent, so setup is simply run again.
const SETUP_TRIES: u32 = 20;

/// `SQLITE_READONLY` (a read-only file or directory, or `mode=ro`) from opening the file.
fn is_read_only(e: &Error) -> bool {
    matches!(e, Error::Backend { source, .. }
        if source.to_string().starts_with(crate::common::SQLITE_READ_ONLY))
}

/// The error for a SQLite file this process may not write to.
fn read_only(path: &Path, why: &dyn fmt::Display) -> Error {
    Error::config(
        URL_SETTING,
        format!(
            "the SQLite file {} is read-only ({why}): a worker writes to it and creates \
             its -wal and -shm files beside it, so make the file and its directory writable \
             for this user, or name a writable file",
            path.display()
        ),
    )
}

/// The error for an in-memory database (a URL, or an application's pool, naming one).
fn in_memory() -> Error {
    Error::config(
        URL_SETTING,
        "an in-memory SQLite database would lose every job when the process ends and is \
         invisible to other processes: name a file, such as sqlite://storage/queue.db, or use \
         the memory driver (orcs_memory::MemoryDriver) for jobs that live only in this process",
    )
}

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
    if mode.eq_ignore_ascii_case("memory") {
        return Err(in_memory());
    }
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::config(
            URL_SETTING,
            format!(
                "the SQLite file {} is in journal mode {mode:?}, not WAL, so several \
                 workers cannot share it; put it on a local file system that supports WAL (and \
                 open an application's pool given to DatabaseDriver::from_sqlite_pool with \
                 SqliteConnectOptions::journal_mode(SqliteJournalMode::Wal))",
                options.get_filename().display()
            ),
        ));
    }
    let mut tx = SqliteBackend::begin(&mut writer).await?;
    Store::migrate(&mut tx, sql).await?;
    // A file opened read-only (`mode=ro`, or a file SQLite could not open for writing) still
    // lets the transaction begin; a write that changes nothing finds out now, not at the first
    // dispatch.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM {} WHERE version < 0",
        sql.migrations_table
    )))
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    tx.commit().await.map_err(backend)?;
    Ok(writer)
}

/// What the driver sets on its own connections. In WAL mode, NORMAL loses no committed job
/// when a process crashes; only a power loss may take back the last transactions, and it makes
/// commits far cheaper.
fn writer_options(options: SqliteConnectOptions) -> SqliteConnectOptions {
    options
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(BUSY_TIMEOUT)
        .log_slow_statements(log::LevelFilter::Debug, SLOW_STATEMENT)
}

fn sql_for(config: &DatabaseConfig) -> Sql {
    Sql::new(
        Dialect::Sqlite,
        None,
        &config.jobs_table,
        &config.failed_table,
        &config.counters_table,
    )
}

/// Opens the writer connection and sets up the tables, saying so when the file is read-only and
/// trying again while processes starting together contend for a new file.
async fn open_checked(
    options: &SqliteConnectOptions,
    config: &DatabaseConfig,
) -> Result<SqliteConnection> {
    let sql = sql_for(config);
    let path = options.get_filename().to_path_buf();
    // Without write permission SQLite opens the file read-only and fails later with a
    // message that does not say so; say it at once.
    if path.exists()
        && let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(&path)
        && e.kind() == std::io::ErrorKind::PermissionDenied
    {
        return Err(read_only(&path, &e));
    }
    let mut tries = 1;
    let writer = loop {
        match open_writer(options, &sql).await {
            Err(e) if is_read_only(&e) => {
                return Err(read_only(&path, &"SQLite: attempt to write a readonly database"));
            }
            Err(e) if is_busy(&e) && tries < SETUP_TRIES => {
                let pause = Duration::from_millis((10u64 << tries.min(5)).min(200));
                tokio::time::sleep(pause).await;
                tries += 1;
            }
            opened => break opened?,
        }
    };
    Ok(writer)
}

impl Store {
    pub(crate) async fn connect(config: &DatabaseConfig, shared: Arc<Shared>) -> Result<Self> {
        let url = config.url.as_str();
        let rest = &url["sqlite:".len()..];
        let path = rest.trim_start_matches("//").split(['?', '#']).next().unwrap_or("");
        if path.is_empty() || path == ":memory:" || url.contains("mode=memory") {
            return Err(in_memory());
        }
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::config(URL_SETTING, format!("{ACCEPTED}: {e}")))?;
        if let Some(dir) = Path::new(options.get_filename()).parent()
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::config(
                    URL_SETTING,
                    format!(
                        "cannot create the directory {} for the SQLite file: {e}",
                        dir.display()
                    ),
                )
            })?;
        }
        let options =
            writer_options(options.create_if_missing(true)).journal_mode(SqliteJournalMode::Wal);
        let writer = open_checked(&options, config).await?;
        let reader = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(4)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_lazy_with(options);
        Ok(Self::new(writer, reader, config, shared))
    }

    /// On an application's pool: reads use it, writes a connection of the driver's own opened
    /// with the pool's options (SQLite has one writer at a time, and this one's busy timeout is
    /// the driver's to choose). The file must already be in WAL mode: switching it would
    /// change it for the application too.
    pub(crate) async fn on_pool(
        pool: SqlitePool,
        config: &DatabaseConfig,
        shared: Arc<Shared>,
    ) -> Result<Self> {
        let options = writer_options(pool.connect_options().as_ref().clone());
        let writer = open_checked(&options, config).await?;
        Ok(Self::new(writer, pool, config, shared))
    }

    fn new(
        writer: SqliteConnection,
        reader: SqlitePool,
        config: &DatabaseConfig,
        shared: Arc<Shared>,
    ) -> Self {
        let sql = Arc::new(sql_for(config));
        Self { sql, shared, backend: SqliteBackend { writer: Mutex::new(writer), reader } }
    }

    pub(crate) async fn claim(
        &self,
        req: &orcs_core::ClaimRequest<'_>,
    ) -> Result<orcs_core::Claim> {
        // One write transaction for the promotions and the claims: one commit (one fsync of
        // the WAL at most) per claim.
        let mut conn = self.backend.writer().await?;
        let mut tx = SqliteBackend::begin(&mut conn).await?;
        let (claim, unreadable) = self.claim_on(&mut tx, req).await?;
        tx.commit().await.map_err(backend)?;
        drop(conn);
        self.fail_unreadable(unreadable, req.now).await?;
        Ok(claim)
    }

    /// Stores the progress of the touches that carry some (one write transaction, only then)
    /// and reads the cancel requests among them.
    pub(crate) async fn touch(&self, running: &[Touch], _now: Millis) -> Result<Vec<String>> {
        if running.is_empty() {
            return Ok(Vec::new());
        }
        if running.iter().any(|t| t.progress.is_some()) {
            let mut conn = self.backend.writer().await?;
            let mut tx = SqliteBackend::begin(&mut conn).await?;
            for touch in running {
                if let Some(progress) = &touch.progress {
                    q(&self.sql.set_progress)
                        .bind(touch.lease.id.clone())
                        .bind(touch.lease.token.clone())
                        .bind(progress.clone())
                        .execute(&mut *tx)
                        .await
                        .map_err(backend)?;
                }
            }
            tx.commit().await.map_err(backend)?;
        }
        let mut cancelled = Vec::new();
        for chunk in running.chunks(crate::common::INSERT_CHUNK) {
            let mut query = dynamic(self.sql.cancel_flags(chunk.len()));
            for touch in chunk {
                query = query.bind(touch.lease.id.clone());
            }
            for row in query.fetch_all(self.backend.reader()).await.map_err(backend)? {
                let id: String = row.try_get(0).map_err(backend)?;
                let token: Option<String> = row.try_get(1).map_err(backend)?;
                // Only for a lease that is still the job's.
                if chunk.iter().any(|t| t.lease.id == id && Some(&t.lease.token) == token.as_ref())
                {
                    cancelled.push(id);
                }
            }
        }
        Ok(cancelled)
    }

    /// The whole batch is one write transaction, each item token-checked on its own; its plain
    /// completions are one statement, and a batch's children among them one count of their
    /// batch row (see `Store::settle_children`, which on SQLite locks nothing first: its
    /// writes take turns).
    pub(crate) async fn settle(&self, batch: &[Settle], now: Millis) -> Result<Vec<Result<()>>> {
        self.settle_children(batch, now).await
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
