//! Flow control across processes (issue 11), all through the built binary, on Redis,
//! PostgreSQL and SQLite. The example jobs' `probe_dir` knob (see `orcs_cli::examples`) makes
//! every attempt, in every worker process, append `start`/`end` lines with the time to one file,
//! from which the tests read how many attempts ran at once and when they started.
//!
//! - `*_concurrency_limit_under_kill_9`: `queue:limit --concurrency 20`, four workers at
//!   concurrency 32, a busy worker killed (`SIGKILL`) every 1-2 s and replaced: never more than 20
//!   attempts run at once (and 20 do, so the limit binds), and every job completes exactly once.
//! - `*_rate_limit_across_workers`: `--rate 50/1`, three workers: no window of a second holds
//!   more than 50 starts, and the run goes at about 50 a second.
//! - `*_pause_and_resume_across_processes`: jobs dispatched to a paused queue stay pending on
//!   every idle worker; `queue:resume` from another process makes them run at once.
//! - `*_cancel_from_another_process`: `queue:cancel` stops a 30 s attempt running in a worker
//!   within about a second; it is counted as cancelled and not retried.
//! - `*_unique_key_survives_a_killed_worker`: a `--unique-until finished` key stays held while
//!   its job is held by a killed worker and rerun by another; once it completes, the key frees.
//! - `*_concurrent_dispatchers_on_one_key`: eight dispatching processes racing on one key store
//!   one job, and all answer its id.
//!
//! Every wait is bounded; workers are killed when a test ends, also when it fails.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

mod common;
use common::{Sandbox, pause, stop_all};

/// The worker's margin over a job's timeout that makes its lease (`WorkerOptions::lease_grace`).
const LEASE_GRACE: Duration = Duration::from_secs(5);

/// The two timing-bound tests (the concurrency chaos and the rate) each load both cores for
/// seconds; run one at a time, neither measures the other's load.
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Nanoseconds since the Unix epoch: the probe's clock.
fn now_nanos() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is past 1970");
    u64::try_from(since.as_nanos()).expect("before 2554")
}

fn ms(nanos: u64) -> f64 {
    nanos as f64 / 1e6
}

// ---- the probe ----

/// A probe directory in the sandbox, shared by every job given [`Probe::data`].
struct Probe {
    dir: PathBuf,
}

/// One attempt seen by the probe.
#[derive(Debug, Clone)]
struct Attempt {
    pid: u32,
    id: String,
    attempt: u32,
    start: u64,
    /// `None` when its process died first.
    end: Option<u64>,
}

impl Probe {
    fn new(sandbox: &Sandbox) -> Self {
        let dir = sandbox.path("probe");
        std::fs::create_dir_all(&dir).expect("the sandbox is writable");
        Self { dir }
    }

    /// Job data that sleeps `work_ms` and logs to this probe; `extra` adds fields to the job.
    fn data(&self, work_ms: u64, extra: &str) -> String {
        let simulate = serde_json::json!({ "work_ms": work_ms, "probe_dir": self.dir });
        format!(r#"{{{extra}"simulate":{simulate}}}"#)
    }

    /// Every attempt so far, in the order they started.
    fn attempts(&self) -> Vec<Attempt> {
        let text = std::fs::read_to_string(self.dir.join("events")).unwrap_or_default();
        let mut attempts: Vec<Attempt> = Vec::new();
        let mut open: HashMap<(u32, String, u32), usize> = HashMap::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let parsed = (f.len() == 5)
                .then(|| Some((f[1].parse().ok()?, f[2].parse().ok()?, f[4].parse().ok()?)))
                .flatten();
            let Some((at, pid, attempt)) = parsed else { panic!("a bad probe line: {line:?}") };
            let key = (pid, f[3].to_owned(), attempt);
            match f[0] {
                "start" => {
                    open.insert(key, attempts.len());
                    attempts.push(Attempt {
                        pid,
                        id: f[3].to_owned(),
                        attempt,
                        start: at,
                        end: None,
                    });
                }
                "end" => {
                    let i =
                        open.remove(&key).unwrap_or_else(|| panic!("an end without start: {line}"));
                    attempts[i].end = Some(at);
                }
                _ => panic!("a bad probe line: {line:?}"),
            }
        }
        attempts.sort_by_key(|a| a.start);
        attempts
    }

