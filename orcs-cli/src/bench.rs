//! `orcs bench`: the benchmark workload of SPEC section 7 on any driver, printing the same JSON keys
//! as the peer harnesses (BullMQ, apalis) so that one table can hold all three.
//!
//! Phases, each timed on its own: (a) enqueue one by one with 64 in flight, (b) enqueue in batches
//! of 1,000, (c) drain N queued jobs at concurrency 64, (d) latency from dispatch to handler start
//! at a steady 1,000 jobs/s, and (e) drain 50,000 jobs with a large backlog queued behind them.
//! Two more measure what flow control costs: (a) with a unique key per job, and (c) under a
//! global concurrency limit equal to the worker's slots, each against its plain phase in
//! alternating rounds ([`PAIRED_ROUNDS`]), so that both meet one table state and one stretch of
//! the machine's noise. Two measure workflows (issue #12): (c)
//! with the N jobs as the children of one batch, and the delay from a schedule's slot to its job's
//! start (opt-in: it runs for `--schedule-secs`, 30 s by default; see
//! [`Phase::ScheduleLatency`]). Two measure operations (issue #13, opt-in, in `bench_ops.rs`):
//! `/metrics` and the overview page with the backlog queued, and what heartbeats and metrics cost
//! a drain. One (issue #14, opt-in, in `bench_features.rs`) measures what the section 8 features
//! cost a drain when they are all on.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use orcs_core::{Job, JobContext, JobError, Queue, Registry, Worker};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Notify;

/// The benchmark's queue.
pub(crate) const QUEUE: &str = "bench";
const INFLIGHT: usize = 64;
const BULK_CHUNK: usize = 1000;
const CONCURRENCY: usize = 64;
const LATENCY_N: usize = 5000;
const LATENCY_RATE: u64 = 1000;
const BACKLOG_DRAIN_N: u64 = 50_000;
/// Rounds of the paired phases (`single-unique`, `drain-limited`): each runs its plain phase and
/// itself once a round, in a rotating order. Five, as `drain-features` runs: with three, one
/// noisy round moved the median (Redis keyed / plain 0.77, 0.84 and 0.87 in three runs of one
/// build, 0.78 to 1.03 in three runs of one phase). A warm-up round of each mode runs first and
/// is not counted: the first round of a process runs cold, as a service that has run a while
/// does not (memory keyed / plain 0.69, 0.72 and 0.84 in the first rounds of three runs of
/// round 33's bench, 0.83-0.88 in most others).
const PAIRED_ROUNDS: usize = 5;
/// A paired phase whose rounds are short runs more of them: rounds past [`PAIRED_ROUNDS`] until
/// its counted rounds have taken [`PAIRED_SECS`], at most [`PAIRED_MAX_ROUNDS`]. A memory
/// round of 50,000 dispatches takes about 0.1 s, and its rates spread threefold (285,000 to
/// 870,000 jobs/s in one process), so five of them left its ratio to chance; a PostgreSQL round
/// takes seconds and stays at five.
const PAIRED_SECS: Duration = Duration::from_secs(20);
/// See [`PAIRED_SECS`].
const PAIRED_MAX_ROUNDS: usize = 25;

/// What runs before every phase and every round of a paired phase: on PostgreSQL a
/// `VACUUM (ANALYZE)` of the bench's database, as autovacuum keeps a queue's table in production.
/// A phase's `clear` leaves every job it ran as dead rows: on a server with autovacuum off (as
/// development servers often run) each later round of a paired phase met more of them than the
/// one before (a drain's five plain rounds ran at 23k down to 9k jobs/s), so a round's ratio
/// depended on which mode ran first in it. Nothing on the other drivers.
pub(crate) struct Tidy {
    /// The PostgreSQL URL to vacuum through, if the bench runs there.
    #[cfg_attr(not(feature = "database"), allow(dead_code))]
    postgres: Option<String>,
}

impl Tidy {
    /// Vacuums the database of `config` if it is PostgreSQL.
    pub(crate) fn new(config: &orcs::Config) -> Self {
        let postgres = (config.driver == orcs::DriverKind::Database)
            .then(|| config.database_url.clone())
            .flatten()
            .filter(|url| url.starts_with("postgres://") || url.starts_with("postgresql://"));
        Self { postgres }
    }

