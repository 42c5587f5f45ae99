//! HTTP-level tests on the memory driver: the router is called directly (tower's `oneshot`),
//! each request carrying the peer address a server would give it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt as _;
use orcs_core::{JobState, Queue};
use orcs_dashboard::{Auth, CONTENT_SECURITY_POLICY, Error};
use orcs_memory::MemoryDriver;
use tower::ServiceExt as _;

use crate::{ADMIN, VIEWER, failed_job, push};

const HOST: &str = "dash.test";
const ORIGIN: &str = "http://dash.test";

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    /// The value a `Set-Cookie` of this answer gives cookie `name`.
    fn set_cookie(&self, name: &str) -> Option<(String, String)> {
        self.headers.get_all(header::SET_COOKIE).iter().find_map(|v| {
            let text = v.to_str().ok()?;
            let (pair, attributes) = text.split_once(';').unwrap_or((text, ""));
            let (key, value) = pair.split_once('=')?;
            (key == name).then(|| (value.to_owned(), attributes.to_owned()))
        })
    }

    fn location(&self) -> &str {
        self.headers.get(header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// The CSRF token in the page's forms.
    fn csrf(&self) -> String {
        let marker = "name=\"csrf\" value=\"";
        let start =
            self.body.find(marker).expect("the page has a form with a CSRF token") + marker.len();
        self.body[start..].split('"').next().unwrap_or_default().to_owned()
    }
}

/// A request from `peer` to the router.
struct Call<'a> {
    method: Method,
    path: &'a str,
    headers: Vec<(&'static str, String)>,
    body: String,
    peer: Option<SocketAddr>,
}

impl<'a> Call<'a> {
    fn get(path: &'a str) -> Self {
        Self {
            method: Method::GET,
            path,
            headers: vec![("host", HOST.to_owned())],
            body: String::new(),
            peer: Some(SocketAddr::from(([127, 0, 0, 1], 40_000))),
        }
    }

    /// A form POST from the dashboard's own origin.
    fn post(path: &'a str, body: impl Into<String>) -> Self {
        let mut call = Self::get(path);
        call.method = Method::POST;
        call.body = body.into();
        call.headers.push(("content-type", "application/x-www-form-urlencoded".to_owned()));
        call.headers.push(("origin", ORIGIN.to_owned()));
        call
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value.into()));
        self
    }

    fn without(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| *n != name);
        self
    }

    fn cookie(self, session: &str) -> Self {
        self.header("cookie", format!("orcs_dashboard_session={session}"))
    }

    fn peer(mut self, peer: Option<SocketAddr>) -> Self {
        self.peer = peer;
        self
    }

    async fn send(self, app: &Router) -> Reply {
        let mut request = Request::builder().method(self.method).uri(self.path);
        for (name, value) in &self.headers {
            request = request.header(*name, value);
        }
        let mut request = request.body(Body::from(self.body)).expect("a valid request");
        if let Some(peer) = self.peer {
            request.extensions_mut().insert(ConnectInfo(peer));
        }
        let response = app.clone().oneshot(request).await.expect("the router answers");
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.expect("the body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }
}

fn tokens() -> Auth {
    Auth::tokens(Some(ADMIN), Some(VIEWER)).expect("valid tokens")
}

fn app(queue: &Queue, auth: Auth) -> Router {
    orcs_dashboard::router(queue.clone(), auth)
}

/// Signs in with `token`; returns the session cookie's value and its CSRF token.
async fn sign_in(app: &Router, token: &str) -> (String, String) {
    let reply = Call::post("/login", format!("token={token}")).send(app).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "sign-in: {}", reply.body);
    let (session, _) = reply.set_cookie("orcs_dashboard_session").expect("a session cookie");
    let page = Call::get("/overview").cookie(&session).send(app).await;
    assert_eq!(page.status, StatusCode::OK);
    let csrf = page.csrf();
    (session, csrf)
}

async fn state_of(queue: &Queue, id: &str) -> Option<JobState> {
    queue.get(id).await.expect("get").map(|j| j.state)
}

