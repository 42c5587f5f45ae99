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
use tokio_util::sync::CancellationToken;

use super::events::WorkerEvent;
use super::run_loop::{Runner, Slot};
use crate::record::Reserved;

/// A job handed to a slot task, with its hold on one of the worker's `concurrency` slots.
type Assignment = (Reserved, Option<Slot>);

/// Where the run loop leaves a slot task its next job. One place per task, not a channel: a
/// task holds at most one job, and a channel's blocks of slots cost a cache miss per job.
#[derive(Default)]
struct Mailbox {
    job: Mutex<Option<Assignment>>,
    /// Wakes the task; a wake-up sent before it waits is kept for it.
    posted: Notify,
    /// Set when the pool drops: the task ends.
    closed: AtomicBool,
}

impl Mailbox {
    fn post(&self, assignment: Assignment) {
        *self.job.lock().unwrap_or_else(PoisonError::into_inner) = Some(assignment);
        self.posted.notify_one();
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.posted.notify_one();
    }

    /// The next job; `None` once the pool closed the mailbox.
    async fn next(&self) -> Option<Assignment> {
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
        self.mailboxes[index].post((reserved, slot));
        self.in_flight += 1;
    }

    /// Spawns a slot task at a new index.
    fn spawn(&mut self) -> usize {
        let mailbox = Arc::new(Mailbox::default());
        self.mailboxes.push(Arc::clone(&mailbox));
        let index = self.mailboxes.len() - 1;
        // A child token per task, made once: each attempt waits on a token no other task
        // locks, instead of all on the worker's one.
        let stop = self.hard_stop.child_token();
        let runner = Arc::clone(&self.runner);
        let finished = self.finished_tx.clone();
        self.tasks.spawn(serve(runner, index, mailbox, stop, finished));
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
async fn serve(
    runner: Arc<Runner>,
    index: usize,
    mailbox: Arc<Mailbox>,
    stop: CancellationToken,
    finished: mpsc::UnboundedSender<Finished>,
) {
    while let Some((reserved, slot)) = mailbox.next().await {
        let attempt = AssertUnwindSafe(runner.execute(reserved, &stop, slot));
        let event = match attempt.catch_unwind().await {
            Ok(event) => Some(event),
            // Panics in jobs are caught inside the attempt; reaching this is a bug in orcs.
            Err(_) => {
                tracing::error!("a job's attempt ended abnormally");
                None
            }
        };
        if finished.send((index, event)).is_err() {
            return;
        }
    }
}
