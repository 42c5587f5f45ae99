#![doc = include_str!("../README.md")]

mod common;
mod config;
mod group;
mod ops;
#[cfg(test)]
mod plan_tests;
mod postgres;
mod sql;
mod sqlite;
#[cfg(test)]
mod upgrade_tests;
mod workflow;

use std::sync::Arc;
use std::time::Duration;

use orcs_core::{
    Admin, BatchInfo, CancelOutcome, Capabilities, Claim, ClaimRequest, Driver, FailedJob,
    FailedQuery, Fire, JobInfo, Lease, ListRequest, Millis, NewBatch, NewJob, Prune, PushOutcome,
    QueueLimits, QueueStats, Result, ScheduleRecord, Settle, Throughput, Touch, WorkerInfo,
    async_trait,
};

use crate::common::Shared;
pub use crate::config::DatabaseConfig;

/// Jobs in a SQLite file or a PostgreSQL database. Clones share the connections.
#[derive(Debug, Clone)]
pub struct DatabaseDriver {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: DatabaseConfig,
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Sqlite(sqlite::Store),
    Postgres(postgres::Store),
}

/// Runs the same call on whichever backend the driver has.
macro_rules! on_backend {
    ($self:ident, $store:ident => $call:expr) => {
        match &$self.inner.backend {
            Backend::Sqlite($store) => $call,
            Backend::Postgres($store) => $call,
        }
    };
}

