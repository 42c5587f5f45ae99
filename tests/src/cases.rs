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
    BoxDriver, Clock, DispatchOptions, Error, JobDefaults, Lease, ManualClock, Outcome, Queue,
    QueueStats, Reserved, SystemClock, Worker, WorkerEvent,
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
}

async fn claim(queue: &Queue, queues: &[&str], max: usize) -> Vec<Reserved> {
    let queues = names(queues);
    let request = orcs_core::ClaimRequest {
        queues: &queues,
        max,
        now: queue.now(),
        default_timeout_ms: DEFAULT_TIMEOUT_MS,
        grace_ms: GRACE_MS,
    };
    queue.driver().claim(&request).await.expect("claim").jobs
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
    let request = |now| orcs_core::ClaimRequest {
        queues: &queues,
        max: 1,
        now,
        default_timeout_ms: DEFAULT_TIMEOUT_MS,
        grace_ms: GRACE_MS,
    };
    let early = driver.claim(&request(start + 29_999)).await.expect("claim");
    assert!(early.jobs.is_empty(), "not claimable 1 ms before it is due");
    assert_eq!(early.next_due, Some(start + 30_000), "the claim reports when the next job is due");

    clock.set(start + 30_000);
    check_stats(&queue, "default", (1, 0, 0, 0, 0, 0), "once due, before any claim").await;
    let due = driver.claim(&request(start + 30_000)).await.expect("claim");
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
    let due_at_least = SystemClock.now() + 300;
    let id =
        queue.dispatch_after(Duration::from_millis(300), plain(&key, 0)).await.expect("dispatch");
    let due_at_most = SystemClock.now() + 300;
    assert!(
        eventually(Duration::from_secs(3), || async { probe.started() == 1 }).await,
        "the delayed job ran"
    );
    handle.shutdown().await.expect("worker");
    let started = probe.first_start(&id).expect("started");
    assert!(started >= due_at_least, "started {} ms before it was due", due_at_least - started);
    assert!(
        started <= due_at_most + 50,
        "started {} ms after it was due (limit 50)",
        started - due_at_most
    );
}

/// A dispatch wakes an idle worker at once instead of waiting for its next poll.
pub async fn dispatch_wakes_an_idle_worker(driver: BoxDriver) {
    let queue = system_queue(&driver);
    let (key, probe) = probe();
    let handle = worker(&queue, &["default"]).sleep(Duration::from_secs(30)).spawn();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let sent = SystemClock.now();
    let id = queue.dispatch(plain(&key, 0)).await.expect("dispatch");
    assert!(
        eventually(Duration::from_secs(3), || async { probe.started() == 1 }).await,
        "the job ran"
    );
    handle.shutdown().await.expect("worker");
    let waited = probe.first_start(&id).expect("started") - sent;
    assert!(waited <= 50, "an idle worker took {waited} ms to start a dispatched job (limit 50)");
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

    driver.release(&with_timeout.lease, now).await.expect("release");
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
    check_lease_lost(driver.complete(stale, now).await, "complete");
    check_lease_lost(driver.retry(stale, now, "stale", now).await, "retry");
    check_lease_lost(driver.fail(stale, "stale", now).await, "fail");
    check_lease_lost(driver.release(stale, now).await, "release");
    check_lease_lost(driver.extend(stale, now + 1_000_000, now).await, "extend");
    check_stats(&queue, "default", (0, 0, 1, 0, 0, 0), "after stale transitions").await;
    assert!(
        queue.failed_jobs(None).await.expect("failed").is_empty(),
        "a stale fail moved nothing"
    );

    driver.complete(&new.lease, now).await.expect("the current holder completes");
    check_lease_lost(driver.complete(&new.lease, now).await, "a second complete");
    check_stats(&queue, "default", (0, 0, 0, 0, 1, 0), "completed once").await;
}

