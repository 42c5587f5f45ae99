//! Group commit, on both backends: concurrent pushes of one process are written together. A push
//! joins a queue; a writer task (started when the queue was idle, ending when it empties) takes
//! every push waiting once it holds a write connection and stores them in one transaction (one
//! statement per kind of row, one commit), then answers each caller with its own outcomes.
//!
//! A group stops before a push that shares a job id or a unique key with an earlier push of it,
//! so each push is answered as if it ran alone after the ones before it. A group that fails is
//! rolled back and its pushes are written again one by one, so an error is its own push's and
//! means none of its jobs was stored. The task owns the transaction, so a caller that gives up
//! cannot leave the others without an answer.
//!
//! A group waits only a short while for a lock (PostgreSQL: a unique key that an application's
//! open transaction holds; see [`Backend::begin_group`]): then it is rolled back and written
//! again one by one, and a push that still waits is handed to a task of its own
//! ([`Backend::push_aside`]), so that neither the group's other pushes nor the writer wait for
//! another transaction to end.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use orcs_core::{Error, NewJob, PushOutcome, Result};
use sqlx::{ColumnIndex, Database, Executor, IntoArguments};
use tokio::sync::oneshot;

use crate::common::{Backend, DRIVER, RowOf, Store, Value, backend};

/// Most jobs one group commit stores (a single push of more goes alone).
const GROUP_JOBS: usize = 1000;

/// A push waiting to be written, with where its answer goes.
type Waiting = (Vec<NewJob>, oneshot::Sender<Result<Vec<PushOutcome>>>);

/// The pushes queued for the group writers, and how many writer tasks run.
#[derive(Default)]
pub(crate) struct Pushes {
    waiting: Vec<Waiting>,
    running: usize,
}

impl Pushes {
    /// Queues a push; true if fewer than `writers` writer tasks ran, so the caller must start
    /// one. SQLite has one (one write connection); PostgreSQL a few, so that a group waiting
    /// on a lock (a unique key held by an application's open transaction, say) does not hold
    /// up every other push of the process.
    fn join(
        pushes: &Mutex<Self>,
        jobs: Vec<NewJob>,
        writers: usize,
    ) -> (bool, oneshot::Receiver<Result<Vec<PushOutcome>>>) {
        let (reply, answer) = oneshot::channel();
        let mut pushes = pushes.lock().unwrap_or_else(PoisonError::into_inner);
        pushes.waiting.push((jobs, reply));
        let start = pushes.running < writers;
        if start {
            pushes.running += 1;
        }
        (start, answer)
    }

    /// Takes the next group: the waiting pushes in order, up to [`GROUP_JOBS`] jobs (at least
    /// one push), stopping before a push that shares a job id or a unique key with an earlier
    /// one of the group, so that each push is answered as if it ran alone after the previous
    /// ones (a later `Period` key may take over one that expired meanwhile). Pushes whose caller
    /// is gone are dropped: nobody would learn that they were stored.
    fn take_group(&mut self) -> Vec<Waiting> {
        self.waiting.retain(|(_, reply)| !reply.is_closed());
        let mut ids: HashSet<&str> = HashSet::new();
        let mut keys: HashSet<(&str, &str)> = HashSet::new();
        let mut take = 0;
        let mut jobs = 0;
        'pushes: for (push, _) in &self.waiting {
            if take > 0 && jobs + push.len() > GROUP_JOBS {
                break;
            }
            if take > 0 {
                for job in push {
                    let key = job.unique.as_ref().map(|u| (job.queue.as_str(), u.key.as_str()));
                    if ids.contains(job.id.as_str()) || key.is_some_and(|k| keys.contains(&k)) {
                        break 'pushes;
                    }
                }
            }
            for job in push {
                ids.insert(job.id.as_str());
                if let Some(u) = &job.unique {
                    keys.insert((job.queue.as_str(), u.key.as_str()));
                }
            }
            take += 1;
            jobs += push.len();
        }
        self.waiting.drain(..take).collect()
    }
}

/// Whether `error` is a group's statement giving up its wait for a lock (PostgreSQL's
/// `lock_timeout`, SQLSTATE 55P03; see [`Backend::begin_group`]).
pub(crate) fn gave_up_waiting(error: &Error) -> bool {
    let Error::Backend { source, .. } = error else { return false };
    source
        .downcast_ref::<sqlx::Error>()
        .and_then(sqlx::Error::as_database_error)
        .and_then(|db| db.code())
        .is_some_and(|code| code == "55P03")
}

/// The answer to a push whose group writer ended without answering (it panicked).
fn writer_gone() -> Error {
    Error::backend(DRIVER, "the group writer stopped; the push was not stored")
}

/// A group writer's run. If it ends other than by finding the queue empty (a panic, or its
/// runtime shutting down), counts it stopped and, if it was the last, drops the pushes still
/// waiting (their callers get an error: nothing of theirs was stored), so that none waits
/// forever and the next push starts a new writer.
struct WriterRun {
    pushes: Arc<Mutex<Pushes>>,
    finished: bool,
}

impl Drop for WriterRun {
    fn drop(&mut self) {
        if !self.finished {
            let mut pushes = self.pushes.lock().unwrap_or_else(PoisonError::into_inner);
            pushes.running -= 1;
            if pushes.running == 0 {
                pushes.waiting.clear();
            }
        }
    }
}

