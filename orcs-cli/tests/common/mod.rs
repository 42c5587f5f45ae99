//! Helpers shared by the black-box tests of the `orcs` binary (`mod common;` in each test file).
//!
//! - [`Sandbox`]: a temporary working directory, a backend (`new` = memory, `sqlite`, `redis`,
//!   `postgres`) and an environment without the queue variables, so the repository's `.env` or
//!   `config/queue.toml` never leak in. [`Sandbox::run`] runs a command to its end (bounded by a
//!   deadline) and returns a [`Run`] to assert on.
//! - Processes: [`Sandbox::spawn`] / [`Sandbox::worker`] / [`Sandbox::workers`] start commands in
//!   the background as [`Proc`]s, whose output goes to files in the sandbox. A `Proc` is killed
//!   (`SIGKILL`) and reaped when dropped, also when the test panics, and a small shell watchdog
//!   kills it if the test process itself dies, so no worker outlives the run.
//! - Counters: [`Sandbox::dispatch`] queues N copies of a job in one command;
//!   [`Sandbox::stats`] sums `queue:stats --json` over every queue into [`Totals`];
//!   [`Sandbox::wait_for`] polls them until a condition holds or a deadline passes;
//!   [`Sandbox::wait_drained`] until N jobs are done, failing at once if a worker exits early.

// Each test file uses its own subset of these helpers.
#![allow(dead_code)]

pub(crate) mod chaos;

use std::fmt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use orcs_tests::services::{skip, unique_name};
use serde_json::Value;

/// The variables removed from every command's environment.
pub(crate) const QUEUE_VARS: &[&str] = &[
    "QUEUE_DRIVER",
    "QUEUE_DEFAULT",
    "QUEUE_WORKER_QUEUES",
    "QUEUE_WORKER_SLEEP",
    "QUEUE_WORKER_MAX_JOBS",
    "QUEUE_MAX_PAYLOAD_BYTES",
    "REDIS_URL",
    "REDIS_PREFIX",
    "REDIS_CA_CERT",
    "DATABASE_URL",
    "QUEUE_DATABASE_TABLE",
    "QUEUE_WORKER_SHUTDOWN_TIMEOUT",
    "QUEUE_FAILED_RETENTION",
    "QUEUE_FAILED_KEEP",
    "NO_COLOR",
    "RUST_LOG",
];

/// How long [`Sandbox::run`] lets a command run before killing it and failing.
pub(crate) const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// The worker's default shutdown timeout (`WorkerOptions::shutdown_timeout`).
pub(crate) const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

// ---- the sandbox ----

/// A temporary working directory and the backend its commands use; the directory (and a
/// PostgreSQL schema of its own) is removed on drop.
pub(crate) struct Sandbox {
    pub(crate) dir: PathBuf,
    /// Global options put before every command (driver, URL).
    pub(crate) global: Vec<String>,
    /// Variables set for every command.
    pub(crate) env: Vec<(String, String)>,
    /// Dropped after the directory: the schema of [`Sandbox::postgres`].
    schema: Option<PgSchema>,
}

impl Sandbox {
    /// A sandbox on the default (memory) driver.
    pub(crate) fn new() -> Self {
        let dir = std::env::temp_dir().join(unique_name("orcs-cli-test"));
        std::fs::create_dir_all(&dir).expect("the temp dir is writable");
        Self { dir, global: Vec::new(), env: Vec::new(), schema: None }
    }

    /// A sandbox whose commands use a fresh SQLite file (`queue.db` in the sandbox), or `None`
    /// (a loud skip) when the binary was built without the database driver.
    pub(crate) fn sqlite() -> Option<Self> {
        if !cfg!(feature = "database") {
            return skip("the database driver", "built without the `database` feature");
        }
        let mut sandbox = Self::new();
        let url = format!("sqlite://{}", sandbox.dir.join("queue.db").display());
        sandbox.global = vec!["--driver".into(), "database".into(), "--url".into(), url];
        Some(sandbox)
    }

