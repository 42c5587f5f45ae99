//! The conformance cases of chains and batches (issue #12): one per rule of the workflow contract
//! (`NewBatch`'s counting rules in `orcs-core/src/record.rs`, chains in
//! `orcs-core/src/workflow.rs`).
//!
//! Chains need no driver support (the worker carries them in `NewJob::meta` and settles each step
//! with the next in `Effects::enqueue`); their cases check the worker on every driver. Batches are
//! counted by the driver in the atomic step of each child's end: those cases settle by hand on a
//! `ManualClock`, so that every counter and callback state is asserted exactly, at each step.
//!
//! Every case keeps its jobs on one queue unless it says otherwise, so that it holds on a Redis
//! Cluster too (`Capabilities::cross_queue_atomic`); the cases that span queues assert
//! `Error::Unsupported` where the driver cannot.

use std::sync::Arc;
use std::time::Duration;

use orcs_core::{
    BatchBuilder, BatchInfo, BoxDriver, CallbackState, CancelOutcome, Chain, Clock,
    DispatchOptions, Error, JobState, ListRequest, ManualClock, NewBatch, NewJob, Outcome,
    PushOutcome, Queue, Reserved, Settle, UniqueUntil, Worker, WorkerEvent,
};

use crate::eventually;
use crate::jobs::{BatchJob, PlainJob, RetryJob, Script, batch_ids_seen, probe, registry};

// ---------------------------------------------------------------------------------------------
// Helpers

const DEFAULT_TIMEOUT_MS: u64 = 60_000;
const GRACE_MS: u64 = 5_000;

fn names(queues: &[&str]) -> Vec<String> {
    queues.iter().map(|q| (*q).to_owned()).collect()
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
        .retry_jitter(false)
}

async fn work_one(queue: &Queue, queues: &[&str]) -> WorkerEvent {
    worker(queue, queues).work_one().await.expect("work_one").expect("a job to work")
}

async fn claim(queue: &Queue, on: &str, max: usize) -> Vec<Reserved> {
    let queues = names(&[on]);
    let mut request = orcs_core::ClaimRequest::new(&queues, max, queue.now());
    request.default_timeout_ms = DEFAULT_TIMEOUT_MS;
    request.grace_ms = GRACE_MS;
    queue.driver().claim(&request).await.expect("claim").jobs
}

async fn settle(queue: &Queue, settle: Settle) -> orcs_core::Result<()> {
    queue.driver().settle_one(settle, queue.now()).await
}

/// A plain job that succeeds, tagged for ordering checks.
fn ok(key: &str, tag: u64) -> PlainJob {
    PlainJob(Script { tag, ..Script::ok(key) })
}

/// A plain job that fails for good on its first attempt.
fn fatal(key: &str, tag: u64) -> PlainJob {
    PlainJob(Script { tag, permanent: true, ..Script::ok(key) })
}

fn tag_of_payload(payload: &str) -> u64 {
    let value: serde_json::Value = serde_json::from_str(payload).expect("payload is JSON");
    value["tag"].as_u64().expect("payload has a tag")
}

/// The tags of a queue's jobs in one state, in the state's order.
async fn tags(queue: &Queue, on: &str, state: JobState) -> Vec<u64> {
    let listed = queue.list(&ListRequest::new(on, state, 1_000)).await.expect("list");
    listed.iter().map(|info| tag_of_payload(&info.job.payload)).collect()
}

/// A batch whose callbacks are the jobs tagged 8 (`then`), 9 (`catch`) and 7 (`finally`).
fn batch_with_callbacks(queue: &Queue, key: &str) -> BatchBuilder {
    queue.batch().then(ok(key, 8)).catch(ok(key, 9)).finally(ok(key, 7))
}

/// The tags of a queue's waiting jobs, sorted.
async fn waiting_tags(queue: &Queue, on: &str) -> Vec<u64> {
    let mut waiting = tags(queue, on, JobState::Pending).await;
    waiting.sort_unstable();
    waiting
}

/// The ids of a queue's jobs in one state, in the state's order.
async fn ids(queue: &Queue, on: &str, state: JobState) -> Vec<String> {
    let listed = queue.list(&ListRequest::new(on, state, 1_000)).await.expect("list");
    listed.into_iter().map(|info| info.job.id).collect()
}

async fn info(queue: &Queue, id: &str) -> BatchInfo {
    queue.batch_info(id).await.expect("batch_info").expect("the batch exists")
}

/// Asserts a batch's counters as (total, pending, processed, failed, cancelled).
fn check_counts(info: &BatchInfo, expected: (u64, u64, u64, u64, u64), context: &str) {
    let actual = (info.total, info.pending, info.processed, info.failed, info.cancelled);
    assert_eq!(
        actual, expected,
        "{context}: batch counters as (total, pending, processed, failed, cancelled)"
    );
}

/// Asserts a batch's callback states as (then, catch, finally); `None` for a callback not given.
fn check_callbacks(
    info: &BatchInfo,
    expected: (Option<CallbackState>, Option<CallbackState>, Option<CallbackState>),
    context: &str,
) {
    let state = |cb: &Option<orcs_core::BatchCallback>| cb.as_ref().map(|cb| cb.state);
    let actual = (state(&info.then), state(&info.catch), state(&info.finally));
    assert_eq!(actual, expected, "{context}: callback states as (then, catch, finally)");
}

use CallbackState::{Dispatched, Skipped, Waiting};

/// The ids of the batch's children still waiting or running on `on`, from the listings.
async fn children_of(queue: &Queue, on: &str, batch: &str) -> Vec<String> {
    let mut found = Vec::new();
    for state in [JobState::Pending, JobState::Delayed, JobState::Reserved] {
        let listed = queue.list(&ListRequest::new(on, state, 1_000)).await.expect("list");
        found.extend(
            listed.into_iter().filter(|i| i.job.batch.as_deref() == Some(batch)).map(|i| i.job.id),
        );
    }
    found.sort();
    found
}

fn new_job(queue: &Queue, id: &str, on: &str, tag: u64) -> NewJob {
    let payload = serde_json::to_string(&ok("unused", tag)).expect("serializes");
    NewJob::new(id, "PlainJob", on, payload, queue.now())
}

// ---------------------------------------------------------------------------------------------
// Chains

