//! The operations phases of `orcs bench` (issue #13): how fast `/metrics` and the overview page
//! answer with a large backlog queued, and what heartbeats, metrics and the throughput history
//! cost a drain.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use orcs_core::Queue;
use serde_json::{Value, json};

use super::{
    QUEUE, Tidy, bulk_enqueue, check_pending, percentile, r3, rotation, summarize_modes,
    timed_drain_with, worker,
};

/// Requests of each kind (`/metrics`, the overview) timed by the ops-latency phase.
const REQUESTS: usize = 300;
/// Untimed requests first, so that connection pools and lazily built state are warm.
const WARMUP: usize = 10;
/// Rounds of the ops-cost phase; each drains once in every mode, in a rotating order.
const COST_ROUNDS: usize = 5;
/// How often the ops-cost phase renders the worker's metrics during its drains (a Prometheus
/// scrape every second: far more often than the usual 15 s, so that its cost shows).
const SCRAPE_EVERY: Duration = Duration::from_secs(1);
/// The bearer token of the benchmark's dashboard (it listens on loopback for this process only).
const TOKEN: &str = "orcs-bench-token-0123456789abcdef";

/// Queues `backlog` jobs, serves the dashboard with `/metrics` on a loopback port as
/// `orcs dashboard` does, and times [`REQUESTS`] GETs of each page from a plain HTTP/1.1 client
/// (a new connection per request, as a scraper without keep-alive makes). Every answer must be a
/// 200 that shows the backlog.
pub(super) async fn phase_latency(queue: &Queue, backlog: u64) -> anyhow::Result<Value> {
    queue.clear(QUEUE).await?;
    let rss_before = rss_bytes();
    let started = Instant::now();
    bulk_enqueue(queue, backlog).await?;
    let fill_secs = started.elapsed().as_secs_f64();
    check_pending(queue, backlog, "ops-latency").await?;
    let rss_after = rss_bytes();

    let auth = orcs_dashboard::Auth::tokens(Some(TOKEN), None)?;
    let listener = orcs_dashboard::bind(SocketAddr::from(([127, 0, 0, 1], 0)), &auth).await?;
    let addr = listener.local_addr().context("cannot read the bench dashboard's address")?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(orcs_dashboard::serve_with(
        listener,
        queue.clone(),
        auth,
        Some(crate::dashboard::metrics_renderer(queue)),
        async move {
            let _ = stopped.await;
        },
    ));

    // The client blocks on its sockets, on a thread of its own, while the server runs on the
    // runtime's workers.
    let timed = tokio::task::spawn_blocking(move || time_requests(addr, backlog)).await;
    let _ = stop.send(());
    server.await.context("the bench dashboard panicked")??;
    let (mut metrics, mut overview, metrics_bytes) =
        timed.context("the bench client panicked")??;
    queue.clear(QUEUE).await?;

    metrics.sort_by(f64::total_cmp);
    overview.sort_by(f64::total_cmp);
    let mut out = serde_json::Map::new();
    out.insert("ops_backlog".into(), json!(backlog));
    out.insert("ops_requests".into(), json!(REQUESTS));
    out.insert("ops_fill_secs".into(), json!(r3(fill_secs)));
    out.insert("metrics_body_bytes".into(), json!(metrics_bytes));
    for (key, samples) in [("metrics", &metrics), ("overview", &overview)] {
        out.insert(format!("{key}_p50_ms"), json!(r3(percentile(samples, 50.0))));
        out.insert(format!("{key}_p99_ms"), json!(r3(percentile(samples, 99.0))));
        out.insert(format!("{key}_max_ms"), json!(r3(samples[samples.len() - 1])));
    }
    // Only the memory driver keeps its jobs in this process; the others' memory is the server's
    // (scripts/bench.sh reads Redis's).
    if queue.driver().name() == "memory"
        && let (Some(before), Some(after)) = (rss_before, rss_after)
    {
        let per_job = after.saturating_sub(before) as f64 / backlog as f64;
        out.insert("backlog_rss_bytes_per_job".into(), json!(r3(per_job)));
    }
    Ok(Value::Object(out))
}

/// Times the GETs, alternating `/metrics` and `/overview` so that both see the same machine;
/// answers the milliseconds of each and the size of the last metrics body.
fn time_requests(addr: SocketAddr, backlog: u64) -> anyhow::Result<(Vec<f64>, Vec<f64>, usize)> {
    // The backend's gauge of the bench queue, and the overview's pending count, must show it.
    let gauge = format!("orcs_queue_pending{{queue=\"{QUEUE}\"}} {backlog}");
    let (mut metrics, mut overview, mut metrics_bytes) = (Vec::new(), Vec::new(), 0);
    for i in 0..WARMUP + REQUESTS {
        let started = Instant::now();
        let body = get(addr, "/metrics")?;
        let metrics_ms = started.elapsed().as_secs_f64() * 1000.0;
        if !body.contains(&gauge) {
            bail!("ops-latency: /metrics does not show {gauge:?}; it answered:\n{body}");
        }
        metrics_bytes = body.len();
        let started = Instant::now();
        let body = get(addr, "/overview")?;
        let overview_ms = started.elapsed().as_secs_f64() * 1000.0;
        if !body.contains(QUEUE) {
            bail!("ops-latency: the overview page does not list the {QUEUE:?} queue");
        }
        if i >= WARMUP {
            metrics.push(metrics_ms);
            overview.push(overview_ms);
        }
    }
    Ok((metrics, overview, metrics_bytes))
}

