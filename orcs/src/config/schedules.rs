//! The `[[schedule]]` tables of the config file: schedules every worker declares.
//!
//! ```toml
//! [[schedule]]
//! name = "nightly-report"         # unique per backend; queue-name rules
//! cron = "0 30 2 * * *"           # with seconds: sec min hour day-of-month month day-of-week [year]
//! job = "GenerateReportJob"       # a registered job type
//! data = { report = "daily" }     # its payload: a table, or a JSON object as a string
//! queue = "reports"               # default: the job type's queue, else the default queue
//! timezone = "Europe/Berlin"      # an IANA name; default UTC
//! missed = "once"                 # skip (default), once, all (at most 100) or all:N
//! missed_after = 60               # seconds a slot may be late and still be on time
//! # priority, max_retries, retry_delay (seconds) and timeout (seconds) override the job type's
//! ```
//!
//! The file is checked when it is read (name, cron expression, time zone, policy, queue,
//! duplicate names); whether the job is registered is checked by whoever runs the schedules,
//! since only it knows its job types ([`ScheduleConfig::schedule`] takes the type's defaults).

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;

use orcs_core::{Error, JobDefaults, Missed, Result, Schedule, validate_queue_name};

/// One `[[schedule]]` of the config file, checked (see the module's documentation).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ScheduleConfig {
    /// The schedule's name.
    pub name: String,
    /// The cron expression, with seconds.
    pub cron: String,
    /// The registered name of the job it dispatches.
    pub job: String,
    /// The job's payload (a JSON object).
    pub data: serde_json::Value,
    /// The queue, instead of the job type's.
    pub queue: Option<String>,
    /// The IANA time zone the expression is read in (default UTC).
    pub timezone: Option<String>,
    /// What happens to slots missed while no scheduler ran.
    pub missed: Missed,
    /// How late a slot may be and still be on time (default 60 s).
    pub missed_after: Option<Duration>,
    /// The jobs' priority, instead of the job type's.
    pub priority: Option<i32>,
    /// The jobs' retries, instead of the job type's.
    pub max_retries: Option<u32>,
    /// The jobs' backoff base, instead of the job type's.
    pub retry_delay: Option<Duration>,
    /// The jobs' time limit per attempt, instead of the job type's.
    pub timeout: Option<Duration>,
    /// Where it was declared, as errors name it: `config/queue.toml: [[schedule]] "nightly"`.
    pub origin: String,
}

impl ScheduleConfig {
    /// The schedule, with the job type's queue, priority, retries and timeout (`defaults`, from
    /// [`orcs_core::Registry::defaults`]) where the file sets none; without `defaults`, those of
    /// [`Schedule::raw`].
    ///
    /// # Errors
    /// [`Error::Config`] naming the file and the schedule, with what to fix.
    pub fn schedule(&self, defaults: Option<JobDefaults>) -> Result<Schedule> {
        let rekey = |e: Error| self.error(e);
        let mut schedule =
            Schedule::raw(&self.name, &self.cron, &self.job, self.data.clone()).map_err(rekey)?;
        if let Some(tz) = &self.timezone {
            schedule = schedule.timezone(tz).map_err(rekey)?;
        }
        let queue = self
            .queue
            .clone()
            .or_else(|| defaults.and_then(|d| (!d.queue.is_empty()).then(|| d.queue.to_owned())));
        if let Some(queue) = queue {
            schedule = schedule.queue(queue);
        }
        if let Some(priority) = self.priority.or(defaults.map(|d| d.priority)) {
            schedule = schedule.priority(priority);
        }
        if let Some(retries) = self.max_retries.or(defaults.map(|d| d.max_retries)) {
            schedule = schedule.max_retries(retries);
        }
        if let Some(delay) = self.retry_delay.or(defaults.map(|d| d.retry_delay)) {
            schedule = schedule.retry_delay(delay);
        }
        if let Some(timeout) = self.timeout.or(defaults.and_then(|d| d.timeout)) {
            schedule = schedule.timeout(timeout);
        }
        if let Some(late) = self.missed_after {
            schedule = schedule.missed_after(late);
        }
        Ok(schedule.missed(self.missed))
    }

