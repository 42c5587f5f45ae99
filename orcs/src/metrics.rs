//! Prometheus metrics (feature `metrics`): the queues' gauges and counters read from the backend
//! at each scrape, and per-job-name histograms of run time and wait time recorded by a worker in
//! this process.
//!
//! The key design decision: what the backend knows is read from it on every scrape
//! ([`orcs_core::Admin::stats`], whose cost does not grow with the backlog), never counted by the
//! scraping process, so every process that renders (a worker, the dashboard) shows the same
//! global numbers; what only a worker sees (how long each job ran and waited, its retries) is
//! recorded in memory by a [`Metrics`] observer and rendered by that worker alone.
//!
//! | series | type | labels | source |
//! |---|---|---|---|
//! | `orcs_queue_pending`, `orcs_queue_delayed`, `orcs_queue_reserved`, `orcs_queue_failed` | gauge | `queue` | backend |
//! | `orcs_queue_latency_seconds` (age of the oldest due job, 0 when none) | gauge | `queue` | backend |
//! | `orcs_queue_paused` (1 when paused) | gauge | `queue` | backend |
//! | `orcs_jobs_processed_total`, `orcs_jobs_failed_total`, `orcs_jobs_cancelled_total` | counter | `queue` | backend |
//! | `orcs_workers` (live workers, when the driver keeps heartbeats) | gauge | | backend |
//! | `orcs_job_run_seconds`, `orcs_job_wait_seconds` | histogram | `job` | this worker |
//! | `orcs_jobs_retried_total` | counter | `queue`, `job` | this worker |
//!
//! The backend's series are the same from every process that renders them: aggregate them with
//! `max` (or scrape one process), and the worker's with `sum` over the workers.
//!
//! ```
//! use std::sync::Arc;
//! use orcs::metrics::Metrics;
//! use orcs::{Queue, Registry, Worker};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> orcs::Result<()> {
//! let queue = Queue::new(orcs::memory::MemoryDriver::new());
//! let metrics = Metrics::new();
//! let worker = Worker::new(queue.clone(), Registry::new()).observer(metrics.observer());
//! # let _ = worker;
//! // In the `/metrics` handler of your HTTP server, answered with `CONTENT_TYPE`:
//! let text = metrics.render(&queue).await?;
//! assert!(text.ends_with("# EOF\n"));
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use orcs_core::{Error, JobRecord, Outcome, Queue, Result, WorkerEvent, WorkerObserver};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of the rendered text (OpenMetrics, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the run-time buckets, in seconds: from 5 ms to 5 minutes.
const RUN_BUCKETS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Upper bounds of the wait-time buckets, in seconds: from 5 ms to an hour.
const WAIT_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabel {
    job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueJobLabels {
    queue: String,
    job: String,
}

type Histograms = Family<JobLabel, Histogram, fn() -> Histogram>;

fn run_histogram() -> Histogram {
    Histogram::new(RUN_BUCKETS)
}

fn wait_histogram() -> Histogram {
    Histogram::new(WAIT_BUCKETS)
}

/// What a worker in this process records: per-job-name histograms of run time and wait time,
/// and its retries. Clones share the same series; give one to the worker as its observer
/// ([`Metrics::observer`]) and keep one to render.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Recorded>,
}

struct Recorded {
    run: Histograms,
    wait: Histograms,
    retried: Family<QueueJobLabels, Counter>,
    /// Each job name's two histograms, handles into `run` and `wait` looked up by `&str`: a
    /// family's lookup needs an owned label, so without them every attempt would copy the name
    /// twice (the observer runs on the worker's hot path).
    by_name: RwLock<HashMap<Box<str>, JobSeries>>,
}

/// One job name's series (clones of a histogram share its counts).
struct JobSeries {
    run: Histogram,
    wait: Histogram,
}

impl Recorded {
    /// Calls `observe` with `name`'s histograms, created in both families on its first attempt.
    fn observe(&self, name: &str, observe: impl FnOnce(&JobSeries)) {
        if let Some(series) = self.by_name.read().unwrap_or_else(PoisonError::into_inner).get(name)
        {
            return observe(series);
        }
        let mut by_name = self.by_name.write().unwrap_or_else(PoisonError::into_inner);
        let series = by_name.entry(name.into()).or_insert_with(|| {
            let label = JobLabel { job: name.to_owned() };
            JobSeries {
                run: self.run.get_or_create(&label).clone(),
                wait: self.wait.get_or_create(&label).clone(),
            }
        });
        observe(series);
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// An empty recorder.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Recorded {
                run: Family::new_with_constructor(run_histogram as fn() -> Histogram),
                wait: Family::new_with_constructor(wait_histogram as fn() -> Histogram),
                retried: Family::default(),
                by_name: RwLock::default(),
            }),
        }
    }

    /// This recorder as a worker's observer: `Worker::observer(metrics.observer())`.
    pub fn observer(&self) -> Arc<dyn WorkerObserver> {
        Arc::new(self.clone())
    }

    /// The Prometheus text: the backend's series of every queue ([`render`]), then what this
    /// process's worker recorded.
    ///
    /// # Errors
    /// A backend error while reading the queues' stats.
    pub async fn render(&self, queue: &Queue) -> Result<String> {
        let mut text = String::new();
        encode_backend(&mut text, queue).await?;
        let mut registry = Registry::with_prefix("orcs");
        let recorded = &self.inner;
        registry.register_with_unit(
            "job_run",
            "How long attempts ran, by job name (this worker)",
            Unit::Seconds,
            recorded.run.clone(),
        );
        registry.register_with_unit(
            "job_wait",
            "How long jobs waited from dispatch to their first attempt's start, by job name \
             (this worker)",
            Unit::Seconds,
            recorded.wait.clone(),
        );
        registry.register(
            "jobs_retried",
            "Failed attempts scheduled to run again (this worker)",
            recorded.retried.clone(),
        );
        finish(&mut text, &registry);
        Ok(text)
    }
}

