//! Several `orcs` processes on one backend (issues #3 and #4), all through the built binary:
//!
//! - `redis_four_workers_drain_20000`: horizontal scaling, four `queue:work` processes on one
//!   Redis drain 20,000 jobs, each completed exactly once.
//! - `postgres_four_workers_drain_5000`, `sqlite_two_workers_drain_5000`,
//!   `redis_cluster_two_workers_drain_5000`: the same on the database driver and on a Redis
//!   Cluster, the workers stopping by themselves when the queue is empty.
//! - `*_concurrent_dispatchers_and_workers`: four `queue:dispatch` processes write while the
//!   workers drain.
//! - `*_lost_workers_jobs_run_once`: of two workers holding jobs, one is killed (`SIGKILL`) and
//!   one paused (`SIGSTOP`); once the leases expire another worker completes their jobs, each
//!   counted exactly once; resumed, the paused worker's late results are refused.
//! - `*_idle_workers_wake_up`: workers sleeping up to 10 s run a job dispatched by another
//!   process within milliseconds, and a delayed one when it is due (Redis, PostgreSQL).
//! - `*_jobs_outlive_their_dispatchers`: jobs dispatched by processes that have all exited are
//!   still there for a worker started later; and the README path, where `QUEUE_DRIVER=database`
//!   alone shares `storage/queue.db` between commands run in one directory.
//!
//! Every wait is bounded by a deadline; workers are killed when a test ends, also when it fails.

use std::collections::HashSet;
use std::time::{Duration, Instant};

mod common;
use common::{Proc, Sandbox, Totals, simulate, stop_all};

