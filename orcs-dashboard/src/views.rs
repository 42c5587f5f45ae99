//! The pages, as maud templates (checked at compile time). Every link and form target is
//! relative and names a page at the router's top level (`queue?name=emails`), so the pages work
//! wherever an application mounts the router.

use maud::{DOCTYPE, Markup, html};
use orcs_core::{
    BatchCallback, BatchInfo, CallbackState, FailedJob, JobInfo, JobState, MAX_ERROR_HISTORY,
    Millis, QueueLimits, QueueStats, ScheduleRecord, WorkerInfo,
};

use crate::auth::Role;
use crate::overview::Overview;
use crate::routes::{Session, Via};
use crate::text::{clip, duration, link, pretty_json, relative, utc, when};

/// Jobs per page of a list.
pub(crate) const PAGE_SIZE: usize = 50;

/// htmx settings: no indicator `<style>` element and no `eval`, both of which the
/// Content-Security-Policy would refuse anyway.
const HTMX_CONFIG: &str = r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false,"historyCacheSize":0}"#;

/// What every page needs besides its own data.
pub(crate) struct Ctx<'a> {
    pub(crate) session: &'a Session,
    pub(crate) driver: &'static str,
    pub(crate) now: Millis,
}

/// The navigation entries.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Overview,
    Failed,
    Schedules,
    Batches,
    Workers,
    None,
}

/// The page frame: head, navigation, the one-shot notice, then `body`.
pub(crate) fn layout(ctx: &Ctx<'_>, title: &str, nav: Nav, charts: bool, body: Markup) -> Markup {
    let s = ctx.session;
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="htmx-config" content=(HTMX_CONFIG);
                title { (title) " · orcs" }
                link rel="stylesheet" href="assets/dashboard.css";
                @if charts {
                    link rel="stylesheet" href="assets/uPlot.min.css";
                    script src="assets/uPlot.iife.min.js" defer {}
                }
                script src="assets/htmx.min.js" defer {}
                script src="assets/dashboard.js" defer {}
            }
            body {
                header.top {
                    a.brand href="overview" { "orcs" }
                    nav {
                        (nav_link("overview", "Overview", nav == Nav::Overview))
                        (nav_link("failed", "Failed", nav == Nav::Failed))
                        (nav_link("schedules", "Schedules", nav == Nav::Schedules))
                        (nav_link("batch", "Batches", nav == Nav::Batches))
                        (nav_link("workers", "Workers", nav == Nav::Workers))
                    }
                    div.who {
                        span.driver title="the queue driver" { (ctx.driver) }
                        @match (s.via, s.role) {
                            (Via::Open, _) => span.role.open title="no ORCS_DASHBOARD_TOKEN is set: open to this machine only" { "local, no token" },
                            (_, Role::Admin) => span.role.admin { "admin" },
                            (_, _) => span.role.viewer title="read-only token: actions are refused" { "read-only" },
                        }
                        @if s.via == Via::Cookie {
                            form.inline method="post" action="logout" {
                                input type="hidden" name="csrf" value=(s.csrf());
                                button.link type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main {
                    @if let Some(flash) = &s.flash {
                        p.flash role="status" { (flash) }
                    }
                    (body)
                }
            }
        }
    }
}

fn nav_link(href: &str, label: &str, active: bool) -> Markup {
    html! { a.active[active] href=(href) { (label) } }
}

/// A one-button form posting `op` to the action endpoint; disabled for viewers (the server
/// refuses their actions anyway).
pub(crate) fn action(
    s: &Session,
    op: &str,
    fields: &[(&str, &str)],
    label: &str,
    next: &str,
    confirm: Option<&str>,
) -> Markup {
    let viewer = s.role != Role::Admin;
    html! {
        form.inline method="post" action="action" data-confirm=[confirm] {
            input type="hidden" name="csrf" value=(s.csrf());
            input type="hidden" name="next" value=(next);
            @for (name, value) in fields {
                input type="hidden" name=(name) value=(value);
            }
            button type="submit" name="op" value=(op) disabled[viewer]
                title=[viewer.then_some("read-only: this needs the admin token")] { (label) }
        }
    }
}

/// The overview: totals, charts and the queue table, refreshed every two seconds.
pub(crate) fn overview(ctx: &Ctx<'_>, o: &Overview) -> Markup {
    html! {
        h1 { "Queues" }
        section.charts {
            figure.chart {
                figcaption {
                    "Throughput (jobs/s): "
                    @if o.history.is_some() { "per minute as the workers reported it, then " }
                    "sampled by this page every 2 s"
                }
                div #throughput-chart data-history=(history_json(o, ctx.now)) {
                    p.muted { "Waiting for the next sample…" }
                }
            }
            figure.chart {
                figcaption { "Latency: the age of the oldest due job, largest of any queue (ms)" }
                div #latency-chart {
                    p.muted { "No job is due, or the " (ctx.driver) " driver does not report latency." }
                }
            }
        }
        (live(ctx, o))
    }
}

