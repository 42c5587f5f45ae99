//! What flow control costs on the hot path: one-by-one dispatch with unique keys against plain
//! dispatch, and a drain under a concurrency limit equal to the claim size against an unlimited
//! one.
//!
//! ```text
//! cargo run --release -p orcs-database --example flow_control -- sqlite://storage/bench.db
//! cargo run --release -p orcs-database --example flow_control -- postgres://postgres@127.0.0.1/test
//! ```
//!
//! Each run uses fresh tables (named `bench_<pid>_<n>_*`, dropped at the end). The dispatches
//! with and without keys alternate push by push, the drains run after them, round after round;
//! the medians of the rounds are printed with the ratios (the targets: >= 0.85 for unique
//! dispatch, >= 0.90 for the limited drain). `ROUNDS` (default 5) sets the number of rounds.

mod common;

use std::time::{Duration, Instant};

use orcs_core::{Admin, Clock, Driver, NewJob, QueueLimits, SystemClock, Unique, UniqueUntil};

const DISPATCHES: usize = 2_000;
const DRAIN: usize = 5_000;
const SLOTS: usize = 16;
const ROUNDS: usize = 5;

/// Dispatches `DISPATCHES` jobs one push each with a unique key and as many without,
/// alternately (so that the machine's other load hits both alike), and times each push:
/// returns the totals (plain, unique).
async fn dispatch(url: &str, run: usize) -> orcs_core::Result<(Duration, Duration)> {
    let (driver, prefix) = common::fresh(url, run).await?;
    let (mut plain, mut unique) = (Duration::ZERO, Duration::ZERO);
    for i in 0..DISPATCHES {
        // Which goes first alternates too.
        for keyed in [i % 2 == 0, i % 2 != 0] {
            let mut job =
                NewJob::new(orcs_core::new_job_id(), "BenchJob", "bench", "{}", SystemClock.now());
            if keyed {
                job.unique = Some(Unique::new(format!("key-{i}"), UniqueUntil::Finished));
            }
            let started = Instant::now();
            driver.push(vec![job]).await?;
            *(if keyed { &mut unique } else { &mut plain }) += started.elapsed();
        }
    }
    common::finish(driver, url, &prefix).await;
    Ok((plain, unique))
}

/// Drains `DRAIN` jobs by claiming the free slots and completing them, as a worker with `SLOTS`
/// slots does; the queue's concurrency limit is `SLOTS` if `limited`.
async fn drain(url: &str, run: usize, limited: bool) -> orcs_core::Result<Duration> {
    let (driver, prefix) = common::fresh(url, run).await?;
    let now = SystemClock.now();
    let jobs =
        (0..DRAIN).map(|_| NewJob::new(orcs_core::new_job_id(), "BenchJob", "bench", "{}", now));
    driver.push(jobs.collect()).await?;
    if limited {
        driver.set_limits("bench", &QueueLimits::none().concurrency(SLOTS as u32)).await?;
    }
    let (took, done) = common::drain_ready(&driver, "bench", SLOTS).await?;
    assert_eq!(done, DRAIN, "every job was drained once");
    common::finish(driver, url, &prefix).await;
    Ok(took)
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort_unstable();
    runs[runs.len() / 2]
}

fn main() {
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: flow_control <sqlite://PATH | postgres://...>");
        std::process::exit(2);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let rounds = std::env::var("ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(ROUNDS);
    // The cases alternate, so that a burst of other load on a noisy machine hits them alike;
    // the median of each ignores the rounds it spoiled.
    let result = runtime.block_on(async {
        let mut runs: [Vec<Duration>; 4] = Default::default();
        for round in 0..rounds.max(1) {
            let (plain, unique) = dispatch(&url, 3 * round).await?;
            runs[0].push(plain);
            runs[1].push(unique);
            runs[2].push(drain(&url, 3 * round + 1, false).await?);
            runs[3].push(drain(&url, 3 * round + 2, true).await?);
        }
        Ok::<_, orcs_core::Error>(runs.map(median))
    });
    match result {
        Ok([plain, unique, free, limited]) => {
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            println!(
                "{DISPATCHES} + {DISPATCHES} one-by-one dispatches: {:.0} ms plain, {:.0} ms with \
                 unique keys; throughput ratio {:.3}",
                ms(plain),
                ms(unique),
                plain.as_secs_f64() / unique.as_secs_f64()
            );
            println!(
                "drain of {DRAIN} jobs, claim {SLOTS} + complete: {:.0} ms unlimited, {:.0} ms \
                 with concurrency {SLOTS}; throughput ratio {:.3}",
                ms(free),
                ms(limited),
                free.as_secs_f64() / limited.as_secs_f64()
            );
        }
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            std::process::exit(1);
        }
    }
}
