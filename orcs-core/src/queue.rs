//! Dispatching jobs: [`Queue`] and [`DispatchOptions`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock, millis};
use crate::driver::{BoxDriver, Driver};
use crate::error::{Error, Result};
use crate::id::new_job_id;
use crate::job::Job;
use crate::record::{
    FailedJob, FailedQuery, JobInfo, ListRequest, NewJob, PushOutcome, QueueStats,
};

/// The queue used when neither the job nor the configuration names one.
pub const DEFAULT_QUEUE: &str = "default";

/// The default limit on a job's serialized payload: 512 KiB. Jobs should carry references
/// (ids, URLs), not the data itself; every byte is stored, claimed and parsed on each attempt.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 512 * 1024;

/// How many failed jobs [`Queue::retry_all_failed`] reads per call.
const PAGE: usize = 500;

/// Longest accepted queue name, in bytes.
pub const MAX_QUEUE_NAME_LEN: usize = 128;

/// Checks a queue name: non-empty, at most [`MAX_QUEUE_NAME_LEN`] bytes, printable, without
/// whitespace, commas or braces (commas separate queue lists; braces would break Redis hash tags).
///
/// # Errors
/// [`Error::Invalid`] naming the problem.
pub fn validate_queue_name(name: &str) -> Result<()> {
    let problem = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_QUEUE_NAME_LEN {
        Some("it is longer than 128 bytes")
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("it contains whitespace or control characters")
    } else if name.contains(['{', '}', ',']) {
        Some("it contains '{', '}' or ','")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(Error::invalid(
            "queue name",
            format!("{name:?}: {problem}; use letters, digits and '-', '_', '.', ':'"),
        )),
    }
}

/// Per-dispatch overrides of a job type's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DispatchOptions {
    queue: Option<String>,
    priority: Option<i32>,
    delay: Option<Duration>,
    max_retries: Option<u32>,
    retry_delay: Option<Duration>,
    timeout: Option<Duration>,
    unique: Option<crate::record::Unique>,
}

impl DispatchOptions {
    /// No overrides.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends the job to this queue instead of `Job::QUEUE`.
    #[must_use]
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Uses this priority instead of `Job::PRIORITY`.
    #[must_use]
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Keeps the job invisible to workers for `delay`.
    #[must_use]
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Uses this many retries instead of `Job::MAX_RETRIES`.
    #[must_use]
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = Some(max_retries);
        self
    }

    /// Uses this backoff base instead of `Job::RETRY_DELAY`.
    #[must_use]
    pub fn retry_delay(mut self, retry_delay: Duration) -> Self {
        self.retry_delay = Some(retry_delay);
        self
    }

    /// Holds the unique `key` (per queue) until `until`: while another job of the queue holds it,
    /// the dispatch stores nothing and returns the holder's id. Overrides `Job::unique`.
    #[must_use]
    pub fn unique(mut self, key: impl Into<String>, until: crate::record::UniqueUntil) -> Self {
        self.unique = Some(crate::record::Unique::new(key, until));
        self
    }

    /// Holds the unique `key` as [`DispatchOptions::unique`] does, debounced: if a job of the
    /// queue holding it is still waiting (pending or delayed), that job takes this dispatch's
    /// payload and run time (its delay counted from now) instead of staying as it was, and its
    /// id is returned; a running holder makes this dispatch a plain duplicate. With a delay,
    /// repeated dispatches push the run back, so the job runs once, with the latest data, after
    /// the dispatches stop. Overrides `Job::unique`.
    #[must_use]
    pub fn debounce(mut self, key: impl Into<String>, until: crate::record::UniqueUntil) -> Self {
        self.unique = Some(crate::record::Unique::new(key, until).debounced());
        self
    }

    /// Uses this per-attempt time limit instead of `Job::TIMEOUT`.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// The dispatching side of orcs: turns typed jobs into records and hands them to a driver.
///
/// Cheap to clone; share one per application.
#[derive(Clone)]
pub struct Queue {
    driver: BoxDriver,
    clock: Arc<dyn Clock>,
    default_queue: String,
    max_payload_bytes: usize,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("driver", &self.driver.name())
            .field("default_queue", &self.default_queue)
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// A queue on `driver` with the system clock and the `default` queue.
    pub fn new(driver: impl Driver) -> Self {
        Self::from_driver(Arc::new(driver))
    }