#[tokio::test]
async fn without_a_token_every_page_and_action_answers_401() {
    let queue = Queue::new(MemoryDriver::new());
    let id = failed_job(&queue, "reports", "boom").await;
    let app = app(&queue, tokens());
    for path in
        ["/overview", "/live", "/overview.json", "/failed", "/queue?name=reports", "/schedules"]
    {
        let reply = Call::get(path).send(&app).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(
            reply.body.contains("action=\"login\""),
            "{path}: the 401 page is the sign-in form"
        );
        assert!(reply.headers.contains_key(header::WWW_AUTHENTICATE));
    }
    let reply = Call::post("/action", format!("op=retry&id={id}")).send(&app).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    // A wrong bearer token or a forged cookie is no better.
    let reply = Call::get("/overview")
        .header("authorization", "Bearer not-the-token-at-all")
        .send(&app)
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let forged = "admin.99999999999.00.0000";
    assert_eq!(
        Call::get("/overview").cookie(forged).send(&app).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(state_of(&queue, &id).await, Some(JobState::Failed), "nothing was retried");
    // The sign-in page and the static files are public.
    assert_eq!(Call::get("/login").send(&app).await.status, StatusCode::OK);
    assert_eq!(Call::get("/assets/htmx.min.js").send(&app).await.status, StatusCode::OK);
}

#[tokio::test]
async fn signing_in_sets_a_strict_http_only_cookie() {
    let queue = Queue::new(MemoryDriver::new());
    let app = app(&queue, tokens().session_ttl(std::time::Duration::from_secs(600)));
    let reply = Call::post("/login", format!("token={ADMIN}")).send(&app).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(reply.location(), "overview");
    let (_, attributes) = reply.set_cookie("orcs_dashboard_session").expect("a session cookie");
    assert!(attributes.contains("HttpOnly"), "{attributes}");
    assert!(attributes.contains("SameSite=Strict"), "{attributes}");
    assert!(attributes.contains("Max-Age=600"), "{attributes}");
    assert!(
        !attributes.contains("Path="),
        "scoped to the mount point by the browser: {attributes}"
    );

    let wrong = Call::post("/login", "token=wrong-token-but-long-enough").send(&app).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("not valid"));
    assert!(wrong.set_cookie("orcs_dashboard_session").is_none());
    // A sign-in form posted from another site is refused (login CSRF).
    let cross = Call::post("/login", format!("token={ADMIN}"))
        .header("origin", "http://evil.test")
        .send(&app)
        .await;
    assert_eq!(cross.status, StatusCode::FORBIDDEN);
    assert!(cross.set_cookie("orcs_dashboard_session").is_none());

    // Signing out removes the cookie.
    let (session, csrf) = sign_in(&app, ADMIN).await;
    let out = Call::post("/logout", format!("csrf={csrf}")).cookie(&session).send(&app).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    let (value, attributes) = out.set_cookie("orcs_dashboard_session").expect("a removal");
    assert!(value.is_empty() && attributes.contains("Max-Age=0"), "{value} {attributes}");
}