/// Only a chain's first step is stored at dispatch; each later step is stored by the completion
/// of the one before it (in the same step), so the steps run in order, one at a time.
pub async fn chain_runs_steps_in_order_each_made_available_by_the_previous_completion(
    driver: BoxDriver,
) {
    let (queue, _clock) = manual_queue(&driver);
    let (key, probe) = probe();
    let chain = Chain::new().then(ok(&key, 1)).then(ok(&key, 2)).then(ok(&key, 3));
    let first = queue.dispatch_chain(chain).await.expect("dispatch_chain");
    assert_eq!(
        ids(&queue, "default", JobState::Pending).await,
        std::slice::from_ref(&first),
        "only step 1"
    );
    let stored = queue.get(&first).await.expect("get").expect("step 1");
    assert!(stored.job.meta.is_some(), "the rest of the chain travels in the step's meta");
    assert_eq!(stored.job.batch, None);

    let mut ran = Vec::new();
    for step in 1..=3_u64 {
        assert_eq!(
            tags(&queue, "default", JobState::Pending).await,
            [step],
            "step {step} alone is waiting"
        );
        let event = work_one(&queue, &["default"]).await;
        assert_eq!(event.outcome, Outcome::Done, "step {step}");
        ran.push(event.id);
        let s = queue.stats("default").await.expect("stats");
        let waiting = u64::from(step < 3);
        assert_eq!(
            (s.processed, s.pending, s.delayed, s.reserved),
            (step, waiting, 0, 0),
            "after step {step}: completed, and the next one stored in the same step"
        );
    }
    assert_eq!(ran[0], first, "the first step's id is the one dispatch_chain returned");
    let started: Vec<String> =
        probe.starts.lock().expect("probe").iter().map(|(id, _, _)| id.clone()).collect();
    assert_eq!(started, ran, "each step ran once, in order");
    assert!(ran[0] < ran[1] && ran[1] < ran[2], "step ids were fixed at dispatch, in order");
    assert!(matches!(queue.dispatch_chain(Chain::new()).await, Err(Error::Invalid { .. })));
}

/// Each step keeps its own queue, priority, retries, backoff and timeout, and its delay counts
/// from the completion of the step before it. A chain across queues is refused where one atomic
/// step cannot span queues.
pub async fn chain_step_keeps_its_own_queue_priority_retries(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, probe) = probe();
    let cross = driver.capabilities().cross_queue_atomic;
    if !cross {
        let across = Chain::new()
            .then(ok(&key, 1))
            .then_with(ok(&key, 2), DispatchOptions::new().queue("b"));
        match queue.dispatch_chain(across).await {
            Err(Error::Unsupported { what, .. }) => assert!(what.contains("one queue"), "{what}"),
            other => {
                panic!("a chain across queues on this driver: expected Unsupported, got {other:?}")
            }
        }
        let s = queue.stats("default").await.expect("stats");
        assert_eq!(s.pending, 0, "nothing was stored");
    }
    let second = if cross { "chain-b" } else { "default" };
    let chain = Chain::new()
        .then(ok(&key, 1))
        .then_with(
            RetryJob(Script { fail_attempts: 1, tag: 2, ..Script::ok(&key) }),
            DispatchOptions::new()
                .queue(second)
                .priority(7)
                .max_retries(2)
                .timeout(Duration::from_secs(5)),
        )
        .then_with(ok(&key, 3), DispatchOptions::new().delay(Duration::from_secs(10)));
    queue.dispatch_chain(chain).await.expect("dispatch_chain");
    assert!(
        queue
            .list(&ListRequest::new(second, JobState::Pending, 10))
            .await
            .expect("list")
            .iter()
            .all(|i| tag_of_payload(&i.job.payload) != 2),
        "step 2 is not stored yet"
    );

    clock.advance(Duration::from_secs(3));
    assert_eq!(work_one(&queue, &["default"]).await.outcome, Outcome::Done);
    let listed = queue.list(&ListRequest::new(second, JobState::Pending, 10)).await.expect("list");
    assert_eq!(listed.len(), 1, "step 2 on its own queue");
    let step2 = &listed[0].job;
    assert_eq!(
        (
            step2.name.as_str(),
            step2.priority,
            step2.max_retries,
            step2.retry_delay_ms,
            step2.timeout_ms
        ),
        ("RetryJob", 7, 2, 60_000, Some(5_000)),
        "step 2 keeps its name, priority, retries, backoff and timeout"
    );

    let event = work_one(&queue, &[second]).await;
    let retry_at = clock.now() + 60_000;
    assert_eq!(
        event.outcome,
        Outcome::Retry { at: retry_at, error: "failure requested on attempt 1".into() },
        "step 2 is retried with its own backoff, and the chain waits"
    );
    for state in [JobState::Pending, JobState::Delayed] {
        assert!(!tags(&queue, "default", state).await.contains(&3), "no step 3 yet");
    }
    clock.set(retry_at);
    let event = work_one(&queue, &[second]).await;
    assert_eq!((event.attempt, event.outcome), (2, Outcome::Done));

    let completed = clock.now();
    let delayed =
        queue.list(&ListRequest::new("default", JobState::Delayed, 10)).await.expect("list");
    assert_eq!(delayed.len(), 1, "step 3 waits for its delay");
    assert_eq!(tag_of_payload(&delayed[0].job.payload), 3);
    assert_eq!(
        delayed[0].job.available_at,
        completed + 10_000,
        "the delay counts from step 2's end"
    );
    clock.set(completed + 10_000);
    assert_eq!(work_one(&queue, &["default"]).await.outcome, Outcome::Done);
    assert_eq!(probe.started(), 4, "step 1, step 2 twice, step 3");
}

