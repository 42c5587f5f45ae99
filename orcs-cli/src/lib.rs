//! The `orcs` command line, and the library that builds the same command line around an
//! application's own jobs.
//!
//! The key design decision: a worker can only run the job types compiled into it, so the command
//! line is a library first. The shipped `orcs` binary is [`App`] with the seed's example jobs
//! ([`examples`]); an application builds its own worker binary the same way with its own jobs and
//! gets every command (`queue:work`, `queue:stats`, `queue:clear`, `queue:dispatch`,
//! `queue:failed`, `queue:retry`, `queue:forget`, `queue:flush`, `queue:pause`, `queue:resume`,
//! `queue:limit`, `queue:cancel`, `queue:batch`, `queue:cancel-batch`, `schedule:list`,
//! `schedule:run`, `schedule:forget`, `queue:list`, `queue:show`, `queue:delete`,
//! `queue:workers`, `queue:prune`, `dashboard`, `demo`) unchanged.
//!
//! # Your own worker binary
//!
//! ```no_run
//! use std::process::ExitCode;
//! use std::time::Duration;
//!
//! use orcs_core::{Job, JobContext, JobError};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct ResizeAvatarJob {
//!     user_id: u64,
//! }
//!
//! impl Job for ResizeAvatarJob {
//!     const NAME: &'static str = "ResizeAvatarJob";
//!     const QUEUE: &'static str = "images";
//!     const TIMEOUT: Option<Duration> = Some(Duration::from_secs(30));
//!
//!     async fn handle(&self, _ctx: &JobContext) -> Result<(), JobError> {
//!         println!("resizing the avatar of user {}", self.user_id);
//!         Ok(())
//!     }
//! }
//!
//! fn main() -> ExitCode {
//!     // `my-worker queue:work --queue images`, `my-worker queue:dispatch ResizeAvatarJob --data '{"user_id":7}'`, ...
//!     orcs_cli::App::new().name("my-worker").register::<ResizeAvatarJob>().run()
//! }
//! ```
//!
//! [`App::register`] also lets `queue:dispatch` check `--data` against the job type before it
//! dispatches anything. An application that already has a [`Registry`] can call [`run`] with it;
//! then `--data` is only checked to be a JSON object, and a payload that does not fit goes to the
//! failed set when a worker claims it.
//!
//! Application code that only dispatches uses the `orcs` crate's [`QueueConnect`] to connect the
//! way the command line does (`QUEUE_DRIVER`, `REDIS_URL` or `DATABASE_URL`, `.env`,
//! `config/queue.toml`), without this crate's command-line dependencies:
//!
//! ```no_run
//! use orcs::prelude::*;
//!
//! # async fn f() -> orcs_core::Result<()> {
//! let queue = Queue::from_env().await?;
//! # let _ = queue;
//! # Ok(())
//! # }
//! ```
//!
//! # Configuration
//!
//! Strongest first: flags (`--driver`, `--url`, and the `queue:work` options), then the
//! environment (`QUEUE_DRIVER`, `QUEUE_DEFAULT`, `QUEUE_WORKER_QUEUES`, `QUEUE_WORKER_SLEEP`,
//! `QUEUE_WORKER_MAX_JOBS`, `QUEUE_WORKER_SHUTDOWN_TIMEOUT`, `QUEUE_MAX_PAYLOAD_BYTES`,
//! `REDIS_URL`, `REDIS_PREFIX`, `REDIS_CA_CERT`, `DATABASE_URL`, `QUEUE_DATABASE_TABLE`; a `.env`
//! file in the working directory is read first and never overrides the real environment), then
//! the config file (`--config FILE`, else `config/queue.toml` if it exists), then the defaults.
//! [`Config`] resolves all but the flags and builds each driver's settings; the file is the TOML twin of the
//! seed's `config/queue.js`:
//!
//! ```toml
//! driver = "redis"            # memory (default), redis or database
//! default = "default"         # the queue of jobs that name none
//! max_payload_bytes = 524288  # the largest payload a dispatch accepts (default 512 KiB)
//! failed_retention = "7d"     # failed jobs older than this are pruned (QUEUE_FAILED_RETENTION)
//! failed_keep = 10000         # and only the newest this many are kept (QUEUE_FAILED_KEEP)
//!
//! [redis]
//! url = "redis://127.0.0.1:6379"  # rediss://... for TLS, with the `tls` feature
//! # ca_cert = "ca.pem"        # a private CA for rediss:// (REDIS_CA_CERT)
//!
//! [database]
//! url = "sqlite://storage/queue.db"
//!
//! [worker]
//! queues = ["high", "default", "low"]
//! sleep = 3                   # seconds
//! max_jobs = 1000
//! concurrency = 8
//! timeout = 60                # seconds, for jobs without their own TIMEOUT
//! shutdown_timeout = 10       # seconds running jobs get after SIGINT or SIGTERM
//!
//! [[schedule]]                # any number; every `queue:work` fires them (--no-scheduler: not)
//! name = "nightly-report"
//! cron = "0 30 2 * * *"       # with seconds: sec min hour day-of-month month day-of-week
//! job = "GenerateReportJob"   # a registered job type; its queue, priority and retries apply
//! data = { report = "daily" }
//! timezone = "Europe/Berlin"  # default UTC
//! missed = "once"             # slots missed while no worker ran: skip (default), once, all:N
//! ```
//!
//! `REDIS_PREFIX` (default `orcs`) separates several applications on one Redis; it has no
//! config-file key yet.
//!
//! # Exit codes
//! 0 when a command ends normally (a worker stopped by SIGINT or SIGTERM included), 1 for a
//! runtime error (the backend is unreachable, a clear was refused, an id is unknown), 2 for a
//! usage or configuration error. Errors are printed to stderr as `error: ...`, naming what was
//! wrong and what to do.

