//! The worker runtime: claims jobs, runs them with a time limit, and settles each attempt.
//!
//! The lifecycle of one claimed job lives in [`Runner::run_attempt`]: decode (unknown names and
//! bad payloads go to the failed set), run `handle` under the timeout with panics caught, then
//! complete, retry with backoff, or fail for good and call `failed` once.

mod attempt;
mod events;
mod heartbeat;
mod options;
mod pool;
mod run_loop;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::{CancellationToken, DropGuard};

pub use events::{Outcome, WorkerEvent, WorkerSummary};
pub use heartbeat::WorkerObserver;
pub use options::WorkerOptions;
use run_loop::Runner;

use crate::error::{Error, Result};
use crate::middleware::{Middleware, TraceLayer};
use crate::queue::{Queue, validate_queue_name};
use crate::registry::Registry;
use crate::schedule::{Schedule, Scheduler};

pub(crate) type EventFn = Arc<dyn Fn(&WorkerEvent) + Send + Sync>;

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
    layers: Vec<Arc<dyn Middleware>>,
    /// Sees every attempt start and end, in-process ([`Worker::observer`]).
    observer: Option<Arc<dyn WorkerObserver>>,
    /// Schedules whose slots this worker's scheduler fires ([`Worker::schedule`]).
    schedules: Vec<Schedule>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("queue", &self.queue)
            .field("registry", &self.registry)
            .field("options", &self.options)
            .field("schedules", &self.schedules.iter().map(Schedule::name).collect::<Vec<_>>())
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
        Self {
            queue,
            registry,
            options,
            on_event: None,
            layers: vec![Arc::new(TraceLayer)],
            observer: None,
            schedules: Vec::new(),
        }
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

    /// How long a job asked to stop (its timeout passed, or the shutdown deadline) may take to
    /// wind down after `ctx.cancelled()` fires, before its future is dropped (default 1 s).
    #[must_use]
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.options.cancel_grace = grace;
        self
    }

    /// A job of a type this worker does not register (a newer worker's, during a rolling deploy)
    /// is handed back for `delay` (default 10 s) until `patience` (default 1 h) has passed since
    /// its dispatch; then it fails with the reason.
    #[must_use]
    pub fn unknown_jobs(mut self, delay: Duration, patience: Duration) -> Self {
        self.options.unknown_job_delay = delay;
        self.options.unknown_job_patience = patience;
        self
    }

    /// Whether each retry's backoff is moved by up to ±20% (default: on), so that jobs failing
    /// together (an outage of a service they call) do not retry in the same millisecond. Off
    /// gives the exact schedule `RETRY_DELAY * 2^(n-1)`.
    #[must_use]
    pub fn retry_jitter(mut self, on: bool) -> Self {
        self.options.retry_jitter = on;
        self
    }

    /// Adds a layer around every attempt's `handle`. Layers run in the order they are added, the
    /// first outermost; the built-in [`TraceLayer`] (a span per attempt) comes first unless
    /// [`Worker::without_default_layers`] removed it.
    #[must_use]
    pub fn layer(mut self, layer: impl Middleware) -> Self {
        self.layers.push(Arc::new(layer));
        self
    }

    /// Removes every layer added so far, the built-in [`TraceLayer`] included.
    #[must_use]
    pub fn without_default_layers(mut self) -> Self {
        self.layers.clear();
        self
    }

    /// Declares a schedule: the worker runs a [`Scheduler`] for its schedules alongside its loop
    /// (unless [`Worker::run_scheduler`] turns it off), registering them at start. Any number of
    /// workers may declare the same schedules: each slot fires once.
    #[must_use]
    pub fn schedule(mut self, schedule: Schedule) -> Self {
        self.schedules.push(schedule);
        self
    }

    /// Declares several schedules; see [`Worker::schedule`].
    #[must_use]
    pub fn schedules(mut self, schedules: impl IntoIterator<Item = Schedule>) -> Self {
        self.schedules.extend(schedules);
        self
    }

    /// Whether a worker with schedules runs their scheduler (default: on). Off leaves firing to
    /// other processes (a dedicated scheduler, other workers).
    #[must_use]
    pub fn run_scheduler(mut self, on: bool) -> Self {
        self.options.run_scheduler = on;
        self
    }

    /// Registers the declared schedules and starts their scheduler on its own task, unless there
    /// are none or it is turned off. The scheduler stops when the returned guard drops, so it
    /// ends with the worker however the worker's future ends.
    async fn start_scheduler(&mut self) -> Result<Option<DropGuard>> {
        let schedules = std::mem::take(&mut self.schedules);
        if schedules.is_empty() || !self.options.run_scheduler {
            return Ok(None);
        }
        let scheduler = Scheduler::new(self.queue.clone(), schedules);
        // A bad schedule or a driver without schedules stops the worker here; a backend that is
        // briefly down does not (the scheduler registers once it is back).
        let registered = scheduler.try_register().await?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move { scheduler.serve(stopped.cancelled_owned(), registered).await });
        Ok(Some(stop.drop_guard()))
    }

    /// How often the worker reports itself to the backend (default 5 s): `queue:workers` lists it
    /// until three intervals pass without a report, and each report carries the jobs that ended
    /// since the previous one (the throughput history). Zero turns heartbeats off.
    #[must_use]
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.options.heartbeat_interval = interval;
        self
    }

    /// Tells `observer` of every attempt's start and end, in-process (metrics: the `orcs` crate's
    /// `metrics` feature gives one).
    #[must_use]
    pub fn observer(mut self, observer: Arc<dyn WorkerObserver>) -> Self {
        self.observer = Some(observer);
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
        self.registry.check_state()?;
        Ok(())
    }

    fn runner(self) -> Runner {
        let mut runner =
            Runner::new(self.queue, self.registry, self.options, self.on_event, self.layers);
        let beat = heartbeat::Beat::new(
            &runner.queue,
            &runner.options.queues,
            runner.options.concurrency,
            runner.options.heartbeat_interval,
            runner.running_set(),
        );
        runner.watch = heartbeat::Watch { beat, observer: self.observer };
        runner
    }

    /// Claims one ready job and runs it to its end; `None` if none was ready.
    /// Expired leases are recovered first. Never waits for a job.
    ///
    /// # Errors
    /// Invalid options or a backend error.
    pub async fn work_one(self) -> Result<Option<WorkerEvent>> {
        self.validate()?;
        let mut runner = self.runner();
        // One job is no worker to list.
        runner.watch.beat = None;
        runner.check_clock().await;
        let now = runner.queue.now();
        runner.driver.recover(&runner.options.queues, now).await?;
        let claim = runner.driver.claim(&runner.claim_request(1, now)).await?;
        let Some(reserved) = claim.jobs.into_iter().next() else { return Ok(None) };
        runner.watch.started(&reserved.record, runner.queue.now());
        let event = runner.execute(reserved, &CancellationToken::new(), None, None).await;
        // Without a settle writer and a slot task, nothing is handed over.
        let event = event.ok_or_else(|| {
            Error::invalid("worker", "an attempt of work_one was handed over; this is a bug")
        })?;
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
        self.run_until_forced(shutdown, std::future::pending()).await
    }

    /// [`Worker::run_until`] with a second signal, `force`: once it completes, running jobs are
    /// asked to stop at once (`ctx.cancelled()` fires, then the cancel grace) and handed back,
    /// without waiting for the shutdown timeout. The `orcs` command forces on a second Ctrl-C.
    ///
    /// # Errors
    /// As [`Worker::run_until`].
    pub async fn run_until_forced(
        self,
        shutdown: impl Future<Output = ()> + Send,
        force: impl Future<Output = ()> + Send,
    ) -> Result<WorkerSummary> {
        let mut worker = self;
        worker.validate()?;
        let _scheduler = worker.start_scheduler().await?;
        heartbeat::run_beating(worker.runner(), shutdown, force).await
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