/// Completing several jobs at once settles each lease on its own: fresh ones complete (over
/// several queues), a stale one is rejected and changes nothing, and `processed` counts each once.
pub async fn complete_many_settles_each_lease_on_its_own(driver: BoxDriver) {
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
    let results = driver.complete_many(&leases, clock.now()).await;
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

    let again = driver.complete_many(&leases[..1], clock.now()).await;
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
    let failed = queue.failed_jobs(None).await.expect("failed");
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
    let failed = queue.failed_jobs(None).await.expect("failed");
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
    driver.complete(&late.lease, clock.now()).await.expect("the live lease still works");
    check_lease_lost(driver.complete(&early.lease, clock.now()).await, "complete after recovery");
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
    let failed = queue.failed_jobs(Some("default")).await.expect("failed");
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
    let failed = queue.failed_jobs(None).await.expect("failed");
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

/// A job whose name is not registered goes to the failed set with the reason; the job behind it runs.
pub async fn unknown_job_name_goes_to_the_failed_set_without_blocking(driver: BoxDriver) {
    let queue = system_queue(&driver);
    let (key, probe) = probe();
    let bad = dispatch_raw(&queue, "NoSuchJob", "{}").await;
    let good = queue.dispatch(plain(&key, 0)).await.expect("dispatch");
    let events = drain(&queue, &["default"]).await;
    let outcomes: Vec<(&str, &str)> =
        events.iter().map(|e| (e.id.as_str(), e.outcome.label())).collect();
    assert_eq!(outcomes, [(bad.as_str(), "FAIL"), (good.as_str(), "DONE")]);
    assert_eq!(probe.started(), 1);
    let failed = queue.failed_jobs(None).await.expect("failed");
    assert!(failed[0].error.starts_with("unknown job name \"NoSuchJob\""), "{}", failed[0].error);
    check_stats(&queue, "default", (0, 0, 0, 1, 1, 1), "after draining").await;
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
    let failed = queue.failed_jobs(None).await.expect("failed");
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
    driver.release(&held.lease, clock.now()).await.expect("release");
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
    driver.complete(&a.lease, now).await.expect("complete");
    driver.fail(&b.lease, "boom", now).await.expect("fail");
    check_stats(&queue, "default", (1, 2, 0, 1, 1, 1), "one done, one failed").await;
    clock.advance(Duration::from_secs(60));
    check_stats(&queue, "default", (2, 1, 0, 1, 1, 1), "one delayed job came due").await;
    let c = claim_one(&queue, &["default"]).await.expect("c");
    driver.retry(&c.lease, clock.now() + 1000, "again", clock.now()).await.expect("retry");
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
        driver.complete(&reserved.lease, now).await.expect("complete");
    }
    for reserved in &held {
        check_lease_lost(driver.complete(&reserved.lease, now).await, "a repeated complete");
    }
    check_stats(&queue, "default", (0, 0, 0, 0, 10, 0), "ten completions").await;
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
    driver.complete(&running.lease, queue.now()).await.expect("the running job still completes");
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
    let listed: Vec<String> =
        queue.failed_jobs(None).await.expect("failed").into_iter().map(|f| f.id).collect();
    assert_eq!(listed, ids, "oldest first");
    assert!(
        queue.failed_jobs(Some("other")).await.expect("failed").is_empty(),
        "filtered by queue"
    );

    queue.retry_failed(&ids[0]).await.expect("retry");
    check_stats(&queue, "default", (1, 0, 0, 2, 0, 3), "one retried").await;
    let retried = claim_one(&queue, &["default"]).await.expect("the retried job");
    assert_eq!(
        (retried.record.id.as_str(), retried.record.attempt),
        (ids[0].as_str(), 1),
        "same id, fresh attempts"
    );

    queue.driver().forget_failed(&ids[1]).await.expect("forget");
    let left: Vec<String> =
        queue.failed_jobs(None).await.expect("failed").into_iter().map(|f| f.id).collect();
    assert_eq!(left, [ids[2].clone()]);
    assert_eq!(queue.driver().flush_failed().await.expect("flush"), 1);
    assert!(queue.failed_jobs(None).await.expect("failed").is_empty());
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
