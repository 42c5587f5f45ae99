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

/// The Redis driver's own cases, beyond the shared suite: damaged data, wake-ups across
/// processes, waits that end on time, dropped connections, the key layout.
mod redis_driver {
    use std::time::{Duration, Instant};

    use orcs_core::{ClaimRequest, Clock, Driver, Error, NewJob, SystemClock};
    use redis::AsyncCommands;

    use super::*;

    fn job(queue: &str, tag: u64) -> NewJob {
        let now = SystemClock.now();
        NewJob {
            id: orcs_core::new_job_id(),
            name: "PlainJob".to_owned(),
            queue: queue.to_owned(),
            payload: format!("{{\"tag\":{tag}}}"),
            priority: 0,
            max_retries: 3,
            retry_delay_ms: 1000,
            timeout_ms: None,
            dispatched_at: now,
            available_at: now,
        }
    }

    fn request(queues: &[String], max: usize) -> ClaimRequest<'_> {
        ClaimRequest {
            queues,
            max,
            now: SystemClock.now(),
            default_timeout_ms: 60_000,
            grace_ms: 5_000,
        }
    }

    fn names(queues: &[&str]) -> Vec<String> {
        queues.iter().map(|q| (*q).to_owned()).collect()
    }

    /// Two drivers on one prefix, as two processes would have.
    async fn pair(url: Option<String>) -> Option<(RedisDriver, RedisDriver, String)> {
        let url = url?;
        let config =
            RedisConfig::from_url(&url).expect("url").with_prefix(unique_name("orcs-test"));
        let a = RedisDriver::connect(config.clone()).await.expect("connect");
        let b = RedisDriver::connect(config).await.expect("connect");
        Some((a, b, url))
    }

    async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
        let url = url.strip_prefix("redis+cluster://").map_or(url.to_owned(), |nodes| {
            format!("redis://{}", nodes.split(',').next().expect("a node"))
        });
        redis::Client::open(url)
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("connect")
    }

    /// A record that does not decode and an id without a record both go to the failed set with
    /// the reason; the good job behind them is claimed.
    #[test]
    fn unreadable_records_go_to_the_failed_set() {
        orcs_tests::run(async {
            let Some(url) = services::redis::redis_url_or_skip() else { return };
            let prefix = unique_name("orcs-test");
            let config = RedisConfig::from_url(&url).expect("url").with_prefix(prefix.clone());
            let driver = RedisDriver::connect(config).await.expect("connect");
            let (damaged, good) = (job("default", 0), job("default", 1));
            let (damaged_id, good_id) = (damaged.id.clone(), good.id.clone());
            driver.push(vec![damaged, good]).await.expect("push");
            let mut conn = raw(&url).await;
            let tag = format!("{{{prefix}:default}}");
            let _: () = conn
                .hset(format!("{tag}:jobs"), &damaged_id, b"0|\xff\xfe|not a record".as_slice())
                .await
                .expect("damage a record");
            let orphan = orcs_core::new_job_id();
            let _: () =
                conn.zadd(format!("{tag}:ready"), &orphan, -100).await.expect("add an orphan");

            let queues = names(&["default"]);
            let claim = driver.claim(&request(&queues, 10)).await.expect("claim");
            let ids: Vec<&str> = claim.jobs.iter().map(|r| r.record.id.as_str()).collect();
            assert_eq!(ids, [good_id.as_str()]);
            let failed = driver.failed(None).await.expect("failed");
            let reasons: Vec<(&str, &str)> =
                failed.iter().map(|f| (f.id.as_str(), f.error.as_str())).collect();
            assert_eq!(reasons.len(), 2, "{reasons:?}");
            assert!(reasons.iter().any(|(id, why)| *id == orphan
                && why.starts_with("unreadable job record: its data is missing")));
            assert!(reasons.iter().any(|(id, why)| *id == damaged_id
                && why.starts_with("unreadable job record: not UTF-8")));
            let stats = driver.stats("default", SystemClock.now()).await.expect("stats");
            assert_eq!((stats.failed, stats.failed_total, stats.reserved), (2, 2, 1));
        });
    }

    async fn wakes_across_drivers(url: Option<String>) {
        let Some((waiting, dispatcher, _)) = pair(url).await else { return };
        let queues = names(&["high", "low"]);
        let waiter = tokio::spawn(async move {
            waiting.wait(&queues, Duration::from_secs(10)).await.expect("wait");
            Instant::now()
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sent = Instant::now();
        dispatcher.push(vec![job("low", 0)]).await.expect("push");
        let took = waiter.await.expect("waiter").saturating_duration_since(sent);
        assert!(
            took < Duration::from_millis(50),
            "woke {took:?} after a dispatch to the last queue"
        );
    }

    /// A dispatch by another process to any of a worker's queues wakes it at once.
    #[test]
    fn dispatch_by_another_driver_wakes_a_waiting_one() {
        orcs_tests::run(wakes_across_drivers(services::redis::redis_url_or_skip()));
    }

    /// The same on a cluster, where the queues' markers live in different slots.
    #[test]
    fn dispatch_by_another_driver_wakes_a_waiting_one_on_a_cluster() {
        orcs_tests::run(wakes_across_drivers(services::redis::redis_cluster_url_or_skip()));
    }

    /// A wait with nothing to do ends on time (not at Redis's coarse timer tick), and leaves
    /// nothing behind that would end the next one early.
    #[test]
    fn idle_waits_end_on_time() {
        orcs_tests::run(async {
            let Some(driver) = single().await else { return };
            let queues = names(&["default"]);
            for _ in 0..3 {
                let started = Instant::now();
                driver.wait(&queues, Duration::from_millis(120)).await.expect("wait");
                let took = started.elapsed();
                assert!(
                    took >= Duration::from_millis(115) && took < Duration::from_millis(170),
                    "a 120 ms wait took {took:?}"
                );
            }
        });
    }

    /// When Redis drops every connection, the next calls fail as transient backend errors at
    /// worst, and the driver carries on over new connections.
    #[test]
    fn dropped_connections_are_replaced() {
        orcs_tests::run(async {
            let Some(url) = services::redis::private_server_or_skip() else { return };
            let driver = driver_at(Some(url.clone())).await.expect("a driver");
            let queues = names(&["default"]);
            driver.push(vec![job("default", 0)]).await.expect("push");
            driver.wait(&queues, Duration::from_millis(20)).await.expect("wait");
            let mut admin = raw(&url).await;
            let _: i64 = redis::cmd("CLIENT")
                .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"][..])
                .query_async(&mut admin)
                .await
                .expect("kill the driver's connections");
            // At most one call fails (with a transient error); the driver then drops every
            // connection of the old generation and carries on over new ones.
            if let Err(e) = driver.push(vec![job("default", 1)]).await {
                assert!(e.is_transient(), "a dropped connection is transient: {e}");
                driver.push(vec![job("default", 1)]).await.expect("push after reconnecting");
            }
            if let Err(e) = driver.wait(&queues, Duration::from_millis(20)).await {
                assert!(e.is_transient(), "a dropped connection is transient: {e}");
                driver.wait(&queues, Duration::from_millis(20)).await.expect("wait again");
            }
            let stats = driver.stats("default", SystemClock.now()).await.expect("stats");
            assert_eq!(stats.pending, 2, "no job was lost");
        });
    }

    /// The documented key layout: an operator can read a queue with redis-cli.
    #[test]
    fn keys_follow_the_documented_layout() {
        orcs_tests::run(async {
            let Some(url) = services::redis::redis_url_or_skip() else { return };
            let prefix = unique_name("orcs-test");
            let config = RedisConfig::from_url(&url).expect("url").with_prefix(prefix.clone());
            let driver = RedisDriver::connect(config).await.expect("connect");
            let mut urgent = job("mail", 0);
            urgent.priority = 7;
            let id = urgent.id.clone();
            driver.push(vec![urgent, job("other", 1)]).await.expect("push");
            let mut conn = raw(&url).await;
            let score: f64 =
                conn.zscore(format!("{{{prefix}:mail}}:ready"), &id).await.expect("zscore");
            assert_eq!(score, -7.0);
            let marker: i64 = conn.llen(format!("{{{prefix}:mail}}:marker")).await.expect("llen");
            assert_eq!(marker, 1);
            assert_eq!(driver.queues().await.expect("queues"), ["mail", "other"]);
            assert!(matches!(
                driver
                    .push(vec![NewJob { queue: "mail".to_owned(), ..job("mail", 2) }, {
                        let mut again = job("mail", 3);
                        again.id = id.clone();
                        again
                    }])
                    .await,
                Err(Error::Invalid { what: "job id", .. })
            ));
            assert_eq!(driver.stats("mail", SystemClock.now()).await.expect("stats").pending, 1);
        });
    }
}
