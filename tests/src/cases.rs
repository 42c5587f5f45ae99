//! The conformance cases, one per behaviour of SPEC section 3. Each takes a fresh driver.
//!
//! Time-dependent cases run on a [`ManualClock`] (drivers take `now` from their caller), so
//! delays, backoff and leases are checked to the millisecond without sleeping; only the cases about
//! waking up, timeouts and shutdown use short real durations.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use orcs_core::{
    BoxDriver, Clock, DispatchOptions, Error, FailedJob, FailedQuery, JobDefaults, JobState, Lease,
    ListRequest, ManualClock, Millis, NewJob, Outcome, PushOutcome, Queue, QueueLimits, QueueStats,
    Reserved, Settle, SystemClock, UniqueUntil, Worker, WorkerEvent,
};

use crate::eventually;
use crate::jobs::{PlainJob, RetryJob, Script, ShortTimeoutJob, probe, registry};

// ---------------------------------------------------------------------------------------------
// Helpers: a signature change touches these, not the cases.

const DEFAULT_TIMEOUT_MS: u64 = 60_000;
const GRACE_MS: u64 = 5_000;

fn names(queues: &[&str]) -> Vec<String> {
    queues.iter().map(|q| (*q).to_owned()).collect()
}

fn system_queue(driver: &BoxDriver) -> Queue {
    Queue::from_driver(Arc::clone(driver))
}

fn manual_queue(driver: &BoxDriver) -> (Queue, ManualClock) {
    let clock = ManualClock::starting_now();
    (Queue::from_driver(Arc::clone(driver)).with_clock(clock.clone()), clock)
}

fn worker(queue: &Queue, queues: &[&str]) -> Worker {
    Worker::new(queue.clone(), registry())
        .queues(names(queues))
        .timeout(Duration::from_millis(DEFAULT_TIMEOUT_MS))
        .lease_grace(Duration::from_millis(GRACE_MS))
        // The cases check the exact backoff schedule; jitter has its own case.
        .retry_jitter(false)
}

async fn claim(queue: &Queue, queues: &[&str], max: usize) -> Vec<Reserved> {
    let queues = names(queues);
    claim_at(queue.driver(), &queues, max, queue.now()).await.jobs
}

/// A claim of up to `max` jobs of `queues` at `now`, with the suite's timeout and grace.
fn request_at(queues: &[String], max: usize, now: Millis) -> orcs_core::ClaimRequest<'_> {
    let mut request = orcs_core::ClaimRequest::new(queues, max, now);
    request.default_timeout_ms = DEFAULT_TIMEOUT_MS;
    request.grace_ms = GRACE_MS;
    request
}

/// A claim of up to 10 jobs of `queues` at `now` by a worker whose settling jobs `settling`
/// names ([`orcs_core::ClaimRequest::settling`]).
async fn claim_settling_at(
    driver: &BoxDriver,
    queues: &[String],
    settling: &dyn orcs_core::Settling,
    now: Millis,
) -> Vec<Reserved> {
    let mut request = request_at(queues, 10, now);
    request.settling = Some(settling);
    driver.claim(&request).await.expect("claim").jobs
}

async fn claim_at(
    driver: &BoxDriver,
    queues: &[String],
    max: usize,
    now: Millis,
) -> orcs_core::Claim {
    driver.claim(&request_at(queues, max, now)).await.expect("claim")
}

/// The whole failed set (of one queue), oldest first.
async fn failed_jobs(queue: &Queue, of: Option<&str>) -> Vec<FailedJob> {
    let mut query = FailedQuery::new(orcs_core::MAX_PAGE);
    query.queue = of.map(str::to_owned);
    queue.failed_jobs(&query).await.expect("failed")
}

async fn complete(driver: &BoxDriver, lease: &Lease, now: Millis) -> orcs_core::Result<()> {
    driver.settle_one(Settle::complete(lease.clone()), now).await
}

async fn retry(
    driver: &BoxDriver,
    lease: &Lease,
    at: Millis,
    error: &str,
    now: Millis,
) -> orcs_core::Result<()> {
    driver.settle_one(Settle::retry(lease.clone(), at, error), now).await
}

async fn fail(
    driver: &BoxDriver,
    lease: &Lease,
    error: &str,
    now: Millis,
) -> orcs_core::Result<()> {
    driver.settle_one(Settle::fail(lease.clone(), error), now).await
}

async fn release(driver: &BoxDriver, lease: &Lease, now: Millis) -> orcs_core::Result<()> {
    driver.settle_one(Settle::release(lease.clone(), now), now).await
}

async fn claim_one(queue: &Queue, queues: &[&str]) -> Option<Reserved> {
    claim(queue, queues, 1).await.into_iter().next()
}

async fn work_one(queue: &Queue, queues: &[&str]) -> Option<WorkerEvent> {
    worker(queue, queues).work_one().await.expect("work_one")
}

/// Asserts a queue's counters as (pending, delayed, reserved, failed, processed, failed_total).
async fn check_stats(
    queue: &Queue,
    name: &str,
    expected: (u64, u64, u64, u64, u64, u64),
    context: &str,
) {
    let s = queue.stats(name).await.expect("stats");
    let actual = (s.pending, s.delayed, s.reserved, s.failed, s.processed, s.failed_total);
    assert_eq!(
        actual, expected,
        "{context}: counters of {name:?} as (pending, delayed, reserved, failed, processed, failed_total)"
    );
}

async fn stats(queue: &Queue, name: &str) -> QueueStats {
    queue.stats(name).await.expect("stats")
}

fn check_lease_lost(result: orcs_core::Result<impl std::fmt::Debug>, what: &str) {
    match result {
        Err(Error::LeaseLost { .. }) => {}
        other => {
            panic!("{what} with a stale lease should be rejected with LeaseLost, got {other:?}")
        }
    }
}

fn plain(probe: &str, tag: u64) -> PlainJob {
    PlainJob(Script { tag, ..Script::ok(probe) })
}

fn tag_of(reserved: &Reserved) -> u64 {
    let value: serde_json::Value =
        serde_json::from_str(&reserved.record.payload).expect("payload is JSON");
    value["tag"].as_u64().expect("payload has a tag")
}

// ---------------------------------------------------------------------------------------------
// 1. Ids

/// Every job gets a unique id at dispatch, and ids sort in dispatch order.
pub async fn ids_are_unique_and_time_sortable(driver: BoxDriver) {
    let queue = system_queue(&driver);
    let (key, _) = probe();
    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(queue.dispatch(plain(&key, i)).await.expect("dispatch"));
    }
    ids.extend(
        queue.dispatch_many((100..200).map(|i| plain(&key, i))).await.expect("dispatch_many"),
    );
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 200, "ids are unique");
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, ids, "ids sort in dispatch order");
    assert!(ids.iter().all(|id| id.len() == 26), "ids are 26-character ULIDs: {:?}", &ids[..2]);
    let claimed: Vec<String> =
        claim(&queue, &["default"], 200).await.into_iter().map(|r| r.record.id).collect();
    assert_eq!(claimed, ids, "the stored ids are the returned ids, claimed in dispatch order");
}

// ---------------------------------------------------------------------------------------------
// 2. Order

/// Among ready jobs of a queue, the highest priority is claimed first.
pub async fn higher_priority_runs_first(driver: BoxDriver) {
    let queue = system_queue(&driver);
    let (key, _) = probe();
    for (tag, priority) in [(0, 1), (1, 10), (2, 5), (3, -3), (4, 10), (5, i32::MAX), (6, i32::MIN)]
    {
        queue
            .dispatch_with(plain(&key, tag), DispatchOptions::new().priority(priority))
            .await
            .expect("dispatch");
    }
    let mut order = Vec::new();
    while let Some(reserved) = claim_one(&queue, &["default"]).await {
        order.push((reserved.record.priority, tag_of(&reserved)));
    }
    assert_eq!(order, [(i32::MAX, 5), (10, 1), (10, 4), (5, 2), (1, 0), (-3, 3), (i32::MIN, 6)]);
}

/// Jobs of equal priority are claimed in dispatch order, including delayed jobs once due.
pub async fn equal_priorities_run_in_dispatch_order(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    queue.dispatch_after(Duration::from_secs(1), plain(&key, 0)).await.expect("dispatch");
    for tag in 1..50 {
        queue.dispatch(plain(&key, tag)).await.expect("dispatch");
    }
    clock.advance(Duration::from_secs(1));
    let tags: Vec<u64> = claim(&queue, &["default"], 10).await.iter().map(tag_of).collect();
    assert_eq!(tags, (0..10).collect::<Vec<_>>(), "FIFO by dispatch, the due delayed job first");
    let mut rest = Vec::new();
    while let Some(reserved) = claim_one(&queue, &["default"]).await {
        rest.push(tag_of(&reserved));
    }
    assert_eq!(rest, (10..50).collect::<Vec<_>>());
}

/// A worker given `high,default,low` always takes from the first non-empty queue.
pub async fn worker_takes_queues_in_strict_order(driver: BoxDriver) {
    let queue = system_queue(&driver);
    let (key, _) = probe();
    let mut tag = 0;
    for name in ["low", "default", "high"] {
        for _ in 0..3 {
            queue
                .dispatch_with(plain(&key, tag), DispatchOptions::new().queue(name))
                .await
                .expect("dispatch");
            tag += 1;
        }
    }
    let order = ["high", "default", "low"];
    let first = claim(&queue, &order, 4).await;
    let got: Vec<(&str, u64)> =
        first.iter().map(|r| (r.record.queue.as_str(), tag_of(r))).collect();
    assert_eq!(
        got,
        [("high", 6), ("high", 7), ("high", 8), ("default", 3)],
        "fills from the next queue only when one is empty"
    );
    queue
        .dispatch_with(plain(&key, 100), DispatchOptions::new().queue("high"))
        .await
        .expect("dispatch");
    let next = claim_one(&queue, &order).await.expect("a job");
    assert_eq!(
        (next.record.queue.as_str(), tag_of(&next)),
        ("high", 100),
        "a new high job goes before default"
    );
    let rest: Vec<(String, u64)> = claim(&queue, &order, 10)
        .await
        .iter()
        .map(|r| (r.record.queue.clone(), tag_of(r)))
        .collect();
    let expected: Vec<(String, u64)> =
        [("default", 4), ("default", 5), ("low", 0), ("low", 1), ("low", 2)]
            .map(|(q, t)| (q.to_owned(), t))
            .into();
    assert_eq!(rest, expected);
}

/// Large claims from a backlog over two queues with mixed priorities: each takes exactly the
/// best jobs left, in order (queue order, then priority, then dispatch), and no job twice; a
/// driver that splits or chunks a claim must keep this.
pub async fn large_claims_of_a_backlog_take_the_best_jobs_in_order(driver: BoxDriver) {
    let queue = system_queue(&driver);
    let (key, _) = probe();
    // 60 jobs on "high" (every third of priority 5), then 60 on "low".
    let mut jobs = Vec::new();
    for tag in 0..120u64 {
        let (on, priority) =
            if tag < 60 { ("high", if tag % 3 == 0 { 5 } else { 0 }) } else { ("low", 0) };
        queue
            .dispatch_with(plain(&key, tag), DispatchOptions::new().queue(on).priority(priority))
            .await
            .expect("dispatch");
        jobs.push((on, priority, tag));
    }
    // The order one claim at a time would give: queue, then priority, then dispatch.
    jobs.sort_by_key(|&(on, priority, tag)| (on != "high", std::cmp::Reverse(priority), tag));
    let best: Vec<(String, u64)> = jobs.iter().map(|&(on, _, tag)| (on.to_owned(), tag)).collect();
    let order = ["high", "low"];
    let mut taken: Vec<(String, u64)> = Vec::new();
    // Full claims (a backlog), then one that takes the rest and comes back short.
    for (max, expect) in [(16, 16), (32, 32), (50, 50), (64, 22)] {
        let got: Vec<(String, u64)> = claim(&queue, &order, max)
            .await
            .iter()
            .map(|r| (r.record.queue.clone(), tag_of(r)))
            .collect();
        assert_eq!(got.len(), expect, "a claim of {max} with {} jobs left", 120 - taken.len());
        let from = taken.len();
        assert_eq!(
            got,
            best[from..from + expect],
            "a claim of {max}: the best jobs left, in order"
        );
        taken.extend(got);
    }
    assert!(claim(&queue, &order, 64).await.is_empty(), "every job was claimed once");
}

// ---------------------------------------------------------------------------------------------
// 3. Delays

/// A delayed job is invisible to workers until its delay has passed, to the millisecond.
pub async fn delayed_job_is_invisible_until_due(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    let start = clock.now();
    let id = queue.dispatch_after(Duration::from_secs(30), plain(&key, 0)).await.expect("dispatch");
    check_stats(&queue, "default", (0, 1, 0, 0, 0, 0), "after a delayed dispatch").await;

    let queues = names(&["default"]);
    let early = claim_at(&driver, &queues, 1, start + 29_999).await;
    assert!(early.jobs.is_empty(), "not claimable 1 ms before it is due");
    assert_eq!(early.next_due, Some(start + 30_000), "the claim reports when the next job is due");

    clock.set(start + 30_000);
    check_stats(&queue, "default", (1, 0, 0, 0, 0, 0), "once due, before any claim").await;
    let due = claim_at(&driver, &queues, 1, start + 30_000).await;
    assert_eq!(due.jobs.len(), 1, "claimable exactly when due");
    assert_eq!(due.jobs[0].record.id, id);
    assert_eq!(due.next_due, None);
}

/// A running worker starts a delayed job within 50 ms after it becomes due, not at its next poll.
pub async fn delayed_job_starts_within_50ms_of_due(driver: BoxDriver) {
    let queue = system_queue(&driver);
    let (key, probe) = probe();
    let handle = worker(&queue, &["default"]).concurrency(4).sleep(Duration::from_secs(30)).spawn();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Five jobs due 150 ms apart: each must wake the idle worker on time. One late sample on a
    // loaded machine is noise; the median says whether the worker wakes for due jobs or polls.
    let mut due = Vec::new();
    for i in 0..5_u64 {
        let delay = 300 + 150 * i;
        let at_least = SystemClock.now() + delay as i64;
        let id = queue
            .dispatch_after(Duration::from_millis(delay), plain(&key, i))
            .await
            .expect("dispatch");
        due.push((id, at_least, SystemClock.now() + delay as i64));
    }
    assert!(
        eventually(Duration::from_secs(5), || async { probe.started() == 5 }).await,
        "the delayed jobs ran"
    );
    handle.shutdown().await.expect("worker");
    let mut lateness = Vec::new();
    for (id, at_least, at_most) in &due {
        let started = probe.first_start(id).expect("started");
        assert!(started >= *at_least, "started {} ms before it was due", at_least - started);
        lateness.push(started - at_most);
    }
    lateness.sort_unstable();
    assert!(lateness[2] <= 50, "median lateness {} ms (limit 50): {lateness:?}", lateness[2]);
    assert!(lateness[4] < 1_000, "every job well before the 30 s poll: {lateness:?}");
}

/// A dispatch wakes an idle worker at once instead of waiting for its next poll.
pub async fn dispatch_wakes_an_idle_worker(driver: BoxDriver) {
    let queue = system_queue(&driver);
    let (key, probe) = probe();
    let handle = worker(&queue, &["default"]).sleep(Duration::from_secs(30)).spawn();
    let mut waits = Vec::new();
    // Five rounds, the worker idle before each: the median is the wake-up time, robust to one
    // slow sample on a loaded machine.
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let sent = SystemClock.now();
        let id = queue.dispatch(plain(&key, i)).await.expect("dispatch");
        let count = i as usize + 1;
        assert!(
            eventually(Duration::from_secs(3), || async { probe.started() == count }).await,
            "the job ran"
        );
        waits.push(probe.first_start(&id).expect("started") - sent);
    }
    handle.shutdown().await.expect("worker");
    waits.sort_unstable();
    assert!(
        waits[2] <= 50,
        "an idle worker's median wake-up took {} ms (limit 50): {waits:?}",
        waits[2]
    );
    assert!(waits[4] < 1_000, "every job well before the 30 s poll: {waits:?}");
}

// ---------------------------------------------------------------------------------------------
// 4. Claiming

/// Claims are atomic: concurrent claimers never hold the same job.
pub async fn concurrent_claimers_never_share_a_job(driver: BoxDriver) {
    let queue = system_queue(&driver);
    let (key, _) = probe();
    queue.dispatch_many((0..300).map(|i| plain(&key, i))).await.expect("dispatch");
    let mut claimers = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let queue = queue.clone();
        claimers.spawn(async move {
            let mut held = Vec::new();
            loop {
                let batch = claim(&queue, &["default"], 7).await;
                if batch.is_empty() {
                    return held;
                }
                held.extend(batch.into_iter().map(|r| (r.record.id, r.lease.token)));
            }
        });
    }
    let mut ids = HashSet::new();
    let mut tokens = HashSet::new();
    let mut total = 0;
    while let Some(held) = claimers.join_next().await {
        for (id, token) in held.expect("claimer") {
            total += 1;
            assert!(ids.insert(id.clone()), "job {id} was claimed twice");
            assert!(tokens.insert(token), "a token was handed out twice");
        }
    }
    assert_eq!(total, 300, "every job was claimed exactly once");
    check_stats(&queue, "default", (0, 0, 300, 0, 0, 0), "all claimed").await;
}

/// A claim sets a lease of timeout + grace and a token that differs from every earlier claim's.
pub async fn claim_gives_a_lease_and_a_fresh_token(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    let now = clock.now();
    queue.dispatch(RetryJob(Script::ok(&key))).await.expect("dispatch");
    queue.dispatch(plain(&key, 0)).await.expect("dispatch");
    let with_timeout = claim_one(&queue, &["default"]).await.expect("a job");
    assert_eq!(with_timeout.record.name, "RetryJob");
    assert_eq!(with_timeout.record.attempt, 1);
    assert_eq!(
        with_timeout.lease.expires_at,
        now + 30_000 + 5_000,
        "the job's own 30 s timeout + 5 s grace"
    );
    let without = claim_one(&queue, &["default"]).await.expect("a job");
    assert_eq!(
        without.lease.expires_at,
        now + 60_000 + 5_000,
        "the worker's default timeout + grace"
    );
    assert_ne!(with_timeout.lease.token, without.lease.token);

    release(&driver, &with_timeout.lease, now).await.expect("release");
    let again = claim_one(&queue, &["default"]).await.expect("the released job");
    assert_eq!(again.record.id, with_timeout.record.id);
    assert_ne!(again.lease.token, with_timeout.lease.token, "a new claim gets a new token");
}

// ---------------------------------------------------------------------------------------------
// 5. Fencing

