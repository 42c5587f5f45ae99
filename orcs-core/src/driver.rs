//! The storage contract every backend implements: the hot path ([`Driver`]) and the admin
//! surface ([`Admin`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::clock::Millis;
use crate::error::Result;
use crate::record::{
    BatchInfo, CancelOutcome, Capabilities, Claim, ClaimRequest, FailedJob, FailedQuery, Fire,
    JobInfo, Lease, ListRequest, NewBatch, NewJob, Prune, PushOutcome, QueueLimits, QueueStats,
    ScheduleRecord, Settle, Throughput, Touch, WorkerInfo,
};

/// A driver chosen at run time (the `orcs` command picks one from its configuration).
pub type BoxDriver = Arc<dyn Driver>;

/// A queue backend's hot path: stores job records and moves them through their lifecycle.
///
/// The trait is `#[async_trait]` so that it works both generically and as `Arc<dyn Driver>`; the
/// allocation per call is negligible next to a network round trip. Every method takes the current
/// time from its caller, so the clock is injectable and a driver never reads one. A driver deals
/// only in storage-neutral records; typed jobs live in orcs-core.
///
/// # Guarantees (every driver)
/// - Claims are atomic: no two claims hold the same job at once; each claim gets a new token. A
///   claim never returns more jobs than asked for, and skips paused queues.
/// - Among ready jobs of a queue, higher priority first, then dispatch order (the id's order).
/// - Every transition of a claimed job goes through [`Driver::settle`], naming its [`Lease`]; a
///   lease that expired and was claimed again (or a job that is gone) yields
///   [`crate::Error::LeaseLost`] and changes nothing, side effects included, so each job
///   completes at most once per dispatch and at least once in all.
/// - A job whose lease ran out becomes claimable again through [`Driver::recover`]; its attempt is
///   counted.
///
/// The conformance suite in `orcs-tests` is the executable form of this contract.
///
/// # Cancel safety
/// A cancelled call may or may not have taken effect; it never takes effect halfway (each call, or
/// each settle of a batch, is one atomic step in the backend).
#[async_trait]
pub trait Driver: Admin + fmt::Debug + 'static {
    /// The driver's short name (`memory`, `redis`, `database`).
    fn name(&self) -> &'static str;

    /// What this driver supports.
    fn capabilities(&self) -> Capabilities;

    /// Stores jobs; the answer has one outcome per job, in order. A job whose id already exists
    /// (in any state, the failed set included, or earlier in the same push) is reported as
    /// [`PushOutcome::Duplicate`] and changes nothing; so is a job whose unique key is held by
    /// another job of its queue (the answer names the holder). A `Period` key whose time is up
    /// is free. A debounced job ([`Unique::debounce`](crate::Unique::debounce)) whose key is
    /// held by a job still waiting (ready or delayed) gives that job its payload and
    /// `available_at` in the same atomic step, moving it between ready and delayed as the new
    /// time says, and is reported as [`PushOutcome::Replaced`]; a later job of the push replaces
    /// an earlier one's data.
    ///
    /// # Errors
    /// A backend error; then none of the jobs was stored. (A push larger than
    /// [`Capabilities::atomic_push_limit`] is stored in steps; see the driver's documentation.)
    async fn push(&self, jobs: Vec<NewJob>) -> Result<Vec<PushOutcome>>;

    /// Claims up to `req.max` ready jobs from the queues in order, giving each a lease.
    ///
    /// Due delayed jobs are promoted first, in claim order (priority, then id), so a promotion
    /// never lets a lower-priority job overtake a higher one. Inside the same atomic step, paused
    /// queues are skipped, a queue's concurrency limit counts its reserved jobs and its rate
    /// limit the starts in the last window (each claimed job is a start), and a claimed job's
    /// `Started` unique key frees. The answer also tells when the next delayed job is due or a
    /// rate window reopens.
    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim>;

    /// Settles claimed jobs: one result per [`Settle`], in order. Each settle is one atomic step
    /// that checks the lease's token, applies the transition and carries out its effects, or
    /// changes nothing.
    ///
    /// The worker batches attempts that end together through this call; a backend should do the
    /// batch in as few round trips as it can.
    ///
    /// # Errors (per item)
    /// [`crate::Error::LeaseLost`] if the lease is stale; [`crate::Error::Unsupported`] if the
    /// effects cannot be made atomic on this backend (another queue on a Redis Cluster).
    async fn settle(&self, batch: &[Settle], now: Millis) -> Vec<Result<()>>;

    /// Settles one claimed job; see [`Driver::settle`].
    ///
    /// # Errors
    /// As [`Driver::settle`].
    async fn settle_one(&self, settle: Settle, now: Millis) -> Result<()> {
        let mut results = self.settle(std::slice::from_ref(&settle), now).await;
        results.pop().unwrap_or_else(|| {
            Err(crate::Error::invalid("settle", "the driver returned no result; this is a bug"))
        })
    }

    /// Reports on running jobs: stores the progress each one reported (token-checked; a stale
    /// lease is skipped) and answers the ids, among them, whose cancel was asked for. A worker
    /// calls it about twice a second while it runs jobs.
    async fn touch(&self, running: &[Touch], now: Millis) -> Result<Vec<String>>;

    /// Moves a lease's deadline to `until` and returns the new lease.
    ///
    /// # Errors
    /// [`crate::Error::LeaseLost`] if the lease's token is no longer the job's (it was recovered
    /// and claimed again, or the job is gone). An expired lease whose job was not claimed again
    /// is still extended: only the token decides.
    async fn extend(&self, lease: &Lease, until: Millis, now: Millis) -> Result<Lease>;

    /// Makes jobs whose lease expired at or before `now` claimable again, re-checking each expiry
    /// atomically; returns how many.
    async fn recover(&self, queues: &[String], now: Millis) -> Result<u64>;

    /// Waits until a job may have become ready on one of `queues` (a dispatch woke it) or until
    /// `timeout` passed. May return early; callers claim again either way.
    async fn wait(&self, queues: &[String], now: Millis, timeout: Duration) -> Result<()>;

    /// Readies the backend for a worker about to claim from `queues`, so that its first jobs
    /// do not pay the backend's own start-up (PostgreSQL: connections opened and the statements
    /// of a job's path parsed and planned on each). Changes no job. Best effort: the worker
    /// logs a failure and goes on, and its first claim reports an outage.
    async fn warm(&self, queues: &[String]) -> Result<()> {
        let _ = queues;
        Ok(())
    }

    /// The backend's own clock (Redis `TIME`, PostgreSQL `now()`), for measuring this machine's
    /// skew against it; `None` for a backend without one (memory, SQLite).
    async fn server_time(&self) -> Result<Option<Millis>> {
        Ok(None)
    }

    /// Stores a batch and its children (each naming it in [`NewJob::batch`]) in one atomic step;
    /// the answer has one outcome per child, as [`Driver::push`]'s. A child refused as a
    /// duplicate is not part of the batch. A batch left with no child finishes at once (its
    /// `then` and `finally` are dispatched in the same step). See [`NewBatch`] for how children
    /// are counted.
    ///
    /// # Errors
    /// [`crate::Error::Invalid`] if a batch with this id exists or a child names another batch;
    /// [`crate::Error::Unsupported`] where the batch cannot be atomic (children or callbacks on
    /// several queues of a Redis Cluster); a backend error, then nothing was stored.
    async fn push_batch(&self, batch: NewBatch, children: Vec<NewJob>) -> Result<Vec<PushOutcome>> {
        let _ = (batch, children);
        Err(crate::Error::unsupported(self.name(), "batches (upgrade the driver crate)"))
    }

    /// Fires a schedule: if its stored cursor is still `fire.expected_cursor`, moves it to
    /// `fire.cursor`, records `last_run` and `next_run`, and pushes `fire.jobs`, all in one atomic
    /// step, and answers `true`; otherwise (another scheduler fired first) changes nothing and
    /// answers `false`. This compare-and-set is what makes each slot fire once across any number
    /// of schedulers.
    ///
    /// # Errors
    /// [`crate::Error::NotFound`] if the schedule was never registered; a backend error.
    async fn fire_schedule(&self, fire: &Fire, now: Millis) -> Result<bool> {
        let _ = (fire, now);
        Err(crate::Error::unsupported(self.name(), "schedules (upgrade the driver crate)"))
    }
}