    /// A queue on a driver chosen at run time.
    pub fn from_driver(driver: BoxDriver) -> Self {
        Self {
            driver,
            clock: Arc::new(SystemClock),
            default_queue: DEFAULT_QUEUE.to_owned(),
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }

    /// Replaces the clock (tests use [`crate::ManualClock`]).
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Sets the queue for jobs whose type names none.
    ///
    /// # Errors
    /// [`Error::Invalid`] if the name is not a valid queue name.
    pub fn with_default_queue(mut self, queue: impl Into<String>) -> Result<Self> {
        let queue = queue.into();
        validate_queue_name(&queue)?;
        self.default_queue = queue;
        Ok(self)
    }

    /// Sets the largest accepted serialized payload (default [`DEFAULT_MAX_PAYLOAD_BYTES`]).
    #[must_use]
    pub fn with_max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload_bytes = bytes;
        self
    }

    /// The driver.
    pub fn driver(&self) -> &BoxDriver {
        &self.driver
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The current time by this queue's clock.
    pub fn now(&self) -> crate::Millis {
        self.clock.now()
    }

    /// The queue for jobs whose type names none.
    pub fn default_queue(&self) -> &str {
        &self.default_queue
    }

    /// Dispatches a job to run as soon as a worker is free; returns its id.
    ///
    /// # Errors
    /// [`Error::Serialization`] if the job does not serialize, [`Error::Invalid`] for a bad queue
    /// name, or a backend error.
    pub async fn dispatch<J: Job>(&self, job: J) -> Result<String> {
        self.dispatch_with(job, DispatchOptions::new()).await
    }

    /// Dispatches a job that becomes visible to workers after `delay`.
    ///
    /// # Errors
    /// As [`Queue::dispatch`].
    pub async fn dispatch_after<J: Job>(&self, delay: Duration, job: J) -> Result<String> {
        self.dispatch_with(job, DispatchOptions::new().delay(delay)).await
    }

    /// Dispatches a job with overrides of its type's queue, priority and delay.
    ///
    /// # Errors
    /// As [`Queue::dispatch`].
    pub async fn dispatch_with<J: Job>(
        &self,
        job: J,
        mut options: DispatchOptions,
    ) -> Result<String> {
        // The options are this dispatch's own: their unique key moves into the record instead
        // of being copied (a keyed dispatch's extra allocations are most of what it costs more).
        let unique = options.unique.take();
        let mut record = self.record(&job, &options, self.now())?;
        if unique.is_some() {
            record.unique = unique;
        }
        let mut ids = self.dispatch_records(vec![record]).await?;
        Ok(ids.pop().unwrap_or_default())
    }

    /// Dispatches many jobs in one atomic batch (one round trip); returns their ids in order.
    ///
    /// # Errors
    /// As [`Queue::dispatch`]; on error none of the jobs was stored.
    pub async fn dispatch_many<J: Job>(
        &self,
        jobs: impl IntoIterator<Item = J>,
    ) -> Result<Vec<String>> {
        self.dispatch_many_with(jobs, DispatchOptions::new()).await
    }

    /// [`Queue::dispatch_many`] with the same overrides for every job.
    ///
    /// # Errors
    /// As [`Queue::dispatch_many`].
    pub async fn dispatch_many_with<J: Job>(
        &self,
        jobs: impl IntoIterator<Item = J>,
        options: DispatchOptions,
    ) -> Result<Vec<String>> {
        let now = self.now();
        let records = jobs
            .into_iter()
            .map(|job| self.record(&job, &options, now))
            .collect::<Result<Vec<_>>>()?;
        self.dispatch_records(records).await
    }

    /// Dispatches prepared records as one atomic batch (used by the CLI, whose jobs are untyped);
    /// returns, per record, the id of the job that holds it: its own, or the existing job's when
    /// the id or its unique key was already taken (or the waiting job a debounced record
    /// replaced).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad queue name, or a backend error.
    pub async fn dispatch_records(&self, records: Vec<NewJob>) -> Result<Vec<String>> {
        let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
        let outcomes = self.push_records(records).await?;
        Ok(ids
            .into_iter()
            .zip(outcomes)
            .map(|(own, outcome)| match outcome {
                PushOutcome::Duplicate { id } | PushOutcome::Replaced { id } => id,
                _ => own,
            })
            .collect())
    }

    /// Dispatches prepared records as [`Queue::dispatch_records`] does, answering what the
    /// driver did with each: stored, a duplicate, or replaced a waiting job (debounce).
    ///
    /// # Errors
    /// As [`Queue::dispatch_records`].
    pub async fn push_records(&self, mut records: Vec<NewJob>) -> Result<Vec<PushOutcome>> {
        for record in &records {
            validate_queue_name(&record.queue)?;
        }
        if records.is_empty() {
            return Ok(Vec::new());
        }
        // Feature `opentelemetry`: records built without a trace context (untyped ones, a chain's
        // first step whose meta the chain rewrote) take the current span's; others keep theirs.
        crate::trace_context::stamp_all(&mut records);
        let count = records.len();
        let outcomes = self.driver.push(records).await?;
        if outcomes.len() != count {
            return Err(Error::invalid(
                "push outcome",
                format!(
                    "the {} driver answered {} outcomes for {} jobs; this is a driver bug",
                    self.driver.name(),
                    outcomes.len(),
                    count
                ),
            ));
        }
        Ok(outcomes)
    }

    /// Builds the stored record of an untyped job: what [`Queue::dispatch_with`] does for a typed one.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad queue name.
    pub fn untyped_record(
        &self,
        name: &str,
        payload: String,
        defaults: JobDefaults,
        options: &DispatchOptions,
    ) -> Result<NewJob> {
        if payload.len() > self.max_payload_bytes {
            return Err(Error::invalid(
                "payload",
                format!(
                    "job {name} serializes to {} bytes, over the limit of {} bytes; pass a reference \
                     (an id or URL) instead of the data, or raise the limit with \
                     Queue::with_max_payload_bytes",
                    payload.len(),
                    self.max_payload_bytes
                ),
            ));
        }
        let now = self.now();
        let queue = options.queue.clone().unwrap_or_else(|| {
            if defaults.queue.is_empty() {
                self.default_queue.clone()
            } else {
                defaults.queue.to_owned()
            }
        });
        validate_queue_name(&queue)?;
        let delay = options.delay.map_or(0, millis);
        let mut job = NewJob::new(new_job_id(), name, queue, payload, now);
        job.priority = options.priority.unwrap_or(defaults.priority);
        job.max_retries = options.max_retries.unwrap_or(defaults.max_retries);
        job.retry_delay_ms =
            u64::try_from(millis(options.retry_delay.unwrap_or(defaults.retry_delay))).unwrap_or(0);
        job.timeout_ms = options
            .timeout
            .or(defaults.timeout)
            .map(|t| u64::try_from(millis(t)).unwrap_or(u64::MAX));
        job.available_at = now.saturating_add(delay);
        job.unique = options.unique.clone();
        Ok(job)
    }

    /// Turns a typed job into the record a dispatch stores, without storing it: for drivers
    /// that store records in the application's own transaction (the database driver's
    /// `push_in`), or an outbox.
    ///
    /// # Errors
    /// As [`Queue::dispatch`], less the backend.
    pub fn prepare<J: Job>(&self, job: &J, options: &DispatchOptions) -> Result<NewJob> {
        self.record(job, options, self.now())
    }

    /// The stored record of a typed job dispatched at `now` (workflows build theirs here too).
    pub(crate) fn record<J: Job>(
        &self,
        job: &J,
        options: &DispatchOptions,
        now: crate::Millis,
    ) -> Result<NewJob> {
        let payload = serde_json::to_string(job).map_err(Error::Serialization)?;
        let mut record = self.untyped_record(J::NAME, payload, JobDefaults::of::<J>(), options)?;
        record.dispatched_at = now;
        record.available_at = now.saturating_add(options.delay.map_or(0, millis));
        if record.unique.is_none() {
            record.unique = job.unique();
        }
        // Feature `opentelemetry`: the dispatching span's trace context (see trace_context).
        crate::trace_context::stamp(&mut record.meta);
        Ok(record)
    }

    /// The counters of one queue.
    ///
    /// # Errors
    /// A backend error.
    pub async fn stats(&self, queue: &str) -> Result<QueueStats> {
        self.driver.stats(queue, self.now()).await
    }

    /// Removes a queue's pending and delayed jobs; returns how many.
    ///
    /// # Errors
    /// A backend error.
    pub async fn clear(&self, queue: &str) -> Result<u64> {
        self.driver.clear(queue, self.now()).await
    }

    /// A page of the failed set, oldest first.
    ///
    /// # Errors
    /// A backend error.
    pub async fn failed_jobs(&self, query: &FailedQuery) -> Result<Vec<FailedJob>> {
        self.driver.failed(query).await
    }

    /// One job by id, in whatever state it is.
    ///
    /// # Errors
    /// A backend error.
    pub async fn get(&self, id: &str) -> Result<Option<JobInfo>> {
        self.driver.get(id, self.now()).await
    }

    /// A page of one queue's pending, delayed or reserved jobs.
    ///
    /// # Errors
    /// A backend error, or [`Error::Invalid`] for the failed state.
    pub async fn list(&self, request: &ListRequest) -> Result<Vec<JobInfo>> {
        self.driver.list(request, self.now()).await
    }

    /// How far this queue's clock is ahead of the backend's, in milliseconds (negative: behind);
    /// `None` for a backend without a clock of its own. Leases are judged by the workers' clocks,
    /// so a skew near the lease grace lets workers recover each other's live jobs.
    ///
    /// # Errors
    /// A backend error.
    pub async fn clock_skew(&self) -> Result<Option<i64>> {
        let before = self.now();
        let Some(server) = self.driver.server_time().await? else { return Ok(None) };
        let after = self.now();
        // The server read its clock somewhere within the round trip: compare with the middle.
        Ok(Some(before + (after - before) / 2 - server))
    }

    /// Cancels a job from any process: a pending or delayed one is deleted; a running one is
    /// stopped by its worker within a second (`ctx.cancelled()` fires) and ends as cancelled,
    /// without a retry.
    ///
    /// # Errors
    /// [`Error::NotFound`] if no pending, delayed or running job has this id, or a backend error.
    pub async fn cancel(&self, id: &str) -> Result<crate::record::CancelOutcome> {
        self.driver.cancel(id, self.now()).await
    }

    /// Sets a queue's limits across every worker (or clears them with
    /// [`crate::QueueLimits::none`]).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad queue name or a zero limit, or a backend error.
    pub async fn set_limits(&self, queue: &str, limits: crate::record::QueueLimits) -> Result<()> {
        validate_queue_name(queue)?;
        if limits.concurrency == Some(0) {
            return Err(Error::invalid(
                "concurrency limit",
                "0 would stop the queue; pause it instead, or use 1 or more",
            ));
        }
        if let Some(rate) = limits.rate
            && (rate.limit == 0 || rate.period_ms == 0)
        {
            return Err(Error::invalid(
                "rate limit",
                "both the number of starts and the period must be above 0; pause the queue to stop it",
            ));
        }
        self.driver.set_limits(queue, &limits).await
    }

    /// Pauses a queue: every worker skips it from its next claim until it is resumed.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad queue name, or a backend error.
    pub async fn pause(&self, queue: &str) -> Result<()> {
        validate_queue_name(queue)?;
        self.driver.set_paused(queue, true).await
    }

    /// Resumes a paused queue and wakes idle workers.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad queue name, or a backend error.
    pub async fn resume(&self, queue: &str) -> Result<()> {
        validate_queue_name(queue)?;
        self.driver.set_paused(queue, false).await
    }

    /// Forgets a queue if it is empty and idle (no pending, delayed, reserved or failed job):
    /// its counters, pause flag, limits and held unique keys go, and the driver's list of queues
    /// ([`crate::Admin::queues`]) no longer names it; answers whether it did. A later dispatch to it
    /// creates it again from zero. See [`crate::Admin::forget_queue`].
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad queue name, or a backend error.
    pub async fn forget_queue(&self, queue: &str) -> Result<bool> {
        validate_queue_name(queue)?;
        self.driver.forget_queue(queue).await
    }

    /// Puts a failed job back on its queue with fresh attempts.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown id, or a backend error.
    pub async fn retry_failed(&self, id: &str) -> Result<()> {
        self.driver.retry_failed(id, self.now()).await
    }

    /// Puts every failed job (of one queue, if given) back; returns how many.
    ///
    /// # Errors
    /// A backend error.
    pub async fn retry_all_failed(&self, queue: Option<&str>) -> Result<u64> {
        let mut count = 0;
        // Retried jobs leave the set, so each round reads the first page again. Jobs another
        // process retried or forgot meanwhile answer NotFound; a round that retried nothing ends
        // the loop, so jobs failing meanwhile cannot keep it going forever.
        let mut query = FailedQuery::new(PAGE);
        query.queue = queue.map(str::to_owned);
        loop {
            let page = self.driver.failed(&query).await?;
            let before = count;
            for job in &page {
                match self.driver.retry_failed(&job.id, self.now()).await {
                    Ok(()) => count += 1,
                    Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            if page.len() < PAGE || count == before {
                return Ok(count);
            }
        }
    }
}

/// A job type's defaults, as data (for jobs dispatched without their Rust type, e.g. by the CLI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobDefaults {
    /// `Job::QUEUE`.
    pub queue: &'static str,
    /// `Job::PRIORITY`.
    pub priority: i32,
    /// `Job::MAX_RETRIES`.
    pub max_retries: u32,
    /// `Job::RETRY_DELAY`.
    pub retry_delay: Duration,
    /// `Job::TIMEOUT`.
    pub timeout: Option<Duration>,
}

impl JobDefaults {
    /// The defaults of `J`.
    pub fn of<J: Job>() -> Self {
        Self {
            queue: J::QUEUE,
            priority: J::PRIORITY,
            max_retries: J::MAX_RETRIES,
            retry_delay: J::RETRY_DELAY,
            timeout: J::TIMEOUT,
        }
    }
}
