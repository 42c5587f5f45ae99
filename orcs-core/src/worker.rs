//! The worker runtime: claims jobs, runs them with a time limit, and settles each attempt.
//!
//! The lifecycle of one claimed job lives in [`Runner::run_attempt`]: decode (unknown names and
//! bad payloads go to the failed set), run `handle` under the timeout with panics caught, then
//! complete, retry with backoff, or fail for good and call `failed` once.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::backoff::retry_delay;
use crate::clock::{Millis, millis};
use crate::driver::BoxDriver;
use crate::error::{Error, Result};
use crate::job::{JobContext, JobError};
use crate::queue::{Queue, validate_queue_name};
use crate::record::{ClaimRequest, JobRecord, Lease, Reserved};
use crate::registry::{ErasedJob, Registry};

/// How a worker behaves; every field has the default documented on its [`Worker`] setter.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerOptions {
    /// Queues in strict order.
    pub queues: Vec<String>,
    /// Jobs run at once.
    pub concurrency: usize,
    /// Longest idle wait between claims when no wake-up comes.
    pub sleep: Duration,
    /// Stop after this many jobs.
    pub max_jobs: Option<u64>,
    /// Stop claiming after this long.
    pub max_time: Option<Duration>,
    /// Stop when no job is ready and none is running.
    pub stop_when_empty: bool,
    /// Time limit for jobs without their own.
    pub default_timeout: Duration,
    /// Added to a job's timeout to make its lease.
    pub lease_grace: Duration,
    /// How long in-flight jobs may finish after a stop was asked for.
    pub shutdown_timeout: Duration,
    /// How often expired leases are recovered.
    pub recover_interval: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            queues: Vec::new(),
            concurrency: 1,
            sleep: Duration::from_secs(3),
            max_jobs: None,
            max_time: None,
            stop_when_empty: false,
            default_timeout: Duration::from_secs(60),
            lease_grace: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
            recover_interval: Duration::from_secs(1),
        }
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Completed.
    Done,
    /// Failed; the next attempt runs at `at`.
    Retry {
        /// When the next attempt becomes claimable.
        at: Millis,
        /// The attempt's error.
        error: String,
    },
    /// Moved to the failed set.
    Failed {
        /// Why.
        error: String,
    },
    /// Handed back unfinished at shutdown.
    Released,
    /// The lease expired meanwhile and another claim owns the job; nothing was changed.
    LeaseLost,
}

impl Outcome {
    /// The short label printed by `queue:work`: DONE, RETRY, FAIL, RELEASED or LOST.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Done => "DONE",
            Self::Retry { .. } => "RETRY",
            Self::Failed { .. } => "FAIL",
            Self::Released => "RELEASED",
            Self::LeaseLost => "LOST",
        }
    }
}

/// One finished attempt, reported to the worker's event callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerEvent {
    /// The job's id.
    pub id: String,
    /// Its registry name.
    pub name: String,
    /// Its queue.
    pub queue: String,
    /// The attempt's number.
    pub attempt: u32,
    /// How long the attempt took.
    pub duration: Duration,
    /// How it ended.
    pub outcome: Outcome,
}

/// What a worker did before it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerSummary {
    /// Attempts that completed their job.
    pub done: u64,
    /// Attempts that failed and were scheduled again.
    pub retried: u64,
    /// Jobs moved to the failed set.
    pub failed: u64,
    /// Jobs handed back at shutdown.
    pub released: u64,
    /// Attempts whose lease was lost.
    pub lost: u64,
}

impl WorkerSummary {
    fn count(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Done => self.done += 1,
            Outcome::Retry { .. } => self.retried += 1,
            Outcome::Failed { .. } => self.failed += 1,
            Outcome::Released => self.released += 1,
            Outcome::LeaseLost => self.lost += 1,
        }
    }

    /// Attempts that ran to an end (done, retried or failed).
    pub fn attempts(&self) -> u64 {
        self.done + self.retried + self.failed
    }
}

type EventFn = Arc<dyn Fn(&WorkerEvent) + Send + Sync>;