/// One HTTP/1.1 GET with the bench's bearer token on a new connection; answers the body of a
/// 200, and fails on anything else.
fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream =
        TcpStream::connect(addr).with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_nodelay(true)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Connection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).with_context(|| format!("reading the answer to GET {path}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        bail!("GET {path} answered {status:?}: {}", body.chars().take(500).collect::<String>());
    }
    Ok(body.to_owned())
}

/// This process's resident memory, from /proc (Linux); `None` elsewhere.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// How the ops-cost phase runs its worker.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// No heartbeat, no observer, no scrape.
    Plain,
    /// Heartbeats every `.0` seconds (which also write the throughput history), the metrics
    /// observer on every attempt, and a render of the worker's metrics every [`SCRAPE_EVERY`].
    Ops(u64),
}

impl Mode {
    fn key(self) -> String {
        match self {
            Self::Plain => "plain".into(),
            Self::Ops(secs) => format!("ops{secs}"),
        }
    }
}

/// Drains `n` queued jobs in each [`Mode`], [`COST_ROUNDS`] times in [`rotation`]; answers the median jobs/s of
/// each mode and the median over rounds of each round's ops/plain ratio.
pub(super) async fn phase_cost(queue: &Queue, n: u64, tidy: &Tidy) -> anyhow::Result<Value> {
    let modes = [Mode::Plain, Mode::Ops(5), Mode::Ops(1)];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for (_, m) in rotation(COST_ROUNDS, modes.len()) {
        tidy.now().await;
        queue.clear(QUEUE).await?;
        bulk_enqueue(queue, n).await?;
        let secs = drain_in(queue, n, modes[m]).await?;
        rates[m].push(n as f64 / secs);
    }
    queue.clear(QUEUE).await?;
    let mut out = serde_json::Map::new();
    out.insert("ops_cost_rounds".into(), json!(COST_ROUNDS));
    out.insert("ops_cost_n".into(), json!(n));
    let prefixes: Vec<String> = modes.iter().map(|mode| format!("drain_{}", mode.key())).collect();
    summarize_modes(&mut out, &prefixes, &rates);
    // The acceptance figure: the default 5 s interval.
    if let Some(ratio) = out.get("drain_ops5_vs_plain").cloned() {
        out.insert("drain_ops_vs_plain".into(), ratio);
    }
    Ok(Value::Object(out))
}

async fn drain_in(queue: &Queue, n: u64, mode: Mode) -> anyhow::Result<f64> {
    let base = worker(queue, Duration::from_secs(1));
    match mode {
        Mode::Plain => timed_drain_with(n, base.heartbeat_interval(Duration::ZERO)).await,
        Mode::Ops(secs) => {
            scraped_drain(queue, n, base.heartbeat_interval(Duration::from_secs(secs))).await
        }
    }
}

/// Drains `n` jobs on `worker` with a metrics recorder as its observer, rendering the metrics
/// every [`SCRAPE_EVERY`] as a Prometheus scrape would; the render must have run at least once.
pub(super) async fn scraped_drain(
    queue: &Queue,
    n: u64,
    worker: orcs_core::Worker,
) -> anyhow::Result<f64> {
    let metrics = orcs::metrics::Metrics::new();
    let worker = worker.observer(metrics.observer());
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let scraper = tokio::spawn({
        let queue = queue.clone();
        async move {
            let mut tick = tokio::time::interval(SCRAPE_EVERY);
            let mut size = 0;
            loop {
                tokio::select! {
                    _ = tick.tick() => size = metrics.render(&queue).await?.len(),
                    // A drain shorter than the scheduler's first poll of this task saw no
                    // scrape: render once now, after the timing, so the check below holds.
                    _ = &mut stopped => {
                        if size == 0 {
                            size = metrics.render(&queue).await?.len();
                        }
                        return Ok::<_, orcs_core::Error>(size);
                    }
                }
            }
        }
    });
    let secs = timed_drain_with(n, worker).await;
    let _ = stop.send(());
    let size = scraper.await.context("the metrics scraper panicked")??;
    if size == 0 {
        bail!("the worker's metrics rendered nothing during the drain");
    }
    secs
}
