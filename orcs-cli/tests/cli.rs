//! The `orcs` binary as a black box: arguments, exit codes, text and JSON output, and the whole
//! dispatch → work → failed-job round trip on the database driver (SQLite) and on Redis.
//!
//! Every run gets its own temporary working directory and an environment without the queue
//! variables, so the repository's `.env` or `config/queue.toml` never leak in.

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{QUEUE_VARS, Run, Sandbox, redis_url};

fn statuses(lines: &[Value], job: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l["job"] == job)
        .map(|l| l["status"].as_str().unwrap_or_default().to_owned())
        .collect()
}

// ---- usage and configuration errors: exit 2 ----

#[test]
fn help_lists_every_command() {
    let run = Sandbox::new().run(&["--help"]).ok();
    for command in [
        "queue:work",
        "queue:stats",
        "queue:clear",
        "queue:dispatch",
        "queue:failed",
        "queue:retry",
        "queue:forget",
        "queue:flush",
        "demo",
    ] {
        assert!(run.stdout.contains(command), "help lacks {command}:\n{}", run.stdout);
    }
}

#[test]
fn unknown_command_exits_2() {
    Sandbox::new().run(&["queue:frobnicate"]).code(2).stderr_has("queue:frobnicate");
    Sandbox::new().run(&[]).code(2);
}

#[test]
fn invalid_worker_options_exit_2_naming_the_option() {
    let sandbox = Sandbox::new();
    sandbox.run(&["queue:work", "--sleep", "soon"]).code(2).stderr_has("--sleep");
    sandbox.run(&["queue:work", "--sleep", "-1"]).code(2).stderr_has("--sleep");
    sandbox.run(&["queue:work", "--concurrency", "0"]).code(2).stderr_has("--concurrency");
    sandbox.run(&["queue:work", "--concurrency", "many"]).code(2).stderr_has("--concurrency");
    sandbox.run(&["queue:work", "--max-jobs", "ten"]).code(2).stderr_has("--max-jobs");
    sandbox.run(&["queue:work", "--queue", "a,,b"]).code(2).stderr_has("invalid queue name");
    sandbox.run(&["queue:work", "--quiet", "--json"]).code(2);
    sandbox
        .run(&["--driver", "kafka", "queue:stats"])
        .code(2)
        .stderr_has("memory, redis, database");
}

#[test]
fn unknown_queue_driver_in_the_environment_exits_2() {
    Sandbox::new()
        .run_env(&["queue:stats"], &[("QUEUE_DRIVER", "kafka")])
        .code(2)
        .stderr_has("QUEUE_DRIVER")
        .stderr_has("memory, redis, database");
    Sandbox::new()
        .run_env(&["queue:work", "--once"], &[("QUEUE_WORKER_SLEEP", "soon")])
        .code(2)
        .stderr_has("QUEUE_WORKER_SLEEP");
}

#[test]
fn broken_config_files_exit_2_naming_the_file() {
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.path("config")).unwrap();
    std::fs::write(sandbox.path("config/queue.toml"), "driver = 3\n").unwrap();
    sandbox.run(&["queue:stats"]).code(2).stderr_has("config/queue.toml");

    std::fs::write(sandbox.path("other.toml"), "[worker]\nslep = 3\n").unwrap();
    sandbox.run(&["--config", "other.toml", "queue:stats"]).code(2).stderr_has("slep");
    sandbox.run(&["--config", "missing.toml", "queue:stats"]).code(2).stderr_has("missing.toml");
}

#[test]
fn a_broken_env_file_exits_2() {
    let sandbox = Sandbox::new();
    std::fs::write(sandbox.path(".env"), "QUEUE_DRIVER='unterminated\n").unwrap();
    sandbox.run(&["queue:stats"]).code(2).stderr_has(".env");
}

