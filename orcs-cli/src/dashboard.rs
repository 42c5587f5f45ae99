//! `orcs dashboard`: the web dashboard (the `orcs-dashboard` crate) on the configured backend.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Context as _, Result};
use clap::Args;
use orcs_dashboard::{Auth, Error as DashboardError, READONLY_TOKEN_VAR, TOKEN_VAR};

use crate::commands::{Ctx, backend_location};
use crate::config::DriverKind;
use crate::output::say;
use crate::usage;

#[derive(Debug, Args)]
pub(crate) struct DashboardArgs {
    /// The address to listen on. Without ORCS_DASHBOARD_TOKEN or ORCS_DASHBOARD_READONLY_TOKEN
    /// only a loopback address is allowed
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080", value_parser = parse_bind)]
    pub(crate) bind: SocketAddr,
}

/// `HOST:PORT` with an IP address, `localhost:PORT`, or `:PORT` (loopback).
fn parse_bind(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    let advice = "use an IP address and a port, such as 127.0.0.1:8080 (this machine only) or \
                  0.0.0.0:8080 (every interface, needs a token)";
    if let Some(port) = text.strip_prefix("localhost:").or_else(|| text.strip_prefix(':')) {
        let port: u16 = port.parse().map_err(|_| format!("{port:?} is not a port; {advice}"))?;
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    text.parse().map_err(|_| format!("{text:?} is not an address with a port; {advice}"))
}

pub(crate) async fn run(ctx: &Ctx<'_>, args: DashboardArgs) -> Result<()> {
    let auth = Auth::from_env().map_err(|e| usage(e.to_string()))?;
    // Refused before connecting anything: the mistake is in the command, not the backend.
    let listener = orcs_dashboard::bind(args.bind, &auth).await.map_err(|e| match e {
        DashboardError::OpenBind { .. } => usage(e.to_string()),
        other => anyhow::Error::new(other),
    })?;
    let queue = ctx.queue().await?;
    let addr = listener.local_addr().context("cannot read the dashboard's address")?;
    if ctx.config.driver == DriverKind::Memory {
        eprintln!(
            "warning: the memory driver keeps jobs inside this process, so the dashboard shows \
             none of another process's jobs; use --driver redis or --driver database (or \
             QUEUE_DRIVER)"
        );
    }
    if auth.is_open() {
        eprintln!(
            "note: no {TOKEN_VAR} or {READONLY_TOKEN_VAR} is set, so the dashboard is open to \
             anyone on this machine and listens on loopback only; set them to sign in with \
             tokens and to listen on other addresses"
        );
    }
    say!("dashboard on http://{addr}/ ({}); Ctrl-C stops it", backend_location(&ctx.config));
    let metrics = metrics_renderer(&queue);
    say!("metrics on http://{addr}/metrics (signed in, or Authorization: Bearer TOKEN)");
    orcs_dashboard::serve_with(listener, queue, auth, Some(metrics), orcs_core::shutdown_signal())
        .await?;
    Ok(())
}

/// The renderer `orcs dashboard` gives `/metrics`: the backend's series of every queue.
pub(crate) fn metrics_renderer(queue: &orcs_core::Queue) -> orcs_dashboard::MetricsRenderer {
    let queue = queue.clone();
    std::sync::Arc::new(move || {
        let queue = queue.clone();
        Box::pin(async move {
            orcs::metrics::render(&queue)
                .await
                .map(|text| (orcs::metrics::CONTENT_TYPE, text))
                .map_err(|e| format!("cannot read the queues for /metrics: {e}"))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_addresses_parse() {
        assert_eq!(parse_bind("0.0.0.0:9000"), Ok(SocketAddr::from(([0, 0, 0, 0], 9000))));
        assert_eq!(parse_bind("localhost:80"), Ok(SocketAddr::from(([127, 0, 0, 1], 80))));
        assert_eq!(parse_bind(":8080"), Ok(SocketAddr::from(([127, 0, 0, 1], 8080))));
        assert_eq!(parse_bind("[::1]:8080"), Ok("[::1]:8080".parse().unwrap()));
        assert!(parse_bind("8080").unwrap_err().contains("127.0.0.1:8080"));
        assert!(parse_bind("localhost:x").unwrap_err().contains("not a port"));
    }
}