/// A step failing for good (after its retries) stops the chain: the rest is never stored, and
/// the chain's `catch` job is dispatched once, in the same step as the failure.
pub async fn chain_failure_stops_the_chain_and_dispatches_catch_once(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (catch_key, catch_probe) = probe();
    let (key, probe) = probe();
    let chain = Chain::new()
        .then(ok(&key, 1))
        .then_with(
            PlainJob(Script { fail_attempts: 10, tag: 2, ..Script::ok(&key) }),
            DispatchOptions::new().max_retries(1).retry_delay(Duration::from_secs(1)),
        )
        .then(ok(&key, 3))
        .catch(ok(&catch_key, 9));
    queue.dispatch_chain(chain).await.expect("dispatch_chain");
    assert_eq!(work_one(&queue, &["default"]).await.outcome, Outcome::Done);
    let event = work_one(&queue, &["default"]).await;
    assert!(matches!(event.outcome, Outcome::Retry { .. }), "{:?}", event.outcome);
    assert!(tags(&queue, "default", JobState::Pending).await.is_empty(), "a retry is no failure");
    clock.advance(Duration::from_secs(1));
    let event = work_one(&queue, &["default"]).await;
    assert!(matches!(event.outcome, Outcome::Failed { .. }), "{:?}", event.outcome);
    assert_eq!(tags(&queue, "default", JobState::Pending).await, [9], "only the catch job");
    assert_eq!(work_one(&queue, &["default"]).await.outcome, Outcome::Done);
    assert!(
        worker(&queue, &["default"]).work_one().await.expect("work_one").is_none(),
        "no step 3"
    );
    assert_eq!((probe.started(), catch_probe.started()), (3, 1));
    let s = queue.stats("default").await.expect("stats");
    assert_eq!((s.processed, s.failed, s.pending, s.delayed), (2, 1, 0, 0));

    // The same when the last attempt was lost with its worker (found failed at the next claim).
    let chain = Chain::new()
        .then_with(ok(&key, 4), DispatchOptions::new().max_retries(0))
        .then(ok(&key, 5))
        .catch(ok(&catch_key, 10));
    queue.dispatch_chain(chain).await.expect("dispatch_chain");
    let lost = claim(&queue, "default", 1).await.pop().expect("step 1");
    clock.set(lost.lease.expires_at);
    queue.driver().recover(&names(&["default"]), clock.now()).await.expect("recover");
    let event = work_one(&queue, &["default"]).await;
    assert!(matches!(event.outcome, Outcome::Failed { .. }), "{:?}", event.outcome);
    assert_eq!(tags(&queue, "default", JobState::Pending).await, [10], "the catch job, no step 2");
}

/// A cancelled step ends the chain: neither the next step nor `catch` is dispatched, whether
/// the step was running or waiting.
pub async fn chain_cancel_stops_without_catch(driver: BoxDriver) {
    let queue = Queue::from_driver(Arc::clone(&driver));
    let (key, probe) = probe();
    let chain = Chain::new()
        .then(PlainJob(Script { work_ms: 30_000, tag: 1, ..Script::ok(&key) }))
        .then(ok(&key, 2))
        .catch(ok(&key, 9));
    let running = queue.dispatch_chain(chain).await.expect("dispatch_chain");
    let handle = worker(&queue, &["default"]).spawn();
    assert!(eventually(Duration::from_secs(5), || async { probe.started() == 1 }).await);
    assert_eq!(queue.cancel(&running).await.expect("cancel"), CancelOutcome::Requested);
    assert!(
        eventually(Duration::from_secs(3), || async {
            queue.stats("default").await.expect("stats").cancelled == 1
        })
        .await,
        "the running step ended as cancelled"
    );
    let summary = handle.shutdown().await.expect("worker");
    assert_eq!((summary.cancelled, summary.done, summary.failed), (1, 0, 0));

    let chain = Chain::new().then(ok(&key, 3)).then(ok(&key, 4)).catch(ok(&key, 9));
    let waiting = queue.dispatch_chain(chain).await.expect("dispatch_chain");
    assert_eq!(queue.cancel(&waiting).await.expect("cancel"), CancelOutcome::Removed);
    let s = queue.stats("default").await.expect("stats");
    assert_eq!(
        (s.pending, s.delayed, s.reserved, s.processed, s.cancelled),
        (0, 0, 0, 0, 2),
        "no next step and no catch after either cancel"
    );
    assert_eq!(probe.started(), 1);
}

// ---------------------------------------------------------------------------------------------
// Batches

/// `then` and `finally` run exactly once, after every child completed, with several workers
/// racing on the children; children see their batch id, callbacks are not children.
pub async fn batch_then_and_finally_run_once_after_every_child_completed(driver: BoxDriver) {
    let queue = Queue::from_driver(Arc::clone(&driver));
    let (then_key, then_probe) = probe();
    let (finally_key, finally_probe) = probe();
    let (key, probe) = probe();
    let mut batch = queue.batch();
    let known = batch.id().to_owned();
    for tag in 0..24 {
        batch = batch.add(BatchJob(Script { tag, work_ms: 2, ..Script::ok(&key) }));
    }
    let id = batch
        .then(BatchJob(Script::ok(&then_key)))
        .finally(BatchJob(Script::ok(&finally_key)))
        .dispatch()
        .await
        .expect("dispatch");
    assert_eq!(id, known, "the builder's id is the batch's");
    let before = info(&queue, &id).await;
    check_counts(&before, (24, 24, 0, 0, 0), "dispatched");
    check_callbacks(&before, (Some(Waiting), None, Some(Waiting)), "dispatched");
    assert_eq!(
        (before.id.as_str(), before.finished_at, before.cancelled_at),
        (id.as_str(), None, None)
    );
    assert!(!before.allow_failures);
    let children = children_of(&queue, "default", &id).await;
    assert_eq!(children.len(), 24, "each child names its batch");

    let workers: Vec<_> =
        (0..3).map(|_| worker(&queue, &["default"]).concurrency(4).spawn()).collect();
    assert!(
        eventually(Duration::from_secs(10), || async {
            then_probe.started() == 1 && finally_probe.started() == 1
        })
        .await,
        "then and finally ran"
    );
    for handle in workers {
        handle.shutdown().await.expect("worker");
    }
    assert_eq!(probe.started(), 24, "every child ran once");
    assert_eq!((then_probe.started(), finally_probe.started()), (1, 1), "each callback once");
    let then_start = then_probe.starts.lock().expect("probe")[0].2;
    let last_child =
        probe.starts.lock().expect("probe").iter().map(|s| s.2).max().expect("children");
    assert!(then_start >= last_child, "then started after the last child started");

    let after = info(&queue, &id).await;
    check_counts(&after, (24, 0, 24, 0, 0), "finished");
    check_callbacks(&after, (Some(Dispatched), None, Some(Dispatched)), "finished");
    assert!(after.finished_at.is_some_and(|at| at >= after.created_at));
    assert_eq!(after.cancelled_at, None);
    let seen = batch_ids_seen(&key);
    assert_eq!(seen.len(), 24);
    assert!(seen.iter().all(|(_, batch)| batch.as_deref() == Some(id.as_str())), "ctx.batch_id()");
    assert_eq!(batch_ids_seen(&then_key)[0].1, None, "a callback is not a child");
    let s = queue.stats("default").await.expect("stats");
    assert_eq!((s.processed, s.pending, s.failed), (26, 0, 0));
}