/// Once a lease expired and the job was claimed again, every transition with the old token is
/// rejected and changes nothing; the new holder completes the job exactly once.
pub async fn stale_token_transitions_are_rejected(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    queue.dispatch(RetryJob(Script::ok(&key))).await.expect("dispatch");
    let old = claim_one(&queue, &["default"]).await.expect("a job");
    clock.set(old.lease.expires_at);
    assert_eq!(driver.recover(&names(&["default"]), clock.now()).await.expect("recover"), 1);
    let new = claim_one(&queue, &["default"]).await.expect("the recovered job");
    assert_eq!(new.record.id, old.record.id);
    assert_eq!(new.record.attempt, 2);

    let now = clock.now();
    let stale: &Lease = &old.lease;
    check_lease_lost(complete(&driver, stale, now).await, "complete");
    check_lease_lost(retry(&driver, stale, now, "stale", now).await, "retry");
    check_lease_lost(fail(&driver, stale, "stale", now).await, "fail");
    check_lease_lost(release(&driver, stale, now).await, "release");
    check_lease_lost(driver.extend(stale, now + 1_000_000, now).await, "extend");
    check_stats(&queue, "default", (0, 0, 1, 0, 0, 0), "after stale transitions").await;
    assert!(failed_jobs(&queue, None).await.is_empty(), "a stale fail moved nothing");

    complete(&driver, &new.lease, now).await.expect("the current holder completes");
    check_lease_lost(complete(&driver, &new.lease, now).await, "a second complete");
    check_stats(&queue, "default", (0, 0, 0, 0, 1, 0), "completed once").await;
}

/// Settling several jobs at once settles each lease on its own: fresh ones complete (over
/// several queues), a stale one is rejected and changes nothing, and `processed` counts each once.
pub async fn settle_batch_settles_each_lease_on_its_own(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    queue.dispatch(RetryJob(Script::ok(&key))).await.expect("dispatch");
    let old = claim_one(&queue, &["default"]).await.expect("a job");
    clock.set(old.lease.expires_at);
    assert_eq!(driver.recover(&names(&["default"]), clock.now()).await.expect("recover"), 1);
    let current = claim_one(&queue, &["default"]).await.expect("the recovered job");
    for (tag, name) in [(1, "default"), (2, "other")] {
        queue
            .dispatch_with(plain(&key, tag), DispatchOptions::new().queue(name))
            .await
            .expect("dispatch");
    }
    let a = claim_one(&queue, &["default"]).await.expect("a second default job");
    let b = claim_one(&queue, &["other"]).await.expect("a job on other");

    let leases = [a.lease.clone(), old.lease.clone(), b.lease.clone(), current.lease.clone()];
    let settles: Vec<Settle> = leases.iter().cloned().map(Settle::complete).collect();
    let results = driver.settle(&settles, clock.now()).await;
    assert_eq!(results.len(), 4, "one result per lease");
    assert!(results[0].is_ok(), "fresh lease on default: {:?}", results[0]);
    assert!(
        matches!(results[1], Err(Error::LeaseLost { .. })),
        "the stale lease is rejected: {:?}",
        results[1]
    );
    assert!(results[2].is_ok(), "fresh lease on other: {:?}", results[2]);
    assert!(results[3].is_ok(), "the current holder: {:?}", results[3]);
    check_stats(&queue, "default", (0, 0, 0, 0, 2, 0), "two completed on default").await;
    check_stats(&queue, "other", (0, 0, 0, 0, 1, 0), "one completed on other").await;

    let again = driver.settle(&settles[..1], clock.now()).await;
    assert!(matches!(again[0], Err(Error::LeaseLost { .. })), "a second complete: {:?}", again[0]);
    check_stats(&queue, "default", (0, 0, 0, 0, 2, 0), "still two").await;
}

// ---------------------------------------------------------------------------------------------
// 6. Retries

/// A failed attempt n is retried after RETRY_DELAY * 2^(n-1): 60 s, 120 s, 240 s; the job keeps its
/// id and the attempt number increases.
pub async fn retry_backoff_doubles_from_retry_delay(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, probe) = probe();
    let id = queue
        .dispatch(RetryJob(Script { fail_attempts: 3, ..Script::ok(&key) }))
        .await
        .expect("dispatch");
    for (attempt, delay_s) in [(1u32, 60i64), (2, 120), (3, 240)] {
        let now = clock.now();
        let event = work_one(&queue, &["default"]).await.expect("a job is ready");
        assert_eq!((event.id.as_str(), event.attempt), (id.as_str(), attempt));
        match event.outcome {
            Outcome::Retry { at, .. } => {
                assert_eq!(at, now + delay_s * 1000, "retry after attempt {attempt}")
            }
            other => panic!("attempt {attempt} should be retried, got {other:?}"),
        }
        check_stats(&queue, "default", (0, 1, 0, 0, 0, 0), "waiting for the retry").await;
        clock.set(now + delay_s * 1000 - 1);
        assert!(work_one(&queue, &["default"]).await.is_none(), "not claimable 1 ms early");
        clock.set(now + delay_s * 1000);
    }
    let last = work_one(&queue, &["default"]).await.expect("the 4th attempt");
    assert_eq!((last.attempt, last.outcome), (4, Outcome::Done));
    assert_eq!(probe.attempts_of(&id), [1, 2, 3, 4]);
    check_stats(&queue, "default", (0, 0, 0, 0, 1, 0), "done").await;
}

/// MAX_RETRIES = 3 gives exactly 4 attempts, then one `failed` call.
pub async fn max_retries_3_gives_4_attempts_and_one_failed_call(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, probe) = probe();
    let id = queue
        .dispatch(RetryJob(Script { fail_attempts: 100, ..Script::ok(&key) }))
        .await
        .expect("dispatch");
    let mut outcomes = Vec::new();
    while let Some(event) = work_one(&queue, &["default"]).await {
        outcomes.push(event.outcome.label());
        clock.advance(Duration::from_secs(3600));
    }
    assert_eq!(outcomes, ["RETRY", "RETRY", "RETRY", "FAIL"]);
    assert_eq!(probe.attempts_of(&id), [1, 2, 3, 4]);
    assert_eq!(probe.failed_calls.load(Ordering::SeqCst), 1, "failed() runs once");
    assert_eq!(
        probe.failed_error.lock().expect("lock").as_deref(),
        Some("failure requested on attempt 4")
    );
    check_stats(&queue, "default", (0, 0, 0, 1, 0, 1), "in the failed set").await;
}

/// A permanent error skips the remaining retries.
pub async fn permanent_error_skips_retries(driver: BoxDriver) {
    let (queue, _clock) = manual_queue(&driver);
    let (key, probe) = probe();
    queue
        .dispatch(RetryJob(Script { permanent: true, ..Script::ok(&key) }))
        .await
        .expect("dispatch");
    let event = work_one(&queue, &["default"]).await.expect("a job");
    assert_eq!(event.outcome.label(), "FAIL");
    assert!(work_one(&queue, &["default"]).await.is_none(), "no retry is scheduled");
    assert_eq!(probe.started(), 1);
    assert_eq!(probe.failed_calls.load(Ordering::SeqCst), 1);
    let failed = failed_jobs(&queue, None).await;
    assert_eq!((failed.len(), failed[0].attempts), (1, 1));
    assert_eq!(failed[0].error, "permanent failure requested");
}

// ---------------------------------------------------------------------------------------------
// 7. Timeout

/// An attempt running past its timeout is cancelled and counts as a failed attempt.
pub async fn timeout_cancels_and_counts_a_failed_attempt(driver: BoxDriver) {
    let queue = system_queue(&driver);
    let (key, probe) = probe();
    queue
        .dispatch(ShortTimeoutJob(Script { work_ms: 30_000, ..Script::ok(&key) }))
        .await
        .expect("dispatch");
    let started = Instant::now();
    let first = work_one(&queue, &["default"]).await.expect("a job");
    assert!(started.elapsed() < Duration::from_secs(5), "the 100 ms limit cut the 30 s job short");
    match &first.outcome {
        Outcome::Retry { error, .. } => assert_eq!(error, "timed out after 100 ms"),
        other => panic!("a timed-out attempt is retried, got {other:?}"),
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let second = loop {
        if let Some(event) = work_one(&queue, &["default"]).await {
            break event;
        }
        assert!(Instant::now() < deadline, "the retry became claimable");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(
        (second.attempt, second.outcome.label()),
        (2, "FAIL"),
        "MAX_RETRIES = 1: two attempts"
    );
    assert_eq!(probe.started(), 2);
    assert_eq!(probe.failed_calls.load(Ordering::SeqCst), 1);
    let failed = failed_jobs(&queue, None).await;
    assert_eq!((failed[0].attempts, failed[0].error.as_str()), (2, "timed out after 100 ms"));
}

// ---------------------------------------------------------------------------------------------
// 9. Crash recovery

/// A job whose worker died becomes claimable when its lease expires, and the lost attempt counts.
pub async fn lease_expiry_returns_the_job_and_counts_the_attempt(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, probe) = probe();
    let id = queue.dispatch(RetryJob(Script::ok(&key))).await.expect("dispatch");
    let crashed = claim_one(&queue, &["default"]).await.expect("a job");
    let queues = names(&["default"]);
    assert_eq!(
        driver.recover(&queues, crashed.lease.expires_at - 1).await.expect("recover"),
        0,
        "not before expiry"
    );
    check_stats(&queue, "default", (0, 0, 1, 0, 0, 0), "held by the dead worker").await;
    clock.set(crashed.lease.expires_at);
    assert_eq!(driver.recover(&queues, clock.now()).await.expect("recover"), 1);
    check_stats(&queue, "default", (1, 0, 0, 0, 0, 0), "recovered").await;
    let event = work_one(&queue, &["default"]).await.expect("the recovered job");
    assert_eq!((event.id.as_str(), event.attempt, event.outcome), (id.as_str(), 2, Outcome::Done));
    assert_eq!(probe.attempts_of(&id), [2], "the crashed attempt counted");
    check_stats(&queue, "default", (0, 0, 0, 0, 1, 0), "done").await;
}

/// Recovery takes only the jobs whose lease has expired by now.
pub async fn recovery_rechecks_the_lease_deadline(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    queue.dispatch_many([plain(&key, 0), plain(&key, 1)]).await.expect("dispatch");
    let early = claim_one(&queue, &["default"]).await.expect("a job");
    clock.advance(Duration::from_secs(10));
    let late = claim_one(&queue, &["default"]).await.expect("a job");
    let queues = names(&["default"]);
    assert_eq!(driver.recover(&queues, early.lease.expires_at).await.expect("recover"), 1);
    check_stats(&queue, "default", (1, 0, 1, 0, 0, 0), "only the expired one").await;
    complete(&driver, &late.lease, clock.now()).await.expect("the live lease still works");
    check_lease_lost(complete(&driver, &early.lease, clock.now()).await, "complete after recovery");
    assert_eq!(
        driver.recover(&queues, late.lease.expires_at + 1).await.expect("recover"),
        0,
        "nothing left to recover"
    );
}

/// Extending a lease moves its deadline; recovery respects the new deadline.
pub async fn extend_moves_the_lease_deadline(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    queue.dispatch(plain(&key, 0)).await.expect("dispatch");
    let held = claim_one(&queue, &["default"]).await.expect("a job");
    let until = held.lease.expires_at + 100_000;
    let extended = driver.extend(&held.lease, until, clock.now()).await.expect("extend");
    assert_eq!((extended.expires_at, &extended.token), (until, &held.lease.token));
    let queues = names(&["default"]);
    assert_eq!(
        driver.recover(&queues, held.lease.expires_at).await.expect("recover"),
        0,
        "the old deadline no longer applies"
    );
    assert_eq!(driver.recover(&queues, until).await.expect("recover"), 1, "the new one does");
    check_lease_lost(driver.extend(&extended, until + 1, until).await, "extend after recovery");
}

/// When the worker running the last attempt dies, the next claim sends the job to the failed set
/// and runs `failed` once, without running `handle` again.
pub async fn crash_on_the_last_attempt_sends_the_job_to_the_failed_set(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, probe) = probe();
    let id = queue.dispatch(RetryJob(Script::ok(&key))).await.expect("dispatch");
    let queues = names(&["default"]);
    for attempt in 1..=4 {
        let held = claim_one(&queue, &["default"]).await.expect("a job");
        assert_eq!(held.record.attempt, attempt);
        clock.set(held.lease.expires_at);
        assert_eq!(driver.recover(&queues, clock.now()).await.expect("recover"), 1);
    }
    let event = work_one(&queue, &["default"]).await.expect("the job");
    match &event.outcome {
        Outcome::Failed { error } => {
            assert!(error.starts_with("attempts exhausted: attempt 4 of 4 was lost"), "{error}")
        }
        other => panic!("expected the failed set, got {other:?}"),
    }
    assert_eq!(probe.started(), 0, "handle did not run a 5th time");
    assert_eq!(probe.failed_calls.load(Ordering::SeqCst), 1);
    let failed = failed_jobs(&queue, Some("default")).await;
    assert_eq!((failed.len(), failed[0].id.as_str()), (1, id.as_str()));
}

// ---------------------------------------------------------------------------------------------
// 8. Failure

/// After the last attempt the job is in the failed set with its queue, name, payload, attempts,
/// last error and time.
pub async fn exhausted_attempts_reach_the_failed_set_with_details(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    let job = PlainJob(Script { fail_attempts: 100, tag: 7, ..Script::ok(&key) });
    let payload = serde_json::to_string(&job).expect("serialize");
    let id = queue
        .dispatch_with(job, DispatchOptions::new().queue("mail").priority(3))
        .await
        .expect("dispatch");
    while work_one(&queue, &["mail"]).await.is_some() {
        clock.advance(Duration::from_secs(1));
    }
    let failed = failed_jobs(&queue, None).await;
    assert_eq!(failed.len(), 1);
    let entry = &failed[0];
    assert_eq!(
        (entry.id.as_str(), entry.queue.as_str(), entry.name.as_str()),
        (id.as_str(), "mail", "PlainJob")
    );
    assert_eq!(entry.payload, payload);
    assert_eq!(entry.attempts, 4, "PlainJob keeps the default MAX_RETRIES = 3");
    assert_eq!(entry.error, "failure requested on attempt 4");
    assert_eq!(entry.failed_at, clock.now() - 1000);
    check_stats(&queue, "mail", (0, 0, 0, 1, 0, 1), "failed").await;
}

// ---------------------------------------------------------------------------------------------
// 10. Bad jobs

async fn dispatch_raw(queue: &Queue, name: &str, payload: &str) -> String {
    let record = queue
        .untyped_record(
            name,
            payload.to_owned(),
            JobDefaults::of::<PlainJob>(),
            &DispatchOptions::new(),
        )
        .expect("record");
    let id = record.id.clone();
    queue.dispatch_records(vec![record]).await.expect("dispatch");
    id
}

async fn drain(queue: &Queue, queues: &[&str]) -> Vec<WorkerEvent> {
    let mut events = Vec::new();
    while let Some(event) = work_one(queue, queues).await {
        events.push(event);
    }
    events
}

/// A job whose type this worker does not register (a newer worker's, in a rolling deploy) is
/// handed back with a delay, its attempt not counted, and the job behind it runs; once it has
/// waited the worker's patience since dispatch, it fails with the reason.
pub async fn unknown_job_type_is_deferred_then_failed_after_patience(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, probe) = probe();
    let bad = dispatch_raw(&queue, "NoSuchJob", "{}").await;
    let good = queue.dispatch(plain(&key, 0)).await.expect("dispatch");
    let patient = || {
        worker(&queue, &["default"]).unknown_jobs(Duration::from_secs(10), Duration::from_secs(60))
    };
    let first = patient().work_one().await.expect("work_one").expect("a job");
    assert_eq!((first.id.as_str(), first.outcome.label()), (bad.as_str(), "DEFER"));
    assert_eq!(first.outcome, Outcome::Deferred { at: clock.now() + 10_000 });
    let second = patient().work_one().await.expect("work_one").expect("a job");
    assert_eq!((second.id.as_str(), second.outcome.label()), (good.as_str(), "DONE"));
    assert_eq!(probe.started(), 1, "the known job ran");
    check_stats(&queue, "default", (0, 1, 0, 0, 1, 0), "the unknown one waits").await;
    assert!(patient().work_one().await.expect("work_one").is_none(), "not before its delay");

    clock.advance(Duration::from_secs(10));
    let again = patient().work_one().await.expect("work_one").expect("the deferred job");
    assert_eq!((again.attempt, again.outcome.label()), (1, "DEFER"), "no attempt was used");

    clock.advance(Duration::from_secs(60));
    let last = patient().work_one().await.expect("work_one").expect("the deferred job");
    assert_eq!((last.id.as_str(), last.outcome.label()), (bad.as_str(), "FAIL"));
    let failed = failed_jobs(&queue, None).await;
    assert!(
        failed[0]
            .error
            .starts_with("unknown job name \"NoSuchJob\": no worker registered it within 60 s"),
        "{}",
        failed[0].error
    );
    check_stats(&queue, "default", (0, 0, 0, 1, 1, 1), "after patience ran out").await;
}

