//! The commands: each resolves the configuration (flags over environment over file over
//! defaults), connects the driver, and prints text or JSON.

use std::io::{BufRead as _, IsTerminal as _, Read as _};

use anyhow::{Context as _, Result};
use orcs_core::{
    CancelOutcome, DispatchOptions, Error, FailedJob, FailedQuery, MAX_PAGE, PushOutcome, Queue,
    QueueLimits, QueueStats, UniqueUntil, validate_queue_name,
};
use serde_json::json;

use crate::cli::{
    CancelArgs, ClearArgs, Cli, Command, DispatchArgs, FailedArgs, FlushArgs, ForgetArgs,
    LimitArgs, QueueArg, RetryArgs, StatsArgs,
};
use crate::config::{Config, DriverKind, MAX_PAYLOAD_BYTES_VAR, Setting};
use crate::connect;
use crate::output::{self, say};
use crate::{App, usage};

/// Jobs per atomic batch of `queue:dispatch --count`.
const DISPATCH_BATCH: u64 = 1000;

/// What every command needs: the application and the resolved configuration.
pub(crate) struct Ctx<'a> {
    pub(crate) app: &'a App,
    pub(crate) config: Config,
    /// `--driver` was given (the demo runs in memory unless it was).
    driver_flag: Option<DriverKind>,
}

impl Ctx<'_> {
    /// Connects the configured driver, saying which one failed and how to fix it. A
    /// configuration error (a malformed URL) already names the setting and what it accepts, so
    /// only backend errors get the hint to check the server.
    pub(crate) async fn queue(&self) -> Result<Queue> {
        let error = match connect(&self.config).await {
            Ok(queue) => return Ok(queue),
            Err(e @ (Error::Config { .. } | Error::Invalid { .. })) => return Err(e.into()),
            Err(e) => e,
        };
        let hint = match self.config.driver {
            DriverKind::Redis => format!(
                "cannot use the redis driver at {}; check that Redis is running there and that \
                 REDIS_URL (or --url) names the right host, port, user and password",
                redacted(self.config.redis_url())
            ),
            DriverKind::Database => format!(
                "cannot use the database driver at {}; check that the database is running and \
                 reachable and that DATABASE_URL (or --url) names the right host, port, user, \
                 password and database",
                redacted(self.config.database_url())
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

/// Where the configured driver keeps its jobs, for the worker's banner and `queue:stats`: the
/// SQLite file's absolute path or the URL without its password, so that two commands run in two
/// directories show whether they share a queue.
pub(crate) fn backend_location(config: &Config) -> String {
    match config.driver {
        DriverKind::Memory => "jobs in this process's memory".to_owned(),
        DriverKind::Redis => {
            let prefix = config.redis_prefix.as_deref().unwrap_or("orcs"); // the driver's default
            format!("backend {} (key prefix {prefix})", redacted(config.redis_url()))
        }
        DriverKind::Database => {
            let url = config.database_url();
            match sqlite_file(url) {
                Some((path, query)) => {
                    format!("backend sqlite://{}{query}", absolute(path).display())
                }
                None => format!("backend {}", redacted(url)),
            }
        }
        other => format!("backend {}", other.as_str()),
    }
}

/// The file and the `?...` options of a `sqlite:` URL.
fn sqlite_file(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let split = rest.find('?').unwrap_or(rest.len());
    Some(rest.split_at(split))
}

/// `path` made absolute against the working directory, without resolving links (the file may
/// not exist yet).
fn absolute(path: &str) -> std::path::PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| std::path::PathBuf::from(path))
}

/// Resolves the configuration and runs the command on a fresh runtime.
pub(crate) fn run(app: &App, cli: Cli) -> Result<()> {
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(driver) = cli.driver {
        config.driver = driver;
    }
    if let Some(table) = cli.table {
        config.database_table = Some(table);
    }
    if let Some(url) = cli.url {
        let setting = match config.driver {
            DriverKind::Redis => {
                config.redis_url = Some(url);
                Some(Setting::RedisUrl)
            }
            DriverKind::Database => {
                config.database_url = Some(url);
                Some(Setting::DatabaseUrl)
            }
            _ => {
                eprintln!(
                    "warning: --url is ignored: the {} driver has no URL; pass --driver redis or --driver database with it",
                    config.driver
                );
                None
            }
        };
        // Errors about the URL name the flag, and the variable it stands in for.
        if let Some(setting) = setting {
            config.set_origin(setting, format!("--url (in place of {})", setting.variable()));
        }
    }
    let ctx = Ctx { app, config, driver_flag: cli.driver };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Work(args) => crate::work::work(&ctx, args).await,
            Command::Stats(args) => stats(&ctx, args).await,
            Command::Clear(args) => clear(&ctx, args).await,
            Command::Dispatch(args) => dispatch(&ctx, args).await,
            Command::Failed(args) => failed(&ctx, args).await,
            Command::Retry(args) => retry(&ctx, args).await,
            Command::Forget(args) => forget(&ctx, args).await,
            Command::Flush(args) => flush(&ctx, args).await,
            Command::Pause(args) => pause(&ctx, args, true).await,
            Command::Resume(args) => pause(&ctx, args, false).await,
            Command::Limit(args) => limit(&ctx, args).await,
            Command::Cancel(args) => cancel(&ctx, args).await,
            Command::Demo => {
                // The demo runs the example jobs even in an application's own binary.
                if !app.quiet_simulated_panics {
                    crate::examples::quiet_simulated_panics();
                }
                crate::demo::run(&ctx.config, ctx.driver_flag).await
            }
            Command::Dashboard(args) => crate::dashboard::run(&ctx, args).await,
            Command::List(args) => crate::inspect::list(&ctx, args).await,
            Command::Show(args) => crate::inspect::show(&ctx, args).await,
            Command::Delete(args) => crate::inspect::delete(&ctx, args).await,
            Command::Workers(args) => crate::inspect::workers(&ctx, args).await,
            Command::Prune(args) => crate::inspect::prune(&ctx, args).await,
            Command::Batch(args) => crate::batch::show(&ctx, args).await,
            Command::CancelBatch(args) => crate::batch::cancel(&ctx, args).await,
            Command::ScheduleList(args) => crate::schedule::list(&ctx, args).await,
            Command::ScheduleRun(args) => crate::schedule::run(&ctx, args).await,
            Command::ScheduleForget(args) => crate::schedule::forget(&ctx, args).await,
            Command::Bench(args) => {
                let queue = ctx.queue().await?;
                let line = crate::bench::run(
                    &queue,
                    &ctx.config.driver.to_string(),
                    args.n,
                    args.backlog,
                    &args.phases,
                    (args.schedules, args.schedule_secs),
                    &crate::bench::Tidy::new(&ctx.config),
                )
                .await;
                say!("{line}");
                Ok(())
            }
        }
    })
}

