//! The conformance cases of schedules (issue #12): the cursor's compare-and-set
//! ([`orcs_core::Driver::fire_schedule`]), registration keeping the cursor, and the scheduler's
//! exactly-once firing and missed-slot policies on top of them.
//!
//! Every case but the last runs on a [`ManualClock`] standing on a whole minute, so slots are
//! checked to the millisecond without sleeping.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use orcs_core::{
    BoxDriver, Clock, Error, Fire, JobState, ListRequest, MAX_PAGE, ManualClock, Millis, Missed,
    NewJob, Queue, Schedule, ScheduleRecord, Scheduler, SystemClock, Unique, UniqueUntil, Worker,
    slot_job_id,
};
use serde_json::json;

use crate::eventually;
use crate::jobs::{PlainJob, Script, probe, registry};

// ---------------------------------------------------------------------------------------------
// Helpers

/// A manual clock on the last whole minute, and a queue on it.
fn minute_queue(driver: &BoxDriver) -> (Queue, ManualClock, Millis) {
    let t0 = SystemClock.now() / 60_000 * 60_000;
    let clock = ManualClock::new(t0);
    (Queue::from_driver(Arc::clone(driver)).with_clock(clock.clone()), clock, t0)
}

/// A schedule of a job no worker runs in these cases (its jobs are only counted).
fn every(name: &str, cron: &str) -> Schedule {
    Schedule::raw(name, cron, "PlainJob", json!({ "probe": "none" }))
        .expect("a valid schedule")
        .queue("scheduled")
}

/// The slot ids of `name` at `t0 + s` seconds for each `s`.
fn slot_ids(name: &str, t0: Millis, seconds: &[i64]) -> Vec<String> {
    seconds.iter().map(|s| slot_job_id(name, t0 + s * 1_000)).collect()
}

/// Every pending job id of `queue`, in claim order.
async fn pending_ids(queue: &Queue, of: &str) -> Vec<String> {
    let mut ids = Vec::new();
    loop {
        let request = ListRequest::new(of, JobState::Pending, MAX_PAGE).offset(ids.len() as u64);
        let page = queue.list(&request).await.expect("list");
        let full = page.len() == MAX_PAGE;
        ids.extend(page.into_iter().map(|info| info.job.id));
        if !full {
            return ids;
        }
    }
}

async fn sorted_pending(queue: &Queue, of: &str) -> Vec<String> {
    let mut ids = pending_ids(queue, of).await;
    ids.sort();
    ids
}

async fn record(driver: &BoxDriver, name: &str) -> Option<ScheduleRecord> {
    driver.schedules().await.expect("schedules").into_iter().find(|r| r.name == name)
}

async fn register(queue: &Queue, schedules: &[Schedule]) -> Scheduler {
    let scheduler = Scheduler::new(queue.clone(), schedules.iter().cloned());
    scheduler.register().await.expect("register");
    scheduler
}

/// A small deterministic-enough generator (no dependency): xorshift seeded from the clock.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        Self(u64::try_from(SystemClock.now()).unwrap_or(1) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

// ---------------------------------------------------------------------------------------------
// Exactly once

