//! Storage-neutral records: what a driver stores and hands back. Drivers never see user job types.
//!
//! Every record is `#[non_exhaustive]`: build one with its constructor (or `Default`) and set the
//! public fields, so that a field added later breaks no caller.

use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::clock::{Clock, Millis};

/// A job as dispatched, ready to be stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NewJob {
    /// Unique, time-sortable id (a ULID).
    pub id: String,
    /// The job's registry name (`Job::NAME`).
    pub name: String,
    /// The queue it goes to.
    pub queue: String,
    /// The job's data, serialized as JSON.
    pub payload: String,
    /// Higher runs first.
    pub priority: i32,
    /// How many times a failed attempt is retried; the job gets `max_retries + 1` attempts in all.
    pub max_retries: u32,
    /// Base of the exponential backoff, in milliseconds.
    pub retry_delay_ms: u64,
    /// Time limit of one attempt in milliseconds; `None` takes the worker's default.
    pub timeout_ms: Option<u64>,
    /// When the job was dispatched.
    pub dispatched_at: Millis,
    /// When the job becomes claimable (after its delay).
    pub available_at: Millis,
    /// The unique key the job holds, if any: a push whose key is held stores nothing.
    pub unique: Option<Unique>,
    /// The batch the job belongs to ([`Driver::push_batch`](crate::Driver::push_batch)), if
    /// any: its terminal transition updates the batch's counters in the same atomic step.
    pub batch: Option<String>,
    /// Workflow metadata the worker reads back (a chain's next steps, a schedule's slot, a
    /// trace context), as JSON. Opaque to drivers: stored and handed back as it is.
    pub meta: Option<String>,
}

/// When a unique key frees again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum UniqueUntil {
    /// When a worker starts the job (its claim): one job waiting at a time.
    Started,
    /// When the job ends for good: completed, failed for good, cancelled or removed.
    Finished,
    /// This many milliseconds after the dispatch, whatever the job does.
    Period(u64),
}

/// A unique key: while a job holds it, a dispatch with the same key in the same queue stores
/// nothing and is answered with the holder's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Unique {
    /// The key; unique per queue.
    pub key: String,
    /// When it frees.
    pub until: UniqueUntil,
    /// Debounce: a dispatch that finds the key held by a job still waiting (pending or
    /// delayed, not yet started) gives that job its payload and its run time, so the latest
    /// data runs once, after the last dispatch's delay ([`PushOutcome::Replaced`]). A holder
    /// that is running, or gone while a `Period` key lasts, is answered as a plain duplicate.
    /// Only the pushing job decides: the holder need not have been dispatched with it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub debounce: bool,
}

impl Unique {
    /// A key held until `until`.
    pub fn new(key: impl Into<String>, until: UniqueUntil) -> Self {
        Self { key: key.into(), until, debounce: false }
    }

    /// The same key, debounced (see [`Unique::debounce`]).
    #[must_use]
    pub fn debounced(mut self) -> Self {
        self.debounce = true;
        self
    }

    /// When a `Period` key frees for a job dispatched at `dispatched_at`; `None` for the others.
    pub fn expires_at(&self, dispatched_at: Millis) -> Option<Millis> {
        match self.until {
            UniqueUntil::Period(ms) => {
                Some(dispatched_at.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)))
            }
            _ => None,
        }
    }
}

impl NewJob {
    /// A job ready at `now` with priority 0, no retries, no backoff and the worker's timeout.
    pub fn new(
        id: impl Into<String>,
        name: impl Into<String>,
        queue: impl Into<String>,
        payload: impl Into<String>,
        now: Millis,
    ) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            queue: queue.into(),
            payload: payload.into(),
            dispatched_at: now,
            available_at: now,
            ..Self::default()
        }
    }
}