#[tokio::test]
async fn a_viewer_sees_everything_and_every_action_answers_403() {
    let queue = Queue::new(MemoryDriver::new());
    push(&queue, "emails", "SendEmail", 3).await;
    let id = failed_job(&queue, "reports", "boom").await;
    let app = app(&queue, tokens());
    let (session, csrf) = sign_in(&app, VIEWER).await;

    let page = Call::get("/overview").cookie(&session).send(&app).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("read-only"));
    let job = Call::get(&format!("/job?id={id}")).cookie(&session).send(&app).await;
    assert_eq!(job.status, StatusCode::OK);
    assert!(job.body.contains("boom"));
    assert!(job.body.contains("disabled"), "the viewer's buttons are disabled");

    for body in [
        format!("csrf={csrf}&op=retry&id={id}&next=failed"),
        format!("csrf={csrf}&op=forget&id={id}"),
        format!("csrf={csrf}&op=pause&queue=emails"),
        format!("csrf={csrf}&op=clear&queue=emails"),
        format!("csrf={csrf}&op=forget-all"),
    ] {
        let reply = Call::post("/action", body.clone()).cookie(&session).send(&app).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{body}");
        assert!(reply.body.contains("read-only token"), "{}", reply.body);
    }
    // Bearer too.
    let reply = Call::post("/action", format!("op=retry&id={id}"))
        .header("authorization", format!("Bearer {VIEWER}"))
        .without("origin")
        .send(&app)
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(reply.body.starts_with("Read-only: "), "a script gets text: {}", reply.body);
    assert_eq!(state_of(&queue, &id).await, Some(JobState::Failed));
    let stats = queue.stats("emails").await.expect("stats");
    assert_eq!((stats.pending, stats.paused), (3, false));
}

#[tokio::test]
async fn an_admin_retries_deletes_pauses_and_cancels() {
    let queue = Queue::new(MemoryDriver::new());
    let pending = push(&queue, "emails", "SendEmail", 2).await;
    let retried = failed_job(&queue, "reports", "boom").await;
    let forgotten = failed_job(&queue, "reports", "boom").await;
    let app = app(&queue, tokens());
    let (session, csrf) = sign_in(&app, ADMIN).await;

    let reply = Call::post(
        "/action",
        format!("csrf={csrf}&op=retry&id={retried}&next=failed%3Fqueue%3Dreports"),
    )
    .cookie(&session)
    .send(&app)
    .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    assert_eq!(reply.location(), "failed?queue=reports");
    let (flash, _) = reply.set_cookie("orcs_dashboard_flash").expect("a notice");
    assert!(flash.contains("Retried"), "{flash}");
    assert_eq!(state_of(&queue, &retried).await, Some(JobState::Pending));
    // The notice shows once, then its cookie is removed.
    let page = Call::get("/failed?queue=reports")
        .header("cookie", format!("orcs_dashboard_session={session}; orcs_dashboard_flash={flash}"))
        .send(&app)
        .await;
    assert!(page.body.contains("Retried 1 job."), "{}", page.body);
    assert!(page.set_cookie("orcs_dashboard_flash").is_some_and(|(v, _)| v.is_empty()));

    let reply = Call::post("/action", format!("csrf={csrf}&op=forget&id={forgotten}"))
        .cookie(&session)
        .send(&app)
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(state_of(&queue, &forgotten).await, None);

    let reply = Call::post("/action", format!("csrf={csrf}&op=pause&queue=emails"))
        .cookie(&session)
        .send(&app)
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert!(queue.stats("emails").await.expect("stats").paused);

    // A bulk cancel: one form, one id per selected row.
    let body = format!("csrf={csrf}&op=cancel&queue=emails&id={}&id={}", pending[0], pending[1]);
    let reply = Call::post("/action", body).cookie(&session).send(&app).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(queue.stats("emails").await.expect("stats").pending, 0);

    // A script uses a bearer token, needs no CSRF token, and gets the outcome as text.
    let again = failed_job(&queue, "nightly", "boom").await;
    let reply = Call::post("/action", "op=retry-all&queue=nightly")
        .header("authorization", format!("Bearer {ADMIN}"))
        .without("origin")
        .send(&app)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body, "Retried 1 failed job.");
    assert_eq!(state_of(&queue, &again).await, Some(JobState::Pending));
    // A job that is gone is reported, not an error page.
    let reply = Call::post("/action", format!("op=retry&id={again}"))
        .header("authorization", format!("Bearer {ADMIN}"))
        .send(&app)
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.body.contains("not in the failed set"), "{}", reply.body);
}

