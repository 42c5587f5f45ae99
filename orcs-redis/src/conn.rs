//! Connections: a deadpool pool of multiplexed connections for commands and scripts, and
//! dedicated connections for blocking waits.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use deadpool_redis::{Runtime, cluster};
use orcs_core::{Error, Result};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::config::RedisConfig;

/// The name every backend error carries.
pub(crate) const DRIVER: &str = "redis";

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded data (a cache, idle connections) stays valid after a panic elsewhere.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A backend error, classified as transient or permanent (see [`transient`]); when the cause is
/// one an operator can fix (wrong password, missing ACL permission, nothing listening, no
/// answer), the message also says what to do.
pub(crate) fn backend(e: impl Into<orcs_core::BoxError>) -> Error {
    let source: orcs_core::BoxError = e.into();
    let transient = transient(&*source);
    let source = match advice(&*source) {
        Some(advice) => Box::new(Advised { source, advice }),
        None => source,
    };
    if transient {
        Error::backend(DRIVER, source)
    } else {
        Error::backend_permanent(DRIVER, source)
    }
}

/// A transient backend error of the driver's own making (a wait that did not end).
pub(crate) fn backend_transient(message: impl Into<String>) -> Error {
    Error::backend(DRIVER, message.into())
}

/// True when trying again later may succeed: the connection failed (I/O, dropped, refused,
/// timed out, no pooled connection in time) or the server is passing through a state (loading
/// its data set, busy with a script, a cluster failover or resharding). Everything else repeats
/// until someone acts: permissions (NOPERM), credentials, wrong key types, script errors
/// (`ERR`), replies that do not parse, and the driver's own protocol errors.
fn transient(e: &(dyn std::error::Error + 'static)) -> bool {
    let redis = if let Some(e) = e.downcast_ref::<redis::RedisError>() {
        e
    } else {
        match e.downcast_ref::<deadpool_redis::PoolError>() {
            Some(deadpool_redis::PoolError::Backend(e)) => e,
            Some(deadpool_redis::PoolError::Timeout(_)) => return true,
            _ => return false,
        }
    };
    redis_transient(redis)
}

pub(crate) fn redis_transient(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
        return true;
    }
    match e.kind() {
        ErrorKind::Server(kind) => matches!(
            kind,
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask
        ),
        ErrorKind::ClusterConnectionNotFound => true,
        // A script running past lua-time-limit answers BUSY to everyone else until it ends.
        ErrorKind::Extension => e.code() == Some("BUSY"),
        _ => false,
    }
}

/// What to do about an error, for the causes an operator can fix.
fn advice(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let redis = if let Some(e) = e.downcast_ref::<redis::RedisError>() {
        e
    } else {
        match e.downcast_ref::<deadpool_redis::PoolError>()? {
            deadpool_redis::PoolError::Backend(e) => e,
            deadpool_redis::PoolError::Timeout(_) => return Some(NO_ANSWER),
            _ => return None,
        }
    };
    match redis.code() {
        Some("NOAUTH") => {
            return Some(
                "this Redis requires a password: put it in the Redis URL, as \
                 redis://:PASSWORD@host:port or redis://USER:PASSWORD@host:port",
            );
        }
        Some("WRONGPASS") => return Some(WRONG_CREDENTIALS),
        Some("NOPERM") => {
            return Some(
                "the Redis ACL user lacks a permission orcs needs: grant it the rule given under \
                 \"ACL\" in orcs-redis's README (keys ~{PREFIX:* and ~{PREFIX}:*, and the commands listed there)",
            );
        }
        _ => {}
    }
    let text = redis.to_string();
    if text.contains("certificate") || text.contains("CertificateRequired") {
        return Some(
            "the TLS handshake failed: if the server's certificate comes from a private CA or is \
             self-signed, give that PEM file with RedisConfig::with_ca_cert_file; \
             `rediss://...#insecure` skips the check, for tests only",
        );
    }
    if redis.kind() == redis::ErrorKind::AuthenticationFailed {
        Some(WRONG_CREDENTIALS)
    } else if redis.is_connection_refusal() {
        Some(
            "nothing accepts connections there: start Redis, or fix the host and port in the \
             Redis URL",
        )
    } else if redis.is_timeout() {
        Some(NO_ANSWER)
    } else {
        None
    }
}

