//! Job middleware: layers around every attempt's `handle`, composed in order.
//!
//! A layer sees the job's context before `handle` runs, decides whether and how to run it
//! ([`Next::run`]), and sees the outcome after: the place for tracing, metrics, payload
//! encryption or a custom policy. The worker's built-in span is one such layer ([`TraceLayer`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use tracing::Instrument as _;

use crate::job::{JobContext, JobError};
use crate::registry::ErasedJob;

/// A layer around every attempt: `call` runs before the job, runs the rest of the chain with
/// [`Next::run`] (or does not, failing or snoozing the attempt itself), and sees the outcome.
///
/// ```
/// use orcs_core::{JobContext, JobError, Middleware, Next, async_trait};
///
/// /// Counts attempts and failures.
/// #[derive(Default)]
/// struct Counter(std::sync::atomic::AtomicU64, std::sync::atomic::AtomicU64);
///
/// #[async_trait]
/// impl Middleware for Counter {
///     async fn call(&self, ctx: &JobContext, next: Next<'_>) -> Result<(), JobError> {
///         self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///         let outcome = next.run(ctx).await;
///         if outcome.is_err() {
///             self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///         }
///         outcome
///     }
/// }
/// ```
#[async_trait]
pub trait Middleware: Send + Sync + 'static {
    /// Runs around one attempt; call `next.run(ctx)` to run the inner layers and the job.
    async fn call(&self, ctx: &JobContext, next: Next<'_>) -> Result<(), JobError>;
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The rest of the chain: the inner layers, then the job's `handle`.
pub struct Next<'a> {
    job: &'a dyn ErasedJob,
    rest: &'a [Arc<dyn Middleware>],
    /// The job's stored meta, for [`TraceLayer`] to continue the dispatcher's trace (feature
    /// `opentelemetry`); borrowed, so carrying it costs nothing.
    meta: Option<&'a str>,
}

impl std::fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Next").field("layers_left", &self.rest.len()).finish_non_exhaustive()
    }
}

impl<'a> Next<'a> {
    pub(crate) fn new(
        job: &'a dyn ErasedJob,
        layers: &'a [Arc<dyn Middleware>],
        meta: Option<&'a str>,
    ) -> Self {
        Self { job, rest: layers, meta }
    }

    /// Runs the inner layers and then the job.
    pub fn run<'c>(self, ctx: &'c JobContext) -> BoxFuture<'c, Result<(), JobError>>
    where
        'a: 'c,
    {
        match self.rest.split_first() {
            // async_trait already boxes `call`'s future: hand it on as it is.
            Some((layer, rest)) => layer.call(ctx, Next { job: self.job, rest, meta: self.meta }),
            None => self.job.handle(ctx),
        }
    }
}

/// The worker's built-in layer: a `tracing` span per attempt (job name, id, queue, attempt),
/// and a debug event with the outcome. On by default; [`crate::Worker::without_default_layers`]
/// removes it.
///
/// With the `opentelemetry` feature and a `tracing-opentelemetry` layer in the subscriber, the
/// span continues the trace of the span that dispatched the job (its W3C `traceparent`, stored
/// with the job), so the attempt shows up under the dispatch in the same trace.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLayer;

#[async_trait]
impl Middleware for TraceLayer {
    async fn call(&self, ctx: &JobContext, next: Next<'_>) -> Result<(), JobError> {
        let span = tracing::info_span!(
            "job",
            name = %ctx.name(),
            id = %ctx.id(),
            queue = %ctx.queue(),
            attempt = ctx.attempt(),
        );
        // Before the span is first entered: its OpenTelemetry parent is fixed when it starts.
        crate::trace_context::continue_trace(&span, next.meta);
        async move {
            let outcome = next.run(ctx).await;
            if let Err(error) = &outcome {
                tracing::debug!(error = %error, "the attempt failed");
            }
            outcome
        }
        .instrument(span)
        .await
    }
}
