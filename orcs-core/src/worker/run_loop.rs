//! The worker loop: claims jobs into free slots, recovers expired leases, waits when idle,
//! writes settles in batches, and drains on shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::EventFn;
use super::events::{WorkerEvent, WorkerSummary};
use super::options::WorkerOptions;
use super::pool::{Handed, Pool};
use crate::backoff::retry_delay;
use crate::clock::Millis;
use crate::driver::BoxDriver;
use crate::error::Error;
use crate::error::Result;
use crate::job::{JobContext, Shared};
use crate::middleware::Middleware;
use crate::queue::Queue;
use crate::record::{
    ClaimRequest, Lease, Reserved, Settle, SettleMark, Settling, SettlingMarks, Touch,
};
use crate::registry::Registry;

/// The state shared by the worker loop and its job tasks.
pub(super) struct Runner {
    pub(super) queue: Queue,
    pub(super) driver: BoxDriver,
    pub(super) registry: Registry,
    pub(super) options: WorkerOptions,
    pub(super) on_event: Option<EventFn>,
    /// The middleware around every attempt's `handle`, outermost first.
    pub(super) layers: Vec<Arc<dyn Middleware>>,
    /// Where job tasks send their settles to be written in batches (not for `work_one`).
    pub(super) settles: Option<Arc<SettleQueue>>,
    /// Set when the drain gave up on handing jobs back (the backend is down).
    gave_up: AtomicBool,
    /// The jobs running now, for the periodic touch (progress, cancel requests). Keyed by a
    /// number of this worker's, not the job's id: no copy of the id per attempt, and an integer
    /// hash; the touch's rare cancel answers find their job by scanning.
    running: RunningJobs,
    /// The key of the next attempt in `running`.
    next_running: AtomicU64,
    /// Whether the driver answers touch (set false on `Unsupported`).
    touch_supported: AtomicBool,
    /// The heartbeat's counts and the observer, told of each attempt's start and end.
    pub(super) watch: super::heartbeat::Watch,
}

/// The jobs a worker is running, shared by its run loop and its heartbeat (which lists their
/// ids at each beat instead of keeping a set of its own on the hot path).
#[derive(Clone, Default)]
pub(super) struct RunningJobs(Arc<Mutex<HashMap<u64, RunningJob>>>);

impl RunningJobs {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, RunningJob>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The ids of the jobs running now, sorted, each once (a job recovered and claimed again by
    /// the same worker runs twice for a moment).
    pub(super) fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.lock().values().map(|job| job.lease.id.clone()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// What the run loop knows of a running job.
struct RunningJob {
    lease: Arc<Lease>,
    shared: Arc<Shared>,
}

/// Removes a job from [`Runner::running`] when its attempt ends, however it ends.
pub(super) struct RunningGuard<'a> {
    runner: &'a Runner,
    key: u64,
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.runner.running.lock().remove(&self.key);
    }
}

impl RunningGuard<'_> {
    /// The job's code ended: drops its entry and answers its lease, which the entry shared
    /// (copied only if a touch holds it at this very moment).
    pub(super) fn end(self, lease: Arc<Lease>) -> Lease {
        drop(self);
        Arc::try_unwrap(lease).unwrap_or_else(|shared| Lease::clone(&shared))
    }
}

/// A settle waiting to be written, with who takes its result.
pub(super) type Pending = (Settle, Reply);

/// Who takes a written settle's result.
pub(super) enum Reply {
    /// The attempt's task, waiting on this channel. The settle comes back with its result, so
    /// that a retry needs no copy made in advance.
    Wait(oneshot::Sender<(Settle, Result<()>)>),
    /// Nobody waits: a completion its task handed over (see [`Handed`]).
    Handed(Handed),
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Wait(_) => "Reply::Wait",
            Self::Handed(_) => "Reply::Handed",
        })
    }
}

/// Most settles written in one backend call.
const SETTLE_BATCH: usize = 256;