async fn stats(ctx: &Ctx<'_>, args: StatsArgs) -> Result<()> {
    if let Some(name) = &args.queue {
        validate_queue_name(name).context("the QUEUE argument")?;
    }
    let queue = ctx.queue().await?;
    let mut known = queue.driver().queues().await?;
    if args.prune {
        // Each forget checks and deletes in one step of the backend: a queue that got a job
        // since the listing is left alone.
        let mut pruned = Vec::new();
        for name in &known {
            if queue.forget_queue(name).await? {
                pruned.push(name.clone());
            }
        }
        let line = if pruned.is_empty() {
            "nothing to prune".to_owned()
        } else {
            let s = if pruned.len() == 1 { "" } else { "s" };
            format!("pruned {} queue{s}: {}", pruned.len(), pruned.join(", "))
        };
        // With --json, stdout stays one JSON document.
        if args.json {
            eprintln!("{line}");
        } else {
            say!("{line}");
        }
        known = queue.driver().queues().await?;
    }
    if let Some(name) = &args.queue {
        let stats = queue.stats(name).await?;
        // A queue that never held a job has all-default stats; a typo should not look like an
        // idle queue.
        if !known.contains(name) && !has_state(&stats) {
            let list = if known.is_empty() {
                format!("none yet on the {}", location(ctx))
            } else {
                known.join(", ")
            };
            anyhow::bail!(
                "no queue {name} exists (it never held a job); the known queues are: {list}; \
                 run `queue:stats` without a name to see them all"
            );
        }
        if args.json {
            say!("{}", serde_json::to_string_pretty(&stats)?);
        } else {
            output::write_stdout(&output::stats_table(std::slice::from_ref(&stats)));
        }
        return Ok(());
    }
    let mut all = Vec::new();
    for name in known {
        all.push(queue.stats(&name).await?);
    }
    if args.json {
        say!("{}", serde_json::to_string_pretty(&all)?);
    } else if all.is_empty() {
        say!("no queues yet: nothing was dispatched on the {}", location(ctx));
    } else {
        output::write_stdout(&output::stats_table(&all));
    }
    Ok(())
}

