//! Workflows: chains (jobs run one after another) and batches (a set of jobs with callbacks).
//!
//! A **chain** needs no driver support: the remaining steps travel in [`NewJob::meta`] of the
//! step that runs, as a flat list of records whose ids were fixed at dispatch, with the chain's
//! `catch` job. When a step completes, the worker settles it with the next step in
//! [`crate::Effects::enqueue`], so the next step becomes available in the same atomic step that
//! completes the previous one; a step failing for good settles with the `catch` job instead; a
//! cancelled step ends the chain.
//!
//! A **batch** is counted by the driver ([`crate::Driver::push_batch`], [`crate::NewBatch`]):
//! each child's terminal transition updates the batch in the same atomic step, and the driver
//! dispatches the callbacks, whose ids were fixed at dispatch.
//!
//! Both are refused with [`Error::Unsupported`] when they span several queues on a backend whose
//! atomic steps cannot ([`crate::Capabilities::cross_queue_atomic`], a Redis Cluster).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::id::new_job_id;
use crate::job::Job;
use crate::queue::{DispatchOptions, Queue};
use crate::record::{BatchInfo, NewBatch, NewJob, PushOutcome};

/// Turns a typed job into its record at dispatch time, so that every record of a workflow shares
/// one dispatch time and the builder needs no queue.
type MakeRecord = Box<dyn FnOnce(&Queue, Millis) -> Result<NewJob> + Send + Sync>;

/// A typed job waiting for its workflow's dispatch.
struct Prepared {
    name: &'static str,
    make: MakeRecord,
}

impl Prepared {
    fn new<J: Job>(job: J, options: DispatchOptions) -> Self {
        Self { name: J::NAME, make: Box::new(move |queue, now| queue.record(&job, &options, now)) }
    }

    fn record(self, queue: &Queue, now: Millis) -> Result<NewJob> {
        (self.make)(queue, now)
    }
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// Jobs that run one after another, dispatched with [`Queue::dispatch_chain`].
///
/// Each step keeps its own queue, priority, retries and timeout. A step starts when the previous
/// one completed (in the same atomic step as that completion); a step that fails for good stops
/// the chain and dispatches the `catch` job, if any; a cancelled step stops the chain without
/// `catch`. A step's delay counts from the completion of the step before it.
///
/// Each step carries the records of the steps after it, so a chain's storage grows with the
/// square of its length: it is meant for a few to a few dozen steps (a batch fans out wider).
///
/// ```
/// use orcs_core::{Chain, DispatchOptions, Job, JobContext, JobError, Queue, Registry, Worker};
/// use orcs_memory::MemoryDriver;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Resize(u32);
/// impl Job for Resize {
///     const NAME: &'static str = "Resize";
///     async fn handle(&self, _: &JobContext) -> Result<(), JobError> { Ok(()) }
/// }
/// #[derive(Serialize, Deserialize)]
/// struct Notify(u32);
/// impl Job for Notify {
///     const NAME: &'static str = "Notify";
///     async fn handle(&self, _: &JobContext) -> Result<(), JobError> { Ok(()) }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> orcs_core::Result<()> {
/// let queue = Queue::new(MemoryDriver::new());
/// let chain = Chain::new()
///     .then(Resize(7))
///     .then_with(Notify(7), DispatchOptions::new().priority(5))
///     .catch(Notify(0));
/// let first = queue.dispatch_chain(chain).await?;
/// assert_eq!(queue.stats("default").await?.pending, 1, "only the first step is stored");
///
/// let registry = Registry::new().register::<Resize>().register::<Notify>();
/// let summary = Worker::new(queue.clone(), registry).stop_when_empty(true).run().await?;
/// assert_eq!(summary.done, 2, "both steps, one after the other; no catch");
/// # let _ = first;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Default)]
#[must_use = "a chain does nothing until it is dispatched with Queue::dispatch_chain"]
pub struct Chain {
    steps: Vec<Prepared>,
    catch: Option<Prepared>,
}

impl Chain {
    /// An empty chain.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a step with its type's defaults.
    pub fn then<J: Job>(self, job: J) -> Self {
        self.then_with(job, DispatchOptions::new())
    }

