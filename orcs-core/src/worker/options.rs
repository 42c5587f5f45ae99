//! [`WorkerOptions`]: how a worker behaves.

use std::time::Duration;

/// How a worker behaves; every field has the default documented on its [`crate::Worker`] setter.
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
    /// How long a job asked to stop (timeout, shutdown deadline) may take to wind down before its
    /// future is dropped.
    pub cancel_grace: Duration,
    /// How long a job of a type this worker does not register is handed back for.
    pub unknown_job_delay: Duration,
    /// How long after its dispatch a job of an unregistered type keeps being handed back before
    /// it fails for good.
    pub unknown_job_patience: Duration,
    /// A clock skew against the backend above this is logged as a warning.
    pub clock_skew_warning: Duration,
    /// Moves each retry's backoff by up to ±20% so jobs failing together spread out.
    pub retry_jitter: bool,
    /// How often the worker reports itself to the backend; zero turns heartbeats off.
    pub heartbeat_interval: Duration,
    /// Run the scheduler of the worker's schedules alongside its loop.
    pub run_scheduler: bool,
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
            cancel_grace: Duration::from_secs(1),
            unknown_job_delay: Duration::from_secs(10),
            unknown_job_patience: Duration::from_secs(3600),
            clock_skew_warning: Duration::from_secs(1),
            retry_jitter: true,
            heartbeat_interval: Duration::from_secs(5),
            run_scheduler: true,
        }
    }
}
