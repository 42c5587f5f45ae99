//! Issue 12, batches through the binary: `queue:dispatch --batch` with callbacks,
//! `queue:batch [--json]`, `queue:cancel-batch`, bad input; and batches under kill -9 chaos.
//!
//! The chaos test dispatches a batch with a `then` callback, runs three workers and kills a
//! random one with SIGKILL every second or so (starting a new one), then lets them drain. Every
//! attempt of a child and of the callback appends `start`/`end` lines to a probe file (the
//! example jobs' `probe_dir`), so the test sees that `then` completed exactly once and started
//! only after the last child's attempt ended; `queue:batch --json` and the stats must agree. The
//! CI variant has 2,000 children on Redis and SQLite; the ignored `*_batch_chaos_full` has
//! 20,000 (`scripts/chaos.sh batch`).

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::chaos::{Chaos, Rng};
use common::{Proc, Sandbox, Totals, pause, private_redis_url, simulate, stop_all};
use orcs_tests::services::restartable::RestartablePostgres;
use serde_json::Value;

/// `queue:dispatch JOB --count N --batch ... --json`: the printed object.
#[track_caller]
fn dispatch_batch(sandbox: &Sandbox, job: &str, count: u64, extra: &[&str]) -> Value {
    let count = count.to_string();
    let mut args = vec!["queue:dispatch", job, "--count", &count, "--batch", "--json"];
    args.extend_from_slice(extra);
    sandbox.json(&args)
}

#[track_caller]
fn batch(sandbox: &Sandbox, id: &str) -> Value {
    sandbox.json(&["queue:batch", id, "--json"])
}

#[track_caller]
fn counters(batch: &Value) -> [u64; 5] {
    ["total", "pending", "processed", "failed", "cancelled"]
        .map(|key| batch[key].as_u64().unwrap_or_else(|| panic!("no {key} in {batch}")))
}

// ---- dispatch, show, cancel ----

fn dispatch_show_and_cancel(sandbox: &Sandbox) {
    let out = dispatch_batch(
        sandbox,
        "GenerateReportJob",
        3,
        &[
            "--queue",
            "b",
            "--then",
            "SendEmailJob",
            "--then-data",
            r#"{"to":"done@example.com"}"#,
            "--finally",
            "GenerateReportJob",
        ],
    );
    let id = out["batch"].as_str().expect("a batch id").to_owned();
    assert_eq!((out["total"].as_u64(), out["queue"].as_str()), (Some(3), Some("b")), "{out}");
    assert!(out["then"].is_string() && out["finally"].is_string() && out["catch"].is_null());

    let info = batch(sandbox, &id);
    assert_eq!(counters(&info), [3, 3, 0, 0, 0], "{info}");
    assert_eq!(info["state"], "running");
    assert_eq!(info["then"]["name"], "SendEmailJob");
    assert_eq!(info["then"]["queue"], "b", "the callbacks follow --queue: {info}");
    assert_eq!(info["then"]["id"], out["then"]);
    assert_eq!(
        (&info["then"]["state"], &info["finally"]["state"]),
        (&"waiting".into(), &"waiting".into())
    );
    assert_eq!(info["catch"], Value::Null);
    let text = sandbox.run(&["queue:batch", &id]).ok();
    let text = text.stdout_has(&format!("batch {id}: running (0 of 3 children finished)"));
    let text = text.stdout_has("then        SendEmailJob ");
    text.stdout_has("catch       none");

    // Cancelling removes the waiting children; with none running the batch ends at once:
    // `then` skipped, `finally` dispatched.
    let run = sandbox.run(&["queue:cancel-batch", &id]).ok();
    let run = run.stdout_has(&format!("cancelled batch {id}: 3 waiting children removed"));
    run.stdout_has("then SendEmailJob ").stdout_has(": skipped");
    let info = batch(sandbox, &id);
    assert_eq!(counters(&info), [3, 0, 0, 0, 3], "{info}");
    assert_eq!(info["state"], "cancelled");
    assert!(info["cancelled_at"].is_string() && info["finished_at"].is_string(), "{info}");
    assert_eq!(
        (&info["then"]["state"], &info["finally"]["state"]),
        (&"skipped".into(), &"dispatched".into())
    );
    let pending = sandbox.json(&["queue:stats", "b", "--json"]);
    assert_eq!(pending["pending"], 1, "only the finally job: {pending}");
    sandbox
        .run(&["queue:cancel-batch", &id])
        .ok()
        .stdout_has("was already cancelled; nothing changed");
}

#[test]
fn sqlite_batch_dispatch_show_and_cancel() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    dispatch_show_and_cancel(&sandbox);
}

#[test]
fn redis_batch_dispatch_show_and_cancel() {
    let Some(sandbox) = Sandbox::shared_redis() else { return };
    dispatch_show_and_cancel(&sandbox);
}