/// A claimed job, as a worker receives it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobRecord {
    /// Unique id.
    pub id: String,
    /// Registry name.
    pub name: String,
    /// Queue.
    pub queue: String,
    /// JSON payload.
    pub payload: String,
    /// Priority.
    pub priority: i32,
    /// This attempt's number, 1-based; a claim counts as an attempt.
    pub attempt: u32,
    /// Retries allowed after the first attempt.
    pub max_retries: u32,
    /// Backoff base in milliseconds.
    pub retry_delay_ms: u64,
    /// Per-attempt time limit in milliseconds, if the job has its own.
    pub timeout_ms: Option<u64>,
    /// When the job was dispatched.
    pub dispatched_at: Millis,
    /// The error of the previous attempt, if there was one.
    pub last_error: Option<String>,
    /// The batch the job belongs to, if any.
    pub batch: Option<String>,
    /// The job's workflow metadata ([`NewJob::meta`]).
    pub meta: Option<String>,
}

impl JobRecord {
    /// The claimed form of a stored job at attempt `attempt`.
    pub fn from_new(job: &NewJob, attempt: u32, last_error: Option<String>) -> Self {
        Self {
            id: job.id.clone(),
            name: job.name.clone(),
            queue: job.queue.clone(),
            payload: job.payload.clone(),
            priority: job.priority,
            attempt,
            max_retries: job.max_retries,
            retry_delay_ms: job.retry_delay_ms,
            timeout_ms: job.timeout_ms,
            dispatched_at: job.dispatched_at,
            last_error,
            batch: job.batch.clone(),
            meta: job.meta.clone(),
        }
    }

    /// The number of attempts the job gets in all.
    pub fn max_attempts(&self) -> u32 {
        self.max_retries.saturating_add(1)
    }
}

/// Proof of a claim: every later transition of the job names it, and a stale one is rejected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Lease {
    /// The claimed job.
    pub id: String,
    /// Its queue.
    pub queue: String,
    /// The fencing token of this claim, unique per claim.
    pub token: String,
    /// When the lease runs out and the job may be recovered.
    pub expires_at: Millis,
}

impl Lease {
    /// A lease on job `id` of `queue`.
    pub fn new(
        id: impl Into<String>,
        queue: impl Into<String>,
        token: impl Into<String>,
        expires_at: Millis,
    ) -> Self {
        Self { id: id.into(), queue: queue.into(), token: token.into(), expires_at }
    }
}

/// A job handed to a worker with its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reserved {
    /// The job.
    pub record: JobRecord,
    /// The claim.
    pub lease: Lease,
}

impl Reserved {
    /// A claimed job with its lease.
    pub fn new(record: JobRecord, lease: Lease) -> Self {
        Self { record, lease }
    }
}

/// What a worker asks for when it claims jobs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClaimRequest<'a> {
    /// Queues in strict order: jobs come from the first non-empty queue first.
    pub queues: &'a [String],
    /// At most this many jobs.
    pub max: usize,
    /// The current time, as the worker read it before sending the claim.
    pub now: Millis,
    /// The worker's clock, for the driver to read again inside its atomic step (see
    /// [`Self::at_step`]); `None`: `now` stands.
    pub clock: Option<&'a dyn Clock>,
    /// Lease length for jobs without their own timeout (their timeout is the worker's default).
    pub default_timeout_ms: u64,
    /// Added to the timeout to make the lease, so the worker's own timeout fires first.
    pub grace_ms: u64,
    /// The claiming worker's jobs whose code has ended and whose settle is on its way to the
    /// backend. A claim of a concurrency-limited queue may leave them out of the jobs it counts
    /// as running (matched by token: a job claimed again meanwhile still counts); a driver
    /// that ignores them is correct too, but cuts short the claims made while those settles
    /// are written.
    pub settling: Option<&'a dyn Settling>,
}

impl<'a> ClaimRequest<'a> {
    /// Up to `max` jobs from `queues` at `now`, with a 60 s default timeout and a 5 s grace.
    pub fn new(queues: &'a [String], max: usize, now: Millis) -> Self {
        Self {
            queues,
            max,
            now,
            clock: None,
            default_timeout_ms: 60_000,
            grace_ms: 5_000,
            settling: None,
        }
    }

    /// This request with `now` read again from its clock: a driver calls it once inside its
    /// atomic step, after any wait for a lock, so that a claim counts its rate-limit starts
    /// (and dates its leases) at the time it takes effect. With `now` as the worker read it,
    /// a claim that waited (for SQLite's write lock, a PostgreSQL lock, the memory driver's
    /// mutex) logged its starts early, and a later claim's window could let more than the
    /// limit start in real time. Never earlier than `now`; without a clock, a copy.
    pub fn at_step(&self) -> Self {
        let mut request = self.clone();
        if let Some(clock) = self.clock {
            request.now = clock.now().max(self.now);
        }
        request
    }

