#![doc = include_str!("../README.md")]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use orcs_core::{
    Claim, ClaimRequest, Driver, Error, FailedJob, JobRecord, Lease, Millis, NewJob, QueueStats,
    Reserved, Result, async_trait,
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

    async fn push(&self, jobs: Vec<NewJob>) -> Result<()> {
        {
            let mut state = self.state();
            for job in &jobs {
                if state.jobs.contains_key(&job.id) || state.failed_index.contains_key(&job.id) {
                    return Err(Error::invalid(
                        "job id",
                        format!("{} is already in use; let orcs make ids", job.id),
                    ));
                }
            }
            for job in jobs {
                let (available_at, now) = (job.available_at, job.dispatched_at);
                state.enqueue(job, 0, None, available_at, now);
            }
        }
        self.inner.ready.notify_waiters();
        Ok(())
    }

    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim> {
        let mut state = self.state();
        let mut claim = Claim::default();
        for queue in req.queues {
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
                let record = record(stored);
                let queue_name = stored.job.queue.clone();
                state.queue(queue).reserved.insert((until, id.clone()));
                claim.jobs.push(Reserved {
                    record,
                    lease: Lease { id, queue: queue_name, token, expires_at: until },
                });
            }
            if let Some(q) = state.queues.get(queue.as_str())
                && let Some((at, _)) = q.delayed.first()
            {
                claim.next_due = Some(claim.next_due.map_or(*at, |due: Millis| due.min(*at)));
            }
        }
        Ok(claim)
    }

    async fn complete(&self, lease: &Lease, _now: Millis) -> Result<()> {
        let mut state = self.state();
        let stored = state.take_leased(lease)?;
        state.queue(&stored.job.queue).processed += 1;
        Ok(())
    }

    async fn complete_many(&self, leases: &[Lease], _now: Millis) -> Vec<Result<()>> {
        // One lock for the batch instead of one per job.
        let mut state = self.state();
        leases
            .iter()
            .map(|lease| {
                let stored = state.take_leased(lease)?;
                state.queue(&stored.job.queue).processed += 1;
                Ok(())
            })
            .collect()
    }

    async fn retry(&self, lease: &Lease, run_at: Millis, error: &str, now: Millis) -> Result<()> {
        {
            let mut state = self.state();
            let stored = state.take_leased(lease)?;
            state.enqueue(stored.job, stored.attempts, Some(error.to_owned()), run_at, now);
        }
        self.inner.ready.notify_waiters();
        Ok(())
    }

    async fn fail(&self, lease: &Lease, error: &str, now: Millis) -> Result<()> {
        let mut state = self.state();
        let stored = state.take_leased(lease)?;
        let failed = FailedJob {
            id: stored.job.id.clone(),
            queue: stored.job.queue.clone(),
            name: stored.job.name.clone(),
            payload: stored.job.payload.clone(),
            attempts: stored.attempts,
            error: error.to_owned(),
            failed_at: now,
        };
        let queue = state.queue(&stored.job.queue);
        queue.failed += 1;
        queue.failed_total += 1;
        state.next_seq += 1;
        let seq = state.next_seq;
        state.failed_index.insert(stored.job.id.clone(), seq);
        state.failed.insert(seq, FailedEntry { job: stored.job, failed });
        Ok(())
    }

    async fn release(&self, lease: &Lease, now: Millis) -> Result<()> {
        {
            let mut state = self.state();
            let stored = state.take_leased(lease)?;
            // The interrupted attempt does not count: the job did not fail, the worker stopped.
            let attempts = stored.attempts.saturating_sub(1);
            state.enqueue(stored.job, attempts, stored.last_error, now, now);
        }
        self.inner.ready.notify_waiters();
        Ok(())
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
        Ok(Lease { expires_at: until, ..lease.clone() })
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

    async fn wait(&self, queues: &[String], timeout: Duration) -> Result<()> {
        let notified = self.inner.ready.notified();
        let mut notified = std::pin::pin!(notified);
        // Register before looking, so a push between the look and the wait still wakes us.
        notified.as_mut().enable();
        {
            let state = self.state();
            if queues
                .iter()
                .any(|q| state.queues.get(q.as_str()).is_some_and(|q| !q.ready.is_empty()))
            {
                return Ok(());
            }
        }
        let _ = tokio::time::timeout(timeout, notified).await;
        Ok(())
    }

    async fn stats(&self, queue: &str, now: Millis) -> Result<QueueStats> {
        let state = self.state();
        let Some(q) = state.queues.get(queue) else {
            return Ok(QueueStats { queue: queue.to_owned(), ..QueueStats::default() });
        };
        let due = q.delayed.range(..(now.saturating_add(1), String::new())).count() as u64;
        Ok(QueueStats {
            queue: queue.to_owned(),
            pending: q.ready.len() as u64 + due,
            delayed: q.delayed.len() as u64 - due,
            reserved: q.reserved.len() as u64,
            failed: q.failed,
            processed: q.processed,
            failed_total: q.failed_total,
        })
    }

    async fn queues(&self) -> Result<Vec<String>> {
        Ok(self.state().queues.keys().cloned().collect())
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

    async fn failed(&self, queue: Option<&str>) -> Result<Vec<FailedJob>> {
        let state = self.state();
        Ok(state
            .failed
            .values()
            .filter(|entry| queue.is_none_or(|q| entry.failed.queue == q))
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
}

fn record(stored: &Stored) -> JobRecord {
    let job = &stored.job;
    JobRecord {
        id: job.id.clone(),
        name: job.name.clone(),
        queue: job.queue.clone(),
        payload: job.payload.clone(),
        priority: job.priority,
        attempt: stored.attempts,
        max_retries: job.max_retries,
        retry_delay_ms: job.retry_delay_ms,
        timeout_ms: job.timeout_ms,
        dispatched_at: job.dispatched_at,
        last_error: stored.last_error.clone(),
    }
}
