//! A real browser through the pages: Debian's chromium driven over WebDriver (chromedriver,
//! started here on a free port) with fantoccini. The dashboard is mounted under
//! `/admin/queues` in an axum app, as an application would, and served over TCP.
//!
//! The walk: dispatch jobs, sign in as admin, see the counts, open a failed job, retry it, see
//! a worker run it (the overview updates by itself), then sign in as a viewer whose retry gets
//! 403. A screenshot of each page goes to `target/dashboard-screenshots/<driver>/`.
//!
//! Without chromium and chromedriver the tests skip loudly, or fail under
//! `ORCS_TEST_REQUIRE_SERVICES=1` (CI installs both: `scripts/ci.sh`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Router;
use fantoccini::{Client, ClientBuilder, Locator};
use orcs_core::{
    DispatchOptions, Job, JobContext, JobError, JobState, NewBatch, NewJob, Queue, Registry,
    ScheduleRecord, Worker, new_job_id,
};
use orcs_dashboard::Auth;
use orcs_memory::MemoryDriver;
use orcs_tests::services::{self, unique_name};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use crate::{ADMIN, VIEWER, failed_job};

/// The months whose report fails: each test adds its own, and takes it out before the retry.
static FAILING: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[derive(Serialize, Deserialize)]
struct SendEmail {
    to: String,
}

impl Job for SendEmail {
    const NAME: &'static str = "SendEmail";
    const QUEUE: &'static str = "emails";

    async fn handle(&self, _ctx: &JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct BuildReport {
    month: String,
}

impl Job for BuildReport {
    const NAME: &'static str = "BuildReport";
    const QUEUE: &'static str = "reports";
    const MAX_RETRIES: u32 = 0;

    async fn handle(&self, _ctx: &JobContext) -> Result<(), JobError> {
        if FAILING.lock().expect("not poisoned").contains(&self.month) {
            return Err(JobError::fatal("the report service answered 503 Service Unavailable"));
        }
        Ok(())
    }
}

/// The program `var` names, else the first of `names` on `PATH`.
fn program(var: &str, names: &[&str]) -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(var).map(PathBuf::from) {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("{var} names {}, which is not a file", path.display()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    names
        .iter()
        .find_map(|name| {
            std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
        })
        .ok_or_else(|| format!("{} is not on PATH", names.join(" or ")))
}

/// chromedriver running on a free loopback port, stopped when dropped.
struct Chromedriver {
    child: Child,
    url: String,
    chromium: PathBuf,
}

impl Chromedriver {
    /// Starts chromedriver, or skips (loudly; a failure under ORCS_TEST_REQUIRE_SERVICES=1).
    async fn start() -> Option<Self> {
        let chromium =
            program("ORCS_TEST_CHROMIUM", &["chromium", "chromium-browser", "google-chrome"]);
        let driver = program("ORCS_TEST_CHROMEDRIVER", &["chromedriver"]);
        let (chromium, driver) = match (chromium, driver) {
            (Ok(chromium), Ok(driver)) => (chromium, driver),
            (Err(why), _) | (_, Err(why)) => {
                return services::skip(
                    "chromium and chromedriver",
                    &format!(
                        "{why}; install them with `apt-get install -y chromium chromium-driver` \
                         (scripts/ci.sh does), or name them with ORCS_TEST_CHROMIUM and \
                         ORCS_TEST_CHROMEDRIVER"
                    ),
                );
            }
        };
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            probe.local_addr().expect("its address").port()
        };
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display()));
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on port {port} within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(Self { child, url: format!("http://127.0.0.1:{port}"), chromium })
    }

