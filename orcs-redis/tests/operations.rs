//! The Redis driver's own cases for operations (issue #13), beyond the shared suite: a queue
//! forgotten by one process and used again by another that still remembered it, the throughput
//! trim after heartbeats stopped for days, a settle call whose items repeat a job or reuse a
//! completed job's id, the due time a retry notes for the queue's latency, and the eviction
//! policy read at connect. Each runs on a single server and on a cluster, under a fresh key
//! prefix.

use orcs_core::{
    Admin, ClaimRequest, Clock, Driver, Error, JobState, Millis, NewJob, PushOutcome, Settle,
    SystemClock, THROUGHPUT_HORIZON_MS, Throughput, WorkerInfo,
};
use orcs_redis::{RedisConfig, RedisDriver};
use orcs_tests::services::{self, unique_name};
use redis::aio::ConnectionLike;

const MINUTE: Millis = 60_000;

/// Two drivers on one prefix, as two processes would have, a plain connection to the same
/// server or cluster, and the prefix.
async fn pair(url: Option<String>) -> Option<(RedisDriver, RedisDriver, Raw, String)> {
    let url = url?;
    let prefix = unique_name("orcs-test");
    let config = RedisConfig::from_url(&url).expect("url").with_prefix(prefix.clone());
    let a = RedisDriver::connect(config.clone()).await.expect("connect");
    let b = RedisDriver::connect(config).await.expect("connect");
    Some((a, b, Raw::connect(&url).await, prefix))
}

