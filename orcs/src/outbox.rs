//! A transactional outbox in PostgreSQL for a queue that lives elsewhere (Redis): jobs are
//! written as rows by the application's own transaction and relayed to the queue afterwards,
//! each exactly once, so that neither a rollback nor a crash between the commit and the
//! dispatch can make the queue and the application's data disagree.
//!
//! ```text
//!  application transaction                 relay (any number of processes)
//!  ┌──────────────────────────┐            ┌──────────────────────────────────────────────┐
//!  │ INSERT INTO users ...    │  commit    │ BEGIN                                        │
//!  │ Outbox::push_in(tx, job) ├──NOTIFY──▶ │ SELECT ... FOR UPDATE SKIP LOCKED            │
//!  │ COMMIT                   │            │ push to the queue, unique key per row        │
//!  └──────────────────────────┘            │ DELETE the rows; COMMIT                      │
//!                                          └──────────────────────────────────────────────┘
//! ```
//!
//! # The guarantee
//!
//! A row committed to the outbox becomes **exactly one** job in the target queue, even when a
//! relay process dies at any point, including after its push reached the queue and before its
//! `DELETE` committed, and even when the first copy has already run and left the queue.
//!
//! How, by construction:
//! - A relay takes its batch with `FOR UPDATE SKIP LOCKED` in a transaction that also deletes
//!   the rows: concurrent relays take disjoint rows, and a row leaves the outbox only together
//!   with a relay that pushed it. A relay that dies (or whose transaction fails) releases its
//!   rows to the next relay.
//! - Every relayed job carries a unique key of its own, `orcs-outbox:<job id>`, held for
//!   [`OutboxConfig::dedupe_window`] after the push whatever becomes of the job (a
//!   [`UniqueUntil::Period`] key: completing, failing or cancelling the job does not free it).
//!   A second push of the same row within the window stores nothing: the target answers with
//!   the job that holds the key, and the relay deletes the row as relayed.
//! - A relay's transaction cannot outlive [`OutboxConfig::claim_timeout`]: it sets
//!   `idle_in_transaction_session_timeout`, so that the server ends a relay that stalls or whose
//!   machine is gone, and a relay that finds its batch older than the timeout before pushing
//!   gives it up instead. Rows therefore come back to other relays within about the claim
//!   timeout, far inside the dedupe window, which must be longer (checked by [`Outbox::new`]).
//!
//! # Limits
//!
//! - The window is real: a second push more than `dedupe_window` after the first would store a
//!   second job. That takes a relay process frozen (suspended VM, stopped process) for the whole
//!   window between its last check and its push landing; keep the window long next to any such
//!   pause (the default is an hour, 120 claim timeouts).
//! - The target must keep what it acknowledged: a Redis that loses writes (no persistence, an
//!   asynchronous replica promoted) may lose the key, and a job, as it may lose any job.
//! - The key costs memory in the target for the window: in Redis one hash field and one sorted
//!   set member per relayed job (about 150 bytes), freed as the window ends.
//! - Jobs of the outbox cannot have unique keys of their own (a job has one key, and the outbox
//!   needs it): [`Outbox::push_in`] refuses them. Keep such uniqueness in the application's
//!   tables (a `UNIQUE` constraint written in the same transaction).
//! - Exactly once is about dispatch: a worker killed while it runs a job still runs it again,
//!   as with any dispatch (at least once per attempt).
//! - Relayed order follows the job ids (dispatch time) within a batch, but concurrent relays and
//!   retries reorder across batches, as concurrent dispatches would.
//! - Clocks of the application servers and relays should agree within minutes: the window is
//!   counted from the relay's clock and compared with the dispatch time.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orcs_core::{
    DispatchOptions, Error, Job, NewJob, Queue, Result, Unique, UniqueUntil, millis,
    validate_queue_name,
};
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Postgres, Row as _, Transaction};

/// The driver name in errors that come from the outbox's table.
const OUTBOX: &str = "outbox";

/// The prefix of the unique key every relayed job holds; the rest is the job's id.
pub const KEY_PREFIX: &str = "orcs-outbox:";

/// Where the outbox lives and how its relay behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxConfig {
    /// The table. Default: `orcs_outbox`.
    pub table: String,
    /// The schema of the table, created by [`Outbox::setup`] if missing. Default: none (the
    /// connections' `search_path` decides).
    pub schema: Option<String>,
    /// Rows per relay transaction. Default: 100.
    pub batch_size: usize,
    /// How long a relayed job's key refuses a second push of its row. Default: 1 hour.
    pub dedupe_window: Duration,
    /// The longest a relay holds its rows: a relay transaction idle for longer is ended by the
    /// server, and a relay gives up a batch it took longer ago. Default: 30 s.
    pub claim_timeout: Duration,
    /// How often [`Outbox::run_relay`] looks for rows without a notification (a backstop for
    /// notifications lost with a connection). Default: 1 s.
    pub poll_interval: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            table: "orcs_outbox".to_owned(),
            schema: None,
            batch_size: 100,
            dedupe_window: Duration::from_secs(3600),
            claim_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
        }
    }
}

