//! One attempt of one claimed job: decode, run `handle` under its time limit with panics caught,
//! then settle it (complete, retry with backoff, fail for good and call `failed` once, or hand it
//! back).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::events::{Outcome, WorkerEvent};
use super::pool::{Handed, Mailbox, Unsettled};
use super::run_loop::{BackendBackoff, Reply, Runner, Slot, duration_ms};
use crate::backoff::{jittered, retry_delay};
use crate::clock::millis;
use crate::error::{Error, Result};
use crate::job::{JobContext, JobError};
use crate::middleware::Next;
use crate::record::{JobRecord, Lease, Reserved, Settle};
use crate::registry::ErasedJob;
use crate::workflow::{StepEnd, chain_follow_ups};

/// Backend retries inside one settle, before the attempt is left to lease recovery.
const SETTLE_TRIES: u32 = 5;

/// How an attempt's code ended: settled already, or completed with its settle still to write.
enum Ended {
    Settled(Outcome),
    Completed(Settle),
}

impl From<Outcome> for Ended {
    fn from(outcome: Outcome) -> Self {
        Self::Settled(outcome)
    }
}

impl Runner {
    /// Runs one attempt and answers its event; `None` when its completion was handed to the
    /// settle writer (a slot task's, through `mailbox`), which reports the event once written.
    pub(super) async fn execute(
        &self,
        reserved: Reserved,
        hard_stop: &CancellationToken,
        slot: Option<Slot>,
        mailbox: Option<&Arc<Mailbox>>,
    ) -> Option<WorkerEvent> {
        let Reserved { record, lease } = reserved;
        let started = Instant::now();
        let ctx = JobContext::of_record(record, self.registry.shared_state().clone());
        let ended = self.run_attempt(&ctx, lease, hard_stop, slot).await;
        let JobContext { record, .. } = ctx;
        let mut event = WorkerEvent {
            id: record.id,
            name: record.name,
            queue: record.queue,
            attempt: record.attempt,
            duration: Duration::ZERO,
            outcome: Outcome::Done,
        };
        event.outcome = match ended {
            Ended::Settled(outcome) => outcome,
            Ended::Completed(settle) => match (&self.settles, mailbox) {
                (Some(settles), Some(mailbox)) => {
                    let handed = Handed::new(Arc::clone(mailbox), event, started);
                    let (settle, handed) = settles.hand(settle, handed)?;
                    // The writer stopped: write it here.
                    event = handed.into_event();
                    self.settle(settle, Outcome::Done).await
                }
                _ => self.settle(settle, Outcome::Done).await,
            },
        };
        event.duration = started.elapsed();
        Some(event)
    }

    /// A handed completion the writer could not record: retried here as the settles an attempt
    /// waits for are.
    pub(super) async fn resume(&self, unsettled: Unsettled) -> WorkerEvent {
        let Unsettled { settle, error, mut event, started } = unsettled;
        event.outcome = self.settled(Some(settle), Err(error), Outcome::Done).await;
        event.duration = started.elapsed();
        event
    }

