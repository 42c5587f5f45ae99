use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::plan::{Due, MAX_SLOTS_PER_FIRE, fnv1a_128_for_tests};
use super::*;
use crate::job::{JobContext, JobError};

/// 2023-11-14T22:13:20Z, a whole second (and a whole ten seconds).
const T0: Millis = 1_700_000_000_000;

fn every(seconds: u32) -> Schedule {
    Schedule::raw("s", &format!("*/{seconds} * * * * *"), "Job", serde_json::json!({}))
        .expect("valid schedule")
}

fn at(offsets: &[i64]) -> Vec<Millis> {
    offsets.iter().map(|s| T0 + s * 1_000).collect()
}

#[test]
fn due_slots_are_those_after_the_cursor_up_to_now() {
    let schedule = every(10);
    let due = schedule.due(T0, T0 + 30_000);
    assert_eq!(due.fire, at(&[10, 20, 30]), "(cursor, now]: the cursor's own slot is done");
    assert_eq!(due.cursor, Some(T0 + 30_000));
    assert!(!due.more);

    let due = schedule.due(T0, T0 + 29_999);
    assert_eq!(due.fire, at(&[10, 20]), "a slot 1 ms in the future is not due");
    assert_eq!(due.cursor, Some(T0 + 20_000), "the cursor moves to the latest due slot, not now");

    assert_eq!(schedule.due(T0, T0 + 9_999), Due::default(), "nothing due: no fire at all");
    assert_eq!(schedule.due(T0 + 5_000, T0), Due::default(), "a clock behind the cursor");
}

#[test]
fn slots_between_whole_seconds_are_found() {
    // A cursor and a clock in the middle of a second.
    let schedule = every(1);
    let due = schedule.due(T0 + 500, T0 + 2_500);
    assert_eq!(due.fire, at(&[1, 2]));
}

#[test]
fn skip_drops_missed_slots_and_moves_past_them() {
    let schedule = every(10).missed_after(Duration::from_secs(5));
    let due = schedule.due(T0, T0 + 300_000);
    assert_eq!(due.fire, at(&[300]), "only the on-time slot");
    assert_eq!(due.cursor, Some(T0 + 300_000));

    // Every due slot missed: nothing fires but the cursor moves past them.
    let due = schedule.due(T0, T0 + 306_000);
    assert!(due.fire.is_empty());
    assert_eq!(due.cursor, Some(T0 + 300_000), "the missed slots are done (skipped)");
}

#[test]
fn once_fires_the_latest_missed_slot() {
    let schedule = every(10).missed_after(Duration::from_secs(5)).missed(Missed::Once);
    assert_eq!(schedule.due(T0, T0 + 300_000).fire, at(&[290, 300]));
    assert_eq!(schedule.due(T0, T0 + 306_000).fire, at(&[300]), "300 is missed now, and latest");
}

#[test]
fn all_fires_at_most_max_most_recent_missed_slots() {
    let schedule = every(10).missed_after(Duration::from_secs(5)).missed(Missed::All { max: 5 });
    assert_eq!(schedule.due(T0, T0 + 300_000).fire, at(&[250, 260, 270, 280, 290, 300]));
    let schedule = schedule.missed(Missed::All { max: 100 });
    let due = schedule.due(T0, T0 + 300_000);
    assert_eq!(due.fire.len(), 30, "all 29 missed and the on-time one");
    assert_eq!(due.fire.first(), Some(&(T0 + 10_000)));
    assert_eq!(Missed::all(), Missed::All { max: DEFAULT_MISSED_MAX });
}

#[test]
fn on_time_slots_always_fire_whatever_the_policy() {
    // A 60 s window holds six slots of a schedule every 10 s.
    let schedule = every(10);
    assert_eq!(schedule.due(T0, T0 + 60_000).fire, at(&[10, 20, 30, 40, 50, 60]));
}

#[test]
fn a_year_long_pause_costs_only_what_the_policy_keeps() {
    let schedule = every(1);
    let year = 365 * 24 * 3_600_000;
    let started = std::time::Instant::now();
    let due = schedule.due(T0, T0 + year);
    assert_eq!(due.fire.len(), 61, "the on-time minute (61 slots with both ends) only");
    assert_eq!(due.cursor, Some(T0 + year));
    let all = schedule.missed(Missed::All { max: 10 }).due(T0, T0 + year);
    assert_eq!(all.fire.len(), 71);
    assert!(started.elapsed() < Duration::from_secs(2), "no walk over 31 million slots");
}

#[test]
fn a_fire_is_capped_and_continued() {
    // One day on time for a schedule every second: 86,400 slots, in fires of 1,000.
    let schedule = every(1).missed_after(Duration::from_secs(86_400));
    let now = T0 + 86_400_000;
    let mut cursor = T0;
    let mut fired = 0;
    let mut fires = 0;
    loop {
        let due = schedule.due(cursor, now);
        assert!(due.fire.len() <= MAX_SLOTS_PER_FIRE);
        fired += due.fire.len();
        fires += 1;
        cursor = due.cursor.expect("slots are due");
        if !due.more {
            break;
        }
        assert_eq!(
            due.fire.last(),
            Some(&cursor),
            "a capped fire moves the cursor to its last slot"
        );
    }
    assert_eq!((fired, fires, cursor), (86_400, 87, now));
}

