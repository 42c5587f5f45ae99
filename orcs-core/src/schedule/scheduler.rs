//! [`Scheduler`]: registers schedules and fires their due slots; and the schedule commands of
//! [`Queue`].

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::id::new_job_id;
use crate::queue::{DispatchOptions, Queue};
use crate::record::{Fire, ScheduleRecord};

use super::Schedule;

/// How long a running scheduler sleeps at most between ticks, so that edits, new and forgotten
/// schedules are picked up even when the next slot is far away.
const DEFAULT_MAX_SLEEP: Duration = Duration::from_secs(1);

/// How often one tick re-reads and fires again after losing a race or being capped; the next
/// tick carries on after that.
const MAX_ROUNDS: usize = 32;

/// The longest wait after a failed tick (the backoff starts at 100 ms and doubles).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Fires the due slots of its schedules, each slot once across any number of schedulers.
///
/// Run one per process that declares schedules (a [`crate::Worker`] with schedules runs one by
/// default). Each tick reads the stored schedules once; for each schedule this scheduler
/// declares, it computes the due slots after the stored cursor from the stored definition (the
/// last one registered, so an edit deployed on one machine takes effect everywhere at its next
/// slot), applies the [`super::Missed`] policy, and fires with a compare-and-set on the cursor
/// ([`crate::Driver::fire_schedule`]). A scheduler that loses the race reads again; one dropped
/// mid-tick leaves the whole fire or nothing.
#[derive(Debug)]
pub struct Scheduler {
    queue: Queue,
    schedules: Vec<Schedule>,
    max_sleep: Duration,
    /// Stored definitions already parsed, by name: (definition JSON, parsed).
    parsed: Mutex<HashMap<String, (String, Arc<Schedule>)>>,
}

/// What one [`Scheduler::tick`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Tick {
    /// Jobs dispatched by this scheduler's fires (a job whose id or unique key was taken counts
    /// too: the fire was this scheduler's).
    pub jobs: usize,
    /// Fires this scheduler won.
    pub fires: usize,
    /// The earliest next slot of its schedules, when to tick again.
    pub next_slot: Option<Millis>,
}

impl Tick {
    fn next(&mut self, slot: Option<Millis>) {
        if let Some(slot) = slot {
            self.next_slot = Some(self.next_slot.map_or(slot, |next| next.min(slot)));
        }
    }
}

impl Scheduler {
    /// A scheduler of `schedules` on `queue` (its driver and clock).
    pub fn new(queue: Queue, schedules: impl IntoIterator<Item = Schedule>) -> Self {
        Self {
            queue,
            schedules: schedules.into_iter().collect(),
            max_sleep: DEFAULT_MAX_SLEEP,
            parsed: Mutex::default(),
        }
    }

    /// The longest sleep between ticks (default 1 s): how soon edits made elsewhere, new
    /// schedules and a moved clock are noticed. The next slot wakes the scheduler on time anyway.
    #[must_use]
    pub fn max_sleep(mut self, max_sleep: Duration) -> Self {
        self.max_sleep = max_sleep;
        self
    }

    /// The schedules this scheduler declares.
    pub fn schedules(&self) -> &[Schedule] {
        &self.schedules
    }

    /// Registers every schedule: a new one starts with its cursor at now (slots before it never
    /// fire); an existing one gets the new definition and keeps its cursor. Answers the stored
    /// records.
    ///
    /// # Errors
    /// [`Error::Invalid`] for two schedules of one name, a bad queue name or an oversized
    /// payload; [`Error::Unsupported`] if the driver has no schedules; a backend error.
    pub async fn register(&self) -> Result<Vec<ScheduleRecord>> {
        let mut names = HashSet::new();
        for schedule in &self.schedules {
            if !names.insert(schedule.name()) {
                return Err(Error::invalid(
                    "schedules",
                    format!(
                        "two schedules are named {:?}; give each its own name",
                        schedule.name()
                    ),
                ));
            }
        }
        let mut stored = Vec::with_capacity(self.schedules.len());
        for schedule in &self.schedules {
            stored.push(self.register_one(schedule).await?);
        }
        Ok(stored)
    }

    async fn register_one(&self, schedule: &Schedule) -> Result<ScheduleRecord> {
        let resolved = schedule.resolved(self.queue.default_queue());
        let queue = resolved.queue_name().unwrap_or_default().to_owned();
        check_job(&self.queue, &resolved, &queue)?;
        let now = self.queue.now();
        let mut record = ScheduleRecord::new(resolved.name(), queue, resolved.definition(), now);
        record.next_run = resolved.next_after(now);
        self.queue.driver().register_schedule(&record).await
    }