    /// The lease deadline of a job claimed now with the given own timeout.
    pub fn lease_until(&self, timeout_ms: Option<u64>) -> Millis {
        let length = timeout_ms.unwrap_or(self.default_timeout_ms).saturating_add(self.grace_ms);
        self.now.saturating_add(i64::try_from(length).unwrap_or(i64::MAX))
    }
}

/// The jobs of a worker whose code has ended and whose settle is not written yet (see
/// [`ClaimRequest::settling`]). Read only by claims that need it, so that a worker keeps no
/// list of its own on the hot path.
pub trait Settling: Send + Sync + std::fmt::Debug {
    /// The fencing tokens of those jobs' leases.
    fn tokens(&self) -> Vec<String>;

    /// Those of the jobs that belong to `queue`, by their settles' marks ([`SettleMark`]), for a
    /// driver that counts them without reading their rows; `None`: the settles carry no marks
    /// (read [`Self::tokens`]). Only the claimed queue's: a mark does not say its job's queue,
    /// and another queue's settling job frees no slot of this one.
    fn marks(&self, queue: &str) -> Option<SettlingMarks> {
        let _ = queue;
        None
    }

    /// Calls `each` with the lease of each of those jobs, for a driver that finds a lease by its
    /// job's id (Redis keeps each job's current token under its id); false, without calling it,
    /// when the leases are not known (read [`Self::tokens`]: such a driver then counts those
    /// jobs as running).
    fn each_lease(&self, each: &mut dyn FnMut(&Lease)) -> bool {
        let _ = each;
        false
    }
}

/// A worker's settling jobs by the marks of their settles (see [`Settling::marks`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SettlingMarks {
    /// The settle writer that numbered them.
    pub writer: Arc<str>,
    /// Each settle's `seq` with the end of its job's lease: a lease that may have run out may
    /// have been recovered (and the job claimed again) without its settle, so a driver counts
    /// such a job as running.
    pub marks: Vec<(i64, Millis)>,
}

impl SettlingMarks {
    /// The settles of `writer` numbered as in `marks`, each with its lease's end.
    pub fn new(writer: Arc<str>, marks: Vec<(i64, Millis)>) -> Self {
        Self { writer, marks }
    }

    /// The marks in order of their numbers, each number once (a view may repeat a settle, and
    /// a driver that counted it twice would free its job's slot twice).
    #[must_use]
    pub fn sorted(mut self) -> Self {
        self.marks.sort_unstable();
        self.marks.dedup_by_key(|(seq, _)| *seq);
        self
    }
}

impl Settling for Vec<String> {
    fn tokens(&self) -> Vec<String> {
        self.clone()
    }
}

/// The answer to a claim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Claim {
    /// The claimed jobs, best first. Never more than asked for; a worker still hands any surplus
    /// back rather than trust that.
    pub jobs: Vec<Reserved>,
    /// When the next delayed job of the claimed (unpaused) queues becomes due, if any is waiting,
    /// so an idle worker can wake up for it instead of polling.
    pub next_due: Option<Millis>,
}

/// What a push did with one job, in the order the jobs were given.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PushOutcome {
    /// The job was stored.
    Stored,
    /// A job with this id already exists (pending, delayed, running or failed); nothing was
    /// changed. `id` is the job that holds it.
    Duplicate {
        /// The existing job's id.
        id: String,
    },
    /// The job was debounced ([`Unique::debounce`]): its unique key is held by job `id`, still
    /// waiting, which now carries this job's payload and run time (its `available_at`); nothing
    /// new was stored, and the holder keeps everything else (priority, attempts, batch, key).
    Replaced {
        /// The waiting job that took the payload.
        id: String,
    },
}

