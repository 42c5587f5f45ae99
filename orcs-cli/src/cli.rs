//! The command-line grammar (clap derive). Values are checked here where clap can name the flag;
//! everything that needs the configuration is checked in `commands`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::DriverKind;
use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use orcs_core::{RateLimit, UniqueUntil};

const AFTER_HELP: &str = "\
Configuration, strongest first: flags, then the environment (QUEUE_DRIVER, QUEUE_DEFAULT,
QUEUE_WORKER_QUEUES, QUEUE_WORKER_SLEEP, QUEUE_WORKER_MAX_JOBS, QUEUE_WORKER_SHUTDOWN_TIMEOUT,
QUEUE_MAX_PAYLOAD_BYTES, REDIS_URL, REDIS_PREFIX, REDIS_CA_CERT, DATABASE_URL, QUEUE_DATABASE_TABLE;
a .env file in the working directory is read), then config/queue.toml, then the defaults.

Exit codes: 0 normal stop, 1 runtime error, 2 usage or configuration error.";

#[derive(Debug, Parser)]
#[command(version, about = "Background job queue: work, inspect and manage queued jobs", after_help = AFTER_HELP)]
pub(crate) struct Cli {
    /// The queue driver: memory, redis or database [env: QUEUE_DRIVER]
    #[arg(long, global = true, value_name = "DRIVER", value_parser = parse_driver)]
    pub(crate) driver: Option<DriverKind>,
    /// The backend's URL (redis://..., sqlite://..., postgres://...) [env: REDIS_URL or DATABASE_URL]
    #[arg(long, global = true, value_name = "URL")]
    pub(crate) url: Option<String>,
    /// The config file [default: config/queue.toml if it exists]
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// The database driver's jobs table [env: QUEUE_DATABASE_TABLE; default: jobs]
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) table: Option<String>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Runs a worker: claims jobs from the queues in order and runs them
    #[command(name = "queue:work")]
    Work(WorkArgs),
    /// Shows the counters of every queue, or of one
    #[command(name = "queue:stats")]
    Stats(StatsArgs),
    /// Removes a queue's pending and delayed jobs
    #[command(name = "queue:clear")]
    Clear(ClearArgs),
    /// Dispatches a registered job with JSON data
    #[command(name = "queue:dispatch")]
    Dispatch(DispatchArgs),
    /// Lists the failed jobs
    #[command(name = "queue:failed")]
    Failed(FailedArgs),
    /// Puts failed jobs back on their queues with fresh attempts
    #[command(name = "queue:retry")]
    Retry(RetryArgs),
    /// Deletes failed jobs by id
    #[command(name = "queue:forget")]
    Forget(ForgetArgs),
    /// Deletes every failed job
    #[command(name = "queue:flush")]
    Flush(FlushArgs),
    /// Pauses a queue: every worker skips it until it is resumed
    #[command(name = "queue:pause")]
    Pause(QueueArg),
    /// Resumes a paused queue
    #[command(name = "queue:resume")]
    Resume(QueueArg),
    /// Sets or clears a queue's limits across every worker (concurrency, rate)
    #[command(name = "queue:limit")]
    Limit(LimitArgs),
    /// Cancels jobs: a waiting one is removed, a running one is stopped by its worker
    #[command(name = "queue:cancel")]
    Cancel(CancelArgs),
    /// Dispatches a mix of example jobs, works them with a progress bar, and checks the stats
    Demo,
    /// Runs the benchmark workload (SPEC section 7) on the configured driver and prints one JSON line.
    /// It clears the `bench` queue before and after each phase, and on PostgreSQL runs
    /// `VACUUM (ANALYZE)` of the database before each phase and round: point it at a throwaway backend
    Bench(BenchArgs),
    /// Serves the web dashboard: queues, jobs, failed jobs with retry, schedules and batches
    Dashboard(crate::dashboard::DashboardArgs),
    /// Lists a page of a queue's pending, delayed, running or failed jobs
    #[command(name = "queue:list")]
    List(crate::inspect::ListArgs),
    /// Shows one job: state, payload, attempts, times, error history, progress, worker
    #[command(name = "queue:show")]
    Show(crate::inspect::ShowArgs),
    /// Deletes jobs that are not running: pending and delayed ones, failed ones
    #[command(name = "queue:delete")]
    Delete(crate::inspect::DeleteArgs),
    /// Lists the live workers (by their heartbeats)
    #[command(name = "queue:workers")]
    Workers(crate::inspect::WorkersArgs),
    /// Deletes failed jobs by age and count (see failed_retention and failed_keep)
    #[command(name = "queue:prune")]
    Prune(crate::inspect::PruneArgs),
    /// Shows a batch: its children's counters and each callback's state
    #[command(name = "queue:batch")]
    Batch(crate::batch::ShowArgs),
    /// Cancels a batch: waiting children are removed, running ones stopped, `then` skipped
    #[command(name = "queue:cancel-batch")]
    CancelBatch(crate::batch::CancelArgs),
    /// Lists the schedules (config [[schedule]] tables and the backend's): next and last run
    #[command(name = "schedule:list")]
    ScheduleList(crate::schedule::ListArgs),
    /// Dispatches a schedule's job now, without changing its slots
    #[command(name = "schedule:run")]
    ScheduleRun(crate::schedule::RunArgs),
    /// Removes a schedule's stored definition and cursor
    #[command(name = "schedule:forget")]
    ScheduleForget(crate::schedule::ForgetArgs),
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Jobs per phase
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) n: u64,
    /// Jobs queued in all for the backlog phase (50,000 of them are drained) and the ops-latency
    /// phase
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(50_000..))]
    pub(crate) backlog: u64,
    /// Phases to run, in order
    #[arg(long, value_delimiter = ',', default_value = "single,bulk,drain,latency")]
    pub(crate) phases: Vec<crate::bench::Phase>,
    /// How long the schedule-latency phase runs, in seconds
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub(crate) schedule_secs: u64,
    /// Schedules of the schedule-latency phase, each due every second
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(crate) schedules: u32,
}

