//! Choosing and connecting the driver named by the configuration: the one place that knows every
//! driver crate. Each backend is behind a cargo feature of the same name; the driver's own
//! settings come from [`Config::redis_config`] and [`Config::database_config`].

use std::future::Future;

use orcs_core::{Queue, Result};
use orcs_memory::MemoryDriver;

pub use crate::config::REDIS_PREFIX;
use crate::config::{Config, DriverKind};

/// The Redis URL to use: `REDIS_URL` or the config file's, else
/// [`crate::config::DEFAULT_REDIS_URL`].
pub fn redis_url(config: &Config) -> &str {
    config.redis_url()
}

/// The database URL to use: `DATABASE_URL` or the config file's, else
/// [`crate::config::DEFAULT_DATABASE_URL`].
pub fn database_url(config: &Config) -> &str {
    config.database_url()
}

/// Connects the driver that `config.driver` names and returns a [`Queue`] on it, with the
/// configured default queue and payload limit.
///
/// # Errors
/// [`orcs_core::Error::Config`] for a bad URL or a driver not compiled into this binary; a backend error if
/// the backend cannot be reached.
pub async fn connect(config: &Config) -> Result<Queue> {
    let queue = match config.driver {
        DriverKind::Memory => Queue::new(MemoryDriver::new()),
        DriverKind::Redis => connect_redis(config).await?,
        DriverKind::Database => connect_database(config).await?,
    };
    queue
        .with_max_payload_bytes(config.max_payload_bytes)
        .with_default_queue(config.default_queue.clone())
}

/// The Redis key prefix from `REDIS_PREFIX` (as in Laravel), if set: separates several
/// applications, or test runs, on one Redis. [`Config::load`] reads it into
/// [`Config::redis_prefix`], which [`connect`] uses.
pub fn redis_prefix() -> Option<String> {
    std::env::var(REDIS_PREFIX).ok().map(|p| p.trim().to_owned()).filter(|p| !p.is_empty())
}

#[cfg(feature = "redis")]
async fn connect_redis(config: &Config) -> Result<Queue> {
    Ok(Queue::new(orcs_redis::RedisDriver::connect(config.redis_config()?).await?))
}

#[cfg(not(feature = "redis"))]
async fn connect_redis(_config: &Config) -> Result<Queue> {
    Err(not_built("redis"))
}

#[cfg(feature = "database")]
async fn connect_database(config: &Config) -> Result<Queue> {
    Ok(Queue::new(orcs_database::DatabaseDriver::connect_with(config.database_config()).await?))
}

#[cfg(not(feature = "database"))]
async fn connect_database(_config: &Config) -> Result<Queue> {
    Err(not_built("database"))
}

#[cfg(any(not(feature = "redis"), not(feature = "database")))]
fn not_built(driver: &str) -> orcs_core::Error {
    orcs_core::Error::config(
        "QUEUE_DRIVER",
        format!(
            "the {driver} driver is not compiled into this binary; rebuild orcs-cli with `--features {driver}` or choose another driver"
        ),
    )
}

/// `Queue::from_env()`: connects the way the `orcs` command line does.
///
/// Reads `.env`, `config/queue.toml` and the environment (`QUEUE_DRIVER`, `QUEUE_DEFAULT`,
/// `REDIS_URL`, `DATABASE_URL`), in that order of strength, then [`connect`]s.
pub trait QueueFromEnv: Sized {
    /// Connects the configured driver.
    ///
    /// # Errors
    /// [`orcs_core::Error::Config`] for a bad setting, or a backend error if the backend cannot be reached.
    fn from_env() -> impl Future<Output = Result<Self>> + Send;
}

impl QueueFromEnv for Queue {
    async fn from_env() -> Result<Self> {
        let config = Config::load(None)?;
        connect(&config).await
    }
}
