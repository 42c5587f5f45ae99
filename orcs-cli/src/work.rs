//! `queue:work`: the banner, one aligned line per job, and a shutdown that says what it waits
//! for and can be forced.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use orcs_core::{Error, Outcome, Queue, Worker, WorkerEvent};
use serde_json::json;
use tokio::sync::oneshot;

use crate::cli::WorkArgs;
use crate::commands::{Ctx, backend_location};
use crate::config::{DriverKind, parse_queue_list};
use crate::output::{self, rfc3339};
use crate::track;

/// A job running this long gets a line when it starts, not only when it ends; shorter ones
/// would only double the output.
const LONG_JOB: Duration = Duration::from_secs(1);

pub(crate) async fn work(ctx: &Ctx<'_>, args: WorkArgs) -> Result<()> {
    let config = &ctx.config;
    let queues = match &args.queue {
        Some(list) => parse_queue_list(list).context("--queue")?,
        None => config.worker_queues(),
    };
    let concurrency = match args.concurrency {
        Some(n) => usize::try_from(n).context("--concurrency is too large")?,
        None => config.worker.concurrency,
    };
    let shutdown_timeout = args.shutdown_timeout.unwrap_or(config.worker.shutdown_timeout);
    // A bad [[schedule]] (an unregistered job, data that does not fit) stops the worker at once.
    let schedules = crate::schedule::declared(ctx)?;
    let schedule_names: Vec<String> = schedules.iter().map(|s| s.name().to_owned()).collect();
    if config.driver == DriverKind::Memory {
        eprintln!(
            "warning: the memory driver keeps jobs inside this process: this worker cannot see jobs \
             dispatched by other processes; set QUEUE_DRIVER (or --driver) to redis or database to share a queue"
        );
    }
    // A long-running worker waits out a backend outage at start; `--once` reports it at once.
    let queue = if args.once { Some(ctx.queue().await?) } else { connect_worker(ctx).await? };
    let Some(queue) = queue else { return Ok(()) };
    // Bound before the worker starts, so that a taken port stops it at once.
    let metrics_listener = match args.metrics {
        Some(addr) => Some(crate::upkeep::bind_metrics(addr).await?),
        None => None,
    };
    let mut worker = Worker::new(queue.clone(), ctx.app.registry.clone())
        .queues(queues.clone())
        .concurrency(concurrency)
        .sleep(args.sleep.unwrap_or(config.worker.sleep))
        .timeout(args.timeout.unwrap_or(config.worker.timeout))
        .shutdown_timeout(shutdown_timeout)
        .stop_when_empty(args.stop_when_empty);
    if let Some(max) = args.max_jobs.or(config.worker.max_jobs) {
        worker = worker.max_jobs(max);
    }
    if let Some(max) = args.max_time {
        worker = worker.max_time(max);
    }
    worker = worker.schedules(schedules).run_scheduler(!args.no_scheduler);
    if let Some(interval) = args.heartbeat_interval {
        worker = worker.heartbeat_interval(interval);
    }
    let metrics = metrics_listener.map(|listener| (listener, orcs::metrics::Metrics::new()));
    if let Some((_, recorder)) = &metrics {
        worker = worker.observer(recorder.observer());
    }
    let lines = Arc::new(JobLines {
        json: args.json,
        colour: !args.json && output::colour_stdout(),
        queue_width: queues.iter().map(|q| q.chars().count()).max().unwrap_or(0),
        name_width: ctx.app.registry.names().iter().map(|n| n.len()).max().unwrap_or(0).min(40),
    });
    let status = Status { json: args.json, quiet: args.quiet };
    // Two workers started in two directories must not look alike: name the backend itself.
    status.line(&format!(
        "orcs worker: driver {}, queues {}, concurrency {}{}; {}",
        config.driver,
        queues.join(","),
        concurrency,
        if args.once { ", one job" } else { "" },
        backend_location(config)
    ));
    if let Some((listener, _)) = &metrics
        && let Ok(addr) = listener.local_addr()
    {
        status.line(&format!("orcs worker: metrics at http://{addr}/metrics"));
    }
    if !schedule_names.is_empty() && !args.once {
        let names = schedule_names.join(", ");
        status.line(&if args.no_scheduler {
            format!("orcs worker: scheduler off (--no-scheduler); other workers fire {names}")
        } else {
            format!("orcs worker: scheduler on for {names}")
        });
    }
    if !args.quiet {
        let lines = Arc::clone(&lines);
        worker = worker.on_event(move |event| lines.finished(event));
    }
    if args.once {
        let event = worker.work_one().await?;
        if event.is_none() && !args.quiet && !args.json {
            output::say!("no job was ready");
        }
        return Ok(());
    }
    let announcer = (!args.quiet && !args.json).then(|| {
        let lines = Arc::clone(&lines);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                for job in track::newly_long(LONG_JOB) {
                    lines.started(&job);
                }
            }
        })
    });
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (force_tx, force_rx) = oneshot::channel::<()>();
    let counts_every_job = ctx.app.tracks_every_job();
    let signals = tokio::spawn(async move {
        let mut signals = Signals::new();
        tokio::select! {
            () = signals.next() => {}
            () = stdout_gone() => {
                // Nobody reads the job lines any more (`queue:work | head`): stop as a piped
                // command would, quietly.
                let _ = stop_tx.send(());
                return;
            }
        }
        let running = track::running_count();
        let message = if counts_every_job && running == 0 {
            "orcs worker: stopping: no job is running".to_owned()
        } else {
            let jobs = if counts_every_job {
                format!("{running} running job{}", if running == 1 { "" } else { "s" })
            } else {
                "the running jobs".to_owned()
            };
            format!(
                "orcs worker: stopping: waiting up to {} s for {jobs}; press Ctrl-C again to stop them now",
                shutdown_timeout.as_secs_f64()
            )
        };
        status.line(&message);
        let _ = stop_tx.send(());
        signals.next().await;
        status
            .line("orcs worker: stopping now: the running jobs are asked to stop and handed back");
        let _ = force_tx.send(());
    });
    // The metrics endpoint and the failed-job retention, until the worker stops.
    let _upkeep = crate::upkeep::Upkeep::start(&queue, config, metrics);
    let result = worker
        .run_until_forced(
            async {
                let _ = stop_rx.await;
            },
            async {
                // A dropped sender (no second signal) must not force: wait forever then.
                if force_rx.await.is_err() {
                    std::future::pending::<()>().await;
                }
            },
        )
        .await;
    signals.abort();
    if let Some(task) = announcer {
        task.abort();
    }
    let summary = result?;
    status.line(&format!(
        "orcs worker stopped: {} done, {} retried, {} failed, {} released, {} deferred, {} snoozed, {} cancelled",
        summary.done,
        summary.retried,
        summary.failed,
        summary.released,
        summary.deferred,
        summary.snoozed,
        summary.cancelled
    ));
    Ok(())
}