/// The first child failing for good dispatches `catch` (once, in that step) and cancels the
/// batch: waiting children are removed and counted cancelled, running ones are asked to stop;
/// when the last one ends, `then` is skipped and `finally` dispatched.
pub async fn batch_first_failure_dispatches_catch_once_and_cancels_the_rest(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    let id = batch_with_callbacks(&queue, &key)
        .add(ok(&key, 1))
        .add(ok(&key, 2))
        .add(ok(&key, 3))
        .add_with(ok(&key, 4), DispatchOptions::new().delay(Duration::from_secs(60)))
        .dispatch()
        .await
        .expect("dispatch");
    let held = claim(&queue, "default", 2).await;
    assert_eq!(held.iter().map(|r| tag_of_payload(&r.record.payload)).collect::<Vec<_>>(), [1, 2]);
    assert!(
        held.iter().all(|r| r.record.batch.as_deref() == Some(id.as_str())),
        "claims show the batch"
    );
    clock.advance(Duration::from_secs(1));
    let failed_at = clock.now();
    settle(&queue, Settle::fail(held[0].lease.clone(), "boom")).await.expect("fail");

    let cancelled = info(&queue, &id).await;
    check_counts(&cancelled, (4, 1, 0, 1, 2), "after the first failure");
    check_callbacks(
        &cancelled,
        (Some(Waiting), Some(Dispatched), Some(Waiting)),
        "after the first failure",
    );
    assert_eq!((cancelled.cancelled_at, cancelled.finished_at), (Some(failed_at), None));
    assert_eq!(tags(&queue, "default", JobState::Pending).await, [9], "the catch job alone");
    assert!(
        tags(&queue, "default", JobState::Delayed).await.is_empty(),
        "the delayed child is gone"
    );
    let running = queue.get(&held[1].record.id).await.expect("get").expect("still running");
    assert!(running.cancel_requested, "the running child is asked to stop");
    let told = queue
        .driver()
        .touch(&[orcs_core::Touch::new(held[1].lease.clone(), None)], clock.now())
        .await
        .expect("touch");
    assert_eq!(told, [held[1].record.id.clone()], "its worker learns of the cancel");
    let s = queue.stats("default").await.expect("stats");
    assert_eq!((s.cancelled, s.failed, s.reserved), (2, 1, 1));

    clock.advance(Duration::from_secs(1));
    settle(&queue, Settle::cancel(held[1].lease.clone())).await.expect("cancel");
    let finished = info(&queue, &id).await;
    check_counts(&finished, (4, 0, 0, 1, 3), "after the last child");
    check_callbacks(&finished, (Some(Skipped), Some(Dispatched), Some(Dispatched)), "finished");
    assert_eq!((finished.cancelled_at, finished.finished_at), (Some(failed_at), Some(clock.now())));
    assert_eq!(
        waiting_tags(&queue, "default").await,
        [7, 9],
        "catch once and finally once, no then"
    );
}

/// With `allow_failures`, a failed child cancels nothing: the others run, `catch` is dispatched
/// once (at the first of several failures), `then` is skipped and `finally` dispatched.
pub async fn batch_allow_failures_runs_the_rest_and_skips_then(driver: BoxDriver) {
    let (queue, _clock) = manual_queue(&driver);
    let (key, _) = probe();
    let id = batch_with_callbacks(&queue, &key)
        .add(fatal(&key, 1))
        .add(fatal(&key, 2))
        .add(ok(&key, 3))
        .add(ok(&key, 4))
        .allow_failures()
        .dispatch()
        .await
        .expect("dispatch");
    assert!(info(&queue, &id).await.allow_failures);
    let first = work_one(&queue, &["default"]).await;
    assert!(matches!(first.outcome, Outcome::Failed { .. }), "{:?}", first.outcome);
    let after_one = info(&queue, &id).await;
    check_counts(&after_one, (4, 3, 0, 1, 0), "after the first failure");
    check_callbacks(&after_one, (Some(Waiting), Some(Dispatched), Some(Waiting)), "first failure");
    assert_eq!(after_one.cancelled_at, None, "failures are allowed: nothing is cancelled");
    let outcomes: Vec<Outcome> = {
        let mut outcomes = Vec::new();
        for _ in 0..3 {
            outcomes.push(work_one(&queue, &["default"]).await.outcome);
        }
        outcomes
    };
    assert!(matches!(outcomes[0], Outcome::Failed { .. }), "{outcomes:?}");
    assert_eq!(outcomes[1..], [Outcome::Done, Outcome::Done]);
    let finished = info(&queue, &id).await;
    check_counts(&finished, (4, 0, 2, 2, 0), "finished");
    check_callbacks(&finished, (Some(Skipped), Some(Dispatched), Some(Dispatched)), "finished");
    assert_eq!(finished.cancelled_at, None);
    assert!(finished.finished_at.is_some());
    assert_eq!(
        waiting_tags(&queue, "default").await,
        [7, 9],
        "catch once for two failures, finally once, no then"
    );
}

