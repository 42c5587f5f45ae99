//! Issue 15, the rough edges a new user hit, through the binary: closed pipes, which backend a
//! worker uses, Ctrl-C, job lines, help and input, forget/flush, the demo's leftovers, unknown
//! queues, and the database table from the environment or a flag.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{QUEUE_VARS, Run, Sandbox, pause, redis_url, simulate};
use orcs_tests::services::redis::private_server_with_or_skip;

/// Runs a command whose stdout is a pipe nobody reads (`orcs ... | head -1` after head exited).
fn with_closed_stdout(sandbox: &Sandbox, args: &[&str], within: Duration) -> Run {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let mut child = sandbox
        .command(args, &[])
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("the orcs binary runs");
    let deadline = Instant::now() + within;
    while child.try_wait().expect("waits").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            break;
        }
        pause(Duration::from_millis(20));
    }
    Run::new(args, child.wait_with_output().expect("exits"))
}

#[test]
fn a_closed_pipe_ends_commands_quietly() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    sandbox.dispatch(
        "ProcessImageJob",
        3,
        &["--data", r#"{"imageId":"i","simulate":{"fail_attempts":9}}"#, "--max-retries", "0"],
    );
    sandbox.run(&["queue:work", "--queue", "images", "--stop-when-empty", "--quiet"]).ok();
    sandbox.dispatch("GenerateReportJob", 20, &[]);
    for args in [
        &["queue:failed"][..],
        &["queue:failed", "--json"],
        &["queue:stats"],
        &["queue:work", "--queue", "reports", "--stop-when-empty"],
        // A worker that would run forever stops once nobody reads its lines.
        &["queue:work", "--queue", "reports"],
    ] {
        let run = with_closed_stdout(&sandbox, args, Duration::from_secs(20));
        assert_eq!(run.code, Some(0), "{run}");
        assert!(!run.stderr.contains("panicked"), "{run}");
    }
}

#[test]
fn the_worker_and_stats_name_the_sqlite_file_absolutely() {
    let Some(_) = Sandbox::sqlite() else { return };
    let sandbox = Sandbox::new();
    let file = sandbox.path("storage/queue.db").display().to_string();
    let env = [("QUEUE_DRIVER", "database")];
    sandbox
        .run_env(&["queue:stats"], &env)
        .ok()
        .stdout_has("no queues yet")
        .stdout_has(&format!("sqlite://{file}"));
    sandbox
        .run_env(&["queue:work", "--stop-when-empty"], &env)
        .ok()
        .stdout_has(&format!("backend sqlite://{file}"));
}

/// A Redis that may evict keys (any `maxmemory-policy` but `noeviction`) could drop jobs: every
/// command that connects says so on stderr, and says what to set; a `noeviction` one is quiet.
#[test]
fn a_redis_that_may_evict_keys_is_named_on_stderr() {
    if redis_url().is_none() {
        return;
    }
    let Some(evicting) = private_server_with_or_skip(&["--maxmemory-policy", "allkeys-lru"]) else {
        return;
    };
    Sandbox::redis(&evicting)
        .run(&["queue:stats"])
        .ok()
        .stderr_has("maxmemory-policy is allkeys-lru")
        .stderr_has("set maxmemory-policy noeviction");
    let Some(quiet) = private_server_with_or_skip(&[]) else { return };
    let run = Sandbox::redis(&quiet).run(&["queue:stats"]).ok();
    assert!(!run.stderr.contains("maxmemory-policy"), "{run}");
}

#[test]
fn the_worker_names_redis_without_its_password() {
    let Some(url) = redis_url() else { return };
    let sandbox = Sandbox::redis(&url);
    let run = sandbox.run(&["queue:work", "--max-time", "0.2"]).ok();
    let banner = run.stdout.lines().next().unwrap_or_default();
    assert!(banner.contains(&format!("backend {url}")), "{banner}");
    assert!(banner.contains("key prefix orcs-cli-test"), "{banner}");
}