/// A payload that does not deserialize goes to the failed set with the reason; the queue flows on.
pub async fn bad_payload_goes_to_the_failed_set_without_blocking(driver: BoxDriver) {
    let queue = system_queue(&driver);
    let (key, probe) = probe();
    let not_json = dispatch_raw(&queue, "PlainJob", "not json").await;
    let missing = dispatch_raw(&queue, "PlainJob", r#"{"wrong":1}"#).await;
    queue.dispatch(plain(&key, 0)).await.expect("dispatch");
    let labels: Vec<&str> =
        drain(&queue, &["default"]).await.iter().map(|e| e.outcome.label()).collect();
    assert_eq!(labels, ["FAIL", "FAIL", "DONE"]);
    assert_eq!(probe.started(), 1);
    let failed = failed_jobs(&queue, None).await;
    let ids: Vec<&str> = failed.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(ids, [not_json.as_str(), missing.as_str()]);
    for entry in &failed {
        assert!(
            entry.error.starts_with("payload does not deserialize into job type PlainJob"),
            "{}",
            entry.error
        );
    }
    assert_eq!(failed[0].payload, "not json", "the bad payload is kept as it was");
}

/// A panic in `handle` is a failed attempt (retried), and the worker keeps running other jobs.
pub async fn panic_is_a_failed_attempt_not_a_dead_worker(driver: BoxDriver) {
    let queue = system_queue(&driver);
    let (key, probe) = probe();
    let panicky = queue
        .dispatch(PlainJob(Script { fail_attempts: 1, panic: true, ..Script::ok(&key) }))
        .await
        .expect("dispatch");
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let handle = worker(&queue, &["default"])
        .concurrency(2)
        .on_event(move |e| sink.lock().expect("lock").push(e.clone()))
        .spawn();
    queue.dispatch(plain(&key, 1)).await.expect("dispatch");
    assert!(
        eventually(Duration::from_secs(5), || async {
            stats(&queue, "default").await.processed == 2
        })
        .await,
        "both jobs completed"
    );
    let summary = handle.shutdown().await.expect("the worker survived the panic");
    assert_eq!((summary.done, summary.retried), (2, 1));
    let events = events.lock().expect("lock");
    // Events arrive in the order the worker collects finished tasks, not in attempt order.
    let first =
        events.iter().find(|e| e.id == panicky && e.attempt == 1).expect("the panicking attempt");
    match &first.outcome {
        Outcome::Retry { error, .. } => assert_eq!(error, "panicked: panic requested on attempt 1"),
        other => panic!("a panic is a retryable failed attempt, got {other:?}"),
    }
    assert_eq!(probe.attempts_of(&panicky), [1, 2]);
}

// ---------------------------------------------------------------------------------------------
// 11. Shutdown

/// On shutdown, running jobs that finish within the deadline complete normally.
pub async fn shutdown_lets_short_jobs_finish(driver: BoxDriver) {
    let queue = system_queue(&driver);
    let (key, probe) = probe();
    let handle = worker(&queue, &["default"])
        .concurrency(4)
        .shutdown_timeout(Duration::from_secs(10))
        .spawn();
    queue
        .dispatch_many(
            (0..4).map(|i| PlainJob(Script { work_ms: 200, tag: i, ..Script::ok(&key) })),
        )
        .await
        .expect("dispatch");
    assert!(
        eventually(Duration::from_secs(3), || async { probe.started() == 4 }).await,
        "all four started"
    );
    let summary = handle.shutdown().await.expect("worker");
    assert_eq!((summary.done, summary.released), (4, 0));
    check_stats(&queue, "default", (0, 0, 0, 0, 4, 0), "after shutdown").await;
}

/// Jobs still running at the shutdown deadline are handed back, claimable at once, attempt uncounted.
pub async fn shutdown_releases_unfinished_jobs(driver: BoxDriver) {
    let queue = system_queue(&driver);
    let (key, probe) = probe();
    let handle = worker(&queue, &["default"])
        .concurrency(4)
        .shutdown_timeout(Duration::from_millis(100))
        .spawn();
    queue
        .dispatch_many(
            (0..4).map(|i| PlainJob(Script { work_ms: 30_000, tag: i, ..Script::ok(&key) })),
        )
        .await
        .expect("dispatch");
    assert!(
        eventually(Duration::from_secs(3), || async { probe.started() == 4 }).await,
        "all four started"
    );
    let stopping = Instant::now();
    let summary = handle.shutdown().await.expect("worker");
    assert!(stopping.elapsed() < Duration::from_secs(5), "stopped near its 100 ms deadline");
    assert_eq!((summary.done, summary.released), (0, 4));
    check_stats(&queue, "default", (4, 0, 0, 0, 0, 0), "handed back").await;
    let again = claim(&queue, &["default"], 10).await;
    assert_eq!(again.len(), 4, "claimable at once");
    assert!(again.iter().all(|r| r.record.attempt == 1), "the interrupted attempt was not counted");
}

/// `release` makes a job claimable at once and does not count the interrupted attempt.
pub async fn release_makes_the_job_claimable_at_once_without_counting(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    queue.dispatch(plain(&key, 0)).await.expect("dispatch");
    let held = claim_one(&queue, &["default"]).await.expect("a job");
    release(&driver, &held.lease, clock.now()).await.expect("release");
    check_stats(&queue, "default", (1, 0, 0, 0, 0, 0), "released").await;
    let again = claim_one(&queue, &["default"]).await.expect("claimable at once");
    assert_eq!((again.record.id, again.record.attempt), (held.record.id, 1));
}

// ---------------------------------------------------------------------------------------------
// 12. Counters

/// Each counter follows every transition exactly.
pub async fn counters_are_exact(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    check_stats(&queue, "default", (0, 0, 0, 0, 0, 0), "a queue never used").await;
    queue.dispatch_many((0..3).map(|i| plain(&key, i))).await.expect("dispatch");
    queue.dispatch_after(Duration::from_secs(60), plain(&key, 3)).await.expect("dispatch");
    queue.dispatch_after(Duration::from_secs(120), plain(&key, 4)).await.expect("dispatch");
    check_stats(&queue, "default", (3, 2, 0, 0, 0, 0), "dispatched").await;
    let a = claim_one(&queue, &["default"]).await.expect("a");
    let b = claim_one(&queue, &["default"]).await.expect("b");
    check_stats(&queue, "default", (1, 2, 2, 0, 0, 0), "two claimed").await;
    let now = clock.now();
    complete(&driver, &a.lease, now).await.expect("complete");
    fail(&driver, &b.lease, "boom", now).await.expect("fail");
    check_stats(&queue, "default", (1, 2, 0, 1, 1, 1), "one done, one failed").await;
    clock.advance(Duration::from_secs(60));
    check_stats(&queue, "default", (2, 1, 0, 1, 1, 1), "one delayed job came due").await;
    let c = claim_one(&queue, &["default"]).await.expect("c");
    retry(&driver, &c.lease, clock.now() + 1000, "again", clock.now()).await.expect("retry");
    check_stats(&queue, "default", (1, 2, 0, 1, 1, 1), "a retry waits as delayed").await;
    queue.retry_failed(&b.record.id).await.expect("retry failed");
    check_stats(
        &queue,
        "default",
        (2, 2, 0, 0, 1, 1),
        "the failed job is back; failed_total stays",
    )
    .await;
    check_stats(&queue, "other", (0, 0, 0, 0, 0, 0), "another queue is untouched").await;
}

/// `processed` increases exactly once per completed job, whatever is retried.
pub async fn processed_counts_each_completion_once(driver: BoxDriver) {
    let queue = system_queue(&driver);
    let (key, _) = probe();
    queue.dispatch_many((0..10).map(|i| plain(&key, i))).await.expect("dispatch");
    let held = claim(&queue, &["default"], 10).await;
    let now = queue.now();
    for reserved in &held {
        complete(&driver, &reserved.lease, now).await.expect("complete");
    }
    for reserved in &held {
        check_lease_lost(complete(&driver, &reserved.lease, now).await, "a repeated complete");
    }
    check_stats(&queue, "default", (0, 0, 0, 0, 10, 0), "ten completions").await;
}

/// The counters follow the paths that move many jobs in one step, or none: a push with a
/// duplicate across two queues, a claim across queues, extend and progress (nothing moves), a
/// claim within a concurrency limit, a running job cancelled whose worker died (ended at
/// recovery), a release with a delay, clear, prune, and a queue forgotten and then used again.
pub async fn counters_follow_bulk_and_odd_paths(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let job = |on: &str, tag: u64| new_job(&queue, &orcs_core::new_job_id(), on, tag);
    let a: Vec<NewJob> = (0..4).map(|tag| job("sz-a", tag)).collect();
    let mut late = job("sz-b", 5);
    late.available_at = queue.now() + 3_600_000;
    let pushed = vec![
        a[0].clone(),
        a[1].clone(),
        a[0].clone(),
        a[2].clone(),
        a[3].clone(),
        job("sz-b", 4),
        late,
    ];
    let outcomes = driver.push(pushed).await.expect("push");
    assert_eq!(outcomes.iter().filter(|o| **o == PushOutcome::Stored).count(), 6);
    check_stats(&queue, "sz-a", (4, 0, 0, 0, 0, 0), "a push with a duplicate").await;
    check_stats(&queue, "sz-b", (1, 1, 0, 0, 0, 0), "the same push").await;

    let held = claim_at(&driver, &names(&["sz-a", "sz-b"]), 3, clock.now()).await.jobs;
    assert_eq!(held.len(), 3);
    check_stats(&queue, "sz-a", (1, 0, 3, 0, 0, 0), "a claim across queues").await;
    let now = clock.now();
    driver.extend(&held[0].lease, now + 120_000, now).await.expect("extend");
    let touch = orcs_core::Touch::new(held[1].lease.clone(), Some("{\"done\":1}".to_owned()));
    driver.touch(&[touch], now).await.expect("touch");
    check_stats(&queue, "sz-a", (1, 0, 3, 0, 0, 0), "extend and progress move nothing").await;

    queue.set_limits("sz-b", QueueLimits::none().concurrency(1)).await.expect("limits");
    let limited = claim_at(&driver, &names(&["sz-b"]), 5, now).await.jobs;
    assert_eq!(limited.len(), 1);
    check_stats(&queue, "sz-b", (0, 1, 1, 0, 0, 0), "a claim within a limit").await;
    let id = limited[0].record.id.clone();
    assert_eq!(queue.cancel(&id).await.expect("cancel"), orcs_core::CancelOutcome::Requested);
    clock.set(limited[0].lease.expires_at);
    driver.recover(&names(&["sz-b"]), clock.now()).await.expect("recover");
    check_stats(&queue, "sz-b", (0, 1, 0, 0, 0, 0), "a cancelled job's dead worker").await;
    assert_eq!(stats(&queue, "sz-b").await.cancelled, 1);

    let now = clock.now();
    fail(&driver, &held[0].lease, "boom", now).await.expect("fail");
    complete(&driver, &held[1].lease, now).await.expect("complete");
    driver
        .settle_one(Settle::release(held[2].lease.clone(), now + 1_000), now)
        .await
        .expect("release");
    check_stats(&queue, "sz-a", (1, 1, 0, 1, 1, 1), "failed, completed, released").await;
    assert_eq!(queue.clear("sz-a").await.expect("clear"), 2);
    check_stats(&queue, "sz-a", (0, 0, 0, 1, 1, 1), "cleared").await;
    let mut prune = orcs_core::Prune::new();
    prune.queue = Some("sz-a".to_owned());
    prune.keep = Some(0);
    assert_eq!(driver.prune_failed(&prune).await.expect("prune"), 1);
    check_stats(&queue, "sz-a", (0, 0, 0, 0, 1, 1), "pruned").await;
    assert!(queue.forget_queue("sz-a").await.expect("forget"), "empty and idle");
    check_stats(&queue, "sz-a", (0, 0, 0, 0, 0, 0), "forgotten").await;
    assert!(!listed(&driver, "sz-a").await, "gone from queues()");
    driver.push(vec![job("sz-a", 6)]).await.expect("push");
    check_stats(&queue, "sz-a", (1, 0, 0, 0, 0, 0), "used again").await;
    assert!(listed(&driver, "sz-a").await, "listed again");
}

// ---------------------------------------------------------------------------------------------
// 13. Clear

/// Clearing a queue removes its pending and delayed jobs, reports how many, and leaves running
/// jobs and other queues alone.
pub async fn clear_removes_pending_and_delayed_and_reports_the_count(driver: BoxDriver) {
    let queue = system_queue(&driver);
    let (key, _) = probe();
    queue.dispatch_many((0..4).map(|i| plain(&key, i))).await.expect("dispatch");
    queue.dispatch_after(Duration::from_secs(600), plain(&key, 4)).await.expect("dispatch");
    queue.dispatch_after(Duration::from_secs(600), plain(&key, 5)).await.expect("dispatch");
    queue
        .dispatch_with(plain(&key, 6), DispatchOptions::new().queue("other"))
        .await
        .expect("dispatch");
    let running = claim_one(&queue, &["default"]).await.expect("a job");
    assert_eq!(queue.clear("default").await.expect("clear"), 5);
    check_stats(&queue, "default", (0, 0, 1, 0, 0, 0), "cleared").await;
    check_stats(&queue, "other", (1, 0, 0, 0, 0, 0), "another queue").await;
    complete(&driver, &running.lease, queue.now()).await.expect("the running job still completes");
    assert_eq!(queue.clear("default").await.expect("clear"), 0, "nothing left");
    assert!(claim_one(&queue, &["default"]).await.is_none());
}

// ---------------------------------------------------------------------------------------------
// Failed-job management

async fn fail_jobs(queue: &Queue, key: &str, count: u64) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..count {
        ids.push(
            queue
                .dispatch(PlainJob(Script { permanent: true, tag: i, ..Script::ok(key) }))
                .await
                .expect("dispatch"),
        );
        assert_eq!(work_one(queue, &["default"]).await.expect("a job").outcome.label(), "FAIL");
    }
    ids
}

/// Failed jobs are listed oldest first, and can be retried (fresh attempts), forgotten and flushed.
pub async fn failed_jobs_can_be_retried_forgotten_and_flushed(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    let ids = fail_jobs(&queue, &key, 3).await;
    clock.advance(Duration::from_secs(1));
    let listed: Vec<String> = failed_jobs(&queue, None).await.into_iter().map(|f| f.id).collect();
    assert_eq!(listed, ids, "oldest first");
    assert!(failed_jobs(&queue, Some("other")).await.is_empty(), "filtered by queue");

    queue.retry_failed(&ids[0]).await.expect("retry");
    check_stats(&queue, "default", (1, 0, 0, 2, 0, 3), "one retried").await;
    let retried = claim_one(&queue, &["default"]).await.expect("the retried job");
    assert_eq!(
        (retried.record.id.as_str(), retried.record.attempt),
        (ids[0].as_str(), 1),
        "same id, fresh attempts"
    );

    queue.driver().forget_failed(&ids[1]).await.expect("forget");
    let left: Vec<String> = failed_jobs(&queue, None).await.into_iter().map(|f| f.id).collect();
    assert_eq!(left, [ids[2].clone()]);
    assert_eq!(queue.driver().flush_failed().await.expect("flush"), 1);
    assert!(failed_jobs(&queue, None).await.is_empty());
    check_stats(&queue, "default", (0, 0, 1, 0, 0, 3), "flushed").await;

    let more = fail_jobs(&queue, &key, 2).await;
    assert_eq!(queue.retry_all_failed(None).await.expect("retry all"), 2);
    let back: Vec<String> =
        claim(&queue, &["default"], 10).await.into_iter().map(|r| r.record.id).collect();
    assert_eq!(back, more);
}

/// Retrying or forgetting an id that is not in the failed set says so.
pub async fn unknown_failed_id_is_not_found(driver: BoxDriver) {
    let queue = system_queue(&driver);
    let missing = orcs_core::new_job_id();
    assert!(
        matches!(queue.retry_failed(&missing).await, Err(Error::NotFound { ref id }) if *id == missing)
    );
    assert!(matches!(queue.driver().forget_failed(&missing).await, Err(Error::NotFound { .. })));
    let (key, _) = probe();
    let pending = queue.dispatch(plain(&key, 0)).await.expect("dispatch");
    assert!(
        matches!(queue.retry_failed(&pending).await, Err(Error::NotFound { .. })),
        "a pending job is not a failed job"
    );
    check_stats(&queue, "default", (1, 0, 0, 0, 0, 0), "the pending job is untouched").await;
}

// ---------------------------------------------------------------------------------------------
// Batches