/// Sixteen schedulers race for every slot of a schedule firing each second while the clock
/// moves through 10,000 slots, and one of them is killed mid-tick every 200 slots: every slot's
/// job exists exactly once.
pub async fn sixteen_schedulers_fire_each_slot_exactly_once(driver: BoxDriver) {
    const SCHEDULERS: usize = 16;
    const SLOTS: i64 = 10_000;
    // Seconds per clock step: 400 steps keep the round trips bounded on a networked backend,
    // and stay inside the 60 s on-time window.
    const STEP: i64 = 25;
    let (queue, clock, t0) = minute_queue(&driver);
    let schedule = every("every-second", "* * * * * *").missed(Missed::All { max: 10_000 });
    register(&queue, std::slice::from_ref(&schedule)).await;

    let start = |queue: &Queue, schedule: &Schedule| {
        let scheduler =
            Scheduler::new(queue.clone(), [schedule.clone()]).max_sleep(Duration::from_millis(10));
        tokio::spawn(async move { scheduler.run_until(std::future::pending()).await })
    };
    let mut tasks: Vec<_> = (0..SCHEDULERS).map(|_| start(&queue, &schedule)).collect();
    let mut rng = Rng::new();
    let mut killed = 0;
    for step in 1..=SLOTS / STEP {
        let now = t0 + step * STEP * 1_000;
        clock.set(now);
        if step % 8 == 0 {
            // Shortly after the clock moved, most schedulers are inside a tick.
            tokio::time::sleep(Duration::from_micros(rng.below(3_000))).await;
            let victim = usize::try_from(rng.below(SCHEDULERS as u64)).expect("small");
            tasks[victim].abort();
            tasks[victim] = start(&queue, &schedule);
            killed += 1;
        }
        let caught_up = eventually(Duration::from_secs(10), || async {
            record(&driver, "every-second").await.is_some_and(|r| r.cursor == now)
        })
        .await;
        assert!(caught_up, "the schedulers fired every slot up to step {step} within 10 s");
    }
    for task in &tasks {
        task.abort();
    }
    assert_eq!(killed, 50);

    let ids = pending_ids(&queue, "scheduled").await;
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), unique.len(), "no job listed twice");
    let expected: HashSet<String> =
        (1..=SLOTS).map(|k| slot_job_id("every-second", t0 + k * 1_000)).collect();
    let missing = expected.iter().filter(|id| !unique.contains(id)).count();
    let extra = unique.iter().filter(|id| !expected.contains(**id)).count();
    assert_eq!((missing, extra), (0, 0), "every slot's job exists, and no other");
    assert_eq!(queue.stats("scheduled").await.expect("stats").pending, SLOTS as u64);
    let stored = record(&driver, "every-second").await.expect("registered");
    assert_eq!(stored.last_run, Some(t0 + SLOTS * 1_000));
    assert_eq!(stored.next_run, Some(t0 + (SLOTS + 1) * 1_000));
}

// ---------------------------------------------------------------------------------------------
// Missed slots

/// A schedule every 10 s, on time for 5 s, registered at `t0` and first ticked 300 s later:
/// slots 10..=290 are missed, 300 is on time.
async fn after_a_pause(driver: &BoxDriver, policy: Missed) -> (Queue, Millis, Vec<String>) {
    let (queue, clock, t0) = minute_queue(driver);
    let schedule =
        every("paused", "*/10 * * * * *").missed_after(Duration::from_secs(5)).missed(policy);
    let scheduler = register(&queue, &[schedule]).await;
    clock.set(t0 + 300_000);
    let tick = scheduler.tick().await.expect("tick");
    assert_eq!(tick.fires, 1, "one fire handles the whole pause");
    assert_eq!(tick.next_slot, Some(t0 + 310_000));
    let stored = record(driver, "paused").await.expect("registered");
    assert_eq!(stored.cursor, t0 + 300_000, "every slot up to now is done");
    assert_eq!(stored.last_run, Some(t0 + 300_000));
    assert_eq!(stored.next_run, Some(t0 + 310_000));
    let again = scheduler.tick().await.expect("tick");
    assert_eq!(again.jobs, 0, "a second tick at the same time fires nothing");
    let ids = sorted_pending(&queue, "scheduled").await;
    (queue, t0, ids)
}

/// `Missed::Skip` drops the missed slots: only the on-time one fires.
pub async fn missed_policy_skip(driver: BoxDriver) {
    let (queue, t0, ids) = after_a_pause(&driver, Missed::Skip).await;
    assert_eq!(ids, slot_ids("paused", t0, &[300]));
    let job = queue.get(&ids[0]).await.expect("get").expect("stored").job;
    let meta: serde_json::Value =
        serde_json::from_str(job.meta.as_deref().expect("the slot is in the job's meta"))
            .expect("meta is JSON");
    assert_eq!(meta, json!({ "schedule": "paused", "slot": t0 + 300_000 }));
    assert_eq!((job.name.as_str(), job.queue.as_str()), ("PlainJob", "scheduled"));
}

