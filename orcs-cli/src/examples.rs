//! The seed's example jobs, registered by the shipped `orcs` binary so that it can demo, benchmark
//! and be tested as a black box.
//!
//! Their side effects are simulated: each logs what it would do (at `info`, so `RUST_LOG=info`
//! shows it). Each also accepts an optional `"simulate"` field to make it slow, failing or
//! panicking on purpose:
//!
//! ```json
//! {"to": "user@example.com", "simulate": {"work_ms": 200, "fail_attempts": 2, "panic": false}}
//! ```
//!
//! `work_ms` sleeps that long (cut short when the worker cancels the job); the first
//! `fail_attempts` attempts fail with a retryable error, or panic instead when `panic` is true.
//!
//! `probe_dir` (e.g. `"probe_dir": "/tmp/probe"`, an existing directory) makes each attempt
//! append a line to `<probe_dir>/events` when its work starts and when it ends (returns, fails,
//! panics, is cancelled or dropped):
//!
//! ```text
//! start <unix_nanos> <pid> <job id> <attempt>
//! end <unix_nanos> <pid> <job id> <attempt>
//! ```
//!
//! Each line is one `write` to a file opened in append mode, which Linux keeps whole, so the
//! jobs of several workers can share one probe: a test reads it to see how many attempts ran at
//! once across every process, or when they started. A start without an end is an attempt whose
//! process died (`SIGKILL`). It costs an `open` and a `write` per line; a start that cannot be
//! written fails the attempt for good (a probe that misses attempts would mislead).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use orcs_core::{Job, JobContext, JobError};
use serde::{Deserialize, Serialize};

use crate::App;

/// Registers every example job with `app`.
pub fn register(mut app: App) -> App {
    app.quiet_simulated_panics = true;
    app.register::<SendEmailJob>()
        .register::<SendWelcomeEmailJob>()
        .register::<ProcessImageJob>()
        .register::<GenerateReportJob>()
}

/// The registry of every example job.
pub fn registry() -> orcs_core::Registry {
    App::examples().registry().clone()
}

/// Makes an example job slow, failing or panicking on purpose.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Simulate {
    /// Sleep this long, in milliseconds, in every attempt.
    pub work_ms: u64,
    /// Fail the first this many attempts (a retryable error).
    pub fail_attempts: u32,
    /// Panic instead of returning an error in the failing attempts.
    pub panic: bool,
    /// Append `start`/`end` lines for every attempt to `events` in this directory (see the
    /// module's documentation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_dir: Option<PathBuf>,
}

impl Simulate {
    /// Sleeps `work_ms` unless cancelled, then fails if this attempt is one of the first
    /// `fail_attempts`.
    async fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
        // Held to the end of the attempt's work: its drop writes the `end` line on every path.
        let _probe = match &self.probe_dir {
            Some(dir) => Some(Probe::start(dir, ctx).map_err(|e| {
                JobError::fatal(format!("cannot append to the probe in {}: {e}", dir.display()))
            })?),
            None => None,
        };
        if self.work_ms > 0 {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(self.work_ms)) => {}
                () = ctx.cancelled() => return Err(JobError::retry("cancelled by the worker")),
            }
        }
        if ctx.attempt() <= self.fail_attempts {
            let message = format!(
                "{SIMULATED} of attempt {} (fails the first {})",
                ctx.attempt(),
                self.fail_attempts
            );
            if self.panic {
                panic!("{message}");
            }
            return Err(JobError::retry(message));
        }
        Ok(())
    }
}

/// One attempt's lines in a probe's `events` file: `start` when made, `end` when dropped.
#[derive(Debug)]
struct Probe {
    events: PathBuf,
    /// What follows the time on both lines: ` <pid> <job id> <attempt>`.
    who: String,
}

impl Probe {
    fn start(dir: &Path, ctx: &JobContext) -> std::io::Result<Self> {
        let who = format!(" {} {} {}", std::process::id(), ctx.id(), ctx.attempt());
        let probe = Self { events: dir.join("events"), who };
        probe.write("start")?;
        Ok(probe)
    }