/// The throughput history as `[[seconds, processed/s, failed/s], ...]` for the chart; the
/// current minute is left out (it is not over, so its rate would read low).
fn history_json(o: &Overview, now: Millis) -> String {
    let points: Vec<[f64; 3]> = o
        .history
        .iter()
        .flatten()
        .filter(|t| t.minute + 60_000 <= now)
        .map(|t| {
            [t.minute as f64 / 1000.0 + 60.0, t.processed as f64 / 60.0, t.failed as f64 / 60.0]
        })
        .collect();
    serde_json::to_string(&points).unwrap_or_else(|_| "[]".to_owned())
}

/// The part of the overview that htmx replaces every two seconds; its `data-*` attributes are
/// the samples the charts plot.
pub(crate) fn live(ctx: &Ctx<'_>, o: &Overview) -> Markup {
    let t = &o.totals;
    let latency = t.latency_ms.map(|l| l.to_string()).unwrap_or_default();
    html! {
        section #live hx-get="live" hx-trigger="every 2s" hx-swap="outerHTML"
            data-at=(o.at) data-processed=(t.processed) data-failed=(t.failed_total) data-latency=(latency) {
            div.cards {
                (card("Pending", t.pending, None))
                (card("Delayed", t.delayed, None))
                (card("Running", t.reserved, None))
                (card("Failed", t.failed, Some("failed")))
                (card("Processed", t.processed, None))
                (card("Queues", o.queues.len() as u64, None))
                @if let Some(w) = &o.workers { (card("Workers", w.len() as u64, Some("workers"))) }
            }
            @if o.queues.is_empty() {
                p.muted { "No queues yet: a queue shows here once a job is dispatched to it." }
            } @else {
                table.queues {
                    thead { tr {
                        th { "Queue" } th.num { "Pending" } th.num { "Delayed" } th.num { "Running" }
                        th.num { "Failed" } th.num { "Processed" } th.num { "Failed (all time)" }
                        th.num { "Cancelled" } th.num { "Latency" } th { "Limits" } th { "State" }
                    } }
                    tbody {
                        @for s in &o.queues {
                            tr data-queue=(s.queue) {
                                td { a href=(link("queue", &[("name", &s.queue)])) { (s.queue) } }
                                td.num.pending { (count_link(s, JobState::Pending, s.pending)) }
                                td.num.delayed { (count_link(s, JobState::Delayed, s.delayed)) }
                                td.num.reserved { (count_link(s, JobState::Reserved, s.reserved)) }
                                td.num.failed.bad[s.failed > 0] { (count_link(s, JobState::Failed, s.failed)) }
                                td.num.processed { (s.processed) }
                                td.num { (s.failed_total) }
                                td.num { (s.cancelled) }
                                td.num {
                                    @match s.latency_ms {
                                        Some(ms) => (duration(ms)),
                                        None => span.muted title="no job is due, or the driver does not report latency" { "—" },
                                    }
                                }
                                td { (limits(&s.limits)) }
                                td.state {
                                    @if s.paused {
                                        span.badge.paused { "paused" } " "
                                        (action(ctx.session, "resume", &[("queue", &s.queue)], "Resume", "overview", None))
                                    } @else {
                                        span.badge.running { "running" } " "
                                        (action(ctx.session, "pause", &[("queue", &s.queue)], "Pause", "overview", None))
                                    }
                                }
                            }
                        }
                    }
                }
            }
            p.muted.small { "Updated " (utc(o.at)) }
        }
    }
}

