//! Issue 11 (SPEC 8.1/8.2) through the binary, on SQLite and on Redis: unique dispatch,
//! pause and resume, limits, cancel, and the stats that show them.

use std::time::Duration;

use serde_json::{Value, json};

mod common;
use common::{Sandbox, pause, redis_url, simulate};

fn stats_of(sandbox: &Sandbox, queue: &str) -> Value {
    sandbox.json(&["queue:stats", queue, "--json"])
}

fn unique_dispatch(sandbox: &Sandbox) {
    let dispatch = |extra: &[&str]| {
        let mut args = vec!["queue:dispatch", "GenerateReportJob", "--json"];
        args.extend_from_slice(extra);
        sandbox.json(&args)
    };
    let first = dispatch(&["--unique", "report-1"]);
    assert_eq!(
        first["jobs"],
        json!([{ "id": first["ids"][0], "duplicate": false, "replaced": false }]),
        "{first}"
    );
    let holder = first["ids"][0].as_str().expect("an id").to_owned();
    let again = dispatch(&["--unique", "report-1"]);
    assert_eq!(
        again["jobs"],
        json!([{ "id": holder, "duplicate": true, "replaced": false }]),
        "{again}"
    );
    sandbox
        .run(&["queue:dispatch", "GenerateReportJob", "--unique", "report-1"])
        .ok()
        .stdout_has("not dispatched")
        .stdout_has(&holder)
        .stdout_has("\"report-1\"");
    // Another key is free; --count stores one and reports the rest as duplicates.
    let many = dispatch(&["--unique", "report-2", "--count", "3"]);
    let flags: Vec<&Value> =
        many["jobs"].as_array().unwrap().iter().map(|j| &j["duplicate"]).collect();
    assert_eq!(flags, [&json!(false), &json!(true), &json!(true)], "{many}");
    assert_eq!(stats_of(sandbox, "reports")["pending"], 2);

    // `started` frees the key once a worker takes the job.
    let started = dispatch(&["--unique", "s", "--unique-until", "started", "--queue", "u"]);
    assert_eq!(dispatch(&["--unique", "s", "--queue", "u"])["jobs"][0]["duplicate"], true);
    sandbox.run(&["queue:work", "--queue", "u", "--once", "--quiet"]).ok();
    let after = dispatch(&["--unique", "s", "--queue", "u"]);
    assert_eq!(after["jobs"][0]["duplicate"], false, "{after}");
    assert_ne!(after["ids"][0], started["ids"][0]);

    // A period in seconds frees the key after it, whatever the job does.
    dispatch(&["--unique", "p", "--unique-until", "0.3", "--queue", "v"]);
    assert_eq!(dispatch(&["--unique", "p", "--queue", "v"])["jobs"][0]["duplicate"], true);
    pause(Duration::from_millis(500));
    assert_eq!(dispatch(&["--unique", "p", "--queue", "v"])["jobs"][0]["duplicate"], false);

    // Bad values name what is accepted.
    sandbox
        .run(&["queue:dispatch", "GenerateReportJob", "--unique", "k", "--unique-until", "0"])
        .code(2)
        .stderr_has("started, finished, or a number of seconds");
    sandbox
        .run(&["queue:dispatch", "GenerateReportJob", "--unique", "k", "--unique-until", "soon"])
        .code(2)
        .stderr_has("started, finished");
    sandbox
        .run(&["queue:dispatch", "GenerateReportJob", "--unique-until", "started"])
        .code(2)
        .stderr_has("--unique");
}

#[test]
fn unique_dispatch_on_sqlite() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    unique_dispatch(&sandbox);
}

#[test]
fn unique_dispatch_on_redis() {
    let Some(url) = redis_url() else { return };
    unique_dispatch(&Sandbox::redis(&url));
}