/// The admin surface: looking at queues and managing them. Every call is bounded in cost by its
/// page (or is a single-key operation), so it is safe on a queue of millions.
#[async_trait]
pub trait Admin: Send + Sync {
    /// The counters of one queue at `now`.
    async fn stats(&self, queue: &str, now: Millis) -> Result<QueueStats>;

    /// The names of the queues that hold or held jobs (or were paused), sorted.
    async fn queues(&self) -> Result<Vec<String>>;

    /// One job by id, in whatever state it is; `None` if no such job exists (it completed, was
    /// forgotten or never existed).
    async fn get(&self, id: &str, now: Millis) -> Result<Option<JobInfo>>;

    /// A page of one queue's pending, delayed or reserved jobs, in claim, due or lease order.
    ///
    /// # Errors
    /// [`crate::Error::Invalid`] for [`crate::JobState::Failed`]: use [`Admin::failed`].
    async fn list(&self, req: &ListRequest, now: Millis) -> Result<Vec<JobInfo>>;

    /// Removes a queue's pending and delayed jobs; returns how many.
    async fn clear(&self, queue: &str, now: Millis) -> Result<u64>;

    /// A page of the failed set, oldest first.
    async fn failed(&self, query: &FailedQuery) -> Result<Vec<FailedJob>>;

