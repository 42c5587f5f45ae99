//! The worker when the backend fails its settles. A slot task hands a completion to the settle
//! writer and takes its next job without waiting for the write; a write that fails comes back
//! to the task, which retries a transient failure and reports a permanent one as a lost lease,
//! each attempt reported once, as for the settles a task waits for. The memory driver runs
//! underneath, behind a wrapper that fails chosen settles (no backend fails on demand).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orcs_core::{
    Admin, CancelOutcome, Capabilities, Claim, ClaimRequest, Driver, Error, FailedJob, FailedQuery,
    Job, JobContext, JobError, JobInfo, Lease, ListRequest, Millis, NewJob, Outcome, PushOutcome,
    Queue, QueueLimits, QueueStats, Registry, Result, Settle, Touch, Worker, async_trait,
};
use orcs_memory::MemoryDriver;
use serde::{Deserialize, Serialize};

/// How the wrapper fails a job's settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The first settle of every job fails with a transient error; its retry goes through.
    FirstTransient,
    /// Every settle of the jobs in `doomed` fails with a permanent error.
    Permanent,
}

#[derive(Debug)]
struct FailingSettles {
    inner: MemoryDriver,
    failure: Failure,
    /// Jobs whose settle failed once (`FirstTransient`).
    failed_once: Mutex<HashSet<String>>,
    /// Jobs whose settles all fail (`Permanent`).
    doomed: HashSet<String>,
}

impl FailingSettles {
    fn new(failure: Failure, doomed: HashSet<String>) -> Self {
        Self {
            inner: MemoryDriver::new(),
            failure,
            failed_once: Mutex::new(HashSet::new()),
            doomed,
        }
    }

    fn fails(&self, settle: &Settle) -> Option<Error> {
        let id = &settle.lease.id;
        match self.failure {
            Failure::FirstTransient => self
                .failed_once
                .lock()
                .expect("lock")
                .insert(id.clone())
                .then(|| Error::backend("failing", "an injected transient failure")),
            Failure::Permanent => self
                .doomed
                .contains(id)
                .then(|| Error::backend_permanent("failing", "an injected permanent failure")),
        }
    }
}

#[async_trait]
impl Driver for FailingSettles {
    fn name(&self) -> &'static str {
        "failing"
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn push(&self, jobs: Vec<NewJob>) -> Result<Vec<PushOutcome>> {
        self.inner.push(jobs).await
    }

    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim> {
        self.inner.claim(req).await
    }

    async fn settle(&self, batch: &[Settle], now: Millis) -> Vec<Result<()>> {
        let mut results = Vec::with_capacity(batch.len());
        for settle in batch {
            results.push(match self.fails(settle) {
                Some(error) => Err(error),
                None => self.inner.settle_one(settle.clone(), now).await,
            });
        }
        results
    }

    async fn touch(&self, running: &[Touch], now: Millis) -> Result<Vec<String>> {
        self.inner.touch(running, now).await
    }

    async fn extend(&self, lease: &Lease, until: Millis, now: Millis) -> Result<Lease> {
        self.inner.extend(lease, until, now).await
    }

    async fn recover(&self, queues: &[String], now: Millis) -> Result<u64> {
        self.inner.recover(queues, now).await
    }

    async fn wait(&self, queues: &[String], now: Millis, timeout: Duration) -> Result<()> {
        self.inner.wait(queues, now, timeout).await
    }
}

#[async_trait]
impl Admin for FailingSettles {
    async fn stats(&self, queue: &str, now: Millis) -> Result<QueueStats> {
        self.inner.stats(queue, now).await
    }

    async fn queues(&self) -> Result<Vec<String>> {
        self.inner.queues().await
    }

    async fn get(&self, id: &str, now: Millis) -> Result<Option<JobInfo>> {
        self.inner.get(id, now).await
    }

    async fn list(&self, req: &ListRequest, now: Millis) -> Result<Vec<JobInfo>> {
        self.inner.list(req, now).await
    }

    async fn clear(&self, queue: &str, now: Millis) -> Result<u64> {
        self.inner.clear(queue, now).await
    }

