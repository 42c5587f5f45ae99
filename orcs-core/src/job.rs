//! The user-facing job model: a serde struct that implements [`Job`].

use std::fmt;
use std::future::Future;
use std::time::Duration;

use serde::Serialize;

use crate::error::BoxError;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

/// A background job: the struct is the job's data, the trait says how to run it.
///
/// Implementors provide [`Job::NAME`] and [`Job::handle`]; everything else has a default.
/// `handle` may be written as `async fn` in the impl.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The registry key, stored with every job: keep it stable across deploys.
    const NAME: &'static str;
    /// The queue the job goes to; empty means the queue's default ([`crate::Queue::with_default_queue`], else `default`).
    const QUEUE: &'static str = "";
    /// Higher runs first among ready jobs of a queue.
    const PRIORITY: i32 = 0;
    /// How many times a failed attempt is retried (3 means 4 attempts in all).
    const MAX_RETRIES: u32 = 3;
    /// The backoff base: attempt n is retried after `RETRY_DELAY * 2^(n-1)`.
    const RETRY_DELAY: Duration = Duration::from_secs(60);
    /// The time limit of one attempt; `None` takes the worker's default ([`crate::Worker::timeout`], 60 s).
    const TIMEOUT: Option<Duration> = None;

    /// Runs the job.
    ///
    /// # Errors
    /// A [`JobError`]: retryable errors are retried per [`Job::MAX_RETRIES`], permanent ones go to
    /// the failed set at once.
    fn handle(&self, ctx: &JobContext) -> impl Future<Output = Result<(), JobError>> + Send;

    /// Declares the application state the job reads with [`JobContext::state`], so that a worker
    /// whose registry lacks it refuses to start: `needs.state::<PgPool>();`.
    fn needs(needs: &mut crate::registry::Needs) {
        let _ = needs;
    }

    /// The unique key this job holds while it waits (or runs), if any: a dispatch whose key is
    /// held by a job of the same queue stores nothing and returns the holder's id.
    /// [`crate::DispatchOptions::unique`] overrides it per dispatch.
    fn unique(&self) -> Option<crate::Unique> {
        None
    }

    /// Runs once after the job's last attempt failed, before nothing else is tried.
    fn failed(&self, ctx: &JobContext, error: &JobError) -> impl Future<Output = ()> + Send {
        let _ = (ctx, error);
        async {}
    }
}

/// What a running job knows about itself.
#[derive(Clone)]
pub struct JobContext {
    /// The claimed record itself, moved in by the worker and taken back for its event: the
    /// context's id, name, queue and batch are the record's strings, not copies of them.
    pub(crate) record: crate::record::JobRecord,
    pub(crate) max_attempts: u32,
    pub(crate) shared: std::sync::Arc<Shared>,
    pub(crate) state: crate::registry::State,
}

/// What a running job shares with its worker: the signal that asks it to stop, the progress it
/// reported and not yet sent, and whether someone asked to cancel it. The worker's entry for the
/// running job shares this one allocation rather than cloning the signal, and the cancel request
/// is a flag rather than a second token: a token costs an allocation per attempt, and each clone
/// or drop of one locks its node.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Fires when the worker asks the job to stop (timeout, shutdown or a cancel).
    pub(crate) cancel: CancellationToken,
    pub(crate) progress: std::sync::Mutex<Option<String>>,
    /// Set only by [`Shared::request_cancel`], together with `cancel`.
    cancel_requested: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Asks the job to stop because someone cancelled it: `ctx.is_cancel_requested()` is true
    /// from then on and `ctx.cancelled()` fires.
    pub(crate) fn request_cancel(&self) {
        self.cancel_requested.store(true, std::sync::atomic::Ordering::Release);
        self.cancel.cancel();
    }

    /// Whether [`Shared::request_cancel`] was called.
    pub(crate) fn cancel_requested(&self) -> bool {
        self.cancel_requested.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Shows what the context's accessors show: not the record's payload, which may hold the
/// application's data, nor its metadata.
impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext")
            .field("id", &self.record.id)
            .field("name", &self.record.name)
            .field("queue", &self.record.queue)
            .field("attempt", &self.record.attempt)
            .field("max_attempts", &self.max_attempts)
            .field("batch", &self.record.batch)
            .field("shared", &self.shared)
            .field("state", &self.state)
            .finish()
    }
}