    /// Adds a step with overrides (queue, priority, delay after the previous step, retries, ...).
    pub fn then_with<J: Job>(mut self, job: J, options: DispatchOptions) -> Self {
        self.steps.push(Prepared::new(job, options));
        self
    }

    /// The job dispatched if a step fails for good (replaces an earlier one).
    pub fn catch<J: Job>(self, job: J) -> Self {
        self.catch_with(job, DispatchOptions::new())
    }

    /// [`Chain::catch`] with overrides.
    pub fn catch_with<J: Job>(mut self, job: J, options: DispatchOptions) -> Self {
        self.catch = Some(Prepared::new(job, options));
        self
    }

    /// The number of steps.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// True if the chain has no step.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The records of the steps and of `catch`, all dispatched at `now`.
    pub(crate) fn records(
        self,
        queue: &Queue,
        now: Millis,
    ) -> Result<(Vec<NewJob>, Option<NewJob>)> {
        // A step's own meta is written when it is enqueued (the chain's rest, its trace context),
        // so the copies nested in the chain carry none.
        let bare = |mut job: NewJob| {
            job.meta = None;
            job
        };
        let steps = self
            .steps
            .into_iter()
            .map(|step| step.record(queue, now).map(bare))
            .collect::<Result<_>>()?;
        let catch = self.catch.map(|job| job.record(queue, now).map(bare)).transpose()?;
        Ok((steps, catch))
    }
}

/// The workflow metadata the worker reads back from [`NewJob::meta`]: a JSON object with one key
/// per feature, so that features ignore each other's keys.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Meta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chain: Option<ChainMeta>,
}

/// What is left of a chain after the step that carries it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ChainMeta {
    /// The remaining steps, in order (flat: a step's own meta is filled when it is enqueued).
    #[serde(default)]
    next: Vec<NewJob>,
    /// Dispatched if a step fails for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    catch: Option<NewJob>,
}

/// The meta of a step followed by `next` and `catch`; `None` when nothing follows it.
fn chain_meta(next: &[NewJob], catch: Option<&NewJob>) -> Result<Option<String>> {
    if next.is_empty() && catch.is_none() {
        return Ok(None);
    }
    #[derive(Serialize)]
    struct Borrowed<'a> {
        chain: BorrowedChain<'a>,
    }
    #[derive(Serialize)]
    struct BorrowedChain<'a> {
        next: &'a [NewJob],
        #[serde(skip_serializing_if = "Option::is_none")]
        catch: Option<&'a NewJob>,
    }
    let meta = Borrowed { chain: BorrowedChain { next, catch } };
    serde_json::to_string(&meta).map(Some).map_err(Error::Serialization)
}

/// A stored step made available at `now`: its delay counts from the previous step's end, and a
/// `Period` unique key from then too.
fn retimed(mut job: NewJob, now: Millis) -> NewJob {
    let delay = job.available_at.saturating_sub(job.dispatched_at).max(0);
    job.dispatched_at = now;
    job.available_at = now.saturating_add(delay);
    job
}

/// How a chain step ended for good, for [`chain_follow_ups`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StepEnd {
    /// Completed: the next step follows.
    Completed,
    /// Failed for good: the chain's `catch` follows.
    Failed,
}

