//! How much a backlog of delayed jobs slows the drain of ready ones.
//!
//! ```text
//! cargo run --release -p orcs-database --example delayed_backlog -- sqlite://storage/bench.db
//! cargo run --release -p orcs-database --example delayed_backlog -- postgres://postgres@127.0.0.1/test
//! ```
//!
//! Each run uses fresh tables (named `bench_<pid>_<n>_*`, dropped at the end): it drains READY
//! ready jobs by claim + complete, once alone and once beside DELAYED jobs due in an hour, and
//! prints both times (the best of three runs each) and their ratio. Ready and delayed jobs live
//! in different indexes, so the ratio should stay near 1.

mod common;

use std::time::Duration;

use orcs_core::{Clock, Driver, NewJob, SystemClock};

const READY: usize = 5_000;
const DELAYED: usize = 100_000;
const BATCH: usize = 50;
const RUNS: usize = 3;

fn job(queue: &str, now: i64, delay_ms: i64) -> NewJob {
    let mut job = NewJob::new(orcs_core::new_job_id(), "BenchJob", queue, "{}", now);
    job.available_at = now + delay_ms;
    job
}

/// Drains `READY` jobs next to `delayed` delayed ones on fresh tables; returns the drain time.
async fn drain(url: &str, run: usize, delayed: usize) -> orcs_core::Result<Duration> {
    let (driver, prefix) = common::fresh(url, run).await?;
    let now = SystemClock.now();
    let mut left = delayed;
    while left > 0 {
        let n = left.min(5_000);
        driver.push((0..n).map(|_| job("bench", now, 3_600_000)).collect()).await?;
        left -= n;
    }
    driver.push((0..READY).map(|_| job("bench", now, 0)).collect()).await?;
    let (took, done) = common::drain_ready(&driver, "bench", BATCH).await?;
    assert_eq!(done, READY, "every ready job was drained once");
    common::finish(driver, url, &prefix).await;
    Ok(took)
}

fn main() {
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: delayed_backlog <sqlite://PATH | postgres://...>");
        std::process::exit(2);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    // The best of a few runs each: the machine's other load only ever adds time.
    let result = runtime.block_on(async {
        let (mut alone, mut beside) = (Duration::MAX, Duration::MAX);
        for round in 0..RUNS {
            alone = alone.min(drain(&url, 2 * round, 0).await?);
            beside = beside.min(drain(&url, 2 * round + 1, DELAYED).await?);
        }
        Ok::<_, orcs_core::Error>((alone, beside))
    });
    match result {
        Ok((alone, beside)) => {
            let per_job = |d: Duration| d.as_secs_f64() * 1e6 / READY as f64;
            println!(
                "{READY} ready jobs, claim {BATCH} + complete: {:.0} ms ({:.0} us/job) with 0 \
                 delayed, {:.0} ms ({:.0} us/job) with {DELAYED} delayed; ratio {:.3}",
                alone.as_secs_f64() * 1e3,
                per_job(alone),
                beside.as_secs_f64() * 1e3,
                per_job(beside),
                beside.as_secs_f64() / alone.as_secs_f64()
            );
        }
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            std::process::exit(1);
        }
    }
}