/// A child whose worker died on its last attempt counts as failed when it reaches the failed set
/// (recovery makes it claimable, the next claim fails it): the batch waits until then.
pub async fn batch_counts_a_child_crashed_on_its_last_attempt_as_failed(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, probe) = probe();
    let id = batch_with_callbacks(&queue, &key)
        .add_with(ok(&key, 1), DispatchOptions::new().max_retries(0))
        .dispatch()
        .await
        .expect("dispatch");
    let lost = claim(&queue, "default", 1).await.pop().expect("the child");
    clock.set(lost.lease.expires_at);
    assert_eq!(
        queue.driver().recover(&names(&["default"]), clock.now()).await.expect("recover"),
        1
    );
    let recovered = info(&queue, &id).await;
    check_counts(&recovered, (1, 1, 0, 0, 0), "recovered, not ended yet");
    check_callbacks(&recovered, (Some(Waiting), Some(Waiting), Some(Waiting)), "recovered");

    let event = work_one(&queue, &["default"]).await;
    match &event.outcome {
        Outcome::Failed { error } => assert!(error.starts_with("attempts exhausted"), "{error}"),
        other => panic!("expected the failed set, got {other:?}"),
    }
    assert_eq!(probe.started(), 0, "handle did not run again");
    let failed = info(&queue, &id).await;
    check_counts(&failed, (1, 0, 0, 1, 0), "counted failed");
    check_callbacks(&failed, (Some(Skipped), Some(Dispatched), Some(Dispatched)), "finished");
    assert_eq!(
        (failed.cancelled_at, failed.finished_at),
        (Some(clock.now()), Some(clock.now())),
        "the first failure cancels the batch (failures not allowed), and the batch finishes"
    );
    assert_eq!(waiting_tags(&queue, "default").await, [7, 9]);
}

/// `cancel_batch` removes the waiting children (counted cancelled, unique keys freed), asks the
/// running ones to stop, and skips `then`; a running child that still completes counts as
/// processed. Cancelling again, or after the finish, changes nothing; an unknown batch is not
/// found.
pub async fn batch_cancel_removes_waiting_children_and_stops_running_ones(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    let keyed = DispatchOptions::new().unique("batch-key", UniqueUntil::Finished);
    let id = batch_with_callbacks(&queue, &key)
        .add(ok(&key, 1))
        .add(ok(&key, 2))
        .add_with(ok(&key, 3), keyed.clone())
        .add_with(ok(&key, 4), DispatchOptions::new().delay(Duration::from_secs(60)))
        .add(ok(&key, 5))
        .dispatch()
        .await
        .expect("dispatch");
    let held = claim(&queue, "default", 2).await;
    assert_eq!(held.len(), 2);
    clock.advance(Duration::from_secs(1));
    let cancelled_at = clock.now();
    let answered = queue.cancel_batch(&id).await.expect("cancel_batch");
    check_counts(&answered, (5, 2, 0, 0, 3), "answered by cancel_batch");
    check_callbacks(&answered, (Some(Waiting), Some(Waiting), Some(Waiting)), "cancelled");
    assert_eq!((answered.cancelled_at, answered.finished_at), (Some(cancelled_at), None));
    assert_eq!(info(&queue, &id).await, answered, "batch_info shows the same");
    let s = queue.stats("default").await.expect("stats");
    assert_eq!((s.pending, s.delayed, s.reserved, s.cancelled), (0, 0, 2, 3));
    for reserved in &held {
        let running = queue.get(&reserved.record.id).await.expect("get").expect("running");
        assert!(running.cancel_requested, "a running child is asked to stop");
    }
    let leases: Vec<orcs_core::Touch> =
        held.iter().map(|r| orcs_core::Touch::new(r.lease.clone(), None)).collect();
    let mut told = queue.driver().touch(&leases, clock.now()).await.expect("touch");
    told.sort();
    let mut running: Vec<String> = held.iter().map(|r| r.record.id.clone()).collect();
    running.sort();
    assert_eq!(told, running, "their workers learn of the cancel");
    let again = queue.dispatch_with(ok(&key, 6), keyed).await.expect("dispatch");
    assert!(!children_of(&queue, "default", &id).await.contains(&again), "a new job, not a child");
    assert_eq!(
        queue.get(&again).await.expect("get").map(|i| i.job.batch),
        Some(None),
        "the key was freed"
    );

    clock.advance(Duration::from_secs(1));
    assert_eq!(queue.cancel_batch(&id).await.expect("again"), answered, "a second cancel: nothing");
    settle(&queue, Settle::cancel(held[0].lease.clone())).await.expect("cancel");
    settle(&queue, Settle::complete(held[1].lease.clone())).await.expect("complete anyway");
    let finished = info(&queue, &id).await;
    check_counts(&finished, (5, 0, 1, 0, 4), "finished");
    check_callbacks(&finished, (Some(Skipped), Some(Skipped), Some(Dispatched)), "finished");
    assert_eq!(
        (finished.cancelled_at, finished.finished_at),
        (Some(cancelled_at), Some(clock.now()))
    );
    clock.advance(Duration::from_secs(1));
    assert_eq!(queue.cancel_batch(&id).await.expect("after the finish"), finished);
    assert_eq!(waiting_tags(&queue, "default").await, [6, 7], "the new job and finally");
    assert!(matches!(
        queue.cancel_batch("01J0NOSUCHBATCH0000000000").await,
        Err(Error::NotFound { .. })
    ));
}

/// A child cancelled on its own (`cancel` of a waiting one, or of a running one whose worker then
/// died, ended at recovery) or removed by `clear` counts as cancelled; that alone does not cancel
/// the batch, but `then` is skipped.
pub async fn batch_clear_and_cancel_of_children_count_them_cancelled(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    let id = queue
        .batch()
        .add(ok(&key, 1))
        .add(ok(&key, 2))
        .add(ok(&key, 3))
        .add_with(ok(&key, 4), DispatchOptions::new().delay(Duration::from_secs(60)))
        .then(ok(&key, 8))
        .finally(ok(&key, 7))
        .dispatch()
        .await
        .expect("dispatch");
    let lost = claim(&queue, "default", 1).await.pop().expect("child 1");
    assert_eq!(queue.cancel(&lost.record.id).await.expect("cancel"), CancelOutcome::Requested);
    check_counts(&info(&queue, &id).await, (4, 4, 0, 0, 0), "a requested cancel ends nothing yet");
    let second = ids(&queue, "default", JobState::Pending).await[0].clone();
    assert_eq!(queue.cancel(&second).await.expect("cancel"), CancelOutcome::Removed);
    let one = info(&queue, &id).await;
    check_counts(&one, (4, 3, 0, 0, 1), "after cancelling a waiting child");
    assert_eq!(one.cancelled_at, None, "the batch itself is not cancelled");
    assert_eq!(queue.clear("default").await.expect("clear"), 2, "a pending and a delayed child");
    let cleared = info(&queue, &id).await;
    check_counts(&cleared, (4, 1, 0, 0, 3), "after clear");
    check_callbacks(&cleared, (Some(Waiting), None, Some(Waiting)), "one child left");

    clock.set(lost.lease.expires_at);
    queue.driver().recover(&names(&["default"]), clock.now()).await.expect("recover");
    let finished = info(&queue, &id).await;
    check_counts(&finished, (4, 0, 0, 0, 4), "the dead worker's cancelled child ended at recovery");
    check_callbacks(&finished, (Some(Skipped), None, Some(Dispatched)), "finished");
    assert_eq!((finished.cancelled_at, finished.finished_at), (None, Some(clock.now())));
    assert_eq!(tags(&queue, "default", JobState::Pending).await, [7], "finally only");
}