/// `--debounce`: a dispatch whose key's holder has not started gives it its data and run time.
fn debounce_dispatch(sandbox: &Sandbox) {
    let dispatch = |period: &str, extra: &[&str]| {
        let data = format!(r#"{{"period":"{period}"}}"#);
        let mut args = vec!["queue:dispatch", "GenerateReportJob", "--data", &data];
        args.extend_from_slice(&["--queue", "d", "--unique", "r", "--debounce"]);
        args.extend_from_slice(extra);
        sandbox.run(&args).ok().stdout
    };
    let json_of = |out: String| -> Value { serde_json::from_str(&out).expect("JSON") };
    let first = json_of(dispatch("2026-09", &["--delay", "60", "--json"]));
    assert_eq!(first["jobs"][0]["duplicate"], false, "{first}");
    let holder = first["ids"][0].as_str().expect("an id").to_owned();
    let again = json_of(dispatch("2026-10", &["--json"]));
    assert_eq!(
        again["jobs"],
        json!([{ "id": holder, "duplicate": true, "replaced": true }]),
        "{again}"
    );
    let shown = sandbox.json(&["queue:show", &holder, "--json"]);
    assert_eq!(
        (shown["state"].as_str(), shown["payload"]["period"].as_str()),
        (Some("pending"), Some("2026-10"))
    );
    // Text: the holder named; a delay pushes it back.
    let out = dispatch("2026-11", &["--delay", "30"]);
    assert!(out.contains("debounced") && out.contains(&holder), "{out}");
    let stats = stats_of(sandbox, "d");
    assert_eq!(
        (stats["pending"].as_u64(), stats["delayed"].as_u64()),
        (Some(0), Some(1)),
        "{stats}"
    );
    let shown = sandbox.json(&["queue:show", &holder, "--json"]);
    assert_eq!(
        (shown["state"].as_str(), shown["payload"]["period"].as_str()),
        (Some("delayed"), Some("2026-11"))
    );
    // Without a key there is nothing to debounce.
    sandbox
        .run(&["queue:dispatch", "GenerateReportJob", "--debounce"])
        .code(2)
        .stderr_has("--unique");
}

#[test]
fn debounce_dispatch_on_sqlite() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    debounce_dispatch(&sandbox);
}

#[test]
fn debounce_dispatch_on_redis() {
    let Some(url) = redis_url() else { return };
    debounce_dispatch(&Sandbox::redis(&url));
}

fn pause_and_resume(sandbox: &Sandbox) {
    sandbox.dispatch("GenerateReportJob", 2, &[]);
    sandbox
        .run(&["queue:pause", "reports"])
        .ok()
        .stdout_has("paused queue reports")
        .stdout_has("queue:resume reports");
    assert_eq!(stats_of(sandbox, "reports")["paused"], true);
    sandbox.run(&["queue:stats"]).ok().stdout_has("paused");
    sandbox
        .run(&["queue:work", "--queue", "reports", "--stop-when-empty", "--max-time", "5"])
        .ok()
        .stdout_has("stopped: 0 done");
    assert_eq!(stats_of(sandbox, "reports")["pending"], 2, "a paused queue's jobs ran");
    sandbox.run(&["queue:resume", "reports"]).ok().stdout_has("resumed queue reports");
    assert_eq!(stats_of(sandbox, "reports")["paused"], false);
    sandbox
        .run(&["queue:work", "--queue", "reports", "--stop-when-empty", "--max-time", "5"])
        .ok()
        .stdout_has("stopped: 2 done");
    sandbox.run(&["queue:pause", "a b"]).code(2).stderr_has("invalid queue name");
}

#[test]
fn pause_and_resume_on_sqlite() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    pause_and_resume(&sandbox);
}

#[test]
fn pause_and_resume_on_redis() {
    let Some(url) = redis_url() else { return };
    pause_and_resume(&Sandbox::redis(&url));
}

fn limits(sandbox: &Sandbox) {
    sandbox
        .run(&["queue:limit", "reports", "--concurrency", "2", "--rate", "10/60"])
        .ok()
        .stdout_has("concurrency 2, rate 10/60s");
    let limits = &stats_of(sandbox, "reports")["limits"];
    assert_eq!(limits, &json!({ "concurrency": 2, "rate": { "limit": 10, "period_ms": 60000 } }));
    // One flag changes its own limit only.
    sandbox
        .run(&["queue:limit", "reports", "--concurrency", "3"])
        .ok()
        .stdout_has("concurrency 3, rate 10/60s");
    sandbox.run(&["queue:limit", "reports"]).ok().stdout_has("concurrency 3, rate 10/60s");
    sandbox
        .run(&["queue:stats"])
        .ok()
        .stdout_has("limits")
        .stdout_has("concurrency 3, rate 10/60s");
    sandbox.run(&["queue:limit", "reports", "--clear"]).ok().stdout_has("limits none");
    assert_eq!(
        stats_of(sandbox, "reports")["limits"],
        json!({ "concurrency": null, "rate": null })
    );

    for (args, says) in [
        (&["--concurrency", "0"][..], "queue:pause"),
        (&["--concurrency", "-1"][..], "1 or more"),
        (&["--rate", "10"][..], "N/SECS"),
        (&["--rate", "0/1"][..], "N/SECS"),
        (&["--rate", "5/0"][..], "N/SECS"),
        (&["--rate", "ten/60"][..], "e.g. 100/1 or 10/60"),
    ] {
        let mut all = vec!["queue:limit", "reports"];
        all.extend_from_slice(args);
        sandbox.run(&all).code(2).stderr_has(says);
    }
    sandbox.run(&["queue:limit", "reports", "--clear", "--rate", "1/1"]).code(2);

    // The rate holds across workers: 2 starts per minute.
    sandbox.run(&["queue:limit", "reports", "--rate", "2/60"]).ok();
    sandbox.dispatch("GenerateReportJob", 5, &[]);
    sandbox
        .run(&[
            "queue:work",
            "--queue",
            "reports",
            "--max-time",
            "1.5",
            "--sleep",
            "0.1",
            "--quiet",
        ])
        .ok();
    let stats = stats_of(sandbox, "reports");
    assert_eq!(
        (stats["processed"].as_u64(), stats["pending"].as_u64()),
        (Some(2), Some(3)),
        "{stats}"
    );
}

