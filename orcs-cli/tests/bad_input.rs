//! Bad input, as a black box: one table of wrong commands, settings, files and stored records,
//! each with the exit code and the words its message must contain (SPEC section 5: every error
//! names what was wrong and what to do; 1 for runtime errors, 2 for usage and configuration).
//!
//! Every case runs in a fresh working directory with the queue variables removed, and is also
//! checked for what must never happen: a panic, a password in the output, a lost job.
//!
//! Values in a case may name placeholders that the runner fills in: `{sqlite}` (a fresh SQLite
//! file's URL), `{redis}` (the test Redis), `{auth}` (a private Redis that requires the password
//! `rightpw`), `{dead}` (a loopback port nobody listens on) and `{pg}` (the test PostgreSQL).
//! A case whose service is missing is skipped loudly (a failure under
//! `ORCS_TEST_REQUIRE_SERVICES=1`).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::Sandbox;

/// The password every case that has one uses: it must never be printed.
const SECRET: &str = "hunter2";

const EMAIL: &str = r#"{"to":"a@example.com","subject":"hi","body":"hello"}"#;

/// What to do before the case's command (each must succeed), or after it (each must succeed
/// and print the given fragments).
#[derive(Clone, Copy)]
enum Step {
    /// `orcs ARGS`.
    Orcs(&'static [&'static str]),
    /// `orcs ARGS`, whose stdout must contain every fragment.
    Check(&'static [&'static str], &'static [&'static str]),
    /// An SQL statement run with `sqlite3` on the case's SQLite file.
    Sql(&'static str),
}

struct Case {
    what: &'static str,
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    /// Files written into the working directory first: (relative path, text).
    files: &'static [(&'static str, &'static str)],
    before: &'static [Step],
    code: i32,
    /// Fragments of stdout + stderr.
    says: &'static [&'static str],
    after: &'static [Step],
}

const fn case(what: &'static str, args: &'static [&'static str], code: i32) -> Case {
    Case { what, args, env: &[], files: &[], before: &[], code, says: &[], after: &[] }
}

impl Case {
    const fn env(mut self, env: &'static [(&'static str, &'static str)]) -> Self {
        self.env = env;
        self
    }
    const fn files(mut self, files: &'static [(&'static str, &'static str)]) -> Self {
        self.files = files;
        self
    }
    const fn before(mut self, steps: &'static [Step]) -> Self {
        self.before = steps;
        self
    }
    const fn says(mut self, says: &'static [&'static str]) -> Self {
        self.says = says;
        self
    }
    const fn after(mut self, steps: &'static [Step]) -> Self {
        self.after = steps;
        self
    }
}

const DB: &str = "--driver=database";
const SQLITE: &str = "--url={sqlite}";

