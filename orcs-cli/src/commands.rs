//! The commands: each resolves the configuration (flags over environment over file over
//! defaults), connects the driver, and prints text or JSON.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use anyhow::{Context as _, Result};
use orcs_core::{
    DispatchOptions, Error, FailedJob, FailedQuery, MAX_PAGE, Outcome, Queue, Worker, WorkerEvent,
    validate_queue_name,
};
use serde_json::json;

use crate::cli::{
    ClearArgs, Cli, Command, DispatchArgs, FailedArgs, ForgetArgs, RetryArgs, StatsArgs, WorkArgs,
};
use crate::config::{Config, DriverKind, MAX_PAYLOAD_BYTES_VAR, parse_queue_list};
use crate::connect::{connect, database_url, redis_url};
use crate::output::{self, utc};
use crate::{App, usage};

/// Jobs per atomic batch of `queue:dispatch --count`.
const DISPATCH_BATCH: u64 = 1000;

/// What every command needs: the application and the resolved configuration.
struct Ctx<'a> {
    app: &'a App,
    config: Config,
    /// `--driver` was given (the demo runs in memory unless it was).
    driver_flag: Option<DriverKind>,
}

impl Ctx<'_> {
    /// Connects the configured driver, saying which one failed and how to fix it. A
    /// configuration error (a malformed URL) already names the setting and what it accepts, so
    /// only backend errors get the hint to check the server.
    async fn queue(&self) -> Result<Queue> {
        let error = match connect(&self.config).await {
            Ok(queue) => return Ok(queue),
            Err(e @ (Error::Config { .. } | Error::Invalid { .. })) => return Err(e.into()),
            Err(e) => e,
        };
        let hint = match self.config.driver {
            DriverKind::Redis => format!(
                "cannot use the redis driver at {}; check that Redis is running there and that \
                 REDIS_URL (or --url) names the right host, port, user and password",
                redacted(redis_url(&self.config))
            ),
            DriverKind::Database => format!(
                "cannot use the database driver at {}; check that the database is running and \
                 reachable and that DATABASE_URL (or --url) names the right host, port, user, \
                 password and database",
                redacted(database_url(&self.config))
            ),
            other => format!("cannot start the {other} driver"),
        };
        Err(anyhow::Error::new(error).context(hint))
    }
}

/// Hides the password of a URL such as `redis://user:secret@host` (and a lone Redis userinfo,
/// which may be a password, and a `password=` query parameter).
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            // For Redis a lone userinfo may be a password; for PostgreSQL it is the user.
            None if scheme.starts_with("redis") => format!("***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// Resolves the configuration and runs the command on a fresh runtime.
pub(crate) fn run(app: &App, cli: Cli) -> Result<()> {
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(driver) = cli.driver {
        config.driver = driver;
    }
    if let Some(url) = cli.url {
        match config.driver {
            DriverKind::Redis => config.redis_url = Some(url),
            DriverKind::Database => config.database_url = Some(url),
            _ => eprintln!(
                "warning: --url is ignored: the {} driver has no URL; pass --driver redis or --driver database with it",
                config.driver
            ),
        }
    }
    let ctx = Ctx { app, config, driver_flag: cli.driver };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Work(args) => work(&ctx, args).await,
            Command::Stats(args) => stats(&ctx, args).await,
            Command::Clear(args) => clear(&ctx, args).await,
            Command::Dispatch(args) => dispatch(&ctx, args).await,
            Command::Failed(args) => failed(&ctx, args).await,
            Command::Retry(args) => retry(&ctx, args).await,
            Command::Forget(args) => forget(&ctx, args).await,
            Command::Flush => flush(&ctx).await,
            Command::Demo => {
                // The demo runs the example jobs even in an application's own binary.
                if !app.quiet_simulated_panics {
                    crate::examples::quiet_simulated_panics();
                }
                crate::demo::run(&ctx.config, ctx.driver_flag).await
            }
            Command::Bench(args) => {
                let queue = ctx.queue().await?;
                let line = crate::bench::run(
                    &queue,
                    &ctx.config.driver.to_string(),
                    args.n,
                    args.backlog,
                    &args.phases,
                )
                .await;
                println!("{line}");
                Ok(())
            }
        }
    })
}