    /// Moves a failed job back to its queue with fresh attempts, ready at `now`.
    ///
    /// # Errors
    /// [`crate::Error::NotFound`] if no failed job has this id (also when another caller retried
    /// it at the same moment: exactly one of them succeeds).
    async fn retry_failed(&self, id: &str, now: Millis) -> Result<()>;

    /// Deletes one failed job.
    ///
    /// # Errors
    /// [`crate::Error::NotFound`] if no failed job has this id.
    async fn forget_failed(&self, id: &str) -> Result<()>;

    /// Deletes every failed job; returns how many.
    async fn flush_failed(&self) -> Result<u64>;

    /// Pauses or resumes a queue. The flag is kept in the backend's per-queue metadata; every
    /// worker honours it from its next claim. Resuming wakes idle workers.
    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()>;

    /// Sets (or, with [`QueueLimits::none`], clears) a queue's limits, kept in its metadata and
    /// enforced by every claim from the next on.
    async fn set_limits(&self, queue: &str, limits: &QueueLimits) -> Result<()>;

    /// Cancels a job: a pending or delayed one is deleted ([`CancelOutcome::Removed`]); a running
    /// one is marked so that its worker stops it ([`CancelOutcome::Requested`]).
    ///
    /// # Errors
    /// [`crate::Error::NotFound`] if no pending, delayed or running job has this id.
    async fn cancel(&self, id: &str, now: Millis) -> Result<CancelOutcome>;

    /// Forgets an empty, idle queue: in one atomic step, if the queue holds no pending, delayed,
    /// reserved or failed job, removes its counters, its metadata (paused, limits, the rate
    /// limit's start log, the unique keys it still holds, `Period` ones included) and its entry
    /// in [`Admin::queues`], and answers `true` (also for a queue the backend never knew);
    /// otherwise changes nothing and answers `false`. A later dispatch to the queue creates it
    /// again from zero.
    async fn forget_queue(&self, queue: &str) -> Result<bool>;