    /// Runs the `VACUUM`. A failure only warns: the phase still runs, among the dead rows.
    pub(crate) async fn now(&self) {
        #[cfg(feature = "database")]
        if let Some(url) = &self.postgres {
            use orcs::sqlx::{ConnectOptions as _, Connection as _};
            let vacuumed = async {
                // A database's VACUUM may take over a second: not a slow statement to warn of.
                let options: orcs::sqlx::postgres::PgConnectOptions = url.parse()?;
                let mut conn = options.disable_statement_logging().connect().await?;
                orcs::sqlx::raw_sql("VACUUM (ANALYZE)").execute(&mut conn).await?;
                conn.close().await
            }
            .await;
            if let Err(e) = vacuumed {
                eprintln!(
                    "[orcs] could not VACUUM the bench's database ({e}); the phase runs among \
                     the dead rows of the ones before"
                );
            }
        }
    }
}

/// Which phases to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Phase {
    /// (a) enqueue one by one, 64 in flight.
    Single,
    /// (b) enqueue in batches of 1,000.
    Bulk,
    /// (c) drain N queued jobs at concurrency 64.
    Drain,
    /// (d) latency at a steady 1,000 jobs/s.
    Latency,
    /// (e) drain 50,000 jobs with a backlog of `--backlog` queued.
    Backlog,
    /// Enqueue N jobs in batches and leave them queued (to measure the backend's memory per job).
    Fill,
    /// (a) with a unique key per job (`until` finished): what uniqueness costs a dispatch. Runs
    /// [`PAIRED_ROUNDS`] rounds or more ([`PAIRED_SECS`]) of (a) plain and keyed, alternating,
    /// after a warm-up round of each; its ratio is the median of the rounds' keyed / plain.
    SingleUnique,
    /// (c) with a global concurrency limit equal to the worker's slots: what the limit costs. Runs
    /// [`PAIRED_ROUNDS`] rounds or more ([`PAIRED_SECS`]) of (c) unlimited and limited,
    /// alternating, after a warm-up round of each; its ratio is the median of the rounds'
    /// limited / unlimited. (Run after other drains, a single limited drain met a table that they
    /// had left full of dead rows, where the unlimited one had met a fresh one.)
    DrainLimited,
    /// (c) with the N jobs dispatched as the children of one batch with a `then` callback: what
    /// counting each child in its batch costs a drain.
    DrainBatch,
    /// Slot to job start of schedules firing every second: `--schedules` (10) due at the same
    /// second for `--schedule-secs` (30 s: 300 slots; cron has second resolution, so more slots
    /// per second means more schedules per tick, which one scheduler fires one after another).
    /// Not in the default phases.
    ScheduleLatency,
    /// `/metrics` and the overview page, served on a loopback port as `orcs dashboard` serves
    /// them, timed from a client with `--backlog` jobs queued (300 requests of each). Not in the
    /// default phases.
    OpsLatency,
    /// What heartbeats, metrics and the throughput history cost: (c) drained in alternating
    /// rounds without them and with them (heartbeats every 5 s and every 1 s, the metrics
    /// observer, a render every second). Not in the default phases.
    OpsCost,
    /// What the section 8 features cost together: (c) drained in alternating rounds plain and
    /// with every job under a unique key, a concurrency limit that does not bind, heartbeats and
    /// the metrics recorder on. Not in the default phases.
    DrainFeatures,
    /// drain-features with each feature on its own too (unique keys, the limit, heartbeats and
    /// metrics), to see which costs what. Not in the default phases.
    DrainFeaturesEach,
}

#[path = "bench_features.rs"]
mod features;
#[path = "bench_ops.rs"]
mod ops;

/// The no-op benchmark job: `{"i":<index>,"t":<ms since the epoch, float>,"pad":"xxx..."}`,
/// padded to exactly [`PAYLOAD_BYTES`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct BenchJob {
    i: u64,
    t: f64,
    pad: String,
}

/// The serialized size of every benchmark job, within the workload's 101-103 bytes. The index
/// and the float timestamp print with a varying number of digits, so the pad absorbs the
/// difference: a fixed size keeps runs comparable and the size check exact.
pub(crate) const PAYLOAD_BYTES: usize = 102;