// ---- failures ----

/// Every child fails for good (no retries). Without --allow-failures the first failure cancels
/// the rest and dispatches catch; with it every child runs; `then` is skipped either way and
/// `finally` always runs.
fn failures(sandbox: &Sandbox) {
    let fail = simulate(0, 1_000);
    let callbacks = [
        "--then",
        "GenerateReportJob",
        "--catch",
        "GenerateReportJob",
        "--finally",
        "GenerateReportJob",
    ];
    let mut strict = vec!["--queue", "f", "--max-retries", "0", "--data", &fail];
    strict.extend(callbacks);
    let id = dispatch_batch(sandbox, "GenerateReportJob", 5, &strict)["batch"]
        .as_str()
        .expect("an id")
        .to_owned();
    let mut tolerant = strict.clone();
    tolerant.push("--allow-failures");
    let tolerant_id = dispatch_batch(sandbox, "GenerateReportJob", 4, &tolerant)["batch"]
        .as_str()
        .expect("an id")
        .to_owned();
    // One job at a time: the first failure happens before the others start.
    sandbox
        .run(&["queue:work", "--queue", "f", "--stop-when-empty", "--sleep", "0.1", "--quiet"])
        .ok();

    // The worker claims its next job while the failure is being recorded (see the worker's
    // `Slot`), so a second child may be running, and fail, when the cancel comes.
    let info = batch(sandbox, &id);
    let [total, pending, processed, failed, cancelled] = counters(&info);
    assert_eq!((total, pending, processed), (5, 0, 0), "{info}");
    assert!((1..=2).contains(&failed) && failed + cancelled == 5, "{info}");
    assert_eq!(info["state"], "cancelled", "the first failure cancels the batch: {info}");
    let states: Vec<&Value> =
        ["then", "catch", "finally"].iter().map(|r| &info[r]["state"]).collect();
    assert_eq!(states, [&Value::from("skipped"), &"dispatched".into(), &"dispatched".into()]);

    let info = batch(sandbox, &tolerant_id);
    assert_eq!(counters(&info), [4, 0, 0, 4, 0], "{info}");
    assert_eq!(
        (info["state"].as_str(), info["allow_failures"].as_bool()),
        (Some("finished"), Some(true))
    );
    let states: Vec<&Value> =
        ["then", "catch", "finally"].iter().map(|r| &info[r]["state"]).collect();
    assert_eq!(states, [&Value::from("skipped"), &"dispatched".into(), &"dispatched".into()]);
    let text = sandbox.run(&["queue:batch", &tolerant_id]).ok();
    text.stdout_has("failures    allowed");
    // The failed children of both batches; the callbacks (2 catch, 2 finally) completed.
    let totals = sandbox.stats().expect("stats");
    assert_eq!((totals.failed, totals.processed), (failed + 4, 4), "{totals:?}");
}

#[test]
fn sqlite_batch_failures_cancel_or_not() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    failures(&sandbox);
}

#[test]
fn redis_batch_failures_cancel_or_not() {
    let Some(sandbox) = Sandbox::shared_redis() else { return };
    failures(&sandbox);
}

// ---- bad input ----

#[test]
fn bad_batch_input_says_what_to_fix() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    let cases: [(&[&str], i32, &str); 8] = [
        (&["queue:batch", "01NOSUCHBATCH"], 1, "no batch with id 01NOSUCHBATCH"),
        (&["queue:cancel-batch", "01NOSUCHBATCH"], 1, "no batch with id 01NOSUCHBATCH"),
        (&["queue:dispatch", "GenerateReportJob", "--then", "SendEmailJob"], 2, "--batch"),
        (&["queue:dispatch", "GenerateReportJob", "--batch", "--then-data", "{}"], 2, "--then"),
        (
            &["queue:dispatch", "GenerateReportJob", "--batch", "--then", "Nope"],
            2,
            "--then: unknown job \"Nope\": this binary registers GenerateReportJob",
        ),
        (
            &["queue:dispatch", "GenerateReportJob", "--batch", "--finally", "SendEmailJob"],
            2,
            "--finally-data does not fit job SendEmailJob: missing field `to`",
        ),
        (
            &[
                "queue:dispatch",
                "GenerateReportJob",
                "--batch",
                "--catch",
                "GenerateReportJob",
                "--catch-data",
                "[1]",
            ],
            2,
            "--catch-data must be a JSON object",
        ),
        (
            &["queue:dispatch", "GenerateReportJob", "--batch", "--count", "100001"],
            2,
            "over the 100000 children of one batch",
        ),
    ];
    for (args, code, expected) in cases {
        sandbox.run(args).code(code).stderr_has(expected);
    }
    // Nothing was stored by the refused dispatches.
    assert_eq!(sandbox.json(&["queue:stats", "--json"]), Value::Array(Vec::new()));
}

