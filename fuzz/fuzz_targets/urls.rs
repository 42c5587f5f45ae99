//! `REDIS_URL` and `DATABASE_URL`: any text parses or gives a configuration error, never a panic,
//! and a password put in the URL never appears in an error or in `Debug` or `Display` output.
//!
//! Input: the password (up to the first NUL byte; kept only if it is 6 to 40 letters or digits),
//! then the rest of a URL that follows `user:<password>@`.

#![no_main]

use std::str::FromStr;

use libfuzzer_sys::fuzz_target;
use orcs_database::DatabaseConfig;
use orcs_redis::RedisConfig;

fn show_redis(url: &str) -> String {
    match RedisConfig::from_url(url) {
        Ok(config) => format!("{config:?} {config} {}", config.redacted_url()),
        Err(e) => format!("{e} {e:?}"),
    }
}

fn show_database(url: &str) -> String {
    match DatabaseConfig::from_str(url) {
        Ok(config) => format!("{config:?}"),
        Err(e) => format!("{e} {e:?}"),
    }
}

/// `url(secret)` must not show `secret`, unless the same URL with another password of the same
/// length shows it too (then it is the scheme, a field name or a message, not a leak).
fn no_leak(show: fn(&str) -> String, url: impl Fn(&str) -> String, secret: &str) {
    let shown = show(&url(secret));
    if shown.contains(secret) {
        let baseline = show(&url(&"Z".repeat(secret.len())));
        assert!(baseline.contains(secret), "{:?} showed its password: {shown}", url(secret));
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Any text as a whole URL: no panic.
    show_redis(&text);
    show_database(&text);

    let Some((secret, rest)) = text.split_once('\0') else { return };
    let plain =
        (6..=40).contains(&secret.len()) && secret.chars().all(|c| c.is_ascii_alphanumeric());
    // The rest must not hold the password itself (then showing it would be no leak), nor
    // another `@`, `#` or `?` (which would move the userinfo or start a query).
    if !plain || rest.contains(secret) || rest.contains(['@', '#', '?']) {
        return;
    }
    for scheme in ["redis", "rediss", "redis+cluster"] {
        no_leak(show_redis, |pw| format!("{scheme}://user:{pw}@{rest}"), secret);
        no_leak(show_redis, |pw| format!("{scheme}://:{pw}@{rest}"), secret);
    }
    for scheme in ["postgres", "sqlite", "mysql"] {
        no_leak(show_database, |pw| format!("{scheme}://user:{pw}@{rest}"), secret);
    }
});
