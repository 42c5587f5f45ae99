//! `schedule:list`, `schedule:run` and `schedule:forget`, and the schedules `queue:work`
//! declares: the config file's `[[schedule]]` tables, checked against this binary's job types.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use clap::Args;
use orcs_core::{Error, Millis, Schedule, ScheduleRecord, Scheduler};
use serde_json::{Value, json};

use crate::commands::{Ctx, unsupported};
use crate::config::DriverKind;
use crate::output::{self, rfc3339, say};
use crate::usage;

/// A next run this far in the past means no scheduler fires the schedule (a running one fires
/// within a few milliseconds of the slot, and re-reads at least every second).
const OVERDUE_MS: Millis = 2_000;

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Print a JSON array, one object per schedule
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The schedule's name
    pub(crate) name: String,
    /// Print {schedule, id, job, queue} as JSON
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ForgetArgs {
    /// The schedule's name
    pub(crate) name: String,
}

/// The schedules of the config file with this binary's job types: each job must be registered
/// and its data must fit the type; the type's queue, priority, retries and timeout apply where
/// the file sets none.
///
/// # Errors
/// A configuration error (exit 2) naming the file, the schedule and what to fix.
pub(crate) fn declared(ctx: &Ctx<'_>) -> Result<Vec<Schedule>> {
    let registry = ctx.app.registry();
    let mut schedules = Vec::with_capacity(ctx.config.schedules.len());
    for config in &ctx.config.schedules {
        let Some(defaults) = registry.defaults(&config.job) else {
            return Err(Error::config(
                &config.origin,
                format!(
                    "job {:?} is not registered in this binary; set job to one of {} (names are \
                     case-sensitive)",
                    config.job,
                    registry.names().join(", ")
                ),
            )
            .into());
        };
        if let Some(check) = ctx.app.validators.get(config.job.as_str()) {
            check(&config.data.to_string()).map_err(|e| {
                let fields = ctx
                    .app
                    .job_fields(&config.job)
                    .map(|f| format!(" (its fields: {})", f.join(", ")))
                    .unwrap_or_default();
                Error::config(
                    &config.origin,
                    format!("data does not fit job {}: {e}; fix data{fields}", config.job),
                )
            })?;
        }
        schedules.push(config.schedule(Some(defaults))?);
    }
    Ok(schedules)
}

/// One line of `schedule:list`: a stored schedule, a declared one, or both.
struct Row<'a> {
    name: &'a str,
    stored: Option<&'a ScheduleRecord>,
    declared: bool,
    /// The stored definition (else the declared one), or why it cannot be read.
    schedule: std::result::Result<Schedule, String>,
}

impl Row<'_> {
    /// The next slot: after the stored cursor, or after now for a schedule not registered yet.
    fn next_run(&self, now: Millis) -> Option<Millis> {
        let schedule = self.schedule.as_ref().ok()?;
        schedule.next_after(self.stored.map_or(now, |r| r.cursor))
    }

    fn json(&self, now: Millis) -> Value {
        let next = self.next_run(now);
        let mut row = json!({
            "name": self.name,
            "registered": self.stored.is_some(),
            "declared": self.declared,
            "next_run": next.map(rfc3339),
            "overdue": next.is_some_and(|n| n + OVERDUE_MS < now),
            "last_run": self.stored.and_then(|r| r.last_run).map(rfc3339),
            "cursor": self.stored.map(|r| rfc3339(r.cursor)),
            "updated_at": self.stored.map(|r| rfc3339(r.updated_at)),
        });
        match &self.schedule {
            Ok(s) => {
                row["cron"] = json!(s.cron());
                row["timezone"] = json!(s.timezone_name());
                row["job"] = json!(s.job_name());
                row["data"] = s.data().clone();
                row["queue"] = json!(self.stored.map(|r| r.queue.as_str()).or(s.queue_name()));
                row["missed"] = json!(s.missed_policy().to_string());
                row["missed_after_secs"] = json!(s.on_time_window().as_secs_f64());
            }
            Err(why) => row["error"] = json!(why),
        }
        row
    }

    fn cells(&self, now: Millis) -> Vec<String> {
        let Ok(s) = &self.schedule else {
            let mut cells = vec![self.name.to_owned(), "(unreadable)".to_owned()];
            cells.resize(8, "-".to_owned());
            return cells;
        };
        let queue = self.stored.map(|r| r.queue.as_str()).or(s.queue_name()).unwrap_or("-");
        let next = match self.next_run(now) {
            Some(next) if next + OVERDUE_MS < now => format!("{} (overdue)", rfc3339(next)),
            Some(next) => rfc3339(next),
            None => "never".to_owned(),
        };
        let last = self.stored.and_then(|r| r.last_run).map_or_else(|| "-".to_owned(), rfc3339);
        vec![
            self.name.to_owned(),
            s.cron().to_owned(),
            s.timezone_name().to_owned(),
            s.job_name().to_owned(),
            queue.to_owned(),
            s.missed_policy().to_string(),
            next,
            last,
        ]
    }
}

