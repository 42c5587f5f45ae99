//! What job middleware costs: the memory-driver drain with no layer against three no-op layers,
//! in interleaved rounds (medians and the ratio are printed).
//!
//! `cargo run --release -p orcs-memory --example layers -- [N] [ROUNDS]` (default 200000 jobs,
//! 5 rounds); `-- N 1 LAYERS` runs one drain with LAYERS layers (for `valgrind --tool=callgrind`),
//! `-- N 1 dispatch` only dispatches (its count is what a run spends outside the drain).

use std::time::Instant;

use orcs_core::{
    Job, JobContext, JobError, Middleware, Next, Queue, Registry, Worker, async_trait,
};
use orcs_memory::MemoryDriver;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Noop {
    n: u64,
}

impl Job for Noop {
    const NAME: &'static str = "Noop";

    async fn handle(&self, _ctx: &JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

/// A layer that only passes the attempt on.
struct Pass;

#[async_trait]
impl Middleware for Pass {
    async fn call(&self, ctx: &JobContext, next: Next<'_>) -> Result<(), JobError> {
        next.run(ctx).await
    }
}

async fn drain(n: u64, layers: usize) -> f64 {
    let queue = Queue::new(MemoryDriver::new());
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        queue.dispatch_many(chunk.iter().map(|&n| Noop { n })).await.expect("dispatch");
    }
    if layers == usize::MAX {
        // Dispatch only: the instructions a drain adds are a run's minus this one's.
        return 0.0;
    }
    let mut worker = Worker::new(queue, Registry::new().register::<Noop>())
        .without_default_layers()
        .concurrency(64)
        .stop_when_empty(true);
    for _ in 0..layers {
        worker = worker.layer(Pass);
    }
    let started = Instant::now();
    let summary = worker.run().await.expect("worker");
    assert_eq!(summary.done, n);
    n as f64 / started.elapsed().as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    // A third argument runs one drain with that many layers, for instruction counts under
    // `valgrind --tool=callgrind`, which a noisy machine does not disturb.
    if let Some(layers) = args
        .next()
        .map(|a| if a == "dispatch" { Ok(usize::MAX) } else { a.parse() })
        .and_then(Result::ok)
    {
        let rate = runtime.block_on(drain(n, layers));
        println!("{layers} layers: {rate:.0} jobs/s");
        return;
    }
    let (mut bare, mut layered) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let without = runtime.block_on(drain(n, 0));
        let with = runtime.block_on(drain(n, 3));
        println!(
            "round {round}: no layer {without:.0} jobs/s, three no-op layers {with:.0} jobs/s"
        );
        bare.push(without);
        layered.push(with);
    }
    let (bare, layered) = (median(bare), median(layered));
    println!(
        "median: no layer {bare:.0} jobs/s, three no-op layers {layered:.0} jobs/s, ratio {:.3}",
        layered / bare
    );
}