mod batch;
mod bench;
mod cli;
mod commands;
mod dashboard;
mod demo;
pub mod examples;
mod inspect;
mod output;
mod schedule;
mod track;
mod upkeep;
mod work;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::process::ExitCode;

use orcs_core::{Job, Registry};

/// The configuration (`.env`, `config/queue.toml`, the environment) lives in the `orcs` crate, so
/// that an application's own binaries read it without this crate's command-line dependencies.
pub use orcs::config;
pub use orcs::config::REDIS_PREFIX;
pub use orcs::{Config, DriverKind, QueueConnect, QueueConnect as QueueFromEnv};

/// Connects the driver that `config` names; see [`orcs::Config::connect`].
///
/// # Errors
/// As [`orcs::Config::connect`].
pub async fn connect(config: &Config) -> orcs_core::Result<orcs_core::Queue> {
    config.connect().await
}

/// Checks that a JSON payload decodes into one registered job type.
type Validator = fn(&str) -> Result<(), serde_json::Error>;

fn validate<J: Job>(payload: &str) -> Result<(), serde_json::Error> {
    serde_json::from_str::<J>(payload).map(drop)
}

/// The command line around a set of job types: build it, then [`App::run`] it from `main`.
#[derive(Clone)]
pub struct App {
    name: String,
    registry: Registry,
    validators: HashMap<&'static str, Validator>,
    /// The field names of each type added with [`App::register`], when its `Deserialize` tells.
    fields: HashMap<&'static str, Option<Vec<&'static str>>>,
    /// Set by [`examples::register`]: their `simulate` panics are expected, not bugs.
    quiet_simulated_panics: bool,
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("name", &self.name)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
}

impl App {
    /// A command line named `orcs` with no job types yet.
    pub fn new() -> Self {
        Self::from_registry(Registry::new())
    }

    /// A command line for the job types of an existing registry. `queue:dispatch` can then only
    /// check that `--data` is a JSON object; types added with [`App::register`] are checked fully.
    pub fn from_registry(registry: Registry) -> Self {
        Self {
            name: "orcs".to_owned(),
            registry,
            validators: HashMap::new(),
            fields: HashMap::new(),
            quiet_simulated_panics: false,
        }
    }

    /// The shipped `orcs` binary: the seed's example jobs ([`examples`]).
    pub fn examples() -> Self {
        examples::register(Self::new())
    }

    /// The program name shown in help and usage messages (default `orcs`).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Registers a job type for the worker and for `queue:dispatch`.
    #[must_use]
    pub fn register<J: Job>(mut self) -> Self {
        // Wrapped, so the worker can tell which jobs run now (see `track`); same name and payload.
        self.registry = self.registry.register::<track::Tracked<J>>();
        self.validators.insert(J::NAME, validate::<J>);
        self.fields.insert(J::NAME, track::fields::<J>());
        self
    }

