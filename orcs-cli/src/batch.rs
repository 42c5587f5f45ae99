//! Batches on the command line: `queue:dispatch JOB --count N --batch [--then JOB] ...` stores N
//! children and the callbacks in one atomic step; `queue:batch ID` shows the counters and the
//! callbacks; `queue:cancel-batch ID` cancels it (after Laravel's `queue:retry-batch`: a verb
//! of its own, so that the command that shows a batch never changes one).

use anyhow::{Context as _, Result};
use clap::Args;
use orcs_core::{
    BatchCallback, BatchInfo, CallbackState, DispatchOptions, Error, JobDefaults, NewBatch, NewJob,
    PushOutcome, Queue,
};
use serde_json::{Value, json};

use crate::cli::DispatchArgs;
use crate::commands::{Ctx, in_cli_terms, read_data, unsupported};
use crate::output::{self, rfc3339, say};
use crate::usage;

/// The most children of one batch from the command line: a batch is stored in one atomic step
/// (one script, one transaction), which should stay well under a second.
pub(crate) const MAX_BATCH: u64 = 100_000;

/// The batch options of `queue:dispatch`.
#[derive(Debug, Args)]
pub(crate) struct BatchFlags {
    /// Dispatch the --count copies as one batch, stored in one atomic step, and print its id
    /// (see `queue:batch ID`); --queue, --max-retries and --retry-delay apply to its callbacks
    /// too
    #[arg(long)]
    pub(crate) batch: bool,
    /// With --batch: the job dispatched once every child completed
    #[arg(long, value_name = "JOB", requires = "batch")]
    pub(crate) then: Option<String>,
    /// The --then job's data: a JSON object, or @FILE [default: {}]
    #[arg(long, value_name = "JSON", requires = "then")]
    pub(crate) then_data: Option<String>,
    /// With --batch: the job dispatched when the first child fails for good
    #[arg(long, value_name = "JOB", requires = "batch")]
    pub(crate) catch: Option<String>,
    /// The --catch job's data: a JSON object, or @FILE [default: {}]
    #[arg(long, value_name = "JSON", requires = "catch")]
    pub(crate) catch_data: Option<String>,
    /// With --batch: the job dispatched once every child ended, however
    #[arg(long, value_name = "JOB", requires = "batch")]
    pub(crate) finally: Option<String>,
    /// The --finally job's data: a JSON object, or @FILE [default: {}]
    #[arg(long, value_name = "JSON", requires = "finally")]
    pub(crate) finally_data: Option<String>,
    /// With --batch: a child failing for good does not cancel the others (then is still
    /// skipped)
    #[arg(long, requires = "batch")]
    pub(crate) allow_failures: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// The batch id (printed by `queue:dispatch --batch`)
    pub(crate) id: String,
    /// Print the batch as one JSON object
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CancelArgs {
    /// The batch id
    pub(crate) id: String,
    /// Print the batch after the cancel as one JSON object
    #[arg(long)]
    pub(crate) json: bool,
}

/// A callback named on the command line, checked before anything is dispatched.
struct Callback {
    role: &'static str,
    job: String,
    payload: String,
    defaults: JobDefaults,
}

/// Checks `--then`/`--catch`/`--finally` and their data as `queue:dispatch` checks a job.
fn callback(
    ctx: &Ctx<'_>,
    role: &'static str,
    job: Option<&String>,
    data: Option<&String>,
) -> Result<Option<Callback>> {
    let Some(job) = job else { return Ok(None) };
    let registry = ctx.app.registry();
    let Some(defaults) = registry.defaults(job) else {
        return Err(usage(format!(
            "--{role}: unknown job {job:?}: this binary registers {}; use one of those names (they \
             are case-sensitive)",
            registry.names().join(", ")
        )));
    };
    let text = read_data(data.map_or("{}", String::as_str))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| {
        usage(format!("--{role}-data is not valid JSON ({e}); pass a JSON object, e.g. '{{}}'"))
    })?;
    if !value.is_object() {
        return Err(usage(format!(
            "--{role}-data must be a JSON object (the job's fields), not {value}"
        )));
    }
    let payload = serde_json::to_string(&value)?;
    if let Some(check) = ctx.app.validators.get(job.as_str()) {
        check(&payload).map_err(|e| {
            usage(format!("--{role}-data does not fit job {job}: {e}; fix the data"))
        })?;
    }
    Ok(Some(Callback { role, job: job.clone(), payload, defaults }))
}