impl BenchJob {
    fn new(i: u64) -> Self {
        let mut job = Self { i, t: epoch_ms(), pad: String::new() };
        let bare = serde_json::to_string(&job).map_or(0, |s| s.len());
        job.pad = "x".repeat(PAYLOAD_BYTES.saturating_sub(bare));
        job
    }
}

/// Where handlers report to the running phase (jobs are decoded inside the worker, so they cannot
/// hold a reference to it).
#[derive(Debug, Default)]
struct Recorder {
    done: AtomicU64,
    target: AtomicU64,
    latencies: Mutex<Vec<f64>>,
    record_latency: std::sync::atomic::AtomicBool,
    finished: Notify,
}

static RECORDER: LazyLock<Recorder> = LazyLock::new(Recorder::default);

impl Recorder {
    fn reset(&self, target: u64, record_latency: bool) {
        self.done.store(0, Ordering::SeqCst);
        self.target.store(target, Ordering::SeqCst);
        self.latencies.lock().expect("latency lock").clear();
        self.record_latency.store(record_latency, Ordering::SeqCst);
    }
}

impl Job for BenchJob {
    const NAME: &'static str = "job";
    const QUEUE: &'static str = QUEUE;
    const MAX_RETRIES: u32 = 0;

    async fn handle(&self, _ctx: &JobContext) -> Result<(), JobError> {
        let recorder = &*RECORDER;
        if recorder.record_latency.load(Ordering::Relaxed) {
            let latency = epoch_ms() - self.t;
            recorder.latencies.lock().expect("latency lock").push(latency);
        }
        Ok(())
    }
}

fn epoch_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1000.0
}

/// The benchmark's worker; it counts completed jobs (after the driver recorded them, as the
/// peers count their `completed` events) and wakes the phase at its target.
fn worker(queue: &Queue, sleep: Duration) -> Worker {
    Worker::new(queue.clone(), Registry::new().register::<BenchJob>().register::<SlotJob>())
        .queues([QUEUE])
        .concurrency(CONCURRENCY)
        .sleep(sleep)
        .on_event(|event| {
            if event.outcome == orcs_core::Outcome::Done {
                let recorder = &*RECORDER;
                let done = recorder.done.fetch_add(1, Ordering::Relaxed) + 1;
                if done == recorder.target.load(Ordering::Relaxed) {
                    recorder.finished.notify_one();
                }
            }
        })
}

async fn bulk_enqueue(queue: &Queue, n: u64) -> anyhow::Result<()> {
    let mut start = 0;
    while start < n {
        let end = (start + BULK_CHUNK as u64).min(n);
        queue.dispatch_many((start..end).map(BenchJob::new)).await.context("bulk enqueue")?;
        start = end;
    }
    Ok(())
}

async fn check_pending(queue: &Queue, expected: u64, phase: &str) -> anyhow::Result<()> {
    let stats = queue.stats(QUEUE).await?;
    if stats.pending != expected {
        bail!("{phase}: expected {expected} pending jobs, found {}", stats.pending);
    }
    Ok(())
}

async fn phase_single(queue: &Queue, n: u64, unique: bool) -> anyhow::Result<f64> {
    queue.clear(QUEUE).await?;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut lanes = tokio::task::JoinSet::new();
    for _ in 0..INFLIGHT {
        let (queue, next) = (queue.clone(), Arc::clone(&next));
        lanes.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, orcs_core::Error>(());
                }
                if unique {
                    let options = orcs_core::DispatchOptions::new()
                        .unique(format!("k{i}"), orcs_core::UniqueUntil::Finished);
                    queue.dispatch_with(BenchJob::new(i), options).await?;
                } else {
                    queue.dispatch(BenchJob::new(i)).await?;
                }
            }
        });
    }
    while let Some(lane) = lanes.join_next().await {
        lane.context("an enqueue lane panicked")??;
    }
    let secs = started.elapsed().as_secs_f64();
    check_pending(queue, n, "single").await?;
    queue.clear(QUEUE).await?;
    Ok(secs)
}

