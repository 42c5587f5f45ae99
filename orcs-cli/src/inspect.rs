//! Inspection (SPEC 8.5): `queue:list`, `queue:show`, `queue:delete`, `queue:workers` and
//! `queue:prune`. Each reads a bounded amount: a page, one job, the live workers.
//!
//! `queue:list` pages with a cursor that is an offset into the state's order (claim order for
//! pending jobs, due time for delayed ones, lease deadline for reserved ones, failure order for
//! failed ones): the driver contract pages by offset ([`ListRequest::offset`]). Jobs move between
//! states while one pages, so a busy queue's next page may repeat or skip a job; a cursor is a
//! place to continue from, not a snapshot.

use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Args;
use orcs_core::{
    Error, FailedJob, FailedQuery, JobInfo, JobState, ListRequest, MAX_PAGE, Millis, Prune, Queue,
    WorkerInfo, validate_queue_name,
};
use serde_json::{Value, json};

use crate::commands::{Ctx, backend_location};
use crate::output::{self, one_line, rfc3339, say};
use crate::usage;

/// `queue:list`'s page size unless `--limit` says otherwise.
const DEFAULT_LIST_LIMIT: u64 = 100;

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// The queue
    pub(crate) queue: String,
    /// Which jobs: pending (in claim order), delayed (by due time), reserved (running, by lease
    /// deadline) or failed (oldest first)
    #[arg(long, value_name = "STATE", default_value = "pending", value_parser = parse_state)]
    pub(crate) state: JobState,
    /// Show at most this many jobs (1 to 1000)
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LIST_LIMIT, value_parser = parse_page, allow_negative_numbers = true)]
    pub(crate) limit: u64,
    /// Continue after a previous page: the cursor it printed (`next_cursor` with --json)
    #[arg(long, value_name = "CURSOR", value_parser = parse_cursor, allow_negative_numbers = true)]
    pub(crate) after: Option<u64>,
    /// Print the page as JSON: {queue, state, jobs, next_cursor}
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// The job's id
    pub(crate) id: String,
    /// Print the job as one JSON object
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DeleteArgs {
    /// The jobs' ids: a pending or delayed job is removed (counted as cancelled), a failed one
    /// forgotten; a running one is refused (stop it with queue:cancel)
    #[arg(required = true, value_name = "ID")]
    pub(crate) ids: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct WorkersArgs {
    /// Print the workers as a JSON array
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct PruneArgs {
    /// Only the failed jobs of this queue
    #[arg(long, value_name = "Q")]
    pub(crate) queue: Option<String>,
    /// Delete failed jobs that failed longer ago than this, e.g. 7d, 12h, 30m or seconds
    /// [env: QUEUE_FAILED_RETENTION; config: failed_retention]
    #[arg(long, value_name = "DURATION", value_parser = parse_older_than)]
    pub(crate) older_than: Option<Duration>,
    /// Keep only the newest N failed jobs, deleting the older ones [env: QUEUE_FAILED_KEEP;
    /// config: failed_keep]
    #[arg(long, value_name = "N", value_parser = parse_keep, allow_negative_numbers = true)]
    pub(crate) keep: Option<u64>,
    /// Print {pruned: N} as JSON
    #[arg(long)]
    pub(crate) json: bool,
}

fn parse_state(text: &str) -> Result<JobState, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "pending" => Ok(JobState::Pending),
        "delayed" => Ok(JobState::Delayed),
        "reserved" | "running" => Ok(JobState::Reserved),
        "failed" => Ok(JobState::Failed),
        _ => Err(format!("{text:?} is not a job state; use pending, delayed, reserved or failed")),
    }
}

fn parse_page(text: &str) -> Result<u64, String> {
    let advice = format!("use a whole number from 1 to {MAX_PAGE}, and --after to page on");
    match text.trim().parse::<u64>() {
        Ok(n) if (1..=MAX_PAGE as u64).contains(&n) => Ok(n),
        Ok(n) => Err(format!("{n} is out of range; {advice}")),
        Err(_) => Err(format!("{text:?} is not a whole number; {advice}")),
    }
}

