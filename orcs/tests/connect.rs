//! `orcs::connect(url)` and `Config::connect` against the real backends: each URL scheme reaches
//! its driver, and a job dispatched through the facade is run by a worker with application state.
//! Redis starts its own `redis-server`; PostgreSQL works in a schema of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use orcs::prelude::*;
use serde::{Deserialize, Serialize};

mod common;

/// Counts its runs in the application's state.
#[derive(Serialize, Deserialize)]
struct Ping;

#[derive(Default)]
struct Runs(AtomicU64);

impl Job for Ping {
    const NAME: &'static str = "Ping";

    fn needs(needs: &mut orcs::Needs) {
        needs.state::<Arc<Runs>>();
    }

    async fn handle(&self, ctx: &JobContext) -> Result<(), JobError> {
        ctx.state::<Arc<Runs>>()?.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Dispatches one `Ping` to a queue of its own on `queue` and works it; returns the runs seen.
async fn round_trip(queue: &Queue) -> u64 {
    let name = orcs_tests::services::unique_name("facade");
    queue.dispatch_with(Ping, DispatchOptions::new().queue(&name)).await.expect("dispatch");
    let runs = Arc::new(Runs::default());
    let registry = Registry::new().register::<Ping>().state(runs.clone());
    let summary = Worker::new(queue.clone(), registry)
        .queues([name.as_str()])
        .stop_when_empty(true)
        .run()
        .await
        .expect("work");
    assert_eq!(summary.done, 1);
    assert_eq!(queue.stats(&name).await.expect("stats").processed, 1);
    runs.0.load(Ordering::Relaxed)
}

/// An environment lookup over fixed pairs, for `Config::from_sources`.
#[cfg(any(feature = "redis", feature = "sqlite"))]
fn env(pairs: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
    move |key| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
}

#[tokio::test]
async fn memory_connects_by_url() {
    let queue = orcs::connect("memory").await.expect("connect");
    assert_eq!(queue.driver().name(), "memory");
    assert_eq!(round_trip(&queue).await, 1);
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use orcs_tests::services::{redis::redis_url_or_skip, unique_name};

    #[tokio::test]
    async fn a_redis_url_connects_the_redis_driver() {
        let Some(url) = redis_url_or_skip() else { return };
        let queue = Queue::connect(&url).await.expect("connect to Redis");
        assert_eq!(queue.driver().name(), "redis");
        assert_eq!(round_trip(&queue).await, 1);
    }

    #[tokio::test]
    async fn the_config_gives_the_redis_driver_its_prefix_and_default_queue() {
        let Some(url) = redis_url_or_skip() else { return };
        let prefix = unique_name("facade");
        let config = Config::from_sources(
            None,
            env(vec![
                ("QUEUE_DRIVER", "redis".to_owned()),
                ("REDIS_URL", url.clone()),
                ("REDIS_PREFIX", prefix),
                ("QUEUE_DEFAULT", "mail".to_owned()),
            ]),
        )
        .expect("config");
        let queue = Queue::from_config(&config).await.expect("connect");
        queue.dispatch(Ping).await.expect("dispatch");
        assert_eq!(queue.stats("mail").await.expect("stats").pending, 1, "the default queue");
        // Another prefix is another application's queues on the same server.
        let other = orcs::connect(&url).await.expect("connect");
        assert_eq!(other.stats("mail").await.expect("stats").pending, 0, "kept apart by prefix");
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use crate::common::schema_url;

    #[tokio::test]
    async fn a_postgres_url_connects_the_database_driver() {
        let Some(url) = schema_url("orcs_test").await else { return };
        let queue = Queue::connect(&url).await.expect("connect to PostgreSQL");
        assert_eq!(queue.driver().name(), "database");
        assert_eq!(round_trip(&queue).await, 1);
        // postgresql:// is the same driver.
        let url = url.replacen("postgres://", "postgresql://", 1);
        assert_eq!(round_trip(&orcs::connect(&url).await.expect("connect")).await, 1);
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use orcs::sqlx::{self, Connection as _, Row as _};

    fn fresh_file() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(orcs_tests::services::unique_name("orcs-facade"));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        dir.join("queue.db")
    }

    #[tokio::test]
    async fn a_sqlite_url_connects_the_database_driver() {
        let url = format!("sqlite://{}", fresh_file().display());
        let queue = orcs::connect(&url).await.expect("open SQLite");
        assert_eq!(queue.driver().name(), "database");
        assert_eq!(round_trip(&queue).await, 1);
    }

    #[tokio::test]
    async fn the_config_gives_the_database_driver_its_table() {
        let url = format!("sqlite://{}", fresh_file().display());
        let config = Config::from_sources(
            Some((std::path::Path::new("queue.toml"), "driver = \"database\"")),
            env(vec![("DATABASE_URL", url.clone()), ("QUEUE_DATABASE_TABLE", "app_jobs".into())]),
        )
        .expect("config");
        let queue = config.connect().await.expect("connect");
        queue.dispatch(Ping).await.expect("dispatch");
        let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("open the file");
        let row = sqlx::query("SELECT COUNT(*) FROM app_jobs")
            .fetch_one(&mut conn)
            .await
            .expect("the configured table holds the job");
        assert_eq!(row.get::<i64, _>(0), 1);
    }
}
