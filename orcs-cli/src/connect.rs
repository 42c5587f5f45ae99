//! Choosing and connecting the driver named by the configuration: the one place that knows every
//! driver crate. Each backend is behind a cargo feature of the same name.

use std::future::Future;

use orcs_core::config::{DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL};
use orcs_core::{Config, DriverKind, Error, Queue, Result};
use orcs_memory::MemoryDriver;

/// The Redis URL to use: `REDIS_URL` or the config file's, else [`DEFAULT_REDIS_URL`].
pub fn redis_url(config: &Config) -> &str {
    config.redis_url.as_deref().unwrap_or(DEFAULT_REDIS_URL)
}

/// The database URL to use: `DATABASE_URL` or the config file's, else [`DEFAULT_DATABASE_URL`].
pub fn database_url(config: &Config) -> &str {
    config.database_url.as_deref().unwrap_or(DEFAULT_DATABASE_URL)
}

/// Connects the driver that `config.driver` names and returns a [`Queue`] on it, with the
/// configured default queue. The Redis driver also takes its key prefix from `REDIS_PREFIX`.
///
/// # Errors
/// [`Error::Config`] for a bad URL or a driver not compiled into this binary; a backend error if
/// the backend cannot be reached.
pub async fn connect(config: &Config) -> Result<Queue> {
    let queue = match config.driver {
        DriverKind::Memory => Queue::new(MemoryDriver::new()),
        DriverKind::Redis => connect_redis(redis_url(config), config).await?,
        DriverKind::Database => connect_database(config).await?,
        other => {
            return Err(Error::config(
                "QUEUE_DRIVER",
                format!(
                    "driver {other} is not supported by this build of orcs-cli; use one of: {}",
                    DriverKind::NAMES
                ),
            ));
        }
    };
    queue
        .with_max_payload_bytes(config.max_payload_bytes)
        .with_default_queue(config.default_queue.clone())
}

/// The Redis key prefix from `REDIS_PREFIX` (as in Laravel), if set: separates several
/// applications, or test runs, on one Redis.
pub fn redis_prefix() -> Option<String> {
    std::env::var(REDIS_PREFIX).ok().map(|p| p.trim().to_owned()).filter(|p| !p.is_empty())
}

/// The variable that sets the Redis key prefix (default `orcs`).
pub const REDIS_PREFIX: &str = "REDIS_PREFIX";

#[cfg(feature = "redis")]
async fn connect_redis(url: &str, settings: &Config) -> Result<Queue> {
    let mut config = orcs_redis::RedisConfig::from_url(url)?;
    if let Some(prefix) = redis_prefix() {
        config = config.with_prefix(prefix);
    }
    if let Some(path) = &settings.redis_ca_cert {
        config = config.with_ca_cert_file(path)?;
    }
    Ok(Queue::new(orcs_redis::RedisDriver::connect(config).await?))
}

#[cfg(not(feature = "redis"))]
async fn connect_redis(_url: &str, _settings: &Config) -> Result<Queue> {
    Err(not_built("redis"))
}

#[cfg(feature = "database")]
async fn connect_database(settings: &Config) -> Result<Queue> {
    let mut config = orcs_database::DatabaseConfig::new(database_url(settings));
    if let Some(table) = &settings.database_table {
        // Counters follow the jobs table, so that two applications with their own tables in one
        // database keep their own counts.
        config = config.with_jobs_table(table).with_counters_table(format!("{table}_counters"));
    }
    if let Some(table) = &settings.database_failed_table {
        config = config.with_failed_table(table);
    }
    Ok(Queue::new(orcs_database::DatabaseDriver::connect_with(config).await?))
}

#[cfg(not(feature = "database"))]
async fn connect_database(_settings: &Config) -> Result<Queue> {
    Err(not_built("database"))
}

#[cfg(any(not(feature = "redis"), not(feature = "database")))]
fn not_built(driver: &str) -> Error {
    Error::config(
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
    /// [`Error::Config`] for a bad setting, or a backend error if the backend cannot be reached.
    fn from_env() -> impl Future<Output = Result<Self>> + Send;
}

impl QueueFromEnv for Queue {
    async fn from_env() -> Result<Self> {
        let config = Config::load(None)?;
        connect(&config).await
    }
}
