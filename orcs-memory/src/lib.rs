#![doc = include_str!("../README.md")]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use orcs_core::{
    Admin, Capabilities, Claim, ClaimRequest, Driver, Error, FailedJob, FailedQuery, JobInfo,
    JobRecord, JobState as State_, Lease, ListRequest, MAX_PAGE, Millis, NewJob, PushOutcome,
    QueueStats, Reserved, Result, Settle, Transition, async_trait,
};
use tokio::sync::Notify;

/// Jobs held in this process's memory. Clones share the same queues.
#[derive(Debug, Clone, Default)]
pub struct MemoryDriver {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
    /// Wakes idle workers when a job becomes ready.
    ready: Notify,
}

#[derive(Debug, Default)]
struct State {
    jobs: HashMap<String, Stored>,
    queues: BTreeMap<String, QueueState>,
    /// The failed set in the order jobs failed.
    failed: BTreeMap<u64, FailedEntry>,
    failed_index: HashMap<String, u64>,
    next_seq: u64,
}

#[derive(Debug, Default)]
struct QueueState {
    /// Ready jobs: highest priority first, then id (dispatch) order.
    ready: BTreeSet<(Reverse<i32>, String)>,
    /// Not yet due: by due time, then id.
    delayed: BTreeSet<(Millis, String)>,
    /// Claimed: by lease deadline, then id.
    reserved: BTreeSet<(Millis, String)>,
    failed: u64,
    processed: u64,
    failed_total: u64,
    /// Per-queue metadata: claims skip a paused queue.
    paused: bool,
}

#[derive(Debug)]
struct Stored {
    job: NewJob,
    attempts: u32,
    last_error: Option<String>,
    state: JobState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum JobState {
    Ready,
    Delayed(Millis),
    Reserved { token: String, until: Millis },
}

#[derive(Debug)]
struct FailedEntry {
    job: NewJob,
    failed: FailedJob,
}

impl MemoryDriver {
    /// An empty set of queues.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that matters
        // more than losing every job, so keep going with it.
        self.inner.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    fn queue(&mut self, name: &str) -> &mut QueueState {
        if !self.queues.contains_key(name) {
            self.queues.insert(name.to_owned(), QueueState::default());
        }
        self.queues.get_mut(name).expect("inserted above")
    }

    /// Puts a job in its queue's ready or delayed set.
    fn enqueue(
        &mut self,
        job: NewJob,
        attempts: u32,
        last_error: Option<String>,
        available_at: Millis,
        now: Millis,
    ) {
        let id = job.id.clone();
        let priority = job.priority;
        let queue = self.queue(&job.queue);
        let state = if available_at <= now {
            queue.ready.insert((Reverse(priority), id.clone()));
            JobState::Ready
        } else {
            queue.delayed.insert((available_at, id.clone()));
            JobState::Delayed(available_at)
        };
        self.jobs.insert(id, Stored { job, attempts, last_error, state });
    }

    /// Takes a claimed job out of the reserved set if `lease` is its current claim.
    fn take_leased(&mut self, lease: &Lease) -> Result<Stored> {
        let holds = matches!(
            self.jobs.get(&lease.id),
            Some(Stored { state: JobState::Reserved { token, .. }, .. }) if *token == lease.token
        );
        if !holds {
            return Err(Error::LeaseLost { id: lease.id.clone() });
        }
        let stored = self.jobs.remove(&lease.id).expect("checked above");
        if let JobState::Reserved { until, .. } = stored.state {
            self.queue(&stored.job.queue).reserved.remove(&(until, lease.id.clone()));
        }
        Ok(stored)
    }

    /// Stores a job as a push would; false if its id is taken (live or failed).
    fn insert_new(&mut self, job: NewJob, now: Millis) -> bool {
        if self.jobs.contains_key(&job.id) || self.failed_index.contains_key(&job.id) {
            return false;
        }
        let available_at = job.available_at;
        self.enqueue(job, 0, None, available_at, now);
        true
    }

