//! Trace context across processes (feature `opentelemetry`): a job dispatched inside a traced
//! span stores the span's `traceparent`, and the worker's attempt span continues that trace.
//!
//! One subscriber for the whole binary (the worker's tasks may run on any thread): a
//! tracing-opentelemetry layer over a tracer provider that keeps finished spans in memory. Tests
//! run in parallel, so each one finds its own spans by trace id or job id.

use std::sync::OnceLock;

use opentelemetry::trace::{SpanId, TraceContextExt as _, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use orcs_core::{
    ClaimRequest, DispatchOptions, Job, JobContext, JobError, NewJob, Queue, Registry, Worker,
};
use orcs_memory::MemoryDriver;
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

/// The finished spans of every test, kept for the process's life.
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        // The simple processor exports each span as it ends: no flush to wait for.
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("orcs-test"));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other test in this binary installs a subscriber");
        exporter
    })
}

fn finished() -> Vec<SpanData> {
    exporter().get_finished_spans().expect("the in-memory exporter is not shut down")
}

/// The attempt spans ([`orcs_core::TraceLayer`]'s `job` span) of the job with this id.
fn attempt_spans(id: &str) -> Vec<SpanData> {
    finished()
        .into_iter()
        .filter(|span| {
            span.name == "job"
                && span
                    .attributes
                    .iter()
                    .any(|kv| kv.key.as_str() == "id" && kv.value.as_str() == id)
        })
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

#[derive(Serialize, Deserialize)]
struct Ping(u32);

impl Job for Ping {
    const NAME: &'static str = "Ping";
    const MAX_RETRIES: u32 = 0;

    async fn handle(&self, _: &JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

/// The trace and span id of a span, as OpenTelemetry sees it.
fn ids_of(span: &tracing::Span) -> (TraceId, SpanId) {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    assert!(
        span_context.is_valid(),
        "the test subscriber gives every span an OpenTelemetry context"
    );
    (span_context.trace_id(), span_context.span_id())
}

/// The `traceparent` a job's stored meta carries, if any.
fn traceparent(meta: Option<&str>) -> Option<String> {
    let meta: serde_json::Value = serde_json::from_str(meta?).expect("meta is JSON");
    meta.get("traceparent").map(|value| value.as_str().expect("a string").to_owned())
}

/// The meta of every job waiting in `queue`'s driver, by claiming them.
async fn claimed_metas(queue: &Queue) -> Vec<Option<String>> {
    let queues = ["default".to_owned()];
    let claim = queue
        .driver()
        .claim(&ClaimRequest::new(&queues, 100, queue.now()))
        .await
        .expect("claim from the memory driver");
    claim.jobs.into_iter().map(|reserved| reserved.record.meta).collect()
}

fn run_worker(queue: &Queue) -> orcs_core::WorkerSummary {
    let rt = runtime();
    let registry = Registry::new().register::<Ping>();
    rt.block_on(Worker::new(queue.clone(), registry).stop_when_empty(true).run())
        .expect("the worker runs")
}

#[test]
fn the_attempt_span_continues_the_dispatching_span() {
    exporter();
    let queue = Queue::new(MemoryDriver::new());
    let dispatch = tracing::info_span!("http_request");
    let (trace_id, span_id) = ids_of(&dispatch);
    let rt = runtime();
    let id = rt.block_on(queue.dispatch(Ping(1)).instrument(dispatch.clone())).expect("dispatch");
    let prepared = dispatch.in_scope(|| queue.prepare(&Ping(2), &DispatchOptions::new()));
    drop(dispatch);

    let expected = format!("00-{trace_id}-{span_id}-01");
    let stored = traceparent(prepared.expect("prepare").meta.as_deref());
    assert_eq!(stored.as_deref(), Some(expected.as_str()), "prepare stores the span's context");

    let summary = run_worker(&queue);
    assert_eq!(summary.done, 1, "the job ran");
    let spans = attempt_spans(&id);
    assert_eq!(spans.len(), 1, "one attempt span for job {id}: {spans:#?}");
    let attempt = &spans[0];
    assert_eq!(attempt.span_context.trace_id(), trace_id, "the dispatcher's trace");
    assert_eq!(attempt.parent_span_id, span_id, "the dispatch span is the attempt's parent");
    assert!(attempt.parent_span_is_remote, "the parent came from the job, not this process");
    assert!(
        finished().iter().any(|span| span.span_context.span_id() == span_id),
        "the dispatch span itself was exported"
    );
}

#[test]
fn a_job_dispatched_outside_any_span_carries_no_trace_context() {
    exporter();
    let queue = Queue::new(MemoryDriver::new());
    let rt = runtime();
    let prepared = queue.prepare(&Ping(1), &DispatchOptions::new()).expect("prepare");
    assert_eq!(prepared.meta, None, "no span, no meta");
    rt.block_on(async {
        queue.dispatch(Ping(2)).await.expect("dispatch");
        queue.dispatch_records(vec![prepared]).await.expect("dispatch a record");
        assert_eq!(claimed_metas(&queue).await, vec![None, None], "nothing stored with the jobs");
    });
}

#[test]
fn an_untyped_record_and_a_chain_take_the_dispatching_span() {
    exporter();
    let queue = Queue::new(MemoryDriver::new());
    let dispatch = tracing::info_span!("cli_dispatch");
    let (trace_id, span_id) = ids_of(&dispatch);
    let expected = format!("00-{trace_id}-{span_id}-01");
    let rt = runtime();
    rt.block_on(
        async {
            // A record with meta of its own keeps it, and gains the trace context.
            let mut record = NewJob::new(orcs_core::new_job_id(), "Ping", "default", "7", 0);
            record.meta = Some(r#"{"app":"kept"}"#.to_owned());
            queue.dispatch_records(vec![record]).await.expect("dispatch a record");
            let metas = claimed_metas(&queue).await;
            let meta: serde_json::Value =
                serde_json::from_str(metas[0].as_deref().expect("meta")).expect("json");
            assert_eq!(meta, serde_json::json!({ "app": "kept", "traceparent": expected }));
        }
        .instrument(dispatch.clone()),
    );

    // A chain: its first step is stored with the trace context next to the chain's own key, and
    // the next step, enqueued by the worker, continues the same trace under the same span.
    let chain = orcs_core::Chain::new().then(Ping(1)).then(Ping(2));
    let first =
        rt.block_on(queue.dispatch_chain(chain).instrument(dispatch.clone())).expect("chain");
    drop(dispatch);
    let summary = run_worker(&queue);
    assert_eq!(summary.done, 2, "both steps ran");
    let steps: Vec<SpanData> = finished()
        .into_iter()
        .filter(|span| span.name == "job" && span.span_context.trace_id() == trace_id)
        .collect();
    assert_eq!(steps.len(), 2, "both steps' attempts are in the dispatcher's trace: {steps:#?}");
    assert!(steps.iter().all(|step| step.parent_span_id == span_id), "both under the dispatch");
    assert_eq!(attempt_spans(&first).len(), 1, "the first step is one of them");
}

#[test]
fn a_malformed_trace_context_is_ignored_and_the_job_runs() {
    exporter();
    let queue = Queue::new(MemoryDriver::new());
    let mut record = NewJob::new(orcs_core::new_job_id(), "Ping", "default", "3", 0);
    record.meta = Some(r#"{"traceparent":"00-not-a-trace-context"}"#.to_owned());
    let id = record.id.clone();
    runtime().block_on(queue.dispatch_records(vec![record])).expect("dispatch");
    let summary = run_worker(&queue);
    assert_eq!((summary.done, summary.failed), (1, 0), "tracing never fails a job");
    let spans = attempt_spans(&id);
    assert_eq!(spans.len(), 1, "one attempt span for job {id}");
    assert_eq!(spans[0].parent_span_id, SpanId::INVALID, "a trace of its own");
}

#[test]
fn a_batchs_children_and_callbacks_take_the_dispatching_span() {
    exporter();
    let queue = Queue::new(MemoryDriver::new());
    let dispatch = tracing::info_span!("batch_dispatch");
    let (trace_id, span_id) = ids_of(&dispatch);
    let rt = runtime();
    let batch = queue.batch().add(Ping(1)).add(Ping(2)).then(Ping(3)).finally(Ping(4));
    rt.block_on(batch.dispatch().instrument(dispatch.clone())).expect("batch");
    drop(dispatch);
    let summary = run_worker(&queue);
    assert_eq!(summary.done, 4, "two children and two callbacks ran");
    let attempts: Vec<SpanData> = finished()
        .into_iter()
        .filter(|span| span.name == "job" && span.span_context.trace_id() == trace_id)
        .collect();
    assert_eq!(attempts.len(), 4, "all in the dispatcher's trace: {attempts:#?}");
    assert!(attempts.iter().all(|span| span.parent_span_id == span_id), "all under the dispatch");
}
