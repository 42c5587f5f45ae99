//! Schedules: jobs dispatched on a cron expression (with seconds) in a time zone, each slot
//! exactly once across any number of schedulers.
//!
//! A [`Schedule`] is a definition: name, cron expression, time zone, the job to dispatch and the
//! policy for slots missed while no scheduler ran. It is stored as JSON in the backend's
//! [`ScheduleRecord`] next to a cursor; the [`Scheduler`] moves that cursor with a compare-and-set
//! that pushes the slots' jobs in the same atomic step ([`crate::Driver::fire_schedule`]), so a
//! slot fires once however many schedulers race for it, and a scheduler that dies mid-tick
//! leaves either the whole fire or nothing.

mod plan;
mod scheduler;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use serde::{Deserialize, Serialize};

use crate::clock::{Millis, millis};
use crate::error::{Error, Result};
use crate::job::Job;
use crate::record::{NewJob, ScheduleRecord, Unique, UniqueUntil};

pub use plan::slot_job_id;
pub use scheduler::{Scheduler, Tick};

/// The version of the definition JSON this build writes and reads.
const DEFINITION_VERSION: u32 = 1;

/// The default of [`Missed::All`]'s `max`: at most this many missed slots are dispatched after a
/// pause.
pub const DEFAULT_MISSED_MAX: u32 = 100;

/// The default of [`Schedule::missed_after`]: a slot dispatched up to this late still counts as
/// on time.
pub const DEFAULT_MISSED_AFTER: Duration = Duration::from_secs(60);

/// What happens to slots that passed while no scheduler ran (a deploy, an outage): slots later
/// than [`Schedule::missed_after`] are missed. On-time slots always fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Missed {
    /// Missed slots are dropped (the default): a nightly report does not run five times after a
    /// long outage.
    #[default]
    Skip,
    /// One job for the latest missed slot: "run once to catch up".
    Once,
    /// One job per missed slot, at most the `max` most recent ones (bounded so that a schedule
    /// every second does not flood the queue after a day off; capped at 1000 per fire).
    All {
        /// The most missed slots dispatched (see [`DEFAULT_MISSED_MAX`]).
        max: u32,
    },
}

impl Missed {
    /// [`Missed::All`] with the default bound, [`DEFAULT_MISSED_MAX`].
    pub fn all() -> Self {
        Self::All { max: DEFAULT_MISSED_MAX }
    }
}

/// `skip`, `once`, `all` (at most [`DEFAULT_MISSED_MAX`]) or `all:N`, as configuration files
/// and command lines write it.
impl FromStr for Missed {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        match s.to_ascii_lowercase().as_str() {
            "skip" => return Ok(Self::Skip),
            "once" => return Ok(Self::Once),
            "all" => return Ok(Self::all()),
            _ => {}
        }
        if let Some((all, max)) = s.split_once(':')
            && all.trim().eq_ignore_ascii_case("all")
            && let Ok(max) = max.trim().parse()
        {
            return Ok(Self::All { max });
        }
        Err(Error::invalid(
            "missed-slot policy",
            format!("{s:?}: use skip, once, all or all:N (at most N missed slots)"),
        ))
    }
}

impl fmt::Display for Missed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Skip => f.write_str("skip"),
            Self::Once => f.write_str("once"),
            Self::All { max } => write!(f, "all:{max}"),
        }
    }
}

/// The stored form of a schedule: what [`ScheduleRecord::definition`] holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Definition {
    /// [`DEFINITION_VERSION`]; a newer one is refused with a clear error.
    version: u32,
    cron: String,
    timezone: String,
    job: String,
    /// The job's data as JSON (an object for typed jobs), kept as a value so that
    /// `orcs schedule:list` shows it readably.
    data: serde_json::Value,
    /// `None` until registration resolves it (the job's queue, else the queue's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    queue: Option<String>,
    priority: i32,
    max_retries: u32,
    retry_delay_ms: u64,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    unique: Option<Unique>,
    missed: Missed,
    missed_after_ms: u64,
}

