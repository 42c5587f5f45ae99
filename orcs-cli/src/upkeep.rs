//! What `queue:work` runs beside its worker: the Prometheus endpoint of `--metrics ADDR` and the
//! failed-job retention (`failed_retention`, `failed_keep`).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Result;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use orcs::Config;
use orcs::metrics::{CONTENT_TYPE, Metrics};
use orcs_core::{Error, Queue};
use tokio::net::TcpListener;

/// The tasks `queue:work` runs beside its worker; they end when this is dropped.
pub(crate) struct Upkeep {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Upkeep {
    /// Serves `metrics` on its listener, if given, and applies the retention settings of
    /// `config`, if any.
    pub(crate) fn start(
        queue: &Queue,
        config: &Config,
        metrics: Option<(TcpListener, Metrics)>,
    ) -> Self {
        let mut tasks = Vec::new();
        if let Some((listener, metrics)) = metrics {
            tasks.push(tokio::spawn(serve_metrics(listener, queue.clone(), metrics)));
        }
        if config.failed_prune(0).is_some() {
            tasks.push(tokio::spawn(retention(queue.clone(), config.clone())));
        }
        Self { tasks }
    }
}

impl Drop for Upkeep {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// How often a worker applies the retention settings.
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);

/// `HOST:PORT` with an IP address, `localhost:PORT`, or `:PORT` (loopback).
pub(crate) fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    let advice = "use an IP address and a port, such as 127.0.0.1:9100 (this machine only) or \
                  0.0.0.0:9100 (every interface)";
    if let Some(port) = text.strip_prefix("localhost:").or_else(|| text.strip_prefix(':')) {
        let port: u16 = port.parse().map_err(|_| format!("{port:?} is not a port; {advice}"))?;
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    text.parse().map_err(|_| format!("{text:?} is not an address with a port; {advice}"))
}

/// Listens on `--metrics ADDR` before the worker starts, so a taken port stops it at once.
pub(crate) async fn bind_metrics(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "--metrics {addr}: cannot listen there ({e}); pick a free port or another address"
        )
    })
}

#[derive(Clone)]
struct Scrape {
    queue: Queue,
    metrics: Metrics,
}

/// Answers `GET /metrics` with [`Metrics::render`] until the task is dropped.
async fn serve_metrics(listener: TcpListener, queue: Queue, metrics: Metrics) {
    let router = Router::new()
        .route("/metrics", get(scrape))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found: the metrics are at /metrics\n") })
        .with_state(Scrape { queue, metrics });
    if let Err(e) = axum::serve(listener, router).await {
        tracing::warn!(error = %e, "the metrics endpoint stopped; the worker goes on without it");
    }
}

async fn scrape(State(scrape): State<Scrape>) -> Response {
    match scrape.metrics.render(&scrape.queue).await {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the queues from the backend: {e}\n"),
        )
            .into_response(),
    }
}

/// Applies the retention settings every minute, starting now, until the task is dropped. A
/// driver that cannot prune is said once; other errors are logged and tried again next time.
async fn retention(queue: Queue, config: Config) {
    loop {
        if let Some(rule) = config.failed_prune(queue.now()) {
            match queue.driver().prune_failed(&rule).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(jobs = n, "pruned failed jobs by the retention settings"),
                Err(e @ Error::Unsupported { .. }) => {
                    tracing::warn!(
                        error = %e,
                        "failed_retention and failed_keep are ignored: this driver cannot prune \
                         failed jobs"
                    );
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not prune failed jobs; trying again in a minute")
                }
            }
        }
        tokio::time::sleep(RETENTION_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_say_what_they_accept() {
        assert_eq!(parse_addr(":9100"), Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, 9100))));
        assert_eq!(parse_addr("0.0.0.0:9"), Ok(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 9))));
        assert!(parse_addr("9100").unwrap_err().contains("such as 127.0.0.1:9100"));
        assert!(parse_addr("localhost:x").unwrap_err().contains("not a port"));
    }
}