// ---- kill -9 chaos ----

/// One line of a probe's `events` file.
struct Event {
    start: bool,
    nanos: u128,
    job: String,
}

fn events(dir: &Path) -> Vec<Event> {
    let text = std::fs::read_to_string(dir.join("events")).unwrap_or_default();
    text.lines()
        .map(|line| {
            let parts: Vec<&str> = line.split(' ').collect();
            assert_eq!(parts.len(), 5, "a probe line: {line:?}");
            Event {
                start: parts[0] == "start",
                nanos: parts[1].parse().expect("nanoseconds"),
                job: parts[3].to_owned(),
            }
        })
        .collect()
}

fn batch_chaos(sandbox: &Sandbox, name: &str, chaos: Chaos) {
    let started = Instant::now();
    let (mut rng, seed) = Rng::from_env(started);
    let (children_dir, then_dir) = (sandbox.path("children"), sandbox.path("then"));
    std::fs::create_dir_all(&children_dir).expect("a probe dir");
    std::fs::create_dir_all(&then_dir).expect("a probe dir");
    let probe = |dir: &Path, work_ms: u64| {
        serde_json::json!({ "simulate": { "work_ms": work_ms, "probe_dir": dir } }).to_string()
    };
    let (child_data, then_data) = (probe(&children_dir, chaos.work_ms), probe(&then_dir, 50));
    // Plenty of retries: an attempt cut short by a kill counts, and no child may fail for good
    // (which would cancel the batch) because of kills alone.
    let out = dispatch_batch(
        sandbox,
        "GenerateReportJob",
        chaos.jobs,
        &[
            "--queue",
            "chaos",
            "--data",
            &child_data,
            "--max-retries",
            "20",
            "--retry-delay",
            "0.5",
            "--then",
            "GenerateReportJob",
            "--then-data",
            &then_data,
        ],
    );
    let id = out["batch"].as_str().expect("a batch id").to_owned();
    let then_id = out["then"].as_str().expect("a then id").to_owned();
    assert_eq!(out["total"].as_u64(), Some(chaos.jobs), "{out}");
    let dispatch_took = started.elapsed();

    let args =
        ["--queue", "chaos", "--concurrency", "16", "--timeout", "2", "--sleep", "1", "--quiet"];
    let mut workers: Vec<Proc> = (0..3).map(|_| sandbox.worker(&args)).collect();
    let chaos_started = Instant::now();
    let (lo, hi) = chaos.kill_every;
    let span = u64::try_from((hi - lo).as_millis()).unwrap_or(0) + 1;
    let mut kills = 0;
    while chaos_started.elapsed() < chaos.duration {
        pause(lo + Duration::from_millis(rng.next(span)));
        let victim = usize::try_from(rng.next(workers.len() as u64)).unwrap_or(0);
        workers[victim].kill();
        workers[victim] = sandbox.worker(&args);
        kills += 1;
        if kills % 10 == 0 {
            let info = batch(sandbox, &id);
            eprintln!(
                "chaos {name}: {kills} kills after {:.0?}: {:?}",
                chaos_started.elapsed(),
                counters(&info)
            );
        }
    }
    let during = counters(&batch(sandbox, &id));
    let n = chaos.jobs;
    let last = sandbox.wait_for(
        &format!("{name}: the drain after the kills"),
        chaos.duration.max(Duration::from_secs(10)) * 3 + Duration::from_secs(60),
        |t| t.idle() && t.processed + t.failed_total > n,
    );
    for w in &mut workers {
        assert!(w.running(), "{name}: a surviving worker exited:\n{w}");
    }
    stop_all(&mut workers);

    // The backend's view: every child processed once, the batch finished, then dispatched once.
    let info = batch(sandbox, &id);
    assert_eq!(counters(&info), [n, 0, n, 0, 0], "{name} (seed {seed}): {info}");
    assert_eq!(info["state"], "finished", "{info}");
    assert_eq!(
        (&info["then"]["id"], &info["then"]["state"]),
        (&Value::from(then_id.clone()), &"dispatched".into())
    );
    assert_eq!(last, Totals { processed: n + 1, ..Totals::default() }, "{name} (seed {seed})");

    // The probes' view.
    let then_events = events(&then_dir);
    let then_jobs: HashSet<&str> = then_events.iter().map(|e| e.job.as_str()).collect();
    assert_eq!(then_jobs, HashSet::from([then_id.as_str()]), "{name}: one then job");
    let then_ends = then_events.iter().filter(|e| !e.start).count();
    let then_starts = then_events.len() - then_ends;
    assert_eq!(then_ends, 1, "{name}: then ran to its end exactly once ({then_starts} starts)");
    let then_first_start =
        then_events.iter().filter(|e| e.start).map(|e| e.nanos).min().expect("a start");
    let child_events = events(&children_dir);
    let mut ended: HashMap<&str, u128> = HashMap::new();
    for e in child_events.iter().filter(|e| !e.start) {
        let at = ended.entry(e.job.as_str()).or_default();
        *at = (*at).max(e.nanos);
    }
    assert_eq!(ended.len() as u64, n, "{name}: every child's attempt ended at least once");
    let last_child_end = ended.values().copied().max().expect("children");
    assert!(
        then_first_start > last_child_end,
        "{name}: then started {} µs before the last child ended",
        (last_child_end - then_first_start) / 1000
    );
    let child_starts = child_events.iter().filter(|e| e.start).count();
    eprintln!(
        "CHAOS {name} batch: seed {seed}, {n} children dispatched in {dispatch_took:.1?}, {kills} \
         workers killed over {:.1?} (batch after the kills: {:?}); {child_starts} child attempts \
         for {n} children; then started {} ms after the last child ended, {then_starts} start(s), \
         1 end; total {:.1?}",
        chaos.duration,
        during,
        (then_first_start - last_child_end) / 1_000_000,
        started.elapsed()
    );
}