async fn work(ctx: &Ctx<'_>, args: WorkArgs) -> Result<()> {
    let config = &ctx.config;
    let queues = match &args.queue {
        Some(list) => parse_queue_list(list).context("--queue")?,
        None => config.worker_queues(),
    };
    let concurrency = match args.concurrency {
        Some(n) => usize::try_from(n).context("--concurrency is too large")?,
        None => config.worker.concurrency,
    };
    if config.driver == DriverKind::Memory {
        eprintln!(
            "warning: the memory driver keeps jobs inside this process: this worker cannot see jobs \
             dispatched by other processes; set QUEUE_DRIVER (or --driver) to redis or database to share a queue"
        );
    }
    // A long-running worker waits out a backend outage at start; `--once` reports it at once.
    let queue = if args.once { Some(ctx.queue().await?) } else { connect_worker(ctx).await? };
    let Some(queue) = queue else { return Ok(()) };
    let mut worker = Worker::new(queue, ctx.app.registry.clone())
        .queues(queues.clone())
        .concurrency(concurrency)
        .sleep(args.sleep.unwrap_or(config.worker.sleep))
        .timeout(args.timeout.unwrap_or(config.worker.timeout))
        .stop_when_empty(args.stop_when_empty);
    if let Some(max) = args.max_jobs.or(config.worker.max_jobs) {
        worker = worker.max_jobs(max);
    }
    if let Some(max) = args.max_time {
        worker = worker.max_time(max);
    }
    let (json, quiet) = (args.json, args.quiet);
    if !quiet {
        let line = format!(
            "orcs worker: driver {}, queues {}, concurrency {}{}",
            config.driver,
            queues.join(","),
            concurrency,
            if args.once { ", one job" } else { "" }
        );
        // Keep stdout pure JSON lines with --json.
        if json { eprintln!("{line}") } else { println!("{line}") }
    }
    if !quiet {
        worker = worker.on_event(move |event| print_event(event, json));
    }
    if args.once {
        let event = worker.work_one().await?;
        if event.is_none() && !quiet && !json {
            println!("no job was ready");
        }
        return Ok(());
    }
    let summary = worker.run().await?;
    if !quiet {
        let line = format!(
            "orcs worker stopped: {} done, {} retried, {} failed, {} released, {} deferred",
            summary.done, summary.retried, summary.failed, summary.released, summary.deferred
        );
        if json { eprintln!("{line}") } else { println!("{line}") }
    }
    Ok(())
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
        let pause = orcs_core::retry_delay(std::time::Duration::from_millis(200), failures)
            .min(std::time::Duration::from_secs(5));
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

/// One line per finished attempt: time, job name, id, duration, DONE/RETRY/FAIL/RELEASED/DEFER/LOST.
/// In JSON, `retry_at` is when a retried or deferred job becomes claimable again.
fn print_event(event: &WorkerEvent, json: bool) {
    let now = orcs_core::millis(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default(),
    );
    let (error, retry_at) = match &event.outcome {
        Outcome::Retry { at, error } => (Some(error.as_str()), Some(*at)),
        Outcome::Failed { error } => (Some(error.as_str()), None),
        Outcome::Deferred { at } => (None, Some(*at)),
        _ => (None, None),
    };
    let mut out = std::io::stdout().lock();
    let _ = if json {
        let mut line = json!({
            "time": utc(now),
            "job": event.name,
            "id": event.id,
            "queue": event.queue,
            "attempt": event.attempt,
            "duration_ms": event.duration.as_secs_f64() * 1000.0,
            "status": event.outcome.label(),
        });
        if let Some(error) = error {
            line["error"] = json!(error);
        }
        if let Some(at) = retry_at {
            line["retry_at"] = json!(utc(at));
        }
        writeln!(out, "{line}")
    } else {
        let detail = match (error, retry_at) {
            (Some(error), Some(at)) => {
                format!(
                    "  attempt {}: {}; next attempt at {}",
                    event.attempt,
                    output::one_line(error, 120),
                    utc(at)
                )
            }
            (Some(error), None) => {
                format!("  attempt {}: {}", event.attempt, output::one_line(error, 120))
            }
            // A deferred job's type is not registered in this binary: say so, so that a rolling
            // deploy's old worker is not mistaken for a broken job.
            (None, Some(at)) => {
                format!("  job type not registered in this worker; handed back until {}", utc(at))
            }
            (None, None) => String::new(),
        };
        writeln!(
            out,
            "{} {} {} {} {}{detail}",
            utc(now),
            event.name,
            event.id,
            output::duration(event.duration),
            event.outcome.label()
        )
    };
}

async fn stats(ctx: &Ctx<'_>, args: StatsArgs) -> Result<()> {
    if let Some(name) = &args.queue {
        validate_queue_name(name).context("the QUEUE argument")?;
    }
    let queue = ctx.queue().await?;
    if let Some(name) = &args.queue {
        let stats = queue.stats(name).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&stats)?);
        } else {
            print!("{}", output::stats_table(std::slice::from_ref(&stats)));
        }
        return Ok(());
    }
    let mut all = Vec::new();
    for name in queue.driver().queues().await? {
        all.push(queue.stats(&name).await?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else if all.is_empty() {
        println!("no queues yet: nothing was dispatched on the {} driver", ctx.config.driver);
    } else {
        print!("{}", output::stats_table(&all));
    }
    Ok(())
}

async fn clear(ctx: &Ctx<'_>, args: ClearArgs) -> Result<()> {
    let name = args.queue.unwrap_or_else(|| ctx.config.default_queue.clone());
    validate_queue_name(&name).context("the QUEUE argument")?;
    let queue = ctx.queue().await?;
    if !args.force {
        let stats = queue.stats(&name).await?;
        let waiting = stats.pending + stats.delayed;
        if !std::io::stdin().is_terminal() {
            anyhow::bail!(
                "refusing to clear queue {name} ({waiting} pending and delayed jobs) without confirmation: \
                 standard input is not a terminal; pass --force to clear it"
            );
        }
        print!("Clear {waiting} pending and delayed jobs from queue {name}? [y/N] ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            anyhow::bail!("queue {name} was not cleared: not confirmed; answer y, or pass --force");
        }
    }
    let removed = queue.clear(&name).await?;
    println!("cleared {removed} jobs from queue {name}");
    Ok(())
}

async fn dispatch(ctx: &Ctx<'_>, args: DispatchArgs) -> Result<()> {
    let registry = &ctx.app.registry;
    let Some(defaults) = registry.defaults(&args.job) else {
        return Err(usage(format!(
            "unknown job {:?}: this binary registers {}; use one of those names (they are case-sensitive)",
            args.job,
            registry.names().join(", ")
        )));
    };
    let value: serde_json::Value = serde_json::from_str(&args.data).map_err(|e| {
        usage(format!(
            "--data is not valid JSON ({e}); pass a JSON object, e.g. --data '{{\"to\":\"user@example.com\"}}'"
        ))
    })?;
    if !value.is_object() {
        return Err(usage(format!(
            "--data must be a JSON object (the job's fields), not {value}; e.g. --data '{{\"to\":\"user@example.com\"}}'"
        )));
    }
    let payload = serde_json::to_string(&value)?;
    if let Some(check) = ctx.app.validators.get(args.job.as_str()) {
        check(&payload).map_err(|e| {
            usage(format!(
                "--data does not fit job {}: {e}; fix the data (see the job type's fields)",
                args.job
            ))
        })?;
    }
    if let Some(name) = &args.queue {
        validate_queue_name(name).context("--queue")?;
    }
    if ctx.config.driver == DriverKind::Memory {
        return Err(usage(
            "queue:dispatch cannot use the memory driver: the job would vanish when this command exits, \
             unseen by any worker; set QUEUE_DRIVER (or --driver) to redis or database",
        ));
    }

    let mut options = DispatchOptions::new();
    if let Some(q) = &args.queue {
        options = options.queue(q.clone());
    }
    if let Some(p) = args.priority {
        options = options.priority(p);
    }
    if let Some(d) = args.delay {
        options = options.delay(d);
    }
    if let Some(n) = args.max_retries {
        options = options.max_retries(n);
    }
    if let Some(d) = args.retry_delay {
        options = options.retry_delay(d);
    }

    let queue = ctx.queue().await?;
    // Only --json prints every id; otherwise keep the first and last, so a large --count stays small.
    let mut ids = Vec::new();
    let (mut first, mut last) = (String::new(), String::new());
    let mut target = String::new();
    let mut stored: u64 = 0;
    while stored < args.count {
        let batch = (args.count - stored).min(DISPATCH_BATCH);
        let records = (0..batch)
            .map(|_| queue.untyped_record(&args.job, payload.clone(), defaults, &options))
            .collect::<orcs_core::Result<Vec<_>>>()
            .map_err(|e| in_cli_terms(e, &args.job, payload.len(), &ctx.config))?;
        if let Some(head) = records.first() {
            target.clone_from(&head.queue);
        }
        // The driver answers each record's id: its own, or an existing job's for a duplicate.
        let stored_ids = queue.dispatch_records(records).await.with_context(|| {
            format!("dispatching failed after {stored} of {} jobs were stored", args.count)
        })?;
        if let (Some(head), Some(tail)) = (stored_ids.first(), stored_ids.last()) {
            if stored == 0 {
                first.clone_from(head);
            }
            last.clone_from(tail);
        }
        if args.json {
            ids.extend(stored_ids);
        }
        stored += batch;
    }

    if args.json {
        println!("{}", json!({ "job": args.job, "queue": target, "ids": ids }));
    } else if stored == 1 {
        println!("dispatched {} {first} to queue {target}", args.job);
    } else {
        println!("dispatched {stored} {} jobs to queue {target} (ids {first} to {last})", args.job);
    }
    Ok(())
}

/// A dispatch error re-described for the command line: the library's payload-limit error names
/// the Rust setter (`Queue::with_max_payload_bytes`), while here the limit comes from the
/// environment or the config file, so name those instead.
fn in_cli_terms(error: Error, job: &str, bytes: usize, config: &Config) -> anyhow::Error {
    match error {
        Error::Invalid { what: "payload", .. } => {
            let file = config.file.as_deref().map_or_else(
                || crate::config::DEFAULT_CONFIG_FILE.to_owned(),
                |path| path.display().to_string(),
            );
            Error::invalid(
                "payload",
                format!(
                    "job {job} serializes to {bytes} bytes, over the limit of {} bytes; pass a \
                     reference (an id or URL) instead of the data, or raise the limit with \
                     {MAX_PAYLOAD_BYTES_VAR} or max_payload_bytes in {file}",
                    config.max_payload_bytes
                ),
            )
            .into()
        }
        other => other.into(),
    }
}

async fn failed(ctx: &Ctx<'_>, args: FailedArgs) -> Result<()> {
    if let Some(name) = &args.queue {
        validate_queue_name(name).context("--queue")?;
    }
    let queue = ctx.queue().await?;
    let filter = args.queue.as_deref();
    let jobs = failed_page(&queue, filter, args.offset, args.limit).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(());
    }
    let shown = jobs.len() as u64;
    let end = args.offset.saturating_add(shown);
    // A short page that shows something ends the set, so the total is known without counting;
    // otherwise the stats count it (and a failure meanwhile cannot make it less than shown).
    let total = if shown < args.limit && (shown > 0 || args.offset == 0) {
        end
    } else {
        failed_count(&queue, filter).await?.max(if shown > 0 { end } else { 0 })
    };
    let of = match filter {
        Some(name) => format!("{total} in queue {name}"),
        None => total.to_string(),
    };
    if total == 0 {
        match filter {
            Some(name) => println!("no failed jobs in queue {name}"),
            None => println!("no failed jobs"),
        }
        return Ok(());
    }
    if jobs.is_empty() {
        println!(
            "no failed jobs at offset {}: there are {of}; use an --offset below {total}",
            args.offset
        );
        return Ok(());
    }
    print!("{}", output::failed_table(&jobs));
    println!("{}", output::page_footer(args.offset, shown, total, &of, args.limit));
    Ok(())
}

