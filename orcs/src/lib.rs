#![doc = include_str!("../README.md")]
//!
//! # What is where
//!
//! - The core API (jobs, [`Queue`], [`Registry`], [`Worker`], [`DispatchOptions`], the
//!   [`Driver`] contract, middleware) is orcs-core's, re-exported here whole.
//! - [`connect`], [`from_env`] and [`config`]: choosing and connecting a driver, also as
//!   `Queue::connect` / `Queue::from_env` through [`prelude::QueueConnect`].
//! - The drivers: [`memory`] always, `redis` (feature `redis`), `database` (features `sqlite`,
//!   `postgres`), each the driver crate itself.
//! - [`outbox`] (feature `postgres`): jobs written in a PostgreSQL transaction and relayed,
//!   each exactly once, to a queue elsewhere (Redis).

mod connect;

pub mod config;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "postgres")]
pub mod outbox;

pub use crate::config::{Config, DriverKind};
pub use crate::connect::{QueueConnect, connect, from_env};
pub use orcs_core::*;

/// The memory driver: jobs in this process, for development and tests (`orcs-memory`).
pub use orcs_memory as memory;

/// The Redis driver (`orcs-redis`): [`redis::RedisDriver`], [`redis::RedisConfig`].
#[cfg(feature = "redis")]
pub use orcs_redis as redis;

/// The database driver on SQLite or PostgreSQL (`orcs-database`): [`database::DatabaseDriver`],
/// [`database::DatabaseConfig`].
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use orcs_database as database;

/// The sqlx the database driver is built on: use it for the transactions you dispatch in, so
/// that your `Transaction` and the driver's are the same type.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use sqlx;

/// serde, for `#[derive(Serialize, Deserialize)]` on jobs without a dependency of your own:
/// add `#[serde(crate = "orcs::serde")]` to the type.
pub use serde;

/// serde_json, for [`JobContext::progress`] values.
pub use serde_json;

/// `use orcs::prelude::*;`: what a job, a dispatch and a worker need, and
/// `Queue::connect` / `Queue::from_env` ([`QueueConnect`]).
pub mod prelude {
    pub use crate::config::Config;
    pub use crate::connect::QueueConnect;
    pub use orcs_core::{
        DispatchOptions, Job, JobContext, JobError, Queue, Registry, Worker, WorkerSummary,
    };
}

/// The repository's README: its tour is compiled and run here too, so that it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct RootReadme;
