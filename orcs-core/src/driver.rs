//! The storage contract every backend implements.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::clock::Millis;
use crate::error::Result;
use crate::record::{Claim, ClaimRequest, FailedJob, Lease, NewJob, QueueStats};

/// A driver chosen at run time (`QUEUE_DRIVER`).
pub type BoxDriver = Arc<dyn Driver>;

/// A queue backend: stores job records and moves them through their lifecycle.
///
/// The trait is `#[async_trait]` so that it works both generically and as `Arc<dyn Driver>`; the
/// allocation per call is negligible next to a network round trip. Every method takes the current
/// time from its caller, so the clock is injectable. A driver deals only in storage-neutral
/// records; typed jobs live in orcs-core.
///
/// # Guarantees (every driver)
/// - Claims are atomic: no two claims hold the same job at once; each claim gets a new token.
/// - Among ready jobs of a queue, higher priority first, then dispatch order (the id's order).
/// - Transitions of a claimed job name its [`Lease`]; a lease that expired and was claimed again
///   (or a job that is gone) yields [`crate::Error::LeaseLost`] and changes nothing, so each job
///   completes at most once per dispatch and at least once in all.
/// - A job whose lease ran out becomes claimable again through [`Driver::recover`]; its attempt is
///   counted.
///
/// The conformance suite in `orcs-tests` is the executable form of this contract.
///
/// # Cancel safety
/// A cancelled call may or may not have taken effect; it never takes effect halfway (each call is
/// one atomic step in the backend).
#[async_trait]
pub trait Driver: Send + Sync + fmt::Debug + 'static {
    /// The driver's short name (`memory`, `redis`, `database`).
    fn name(&self) -> &'static str;

    /// Stores jobs, all or none.
    ///
    /// # Errors
    /// A backend error; then none of the jobs was stored.
    async fn push(&self, jobs: Vec<NewJob>) -> Result<()>;

    /// Claims up to `req.max` ready jobs from the queues in order, giving each a lease.
    ///
    /// Due delayed jobs are promoted first. The answer also tells when the next delayed job is due.
    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim>;

    /// Marks a claimed job done and removes it; counts it as processed.
    ///
    /// # Errors
    /// [`crate::Error::LeaseLost`] if the lease is stale.
    async fn complete(&self, lease: &Lease, now: Millis) -> Result<()>;

    /// Completes several claimed jobs, one result per lease in the same order, each as
    /// [`Driver::complete`] would give it. The worker batches jobs that finish together through
    /// this call; a backend that can do them in one round trip should override it. The default
    /// completes them one by one, concurrently.
    async fn complete_many(&self, leases: &[Lease], now: Millis) -> Vec<Result<()>> {
        futures_util::future::join_all(leases.iter().map(|lease| self.complete(lease, now))).await
    }

    /// Schedules a claimed job's next attempt at `run_at`, recording `error`.
    ///
    /// # Errors
    /// [`crate::Error::LeaseLost`] if the lease is stale.
    async fn retry(&self, lease: &Lease, run_at: Millis, error: &str, now: Millis) -> Result<()>;

    /// Moves a claimed job to the failed set with `error`.
    ///
    /// # Errors
    /// [`crate::Error::LeaseLost`] if the lease is stale.
    async fn fail(&self, lease: &Lease, error: &str, now: Millis) -> Result<()>;

    /// Hands a claimed job back unfinished (shutdown): it is claimable at once and the interrupted
    /// attempt is not counted.
    ///
    /// # Errors
    /// [`crate::Error::LeaseLost`] if the lease is stale.
    async fn release(&self, lease: &Lease, now: Millis) -> Result<()>;

    /// Moves a lease's deadline to `until` and returns the new lease.
    ///
    /// # Errors
    /// [`crate::Error::LeaseLost`] if the lease is stale or already expired at `now`.
    async fn extend(&self, lease: &Lease, until: Millis, now: Millis) -> Result<Lease>;

    /// Makes jobs whose lease expired at or before `now` claimable again, re-checking each expiry
    /// atomically; returns how many.
    async fn recover(&self, queues: &[String], now: Millis) -> Result<u64>;

    /// Waits until a job may have become ready on one of `queues` (a dispatch woke it) or until
    /// `timeout` passed. May return early; callers claim again either way.
    async fn wait(&self, queues: &[String], timeout: Duration) -> Result<()>;

    /// The counters of one queue at `now`.
    async fn stats(&self, queue: &str, now: Millis) -> Result<QueueStats>;

    /// The names of the queues that hold or held jobs, sorted.
    async fn queues(&self) -> Result<Vec<String>>;

    /// Removes a queue's pending and delayed jobs; returns how many.
    async fn clear(&self, queue: &str, now: Millis) -> Result<u64>;

    /// The failed set, oldest first, optionally for one queue only.
    async fn failed(&self, queue: Option<&str>) -> Result<Vec<FailedJob>>;

    /// Moves a failed job back to its queue with fresh attempts, ready at `now`.
    ///
    /// # Errors
    /// [`crate::Error::NotFound`] if no failed job has this id.
    async fn retry_failed(&self, id: &str, now: Millis) -> Result<()>;

    /// Deletes one failed job.
    ///
    /// # Errors
    /// [`crate::Error::NotFound`] if no failed job has this id.
    async fn forget_failed(&self, id: &str) -> Result<()>;

    /// Deletes every failed job; returns how many.
    async fn flush_failed(&self) -> Result<u64>;
}