    /// Waits until `done` holds for the attempts; panics after `within`.
    #[track_caller]
    fn wait(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&[Attempt]) -> bool,
    ) -> Vec<Attempt> {
        let deadline = Instant::now() + within;
        loop {
            let attempts = self.attempts();
            if done(&attempts) {
                return attempts;
            }
            assert!(Instant::now() < deadline, "{what}: not within {within:?}: {attempts:#?}");
            pause(Duration::from_millis(20));
        }
    }
}

/// The most attempts running at one instant, and when. An attempt without an end ran until its
/// process was killed (`killed`: pid to the time the kill returned, the process reaped).
fn max_running(attempts: &[Attempt], killed: &HashMap<u32, u64>) -> (usize, u64) {
    let mut edges: Vec<(u64, i32)> = Vec::with_capacity(attempts.len() * 2);
    for a in attempts {
        let end = a.end.or_else(|| killed.get(&a.pid).copied()).unwrap_or_else(|| {
            panic!("an attempt of a live worker never ended: {a:?}");
        });
        edges.push((a.start, 1));
        edges.push((end, -1));
    }
    // At equal times an end goes first: a slot freed and retaken is not two at once.
    edges.sort_unstable();
    let (mut now, mut max, mut at) = (0i32, 0i32, 0);
    for (t, step) in edges {
        now += step;
        if now > max {
            (max, at) = (now, t);
        }
    }
    (usize::try_from(max).unwrap_or(0), at)
}

/// The most starts in any window `[s, s + width)` that begins at a start (the fullest windows
/// do), and where it begins.
fn max_in_window(starts: &[u64], width: u64) -> (usize, u64) {
    let mut best = (0, 0);
    let mut j = 0;
    for (i, &from) in starts.iter().enumerate() {
        while j < starts.len() && starts[j] < from + width {
            j += 1;
        }
        if j - i > best.0 {
            best = (j - i, from);
        }
    }
    best
}

/// A small deterministic generator for the kill schedule; `ORCS_CHAOS_SEED` replays one.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = std::env::var("ORCS_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| now_nanos() % 1_000_000_007);
        eprintln!("CHAOS seed {seed} (ORCS_CHAOS_SEED={seed} replays the schedule)");
        Self(seed.max(1))
    }

    fn below(&mut self, n: u64) -> u64 {
        // xorshift64
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    /// An index below `n`.
    fn pick(&mut self, n: usize) -> usize {
        usize::try_from(self.below(n as u64)).unwrap_or(0)
    }
}

/// The backend a sandbox's commands use, to label the figures each test prints.
fn backend(sandbox: &Sandbox) -> &'static str {
    match sandbox.global.get(3).map(String::as_str) {
        Some(url) if url.starts_with("redis") => "redis",
        Some(url) if url.starts_with("sqlite") => "sqlite",
        Some(_) => "postgres",
        None => "memory",
    }
}

/// `queue:stats Q --json`.
fn stats_of(sandbox: &Sandbox, queue: &str) -> Value {
    sandbox.json(&["queue:stats", queue, "--json"])
}

/// `queue:dispatch JOB --data DATA --json` plus `extra`: (id, duplicate).
#[track_caller]
fn dispatch_one(sandbox: &Sandbox, job: &str, data: &str, extra: &[&str]) -> (String, bool) {
    let mut args = vec!["queue:dispatch", job, "--data", data, "--json"];
    args.extend_from_slice(extra);
    let out = sandbox.json(&args);
    let job = &out["jobs"][0];
    let id = job["id"].as_str().unwrap_or_else(|| panic!("no id: {out}")).to_owned();
    (id, job["duplicate"].as_bool().unwrap_or_else(|| panic!("no duplicate flag: {out}")))
}

// ---- the global concurrency limit under kill -9 ----