/// A worker running one 30 s job; stopped by `signal` twice: the first says what it waits for,
/// the second stops the job at once.
fn two_signals(signal: &str) {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    sandbox.dispatch("GenerateReportJob", 1, &["--data", &simulate(30_000, 0)]);
    let mut worker =
        sandbox.worker(&["--queue", "reports", "--sleep", "0.1", "--shutdown-timeout", "20"]);
    worker.wait_output("START", Duration::from_secs(10));
    worker.signal(signal);
    worker.wait_output(
        "stopping: waiting up to 20 s for 1 running job; press Ctrl-C again to stop them now",
        Duration::from_secs(2),
    );
    pause(Duration::from_millis(500));
    assert!(worker.running(), "the first signal did not wait for the job: {worker}");
    let asked = Instant::now();
    worker.signal(signal);
    let status = worker.wait(Duration::from_secs(8));
    assert!(status.is_some_and(|s| s.success()), "{status:?}: {worker}");
    assert!(asked.elapsed() < Duration::from_secs(5), "took {:?}", asked.elapsed());
    assert!(worker.stdout().contains("stopping now"), "{worker}");
    assert!(worker.stdout().contains("1 released"), "{worker}");
    let totals = sandbox.stats().expect("stats");
    assert_eq!(
        (totals.pending, totals.reserved),
        (1, 0),
        "the job was not handed back: {totals:?}"
    );
}

#[test]
fn sigint_twice_forces_the_stop() {
    two_signals("INT");
}

#[test]
fn sigterm_twice_forces_the_stop() {
    two_signals("TERM");
}

#[test]
fn the_shutdown_timeout_comes_from_the_flag_the_environment_or_the_file() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    std::fs::create_dir_all(sandbox.path("config")).unwrap();
    std::fs::write(sandbox.path("config/queue.toml"), "[worker]\nshutdown_timeout = 0.5\n")
        .unwrap();
    for env in [&[][..], &[("QUEUE_WORKER_SHUTDOWN_TIMEOUT", "0.25")][..]] {
        sandbox.dispatch("GenerateReportJob", 1, &["--data", &simulate(30_000, 0)]);
        let mut worker =
            sandbox.spawn(&["queue:work", "--queue", "reports", "--sleep", "0.1"], env);
        worker.wait_output("START", Duration::from_secs(10));
        worker.signal("INT");
        let status = worker.wait(Duration::from_secs(6));
        assert!(status.is_some_and(|s| s.success()), "{status:?}: {worker}");
        let expected = if env.is_empty() { "waiting up to 0.5 s" } else { "waiting up to 0.25 s" };
        assert!(worker.stdout().contains(expected), "{worker}");
        assert!(worker.stdout().contains("1 released"), "{worker}");
    }
    sandbox.run(&["queue:work", "--shutdown-timeout", "-1"]).code(2).stderr_has("from 0 to 3600");
    sandbox
        .run_env(&["queue:work"], &[("QUEUE_WORKER_SHUTDOWN_TIMEOUT", "forever")])
        .code(2)
        .stderr_has("QUEUE_WORKER_SHUTDOWN_TIMEOUT");
}

fn is_rfc3339(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 24
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'.'
        && b[23] == b'Z'
        && text[..4].chars().all(|c| c.is_ascii_digit())
}