impl WorkerObserver for Metrics {
    fn attempt_started(&self, job: &JobRecord, waited: Option<Duration>) {
        if let Some(waited) = waited {
            self.inner.observe(&job.name, |series| series.wait.observe(waited.as_secs_f64()));
        }
    }

    fn attempt_finished(&self, event: &WorkerEvent) {
        // A job handed back unrun (not registered here) or cut off by a shutdown did not run.
        if matches!(event.outcome, Outcome::Deferred { .. } | Outcome::Released) {
            return;
        }
        let secs = event.duration.as_secs_f64();
        self.inner.observe(&event.name, |series| series.run.observe(secs));
        if matches!(event.outcome, Outcome::Retry { .. }) {
            let labels = QueueJobLabels { queue: event.queue.clone(), job: event.name.clone() };
            self.inner.retried.get_or_create(&labels).inc();
        }
    }
}

/// The Prometheus text of the backend's series alone, for a process that runs no worker (the
/// dashboard): per-queue gauges and counters from [`orcs_core::Admin::stats`] at the queue's
/// clock, and the number of live workers. One stats call per queue: the cost does not grow with
/// the backlog.
///
/// # Errors
/// A backend error while listing the queues or reading their stats.
pub async fn render(queue: &Queue) -> Result<String> {
    let mut text = String::new();
    encode_backend(&mut text, queue).await?;
    finish(&mut text, &Registry::default());
    Ok(text)
}

/// Appends the backend's series (without the final `# EOF`).
async fn encode_backend(text: &mut String, queue: &Queue) -> Result<()> {
    let driver = queue.driver();
    let now = queue.now();
    let mut registry = Registry::with_prefix("orcs");
    let gauge = |registry: &mut Registry, name: &str, help: &str| {
        let family = Family::<QueueLabel, Gauge>::default();
        registry.register(name, help, family.clone());
        family
    };
    let pending = gauge(&mut registry, "queue_pending", "Jobs ready to run");
    let delayed = gauge(&mut registry, "queue_delayed", "Jobs waiting for their delay or backoff");
    let reserved = gauge(&mut registry, "queue_reserved", "Jobs held by a worker");
    let failed = gauge(&mut registry, "queue_failed", "Jobs in the failed set");
    let paused = gauge(&mut registry, "queue_paused", "1 when workers skip the queue");
    let latency = Family::<QueueLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    registry.register_with_unit(
        "queue_latency",
        "How long the oldest due job has waited (0 when none is due)",
        Unit::Seconds,
        latency.clone(),
    );
    let counter = |registry: &mut Registry, name: &str, help: &str| {
        let family = Family::<QueueLabel, Counter>::default();
        registry.register(name, help, family.clone());
        family
    };
    let processed = counter(&mut registry, "jobs_processed", "Jobs completed");
    let failed_total = counter(&mut registry, "jobs_failed", "Jobs moved to the failed set");
    let cancelled = counter(&mut registry, "jobs_cancelled", "Jobs cancelled");

    for name in driver.queues().await? {
        let stats = driver.stats(&name, now).await?;
        let label = QueueLabel { queue: name };
        let as_gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        pending.get_or_create(&label).set(as_gauge(stats.pending));
        delayed.get_or_create(&label).set(as_gauge(stats.delayed));
        reserved.get_or_create(&label).set(as_gauge(stats.reserved));
        failed.get_or_create(&label).set(as_gauge(stats.failed));
        paused.get_or_create(&label).set(i64::from(stats.paused));
        let latency_ms = stats.latency_ms.unwrap_or(0);
        latency.get_or_create(&label).set(latency_ms as f64 / 1000.0);
        processed.get_or_create(&label).inc_by(stats.processed);
        failed_total.get_or_create(&label).inc_by(stats.failed_total);
        cancelled.get_or_create(&label).inc_by(stats.cancelled);
    }
    match driver.workers(now).await {
        Ok(workers) => {
            let live = Gauge::<i64>::default();
            live.set(i64::try_from(workers.len()).unwrap_or(i64::MAX));
            registry.register("workers", "Live workers (by their heartbeats)", live);
        }
        // A driver without heartbeats has no such series.
        Err(Error::Unsupported { .. }) => {}
        Err(e) => return Err(e),
    }
    encode_registry(text, &registry).expect("writing to a String cannot fail");
    Ok(())
}