    fn write(&self, what: &str) -> std::io::Result<()> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        // One write of the whole line: O_APPEND then keeps lines of concurrent writers apart.
        let line = format!("{what} {nanos}{}\n", self.who);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.events)?
            .write_all(line.as_bytes())
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Err(e) = self.write("end") {
            tracing::warn!(events = %self.events.display(), "cannot append to the probe: {e}");
        }
    }
}

/// The start of every deliberate panic's message.
const SIMULATED: &str = "simulated failure";

/// Keeps the deliberate panics of the `simulate` knob out of stderr (the worker's line for the
/// attempt already shows them); real panics still print.
pub(crate) fn quiet_simulated_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let simulated =
            info.payload().downcast_ref::<String>().is_some_and(|m| m.starts_with(SIMULATED));
        if !simulated {
            default(info);
        }
    }));
}

async fn simulate(simulate: Option<&Simulate>, ctx: &JobContext) -> Result<(), JobError> {
    match simulate {
        Some(s) => s.run(ctx).await,
        None => Ok(()),
    }
}

/// Sends one email (seed: queue `emails`, priority 10, 3 retries, 60 s backoff, 30 s timeout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendEmailJob {
    /// The recipient.
    pub to: String,
    /// The subject line.
    #[serde(default)]
    pub subject: String,
    /// The body.
    #[serde(default)]
    pub body: String,
    /// Failure injection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulate: Option<Simulate>,
}

impl Job for SendEmailJob {
    const NAME: &'static str = "SendEmailJob";
    const QUEUE: &'static str = "emails";
    const PRIORITY: i32 = 10;
    const MAX_RETRIES: u32 = 3;
    const RETRY_DELAY: Duration = Duration::from_secs(60);
    const TIMEOUT: Option<Duration> = Some(Duration::from_secs(30));

    async fn handle(&self, ctx: &JobContext) -> Result<(), JobError> {
        simulate(self.simulate.as_ref(), ctx).await?;
        tracing::info!(to = %self.to, subject = %self.subject, "sent email (simulated)");
        Ok(())
    }

    async fn failed(&self, _ctx: &JobContext, error: &JobError) {
        tracing::info!(to = %self.to, %error, "failed to send email for good (simulated alert)");
    }
}

/// Welcomes a new user by email (seed: queue `emails`, 3 retries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendWelcomeEmailJob {
    /// The user's id.
    #[serde(default)]
    pub user_id: u64,
    /// Where the email goes.
    pub email: String,
    /// The name the email greets.
    #[serde(default)]
    pub name: String,
    /// Failure injection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulate: Option<Simulate>,
}

impl Job for SendWelcomeEmailJob {
    const NAME: &'static str = "SendWelcomeEmailJob";
    const QUEUE: &'static str = "emails";
    const MAX_RETRIES: u32 = 3;

    async fn handle(&self, ctx: &JobContext) -> Result<(), JobError> {
        simulate(self.simulate.as_ref(), ctx).await?;
        tracing::info!(user_id = self.user_id, email = %self.email, "sent welcome email and marked the user (simulated)");
        Ok(())
    }

    async fn failed(&self, ctx: &JobContext, error: &JobError) {
        tracing::info!(job = ctx.id(), user_id = self.user_id, %error, "welcome email failed for good (simulated alert)");
    }
}

/// One step of [`ProcessImageJob`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ImageOperation {
    /// Scale to a size.
    Resize {
        /// Pixels.
        width: u32,
        /// Pixels.
        height: u32,
    },
    /// Make a square thumbnail.
    Thumbnail {
        /// Pixels per side.
        size: u32,
    },
    /// Stamp a text on the image.
    Watermark {
        /// The text.
        text: String,
    },
}

/// Processes an uploaded image (seed: queue `images`, priority 5, 2 retries, 120 s timeout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProcessImageJob {
    /// The image.
    pub image_id: String,
    /// What to do with it, in order.
    #[serde(default)]
    pub operations: Vec<ImageOperation>,
    /// Failure injection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulate: Option<Simulate>,
}

