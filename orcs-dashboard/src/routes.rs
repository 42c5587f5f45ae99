//! The router: authentication middleware, the pages, the action endpoint, the static files,
//! and the security headers on every answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, OriginalUri, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use maud::Markup;
use orcs_core::{
    CancelOutcome, Error, FailedQuery, JobState, ListRequest, MAX_PAGE, Queue, QueueLimits,
    RateLimit, validate_queue_name,
};
use serde::Deserialize;

use crate::assets;
use crate::auth::{Auth, FLASH_COOKIE, Role, SESSION_COOKIE, bearer, cookie, same};
use crate::overview::Overview;
use crate::text::link;
use crate::views::{self, BatchLookup, Ctx, Jobs, Nav, PAGE_SIZE, Paging, QueuePage};

/// The tracing target of the audit log: one event per action, sign-in and sign-out.
pub const AUDIT_TARGET: &str = "orcs_dashboard::audit";

/// The Content-Security-Policy of every answer: scripts and styles only from the dashboard's
/// own files (no inline script or style), requests only to itself, no framing, no `<base>`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; \
    frame-ancestors 'none'; base-uri 'none'";

/// Jobs one action takes at most (a bulk form posts one id per selected row).
const MAX_IDS: usize = MAX_PAGE;

struct App {
    queue: Queue,
    auth: Auth,
    metrics: Option<crate::MetricsRenderer>,
}

type Shared = Arc<App>;

/// How a request proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// A session cookie from the login form.
    Cookie,
    /// `Authorization: Bearer TOKEN`.
    Bearer,
    /// No token is configured; a loopback peer.
    Open,
}

/// The signed-in user of one request, put there by [`authenticate`].
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) role: Role,
    pub(crate) via: Via,
    /// The session's CSRF token; empty for bearer requests, which need none.
    csrf: String,
    /// A short fingerprint of the session (the start of its signature), for the audit log: it
    /// tells sign-ins with the same shared token apart.
    pub(crate) id: String,
    /// Where the request came from, for the audit log ([`peer_of`]).
    pub(crate) peer: String,
    /// The notice left by the previous action.
    pub(crate) flash: Option<String>,
}

impl Session {
    pub(crate) fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// The dashboard's router; see the crate docs.
pub(crate) fn router<S: Clone + Send + Sync + 'static>(
    queue: Queue,
    auth: Auth,
    metrics: Option<crate::MetricsRenderer>,
) -> Router<S> {
    let app = Arc::new(App { queue, auth, metrics });
    let protected = Router::new()
        .route("/overview", get(overview))
        .route("/live", get(live))
        .route("/overview.json", get(overview_json))
        .route("/queue", get(queue_page))
        .route("/job", get(job_page))
        .route("/failed", get(failed_page))
        .route("/workers", get(workers_page))
        .route("/schedules", get(schedules_page))
        .route("/batch", get(batch_page))
        .route("/metrics", get(metrics_page))
        .route("/action", post(action))
        .route("/logout", post(logout))
        .route_layer(middleware::from_fn_with_state(app.clone(), authenticate));
    Router::new()
        .route("/", get(landing))
        .route("/login", get(login_page).post(login))
        .route("/assets/{file}", get(asset))
        .merge(protected)
        .fallback(not_found)
        .layer(middleware::map_response(secure_headers))
        .with_state(app)
}