#[test]
fn precedence_is_flag_then_env_then_file() {
    let Some(_) = Sandbox::sqlite() else { return };
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.path("config")).unwrap();
    std::fs::write(sandbox.path("config/queue.toml"), "driver = \"database\"\n").unwrap();
    std::fs::write(sandbox.path(".env"), "DATABASE_URL=sqlite://from-env.db\n").unwrap();
    // The file says database; the .env file gives its URL.
    sandbox.run(&["queue:stats"]).ok();
    assert!(sandbox.path("from-env.db").exists(), "DATABASE_URL from .env was not used");
    // The environment beats the file, and the flag beats the environment.
    sandbox
        .run_env(&["queue:work", "--stop-when-empty"], &[("QUEUE_DRIVER", "memory")])
        .ok()
        .stdout_has("driver memory");
    sandbox
        .run_env(
            &["--driver", "memory", "queue:work", "--stop-when-empty"],
            &[("QUEUE_DRIVER", "database")],
        )
        .ok()
        .stdout_has("driver memory");
    sandbox
        .run_env(
            &["queue:work", "--stop-when-empty", "--queue", "x"],
            &[("QUEUE_WORKER_QUEUES", "a,b")],
        )
        .ok()
        .stdout_has("queues x,");
    sandbox
        .run_env(&["queue:work", "--stop-when-empty"], &[("QUEUE_WORKER_QUEUES", "a,b")])
        .ok()
        .stdout_has("queues a,b,");
}