const WRONG_CREDENTIALS: &str = "Redis refused the user name or password: put the right ones in \
     the Redis URL, as redis://:PASSWORD@host:port (the default user) or redis://USER:PASSWORD@host:port";

const NO_ANSWER: &str = "Redis did not answer in time: check that it runs at the host and port in \
     the Redis URL and that no firewall drops the connection";

/// A backend error with advice appended (see [`backend`]).
#[derive(Debug)]
struct Advised {
    source: orcs_core::BoxError,
    advice: &'static str,
}

impl std::fmt::Display for Advised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; {}", self.source, self.advice)
    }
}

impl std::error::Error for Advised {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// Blocking calls are given this much more time than they asked the server for, as a client-side
/// backstop; the normal end of a wait is the waiter's own wake-up, not this.
pub(crate) const BLOCKING_SLACK: Duration = Duration::from_secs(5);

/// The longest single wait; `wait` may return early by contract, so longer asks are cut.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(600);

/// Where commands go: one server or a cluster.
///
/// Commands go over a few multiplexed connections shared by every task: deadpool-redis opens
/// them (with its timeouts), and the driver keeps them instead of checking one out per call,
/// because each checkout costs a PING round trip. A connection that fails with an I/O error is
/// dropped from its slot, and the next call opens a new one through the pool.
pub(crate) struct Backend {
    kind: Kind,
    slots: Vec<Mutex<Option<Conn>>>,
    next: AtomicUsize,
    /// Bumped whenever a connection is found broken; older blocking connections are discarded.
    generation: AtomicU64,
}

enum Kind {
    Single { pool: deadpool_redis::Pool, client: Box<redis::Client> },
    Cluster { pool: cluster::Pool, client: Box<ClusterClient> },
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("cluster", &self.is_cluster())
            .field("connections", &self.slots.len())
            .finish()
    }
}

impl Backend {
    pub(crate) fn new(config: &RedisConfig) -> Result<Self> {
        let config_error = |e: &dyn std::fmt::Display| {
            Error::config(
                crate::config::URL_SETTING,
                format!("{}: {e}", crate::config::redact(&config.redacted_url())),
            )
        };
        let nodes = config.nodes();
        if config.is_cluster() {
            let pool = cluster::Config {
                urls: Some(nodes.to_vec()),
                connections: None,
                pool: Some(deadpool_redis::PoolConfig::new(config.pool_size())),
                read_from_replicas: false,
            }
            .builder()
            .map_err(|e| config_error(&e))?
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.connect_timeout()))
            .create_timeout(Some(config.connect_timeout()))
            .build()
            .map_err(|e| config_error(&e))?;
            let client = ClusterClient::builder(nodes.to_vec())
                .connection_timeout(config.connect_timeout())
                .response_timeout(MAX_WAIT + BLOCKING_SLACK)
                .build()
                .map_err(|e| config_error(&e))?;
            Ok(Self::with(config, Kind::Cluster { pool, client: Box::new(client) }))
        } else {
            let info = match config.client_info() {
                Some(info) => {
                    // A TLS client of the application needs the process's crypto provider too.
                    #[cfg(feature = "tls")]
                    let _ = rustls::crypto::ring::default_provider().install_default();
                    info.clone()
                }
                None => connection_info(config).map_err(|e| config_error(&e))?,
            };
            let commands = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(config.connect_timeout()))
                .set_response_timeout(Some(config.response_timeout()));
            let manager = deadpool_redis::Manager::new_with_config(info.clone(), commands)
                .map_err(|e| config_error(&e))?;
            let pool = deadpool_redis::Pool::builder(manager)
                .max_size(config.pool_size())
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(config.connect_timeout()))
                .create_timeout(Some(config.connect_timeout()))
                .build()
                .map_err(|e| config_error(&e))?;
            let client = redis::Client::open(info).map_err(|e| config_error(&e))?;
            Ok(Self::with(config, Kind::Single { pool, client: Box::new(client) }))
        }
    }

    fn with(config: &RedisConfig, kind: Kind) -> Self {
        let slots = (0..config.pool_size()).map(|_| Mutex::new(None)).collect();
        Self { kind, slots, next: AtomicUsize::new(0), generation: AtomicU64::new(0) }
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.kind, Kind::Cluster { .. })
    }

    /// A shared command connection (round robin over the slots), opened if its slot is empty.
    pub(crate) async fn conn(&self) -> Result<Conn> {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        if let Some(conn) = lock(&self.slots[slot]).as_ref() {
            return Ok(conn.clone());
        }
        let conn = match &self.kind {
            Kind::Single { pool, .. } => {
                pool.get().await.map(|c| Conn::Single(deadpool_redis::Connection::take(c)))
            }
            Kind::Cluster { pool, .. } => {
                pool.get().await.map(|c| Conn::Cluster(cluster::Connection::take(c)))
            }
        }
        .map_err(backend)?;
        *lock(&self.slots[slot]) = Some(conn.clone());
        Ok(conn)
    }

    /// Runs `f` on a shared connection; drops the connection if it broke.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: AsyncFnOnce(&mut Conn) -> RedisResult<T>,
    {
        let mut conn = self.conn().await?;
        match f(&mut conn).await {
            Ok(value) => Ok(value),
            Err(e) => {
                if broken(&e) {
                    self.reset();
                }
                Err(backend(e))
            }
        }
    }

    /// Forgets every connection after one broke: a dropped connection usually means a restart
    /// or a network cut that broke the others too, and each would otherwise fail one call.
    pub(crate) fn reset(&self) {
        for slot in &self.slots {
            lock(slot).take();
        }
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// The current connection generation (see [`Backend::reset`]).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// A new connection for blocking calls: no response timeout of its own (the caller bounds
    /// every call), so a long BLPOP is not cut off by redis-rs's default 500 ms limit.
    pub(crate) async fn blocking(&self, connect_timeout: Duration) -> Result<Conn> {
        match &self.kind {
            Kind::Single { client, .. } => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(None);
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Conn::Single)
                    .map_err(backend)
            }
            Kind::Cluster { client, .. } => {
                client.get_async_connection().await.map(Conn::Cluster).map_err(backend)
            }
        }
    }
}