    /// One batch's counters and callbacks; `None` if no such batch exists.
    async fn batch(&self, id: &str) -> Result<Option<BatchInfo>> {
        let _ = id;
        Err(crate::Error::unsupported("configured", "batches (upgrade the driver crate)"))
    }

    /// Cancels a batch in one atomic step: its pending and delayed children are removed (counted
    /// as cancelled), its running ones are asked to stop (as [`Admin::cancel`] does), and no
    /// `then` will be dispatched. Cancelling a cancelled or finished batch changes nothing.
    ///
    /// # Errors
    /// [`crate::Error::NotFound`] if no batch has this id.
    async fn cancel_batch(&self, id: &str, now: Millis) -> Result<BatchInfo> {
        let _ = (id, now);
        Err(crate::Error::unsupported("configured", "batches (upgrade the driver crate)"))
    }

    /// Registers a schedule: creates `record` if no schedule has its name; otherwise replaces
    /// the stored queue and definition and `updated_at`, keeping the cursor, so an edited
    /// schedule takes effect at its next slot and registering the same one again changes
    /// nothing that matters. Answers the stored record.
    async fn register_schedule(&self, record: &ScheduleRecord) -> Result<ScheduleRecord> {
        let _ = record;
        Err(crate::Error::unsupported("configured", "schedules (upgrade the driver crate)"))
    }

    /// Every registered schedule, sorted by name.
    async fn schedules(&self) -> Result<Vec<ScheduleRecord>> {
        Err(crate::Error::unsupported("configured", "schedules (upgrade the driver crate)"))
    }

    /// Removes a schedule's state; answers whether it existed.
    async fn forget_schedule(&self, name: &str) -> Result<bool> {
        let _ = name;
        Err(crate::Error::unsupported("configured", "schedules (upgrade the driver crate)"))
    }

    /// A worker's heartbeat: stores `worker` (its `last_heartbeat` set to `now`) so that it is
    /// listed until `now + ttl_ms`, and adds `ended` to the current minute's throughput history
    /// (buckets older than [`crate::record::THROUGHPUT_HORIZON_MS`] are dropped). Constant cost.
    async fn heartbeat(
        &self,
        worker: &WorkerInfo,
        ended: &[Throughput],
        ttl_ms: u64,
        now: Millis,
    ) -> Result<()> {
        let _ = (worker, ended, ttl_ms, now);
        Err(crate::Error::unsupported("configured", "worker heartbeats (upgrade the driver crate)"))
    }

    /// The workers whose last heartbeat has not expired at `now`, by start time; expired ones are
    /// removed as a side effect (a worker killed with SIGKILL drops out by itself).
    async fn workers(&self, now: Millis) -> Result<Vec<WorkerInfo>> {
        let _ = now;
        Err(crate::Error::unsupported("configured", "worker heartbeats (upgrade the driver crate)"))
    }

    /// Removes a worker's entry (a clean shutdown); answers whether it was there.
    async fn forget_worker(&self, id: &str) -> Result<bool> {
        let _ = id;
        Err(crate::Error::unsupported("configured", "worker heartbeats (upgrade the driver crate)"))
    }

    /// The throughput history since `since` (at most the horizon), one entry per minute that
    /// saw jobs end, oldest first; of one queue or summed over every queue.
    async fn throughput(&self, queue: Option<&str>, since: Millis) -> Result<Vec<Throughput>> {
        let _ = (queue, since);
        Err(crate::Error::unsupported(
            "configured",
            "throughput history (upgrade the driver crate)",
        ))
    }

    /// Deletes failed jobs by age and count ([`Prune`]); returns how many. Cost bounded by the
    /// jobs deleted.
    async fn prune_failed(&self, prune: &Prune) -> Result<u64> {
        let _ = prune;
        Err(crate::Error::unsupported("configured", "pruning (upgrade the driver crate)"))
    }
}
