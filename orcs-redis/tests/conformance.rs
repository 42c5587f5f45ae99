//! The conformance suite against a single Redis server and against a Redis Cluster, each case
//! under a fresh key prefix, plus the Redis driver's own cases.

use orcs_redis::{RedisConfig, RedisDriver};
use orcs_tests::services::{self, unique_name};

async fn driver_at(url: Option<String>) -> Option<RedisDriver> {
    let url = url?;
    let config = RedisConfig::from_url(&url)
        .expect("a valid test URL")
        .with_prefix(unique_name("orcs-test"));
    Some(RedisDriver::connect(config).await.expect("connect to the test Redis"))
}

async fn single() -> Option<RedisDriver> {
    driver_at(services::redis::redis_url_or_skip()).await
}

async fn cluster() -> Option<RedisDriver> {
    driver_at(services::redis::redis_cluster_url_or_skip()).await
}

mod standalone {
    use super::*;
    orcs_tests::conformance_tests!(single());
}

mod cluster {
    use super::*;
    orcs_tests::conformance_tests!(cluster());
}