    /// One settle: the token check, the transition and its effects, or nothing.
    fn settle(&mut self, settle: &Settle, now: Millis) -> Result<()> {
        let stored = self.take_leased(&settle.lease)?;
        match &settle.transition {
            Transition::Complete => self.queue(&stored.job.queue).processed += 1,
            Transition::Retry { run_at, error } => {
                self.enqueue(stored.job, stored.attempts, Some(error.clone()), *run_at, now);
            }
            Transition::Fail { error } => {
                let failed = FailedJob::new(&stored.job, stored.attempts, error.clone(), now);
                let queue = self.queue(&stored.job.queue);
                queue.failed += 1;
                queue.failed_total += 1;
                self.next_seq += 1;
                let seq = self.next_seq;
                self.failed_index.insert(stored.job.id.clone(), seq);
                self.failed.insert(seq, FailedEntry { job: stored.job, failed });
            }
            Transition::Release { run_at } => {
                // The interrupted attempt does not count: the job did not fail, the worker stopped.
                let attempts = stored.attempts.saturating_sub(1);
                self.enqueue(stored.job, attempts, stored.last_error, *run_at, now);
            }
            other => {
                return Err(Error::unsupported("memory", format!("the transition {other:?}")));
            }
        }
        for job in &settle.effects.enqueue {
            self.insert_new(job.clone(), now);
        }
        Ok(())
    }

    fn info(&self, id: &str) -> Option<JobInfo> {
        if let Some(stored) = self.jobs.get(id) {
            let mut job = stored.job.clone();
            let (state, lease) = match &stored.state {
                JobState::Ready => (State_::Pending, None),
                JobState::Delayed(at) => {
                    job.available_at = *at;
                    (State_::Delayed, None)
                }
                JobState::Reserved { until, .. } => (State_::Reserved, Some(*until)),
            };
            let mut info = JobInfo::new(job, state, stored.attempts);
            info.last_error = stored.last_error.clone();
            info.lease_expires_at = lease;
            return Some(info);
        }
        let entry = self.failed.get(self.failed_index.get(id)?)?;
        let mut info = JobInfo::new(entry.job.clone(), State_::Failed, entry.failed.attempts);
        info.last_error = Some(entry.failed.error.clone());
        info.failed_at = Some(entry.failed.failed_at);
        Some(info)
    }

    fn promote_due(&mut self, queue: &str, now: Millis) {
        let Some(q) = self.queues.get_mut(queue) else { return };
        while let Some((at, id)) = q.delayed.first().cloned() {
            if at > now {
                break;
            }
            q.delayed.pop_first();
            if let Some(stored) = self.jobs.get_mut(&id) {
                stored.state = JobState::Ready;
                q.ready.insert((Reverse(stored.job.priority), id));
            }
        }
    }
}

#[async_trait]
impl Driver for MemoryDriver {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::default();
        capabilities.cross_queue_atomic = true;
        capabilities
    }

    async fn push(&self, jobs: Vec<NewJob>) -> Result<Vec<PushOutcome>> {
        let outcomes = {
            let mut state = self.state();
            jobs.into_iter()
                .map(|job| {
                    let (id, now) = (job.id.clone(), job.dispatched_at);
                    if state.insert_new(job, now) {
                        PushOutcome::Stored
                    } else {
                        PushOutcome::Duplicate { id }
                    }
                })
                .collect()
        };
        self.inner.ready.notify_waiters();
        Ok(outcomes)
    }

    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim> {
        let mut state = self.state();
        let mut claim = Claim::default();
        for queue in req.queues {
            if state.queues.get(queue.as_str()).is_some_and(|q| q.paused) {
                continue;
            }
            state.promote_due(queue, req.now);
            while claim.jobs.len() < req.max {
                let Some(q) = state.queues.get_mut(queue.as_str()) else { break };
                let Some((_, id)) = q.ready.pop_first() else { break };
                state.next_seq += 1;
                let token = state.next_seq.to_string();
                let stored = state.jobs.get_mut(&id).expect("a ready id has a job");
                let until = req.lease_until(stored.job.timeout_ms);
                stored.attempts += 1;
                stored.state = JobState::Reserved { token: token.clone(), until };
                let record =
                    JobRecord::from_new(&stored.job, stored.attempts, stored.last_error.clone());
                let queue_name = stored.job.queue.clone();
                state.queue(queue).reserved.insert((until, id.clone()));
                claim.jobs.push(Reserved::new(record, Lease::new(id, queue_name, token, until)));
            }
            if let Some(q) = state.queues.get(queue.as_str())
                && let Some((at, _)) = q.delayed.first()
            {
                claim.next_due = Some(claim.next_due.map_or(*at, |due: Millis| due.min(*at)));
            }
        }
        Ok(claim)
    }