/// `Missed::Once` fires one job for the latest missed slot, and the on-time one.
pub async fn missed_policy_once(driver: BoxDriver) {
    let (_, t0, ids) = after_a_pause(&driver, Missed::Once).await;
    assert_eq!(ids, slot_ids("paused", t0, &[290, 300]));
}

/// `Missed::All { max }` fires the `max` most recent missed slots, and the on-time one.
pub async fn missed_policy_all(driver: BoxDriver) {
    let (_, t0, ids) = after_a_pause(&driver, Missed::All { max: 5 }).await;
    assert_eq!(ids, slot_ids("paused", t0, &[250, 260, 270, 280, 290, 300]));
}

// ---------------------------------------------------------------------------------------------
// Registration

/// Registering an edited schedule keeps its cursor: the new expression applies from the next
/// slot, for every scheduler (they fire the stored definition).
pub async fn edited_schedule_takes_effect_at_its_next_slot(driver: BoxDriver) {
    let (queue, clock, t0) = minute_queue(&driver);
    let old = register(&queue, &[every("edited", "*/10 * * * * *")]).await;
    clock.set(t0 + 20_000);
    assert_eq!(old.tick().await.expect("tick").jobs, 2, "slots 10 and 20");

    // A deploy with the schedule every minute instead.
    let edited = register(&queue, &[every("edited", "0 * * * * *")]).await;
    let stored = record(&driver, "edited").await.expect("registered");
    assert_eq!(stored.cursor, t0 + 20_000, "the cursor is kept");
    assert!(stored.definition.contains("0 * * * * *"), "the definition is replaced");
    assert_eq!(stored.updated_at, t0 + 20_000);

    clock.set(t0 + 70_000);
    // The scheduler still declaring the old expression fires the stored, edited one.
    let tick = old.tick().await.expect("tick");
    assert_eq!(tick.jobs, 1, "only the slot at 60 s: 30, 40 and 50 are gone with the old cron");
    assert_eq!(tick.next_slot, Some(t0 + 120_000));
    assert_eq!(edited.tick().await.expect("tick").jobs, 0, "the slot fired once");
    assert_eq!(sorted_pending(&queue, "scheduled").await, slot_ids("edited", t0, &[10, 20, 60]));
}

/// Registering the same schedule again (a restart) changes nothing but `updated_at`.
pub async fn reregistering_the_same_schedule_changes_nothing(driver: BoxDriver) {
    let (queue, clock, t0) = minute_queue(&driver);
    let schedule = every("again", "*/5 * * * * *");
    let first = register(&queue, std::slice::from_ref(&schedule)).await;
    let created = record(&driver, "again").await.expect("registered");
    assert_eq!((created.cursor, created.updated_at), (t0, t0), "a new schedule starts at now");
    assert_eq!(created.next_run, Some(t0 + 5_000));
    assert_eq!(created.last_run, None);
    assert_eq!(created.queue, "scheduled");
    clock.set(t0 + 15_000);
    assert_eq!(first.tick().await.expect("tick").jobs, 3);
    let fired = record(&driver, "again").await.expect("registered");

    clock.set(t0 + 17_000);
    let second = Scheduler::new(queue.clone(), [schedule]);
    let answered = second.register().await.expect("register");
    let mut expected = fired.clone();
    expected.updated_at = t0 + 17_000;
    assert_eq!(answered, vec![expected.clone()], "register answers the stored record");
    assert_eq!(record(&driver, "again").await, Some(expected), "cursor, runs and definition kept");
    assert_eq!(second.tick().await.expect("tick").jobs, 0, "no slot in (15 s, 17 s]");
    assert_eq!(pending_ids(&queue, "scheduled").await.len(), 3);
}