/// `database driver (backend sqlite:///abs/queue.db)`.
fn location(ctx: &Ctx<'_>) -> String {
    format!("{} driver ({})", ctx.config.driver, backend_location(&ctx.config))
}

/// True if a queue's stats show that it exists: jobs, counts, a pause or limits.
fn has_state(s: &QueueStats) -> bool {
    s.pending + s.delayed + s.reserved + s.failed + s.processed + s.failed_total + s.cancelled > 0
        || s.paused
        || s.limits != QueueLimits::none()
}

/// Asks `question` on a terminal and reads y/N. Without a terminal it refuses with `refusal`
/// (naming --force), since a script cannot answer.
fn confirm(question: &str, refusal: String) -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("{refusal}");
    }
    output::write_stdout(&format!("{question} [y/N] "));
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}

async fn clear(ctx: &Ctx<'_>, args: ClearArgs) -> Result<()> {
    let name = args.queue.unwrap_or_else(|| ctx.config.default_queue.clone());
    validate_queue_name(&name).context("the QUEUE argument")?;
    let queue = ctx.queue().await?;
    if !args.force {
        let stats = queue.stats(&name).await?;
        let waiting = stats.pending + stats.delayed;
        let asked = confirm(
            &format!("Clear {waiting} pending and delayed jobs from queue {name}?"),
            format!(
                "refusing to clear queue {name} ({waiting} pending and delayed jobs) without confirmation: \
                 standard input is not a terminal; pass --force to clear it"
            ),
        )?;
        if !asked {
            say!(
                "nothing cleared: queue {name} keeps its jobs (answer y, or pass --force, to clear it)"
            );
            return Ok(());
        }
    }
    let removed = queue.clear(&name).await?;
    say!("cleared {removed} jobs from queue {name}");
    Ok(())
}