fn card(label: &str, value: u64, href: Option<&str>) -> Markup {
    html! {
        div.card {
            div.label { (label) }
            @match href {
                Some(href) => a.value href=(href) { (value) },
                None => div.value { (value) },
            }
        }
    }
}

fn count_link(s: &QueueStats, state: JobState, n: u64) -> Markup {
    html! { a href=(link("queue", &[("name", &s.queue), ("state", state.as_str())])) { (n) } }
}

fn limits(l: &QueueLimits) -> String {
    let mut parts = Vec::new();
    if let Some(c) = l.concurrency {
        parts.push(format!("{c} at once"));
    }
    if let Some(r) = l.rate {
        parts.push(format!("{} per {}", r.limit, duration(r.period_ms)));
    }
    if parts.is_empty() { "none".to_owned() } else { parts.join(", ") }
}

/// Where a list is: its page number and how many items exist in all, when known.
pub(crate) struct Paging<'a> {
    pub(crate) page: u64,
    pub(crate) shown: usize,
    pub(crate) total: Option<u64>,
    /// Builds the link to another page.
    pub(crate) link: &'a dyn Fn(u64) -> String,
}

fn pager(p: &Paging<'_>) -> Markup {
    let size = PAGE_SIZE as u64;
    let first = (p.page - 1) * size + 1;
    let last = first + p.shown as u64 - 1;
    let more = match p.total {
        Some(total) => last < total,
        None => p.shown == PAGE_SIZE,
    };
    html! {
        nav.pager {
            @if p.page > 1 { a href=((p.link)(p.page - 1)) rel="prev" { "← Newer page" } " " }
            @if p.shown > 0 {
                span.muted {
                    (first) "–" (last)
                    @if let Some(total) = p.total { " of " (total) }
                }
            }
            @if more { " " a href=((p.link)(p.page + 1)) rel="next" { "Next page →" } }
        }
    }
}

/// One queue's jobs in one state.
pub(crate) struct QueuePage<'a> {
    pub(crate) stats: &'a QueueStats,
    pub(crate) state: JobState,
    pub(crate) jobs: Jobs<'a>,
    pub(crate) paging: Paging<'a>,
    pub(crate) here: &'a str,
}

/// A page of live jobs or of failed ones.
pub(crate) enum Jobs<'a> {
    Live(&'a [JobInfo]),
    Failed(&'a [FailedJob]),
}

pub(crate) fn queue(ctx: &Ctx<'_>, p: &QueuePage<'_>) -> Markup {
    let s = p.stats;
    let name = s.queue.as_str();
    let fields = [("queue", name)];
    let empty = s.pending + s.delayed + s.reserved + s.failed == 0;
    html! {
        h1 { "Queue " code { (name) } " "
            @if s.paused { span.badge.paused { "paused" } } @else { span.badge.running { "running" } }
        }
        p.muted {
            (s.processed) " processed, " (s.failed_total) " failed, " (s.cancelled) " cancelled since it was created; limits: " (limits(&s.limits))
        }
        div.toolbar {
            @if s.paused {
                (action(ctx.session, "resume", &fields, "Resume", p.here, None))
            } @else {
                (action(ctx.session, "pause", &fields, "Pause", p.here, None))
            }
            (action(ctx.session, "clear", &fields, "Clear pending and delayed", p.here,
                Some("Remove every pending and delayed job of this queue?")))
            @if empty {
                (action(ctx.session, "forget-queue", &fields, "Forget this empty queue", "overview", None))
            }
            (limits_form(ctx.session, s, p.here))
        }
        nav.tabs {
            @for (state, n) in [(JobState::Pending, s.pending), (JobState::Delayed, s.delayed), (JobState::Reserved, s.reserved), (JobState::Failed, s.failed)] {
                a.active[state == p.state] href=(link("queue", &[("name", name), ("state", state.as_str())])) {
                    (state_label(state)) " " span.count { (n) }
                }
            }
        }
        @match &p.jobs {
            Jobs::Live(jobs) => (live_jobs(ctx, name, p.state, jobs, p.here)),
            Jobs::Failed(jobs) => (failed_jobs(ctx, Some(name), jobs, p.here)),
        }
        (pager(&p.paging))
    }
}

fn limits_form(s: &Session, stats: &QueueStats, here: &str) -> Markup {
    let viewer = s.role != Role::Admin;
    let concurrency = stats.limits.concurrency.map(|c| c.to_string()).unwrap_or_default();
    let (rate, per) = match stats.limits.rate {
        Some(r) => (r.limit.to_string(), (r.period_ms as f64 / 1000.0).to_string()),
        None => (String::new(), String::new()),
    };
    html! {
        form.inline.limits method="post" action="action" {
            input type="hidden" name="csrf" value=(s.csrf());
            input type="hidden" name="next" value=(here);
            input type="hidden" name="queue" value=(stats.queue);
            label { "At once " input type="number" name="concurrency" min="1" value=(concurrency) placeholder="any"; }
            label { " Starts " input type="number" name="rate" min="1" value=(rate) placeholder="any"; }
            label { " per " input type="number" name="per" min="0.001" step="any" value=(per) placeholder="secs"; " s" }
            " "
            button type="submit" name="op" value="limits" disabled[viewer] { "Set limits" }
        }
    }
}

fn state_label(state: JobState) -> &'static str {
    match state {
        JobState::Pending => "Pending",
        JobState::Delayed => "Delayed",
        JobState::Reserved => "Running",
        _ => "Failed",
    }
}

