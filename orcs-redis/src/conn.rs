//! Connections: a deadpool pool of multiplexed connections for commands and scripts, and
//! dedicated connections for blocking waits.

use std::time::Duration;

use deadpool_redis::{Runtime, cluster};
use orcs_core::{Error, Result};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, Value};

use crate::config::RedisConfig;

/// The name every backend error carries.
pub(crate) const DRIVER: &str = "redis";

pub(crate) fn backend(e: impl Into<orcs_core::BoxError>) -> Error {
    Error::backend(DRIVER, e)
}

/// Blocking calls are given this much more time than they asked the server for, as a client-side
/// backstop; the normal end of a wait is the waiter's own wake-up, not this.
pub(crate) const BLOCKING_SLACK: Duration = Duration::from_secs(5);

/// The longest single wait; `wait` may return early by contract, so longer asks are cut.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(600);

/// Where commands go: one server or a cluster.
pub(crate) enum Backend {
    Single { pool: deadpool_redis::Pool, client: redis::Client },
    Cluster { pool: cluster::Pool, client: Box<ClusterClient> },
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single { .. } => "Backend::Single",
            Self::Cluster { .. } => "Backend::Cluster",
        })
    }
}

impl Backend {
    pub(crate) fn new(config: &RedisConfig) -> Result<Self> {
        let config_error = |e: &dyn std::fmt::Display| {
            Error::config(
                "REDIS_URL",
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
            Ok(Self::Cluster { pool, client: Box::new(client) })
        } else {
            let url = nodes[0].as_str();
            let commands = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(config.connect_timeout()))
                .set_response_timeout(Some(config.response_timeout()));
            let manager = deadpool_redis::Manager::new_with_config(url, commands)
                .map_err(|e| config_error(&e))?;
            let pool = deadpool_redis::Pool::builder(manager)
                .max_size(config.pool_size())
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(config.connect_timeout()))
                .create_timeout(Some(config.connect_timeout()))
                .build()
                .map_err(|e| config_error(&e))?;
            let client = redis::Client::open(url).map_err(|e| config_error(&e))?;
            Ok(Self::Single { pool, client })
        }
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster { .. })
    }

    /// A command connection from the pool (a dropped one is replaced by deadpool).
    pub(crate) async fn conn(&self) -> Result<Conn> {
        match self {
            Self::Single { pool, .. } => pool.get().await.map(Conn::Single).map_err(backend),
            Self::Cluster { pool, .. } => pool.get().await.map(Conn::Cluster).map_err(backend),
        }
    }

    /// A new connection for blocking calls: no response timeout of its own (the caller bounds
    /// every call), so a long BLPOP is not cut off by redis-rs's default 500 ms limit.
    pub(crate) async fn blocking(&self, connect_timeout: Duration) -> Result<Blocking> {
        match self {
            Self::Single { client, .. } => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(None);
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Blocking::Single)
                    .map_err(backend)
            }
            Self::Cluster { client, .. } => {
                client.get_async_connection().await.map(Blocking::Cluster).map_err(backend)
            }
        }
    }
}

/// A pooled command connection of either kind.
pub(crate) enum Conn {
    Single(deadpool_redis::Connection),
    Cluster(cluster::Connection),
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

/// A dedicated connection for blocking waits.
pub(crate) enum Blocking {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Blocking {
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