/// The text of `--data`: inline JSON, `@FILE`, or `-` for stdin.
pub(crate) fn read_data(data: &str) -> Result<String> {
    if data == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| usage(format!("--data -: cannot read the JSON from stdin ({e})")))?;
        return Ok(text);
    }
    if let Some(path) = data.strip_prefix('@') {
        return std::fs::read_to_string(path).map_err(|e| {
            usage(format!(
                "--data @{path}: cannot read the file ({e}); check the path, or pass the JSON inline"
            ))
        });
    }
    Ok(data.to_owned())
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
    let fields = match ctx.app.job_fields(&args.job) {
        Some(fields) => format!("; job {} takes the fields {}", args.job, fields.join(", ")),
        None => String::new(),
    };
    let data = read_data(&args.data)?;
    let value: serde_json::Value = serde_json::from_str(&data).map_err(|e| {
        usage(format!(
            "--data is not valid JSON ({e}); pass a JSON object, e.g. --data '{{\"to\":\"user@example.com\"}}'{fields}"
        ))
    })?;
    if !value.is_object() {
        return Err(usage(format!(
            "--data must be a JSON object (the job's fields), not {value}; e.g. --data '{{\"to\":\"user@example.com\"}}'{fields}"
        )));
    }
    let payload = serde_json::to_string(&value)?;
    if let Some(check) = ctx.app.validators.get(args.job.as_str()) {
        check(&payload).map_err(|e| {
            usage(format!(
                "--data does not fit job {}: {e}{fields}; fix the data (see `queue:dispatch --help`)",
                args.job
            ))
        })?;
    }
    if let Some(name) = &args.queue {
        validate_queue_name(name).context("--queue")?;
    }
    if let Some(key) = &args.unique
        && key.trim().is_empty()
    {
        return Err(usage("--unique is empty; pass a key such as user-42 or report:2026-11"));
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
    if let Some(key) = &args.unique {
        let until = args.unique_until.unwrap_or(UniqueUntil::Finished);
        options = if args.debounce {
            options.debounce(key.clone(), until)
        } else {
            options.unique(key.clone(), until)
        };
    }

    if args.batch.batch {
        return crate::batch::dispatch(ctx, &args, payload, defaults, &options).await;
    }
    let queue = ctx.queue().await?;
    // Only --json prints every id; otherwise keep the first and last, so a large --count stays small.
    let mut jobs = Vec::new();
    let (mut first, mut last) = (String::new(), String::new());
    let mut target = String::new();
    let (mut sent, mut duplicates, mut replaced): (u64, u64, u64) = (0, 0, 0);
    while sent < args.count {
        let batch = (args.count - sent).min(DISPATCH_BATCH);
        let records = (0..batch)
            .map(|_| queue.untyped_record(&args.job, payload.clone(), defaults, &options))
            .collect::<orcs_core::Result<Vec<_>>>()
            .map_err(|e| in_cli_terms(e, &args.job, payload.len(), &ctx.config))?;
        if let Some(head) = records.first() {
            target.clone_from(&head.queue);
        }
        let own: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
        // The driver answers each record: stored, or the existing job's id when the id or the
        // unique key was taken (and whether a debounced record replaced its data).
        let outcomes = queue.push_records(records).await.with_context(|| {
            format!(
                "dispatching failed after {} of {} jobs were stored",
                sent - duplicates,
                args.count
            )
        })?;
        let mut stored_ids = Vec::with_capacity(outcomes.len());
        for (own, outcome) in own.into_iter().zip(outcomes) {
            let (id, duplicate, replacing) = match outcome {
                PushOutcome::Duplicate { id } => (id, true, false),
                PushOutcome::Replaced { id } => (id, true, true),
                _ => (own, false, false),
            };
            if duplicate {
                duplicates += 1;
                replaced += u64::from(replacing);
            } else {
                if first.is_empty() {
                    first.clone_from(&id);
                }
                last.clone_from(&id);
            }
            if args.json {
                jobs.push(json!({ "id": id, "duplicate": duplicate, "replaced": replacing }));
            }
            stored_ids.push(id);
        }
        if first.is_empty()
            && let Some(holder) = stored_ids.first()
        {
            // Every one so far was a duplicate: name the holder.
            last.clone_from(holder);
        }
        sent += batch;
    }

    let stored = sent - duplicates;
    if args.json {
        let ids: Vec<&serde_json::Value> = jobs.iter().map(|j| &j["id"]).collect();
        say!("{}", json!({ "job": args.job, "queue": target, "ids": ids, "jobs": jobs }));
    } else if stored == 0 && replaced > 0 {
        let key = args.unique.as_deref().unwrap_or_default();
        say!(
            "debounced: job {last} of queue {target} holds the unique key {key:?} and has not \
             started; it now carries this job's data and run time (nothing new was stored)"
        );
    } else if stored == 0 {
        let key = args.unique.as_deref().unwrap_or_default();
        say!(
            "not dispatched: job {last} of queue {target} holds the unique key {key:?}; \
             nothing was stored ({sent} duplicate{})",
            if sent == 1 { "" } else { "s" }
        );
    } else if stored == 1 {
        say!("dispatched {} {first} to queue {target}", args.job);
    } else {
        say!("dispatched {stored} {} jobs to queue {target} (ids {first} to {last})", args.job);
    }
    if !args.json && stored > 0 && duplicates > 0 {
        let debounced = if replaced > 0 {
            format!(" ({replaced} gave their data to the waiting holder)")
        } else {
            String::new()
        };
        say!(
            "{duplicates} more were not stored: the unique key {:?} was already held{debounced}",
            args.unique.as_deref().unwrap_or_default()
        );
    }
    Ok(())
}

