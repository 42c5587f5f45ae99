//! The conformance cases of operations (issue #13): worker heartbeats, the throughput history,
//! pruning the failed set, queue latency and the error history of a job. The contract is in
//! `orcs-core` (`Admin::heartbeat`, `workers`, `forget_worker`, `throughput`, `prune_failed`,
//! `QueueStats::latency_ms`, `JobInfo::errors`).
//!
//! The cases run on explicit times (drivers take `now` from their caller), so expiries, minute
//! buckets and the 24 h horizon are checked to the millisecond without sleeping; only the last
//! one runs a worker for real, with 50 ms heartbeats.

use std::time::Duration;

use orcs_core::{
    BoxDriver, ClaimRequest, Clock as _, FailedQuery, JobState, MAX_ERROR_HISTORY, Millis, NewJob,
    Prune, Queue, Reserved, Settle, SystemClock, THROUGHPUT_HORIZON_MS, Throughput, Worker,
    WorkerInfo, new_job_id,
};

use crate::eventually;
use crate::jobs::{PlainJob, Script, probe, registry};

// ---------------------------------------------------------------------------------------------
// Helpers.

const MINUTE: Millis = 60_000;

/// The start of the current minute: a time near the wall clock (so drivers with real expiry keys
/// stay in range) on a minute boundary, so the cases know which bucket each time falls in.
fn minute_start() -> Millis {
    let now = SystemClock.now();
    now - now % MINUTE
}

fn worker_info(id: &str, started_at: Millis, queues: &[&str]) -> WorkerInfo {
    let mut info = WorkerInfo::new(id, "host-a", 4242, started_at);
    info.queues = queues.iter().map(|q| (*q).to_owned()).collect();
    info.concurrency = 8;
    info
}

async fn beat(driver: &BoxDriver, info: &WorkerInfo, ended: &[Throughput], ttl: u64, now: Millis) {
    driver.heartbeat(info, ended, ttl, now).await.expect("heartbeat");
}

async fn worker_ids(driver: &BoxDriver, now: Millis) -> Vec<String> {
    driver.workers(now).await.expect("workers").into_iter().map(|w| w.id).collect()
}

/// (minute, processed, failed) of each bucket.
async fn buckets(
    driver: &BoxDriver,
    queue: Option<&str>,
    since: Millis,
) -> Vec<(Millis, u64, u64)> {
    driver
        .throughput(queue, since)
        .await
        .expect("throughput")
        .into_iter()
        .map(|t| {
            if queue.is_none() {
                assert_eq!(t.queue, "", "a sum over every queue names no queue");
            } else {
                assert_eq!(Some(t.queue.as_str()), queue, "a queue's history names it");
            }
            (t.minute, t.processed, t.failed)
        })
        .collect()
}

/// Stores a job of `queue` due at `due` (dispatched at `dispatched`).
async fn push(
    driver: &BoxDriver,
    queue: &str,
    dispatched: Millis,
    due: Millis,
    retries: u32,
) -> String {
    let id = new_job_id();
    let mut job = NewJob::new(id.clone(), "PlainJob", queue, "{}", dispatched);
    job.available_at = due;
    job.max_retries = retries;
    driver.push(vec![job]).await.expect("push");
    id
}

async fn claim(driver: &BoxDriver, queue: &str, now: Millis) -> Reserved {
    let queues = vec![queue.to_owned()];
    let claim = driver.claim(&ClaimRequest::new(&queues, 1, now)).await.expect("claim");
    claim.jobs.into_iter().next().expect("a claimable job")
}

/// Sends `n` jobs of `queue` to the failed set, one per second from `start`; their ids, oldest
/// first.
async fn fail_jobs(driver: &BoxDriver, queue: &str, n: usize, start: Millis) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let at = start + i as Millis * 1000;
        let id = push(driver, queue, at, at, 0).await;
        let held = claim(driver, queue, at).await;
        assert_eq!(held.record.id, id);
        driver.settle_one(Settle::fail(held.lease, format!("broke {i}")), at).await.expect("fail");
        ids.push(id);
    }
    ids
}

