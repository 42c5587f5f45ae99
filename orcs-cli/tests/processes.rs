//! Several `orcs` processes on one backend (issues #3 and #4), all through the built binary:
//!
//! - `redis_four_workers_drain_20000`: horizontal scaling, four `queue:work` processes on one
//!   Redis drain 20,000 jobs, each completed exactly once.
//! - `*_killed_worker_jobs_run_once`: a worker holding jobs is killed with `SIGKILL`; once the
//!   leases expire another worker completes them; every job is counted exactly once.
//! - `postgres_four_workers_drain_5000`, `sqlite_two_workers_drain_5000`: the same on the
//!   database driver, the workers stopping by themselves when the queue is empty.
//! - `*_paused_worker_cannot_settle_jobs_it_lost`: a worker stopped with `SIGSTOP` past its
//!   leases and resumed after another worker ran its jobs: its late results are refused.
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
    let started = Instant::now();
    // The workers are up first, so dispatching, claiming and completing overlap.
    let mut workers =
        sandbox.workers(4, &["--queue", "reports", "--concurrency", "16", "--sleep", "0.1"]);
    sandbox.dispatch("GenerateReportJob", N, &[]);
    let dispatched = started.elapsed();
    let totals = sandbox
        .poll_stats(DRAIN_DEADLINE, |t| t.idle() && t.processed + t.failed_total >= N)
        .unwrap_or_else(|last| {
            panic!("no drain within {DRAIN_DEADLINE:?}: {last:?}\nfirst worker: {}", workers[0])
        });
    let drained = started.elapsed();
    stop_all(&mut workers);
    assert!(totals.drained(N), "{totals:?}");
    // Nothing moves after the workers stopped.
    assert_eq!(sandbox.stats(), Some(totals));
    check_shares(&workers, N, 4);
    eprintln!("dispatched in {dispatched:?}, drained in {drained:?}");
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

// ---- a worker killed while holding jobs ----

/// The worker's margin over a job's timeout that makes its lease (`WorkerOptions::lease_grace`;
/// `queue:work` has no flag for it).
const LEASE_GRACE: Duration = Duration::from_secs(5);

/// Starts a worker that claims 16 of 32 slow jobs (1 s each, a 1.5 s timeout, so a lease of
/// 1.5 s + [`LEASE_GRACE`]), kills it with `SIGKILL` while it holds them, and starts another
/// worker: it runs the rest at once and the killed worker's jobs once their leases expire.
/// Every job completes exactly once; the lost attempt is not a failure (3 retries are left).
fn killed_worker_jobs_run_once(sandbox: &Sandbox) {
    const N: u64 = 32;
    let started = Instant::now();
    sandbox.dispatch("GenerateReportJob", N, &["--data", &simulate(1000, 0)]);
    let timeout = ["--timeout", "1.5", "--sleep", "0.1", "--queue", "reports"];
    let mut victim = sandbox.worker(&[&timeout[..], &["--concurrency", "16"]].concat());
    let held = sandbox
        .poll_stats(Duration::from_secs(10), |t| t.reserved == 16)
        .unwrap_or_else(|last| panic!("the worker never held 16 jobs: {last:?}\n{victim}"));
    victim.kill();
    let killed_at = Instant::now();
    // The leases outlive the worker: its jobs stay reserved, nobody runs them yet.
    let after_kill = sandbox.stats().expect("the backend answers");
    assert!(after_kill.reserved > 0, "the kill came too late: {held:?} then {after_kill:?}");
    assert_eq!(
        after_kill.processed + after_kill.reserved + after_kill.pending,
        N,
        "{after_kill:?}"
    );

    let mut rescuer = sandbox.worker(&[&timeout[..], &["--concurrency", "32"]].concat());
    let totals = sandbox
        .poll_stats(DRAIN_DEADLINE, |t| t.idle() && t.processed + t.failed_total >= N)
        .unwrap_or_else(|last| panic!("no drain within {DRAIN_DEADLINE:?}: {last:?}\n{rescuer}"));
    let recovered_after = killed_at.elapsed();
    rescuer.stop();
    assert!(totals.drained(N), "{totals:?}\n{rescuer}");
    assert_eq!(sandbox.stats(), Some(totals));
    // The rescuer ran everything the victim had not completed, including what it held.
    assert_eq!(done_by(&rescuer), N - after_kill.processed, "{after_kill:?}\n{rescuer}");
    assert!(
        recovered_after + Duration::from_millis(500) >= LEASE_GRACE,
        "the held jobs ran again after {recovered_after:?}, before their leases could expire"
    );
    eprintln!("recovered {recovered_after:?} after the kill; {:?} in all", started.elapsed());
}

#[test]
fn redis_killed_worker_jobs_run_once() {
    let Some(sandbox) = Sandbox::shared_redis() else { return };
    killed_worker_jobs_run_once(&sandbox);
}

#[test]
fn postgres_killed_worker_jobs_run_once() {
    let Some(sandbox) = Sandbox::postgres() else { return };
    killed_worker_jobs_run_once(&sandbox);
}

#[test]
fn sqlite_killed_worker_jobs_run_once() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    killed_worker_jobs_run_once(&sandbox);
}

/// Pauses a worker (`SIGSTOP`) holding 8 slow jobs until another worker has run them after their
/// leases expired, then lets it go on (`SIGCONT`): its late completions and time-outs must be
/// refused as lost leases, so nothing runs, retries or counts twice.
fn paused_worker_cannot_settle_jobs_it_lost(sandbox: &Sandbox) {
    const N: u64 = 8;
    sandbox.dispatch("GenerateReportJob", N, &["--data", &simulate(1000, 0)]);
    let args = ["--timeout", "1.5", "--sleep", "0.1", "--queue", "reports", "--concurrency", "8"];
    let paused = sandbox.spawn(&[&["queue:work", "--json"][..], &args[..]].concat(), &[]);
    sandbox
        .poll_stats(Duration::from_secs(10), |t| t.reserved == N)
        .unwrap_or_else(|last| panic!("the worker never held {N} jobs: {last:?}\n{paused}"));
    paused.signal("STOP");
    let rescuer = sandbox.worker(&args);
    let totals = sandbox
        .poll_stats(DRAIN_DEADLINE, |t| t.idle() && t.processed + t.failed_total >= N)
        .unwrap_or_else(|last| panic!("no drain within {DRAIN_DEADLINE:?}: {last:?}\n{rescuer}"));
    assert!(totals.drained(N), "{totals:?}\n{rescuer}");

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
    assert_eq!(done_by(rescuer), N, "{rescuer}");
    assert_eq!(sandbox.stats(), Some(totals), "the resumed worker changed the counters");
}

#[test]
fn redis_paused_worker_cannot_settle_jobs_it_lost() {
    let Some(sandbox) = Sandbox::shared_redis() else { return };
    paused_worker_cannot_settle_jobs_it_lost(&sandbox);
}

#[test]
fn postgres_paused_worker_cannot_settle_jobs_it_lost() {
    let Some(sandbox) = Sandbox::postgres() else { return };
    paused_worker_cannot_settle_jobs_it_lost(&sandbox);
}

#[test]
fn sqlite_paused_worker_cannot_settle_jobs_it_lost() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    paused_worker_cannot_settle_jobs_it_lost(&sandbox);
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
