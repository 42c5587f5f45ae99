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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::events::{Outcome, WorkerEvent, WorkerSummary};
use super::run_loop::{Runner, duration_ms};
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
        if let Some(beat) = &self.beat {
            *beat.state().running.entry(job.id.clone()).or_default() += 1;
        }
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
            let mut state = beat.state();
            if let Some(n) = state.running.get_mut(&event.id) {
                *n -= 1;
                if *n == 0 {
                    state.running.remove(&event.id);
                }
            }
            let counted = match event.outcome {
                Outcome::Done => (1, 0),
                Outcome::Failed { .. } => (0, 1),
                _ => (0, 0),
            };
            if counted != (0, 0) {
                // Looked up before inserting: a key is copied once per queue, not per job.
                match state.ended.get_mut(&event.queue) {
                    Some(ended) => {
                        ended.0 += counted.0;
                        ended.1 += counted.1;
                    }
                    None => {
                        state.ended.insert(event.queue.clone(), counted);
                    }
                }
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
    state: Mutex<BeatState>,
    /// Set when the driver answered that it keeps no heartbeats.
    unsupported: AtomicBool,
}

#[derive(Default)]
struct BeatState {
    /// The ids of the jobs running now, with how many attempts of each (a job recovered and
    /// claimed again by this same worker runs twice for a moment).
    running: HashMap<String, u32>,
    /// Jobs ended since the last beat, per queue: (processed, failed).
    ended: HashMap<String, (u64, u64)>,
}

impl Beat {
    /// The heartbeat of a worker starting now; `None` when `interval` is zero (heartbeats off).
    pub(super) fn new(
        queue: &Queue,
        queues: &[String],
        concurrency: usize,
        interval: Duration,
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
            state: Mutex::default(),
            unsupported: AtomicBool::new(false),
        }))
    }

    fn state(&self) -> MutexGuard<'_, BeatState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One beat: the entry with the running jobs, and the counts since the last beat. Counts a
    /// failed beat could not deliver are kept for the next one.
    async fn beat(&self, queue: &Queue) -> Result<()> {
        let (info, ended) = {
            let mut state = self.state();
            let mut info = self.info.clone();
            info.running = state.running.keys().cloned().collect();
            info.running.sort();
            let ended: Vec<Throughput> = state
                .ended
                .drain()
                .map(|(queue, (processed, failed))| Throughput::new(queue, processed, failed))
                .collect();
            (info, ended)
        };
        let ttl_ms = duration_ms(self.interval).saturating_mul(u64::from(TTL_BEATS));
        let result = queue.driver().heartbeat(&info, &ended, ttl_ms, queue.now()).await;
        if result.is_err() {
            let mut state = self.state();
            for t in ended {
                let kept = state.ended.entry(t.queue).or_default();
                kept.0 += t.processed;
                kept.1 += t.failed;
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
            let pending = !self.state().ended.is_empty();
            if pending && let Err(e) = self.beat(queue).await {
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
