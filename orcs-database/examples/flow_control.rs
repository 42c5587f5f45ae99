//! What flow control costs on the hot path: one-by-one dispatch with unique keys against plain
//! dispatch, and a drain under a concurrency limit equal to the claim size against an unlimited
//! one.
//!
//! ```text
//! cargo run --release -p orcs-database --example flow_control -- sqlite://storage/bench.db
//! cargo run --release -p orcs-database --example flow_control -- postgres://postgres@127.0.0.1/test
//! ```
//!
//! Each run uses fresh tables (named `bench_<pid>_<n>_*`, dropped at the end) and prints the
//! best of three runs of each, and the ratios (the targets: >= 0.85 for unique dispatch, >= 0.90
//! for the limited drain).

use std::time::{Duration, Instant};

use orcs_core::{
    Admin, ClaimRequest, Clock, Driver, NewJob, QueueLimits, Settle, SystemClock, Unique,
    UniqueUntil,
};
use orcs_database::{DatabaseConfig, DatabaseDriver};
use sqlx::Connection;

const DISPATCHES: usize = 2_000;
const DRAIN: usize = 5_000;
const SLOTS: usize = 16;
const RUNS: usize = 3;

async fn fresh(url: &str, run: usize) -> orcs_core::Result<(DatabaseDriver, String)> {
    let prefix = format!("bench_{}_{run}", std::process::id());
    let config = DatabaseConfig::new(url)
        .with_jobs_table(format!("{prefix}_jobs"))
        .with_failed_table(format!("{prefix}_failed"))
        .with_counters_table(format!("{prefix}_counters"));
    Ok((DatabaseDriver::connect_with(config).await?, prefix))
}

/// Dispatches `DISPATCHES` jobs one push each, with or without a unique key per job.
async fn dispatch(url: &str, run: usize, unique: bool) -> orcs_core::Result<Duration> {
    let (driver, prefix) = fresh(url, run).await?;
    let started = Instant::now();
    for i in 0..DISPATCHES {
        let mut job =
            NewJob::new(orcs_core::new_job_id(), "BenchJob", "bench", "{}", SystemClock.now());
        if unique {
            job.unique = Some(Unique::new(format!("key-{i}"), UniqueUntil::Finished));
        }
        driver.push(vec![job]).await?;
    }
    let took = started.elapsed();
    drop(driver);
    drop_tables(url, &prefix).await;
    Ok(took)
}

/// Drains `DRAIN` jobs by claiming the free slots and completing them, as a worker with `SLOTS`
/// slots does; the queue's concurrency limit is `SLOTS` if `limited`.
async fn drain(url: &str, run: usize, limited: bool) -> orcs_core::Result<Duration> {
    let (driver, prefix) = fresh(url, run).await?;
    let now = SystemClock.now();
    let jobs =
        (0..DRAIN).map(|_| NewJob::new(orcs_core::new_job_id(), "BenchJob", "bench", "{}", now));
    driver.push(jobs.collect()).await?;
    if limited {
        driver.set_limits("bench", &QueueLimits::none().concurrency(SLOTS as u32)).await?;
    }
    let queues = vec!["bench".to_owned()];
    let started = Instant::now();
    let mut done = 0;
    loop {
        let claim = driver.claim(&ClaimRequest::new(&queues, SLOTS, SystemClock.now())).await?;
        if claim.jobs.is_empty() {
            break;
        }
        let batch: Vec<Settle> =
            claim.jobs.into_iter().map(|reserved| Settle::complete(reserved.lease)).collect();
        for result in driver.settle(&batch, SystemClock.now()).await {
            result?;
        }
        done += batch.len();
    }
    let took = started.elapsed();
    assert_eq!(done, DRAIN, "every job was drained once");
    drop(driver);
    drop_tables(url, &prefix).await;
    Ok(took)
}

async fn drop_tables(url: &str, prefix: &str) {
    let tables = [
        "jobs",
        "failed",
        "counters",
        "jobs_queues",
        "jobs_unique",
        "jobs_starts",
        "jobs_migrations",
    ];
    let script = tables
        .iter()
        .map(|t| format!("DROP TABLE IF EXISTS \"{prefix}_{t}\""))
        .collect::<Vec<_>>()
        .join("; ");
    let script = sqlx::AssertSqlSafe(script);
    let result = if url.starts_with("sqlite:") {
        match sqlx::SqliteConnection::connect(url).await {
            Ok(mut conn) => sqlx::raw_sql(script).execute(&mut conn).await.map(drop),
            Err(e) => Err(e),
        }
    } else {
        match sqlx::PgConnection::connect(url).await {
            Ok(mut conn) => sqlx::raw_sql(script).execute(&mut conn).await.map(drop),
            Err(e) => Err(e),
        }
    };
    if let Err(e) = result {
        eprintln!("could not drop the benchmark tables {prefix}_*: {e}");
    }
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
    // The best of a few runs each, interleaved: the machine's other load only ever adds time.
    let result = runtime.block_on(async {
        let mut best = [Duration::MAX; 4];
        for round in 0..RUNS {
            best[0] = best[0].min(dispatch(&url, 4 * round, false).await?);
            best[1] = best[1].min(dispatch(&url, 4 * round + 1, true).await?);
            best[2] = best[2].min(drain(&url, 4 * round + 2, false).await?);
            best[3] = best[3].min(drain(&url, 4 * round + 3, true).await?);
        }
        Ok::<_, orcs_core::Error>(best)
    });
    match result {
        Ok([plain, unique, free, limited]) => {
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            println!(
                "{DISPATCHES} one-by-one dispatches: {:.0} ms plain, {:.0} ms with unique keys; \
                 throughput ratio {:.3}",
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