#[test]
fn limits_on_sqlite() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    limits(&sandbox);
}

#[test]
fn limits_on_redis() {
    let Some(url) = redis_url() else { return };
    limits(&Sandbox::redis(&url));
}

fn cancel(sandbox: &Sandbox) {
    let delayed =
        sandbox.json(&["queue:dispatch", "GenerateReportJob", "--delay", "3600", "--json"]);
    let delayed = delayed["ids"][0].as_str().unwrap().to_owned();
    let long = sandbox.json(&[
        "queue:dispatch",
        "SendEmailJob",
        "--data",
        r#"{"to":"a@example.com","simulate":{"work_ms":30000}}"#,
        "--json",
    ]);
    let long = long["ids"][0].as_str().unwrap().to_owned();
    sandbox.run(&["queue:cancel", &delayed]).ok().stdout_has(&format!("{delayed}: removed"));
    assert_eq!(stats_of(sandbox, "reports")["delayed"], 0);
    assert_eq!(stats_of(sandbox, "reports")["cancelled"], 1);

    let mut worker = sandbox.worker(&["--queue", "emails", "--sleep", "0.1"]);
    sandbox.wait_for("the long job to start", Duration::from_secs(10), |t| t.reserved == 1);
    sandbox
        .run(&["queue:cancel", &long])
        .ok()
        .stdout_has(&format!("{long}: stop requested"))
        .stdout_has("within a second");
    sandbox.wait_for("the cancel", Duration::from_secs(5), |t| t.reserved == 0);
    worker.wait_output("CANCEL", Duration::from_secs(5));
    worker.stop();
    assert!(worker.stdout().contains("1 cancelled"), "{worker}");
    let emails = stats_of(sandbox, "emails");
    assert_eq!(
        (emails["cancelled"].as_u64(), emails["pending"].as_u64()),
        (Some(1), Some(0)),
        "{emails}"
    );
    assert_eq!(emails["failed"], 0, "a cancelled job is not a failure");
    sandbox.run(&["queue:stats"]).ok().stdout_has("cancelled");

    // Unknown ids are reported each, and make the command fail, after the known ones are done.
    let other = sandbox.json(&["queue:dispatch", "GenerateReportJob", "--json"]);
    let other = other["ids"][0].as_str().unwrap().to_owned();
    sandbox
        .run(&["queue:cancel", "01NOSUCHJOB0000000000000000", &other])
        .code(1)
        .stdout_has("01NOSUCHJOB0000000000000000: not found")
        .stdout_has(&format!("{other}: removed"))
        .stderr_has("no pending, delayed or running job with id 01NOSUCHJOB0000000000000000");
    sandbox.run(&["queue:cancel"]).code(2);
}

#[test]
fn cancel_on_sqlite() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    cancel(&sandbox);
}

#[test]
fn cancel_on_redis() {
    let Some(url) = redis_url() else { return };
    cancel(&Sandbox::redis(&url));
}

#[test]
fn stats_text_shows_state_and_limits_columns() {
    let Some(sandbox) = Sandbox::sqlite() else { return };
    sandbox.dispatch("GenerateReportJob", 1, &["--data", &simulate(0, 0)]);
    let run = sandbox.run(&["queue:stats"]).ok();
    let header = run.stdout.lines().next().unwrap_or_default().to_owned();
    for column in ["state", "cancelled", "limits"] {
        assert!(header.contains(column), "no {column} column: {header}");
    }
    run.stdout_has("active").stdout_has("none");
}
