//! Issue 13 (SPEC 8.5) through the binary: `queue:list`, `queue:show`, `queue:delete`,
//! `queue:workers`, `queue:prune`, the failed-job retention, `latency_ms` in the stats and the
//! `/metrics` endpoint of `queue:work --metrics`, on SQLite and on Redis (and the endpoint on the
//! memory driver, whose worker is its only process).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{Proc, Sandbox, pause, redis_url, simulate};

/// Polls `check` every 50 ms until it returns `Some`, or panics naming `what` after `within`.
#[track_caller]
fn eventually<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what} did not happen within {within:?}");
        pause(Duration::from_millis(50));
    }
}

/// `queue:dispatch GenerateReportJob --queue r ... --json`: the stored job's id.
fn dispatch(sandbox: &Sandbox, extra: &[&str]) -> String {
    let mut args = vec!["queue:dispatch", "GenerateReportJob", "--queue", "r", "--json"];
    args.extend_from_slice(extra);
    let out = sandbox.json(&args);
    out["ids"][0].as_str().expect("an id").to_owned()
}

fn ids(page: &Value) -> Vec<String> {
    page["jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("no jobs in {page}"))
        .iter()
        .map(|j| j["id"].as_str().expect("an id").to_owned())
        .collect()
}

/// The value of `key` in `queue:show`'s text (`key  value` lines).
#[track_caller]
fn field(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|line| line.strip_prefix(key).filter(|v| v.starts_with("  ")))
        .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
        .trim()
        .to_owned()
}

/// Runs a worker on queue `r` until it has nothing left.
fn drain(sandbox: &Sandbox) {
    sandbox
        .run(&["queue:work", "--queue", "r", "--stop-when-empty", "--sleep", "0.1", "--quiet"])
        .ok();
}

// ---- list, show, delete ----

fn list_show_and_delete(sandbox: &Sandbox) {
    let low = dispatch(sandbox, &["--priority", "0"]);
    let high = dispatch(sandbox, &["--priority", "5"]);
    let third = dispatch(sandbox, &["--priority", "0"]);
    let later = dispatch(sandbox, &["--delay", "600"]);

    // Pending jobs in claim order, paged by cursor.
    let page = sandbox.json(&["queue:list", "r", "--json"]);
    assert_eq!(ids(&page), [high.as_str(), low.as_str(), third.as_str()], "{page}");
    assert_eq!((page["state"].as_str(), &page["next_cursor"]), (Some("pending"), &Value::Null));
    let first = sandbox.json(&["queue:list", "r", "--limit", "2", "--json"]);
    assert_eq!(ids(&first), [high.as_str(), low.as_str()]);
    let cursor = first["next_cursor"].as_str().expect("a next page").to_owned();
    let rest = sandbox.json(&["queue:list", "r", "--limit", "2", "--after", &cursor, "--json"]);
    assert_eq!((ids(&rest), &rest["next_cursor"]), (vec![third.clone()], &Value::Null));
    sandbox
        .run(&["queue:list", "r", "--limit", "2"])
        .ok()
        .stdout_has(&high)
        .stdout_has(&format!("next page: queue:list r --state pending --limit 2 --after {cursor}"));
    let delayed = sandbox.json(&["queue:list", "r", "--state", "delayed", "--json"]);
    assert_eq!(ids(&delayed), [later.as_str()]);
    sandbox.run(&["queue:list", "r", "--state", "done"]).code(2).stderr_has("pending, delayed");
    sandbox.run(&["queue:list", "r", "--limit", "5000"]).code(2).stderr_has("from 1 to 1000");
    sandbox.run(&["queue:list", "nowhere"]).ok().stdout_has("no pending jobs in queue nowhere");

    // One job, as JSON and as text.
    let shown = sandbox.json(&["queue:show", &later, "--json"]);
    assert_eq!((shown["state"].as_str(), shown["queue"].as_str()), (Some("delayed"), Some("r")));
    assert_eq!(shown["name"], "GenerateReportJob");
    assert!(shown["payload"].is_object(), "the payload is JSON: {shown}");
    assert!(shown["available_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{shown}");
    let text = sandbox.run(&["queue:show", &high]).ok().stdout;
    assert_eq!((field(&text, "state"), field(&text, "priority")), ("pending".into(), "5".into()));
    assert!(field(&text, "ready since").ends_with('Z'), "{text}");
    sandbox
        .run(&["queue:show", "01NOSUCHJOB0000000000000000"])
        .code(1)
        .stderr_has("no job with id 01NOSUCHJOB0000000000000000")
        .stderr_has("queue:list");

    // Delete: pending and delayed jobs go; a running one is refused, pointing to queue:cancel.
    sandbox.run(&["queue:delete", &low, &later]).ok().stdout_has("deleted pending job");
    let page = sandbox.json(&["queue:list", "r", "--json"]);
    assert_eq!(ids(&page), [high.as_str(), third.as_str()]);
    assert!(ids(&sandbox.json(&["queue:list", "r", "--state", "delayed", "--json"])).is_empty());

    sandbox.run(&["queue:clear", "r", "--force"]).ok();
    let slow = dispatch(sandbox, &["--data", &simulate(5_000, 0)]);
    let mut worker = sandbox.worker(&["--queue", "r", "--sleep", "0.1", "--quiet"]);
    eventually("the slow job starts", Duration::from_secs(20), || {
        let page = sandbox.json(&["queue:list", "r", "--state", "reserved", "--json"]);
        (ids(&page) == [slow.clone()]).then_some(())
    });
    sandbox
        .run(&["queue:delete", &slow])
        .code(1)
        .stderr_has("is running")
        .stderr_has(&format!("queue:cancel {slow}"));
    let text = sandbox.run(&["queue:show", &slow]).ok().stdout;
    assert_eq!(field(&text, "state"), "reserved");
    assert!(field(&text, "lease until").ends_with('Z'), "{text}");
    worker.kill();
}

#[test]
fn list_show_and_delete_on_sqlite() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    list_show_and_delete(&sandbox);
}