/// A job dispatched on a cron schedule. Build it with [`Schedule::new`] (a typed job) or
/// [`Schedule::raw`] (a job named by string, for configuration files), then register it with a
/// [`Scheduler`] or [`crate::Worker::schedule`].
///
/// ```
/// # use orcs_core::{Missed, Schedule};
/// # fn main() -> orcs_core::Result<()> {
/// let nightly = Schedule::raw("nightly-report", "0 30 2 * * *", "ReportJob", serde_json::json!({}))?
///     .timezone("Europe/Berlin")?
///     .missed(Missed::Once);
/// assert_eq!(nightly.cron(), "0 30 2 * * *");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Schedule {
    name: String,
    definition: Definition,
    cron: jiff_cron::Schedule,
    tz: TimeZone,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schedule")
            .field("name", &self.name)
            .field("cron", &self.definition.cron)
            .field("timezone", &self.definition.timezone)
            .field("job", &self.definition.job)
            .field("missed", &self.definition.missed)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.definition == other.definition
    }
}

impl Schedule {
    /// A schedule `name` dispatching `job` on `cron`, in UTC, with the job type's queue, priority,
    /// retries and timeout and its unique key.
    ///
    /// `cron` has seconds: `sec min hour day-of-month month day-of-week [year]`, e.g.
    /// `"0 */5 * * * *"` (every five minutes) or `"0 0 9 * * Mon-Fri"`.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the schedule for a bad name or cron expression;
    /// [`Error::Serialization`] if the job does not serialize.
    pub fn new<J: Job>(name: impl Into<String>, cron: &str, job: J) -> Result<Self> {
        let name = name.into();
        let data = serde_json::to_value(&job).map_err(Error::Serialization)?;
        let mut schedule = Self::raw(name, cron, J::NAME, data)?;
        let definition = &mut schedule.definition;
        definition.queue = (!J::QUEUE.is_empty()).then(|| J::QUEUE.to_owned());
        definition.priority = J::PRIORITY;
        definition.max_retries = J::MAX_RETRIES;
        definition.retry_delay_ms = duration_ms(J::RETRY_DELAY);
        definition.timeout_ms = J::TIMEOUT.map(duration_ms);
        definition.unique = job.unique();
        Ok(schedule)
    }

    /// A schedule dispatching the job registered as `job` with `data` as its payload, for jobs
    /// named in configuration. It has priority 0, no retries and the worker's timeout unless set
    /// otherwise, and goes to the queue's default queue unless [`Schedule::queue`] names one.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the schedule for a bad name, job name or cron expression.
    pub fn raw(
        name: impl Into<String>,
        cron: &str,
        job: impl Into<String>,
        data: serde_json::Value,
    ) -> Result<Self> {
        let name = name.into();
        validate_name(&name)?;
        let job = job.into();
        if job.trim().is_empty() {
            return Err(Error::invalid(
                "schedule",
                format!("schedule {name:?}: the job name is empty; name a registered job type"),
            ));
        }
        let definition = Definition {
            version: DEFINITION_VERSION,
            cron: cron.trim().to_owned(),
            timezone: "UTC".to_owned(),
            job,
            data,
            queue: None,
            priority: 0,
            max_retries: 0,
            retry_delay_ms: 0,
            timeout_ms: None,
            unique: None,
            missed: Missed::Skip,
            missed_after_ms: duration_ms(DEFAULT_MISSED_AFTER),
        };
        Self::compile(name, definition)
    }

    /// Evaluates the cron expression in the IANA time zone `tz` (default `UTC`), so that
    /// `"0 0 9 * * *"` fires at 9:00 local time all year, across daylight saving changes. A
    /// local time skipped by a change moves forward by the gap (02:30 becomes 03:30); a daily
    /// time that happens twice fires once; an hourly schedule fires in both repeated hours.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the schedule if the zone is unknown.
    pub fn timezone(mut self, tz: &str) -> Result<Self> {
        self.tz = lookup_tz(&self.name, tz)?;
        tz.trim().clone_into(&mut self.definition.timezone);
        Ok(self)
    }