/// The per-test limit for a drain to finish.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// The jobs each worker reports in its last line (`orcs worker stopped: N done, ...`).
#[track_caller]
fn done_by(worker: &Proc) -> u64 {
    let (out, err) = (worker.stdout(), worker.stderr());
    out.lines()
        .chain(err.lines())
        .find_map(|line| line.strip_prefix("orcs worker stopped: "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary line from the worker:\n{worker}"))
}

/// Checks the summaries of stopped workers: together they completed `n` jobs, and at least
/// `min_busy` of them took part.
#[track_caller]
fn check_shares(workers: &[Proc], n: u64, min_busy: usize) {
    let shares: Vec<u64> = workers.iter().map(done_by).collect();
    assert_eq!(shares.iter().sum::<u64>(), n, "the workers' summaries {shares:?} do not add up");
    let busy = shares.iter().filter(|&&done| done > 0).count();
    assert!(busy >= min_busy, "only {busy} workers did any work: {shares:?}");
    eprintln!("jobs per worker: {shares:?}");
}

// ---- horizontal scaling ----

#[test]
fn redis_four_workers_drain_20000() {
    const N: u64 = 20_000;
    let Some(sandbox) = Sandbox::shared_redis() else { return };
    // The workers are up (connected) first, so dispatching, claiming and completing overlap.
    let mut workers =
        sandbox.workers(4, &["--queue", "reports", "--concurrency", "16", "--sleep", "0.1"]);
    for w in &mut workers {
        w.wait_output("orcs worker:", Duration::from_secs(10));
    }
    let started = Instant::now();
    sandbox.dispatch("GenerateReportJob", N, &[]);
    let dispatched = started.elapsed();
    let totals = sandbox.wait_drained(&mut workers, N, DRAIN_DEADLINE);
    let drained = started.elapsed();
    stop_all(&mut workers);
    assert!(totals.drained(N), "{totals:?}");
    // Nothing moves after the workers stopped.
    assert_eq!(sandbox.stats(), Some(totals));
    check_shares(&workers, N, 4);
    eprintln!("dispatched in {dispatched:?}, drained in {drained:?}");
}

#[test]
fn redis_cluster_two_workers_drain_5000() {
    if !cfg!(feature = "redis") {
        orcs_tests::services::skip::<()>("the redis driver", "built without the `redis` feature");
        return;
    }
    let Some(url) = orcs_tests::services::redis::redis_cluster_url_or_skip() else { return };
    let sandbox = Sandbox::redis(&url);
    drain_with_stop_when_empty(&sandbox, 2, 5000);
    // Idle workers on a cluster still wake on a dispatch from another process.
    idle_workers_wake_up(&Sandbox::redis(&url));
}

#[test]
fn postgres_four_workers_drain_5000() {
    let Some(sandbox) = Sandbox::postgres() else { return };
    drain_with_stop_when_empty(&sandbox, 4, 5000);
}

#[test]
fn sqlite_two_workers_drain_5000() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    drain_with_stop_when_empty(&sandbox, 2, 5000);
}

/// Dispatches `n` jobs, then starts `workers` processes that exit by themselves once nothing is
/// ready and nothing runs; together they complete each job exactly once.
fn drain_with_stop_when_empty(sandbox: &Sandbox, workers: usize, n: u64) {
    let started = Instant::now();
    sandbox.dispatch("GenerateReportJob", n, &[]);
    let dispatched = started.elapsed();
    let mut procs = sandbox.workers(
        workers,
        &["--queue", "reports", "--concurrency", "8", "--sleep", "0.1", "--stop-when-empty"],
    );
    let deadline = Instant::now() + DRAIN_DEADLINE;
    for w in &mut procs {
        let status = w.wait(deadline.saturating_duration_since(Instant::now()));
        assert!(status.is_some_and(|s| s.success()), "exit {status:?}: {w}");
    }
    let drained = started.elapsed();
    let totals = sandbox.stats().expect("the backend answers");
    assert!(totals.drained(n), "{totals:?}");
    check_shares(&procs, n, 2);
    eprintln!("dispatched in {dispatched:?}, drained in {drained:?}");
}

/// Four `queue:dispatch` processes write at once (1,250 jobs each, in batches) while `workers`
/// processes claim and complete: no dispatch fails on contention (SQLite's single writer, row
/// locks) and every job completes exactly once.
fn concurrent_dispatchers_and_workers(sandbox: &Sandbox, workers: usize) {
    const N: u64 = 5000;
    let mut procs =
        sandbox.workers(workers, &["--queue", "reports", "--concurrency", "8", "--sleep", "0.1"]);
    let mut dispatchers: Vec<Proc> = (0..4)
        .map(|_| sandbox.spawn(&["queue:dispatch", "GenerateReportJob", "--count", "1250"], &[]))
        .collect();
    for d in &mut dispatchers {
        let status = d.wait(DRAIN_DEADLINE);
        assert!(status.is_some_and(|s| s.success()), "exit {status:?}: {d}");
    }
    let totals = sandbox.wait_drained(&mut procs, N, DRAIN_DEADLINE);
    stop_all(&mut procs);
    assert!(totals.drained(N), "{totals:?}");
    check_shares(&procs, N, 1);
}

#[test]
fn redis_concurrent_dispatchers_and_workers() {
    let Some(sandbox) = Sandbox::shared_redis() else { return };
    concurrent_dispatchers_and_workers(&sandbox, 4);
}

#[test]
fn postgres_concurrent_dispatchers_and_workers() {
    let Some(sandbox) = Sandbox::postgres() else { return };
    concurrent_dispatchers_and_workers(&sandbox, 4);
}

#[test]
fn sqlite_concurrent_dispatchers_and_workers() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    concurrent_dispatchers_and_workers(&sandbox, 2);
}

// ---- workers lost while holding jobs ----

/// The worker's margin over a job's timeout that makes its lease (`WorkerOptions::lease_grace`;
/// `queue:work` has no flag for it).
const LEASE_GRACE: Duration = Duration::from_secs(5);