/// A schedule no scheduler declares any more never fires; forgetting it removes its state.
pub async fn removed_schedule_stops(driver: BoxDriver) {
    let (queue, clock, t0) = minute_queue(&driver);
    let kept = every("kept", "* * * * * *");
    let both = register(&queue, &[kept.clone(), every("removed", "* * * * * *")]).await;
    clock.set(t0 + 2_000);
    assert_eq!(both.tick().await.expect("tick").jobs, 4);

    let only_kept = register(&queue, &[kept]).await;
    clock.set(t0 + 4_000);
    assert_eq!(only_kept.tick().await.expect("tick").jobs, 2, "kept: slots 3 and 4");
    let removed = record(&driver, "removed").await.expect("still stored");
    assert_eq!(removed.cursor, t0 + 2_000, "nobody fired the removed schedule");
    let mut expected = slot_ids("kept", t0, &[1, 2, 3, 4]);
    expected.extend(slot_ids("removed", t0, &[1, 2]));
    expected.sort();
    assert_eq!(sorted_pending(&queue, "scheduled").await, expected);

    assert!(queue.forget_schedule("removed").await.expect("forget"), "it existed");
    assert!(!queue.forget_schedule("removed").await.expect("forget"), "it is gone");
    let names: Vec<String> =
        queue.schedules().await.expect("schedules").into_iter().map(|r| r.name).collect();
    assert_eq!(names, vec!["kept".to_owned()]);
}

/// `schedules()` answers every schedule sorted by name.
pub async fn schedules_are_listed_by_name(driver: BoxDriver) {
    let (queue, _, t0) = minute_queue(&driver);
    register(
        &queue,
        &[every("b", "* * * * * *"), every("a", "0 * * * * *"), every("c", "* * * * * *")],
    )
    .await;
    let records = queue.schedules().await.expect("schedules");
    let names: Vec<&str> = records.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    let a = Schedule::from_record(&records[0]).expect("readable definition");
    assert_eq!(
        (a.cron(), a.job_name(), a.queue_name()),
        ("0 * * * * *", "PlainJob", Some("scheduled"))
    );
    assert_eq!(records[0].next_run, Some(t0 + 60_000));
}

// ---------------------------------------------------------------------------------------------
// The compare-and-set

/// A fire whose expected cursor is not the stored one changes nothing and pushes nothing; the
/// right one moves the cursor and pushes; replaying it is stale.
pub async fn stale_fire_changes_nothing(driver: BoxDriver) {
    let (queue, _, t0) = minute_queue(&driver);
    register(&queue, &[every("cas", "* * * * * *")]).await;
    let before = record(&driver, "cas").await.expect("registered");
    let job = |id: &str| NewJob::new(id, "PlainJob", "scheduled", "{}", t0 + 1_000);

    let mut stale = Fire::new("cas", t0 - 1_000, t0 + 1_000, vec![job("stale-job")]);
    stale.last_run = Some(t0 + 1_000);
    stale.next_run = Some(t0 + 2_000);
    assert!(!driver.fire_schedule(&stale, t0 + 1_000).await.expect("fire"), "stale");
    assert_eq!(record(&driver, "cas").await, Some(before.clone()), "the record is unchanged");
    assert!(queue.get("stale-job").await.expect("get").is_none(), "no job was pushed");
    assert_eq!(queue.stats("scheduled").await.expect("stats").pending, 0);

    let mut fresh = Fire::new("cas", t0, t0 + 1_000, vec![job("fresh-job")]);
    fresh.last_run = Some(t0 + 1_000);
    fresh.next_run = Some(t0 + 2_000);
    assert!(driver.fire_schedule(&fresh, t0 + 1_000).await.expect("fire"), "the cursor matched");
    let after = record(&driver, "cas").await.expect("registered");
    assert_eq!(
        (after.cursor, after.last_run, after.next_run),
        (t0 + 1_000, Some(t0 + 1_000), Some(t0 + 2_000))
    );
    assert_eq!(after.definition, before.definition);
    assert!(queue.get("fresh-job").await.expect("get").is_some(), "the job was pushed");

    assert!(!driver.fire_schedule(&fresh, t0 + 1_000).await.expect("fire"), "a replay is stale");
    assert_eq!(queue.stats("scheduled").await.expect("stats").pending, 1);

    // A fire that skipped every slot keeps the last run.
    let mut skipped = Fire::new("cas", t0 + 1_000, t0 + 5_000, Vec::new());
    skipped.next_run = Some(t0 + 6_000);
    assert!(driver.fire_schedule(&skipped, t0 + 90_000).await.expect("fire"));
    let after = record(&driver, "cas").await.expect("registered");
    assert_eq!(
        (after.cursor, after.last_run, after.next_run),
        (t0 + 5_000, Some(t0 + 1_000), Some(t0 + 6_000))
    );
}