/// Finds the request's user (bearer token, session cookie, or an open dashboard's loopback
/// peer) or answers 401; afterwards sets a new session cookie or clears a shown notice.
async fn authenticate(State(app): State<Shared>, mut req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let headers = req.headers();
    let from = peer_of(peer, headers);
    let flash = cookie(headers, FLASH_COOKIE).and_then(decode_flash);
    let mut new_cookie = None;
    let session = if app.auth.is_open() {
        if !peer.is_some_and(|p| p.ip().is_loopback()) {
            return problem(
                StatusCode::FORBIDDEN,
                "Loopback only",
                "This dashboard has no token, so it only answers requests from this machine. \
                 Set ORCS_DASHBOARD_TOKEN (and ORCS_DASHBOARD_READONLY_TOKEN) to open it to \
                 others. An application that mounts it must serve with \
                 into_make_service_with_connect_info::<SocketAddr>() so that the dashboard sees \
                 where requests come from.",
            );
        }
        let existing = cookie(headers, SESSION_COOKIE).and_then(|c| app.auth.verify(c));
        let (_, mac) = match existing {
            Some(found) => found,
            None => {
                let Some(value) = app.auth.issue(Role::Admin) else {
                    return problem(StatusCode::INTERNAL_SERVER_ERROR, "Error", "no session key");
                };
                let verified = app.auth.verify(&value);
                new_cookie = Some(value);
                match verified {
                    Some(found) => found,
                    None => {
                        return problem(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "Error",
                            "a new session did not verify; this is a bug",
                        );
                    }
                }
            }
        };
        session(&app.auth, Role::Admin, Via::Open, &mac, from, flash)
    } else if let Some(token) = bearer(headers) {
        let Some(role) = app.auth.role_of_token(token) else {
            tracing::warn!(target: AUDIT_TARGET, peer = %from, "bearer token refused");
            return unauthorized("That bearer token is not valid.");
        };
        Session {
            role,
            via: Via::Bearer,
            csrf: String::new(),
            id: "bearer".to_owned(),
            peer: from,
            flash: None,
        }
    } else if let Some((role, mac)) =
        cookie(headers, SESSION_COOKIE).and_then(|c| app.auth.verify(c))
    {
        session(&app.auth, role, Via::Cookie, &mac, from, flash)
    } else {
        return unauthorized("Sign in to see the queues.");
    };
    let clear_flash = session.flash.is_some()
        && req.method() == Method::GET
        && !headers.contains_key("hx-request");
    req.extensions_mut().insert(session);
    let mut response = next.run(req).await;
    if let Some(value) = new_cookie {
        response.headers_mut().append(header::SET_COOKIE, app.auth.session_cookie(Some(&value)));
    }
    if clear_flash {
        response.headers_mut().append(header::SET_COOKIE, app.auth.flash_cookie(None));
    }
    response
}

fn session(
    auth: &Auth,
    role: Role,
    via: Via,
    mac: &str,
    peer: String,
    flash: Option<String>,
) -> Session {
    Session {
        role,
        via,
        csrf: auth.csrf(role, mac),
        id: mac.chars().take(8).collect(),
        peer,
        flash,
    }
}

/// The peer address, and the `X-Forwarded-For` a proxy added (as the client claims it: logged
/// for the audit, trusted for nothing).
fn peer_of(peer: Option<SocketAddr>, headers: &HeaderMap) -> String {
    let mut text = peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
    if let Some(forwarded) = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        text.push_str(" forwarded for ");
        text.extend(forwarded.chars().take(100));
    }
    text
}

fn decode_flash(value: &str) -> Option<String> {
    let text: String = form_urlencoded::parse(format!("f={value}").as_bytes())
        .next()
        .map(|(_, v)| v.chars().take(400).collect())?;
    (!text.is_empty()).then_some(text)
}

fn unauthorized(message: &str) -> Response {
    let mut response = (StatusCode::UNAUTHORIZED, views::login(Some(message))).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"orcs dashboard\""),
    );
    response
}

fn problem(status: StatusCode, title: &str, message: &str) -> Response {
    (status, views::problem(title, message)).into_response()
}

/// A backend error as a page: what failed and what to check.
fn backend_error(e: &Error) -> Response {
    let status = match e {
        Error::Invalid { .. } => StatusCode::BAD_REQUEST,
        Error::NotFound { .. } => StatusCode::NOT_FOUND,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let message = format!("{e}. If the backend is down, check that it is running and reachable.");
    problem(status, "The queue backend answered with an error", &message)
}

async fn not_found() -> Response {
    problem(StatusCode::NOT_FOUND, "Not found", "There is no such page in the dashboard.")
}

/// Security headers on every answer; pages are never cached (they carry CSRF tokens and job
/// data), the static files are for five minutes.
async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers
        .insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not `no-referrer`: with it, browsers send `Origin: null` on form posts, which the origin
    // check must refuse.
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

fn ctx<'a>(app: &App, session: &'a Session) -> Ctx<'a> {
    Ctx { session, driver: app.queue.driver().name(), now: app.queue.now() }
}

fn page(app: &App, session: &Session, title: &str, nav: Nav, body: Markup) -> Response {
    views::layout(&ctx(app, session), title, nav, false, body).into_response()
}

/// The mount point itself sends the browser to the overview, by a link relative to where the
/// browser is: `/admin/queues` to `queues/overview`, `/admin/queues/` to `overview`. Every page
/// then sits at the same level, which is what makes all links relative.
async fn landing(OriginalUri(uri): OriginalUri) -> Response {
    let path = uri.path();
    match path.rsplit('/').next() {
        Some(last) if !last.is_empty() => see_other(&format!("{last}/overview")),
        _ => see_other("overview"),
    }
}