impl DatabaseDriver {
    /// Connects to `url` with the default table names, creating the tables if they are missing.
    ///
    /// `sqlite://PATH` opens (or creates, with its directory) a SQLite file; `postgres://` and
    /// `postgresql://` connect to PostgreSQL.
    ///
    /// # Errors
    /// [`orcs_core::Error::Config`] for a URL that names no supported database;
    /// [`orcs_core::Error::Backend`] when the database cannot be reached or set up.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(DatabaseConfig::new(url)).await
    }

    /// Connects as [`DatabaseDriver::connect`] does, with the given table names.
    ///
    /// # Errors
    /// As [`DatabaseDriver::connect`], and [`orcs_core::Error::Invalid`] for a table name that
    /// is not a plain identifier.
    pub async fn connect_with(config: DatabaseConfig) -> Result<Self> {
        let kind = config.backend()?;
        config.validate(kind)?;
        let shared = Arc::new(Shared::default());
        let backend = match kind {
            config::Backend::Sqlite => {
                Backend::Sqlite(sqlite::Store::connect(&config, shared).await?)
            }
            config::Backend::Postgres => {
                Backend::Postgres(postgres::Store::connect(&config, shared).await?)
            }
        };
        Ok(Self { inner: Arc::new(Inner { config, backend }) })
    }

    /// Builds the driver on an application's PostgreSQL pool, setting up the tables of
    /// `config` (in its [`DatabaseConfig::schema`], created if missing); `config.url` is not
    /// used.
    ///
    /// The driver takes connections from the pool as it needs them and changes none of their
    /// settings: a claim, which wants `enable_bitmapscan = off` (see the README), sets it with
    /// `SET LOCAL` in a transaction of its own. Idle workers listen for new jobs on one extra
    /// connection of the driver's own, opened with the pool's connect options.
    ///
    /// # Errors
    /// [`orcs_core::Error::Invalid`] for a table or schema name that is not a plain identifier;
    /// [`orcs_core::Error::Backend`] when the tables cannot be set up (for one, a schema that
    /// is missing and that this role may not create); [`orcs_core::Error::Version`] for tables
    /// of another application or a newer orcs.
    pub async fn from_pg_pool(pool: sqlx::PgPool, config: DatabaseConfig) -> Result<Self> {
        config.validate(config::Backend::Postgres)?;
        let store = postgres::Store::on_pool(pool, &config, Arc::new(Shared::default())).await?;
        Ok(Self { inner: Arc::new(Inner { config, backend: Backend::Postgres(store) }) })
    }

    /// Builds the driver on an application's SQLite pool, setting up the tables of `config`
    /// (SQLite has no schemas: [`DatabaseConfig::with_table_prefix`] keeps them apart);
    /// `config.url` is not used.
    ///
    /// Reads use the pool; writes go through one connection of the driver's own, opened with
    /// the pool's connect options plus a busy timeout, so that this process's writers take
    /// turns. The file must be in WAL mode (open the pool with
    /// `SqliteConnectOptions::journal_mode(SqliteJournalMode::Wal)`): the driver does not switch
    /// a file the application uses.
    ///
    /// # Errors
    /// As [`DatabaseDriver::from_pg_pool`], and [`orcs_core::Error::Config`] for a file not in
    /// WAL mode, an in-memory database or a read-only file.
    pub async fn from_sqlite_pool(pool: sqlx::SqlitePool, config: DatabaseConfig) -> Result<Self> {
        config.validate(config::Backend::Sqlite)?;
        let store = sqlite::Store::on_pool(pool, &config, Arc::new(Shared::default())).await?;
        Ok(Self { inner: Arc::new(Inner { config, backend: Backend::Sqlite(store) }) })
    }

    /// Stores `jobs` inside the application's open transaction `tx`, so that they are
    /// dispatched if and only if it commits: one outcome per job, as [`Driver::push`] answers
    /// (a duplicate id, or a unique key another job of the queue holds, stores nothing and
    /// names the holder).
    ///
    /// Build the records with [`orcs_core::Queue::prepare`] (typed jobs) or
    /// [`orcs_core::Queue::untyped_record`]. Idle workers hear of the jobs when the transaction
    /// commits (PostgreSQL `NOTIFY` is sent inside it; SQLite workers poll), never if it rolls
    /// back.
    ///
    /// The rows and unique keys it writes stay locked until `tx` ends, so a concurrent dispatch
    /// with the same key waits for it: keep the transaction short. `tx` must see the driver's
    /// tables: on PostgreSQL, use the driver's pool, or name the schema
    /// ([`DatabaseConfig::with_schema`]); on SQLite, begin it with `BEGIN IMMEDIATE`
    /// (`pool.begin_with("BEGIN IMMEDIATE")`) so that it never has to upgrade a read lock, which
    /// fails at once when another connection wrote.
    ///
    /// # Errors
    /// [`orcs_core::Error::Invalid`] for a transaction on the other backend than the driver's;
    /// [`orcs_core::Error::Backend`] when a statement fails (the transaction is then aborted on
    /// PostgreSQL: roll it back).
    pub async fn push_in<T: InTransaction>(
        &self,
        tx: &mut T,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<PushOutcome>> {
        use private::Target;
        match (&self.inner.backend, tx.target()) {
            (Backend::Postgres(store), Target::Postgres(conn)) => store.push_in(conn, &jobs).await,
            (Backend::Sqlite(store), Target::Sqlite(conn)) => store.push_in(conn, &jobs).await,
            (backend, target) => Err(wrong_transaction(backend, &target)),
        }
    }

    /// Stores a batch and its children inside the application's open transaction `tx`, as
    /// [`Driver::push_batch`] does in one of its own: the batch exists, its children are
    /// dispatched and counted, if and only if `tx` commits. Build the children and callbacks
    /// with [`orcs_core::Queue::prepare`] and the batch with [`NewBatch::new`] (a new ULID from
    /// [`orcs_core::new_job_id`], `now`); a child's [`NewJob::batch`] may be left unset.
    ///
    /// What [`DatabaseDriver::push_in`] says of the transaction holds here too. A batch id that
    /// exists is refused before anything is written.
    ///
    /// # Errors
    /// [`orcs_core::Error::Invalid`] for a batch id that exists, a child that names another
    /// batch, or a transaction on the other backend than the driver's;
    /// [`orcs_core::Error::Backend`] when a statement fails (roll the transaction back).
    pub async fn push_batch_in<T: InTransaction>(
        &self,
        tx: &mut T,
        batch: NewBatch,
        children: Vec<NewJob>,
    ) -> Result<Vec<PushOutcome>> {
        use private::Target;
        match (&self.inner.backend, tx.target()) {
            (Backend::Postgres(store), Target::Postgres(conn)) => {
                store.push_batch_in(conn, &batch, children).await
            }
            (Backend::Sqlite(store), Target::Sqlite(conn)) => {
                store.push_batch_in(conn, &batch, children).await
            }
            (backend, target) => Err(wrong_transaction(backend, &target)),
        }
    }

    /// `sqlite` or `postgres`.
    pub fn backend_name(&self) -> &'static str {
        match self.inner.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The configuration the driver was made with.
    pub fn config(&self) -> &DatabaseConfig {
        &self.inner.config
    }
}