/// Children refused as duplicates (their id exists, or their unique key is held) are not part
/// of the batch, nor is a debounced child that gave its data to the waiting holder of its key;
/// a batch left without children finishes in the dispatch itself. A batch id
/// that exists, or a child naming another batch, is refused and stores nothing.
pub async fn batch_with_only_duplicate_children_finishes_at_once(driver: BoxDriver) {
    let (queue, _clock) = manual_queue(&driver);
    let (key, _) = probe();
    let keyed = DispatchOptions::new().unique("dup", UniqueUntil::Finished);
    let holder = queue.dispatch_with(ok(&key, 1), keyed.clone()).await.expect("dispatch");
    let id = batch_with_callbacks(&queue, &key)
        .add_with(ok(&key, 2), keyed.clone())
        .add_with(ok(&key, 3), keyed)
        .add_with(ok(&key, 4), DispatchOptions::new().debounce("dup", UniqueUntil::Finished))
        .dispatch()
        .await
        .expect("dispatch");
    let done = info(&queue, &id).await;
    check_counts(&done, (0, 0, 0, 0, 0), "no child stored");
    check_callbacks(&done, (Some(Dispatched), Some(Skipped), Some(Dispatched)), "finished at once");
    assert_eq!((done.finished_at, done.cancelled_at), (Some(done.created_at), None));
    assert_eq!(
        waiting_tags(&queue, "default").await,
        [4, 7, 8],
        "the holder (with the debounced child's data), then and finally"
    );
    assert_eq!(queue.get(&holder).await.expect("get").expect("holder").job.batch, None);

    let empty = queue.batch().finally(ok(&key, 6)).dispatch().await.expect("an empty batch");
    let empty = info(&queue, &empty).await;
    check_counts(&empty, (0, 0, 0, 0, 0), "empty");
    check_callbacks(&empty, (None, None, Some(Dispatched)), "empty");

    // At the driver: outcomes per child, as a push answers them.
    let now = queue.now();
    let existing = orcs_core::new_job_id();
    queue.dispatch_records(vec![new_job(&queue, &existing, "default", 20)]).await.expect("push");
    let batch_id = orcs_core::new_job_id();
    let fresh = orcs_core::new_job_id();
    let children = vec![
        new_job(&queue, &existing, "default", 21),
        new_job(&queue, &fresh, "default", 22),
        new_job(&queue, &fresh, "default", 23),
    ];
    let outcomes = queue
        .driver()
        .push_batch(NewBatch::new(batch_id.clone(), now), children)
        .await
        .expect("push_batch");
    assert_eq!(
        outcomes,
        [
            PushOutcome::Duplicate { id: existing.clone() },
            PushOutcome::Stored,
            PushOutcome::Duplicate { id: fresh.clone() },
        ]
    );
    let mixed = info(&queue, &batch_id).await;
    check_counts(&mixed, (1, 1, 0, 0, 0), "one child stored");
    assert_eq!(mixed.finished_at, None);
    let stored = queue.get(&fresh).await.expect("get").expect("the stored child");
    assert_eq!(
        (stored.job.batch.as_deref(), tag_of_payload(&stored.job.payload)),
        (Some(batch_id.as_str()), 22)
    );
    assert_eq!(queue.get(&existing).await.expect("get").expect("untouched").job.batch, None);

    let again = queue
        .driver()
        .push_batch(
            NewBatch::new(batch_id.clone(), now),
            vec![new_job(&queue, &orcs_core::new_job_id(), "default", 24)],
        )
        .await;
    assert!(matches!(again, Err(Error::Invalid { .. })), "a batch id that exists: {again:?}");
    let mut stray = new_job(&queue, &orcs_core::new_job_id(), "default", 25);
    stray.batch = Some("another-batch".to_owned());
    let other_id = orcs_core::new_job_id();
    let refused =
        queue.driver().push_batch(NewBatch::new(other_id.clone(), now), vec![stray.clone()]).await;
    assert!(matches!(refused, Err(Error::Invalid { .. })), "a child of another batch: {refused:?}");
    assert!(queue.get(&stray.id).await.expect("get").is_none(), "nothing stored");
    assert!(queue.batch_info(&other_id).await.expect("batch_info").is_none(), "no batch stored");
}

/// A batch larger than one atomic step of a driver (Redis stores a batch's children 1,000 per
/// script call, in steps) answers each child as a push of the children in order would: a child
/// whose unique key an earlier child holds is that child's duplicate, or replaces it when
/// debounced; a key held by an existing waiting job, the same. Only the children stored count.
pub async fn a_batch_beyond_one_atomic_step_answers_keys_in_order(driver: BoxDriver) {
    let (queue, _clock) = manual_queue(&driver);
    let (key, _) = probe();
    let keyed = |on: &str| DispatchOptions::new().unique(on, UniqueUntil::Finished);
    let debounced = |on: &str| DispatchOptions::new().debounce(on, UniqueUntil::Finished);
    let holder = queue.dispatch_with(ok(&key, 1), keyed("c")).await.expect("dispatch");
    let record = |tag: u64, options: DispatchOptions| {
        queue.prepare(&ok(&key, tag), &options).expect("record")
    };
    const CHILDREN: usize = 2_500;
    let mut children: Vec<NewJob> =
        (0..CHILDREN).map(|i| record(100 + i as u64, DispatchOptions::new())).collect();
    for (at, options) in [
        (0, keyed("a")),
        (1_200, keyed("a")),
        (5, debounced("b")),
        (2_300, debounced("b")),
        (40, keyed("c")),
        (1_400, debounced("c")),
    ] {
        children[at] = record(100 + at as u64, options);
    }
    let (first, fifth) = (children[0].id.clone(), children[5].id.clone());
    let batch_id = orcs_core::new_job_id();
    let outcomes = queue
        .driver()
        .push_batch(NewBatch::new(batch_id.clone(), queue.now()), children)
        .await
        .expect("push_batch");
    let mut expected = vec![PushOutcome::Stored; CHILDREN];
    expected[1_200] = PushOutcome::Duplicate { id: first };
    expected[2_300] = PushOutcome::Replaced { id: fifth.clone() };
    expected[40] = PushOutcome::Duplicate { id: holder.clone() };
    expected[1_400] = PushOutcome::Replaced { id: holder.clone() };
    assert_eq!(outcomes.len(), CHILDREN);
    for (at, (got, want)) in outcomes.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "child {at} of the batch");
    }
    let stored = (CHILDREN - 4) as u64;
    check_counts(&info(&queue, &batch_id).await, (stored, stored, 0, 0, 0), "the stored children");
    let payload = |id: String| {
        let queue = queue.clone();
        async move {
            let info = queue.get(&id).await.expect("get").expect("the job");
            tag_of_payload(&info.job.payload)
        }
    };
    assert_eq!(payload(fifth).await, 2_400, "child 5 took the data of child 2,300");
    assert_eq!(payload(holder).await, 1_500, "the holder took the data of child 1,400");
}