/// Where the worker's own lines (banner, shutdown, summary) go: stdout, or stderr with `--json`
/// so that stdout stays pure JSON lines; nowhere with `--quiet`.
#[derive(Debug, Clone, Copy)]
struct Status {
    json: bool,
    quiet: bool,
}

impl Status {
    fn line(self, text: &str) {
        if self.quiet {
            return;
        }
        if self.json {
            eprintln!("{text}");
        } else {
            output::say!("{text}");
        }
    }
}

/// SIGINT and SIGTERM, each delivery once, for as long as the worker runs (the handlers stay
/// installed, so a second Ctrl-C reaches the worker instead of killing the process).
struct Signals {
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                int: signal(SignalKind::interrupt()).ok(),
                term: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn recv(signal: Option<&mut tokio::signal::unix::Signal>) {
                match signal {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = recv(self.int.as_mut()) => {}
                () = recv(self.term.as_mut()) => {}
            }
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Completes once a write to stdout failed.
async fn stdout_gone() {
    while !output::stdout_closed() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Connects for `queue:work`. A backend that cannot be reached yet (down, restarting) is an
/// outage, not a reason to exit: the worker says so on stderr (naming the URL without its
/// password) and tries again with backoff (0.2 s doubling to 5 s) until the backend answers,
/// or until SIGINT or SIGTERM, when it returns `None`. Configuration errors still end it.
async fn connect_worker(ctx: &Ctx<'_>) -> Result<Option<Queue>> {
    let mut shutdown = std::pin::pin!(orcs_core::shutdown_signal());
    let mut failures: u32 = 0;
    loop {
        let error = match ctx.queue().await {
            Ok(queue) => {
                if failures > 0 {
                    eprintln!("orcs worker: connected after {failures} failed attempts");
                }
                return Ok(Some(queue));
            }
            Err(e) if e.downcast_ref::<Error>().is_some_and(Error::is_transient) => e,
            Err(e) => return Err(e),
        };
        failures = failures.saturating_add(1);
        let pause = orcs_core::retry_delay(Duration::from_millis(200), failures)
            .min(Duration::from_secs(5));
        let why = crate::describe(&error);
        eprintln!(
            "orcs worker: the backend is unreachable (attempt {failures}); retrying in {:.1} s, \
             stop with Ctrl-C or SIGTERM: {why}",
            pause.as_secs_f64()
        );
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = &mut shutdown => return Ok(None),
        }
    }
}

/// The per-job lines: text in aligned columns (time, queue, job, id, duration, status), or one
/// JSON object per line.
#[derive(Debug)]
struct JobLines {
    json: bool,
    colour: bool,
    queue_width: usize,
    name_width: usize,
}

/// The status column's width: the longest label, RELEASED.
const STATUS_WIDTH: usize = 8;

impl JobLines {
    /// One line per finished attempt. In JSON, `retry_at` is when a retried, deferred or snoozed
    /// job becomes claimable again.
    fn finished(&self, event: &WorkerEvent) {
        let (error, retry_at) = match &event.outcome {
            Outcome::Retry { at, error } => (Some(error.as_str()), Some(*at)),
            Outcome::Failed { error } => (Some(error.as_str()), None),
            Outcome::Deferred { at } | Outcome::Snoozed { at } => (None, Some(*at)),
            _ => (None, None),
        };
        let label = event.outcome.label();
        if self.json {
            let mut line = json!({
                "time": rfc3339(now_ms()),
                "job": event.name,
                "id": event.id,
                "queue": event.queue,
                "attempt": event.attempt,
                "duration_ms": event.duration.as_secs_f64() * 1000.0,
                "status": label,
            });
            if let Some(error) = error {
                line["error"] = json!(error);
            }
            if let Some(at) = retry_at {
                line["retry_at"] = json!(rfc3339(at));
            }
            output::say!("{line}");
            return;
        }
        let detail = match (&event.outcome, error, retry_at) {
            (_, Some(error), Some(at)) => format!(
                "attempt {}: {}; next attempt at {}",
                event.attempt,
                output::one_line(error, 120),
                rfc3339(at)
            ),
            (_, Some(error), None) => {
                format!("attempt {}: {}", event.attempt, output::one_line(error, 120))
            }
            (Outcome::Snoozed { .. }, None, Some(at)) => format!("runs again at {}", rfc3339(at)),
            // A deferred job's type is not registered in this binary: say so, so that a rolling
            // deploy's old worker is not mistaken for a broken job.
            (_, None, Some(at)) => {
                format!("job type not registered in this worker; handed back until {}", rfc3339(at))
            }
            _ => String::new(),
        };
        self.text(
            now_ms(),
            &event.queue,
            &event.name,
            &event.id,
            &output::duration(event.duration),
            label,
            &detail,
        );
    }

    /// The line of a job that has run for [`LONG_JOB`]: its start time, status START. Text
    /// only: `--json` keeps one object per finished attempt, which scripts count on.
    fn started(&self, job: &track::Running) {
        if self.json {
            return;
        }
        let at = millis_of(job.started_at);
        let detail =
            format!("attempt {}, still running after {} s", job.attempt, LONG_JOB.as_secs());
        self.text(at, &job.queue, &job.name, &job.id, "", "START", &detail);
    }

    #[allow(clippy::too_many_arguments)]
    fn text(
        &self,
        at: orcs_core::Millis,
        queue: &str,
        name: &str,
        id: &str,
        duration: &str,
        label: &str,
        detail: &str,
    ) {
        let (qw, nw) = (self.queue_width, self.name_width);
        let status = format!("{label:<STATUS_WIDTH$}");
        let status = match (self.colour, colour_of(label)) {
            (true, Some(code)) => format!("\x1b[{code}m{status}\x1b[0m"),
            _ => status,
        };
        let line = format!(
            "{}  {queue:<qw$}  {name:<nw$}  {id}  {duration:>9}  {status}  {detail}",
            rfc3339(at)
        );
        output::say!("{}", line.trim_end());
    }
}

/// The ANSI colour of a status: green done, yellow for jobs that run again, red failed.
fn colour_of(label: &str) -> Option<&'static str> {
    match label {
        "DONE" => Some("32"),
        "RETRY" | "SNOOZE" | "DEFER" | "RELEASED" => Some("33"),
        "FAIL" | "LOST" => Some("31"),
        "CANCEL" => Some("35"),
        "START" => Some("36"),
        _ => None,
    }
}

fn millis_of(time: SystemTime) -> orcs_core::Millis {
    orcs_core::millis(time.duration_since(UNIX_EPOCH).unwrap_or_default())
}

fn now_ms() -> orcs_core::Millis {
    millis_of(SystemTime::now())
}