#[tokio::test]
async fn actions_without_the_sessions_csrf_token_or_from_another_origin_are_refused() {
    let queue = Queue::new(MemoryDriver::new());
    let id = failed_job(&queue, "reports", "boom").await;
    let app = app(&queue, tokens());
    let (session, csrf) = sign_in(&app, ADMIN).await;
    let (_, other_csrf) = sign_in(&app, ADMIN).await;
    assert_ne!(csrf, other_csrf, "each session has its own CSRF token");

    let attempts = [
        ("no token", Call::post("/action", format!("op=retry&id={id}"))),
        (
            "another session's token",
            Call::post("/action", format!("csrf={other_csrf}&op=retry&id={id}")),
        ),
        (
            "another origin",
            Call::post("/action", format!("csrf={csrf}&op=retry&id={id}"))
                .header("origin", "http://evil.test"),
        ),
        (
            "Origin: null",
            Call::post("/action", format!("csrf={csrf}&op=retry&id={id}")).header("origin", "null"),
        ),
        (
            "no Origin, cross-site fetch",
            Call::post("/action", format!("csrf={csrf}&op=retry&id={id}"))
                .without("origin")
                .header("sec-fetch-site", "cross-site"),
        ),
        (
            "neither Origin nor Sec-Fetch-Site",
            Call::post("/action", format!("csrf={csrf}&op=retry&id={id}")).without("origin"),
        ),
    ];
    for (what, call) in attempts {
        let reply = call.cookie(&session).send(&app).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{what}: {}", reply.body);
        assert_eq!(state_of(&queue, &id).await, Some(JobState::Failed), "{what}");
    }
    // A browser that sends only Sec-Fetch-Site: same-origin is fine.
    let reply = Call::post("/action", format!("csrf={csrf}&op=retry&id={id}"))
        .without("origin")
        .header("sec-fetch-site", "same-origin")
        .cookie(&session)
        .send(&app)
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    assert_eq!(state_of(&queue, &id).await, Some(JobState::Pending));
}

#[tokio::test]
async fn every_answer_has_a_strict_content_security_policy_and_pages_have_no_inline_code() {
    let queue = Queue::new(MemoryDriver::new());
    push(&queue, "emails", "SendEmail", 2).await;
    let id = failed_job(&queue, "reports", "boom").await;
    let app = app(&queue, tokens());
    let (session, _) = sign_in(&app, ADMIN).await;
    assert!(CONTENT_SECURITY_POLICY.contains("script-src 'self'"));
    assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    let job = format!("/job?id={id}");
    for path in [
        "/overview",
        "/live",
        "/queue?name=emails",
        "/queue?name=reports&state=failed",
        "/failed",
        job.as_str(),
        "/workers",
        "/schedules",
        "/batch?id=nope",
        "/login",
        "/assets/dashboard.js",
        "/no-such-page",
    ] {
        let reply = Call::get(path).cookie(&session).send(&app).await;
        let csp = reply.headers.get(header::CONTENT_SECURITY_POLICY).and_then(|v| v.to_str().ok());
        assert_eq!(csp, Some(CONTENT_SECURITY_POLICY), "{path}");
        assert_eq!(
            reply.headers.get(header::X_CONTENT_TYPE_OPTIONS).map(|v| v.as_bytes()),
            Some(&b"nosniff"[..]),
            "{path}"
        );
        assert_eq!(
            reply.headers.get(header::X_FRAME_OPTIONS).map(|v| v.as_bytes()),
            Some(&b"DENY"[..]),
            "{path}"
        );
        if path.starts_with("/assets") {
            continue;
        }
        assert_eq!(
            reply.headers.get(header::CACHE_CONTROL).map(|v| v.as_bytes()),
            Some(&b"no-store"[..]),
            "{path}"
        );
        // What the policy would refuse must not be in the page in the first place.
        for (i, _) in reply.body.match_indices("<script") {
            assert!(
                reply.body[i..].split('>').next().unwrap_or("").contains(" src="),
                "{path}: an inline script"
            );
        }
        assert!(!reply.body.contains(" style="), "{path}: an inline style");
        assert!(!reply.body.contains("<style"), "{path}: a style element");
        assert!(
            !reply.body.contains(" onclick=") && !reply.body.contains(" onsubmit="),
            "{path}: an inline handler"
        );
    }
    // 401 answers too.
    let reply = Call::get("/overview").send(&app).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.headers.contains_key(header::CONTENT_SECURITY_POLICY));
}

