//! Worker heartbeats and the in-process hooks on each attempt's start and end.
//!
//! A running worker registers itself in the backend ([`crate::Admin::heartbeat`]) at start and
//! then every `heartbeat_interval`, listed until three intervals pass without a beat, so a worker
//! killed with SIGKILL drops out of `queue:workers` by itself; a clean stop removes it at once
//! ([`crate::Admin::forget_worker`]). Each beat also carries how many jobs ended per queue since
//! the previous one, counted in memory, so the throughput history costs the hot path nothing.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::events::{Outcome, WorkerEvent, WorkerSummary};
use super::run_loop::{Runner, RunningJobs, duration_ms};
use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::queue::Queue;
use crate::record::{JobRecord, Throughput, WorkerInfo};

/// Beats a backend's entry outlives its last beat by, before it is taken for dead.
const TTL_BEATS: u32 = 3;

/// How long a stopping worker gives its last beat and its goodbye before it exits anyway.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// Watches a worker's attempts in-process as they start and end: the hook for metrics (the `orcs`
/// crate's `metrics` feature implements it with Prometheus histograms). Both methods are called
/// on the worker's hot path, so they must be cheap and must not block.
pub trait WorkerObserver: Send + Sync + fmt::Debug + 'static {
    /// A claimed job's attempt starts. `waited` is how long the job had been claimable, when
    /// the worker knows it (today: a first attempt, measured from its dispatch, so a dispatch
    /// delay is included).
    fn attempt_started(&self, job: &JobRecord, waited: Option<Duration>) {
        let _ = (job, waited);
    }

    /// An attempt ended (the same event [`crate::Worker::on_event`] gets).
    fn attempt_finished(&self, event: &WorkerEvent) {
        let _ = event;
    }
}

/// What the worker tells its heartbeat and its observer about each attempt.
#[derive(Clone, Default)]
pub(super) struct Watch {
    pub(super) beat: Option<Arc<Beat>>,
    pub(super) observer: Option<Arc<dyn WorkerObserver>>,
}

impl Watch {
    /// A claimed job is about to run, at `now`.
    pub(super) fn started(&self, job: &JobRecord, now: Millis) {
        // (The heartbeat lists the running jobs from the run loop's own set at each beat.)
        if let Some(observer) = &self.observer {
            // The record knows when the job was dispatched, not when it became due: only a first
            // attempt's wait is known (from the dispatch).
            let waited = (job.attempt == 1).then(|| {
                Duration::from_millis(u64::try_from(now - job.dispatched_at).unwrap_or(0))
            });
            observer.attempt_started(job, waited);
        }
    }

    /// An attempt ended.
    pub(super) fn finished(&self, event: &WorkerEvent) {
        if let Some(beat) = &self.beat {
            match event.outcome {
                Outcome::Done => beat.count(&event.queue, 1, 0),
                Outcome::Failed { .. } => beat.count(&event.queue, 0, 1),
                _ => {}
            }
        }
        if let Some(observer) = &self.observer {
            observer.attempt_finished(event);
        }
    }
}

/// A worker's entry in the backend and what it reports in the next beat.
pub(super) struct Beat {
    /// The entry as registered: id, host, pid, queues, concurrency, start time.
    info: WorkerInfo,
    interval: Duration,
    /// The run loop's running jobs, whose ids each beat lists.
    running: RunningJobs,
    /// Jobs ended since the last beat in each of the worker's queues, counted without a lock
    /// (every attempt ends here).
    ended: Vec<Ended>,
    /// Jobs ended since the last beat in a queue the worker was not given (none today; kept
    /// so that no count is ever lost): queue -> (processed, failed).
    ended_elsewhere: Mutex<HashMap<String, (u64, u64)>>,
    /// Set when the driver answered that it keeps no heartbeats.
    unsupported: AtomicBool,
}

/// One queue's jobs ended since the last beat.
struct Ended {
    queue: String,
    processed: AtomicU64,
    failed: AtomicU64,
}

impl Beat {
    /// The heartbeat of a worker starting now; `None` when `interval` is zero (heartbeats off).
    pub(super) fn new(
        queue: &Queue,
        queues: &[String],
        concurrency: usize,
        interval: Duration,
        running: RunningJobs,
    ) -> Option<Arc<Self>> {
        if interval.is_zero() {
            return None;
        }
        let host = whoami::hostname().unwrap_or_else(|_| "unknown".to_owned());
        let mut info =
            WorkerInfo::new(crate::id::new_job_id(), host, std::process::id(), queue.now());
        info.queues = queues.to_vec();
        info.concurrency = u32::try_from(concurrency).unwrap_or(u32::MAX);
        Some(Arc::new(Self {
            info,
            interval,
            running,
            ended: queues
                .iter()
                .map(|queue| Ended {
                    queue: queue.clone(),
                    processed: AtomicU64::new(0),
                    failed: AtomicU64::new(0),
                })
                .collect(),
            ended_elsewhere: Mutex::default(),
            unsupported: AtomicBool::new(false),
        }))
    }