fn parse_cursor(text: &str) -> Result<u64, String> {
    text.trim().parse::<u64>().map_err(|_| {
        format!(
            "{text:?} is not a cursor; pass the cursor a previous page printed (a whole number, \
             `next_cursor` with --json), or leave --after out for the first page"
        )
    })
}

fn parse_older_than(text: &str) -> Result<Duration, String> {
    orcs::config::parse_age(text)
}

fn parse_keep(text: &str) -> Result<u64, String> {
    text.trim().parse::<u64>().map_err(|_| {
        format!(
            "{text:?} is not a whole number of 0 or more; use e.g. 1000 to keep the newest 1000"
        )
    })
}

// ---- queue:list ----

pub(crate) async fn list(ctx: &Ctx<'_>, args: ListArgs) -> Result<()> {
    validate_queue_name(&args.queue).context("the QUEUE argument")?;
    let queue = ctx.queue().await?;
    let offset = args.after.unwrap_or(0);
    let limit = usize::try_from(args.limit).unwrap_or(MAX_PAGE);
    let name = &args.queue;
    let (rows, shown): (Vec<Value>, usize) = if args.state == JobState::Failed {
        let query = FailedQuery::new(limit).queue(name.clone()).offset(offset);
        let jobs = queue.failed_jobs(&query).await?;
        if !args.json {
            print_page(&args, offset, jobs.len(), || output::failed_table(&jobs));
            return Ok(());
        }
        (jobs.iter().map(failed_row).collect(), jobs.len())
    } else {
        let request = ListRequest::new(name.clone(), args.state, limit).offset(offset);
        let jobs = queue.list(&request).await?;
        if !args.json {
            print_page(&args, offset, jobs.len(), || jobs_table(args.state, &jobs));
            return Ok(());
        }
        (jobs.iter().map(|job| job_json(job, None)).collect(), jobs.len())
    };
    let next = next_cursor(offset, shown, limit);
    say!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "queue": name,
            "state": args.state,
            "jobs": rows,
            "next_cursor": next.map(|n| n.to_string()),
        }))?
    );
    Ok(())
}

/// The cursor of the page after one of `shown` jobs from `offset`: none after a short page.
fn next_cursor(offset: u64, shown: usize, limit: usize) -> Option<u64> {
    (shown == limit && shown > 0).then(|| offset + shown as u64)
}

/// The text of a page: the table and a line saying how to see the next one.
fn print_page(args: &ListArgs, offset: u64, shown: usize, table: impl FnOnce() -> String) {
    let (name, state) = (&args.queue, args.state);
    if shown == 0 {
        if offset == 0 {
            say!("no {state} jobs in queue {name}");
        } else {
            say!("no more {state} jobs in queue {name} after cursor {offset}");
        }
        return;
    }
    output::write_stdout(&table());
    let s = if shown == 1 { "" } else { "s" };
    let mut footer = format!("{shown} {state} job{s} of queue {name}");
    if let Some(next) = next_cursor(offset, shown, usize::try_from(args.limit).unwrap_or(MAX_PAGE))
    {
        let limit = if args.limit == DEFAULT_LIST_LIMIT {
            String::new()
        } else {
            format!(" --limit {}", args.limit)
        };
        footer.push_str(&format!(
            "; next page: queue:list {name} --state {state}{limit} --after {next}"
        ));
    }
    say!("{footer}");
}