fn live_jobs(ctx: &Ctx<'_>, queue: &str, state: JobState, jobs: &[JobInfo], here: &str) -> Markup {
    let s = ctx.session;
    let time_label = match state {
        JobState::Delayed => "Due",
        JobState::Reserved => "Lease until",
        _ => "Dispatched",
    };
    html! {
        @if jobs.is_empty() {
            p.muted { "No " (state_label(state).to_lowercase()) " jobs." }
        } @else {
            form #bulk method="post" action="action" data-confirm="Cancel the selected jobs?" {
                input type="hidden" name="csrf" value=(s.csrf());
                input type="hidden" name="next" value=(here);
                input type="hidden" name="queue" value=(queue);
                button type="submit" name="op" value="cancel" disabled[s.role != Role::Admin] { "Cancel selected" }
            }
            table.jobs {
                thead { tr {
                    th { input type="checkbox" .select-all data-form="bulk" aria-label="select all"; }
                    th { "Id" } th { "Job" } th.num { "Priority" } th.num { "Attempts" } th { (time_label) } th { "Last error" }
                } }
                tbody {
                    @for j in jobs {
                        @let at = match state {
                            JobState::Reserved => j.lease_expires_at.unwrap_or(j.job.available_at),
                            JobState::Delayed => j.job.available_at,
                            _ => j.job.dispatched_at,
                        };
                        tr {
                            td { input type="checkbox" name="id" value=(j.job.id) form="bulk" aria-label="select"; }
                            td { a.id href=(link("job", &[("id", &j.job.id)])) { (j.job.id) } }
                            td { (j.job.name) }
                            td.num { (j.job.priority) }
                            td.num { (j.attempts) " / " (j.job.max_retries.saturating_add(1)) }
                            td title=(utc(at)) { (relative(at, ctx.now)) }
                            td.error { @if let Some(e) = &j.last_error { (clip(e, 120)) } }
                        }
                    }
                }
            }
        }
    }
}