/// Where the single server is and how to reach it: with a CA certificate for `rediss://`, the
/// TLS parameters that trust it.
fn connection_info(config: &RedisConfig) -> RedisResult<redis::ConnectionInfo> {
    use redis::IntoConnectionInfo as _;
    let url = config.nodes()[0].as_str();
    #[cfg(feature = "tls")]
    {
        // rustls needs a process-wide crypto provider; ring is the one this crate enables.
        // An application that installed its own keeps it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        if let Some(pem) = config.ca_cert() {
            let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(pem.to_vec()) };
            return redis::Client::build_with_tls(url, certs)
                .map(|client| client.get_connection_info().clone());
        }
    }
    url.into_connection_info()
}

/// True for errors after which the connection cannot be trusted any more.
pub(crate) fn broken(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() || e.is_timeout()
}

/// A connection of either kind: shared for commands and scripts (clones share one socket), or
/// dedicated to one blocking wait.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use redis::{ErrorKind, RedisError, ServerErrorKind};

    use super::*;

    fn server(kind: ServerErrorKind) -> RedisError {
        RedisError::from((ErrorKind::Server(kind), "test"))
    }

    #[test]
    fn errors_are_classified() {
        let transient = [
            RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
            RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)),
            RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
            server(ServerErrorKind::BusyLoading),
            server(ServerErrorKind::TryAgain),
            server(ServerErrorKind::ClusterDown),
            server(ServerErrorKind::MasterDown),
            server(ServerErrorKind::ReadOnly),
        ];
        for e in transient {
            assert!(backend(e.clone()).is_transient(), "{e:?} is transient");
        }
        let permanent = [
            server(ServerErrorKind::NoPerm),
            server(ServerErrorKind::ResponseError),
            RedisError::from((ErrorKind::AuthenticationFailed, "test")),
            RedisError::from((ErrorKind::UnexpectedReturnType, "test")),
            RedisError::from((ErrorKind::Parse, "test")),
        ];
        for e in permanent {
            assert!(!backend(e.clone()).is_transient(), "{e:?} is permanent");
        }
        assert!(!backend("an unexpected reply").is_transient());
    }
}