/// The table of a page of pending, delayed or reserved jobs: the columns that matter in that
/// state.
fn jobs_table(state: JobState, jobs: &[JobInfo]) -> String {
    let (when, numeric): (&str, &[bool]) = match state {
        JobState::Delayed => ("due", &[false, false, true, true, false, false]),
        JobState::Reserved => ("lease_until", &[false, false, true, true, false, false]),
        _ => ("ready_since", &[false, false, true, true, false, false]),
    };
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|info| {
            let at = match state {
                JobState::Reserved => info.lease_expires_at.map(rfc3339).unwrap_or_default(),
                _ => rfc3339(info.job.available_at),
            };
            let last = match (state, &info.progress) {
                (JobState::Reserved, Some(progress)) => format!("progress {progress}"),
                _ => info.last_error.as_deref().map(|e| one_line(e, 80)).unwrap_or_default(),
            };
            vec![
                info.job.id.clone(),
                info.job.name.clone(),
                info.job.priority.to_string(),
                info.attempts.to_string(),
                at,
                last,
            ]
        })
        .collect();
    let last = if state == JobState::Reserved { "progress" } else { "last_error" };
    output::table(&["id", "job", "priority", "attempts", when, last], &rows, numeric)
}

/// A failed job in a `queue:list --json` page: as `queue:failed --json` prints it, with its state.
fn failed_row(job: &FailedJob) -> Value {
    let mut row = output::failed_json(job);
    row["state"] = json!(JobState::Failed);
    row
}

/// A JSON value stored as text (a payload, progress) as JSON, or as a string if it is not JSON.
fn as_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| json!(text))
}

/// One job as `queue:show --json` and `queue:list --json` print it: times in RFC 3339, the
/// payload and the progress as JSON, and the worker holding a running job when it is known.
fn job_json(info: &JobInfo, holder: Option<&WorkerInfo>) -> Value {
    let job = &info.job;
    let due = matches!(info.state, JobState::Pending | JobState::Delayed);
    json!({
        "id": job.id,
        "state": info.state,
        "queue": job.queue,
        "name": job.name,
        "payload": as_json(&job.payload),
        "priority": job.priority,
        "attempts": info.attempts,
        "max_attempts": job.max_retries.saturating_add(1),
        "dispatched_at": rfc3339(job.dispatched_at),
        "available_at": due.then(|| rfc3339(job.available_at)),
        "lease_expires_at": info.lease_expires_at.map(rfc3339),
        "failed_at": info.failed_at.map(rfc3339),
        "last_error": info.last_error,
        "errors": info.errors,
        "progress": info.progress.as_deref().map(as_json),
        "cancel_requested": info.cancel_requested,
        "unique_key": job.unique.as_ref().map(|u| u.key.clone()),
        "batch": job.batch,
        "worker": holder.map(|w| json!({ "id": w.id, "host": w.host, "pid": w.pid })),
    })
}

// ---- queue:show ----

pub(crate) async fn show(ctx: &Ctx<'_>, args: ShowArgs) -> Result<()> {
    let queue = ctx.queue().await?;
    let Some(info) = queue.get(&args.id).await? else {
        anyhow::bail!("{}", not_found(&args.id));
    };
    let holder =
        if info.state == JobState::Reserved { holder_of(&queue, &info.job.id).await } else { None };
    if args.json {
        say!("{}", serde_json::to_string_pretty(&job_json(&info, holder.as_ref()))?);
    } else {
        output::write_stdout(&show_text(&info, holder.as_ref()));
    }
    Ok(())
}

fn not_found(id: &str) -> String {
    format!(
        "no job with id {id}: completed jobs are not kept, and it may have been deleted or never \
         existed; list a queue's jobs with `queue:list QUEUE` and the failed ones with \
         `queue:failed`"
    )
}

/// The live worker whose last heartbeat lists `id` as running; `None` when none does or the
/// driver keeps no heartbeats.
async fn holder_of(queue: &Queue, id: &str) -> Option<WorkerInfo> {
    let workers = queue.driver().workers(queue.now()).await.ok()?;
    workers.into_iter().find(|w| w.running.iter().any(|r| r == id))
}