    /// Fires every due slot of this scheduler's schedules once (see [`Scheduler`]). A declared
    /// schedule missing from the backend (forgotten while this scheduler runs) is registered
    /// again, its cursor at now.
    ///
    /// # Errors
    /// A backend error; slots fired before it stay fired.
    pub async fn tick(&self) -> Result<Tick> {
        let mut tick = Tick::default();
        let mut pending: Vec<&Schedule> = self.schedules.iter().collect();
        let driver = self.queue.driver();
        for _ in 0..MAX_ROUNDS {
            if pending.is_empty() {
                return Ok(tick);
            }
            let stored: HashMap<String, ScheduleRecord> =
                driver.schedules().await?.into_iter().map(|r| (r.name.clone(), r)).collect();
            let mut again = Vec::new();
            // The fires of one tick go out together: schedules due at the same second must not
            // wait for each other's round trips (each is one transaction on PostgreSQL).
            let mut fires = Vec::new();
            for own in pending {
                let Some(record) = stored.get(own.name()) else {
                    let record = self.register_one(own).await?;
                    tick.next(record.next_run);
                    continue;
                };
                let Some(schedule) = self.parse(record) else { continue };
                let now = self.queue.now();
                let due = schedule.due(record.cursor, now);
                let Some(cursor) = due.cursor else {
                    tick.next(schedule.next_after(record.cursor));
                    continue;
                };
                let jobs: Vec<_> = due
                    .fire
                    .iter()
                    .map(|slot| schedule.slot_job(*slot, &record.queue, now))
                    .collect();
                let mut fire = Fire::new(own.name(), record.cursor, cursor, jobs);
                fire.last_run = due.fire.last().copied();
                fire.next_run = schedule.next_after(cursor);
                fires.push((own, fire, due.more, now));
            }
            let results = futures_util::future::join_all(
                fires.iter().map(|(_, fire, _, now)| driver.fire_schedule(fire, *now)),
            )
            .await;
            for ((own, fire, more, _), result) in fires.into_iter().zip(results) {
                match result {
                    Ok(true) => {
                        tick.fires += 1;
                        tick.jobs += fire.jobs.len();
                        if more {
                            again.push(own);
                        } else {
                            tick.next(fire.next_run);
                        }
                    }
                    // Another scheduler moved the cursor first, or the schedule was forgotten
                    // meanwhile: read again.
                    Ok(false) | Err(Error::NotFound { .. }) => again.push(own),
                    Err(e) => return Err(e),
                }
            }
            pending = again;
        }
        // Still contended after every round: tick again at once.
        if !pending.is_empty() {
            tick.next(Some(self.queue.now()));
        }
        Ok(tick)
    }

    /// The stored definition of `record`, parsed once per version; `None` (with a warning) if
    /// this build cannot read it: a newer orcs wrote it, and its schedulers fire it.
    fn parse(&self, record: &ScheduleRecord) -> Option<Arc<Schedule>> {
        let mut parsed = self.parsed.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((definition, schedule)) = parsed.get(&record.name)
            && *definition == record.definition
        {
            return Some(Arc::clone(schedule));
        }
        match Schedule::from_record(record) {
            Ok(schedule) => {
                let schedule = Arc::new(schedule);
                parsed.insert(
                    record.name.clone(),
                    (record.definition.clone(), Arc::clone(&schedule)),
                );
                Some(schedule)
            }
            Err(e) => {
                tracing::warn!(schedule = %record.name, error = %e, "schedule not fired");
                None
            }
        }
    }

    /// Registers the schedules, then ticks until SIGINT or SIGTERM.
    ///
    /// # Errors
    /// As [`Scheduler::run_until`].
    pub async fn run(&self) -> Result<()> {
        self.run_until(crate::worker::shutdown_signal()).await
    }

    /// Registers the schedules, then ticks until `stop` completes: at each next slot (within a
    /// millisecond or two) and at least every [`Scheduler::max_sleep`]. A failed tick (or a
    /// registration failing for a transient reason) is logged and tried again with backoff
    /// (100 ms doubling to 30 s), so a backend outage delays slots (they follow the missed policy
    /// once late) but does not stop the scheduler.
    ///
    /// # Errors
    /// A registration error that is not transient (see [`Scheduler::register`]); after
    /// registration it runs until stopped.
    pub async fn run_until(&self, stop: impl Future<Output = ()> + Send) -> Result<()> {
        let registered = self.try_register().await?;
        self.serve(stop, registered).await;
        Ok(())
    }