    /// A sandbox whose commands use Redis at `url` under a key prefix of their own.
    pub(crate) fn redis(url: &str) -> Self {
        let mut sandbox = Self::new();
        sandbox.global = vec!["--driver".into(), "redis".into(), "--url".into(), url.to_owned()];
        sandbox.env = vec![("REDIS_PREFIX".into(), unique_name("orcs-cli-test"))];
        sandbox
    }

    /// A sandbox on the test Redis ([`redis_url`]), or `None` after a loud skip.
    pub(crate) fn shared_redis() -> Option<Self> {
        redis_url().map(|url| Self::redis(&url))
    }

    /// A sandbox on the test PostgreSQL in a schema of its own (dropped with the sandbox), or
    /// `None` after a loud skip.
    pub(crate) fn postgres() -> Option<Self> {
        let schema = PgSchema::get()?;
        let mut sandbox = Self::new();
        let url = orcs_tests::services::postgres::with_search_path(&schema.url, &schema.schema);
        sandbox.global = vec!["--driver".into(), "database".into(), "--url".into(), url];
        sandbox.schema = Some(schema);
        Some(sandbox)
    }

    /// A path inside the sandbox.
    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// `orcs GLOBAL ARGS` in the sandbox, with the sandbox's environment plus `env`.
    pub(crate) fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orcs"));
        cmd.current_dir(&self.dir).args(&self.global).args(args).stdin(Stdio::null());
        for var in QUEUE_VARS {
            cmd.env_remove(var);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.envs(env.iter().copied());
        cmd
    }

    /// Runs a command to its end; one still running after `within` is killed and reported with
    /// `code: None`.
    pub(crate) fn run_within(&self, args: &[&str], env: &[(&str, &str)], within: Duration) -> Run {
        let mut proc = self.start(args, env);
        let status = proc.wait(within);
        if status.is_none() {
            proc.kill();
        }
        let run = Run {
            args: args.join(" "),
            code: status.and_then(|s| s.code()),
            stdout: proc.stdout(),
            stderr: proc.stderr(),
        };
        // Polls run hundreds of commands; keep the sandbox to the workers' logs.
        let _ = std::fs::remove_file(&proc.stdout);
        let _ = std::fs::remove_file(&proc.stderr);
        run
    }