async fn overview(State(app): State<Shared>, Extension(session): Extension<Session>) -> Response {
    match Overview::gather_with_history(&app.queue, Duration::from_secs(3600)).await {
        Ok(o) => {
            let ctx = ctx(&app, &session);
            views::layout(&ctx, "Queues", Nav::Overview, true, views::overview(&ctx, &o))
                .into_response()
        }
        Err(e) => backend_error(&e),
    }
}

async fn live(State(app): State<Shared>, Extension(session): Extension<Session>) -> Response {
    match Overview::gather(&app.queue).await {
        Ok(o) => views::live(&ctx(&app, &session), &o).into_response(),
        Err(e) => backend_error(&e),
    }
}

async fn overview_json(State(app): State<Shared>) -> Response {
    match Overview::gather(&app.queue).await {
        Ok(o) => match serde_json::to_string(&o) {
            Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
            Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, "Error", &e.to_string()),
        },
        Err(e) => backend_error(&e),
    }
}

#[derive(Deserialize)]
struct QueueQuery {
    name: Option<String>,
    state: Option<String>,
    page: Option<u64>,
}

fn parse_state(text: &str) -> Option<JobState> {
    match text {
        "pending" => Some(JobState::Pending),
        "delayed" => Some(JobState::Delayed),
        "reserved" | "running" => Some(JobState::Reserved),
        "failed" => Some(JobState::Failed),
        _ => None,
    }
}

async fn queue_page(
    State(app): State<Shared>,
    Extension(session): Extension<Session>,
    Query(q): Query<QueueQuery>,
) -> Response {
    let Some(name) = q.name.filter(|n| !n.is_empty()) else { return see_other("overview") };
    if let Err(e) = validate_queue_name(&name) {
        return backend_error(&e);
    }
    let Some(state) = parse_state(q.state.as_deref().unwrap_or("pending")) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "Unknown state",
            "A queue's jobs are listed by state: pending, delayed, reserved or failed.",
        );
    };
    let page_no = q.page.unwrap_or(1).max(1);
    let offset = (page_no - 1).saturating_mul(PAGE_SIZE as u64);
    let driver = app.queue.driver();
    let stats = match driver.stats(&name, app.queue.now()).await {
        Ok(s) => s,
        Err(e) => return backend_error(&e),
    };
    let (live, failed) = if state == JobState::Failed {
        let query = FailedQuery::new(PAGE_SIZE).queue(name.as_str()).offset(offset);
        match driver.failed(&query).await {
            Ok(jobs) => (Vec::new(), jobs),
            Err(e) => return backend_error(&e),
        }
    } else {
        let request = ListRequest::new(name.as_str(), state, PAGE_SIZE).offset(offset);
        match app.queue.list(&request).await {
            Ok(jobs) => (jobs, Vec::new()),
            Err(e) => return backend_error(&e),
        }
    };
    let total = match state {
        JobState::Pending => stats.pending,
        JobState::Delayed => stats.delayed,
        JobState::Reserved => stats.reserved,
        _ => stats.failed,
    };
    let state_name = state.as_str();
    let page_link =
        |n: u64| link("queue", &[("name", &name), ("state", state_name), ("page", &n.to_string())]);
    let here = page_link(page_no);
    let jobs = if state == JobState::Failed { Jobs::Failed(&failed) } else { Jobs::Live(&live) };
    let shown = live.len() + failed.len();
    let paging = Paging { page: page_no, shown, total: Some(total), link: &page_link };
    let body = views::queue(
        &ctx(&app, &session),
        &QueuePage { stats: &stats, state, jobs, paging, here: &here },
    );
    page(&app, &session, &format!("Queue {name}"), Nav::None, body)
}

#[derive(Deserialize)]
struct IdQuery {
    id: Option<String>,
}

async fn job_page(
    State(app): State<Shared>,
    Extension(session): Extension<Session>,
    Query(q): Query<IdQuery>,
) -> Response {
    let Some(id) = q.id.filter(|id| !id.is_empty()) else { return see_other("overview") };
    match app.queue.get(&id).await {
        Ok(Some(job)) => {
            let body = views::job(&ctx(&app, &session), &job);
            page(&app, &session, &format!("Job {id}"), Nav::None, body)
        }
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            "Job not found",
            &format!(
                "No job has the id {id}: it completed (completed jobs are deleted), was \
                 cancelled or deleted, or the id is wrong."
            ),
        ),
        Err(e) => backend_error(&e),
    }
}