/// `queue:show`'s text: one `key  value` line per field that applies, then the payload and the
/// error history.
fn show_text(info: &JobInfo, holder: Option<&WorkerInfo>) -> String {
    let job = &info.job;
    let mut lines: Vec<(&str, String)> = vec![
        ("id", job.id.clone()),
        ("state", info.state.to_string()),
        ("queue", job.queue.clone()),
        ("job", job.name.clone()),
        ("priority", job.priority.to_string()),
        ("attempts", format!("{} of {}", info.attempts, job.max_retries.saturating_add(1))),
        ("dispatched", rfc3339(job.dispatched_at)),
    ];
    match info.state {
        JobState::Pending => lines.push(("ready since", rfc3339(job.available_at))),
        JobState::Delayed => lines.push(("due", rfc3339(job.available_at))),
        _ => {}
    }
    if let Some(until) = info.lease_expires_at {
        lines.push(("lease until", rfc3339(until)));
    }
    if info.state == JobState::Reserved {
        let by = match holder {
            Some(w) => format!("worker {} (host {}, pid {})", w.id, w.host, w.pid),
            None => "unknown (no live worker reports it)".to_owned(),
        };
        lines.push(("held by", by));
    }
    if let Some(at) = info.failed_at {
        lines.push(("failed", rfc3339(at)));
    }
    if let Some(progress) = &info.progress {
        lines.push(("progress", progress.clone()));
    }
    if info.cancel_requested {
        lines.push(("cancel", "requested; its worker stops it".to_owned()));
    }
    if let Some(unique) = &job.unique {
        lines.push(("unique key", unique.key.clone()));
    }
    if let Some(batch) = &job.batch {
        lines.push(("batch", batch.clone()));
    }
    if info.errors.is_empty()
        && let Some(error) = &info.last_error
    {
        lines.push(("last error", one_line(error, 200)));
    }
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut text = String::new();
    for (key, value) in &lines {
        text.push_str(&format!("{key:<width$}  {value}\n"));
    }
    let payload = serde_json::to_string_pretty(&as_json(&job.payload))
        .unwrap_or_else(|_| job.payload.clone());
    text.push_str("payload\n");
    for line in payload.lines() {
        text.push_str(&format!("  {line}\n"));
    }
    if !info.errors.is_empty() {
        text.push_str("errors, oldest first\n");
        for (n, error) in info.errors.iter().enumerate() {
            text.push_str(&format!("  {}. {}\n", n + 1, one_line(error, 200)));
        }
    }
    text
}

// ---- queue:delete ----

pub(crate) async fn delete(ctx: &Ctx<'_>, args: DeleteArgs) -> Result<()> {
    let queue = ctx.queue().await?;
    let (mut missing, mut running) = (Vec::new(), Vec::new());
    for id in &args.ids {
        let Some(info) = queue.get(id).await? else {
            missing.push(id.as_str());
            continue;
        };
        match info.state {
            JobState::Failed => match queue.driver().forget_failed(id).await {
                Ok(()) => say!("deleted failed job {id}"),
                Err(Error::NotFound { .. }) => missing.push(id.as_str()),
                Err(e) => return Err(e).with_context(|| format!("cannot delete job {id}")),
            },
            JobState::Reserved => running.push(id.as_str()),
            state => match queue.cancel(id).await {
                Ok(orcs_core::CancelOutcome::Removed) => say!("deleted {state} job {id}"),
                // It started between the look and the delete: the cancel stops it instead.
                Ok(_) => say!(
                    "{id} started meanwhile: its worker was asked to stop it, as queue:cancel does"
                ),
                Err(Error::NotFound { .. }) => missing.push(id.as_str()),
                Err(e) => return Err(e).with_context(|| format!("cannot delete job {id}")),
            },
        }
    }
    if !running.is_empty() {
        let ids = running.join(" ");
        anyhow::bail!(
            "not deleted: job {} is running; queue:delete does not stop running jobs: stop it \
             with `queue:cancel {ids}` (its worker stops it within a second), or wait for it \
             to end",
            running.join(", ")
        );
    }
    if !missing.is_empty() {
        let ids: Vec<String> = missing.iter().map(|id| (*id).to_owned()).collect();
        anyhow::bail!("{}", not_found(&ids.join(", ")));
    }
    Ok(())
}