    async fn settle(&self, batch: &[Settle], now: Millis) -> Vec<Result<()>> {
        // One lock for the batch instead of one per job.
        let results: Vec<Result<()>> = {
            let mut state = self.state();
            batch.iter().map(|settle| state.settle(settle, now)).collect()
        };
        let wakes = batch.iter().zip(&results).any(|(settle, result)| {
            result.is_ok()
                && (!settle.effects.enqueue.is_empty()
                    || matches!(
                        settle.transition,
                        Transition::Retry { .. } | Transition::Release { .. }
                    ))
        });
        if wakes {
            self.inner.ready.notify_waiters();
        }
        results
    }

    async fn extend(&self, lease: &Lease, until: Millis, _now: Millis) -> Result<Lease> {
        let mut state = self.state();
        let stored = state.take_leased(lease)?;
        let queue = stored.job.queue.clone();
        state.queue(&queue).reserved.insert((until, lease.id.clone()));
        state.jobs.insert(
            lease.id.clone(),
            Stored { state: JobState::Reserved { token: lease.token.clone(), until }, ..stored },
        );
        let mut extended = lease.clone();
        extended.expires_at = until;
        Ok(extended)
    }

    async fn recover(&self, queues: &[String], now: Millis) -> Result<u64> {
        let mut recovered = 0;
        {
            let mut state = self.state();
            for queue in queues {
                while let Some(q) = state.queues.get_mut(queue.as_str()) {
                    let Some((until, id)) = q.reserved.first().cloned() else { break };
                    if until > now {
                        break;
                    }
                    q.reserved.pop_first();
                    let stored = state.jobs.get_mut(&id).expect("a reserved id has a job");
                    stored.state = JobState::Ready;
                    stored.last_error = Some(format!(
                        "lease expired at {until}: the worker running attempt {} stopped responding",
                        stored.attempts
                    ));
                    let priority = stored.job.priority;
                    state.queue(queue).ready.insert((Reverse(priority), id));
                    recovered += 1;
                }
            }
        }
        if recovered > 0 {
            self.inner.ready.notify_waiters();
        }
        Ok(recovered)
    }

    async fn wait(&self, queues: &[String], now: Millis, timeout: Duration) -> Result<()> {
        let notified = self.inner.ready.notified();
        let mut notified = std::pin::pin!(notified);
        // Register before looking, so a push between the look and the wait still wakes us.
        notified.as_mut().enable();
        {
            let state = self.state();
            let ready = |q: &QueueState| {
                !q.paused
                    && (!q.ready.is_empty() || q.delayed.first().is_some_and(|(at, _)| *at <= now))
            };
            if queues.iter().any(|q| state.queues.get(q.as_str()).is_some_and(ready)) {
                return Ok(());
            }
        }
        let _ = tokio::time::timeout(timeout, notified).await;
        Ok(())
    }
}