/// A fire pushes its jobs as a push does: an id that exists is left as it is, and a unique key
/// held (by an older job or earlier in the same fire) stores nothing.
pub async fn fire_honours_duplicate_ids_and_unique_keys(driver: BoxDriver) {
    let (queue, _, t0) = minute_queue(&driver);
    register(&queue, &[every("dups", "* * * * * *")]).await;
    let job = |id: &str, payload: &str| NewJob::new(id, "PlainJob", "scheduled", payload, t0);
    queue.dispatch_records(vec![job("taken", "{\"old\":true}")]).await.expect("push");
    let keyed = |id: &str| {
        let mut j = job(id, "{}");
        j.unique = Some(Unique::new("one-at-a-time", UniqueUntil::Finished));
        j
    };
    let fire = Fire::new(
        "dups",
        t0,
        t0 + 1_000,
        vec![job("taken", "{\"new\":true}"), keyed("k1"), keyed("k2")],
    );
    assert!(driver.fire_schedule(&fire, t0 + 1_000).await.expect("fire"));
    let taken = queue.get("taken").await.expect("get").expect("stored");
    assert_eq!(taken.job.payload, "{\"old\":true}", "the existing job is left as it is");
    assert!(queue.get("k1").await.expect("get").is_some(), "the first holder of the key");
    assert!(queue.get("k2").await.expect("get").is_none(), "the key was held");
    assert_eq!(queue.stats("scheduled").await.expect("stats").pending, 2);
}

/// Firing a schedule that was never registered is `NotFound`.
pub async fn fire_of_unknown_schedule_is_not_found(driver: BoxDriver) {
    let fire = Fire::new("ghost", 0, 1_000, Vec::new());
    let result = driver.fire_schedule(&fire, 1_000).await;
    assert!(matches!(result, Err(Error::NotFound { .. })), "{result:?}");
    assert!(record(&driver, "ghost").await.is_none(), "nothing was created");
}

// ---------------------------------------------------------------------------------------------
// Running

/// `run_schedule` dispatches the schedule's job now, with a fresh id, without moving the cursor.
pub async fn run_schedule_dispatches_now(driver: BoxDriver) {
    let (queue, clock, t0) = minute_queue(&driver);
    let schedule = Schedule::raw("manual", "0 0 3 * * *", "PlainJob", json!({ "probe": "p" }))
        .expect("valid")
        .queue("scheduled")
        .priority(4);
    register(&queue, &[schedule]).await;
    clock.set(t0 + 500);
    let id = queue.run_schedule("manual").await.expect("run");
    let info = queue.get(&id).await.expect("get").expect("stored");
    assert_eq!(info.state, JobState::Pending, "ready at once");
    assert_eq!(info.job.available_at, t0 + 500);
    assert_eq!(
        (info.job.name.as_str(), info.job.queue.as_str(), info.job.priority),
        ("PlainJob", "scheduled", 4)
    );
    assert_eq!(info.job.payload, "{\"probe\":\"p\"}");
    let meta: serde_json::Value =
        serde_json::from_str(info.job.meta.as_deref().expect("meta")).expect("JSON");
    assert_eq!(meta["schedule"], "manual");
    let again = queue.run_schedule("manual").await.expect("run");
    assert_ne!(again, id, "each run is a new job");
    assert_eq!(record(&driver, "manual").await.expect("registered").cursor, t0, "the cursor stays");

    let unknown = queue.run_schedule("nope").await.expect_err("unknown");
    assert!(unknown.to_string().contains("schedule:list"), "{unknown}");
}