/// A table of failed jobs with per-row and bulk retry and forget; `queue` filters the bulk
/// "all" actions.
fn failed_jobs(ctx: &Ctx<'_>, queue: Option<&str>, jobs: &[FailedJob], here: &str) -> Markup {
    let s = ctx.session;
    let viewer = s.role != Role::Admin;
    let scope = match queue {
        Some(q) => format!("every failed job of {q}"),
        None => "every failed job".to_owned(),
    };
    html! {
        @if jobs.is_empty() {
            p.muted { "No failed jobs." }
        } @else {
            form #bulk method="post" action="action" {
                input type="hidden" name="csrf" value=(s.csrf());
                input type="hidden" name="next" value=(here);
                @if let Some(q) = queue { input type="hidden" name="queue" value=(q); }
                button type="submit" name="op" value="retry" disabled[viewer] { "Retry selected" } " "
                button type="submit" name="op" value="forget" disabled[viewer] { "Delete selected" } " "
                button type="submit" name="op" value="retry-all" disabled[viewer] data-confirm=(format!("Retry {scope}?")) { "Retry all" } " "
                button type="submit" name="op" value="forget-all" disabled[viewer] data-confirm=(format!("Delete {scope}?")) { "Delete all" }
            }
            table.jobs.failed {
                thead { tr {
                    th { input type="checkbox" .select-all data-form="bulk" aria-label="select all"; }
                    th { "Id" } @if queue.is_none() { th { "Queue" } } th { "Job" } th.num { "Attempts" } th { "Failed" } th { "Error" } th {}
                } }
                tbody {
                    @for j in jobs {
                        tr {
                            td { input type="checkbox" name="id" value=(j.id) form="bulk" aria-label="select"; }
                            td { a.id href=(link("job", &[("id", &j.id)])) { (j.id) } }
                            @if queue.is_none() { td { a href=(link("queue", &[("name", &j.queue), ("state", "failed")])) { (j.queue) } } }
                            td { (j.name) }
                            td.num { (j.attempts) }
                            td title=(utc(j.failed_at)) { (relative(j.failed_at, ctx.now)) }
                            td.error { (clip(&j.error, 120)) }
                            td.actions {
                                (action(s, "retry", &[("id", &j.id)], "Retry", here, None))
                                (action(s, "forget", &[("id", &j.id)], "Delete", here, None))
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The failed jobs of every queue (or of one).
pub(crate) fn failed(
    ctx: &Ctx<'_>,
    queues: &[String],
    queue: Option<&str>,
    jobs: &[FailedJob],
    paging: &Paging<'_>,
    here: &str,
) -> Markup {
    html! {
        h1 { "Failed jobs" @if let Some(q) = queue { " of " code { (q) } } }
        form.filter method="get" action="failed" {
            label { "Queue "
                select name="queue" {
                    option value="" selected[queue.is_none()] { "every queue" }
                    @for q in queues { option value=(q) selected[queue == Some(q.as_str())] { (q) } }
                }
            }
            " " button type="submit" { "Show" }
        }
        (failed_jobs(ctx, queue, jobs, here))
        (pager(paging))
    }
}

/// One job, in whatever state it is.
pub(crate) fn job(ctx: &Ctx<'_>, j: &JobInfo) -> Markup {
    let s = ctx.session;
    let job = &j.job;
    let here = link("job", &[("id", &job.id)]);
    let back = link("queue", &[("name", &job.queue), ("state", j.state.as_str())]);
    html! {
        h1 { "Job " code { (job.id) } " " span.badge.(j.state.as_str()) { (state_label(j.state)) } }
        div.toolbar {
            @if j.state == JobState::Failed {
                (action(s, "retry", &[("id", &job.id)], "Retry", &here, None))
                (action(s, "forget", &[("id", &job.id)], "Delete", &back, Some("Delete this failed job?")))
            } @else {
                (action(s, "cancel", &[("id", &job.id)], if j.state == JobState::Reserved { "Ask to cancel" } else { "Cancel" }, &here, Some("Cancel this job?")))
            }
        }
        dl.fields {
            dt { "Job" } dd { (job.name) }
            dt { "Queue" } dd { a href=(back) { (job.queue) } }
            dt { "Attempts" } dd { (j.attempts) " of " (job.max_retries.saturating_add(1)) }
            dt { "Priority" } dd { (job.priority) }
            dt { "Dispatched" } dd { (when(job.dispatched_at, ctx.now)) }
            @match j.state {
                JobState::Pending | JobState::Delayed => { dt { "Due" } dd { (when(job.available_at, ctx.now)) } },
                _ => {},
            }
            @if let Some(at) = j.lease_expires_at { dt { "Lease until" } dd { (when(at, ctx.now)) } }
            @if let Some(at) = j.failed_at { dt { "Failed" } dd { (when(at, ctx.now)) } }
            @if j.cancel_requested { dt { "Cancel" } dd { "requested; its worker stops it within a second" } }
            dt { "Time limit" } dd { @match job.timeout_ms { Some(ms) => (duration(ms)), None => "the worker's default" } }
            dt { "Retry backoff" } dd { (duration(job.retry_delay_ms)) " doubling per attempt" }
            @if let Some(u) = &job.unique { dt { "Unique key" } dd { code { (u.key) } } }
            @if let Some(b) = &job.batch { dt { "Batch" } dd { a href=(link("batch", &[("id", b)])) { (b) } } }
        }
        h2 { "Payload" }
        pre.json { (pretty_json(&job.payload)) }
        @if let Some(progress) = &j.progress {
            h2 { "Progress" }
            pre.json { (pretty_json(progress)) }
        }
        h2 { "Errors" }
        @if !j.errors.is_empty() {
            ol.errors {
                @for e in &j.errors { li { pre.error { (e) } } }
            }
            p.muted.small { "Oldest first; the latest " (MAX_ERROR_HISTORY) " attempts' errors are kept." }
        } @else if let Some(e) = &j.last_error {
            pre.error { (e) }
            p.muted.small { "The " (ctx.driver) " driver keeps the last attempt's error only." }
        } @else {
            p.muted { "No attempt has failed." }
        }
        @if let Some(meta) = &job.meta {
            h2 { "Metadata" }
            pre.json { (pretty_json(meta)) }
        }
    }
}

/// The live workers, or why there are none to show.
pub(crate) fn workers(ctx: &Ctx<'_>, workers: Option<&[WorkerInfo]>) -> Markup {
    html! {
        h1 { "Workers" }
        @match workers {
            None => { p.notice { "The " (ctx.driver) " driver keeps no worker heartbeats, so it cannot list workers." } },
            Some([]) => { p.muted { "No worker is running: none has sent a heartbeat lately." } },
            Some(list) => {
                table.workers {
                    thead { tr {
                        th { "Worker" } th { "Host" } th.num { "Pid" } th { "Queues" } th.num { "Concurrency" }
                        th { "Running" } th { "Started" } th { "Last heartbeat" }
                    } }
                    tbody {
                        @for w in list {
                            tr {
                                td.id { (w.id) }
                                td { (w.host) }
                                td.num { (w.pid) }
                                td { (w.queues.join(", ")) }
                                td.num { (w.concurrency) }
                                td {
                                    (w.running.len())
                                    @for id in w.running.iter().take(5) { " " a.id href=(link("job", &[("id", id)])) { (clip(id, 10)) } }
                                    @if w.running.len() > 5 { " …" }
                                }
                                td title=(utc(w.started_at)) { (relative(w.started_at, ctx.now)) }
                                td title=(utc(w.last_heartbeat)) { (relative(w.last_heartbeat, ctx.now)) }
                            }
                        }
                    }
                }
            },
        }
    }
}

/// Registered schedules, or why there are none to show.
pub(crate) fn schedules(ctx: &Ctx<'_>, schedules: Result<&[ScheduleRecord], String>) -> Markup {
    html! {
        h1 { "Schedules" }
        @match schedules {
            Err(why) => { p.notice { (why) } },
            Ok([]) => { p.muted { "No schedule is registered." } },
            Ok(list) => {
                table.schedules {
                    thead { tr { th { "Name" } th { "Queue" } th { "Last run" } th { "Next run" } th { "Done up to" } th { "Updated" } th { "Definition" } } }
                    tbody {
                        @for r in list {
                            tr {
                                td { code { (r.name) } }
                                td { a href=(link("queue", &[("name", &r.queue)])) { (r.queue) } }
                                td { @match r.last_run { Some(t) => (when(t, ctx.now)), None => span.muted { "never" } } }
                                td { @match r.next_run { Some(t) => (when(t, ctx.now)), None => span.muted { "—" } } }
                                td { (utc(r.cursor)) }
                                td { (utc(r.updated_at)) }
                                td { details { summary { (clip(&r.definition, 60)) } pre.json { (pretty_json(&r.definition)) } } }
                            }
                        }
                    }
                }
            },
        }
    }
}

/// What the batch page found.
pub(crate) enum BatchLookup {
    /// No id asked for yet.
    Ask,
    Found(Box<BatchInfo>),
    Missing(String),
    Unsupported(String),
}

/// A batch's counters and callbacks, with a form to look one up.
pub(crate) fn batch(ctx: &Ctx<'_>, lookup: &BatchLookup, asked: &str) -> Markup {
    html! {
        h1 { "Batches" }
        form.filter method="get" action="batch" {
            label { "Batch id " input type="text" name="id" value=(asked) size="30" required; }
            " " button type="submit" { "Look up" }
        }
        @match lookup {
            BatchLookup::Ask => { p.muted { "A batch's id is printed when it is dispatched, and shown on each of its jobs." } },
            BatchLookup::Missing(id) => { p.notice { "No batch has the id " code { (id) } "." } },
            BatchLookup::Unsupported(why) => { p.notice { (why) } },
            BatchLookup::Found(b) => { (batch_info(ctx, b)) },
        }
    }
}

fn batch_info(ctx: &Ctx<'_>, b: &BatchInfo) -> Markup {
    let done = b.processed + b.failed + b.cancelled;
    let here = link("batch", &[("id", &b.id)]);
    let over = b.finished_at.is_some() || b.cancelled_at.is_some();
    html! {
        h2 { "Batch " code { (b.id) } }
        p { progress value=(done) max=(b.total.max(1)) {} " " (done) " of " (b.total) " finished" }
        dl.fields {
            dt { "Pending" } dd { (b.pending) }
            dt { "Processed" } dd { (b.processed) }
            dt { "Failed" } dd.bad[b.failed > 0] { (b.failed) }
            dt { "Cancelled" } dd { (b.cancelled) }
            dt { "Failures" } dd { @if b.allow_failures { "allowed: a failed job does not cancel the others" } @else { "the first failure cancels the batch" } }
            dt { "Created" } dd { (when(b.created_at, ctx.now)) }
            @if let Some(t) = b.cancelled_at { dt { "Cancelled at" } dd { (when(t, ctx.now)) } }
            @if let Some(t) = b.finished_at { dt { "Finished" } dd { (when(t, ctx.now)) } }
        }
        h3 { "Callbacks" }
        table {
            thead { tr { th { "When" } th { "Job" } th { "Queue" } th { "State" } } }
            tbody {
                (callback_row("then (all completed)", b.then.as_ref()))
                (callback_row("catch (first failure)", b.catch.as_ref()))
                (callback_row("finally (all finished)", b.finally.as_ref()))
            }
        }
        @if !over {
            div.toolbar { (action(ctx.session, "cancel-batch", &[("batch", &b.id)], "Cancel batch", &here, Some("Cancel this batch and its waiting jobs?"))) }
        }
    }
}

fn callback_row(label: &str, cb: Option<&BatchCallback>) -> Markup {
    html! {
        tr {
            td { (label) }
            @match cb {
                None => { td.muted colspan="3" { "none" } },
                Some(cb) => {
                    td { a href=(link("job", &[("id", &cb.id)])) { (cb.name) } }
                    td { (cb.queue) }
                    td { @match cb.state { CallbackState::Waiting => "waiting", CallbackState::Dispatched => "dispatched", _ => "skipped" } }
                },
            }
        }
    }
}

/// The sign-in page (also the body of a 401).
pub(crate) fn login(message: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Sign in · orcs" }
                link rel="stylesheet" href="assets/dashboard.css";
            }
            body.login {
                main {
                    h1 { "orcs dashboard" }
                    @if let Some(m) = message { p.flash.bad role="alert" { (m) } }
                    form method="post" action="login" {
                        label for="token" { "Token" }
                        input #token type="password" name="token" autocomplete="current-password" required autofocus;
                        button type="submit" { "Sign in" }
                    }
                    p.muted.small { "The admin token is ORCS_DASHBOARD_TOKEN; the read-only token, ORCS_DASHBOARD_READONLY_TOKEN." }
                }
            }
        }
    }
}

/// A page that only says what went wrong (401, 403, 404, 500) and where to go.
pub(crate) fn problem(title: &str, message: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · orcs" }
                link rel="stylesheet" href="assets/dashboard.css";
            }
            body.problem {
                main {
                    h1 { (title) }
                    p { (message) }
                    p { a href="overview" { "Back to the overview" } }
                }
            }
        }
    }
}