/// Runs jobs from a [`Queue`] with the types of a [`Registry`].
///
/// ```text
/// Worker::new(queue, registry).queues(["high", "default"]).concurrency(16).run().await?;
/// ```
pub struct Worker {
    queue: Queue,
    registry: Registry,
    options: WorkerOptions,
    on_event: Option<EventFn>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("queue", &self.queue)
            .field("registry", &self.registry)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker on the queue's default queue, concurrency 1.
    pub fn new(queue: Queue, registry: Registry) -> Self {
        let options = WorkerOptions {
            queues: vec![queue.default_queue().to_owned()],
            ..WorkerOptions::default()
        };
        Self { queue, registry, options, on_event: None }
    }

    /// Replaces every option at once.
    #[must_use]
    pub fn options(mut self, options: WorkerOptions) -> Self {
        self.options = options;
        self
    }

    /// The queues to work, in strict order (default: the queue's default queue).
    #[must_use]
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.options.queues = queues.into_iter().map(Into::into).collect();
        self
    }

    /// How many jobs run at once (default 1).
    #[must_use]
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.options.concurrency = concurrency;
        self
    }

    /// The longest idle wait before claiming again (default 3 s); dispatches and due delayed jobs
    /// wake the worker earlier.
    #[must_use]
    pub fn sleep(mut self, sleep: Duration) -> Self {
        self.options.sleep = sleep;
        self
    }

    /// Stop after this many jobs (default: no limit).
    #[must_use]
    pub fn max_jobs(mut self, max_jobs: u64) -> Self {
        self.options.max_jobs = Some(max_jobs);
        self
    }

    /// Stop claiming after this long (default: no limit).
    #[must_use]
    pub fn max_time(mut self, max_time: Duration) -> Self {
        self.options.max_time = Some(max_time);
        self
    }

    /// Stop when no job is ready and none is running (default: false).
    #[must_use]
    pub fn stop_when_empty(mut self, stop: bool) -> Self {
        self.options.stop_when_empty = stop;
        self
    }

    /// The time limit of jobs without their own `TIMEOUT` (default 60 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.default_timeout = timeout;
        self
    }

    /// The margin added to a job's timeout to make its lease (default 5 s).
    #[must_use]
    pub fn lease_grace(mut self, grace: Duration) -> Self {
        self.options.lease_grace = grace;
        self
    }

    /// How long running jobs may finish after a stop was asked for before they are handed back
    /// (default 10 s).
    #[must_use]
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.options.shutdown_timeout = timeout;
        self
    }

    /// How often the worker recovers jobs whose lease expired (default 1 s).
    #[must_use]
    pub fn recover_interval(mut self, interval: Duration) -> Self {
        self.options.recover_interval = interval;
        self
    }

    /// Calls `f` after every attempt (the CLI prints its per-job lines from here).
    #[must_use]
    pub fn on_event(mut self, f: impl Fn(&WorkerEvent) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(f));
        self
    }

    fn validate(&self) -> Result<()> {
        if self.options.queues.is_empty() {
            return Err(Error::invalid("worker queues", "no queue given; name at least one"));
        }
        for queue in &self.options.queues {
            validate_queue_name(queue)?;
        }
        if self.options.concurrency == 0 {
            return Err(Error::invalid("concurrency", "0; use 1 or more"));
        }
        Ok(())
    }

    fn runner(self) -> Runner {
        Runner {
            driver: self.queue.driver().clone(),
            queue: self.queue,
            registry: self.registry,
            options: self.options,
            on_event: self.on_event,
            completions: None,
        }
    }

    /// Claims one ready job and runs it to its end (`queue:work --once`); `None` if none was ready.
    /// Expired leases are recovered first. Never waits for a job.
    ///
    /// # Errors
    /// Invalid options or a backend error.
    pub async fn work_one(self) -> Result<Option<WorkerEvent>> {
        self.validate()?;
        let runner = self.runner();
        let now = runner.queue.now();
        runner.driver.recover(&runner.options.queues, now).await?;
        let claim = runner.driver.claim(&runner.claim_request(1, now)).await?;
        let Some(reserved) = claim.jobs.into_iter().next() else { return Ok(None) };
        let event = runner.execute(reserved, CancellationToken::new(), None).await;
        runner.emit(&event);
        Ok(Some(event))
    }

    /// Runs until SIGINT or SIGTERM (or a limit), then shuts down gracefully.
    ///
    /// # Errors
    /// As [`Worker::run_until`].
    pub async fn run(self) -> Result<WorkerSummary> {
        self.run_until(shutdown_signal()).await
    }

    /// Runs until `shutdown` completes (or a limit is reached): then stops claiming, lets running
    /// jobs finish for up to the shutdown timeout, and hands the unfinished ones back. Handing
    /// back gets 5 s more; jobs the backend did not take back by then (it is down) are left to
    /// their leases, and the worker returns anyway.
    ///
    /// A backend that fails transiently (a dropped connection, a restart) is retried with backoff;
    /// the worker keeps going.
    ///
    /// # Errors
    /// Invalid options, or a backend error that is not transient.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<WorkerSummary> {
        self.validate()?;
        let mut runner = self.runner();
        runner.completions = Some(spawn_completion_writer(runner.queue.clone()));
        Arc::new(runner).run(shutdown).await
    }

    /// Starts the worker on the current runtime; stop and join it with [`WorkerHandle::shutdown`].
    pub fn spawn(self) -> WorkerHandle {
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let task = tokio::spawn(async move { self.run_until(signal.cancelled_owned()).await });
        WorkerHandle { stop, task }
    }
}

