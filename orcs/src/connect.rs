//! Connecting a [`Queue`]: by URL ([`connect`]), by the environment ([`from_env`]) or by a
//! resolved [`Config`] ([`Config::connect`]). This is the one place that knows every driver
//! crate; each is behind the cargo feature of its name.

use std::future::Future;

use orcs_core::{Error, Queue, Result};
use orcs_memory::MemoryDriver;

use crate::config::{Config, DriverKind};

/// The setting named in errors about a URL given to [`connect`].
const URL_KEY: &str = "queue URL";

/// The schemes [`connect`] accepts, for error messages.
const SCHEMES: &str = "memory, redis://, rediss://, redis+cluster://, sqlite://, postgres:// \
     (postgresql://)";

/// Which driver a URL names, by its scheme.
fn driver_of(url: &str) -> Result<DriverKind> {
    let url = url.trim();
    if url.eq_ignore_ascii_case("memory") {
        return Ok(DriverKind::Memory);
    }
    // Only the scheme goes into messages: the rest may hold a password.
    let Some((scheme, _)) = url.split_once(':') else {
        return Err(Error::config(
            URL_KEY,
            format!("the URL has no scheme; use one of: {SCHEMES}"),
        ));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "memory" => Ok(DriverKind::Memory),
        "redis" | "rediss" | "redis+cluster" | "rediss+cluster" | "redis+unix" | "unix" => {
            Ok(DriverKind::Redis)
        }
        "sqlite" | "postgres" | "postgresql" => Ok(DriverKind::Database),
        other => Err(Error::config(
            URL_KEY,
            format!("unsupported scheme `{other}:`; use one of: {SCHEMES}"),
        )),
    }
}

/// Connects the driver that `url`'s scheme names and returns a [`Queue`] on it:
///
/// | URL | driver | feature |
/// |---|---|---|
/// | `memory` | in this process's memory | always |
/// | `redis://host:6379/0`, `redis+cluster://h1:7000,h2:7001` | Redis | `redis` |
/// | `rediss://host:6380` | Redis over TLS | `tls` |
/// | `sqlite://storage/queue.db` | SQLite file | `sqlite` |
/// | `postgres://user@host/db`, `postgresql://...` | PostgreSQL | `postgres` |
///
/// The database driver creates its tables if they are missing. For the default queue, the
/// payload limit or the tables, configure the queue ([`Queue::with_default_queue`]) or use
/// [`Config`] and [`Config::connect`].
///
/// # Errors
/// [`Error::Config`] for an unknown scheme, a malformed URL (never showing its password) or a
/// driver whose feature is off (naming the feature to enable); a backend error if the backend
/// cannot be reached.
pub async fn connect(url: &str) -> Result<Queue> {
    match driver_of(url)? {
        DriverKind::Memory => Ok(Queue::new(MemoryDriver::new())),
        DriverKind::Redis => connect_redis(url, None).await,
        DriverKind::Database => connect_database(url, None).await,
    }
}

/// Reads `.env`, `config/queue.toml` and the environment ([`Config::load`]), then connects the
/// driver `QUEUE_DRIVER` names ([`Config::connect`]).
///
/// # Errors
/// [`Error::Config`] naming the variable or key with a wrong value, or as [`connect`].
pub async fn from_env() -> Result<Queue> {
    Config::load(None)?.connect().await
}

impl Config {
    /// Connects the driver that [`Config::driver`] names, with its URL and settings, and returns
    /// a [`Queue`] on it with the configured default queue and payload limit.
    ///
    /// # Errors
    /// As [`connect`], with the variable, config-file key or flag that held a setting named in
    /// errors about it: an [`Error::Config`] from the driver is keyed `REDIS_URL`,
    /// `REDIS_CA_CERT`, `DATABASE_URL` or `config/queue.toml: redis.url` (...) instead of the
    /// driver's "the Redis URL"; a backend error whose advice mentions the URL ends with `the
    /// Redis URL came from REDIS_URL` (see [`Config::set_origin`]).
    pub async fn connect(&self) -> Result<Queue> {
        let queue = match self.driver {
            DriverKind::Memory => Queue::new(MemoryDriver::new()),
            DriverKind::Redis => connect_redis(self.redis_url(), Some(self)).await?,
            DriverKind::Database => connect_database(self.database_url(), Some(self)).await?,
        };
        queue
            .with_max_payload_bytes(self.max_payload_bytes)
            .with_default_queue(self.default_queue.clone())
    }
}

#[cfg(feature = "redis")]
async fn connect_redis(url: &str, config: Option<&Config>) -> Result<Queue> {
    let driver = match config {
        Some(config) => orcs_redis::RedisDriver::connect(config.redis_config()?)
            .await
            .map_err(|e| config.name_origins(e))?,
        None => orcs_redis::RedisDriver::connect(orcs_redis::RedisConfig::from_url(url)?).await?,
    };
    Ok(Queue::new(driver))
}