fn cases() -> Vec<Case> {
    use Step::{Check, Orcs, Sql};
    const PENDING_ONE: Step =
        Check(&["queue:stats", "emails", "--json", DB, SQLITE], &[r#""pending": 1"#]);
    const SEED: Step = Orcs(&["queue:dispatch", "SendEmailJob", "--data", EMAIL, DB, SQLITE]);
    vec![
        // ---- jobs and payloads ----
        case("unknown job name", &["queue:dispatch", "NoSuchJob", DB, SQLITE], 2).says(&[
            "unknown job \"NoSuchJob\"",
            "SendEmailJob",
            "use one of those names",
        ]),
        case(
            "--data is not JSON",
            &["queue:dispatch", "SendEmailJob", "--data", "{oops", DB, SQLITE],
            2,
        )
        .before(&[SEED])
        .says(&["--data is not valid JSON", "pass a JSON object"])
        .after(&[PENDING_ONE]),
        case(
            "--data is not an object",
            &["queue:dispatch", "SendEmailJob", "--data", "[1]", DB, SQLITE],
            2,
        )
        .says(&["--data must be a JSON object", "e.g. --data"]),
        case(
            "--data misses a field, in a refused batch",
            &[
                "queue:dispatch",
                "SendEmailJob",
                "--count",
                "5",
                "--data",
                r#"{"subject":"hi"}"#,
                DB,
                SQLITE,
            ],
            2,
        )
        .before(&[SEED])
        .says(&["--data does not fit job SendEmailJob", "missing field `to`", "fix the data"])
        .after(&[PENDING_ONE]),
        case(
            "--data has a field the job does not know",
            &[
                "queue:dispatch",
                "SendEmailJob",
                "--data",
                r#"{"to":"a@example.com","cc":"b"}"#,
                DB,
                SQLITE,
            ],
            2,
        )
        .says(&["unknown field `cc`", "expected one of `to`, `subject`, `body`"]),
        case(
            "payload over QUEUE_MAX_PAYLOAD_BYTES, in a refused batch",
            &["queue:dispatch", "SendEmailJob", "--count", "3", "--data", EMAIL, DB, SQLITE],
            2,
        )
        .env(&[("QUEUE_MAX_PAYLOAD_BYTES", "40")])
        .before(&[SEED])
        .says(&["over the limit of 40 bytes", "pass a reference", "QUEUE_MAX_PAYLOAD_BYTES"])
        .after(&[PENDING_ONE]),
        case(
            "payload over the config file's limit",
            &["queue:dispatch", "SendEmailJob", "--data", EMAIL, DB, SQLITE],
            2,
        )
        .files(&[("config/queue.toml", "max_payload_bytes = 40\n")])
        .says(&["over the limit of 40 bytes"]),
        case("a payload limit of zero", &["queue:stats", DB, SQLITE], 2)
            .env(&[("QUEUE_MAX_PAYLOAD_BYTES", "0")])
            .says(&["QUEUE_MAX_PAYLOAD_BYTES", "would refuse every job", "524288"]),
        case("a payload limit that is not a number", &["queue:stats", DB, SQLITE], 2)
            .env(&[("QUEUE_MAX_PAYLOAD_BYTES", "1MB")])
            .says(&[
                "QUEUE_MAX_PAYLOAD_BYTES",
                "\"1MB\" is not a whole number of bytes",
                "1048576",
            ]),
        case(
            "a stored record whose payload does not fit reaches a worker",
            &["queue:work", "--queue", "emails", "--stop-when-empty", DB, SQLITE],
            0,
        )
        .before(&[SEED, Sql(r#"UPDATE jobs SET payload = '{"to":1}'"#)])
        .says(&["SendEmailJob", "FAIL"])
        .after(&[
            Check(
                &["queue:failed", "--json", DB, SQLITE],
                &[
                    "payload does not deserialize into job type SendEmailJob",
                    "forget or retry the job",
                ],
            ),
            Check(
                &["queue:stats", "emails", "--json", DB, SQLITE],
                &[r#""pending": 0"#, r#""failed": 1"#],
            ),
        ]),
        case(
            "a stored record that is not JSON reaches a worker",
            &["queue:work", "--queue", "emails", "--stop-when-empty", DB, SQLITE],
            0,
        )
        .before(&[SEED, Sql("UPDATE jobs SET payload = 'not json'")])
        .says(&["FAIL"])
        .after(&[Check(
            &["queue:failed", "--json", DB, SQLITE],
            &["payload does not deserialize", "SendEmailJob"],
        )]),
        case(
            "a stored record with an unknown name reaches a worker",
            &["queue:work", "--queue", "emails", "--stop-when-empty", DB, SQLITE],
            0,
        )
        .before(&[SEED, Sql("UPDATE jobs SET name = 'RetiredJob'")])
        // Handed back for a worker that registers it (a rolling deploy), not failed.
        .says(&["RetiredJob", "DEFER", "not registered in this worker", "1 deferred"])
        .after(&[
            Check(
                &["queue:stats", "emails", "--json", DB, SQLITE],
                &[r#""delayed": 1"#, r#""failed": 0"#],
            ),
            Check(&["queue:failed", DB, SQLITE], &["no failed jobs"]),
        ]),
        // ---- queue names ----
        case(
            "empty queue name",
            &["queue:dispatch", "SendEmailJob", "--queue", "", "--data", EMAIL, DB, SQLITE],
            2,
        )
        .says(&["--queue", "invalid queue name", "it is empty", "use letters, digits"]),
        case(
            "queue name with whitespace",
            &["queue:work", "--queue", "high, my queue", DB, SQLITE],
            2,
        )
        .says(&["--queue", "\"my queue\"", "whitespace"]),
        case("queue name with braces", &["queue:stats", "{orcs}", DB, SQLITE], 2)
            .says(&["QUEUE argument", "'{', '}' or ','"]),
        case("queue name with braces in QUEUE_WORKER_QUEUES", &["queue:work", DB, SQLITE], 2)
            .env(&[("QUEUE_WORKER_QUEUES", "a,{b}")])
            .says(&["QUEUE_WORKER_QUEUES", "invalid queue name"]),
        case("empty queue name for queue:failed", &["queue:failed", "--queue", " ", DB, SQLITE], 2)
            .says(&["--queue", "whitespace"]),
        // ---- worker options ----
        case("--sleep is not a number", &["queue:work", "--sleep", "soon", DB, SQLITE], 2).says(&[
            "--sleep",
            "\"soon\" is not a number of seconds",
            "use e.g. 3 or 0.5",
        ]),
        case("--sleep is negative", &["queue:work", "--sleep", "-1", DB, SQLITE], 2)
            .says(&["--sleep", "non-negative"]),
        case("QUEUE_WORKER_SLEEP is not a number", &["queue:work", DB, SQLITE], 2)
            .env(&[("QUEUE_WORKER_SLEEP", "3s")])
            .says(&["QUEUE_WORKER_SLEEP", "use e.g. 3 or 0.5"]),
        case("--max-jobs 0", &["queue:work", "--max-jobs", "0", DB, SQLITE], 2).says(&[
            "--max-jobs",
            "0 is too small",
            "leave --max-jobs out for no limit",
        ]),
        case("--max-jobs is negative", &["queue:work", "--max-jobs", "-5", DB, SQLITE], 2)
            .says(&["--max-jobs", "is not a whole number"]),
        case("QUEUE_WORKER_MAX_JOBS is not a number", &["queue:work", DB, SQLITE], 2)
            .env(&[("QUEUE_WORKER_MAX_JOBS", "ten")])
            .says(&["QUEUE_WORKER_MAX_JOBS", "not a whole number", "leave it empty for no limit"]),
        case("--concurrency 0", &["queue:work", "--concurrency", "0", DB, SQLITE], 2).says(&[
            "--concurrency",
            "0 is too small",
            "from 1 to 100000",
        ]),
        case(
            "--concurrency is not a number",
            &["queue:work", "--concurrency", "lots", DB, SQLITE],
            2,
        )
        .says(&["--concurrency", "\"lots\" is not a whole number"]),
        case(
            "--concurrency is too large",
            &["queue:work", "--concurrency", "1000000", DB, SQLITE],
            2,
        )
        .says(&["--concurrency", "too large"]),
        // ---- drivers, URLs and config files ----
        case("unknown QUEUE_DRIVER", &["queue:stats"], 2)
            .env(&[("QUEUE_DRIVER", "kafka")])
            .says(&["QUEUE_DRIVER", "unknown driver \"kafka\"", "memory, redis, database"]),
        case("unknown --driver", &["queue:stats", "--driver", "sqs"], 2).says(&[
            "--driver",
            "unknown driver \"sqs\"",
            "memory, redis, database",
        ]),
        case("REDIS_URL with an unknown scheme", &["queue:stats", "--driver", "redis"], 2)
            .env(&[("REDIS_URL", "http://app:hunter2@127.0.0.1:6379")])
            .says(&["REDIS_URL", "unknown scheme", "use redis://"]),
        case("REDIS_URL with a bad port", &["queue:stats", "--driver", "redis"], 2)
            .env(&[("REDIS_URL", "redis://app:hunter2@127.0.0.1:port")])
            .says(&[
                "REDIS_URL",
                "is not a valid Redis URL",
                "redis://[user:password@]host[:port][/db]",
            ]),
        case("REDIS_URL without a scheme", &["queue:stats", "--driver", "redis"], 2)
            .env(&[("REDIS_URL", "hunter2")])
            .says(&["REDIS_URL", "has no scheme"]),
        case(
            "unreachable Redis",
            &["queue:dispatch", "SendEmailJob", "--data", EMAIL, "--driver", "redis"],
            1,
        )
        .env(&[("REDIS_URL", "redis://app:hunter2@127.0.0.1:{dead}/0")])
        .says(&[
            "cannot use the redis driver at redis://app:***@127.0.0.1:",
            "nothing accepts connections there",
            "start Redis",
        ]),
        case("REDIS_CA_CERT with a plain redis:// URL", &["queue:stats", "--driver", "redis"], 2)
            .env(&[("REDIS_URL", "redis://:hunter2@127.0.0.1:{dead}"), ("REDIS_CA_CERT", "ca.pem")])
            .files(&[("ca.pem", "-----BEGIN CERTIFICATE-----\n")])
            .says(&["REDIS_CA_CERT", "does not use TLS", "use a rediss:// URL"]),
        case("REDIS_CA_CERT names a missing file", &["queue:stats", "--driver", "redis"], 2)
            .env(&[("REDIS_URL", "redis://127.0.0.1:{dead}"), ("REDIS_CA_CERT", "missing.pem")])
            .says(&[
                "REDIS_CA_CERT",
                "cannot read the CA certificate missing.pem",
                "check the path",
            ]),
        case("TLS to a Redis Cluster", &["queue:stats", "--driver", "redis"], 2)
            .env(&[("REDIS_URL", "rediss+cluster://:hunter2@127.0.0.1:{dead}")])
            .says(&["REDIS_URL", "TLS to a Redis Cluster", "tunnel"]),
        case(
            "Redis needs a password the URL lacks",
            &["queue:stats", "--driver", "redis", "--url", "redis://{auth}"],
            1,
        )
        // The driver names the setting ("the Redis URL"); the command says which one held it.
        .says(&[
            "NOAUTH",
            "requires a password",
            "put it in the Redis URL",
            "the Redis URL came from --url (in place of REDIS_URL)",
        ]),
        case(
            "wrong Redis password",
            &["queue:stats", "--driver", "redis", "--url", "redis://:hunter2@{auth}"],
            1,
        )
        .says(&["redis://:***@", "refused the user name or password", "REDIS_URL"]),
        case(
            "unknown Redis ACL user",
            &[
                "queue:work",
                "--once",
                "--driver",
                "redis",
                "--url",
                "redis://nobody:hunter2@{auth}",
            ],
            1,
        )
        .says(&["redis://nobody:***@", "refused the user name or password"]),
        case(
            "the right Redis password works",
            &["queue:stats", "--json", "--driver", "redis", "--url", "redis://:rightpw@{auth}"],
            0,
        ),
        case("DATABASE_URL with an unknown scheme", &["queue:stats", DB], 2)
            .env(&[("DATABASE_URL", "mysql://app:hunter2@db/app")])
            .says(&[
                "DATABASE_URL",
                "unsupported scheme `mysql://`",
                "sqlite://PATH",
                "postgres://",
            ]),
        case(
            "malformed PostgreSQL URL",
            &["queue:stats", DB, "--url", "postgres://app:hunter2@[::1/app"],
            2,
        )
        .says(&["DATABASE_URL", "postgres://USER:PASSWORD@HOST:PORT/DATABASE"]),
        case(
            "unreachable PostgreSQL",
            &["queue:stats", DB, "--url", "postgres://app:hunter2@127.0.0.1:{dead}/app"],
            1,
        )
        .says(&[
            "cannot use the database driver at postgres://app:***@127.0.0.1:",
            "Connection refused",
            "check that the database is running",
        ]),
        case(
            "PostgreSQL database that does not exist",
            &["queue:stats", DB, "--url", "{pg}_no_such_database"],
            1,
        )
        .says(&[
            "does not exist",
            "DATABASE_URL (or --url) names the right host, port, user, password and database",
        ]),
        case("in-memory SQLite", &["queue:stats", DB, "--url", "sqlite::memory:"], 2).says(&[
            "DATABASE_URL",
            "would lose every job",
            "name a file",
        ]),
        case(
            "SQLite file in a directory that cannot be made",
            &["queue:stats", DB, "--url", "sqlite:///proc/orcs-no-such-dir/queue.db"],
            2,
        )
        .says(&["DATABASE_URL", "cannot create the directory /proc/orcs-no-such-dir"]),
        case("broken config/queue.toml", &["queue:stats"], 2)
            .files(&[("config/queue.toml", "driver = [\n")])
            .says(&["config/queue.toml", "line 1", "see README.md for the file's keys"]),
        case("misspelt key in config/queue.toml", &["queue:work"], 2)
            .files(&[("config/queue.toml", "[worker]\nconcurrancy = 4\n")])
            .says(&["config/queue.toml", "unknown field `concurrancy`", "concurrency"]),
        case("wrong value in config/queue.toml", &["queue:work"], 2)
            .files(&[("config/queue.toml", "[worker]\nconcurrency = 0\n")])
            .says(&["config/queue.toml: worker.concurrency", "use 1 or more"]),
        case("--config names a missing file", &["queue:stats", "--config", "nowhere.toml"], 2)
            .says(&["nowhere.toml", "cannot read the config file"]),
        case("broken .env", &["queue:stats"], 2)
            .files(&[(".env", "QUEUE_DRIVER='redis\n")])
            .says(&[".env", "fix or remove the file"]),
        // ---- failed-job management ----
        case(
            "queue:retry of an unknown id",
            &["queue:retry", "01JUNKNOWN0000000000000000", DB, SQLITE],
            1,
        )
        .before(&[SEED])
        .says(&["no failed job with id 01JUNKNOWN0000000000000000", "queue:failed"])
        .after(&[PENDING_ONE]),
        case("queue:forget of an unknown id", &["queue:forget", "not-an-id", DB, SQLITE], 1)
            .says(&["no failed job with id not-an-id", "queue:failed"]),
        case(
            "queue:retry of ids and all",
            &["queue:retry", "all", "01JUNKNOWN0000000000000000", DB, SQLITE],
            2,
        )
        .says(&["either ids or `all`"]),
        case(
            "queue:dispatch on the memory driver",
            &["queue:dispatch", "SendEmailJob", "--data", EMAIL],
            2,
        )
        .says(&["memory driver", "would vanish", "QUEUE_DRIVER"]),
    ]
}

/// The services some cases need, found once.
struct Services {
    redis: Option<String>,
    auth: Option<String>,
    pg: Option<String>,
    sqlite3: bool,
}

fn services() -> &'static Services {
    static SERVICES: OnceLock<Services> = OnceLock::new();
    SERVICES.get_or_init(|| Services {
        redis: orcs_tests::services::redis::redis_url_or_skip(),
        auth: password_redis(),
        pg: orcs_tests::services::postgres::database_url_or_skip(),
        sqlite3: Command::new("sqlite3").arg("-version").output().is_ok_and(|o| o.status.success())
            || orcs_tests::services::skip::<()>(
                "sqlite3",
                "the sqlite3 command is not on PATH; apt-get install sqlite3",
            )
            .is_some(),
    })
}

/// A private Redis that requires the password `rightpw`: `host:port`.
fn password_redis() -> Option<String> {
    let url = orcs_tests::services::redis::private_server_or_skip()?;
    let status = Command::new("redis-cli")
        .args(["-u", &url, "CONFIG", "SET", "requirepass", "rightpw"])
        .stdout(Stdio::null())
        .status();
    if !status.is_ok_and(|s| s.success()) {
        return orcs_tests::services::skip(
            "redis-cli",
            "could not set a password on the private Redis",
        );
    }
    Some(url.trim_start_matches("redis://").to_owned())
}

/// A loopback port with no listener.
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("an address").port()
}

/// Fills in the placeholders, or `None` when a service is missing.
fn fill(text: &str, dir: &Path, dead: u16) -> Option<String> {
    let services = services();
    let mut out = text.replace("{sqlite}", &format!("sqlite://{}", dir.join("queue.db").display()));
    out = out.replace("{dead}", &dead.to_string());
    for (name, value) in
        [("{redis}", &services.redis), ("{auth}", &services.auth), ("{pg}", &services.pg)]
    {
        if out.contains(name) {
            out = out.replace(name, value.as_deref()?);
        }
    }
    Some(out)
}

/// What a command printed (stdout, then stderr) and how it exited.
struct Output {
    code: Option<i32>,
    text: String,
}

/// A sandbox (a fresh working directory) whose commands use a Redis key prefix of their own.
fn sandbox() -> Sandbox {
    let mut sandbox = Sandbox::new();
    sandbox.env =
        vec![("REDIS_PREFIX".to_owned(), orcs_tests::services::unique_name("orcs-bad-input"))];
    sandbox
}

/// Runs `orcs ARGS` in the sandbox; a command still running after 60 s fails the test.
fn orcs(sandbox: &Sandbox, args: &[String], env: &[(String, String)]) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let run = sandbox.run_within(&args, &env, Duration::from_secs(60));
    assert!(
        run.code.is_some(),
        "`orcs {}` did not end within 60 s:\n{}{}",
        run.args,
        run.stdout,
        run.stderr
    );
    Output { code: run.code, text: format!("{}{}", run.stdout, run.stderr) }
}

/// Runs one case; returns false if it was skipped.
fn run_case(case: &Case) -> bool {
    let sandbox = sandbox();
    let dir = &sandbox.dir;
    let dead = dead_port();
    let fill_all =
        |items: &[&str]| items.iter().map(|a| fill(a, dir, dead)).collect::<Option<Vec<_>>>();
    let Some(args) = fill_all(case.args) else { return false };
    let Some(env) = case
        .env
        .iter()
        .map(|(k, v)| Some(((*k).to_owned(), fill(v, dir, dead)?)))
        .collect::<Option<Vec<_>>>()
    else {
        return false;
    };
    let uses_sql = case.before.iter().any(|s| matches!(s, Step::Sql(_)));
    if uses_sql && !services().sqlite3 {
        return false;
    }
    for (path, text) in case.files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(path, text).expect("the file is written");
    }
    let what = case.what;
    let step = |step: &Step| match *step {
        Step::Orcs(args) | Step::Check(args, _) => {
            let args = fill_all(args).expect("the case's own services are there");
            let out = orcs(&sandbox, &args, &[]);
            assert_eq!(
                out.code,
                Some(0),
                "{what}: step `orcs {}` failed:\n{}",
                args.join(" "),
                out.text
            );
            if let Step::Check(_, says) = step {
                for fragment in *says {
                    assert!(
                        out.text.contains(fragment),
                        "{what}: `orcs {}` should print {fragment:?}:\n{}",
                        args.join(" "),
                        out.text
                    );
                }
            }
        }
        Step::Sql(sql) => {
            let status = Command::new("sqlite3")
                .arg(dir.join("queue.db"))
                .arg(sql)
                .status()
                .expect("sqlite3 runs");
            assert!(status.success(), "{what}: sqlite3 {sql:?} failed");
        }
    };
    case.before.iter().for_each(step);

    let out = orcs(&sandbox, &args, &env);
    let shown = format!("{what}: `orcs {}` (env {env:?})", args.join(" "));
    assert_eq!(
        out.code,
        Some(case.code),
        "{shown} exited {:?}, expected {}:\n{}",
        out.code,
        case.code,
        out.text
    );
    for fragment in case.says {
        assert!(out.text.contains(fragment), "{shown} should say {fragment:?}:\n{}", out.text);
    }
    assert!(!out.text.contains("panicked"), "{shown} panicked:\n{}", out.text);
    assert!(!out.text.contains(SECRET), "{shown} printed the password:\n{}", out.text);
    if case.code != 0 {
        let error = out.text.lines().find(|l| l.starts_with("error:"));
        assert!(error.is_some(), "{shown} printed no `error:` line:\n{}", out.text);
    }
    case.after.iter().for_each(step);
    true
}

#[test]
fn bad_input_is_refused_with_a_message_that_says_what_to_do() {
    let cases = cases();
    let mut skipped = Vec::new();
    for case in &cases {
        if !run_case(case) {
            skipped.push(case.what);
        }
    }
    eprintln!("bad input: {} cases ran, {} skipped", cases.len() - skipped.len(), skipped.len());
    if !skipped.is_empty() {
        eprintln!(
            "SKIPPING {} of {} bad-input cases (a service is missing): {skipped:?}",
            skipped.len(),
            cases.len()
        );
    }
}

/// A password in `REDIS_URL` or `DATABASE_URL` never reaches stdout or stderr, whatever the log
/// level, when the server is unreachable, refuses it, or accepts it.
#[test]
fn passwords_never_reach_the_output() {
    let commands: &[&[&str]] = &[
        &["queue:stats"],
        &["queue:work", "--once", "--sleep", "0"],
        &["queue:dispatch", "SendEmailJob", "--data", EMAIL],
        &["queue:failed"],
    ];
    // (driver, URL, the password in it)
    let urls: &[(&str, &str, &str)] = &[
        ("redis", "redis://app:hunter2@127.0.0.1:{dead}/0", SECRET),
        ("redis", "redis://:hunter2@{auth}", SECRET),
        ("redis", "redis://default:hunter2@{auth}/0", SECRET),
        ("redis", "redis://:rightpw@{auth}", "rightpw"),
        ("redis", "redis+cluster://app:hunter2@127.0.0.1:{dead},127.0.0.1:{dead}", SECRET),
        ("redis", "rediss://app:hunter2@127.0.0.1:{dead}", SECRET),
        ("database", "postgres://app:hunter2@127.0.0.1:{dead}/app", SECRET),
        ("database", "postgres://127.0.0.1:{dead}/app?user=app&password=hunter2", SECRET),
        ("database", "{pg}_no_such_database?password=hunter2", SECRET),
    ];
    let mut ran = 0;
    for &(driver, url, secret) in urls {
        let sandbox = sandbox();
        let Some(url) = fill(url, &sandbox.dir, dead_port()) else { continue };
        let var = if driver == "redis" { "REDIS_URL" } else { "DATABASE_URL" };
        for command in commands {
            let mut args: Vec<String> = command.iter().map(|a| (*a).to_owned()).collect();
            args.push(format!("--driver={driver}"));
            for level in ["trace", "debug"] {
                let env =
                    [(var.to_owned(), url.clone()), ("RUST_LOG".to_owned(), level.to_owned())];
                let out = orcs(&sandbox, &args, &env);
                let shown = format!("`orcs {}` with {var}={url} RUST_LOG={level}", args.join(" "));
                assert!(!out.text.contains(secret), "{shown} printed the password:\n{}", out.text);
                assert!(!out.text.contains("panicked"), "{shown} panicked:\n{}", out.text);
                assert!(matches!(out.code, Some(0..=2)), "{shown} exited {:?}", out.code);
            }
            // The same URL given with --url.
            args.push(format!("--url={url}"));
            let out = orcs(&sandbox, &args, &[]);
            assert!(
                !out.text.contains(secret),
                "`orcs {}` printed the password:\n{}",
                args.join(" "),
                out.text
            );
            ran += 1;
        }
    }
    eprintln!("secrets: {ran} command and URL pairs checked");
}
