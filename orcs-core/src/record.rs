//! Storage-neutral job records: what a driver stores and hands back. Drivers never see user job types.

use serde::{Deserialize, Serialize};

use crate::clock::Millis;

/// A job as dispatched, ready to be stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// A claimed job, as a worker receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl JobRecord {
    /// The number of attempts the job gets in all.
    pub fn max_attempts(&self) -> u32 {
        self.max_retries.saturating_add(1)
    }
}

/// Proof of a claim: every later transition of the job names it, and a stale one is rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// A job handed to a worker with its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved {
    /// The job.
    pub record: JobRecord,
    /// The claim.
    pub lease: Lease,
}

/// What a worker asks for when it claims jobs.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    /// Queues in strict order: jobs come from the first non-empty queue first.
    pub queues: &'a [String],
    /// At most this many jobs.
    pub max: usize,
    /// The current time.
    pub now: Millis,
    /// Lease length for jobs without their own timeout (their timeout is the worker's default).
    pub default_timeout_ms: u64,
    /// Added to the timeout to make the lease, so the worker's own timeout fires first.
    pub grace_ms: u64,
}

impl ClaimRequest<'_> {
    /// The lease deadline of a job claimed now with the given own timeout.
    pub fn lease_until(&self, timeout_ms: Option<u64>) -> Millis {
        let length = timeout_ms.unwrap_or(self.default_timeout_ms).saturating_add(self.grace_ms);
        self.now.saturating_add(i64::try_from(length).unwrap_or(i64::MAX))
    }
}

/// The answer to a claim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claim {
    /// The claimed jobs, best first.
    pub jobs: Vec<Reserved>,
    /// When the next delayed job of the claimed queues becomes due, if any is waiting, so an idle
    /// worker can wake up for it instead of polling.
    pub next_due: Option<Millis>,
}

/// A job in the failed set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// The counters of one queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
}