    /// One attempt of one job, from decoding to its settled outcome, or to its completion's
    /// settle, which the caller writes. The lease moves into the settle that ends it (no copy of
    /// its strings per attempt).
    async fn run_attempt(
        &self,
        ctx: &JobContext,
        lease: Lease,
        hard_stop: &CancellationToken,
        slot: Option<Slot>,
    ) -> Ended {
        let record = &ctx.record;
        let job = match self.registry.decode(&record.name, &record.payload) {
            Some(Ok(job)) => job,
            Some(Err(e)) => {
                let error = format!(
                    "payload does not deserialize into job type {}: {e}; fix the dispatcher, then forget or retry the job",
                    record.name
                );
                return self.fail_for_good(record, lease, error, None).await.into();
            }
            None => return self.defer_unknown(record, lease).await.into(),
        };
        // Reported on by the run loop's touch (progress, cancel) while the job runs; the lease
        // is shared with that entry and taken back, uncopied as a rule, for the settle.
        let lease = Arc::new(lease);
        let running = self.running(Arc::clone(&lease), ctx);
        if record.attempt > record.max_attempts() {
            // The worker that ran the last attempt died holding the job (its lease expired).
            let error = JobError::retry(format!(
                "attempts exhausted: attempt {} of {} was lost with its worker (lease expired){}",
                record.attempt - 1,
                record.max_attempts(),
                record
                    .last_error
                    .as_deref()
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            ));
            let lease = running.end(lease);
            return self
                .fail_for_good(record, lease, error.message().to_owned(), Some((job, ctx, &error)))
                .await
                .into();
        }

        let limit = record.timeout_ms.map_or(self.options.default_timeout, Duration::from_millis);
        let grace = self.options.cancel_grace;
        let result = {
            let mut run = std::pin::pin!(
                AssertUnwindSafe(self.handle(job.as_ref(), ctx, record.meta.as_deref()))
                    .catch_unwind()
            );
            let caught = |ran: std::thread::Result<std::result::Result<(), JobError>>| match ran {
                Err(panic) => Err(JobError::panicked(&panic_message(panic.as_ref()))),
                Ok(result) => result,
            };
            // On a timeout or at the shutdown deadline the job is asked to stop first
            // (`ctx.cancelled()` fires) and gets `cancel_grace` to wind down before it is dropped.
            // Biased, the job first: one that ends at its first poll never registers its timer
            // or its wait for the deadline (a lock of the runtime's timer and of `hard_stop`).
            tokio::select! {
                biased;
                ran = &mut run => caught(ran),
                () = tokio::time::sleep(limit) => {
                    ctx.shared.cancel.cancel();
                    let _ = tokio::time::timeout(grace, &mut run).await;
                    Err(JobError::timeout(limit))
                }
                () = hard_stop.cancelled() => {
                    ctx.shared.cancel.cancel();
                    match tokio::time::timeout(grace, &mut run).await {
                        Ok(ran) => caught(ran),
                        Err(_) => Err(JobError::retry("stopped at the shutdown deadline")),
                    }
                }
            }
        };
        // The job's code is done: its slot can take the next job while the result is recorded.
        drop(slot);
        let lease = running.end(lease);

        if result.is_err() && ctx.shared.cancel_requested() {
            return self.settle(Settle::cancel(lease), Outcome::Cancelled).await.into();
        }
        // A job that gave up because the shutdown deadline cancelled it did not fail: hand it back.
        if result.is_err() && hard_stop.is_cancelled() {
            let now = self.queue.now();
            return self.settle(Settle::release(lease, now), Outcome::Released).await.into();
        }
        match result {
            Ok(()) => {
                // A chain's next step becomes available in the same atomic step as this one's end.
                let mut next = chain_follow_ups(record.meta.as_deref(), StepEnd::Completed, || {
                    self.queue.now()
                });
                // Feature `opentelemetry`: the next step continues this step's trace.
                crate::trace_context::inherit(record.meta.as_deref(), &mut next);
                Ended::Completed(Settle::complete(lease).enqueue(next))
            }
            Err(error) if error.snooze_for().is_some() => {
                let delay = error.snooze_for().unwrap_or_default();
                let at = self.queue.now().saturating_add(millis(delay));
                self.settle(Settle::release(lease, at), Outcome::Snoozed { at }).await.into()
            }
            Err(error) if error.is_permanent() || record.attempt >= record.max_attempts() => self
                .fail_for_good(record, lease, error.message().to_owned(), Some((job, ctx, &error)))
                .await
                .into(),
            Err(error) => {
                let mut delay =
                    retry_delay(Duration::from_millis(record.retry_delay_ms), record.attempt);
                if self.options.retry_jitter {
                    delay = jittered(delay, &format!("{}:{}", record.id, record.attempt));
                }
                let at = self.queue.now().saturating_add(millis(delay));
                let message = error.message().to_owned();
                let outcome = Outcome::Retry { at, error: message.clone() };
                self.settle(Settle::retry(lease, at, message), outcome).await.into()
            }
        }
    }

    /// Runs `handle` through the worker's layers (none: directly).
    fn handle<'a>(
        &'a self,
        job: &'a dyn ErasedJob,
        ctx: &'a JobContext,
        meta: Option<&'a str>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), JobError>> + Send + 'a>>
    {
        Next::new(job, &self.layers, meta).run(ctx)
    }

    /// A job whose type this worker does not register: during a rolling deploy it is usually a
    /// new type that newer workers know. It is handed back with a delay, its attempt not
    /// counted, until it has waited `unknown_job_patience` since it was dispatched; then it
    /// fails with the reason.
    async fn defer_unknown(&self, record: &JobRecord, lease: Lease) -> Outcome {
        let now = self.queue.now();
        let waited = now.saturating_sub(record.dispatched_at);
        let patience = millis(self.options.unknown_job_patience);
        if waited >= patience {
            let error = format!(
                "unknown job name {:?}: no worker registered it within {} s of its dispatch \
                 (this worker registers {:?}); register the job type with Registry::register or \
                 fix the dispatcher, then retry the job",
                record.name,
                patience / 1000,
                self.registry.names()
            );
            return self.fail_for_good(record, lease, error, None).await;
        }
        let at = now.saturating_add(millis(self.options.unknown_job_delay));
        tracing::warn!(
            name = %record.name,
            retry_in_ms = duration_ms(self.options.unknown_job_delay),
            "this worker does not register the job's type; handing it back for a worker that does"
        );
        self.settle(Settle::release(lease, at), Outcome::Deferred { at }).await
    }