/// A batch is stored all at once: a concurrent claimer sees none of it or all of it, and a batch
/// with one invalid job stores nothing.
pub async fn batch_dispatch_is_atomic(driver: BoxDriver) {
    let queue = system_queue(&driver);
    let (key, _) = probe();
    let claimer = {
        let queue = queue.clone();
        tokio::spawn(async move {
            loop {
                let seen = claim(&queue, &["default"], 10_000).await;
                if !seen.is_empty() {
                    return seen.into_iter().map(|r| r.record.id).collect::<Vec<_>>();
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let ids = queue.dispatch_many((0..500).map(|i| plain(&key, i))).await.expect("dispatch");
    let seen = claimer.await.expect("claimer");
    assert_eq!(seen.len(), 500, "the first claim saw the whole batch");
    assert_eq!(seen, ids, "in dispatch order");

    let good = queue
        .untyped_record(
            "PlainJob",
            "{}".to_owned(),
            JobDefaults::of::<PlainJob>(),
            &DispatchOptions::new(),
        )
        .expect("record");
    let mut bad = good.clone();
    bad.id = orcs_core::new_job_id();
    bad.queue = "bad queue".to_owned();
    let err = queue.dispatch_records(vec![good, bad]).await.expect_err("an invalid queue name");
    assert!(err.to_string().contains("invalid queue name"), "{err}");
    check_stats(&queue, "default", (0, 0, 500, 0, 0, 0), "nothing of the rejected batch").await;
}

/// A job whose payload is over the size limit is refused with a clear error and nothing is stored.
pub async fn oversized_payload_is_refused_and_nothing_is_stored(driver: BoxDriver) {
    let queue = system_queue(&driver).with_max_payload_bytes(1024);
    let (key, _) = probe();
    let big = PlainJob(Script { probe: format!("{key}{}", "x".repeat(2000)), ..Script::default() });
    let err = queue.dispatch(big.clone()).await.expect_err("over the limit");
    assert!(err.to_string().contains("over the limit of 1024 bytes"), "{err}");
    let err = queue
        .dispatch_many([plain(&key, 0), big])
        .await
        .expect_err("a batch with one job over the limit");
    assert!(matches!(err, Error::Invalid { what: "payload", .. }), "{err}");
    check_stats(&queue, "default", (0, 0, 0, 0, 0, 0), "nothing stored").await;
    queue.dispatch(plain(&key, 1)).await.expect("a small job still goes through");
}

// ---------------------------------------------------------------------------------------------
// Worker behaviour

/// A worker at concurrency N runs N jobs at once.
pub async fn worker_runs_jobs_concurrently(driver: BoxDriver) {
    let queue = system_queue(&driver);
    let (key, probe) = probe();
    queue
        .dispatch_many(
            (0..8).map(|i| PlainJob(Script { work_ms: 400, tag: i, ..Script::ok(&key) })),
        )
        .await
        .expect("dispatch");
    let summary = worker(&queue, &["default"])
        .concurrency(8)
        .stop_when_empty(true)
        .run()
        .await
        .expect("worker");
    assert_eq!(summary.done, 8);
    let starts: Vec<i64> =
        probe.starts.lock().expect("lock").iter().map(|(_, _, at)| *at).collect();
    let spread = starts.iter().max().expect("starts") - starts.iter().min().expect("starts");
    assert!(spread < 300, "all 8 started together (spread {spread} ms), not one after another");
}

/// `max_jobs`, `stop_when_empty` and `work_one` (`--once`) stop the worker where they say.
pub async fn worker_limits_stop_it(driver: BoxDriver) {
    let queue = system_queue(&driver);
    let (key, _) = probe();
    queue.dispatch_many((0..5).map(|i| plain(&key, i))).await.expect("dispatch");
    let summary =
        worker(&queue, &["default"]).concurrency(2).max_jobs(3).run().await.expect("worker");
    assert_eq!(summary.done, 3, "max_jobs");
    check_stats(&queue, "default", (2, 0, 0, 0, 3, 0), "two left").await;
    let once = work_one(&queue, &["default"]).await.expect("one job");
    assert_eq!(once.outcome, Outcome::Done);
    let summary = worker(&queue, &["default"]).stop_when_empty(true).run().await.expect("worker");
    assert_eq!(summary.done, 1, "stop_when_empty drained the last one and stopped");
    assert!(work_one(&queue, &["default"]).await.is_none(), "once on an empty queue does nothing");
    let timed = Instant::now();
    let summary = worker(&queue, &["default"])
        .max_time(Duration::from_millis(200))
        .run()
        .await
        .expect("worker");
    assert_eq!(summary.attempts(), 0);
    assert!(timed.elapsed() < Duration::from_secs(3), "max_time stopped an idle worker");
}

// ---------------------------------------------------------------------------------------------
// 15. The v2 contract: push outcomes, settle with effects, per-queue metadata, the admin surface

fn new_job(queue: &Queue, id: &str, on: &str, tag: u64) -> NewJob {
    let mut job =
        NewJob::new(id, "PlainJob", on, format!(r#"{{"probe":"none","tag":{tag}}}"#), queue.now());
    job.max_retries = 3;
    job
}

/// A push answers per job: a job whose id exists (pending, running or failed, or earlier in the
/// same push) is a duplicate and changes nothing; the others are stored.
pub async fn push_reports_duplicates_per_job(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let a = new_job(&queue, "01J0000000000000000000000A", "default", 1);
    let outcomes = driver.push(vec![a.clone()]).await.expect("push");
    assert_eq!(outcomes, [PushOutcome::Stored]);

    let mut changed = a.clone();
    changed.payload = r#"{"probe":"none","tag":99}"#.to_owned();
    let b = new_job(&queue, "01J0000000000000000000000B", "default", 2);
    let outcomes = driver.push(vec![b.clone(), changed, b.clone()]).await.expect("push");
    assert_eq!(
        outcomes,
        [
            PushOutcome::Stored,
            PushOutcome::Duplicate { id: a.id.clone() },
            PushOutcome::Duplicate { id: b.id.clone() },
        ]
    );
    check_stats(&queue, "default", (2, 0, 0, 0, 0, 0), "two stored").await;
    let held = claim(&queue, &["default"], 10).await;
    assert_eq!(tag_of(&held[0]), 1, "the first payload was kept");

    fail(&driver, &held[0].lease, "boom", clock.now()).await.expect("fail");
    let outcomes = driver.push(vec![a.clone()]).await.expect("push");
    assert_eq!(
        outcomes,
        [PushOutcome::Duplicate { id: a.id.clone() }],
        "a failed job holds its id"
    );
    // With a free unique key: still a duplicate, and the key stays free.
    let mut keyed = a.clone();
    keyed.unique = Some(orcs_core::Unique::new("free", UniqueUntil::Finished));
    let outcomes = driver.push(vec![keyed]).await.expect("push");
    assert_eq!(
        outcomes,
        [PushOutcome::Duplicate { id: a.id.clone() }],
        "a failed job holds its id, whatever key its duplicate carries"
    );
    let mut taker = new_job(&queue, "01J0000000000000000000000C", "default", 3);
    taker.unique = Some(orcs_core::Unique::new("free", UniqueUntil::Finished));
    assert_eq!(
        driver.push(vec![taker]).await.expect("push"),
        [PushOutcome::Stored],
        "the duplicate took no key"
    );
    assert_eq!(
        queue.cancel("01J0000000000000000000000C").await.expect("cancel"),
        orcs_core::CancelOutcome::Removed
    );
    let outcomes = driver.push(vec![b.clone()]).await.expect("push");
    assert_eq!(
        outcomes,
        [PushOutcome::Duplicate { id: b.id.clone() }],
        "a running job holds its id"
    );
    let ids = queue.dispatch_records(vec![a.clone()]).await.expect("dispatch");
    assert_eq!(
        ids,
        std::slice::from_ref(&a.id),
        "dispatch answers the id of the job that holds it"
    );
    check_stats(&queue, "default", (0, 0, 1, 1, 0, 1), "nothing changed").await;
}

/// A settle's effects (follow-up jobs) happen in the same atomic step as its transition, for
/// every transition, and not at all when the lease is stale.
pub async fn settle_effects_are_atomic_with_the_transition(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let cross = driver.capabilities().cross_queue_atomic;
    let next_queue = if cross { "next" } else { "default" };
    queue
        .dispatch_records(
            (1..=4)
                .map(|t| new_job(&queue, &format!("01J00000000000000000000{t:03}"), "default", t))
                .collect(),
        )
        .await
        .expect("dispatch");
    let held = claim(&queue, &["default"], 4).await;
    assert_eq!(held.len(), 4);
    let now = clock.now();
    let follow =
        |t: u64| new_job(&queue, &format!("01J00000000000000000001{t:03}"), next_queue, 100 + t);
    let settles = vec![
        Settle::complete(held[0].lease.clone()).enqueue([follow(1)]),
        Settle::retry(held[1].lease.clone(), now + 1_000, "again").enqueue([follow(2)]),
        Settle::fail(held[2].lease.clone(), "boom").enqueue([follow(3)]),
        Settle::release(held[3].lease.clone(), now + 5_000).enqueue([follow(4)]),
    ];
    let results = driver.settle(&settles, now).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let mut stale = Lease::clone(&held[0].lease);
    stale.token = "not-the-token".to_owned();
    let result = driver.settle_one(Settle::complete(stale).enqueue([follow(5)]), now).await;
    check_lease_lost(result, "a settle with effects");
    assert!(
        driver.get(&follow(5).id, now).await.expect("get").is_none(),
        "the stale settle's follow-up was not stored"
    );

    let follow_ups: Vec<u64> =
        claim(&queue, &[next_queue], 10).await.iter().map(tag_of).filter(|t| *t > 100).collect();
    assert_eq!(follow_ups, [101, 102, 103, 104], "each transition stored its follow-up");
    let released =
        driver.get(&held[3].record.id, now).await.expect("get").expect("the released job");
    assert_eq!(
        (released.state, released.job.available_at, released.attempts),
        (JobState::Delayed, now + 5_000, 0),
        "a release with a delay waits and does not count the attempt"
    );
    if !cross {
        return;
    }
    let s = stats(&queue, "default").await;
    assert_eq!((s.processed, s.failed, s.delayed), (1, 1, 2), "transitions as usual");
}

/// A paused queue is skipped by every claim (a later queue in the list is served) and reports
/// no next due time; resuming makes its jobs claimable and wakes an idle waiter.
pub async fn paused_queue_is_skipped_until_resumed(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    queue
        .dispatch_with(plain(&key, 1), DispatchOptions::new().queue("first"))
        .await
        .expect("dispatch");
    queue
        .dispatch_with(
            plain(&key, 9),
            DispatchOptions::new().queue("first").delay(Duration::from_secs(5)),
        )
        .await
        .expect("dispatch");
    queue
        .dispatch_with(plain(&key, 2), DispatchOptions::new().queue("second"))
        .await
        .expect("dispatch");
    queue.pause("first").await.expect("pause");
    queue.pause("only-paused").await.expect("pause an empty queue");
    assert!(stats(&queue, "first").await.paused, "stats show the pause");
    assert!(!stats(&queue, "second").await.paused);
    let listed = driver.queues().await.expect("queues");
    assert!(listed.contains(&"only-paused".to_owned()), "a paused queue is listed: {listed:?}");

    let queues = names(&["first", "second"]);
    let got = claim_at(&driver, &queues, 10, clock.now()).await;
    assert_eq!(got.jobs.iter().map(tag_of).collect::<Vec<_>>(), [2], "only the unpaused queue");
    assert_eq!(got.next_due, None, "a paused queue's delayed job wakes nobody");

    let waiter = {
        let driver = Arc::clone(&driver);
        let queues = queues.clone();
        let now = clock.now();
        tokio::spawn(async move {
            let started = Instant::now();
            driver.wait(&queues, now, Duration::from_secs(5)).await.expect("wait");
            started.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    queue.resume("first").await.expect("resume");
    let waited = waiter.await.expect("waiter");
    assert!(waited < Duration::from_secs(3), "resuming woke the waiter ({waited:?})");
    assert!(!stats(&queue, "first").await.paused);
    let got = claim_at(&driver, &queues, 10, clock.now()).await;
    assert_eq!(got.jobs.iter().map(tag_of).collect::<Vec<_>>(), [1], "claimable once resumed");
}

/// `get` shows a job in each state with what an operator needs; an unknown id is `None`.
pub async fn get_shows_a_job_in_every_state(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    let now = clock.now();
    let pending = queue
        .dispatch_with(plain(&key, 1), DispatchOptions::new().priority(5))
        .await
        .expect("dispatch");
    let delayed =
        queue.dispatch_after(Duration::from_secs(30), plain(&key, 2)).await.expect("dispatch");
    let failing = queue
        .dispatch_with(plain(&key, 3), DispatchOptions::new().queue("other"))
        .await
        .expect("dispatch");

    let info = queue.get(&pending).await.expect("get").expect("pending job");
    assert_eq!((info.state, info.attempts, info.job.priority), (JobState::Pending, 0, 5));
    assert_eq!((info.job.name.as_str(), info.job.queue.as_str()), ("PlainJob", "default"));
    assert_eq!(info.job.available_at, now);
    let info = queue.get(&delayed).await.expect("get").expect("delayed job");
    assert_eq!((info.state, info.job.available_at), (JobState::Delayed, now + 30_000));

    let held = claim_one(&queue, &["default"]).await.expect("a job");
    assert_eq!(held.record.id, pending);
    let info = queue.get(&pending).await.expect("get").expect("reserved job");
    assert_eq!((info.state, info.attempts), (JobState::Reserved, 1));
    assert_eq!(info.lease_expires_at, Some(held.lease.expires_at));

    let other = claim_one(&queue, &["other"]).await.expect("a job");
    clock.advance(Duration::from_secs(1));
    fail(&driver, &other.lease, "it broke", clock.now()).await.expect("fail");
    let info = queue.get(&failing).await.expect("get").expect("failed job");
    assert_eq!((info.state, info.attempts), (JobState::Failed, 1));
    assert_eq!((info.last_error.as_deref(), info.failed_at), (Some("it broke"), Some(clock.now())));
    assert_eq!(info.job.payload, other.record.payload);

    complete(&driver, &held.lease, clock.now()).await.expect("complete");
    assert!(queue.get(&pending).await.expect("get").is_none(), "a completed job is gone");
    assert!(queue.get("01J00000000000000000000000").await.expect("get").is_none());
}

/// `list` pages a queue's jobs by state in the order workers see them; `failed` pages the failed
/// set oldest first, per queue or overall.
pub async fn list_and_failed_are_paged_in_order(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    for (tag, priority) in [(1, 0), (2, 5), (3, 0), (4, 5), (5, 1)] {
        queue
            .dispatch_with(plain(&key, tag), DispatchOptions::new().priority(priority))
            .await
            .expect("dispatch");
    }
    for (tag, secs) in [(6, 30), (7, 10), (8, 20)] {
        queue.dispatch_after(Duration::from_secs(secs), plain(&key, tag)).await.expect("dispatch");
    }
    let tags = |jobs: &[orcs_core::JobInfo]| -> Vec<u64> {
        jobs.iter()
            .map(|j| {
                serde_json::from_str::<serde_json::Value>(&j.job.payload).expect("json")["tag"]
                    .as_u64()
                    .expect("tag")
            })
            .collect()
    };
    let page = queue.list(&ListRequest::new("default", JobState::Pending, 2)).await.expect("list");
    assert_eq!(tags(&page), [2, 4], "pending in claim order, first page");
    let page = queue
        .list(&ListRequest::new("default", JobState::Pending, 10).offset(2))
        .await
        .expect("list");
    assert_eq!(tags(&page), [5, 1, 3], "the rest");
    assert!(page.iter().all(|j| j.state == JobState::Pending));
    let page = queue.list(&ListRequest::new("default", JobState::Delayed, 10)).await.expect("list");
    assert_eq!(tags(&page), [7, 8, 6], "delayed by due time");

    let held = claim(&queue, &["default"], 2).await;
    let page =
        queue.list(&ListRequest::new("default", JobState::Reserved, 10)).await.expect("list");
    assert_eq!(tags(&page), [2, 4]);
    assert!(page.iter().all(|j| j.lease_expires_at.is_some()));
    assert!(
        matches!(
            queue.list(&ListRequest::new("default", JobState::Failed, 10)).await,
            Err(Error::Invalid { .. })
        ),
        "failed jobs are listed by failed()"
    );

    for reserved in &held {
        clock.advance(Duration::from_millis(1));
        fail(&driver, &reserved.lease, "boom", clock.now()).await.expect("fail");
    }
    queue
        .dispatch_with(plain(&key, 9), DispatchOptions::new().queue("other"))
        .await
        .expect("dispatch");
    let other = claim_one(&queue, &["other"]).await.expect("a job");
    clock.advance(Duration::from_millis(1));
    fail(&driver, &other.lease, "boom", clock.now()).await.expect("fail");
    let ids = |page: Vec<FailedJob>| page.into_iter().map(|f| f.id).collect::<Vec<_>>();
    let all = ids(queue.failed_jobs(&FailedQuery::new(10)).await.expect("failed"));
    assert_eq!(
        all,
        [held[0].record.id.clone(), held[1].record.id.clone(), other.record.id.clone()]
    );
    let second = ids(queue.failed_jobs(&FailedQuery::new(1).offset(1)).await.expect("failed"));
    assert_eq!(second, std::slice::from_ref(&held[1].record.id));
    let of_other =
        ids(queue.failed_jobs(&FailedQuery::new(10).queue("other")).await.expect("failed"));
    assert_eq!(of_other, std::slice::from_ref(&other.record.id));
}

/// Dispatches 1,200 jobs delayed 1 s (more than a driver promotes at once), tagged 0 to 1,199,
/// and one of priority 10 delayed 2 s, tagged 5,000.
async fn dispatch_more_than_a_promotion(queue: &Queue, key: &str) {
    queue
        .dispatch_many_with(
            (0..1_200).map(|i| plain(key, i)),
            DispatchOptions::new().delay(Duration::from_secs(1)),
        )
        .await
        .expect("dispatch");
    queue
        .dispatch_with(
            plain(key, 5_000),
            DispatchOptions::new().priority(10).delay(Duration::from_secs(2)),
        )
        .await
        .expect("dispatch");
}

/// Promoting due delayed jobs never lets a lower-priority job overtake a higher one, even with
/// more due jobs than a driver promotes at once.
pub async fn promotion_never_inverts_priority(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    let start = clock.now();
    dispatch_more_than_a_promotion(&queue, &key).await;
    clock.set(start + 3_000);
    let first = claim_one(&queue, &["default"]).await.expect("a job");
    assert_eq!(tag_of(&first), 5_000, "the high-priority due job comes first");
    let next = claim(&queue, &["default"], 3).await;
    assert_eq!(next.iter().map(tag_of).collect::<Vec<_>>(), [0, 1, 2], "then dispatch order");
}

/// Several callers retrying one failed job at once: exactly one succeeds, the others are told
/// it is not (any longer) in the failed set, and the job is pending once.
pub async fn concurrent_retry_failed_of_one_id_succeeds_once(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    let id = queue.dispatch(plain(&key, 1)).await.expect("dispatch");
    let held = claim_one(&queue, &["default"]).await.expect("a job");
    fail(&driver, &held.lease, "boom", clock.now()).await.expect("fail");
    let now = clock.now();
    let calls = (0..8).map(|_| {
        let driver = Arc::clone(&driver);
        let id = id.clone();
        tokio::spawn(async move { driver.retry_failed(&id, now).await })
    });
    let mut ok = 0;
    for call in calls.collect::<Vec<_>>() {
        match call.await.expect("task") {
            Ok(()) => ok += 1,
            Err(Error::NotFound { .. }) => {}
            Err(other) => panic!("a concurrent retry is Ok or NotFound, got {other:?}"),
        }
    }
    assert_eq!(ok, 1, "exactly one retry took");
    check_stats(&queue, "default", (1, 0, 0, 0, 0, 1), "pending once").await;
}

/// A claim never returns more than asked for, and a worker never runs more than `concurrency`
/// jobs at once (a probe counts the jobs running at the same time).
pub async fn claims_and_workers_respect_their_limits(driver: BoxDriver) {
    let queue = system_queue(&driver);
    let (key, probe) = probe();
    queue
        .dispatch_many(
            (0..40).map(|i| PlainJob(Script { work_ms: 20, tag: i, ..Script::ok(&key) })),
        )
        .await
        .expect("dispatch");
    for max in [1, 3, 7] {
        let got = claim(&queue, &["default"], max).await;
        assert_eq!(got.len(), max, "a claim of {max}");
        for reserved in got {
            release(&driver, &reserved.lease, queue.now()).await.expect("release");
        }
    }
    let summary = worker(&queue, &["default"])
        .concurrency(4)
        .stop_when_empty(true)
        .run()
        .await
        .expect("worker");
    assert_eq!(summary.done, 40);
    let most = probe.max_running.load(Ordering::SeqCst);
    assert!((1..=4).contains(&most), "at most 4 ran at once, saw {most}");
}

/// On a timeout the job is asked to stop (`ctx.cancelled()`) and gets the cancel grace to clean
/// up before its future is dropped; the attempt still counts as timed out.
pub async fn timeout_asks_the_job_to_stop_before_dropping_it(driver: BoxDriver) {
    let queue = system_queue(&driver);
    let (key, probe) = probe();
    queue
        .dispatch(ShortTimeoutJob(Script { work_ms: 30_000, cleanup_ms: 50, ..Script::ok(&key) }))
        .await
        .expect("dispatch");
    let event = worker(&queue, &["default"])
        .cancel_grace(Duration::from_millis(500))
        .work_one()
        .await
        .expect("work_one")
        .expect("a job");
    assert_eq!(event.outcome.label(), "RETRY");
    assert_eq!(probe.cleanups.load(Ordering::SeqCst), 1, "the job finished its clean-up");

    let (key, second) = crate::jobs::probe();
    queue
        .dispatch_with(
            ShortTimeoutJob(Script { work_ms: 30_000, cleanup_ms: 2_000, ..Script::ok(&key) }),
            DispatchOptions::new().max_retries(0),
        )
        .await
        .expect("dispatch");
    let started = Instant::now();
    let event = worker(&queue, &["default"])
        .cancel_grace(Duration::from_millis(100))
        .work_one()
        .await
        .expect("work_one")
        .expect("a job");
    assert_eq!(event.outcome.label(), "FAIL");
    assert!(started.elapsed() < Duration::from_millis(1_500), "a job over its grace is dropped");
    assert_eq!(second.cleanups.load(Ordering::SeqCst), 0, "its clean-up was cut short");
}

/// A backend with a clock of its own lets every worker measure its skew: near zero for the
/// system clock, and the offset of a clock set ahead. Without one there is nothing to measure.
pub async fn clock_skew_is_measured_against_the_backend(driver: BoxDriver) {
    let queue = system_queue(&driver);
    let skew = queue.clock_skew().await.expect("clock_skew");
    if !driver.capabilities().server_clock {
        assert_eq!(skew, None, "no server clock, no skew");
        return;
    }
    let skew = skew.expect("a server clock gives a skew");
    assert!(skew.abs() < 1_000, "the system clock agrees with the backend's: {skew} ms");
    let (ahead, clock) = manual_queue(&driver);
    clock.advance(Duration::from_secs(60));
    let skew = ahead.clock_skew().await.expect("clock_skew").expect("a skew");
    assert!((59_000..61_000).contains(&skew), "a clock 60 s ahead is seen as such: {skew} ms");
}

// ---------------------------------------------------------------------------------------------
// 16. Flow control (SPEC 8.1, 8.2): unique keys, limits, snooze, cancel, progress

fn unique(key: &str, until: UniqueUntil) -> DispatchOptions {
    DispatchOptions::new().unique(key, until)
}

/// A `Started` key holds while the job waits: a second dispatch gets the holder's id and stores
/// nothing; once a worker starts the job the key is free again.
pub async fn unique_key_holds_until_started(driver: BoxDriver) {
    let (queue, _clock) = manual_queue(&driver);
    let (key, _) = probe();
    let first = queue
        .dispatch_with(plain(&key, 1), unique("k", UniqueUntil::Started))
        .await
        .expect("dispatch");
    let again = queue
        .dispatch_with(plain(&key, 2), unique("k", UniqueUntil::Started))
        .await
        .expect("dispatch");
    assert_eq!(again, first, "the duplicate gets the holder's id");
    check_stats(&queue, "default", (1, 0, 0, 0, 0, 0), "one stored").await;
    let held = claim_one(&queue, &["default"]).await.expect("a job");
    assert_eq!(tag_of(&held), 1);
    let third = queue
        .dispatch_with(plain(&key, 3), unique("k", UniqueUntil::Started))
        .await
        .expect("dispatch");
    assert_ne!(third, first, "started: the key is free");
    let info = queue.get(&third).await.expect("get").expect("the new job");
    assert_eq!(info.job.unique, Some(orcs_core::Unique::new("k", UniqueUntil::Started)));
}

/// A `Finished` key holds through retries, releases and lease recovery, and frees on every
/// terminal path: complete, fail for good, cancel (running or waiting), clear.
pub async fn unique_key_frees_on_every_terminal_path(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    let until = UniqueUntil::Finished;
    let dispatch = |tag| {
        let queue = queue.clone();
        let key = key.clone();
        async move { queue.dispatch_with(plain(&key, tag), unique("k", until)).await.expect("dispatch") }
    };
    let holder = dispatch(1).await;
    let held = claim_one(&queue, &["default"]).await.expect("a job");
    assert_eq!(dispatch(2).await, holder, "running: held");
    retry(&driver, &held.lease, clock.now(), "again", clock.now()).await.expect("retry");
    assert_eq!(dispatch(3).await, holder, "after a retry: held");
    let held = claim_one(&queue, &["default"]).await.expect("a job");
    clock.set(held.lease.expires_at);
    driver.recover(&names(&["default"]), clock.now()).await.expect("recover");
    assert_eq!(dispatch(4).await, holder, "after lease recovery: held");
    let held = claim_one(&queue, &["default"]).await.expect("a job");
    release(&driver, &held.lease, clock.now()).await.expect("release");
    assert_eq!(dispatch(5).await, holder, "after a release: held");
    let held = claim_one(&queue, &["default"]).await.expect("a job");
    complete(&driver, &held.lease, clock.now()).await.expect("complete");

    let next = dispatch(6).await;
    assert_ne!(next, holder, "completed: free");
    let held = claim_one(&queue, &["default"]).await.expect("a job");
    fail(&driver, &held.lease, "boom", clock.now()).await.expect("fail");
    let next = dispatch(7).await;
    assert_ne!(next, held.record.id, "failed for good: free");
    let held = claim_one(&queue, &["default"]).await.expect("a job");
    driver.settle_one(Settle::cancel(held.lease.clone()), clock.now()).await.expect("cancel");
    let waiting = dispatch(8).await;
    assert_ne!(waiting, held.record.id, "cancelled while running: free");
    queue.cancel(&waiting).await.expect("cancel a waiting job");
    let waiting = dispatch(9).await;
    assert_eq!(queue.clear("default").await.expect("clear"), 1);
    assert_ne!(dispatch(10).await, waiting, "cleared: free");
}

/// A `Period` key holds for its period after the dispatch, whatever the job does, then frees.
pub async fn unique_key_for_a_period_expires_by_time(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    let period = UniqueUntil::Period(10_000);
    let holder = queue.dispatch_with(plain(&key, 1), unique("k", period)).await.expect("dispatch");
    let held = claim_one(&queue, &["default"]).await.expect("a job");
    complete(&driver, &held.lease, clock.now()).await.expect("complete");
    clock.advance(Duration::from_millis(9_999));
    let again = queue.dispatch_with(plain(&key, 2), unique("k", period)).await.expect("dispatch");
    assert_eq!(again, holder, "the period is not over, the job's end does not matter");
    clock.advance(Duration::from_millis(1));
    let next = queue.dispatch_with(plain(&key, 3), unique("k", period)).await.expect("dispatch");
    assert_ne!(next, holder, "the period is over");
    check_stats(&queue, "default", (1, 0, 0, 0, 1, 0), "the new one waits").await;
}

/// Jobs for one push, each `(queue, tag, key)`: a fresh id, and a `Finished` key if it has one.
fn keyed_jobs(queue: &Queue, jobs: &[(&str, u64, Option<&str>)]) -> Vec<NewJob> {
    jobs.iter()
        .map(|&(on, tag, key)| {
            let mut job = new_job(queue, &orcs_core::new_job_id(), on, tag);
            job.unique = key.map(|key| orcs_core::Unique::new(key, UniqueUntil::Finished));
            job
        })
        .collect()
}

/// Keys are per queue, and a batch answers per job: a key taken earlier in the same batch makes
/// a later job a duplicate of the earlier one.
pub async fn unique_keys_are_per_queue_and_per_job_in_a_batch(driver: BoxDriver) {
    let (queue, _clock) = manual_queue(&driver);
    let jobs = keyed_jobs(
        &queue,
        &[
            ("default", 1, Some("k")),
            ("default", 2, Some("k")),
            ("other", 3, Some("k")),
            ("default", 4, Some("j")),
        ],
    );
    let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    let outcomes = driver.push(jobs).await.expect("push");
    assert_eq!(
        outcomes,
        [
            PushOutcome::Stored,
            PushOutcome::Duplicate { id: ids[0].clone() },
            PushOutcome::Stored,
            PushOutcome::Stored,
        ],
        "per job; another queue has its own keys"
    );
    check_stats(&queue, "default", (2, 0, 0, 0, 0, 0), "two on default").await;
    check_stats(&queue, "other", (1, 0, 0, 0, 0, 0), "one on other").await;
}

/// One push mixing free keys (one on another queue), a plain job, a key whose `Period` is over
/// and one whose period is not: each job is answered as if pushed alone, in the push's order,
/// and each stored once (a driver that takes such a push in two tries must not store its first
/// jobs twice or lose the keys they took).
pub async fn unique_keys_of_every_holder_mix_in_one_push(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    let period = UniqueUntil::Period(10_000);
    let over = queue.dispatch_with(plain(&key, 1), unique("p", period)).await.expect("dispatch");
    clock.advance(Duration::from_millis(5_000));
    let within = queue.dispatch_with(plain(&key, 2), unique("q", period)).await.expect("dispatch");
    clock.advance(Duration::from_millis(5_000));
    let jobs = keyed_jobs(
        &queue,
        &[
            ("another", 3, Some("a")),
            ("default", 4, Some("a")),
            ("default", 5, None),
            ("default", 6, Some("p")),
            ("default", 7, Some("a")),
            ("default", 8, Some("q")),
        ],
    );
    let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    let outcomes = driver.push(jobs).await.expect("push");
    assert_eq!(
        outcomes,
        [
            PushOutcome::Stored,
            PushOutcome::Stored,
            PushOutcome::Stored,
            PushOutcome::Stored,
            PushOutcome::Duplicate { id: ids[1].clone() },
            PushOutcome::Duplicate { id: within.clone() },
        ],
        "a free key on each queue, no key, a period over, a key taken earlier in the push, a \
         period not over"
    );
    check_stats(&queue, "default", (5, 0, 0, 0, 0, 0), "two holders and three new jobs").await;
    check_stats(&queue, "another", (1, 0, 0, 0, 0, 0), "one on the other queue").await;
    for (on, held, holder) in
        [("another", "a", &ids[0]), ("default", "a", &ids[1]), ("default", "p", &ids[3])]
    {
        let again = queue
            .dispatch_with(plain(&key, 9), unique(held, UniqueUntil::Finished).queue(on))
            .await
            .expect("dispatch");
        assert_eq!(&again, holder, "key {held} on {on} is held by the job that took it");
    }
    let again = queue
        .dispatch_with(plain(&key, 10), unique("q", UniqueUntil::Finished))
        .await
        .expect("dispatch");
    assert_eq!(again, within, "the period not over keeps its holder");
    assert_ne!(ids[3], over, "the period's holder lost its key");
}

/// Keys meet holders of every kind across pushes, each push answered as if alone: a `Period`
/// holder keeps its key until its time even against `Started` or `Finished` keys and then
/// passes it on; a job holding a `Finished` key keeps it against a `Period` key; a job whose id
/// is in use is a duplicate of itself and takes no key, even one another job holds; jobs of
/// one push with one key but different kinds or dispatch times answer to the first.
pub async fn keyed_pushes_meet_every_kind_of_holder(driver: BoxDriver) {
    let (queue, _clock) = manual_queue(&driver);
    let t0 = queue.now();
    let keyed = |tag: u64, key: &str, until: UniqueUntil, now: Millis| {
        let mut job = new_job(&queue, &orcs_core::new_job_id(), "default", tag);
        (job.dispatched_at, job.available_at) = (now, now);
        job.unique = Some(orcs_core::Unique::new(key, until));
        job
    };
    let push = |jobs: Vec<NewJob>| driver.push(jobs);
    let period = keyed(0, "k", UniqueUntil::Period(10_000), t0);
    let holder = period.id.clone();
    assert_eq!(push(vec![period]).await.expect("push"), [PushOutcome::Stored]);
    for (tag, until) in [(1, UniqueUntil::Finished), (2, UniqueUntil::Started)] {
        assert_eq!(
            push(vec![keyed(tag, "k", until, t0 + 5_000)]).await.expect("push"),
            [PushOutcome::Duplicate { id: holder.clone() }],
            "within the period: {until:?}"
        );
    }
    let late = keyed(3, "k", UniqueUntil::Finished, t0 + 10_000);
    let holder = late.id.clone();
    assert_eq!(push(vec![late]).await.expect("push"), [PushOutcome::Stored], "period over");
    for (tag, until) in [(4, UniqueUntil::Started), (5, UniqueUntil::Period(1_000))] {
        assert_eq!(
            push(vec![keyed(tag, "k", until, t0 + 20_000)]).await.expect("push"),
            [PushOutcome::Duplicate { id: holder.clone() }],
            "the new holder keeps it while it waits, whatever the old period said: {until:?}"
        );
    }

    // An id in use: a duplicate of itself, with a free key or a held one, and takes neither.
    let mut reused = keyed(6, "m", UniqueUntil::Finished, t0 + 20_000);
    reused.id = holder.clone();
    let mut reused_held = keyed(7, "k", UniqueUntil::Started, t0 + 20_000);
    reused_held.id = holder.clone();
    for job in [reused, reused_held] {
        assert_eq!(
            push(vec![job]).await.expect("push"),
            [PushOutcome::Duplicate { id: holder.clone() }]
        );
    }
    let free = keyed(8, "m", UniqueUntil::Finished, t0 + 20_000);
    assert_eq!(
        push(vec![free]).await.expect("push"),
        [PushOutcome::Stored],
        "a job whose id was in use took no key"
    );

    // One push: a key shared by jobs of different kinds or dispatch times answers to the first.
    for (key, first, second) in [
        ("x", UniqueUntil::Finished, UniqueUntil::Finished),
        ("y", UniqueUntil::Period(60_000), UniqueUntil::Finished),
        ("z", UniqueUntil::Started, UniqueUntil::Period(60_000)),
    ] {
        let a = keyed(9, key, first, t0 + 20_000);
        let b = keyed(10, key, second, t0 + 20_001);
        let a_id = a.id.clone();
        assert_eq!(
            push(vec![a, b]).await.expect("push"),
            [PushOutcome::Stored, PushOutcome::Duplicate { id: a_id }],
            "key {key}"
        );
    }
    // An empty key is a key too.
    let empty = keyed(11, "", UniqueUntil::Finished, t0 + 20_000);
    let empty_id = empty.id.clone();
    assert_eq!(push(vec![empty]).await.expect("push"), [PushOutcome::Stored]);
    let plain = new_job(&queue, &orcs_core::new_job_id(), "default", 12);
    assert_eq!(
        push(vec![plain, keyed(13, "", UniqueUntil::Started, t0 + 20_000)]).await.expect("push"),
        [PushOutcome::Stored, PushOutcome::Duplicate { id: empty_id }]
    );
    // Stored: the first Period holder, `late`, `free`, three first jobs of a push, `empty`,
    // `plain`.
    let stats = queue.stats("default").await.expect("stats");
    assert_eq!(stats.pending, 8, "{stats:?}");
}

/// Debounce ([`orcs_core::Unique::debounce`]): a debounced dispatch whose key is held by a
/// waiting job (pending or delayed) gives that job its payload and run time and is answered
/// [`PushOutcome::Replaced`] with the holder's id; the holder keeps its id, key and everything
/// else. Against a running holder, a `Period` key whose job is gone, or its own id in use, it is
/// a plain duplicate; a free key stores it. Only the pushing job decides: a plain dispatch
/// against a debounced holder is a duplicate. In one push, a later job replaces an earlier one.
pub async fn debounce_replaces_a_waiting_holder(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    let debounce = |until: UniqueUntil, delay_ms: u64| {
        DispatchOptions::new().debounce("d", until).delay(Duration::from_millis(delay_ms))
    };
    let push = |tag: u64, options: DispatchOptions| {
        let job = queue.prepare(&plain(&key, tag), &options).expect("record");
        let queue = queue.clone();
        async move { queue.push_records(vec![job]).await.expect("push") }
    };
    let payload_of = |info: &orcs_core::JobInfo| -> u64 {
        let value: serde_json::Value = serde_json::from_str(&info.job.payload).expect("JSON");
        value["tag"].as_u64().expect("a tag")
    };
    let t0 = queue.now();

    // A delayed holder: each debounced dispatch pushes its run back and replaces its data.
    let first = queue.dispatch_with(plain(&key, 1), debounce(UniqueUntil::Finished, 10_000)).await;
    let first = first.expect("dispatch");
    clock.advance(Duration::from_millis(5_000));
    assert_eq!(
        push(2, debounce(UniqueUntil::Finished, 10_000)).await,
        [PushOutcome::Replaced { id: first.clone() }]
    );
    let info = queue.get(&first).await.expect("get").expect("the holder");
    assert_eq!((payload_of(&info), info.job.available_at), (2, t0 + 15_000), "{info:?}");
    assert_eq!(info.job.unique.as_ref().map(|u| u.key.as_str()), Some("d"), "it keeps its key");
    check_stats(&queue, "default", (0, 1, 0, 0, 0, 0), "one job, delayed").await;
    clock.advance(Duration::from_millis(5_000));
    assert!(claim_one(&queue, &["default"]).await.is_none(), "its run was pushed back");

    // A plain dispatch against it is a duplicate and changes nothing.
    let plain_again = queue
        .dispatch_with(plain(&key, 3), unique("d", UniqueUntil::Finished))
        .await
        .expect("dispatch");
    assert_eq!(plain_again, first);
    let info = queue.get(&first).await.expect("get").expect("the holder");
    assert_eq!((payload_of(&info), info.job.available_at), (2, t0 + 15_000), "{info:?}");

    // Without a delay the holder becomes ready now; with one it waits again.
    assert_eq!(
        push(4, debounce(UniqueUntil::Finished, 0)).await,
        [PushOutcome::Replaced { id: first.clone() }]
    );
    check_stats(&queue, "default", (1, 0, 0, 0, 0, 0), "ready now").await;
    assert_eq!(
        push(5, debounce(UniqueUntil::Finished, 1_000)).await,
        [PushOutcome::Replaced { id: first.clone() }]
    );
    check_stats(&queue, "default", (0, 1, 0, 0, 0, 0), "delayed again").await;
    assert!(claim_one(&queue, &["default"]).await.is_none(), "not due yet");
    assert_eq!(
        push(6, debounce(UniqueUntil::Finished, 0)).await,
        [PushOutcome::Replaced { id: first.clone() }]
    );

    // A running holder: a duplicate; the attempt runs the data it was claimed with.
    let running = claim_one(&queue, &["default"]).await.expect("the holder");
    assert_eq!((running.record.id.as_str(), tag_of(&running)), (first.as_str(), 6));
    assert_eq!(
        push(7, debounce(UniqueUntil::Finished, 0)).await,
        [PushOutcome::Duplicate { id: first.clone() }]
    );
    check_stats(&queue, "default", (0, 0, 1, 0, 0, 0), "only the running job").await;
    complete(&driver, &running.lease, queue.now()).await.expect("complete");

    // A free key stores the job; a `Started` key frees at the claim.
    let started = queue.dispatch_with(plain(&key, 8), debounce(UniqueUntil::Started, 0)).await;
    let started = started.expect("dispatch");
    assert_ne!(started, first, "the key was free");
    let claimed = claim_one(&queue, &["default"]).await.expect("a job");
    assert_eq!(tag_of(&claimed), 8);
    assert!(matches!(
        push(9, debounce(UniqueUntil::Started, 0)).await.as_slice(),
        [PushOutcome::Stored]
    ));
    let waiting = claim_one(&queue, &["default"]).await.expect("a job");
    assert_eq!(tag_of(&waiting), 9);
    for lease in [&claimed.lease, &waiting.lease] {
        complete(&driver, lease, queue.now()).await.expect("complete");
    }

    // A `Period` key whose holder already ran: a duplicate, nothing to replace.
    let period = UniqueUntil::Period(60_000);
    let holder = queue.dispatch_with(plain(&key, 10), debounce(period, 0)).await.expect("dispatch");
    let ran = claim_one(&queue, &["default"]).await.expect("a job");
    complete(&driver, &ran.lease, queue.now()).await.expect("complete");
    assert_eq!(push(11, debounce(period, 0)).await, [PushOutcome::Duplicate { id: holder }]);
    check_stats(&queue, "default", (0, 0, 0, 0, 4, 0), "nothing waits").await;

    // Its own id in use: a duplicate of itself, replacing nothing and taking no key.
    let keyed = |tag: u64, on: &str| {
        let options = DispatchOptions::new().debounce(on, UniqueUntil::Finished);
        queue.prepare(&plain(&key, tag), &options).expect("record")
    };
    let holder = keyed(12, "g");
    let kept = holder.id.clone();
    assert_eq!(queue.push_records(vec![holder]).await.expect("push"), [PushOutcome::Stored]);
    let mut reused = keyed(13, "e");
    reused.id = kept.clone();
    assert_eq!(
        queue.push_records(vec![reused]).await.expect("push"),
        [PushOutcome::Duplicate { id: kept.clone() }]
    );

    // One push: the later job with the key replaces the earlier one, and a job whose key is
    // held by a waiting holder replaces it too.
    let jobs = vec![keyed(14, "f"), keyed(15, "f"), keyed(16, "g"), keyed(17, "f"), keyed(18, "e")];
    let lead = jobs[0].id.clone();
    assert_eq!(
        queue.push_records(jobs).await.expect("push"),
        [
            PushOutcome::Stored,
            PushOutcome::Replaced { id: lead.clone() },
            PushOutcome::Replaced { id: kept.clone() },
            PushOutcome::Replaced { id: lead.clone() },
            PushOutcome::Stored,
        ]
    );
    check_stats(&queue, "default", (3, 0, 0, 0, 4, 0), "three jobs wait").await;
    let mut tags: Vec<u64> = Vec::new();
    while let Some(job) = claim_one(&queue, &["default"]).await {
        tags.push(tag_of(&job));
        complete(&driver, &job.lease, queue.now()).await.expect("complete");
    }
    tags.sort_unstable();
    assert_eq!(tags, [16, 17, 18], "each holder runs once, with the last data it was given");

    // The holder keeps its priority and metadata (a chain's, a trace's): a delayed holder of
    // priority 5 made ready runs before a ready job of priority 0 dispatched before it.
    let low = queue.dispatch(plain(&key, 19)).await.expect("dispatch");
    let mut high = keyed(20, "h");
    (high.priority, high.meta) = (5, Some(r#"{"note":1}"#.to_owned()));
    high.available_at += 60_000;
    let high_id = high.id.clone();
    assert_eq!(queue.push_records(vec![high]).await.expect("push"), [PushOutcome::Stored]);
    assert_eq!(
        queue.push_records(vec![keyed(21, "h")]).await.expect("push"),
        [PushOutcome::Replaced { id: high_id.clone() }]
    );
    let first = claim_one(&queue, &["default"]).await.expect("a job");
    let record = &first.record;
    assert_eq!(
        (record.id.as_str(), tag_of(&first), record.priority, record.meta.as_deref()),
        (high_id.as_str(), 21, 5, Some(r#"{"note":1}"#))
    );
    let second = claim_one(&queue, &["default"]).await.expect("a job");
    assert_eq!(second.record.id, low);
}

/// A push larger than one atomic step of a driver (Redis stores at most 1,000 jobs per script
/// call: [`orcs_core::Capabilities::atomic_push_limit`]) answers every job as a push of the
/// jobs one by one in order would: a job whose unique key an earlier job of the push holds is
/// a duplicate of (or, debounced, replaces) the job that holds the key, whichever that is: the
/// earlier job, or an existing holder that the earlier job met. A job whose id was in use took
/// no key, so a later job with its key is stored.
pub async fn a_push_beyond_one_atomic_step_answers_keys_in_order(driver: BoxDriver) {
    let (queue, _clock) = manual_queue(&driver);
    let (key, _) = probe();
    let record = |tag: u64, options: &DispatchOptions| {
        queue.prepare(&plain(&key, tag), options).expect("record")
    };
    let keyed = |on: &str| DispatchOptions::new().unique(on, UniqueUntil::Finished);
    let debounced = |on: &str| DispatchOptions::new().debounce(on, UniqueUntil::Finished);
    // An existing waiting holder of key "b", and an existing job whose id the push reuses.
    let holder = record(1, &keyed("b"));
    let reused = record(2, &DispatchOptions::new());
    let (holder_id, reused_id) = (holder.id.clone(), reused.id.clone());
    let existing = queue.push_records(vec![holder, reused]).await.expect("push");
    assert_eq!(existing, [PushOutcome::Stored, PushOutcome::Stored]);

    const JOBS: u64 = 2_500;
    let mut jobs: Vec<NewJob> =
        (0..JOBS).map(|i| record(100 + i, &DispatchOptions::new())).collect();
    let mut set = |at: usize, options: DispatchOptions| {
        let id = jobs[at].id.clone();
        jobs[at] = record(100 + at as u64, &options);
        jobs[at].id = id;
    };
    set(0, debounced("a"));
    set(1_200, debounced("a"));
    set(2_400, keyed("a"));
    set(100, keyed("b"));
    set(1_500, debounced("b"));
    set(300, keyed("c"));
    set(1_300, keyed("c"));
    set(50, keyed("d"));
    set(1_700, keyed("d"));
    jobs[50].id = reused_id.clone();
    let lead = jobs[0].id.clone();
    let third = jobs[300].id.clone();
    let outcomes = queue.push_records(jobs).await.expect("push");

    let mut expected = vec![PushOutcome::Stored; JOBS as usize];
    expected[1_200] = PushOutcome::Replaced { id: lead.clone() };
    expected[2_400] = PushOutcome::Duplicate { id: lead.clone() };
    expected[100] = PushOutcome::Duplicate { id: holder_id.clone() };
    expected[1_500] = PushOutcome::Replaced { id: holder_id.clone() };
    expected[1_300] = PushOutcome::Duplicate { id: third };
    expected[50] = PushOutcome::Duplicate { id: reused_id };
    for (at, (got, want)) in outcomes.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "job {at} of the push");
    }
    assert_eq!(outcomes.len(), expected.len());
    // The two existing jobs and the push's stored ones wait.
    let stored = expected.iter().filter(|o| **o == PushOutcome::Stored).count() as u64;
    check_stats(&queue, "default", (stored + 2, 0, 0, 0, 0, 0), "the push's jobs wait").await;
    let tag = |info: orcs_core::JobInfo| -> u64 {
        let value: serde_json::Value = serde_json::from_str(&info.job.payload).expect("JSON");
        value["tag"].as_u64().expect("a tag")
    };
    let lead_now = queue.get(&lead).await.expect("get").expect("the lead job");
    assert_eq!(tag(lead_now), 1_300, "the lead job took the data of job 1,200 of the push");
    let holder_now = queue.get(&holder_id).await.expect("get").expect("the holder");
    assert_eq!(tag(holder_now), 1_600, "the holder took the data of job 1,500 of the push");
}

/// Debounced dispatches racing claims of their holder, round after round, with `Started` and
/// `Finished` keys: no dispatch fails (a claim that frees a key while a push waits on it must
/// not deadlock with the push's update of the holder), and the outcome tells what ran: after
/// `Replaced` the holder runs the new data; after `Duplicate` the old; after `Stored` a claim
/// had started the holder, and the new job runs the new data.
pub async fn debounce_races_claims_of_its_holder(driver: BoxDriver) {
    let queue = system_queue(&driver);
    let (key, _) = probe();
    for round in 0..60_u64 {
        let until = if round % 2 == 0 { UniqueUntil::Started } else { UniqueUntil::Finished };
        let on = format!("race-{round}");
        let options = DispatchOptions::new().debounce(on.as_str(), until);
        let holder = queue.prepare(&plain(&key, 1), &options).expect("record");
        let holder_id = holder.id.clone();
        assert_eq!(queue.push_records(vec![holder]).await.expect("push"), [PushOutcome::Stored]);
        let newer = queue.prepare(&plain(&key, 2), &options).expect("record");
        let newer_id = newer.id.clone();
        let pusher = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.push_records(vec![newer]).await })
        };
        let claimer = {
            let queue = queue.clone();
            tokio::spawn(async move { claim(&queue, &["default"], 1).await })
        };
        let outcome = pusher.await.expect("task").unwrap_or_else(|e| {
            panic!("round {round} ({until:?}): the debounced push failed: {e}")
        });
        let mut ran: Vec<(String, u64)> = Vec::new();
        for job in claimer.await.expect("task") {
            ran.push((job.record.id.clone(), tag_of(&job)));
            complete(&driver, &job.lease, queue.now()).await.expect("complete");
        }
        while let Some(job) = claim_one(&queue, &["default"]).await {
            ran.push((job.record.id.clone(), tag_of(&job)));
            complete(&driver, &job.lease, queue.now()).await.expect("complete");
        }
        ran.sort();
        let mut expected = match &outcome[..] {
            [PushOutcome::Replaced { id }] if *id == holder_id => vec![(holder_id.clone(), 2)],
            [PushOutcome::Duplicate { id }] if *id == holder_id => vec![(holder_id.clone(), 1)],
            [PushOutcome::Stored] => vec![(holder_id.clone(), 1), (newer_id.clone(), 2)],
            other => panic!("round {round} ({until:?}): {other:?}"),
        };
        expected.sort();
        assert_eq!(ran, expected, "round {round} ({until:?}): {outcome:?}");
    }
}

/// A settle of many items frees each completed job's `Finished` key in that step, in item order
/// (an effect of a later item may take a key an earlier completion freed), and only keys the jobs
/// still hold: a job that failed for good gave its key up, so when it runs again (retried from
/// the failed set) and completes, the key's new holder keeps it. A `Period` key outlives its
/// job's completion. A lease of a keyed job is touched and extended as any other.
pub async fn unique_keys_free_per_job_in_one_settle(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    let until = UniqueUntil::Finished;
    let dispatch = |tag, key_name: &'static str, until| {
        let queue = queue.clone();
        let key = key.clone();
        async move {
            queue.dispatch_with(plain(&key, tag), unique(key_name, until)).await.expect("dispatch")
        }
    };
    let gone = dispatch(1, "g", until).await;
    let held = claim_one(&queue, &["default"]).await.expect("a job");
    fail(&driver, &held.lease, "boom", clock.now()).await.expect("fail");
    let taker = dispatch(2, "g", until).await;
    assert_ne!(taker, gone, "failed for good: free");
    queue.retry_failed(&gone).await.expect("retry failed");
    let period = UniqueUntil::Period(60_000);
    let mut holders = Vec::new();
    for (tag, name) in [(3, "a"), (4, "b"), (5, "c")] {
        holders.push(dispatch(tag, name, until).await);
    }
    let in_period = dispatch(6, "p", period).await;
    queue.dispatch_with(plain(&key, 7), DispatchOptions::new()).await.expect("dispatch");
    let held = claim(&queue, &["default"], 10).await;
    assert_eq!(held.len(), 7, "every job claimed");

    // A keyed job's lease is touched and extended as any other.
    let c = held.iter().find(|r| r.record.id == holders[2]).expect("c's job");
    let touch = orcs_core::Touch::new(c.lease.clone(), Some("{\"keyed\":1}".to_owned()));
    driver.touch(&[touch], clock.now()).await.expect("touch");
    let info = queue.get(&holders[2]).await.expect("get").expect("running");
    assert_eq!(info.progress.as_deref(), Some(r#"{"keyed":1}"#), "the touch was taken");
    let until_ms = c.lease.expires_at + 1_000;
    let extended = driver.extend(&c.lease, until_ms, clock.now()).await.expect("extend");

    // Every job but the key's new holder completes in one settle; c's completion stores a job
    // that takes a's key, freed by the item before it.
    let follow = {
        let mut job = new_job(&queue, &orcs_core::new_job_id(), "default", 8);
        job.unique = Some(orcs_core::Unique::new("a", until));
        job
    };
    let settles: Vec<Settle> = held
        .iter()
        .filter(|r| r.record.id != taker)
        .map(|r| {
            if r.record.id == holders[2] {
                Settle::complete(extended.clone()).enqueue([follow.clone()])
            } else {
                Settle::complete(r.lease.clone())
            }
        })
        .collect();
    // a's completion comes before c's.
    let a_at = held.iter().filter(|r| r.record.id != taker).position(|r| r.record.id == holders[0]);
    let c_at = held.iter().filter(|r| r.record.id != taker).position(|r| r.record.id == holders[2]);
    assert!(a_at < c_at, "claimed in dispatch order");
    let results = driver.settle(&settles, clock.now()).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert!(driver.get(&follow.id, clock.now()).await.expect("get").is_some(), "a's key taken");

    assert_eq!(dispatch(9, "a", until).await, follow.id, "a: held by the effect's job");
    for (tag, name) in [(10, "b"), (11, "c")] {
        let again = dispatch(tag, name, until).await;
        assert!(!holders.contains(&again), "{name}: completed, free");
    }
    assert_eq!(dispatch(12, "g", until).await, taker, "g: kept by its new holder");
    assert_eq!(dispatch(13, "p", period).await, in_period, "p: the period is not over");
    let taker_lease = held.iter().find(|r| r.record.id == taker).expect("taker").lease.clone();
    complete(&driver, &taker_lease, clock.now()).await.expect("complete");
    assert_ne!(dispatch(14, "g", until).await, taker, "g: its holder completed");
}

/// Many dispatchers racing on one key, round after round: exactly one job per round, and every
/// caller gets that job's id. In every other round half of them debounce: the job then runs the
/// data of the dispatch that stored it or of one that replaced it, never a duplicate's.
pub async fn concurrent_dispatchers_on_one_key_store_one_job(driver: BoxDriver) {
    const DISPATCHERS: usize = 64;
    // 100 rounds in CI; ORCS_TEST_UNIQUE_ROUNDS=1000 (with ORCS_TEST_CASE_TIMEOUT_SECS raised for
    // PostgreSQL, which commits each dispatch) is the long run RELIABILITY.md reports.
    let rounds: usize =
        std::env::var("ORCS_TEST_UNIQUE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let queue = system_queue(&driver);
    let (key, _) = probe();
    for round in 0..rounds {
        let calls: Vec<_> = (0..DISPATCHERS)
            .map(|i| {
                let queue = queue.clone();
                let key = key.clone();
                tokio::spawn(async move {
                    let on = format!("round-{round}");
                    let options = if round % 2 == 1 && i % 2 == 1 {
                        DispatchOptions::new().debounce(on, UniqueUntil::Finished)
                    } else {
                        unique(&on, UniqueUntil::Finished)
                    };
                    let job = queue.prepare(&plain(&key, i as u64), &options).expect("record");
                    let own = job.id.clone();
                    let outcome = queue.push_records(vec![job]).await.expect("dispatch");
                    (i as u64, own, outcome.into_iter().next().expect("an outcome"))
                })
            })
            .collect();
        let mut ids = HashSet::new();
        let mut gave_data = HashSet::new();
        for call in calls {
            let (tag, own, outcome) = call.await.expect("task");
            ids.insert(match outcome {
                PushOutcome::Stored => {
                    gave_data.insert(tag);
                    own
                }
                PushOutcome::Replaced { id } => {
                    gave_data.insert(tag);
                    id
                }
                PushOutcome::Duplicate { id } => id,
                other => panic!("round {round}: {other:?}"),
            });
        }
        assert_eq!(ids.len(), 1, "round {round}: every caller got the one holder's id");
        let holder = ids.into_iter().next().expect("one id");
        let info = queue.get(&holder).await.expect("get").expect("the holder");
        let value: serde_json::Value = serde_json::from_str(&info.job.payload).expect("JSON");
        let tag = value["tag"].as_u64().expect("a tag");
        assert!(gave_data.contains(&tag), "round {round}: tag {tag} is not of {gave_data:?}");
    }
    let s = stats(&queue, "default").await;
    assert_eq!(s.pending, rounds as u64, "one job per round");
}

/// Dispatchers racing on one key with every kind of `until` (started, finished, a period):
/// exactly one job per round whichever kinds meet, and every caller gets its id (a driver that
/// keeps the kinds apart must still see one another's keys at once). Then dispatchers race the
/// end of the key's holder: each gets the holder's id or the one job stored after it ended, and
/// at most one is.
pub async fn dispatchers_of_every_kind_race_on_one_key(driver: BoxDriver) {
    const DISPATCHERS: usize = 48;
    const ROUNDS: usize = 30;
    let queue = system_queue(&driver);
    let (key, _) = probe();
    let untils = [UniqueUntil::Started, UniqueUntil::Finished, UniqueUntil::Period(3_600_000)];
    let race = |on: String, round: usize| {
        (0..DISPATCHERS)
            .map(|i| {
                let (queue, key, on) = (queue.clone(), key.clone(), on.clone());
                let options = unique(&on, untils[(i + round) % untils.len()]);
                tokio::spawn(async move {
                    let job = queue.prepare(&plain(&key, i as u64), &options).expect("record");
                    let own = job.id.clone();
                    let outcome = queue.push_records(vec![job]).await.expect("dispatch");
                    (own, outcome.into_iter().next().expect("an outcome"))
                })
            })
            .collect::<Vec<_>>()
    };
    for round in 0..ROUNDS {
        let mut ids = HashSet::new();
        for call in race(format!("mix-{round}"), round) {
            ids.insert(match call.await.expect("task") {
                (own, PushOutcome::Stored) => own,
                (_, PushOutcome::Duplicate { id }) => id,
                (_, other) => panic!("round {round}: {other:?}"),
            });
        }
        assert_eq!(ids.len(), 1, "round {round}: every caller got the one holder's id");
    }
    assert_eq!(stats(&queue, "default").await.pending, ROUNDS as u64, "one job per round");
    queue.clear("default").await.expect("clear");
    for round in 0..ROUNDS {
        let on = format!("end-{round}");
        let holder = queue.prepare(&plain(&key, 1_000), &unique(&on, UniqueUntil::Finished));
        let holder = holder.expect("record");
        let outcome = queue.push_records(vec![holder.clone()]).await.expect("dispatch");
        assert_eq!(outcome, [PushOutcome::Stored], "round {round}: a free key");
        let running = claim(&queue, &["default"], 1).await;
        assert_eq!(running.len(), 1, "round {round}: the holder runs");
        // Every kind but `Started` (whose key the claim freed already).
        let calls = race(on, 1 + round % 2);
        complete(&driver, &running[0].lease, queue.now()).await.expect("complete");
        let mut stored = Vec::new();
        let mut answered = HashSet::new();
        for call in calls {
            match call.await.expect("task") {
                (own, PushOutcome::Stored) => stored.push(own),
                (_, PushOutcome::Duplicate { id }) => {
                    answered.insert(id);
                }
                (_, other) => panic!("round {round}: {other:?}"),
            }
        }
        assert!(stored.len() <= 1, "round {round}: {} jobs took the freed key", stored.len());
        answered.remove(&holder.id);
        for id in &stored {
            answered.remove(id);
        }
        assert!(answered.is_empty(), "round {round}: answered with {answered:?}");
        queue.clear("default").await.expect("clear");
    }
}

/// A concurrency limit caps the queue's reserved jobs across every claim; a finished job or an
/// expired lease frees its slot. Limits show in stats and can be cleared.
pub async fn concurrency_limit_caps_jobs_running_at_once(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    queue.dispatch_many((0..10).map(|i| plain(&key, i))).await.expect("dispatch");
    queue.set_limits("default", QueueLimits::none().concurrency(2)).await.expect("limit");
    assert_eq!(stats(&queue, "default").await.limits.concurrency, Some(2));
    let first = claim(&queue, &["default"], 10).await;
    assert_eq!(first.len(), 2, "two at once");
    assert!(claim(&queue, &["default"], 10).await.is_empty(), "no slot left for another claim");
    complete(&driver, &first[0].lease, clock.now()).await.expect("complete");
    clock.advance(Duration::from_secs(1));
    assert_eq!(claim(&queue, &["default"], 10).await.len(), 1, "a finished job frees its slot");
    clock.set(first[1].lease.expires_at);
    driver.recover(&names(&["default"]), clock.now()).await.expect("recover");
    assert_eq!(
        claim(&queue, &["default"], 10).await.len(),
        1,
        "a dead worker's slot frees at recovery"
    );
    queue.set_limits("default", QueueLimits::none()).await.expect("clear limits");
    assert_eq!(stats(&queue, "default").await.limits, QueueLimits::none());
    assert_eq!(claim(&queue, &["default"], 10).await.len(), 7, "no limit: the rest");
}

/// A claim leaves the worker's settling jobs ([`orcs_core::ClaimRequest::settling`]) out of a
/// concurrency limit's count, but only by their leases' tokens: an unknown token, or the token
/// of a job's earlier claim (its lease expired and another worker runs it now), frees no slot.
/// The running job's own token frees its slot, never more. (The view gives tokens and leases:
/// a driver reads the tokens, or finds each lease by its job's id; a view of tokens alone may
/// free nothing, but is no error.)
pub async fn settling_tokens_free_only_their_own_slots(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    queue.set_limits("default", QueueLimits::none().concurrency(1)).await.expect("limit");
    queue.dispatch(plain(&key, 0)).await.expect("dispatch");
    let queues = names(&["default"]);
    let claim_settling = |leases: Vec<Lease>, now: Millis| {
        let (driver, queues) = (&driver, &queues);
        async move { claim_settling_at(driver, queues, &SettlingView::of(&leases), now).await }
    };
    let first = claim(&queue, &["default"], 10).await;
    assert_eq!(first.len(), 1, "the job");
    let old_token = first[0].lease.token.clone();
    // The lease runs out; recovery hands the job to another claim, under a new token.
    clock.set(first[0].lease.expires_at);
    driver.recover(&queues, clock.now()).await.expect("recover");
    let again = claim(&queue, &["default"], 10).await;
    assert_eq!(again.len(), 1, "the recovered job's slot is free");
    assert_eq!(again[0].record.id, first[0].record.id, "the recovered job");
    let token = again[0].lease.token.clone();
    assert_ne!(token, old_token, "a fresh token");
    queue.dispatch_many((1..3).map(|i| plain(&key, i))).await.expect("dispatch");
    let with_token = |token: String| {
        let mut lease = again[0].lease.clone();
        lease.token = token;
        lease
    };
    assert!(
        claim_settling(
            vec![with_token("no-such-token".into()), with_token(format!("{token}x"))],
            clock.now()
        )
        .await
        .is_empty(),
        "an unknown token frees no slot"
    );
    assert!(
        claim_settling(vec![with_token(old_token)], clock.now()).await.is_empty(),
        "the earlier claim's token frees no slot of the job running again"
    );
    // A view of tokens alone (no leases, no marks): a driver that finds a job by its id
    // cannot read it and counts the job as running; none fails the claim or passes the limit.
    let tokens_only = vec![token.clone()];
    let by_tokens = claim_settling_at(&driver, &queues, &tokens_only, clock.now()).await;
    assert!(by_tokens.len() <= 1, "at most the job's own slot: {}", by_tokens.len());
    for job in &by_tokens {
        release(&driver, &job.lease, clock.now()).await.expect("hand back");
    }
    let own = claim_settling(vec![again[0].lease.clone(), again[0].lease.clone()], clock.now());
    let own = own.await;
    assert_eq!(own.len(), 1, "its own token frees its own slot, once however often it comes");
    complete(&driver, &again[0].lease, clock.now()).await.expect("complete");
    assert!(claim(&queue, &["default"], 10).await.is_empty(), "never above the limit");
    complete(&driver, &own[0].lease, clock.now()).await.expect("complete");
    assert_eq!(claim(&queue, &["default"], 10).await.len(), 1, "the completed job's slot");
}

/// A worker's view of its settling jobs, as the worker's settle queue gives it: their tokens,
/// their leases, and their settles' marks (per queue) when it has them.
#[derive(Debug)]
struct SettlingView {
    settling: Vec<(i64, Lease)>,
    writer: Option<Arc<str>>,
}

impl SettlingView {
    /// Settling jobs whose settles carry no marks.
    fn of(leases: &[Lease]) -> Self {
        Self { settling: leases.iter().map(|lease| (0, lease.clone())).collect(), writer: None }
    }

    /// Settling jobs whose settles `writer` numbered as given.
    fn marked(writer: &Arc<str>, settling: &[(i64, &Lease)]) -> Self {
        let settling = settling.iter().map(|(seq, lease)| (*seq, (*lease).clone())).collect();
        Self { settling, writer: Some(Arc::clone(writer)) }
    }
}

impl orcs_core::Settling for SettlingView {
    fn tokens(&self) -> Vec<String> {
        self.settling.iter().map(|(_, lease)| lease.token.clone()).collect()
    }

    fn marks(&self, queue: &str) -> Option<orcs_core::SettlingMarks> {
        let writer = Arc::clone(self.writer.as_ref()?);
        let of_queue = self.settling.iter().filter(|(_, lease)| lease.queue == queue);
        let marks = of_queue.map(|(seq, lease)| (*seq, lease.expires_at)).collect();
        Some(orcs_core::SettlingMarks::new(writer, marks))
    }

    fn each_lease(&self, each: &mut dyn FnMut(&Lease)) -> bool {
        self.settling.iter().for_each(|(_, lease)| each(lease));
        true
    }
}

/// A claim may count the worker's settling jobs by their settles' marks
/// ([`orcs_core::Settling::marks`], which a driver records in the step that writes a marked
/// settle) instead of reading their rows by token; it frees exactly the slots the tokens free.
/// A settle written (a plain completion, a retry) frees no slot a second time when a view read
/// before its write still holds it, even after an older settle of the writer came again late,
/// and a job whose lease ran out, recovered and claimed again, frees none through its earlier
/// claim's mark.
pub async fn settle_marks_free_only_unwritten_slots(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    queue.set_limits("default", QueueLimits::none().concurrency(2)).await.expect("limit");
    queue.dispatch_many((0..8).map(|i| plain(&key, i))).await.expect("dispatch");
    let queues = names(&["default"]);
    let writer: Arc<str> = format!("writer-{}", orcs_core::new_job_id()).into();
    let mark = |seq: i64| orcs_core::SettleMark::new(Arc::clone(&writer), seq);
    let view = |settling: &[(i64, &Lease)], marked: bool| {
        if marked {
            SettlingView::marked(&writer, settling)
        } else {
            let leases: Vec<Lease> = settling.iter().map(|(_, lease)| (*lease).clone()).collect();
            SettlingView::of(&leases)
        }
    };
    let claim_settling = |view: SettlingView, now: Millis| {
        let (driver, queues) = (&driver, &queues);
        async move { claim_settling_at(driver, queues, &view, now).await }
    };
    let first = claim(&queue, &["default"], 10).await;
    assert_eq!(first.len(), 2, "the limit");
    let (a, b) = (&first[0].lease, &first[1].lease);
    let written = Settle::complete(a.clone()).marked(mark(1));
    driver.settle_one(written, clock.now()).await.expect("a's completion, written");
    // Read before a's write answered: a still in it, b's code ended and its settle queued.
    let settling = [(1, a), (2, b)];
    let by_tokens = claim_settling(view(&settling, false), clock.now()).await;
    assert!(by_tokens.len() <= 2, "b's slot at most, beside a's: got {}", by_tokens.len());
    for job in &by_tokens {
        release(&driver, &job.lease, clock.now()).await.expect("hand back");
    }
    let by_marks = claim_settling(view(&settling, true), clock.now()).await;
    assert_eq!(by_marks.len(), by_tokens.len(), "the marks free what the tokens free");
    // b's settle written too (a retry, another kind of step): the same stale view frees
    // nothing more than the limit leaves.
    let again_at = clock.now() + 60_000;
    let b_retry = Settle::retry(b.clone(), again_at, "try later").marked(mark(2));
    driver.settle_one(b_retry, clock.now()).await.expect("b's retry, written");
    // a's settle again, late (a writer's retry after a lost answer): stale, and its older
    // number lowers nothing, so b stays written.
    let late = Settle::complete(a.clone()).marked(mark(1));
    assert!(driver.settle_one(late, clock.now()).await.is_err(), "a was settled already");
    let left = 2 - by_marks.len();
    let stale = claim_settling(view(&settling, true), clock.now()).await;
    assert_eq!(stale.len(), left, "written settles free no slot twice");
    // The leases run out; recovery hands the jobs to other claims, under new tokens.
    let held: Vec<Lease> = by_marks.iter().chain(&stale).map(|job| job.lease.clone()).collect();
    assert_eq!(held.len(), 2, "the limit is held");
    clock.set(held.iter().map(|lease| lease.expires_at).max().expect("two leases"));
    driver.recover(&queues, clock.now()).await.expect("recover");
    let taken = claim(&queue, &["default"], 10).await;
    assert_eq!(taken.len(), 2, "the recovered jobs' slots are free");
    let expired: Vec<(i64, &Lease)> =
        held.iter().zip(3..).map(|(lease, seq)| (seq, lease)).collect();
    assert!(
        claim_settling(view(&expired, true), clock.now()).await.is_empty(),
        "an expired lease's settle frees no slot of the job running again"
    );
    for job in &taken {
        complete(&driver, &job.lease, clock.now()).await.expect("complete");
    }
    assert_eq!(claim(&queue, &["default"], 10).await.len(), 2, "completed: two slots free");
}

/// A worker's settling jobs free slots of their own queue only: a claim of a limited queue by a
/// worker that also runs another queue leaves that queue's settling jobs counted as nothing
/// (its slots are not theirs), however it names them (tokens, leases or marks, the writer's
/// earlier settles of both queues written, so its marks are known), while its own queue's
/// settling job frees its slot.
pub async fn settling_jobs_of_other_queues_free_no_slot(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    queue.set_limits("default", QueueLimits::none().concurrency(1)).await.expect("limit");
    queue.dispatch_many((0..3).map(|i| plain(&key, i))).await.expect("dispatch");
    let other = DispatchOptions::new().queue("other");
    for i in 10..12 {
        queue.dispatch_with(plain(&key, i), other.clone()).await.expect("dispatch to other");
    }
    let writer: Arc<str> = format!("writer-{}", orcs_core::new_job_id()).into();
    let mark = |seq: i64| orcs_core::SettleMark::new(Arc::clone(&writer), seq);
    let write = |lease: &Lease, seq: i64| {
        let settle = Settle::complete(lease.clone()).marked(mark(seq));
        driver.settle_one(settle, clock.now())
    };
    // The writer's first settles, one of each queue, written: its marks are known from here on.
    let first = claim(&queue, &["default"], 10).await;
    assert_eq!(first.len(), 1, "the limit");
    write(&first[0].lease, 1).await.expect("a completion of the limited queue");
    let running = claim(&queue, &["default"], 10).await;
    assert_eq!(running.len(), 1, "the limit");
    let others = claim(&queue, &["other"], 10).await;
    assert_eq!(others.len(), 2, "no limit on the other queue");
    write(&others[0].lease, 2).await.expect("a completion of the other queue");
    let settling = &others[1].lease;
    let queues = names(&["default"]);
    let claim_settling = |settling: Vec<(i64, &Lease)>| {
        let view = SettlingView::marked(&writer, &settling);
        let (driver, queues, now) = (&driver, &queues, clock.now());
        async move { claim_settling_at(driver, queues, &view, now).await }
    };
    assert!(
        claim_settling(vec![(3, settling)]).await.is_empty(),
        "another queue's settling job frees no slot of this one"
    );
    let own = claim_settling(vec![(3, settling), (4, &running[0].lease)]).await;
    assert_eq!(own.len(), 1, "this queue's settling job frees its own slot");
    complete(&driver, &running[0].lease, clock.now()).await.expect("complete");
    complete(&driver, &own[0].lease, clock.now()).await.expect("complete");
    complete(&driver, settling, clock.now()).await.expect("complete");
    assert!(claim(&queue, &["default"], 10).await.is_empty(), "the queue's three jobs ran");
}

/// A claim of a queue with a concurrency limit promotes its due delayed jobs first, as every
/// claim does, from its second claim on too (a driver may take a shorter path for a queue it
/// knows to be limited): a due job of higher priority is claimed before the ready ones, within
/// the limit; once the limit is lifted, the rest come in one claim.
pub async fn limited_claims_promote_due_jobs_first(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    queue.set_limits("default", QueueLimits::none().concurrency(2)).await.expect("limit");
    queue.dispatch_many((0..4).map(|i| plain(&key, i))).await.expect("dispatch");
    let first = claim(&queue, &["default"], 1).await;
    assert_eq!(first.iter().map(tag_of).collect::<Vec<_>>(), [0]);
    let urgent = queue
        .dispatch_with(
            plain(&key, 10),
            DispatchOptions::new().priority(5).delay(Duration::from_secs(5)),
        )
        .await
        .expect("dispatch");
    assert!(claim(&queue, &["default"], 1).await.iter().map(tag_of).eq([1]), "not due yet");
    complete(&driver, &first[0].lease, clock.now()).await.expect("complete");
    clock.advance(Duration::from_secs(5));
    let second = claim(&queue, &["default"], 10).await;
    assert_eq!(second.len(), 1, "one slot is free");
    assert_eq!(second[0].record.id, urgent, "the due job of higher priority first");
    assert!(claim(&queue, &["default"], 10).await.is_empty(), "no slot left");
    queue.set_limits("default", QueueLimits::none()).await.expect("clear limits");
    let rest: Vec<u64> = claim(&queue, &["default"], 10).await.iter().map(tag_of).collect();
    assert_eq!(rest, [2, 3], "no limit: the rest");
}

/// Promotion under a concurrency limit, which a driver may claim through a path of its own
/// (PostgreSQL's claim function, which promotes one chunk at a time and only when a job is due,
/// and counts its worker's settling jobs only when the limit could bind): more due jobs than one
/// promotion takes, a due job of higher priority first, then dispatch order; with the limit
/// lowered to bind, exactly the room it leaves.
pub async fn limited_promotion_never_inverts_priority(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    let start = clock.now();
    queue.set_limits("default", QueueLimits::none().concurrency(1_000)).await.expect("limit");
    dispatch_more_than_a_promotion(&queue, &key).await;
    // Nothing due yet (and a driver that remembers limited queues now knows this one).
    assert!(claim(&queue, &["default"], 5).await.is_empty(), "nothing is due yet");
    clock.set(start + 3_000);
    let first = claim_one(&queue, &["default"]).await.expect("a job");
    assert_eq!(tag_of(&first), 5_000, "the high-priority due job comes first");
    let next = claim(&queue, &["default"], 3).await;
    assert_eq!(next.iter().map(tag_of).collect::<Vec<_>>(), [0, 1, 2], "then dispatch order");
    // Four running: a limit of 6 leaves room for two.
    queue.set_limits("default", QueueLimits::none().concurrency(6)).await.expect("limit");
    let more = claim(&queue, &["default"], 10).await;
    assert_eq!(more.iter().map(tag_of).collect::<Vec<_>>(), [3, 4], "the room the limit leaves");
    assert!(claim(&queue, &["default"], 10).await.is_empty(), "never above the limit");
    complete(&driver, &first.lease, clock.now()).await.expect("complete");
    let freed = claim(&queue, &["default"], 10).await;
    assert_eq!(freed.iter().map(tag_of).collect::<Vec<_>>(), [5], "the completed job's slot");
}

/// A worker's warm-up ([`orcs_core::Driver::warm`]) changes no job: the waiting jobs stay as they
/// were, in order, a held key stays held, and no queue appears.
pub async fn warming_changes_no_job(driver: BoxDriver) {
    let (queue, _clock) = manual_queue(&driver);
    let (key, _) = probe();
    let held = queue
        .dispatch_with(plain(&key, 0), unique("warm", UniqueUntil::Finished))
        .await
        .expect("dispatch");
    queue.dispatch_many((1..3).map(|i| plain(&key, i))).await.expect("dispatch");
    let before = driver.queues().await.expect("queues");
    for _ in 0..2 {
        driver.warm(&names(&["default", "other"])).await.expect("warm");
    }
    assert_eq!(driver.queues().await.expect("queues"), before, "no queue appears");
    check_stats(&queue, "default", (3, 0, 0, 0, 0, 0), "the jobs wait as they did").await;
    let again = queue
        .dispatch_with(plain(&key, 9), unique("warm", UniqueUntil::Finished))
        .await
        .expect("dispatch");
    assert_eq!(again, held, "the key is still held");
    let got = claim(&queue, &["default"], 10).await;
    assert_eq!(got.iter().map(tag_of).collect::<Vec<_>>(), [0, 1, 2], "every job, in order");
}

/// A rate limit of N per window lets no window, wherever it starts, hold more than N starts,
/// and the claim says when the window reopens.
pub async fn rate_limit_allows_n_starts_in_any_window(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    let start = clock.now();
    queue.dispatch_many((0..40).map(|i| plain(&key, i))).await.expect("dispatch");
    queue
        .set_limits("default", QueueLimits::none().rate(orcs_core::RateLimit::new(5, 1_000)))
        .await
        .expect("limit");
    let queues = names(&["default"]);
    let mut starts: Vec<Millis> = Vec::new();
    // Claims at uneven times, as many as allowed each time.
    for offset in [0, 300, 999, 1_000, 1_250, 1_999, 2_000, 2_001, 2_600, 3_100] {
        clock.set(start + offset);
        let got = claim_at(&driver, &queues, 3, clock.now()).await;
        for reserved in &got.jobs {
            starts.push(clock.now());
            complete(&driver, &reserved.lease, clock.now()).await.expect("complete");
        }
        if got.jobs.is_empty() {
            let due = got.next_due.expect("a rate-limited claim says when to come back");
            assert!(
                due > clock.now() && due <= clock.now() + 1_000,
                "reopens within the window: {due}"
            );
        }
    }
    for (i, from) in starts.iter().enumerate() {
        let in_window = starts[i..].iter().filter(|at| **at < from + 1_000).count();
        assert!(in_window <= 5, "the window from {from} holds {in_window} starts: {starts:?}");
    }
    assert!(starts.len() >= 15, "the limit lets 5 per second through: {starts:?}");
}

/// A claim counts its rate-limit starts at the time it takes effect: a worker's claim carries
/// its clock, and the backend reads it inside its atomic step, after any wait for a lock. A
/// claim that was asked for at `now` but reached the backend 600 ms later (it waited for
/// SQLite's write lock, say) logs its start at the later time, so a claim 1,100 ms after `now`
/// still finds the window of 1 per second full. Logged at `now`, that start would have left the
/// window and let a second job start 500 ms after the first.
pub async fn a_claim_counts_its_rate_starts_when_it_takes_effect(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    queue.dispatch_many((0..3).map(|i| plain(&key, i))).await.expect("dispatch");
    queue
        .set_limits("default", QueueLimits::none().rate(orcs_core::RateLimit::new(1, 1_000)))
        .await
        .expect("limit");
    let queues = names(&["default"]);
    let asked = clock.now();
    clock.advance(Duration::from_millis(600));
    let mut request = request_at(&queues, 1, asked);
    let clock_ref: &dyn orcs_core::Clock = &clock;
    request.clock = Some(clock_ref);
    let first = driver.claim(&request).await.expect("claim");
    assert_eq!(first.jobs.len(), 1, "the window was empty");
    complete(&driver, &first.jobs[0].lease, clock.now()).await.expect("complete");
    assert!(
        first.jobs[0].lease.expires_at >= asked + 600 + i64::try_from(DEFAULT_TIMEOUT_MS).unwrap(),
        "the lease runs from the time the claim took effect"
    );
    clock.set(asked + 1_100);
    let early = claim_at(&driver, &queues, 1, clock.now()).await;
    assert!(
        early.jobs.is_empty(),
        "the start 500 ms ago fills the window: got {} job(s)",
        early.jobs.len()
    );
    let due = early.next_due.expect("a rate-limited claim says when to come back");
    assert_eq!(due, asked + 1_600, "the window reopens 1 s after the start");
    clock.set(asked + 1_600);
    let later = claim_at(&driver, &queues, 1, clock.now()).await;
    assert_eq!(later.jobs.len(), 1, "a second after the start, the next one");
}

/// An idle worker held back by a limit wakes when a slot or a token frees, not after `sleep`.
pub async fn limited_workers_wake_when_a_slot_or_token_frees(driver: BoxDriver) {
    let queue = system_queue(&driver);
    let (key, probe) = probe();
    queue.set_limits("default", QueueLimits::none().concurrency(1)).await.expect("limit");
    queue
        .dispatch_many(
            (0..3).map(|i| PlainJob(Script { work_ms: 200, tag: i, ..Script::ok(&key) })),
        )
        .await
        .expect("dispatch");
    let started = Instant::now();
    let summary = worker(&queue, &["default"])
        .concurrency(4)
        .sleep(Duration::from_secs(10))
        .stop_when_empty(true)
        .run()
        .await
        .expect("worker");
    assert_eq!(summary.done, 3);
    assert_eq!(probe.max_running.load(Ordering::SeqCst), 1, "one at a time");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woke as slots freed: {:?}",
        started.elapsed()
    );

    queue
        .set_limits("default", QueueLimits::none().rate(orcs_core::RateLimit::new(1, 300)))
        .await
        .expect("limit");
    queue.dispatch_many((0..3).map(|i| plain(&key, i))).await.expect("dispatch");
    let started = Instant::now();
    let summary = worker(&queue, &["default"])
        .concurrency(4)
        .sleep(Duration::from_secs(10))
        .max_jobs(3)
        .run()
        .await
        .expect("worker");
    assert_eq!(summary.done, 3);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(550), "one start per 300 ms: {took:?}");
    assert!(took < Duration::from_secs(5), "woke as tokens freed: {took:?}");
}

/// A job can snooze: it runs again after the delay, and no attempt was used.
pub async fn snooze_runs_the_job_again_without_using_an_attempt(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, probe) = probe();
    let id = queue
        .dispatch(PlainJob(Script { snooze_first_ms: 5_000, ..Script::ok(&key) }))
        .await
        .expect("dispatch");
    let first = work_one(&queue, &["default"]).await.expect("a job");
    assert_eq!(first.outcome, Outcome::Snoozed { at: clock.now() + 5_000 });
    check_stats(&queue, "default", (0, 1, 0, 0, 0, 0), "snoozed").await;
    clock.advance(Duration::from_secs(5));
    let second = work_one(&queue, &["default"]).await.expect("the job again");
    assert_eq!((second.id, second.attempt, second.outcome), (id, 1, Outcome::Done));
    assert_eq!(probe.started(), 2);
}

/// Cancelling a pending or delayed job deletes it, frees its key and counts it; an unknown or
/// failed id is not found.
pub async fn cancel_removes_waiting_jobs(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    let pending = queue.dispatch(plain(&key, 1)).await.expect("dispatch");
    let delayed =
        queue.dispatch_after(Duration::from_secs(60), plain(&key, 2)).await.expect("dispatch");
    let failing = queue
        .dispatch_with(plain(&key, 3), DispatchOptions::new().queue("other"))
        .await
        .expect("dispatch");
    assert_eq!(queue.cancel(&pending).await.expect("cancel"), orcs_core::CancelOutcome::Removed);
    assert_eq!(queue.cancel(&delayed).await.expect("cancel"), orcs_core::CancelOutcome::Removed);
    assert!(queue.get(&pending).await.expect("get").is_none(), "gone");
    let s = stats(&queue, "default").await;
    assert_eq!((s.pending, s.delayed, s.cancelled), (0, 0, 2));
    let held = claim_one(&queue, &["other"]).await.expect("a job");
    fail(&driver, &held.lease, "boom", clock.now()).await.expect("fail");
    assert!(matches!(queue.cancel(&failing).await, Err(Error::NotFound { .. })), "a failed job");
    assert!(matches!(queue.cancel(&pending).await, Err(Error::NotFound { .. })), "a cancelled one");
}

/// Cancelling a running job from anywhere: its worker sees `ctx.cancelled()` within about a
/// second, the attempt ends as cancelled, nothing is retried, and it is counted.
pub async fn cancel_stops_a_running_job_within_a_second(driver: BoxDriver) {
    let queue = system_queue(&driver);
    let (key, probe) = probe();
    let id = queue
        .dispatch(RetryJob(Script { work_ms: 30_000, ..Script::ok(&key) }))
        .await
        .expect("dispatch");
    let handle = worker(&queue, &["default"]).concurrency(2).spawn();
    assert!(
        eventually(Duration::from_secs(5), || async { probe.started() == 1 }).await,
        "the job started"
    );
    let info = queue.get(&id).await.expect("get").expect("running");
    assert_eq!(info.state, JobState::Reserved);
    let asked = Instant::now();
    assert_eq!(queue.cancel(&id).await.expect("cancel"), orcs_core::CancelOutcome::Requested);
    assert!(
        eventually(Duration::from_secs(3), || async {
            queue.get(&id).await.expect("get").is_none()
        })
        .await,
        "the job ended"
    );
    assert!(
        asked.elapsed() < Duration::from_millis(1_500),
        "within a second: {:?}",
        asked.elapsed()
    );
    assert_eq!(probe.saw_cancel.load(Ordering::SeqCst), 1, "the job saw the cancel request");
    let summary = handle.shutdown().await.expect("worker");
    assert_eq!((summary.cancelled, summary.retried, summary.failed), (1, 0, 0));
    let s = stats(&queue, "default").await;
    assert_eq!((s.cancelled, s.pending, s.delayed, s.failed), (1, 0, 0, 0), "not retried, counted");
}

/// A job whose worker died after a cancel was asked for ends at lease recovery instead of
/// running again.
pub async fn cancel_of_a_job_whose_worker_died_ends_it_at_recovery(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    let id = queue
        .dispatch_with(plain(&key, 1), unique("k", UniqueUntil::Finished))
        .await
        .expect("dispatch");
    let held = claim_one(&queue, &["default"]).await.expect("a job");
    assert_eq!(queue.cancel(&id).await.expect("cancel"), orcs_core::CancelOutcome::Requested);
    assert!(queue.get(&id).await.expect("get").expect("still there").cancel_requested);
    clock.set(held.lease.expires_at);
    driver.recover(&names(&["default"]), clock.now()).await.expect("recover");
    assert!(queue.get(&id).await.expect("get").is_none(), "ended at recovery");
    assert!(claim_one(&queue, &["default"]).await.is_none(), "not run again");
    assert_eq!(stats(&queue, "default").await.cancelled, 1);
    let next = queue
        .dispatch_with(plain(&key, 2), unique("k", UniqueUntil::Finished))
        .await
        .expect("dispatch");
    assert_ne!(next, id, "its key is free");
}

/// Progress a job reports is stored with it (the worker sends it about twice a second) and
/// shown by `get`; a report on a stale lease changes nothing.
pub async fn progress_is_stored_with_the_job(driver: BoxDriver) {
    let queue = system_queue(&driver);
    let (key, probe) = probe();
    let id = queue
        .dispatch(PlainJob(Script { work_ms: 30_000, progress: Some(3), ..Script::ok(&key) }))
        .await
        .expect("dispatch");
    let handle = worker(&queue, &["default"]).spawn();
    assert!(eventually(Duration::from_secs(5), || async { probe.started() == 1 }).await);
    assert!(
        eventually(Duration::from_secs(3), || async {
            queue.get(&id).await.expect("get").and_then(|i| i.progress).is_some()
        })
        .await,
        "progress was stored"
    );
    let info = queue.get(&id).await.expect("get").expect("running");
    let progress: serde_json::Value =
        serde_json::from_str(info.progress.as_deref().expect("progress")).expect("JSON");
    assert_eq!(progress, serde_json::json!({ "step": 3 }));
    let mut stale = Lease::new(id.clone(), "default", "not-the-token", 0);
    stale.expires_at = queue.now() + 60_000;
    let cancelled = driver
        .touch(&[orcs_core::Touch::new(stale, Some("\"stale\"".to_owned()))], queue.now())
        .await
        .expect("touch");
    assert!(cancelled.is_empty());
    let info = queue.get(&id).await.expect("get").expect("running");
    assert_eq!(info.progress.as_deref(), Some(r#"{"step":3}"#), "a stale lease changes nothing");
    handle.shutdown().await.expect("worker");
}

/// Retries are spread by jitter by default (within ±20% of the schedule), so jobs failing
/// together do not all retry in the same millisecond.
pub async fn retry_backoff_is_jittered_by_default(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    queue
        .dispatch_many(
            (0..20).map(|i| RetryJob(Script { fail_attempts: 1, tag: i, ..Script::ok(&key) })),
        )
        .await
        .expect("dispatch");
    let mut retry_at = HashSet::new();
    for _ in 0..20 {
        let event = worker(&queue, &["default"])
            .retry_jitter(true)
            .work_one()
            .await
            .expect("work")
            .expect("a job");
        let Outcome::Retry { at, .. } = event.outcome else {
            panic!("a retry, got {:?}", event.outcome)
        };
        let delay = at - clock.now();
        assert!((48_000..72_000).contains(&delay), "60 s ± 20%: {delay} ms");
        retry_at.insert(at);
    }
    assert!(retry_at.len() > 10, "spread: {} distinct retry times of 20", retry_at.len());
}

/// A second stop signal (`run_until_forced`) hands running jobs back at once instead of waiting
/// for the shutdown timeout.
pub async fn a_forced_stop_hands_jobs_back_without_waiting(driver: BoxDriver) {
    let queue = system_queue(&driver);
    let (key, probe) = probe();
    queue
        .dispatch_many(
            (0..3).map(|i| PlainJob(Script { work_ms: 30_000, tag: i, ..Script::ok(&key) })),
        )
        .await
        .expect("dispatch");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (force, forced) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(
        worker(&queue, &["default"])
            .concurrency(4)
            .shutdown_timeout(Duration::from_secs(30))
            .run_until_forced(
                async move {
                    let _ = stopped.await;
                },
                async move {
                    let _ = forced.await;
                },
            ),
    );
    assert!(eventually(Duration::from_secs(5), || async { probe.started() == 3 }).await);
    stop.send(()).expect("the worker listens");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!running.is_finished(), "a first signal waits for the running jobs");
    let asked = Instant::now();
    force.send(()).expect("the worker listens");
    let summary = running.await.expect("task").expect("worker");
    assert!(asked.elapsed() < Duration::from_secs(5), "forced: {:?}", asked.elapsed());
    assert_eq!((summary.done, summary.released), (0, 3));
    check_stats(&queue, "default", (3, 0, 0, 0, 0, 0), "handed back").await;
}

/// Whether `driver.queues()` names `name`.
async fn listed(driver: &BoxDriver, name: &str) -> bool {
    driver.queues().await.expect("queues").iter().any(|q| q == name)
}

/// A queue is forgotten only while it holds no pending, delayed, reserved or failed job: then its
/// counters, metadata (pause, limits) and held keys (a `Period` one too) go in one step, and it
/// leaves `queues()`; otherwise nothing changes. A dispatch to it later creates it from zero.
pub async fn forget_queue_removes_only_an_empty_idle_queue(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    let hour = UniqueUntil::Period(3_600_000);
    let first = queue
        .dispatch_with(plain(&key, 1), unique("k", hour).queue("busy"))
        .await
        .expect("dispatch");
    queue
        .set_limits(
            "busy",
            QueueLimits::none().concurrency(2).rate(orcs_core::RateLimit::new(5, 60_000)),
        )
        .await
        .expect("limits");
    assert!(!queue.forget_queue("busy").await.expect("forget"), "a pending job keeps it");
    assert!(listed(&driver, "busy").await, "still listed");
    check_stats(&queue, "busy", (1, 0, 0, 0, 0, 0), "nothing changed").await;
    assert_eq!(stats(&queue, "busy").await.limits.concurrency, Some(2), "limits kept");

    let held = claim_one(&queue, &["busy"]).await.expect("a job");
    assert!(!queue.forget_queue("busy").await.expect("forget"), "a reserved job keeps it");
    complete(&driver, &held.lease, clock.now()).await.expect("complete");
    check_stats(&queue, "busy", (0, 0, 0, 0, 1, 0), "completed").await;
    assert!(queue.forget_queue("busy").await.expect("forget"), "empty and idle: forgotten");
    assert!(!listed(&driver, "busy").await, "gone from queues()");
    let gone = stats(&queue, "busy").await;
    check_stats(&queue, "busy", (0, 0, 0, 0, 0, 0), "forgotten").await;
    assert_eq!((gone.cancelled, gone.paused, gone.limits), (0, false, QueueLimits::none()));
    assert!(queue.forget_queue("busy").await.expect("forget"), "forgetting twice is fine");

    // A dispatch creates it again from zero: its Period key went with it.
    let again = queue
        .dispatch_with(plain(&key, 2), unique("k", hour).queue("busy"))
        .await
        .expect("dispatch");
    assert_ne!(again, first, "the forgotten key no longer holds");
    assert!(listed(&driver, "busy").await, "listed again");
    check_stats(&queue, "busy", (1, 0, 0, 0, 0, 0), "created again").await;

    queue
        .dispatch_with(
            plain(&key, 3),
            DispatchOptions::new().queue("later").delay(Duration::from_secs(5)),
        )
        .await
        .expect("dispatch");
    assert!(!queue.forget_queue("later").await.expect("forget"), "a delayed job keeps it");
    check_stats(&queue, "later", (0, 1, 0, 0, 0, 0), "nothing changed").await;

    let broken = queue
        .dispatch_with(plain(&key, 4), DispatchOptions::new().queue("broken"))
        .await
        .expect("dispatch");
    let held = claim_one(&queue, &["broken"]).await.expect("a job");
    fail(&driver, &held.lease, "boom", clock.now()).await.expect("fail");
    assert!(!queue.forget_queue("broken").await.expect("forget"), "a failed job keeps it");
    assert!(listed(&driver, "broken").await, "still listed");
    check_stats(&queue, "broken", (0, 0, 0, 1, 0, 1), "nothing changed").await;
    queue.driver().forget_failed(&broken).await.expect("forget the failed job");
    assert!(queue.forget_queue("broken").await.expect("forget"), "its failed set is empty");
    assert!(!listed(&driver, "broken").await, "gone from queues()");

    queue.pause("idle").await.expect("pause an empty queue");
    assert!(listed(&driver, "idle").await, "a paused queue is listed");
    assert!(queue.forget_queue("idle").await.expect("forget"), "paused, no jobs: forgotten");
    assert!(!listed(&driver, "idle").await, "gone from queues()");
    assert!(!stats(&queue, "idle").await.paused, "its pause went with it");
    let claimed = claim(&queue, &["idle"], 1).await;
    assert!(claimed.is_empty(), "nothing to claim");

    // A settle's effect into a forgotten queue creates it again (where effects may cross).
    if driver.capabilities().cross_queue_atomic {
        let held = claim_one(&queue, &["busy"]).await.expect("a job");
        let effect = new_job(&queue, "01J00000000000000000000FQ1", "idle", 5);
        let settle = Settle::complete(held.lease.clone()).enqueue([effect]);
        driver.settle_one(settle, clock.now()).await.expect("complete");
        assert!(listed(&driver, "idle").await, "an effect lists it again");
        check_stats(&queue, "idle", (1, 0, 0, 0, 0, 0), "created by the effect").await;
    }
    match queue.forget_queue("").await {
        Err(Error::Invalid { .. }) => {}
        other => panic!("an empty queue name is refused, got {other:?}"),
    }
}
