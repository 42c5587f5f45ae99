//! An application's own worker binary: its jobs, and every `orcs` command around them.
//!
//! ```text
//! cargo run -p orcs-cli --example custom_worker -- --driver database queue:dispatch InvoiceJob --data '{"invoice_id":42}'
//! cargo run -p orcs-cli --example custom_worker -- --driver database queue:work --queue billing --stop-when-empty
//! ```

use std::process::ExitCode;
use std::time::Duration;

use orcs_core::{Job, JobContext, JobError};
use serde::{Deserialize, Serialize};

/// Sends an invoice; the struct is the job's data.
#[derive(Debug, Serialize, Deserialize)]
struct InvoiceJob {
    invoice_id: u64,
    #[serde(default)]
    resend: bool,
}

impl Job for InvoiceJob {
    const NAME: &'static str = "InvoiceJob";
    const QUEUE: &'static str = "billing";
    const PRIORITY: i32 = 5;
    const MAX_RETRIES: u32 = 5;
    const RETRY_DELAY: Duration = Duration::from_secs(30);
    const TIMEOUT: Option<Duration> = Some(Duration::from_secs(20));

    async fn handle(&self, ctx: &JobContext) -> Result<(), JobError> {
        if self.invoice_id == 0 {
            // No later attempt can fix a missing invoice: skip the retries.
            return Err(JobError::fatal("invoice 0 does not exist"));
        }
        println!(
            "attempt {}: sending invoice {} (resend: {})",
            ctx.attempt(),
            self.invoice_id,
            self.resend
        );
        Ok(())
    }

    async fn failed(&self, _ctx: &JobContext, error: &JobError) {
        eprintln!("invoice {} could not be sent: {error}", self.invoice_id);
    }
}

fn main() -> ExitCode {
    // The seed's example jobs can be registered too: `orcs_cli::examples::register(app)`.
    orcs_cli::App::new().name("billing-worker").register::<InvoiceJob>().run()
}
