//! An outbox relay process: moves the jobs an application wrote into its PostgreSQL outbox
//! (`Outbox::push_in` / `dispatch_in`, inside its own transactions) to the Redis queue its
//! workers read, each exactly once. Run one or several beside the application; kill them at
//! will (`tests/outbox.rs` does, with SIGKILL, in the middle of relaying).
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379/0 \
//!   cargo run -p orcs --example outbox_relay --features postgres,redis
//! ```
//!
//! `OUTBOX_BATCH_SIZE` sets the rows per relay transaction (default 100). It stops on Ctrl-C or
//! SIGTERM after the batch in hand.

use std::error::Error;

use orcs::outbox::{Outbox, OutboxConfig};
use orcs::prelude::*;
use orcs::sqlx::PgPool;

fn setting(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set; see the top of outbox_relay.rs"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let pool = PgPool::connect(&setting("DATABASE_URL")?).await.map_err(|e| {
        format!(
            "cannot connect to the application's database (DATABASE_URL, a PostgreSQL URL): {e}"
        )
    })?;
    let mut config = OutboxConfig::new();
    if let Ok(rows) = std::env::var("OUTBOX_BATCH_SIZE") {
        let rows = rows.parse().map_err(|_| {
            format!("OUTBOX_BATCH_SIZE={rows:?} is not a number of rows (1 to 1000)")
        })?;
        config = config.with_batch_size(rows);
    }
    let outbox = Outbox::new(pool, config)?;
    outbox.setup().await?;
    let queue = Queue::connect(&setting("REDIS_URL")?).await?;
    // The URL stays out of the output: it may hold a password.
    println!(
        "relaying the outbox to {} ({} rows waiting)",
        queue.driver().name(),
        outbox.pending().await?
    );
    let relayed = outbox.run_relay(queue, orcs::shutdown_signal()).await?;
    println!("stopped after relaying {relayed} jobs");
    Ok(())
}