/// The settles on their way to the backend: queued by job tasks, taken in batches by the writer
/// ([`write_settles`]). A shared queue rather than a channel so that a claim can read what is in
/// it: the jobs of a limited queue whose code ended do not count as running while their settles
/// are written ([`Settling`]).
///
/// Each settle queued is marked with the writer and its number in the queue's order
/// ([`SettleMark`]): a driver that records the highest number it wrote per writer counts the
/// settling jobs still unwritten from the marks, without reading their rows ([`Settling::marks`]).
#[derive(Debug)]
pub(super) struct SettleQueue {
    state: Mutex<SettleState>,
    wake: Notify,
    writer: Arc<str>,
}

impl Default for SettleQueue {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            wake: Notify::new(),
            writer: crate::id::new_job_id().into(),
        }
    }
}

#[derive(Debug, Default)]
struct SettleState {
    queued: Vec<Pending>,
    /// The number of the last settle queued.
    seq: i64,
    /// The batch the writer is writing now.
    writing: Option<Arc<Vec<Settle>>>,
    /// The writer stopped: settles are written by their tasks directly.
    closed: bool,
    /// The writer found nothing to write and waits to be woken.
    idle: bool,
}

impl SettleQueue {
    fn lock(&self) -> MutexGuard<'_, SettleState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hands a completion to the writer; answers it back if the writer has stopped.
    pub(super) fn hand(&self, settle: Settle, handed: Handed) -> Option<(Settle, Handed)> {
        match self.send((settle, Reply::Handed(handed))) {
            None => None,
            Some((settle, Reply::Handed(handed))) => Some((settle, handed)),
            Some((_, Reply::Wait(_))) => unreachable!("a handed completion comes back as one"),
        }
    }

    /// Queues a settle for the writer; answers it back if the writer has stopped.
    pub(super) fn send(&self, pending: Pending) -> Option<Pending> {
        let idle = {
            let mut state = self.lock();
            if state.closed {
                return Some(pending);
            }
            // Numbered under the lock that orders the queue, so the writer's batches are
            // numbered in the order they are written.
            state.seq += 1;
            let mark = SettleMark::new(Arc::clone(&self.writer), state.seq);
            let (settle, reply) = pending;
            state.queued.push((settle.marked(mark), reply));
            std::mem::take(&mut state.idle)
        };
        // A busy writer takes this settle with its next batch, unwoken.
        if idle {
            self.wake.notify_one();
        }
        None
    }
}

impl SettleState {
    /// The settles on their way: the batch being written, then the queued ones.
    fn settling(&self) -> impl Iterator<Item = &Settle> {
        let writing = self.writing.iter().flat_map(|batch| batch.iter());
        writing.chain(self.queued.iter().map(|(settle, _)| settle))
    }
}

impl Settling for SettleQueue {
    fn tokens(&self) -> Vec<String> {
        self.lock().settling().map(|settle| settle.lease.token.clone()).collect()
    }

    fn marks(&self, queue: &str) -> Option<SettlingMarks> {
        let marks = self
            .lock()
            .settling()
            .filter(|settle| settle.lease.queue == queue)
            .filter_map(|settle| Some((settle.mark.as_ref()?.seq, settle.lease.expires_at)))
            .collect();
        Some(SettlingMarks::new(Arc::clone(&self.writer), marks))
    }

    fn each_lease(&self, each: &mut dyn FnMut(&Lease)) -> bool {
        self.lock().settling().for_each(|settle| each(&settle.lease));
        true
    }
}