/// How a claimed job's attempt ends.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transition {
    /// Done: the job is deleted and counted as processed.
    Complete,
    /// Failed, with attempts left: the job is delayed until `run_at`, recording `error`.
    Retry {
        /// When the next attempt becomes claimable.
        run_at: Millis,
        /// The attempt's error.
        error: String,
    },
    /// Failed for good: the job moves to the failed set with `error`.
    Fail {
        /// Why it failed.
        error: String,
    },
    /// Handed back unfinished (shutdown, a surplus claim, a job type this worker lacks, a snooze):
    /// the interrupted attempt is not counted and the job is claimable at `run_at`.
    Release {
        /// When the job becomes claimable again (`now` for at once).
        run_at: Millis,
    },
    /// Cancelled while it ran ([`crate::Admin::cancel`]): the job is deleted, not retried, its
    /// unique key freed, and counted as cancelled.
    Cancel,
}

/// Side effects carried out in the same atomic step as a [`Transition`], and only if the lease
/// was still valid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Effects {
    /// Jobs to store (the next step of a chain, a callback), each as a push would. A job whose id
    /// already exists is left as it is.
    pub enqueue: Vec<NewJob>,
}

/// One token-checked transition of a claimed job with its side effects: the single entry point
/// through which every attempt is settled ([`crate::Driver::settle`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settle {
    /// The claim being settled.
    pub lease: Lease,
    /// How the attempt ended.
    pub transition: Transition,
    /// What else happens in the same atomic step.
    pub effects: Effects,
    /// Its place in a worker's settle writer, set when queued there (see [`SettleMark`]).
    pub mark: Option<SettleMark>,
}

/// A settle's place in the order of a worker's settle writer: a driver that counts a worker's
/// settling jobs by marks ([`Settling::marks`]) records, in every step that settles a marked
/// job, that the writer's settles up to `seq` are written.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SettleMark {
    /// The writer, unique per worker run.
    pub writer: Arc<str>,
    /// Numbered from 1 in the order the writer takes its settles, so that the settles a step
    /// writes are never numbered above those still waiting.
    pub seq: i64,
}

impl SettleMark {
    /// Settle number `seq` of `writer`.
    pub fn new(writer: Arc<str>, seq: i64) -> Self {
        Self { writer, seq }
    }
}

impl Settle {
    /// Settles `lease` with `transition` and no side effects.
    pub fn new(lease: Lease, transition: Transition) -> Self {
        Self { lease, transition, effects: Effects::default(), mark: None }
    }

    /// This settle with its place in a settle writer's order.
    #[must_use]
    pub fn marked(mut self, mark: SettleMark) -> Self {
        self.mark = Some(mark);
        self
    }

    /// Completes the job.
    pub fn complete(lease: Lease) -> Self {
        Self::new(lease, Transition::Complete)
    }

    /// Schedules the next attempt at `run_at`.
    pub fn retry(lease: Lease, run_at: Millis, error: impl Into<String>) -> Self {
        Self::new(lease, Transition::Retry { run_at, error: error.into() })
    }

    /// Ends a cancelled job.
    pub fn cancel(lease: Lease) -> Self {
        Self::new(lease, Transition::Cancel)
    }

    /// Moves the job to the failed set.
    pub fn fail(lease: Lease, error: impl Into<String>) -> Self {
        Self::new(lease, Transition::Fail { error: error.into() })
    }

    /// Hands the job back, claimable at `run_at`, without counting the attempt.
    pub fn release(lease: Lease, run_at: Millis) -> Self {
        Self::new(lease, Transition::Release { run_at })
    }

    /// Also stores `jobs` in the same atomic step.
    #[must_use]
    pub fn enqueue(mut self, jobs: impl IntoIterator<Item = NewJob>) -> Self {
        self.effects.enqueue.extend(jobs);
        self
    }
}

/// Where a job is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum JobState {
    /// Ready to be claimed (or due: a delayed job whose time has come counts as pending).
    Pending,
    /// Waiting for its delay or retry backoff.
    Delayed,
    /// Held by a worker under a lease.
    Reserved,
    /// In the failed set.
    Failed,
}