    /// Moves the job to the failed set (with its chain's `catch` job, if any, in the same step),
    /// then, if that took, runs its `failed` hook once.
    async fn fail_for_good(
        &self,
        record: &JobRecord,
        lease: Lease,
        error: String,
        hook: Option<(Arc<dyn ErasedJob>, &JobContext, &JobError)>,
    ) -> Outcome {
        let mut catch =
            chain_follow_ups(record.meta.as_deref(), StepEnd::Failed, || self.queue.now());
        crate::trace_context::inherit(record.meta.as_deref(), &mut catch);
        let settle = Settle::fail(lease, error.clone()).enqueue(catch);
        let outcome = self.settle(settle, Outcome::Failed { error }).await;
        if let (Outcome::Failed { .. }, Some((job, ctx, job_error))) = (&outcome, hook) {
            let limit = self.options.default_timeout;
            let hook = AssertUnwindSafe(job.failed(ctx, job_error)).catch_unwind();
            match tokio::time::timeout(limit, hook).await {
                Ok(Ok(())) => {}
                Ok(Err(panic)) => {
                    tracing::error!(panic = %panic_message(panic.as_ref()), "the job's failed hook panicked")
                }
                Err(_) => tracing::error!(
                    limit_ms = limit.as_millis() as u64,
                    "the job's failed hook timed out"
                ),
            }
        }
        outcome
    }

    /// Writes one settle through the batching writer when there is one, else directly. The
    /// settle comes back for a retry, unless the writer stopped while holding it.
    async fn write(&self, settle: Settle) -> (Option<Settle>, Result<()>) {
        let settle = match &self.settles {
            Some(settles) => {
                let (reply, answer) = oneshot::channel();
                match settles.send((settle, Reply::Wait(reply))) {
                    None => {
                        return match answer.await {
                            Ok((settle, result)) => (Some(settle), result),
                            // Only when the drain gave up on the backend and stopped the writer.
                            Err(_) => (None, Err(Error::invalid("settle", "the worker stopped"))),
                        };
                    }
                    Some((unsent, _)) => unsent,
                }
            }
            None => settle,
        };
        let result = self.driver.settle(std::slice::from_ref(&settle), self.queue.now()).await;
        let result = result.into_iter().next().unwrap_or_else(|| {
            Err(Error::invalid("settle", "the driver returned no result; this is a bug"))
        });
        (Some(settle), result)
    }

    /// Settles the attempt, retrying transient backend errors a few times.
    async fn settle(&self, settle: Settle, success: Outcome) -> Outcome {
        let (back, result) = self.write(settle).await;
        self.settled(back, result, success).await
    }

    /// The outcome of a settle's first write, `result` (`back` is the settle, if it came back):
    /// `success` if it took, a retry of transient backend errors a few times, else a lost lease.
    async fn settled(
        &self,
        mut back: Option<Settle>,
        mut result: Result<()>,
        success: Outcome,
    ) -> Outcome {
        let mut backoff = BackendBackoff::default();
        let mut tries = 1;
        loop {
            let id = back.as_ref().map_or("", |s| s.lease.id.as_str());
            match result {
                Ok(()) => return success,
                Err(Error::LeaseLost { .. }) => {
                    tracing::warn!(
                        id = %id,
                        outcome = success.label(),
                        "lease lost: the job was claimed again after its lease expired; this result is dropped"
                    );
                    return Outcome::LeaseLost;
                }
                Err(e) if e.is_transient() && tries < SETTLE_TRIES && back.is_some() => {
                    tracing::warn!(error = %e, "could not record the job's result; retrying");
                    tokio::time::sleep(backoff.next()).await;
                    let settle = back.take().expect("checked above");
                    (back, result) = self.write(settle).await;
                    tries += 1;
                }
                Err(e) => {
                    tracing::error!(id = %id, error = %e, "could not record the job's result; the job will be recovered when its lease expires");
                    return Outcome::LeaseLost;
                }
            }
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}