/// Writes settles: takes every settle queued meanwhile and writes them in one
/// [`crate::Driver::settle`] call, so that jobs finishing together cost one round trip, not one
/// each. Runs inside the worker's own task set; ends when `done` fires and the queue is empty.
async fn write_settles(queue: Queue, settles: Arc<SettleQueue>, done: CancellationToken) {
    /// Closes the queue however the writer ends (an abort included): what is left in it is
    /// dropped, so that its tasks learn the writer stopped instead of waiting for ever.
    struct Close<'a>(&'a SettleQueue);
    impl Drop for Close<'_> {
        fn drop(&mut self) {
            let mut state = self.0.lock();
            state.closed = true;
            state.queued.clear();
            state.writing = None;
        }
    }
    let _close = Close(&settles);
    // One batch allocation and one reply list for the writer's life: the claim's view of the
    // batch being written is a clone of this `Arc`, dropped again before the replies go out.
    let mut writing: Arc<Vec<Settle>> = Arc::new(Vec::with_capacity(SETTLE_BATCH));
    let mut replies = Vec::with_capacity(SETTLE_BATCH);
    loop {
        let idle = {
            // Moved from queued to writing in one step, so a claim sees every settle.
            let mut state = settles.lock();
            if state.queued.is_empty() {
                state.idle = true;
                true
            } else {
                let n = state.queued.len().min(SETTLE_BATCH);
                let batch = unique(&mut writing);
                for (settle, reply) in state.queued.drain(..n) {
                    batch.push(settle);
                    replies.push(reply);
                }
                state.writing = Some(Arc::clone(&writing));
                false
            }
        };
        if idle {
            if done.is_cancelled() {
                // Every job task has ended and nothing is left to write.
                return;
            }
            // A send while idle wakes this (a wake sent before the wait is kept for it).
            tokio::select! {
                () = settles.wake.notified() => {}
                () = done.cancelled() => {}
            }
            continue;
        }
        let results = queue.driver().settle(&writing, queue.now()).await;
        settles.lock().writing = None;
        let written = unique(&mut writing).drain(..);
        for ((settle, reply), result) in written.zip(replies.drain(..)).zip(results) {
            match reply {
                // The job task may be gone (its worker was dropped); nothing waits for this.
                Reply::Wait(reply) => {
                    let _ = reply.send((settle, result));
                }
                Reply::Handed(handed) => handed.written(settle, result),
            }
        }
    }
}

/// The writer's batch, for writing: claims read it under the queue's lock only, so the writer
/// holds its one reference whenever it writes; a copy otherwise, to stay correct.
fn unique(writing: &mut Arc<Vec<Settle>>) -> &mut Vec<Settle> {
    if Arc::get_mut(writing).is_none() {
        *writing = Arc::new(Vec::clone(writing));
    }
    Arc::get_mut(writing).expect("a fresh Arc has one reference")
}

/// A running job's hold on one of the worker's `concurrency` slots. The job lets go of it when
/// its code has finished, before its result is recorded, so that the worker's next claim overlaps
/// that write instead of waiting for it (two round trips per batch become one).
pub(super) struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    freed: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Give the permit back before waking the worker loop, so it sees the free slot.
        drop(self.permit.take());
        self.freed.notify_one();
    }
}

/// Attempts a worker keeps in flight per slot: running, or ended with their result still being
/// written. The settle writer writes a batch while the next claim runs; with room for one batch
/// more than the slots (2 per slot), a PostgreSQL drain's claims were cut short by the settles
/// still on their way, where with 4 they fill the free slots (BENCHMARKS.md, round 24: drain
/// +12 % on PostgreSQL, Redis and memory no slower, 8 no better than 4).
const IN_FLIGHT_PER_SLOT: usize = 4;

/// Attempts a worker of `concurrency` slots keeps in flight: [`IN_FLIGHT_PER_SLOT`] per slot, but
/// two for a worker of one slot. One slot is how an application asks for its jobs one at a
/// time; its next job may start while the last one's result is written, but not three more
/// (a batch's first failure then cancels the rest with at most one more child started, and a
/// crash leaves at most two results unwritten).
fn in_flight(concurrency: usize) -> usize {
    if concurrency <= 1 { 2 } else { concurrency.saturating_mul(IN_FLIGHT_PER_SLOT) }
}

/// How long, after the shutdown timeout, jobs get to be handed back before the worker stops
/// without them (their leases expire and recovery returns them to pending).
const HAND_BACK_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a worker reports on its running jobs (progress) and learns of cancels: a cancelled
/// job sees `ctx.cancelled()` within about this long.
const TOUCH_INTERVAL: Duration = Duration::from_millis(400);