#[derive(Debug, Args)]
pub(crate) struct WorkArgs {
    /// Queues to work, in strict order [env: QUEUE_WORKER_QUEUES; default: the default queue]
    #[arg(long, value_name = "a,b,c")]
    pub(crate) queue: Option<String>,
    /// Longest wait between claims when idle, in seconds [env: QUEUE_WORKER_SLEEP; default: 3]
    #[arg(long, value_name = "SECS", value_parser = parse_duration, allow_negative_numbers = true)]
    pub(crate) sleep: Option<Duration>,
    /// Stop after this many jobs [env: QUEUE_WORKER_MAX_JOBS]
    #[arg(long, value_name = "N", value_parser = parse_max_jobs, allow_negative_numbers = true)]
    pub(crate) max_jobs: Option<u64>,
    /// Stop claiming after this many seconds
    #[arg(long, value_name = "SECS", value_parser = parse_duration, allow_negative_numbers = true)]
    pub(crate) max_time: Option<Duration>,
    /// Stop when no job is ready and none is running
    #[arg(long)]
    pub(crate) stop_when_empty: bool,
    /// Run at most one job, then stop
    #[arg(long)]
    pub(crate) once: bool,
    /// Jobs run at once [default: 1]
    #[arg(long, value_name = "N", value_parser = parse_concurrency, allow_negative_numbers = true)]
    pub(crate) concurrency: Option<u64>,
    /// Time limit in seconds for jobs without their own, above 0 and at most 86400 [default: 60]
    #[arg(long, value_name = "SECS", value_parser = parse_timeout, allow_negative_numbers = true)]
    pub(crate) timeout: Option<Duration>,
    /// On SIGINT or SIGTERM, how long running jobs may finish before they are handed back; a
    /// second signal stops them at once [env: QUEUE_WORKER_SHUTDOWN_TIMEOUT; default: 10]
    #[arg(long, value_name = "SECS", value_parser = parse_shutdown_timeout, allow_negative_numbers = true)]
    pub(crate) shutdown_timeout: Option<Duration>,
    /// Print no line per job
    #[arg(long, conflicts_with = "json")]
    pub(crate) quiet: bool,
    /// Print one JSON object per job (one per line) instead of text
    #[arg(long)]
    pub(crate) json: bool,
    /// Do not fire the config file's schedules ([[schedule]]) from this worker; other workers
    /// (or a dedicated one) fire them
    #[arg(long)]
    pub(crate) no_scheduler: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics while the worker runs, e.g.
    /// 127.0.0.1:9100
    #[arg(long, value_name = "ADDR", value_parser = crate::upkeep::parse_addr, conflicts_with = "once")]
    pub(crate) metrics: Option<std::net::SocketAddr>,
    /// How often the worker reports itself for `queue:workers`, in seconds; it is listed until
    /// three reports are missed; 0 turns reporting off [default: 5]
    #[arg(long, value_name = "SECS", value_parser = parse_duration, allow_negative_numbers = true)]
    pub(crate) heartbeat_interval: Option<Duration>,
}