    /// Sends the jobs to `queue` instead of the job type's (checked at registration).
    #[must_use]
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.definition.queue = Some(queue.into());
        self
    }

    /// The jobs' priority instead of the job type's.
    #[must_use]
    pub fn priority(mut self, priority: i32) -> Self {
        self.definition.priority = priority;
        self
    }

    /// The jobs' retries instead of the job type's.
    #[must_use]
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.definition.max_retries = max_retries;
        self
    }

    /// The jobs' backoff base instead of the job type's.
    #[must_use]
    pub fn retry_delay(mut self, retry_delay: Duration) -> Self {
        self.definition.retry_delay_ms = duration_ms(retry_delay);
        self
    }

    /// The jobs' time limit per attempt instead of the job type's.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.definition.timeout_ms = Some(duration_ms(timeout));
        self
    }

    /// Each job holds the unique `key` of its queue until `until`: a slot whose previous job
    /// still holds the key dispatches nothing (no overlapping runs with
    /// [`UniqueUntil::Finished`]).
    #[must_use]
    pub fn unique(mut self, key: impl Into<String>, until: UniqueUntil) -> Self {
        self.definition.unique = Some(Unique::new(key, until));
        self
    }

    /// What to do with slots missed while no scheduler ran (default [`Missed::Skip`]).
    #[must_use]
    pub fn missed(mut self, policy: Missed) -> Self {
        self.definition.missed = policy;
        self
    }

    /// How late a slot may be dispatched and still count as on time (default 60 s,
    /// [`DEFAULT_MISSED_AFTER`]); later slots follow the [`Missed`] policy.
    #[must_use]
    pub fn missed_after(mut self, late: Duration) -> Self {
        self.definition.missed_after_ms = duration_ms(late);
        self
    }

    /// The schedule's name, unique per backend.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cron expression, as given.
    pub fn cron(&self) -> &str {
        &self.definition.cron
    }

    /// The IANA name of the time zone the expression is evaluated in.
    pub fn timezone_name(&self) -> &str {
        &self.definition.timezone
    }

    /// The registry name of the job it dispatches.
    pub fn job_name(&self) -> &str {
        &self.definition.job
    }

    /// The job's data (its payload as JSON).
    pub fn data(&self) -> &serde_json::Value {
        &self.definition.data
    }

    /// The queue it dispatches to, if the job type or [`Schedule::queue`] names one (a
    /// registered schedule always has one).
    pub fn queue_name(&self) -> Option<&str> {
        self.definition.queue.as_deref()
    }

    /// The policy for missed slots.
    pub fn missed_policy(&self) -> Missed {
        self.definition.missed
    }

    /// How late a slot may be and still be on time.
    pub fn on_time_window(&self) -> Duration {
        Duration::from_millis(self.definition.missed_after_ms)
    }

    /// The first slot strictly after `at`; `None` if the expression has no later slot (a year
    /// field in the past).
    pub fn next_after(&self, at: Millis) -> Option<Millis> {
        self.upcoming(at).next()
    }

    /// The slots strictly after `at`, in order (for listing the next runs).
    pub fn upcoming(&self, at: Millis) -> impl Iterator<Item = Millis> + '_ {
        let start = to_zoned(at, &self.tz);
        start.into_iter().flat_map(move |start| self.cron.after(start).map(|z| to_millis(&z)))
    }

    /// The definition as stored in [`ScheduleRecord::definition`] (JSON).
    pub fn definition(&self) -> String {
        // A struct of strings, numbers and a JSON value always serializes.
        serde_json::to_string(&self.definition).unwrap_or_default()
    }

    /// The schedule a stored record describes (what `orcs schedule:list` shows).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the schedule if the definition is not one this build can read
    /// (written by a newer orcs, or edited by hand).
    pub fn from_record(record: &ScheduleRecord) -> Result<Self> {
        let mut schedule = Self::from_definition(&record.name, &record.definition)?;
        if schedule.definition.queue.is_none() {
            schedule.definition.queue = Some(record.queue.clone());
        }
        Ok(schedule)
    }

    /// The schedule `name` from its stored definition JSON.
    ///
    /// # Errors
    /// As [`Schedule::from_record`].
    pub fn from_definition(name: &str, json: &str) -> Result<Self> {
        let definition: Definition = serde_json::from_str(json).map_err(|e| {
            Error::invalid(
                "schedule",
                format!(
                    "schedule {name:?}: its stored definition is not readable by this version of \
                     orcs ({e}); register it again from this version, or upgrade"
                ),
            )
        })?;
        if definition.version > DEFINITION_VERSION {
            return Err(Error::invalid(
                "schedule",
                format!(
                    "schedule {name:?}: its definition has version {}, this orcs reads up to {}; \
                     upgrade orcs",
                    definition.version, DEFINITION_VERSION
                ),
            ));
        }
        let tz = lookup_tz(name, &definition.timezone)?;
        let mut schedule = Self::compile(name.to_owned(), definition)?;
        schedule.tz = tz;
        Ok(schedule)
    }

    /// Parses the cron expression of `definition` (UTC until [`Schedule::timezone`]).
    fn compile(name: String, definition: Definition) -> Result<Self> {
        let cron = parse_cron(&name, &definition.cron)?;
        Ok(Self { name, definition, cron, tz: TimeZone::UTC })
    }

    /// The definition with its queue resolved (`default_queue` if neither the job type nor the
    /// schedule names one): what registration stores.
    pub(crate) fn resolved(&self, default_queue: &str) -> Self {
        let mut resolved = self.clone();
        if resolved.definition.queue.is_none() {
            resolved.definition.queue = Some(default_queue.to_owned());
        }
        resolved
    }

    /// The job of one dispatch, on `queue`, ready at `now`.
    pub(crate) fn job(&self, id: String, queue: &str, now: Millis, meta: String) -> NewJob {
        let definition = &self.definition;
        let mut job = NewJob::new(id, &definition.job, queue, definition.data.to_string(), now);
        job.priority = definition.priority;
        job.max_retries = definition.max_retries;
        job.retry_delay_ms = definition.retry_delay_ms;
        job.timeout_ms = definition.timeout_ms;
        job.unique.clone_from(&definition.unique);
        job.meta = Some(meta);
        job
    }

    /// The job of `slot`: its deterministic id, and the slot in its metadata.
    pub(crate) fn slot_job(&self, slot: Millis, queue: &str, now: Millis) -> NewJob {
        let meta = serde_json::json!({ "schedule": self.name, "slot": slot }).to_string();
        self.job(slot_job_id(&self.name, slot), queue, now, meta)
    }

    /// The job defaults of the definition, for the payload and queue checks at registration.
    pub(crate) fn defaults(&self) -> crate::queue::JobDefaults {
        crate::queue::JobDefaults {
            queue: "",
            priority: self.definition.priority,
            max_retries: self.definition.max_retries,
            retry_delay: Duration::from_millis(self.definition.retry_delay_ms),
            timeout: self.definition.timeout_ms.map(Duration::from_millis),
        }
    }
}

