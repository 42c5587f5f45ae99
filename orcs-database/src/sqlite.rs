//! The SQLite backend: one file in WAL mode, shared by every worker process on the machine.
//!
//! Writes go through a single pooled connection per process, so this process's writers queue on
//! the pool (fair and without sleeping) instead of in SQLite's busy handler; other processes are
//! kept apart by the busy timeout, and every multi-statement write starts with `BEGIN IMMEDIATE`
//! so it takes the write lock before it reads (a deferred transaction that reads first can fail
//! with "database is locked" without waiting). Reads use a few more connections, which WAL
//! lets run beside the writer.

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use orcs_core::{Error, Millis, NewJob, PushOutcome, Result, Settle, Touch};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteQueryResult, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Row, Transaction};
use tokio::sync::{Mutex, MutexGuard};

use crate::common::{
    self, Backend, Claimed, Limits, SLOW_STATEMENT, Shared, UniqueColumns, backend, duration_ms,
    dynamic, first_texts, initial_state, q,
};
use crate::config::{ACCEPTED, DatabaseConfig, URL_SETTING};
use crate::group::Pushes;
use crate::sql::{Dialect, Sql};

type Db = sqlx::Sqlite;
type Conn = SqliteConnection;

/// The driver's tables in a SQLite file.
pub(crate) type Store = common::Store<SqliteBackend>;

/// How long a write waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often an idle worker looks for jobs dispatched by other processes (this process's
/// dispatches wake it at once), whether or not it saw the WAL change.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How often an idle worker looks at the WAL file (one `stat`): a commit of any process
/// changes its size or modification time, and the worker then looks for jobs at once.
const WATCH_INTERVAL: Duration = Duration::from_millis(2);

/// The size and modification time of the WAL file, `None` if it cannot be read.
fn wal_stamp(wal: &Path) -> Option<(u64, Option<std::time::SystemTime>)> {
    std::fs::metadata(wal).ok().map(|m| (m.len(), m.modified().ok()))
}

/// What a SQLite store has beside its statements. Cloned (cheaply: shared handles) for the
/// group writer's task.
#[derive(Clone)]
pub(crate) struct SqliteBackend {
    /// The one connection this process writes through; the lock is the queue of writers. A
    /// pool would ping the connection after every statement.
    writer: Arc<Mutex<SqliteConnection>>,
    reader: SqlitePool,
    /// Pushes waiting for the group writer (see [`SqliteBackend::push_grouped`]).
    pushes: Arc<std::sync::Mutex<Pushes>>,
    /// Held while the store lives; the checkpointer stops when it is gone.
    #[allow(dead_code)]
    alive: Arc<()>,
    /// The WAL file, which idle workers watch for other processes' commits.
    wal: Arc<Path>,
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

    /// Group commit (see [`crate::group`]): the push joins the queue of the group writer,
    /// which takes every push waiting when it gets the write connection.
    fn push_grouped(
        store: &Store,
        jobs: Vec<NewJob>,
    ) -> std::result::Result<impl Future<Output = Result<Vec<PushOutcome>>> + Send, Vec<NewJob>>
    {
        // One writer: SQLite writes through one connection.
        let (writer, answer) = store.join_group(&store.backend.pushes, jobs, 1);
        if let Some((writer, pushes)) = writer {
            tokio::spawn(async move { writer.write_pushes(pushes).await });
        }
        Ok(answer)
    }

    /// 16 parameters a job at most: far below SQLite's limit.
    const INSERT_ROWS: usize = common::INSERT_CHUNK;

    /// One `VALUES` row of 14 (16 with the workflow columns) parameters per job.
    async fn insert_rows(
        store: &Store,
        conn: &mut Conn,
        jobs: &[NewJob],
        keys: &[UniqueColumns],
        rows: &[usize],
        workflow: bool,
    ) -> Result<Vec<String>> {
        let mut query = dynamic(store.sql.insert(rows.len(), workflow));
        for &i in rows {
            let job = &jobs[i];
            let (key, mode, ms) = keys[i].clone();
            query = query
                .bind(job.id.clone())
                .bind(job.queue.clone())
                .bind(job.name.clone())
                .bind(job.payload.clone())
                .bind(job.priority)
                .bind(i64::from(job.max_retries))
                .bind(duration_ms(job.retry_delay_ms))
                .bind(job.timeout_ms.map(duration_ms))
                .bind(job.dispatched_at)
                .bind(job.available_at)
                .bind(initial_state(job))
                .bind(key)
                .bind(mode)
                .bind(ms);
            if workflow {
                query = query.bind(job.batch.clone()).bind(job.meta.clone());
            }
        }
        first_texts(&query.fetch_all(conn).await.map_err(backend)?)
    }

