//! The drain-features phases of `orcs bench` (issue #14): what the section 8 features cost a drain
//! when they are all on at once, against the plain drain in the same process, in alternating
//! rounds; and, to find which one costs what, each feature on its own.

use std::time::Duration;

use anyhow::{Context as _, bail};
use orcs_core::{DispatchOptions, Queue, QueueLimits, UniqueUntil};
use serde_json::{Value, json};

use super::{
    BULK_CHUNK, BenchJob, CONCURRENCY, QUEUE, Tidy, bulk_enqueue, check_pending, ops, rotation,
    summarize_modes, timed_drain_with, worker,
};

/// Rounds; each drains once in every mode, the modes in a rotating order so that a drift of the
/// machine's load falls on every mode alike.
const ROUNDS: usize = 5;
/// The queue's concurrency limit in the modes that set one: ten times the worker's slots, so it
/// never binds and what it costs is its bookkeeping alone.
const LIMIT: u32 = 10 * CONCURRENCY as u32;

/// Which features a drain runs with.
#[derive(Debug, Clone, Copy)]
struct Features {
    /// Every job holds a unique key until it finishes.
    unique: bool,
    /// The queue under a concurrency limit of [`LIMIT`].
    limit: bool,
    /// Heartbeats at the default 5 s, and the metrics recorder as the worker's observer with a
    /// render every second (as a scrape would).
    ops: bool,
}

impl Features {
    const PLAIN: Self = Self { unique: false, limit: false, ops: false };
    const ALL: Self = Self { unique: true, limit: true, ops: true };

    /// The mode's part of its JSON keys.
    fn key(self) -> &'static str {
        match (self.unique, self.limit, self.ops) {
            (false, false, false) => "plain",
            (true, false, false) => "unique",
            (false, true, false) => "limit",
            (false, false, true) => "ops",
            (true, true, true) => "all",
            _ => "mixed",
        }
    }
}

/// Drains `n` queued jobs [`ROUNDS`] times plain (no unique key, no limit, no heartbeat, no
/// observer) and with every feature of [`Features`] on; with `each`, also with each feature on
/// its own. Answers the median jobs/s of every mode, every round's figures, and the median and
/// the worst of the rounds' mode/plain ratios: `drain_features_{jps,vs_plain,vs_plain_min}` for
/// all features, `drain_features_<feature>_...` for one.
pub(super) async fn phase(queue: &Queue, n: u64, each: bool, tidy: &Tidy) -> anyhow::Result<Value> {
    let modes: Vec<Features> = if each {
        vec![
            Features::PLAIN,
            Features { unique: true, ..Features::PLAIN },
            Features { limit: true, ..Features::PLAIN },
            Features { ops: true, ..Features::PLAIN },
            Features::ALL,
        ]
    } else {
        vec![Features::PLAIN, Features::ALL]
    };
    let mut rates: Vec<Vec<f64>> = vec![Vec::with_capacity(ROUNDS); modes.len()];
    for (round, m) in rotation(ROUNDS, modes.len()) {
        tidy.now().await;
        let tag = format!("{round}{}", modes[m].key());
        let secs = drain_with(queue, n, &tag, modes[m]).await?;
        rates[m].push(n as f64 / secs);
    }
    queue.clear(QUEUE).await?;
    let mut out = serde_json::Map::new();
    out.insert("drain_features_rounds".into(), json!(ROUNDS));
    out.insert("drain_features_limit".into(), json!(LIMIT));
    let prefixes: Vec<String> = modes
        .iter()
        .map(|mode| match mode.key() {
            "all" => "drain_features".to_owned(),
            key => format!("drain_features_{key}"),
        })
        .collect();
    summarize_modes(&mut out, &prefixes, &rates);
    Ok(Value::Object(out))
}

/// One drain of `n` jobs queued for it with `features`; the limit is set only for its time.
/// Its unique keys start with `tag`, a drain's own.
async fn drain_with(queue: &Queue, n: u64, tag: &str, features: Features) -> anyhow::Result<f64> {
    queue.clear(QUEUE).await?;
    if features.unique {
        enqueue_unique(queue, n, tag).await?;
    } else {
        bulk_enqueue(queue, n).await?;
    }
    check_pending(queue, n, "drain-features").await?;
    if features.limit {
        queue.set_limits(QUEUE, QueueLimits::none().concurrency(LIMIT)).await?;
    }
    let base = worker(queue, Duration::from_secs(1));
    let secs = if features.ops {
        ops::scraped_drain(queue, n, base.heartbeat_interval(Duration::from_secs(5))).await
    } else {
        timed_drain_with(n, base.heartbeat_interval(Duration::ZERO)).await
    };
    if features.limit {
        queue.set_limits(QUEUE, QueueLimits::none()).await?;
    }
    let secs = secs?;
    // Each job freed its key as it finished.
    if features.unique && !dispatch_keyed(queue, tag).await? {
        bail!("drain-features: a unique key was still held after its job finished");
    }
    queue.clear(QUEUE).await?;
    Ok(secs)
}

/// Queues `n` jobs in batches, each with a unique key under `tag` (a key an earlier drain left
/// held would make a duplicate here); then checks that the keys are held: a second dispatch of
/// one is answered with the holder's id.
async fn enqueue_unique(queue: &Queue, n: u64, tag: &str) -> anyhow::Result<()> {
    let mut start = 0;
    while start < n {
        let end = (start + BULK_CHUNK as u64).min(n);
        let records = (start..end)
            .map(|i| {
                let options =
                    DispatchOptions::new().unique(format!("{tag}-{i}"), UniqueUntil::Finished);
                queue.prepare(&BenchJob::new(i), &options)
            })
            .collect::<orcs_core::Result<Vec<_>>>()?;
        queue.dispatch_records(records).await.context("enqueue with unique keys")?;
        start = end;
    }
    if dispatch_keyed(queue, tag).await? {
        bail!("drain-features: a unique key was not held while its job was queued");
    }
    Ok(())
}

/// Dispatches a job with the key of the drain's first job; answers whether it was stored (its key
/// was free) rather than answered with the holder's id.
async fn dispatch_keyed(queue: &Queue, tag: &str) -> anyhow::Result<bool> {
    let options = DispatchOptions::new().unique(format!("{tag}-0"), UniqueUntil::Finished);
    let record = queue.prepare(&BenchJob::new(0), &options)?;
    let id = record.id.clone();
    let stored = queue.dispatch_records(vec![record]).await?;
    Ok(stored.first() == Some(&id))
}