/// The jobs to enqueue with the settle of a job carrying `meta` that ended as `end`: the chain's
/// next step (with the rest of the chain in its meta) or its `catch`, made available at `now()`.
/// Jobs without meta (most) cost nothing here: no clock read, no parse, no allocation.
pub(crate) fn chain_follow_ups(
    meta: Option<&str>,
    end: StepEnd,
    now: impl FnOnce() -> Millis,
) -> Vec<NewJob> {
    let Some(meta) = meta else { return Vec::new() };
    let chain = match serde_json::from_str::<Meta>(meta) {
        Ok(Meta { chain: Some(chain) }) => chain,
        Ok(Meta { chain: None }) => return Vec::new(),
        Err(e) => {
            tracing::warn!(
                error = %e,
                "the job's meta is not orcs workflow metadata (a JSON object); no chain step follows it"
            );
            return Vec::new();
        }
    };
    let now = now();
    match end {
        StepEnd::Failed => chain.catch.into_iter().map(|job| retimed(job, now)).collect(),
        StepEnd::Completed => {
            let mut rest = chain.next.into_iter();
            let Some(next) = rest.next() else { return Vec::new() };
            let rest: Vec<NewJob> = rest.collect();
            let mut next = retimed(next, now);
            match chain_meta(&rest, chain.catch.as_ref()) {
                Ok(meta) => next.meta = meta,
                // Records that deserialized serialize again; if not, the chain cannot go on.
                Err(e) => {
                    tracing::error!(error = %e, "could not write the chain's remaining steps");
                    return Vec::new();
                }
            }
            vec![next]
        }
    }
}

/// Refuses a workflow spanning several queues where one atomic step cannot.
fn check_one_queue<'a>(
    queue: &Queue,
    what: &str,
    jobs: impl IntoIterator<Item = &'a NewJob>,
) -> Result<()> {
    let driver = queue.driver();
    if driver.capabilities().cross_queue_atomic {
        return Ok(());
    }
    let mut queues: Vec<&str> = jobs.into_iter().map(|job| job.queue.as_str()).collect();
    queues.sort_unstable();
    queues.dedup();
    if queues.len() > 1 {
        return Err(Error::unsupported(
            driver.name(),
            format!(
                "a {what} across the queues {queues:?}: on this backend one atomic step cannot \
                 span queues; keep the {what} on one queue (DispatchOptions::queue on every job \
                 of it)"
            ),
        ));
    }
    Ok(())
}

impl Queue {
    /// Dispatches a chain: stores its first step (carrying the rest of the chain) and returns its
    /// id. Every step's id is fixed here.
    ///
    /// If the first step is refused as a duplicate (its unique key is held), nothing is stored
    /// and the holder's id is returned, as [`Queue::dispatch`] does.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an empty chain or a bad queue name; [`Error::Serialization`];
    /// [`Error::Unsupported`] if the steps and `catch` are on several queues and the backend
    /// cannot span queues in one atomic step (a Redis Cluster): keep a chain on one queue; a
    /// backend error.
    pub async fn dispatch_chain(&self, chain: Chain) -> Result<String> {
        if chain.is_empty() {
            return Err(Error::invalid("chain", "it has no step; add one with Chain::then"));
        }
        let (steps, catch) = chain.records(self, self.now())?;
        check_one_queue(self, "chain", steps.iter().chain(catch.as_ref()))?;
        let mut steps = steps.into_iter();
        let mut first = steps.next().expect("checked non-empty above");
        let rest: Vec<NewJob> = steps.collect();
        first.meta = chain_meta(&rest, catch.as_ref())?;
        let mut ids = self.dispatch_records(vec![first]).await?;
        Ok(ids.pop().unwrap_or_default())
    }

    /// Starts building a batch: a set of jobs with callbacks, dispatched with
    /// [`BatchBuilder::dispatch`].
    pub fn batch(&self) -> BatchBuilder {
        BatchBuilder {
            id: new_job_id(),
            queue: self.clone(),
            children: Vec::new(),
            then: None,
            catch: None,
            finally: None,
            allow_failures: false,
        }
    }

    /// A batch's counters and callbacks; `None` if no batch has this id.
    ///
    /// # Errors
    /// A backend error; [`Error::Unsupported`] on a driver without batches.
    pub async fn batch_info(&self, id: &str) -> Result<Option<BatchInfo>> {
        self.driver().batch(id).await
    }

    /// Cancels a batch: its waiting children are removed, its running ones stopped (within a
    /// second), and its `then` callback will not run (`finally` still does, when the last
    /// child ended). Cancelling a cancelled or finished batch changes nothing. Returns the batch
    /// after the cancel.
    ///
    /// # Errors
    /// [`Error::NotFound`] if no batch has this id; a backend error.
    pub async fn cancel_batch(&self, id: &str) -> Result<BatchInfo> {
        self.driver().cancel_batch(id, self.now()).await
    }
}