async fn failed_ids(driver: &BoxDriver, queue: &str) -> Vec<String> {
    let query = FailedQuery::new(orcs_core::MAX_PAGE).queue(queue);
    driver.failed(&query).await.expect("failed").into_iter().map(|f| f.id).collect()
}

fn prune(queue: Option<&str>, failed_before: Option<Millis>, keep: Option<u64>) -> Prune {
    let mut prune = Prune::new();
    prune.queue = queue.map(str::to_owned);
    prune.failed_before = failed_before;
    prune.keep = keep;
    prune
}

// ---------------------------------------------------------------------------------------------
// Heartbeats.

/// A heartbeat lists the worker as it reported itself, with `last_heartbeat` = the beat's time,
/// until `ttl` passes without another beat; then it drops out (a worker killed with SIGKILL).
/// Workers are listed by start time.
pub async fn heartbeat_lists_a_worker_until_its_ttl_passes(driver: BoxDriver) {
    let t = minute_start();
    let mut older = worker_info("worker-b", t - 5_000, &["high", "default"]);
    older.running = vec!["job-1".to_owned(), "job-2".to_owned()];
    let newer = worker_info("worker-a", t, &["default"]);
    beat(&driver, &newer, &[], 15_000, t).await;
    beat(&driver, &older, &[], 15_000, t + 1_000).await;

    let listed = driver.workers(t + 2_000).await.expect("workers");
    assert_eq!(
        listed.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
        ["worker-b", "worker-a"],
        "workers are listed by start time"
    );
    let b = &listed[0];
    assert_eq!((b.host.as_str(), b.pid, b.concurrency), ("host-a", 4242, 8));
    assert_eq!(b.queues, ["high", "default"]);
    assert_eq!(b.running, ["job-1", "job-2"]);
    assert_eq!((b.started_at, b.last_heartbeat), (t - 5_000, t + 1_000));

    // worker-a beats again at t + 10 s: listed until t + 25 s. worker-b's last beat was at t + 1 s.
    beat(&driver, &newer, &[], 15_000, t + 10_000).await;
    assert_eq!(worker_ids(&driver, t + 15_999).await, ["worker-b", "worker-a"]);
    assert_eq!(worker_ids(&driver, t + 16_001).await, ["worker-a"], "worker-b's ttl passed");
    let a = driver.workers(t + 24_999).await.expect("workers");
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].last_heartbeat, t + 10_000);
    assert!(worker_ids(&driver, t + 25_001).await.is_empty(), "worker-a's ttl passed");
    // Expired entries are gone, not hidden: an earlier `now` does not bring them back.
    assert!(worker_ids(&driver, t + 2_000).await.is_empty(), "expired entries are removed");
}

/// A clean stop removes the worker's entry at once; forgetting it again answers false.
pub async fn forget_worker_removes_its_entry(driver: BoxDriver) {
    let t = minute_start();
    beat(&driver, &worker_info("worker-a", t, &["default"]), &[], 15_000, t).await;
    beat(&driver, &worker_info("worker-b", t, &["default"]), &[], 15_000, t).await;
    assert!(driver.forget_worker("worker-a").await.expect("forget"));
    assert_eq!(worker_ids(&driver, t + 1).await, ["worker-b"]);
    assert!(!driver.forget_worker("worker-a").await.expect("forget"), "already gone");
    assert!(!driver.forget_worker("never-seen").await.expect("forget"));
}

// ---------------------------------------------------------------------------------------------
// Throughput history.