/// A running worker started by [`Worker::spawn`].
#[derive(Debug)]
pub struct WorkerHandle {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<WorkerSummary>>,
}

impl WorkerHandle {
    /// Asks the worker to stop gracefully and waits until it has.
    ///
    /// # Errors
    /// The worker's error.
    pub async fn shutdown(self) -> Result<WorkerSummary> {
        self.stop.cancel();
        self.join().await
    }

    /// Waits until the worker stops on its own (a limit, `stop_when_empty`).
    ///
    /// # Errors
    /// The worker's error.
    pub async fn join(self) -> Result<WorkerSummary> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

/// Completes on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// The state shared by the worker loop and its job tasks.
struct Runner {
    queue: Queue,
    driver: BoxDriver,
    registry: Registry,
    options: WorkerOptions,
    on_event: Option<EventFn>,
    /// Where job tasks send their completions to be written in batches (not for `work_one`).
    completions: Option<mpsc::UnboundedSender<Completion>>,
}

/// A finished job waiting to be completed, with the channel its task awaits the result on.
type Completion = (Lease, oneshot::Sender<Result<()>>);

/// Most completions written in one backend call.
const COMPLETION_BATCH: usize = 256;

/// Starts the task that writes completions: it takes every completion queued meanwhile and
/// writes them in one [`crate::Driver::complete_many`] call, so that jobs finishing together cost
/// one round trip, not one each. It ends when the worker drops its sender.
fn spawn_completion_writer(queue: Queue) -> mpsc::UnboundedSender<Completion> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Completion>();
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(COMPLETION_BATCH);
        while rx.recv_many(&mut batch, COMPLETION_BATCH).await > 0 {
            let (leases, replies): (Vec<Lease>, Vec<_>) = batch.drain(..).unzip();
            let results = queue.driver().complete_many(&leases, queue.now()).await;
            for (reply, result) in replies.into_iter().zip(results) {
                // The job task may be gone (its worker was dropped); nothing waits for this.
                let _ = reply.send(result);
            }
        }
    });
    tx
}

/// A running job's hold on one of the worker's `concurrency` slots. The job lets go of it when
/// its code has finished, before its result is recorded, so that the worker's next claim overlaps
/// that write instead of waiting for it (two round trips per batch become one).
struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    freed: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Give the permit back before waking the worker loop, so it sees the free slot.
        drop(self.permit.take());
        self.freed.notify_one();
    }
}

/// Backend retries inside one transition, before the attempt is left to lease recovery.
const SETTLE_TRIES: u32 = 5;

/// How long, after the shutdown timeout, jobs get to be handed back before the worker stops
/// without them (their leases expire and recovery returns them to pending).
const HAND_BACK_TIMEOUT: Duration = Duration::from_secs(5);