impl Job for ProcessImageJob {
    const NAME: &'static str = "ProcessImageJob";
    const QUEUE: &'static str = "images";
    const PRIORITY: i32 = 5;
    const MAX_RETRIES: u32 = 2;
    const TIMEOUT: Option<Duration> = Some(Duration::from_secs(120));

    async fn handle(&self, ctx: &JobContext) -> Result<(), JobError> {
        simulate(self.simulate.as_ref(), ctx).await?;
        for op in &self.operations {
            tracing::info!(image = %self.image_id, ?op, "applied image operation (simulated)");
        }
        tracing::info!(image = %self.image_id, "saved image (simulated)");
        Ok(())
    }
}

/// Generates a report (seed: queue `reports`, priority 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GenerateReportJob {
    /// Which report.
    #[serde(default = "default_report")]
    pub report: String,
    /// The period it covers, e.g. `2026-11`.
    #[serde(default)]
    pub period: String,
    /// Failure injection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulate: Option<Simulate>,
}

fn default_report() -> String {
    "daily".to_owned()
}

impl Job for GenerateReportJob {
    const NAME: &'static str = "GenerateReportJob";
    const QUEUE: &'static str = "reports";
    const PRIORITY: i32 = 1;

    async fn handle(&self, ctx: &JobContext) -> Result<(), JobError> {
        simulate(self.simulate.as_ref(), ctx).await?;
        tracing::info!(report = %self.report, period = %self.period, "generated report (simulated)");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(attempt: u32) -> JobContext {
        JobContext::new("id", "SendEmailJob", "emails", attempt)
    }

    #[tokio::test]
    async fn simulate_fails_the_first_attempts_only() {
        let s = Simulate { fail_attempts: 2, ..Simulate::default() };
        assert!(s.run(&ctx(1)).await.is_err());
        assert!(s.run(&ctx(2)).await.is_err());
        assert!(s.run(&ctx(3)).await.is_ok());
    }

    #[tokio::test]
    async fn the_probe_logs_every_attempt_start_and_end() {
        let dir = std::env::temp_dir().join(format!("orcs-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s: Simulate = serde_json::from_value(serde_json::json!({
            "fail_attempts": 1, "probe_dir": dir
        }))
        .unwrap();
        assert!(s.run(&ctx(1)).await.is_err());
        assert!(s.run(&ctx(2)).await.is_ok());
        let events = std::fs::read_to_string(dir.join("events")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let lines: Vec<Vec<&str>> = events.lines().map(|l| l.split(' ').collect()).collect();
        let pid = std::process::id().to_string();
        let shape: Vec<(&str, &str, &str, &str)> =
            lines.iter().map(|l| (l[0], l[2], l[3], l[4])).collect();
        assert_eq!(
            shape,
            [
                ("start", pid.as_str(), "id", "1"),
                ("end", &pid, "id", "1"),
                ("start", &pid, "id", "2"),
                ("end", &pid, "id", "2")
            ]
        );
        let times: Vec<u128> = lines.iter().map(|l| l[1].parse().unwrap()).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{events}");

        // A directory that does not exist fails the attempt for good, saying why.
        let lost = Simulate { probe_dir: Some(dir.join("nope")), ..Simulate::default() };
        let error = lost.run(&ctx(1)).await.unwrap_err();
        assert!(error.to_string().contains("cannot append to the probe"), "{error}");
    }

    #[test]
    fn seed_payloads_decode() {
        let image: ProcessImageJob = serde_json::from_str(
            r#"{"imageId":"u1","operations":[{"type":"resize","width":1920,"height":1080},{"type":"thumbnail","size":200},{"type":"watermark","text":"(c) 2026"}]}"#,
        )
        .unwrap();
        assert_eq!(image.operations.len(), 3);
        let welcome: SendWelcomeEmailJob =
            serde_json::from_str(r#"{"userId":7,"email":"a@example.com","name":"Ada"}"#).unwrap();
        assert_eq!(welcome.user_id, 7);
        assert!(serde_json::from_str::<SendEmailJob>(r#"{"subject":"x"}"#).is_err());
        assert!(
            serde_json::from_str::<GenerateReportJob>(r#"{"simulate":{"wrok_ms":1}}"#).is_err()
        );
    }
}