/// 1,800 jobs of 50-100 ms (at least 6.75 s of work for 20 slots, so every kill lands on a busy
/// queue), `queue:limit --concurrency 20`, four workers at concurrency 32 (so each alone could
/// take every slot). Every 1-2 s a random worker that is running an attempt is killed with
/// `SIGKILL` and a new one started, 5 times; a killed worker's jobs keep their slots until their leases (1 s timeout + 5 s grace)
/// expire, then run again elsewhere. Checks, from the probe, that at no instant more than 20
/// attempts ran (a killed attempt counted as running until its process was reaped) and that 20
/// did at some point; and from the stats that every job completed exactly once and none failed.
/// `reserved` is reported, not bounded: it also counts jobs whose code has ended and whose
/// completion is being written, which the limit (on running jobs, SPEC 8.2) need not count, and
/// PostgreSQL's claim does not (40 reserved were seen once under CI's load, 20 running).
fn concurrency_limit_under_kill_9(sandbox: &Sandbox) {
    const N: u64 = 1800;
    const LIMIT: usize = 20;
    const KILLS: usize = 5;
    let _heavy = heavy();
    let started = Instant::now();
    let probe = Probe::new(sandbox);
    sandbox.run(&["queue:limit", "reports", "--concurrency", "20"]).ok();
    // Retries to spare: a job whose attempts die with their workers must not fail for good.
    for work_ms in [50, 60, 70, 80, 90, 100] {
        let data = probe.data(work_ms, "");
        sandbox.dispatch("GenerateReportJob", N / 6, &["--data", &data, "--max-retries", "20"]);
    }
    let args = [
        "--queue",
        "reports",
        "--concurrency",
        "32",
        "--timeout",
        "1",
        "--sleep",
        "0.1",
        "--quiet",
    ];
    let mut workers = sandbox.workers(4, &args);
    let mut rng = Rng::new();
    let mut killed: HashMap<u32, u64> = HashMap::new();
    let mut max_reserved = 0;
    while killed.len() < KILLS {
        pause(Duration::from_millis(1000 + rng.below(1000)));
        let totals = sandbox.stats().expect("the backend answers");
        max_reserved = max_reserved.max(totals.reserved);
        // A kill proves something only while jobs wait for the slots.
        if totals.pending == 0 {
            break;
        }
        // A random worker among those running an attempt now, so every kill interrupts one.
        let running: HashSet<u32> =
            probe.attempts().iter().filter(|a| a.end.is_none()).map(|a| a.pid).collect();
        let busy: Vec<usize> =
            (0..workers.len()).filter(|&i| running.contains(&workers[i].pid())).collect();
        let at = if busy.is_empty() { rng.pick(workers.len()) } else { busy[rng.pick(busy.len())] };
        let mut victim = workers.remove(at);
        victim.kill();
        killed.insert(victim.pid(), now_nanos());
        workers.push(sandbox.worker(&args));
    }
    let kills_done = started.elapsed();
    let totals = sandbox.wait_drained(&mut workers, N, Duration::from_secs(45));
    stop_all(&mut workers);
    assert!(totals.drained(N), "{totals:?}");

    let attempts = probe.attempts();
    let (max, at) = max_running(&attempts, &killed);
    let at = ms(at - attempts[0].start);
    let interrupted = attempts.iter().filter(|a| a.end.is_none()).count();
    let done: HashSet<&str> =
        attempts.iter().filter(|a| a.end.is_some()).map(|a| a.id.as_str()).collect();
    eprintln!(
        "{}: {} kills in {kills_done:?}, drained after {:?}: {} attempts ({interrupted} killed), \
         max running {max} (first at {at:.0} ms), max reserved seen {max_reserved}",
        backend(sandbox),
        killed.len(),
        started.elapsed(),
        attempts.len()
    );
    assert!(max <= LIMIT, "{max} attempts ran at once ({at:.0} ms in), over the limit of {LIMIT}");
    assert_eq!(max, LIMIT, "the limit never bound: at most {max} ran at once");
    assert!(killed.len() >= 3, "too few kills to prove anything: {}", killed.len());
    assert!(interrupted > 0, "no kill hit a running attempt");
    assert_eq!(done.len() as u64, N, "every job ran to its end at least once");
}