impl JobState {
    /// The state's lowercase name, as the CLI prints and parses it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delayed => "delayed",
            Self::Reserved => "reserved",
            Self::Failed => "failed",
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One job as the admin surface shows it ([`crate::Admin::get`], [`crate::Admin::list`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobInfo {
    /// The stored job as dispatched (`available_at` is its current due time for a pending or
    /// delayed job).
    pub job: NewJob,
    /// Where it is.
    pub state: JobState,
    /// Attempts started so far.
    pub attempts: u32,
    /// The last attempt's error, or the failure reason of a failed job.
    pub last_error: Option<String>,
    /// When the current lease runs out (reserved jobs).
    pub lease_expires_at: Option<Millis>,
    /// When it failed (failed jobs).
    pub failed_at: Option<Millis>,
    /// The last progress a running job reported (JSON), if any.
    pub progress: Option<String>,
    /// A cancel was asked for while the job runs; its worker stops it.
    pub cancel_requested: bool,
    /// The errors of its failed attempts, oldest first (at most [`MAX_ERROR_HISTORY`], the
    /// latest kept).
    pub errors: Vec<String>,
}

impl JobInfo {
    /// A job in `state` after `attempts` attempts.
    pub fn new(job: NewJob, state: JobState, attempts: u32) -> Self {
        Self {
            job,
            state,
            attempts,
            last_error: None,
            lease_expires_at: None,
            failed_at: None,
            progress: None,
            cancel_requested: false,
            errors: Vec::new(),
        }
    }
}

/// What [`crate::Admin::cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelOutcome {
    /// The job was pending or delayed: it is deleted, its unique key freed, counted as cancelled.
    Removed,
    /// The job is running: its worker is asked to stop it (within a second) and it then ends as
    /// cancelled.
    Requested,
}

/// A running job's periodic report to the backend ([`crate::Driver::touch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Touch {
    /// The claim.
    pub lease: Lease,
    /// New progress (JSON) to store, if it changed since the last report.
    pub progress: Option<String>,
}

impl Touch {
    /// A report on `lease`, with new progress if any.
    pub fn new(lease: Lease, progress: Option<String>) -> Self {
        Self { lease, progress }
    }
}

/// A rate limit: at most `limit` starts in any window of `period_ms`, wherever it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RateLimit {
    /// Starts allowed per window.
    pub limit: u32,
    /// The window, in milliseconds.
    pub period_ms: u64,
}

impl RateLimit {
    /// At most `limit` starts per `period_ms` milliseconds.
    pub fn new(limit: u32, period_ms: u64) -> Self {
        Self { limit, period_ms }
    }
}

/// A queue's limits across every worker, kept in the backend and enforced inside the claim.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct QueueLimits {
    /// At most this many of the queue's jobs run at once (reserved), across all workers.
    pub concurrency: Option<u32>,
    /// At most this many starts (claims) per window.
    pub rate: Option<RateLimit>,
}

impl QueueLimits {
    /// No limits.
    pub fn none() -> Self {
        Self::default()
    }

    /// With a concurrency limit.
    #[must_use]
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = Some(n);
        self
    }

    /// With a rate limit.
    #[must_use]
    pub fn rate(mut self, rate: RateLimit) -> Self {
        self.rate = Some(rate);
        self
    }
}

/// A page of one queue's live jobs in one state ([`crate::Admin::list`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListRequest {
    /// The queue.
    pub queue: String,
    /// Pending (in claim order), delayed (by due time) or reserved (by lease deadline). Failed
    /// jobs are listed by [`crate::Admin::failed`].
    pub state: JobState,
    /// Jobs to skip.
    pub offset: u64,
    /// Most jobs to return (a driver may cap it at [`MAX_PAGE`]).
    pub limit: usize,
}

impl ListRequest {
    /// The first `limit` jobs of `queue` in `state`.
    pub fn new(queue: impl Into<String>, state: JobState, limit: usize) -> Self {
        Self { queue: queue.into(), state, offset: 0, limit }
    }

    /// Skips the first `offset` jobs.
    #[must_use]
    pub fn offset(mut self, offset: u64) -> Self {
        self.offset = offset;
        self
    }
}

/// A page of the failed set ([`crate::Admin::failed`]), oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailedQuery {
    /// One queue only, or every queue.
    pub queue: Option<String>,
    /// Failed jobs to skip.
    pub offset: u64,
    /// Most failed jobs to return (a driver may cap it at [`MAX_PAGE`]).
    pub limit: usize,
}