#[async_trait]
impl Admin for MemoryDriver {
    async fn stats(&self, queue: &str, now: Millis) -> Result<QueueStats> {
        let state = self.state();
        let mut stats = QueueStats::new(queue);
        let Some(q) = state.queues.get(queue) else { return Ok(stats) };
        let due = q.delayed.range(..(now.saturating_add(1), String::new())).count() as u64;
        stats.pending = q.ready.len() as u64 + due;
        stats.delayed = q.delayed.len() as u64 - due;
        stats.reserved = q.reserved.len() as u64;
        stats.failed = q.failed;
        stats.processed = q.processed;
        stats.failed_total = q.failed_total;
        stats.paused = q.paused;
        Ok(stats)
    }

    async fn queues(&self) -> Result<Vec<String>> {
        Ok(self.state().queues.keys().cloned().collect())
    }

    async fn get(&self, id: &str, _now: Millis) -> Result<Option<JobInfo>> {
        Ok(self.state().info(id))
    }

    async fn list(&self, req: &ListRequest, _now: Millis) -> Result<Vec<JobInfo>> {
        let state = self.state();
        let Some(q) = state.queues.get(req.queue.as_str()) else { return Ok(Vec::new()) };
        let ids: Box<dyn Iterator<Item = &String>> = match req.state {
            State_::Pending => Box::new(q.ready.iter().map(|(_, id)| id)),
            State_::Delayed => Box::new(q.delayed.iter().map(|(_, id)| id)),
            State_::Reserved => Box::new(q.reserved.iter().map(|(_, id)| id)),
            other => {
                return Err(Error::invalid(
                    "job state",
                    format!(
                        "list shows pending, delayed or reserved jobs, not {other}; use failed()"
                    ),
                ));
            }
        };
        Ok(ids
            .skip(usize::try_from(req.offset).unwrap_or(usize::MAX))
            .take(req.limit.min(MAX_PAGE))
            .filter_map(|id| state.info(id))
            .collect())
    }

    async fn clear(&self, queue: &str, _now: Millis) -> Result<u64> {
        let mut state = self.state();
        let Some(q) = state.queues.get_mut(queue) else { return Ok(0) };
        let ids: Vec<String> = std::mem::take(&mut q.ready)
            .into_iter()
            .map(|(_, id)| id)
            .chain(std::mem::take(&mut q.delayed).into_iter().map(|(_, id)| id))
            .collect();
        for id in &ids {
            state.jobs.remove(id);
        }
        Ok(ids.len() as u64)
    }

    async fn failed(&self, query: &FailedQuery) -> Result<Vec<FailedJob>> {
        let state = self.state();
        Ok(state
            .failed
            .values()
            .filter(|entry| query.queue.as_deref().is_none_or(|q| entry.failed.queue == q))
            .skip(usize::try_from(query.offset).unwrap_or(usize::MAX))
            .take(query.limit.min(MAX_PAGE))
            .map(|entry| entry.failed.clone())
            .collect())
    }

    async fn retry_failed(&self, id: &str, now: Millis) -> Result<()> {
        {
            let mut state = self.state();
            let seq = state
                .failed_index
                .remove(id)
                .ok_or_else(|| Error::NotFound { id: id.to_owned() })?;
            let entry = state.failed.remove(&seq).expect("the index points at an entry");
            state.queue(&entry.job.queue).failed -= 1;
            state.enqueue(entry.job, 0, None, now, now);
        }
        self.inner.ready.notify_waiters();
        Ok(())
    }

    async fn forget_failed(&self, id: &str) -> Result<()> {
        let mut state = self.state();
        let seq =
            state.failed_index.remove(id).ok_or_else(|| Error::NotFound { id: id.to_owned() })?;
        let entry = state.failed.remove(&seq).expect("the index points at an entry");
        state.queue(&entry.job.queue).failed -= 1;
        Ok(())
    }

    async fn flush_failed(&self) -> Result<u64> {
        let mut state = self.state();
        let count = state.failed.len() as u64;
        state.failed.clear();
        state.failed_index.clear();
        for q in state.queues.values_mut() {
            q.failed = 0;
        }
        Ok(count)
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        self.state().queue(queue).paused = paused;
        if !paused {
            self.inner.ready.notify_waiters();
        }
        Ok(())
    }
}