#[test]
fn redis_concurrency_limit_under_kill_9() {
    let Some(sandbox) = Sandbox::shared_redis() else { return };
    concurrency_limit_under_kill_9(&sandbox);
}

#[test]
fn postgres_concurrency_limit_under_kill_9() {
    let Some(sandbox) = Sandbox::postgres() else { return };
    concurrency_limit_under_kill_9(&sandbox);
}

#[test]
fn sqlite_concurrency_limit_under_kill_9() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    concurrency_limit_under_kill_9(&sandbox);
}

// ---- the rate limit ----

/// How much later than its claim an attempt may log its start (the claim's round trip and the
/// task's start in the worker). The limiter lets each second's starts through in a burst a
/// second after the previous one's, so a few ms of difference in logging within a burst puts up
/// to a burst's worth more starts in an exact 1 s window of the probe (57 seen on an idle
/// machine). A window of the probe's starts is therefore this much narrower than the backend's.
/// (100 ms was not enough on a loaded machine: CI on 2026-12-02 saw 51 SQLite starts in one
/// 900 ms window, a start logged more than 100 ms after its claim. A limiter that lets a
/// second burst through early still shows up to twice the limit in a few ms.)
const START_JITTER: Duration = Duration::from_millis(200);

/// `--rate 50/1` and 300 short jobs for three workers at concurrency 8 (24 slots of 10 ms jobs
/// could start 2,400 a second): no window of a second holds more than 50 starts, and the 300
/// take about 5 s (the first 50 at once, then 50 a second), not much more.
fn rate_limit_across_workers(sandbox: &Sandbox) {
    const N: usize = 300;
    const RATE: usize = 50;
    let _heavy = heavy();
    let probe = Probe::new(sandbox);
    sandbox.run(&["queue:limit", "reports", "--rate", "50/1"]).ok();
    sandbox.dispatch("GenerateReportJob", N as u64, &["--data", &probe.data(10, "")]);
    let mut workers = sandbox
        .workers(3, &["--queue", "reports", "--concurrency", "8", "--sleep", "0.1", "--quiet"]);
    let totals = sandbox.wait_drained(&mut workers, N as u64, Duration::from_secs(30));
    stop_all(&mut workers);
    assert!(totals.drained(N as u64), "{totals:?}");

    let attempts = probe.attempts();
    assert_eq!(attempts.len(), N, "one attempt per job");
    let starts: Vec<u64> = attempts.iter().map(|a| a.start).collect();
    let second = Duration::from_secs(1).as_nanos() as u64;
    let jitter = START_JITTER.as_nanos() as u64;
    let (strict, _) = max_in_window(&starts, second);
    let (max, from) = max_in_window(&starts, second - jitter);
    let span = starts[N - 1] - starts[0];
    // The first RATE start at once; each later second lets RATE more.
    let rate = (N - RATE) as f64 / (span as f64 / 1e9);
    eprintln!(
        "{}: {N} starts over {:.0} ms ({rate:.1}/s after the first {RATE}): max {max} in any \
         {:.0} ms window, {strict} in any 1 s window",
        backend(sandbox),
        ms(span),
        ms(second - jitter)
    );
    assert!(max <= RATE, "{max} starts in the {:.0} ms from {from}", ms(second - jitter));
    // Over the whole run the jitter is small: N starts need (N / RATE - 1) full seconds.
    let least = ((N / RATE - 1) as u64) * second - jitter;
    assert!(span >= least, "{N} starts in {:.0} ms: faster than {RATE}/s", ms(span));
    assert!(rate >= RATE as f64 * 0.8, "the rate limit held the workers back too far: {rate:.1}/s");
}

#[test]
fn redis_rate_limit_across_workers() {
    let Some(sandbox) = Sandbox::shared_redis() else { return };
    rate_limit_across_workers(&sandbox);
}