#[tokio::test]
async fn without_a_token_the_dashboard_refuses_to_listen_beyond_loopback() {
    let open = Auth::open();
    let everywhere = SocketAddr::from(([0, 0, 0, 0], 0));
    let err = orcs_dashboard::bind(everywhere, &open).await.expect_err("refused");
    assert!(matches!(err, Error::OpenBind { .. }));
    let message = err.to_string();
    assert!(message.contains("ORCS_DASHBOARD_TOKEN") && message.contains("127.0.0.1"), "{message}");
    assert!(orcs_dashboard::check_bind("[::]:8080".parse().expect("addr"), &open).is_err());
    // Loopback is fine without a token; any address with one.
    let listener =
        orcs_dashboard::bind(SocketAddr::from(([127, 0, 0, 1], 0)), &open).await.expect("loopback");
    drop(listener);
    assert!(orcs_dashboard::check_bind("[::1]:8080".parse().expect("addr"), &open).is_ok());
    assert!(orcs_dashboard::check_bind(everywhere, &tokens()).is_ok());
    // serve() checks its listener as well.
    let wide = tokio::net::TcpListener::bind(everywhere).await.expect("bind");
    let queue = Queue::new(MemoryDriver::new());
    let err =
        orcs_dashboard::serve(wide, queue, Auth::open(), async {}).await.expect_err("refused");
    assert!(matches!(err, Error::OpenBind { .. }));
}

