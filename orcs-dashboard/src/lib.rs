//! The orcs web dashboard: queues, their jobs by state, a job's detail, failed jobs with retry
//! and delete, pause and resume, limits, schedules and batches, as an axum [`Router`] an
//! application mounts under a path, or standalone as `orcs dashboard --bind ADDR`.
//!
//! The key design decision: the pages are rendered on the server from the driver's admin
//! surface ([`orcs_core::Admin`]) with templates checked at compile time (maud), and the browser
//! only gets two vendored scripts served from the binary (htmx refreshes the overview every two
//! seconds, uPlot draws its charts) plus a small one of our own. No build step, no CDN, and a
//! strict Content-Security-Policy (`script-src 'self'`, no inline script or style).
//!
//! # Security
//! - Tokens: `ORCS_DASHBOARD_TOKEN` (admin) and `ORCS_DASHBOARD_READONLY_TOKEN` (viewer: every
//!   action answers 403). A browser signs in once with the login form and gets an HttpOnly,
//!   SameSite=Strict session cookie signed with the token (stateless: changing the token ends
//!   every session); a script sends `Authorization: Bearer TOKEN`. Without a token the dashboard
//!   is open to loopback peers only, and [`bind`] refuses any other address, saying so.
//! - Actions are POSTs to one endpoint, each checked for the session's CSRF token and the
//!   request's origin, then the role, and logged with the role, session and peer at the
//!   tracing target [`AUDIT_TARGET`].
//!
//! # Mounting it in an application
//!
//! ```no_run
//! use std::net::SocketAddr;
//!
//! use axum::Router;
//! use orcs_core::Queue;
//! use orcs_memory::MemoryDriver;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let queue = Queue::new(MemoryDriver::new()); // or orcs::Queue::from_env().await?
//! // ORCS_DASHBOARD_TOKEN / ORCS_DASHBOARD_READONLY_TOKEN, or Auth::tokens(Some(..), None)?
//! let auth = orcs_dashboard::Auth::from_env()?;
//! let app: Router = Router::new().nest("/admin/queues", orcs_dashboard::router(queue, auth));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! // The connect info lets the dashboard see the peer (the audit log, and loopback-only
//! // without a token).
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Then open `http://127.0.0.1:3000/admin/queues/`. Every link is relative, so any mount path
//! works; the session cookie is scoped to it.

mod assets;
mod auth;
mod overview;
mod routes;
mod text;
mod views;

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use orcs_core::Queue;
use tokio::net::TcpListener;

pub use auth::{Auth, Error, MIN_TOKEN_LEN, READONLY_TOKEN_VAR, Role, TOKEN_VAR};
pub use overview::{Overview, Totals};
pub use routes::{AUDIT_TARGET, CONTENT_SECURITY_POLICY};

/// The dashboard's pages, actions and static files for `queue`, protected by `auth`, as a
/// router to serve or to `.nest("/some/path", ..)` in an application.
///
/// Serve it with `into_make_service_with_connect_info::<SocketAddr>()` so that it sees each
/// request's peer: without a token it refuses every request whose peer it cannot see to be on
/// loopback.
pub fn router<S: Clone + Send + Sync + 'static>(queue: Queue, auth: Auth) -> Router<S> {
    routes::router(queue, auth, None)
}

/// Renders the Prometheus text served at `/metrics`: its content type and body, or a message
/// for a 503. The dashboard does not depend on the driver crates, so the caller (the `orcs`
/// command, an application) passes `orcs::metrics`'s renderer in.
pub type MetricsRenderer = std::sync::Arc<
    dyn Fn()
            -> std::pin::Pin<Box<dyn Future<Output = Result<(&'static str, String), String>> + Send>>
        + Send
        + Sync,
>;

/// [`router`] with a `/metrics` page (behind the same sign-in: scrape with
/// `Authorization: Bearer TOKEN`).
pub fn router_with_metrics<S: Clone + Send + Sync + 'static>(
    queue: Queue,
    auth: Auth,
    metrics: MetricsRenderer,
) -> Router<S> {
    routes::router(queue, auth, Some(metrics))
}

/// Checks that a dashboard with `auth` may listen on `addr`: without a token, only on a
/// loopback address.
///
/// # Errors
/// [`Error::OpenBind`], naming the variables to set.
pub fn check_bind(addr: SocketAddr, auth: &Auth) -> Result<(), Error> {
    if auth.is_open() && !addr.ip().is_loopback() {
        return Err(Error::OpenBind { addr });
    }
    Ok(())
}

/// Opens the dashboard's listener on `addr`, after [`check_bind`].
///
/// # Errors
/// [`Error::OpenBind`], or [`Error::Bind`] when the address cannot be used.
pub async fn bind(addr: SocketAddr, auth: &Auth) -> Result<TcpListener, Error> {
    check_bind(addr, auth)?;
    TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })
}

/// Serves the dashboard on `listener` (from [`bind`]) until `shutdown` completes, then lets
/// open requests finish.
///
/// # Errors
/// [`Error::OpenBind`] if the listener is beyond loopback without a token; [`Error::Bind`] if
/// the server fails.
pub async fn serve(
    listener: TcpListener,
    queue: Queue,
    auth: Auth,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    serve_with(listener, queue, auth, None, shutdown).await
}

/// [`serve`], with `/metrics` rendered by `metrics` if given.
///
/// # Errors
/// As [`serve`].
pub async fn serve_with(
    listener: TcpListener,
    queue: Queue,
    auth: Auth,
    metrics: Option<MetricsRenderer>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let addr = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr: SocketAddr::from(([0, 0, 0, 0], 0)), source })?;
    check_bind(addr, &auth)?;
    let app: Router = routes::router(queue, auth, metrics);
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| Error::Bind { addr, source })
}
