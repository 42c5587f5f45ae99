//! Starts `examples/axum_signup` against PostgreSQL (a schema of its own), signs a user up over
//! HTTP, and waits for the welcome job to have run: the embedding story end to end, as a user
//! runs it.
//!
//! `cargo test` builds the examples before it runs the tests, so the binary is next to this
//! test's (`target/<profile>/examples/axum_signup`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

mod common;

use common::schema_url;
use orcs_tests::services::unique_name;

/// The example binary `name` that `cargo test` built beside this test.
fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/axum_example-HASH -> target/<profile>/examples/NAME
    let profile = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let binary = profile.join("examples").join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing; build it with `cargo build -p orcs --example {name} --features postgres` \
         (cargo test builds it unless the run names only some targets)",
        binary.display()
    );
    // `cargo test --test axum_example` builds this test only: catch an example older than its
    // sources rather than test yesterday's code.
    let built = modified(&binary);
    let sources = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let newest = [sources.join(format!("{name}.rs")), sources.join("signup").join("mod.rs")]
        .iter()
        .map(|source| modified(source))
        .max()
        .expect("two sources");
    assert!(
        built >= newest,
        "{} is older than its sources; rebuild it with `cargo build -p orcs --example {name} \
         --features postgres`, or run `cargo test -p orcs --all-features` without naming a test",
        binary.display()
    );
    binary
}

fn modified(path: &std::path::Path) -> std::time::SystemTime {
    std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .unwrap_or_else(|e| panic!("cannot read the time of {}: {e}", path.display()))
}

/// The running example; killed when dropped, so a failing test leaves no server behind.
struct Server {
    child: Child,
    address: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Starts the axum example; `worker: false` leaves its jobs to a separate worker.
async fn start(url: &str, worker: bool) -> Server {
    let mut child = Command::new(example_binary("axum_signup"))
        .env("DATABASE_URL", url)
        .env("BIND", "127.0.0.1:0")
        .env("WORKER", if worker { "1" } else { "0" })
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start the axum_signup example");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the example printed its address within 30 s")
        .expect("read the example's output")
        .expect("the example exited before it listened");
    let address = first
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line: {first:?}"))
        .to_owned();
    // Keep reading so the example never blocks on a full pipe; echo for a failing test's log.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            println!("axum_signup: {line}");
        }
    });
    Server { child, address }
}

/// One HTTP/1.1 request (the connection closes after it); returns the status and the body.
async fn request(address: &str, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let mut stream = TcpStream::connect(address).await.expect("connect to the example");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("send the request");
    stream.write_all(body.as_bytes()).await.expect("send the body");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status code");
    let body = serde_json::from_str(body).unwrap_or(serde_json::Value::String(body.to_owned()));
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signup_dispatches_in_its_transaction_and_the_worker_runs_the_job() {
    let Some(url) = schema_url("orcs_test").await else { return };
    let server = start(&url, true).await;

    let (status, body) =
        request(&server.address, "POST", "/signup", r#"{"email":"ada@example.com"}"#).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_i64().expect("the user's id");
    let job = body["welcome_job"].as_str().expect("the job's id").to_owned();

    // The worker in the example's process runs the job with the application's pool.
    let welcomed = orcs_tests::eventually(Duration::from_secs(20), || async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (_, user) = request(&server.address, "GET", &format!("/users/{id}"), "").await;
        user["welcomed"] == true
    })
    .await;
    assert!(welcomed, "the welcome job did not run within 20 s");

    // A taken email rolls the transaction back: no second user, and no second job.
    let (status, body) =
        request(&server.address, "POST", "/signup", r#"{"email":"ada@example.com"}"#).await;
    assert_eq!(status, 409, "{body}");

    // The queue, seen through the facade as any other process would connect to it.
    let queue = orcs::connect(&url).await.expect("connect the queue by URL");
    let stats = queue.stats("emails").await.expect("stats");
    assert_eq!((stats.processed, stats.pending, stats.failed), (1, 0, 0), "{stats:?}");
    // A finished job is gone from the queue; only the counters remember it.
    let info = queue.get(&job).await.expect("get the job");
    assert!(info.is_none(), "{info:?}");
}

/// Waits until `GET /users/{id}` says the welcome job has run.
async fn welcomed(address: &str, id: i64) -> bool {
    orcs_tests::eventually(Duration::from_secs(20), || async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (_, user) = request(address, "GET", &format!("/users/{id}"), "").await;
        user["welcomed"] == true
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_worker_runs_the_jobs_the_server_dispatched() {
    let Some(url) = schema_url("orcs_test").await else { return };
    let server = start(&url, false).await;
    let (status, body) =
        request(&server.address, "POST", "/signup", r#"{"email":"bob@example.com"}"#).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_i64().expect("the user's id");

    // The server runs no worker: the job waits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, user) = request(&server.address, "GET", &format!("/users/{id}"), "").await;
    assert_eq!(user["welcomed"], false, "{user}");

    // examples/worker.rs, configured from the environment alone, in a directory without `.env`
    // or `config/queue.toml`.
    let dir = std::env::temp_dir().join(unique_name("orcs-worker-example"));
    std::fs::create_dir_all(&dir).expect("a working directory");
    let _worker = Command::new(example_binary("worker"))
        .current_dir(&dir)
        .env("QUEUE_DRIVER", "database")
        .env("DATABASE_URL", &url)
        .env_remove("QUEUE_WORKER_QUEUES")
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start the worker example");
    assert!(welcomed(&server.address, id).await, "the worker did not run the job within 20 s");
}