// ---- queue:workers ----

pub(crate) async fn workers(ctx: &Ctx<'_>, args: WorkersArgs) -> Result<()> {
    let queue = ctx.queue().await?;
    let now = queue.now();
    let workers =
        queue.driver().workers(now).await.map_err(|e| unsupported(e, "list workers", ctx))?;
    if args.json {
        let rows: Vec<Value> = workers.iter().map(worker_json).collect();
        say!("{}", serde_json::to_string_pretty(&rows)?);
    } else if workers.is_empty() {
        say!(
            "no live workers on the {} driver ({}): a worker is listed while `queue:work` runs",
            ctx.config.driver,
            backend_location(&ctx.config)
        );
    } else {
        output::write_stdout(&workers_table(&workers, now));
    }
    Ok(())
}

fn worker_json(w: &WorkerInfo) -> Value {
    json!({
        "id": w.id,
        "host": w.host,
        "pid": w.pid,
        "queues": w.queues,
        "concurrency": w.concurrency,
        "running": w.running,
        "started_at": rfc3339(w.started_at),
        "last_heartbeat": rfc3339(w.last_heartbeat),
    })
}

fn workers_table(workers: &[WorkerInfo], now: Millis) -> String {
    let rows: Vec<Vec<String>> = workers
        .iter()
        .map(|w| {
            let ago = Duration::from_millis(u64::try_from(now - w.last_heartbeat).unwrap_or(0));
            vec![
                w.id.clone(),
                w.host.clone(),
                w.pid.to_string(),
                w.queues.join(","),
                w.concurrency.to_string(),
                w.running.len().to_string(),
                rfc3339(w.started_at),
                format!("{} ago", output::duration(ago)),
            ]
        })
        .collect();
    output::table(
        &["id", "host", "pid", "queues", "concurrency", "running", "started", "last_heartbeat"],
        &rows,
        &[false, false, true, false, true, true, false, false],
    )
}

/// An `Unsupported` error of a driver without the operations surface, said in the command
/// line's terms.
fn unsupported(error: Error, what: &str, ctx: &Ctx<'_>) -> anyhow::Error {
    match error {
        Error::Unsupported { .. } => anyhow::Error::new(error).context(format!(
            "the {} driver cannot {what} yet; upgrade orcs, or use a driver that can",
            ctx.config.driver
        )),
        other => other.into(),
    }
}

// ---- queue:prune ----