async fn phase_bulk(queue: &Queue, n: u64) -> anyhow::Result<f64> {
    queue.clear(QUEUE).await?;
    let started = Instant::now();
    bulk_enqueue(queue, n).await?;
    let secs = started.elapsed().as_secs_f64();
    check_pending(queue, n, "bulk").await?;
    queue.clear(QUEUE).await?;
    Ok(secs)
}

/// Drains `n` jobs with `backlog` queued in all; times from worker start to the n-th completion.
async fn phase_drain(queue: &Queue, n: u64, backlog: u64) -> anyhow::Result<f64> {
    queue.clear(QUEUE).await?;
    bulk_enqueue(queue, backlog).await?;
    let secs = timed_drain(queue, n).await?;
    queue.clear(QUEUE).await?;
    Ok(secs)
}

/// One drain of `n` jobs, with the queue under a concurrency limit equal to the worker's slots
/// if `limited` (set only for the drain's time).
async fn phase_drain_limited(queue: &Queue, n: u64, limited: bool) -> anyhow::Result<f64> {
    if !limited {
        return phase_drain(queue, n, n).await;
    }
    let limit = orcs_core::QueueLimits::none().concurrency(CONCURRENCY as u32);
    queue.set_limits(QUEUE, limit).await?;
    let secs = phase_drain(queue, n, n).await;
    queue.set_limits(QUEUE, orcs_core::QueueLimits::none()).await?;
    secs
}

/// A paired phase: a warm-up round of `run(false)` (the plain phase) and `run(true)`, not
/// counted, then [`PAIRED_ROUNDS`] rounds of both in a rotating order (more while they take less
/// than [`PAIRED_SECS`]), each timing `n` jobs. Writes `<key>_jps` (the median of `run(true)`),
/// `<key>_plain_jps`, every round's figures, and `<key>_vs_plain` / `<key>_vs_plain_min` (the
/// median and the worst of the rounds' ratios).
async fn paired<F, Fut>(
    out: &mut serde_json::Map<String, Value>,
    key: &str,
    n: u64,
    tidy: &Tidy,
    run: F,
) -> anyhow::Result<()>
where
    F: Fn(bool) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<f64>>,
{
    for mode in [false, true] {
        tidy.now().await;
        run(mode).await?;
    }
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(), Vec::new()];
    let started = Instant::now();
    let mut round = 0;
    while round < PAIRED_ROUNDS || (round < PAIRED_MAX_ROUNDS && started.elapsed() < PAIRED_SECS) {
        for mode in round_order(round, 2) {
            tidy.now().await;
            let secs = run(mode == 1).await?;
            rates[mode].push(n as f64 / secs);
        }
        round += 1;
    }
    summarize_modes(out, &[format!("{key}_plain"), key.to_owned()], &rates);
    Ok(())
}

/// Runs the benchmark worker until `n` jobs completed; times from its start to the n-th.
async fn timed_drain(queue: &Queue, n: u64) -> anyhow::Result<f64> {
    timed_drain_with(n, worker(queue, Duration::from_secs(1))).await
}

/// [`timed_drain`] with `worker` (the benchmark's [`worker`], configured further).
async fn timed_drain_with(n: u64, worker: Worker) -> anyhow::Result<f64> {
    RECORDER.reset(n, false);
    let finished = RECORDER.finished.notified();
    let mut finished = std::pin::pin!(finished);
    finished.as_mut().enable();
    let started = Instant::now();
    let handle = worker.spawn();
    let limit = Duration::from_secs(120.max(n / 500));
    let outcome = tokio::time::timeout(limit, finished).await;
    let secs = started.elapsed().as_secs_f64();
    handle.shutdown().await?;
    if outcome.is_err() {
        bail!(
            "drain: only {} of {n} jobs ran within {limit:?}",
            RECORDER.done.load(Ordering::SeqCst)
        );
    }
    Ok(secs)
}