impl OutboxConfig {
    /// The defaults: table `orcs_outbox` on the connections' `search_path`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Names the table.
    #[must_use]
    pub fn with_table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Keeps the table in `schema` (created by [`Outbox::setup`] if missing).
    #[must_use]
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Relays this many rows per transaction.
    #[must_use]
    pub fn with_batch_size(mut self, rows: usize) -> Self {
        self.batch_size = rows;
        self
    }

    /// Holds each relayed job's key this long.
    #[must_use]
    pub fn with_dedupe_window(mut self, window: Duration) -> Self {
        self.dedupe_window = window;
        self
    }

    /// Bounds how long a relay holds its rows.
    #[must_use]
    pub fn with_claim_timeout(mut self, timeout: Duration) -> Self {
        self.claim_timeout = timeout;
        self
    }

    /// Polls this often when no notification comes.
    #[must_use]
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    fn validate(&self) -> Result<()> {
        check_identifier("outbox table", &self.table)?;
        if let Some(schema) = &self.schema {
            check_identifier("outbox schema", schema)?;
        }
        if self.batch_size == 0 || self.batch_size > 1000 {
            return Err(Error::invalid(
                "outbox batch size",
                format!("{} rows; use 1 to 1000", self.batch_size),
            ));
        }
        if self.claim_timeout < Duration::from_secs(1) || self.poll_interval.is_zero() {
            return Err(Error::invalid(
                "outbox timing",
                "the claim timeout must be at least 1 s and the poll interval above 0",
            ));
        }
        // Rows of a dead relay come back after about the claim timeout; the key must still be
        // held then, with room for a slow push.
        if self.dedupe_window < self.claim_timeout * 10 {
            return Err(Error::invalid(
                "outbox dedupe window",
                format!(
                    "{:?} is shorter than 10 claim timeouts ({:?}): a row released by a dead \
                     relay could be pushed again after its key freed; lengthen the window or \
                     shorten the claim timeout",
                    self.dedupe_window, self.claim_timeout
                ),
            ));
        }
        Ok(())
    }
}

/// Table and schema names go into SQL text: plain identifiers only.
fn check_identifier(what: &'static str, name: &str) -> Result<()> {
    let mut chars = name.chars();
    let plain = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 63;
    if plain {
        Ok(())
    } else {
        Err(Error::invalid(
            what,
            format!(
                "{name:?} is not a plain identifier; use at most 63 ASCII letters, digits and \
                 '_', not starting with a digit"
            ),
        ))
    }
}

/// The SQL of one outbox, built once from its names.
#[derive(Debug)]
struct Statements {
    qualified: String,
    channel: String,
    insert: Arc<str>,
    take: Arc<str>,
    delete: Arc<str>,
    count: Arc<str>,
    claim_timeout: Arc<str>,
}

