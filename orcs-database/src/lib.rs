#![doc = include_str!("../README.md")]

mod common;
mod config;
mod postgres;
mod sql;
mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use orcs_core::{
    Admin, CancelOutcome, Capabilities, Claim, ClaimRequest, Driver, FailedJob, FailedQuery,
    JobInfo, Lease, ListRequest, Millis, NewJob, PushOutcome, QueueLimits, QueueStats, Result,
    Settle, Touch, async_trait,
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
        config.validate_tables()?;
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

    async fn server_time(&self) -> Result<Option<Millis>> {
        match &self.inner.backend {
            Backend::Sqlite(_) => Ok(None),
            Backend::Postgres(s) => s.server_time().await,
        }
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

    async fn clear(&self, queue: &str, _now: Millis) -> Result<u64> {
        on_backend!(self, s => s.clear(queue).await)
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
}
