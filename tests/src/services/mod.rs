//! Finding the services a driver's tests need, and skipping loudly when they are missing.
//!
//! A test that cannot reach its service prints a `SKIPPING` line and passes, unless
//! `ORCS_TEST_REQUIRE_SERVICES=1` (set by `.ci/run`), when it fails: a green CI run never comes from
//! skipping.
//!
//! With `ORCS_TEST_DOCKER=1` (and the `docker` feature), the shared Redis server and the
//! PostgreSQL server are containers instead (see [`docker`]); an explicit URL variable still wins.

pub mod docker;
pub mod postgres;
pub mod redis;
pub mod restartable;

/// True when missing services must fail the tests (`ORCS_TEST_REQUIRE_SERVICES=1`).
pub fn services_required() -> bool {
    std::env::var("ORCS_TEST_REQUIRE_SERVICES")
        .is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Reports a missing service: panics under `ORCS_TEST_REQUIRE_SERVICES=1`, else prints a loud
/// `SKIPPING` line to stderr and returns `None`.
///
/// # Panics
/// When services are required.
pub fn skip<T>(service: &str, why: &str) -> Option<T> {
    assert!(
        !services_required(),
        "{service} is required (ORCS_TEST_REQUIRE_SERVICES=1) but unavailable: {why}"
    );
    eprintln!(
        "SKIPPING: {service} unavailable: {why}; set ORCS_TEST_REQUIRE_SERVICES=1 to make this a failure"
    );
    None
}

/// A name unique to this process and call, for key prefixes, schemas and files.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", orcs_core::new_job_id().to_ascii_lowercase())
}