/// Appends `registry`'s series and the final `# EOF`.
fn finish(text: &mut String, registry: &Registry) {
    encode_registry(text, registry).expect("writing to a String cannot fail");
    encode_eof(text).expect("writing to a String cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;
    use orcs_core::{Job, JobContext, JobError, Registry as Jobs, Worker};
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    struct Flaky {
        fail: bool,
    }

    impl Job for Flaky {
        const NAME: &'static str = "Flaky";
        const QUEUE: &'static str = "mail";
        const MAX_RETRIES: u32 = 1;
        const RETRY_DELAY: Duration = Duration::from_secs(60);

        async fn handle(&self, _ctx: &JobContext) -> std::result::Result<(), JobError> {
            if self.fail { Err(JobError::retry("it broke")) } else { Ok(()) }
        }
    }

    /// The value of the sample `name{labels}` in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[tokio::test]
    async fn a_scrape_shows_the_backend_and_the_worker() {
        let queue = Queue::new(orcs_memory::MemoryDriver::new());
        queue.dispatch(Flaky { fail: false }).await.expect("dispatch");
        queue.dispatch(Flaky { fail: false }).await.expect("dispatch");
        queue.dispatch(Flaky { fail: true }).await.expect("dispatch");
        queue
            .dispatch_after(Duration::from_secs(600), Flaky { fail: false })
            .await
            .expect("dispatch");
        let metrics = Metrics::new();
        let summary = Worker::new(queue.clone(), Jobs::new().register::<Flaky>())
            .queues(["mail"])
            .retry_jitter(false)
            .stop_when_empty(true)
            .observer(metrics.observer())
            .run()
            .await
            .expect("worker");
        assert_eq!((summary.done, summary.retried), (2, 1));

        let text = metrics.render(&queue).await.expect("render");
        assert_eq!(sample(&text, "orcs_queue_pending{queue=\"mail\"}"), Some(0.0));
        assert_eq!(sample(&text, "orcs_queue_delayed{queue=\"mail\"}"), Some(2.0), "{text}");
        assert_eq!(sample(&text, "orcs_queue_latency_seconds{queue=\"mail\"}"), Some(0.0));
        assert_eq!(sample(&text, "orcs_jobs_processed_total{queue=\"mail\"}"), Some(2.0));
        assert_eq!(
            sample(&text, "orcs_jobs_retried_total{queue=\"mail\",job=\"Flaky\"}"),
            Some(1.0)
        );
        assert_eq!(sample(&text, "orcs_job_run_seconds_count{job=\"Flaky\"}"), Some(3.0));
        assert_eq!(sample(&text, "orcs_job_wait_seconds_count{job=\"Flaky\"}"), Some(3.0));
        assert!(text.contains("# TYPE orcs_job_run_seconds histogram"), "{text}");
        assert!(text.ends_with("# EOF\n"));
        // The memory driver keeps heartbeats; the worker said goodbye when it stopped.
        assert_eq!(sample(&text, "orcs_workers"), Some(0.0));

        // A due job's latency is the age of the oldest one.
        queue.dispatch(Flaky { fail: false }).await.expect("dispatch");
        let text = render(&queue).await.expect("render");
        assert_eq!(sample(&text, "orcs_queue_pending{queue=\"mail\"}"), Some(1.0));
        assert!(!text.contains("orcs_job_run_seconds"), "no worker series without a worker");
    }
}