#[test]
fn job_lines_align_and_use_rfc3339() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    sandbox.dispatch("GenerateReportJob", 2, &[]);
    sandbox.dispatch("SendEmailJob", 2, &["--data", r#"{"to":"a@example.com"}"#]);
    sandbox.dispatch(
        "SendWelcomeEmailJob",
        1,
        &["--data", r#"{"email":"a@example.com","simulate":{"work_ms":1500}}"#],
    );
    let run = sandbox
        .run(&[
            "queue:work",
            "--queue",
            "emails,reports",
            "--stop-when-empty",
            "--concurrency",
            "4",
        ])
        .ok();
    let lines: Vec<&str> = run.stdout.lines().filter(|l| l.starts_with("20")).collect();
    assert_eq!(lines.len(), 6, "5 DONE lines and one START line:\n{}", run.stdout);
    for line in &lines {
        assert!(is_rfc3339(&line[..24]), "{line}");
        assert!(!line.contains('\x1b'), "colour on a pipe: {line:?}");
    }
    // The ids (26 characters) start in the same column on every line, and so do the statuses.
    let column =
        |line: &str, word: &str| line.find(word).unwrap_or_else(|| panic!("{word} in {line}"));
    let id_at: Vec<usize> = lines
        .iter()
        .map(|l| l.split_whitespace().nth(3).map(|id| column(l, id)).unwrap())
        .collect();
    assert!(id_at.windows(2).all(|w| w[0] == w[1]), "ids not aligned:\n{}", lines.join("\n"));
    let done_at: Vec<usize> =
        lines.iter().filter(|l| l.contains(" DONE")).map(|l| column(l, " DONE")).collect();
    assert!(
        done_at.windows(2).all(|w| w[0] == w[1]),
        "statuses not aligned:\n{}",
        lines.join("\n")
    );
    let start = lines.iter().position(|l| l.contains(" START ")).expect("a START line");
    let done = lines
        .iter()
        .position(|l| l.contains("SendWelcomeEmailJob") && l.contains(" DONE"))
        .unwrap();
    assert!(start < done && lines[start].contains("SendWelcomeEmailJob"), "{}", run.stdout);

    // JSON: RFC 3339 too, and the failed set's payload is JSON.
    sandbox.dispatch(
        "ProcessImageJob",
        1,
        &["--data", r#"{"imageId":"img-9","simulate":{"fail_attempts":9}}"#, "--max-retries", "0"],
    );
    let run = sandbox.run(&["queue:work", "--queue", "images", "--stop-when-empty", "--json"]).ok();
    let line = &run.json_lines()[0];
    assert!(is_rfc3339(line["time"].as_str().unwrap()), "{line}");
    let failed = sandbox.json(&["queue:failed", "--json"]);
    let job = &failed[0];
    assert_eq!(job["payload"]["imageId"], "img-9", "{job}");
    assert!(is_rfc3339(job["failed_at"].as_str().unwrap()), "{job}");
    assert!(
        sandbox
            .run(&["queue:failed"])
            .ok()
            .stdout
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains('T') && l.contains('Z'))
    );
}

/// Runs `orcs ARGS` on a pseudo-terminal (`script`), with `input` typed in; `None` without `script`.
fn on_terminal(sandbox: &Sandbox, args: &[&str], env: &[(&str, &str)], input: &str) -> Option<Run> {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("SKIPPING: `script` is not on PATH");
        return None;
    }
    let line = std::iter::once(env!("CARGO_BIN_EXE_orcs"))
        .chain(sandbox.global.iter().map(String::as_str))
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new("script");
    for var in QUEUE_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied())
        .args(["-qec", &line, "/dev/null"])
        .current_dir(&sandbox.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("script runs");
    child.stdin.as_mut().unwrap().write_all(input.as_bytes()).unwrap();
    Some(Run::new(args, child.wait_with_output().unwrap()))
}

#[test]
fn colour_only_on_a_terminal_without_no_color() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    let work = ["queue:work", "--queue", "reports", "--stop-when-empty"];
    sandbox.dispatch("GenerateReportJob", 1, &[]);
    let Some(run) = on_terminal(&sandbox, &work, &[], "") else { return };
    assert!(run.stdout.contains("\x1b[32mDONE"), "no green DONE on a terminal: {run}");
    sandbox.dispatch("GenerateReportJob", 1, &[]);
    let run = on_terminal(&sandbox, &work, &[("NO_COLOR", "1")], "").unwrap();
    assert!(
        run.stdout.contains("DONE") && !run.stdout.contains('\x1b'),
        "colour despite NO_COLOR: {run}"
    );
}

#[test]
fn typos_get_suggestions_and_dispatch_help_lists_the_jobs() {
    let sandbox = Sandbox::new();
    sandbox.run(&["queue:wrok"]).code(2).stderr_has("'queue:work'");
    sandbox
        .run(&["queue:dispatch", "--help"])
        .ok()
        .stdout_has("Registered jobs:")
        .stdout_has("SendEmailJob {to, subject, body, simulate}")
        .stdout_has("ProcessImageJob {imageId, operations, simulate}");
}