/// Whole milliseconds of a duration, saturating.
fn duration_ms(d: Duration) -> u64 {
    u64::try_from(millis(d)).unwrap_or(u64::MAX)
}

/// `ms` as a zoned date-time; `None` outside jiff's range (years -9999..=9999).
fn to_zoned(ms: Millis, tz: &TimeZone) -> Option<Zoned> {
    Timestamp::from_millisecond(ms).ok().map(|t| t.to_zoned(tz.clone()))
}

fn to_millis(zoned: &Zoned) -> Millis {
    zoned.timestamp().as_millisecond()
}

/// Schedule names end up in keys and table rows of every backend: the queue name rules apply.
fn validate_name(name: &str) -> Result<()> {
    crate::queue::validate_queue_name(name).map_err(|_| {
        Error::invalid(
            "schedule name",
            format!(
                "{name:?}: use 1 to 128 bytes of letters, digits and '-', '_', '.', ':' (no \
                 whitespace, commas or braces)"
            ),
        )
    })
}

fn parse_cron(name: &str, cron: &str) -> Result<jiff_cron::Schedule> {
    let cron = cron.trim();
    let fields = cron.split_whitespace().count();
    let hint = if fields == 5 {
        " It has 5 fields: orcs expressions start with seconds, so put \"0 \" in front of a \
         classic crontab line."
            .to_owned()
    } else if !(6..=7).contains(&fields) {
        format!(" It has {fields} fields.")
    } else {
        String::new()
    };
    jiff_cron::Schedule::from_str(cron).map_err(|e| {
        Error::invalid(
            "schedule",
            format!(
                "schedule {name:?}: {cron:?} is not a cron expression ({e}).{hint} Write 6 or 7 \
                 fields: sec min hour day-of-month month day-of-week [year], e.g. \"0 */5 * * * \
                 *\" for every five minutes or \"0 0 9 * * Mon-Fri\" for 9:00 on weekdays"
            ),
        )
    })
}

fn lookup_tz(name: &str, tz: &str) -> Result<TimeZone> {
    TimeZone::get(tz.trim()).map_err(|e| {
        Error::invalid(
            "schedule",
            format!(
                "schedule {name:?}: unknown time zone {tz:?} ({e}); use an IANA name such as \
                 \"UTC\", \"Europe/Berlin\" or \"America/New_York\""
            ),
        )
    })
}

#[cfg(test)]
mod tests;