    /// A new headless browser session (its own cookies).
    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": self.chromium,
                // --no-sandbox: CI runs as root, where chromium's sandbox cannot start.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1366,900", "--hide-scrollbars", "--lang=en-US"],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("cannot open a chromium session through chromedriver: {e}"))
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Where the screenshots go: `<target>/dashboard-screenshots/<driver>/`.
fn screenshot_dir(driver: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("dashboard-screenshots").join(driver);
    std::fs::create_dir_all(&dir).expect("create the screenshot folder");
    dir
}

async fn screenshot(client: &Client, dir: &Path, name: &str) {
    let png = client.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write the screenshot");
}

/// Waits until the element at `css` shows `expected`; fails with what it showed last.
async fn wait_text(client: &Client, css: &str, expected: &str, within: Duration) {
    let deadline = Instant::now() + within;
    let mut last = String::from("(no such element)");
    loop {
        if let Ok(element) = client.find(Locator::Css(css)).await
            && let Ok(text) = element.text().await
        {
            if text.trim() == expected {
                return;
            }
            last = text;
        }
        assert!(
            Instant::now() < deadline,
            "{css} shows {last:?}, not {expected:?}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text_of(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .text()
        .await
        .expect("its text")
}

async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
}

async fn sign_in(client: &Client, base: &str, token: &str) {
    client.goto(&format!("{base}/login")).await.expect("open the sign-in page");
    client
        .find(Locator::Css("#token"))
        .await
        .expect("the token field")
        .send_keys(token)
        .await
        .expect("type");
    click(client, "button[type=submit]").await;
    client.wait().for_element(Locator::Css("#live")).await.expect("the overview after signing in");
}

/// Collects Content-Security-Policy violations of the current page from now on.
async fn watch_csp(client: &Client) {
    client
        .execute(
            "window.__csp = []; document.addEventListener('securitypolicyviolation', \
             e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));",
            vec![],
        )
        .await
        .expect("install the CSP watcher");
}

async fn csp_violations(client: &Client) -> serde_json::Value {
    client.execute("return window.__csp || [];", vec![]).await.expect("read the CSP watcher")
}

/// The walk through the pages on `queue`, whose driver is called `driver`.
async fn walk(queue: Queue, driver: &str) {
    let Some(chromedriver) = Chromedriver::start().await else { return };
    let shots = screenshot_dir(driver);
    let month = unique_name(&format!("{driver}-2026-11"));
    FAILING.lock().expect("not poisoned").push(month.clone());

    // 5 emails waiting, 2 delayed, and a report that fails for good.
    queue
        .dispatch_many((0..5).map(|i| SendEmail { to: format!("user{i}@example.com") }))
        .await
        .expect("dispatch");
    let later = DispatchOptions::new().delay(Duration::from_secs(3600));
    queue
        .dispatch_many_with(
            (0..2).map(|i| SendEmail { to: format!("later{i}@example.com") }),
            later,
        )
        .await
        .expect("dispatch");
    let report = queue.dispatch(BuildReport { month: month.clone() }).await.expect("dispatch");
    let registry = Registry::new().register::<BuildReport>();
    let worker =
        || Worker::new(queue.clone(), registry.clone()).queues(["reports"]).stop_when_empty(true);
    let summary = worker().run_until(std::future::pending()).await.expect("work the reports");
    assert_eq!(summary.failed, 1, "the report failed: {summary:?}");

    // The dashboard, mounted under a path as an application would.
    let auth = Auth::tokens(Some(ADMIN), Some(VIEWER)).expect("tokens");
    let app: Router =
        Router::new().nest("/admin/queues", orcs_dashboard::router(queue.clone(), auth));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}/admin/queues", listener.local_addr().expect("addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });

    let admin = chromedriver.browser().await;

    // Not signed in: the sign-in page (a 401).
    admin.goto(&base).await.expect("open the dashboard");
    let heading = text_of(&admin, "h1").await;
    assert_eq!(heading, "orcs dashboard", "the sign-in page");
    assert!(admin.find(Locator::Css("#live")).await.is_err(), "no data without signing in");
    screenshot(&admin, &shots, "01-sign-in").await;

    // The overview: the counts, and the chart once two samples came in.
    sign_in(&admin, &base, ADMIN).await;
    watch_csp(&admin).await;
    assert_eq!(text_of(&admin, r#"tr[data-queue="emails"] td.pending"#).await, "5");
    assert_eq!(text_of(&admin, r#"tr[data-queue="emails"] td.delayed"#).await, "2");
    assert_eq!(text_of(&admin, r#"tr[data-queue="reports"] td.failed"#).await, "1");
    admin
        .wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css("#throughput-chart .uplot"))
        .await
        .expect("the throughput chart is drawn from the live samples");
    screenshot(&admin, &shots, "02-overview").await;

    // A queue's jobs by state.
    click(&admin, r#"a[href="queue?name=emails"]"#).await;
    wait_text(&admin, "h1", "Queue emails running", Duration::from_secs(5)).await;
    assert_eq!(admin.find_all(Locator::Css("table.jobs tbody tr")).await.expect("rows").len(), 5);
    screenshot(&admin, &shots, "03-queue-pending").await;
    click(&admin, "nav.tabs a:nth-child(2)").await;
    wait_text(&admin, "nav.tabs a.active", "Delayed 2", Duration::from_secs(5)).await;
    screenshot(&admin, &shots, "04-queue-delayed").await;

    // The failed jobs, then the failed job.
    click(&admin, r#"header nav a[href="failed"]"#).await;
    wait_text(&admin, "h1", "Failed jobs", Duration::from_secs(5)).await;
    screenshot(&admin, &shots, "05-failed").await;
    click(&admin, &format!(r#"table.failed a[href="job?id={report}"]"#)).await;
    wait_text(&admin, "h1 code", &report, Duration::from_secs(5)).await;
    assert!(text_of(&admin, "pre.error").await.contains("503 Service Unavailable"));
    assert!(text_of(&admin, "pre.json").await.contains(&month), "the payload");
    screenshot(&admin, &shots, "06-job-failed").await;

    // Retry it as admin; it is pending again.
    FAILING.lock().expect("not poisoned").retain(|m| *m != month);
    click(&admin, r#".toolbar button[value="retry"]"#).await;
    wait_text(&admin, "p.flash", "Retried 1 job.", Duration::from_secs(5)).await;
    assert_eq!(text_of(&admin, "h1 .badge").await, "Pending");
    screenshot(&admin, &shots, "07-job-retried").await;

    // A worker runs it, and the overview shows it without a reload.
    admin.goto(&format!("{base}/overview")).await.expect("open the overview");
    watch_csp(&admin).await;
    assert_eq!(text_of(&admin, r#"tr[data-queue="reports"] td.pending"#).await, "1");
    let summary = worker().run_until(std::future::pending()).await.expect("work the reports");
    assert_eq!(summary.done, 1, "the retried report ran: {summary:?}");
    wait_text(&admin, r#"tr[data-queue="reports"] td.processed"#, "1", Duration::from_secs(10))
        .await;
    wait_text(&admin, r#"tr[data-queue="reports"] td.pending"#, "0", Duration::from_secs(5)).await;
    assert_eq!(queue.get(&report).await.expect("get"), None, "completed jobs are deleted");
    tokio::time::sleep(Duration::from_millis(2500)).await; // one more sample for the chart
    screenshot(&admin, &shots, "08-overview-after-the-run").await;
    assert_eq!(csp_violations(&admin).await, json!([]), "no Content-Security-Policy violation");

    // A schedule and a batch, where the driver has them.
    let now = queue.now();
    let definition = json!({"cron": "0 3 * * *", "job": "BuildReport", "data": {"month": "last"}});
    let record = ScheduleRecord::new("nightly-report", "reports", definition.to_string(), now);
    let schedule = queue.driver().register_schedule(&record).await;
    admin.goto(&format!("{base}/schedules")).await.expect("open the schedules");
    match schedule {
        Ok(_) => assert_eq!(text_of(&admin, "table.schedules td code").await, "nightly-report"),
        Err(orcs_core::Error::Unsupported { .. }) => {
            assert!(text_of(&admin, "p.notice").await.contains("not supported"));
        }
        Err(e) => panic!("register a schedule: {e}"),
    }
    screenshot(&admin, &shots, "09-schedules").await;

    let batch_id = new_job_id();
    let children: Vec<NewJob> = (0..3)
        .map(|i| {
            let payload = json!({"to": format!("reader{i}@example.com")}).to_string();
            let mut child = NewJob::new(new_job_id(), "SendEmail", "newsletter", payload, now);
            child.batch = Some(batch_id.clone());
            child
        })
        .collect();
    let mut batch = NewBatch::new(batch_id.as_str(), now);
    batch.then = Some(NewJob::new(
        new_job_id(),
        "SendEmail",
        "newsletter",
        r#"{"to":"editor@example.com"}"#,
        now,
    ));
    let pushed = queue.driver().push_batch(batch, children).await;
    admin.goto(&format!("{base}/batch?id={batch_id}")).await.expect("open the batch");
    match pushed {
        Ok(_) => {
            assert!(text_of(&admin, "main p").await.contains("0 of 3 finished"));
            screenshot(&admin, &shots, "11-batch").await;
            // Cancelling asks first (data-confirm), then cancels the waiting children.
            click(&admin, r#".toolbar button[value="cancel-batch"]"#).await;
            admin.accept_alert().await.expect("confirm the cancel");
            admin.wait().for_element(Locator::Css("p.flash")).await.expect("the notice");
            assert!(text_of(&admin, "p.flash").await.starts_with("Cancelled batch"));
            screenshot(&admin, &shots, "11-batch-cancelled").await;
        }
        Err(orcs_core::Error::Unsupported { .. }) => {
            assert!(text_of(&admin, "p.notice").await.contains("not supported"));
            screenshot(&admin, &shots, "11-batch").await;
        }
        Err(e) => panic!("push a batch: {e}"),
    }

    // A running worker shows on the workers page, if the driver keeps heartbeats.
    let idle = Worker::new(queue.clone(), registry.clone()).queues(["idle"]).spawn();
    let listed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match queue.driver().workers(queue.now()).await {
                Ok(list) if list.is_empty() => tokio::time::sleep(Duration::from_millis(50)).await,
                Ok(list) => return Some(list[0].id.clone()),
                Err(_) => return None,
            }
        }
    })
    .await
    .expect("the worker's first heartbeat within 10 s");
    admin.goto(&format!("{base}/workers")).await.expect("open the workers page");
    match &listed {
        Some(id) => assert_eq!(text_of(&admin, "table.workers td.id").await, *id),
        None => assert!(text_of(&admin, "p.notice").await.contains("keeps no worker heartbeats")),
    }
    screenshot(&admin, &shots, "10-workers").await;
    idle.shutdown().await.expect("stop the idle worker");

    // A viewer sees the failed job with a disabled retry; forcing the form gets 403.
    let other =
        failed_job(&queue, "reports", "the report service answered 503 Service Unavailable").await;
    let viewer = chromedriver.browser().await;
    sign_in(&viewer, &base, VIEWER).await;
    assert_eq!(text_of(&viewer, "header .role").await, "read-only");
    viewer.goto(&format!("{base}/job?id={other}")).await.expect("open the job");
    let retry = viewer
        .find(Locator::Css(r#".toolbar button[value="retry"]"#))
        .await
        .expect("the retry button");
    assert!(retry.attr("disabled").await.expect("attr").is_some(), "a viewer's retry is disabled");
    screenshot(&viewer, &shots, "12-job-as-viewer").await;
    viewer
        .execute(
            r#"document.querySelector('.toolbar button[value="retry"]').disabled = false;"#,
            vec![],
        )
        .await
        .expect("enable the button");
    click(&viewer, r#".toolbar button[value="retry"]"#).await;
    wait_text(&viewer, "h1", "Read-only", Duration::from_secs(5)).await;
    screenshot(&viewer, &shots, "13-viewer-retry-403").await;
    assert_eq!(queue.get(&other).await.expect("get").map(|j| j.state), Some(JobState::Failed));

    // Signing out ends the session.
    viewer.goto(&base).await.expect("open the dashboard");
    click(&viewer, "header form button").await;
    viewer.wait().for_element(Locator::Css("#token")).await.expect("the sign-in page");
    viewer.goto(&base).await.expect("open the dashboard");
    assert_eq!(text_of(&viewer, "h1").await, "orcs dashboard", "signed out");

    viewer.close().await.expect("close the viewer's browser");
    admin.close().await.expect("close the admin's browser");
    chromedriver.stop().await;
    let _ = stop.send(());
    server.await.expect("the server task").expect("the server");
    eprintln!("screenshots: {}", shots.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_walks_through_the_dashboard_on_the_memory_driver() {
    walk(Queue::new(MemoryDriver::new()), "memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_walks_through_the_dashboard_on_redis() {
    let Some(url) =
        tokio::task::spawn_blocking(services::redis::redis_url_or_skip).await.expect("join")
    else {
        return;
    };
    let config = orcs_redis::RedisConfig::from_url(&url)
        .expect("a valid test URL")
        .with_prefix(unique_name("orcs-test-dashboard"));
    let driver = orcs_redis::RedisDriver::connect(config).await.expect("connect to the test Redis");
    walk(Queue::new(driver), "redis").await;
}