pub(crate) async fn list(ctx: &Ctx<'_>, args: ListArgs) -> Result<()> {
    let declared = declared(ctx)?;
    let queue = ctx.queue().await?;
    let stored = queue.schedules().await.map_err(|e| unsupported(e, "keep schedules"))?;
    let now = queue.now();
    let mut rows: BTreeMap<&str, Row<'_>> = BTreeMap::new();
    for record in &stored {
        let schedule = Schedule::from_record(record).map_err(|e| e.to_string());
        let row = Row { name: &record.name, stored: Some(record), declared: false, schedule };
        rows.insert(&record.name, row);
    }
    for schedule in &declared {
        rows.entry(schedule.name()).and_modify(|row| row.declared = true).or_insert_with(|| Row {
            name: schedule.name(),
            stored: None,
            declared: true,
            schedule: Ok(schedule.clone()),
        });
    }
    if args.json {
        let all: Vec<Value> = rows.values().map(|row| row.json(now)).collect();
        say!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    let file = config_file(ctx);
    if rows.is_empty() {
        say!(
            "no schedules: none is declared in {file} ([[schedule]] tables) or registered on the \
             {} driver",
            ctx.config.driver
        );
        return Ok(());
    }
    let cells: Vec<Vec<String>> = rows.values().map(|row| row.cells(now)).collect();
    output::write_stdout(&output::table(
        &["name", "cron", "timezone", "job", "queue", "missed", "next_run", "last_run"],
        &cells,
        &[false; 8],
    ));
    for row in rows.values() {
        let name = row.name;
        if let Err(why) = &row.schedule {
            say!("{name}: {why}");
        } else if row.stored.is_none() {
            say!(
                "{name}: declared in {file}, not registered yet: the first `queue:work` started \
                 with this file registers it, and its slots start then"
            );
        } else if !row.declared {
            say!(
                "{name}: registered, not declared in {file}: only a process that declares it \
                 fires it; remove it with `schedule:forget {name}`"
            );
        } else if row.next_run(now).is_some_and(|n| n + OVERDUE_MS < now) {
            say!("{name}: overdue: no scheduler fired it; is a `queue:work` running?");
        }
    }
    Ok(())
}

/// The config file as messages name it.
fn config_file(ctx: &Ctx<'_>) -> String {
    ctx.config.file.as_deref().map_or_else(
        || crate::config::DEFAULT_CONFIG_FILE.to_owned(),
        |path| path.display().to_string(),
    )
}

pub(crate) async fn run(ctx: &Ctx<'_>, args: RunArgs) -> Result<()> {
    let declared = declared(ctx)?;
    if ctx.config.driver == DriverKind::Memory {
        return Err(usage(
            "schedule:run cannot use the memory driver: the job would vanish when this command \
             exits, unseen by any worker; set QUEUE_DRIVER (or --driver) to redis or database",
        ));
    }
    let queue = ctx.queue().await?;
    let name = args.name.as_str();
    let stored = queue.schedules().await.map_err(|e| unsupported(e, "keep schedules"))?;
    let mut registered_now = false;
    let record = match stored.iter().find(|r| r.name == name) {
        Some(record) => record.clone(),
        None => {
            let Some(schedule) = declared.iter().find(|s| s.name() == name) else {
                let mut known: Vec<&str> = stored.iter().map(|r| r.name.as_str()).collect();
                known.extend(declared.iter().map(Schedule::name));
                known.sort_unstable();
                known.dedup();
                let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
                anyhow::bail!(
                    "no schedule named {name:?} is registered or declared in {}; the known ones \
                     are: {known}; see `schedule:list`",
                    config_file(ctx)
                );
            };
            // What a worker started with this file would do first; its cursor starts now.
            let records = Scheduler::new(queue.clone(), [schedule.clone()]).register().await?;
            registered_now = true;
            records.into_iter().next().context("the driver answered no registered schedule")?
        }
    };
    let schedule = Schedule::from_record(&record)?;
    let id = queue.run_schedule(name).await?;
    if args.json {
        say!(
            "{}",
            json!({
                "schedule": name,
                "id": id,
                "job": schedule.job_name(),
                "queue": record.queue,
                "registered_now": registered_now,
            })
        );
        return Ok(());
    }
    if registered_now {
        say!("registered schedule {name} from {}", config_file(ctx));
    }
    let next = schedule.next_after(record.cursor.max(queue.now()));
    say!(
        "dispatched {} {id} to queue {} (schedule {name}, run now; its slots are unchanged, the \
         next at {})",
        schedule.job_name(),
        record.queue,
        next.map_or_else(|| "never".to_owned(), rfc3339)
    );
    Ok(())
}

pub(crate) async fn forget(ctx: &Ctx<'_>, args: ForgetArgs) -> Result<()> {
    let queue = ctx.queue().await?;
    let name = &args.name;
    if queue.forget_schedule(name).await.map_err(|e| unsupported(e, "keep schedules"))? {
        say!(
            "forgot schedule {name}: its definition and cursor are removed; a worker that still \
             declares it registers it again, its slots starting then"
        );
        Ok(())
    } else {
        anyhow::bail!("no schedule named {name:?} is registered; see `schedule:list`")
    }
}