const SHORT_CHAOS: Chaos = Chaos {
    jobs: 2_000,
    duration: Duration::from_secs(10),
    kill_every: (Duration::from_millis(700), Duration::from_millis(1300)),
    // 48 slots at 250 ms drain 2,000 children in about 10 s: the kills hit a busy batch.
    work_ms: 250,
};

const FULL_CHAOS: Chaos = Chaos {
    jobs: 20_000,
    duration: Duration::from_secs(60),
    kill_every: (Duration::from_secs(1), Duration::from_secs(2)),
    // 48 slots at 100 ms drain 20,000 children in about 45 s.
    work_ms: 100,
};

fn redis_sandbox() -> Option<Sandbox> {
    private_redis_url().map(|url| Sandbox::redis(&url))
}

#[test]
fn redis_batch_kill_9_chaos() {
    let Some(sandbox) = redis_sandbox() else { return };
    batch_chaos(&sandbox, "redis", SHORT_CHAOS);
}

#[test]
fn sqlite_batch_kill_9_chaos() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    batch_chaos(&sandbox, "sqlite", SHORT_CHAOS);
}

/// The 20,000-child version (`scripts/chaos.sh batch`); `ORCS_CHAOS_JOBS`, `ORCS_CHAOS_SECS`,
/// `ORCS_CHAOS_WORK_MS` and `ORCS_CHAOS_SEED` change it.
#[test]
#[ignore = "runs for minutes; scripts/chaos.sh batch runs it"]
fn redis_batch_chaos_full() {
    let Some(sandbox) = redis_sandbox() else { return };
    batch_chaos(&sandbox, "redis", Chaos::from_env(FULL_CHAOS));
}

#[test]
#[ignore = "runs for minutes; scripts/chaos.sh batch runs it"]
fn postgres_batch_chaos_full() {
    if !cfg!(feature = "database") {
        return;
    }
    // A private cluster, as the other chaos runs use: never the shared server.
    let Some(server) = RestartablePostgres::start_or_skip() else { return };
    let mut sandbox = Sandbox::new();
    sandbox.global = vec!["--driver".into(), "database".into(), "--url".into(), server.url()];
    batch_chaos(&sandbox, "postgres", Chaos::from_env(FULL_CHAOS));
    drop(sandbox);
    drop(server);
}

#[test]
#[ignore = "runs for minutes; scripts/chaos.sh batch runs it"]
fn sqlite_batch_chaos_full() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    batch_chaos(&sandbox, "sqlite", Chaos::from_env(FULL_CHAOS));
}

// ---- the benchmark phase ----

/// `orcs bench --phases drain,drain-batch` prints both rates and their ratio (the acceptance
/// figure: a batch's children drain at no less than 70 % of a plain drain; measured in release
/// builds by scripts/bench.sh, so only its presence and sanity are checked here).
#[test]
fn bench_drain_batch_prints_its_rate_and_the_ratio() {
    let sandbox = Sandbox::new();
    let run = sandbox.run(&["bench", "--n", "3000", "--phases", "drain,drain-batch"]).ok();
    let line: Value = serde_json::from_str(&run.stdout).expect("one JSON object");
    for key in ["drain_jps", "drain_batch_jps", "enqueue_batch_jps", "drain_batch_vs_drain"] {
        assert!(line[key].as_f64().is_some_and(|v| v > 0.0), "{key} missing in {line}");
    }
    assert!(line.get("drain_batch_error").is_none(), "{line}");
}