    /// Runs a command to its end (at most [`RUN_DEADLINE`]) with extra variables.
    pub(crate) fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        self.run_within(args, env, RUN_DEADLINE)
    }

    /// Runs a command to its end (at most [`RUN_DEADLINE`]).
    pub(crate) fn run(&self, args: &[&str]) -> Run {
        self.run_env(args, &[])
    }

    /// Runs a command that must succeed and returns its stdout parsed as JSON.
    #[track_caller]
    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let run = self.run(args).ok();
        serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}):\n{}", run.stdout))
    }

    // ---- processes ----

    /// Starts `orcs GLOBAL ARGS` in the background, its stdout and stderr going to files in the
    /// sandbox.
    pub(crate) fn spawn(&self, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let proc = self.start(args, env);
        watch(proc.pid());
        proc
    }

    /// [`Sandbox::spawn`] without the watchdog, for commands that end by themselves (those of
    /// [`Sandbox::run_within`], e.g. every `queue:stats` poll) and would only add a shell each.
    fn start(&self, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let name = unique_name("proc");
        let (out, err) =
            (self.dir.join(format!("{name}.out")), self.dir.join(format!("{name}.err")));
        let child = self
            .command(args, env)
            .stdout(std::fs::File::create(&out).expect("a log file"))
            .stderr(std::fs::File::create(&err).expect("a log file"))
            .spawn()
            .expect("the orcs binary runs");
        Proc { child, args: args.join(" "), stdout: out, stderr: err }
    }

    /// Starts `orcs queue:work ARGS` in the background, e.g.
    /// `worker(&["--queue", "reports", "--concurrency", "8", "--sleep", "0.1", "--quiet"])`.
    pub(crate) fn worker(&self, args: &[&str]) -> Proc {
        let mut all = vec!["queue:work"];
        all.extend_from_slice(args);
        self.spawn(&all, &[])
    }

    /// Starts `n` workers with the same arguments.
    pub(crate) fn workers(&self, n: usize, args: &[&str]) -> Vec<Proc> {
        (0..n).map(|_| self.worker(args)).collect()
    }

    // ---- jobs and counters ----

    /// `queue:dispatch JOB --count N EXTRA...` (atomic batches of up to 1000), which must
    /// succeed, e.g. `dispatch("GenerateReportJob", 5000, &["--data", &simulate(50, 0)])`.
    #[track_caller]
    pub(crate) fn dispatch(&self, job: &str, count: u64, extra: &[&str]) {
        let count = count.to_string();
        let mut args = vec!["queue:dispatch", job, "--count", &count];
        args.extend_from_slice(extra);
        self.run(&args).ok();
    }

    /// The counters of `queue:stats --json` summed over every queue, or `None` while the
    /// backend does not answer.
    pub(crate) fn stats(&self) -> Option<Totals> {
        let run = self.run_within(&["queue:stats", "--json"], &[], Duration::from_secs(20));
        if run.code != Some(0) {
            return None;
        }
        let queues: Vec<Value> = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("queue:stats --json printed no array ({e}):\n{run}"));
        let mut totals = Totals::default();
        for q in &queues {
            let n = |key: &str| q[key].as_u64().unwrap_or_else(|| panic!("no {key} in {q}"));
            totals.pending += n("pending");
            totals.delayed += n("delayed");
            totals.reserved += n("reserved");
            totals.failed += n("failed");
            totals.processed += n("processed");
            totals.failed_total += n("failed_total");
        }
        Some(totals)
    }

    /// Polls [`Sandbox::stats`] every 100 ms until `done` holds. `Err` carries the last figures
    /// read (`None` if the backend never answered) once `within` has passed.
    pub(crate) fn poll_stats(
        &self,
        within: Duration,
        done: impl Fn(&Totals) -> bool,
    ) -> Result<Totals, Option<Totals>> {
        let deadline = Instant::now() + within;
        let mut last = None;
        loop {
            if let Some(totals) = self.stats() {
                if done(&totals) {
                    return Ok(totals);
                }
                last = Some(totals);
            }
            if Instant::now() >= deadline {
                return Err(last);
            }
            pause(Duration::from_millis(100));
        }
    }

    /// [`Sandbox::poll_stats`] that panics, naming `what` and the last figures, after `within`.
    #[track_caller]
    pub(crate) fn wait_for(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&Totals) -> bool,
    ) -> Totals {
        self.poll_stats(within, done).unwrap_or_else(|last| {
            panic!("{what} did not happen within {within:?}; last stats: {last:?}")
        })
    }

    /// Polls the stats until nothing is waiting or running and `n` jobs were processed or
    /// failed, then returns them. Panics, with the workers' output, when one of `workers` exits
    /// meanwhile (a worker that stops early would otherwise only show as a timeout) or after
    /// `within`.
    #[track_caller]
    pub(crate) fn wait_drained(&self, workers: &mut [Proc], n: u64, within: Duration) -> Totals {
        let deadline = Instant::now() + within;
        loop {
            let step =
                deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(1));
            match self.poll_stats(step, |t| t.idle() && t.processed + t.failed_total >= n) {
                Ok(totals) => return totals,
                Err(last) => {
                    if let Some(dead) = workers.iter_mut().position(|w| !w.running()) {
                        let dead = &workers[dead];
                        panic!("a worker exited before the drain ended ({last:?}): {dead}");
                    }
                    if Instant::now() >= deadline {
                        let all: Vec<String> = workers.iter().map(ToString::to_string).collect();
                        panic!("no drain within {within:?}: {last:?}\n{}", all.join("\n"));
                    }
                }
            }
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Job data for the example jobs: sleep `work_ms` per attempt, fail the first `fail_attempts`.
pub(crate) fn simulate(work_ms: u64, fail_attempts: u32) -> String {
    format!(r#"{{"simulate":{{"work_ms":{work_ms},"fail_attempts":{fail_attempts}}}}}"#)
}

/// The test Redis (`ORCS_TEST_REDIS_URL`, else a `redis-server` started for this test process),
/// or a loud skip.
pub(crate) fn redis_url() -> Option<String> {
    if !cfg!(feature = "redis") {
        return skip("the redis driver", "built without the `redis` feature");
    }
    orcs_tests::services::redis::redis_url_or_skip()
}

/// A `redis-server` of this test's own (on a free loopback port, stopped with the test
/// process), or a loud skip.
pub(crate) fn private_redis_url() -> Option<String> {
    if !cfg!(feature = "redis") {
        return skip("the redis driver", "built without the `redis` feature");
    }
    orcs_tests::services::redis::private_server_or_skip()
}

// ---- a finished command ----

/// The outcome of [`Sandbox::run`].
pub(crate) struct Run {
    pub(crate) args: String,
    /// `None` when killed by a signal or the deadline.
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    pub(crate) fn new(args: &[&str], output: Output) -> Self {
        Self {
            args: args.join(" "),
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub(crate) fn code(self, code: i32) -> Self {
        assert_eq!(self.code, Some(code), "expected exit {code}: {self}");
        self
    }

    #[track_caller]
    pub(crate) fn ok(self) -> Self {
        self.code(0)
    }

    #[track_caller]
    pub(crate) fn stderr_has(self, needle: &str) -> Self {
        assert!(
            self.stderr.contains(needle),
            "`orcs {}`: stderr should contain {needle:?}:\n{}",
            self.args,
            self.stderr
        );
        self
    }

    #[track_caller]
    pub(crate) fn stdout_has(self, needle: &str) -> Self {
        assert!(
            self.stdout.contains(needle),
            "`orcs {}`: stdout should contain {needle:?}:\n{}",
            self.args,
            self.stdout
        );
        self
    }

    /// The JSON objects of `queue:work --json`, one per line.
    pub(crate) fn json_lines(&self) -> Vec<Value> {
        json_lines(&self.stdout)
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`orcs {}` exited {:?}\nstdout:\n{}\nstderr:\n{}",
            self.args, self.code, self.stdout, self.stderr
        )
    }
}

/// Parses one JSON object per line (the output of `queue:work --json`).
pub(crate) fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"))
        })
        .collect()
}