/// How often the worker compares its clock with the backend's.
const CLOCK_CHECK_INTERVAL: Duration = Duration::from_secs(60);

impl Runner {
    pub(super) fn new(
        queue: Queue,
        registry: Registry,
        options: WorkerOptions,
        on_event: Option<EventFn>,
        layers: Vec<Arc<dyn Middleware>>,
    ) -> Self {
        Self {
            layers,
            driver: queue.driver().clone(),
            queue,
            registry,
            options,
            on_event,
            settles: None,
            gave_up: AtomicBool::new(false),
            running: RunningJobs::default(),
            next_running: AtomicU64::new(0),
            touch_supported: AtomicBool::new(true),
            watch: super::heartbeat::Watch::default(),
        }
    }

    pub(super) fn claim_request(&self, max: usize, now: Millis) -> ClaimRequest<'_> {
        let mut request = ClaimRequest::new(&self.options.queues, max, now);
        request.clock = Some(&**self.queue.clock());
        request.default_timeout_ms = duration_ms(self.options.default_timeout);
        request.grace_ms = duration_ms(self.options.lease_grace);
        request.settling = self.settles.as_deref().map(|queue| queue as &dyn Settling);
        request
    }

    /// The jobs this worker is running, for its heartbeat.
    pub(super) fn running_set(&self) -> RunningJobs {
        self.running.clone()
    }

    /// Registers a job as running until the guard drops.
    pub(super) fn running(&self, lease: Arc<Lease>, ctx: &JobContext) -> RunningGuard<'_> {
        let job = RunningJob { lease, shared: Arc::clone(&ctx.shared) };
        let key = self.next_running.fetch_add(1, Ordering::Relaxed);
        self.running.lock().insert(key, job);
        RunningGuard { runner: self, key }
    }

    /// Sends the running jobs' new progress and stops those whose cancel was asked for.
    async fn touch(&self) {
        if !self.touch_supported.load(Ordering::Relaxed) {
            return;
        }
        let touches: Vec<Touch> = self
            .running
            .lock()
            .values()
            .map(|job| {
                let progress = job.shared.progress.lock().unwrap_or_else(|p| p.into_inner()).take();
                Touch::new(Lease::clone(&job.lease), progress)
            })
            .collect();
        if touches.is_empty() {
            return;
        }
        match self.driver.touch(&touches, self.queue.now()).await {
            Ok(cancelled) => {
                let running = self.running.lock();
                for id in cancelled {
                    for job in running.values().filter(|job| job.lease.id == id) {
                        tracing::info!(id = %id, "the job was cancelled; asking it to stop");
                        job.shared.request_cancel();
                    }
                }
            }
            Err(Error::Unsupported { .. }) => self.touch_supported.store(false, Ordering::Relaxed),
            Err(e) => tracing::debug!(error = %e, "could not report on running jobs"),
        }
    }

    pub(super) fn emit(&self, event: &WorkerEvent) {
        self.watch.finished(event);
        if let Some(f) = &self.on_event {
            f(event);
        }
    }

    /// Measures this machine's clock against the backend's and warns past the threshold: a skew
    /// larger than the lease grace makes workers recover each other's live jobs.
    pub(super) async fn check_clock(&self) {
        let skew = match self.queue.clock_skew().await {
            Ok(Some(skew)) => skew,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "could not read the backend's clock");
                return;
            }
        };
        let limit = duration_ms(self.options.clock_skew_warning);
        if skew.unsigned_abs() > limit {
            tracing::warn!(
                skew_ms = skew,
                backend = self.driver.name(),
                "this machine's clock is {} ms {} the backend's; leases are judged by the \
                 workers' clocks, so a skew near the lease grace ({} ms) lets workers recover \
                 each other's live jobs: synchronise the clocks (NTP)",
                skew.abs(),
                if skew > 0 { "ahead of" } else { "behind" },
                duration_ms(self.options.lease_grace),
            );
        }
    }

    /// Runs the worker loop with its settle writer beside it in one task set: nothing is
    /// detached, and the writer finishes what the job tasks left before the worker returns.
    pub(super) async fn run_with_writer(
        mut self,
        shutdown: impl Future<Output = ()> + Send,
        force: impl Future<Output = ()> + Send,
    ) -> Result<WorkerSummary> {
        let settles = Arc::new(SettleQueue::default());
        self.settles = Some(Arc::clone(&settles));
        let done = CancellationToken::new();
        let mut background = JoinSet::new();
        background.spawn(write_settles(self.queue.clone(), settles, done.clone()));
        let runner = Arc::new(self);
        let result = Arc::clone(&runner).run(shutdown, force).await;
        done.cancel();
        // Every job task waited for its settle, so the writer has nothing left, unless the drain
        // gave up on a backend that is down: then it must not hold the worker up (the leases
        // bring the jobs back).
        let patience =
            if runner.gave_up.load(Ordering::Relaxed) { Duration::ZERO } else { HAND_BACK_TIMEOUT };
        if tokio::time::timeout(patience, background.join_next()).await.is_err() {
            background.shutdown().await;
        }
        result
    }

    async fn run(
        self: Arc<Self>,
        shutdown: impl Future<Output = ()> + Send,
        force: impl Future<Output = ()> + Send,
    ) -> Result<WorkerSummary> {
        let options = &self.options;
        let started = Instant::now();
        let hard_stop = CancellationToken::new();
        let mut summary = WorkerSummary::default();
        let mut claimed: u64 = 0;
        let mut next_recover = started;
        let mut next_clock_check = started;
        let mut next_touch = started + TOUCH_INTERVAL;
        let mut backend_backoff = BackendBackoff::default();
        let mut outage = Outage::default();
        let mut shutdown = std::pin::pin!(shutdown);
        let mut force = std::pin::pin!(force);
        let mut forced = false;
        let mut shutdown_asked = false;
        // `concurrency` slots for running job code; see `Slot`. Jobs whose result is still being
        // recorded hold no slot, but at most `in_flight` attempts are in flight in all.
        let slots = Arc::new(Semaphore::new(options.concurrency));
        let slot_freed = Arc::new(Notify::new());
        let mut pool =
            Pool::new(Arc::clone(&self), in_flight(options.concurrency), hard_stop.clone());
        if let Err(e) = self.driver.warm(&options.queues).await {
            tracing::debug!(error = %e, "could not warm the backend before the first claim");
        }

        loop {
            if options.max_jobs.is_some_and(|max| claimed >= max)
                || options.max_time.is_some_and(|max| started.elapsed() >= max)
            {
                break;
            }
            let now_instant = Instant::now();
            if now_instant >= next_clock_check {
                next_clock_check = now_instant + CLOCK_CHECK_INTERVAL;
                self.check_clock().await;
            }
            if now_instant >= next_touch {
                next_touch = now_instant + TOUCH_INTERVAL;
                self.touch().await;
            }
            if now_instant >= next_recover {
                next_recover = now_instant + options.recover_interval;
                match self.driver.recover(&options.queues, self.queue.now()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(jobs = n, "recovered jobs whose lease expired"),
                    Err(e) if e.is_transient() => outage.failed(&e),
                    Err(e) => return Err(e),
                }
            }

            // Collect every job that finished meanwhile, so that one claim fills all free slots:
            // under load this turns one claim per job into one claim per batch.
            pool.try_collect();
            for event in pool.take() {
                self.record(event, &mut summary);
            }
            let free = slots.available_permits().min(pool.room());
            let mut idle_for = None;
            if free > 0 {
                let want = options.max_jobs.map_or(free, |max| {
                    free.min(usize::try_from(max - claimed).unwrap_or(usize::MAX))
                });
                let now = self.queue.now();
                match self.driver.claim(&self.claim_request(want, now)).await {
                    Ok(claim) => {
                        backend_backoff.reset();
                        outage.recovered();
                        if claim.jobs.is_empty() {
                            if options.stop_when_empty && pool.is_empty() {
                                break;
                            }
                            let mut wait = options.sleep;
                            if let Some(due) = claim.next_due {
                                wait = wait.min(Duration::from_millis(
                                    u64::try_from(due - now).unwrap_or(0),
                                ));
                            }
                            wait = wait.min(next_recover.saturating_duration_since(Instant::now()));
                            if !pool.is_empty() {
                                wait =
                                    wait.min(next_touch.saturating_duration_since(Instant::now()));
                            }
                            idle_for = Some(wait);
                        } else {
                            let mut jobs = claim.jobs;
                            if jobs.len() > want {
                                // A driver must not hand out more than asked; if one does, the
                                // surplus goes back at once rather than overrun `concurrency`.
                                let surplus = jobs.split_off(want);
                                tracing::warn!(
                                    asked = want,
                                    surplus = surplus.len(),
                                    "the claim returned more jobs than asked; handing the surplus back"
                                );
                                self.hand_back(surplus).await;
                            }
                            let started_at = self.queue.now();
                            for reserved in jobs {
                                claimed += 1;
                                self.watch.started(&reserved.record, started_at);
                                let slot =
                                    Arc::clone(&slots).try_acquire_owned().ok().map(|permit| {
                                        Slot {
                                            permit: Some(permit),
                                            freed: Arc::clone(&slot_freed),
                                        }
                                    });
                                pool.start(reserved, slot);
                            }
                            // Lets the slot tasks just posted run before the next claim: short
                            // jobs end meanwhile and that claim fills their slots too. Claiming
                            // at once asked only for the slots the last claim left, so claims
                            // alternated between k and concurrency - k jobs (a PostgreSQL drain:
                            // 30 jobs a claim, each claim's fixed cost paid twice as often).
                            tokio::task::yield_now().await;
                            continue;
                        }
                    }
                    Err(e) if e.is_transient() => {
                        let pause = backend_backoff.next();
                        outage.failed(&e);
                        idle_for = Some(pause);
                    }
                    Err(e) => return Err(e),
                }
            }

            // Wait for whatever comes first: a job finishing, a wake-up, the idle timeout, a stop.
            let wait_for_work = async {
                match idle_for {
                    Some(timeout) if !timeout.is_zero() => {
                        if let Err(e) =
                            self.driver.wait(&options.queues, self.queue.now(), timeout).await
                        {
                            tracing::debug!(error = %e, "waiting for jobs failed");
                            tokio::time::sleep(timeout.min(Duration::from_millis(500))).await;
                        }
                    }
                    Some(_) => {}
                    None => std::future::pending().await,
                }
            };
            let max_time_left = async {
                match options.max_time {
                    Some(max) => tokio::time::sleep_until(started + max).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = pool.collect() => {
                    for event in pool.take() {
                        self.record(event, &mut summary);
                    }
                }
                () = slot_freed.notified() => {}
                () = wait_for_work => {}
                () = tokio::time::sleep_until(next_touch), if !pool.is_empty() => {}
                () = max_time_left => {}
                () = &mut shutdown => {
                    shutdown_asked = true;
                    break;
                }
                () = &mut force => {
                    shutdown_asked = true;
                    forced = true;
                    break;
                }
            }
        }

        // Drain: stop claiming; let running jobs finish, but once a stop was asked for, only up to
        // the shutdown timeout, after which they are cancelled and handed back. Handing back (and
        // recording results) gets HAND_BACK_TIMEOUT more: a backend that is down must not hold
        // the worker up, and the jobs' leases bring them back anyway.
        let mut deadline = shutdown_asked.then(|| {
            Instant::now() + if forced { Duration::ZERO } else { options.shutdown_timeout }
        });
        let mut give_up_at: Option<Instant> = None;
        while !pool.is_empty() {
            let until_deadline = async {
                match (deadline, give_up_at) {
                    (_, Some(at)) | (Some(at), None) => tokio::time::sleep_until(at).await,
                    (None, None) => std::future::pending().await,
                }
            };
            tokio::select! {
                () = pool.collect() => {
                    for event in pool.take() {
                        self.record(event, &mut summary);
                    }
                }
                () = until_deadline => {
                    if give_up_at.is_some() {
                        tracing::warn!(
                            jobs = pool.in_flight(),
                            "could not hand these jobs back in time (is the backend down?); \
                             they return to pending when their leases expire"
                        );
                        summary.lost += pool.in_flight() as u64;
                        self.gave_up.store(true, Ordering::Relaxed);
                        pool.abort().await;
                        break;
                    }
                    tracing::info!(jobs = pool.in_flight(), "shutdown timeout reached; handing unfinished jobs back");
                    hard_stop.cancel();
                    give_up_at = Some(Instant::now() + HAND_BACK_TIMEOUT);
                }
                () = &mut shutdown, if deadline.is_none() => {
                    deadline = Some(Instant::now() + options.shutdown_timeout);
                }
                () = &mut force, if !forced && give_up_at.is_none() => {
                    // A second stop signal: cancel the running jobs now instead of waiting.
                    forced = true;
                    deadline = Some(Instant::now());
                }
            }
        }
        Ok(summary)
    }

    /// Releases claimed jobs this worker will not run, without counting their attempt.
    async fn hand_back(&self, jobs: Vec<Reserved>) {
        let now = self.queue.now();
        let settles: Vec<Settle> =
            jobs.into_iter().map(|r| Settle::release(r.lease, now)).collect();
        for result in self.driver.settle(&settles, now).await {
            if let Err(e) = result {
                tracing::warn!(error = %e, "could not hand a surplus job back; its lease will");
            }
        }
    }

    fn record(&self, event: Option<WorkerEvent>, summary: &mut WorkerSummary) {
        // `None`: the attempt panicked inside orcs, already logged by its slot task.
        if let Some(event) = event {
            summary.count(&event.outcome);
            self.emit(&event);
        }
    }
}