/// An unknown batch has no info.
pub async fn batch_info_unknown_is_none(driver: BoxDriver) {
    let (queue, _clock) = manual_queue(&driver);
    assert!(queue.batch_info("01J0NOSUCHBATCH0000000000").await.expect("batch_info").is_none());
}

/// A failed child moved back by `retry_failed` leaves its batch (it was counted already): its
/// later end changes no counter and dispatches no callback again.
pub async fn retried_failed_child_leaves_its_batch(driver: BoxDriver) {
    let (queue, _clock) = manual_queue(&driver);
    let (key, _) = probe();
    let id = batch_with_callbacks(&queue, &key)
        .add(fatal(&key, 1))
        .add(ok(&key, 2))
        .allow_failures()
        .dispatch()
        .await
        .expect("dispatch");
    let failed = work_one(&queue, &["default"]).await;
    assert!(matches!(failed.outcome, Outcome::Failed { .. }), "{:?}", failed.outcome);
    let before = info(&queue, &id).await;
    check_counts(&before, (2, 1, 0, 1, 0), "after the failure");
    queue.retry_failed(&failed.id).await.expect("retry_failed");
    let back = queue.get(&failed.id).await.expect("get").expect("back on its queue");
    assert_eq!((back.state, back.job.batch), (JobState::Pending, None), "it left its batch");
    assert_eq!(info(&queue, &id).await, before, "the batch did not change");

    let again = work_one(&queue, &["default"]).await;
    assert_eq!(again.id, failed.id, "the retried child (the oldest id) runs first");
    assert!(matches!(again.outcome, Outcome::Failed { .. }), "{:?}", again.outcome);
    assert_eq!(info(&queue, &id).await, before, "its second failure is not counted");
    assert_eq!(work_one(&queue, &["default"]).await.outcome, Outcome::Done);
    let finished = info(&queue, &id).await;
    check_counts(&finished, (2, 0, 1, 1, 0), "finished");
    check_callbacks(&finished, (Some(Skipped), Some(Dispatched), Some(Dispatched)), "finished");
    assert_eq!(waiting_tags(&queue, "default").await, [7, 9], "catch once, finally once");
}

/// A settle with a stale lease (the child was recovered and claimed again) changes no counter
/// and dispatches no callback; the current lease's settle counts once, and a repeat of it is
/// rejected and counted no more.
pub async fn stale_lease_settle_of_a_batch_child_changes_no_counter(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    let id =
        batch_with_callbacks(&queue, &key).add(ok(&key, 1)).dispatch().await.expect("dispatch");
    let stale = claim(&queue, "default", 1).await.pop().expect("the child");
    clock.set(stale.lease.expires_at);
    queue.driver().recover(&names(&["default"]), clock.now()).await.expect("recover");
    let current = claim(&queue, "default", 1).await.pop().expect("claimed again");
    let lost = |result: orcs_core::Result<()>, what: &str| {
        assert!(matches!(result, Err(Error::LeaseLost { .. })), "{what}: {result:?}");
    };
    for transition in [
        Settle::complete(stale.lease.clone()),
        Settle::fail(stale.lease.clone(), "late"),
        Settle::cancel(stale.lease.clone()),
    ] {
        lost(settle(&queue, transition).await, "a stale settle");
    }
    let untouched = info(&queue, &id).await;
    check_counts(&untouched, (1, 1, 0, 0, 0), "after the stale settles");
    check_callbacks(&untouched, (Some(Waiting), Some(Waiting), Some(Waiting)), "untouched");
    assert!(tags(&queue, "default", JobState::Pending).await.is_empty(), "no callback");

    settle(&queue, Settle::complete(current.lease.clone())).await.expect("complete");
    lost(settle(&queue, Settle::complete(current.lease.clone())).await, "a repeated settle");
    lost(settle(&queue, Settle::fail(current.lease.clone(), "again")).await, "a late failure");
    let finished = info(&queue, &id).await;
    check_counts(&finished, (1, 0, 1, 0, 0), "counted once");
    check_callbacks(&finished, (Some(Dispatched), Some(Skipped), Some(Dispatched)), "finished");
    assert_eq!(waiting_tags(&queue, "default").await, [7, 8], "then and finally, once each");
}

/// Dispatches a batch with callbacks whose children are `ok` jobs tagged `tags`; its id.
async fn batch_of(queue: &Queue, key: &str, tags: std::ops::Range<u64>) -> String {
    let batch = tags.fold(batch_with_callbacks(queue, key), |batch, tag| batch.add(ok(key, tag)));
    batch.dispatch().await.expect("dispatch the batch")
}