impl JobContext {
    /// A context for calling a job's `handle` directly, for example in the application's unit tests.
    pub fn new(
        id: impl Into<String>,
        name: impl Into<String>,
        queue: impl Into<String>,
        attempt: u32,
    ) -> Self {
        let record = crate::record::JobRecord {
            id: id.into(),
            name: name.into(),
            queue: queue.into(),
            attempt,
            ..crate::record::JobRecord::default()
        };
        Self {
            record,
            max_attempts: attempt,
            shared: std::sync::Arc::default(),
            state: crate::registry::State::default(),
        }
    }

    /// The context of a claimed job's attempt, holding its record.
    pub(crate) fn of_record(
        record: crate::record::JobRecord,
        state: crate::registry::State,
    ) -> Self {
        let max_attempts = record.max_attempts();
        // Its stop signal is a token of its own, not a child of the worker's: linking and
        // unlinking a child takes the parent's lock twice per attempt. The worker cancels it at
        // the shutdown deadline.
        Self { record, max_attempts, shared: std::sync::Arc::default(), state }
    }

    /// Gives a context built with [`JobContext::new`] the application's state of a registry, for
    /// calling `handle` directly in tests.
    #[must_use]
    pub fn with_state_of(mut self, registry: &crate::Registry) -> Self {
        self.state = registry.shared_state().clone();
        self
    }

    /// The application's state of type `T`, given to the worker with
    /// [`crate::Registry::state`] (declare it in [`Job::needs`] so a worker without it refuses to
    /// start).
    ///
    /// # Errors
    /// A permanent [`JobError`] naming the type if the worker was not given it.
    pub fn state<T: Send + Sync + 'static>(&self) -> Result<&T, JobError> {
        self.state.get::<T>().ok_or_else(|| {
            JobError::fatal(format!(
                "the worker was not given state of type {}: add it with Registry::state(value) \
                 and declare it in Job::needs",
                std::any::type_name::<T>()
            ))
        })
    }

    /// Reports the job's progress (any JSON value: a percentage, a step, counts). The worker
    /// stores the latest value with the job about twice a second, not on every call, so calling
    /// it often is cheap. `queue:show` and [`crate::Queue::get`] show it.
    pub fn progress(&self, value: serde_json::Value) {
        let mut progress = self.shared.progress.lock().unwrap_or_else(|p| p.into_inner());
        *progress = Some(value.to_string());
    }

    /// True once someone cancelled this job ([`crate::Queue::cancel`]); `ctx.cancelled()` has
    /// fired too.
    pub fn is_cancel_requested(&self) -> bool {
        self.shared.cancel_requested()
    }

    /// The job's id.
    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// The job's registry name.
    pub fn name(&self) -> &str {
        &self.record.name
    }

    /// The queue the job came from.
    pub fn queue(&self) -> &str {
        &self.record.queue
    }

    /// This attempt's number, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.record.attempt
    }

    /// How many attempts the job gets in all.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The id of the batch this job is a child of, if it is one ([`crate::Queue::batch`];
    /// [`crate::Queue::batch_info`] shows the batch).
    pub fn batch_id(&self) -> Option<&str> {
        self.record.batch.as_deref()
    }

    /// Makes this context a child's of batch `id`, for calling `handle` directly in tests.
    #[must_use]
    pub fn with_batch(mut self, id: impl Into<String>) -> Self {
        self.record.batch = Some(id.into());
        self
    }

    /// True once the worker asked the job to stop (timeout, shutdown or a cancel).
    pub fn is_cancelled(&self) -> bool {
        self.shared.cancel.is_cancelled()
    }

    /// Completes when the worker asks the job to stop; `select!` on it in long loops.
    pub async fn cancelled(&self) {
        self.shared.cancel.cancelled().await;
    }
}

/// Why an attempt failed: a job's own error, as opposed to [`crate::Error`] for infrastructure.
///
/// Built from an error, it keeps the error (its [`JobError::source`]) and its whole cause chain in
/// the message (`outer: inner: root`), which the failed set stores.
#[derive(Debug, Clone)]
pub struct JobError {
    kind: JobErrorKind,
    message: String,
    snooze: Option<Duration>,
    source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
}

impl PartialEq for JobError {
    fn eq(&self, other: &Self) -> bool {
        (self.kind, &self.message, self.snooze) == (other.kind, &other.message, other.snooze)
    }
}

impl Eq for JobError {}