#[test]
fn dispatch_rejects_unknown_jobs_and_bad_data_with_exit_2() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    sandbox
        .run(&["queue:dispatch", "NoSuchJob"])
        .code(2)
        .stderr_has("unknown job \"NoSuchJob\"")
        .stderr_has("SendEmailJob, SendWelcomeEmailJob");
    sandbox.run(&["queue:dispatch", "SendEmailJob", "--data", "{to:"]).code(2).stderr_has("JSON");
    sandbox.run(&["queue:dispatch", "SendEmailJob", "--data", "[1]"]).code(2).stderr_has("object");
    sandbox
        .run(&["queue:dispatch", "SendEmailJob", "--data", "{}"])
        .code(2)
        .stderr_has("missing field `to`");
    sandbox
        .run(&[
            "queue:dispatch",
            "SendEmailJob",
            "--data",
            r#"{"to":"a@b.c","simulate":{"wrok_ms":1}}"#,
        ])
        .code(2)
        .stderr_has("wrok_ms");
    sandbox
        .run(&["queue:dispatch", "SendEmailJob", "--data", r#"{"to":"a@b.c"}"#, "--count", "0"])
        .code(2);
    sandbox
        .run(&["queue:dispatch", "SendEmailJob", "--data", r#"{"to":"a@b.c"}"#, "--queue", "a b"])
        .code(2)
        .stderr_has("invalid queue name");
    // Nothing was stored by any of these.
    assert_eq!(sandbox.json(&["queue:stats", "--json"]), serde_json::json!([]));
}

#[test]
fn dispatch_on_the_memory_driver_is_refused() {
    Sandbox::new()
        .run(&["queue:dispatch", "SendEmailJob", "--data", r#"{"to":"a@b.c"}"#])
        .code(2)
        .stderr_has("memory driver")
        .stderr_has("redis or database");
}

// ---- the memory driver ----

#[test]
fn stats_on_an_empty_memory_driver() {
    let sandbox = Sandbox::new();
    assert_eq!(sandbox.json(&["queue:stats", "--json"]), serde_json::json!([]));
    sandbox.run(&["queue:stats"]).ok().stdout_has("no queues yet");
    // A queue that never held a job is a typo, not an idle queue.
    sandbox
        .run(&["queue:stats", "emails", "--json"])
        .code(1)
        .stderr_has("no queue emails exists")
        .stderr_has("none yet");
    sandbox.run(&["queue:stats", "{bad}"]).code(2).stderr_has("invalid queue name");
}

#[test]
fn work_on_the_memory_driver_warns_that_other_processes_are_invisible() {
    Sandbox::new()
        .run(&["queue:work", "--stop-when-empty"])
        .ok()
        .stderr_has("cannot see jobs dispatched by other processes")
        .stdout_has("driver memory, queues default, concurrency 1");
    Sandbox::new().run(&["queue:work", "--once"]).ok().stdout_has("no job was ready");
}

#[test]
fn clear_without_force_refuses_when_stdin_is_not_a_terminal() {
    Sandbox::new()
        .run(&["queue:clear", "emails"])
        .code(1)
        .stderr_has("refusing to clear queue emails")
        .stderr_has("--force");
    Sandbox::new()
        .run(&["queue:clear", "--force"])
        .ok()
        .stdout_has("cleared 0 jobs from queue default");
}

#[test]
fn demo_matches_its_stats() {
    let started = Instant::now();
    let run = Sandbox::new().run(&["demo"]).ok().stdout_has("demo: stats match the dispatched mix");
    for queue in ["high-priority", "emails", "images", "reports"] {
        assert!(run.stdout.contains(queue), "the demo's table lacks {queue}:\n{}", run.stdout);
    }
    assert!(started.elapsed() < Duration::from_secs(20), "the demo took {:?}", started.elapsed());
}

#[test]
fn demo_runs_on_the_database_driver_too() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    sandbox.run(&["demo"]).ok().stdout_has("demo: stats match the dispatched mix");
    // Its counters persist, and a second run compares differences.
    sandbox.run(&["demo"]).ok().stdout_has("demo: stats match the dispatched mix");
}

// ---- the full round trip on a persistent driver ----

/// dispatch → stats → work → failed → retry / forget / flush → clear, on one backend.
fn round_trip(sandbox: &Sandbox) {
    let dispatched = sandbox.json(&[
        "queue:dispatch",
        "SendEmailJob",
        "--data",
        r#"{"to":"user@example.com","subject":"Welcome!"}"#,
        "--count",
        "3",
        "--json",
    ]);
    assert_eq!(dispatched["queue"], "emails");
    assert_eq!(dispatched["ids"].as_array().map(Vec::len), Some(3));
    // Fails once, then succeeds at once (no backoff).
    sandbox
        .run(&[
            "queue:dispatch",
            "SendWelcomeEmailJob",
            "--data",
            r#"{"email":"new@example.com","simulate":{"fail_attempts":1}}"#,
            "--retry-delay",
            "0",
        ])
        .ok()
        .stdout_has("dispatched SendWelcomeEmailJob");
    // Fails for good on its only attempt.
    let doomed = sandbox.json(&[
        "queue:dispatch",
        "ProcessImageJob",
        "--data",
        r#"{"imageId":"img-1","simulate":{"fail_attempts":99}}"#,
        "--max-retries",
        "0",
        "--json",
    ]);
    let doomed_id = doomed["ids"][0].as_str().expect("an id").to_owned();
    // Delayed well past this test: stays delayed.
    sandbox
        .run(&["queue:dispatch", "GenerateReportJob", "--delay", "3600", "--priority", "-3"])
        .ok()
        .stdout_has("to queue reports");

    let stats = sandbox.json(&["queue:stats", "--json"]);
    let by_queue = |name: &str| {
        stats
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["queue"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("queue:stats --json lacks {name}: {stats}"))
    };
    assert_eq!(by_queue("emails")["pending"], 4);
    assert_eq!(by_queue("images")["pending"], 1);
    assert_eq!(by_queue("reports")["delayed"], 1);
    let emails = sandbox.json(&["queue:stats", "emails", "--json"]);
    assert!(emails.is_object(), "{emails}");
    assert_eq!(emails["pending"], 4);
    sandbox.run(&["queue:stats"]).ok().stdout_has("failed_total").stdout_has("emails");

    let work = sandbox
        .run(&["queue:work", "--queue", "emails,images,reports", "--stop-when-empty", "--json"])
        .ok();
    let lines = work.json_lines();
    assert_eq!(statuses(&lines, "SendEmailJob"), ["DONE", "DONE", "DONE"]);
    assert_eq!(statuses(&lines, "SendWelcomeEmailJob"), ["RETRY", "DONE"]);
    assert_eq!(statuses(&lines, "ProcessImageJob"), ["FAIL"]);
    assert!(statuses(&lines, "GenerateReportJob").is_empty(), "the delayed job ran");
    let fail = lines.iter().find(|l| l["status"] == "FAIL").unwrap();
    assert_eq!(fail["id"], doomed_id.as_str());
    assert!(fail["error"].as_str().unwrap().contains("simulated failure"), "{fail}");
    assert!(fail["duration_ms"].is_number());

    let emails = sandbox.json(&["queue:stats", "emails", "--json"]);
    assert_eq!((emails["pending"].as_u64(), emails["processed"].as_u64()), (Some(0), Some(4)));

    let failed = sandbox.json(&["queue:failed", "--json"]);
    let failed = failed.as_array().unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["id"], doomed_id.as_str());
    assert_eq!(failed[0]["queue"], "images");
    assert_eq!(failed[0]["name"], "ProcessImageJob");
    assert_eq!(failed[0]["attempts"], 1);
    assert_eq!(
        sandbox.json(&["queue:failed", "--queue", "emails", "--json"]),
        serde_json::json!([])
    );
    sandbox.run(&["queue:failed"]).ok().stdout_has(&doomed_id).stdout_has("ProcessImageJob");

    // Retry one id: back on its queue; it fails again when worked.
    sandbox.run(&["queue:retry", &doomed_id]).ok().stdout_has("retried job");
    assert_eq!(sandbox.json(&["queue:stats", "images", "--json"])["pending"], 1);
    assert_eq!(sandbox.json(&["queue:failed", "--json"]), serde_json::json!([]));
    let once = sandbox.run(&["queue:work", "--queue", "images", "--once"]).ok();
    assert!(
        once.stdout.lines().any(|l| l.contains("ProcessImageJob")
            && l.contains(&doomed_id)
            && l.contains(" FAIL")
            && l.starts_with("20")),
        "no FAIL line for the retried job:\n{}",
        once.stdout
    );
    sandbox
        .run(&["queue:retry", "01NOSUCHJOB0000000000000000"])
        .code(1)
        .stderr_has("no failed job");

    // Forget it; forgetting it again is an unknown id.
    sandbox.run(&["queue:forget", &doomed_id]).ok();
    sandbox.run(&["queue:forget", &doomed_id]).code(1).stderr_has("queue:failed");
    assert_eq!(sandbox.json(&["queue:failed", "--json"]), serde_json::json!([]));

    // Two more failures: `retry all`, work them to failure again, then flush.
    sandbox
        .run(&[
            "queue:dispatch",
            "ProcessImageJob",
            "--data",
            r#"{"imageId":"img-2","simulate":{"fail_attempts":99}}"#,
            "--max-retries",
            "0",
            "--count",
            "2",
        ])
        .ok();
    sandbox.run(&["queue:work", "--queue", "images", "--stop-when-empty", "--quiet"]).ok();
    assert_eq!(sandbox.json(&["queue:failed", "--json"]).as_array().map(Vec::len), Some(2));
    sandbox.run(&["queue:retry", "all", "--queue", "images"]).ok().stdout_has("retried 2");
    sandbox.run(&["queue:retry", "all", "x"]).code(2);
    sandbox.run(&["queue:work", "--queue", "images", "--max-jobs", "2", "--quiet"]).ok();
    sandbox.run(&["queue:flush"]).code(1).stderr_has("pass --force");
    sandbox.run(&["queue:flush", "--force"]).ok().stdout_has("flushed 2 failed jobs");
    assert_eq!(sandbox.json(&["queue:failed", "--json"]), serde_json::json!([]));
    let images = sandbox.json(&["queue:stats", "images", "--json"]);
    assert_eq!((images["failed"].as_u64(), images["failed_total"].as_u64()), (Some(0), Some(6)));

    // Clear removes pending and delayed jobs and says how many.
    sandbox.run(&["queue:dispatch", "GenerateReportJob", "--count", "2"]).ok();
    sandbox.run(&["queue:clear", "reports"]).code(1).stderr_has("--force");
    sandbox
        .run(&["queue:clear", "reports", "--force"])
        .ok()
        .stdout_has("cleared 3 jobs from queue reports");
    let reports = sandbox.json(&["queue:stats", "reports", "--json"]);
    assert_eq!((reports["pending"].as_u64(), reports["delayed"].as_u64()), (Some(0), Some(0)));
}

/// `queue:failed` pages: `--limit` and `--offset` cut the oldest-first list, `--json` prints just
/// the page, and the text ends with how many of the total are shown and how to see more.
fn failed_paging(sandbox: &Sandbox) {
    sandbox
        .run(&[
            "queue:dispatch",
            "ProcessImageJob",
            "--data",
            r#"{"imageId":"img-p","simulate":{"fail_attempts":99}}"#,
            "--max-retries",
            "0",
            "--count",
            "5",
        ])
        .ok();
    sandbox.run(&["queue:work", "--queue", "images", "--stop-when-empty", "--quiet"]).ok();
    let ids = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["queue:failed", "--json"];
        all.extend_from_slice(args);
        let page = sandbox.json(&all);
        let page = page.as_array().unwrap_or_else(|| panic!("{all:?} printed no array: {page}"));
        page.iter().map(|j| j["id"].as_str().expect("an id").to_owned()).collect()
    };
    let every = ids(&[]);
    assert_eq!(every.len(), 5, "{every:?}");
    let mut pages = ids(&["--limit", "2"]);
    assert_eq!(pages.len(), 2);
    pages.extend(ids(&["--limit", "2", "--offset", "2"]));
    pages.extend(ids(&["--limit", "2", "--offset", "4"]));
    assert_eq!(pages, every, "the pages, in order, are the whole list, oldest first");
    assert!(ids(&["--offset", "5"]).is_empty());
    assert_eq!(ids(&["--queue", "images", "--limit", "3", "--offset", "1"]), every[1..4]);
    assert!(ids(&["--queue", "emails"]).is_empty());

    sandbox
        .run(&["queue:failed", "--limit", "2"])
        .ok()
        .stdout_has(&every[0])
        .stdout_has(&every[1])
        .stdout_has("showing failed jobs 1-2 of 5; see the next page with --offset 2 --limit 2");
    let last = sandbox.run(&["queue:failed", "--limit", "2", "--offset", "4"]).ok();
    assert!(!last.stdout.contains(&every[3]), "{}", last.stdout);
    let footer = last.stdout.lines().last().unwrap_or_default();
    assert_eq!(
        footer, "showing failed job 5 of 5",
        "no next page after the last:\n{}",
        last.stdout
    );
    sandbox.run(&["queue:failed"]).ok().stdout_has("showing failed jobs 1-5 of 5");
    sandbox.run(&["queue:failed", "--queue", "images", "--limit", "1"]).ok().stdout_has(
        "showing failed job 1 of 5 in queue images; see the next page with --offset 1 --limit 1",
    );
    sandbox
        .run(&["queue:failed", "--offset", "9"])
        .ok()
        .stdout_has("no failed jobs at offset 9: there are 5; use an --offset below 5");
    sandbox
        .run(&["queue:failed", "--queue", "emails"])
        .ok()
        .stdout_has("no failed jobs in queue emails");
    sandbox.run(&["queue:failed", "--limit", "0"]).code(2).stderr_has("--limit");
    sandbox.run(&["queue:failed", "--offset", "-1"]).code(2).stderr_has("--offset");
}

#[test]
fn failed_jobs_are_paged_on_sqlite() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    failed_paging(&sandbox);
}

#[test]
fn failed_jobs_are_paged_on_redis() {
    let Some(url) = redis_url() else { return };
    failed_paging(&Sandbox::redis(&url));
}

#[test]
fn round_trip_on_sqlite() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    round_trip(&sandbox);
}