    /// `error` keyed by this schedule's origin, without the `schedule "name": ` that the core's
    /// messages start with (the key names it already).
    fn error(&self, error: Error) -> Error {
        let message = match error {
            Error::Invalid { message, .. } | Error::Config { message, .. } => message,
            other => other.to_string(),
        };
        let prefix = format!("schedule {:?}: ", self.name);
        let message = message.strip_prefix(&prefix).map_or(message.clone(), str::to_owned);
        Error::config(&self.origin, message)
    }
}

/// A `[[schedule]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSchedule {
    name: String,
    cron: String,
    job: String,
    #[serde(default)]
    data: Option<toml::Value>,
    queue: Option<String>,
    timezone: Option<String>,
    missed: Option<String>,
    missed_after: Option<f64>,
    priority: Option<i32>,
    max_retries: Option<u32>,
    retry_delay: Option<f64>,
    timeout: Option<f64>,
}

/// Checks the file's schedules; `shown` is the file as errors name it.
pub(super) fn from_file(tables: Vec<FileSchedule>, shown: &str) -> Result<Vec<ScheduleConfig>> {
    let mut names = HashSet::new();
    let mut schedules = Vec::with_capacity(tables.len());
    for table in tables {
        let origin = format!("{shown}: [[schedule]] {:?}", table.name);
        let fail = |message: String| Error::config(&origin, message);
        if !names.insert(table.name.clone()) {
            return Err(fail(
                "a schedule of this name is declared twice; give each [[schedule]] its own name"
                    .to_owned(),
            ));
        }
        let data = match table.data {
            None => serde_json::Value::Object(serde_json::Map::new()),
            Some(toml::Value::String(text)) => serde_json::from_str(&text).map_err(|e| {
                fail(format!(
                    "data is not JSON ({e}); write a table (data = {{ report = \"daily\" }}) or a \
                     JSON object in a string (data = '{{\"report\":\"daily\"}}')"
                ))
            })?,
            Some(value) => serde_json::to_value(value)
                .map_err(|e| fail(format!("data cannot be read as JSON ({e})")))?,
        };
        if !data.is_object() {
            return Err(fail(format!(
                "data must be a table of the job's fields, not {data}; e.g. data = {{ report = \
                 \"daily\" }}"
            )));
        }
        if let Some(queue) = &table.queue {
            validate_queue_name(queue).map_err(|e| fail(format!("queue: {e}")))?;
        }
        let missed = match &table.missed {
            Some(text) => text.parse::<Missed>().map_err(|e| match e {
                Error::Invalid { message, .. } => fail(format!("missed = {message}")),
                other => fail(other.to_string()),
            })?,
            None => Missed::Skip,
        };
        let seconds = |key: &str, value: Option<f64>, above_zero: bool| -> Result<_> {
            let Some(value) = value else { return Ok(None) };
            let ok = value.is_finite() && (value > 0.0 || (!above_zero && value == 0.0));
            match Duration::try_from_secs_f64(value) {
                Ok(d) if ok => Ok(Some(d)),
                _ => Err(fail(format!(
                    "{key} = {value} is not a number of seconds{}; e.g. {key} = 60",
                    if above_zero { " above 0" } else { " of 0 or more" }
                ))),
            }
        };
        let config = ScheduleConfig {
            missed_after: seconds("missed_after", table.missed_after, false)?,
            retry_delay: seconds("retry_delay", table.retry_delay, false)?,
            timeout: seconds("timeout", table.timeout, true)?,
            name: table.name,
            cron: table.cron,
            job: table.job,
            data,
            queue: table.queue,
            timezone: table.timezone,
            missed,
            priority: table.priority,
            max_retries: table.max_retries,
            origin,
        };
        // The name, the cron expression and the time zone, checked now rather than when a
        // worker starts.
        config.schedule(None)?;
        schedules.push(config);
    }
    Ok(schedules)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::Config;

    fn load(text: &str) -> crate::Result<Config> {
        Config::from_sources(Some((Path::new("config/queue.toml"), text)), |_| None)
    }

    fn error(text: &str) -> String {
        load(text).expect_err("a bad schedule").to_string()
    }

    #[test]
    fn schedules_are_read_with_their_defaults_and_overrides() {
        let config = load(
            r#"
            [[schedule]]
            name = "nightly"
            cron = "0 30 2 * * *"
            job = "GenerateReportJob"
            data = { report = "daily", n = 3 }
            timezone = "Europe/Berlin"
            missed = "all:5"

            [[schedule]]
            name = "ticker"
            cron = "* * * * * *"
            job = "SendEmailJob"
            data = '{"to":"a@example.com"}'
            queue = "ticks"
            priority = 7
            "#,
        )
        .expect("valid schedules");
        let [nightly, ticker] = config.schedules.as_slice() else { panic!("two schedules") };
        assert_eq!(nightly.data, serde_json::json!({"report": "daily", "n": 3}));
        assert_eq!(nightly.missed, orcs_core::Missed::All { max: 5 });
        let defaults = orcs_core::JobDefaults {
            queue: "reports",
            priority: 1,
            max_retries: 2,
            retry_delay: std::time::Duration::from_secs(3),
            timeout: None,
        };
        let schedule = nightly.schedule(Some(defaults)).expect("a schedule");
        assert_eq!(schedule.queue_name(), Some("reports"), "the job type's queue");
        assert_eq!(schedule.timezone_name(), "Europe/Berlin");
        let schedule = ticker.schedule(Some(defaults)).expect("a schedule");
        assert_eq!(schedule.queue_name(), Some("ticks"), "the file's queue wins");
        assert_eq!(ticker.priority, Some(7));
        assert_eq!(ticker.data["to"], "a@example.com");
        assert!(Config::default().schedules.is_empty());
    }

    #[test]
    fn bad_schedules_name_the_schedule_and_the_fix() {
        let base = "[[schedule]]\nname = \"s1\"\njob = \"J\"\n";
        let cases = [
            ("cron = \"0 0 * * *\"", "put \"0 \" in front of a classic crontab line"),
            ("cron = \"every day\"", "is not a cron expression"),
            ("cron = \"* * * * * *\"\ntimezone = \"Mars/Olympus\"", "unknown time zone"),
            ("cron = \"* * * * * *\"\nmissed = \"sometimes\"", "use skip, once, all or all:N"),
            ("cron = \"* * * * * *\"\ndata = \"[1]\"", "data must be a table"),
            ("cron = \"* * * * * *\"\ndata = \"{oops\"", "data is not JSON"),
            ("cron = \"* * * * * *\"\nqueue = \"a b\"", "queue: invalid queue name"),
            ("cron = \"* * * * * *\"\ntimeout = 0", "timeout = 0 is not a number of seconds"),
            ("cron = \"* * * * * *\"\ncolour = \"red\"", "unknown field `colour`"),
        ];
        for (extra, expected) in cases {
            let text = error(&format!("{base}{extra}"));
            assert!(text.contains(expected), "{extra:?}: {text}");
            if !expected.contains("unknown field") {
                assert!(
                    text.contains("config/queue.toml: [[schedule]] \"s1\""),
                    "{extra:?}: names the schedule: {text}"
                );
                assert!(!text.contains("schedule \"s1\": schedule"), "said once: {text}");
            }
        }
        let twice = format!("{base}cron = \"* * * * * *\"\n{base}cron = \"0 * * * * *\"");
        assert!(error(&twice).contains("declared twice"), "{}", error(&twice));
        let bad_name = "[[schedule]]\nname = \"a b\"\njob = \"J\"\ncron = \"* * * * * *\"";
        assert!(error(bad_name).contains("letters, digits"), "{}", error(bad_name));
    }
}