#[test]
fn next_after_is_strict_and_upcoming_lists_slots() {
    let schedule = every(10);
    assert_eq!(schedule.next_after(T0), Some(T0 + 10_000));
    assert_eq!(schedule.next_after(T0 - 1), Some(T0));
    let next: Vec<_> = schedule.upcoming(T0).take(3).collect();
    assert_eq!(next, at(&[10, 20, 30]));
}

/// Europe/Berlin springs forward on 2024-03-31 (02:00 -> 03:00) and falls back on 2024-10-27
/// (03:00 -> 02:00).
#[test]
fn time_zones_follow_daylight_saving() {
    let ms = |s: &str| s.parse::<Timestamp>().expect("timestamp").as_millisecond();
    let hourly = Schedule::raw("h", "0 0 * * * *", "Job", serde_json::json!({}))
        .expect("valid")
        .timezone("Europe/Berlin")
        .expect("zone")
        .missed_after(Duration::from_secs(2 * 86_400));
    // Local midnight to midnight: 23 hours in spring, 25 in autumn.
    let spring = hourly.due(ms("2024-03-30T23:00:00Z") - 1, ms("2024-03-31T22:00:00Z") - 1);
    assert_eq!(spring.fire.len(), 23, "the skipped hour has no slot");
    let autumn = hourly.due(ms("2024-10-26T22:00:00Z") - 1, ms("2024-10-27T23:00:00Z") - 1);
    assert_eq!(autumn.fire.len(), 25, "the repeated hour fires twice");

    // 09:00 local is 08:00 UTC in winter and 07:00 UTC in summer.
    let nine = Schedule::raw("n", "0 0 9 * * *", "Job", serde_json::json!({}))
        .expect("valid")
        .timezone("Europe/Berlin")
        .expect("zone");
    assert_eq!(nine.next_after(ms("2024-03-30T12:00:00Z")), Some(ms("2024-03-31T07:00:00Z")));
    assert_eq!(nine.next_after(ms("2024-03-29T12:00:00Z")), Some(ms("2024-03-30T08:00:00Z")));

    // 02:30 does not exist on the spring day: the slot is the instant after the gap.
    let skipped = Schedule::raw("k", "0 30 2 * * *", "Job", serde_json::json!({}))
        .expect("valid")
        .timezone("Europe/Berlin")
        .expect("zone");
    let spring: Vec<_> = skipped.upcoming(ms("2024-03-30T12:00:00Z")).take(2).collect();
    assert_eq!(
        spring,
        [ms("2024-03-31T01:30:00Z"), ms("2024-04-01T00:30:00Z")],
        "02:30 moves by the gap to 03:30 CEST, then 02:30 CEST again"
    );
    // 02:30 happens twice on the autumn day (CEST, then CET): the daily slot fires once.
    let autumn = skipped
        .missed_after(Duration::from_secs(3 * 86_400))
        .due(ms("2024-10-26T12:00:00Z"), ms("2024-10-28T12:00:00Z"));
    assert_eq!(autumn.fire, [ms("2024-10-27T01:30:00Z"), ms("2024-10-28T01:30:00Z")]);
}

#[test]
fn bad_cron_and_zone_errors_name_the_schedule_and_the_fix() {
    let five =
        Schedule::raw("nightly", "30 2 * * *", "Job", serde_json::json!({})).expect_err("5 fields");
    let text = five.to_string();
    assert!(text.contains("\"nightly\"") && text.contains("start with seconds"), "{text}");

    let bad = Schedule::raw("nightly", "0 61 * * * *", "Job", serde_json::json!({}))
        .expect_err("minute 61");
    assert!(bad.to_string().contains("sec min hour"), "{bad}");

    let zone = every(1).timezone("Mars/Olympus").expect_err("no such zone");
    let text = zone.to_string();
    assert!(text.contains("Mars/Olympus") && text.contains("Europe/Berlin"), "{text}");

    let name = Schedule::raw("a b", "* * * * * *", "Job", serde_json::json!({})).expect_err("name");
    assert!(name.to_string().contains("schedule name"), "{name}");
    let job = Schedule::raw("a", "* * * * * *", " ", serde_json::json!({})).expect_err("job");
    assert!(job.to_string().contains("job name is empty"), "{job}");
}

#[derive(Serialize, Deserialize)]
struct Report {
    day: u32,
}

impl Job for Report {
    const NAME: &'static str = "Report";
    const QUEUE: &'static str = "reports";
    const PRIORITY: i32 = 7;
    const MAX_RETRIES: u32 = 2;
    const TIMEOUT: Option<Duration> = Some(Duration::from_secs(9));

    async fn handle(&self, _ctx: &JobContext) -> Result<(), JobError> {
        Ok(())
    }