    async fn failed(&self, query: &FailedQuery) -> Result<Vec<FailedJob>> {
        self.inner.failed(query).await
    }

    async fn retry_failed(&self, id: &str, now: Millis) -> Result<()> {
        self.inner.retry_failed(id, now).await
    }

    async fn forget_failed(&self, id: &str) -> Result<()> {
        self.inner.forget_failed(id).await
    }

    async fn flush_failed(&self) -> Result<u64> {
        self.inner.flush_failed().await
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        self.inner.set_paused(queue, paused).await
    }

    async fn set_limits(&self, queue: &str, limits: &QueueLimits) -> Result<()> {
        self.inner.set_limits(queue, limits).await
    }

    async fn cancel(&self, id: &str, now: Millis) -> Result<CancelOutcome> {
        self.inner.cancel(id, now).await
    }

    async fn forget_queue(&self, queue: &str) -> Result<bool> {
        self.inner.forget_queue(queue).await
    }
}

#[derive(Serialize, Deserialize)]
struct Noop {
    n: u32,
}

impl Job for Noop {
    const NAME: &'static str = "Noop";

    async fn handle(&self, _ctx: &JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

/// Dispatches `n` jobs through `driver`, drains them with one worker of 8 slots, and answers
/// the outcome each attempt was reported with, by job id, and the queue's counters.
async fn drain(driver: FailingSettles, jobs: &[String]) -> (Vec<(String, Outcome)>, QueueStats) {
    let queue = Queue::new(driver);
    let records = jobs
        .iter()
        .enumerate()
        .map(|(n, id)| {
            let mut record = queue.prepare(&Noop { n: n as u32 }, &Default::default())?;
            record.id.clone_from(id);
            Ok(record)
        })
        .collect::<Result<Vec<_>>>()
        .expect("records");
    queue.dispatch_records(records).await.expect("dispatch");
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&events);
    Worker::new(queue.clone(), Registry::new().register::<Noop>())
        .concurrency(8)
        .stop_when_empty(true)
        .on_event(move |event| {
            seen.lock().expect("lock").push((event.id.clone(), event.outcome.clone()));
        })
        .run()
        .await
        .expect("worker");
    let stats = queue.stats("default").await.expect("stats");
    let events = events.lock().expect("lock").clone();
    (events, stats)
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|_| orcs_core::new_job_id()).collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn a_completion_whose_write_fails_for_a_moment_is_retried_and_reported_once() {
    runtime().block_on(async {
        let jobs = ids(40);
        let driver = FailingSettles::new(Failure::FirstTransient, HashSet::new());
        let (events, stats) = drain(driver, &jobs).await;
        let mut reported: Vec<&str> = events.iter().map(|(id, _)| id.as_str()).collect();
        reported.sort_unstable();
        let mut expected: Vec<&str> = jobs.iter().map(String::as_str).collect();
        expected.sort_unstable();
        assert_eq!(reported, expected, "each job's attempt is reported once");
        assert!(events.iter().all(|(_, outcome)| *outcome == Outcome::Done), "{events:?}");
        assert_eq!((stats.processed, stats.reserved, stats.pending), (40, 0, 0), "{stats:?}");
    });
}

#[test]
fn a_completion_whose_write_fails_for_good_is_reported_lost_and_its_lease_kept() {
    runtime().block_on(async {
        let jobs = ids(20);
        let doomed: HashSet<String> = jobs.iter().take(3).cloned().collect();
        let driver = FailingSettles::new(Failure::Permanent, doomed.clone());
        let (events, stats) = drain(driver, &jobs).await;
        assert_eq!(events.len(), 20, "each job's attempt is reported once: {events:?}");
        for (id, outcome) in &events {
            let expected = if doomed.contains(id) { Outcome::LeaseLost } else { Outcome::Done };
            assert_eq!(*outcome, expected, "job {id}");
        }
        // The lost ones stay reserved until their leases expire and recovery returns them.
        assert_eq!((stats.processed, stats.reserved), (17, 3), "{stats:?}");
    });
}