/// A batch being built ([`Queue::batch`]): children with `then` (every child completed), `catch`
/// (the first child failing for good) and `finally` (every child ended, however) callbacks.
///
/// The driver counts each child in the same atomic step as its end and dispatches each callback
/// at most once; the callbacks' ids are fixed at dispatch. The first child failing for good
/// cancels the others unless [`BatchBuilder::allow_failures`]. A callback is stored with the
/// batch, so a delay given to it counts from the batch's dispatch. A child sees its batch with
/// [`crate::JobContext::batch_id`].
///
/// ```
/// use orcs_core::{CallbackState, Job, JobContext, JobError, Queue, Registry, Worker};
/// use orcs_memory::MemoryDriver;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Thumbnail(u32);
/// impl Job for Thumbnail {
///     const NAME: &'static str = "Thumbnail";
///     async fn handle(&self, ctx: &JobContext) -> Result<(), JobError> {
///         assert!(ctx.batch_id().is_some());
///         Ok(())
///     }
/// }
/// #[derive(Serialize, Deserialize)]
/// struct Publish;
/// impl Job for Publish {
///     const NAME: &'static str = "Publish";
///     async fn handle(&self, _: &JobContext) -> Result<(), JobError> { Ok(()) }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> orcs_core::Result<()> {
/// let queue = Queue::new(MemoryDriver::new());
/// let id = queue
///     .batch()
///     .add(Thumbnail(1))
///     .add(Thumbnail(2))
///     .then(Publish)
///     .dispatch()
///     .await?;
///
/// let registry = Registry::new().register::<Thumbnail>().register::<Publish>();
/// Worker::new(queue.clone(), registry).stop_when_empty(true).run().await?;
/// let batch = queue.batch_info(&id).await?.expect("kept after it finished");
/// assert_eq!((batch.total, batch.processed, batch.pending), (2, 2, 0));
/// assert_eq!(batch.then.map(|then| then.state), Some(CallbackState::Dispatched));
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[must_use = "a batch does nothing until it is dispatched"]
pub struct BatchBuilder {
    id: String,
    queue: Queue,
    children: Vec<Prepared>,
    then: Option<Prepared>,
    catch: Option<Prepared>,
    finally: Option<Prepared>,
    allow_failures: bool,
}