/// `limit` failed jobs from `offset` on, oldest first, in as many calls as the drivers' page cap
/// ([`MAX_PAGE`]) needs.
async fn failed_page(
    queue: &Queue,
    filter: Option<&str>,
    offset: u64,
    limit: u64,
) -> orcs_core::Result<Vec<FailedJob>> {
    let mut jobs = Vec::new();
    loop {
        let remaining = limit.saturating_sub(jobs.len() as u64);
        if remaining == 0 {
            return Ok(jobs);
        }
        let ask = usize::try_from(remaining).unwrap_or(usize::MAX).min(MAX_PAGE);
        let mut query = FailedQuery::new(ask).offset(offset.saturating_add(jobs.len() as u64));
        if let Some(name) = filter {
            query = query.queue(name);
        }
        let page = queue.failed_jobs(&query).await?;
        let last = page.len() < ask;
        jobs.extend(page);
        if last {
            return Ok(jobs);
        }
    }
}

/// How many failed jobs there are: in one queue, or summed over every queue.
async fn failed_count(queue: &Queue, filter: Option<&str>) -> orcs_core::Result<u64> {
    if let Some(name) = filter {
        return Ok(queue.stats(name).await?.failed);
    }
    let mut total = 0;
    for name in queue.driver().queues().await? {
        total += queue.stats(&name).await?.failed;
    }
    Ok(total)
}