/// Dispatches `n` jobs as one batch with a `then` callback and drains the children; answers the
/// seconds of the dispatch and of the drain. The batch must count every child, and dispatch
/// `then` once they are all done.
async fn phase_drain_batch(queue: &Queue, n: u64) -> anyhow::Result<(f64, f64)> {
    queue.clear(QUEUE).await?;
    let started = Instant::now();
    let mut batch = queue.batch();
    for i in 0..n {
        batch = batch.add(BenchJob::new(i));
    }
    let id = batch.then(BenchJob::new(n)).dispatch().await.context("batch dispatch")?;
    let dispatch_secs = started.elapsed().as_secs_f64();
    check_pending(queue, n, "drain-batch").await?;
    let secs = timed_drain(queue, n).await?;
    let info = queue.batch_info(&id).await?.context("the batch is gone after its drain")?;
    let then = info.then.as_ref().map(|then| then.state);
    if (info.total, info.processed, info.pending) != (n, n, 0)
        || then != Some(orcs_core::CallbackState::Dispatched)
    {
        bail!(
            "drain-batch: the batch counted total {}, processed {}, pending {}, then {then:?} \
             after {n} children completed",
            info.total,
            info.processed,
            info.pending
        );
    }
    queue.clear(QUEUE).await?;
    Ok((dispatch_secs, secs))
}

/// The job of the schedule-latency phase: it records how long after its slot it started (the
/// slot is the time of its id, a ULID; see [`orcs_core::slot_job_id`]).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SlotJob {
    s: u32,
}

impl Job for SlotJob {
    const NAME: &'static str = "slot";
    const QUEUE: &'static str = QUEUE;
    const MAX_RETRIES: u32 = 0;

    async fn handle(&self, ctx: &JobContext) -> Result<(), JobError> {
        let slot = ulid_ms(ctx.id()).ok_or_else(|| JobError::fatal("the id is not a ULID"))?;
        let late = epoch_ms() - slot as f64;
        SLOTS.lock().expect("slots lock").push((self.s, slot, late));
        Ok(())
    }
}

/// (schedule, slot, ms from slot to start) of every slot job that ran.
static SLOTS: Mutex<Vec<(u32, i64, f64)>> = Mutex::new(Vec::new());

/// The time part of a ULID (its first ten Crockford base-32 characters), in milliseconds.
fn ulid_ms(id: &str) -> Option<i64> {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    id.as_bytes().get(..10)?.iter().try_fold(0_i64, |ms, c| {
        let digit = ALPHABET.iter().position(|a| a == c)?;
        Some(ms * 32 + i64::try_from(digit).ok()?)
    })
}

