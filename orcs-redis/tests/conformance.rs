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

    use orcs_core::{
        Admin, CancelOutcome, ClaimRequest, Clock, Driver, Error, FailedQuery, JobState,
        ListRequest, NewJob, PushOutcome, QueueLimits, RateLimit, Settle, SystemClock, Touch,
        Unique, UniqueUntil,
    };
    use redis::AsyncCommands;

    use super::*;

    fn job(queue: &str, tag: u64) -> NewJob {
        let now = SystemClock.now();
        let mut job = NewJob::new(
            orcs_core::new_job_id(),
            "PlainJob",
            queue,
            format!("{{\"tag\":{tag}}}"),
            now,
        );
        job.max_retries = 3;
        job.retry_delay_ms = 1000;
        job
    }

    fn request(queues: &[String], max: usize) -> ClaimRequest<'_> {
        ClaimRequest::new(queues, max, SystemClock.now())
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
            let failed = driver.failed(&FailedQuery::new(100)).await.expect("failed");
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
            waiting.wait(&queues, SystemClock.now(), Duration::from_secs(10)).await.expect("wait");
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
                driver
                    .wait(&queues, SystemClock.now(), Duration::from_millis(120))
                    .await
                    .expect("wait");
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
            driver.wait(&queues, SystemClock.now(), Duration::from_millis(20)).await.expect("wait");
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
            if let Err(e) = driver.wait(&queues, SystemClock.now(), Duration::from_millis(20)).await
            {
                assert!(e.is_transient(), "a dropped connection is transient: {e}");
                driver
                    .wait(&queues, SystemClock.now(), Duration::from_millis(20))
                    .await
                    .expect("wait again");
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
            let mut again = job("mail", 3);
            again.id = id.clone();
            let outcomes = driver.push(vec![job("mail", 2), again]).await.expect("push");
            assert_eq!(outcomes[0], PushOutcome::Stored);
            assert_eq!(outcomes[1], PushOutcome::Duplicate { id: id.clone() });
            assert_eq!(driver.stats("mail", SystemClock.now()).await.expect("stats").pending, 2);
            driver.set_paused("mail", true).await.expect("pause");
            let paused: String =
                conn.hget(format!("{{{prefix}:mail}}:meta"), "paused").await.expect("hget");
            assert_eq!(paused, "1");
            let version: String =
                conn.get(format!("{{{prefix}}}:version")).await.expect("get the version");
            assert_eq!(version, "3");
            assert_eq!(driver.storage_layout(), 3);
            // A plain job's record is written as layout 2 wrote it.
            let record: String =
                conn.hget(format!("{{{prefix}:mail}}:jobs"), &id).await.expect("hget the record");
            assert!(record.starts_with("v2|7|"), "{record}");
        });
    }

    /// A push larger than one script call's limit is stored in chunks, all of it, and claims
    /// come out in claim order across the chunks.
    async fn large_push_is_stored_in_chunks(driver: Option<RedisDriver>) {
        let Some(driver) = driver else { return };
        assert_eq!(driver.capabilities().atomic_push_limit, Some(1000));
        let jobs: Vec<NewJob> = (0..2_500).map(|tag| job("bulk", tag)).collect();
        let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
        let outcomes = driver.push(jobs).await.expect("push 2,500 jobs");
        assert_eq!(outcomes.len(), 2_500);
        assert!(outcomes.iter().all(|o| *o == PushOutcome::Stored), "every job is new");
        let now = SystemClock.now();
        assert_eq!(driver.stats("bulk", now).await.expect("stats").pending, 2_500);
        let queues = names(&["bulk"]);
        let mut claimed = Vec::new();
        while claimed.len() < 2_500 {
            let claim = driver.claim(&request(&queues, 1000)).await.expect("claim");
            assert!(!claim.jobs.is_empty(), "jobs left unclaimed after {}", claimed.len());
            claimed.extend(claim.jobs.into_iter().map(|r| r.record.id));
        }
        assert_eq!(claimed, ids, "claimed in dispatch order across chunks");
    }

    #[test]
    fn large_push_is_stored_in_chunks_on_a_server() {
        orcs_tests::run(async { large_push_is_stored_in_chunks(single().await).await });
    }

    #[test]
    fn large_push_is_stored_in_chunks_on_a_cluster() {
        orcs_tests::run(async { large_push_is_stored_in_chunks(cluster().await).await });
    }

    /// More due delayed jobs than one claim call promotes, and a high-priority one due last:
    /// the first claim still returns the high-priority job.
    #[test]
    fn promotion_beyond_one_chunk_keeps_priority() {
        orcs_tests::run(async {
            let Some(driver) = single().await else { return };
            let now = SystemClock.now();
            let mut jobs: Vec<NewJob> = (0..1_200)
                .map(|tag| {
                    let mut low = job("promo", tag);
                    low.available_at = now + 10 + i64::try_from(tag).expect("small");
                    low
                })
                .collect();
            let mut high = job("promo", 9_999);
            high.priority = 10;
            high.available_at = now + 5_000;
            let high_id = high.id.clone();
            jobs.push(high);
            driver.push(jobs).await.expect("push");
            let queues = names(&["promo"]);
            let mut req = ClaimRequest::new(&queues, 1, now + 10_000);
            req.default_timeout_ms = 1_000;
            let claim = driver.claim(&req).await.expect("claim");
            assert_eq!(claim.jobs.len(), 1);
            assert_eq!(claim.jobs[0].record.id, high_id);
            let stats = driver.stats("promo", now + 10_000).await.expect("stats");
            assert_eq!((stats.pending, stats.delayed, stats.reserved), (1_200, 0, 1));
        });
    }

    /// On a cluster, a settle whose effect enqueues on a queue in another slot is refused as
    /// unsupported and changes nothing; an effect on the job's own queue is stored.
    #[test]
    fn cross_slot_effects_are_unsupported_on_a_cluster() {
        orcs_tests::run(async {
            let Some(driver) = cluster().await else { return };
            assert!(!driver.capabilities().cross_queue_atomic);
            driver.push(vec![job("a", 0), job("a", 1)]).await.expect("push");
            let queues = names(&["a"]);
            let claim = driver.claim(&request(&queues, 2)).await.expect("claim");
            let [first, second] = &claim.jobs[..] else { panic!("two jobs claimed") };
            // Find a queue in another slot than `a` (most are).
            let other = (0..100)
                .map(|n| format!("other{n}"))
                .find(|q| {
                    let slot = |q: &str| {
                        redis::cluster_routing::Slot::for_key(format!(
                            "{{{}:{q}}}:ready",
                            driver.config().prefix()
                        ))
                    };
                    slot(q) != slot("a")
                })
                .expect("a queue in another slot");
            let settle = Settle::complete(first.lease.clone()).enqueue([job(&other, 2)]);
            let err = driver.settle_one(settle, SystemClock.now()).await.expect_err("cross slot");
            assert!(matches!(err, Error::Unsupported { .. }), "{err:?}");
            assert!(err.to_string().contains("standalone Redis"), "{err}");
            let now = SystemClock.now();
            assert_eq!(driver.stats("a", now).await.expect("stats").reserved, 2, "nothing changed");
            assert_eq!(driver.stats(&other, now).await.expect("stats").pending, 0);
            let settle = Settle::complete(second.lease.clone()).enqueue([job("a", 3)]);
            driver.settle_one(settle, now).await.expect("an effect on the own queue");
            let stats = driver.stats("a", now).await.expect("stats");
            assert_eq!((stats.pending, stats.reserved, stats.processed), (1, 1, 1));
        });
    }

    /// Pages of pending jobs in claim order, and `get` in every state.
    #[test]
    fn list_pages_and_get_follow_the_job() {
        orcs_tests::run(async {
            let Some(driver) = single().await else { return };
            let jobs: Vec<NewJob> = (0..5).map(|tag| job("pages", tag)).collect();
            let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
            driver.push(jobs).await.expect("push");
            let now = SystemClock.now();
            let page = driver
                .list(&ListRequest::new("pages", JobState::Pending, 2).offset(2), now)
                .await
                .expect("list");
            let listed: Vec<&str> = page.iter().map(|i| i.job.id.as_str()).collect();
            assert_eq!(listed, [ids[2].as_str(), ids[3].as_str()]);
            let info = driver.get(&ids[0], now).await.expect("get").expect("exists");
            assert_eq!((info.state, info.attempts), (JobState::Pending, 0));
            let queues = names(&["pages"]);
            let claim = driver.claim(&request(&queues, 1)).await.expect("claim");
            let lease = claim.jobs[0].lease.clone();
            let info = driver.get(&ids[0], now).await.expect("get").expect("exists");
            assert_eq!(info.state, JobState::Reserved);
            assert_eq!(info.lease_expires_at, Some(lease.expires_at));
            driver.settle_one(Settle::fail(lease, "boom"), now).await.expect("fail");
            let info = driver.get(&ids[0], now).await.expect("get").expect("exists");
            assert_eq!((info.state, info.last_error.as_deref()), (JobState::Failed, Some("boom")));
            assert!(driver.get("nope", now).await.expect("get").is_none());
            assert!(driver.server_time().await.expect("TIME").is_some());
        });
    }

    fn keyed(queue: &str, tag: u64, key: &str, until: UniqueUntil) -> NewJob {
        let mut job = job(queue, tag);
        job.unique = Some(Unique::new(key, until));
        job
    }

    /// The unique keys' documented layout: key -> holder, the key in the holder's (v3) record,
    /// Period expiries; a finished job's key goes, and expired Period keys are pruned by later
    /// pushes.
    #[test]
    fn unique_keys_follow_the_documented_layout() {
        orcs_tests::run(async {
            let Some(url) = services::redis::redis_url_or_skip() else { return };
            let prefix = unique_name("orcs-test");
            let config = RedisConfig::from_url(&url).expect("url").with_prefix(prefix.clone());
            let driver = RedisDriver::connect(config).await.expect("connect");
            let tag = format!("{{{prefix}:keys}}");
            let finished = keyed("keys", 0, "f-key", UniqueUntil::Finished);
            let period = keyed("keys", 1, "p-key", UniqueUntil::Period(5));
            let (f_id, p_id, p_at) = (finished.id.clone(), period.id.clone(), period.dispatched_at);
            driver.push(vec![finished, period]).await.expect("push");
            let mut conn = raw(&url).await;
            let holder: String = conn.hget(format!("{tag}:unique"), "f-key").await.expect("hget");
            assert_eq!(holder, f_id);
            let record: String = conn.hget(format!("{tag}:jobs"), &f_id).await.expect("hget");
            assert!(record.starts_with("v3|0||3|1000|"), "{record}");
            assert!(record.contains("|f|0|5|8|f-keyPlainJob{"), "{record}");
            let record: String = conn.hget(format!("{tag}:jobs"), &p_id).await.expect("hget");
            assert!(record.contains("|p|5|5|8|p-keyPlainJob{"), "{record}");
            let specs: i64 = conn.hlen(format!("{tag}:unique_of")).await.expect("hlen");
            assert_eq!(specs, 0, "layout 3 keeps no spec in unique_of");
            let info = driver.get(&p_id, SystemClock.now()).await.expect("get").expect("found");
            assert_eq!(info.job.unique, Some(Unique::new("p-key", UniqueUntil::Period(5))));
            let expiry: f64 =
                conn.zscore(format!("{tag}:unique_expiry"), "p-key").await.expect("zscore");
            assert_eq!(expiry as i64, p_at + 5);

            let queues = names(&["keys"]);
            let claim = driver.claim(&request(&queues, 2)).await.expect("claim");
            for reserved in &claim.jobs {
                driver
                    .settle_one(Settle::complete(reserved.lease.clone()), SystemClock.now())
                    .await
                    .expect("complete");
            }
            let left: Vec<String> = conn.hkeys(format!("{tag}:unique")).await.expect("hkeys");
            assert_eq!(left, ["p-key"], "the Finished key freed, the Period key holds");
            let held: i64 = conn.hlen(format!("{tag}:jobs")).await.expect("hlen");
            assert_eq!(held, 0, "completed jobs leave no record behind");

            // A Period push after the period prunes the expired key, though it uses another key.
            let mut later = keyed("keys", 2, "other", UniqueUntil::Period(60_000));
            later.dispatched_at = p_at + 10;
            later.available_at = later.dispatched_at;
            driver.push(vec![later]).await.expect("push");
            let left: Vec<String> = conn.hkeys(format!("{tag}:unique")).await.expect("hkeys");
            assert_eq!(left, ["other"]);
            let expiries: Vec<String> =
                conn.zrange(format!("{tag}:unique_expiry"), 0, -1).await.expect("zrange");
            assert_eq!(expiries, ["other"]);
        });
    }

    /// A key whose holder has no record any more (deleted by hand, or by an older orcs that did
    /// not know keys) is free.
    #[test]
    fn a_holder_without_a_record_frees_its_key() {
        orcs_tests::run(async {
            let Some(url) = services::redis::redis_url_or_skip() else { return };
            let prefix = unique_name("orcs-test");
            let config = RedisConfig::from_url(&url).expect("url").with_prefix(prefix.clone());
            let driver = RedisDriver::connect(config).await.expect("connect");
            let first = keyed("gone", 0, "k", UniqueUntil::Finished);
            let first_id = first.id.clone();
            driver.push(vec![first]).await.expect("push");
            let again = keyed("gone", 1, "k", UniqueUntil::Finished);
            assert_eq!(
                driver.push(vec![again]).await.expect("push"),
                [PushOutcome::Duplicate { id: first_id.clone() }]
            );
            let mut conn = raw(&url).await;
            let tag = format!("{{{prefix}:gone}}");
            let _: () = conn.hdel(format!("{tag}:jobs"), &first_id).await.expect("hdel");
            let _: () = conn.zrem(format!("{tag}:ready"), &first_id).await.expect("zrem");
            let third = keyed("gone", 2, "k", UniqueUntil::Finished);
            assert_eq!(driver.push(vec![third]).await.expect("push"), [PushOutcome::Stored]);
        });
    }

    /// A push of several calls (run concurrently, in no order) still answers a repeated key
    /// as a duplicate of its first job in the push.
    async fn large_push_dedupes_unique_keys(driver: Option<RedisDriver>) {
        let Some(driver) = driver else { return };
        let jobs: Vec<NewJob> = (0..2_500)
            .map(|tag| keyed("bulk", tag, &format!("k{}", tag % 1_200), UniqueUntil::Finished))
            .collect();
        let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
        let outcomes = driver.push(jobs).await.expect("push");
        for (i, outcome) in outcomes.iter().enumerate() {
            let expected = if i < 1_200 {
                PushOutcome::Stored
            } else {
                PushOutcome::Duplicate { id: ids[i % 1_200].clone() }
            };
            assert_eq!(*outcome, expected, "job {i}");
        }
        assert_eq!(driver.stats("bulk", SystemClock.now()).await.expect("stats").pending, 1_200);
    }

    #[test]
    fn large_push_dedupes_unique_keys_on_a_server() {
        orcs_tests::run(async { large_push_dedupes_unique_keys(single().await).await });
    }

    #[test]
    fn large_push_dedupes_unique_keys_on_a_cluster() {
        orcs_tests::run(async { large_push_dedupes_unique_keys(cluster().await).await });
    }

    /// One touch reports on jobs of several queues (in different slots on a cluster): progress
    /// is stored, the cancelled job is answered, a stale lease is skipped.
    async fn touch_spans_queues(driver: Option<RedisDriver>) {
        let Some(driver) = driver else { return };
        driver.push(vec![job("ta", 0), job("tb", 1)]).await.expect("push");
        let queues = names(&["ta", "tb"]);
        let claim = driver.claim(&request(&queues, 2)).await.expect("claim");
        let [a, b] = &claim.jobs[..] else { panic!("two jobs claimed") };
        let now = SystemClock.now();
        assert_eq!(
            driver.cancel(&b.record.id, now).await.expect("cancel"),
            CancelOutcome::Requested
        );
        let mut stale = a.lease.clone();
        stale.token = "stale".to_owned();
        let touches = [
            Touch::new(a.lease.clone(), Some(r#"{"a":1}"#.to_owned())),
            Touch::new(b.lease.clone(), Some(r#"{"b":2}"#.to_owned())),
            Touch::new(stale, Some(r#""stale""#.to_owned())),
        ];
        let cancelled = driver.touch(&touches, now).await.expect("touch");
        assert_eq!(cancelled, std::slice::from_ref(&b.record.id));
        let info = driver.get(&a.record.id, now).await.expect("get").expect("a");
        assert_eq!((info.progress.as_deref(), info.cancel_requested), (Some(r#"{"a":1}"#), false));
        let info = driver.get(&b.record.id, now).await.expect("get").expect("b");
        assert_eq!((info.progress.as_deref(), info.cancel_requested), (Some(r#"{"b":2}"#), true));
        let listed =
            driver.list(&ListRequest::new("tb", JobState::Reserved, 10), now).await.expect("list");
        assert!(listed[0].cancel_requested);
        driver.settle_one(Settle::cancel(b.lease.clone()), now).await.expect("cancel settle");
        assert!(driver.get(&b.record.id, now).await.expect("get").is_none());
        assert_eq!(driver.stats("tb", now).await.expect("stats").cancelled, 1);
        assert!(driver.touch(&[], now).await.expect("an empty touch").is_empty());
    }

    #[test]
    fn touch_spans_queues_on_a_server() {
        orcs_tests::run(async { touch_spans_queues(single().await).await });
    }

    #[test]
    fn touch_spans_queues_on_a_cluster() {
        orcs_tests::run(async { touch_spans_queues(cluster().await).await });
    }

    /// Limits live in the queue's `meta` hash; a settle on a concurrency-limited queue arms its
    /// marker (a slot freed), and the rate limit's start log keeps only the window.
    #[test]
    fn limits_follow_the_documented_layout() {
        orcs_tests::run(async {
            let Some(url) = services::redis::redis_url_or_skip() else { return };
            let prefix = unique_name("orcs-test");
            let config = RedisConfig::from_url(&url).expect("url").with_prefix(prefix.clone());
            let driver = RedisDriver::connect(config).await.expect("connect");
            let tag = format!("{{{prefix}:lim}}");
            let limits = QueueLimits::none().concurrency(3).rate(RateLimit::new(2, 1_000));
            driver.set_limits("lim", &limits).await.expect("limits");
            let mut conn = raw(&url).await;
            let meta: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(format!("{tag}:meta"))
                .arg(&["concurrency", "rate_limit", "rate_period"][..])
                .query_async(&mut conn)
                .await
                .expect("hmget");
            assert_eq!(meta, [Some("3".to_owned()), Some("2".to_owned()), Some("1000".to_owned())]);
            assert_eq!(
                driver.queues().await.expect("queues"),
                ["lim"],
                "a limited queue is listed"
            );
            driver.push((0..5).map(|tag| job("lim", tag)).collect()).await.expect("push");
            let queues = names(&["lim"]);
            let now = SystemClock.now();
            let claim = driver.claim(&ClaimRequest::new(&queues, 5, now)).await.expect("claim");
            assert_eq!(claim.jobs.len(), 2, "the rate allows two");
            let starts: i64 = conn.zcard(format!("{tag}:starts")).await.expect("zcard");
            assert_eq!(starts, 2);
            assert_eq!(claim.next_due, Some(now + 1_000), "the window reopens");
            let _: () = conn.del(format!("{tag}:marker")).await.expect("del");
            driver
                .settle_one(Settle::complete(claim.jobs[0].lease.clone()), now)
                .await
                .expect("complete");
            let marker: i64 = conn.llen(format!("{tag}:marker")).await.expect("llen");
            assert_eq!(marker, 1, "a settle on a limited queue wakes a waiter");
            let later = now + 5_000;
            let claim = driver.claim(&ClaimRequest::new(&queues, 5, later)).await.expect("claim");
            assert_eq!(claim.jobs.len(), 2, "a new window: two more (3 running at most)");
            let starts: Vec<String> =
                conn.zrange(format!("{tag}:starts"), 0, -1).await.expect("zrange");
            assert_eq!(starts.len(), 2, "the log keeps only the window: {starts:?}");
            let claim =
                driver.claim(&ClaimRequest::new(&queues, 5, later + 5_000)).await.expect("claim");
            assert!(claim.jobs.is_empty(), "three running: the concurrency limit holds");
            assert_eq!(claim.next_due, None, "held by concurrency, a settle wakes the worker");
            driver.set_limits("lim", &QueueLimits::none()).await.expect("clear");
            let meta: i64 = conn.hlen(format!("{tag}:meta")).await.expect("hlen");
            assert_eq!(meta, 0);
        });
    }
}