/// Each heartbeat's counts are added to the bucket of its minute; a queue's history has one
/// entry per minute with data, oldest first; over every queue the queues are summed per minute.
pub async fn throughput_is_bucketed_per_minute_and_summed(driver: BoxDriver) {
    let m = minute_start();
    let info = worker_info("worker-a", m, &["a", "b"]);
    beat(
        &driver,
        &info,
        &[Throughput::new("a", 3, 1), Throughput::new("b", 2, 0)],
        15_000,
        m + 5_000,
    )
    .await;
    beat(&driver, &info, &[Throughput::new("a", 1, 0)], 15_000, m + 59_999).await;
    // Another worker, the next minute; nothing the minute after; then the minute after that.
    let other = worker_info("worker-b", m, &["a"]);
    beat(&driver, &other, &[Throughput::new("a", 5, 2)], 15_000, m + MINUTE).await;
    beat(&driver, &info, &[], 15_000, m + 2 * MINUTE + 10).await;
    beat(&driver, &info, &[Throughput::new("b", 0, 4)], 15_000, m + 3 * MINUTE + 1).await;

    let since = m - 10 * MINUTE;
    assert_eq!(
        buckets(&driver, Some("a"), since).await,
        [(m, 4, 1), (m + MINUTE, 5, 2)],
        "queue a: one bucket per minute with data"
    );
    assert_eq!(buckets(&driver, Some("b"), since).await, [(m, 2, 0), (m + 3 * MINUTE, 0, 4)]);
    assert_eq!(
        buckets(&driver, None, since).await,
        [(m, 6, 1), (m + MINUTE, 5, 2), (m + 3 * MINUTE, 0, 4)],
        "every queue, summed per minute"
    );
    assert_eq!(
        buckets(&driver, None, m + MINUTE).await,
        [(m + MINUTE, 5, 2), (m + 3 * MINUTE, 0, 4)],
        "since is inclusive of its minute"
    );
    assert!(buckets(&driver, Some("nope"), since).await.is_empty());
}

/// Buckets older than the 24 h horizon are dropped: a history never reaches further back.
pub async fn throughput_older_than_the_horizon_is_dropped(driver: BoxDriver) {
    let m = minute_start() - THROUGHPUT_HORIZON_MS;
    let info = worker_info("worker-a", m, &["a"]);
    beat(&driver, &info, &[Throughput::new("a", 7, 0)], 15_000, m).await;
    beat(&driver, &info, &[Throughput::new("a", 1, 1)], 15_000, m + 2 * MINUTE).await;
    assert_eq!(buckets(&driver, Some("a"), m).await, [(m, 7, 0), (m + 2 * MINUTE, 1, 1)]);

    // 24 h and 1.5 minutes later the first bucket is past the horizon, the second inside it.
    let later = m + THROUGHPUT_HORIZON_MS + MINUTE + 30_000;
    let bucket = later - later % MINUTE;
    beat(&driver, &info, &[Throughput::new("a", 2, 0)], 15_000, later).await;
    assert_eq!(
        buckets(&driver, Some("a"), m).await,
        [(m + 2 * MINUTE, 1, 1), (bucket, 2, 0)],
        "the bucket older than 24 h is dropped"
    );
    assert_eq!(buckets(&driver, None, m).await, [(m + 2 * MINUTE, 1, 1), (bucket, 2, 0)]);
}

// ---------------------------------------------------------------------------------------------
// Pruning the failed set.