#[derive(Debug, Args)]
pub(crate) struct StatsArgs {
    /// One queue [default: every queue]
    pub(crate) queue: Option<String>,
    /// Print JSON: an array of queue stats, or one object when a queue is named
    #[arg(long)]
    pub(crate) json: bool,
    /// First forget every queue that is empty and idle (no pending, delayed, running or failed
    /// job): its counters, pause and limits go, and it leaves the list until a job comes again
    #[arg(long, conflicts_with = "queue")]
    pub(crate) prune: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ClearArgs {
    /// The queue [default: the default queue]
    pub(crate) queue: Option<String>,
    /// Clear without asking
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DispatchArgs {
    /// The job's registered name, e.g. SendEmailJob
    pub(crate) job: String,
    /// The job's data: a JSON object, @FILE to read it from a file, or - to read it from stdin
    #[arg(long, value_name = "JSON", default_value = "{}")]
    pub(crate) data: String,
    /// Send it to this queue instead of the job type's
    #[arg(long, value_name = "Q")]
    pub(crate) queue: Option<String>,
    /// Use this priority instead of the job type's (higher runs first)
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    pub(crate) priority: Option<i32>,
    /// Keep the job invisible to workers for this many seconds (at most 31536000, a year)
    #[arg(long, value_name = "SECS", value_parser = parse_delay, allow_negative_numbers = true)]
    pub(crate) delay: Option<Duration>,
    /// Dispatch this many copies, in atomic batches of up to 1000
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub(crate) count: u64,
    /// Use this many retries instead of the job type's
    #[arg(long, value_name = "N")]
    pub(crate) max_retries: Option<u32>,
    /// Use this backoff base in seconds instead of the job type's (at most 86400, a day)
    #[arg(long, value_name = "SECS", value_parser = parse_retry_delay, allow_negative_numbers = true)]
    pub(crate) retry_delay: Option<Duration>,
    /// Store the job only if no job of its queue holds this key; otherwise answer the holder's id
    #[arg(long, value_name = "KEY")]
    pub(crate) unique: Option<String>,
    /// When the unique key frees: started (a worker took the job), finished (it ended for good),
    /// or a number of seconds after the dispatch [default: finished]
    #[arg(long, value_name = "WHEN", requires = "unique", value_parser = parse_unique_until)]
    pub(crate) unique_until: Option<UniqueUntil>,
    /// With --unique: if the key's holder has not started yet, give it this job's data and run
    /// time (--delay counts from now) instead of leaving it as it was; its id is answered
    #[arg(long, requires = "unique")]
    pub(crate) debounce: bool,
    /// Print the dispatched ids as JSON, with `jobs`: one {id, duplicate, replaced} object per
    /// job (`replaced`: a duplicate whose data went to the waiting holder, with --debounce)
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) batch: crate::batch::BatchFlags,
}

#[derive(Debug, Args)]
pub(crate) struct FailedArgs {
    /// Only the failed jobs of this queue
    #[arg(long, value_name = "Q")]
    pub(crate) queue: Option<String>,
    /// Show at most this many failed jobs, oldest first
    #[arg(long, value_name = "N", default_value_t = DEFAULT_FAILED_LIMIT, value_parser = parse_limit, allow_negative_numbers = true)]
    pub(crate) limit: u64,
    /// Skip this many of the oldest failed jobs first (the next page starts at offset + limit)
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = parse_offset, allow_negative_numbers = true)]
    pub(crate) offset: u64,
    /// Print the page as a JSON array
    #[arg(long)]
    pub(crate) json: bool,
}

/// `queue:failed`'s page size unless `--limit` says otherwise.
pub(crate) const DEFAULT_FAILED_LIMIT: u64 = 100;