/// A dispatch error re-described for the command line: the library's payload-limit error names
/// the Rust setter (`Queue::with_max_payload_bytes`), while here the limit comes from the
/// environment or the config file, so name those instead.
pub(crate) fn in_cli_terms(
    error: Error,
    job: &str,
    bytes: usize,
    config: &Config,
) -> anyhow::Error {
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
        let page: Vec<serde_json::Value> = jobs.iter().map(output::failed_json).collect();
        say!("{}", serde_json::to_string_pretty(&page)?);
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
            Some(name) => say!("no failed jobs in queue {name}"),
            None => say!("no failed jobs"),
        }
        return Ok(());
    }
    if jobs.is_empty() {
        say!(
            "no failed jobs at offset {}: there are {of}; use an --offset below {total}",
            args.offset
        );
        return Ok(());
    }
    output::write_stdout(&output::failed_table(&jobs));
    say!("{}", output::page_footer(args.offset, shown, total, &of, args.limit));
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
        say!("retried {n} failed jobs");
        return Ok(());
    }
    let mut missing = Vec::new();
    for id in &args.ids {
        match queue.retry_failed(id).await {
            Ok(()) => say!("retried job {id}"),
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
    let mut missing = Vec::new();
    for id in &args.ids {
        match queue.driver().forget_failed(id).await {
            Ok(()) => say!("forgot failed job {id}"),
            Err(Error::NotFound { .. }) => missing.push(id.as_str()),
            Err(e) => return Err(e).with_context(|| format!("cannot forget job {id}")),
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

async fn flush(ctx: &Ctx<'_>, args: FlushArgs) -> Result<()> {
    let queue = ctx.queue().await?;
    if !args.force {
        let count = failed_count(&queue, None).await?;
        let asked = confirm(
            &format!("Delete all {count} failed jobs?"),
            format!(
                "refusing to flush {count} failed jobs without confirmation: standard input is \
                 not a terminal; pass --force to flush them"
            ),
        )?;
        if !asked {
            say!(
                "nothing flushed: the failed jobs are kept (answer y, or pass --force, to flush them)"
            );
            return Ok(());
        }
    }
    let n = queue.driver().flush_failed().await?;
    say!("flushed {n} failed jobs");
    Ok(())
}

async fn pause(ctx: &Ctx<'_>, args: QueueArg, paused: bool) -> Result<()> {
    validate_queue_name(&args.queue).context("the QUEUE argument")?;
    let queue = ctx.queue().await?;
    let name = &args.queue;
    if paused {
        queue.pause(name).await.map_err(|e| unsupported(e, "pause queues"))?;
        say!(
            "paused queue {name}: workers take none of its jobs until `queue:resume {name}`; \
             running jobs finish"
        );
    } else {
        queue.resume(name).await.map_err(|e| unsupported(e, "resume queues"))?;
        say!("resumed queue {name}");
    }
    Ok(())
}

async fn limit(ctx: &Ctx<'_>, args: LimitArgs) -> Result<()> {
    validate_queue_name(&args.queue).context("the QUEUE argument")?;
    let queue = ctx.queue().await?;
    let name = &args.queue;
    let current = queue.stats(name).await?.limits;
    if !args.clear && args.concurrency.is_none() && args.rate.is_none() {
        say!(
            "queue {name}: limits {}; set them with --concurrency N and --rate N/SECS, or remove \
             them with --clear",
            output::limits(&current)
        );
        return Ok(());
    }
    // Each flag changes its own limit and keeps the other.
    let mut limits = if args.clear { QueueLimits::none() } else { current };
    if let Some(n) = args.concurrency {
        limits.concurrency = Some(n);
    }
    if let Some(rate) = args.rate {
        limits.rate = Some(rate);
    }
    queue.set_limits(name, limits).await.map_err(|e| unsupported(e, "limit queues"))?;
    say!("queue {name}: limits {}", output::limits(&limits));
    Ok(())
}

async fn cancel(ctx: &Ctx<'_>, args: CancelArgs) -> Result<()> {
    let queue = ctx.queue().await?;
    let mut missing = Vec::new();
    for id in &args.ids {
        match queue.cancel(id).await {
            Ok(CancelOutcome::Removed) => say!("{id}: removed (it had not started)"),
            Ok(CancelOutcome::Requested) => {
                say!("{id}: stop requested (it is running; its worker stops it within a second)");
            }
            Ok(_) => say!("{id}: cancelled"),
            Err(Error::NotFound { .. }) => {
                say!("{id}: not found");
                missing.push(id.as_str());
            }
            Err(e) => {
                return Err(unsupported(e, "cancel jobs"))
                    .with_context(|| format!("cannot cancel job {id}"));
            }
        }
    }
    if !missing.is_empty() {
        anyhow::bail!(
            "no pending, delayed or running job with id {}: it may have completed, failed (see \
             `queue:failed`) or never existed",
            missing.join(", ")
        );
    }
    Ok(())
}

/// An `Unsupported` error of a driver that lacks the feature, said in the command line's terms.
pub(crate) fn unsupported(error: Error, what: &str) -> anyhow::Error {
    match error {
        Error::Unsupported { .. } => {
            let message = error.to_string();
            anyhow::Error::new(error).context(format!(
                "this backend cannot {what} yet ({message}); use a newer driver, or the redis driver"
            ))
        }
        other => other.into(),
    }
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