impl BatchBuilder {
    /// The batch's id, fixed when the builder was made: a callback that wants to read the batch
    /// ([`Queue::batch_info`]) can carry it in its payload.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Adds a child with its type's defaults.
    #[allow(
        clippy::should_implement_trait,
        reason = "a builder step that takes a job, not `Add` of two batches"
    )]
    pub fn add<J: Job>(self, job: J) -> Self {
        self.add_with(job, DispatchOptions::new())
    }

    /// Adds a child with overrides.
    pub fn add_with<J: Job>(mut self, job: J, options: DispatchOptions) -> Self {
        self.children.push(Prepared::new(job, options));
        self
    }

    /// Dispatched when every child completed (none failed for good or was cancelled).
    pub fn then<J: Job>(self, job: J) -> Self {
        self.then_with(job, DispatchOptions::new())
    }

    /// [`BatchBuilder::then`] with overrides.
    pub fn then_with<J: Job>(mut self, job: J, options: DispatchOptions) -> Self {
        self.then = Some(Prepared::new(job, options));
        self
    }

    /// Dispatched when the first child fails for good.
    pub fn catch<J: Job>(self, job: J) -> Self {
        self.catch_with(job, DispatchOptions::new())
    }

    /// [`BatchBuilder::catch`] with overrides.
    pub fn catch_with<J: Job>(mut self, job: J, options: DispatchOptions) -> Self {
        self.catch = Some(Prepared::new(job, options));
        self
    }

    /// Dispatched when every child ended, however.
    pub fn finally<J: Job>(self, job: J) -> Self {
        self.finally_with(job, DispatchOptions::new())
    }

    /// [`BatchBuilder::finally`] with overrides.
    pub fn finally_with<J: Job>(mut self, job: J, options: DispatchOptions) -> Self {
        self.finally = Some(Prepared::new(job, options));
        self
    }

    /// A child failing for good does not cancel the others (`then` is still skipped).
    pub fn allow_failures(mut self) -> Self {
        self.allow_failures = true;
        self
    }

    /// Stores the batch and its children in one atomic step; returns the batch's id. A child
    /// refused as a duplicate (its unique key is held) is not part of the batch; a batch left
    /// without children finishes at once.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad queue name or an oversized payload;
    /// [`Error::Serialization`]; [`Error::Unsupported`] if the children and callbacks are on
    /// several queues and the backend cannot span queues in one atomic step (keep a batch on one
    /// queue), or on a driver without batches; a backend error, then nothing was stored.
    pub async fn dispatch(self) -> Result<String> {
        let queue = self.queue;
        let now = queue.now();
        let id = self.id;
        let children = self
            .children
            .into_iter()
            .map(|child| {
                let mut record = child.record(&queue, now)?;
                record.batch = Some(id.clone());
                Ok(record)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut batch = NewBatch::new(id.clone(), now);
        batch.then = self.then.map(|job| job.record(&queue, now)).transpose()?;
        batch.catch = self.catch.map(|job| job.record(&queue, now)).transpose()?;
        batch.finally = self.finally.map(|job| job.record(&queue, now)).transpose()?;
        batch.allow_failures = self.allow_failures;
        let callbacks = [&batch.then, &batch.catch, &batch.finally];
        check_one_queue(&queue, "batch", children.iter().chain(callbacks.into_iter().flatten()))?;
        let count = children.len();
        let driver = queue.driver();
        let outcomes: Vec<PushOutcome> = driver.push_batch(batch, children).await?;
        if outcomes.len() != count {
            return Err(Error::invalid(
                "push outcome",
                format!(
                    "the {} driver answered {} outcomes for {count} children; this is a driver bug",
                    driver.name(),
                    outcomes.len(),
                ),
            ));
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, queue: &str) -> NewJob {
        NewJob::new(id, "Step", queue, "{}", 1_000)
    }

    #[test]
    fn jobs_without_meta_have_no_follow_ups() {
        assert!(chain_follow_ups(None, StepEnd::Completed, || 5).is_empty());
        assert!(chain_follow_ups(Some(r#"{"schedule":1}"#), StepEnd::Completed, || 5).is_empty());
        assert!(chain_follow_ups(Some("not json"), StepEnd::Failed, || 5).is_empty());
    }

    #[test]
    fn a_completed_step_enqueues_the_next_with_the_rest_and_the_catch() {
        let mut delayed = job("b", "q");
        delayed.available_at = 1_250;
        let rest = [delayed, job("c", "q")];
        let catch = job("x", "q");
        let meta = chain_meta(&rest, Some(&catch)).expect("serializes").expect("some");

        let next = chain_follow_ups(Some(&meta), StepEnd::Completed, || 9_000);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].id, "b");
        assert_eq!((next[0].dispatched_at, next[0].available_at), (9_000, 9_250), "retimed");
        let after = chain_follow_ups(next[0].meta.as_deref(), StepEnd::Completed, || 10_000);
        assert_eq!(after.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), ["c"]);
        let last = after[0].meta.as_deref().expect("the last step still carries the catch");
        assert!(chain_follow_ups(Some(last), StepEnd::Completed, || 11_000).is_empty(), "the end");
        let caught = chain_follow_ups(Some(last), StepEnd::Failed, || 11_000);
        assert_eq!(caught.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), ["x"]);
        assert_eq!(caught[0].available_at, 11_000);
    }

    #[test]
    fn a_step_with_nothing_after_it_has_no_meta() {
        assert_eq!(chain_meta(&[], None).expect("serializes"), None);
    }
}