/// `prune_failed` deletes failed jobs that failed before a time, or beyond the newest N, of one
/// queue or of every queue, returns how many, and keeps the failed counters right.
pub async fn prune_failed_deletes_by_age_and_by_count(driver: BoxDriver) {
    let t = minute_start();
    let a = fail_jobs(&driver, "a", 5, t).await; // failed at t, t+1 s, ..., t+4 s
    let b = fail_jobs(&driver, "b", 3, t + 5_000).await; // at t+5 s, t+6 s, t+7 s
    assert_eq!(driver.prune_failed(&Prune::new()).await.expect("prune"), 0, "no rule, no prune");

    // By age, one queue: a[0] and a[1] failed before t + 2 s.
    let pruned =
        driver.prune_failed(&prune(Some("a"), Some(t + 2_000), None)).await.expect("prune");
    assert_eq!(pruned, 2);
    assert_eq!(failed_ids(&driver, "a").await, a[2..]);
    assert_eq!(failed_ids(&driver, "b").await, b, "another queue is left alone");
    assert_eq!(driver.stats("a", t + 10_000).await.expect("stats").failed, 3);
    assert!(driver.get(&a[0], t + 10_000).await.expect("get").is_none(), "a pruned job is gone");

    // By count, one queue: keep the newest one of a.
    assert_eq!(driver.prune_failed(&prune(Some("a"), None, Some(1))).await.expect("prune"), 2);
    assert_eq!(failed_ids(&driver, "a").await, a[4..]);
    assert_eq!(driver.prune_failed(&prune(Some("a"), None, Some(1))).await.expect("prune"), 0);

    // Every queue, both rules, each deleting what it names: of the 4 left (a[4] at t+4 s, b at
    // t+5..t+7 s), the age rule names a[4] and b[0], keeping 3 names a[4].
    let pruned = driver.prune_failed(&prune(None, Some(t + 5_500), Some(3))).await.expect("prune");
    assert_eq!(pruned, 2, "a job goes if either rule names it");
    assert!(failed_ids(&driver, "a").await.is_empty());
    assert_eq!(failed_ids(&driver, "b").await, b[1..]);
    // Now the count rule names more than the age rule.
    let pruned = driver.prune_failed(&prune(None, Some(t), Some(1))).await.expect("prune");
    assert_eq!(pruned, 1);
    assert_eq!(failed_ids(&driver, "b").await, b[2..], "the newest over every queue is kept");
    assert_eq!(driver.stats("a", t + 10_000).await.expect("stats").failed, 0);
    assert_eq!(driver.stats("b", t + 10_000).await.expect("stats").failed, 1);
    assert_eq!(
        driver.stats("b", t + 10_000).await.expect("stats").failed_total,
        3,
        "a total stays"
    );
}

// ---------------------------------------------------------------------------------------------
// Latency and error history.

/// `latency_ms` is `now` minus the due time of the oldest due pending job: a delayed job does not
/// count until it is due, and then counts from its due time, not from its dispatch. No due job,
/// no latency.
pub async fn latency_counts_due_jobs_from_their_due_time(driver: BoxDriver) {
    let t = minute_start();
    let latency = |now: Millis| {
        let driver = driver.clone();
        async move { driver.stats("q", now).await.expect("stats").latency_ms }
    };
    assert_eq!(latency(t).await, None, "an empty queue has no latency");
    push(&driver, "q", t, t + 10_000, 0).await; // delayed 10 s
    assert_eq!(latency(t + 5_000).await, None, "a delayed job does not count before it is due");
    assert_eq!(latency(t + 10_000).await, Some(0));
    assert_eq!(latency(t + 15_000).await, Some(5_000), "measured from the due time");

    // A job ready at once but dispatched later is younger: the delayed one still leads. A
    // higher-priority job does not hide the older one either.
    let mut young = NewJob::new(new_job_id(), "PlainJob", "q", "{}", t + 12_000);
    young.priority = 10;
    driver.push(vec![young]).await.expect("push");
    assert_eq!(latency(t + 15_000).await, Some(5_000));
    let queues = vec!["q".to_owned()];
    let first = driver.claim(&ClaimRequest::new(&queues, 1, t + 15_000)).await.expect("claim");
    assert_eq!(first.jobs.len(), 1);
    assert_eq!(first.jobs[0].record.priority, 10, "the high-priority job is claimed first");
    assert_eq!(latency(t + 16_000).await, Some(6_000), "the old due job still waits");
    let second = claim(&driver, "q", t + 16_000).await;
    assert_eq!(latency(t + 16_000).await, None, "nothing due is left");
    driver.settle_one(Settle::complete(second.lease), t + 16_000).await.expect("complete");
    assert_eq!(latency(t + 20_000).await, None);
}