#[tokio::test]
async fn an_open_dashboard_answers_loopback_peers_only_and_still_checks_csrf() {
    let queue = Queue::new(MemoryDriver::new());
    let id = failed_job(&queue, "reports", "boom").await;
    let app = app(&queue, Auth::open());
    let remote = Some(SocketAddr::from(([192, 0, 2, 7], 5000)));
    for peer in [remote, None] {
        let reply = Call::get("/overview").peer(peer).send(&app).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{peer:?}");
        assert!(reply.body.contains("ORCS_DASHBOARD_TOKEN"));
    }
    // A loopback peer gets a session (for its CSRF token) without signing in.
    let page = Call::get("/overview").send(&app).await;
    assert_eq!(page.status, StatusCode::OK);
    let (session, _) = page.set_cookie("orcs_dashboard_session").expect("a session cookie");
    let csrf = page.csrf();
    let refused =
        Call::post("/action", format!("op=retry&id={id}")).cookie(&session).send(&app).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let reply = Call::post("/action", format!("csrf={csrf}&op=retry&id={id}"))
        .cookie(&session)
        .send(&app)
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(state_of(&queue, &id).await, Some(JobState::Pending));
    // No sign-in page without tokens.
    assert_eq!(Call::get("/login").send(&app).await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn the_pages_work_under_a_mount_path() {
    let queue = Queue::new(MemoryDriver::new());
    push(&queue, "emails", "SendEmail", 3).await;
    let id = failed_job(&queue, "reports", "the report service answered 503").await;
    let app: Router =
        Router::new().nest("/admin/queues", orcs_dashboard::router(queue.clone(), tokens()));
    let bearer = format!("Bearer {ADMIN}");
    let get = |path: &'static str| Call::get(path).header("authorization", bearer.clone());

    // The mount point sends the browser to the overview, relative to where it is; every page
    // sits at the same level, so all links are relative.
    let reply = get("/admin/queues").send(&app).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(reply.location(), "queues/overview");
    let overview = get("/admin/queues/overview").send(&app).await;
    assert_eq!(overview.status, StatusCode::OK);
    assert!(overview.body.contains("href=\"queue?name=emails\""), "relative links");
    assert!(overview.body.contains("src=\"assets/htmx.min.js\""));
    assert!(!overview.body.contains("href=\"/"), "no absolute link");

    let json = get("/admin/queues/overview.json").send(&app).await;
    let value: serde_json::Value = serde_json::from_str(&json.body).expect("JSON");
    assert_eq!(value["totals"]["pending"], 3);
    assert_eq!(value["totals"]["failed"], 1);
    assert_eq!(value["driver"], "memory");

    let failed = get("/admin/queues/queue?name=reports&state=failed").send(&app).await;
    assert_eq!(failed.status, StatusCode::OK);
    assert!(failed.body.contains(&id) && failed.body.contains("503"));
    let job = Call::get("").header("authorization", bearer.clone());
    let job = Call { path: &format!("/admin/queues/job?id={id}"), ..job }.send(&app).await;
    assert_eq!(job.status, StatusCode::OK);
    assert!(job.body.contains("the report service answered 503"));
    assert!(job.body.contains("BuildReport"));
    for path in [
        "/admin/queues/failed",
        "/admin/queues/workers",
        "/admin/queues/schedules",
        "/admin/queues/batch?id=01NOPE",
        "/admin/queues/assets/uPlot.iife.min.js",
    ] {
        assert_eq!(get(path).send(&app).await.status, StatusCode::OK, "{path}");
    }
    let missing = Call { path: "/admin/queues/job?id=01NOSUCHJOB", ..get("") }.send(&app).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.body.contains("01NOSUCHJOB"));
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("not poisoned").write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A subscriber that records nothing and answers every callsite "sometimes". `tracing` caches
/// each callsite's interest for the whole process, computed by the thread that reaches it first
/// against that thread's subscriber while one dispatcher is registered: a sibling test thread
/// without a subscriber cached an audit callsite as "never", and this test's thread-local
/// capture lost the event (seen once in CI under the parallel test run). With this one
/// registered too, interest is computed over every registered dispatcher, so the capture's
/// callsites stay "sometimes" and each event asks the emitting thread's subscriber.
struct Anchor;

impl tracing::Subscriber for Anchor {
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::sometimes()
    }
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        false
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn every_action_is_logged_with_who_did_it() {
    let _anchor = tracing::Dispatch::new(Anchor);
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // Callsites a sibling test cached as "never" before the anchor existed are asked again.
    tracing::callsite::rebuild_interest_cache();

    let queue = Queue::new(MemoryDriver::new());
    let id = failed_job(&queue, "reports", "boom").await;
    let app = app(&queue, tokens());
    let (admin, admin_csrf) = sign_in(&app, ADMIN).await;
    let (viewer, viewer_csrf) = sign_in(&app, VIEWER).await;
    Call::post("/action", format!("csrf={viewer_csrf}&op=retry&id={id}"))
        .cookie(&viewer)
        .send(&app)
        .await;
    Call::post("/action", format!("csrf={admin_csrf}&op=retry&id={id}"))
        .cookie(&admin)
        .send(&app)
        .await;
    Call::post("/action", "op=pause&queue=reports")
        .header("authorization", format!("Bearer {ADMIN}"))
        .send(&app)
        .await;

    let log = String::from_utf8(capture.0.lock().expect("not poisoned").clone()).expect("UTF-8");
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("orcs_dashboard::audit")).collect();
    let find = |needles: &[&str]| lines.iter().any(|l| needles.iter().all(|n| l.contains(n)));
    assert!(find(&["signed in", "role=\"admin\""]), "{log}");
    assert!(find(&["signed in", "role=\"viewer\""]), "{log}");
    assert!(
        find(&["WARN", "action refused", "role=\"viewer\"", "action=\"retry\"", &id, "read-only"]),
        "{log}"
    );
    assert!(
        find(&["INFO", "action", "role=\"admin\"", "action=retry", &id, "peer=127.0.0.1:40000"]),
        "{log}"
    );
    assert!(
        find(&[
            "INFO",
            "action",
            "role=\"admin\"",
            "session=bearer",
            "action=pause",
            "queue=\"reports\""
        ]),
        "{log}"
    );
}