/// `queue:dispatch JOB --count N --batch ...`: the children (`payload` with `options`) and the
/// callbacks in one atomic step.
pub(crate) async fn dispatch(
    ctx: &Ctx<'_>,
    args: &DispatchArgs,
    payload: String,
    defaults: JobDefaults,
    options: &DispatchOptions,
) -> Result<()> {
    if args.count > MAX_BATCH {
        return Err(usage(format!(
            "--count {} is over the {MAX_BATCH} children of one batch: a batch is stored in one \
             atomic step; dispatch several batches",
            args.count
        )));
    }
    let flags = &args.batch;
    let callbacks = [
        callback(ctx, "then", flags.then.as_ref(), flags.then_data.as_ref())?,
        callback(ctx, "catch", flags.catch.as_ref(), flags.catch_data.as_ref())?,
        callback(ctx, "finally", flags.finally.as_ref(), flags.finally_data.as_ref())?,
    ];
    // The callbacks share the children's queue (one atomic step on a Redis Cluster) and retries.
    let mut callback_options = DispatchOptions::new();
    if let Some(q) = &args.queue {
        callback_options = callback_options.queue(q.clone());
    }
    if let Some(n) = args.max_retries {
        callback_options = callback_options.max_retries(n);
    }
    if let Some(d) = args.retry_delay {
        callback_options = callback_options.retry_delay(d);
    }

    let queue = ctx.queue().await?;
    let id = orcs_core::new_job_id();
    let mut children = Vec::with_capacity(usize::try_from(args.count).unwrap_or(0));
    for _ in 0..args.count {
        let mut record = queue
            .untyped_record(&args.job, payload.clone(), defaults, options)
            .map_err(|e| in_cli_terms(e, &args.job, payload.len(), &ctx.config))?;
        record.batch = Some(id.clone());
        children.push(record);
    }
    let target = children.first().map(|c| c.queue.clone()).unwrap_or_default();
    let mut batch = NewBatch::new(id.clone(), queue.now());
    batch.allow_failures = flags.allow_failures;
    let mut named = Vec::new();
    for callback in callbacks.into_iter().flatten() {
        let record = queue
            .untyped_record(&callback.job, callback.payload, callback.defaults, &callback_options)
            .map_err(|e| in_cli_terms(e, &callback.job, 0, &ctx.config))?;
        named.push((callback.role, callback.job, record.id.clone()));
        let slot = match callback.role {
            "then" => &mut batch.then,
            "catch" => &mut batch.catch,
            _ => &mut batch.finally,
        };
        *slot = Some(record);
    }
    let outcomes = push(&queue, batch, children).await?;
    let stored = outcomes.iter().filter(|o| matches!(o, PushOutcome::Stored)).count();
    let duplicates = outcomes.len() - stored;
    if args.json {
        let mut line = json!({
            "batch": id,
            "job": args.job,
            "queue": target,
            "total": stored,
            "duplicates": duplicates,
        });
        for (role, _, callback_id) in &named {
            line[*role] = json!(callback_id);
        }
        say!("{line}");
        return Ok(());
    }
    let mut line = format!(
        "dispatched batch {id}: {stored} {} job{} to queue {target}",
        args.job,
        if stored == 1 { "" } else { "s" }
    );
    for (role, job, callback_id) in &named {
        line.push_str(&format!("; {role} {job} {callback_id}"));
    }
    say!("{line}");
    if duplicates > 0 {
        say!(
            "{duplicates} more were not stored: the unique key {:?} was already held; they are \
             not part of the batch",
            args.unique.as_deref().unwrap_or_default()
        );
    }
    say!("see its progress with `queue:batch {id}`");
    Ok(())
}

async fn push(
    queue: &Queue,
    batch: NewBatch,
    children: Vec<NewJob>,
) -> orcs_core::Result<Vec<PushOutcome>> {
    for child in &children {
        orcs_core::validate_queue_name(&child.queue)?;
    }
    let count = children.len();
    let outcomes = queue.driver().push_batch(batch, children).await?;
    if outcomes.len() != count {
        return Err(Error::invalid(
            "push outcome",
            format!(
                "the {} driver answered {} outcomes for {count} children; this is a driver bug",
                queue.driver().name(),
                outcomes.len()
            ),
        ));
    }
    Ok(outcomes)
}

/// Where a batch is: running, cancelling (cancelled, children still stopping), finished or
/// cancelled.
fn state(info: &BatchInfo) -> &'static str {
    match (info.finished_at.is_some(), info.cancelled_at.is_some()) {
        (false, false) => "running",
        (false, true) => "cancelling",
        (true, false) => "finished",
        (true, true) => "cancelled",
    }
}

fn callback_json(callback: Option<&BatchCallback>) -> Value {
    callback.map_or(
        Value::Null,
        |c| json!({ "id": c.id, "name": c.name, "queue": c.queue, "state": c.state }),
    )
}

/// The batch as `queue:batch --json` prints it: the counters, times in RFC 3339, and each
/// callback with its state (`waiting`, `dispatched`, `skipped`; null when the batch has none).
fn batch_json(info: &BatchInfo) -> Value {
    json!({
        "id": info.id,
        "state": state(info),
        "total": info.total,
        "pending": info.pending,
        "processed": info.processed,
        "failed": info.failed,
        "cancelled": info.cancelled,
        "allow_failures": info.allow_failures,
        "created_at": rfc3339(info.created_at),
        "cancelled_at": info.cancelled_at.map(rfc3339),
        "finished_at": info.finished_at.map(rfc3339),
        "then": callback_json(info.then.as_ref()),
        "catch": callback_json(info.catch.as_ref()),
        "finally": callback_json(info.finally.as_ref()),
    })
}