/// Two workers each claim 8 of 24 slow jobs (1 s each, a 1.5 s timeout, so a lease of
/// 1.5 s + [`LEASE_GRACE`]); then one is killed (`SIGKILL`) and the other paused (`SIGSTOP`)
/// while they hold them. A third worker runs the 8 left at once, and the 16 held ones once their
/// leases expire: every job completes exactly once, and the lost attempt is not a failure
/// (3 retries are left). Resumed (`SIGCONT`) after that, the paused worker's late completions
/// and time-outs are refused as lost leases (`LOST`): nothing runs, retries or counts twice.
fn lost_workers_jobs_run_once(sandbox: &Sandbox) {
    const N: u64 = 24;
    let started = Instant::now();
    sandbox.dispatch("GenerateReportJob", N, &["--data", &simulate(1000, 0)]);
    let args = ["--timeout", "1.5", "--sleep", "0.1", "--queue", "reports", "--concurrency"];
    let mut killed = sandbox.worker(&[&args[..], &["8"]].concat());
    let paused = sandbox.spawn(&[&["queue:work", "--json"][..], &args[..], &["8"]].concat(), &[]);
    let held =
        sandbox.poll_stats(Duration::from_secs(10), |t| t.reserved == 16).unwrap_or_else(|last| {
            panic!("the workers never held 16 jobs: {last:?}\n{killed}\n{paused}")
        });
    killed.kill();
    // With all its slots busy it is not claiming; only its lease recovery (every 1 s) writes,
    // for about a millisecond. Stopped inside that on SQLite, it would keep the write lock and
    // the drain would time out: rare enough to accept.
    paused.signal("STOP");
    let lost_at = Instant::now();
    // The leases outlive the workers: their jobs stay reserved, nobody runs them yet.
    let after = sandbox.stats().expect("the backend answers");
    assert!(after.reserved > 8, "the workers were stopped too late: {held:?} then {after:?}");
    assert_eq!(after.processed + after.reserved + after.pending, N, "{after:?}");

    let mut rescuer = sandbox.worker(&[&args[..], &["16"]].concat());
    let totals = sandbox.wait_drained(std::slice::from_mut(&mut rescuer), N, DRAIN_DEADLINE);
    let recovered_after = lost_at.elapsed();
    assert!(totals.drained(N), "{totals:?}\n{rescuer}");
    // Were the leases ignored, the rescuer would have finished in about 2 s.
    assert!(
        recovered_after + Duration::from_millis(500) >= LEASE_GRACE,
        "the held jobs ran again after {recovered_after:?}, before their leases could expire"
    );

    paused.signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::json_lines(&paused.stdout()).len() < 8 {
        assert!(Instant::now() < deadline, "the resumed worker did not settle its jobs:\n{paused}");
        common::pause(Duration::from_millis(50));
    }
    let mut both = [paused, rescuer];
    stop_all(&mut both);
    let [paused, rescuer] = &both;
    for line in common::json_lines(&paused.stdout()) {
        assert_eq!(line["status"], "LOST", "{line}\n{paused}");
    }
    // The rescuer ran everything the killed worker had not completed, including what it held.
    assert_eq!(done_by(rescuer), N - after.processed, "{after:?}\n{rescuer}");
    assert_eq!(sandbox.stats(), Some(totals), "the resumed worker changed the counters");
    eprintln!("recovered {recovered_after:?} after the loss; {:?} in all", started.elapsed());
}

#[test]
fn redis_lost_workers_jobs_run_once() {
    let Some(sandbox) = Sandbox::shared_redis() else { return };
    lost_workers_jobs_run_once(&sandbox);
}

#[test]
fn postgres_lost_workers_jobs_run_once() {
    let Some(sandbox) = Sandbox::postgres() else { return };
    lost_workers_jobs_run_once(&sandbox);
}

#[test]
fn sqlite_lost_workers_jobs_run_once() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    lost_workers_jobs_run_once(&sandbox);
}

// ---- waking idle workers ----

/// Idle workers whose `--sleep` is 10 s run a job another process dispatches within a fraction of
/// that (Redis: the blocking wake-up key; PostgreSQL: LISTEN/NOTIFY), and a delayed one when it
/// becomes due, neither early nor at the end of their sleep.
fn idle_workers_wake_up(sandbox: &Sandbox) {
    const WAKE_WITHIN: Duration = Duration::from_secs(3);
    let mut workers = sandbox.workers(2, &["--queue", "reports", "--sleep", "10"]);
    for w in &mut workers {
        w.wait_output("orcs worker:", Duration::from_secs(10));
    }
    // Let both make their first (empty) claim and go to sleep.
    common::pause(Duration::from_secs(1));
    for round in 1..=2 {
        let dispatched = Instant::now();
        sandbox.dispatch("GenerateReportJob", 1, &[]);
        sandbox.wait_for(&format!("the job of round {round} running"), WAKE_WITHIN, |t| {
            t.processed == round
        });
        eprintln!("round {round}: ran {:?} after the dispatch began", dispatched.elapsed());
    }
    let dispatched = Instant::now();
    sandbox.dispatch("GenerateReportJob", 1, &["--delay", "1"]);
    sandbox.wait_for("the delayed job running", WAKE_WITHIN, |t| t.processed == 3);
    let ran_after = dispatched.elapsed();
    assert!(ran_after >= Duration::from_secs(1), "the delayed job ran early: {ran_after:?}");
    eprintln!("delayed 1 s: ran {ran_after:?} after the dispatch began");
    stop_all(&mut workers);
    assert!(sandbox.stats().expect("the backend answers").drained(3));
}