impl Runner {
    fn claim_request(&self, max: usize, now: Millis) -> ClaimRequest<'_> {
        ClaimRequest {
            queues: &self.options.queues,
            max,
            now,
            default_timeout_ms: duration_ms(self.options.default_timeout),
            grace_ms: duration_ms(self.options.lease_grace),
        }
    }

    fn emit(&self, event: &WorkerEvent) {
        if let Some(f) = &self.on_event {
            f(event);
        }
    }

    async fn run(
        self: Arc<Self>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<WorkerSummary> {
        let options = &self.options;
        let started = Instant::now();
        let hard_stop = CancellationToken::new();
        let mut tasks: JoinSet<WorkerEvent> = JoinSet::new();
        let mut summary = WorkerSummary::default();
        let mut claimed: u64 = 0;
        let mut next_recover = started;
        let mut backend_backoff = BackendBackoff::default();
        let mut shutdown = std::pin::pin!(shutdown);
        let mut shutdown_asked = false;
        // `concurrency` slots for running job code; see `Slot`. Jobs whose result is still being
        // recorded hold no slot, but at most `concurrency` of them are let pile up.
        let slots = Arc::new(Semaphore::new(options.concurrency));
        let slot_freed = Arc::new(Notify::new());
        let most_tasks = options.concurrency.saturating_mul(2);

        loop {
            if options.max_jobs.is_some_and(|max| claimed >= max)
                || options.max_time.is_some_and(|max| started.elapsed() >= max)
            {
                break;
            }
            let now_instant = Instant::now();
            if now_instant >= next_recover {
                next_recover = now_instant + options.recover_interval;
                match self.driver.recover(&options.queues, self.queue.now()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(jobs = n, "recovered jobs whose lease expired"),
                    Err(e) if e.is_transient() => {
                        tracing::warn!(error = %e, "lease recovery failed; will try again")
                    }
                    Err(e) => return Err(e),
                }
            }

            // Collect every job that finished meanwhile, so that one claim fills all free slots:
            // under load this turns one claim per job into one claim per batch.
            while let Some(joined) = tasks.try_join_next() {
                self.record(joined, &mut summary);
            }
            let free = slots.available_permits().min(most_tasks.saturating_sub(tasks.len()));
            let mut idle_for = None;
            if free > 0 {
                let want = options.max_jobs.map_or(free, |max| {
                    free.min(usize::try_from(max - claimed).unwrap_or(usize::MAX))
                });
                let now = self.queue.now();
                match self.driver.claim(&self.claim_request(want, now)).await {
                    Ok(claim) => {
                        backend_backoff.reset();
                        if claim.jobs.is_empty() {
                            if options.stop_when_empty && tasks.is_empty() {
                                break;
                            }
                            let mut wait = options.sleep;
                            if let Some(due) = claim.next_due {
                                wait = wait.min(Duration::from_millis(
                                    u64::try_from(due - now).unwrap_or(0),
                                ));
                            }
                            wait = wait.min(next_recover.saturating_duration_since(Instant::now()));
                            idle_for = Some(wait);
                        } else {
                            for reserved in claim.jobs {
                                claimed += 1;
                                let runner = Arc::clone(&self);
                                let stop = hard_stop.clone();
                                let slot =
                                    Arc::clone(&slots).try_acquire_owned().ok().map(|permit| {
                                        Slot {
                                            permit: Some(permit),
                                            freed: Arc::clone(&slot_freed),
                                        }
                                    });
                                tasks.spawn(
                                    async move { runner.execute(reserved, stop, slot).await },
                                );
                            }
                            continue;
                        }
                    }
                    Err(e) if e.is_transient() => {
                        let pause = backend_backoff.next();
                        tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "claim failed; retrying");
                        idle_for = Some(pause);
                    }
                    Err(e) => return Err(e),
                }
            }

            // Wait for whatever comes first: a job finishing, a wake-up, the idle timeout, a stop.
            let wait_for_work = async {
                match idle_for {
                    Some(timeout) if !timeout.is_zero() => {
                        if let Err(e) = self.driver.wait(&options.queues, timeout).await {
                            tracing::warn!(error = %e, "waiting for jobs failed");
                            tokio::time::sleep(timeout.min(Duration::from_millis(500))).await;
                        }
                    }
                    Some(_) => {}
                    None => std::future::pending().await,
                }
            };
            let max_time_left = async {
                match options.max_time {
                    Some(max) => tokio::time::sleep_until(started + max).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => self.record(joined, &mut summary),
                () = slot_freed.notified() => {}
                () = wait_for_work => {}
                () = max_time_left => {}
                () = &mut shutdown => {
                    shutdown_asked = true;
                    break;
                }
            }
        }

        // Drain: stop claiming; let running jobs finish, but once a stop was asked for, only up to
        // the shutdown timeout, after which they are cancelled and handed back. Handing back (and
        // recording results) gets HAND_BACK_TIMEOUT more: a backend that is down must not hold
        // the worker up, and the jobs' leases bring them back anyway.
        let mut deadline = shutdown_asked.then(|| Instant::now() + options.shutdown_timeout);
        let mut give_up_at: Option<Instant> = None;
        while !tasks.is_empty() {
            let until_deadline = async {
                match (deadline, give_up_at) {
                    (_, Some(at)) | (Some(at), None) => tokio::time::sleep_until(at).await,
                    (None, None) => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(joined) = tasks.join_next() => self.record(joined, &mut summary),
                () = until_deadline => {
                    if give_up_at.is_some() {
                        tracing::warn!(
                            jobs = tasks.len(),
                            "could not hand these jobs back in time (is the backend down?); \
                             they return to pending when their leases expire"
                        );
                        summary.lost += tasks.len() as u64;
                        tasks.shutdown().await;
                        break;
                    }
                    tracing::info!(jobs = tasks.len(), "shutdown timeout reached; handing unfinished jobs back");
                    hard_stop.cancel();
                    give_up_at = Some(Instant::now() + HAND_BACK_TIMEOUT);
                }
                () = &mut shutdown, if deadline.is_none() => {
                    deadline = Some(Instant::now() + options.shutdown_timeout);
                }
            }
        }
        Ok(summary)
    }

    fn record(
        &self,
        joined: std::result::Result<WorkerEvent, tokio::task::JoinError>,
        summary: &mut WorkerSummary,
    ) {
        match joined {
            Ok(event) => {
                summary.count(&event.outcome);
                self.emit(&event);
            }
            // Panics in jobs are caught inside the task; reaching this is a bug in orcs.
            Err(e) => tracing::error!(error = %e, "a job task ended abnormally"),
        }
    }

    async fn execute(
        &self,
        reserved: Reserved,
        hard_stop: CancellationToken,
        slot: Option<Slot>,
    ) -> WorkerEvent {
        let Reserved { record, lease } = reserved;
        let started = Instant::now();
        let span = tracing::info_span!(
            "job",
            name = %record.name,
            id = %record.id,
            queue = %record.queue,
            attempt = record.attempt,
        );
        let outcome = self.run_attempt(&record, &lease, hard_stop, slot).instrument(span).await;
        WorkerEvent {
            id: record.id,
            name: record.name,
            queue: record.queue,
            attempt: record.attempt,
            duration: started.elapsed(),
            outcome,
        }
    }

    /// One attempt of one job, from decoding to its settled outcome.
    async fn run_attempt(
        &self,
        record: &JobRecord,
        lease: &Lease,
        hard_stop: CancellationToken,
        slot: Option<Slot>,
    ) -> Outcome {
        let job = match self.registry.decode(&record.name, &record.payload) {
            Some(Ok(job)) => job,
            Some(Err(e)) => {
                let error = format!(
                    "payload does not deserialize into job type {}: {e}; fix the dispatcher, then forget or retry the job",
                    record.name
                );
                return self.fail_for_good(lease, error, None).await;
            }
            None => {
                let error = format!(
                    "unknown job name {:?}: this worker registers {:?}; register the job type with Registry::register or fix the dispatcher",
                    record.name,
                    self.registry.names()
                );
                return self.fail_for_good(lease, error, None).await;
            }
        };
        let ctx = JobContext {
            id: record.id.clone(),
            name: record.name.clone(),
            queue: record.queue.clone(),
            attempt: record.attempt,
            max_attempts: record.max_attempts(),
            cancel: hard_stop.child_token(),
        };
        if record.attempt > record.max_attempts() {
            // The worker that ran the last attempt died holding the job (its lease expired).
            let error = JobError::retry(format!(
                "attempts exhausted: attempt {} of {} was lost with its worker (lease expired){}",
                record.attempt - 1,
                record.max_attempts(),
                record
                    .last_error
                    .as_deref()
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            ));
            return self
                .fail_for_good(lease, error.message().to_owned(), Some((job, &ctx, &error)))
                .await;
        }

        let limit = record.timeout_ms.map_or(self.options.default_timeout, Duration::from_millis);
        let run = AssertUnwindSafe(job.handle(&ctx)).catch_unwind();
        let result = tokio::select! {
            ran = tokio::time::timeout(limit, run) => match ran {
                Err(_) => {
                    ctx.cancel.cancel();
                    Err(JobError::timeout(limit))
                }
                Ok(Err(panic)) => Err(JobError::panicked(&panic_message(panic.as_ref()))),
                Ok(Ok(result)) => result,
            },
            () = hard_stop.cancelled() => {
                return self.settle(lease, |driver, now| async move { driver.release(lease, now).await }, Outcome::Released).await;
            }
        };
        // The job's code is done: its slot can take the next job while the result is recorded.
        drop(slot);

        // A job that gave up because the shutdown deadline cancelled it did not fail: hand it back.
        if result.is_err() && hard_stop.is_cancelled() {
            return self
                .settle(
                    lease,
                    |driver, now| async move { driver.release(lease, now).await },
                    Outcome::Released,
                )
                .await;
        }
        match result {
            Ok(()) => self.settle(lease, |_, now| self.complete(lease, now), Outcome::Done).await,
            Err(error) if error.is_permanent() || record.attempt >= record.max_attempts() => {
                self.fail_for_good(lease, error.message().to_owned(), Some((job, &ctx, &error)))
                    .await
            }
            Err(error) => {
                let delay =
                    retry_delay(Duration::from_millis(record.retry_delay_ms), record.attempt);
                let at = self.queue.now().saturating_add(millis(delay));
                let message = error.message().to_owned();
                let outcome = Outcome::Retry { at, error: message.clone() };
                let message = &message;
                self.settle(
                    lease,
                    |driver, now| async move { driver.retry(lease, at, message, now).await },
                    outcome,
                )
                .await
            }
        }
    }

    /// Moves the job to the failed set, then, if that took, runs its `failed` hook once.
    async fn fail_for_good(
        &self,
        lease: &Lease,
        error: String,
        hook: Option<(Arc<dyn ErasedJob>, &JobContext, &JobError)>,
    ) -> Outcome {
        let message = &error;
        let outcome = self
            .settle(
                lease,
                |driver, now| async move { driver.fail(lease, message, now).await },
                Outcome::Failed { error: error.clone() },
            )
            .await;
        if let (Outcome::Failed { .. }, Some((job, ctx, job_error))) = (&outcome, hook) {
            let limit = self.options.default_timeout;
            let hook = AssertUnwindSafe(job.failed(ctx, job_error)).catch_unwind();
            match tokio::time::timeout(limit, hook).await {
                Ok(Ok(())) => {}
                Ok(Err(panic)) => {
                    tracing::error!(panic = %panic_message(panic.as_ref()), "the job's failed hook panicked")
                }
                Err(_) => tracing::error!(
                    limit_ms = limit.as_millis() as u64,
                    "the job's failed hook timed out"
                ),
            }
        }
        outcome
    }

    /// Completes through the batching writer when there is one, else directly.
    async fn complete(&self, lease: &Lease, now: Millis) -> Result<()> {
        if let Some(completions) = &self.completions {
            let (reply, result) = oneshot::channel();
            if completions.send((lease.clone(), reply)).is_ok()
                && let Ok(result) = result.await
            {
                return result;
            }
        }
        self.driver.complete(lease, now).await
    }

    /// Runs one transition, retrying transient backend errors a few times.
    async fn settle<'a, F, Fut>(&'a self, lease: &Lease, op: F, success: Outcome) -> Outcome
    where
        F: Fn(&'a BoxDriver, Millis) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let mut backoff = BackendBackoff::default();
        for attempt in 1..=SETTLE_TRIES {
            match op(&self.driver, self.queue.now()).await {
                Ok(()) => return success,
                Err(Error::LeaseLost { .. }) => {
                    tracing::warn!(
                        outcome = success.label(),
                        "lease lost: the job was claimed again after its lease expired; this result is dropped"
                    );
                    return Outcome::LeaseLost;
                }
                Err(e) if e.is_transient() && attempt < SETTLE_TRIES => {
                    tracing::warn!(error = %e, "could not record the job's result; retrying");
                    tokio::time::sleep(backoff.next()).await;
                }
                Err(e) => {
                    tracing::error!(id = %lease.id, error = %e, "could not record the job's result; the job will be recovered when its lease expires");
                    return Outcome::LeaseLost;
                }
            }
        }
        Outcome::LeaseLost
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}

/// Exponential pauses (100 ms doubling to 5 s) while the backend is unreachable.
#[derive(Debug, Default)]
struct BackendBackoff {
    failures: u32,
}

impl BackendBackoff {
    fn next(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        retry_delay(Duration::from_millis(100), self.failures).min(Duration::from_secs(5))
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}