/// A PostgreSQL outbox relayed to a [`Queue`]; see the [module documentation](self) for the
/// guarantee and its limits. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    pool: PgPool,
    config: OutboxConfig,
    sql: Arc<Statements>,
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("table", &self.sql.qualified)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// An outbox on the application's pool. Call [`Outbox::setup`] once (at start-up) to
    /// create its table.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a table or schema that is not a plain identifier, a batch size
    /// outside 1 to 1000, or a dedupe window shorter than 10 claim timeouts.
    pub fn new(pool: PgPool, config: OutboxConfig) -> Result<Self> {
        config.validate()?;
        let qualified = match &config.schema {
            Some(schema) => format!("\"{schema}\".\"{}\"", config.table),
            None => format!("\"{}\"", config.table),
        };
        let t = &qualified;
        let sql = Statements {
            // One statement for any number of jobs; the NOTIFY is part of the transaction, so
            // relays hear of the rows at the commit and never for a rollback.
            insert: format!(
                "WITH added AS (INSERT INTO {t} (id, job) SELECT * FROM UNNEST($1::TEXT[], \
                 $2::TEXT[]) RETURNING 1) SELECT pg_notify($3, ''), (SELECT COUNT(*) FROM added)"
            )
            .into(),
            take: format!("SELECT id, job FROM {t} ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED")
                .into(),
            delete: format!("DELETE FROM {t} WHERE id = ANY($1::TEXT[])").into(),
            count: format!("SELECT COUNT(*) FROM {t}").into(),
            claim_timeout: format!(
                "SET LOCAL idle_in_transaction_session_timeout = {}",
                config.claim_timeout.as_millis()
            )
            .into(),
            // A spurious wake from a same-named table in another schema costs one empty relay.
            channel: format!("orcs_outbox_{}", config.table).chars().take(63).collect(),
            qualified,
        };
        Ok(Self { pool, config, sql: Arc::new(sql) })
    }

    /// The configuration.
    pub fn config(&self) -> &OutboxConfig {
        &self.config
    }

    /// Creates the schema (if configured) and the table if they are missing. Safe to call from
    /// several processes at once.
    ///
    /// # Errors
    /// [`Error::Backend`] if the database refuses (for one, a role that may not create them).
    pub async fn setup(&self) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        // Concurrent CREATE ... IF NOT EXISTS can still collide in the catalog: take turns.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('orcs_outbox_setup'))")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if let Some(schema) = &self.config.schema {
            sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"")))
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        // `job` is the NewJob as JSON: the outbox stores what a push takes, untouched.
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {} (id TEXT PRIMARY KEY, job TEXT NOT NULL, \
             created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            self.sql.qualified
        )))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    /// Writes `jobs` into the outbox inside the application's open transaction `tx`: they reach
    /// the queue if and only if `tx` commits, each exactly once. Build them with
    /// [`Queue::prepare`] or [`Queue::untyped_record`].
    ///
    /// `tx` must see the table: use the outbox's pool, or name the schema
    /// ([`OutboxConfig::with_schema`]).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a job with a unique key (the outbox gives every job its own) or a
    /// bad queue name, nothing written; [`Error::Backend`] when the insert fails (a job id
    /// already in the outbox, a missing table: run [`Outbox::setup`]), after which PostgreSQL
    /// has aborted the transaction: roll it back.
    pub async fn push_in(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        jobs: Vec<NewJob>,
    ) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let mut ids = Vec::with_capacity(jobs.len());
        let mut records = Vec::with_capacity(jobs.len());
        for job in &jobs {
            validate_queue_name(&job.queue)?;
            if let Some(unique) = &job.unique {
                return Err(Error::invalid(
                    "outbox job",
                    format!(
                        "job {} ({}) has the unique key {:?}, but the outbox gives every job a \
                         unique key of its own to relay it exactly once; dispatch it without a \
                         key (no DispatchOptions::unique, Job::unique returning None) and keep \
                         the uniqueness in your tables (a UNIQUE constraint in the same \
                         transaction), or dispatch it to the queue directly",
                        job.name, job.id, unique.key
                    ),
                ));
            }
            ids.push(job.id.clone());
            records.push(serde_json::to_string(job).map_err(Error::Serialization)?);
        }
        sqlx::query(AssertSqlSafe(self.sql.insert.clone()))
            .bind(ids)
            .bind(records)
            .bind(&self.sql.channel)
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// [`Queue::prepare`] then [`Outbox::push_in`] for one typed job; returns its id (the id the
    /// job has in the queue once relayed).
    ///
    /// # Errors
    /// As [`Queue::prepare`] and [`Outbox::push_in`].
    pub async fn dispatch_in<J: Job>(
        &self,
        queue: &Queue,
        tx: &mut Transaction<'_, Postgres>,
        job: &J,
        options: &DispatchOptions,
    ) -> Result<String> {
        let record = queue.prepare(job, options)?;
        let id = record.id.clone();
        self.push_in(tx, vec![record]).await?;
        Ok(id)
    }

    /// Rows waiting in the outbox (being relayed or not).
    ///
    /// # Errors
    /// [`Error::Backend`] if the query fails.
    pub async fn pending(&self) -> Result<u64> {
        let row = sqlx::query(AssertSqlSafe(self.sql.count.clone()))
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(u64::try_from(row.get::<i64, _>(0)).unwrap_or(0))
    }

    /// Relays the rows no other relay holds to `target`, batch after batch, until a batch comes
    /// back short; returns how many rows it relayed (and deleted). Rows whose job the target
    /// already had (a dead relay's push) count too: they are relayed, once.
    ///
    /// # Errors
    /// [`Error::Backend`] from PostgreSQL or the target (the current batch stays in the outbox
    /// for the next relay; what it pushed is deduplicated then); [`Error::Invalid`] for a row
    /// that is not a job record this orcs reads.
    pub async fn relay_once(&self, target: &Queue) -> Result<u64> {
        let mut total = 0;
        loop {
            let relayed = self.relay_batch(target).await?;
            total += relayed;
            if relayed < self.config.batch_size as u64 {
                return Ok(total);
            }
        }
    }

    async fn relay_batch(&self, target: &Queue) -> Result<u64> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        sqlx::query(AssertSqlSafe(self.sql.claim_timeout.clone()))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        // Counted from before the SELECT: the server's idle clock starts when it answers.
        let taken = Instant::now();
        let rows = sqlx::query(AssertSqlSafe(self.sql.take.clone()))
            .bind(i64::try_from(self.config.batch_size).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let now = target.now();
        let window = millis(self.config.dedupe_window);
        let mut ids = Vec::with_capacity(rows.len());
        let mut jobs = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.get(0);
            let mut job: NewJob = serde_json::from_str(row.get::<&str, _>(1)).map_err(|e| {
                Error::invalid(
                    "outbox row",
                    format!(
                        "row {id} of {} is not a job record this orcs reads ({e}); it was \
                         written by another program or another orcs version: relay it with \
                         that one, or delete the row",
                        self.sql.qualified
                    ),
                )
            })?;
            // The key is counted from the dispatch: lengthen it by the time the row waited so
            // that it holds for the whole window after this push.
            let waited = now.saturating_sub(job.dispatched_at).max(0);
            let period = u64::try_from(window.saturating_add(waited)).unwrap_or(u64::MAX);
            job.unique =
                Some(Unique::new(format!("{KEY_PREFIX}{}", job.id), UniqueUntil::Period(period)));
            ids.push(id);
            jobs.push(job);
        }
        // Past the claim timeout the server may have ended this transaction and handed the
        // rows to another relay, long ago: pushing now could land after that relay's key
        // freed. Give the batch up instead (nothing was pushed).
        if taken.elapsed() >= self.config.claim_timeout {
            return Err(Error::backend(
                OUTBOX,
                "the relay took longer than the claim timeout to read its batch; it was given up \
                 unpushed and will be relayed again",
            ));
        }
        // A job already there (a dead relay's push) answers as a duplicate: it is relayed.
        target.dispatch_records(jobs).await?;
        sqlx::query(AssertSqlSafe(self.sql.delete.clone()))
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(ids.len() as u64)
    }

    /// Relays until `shutdown` completes: at once, then whenever a transaction that wrote rows
    /// commits (`LISTEN`/`NOTIFY`), and every [`OutboxConfig::poll_interval`] in case a
    /// notification was lost. Transient errors (the database or the target unreachable) are
    /// logged and retried after the poll interval; returns the rows relayed.
    ///
    /// Run it in as many processes as you like: relays share the rows. The notifications come
    /// on one extra connection of its own, opened with the pool's options.
    ///
    /// # Errors
    /// A permanent error of [`Outbox::relay_once`] (a row it cannot read, a missing table, a
    /// target that refuses the jobs): relaying stops there, since the rows after it would wait
    /// anyway.
    pub async fn run_relay(
        &self,
        target: Queue,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<u64> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut listener = None;
        let mut total = 0;
        loop {
            if listener.is_none() {
                // Listen before relaying, so that no commit falls between the two unheard.
                listener = match self.listen().await {
                    Ok(listener) => Some(listener),
                    Err(e) => {
                        tracing::warn!(error = %e, "outbox relay cannot listen; polling only");
                        None
                    }
                };
            }
            let wait = self.config.poll_interval;
            match self.relay_once(&target).await {
                Ok(relayed) => total += relayed,
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "outbox relay failed; retrying");
                    // No wake by notification: wait out the outage.
                    let pause = tokio::time::sleep(wait);
                    tokio::select! {
                        () = &mut shutdown => return Ok(total),
                        () = pause => continue,
                    }
                }
                Err(e) => return Err(e),
            }
            if let Some(active) = &mut listener {
                // Notifications of rows this pass already relayed.
                while active.next_buffered().is_some() {}
            }
            let heard = async {
                match &mut listener {
                    // `None`: the connection dropped (and reconnects); rows may have come unheard.
                    Some(active) => active.try_recv().await.map(drop),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => return Ok(total),
                heard = heard => {
                    if let Err(e) = heard {
                        tracing::warn!(error = %e, "outbox relay stopped listening; polling");
                        listener = None;
                    }
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn listen(&self) -> Result<PgListener> {
        // Of its own, not the application's pool, which it would hold for good.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with((*self.pool.connect_options()).clone());
        let mut listener = PgListener::connect_with(&pool).await.map_err(backend)?;
        listener.listen(&self.sql.channel).await.map_err(backend)?;
        Ok(listener)
    }
}

/// An error of the outbox's database work, transient unless it repeats until someone acts.
fn backend(e: sqlx::Error) -> Error {
    let transient = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // Connection trouble (08), serialization or deadlock (40), shutdown and the idle
        // timeout ending a slow relay (57P0x, 25P03), too many connections (53300).
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || code.starts_with("40")
                || code.starts_with("57P0")
                || code == "25P03"
                || code == "53300"
        }),
        _ => false,
    };
    if transient { Error::backend(OUTBOX, e) } else { Error::backend_permanent(OUTBOX, e) }
}