    /// The field names of a registered job type, when known.
    pub(crate) fn job_fields(&self, name: &str) -> Option<&[&'static str]> {
        self.fields.get(name).and_then(Option::as_deref)
    }

    /// True when every registered type was added with [`App::register`], so that
    /// `track::running_count` counts every running job.
    pub(crate) fn tracks_every_job(&self) -> bool {
        self.registry.names().iter().all(|name| self.validators.contains_key(name))
    }

    /// The job types this command line runs.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Runs the command named by the process's arguments; returns the exit code for `main`.
    pub fn run(self) -> ExitCode {
        self.run_from(std::env::args_os())
    }

    /// Runs the command named by `args` (the first one is the program name).
    pub fn run_from<I, T>(self, args: I) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let jobs: Vec<(String, Option<Vec<String>>)> = self
            .registry
            .names()
            .into_iter()
            .map(|name| {
                let fields =
                    self.job_fields(name).map(|f| f.iter().map(|s| (*s).to_owned()).collect());
                (name.to_owned(), fields)
            })
            .collect();
        let cli = match cli::parse(&self.name, &jobs, args) {
            Ok(cli) => cli,
            Err(e) => {
                // Help and --version print to stdout and succeed; real usage errors exit 2.
                let _ = e.print();
                return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
            }
        };
        init_logging();
        if self.quiet_simulated_panics {
            examples::quiet_simulated_panics();
        }
        match commands::run(&self, cli) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}", describe(&e));
                ExitCode::from(exit_code(&e))
            }
        }
    }
}

/// Runs the command line with an application's own registry: `fn main() -> ExitCode { orcs_cli::run(registry) }`.
pub fn run(registry: Registry) -> ExitCode {
    App::from_registry(registry).run()
}

/// A usage error found by the command line itself (exit code 2).
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Builds an [`anyhow::Error`] that exits with code 2.
pub(crate) fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

/// The error and its causes on one line, as `{:#}` prints them, but without repeating a cause
/// that the message before it already quotes (backend errors often embed their source).
pub(crate) fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        let part = part.trim();
        if part.is_empty() || text.contains(part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(part);
    }
    text
}

/// 2 for usage and configuration errors anywhere in the chain, 1 for everything else.
fn exit_code(error: &anyhow::Error) -> u8 {
    let usage = error.chain().any(|cause| {
        cause.is::<UsageError>()
            || matches!(
                cause.downcast_ref::<orcs_core::Error>(),
                Some(orcs_core::Error::Config { .. } | orcs_core::Error::Invalid { .. })
            )
    });
    if usage { 2 } else { 1 }
}

/// Logs to stderr at `RUST_LOG` (default `warn`, and `info` for the dashboard's audit log: one
/// line per action). An application that installed its own subscriber keeps it.
///
/// `RUST_LOG` takes a default level and `target=level` pairs (`info`, `warn,orcs_core=debug`):
/// tracing-subscriber's `Targets`, whose parser needs no regex engine (`EnvFilter`'s span and
/// field filters cost the build about 45 s of a core for a feature this binary does not use).
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    const DEFAULT: &str = "warn,orcs_dashboard::audit=info";
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => spec.parse().unwrap_or_else(|e| {
            eprintln!(
                "warning: RUST_LOG={spec:?} is not a log filter ({e}); using {DEFAULT:?}. \
                 Give a level and target=level pairs, e.g. RUST_LOG=info,orcs_core=debug"
            );
            DEFAULT.parse().expect("the default filter parses")
        }),
        _ => DEFAULT
            .parse::<tracing_subscriber::filter::Targets>()
            .expect("the default filter parses"),
    };
    let format = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = tracing_subscriber::registry().with(format).with(filter).try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_skips_causes_already_quoted() {
        let inner = std::io::Error::other("Connection refused");
        let outer = anyhow::Error::new(orcs_core::Error::backend("redis", inner))
            .context("cannot use the redis driver");
        assert_eq!(
            describe(&outer),
            "cannot use the redis driver: redis backend error: Connection refused"
        );
    }
}
