//! Text output: RFC 3339 timestamps, durations, plain tables, and stdout that may be closed.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use orcs_core::{FailedJob, Millis, QueueLimits, QueueStats};
use serde_json::{Value, json};

/// Set once a write to stdout failed (the reader went away: `orcs queue:failed | head -1`).
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes `text` to stdout. Once the reader is gone the output is dropped instead of panicking
/// as `println!` does, so the command finishes what it was doing and exits 0, as a command
/// killed by SIGPIPE would look to a shell pipeline; [`stdout_closed`] tells long-running commands
/// to stop.
pub(crate) fn write_stdout(text: &str) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if out.write_all(text.as_bytes()).and_then(|()| out.flush()).is_err() {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
    }
}

/// True once a write to stdout failed.
pub(crate) fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// `println!` that survives a closed stdout (see [`write_stdout`]).
macro_rules! say {
    ($($arg:tt)*) => {{
        let mut text = format!($($arg)*);
        text.push('\n');
        $crate::output::write_stdout(&text);
    }};
}
pub(crate) use say;

/// Whether to colour stdout: only a terminal, and not when `NO_COLOR` is set (no-color.org).
pub(crate) fn colour_stdout() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `2026-11-28T16:50:01.123Z` (RFC 3339, UTC) for milliseconds since the Unix epoch.
pub(crate) fn rfc3339(ms: Millis) -> String {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    let (h, m, s, milli) =
        (in_day / 3_600_000, in_day / 60_000 % 60, in_day / 1000 % 60, in_day % 1000);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

/// The proleptic Gregorian date of a day count since 1970-01-01, by the usual era arithmetic
/// (an era is 400 years, 146,097 days), so no date library is needed for one format.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `0.42ms`, `12.35ms`, `1.20s`.
pub(crate) fn duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1000.0 { format!("{ms:.2}ms") } else { format!("{:.2}s", ms / 1000.0) }
}

/// A plain left/right aligned table: text columns left, number columns right.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>], numeric: &[bool]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            let width = widths[i];
            if numeric.get(i).copied().unwrap_or(false) {
                let _ = write!(text, "{cell:>width$}");
            } else {
                let _ = write!(text, "{cell:<width$}");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// The `queue:stats` table.
pub(crate) fn stats_table(stats: &[QueueStats]) -> String {
    let rows: Vec<Vec<String>> = stats
        .iter()
        .map(|s| {
            vec![
                s.queue.clone(),
                if s.paused { "paused".to_owned() } else { "active".to_owned() },
                s.pending.to_string(),
                s.delayed.to_string(),
                s.reserved.to_string(),
                s.failed.to_string(),
                s.processed.to_string(),
                s.failed_total.to_string(),
                s.cancelled.to_string(),
                latency(s.latency_ms),
                limits(&s.limits),
            ]
        })
        .collect();
    table(
        &[
            "queue",
            "state",
            "pending",
            "delayed",
            "reserved",
            "failed",
            "processed",
            "failed_total",
            "cancelled",
            "latency",
            "limits",
        ],
        &rows,
        &[false, false, true, true, true, true, true, true, true, true, false],
    )
}

/// How long the oldest due job has waited (`1.20s`), or `-` when none is due.
fn latency(ms: Option<u64>) -> String {
    ms.map_or_else(|| "-".to_owned(), |ms| duration(Duration::from_millis(ms)))
}

/// `concurrency 4, rate 10/60s`, or `none`.
pub(crate) fn limits(limits: &QueueLimits) -> String {
    let mut parts = Vec::new();
    if let Some(n) = limits.concurrency {
        parts.push(format!("concurrency {n}"));
    }
    if let Some(rate) = limits.rate {
        parts.push(format!("rate {}/{}s", rate.limit, seconds(rate.period_ms)));
    }
    if parts.is_empty() { "none".to_owned() } else { parts.join(", ") }
}

/// `60`, `0.5`: milliseconds as seconds without trailing zeros.
fn seconds(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        (ms / 1000).to_string()
    } else {
        let text = format!("{:.3}", ms as f64 / 1000.0);
        text.trim_end_matches('0').to_owned()
    }
}

