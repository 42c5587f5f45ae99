//! Finding the PostgreSQL server the database driver's tests use.
//!
//! The URL comes from `ORCS_TEST_DATABASE_URL`; when it is unset, under `ORCS_TEST_DOCKER=1` a
//! PostgreSQL container started once per test process is used (see [`super::docker`]), else the
//! local server at [`DEFAULT_URL`] if it answers. Each test then works in a schema of its own (see
//! [`with_search_path`]), so tests can share one database and run in parallel.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The local server CI starts (`scripts/postgres.sh`): trust authentication, database `test`.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The variable that names the test server.
pub const URL_VAR: &str = "ORCS_TEST_DATABASE_URL";

/// The URL of the test server, or `None` after a loud skip (a failure under
/// `ORCS_TEST_REQUIRE_SERVICES=1`) when there is none.
pub fn database_url_or_skip() -> Option<String> {
    if let Ok(url) = std::env::var(URL_VAR)
        && !url.is_empty()
    {
        return Some(url);
    }
    if super::docker::docker_requested() {
        return match super::docker::postgres_url() {
            Ok(url) => Some(url),
            Err(why) => super::skip("PostgreSQL (Docker)", &why),
        };
    }
    if answers("127.0.0.1:5432") {
        return Some(DEFAULT_URL.to_owned());
    }
    super::skip(
        "PostgreSQL",
        &format!(
            "{URL_VAR} is unset and nothing answers on 127.0.0.1:5432; run scripts/postgres.sh"
        ),
    )
}

/// `url` with every connection's `search_path` set to `schema` (through the `options` startup
/// parameter, which PostgreSQL applies before any statement runs).
pub fn with_search_path(url: &str, schema: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-c%20search_path%3D{schema}")
}

/// The creation time (ms since the Unix epoch) of a schema named by
/// [`super::unique_name`], read from the ULID in it; `None` for other names.
pub fn created_at(schema: &str) -> Option<i64> {
    const ALPHABET: &[u8] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let ulid = schema.rsplit('_').next()?;
    if ulid.len() != 26 {
        return None;
    }
    ulid.bytes().take(10).try_fold(0i64, |acc, byte| {
        let digit = ALPHABET.iter().position(|&c| c == byte.to_ascii_lowercase())?;
        Some(acc * 32 + i64::try_from(digit).ok()?)
    })
}

fn answers(address: &str) -> bool {
    address
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_time_back_from_a_unique_name() {
        let before = orcs_core::Clock::now(&orcs_core::SystemClock);
        let name = super::super::unique_name("orcs_test");
        let at = created_at(&name).expect("a ulid");
        assert!((at - before).abs() < 1000, "{at} vs {before}");
        assert_eq!(created_at("public"), None);
    }

    #[test]
    fn adds_the_search_path() {
        assert_eq!(
            with_search_path("postgres://h/db", "s1"),
            "postgres://h/db?options=-c%20search_path%3Ds1"
        );
        assert_eq!(
            with_search_path("postgres://h/db?sslmode=disable", "s1"),
            "postgres://h/db?sslmode=disable&options=-c%20search_path%3Ds1"
        );
    }
}