#[test]
fn postgres_rate_limit_across_workers() {
    let Some(sandbox) = Sandbox::postgres() else { return };
    rate_limit_across_workers(&sandbox);
}

#[test]
fn sqlite_rate_limit_across_workers() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    rate_limit_across_workers(&sandbox);
}

// ---- pause and resume ----

/// Two idle workers; `queue:pause` from another process, then 5 jobs dispatched: for 2 s none
/// starts on either worker (Redis and PostgreSQL wake them for the dispatch; SQLite's poll every
/// 0.2 s), and the stats say paused. `queue:resume` from another process makes all 5 start at
/// once: with `--sleep 10` on Redis and PostgreSQL, within a fraction of the sleep.
fn pause_and_resume_across_processes(sandbox: &Sandbox, sleep: &str) {
    const N: usize = 5;
    let probe = Probe::new(sandbox);
    let mut workers =
        sandbox.workers(2, &["--queue", "reports", "--concurrency", "4", "--sleep", sleep]);
    for w in &mut workers {
        w.wait_output("orcs worker:", Duration::from_secs(10));
    }
    // Let both make their first (empty) claim and go to sleep.
    pause(Duration::from_millis(500));
    sandbox.run(&["queue:pause", "reports"]).ok().stdout_has("paused queue reports");
    sandbox.dispatch("GenerateReportJob", N as u64, &["--data", &probe.data(0, "")]);
    pause(Duration::from_secs(2));
    let held = stats_of(sandbox, "reports");
    assert_eq!(
        (held["paused"].as_bool(), held["pending"].as_u64(), held["reserved"].as_u64()),
        (Some(true), Some(N as u64), Some(0)),
        "{held}"
    );
    assert!(probe.attempts().is_empty(), "a paused queue's job started: {:?}", probe.attempts());

    let resumed = now_nanos();
    sandbox.run(&["queue:resume", "reports"]).ok().stdout_has("resumed queue reports");
    let attempts =
        probe.wait("the resumed jobs starting", Duration::from_secs(5), |a| a.len() == N);
    let last = attempts.iter().map(|a| a.start).max().unwrap_or(0);
    let after = Duration::from_nanos(last.saturating_sub(resumed));
    eprintln!(
        "{}: paused 2 s, nothing ran; after queue:resume all {N} started within {after:?}",
        backend(sandbox)
    );
    assert!(after < Duration::from_secs(2), "resumed jobs started only after {after:?}");
    let totals = sandbox.wait_drained(&mut workers, N as u64, Duration::from_secs(10));
    stop_all(&mut workers);
    assert!(totals.drained(N as u64), "{totals:?}");
}

#[test]
fn redis_pause_and_resume_across_processes() {
    let Some(sandbox) = Sandbox::shared_redis() else { return };
    pause_and_resume_across_processes(&sandbox, "10");
}

#[test]
fn postgres_pause_and_resume_across_processes() {
    let Some(sandbox) = Sandbox::postgres() else { return };
    pause_and_resume_across_processes(&sandbox, "10");
}

#[test]
fn sqlite_pause_and_resume_across_processes() {
    // SQLite has no wake-up between processes: the workers poll.
    let Some(sandbox) = Sandbox::sqlite() else { return };
    pause_and_resume_across_processes(&sandbox, "0.2");
}

// ---- cancel from another process ----