/// Each retried or failed attempt's error is kept with the job, oldest first, the latest
/// `MAX_ERROR_HISTORY` (10) of them, and the history goes with it into the failed set.
pub async fn error_history_is_kept_through_retries_into_the_failed_set(driver: BoxDriver) {
    let t = minute_start();
    let attempts = MAX_ERROR_HISTORY + 2; // 11 retries, then a failure for good
    let id = push(&driver, "q", t, t, (attempts - 1) as u32).await;
    let mut now = t;
    for n in 1..=attempts {
        let held = claim(&driver, "q", now).await;
        assert_eq!((held.record.id.as_str(), held.record.attempt), (id.as_str(), n as u32));
        let error = format!("error {n}");
        let settle = if n < attempts {
            Settle::retry(held.lease, now + 1_000, error)
        } else {
            Settle::fail(held.lease, error)
        };
        driver.settle_one(settle, now).await.expect("settle");
        if n == 2 {
            let info = driver.get(&id, now).await.expect("get").expect("a delayed job");
            assert_eq!(info.state, JobState::Delayed);
            assert_eq!(info.errors, ["error 1", "error 2"], "a waiting job shows its history");
        }
        now += 1_000;
    }
    let info = driver.get(&id, now).await.expect("get").expect("a failed job");
    assert_eq!(info.state, JobState::Failed);
    let expected: Vec<String> =
        (attempts - MAX_ERROR_HISTORY + 1..=attempts).map(|n| format!("error {n}")).collect();
    assert_eq!(info.errors, expected, "the latest 10 errors, oldest first");
    assert_eq!(info.last_error.as_deref(), Some(format!("error {attempts}").as_str()));

    // A job that never failed has no history.
    let fresh = push(&driver, "q", now, now, 0).await;
    let info = driver.get(&fresh, now).await.expect("get").expect("a pending job");
    assert!(info.errors.is_empty());
}

// ---------------------------------------------------------------------------------------------
// The worker's side.

/// A running worker registers at once, reports the jobs it runs and, beat by beat, the jobs that
/// ended (completed or failed for good) on each queue; a clean stop removes its entry.
pub async fn a_running_worker_is_listed_with_its_jobs_and_throughput(driver: BoxDriver) {
    let queue = Queue::from_driver(driver.clone());
    let (key, _) = probe();
    for _ in 0..2 {
        queue.dispatch(PlainJob(Script::ok(&key))).await.expect("dispatch");
    }
    let broken = Script { permanent: true, ..Script::ok(&key) };
    queue.dispatch(PlainJob(broken)).await.expect("dispatch");
    let slow_script = Script { work_ms: 10_000, ..Script::ok(&key) };
    let slow = queue.dispatch(PlainJob(slow_script)).await.expect("dispatch");
    let started = SystemClock.now();
    let handle = Worker::new(queue.clone(), registry())
        .queues(["default"])
        .concurrency(4)
        .heartbeat_interval(Duration::from_millis(50))
        .shutdown_timeout(Duration::from_millis(50))
        .spawn();

    let listed = eventually(Duration::from_secs(10), || {
        let driver = driver.clone();
        let slow = slow.clone();
        async move {
            let workers = driver.workers(SystemClock.now()).await.expect("workers");
            workers.len() == 1 && workers[0].running == [slow]
        }
    })
    .await;
    assert!(listed, "the worker is listed, running the slow job");
    let worker = driver.workers(SystemClock.now()).await.expect("workers").remove(0);
    assert_eq!((worker.pid, worker.concurrency), (std::process::id(), 4));
    assert_eq!(worker.queues, ["default"]);
    assert!(!worker.host.is_empty() && !worker.id.is_empty());
    assert!(worker.started_at >= started - 1_000 && worker.last_heartbeat >= worker.started_at);

    let since = started - 2 * MINUTE;
    let counted = eventually(Duration::from_secs(10), || {
        let driver = driver.clone();
        async move {
            let history = driver.throughput(Some("default"), since).await.expect("throughput");
            let sum = |f: fn(&Throughput) -> u64| history.iter().map(f).sum::<u64>();
            (sum(|t| t.processed), sum(|t| t.failed)) == (2, 1)
        }
    })
    .await;
    assert!(counted, "2 completed and 1 failed job reach the throughput history");

    handle.shutdown().await.expect("shutdown");
    let left = driver.workers(SystemClock.now()).await.expect("workers");
    assert!(left.is_empty(), "a clean stop removes the worker: {left:?}");
}
