//! The worker's slot tasks: a fixed set of long-lived tasks, each running one attempt at a time,
//! fed by the run loop. Spawning a task per job cost a drain more than the driver did (the task's
//! allocation, freed on another thread, and the join set's bookkeeping); a slot task is started
//! once and handed each job through a mailbox of its own.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::FutureExt as _;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::events::{Outcome, WorkerEvent};
use super::run_loop::{Runner, Slot};
use crate::error::Error;
use crate::record::{Reserved, Settle};

/// What a slot task is handed: a job, with its hold on one of the worker's `concurrency` slots,
/// or a completion it handed to the settle writer that the writer could not record.
pub(super) enum Post {
    Job(Reserved, Option<Slot>),
    Unsettled(Unsettled),
}

/// A handed completion whose write failed: its task retries it (transient errors) or reports
/// the attempt as lost, as it does for the settles it waits for.
pub(super) struct Unsettled {
    pub(super) settle: Settle,
    pub(super) error: Error,
    pub(super) event: WorkerEvent,
    pub(super) started: Instant,
}

/// Where the run loop leaves a slot task its next job. One place per task, not a channel: a
/// task holds at most one job, and a channel's blocks of slots cost a cache miss per job. The
/// task reports each attempt's end through it too (or the settle writer does, for a completion
/// the task handed over).
pub(super) struct Mailbox {
    job: Mutex<Option<Post>>,
    /// Wakes the task; a wake-up sent before it waits is kept for it.
    posted: Notify,
    /// Set when the pool drops: the task ends.
    closed: AtomicBool,
    /// The task's index in the pool, and where attempts that ended are reported.
    index: usize,
    finished: mpsc::UnboundedSender<Finished>,
}

impl Mailbox {
    fn new(index: usize, finished: mpsc::UnboundedSender<Finished>) -> Self {
        Self {
            job: Mutex::new(None),
            posted: Notify::new(),
            closed: AtomicBool::new(false),
            index,
            finished,
        }
    }

    fn post(&self, post: Post) {
        *self.job.lock().unwrap_or_else(PoisonError::into_inner) = Some(post);
        self.posted.notify_one();
    }

    /// Reports that the task's attempt ended (`None`: it panicked inside orcs); false once the
    /// pool is gone.
    fn finish(&self, event: Option<WorkerEvent>) -> bool {
        self.finished.send((self.index, event)).is_ok()
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.posted.notify_one();
    }

    /// The next job; `None` once the pool closed the mailbox.
    async fn next(&self) -> Option<Post> {
        loop {
            if let Some(job) = self.job.lock().unwrap_or_else(PoisonError::into_inner).take() {
                return Some(job);
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            self.posted.notified().await;
        }
    }
}

/// A slot task's report that its attempt ended: the task's index (it is idle again) and the
/// event (`None` if the attempt panicked inside orcs, a bug).
type Finished = (usize, Option<WorkerEvent>);

/// A completion a slot task handed to the settle writer instead of waiting for its result: the
/// task took its next job meanwhile, and the writer reports the attempt once it is written
/// (each completion waited for cost its task a wake-up and a reply channel). A write that failed
/// goes back to the task; one the writer dropped (it stopped) is reported lost.
pub(super) struct Handed {
    inner: Option<(Arc<Mailbox>, WorkerEvent, Instant)>,
}

impl Handed {
    /// `event` is the attempt's, reported done with its duration since `started` once written.
    pub(super) fn new(mailbox: Arc<Mailbox>, event: WorkerEvent, started: Instant) -> Self {
        Self { inner: Some((mailbox, event, started)) }
    }

    /// The writer wrote `settle` with `result`.
    pub(super) fn written(mut self, settle: Settle, result: Result<(), Error>) {
        let Some((mailbox, mut event, started)) = self.inner.take() else { return };
        match result {
            Ok(()) => {
                event.duration = started.elapsed();
                mailbox.finish(Some(event));
            }
            Err(error) => {
                mailbox.post(Post::Unsettled(Unsettled { settle, error, event, started }))
            }
        }
    }