/// A worker runs a 30 s job; `queue:cancel ID` from another process stops it: the attempt ends
/// within about a second (the worker learns of it at its next touch), the worker prints CANCEL
/// for it, the stats count it as cancelled, and it is not retried or failed.
fn cancel_from_another_process(sandbox: &Sandbox) {
    let probe = Probe::new(sandbox);
    let data = probe.data(30_000, r#""to":"a@example.com","#);
    let (id, _) = dispatch_one(sandbox, "SendEmailJob", &data, &[]);
    let mut worker = sandbox.worker(&["--queue", "emails", "--sleep", "0.1", "--json"]);
    probe.wait("the long job starting", Duration::from_secs(10), |a| a.len() == 1);
    // Let it run a little, so the cancel hits a job well under way.
    pause(Duration::from_millis(500));
    let asked = now_nanos();
    sandbox.run(&["queue:cancel", &id]).ok().stdout_has(&format!("{id}: stop requested"));
    let attempts =
        probe.wait("the cancelled attempt ending", Duration::from_secs(5), |a| a[0].end.is_some());
    let ended = attempts[0].end.unwrap_or(0);
    let took = Duration::from_nanos(ended.saturating_sub(asked));
    eprintln!("{}: the attempt ended {took:?} after queue:cancel began", backend(sandbox));
    assert!(took < Duration::from_millis(2500), "the cancel took {took:?}");
    worker.wait_output("CANCEL", Duration::from_secs(5));
    // Time for a retry to show, were there one.
    pause(Duration::from_millis(500));
    worker.stop();
    let lines = common::json_lines(&worker.stdout());
    assert_eq!(lines.len(), 1, "{worker}");
    assert_eq!(
        (lines[0]["id"].as_str(), lines[0]["status"].as_str()),
        (Some(&*id), Some("CANCEL"))
    );
    assert!(worker.stderr().contains("1 cancelled") || worker.stdout().contains("1 cancelled"));
    let emails = stats_of(sandbox, "emails");
    let n = |key: &str| emails[key].as_u64();
    assert_eq!(
        [n("cancelled"), n("pending"), n("delayed"), n("reserved"), n("failed"), n("processed")],
        [Some(1), Some(0), Some(0), Some(0), Some(0), Some(0)],
        "{emails}"
    );
    assert_eq!(probe.attempts().len(), 1, "the cancelled job ran again");
}

#[test]
fn redis_cancel_from_another_process() {
    let Some(sandbox) = Sandbox::shared_redis() else { return };
    cancel_from_another_process(&sandbox);
}

#[test]
fn postgres_cancel_from_another_process() {
    let Some(sandbox) = Sandbox::postgres() else { return };
    cancel_from_another_process(&sandbox);
}

#[test]
fn sqlite_cancel_from_another_process() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    cancel_from_another_process(&sandbox);
}

// ---- a unique key and a killed worker ----

/// A job dispatched with `--unique K --unique-until finished` (1.5 s of work, `--timeout 2`, so a
/// lease of 7 s) is running when its worker is killed (`SIGKILL`). While the job is held by the
/// dead worker, and while a second worker reruns it after the lease expired, a dispatch with K
/// stores nothing and answers the holder's id (a debounced one replaces nothing either). Once the second worker completed it, a dispatch
/// with K stores a new job.
fn unique_key_survives_a_killed_worker(sandbox: &Sandbox) {
    let probe = Probe::new(sandbox);
    let data = probe.data(1500, "");
    let unique = ["--unique", "K", "--unique-until", "finished"];
    let (holder, duplicate) = dispatch_one(sandbox, "GenerateReportJob", &data, &unique);
    assert!(!duplicate);
    let args = ["--queue", "reports", "--timeout", "2", "--sleep", "0.1", "--quiet"];
    let mut first = sandbox.worker(&args);
    probe.wait("the job starting", Duration::from_secs(10), |a| a.len() == 1);
    first.kill();
    let killed_at = Instant::now();

    let (id, duplicate) = dispatch_one(sandbox, "GenerateReportJob", &data, &unique);
    assert_eq!((&*id, duplicate), (&*holder, true), "held by a killed worker");
    // A debounced dispatch leaves the job its dead worker holds alone: it is not waiting.
    let mut debounced = vec!["queue:dispatch", "GenerateReportJob", "--data", &data, "--json"];
    debounced.extend_from_slice(&unique);
    debounced.push("--debounce");
    let out = sandbox.json(&debounced);
    assert_eq!(out["jobs"][0]["id"].as_str(), Some(&*holder), "{out}");
    assert_eq!(out["jobs"][0]["replaced"], false, "{out}");
    let mut second = sandbox.worker(&args);
    let attempts = probe.wait("the rerun starting", Duration::from_secs(20), |a| a.len() == 2);
    let rerun_after = killed_at.elapsed();
    assert_eq!((&*attempts[1].id, attempts[1].attempt), (&*holder, 2), "{attempts:?}");
    // Rerun only once the lease (timeout 2 s + grace) expired.
    assert!(rerun_after + Duration::from_millis(500) >= LEASE_GRACE, "rerun after {rerun_after:?}");
    let dispatched = now_nanos();
    let (id, duplicate) = dispatch_one(sandbox, "GenerateReportJob", &data, &unique);
    let attempts = probe.attempts();
    // Checked only if the rerun was still going when the dispatch began (1.5 s of work).
    assert!(
        attempts[1].end.is_none_or(|end| end > dispatched),
        "the rerun ended before the dispatch began; the machine is too slow for this check"
    );
    assert_eq!((&*id, duplicate), (&*holder, true), "held while rerunning");

    sandbox.wait_for("the rerun completing", Duration::from_secs(10), |t| t.processed == 1);
    second.stop();
    let (id, duplicate) = dispatch_one(sandbox, "GenerateReportJob", &data, &unique);
    assert!(!duplicate && id != holder, "finished: the key is free ({id}, {duplicate})");
    let reports = stats_of(sandbox, "reports");
    assert_eq!(
        (reports["pending"].as_u64(), reports["processed"].as_u64(), reports["failed"].as_u64()),
        (Some(1), Some(1), Some(0)),
        "{reports}"
    );
    eprintln!(
        "{}: the killed worker's job rerun {rerun_after:?} after the kill; key held throughout",
        backend(sandbox)
    );
}

