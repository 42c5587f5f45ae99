//! Job types the conformance cases dispatch, and probes that record what they did.
//!
//! A job is deserialized from its payload inside the worker, so it cannot hold a reference to the
//! test; it names a probe by key instead, and the probe lives in a process-wide table.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use orcs_core::{Clock, Job, JobContext, JobError, Millis, SystemClock};
use serde::{Deserialize, Serialize};

/// What the jobs naming one probe did.
#[derive(Debug, Default)]
pub struct Probe {
    /// One entry per started attempt: (job id, attempt, wall-clock ms at start).
    pub starts: Mutex<Vec<(String, u32, Millis)>>,
    /// Calls of `failed`.
    pub failed_calls: AtomicU32,
    /// The error passed to the last `failed` call.
    pub failed_error: Mutex<Option<String>>,
    /// Attempts running right now.
    pub running: AtomicU32,
    /// The most attempts that ran at the same time.
    pub max_running: AtomicU32,
    /// Attempts that saw `ctx.cancelled()` fire and finished their clean-up.
    pub cleanups: AtomicU32,
    /// Attempts that saw a cancel request (`ctx.is_cancel_requested()`).
    pub saw_cancel: AtomicU32,
}

impl Probe {
    /// The attempts started so far.
    pub fn started(&self) -> usize {
        self.starts.lock().expect("probe lock").len()
    }

    /// The attempt numbers started for `id`, in order.
    pub fn attempts_of(&self, id: &str) -> Vec<u32> {
        self.starts
            .lock()
            .expect("probe lock")
            .iter()
            .filter(|(i, _, _)| i == id)
            .map(|(_, a, _)| *a)
            .collect()
    }

    /// The start time of the first attempt of `id`.
    pub fn first_start(&self, id: &str) -> Option<Millis> {
        self.starts
            .lock()
            .expect("probe lock")
            .iter()
            .find(|(i, _, _)| i == id)
            .map(|(_, _, at)| *at)
    }
}

static PROBES: LazyLock<Mutex<HashMap<String, Arc<Probe>>>> = LazyLock::new(Mutex::default);

/// A new probe and its key.
pub fn probe() -> (String, Arc<Probe>) {
    let key = orcs_core::new_job_id();
    let probe = Arc::new(Probe::default());
    PROBES.lock().expect("probe table lock").insert(key.clone(), Arc::clone(&probe));
    (key, probe)
}

fn find(key: &str) -> Arc<Probe> {
    PROBES.lock().expect("probe table lock").get(key).cloned().unwrap_or_default()
}

/// The behaviour knobs shared by the test jobs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Script {
    /// The probe to record into.
    pub probe: String,
    /// Fail the first this many attempts.
    #[serde(default)]
    pub fail_attempts: u32,
    /// Fail with a permanent error.
    #[serde(default)]
    pub permanent: bool,
    /// Panic instead of returning the error.
    #[serde(default)]
    pub panic: bool,
    /// Sleep this long (cancellable) before finishing.
    #[serde(default)]
    pub work_ms: u64,
    /// Free-form tag for ordering checks.
    #[serde(default)]
    pub tag: u64,
    /// When cancelled, spend this long cleaning up (not cancellable) before returning.
    #[serde(default)]
    pub cleanup_ms: u64,
    /// On the first run only, snooze for this long.
    #[serde(default)]
    pub snooze_first_ms: u64,
    /// Report this progress value (as `{"step": n}`) before working.
    #[serde(default)]
    pub progress: Option<u64>,
}

/// Counts an attempt as running until dropped (also when the worker drops the job's future).
struct Running(Arc<Probe>);