pub(crate) async fn prune(ctx: &Ctx<'_>, args: PruneArgs) -> Result<()> {
    if let Some(name) = &args.queue {
        validate_queue_name(name).context("--queue")?;
    }
    let config = &ctx.config;
    let older_than = args.older_than.or(config.failed_retention);
    let keep = args.keep.or(config.failed_keep);
    if older_than.is_none() && keep.is_none() {
        return Err(usage(
            "nothing to prune by: pass --older-than (e.g. 7d) and/or --keep N, or set \
             failed_retention / failed_keep in config/queue.toml (QUEUE_FAILED_RETENTION, \
             QUEUE_FAILED_KEEP)",
        ));
    }
    let queue = ctx.queue().await?;
    let mut rule = Prune::new();
    rule.queue.clone_from(&args.queue);
    rule.failed_before = older_than.map(|age| queue.now().saturating_sub(orcs_core::millis(age)));
    rule.keep = keep;
    let pruned = queue
        .driver()
        .prune_failed(&rule)
        .await
        .map_err(|e| unsupported(e, "prune failed jobs", ctx))?;
    if args.json {
        say!("{}", json!({ "pruned": pruned }));
        return Ok(());
    }
    let mut why = Vec::new();
    if let Some(before) = rule.failed_before {
        why.push(format!("failed before {}", rfc3339(before)));
    }
    if let Some(keep) = keep {
        why.push(format!("beyond the newest {keep}"));
    }
    let of = args.queue.as_deref().map(|q| format!(" of queue {q}")).unwrap_or_default();
    let s = if pruned == 1 { "" } else { "s" };
    say!("pruned {pruned} failed job{s}{of} ({})", why.join(", or "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use orcs_core::{Admin as _, ClaimRequest, Driver as _, NewJob, Settle};

    #[test]
    fn flags_say_what_they_accept() {
        assert_eq!(parse_state("Running"), Ok(JobState::Reserved));
        assert!(parse_state("done").unwrap_err().contains("pending, delayed, reserved or failed"));
        assert_eq!(parse_page("1000"), Ok(1000));
        assert!(parse_page("1001").unwrap_err().contains("from 1 to 1000"));
        assert!(parse_cursor("abc").unwrap_err().contains("next_cursor"));
        assert!(parse_older_than("3x").unwrap_err().contains("unknown unit"));
        assert_eq!(next_cursor(100, 50, 50), Some(150));
        assert_eq!(next_cursor(100, 49, 50), None);
    }

    /// `queue:show` of a failed job shows its error history and its times, on the memory driver
    /// (the reference implementation of `JobInfo::errors`).
    #[tokio::test]
    async fn show_has_the_history_of_a_failed_job() {
        let driver = orcs_memory::MemoryDriver::new();
        let mut job = NewJob::new("01JOB", "SendEmailJob", "mail", r#"{"to":"a@b.c"}"#, 1_000);
        job.max_retries = 1;
        driver.push(vec![job]).await.expect("push");
        let queues = vec!["mail".to_owned()];
        for (attempt, now) in [(1, 2_000), (2, 3_000)] {
            let claim = driver.claim(&ClaimRequest::new(&queues, 1, now)).await.expect("claim");
            let lease = claim.jobs[0].lease.clone();
            let settle = if attempt == 1 {
                Settle::retry(lease, now, "smtp timeout")
            } else {
                Settle::fail(lease, "mailbox full\nsecond line")
            };
            driver.settle_one(settle, now).await.expect("settle");
        }
        let info = driver.get("01JOB", 4_000).await.expect("get").expect("a failed job");
        let text = show_text(&info, None);
        let field = |key: &str| {
            let line = text.lines().find(|l| l.starts_with(&format!("{key} "))).expect(key);
            line[key.len()..].trim().to_owned()
        };
        assert_eq!(field("state"), "failed", "{text}");
        assert_eq!(field("attempts"), "2 of 2", "{text}");
        assert_eq!(field("failed"), "1970-01-01T00:00:03.000Z", "{text}");
        assert!(text.starts_with("id          01JOB\n"), "keys are aligned: {text}");
        assert!(text.contains("payload\n  {\n    \"to\": \"a@b.c\"\n  }\n"), "{text}");
        assert!(
            text.ends_with("errors, oldest first\n  1. smtp timeout\n  2. mailbox full...\n"),
            "{text}"
        );
        let value = job_json(&info, None);
        assert_eq!(value["errors"], json!(["smtp timeout", "mailbox full\nsecond line"]));
        assert_eq!(
            (value["state"].clone(), value["payload"]["to"].clone()),
            (json!("failed"), json!("a@b.c"))
        );
        assert_eq!(value["failed_at"], "1970-01-01T00:00:03.000Z");
    }

    #[test]
    fn workers_read_as_a_table() {
        let mut w = WorkerInfo::new("01W", "box", 42, 0);
        w.queues = vec!["high".into(), "default".into()];
        w.concurrency = 8;
        w.running = vec!["a".into(), "b".into()];
        w.last_heartbeat = 1_000;
        let text = workers_table(&[w.clone()], 3_500);
        assert!(text.starts_with("id   host  pid  queues        concurrency  running"), "{text}");
        assert!(text.contains("01W  box    42  high,default            8        2"), "{text}");
        assert!(text.trim_end().ends_with("2.50s ago"), "{text}");
        assert_eq!(worker_json(&w)["running"], json!(["a", "b"]));
    }
}
