//! What a worker reports: one [`WorkerEvent`] per finished attempt, a [`WorkerSummary`] at the end.

use std::time::Duration;

use crate::clock::Millis;

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
    /// The job asked to run again at `at` ([`crate::JobError::snooze`]); no attempt was used.
    Snoozed {
        /// When the job becomes claimable again.
        at: Millis,
    },
    /// Cancelled while it ran ([`crate::Queue::cancel`]): deleted, not retried.
    Cancelled,
    /// Handed back because this worker does not register the job's type (a rolling deploy);
    /// claimable again at `at`, the attempt not counted.
    Deferred {
        /// When the job becomes claimable again.
        at: Millis,
    },
    /// The lease expired meanwhile and another claim owns the job; nothing was changed.
    LeaseLost,
}

impl Outcome {
    /// A short label for logs: DONE, RETRY, FAIL, RELEASED, DEFER, SNOOZE, CANCEL or LOST.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Done => "DONE",
            Self::Retry { .. } => "RETRY",
            Self::Failed { .. } => "FAIL",
            Self::Released => "RELEASED",
            Self::Deferred { .. } => "DEFER",
            Self::Snoozed { .. } => "SNOOZE",
            Self::Cancelled => "CANCEL",
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
    /// Jobs of a type this worker does not register, handed back for another worker.
    pub deferred: u64,
    /// Jobs that snoozed.
    pub snoozed: u64,
    /// Jobs cancelled while they ran.
    pub cancelled: u64,
}

impl WorkerSummary {
    pub(super) fn count(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Done => self.done += 1,
            Outcome::Retry { .. } => self.retried += 1,
            Outcome::Failed { .. } => self.failed += 1,
            Outcome::Released => self.released += 1,
            Outcome::LeaseLost => self.lost += 1,
            Outcome::Deferred { .. } => self.deferred += 1,
            Outcome::Snoozed { .. } => self.snoozed += 1,
            Outcome::Cancelled => self.cancelled += 1,
        }
    }

    /// Attempts that ran to an end (done, retried or failed).
    pub fn attempts(&self) -> u64 {
        self.done + self.retried + self.failed
    }
}
