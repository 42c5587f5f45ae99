//! A standalone worker binary: the signup service's jobs, run apart from its web servers.
//!
//! The queue comes from the environment as `orcs queue:work` reads it (`.env`,
//! `config/queue.toml`, `QUEUE_DRIVER`, `DATABASE_URL`, `QUEUE_WORKER_QUEUES` (default here:
//! `emails`), ...); the application's pool, which the jobs use, from `DATABASE_URL`. With
//! `axum_signup` started with `WORKER=0`:
//!
//! ```sh
//! QUEUE_DRIVER=database DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo run -p orcs --example worker --features postgres
//! ```
//!
//! It stops on Ctrl-C or SIGTERM, letting running jobs finish (`QUEUE_WORKER_SHUTDOWN_TIMEOUT`).

mod signup;

use orcs::prelude::*;
use orcs::sqlx::PgPool;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::load(None)?;
    let queue = config.connect().await?;
    let pool = PgPool::connect(config.database_url()).await.map_err(|e| {
        format!(
            "cannot connect to the application's database (DATABASE_URL, a PostgreSQL URL): {e}"
        )
    })?;
    signup::create_tables(&pool).await?;

    let mut options = config.worker_options();
    if config.worker.queues.is_empty() {
        // Nothing configured (QUEUE_WORKER_QUEUES, [worker] queues): the signup jobs' queue.
        options.queues = vec!["emails".to_owned()];
    }
    println!("working {} on the {} driver", options.queues.join(","), config.driver);
    let summary = Worker::new(queue, signup::registry(pool)).options(options).run().await?;
    println!("stopped after {} jobs ({} failed)", summary.done, summary.failed);
    Ok(())
}