#[derive(Debug, Args)]
pub(crate) struct RetryArgs {
    /// Failed job ids, or `all`
    #[arg(required = true, value_name = "ID")]
    pub(crate) ids: Vec<String>,
    /// With `all`: only the failed jobs of this queue
    #[arg(long, value_name = "Q")]
    pub(crate) queue: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ForgetArgs {
    /// The failed jobs' ids
    #[arg(required = true, value_name = "ID")]
    pub(crate) ids: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct FlushArgs {
    /// Flush without asking
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct QueueArg {
    /// The queue
    pub(crate) queue: String,
}

#[derive(Debug, Args)]
pub(crate) struct LimitArgs {
    /// The queue
    pub(crate) queue: String,
    /// At most N of the queue's jobs run at once, across every worker
    #[arg(long, value_name = "N", value_parser = parse_limit_concurrency, allow_negative_numbers = true)]
    pub(crate) concurrency: Option<u32>,
    /// At most N jobs start per SECS seconds, across every worker (e.g. 100/1 or 10/60)
    #[arg(long, value_name = "N/SECS", value_parser = parse_rate, allow_negative_numbers = true)]
    pub(crate) rate: Option<RateLimit>,
    /// Remove every limit of the queue
    #[arg(long, conflicts_with_all = ["concurrency", "rate"])]
    pub(crate) clear: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CancelArgs {
    /// The jobs' ids
    #[arg(required = true, value_name = "ID")]
    pub(crate) ids: Vec<String>,
}

/// Parses `args`; `jobs` (each registered name with its fields, when known) goes into
/// `queue:dispatch --help`, since the grammar cannot know an application's job types.
pub(crate) fn parse<I, T>(
    name: &str,
    jobs: &[(String, Option<Vec<String>>)],
    args: I,
) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    // The binary name is the application's; clap's `name` is only a default.
    let mut command = Cli::command().bin_name(name.to_owned()).display_name(name.to_owned());
    let mut listing = String::from("Registered jobs:");
    if jobs.is_empty() {
        listing.push_str(" none (register job types with App::register)");
    }
    for (job, fields) in jobs {
        listing.push_str("\n  ");
        listing.push_str(job);
        if let Some(fields) = fields {
            listing.push_str(&format!(" {{{}}}", fields.join(", ")));
        }
    }
    command = command.mut_subcommand("queue:dispatch", |sub| sub.after_help(listing));
    let matches = command.try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches)
}

fn parse_driver(text: &str) -> Result<DriverKind, String> {
    text.parse()
}

/// The most jobs a worker runs at once.
const MAX_CONCURRENCY: u64 = 100_000;

fn parse_max_jobs(text: &str) -> Result<u64, String> {
    parse_count(text, u64::MAX, "use e.g. 100, or leave --max-jobs out for no limit")
}

fn parse_limit(text: &str) -> Result<u64, String> {
    parse_count(text, u64::MAX, "use a whole number such as 100, and --offset to page on")
}

fn parse_offset(text: &str) -> Result<u64, String> {
    text.trim().parse::<u64>().map_err(|_| {
        format!("{text:?} is not a whole number of 0 or more; use e.g. 100 to skip the first 100")
    })
}

fn parse_concurrency(text: &str) -> Result<u64, String> {
    parse_count(text, MAX_CONCURRENCY, "use a whole number from 1 to 100000, e.g. 16")
}

/// A whole number from 1 to `max`; the error says what was wrong and what to pass instead.
fn parse_count(text: &str, max: u64, advice: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err(format!("0 is too small; {advice}")),
        Ok(n) if n > max => Err(format!("{n} is too large; {advice}")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{text:?} is not a whole number of at least 1; {advice}")),
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::config::parse_seconds(text)
}

/// A number of seconds from `min` (exclusive when `above_zero`) to `max`; the error gives the range.
fn parse_bounded(
    text: &str,
    above_zero: bool,
    max: u64,
    example: &str,
) -> Result<Duration, String> {
    let range = if above_zero {
        format!("use a number of seconds above 0 and at most {max}, e.g. {example}")
    } else {
        format!("use a number of seconds from 0 to {max}, e.g. {example}")
    };
    let value: f64 =
        text.trim().parse().map_err(|_| format!("{text:?} is not a number of seconds; {range}"))?;
    if !value.is_finite() || value < 0.0 || value > max as f64 || (above_zero && value <= 0.0) {
        return Err(format!("{text} is out of range; {range}"));
    }
    Duration::try_from_secs_f64(value).map_err(|_| format!("{text} is out of range; {range}"))
}

/// The longest `--delay`: a year. A job due later is almost certainly a unit mistake.
pub(crate) const MAX_DELAY_SECS: u64 = 365 * 86_400;
/// The longest `--retry-delay` and `--timeout`: a day.
pub(crate) const MAX_DAY_SECS: u64 = 86_400;
/// The longest `--shutdown-timeout`: an hour.
pub(crate) const MAX_SHUTDOWN_SECS: u64 = 3_600;

fn parse_delay(text: &str) -> Result<Duration, String> {
    parse_bounded(text, false, MAX_DELAY_SECS, "60 or 3600")
}

fn parse_retry_delay(text: &str) -> Result<Duration, String> {
    parse_bounded(text, false, MAX_DAY_SECS, "60")
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    parse_bounded(text, true, MAX_DAY_SECS, "60 or 0.5")
}

pub(crate) fn parse_shutdown_timeout(text: &str) -> Result<Duration, String> {
    parse_bounded(text, false, MAX_SHUTDOWN_SECS, "10 or 30")
}

fn parse_unique_until(text: &str) -> Result<UniqueUntil, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "started" => Ok(UniqueUntil::Started),
        "finished" => Ok(UniqueUntil::Finished),
        other => {
            let advice = "use started, finished, or a number of seconds above 0 and at most \
                          31536000 (e.g. 60)";
            let secs = other
                .parse::<f64>()
                .map_err(|_| format!("{text:?} is not started, finished or seconds; {advice}"))?;
            if !secs.is_finite() || secs <= 0.0 || secs > MAX_DELAY_SECS as f64 {
                return Err(format!("{text} seconds is out of range; {advice}"));
            }
            // At least a millisecond: a shorter key would free before the dispatch returns.
            let ms = ((secs * 1000.0).round() as u64).max(1);
            Ok(UniqueUntil::Period(ms))
        }
    }
}

fn parse_limit_concurrency(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(0) => Err("0 would stop the queue; use `queue:pause` for that, or a whole number of \
                      1 or more, e.g. 4"
            .to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{text:?} is not a whole number of 1 or more; use e.g. 4")),
    }
}

/// `N/SECS`: at most N starts per SECS seconds.
fn parse_rate(text: &str) -> Result<RateLimit, String> {
    const FORM: &str = "use N/SECS, at most N job starts per SECS seconds, with N and SECS above 0 \
                        (e.g. 100/1 or 10/60)";
    let Some((n, secs)) = text.trim().split_once('/') else {
        return Err(format!("{text:?} is not of the form N/SECS; {FORM}"));
    };
    let n = n
        .trim()
        .parse::<u32>()
        .map_err(|_| format!("{n:?} in {text:?} is not a whole number; {FORM}"))?;
    let secs = secs
        .trim()
        .parse::<f64>()
        .map_err(|_| format!("{secs:?} in {text:?} is not a number of seconds; {FORM}"))?;
    if n == 0 {
        return Err(format!("{text:?} allows no job at all; pause the queue for that, or {FORM}"));
    }
    let period_ms = secs * 1000.0;
    if !period_ms.is_finite() || period_ms < 1.0 || secs > MAX_DAY_SECS as f64 {
        return Err(format!(
            "the period of {text:?} is out of range (a millisecond to a day); {FORM}"
        ));
    }
    Ok(RateLimit::new(n, period_ms.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn counts_say_what_to_pass() {
        assert_eq!(parse_concurrency("16"), Ok(16));
        assert!(parse_concurrency("0").unwrap_err().contains("0 is too small"));
        assert!(parse_concurrency("100001").unwrap_err().contains("from 1 to 100000"));
        assert!(parse_max_jobs("-3").unwrap_err().contains("\"-3\" is not a whole number"));
        assert!(parse_max_jobs("many").unwrap_err().contains("for no limit"));
        assert_eq!(parse_offset("0"), Ok(0));
        assert!(parse_offset("-1").unwrap_err().contains("\"-1\" is not a whole number of 0"));
        assert!(parse_limit("0").unwrap_err().contains("--offset to page on"));
    }

    #[test]
    fn rates_and_unique_periods_parse() {
        assert_eq!(parse_rate("100/1"), Ok(RateLimit::new(100, 1000)));
        assert_eq!(parse_rate(" 10 / 60 "), Ok(RateLimit::new(10, 60_000)));
        assert_eq!(parse_rate("5/0.5"), Ok(RateLimit::new(5, 500)));
        for bad in ["0/1", "1/0", "10", "x/1", "1/x", "-1/1", "1/-1", "1/inf"] {
            assert!(parse_rate(bad).unwrap_err().contains("N/SECS"), "{bad}");
        }
        assert_eq!(parse_unique_until("Started"), Ok(UniqueUntil::Started));
        assert_eq!(parse_unique_until("90"), Ok(UniqueUntil::Period(90_000)));
        assert!(parse_unique_until("0").is_err());
        assert!(parse_unique_until("later").unwrap_err().contains("started, finished"));
        assert!(parse_delay("99999999999999").unwrap_err().contains("from 0 to 31536000"));
        assert!(parse_timeout("0").unwrap_err().contains("above 0"));
        assert_eq!(parse_timeout("0.5"), Ok(Duration::from_millis(500)));
    }
}