#[test]
fn dispatch_count_is_batched_and_default_timeout_applies() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    let out = sandbox.json(&["queue:dispatch", "GenerateReportJob", "--count", "2500", "--json"]);
    let ids = out["ids"].as_array().unwrap();
    assert_eq!(ids.len(), 2500);
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 2500, "ids repeat");
    assert_eq!(sandbox.json(&["queue:stats", "reports", "--json"])["pending"], 2500);
    sandbox.run(&["queue:clear", "reports", "--force"]).ok().stdout_has("cleared 2500");

    // GenerateReportJob has no TIMEOUT of its own, so --timeout limits it.
    sandbox
        .run(&[
            "queue:dispatch",
            "GenerateReportJob",
            "--data",
            r#"{"simulate":{"work_ms":30000}}"#,
        ])
        .ok();
    let started = Instant::now();
    sandbox
        .run(&["queue:work", "--queue", "reports", "--once", "--timeout", "0.2"])
        .ok()
        .stdout_has("RETRY")
        .stdout_has("timed out");
    assert!(started.elapsed() < Duration::from_secs(15), "the timeout did not cut the job short");
}

#[test]
fn work_stops_gracefully_on_sigterm() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    sandbox
        .run(&["queue:dispatch", "GenerateReportJob", "--data", r#"{"simulate":{"work_ms":300}}"#])
        .ok();
    let mut child = sandbox
        .command(&["queue:work", "--queue", "reports", "--sleep", "0.1"], &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the worker starts");
    // Read the worker's lines until the job is done, then ask it to stop.
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
    let mut seen = String::new();
    while !seen.contains(" DONE") {
        let mut line = String::new();
        if stdout.read_line(&mut line).expect("stdout is readable") == 0 {
            panic!("the worker exited before finishing the job:\n{seen}");
        }
        seen.push_str(&line);
    }
    let killed =
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill runs");
    assert!(killed.success());
    stdout.read_to_string(&mut seen).expect("stdout is readable");
    let status = child.wait().expect("the worker exits");
    assert_eq!(status.code(), Some(0), "the worker did not exit 0 on SIGTERM:\n{seen}");
    assert!(seen.contains("GenerateReportJob"), "{seen}");
    assert!(seen.contains("orcs worker stopped: 1 done"), "{seen}");
}

#[test]
fn unreachable_backends_exit_1() {
    let Some(_) = Sandbox::sqlite() else { return };
    let sandbox = Sandbox::new();
    // A directory cannot be opened as a SQLite file.
    std::fs::create_dir_all(sandbox.path("dir.db")).unwrap();
    let url = format!("sqlite://{}", sandbox.path("dir.db").display());
    sandbox
        .run(&["--driver", "database", "--url", &url, "queue:stats"])
        .code(1)
        .stderr_has("database driver");
    sandbox
        .run(&["--driver", "database", "--url", "mysql://x", "queue:stats"])
        .code(2)
        .stderr_has("DATABASE_URL");
}

#[test]
fn round_trip_on_redis() {
    let Some(url) = redis_url() else { return };
    round_trip(&Sandbox::redis(&url));
}

#[test]
fn demo_runs_on_redis() {
    let Some(url) = redis_url() else { return };
    let sandbox = Sandbox::redis(&url);
    sandbox.run(&["demo"]).ok().stdout_has("demo: stats match the dispatched mix");
}

#[test]
fn demo_runs_on_a_redis_cluster() {
    if !cfg!(feature = "redis") {
        orcs_tests::services::skip::<()>("the redis driver", "built without the `redis` feature");
        return;
    }
    let Some(url) = orcs_tests::services::redis::redis_cluster_url_or_skip() else { return };
    let sandbox = Sandbox::redis(&url);
    sandbox.run(&["demo"]).ok().stdout_has("demo: stats match the dispatched mix");
}

#[test]
fn redis_errors_name_the_url() {
    let Some(_) = redis_url() else { return };
    let sandbox = Sandbox::new();
    sandbox
        .run(&["--driver", "redis", "--url", "http://127.0.0.1:1/", "queue:stats"])
        .code(2)
        .stderr_has("REDIS_URL");
    // Nothing listens on port 1.
    sandbox
        .run(&["--driver", "redis", "--url", "redis://127.0.0.1:1/", "queue:stats"])
        .code(1)
        .stderr_has("redis driver at redis://127.0.0.1:1/");
}

#[test]
fn clear_asks_on_a_terminal() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    // `script` (util-linux) gives the command a pseudo-terminal and forwards our stdin to it.
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("SKIPPING clear_asks_on_a_terminal: `script` is not on PATH");
        return;
    }
    let ask = |answer: &str| {
        let line = std::iter::once(env!("CARGO_BIN_EXE_orcs"))
            .chain(sandbox.global.iter().map(String::as_str))
            .chain(["queue:clear", "reports"])
            .collect::<Vec<_>>()
            .join(" ");
        let mut child = Command::new("script");
        for var in QUEUE_VARS {
            child.env_remove(var);
        }
        child
            .args(["-qec", &line, "/dev/null"])
            .current_dir(&sandbox.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = child.spawn().expect("script runs");
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), answer.as_bytes()).unwrap();
        Run::new(&["queue:clear (terminal)"], child.wait_with_output().unwrap())
    };
    sandbox.run(&["queue:dispatch", "GenerateReportJob", "--count", "2"]).ok();
    // "n" is an answer, not an error.
    ask("n\n").ok().stdout_has("[y/N]").stdout_has("nothing cleared");
    assert_eq!(sandbox.json(&["queue:stats", "reports", "--json"])["pending"], 2);
    ask("y\n").ok().stdout_has("cleared 2 jobs from queue reports");
    assert_eq!(sandbox.json(&["queue:stats", "reports", "--json"])["pending"], 0);
}