impl FailedQuery {
    /// The oldest `limit` failed jobs of every queue.
    pub fn new(limit: usize) -> Self {
        Self { queue: None, offset: 0, limit }
    }

    /// Of one queue only.
    #[must_use]
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Skips the first `offset` failed jobs.
    #[must_use]
    pub fn offset(mut self, offset: u64) -> Self {
        self.offset = offset;
        self
    }
}

/// The largest page an admin call returns, whatever the caller asked for.
pub const MAX_PAGE: usize = 1_000;

/// A job in the failed set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FailedJob {
    /// The job's id (kept from dispatch).
    pub id: String,
    /// Its queue.
    pub queue: String,
    /// Its registry name.
    pub name: String,
    /// Its JSON payload.
    pub payload: String,
    /// Attempts made.
    pub attempts: u32,
    /// Why it failed.
    pub error: String,
    /// When it failed.
    pub failed_at: Millis,
}

impl FailedJob {
    /// The failed-set entry of `job` after `attempts` attempts.
    pub fn new(job: &NewJob, attempts: u32, error: impl Into<String>, failed_at: Millis) -> Self {
        Self {
            id: job.id.clone(),
            queue: job.queue.clone(),
            name: job.name.clone(),
            payload: job.payload.clone(),
            attempts,
            error: error.into(),
            failed_at,
        }
    }
}

/// The counters of one queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct QueueStats {
    /// The queue's name.
    pub queue: String,
    /// Ready jobs (available now).
    pub pending: u64,
    /// Jobs waiting for their delay or retry backoff.
    pub delayed: u64,
    /// Jobs held by a worker.
    pub reserved: u64,
    /// Jobs in the failed set now.
    pub failed: u64,
    /// Jobs completed since the queue was created.
    pub processed: u64,
    /// Jobs moved to the failed set since the queue was created.
    pub failed_total: u64,
    /// Whether workers skip the queue ([`crate::Admin::set_paused`]).
    pub paused: bool,
    /// Jobs cancelled since the queue was created.
    pub cancelled: u64,
    /// The queue's limits ([`crate::Admin::set_limits`]).
    pub limits: QueueLimits,
    /// How long the oldest due pending job has been waiting (`now` minus the time it became
    /// due), in milliseconds; `None` when no job is due. A delayed job does not count.
    pub latency_ms: Option<u64>,
}

impl QueueStats {
    /// All-zero counters of `queue`.
    pub fn new(queue: impl Into<String>) -> Self {
        Self { queue: queue.into(), ..Self::default() }
    }
}

/// What a driver supports, so callers can choose instead of being silently weakened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Capabilities {
    /// Jobs survive a restart of the process (and of the backend, as configured).
    pub durable: bool,
    /// Several processes share the queues.
    pub shared: bool,
    /// One atomic step can touch jobs of different queues (a settle whose effects enqueue on
    /// another queue, a batch across queues). False on a Redis Cluster, whose queues live on
    /// different nodes; such a call returns [`crate::Error::Unsupported`] there.
    pub cross_queue_atomic: bool,
    /// The most jobs one push stores in a single atomic step; `None` for no limit. A larger
    /// push is stored in steps of this size (see the driver's documentation).
    pub atomic_push_limit: Option<usize>,
    /// The backend has a clock of its own ([`crate::Driver::server_time`]), against which worker
    /// clocks are checked for skew.
    pub server_clock: bool,
}