/// A worker declaring a schedule runs its scheduler: each slot's job starts within 50 ms of the
/// slot (median), and the scheduler stops with the worker.
pub async fn scheduled_job_starts_within_50ms_of_its_slot(driver: BoxDriver) {
    let queue = Queue::from_driver(Arc::clone(&driver));
    let (key, probe) = probe();
    let schedule =
        Schedule::new("each-second", "* * * * * *", PlainJob(Script::ok(&key))).expect("valid");
    let handle = Worker::new(queue.clone(), registry())
        .queues(["default"])
        .concurrency(2)
        .sleep(Duration::from_secs(30))
        .schedule(schedule)
        .spawn();
    assert!(
        eventually(Duration::from_secs(6), || async { probe.started() >= 4 }).await,
        "a job each second"
    );
    handle.shutdown().await.expect("worker");
    let stopped_at = record(&driver, "each-second").await.expect("registered").cursor;

    let starts = probe.starts.lock().expect("probe lock").clone();
    let mut lateness: Vec<Millis> = starts
        .iter()
        .map(|(id, _, started)| {
            let slot = i64::try_from(ulid_ms(id)).expect("ms");
            assert_eq!(*id, slot_job_id("each-second", slot), "a slot job");
            started - slot
        })
        .collect();
    lateness.sort_unstable();
    assert!(lateness[0] >= 0, "no job before its slot: {lateness:?}");
    let median = lateness[lateness.len() / 2];
    assert!(median <= 50, "median lateness {median} ms (limit 50): {lateness:?}");
    assert!(lateness.iter().all(|l| *l < 1_000), "every job within its second: {lateness:?}");

    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let later = record(&driver, "each-second").await.expect("registered").cursor;
    assert_eq!(later, stopped_at, "the scheduler stopped with the worker");
}

/// The millisecond time of a ULID (its first 10 characters, Crockford base 32).
fn ulid_ms(id: &str) -> u64 {
    const ALPHABET: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    id.chars().take(10).fold(0, |ms, c| {
        ms * 32 + ALPHABET.find(c.to_ascii_uppercase()).expect("a ULID character") as u64
    })
}

/// A worker registers and fires its schedules by default; `run_scheduler(false)` leaves them to
/// other processes.
pub async fn worker_runs_its_scheduler_unless_turned_off(driver: BoxDriver) {
    let (queue, clock, t0) = minute_queue(&driver);
    let worker = |name: &str, on: bool| {
        Worker::new(queue.clone(), registry())
            .queues(["default"])
            .schedule(every(name, "* * * * * *"))
            .run_scheduler(on)
            .spawn()
    };
    let off = worker("off", false);
    let on = worker("on", true);
    assert!(
        eventually(Duration::from_secs(3), || async { record(&driver, "on").await.is_some() })
            .await,
        "the worker registered its schedule"
    );
    clock.set(t0 + 2_000);
    assert!(
        eventually(Duration::from_secs(3), || async {
            record(&driver, "on").await.is_some_and(|r| r.cursor == t0 + 2_000)
        })
        .await,
        "the worker's scheduler fired the slots (it ticks at least every second)"
    );
    off.shutdown().await.expect("worker");
    on.shutdown().await.expect("worker");
    assert!(
        record(&driver, "off").await.is_none(),
        "a worker without its scheduler registers nothing"
    );
    assert_eq!(sorted_pending(&queue, "scheduled").await, slot_ids("on", t0, &[1, 2]));
}