    fn ended_elsewhere(&self) -> MutexGuard<'_, HashMap<String, (u64, u64)>> {
        self.ended_elsewhere.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts jobs of `queue` that ended (or, after a failed beat, puts its counts back).
    fn count(&self, queue: &str, processed: u64, failed: u64) {
        if let Some(ended) = self.ended.iter().find(|ended| ended.queue == queue) {
            ended.processed.fetch_add(processed, Ordering::Relaxed);
            ended.failed.fetch_add(failed, Ordering::Relaxed);
        } else {
            let mut elsewhere = self.ended_elsewhere();
            let counts = elsewhere.entry(queue.to_owned()).or_default();
            counts.0 += processed;
            counts.1 += failed;
        }
    }

    /// Whether some job ended since the last beat.
    fn any_ended(&self) -> bool {
        self.ended.iter().any(|ended| {
            ended.processed.load(Ordering::Relaxed) > 0 || ended.failed.load(Ordering::Relaxed) > 0
        }) || !self.ended_elsewhere().is_empty()
    }

    /// Takes the counts since the last beat.
    fn take_ended(&self) -> Vec<Throughput> {
        let mut taken: Vec<Throughput> = self
            .ended
            .iter()
            .map(|ended| {
                let processed = ended.processed.swap(0, Ordering::Relaxed);
                let failed = ended.failed.swap(0, Ordering::Relaxed);
                Throughput::new(ended.queue.clone(), processed, failed)
            })
            .filter(|t| t.processed > 0 || t.failed > 0)
            .collect();
        taken.extend(
            self.ended_elsewhere()
                .drain()
                .map(|(queue, (processed, failed))| Throughput::new(queue, processed, failed)),
        );
        taken
    }

    /// One beat: the entry with the running jobs, and the counts since the last beat. Counts a
    /// failed beat could not deliver are kept for the next one.
    async fn beat(&self, queue: &Queue) -> Result<()> {
        let mut info = self.info.clone();
        info.running = self.running.ids();
        let ended = self.take_ended();
        let ttl_ms = duration_ms(self.interval).saturating_mul(u64::from(TTL_BEATS));
        let result = queue.driver().heartbeat(&info, &ended, ttl_ms, queue.now()).await;
        if result.is_err() {
            for t in ended {
                self.count(&t.queue, t.processed, t.failed);
            }
        }
        result
    }

    /// Beats every interval until the driver says it has no heartbeats (then returns). Errors
    /// are logged, the first of an outage as a warning, and never stop the worker.
    async fn run(&self, queue: &Queue) {
        let mut failing = false;
        loop {
            match self.beat(queue).await {
                Ok(()) => {
                    if failing {
                        tracing::info!("worker heartbeat delivered again");
                    }
                    failing = false;
                }
                Err(Error::Unsupported { .. }) => {
                    self.unsupported.store(true, Ordering::Relaxed);
                    tracing::debug!(
                        driver = queue.driver().name(),
                        "the driver keeps no worker heartbeats; this worker will not be listed"
                    );
                    return;
                }
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "could not send the worker's heartbeat; retrying every beat");
                }
                Err(e) => tracing::debug!(error = %e, "the worker's heartbeat failed again"),
            }
            tokio::time::sleep(self.interval).await;
        }
    }

    /// At a stop: delivers the last counts, then removes the entry. Bounded by
    /// [`GOODBYE_TIMEOUT`]: a backend that is down must not hold the exit up (the entry then
    /// expires by itself).
    async fn goodbye(&self, queue: &Queue) {
        if self.unsupported.load(Ordering::Relaxed) {
            return;
        }
        let goodbye = async {
            if self.any_ended()
                && let Err(e) = self.beat(queue).await
            {
                tracing::debug!(error = %e, "could not send the worker's last counts");
            }
            if let Err(e) = queue.driver().forget_worker(&self.info.id).await {
                tracing::debug!(error = %e, "could not remove the worker's entry; it expires by itself");
            }
        };
        if tokio::time::timeout(GOODBYE_TIMEOUT, goodbye).await.is_err() {
            tracing::debug!("the worker's goodbye timed out; its entry expires by itself");
        }
    }
}

/// Runs the worker loop with its heartbeat beside it, in the same task (nothing detached); at
/// the end, however the loop ended, the worker's entry is removed.
pub(super) async fn run_beating(
    runner: Runner,
    shutdown: impl Future<Output = ()> + Send,
    force: impl Future<Output = ()> + Send,
) -> Result<WorkerSummary> {
    let Some(beat) = runner.watch.beat.clone() else {
        return runner.run_with_writer(shutdown, force).await;
    };
    let queue = runner.queue.clone();
    let mut work = std::pin::pin!(runner.run_with_writer(shutdown, force));
    let result = tokio::select! {
        result = &mut work => result,
        // Only returns when the driver has no heartbeats: then the loop goes on alone.
        () = beat.run(&queue) => work.await,
    };
    beat.goodbye(&queue).await;
    result
}
