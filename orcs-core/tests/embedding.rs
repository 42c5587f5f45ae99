//! What an application embedding orcs relies on in the worker: its state reaching jobs, and
//! middleware around every attempt. (Driver semantics live in the conformance suite; these are
//! the same on every driver, so the memory driver runs them.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use orcs_core::{
    Error, Job, JobContext, JobError, Middleware, Needs, Next, Queue, Registry, Worker, async_trait,
};
use orcs_memory::MemoryDriver;
use serde::{Deserialize, Serialize};

/// The application's state: what a real service would hold (a pool, a client).
#[derive(Debug, Default)]
struct Mailer {
    sent: Mutex<Vec<String>>,
}

#[derive(Serialize, Deserialize)]
struct Welcome {
    to: String,
}

impl Job for Welcome {
    const NAME: &'static str = "Welcome";
    const MAX_RETRIES: u32 = 0;

    fn needs(needs: &mut Needs) {
        needs.state::<Arc<Mailer>>();
    }

    async fn handle(&self, ctx: &JobContext) -> Result<(), JobError> {
        let mailer = ctx.state::<Arc<Mailer>>()?;
        mailer.sent.lock().expect("lock").push(self.to.clone());
        Ok(())
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

#[test]
fn a_job_reaches_the_application_state() {
    runtime().block_on(async {
        let mailer = Arc::new(Mailer::default());
        let queue = Queue::new(MemoryDriver::new());
        queue.dispatch(Welcome { to: "ada@example.com".into() }).await.expect("dispatch");
        let registry = Registry::new().state(Arc::clone(&mailer)).register::<Welcome>();
        let summary =
            Worker::new(queue, registry).stop_when_empty(true).run().await.expect("worker");
        assert_eq!(summary.done, 1);
        assert_eq!(*mailer.sent.lock().expect("lock"), ["ada@example.com"]);
    });
}

#[test]
fn a_worker_without_a_jobs_state_refuses_to_start() {
    runtime().block_on(async {
        let queue = Queue::new(MemoryDriver::new());
        let result = Worker::new(queue, Registry::new().register::<Welcome>())
            .stop_when_empty(true)
            .run()
            .await;
        match result {
            Err(Error::Invalid { what: "job state", message }) => {
                assert!(message.contains("job Welcome needs state of type"), "{message}");
                assert!(message.contains("Mailer"), "{message}");
            }
            other => panic!("the worker refuses to start, got {other:?}"),
        }
    });
}

/// Records what each layer saw, in order.
struct Recorder {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
    /// Fail the attempt without running the inner layers and the job.
    short_circuit: bool,
}

#[async_trait]
impl Middleware for Recorder {
    async fn call(&self, ctx: &JobContext, next: Next<'_>) -> Result<(), JobError> {
        self.log.lock().expect("lock").push(format!("{} before {}", self.name, ctx.name()));
        if self.short_circuit {
            return Err(JobError::retry("refused by policy"));
        }
        let outcome = next.run(ctx).await;
        let seen = if outcome.is_ok() { "ok" } else { "err" };
        self.log.lock().expect("lock").push(format!("{} after {seen}", self.name));
        outcome
    }
}

#[test]
fn middleware_runs_in_order_around_every_attempt_and_can_refuse_it() {
    runtime().block_on(async {
        let mailer = Arc::new(Mailer::default());
        let log = Arc::new(Mutex::new(Vec::new()));
        let queue = Queue::new(MemoryDriver::new());
        queue.dispatch(Welcome { to: "a@example.com".into() }).await.expect("dispatch");
        let registry = Registry::new().state(Arc::clone(&mailer)).register::<Welcome>();
        let layer = |name, short_circuit| Recorder { name, log: Arc::clone(&log), short_circuit };
        let summary = Worker::new(queue.clone(), registry.clone())
            .layer(layer("outer", false))
            .layer(layer("inner", false))
            .stop_when_empty(true)
            .run()
            .await
            .expect("worker");
        assert_eq!(summary.done, 1);
        assert_eq!(
            *log.lock().expect("lock"),
            ["outer before Welcome", "inner before Welcome", "inner after ok", "outer after ok"]
        );

        log.lock().expect("lock").clear();
        queue.dispatch(Welcome { to: "b@example.com".into() }).await.expect("dispatch");
        let summary = Worker::new(queue, registry)
            .without_default_layers()
            .layer(layer("outer", false))
            .layer(layer("policy", true))
            .stop_when_empty(true)
            .timeout(Duration::from_secs(5))
            .run()
            .await
            .expect("worker");
        assert_eq!(summary.failed, 1, "the refused attempt failed (no retries left)");
        assert_eq!(
            *log.lock().expect("lock"),
            ["outer before Welcome", "policy before Welcome", "outer after err"]
        );
        assert_eq!(mailer.sent.lock().expect("lock").len(), 1, "the job did not run");
    });
}