/// Settles a batch's last two children and a repeat of an earlier one in one call: the two are
/// done, the repeat is lost, and the batch of five has finished (then and finally dispatched).
async fn settle_last_two_and_a_repeat(queue: &Queue, id: &str, settles: &[Settle], what: &str) {
    let results = queue.driver().settle(settles, queue.now()).await;
    assert!(results[0].is_ok() && results[1].is_ok(), "{what}'s last children: {results:?}");
    assert!(matches!(results[2], Err(Error::LeaseLost { .. })), "repeat: {:?}", results[2]);
    let done = info(queue, id).await;
    check_counts(&done, (5, 0, 5, 0, 0), &format!("{what}, every child done"));
    check_callbacks(&done, (Some(Dispatched), Some(Skipped), Some(Dispatched)), what);
}

/// One settle of many leases counts each child once in its own batch: children of two batches
/// (all of one, so that batch finishes in that step, and some of the other), a plain job and a
/// stale lease of a child together; then the other batch's last children with a repeat.
pub async fn one_settle_of_many_children_counts_each_in_its_batch_once(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    let a = batch_of(&queue, &key, 11..16).await;
    let b = batch_of(&queue, &key, 21..24).await;
    queue.dispatch(ok(&key, 30)).await.expect("dispatch the plain job");
    let stale = claim(&queue, "default", 1).await.pop().expect("a's first child");
    assert_eq!(tag_of_payload(&stale.record.payload), 11, "the oldest job is claimed first");
    clock.set(stale.lease.expires_at);
    queue.driver().recover(&names(&["default"]), clock.now()).await.expect("recover");
    let leases = claim(&queue, "default", 20).await;
    assert_eq!(leases.len(), 9, "every job claimed");
    let lease = |tag: u64| {
        let found = leases.iter().find(|r| tag_of_payload(&r.record.payload) == tag);
        found.expect("a claimed job with this tag").lease.clone()
    };
    let first: Vec<Settle> = [12, 13, 14, 21, 22, 23, 30]
        .into_iter()
        .map(|tag| Settle::complete(lease(tag)))
        .chain([Settle::complete(stale.lease.clone())])
        .collect();
    let results = queue.driver().settle(&first, clock.now()).await;
    assert_eq!(results.len(), 8, "one result per lease");
    for (item, result) in first.iter().zip(&results).take(7) {
        assert!(result.is_ok(), "{}: {result:?}", item.lease.id);
    }
    assert!(matches!(results[7], Err(Error::LeaseLost { .. })), "stale: {:?}", results[7]);
    check_counts(&info(&queue, &a).await, (5, 2, 3, 0, 0), "a, three children done");
    check_callbacks(&info(&queue, &a).await, (Some(Waiting), Some(Waiting), Some(Waiting)), "a");
    let done_b = info(&queue, &b).await;
    check_counts(&done_b, (3, 0, 3, 0, 0), "b, every child done");
    check_callbacks(&done_b, (Some(Dispatched), Some(Skipped), Some(Dispatched)), "b");
    assert_eq!(waiting_tags(&queue, "default").await, [7, 8], "b's then and finally");
    assert_eq!(queue.stats("default").await.expect("stats").processed, 7);

    let second = [11, 15, 12].map(|tag| Settle::complete(lease(tag)));
    settle_last_two_and_a_repeat(&queue, &a, &second, "a").await;
    assert_eq!(waiting_tags(&queue, "default").await, [7, 7, 8, 8], "each then and finally once");
    assert_eq!(queue.stats("default").await.expect("stats").processed, 9);
}

/// The children of a batch on a queue under a concurrency limit (claimed by the limited claim,
/// which on PostgreSQL leaves a child's lease token unmarked) settled together are counted once
/// each, and the batch finishes once.
pub async fn limited_queues_children_settled_together_are_counted_once(driver: BoxDriver) {
    let (queue, clock) = manual_queue(&driver);
    let (key, _) = probe();
    let limits = orcs_core::QueueLimits::none().concurrency(10);
    queue.set_limits("default", limits).await.expect("limit");
    let id = batch_of(&queue, &key, 11..16).await;
    let leases = claim(&queue, "default", 20).await;
    assert_eq!(leases.len(), 5, "every child claimed, within the limit");
    let first: Vec<Settle> =
        leases[..3].iter().map(|r| Settle::complete(r.lease.clone())).collect();
    let results = queue.driver().settle(&first, clock.now()).await;
    assert!(results.iter().all(Result::is_ok), "three children: {results:?}");
    check_counts(&info(&queue, &id).await, (5, 2, 3, 0, 0), "three children done");
    let second: Vec<Settle> =
        leases[3..].iter().chain(&leases[..1]).map(|r| Settle::complete(r.lease.clone())).collect();
    settle_last_two_and_a_repeat(&queue, &id, &second, "the batch").await;
    assert_eq!(waiting_tags(&queue, "default").await, [7, 8], "then and finally, once each");
    assert_eq!(queue.stats("default").await.expect("stats").processed, 5);
}

/// A batch whose children and callbacks span queues is counted as one where one atomic step can
/// span queues, and refused with `Unsupported` (nothing stored) where it cannot.
pub async fn batch_across_queues_is_refused_where_steps_cannot_span_queues(driver: BoxDriver) {
    let (queue, _clock) = manual_queue(&driver);
    let (key, _) = probe();
    let other = DispatchOptions::new().queue("batch-b");
    let dispatched = queue
        .batch()
        .add(ok(&key, 1))
        .add_with(ok(&key, 2), other.clone())
        .finally_with(ok(&key, 7), other)
        .dispatch()
        .await;
    if !queue.driver().capabilities().cross_queue_atomic {
        match dispatched {
            Err(Error::Unsupported { what, .. }) => assert!(what.contains("one queue"), "{what}"),
            other => {
                panic!("a batch across queues on this driver: expected Unsupported, got {other:?}")
            }
        }
        let s = queue.stats("default").await.expect("stats");
        assert_eq!(s.pending, 0, "nothing was stored");
        return;
    }
    let id = dispatched.expect("dispatch");
    assert_eq!(work_one(&queue, &["default"]).await.outcome, Outcome::Done);
    check_counts(&info(&queue, &id).await, (2, 1, 1, 0, 0), "one queue's child");
    assert_eq!(work_one(&queue, &["batch-b"]).await.outcome, Outcome::Done);
    let finished = info(&queue, &id).await;
    check_counts(&finished, (2, 0, 2, 0, 0), "both");
    check_callbacks(&finished, (None, None, Some(Dispatched)), "finished");
    assert_eq!(tags(&queue, "batch-b", JobState::Pending).await, [7], "finally on its own queue");
}