// ---- a background process ----

/// A background `orcs` process; killed (`SIGKILL`) and reaped when dropped.
pub(crate) struct Proc {
    child: Child,
    args: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`"TERM"`, `"INT"`, `"KILL"`, `"STOP"`, ...) without waiting.
    #[track_caller]
    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// `SIGTERM`: a worker stops claiming and finishes or hands back what it holds.
    #[track_caller]
    pub(crate) fn terminate(&self) {
        self.signal("TERM");
    }

    /// `SIGKILL` and reap: the process dies holding whatever it holds.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// True until the process has exited.
    pub(crate) fn running(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    /// Waits up to `within` for the process to exit.
    pub(crate) fn wait(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            pause(Duration::from_millis(20));
        }
    }

    /// Waits until the process has printed `needle` (to stdout or stderr), e.g. a worker's
    /// `orcs worker:` line, printed once it is connected. Panics if it exits first or after
    /// `within`.
    #[track_caller]
    pub(crate) fn wait_output(&mut self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.stdout().contains(needle) && !self.stderr().contains(needle) {
            assert!(self.running(), "exited before printing {needle:?}: {self}");
            assert!(Instant::now() < deadline, "printed no {needle:?} within {within:?}: {self}");
            pause(Duration::from_millis(20));
        }
    }

    /// `SIGTERM`, then waits for an exit 0 (panics with the output otherwise).
    #[track_caller]
    pub(crate) fn stop(&mut self) {
        stop_all(std::slice::from_mut(self));
    }

    /// What it printed so far.
    pub(crate) fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl fmt::Display for Proc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`orcs {}` (pid {})\nstdout:\n{}\nstderr:\n{}",
            self.args,
            self.pid(),
            tail(&self.stdout(), 40),
            tail(&self.stderr(), 40)
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `SIGTERM` to every process, then checks that each exits 0 within the worker's
/// shutdown timeout (plus a margin).
#[track_caller]
pub(crate) fn stop_all(procs: &mut [Proc]) {
    for p in procs.iter() {
        p.terminate();
    }
    for p in procs.iter_mut() {
        let status = p.wait(SHUTDOWN_TIMEOUT + Duration::from_secs(10));
        assert!(status.is_some_and(|s| s.success()), "did not exit 0 on SIGTERM: {status:?}\n{p}");
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A shell loop that kills `pid` if this test process dies first (a panic is handled by
/// [`Proc`]'s drop; this covers a killed or aborted test binary).
fn watch(pid: u32) {
    let script = format!(
        "while kill -0 {parent} 2>/dev/null && kill -0 {pid} 2>/dev/null; do sleep 0.5; done
         kill -0 {parent} 2>/dev/null || kill -9 {pid} 2>/dev/null",
        parent = std::process::id(),
    );
    let _ = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

/// Blocks the calling test thread.
// The tests run on plain threads; blocking is what they do.
#[allow(clippy::disallowed_methods)]
pub(crate) fn pause(d: Duration) {
    std::thread::sleep(d);
}

// ---- the counters ----

/// The counters of `queue:stats --json`, summed over the queues.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) pending: u64,
    pub(crate) delayed: u64,
    pub(crate) reserved: u64,
    pub(crate) failed: u64,
    pub(crate) processed: u64,
    pub(crate) failed_total: u64,
}

impl Totals {
    /// Nothing is waiting or running.
    pub(crate) fn idle(&self) -> bool {
        self.pending == 0 && self.delayed == 0 && self.reserved == 0
    }

    /// Exactly `n` jobs completed and nothing is waiting, running or failed.
    pub(crate) fn drained(&self, n: u64) -> bool {
        self.idle() && self.processed == n && self.failed == 0 && self.failed_total == 0
    }
}

// ---- PostgreSQL ----

/// A schema of its own on the test PostgreSQL (made and dropped with `psql`), so a test can
/// share the server with other tests.
pub(crate) struct PgSchema {
    pub(crate) url: String,
    pub(crate) schema: String,
}

impl PgSchema {
    /// A new schema, or `None` after a loud skip.
    pub(crate) fn get() -> Option<Self> {
        if !cfg!(feature = "database") {
            return skip("the database driver", "built without the `database` feature");
        }
        let url = orcs_tests::services::postgres::database_url_or_skip()?;
        let schema = unique_name("orcs_test");
        match psql(&url, &format!("CREATE SCHEMA \"{schema}\"")) {
            Ok(()) => Some(Self { url, schema }),
            Err(why) => skip("PostgreSQL", &why),
        }
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let _ = psql(&self.url, &format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema));
    }
}

/// Runs one SQL statement with `psql`.
pub(crate) fn psql(url: &str, sql: &str) -> Result<(), String> {
    let output = Command::new("psql")
        .args([url, "-qtAc", sql])
        .output()
        .map_err(|e| format!("psql is not on PATH ({e})"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("psql failed: {}", String::from_utf8_lossy(&output.stderr).trim()))
    }
}