/// A batch as dispatched ([`crate::Driver::push_batch`]): its id and its callbacks. The children
/// are pushed with it, each naming the batch in [`NewJob::batch`].
///
/// # Counting rules (every driver, in the atomic step of each child's terminal transition)
/// - A child that completes counts as processed; one that fails for good (a `Fail` settle, or a
///   crash on its last attempt found by recovery) as failed; one cancelled (running, or removed
///   while pending or delayed by [`crate::Admin::cancel`], [`crate::Admin::clear`] or a batch
///   cancel) as cancelled. Each decrements `pending`.
/// - The first failure dispatches `catch` and, unless `allow_failures`, cancels the batch.
/// - When `pending` reaches 0 the batch finishes: `then` is dispatched if every child completed
///   (none failed or was cancelled), `finally` in every case; a callback not dispatched is
///   skipped. Each callback is dispatched at most once, in the same step that decided it.
/// - A child moved back from the failed set ([`crate::Admin::retry_failed`]) leaves its batch:
///   it was already counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NewBatch {
    /// The batch id (a ULID).
    pub id: String,
    /// Dispatched when every child completed.
    pub then: Option<NewJob>,
    /// Dispatched at the first child failing for good.
    pub catch: Option<NewJob>,
    /// Dispatched when every child finished, however.
    pub finally: Option<NewJob>,
    /// A failed child does not cancel the others.
    pub allow_failures: bool,
    /// When the batch was dispatched.
    pub created_at: Millis,
}

impl NewBatch {
    /// A batch `id` without callbacks, created at `now`.
    pub fn new(id: impl Into<String>, now: Millis) -> Self {
        Self { id: id.into(), created_at: now, ..Self::default() }
    }
}

/// Where a batch callback is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum CallbackState {
    /// Its condition has not been decided yet.
    Waiting,
    /// It was dispatched (once).
    Dispatched,
    /// The batch ended without its condition holding; it will never be dispatched.
    Skipped,
}

/// One callback of a batch, as [`BatchInfo`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BatchCallback {
    /// The callback job's id (fixed when the batch was dispatched).
    pub id: String,
    /// Its registry name.
    pub name: String,
    /// Its queue.
    pub queue: String,
    /// Whether it was dispatched.
    pub state: CallbackState,
}

impl BatchCallback {
    /// The callback `job` in `state`.
    pub fn new(job: &NewJob, state: CallbackState) -> Self {
        Self { id: job.id.clone(), name: job.name.clone(), queue: job.queue.clone(), state }
    }
}

/// A batch's counters and callbacks ([`crate::Admin::batch`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BatchInfo {
    /// The batch id.
    pub id: String,
    /// Children stored (a child refused as a duplicate does not count).
    pub total: u64,
    /// Children not finished yet.
    pub pending: u64,
    /// Children completed.
    pub processed: u64,
    /// Children failed for good.
    pub failed: u64,
    /// Children cancelled.
    pub cancelled: u64,
    /// A failed child does not cancel the others.
    pub allow_failures: bool,
    /// When the batch was dispatched.
    pub created_at: Millis,
    /// When it was cancelled (by [`crate::Admin::cancel_batch`] or its first failure), if it was.
    pub cancelled_at: Option<Millis>,
    /// When its last child finished.
    pub finished_at: Option<Millis>,
    /// The `then` callback.
    pub then: Option<BatchCallback>,
    /// The `catch` callback.
    pub catch: Option<BatchCallback>,
    /// The `finally` callback.
    pub finally: Option<BatchCallback>,
}

impl BatchInfo {
    /// A batch `id` with all-zero counters.
    pub fn new(id: impl Into<String>) -> Self {
        Self { id: id.into(), ..Self::default() }
    }
}

/// A schedule's state in the backend ([`crate::Admin::schedules`]). The definition (cron
/// expression, job, policy) is kept by orcs-core as JSON; drivers store it as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ScheduleRecord {
    /// The schedule's name, unique per backend.
    pub name: String,
    /// The queue its jobs go to.
    pub queue: String,
    /// The definition as orcs-core wrote it (JSON).
    pub definition: String,
    /// Every slot at or before this time is done (dispatched or skipped): the durable state that
    /// makes each slot fire once. Set to the registration time when the schedule is new.
    pub cursor: Millis,
    /// The latest slot that dispatched a job.
    pub last_run: Option<Millis>,
    /// The next slot after the cursor, as the last scheduler to fire computed it.
    pub next_run: Option<Millis>,
    /// When the definition was last registered.
    pub updated_at: Millis,
}