/// A connection of the test's own, to read and write keys as an operator would.
enum Raw {
    Server(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Raw {
    async fn connect(url: &str) -> Self {
        match url.strip_prefix("redis+cluster://") {
            Some(nodes) => {
                let nodes: Vec<String> = nodes.split(',').map(|n| format!("redis://{n}")).collect();
                let client = redis::cluster::ClusterClient::new(nodes).expect("cluster client");
                Self::Cluster(client.get_async_connection().await.expect("connect"))
            }
            None => Self::Server(
                redis::Client::open(url)
                    .expect("client")
                    .get_multiplexed_async_connection()
                    .await
                    .expect("connect"),
            ),
        }
    }

    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> T {
        let result = match self {
            Self::Server(conn) => conn.req_packed_command(cmd).await,
            Self::Cluster(conn) => conn.req_packed_command(cmd).await,
        };
        T::from_redis_value(result.expect("a raw command")).expect("a reply of the type")
    }
}

fn job(queue: &str, at: Millis) -> NewJob {
    NewJob::new(orcs_core::new_job_id(), "PlainJob", queue, "{}", at)
}

fn minute_start() -> Millis {
    let now = SystemClock.now();
    now - now % MINUTE
}

// ---------------------------------------------------------------------------------------------

/// A process that listed a queue does not list it again before each push; when another process
/// forgot the queue meanwhile, the queue is found through the forgotten set once something is
/// stored in it, and moves back to the registry. An old entry of a queue nothing was stored in
/// since goes.
async fn forgotten_queue_comes_back(url: Option<String>) {
    let Some((a, b, mut raw, prefix)) = pair(url).await else { return };
    let now = SystemClock.now();
    a.push(vec![job("q", now)]).await.expect("push");
    a.clear("q", now).await.expect("clear");
    assert!(b.forget_queue("q").await.expect("forget"), "empty and idle");
    assert!(!a.queues().await.expect("queues").contains(&"q".to_owned()), "forgotten");

    // `a` remembers having listed "q": its push does not list it again.
    let id = a.push(vec![job("q", now)]).await.expect("push");
    assert_eq!(id, [PushOutcome::Stored]);
    assert_eq!(b.queues().await.expect("queues"), ["q"], "found through the forgotten set");
    let registry = format!("{{{prefix}}}:queues");
    let forgotten = format!("{{{prefix}}}:forgotten");
    let listed: bool = raw.query(redis::cmd("SISMEMBER").arg(&registry).arg("q")).await;
    let entry: Option<f64> = raw.query(redis::cmd("ZSCORE").arg(&forgotten).arg("q")).await;
    assert!(listed && entry.is_none(), "back in the registry, out of the forgotten set");
    let first = first_pending(&b, "q").await;
    assert!(b.get(&first, now).await.expect("get").is_some(), "get finds it");

    // Forgotten again; nothing stored since, and long ago: its entry goes.
    a.clear("q", now).await.expect("clear");
    assert!(a.forget_queue("q").await.expect("forget"));
    let entry: Option<f64> = raw.query(redis::cmd("ZSCORE").arg(&forgotten).arg("q")).await;
    assert!(entry.is_some(), "forgetting notes when");
    assert!(b.queues().await.expect("queues").is_empty());
    let entry: Option<f64> = raw.query(redis::cmd("ZSCORE").arg(&forgotten).arg("q")).await;
    assert!(entry.is_some(), "a recent entry stays: a process may still remember the queue");
    let _: i64 =
        raw.query(redis::cmd("ZADD").arg(&forgotten).arg(now - 2 * 3_600_000).arg("q")).await;
    assert!(b.queues().await.expect("queues").is_empty());
    let entry: Option<f64> = raw.query(redis::cmd("ZSCORE").arg(&forgotten).arg("q")).await;
    assert!(entry.is_none(), "an entry older than an hour goes");
}

/// The id of the first pending job of `queue`.
async fn first_pending(driver: &RedisDriver, queue: &str) -> String {
    let req = orcs_core::ListRequest::new(queue, JobState::Pending, 1);
    let page = driver.list(&req, SystemClock.now()).await.expect("list");
    page.first().expect("a pending job").job.id.clone()
}

#[test]
fn forgotten_queue_comes_back_on_a_server() {
    orcs_tests::run(forgotten_queue_comes_back(services::redis::redis_url_or_skip()));
}

#[test]
fn forgotten_queue_comes_back_on_a_cluster() {
    orcs_tests::run(forgotten_queue_comes_back(services::redis::redis_cluster_url_or_skip()));
}

/// Heartbeats that stopped for days: the next one drops every bucket past the horizon (the
/// trim reads the hash instead of walking the missed minutes), and moves `from` on.
async fn throughput_trims_after_a_long_pause(url: Option<String>) {
    let Some((driver, _, mut raw, prefix)) = pair(url).await else { return };
    let m = minute_start() - 3 * THROUGHPUT_HORIZON_MS;
    let info = WorkerInfo::new("w", "host", 1, m);
    for minute in [m, m + MINUTE, m + 5 * MINUTE] {
        driver.heartbeat(&info, &[Throughput::new("a", 1, 0)], 15_000, minute).await.expect("beat");
    }
    let later = minute_start();
    driver.heartbeat(&info, &[Throughput::new("a", 2, 1)], 15_000, later).await.expect("beat");
    let history = driver.throughput(Some("a"), m).await.expect("throughput");
    assert_eq!(history.len(), 1, "only the new bucket: {history:?}");
    assert_eq!((history[0].minute, history[0].processed, history[0].failed), (later, 2, 1));
    for key in [format!("{{{prefix}}}:throughput:a"), format!("{{{prefix}}}:throughput")] {
        let fields: Vec<String> = raw.query(redis::cmd("HKEYS").arg(&key)).await;
        let cutoff = later - THROUGHPUT_HORIZON_MS;
        let from = cutoff + (MINUTE - cutoff % MINUTE) % MINUTE;
        let mut fields = fields;
        fields.sort();
        let mut expected = vec![later.to_string(), "from".to_owned()];
        expected.sort();
        assert_eq!(fields, expected, "{key}: one bucket and the trim's start");
        let start: String = raw.query(redis::cmd("HGET").arg(&key).arg("from")).await;
        assert_eq!(start, from.to_string());
        let ttl: i64 = raw.query(redis::cmd("PTTL").arg(&key)).await;
        assert!(ttl > THROUGHPUT_HORIZON_MS && ttl <= THROUGHPUT_HORIZON_MS + 120_000, "{ttl}");
    }
    // A beat without ended jobs writes no bucket.
    driver.heartbeat(&info, &[Throughput::new("a", 0, 0)], 15_000, later + 1).await.expect("beat");
    assert_eq!(driver.throughput(None, m).await.expect("throughput").len(), 1);
}

#[test]
fn throughput_trims_after_a_long_pause_on_a_server() {
    orcs_tests::run(throughput_trims_after_a_long_pause(services::redis::redis_url_or_skip()));
}

#[test]
fn throughput_trims_after_a_long_pause_on_a_cluster() {
    orcs_tests::run(throughput_trims_after_a_long_pause(
        services::redis::redis_cluster_url_or_skip(),
    ));
}

/// One settle call whose plain completions are removed together still settles each item as a
/// call per item would: a repeated lease is stale the second time, and an effect may reuse the
/// id of a job completed earlier in the same call.
async fn settle_items_see_the_items_before_them(url: Option<String>) {
    let Some((driver, _, _, _)) = pair(url).await else { return };
    let now = SystemClock.now();
    let (first, second) = (job("s", now), job("s", now));
    let first_id = first.id.clone();
    driver.push(vec![first, second]).await.expect("push");
    let queues = vec!["s".to_owned()];
    let claim = driver.claim(&ClaimRequest::new(&queues, 2, now)).await.expect("claim");
    let [a, b] = &claim.jobs[..] else { panic!("two jobs: {:?}", claim.jobs.len()) };
    let mut again = job("s", now);
    again.id = first_id.clone();
    let settles = vec![
        Settle::complete(a.lease.clone()),
        Settle::complete(a.lease.clone()),
        Settle::complete(b.lease.clone()).enqueue([again]),
    ];
    let results = driver.settle(&settles, now).await;
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(matches!(results[1], Err(Error::LeaseLost { .. })), "{:?}", results[1]);
    assert!(results[2].is_ok(), "{:?}", results[2]);
    let stats = driver.stats("s", now).await.expect("stats");
    assert_eq!((stats.processed, stats.pending, stats.reserved), (2, 1, 0));
    let info = driver.get(&first_id, now).await.expect("get").expect("the effect job");
    assert_eq!(info.state, JobState::Pending, "the completed job's id was free for the effect");
}

#[test]
fn settle_items_see_the_items_before_them_on_a_server() {
    orcs_tests::run(settle_items_see_the_items_before_them(services::redis::redis_url_or_skip()));
}

#[test]
fn settle_items_see_the_items_before_them_on_a_cluster() {
    orcs_tests::run(settle_items_see_the_items_before_them(
        services::redis::redis_cluster_url_or_skip(),
    ));
}

/// A job a retry made ready again is due from the retry's `run_at` (its history notes it), not
/// from its dispatch: the latency and `get` say so, and a completion removes the note.
async fn latency_counts_a_retried_job_from_its_retry(url: Option<String>) {
    let Some((driver, _, mut raw, prefix)) = pair(url).await else { return };
    let t = minute_start();
    let queued = job("r", t);
    let id = queued.id.clone();
    driver.push(vec![queued]).await.expect("push");
    let queues = vec!["r".to_owned()];
    let claim = driver.claim(&ClaimRequest::new(&queues, 1, t)).await.expect("claim");
    let lease = claim.jobs[0].lease.clone();
    // Settled at t + 10 s, due again at t + 8 s: ready at once.
    driver.settle_one(Settle::retry(lease, t + 8_000, "boom"), t + 10_000).await.expect("retry");
    let stats = driver.stats("r", t + 12_000).await.expect("stats");
    assert_eq!(stats.latency_ms, Some(4_000), "due since the retry's run_at, not since t");
    let info = driver.get(&id, t + 12_000).await.expect("get").expect("pending");
    assert_eq!((info.state, info.job.available_at), (JobState::Pending, t + 8_000));
    assert_eq!(info.errors, ["boom"]);
    let history = format!("{{{prefix}:r}}:history");
    let entry: String = raw.query(redis::cmd("HGET").arg(&history).arg(&id)).await;
    assert_eq!(entry, format!("{}|4:boom", t + 8_000), "the documented history entry");

    let claim = driver.claim(&ClaimRequest::new(&queues, 1, t + 12_000)).await.expect("claim");
    let lease = claim.jobs[0].lease.clone();
    driver.settle_one(Settle::complete(lease), t + 13_000).await.expect("complete");
    let exists: i64 = raw.query(redis::cmd("EXISTS").arg(&history)).await;
    assert_eq!(exists, 0, "a completion removes the entry");
}

#[test]
fn latency_counts_a_retried_job_from_its_retry_on_a_server() {
    orcs_tests::run(latency_counts_a_retried_job_from_its_retry(
        services::redis::redis_url_or_skip(),
    ));
}

#[test]
fn latency_counts_a_retried_job_from_its_retry_on_a_cluster() {
    orcs_tests::run(latency_counts_a_retried_job_from_its_retry(
        services::redis::redis_cluster_url_or_skip(),
    ));
}

/// The driver reads Redis's `maxmemory-policy` (`connect` warns unless it is `noeviction`): a
/// private server's default, then a policy that may evict set on it, and a cluster's (one
/// reply per node).
#[test]
fn eviction_policy_is_read_from_the_server() {
    orcs_tests::run(async {
        let Some(url) = services::redis::private_server_with_or_skip(&[]) else { return };
        let config = RedisConfig::from_url(&url).expect("url").with_prefix(unique_name("orcs"));
        let driver = RedisDriver::connect(config).await.expect("connect");
        assert_eq!(driver.eviction_policy().await.expect("info").as_deref(), Some("noeviction"));
        let mut raw = Raw::connect(&url).await;
        let _: () = raw
            .query(redis::cmd("CONFIG").arg("SET").arg("maxmemory-policy").arg("allkeys-lru"))
            .await;
        assert_eq!(driver.eviction_policy().await.expect("info").as_deref(), Some("allkeys-lru"));
    });
}

#[test]
fn eviction_policy_is_read_from_a_cluster() {
    orcs_tests::run(async {
        let Some((driver, _, _, _)) = pair(services::redis::redis_cluster_url_or_skip()).await
        else {
            return;
        };
        assert_eq!(driver.eviction_policy().await.expect("info").as_deref(), Some("noeviction"));
    });
}