    /// Registers the schedules; `Ok(false)` if the backend failed transiently (the tick loop
    /// registers them once it is back).
    pub(crate) async fn try_register(&self) -> Result<bool> {
        match self.register().await {
            Ok(_) => Ok(true),
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "schedules not registered yet; retrying");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// The tick loop; registers first unless `registered`.
    pub(crate) async fn serve(&self, stop: impl Future<Output = ()> + Send, mut registered: bool) {
        let mut stop = std::pin::pin!(stop);
        let mut backoff = Duration::ZERO;
        loop {
            let wait = tokio::select! {
                () = &mut stop => return,
                result = self.step(registered) => match result {
                    Ok(next_slot) => {
                        registered = true;
                        backoff = Duration::ZERO;
                        self.sleep_until(next_slot)
                    }
                    Err(e) if !registered && !e.is_transient() => {
                        tracing::error!(error = %e, "schedules cannot be registered; scheduler stopped");
                        return;
                    }
                    Err(e) => {
                        backoff = (backoff * 2).clamp(Duration::from_millis(100), MAX_BACKOFF);
                        tracing::warn!(error = %e, retry_in = ?backoff, "schedule tick failed");
                        backoff
                    }
                },
            };
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One turn of the loop: registration if still due, then a tick; answers the next slot.
    async fn step(&self, registered: bool) -> Result<Option<Millis>> {
        if !registered {
            self.register().await?;
        }
        Ok(self.tick().await?.next_slot)
    }

    /// How long to sleep for the next slot: until it, at most [`Scheduler::max_sleep`].
    fn sleep_until(&self, next_slot: Option<Millis>) -> Duration {
        let Some(slot) = next_slot else { return self.max_sleep };
        let ms = u64::try_from(slot.saturating_sub(self.queue.now())).unwrap_or(0);
        Duration::from_millis(ms).min(self.max_sleep)
    }
}

/// Checks a resolved schedule's queue name and payload size as a dispatch would, naming the
/// schedule in the error.
fn check_job(queue: &Queue, schedule: &Schedule, target: &str) -> Result<()> {
    let options = DispatchOptions::new().queue(target);
    queue
        .untyped_record(
            schedule.job_name(),
            schedule.data().to_string(),
            schedule.defaults(),
            &options,
        )
        .map(drop)
        .map_err(|e| match e {
            Error::Invalid { what, message } => {
                Error::invalid(what, format!("schedule {:?}: {message}", schedule.name()))
            }
            other => other,
        })
}

impl Queue {
    /// Every registered schedule, sorted by name (`orcs schedule:list`); read a definition with
    /// [`Schedule::from_record`].
    ///
    /// # Errors
    /// [`Error::Unsupported`] if the driver has no schedules; a backend error.
    pub async fn schedules(&self) -> Result<Vec<ScheduleRecord>> {
        self.driver().schedules().await
    }

    /// Dispatches the job of the registered schedule `name` now, with a fresh id, from its stored
    /// definition (`orcs schedule:run`). The schedule's cursor does not move: its slots fire as
    /// usual. Answers the job's id (the holder's, if the schedule's unique key is held).
    ///
    /// # Errors
    /// [`Error::Invalid`] if no schedule has this name or its definition is unreadable; a backend
    /// error.
    pub async fn run_schedule(&self, name: &str) -> Result<String> {
        let records = self.driver().schedules().await?;
        let Some(record) = records.iter().find(|r| r.name == name) else {
            return Err(Error::invalid(
                "schedule",
                format!(
                    "no schedule named {name:?} is registered; `orcs schedule:list` shows the \
                     registered ones"
                ),
            ));
        };
        let schedule = Schedule::from_record(record)?;
        let meta = serde_json::json!({ "schedule": name, "manual": true }).to_string();
        let job = schedule.job(new_job_id(), &record.queue, self.now(), meta);
        let mut ids = self.dispatch_records(vec![job]).await?;
        Ok(ids.pop().unwrap_or_default())
    }

    /// Removes a schedule's stored state (cursor, definition); answers whether it existed. A
    /// running scheduler that still declares it registers it again, its slots starting then.
    ///
    /// # Errors
    /// A backend error.
    pub async fn forget_schedule(&self, name: &str) -> Result<bool> {
        self.driver().forget_schedule(name).await
    }
}