#[cfg(not(feature = "redis"))]
async fn connect_redis(_url: &str, _config: Option<&Config>) -> Result<Queue> {
    Err(not_built("redis", "redis"))
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
async fn connect_database(url: &str, config: Option<&Config>) -> Result<Queue> {
    let driver = match config {
        Some(config) => orcs_database::DatabaseDriver::connect_with(config.database_config())
            .await
            .map_err(|e| config.name_origins(e))?,
        None => {
            orcs_database::DatabaseDriver::connect_with(orcs_database::DatabaseConfig::new(url))
                .await?
        }
    };
    Ok(Queue::new(driver))
}

#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
async fn connect_database(url: &str, _config: Option<&Config>) -> Result<Queue> {
    let feature = if url.trim_start().to_ascii_lowercase().starts_with("sqlite") {
        "sqlite"
    } else {
        "postgres"
    };
    Err(not_built("database", feature))
}

#[cfg(any(not(feature = "redis"), not(any(feature = "sqlite", feature = "postgres"))))]
fn not_built(driver: &str, feature: &str) -> Error {
    Error::config(
        "orcs features",
        format!(
            "the {driver} driver is not compiled in; enable the `{feature}` feature of orcs \
             (orcs = {{ version = \"{version}\", features = [\"{feature}\"] }} in Cargo.toml) \
             or choose another driver",
            version = env!("CARGO_PKG_VERSION"),
        ),
    )
}

/// `Queue::connect(url)`, `Queue::from_env()` and `Queue::from_config(&config)`: [`connect`],
/// [`from_env`] and [`Config::connect`] as associated functions of [`Queue`] (which is
/// orcs-core's type, hence a trait). In [`crate::prelude`].
pub trait QueueConnect: Sized {
    /// As [`connect`].
    ///
    /// # Errors
    /// As [`connect`].
    fn connect(url: &str) -> impl Future<Output = Result<Self>> + Send;

    /// As [`from_env`].
    ///
    /// # Errors
    /// As [`from_env`].
    fn from_env() -> impl Future<Output = Result<Self>> + Send;

    /// As [`Config::connect`].
    ///
    /// # Errors
    /// As [`connect`].
    fn from_config(config: &Config) -> impl Future<Output = Result<Self>> + Send;
}

impl QueueConnect for Queue {
    async fn connect(url: &str) -> Result<Self> {
        connect(url).await
    }

    async fn from_env() -> Result<Self> {
        from_env().await
    }

    async fn from_config(config: &Config) -> Result<Self> {
        config.connect().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_picks_the_driver() {
        for (url, kind) in [
            ("memory", DriverKind::Memory),
            ("MEMORY://", DriverKind::Memory),
            ("redis://127.0.0.1:6379/0", DriverKind::Redis),
            ("rediss://h:6380", DriverKind::Redis),
            ("redis+cluster://a:7000,b:7001", DriverKind::Redis),
            ("sqlite://storage/queue.db", DriverKind::Database),
            ("sqlite::memory:", DriverKind::Database),
            ("postgres://u@h/db", DriverKind::Database),
            ("postgresql://u@h/db", DriverKind::Database),
        ] {
            assert_eq!(driver_of(url).ok(), Some(kind), "{url}");
        }
    }

    #[test]
    fn an_unknown_scheme_lists_the_accepted_ones_without_the_password() {
        let err = driver_of("mysql://root:hunter2@h/db").unwrap_err().to_string();
        assert!(err.contains("unsupported scheme `mysql:`"), "{err}");
        assert!(err.contains("redis://") && err.contains("postgres://"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let err = driver_of("localhost").unwrap_err().to_string();
        assert!(err.contains("no scheme"), "{err}");
    }

    #[tokio::test]
    async fn memory_connects_and_the_config_applies_its_settings() {
        let queue = connect("memory").await.unwrap();
        assert_eq!(queue.driver().name(), "memory");
        let config = Config::from_sources(
            Some((std::path::Path::new("queue.toml"), "default = \"mail\"")),
            |_| None,
        )
        .unwrap();
        let queue = Queue::from_config(&config).await.unwrap();
        assert_eq!(queue.default_queue(), "mail");
    }

    #[cfg(not(feature = "redis"))]
    #[tokio::test]
    async fn a_driver_left_out_names_its_feature() {
        let err = connect("redis://127.0.0.1:1").await.unwrap_err().to_string();
        assert!(err.contains("enable the `redis` feature of orcs"), "{err}");
    }

    #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
    #[tokio::test]
    async fn a_database_left_out_names_its_feature() {
        let err = connect("sqlite://q.db").await.unwrap_err().to_string();
        assert!(err.contains("`sqlite` feature"), "{err}");
        let err = connect("postgres://h/db").await.unwrap_err().to_string();
        assert!(err.contains("`postgres` feature"), "{err}");
    }
}
