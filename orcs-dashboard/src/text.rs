//! Small text helpers for the pages: times, durations, hex, query strings.

use orcs_core::Millis;

/// `2026-11-28 16:50:01Z` (UTC) for milliseconds since the Unix epoch: RFC 3339 with a space,
/// to the second, which reads better in a table than the `T` form.
pub(crate) fn utc(ms: Millis) -> String {
    let secs = ms.div_euclid(1000);
    let (days, in_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = date_of(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z", in_day / 3600, in_day / 60 % 60, in_day % 60)
}

/// The Gregorian date of a day number (0 = 1970-01-01), counting in 400-year cycles of
/// 146,097 days from 0000-03-01, so that the leap day ends each cycle's year.
fn date_of(days: i64) -> (i64, i64, i64) {
    let shifted = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let cycle = shifted.div_euclid(146_097);
    let day_of_cycle = shifted.rem_euclid(146_097);
    let year_of_cycle =
        (day_of_cycle - day_of_cycle / 1460 + day_of_cycle / 36_524 - day_of_cycle / 146_096) / 365;
    let day_of_year =
        day_of_cycle - (365 * year_of_cycle + year_of_cycle / 4 - year_of_cycle / 100);
    let march_month = (5 * day_of_year + 2) / 153; // 0 = March
    let day = day_of_year - (153 * march_month + 2) / 5 + 1;
    let month = if march_month < 10 { march_month + 3 } else { march_month - 9 };
    let year = year_of_cycle + cycle * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `3 s ago`, `in 5 min`: how far `at` is from `now`, roughly.
pub(crate) fn relative(at: Millis, now: Millis) -> String {
    let delta = at - now;
    let span = duration(delta.unsigned_abs());
    if delta.abs() < 1000 {
        "now".to_owned()
    } else if delta < 0 {
        format!("{span} ago")
    } else {
        format!("in {span}")
    }
}

/// `850 ms`, `12 s`, `5 min`, `3 h`, `2 d`: a duration in its largest whole unit.
pub(crate) fn duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{} s", ms / 1000),
        60_000..3_600_000 => format!("{} min", ms / 60_000),
        3_600_000..86_400_000 => format!("{} h", ms / 3_600_000),
        _ => format!("{} d", ms / 86_400_000),
    }
}

/// A time with its distance from now: `2026-11-28 16:50:01Z (3 s ago)`.
pub(crate) fn when(at: Millis, now: Millis) -> String {
    format!("{} ({})", utc(at), relative(at, now))
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// A relative link to one of the dashboard's pages with its query: `queue?name=emails&state=failed`.
/// Every page lives at the router's top level, so a link is the page's name and works wherever
/// an application mounts the router.
pub(crate) fn link(page: &str, params: &[(&str, &str)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (key, value) in params {
        query.append_pair(key, value);
    }
    let query = query.finish();
    if query.is_empty() { page.to_owned() } else { format!("{page}?{query}") }
}

/// Pretty-printed JSON if `text` is JSON, else the text as it is (a damaged record).
pub(crate) fn pretty_json(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|value| serde_json::to_string_pretty(&value).ok())
        .unwrap_or_else(|| text.to_owned())
}

/// The first `max` characters of `text`, with an ellipsis when it was longer.
pub(crate) fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(utc(1_767_225_599_999), "2025-12-31 23:59:59Z");
        assert_eq!(utc(-1000), "1969-12-31 23:59:59Z");
    }

    #[test]
    fn relative_times_and_durations_read_naturally() {
        assert_eq!(relative(1_000, 4_500), "3 s ago");
        assert_eq!(relative(310_000, 10_000), "in 5 min");
        assert_eq!(relative(10_000, 10_400), "now");
        assert_eq!(duration(999), "999 ms");
        assert_eq!(duration(2 * 86_400_000), "2 d");
    }

    #[test]
    fn links_encode_their_query() {
        assert_eq!(link("failed", &[]), "failed");
        assert_eq!(link("queue", &[("name", "a b&c"), ("page", "2")]), "queue?name=a+b%26c&page=2");
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(clip("héllo", 2), "hé…");
        assert_eq!(clip("hé", 2), "hé");
        assert_eq!(pretty_json("{\"a\":1}"), "{\n  \"a\": 1\n}");
        assert_eq!(pretty_json("{oops"), "{oops");
    }
}
