//! What the benchmark examples share: fresh tables per run, a claim + complete drain, and the
//! tables' removal at the end.

use std::time::{Duration, Instant};

use orcs_core::{ClaimRequest, Clock, Driver, Settle, SystemClock};
use orcs_database::{DatabaseConfig, DatabaseDriver};
use sqlx::Connection;

/// A driver on fresh tables named `bench_<pid>_<run>_*`, and that prefix.
pub(crate) async fn fresh(url: &str, run: usize) -> orcs_core::Result<(DatabaseDriver, String)> {
    let prefix = format!("bench_{}_{run}", std::process::id());
    let config = DatabaseConfig::new(url)
        .with_jobs_table(format!("{prefix}_jobs"))
        .with_failed_table(format!("{prefix}_failed"))
        .with_counters_table(format!("{prefix}_counters"));
    Ok((DatabaseDriver::connect_with(config).await?, prefix))
}

/// Claims up to `batch` jobs of `queue` at a time and completes them until a claim comes back
/// empty; returns the time it took and how many jobs were drained.
pub(crate) async fn drain_ready(
    driver: &DatabaseDriver,
    queue: &str,
    batch: usize,
) -> orcs_core::Result<(Duration, usize)> {
    let queues = vec![queue.to_owned()];
    let started = Instant::now();
    let mut done = 0;
    loop {
        let claim = driver.claim(&ClaimRequest::new(&queues, batch, SystemClock.now())).await?;
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
    Ok((started.elapsed(), done))
}

/// Closes `driver` and drops the tables [`fresh`] made for it.
pub(crate) async fn finish(driver: DatabaseDriver, url: &str, prefix: &str) {
    drop(driver);
    drop_tables(url, prefix).await;
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