#[test]
fn redis_unique_key_survives_a_killed_worker() {
    let Some(sandbox) = Sandbox::shared_redis() else { return };
    unique_key_survives_a_killed_worker(&sandbox);
}

#[test]
fn postgres_unique_key_survives_a_killed_worker() {
    let Some(sandbox) = Sandbox::postgres() else { return };
    unique_key_survives_a_killed_worker(&sandbox);
}

#[test]
fn sqlite_unique_key_survives_a_killed_worker() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    unique_key_survives_a_killed_worker(&sandbox);
}

// ---- one unique key, many dispatching processes ----

/// Eight `queue:dispatch --unique` processes started together on one key, three rounds: each
/// round stores exactly one job and every process answers its id.
fn concurrent_dispatchers_on_one_key(sandbox: &Sandbox) {
    for round in 0..3 {
        let key = format!("round-{round}");
        let args = ["queue:dispatch", "GenerateReportJob", "--unique", &key, "--json"];
        let mut procs: Vec<_> = (0..8).map(|_| sandbox.spawn(&args, &[])).collect();
        let mut answers = Vec::new();
        for p in &mut procs {
            let status = p.wait(Duration::from_secs(30));
            assert!(status.is_some_and(|s| s.success()), "exit {status:?}: {p}");
            let out: Value = serde_json::from_str(&p.stdout()).expect("JSON");
            answers.push((out["jobs"][0]["id"].clone(), out["jobs"][0]["duplicate"].clone()));
        }
        let ids: HashSet<String> = answers.iter().map(|(id, _)| id.to_string()).collect();
        let stored = answers.iter().filter(|(_, dup)| dup == &Value::Bool(false)).count();
        assert_eq!((ids.len(), stored), (1, 1), "round {round}: {answers:?}");
    }
    assert_eq!(stats_of(sandbox, "reports")["pending"], 3, "one job per round");
}

#[test]
fn redis_concurrent_dispatchers_on_one_key() {
    let Some(sandbox) = Sandbox::shared_redis() else { return };
    concurrent_dispatchers_on_one_key(&sandbox);
}

#[test]
fn postgres_concurrent_dispatchers_on_one_key() {
    let Some(sandbox) = Sandbox::postgres() else { return };
    concurrent_dispatchers_on_one_key(&sandbox);
}

#[test]
fn sqlite_concurrent_dispatchers_on_one_key() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    concurrent_dispatchers_on_one_key(&sandbox);
}