pub(super) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Says once that the backend is unreachable and once that it is back, instead of a warning per
/// failed call (a worker retries several times a second).
#[derive(Debug, Default)]
struct Outage {
    since: Option<Instant>,
    failures: u32,
}

impl Outage {
    fn failed(&mut self, error: &Error) {
        self.failures = self.failures.saturating_add(1);
        if self.since.is_none() {
            self.since = Some(Instant::now());
            tracing::warn!(
                error = %error,
                "the backend is unreachable; retrying with backoff (100 ms doubling to 5 s) until it is back"
            );
        } else {
            tracing::debug!(error = %error, failures = self.failures, "the backend is still unreachable");
        }
    }

    fn recovered(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::warn!(
                failed_calls = self.failures,
                down_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
                "reconnected: the backend is reachable again"
            );
            self.failures = 0;
        }
    }
}

/// Exponential pauses (100 ms doubling to 5 s) while the backend is unreachable.
#[derive(Debug, Default)]
pub(super) struct BackendBackoff {
    failures: u32,
}

impl BackendBackoff {
    pub(super) fn next(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        retry_delay(Duration::from_millis(100), self.failures).min(Duration::from_secs(5))
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Lease, Settle};

    /// A claim of one queue reads the marks of that queue's settling jobs only: a mark does not
    /// say its job's queue, and another queue's settle frees no slot of the claimed one.
    #[test]
    fn marks_are_those_of_the_claimed_queue() {
        let settles = SettleQueue::default();
        for (id, queue) in [("a1", "a"), ("b1", "b"), ("a2", "a")] {
            let (reply, _) = oneshot::channel();
            let settle = Settle::complete(Lease::new(id, queue, "1", 5_000));
            assert!(settles.send((settle, Reply::Wait(reply))).is_none(), "the writer is open");
        }
        let of = |queue: &str| settles.marks(queue).expect("marked settles").marks;
        assert_eq!(of("a"), [(1, 5_000), (3, 5_000)], "a's settles by their numbers");
        assert_eq!(of("b"), [(2, 5_000)]);
        assert!(of("c").is_empty(), "no settle of c");
        assert_eq!(settles.tokens().len(), 3, "tokens name every queue's jobs (their rows say)");
    }
}
