//! Text output: UTC timestamps, durations and plain tables.

use std::fmt::Write as _;
use std::time::Duration;

use orcs_core::{FailedJob, Millis, QueueStats};

/// `2026-11-28 16:50:01.123` (UTC) for milliseconds since the Unix epoch.
pub(crate) fn utc(ms: Millis) -> String {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    let (h, m, s, milli) =
        (in_day / 3_600_000, in_day / 60_000 % 60, in_day / 1000 % 60, in_day % 1000);
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}.{milli:03}")
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
                s.pending.to_string(),
                s.delayed.to_string(),
                s.reserved.to_string(),
                s.failed.to_string(),
                s.processed.to_string(),
                s.failed_total.to_string(),
            ]
        })
        .collect();
    table(
        &["queue", "pending", "delayed", "reserved", "failed", "processed", "failed_total"],
        &rows,
        &[false, true, true, true, true, true, true],
    )
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
                utc(j.failed_at),
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
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00.000");
        assert_eq!(utc(1_795_884_601_123), "2026-11-28 16:50:01.123");
        assert_eq!(utc(-1), "1969-12-31 23:59:59.999");
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