impl Running {
    fn start(probe: Arc<Probe>) -> Self {
        let now = probe.running.fetch_add(1, Ordering::SeqCst) + 1;
        probe.max_running.fetch_max(now, Ordering::SeqCst);
        Self(probe)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Script {
    /// A job that succeeds at once.
    pub fn ok(probe: &str) -> Self {
        Self { probe: probe.to_owned(), ..Self::default() }
    }

    async fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
        let probe = find(&self.probe);
        probe.starts.lock().expect("probe lock").push((
            ctx.id().to_owned(),
            ctx.attempt(),
            SystemClock.now(),
        ));
        let _running = Running::start(Arc::clone(&probe));
        if self.snooze_first_ms > 0 && probe.started() == 1 {
            return Err(JobError::snooze(Duration::from_millis(self.snooze_first_ms)));
        }
        if let Some(step) = self.progress {
            ctx.progress(serde_json::json!({ "step": step }));
        }
        if self.work_ms > 0 {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(self.work_ms)) => {}
                () = ctx.cancelled() => {
                    probe.saw_cancel.fetch_add(u32::from(ctx.is_cancel_requested()), Ordering::SeqCst);
                    if self.cleanup_ms > 0 {
                        tokio::time::sleep(Duration::from_millis(self.cleanup_ms)).await;
                        probe.cleanups.fetch_add(1, Ordering::SeqCst);
                    }
                    return Err(JobError::retry("cancelled"));
                }
            }
        }
        if self.permanent {
            return Err(JobError::fatal("permanent failure requested"));
        }
        if ctx.attempt() <= self.fail_attempts {
            assert!(!self.panic, "panic requested on attempt {}", ctx.attempt());
            return Err(JobError::retry(format!("failure requested on attempt {}", ctx.attempt())));
        }
        Ok(())
    }

    fn record_failed(&self, error: &JobError) {
        let probe = find(&self.probe);
        probe.failed_calls.fetch_add(1, Ordering::SeqCst);
        *probe.failed_error.lock().expect("probe lock") = Some(error.message().to_owned());
    }
}

/// The seed's retry example: 3 retries, 60 s base delay, on queue `default`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetryJob(pub Script);

impl Job for RetryJob {
    const NAME: &'static str = "RetryJob";
    const QUEUE: &'static str = "default";
    const MAX_RETRIES: u32 = 3;
    const RETRY_DELAY: Duration = Duration::from_secs(60);
    const TIMEOUT: Option<Duration> = Some(Duration::from_secs(30));

    async fn handle(&self, ctx: &JobContext) -> Result<(), JobError> {
        self.0.run(ctx).await
    }

    async fn failed(&self, _ctx: &JobContext, error: &JobError) {
        self.0.record_failed(error);
    }
}

/// A job with a 100 ms time limit and no retries delay to speak of.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShortTimeoutJob(pub Script);

impl Job for ShortTimeoutJob {
    const NAME: &'static str = "ShortTimeoutJob";
    const QUEUE: &'static str = "default";
    const MAX_RETRIES: u32 = 1;
    const RETRY_DELAY: Duration = Duration::from_millis(1);
    const TIMEOUT: Option<Duration> = Some(Duration::from_millis(100));

    async fn handle(&self, ctx: &JobContext) -> Result<(), JobError> {
        self.0.run(ctx).await
    }

    async fn failed(&self, _ctx: &JobContext, error: &JobError) {
        self.0.record_failed(error);
    }
}

/// A job with the type's defaults for queue and retries, used for ordering and counting.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlainJob(pub Script);

impl Job for PlainJob {
    const NAME: &'static str = "PlainJob";
    const RETRY_DELAY: Duration = Duration::from_millis(1);

    async fn handle(&self, ctx: &JobContext) -> Result<(), JobError> {
        self.0.run(ctx).await
    }

    async fn failed(&self, _ctx: &JobContext, error: &JobError) {
        self.0.record_failed(error);
    }
}

/// The batch each `BatchJob` attempt saw (`ctx.batch_id()`), by probe key: (job id, batch id).
/// (job id, the batch id it saw), in start order.
type Seen = Vec<(String, Option<String>)>;

static BATCH_SEEN: LazyLock<Mutex<HashMap<String, Seen>>> = LazyLock::new(Mutex::default);

/// What the `BatchJob`s naming probe `key` saw of their batch, in start order.
pub fn batch_ids_seen(key: &str) -> Vec<(String, Option<String>)> {
    BATCH_SEEN.lock().expect("batch table lock").get(key).cloned().unwrap_or_default()
}

/// A [`PlainJob`] that also records the batch it belongs to ([`batch_ids_seen`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchJob(pub Script);

impl Job for BatchJob {
    const NAME: &'static str = "BatchJob";
    const RETRY_DELAY: Duration = Duration::from_millis(1);

    async fn handle(&self, ctx: &JobContext) -> Result<(), JobError> {
        let seen = (ctx.id().to_owned(), ctx.batch_id().map(str::to_owned));
        BATCH_SEEN
            .lock()
            .expect("batch table lock")
            .entry(self.0.probe.clone())
            .or_default()
            .push(seen);
        self.0.run(ctx).await
    }

    async fn failed(&self, _ctx: &JobContext, error: &JobError) {
        self.0.record_failed(error);
    }
}

/// The registry with every test job.
pub fn registry() -> orcs_core::Registry {
    orcs_core::Registry::new()
        .register::<RetryJob>()
        .register::<ShortTimeoutJob>()
        .register::<PlainJob>()
        .register::<BatchJob>()
}