#[derive(Deserialize)]
struct FailedPageQuery {
    queue: Option<String>,
    page: Option<u64>,
}

async fn failed_page(
    State(app): State<Shared>,
    Extension(session): Extension<Session>,
    Query(q): Query<FailedPageQuery>,
) -> Response {
    let queue = q.queue.filter(|n| !n.is_empty());
    let page_no = q.page.unwrap_or(1).max(1);
    let mut query =
        FailedQuery::new(PAGE_SIZE).offset((page_no - 1).saturating_mul(PAGE_SIZE as u64));
    query.queue.clone_from(&queue);
    let driver = app.queue.driver();
    let (jobs, queues) =
        match futures_util::future::try_join(driver.failed(&query), driver.queues()).await {
            Ok(found) => found,
            Err(e) => return backend_error(&e),
        };
    // The total is known for one queue (its stats); for all, the pager goes on while pages fill.
    let total = match &queue {
        Some(name) => match driver.stats(name, app.queue.now()).await {
            Ok(stats) => Some(stats.failed),
            Err(e) => return backend_error(&e),
        },
        None => None,
    };
    let page_link = |n: u64| {
        let n = n.to_string();
        match &queue {
            Some(q) => link("failed", &[("queue", q), ("page", &n)]),
            None => link("failed", &[("page", &n)]),
        }
    };
    let here = page_link(page_no);
    let paging = Paging { page: page_no, shown: jobs.len(), total, link: &page_link };
    let body =
        views::failed(&ctx(&app, &session), &queues, queue.as_deref(), &jobs, &paging, &here);
    page(&app, &session, "Failed jobs", Nav::Failed, body)
}

async fn workers_page(
    State(app): State<Shared>,
    Extension(session): Extension<Session>,
) -> Response {
    let workers = match app.queue.driver().workers(app.queue.now()).await {
        Ok(list) => Some(list),
        Err(Error::Unsupported { .. }) => None,
        Err(e) => return backend_error(&e),
    };
    let body = views::workers(&ctx(&app, &session), workers.as_deref());
    page(&app, &session, "Workers", Nav::Workers, body)
}

/// "Not supported" for an [`Error::Unsupported`], else `None` (a real failure).
fn unsupported(e: &Error, what: &str, driver: &str) -> Option<String> {
    matches!(e, Error::Unsupported { .. })
        .then(|| format!("{what} are not supported by the {driver} driver (yet)."))
}

async fn schedules_page(
    State(app): State<Shared>,
    Extension(session): Extension<Session>,
) -> Response {
    let driver = app.queue.driver();
    let found = match driver.schedules().await {
        Ok(list) => Ok(list),
        Err(e) => match unsupported(&e, "Schedules", driver.name()) {
            Some(why) => Err(why),
            None => return backend_error(&e),
        },
    };
    let body = views::schedules(&ctx(&app, &session), found.as_deref().map_err(Clone::clone));
    page(&app, &session, "Schedules", Nav::Schedules, body)
}

async fn batch_page(
    State(app): State<Shared>,
    Extension(session): Extension<Session>,
    Query(q): Query<IdQuery>,
) -> Response {
    let asked = q.id.map(|id| id.trim().to_owned()).unwrap_or_default();
    let driver = app.queue.driver();
    let lookup = if asked.is_empty() {
        BatchLookup::Ask
    } else {
        match driver.batch(&asked).await {
            Ok(Some(info)) => BatchLookup::Found(Box::new(info)),
            Ok(None) => BatchLookup::Missing(asked.clone()),
            Err(e) => match unsupported(&e, "Batches", driver.name()) {
                Some(why) => BatchLookup::Unsupported(why),
                None => return backend_error(&e),
            },
        }
    };
    let body = views::batch(&ctx(&app, &session), &lookup, &asked);
    page(&app, &session, "Batches", Nav::Batches, body)
}

async fn login_page(State(app): State<Shared>) -> Response {
    if app.auth.is_open() {
        return see_other("overview");
    }
    views::login(None).into_response()
}