/// The error for a transaction of the other database than the driver's.
fn wrong_transaction(backend: &Backend, target: &private::Target<'_>) -> orcs_core::Error {
    orcs_core::Error::invalid(
        "transaction",
        format!(
            "this driver keeps its jobs in {}, so a {} transaction cannot store them: build the \
             driver on the application's pool ({})",
            match backend {
                Backend::Sqlite(_) => "SQLite",
                Backend::Postgres(_) => "PostgreSQL",
            },
            target.name(),
            target.constructor(),
        ),
    )
}

/// An application's open sqlx transaction that [`DatabaseDriver::push_in`] stores jobs in:
/// `sqlx::Transaction<'_, sqlx::Postgres>` or `sqlx::Transaction<'_, sqlx::Sqlite>`.
pub trait InTransaction: Send + private::Sealed {}

impl InTransaction for sqlx::Transaction<'_, sqlx::Postgres> {}
impl InTransaction for sqlx::Transaction<'_, sqlx::Sqlite> {}

/// Sealed: only the two transaction types implement [`InTransaction`], so that a transaction of
/// another database is refused when compiling.
mod private {
    /// The connection under a transaction.
    #[allow(unreachable_pub, missing_debug_implementations)] // Reachable only through the seal.
    pub enum Target<'a> {
        Postgres(&'a mut sqlx::PgConnection),
        Sqlite(&'a mut sqlx::SqliteConnection),
    }

    impl Target<'_> {
        pub(crate) fn name(&self) -> &'static str {
            match self {
                Self::Postgres(_) => "PostgreSQL",
                Self::Sqlite(_) => "SQLite",
            }
        }

        pub(crate) fn constructor(&self) -> &'static str {
            match self {
                Self::Postgres(_) => "DatabaseDriver::from_pg_pool",
                Self::Sqlite(_) => "DatabaseDriver::from_sqlite_pool",
            }
        }
    }

    #[allow(unreachable_pub)] // Reachable only as the supertrait of `InTransaction`.
    pub trait Sealed {
        fn target(&mut self) -> Target<'_>;
    }

    impl Sealed for sqlx::Transaction<'_, sqlx::Postgres> {
        fn target(&mut self) -> Target<'_> {
            Target::Postgres(self)
        }
    }

    impl Sealed for sqlx::Transaction<'_, sqlx::Sqlite> {
        fn target(&mut self) -> Target<'_> {
            Target::Sqlite(self)
        }
    }
}

#[async_trait]
impl Driver for DatabaseDriver {
    fn name(&self) -> &'static str {
        common::DRIVER
    }

    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::default();
        capabilities.durable = true;
        // SQLite: the processes of one machine sharing the file; PostgreSQL: any number.
        capabilities.shared = true;
        capabilities.cross_queue_atomic = true;
        // A push is one transaction, whatever its size.
        capabilities.atomic_push_limit = None;
        capabilities.server_clock = matches!(self.inner.backend, Backend::Postgres(_));
        capabilities
    }

    async fn push(&self, jobs: Vec<NewJob>) -> Result<Vec<PushOutcome>> {
        on_backend!(self, s => s.push(jobs).await)
    }

    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim> {
        on_backend!(self, s => s.claim(req).await)
    }

    async fn settle(&self, batch: &[Settle], now: Millis) -> Vec<Result<()>> {
        if batch.is_empty() {
            return Vec::new();
        }
        match on_backend!(self, s => s.settle(batch, now).await) {
            Ok(results) => results,
            Err(e) => batch.iter().map(|_| Err(e.for_batch_item(common::DRIVER))).collect(),
        }
    }

    async fn touch(&self, running: &[Touch], now: Millis) -> Result<Vec<String>> {
        on_backend!(self, s => s.touch(running, now).await)
    }

    async fn extend(&self, lease: &Lease, until: Millis, _now: Millis) -> Result<Lease> {
        on_backend!(self, s => s.extend(lease, until).await)
    }

    async fn recover(&self, queues: &[String], now: Millis) -> Result<u64> {
        on_backend!(self, s => s.recover(queues, now).await)
    }

    async fn wait(&self, queues: &[String], now: Millis, timeout: Duration) -> Result<()> {
        on_backend!(self, s => s.wait(queues, now, timeout).await)
    }

    async fn warm(&self, queues: &[String]) -> Result<()> {
        match &self.inner.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(s) => s.warm(queues).await,
        }
    }

    async fn server_time(&self) -> Result<Option<Millis>> {
        match &self.inner.backend {
            Backend::Sqlite(_) => Ok(None),
            Backend::Postgres(s) => s.server_time().await,
        }
    }

    async fn push_batch(&self, batch: NewBatch, children: Vec<NewJob>) -> Result<Vec<PushOutcome>> {
        on_backend!(self, s => s.push_batch(&batch, children).await)
    }

    async fn fire_schedule(&self, fire: &Fire, now: Millis) -> Result<bool> {
        on_backend!(self, s => s.fire_schedule(fire, now).await)
    }
}