#[test]
fn redis_idle_workers_wake_up() {
    let Some(sandbox) = Sandbox::shared_redis() else { return };
    idle_workers_wake_up(&sandbox);
}

#[test]
fn postgres_idle_workers_wake_up() {
    let Some(sandbox) = Sandbox::postgres() else { return };
    idle_workers_wake_up(&sandbox);
}

// ---- persistence ----

/// Dispatches jobs to two queues in separate processes (all exited before a worker starts) and
/// checks that a worker started afterwards runs every one of them, by id.
fn jobs_outlive_their_dispatchers(sandbox: &Sandbox) {
    let mut ids = HashSet::new();
    for (job, data, count) in [
        ("GenerateReportJob", "{}", "300"),
        ("SendWelcomeEmailJob", r#"{"userId":1,"email":"ada@example.com"}"#, "200"),
    ] {
        let out =
            sandbox.json(&["queue:dispatch", job, "--data", data, "--count", count, "--json"]);
        ids.extend(
            out["ids"].as_array().expect("ids").iter().map(|id| id.as_str().unwrap().to_owned()),
        );
    }
    assert_eq!(ids.len(), 500);
    let waiting = sandbox.stats().expect("the backend answers");
    assert_eq!(waiting, Totals { pending: 500, ..Totals::default() });

    let mut worker = sandbox.worker(&[
        "--queue",
        "emails,reports",
        "--concurrency",
        "8",
        "--sleep",
        "0.1",
        "--stop-when-empty",
        "--json",
    ]);
    let status = worker.wait(DRAIN_DEADLINE);
    assert!(status.is_some_and(|s| s.success()), "exit {status:?}: {worker}");
    let done: Vec<String> = common::json_lines(&worker.stdout())
        .iter()
        .map(|line| {
            assert_eq!(line["status"], "DONE", "{line}");
            line["id"].as_str().expect("an id").to_owned()
        })
        .collect();
    assert_eq!(done.len(), 500, "{worker}");
    assert_eq!(done.into_iter().collect::<HashSet<_>>(), ids);
    assert!(sandbox.stats().expect("the backend answers").drained(500));
}

#[test]
fn sqlite_jobs_outlive_their_dispatchers() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    jobs_outlive_their_dispatchers(&sandbox);
}

#[test]
fn postgres_jobs_outlive_their_dispatchers() {
    let Some(sandbox) = Sandbox::postgres() else { return };
    jobs_outlive_their_dispatchers(&sandbox);
}

/// The README's "no server at all" path: `QUEUE_DRIVER=database` and nothing else puts the jobs
/// in `storage/queue.db` under the working directory, shared by every command run there.
#[test]
fn readme_database_driver_alone_shares_storage_queue_db() {
    let Some(mut sandbox) = Sandbox::sqlite() else { return };
    sandbox.global.clear();
    sandbox.env.push(("QUEUE_DRIVER".into(), "database".into()));
    sandbox
        .run(&[
            "queue:dispatch",
            "SendWelcomeEmailJob",
            "--data",
            r#"{"userId":1,"email":"ada@example.com"}"#,
        ])
        .ok();
    assert!(sandbox.path("storage/queue.db").is_file(), "no storage/queue.db");
    sandbox
        .run(&["queue:work", "--queue", "emails", "--stop-when-empty", "--sleep", "0.1"])
        .ok()
        .stdout_has("driver database")
        .stdout_has("SendWelcomeEmailJob")
        .stdout_has("orcs worker stopped: 1 done");
    assert!(sandbox.stats().expect("the database answers").drained(1));
}