async fn login(State(app): State<Shared>, req: Request) -> Response {
    if app.auth.is_open() {
        return see_other("overview");
    }
    let peer =
        peer_of(req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0), req.headers());
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let Ok(body) = axum::body::to_bytes(body, 16 * 1024).await else {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Too large",
            "The sign-in form is too large.",
        );
    };
    // A login form posted from another site would sign the victim in as the attacker.
    if let Err(why) = app.auth.same_origin(&headers) {
        tracing::warn!(target: AUDIT_TARGET, peer = %peer, reason = %why, "sign-in refused");
        return problem(StatusCode::FORBIDDEN, "Cross-site request refused", &why);
    }
    let token = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let Some(role) = app.auth.role_of_token(&token) else {
        tracing::warn!(target: AUDIT_TARGET, peer = %peer, "sign-in refused: wrong token");
        return unauthorized("That token is not valid.");
    };
    let Some(value) = app.auth.issue(role) else {
        return problem(StatusCode::INTERNAL_SERVER_ERROR, "Error", "no key for this role");
    };
    let id: String = value.rsplit('.').next().unwrap_or("").chars().take(8).collect();
    tracing::info!(target: AUDIT_TARGET, role = role.as_str(), session = %id, peer = %peer, "signed in");
    let mut response = see_other("overview");
    response.headers_mut().append(header::SET_COOKIE, app.auth.session_cookie(Some(&value)));
    response
}

async fn logout(
    State(app): State<Shared>,
    Extension(session): Extension<Session>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    if let Some(response) = refusal(&app, &session, &headers, &form, "sign-out") {
        return response;
    }
    tracing::info!(target: AUDIT_TARGET, role = session.role.as_str(), session = %session.id, peer = %session.peer, "signed out");
    let mut response = see_other("login");
    response.headers_mut().append(header::SET_COOKIE, app.auth.session_cookie(None));
    response
}

async fn asset(Path(file): Path<String>) -> Response {
    match assets::get(&file) {
        Some((body, content_type)) => {
            ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "max-age=300")], body)
                .into_response()
        }
        None => not_found().await,
    }
}

/// A `303 See Other` to a relative location.
fn see_other(location: &str) -> Response {
    let value =
        HeaderValue::from_str(location).unwrap_or_else(|_| HeaderValue::from_static("overview"));
    (StatusCode::SEE_OTHER, [(header::LOCATION, value)]).into_response()
}

/// An action's form fields.
#[derive(Debug, Default)]
struct Form {
    csrf: String,
    op: String,
    next: String,
    queue: Option<String>,
    ids: Vec<String>,
    batch: Option<String>,
    concurrency: String,
    rate: String,
    per: String,
}

impl Form {
    fn parse(body: &[u8]) -> Self {
        let mut form = Self::default();
        for (key, value) in form_urlencoded::parse(body) {
            let value = value.trim().to_owned();
            match &*key {
                "csrf" => form.csrf = value,
                "op" => form.op = value,
                "next" => form.next = value,
                "queue" if !value.is_empty() => form.queue = Some(value),
                "id" if !value.is_empty() => form.ids.push(value),
                "batch" if !value.is_empty() => form.batch = Some(value),
                "concurrency" => form.concurrency = value,
                "rate" => form.rate = value,
                "per" => form.per = value,
                _ => {}
            }
        }
        form
    }
}

/// The checks every POST of a signed-in user passes: same origin, the session's CSRF token
/// (both only for browsers; a bearer request has neither and needs neither), then the role.
/// Answers the refusal, if any (logged for the audit).
fn refusal(
    app: &App,
    session: &Session,
    headers: &HeaderMap,
    form: &Form,
    what: &str,
) -> Option<Response> {
    let denied = |status: StatusCode, title: &str, why: String| {
        tracing::warn!(
            target: AUDIT_TARGET,
            role = session.role.as_str(),
            session = %session.id,
            peer = %session.peer,
            action = what,
            queue = form.queue.as_deref(),
            ids = %summarize(&form.ids),
            reason = %why,
            "action refused"
        );
        // A script gets the reason as text, a browser a page.
        if session.via == Via::Bearer {
            (status, format!("{title}: {why}")).into_response()
        } else {
            problem(status, title, &why)
        }
    };
    match app.auth.same_origin(headers) {
        Err(why) => return Some(denied(StatusCode::FORBIDDEN, "Cross-site request refused", why)),
        Ok(false) if session.via != Via::Bearer => {
            return Some(denied(
                StatusCode::FORBIDDEN,
                "Cross-site request refused",
                "the browser sent neither Origin nor Sec-Fetch-Site, so the request cannot be \
                 told from a cross-site one; use a current browser, or a bearer token from scripts"
                    .to_owned(),
            ));
        }
        Ok(_) => {}
    }
    if session.via != Via::Bearer && !same(form.csrf.as_bytes(), session.csrf.as_bytes()) {
        return Some(denied(
            StatusCode::FORBIDDEN,
            "Stale form",
            "the form's CSRF token is missing or belongs to another session; reload the page \
             and try again"
                .to_owned(),
        ));
    }
    if what != "sign-out" && session.role != Role::Admin {
        return Some(denied(
            StatusCode::FORBIDDEN,
            "Read-only",
            "this session uses the read-only token (ORCS_DASHBOARD_READONLY_TOKEN); actions \
             need the admin token (ORCS_DASHBOARD_TOKEN)"
                .to_owned(),
        ));
    }
    None
}