impl ScheduleRecord {
    /// A new schedule `name` on `queue`, its cursor at `now`.
    pub fn new(
        name: impl Into<String>,
        queue: impl Into<String>,
        definition: impl Into<String>,
        now: Millis,
    ) -> Self {
        Self {
            name: name.into(),
            queue: queue.into(),
            definition: definition.into(),
            cursor: now,
            last_run: None,
            next_run: None,
            updated_at: now,
        }
    }
}

/// One firing of a schedule ([`crate::Driver::fire_schedule`]): a compare-and-set of its cursor
/// with the push of the slots' jobs, in one atomic step.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Fire {
    /// The schedule.
    pub name: String,
    /// The cursor the scheduler read; the fire does nothing unless it is still the stored one.
    pub expected_cursor: Millis,
    /// The new cursor (the latest slot handled).
    pub cursor: Millis,
    /// The latest slot that dispatches a job, if any does.
    pub last_run: Option<Millis>,
    /// The next slot after the new cursor.
    pub next_run: Option<Millis>,
    /// The jobs to push (none when every slot was skipped). A job whose id exists is left as it is.
    pub jobs: Vec<NewJob>,
}

impl Fire {
    /// Moves `name`'s cursor from `expected_cursor` to `cursor`, pushing `jobs`.
    pub fn new(
        name: impl Into<String>,
        expected_cursor: Millis,
        cursor: Millis,
        jobs: Vec<NewJob>,
    ) -> Self {
        Self { name: name.into(), expected_cursor, cursor, last_run: None, next_run: None, jobs }
    }
}

/// The most attempt errors a job keeps ([`JobInfo::errors`]).
pub const MAX_ERROR_HISTORY: usize = 10;

/// A live worker process, as it reports itself in each heartbeat ([`crate::Admin::heartbeat`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// Unique per worker run (a ULID).
    pub id: String,
    /// The host name.
    pub host: String,
    /// The process id.
    pub pid: u32,
    /// The queues it works, in order.
    pub queues: Vec<String>,
    /// Jobs it runs at once at most.
    pub concurrency: u32,
    /// The ids of the jobs it runs now.
    pub running: Vec<String>,
    /// When it started.
    pub started_at: Millis,
    /// When it last reported (set by the backend call from `now`).
    pub last_heartbeat: Millis,
}

impl WorkerInfo {
    /// A worker `id` on `host`/`pid`, started at `started_at`.
    pub fn new(
        id: impl Into<String>,
        host: impl Into<String>,
        pid: u32,
        started_at: Millis,
    ) -> Self {
        Self {
            id: id.into(),
            host: host.into(),
            pid,
            started_at,
            last_heartbeat: started_at,
            ..Self::default()
        }
    }
}

/// Jobs that ended on one queue since a worker's previous heartbeat: added to the backend's
/// per-minute throughput history ([`crate::Admin::throughput`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Throughput {
    /// The queue (empty in an answer of [`crate::Admin::throughput`] over every queue).
    pub queue: String,
    /// The minute (ms since the epoch, a multiple of 60,000), in answers.
    pub minute: Millis,
    /// Jobs completed.
    pub processed: u64,
    /// Jobs failed for good.
    pub failed: u64,
}

impl Throughput {
    /// `processed` and `failed` jobs of `queue`.
    pub fn new(queue: impl Into<String>, processed: u64, failed: u64) -> Self {
        Self { queue: queue.into(), minute: 0, processed, failed }
    }
}

/// How long the per-minute throughput history is kept: 24 hours of buckets.
pub const THROUGHPUT_HORIZON_MS: i64 = 24 * 60 * 60 * 1000;

/// Which failed jobs [`crate::Admin::prune_failed`] deletes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Prune {
    /// One queue only, or every queue.
    pub queue: Option<String>,
    /// Deletes failed jobs that failed before this time.
    pub failed_before: Option<Millis>,
    /// Keeps at most this many failed jobs (the newest), deleting the older ones.
    pub keep: Option<u64>,
}

impl Prune {
    /// Prunes nothing until a rule is set.
    pub fn new() -> Self {
        Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_marks_name_each_settle_once() {
        let marks = SettlingMarks::new(Arc::from("w"), vec![(9, 5), (3, 7), (9, 5), (4, 1)]);
        assert_eq!(marks.sorted().marks, [(3, 7), (4, 1), (9, 5)]);
    }
}
