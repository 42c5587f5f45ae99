//! The overview's data: gathered in one place, so that what the drivers report (latency,
//! workers, throughput history) is a field here and a column or a chart on the page.

use std::time::Duration;

use futures_util::future::{try_join, try_join_all};
use orcs_core::{Error, Millis, Queue, QueueStats, Result, Throughput, WorkerInfo};
use serde::Serialize;

/// Everything the overview page shows, read by [`Overview::gather`]: a call per queue and one
/// for the workers, each bounded in cost, so the page costs the same with a million jobs queued
/// as with ten.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Overview {
    /// The driver's name (`memory`, `redis`, `database`).
    pub driver: &'static str,
    /// When the data was read (the queue's clock, milliseconds since the Unix epoch).
    pub at: Millis,
    /// Every queue the backend knows, sorted by name: counters, pause, limits, latency.
    pub queues: Vec<QueueStats>,
    /// The sums over every queue.
    pub totals: Totals,
    /// Live workers; `None` when the driver keeps no worker heartbeats.
    pub workers: Option<Vec<WorkerInfo>>,
    /// Jobs ended per minute over every queue, oldest first, when asked for
    /// ([`Overview::gather_with_history`]) and the driver keeps it.
    pub history: Option<Vec<Throughput>>,
}

/// Counters summed over every queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Totals {
    /// Ready jobs.
    pub pending: u64,
    /// Jobs waiting for their delay or backoff.
    pub delayed: u64,
    /// Jobs held by workers.
    pub reserved: u64,
    /// Jobs in the failed set.
    pub failed: u64,
    /// Jobs completed since the queues were created.
    pub processed: u64,
    /// Jobs moved to the failed set since the queues were created.
    pub failed_total: u64,
    /// Jobs cancelled since the queues were created.
    pub cancelled: u64,
    /// Queues that are paused.
    pub paused: u64,
    /// The largest latency of any queue (the age of the oldest due job), when one is known.
    pub latency_ms: Option<u64>,
}

impl Overview {
    /// Reads the overview from `queue`'s driver: the list of queues, then each queue's counters
    /// and the live workers, concurrently.
    ///
    /// # Errors
    /// A backend error.
    pub async fn gather(queue: &Queue) -> Result<Self> {
        let driver = queue.driver();
        let at = queue.now();
        let names = driver.queues().await?;
        let stats = try_join_all(names.iter().map(|name| driver.stats(name, at)));
        let (queues, workers) = try_join(stats, supported(driver.workers(at))).await?;
        let mut totals = Totals::default();
        for s in &queues {
            totals.pending += s.pending;
            totals.delayed += s.delayed;
            totals.reserved += s.reserved;
            totals.failed += s.failed;
            totals.processed += s.processed;
            totals.failed_total += s.failed_total;
            totals.cancelled += s.cancelled;
            totals.paused += u64::from(s.paused);
            totals.latency_ms = totals.latency_ms.max(s.latency_ms);
        }
        Ok(Self { driver: driver.name(), at, queues, totals, workers, history: None })
    }

    /// [`Overview::gather`], and the throughput history of the last `span`.
    ///
    /// # Errors
    /// A backend error.
    pub async fn gather_with_history(queue: &Queue, span: Duration) -> Result<Self> {
        let since = queue.now().saturating_sub(i64::try_from(span.as_millis()).unwrap_or(i64::MAX));
        let history = supported(queue.driver().throughput(None, since));
        let (mut overview, history) = try_join(Self::gather(queue), history).await?;
        overview.history = history;
        Ok(overview)
    }
}

/// The answer, or `None` when the driver does not support the call.
async fn supported<T>(call: impl Future<Output = Result<T>>) -> Result<Option<T>> {
    match call.await {
        Ok(value) => Ok(Some(value)),
        Err(Error::Unsupported { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}