async fn retry(ctx: &Ctx<'_>, args: RetryArgs) -> Result<()> {
    let all = args.ids.iter().any(|id| id == "all");
    if all && args.ids.len() > 1 {
        return Err(usage("queue:retry takes either ids or `all`, not both"));
    }
    if args.queue.is_some() && !all {
        return Err(usage("--queue only applies to `queue:retry all`"));
    }
    if let Some(name) = &args.queue {
        validate_queue_name(name).context("--queue")?;
    }
    let queue = ctx.queue().await?;
    if all {
        let n = queue.retry_all_failed(args.queue.as_deref()).await?;
        println!("retried {n} failed jobs");
        return Ok(());
    }
    let mut missing = Vec::new();
    for id in &args.ids {
        match queue.retry_failed(id).await {
            Ok(()) => println!("retried job {id}"),
            Err(Error::NotFound { .. }) => missing.push(id.as_str()),
            Err(e) => return Err(e).with_context(|| format!("cannot retry job {id}")),
        }
    }
    if !missing.is_empty() {
        anyhow::bail!(
            "no failed job with id {}; list the failed jobs with `queue:failed`",
            missing.join(", ")
        );
    }
    Ok(())
}

async fn forget(ctx: &Ctx<'_>, args: ForgetArgs) -> Result<()> {
    let queue = ctx.queue().await?;
    match queue.driver().forget_failed(&args.id).await {
        Ok(()) => {
            println!("forgot failed job {}", args.id);
            Ok(())
        }
        Err(Error::NotFound { .. }) => anyhow::bail!(
            "no failed job with id {}; list the failed jobs with `queue:failed`",
            args.id
        ),
        Err(e) => Err(e).with_context(|| format!("cannot forget job {}", args.id)),
    }
}

async fn flush(ctx: &Ctx<'_>) -> Result<()> {
    let queue = ctx.queue().await?;
    let n = queue.driver().flush_failed().await?;
    println!("flushed {n} failed jobs");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_hides_passwords_only() {
        assert_eq!(redacted("redis://u:secret@h:6379/0"), "redis://u:***@h:6379/0");
        assert_eq!(redacted("redis://h:6379"), "redis://h:6379");
        assert_eq!(redacted("sqlite://storage/queue.db"), "sqlite://storage/queue.db");
        assert_eq!(redacted("redis://u:p@ss@h/0"), "redis://u:***@h/0");
        assert_eq!(redacted("redis://hunter2@h"), "redis://***@h");
        assert_eq!(
            redacted("postgres://u@h/db?sslmode=off&password=hunter2"),
            "postgres://u@h/db?sslmode=off&password=***"
        );
        assert_eq!(redacted("redis+cluster://:pw@a:1,b:2"), "redis+cluster://:***@a:1,b:2");
    }
}