impl<B: Backend + Clone> Store<B> {
    /// Queues `jobs` for the group writers of `pushes` (at most `writers` at once): answers
    /// the future of the push's outcomes and, when a writer must start, the store and queue
    /// it writes with (the caller spawns [`Store::write_pushes`] on them).
    #[allow(clippy::type_complexity)]
    pub(crate) fn join_group(
        &self,
        pushes: &Arc<Mutex<Pushes>>,
        jobs: Vec<NewJob>,
        writers: usize,
    ) -> (
        Option<(Self, Arc<Mutex<Pushes>>)>,
        impl Future<Output = Result<Vec<PushOutcome>>> + Send + 'static,
    ) {
        let (start, answer) = Pushes::join(pushes, jobs, writers);
        let writer = start.then(|| (self.clone(), Arc::clone(pushes)));
        (writer, async move { answer.await.map_err(|_| writer_gone())? })
    }
}

impl<B: Backend> Store<B>
where
    for<'c> &'c mut B::Conn: Executor<'c, Database = B::Db>,
    <B::Db as Database>::Arguments: IntoArguments<B::Db>,
    usize: ColumnIndex<RowOf<B>>,
    String: Value<B::Db>,
    i64: Value<B::Db>,
    i32: Value<B::Db>,
    bool: Value<B::Db>,
    Option<String>: Value<B::Db>,
    Option<i64>: Value<B::Db>,
    Option<i32>: Value<B::Db>,
{
    /// The group writer's task: writes groups of the pushes waiting in `pushes` until none is
    /// left, then calls [`Backend::pushed`] with the queues each group stored jobs in.
    pub(crate) async fn write_pushes(self, pushes: Arc<Mutex<Pushes>>) {
        let mut run = WriterRun { pushes: Arc::clone(&pushes), finished: false };
        loop {
            // Lets the callers just answered (and woken on this thread) queue their next
            // pushes first, so that they join this group instead of the one after.
            tokio::task::yield_now().await;
            let conn = self.backend.writer().await;
            // Taken once the connection is ours: what arrived while it was busy joins.
            let group = {
                let mut pushes = pushes.lock().unwrap_or_else(PoisonError::into_inner);
                let group = pushes.take_group();
                if group.is_empty() {
                    // Under the lock: a push queued after this sees one writer fewer and
                    // starts a new task if none is left.
                    pushes.running -= 1;
                    run.finished = true;
                    return;
                }
                group
            };
            let mut conn = match conn {
                Ok(conn) => conn,
                Err(e) => {
                    // No connection: every push of the group gets the error, nothing stored.
                    let message = e.to_string();
                    for (_, reply) in group {
                        let _ = reply.send(Err(Error::backend(DRIVER, message.clone())));
                    }
                    continue;
                }
            };
            // The queues the group's commits stored jobs in, for `Backend::pushed`.
            let mut queues: Vec<String> = Vec::new();
            let mut note = |result: Result<(Vec<PushOutcome>, Vec<String>)>| {
                result.map(|(outcomes, stored)| {
                    for queue in stored {
                        if !queues.contains(&queue) {
                            queues.push(queue);
                        }
                    }
                    outcomes
                })
            };
            if group.len() == 1 {
                let (jobs, reply) = group.into_iter().next().expect("one push");
                self.write_alone(&mut conn, jobs, reply, &mut note).await;
            } else {
                let lens: Vec<usize> = group.iter().map(|(jobs, _)| jobs.len()).collect();
                let (all, replies): (Vec<Vec<NewJob>>, Vec<_>) = group.into_iter().unzip();
                let jobs: Vec<NewJob> = all.into_iter().flatten().collect();
                match note(self.push_on(&mut conn, &jobs).await) {
                    Ok(outcomes) => {
                        let mut outcomes = outcomes.into_iter();
                        for (reply, len) in replies.into_iter().zip(lens) {
                            let _ = reply.send(Ok(outcomes.by_ref().take(len).collect()));
                        }
                    }
                    Err(_) => {
                        // Rolled back: each push again on its own, for its own answer.
                        let mut jobs = jobs.into_iter();
                        for (reply, len) in replies.into_iter().zip(lens) {
                            let mine: Vec<NewJob> = jobs.by_ref().take(len).collect();
                            self.write_alone(&mut conn, mine, reply, &mut note).await;
                        }
                    }
                }
            }
            drop(conn);
            if !queues.is_empty() {
                B::pushed(&self, &queues);
            }
        }
    }

    /// Writes one push alone on `conn` and answers `reply` through `note`, unless it gave up
    /// waiting for a lock: then it goes aside ([`Backend::push_aside`]), which answers it.
    async fn write_alone(
        &self,
        conn: &mut B::Conn,
        jobs: Vec<NewJob>,
        reply: oneshot::Sender<Result<Vec<PushOutcome>>>,
        note: &mut impl FnMut(Result<(Vec<PushOutcome>, Vec<String>)>) -> Result<Vec<PushOutcome>>,
    ) {
        match self.push_on(conn, &jobs).await {
            Err(e) if gave_up_waiting(&e) => B::push_aside(self, jobs, reply, e),
            result => {
                let _ = reply.send(note(result));
            }
        }
    }

    /// Stores `jobs` in one transaction on `conn`; answers their outcomes and the queues that
    /// got jobs (stored, or made ready by a debounce).
    pub(crate) async fn push_on(
        &self,
        conn: &mut B::Conn,
        jobs: &[NewJob],
    ) -> Result<(Vec<PushOutcome>, Vec<String>)> {
        let mut tx = B::begin_group(conn).await?;
        let (outcomes, queues) = self.insert_jobs(&mut tx, jobs).await?;
        tx.commit().await.map_err(backend)?;
        Ok((outcomes, queues))
    }
}