#[async_trait]
impl Admin for DatabaseDriver {
    async fn stats(&self, queue: &str, now: Millis) -> Result<QueueStats> {
        on_backend!(self, s => s.stats(queue, now).await)
    }

    async fn queues(&self) -> Result<Vec<String>> {
        on_backend!(self, s => s.queues().await)
    }

    async fn get(&self, id: &str, now: Millis) -> Result<Option<JobInfo>> {
        on_backend!(self, s => s.get(id, now).await)
    }

    async fn list(&self, req: &ListRequest, now: Millis) -> Result<Vec<JobInfo>> {
        on_backend!(self, s => s.list(req, now).await)
    }

    async fn clear(&self, queue: &str, now: Millis) -> Result<u64> {
        on_backend!(self, s => s.clear(queue, now).await)
    }

    async fn failed(&self, query: &FailedQuery) -> Result<Vec<FailedJob>> {
        on_backend!(self, s => s.failed(query).await)
    }

    async fn retry_failed(&self, id: &str, now: Millis) -> Result<()> {
        on_backend!(self, s => s.retry_failed(id, now).await)
    }

    async fn forget_failed(&self, id: &str) -> Result<()> {
        on_backend!(self, s => s.forget_failed(id).await)
    }

    async fn flush_failed(&self) -> Result<u64> {
        on_backend!(self, s => s.flush_failed().await)
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        on_backend!(self, s => s.set_paused(queue, paused).await)
    }

    async fn set_limits(&self, queue: &str, limits: &QueueLimits) -> Result<()> {
        on_backend!(self, s => s.set_limits(queue, limits).await)
    }

    async fn cancel(&self, id: &str, now: Millis) -> Result<CancelOutcome> {
        on_backend!(self, s => s.cancel(id, now).await)
    }

    async fn forget_queue(&self, queue: &str) -> Result<bool> {
        on_backend!(self, s => s.forget_queue(queue).await)
    }

    async fn batch(&self, id: &str) -> Result<Option<BatchInfo>> {
        on_backend!(self, s => s.batch(id).await)
    }

    async fn cancel_batch(&self, id: &str, now: Millis) -> Result<BatchInfo> {
        on_backend!(self, s => s.cancel_batch(id, now).await)
    }

    async fn register_schedule(&self, record: &ScheduleRecord) -> Result<ScheduleRecord> {
        on_backend!(self, s => s.register_schedule(record).await)
    }

    async fn schedules(&self) -> Result<Vec<ScheduleRecord>> {
        on_backend!(self, s => s.schedules().await)
    }

    async fn forget_schedule(&self, name: &str) -> Result<bool> {
        on_backend!(self, s => s.forget_schedule(name).await)
    }

    async fn heartbeat(
        &self,
        worker: &WorkerInfo,
        ended: &[Throughput],
        ttl_ms: u64,
        now: Millis,
    ) -> Result<()> {
        on_backend!(self, s => s.heartbeat(worker, ended, ttl_ms, now).await)
    }

    async fn workers(&self, now: Millis) -> Result<Vec<WorkerInfo>> {
        on_backend!(self, s => s.workers(now).await)
    }

    async fn forget_worker(&self, id: &str) -> Result<bool> {
        on_backend!(self, s => s.forget_worker(id).await)
    }

    async fn throughput(&self, queue: Option<&str>, since: Millis) -> Result<Vec<Throughput>> {
        on_backend!(self, s => s.throughput(queue, since).await)
    }

    async fn prune_failed(&self, prune: &Prune) -> Result<u64> {
        on_backend!(self, s => s.prune_failed(prune).await)
    }
}