    /// This process's waiters; other processes find the jobs when they poll.
    fn pushed(store: &Store, _queues: &[String]) {
        store.shared.wake.notify_waiters();
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

    /// SQLite's claims count settling jobs by token: its claims and settles take turns on
    /// its one writer, so reading their rows waits for no settle.
    #[allow(clippy::unused_async)]
    async fn mark_settled(
        _store: &Store,
        _conn: &mut Conn,
        _items: &[Settle],
        _now: Millis,
    ) -> Result<()> {
        Ok(())
    }

    /// One `DELETE ... RETURNING` per chunk of leases (see [`Sql::complete_leases_sqlite`]).
    /// A deleted job's `Started` or `Finished` key goes with its row (migration 9); a `Period`
    /// key runs its time.
    async fn complete_leases(
        store: &Store,
        conn: &mut Conn,
        items: &[&Settle],
    ) -> Result<Option<Vec<common::Completed>>> {
        let mut completed = Vec::with_capacity(items.len());
        for chunk in items.chunks(common::INSERT_CHUNK) {
            let mut query = dynamic(store.sql.complete_leases_sqlite(chunk.len()));
            for item in chunk {
                query = query.bind(item.lease.id.clone());
            }
            for item in chunk {
                query = query.bind(item.lease.token.clone());
            }
            for row in query.fetch_all(&mut *conn).await.map_err(backend)? {
                completed.push(common::Completed {
                    id: row.try_get(0).map_err(backend)?,
                    token: row.try_get(1).map_err(backend)?,
                    queue: row.try_get(2).map_err(backend)?,
                    batch: row.try_get(3).map_err(backend)?,
                    limited: row.try_get(4).map_err(backend)?,
                });
            }
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
    ) -> Result<common::Promotion> {
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
            return Ok(common::Promotion::default());
        };
        let get = |i: usize| row.try_get::<Option<i64>, _>(i).map_err(backend);
        let limits = Limits::from_columns(get(0)?, get(1)?, get(2)?);
        Ok(common::Promotion { limits, next_due: None })
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
    ) -> Result<Claimed<Self>> {
        let since = limits.rate.map_or(req.now, |(_, period)| req.now.saturating_sub(period));
        // The worker's jobs whose code ended and whose settles wait for this process's writer
        // (which this claim holds) run no more: when the concurrency limit is what cuts this
        // claim short, those still reserved under their tokens are left out of the count, as
        // PostgreSQL's claim function and the memory driver do (the statement looks them up
        // only then).
        let tokens = match (limits.concurrency, req.settling) {
            (Some(_), Some(settling)) => common::settling_tokens(settling),
            _ => Vec::new(),
        };
        let listed = serde_json::to_string(&tokens).map_err(Error::Serialization)?;
        let row = q(&store.sql.room)
            .bind(queue.to_owned())
            .bind(since)
            .bind(listed)
            .bind(limits.concurrency)
            .bind(i64::try_from(want).unwrap_or(i64::MAX))
            .fetch_one(&mut *conn)
            .await
            .map_err(backend)?;
        let reserved: i64 = row.try_get(0).map_err(backend)?;
        let started: i64 = row.try_get(1).map_err(backend)?;
        let settling: i64 = row.try_get(2).map_err(backend)?;
        let room = limits.room(want, reserved - settling, started);
        let rows = if room > 0 {
            // `room` is at most `want`.
            let room = usize::try_from(room).unwrap_or(want);
            store
                .claim_query(&store.sql.claim, queue, req, batch, room)
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

/// What the driver sets on its own connections (`synchronous`: see [`synchronous_of`]).
///
/// The statement cache holds each size of the statements built per row count (a group commit's
/// insert and key upsert, a settle call's completion): at sqlx's default of 100 they evicted
/// each other and were prepared again. Checkpoints are the checkpointer's (see
/// [`checkpoints`]); the writer runs one itself only when the WAL has grown past
/// [`WRITER_CHECKPOINT_PAGES`] (the checkpointer stopped or cannot keep up).
fn writer_options(options: SqliteConnectOptions, sync: SqliteSynchronous) -> SqliteConnectOptions {
    options
        .synchronous(sync)
        .busy_timeout(BUSY_TIMEOUT)
        .statement_cache_capacity(STATEMENT_CACHE)
        .pragma("wal_autocheckpoint", WRITER_CHECKPOINT_PAGES.to_string())
        .log_slow_statements(log::LevelFilter::Debug, SLOW_STATEMENT)
}

/// Statements each connection keeps prepared.
const STATEMENT_CACHE: usize = 1024;

/// WAL pages (4 KiB) past which a commit of the writer checkpoints itself (SQLite's default
/// is 1,000, which put a checkpoint, with its two `fsync`s, inside one commit in ~1,000).
const WRITER_CHECKPOINT_PAGES: u32 = 20_000;

/// How often the checkpointer copies the WAL into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// The checkpointer: on a connection of its own, a `PASSIVE` checkpoint (which waits for no
/// reader or writer) every [`CHECKPOINT_INTERVAL`], so that the copy and its `fsync`s run beside
/// the writer, not inside one of its commits, where they held up every write queued behind it
/// (the latency's p99). Ends, closing its connection, once the store is gone (`alive`).
async fn checkpoints(options: SqliteConnectOptions, alive: std::sync::Weak<()>) {
    let mut conn: Option<SqliteConnection> = None;
    loop {
        tokio::time::sleep(CHECKPOINT_INTERVAL).await;
        if alive.strong_count() == 0 {
            break;
        }
        if conn.is_none() {
            conn = options.connect().await.ok();
        }
        if let Some(c) = conn.as_mut()
            && let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&mut *c).await
        {
            tracing::debug!(error = %e, "SQLite checkpoint failed; reconnecting");
            conn = None;
        }
    }
    if let Some(c) = conn {
        let _ = c.close().await;
    }
}

/// The `synchronous` level: `?synchronous=normal` (the default), `full` or `extra` at the end
/// of a `sqlite://` URL (see the README's "SQLite durability"); answers the URL without it, as
/// sqlx does not know the setting.
fn synchronous_of(url: &str) -> Result<(String, SqliteSynchronous)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), SqliteSynchronous::Normal));
    };
    let mut sync = SqliteSynchronous::Normal;
    let mut rest = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("synchronous", level)) => {
                sync = match level.to_ascii_lowercase().as_str() {
                    "normal" => SqliteSynchronous::Normal,
                    "full" => SqliteSynchronous::Full,
                    "extra" => SqliteSynchronous::Extra,
                    other => {
                        return Err(Error::config(
                            URL_SETTING,
                            format!(
                                "synchronous={other} in the SQLite URL: expected normal (the \
                                 default: a power loss may take back the last commits), full \
                                 (durable at commit) or extra"
                            ),
                        ));
                    }
                }
            }
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() { base.to_owned() } else { format!("{base}?{}", rest.join("&")) };
    Ok((url, sync))
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
        let (url, sync) = synchronous_of(url)?;
        let options = SqliteConnectOptions::from_str(&url)
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
        let options = writer_options(options.create_if_missing(true), sync)
            .journal_mode(SqliteJournalMode::Wal);
        let writer = open_checked(&options, config).await?;
        let reader = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(4)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_lazy_with(options.clone());
        Ok(Self::new(writer, reader, options, config, shared))
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
        let options =
            writer_options(pool.connect_options().as_ref().clone(), SqliteSynchronous::Normal);
        let writer = open_checked(&options, config).await?;
        Ok(Self::new(writer, pool, options, config, shared))
    }

    fn new(
        writer: SqliteConnection,
        reader: SqlitePool,
        options: SqliteConnectOptions,
        config: &DatabaseConfig,
        shared: Arc<Shared>,
    ) -> Self {
        let sql = Arc::new(sql_for(config));
        let mut wal = options.get_filename().as_os_str().to_owned();
        wal.push("-wal");
        let wal: Arc<Path> = Path::new(&wal).into();
        let alive = Arc::new(());
        tokio::spawn(checkpoints(options, Arc::downgrade(&alive)));
        let backend = SqliteBackend {
            writer: Arc::new(Mutex::new(writer)),
            reader,
            pushes: Arc::default(),
            alive,
            wal,
        };
        Self { sql, shared, backend }
    }

    pub(crate) async fn claim(
        &self,
        req: &orcs_core::ClaimRequest<'_>,
    ) -> Result<orcs_core::Claim> {
        // One write transaction for the promotions and the claims: one commit (one fsync of
        // the WAL at most) per claim.
        let mut conn = self.backend.writer().await?;
        let mut tx = SqliteBackend::begin(&mut conn).await?;
        // Read once the write lock is held: a claim that waited for it (behind this process's
        // other writes, or another process's) counts its rate-limit starts when it took them.
        let req = &req.at_step();
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
        let wal = &self.backend.wal;
        let mut seen = wal_stamp(wal);
        loop {
            if self.any_ready(queues, now).await? {
                return Ok(());
            }
            // Until the next poll: a wake-up, or a commit (of this process or another) seen
            // in the WAL file, which is looked at every WATCH_INTERVAL instead of a query.
            let poll_at = deadline.min(tokio::time::Instant::now() + POLL_INTERVAL);
            loop {
                let now = tokio::time::Instant::now();
                if now >= poll_at {
                    break;
                }
                tokio::select! {
                    () = notified.as_mut() => return Ok(()),
                    () = tokio::time::sleep((poll_at - now).min(WATCH_INTERVAL)) => {}
                }
                let stamp = wal_stamp(wal);
                if stamp != seen {
                    seen = stamp;
                    break;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(());
            }
        }
    }
}