    fn unique(&self) -> Option<Unique> {
        Some(Unique::new("report", UniqueUntil::Finished))
    }
}

#[test]
fn a_typed_schedule_takes_the_job_types_defaults_and_round_trips() {
    let schedule = Schedule::new("daily", "0 0 6 * * *", Report { day: 3 })
        .expect("valid")
        .timezone("America/New_York")
        .expect("zone")
        .missed(Missed::All { max: 3 });
    assert_eq!(schedule.queue_name(), Some("reports"));
    let job = schedule.slot_job(T0, "reports", T0 + 5);
    assert_eq!(job.name, "Report");
    assert_eq!(job.payload, r#"{"day":3}"#);
    assert_eq!((job.priority, job.max_retries, job.timeout_ms), (7, 2, Some(9_000)));
    assert_eq!(job.retry_delay_ms, 60_000);
    assert_eq!(job.unique, Some(Unique::new("report", UniqueUntil::Finished)));
    assert_eq!((job.dispatched_at, job.available_at), (T0 + 5, T0 + 5));
    let meta: serde_json::Value =
        serde_json::from_str(job.meta.as_deref().expect("meta")).expect("json");
    assert_eq!(meta, serde_json::json!({ "schedule": "daily", "slot": T0 }));

    let again = Schedule::from_definition("daily", &schedule.definition()).expect("readable");
    assert_eq!(again, schedule);
    assert_eq!(again.timezone_name(), "America/New_York");
    assert_eq!(again.next_after(T0), schedule.next_after(T0), "the zone came back too");

    let newer = schedule.definition().replace("\"version\":1", "\"version\":9");
    let err = Schedule::from_definition("daily", &newer).expect_err("newer");
    assert!(err.to_string().contains("upgrade orcs"), "{err}");
}

#[test]
fn a_raw_schedule_goes_to_the_default_queue_unless_told() {
    let raw = every(1);
    assert_eq!(raw.queue_name(), None);
    assert_eq!(raw.resolved("main").queue_name(), Some("main"));
    assert_eq!(raw.queue("ops").resolved("main").queue_name(), Some("ops"));
}

#[test]
fn slot_ids_are_deterministic_ulids_of_the_slot_time() {
    let id = slot_job_id("nightly", T0);
    assert_eq!(id, slot_job_id("nightly", T0), "same schedule and slot, same id");
    assert_ne!(id, slot_job_id("nightly", T0 + 1_000));
    assert_ne!(id, slot_job_id("hourly", T0));
    let ulid = ulid::Ulid::from_string(&id).expect("a ULID");
    assert_eq!(ulid.timestamp_ms(), T0 as u64);
    assert!(slot_job_id("nightly", T0) < slot_job_id("nightly", T0 + 1), "ids sort by slot");
    // Pinned: an id must not change between builds, or a slot fired by an old and a new
    // version would be two jobs.
    assert_eq!(id, "01HF7YAT00BFGERF4Z9ZVRV0JS");
    // FNV-1a 128 of "a", from the algorithm's published test vectors.
    assert_eq!(fnv1a_128_for_tests(b"a"), 0xd228_cb69_6f1a_8caf_7891_2b70_4e4a_8964);
}

#[test]
fn missed_policies_parse_and_print() {
    assert_eq!("skip".parse::<Missed>().expect("skip"), Missed::Skip);
    assert_eq!(" Once ".parse::<Missed>().expect("once"), Missed::Once);
    assert_eq!("all".parse::<Missed>().expect("all"), Missed::all());
    assert_eq!("all:7".parse::<Missed>().expect("all:7"), Missed::All { max: 7 });
    for policy in [Missed::Skip, Missed::Once, Missed::All { max: 3 }] {
        assert_eq!(policy.to_string().parse::<Missed>().expect("round trip"), policy);
    }
    let err = "sometimes".parse::<Missed>().expect_err("unknown");
    assert!(err.to_string().contains("skip, once, all or all:N"), "{err}");
    assert!("all:x".parse::<Missed>().is_err());
}

#[test]
fn missed_slots_walked_backwards_match_the_forward_slots_across_dst() {
    let ms = |s: &str| s.parse::<Timestamp>().expect("timestamp").as_millisecond();
    for cron in ["0 0 * * * *", "0 30 2 * * *", "0 */20 1-3 * * *"] {
        let schedule = Schedule::raw("d", cron, "Job", serde_json::json!({}))
            .expect("valid")
            .timezone("Europe/Berlin")
            .expect("zone");
        for (from, to) in [
            ("2024-03-29T12:00:00Z", "2024-04-02T12:00:00Z"),
            ("2024-10-25T12:00:00Z", "2024-10-29T12:00:00Z"),
        ] {
            let forward = schedule
                .clone()
                .missed_after(Duration::from_secs(10 * 86_400))
                .due(ms(from), ms(to));
            let backward = schedule
                .clone()
                .missed_after(Duration::ZERO)
                .missed(Missed::All { max: 1_000 })
                .due(ms(from), ms(to));
            assert_eq!(backward.fire, forward.fire, "{cron} from {from}");
        }
    }
}