/// Runs `count` schedules every second for `secs` on the benchmark worker and measures from each
/// slot to its job's start. Every slot must run once.
async fn phase_schedule_latency(queue: &Queue, count: u32, secs: u64) -> anyhow::Result<Value> {
    queue.clear(QUEUE).await?;
    let names: Vec<String> = (0..count).map(|i| format!("bench-slot-{i}")).collect();
    // A schedule left by an earlier run would fire its missed slots; start afresh.
    for name in &names {
        queue.forget_schedule(name).await?;
    }
    let schedules = (0..count)
        .map(|s| orcs_core::Schedule::new(&names[s as usize], "* * * * * *", SlotJob { s }))
        .collect::<orcs_core::Result<Vec<_>>>()?;
    SLOTS.lock().expect("slots lock").clear();
    RECORDER.reset(u64::MAX, false);
    let handle = worker(queue, Duration::from_secs(1)).schedules(schedules).spawn();
    tokio::time::sleep(Duration::from_secs(secs) + Duration::from_millis(500)).await;
    handle.shutdown().await?;
    for name in &names {
        queue.forget_schedule(name).await?;
    }
    queue.clear(QUEUE).await?;
    let slots = std::mem::take(&mut *SLOTS.lock().expect("slots lock"));
    if slots.is_empty() {
        bail!("schedule-latency: no slot job ran in {secs} s");
    }
    // Each slot once, and no gap between a schedule's first and last slot.
    let mut seen = std::collections::HashSet::new();
    let mut range: std::collections::HashMap<u32, (i64, i64)> = std::collections::HashMap::new();
    for (s, slot, _) in &slots {
        if !seen.insert((*s, *slot)) {
            bail!("schedule-latency: slot {slot} of schedule {s} ran twice");
        }
        let entry = range.entry(*s).or_insert((*slot, *slot));
        *entry = (entry.0.min(*slot), entry.1.max(*slot));
    }
    let expected: i64 = range.values().map(|(first, last)| (last - first) / 1000 + 1).sum();
    let missing = expected - slots.len() as i64;
    if missing != 0 {
        bail!("schedule-latency: {missing} slots between the first and the last did not run");
    }
    let mut late: Vec<f64> = slots.iter().map(|(_, _, late)| *late).collect();
    late.sort_by(f64::total_cmp);
    Ok(json!({
        "schedule_schedules": count,
        "schedule_secs": secs,
        "schedule_slots": late.len(),
        "schedule_p50_ms": r3(percentile(&late, 50.0)),
        "schedule_p90_ms": r3(percentile(&late, 90.0)),
        "schedule_p99_ms": r3(percentile(&late, 99.0)),
        "schedule_max_ms": r3(late[late.len() - 1]),
    }))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    // Nearest rank, as the peer harnesses compute it.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

async fn phase_latency(queue: &Queue) -> anyhow::Result<Value> {
    queue.clear(QUEUE).await?;
    RECORDER.reset(LATENCY_N as u64, true);
    let finished = RECORDER.finished.notified();
    let mut finished = std::pin::pin!(finished);
    finished.as_mut().enable();
    let handle = worker(queue, Duration::from_secs(5)).spawn();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let sent = Arc::new(AtomicUsize::new(0));
    let mut adds = tokio::task::JoinSet::new();
    let started = Instant::now();
    while sent.load(Ordering::Relaxed) < LATENCY_N {
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        let due = ((elapsed_ms * LATENCY_RATE as f64 / 1000.0) as usize + 1).min(LATENCY_N);
        while sent.load(Ordering::Relaxed) < due {
            let i = sent.fetch_add(1, Ordering::Relaxed) as u64;
            let queue = queue.clone();
            adds.spawn(async move { queue.dispatch(BenchJob::new(i)).await });
        }
        if due < LATENCY_N {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let send_secs = started.elapsed().as_secs_f64();
    while let Some(add) = adds.join_next().await {
        add.context("a dispatch task panicked")??;
    }
    let outcome = tokio::time::timeout(Duration::from_secs(60), finished).await;
    handle.shutdown().await?;
    if outcome.is_err() {
        bail!("latency: only {} of {LATENCY_N} jobs ran", RECORDER.done.load(Ordering::SeqCst));
    }
    let mut lat = RECORDER.latencies.lock().expect("latency lock").clone();
    lat.sort_by(f64::total_cmp);
    let mean = lat.iter().sum::<f64>() / lat.len() as f64;
    Ok(json!({
        "latency_n": LATENCY_N,
        "latency_rate": LATENCY_RATE,
        "latency_p50_ms": r3(percentile(&lat, 50.0)),
        "latency_p90_ms": r3(percentile(&lat, 90.0)),
        "latency_p99_ms": r3(percentile(&lat, 99.0)),
        "latency_max_ms": r3(lat[lat.len() - 1]),
        "latency_mean_ms": r3(mean),
        "latency_rate_achieved": r3(LATENCY_N as f64 / send_secs),
    }))
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The order in which `modes` modes run over `rounds` rounds: every mode once a round, the first
/// mode rotating, so that a drift of the machine's load falls on every mode alike. Yields
/// `(round, mode)`.
fn rotation(rounds: usize, modes: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..rounds).flat_map(move |round| round_order(round, modes).map(move |m| (round, m)))
}

/// The modes of round `round` of [`rotation`], in the order they run.
fn round_order(round: usize, modes: usize) -> impl Iterator<Item = usize> {
    (0..modes).map(move |k| (round + k) % modes)
}

/// Writes each mode's figures from `rates[mode][round]` (jobs/s) under its `prefixes[mode]`:
/// `<prefix>_jps` (the median), `<prefix>_jps_rounds` (every round: on a busy machine the spread
/// says how far to trust a ratio) and, for every mode but the first (the baseline), the median and
/// the worst over rounds of that round's ratio to the baseline, `<prefix>_vs_plain` and
/// `<prefix>_vs_plain_min`.
fn summarize_modes(
    out: &mut serde_json::Map<String, Value>,
    prefixes: &[String],
    rates: &[Vec<f64>],
) {
    for (m, (prefix, mode)) in prefixes.iter().zip(rates).enumerate() {
        let mut sorted = mode.clone();
        sorted.sort_by(f64::total_cmp);
        out.insert(format!("{prefix}_jps"), json!(percentile(&sorted, 50.0).round()));
        let each: Vec<u64> = mode.iter().map(|r| r.round() as u64).collect();
        out.insert(format!("{prefix}_jps_rounds"), json!(each));
        if m > 0 {
            let mut ratios: Vec<f64> = mode.iter().zip(&rates[0]).map(|(r, p)| r / p).collect();
            ratios.sort_by(f64::total_cmp);
            out.insert(format!("{prefix}_vs_plain"), json!(r3(percentile(&ratios, 50.0))));
            out.insert(format!("{prefix}_vs_plain_min"), json!(r3(ratios[0])));
        }
    }
}

fn secs_and_rate(out: &mut serde_json::Map<String, Value>, key: &str, n: u64, secs: f64) {
    out.insert(format!("{key}_secs"), json!(r3(secs)));
    out.insert(format!("{key}_jps"), json!((n as f64 / secs).round() as u64));
}

/// Runs the phases on `queue` and returns one JSON object with the peers' keys. A failed phase
/// leaves `<phase>_error` instead of its figures.
pub(crate) async fn run(
    queue: &Queue,
    driver: &str,
    n: u64,
    backlog: u64,
    phases: &[Phase],
    schedules: (u32, u64),
    tidy: &Tidy,
) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("impl".into(), json!("orcs"));
    out.insert("impl_version".into(), json!(env!("CARGO_PKG_VERSION")));
    out.insert("driver".into(), json!(driver));
    out.insert("runtime".into(), json!("tokio"));
    out.insert("n".into(), json!(n));
    out.insert(
        "payload_bytes".into(),
        json!(serde_json::to_string(&BenchJob::new(n - 1)).map_or(0, |s| s.len())),
    );
    out.insert("inflight".into(), json!(INFLIGHT));
    out.insert("bulk_chunk".into(), json!(BULK_CHUNK));
    out.insert("concurrency".into(), json!(CONCURRENCY));
    for phase in phases {
        tidy.now().await;
        let result = match phase {
            Phase::Single => phase_single(queue, n, false)
                .await
                .map(|s| secs_and_rate(&mut out, "enqueue_single", n, s)),
            Phase::SingleUnique => {
                paired(&mut out, "enqueue_single_unique", n, tidy, |keyed| {
                    phase_single(queue, n, keyed)
                })
                .await
            }
            Phase::DrainLimited => {
                paired(&mut out, "drain_limited", n, tidy, |limited| {
                    phase_drain_limited(queue, n, limited)
                })
                .await
            }
            Phase::Bulk => {
                phase_bulk(queue, n).await.map(|s| secs_and_rate(&mut out, "enqueue_bulk", n, s))
            }
            Phase::Drain => {
                phase_drain(queue, n, n).await.map(|s| secs_and_rate(&mut out, "drain", n, s))
            }
            Phase::DrainBatch => phase_drain_batch(queue, n).await.map(|(dispatch, drain)| {
                secs_and_rate(&mut out, "enqueue_batch", n, dispatch);
                secs_and_rate(&mut out, "drain_batch", n, drain);
            }),
            Phase::ScheduleLatency => {
                phase_schedule_latency(queue, schedules.0, schedules.1).await.map(|fields| {
                    if let Value::Object(fields) = fields {
                        out.extend(fields);
                    }
                })
            }
            Phase::Latency => phase_latency(queue).await.map(|fields| {
                if let Value::Object(fields) = fields {
                    out.extend(fields);
                }
            }),
            Phase::Backlog => phase_drain(queue, BACKLOG_DRAIN_N, backlog).await.map(|s| {
                out.insert("backlog".into(), json!(backlog));
                secs_and_rate(&mut out, "drain_backlog", BACKLOG_DRAIN_N, s);
            }),
            Phase::OpsLatency | Phase::OpsCost => {
                let fields = if *phase == Phase::OpsLatency {
                    ops::phase_latency(queue, backlog).await
                } else {
                    ops::phase_cost(queue, n, tidy).await
                };
                fields.map(|fields| {
                    if let Value::Object(fields) = fields {
                        out.extend(fields);
                    }
                })
            }
            Phase::DrainFeatures | Phase::DrainFeaturesEach => {
                features::phase(queue, n, *phase == Phase::DrainFeaturesEach, tidy).await.map(
                    |fields| {
                        if let Value::Object(fields) = fields {
                            out.extend(fields);
                        }
                    },
                )
            }
            Phase::Fill => {
                async {
                    queue.clear(QUEUE).await?;
                    bulk_enqueue(queue, n).await?;
                    check_pending(queue, n, "fill").await
                }
                .await
            }
        };
        let name = match phase {
            Phase::Single => "enqueue_single",
            Phase::Bulk => "enqueue_bulk",
            Phase::Drain => "drain",
            Phase::Latency => "latency",
            Phase::Backlog => "drain_backlog",
            Phase::Fill => "fill",
            Phase::SingleUnique => "enqueue_single_unique",
            Phase::DrainLimited => "drain_limited",
            Phase::DrainBatch => "drain_batch",
            Phase::ScheduleLatency => "schedule",
            Phase::OpsLatency => "ops_latency",
            Phase::OpsCost => "ops_cost",
            Phase::DrainFeatures | Phase::DrainFeaturesEach => "drain_features",
        };
        match result {
            Ok(()) => eprintln!("[orcs] {name}: done"),
            Err(e) => {
                eprintln!("[orcs] {name} FAILED: {e:#}");
                out.insert(format!("{name}_error"), json!(format!("{e:#}")));
            }
        }
    }
    // The acceptance figure of issue #12: a batch's children drain at >= 70 % of a plain drain.
    if let (Some(plain), Some(batch)) = (
        out.get("drain_jps").and_then(Value::as_f64),
        out.get("drain_batch_jps").and_then(Value::as_f64),
    ) && plain > 0.0
    {
        out.insert("drain_batch_vs_drain".into(), json!(r3(batch / plain)));
    }
    if phases.contains(&Phase::Fill) {
        return Value::Object(out);
    }
    if let Err(e) = queue.clear(QUEUE).await {
        eprintln!("[orcs] could not clear the bench queue: {e}");
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_postgres_database_is_vacuumed_between_rounds() {
        let tidy = |driver, url: Option<&str>| {
            let mut config = orcs::Config::default();
            config.driver = driver;
            config.database_url = url.map(str::to_owned);
            Tidy::new(&config).postgres
        };
        let pg = "postgres://postgres@127.0.0.1:5432/bench";
        assert_eq!(tidy(orcs::DriverKind::Database, Some(pg)), Some(pg.to_owned()));
        let pg = "postgresql://127.0.0.1/bench";
        assert_eq!(tidy(orcs::DriverKind::Database, Some(pg)), Some(pg.to_owned()));
        assert_eq!(tidy(orcs::DriverKind::Database, Some("sqlite:///tmp/bench.db")), None);
        assert_eq!(tidy(orcs::DriverKind::Database, None), None);
        // A database URL left in the environment does not make another driver's bench vacuum.
        assert_eq!(tidy(orcs::DriverKind::Redis, Some(pg)), None);
        assert_eq!(tidy(orcs::DriverKind::Memory, Some(pg)), None);
    }

    #[test]
    fn rotation_runs_every_mode_once_a_round_and_rotates_the_first() {
        let order: Vec<(usize, usize)> = rotation(3, 3).collect();
        assert_eq!(order, [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (1, 0), (2, 2), (2, 0), (2, 1)]);
    }

    #[test]
    fn summarize_modes_gives_medians_and_ratios_by_round() {
        let mut out = serde_json::Map::new();
        let prefixes = ["plain".to_owned(), "all".to_owned()];
        let rates = [vec![100.0, 200.0, 300.0], vec![90.0, 100.0, 285.0]];
        summarize_modes(&mut out, &prefixes, &rates);
        assert_eq!(out["plain_jps"], json!(200.0));
        assert_eq!(out["all_jps"], json!(100.0));
        assert_eq!(out["all_jps_rounds"], json!([90, 100, 285]));
        // Ratios by round: 0.9, 0.5, 0.95; not the ratio of the medians (0.5).
        assert_eq!(out["all_vs_plain"], json!(0.9));
        assert_eq!(out["all_vs_plain_min"], json!(0.5));
        assert!(!out.contains_key("plain_vs_plain"));
    }
}