/// A failed job as `queue:failed --json` prints it: the payload as JSON (as a string only if it
/// is not JSON: a damaged record) and the time as RFC 3339.
pub(crate) fn failed_json(job: &FailedJob) -> Value {
    let payload =
        serde_json::from_str::<Value>(&job.payload).unwrap_or_else(|_| json!(job.payload));
    json!({
        "id": job.id,
        "queue": job.queue,
        "name": job.name,
        "payload": payload,
        "attempts": job.attempts,
        "error": job.error,
        "failed_at": rfc3339(job.failed_at),
    })
}

/// The `queue:failed` table; errors are cut to one line.
pub(crate) fn failed_table(jobs: &[FailedJob]) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.clone(),
                j.queue.clone(),
                j.name.clone(),
                j.attempts.to_string(),
                rfc3339(j.failed_at),
                one_line(&j.error, 100),
            ]
        })
        .collect();
    table(
        &["id", "queue", "job", "attempts", "failed_at", "error"],
        &rows,
        &[false, false, false, true, false, false],
    )
}

/// The line under a page of `queue:failed`: which of how many failed jobs (`of`: `250`, or `250
/// in queue images`) are shown, and the flags for the next page when there is one.
pub(crate) fn page_footer(offset: u64, shown: u64, total: u64, of: &str, limit: u64) -> String {
    let end = offset + shown;
    let mut line = if shown == 1 {
        format!("showing failed job {end} of {of}")
    } else {
        format!("showing failed jobs {}-{end} of {of}", offset + 1)
    };
    if end < total {
        let limit = if limit == crate::cli::DEFAULT_FAILED_LIMIT {
            String::new()
        } else {
            format!(" --limit {limit}")
        };
        let _ = write!(line, "; see the next page with --offset {end}{limit}");
    }
    line
}

/// The first line of `text`, at most `max` characters, marked with `...` when cut.
pub(crate) fn one_line(text: &str, max: usize) -> String {
    let first = text.lines().next().unwrap_or("");
    if first.chars().count() <= max && first.len() == text.trim_end().len() {
        return first.to_owned();
    }
    let cut: String = first.chars().take(max).collect();
    format!("{cut}...")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_884_601_123), "2026-11-28T16:50:01.123Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn limits_read_as_flags() {
        assert_eq!(limits(&QueueLimits::none()), "none");
        let both = QueueLimits::none().concurrency(4).rate(orcs_core::RateLimit::new(10, 60_000));
        assert_eq!(limits(&both), "concurrency 4, rate 10/60s");
        assert_eq!(
            limits(&QueueLimits::none().rate(orcs_core::RateLimit::new(5, 500))),
            "rate 5/0.5s"
        );
    }

    #[test]
    fn tables_align_numbers_right() {
        let text = table(&["queue", "n"], &[vec!["emails".into(), "12".into()]], &[false, true]);
        assert_eq!(text, "queue    n\nemails  12\n");
    }

    #[test]
    fn page_footers_say_how_to_see_more() {
        assert_eq!(page_footer(0, 3, 3, "3", 100), "showing failed jobs 1-3 of 3");
        assert_eq!(page_footer(4, 1, 5, "5", 2), "showing failed job 5 of 5");
        assert_eq!(
            page_footer(0, 100, 250, "250", 100),
            "showing failed jobs 1-100 of 250; see the next page with --offset 100"
        );
        assert_eq!(
            page_footer(10, 5, 30, "30 in queue q", 5),
            "showing failed jobs 11-15 of 30 in queue q; see the next page with --offset 15 --limit 5"
        );
    }

    #[test]
    fn one_line_cuts_long_and_multiline_text() {
        assert_eq!(one_line("short", 10), "short");
        assert_eq!(one_line("abcdefghijkl", 5), "abcde...");
        assert_eq!(one_line("first\nsecond", 50), "first...");
    }
}