/// How an action went: a notice for the user, and the status a script gets.
struct Done {
    status: StatusCode,
    message: String,
}

impl Done {
    fn ok(message: impl Into<String>) -> Self {
        Self { status: StatusCode::OK, message: message.into() }
    }

    fn failed(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    fn from_error(e: &Error) -> Self {
        let status = match e {
            Error::Invalid { .. } => StatusCode::BAD_REQUEST,
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::Unsupported { .. } => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::failed(status, format!("Failed: {e}."))
    }
}

/// The one endpoint for every action: checks, runs, logs it for the audit, and sends the
/// browser back where it was with a notice (a bearer request gets the notice as text).
async fn action(
    State(app): State<Shared>,
    Extension(session): Extension<Session>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    let op = form.op.clone();
    if let Some(response) = refusal(&app, &session, &headers, &form, &op) {
        return response;
    }
    let done = run(&app.queue, &form).await;
    let ids = summarize(&form.ids);
    if done.status.is_success() {
        tracing::info!(target: AUDIT_TARGET, role = session.role.as_str(), session = %session.id, peer = %session.peer, action = %op, queue = form.queue.as_deref(), batch = form.batch.as_deref(), ids = %ids, outcome = %done.message, "action");
    } else {
        tracing::warn!(target: AUDIT_TARGET, role = session.role.as_str(), session = %session.id, peer = %session.peer, action = %op, queue = form.queue.as_deref(), batch = form.batch.as_deref(), ids = %ids, outcome = %done.message, "action failed");
    }
    if session.via == Via::Bearer {
        return (done.status, done.message).into_response();
    }
    let mut response = see_other(&safe_next(&form.next));
    response.headers_mut().append(header::SET_COOKIE, app.auth.flash_cookie(Some(&done.message)));
    response
}

/// The ids of an action for the audit log: all of them, up to 20.
fn summarize(ids: &[String]) -> String {
    match ids.len() {
        0 => String::new(),
        n if n <= 20 => ids.join(","),
        n => format!("{},... ({n} in all)", ids[..20].join(",")),
    }
}

/// Where to send the browser after an action: one of the dashboard's own pages, relative, or
/// the overview (never a URL of another site).
fn safe_next(next: &str) -> String {
    let (page, query) = next.split_once('?').unwrap_or((next, ""));
    let pages = ["overview", "queue", "job", "failed", "schedules", "batch", "workers"];
    let clean =
        !query.chars().any(|c| c.is_control() || c.is_whitespace() || c == '#' || c == '\\');
    match (pages.contains(&page), clean, query.is_empty()) {
        (true, true, true) => page.to_owned(),
        (true, true, false) => format!("{page}?{query}"),
        _ => "overview".to_owned(),
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 { format!("1 {one}") } else { format!("{n} {many}") }
}

/// Runs one action.
async fn run(queue: &Queue, form: &Form) -> Done {
    let needs_ids = matches!(form.op.as_str(), "retry" | "forget" | "cancel");
    if needs_ids && form.ids.is_empty() {
        return Done::failed(StatusCode::BAD_REQUEST, "Select at least one job first.");
    }
    if form.ids.len() > MAX_IDS {
        return Done::failed(
            StatusCode::BAD_REQUEST,
            format!("Select at most {MAX_IDS} jobs at a time, or use the \"all\" actions."),
        );
    }
    let needs_queue =
        matches!(form.op.as_str(), "pause" | "resume" | "clear" | "limits" | "forget-queue");
    let name = form.queue.as_deref().unwrap_or_default();
    if needs_queue && name.is_empty() {
        return Done::failed(StatusCode::BAD_REQUEST, "Name the queue.");
    }
    match form.op.as_str() {
        "retry" => {
            each(
                &form.ids,
                |id| queue.retry_failed(id),
                "Retried",
                "were not in the failed set any more",
            )
            .await
        }
        "forget" => {
            each(
                &form.ids,
                |id| queue.driver().forget_failed(id),
                "Deleted",
                "were not in the failed set any more",
            )
            .await
        }
        "cancel" => cancel(queue, &form.ids).await,
        "retry-all" => match queue.retry_all_failed(form.queue.as_deref()).await {
            Ok(n) => Done::ok(format!("Retried {}.", plural(n, "failed job", "failed jobs"))),
            Err(e) => Done::from_error(&e),
        },
        "forget-all" => match forget_all(queue, form.queue.as_deref()).await {
            Ok(n) => Done::ok(format!("Deleted {}.", plural(n, "failed job", "failed jobs"))),
            Err(e) => Done::from_error(&e),
        },
        "pause" => match queue.pause(name).await {
            Ok(()) => Done::ok(format!("Paused {name}: workers skip it until it is resumed.")),
            Err(e) => Done::from_error(&e),
        },
        "resume" => match queue.resume(name).await {
            Ok(()) => Done::ok(format!("Resumed {name}.")),
            Err(e) => Done::from_error(&e),
        },
        "clear" => match queue.clear(name).await {
            Ok(n) => Done::ok(format!(
                "Removed {} from {name}.",
                plural(n, "pending or delayed job", "pending and delayed jobs")
            )),
            Err(e) => Done::from_error(&e),
        },
        "limits" => match parse_limits(form) {
            Ok(limits) => match queue.set_limits(name, limits).await {
                Ok(()) => Done::ok(format!("Set the limits of {name}.")),
                Err(e) => Done::from_error(&e),
            },
            Err(why) => Done::failed(StatusCode::BAD_REQUEST, why),
        },
        "forget-queue" => match queue.forget_queue(name).await {
            Ok(true) => Done::ok(format!("Forgot the queue {name}.")),
            Ok(false) => Done::failed(
                StatusCode::CONFLICT,
                format!(
                    "{name} still holds jobs, so it was kept; clear it and delete its failed jobs first."
                ),
            ),
            Err(e) => Done::from_error(&e),
        },
        "cancel-batch" => {
            let Some(batch) = form.batch.as_deref() else {
                return Done::failed(StatusCode::BAD_REQUEST, "Name the batch.");
            };
            match queue.driver().cancel_batch(batch, queue.now()).await {
                Ok(info) => Done::ok(format!(
                    "Cancelled batch {batch}: {} cancelled, {} still running.",
                    info.cancelled, info.pending
                )),
                Err(e) => Done::from_error(&e),
            }
        }
        other => Done::failed(StatusCode::BAD_REQUEST, format!("Unknown action {other:?}.")),
    }
}

/// Runs `f` on every id; counts those done and those gone meanwhile (`NotFound`).
async fn each<'a, F, Fut>(ids: &'a [String], f: F, verb: &str, gone_why: &str) -> Done
where
    F: Fn(&'a str) -> Fut,
    Fut: Future<Output = orcs_core::Result<()>>,
{
    let (mut done, mut gone) = (0u64, 0u64);
    for id in ids {
        match f(id).await {
            Ok(()) => done += 1,
            Err(Error::NotFound { .. }) => gone += 1,
            Err(e) => {
                let mut failed = Done::from_error(&e);
                if done > 0 {
                    failed.message = format!(
                        "{verb} {} before: {}",
                        plural(done, "job", "jobs"),
                        failed.message
                    );
                }
                return failed;
            }
        }
    }
    let mut message = format!("{verb} {}.", plural(done, "job", "jobs"));
    if gone > 0 {
        message.push_str(&format!(
            " {} {gone_why} (handled elsewhere meanwhile).",
            plural(gone, "job", "jobs")
        ));
    }
    if done == 0 { Done::failed(StatusCode::NOT_FOUND, message) } else { Done::ok(message) }
}

async fn cancel(queue: &Queue, ids: &[String]) -> Done {
    let (mut removed, mut requested, mut gone) = (0u64, 0u64, 0u64);
    for id in ids {
        match queue.cancel(id).await {
            Ok(CancelOutcome::Removed) => removed += 1,
            Ok(_) => requested += 1,
            Err(Error::NotFound { .. }) => gone += 1,
            Err(e) => return Done::from_error(&e),
        }
    }
    let mut parts = Vec::new();
    if removed > 0 {
        parts.push(format!("Cancelled {}.", plural(removed, "waiting job", "waiting jobs")));
    }
    if requested > 0 {
        parts.push(format!(
            "Asked the workers of {} to stop them.",
            plural(requested, "running job", "running jobs")
        ));
    }
    if gone > 0 {
        parts.push(format!("{} had already finished.", plural(gone, "job", "jobs")));
    }
    let message = parts.join(" ");
    if removed + requested == 0 {
        Done::failed(StatusCode::NOT_FOUND, message)
    } else {
        Done::ok(message)
    }
}

/// Deletes every failed job (of one queue), a page at a time.
async fn forget_all(queue: &Queue, name: Option<&str>) -> orcs_core::Result<u64> {
    let driver = queue.driver();
    let Some(name) = name else { return driver.flush_failed().await };
    let mut count = 0;
    loop {
        let page = driver.failed(&FailedQuery::new(500).queue(name)).await?;
        let before = count;
        for job in &page {
            match driver.forget_failed(&job.id).await {
                Ok(()) => count += 1,
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // A round that deleted nothing ends it, so jobs failing meanwhile cannot keep it going.
        if page.len() < 500 || count == before {
            return Ok(count);
        }
    }
}

fn parse_limits(form: &Form) -> Result<QueueLimits, String> {
    let mut limits = QueueLimits::none();
    if !form.concurrency.is_empty() {
        match form.concurrency.parse::<u32>() {
            Ok(n) if n > 0 => limits = limits.concurrency(n),
            _ => {
                return Err(format!(
                    "\"{}\" jobs at once: use a whole number of 1 or more, or leave it empty for no limit.",
                    form.concurrency
                ));
            }
        }
    }
    match (form.rate.is_empty(), form.per.is_empty()) {
        (true, true) => {}
        (false, false) => {
            let limit = form.rate.parse::<u32>().ok().filter(|n| *n > 0);
            let per = form.per.parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.001 && *s <= 86_400.0);
            match (limit, per) {
                (Some(limit), Some(per)) => limits = limits.rate(RateLimit::new(limit, (per * 1000.0).round() as u64)),
                _ => return Err("A rate limit is a whole number of starts (1 or more) per a number of seconds (a millisecond to a day).".to_owned()),
            }
        }
        _ => return Err("A rate limit needs both the number of starts and the seconds; leave both empty for none.".to_owned()),
    }
    Ok(limits)
}

/// `/metrics`: the Prometheus text from the renderer the dashboard was built with (any role may
/// scrape, with `Authorization: Bearer TOKEN`); 404 without one.
async fn metrics_page(State(app): State<Shared>) -> Response {
    let Some(render) = &app.metrics else {
        return (StatusCode::NOT_FOUND, "this dashboard was built without a metrics renderer")
            .into_response();
    };
    match render().await {
        Ok((content_type, text)) => {
            ([(header::CONTENT_TYPE, HeaderValue::from_static(content_type))], text).into_response()
        }
        Err(message) => (StatusCode::SERVICE_UNAVAILABLE, message).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_the_dashboard() {
        assert_eq!(safe_next("queue?name=a&state=failed"), "queue?name=a&state=failed");
        assert_eq!(safe_next("overview"), "overview");
        for elsewhere in [
            "",
            "./",
            "https://evil.example/",
            "//evil.example/",
            "/queue",
            "job?id=1\r\nSet-Cookie: x",
            "javascript:alert(1)",
            "queue/../../x",
        ] {
            assert_eq!(safe_next(elsewhere), "overview", "{elsewhere:?}");
        }
    }

    #[test]
    fn forms_keep_repeated_ids() {
        let form = Form::parse(b"csrf=c&op=retry&id=a&id=b&id=&queue=&next=failed");
        assert_eq!(form.ids, ["a", "b"]);
        assert_eq!(form.queue, None);
        assert_eq!((form.op.as_str(), form.next.as_str()), ("retry", "failed"));
    }

    #[test]
    fn limits_parse_from_the_form() {
        let mut form = Form {
            concurrency: "4".into(),
            rate: "10".into(),
            per: "0.5".into(),
            ..Form::default()
        };
        assert_eq!(
            parse_limits(&form),
            Ok(QueueLimits::none().concurrency(4).rate(RateLimit::new(10, 500)))
        );
        form.per = String::new();
        assert!(parse_limits(&form).unwrap_err().contains("needs both"));
        form.concurrency = "0".into();
        assert!(parse_limits(&form).unwrap_err().contains("1 or more"));
        assert_eq!(parse_limits(&Form::default()), Ok(QueueLimits::none()));
    }
}