fn callback_state(state: CallbackState) -> &'static str {
    match state {
        CallbackState::Waiting => "waiting",
        CallbackState::Dispatched => "dispatched",
        CallbackState::Skipped => "skipped",
        _ => "unknown",
    }
}

/// The text of `queue:batch`.
fn batch_text(info: &BatchInfo) -> String {
    let finished = info.total.saturating_sub(info.pending);
    let mut text = format!(
        "batch {}: {} ({finished} of {} children finished)\n",
        info.id,
        state(info),
        info.total
    );
    let row = vec![
        info.total.to_string(),
        info.pending.to_string(),
        info.processed.to_string(),
        info.failed.to_string(),
        info.cancelled.to_string(),
    ];
    text.push_str(&output::table(
        &["total", "pending", "processed", "failed", "cancelled"],
        &[row],
        &[true; 5],
    ));
    text.push_str(&format!("created     {}\n", rfc3339(info.created_at)));
    if let Some(at) = info.cancelled_at {
        text.push_str(&format!("cancelled   {}\n", rfc3339(at)));
    }
    if let Some(at) = info.finished_at {
        text.push_str(&format!("finished    {}\n", rfc3339(at)));
    }
    let failures = if info.allow_failures { "allowed" } else { "the first one cancels the batch" };
    text.push_str(&format!("failures    {failures}\n"));
    for (role, callback) in
        [("then", &info.then), ("catch", &info.catch), ("finally", &info.finally)]
    {
        let line = match callback {
            Some(c) => format!(
                "{role:<11} {} {} on queue {}: {}",
                c.name,
                c.id,
                c.queue,
                callback_state(c.state)
            ),
            None => format!("{role:<11} none"),
        };
        text.push_str(&line);
        text.push('\n');
    }
    text
}

/// The batch `id`, or an error naming it (exit 1).
async fn find(queue: &Queue, id: &str) -> Result<BatchInfo> {
    match queue.batch_info(id).await {
        Ok(Some(info)) => Ok(info),
        Ok(None) => anyhow::bail!(
            "no batch with id {id}; check the id that `queue:dispatch --batch` printed"
        ),
        Err(e) => Err(unsupported(e, "keep batches")).context(format!("cannot read batch {id}")),
    }
}

pub(crate) async fn show(ctx: &Ctx<'_>, args: ShowArgs) -> Result<()> {
    let queue = ctx.queue().await?;
    let info = find(&queue, &args.id).await?;
    if args.json {
        say!("{}", serde_json::to_string_pretty(&batch_json(&info))?);
    } else {
        output::write_stdout(&batch_text(&info));
    }
    Ok(())
}

pub(crate) async fn cancel(ctx: &Ctx<'_>, args: CancelArgs) -> Result<()> {
    let queue = ctx.queue().await?;
    let before = find(&queue, &args.id).await?;
    let after = match queue.cancel_batch(&args.id).await {
        Ok(info) => info,
        Err(Error::NotFound { .. }) => {
            anyhow::bail!("no batch with id {}; it may have been removed meanwhile", args.id)
        }
        Err(e) => {
            return Err(unsupported(e, "cancel batches"))
                .with_context(|| format!("cannot cancel batch {}", args.id));
        }
    };
    if args.json {
        say!("{}", serde_json::to_string_pretty(&batch_json(&after))?);
        return Ok(());
    }
    let id = &args.id;
    if before.finished_at.is_some() || before.cancelled_at.is_some() {
        say!("batch {id} was already {}; nothing changed", state(&before));
        return Ok(());
    }
    let removed = after.cancelled.saturating_sub(before.cancelled);
    let mut line = format!(
        "cancelled batch {id}: {removed} waiting child{} removed",
        if removed == 1 { "" } else { "ren" }
    );
    if after.pending > 0 {
        line.push_str(&format!(
            ", {} running one{} asked to stop (within a second)",
            after.pending,
            if after.pending == 1 { "" } else { "s" }
        ));
    }
    say!("{line}");
    if let Some(then) = &after.then {
        say!("then {} {}: {}", then.name, then.id, callback_state(then.state));
    }
    if let Some(finally) = &after.finally {
        let when = if after.finished_at.is_some() { "" } else { " (once the last child ends)" };
        say!("finally {} {}: {}{when}", finally.name, finally.id, callback_state(finally.state));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_text_follow_the_counters() {
        let mut info = BatchInfo::new("b1");
        info.total = 3;
        info.pending = 1;
        info.processed = 2;
        info.created_at = 0;
        assert_eq!(state(&info), "running");
        let text = batch_text(&info);
        assert!(text.starts_with("batch b1: running (2 of 3 children finished)"), "{text}");
        assert!(text.contains("then        none"), "{text}");
        info.cancelled_at = Some(5);
        assert_eq!(state(&info), "cancelling");
        info.finished_at = Some(6);
        assert_eq!(state(&info), "cancelled");
        info.cancelled_at = None;
        assert_eq!(state(&info), "finished");
        let value = batch_json(&info);
        assert_eq!(value["finished_at"], "1970-01-01T00:00:00.006Z");
        assert_eq!(value["then"], Value::Null);
    }
}