#[test]
fn dispatch_data_comes_from_files_and_stdin_and_errors_show_the_fields() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    sandbox
        .run(&["queue:dispatch", "SendEmailJob", "--data", r#"{"subject":"x"}"#])
        .code(2)
        .stderr_has("missing field `to`")
        .stderr_has("takes the fields to, subject, body, simulate");
    std::fs::write(sandbox.path("job.json"), r#"{"to":"file@example.com"}"#).unwrap();
    sandbox
        .run(&["queue:dispatch", "SendEmailJob", "--data", "@job.json"])
        .ok()
        .stdout_has("dispatched SendEmailJob");
    sandbox
        .run(&["queue:dispatch", "SendEmailJob", "--data", "@missing.json"])
        .code(2)
        .stderr_has("--data @missing.json: cannot read the file");
    let mut child = sandbox
        .command(&["queue:dispatch", "SendEmailJob", "--data", "-"], &[])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(br#"{"to":"stdin@example.com"}"#).unwrap();
    Run::new(&["dispatch from stdin"], child.wait_with_output().unwrap()).ok();
    let pending = sandbox.json(&["queue:stats", "emails", "--json"]);
    assert_eq!(pending["pending"], 2, "{pending}");
}

#[test]
fn absurd_durations_are_refused_with_the_range() {
    let sandbox = Sandbox::new();
    sandbox
        .run(&["queue:dispatch", "GenerateReportJob", "--delay", "99999999999999"])
        .code(2)
        .stderr_has("--delay")
        .stderr_has("from 0 to 31536000");
    sandbox
        .run(&["queue:dispatch", "GenerateReportJob", "--retry-delay", "1e12"])
        .code(2)
        .stderr_has("from 0 to 86400");
    sandbox
        .run(&["queue:work", "--timeout", "0"])
        .code(2)
        .stderr_has("--timeout")
        .stderr_has("above 0 and at most 86400");
}

#[test]
fn forget_takes_several_ids_and_flush_asks() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    sandbox.dispatch(
        "ProcessImageJob",
        3,
        &["--data", r#"{"imageId":"i","simulate":{"fail_attempts":9}}"#, "--max-retries", "0"],
    );
    sandbox.run(&["queue:work", "--queue", "images", "--stop-when-empty", "--quiet"]).ok();
    let failed = sandbox.json(&["queue:failed", "--json"]);
    let ids: Vec<&str> =
        failed.as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    sandbox
        .run(&["queue:forget", ids[0], ids[1]])
        .ok()
        .stdout_has(&format!("forgot failed job {}", ids[0]))
        .stdout_has(&format!("forgot failed job {}", ids[1]));
    sandbox
        .run(&["queue:forget", ids[0], ids[2]])
        .code(1)
        .stderr_has(&format!("no failed job with id {}", ids[0]));
    assert_eq!(sandbox.json(&["queue:failed", "--json"]), serde_json::json!([]));

    sandbox.dispatch(
        "ProcessImageJob",
        2,
        &["--data", r#"{"imageId":"i","simulate":{"fail_attempts":9}}"#, "--max-retries", "0"],
    );
    sandbox.run(&["queue:work", "--queue", "images", "--stop-when-empty", "--quiet"]).ok();
    sandbox.run(&["queue:flush"]).code(1).stderr_has("pass --force");
    if let Some(run) = on_terminal(&sandbox, &["queue:flush"], &[], "n\n") {
        run.ok().stdout_has("Delete all 2 failed jobs? [y/N]").stdout_has("nothing flushed");
        assert_eq!(sandbox.json(&["queue:failed", "--json"]).as_array().map(Vec::len), Some(2));
        on_terminal(&sandbox, &["queue:flush"], &[], "y\n")
            .unwrap()
            .ok()
            .stdout_has("flushed 2 failed jobs");
    } else {
        sandbox.run(&["queue:flush", "--force"]).ok().stdout_has("flushed 2 failed jobs");
    }
    assert_eq!(sandbox.json(&["queue:failed", "--json"]), serde_json::json!([]));
}

#[test]
fn the_demo_keeps_to_its_own_queues_and_cleans_up() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    sandbox.run(&["demo"]).ok().stdout_has("demo: stats match").stdout_has("demo: cleaned up");
    assert_eq!(sandbox.json(&["queue:failed", "--json"]), serde_json::json!([]));
    let stats = sandbox.json(&["queue:stats", "--json"]);
    for queue in stats.as_array().unwrap() {
        assert!(queue["queue"].as_str().unwrap().starts_with("demo-"), "{queue}");
        for key in ["pending", "delayed", "reserved", "failed"] {
            assert_eq!(queue[key], 0, "{queue}");
        }
    }
}

#[test]
fn stats_of_an_unknown_queue_lists_the_known_ones() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    sandbox.dispatch("GenerateReportJob", 1, &[]);
    sandbox
        .run(&["queue:stats", "report"])
        .code(1)
        .stderr_has("no queue report exists")
        .stderr_has("the known queues are: reports");
    // A queue that only was paused exists.
    sandbox.run(&["queue:pause", "later"]).ok();
    let later: Value = sandbox.json(&["queue:stats", "later", "--json"]);
    assert_eq!(later["paused"], true);
}

#[test]
fn the_database_table_comes_from_the_environment_or_a_flag() {
    // Two sandboxes: each SQLite file gets one set of tables (two jobs tables sharing the default
    // failed-jobs table in one file trip the database driver's migrations; see the report).
    let (Some(by_env), Some(by_flag)) = (Sandbox::sqlite(), Sandbox::sqlite()) else { return };
    let tables = |sandbox: &Sandbox| {
        let out = Command::new("sqlite3")
            .arg(sandbox.path("queue.db"))
            .arg("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .output()
            .expect("sqlite3 runs");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let env = [("QUEUE_DATABASE_TABLE", "env_jobs")];
    by_env.run_env(&["queue:dispatch", "GenerateReportJob"], &env).ok();
    let pending = by_env.run_env(&["queue:stats", "reports", "--json"], &env).ok();
    assert!(pending.stdout.contains(r#""pending": 1"#), "{pending}");
    let all = tables(&by_env);
    assert!(all.contains(&"env_jobs".to_owned()), "{all:?}");
    assert!(!all.contains(&"jobs".to_owned()), "the default table was used: {all:?}");

    // The flag beats the environment.
    by_flag
        .run_env(
            &["--table", "flag_jobs", "queue:dispatch", "GenerateReportJob", "--count", "2"],
            &env,
        )
        .ok();
    let all = tables(&by_flag);
    assert!(all.contains(&"flag_jobs".to_owned()), "{all:?}");
    assert!(!all.iter().any(|t| t.starts_with("env_jobs") || t == "jobs"), "{all:?}");
    let pending = by_flag.run(&["--table", "flag_jobs", "queue:stats", "reports", "--json"]).ok();
    assert!(pending.stdout.contains(r#""pending": 2"#), "{pending}");
    by_flag
        .run(&["--table", "flag-jobs", "queue:stats"])
        .code(2)
        .stderr_has("use letters, digits and underscores");
}

/// `queue:stats --prune` forgets the queues that are empty and idle (a worked-off one, a paused
/// one without jobs), keeps those holding pending or failed jobs, says which it pruned, then
/// prints the stats; a dispatch brings a pruned queue back from zero.
fn stats_prune_forgets_empty_idle_queues(sandbox: &Sandbox) {
    let names = |stats: &Value| -> Vec<String> {
        let all = stats.as_array().expect("an array of queue stats");
        all.iter().map(|q| q["queue"].as_str().expect("a queue name").to_owned()).collect()
    };
    sandbox.dispatch("GenerateReportJob", 2, &["--data", &simulate(0, 0)]);
    sandbox.run(&["queue:work", "--queue", "reports", "--stop-when-empty", "--quiet"]).ok();
    sandbox.dispatch(
        "ProcessImageJob",
        1,
        &["--data", r#"{"imageId":"i","simulate":{"fail_attempts":9}}"#, "--max-retries", "0"],
    );
    sandbox.run(&["queue:work", "--queue", "images", "--stop-when-empty", "--quiet"]).ok();
    sandbox.dispatch("GenerateReportJob", 1, &["--queue", "waiting"]);
    sandbox.run(&["queue:pause", "later"]).ok();
    assert_eq!(
        names(&sandbox.json(&["queue:stats", "--json"])),
        ["images", "later", "reports", "waiting"]
    );

    let run =
        sandbox.run(&["queue:stats", "--prune"]).ok().stdout_has("pruned 2 queues: later, reports");
    assert!(run.stdout.contains("images") && run.stdout.contains("waiting"), "{run}");
    assert!(!run.stdout.contains("reports ") && !run.stdout.contains("later "), "{run}");
    let run =
        sandbox.run(&["queue:stats", "--prune", "--json"]).ok().stderr_has("nothing to prune");
    let stats: Value = serde_json::from_str(&run.stdout).expect("stdout stays JSON");
    assert_eq!(names(&stats), ["images", "waiting"]);
    sandbox.run(&["queue:stats", "reports", "--prune"]).code(2).stderr_has("--prune");

    // Back from zero: no processed count, no pause.
    sandbox.dispatch("GenerateReportJob", 1, &[]);
    sandbox.run(&["queue:dispatch", "GenerateReportJob", "--queue", "later"]).ok();
    let reports = sandbox.json(&["queue:stats", "reports", "--json"]);
    assert_eq!((reports["pending"].as_u64(), reports["processed"].as_u64()), (Some(1), Some(0)));
    let later = sandbox.json(&["queue:stats", "later", "--json"]);
    assert_eq!((later["pending"].as_u64(), later["paused"].as_bool()), (Some(1), Some(false)));
}

#[test]
fn stats_prune_forgets_empty_idle_queues_on_sqlite() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    stats_prune_forgets_empty_idle_queues(&sandbox);
}

#[test]
fn stats_prune_forgets_empty_idle_queues_on_redis() {
    let Some(sandbox) = Sandbox::shared_redis() else { return };
    stats_prune_forgets_empty_idle_queues(&sandbox);
}