#[test]
fn list_show_and_delete_on_redis() {
    let Some(url) = redis_url() else { return };
    list_show_and_delete(&Sandbox::redis(&url));
}

// ---- failed jobs: history, delete, prune, retention ----

fn failed_history_and_pruning(sandbox: &Sandbox) {
    // Two attempts each, both failing: the history keeps both errors.
    let failing = ["--data", &simulate(0, 5), "--max-retries", "1", "--retry-delay", "0"];
    let failed: Vec<String> = (0..4).map(|_| dispatch(sandbox, &failing)).collect();
    drain(sandbox);
    let shown = sandbox.json(&["queue:show", &failed[0], "--json"]);
    assert_eq!((shown["state"].as_str(), shown["attempts"].as_u64()), (Some("failed"), Some(2)));
    let errors = shown["errors"].as_array().unwrap_or_else(|| panic!("no errors in {shown}"));
    assert_eq!(errors.len(), 2, "both attempts' errors: {shown}");
    assert!(shown["failed_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    sandbox
        .run(&["queue:show", &failed[0]])
        .ok()
        .stdout_has("errors, oldest first")
        .stdout_has("  2. ");
    // Listed oldest failure first. The worker ran the jobs at once, so they may have failed in
    // another order than they were dispatched in: the rest of the test follows the listed one.
    let page = sandbox.json(&["queue:list", "r", "--state", "failed", "--json"]);
    let listed = ids(&page);
    let (mut got, mut want) = (listed.clone(), failed);
    got.sort();
    want.sort();
    assert_eq!(got, want, "every failed job, once");
    let times: Vec<&str> = page["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["failed_at"].as_str().unwrap_or_else(|| panic!("no failed_at in {j}")))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "oldest failure first: {times:?}");
    let failed = listed;

    // Deleting a failed job forgets it.
    sandbox.run(&["queue:delete", &failed[0]]).ok().stdout_has("deleted failed job");
    sandbox.run(&["queue:show", &failed[0]]).code(1);

    // Prune by count, then by age; without a rule it says how to give one.
    sandbox.run(&["queue:prune"]).code(2).stderr_has("--older-than").stderr_has("failed_retention");
    let pruned = sandbox.json(&["queue:prune", "--queue", "r", "--keep", "2", "--json"]);
    assert_eq!(pruned["pruned"], 1);
    assert_eq!(
        ids(&sandbox.json(&["queue:list", "r", "--state", "failed", "--json"])),
        failed[2..]
    );
    sandbox.run(&["queue:prune", "--older-than", "1h"]).ok().stdout_has("pruned 0 failed jobs");
    sandbox.run(&["queue:prune", "--older-than", "soon"]).code(2).stderr_has("e.g. 90s");

    // The retention settings: queue:prune applies them, and so does a worker.
    pause(Duration::from_millis(1_100));
    sandbox
        .run_env(&["queue:prune"], &[("QUEUE_FAILED_RETENTION", "1s")])
        .ok()
        .stdout_has("pruned 2 failed jobs");
    dispatch(sandbox, &failing);
    drain(sandbox);
    assert_eq!(sandbox.stats().expect("stats").failed, 1);
    std::fs::create_dir_all(sandbox.path("config")).expect("a config dir");
    std::fs::write(sandbox.path("config/queue.toml"), "failed_keep = 0\n").expect("a config file");
    let mut worker = sandbox.worker(&["--queue", "r", "--quiet"]);
    sandbox.wait_for("the worker's retention", Duration::from_secs(20), |t| t.failed == 0);
    worker.stop();
}

#[test]
fn failed_history_and_pruning_on_sqlite() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    failed_history_and_pruning(&sandbox);
}

#[test]
fn failed_history_and_pruning_on_redis() {
    let Some(url) = redis_url() else { return };
    failed_history_and_pruning(&Sandbox::redis(&url));
}

// ---- latency ----

fn latency_in_stats(sandbox: &Sandbox) {
    dispatch(sandbox, &["--delay", "600"]);
    let stats = sandbox.json(&["queue:stats", "r", "--json"]);
    assert!(stats["latency_ms"].is_null(), "a delayed job has no latency: {stats}");
    dispatch(sandbox, &[]);
    pause(Duration::from_millis(300));
    let stats = sandbox.json(&["queue:stats", "r", "--json"]);
    let latency = stats["latency_ms"].as_u64().unwrap_or_else(|| panic!("no latency: {stats}"));
    assert!((300..60_000).contains(&latency), "the due job's age, not the delayed one's: {stats}");
    sandbox.run(&["queue:stats", "r"]).ok().stdout_has("latency");
    drain(sandbox);
    let stats = sandbox.json(&["queue:stats", "r", "--json"]);
    assert!(stats["latency_ms"].is_null(), "only a delayed job is left: {stats}");
}

#[test]
fn latency_in_stats_on_sqlite() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    latency_in_stats(&sandbox);
}

#[test]
fn latency_in_stats_on_redis() {
    let Some(url) = redis_url() else { return };
    latency_in_stats(&Sandbox::redis(&url));
}

// ---- workers ----

fn workers_json(sandbox: &Sandbox) -> Vec<Value> {
    match sandbox.json(&["queue:workers", "--json"]) {
        Value::Array(workers) => workers,
        other => panic!("queue:workers --json printed no array: {other}"),
    }
}

/// A live worker is listed with what it reports; one killed with SIGKILL drops out within a
/// few heartbeats; one stopped cleanly drops out at once.
fn workers_come_and_go(sandbox: &Sandbox) {
    let args = ["--queue", "r,s", "--concurrency", "3", "--heartbeat-interval", "0.2", "--quiet"];
    let mut killed = sandbox.worker(&args);
    let mut stopped = sandbox.worker(&args);
    let pids = [killed.pid(), stopped.pid()];
    let listed = eventually("both workers are listed", Duration::from_secs(20), || {
        let workers = workers_json(sandbox);
        (workers.len() == 2).then_some(workers)
    });
    for w in &listed {
        assert!(pids.contains(&(w["pid"].as_u64().expect("a pid") as u32)), "{w}");
        assert_eq!(
            (w["queues"].clone(), w["concurrency"].as_u64()),
            (serde_json::json!(["r", "s"]), Some(3))
        );
        assert!(w["host"].as_str().is_some_and(|h| !h.is_empty()), "{w}");
        assert!(w["started_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{w}");
    }
    sandbox
        .run(&["queue:workers"])
        .ok()
        .stdout_has("last_heartbeat")
        .stdout_has(&killed.pid().to_string());

    // A running job is listed with its worker, and `queue:show` names the worker.
    let slow = dispatch(sandbox, &["--data", &simulate(3_000, 0)]);
    let holder = eventually("the job shows in a heartbeat", Duration::from_secs(20), || {
        workers_json(sandbox).into_iter().find(|w| w["running"] == serde_json::json!([slow]))
    });
    let shown = sandbox.json(&["queue:show", &slow, "--json"]);
    assert_eq!(shown["worker"]["id"], holder["id"], "{shown}");

    killed.kill();
    let killed_pid = u64::from(killed.pid());
    let at = Instant::now();
    eventually("the killed worker drops out", Duration::from_secs(5), || {
        let workers = workers_json(sandbox);
        (!workers.iter().any(|w| w["pid"] == killed_pid)).then_some(())
    });
    assert!(at.elapsed() < Duration::from_secs(3), "within a few heartbeats of 0.2 s");
    stopped.stop();
    assert!(workers_json(sandbox).is_empty(), "a clean stop removes the worker at once");
    sandbox.run(&["queue:workers"]).ok().stdout_has("no live workers");
}

#[test]
fn workers_come_and_go_on_sqlite() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    workers_come_and_go(&sandbox);
}

#[test]
fn workers_come_and_go_on_redis() {
    let Some(url) = redis_url() else { return };
    workers_come_and_go(&Sandbox::redis(&url));
}

// ---- /metrics ----

/// `GET path` on `addr`: the status code and the body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("a timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
        .expect("a request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("a response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// The value of the sample `series` (name and labels) in a scrape.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Starts `queue:work --metrics 127.0.0.1:0 ARGS` and returns it with the address it serves.
fn metrics_worker(sandbox: &Sandbox, args: &[&str]) -> (Proc, String) {
    let mut all = vec!["--metrics", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let mut worker = sandbox.worker(&all);
    worker.wait_output("/metrics", Duration::from_secs(20));
    let out = worker.stdout();
    let addr = out
        .split("metrics at http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no metrics address in {out}"))
        .to_owned();
    (worker, addr)
}

fn metrics_endpoint(sandbox: &Sandbox) {
    dispatch(sandbox, &[]);
    dispatch(sandbox, &[]);
    dispatch(sandbox, &["--data", &simulate(0, 5), "--max-retries", "1", "--retry-delay", "0"]);
    dispatch(sandbox, &["--delay", "600"]);
    let (mut worker, addr) = metrics_worker(sandbox, &["--queue", "r", "--sleep", "0.1"]);
    sandbox.wait_for("the jobs to end", Duration::from_secs(30), |t| {
        t.processed == 2 && t.failed == 1
    });
    let (status, text) = http_get(&addr, "/metrics");
    assert_eq!(status, 200, "{text}");
    let series = |s: &str| sample(&text, s).unwrap_or_else(|| panic!("no {s} in:\n{text}"));
    assert_eq!(series("orcs_queue_pending{queue=\"r\"}"), 0.0);
    assert_eq!(series("orcs_queue_delayed{queue=\"r\"}"), 1.0);
    assert_eq!(series("orcs_queue_failed{queue=\"r\"}"), 1.0);
    assert_eq!(series("orcs_queue_latency_seconds{queue=\"r\"}"), 0.0);
    assert_eq!(series("orcs_jobs_processed_total{queue=\"r\"}"), 2.0);
    assert_eq!(series("orcs_jobs_failed_total{queue=\"r\"}"), 1.0);
    assert_eq!(series("orcs_jobs_retried_total{queue=\"r\",job=\"GenerateReportJob\"}"), 1.0);
    assert_eq!(series("orcs_job_run_seconds_count{job=\"GenerateReportJob\"}"), 4.0);
    assert_eq!(series("orcs_job_wait_seconds_count{job=\"GenerateReportJob\"}"), 3.0);
    assert_eq!(series("orcs_workers"), 1.0);
    assert!(text.ends_with("# EOF\n"), "{text}");
    let (status, body) = http_get(&addr, "/");
    assert_eq!(status, 404);
    assert!(body.contains("/metrics"), "{body}");
    worker.stop();
}

#[test]
fn metrics_endpoint_on_sqlite() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    metrics_endpoint(&sandbox);
}

#[test]
fn metrics_endpoint_on_redis() {
    let Some(url) = redis_url() else { return };
    metrics_endpoint(&Sandbox::redis(&url));
}

/// On the memory driver the worker is the backend's only process: its scrape shows itself.
#[test]
fn metrics_endpoint_on_memory() {
    let sandbox = Sandbox::new();
    let (mut worker, addr) = metrics_worker(&sandbox, &["--queue", "r"]);
    let (status, text) = http_get(&addr, "/metrics");
    assert_eq!(status, 200, "{text}");
    assert_eq!(sample(&text, "orcs_workers"), Some(1.0), "its own heartbeat: {text}");
    sandbox.run(&["queue:work", "--metrics", "127.0.0.1"]).code(2).stderr_has("127.0.0.1:9100");
    sandbox
        .run(&["queue:work", "--metrics", &addr, "--quiet"])
        .code(1)
        .stderr_has("cannot listen there");
    worker.stop();
}

/// `orcs dashboard` serves `/metrics` behind its tokens: a bearer token scrapes it, no token
/// gets 401.
#[test]
fn dashboard_serves_metrics_behind_its_token() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    dispatch(&sandbox, &[]);
    let token = "metrics-test-token-0123456789";
    let mut dashboard =
        sandbox.spawn(&["dashboard", "--bind", "127.0.0.1:0"], &[("ORCS_DASHBOARD_TOKEN", token)]);
    dashboard.wait_output("/metrics", Duration::from_secs(30));
    let out = dashboard.stdout();
    let addr = out
        .split("metrics on http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no metrics address in {out}"))
        .to_owned();
    let (status, _) = http_get(&addr, "/metrics");
    assert_eq!(status, 401, "a scrape without a token is refused");
    let (status, text) = http_get_bearer(&addr, "/metrics", token);
    assert_eq!(status, 200, "{text}");
    assert_eq!(sample(&text, "orcs_queue_pending{queue=\"r\"}"), Some(1.0), "{text}");
    dashboard.stop();
}

fn http_get_bearer(addr: &str, path: &str, token: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("a timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .expect("a request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("a response");
    let status = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}