/// The message of `error` followed by those of its causes, as `outer: inner: root` (a cause whose
/// message its wrapper already ends with is not repeated).
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let text = inner.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = inner.source();
    }
    message
}

/// The kinds of [`JobError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobErrorKind {
    /// May succeed on a later attempt.
    Retryable,
    /// Will not succeed: skip the remaining retries.
    Permanent,
    /// The attempt ran past its time limit (retryable).
    Timeout,
    /// `handle` panicked (retryable).
    Panicked,
    /// The job asked to run again later without using an attempt ([`JobError::snooze`]).
    Snooze,
}

impl JobError {
    fn from_error(kind: JobErrorKind, error: BoxError) -> Self {
        let source: std::sync::Arc<dyn std::error::Error + Send + Sync> =
            std::sync::Arc::from(error);
        Self { kind, message: chain(source.as_ref()), snooze: None, source: Some(source) }
    }

    /// A failure that may succeed on a later attempt: a message (`&str`, `String`) or any error,
    /// `anyhow::Error` included, whose cause chain is kept.
    pub fn retry(error: impl Into<BoxError>) -> Self {
        Self::from_error(JobErrorKind::Retryable, error.into())
    }

    /// A failure that will not succeed: the job goes to the failed set without further attempts.
    /// Takes a message or an error, as [`JobError::retry`].
    pub fn fatal(error: impl Into<BoxError>) -> Self {
        Self::from_error(JobErrorKind::Permanent, error.into())
    }

    /// The error this failure was built from, if any (for a message, the message as an error).
    pub fn source(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref()
    }

    /// Not a failure: run the job again after `delay` without using an attempt (waiting for a
    /// resource, a rate limit of another service).
    pub fn snooze(delay: Duration) -> Self {
        Self {
            kind: JobErrorKind::Snooze,
            message: format!("snoozed for {} ms", delay.as_millis()),
            snooze: Some(delay),
            source: None,
        }
    }

    /// How long the job asked to wait, for a snooze.
    pub fn snooze_for(&self) -> Option<Duration> {
        self.snooze
    }

    pub(crate) fn timeout(limit: Duration) -> Self {
        Self {
            kind: JobErrorKind::Timeout,
            message: format!("timed out after {} ms", limit.as_millis()),
            snooze: None,
            source: None,
        }
    }

    pub(crate) fn panicked(message: &str) -> Self {
        Self {
            kind: JobErrorKind::Panicked,
            message: format!("panicked: {message}"),
            snooze: None,
            source: None,
        }
    }

    /// The kind of failure.
    pub fn kind(&self) -> JobErrorKind {
        self.kind
    }

    /// True if the remaining retries are skipped.
    pub fn is_permanent(&self) -> bool {
        self.kind == JobErrorKind::Permanent
    }

    /// The message, with the cause chain of the error it was built from.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Any error converts into a retryable [`JobError`] keeping its cause chain, so `?` works in
/// `handle` on a `std::error::Error + Send + Sync + 'static`, on `anyhow::Error` and on a
/// `Box<dyn Error + Send + Sync>`. (For that reason `JobError` itself does not implement
/// `std::error::Error`, as with `anyhow`.)
impl<E: Into<BoxError>> From<E> for JobError {
    fn from(error: E) -> Self {
        Self::retry(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("could not send the mail")]
    struct SendFailed(#[source] std::io::Error);

    fn send() -> Result<(), SendFailed> {
        Err(SendFailed(std::io::Error::other("connection refused")))
    }

    fn with_anyhow() -> anyhow::Result<()> {
        use anyhow::Context as _;
        send().context("welcome mail for user 7")
    }

    fn handle(use_anyhow: bool) -> Result<(), JobError> {
        if use_anyhow {
            with_anyhow()?;
        }
        send()?;
        Ok(())
    }

    #[test]
    fn question_mark_keeps_the_cause_chain() {
        let error = handle(false).expect_err("fails");
        assert_eq!(error.message(), "could not send the mail: connection refused");
        assert_eq!(error.kind(), JobErrorKind::Retryable);
        assert!(error.source().is_some_and(|e| e.source().is_some()), "the chain is there");
        let error = handle(true).expect_err("fails");
        assert_eq!(
            error.message(),
            "welcome mail for user 7: could not send the mail: connection refused"
        );
        let fatal = JobError::fatal(format!("bad input {}", 3));
        assert_eq!((fatal.message(), fatal.is_permanent()), ("bad input 3", true));
    }
}