#[test]
fn work_stops_after_max_time() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    let started = Instant::now();
    sandbox
        .run(&["queue:work", "--max-time", "0.3", "--sleep", "0.05"])
        .ok()
        .stdout_has("driver database, queues default, concurrency 1")
        .stdout_has("orcs worker stopped: 0 done");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

#[test]
fn round_trip_on_postgres() {
    let Some(sandbox) = Sandbox::postgres() else { return };
    round_trip(&sandbox);
}

#[test]
fn database_tables_come_from_the_config_file() {
    let Some(_) = Sandbox::sqlite() else { return };
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.path("config")).unwrap();
    std::fs::write(
        sandbox.path("config/queue.toml"),
        "driver = \"database\"\n[database]\nurl = \"sqlite://app.db\"\ntable = \"app_jobs\"\nfailed_table = \"app_failed\"\n",
    )
    .unwrap();
    sandbox.dispatch("GenerateReportJob", 3, &[]);
    sandbox.run(&["queue:work", "--queue", "reports", "--stop-when-empty"]).ok();
    let totals = sandbox.stats().expect("stats");
    assert_eq!((totals.processed, totals.pending), (3, 0), "{totals:?}");

    let tables = Command::new("sqlite3")
        .arg(sandbox.path("app.db"))
        .arg("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .output()
        .expect("sqlite3 runs");
    let tables = String::from_utf8_lossy(&tables.stdout).into_owned();
    let tables: Vec<&str> = tables.split_whitespace().collect();
    for table in ["app_failed", "app_jobs", "app_jobs_counters"] {
        assert!(tables.contains(&table), "no table {table}: {tables:?}");
    }
    // The driver's other tables (metadata, migrations) are named after the jobs table too.
    assert!(
        tables.iter().all(|t| *t == "app_failed" || t.starts_with("app_jobs")),
        "a table not named after the configured ones: {tables:?}"
    );

    std::fs::write(sandbox.path("config/queue.toml"), "[database]\ntable = \"app-jobs\"\n")
        .unwrap();
    sandbox
        .run(&["--driver", "database", "queue:stats"])
        .code(2)
        .stderr_has("\"app-jobs\": use letters, digits and underscores");
}
