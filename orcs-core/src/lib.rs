//! The core of orcs, a background job queue: typed jobs, dispatch, the worker runtime, and the
//! [`Driver`] contract that the memory, Redis and database backends implement.
//!
//! The key design decision: drivers store plain records ([`NewJob`], [`JobRecord`]) and take the
//! current time from their caller. Typed jobs, retry policy, timeouts and the clock live here, once,
//! so every backend behaves the same and one conformance suite (`orcs-tests`) proves it.
//!
//! ```
//! use std::time::Duration;
//! use orcs_core::{Job, JobContext, JobError, Queue, Registry, Worker};
//! use orcs_memory::MemoryDriver;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct SendEmailJob {
//!     to: String,
//!     subject: String,
//! }
//!
//! impl Job for SendEmailJob {
//!     const NAME: &'static str = "SendEmailJob";
//!     const QUEUE: &'static str = "emails";
//!     const PRIORITY: i32 = 10;
//!     const MAX_RETRIES: u32 = 3;
//!     const RETRY_DELAY: Duration = Duration::from_secs(60);
//!     const TIMEOUT: Option<Duration> = Some(Duration::from_secs(30));
//!
//!     async fn handle(&self, ctx: &JobContext) -> Result<(), JobError> {
//!         println!("attempt {} of job {}: mail to {}", ctx.attempt(), ctx.id(), self.to);
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> orcs_core::Result<()> {
//! let queue = Queue::new(MemoryDriver::new());
//! let id = queue
//!     .dispatch(SendEmailJob { to: "user@example.com".into(), subject: "Welcome!".into() })
//!     .await?;
//!
//! let registry = Registry::new().register::<SendEmailJob>();
//! let summary = Worker::new(queue.clone(), registry)
//!     .queues(["emails"])
//!     .stop_when_empty(true)
//!     .run()
//!     .await?;
//! assert_eq!(summary.done, 1);
//! assert_eq!(queue.stats("emails").await?.processed, 1);
//! # let _ = id;
//! # Ok(())
//! # }
//! ```

mod backoff;
mod clock;
pub mod config;
mod driver;
mod error;
mod id;
mod job;
mod middleware;
mod queue;
mod record;
mod registry;
mod schedule;
mod trace_context;
mod worker;
mod workflow;

pub use backoff::{jittered, retry_delay};
pub use clock::{Clock, ManualClock, Millis, SystemClock, millis};
pub use driver::{Admin, BoxDriver, Driver};
pub use error::{BoxError, Error, Result};
pub use id::new_job_id;
pub use job::{Job, JobContext, JobError, JobErrorKind};
pub use middleware::{Middleware, Next, TraceLayer};
pub use queue::{
    DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_QUEUE, DispatchOptions, JobDefaults, MAX_QUEUE_NAME_LEN,
    Queue, validate_queue_name,
};
pub use record::{
    BatchCallback, BatchInfo, CallbackState, CancelOutcome, Capabilities, Claim, ClaimRequest,
    Effects, FailedJob, FailedQuery, Fire, JobInfo, JobRecord, JobState, Lease, ListRequest,
    MAX_ERROR_HISTORY, MAX_PAGE, NewBatch, NewJob, Prune, PushOutcome, QueueLimits, QueueStats,
    RateLimit, Reserved, ScheduleRecord, Settle, SettleMark, Settling, SettlingMarks,
    THROUGHPUT_HORIZON_MS, Throughput, Touch, Transition, Unique, UniqueUntil, WorkerInfo,
};
pub use registry::{Needs, Registry};
pub use schedule::{
    DEFAULT_MISSED_AFTER, DEFAULT_MISSED_MAX, Missed, Schedule, Scheduler, Tick, slot_job_id,
};
pub use worker::{
    Outcome, Worker, WorkerEvent, WorkerHandle, WorkerObserver, WorkerOptions, WorkerSummary,
    shutdown_signal,
};
pub use workflow::{BatchBuilder, Chain};

/// Re-exported so that driver crates and `orcs-tests` use the same version.
pub use async_trait::async_trait;