    /// The attempt's event, for a task that writes the settle itself after all.
    pub(super) fn into_event(mut self) -> WorkerEvent {
        let (_, event, _) = self.inner.take().expect("a handed completion holds its event");
        event
    }
}

impl Drop for Handed {
    fn drop(&mut self) {
        // Dropped unwritten: the writer stopped, which it does with work left only when the
        // drain gave up on the backend (and warned of the jobs it left to their leases).
        if let Some((mailbox, mut event, started)) = self.inner.take() {
            tracing::debug!(
                id = %event.id,
                "could not record the job's result; the job will be recovered when its lease expires"
            );
            event.outcome = Outcome::LeaseLost;
            event.duration = started.elapsed();
            mailbox.finish(Some(event));
        }
    }
}

/// The slot tasks of one worker run. At most `size` attempts are in flight (running, or having
/// their result recorded); tasks are started as the load first needs them, then reused.
pub(super) struct Pool {
    runner: Arc<Runner>,
    size: usize,
    /// Each task's mailbox, by index.
    mailboxes: Vec<Arc<Mailbox>>,
    /// Tasks waiting for a job.
    idle: Vec<usize>,
    in_flight: usize,
    tasks: JoinSet<()>,
    finished_tx: mpsc::UnboundedSender<Finished>,
    finished_rx: mpsc::UnboundedReceiver<Finished>,
    /// Attempts that ended, received but not yet taken by the run loop.
    done: Vec<Finished>,
    /// Cancelled at the shutdown deadline: every running attempt is asked to stop.
    hard_stop: CancellationToken,
}

impl Pool {
    pub(super) fn new(runner: Arc<Runner>, size: usize, hard_stop: CancellationToken) -> Self {
        let (finished_tx, finished_rx) = mpsc::unbounded_channel();
        Self {
            runner,
            size,
            mailboxes: Vec::new(),
            idle: Vec::new(),
            in_flight: 0,
            tasks: JoinSet::new(),
            finished_tx,
            finished_rx,
            done: Vec::new(),
            hard_stop,
        }
    }

    /// Attempts started and not yet reported back.
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub(super) fn is_empty(&self) -> bool {
        self.in_flight == 0
    }

    /// How many more attempts may start now.
    pub(super) fn room(&self) -> usize {
        self.size.saturating_sub(self.in_flight)
    }

    /// Starts an attempt on an idle task (a new one if none is idle).
    pub(super) fn start(&mut self, reserved: Reserved, slot: Option<Slot>) {
        let index = self.idle.pop().unwrap_or_else(|| self.spawn());
        self.mailboxes[index].post(Post::Job(reserved, slot));
        self.in_flight += 1;
    }

    /// Spawns a slot task at a new index.
    fn spawn(&mut self) -> usize {
        let index = self.mailboxes.len();
        let mailbox = Arc::new(Mailbox::new(index, self.finished_tx.clone()));
        self.mailboxes.push(Arc::clone(&mailbox));
        // A child token per task, made once: each attempt waits on a token no other task
        // locks, instead of all on the worker's one.
        let stop = self.hard_stop.child_token();
        let runner = Arc::clone(&self.runner);
        self.tasks.spawn(serve(runner, mailbox, stop));
        index
    }

    /// Takes the attempts that ended meanwhile, without waiting.
    pub(super) fn try_collect(&mut self) {
        while let Ok(finished) = self.finished_rx.try_recv() {
            self.done.push(finished);
        }
    }

    /// Waits until at least one attempt has ended (never, with none in flight); cancel-safe.
    pub(super) async fn collect(&mut self) {
        if self.in_flight == 0 {
            return std::future::pending().await;
        }
        self.finished_rx.recv_many(&mut self.done, self.size.max(1)).await;
    }

    /// The events of the attempts collected, their tasks idle again.
    pub(super) fn take(&mut self) -> impl Iterator<Item = Option<WorkerEvent>> + '_ {
        self.in_flight = self.in_flight.saturating_sub(self.done.len());
        for (index, _) in &self.done {
            self.idle.push(*index);
        }
        self.done.drain(..).map(|(_, event)| event)
    }

    /// Stops every task at once, whatever it is doing (the drain gave up on the backend).
    pub(super) async fn abort(&mut self) {
        self.tasks.shutdown().await;
        self.in_flight = 0;
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Idle tasks end on their own; the set aborts whatever is left when it drops.
        for mailbox in &self.mailboxes {
            mailbox.close();
        }
    }
}

/// One slot task: runs the attempts it is handed, one at a time, until the pool drops.
async fn serve(runner: Arc<Runner>, mailbox: Arc<Mailbox>, stop: CancellationToken) {
    while let Some(post) = mailbox.next().await {
        let ended = match post {
            Post::Job(reserved, slot) => {
                AssertUnwindSafe(runner.execute(reserved, &stop, slot, Some(&mailbox)))
                    .catch_unwind()
                    .await
            }
            Post::Unsettled(unsettled) => {
                AssertUnwindSafe(runner.resume(unsettled)).catch_unwind().await.map(Some)
            }
        };
        let event = match ended {
            Ok(Some(event)) => Some(event),
            // Handed to the settle writer, which reports it.
            Ok(None) => continue,
            // Panics in jobs are caught inside the attempt; reaching this is a bug in orcs.
            Err(_) => {
                tracing::error!("a job's attempt ended abnormally");
                None
            }
        };
        if !mailbox.finish(event) {
            return;
        }
    }
}
